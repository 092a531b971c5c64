//! The live intake: each batch is checked against the process table (names, `--comm`, forks
//! and execs), its new stacks are read, the dynamic loader's own mappings are left out, and
//! memory maps are kept fresh for the symbolizer while the processes live. What it learns
//! from the world it tells as [`Fact`]s: each is written to the recording, then applied to
//! what is known ([`Known::apply`]), which is all a replay does.
use std::collections::HashMap;

use anyhow::Result;
use tracer_common::AllocFn;

use super::known::{unknown, Fact, Known};
use crate::{
    aggregate::{Ledger, SiteKey},
    collector::Event,
    procs::{live::Source, Procs},
    record::Tap,
};

pub struct Intake {
    pub known: Known,
    pub tap: Tap,
    /// Processes that exec'd since the live loop last asked.
    execs: Vec<u32>,
}

impl Intake {
    pub fn new(procs: Procs, tap: Tap) -> Intake {
        Intake {
            known: Known::new(procs),
            tap,
            execs: Vec::new(),
        }
    }

    /// Records a fact and applies it.
    pub fn tell(&mut self, ledger: &mut Ledger, fact: Fact) -> Result<()> {
        match &fact {
            Fact::Maps { pid, maps } => {
                let sym = &mut self.known.symbolizer;
                self.tap.maps(*pid, maps, |m| sym.build_id_of(m))?;
            }
            Fact::Process { pid, info } => self.tap.process(*pid, info)?,
            Fact::Stack {
                pid,
                stack_id,
                addrs,
            } => self.tap.stack(*pid, *stack_id, addrs)?,
            Fact::Events(evs) => self.tap.events(evs)?,
            Fact::Reach { pid, scan } => self.tap.reach(*pid, scan)?,
        }
        self.known.apply(ledger, fact);
        Ok(())
    }

    /// Reads the process's memory map through `src` and tells it when it changed.
    pub fn refresh_maps(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        pid: u32,
    ) -> Result<()> {
        let Some(maps) = src.maps(pid).filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        if self.known.symbolizer.maps_of(pid) == Some(&maps[..]) {
            return Ok(());
        }
        self.tell(ledger, Fact::Maps { pid, maps })
    }

    /// Takes in a batch of events. Stacks seen for the first time are read through `src` and
    /// told before the events that name them. An exec splits the batch: the events after it
    /// belong to the new program.
    pub fn ingest(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        events: &[Event],
    ) -> Result<()> {
        for seg in events.split_inclusive(|e| matches!(e, Event::Exec { .. })) {
            self.segment(src, ledger, seg)?;
            if let Some(Event::Exec { pid, comm, .. }) = seg.last() {
                // The new program is learned now, by the name the kernel gave it at the exec
                // (its allocator once it is probed: see `relearn`).
                if self.known.procs.multi() || self.known.procs.is_subject(*pid) {
                    self.learn_named(src, ledger, *pid, comm.clone())?;
                }
                self.execs.push(*pid);
            }
        }
        Ok(())
    }

    /// Processes that exec'd since the last call (the live tracer probes their new allocator).
    pub fn take_execs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.execs)
    }

    /// A followed process forked: until it execs, the child's addresses mean what its
    /// parent's meant and its name is its parent's (see `Known`); both are told.
    fn fork(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        pid: u32,
        parent: u32,
    ) -> Result<()> {
        if self.known.symbolizer.maps_of(parent).is_none() {
            self.refresh_maps(src, ledger, parent)?;
        }
        let procs = &self.known.procs;
        if procs.multi() && procs.get(pid).is_none() && procs.get(parent).is_none() {
            self.learn(src, ledger, parent)?;
        }
        let (maps, info) = self.known.inherited(pid, parent);
        if let Some(maps) = maps {
            self.tell(ledger, Fact::Maps { pid, maps })?;
        }
        if let Some(info) = info {
            self.tell(ledger, Fact::Process { pid, info })?;
        }
        Ok(())
    }

    /// Events up to an exec (inclusive).
    fn segment(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        events: &[Event],
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        for ev in events {
            if let Event::Fork { pid, parent, .. } = *ev {
                self.fork(src, ledger, pid, parent)?;
            }
        }
        let kept: Vec<Event>;
        let mut events = events;
        if self.known.procs.multi() {
            for ev in events {
                let pid = ev.pid();
                if self.known.procs.get(pid).is_none() {
                    self.learn(src, ledger, pid)?;
                }
            }
            let procs = &self.known.procs;
            if procs.filters() {
                kept = events
                    .iter()
                    .filter(|e| {
                        matches!(e, Event::Exec { .. } | Event::Fork { .. })
                            || procs.wanted(e.pid())
                    })
                    .cloned()
                    .collect();
                events = &kept[..];
            }
        }
        // The stacks read for this segment, told before its events when an event kept
        // names them.
        let mut fresh: HashMap<SiteKey, Vec<u64>> = HashMap::new();
        let loader_maps = self.loader_mappings(src, ledger, events, &mut fresh)?;
        let without_loader: Vec<Event>;
        if !loader_maps.is_empty() {
            without_loader = events
                .iter()
                .enumerate()
                .filter(|(i, _)| !loader_maps.contains(i))
                .map(|(_, e)| e.clone())
                .collect();
            events = &without_loader[..];
        }
        let mut told: Vec<SiteKey> = Vec::new();
        for ev in events {
            let Event::Alloc(a) = ev else { continue };
            if a.addr == 0 || a.stack_id < 0 {
                continue;
            }
            let key = SiteKey {
                pid: a.pid,
                stack_id: a.stack_id,
            };
            if ledger.site_id(&key).is_some() || self.known.told(&key) || told.contains(&key) {
                continue;
            }
            let addrs = match fresh.remove(&key) {
                Some(a) => a,
                None => src.stack(key.pid, key.stack_id),
            };
            told.push(key);
            self.tell(
                ledger,
                Fact::Stack {
                    pid: key.pid,
                    stack_id: key.stack_id,
                    addrs,
                },
            )?;
        }
        let before = ledger.sites().len();
        self.tell(ledger, Fact::Events(events))?;
        // New call sites: make sure their addresses are in the cached memory map while the
        // process still lives (a library loaded since the last look).
        let sym = &self.known.symbolizer;
        let mut stale: Vec<u32> = ledger.sites()[before..]
            .iter()
            .filter(|s| {
                let pid = s.key.map_or(0, |k| k.pid);
                s.frames.iter().any(|&a| !sym.knows(pid, a))
            })
            .filter_map(|s| s.key.map(|k| k.pid))
            .collect();
        stale.dedup();
        for pid in stale {
            self.refresh_maps(src, ledger, pid)?;
        }
        Ok(())
    }

    /// The indices of the mappings in `events` that the dynamic loader made (the zero-filled
    /// data of the libraries it maps, its own bookkeeping): they are part of loading a
    /// program, not allocations, and are left out. The stacks read to tell go in `fresh`.
    fn loader_mappings(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        events: &[Event],
        fresh: &mut HashMap<SiteKey, Vec<u64>>,
    ) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        // A process's map is read at most once here (a gone process's read fails every time).
        let mut refreshed: Vec<u32> = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            let Event::Alloc(a) = ev else { continue };
            if a.func != AllocFn::Mmap || a.stack_id < 0 {
                continue;
            }
            let key = SiteKey {
                pid: a.pid,
                stack_id: a.stack_id,
            };
            let first = match ledger.site_id(&key) {
                Some(id) => ledger.site(id).frames.first().copied(),
                None => fresh
                    .entry(key)
                    .or_insert_with(|| src.stack(key.pid, key.stack_id))
                    .first()
                    .copied(),
            };
            let Some(first) = first else { continue };
            if !self.known.symbolizer.knows(a.pid, first) && !refreshed.contains(&a.pid) {
                refreshed.push(a.pid);
                self.refresh_maps(src, ledger, a.pid)?;
            }
            let by_loader = self
                .known
                .symbolizer
                .mapping(a.pid, first)
                .is_some_and(|m| {
                    m.path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
                });
            if by_loader {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// Reads a process's name and allocator through `src` and tells them.
    fn learn(&mut self, src: &mut dyn Source, ledger: &mut Ledger, pid: u32) -> Result<()> {
        self.learn_named(src, ledger, pid, None)
    }

    /// [`learn`], named `name` when given (an exec's name). A process gone before its name
    /// could be read keeps the one it had, or is `?`.
    fn learn_named(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        pid: u32,
        name: Option<String>,
    ) -> Result<()> {
        let mut info = src.process(pid);
        if let Some(name) = name {
            info.command = name;
        }
        if info.command.is_empty() {
            info.command = match self.known.procs.get(pid) {
                Some(p) => p.command.clone(),
                None => unknown().command,
            };
        }
        self.tell(ledger, Fact::Process { pid, info })
    }

    /// After the traced process exec'd (one-process runs): read its new name and allocator.
    /// Called once the new program's allocator is probed, before the next report.
    pub fn learn_after_exec(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        pid: u32,
    ) -> Result<()> {
        if !self.known.procs.is_subject(pid) {
            return Ok(());
        }
        self.learn(src, ledger, pid)
    }

    /// A process already known learned something new (its allocator, found after its events
    /// arrived): what is known of it is read again. Unknown processes are learned when seen.
    pub fn relearn(&mut self, src: &mut dyn Source, ledger: &mut Ledger, pid: u32) -> Result<()> {
        match self.known.procs.get(pid) {
            Some(p) if !p.exited => self.learn(src, ledger, pid),
            _ => Ok(()),
        }
    }

    /// A process exited: its symbols are kept, its last numbers go in the next report, then its
    /// books are closed.
    pub fn process_exited(&mut self, ledger: &mut Ledger, pid: u32) -> Result<()> {
        let Some(p) = self.known.procs.get(pid) else {
            return Ok(());
        };
        let info = crate::procs::ProcInfo {
            exited: true,
            ..p.clone()
        };
        self.tell(ledger, Fact::Process { pid, info })
    }

    /// Re-reads the names of processes whose events --comm drops: a process forked by a shell
    /// has the shell's name until it execs.
    pub fn recheck_names(&mut self, src: &mut dyn Source, ledger: &mut Ledger) -> Result<()> {
        if !self.known.procs.filters() {
            return Ok(());
        }
        for pid in self.known.procs.unwanted() {
            let info = src.process(pid);
            let known = self.known.procs.get(pid).map(|p| &p.command);
            if !info.command.is_empty() && known != Some(&info.command) {
                self.learn(src, ledger, pid)?;
            }
        }
        Ok(())
    }
}
