//! Attaching the probe table to allocator files: one uprobe per address through aya, or
//! uprobe-multi links (one per program and file) where the kernel has them; each address
//! probed once per scope; attach failures explained by their system error.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::RawTracePoint;
use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
    Ebpf,
};
use tracer_common::{
    AllocFn, COOKIE_AT_RETS, COOKIE_ENTRY_ONLY, COOKIE_MAP_CALL, COOKIE_MAP_NR_SHIFT,
    COOKIE_NESTING_FREES,
};

use super::{
    multi::MultiPrograms,
    probes::{
        Group, ProbeSpec, ENTRY_ONLY_PROGRAM, FREE_PROGRAM, MAP_RETURN_PROGRAM, PROBES,
        RETURN_PROGRAM, RET_SITE_PROGRAM,
    },
    returns::{self, ElfCode},
    target::{file_id, AllocatorLib},
};

/// Tells the map reader a process is entering `exit()`.
pub const EXIT_PROGRAM: &str = "exiting";
/// The exit probe's label (its cookie is not read).
pub const EXIT_SPEC: ProbeSpec = ProbeSpec {
    symbol: "exit",
    func: AllocFn::Free,
    entry: EXIT_PROGRAM,
    group: Group::Std,
};
/// One uprobe-multi link to make: program, at returns, (offset, cookie) pairs.
type LinkPlan = (&'static str, bool, Vec<(u64, u64)>);
/// A throwing `operator new`'s offset → the offsets of its `ret` sites (see
/// `collector::returns`).
type RetSites = HashMap<u64, Vec<u64>>;
/// Set on a `ret` site's offset in [`Attached::probed`]: its probe is not an entry's.
const RET_SITE_KEY: u64 = 1 << 63;

/// How the memory-mapping system calls (mmap, munmap, mremap) are seen.
pub enum MapHook {
    /// Not traced (--no-mmap).
    Off,
    /// fexit programs on the system calls: every call is seen and no other system call pays;
    /// the C library's wrappers are probed at entry only, to name the caller.
    Fexit,
    /// No fexit here (`why`): the C library's wrappers are the record (entry and return) for
    /// the processes whose mappings they all make, and the sys_enter/sys_exit tracepoints,
    /// which every system call on the host pays for, are attached at the first process that
    /// needs them (a Go runtime's own system calls, every process traced).
    /// `wrappers` false: the tracepoints for every process (a test's choice).
    NoFexit {
        why: String,
        wrappers: bool,
        tracepoints: bool,
    },
}

pub struct Attached {
    maps: MapHook,
    /// Every process is traced (no pid filter): the tracepoints see all of them.
    system_wide: bool,
    /// Every uprobe attached through aya (one perf event each), by program: detached
    /// together when the collector goes.
    links: Vec<(&'static str, UProbeLinkId)>,
    /// The programs loaded for uprobe-multi links, when the kernel has them (6.6), and the
    /// links: one per program and file.
    multi: Option<MultiPrograms>,
    multi_links: Vec<std::os::fd::OwnedFd>,
    /// Sampling with uprobe sessions: an allocating function's entry program runs at its
    /// return too when the call is sampled, and no separate return probe goes on.
    sessions: bool,
    /// Addresses probed: (process, 0 for every process; file identity; offset). A file probed
    /// up front, or as another process's allocator, is not probed twice.
    probed: HashSet<(u32, (u64, u64), u64)>,
}

impl Attached {
    pub fn new(
        maps: MapHook,
        system_wide: bool,
        multi: Option<MultiPrograms>,
        sessions: bool,
    ) -> Attached {
        Attached {
            sessions,
            maps,
            system_wide,
            links: Vec::new(),
            multi,
            multi_links: Vec::new(),
            probed: HashSet::new(),
        }
    }

    /// The uprobe-multi links are left open for the process's exit to release (see the
    /// collector's `Drop`).
    pub fn leak_multi_links(&mut self) {
        std::mem::forget(std::mem::take(&mut self.multi_links));
    }

    /// Attaches the probe table to `lib` (and the files probed with it), for one process or
    /// (pid None) every process. Returns warnings (optional functions missing).
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        lib: &AllocatorLib,
        pid: Option<u32>,
    ) -> Result<Vec<String>> {
        let scope = match pid.and_then(NonZeroU32::new) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        let mut warnings = Vec::new();
        let system_wide = self.system_wide;
        let mut by_wrappers = !system_wide && lib.maps_by_wrappers();
        if let MapHook::NoFexit {
            why,
            wrappers,
            tracepoints,
        } = &mut self.maps
        {
            by_wrappers &= *wrappers;
            if !by_wrappers && !*tracepoints {
                attach_syscall_tracepoints(ebpf)?;
                *tracepoints = true;
                warnings.push(format!(
                    "memory mappings are traced by the sys_enter/sys_exit tracepoints, which \
                     every system call of every process on the host pays for ({}), because \
                     fexit on the mapping system calls is not available here ({why}); \
                     --no-mmap does without",
                    if lib.raw_map_syscalls {
                        format!("{} makes them without the C library", lib.path.display())
                    } else if system_wide {
                        "every process is traced".to_string()
                    } else {
                        "the C library's wrappers are not probed".to_string()
                    }
                ));
            }
        } else {
            by_wrappers = false;
        }
        if lib.mappings_only() {
            // A pure Go program: its runtime's mappings are all there is to trace.
            if matches!(self.maps, MapHook::Off) {
                bail!(
                    "{} is a Go program without the C library: with --no-mmap there is nothing \
                     of it to trace (its heap grows by memory mappings)",
                    lib.path.display()
                );
            }
            return Ok(warnings);
        }
        for p in PROBES.iter().filter(|p| p.group == Group::Std) {
            if !lib.defines(p.symbol) {
                if p.required() {
                    bail!(
                        "{} does not define {}: it is not an allocator tracer can follow",
                        lib.path.display(),
                        p.symbol
                    );
                }
                warnings.push(format!(
                    "{} has no {}; calls to it (if any) are not traced",
                    lib.path.display(),
                    p.symbol
                ));
            }
        }
        for file in std::iter::once(lib).chain(&lib.also) {
            self.attach_file(ebpf, file, scope, by_wrappers, &mut warnings)?;
        }
        Ok(warnings)
    }

    /// One file's probes: one per address (aliases share one), returns before entries so
    /// that every entry the programs record has its return probed too. `by_wrappers`: the C
    /// library's mapping wrappers are the record of the process's mappings (see [`MapHook`]).
    fn attach_file(
        &mut self,
        ebpf: &mut Ebpf,
        lib: &AllocatorLib,
        scope: UProbeScope,
        by_wrappers: bool,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let trace_maps = !matches!(self.maps, MapHook::Off);
        let plan: Vec<_> = lib
            .functions
            .iter()
            .filter(|(p, _)| trace_maps || p.group != Group::Syscall)
            .filter(|(_, off)| seen.insert(*off))
            .copied()
            .collect();
        // Several free-like functions in one file may call one another: their frees are
        // checked for nesting (glibc's lone free is not).
        let nesting = plan.iter().filter(|(p, _)| p.entry == FREE_PROGRAM).count() > 1;
        let flags = if nesting { COOKIE_NESTING_FREES } else { 0 };
        let cookies = Cookies {
            lib,
            flags,
            by_wrappers,
        };
        // What this scope already has probed in this file stays as it is.
        let pid = match scope {
            UProbeScope::OneProcess(p) => Some(p.get()),
            _ => None,
        };
        let id = file_id(&lib.open_path)
            .with_context(|| format!("cannot read {}", lib.open_path.display()))?;
        let key = |off: u64| (pid.unwrap_or(0), id, off);
        let mut plan: Vec<_> = plan
            .into_iter()
            .filter(|(_, off)| self.probed.insert(key(*off)))
            .collect();
        let exit = lib.exit.filter(|off| self.probed.insert(key(*off)));
        if plan.is_empty() && exit.is_none() {
            return Ok(());
        }
        let mut rets = ret_sites(&cookies, &mut plan, warnings);
        // A site shared with a function probed before (in this scope) is probed already.
        for sites in rets.values_mut() {
            sites.retain(|s| self.probed.insert(key(s | RET_SITE_KEY)));
        }
        if self.multi.is_some() {
            return self.attach_file_multi(&cookies, &plan, &rets, exit, pid);
        }
        for (p, off) in &plan {
            for site in rets.get(off).into_iter().flatten() {
                let probe = (RET_SITE_PROGRAM, *site, cookies.of(p));
                self.attach_one(ebpf, probe, p.symbol, lib, scope)?;
            }
            if let Some(ret) = cookies
                .return_program(p)
                .filter(|_| !rets.contains_key(off))
            {
                self.attach_one(ebpf, (ret, *off, cookies.of(p)), p.symbol, lib, scope)?;
            }
        }
        for (p, off) in &plan {
            let entry = cookies.entry_program(p);
            let at_rets = if rets.contains_key(off) {
                COOKIE_AT_RETS
            } else {
                0
            };
            let probe = (entry, *off, cookies.of(p) | at_rets);
            self.attach_one(ebpf, probe, p.symbol, lib, scope)?;
        }
        if let Some(off) = exit {
            let cookie = EXIT_SPEC.func as u64;
            self.attach_one(ebpf, (EXIT_PROGRAM, off, cookie), "exit", lib, scope)?;
        }
        Ok(())
    }

    /// [`attach_file`]'s plan as uprobe-multi links: one per program, returns first.
    fn attach_file_multi(
        &mut self,
        cookies: &Cookies,
        plan: &[(&'static ProbeSpec, u64)],
        rets: &RetSites,
        exit: Option<u64>,
        pid: Option<u32>,
    ) -> Result<()> {
        let lib = cookies.lib;
        let mut returns: BTreeMap<&'static str, Vec<(u64, u64)>> = BTreeMap::new();
        let mut entries: BTreeMap<&'static str, Vec<(u64, u64)>> = BTreeMap::new();
        let mut sessions: BTreeMap<&'static str, Vec<(u64, u64)>> = BTreeMap::new();
        for (p, off) in plan {
            if let Some(sites) = rets.get(off) {
                // Returns seen at its `ret`s, by plain uprobes: nothing to skip at entry.
                let at_rets = returns.entry(RET_SITE_PROGRAM).or_default();
                at_rets.extend(sites.iter().map(|s| (*s, cookies.of(p))));
                entries
                    .entry(cookies.entry_program(p))
                    .or_default()
                    .push((*off, cookies.of(p) | COOKIE_AT_RETS));
                continue;
            }
            let ret = cookies.return_program(p);
            if self.sessions && ret == Some(RETURN_PROGRAM) {
                sessions
                    .entry(cookies.entry_program(p))
                    .or_default()
                    .push((*off, cookies.of(p)));
                continue;
            }
            if let Some(ret) = ret {
                returns.entry(ret).or_default().push((*off, cookies.of(p)));
            }
            entries
                .entry(cookies.entry_program(p))
                .or_default()
                .push((*off, cookies.of(p)));
        }
        let mut groups: Vec<LinkPlan> = returns
            .into_iter()
            .map(|(prog, probes)| (prog, prog != RET_SITE_PROGRAM, probes))
            .collect();
        groups.extend(
            entries
                .into_iter()
                .map(|(prog, probes)| (prog, false, probes)),
        );
        if let Some(off) = exit {
            groups.push((EXIT_PROGRAM, false, vec![(off, EXIT_SPEC.func as u64)]));
        }
        let multi = self.multi.as_ref().expect("uprobe-multi programs loaded");
        for (program, probes) in &sessions {
            let link = multi
                .attach_session(program, &lib.open_path, probes, pid)
                .map_err(|e| {
                    link_error(e, program, "entries, as a uprobe session,", probes, lib)
                })?;
            self.multi_links.push(link);
        }
        for (program, ret, probes) in groups.into_iter().filter(|g| !g.2.is_empty()) {
            let what = if ret { "returns" } else { "entries" };
            let link = multi
                .attach(program, &lib.open_path, &probes, ret, pid)
                .map_err(|e| link_error(e, program, what, &probes, lib))?;
            self.multi_links.push(link);
        }
        Ok(())
    }

    /// One uprobe: `program` on `symbol` at `offset` of `lib`, with `cookie`.
    fn attach_one(
        &mut self,
        ebpf: &mut Ebpf,
        (program, offset, cookie): (&'static str, u64, u64),
        symbol: &str,
        lib: &AllocatorLib,
        scope: UProbeScope,
    ) -> Result<()> {
        let prog: &mut UProbe = ebpf
            .program_mut(program)
            .with_context(|| format!("program {program} missing"))?
            .try_into()?;
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(cookie),
        };
        let id = prog
            .attach(point, &lib.open_path, scope)
            .map_err(|e| explain_attach_error(e, symbol, offset, lib))?;
        self.links.push((program, id));
        Ok(())
    }

    /// How many addresses are probed (entries and returns of one function count once).
    pub fn probes(&self) -> usize {
        self.probed.len()
    }

    /// Whether the allocating functions go on as uprobe sessions (sampled mode).
    pub fn has_sessions(&self) -> bool {
        self.sessions
    }

    /// Whether probes go on as uprobe-multi links (quick to detach).
    pub fn has_multi(&self) -> bool {
        self.multi.is_some()
    }
}

/// Why a uprobe-multi link (or session) of `program` on `probes` (offset, cookie) of `lib`'s
/// `what` was refused.
fn link_error(
    e: std::io::Error,
    program: &str,
    what: &str,
    probes: &[(u64, u64)],
    lib: &AllocatorLib,
) -> anyhow::Error {
    if e.raw_os_error() == Some(libc::EINVAL) {
        // One refused offset refuses the whole link: name whoever else probes any of them.
        let others: String = probes
            .iter()
            .map(|(off, _)| other_uprobe_users(lib, *off))
            .find(|o| !o.is_empty())
            .unwrap_or_default();
        return anyhow!(
            "the kernel refused uprobes on {} {what} of {} (EINVAL). This happens when another \
             tool already probes the same functions with a different reference counter (bcc's \
             memleak from python3-bpfcc 0.26 does); stop that tool and run tracer again.{others}",
            probes.len(),
            lib.path.display(),
        );
    }
    anyhow!(
        "cannot attach {program} to {} {what} of {} ({}): {e}",
        probes.len(),
        lib.path.display(),
        lib.kinds()
    )
}

/// The `ret` sites of the throwing `operator new`s in `plan` that would otherwise have a
/// return probe (an allocator's own; libstdc++'s is probed at entry only). One whose returns
/// cannot be found leaves the plan with a warning: its entry alone would leave its calls in
/// flight for ever, and a return probe would make its `bad_alloc` end the program.
fn ret_sites(
    cookies: &Cookies,
    plan: &mut Vec<(&'static ProbeSpec, u64)>,
    warnings: &mut Vec<String>,
) -> RetSites {
    let lib = cookies.lib;
    let wanted: Vec<_> = plan
        .iter()
        .filter(|(p, _)| p.throws() && cookies.return_program(p) == Some(RETURN_PROGRAM))
        .copied()
        .collect();
    if wanted.is_empty() {
        return RetSites::new();
    }
    let found = std::fs::File::open(&lib.open_path)
        .map_err(|e| e.to_string())
        // SAFETY: a read-only private mapping of a library (see `target::allocator_functions`).
        .and_then(|f| unsafe { memmap2::Mmap::map(&f) }.map_err(|e| e.to_string()))
        .and_then(|map| {
            let code = ElfCode::parse(&map)?;
            Ok(wanted
                .iter()
                .map(|(_, off)| {
                    let sites = code
                        .vaddr(*off)
                        .ok_or_else(|| "its offset is in no segment".to_string())
                        .and_then(|entry| returns::sites(&code, entry))
                        .and_then(|sites| {
                            sites
                                .iter()
                                .map(|s| code.offset(*s).ok_or_else(|| format!("{s:#x}?")))
                                .collect()
                        });
                    (*off, sites)
                })
                .collect::<Vec<_>>())
        });
    let found = match found {
        Ok(f) => f,
        Err(why) => wanted
            .iter()
            .map(|(_, off)| (*off, Err(why.clone())))
            .collect(),
    };
    let mut rets = RetSites::new();
    for (off, sites) in found {
        match sites {
            Ok(sites) => {
                rets.insert(off, sites);
            }
            Err(why) => {
                let (p, _) = plan.iter().find(|(_, o)| *o == off).expect("from the plan");
                warnings.push(format!(
                    "{} in {}: where it returns cannot be found ({why}); the allocations it \
                     makes are not traced (a return probe would end the program at its first \
                     bad_alloc)",
                    p.symbol,
                    lib.path.display()
                ));
                plan.retain(|(_, o)| *o != off);
            }
        }
    }
    rets
}

/// The uprobe cookies of one file's probes, and which have return probes.
struct Cookies<'a> {
    lib: &'a AllocatorLib,
    /// [`COOKIE_NESTING_FREES`] or 0.
    flags: u64,
    /// The mapping wrappers are the record (see [`MapHook::NoFexit`]).
    by_wrappers: bool,
}

impl Cookies<'_> {
    fn of(&self, p: &ProbeSpec) -> u64 {
        let mut c = p.func as u64 | self.flags;
        if self.lib.entry_only(p) {
            c |= COOKIE_ENTRY_ONLY;
        }
        if p.group == Group::Syscall {
            c |= p.map_syscall() << COOKIE_MAP_NR_SHIFT;
            if self.by_wrappers {
                c |= COOKIE_MAP_CALL;
            }
        }
        c
    }

    /// The program on `p`'s entry.
    fn entry_program(&self, p: &ProbeSpec) -> &'static str {
        if self.lib.entry_only(p) {
            ENTRY_ONLY_PROGRAM
        } else {
            p.entry
        }
    }

    /// The program on `p`'s return, if it has one.
    fn return_program(&self, p: &ProbeSpec) -> Option<&'static str> {
        if p.group == Group::Syscall {
            return self.by_wrappers.then_some(MAP_RETURN_PROGRAM);
        }
        (p.has_return() && !self.lib.entry_only(p)).then_some(RETURN_PROGRAM)
    }
}

/// The sys_enter/sys_exit raw tracepoints that see the mapping system calls where fexit
/// cannot: every system call of every process runs them.
fn attach_syscall_tracepoints(ebpf: &mut Ebpf) -> Result<()> {
    for (prog, tp) in [("sys_enter", "sys_enter"), ("sys_exit", "sys_exit")] {
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing from the eBPF object"))?
            .try_into()?;
        p.load()
            .map_err(|e| anyhow!("the kernel's verifier rejected program {prog}: {e}"))?;
        p.attach(tp).map_err(|e| {
            anyhow!(
                "cannot attach to the {tp} raw tracepoint (needs CONFIG_BPF_EVENTS; --no-mmap \
                 does without): {e}"
            )
        })?;
    }
    Ok(())
}

fn explain_attach_error(
    e: ProgramError,
    symbol: &str,
    offset: u64,
    lib: &AllocatorLib,
) -> anyhow::Error {
    let text = format!("{e}");
    let io = match &e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .and_then(|io| io.raw_os_error()),
    };
    let what = format!("{symbol} in {} (offset {offset:#x})", lib.path.display());
    match io {
        Some(libc::ESRCH) => {
            anyhow!("the target process exited while tracer was attaching to {what}")
        }
        Some(libc::EINVAL) => {
            let others = other_uprobe_users(lib, offset);
            anyhow!(
                "the kernel refused a uprobe on {what} (EINVAL). This happens when another tool \
                 already probes the same function with a different reference counter (bcc's \
                 memleak from python3-bpfcc 0.26 does); stop that tool and run tracer again.{others}"
            )
        }
        Some(libc::EPERM | libc::EACCES) => {
            anyhow!("permission denied attaching a uprobe to {what}: run tracer as root (sudo)")
        }
        _ => anyhow!("attaching a uprobe to {what} failed: {text}"),
    }
}

/// Names the tracefs uprobe events on the same function, and bcc's pid when the event name
/// carries it (`..._bcc_<pid>`).
fn other_uprobe_users(lib: &AllocatorLib, offset: u64) -> String {
    let Ok(events) = std::fs::read_to_string("/sys/kernel/tracing/uprobe_events")
        .or_else(|_| std::fs::read_to_string("/sys/kernel/debug/tracing/uprobe_events"))
    else {
        return String::new();
    };
    let needle = format!("{}:{offset:#x}", lib.path.display());
    let needle_alt = format!("{}:0x{offset:016x}", lib.path.display());
    let mut found = BTreeMap::new();
    for l in events
        .lines()
        .filter(|l| l.contains(&needle) || l.contains(&needle_alt))
    {
        let name = l.split_whitespace().next().unwrap_or(l).to_string();
        let pid = name
            .rsplit("_bcc_")
            .next()
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty());
        found.insert(name.clone(), pid.map(str::to_string));
    }
    if found.is_empty() {
        return String::new();
    }
    let list: Vec<String> = found
        .into_iter()
        .map(|(n, p)| match p {
            Some(p) => format!("{n} (bcc, pid {p})"),
            None => n,
        })
        .collect();
    format!(" Other uprobes on it: {}.", list.join(", "))
}
