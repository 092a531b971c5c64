//! Draws a [`View`] into a frame: the header (target, time, totals, the leak summary, lost
//! events), the table shown (sites, the last mark's sites, or processes) or a site's own page,
//! and a line of keys. Pure: tested on ratatui's in-memory backend.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::state::{since_mark, Pane, Source, View};
use crate::{
    aggregate::verdict::Verdict,
    reach::summary::REACH_NAMES,
    report::{
        group, lost_hints, signed,
        table::{age, blocks, bytes, class_list, site_label},
        SiteReport, SortKey,
    },
};

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Points of a row's sparkline.
const SPARK: usize = 16;

pub fn draw(f: &mut Frame, v: &View) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    header(f, head, v);
    match (v.pane, v.detail.then(|| v.selected_site()).flatten()) {
        (Pane::Processes, _) => processes(f, body, v),
        (_, Some(site)) => detail(f, body, v, site),
        _ => sites(f, body, v),
    }
    footer(f, foot, v);
    if v.help {
        help(f, body);
    }
}

fn verdict_style(v: Verdict) -> Style {
    match v {
        Verdict::Leak => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Plateau => Style::new().fg(Color::Yellow),
        Verdict::Churn => Style::new().fg(Color::Green),
        Verdict::Freed => Style::new().fg(Color::Blue),
        Verdict::New => Style::new().fg(Color::Cyan),
        Verdict::Uncertain => Style::new().fg(Color::Magenta),
    }
}

/// `+1.5 KiB/s`
fn rate(r: f64) -> String {
    let sign = if r < 0.0 { "-" } else { "+" };
    format!("{sign}{}/s", bytes(r.abs().round() as u64))
}

pub fn signed_bytes(n: i64) -> String {
    match n {
        0 => "0".into(),
        n if n > 0 => format!("+{}", bytes(n as u64)),
        n => format!("-{}", bytes(n.unsigned_abs())),
    }
}

/// The last `width` values as bars scaled to their maximum.
pub fn spark(values: impl Iterator<Item = u64>, width: usize) -> String {
    let v: Vec<u64> = values.collect();
    let v = &v[v.len().saturating_sub(width)..];
    let (lo, hi) = (
        v.iter().copied().min().unwrap_or(0),
        v.iter().copied().max().unwrap_or(0),
    );
    v.iter()
        .map(|&x| {
            if hi == lo {
                return if hi == 0 { ' ' } else { BARS[3] };
            }
            BARS[(((x - lo) * 7) / (hi - lo)) as usize]
        })
        .collect()
}

fn header(f: &mut Frame, area: Rect, v: &View) {
    let Some(r) = v.report.as_ref().or(v.mark.as_ref()) else {
        let what = match v.source {
            Source::Live => "tracing: the first report comes after one interval",
            Source::Replay => "replaying: n shows the first report",
        };
        f.render_widget(Paragraph::new(what).block(Block::bordered()), area);
        return;
    };
    let who = if r.pid == 0 {
        format!("{} processes", r.processes.len())
    } else {
        format!("pid {} ({})", r.pid, r.command)
    };
    let state = match (v.source, v.paused) {
        (Source::Live, true) => " · PAUSED (p resumes; tracing goes on)".to_string(),
        (Source::Live, false) => String::new(),
        (Source::Replay, true) => " · replay: n next report, p play".to_string(),
        (Source::Replay, false) => " · replay: playing (p holds)".to_string(),
    };
    let t = &r.totals;
    let sm = &r.summary;
    let leak = if sm.leak_sites > 0 {
        Line::from(vec![
            Span::styled(
                format!(
                    "LEAK: {} site{} growing {}",
                    sm.leak_sites,
                    if sm.leak_sites == 1 { "" } else { "s" },
                    rate(sm.leak_bytes_per_s)
                ),
                verdict_style(Verdict::Leak),
            ),
            Span::raw(format!(
                " · {} plateau · {} uncertain",
                sm.plateau_sites, sm.uncertain_sites
            )),
        ])
    } else if r.elapsed_s < r.warmup_s {
        Line::from(format!(
            "no verdicts yet: the warmup lasts {:.0}s",
            r.warmup_s
        ))
    } else {
        Line::from(Span::styled(
            format!(
                "no leak so far · {} plateau · {} uncertain",
                sm.plateau_sites, sm.uncertain_sites
            ),
            Style::new().fg(Color::Green),
        ))
    };
    let hints = lost_hints(&r.lost, v.limits);
    let lost = match hints.first() {
        None => Line::from("lost events: none"),
        Some(h) => Line::from(Span::styled(
            format!(
                "lost: {h}{}",
                if hints.len() > 1 {
                    format!(" (+{} more in the final report)", hints.len() - 1)
                } else {
                    String::new()
                }
            ),
            Style::new().fg(Color::Red),
        )),
    };
    let lines = vec![
        Line::from(vec![
            Span::styled("tracer ", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "· {who} · {} {} · {:.1}s{state}",
                r.allocator_kind, r.allocator, r.elapsed_s
            )),
        ]),
        Line::from(format!(
            "live {} in {} blocks · Δ {} ({} blocks) in the last {:.1}s · {} allocs, {} frees",
            bytes(t.live_bytes),
            group(t.live_objects),
            signed_bytes(t.delta_bytes),
            signed(t.delta_objects),
            r.window_s,
            group(t.allocs),
            group(t.frees),
        )),
        leak,
        lost,
    ];
    f.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::BOTTOM)),
        area,
    );
}

fn sort_name(s: SortKey) -> &'static str {
    match s {
        SortKey::Rate => "rate",
        SortKey::Bytes => "live bytes",
        SortKey::Objects => "live objects",
    }
}

fn sites(f: &mut Frame, area: Rect, v: &View) {
    let rows = v.rows();
    let matching = v
        .pid
        .map(|p| format!(" of pid {p} (Esc: all)"))
        .into_iter()
        .chain(
            v.filter
                .as_ref()
                .map(|re| format!(", matching /{}/", re.as_str())),
        )
        .collect::<String>();
    let title = match (v.pane, v.shown()) {
        (Pane::Mark, None) => " what changed between marks: no mark yet (m takes one) ".to_string(),
        (Pane::Mark, Some(r)) => format!(
            " mark {}: {} sites changed since {} ({:.1}s), by {}{matching} ",
            r.mark.unwrap_or(0),
            rows.len(),
            since_mark(r.mark.unwrap_or(0)),
            r.window_s,
            sort_name(v.sort)
        ),
        (_, r) => format!(
            " sites by {}{matching}{} ",
            sort_name(v.sort),
            r.filter(|r| r.sites_omitted > 0)
                .map(|r| format!(", {} more beyond --top", r.sites_omitted))
                .unwrap_or_default()
        ),
    };
    let titles = [
        "verdict", "rate", "Δbytes", "live", "objects", "trend", "site",
    ];
    let body: Vec<Row> = rows
        .iter()
        .map(|s| {
            let trend = v
                .history(s)
                .map(|h| spark(h.iter().copied(), SPARK))
                .unwrap_or_default();
            let mut label = site_label(&s.frames);
            if v.shown().is_some_and(|r| r.pid == 0) {
                label = format!("[{}] {label}", s.pid);
            }
            Row::new(vec![
                Cell::new(s.assessment.verdict.as_str()).style(verdict_style(s.assessment.verdict)),
                Cell::new(rate(s.assessment.rate_bytes_per_s)),
                Cell::new(signed_bytes(s.delta_bytes)),
                Cell::new(bytes(s.live_bytes)),
                Cell::new(group(s.live_objects)),
                Cell::new(trend),
                Cell::new(label),
            ])
        })
        .collect();
    let table = Table::new(
        body,
        [
            Constraint::Length(9),
            Constraint::Length(12),
            Constraint::Length(11),
            Constraint::Length(10),
            Constraint::Length(9),
            Constraint::Length(SPARK as u16),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(titles).add_modifier(Modifier::BOLD))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .block(Block::bordered().title(title));
    let mut state = TableState::default().with_selected((!rows.is_empty()).then_some(v.selected));
    f.render_stateful_widget(table, area, &mut state);
}

fn processes(f: &mut Frame, area: Rect, v: &View) {
    let Some(r) = &v.report else {
        return;
    };
    let body: Vec<Row> = r
        .processes
        .iter()
        .map(|p| {
            let leaks = match p.summary.leak_sites {
                0 => Cell::new(""),
                n => Cell::new(format!("{n} ({})", rate(p.summary.leak_bytes_per_s)))
                    .style(verdict_style(Verdict::Leak)),
            };
            Row::new(vec![
                Cell::new(p.pid.to_string()),
                Cell::new(if p.exited {
                    format!("{} (exited)", p.command)
                } else {
                    p.command.clone()
                }),
                leaks,
                Cell::new(signed_bytes(p.totals.delta_bytes)),
                Cell::new(bytes(p.totals.live_bytes)),
                Cell::new(if p.lost > 0 {
                    group(p.lost)
                } else {
                    String::new()
                }),
            ])
        })
        .collect();
    let table = Table::new(
        body,
        [
            Constraint::Length(8),
            Constraint::Length(20),
            Constraint::Length(20),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(["pid", "command", "leak sites", "Δbytes", "live", "lost"])
            .add_modifier(Modifier::BOLD),
    )
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .block(Block::bordered().title(format!(
        " processes ({} more not listed; Enter: its sites) ",
        r.processes_omitted
    )));
    let mut state = TableState::default().with_selected(Some(v.selected));
    f.render_stateful_widget(table, area, &mut state);
}

/// A site's own page: its whole stack, its numbers and verdict, the sizes and ages of its
/// live blocks, its live bytes over the reports seen.
fn detail(f: &mut Frame, area: Rect, v: &View, s: &SiteReport) {
    let [top, spark_area] =
        Layout::vertical([Constraint::Min(6), Constraint::Length(5)]).areas(area);
    let [stack_area, facts_area] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
    let stack: Vec<Line> = s
        .frames
        .iter()
        .enumerate()
        .map(|(i, fr)| {
            let mut spans = vec![
                Span::raw(format!("#{i:<2} ")),
                Span::styled(fr.name(), Style::new().add_modifier(Modifier::BOLD)),
            ];
            if let Some(at) = fr.location() {
                spans.push(Span::raw(format!("  {at}")));
            }
            if fr.inlined {
                spans.push(Span::styled(
                    "  (inlined)",
                    Style::new().fg(Color::DarkGray),
                ));
            }
            if let Some(m) = &fr.module {
                let m = m.rsplit('/').next().unwrap_or(m);
                spans.push(Span::styled(
                    format!("  {m}"),
                    Style::new().fg(Color::DarkGray),
                ));
            }
            Line::from(spans)
        })
        .collect();
    let stack = if stack.is_empty() {
        vec![Line::from("[stack unavailable]")]
    } else {
        stack
    };
    f.render_widget(
        Paragraph::new(stack)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!(" stack of pid {} (Esc: back) ", s.pid))),
        stack_area,
    );
    let a = &s.assessment;
    let o = &s.objects;
    let mut facts = vec![
        Line::from(vec![
            Span::raw("verdict "),
            Span::styled(a.verdict.as_str(), verdict_style(a.verdict)),
            Span::raw(format!(
                ": grew in {} of {} intervals ({} in a row)",
                a.grown_intervals, a.verdict_intervals, a.growth_streak
            )),
        ]),
        Line::from(format!(
            "rate {} ({:+.1} objects/s)",
            rate(a.rate_bytes_per_s),
            a.rate_objects_per_s
        )),
        Line::from(format!(
            "live {} in {} blocks; Δ {} ({})",
            bytes(s.live_bytes),
            group(s.live_objects),
            signed_bytes(s.delta_bytes),
            signed(s.delta_objects)
        )),
        Line::from(format!(
            "{} allocs, {} frees in the window",
            group(s.allocs),
            group(s.frees)
        )),
        Line::from(format!("blocks: {}", blocks(o))),
        Line::from(format!(
            "oldest live block: {}",
            o.oldest_age_s.map(age).unwrap_or_else(|| "none".into())
        )),
    ];
    // What the last scan found (the mark pane's sites, where it ran).
    if !s.types.is_empty() {
        facts.push(Line::from(format!("objects: {}", class_list(&s.types))));
    }
    if let Some(r) = &s.reachability {
        for (what, (objects, n)) in REACH_NAMES.into_iter().zip(r.counts()) {
            if objects > 0 {
                facts.push(Line::from(format!(
                    "{what}: {} in {} blocks",
                    bytes(n),
                    group(objects)
                )));
            }
        }
        for h in &r.held_by {
            facts.push(Line::from(format!(
                "held by {}: {}",
                h.root,
                bytes(h.bytes)
            )));
        }
    }
    facts.push(Line::from(""));
    facts.push(Line::from(Span::styled(
        "size class   blocks",
        Style::new().add_modifier(Modifier::BOLD),
    )));
    let most = o.largest_class();
    for &(class, n) in &o.size_histogram {
        let w = ((n * 20).div_ceil(most)) as usize;
        facts.push(Line::from(format!(
            "≥ {:<9} {:>8} {}",
            bytes(class),
            group(n),
            "█".repeat(w)
        )));
    }
    f.render_widget(
        Paragraph::new(facts).block(Block::bordered().title(" what is live ")),
        facts_area,
    );
    let data: Vec<u64> = v
        .history(s)
        .map(|h| h.iter().copied().collect())
        .unwrap_or_default();
    let lo = data.iter().copied().min().unwrap_or(0);
    let shifted: Vec<u64> = data.iter().map(|x| x - lo).collect();
    f.render_widget(
        Sparkline::default()
            .data(&shifted)
            .style(verdict_style(a.verdict))
            .block(Block::bordered().title(format!(
                " live bytes at the last {} reports: {} → {} ",
                data.len(),
                bytes(lo),
                bytes(data.last().copied().unwrap_or(0))
            ))),
        spark_area,
    );
}

fn footer(f: &mut Frame, area: Rect, v: &View) {
    let line = if let Some(text) = &v.typing {
        Line::from(vec![
            Span::styled(
                "filter (regex, Enter applies, Esc cancels): /",
                Style::new().bold(),
            ),
            Span::raw(text.clone()),
        ])
    } else if let Some(s) = &v.status {
        Line::from(vec![
            Span::raw(s.clone()),
            Span::styled("   ? help  q quit", Style::new().fg(Color::DarkGray)),
        ])
    } else {
        let keys = match v.source {
            Source::Live => {
                "q quit  m mark  s sort  / filter  p pause  Enter site  Tab view  ? help"
            }
            Source::Replay => {
                "q quit  n next  p play  s sort  / filter  Enter site  Tab view  ? help"
            }
        };
        Line::from(Span::styled(keys, Style::new().fg(Color::DarkGray)))
    };
    f.render_widget(Paragraph::new(line), area);
}

fn help(f: &mut Frame, area: Rect) {
    let text = [
        "q, Ctrl-C   quit: the final report goes to the normal screen",
        "m           take a mark: Tab shows what changed since the previous one",
        "s           sort by growth rate, live bytes, live objects",
        "/           filter sites by a regex on their functions and modules",
        "p           pause the display (tracing goes on); replay: play / hold",
        "n, space    replay: the next report",
        "Enter, Esc  open / close the selected site: stack, sizes, ages, trend",
        "Tab         sites · since the last mark · processes (Enter: a process's sites)",
        "↑ ↓ PgUp PgDn Home End   select",
        "",
        "Verdicts: leak grows steadily; plateau grew, then held; churn comes and goes;",
        "freed went back down; new has too little history; uncertain: events were lost.",
    ];
    let w = 84.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text.map(Line::from).to_vec())
            .block(Block::bordered().title(" keys (any key closes) ")),
        popup,
    );
}

/// The text a report's sites show as (for tests and the screen alike).
#[cfg(test)]
fn screen(v: &View, w: u16, h: u16) -> String {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    t.draw(|f| draw(f, v)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::state::tests::{three_sites, LIMITS};
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    fn press(v: &mut View, c: KeyCode) {
        v.key(KeyEvent::new(c, KeyModifiers::NONE));
    }

    #[test]
    fn the_table_shows_each_site_with_its_verdict_in_the_chosen_order() {
        let mut v = View::new(Source::Live, SortKey::Rate, LIMITS);
        v.take(three_sites());
        let s = screen(&v, 140, 20);
        let line_of = |name: &str| s.lines().position(|l| l.contains(name)).unwrap();
        assert!(line_of("leak_fixed") < line_of("leak_calloc"));
        assert!(line_of("leak_calloc") < line_of("cache_insert"));
        assert!(s
            .lines()
            .nth(line_of("leak_fixed"))
            .unwrap()
            .contains("leak "));
        assert!(s.contains("LEAK: 1 site growing +64 B/s"), "{s}");
        assert!(
            s.contains("ring buffer"),
            "the lost events and the flag: {s}"
        );
        press(&mut v, KeyCode::Char('s'));
        let s = screen(&v, 140, 20);
        let line_of = |name: &str| s.lines().position(|l| l.contains(name)).unwrap();
        assert!(line_of("cache_insert") < line_of("leak_calloc"), "{s}");
    }

    #[test]
    fn a_site_page_shows_its_whole_stack_with_lines() {
        let mut r = three_sites();
        let mut caller = r.sites[0].frames[0].clone();
        caller.function = Some("main".into());
        caller.line = Some(150);
        r.sites[0].frames.push(caller);
        let mut v = View::new(Source::Live, SortKey::Rate, LIMITS);
        v.take(r);
        press(&mut v, KeyCode::Enter);
        let s = screen(&v, 140, 30);
        assert!(s.contains("#0  leak_fixed  leaky.c:42"), "{s}");
        assert!(s.contains("#1  main  leaky.c:150"), "{s}");
        assert!(s.contains("oldest live block: 3.5s"), "{s}");
        assert!(!s.contains("held by"), "no scan, no holders: {s}");
    }

    #[test]
    fn a_scanned_sites_page_shows_its_classes_and_holders() {
        use crate::reach::summary::{Held, SiteReach, TypeCount};
        let mut r = three_sites();
        r.sites[0].types = vec![TypeCount {
            name: "Circle".into(),
            objects: 10,
            bytes: 640,
        }];
        r.sites[0].reachability = Some(SiteReach {
            reachable_objects: 10,
            reachable_bytes: 640,
            held_by: vec![Held {
                root: "g_list in holders".into(),
                objects: 10,
                bytes: 640,
            }],
            ..SiteReach::default()
        });
        let mut v = View::new(Source::Live, SortKey::Rate, LIMITS);
        v.take(r);
        press(&mut v, KeyCode::Enter);
        let s = screen(&v, 160, 30);
        assert!(s.contains("objects: Circle × 10"), "{s}");
        assert!(s.contains("reachable: 640 B in 10 blocks"), "{s}");
        assert!(s.contains("held by g_list in holders: 640 B"), "{s}");
    }

    #[test]
    fn any_size_draws_without_panicking() {
        let mut v = View::new(Source::Live, SortKey::Rate, LIMITS);
        v.take(three_sites());
        for (w, h) in [(1, 1), (10, 5), (40, 12), (300, 80)] {
            screen(&v, w, h);
            press(&mut v, KeyCode::Enter);
            screen(&v, w, h);
            press(&mut v, KeyCode::Char('?'));
            screen(&v, w, h);
            press(&mut v, KeyCode::Esc);
            press(&mut v, KeyCode::Esc);
        }
    }

    #[test]
    fn sparklines_scale_to_their_range() {
        assert_eq!(spark([1, 2, 3].into_iter(), 16), "▁▄█");
        assert_eq!(spark([5, 5].into_iter(), 16), "▄▄");
        assert_eq!(spark((0..40).map(|x| x as u64), 4).chars().count(), 4);
    }
}
