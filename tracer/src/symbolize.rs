//! Turns return addresses into function, file:line and module, per process, with caches.
//!
//! A process's memory map is captured while it lives ([`Symbolizer::refresh`]) and kept after
//! it exits, so the final report still symbolizes. Addresses are translated to (file, file
//! offset) with that map and symbolized by blazesym from the ELF file itself (DWARF for lines
//! and inlined frames, demangled names). A miss is data, not an error: the frame keeps its
//! module and offset.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use blazesym::symbolize::{
    source::{Elf, Source},
    Input, Symbolized, Symbolizer as Blaze,
};
use serde::Serialize;

/// One frame of a symbolized stack. Inlined calls give several frames for one address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// The raw return address in the process, as a hex string.
    #[serde(serialize_with = "hex")]
    pub addr: u64,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the ELF file holding the address, as the process sees it.
    pub module: Option<String>,
    /// Offset of the address in that file.
    #[serde(serialize_with = "hex")]
    pub offset: u64,
    /// This frame was inlined into the next one (same address).
    pub inlined: bool,
    /// Why there is no function name (blazesym's reason, or tracer's): absent when named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsymbolized: Option<String>,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

impl Frame {
    /// The function, or `module+0xoffset` when there is no symbol (`[unknown] 0xaddr` when
    /// no module holds the address).
    pub fn name(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) => f.clone(),
            (None, Some(m)) => format!("{}+{:#x}", base_name(m), self.offset),
            (None, None) if self.is_cut() => "[stack cut]".into(),
            (None, None) => format!("[unknown] {:#x}", self.addr),
        }
    }

    /// The pseudo-frame that ends a stack cut short (its `unsymbolized` says why).
    pub fn is_cut(&self) -> bool {
        self.function.is_none()
            && self
                .unsymbolized
                .as_deref()
                .is_some_and(|u| u.starts_with(CUT_PREFIX))
    }

    /// `file:line` (the file's base name), when both are known.
    pub fn location(&self) -> Option<String> {
        Some(format!("{}:{}", base_name(self.file.as_ref()?), self.line?))
    }

    /// `function (file:line)`, or [`Frame::name`] when there is no line to add.
    pub fn short(&self) -> String {
        match (&self.function, self.location()) {
            (Some(f), Some(at)) => format!("{f} ({at})"),
            _ => self.name(),
        }
    }
}

/// The last component of a path (the whole of it when it has none).
fn base_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The path as the process sees it.
    pub path: PathBuf,
    /// Where tracer can open it (through /proc/PID/root while the process lives; `path` when
    /// that is gone). None: the file must not be read (a replay found it changed).
    pub open_path: Option<PathBuf>,
}

/// The reason a stack's last frame gives when it ends at a return address outside the
/// process's executable memory (see [`Symbolizer::stack`]).
pub const CUT: &str = "stack cut: a return address outside the process's code (a caller \
                       built without frame pointers?)";
/// How every reason of a cut stack's last frame starts.
pub const CUT_PREFIX: &str = "stack cut";

/// Why the kernel's walk cut a stack short, from its pseudo-frame (see
/// `tracer_common::stack_cut_marker`).
pub fn cut_reason(mark: u64) -> String {
    use tracer_common::stack_end;
    let end = (mark - tracer_common::STACK_CUT_MARK) as u16;
    let why = match end & stack_end::REASON {
        stack_end::DEPTH => "deeper than the frames a record carries",
        stack_end::NO_INFO => "an address no unwind rule covers",
        stack_end::UNSUPPORTED => "an unwind rule tracer does not follow",
        stack_end::UNREADABLE => "a saved register or return address could not be read",
        stack_end::UNMAPPED => "a return address in no mapping of the process",
        _ => "frame pointers ended",
    };
    if end & stack_end::FP_FALLBACK != 0 {
        format!(
            "{CUT_PREFIX}: {why}, after a frame walked by frame pointers while its file's \
             unwind table was being built"
        )
    } else {
        format!("{CUT_PREFIX}: {why}")
    }
}

pub struct Symbolizer {
    blaze: Blaze,
    maps: HashMap<u32, Vec<Mapping>>,
    cache: HashMap<(u32, u64), Arc<Vec<Frame>>>,
    /// Build ids of the files mapped, read once each.
    build_ids: HashMap<PathBuf, Vec<u8>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer {
            blaze: Blaze::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build(),
            maps: HashMap::new(),
            cache: HashMap::new(),
            build_ids: HashMap::new(),
        }
    }

    /// The build id of a mapping's file (empty when it has none or cannot be read), read
    /// once per file.
    pub fn build_id_of(&mut self, m: &Mapping) -> Vec<u8> {
        let file = m.open_path.as_ref().unwrap_or(&m.path);
        if let Some(id) = self.build_ids.get(file) {
            return id.clone();
        }
        let id = build_id(file).unwrap_or_default();
        self.build_ids.insert(file.clone(), id.clone());
        id
    }

    /// Re-reads the process's memory map while it lives; keeps the last one once it is gone.
    #[cfg(test)]
    pub fn refresh(&mut self, pid: u32) -> bool {
        match read_maps(pid) {
            Some(m) if !m.is_empty() => {
                self.maps.insert(pid, m);
                true
            }
            _ => false,
        }
    }

    /// Installs a memory map (read by the caller, or from a recording).
    pub fn set_maps(&mut self, pid: u32, maps: Vec<Mapping>) {
        self.maps.insert(pid, maps);
    }

    /// Forgets a process's map and symbols (it exec'd: its addresses mean something else now).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.cache.retain(|(p, _), _| *p != pid);
    }

    /// The memory map in use for `pid`.
    pub fn maps_of(&self, pid: u32) -> Option<&[Mapping]> {
        self.maps.get(&pid).map(|m| &m[..])
    }

    pub fn knows(&self, pid: u32, addr: u64) -> bool {
        self.mapping(pid, addr).is_some()
    }

    /// The mapping of `pid` that holds `addr`.
    pub fn mapping(&self, pid: u32, addr: u64) -> Option<&Mapping> {
        self.maps
            .get(&pid)?
            .iter()
            .find(|m| addr >= m.start && addr < m.end)
    }

    /// Symbolizes return addresses of `pid` (innermost first) into frames, innermost first.
    ///
    /// A return address past the first that lies in no file the process maps and no
    /// anonymous executable memory is no return address: a frame-pointer walk through code
    /// built without frame pointers reads garbage there. The stack ends at it, with a
    /// [`CUT`] frame, so that one call site does not become as many rows as there are
    /// garbage values.
    pub fn stack(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.prepare(addrs.iter().map(|&a| (pid, a)));
        let known = self.maps.get(&pid).is_some_and(|m| !m.is_empty());
        let mut out = Vec::new();
        for (i, &a) in addrs.iter().enumerate() {
            if a >= tracer_common::STACK_CUT_MARK {
                out.push(Frame {
                    addr: a,
                    unsymbolized: Some(cut_reason(a)),
                    ..Frame::default()
                });
                break;
            }
            if i > 0 && known && self.mapping(pid, a).is_none() {
                out.push(Frame {
                    unsymbolized: Some(CUT.into()),
                    ..Frame::default()
                });
                break;
            }
            if let Some(f) = self.cache.get(&(pid, a)) {
                out.extend(f.iter().cloned());
            }
        }
        out
    }

    /// Symbolizes the addresses not in the cache yet, with one blazesym call per file for all
    /// of its addresses (a report's thousands of frames fall in a few dozen files).
    pub fn prepare(&mut self, wanted: impl IntoIterator<Item = (u32, u64)>) {
        // Per file to open: (pid, address, offset in the file, module as the process sees it).
        // Keyed by (the path to open, the path as the process saw it).
        let mut by_file: HashMap<(PathBuf, PathBuf), Vec<Wanted>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (pid, addr) in wanted {
            if addr >= tracer_common::STACK_CUT_MARK
                || self.cache.contains_key(&(pid, addr))
                || !seen.insert((pid, addr))
            {
                continue;
            }
            let Some(m) = self.mapping(pid, addr) else {
                let frame = Frame {
                    addr,
                    unsymbolized: Some("not in the process's memory map".into()),
                    ..Frame::default()
                };
                self.cache.insert((pid, addr), Arc::new(vec![frame]));
                continue;
            };
            let offset = addr - m.start + m.offset;
            let module = m.path.to_string_lossy().into_owned();
            let open = match &m.open_path {
                Some(p) if p.exists() => p.clone(),
                Some(_) => m.path.clone(),
                None => {
                    let why = if m.path.as_os_str() == ANON_CODE {
                        "code with no file (a JIT's)"
                    } else {
                        "the file changed since"
                    };
                    let frame = unknown(addr, offset, module, why.into());
                    self.cache.insert((pid, addr), Arc::new(vec![frame]));
                    continue;
                }
            };
            by_file
                .entry((open, m.path.clone()))
                .or_default()
                .push((pid, addr, offset, module));
        }
        for ((open, plain), items) in by_file {
            // A return address points after the call: look up the call instruction itself.
            let lookups: Vec<u64> = items
                .iter()
                .map(|&(_, _, off, _)| off.saturating_sub(1))
                .collect();
            let src = Source::Elf(Elf::new(&open));
            let mut results = self.blaze.symbolize(&src, Input::FileOffset(&lookups));
            // The process went meanwhile (its /proc/PID/root with it): the file as it saw it.
            if results.is_err() && open != plain {
                let src = Source::Elf(Elf::new(&plain));
                results = self.blaze.symbolize(&src, Input::FileOffset(&lookups));
            }
            for (i, (pid, addr, offset, module)) in items.into_iter().enumerate() {
                let frames = match &results {
                    Ok(r) => match r.get(i) {
                        Some(Symbolized::Sym(sym)) => frames_of(sym, addr, offset, &module),
                        Some(Symbolized::Unknown(reason)) => {
                            vec![unknown(addr, offset, module, reason.to_string())]
                        }
                        None => vec![unknown(addr, offset, module, "no answer".into())],
                    },
                    Err(e) => vec![unknown(addr, offset, module, e.to_string())],
                };
                self.cache.insert((pid, addr), Arc::new(frames));
            }
        }
    }
}

/// An address to symbolize: (pid, address, offset in its file, module as the process sees it).
type Wanted = (u32, u64, u64, String);

/// A frame with its module and offset only, and why.
fn unknown(addr: u64, offset: u64, module: String, why: String) -> Frame {
    Frame {
        addr,
        module: Some(module),
        offset,
        unsymbolized: Some(why),
        ..Frame::default()
    }
}

/// The frames of one symbolized address: the calls inlined there, innermost first, then the
/// function itself.
fn frames_of(
    sym: &blazesym::symbolize::Sym<'_>,
    addr: u64,
    offset: u64,
    module: &str,
) -> Vec<Frame> {
    let code = |ci: Option<&blazesym::symbolize::CodeInfo>| {
        ci.map(|ci| {
            let file = match &ci.dir {
                Some(d) if !d.as_os_str().is_empty() => d.join(&*ci.file),
                _ => PathBuf::from(&*ci.file),
            };
            (Some(file.to_string_lossy().into_owned()), ci.line)
        })
        .unwrap_or((None, None))
    };
    let frame = |name: &str, ci, inlined| {
        let (file, line) = code(ci);
        Frame {
            addr,
            function: Some(name.to_owned()),
            file,
            line,
            module: Some(module.to_owned()),
            offset,
            inlined,
            unsymbolized: None,
        }
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|inl| frame(&inl.name, inl.code_info.as_ref(), true))
        .collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref(), false));
    frames
}

/// File-backed mappings of a live process, opened through its root.
///
/// Read with one `read` into a large buffer: the kernel then walks the whole address space
/// under one lock, so a process exiting meanwhile is seen whole or not at all (its teardown
/// waits for the walk), where a line-by-line read could catch it half unmapped.
pub fn read_maps(pid: u32) -> Option<Vec<Mapping>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/proc/{pid}/maps")).ok()?;
    // Read into capacity never zeroed: zeroing a megabyte for every read cost more than the
    // read itself on a host that starts hundreds of processes a second.
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let spare = buf.spare_capacity_mut();
        // SAFETY: read(2) writes at most `spare.len()` bytes into the spare capacity.
        let n = unsafe { libc::read(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return None;
        }
        if n == 0 {
            break;
        }
        // SAFETY: the `n` bytes after the length were just written by read(2).
        unsafe { buf.set_len(buf.len() + n as usize) };
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
    }
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    // A process that has exited (a zombie) still has a maps file, empty: that is no map.
    Some(parse_maps(&String::from_utf8_lossy(&buf), &root)).filter(|m| !m.is_empty())
}

/// The name anonymous executable memory gets as a module.
pub const ANON_CODE: &str = "[anonymous code]";

/// The file-backed lines of a `/proc/PID/maps` text (`start-end perms offset dev inode path`).
fn parse_maps(text: &str, root: &Path) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(6, ' ');
            let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
            let (_dev, _inode) = (f.next()?, f.next()?);
            let path = f.next()?.trim_start();
            let (start, end) = range.split_once('-')?;
            if path.is_empty() && perms.contains('x') {
                // Anonymous code (a JIT's): a place return addresses may be, with no file.
                return Some(Mapping {
                    start: u64::from_str_radix(start, 16).ok()?,
                    end: u64::from_str_radix(end, 16).ok()?,
                    offset: 0,
                    path: PathBuf::from(ANON_CODE),
                    open_path: None,
                });
            }
            if !path.starts_with('/') {
                return None; // anonymous data, [heap], [stack], [vdso]...
            }
            let path = Path::new(path.strip_suffix(" (deleted)").unwrap_or(path));
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: path.to_path_buf(),
                open_path: Some(root.join(path.strip_prefix("/").unwrap_or(path))),
            })
        })
        .collect()
}

/// The GNU build id of an ELF file (None when it has none or cannot be read).
pub fn build_id(path: &Path) -> Option<Vec<u8>> {
    use object::Object;
    // Read through a cache: only the headers and the note are read, not the whole file.
    let cache = object::ReadCache::new(std::fs::File::open(path).ok()?);
    let file = object::File::parse(&cache).ok()?;
    file.build_id().ok().flatten().map(|b| b.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function() -> u64 {
        std::hint::black_box(marker_function as *const () as u64)
    }

    #[test]
    fn maps_lines_parse_as_the_kernel_writes_them() {
        let text = "55d0c0a00000-55d0c0a02000 r--p 00000000 08:01 1234  /usr/bin/prog\n\
                    7f0000001000-7f0000002000 r-xp 00028000 08:01 99 /lib/libc.so.6\n\
                    7f0000003000-7f0000004000 rw-p 00000000 00:00 0 \n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0  [stack]\n\
                    7f0000005000-7f0000006000 r-xp 00001000 08:01 7 /tmp/a b (deleted)\n";
        let m = parse_maps(text, Path::new("/proc/1/root"));
        assert_eq!(m.len(), 3);
        // Anonymous code is kept, as such.
        let jit = parse_maps(
            "7f0000007000-7f0000008000 r-xp 00000000 00:00 0 \n",
            Path::new("/proc/1/root"),
        );
        assert_eq!(jit[0].path, Path::new(ANON_CODE));
        assert_eq!(jit[0].open_path, None);
        assert_eq!(
            (m[0].start, m[0].end, m[0].offset),
            (0x55d0c0a00000, 0x55d0c0a02000, 0)
        );
        assert_eq!(m[1].path, Path::new("/lib/libc.so.6"));
        assert_eq!(m[1].offset, 0x28000);
        assert_eq!(
            m[1].open_path.as_deref(),
            Some(Path::new("/proc/1/root/lib/libc.so.6"))
        );
        assert_eq!(m[2].path, Path::new("/tmp/a b"));
        // This process's own map, read whole.
        let me = read_maps(std::process::id()).unwrap();
        assert!(me.iter().any(|m| m.path.to_string_lossy().contains("libc")));
    }

    #[test]
    fn symbolizes_a_function_of_this_test_binary() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        assert!(s.refresh(pid));
        // An address inside marker_function (+1 because lookups use addr - 1).
        let addr = marker_function() + 1;
        let frames = s.stack(pid, &[addr]);
        let f = frames.last().unwrap();
        assert!(
            f.function
                .as_deref()
                .unwrap_or("")
                .contains("marker_function"),
            "{f:?}"
        );
        assert!(
            f.file.as_deref().unwrap_or("").ends_with("symbolize.rs"),
            "{f:?}"
        );
        assert!(f.line.unwrap_or(0) > 0);
        assert!(f.module.is_some());
    }

    #[test]
    fn an_unmapped_address_is_a_frame_not_an_error() {
        let mut s = Symbolizer::new();
        let f = s.stack(1_234_567, &[0x1234]);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].function, None);
        assert_eq!(f[0].short(), "[unknown] 0x1234");
        assert!(f[0].unsymbolized.is_some());
    }

    #[test]
    fn a_file_without_symbols_gives_module_and_offset() {
        let mut s = Symbolizer::new();
        s.set_maps(
            9,
            vec![Mapping {
                start: 0x1000,
                end: 0x2000,
                offset: 0x3000,
                path: "/nonexistent/libgone.so".into(),
                open_path: Some("/nonexistent/libgone.so".into()),
            }],
        );
        let f = s.stack(9, &[0x1010]);
        assert_eq!(f[0].short(), "libgone.so+0x3010");
        // blazesym's reason is kept.
        assert!(f[0].unsymbolized.is_some(), "{f:?}");
    }

    /// A return address outside the process's code ends the stack with one cut frame, so
    /// stacks that differ only in the garbage read past it read the same; anonymous code (a
    /// JIT's) is code.
    #[test]
    fn a_stack_ends_at_a_return_address_outside_the_code() {
        let mut s = Symbolizer::new();
        let lib = |start: u64, path: &str| Mapping {
            start,
            end: start + 0x1000,
            offset: 0,
            path: path.into(),
            open_path: None,
        };
        s.set_maps(
            9,
            vec![
                lib(0x1000, "/nonexistent/libgone.so"),
                lib(0x8000, ANON_CODE),
            ],
        );
        let a = s.stack(9, &[0x1010, 0x8010, 0x277f_dc26, 0x1020]);
        let b = s.stack(9, &[0x1010, 0x8010, 0x2a7a_cca6]);
        assert_eq!(a.len(), 3, "{a:?}");
        assert_eq!(a, b);
        assert_eq!(a[1].module.as_deref(), Some(ANON_CODE));
        assert_eq!(a[2].unsymbolized.as_deref(), Some(CUT));
        assert_eq!(a[2].addr, 0);
        assert_eq!(a[2].short(), "[stack cut]");
        // The allocator's caller itself is always kept; a process whose map is not known is
        // not cut.
        assert_eq!(s.stack(9, &[0x5, 0x1010]).len(), 2);
        assert_eq!(s.stack(10, &[0x1010, 0x5, 0x6]).len(), 3);
    }

    /// Many addresses of one file in one call give what one call per address gives.
    #[test]
    fn a_batch_reads_as_single_lookups_do() {
        let pid = std::process::id();
        let mut one = Symbolizer::new();
        assert!(one.refresh(pid));
        let addrs: Vec<u64> = (0..64).map(|i| marker_function() + 1 + i * 3).collect();
        let singles: Vec<Vec<Frame>> = addrs.iter().map(|&a| one.stack(pid, &[a])).collect();
        let mut batch = Symbolizer::new();
        assert!(batch.refresh(pid));
        batch.prepare(addrs.iter().map(|&a| (pid, a)));
        for (a, want) in addrs.iter().zip(singles) {
            assert_eq!(batch.stack(pid, &[*a]), want);
        }
    }

    #[test]
    fn maps_are_kept_after_the_process_is_gone() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        assert!(s.refresh(pid));
        assert!(!s.refresh(4_194_301));
        assert!(s.knows(pid, marker_function()));
    }
}
