//! The live run: attach, then the live loop: drain the ring buffer's batches into the
//! pipeline ([`Engine`]), make a report when one is due or asked for, stop at the end.
//!
//! Setting up (what to probe, attaching, the banner) is `setup`; probing the allocators of
//! processes met on the way is `probe`; what is read of processes is `procs::live`.
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    collector::{
        ebpf::EbpfCollector,
        launch::{self, ExitStatus},
        stream::{Batch, Stream},
    },
    config::{Config, Mode},
    engine::{ns, Engine, Flow},
    procs::live::{alive, Live},
    procs::watch::MapWatch,
    replay, signals,
};

mod probe;
mod setup;

use probe::{Ctx, Prober};

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
    /// The kernel's events, in batches, from the ring buffer's reader thread.
    stream: Stream,
    live: Live,
    prober: Prober,
    engine: Engine,
    /// The launched command, if any.
    launched: Option<u32>,
    /// The launched command's exit, while followed children still run.
    launched_status: Option<ExitStatus>,
    /// Processes forked by the target (and theirs) that are still alive (--follow-children).
    followed: Vec<u32>,
    /// The processes asked for (none: every process).
    targets: Vec<u32>,
    start: Instant,
    duration: Option<Duration>,
    marks_handled: u32,
}

enum End {
    Exited(Option<ExitStatus>),
    Stopped,
}

impl Session {
    async fn run(&mut self, launched: Option<u32>) -> Result<i32> {
        let deadline = self.duration.map(|d| self.start + d);
        let end = loop {
            let next_report = self.start + Duration::from_nanos(self.engine.next_report_ns());
            let mut wake = next_report;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(DRAIN_PERIOD);
            if let Some(b) = self.stream.next(wait).await {
                self.ingest(b)?;
                while let Some(b) = self.stream.try_next() {
                    self.ingest(b)?;
                }
            }
            let stops = signals::stop_requests();
            // A launched command gets the signal too; wait for it unless asked twice.
            if stops > 1 || (stops == 1 && launched.is_none()) {
                break End::Stopped;
            }
            self.forget_gone();
            if let Some(child) = launched {
                if self.launched_status.is_none() {
                    self.launched_status = launch::try_wait(child);
                }
                if self.launched_status.is_some() && self.followed.is_empty() {
                    break End::Exited(self.launched_status);
                }
            } else if !self.targets.is_empty()
                && !self.targets.iter().any(|&p| alive(p))
                && self.followed.is_empty()
            {
                break End::Exited(None);
            }
            if self.engine.multi() {
                for pid in self.engine.live_processes() {
                    if !alive(pid) {
                        self.engine.process_exited(pid)?;
                    }
                }
                self.engine.recheck_names(&mut self.live)?;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break End::Stopped;
            }
            let marks = signals::mark_requests();
            let due = marks != self.marks_handled
                || ns(self.start.elapsed()) >= self.engine.next_report_ns();
            if due {
                // A report holds every event the kernel sent before it.
                self.flush().await?;
            }
            let t_ns = ns(self.start.elapsed());
            let c = self.collector.counters();
            // Read per process only when a report will use them (a table of up to 8,192).
            if due {
                self.engine
                    .set_process_losses(self.collector.lost_by_pid())?;
            }
            let mut flow = Flow::Continue;
            if marks != self.marks_handled {
                self.marks_handled = marks;
                flow = self.engine.mark(t_ns, &c)?;
            }
            if flow == Flow::Continue {
                let reports = t_ns >= self.engine.next_report_ns();
                flow = self.engine.tick(t_ns, &c)?;
                if reports {
                    // Libraries loaded since: their frames are named while the process lives.
                    self.engine.refresh_live(&mut self.live)?;
                }
            }
            // Nobody reads the reports any more (`tracer -- cmd | head`). A launched command
            // is never left running without tracer: tracing goes on without reports until it
            // ends, the other outputs (--record, --flame) are still written, and tracer exits
            // with its status. Otherwise there is nothing to wait for.
            if flow == Flow::Quit && launched.is_none() {
                return Ok(0);
            }
        };
        // Whatever the kernel still holds belongs in the final report, and so does which
        // processes have exited.
        self.flush().await?;
        if self.engine.multi() {
            for pid in self.engine.live_processes() {
                if !alive(pid) {
                    self.engine.process_exited(pid)?;
                }
            }
        }
        let exit = match end {
            End::Exited(status) => status,
            End::Stopped => None,
        };
        let c = self.collector.counters();
        self.engine
            .set_process_losses(self.collector.lost_by_pid())?;
        self.engine
            .finish(ns(self.start.elapsed()), &c, exit.map(ExitStatus::code))?;
        Ok(match exit {
            Some(s) => s.code(),
            None => 0,
        })
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
    async fn flush(&mut self) -> Result<()> {
        for b in self.stream.flush().await {
            self.ingest(b)?;
        }
        Ok(())
    }

    fn ingest(&mut self, mut batch: Batch) -> Result<()> {
        for ev in &batch.events {
            if let crate::collector::Event::Fork { pid, .. } = *ev {
                self.followed.push(pid);
            }
        }
        self.live.take(&mut batch);
        let r = self.engine.ingest(&mut self.live, &batch.events);
        self.live.taken();
        r?;
        let mut cx = Ctx {
            collector: &mut self.collector,
            live: &mut self.live,
            engine: &mut self.engine,
        };
        self.prober.retry(&mut cx)?;
        for pid in cx.engine.take_execs() {
            // With several --pid the kernel reports every exec (its pid filter is off; the
            // probes are scoped per process): only the targets' matter.
            if !self.prober.scope_all && !self.targets.contains(&pid) && Some(pid) != self.launched
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
