//! Validated settings: every check on the flags happens here, before any work starts.
use std::{ffi::OsString, path::PathBuf, time::Duration};

use anyhow::{bail, Result};

use crate::{
    aggregate::verdict::VerdictParams,
    aggregate::verdict::Warmup,
    cli::{Cli, ReportArgs, Sub},
    collector::launch::{resolve_program, RunAs},
    flame,
    report::{build::Selection, Format, SortKey},
};

#[derive(Debug, Clone)]
pub enum Target {
    /// Attach to running processes.
    Pids(Vec<u32>),
    /// Every process that allocates through the system's C library, including those started
    /// later.
    All,
    /// The processes of this command name (--comm): those running now, those that exec a
    /// program of that name later and the children they fork. Each is probed on its own, so
    /// no other process pays for them.
    Named(String),
    /// Start this program (already resolved through PATH) with these arguments.
    Launch {
        program: PathBuf,
        argv: Vec<OsString>,
        /// Run it as this user (--user).
        user: Option<RunAs>,
    },
}

/// What to do: trace live, or replay a recording. (One per run: the variants' sizes do not
/// matter.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Mode {
    Trace(TraceOptions),
    Replay(PathBuf),
}

/// Settings of live tracing (the collector's side).
#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub target: Target,
    /// Follow the target's forks (--follow-children).
    pub follow_children: bool,
    /// Trace anonymous memory mappings (not --no-mmap).
    pub trace_maps: bool,
    pub duration: Option<Duration>,
    pub ring_size: u32,
    pub min_size: u64,
    pub max_size: u64,
    /// How stacks are walked (`tracer_common::unwind_mode`), and the room for table rows.
    pub unwind_mode: u32,
    pub unwind_rows: u32,
    /// Where tables are kept between runs (--unwind-cache; None: `none`).
    pub unwind_cache: Option<PathBuf>,
    /// Mean bytes between sampled allocations (0: every call).
    pub sample_rate: u64,
    pub record: Option<PathBuf>,
    /// Where to serve /metrics (--metrics).
    pub metrics: Option<std::net::SocketAddr>,
    /// Scan for who holds what at every interval report too (--reachability).
    pub scan_each_report: bool,
    /// Hold each process still for its scans (--stop-for-scan).
    pub stop_for_scan: bool,
}

/// Sites an interval report holds for the live view, which sorts and filters them itself.
const LIVE_TOP: usize = 100;

/// Settings of the reports (the pipeline above the collector), the same live and in replay.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub interval: Duration,
    pub top: usize,
    pub format: Format,
    pub sort: SortKey,
    pub site: Option<regex_lite::Regex>,
    pub warmup: Warmup,
    pub older_than: Option<Duration>,
    pub since_attach: bool,
    /// Group the reports by C++ class too (--by class).
    pub by_class: bool,
    pub verdict: VerdictParams,
    pub flame: Option<FlameOptions>,
    /// Only processes with this command name.
    pub comm: Option<String>,
    /// Exited processes whose summaries the final report keeps.
    pub keep_exited: usize,
    /// Live processes a several-process report lists.
    pub processes: usize,
    /// Interval and mark reports go to the live view (--live), the final one to the output.
    pub live: bool,
}

impl ReportOptions {
    /// What of these options the report builder uses.
    pub fn selection(&self) -> Selection {
        Selection {
            top: self.top,
            interval_top: if self.live {
                self.top.max(LIVE_TOP)
            } else {
                self.top
            },
            sort: self.sort,
            site: self.site.clone(),
            older_than: self.older_than,
            processes: self.processes,
        }
    }
}

/// Where and what flame data to write.
#[derive(Debug, Clone)]
pub struct FlameOptions {
    /// Each file with its format.
    pub files: Vec<(PathBuf, flame::Format)>,
    pub what: flame::What,
    pub every: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub report: ReportOptions,
}

impl Config {
    /// The configuration a command line (program name first) asks for.
    #[cfg(test)]
    pub fn from_argv(argv: &[&str]) -> Result<Config> {
        use clap::Parser;
        Config::from_cli(Cli::try_parse_from(argv)?)
    }

    pub fn from_cli(cli: Cli) -> Result<Config> {
        if let Some(Sub::Replay { file, report }) = cli.sub {
            return Ok(Config {
                mode: Mode::Replay(file),
                report: ReportOptions::from_args(report)?,
            });
        }
        let report = ReportOptions::from_args(cli.report)?;
        if let Some(file) = cli.replay {
            return Ok(Config {
                mode: Mode::Replay(file),
                report,
            });
        }
        let target = match (cli.pid.is_empty(), cli.command.is_empty()) {
            (false, false) => {
                bail!("give either --pid PID or a command after `--`, not both")
            }
            (false, true) => {
                let mut pids = cli.pid;
                pids.sort_unstable();
                pids.dedup();
                Target::Pids(pids)
            }
            (true, false) => {
                let program = resolve_program(&cli.command[0])?;
                let user = cli.user.as_deref().map(RunAs::lookup).transpose()?;
                Target::Launch {
                    program,
                    argv: cli.command,
                    user,
                }
            }
            (true, true) => match &report.comm {
                Some(name) => Target::Named(name.clone()),
                None => Target::All,
            },
        };
        if cli.user.is_some() && !matches!(&target, Target::Launch { .. }) {
            bail!("--user runs a launched command as that user: give the command after `--`");
        }
        if cli.follow_children
            && !matches!(&target, Target::Launch { .. })
            && !matches!(&target, Target::Pids(p) if p.len() == 1)
        {
            bail!("--follow-children follows one process's children: give a command after `--` or one --pid");
        }
        if report.comm.is_some() && !matches!(target, Target::Named(_)) {
            bail!("--comm filters the processes of system-wide tracing: use it without --pid or a command");
        }
        // Outputs that cannot be written are said now, not after the whole trace.
        if let Some(r) = &cli.record {
            crate::output::check_writable(r, "--record")?;
        }
        for (f, _) in report.flame.iter().flat_map(|f| &f.files) {
            crate::output::check_writable(f, "--flame")?;
        }
        let min_size = cli.min_size.unwrap_or(0);
        let max_size = cli.max_size.unwrap_or(u64::MAX);
        if min_size > max_size {
            bail!("--min-size ({min_size}) is above --max-size ({max_size}): nothing would be recorded");
        }
        Ok(Config {
            mode: Mode::Trace(TraceOptions {
                target,
                follow_children: cli.follow_children,
                trace_maps: !cli.no_mmap,
                duration: cli.duration.map(Duration::from_secs_f64),
                ring_size: cli.ring_size,
                min_size,
                max_size,
                sample_rate: cli.sample_rate,
                unwind_mode: cli.unwind.mode(),
                unwind_rows: cli.unwind_rows,
                unwind_cache: (cli.unwind_cache.as_os_str() != "none").then_some(cli.unwind_cache),
                record: cli.record,
                metrics: cli.metrics,
                scan_each_report: cli.reachability || report.by_class,
                stop_for_scan: cli.stop_for_scan,
            }),
            report,
        })
    }
}

impl ReportOptions {
    pub fn from_args(a: ReportArgs) -> Result<ReportOptions> {
        if a.top == 0 {
            bail!("--top must be at least 1");
        }
        let site = match &a.site {
            Some(re) => Some(regex_lite::Regex::new(re).map_err(|e| {
                anyhow::anyhow!("--site '{re}' is not a valid regular expression: {e}")
            })?),
            None => None,
        };
        if a.flame.is_empty() && (a.flame_format.is_some() || a.flame_every) {
            bail!("--flame-format and --flame-every need --flame PATH");
        }
        if a.flame.len() > 1 && a.flame_format.is_some() {
            bail!("--flame-format applies to one --flame file; with several, each name's extension says its format");
        }
        let flame = if a.flame.is_empty() {
            None
        } else {
            let mut files = Vec::new();
            for path in a.flame {
                let format = match a.flame_format {
                    Some(f) => f.into(),
                    None => flame::Format::from_path(&path)?,
                };
                files.push((path, format));
            }
            Some(FlameOptions {
                files,
                what: a.flame_what.into(),
                every: a.flame_every,
            })
        };
        if let Some(c) = &a.comm {
            if c.is_empty() || c.len() > 15 {
                bail!("--comm '{c}': a command name is 1 to 15 characters (the kernel's comm)");
            }
        }
        Ok(ReportOptions {
            keep_exited: a.keep_exited,
            processes: a.processes as usize,
            comm: a.comm,
            flame,
            interval: Duration::from_secs_f64(a.interval),
            top: a.top,
            live: a.live,
            format: a.format.into(),
            sort: a.sort.into(),
            site,
            warmup: a.warmup,
            older_than: a.older_than.map(Duration::from_secs_f64),
            since_attach: a.since_attach,
            by_class: a.by.is_some(),
            verdict: VerdictParams {
                window: a.verdict_window as usize,
                min_intervals: a.min_intervals as usize,
                leak_fraction: a.leak_fraction,
                // Set from the recording's sampling rate.
                min_sampled_blocks: 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cfg(args: &[&str]) -> Result<Config> {
        Config::from_cli(Cli::try_parse_from(args).unwrap())
    }

    #[test]
    fn no_target_traces_every_process_or_those_of_a_name() {
        let c = cfg(&["tracer"]).unwrap();
        assert!(matches!(
            c.mode,
            Mode::Trace(TraceOptions {
                target: Target::All,
                ..
            })
        ));
        let c = cfg(&["tracer", "--comm", "leaky"]).unwrap();
        assert!(matches!(
            c.mode,
            Mode::Trace(TraceOptions {
                target: Target::Named(ref n),
                ..
            }) if n == "leaky"
        ));
        assert_eq!(c.report.comm.as_deref(), Some("leaky"));
        let e = cfg(&["tracer", "--pid", "1", "--comm", "x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--comm"), "{e}");
        assert!(cfg(&["tracer", "--comm", "a-name-longer-than-15"]).is_err());
    }

    #[test]
    fn follow_children_needs_one_target() {
        let c = cfg(&["tracer", "-f", "--", "true"]).unwrap();
        assert!(matches!(
            c.mode,
            Mode::Trace(TraceOptions {
                follow_children: true,
                ..
            })
        ));
        assert!(cfg(&["tracer", "--follow-children", "--pid", "1"]).is_ok());
        for bad in [
            &["tracer", "--follow-children"][..],
            &["tracer", "--follow-children", "--pid", "1,2"],
        ] {
            let e = cfg(bad).unwrap_err().to_string();
            assert!(e.contains("--follow-children"), "{e}");
        }
    }

    #[test]
    fn several_pids() {
        let c = cfg(&["tracer", "--pid", "3,1", "-p", "2", "--pid", "3"]).unwrap();
        match c.mode {
            Mode::Trace(TraceOptions {
                target: Target::Pids(p),
                ..
            }) => assert_eq!(p, [1, 2, 3]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pid_and_command_exclude_each_other() {
        assert!(cfg(&["tracer", "--pid", "1", "--", "true"]).is_err());
    }

    #[test]
    fn missing_program_is_named() {
        let e = cfg(&["tracer", "--", "/nonexistent/prog"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/prog"), "{e}");
        let e = cfg(&["tracer", "--", "no-such-command-here"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-command-here") && e.contains("PATH"),
            "{e}"
        );
    }

    #[test]
    fn program_is_found_in_path() {
        let c = cfg(&["tracer", "-i", "1", "--", "sh", "-c", "true"]).unwrap();
        match c.mode {
            Mode::Trace(TraceOptions {
                target: Target::Launch { program, argv, .. },
                ..
            }) => {
                assert!(program.ends_with("sh"));
                assert_eq!(argv.len(), 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_report_options_are_named() {
        let e = cfg(&["tracer", "--pid", "1", "--site", "(unclosed"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--site") && e.contains("(unclosed"), "{e}");
        let e = cfg(&[
            "tracer",
            "--pid",
            "1",
            "--min-size",
            "2K",
            "--max-size",
            "1K",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--min-size"), "{e}");
        let c = cfg(&["tracer", "replay", "x.rec", "--site", "leak_.*"]).unwrap();
        assert!(matches!(c.mode, Mode::Replay(_)));
        assert!(c.report.site.unwrap().is_match("leak_fixed"));
    }
}
