//! Table reporter for people: one row per call site, the totals, and what was lost.
//! prettytable-rs lives only here.
use std::io::Write;

use prettytable::{format, Cell, Row, Table};

use super::{group, lost_hints, signed, LimitSettings, Report, ReportKind};
use crate::symbolize::Frame;

/// How many frames name a site in the table: the allocator's caller and two more.
const SITE_FRAMES: usize = 3;

/// `leak_shared (leaky.c:70) ← path_a:80 ← main:150`: the first frame with its file and line,
/// callers by name and line.
pub fn site_label(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[stack unavailable]".into();
    }
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

/// A label and its numbers (live objects, live bytes, Δobjects, Δbytes, allocs, frees), in
/// the columns of the report's kind.
fn row(kind: ReportKind, label: String, n: (u64, u64, i64, i64, u64, u64)) -> Row {
    let (live_objects, live_bytes, delta_objects, delta_bytes, allocs, frees) = n;
    let numbers = match kind {
        ReportKind::Interval => [
            signed(delta_objects),
            signed(delta_bytes),
            group(live_objects),
            group(live_bytes),
        ],
        ReportKind::Final => [
            group(live_objects),
            group(live_bytes),
            group(allocs),
            group(frees),
        ],
    };
    let mut row = Row::new(vec![Cell::new(&label)]);
    for c in &numbers {
        row.add_cell(Cell::new_align(c, format::Alignment::RIGHT));
    }
    row
}

pub fn write(report: &Report, limits: LimitSettings, out: &mut dyn Write) -> std::io::Result<()> {
    let t = &report.totals;
    match report.kind {
        ReportKind::Interval => writeln!(
            out,
            "[{:.1}s] pid {} ({}): {} B in {} blocks over {:.1}s; live {} B in {} blocks",
            report.elapsed_s,
            report.pid,
            report.command,
            signed(t.delta_bytes),
            signed(t.delta_objects),
            report.window_s,
            group(t.live_bytes),
            group(t.live_objects),
        )?,
        ReportKind::Final => writeln!(
            out,
            "[{:.1}s] final report, pid {} ({}){}: outstanding {} B in {} blocks",
            report.elapsed_s,
            report.pid,
            report.command,
            match report.exit_code {
                Some(c) => format!(", exited with status {c}"),
                None => String::new(),
            },
            group(t.live_bytes),
            group(t.live_objects),
        )?,
    }
    let mut table = Table::new();
    table.set_format(box_format());
    let titles = match report.kind {
        ReportKind::Interval => ["site", "Δobjects", "Δbytes", "live objects", "live bytes"],
        ReportKind::Final => ["site (outstanding)", "objects", "bytes", "allocs", "frees"],
    };
    table.set_titles(Row::new(titles.iter().map(|t| Cell::new(t)).collect()));
    for s in &report.sites {
        let n = (
            s.live_objects,
            s.live_bytes,
            s.delta_objects,
            s.delta_bytes,
            s.allocs,
            s.frees,
        );
        table.add_row(row(report.kind, site_label(&s.frames), n));
    }
    let total_label = if report.sites_omitted > 0 {
        format!(
            "TOTAL (all sites; {} more not shown, see --top)",
            report.sites_omitted
        )
    } else {
        "TOTAL".to_string()
    };
    let n = (
        t.live_objects,
        t.live_bytes,
        t.delta_objects,
        t.delta_bytes,
        t.allocs,
        t.frees,
    );
    table.add_row(row(report.kind, total_label, n));
    if report.sites.is_empty() && report.kind == ReportKind::Interval {
        writeln!(
            out,
            "no call site allocated or freed anything in this interval"
        )?;
    } else {
        table.print(out)?;
    }
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
    use crate::report::sample_report;

    const LIMITS: LimitSettings = LimitSettings {
        ring_size: 4096,
        stack_slots: 16384,
    };

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
        assert!(text.contains("lost events: none"), "{text}");
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
    }
}
