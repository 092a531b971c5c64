//! `tracer replay FILE`: the pipeline run again from a recording, with no kernel and no root.
//!
//! A recording holds what the live intake learned, in order (memory maps, processes, stacks,
//! the events it kept) and the drain points, marks and end. Replaying applies the facts to the
//! same books and makes the same reports at the same points; nothing is read from the world
//! but the files the maps name (checked against their recorded build ids).
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Result};

use crate::{
    collector::Counters,
    config::ReportOptions,
    engine::{Engine, Fact, Flow},
    procs::ProcInfo,
    record::{Frame, Reader, RecordedMapping},
    symbolize::{self, Mapping},
};

pub fn run(file: &Path, opts: ReportOptions) -> Result<i32> {
    run_to(file, opts, Box::new(std::io::stdout()))
}

/// Replays `file`, writing the reports to `out`.
pub fn run_to(file: &Path, opts: ReportOptions, out: Box<dyn std::io::Write>) -> Result<i32> {
    let shown = file.display();
    let mut reader = Reader::open(file)?;
    let corrupt = |e| anyhow!("the recording {shown} is corrupt at {e}");
    let head = match reader.next_frame().map_err(corrupt)? {
        Some(Frame::Header(h)) => h,
        Some(_) => {
            bail!("the recording {shown} is corrupt at byte 12: it does not begin with its header")
        }
        None => bail!(
            "the recording {shown} is empty (the tracer that wrote it stopped before it began)"
        ),
    };
    let mut engine = Engine::new(opts, head, None, out);
    let mut files = Files::default();
    let mut last = (0u64, Counters::default());
    loop {
        let at = reader.offset();
        let frame = reader.next_frame().map_err(corrupt)?;
        let flow = match frame {
            None => break,
            Some(Frame::Header(_)) => {
                bail!("the recording {shown} is corrupt at byte {at}: a second header")
            }
            Some(Frame::Maps { pid, maps }) => {
                let maps = maps.into_iter().map(|m| files.check(m)).collect();
                engine.apply(Fact::Maps { pid, maps });
                Flow::Continue
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
                Flow::Continue
            }
            Some(Frame::Stack {
                pid,
                stack_id,
                addrs,
            }) => {
                engine.apply(Fact::Stack {
                    pid,
                    stack_id,
                    addrs,
                });
                Flow::Continue
            }
            Some(Frame::Events(evs)) => {
                engine.apply(Fact::Events(&evs));
                Flow::Continue
            }
            Some(Frame::Losses(lost)) => {
                engine.set_process_losses(lost.into_iter().collect())?;
                Flow::Continue
            }
            Some(Frame::Tick { t_ns, counters }) => {
                last = (t_ns, counters);
                engine.tick(t_ns, &counters)?
            }
            Some(Frame::Mark { t_ns, counters }) => {
                last = (t_ns, counters);
                engine.mark(t_ns, &counters)?
            }
            Some(Frame::End {
                t_ns,
                counters,
                exit_code,
            }) => {
                engine.finish(t_ns, &counters, exit_code)?;
                return Ok(0);
            }
        };
        if flow == Flow::Quit {
            return Ok(0);
        }
    }
    eprintln!(
        "tracer: warning: the recording {shown} ends without its final frame (was the tracer killed?); \
         the final report stands at its last drain, {:.1}s in",
        last.0 as f64 / 1e9
    );
    engine.finish(last.0, &last.1, None)?;
    Ok(0)
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
