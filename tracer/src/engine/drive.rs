//! The one loop that drives the pipeline, live or from a recording.
//!
//! A [`Feed`] takes in whatever comes before the next moment that matters (a live run drains
//! the ring buffer, probes, learns processes; a replay applies the recorded facts) and says
//! which moment it is: a drain point, a mark, the end. [`drive`] makes the engine's report for
//! it. The live tracer and `tracer replay` run this same loop with the same moments, which is
//! why they print the same reports.
use std::future::Future;

use anyhow::Result;

use super::{Engine, Flow};
use crate::collector::Counters;

/// A moment the pipeline reports on, `t_ns` after the start, with the kernel's counters then.
#[derive(Clone, Copy, Debug)]
pub enum Moment {
    /// A drain point: the interval report when one is due.
    Tick { t_ns: u64, counters: Counters },
    /// A mark (Enter or SIGUSR1).
    Mark { t_ns: u64, counters: Counters },
    /// The end: the final report (`exit_code`: how a launched command ended).
    End {
        t_ns: u64,
        counters: Counters,
        exit_code: Option<i32>,
    },
}

/// Where the moments come from.
pub trait Feed {
    /// Takes in everything up to the next moment and returns it; None when the feed ended
    /// without its end (a recording cut short: the final report stands at the last moment).
    fn next(&mut self, engine: &mut Engine) -> impl Future<Output = Result<Option<Moment>>>;

    /// An interval report was made (the live world reads the processes' maps again).
    fn reported(&mut self, _engine: &mut Engine) -> Result<()> {
        Ok(())
    }

    /// Nobody reads the reports any more: whether to stop now. A launched command is never
    /// left running without tracer: the live feed goes on until it ends.
    fn stop_unread(&self) -> bool {
        true
    }
}

/// Runs `feed` through `engine` to the end.
pub async fn drive(feed: &mut impl Feed, engine: &mut Engine) -> Result<()> {
    let mut last = (0, Counters::default());
    loop {
        let Some(moment) = feed.next(engine).await? else {
            return engine.finish(last.0, &last.1, None);
        };
        let flow = match moment {
            Moment::Tick { t_ns, counters } => {
                last = (t_ns, counters);
                let reports = t_ns >= engine.next_report_ns();
                let flow = engine.tick(t_ns, &counters)?;
                if reports {
                    feed.reported(engine)?;
                }
                flow
            }
            Moment::Mark { t_ns, counters } => {
                last = (t_ns, counters);
                engine.mark(t_ns, &counters)?
            }
            Moment::End {
                t_ns,
                counters,
                exit_code,
            } => return engine.finish(t_ns, &counters, exit_code),
        };
        if flow == Flow::Quit && feed.stop_unread() {
            return Ok(());
        }
    }
}
