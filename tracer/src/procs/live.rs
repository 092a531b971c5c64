//! The live world the intake reads: the frames of the stacks a batch names, `/proc`, and what
//! was known of a process while it could still be read (see `procs::watch`), with the allocator
//! tracer probed for each process.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::ProcInfo;
use crate::{
    collector::{stream::Batch, target::AllocatorLib, Event},
    procs::watch::EarlyBook,
    reach::freeze::Stopped,
    symbolize::{self, Mapping},
};

/// What the live intake reads from the world besides events (a replay reads none of it: it
/// applies the facts the live run recorded).
pub trait Source {
    /// Return addresses (innermost first) of a stack the collector holds.
    fn stack(&mut self, pid: u32, stack_id: i32) -> Vec<u64>;
    /// The process's memory map as it is now, when it can be read.
    fn maps(&mut self, pid: u32) -> Option<Vec<Mapping>>;
    /// A process's command name (empty when it cannot be read: the process is gone) and
    /// allocator as they are now.
    fn process(&mut self, pid: u32) -> ProcInfo;
    /// Scans the process's memory for who holds its `blocks` (see `reach`); None when it
    /// cannot (it is gone).
    fn scan(
        &mut self,
        _pid: u32,
        _blocks: &[(u64, crate::reach::summary::Owned)],
        _known: crate::reach::Known,
    ) -> Option<crate::reach::summary::ProcessScan> {
        None
    }
}

/// What the reports say of a process's allocator: the file probed and which allocator it is.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    pub path: String,
    pub kind: String,
}

impl Allocator {
    pub fn of(lib: &AllocatorLib) -> Allocator {
        Allocator {
            path: lib.path.display().to_string(),
            kind: lib.kinds(),
        }
    }
}

pub struct Live {
    /// The allocator probed for each target pid; system-wide, the one library probed.
    allocator_of: HashMap<u32, Allocator>,
    default_allocator: Allocator,
    /// What was known of a process while it could still be read (its name from the kernel,
    /// its map at exec and entering exit()), for a process gone before its events were read.
    pub early: EarlyBook,
    /// The frames of the stacks the batch being taken in names.
    stacks: HashMap<i32, Arc<[u64]>>,
    /// Processes held still for the next scan (--stop-for-scan): let go when removed.
    pub frozen: HashMap<u32, Stopped>,
}

impl Live {
    pub fn new(
        allocator_of: HashMap<u32, Allocator>,
        default_allocator: Allocator,
        early: EarlyBook,
    ) -> Live {
        Live {
            allocator_of,
            default_allocator,
            early,
            stacks: HashMap::new(),
            frozen: HashMap::new(),
        }
    }

    /// A batch arrives: what was read of an exec'd process at its exec is kept a while, a
    /// forked child's allocator is its parent's until it execs, and the batch's stacks are
    /// what [`Source::stack`] answers until the next batch.
    pub fn take(&mut self, batch: &mut Batch) {
        for ev in &batch.events {
            if let Event::Exec { pid, .. } = *ev {
                // Its map was read when the kernel's notice came (see procs::watch).
                let mut early = self.early.lock();
                early
                    .entry(pid)
                    .or_default()
                    .at
                    .get_or_insert_with(Instant::now);
            }
            if let Event::Fork { pid, parent, .. } = *ev {
                if let Some(a) = self.allocator_of.get(&parent).cloned() {
                    self.allocator_of.insert(pid, a);
                }
            }
        }
        self.stacks = std::mem::take(&mut batch.stacks);
    }

    /// The batch is in: its stacks are let go.
    pub fn taken(&mut self) {
        self.stacks.clear();
    }

    /// The allocator found for a process.
    pub fn set_allocator(&mut self, pid: u32, a: Allocator) {
        self.allocator_of.insert(pid, a);
    }

    /// What was noted of processes at their exec goes once they are long gone; tracing every
    /// process, the allocator of each that ever ran would pile up.
    pub fn forget_gone(&mut self, keep: &[u32]) {
        self.early.retain(Duration::from_secs(10), alive);
        if self.allocator_of.len() > 1024 {
            self.allocator_of
                .retain(|pid, _| keep.contains(pid) || alive(*pid));
        }
    }
}

impl Source for Live {
    fn scan(
        &mut self,
        pid: u32,
        blocks: &[(u64, crate::reach::summary::Owned)],
        known: crate::reach::Known,
    ) -> Option<crate::reach::summary::ProcessScan> {
        let frozen = self.frozen.get(&pid);
        // Held still, with every event from before the stop taken in (see `Session::scan`).
        let glibc_heap = self
            .allocator_of
            .get(&pid)
            .unwrap_or(&self.default_allocator)
            .kind
            .starts_with("glibc");
        let known = crate::reach::Known {
            settled: known.settled || frozen.is_some(),
            glibc_heap,
            ..known
        };
        crate::reach::process(pid, blocks, known, frozen)
    }

    fn stack(&mut self, _pid: u32, stack_id: i32) -> Vec<u64> {
        self.stacks
            .get(&stack_id)
            .map(|f| f.to_vec())
            .unwrap_or_default()
    }

    fn maps(&mut self, pid: u32) -> Option<Vec<Mapping>> {
        symbolize::read_maps(pid).or_else(|| self.early.maps(pid))
    }

    fn process(&mut self, pid: u32) -> ProcInfo {
        let a = self
            .allocator_of
            .get(&pid)
            .unwrap_or(&self.default_allocator);
        ProcInfo {
            command: read_comm(pid).unwrap_or_default(),
            allocator: a.path.clone(),
            allocator_kind: a.kind.clone(),
            exited: false,
        }
    }
}

/// A process's command name, "?" when it is gone.
pub fn comm(pid: u32) -> String {
    read_comm(pid).unwrap_or_else(|| "?".into())
}

/// The command name of a process (/proc/PID/comm), None when it is gone.
fn read_comm(pid: u32) -> Option<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(c.trim_end().to_string())
}

/// The process state letter from /proc/PID/stat (R, S, T, Z...), None when it is gone.
pub fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The user processes running now (not kernel threads, not tracer).
pub fn user_processes() -> Vec<u32> {
    let me = std::process::id();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok())
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            const PF_KTHREAD: u32 = 0x0020_0000;
            (stat.flags & PF_KTHREAD == 0 && p.pid as u32 != me).then_some(p.pid as u32)
        })
        .collect()
}

/// The process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}
