//! Command-line flags as the user typed them (clap). `config` turns them into validated settings.
use std::{ffi::OsString, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    aggregate::verdict::Warmup,
    flame,
    report::{Format, SortKey},
};

/// Trace a process's memory allocations with eBPF and show what keeps growing: is there a
/// leak, what leaks, where.
///
/// Attach to a running process with --pid, start one with `tracer [OPTIONS] -- CMD ARGS...`
/// (probes are in place before its first allocation), or give neither to trace every process. Every interval, prints the growth per
/// call site; at the end (target exit, Ctrl-C, SIGTERM or --duration), what is still
/// outstanding. Needs root (CAP_BPF and CAP_PERFMON).
#[derive(Parser, Debug)]
#[command(
    name = "tracer",
    version,
    max_term_width = 100,
    args_override_self = true
)]
#[command(
    after_help = "Exit status: 0 success, 1 error (message on stderr), 2 bad usage.\n\
Marks: send SIGUSR1 to tracer (or press Enter when tracing with --pid from a terminal) to print \
what changed since the previous mark."
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,

    /// Attach to this running process; repeat it (or give a comma-separated list) for several.
    /// With neither --pid nor a command, every process is traced.
    #[arg(short = 'p', long, value_name = "PID", value_delimiter = ',', action = clap::ArgAction::Append,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,

    /// Follow the processes the target forks, and theirs, from their first instruction
    /// (with a launched command or one --pid). Each gets its own books; tracing ends when all
    /// of them have exited. Their allocator is probed for every process that maps it (filtered
    /// in the kernel), which costs other processes on the host a trap per call.
    #[arg(short = 'f', long)]
    pub follow_children: bool,

    /// Do not trace anonymous memory mappings (mmap, munmap, mremap made by the program
    /// itself rather than by its allocator). They are traced by fexit on the kernel's mmap,
    /// munmap and mremap functions, which no other system call pays for; where the kernel
    /// refuses those, by uprobes on the C library's wrappers in the traced processes; for a Go
    /// program or every process, by the sys_enter/sys_exit tracepoints, which cost every system
    /// call of every process on the host a BPF program (a note at start says so).
    #[arg(long)]
    pub no_mmap: bool,

    /// How user stacks are walked. `auto`: by each file's unwind table, built from its
    /// `.eh_frame` (whole stacks through code built without frame pointers), except in files
    /// that keep frame pointers, which are followed (cheaper); `dwarf`: by the tables
    /// everywhere; `fp`: by frame pointers only (cheapest; code without them cuts or garbles
    /// the stack). Tables are built on this machine from the files mapped, x86-64 only.
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub unwind: UnwindArg,

    /// Room for this many unwind-table rows, every file's together (8 bytes each, kernel
    /// memory; K/M suffixes). A file that finds no room is walked by frame pointers, and the
    /// report says so.
    #[arg(long, value_name = "ROWS", default_value = "4M", value_parser = parse_unwind_rows)]
    pub unwind_rows: u32,

    /// Where unwind tables are kept between runs, by each file's build id, so the next run
    /// starts warm; `none` keeps none. A directory anyone but root may write to (or whose
    /// parents are) is refused, with a note.
    #[arg(long, value_name = "DIR", default_value = "/var/cache/tracer")]
    pub unwind_cache: std::path::PathBuf,

    /// Stop after this many seconds and print the final report.
    #[arg(short, long, value_name = "SECS", value_parser = parse_secs, allow_negative_numbers = true)]
    pub duration: Option<f64>,

    /// Size of the kernel→user ring buffer (bytes; K/M/G suffixes): a power of two, at least one
    /// page. Raise it when the report counts events lost to a full ring.
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Record only allocations of at least this many bytes (filtered in the kernel: smaller
    /// calls cost less). K/M/G suffixes.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub min_size: Option<u64>,

    /// Record only allocations of at most this many bytes (filtered in the kernel).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_size: Option<u64>,

    /// Sample allocations by bytes: one every BYTES allocated on average (each call of size s
    /// is recorded with probability 1 - exp(-s/BYTES)), like heapprofd and Go's
    /// MemProfileRate. Reports then give estimates, and say so. An unsampled call costs one
    /// trap where the kernel has uprobe sessions (6.13). 0 (the default) traces every call;
    /// 64K is a start for production (see the README). K/M/G suffixes.
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_sample_rate)]
    pub sample_rate: u64,

    /// Run the command as this user (a name or a numeric uid), with the user's groups, while
    /// tracer keeps root (as `strace -u`). The environment is left as it is.
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// Write the raw event stream (with the memory maps and build ids needed to symbolize it
    /// later) to FILE, for `tracer replay FILE`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Serve the reports as Prometheus / OpenMetrics metrics at http://ADDR/metrics while
    /// tracing (e.g. 127.0.0.1:9464): per process and per top site live bytes, growth rate
    /// and verdict, lost events, tracer's own cost. Anyone who can reach ADDR can read process
    /// and function names: prefer a loopback address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Scan the traced processes' memory for who holds their blocks at every interval report
    /// too, not only at marks and at the end (see the README): a `leak` verdict then says
    /// whether the growth is unreachable or names what holds it. Each scan reads all of the
    /// process's writable memory while it runs.
    #[arg(long)]
    pub reachability: bool,

    /// Hold each traced process still while its memory is scanned (at marks, with
    /// --reachability at every interval, at the end): every thread is stopped with ptrace and
    /// its registers read, so the scan is exact, at the cost of a pause (see the README). The
    /// kernel lets the process go if tracer dies. Without it the scan runs beside the process
    /// and is approximate.
    #[arg(long)]
    pub stop_for_scan: bool,

    /// Run the reports from a recording instead of tracing (same as `tracer replay FILE`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["pid", "record", "command", "duration", "metrics", "reachability", "stop_for_scan"])]
    pub replay: Option<PathBuf>,

    #[command(flatten)]
    pub report: ReportArgs,

    /// The command to start and trace, with its arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Subcommand, Debug)]
pub enum Sub {
    /// Run the whole pipeline again from a recording made with --record: the same reports, no
    /// root and no kernel needed.
    #[command(args_override_self = true)]
    Replay {
        /// The recording.
        file: PathBuf,
        #[command(flatten)]
        report: ReportArgs,
    },
}

/// How reports are made: shared by live tracing and replay.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Seconds between growth reports.
    #[arg(short, long, value_name = "SECS", default_value = "5", value_parser = parse_interval,
          allow_negative_numbers = true)]
    pub interval: f64,

    /// Show at most this many call sites per report.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Output format: a table for people, or one JSON object per report (one per line).
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    pub format: FormatArg,

    /// Order of the sites: growth in bytes, in objects, or growth rate (bytes/s).
    #[arg(long, value_enum, default_value_t = SortArg::Bytes)]
    pub sort: SortArg,

    /// With no target: trace only the processes whose command name (as in /proc/PID/comm) is
    /// NAME: those running now, those that exec a program of that name later (probed at
    /// their exec) and the children they fork. Each is probed on its own: no other process
    /// pays anything.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,

    /// Tracing several processes, the final report keeps the summaries of at most N exited
    /// processes (those with leaks first, then by what they left outstanding) and counts the
    /// others: memory and report size stay bounded on a busy host.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub keep_exited: usize,

    /// Tracing several processes, each report lists the N processes that grew most in its
    /// window (the final report: that hold the most outstanding) and counts the others.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub processes: u32,

    /// Keep only sites with a frame (function, file or module) matching this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub site: Option<String>,

    /// Ignore the start-up noise of the first SECS seconds (`5`, `5s`) or N intervals (`3i`)
    /// when judging verdicts.
    #[arg(long, value_name = "SECS|Ni", default_value = "0", value_parser = parse_warmup)]
    pub warmup: Warmup,

    /// In the outstanding (final) report, count only blocks at least SECS seconds old.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub older_than: Option<f64>,

    /// Interval reports show growth since tracing began instead of since the last report.
    #[arg(long)]
    pub since_attach: bool,

    /// Group the reports by what the live blocks are: `class` lists C++ classes (from each
    /// object's vtable) across all sites, with the change since the last report of the same
    /// kind (between two marks: the objects made in between), the blocks of no class in one
    /// row. Reads the memory of the traced processes at every report (as --reachability).
    #[arg(long, value_enum, value_name = "WHAT")]
    pub by: Option<ByArg>,

    /// Intervals of history a verdict looks at.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub verdict_window: u32,

    /// Intervals of history needed before a site gets a verdict other than `new`.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub min_intervals: u32,

    /// Write flame data to PATH at the end: folded stacks (.folded), a differential folded file
    /// (.diff.folded), an SVG flame graph (.svg), pprof (.pb.gz) or speedscope (.speedscope.json).
    /// Repeat it for several files.
    #[arg(long, value_name = "PATH", action = clap::ArgAction::Append)]
    pub flame: Vec<PathBuf>,

    /// The flame file's format, when its name does not say.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub flame_format: Option<FlameFormatArg>,

    /// What the flame data shows: the leaking sites' outstanding bytes, all live memory, all
    /// allocations, or growth since the last mark.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = FlameWhatArg::Leaks)]
    pub flame_what: FlameWhatArg,

    /// Rewrite the flame file at every interval report too (atomically), not only at the end.
    #[arg(long)]
    pub flame_every: bool,

    /// Show the reports in a full-screen view on the terminal instead of printing them: the
    /// sites update each interval, sortable and filterable, with their verdicts and trends;
    /// Enter opens a site's stack. `q` ends tracing and prints the final report on the normal
    /// screen (on stdout, which may be a file). `tracer replay FILE --live` steps through a
    /// recording. Without a terminal, the reports are printed as usual.
    #[arg(long)]
    pub live: bool,

    /// Share of the window's intervals that must grow for a steady leak (0..1).
    #[arg(long, value_name = "F", default_value = "0.6", value_parser = parse_fraction)]
    pub leak_fraction: f64,
}

// The command line's names for the domain's choices; `config` maps them (`From` below).

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Json => Format::Json,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnwindArg {
    Auto,
    Dwarf,
    Fp,
}

impl UnwindArg {
    /// The kernel side's setting (`tracer_common::unwind_mode`).
    pub fn mode(self) -> u32 {
        use tracer_common::unwind_mode;
        match self {
            UnwindArg::Auto => unwind_mode::AUTO,
            UnwindArg::Dwarf => unwind_mode::DWARF,
            UnwindArg::Fp => unwind_mode::FP,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ByArg {
    Class,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    Bytes,
    Objects,
    Rate,
}

impl From<SortArg> for SortKey {
    fn from(k: SortArg) -> SortKey {
        match k {
            SortArg::Bytes => SortKey::Bytes,
            SortArg::Objects => SortKey::Objects,
            SortArg::Rate => SortKey::Rate,
        }
    }
}

/// What a flame graph shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlameWhatArg {
    /// Outstanding bytes of the sites that leak (and of those not judged yet).
    Leaks,
    /// All live memory.
    Live,
    /// All allocations since the start (allocation-rate hot spots).
    Allocs,
    /// Growth of live memory since the last mark (or the start).
    Growth,
}

impl From<FlameWhatArg> for flame::What {
    fn from(w: FlameWhatArg) -> flame::What {
        match w {
            FlameWhatArg::Leaks => flame::What::Leaks,
            FlameWhatArg::Live => flame::What::Live,
            FlameWhatArg::Allocs => flame::What::Allocs,
            FlameWhatArg::Growth => flame::What::Growth,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlameFormatArg {
    /// `frame;frame;frame value` lines, outermost frame first.
    Folded,
    /// `stack before after` lines (inferno's differential input): live bytes at the last mark
    /// (or the start) and now.
    DiffFolded,
    /// An interactive SVG flame graph (inferno).
    Svg,
    /// pprof's profile.proto, gzip-compressed.
    Pprof,
    /// speedscope's JSON file format.
    Speedscope,
}

impl From<FlameFormatArg> for flame::Format {
    fn from(f: FlameFormatArg) -> flame::Format {
        match f {
            FlameFormatArg::Folded => flame::Format::Folded,
            FlameFormatArg::DiffFolded => flame::Format::DiffFolded,
            FlameFormatArg::Svg => flame::Format::Svg,
            FlameFormatArg::Pprof => flame::Format::Pprof,
            FlameFormatArg::Speedscope => flame::Format::Speedscope,
        }
    }
}

fn parse_warmup(s: &str) -> Result<Warmup, String> {
    let t = s.trim();
    if let Some(n) = t.strip_suffix('i') {
        return n
            .parse::<u32>()
            .map(Warmup::Intervals)
            .map_err(|_| format!("'{s}' is not a number of intervals (e.g. 3i)"));
    }
    let secs = t.strip_suffix('s').unwrap_or(t);
    if secs.trim().parse::<f64>().ok() == Some(0.0) {
        return Ok(Warmup::Secs(0.0));
    }
    parse_secs(secs).map(Warmup::Secs)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "'{s}' must be a fraction above 0 and at most 1 (e.g. 0.6)"
        )),
    }
}

/// Reports are for people and scrapers: more than ten a second is a mistake.
const MIN_INTERVAL: f64 = 0.1;

fn parse_interval(s: &str) -> Result<f64, String> {
    let v = parse_secs(s)?;
    if v < MIN_INTERVAL {
        return Err(format!(
            "'{s}' is too short: the shortest interval between reports is {MIN_INTERVAL} s"
        ));
    }
    Ok(v)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds (e.g. 5 or 0.5)"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("'{s}' must be a positive number of seconds"));
    }
    if v > 1e9 {
        return Err(format!("'{s}' seconds is too long"));
    }
    Ok(v)
}

/// Parses a byte size such as `4096`, `64K`, `8M`, `1G`.
/// `--sample-rate`: a size up to 1 TiB (0: every call).
fn parse_sample_rate(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n > 1 << 40 {
        return Err(format!("{s} is above 1T, the largest sampling rate"));
    }
    Ok(n)
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (t, 1u64),
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "" => 1,
                _ => return Err(format!("'{s}' is not a size (use e.g. 4096, 64K, 8M)")),
            };
            (&t[..i], mult)
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (use e.g. 4096, 64K, 8M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

fn parse_unwind_rows(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !(1024..=1 << 28).contains(&n) {
        return Err(format!("{n} rows: give between 1K and 256M"));
    }
    Ok(n as u32)
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    let page = page_size();
    if n < page || !n.is_power_of_two() {
        return Err(format!(
            "the ring buffer size must be a power of two of at least one page ({page} bytes), e.g. 64K or 8M; got {n}"
        ));
    }
    if n > 1 << 30 {
        return Err(format!("the ring buffer size {n} is over the 1G limit"));
    }
    Ok(n as u32)
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("8X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two_of_pages() {
        assert!(parse_ring_size("1000").unwrap_err().contains("ring buffer"));
        assert!(parse_ring_size("12K").is_err());
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("16M"), Ok(16 << 20));
    }

    #[test]
    fn seconds_must_be_positive_numbers() {
        assert!(parse_secs("zero").is_err());
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
        assert_eq!(parse_secs("0.5"), Ok(0.5));
    }

    #[test]
    fn command_after_double_dash_keeps_its_flags() {
        let cli = Cli::try_parse_from(["tracer", "-i", "2", "--", "prog", "--flag", "-x"]).unwrap();
        assert_eq!(cli.command, ["prog", "--flag", "-x"]);
        assert_eq!(cli.report.interval, 2.0);
    }

    #[test]
    fn replay_takes_the_report_options() {
        let cli =
            Cli::try_parse_from(["tracer", "replay", "run.rec", "-i", "1", "--format", "json"])
                .unwrap();
        match cli.sub {
            Some(Sub::Replay { file, report }) => {
                assert_eq!(file, PathBuf::from("run.rec"));
                assert_eq!((report.interval, report.format), (1.0, FormatArg::Json));
            }
            other => panic!("{other:?}"),
        }
        // a command named like the subcommand still runs after `--`
        let cli = Cli::try_parse_from(["tracer", "--", "replay"]).unwrap();
        assert!(cli.sub.is_none());
        assert_eq!(cli.command, ["replay"]);
        assert!(Cli::try_parse_from(["tracer", "--replay", "x", "--pid", "3"]).is_err());
    }

    #[test]
    fn flame_files_add_up_while_other_flags_override() {
        let cli = Cli::try_parse_from([
            "tracer", "-i", "1", "-i", "2", "--flame", "a.svg", "--flame", "b.pb.gz", "--pid", "1",
        ])
        .unwrap();
        assert_eq!(cli.report.interval, 2.0);
        assert_eq!(
            cli.report.flame,
            [PathBuf::from("a.svg"), PathBuf::from("b.pb.gz")]
        );
    }

    #[test]
    fn warmup_takes_seconds_or_intervals() {
        assert_eq!(parse_warmup("5"), Ok(Warmup::Secs(5.0)));
        assert_eq!(parse_warmup("2.5s"), Ok(Warmup::Secs(2.5)));
        assert_eq!(parse_warmup("3i"), Ok(Warmup::Intervals(3)));
        assert_eq!(parse_warmup("0"), Ok(Warmup::Secs(0.0)));
        assert!(parse_warmup("xi").is_err());
        assert!(parse_warmup("-1").is_err());
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("0").is_err());
    }

    #[test]
    fn intervals_have_a_floor_and_negative_values_a_plain_message() {
        for (arg, says) in [
            ("1e-9", "shortest interval"),
            ("0.01", "shortest interval"),
            ("-1", "positive number"),
        ] {
            let err = Cli::try_parse_from(["tracer", "-i", arg, "--pid", "1"]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(says) && !text.contains("-- -1"),
                "{arg}: {text}"
            );
            assert_eq!(err.exit_code(), 2);
        }
        let err = Cli::try_parse_from(["tracer", "-d", "-3", "--pid", "1"]).unwrap_err();
        assert!(err.to_string().contains("positive number"), "{err}");
        assert_eq!(
            Cli::try_parse_from(["tracer", "-i", "0.1", "--pid", "1"])
                .unwrap()
                .report
                .interval,
            0.1
        );
    }

    #[test]
    fn bad_interval_names_the_flag() {
        let err = Cli::try_parse_from(["tracer", "--pid", "1", "-i", "zero"]).unwrap_err();
        assert!(err.to_string().contains("--interval"), "{err}");
    }
}
