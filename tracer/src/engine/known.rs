//! What the pipeline knows of the traced processes besides their blocks: the process table,
//! their memory maps (held by the symbolizer), and the stacks told for the events that come
//! next. It changes only by [`Fact`]s, told by the live intake (and recorded there) or read
//! back from a recording, so a replay knows exactly what the live run knew when it reported.
use crate::reach::summary::{ProcessScan, ScanStats, SiteScan};
use std::collections::{BTreeMap, HashMap};

use crate::{
    aggregate::{Ledger, SiteKey},
    collector::Event,
    procs::{ProcInfo, Procs},
    symbolize::{Mapping, Symbolizer},
};

/// One thing learned, in the order it was learned.
pub enum Fact<'a> {
    /// A process's memory map as it was read.
    Maps { pid: u32, maps: Vec<Mapping> },
    /// A process first seen, renamed, or exited.
    Process { pid: u32, info: ProcInfo },
    /// The return addresses of a stack the next events name.
    Stack {
        pid: u32,
        stack_id: i32,
        addrs: Vec<u64>,
    },
    /// Events for the books (those the filters keep). An exec ends the old program's books.
    Events(&'a [Event]),
    /// What a reachability scan of a process found, per site, and what it cost.
    Reach { pid: u32, scan: ProcessScan },
}

pub struct Known {
    pub procs: Procs,
    pub symbolizer: Symbolizer,
    /// Stacks told and not yet named by an event.
    stacks: HashMap<SiteKey, Vec<u64>>,
    /// The reachability scans since the last drain point: per process, per site.
    pub scans: HashMap<u32, HashMap<usize, SiteScan>>,
    /// What each of those scans cost.
    pub scan_stats: BTreeMap<u32, ScanStats>,
}

impl Known {
    pub fn new(procs: Procs) -> Known {
        Known {
            procs,
            symbolizer: Symbolizer::new(),
            stacks: HashMap::new(),
            scans: HashMap::new(),
            scan_stats: BTreeMap::new(),
        }
    }

    pub fn apply(&mut self, ledger: &mut Ledger, fact: Fact) {
        match fact {
            Fact::Maps { pid, maps } => self.symbolizer.set_maps(pid, maps),
            Fact::Process { pid, info } if info.exited => {
                self.procs.exit(pid);
            }
            Fact::Process { pid, info } => self.procs.install(pid, info),
            Fact::Stack {
                pid,
                stack_id,
                addrs,
            } => {
                self.stacks.insert(SiteKey { pid, stack_id }, addrs);
            }
            Fact::Reach { pid, scan } => {
                self.scans.insert(pid, scan.sites.into_iter().collect());
                self.scan_stats.insert(pid, scan.stats);
            }
            Fact::Events(events) => {
                for seg in events.split_inclusive(|e| matches!(e, Event::Exec { .. })) {
                    self.events(ledger, seg);
                    if let Some(Event::Exec { pid, .. }) = seg.last() {
                        self.exec(ledger, *pid);
                    }
                }
            }
        }
    }

    /// Whether a stack was told and waits for its events.
    pub fn told(&self, key: &SiteKey) -> bool {
        self.stacks.contains_key(key)
    }

    fn events(&mut self, ledger: &mut Ledger, events: &[Event]) {
        for ev in events {
            if let Event::Fork { pid, parent, .. } = *ev {
                self.fork(pid, parent);
            }
        }
        if self.procs.multi() {
            // Recordings of tracers that did not record processes.
            for ev in events {
                if self.procs.get(ev.pid()).is_none() {
                    self.procs.install(ev.pid(), unknown());
                }
            }
        }
        for ev in events {
            ledger.apply(ev, |k| self.stacks.remove(k).unwrap_or_default());
        }
    }

    /// A followed process forked: the child's address space is a copy of its parent's, so its
    /// addresses mean what the parent's meant until it execs or maps something new (a child
    /// that lives too briefly to have its own map read is still symbolized). Its books start
    /// empty: what it inherited and frees is counted as unknown frees. Its name is its
    /// parent's until it execs. (The live intake tells these as facts of their own; this is
    /// for recordings that did not.)
    fn fork(&mut self, pid: u32, parent: u32) {
        let (maps, info) = self.inherited(pid, parent);
        if let Some(maps) = maps {
            self.symbolizer.set_maps(pid, maps);
        }
        if let Some(info) = info {
            self.procs.install(pid, info);
        }
    }

    /// What a forked child inherits of its parent that is not known of it yet: the parent's
    /// map, and (tracing several processes) its name and allocator.
    pub fn inherited(&self, pid: u32, parent: u32) -> (Option<Vec<Mapping>>, Option<ProcInfo>) {
        let maps = match self.symbolizer.maps_of(pid) {
            Some(_) => None,
            None => self.symbolizer.maps_of(parent).map(<[Mapping]>::to_vec),
        };
        let info = (self.procs.multi() && self.procs.get(pid).is_none())
            .then(|| self.procs.get(parent).cloned().map(child_of))
            .flatten();
        (maps, info)
    }

    /// A process exec'd: the old program's blocks are gone with its address space, so its
    /// books close (without a report line: nothing of it is left to leak) and its symbols and
    /// name are read afresh.
    fn exec(&mut self, ledger: &mut Ledger, pid: u32) {
        ledger.retire(pid);
        self.symbolizer.forget(pid);
        self.scans.remove(&pid);
        self.stacks.retain(|k, _| k.pid != pid);
        if self.procs.multi() {
            self.procs.forget(pid);
        }
    }

    /// A process gone (its books are closed): a new process may come with its pid, and it is
    /// a stranger.
    pub fn retire(&mut self, pid: u32) {
        self.symbolizer.forget(pid);
        self.stacks.retain(|k, _| k.pid != pid);
        self.procs.forget(pid);
    }
}

/// What is said of a process whose name could not be read.
pub fn unknown() -> ProcInfo {
    ProcInfo {
        command: "?".into(),
        ..ProcInfo::default()
    }
}

/// A forked child, as known until it execs: its parent's name and allocator.
fn child_of(parent: ProcInfo) -> ProcInfo {
    ProcInfo {
        exited: false,
        ..parent
    }
}
