//! The pipeline above the collector: books → history and verdicts → symbols → reports.
//!
//! An [`Engine`] is driven by a few calls: [`Engine::ingest`] a batch of events, [`Engine::tick`]
//! at every drain point, [`Engine::mark`] when the user asks, [`Engine::finish`] at the end. The
//! live tracer and `tracer replay` make the same calls with the same values (the recording
//! holds them), so they print the same reports. The outside world is reached only through a
//! [`Source`] (stacks and memory maps), and everything read through it is recorded.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io::Write,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tracer_common::{
    counter,
    losses::{Touches, LOSSES},
    AllocFn,
};

use crate::{
    aggregate::{
        self,
        verdict::{self, Assessment, Sample, Verdict, VerdictScope, Warmup},
        Counts, Ledger, SiteDelta, SiteId, SiteKey, Snapshot,
    },
    collector::{Counters, Event},
    config::ReportOptions,
    flame::{self, Profile as FlameProfile, Stack as FlameStack, What},
    record::{Frame as RecFrame, RecordHeader, RecordedMapping, Recorder},
    report::{
        self, Category, EventCounts, Format, LimitSettings, LiveObjects, ProcessReport, Report,
        ReportKind, SiteReport, SizeCount, SortKey, Summary, Totals,
    },
    symbolize::{self, Frame, Mapping, Symbolizer},
};

/// What the pipeline needs from the world besides events.
pub trait Source {
    /// Return addresses (innermost first) of a stack the collector holds.
    fn stack(&mut self, pid: u32, stack_id: i32) -> Vec<u64>;
    /// The process's memory map as it is now, when it can be read (never in replay: there the
    /// recorded maps arrive with [`Engine::install_maps`]).
    fn maps(&mut self, pid: u32) -> Option<Vec<Mapping>>;
    /// A process's command name and allocator as they are now (None in replay: there they
    /// arrive with [`Engine::install_process`]).
    fn process(&mut self, pid: u32) -> Option<ProcInfo>;
}

/// What the reports say of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub command: String,
    pub allocator: String,
    /// Which allocator that is (`glibc`, `jemalloc`...; empty when unknown).
    pub allocator_kind: String,
    pub exited: bool,
}

/// Whether to go on: a reader that closed stdout ends the run quietly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

/// One interval report's per-site counts, kept for verdicts.
/// Cumulative losses by the sites they may leave wrong (see `losses::Touches`).
#[derive(Clone, Copy, Debug, Default)]
struct Lost {
    heap: u64,
    mappings: u64,
    any: u64,
    no_stack: u64,
}

impl Lost {
    fn of(c: &Counters) -> Lost {
        let mut l = Lost::default();
        for loss in LOSSES {
            let n = c.of(loss);
            match loss.touches {
                Touches::Heap => l.heap += n,
                Touches::Mappings => l.mappings += n,
                Touches::Any => l.any += n,
                Touches::NoStack => l.no_stack += n,
                Touches::None => {}
            }
        }
        l
    }
}

struct Point {
    t_ns: u64,
    sites: Vec<Counts>,
    /// Cumulative losses, by the sites they touch.
    lost: Lost,
    /// Events lost per process (when the kernel counts them so), and those no process can be
    /// named for (undecodable records).
    lost_by_pid: Arc<BTreeMap<u32, u64>>,
    lost_unattributed: u64,
}

pub struct Engine {
    opts: ReportOptions,
    head: RecordHeader,
    ledger: Ledger,
    symbolizer: Symbolizer,
    recorder: Option<Recorder>,
    build_ids: HashMap<PathBuf, Vec<u8>>,
    /// Points after warm-up, at most `window + 1`, oldest first.
    history: VecDeque<Point>,
    /// Interval reports made so far.
    intervals: u32,
    interval_base: (Snapshot, u64),
    mark_base: (Snapshot, u64),
    /// The mark before the last one (growth between the last two marks).
    prev_mark: Option<(Snapshot, u64)>,
    marks: u32,
    next_report_ns: u64,
    /// Losses already announced on stderr.
    lost_reported: u64,
    /// Every process seen and not yet retired (several-process runs).
    procs: BTreeMap<u32, ProcInfo>,
    /// What exited processes left outstanding, for the final report (at most
    /// `--keep-exited`), and how many more there were.
    exited_reports: Vec<ProcessReport>,
    exited_omitted: u64,
    execs: Vec<u32>,
    out: Box<dyn Write>,
    /// Output failures waiting for the next report.
    warnings: Vec<String>,
    /// Events lost per process, as last told (see `set_process_losses`); whether they are
    /// told at all (recordings of earlier tracers do not).
    lost_by_pid: Arc<BTreeMap<u32, u64>>,
    per_process_losses: bool,
    recording_failure_told: bool,
    /// The launched command has ended (the final report's verdicts stop before its end).
    command_ended: bool,
}

impl Engine {
    pub fn new(
        opts: ReportOptions,
        head: RecordHeader,
        recorder: Option<Recorder>,
        out: Box<dyn Write>,
    ) -> Engine {
        let interval_ns = opts.interval.as_nanos() as u64;
        let mut e = Engine {
            opts,
            head,
            ledger: Ledger::new(),
            symbolizer: Symbolizer::new(),
            recorder,
            build_ids: HashMap::new(),
            history: VecDeque::new(),
            intervals: 0,
            interval_base: (Snapshot::default(), 0),
            mark_base: (Snapshot::default(), 0),
            prev_mark: None,
            marks: 0,
            next_report_ns: interval_ns,
            lost_reported: 0,
            procs: BTreeMap::new(),
            exited_reports: Vec::new(),
            exited_omitted: 0,
            execs: Vec::new(),
            out,
            warnings: Vec::new(),
            recording_failure_told: false,
            lost_by_pid: Arc::default(),
            per_process_losses: false,
            command_ended: false,
        };
        // With no warm-up, the window starts from nothing at time zero.
        if e.past_warmup(0) {
            e.history.push_back(Point {
                t_ns: 0,
                sites: Vec::new(),
                lost: Lost::default(),
                lost_by_pid: Arc::default(),
                lost_unattributed: 0,
            });
        }
        e
    }

    /// When the next interval report is due, in ns since the start.
    pub fn next_report_ns(&self) -> u64 {
        self.next_report_ns
    }

    /// Reads the process's memory map through `src` and keeps it (recording it when it changed).
    pub fn refresh_maps(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        let Some(maps) = src.maps(pid).filter(|m| !m.is_empty()) else {
            return Ok(());
        };
        if self.symbolizer.maps_of(pid) == Some(&maps[..]) {
            return Ok(());
        }
        if let Some(rec) = &mut self.recorder {
            let ids = &mut self.build_ids;
            let recorded = maps
                .iter()
                .map(|m| {
                    let open = m.open_path.clone().unwrap_or_else(|| m.path.clone());
                    let id = ids
                        .entry(open.clone())
                        .or_insert_with(|| symbolize::build_id(&open).unwrap_or_default());
                    RecordedMapping::of(m, id.clone())
                })
                .collect();
            rec.write(&RecFrame::Maps {
                pid,
                maps: recorded,
            })?;
        }
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
    pub fn ingest(&mut self, src: &mut dyn Source, events: &[Event]) -> Result<()> {
        for seg in events.split_inclusive(|e| matches!(e, Event::Exec { .. })) {
            self.ingest_segment(src, seg)?;
            if let Some(Event::Exec { pid, .. }) = seg.last() {
                self.exec(*pid);
            }
        }
        Ok(())
    }

    /// A process exec'd: the old program's blocks are gone with its address space, so its books
    /// close (without a report line: nothing of it is left to leak) and its symbols and name
    /// are read afresh.
    fn exec(&mut self, pid: u32) {
        self.ledger.retire(pid);
        self.symbolizer.forget(pid);
        if self.multi() {
            self.procs.remove(&pid);
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
        if self.multi() && !self.procs.contains_key(&pid) {
            if !self.procs.contains_key(&parent) {
                self.learn_process(src, parent)?;
            }
            if let Some(info) = self.procs.get(&parent).cloned() {
                self.install_process(
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

    fn ingest_segment(&mut self, src: &mut dyn Source, events: &[Event]) -> Result<()> {
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
        if self.multi() {
            for ev in events {
                let pid = ev.pid();
                if !self.procs.contains_key(&pid) {
                    self.learn_process(src, pid)?;
                }
            }
            if self.opts.comm.is_some() {
                kept = events
                    .iter()
                    .filter(|e| {
                        matches!(e, Event::Exec { .. } | Event::Fork { .. }) || self.wanted(e.pid())
                    })
                    .cloned()
                    .collect();
                events = &kept[..];
            }
        }
        let mut fresh: HashMap<SiteKey, Vec<u64>> = HashMap::new();
        let loader_maps = self.loader_mappings(src, events, &mut fresh)?;
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
            if self.ledger.site_id(&key).is_some() || fresh.contains_key(&key) {
                continue;
            }
            let addrs = self.read_stack(src, key)?;
            fresh.insert(key, addrs);
        }
        if let Some(rec) = &mut self.recorder {
            rec.write_events(events)?;
        }
        let before = self.ledger.sites().len();
        for ev in events {
            self.ledger
                .apply(ev, |k| fresh.remove(k).unwrap_or_default());
        }
        // New call sites: make sure their addresses are in the cached memory map while the
        // process still lives (a library loaded since the last look).
        let mut stale: Vec<u32> = self.ledger.sites()[before..]
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
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::Stack {
                pid: key.pid,
                stack_id: key.stack_id,
                addrs: addrs.clone(),
            })?;
        }
        Ok(addrs)
    }

    /// The indices of the mappings in `events` that the dynamic loader made (the zero-filled
    /// data of the libraries it maps, its own bookkeeping): they are part of loading a
    /// program, not allocations, and are left out. Their stacks, read to tell, stay in `fresh`.
    fn loader_mappings(
        &mut self,
        src: &mut dyn Source,
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
            let first = match self.ledger.site_id(&key) {
                Some(id) => self.ledger.site(id).frames.first().copied(),
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

    /// Tracing several processes (system-wide, or several pids): reports get a process level.
    pub fn multi(&self) -> bool {
        self.head.pid == 0
    }

    /// Whether a process's events are kept (--comm).
    fn wanted(&self, pid: u32) -> bool {
        match (&self.opts.comm, self.procs.get(&pid)) {
            (None, _) => true,
            (Some(c), Some(p)) => &p.command == c,
            (Some(_), None) => false,
        }
    }

    /// Reads a process's name and allocator through `src` and keeps (and records) them.
    fn learn_process(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        let info = src.process(pid).unwrap_or_else(|| ProcInfo {
            command: "?".into(),
            ..ProcInfo::default()
        });
        self.install_process(pid, info.clone());
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::Process {
                pid,
                command: info.command,
                allocator: info.allocator,
                allocator_kind: info.allocator_kind,
                exited: info.exited,
            })?;
        }
        Ok(())
    }

    /// Keeps what is known of a process (from the live world or a recording). Tracing one
    /// process, a new name (after an exec) is the reports' name.
    pub fn install_process(&mut self, pid: u32, info: ProcInfo) {
        if !self.multi() && pid == self.head.pid {
            self.head.command = info.command.clone();
            if !info.allocator.is_empty() {
                self.head.allocator = info.allocator.clone();
                self.head.allocator_kind = info.allocator_kind.clone();
            }
        }
        self.procs.insert(pid, info);
    }

    /// After the traced process exec'd (one-process runs): read its new name and allocator.
    /// Called once the new program's allocator is probed, before the next report.
    pub fn learn_after_exec(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        if self.multi() || pid != self.head.pid {
            return Ok(());
        }
        self.learn_process(src, pid)
    }

    /// A process already known learned something new (its allocator, found after its events
    /// arrived): what is known of it is read again. Unknown processes are learned when seen.
    pub fn relearn(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        match self.procs.get(&pid) {
            Some(p) if !p.exited => self.learn_process(src, pid),
            _ => Ok(()),
        }
    }

    /// Processes seen and not known to have exited.
    pub fn live_processes(&self) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| !p.exited)
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// A process exited: its symbols are kept, its last numbers go in the next report, then its
    /// books are closed.
    pub fn process_exited(&mut self, pid: u32) -> Result<()> {
        let Some(p) = self.procs.get_mut(&pid) else {
            return Ok(());
        };
        p.exited = true;
        let info = p.clone();
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::Process {
                pid,
                command: info.command,
                allocator: info.allocator,
                allocator_kind: info.allocator_kind,
                exited: true,
            })?;
        }
        Ok(())
    }

    /// Re-reads the names of processes whose events --comm drops: a process forked by a shell
    /// has the shell's name until it execs.
    pub fn recheck_names(&mut self, src: &mut dyn Source) -> Result<()> {
        if self.opts.comm.is_none() {
            return Ok(());
        }
        let unwanted: Vec<u32> = self
            .procs
            .iter()
            .filter(|(&pid, p)| !p.exited && !self.wanted(pid))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in unwanted {
            if let Some(info) = src.process(pid) {
                if self.procs.get(&pid).map(|p| &p.command) != Some(&info.command) {
                    self.learn_process(src, pid)?;
                }
            }
        }
        Ok(())
    }

    /// A drain point, `t_ns` after the start: makes the interval report when one is due.
    pub fn tick(&mut self, src: &mut dyn Source, t_ns: u64, c: &Counters) -> Result<Flow> {
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::Tick { t_ns, counters: *c })?;
            rec.flush()?;
        }
        if t_ns < self.next_report_ns {
            return Ok(Flow::Continue);
        }
        let interval_ns = self.opts.interval.as_nanos().max(1) as u64;
        while self.next_report_ns <= t_ns {
            self.next_report_ns += interval_ns;
        }
        self.intervals += 1;
        let snap = self.ledger.snapshot(t_ns);
        self.remember(&snap, c);
        let mut base = std::mem::replace(&mut self.interval_base, (snap.clone(), t_ns));
        if self.opts.since_attach {
            base = (Snapshot::default(), 0);
        }
        let (base, base_ns) = base;
        let r = self.build(ReportKind::Interval, &snap, &base, t_ns - base_ns, c);
        let flow = self.emit(&r)?;
        if self.opts.flame.as_ref().is_some_and(|f| f.every) {
            self.write_flame_or_warn(t_ns);
        }
        let pids = if self.multi() {
            self.live_processes()
        } else {
            vec![self.head.pid]
        };
        for pid in pids {
            self.refresh_maps(src, pid)?;
        }
        // Exited processes had their last line in this report.
        let gone: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.exited)
            .map(|(&pid, _)| pid)
            .collect();
        if !gone.is_empty() {
            // Their outstanding blocks, kept for the final report.
            let fin = self.build_of(
                ReportKind::Final,
                &snap,
                &Snapshot::default(),
                t_ns,
                c,
                Some(&gone),
            );
            self.exited_reports
                .extend(fin.processes.into_iter().filter(|p| gone.contains(&p.pid)));
            self.keep_exited();
        }
        self.ledger.retire_all(&gone);
        for pid in gone {
            self.symbolizer.forget(pid);
            // A new process may come with this pid: it is a stranger.
            self.procs.remove(&pid);
        }
        if self.ledger.retired_sites() >= COMPACT_AFTER {
            self.compact();
        }
        Ok(flow)
    }

    /// Forgets the sites of exited processes (their summaries are kept, see `keep_exited`):
    /// every snapshot kept by site id follows the ledger.
    fn compact(&mut self) {
        let map = self.ledger.compact();
        for p in &mut self.history {
            p.sites = aggregate::remap_counts(&p.sites, &map);
        }
        self.interval_base.0.remap(&map);
        self.mark_base.0.remap(&map);
        if let Some((s, _)) = &mut self.prev_mark {
            s.remap(&map);
        }
    }

    /// At most `--keep-exited` summaries of exited processes wait for the final report: those
    /// with leaking sites first, then by what they left outstanding; the others are counted.
    fn keep_exited(&mut self) {
        let keep = self.opts.keep_exited;
        if self.exited_reports.len() <= keep {
            return;
        }
        self.exited_reports
            .sort_by_key(|p| std::cmp::Reverse((p.summary.leak_sites > 0, p.totals.live_bytes)));
        self.exited_omitted += (self.exited_reports.len() - keep) as u64;
        self.exited_reports.truncate(keep);
    }

    /// A mark: reports what changed since the previous mark (or the start).
    pub fn mark(&mut self, t_ns: u64, c: &Counters) -> Result<Flow> {
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::Mark { t_ns, counters: *c })?;
        }
        self.marks += 1;
        let snap = self.ledger.snapshot(t_ns);
        let (base, base_ns) = std::mem::replace(&mut self.mark_base, (snap.clone(), t_ns));
        let mut r = self.build(ReportKind::Mark, &snap, &base, t_ns - base_ns, c);
        r.mark = Some(self.marks);
        self.prev_mark = (self.marks > 1).then_some((base, base_ns));
        let flow = self.emit(&r)?;
        if self
            .opts
            .flame
            .as_ref()
            .is_some_and(|f| f.every && f.what == What::Growth)
        {
            self.write_flame_or_warn(t_ns);
        }
        Ok(flow)
    }

    /// The end: the outstanding report.
    pub fn finish(&mut self, t_ns: u64, c: &Counters, exit_code: Option<i32>) -> Result<()> {
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::End {
                t_ns,
                counters: *c,
                exit_code,
            })?;
            rec.flush()?;
        }
        let snap = self.ledger.snapshot(t_ns);
        if self.history.back().is_none_or(|p| p.t_ns < t_ns) {
            self.remember(&snap, c);
        }
        // A launched command that exited: its last point is after its end (see `assess`).
        self.command_ended = exit_code.is_some();
        let mut r = self.build(ReportKind::Final, &snap, &Snapshot::default(), t_ns, c);
        r.exit_code = exit_code;
        // Processes that exited since the last report (their numbers are in this one's
        // totals already) join those that exited before, under the same `--keep-exited`.
        let (exited_now, live): (Vec<ProcessReport>, Vec<ProcessReport>) =
            std::mem::take(&mut r.processes)
                .into_iter()
                .partition(|p| p.exited);
        r.processes = live;
        if self.multi() && !self.exited_reports.is_empty() {
            // Processes that exited on the way: what they left outstanding at exit.
            for p in &self.exited_reports {
                r.totals.live_objects += p.totals.live_objects;
                r.totals.live_bytes += p.totals.live_bytes;
                r.totals.delta_objects += p.totals.delta_objects;
                r.totals.delta_bytes += p.totals.delta_bytes;
                r.totals.allocs += p.totals.allocs;
                r.totals.frees += p.totals.frees;
                r.sites.extend(p.sites.iter().cloned());
                r.summary.leak_sites += p.summary.leak_sites;
                r.summary.leak_bytes_per_s =
                    round3(r.summary.leak_bytes_per_s + p.summary.leak_bytes_per_s);
                r.summary.plateau_sites += p.summary.plateau_sites;
                r.summary.uncertain_sites += p.summary.uncertain_sites;
            }
            sort(&mut r.sites, ReportKind::Final, self.opts.sort);
            r.sites_omitted += r.sites.len().saturating_sub(self.opts.top);
            r.sites.truncate(self.opts.top);
        }
        if self.multi() {
            self.exited_reports.extend(exited_now);
            self.keep_exited();
            r.processes.extend(self.exited_reports.iter().cloned());
            r.processes
                .sort_by_key(|p| std::cmp::Reverse(p.totals.live_bytes));
        }
        r.exited_omitted = self.exited_omitted;
        self.emit(&r)?;
        self.write_flame(t_ns)
    }

    fn past_warmup(&self, t_ns: u64) -> bool {
        match self.opts.warmup {
            Warmup::Secs(s) => t_ns as f64 >= s * 1e9,
            Warmup::Intervals(n) => self.intervals >= n,
        }
    }

    fn warmup_s(&self) -> f64 {
        match self.opts.warmup {
            Warmup::Secs(s) => s,
            Warmup::Intervals(n) => n as f64 * self.opts.interval.as_secs_f64(),
        }
    }

    /// Keeps this moment's counts for verdicts (once past warm-up).
    fn remember(&mut self, snap: &Snapshot, c: &Counters) {
        if !self.past_warmup(snap.ts_ns) {
            return;
        }
        self.history.push_back(Point {
            t_ns: snap.ts_ns,
            sites: snap.sites.clone(),
            lost: Lost::of(c),
            lost_by_pid: self.lost_by_pid.clone(),
            lost_unattributed: c.bad_records,
        });
        while self.history.len() > self.opts.verdict.window + 1 {
            self.history.pop_front();
        }
    }

    /// The verdict of a group of sites (one reported row) from the history.
    fn assess(&self, members: &[SiteId]) -> Assessment {
        let zero = Counts::default();
        // The point taken after a process ended says how it ended, not how it was going: its
        // last interval may hold a few milliseconds of its life. Verdicts stop at the point
        // before (its outstanding numbers do not).
        let ended = self.command_ended
            || members.iter().any(|&m| {
                self.ledger
                    .site(m)
                    .key
                    .and_then(|k| self.procs.get(&k.pid))
                    .is_some_and(|p| p.exited)
            });
        let upto = if ended && self.history.len() > 2 {
            self.history.len() - 1
        } else {
            self.history.len()
        };
        let samples: Vec<Sample> = self
            .history
            .iter()
            .take(upto)
            .map(|p| {
                let mut s = Sample {
                    t: p.t_ns as f64 / 1e9,
                    ..Sample::default()
                };
                for &m in members {
                    let c = p.sites.get(m).unwrap_or(&zero);
                    s.live_bytes += c.live_bytes;
                    s.live_objects += c.live_objects;
                    s.alloc_bytes += c.alloc_bytes;
                    s.allocs += c.allocs;
                }
                s
            })
            .collect();
        let lost = match (self.history.front(), self.history.back()) {
            (Some(first), Some(last)) => {
                let active = members.iter().any(|&m| {
                    let a = first.sites.get(m).unwrap_or(&zero);
                    let b = last.sites.get(m).unwrap_or(&zero);
                    a.allocs != b.allocs || a.frees != b.frees
                });
                let no_stack = members
                    .iter()
                    .any(|&m| self.ledger.site(m).key.is_some_and(|k| k.stack_id < 0));
                let grew = |f: fn(&Lost) -> u64| f(&last.lost) > f(&first.lost);
                // A loss touches the sites of its kind: mapping records lost leave heap
                // blocks right, and the other way round.
                let mapping = members.iter().any(|&m| self.ledger.site(m).mapping);
                let of_kind = grew(|l| l.any)
                    || if mapping {
                        grew(|l| l.mappings)
                    } else {
                        grew(|l| l.heap)
                    };
                // Losses the kernel names a process for touch that process's sites only.
                let lost = if self.per_process_losses {
                    last.lost_unattributed > first.lost_unattributed
                        || (of_kind
                            && members.iter().any(|&m| {
                                self.ledger.site(m).key.is_some_and(|k| {
                                    last.lost_by_pid.get(&k.pid) != first.lost_by_pid.get(&k.pid)
                                })
                            }))
                } else {
                    of_kind
                };
                (active && lost) || (no_stack && grew(|l| l.no_stack))
            }
            _ => false,
        };
        verdict::assess(&samples, &self.opts.verdict, lost)
    }

    /// Every site by its allocation point: the process and the return address into the
    /// allocator's caller (the call instruction that allocates).
    fn points(&self) -> HashMap<(u32, u64), Vec<SiteId>> {
        let mut out: HashMap<(u32, u64), Vec<SiteId>> = HashMap::new();
        for (id, s) in self.ledger.sites().iter().enumerate() {
            if let (Some(k), Some(&first)) = (s.key, s.frames.first()) {
                out.entry((k.pid, first)).or_default().push(id);
            }
        }
        out
    }

    /// A row's verdict. A stack is judged by its own history, unless all the stacks through its
    /// allocation point together do not grow: then one stack's growth is another's shrinking
    /// (a cache filled from one caller and refilled from another) and the point's verdict holds.
    fn judge(
        &self,
        members: &[SiteId],
        points: &HashMap<(u32, u64), Vec<SiteId>>,
        cache: &mut HashMap<(u32, u64), Assessment>,
    ) -> Assessment {
        let mut own = self.assess(members);
        if !matches!(own.verdict, Verdict::Leak | Verdict::Freed) {
            return own;
        }
        let site = self.ledger.site(members[0]);
        let (Some(k), Some(&first)) = (site.key, site.frames.first()) else {
            return own;
        };
        let Some(all) = points.get(&(k.pid, first)) else {
            return own;
        };
        if all.iter().all(|m| members.contains(m)) {
            return own;
        }
        let point = *cache
            .entry((k.pid, first))
            .or_insert_with(|| self.assess(all));
        if matches!(point.verdict, Verdict::Plateau | Verdict::Churn) {
            own.verdict = point.verdict;
            own.verdict_scope = VerdictScope::AllocationPoint;
        }
        own
    }

    fn counters(&self, c: &Counters) -> (BTreeMap<&'static str, u64>, EventCounts) {
        let lost = LOSSES.iter().map(|l| (l.key, c.of(l))).collect();
        let st = self.ledger.stats;
        let events = EventCounts {
            allocs: c.get(counter::ALLOCS),
            frees: c.get(counter::FREES),
            received_allocs: st.alloc_events,
            received_frees: st.free_events,
            nested: c.get(counter::NESTED),
            failed: c.get(counter::FAILED),
            unknown_frees: st.unknown_frees,
            filtered: c.get(counter::FILTERED),
            inline_stacks: c.get(counter::STACK_INLINE),
            maps: c.get(counter::MAPS),
            received_maps: st.map_events,
            received_unmaps: st.unmap_events,
            heap_releases: st.heap_releases,
            heap_freed: st.heap_freed,
            thrown: c.get(counter::THROWN),
        };
        (lost, events)
    }

    /// Builds a report of `kind` from the change `base` → `snap`: selects the sites, merges
    /// those whose stacks read the same (e.g. the copies of an unrolled loop's call), judges,
    /// describes their blocks, filters, sorts and keeps the top N.
    fn build(
        &mut self,
        kind: ReportKind,
        snap: &Snapshot,
        base: &Snapshot,
        window_ns: u64,
        c: &Counters,
    ) -> Report {
        self.build_of(kind, snap, base, window_ns, c, None)
    }

    /// [`build`], tracing several processes: of `only` (no limit), or else of the
    /// `--processes` that grew most (outstanding most, in the final report). Only their sites
    /// are symbolized and judged; the totals are everyone's.
    fn build_of(
        &mut self,
        kind: ReportKind,
        snap: &Snapshot,
        base: &Snapshot,
        window_ns: u64,
        c: &Counters,
        only: Option<&[u32]>,
    ) -> Report {
        let t = self.ledger.totals();
        let m = self.ledger.mapping_totals();
        let mut totals = Totals {
            live_objects: t.live_objects,
            live_bytes: t.live_bytes,
            mmap_live_objects: m.live_objects,
            mmap_live_bytes: m.live_bytes,
            ..Totals::default()
        };
        let deltas = snap.diff(base);
        let listed = self
            .multi()
            .then(|| self.listed_processes(kind, &deltas, only));
        let pid_of = |id: SiteId| self.ledger.site(id).key.map_or(0, |k| k.pid);
        let mut picked: Vec<SiteDelta> = Vec::new();
        for d in deltas {
            if self.ledger.site(d.site).retired {
                continue;
            }
            if listed
                .as_ref()
                .is_some_and(|(l, _)| !l.contains(&pid_of(d.site)))
            {
                totals.delta_objects += d.delta_objects;
                totals.delta_bytes += d.delta_bytes;
                totals.allocs += d.delta_allocs;
                totals.frees += d.delta_frees;
                continue;
            }
            totals.delta_objects += d.delta_objects;
            totals.delta_bytes += d.delta_bytes;
            totals.allocs += d.delta_allocs;
            totals.frees += d.delta_frees;
            let keep = match kind {
                ReportKind::Interval => true,
                ReportKind::Mark => d.delta_objects != 0 || d.delta_bytes != 0,
                ReportKind::Final => d.now.live_objects > 0,
            };
            if keep {
                picked.push(d);
            }
        }
        let mut groups = self.group(picked.iter().map(|d| d.site));
        let delta_of: HashMap<SiteId, &SiteDelta> = picked.iter().map(|d| (d.site, d)).collect();
        for g in &mut groups {
            for d in g.members.iter().map(|m| delta_of[m]) {
                g.live_objects += d.now.live_objects;
                g.live_bytes += d.now.live_bytes;
                g.delta_objects += d.delta_objects;
                g.delta_bytes += d.delta_bytes;
                g.allocs += d.delta_allocs;
                g.frees += d.delta_frees;
            }
        }
        if let Some(re) = &self.opts.site {
            groups.retain(|g| g.frames.iter().any(|f| frame_matches(re, f)));
        }
        let now_mono = self.head.start_mono_ns + snap.ts_ns;
        let cutoff = match (kind, self.opts.older_than) {
            (ReportKind::Final, Some(age)) => Some(now_mono.saturating_sub(age.as_nanos() as u64)),
            _ => None,
        };
        let blocks = self.describe_blocks(&groups, cutoff);
        let points = self.points();
        let mut point_verdicts: HashMap<(u32, u64), Assessment> = HashMap::new();
        if cutoff.is_some() {
            totals.live_objects = 0;
            totals.live_bytes = 0;
        }
        let mut sites: Vec<SiteReport> = Vec::with_capacity(groups.len());
        for (g, b) in groups.into_iter().zip(blocks) {
            let (mut live_objects, mut live_bytes) = (g.live_objects, g.live_bytes);
            if cutoff.is_some() {
                (live_objects, live_bytes) = (b.objects, b.bytes);
                totals.live_objects += live_objects;
                totals.live_bytes += live_bytes;
                if live_objects == 0 {
                    continue;
                }
            }
            let (delta_objects, delta_bytes) = match kind {
                ReportKind::Final => (live_objects as i64, live_bytes as i64),
                _ => (g.delta_objects, g.delta_bytes),
            };
            let assessment = self.judge(&g.members, &points, &mut point_verdicts);
            sites.push(SiteReport {
                pid: g.pid,
                category: if g.mapping {
                    Category::Mmap
                } else {
                    Category::Heap
                },
                assessment,
                objects: b.summary(now_mono),
                frames: g.frames,
                live_objects,
                live_bytes,
                delta_objects,
                delta_bytes,
                allocs: g.allocs,
                frees: g.frees,
            });
        }
        if cutoff.is_some() {
            totals.delta_objects = totals.live_objects as i64;
            totals.delta_bytes = totals.live_bytes as i64;
        }
        let summary = summarize(&sites);
        sort(&mut sites, kind, self.opts.sort);
        let (processes, processes_omitted) = match &listed {
            Some((l, omitted)) => (self.processes(kind, &sites, &picked, l), *omitted),
            None => (Vec::new(), 0),
        };
        let omitted = sites.len().saturating_sub(self.opts.top);
        sites.truncate(self.opts.top);
        let (lost, events) = self.counters(c);
        Report {
            kind,
            elapsed_s: round3(snap.ts_ns as f64 / 1e9),
            window_s: round3(window_ns as f64 / 1e9),
            pid: self.head.pid,
            command: self.head.command.clone(),
            allocator: self.head.allocator.clone(),
            allocator_kind: self.head.allocator_kind.clone(),
            lost,
            events,
            totals,
            sites,
            sites_omitted: omitted,
            summary,
            warmup_s: round3(self.warmup_s()),
            mark: None,
            processes,
            exit_code: None,
            exited_omitted: 0,
            processes_omitted,
            warnings: self.take_warnings(),
        }
    }

    /// The processes a several-process report lists: `only`, or the `--processes` that grew
    /// most in the window (then outstanding most; in the final report, outstanding most).
    /// Returns them and how many others had sites.
    fn listed_processes(
        &self,
        kind: ReportKind,
        deltas: &[SiteDelta],
        only: Option<&[u32]>,
    ) -> (std::collections::HashSet<u32>, usize) {
        if let Some(only) = only {
            return (only.iter().copied().collect(), 0);
        }
        // (growth, outstanding) per process.
        let mut score: HashMap<u32, (i64, u64)> = HashMap::new();
        for s in self.ledger.sites().iter().filter(|s| !s.retired) {
            if let Some(k) = s.key {
                score.entry(k.pid).or_default().1 += s.counts.live_bytes;
            }
        }
        for d in deltas {
            if let Some(k) = self.ledger.site(d.site).key {
                score.entry(k.pid).or_default().0 += d.delta_bytes;
            }
        }
        // The final report lists every process that exited since the last report: they join
        // the exited ones under `--keep-exited` (see `finish`).
        let mut listed: std::collections::HashSet<u32> = std::collections::HashSet::new();
        if kind == ReportKind::Final {
            score.retain(|pid, _| {
                let exited = self.procs.get(pid).is_some_and(|p| p.exited);
                if exited {
                    listed.insert(*pid);
                }
                !exited
            });
        }
        let mut all: Vec<(u32, (i64, u64))> = score.into_iter().collect();
        all.sort_by_key(|&(pid, (growth, live))| match kind {
            ReportKind::Final => (std::cmp::Reverse(live as i64), std::cmp::Reverse(0), pid),
            _ => (std::cmp::Reverse(growth), std::cmp::Reverse(live), pid),
        });
        let keep = self.opts.processes.min(all.len());
        let omitted = all.len() - keep;
        listed.extend(all.into_iter().take(keep).map(|(p, _)| p));
        (listed, omitted)
    }

    /// The events lost so far per process, as the kernel counts them: from now on a loss
    /// makes only its own process's verdicts uncertain. Recorded when they change.
    pub fn set_process_losses(&mut self, lost: BTreeMap<u32, u64>) -> Result<()> {
        if self.per_process_losses && lost == *self.lost_by_pid {
            return Ok(());
        }
        if let Some(rec) = &mut self.recorder {
            rec.write(&RecFrame::Losses(
                lost.iter().map(|(&p, &n)| (p, n)).collect(),
            ))?;
        }
        self.per_process_losses = true;
        self.lost_by_pid = Arc::new(lost);
        Ok(())
    }

    /// Output failures not yet told in a report (see `Report::warnings`).
    fn take_warnings(&mut self) -> Vec<String> {
        if let Some(why) = self.recorder.as_ref().and_then(|r| r.failure()) {
            if !self.recording_failure_told {
                self.recording_failure_told = true;
                self.warnings.push(why.to_string());
            }
        }
        std::mem::take(&mut self.warnings)
    }

    /// The process level of a several-process report: each process with its totals, verdict
    /// summary and top sites (`sites` sorted, all of them), the top processes first.
    fn processes(
        &self,
        kind: ReportKind,
        sites: &[SiteReport],
        picked: &[SiteDelta],
        listed: &std::collections::HashSet<u32>,
    ) -> Vec<ProcessReport> {
        let mut per: BTreeMap<u32, ProcessReport> = BTreeMap::new();
        let entry = |per: &mut BTreeMap<u32, ProcessReport>, pid: u32| {
            per.entry(pid)
                .or_insert_with(|| {
                    let info = self.procs.get(&pid).cloned().unwrap_or_default();
                    ProcessReport {
                        pid,
                        lost: self.lost_by_pid.get(&pid).copied().unwrap_or(0),
                        command: info.command,
                        allocator: info.allocator,
                        allocator_kind: info.allocator_kind,
                        exited: info.exited,
                        totals: Totals::default(),
                        summary: Summary::default(),
                        sites: Vec::new(),
                        sites_omitted: 0,
                    }
                })
                .pid
        };
        for s in self.ledger.sites().iter().filter(|s| !s.retired) {
            let Some(k) = s.key else { continue };
            if !listed.contains(&k.pid) {
                continue;
            }
            if s.counts.live_objects > 0 || kind != ReportKind::Final {
                entry(&mut per, k.pid);
            }
            if let Some(p) = per.get_mut(&k.pid) {
                p.totals.live_objects += s.counts.live_objects;
                p.totals.live_bytes += s.counts.live_bytes;
            }
        }
        for d in picked {
            let pid = self.ledger.site(d.site).key.map_or(0, |k| k.pid);
            entry(&mut per, pid);
            let t = &mut per.get_mut(&pid).expect("just added").totals;
            t.delta_objects += d.delta_objects;
            t.delta_bytes += d.delta_bytes;
            t.allocs += d.delta_allocs;
            t.frees += d.delta_frees;
        }
        for s in sites {
            entry(&mut per, s.pid);
            per.get_mut(&s.pid)
                .expect("just added")
                .sites
                .push(s.clone());
        }
        let mut out: Vec<ProcessReport> = per
            .into_values()
            .filter(|p| !p.sites.is_empty() || p.totals.live_objects > 0)
            .map(|mut p| {
                if kind == ReportKind::Final {
                    p.totals.delta_objects = p.totals.live_objects as i64;
                    p.totals.delta_bytes = p.totals.live_bytes as i64;
                }
                p.summary = summarize(&p.sites);
                p.sites_omitted = p.sites.len().saturating_sub(self.opts.top);
                p.sites.truncate(self.opts.top);
                p
            })
            .collect();
        out.sort_by(|a, b| match kind {
            ReportKind::Final => b.totals.live_bytes.cmp(&a.totals.live_bytes),
            _ => b
                .totals
                .delta_bytes
                .cmp(&a.totals.delta_bytes)
                .then(b.totals.live_bytes.cmp(&a.totals.live_bytes)),
        });
        out
    }

    /// Symbolizes sites and merges those whose stacks read the same (e.g. the copies of an
    /// unrolled loop's call): one group per row, members in the order given.
    fn group(&mut self, sites: impl Iterator<Item = SiteId>) -> Vec<Group> {
        let sites: Vec<SiteId> = sites.collect();
        // Every frame of every site at once: one symbolizer call per file.
        let wanted: Vec<(u32, u64)> = sites
            .iter()
            .flat_map(|&id| {
                let site = self.ledger.site(id);
                let pid = site.key.map_or(self.head.pid, |k| k.pid);
                site.frames.iter().map(move |&a| (pid, a))
            })
            .collect();
        self.symbolizer.prepare(wanted);
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<Vec<String>, usize> = HashMap::new();
        for id in sites {
            let site = self.ledger.site(id);
            let pid = site.key.map_or(self.head.pid, |k| k.pid);
            let addrs = site.frames.clone();
            let frames = self.symbolizer.stack(pid, &addrs);
            let mut key: Vec<String> = frames.iter().map(source_key).collect();
            key.push(pid.to_string());
            key.push(site.mapping.to_string());
            let mapping = site.mapping;
            let g = *index.entry(key).or_insert_with(|| {
                groups.push(Group {
                    pid,
                    frames,
                    mapping,
                    ..Group::default()
                });
                groups.len() - 1
            });
            groups[g].members.push(id);
        }
        groups
    }

    /// The flame data of `what` at `t_ns` (see [`flame::What`]). Growth covers the last two
    /// marks when there were two, else the last mark (or the start) to now.
    pub fn flame_profile(&mut self, what: What, t_ns: u64) -> FlameProfile {
        let ((base, base_ns), (now, now_ns)) = match (what, &self.prev_mark) {
            (What::Growth, Some(prev)) => (prev.clone(), self.mark_base.clone()),
            (What::Growth, None) => (self.mark_base.clone(), (self.ledger.snapshot(t_ns), t_ns)),
            _ => ((Snapshot::default(), 0), (self.ledger.snapshot(t_ns), t_ns)),
        };
        let zero = Counts::default();
        let before = |id: SiteId| *base.sites.get(id).unwrap_or(&zero);
        let after = |id: SiteId| *now.sites.get(id).unwrap_or(&zero);
        let ids: Vec<SiteId> = (0..self.ledger.sites().len())
            .filter(|&id| {
                let c = after(id);
                match what {
                    What::Leaks | What::Live => c.live_objects > 0,
                    What::Allocs => c.allocs > 0,
                    What::Growth => {
                        let b = before(id);
                        c.live_bytes != b.live_bytes || c.live_objects != b.live_objects
                    }
                }
            })
            .collect();
        let mut groups = self.group(ids.into_iter());
        if let Some(re) = &self.opts.site {
            groups.retain(|g| g.frames.iter().any(|f| frame_matches(re, f)));
        }
        let points = self.points();
        let mut cache = HashMap::new();
        let mut stacks = Vec::new();
        for g in groups {
            if what == What::Leaks {
                let v = self.judge(&g.members, &points, &mut cache).verdict;
                if !matches!(v, Verdict::Leak | Verdict::New | Verdict::Uncertain) {
                    continue;
                }
            }
            let mut st = FlameStack::default();
            for &m in &g.members {
                let c = after(m);
                let b = before(m);
                st.after_bytes += c.live_bytes as i64;
                st.before_bytes += b.live_bytes as i64;
                st.alloc_objects += c.allocs as i64;
                st.alloc_bytes += c.alloc_bytes as i64;
                st.inuse_objects += c.live_objects as i64 - b.live_objects as i64;
                st.inuse_bytes += c.live_bytes as i64 - b.live_bytes as i64;
            }
            st.frames = g.frames;
            stacks.push(st);
        }
        let pid = self.head.pid;
        let maps = self.symbolizer.maps_of(pid).map(<[Mapping]>::to_vec);
        let mappings = maps
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let file = m.open_path.clone().unwrap_or_else(|| m.path.clone());
                let id = self
                    .build_ids
                    .entry(file.clone())
                    .or_insert_with(|| symbolize::build_id(&file).unwrap_or_default())
                    .clone();
                (m, id)
            })
            .collect();
        FlameProfile {
            what: Some(what),
            pid,
            command: self.head.command.clone(),
            start_s: round3(base_ns as f64 / 1e9),
            end_s: round3(now_ns as f64 / 1e9),
            start_unix_ns: self.head.start_unix_ns,
            stacks,
            mappings,
            tracer_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Writes the flame file when one was asked for.
    /// A flame file rewritten during the run that cannot be written (a full disk): said on
    /// stderr and in the next report; tracing goes on, and the final write tries again.
    fn write_flame_or_warn(&mut self, t_ns: u64) {
        if let Err(e) = self.write_flame(t_ns) {
            let why = format!("{e:#}; tracing goes on");
            eprintln!("tracer: warning: {why}");
            self.warnings.push(why);
        }
    }

    fn write_flame(&mut self, t_ns: u64) -> Result<()> {
        let Some(f) = self.opts.flame.clone() else {
            return Ok(());
        };
        let p = self.flame_profile(f.what, t_ns);
        for (path, format) in &f.files {
            flame::write(&p, *format, path)?;
        }
        Ok(())
    }

    /// One pass over the live blocks: sizes and ages per group (and, with a cutoff, the
    /// blocks allocated at or before it).
    fn describe_blocks(&self, groups: &[Group], cutoff: Option<u64>) -> Vec<Blocks> {
        let mut of_site: HashMap<SiteId, usize> = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for &m in &g.members {
                of_site.insert(m, i);
            }
        }
        let mut out = vec![Blocks::default(); groups.len()];
        if of_site.is_empty() {
            return out;
        }
        for (_, _, b) in self.ledger.all_live_blocks() {
            let Some(&g) = of_site.get(&b.site) else {
                continue;
            };
            if cutoff.is_some_and(|c| b.ts_ns > c) {
                continue;
            }
            let o = &mut out[g];
            *o.sizes.entry(b.size).or_default() += b.weight;
            o.objects += b.weight;
            o.bytes += b.size * b.weight;
            o.oldest = Some(o.oldest.map_or(b.ts_ns, |t: u64| t.min(b.ts_ns)));
        }
        out
    }

    /// Writes a report; Quit when stdout is gone.
    fn emit(&mut self, r: &Report) -> Result<Flow> {
        let limits = LimitSettings {
            ring_size: self.head.ring_size,
            stack_slots: self.head.stack_slots,
        };
        let lost_now: u64 = r.lost.values().sum();
        if lost_now > self.lost_reported {
            for h in report::lost_hints(&r.lost, limits) {
                eprintln!("tracer: warning: {h}");
            }
            self.lost_reported = lost_now;
        }
        let res = match self.opts.format {
            Format::Table => report::table::write(r, limits, &mut self.out),
            Format::Json => report::json::write(r, &mut self.out),
        };
        match res {
            Ok(()) => Ok(Flow::Continue),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Flow::Quit),
            Err(e) => Err(e).context("cannot write the report"),
        }
    }
}

/// Retired sites held before the ledger forgets them (a compaction walks every site).
const COMPACT_AFTER: usize = 4096;

/// A reported row: sites whose stacks read the same.
#[derive(Default)]
struct Group {
    pid: u32,
    frames: Vec<Frame>,
    /// Memory mappings, not heap blocks.
    mapping: bool,
    members: Vec<SiteId>,
    live_objects: u64,
    live_bytes: u64,
    delta_objects: i64,
    delta_bytes: i64,
    allocs: u64,
    frees: u64,
}

/// The live blocks of one group.
#[derive(Clone, Default)]
struct Blocks {
    sizes: BTreeMap<u64, u64>,
    objects: u64,
    bytes: u64,
    oldest: Option<u64>,
}

impl Blocks {
    fn summary(&self, now_mono: u64) -> LiveObjects {
        let mut by_bytes: Vec<SizeCount> = self
            .sizes
            .iter()
            .map(|(&size, &objects)| SizeCount { size, objects })
            .collect();
        by_bytes.sort_by(|a, b| {
            (b.size * b.objects)
                .cmp(&(a.size * a.objects))
                .then(b.objects.cmp(&a.objects))
                .then(a.size.cmp(&b.size))
        });
        by_bytes.truncate(4);
        let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
        for (&size, &n) in &self.sizes {
            let class = if size == 0 {
                0
            } else {
                1u64 << (63 - size.leading_zeros())
            };
            *histogram.entry(class).or_default() += n;
        }
        LiveObjects {
            sizes: by_bytes,
            distinct_sizes: self.sizes.len(),
            size_min: self.sizes.keys().next().copied().unwrap_or(0),
            size_max: self.sizes.keys().next_back().copied().unwrap_or(0),
            size_histogram: histogram.into_iter().collect(),
            oldest_age_s: self
                .oldest
                .map(|t| round3(now_mono.saturating_sub(t) as f64 / 1e9)),
        }
    }
}

/// Verdict counts over some sites.
fn summarize(sites: &[SiteReport]) -> Summary {
    let mut summary = Summary::default();
    for s in sites {
        match s.assessment.verdict {
            Verdict::Leak => {
                summary.leak_sites += 1;
                summary.leak_bytes_per_s += s.assessment.rate_bytes_per_s;
            }
            Verdict::Plateau => summary.plateau_sites += 1,
            Verdict::Uncertain => summary.uncertain_sites += 1,
            _ => {}
        }
    }
    summary.leak_bytes_per_s = round3(summary.leak_bytes_per_s);
    summary
}

fn sort(sites: &mut [SiteReport], kind: ReportKind, key: SortKey) {
    let outstanding = kind == ReportKind::Final;
    sites.sort_by(|a, b| {
        let (ab, ao, bb, bo) = if outstanding {
            (
                a.live_bytes as i64,
                a.live_objects as i64,
                b.live_bytes as i64,
                b.live_objects as i64,
            )
        } else {
            (
                a.delta_bytes,
                a.delta_objects,
                b.delta_bytes,
                b.delta_objects,
            )
        };
        let by_bytes = bb.cmp(&ab).then(bo.cmp(&ao));
        match key {
            SortKey::Bytes => by_bytes,
            SortKey::Objects => bo.cmp(&ao).then(bb.cmp(&ab)),
            SortKey::Rate => b
                .assessment
                .rate_bytes_per_s
                .total_cmp(&a.assessment.rate_bytes_per_s)
                .then(by_bytes),
        }
    });
}

fn frame_matches(re: &regex_lite::Regex, f: &Frame) -> bool {
    [&f.function, &f.file, &f.module]
        .into_iter()
        .flatten()
        .any(|s| re.is_match(s))
}

/// What a frame reads as in source terms: two stacks with equal keys are one site to a reader.
fn source_key(f: &Frame) -> String {
    match (&f.function, &f.file, f.line) {
        (Some(func), file, line) => format!(
            "{func}|{}|{}",
            file.as_deref().unwrap_or(""),
            line.unwrap_or(0)
        ),
        (None, _, _) => format!(
            "{}+{:#x}",
            f.module.as_deref().unwrap_or("?"),
            if f.module.is_some() { f.offset } else { f.addr }
        ),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nanoseconds in a duration, saturating.
pub fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use serde_json::Value;
    use tracer_common::AllocFn;

    use super::*;
    use crate::collector::Alloc;

    const S: u64 = 1_000_000_000;
    const PID: u32 = 7;

    /// Stacks by id: stack id N has the single return address 0x1000 * N (so every stack is
    /// its own allocation point unless a test shares one).
    #[derive(Default)]
    struct Fake {
        stacks: HashMap<i32, Vec<u64>>,
    }

    impl Source for Fake {
        fn stack(&mut self, _pid: u32, id: i32) -> Vec<u64> {
            self.stacks
                .get(&id)
                .cloned()
                .unwrap_or_else(|| vec![0x1000 * id as u64])
        }
        fn maps(&mut self, _pid: u32) -> Option<Vec<Mapping>> {
            None
        }
        fn process(&mut self, pid: u32) -> Option<ProcInfo> {
            Some(ProcInfo {
                command: format!("proc{pid}"),
                allocator: "libc.so.6".into(),
                allocator_kind: "glibc".into(),
                exited: false,
            })
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Rc<RefCell<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn reports(&self) -> Vec<Value> {
            String::from_utf8(self.0.borrow().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn opts(args: &[&str]) -> ReportOptions {
        let mut argv = vec!["tracer", "replay", "x", "--format", "json", "-i", "1"];
        argv.extend_from_slice(args);
        crate::config::Config::from_argv(&argv).unwrap().report
    }

    fn head() -> RecordHeader {
        RecordHeader {
            tracer: "test".into(),
            pid: PID,
            command: "victim".into(),
            allocator: "libc.so.6".into(),
            allocator_kind: "glibc".into(),
            start_mono_ns: 0,
            start_unix_ns: 0,
            ring_size: 4096,
            stack_slots: 1024,
        }
    }

    fn engine(args: &[&str]) -> (Engine, Buf) {
        let out = Buf::default();
        (
            Engine::new(opts(args), head(), None, Box::new(out.clone())),
            out,
        )
    }

    fn malloc(addr: u64, size: u64, stack_id: i32, ts_ns: u64) -> Event {
        Event::Alloc(Alloc {
            pid: PID,
            tid: PID,
            ts_ns,
            func: AllocFn::Malloc,
            addr,
            old_addr: 0,
            size,
            weight: 1,
            stack_id,
            heap: 0,
        })
    }

    fn free(addr: u64, ts_ns: u64) -> Event {
        Event::Free {
            pid: PID,
            ts_ns,
            addr,
        }
    }

    /// The report's site whose first frame is `0x1000 * stack`.
    fn site(r: &Value, stack: i32) -> Option<&Value> {
        let addr = format!("{:#x}", 0x1000 * stack as u64);
        r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frames"][0]["addr"] == addr.as_str())
    }

    /// Each second: stack 1 leaks ten 64 B blocks, stack 2 allocates and frees fifty, stack 3
    /// fills a 100-entry cache of 512 B blocks in two seconds, then replaces one a second.
    fn leaky_second(e: &mut Engine, w: &mut Fake, sec: u64, cache: &mut VecDeque<u64>) {
        let t = sec * S;
        let mut evs = Vec::new();
        for i in 0..10 {
            evs.push(malloc(0x10_0000 + sec * 100 + i, 64, 1, t + i));
        }
        for i in 0..50 {
            evs.push(malloc(0x20_0000 + i, 100 + i, 2, t + i));
            evs.push(free(0x20_0000 + i, t + i));
        }
        let inserts = if cache.len() < 100 { 50 } else { 1 };
        for i in 0..inserts {
            let a = 0x30_0000 + sec * 100 + i;
            evs.push(malloc(a, 512, 3, t + i));
            cache.push_back(a);
            if cache.len() > 100 {
                evs.push(free(cache.pop_front().unwrap(), t + i));
            }
        }
        e.ingest(w, &evs).unwrap();
    }

    fn run_leaky(e: &mut Engine, secs: u64) {
        let mut w = Fake::default();
        let mut cache = VecDeque::new();
        let c = Counters::default();
        for sec in 0..secs {
            leaky_second(e, &mut w, sec, &mut cache);
            e.tick(&mut w, (sec + 1) * S, &c).unwrap();
        }
        e.finish(secs * S + S / 2, &c, Some(0)).unwrap();
    }

    #[test]
    fn verdicts_and_rates_from_the_history() {
        let (mut e, out) = engine(&["--warmup", "3"]);
        run_leaky(&mut e, 14);
        let reps = out.reports();
        assert_eq!(reps.len(), 15);
        let early = &reps[1];
        assert_eq!(site(early, 1).unwrap()["verdict"], "new");
        let r = &reps[13];
        assert_eq!(r["kind"], "interval");
        assert_eq!(r["warmup_s"], 3.0);
        let leak = site(r, 1).unwrap();
        assert_eq!(leak["verdict"], "leak");
        assert_eq!(leak["rate_bytes_per_s"], 640.0);
        assert_eq!(leak["rate_objects_per_s"], 10.0);
        assert_eq!(leak["verdict_intervals"], 10);
        assert_eq!(leak["grown_intervals"], 10);
        assert_eq!(leak["verdict_scope"], "stack");
        assert_eq!(site(r, 2).unwrap()["verdict"], "churn");
        assert_eq!(site(r, 3).unwrap()["verdict"], "plateau");
        assert_eq!(r["summary"]["leak_sites"], 1);
        assert_eq!(r["summary"]["leak_bytes_per_s"], 640.0);
        // the churn site had activity but no growth: it is listed
        assert_eq!(site(r, 2).unwrap()["delta_bytes"], 0);
        let fin = reps.last().unwrap();
        assert_eq!(fin["kind"], "final");
        assert_eq!(fin["exit_code"], 0);
        assert_eq!(site(fin, 1).unwrap()["verdict"], "leak");
        assert_eq!(site(fin, 1).unwrap()["live_objects"], 140);
        assert!(
            site(fin, 2).is_none(),
            "nothing of the churn site is outstanding"
        );
    }

    #[test]
    fn a_cache_fed_from_two_callers_is_one_plateau() {
        // stacks 4 and 5 share the allocation point 0x4000: 5 fills the cache, 4 replaces
        let (mut e, out) = engine(&[]);
        let mut w = Fake::default();
        w.stacks.insert(4, vec![0x4000, 0x9004]);
        w.stacks.insert(5, vec![0x4000, 0x9005]);
        let c = Counters::default();
        let mut cache = VecDeque::new();
        let mut n = 0u64;
        for sec in 0..12u64 {
            let mut evs = Vec::new();
            let (stack, count) = if sec < 2 { (5, 50) } else { (4, 10) };
            for _ in 0..count {
                n += 1;
                evs.push(malloc(0x50_0000 + n, 512, stack, sec * S));
                cache.push_back(0x50_0000 + n);
                if cache.len() > 100 {
                    evs.push(free(cache.pop_front().unwrap(), sec * S));
                }
            }
            e.ingest(&mut w, &evs).unwrap();
            e.tick(&mut w, (sec + 1) * S, &c).unwrap();
        }
        let reps = out.reports();
        let r = &reps[11];
        let rows = r["sites"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{r}");
        for s in rows {
            assert_eq!(s["verdict"], "plateau", "{s}");
            assert_eq!(s["verdict_scope"], "allocation_point", "{s}");
        }
    }

    #[test]
    fn lost_events_make_active_sites_uncertain() {
        let (mut e, out) = engine(&[]);
        let mut w = Fake::default();
        let mut cache = VecDeque::new();
        let mut c = Counters::default();
        for sec in 0..12 {
            leaky_second(&mut e, &mut w, sec, &mut cache);
            if sec == 8 {
                c.kernel[counter::RING_FULL_FREE as usize] += 3;
            }
            e.tick(&mut w, (sec + 1) * S, &c).unwrap();
        }
        let reps = out.reports();
        assert_eq!(site(&reps[7], 1).unwrap()["verdict"], "leak");
        let r = &reps[11];
        for s in r["sites"].as_array().unwrap() {
            assert_eq!(s["verdict"], "uncertain", "{s}");
        }
        assert_eq!(r["summary"]["leak_sites"], 0);
        assert_eq!(r["summary"]["uncertain_sites"], 3);
        assert_eq!(r["lost"]["ring_full_frees"], 3);
    }

    /// Every kind of loss in the table reaches the report's `lost` object and a hint, and
    /// makes uncertain the verdicts of the sites it touches, and only those.
    #[test]
    fn every_loss_reaches_the_report_the_hints_and_the_sites_it_touches() {
        use tracer_common::losses::{Count, Fix};
        for loss in LOSSES {
            let (mut e, out) = engine(&[]);
            let mut w = Fake::default();
            let mut cache = VecDeque::new();
            let mut c = Counters::default();
            for sec in 0..12 {
                leaky_second(&mut e, &mut w, sec, &mut cache);
                // A mapping that leaks (stack 9) and heap blocks without a stack that leak.
                let t = sec * S;
                let mut map = match malloc(0x7000_0000 + sec * 0x1000, 4096, 9, t) {
                    Event::Alloc(a) => a,
                    _ => unreachable!(),
                };
                map.func = AllocFn::Mmap;
                let evs = [Event::Alloc(map), malloc(0x50_0000 + sec, 32, -1, t)];
                e.ingest(&mut w, &evs).unwrap();
                if sec == 8 {
                    match loss.count {
                        Count::Kernel(i) => c.kernel[i as usize] += 3,
                        Count::BadRecords => c.bad_records += 3,
                    }
                }
                e.tick(&mut w, (sec + 1) * S, &c).unwrap();
            }
            let reps = out.reports();
            let r = &reps[11];
            assert_eq!(r["lost"][loss.key], 3, "{}: {}", loss.key, r["lost"]);
            let lost: BTreeMap<&'static str, u64> = LOSSES
                .iter()
                .map(|l| (l.key, r["lost"][l.key].as_u64().unwrap()))
                .collect();
            let limits = report::LimitSettings {
                ring_size: 1 << 20,
                stack_slots: 1024,
            };
            let hints = report::lost_hints(&lost, limits).join("\n");
            let named = match loss.fix {
                Fix::RingSize => "--ring-size",
                Fix::StackSlots => "--stack-slots",
                Fix::Nothing => loss.why,
            };
            assert!(hints.contains(named), "{}: {hints}", loss.key);
            let verdict = |s: Option<&Value>| s.unwrap()["verdict"].as_str().unwrap().to_owned();
            let no_stack = r["sites"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["frames"].as_array().unwrap().is_empty());
            let (heap, mapping, stackless) =
                (verdict(site(r, 1)), verdict(site(r, 9)), verdict(no_stack));
            let want = |touched: bool| if touched { "uncertain" } else { "leak" };
            let t = loss.touches;
            assert_eq!(
                heap,
                want(matches!(t, Touches::Heap | Touches::Any)),
                "{}",
                loss.key
            );
            assert_eq!(
                mapping,
                want(matches!(t, Touches::Mappings | Touches::Any)),
                "{}",
                loss.key
            );
            assert_eq!(
                stackless,
                want(matches!(t, Touches::Heap | Touches::Any | Touches::NoStack)),
                "{}",
                loss.key
            );
        }
    }

    /// Every counter the kernel side bumps is either a loss in the table or a count of what
    /// happened: a new one has to be put in one or the other.
    #[test]
    fn every_kernel_counter_is_a_loss_or_a_count() {
        let counts = [
            counter::ALLOCS,
            counter::FREES,
            counter::NESTED,
            counter::FAILED,
            counter::UNMATCHED_RETURN,
            counter::EXIT_STOPS,
            counter::EXEC_STOPS,
            counter::FILTERED,
            counter::STACK_INLINE,
            counter::FORKS_FOLLOWED,
            counter::MAPS,
            counter::THROWN,
        ];
        for i in 0..counter::COUNT {
            let loss = tracer_common::losses::of_counter(i).is_some();
            assert!(
                loss != counts.contains(&i),
                "counter {i} is {} a loss and a count",
                if loss { "both" } else { "neither" }
            );
        }
    }

    /// Tracing several processes, a loss the kernel names a process for makes only that
    /// process's verdicts uncertain; told nothing per process (a recording of an earlier
    /// tracer), any loss touches every active site, as before.
    #[test]
    fn one_processs_losses_make_only_its_verdicts_uncertain() {
        for per_process in [true, false] {
            let (mut e, out) = multi_engine(&[]);
            let mut w = Fake::default();
            let mut c = Counters::default();
            for sec in 0..12u64 {
                let evs: Vec<Event> = (0..100)
                    .flat_map(|i| {
                        let a = 0x100_0000 + sec * 1000 + i;
                        [malloc_in(10, a, 64, 1), malloc_in(20, a, 64, 2)]
                    })
                    .collect();
                e.ingest(&mut w, &evs).unwrap();
                if sec == 8 {
                    c.kernel[counter::RING_FULL_ALLOC as usize] += 5;
                }
                if per_process {
                    let lost = if sec >= 8 { 5 } else { 0 };
                    e.set_process_losses(BTreeMap::from([(20, lost)])).unwrap();
                }
                e.tick(&mut w, (sec + 1) * S, &c).unwrap();
            }
            let reps = out.reports();
            let last = &reps[11];
            let verdict = |pid: u32| {
                last["sites"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["pid"] == pid)
                    .unwrap()["verdict"]
                    .clone()
            };
            assert_eq!(verdict(20), "uncertain", "per process: {per_process}");
            if per_process {
                assert_eq!(verdict(10), "leak");
                let p20 = last["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["pid"] == 20)
                    .unwrap();
                assert_eq!(p20["lost"], 5);
            } else {
                assert_eq!(verdict(10), "uncertain");
            }
        }
    }

    #[test]
    fn a_mark_shows_exactly_what_was_left_between_marks() {
        let (mut e, out) = engine(&["-i", "1000"]);
        let mut w = Fake::default();
        let mut cache = VecDeque::new();
        let c = Counters::default();
        for sec in 0..3 {
            leaky_second(&mut e, &mut w, sec, &mut cache);
        }
        e.mark(3 * S, &c).unwrap();
        // the action: seven 48 B blocks at stack 9, plus temporaries
        let mut evs = Vec::new();
        for i in 0..7 {
            evs.push(malloc(0x90_0000 + i, 48, 9, 3 * S));
            evs.push(malloc(0x91_0000 + i, 999, 10, 3 * S));
            evs.push(free(0x91_0000 + i, 3 * S));
        }
        e.ingest(&mut w, &evs).unwrap();
        e.mark(4 * S, &c).unwrap();
        let reps = out.reports();
        assert_eq!(reps.len(), 2);
        let m = &reps[1];
        assert_eq!(
            (m["kind"].as_str(), m["mark"].as_u64()),
            (Some("mark"), Some(2))
        );
        assert_eq!(m["window_s"], 1.0);
        let rows = m["sites"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{m}");
        assert_eq!(rows[0]["delta_objects"], 7);
        assert_eq!(rows[0]["delta_bytes"], 7 * 48);
        assert_eq!(rows[0]["sizes"][0]["size"], 48);
        assert_eq!(rows[0]["sizes"][0]["objects"], 7);
        assert_eq!(rows[0]["oldest_age_s"], 1.0);
        assert_eq!(m["totals"]["delta_bytes"], 7 * 48);
    }

    #[test]
    fn since_attach_reports_cumulative_growth() {
        let (mut e, out) = engine(&["--since-attach"]);
        run_leaky(&mut e, 4);
        let reps = out.reports();
        let r = &reps[3];
        assert_eq!(r["window_s"], 4.0);
        assert_eq!(site(r, 1).unwrap()["delta_objects"], 40);
    }

    #[test]
    fn older_than_keeps_old_blocks_in_the_outstanding_report() {
        let (mut e, out) = engine(&["--older-than", "5"]);
        run_leaky(&mut e, 10);
        let fin = out.reports().pop().unwrap();
        // at 10.5 s, blocks allocated at or before 5.5 s: seconds 0..=5 of stack 1
        let s = site(&fin, 1).unwrap();
        assert_eq!(s["live_objects"], 60, "{s}");
        assert_eq!(s["oldest_age_s"], 10.5);
        // the cache: 42 + 50 entries of the first two seconds not yet replaced, and the
        // replacements of seconds 2..=5
        assert_eq!(site(&fin, 3).unwrap()["live_objects"], 96);
        assert_eq!(fin["totals"]["live_objects"], 156);
        assert!(site(&fin, 2).is_none());
    }

    #[test]
    fn sort_top_and_site_filter() {
        let (mut e, out) = engine(&["--sort", "objects", "-n", "1"]);
        run_leaky(&mut e, 3);
        let reps = out.reports();
        // by Δobjects the cache (50 a second while filling) beats the leak (10)
        assert_eq!(reps[0]["sites"].as_array().unwrap().len(), 1);
        assert!(site(&reps[0], 3).is_some());
        assert_eq!(reps[0]["sites_omitted"], 2);

        let (mut e, out) = engine(&["--site", "leaky_lib"]);
        let mut w = Fake::default();
        e.install_maps(
            PID,
            vec![Mapping {
                start: 0x1000,
                end: 0x2000,
                offset: 0,
                path: "/opt/leaky_lib.so".into(),
                open_path: None,
            }],
        );
        e.ingest(&mut w, &[malloc(1, 8, 1, 0), malloc(2, 8, 2, 0)])
            .unwrap();
        e.tick(&mut w, S, &Counters::default()).unwrap();
        let r = &out.reports()[0];
        let rows = r["sites"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{r}");
        assert_eq!(rows[0]["frames"][0]["module"], "/opt/leaky_lib.so");
    }

    #[test]
    fn a_recording_replays_to_the_same_reports() {
        let dir = std::env::temp_dir().join(format!("tracer-engine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.rec");
        let live = Buf::default();
        let rec = Recorder::create(&path, &head()).unwrap();
        let mut e = Engine::new(
            opts(&["--warmup", "2i"]),
            head(),
            Some(rec),
            Box::new(live.clone()),
        );
        let mut w = Fake::default();
        let mut cache = VecDeque::new();
        let c = Counters::default();
        for sec in 0..8 {
            leaky_second(&mut e, &mut w, sec, &mut cache);
            e.tick(&mut w, sec * S + S / 2, &c).unwrap();
            if sec == 4 {
                e.mark(sec * S + S / 3, &c).unwrap();
            }
            e.tick(&mut w, (sec + 1) * S, &c).unwrap();
        }
        e.finish(8 * S + 1, &c, Some(3)).unwrap();
        drop(e);
        let replayed = Buf::default();
        crate::replay::run_to(&path, opts(&["--warmup", "2i"]), Box::new(replayed.clone()))
            .unwrap();
        assert_eq!(live.reports().len(), 10);
        assert_eq!(
            String::from_utf8(replayed.0.borrow().clone()).unwrap(),
            String::from_utf8(live.0.borrow().clone()).unwrap()
        );
        // a different interval re-buckets the same recording
        let coarse = Buf::default();
        crate::replay::run_to(&path, opts(&["-i", "2"]), Box::new(coarse.clone())).unwrap();
        let reps = coarse.reports();
        let kinds: Vec<&str> = reps.iter().map(|r| r["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["interval", "interval", "mark", "interval", "interval", "final"]
        );
        assert_eq!(site(&reps[0], 1).unwrap()["delta_objects"], 20);
        // a truncated recording replays what it holds, then names the offset
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let err = crate::replay::run_to(&path, opts(&[]), Box::new(Buf::default()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corrupt at byte") && err.contains("truncated"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flame_views_pick_their_stacks_and_values() {
        let (mut e, _out) = engine(&[]);
        let mut w = Fake::default();
        let mut cache = VecDeque::new();
        let c = Counters::default();
        for sec in 0..12 {
            leaky_second(&mut e, &mut w, sec, &mut cache);
            e.tick(&mut w, (sec + 1) * S, &c).unwrap();
        }
        let first = |p: &FlameProfile| -> Vec<(u64, i64)> {
            let mut v: Vec<(u64, i64)> = p
                .stacks
                .iter()
                .map(|s| (s.frames[0].addr, p.value(s)))
                .collect();
            v.sort();
            v
        };
        // leaks: the leaking stack only (the cache is a plateau, the churn holds nothing)
        let p = e.flame_profile(What::Leaks, 12 * S);
        assert_eq!(first(&p), [(0x1000, 120 * 64)]);
        assert_eq!(p.stacks[0].inuse_objects, 120);
        // live: the cache too
        let p = e.flame_profile(What::Live, 12 * S);
        assert_eq!(first(&p), [(0x1000, 120 * 64), (0x3000, 100 * 512)]);
        // allocs: everything allocated, the churn included
        let p = e.flame_profile(What::Allocs, 12 * S);
        let churn: i64 = (0..50).map(|i| 100 + i).sum::<i64>() * 12;
        assert_eq!(
            first(&p),
            [(0x1000, 120 * 64), (0x2000, churn), (0x3000, 110 * 512)]
        );
    }

    #[test]
    fn growth_is_between_the_last_two_marks() {
        let (mut e, _out) = engine(&["-i", "1000"]);
        let mut w = Fake::default();
        let c = Counters::default();
        let leak = |e: &mut Engine, w: &mut Fake, from: u64, n: u64| {
            let evs: Vec<Event> = (from..from + n).map(|a| malloc(a, 10, 1, 0)).collect();
            e.ingest(w, &evs).unwrap();
        };
        leak(&mut e, &mut w, 1, 5);
        // no mark yet: growth since the start
        let p = e.flame_profile(What::Growth, S);
        assert_eq!((p.stacks[0].before_bytes, p.stacks[0].after_bytes), (0, 50));
        e.mark(S, &c).unwrap();
        leak(&mut e, &mut w, 100, 3);
        // one mark: from it to now
        let p = e.flame_profile(What::Growth, 2 * S);
        assert_eq!(
            (p.stacks[0].before_bytes, p.stacks[0].after_bytes),
            (50, 80)
        );
        assert_eq!((p.start_s, p.end_s), (1.0, 2.0));
        e.mark(2 * S, &c).unwrap();
        leak(&mut e, &mut w, 200, 7);
        // two marks: between them, whatever happened since
        let p = e.flame_profile(What::Growth, 3 * S);
        assert_eq!(p.stacks[0].inuse_bytes, 30);
        assert_eq!(
            (p.stacks[0].before_bytes, p.stacks[0].after_bytes),
            (50, 80)
        );
        assert_eq!((p.start_s, p.end_s), (1.0, 2.0));
        assert!(flame::diff_folded(&p).ends_with(" 50 80\n"));
    }

    #[test]
    fn flame_every_rewrites_the_file_at_each_interval() {
        let dir = std::env::temp_dir().join(format!("tracer-every-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.folded");
        let (mut e, _out) = engine(&["--flame", path.to_str().unwrap(), "--flame-every"]);
        let mut w = Fake::default();
        let c = Counters::default();
        let mut last = 0;
        for sec in 1..=3u64 {
            let evs: Vec<Event> = (0..sec).map(|i| malloc(sec * 100 + i, 10, 1, 0)).collect();
            e.ingest(&mut w, &evs).unwrap();
            e.tick(&mut w, sec * S, &c).unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let v: i64 = text.trim().rsplit_once(' ').unwrap().1.parse().unwrap();
            assert!(v > last, "{text}");
            last = v;
        }
        assert_eq!(last, 60);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn malloc_in(pid: u32, addr: u64, size: u64, stack_id: i32) -> Event {
        match malloc(addr, size, stack_id, 0) {
            Event::Alloc(mut a) => {
                a.pid = pid;
                Event::Alloc(a)
            }
            e => e,
        }
    }

    fn multi_engine(args: &[&str]) -> (Engine, Buf) {
        let out = Buf::default();
        let mut h = head();
        h.pid = 0;
        (Engine::new(opts(args), h, None, Box::new(out.clone())), out)
    }

    #[test]
    fn several_processes_get_a_process_level_and_their_own_rows() {
        let (mut e, out) = multi_engine(&[]);
        let mut w = Fake::default();
        let c = Counters::default();
        // the same stack id in two processes: two rows, one per process
        e.ingest(
            &mut w,
            &[
                malloc_in(10, 1, 100, 1),
                malloc_in(10, 2, 100, 1),
                malloc_in(20, 1, 50, 1),
            ],
        )
        .unwrap();
        e.tick(&mut w, S, &c).unwrap();
        let r = &out.reports()[0];
        assert_eq!(r["pid"], 0);
        let procs = r["processes"].as_array().unwrap();
        let pids: Vec<u64> = procs.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
        assert_eq!(pids, [10, 20], "by growth");
        assert_eq!(procs[0]["command"], "proc10");
        assert_eq!(procs[0]["totals"]["delta_bytes"], 200);
        assert_eq!(procs[1]["sites"][0]["live_bytes"], 50);
        assert_eq!(r["sites"].as_array().unwrap().len(), 2);
        assert_eq!(r["sites"][0]["pid"], 10);
    }

    #[test]
    fn an_exited_process_keeps_its_last_line_and_its_pid_can_come_back() {
        let (mut e, out) = multi_engine(&[]);
        let mut w = Fake::default();
        let c = Counters::default();
        e.ingest(&mut w, &[malloc_in(10, 1, 100, 1), malloc_in(20, 1, 7, 1)])
            .unwrap();
        e.tick(&mut w, S, &c).unwrap();
        e.process_exited(10).unwrap();
        e.tick(&mut w, 2 * S, &c).unwrap();
        // a new process 10: a stranger, same address and stack id
        e.ingest(&mut w, &[malloc_in(10, 1, 30, 1)]).unwrap();
        e.tick(&mut w, 3 * S, &c).unwrap();
        e.finish(4 * S, &c, None).unwrap();
        let reps = out.reports();
        let p10 = |r: &Value| -> Vec<Value> {
            r["processes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["pid"] == 10)
                .cloned()
                .collect()
        };
        // the report after the exit: marked exited, still holding its 100 bytes
        let after_exit = p10(&reps[1]);
        assert_eq!(after_exit[0]["exited"], true);
        assert_eq!(after_exit[0]["totals"]["live_bytes"], 100);
        // the new process 10 counts from zero
        let again = p10(&reps[2]);
        assert_eq!(again[0]["exited"], false);
        assert_eq!(again[0]["totals"]["live_bytes"], 30);
        // the final report: both incarnations, the exited one as it was at exit
        let fin = reps.last().unwrap();
        let mut both: Vec<(bool, u64)> = p10(fin)
            .iter()
            .map(|p| {
                (
                    p["exited"].as_bool().unwrap(),
                    p["totals"]["live_bytes"].as_u64().unwrap(),
                )
            })
            .collect();
        both.sort();
        assert_eq!(both, [(false, 30), (true, 100)]);
        assert_eq!(fin["totals"]["live_bytes"], 137);
    }

    /// Thousands of short processes come and go while one leaks: the books hold only what
    /// lives, the leaker's verdict and rate stay exact across the forgetting, and the final
    /// report keeps `--keep-exited` exited processes and counts the rest.
    #[test]
    fn a_busy_host_stays_bounded_and_the_leaker_exact() {
        let (mut e, out) = multi_engine(&["--keep-exited", "5", "-n", "3"]);
        let mut w = Fake::default();
        let c = Counters::default();
        let mut next_pid = 1000;
        let mut addr = 0x10_0000;
        let mut most_sites = 0;
        for sec in 1..=12u64 {
            // The leaker (pid 7): 100 blocks of 64 bytes a second at one site.
            let mut evs: Vec<Event> = (0..100)
                .map(|i| malloc_in(7, 0x4000_0000 + sec * 1000 + i, 64, 1))
                .collect();
            // 500 short processes, each with 10 sites and one block left at exit; process
            // `1000 + k` leaves k % 7 bytes more, so the biggest are known.
            let born: Vec<u32> = (0..500).map(|k| next_pid + k).collect();
            next_pid += 500;
            for &pid in &born {
                for st in 0..10 {
                    addr += 16;
                    evs.push(malloc_in(pid, addr, 16 + u64::from(pid % 7), 100 + st));
                }
            }
            e.ingest(&mut w, &evs).unwrap();
            for &pid in &born {
                e.process_exited(pid).unwrap();
            }
            e.tick(&mut w, sec * S, &c).unwrap();
            most_sites = most_sites.max(e.ledger.sites().len());
        }
        // 6,000 processes and 60,000 sites went by; the ledger never held more than about
        // COMPACT_AFTER retired sites plus a tick's worth.
        assert!(
            most_sites <= COMPACT_AFTER + 5_100,
            "{most_sites} sites held"
        );
        assert!(e.procs.len() <= 1, "{} processes held", e.procs.len());
        e.finish(13 * S, &c, None).unwrap();
        let reps = out.reports();
        let fin = reps.last().unwrap();
        let leaker = fin["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == 7)
            .unwrap()
            .clone();
        assert_eq!(leaker["totals"]["live_bytes"], 12 * 100 * 64);
        let interval = &reps[reps.len() - 2];
        let site = interval["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["pid"] == 7)
            .unwrap();
        assert_eq!(site["verdict"], "leak", "{site}");
        assert_eq!(site["rate_bytes_per_s"], 6400.0, "{site}");
        // At most five exited processes kept, the biggest (22 bytes a site); the rest counted.
        let exited: Vec<&Value> = fin["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["exited"] == true)
            .collect();
        assert_eq!(exited.len(), 5);
        assert!(exited.iter().all(|p| p["totals"]["live_bytes"] == 220));
        assert_eq!(fin["exited_omitted"], 6_000 - 5);
    }

    /// An interval report lists `--processes` processes, those that grew most, and counts
    /// the others; its totals are everyone's.
    #[test]
    fn a_report_lists_the_processes_that_grew_most() {
        let (mut e, out) = multi_engine(&["--processes", "3"]);
        let mut w = Fake::default();
        let c = Counters::default();
        // Process 100 + k grows by k blocks of 100 bytes.
        let mut evs = Vec::new();
        for k in 1..=10u32 {
            for i in 0..k {
                evs.push(malloc_in(100 + k, 0x1000 * u64::from(i + 1), 100, 1));
            }
        }
        e.ingest(&mut w, &evs).unwrap();
        e.tick(&mut w, S, &c).unwrap();
        let reps = out.reports();
        let r = &reps[0];
        let pids: Vec<u64> = r["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        assert_eq!(pids, [110, 109, 108]);
        assert_eq!(r["processes_omitted"], 7);
        assert_eq!(r["totals"]["live_bytes"], 55 * 100);
        assert_eq!(r["totals"]["delta_bytes"], 55 * 100);
    }

    #[test]
    fn comm_keeps_only_the_named_processes() {
        let (mut e, out) = multi_engine(&["--comm", "proc20"]);
        let mut w = Fake::default();
        e.ingest(&mut w, &[malloc_in(10, 1, 100, 1), malloc_in(20, 1, 7, 1)])
            .unwrap();
        e.tick(&mut w, S, &Counters::default()).unwrap();
        let r = &out.reports()[0];
        let procs = r["processes"].as_array().unwrap();
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0]["pid"], 20);
        assert_eq!(r["totals"]["live_bytes"], 7);
    }

    #[test]
    fn an_exec_closes_the_old_programs_books() {
        let (mut e, out) = engine(&[]);
        let mut w = Fake::default();
        let c = Counters::default();
        // the old program leaves two blocks; then it execs; the new one reuses an address and
        // the stack id under a different program
        e.ingest(
            &mut w,
            &[
                malloc(0x10, 100, 1, 0),
                malloc(0x20, 100, 1, 0),
                Event::Exec { pid: PID, ts_ns: 1 },
                malloc(0x10, 8, 1, 2),
            ],
        )
        .unwrap();
        assert_eq!(e.take_execs(), [PID]);
        e.tick(&mut w, S, &c).unwrap();
        e.finish(2 * S, &c, None).unwrap();
        let fin = out.reports().pop().unwrap();
        assert_eq!(fin["totals"]["live_bytes"], 8, "{fin}");
        let rows = fin["sites"].as_array().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["live_bytes"], 8);
        assert_eq!(fin["events"]["unknown_frees"], 0);
    }
}
