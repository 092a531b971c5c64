//! The run loop: attach, drain on a timer, report every interval, final report at the end.
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracer_common::counter;

use crate::{
    aggregate::{Ledger, Snapshot},
    cli::Format,
    collector::{
        ebpf::{EbpfCollector, KernelCounters, Settings},
        launch::{self, ExitStatus},
        target, Event,
    },
    config::{Config, Target},
    report::{self, EventCounts, LimitSettings, Report, ReportKind, SiteReport, Totals},
    signals,
    symbolize::Symbolizer,
};

/// How often the ring buffer is drained when the watermark wakeup does not come first.
const DRAIN_PERIOD: Duration = Duration::from_millis(100);

/// Runs the whole trace; returns the process exit code.
pub fn run(cfg: Config) -> Result<i32> {
    let (lib, held, program) = match &cfg.target {
        Target::Pid(pid) => (target::for_pid(*pid)?, None, None),
        Target::Launch { program, argv } => {
            let lib = target::for_program(program)?;
            // Forked before the runtime exists, so the child is a copy of a one-thread process.
            let child = launch::spawn_held(program, argv)?;
            (lib, Some(child), Some(program.clone()))
        }
    };
    let pid = match (&cfg.target, &held) {
        (Target::Pid(p), _) => *p,
        (_, Some(c)) => c.pid,
        _ => unreachable!("launch mode always has a child"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let settings = Settings {
            filter_pid: pid,
            ring_size: cfg.ring_size,
            stack_slots: cfg.stack_slots,
            stop_at_exit: held.is_some(),
        };
        let mut collector = EbpfCollector::load(&settings)?;
        let warnings = collector.attach(&lib, Some(pid))?;
        for w in warnings {
            eprintln!("tracer: note: {w}");
        }
        let launched = match (held, program) {
            (Some(child), Some(program)) => Some(child.release(&program)?),
            _ => None,
        };
        signals::install(launched);
        let command = comm(pid);
        eprintln!(
            "tracer: tracing pid {pid} ({command}): malloc and friends in {}; a report every {:.1}s{}",
            lib.path.display(),
            cfg.interval.as_secs_f64(),
            if launched.is_some() { "" } else { ", Ctrl-C for the final report" },
        );
        let mut session = Session {
            cfg: &cfg,
            pid,
            command,
            allocator: lib.path.display().to_string(),
            collector,
            ledger: Ledger::new(),
            symbolizer: Symbolizer::new(),
            start: Instant::now(),
            batch: Vec::with_capacity(4096),
            lost_reported: 0,
            exit_stops_handled: 0,
        };
        session.symbolizer.refresh(pid);
        session.run(launched).await
    })
}

struct Session<'a> {
    cfg: &'a Config,
    pid: u32,
    command: String,
    allocator: String,
    collector: EbpfCollector,
    ledger: Ledger,
    symbolizer: Symbolizer,
    start: Instant,
    batch: Vec<Event>,
    /// Losses already announced on stderr.
    lost_reported: u64,
    /// Stops at `exit()` already answered with SIGCONT.
    exit_stops_handled: u64,
}

enum End {
    Exited(Option<ExitStatus>),
    Stopped,
}

impl Session<'_> {
    async fn run(&mut self, launched: Option<u32>) -> Result<i32> {
        let mut prev = self.ledger.snapshot(0);
        let mut prev_at = self.start;
        let mut next_report = self.start + self.cfg.interval;
        let deadline = self.cfg.duration.map(|d| self.start + d);
        let end = loop {
            let now = Instant::now();
            let mut wake = next_report;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            self.collector
                .wait(wake.saturating_duration_since(now).min(DRAIN_PERIOD))
                .await;
            self.drain();
            let stops = signals::stop_requests();
            // A launched command gets the signal too; wait for it unless asked twice.
            if stops > 1 || (stops == 1 && launched.is_none()) {
                break End::Stopped;
            }
            if let Some(child) = launched {
                self.continue_from_exit(child);
                if let Some(status) = launch::try_wait(child) {
                    break End::Exited(Some(status));
                }
            } else if !alive(self.pid) {
                break End::Exited(None);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break End::Stopped;
            }
            if now >= next_report {
                let snap = self.ledger.snapshot(0);
                let r = self.interval_report(&snap, &prev, now.duration_since(prev_at));
                if !self.emit(&r)? {
                    return Ok(0);
                }
                prev = snap;
                prev_at = now;
                while next_report <= now {
                    next_report += self.cfg.interval;
                }
                self.symbolizer.refresh(self.pid);
            }
        };
        // Whatever the kernel still holds belongs in the final report.
        self.drain();
        let exit = match end {
            End::Exited(status) => status,
            End::Stopped => None,
        };
        let r = self.final_report(exit.map(ExitStatus::code));
        self.emit(&r)?;
        Ok(match exit {
            Some(s) => s.code(),
            None => 0,
        })
    }

    /// A launched command that entered `exit()` stopped itself (see `Settings::stop_at_exit`):
    /// read its memory map while it still has one, then let it finish.
    fn continue_from_exit(&mut self, child: u32) {
        let stops = self.collector.counters().get(counter::EXIT_STOPS);
        if stops > self.exit_stops_handled && state(child) == Some('T') {
            self.drain();
            self.symbolizer.refresh(child);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child as i32, libc::SIGCONT) };
            self.exit_stops_handled = stops;
        }
    }

    fn drain(&mut self) {
        let batch = &mut self.batch;
        self.collector.drain(|ev| batch.push(ev));
        let before = self.ledger.sites().len();
        for ev in self.batch.drain(..) {
            let collector = &self.collector;
            self.ledger.apply(&ev, |k| collector.stack(k.stack_id));
        }
        // New call sites: make sure their addresses are in the cached memory map while the
        // process still lives (a library loaded since the last look).
        let unknown = self.ledger.sites()[before..].iter().any(|s| {
            s.frames
                .iter()
                .any(|&a| !self.symbolizer.knows(self.pid, a))
        });
        if unknown {
            self.symbolizer.refresh(self.pid);
        }
    }

    fn counters(&self) -> (BTreeMapLost, EventCounts) {
        let k: KernelCounters = self.collector.counters();
        let mut lost = BTreeMapLost::new();
        lost.insert("ring_full_allocs", k.get(counter::RING_FULL_ALLOC));
        lost.insert("ring_full_frees", k.get(counter::RING_FULL_FREE));
        lost.insert("stack_collisions", k.get(counter::STACK_COLLISION));
        lost.insert("stack_failures", k.get(counter::STACK_FAILED));
        lost.insert("inflight_full", k.get(counter::INFLIGHT_FULL));
        lost.insert("memptr_faults", k.get(counter::MEMPTR_FAULT));
        lost.insert("bad_records", self.collector.bad_records);
        let st = self.ledger.stats;
        let events = EventCounts {
            allocs: k.get(counter::ALLOCS),
            frees: k.get(counter::FREES),
            received_allocs: st.alloc_events,
            received_frees: st.free_events,
            nested: k.get(counter::NESTED),
            failed: k.get(counter::FAILED),
            unknown_frees: st.unknown_frees,
        };
        (lost, events)
    }

    /// Symbolizes the rows, merges those whose stacks read the same (e.g. the copies of an
    /// unrolled loop's call), sorts them with `order` and keeps the top N.
    fn report(
        &mut self,
        kind: ReportKind,
        window: Duration,
        rows: Vec<SiteRow>,
        totals: Totals,
        order: fn(&SiteReport, &SiteReport) -> std::cmp::Ordering,
    ) -> Report {
        let (lost, events) = self.counters();
        let mut sites: Vec<SiteReport> = Vec::new();
        let mut index: std::collections::HashMap<Vec<String>, usize> = Default::default();
        for r in rows {
            let addrs = self.ledger.site(r.site).frames.clone();
            let frames = self.symbolizer.stack(self.pid, &addrs);
            let key: Vec<String> = frames.iter().map(source_key).collect();
            match index.get(&key) {
                Some(&i) => {
                    let s = &mut sites[i];
                    s.live_objects += r.live_objects;
                    s.live_bytes += r.live_bytes;
                    s.delta_objects += r.delta_objects;
                    s.delta_bytes += r.delta_bytes;
                    s.allocs += r.allocs;
                    s.frees += r.frees;
                }
                None => {
                    index.insert(key, sites.len());
                    sites.push(SiteReport {
                        frames,
                        live_objects: r.live_objects,
                        live_bytes: r.live_bytes,
                        delta_objects: r.delta_objects,
                        delta_bytes: r.delta_bytes,
                        allocs: r.allocs,
                        frees: r.frees,
                    });
                }
            }
        }
        sites.sort_by(order);
        let omitted = sites.len().saturating_sub(self.cfg.top);
        sites.truncate(self.cfg.top);
        Report {
            kind,
            elapsed_s: round3(self.start.elapsed().as_secs_f64()),
            window_s: round3(window.as_secs_f64()),
            pid: self.pid,
            command: self.command.clone(),
            allocator: self.allocator.clone(),
            lost,
            events,
            totals,
            sites,
            sites_omitted: omitted,
            exit_code: None,
        }
    }

    fn interval_report(&mut self, now: &Snapshot, prev: &Snapshot, window: Duration) -> Report {
        let t = self.ledger.totals();
        let mut totals = Totals {
            live_objects: t.live_objects,
            live_bytes: t.live_bytes,
            ..Totals::default()
        };
        let mut rows = Vec::new();
        for d in now.diff(prev) {
            totals.delta_objects += d.delta_objects;
            totals.delta_bytes += d.delta_bytes;
            totals.allocs += d.delta_allocs;
            totals.frees += d.delta_frees;
            if d.delta_bytes != 0 || d.delta_objects != 0 {
                rows.push(SiteRow {
                    site: d.site,
                    live_objects: d.now.live_objects,
                    live_bytes: d.now.live_bytes,
                    delta_objects: d.delta_objects,
                    delta_bytes: d.delta_bytes,
                    allocs: d.delta_allocs,
                    frees: d.delta_frees,
                });
            }
        }
        self.report(ReportKind::Interval, window, rows, totals, |a, b| {
            b.delta_bytes
                .cmp(&a.delta_bytes)
                .then(b.delta_objects.cmp(&a.delta_objects))
        })
    }

    fn final_report(&mut self, exit_code: Option<i32>) -> Report {
        let rows: Vec<SiteRow> = self
            .ledger
            .sites()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.counts.live_objects > 0)
            .map(|(i, s)| SiteRow {
                site: i,
                live_objects: s.counts.live_objects,
                live_bytes: s.counts.live_bytes,
                delta_objects: s.counts.live_objects as i64,
                delta_bytes: s.counts.live_bytes as i64,
                allocs: s.counts.allocs,
                frees: s.counts.frees,
            })
            .collect();
        let t = self.ledger.totals();
        let totals = Totals {
            live_objects: t.live_objects,
            live_bytes: t.live_bytes,
            delta_objects: t.live_objects as i64,
            delta_bytes: t.live_bytes as i64,
            allocs: t.allocs,
            frees: t.frees,
        };
        let mut r = self.report(
            ReportKind::Final,
            self.start.elapsed(),
            rows,
            totals,
            |a, b| {
                b.live_bytes
                    .cmp(&a.live_bytes)
                    .then(b.live_objects.cmp(&a.live_objects))
            },
        );
        r.exit_code = exit_code;
        r
    }

    /// Writes a report; false when stdout is gone (a closed pipe ends tracing quietly).
    fn emit(&mut self, r: &Report) -> Result<bool> {
        let limits = LimitSettings {
            ring_size: self.cfg.ring_size,
            stack_slots: self.cfg.stack_slots,
        };
        let lost_now: u64 = r.lost.values().sum();
        if lost_now > self.lost_reported {
            for h in report::lost_hints(&r.lost, limits) {
                eprintln!("tracer: warning: {h}");
            }
            self.lost_reported = lost_now;
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let res = match self.cfg.format {
            Format::Table => report::table::write(r, limits, &mut out),
            Format::Json => report::json::write(r, &mut out),
        };
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("cannot write the report"),
        }
    }
}

type BTreeMapLost = std::collections::BTreeMap<&'static str, u64>;

struct SiteRow {
    site: usize,
    live_objects: u64,
    live_bytes: u64,
    delta_objects: i64,
    delta_bytes: i64,
    allocs: u64,
    frees: u64,
}

/// What a frame reads as in source terms: two stacks with equal keys are one site to a reader.
fn source_key(f: &crate::symbolize::Frame) -> String {
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

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The process state letter from /proc/PID/stat (R, S, T, Z...), None when it is gone.
fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}
