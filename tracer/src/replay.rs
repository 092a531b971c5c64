//! `tracer replay FILE`: the pipeline run again from a recording, with no kernel and no root.
//!
//! A recording holds what the live intake learned, in order (memory maps, processes, stacks,
//! the events it kept) and the drain points, marks and end. Replaying applies the facts to the
//! same books and makes the same reports at the same points; nothing is read from the world
//! but the files the maps name (checked against their recorded build ids).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    config::ReportOptions,
    engine::{
        drive::{drive, Feed, Moment},
        Engine, Fact,
    },
    procs::ProcInfo,
    record::{Frame, Reader, RecordedMapping},
    report::LimitSettings,
    symbolize::{self, Mapping},
    tui::{self, Gate},
};

pub fn run(file: &Path, opts: ReportOptions) -> Result<i32> {
    run_to(file, opts, Box::new(std::io::stdout()))
}

/// Replays `file`, writing the reports to `out`.
pub fn run_to(file: &Path, opts: ReportOptions, out: Box<dyn std::io::Write>) -> Result<i32> {
    let shown = file.display().to_string();
    let mut reader = Reader::open(file)?;
    let head = match reader.next_frame().map_err(|e| corrupt(&shown, e))? {
        Some(Frame::Header(h)) => h,
        Some(_) => {
            bail!("the recording {shown} is corrupt at byte 12: it does not begin with its header")
        }
        None => bail!(
            "the recording {shown} is empty (the tracer that wrote it stopped before it began)"
        ),
    };
    let limits = LimitSettings {
        ring_size: head.ring_size,
    };
    let gate = Arc::new(Gate::default());
    let view = tui::start_if_asked(&opts, tui::Source::Replay, limits, {
        let gate = gate.clone();
        Box::new(move |a| gate.act(a))
    });
    let mut engine = Engine::new(opts, head, None, out);
    let gate = view.is_some().then_some(gate);
    if let Some(mut v) = view {
        engine.show_only_final();
        engine.publish_to(Box::new(move |r| v.show(r)));
    }
    let mut feed = Recording {
        reader,
        shown,
        files: Files::default(),
        last_ns: 0,
        gate,
    };
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the async runtime")?
        .block_on(drive(&mut feed, &mut engine))?;
    Ok(0)
}

fn corrupt(shown: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("the recording {shown} is corrupt at {e}")
}

/// A recording as a feed: its facts are applied, its drain points, marks and end are the
/// moments.
struct Recording {
    reader: Reader<std::io::BufReader<std::fs::File>>,
    shown: String,
    files: Files,
    /// The last moment read, in ns since the start.
    last_ns: u64,
    /// Shown live: each report waits for the view's step or play.
    gate: Option<Arc<Gate>>,
}

impl Feed for Recording {
    async fn next(&mut self, engine: &mut Engine) -> Result<Option<Moment>> {
        loop {
            let at = self.reader.offset();
            let frame = self
                .reader
                .next_frame()
                .map_err(|e| corrupt(&self.shown, e))?;
            match frame {
                None => {
                    eprintln!(
                        "tracer: warning: the recording {} ends without its final frame (was the \
                         tracer killed?); the final report stands at its last drain, {:.1}s in",
                        self.shown,
                        self.last_ns as f64 / 1e9
                    );
                    return Ok(None);
                }
                Some(Frame::Header(_)) => {
                    bail!(
                        "the recording {} is corrupt at byte {at}: a second header",
                        self.shown
                    )
                }
                Some(Frame::Maps { pid, maps }) => {
                    let maps = maps.into_iter().map(|m| self.files.check(m)).collect();
                    engine.apply(Fact::Maps { pid, maps });
                }
                Some(Frame::Process {
                    pid,
                    command,
                    allocator,
                    allocator_kind,
                    exited,
                }) => {
                    let info = ProcInfo {
                        command,
                        allocator,
                        allocator_kind,
                        exited,
                    };
                    engine.apply(Fact::Process { pid, info });
                }
                Some(Frame::Stack {
                    pid,
                    stack_id,
                    addrs,
                }) => engine.apply(Fact::Stack {
                    pid,
                    stack_id,
                    addrs,
                }),
                Some(Frame::Events(evs)) => engine.apply(Fact::Events(&evs)),
                Some(Frame::Reach { pid, scan }) => engine.apply(Fact::Reach { pid, scan }),
                Some(Frame::Unwind(summary)) => engine.set_unwind(summary),
                Some(Frame::Losses(lost)) => {
                    engine.set_process_losses(lost.into_iter().collect())?
                }
                Some(Frame::Tick { t_ns, counters }) => {
                    self.last_ns = t_ns;
                    if let Some(g) = self
                        .gate
                        .as_ref()
                        .filter(|_| t_ns >= engine.next_report_ns())
                    {
                        g.wait(t_ns);
                    }
                    return Ok(Some(Moment::Tick { t_ns, counters }));
                }
                Some(Frame::Mark { t_ns, counters }) => {
                    self.last_ns = t_ns;
                    if let Some(g) = &self.gate {
                        g.wait(t_ns);
                    }
                    return Ok(Some(Moment::Mark { t_ns, counters }));
                }
                Some(Frame::End {
                    t_ns,
                    counters,
                    exit_code,
                }) => {
                    return Ok(Some(Moment::End {
                        t_ns,
                        counters,
                        exit_code,
                    }))
                }
            }
        }
    }
}

/// Files named by recorded maps, checked once each against their recorded build id.
#[derive(Default)]
struct Files {
    ids: HashMap<PathBuf, Option<Vec<u8>>>,
}

impl Files {
    /// The mapping as the symbolizer should use it: a file whose build id changed since the
    /// recording is not read (its frames show as module+offset), with one warning.
    fn check(&mut self, m: RecordedMapping) -> Mapping {
        let usable = m.build_id.is_empty() || {
            let path = &m.path;
            let now =
                self.ids.entry(path.clone()).or_insert_with(|| {
                    let now = symbolize::build_id(path);
                    if now.as_deref() != Some(&m.build_id[..]) {
                        eprintln!(
                        "tracer: warning: {} is not the file that was recorded (its build id {}); \
                         its frames show as module+offset",
                        path.display(),
                        if now.is_some() { "differs" } else { "cannot be read" }
                    );
                    }
                    now
                });
            now.as_deref() == Some(&m.build_id[..])
        };
        Mapping {
            start: m.start,
            end: m.end,
            offset: m.offset,
            open_path: usable.then(|| m.path.clone()),
            path: m.path,
        }
    }
}
