//! Which ELF file serves a process's `malloc`, and where its allocator functions are.
//!
//! The probes go on the allocator the target actually calls: the executable itself when it is
//! static (or defines malloc), a preloaded or linked allocator library, else the C library.
//! Paths are opened through `/proc/PID/root` so a target in another mount namespace works.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use object::{Object, ObjectSegment, ObjectSymbol};
use tracer_common::FileKey;

pub use super::ldso::file_id;
use super::{
    ldso::{LoaderEnv, Resolver},
    probes::{self, Group, ProbeSpec},
};

/// An ELF file with allocator functions, ready to probe.
#[derive(Debug, Clone)]
pub struct AllocatorLib {
    /// The path as the target process sees it.
    pub path: PathBuf,
    /// Where this process can open it (through `/proc/PID/root` when attaching to a pid).
    pub open_path: PathBuf,
    /// Which allocator this is (`glibc`, `musl`, `jemalloc`, `tcmalloc`, `mimalloc`, or
    /// `unknown`), from the symbols it defines.
    pub kind: &'static str,
    /// The entry points to probe in this file and their file offsets, in table order.
    pub functions: Vec<(&'static ProbeSpec, u64)>,
    /// File offset of `exit()` when this file defines it (the C library, a static binary).
    pub exit: Option<u64>,
    /// Other files probed for the same processes: libstdc++'s `operator new`, an allocator
    /// linked for its own interface beside the C library's malloc (Rust's jemalloc or mimalloc
    /// global allocators), the C library's `exit`.
    pub also: Vec<AllocatorLib>,
    /// What tracer cannot see in this process (a language runtime with a heap of its own).
    pub notes: Vec<String>,
    /// The program makes memory-mapping system calls without the C library (Go's runtime):
    /// only probes on the system calls themselves see them.
    pub raw_map_syscalls: bool,
}

impl AllocatorLib {
    pub fn defines(&self, symbol: &str) -> bool {
        defines(&self.functions, symbol)
    }

    /// Probed at entry only: libstdc++'s (or libc++'s) `operator new`, which calls the
    /// process's `malloc` (probed with its return) and may throw; an allocator's own `operator
    /// new` (jemalloc, tcmalloc, mimalloc) allocates by itself and keeps its return probe.
    /// See `COOKIE_ENTRY_ONLY`.
    pub fn entry_only(&self, p: &ProbeSpec) -> bool {
        p.group == Group::CxxNew
            && !matches!(self.kind, "jemalloc" | "tcmalloc" | "mimalloc")
            && (!self.defines("malloc") || matches!(self.kind, "glibc" | "musl"))
    }

    /// Its memory mappings are all made through the C library's wrappers, which are probed
    /// (see `probes::Group::Syscall`): no other program needs to see the system calls.
    pub fn maps_by_wrappers(&self) -> bool {
        !self.raw_map_syscalls
            && std::iter::once(self)
                .chain(&self.also)
                .any(|f| f.functions.iter().any(|(p, _)| p.group == Group::Syscall))
    }

    /// Nothing to probe: a pure Go program, whose runtime's mappings are all there is.
    pub fn mappings_only(&self) -> bool {
        self.functions.is_empty() && self.also.is_empty()
    }

    /// The allocators this process uses, for the report: `glibc`, or `glibc, mimalloc` when
    /// a second allocator serves the program's own calls.
    pub fn kinds(&self) -> String {
        let mut kinds = vec![self.kind];
        for a in &self.also {
            if a.functions.iter().any(|(p, _)| p.group == Group::Own) && !kinds.contains(&a.kind) {
                kinds.push(a.kind);
            }
        }
        kinds.join(", ")
    }
}

/// What an ELF file defines that matters here.
#[derive(Debug, Default)]
pub struct ElfAllocs {
    /// The probe table's symbols it defines, with their file offsets, in table order.
    pub functions: Vec<(&'static ProbeSpec, u64)>,
    pub exit: Option<u64>,
    pub kind: &'static str,
    /// A Go program (it has Go's symbol-table sections).
    pub go: bool,
}

impl ElfAllocs {
    fn defines(&self, symbol: &str) -> bool {
        defines(&self.functions, symbol)
    }

    fn group(&self, keep: impl Fn(Group) -> bool) -> Vec<(&'static ProbeSpec, u64)> {
        self.functions
            .iter()
            .filter(|(p, _)| keep(p.group))
            .copied()
            .collect()
    }

    /// It allocates through an interface of its own (not only `free`-like functions).
    fn has_own_allocator(&self) -> bool {
        self.functions
            .iter()
            .any(|(p, _)| p.group == Group::Own && p.has_return())
    }
}

fn defines(functions: &[(&'static ProbeSpec, u64)], symbol: &str) -> bool {
    functions.iter().any(|(p, _)| p.symbol == symbol)
}

/// Symbols that tell allocators apart (static binaries keep them in their full symbol table).
const MARKERS: &[(&str, &str)] = &[
    ("mallocx", "jemalloc"),
    ("je_mallocx", "jemalloc"),
    ("_rjem_mallocx", "jemalloc"),
    ("tc_malloc", "tcmalloc"),
    ("mi_malloc", "mimalloc"),
    ("__libc_malloc_impl", "musl"),
    ("__malloc_context", "musl"),
    ("__simple_malloc", "musl"),
    ("malloc_trim", "glibc"),
    ("_int_malloc", "glibc"),
];

/// Reads an ELF file and finds the allocator functions it defines (dynamic symbols first,
/// then the full symbol table for static binaries), `exit`, and which allocator it is.
pub fn allocator_functions(path: &Path) -> Result<ElfAllocs> {
    // Mapped, not read: only the pages of the headers and symbol tables are touched, and
    // parsing allocates nothing per symbol (system-wide, tracer's own mallocs trap in the
    // probes too, so allocation-heavy parsing is slow there).
    let f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: a read-only private mapping; a library or program being rewritten in place
    // while tracer reads it is the one way this can fault, as for any debugger or profiler.
    let map = unsafe { memmap2::Mmap::map(&f) }
        .with_context(|| format!("cannot map {}", path.display()))?;
    let file = object::File::parse(&*map)
        .with_context(|| format!("{} is not an ELF file we can read", path.display()))?;
    let mut found: BTreeMap<usize, u64> = BTreeMap::new();
    let mut exit = None;
    let mut marks: Vec<&'static str> = Vec::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if !sym.is_definition() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if let Some((_, kind)) = MARKERS.iter().find(|(m, _)| *m == name) {
            marks.push(kind);
        }
        if name == "exit" && exit.is_none() {
            exit = file_offset(&file, sym.address());
            continue;
        }
        let Some(idx) = probes::PROBES.iter().position(|p| p.symbol == name) else {
            continue;
        };
        if found.contains_key(&idx) {
            continue;
        }
        if let Some(off) = file_offset(&file, sym.address()) {
            let spec = &probes::PROBES[idx];
            let moved = if spec.entry == probes::FREE_PROGRAM {
                past_null_check(&map, off)
            } else {
                off
            };
            let off = if moved == off {
                at_emulated(&map, off, spec.arguments())
            } else {
                moved
            };
            found.insert(idx, off);
        }
    }
    let kind = ["jemalloc", "tcmalloc", "mimalloc", "musl", "glibc"]
        .into_iter()
        .find(|k| marks.contains(k))
        .or_else(|| {
            let name = path.file_name()?.to_string_lossy().to_string();
            ["jemalloc", "tcmalloc", "mimalloc", "musl"]
                .into_iter()
                .find(|k| name.contains(k))
        })
        .unwrap_or("unknown");
    let go = file.section_by_name(".gopclntab").is_some()
        || file.section_by_name(".go.buildinfo").is_some();
    Ok(ElfAllocs {
        go,
        functions: found
            .into_iter()
            .map(|(i, off)| (&probes::PROBES[i], off))
            .collect(),
        exit,
        kind,
    })
}

/// Where a free-like function at file offset `off` is probed: past its opening null check
/// (`test %rdi,%rdi` and a `je`, glibc's `free`), when it has one. A free of NULL does nothing
/// and is not recorded anyway; every other call falls through to the next instruction with
/// the same registers and stack pointer. The x86 kernel emulates a uprobe's `push`
/// but single-steps a `test` out of line, a second trap that cost about 15 us a call on the
/// machine the README's numbers come from: more than every other part of tracing a free.
fn past_null_check(image: &[u8], off: u64) -> u64 {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    const TEST_RDI: [u8; 3] = [0x48, 0x85, 0xff];
    let Some(code) = image.get(off as usize..) else {
        return off;
    };
    let start = if code.starts_with(&ENDBR64) { 4 } else { 0 };
    let code = &code[start..];
    if !code.starts_with(&TEST_RDI) {
        return off;
    }
    let je = match code.get(3..) {
        Some([0x74, _, ..]) => 2,
        Some([0x0f, 0x84, _, _, _, _, ..]) => 6,
        _ => return off,
    };
    off + (start + 3 + je) as u64
}

/// Where a function at file offset `off` is probed at the least cost: at its first instruction
/// the kernel emulates (a direct jump or call, a push of a register, a nop), when every
/// instruction before it only sets flags or scratch registers (jemalloc's `cmp $0x1000,%rdi;
/// ja`, tcmalloc's `mov tls_size(%rip),%rax; test %rax,%rax; jne`). The probe then sees what
/// it would at the entry: the arguments, the stack pointer and the return address on the
/// stack are untouched. The kernel single-steps any other instruction out of line, a second
/// trap: a probe on jemalloc's `cmp` let 69.6k operator new/delete pairs a second through, one
/// on the `ja` after it 913k (tracefs uprobe events, bench/newloop.cpp).
fn at_emulated(image: &[u8], off: u64, arguments: usize) -> u64 {
    use iced_x86::{
        Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
        Register,
    };
    let Some(code) = image.get(off as usize..).map(|c| &c[..c.len().min(64)]) else {
        return off;
    };
    let mut info = InstructionInfoFactory::new();
    // What the entry program reads: its arguments, the stack and frame pointers.
    let args = [
        Register::RDI,
        Register::RSI,
        Register::RDX,
        Register::RCX,
        Register::R8,
        Register::R9,
    ];
    let kept: Vec<Register> = args[..arguments.min(6)]
        .iter()
        .chain(&[Register::RSP, Register::RBP])
        .copied()
        .collect();
    for insn in Decoder::with_ip(64, code, off, DecoderOptions::NONE)
        .into_iter()
        .take(12)
    {
        if insn.is_invalid() {
            return off;
        }
        let emulated = match insn.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call => {
                matches!(insn.op0_kind(), OpKind::NearBranch32 | OpKind::NearBranch64)
            }
            FlowControl::Next => {
                insn.mnemonic() == Mnemonic::Nop
                    || (insn.mnemonic() == Mnemonic::Push && insn.op0_kind() == OpKind::Register)
            }
            _ => false,
        };
        if emulated {
            return insn.ip();
        }
        if insn.flow_control() != FlowControl::Next {
            return off;
        }
        let used = info.info(&insn);
        let writes = |a: OpAccess| {
            !matches!(
                a,
                OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess | OpAccess::None
            )
        };
        if used.used_memory().iter().any(|m| writes(m.access()))
            || used
                .used_registers()
                .iter()
                .any(|r| writes(r.access()) && kept.contains(&r.register().full_register()))
        {
            return off;
        }
    }
    off
}

pub(super) fn file_offset<'d, R: object::ReadRef<'d>>(
    file: &object::File<'d, R>,
    vaddr: u64,
) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (start, size) = (seg.address(), seg.size());
        let (off, fsize) = seg.file_range();
        (vaddr >= start && vaddr < start + size && vaddr - start < fsize)
            .then(|| off + (vaddr - start))
    })
}

fn is_libc(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

fn is_loader(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.starts_with("ld-linux") || name.starts_with("ld64.so")
}

/// Picks the allocator among candidate files in symbol lookup order (the executable first):
/// the first file defining both `malloc` and `free`, except that the C library yields to a
/// later allocator library (a preload or link whose order maps do not reveal) and the dynamic
/// loader's private malloc never counts. Also probed: the first other file defining C++'s
/// `operator new` (libstdc++), files with an allocator interface of their own, and `exit`.
pub fn choose(candidates: Vec<(PathBuf, PathBuf)>) -> Result<Option<AllocatorLib>> {
    let mut scanned: Vec<(PathBuf, PathBuf, ElfAllocs)> = Vec::new();
    for (i, (path, open_path)) in candidates.into_iter().enumerate() {
        if is_loader(&path) {
            continue;
        }
        match allocator_functions(&open_path) {
            Ok(f) => scanned.push((path, open_path, f)),
            Err(e) if i == 0 => return Err(e),
            Err(_) => continue,
        }
    }
    let serves_malloc = |f: &ElfAllocs| f.defines("malloc") && f.defines("free");
    let main = scanned
        .iter()
        .enumerate()
        .find(|(i, (p, _, f))| serves_malloc(f) && !(*i > 0 && is_libc(p)))
        .or_else(|| {
            scanned
                .iter()
                .enumerate()
                .find(|(_, (_, _, f))| serves_malloc(f))
        })
        .map(|(i, _)| i);
    let notes = runtime_notes(&scanned);
    let Some(main) = main else {
        // A pure Go program: no malloc anywhere, only the mappings its runtime makes.
        return Ok(scanned
            .first()
            .filter(|(_, _, f)| f.go)
            .map(|(path, open_path, _)| AllocatorLib {
                path: path.clone(),
                open_path: open_path.clone(),
                kind: "go",
                functions: Vec::new(),
                exit: None,
                also: Vec::new(),
                raw_map_syscalls: true,
                notes: vec![format!(
                    "{} is a Go program without the C library: the Go runtime manages its \
                     heap with no malloc; tracer sees the memory mappings the runtime grows it \
                     by (category mmap), not Go's objects",
                    path.display()
                )],
            }));
    };
    let lib = |i: usize, functions: Vec<(&'static ProbeSpec, u64)>, exit: Option<u64>| {
        let (path, open_path, f) = &scanned[i];
        AllocatorLib {
            path: path.clone(),
            open_path: open_path.clone(),
            kind: f.kind,
            functions,
            exit,
            also: Vec::new(),
            notes: Vec::new(),
            raw_map_syscalls: false,
        }
    };
    let m = &scanned[main].2;
    let mut out = lib(main, m.group(|_| true), m.exit);
    // The first other file that defines `symbol`.
    let first_other = |symbol: &str| {
        scanned
            .iter()
            .position(|(_, _, f)| f.defines(symbol))
            .filter(|&i| i != main)
    };
    let cxx = first_other(probes::CXX_NEW);
    // Where exceptions are thrown from (libstdc++): see probes::Group::Throw.
    let throw = first_other("__cxa_throw");
    let mut exit_found = out.exit.is_some();
    for (i, (path, _, f)) in scanned.iter().enumerate() {
        if i == main {
            continue;
        }
        let mut functions = Vec::new();
        if Some(i) == cxx {
            functions.extend(f.group(|g| g == Group::CxxNew));
        }
        if Some(i) == throw {
            functions.extend(f.group(|g| g == Group::Throw));
        }
        if f.has_own_allocator() {
            functions.extend(f.group(|g| g == Group::Own));
        }
        if is_libc(path) {
            // The mapping wrappers the program calls are its C library's.
            functions.extend(f.group(|g| g == Group::Syscall));
        }
        // Held at exit: the exit the process calls is its C library's.
        let exit = if !exit_found && is_libc(path) {
            f.exit
        } else {
            None
        };
        exit_found |= exit.is_some();
        if !functions.is_empty() || exit.is_some() {
            out.also.push(lib(i, functions, exit));
        }
    }
    out.notes = notes;
    out.raw_map_syscalls = scanned.first().is_some_and(|(_, _, f)| f.go);
    Ok(Some(out))
}

/// The allocator libraries (jemalloc, tcmalloc, mimalloc) installed in `dirs`, one per file
/// (however many names link to it): probed up front when tracing every process, so that a
/// program started later on one of them is traced from its first call rather than from the
/// moment its exec is drained and its map read.
pub fn system_allocators(dirs: &[PathBuf]) -> Vec<AllocatorLib> {
    const PREFIXES: [&str; 3] = ["libjemalloc", "libtcmalloc", "libmimalloc"];
    let mut seen = std::collections::HashSet::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                PREFIXES.iter().any(|x| name.starts_with(x)) && name.contains(".so")
            })
            .collect();
        names.sort();
        for p in names {
            if p.is_file() && file_id(&p).is_some_and(|id| seen.insert(id)) {
                files.push(p);
            }
        }
    }
    files
        .into_iter()
        .filter_map(|p| choose(vec![(p.clone(), p)]).ok().flatten())
        .filter(|l| !l.functions.is_empty())
        .collect()
}

/// Language runtimes whose own heap tracer does not see, from the files a process maps (or
/// will): what the user should know, and what to do about it.
fn runtime_notes(scanned: &[(PathBuf, PathBuf, ElfAllocs)]) -> Vec<String> {
    let mut notes = Vec::new();
    let Some((exe, _, exe_f)) = scanned.first() else {
        return notes;
    };
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let exe_name = name(exe);
    if exe_f.go {
        notes.push(format!(
            "{} is a Go program: the Go runtime manages Go's heap itself; tracer sees the C \
             library's allocations (cgo) and the memory mappings the runtime grows its heap by \
             (category mmap), not Go's objects",
            exe.display()
        ));
    }
    if exe_name.starts_with("python")
        || scanned
            .iter()
            .any(|(p, _, _)| name(p).starts_with("libpython"))
    {
        notes.push(format!(
            "{} is a Python interpreter: objects up to 512 bytes come from pymalloc's arenas, \
             not malloc; run it with PYTHONMALLOC=malloc in its environment to trace every object",
            exe.display()
        ));
    }
    if scanned.iter().any(|(p, _, _)| name(p) == "libjvm.so") {
        notes.push(format!(
            "{} runs a Java VM: the Java heap is managed by the JVM and not traced; native \
             allocations are",
            exe.display()
        ));
    }
    if exe_name == "node" || exe_name == "nodejs" {
        notes.push(format!(
            "{} is Node.js: V8's JavaScript heap is not traced; native allocations are",
            exe.display()
        ));
    }
    notes
}

/// The allocator functions of `lib` (and the files probed with it) where `pid`'s memory holds
/// a breakpoint instruction (`int3`) that the file does not: uprobes already in place before
/// tracer attaches. Another tool's, or ones the kernel kept when a tracer was killed in the
/// middle of detaching ("failed to unregister, leaking uprobe"): every call there traps.
pub fn breakpoints_in_place(pid: u32, lib: &AllocatorLib) -> Vec<&'static str> {
    use std::os::unix::fs::FileExt;
    let Ok(maps) = procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for file in std::iter::once(lib).chain(&lib.also) {
        let Ok(f) = std::fs::File::open(&file.open_path) else {
            continue;
        };
        let Some(id) = file_id(&file.open_path) else {
            continue;
        };
        for (spec, off) in &file.functions {
            let at = maps.iter().find_map(|m| {
                let dev = libc::makedev(m.dev.0 as u32, m.dev.1 as u32);
                let len = m.address.1 - m.address.0;
                ((dev, m.inode) == id
                    && m.perms.contains(procfs::process::MMPermissions::EXECUTE)
                    && *off >= m.offset
                    && *off - m.offset < len)
                    .then(|| m.address.0 + (*off - m.offset))
            });
            let Some(vaddr) = at else { continue };
            let (mut in_mem, mut in_file) = ([0u8], [0u8]);
            if mem.read_exact_at(&mut in_mem, vaddr).is_ok()
                && f.read_exact_at(&mut in_file, *off).is_ok()
                && in_mem[0] == 0xcc
                && in_file[0] != 0xcc
                && !found.contains(&spec.symbol)
            {
                found.push(spec.symbol);
            }
        }
    }
    found
}

/// The allocator of a running process, from its memory map.
pub fn for_pid(pid: u32) -> Result<AllocatorLib, Lookup> {
    let proc = procfs::process::Process::new(pid as i32).map_err(|_| Lookup::Gone(pid))?;
    let stat = proc.stat().map_err(|_| Lookup::Gone(pid))?;
    const PF_KTHREAD: u32 = 0x0020_0000;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(Lookup::KernelThread {
            pid,
            comm: stat.comm,
        });
    }
    let maps = proc.maps().map_err(|e| match e {
        // SAFETY: geteuid has no preconditions.
        procfs::ProcError::PermissionDenied(_) => Lookup::Denied {
            pid,
            root: unsafe { libc::geteuid() } == 0,
        },
        procfs::ProcError::NotFound(_) => Lookup::Gone(pid),
        e => Lookup::Other(anyhow::anyhow!("cannot read /proc/{pid}/maps: {e}")),
    })?;
    let exe = proc.exe().ok();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(exe) = &exe {
        files.push(exe.clone());
    }
    for m in maps.iter() {
        // Code only: a file mapped as data (tracer reading an allocator library's symbols,
        // any program reading ELF files) is not a library the process calls into.
        if !m.perms.contains(procfs::process::MMPermissions::EXECUTE) {
            continue;
        }
        if let procfs::process::MMapPath::Path(p) = &m.pathname {
            if !files.contains(p) {
                files.push(p.clone());
            }
        }
    }
    if files.is_empty() {
        return Err(Lookup::NothingMapped(pid));
    }
    let candidates = files
        .into_iter()
        .map(|p| {
            let open = root.join(p.strip_prefix("/").unwrap_or(&p));
            (p, open)
        })
        .collect();
    choose(candidates)?.ok_or(Lookup::NoAllocator(pid))
}

/// Why a running process's allocator was not found ([`for_pid`]): callers branch on the kind,
/// and the message is built from it.
#[derive(Debug, thiserror::Error)]
pub enum Lookup {
    #[error("no process with pid {0} (it does not exist or has already exited)")]
    Gone(u32),
    #[error(
        "pid {pid} ({comm}) is a kernel thread: it has no user-space memory map and no malloc to \
         trace; give the pid of a user process"
    )]
    KernelThread { pid: u32, comm: String },
    #[error("{}", denied(*pid, *root))]
    Denied { pid: u32, root: bool },
    /// Exiting, or caught in its exec before its program is mapped.
    #[error("process {0} has no mapped files: it is exiting or is not a user process")]
    NothingMapped(u32),
    #[error(
        "process {0} maps no file that defines malloc and free (a Go program, or an allocator \
         tracer does not know yet): nothing to probe"
    )]
    NoAllocator(u32),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn denied(pid: u32, root: bool) -> String {
    if root {
        format!(
            "permission denied reading /proc/{pid}/maps even as root: the process is protected \
             (it belongs to another user namespace, or a security module restricts access to it)"
        )
    } else {
        format!("permission denied reading /proc/{pid}/maps: tracer must run as root (sudo)")
    }
}

/// The allocator a program will use once started, found before it runs: the executable itself
/// when static, else the libraries its dynamic loader will load, in load order (see
/// [`ldso`]: nothing is run to find them).
pub fn for_program(program: &Path) -> Result<AllocatorLib> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    for_program_depth(program, 0, &LoaderEnv::of_this_process(), &cwd)
}

/// The files an ELF program maps before it runs code of its own: itself, its loader and its
/// libraries, found as [`for_program`] finds them (nothing is run). Empty for a script.
pub fn program_files(program: &Path) -> Vec<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let program = cwd.join(program);
    let Ok(dynamic) = super::ldso::read_dynamic(&program) else {
        return Vec::new();
    };
    let resolver = Resolver::new(Path::new("/"));
    let mut out = vec![program.clone()];
    if let Some(interp) = &dynamic.interp {
        out.push(resolver.open_path(Path::new(interp)));
    }
    if let Ok(libs) = resolver.libraries(&program, &LoaderEnv::of_this_process(), &cwd) {
        out.extend(libs.iter().map(|l| resolver.open_path(l)));
    }
    out
}

/// The files of running process `pid` that hold code, as it maps them
/// (`/proc/PID/map_files/START-END`: the very file mapped, whatever its path has become).
pub fn mapped_code(pid: u32) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    code_mappings(pid)
        .into_iter()
        .filter(|(file, _)| seen.insert(*file))
        .map(|(_, path)| path)
        .collect()
}

/// The files of code every process maps, most shared first (each as one of its mappings,
/// under `/proc/PID/map_files`).
pub fn mapped_code_everywhere() -> Vec<PathBuf> {
    let mut files: HashMap<FileKey, (usize, PathBuf)> = HashMap::new();
    let pids = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    for pid in pids {
        let mut seen = std::collections::HashSet::new();
        for (file, path) in code_mappings(pid) {
            if seen.insert(file) {
                files.entry(file).or_insert((0, path)).0 += 1;
            }
        }
    }
    let mut files: Vec<(usize, PathBuf)> = files.into_values().collect();
    files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    files.into_iter().map(|(_, path)| path).collect()
}

/// The mappings of executable file memory in `pid`'s map: (device, inode) and the mapping's
/// `/proc/PID/map_files` path.
fn code_mappings(pid: u32) -> Vec<(FileKey, PathBuf)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(|l| {
            let key = crate::unwind::store::code_file_of(l)?;
            let range = l.split_whitespace().next()?;
            let path = l.split_whitespace().nth(5)?;
            path.starts_with('/')
                .then(|| (key, PathBuf::from(format!("/proc/{pid}/map_files/{range}"))))
        })
        .collect()
}

/// The allocator of a process that has just exec'd (before its dynamic loader has mapped any
/// library): its new program's libraries as the loader will find them with the process's own
/// `LD_PRELOAD` and `LD_LIBRARY_PATH`. Files are only read, never run.
pub fn for_exec(pid: u32) -> Result<AllocatorLib> {
    // Paths mean what they mean in the process's own mount namespace: in another one (a
    // container), its map (through /proc/PID/root) is the way.
    let ns = |p: &str| {
        std::fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    if ns(&format!("/proc/{pid}/ns/mnt")) != ns("/proc/self/ns/mnt") {
        bail!("process {pid} is in another mount namespace");
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|_| anyhow::anyhow!("process {pid} exited right after its exec"))?;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    for_program_depth(&exe, 0, &LoaderEnv::from_environ(&environ), &cwd)
}

fn for_program_depth(
    program: &Path,
    depth: u32,
    env: &LoaderEnv,
    cwd: &Path,
) -> Result<AllocatorLib> {
    // A path relative to the directory the program starts in (the loader's `$ORIGIN` and
    // the files it opens are found from there).
    let program = &cwd.join(program);
    let mut head = Vec::new();
    {
        use std::io::Read;
        let f = std::fs::File::open(program)
            .with_context(|| format!("cannot read {}", program.display()))?;
        f.take(256)
            .read_to_end(&mut head)
            .with_context(|| format!("cannot read {}", program.display()))?;
    }
    if let Some(interp) = script_interpreter(&head) {
        // A script runs its interpreter: that is whose allocator the probes go on.
        if depth > 3 {
            bail!("{}: too many levels of #! interpreters", program.display());
        }
        let interp = super::launch::resolve_program(&interp.into_os_string())
            .with_context(|| format!("the interpreter of {}", program.display()))?;
        return for_program_depth(&interp, depth + 1, env, cwd);
    }
    if object::FileKind::parse(&*head).is_err() {
        bail!(
            "{} is neither an ELF executable nor a #! script",
            program.display()
        );
    }
    let resolver = Resolver::new(Path::new("/"));
    let mut candidates = vec![(program.to_path_buf(), program.to_path_buf())];
    for lib in resolver.libraries(program, env, cwd)? {
        let open = resolver.open_path(&lib);
        candidates.push((lib, open));
    }
    choose(candidates)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} does not use a C-library malloc tracer can probe (no malloc and free in it or its libraries)",
            program.display()
        )
    })
}

/// The interpreter named by a `#!` line (`/usr/bin/env NAME` names NAME, found in PATH).
fn script_interpreter(data: &[u8]) -> Option<PathBuf> {
    let line = data.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if Path::new(first).file_name().is_some_and(|n| n == "env") {
        let name = words.find(|w| !w.starts_with('-'))?;
        return Some(PathBuf::from(name));
    }
    Some(PathBuf::from(first))
}

/// Library paths from `ld.so --list` output (what `ldd` prints: `name => /path (0x...)` or
/// `/path (0x...)`), for tests that compare with it.
#[cfg(test)]
pub fn parse_loader_list(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.split_once("=>").map(|(_, r)| r.trim()).unwrap_or(l);
            let path = rest.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_loader_list() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibjemalloc.so.2 => /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n\
                   \tlibmissing.so => not found\n";
        assert_eq!(
            parse_loader_list(out),
            vec![
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    fn system_libc() -> PathBuf {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg("ldd /bin/sh")
            .output()
            .unwrap();
        parse_loader_list(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .find(|p| is_libc(p))
            .expect("a libc in ldd /bin/sh")
    }

    #[test]
    fn frees_are_probed_past_their_null_check() {
        // test %rdi,%rdi; je rel32; push %rbp (glibc's free)
        let glibc = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
        assert_eq!(past_null_check(&glibc, 0), 9);
        // endbr64; test %rdi,%rdi; je rel8
        let cet = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10, 0x55];
        assert_eq!(past_null_check(&cet, 0), 9);
        // Anything else is probed at its entry.
        for other in [
            &[0x55, 0x48, 0x89, 0xe5][..],
            &[0x48, 0x85, 0xff, 0x75, 0x10][..],
            &[0x48, 0x85, 0xff][..],
        ] {
            assert_eq!(past_null_check(other, 0), 0, "{other:x?}");
        }
        // At an offset, and past the end.
        let mut at = vec![0u8; 16];
        at.extend_from_slice(&glibc);
        assert_eq!(past_null_check(&at, 16), 25);
        assert_eq!(past_null_check(&glibc, 100), 100);
    }

    #[test]
    fn entries_are_probed_at_the_first_instruction_the_kernel_emulates() {
        // cmp $0x1000,%rdi; ja (jemalloc's malloc and operator new): at the ja.
        let je = [0x48, 0x81, 0xff, 0x00, 0x10, 0x00, 0x00, 0x77, 0x05];
        assert_eq!(at_emulated(&je, 0, 6), 7);
        // mov 0x10(%rip),%rax; test %rax,%rax; jne (tcmalloc's): at the jne.
        let tc = [
            0x48, 0x8b, 0x05, 0x10, 0, 0, 0, 0x48, 0x85, 0xc0, 0x75, 0x20,
        ];
        assert_eq!(at_emulated(&tc, 0, 6), 10);
        // mov %rdi,%rax; push %rbx: rax is scratch, at the push; at an offset too.
        let mut at = vec![0x90; 8];
        at.extend_from_slice(&[0x48, 0x89, 0xf8, 0x53]);
        assert_eq!(at_emulated(&at, 8, 6), 11);
        // Already emulated at the entry (push %rbp; nop; direct jmp): stays.
        for first in [&[0x55][..], &[0x90][..], &[0xe9, 0, 0, 0, 0][..]] {
            assert_eq!(at_emulated(first, 0, 6), 0, "{first:x?}");
        }
        // Writes what the entry programs read, or memory, or never reaches an emulated one:
        // stays at the entry.
        for other in [
            &[0x48, 0x89, 0xc7, 0x55][..],       // mov %rax,%rdi
            &[0x48, 0x83, 0xec, 0x08, 0x55][..], // sub $8,%rsp
            &[0x48, 0x89, 0x07, 0x55][..],       // mov %rax,(%rdi)
            &[0x48, 0x85, 0xff, 0xc3][..],       // test; ret
            &[0x06][..],                         // no 64-bit form
        ] {
            assert_eq!(at_emulated(other, 0, 6), 0, "{other:x?}");
        }
        // Too far: past the twelve instructions looked at.
        let far = [[0x48, 0x85, 0xff].repeat(12), vec![0x55]].concat();
        assert_eq!(at_emulated(&far, 0, 6), 0);
        assert_eq!(at_emulated(&je, 100, 6), 100);
        // A scratch register of a one-argument function (jemalloc's free moves the block's
        // address into rdx, rcx, rax before its first jne): skipped for it, not for more.
        let free = [0x48, 0x89, 0xfa, 0x48, 0x89, 0xf9, 0x75, 0x10];
        assert_eq!(at_emulated(&free, 0, 1), 6);
        assert_eq!(at_emulated(&free, 0, 3), 0);
    }

    #[test]
    fn finds_allocator_functions_in_the_system_libc() {
        let f = allocator_functions(&system_libc()).unwrap();
        assert!(f.exit.is_some());
        assert_eq!(f.kind, "glibc");
        for func in ["malloc", "free", "calloc", "realloc"] {
            assert!(f.defines(func), "{func} missing");
        }
        // Offsets are distinct for distinct functions (malloc is not free).
        let off = |s: &str| f.functions.iter().find(|(p, _)| p.symbol == s).unwrap().1;
        assert_ne!(off("malloc"), off("free"));
    }

    /// Debian's allocator libraries (scripts/setup installs them).
    fn debian_lib(name: &str) -> PathBuf {
        let p = PathBuf::from("/usr/lib/x86_64-linux-gnu").join(name);
        assert!(p.exists(), "{} missing: run scripts/setup", p.display());
        p
    }

    fn chosen(files: &[PathBuf]) -> AllocatorLib {
        choose(files.iter().map(|p| (p.clone(), p.clone())).collect())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn allocators_are_named_and_their_own_interfaces_probed() {
        let libc = system_libc();
        for (file, kind, own) in [
            (
                "libjemalloc.so.2",
                "jemalloc",
                ["mallocx", "sdallocx", "_ZdlPvm"],
            ),
            (
                "libtcmalloc_minimal.so.4",
                "tcmalloc",
                ["tc_malloc", "tc_free_sized", "_Znwm"],
            ),
            (
                "libmimalloc.so.2",
                "mimalloc",
                ["mi_malloc", "mi_free_size", "_ZdlPvm"],
            ),
        ] {
            // Preloaded: after the executable, before the C library; or linked, after it in
            // the map: the C library yields either way.
            let lib = debian_lib(file);
            for order in [
                vec![lib.clone(), libc.clone()],
                vec![libc.clone(), lib.clone()],
            ] {
                let exe = PathBuf::from("/bin/true");
                let a = chosen(&[&[exe][..], &order[..]].concat());
                assert_eq!(a.path, lib, "{order:?}");
                assert_eq!(a.kind, kind);
                assert_eq!(a.kinds(), kind);
                for s in own {
                    assert!(a.defines(s), "{file}: {s} not probed");
                }
                // Aliases share one address: no address is probed twice in a file.
                let mut offs: Vec<u64> = a.functions.iter().map(|(_, o)| *o).collect();
                let n = offs.len();
                offs.sort_unstable();
                offs.dedup();
                assert!(
                    offs.len() < n || kind == "jemalloc",
                    "{file}: no aliases seen"
                );
                // The process's exit is the C library's.
                assert!(a.also.iter().any(|x| x.path == libc && x.exit.is_some()));
            }
        }
    }

    #[test]
    fn the_systems_allocator_libraries_are_found_once_each() {
        let dir = debian_lib("libjemalloc.so.2")
            .parent()
            .unwrap()
            .to_path_buf();
        // The directory twice, as /lib and /usr/lib are on a merged system: still once each.
        let libs = system_allocators(&[dir.clone(), dir]);
        let kinds: std::collections::BTreeSet<&str> = libs.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["jemalloc", "mimalloc", "tcmalloc"]
        );
        let mut ids: Vec<_> = libs.iter().map(|l| file_id(&l.path).unwrap()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "a file twice");
        // Each with the standard interface, as when a process's malloc is that file.
        for l in &libs {
            assert!(
                l.defines("malloc") && l.defines("free"),
                "{}",
                l.path.display()
            );
            assert!(l.also.is_empty(), "{}", l.path.display());
        }
    }

    #[test]
    fn a_dynamic_program_uses_its_libc() {
        let lib = for_program(Path::new("/bin/sh")).unwrap();
        assert!(is_libc(&lib.path), "{:?}", lib.path);
    }

    #[test]
    fn this_process_uses_its_libc() {
        // An allocator library mapped as data (as tracer maps the files it reads) is not one
        // the process calls into.
        let f = std::fs::File::open(debian_lib("libtcmalloc_minimal.so.4")).unwrap();
        // SAFETY: a read-only mapping of a system library nobody rewrites during the test.
        let data = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let lib = for_pid(std::process::id()).unwrap();
        drop(data);
        assert!(is_libc(&lib.path), "{:?}", lib.path);
        assert!(lib.open_path.starts_with("/proc/"));
    }

    #[test]
    fn no_such_pid_is_a_clear_error() {
        let e = for_pid(4_194_300).unwrap_err();
        assert!(matches!(e, Lookup::Gone(4_194_300)), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("4194300") && e.contains("no process"), "{e}");
    }

    #[test]
    fn a_kernel_thread_is_refused() {
        // pid 2 is kthreadd on Linux.
        let e = for_pid(2).unwrap_err();
        assert!(matches!(e, Lookup::KernelThread { pid: 2, .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("kernel thread"), "{e}");
    }

    #[test]
    fn a_program_named_relative_to_the_directory_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy("/bin/sh", dir.path().join("sh")).unwrap();
        let lib = for_program_depth(Path::new("sh"), 0, &LoaderEnv::default(), dir.path()).unwrap();
        assert!(is_libc(&lib.path), "{:?}", lib.path);
        let lib =
            for_program_depth(Path::new("./sh"), 0, &LoaderEnv::default(), dir.path()).unwrap();
        assert!(is_libc(&lib.path), "{:?}", lib.path);
    }

    #[test]
    fn a_script_is_traced_through_its_interpreter() {
        let dir = std::env::temp_dir().join(format!("tracer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script.sh");
        std::fs::write(&script, "#!/bin/sh -e\necho hi\n").unwrap();
        assert!(is_libc(&for_program(&script).unwrap().path));
        std::fs::write(&script, "#!/usr/bin/env sh\necho hi\n").unwrap();
        assert!(is_libc(&for_program(&script).unwrap().path));
        std::fs::write(&script, "not a program\n").unwrap();
        let e = for_program(&script).unwrap_err().to_string();
        assert!(e.contains("neither an ELF"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn reads_shebang_lines() {
        assert_eq!(
            script_interpreter(b"#!/bin/sh\n"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            script_interpreter(b"#! /usr/bin/python3 -u\nx"),
            Some(PathBuf::from("/usr/bin/python3"))
        );
        assert_eq!(
            script_interpreter(b"#!/usr/bin/env -S python3 -u\n"),
            Some(PathBuf::from("python3"))
        );
        assert_eq!(script_interpreter(b"\x7fELF"), None);
    }
}
