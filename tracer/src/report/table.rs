//! Table reporter for people: one row per call site, the totals, and what was lost.
//! prettytable-rs lives only here.
use std::io::Write;

use prettytable::{format, Cell, Row, Table};

use super::{
    group, lost_hints, signed, Category, LimitSettings, LiveObjects, Report, ReportKind,
    ScanReport, SiteReport, Totals,
};
use crate::{
    aggregate::verdict::Verdict,
    reach::summary::{ScanHow, TypeCount, REACH_NAMES},
    symbolize::Frame,
};

/// How many frames name a site in the table: the allocator's caller and two more.
const SITE_FRAMES: usize = 3;

/// `leak_shared (leaky.c:70) ← path_a:80 ← main:150`: the first frame with its file and line,
/// callers by name and line.
pub fn site_label(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[stack unavailable]".into();
    }
    // Allocation plumbing inlined into the caller (Rust's Box::new → alloc::alloc::alloc), or
    // the Go runtime growing its heap, says nothing about who allocates: start at the first
    // frame that is not.
    let plumbing = |f: &Frame| {
        f.function.as_deref().is_some_and(|n| {
            [
                "alloc::",
                "<alloc::",
                "core::alloc::",
                "<core::alloc::",
                "std::alloc::",
                "__rust_",
                "runtime.",
                "internal/",
            ]
            .iter()
            .any(|p| n.starts_with(p))
        })
    };
    let skip = frames.iter().take_while(|f| plumbing(f)).count();
    let frames = if skip < frames.len() {
        &frames[skip..]
    } else {
        frames
    };
    let mut parts = vec![frames[0].short()];
    for f in frames.iter().skip(1).take(SITE_FRAMES - 1) {
        parts.push(match (&f.function, f.line) {
            (Some(name), Some(line)) => format!("{name}:{line}"),
            (Some(name), None) => name.clone(),
            (None, _) => f.short(),
        });
    }
    parts.join(" ← ")
}

/// Box-drawn borders, a line under the titles and above the totals, none between sites.
fn box_format() -> format::TableFormat {
    use format::{LinePosition, LineSeparator};
    format::FormatBuilder::new()
        .column_separator('│')
        .borders('│')
        .separators(&[LinePosition::Top], LineSeparator::new('─', '┬', '┌', '┐'))
        .separators(
            &[LinePosition::Title],
            LineSeparator::new('─', '┼', '├', '┤'),
        )
        .separators(
            &[LinePosition::Bottom],
            LineSeparator::new('─', '┴', '└', '┘'),
        )
        .padding(1, 1)
        .build()
}

/// One line of a table: the label, then the numbers of the report's kind.
fn row(kind: ReportKind, label: String, s: &Line) -> Row {
    let cells: Vec<String> = match kind {
        ReportKind::Interval => vec![
            s.verdict.clone(),
            signed(s.delta_objects),
            signed(s.delta_bytes),
            s.rate.clone(),
            group(s.live_objects),
            group(s.live_bytes),
        ],
        ReportKind::Mark => vec![
            signed(s.delta_objects),
            signed(s.delta_bytes),
            s.blocks.clone(),
            s.oldest.clone(),
        ],
        ReportKind::Final => vec![
            s.verdict.clone(),
            group(s.live_objects),
            group(s.live_bytes),
            s.blocks.clone(),
            s.oldest.clone(),
            group(s.allocs),
            group(s.frees),
        ],
    };
    let mut row = Row::new(vec![Cell::new(&label)]);
    for (i, c) in cells.iter().enumerate() {
        // words (verdict, blocks) left, numbers right
        let words = (kind != ReportKind::Mark && i == 0) || c.contains(['×', '–']);
        let align = if words {
            format::Alignment::LEFT
        } else {
            format::Alignment::RIGHT
        };
        row.add_cell(Cell::new_align(c, align));
    }
    row
}

/// The cells of one row, already formatted.
#[derive(Default)]
struct Line {
    verdict: String,
    rate: String,
    blocks: String,
    oldest: String,
    live_objects: u64,
    live_bytes: u64,
    delta_objects: i64,
    delta_bytes: i64,
    allocs: u64,
    frees: u64,
}

impl Line {
    fn of(s: &SiteReport) -> Line {
        let a = &s.assessment;
        Line {
            verdict: match &s.verdict_detail {
                // `held by g_list in server`: the symbol says enough in a column.
                Some(d) => format!(
                    "{}, {}",
                    a.verdict.as_str(),
                    d.split(" in ").next().unwrap_or(d)
                ),
                None => a.verdict.as_str().to_string(),
            },
            rate: match a.verdict {
                Verdict::New if a.verdict_intervals == 0 => String::new(),
                _ => format!("{} B/s", signed(a.rate_bytes_per_s.round() as i64)),
            },
            blocks: blocks(&s.objects),
            oldest: s.objects.oldest_age_s.map(age).unwrap_or_default(),
            live_objects: s.live_objects,
            live_bytes: s.live_bytes,
            delta_objects: s.delta_objects,
            delta_bytes: s.delta_bytes,
            allocs: s.allocs,
            frees: s.frees,
        }
    }

    fn totals(t: &Totals) -> Line {
        Line {
            live_objects: t.live_objects,
            live_bytes: t.live_bytes,
            delta_objects: t.delta_objects,
            delta_bytes: t.delta_bytes,
            allocs: t.allocs,
            frees: t.frees,
            ..Line::default()
        }
    }
}

/// What the live blocks are: `64 B × 1,200` for one or two sizes, else the range, the count of
/// sizes and a sparkline of the power-of-two size classes.
pub fn blocks(o: &LiveObjects) -> String {
    match o.distinct_sizes {
        0 => String::new(),
        1 | 2 => {
            let mut v = o.sizes.clone();
            v.sort_by_key(|s| s.size);
            v.iter()
                .map(|s| format!("{} × {}", bytes(s.size), group(s.objects)))
                .collect::<Vec<_>>()
                .join(", ")
        }
        n => {
            let max = o.largest_class();
            let first = o.size_histogram.first().map_or(0, |h| h.0);
            let last = o.size_histogram.last().map_or(0, |h| h.0);
            let mut spark = String::new();
            let mut class = first;
            let mut it = o.size_histogram.iter().peekable();
            while class <= last {
                let n = match it.peek() {
                    Some(&&(c, n)) if c == class => {
                        it.next();
                        n
                    }
                    _ => 0,
                };
                const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
                spark.push(if n == 0 {
                    ' '
                } else {
                    BARS[((n * 8).div_ceil(max) - 1).min(7) as usize]
                });
                class = if class == 0 { 1 } else { class * 2 };
                if spark.chars().count() > 16 {
                    break;
                }
            }
            format!(
                "{}–{} ({n} sizes) {}",
                bytes(o.size_min),
                bytes(o.size_max),
                spark.trim_end()
            )
        }
    }
}

/// `512 B`, `4 KiB`, `1.5 MiB`
pub fn bytes(n: u64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 || unit == "GiB" {
            return if unit == "B" || v.fract() == 0.0 {
                format!("{v} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

/// `4.2s`, `3m05s`, `2h10m`
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// How a process was scanned: `pid 42 held still for 4.5 ms: 724 KiB read in 4.4 ms`.
fn scan_line(s: &ScanReport) -> String {
    let st = &s.stats;
    let how = match st.how {
        ScanHow::Running => "scanned while it ran (approximate)".to_string(),
        ScanHow::Stopped => format!("held still for {}", millis(st.pause_micros)),
        ScanHow::AtExit => "scanned at its exit".to_string(),
    };
    let mut skipped = String::new();
    if st.unreadable_blocks > 0 || st.unreadable_root_bytes > 0 {
        skipped = format!(
            ", skipped as unreadable: {} blocks, {} of roots",
            group(st.unreadable_blocks),
            bytes(st.unreadable_root_bytes)
        );
    }
    format!(
        "pid {} {how}: {} read in {}{skipped}",
        s.pid,
        bytes(st.bytes),
        millis(st.micros)
    )
}

fn millis(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

/// The classes of a site's objects: `Circle × 1,200, Square × 10`.
pub fn class_list(types: &[TypeCount]) -> String {
    types
        .iter()
        .map(|t| format!("{} × {}", t.name, group(t.objects)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the memory scan found of the sites listed (reports made when the target could be
/// read): how much of each is lost or still held, by whom, and the classes of its objects.
fn scanned(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let listed: Vec<&SiteReport> = report
        .sites
        .iter()
        .filter(|s| s.reachability.is_some() || !s.types.is_empty())
        .collect();
    if listed.is_empty() {
        return Ok(());
    }
    let how: Vec<String> = report.scans.iter().map(scan_line).collect();
    writeln!(
        out,
        "who holds it ({}; see README):",
        if how.is_empty() {
            "a scan of the process's memory".to_string()
        } else {
            how.join("; ")
        }
    )?;
    for s in listed {
        let mut parts = Vec::new();
        if let Some(r) = &s.reachability {
            for (what, (objects, bytes)) in REACH_NAMES.into_iter().zip(r.counts()) {
                if objects > 0 {
                    parts.push(format!("{} B in {} {what}", group(bytes), group(objects)));
                }
            }
            if let Some(h) = r.held_by.first() {
                parts.push(format!(
                    "held by {}{}",
                    h.root,
                    if r.held_by.len() > 1 {
                        format!(" (+{} more)", r.held_by.len() - 1)
                    } else {
                        String::new()
                    }
                ));
            }
            // Through other sites' blocks: the chain says which.
            if r.chain.len() > 2 || (r.held_by.is_empty() && r.chain.len() > 1) {
                parts.push(format!("chain: {}", r.chain.join(" → ")));
            }
        }
        if !s.types.is_empty() {
            parts.push(class_list(&s.types));
        }
        writeln!(out, "  {}: {}", site_label(&s.frames), parts.join("; "))?;
    }
    Ok(())
}

/// `--by class`: the live blocks by C++ class over all sites, and their change.
fn class_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    if report.classes.is_empty() {
        return Ok(());
    }
    let since = match report.kind {
        ReportKind::Interval => "the last report",
        ReportKind::Mark => "the last mark",
        ReportKind::Final => "the start",
    };
    let mut table = Table::new();
    table.set_format(box_format());
    table.set_titles(Row::new(
        [
            format!("class (Δ since {since})"),
            "Δobjects".into(),
            "Δbytes".into(),
            "live objects".into(),
            "live bytes".into(),
        ]
        .iter()
        .map(|t| Cell::new(t))
        .collect(),
    ));
    for c in &report.classes {
        table.add_row(Row::new(vec![
            Cell::new(c.name.as_deref().unwrap_or("(no class)")),
            Cell::new(&signed(c.delta_objects)).style_spec("r"),
            Cell::new(&signed(c.delta_bytes)).style_spec("r"),
            Cell::new(&group(c.objects)).style_spec("r"),
            Cell::new(&group(c.bytes)).style_spec("r"),
        ]));
    }
    table.print(out)?;
    Ok(())
}

/// `pid 42 (leaky)`, or `3 processes` when tracing several.
fn who(r: &Report) -> String {
    if r.pid == 0 {
        let n = r.processes.len();
        format!("{n} process{}", if n == 1 { "" } else { "es" })
    } else {
        format!("pid {} ({})", r.pid, r.command)
    }
}

/// The process level of a several-process report: one row per process, top processes first.
fn process_table(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let mut table = Table::new();
    table.set_format(box_format());
    let outstanding = report.kind == ReportKind::Final;
    let titles = [
        "pid",
        "command",
        "leaks",
        if outstanding { "objects" } else { "Δobjects" },
        if outstanding { "bytes" } else { "Δbytes" },
        "live bytes",
    ];
    table.set_titles(Row::new(titles.iter().map(|t| Cell::new(t)).collect()));
    for p in &report.processes {
        let leaks = match p.summary.leak_sites {
            0 => String::new(),
            n => format!(
                "{n} ({} B/s)",
                signed(p.summary.leak_bytes_per_s.round() as i64)
            ),
        };
        let command = if p.exited {
            format!("{} (exited)", p.command)
        } else {
            p.command.clone()
        };
        let cells = [
            p.pid.to_string(),
            command,
            leaks,
            signed(p.totals.delta_objects),
            signed(p.totals.delta_bytes),
            group(p.totals.live_bytes),
        ];
        table.add_row(Row::new(
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let align = if i == 1 || i == 2 {
                        format::Alignment::LEFT
                    } else {
                        format::Alignment::RIGHT
                    };
                    Cell::new_align(c, align)
                })
                .collect(),
        ));
    }
    table.print(out)?;
    Ok(())
}

pub fn write(report: &Report, limits: LimitSettings, out: &mut dyn Write) -> std::io::Result<()> {
    let t = &report.totals;
    let sm = &report.summary;
    let mmap = if t.mmap_live_objects > 0 {
        format!(
            " (of which {} B in {} mmap mapping{})",
            group(t.mmap_live_bytes),
            group(t.mmap_live_objects),
            if t.mmap_live_objects == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    let verdicts = if sm.leak_sites > 0 {
        format!(
            "; {} site{} leak{} ({} B/s)",
            sm.leak_sites,
            if sm.leak_sites == 1 { "" } else { "s" },
            if sm.leak_sites == 1 { "s" } else { "" },
            signed(sm.leak_bytes_per_s.round() as i64)
        )
    } else {
        String::new()
    };
    match report.kind {
        ReportKind::Interval => writeln!(
            out,
            "[{:.1}s] {}: {} B in {} blocks over {:.1}s; live {} B in {} blocks{mmap}{verdicts}",
            report.elapsed_s,
            who(report),
            signed(t.delta_bytes),
            signed(t.delta_objects),
            report.window_s,
            group(t.live_bytes),
            group(t.live_objects),
        )?,
        ReportKind::Mark => writeln!(
            out,
            "[{:.1}s] mark {}: since {} ({:.1}s): {} B in {} blocks left behind",
            report.elapsed_s,
            report.mark.unwrap_or(0),
            match report.mark {
                Some(n) if n > 1 => format!("mark {}", n - 1),
                _ => "the start".into(),
            },
            report.window_s,
            signed(t.delta_bytes),
            signed(t.delta_objects),
        )?,
        ReportKind::Final => writeln!(
            out,
            "[{:.1}s] final report, {}{}: outstanding {} B in {} blocks{mmap}{verdicts}",
            report.elapsed_s,
            who(report),
            match report.exit_code {
                Some(c) => format!(", exited with status {c}"),
                None => String::new(),
            },
            group(t.live_bytes),
            group(t.live_objects),
        )?,
    }
    for w in &report.warnings {
        writeln!(out, "  warning: {w}")?;
    }
    if let Some(s) = &report.sampling {
        writeln!(
            out,
            "  sampled: one allocation every {} on average; objects, bytes and rates are \
             estimates (no leak verdict on fewer than 3 sampled blocks)",
            crate::report::size_name(s.rate_bytes)
        )?;
    }
    if let Some(u) = report.unwind.as_ref().filter(|u| u.full > 0) {
        writeln!(
            out,
            "  warning: {} files have no unwind table for want of room (their stacks may be \
             cut or wrong): raise --unwind-rows",
            u.full
        )?;
    }
    if !report.processes.is_empty() {
        process_table(report, out)?;
    }
    let mut table = Table::new();
    table.set_format(box_format());
    let titles: &[&str] = match report.kind {
        ReportKind::Interval => &[
            "site",
            "verdict",
            "Δobjects",
            "Δbytes",
            "rate",
            "live objects",
            "live bytes",
        ],
        ReportKind::Mark => &[
            "site (changed since the mark)",
            "Δobjects",
            "Δbytes",
            "blocks",
            "oldest",
        ],
        ReportKind::Final => &[
            "site (outstanding)",
            "verdict",
            "objects",
            "bytes",
            "blocks",
            "oldest",
            "allocs",
            "frees",
        ],
    };
    table.set_titles(Row::new(titles.iter().map(|t| Cell::new(t)).collect()));
    let several = !report.processes.is_empty();
    for s in &report.sites {
        let mut label = site_label(&s.frames);
        if s.category == Category::Mmap {
            label = format!("mmap: {label}");
        }
        if several {
            label = format!("[{}] {label}", s.pid);
        }
        table.add_row(row(report.kind, label, &Line::of(s)));
    }
    let total_label = if report.sites_omitted > 0 {
        format!(
            "TOTAL (all sites; {} more not shown, see --top)",
            report.sites_omitted
        )
    } else {
        "TOTAL".to_string()
    };
    table.add_row(row(report.kind, total_label, &Line::totals(t)));
    if report.sites.is_empty() && report.kind != ReportKind::Final {
        writeln!(out, "no call site changed")?;
    } else {
        table.print(out)?;
    }
    class_table(report, out)?;
    scanned(report, out)?;
    let hints = lost_hints(&report.lost, limits);
    if hints.is_empty() {
        writeln!(out, "lost events: none")?;
    } else {
        for h in hints {
            writeln!(out, "lost events: {h}")?;
        }
    }
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{sample_report, SizeCount};

    const LIMITS: LimitSettings = LimitSettings { ring_size: 4096 };

    fn render(r: &Report) -> String {
        let mut buf = Vec::new();
        write(r, LIMITS, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn interval_table_has_sites_totals_and_losses() {
        let text = render(&sample_report());
        assert!(text.contains("leak_fixed (leaky.c:42)"), "{text}");
        assert!(text.contains("+128"), "{text}");
        assert!(text.contains("TOTAL"), "{text}");
        assert!(text.contains("Δbytes"), "{text}");
        assert!(text.contains("leak") && text.contains("+64 B/s"), "{text}");
        assert!(text.contains("1 site leaks (+64 B/s)"), "{text}");
        assert!(
            text.contains("lost events: 3 events lost") && text.contains("--ring-size"),
            "{text}"
        );
    }

    #[test]
    fn final_table_shows_outstanding() {
        let mut r = sample_report();
        r.kind = ReportKind::Final;
        r.exit_code = Some(0);
        r.lost.clear();
        let text = render(&r);
        assert!(
            text.contains("final report") && text.contains("exited with status 0"),
            "{text}"
        );
        assert!(text.contains("site (outstanding)"), "{text}");
        assert!(
            text.contains("64 B × 10") && text.contains("3.5s"),
            "{text}"
        );
        assert!(text.contains("lost events: none"), "{text}");
    }

    #[test]
    fn mark_table_says_what_was_left_behind() {
        let mut r = sample_report();
        r.kind = ReportKind::Mark;
        r.mark = Some(2);
        let text = render(&r);
        assert!(text.contains("mark 2: since mark 1 (2.0s)"), "{text}");
        assert!(text.contains("+128 B in +2 blocks left behind"), "{text}");
    }

    #[test]
    fn blocks_read_as_sizes_or_a_range() {
        let mut o = LiveObjects {
            sizes: vec![
                SizeCount {
                    size: 256,
                    objects: 3,
                },
                SizeCount {
                    size: 128,
                    objects: 5,
                },
            ],
            distinct_sizes: 2,
            size_min: 128,
            size_max: 256,
            size_histogram: vec![(128, 5), (256, 3)],
            oldest_age_s: None,
        };
        assert_eq!(blocks(&o), "128 B × 5, 256 B × 3");
        o.distinct_sizes = 900;
        o.size_min = 32;
        o.size_max = 1024;
        o.size_histogram = vec![(32, 10), (64, 20), (256, 80), (1024, 1)];
        assert_eq!(blocks(&o), "32 B–1 KiB (900 sizes) ▁▂ █ ▁");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(age(4.25), "4.2s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7800.0), "2h10m");
    }

    #[test]
    fn site_label_names_the_caller_and_its_callers() {
        let f = |name: &str, line: Option<u32>| Frame {
            function: Some(name.into()),
            file: line.map(|_| "/x/leaky.c".into()),
            line,
            ..Frame::default()
        };
        let frames = vec![
            f("leak_shared", Some(70)),
            f("path_a", Some(80)),
            f("main", Some(150)),
            f("__libc_start_main", None),
        ];
        assert_eq!(
            site_label(&frames),
            "leak_shared (leaky.c:70) ← path_a:80 ← main:150"
        );
        assert_eq!(site_label(&[]), "[stack unavailable]");
        let rust = vec![
            f("alloc::alloc::alloc", None),
            f("alloc::boxed::Box<T>::new", None),
            f("app::Store::leak", Some(12)),
            f("app::main", Some(30)),
        ];
        assert_eq!(
            site_label(&rust),
            "app::Store::leak (leaky.c:12) ← app::main:30"
        );
        // The Go runtime growing its heap for a caller: the caller names the site; a stack
        // of runtime frames alone keeps them.
        let go = vec![
            f("runtime.sysMmap", None),
            f("runtime.mallocgc", None),
            f("main.fill", Some(7)),
            f("main.main", Some(20)),
        ];
        assert_eq!(site_label(&go), "main.fill (leaky.c:7) ← main.main:20");
        assert!(site_label(&go[..2]).starts_with("runtime.sysMmap"));
    }
}
