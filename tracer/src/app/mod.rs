//! The live run: attach, then the live feed of the one loop (`engine::drive`): drain the ring
//! buffer's batches into the pipeline ([`Engine`]), say each drain point, mark and the end.
//!
//! Setting up (what to probe, attaching, the banner) is `setup`; probing the allocators of
//! processes met on the way is `probe`; what is read of processes is `procs::live`.
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    collector::{
        ebpf::EbpfCollector,
        hold::{Phase, Watched},
        launch::ExitStatus,
        stream::{Batch, Stream},
    },
    config::{Config, Mode},
    engine::{
        drive::{drive, Feed, Moment},
        ns, Engine,
    },
    procs::live::{alive, Live},
    procs::watch::MapWatch,
    reach::{freeze::Stopped, Known},
    replay, signals,
};

mod probe;
mod setup;

use probe::{Ctx, Prober};

/// How long a launched command released at its exit may take to be gone.
const EXIT_LIMIT: Duration = Duration::from_secs(5);

/// How often the ring buffer is drained when the watermark wakeup does not come first.
const DRAIN_PERIOD: Duration = Duration::from_millis(100);

/// Runs what the configuration asks; returns the process exit code.
pub fn run(cfg: Config) -> Result<i32> {
    match cfg.mode {
        Mode::Trace(t) => setup::trace(t, cfg.report),
        Mode::Replay(file) => replay::run(&file, cfg.report),
    }
}

struct Session {
    collector: EbpfCollector,
    /// Reads maps into the early book as the kernel's notices come.
    _watch: Option<MapWatch>,
    /// Builds the unwind tables stacks need (stacks walked by tables only).
    _unwinder: Option<crate::unwind::Unwinder>,
    /// The kernel's events, in batches, from the ring buffer's reader thread.
    stream: Stream,
    live: Live,
    prober: Prober,
    /// The launched command, if any.
    launched: Option<u32>,
    /// The thread that waits for it, and holds its exit for the final report's scan.
    watched: Option<Watched>,
    /// Scan at every interval report too (--reachability).
    scan_each_report: bool,
    /// Hold each process still for its scans (--stop-for-scan).
    stop_for_scan: bool,
    /// The launched command's exit, while followed children still run.
    launched_status: Option<ExitStatus>,
    /// Processes forked by the target (and theirs) that are still alive (--follow-children).
    followed: Vec<u32>,
    /// The processes asked for (none: every process, or processes of a name).
    targets: Vec<u32>,
    /// Processes of a name (--comm): the kernel says which exec it or are forked by one;
    /// each is probed on its own.
    named: bool,
    start: Instant,
    deadline: Option<Instant>,
    marks_handled: u32,
    /// The drain point that follows a mark taken at the same moment.
    pending: Option<Moment>,
    /// How it ended: the launched command's status.
    exit: Option<ExitStatus>,
}

impl Feed for Session {
    /// One drain: the batches go in, processes that exited are told, and the moment is this
    /// drain point (after a mark when one was asked for), or the end.
    async fn next(&mut self, engine: &mut Engine) -> Result<Option<Moment>> {
        if let Some(m) = self.pending.take() {
            return Ok(Some(m));
        }
        let launched = self.launched;
        let ended = 'end: {
            let next_report = self.start + Duration::from_nanos(engine.next_report_ns());
            let mut wake = next_report;
            if let Some(d) = self.deadline {
                wake = wake.min(d);
            }
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(DRAIN_PERIOD);
            if let Some(b) = self.stream.next(wait).await {
                self.ingest(engine, b)?;
                while let Some(b) = self.stream.try_next() {
                    self.ingest(engine, b)?;
                }
            }
            let stops = signals::stop_requests();
            // A launched command gets the signal too; wait for it unless asked twice.
            if stops > 1 || (stops == 1 && launched.is_none()) {
                break 'end None;
            }
            self.forget_gone();
            if let Some(w) = &self.watched {
                if self.launched_status.is_none() {
                    self.launched_status = w.status();
                }
                if self.launched_status.is_some() {
                    if self.followed.is_empty() {
                        break 'end self.launched_status;
                    }
                    // Its children run on: its exit is not held for them.
                    w.release();
                }
            } else if !self.targets.is_empty()
                && !self.targets.iter().any(|&p| alive(p))
                && self.followed.is_empty()
            {
                break 'end None;
            }
            if engine.multi() {
                tell_exits(engine)?;
                engine.recheck_names(&mut self.live)?;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                break 'end None;
            }
            let marks = signals::mark_requests();
            let due =
                marks != self.marks_handled || ns(self.start.elapsed()) >= engine.next_report_ns();
            if due {
                // A report holds every event the kernel sent before it.
                self.flush(engine).await?;
                // Read per process only when a report will use them (a table of up to 8,192).
                engine.set_process_losses(self.collector.lost_by_pid())?;
            }
            let t_ns = ns(self.start.elapsed());
            let counters = self.collector.counters();
            let tick = Moment::Tick { t_ns, counters };
            // Who holds what, as a mark (or, with --reachability, an interval report) finds
            // it.
            if marks != self.marks_handled {
                self.marks_handled = marks;
                self.pending = Some(tick);
                self.scan(engine, false).await?;
                return Ok(Some(Moment::Mark { t_ns, counters }));
            }
            if due && self.scan_each_report {
                self.scan(engine, false).await?;
            }
            return Ok(Some(tick));
        };
        // Whatever the kernel still holds belongs in the final report, and so does which
        // processes have exited.
        self.flush(engine).await?;
        if engine.multi() {
            tell_exits(engine)?;
        }
        self.exit = ended;
        engine.set_process_losses(self.collector.lost_by_pid())?;
        // A process still alive (attached to, or at --duration), or a launched command held at
        // its exit, is scanned for who holds what it still has; then the exit goes on.
        let held = self
            .watched
            .as_ref()
            .is_some_and(|w| matches!(w.phase(), Phase::AtExit(_)));
        // Stopped at its exit, and every event from before it taken in just above.
        self.scan(engine, held && self.followed.is_empty()).await?;
        if let Some(w) = &self.watched {
            w.release();
            if ended.is_some() {
                // Its exit goes on: once it is gone, the books say it exited.
                w.wait_gone(EXIT_LIMIT);
                if engine.multi() {
                    tell_exits(engine)?;
                }
            }
        }
        Ok(Some(Moment::End {
            t_ns: ns(self.start.elapsed()),
            counters: self.collector.counters(),
            exit_code: ended.map(ExitStatus::code),
        }))
    }

    /// Libraries loaded since the last report: their frames are named while the process
    /// lives.
    fn reported(&mut self, engine: &mut Engine) -> Result<()> {
        engine.refresh_live(&mut self.live)
    }

    /// Nobody reads the reports any more (`tracer -- cmd | head`). A launched command is never
    /// left running without tracer: tracing goes on without reports until it ends, the other
    /// outputs (--record, --flame) are still written, and tracer exits with its status.
    /// Otherwise there is nothing to wait for.
    fn stop_unread(&self) -> bool {
        self.launched.is_none()
    }
}

impl Session {
    /// Runs the live feed through the engine; tracer's exit code.
    async fn run(&mut self, engine: &mut Engine) -> Result<i32> {
        drive(self, engine).await?;
        Ok(self.exit.map_or(0, ExitStatus::code))
    }

    /// Scans the traced processes for who holds what (see `reach`). `settled`: they stand
    /// still (held at exit) and every event is in. With --stop-for-scan each is held still
    /// for its scan (and its registers read), after the events from before the stop are in.
    async fn scan(&mut self, engine: &mut Engine, settled: bool) -> Result<()> {
        let known = Known {
            since_start: self.launched.is_some(),
            settled,
            ..Known::default()
        };
        if self.stop_for_scan && !settled {
            for pid in engine.scan_targets() {
                // A launched command is seized by the thread that holds its exit: that thread
                // stops it.
                let stopped = match &self.watched {
                    Some(w) if w.pid == pid => w.freeze(),
                    _ => Stopped::here(pid),
                };
                match stopped {
                    Ok(f) => {
                        self.live.frozen.insert(pid, f);
                    }
                    Err(e) => eprintln!(
                        "tracer: warning: cannot stop pid {pid} for the scan ({e}): scanned \
                         running"
                    ),
                }
            }
            self.flush(engine).await?;
        }
        let scanned = engine.scan_reach(&mut self.live, known);
        // Let go whatever happened.
        self.live.frozen.clear();
        scanned
    }

    /// Followed children that exited leave the kernel's table (their pids may be reused), and
    /// what was noted of processes at their exec goes once they are long gone.
    fn forget_gone(&mut self) {
        self.live.forget_gone(&self.targets);
        let collector = &mut self.collector;
        self.followed.retain(|&pid| {
            let keep = alive(pid);
            if !keep {
                collector.unfollow(pid);
            }
            keep
        });
    }

    /// Ingests everything the kernel holds now.
    async fn flush(&mut self, engine: &mut Engine) -> Result<()> {
        for b in self.stream.flush().await {
            self.ingest(engine, b)?;
        }
        Ok(())
    }

    fn ingest(&mut self, engine: &mut Engine, mut batch: Batch) -> Result<()> {
        let mut forked = Vec::new();
        for ev in &batch.events {
            if let crate::collector::Event::Fork { pid, .. } = *ev {
                self.followed.push(pid);
                forked.push(pid);
            }
        }
        self.live.take(&mut batch);
        let r = engine.ingest(&mut self.live, &batch.events);
        self.live.taken();
        r?;
        let mut cx = Ctx {
            collector: &mut self.collector,
            live: &mut self.live,
            engine,
        };
        self.prober.retry(&mut cx)?;
        if self.named {
            // A named process's child has its parent's probes in no way the kernel keeps for
            // it (they are scoped per process): its own go on now.
            for pid in forked {
                self.prober.running(&mut cx, pid)?;
            }
        }
        for pid in cx.engine.take_execs() {
            // With several --pid the kernel reports every exec (its pid filter is off; the
            // probes are scoped per process): only the targets' matter. Processes of a name:
            // the kernel reports only theirs.
            if !self.prober.scope_all
                && !self.named
                && !self.targets.contains(&pid)
                && Some(pid) != self.launched
            {
                continue;
            }
            self.prober.exec(&mut cx, pid)?;
            cx.engine.learn_after_exec(cx.live, pid)?;
            // Its new program's map, read now: a process that lives only milliseconds may be
            // gone before its first events are drained, and its program's frames can still
            // be named (libraries mapped later are read with its first new sites).
            cx.engine.refresh_maps(cx.live, pid)?;
        }
        Ok(())
    }
}

/// Tells the engine which of the processes it holds live have exited.
fn tell_exits(engine: &mut Engine) -> Result<()> {
    for pid in engine.live_processes() {
        if !alive(pid) {
            engine.process_exited(pid)?;
        }
    }
    Ok(())
}
