//! Probing the allocators of processes met while tracing: one that exec'd a new program, or
//! (tracing every process) one that was running before tracing began. Each allocator file is
//! probed once per scope; a program already examined is not parsed again.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use anyhow::Result;

use crate::{
    collector::{
        ebpf::EbpfCollector,
        target::{self, file_id},
    },
    engine::Engine,
    procs::live::{alive, comm, Allocator, Live},
};

pub struct Prober {
    /// The launched command, if any (its program is always examined afresh).
    pub launched: Option<u32>,
    /// Probes attached for one process reach every process (system-wide, or following
    /// children: the kernel filters).
    pub scope_all: bool,
    /// Programs (scope pid, file identity) whose allocator was already found.
    exes_seen: HashMap<(Option<u32>, (u64, u64)), Allocator>,
    /// Programs (file identity) whose notes were said.
    noted: HashSet<(u64, u64)>,
    /// Allocator files probed, by (scope pid, (device, inode)): one probe set per file.
    attached: HashSet<(Option<u32>, (u64, u64))>,
    /// Exec'd processes whose allocator could not be found yet, and how often it was tried.
    retries: Vec<(u32, u32)>,
}

/// What probing needs to reach: the kernel's probes, the live world, the pipeline.
pub struct Ctx<'a> {
    pub collector: &'a mut EbpfCollector,
    pub live: &'a mut Live,
    pub engine: &'a mut Engine,
}

impl Prober {
    pub fn new(
        launched: Option<u32>,
        scope_all: bool,
        noted: HashSet<(u64, u64)>,
        attached: HashSet<(Option<u32>, (u64, u64))>,
    ) -> Prober {
        Prober {
            launched,
            scope_all,
            exes_seen: HashMap::new(),
            noted,
            attached,
            retries: Vec::new(),
        }
    }

    /// A traced process exec'd: probe its new program's allocator unless that file already
    /// is (for this process, or for every process when tracing system-wide); when its
    /// libraries are not mapped yet, look again at the next drains.
    pub fn exec(&mut self, cx: &mut Ctx, pid: u32) -> Result<()> {
        if !self.probe(cx, pid, true)? && alive(pid) {
            self.retries.push((pid, 0));
        }
        Ok(())
    }

    /// A process that was running before tracing began (system-wide): probe its allocator
    /// if that is not the file already probed (jemalloc linked into a service, another C
    /// library in a container). Its allocations before now are not known: their frees count
    /// as unknown frees.
    pub fn running(&mut self, cx: &mut Ctx, pid: u32) -> Result<()> {
        self.probe(cx, pid, false).map(|_| ())
    }

    /// Processes whose libraries were not mapped yet at the last look: look again (a few
    /// times, one drain apart).
    pub fn retry(&mut self, cx: &mut Ctx) -> Result<()> {
        for (pid, tries) in std::mem::take(&mut self.retries) {
            if tries < 10 && alive(pid) && !self.probe(cx, pid, true)? {
                self.retries.push((pid, tries + 1));
            }
        }
        Ok(())
    }

    /// Ok(false): its libraries are not mapped yet (look again later).
    fn probe(&mut self, cx: &mut Ctx, pid: u32, exec: bool) -> Result<bool> {
        let scope = if self.scope_all { None } else { Some(pid) };
        // A program already examined (most execs on a busy host run the same few) brings no
        // new allocator: its libraries are not parsed again.
        let exe = file_id(Path::new(&format!("/proc/{pid}/exe")));
        if Some(pid) != self.launched {
            if let Some(a) = exe.and_then(|e| self.exes_seen.get(&(scope, e))) {
                cx.live.set_allocator(pid, a.clone());
                cx.engine.relearn(cx.live, pid)?;
                return Ok(true);
            }
        }
        // Just after the exec (the launched command is held there) nothing but the program
        // and its loader is mapped yet: find its libraries as its loader will (reading files,
        // with the process's own LD_PRELOAD), rather than wait for them to appear in its map.
        let lib = if exec {
            target::for_exec(pid).or_else(|_| target::for_pid(pid))
        } else {
            target::for_pid(pid)
        };
        let lib = match lib {
            Ok(lib) => lib,
            Err(e) => {
                // A program with no allocator tracer knows is worth saying, once.
                if matches!(e, target::Lookup::NoAllocator(_))
                    && exe.is_some_and(|x| self.noted.insert(x))
                {
                    eprintln!("tracer: note: pid {pid} ({}): {e}", comm(pid));
                }
                // Not mapped yet (or gone).
                return Ok(false);
            }
        };
        let Some(id) = file_id(&lib.open_path) else {
            return Ok(true);
        };
        // Said once per program (the launched one's at the start).
        if exe.is_some_and(|e| self.noted.insert(e)) {
            for n in &lib.notes {
                eprintln!("tracer: note: pid {pid}: {n}");
            }
        }
        let a = Allocator::of(&lib);
        if let Some(exe) = exe {
            self.exes_seen.insert((scope, exe), a.clone());
        }
        cx.live.set_allocator(pid, a);
        // Its events may have come in the same batch as its exec: the engine met it first.
        cx.engine.relearn(cx.live, pid)?;
        // A pure Go program has no allocator functions: its mappings are traced already.
        if lib.mappings_only() {
            return Ok(true);
        }
        if self.attached.insert((scope, id)) {
            let before = cx.collector.probes();
            if let Err(e) = cx.collector.attach(&lib, scope) {
                // A process gone while its probes went on has nothing left to trace.
                if scope.is_some() && !alive(pid) {
                    return Ok(true);
                }
                return Err(e);
            }
            // Said when it took new probes (not for a library probed up front).
            if cx.collector.probes() > before {
                eprintln!(
                    "tracer: note: pid {pid} ({}) {}: probing its allocator ({}) in {}",
                    comm(pid),
                    if exec { "exec'd" } else { "is running" },
                    lib.kinds(),
                    lib.path.display()
                );
            }
        }
        Ok(true)
    }
}
