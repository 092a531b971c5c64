//! What the live view shows and how keys change it: no terminal here, so all of it is tested
//! as plain values. Drawing it is `draw`; the terminal and its events are `term`.
use std::collections::{HashMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::report::{LimitSettings, Report, ReportKind, SiteReport, SortKey};

/// Live bytes kept per site for its sparkline: at least the verdict window, at most this.
const HISTORY: usize = 60;

/// What a key asks of the tracer (the rest the view does itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Take a mark now (`m`).
    Mark,
    /// End tracing: the final report goes to the normal screen (`q`, Ctrl-C).
    Quit,
    /// Replay: the next report (`n`, space).
    Step,
    /// Replay: play at the recording's pace, or hold (`p`).
    Play(bool),
}

/// Which table the view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pane {
    /// The sites of the latest interval report.
    Sites,
    /// The sites of the latest mark report: what changed between the last two marks.
    Mark,
    /// The processes (tracing several).
    Processes,
}

/// Whether the view follows a live run or steps through a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Live,
    Replay,
}

/// A site across reports: its process and its stack's addresses.
type SiteKey = (u32, Vec<u64>);

fn key_of(s: &SiteReport) -> SiteKey {
    (s.pid, s.frames.iter().map(|f| f.addr).collect())
}

pub struct View {
    pub source: Source,
    /// What the lost-event line names as the flags to raise.
    pub limits: LimitSettings,
    /// The interval report shown, and the latest mark report.
    pub report: Option<Report>,
    pub mark: Option<Report>,
    /// Reports that came while paused (live): the newest, shown on resume.
    held: Option<Report>,
    /// Live bytes of each site at each interval report, oldest first.
    history: HashMap<SiteKey, VecDeque<u64>>,
    pub pane: Pane,
    pub sort: SortKey,
    pub filter: Option<regex_lite::Regex>,
    /// Only this process's sites (Enter on a process).
    pub pid: Option<u32>,
    /// The filter being typed after `/`.
    pub typing: Option<String>,
    /// The selected row of the table shown.
    pub selected: usize,
    /// The selected site's own page (Enter).
    pub detail: bool,
    pub help: bool,
    /// Live: the display is frozen (tracing goes on). Replay: not playing.
    pub paused: bool,
    /// The latest thing to tell (a mark taken, a bad filter, a line tracer wrote to stderr).
    pub status: Option<String>,
    /// Marks asked for and not reported yet.
    pub marks_pending: u32,
    /// The run ended: the view closes.
    pub ended: bool,
}

impl View {
    pub fn new(source: Source, sort: SortKey, limits: LimitSettings) -> View {
        View {
            source,
            limits,
            report: None,
            mark: None,
            held: None,
            history: HashMap::new(),
            pane: Pane::Sites,
            sort,
            filter: None,
            pid: None,
            typing: None,
            selected: 0,
            detail: false,
            help: false,
            // A replay waits at its first report for `n` or `p`.
            paused: source == Source::Replay,
            status: None,
            marks_pending: 0,
            ended: false,
        }
    }

    /// A report from the pipeline.
    pub fn take(&mut self, r: Report) {
        match r.kind {
            ReportKind::Interval => {
                for s in &r.sites {
                    let h = self.history.entry(key_of(s)).or_default();
                    h.push_back(s.live_bytes);
                    if h.len() > HISTORY {
                        h.pop_front();
                    }
                }
                // Sites gone from the reports (retired) do not keep their history forever.
                if self.history.len() > 4 * HISTORY.max(r.sites.len()) {
                    let shown: std::collections::HashSet<SiteKey> =
                        r.sites.iter().map(key_of).collect();
                    self.history.retain(|k, _| shown.contains(k));
                }
                if self.paused && self.source == Source::Live {
                    self.held = Some(r);
                } else {
                    self.report = Some(r);
                }
            }
            ReportKind::Mark => {
                self.marks_pending = self.marks_pending.saturating_sub(1);
                let n = r.mark.unwrap_or(0);
                self.status = Some(format!(
                    "mark {n} taken: {} in {} sites since {} (Tab shows them)",
                    super::draw::signed_bytes(r.totals.delta_bytes),
                    r.sites.len(),
                    since_mark(n)
                ));
                self.mark = Some(r);
            }
            ReportKind::Final => self.ended = true,
        }
        self.clamp();
    }

    /// The live bytes of a site at the interval reports seen, oldest first.
    pub fn history(&self, s: &SiteReport) -> Option<&VecDeque<u64>> {
        self.history.get(&key_of(s))
    }

    /// The report the table shows.
    pub fn shown(&self) -> Option<&Report> {
        match self.pane {
            Pane::Mark => self.mark.as_ref(),
            _ => self.report.as_ref(),
        }
    }

    /// The sites of the table shown, filtered and in the chosen order.
    pub fn rows(&self) -> Vec<&SiteReport> {
        let Some(r) = self.shown() else {
            return Vec::new();
        };
        let mut rows: Vec<&SiteReport> = r
            .sites
            .iter()
            .filter(|s| self.pid.is_none_or(|p| s.pid == p))
            .filter(|s| {
                self.filter.as_ref().is_none_or(|re| {
                    s.frames.iter().any(|f| {
                        re.is_match(&f.name())
                            || f.module.as_deref().is_some_and(|m| re.is_match(m))
                    })
                })
            })
            .collect();
        let by = |s: &SiteReport| -> f64 {
            match self.sort {
                SortKey::Bytes => s.live_bytes as f64,
                SortKey::Objects => s.live_objects as f64,
                SortKey::Rate => s.assessment.rate_bytes_per_s,
            }
        };
        rows.sort_by(|a, b| by(b).total_cmp(&by(a)));
        rows
    }

    /// The site of the selected row.
    pub fn selected_site(&self) -> Option<&SiteReport> {
        self.rows().get(self.selected).copied()
    }

    /// How many rows the table shown has.
    fn len(&self) -> usize {
        match self.pane {
            Pane::Processes => self.report.as_ref().map_or(0, |r| r.processes.len()),
            _ => self.rows().len(),
        }
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.len().saturating_sub(1));
    }

    /// A key pressed: the view changes, and says what it asks of the tracer.
    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(text) = &mut self.typing {
            match k.code {
                KeyCode::Enter => {
                    let text = std::mem::take(text);
                    self.typing = None;
                    if text.is_empty() {
                        self.filter = None;
                    } else {
                        match regex_lite::Regex::new(&text) {
                            Ok(re) => self.filter = Some(re),
                            Err(e) => self.status = Some(format!("bad filter {text:?}: {e}")),
                        }
                    }
                    self.selected = 0;
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            self.help = false;
            if k.code != KeyCode::Char('q') {
                return Action::None;
            }
        }
        let page = 10;
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Esc if self.detail => self.detail = false,
            KeyCode::Esc => self.pid = None,
            // A process: its sites.
            KeyCode::Enter if self.pane == Pane::Processes => {
                if let Some(p) = self
                    .report
                    .as_ref()
                    .and_then(|r| r.processes.get(self.selected))
                {
                    self.pid = Some(p.pid);
                    self.pane = Pane::Sites;
                    self.selected = 0;
                }
            }
            KeyCode::Enter => self.detail = !self.detail && self.len() > 0,
            KeyCode::Char('m') => match self.source {
                Source::Live => {
                    self.marks_pending += 1;
                    self.status = Some("taking a mark…".into());
                    return Action::Mark;
                }
                Source::Replay => {
                    self.status = Some("a replay shows the recording's own marks".into())
                }
            },
            KeyCode::Char('s') => {
                self.sort = match self.sort {
                    SortKey::Rate => SortKey::Bytes,
                    SortKey::Bytes => SortKey::Objects,
                    SortKey::Objects => SortKey::Rate,
                };
                self.selected = 0;
            }
            KeyCode::Char('/') => self.typing = Some(String::new()),
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                match self.source {
                    Source::Live => {
                        if !self.paused {
                            if let Some(r) = self.held.take() {
                                self.report = Some(r);
                            }
                        }
                    }
                    Source::Replay => return Action::Play(!self.paused),
                }
            }
            KeyCode::Char('n') | KeyCode::Char(' ') if self.source == Source::Replay => {
                return Action::Step
            }
            KeyCode::Tab => {
                let multi = self
                    .report
                    .as_ref()
                    .is_some_and(|r| !r.processes.is_empty());
                self.pane = match self.pane {
                    Pane::Sites => Pane::Mark,
                    Pane::Mark if multi => Pane::Processes,
                    _ => Pane::Sites,
                };
                self.detail = false;
                self.selected = 0;
            }
            KeyCode::Down | KeyCode::Char('j') => self.selected += 1,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected += page,
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(page),
            KeyCode::Home | KeyCode::Char('g') => self.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected = usize::MAX,
            _ => {}
        }
        self.clamp();
        Action::None
    }
}

/// What mark `n`'s changes count from.
pub fn since_mark(n: u32) -> String {
    match n {
        0 | 1 => "tracing began".into(),
        n => format!("mark {}", n - 1),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::sample_report;

    pub(crate) const LIMITS: LimitSettings = LimitSettings { ring_size: 8 << 20 };

    fn press(v: &mut View, c: KeyCode) -> Action {
        v.key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    fn typed(v: &mut View, text: &str) {
        for c in text.chars() {
            press(v, KeyCode::Char(c));
        }
    }

    /// Three sites whose orders by rate, bytes and objects all differ.
    pub(crate) fn three_sites() -> Report {
        let mut r = sample_report();
        let one = r.sites[0].clone();
        r.sites.clear();
        for (i, (name, rate, bytes, objects)) in [
            ("leak_fixed", 64.0, 640, 10),
            ("cache_insert", 0.0, 4096, 2),
            ("leak_calloc", 16.0, 800, 40),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = one.clone();
            s.frames[0].function = Some(name.into());
            s.frames[0].addr += i as u64 * 0x40;
            s.assessment.rate_bytes_per_s = rate;
            s.live_bytes = bytes;
            s.live_objects = objects;
            r.sites.push(s);
        }
        r
    }

    fn view() -> View {
        let mut v = View::new(Source::Live, SortKey::Rate, LIMITS);
        v.take(three_sites());
        v
    }

    fn names(v: &View) -> Vec<String> {
        v.rows().iter().map(|s| s.frames[0].name()).collect()
    }

    #[test]
    fn s_cycles_the_order_through_rate_bytes_and_objects() {
        let mut v = view();
        let r = v.report.clone().unwrap();
        let by = |f: fn(&SiteReport) -> f64| {
            let mut s: Vec<&SiteReport> = r.sites.iter().collect();
            s.sort_by(|a, b| f(b).total_cmp(&f(a)));
            s.iter().map(|s| s.frames[0].name()).collect::<Vec<_>>()
        };
        assert_eq!(names(&v), by(|s| s.assessment.rate_bytes_per_s));
        press(&mut v, KeyCode::Char('s'));
        assert_eq!(v.sort, SortKey::Bytes);
        assert_eq!(names(&v), by(|s| s.live_bytes as f64));
        press(&mut v, KeyCode::Char('s'));
        assert_eq!(v.sort, SortKey::Objects);
        assert_eq!(names(&v), by(|s| s.live_objects as f64));
        press(&mut v, KeyCode::Char('s'));
        assert_eq!(v.sort, SortKey::Rate);
    }

    #[test]
    fn a_filter_keeps_the_sites_with_a_matching_frame_and_a_bad_one_is_told() {
        let mut v = view();
        let all = v.rows().len();
        assert!(all >= 2);
        let first = v.report.as_ref().unwrap().sites[0].frames[0].name();
        press(&mut v, KeyCode::Char('/'));
        typed(&mut v, &format!("^{first}$"));
        assert_eq!(v.rows().len(), all, "nothing applies before Enter");
        press(&mut v, KeyCode::Enter);
        assert!(!v.rows().is_empty() && v.rows().len() < all);
        assert!(v
            .rows()
            .iter()
            .all(|s| s.frames.iter().any(|f| f.name() == first)));
        press(&mut v, KeyCode::Char('/'));
        typed(&mut v, "(");
        press(&mut v, KeyCode::Enter);
        assert!(v.status.as_deref().unwrap().starts_with("bad filter"));
        press(&mut v, KeyCode::Char('/'));
        press(&mut v, KeyCode::Enter);
        assert_eq!(v.rows().len(), all, "an empty filter clears it");
    }

    #[test]
    fn keys_ask_the_tracer_for_marks_and_the_end() {
        let mut v = view();
        assert_eq!(press(&mut v, KeyCode::Char('m')), Action::Mark);
        assert_eq!(v.marks_pending, 1);
        let mut mark = sample_report();
        mark.kind = ReportKind::Mark;
        mark.mark = Some(1);
        v.take(mark);
        assert_eq!(v.marks_pending, 0);
        assert!(v.status.as_deref().unwrap().starts_with("mark 1 taken"));
        press(&mut v, KeyCode::Tab);
        assert_eq!(v.pane, Pane::Mark);
        assert_eq!(v.shown().unwrap().kind, ReportKind::Mark);
        assert_eq!(press(&mut v, KeyCode::Char('q')), Action::Quit);
        assert_eq!(
            v.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        // Typing a filter, q is a letter.
        press(&mut v, KeyCode::Char('/'));
        assert_eq!(press(&mut v, KeyCode::Char('q')), Action::None);
    }

    #[test]
    fn pausing_holds_the_display_and_resuming_shows_the_newest() {
        let mut v = view();
        press(&mut v, KeyCode::Char('p'));
        let mut newer = three_sites();
        newer.elapsed_s += 5.0;
        v.take(newer.clone());
        assert_ne!(v.report.as_ref().unwrap().elapsed_s, newer.elapsed_s);
        press(&mut v, KeyCode::Char('p'));
        assert_eq!(v.report.as_ref().unwrap().elapsed_s, newer.elapsed_s);
    }

    #[test]
    fn a_replay_steps_and_plays_and_has_no_marks_of_its_own() {
        let mut v = View::new(Source::Replay, SortKey::Rate, LIMITS);
        assert!(v.paused);
        assert_eq!(press(&mut v, KeyCode::Char('n')), Action::Step);
        assert_eq!(press(&mut v, KeyCode::Char(' ')), Action::Step);
        assert_eq!(press(&mut v, KeyCode::Char('p')), Action::Play(true));
        assert_eq!(press(&mut v, KeyCode::Char('p')), Action::Play(false));
        assert_eq!(press(&mut v, KeyCode::Char('m')), Action::None);
    }

    #[test]
    fn enter_on_a_process_shows_its_sites_and_esc_all_of_them() {
        let mut r = three_sites();
        r.pid = 0;
        r.sites[1].pid = 7;
        let mut p = crate::report::ProcessReport {
            pid: 7,
            lost: 0,
            command: "other".into(),
            allocator: String::new(),
            allocator_kind: String::new(),
            exited: false,
            totals: Default::default(),
            summary: Default::default(),
            sites: Vec::new(),
            sites_omitted: 0,
        };
        r.processes.push(p.clone());
        p.pid = 42;
        r.processes.push(p);
        let mut v = View::new(Source::Live, SortKey::Rate, LIMITS);
        v.take(r);
        press(&mut v, KeyCode::Tab);
        press(&mut v, KeyCode::Tab);
        assert_eq!(v.pane, Pane::Processes);
        press(&mut v, KeyCode::Enter);
        assert_eq!((v.pane, v.pid), (Pane::Sites, Some(7)));
        assert_eq!(names(&v), ["cache_insert"]);
        press(&mut v, KeyCode::Esc);
        assert_eq!(v.rows().len(), 3);
    }

    #[test]
    fn history_follows_each_site_across_reports() {
        let mut v = view();
        let mut r = three_sites();
        r.sites[0].live_bytes += 100;
        v.take(r.clone());
        let h = v.history(&r.sites[0]).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1], h[0] + 100);
    }

    #[test]
    fn selection_stays_on_the_table_and_enter_opens_a_site() {
        let mut v = view();
        let n = v.rows().len();
        press(&mut v, KeyCode::End);
        assert_eq!(v.selected, n - 1);
        press(&mut v, KeyCode::Down);
        assert_eq!(v.selected, n - 1);
        press(&mut v, KeyCode::Enter);
        assert!(v.detail);
        assert!(v.selected_site().is_some());
        press(&mut v, KeyCode::Esc);
        assert!(!v.detail);
        let mut fin = sample_report();
        fin.kind = ReportKind::Final;
        v.take(fin);
        assert!(v.ended);
    }
}
