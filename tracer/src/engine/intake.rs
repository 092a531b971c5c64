//! Events into the books: each batch is checked against the process table (names, `--comm`,
//! forks and execs), its new stacks are read, the dynamic loader's own mappings are left out,
//! and what is left is applied to the ledger. Memory maps are kept fresh for the symbolizer
//! while the processes live. Everything read from the world is written to the recording.
use std::collections::HashMap;

use anyhow::Result;
use tracer_common::AllocFn;

use super::Source;
use crate::{
    aggregate::{Ledger, SiteKey},
    collector::Event,
    procs::{ProcInfo, Procs},
    record::Tap,
    symbolize::{Mapping, Symbolizer},
};

pub struct Intake {
    pub procs: Procs,
    pub symbolizer: Symbolizer,
    pub tap: Tap,
    /// Processes that exec'd since the live loop last asked.
    execs: Vec<u32>,
}

impl Intake {
    pub fn new(procs: Procs, tap: Tap) -> Intake {
        Intake {
            procs,
            symbolizer: Symbolizer::new(),
            tap,
            execs: Vec::new(),
        }
    }

    /// Reads the process's memory map through `src` and keeps it (recording it when it changed).
    pub fn refresh_maps(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        let Some(maps) = src.maps(pid).filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        if self.symbolizer.maps_of(pid) == Some(&maps[..]) {
            return Ok(());
        }
        let sym = &mut self.symbolizer;
        self.tap.maps(pid, &maps, |m| sym.build_id_of(m))?;
        self.symbolizer.set_maps(pid, maps);
        Ok(())
    }

    /// Installs a recorded memory map (replay).
    pub fn install_maps(&mut self, pid: u32, maps: Vec<Mapping>) {
        self.symbolizer.set_maps(pid, maps);
    }

    /// Applies a batch of events. Stacks seen for the first time are read through `src` (and
    /// recorded before the events that need them). An exec splits the batch: the events after
    /// it belong to the new program.
    pub fn ingest(
        &mut self,
        src: &mut dyn Source,
        ledger: &mut Ledger,
        events: &[Event],
    ) -> Result<()> {
        for seg in events.split_inclusive(|e| matches!(e, Event::Exec { .. })) {
            self.segment(src, ledger, seg)?;
            if let Some(Event::Exec { pid, .. }) = seg.last() {
                self.exec(ledger, *pid);
            }
        }
        Ok(())
    }

    /// A process exec'd: the old program's blocks are gone with its address space, so its books
    /// close (without a report line: nothing of it is left to leak) and its symbols and name
    /// are read afresh.
    fn exec(&mut self, ledger: &mut Ledger, pid: u32) {
        ledger.retire(pid);
        self.symbolizer.forget(pid);
        if self.procs.multi() {
            self.procs.forget(pid);
        }
        self.execs.push(pid);
    }

    /// A followed process forked: the child's address space is a copy of its parent's, so its
    /// addresses mean what the parent's meant until it execs or maps something new (a child
    /// that lives too briefly to have its own map read is still symbolized). Its books start
    /// empty: what it inherited and frees is counted as unknown frees. Its name is its
    /// parent's until it execs.
    fn fork(&mut self, src: &mut dyn Source, pid: u32, parent: u32) -> Result<()> {
        if self.symbolizer.maps_of(parent).is_none() {
            self.refresh_maps(src, parent)?;
        }
        if self.symbolizer.maps_of(pid).is_none() {
            if let Some(maps) = self.symbolizer.maps_of(parent) {
                let maps = maps.to_vec();
                self.symbolizer.set_maps(pid, maps);
            }
        }
        if self.procs.multi() && self.procs.get(pid).is_none() {
            if self.procs.get(parent).is_none() {
                self.learn(src, parent)?;
            }
            if let Some(info) = self.procs.get(parent).cloned() {
                self.procs.install(
                    pid,
                    ProcInfo {
                        exited: false,
                        ..info
                    },
                );
            }
        }
        Ok(())
    }

    /// Processes that exec'd since the last call (the live tracer probes their new allocator).
    pub fn take_execs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.execs)
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
                self.fork(src, pid, parent)?;
            }
        }
        let kept: Vec<Event>;
        let mut events = events;
        if self.procs.multi() {
            for ev in events {
                let pid = ev.pid();
                if self.procs.get(pid).is_none() {
                    self.learn(src, pid)?;
                }
            }
            if self.procs.filters() {
                kept = events
                    .iter()
                    .filter(|e| {
                        matches!(e, Event::Exec { .. } | Event::Fork { .. })
                            || self.procs.wanted(e.pid())
                    })
                    .cloned()
                    .collect();
                events = &kept[..];
            }
        }
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
        for ev in events {
            let Event::Alloc(a) = ev else { continue };
            if a.addr == 0 || a.stack_id < 0 {
                continue;
            }
            let key = SiteKey {
                pid: a.pid,
                stack_id: a.stack_id,
            };
            if ledger.site_id(&key).is_some() || fresh.contains_key(&key) {
                continue;
            }
            let addrs = self.read_stack(src, key)?;
            fresh.insert(key, addrs);
        }
        self.tap.events(events)?;
        let before = ledger.sites().len();
        for ev in events {
            ledger.apply(ev, |k| fresh.remove(k).unwrap_or_default());
        }
        // New call sites: make sure their addresses are in the cached memory map while the
        // process still lives (a library loaded since the last look).
        let mut stale: Vec<u32> = ledger.sites()[before..]
            .iter()
            .filter(|s| {
                let pid = s.key.map_or(0, |k| k.pid);
                s.frames.iter().any(|&a| !self.symbolizer.knows(pid, a))
            })
            .filter_map(|s| s.key.map(|k| k.pid))
            .collect();
        stale.dedup();
        for pid in stale {
            self.refresh_maps(src, pid)?;
        }
        Ok(())
    }

    /// A stack seen for the first time, read through `src` (and recorded).
    fn read_stack(&mut self, src: &mut dyn Source, key: SiteKey) -> Result<Vec<u64>> {
        let addrs = src.stack(key.pid, key.stack_id);
        self.tap.stack(key.pid, key.stack_id, &addrs)?;
        Ok(addrs)
    }

    /// The indices of the mappings in `events` that the dynamic loader made (the zero-filled
    /// data of the libraries it maps, its own bookkeeping): they are part of loading a
    /// program, not allocations, and are left out. Their stacks, read to tell, stay in `fresh`.
    fn loader_mappings(
        &mut self,
        src: &mut dyn Source,
        ledger: &Ledger,
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
                None => {
                    if let std::collections::hash_map::Entry::Vacant(e) = fresh.entry(key) {
                        e.insert(self.read_stack(src, key)?);
                    }
                    fresh[&key].first().copied()
                }
            };
            let Some(first) = first else { continue };
            if !self.symbolizer.knows(a.pid, first) && !refreshed.contains(&a.pid) {
                refreshed.push(a.pid);
                self.refresh_maps(src, a.pid)?;
            }
            let by_loader = self.symbolizer.mapping(a.pid, first).is_some_and(|m| {
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

    /// Reads a process's name and allocator through `src` and keeps (and records) them.
    fn learn(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        let info = src.process(pid).unwrap_or_else(|| ProcInfo {
            command: "?".into(),
            ..ProcInfo::default()
        });
        self.tap.process(pid, &info)?;
        self.procs.install(pid, info);
        Ok(())
    }

    /// After the traced process exec'd (one-process runs): read its new name and allocator.
    /// Called once the new program's allocator is probed, before the next report.
    pub fn learn_after_exec(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        if !self.procs.is_subject(pid) {
            return Ok(());
        }
        self.learn(src, pid)
    }

    /// A process already known learned something new (its allocator, found after its events
    /// arrived): what is known of it is read again. Unknown processes are learned when seen.
    pub fn relearn(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        match self.procs.get(pid) {
            Some(p) if !p.exited => self.learn(src, pid),
            _ => Ok(()),
        }
    }

    /// A process exited: its symbols are kept, its last numbers go in the next report, then its
    /// books are closed.
    pub fn process_exited(&mut self, pid: u32) -> Result<()> {
        match self.procs.exit(pid) {
            Some(info) => self.tap.process(pid, info),
            None => Ok(()),
        }
    }

    /// Re-reads the names of processes whose events --comm drops: a process forked by a shell
    /// has the shell's name until it execs.
    pub fn recheck_names(&mut self, src: &mut dyn Source) -> Result<()> {
        if !self.procs.filters() {
            return Ok(());
        }
        for pid in self.procs.unwanted() {
            if let Some(info) = src.process(pid) {
                if self.procs.get(pid).map(|p| &p.command) != Some(&info.command) {
                    self.learn(src, pid)?;
                }
            }
        }
        Ok(())
    }
}
