//! The pipeline above the collector: intake (process table, stacks, maps) → books → report
//! builders → writers.
//!
//! An [`Engine`] is driven by a few calls: [`Engine::ingest`] a batch of events, [`Engine::tick`]
//! at every drain point, [`Engine::mark`] when the user asks, [`Engine::finish`] at the end. The
//! live tracer and `tracer replay` make the same calls with the same values (the recording
//! holds them), so they print the same reports. The outside world is reached only through a
//! [`Source`] (stacks, memory maps and processes), and everything read through it is recorded.
//! The engine only sequences: what a report says is built by `report::build` from the books
//! and the process table, and written by `report::writer`.
use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    time::Duration,
};

use anyhow::Result;

use crate::{
    aggregate::{
        books::{Books, Judging},
        verdict::VerdictParams,
    },
    collector::{Counters, Event},
    config::ReportOptions,
    flame::{self, What},
    procs::{ProcInfo, Procs},
    reach::summary::Owned,
    record::{RecordHeader, Recorder, Tap},
    report::{
        build::{self, Builder, Selection},
        writer::Writer,
        ClassRow, LimitSettings, ProcessReport, Report, ReportKind, UnwindSummary,
    },
};

pub mod drive;
mod intake;
mod known;
#[cfg(test)]
mod tests;

pub use crate::procs::live::Source;
pub use crate::report::writer::Flow;
use intake::Intake;
pub use known::Fact;

/// Processes a reachability scan covers at most (tracing every process, none is scanned).
const SCAN_PROCESSES: usize = 16;

/// Somewhere else a report goes as it is written.
pub type Sink = Box<dyn FnMut(&Report)>;

pub struct Engine {
    opts: ReportOptions,
    /// What of `opts` the report builder uses.
    selection: Selection,
    head: RecordHeader,
    intake: Intake,
    books: Books,
    writer: Writer,
    next_report_ns: u64,
    /// What exited processes left outstanding, for the final report (at most
    /// `--keep-exited`), and how many more there were.
    exited_reports: Vec<ProcessReport>,
    exited_omitted: u64,
    /// Where else each report goes (the metrics endpoint).
    sinks: Vec<Sink>,
    /// Output failures waiting for the next report.
    warnings: Vec<String>,
    recording_failure_told: bool,
    /// Where the unwind tables' figures come from (live tracing with tables only), and the
    /// figures every report gives (read at each drain point, or replayed).
    unwind_source: Option<Box<dyn Fn() -> UnwindSummary + Send>>,
    unwind: Option<UnwindSummary>,
    /// `--by class`: the classes at the last interval report and at the last mark.
    classes_at: HashMap<ReportKind, BTreeMap<Option<String>, (u64, u64)>>,
}

impl Engine {
    pub fn new(
        opts: ReportOptions,
        head: RecordHeader,
        recorder: Option<Recorder>,
        out: Box<dyn Write>,
    ) -> Engine {
        let subject = ProcInfo {
            command: head.command.clone(),
            allocator: head.allocator.clone(),
            allocator_kind: head.allocator_kind.clone(),
            exited: false,
        };
        let procs = Procs::new(head.pid, subject, opts.comm.clone());
        let limits = LimitSettings {
            ring_size: head.ring_size,
        };
        Engine {
            books: Books::new(Judging {
                verdict: VerdictParams {
                    // Sampled: no leak on fewer than three sampled blocks.
                    min_sampled_blocks: if head.sample_rate != 0 { 3 } else { 0 },
                    ..opts.verdict
                },
                warmup: opts.warmup,
                interval: opts.interval,
            }),
            intake: Intake::new(procs, Tap::new(recorder)),
            writer: Writer::new(out, opts.format, limits),
            next_report_ns: opts.interval.as_nanos() as u64,
            selection: opts.selection(),
            opts,
            head,
            exited_reports: Vec::new(),
            exited_omitted: 0,
            sinks: Vec::new(),
            warnings: Vec::new(),
            recording_failure_told: false,
            classes_at: HashMap::new(),
            unwind_source: None,
            unwind: None,
        }
    }

    /// Every report says what the unwind tables cost, read from `summary` at each drain
    /// point (and recorded when it changed).
    pub fn report_unwind(&mut self, summary: Box<dyn Fn() -> UnwindSummary + Send>) {
        self.unwind_source = Some(summary);
    }

    /// The unwind tables' figures as a recording gives them.
    pub fn set_unwind(&mut self, summary: UnwindSummary) {
        self.unwind = Some(summary);
    }

    /// Reads the unwind tables' figures before a drain point; records them when they changed.
    fn read_unwind(&mut self) -> Result<()> {
        let Some(now) = self.unwind_source.as_ref().map(|f| f()) else {
            return Ok(());
        };
        if self.unwind.as_ref() != Some(&now) {
            self.intake.tap.unwind(&now)?;
            self.unwind = Some(now);
        }
        Ok(())
    }

    /// When the next interval report is due, in ns since the start.
    pub fn next_report_ns(&self) -> u64 {
        self.next_report_ns
    }

    /// Reads the process's memory map through `src` and keeps it (recording it when it changed).
    pub fn refresh_maps(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        self.intake.refresh_maps(src, &mut self.books.ledger, pid)
    }

    /// The maps of every process traced and alive, read again (after each report).
    pub fn refresh_live(&mut self, src: &mut dyn Source) -> Result<()> {
        let pids = if self.multi() {
            self.intake.known.procs.live()
        } else {
            vec![self.head.pid]
        };
        for pid in pids {
            self.refresh_maps(src, pid)?;
        }
        Ok(())
    }

    /// Applies a fact a recording holds (replay).
    pub fn apply(&mut self, fact: Fact) {
        self.intake.known.apply(&mut self.books.ledger, fact);
    }

    /// Takes in a batch of events (see [`Intake::ingest`]).
    pub fn ingest(&mut self, src: &mut dyn Source, events: &[Event]) -> Result<()> {
        self.intake.ingest(src, &mut self.books.ledger, events)
    }

    /// Processes that exec'd since the last call (the live tracer probes their new allocator).
    pub fn take_execs(&mut self) -> Vec<u32> {
        self.intake.take_execs()
    }

    /// Tracing several processes (system-wide, or several pids): reports get a process level.
    pub fn multi(&self) -> bool {
        self.intake.known.procs.multi()
    }

    /// After the traced process exec'd (one-process runs): read its new name and allocator.
    pub fn learn_after_exec(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        self.intake
            .learn_after_exec(src, &mut self.books.ledger, pid)
    }

    /// A known process learned something new (its allocator): read it again.
    pub fn relearn(&mut self, src: &mut dyn Source, pid: u32) -> Result<()> {
        self.intake.relearn(src, &mut self.books.ledger, pid)
    }

    /// Processes seen and not known to have exited.
    pub fn live_processes(&self) -> Vec<u32> {
        self.intake.known.procs.live()
    }

    /// A process exited: its last numbers go in the next report, then its books are closed.
    pub fn process_exited(&mut self, pid: u32) -> Result<()> {
        self.intake.process_exited(&mut self.books.ledger, pid)
    }

    /// Re-reads the names of processes whose events --comm drops.
    pub fn recheck_names(&mut self, src: &mut dyn Source) -> Result<()> {
        self.intake.recheck_names(src, &mut self.books.ledger)
    }

    /// The events lost so far per process, as the kernel counts them: from now on a loss
    /// makes only its own process's verdicts uncertain. Recorded when they change.
    pub fn set_process_losses(&mut self, lost: BTreeMap<u32, u64>) -> Result<()> {
        if self.books.set_process_losses(lost.clone()) {
            self.intake.tap.losses(&lost)?;
        }
        Ok(())
    }

    /// The processes [`Engine::scan_reach`] scans: the traced ones, when there are at most
    /// [`SCAN_PROCESSES`].
    pub fn scan_targets(&self) -> Vec<u32> {
        let pids = if self.multi() {
            self.intake.known.procs.live()
        } else {
            vec![self.head.pid]
        };
        if pids.len() > SCAN_PROCESSES {
            return Vec::new();
        }
        pids
    }

    /// Scans the memory of the traced processes (at most [`SCAN_PROCESSES`] of them) for who
    /// holds their live blocks; what is found is recorded, so a replay shows the same.
    /// `known`: what tracer knows of their blocks (see `reach::Known`).
    pub fn scan_reach(&mut self, src: &mut dyn Source, known: crate::reach::Known) -> Result<()> {
        for pid in self.scan_targets() {
            let ledger = &self.books.ledger;
            let blocks: Vec<(u64, Owned)> = ledger
                .live_blocks(pid)
                .filter(|(_, b)| !ledger.site(b.site).mapping)
                .map(|(addr, b)| {
                    (
                        addr,
                        Owned {
                            site: b.site,
                            size: b.size,
                            weight: b.weight.max(1),
                        },
                    )
                })
                .collect();
            if blocks.is_empty() {
                continue;
            }
            if let Some(scan) = src.scan(pid, &blocks, known) {
                self.intake
                    .tell(&mut self.books.ledger, Fact::Reach { pid, scan })?;
            }
        }
        Ok(())
    }

    /// A drain point, `t_ns` after the start: makes the interval report when one is due.
    /// The scans taken since the last drain point are told in the reports made at this one
    /// (a mark's, and an interval report when due), then dropped: a later report would show
    /// memory as it no longer is.
    pub fn tick(&mut self, t_ns: u64, c: &Counters) -> Result<Flow> {
        let flow = self.interval(t_ns, c);
        self.intake.known.scans.clear();
        self.intake.known.scan_stats.clear();
        flow
    }

    fn interval(&mut self, t_ns: u64, c: &Counters) -> Result<Flow> {
        self.read_unwind()?;
        self.intake.tap.tick(t_ns, c)?;
        if t_ns < self.next_report_ns {
            return Ok(Flow::Continue);
        }
        let interval_ns = self.opts.interval.as_nanos().max(1) as u64;
        while self.next_report_ns <= t_ns {
            self.next_report_ns += interval_ns;
        }
        let (snap, (base, base_ns)) = self.books.interval(t_ns, c, self.opts.since_attach);
        let mut r =
            self.builder()
                .report(ReportKind::Interval, &snap, &base, t_ns - base_ns, c, None);
        self.by_class(&mut r);
        let flow = self.emit(&mut r)?;
        if self.opts.flame.as_ref().is_some_and(|f| f.every) {
            self.write_flame_or_warn(t_ns);
        }
        // Exited processes had their last line in this report.
        let gone = self.intake.known.procs.gone();
        if !gone.is_empty() {
            // Their outstanding blocks, kept for the final report.
            let none = Default::default();
            let fin = self
                .builder()
                .report(ReportKind::Final, &snap, &none, t_ns, c, Some(&gone));
            self.exited_reports
                .extend(fin.processes.into_iter().filter(|p| gone.contains(&p.pid)));
            self.exited_omitted +=
                build::keep_exited(&mut self.exited_reports, self.opts.keep_exited);
        }
        self.books.retire(&gone);
        for pid in gone {
            self.intake.known.retire(pid);
        }
        Ok(flow)
    }

    /// A mark: reports what changed since the previous mark (or the start).
    pub fn mark(&mut self, t_ns: u64, c: &Counters) -> Result<Flow> {
        self.read_unwind()?;
        self.intake.tap.mark(t_ns, c)?;
        let (n, snap, (base, base_ns)) = self.books.mark(t_ns);
        let mut r = self
            .builder()
            .report(ReportKind::Mark, &snap, &base, t_ns - base_ns, c, None);
        r.mark = Some(n);
        self.by_class(&mut r);
        let flow = self.emit(&mut r)?;
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
        self.read_unwind()?;
        self.intake.tap.end(t_ns, c, exit_code)?;
        let snap = self.books.end(t_ns, c, exit_code.is_some());
        let none = Default::default();
        let mut r = self
            .builder()
            .report(ReportKind::Final, &snap, &none, t_ns, c, None);
        r.exit_code = exit_code;
        self.by_class(&mut r);
        // Processes that exited since the last report (their numbers are in this one's
        // totals already) join those that exited before, under the same `--keep-exited`.
        let (exited_now, live): (Vec<ProcessReport>, Vec<ProcessReport>) =
            std::mem::take(&mut r.processes)
                .into_iter()
                .partition(|p| p.exited);
        r.processes = live;
        if self.multi() {
            build::add_exited(&mut r, &self.exited_reports, &self.selection);
            self.exited_reports.extend(exited_now);
            self.exited_omitted +=
                build::keep_exited(&mut self.exited_reports, self.opts.keep_exited);
            r.processes.extend(self.exited_reports.iter().cloned());
            r.processes
                .sort_by_key(|p| std::cmp::Reverse(p.totals.live_bytes));
        }
        r.exited_omitted = self.exited_omitted;
        self.emit(&mut r)?;
        self.write_flame(t_ns)
    }

    /// What a report is built from, as it stands.
    fn builder(&mut self) -> Builder<'_> {
        Builder {
            books: &self.books,
            procs: &self.intake.known.procs,
            opts: &self.selection,
            start_mono_ns: self.head.start_mono_ns,
            sample_rate: self.head.sample_rate,
            symbols: &mut self.intake.known.symbolizer,
            scans: &self.intake.known.scans,
            scan_stats: &self.intake.known.scan_stats,
        }
    }

    /// The flame data of `what` at `t_ns` (see [`flame::What`]).
    pub fn flame_profile(&mut self, what: What, t_ns: u64) -> flame::Profile {
        let start = self.head.start_unix_ns;
        flame::profile::profile(&mut self.builder(), what, t_ns, start)
    }

    /// A flame file rewritten during the run that cannot be written (a full disk): said on
    /// stderr and in the next report; tracing goes on, and the final write tries again.
    fn write_flame_or_warn(&mut self, t_ns: u64) {
        if let Err(e) = self.write_flame(t_ns) {
            let why = format!("{e:#}; tracing goes on");
            eprintln!("tracer: warning: {why}");
            self.warnings.push(why);
        }
    }

    /// Writes the flame files when they were asked for.
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

    /// `--by class`: the report's class rows, from the scans it tells (every site's, listed or
    /// not), each with its change since the last report of the same kind (the final report:
    /// since nothing). No scan, no rows.
    fn by_class(&mut self, r: &mut Report) {
        if !self.opts.by_class || self.intake.known.scans.is_empty() {
            return;
        }
        let mut now: BTreeMap<Option<String>, (u64, u64)> = BTreeMap::new();
        for scans in self.intake.known.scans.values() {
            for s in scans.values() {
                let (mut objects, mut bytes) = s
                    .reach
                    .counts()
                    .iter()
                    .fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                for t in &s.types {
                    let e = now.entry(Some(t.name.clone())).or_default();
                    e.0 += t.objects;
                    e.1 += t.bytes;
                    objects = objects.saturating_sub(t.objects);
                    bytes = bytes.saturating_sub(t.bytes);
                }
                let e = now.entry(None).or_default();
                e.0 += objects;
                e.1 += bytes;
            }
        }
        let empty = BTreeMap::new();
        let before = match r.kind {
            ReportKind::Final => &empty,
            k => self.classes_at.get(&k).unwrap_or(&empty),
        };
        let names: std::collections::BTreeSet<&Option<String>> =
            now.keys().chain(before.keys()).collect();
        let mut rows: Vec<ClassRow> = names
            .into_iter()
            .map(|name| {
                let (o, b) = now.get(name).copied().unwrap_or_default();
                let (o0, b0) = before.get(name).copied().unwrap_or_default();
                ClassRow {
                    name: name.clone(),
                    objects: o,
                    bytes: b,
                    delta_objects: o as i64 - o0 as i64,
                    delta_bytes: b as i64 - b0 as i64,
                }
            })
            .filter(|c| c.objects > 0 || c.delta_objects != 0)
            .collect();
        // Named classes by objects, the unnamed row last.
        rows.sort_by(|a, b| {
            (a.name.is_none(), std::cmp::Reverse(a.objects), &a.name).cmp(&(
                b.name.is_none(),
                std::cmp::Reverse(b.objects),
                &b.name,
            ))
        });
        r.classes = rows;
        self.classes_at.insert(r.kind, now);
    }

    /// Writes a report with the output failures not yet told in one (see
    /// `Report::warnings`); Quit when stdout is gone.
    fn emit(&mut self, r: &mut Report) -> Result<Flow> {
        if let Some(why) = self.intake.tap.failure() {
            if !self.recording_failure_told {
                self.recording_failure_told = true;
                self.warnings.push(why.to_string());
            }
        }
        r.warnings = std::mem::take(&mut self.warnings);
        r.unwind = self.unwind.clone();
        for sink in &mut self.sinks {
            sink(r);
        }
        self.writer.write(r)
    }

    /// The interval and mark reports go to the sinks only (the live view); the output gets
    /// the final one.
    pub fn show_only_final(&mut self) {
        self.writer.final_only();
    }

    /// Each report goes to `sink` too, as it is written.
    pub fn publish_to(&mut self, sink: Sink) {
        self.sinks.push(sink);
    }
}

/// Nanoseconds in a duration, saturating.
pub fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
