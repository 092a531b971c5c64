//! `--live`: a full-screen view of the reports as they come, on a thread of its own.
//!
//! The view is one more place reports go (a sink of the engine, like the metrics endpoint):
//! it gets each interval and mark report, and the final one closes it, before that report is
//! written on the normal screen. What a key asks of the tracer (a mark, the end, the next step
//! of a replay) goes back through the [`Action`] handler the caller gives. The state and its
//! keys are `state`, drawing is `draw`, the terminal is `term`.
use std::{
    sync::{mpsc, Condvar, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::{
    config::ReportOptions,
    report::{LimitSettings, Report, ReportKind, SortKey},
};

mod draw;
mod state;
mod term;

use state::View;
pub use state::{Action, Source};

/// How often the view looks for keys and reports.
const POLL: Duration = Duration::from_millis(50);

enum Msg {
    Report(Box<Report>),
    /// A line tracer wrote on stderr while the view was up.
    Said(String),
    Close,
}

/// The running view. Dropping it gives the terminal back.
pub struct Live {
    tx: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Live {
    /// Starts the view on the controlling terminal; `act` is told what keys ask of the
    /// tracer. The reason when there is no terminal to draw on.
    pub fn start(
        source: Source,
        sort: SortKey,
        limits: LimitSettings,
        mut act: Box<dyn FnMut(Action) + Send>,
    ) -> Result<Live, String> {
        let screen = term::open()?;
        let (tx, rx) = mpsc::channel();
        // tracer's own stderr, caught while the view is up, goes to the view line by line.
        let said = tx.clone();
        let caught = term::Caught::start(Box::new(move |line| {
            let _ = said.send(Msg::Said(line));
        }))
        .ok();
        let view = View::new(source, sort, limits);
        let thread = std::thread::Builder::new()
            .name("live-view".into())
            .spawn(move || {
                let closed = run(screen, view, rx, &mut act);
                term::restore();
                if !closed {
                    // The terminal went away: nobody watches, so tracing ends as with `q`.
                    act(Action::Quit);
                }
                if let Some(c) = caught {
                    c.release();
                }
            })
            .map_err(|e| {
                term::restore();
                format!("cannot start the view: {e}")
            })?;
        Ok(Live {
            tx,
            thread: Some(thread),
        })
    }

    /// A report for the view; the final one closes it (and returns once the terminal is
    /// back, so that the report is written on the normal screen).
    pub fn show(&mut self, r: &Report) {
        if r.kind == ReportKind::Final {
            self.close();
        } else {
            let _ = self.tx.send(Msg::Report(Box::new(r.clone())));
        }
    }

    fn close(&mut self) {
        let _ = self.tx.send(Msg::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.close();
    }
}

/// Starts the view when `--live` asked for it and there is a terminal; says why not otherwise
/// (the reports are then printed as usual).
pub fn start_if_asked(
    opts: &ReportOptions,
    source: Source,
    limits: LimitSettings,
    act: Box<dyn FnMut(Action) + Send>,
) -> Option<Live> {
    if !opts.live {
        return None;
    }
    match Live::start(source, opts.sort, limits, act) {
        Ok(v) => Some(v),
        Err(why) => {
            eprintln!("tracer: note: --live: {why}; the reports are printed instead");
            None
        }
    }
}

/// The view's loop: reports and keys in, the screen redrawn when something changed. True
/// when it was closed, false when the terminal went away.
fn run(
    mut screen: term::Screen,
    mut view: View,
    rx: mpsc::Receiver<Msg>,
    act: &mut Box<dyn FnMut(Action) + Send>,
) -> bool {
    let mut dirty = true;
    let mut quitting = false;
    loop {
        loop {
            match rx.try_recv() {
                Ok(Msg::Report(r)) => {
                    // A full redraw: a launched command writing on the same terminal leaves
                    // no trace past the next report.
                    if r.kind == ReportKind::Interval {
                        let _ = screen.clear();
                    }
                    view.take(*r);
                    dirty = true;
                }
                Ok(Msg::Said(line)) => {
                    view.status = Some(line);
                    dirty = true;
                }
                Ok(Msg::Close) | Err(mpsc::TryRecvError::Disconnected) => return true,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if dirty {
            if screen.draw(|f| draw::draw(f, &view)).is_err() {
                return false;
            }
            dirty = false;
        }
        match event::poll(POLL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return false,
        }
        match event::read() {
            Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                let a = view.key(k);
                if a == Action::Quit {
                    view.status = Some(if quitting {
                        "ending without waiting".into()
                    } else {
                        "ending: the final report follows (q again to stop waiting)".into()
                    });
                    quitting = true;
                }
                if a != Action::None {
                    act(a);
                }
                dirty = true;
            }
            Ok(Event::Resize(..)) => {
                let _ = screen.autoresize();
                dirty = true;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// How a replay shown live goes on: one report at a time (`n`), at the recording's pace
/// (`p`), or to its end without waiting (the view was closed).
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    /// Reports allowed through without waiting.
    steps: u32,
    playing: bool,
    open: bool,
    /// The last report let through, in ns of the recording.
    last_ns: Option<u64>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            // The first report shows at once.
            state: Mutex::new(GateState {
                steps: 1,
                playing: false,
                open: false,
                last_ns: None,
            }),
            changed: Condvar::new(),
        }
    }
}

impl Gate {
    fn with(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_all();
    }

    /// What a key asked.
    pub fn act(&self, a: Action) {
        match a {
            Action::Step => self.with(|s| s.steps += 1),
            Action::Play(on) => self.with(|s| s.playing = on),
            Action::Quit => self.open(),
            Action::Mark | Action::None => {}
        }
    }

    /// No more waiting.
    pub fn open(&self) {
        self.with(|s| s.open = true);
    }

    /// Waits until the report at `t_ns` (of the recording) may be made.
    pub fn wait(&self, t_ns: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if s.open {
                return;
            }
            if s.steps > 0 {
                s.steps -= 1;
                s.last_ns = Some(t_ns);
                return;
            }
            if s.playing {
                // The recording's own pace, from the last report shown.
                let due = Duration::from_nanos(t_ns.saturating_sub(s.last_ns.unwrap_or(t_ns)))
                    .min(Duration::from_secs(10));
                let (next, timeout) = self
                    .changed
                    .wait_timeout(s, due)
                    .unwrap_or_else(|p| p.into_inner());
                s = next;
                if timeout.timed_out() && s.playing {
                    s.last_ns = Some(t_ns);
                    return;
                }
                continue;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Arc, time::Instant};

    #[test]
    fn a_gate_lets_the_first_report_through_then_one_per_step() {
        let g = Arc::new(Gate::default());
        g.wait(1_000_000_000);
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let g = g.clone();
            std::thread::spawn(move || {
                g.wait(2_000_000_000);
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "it waits"
        );
        g.act(Action::Step);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a step lets it go");
        waiter.join().unwrap();
    }

    #[test]
    fn playing_keeps_the_recordings_pace_and_an_open_gate_never_waits() {
        let g = Gate::default();
        g.wait(0);
        g.act(Action::Play(true));
        let t = Instant::now();
        g.wait(300_000_000);
        assert!(t.elapsed() >= Duration::from_millis(300));
        g.open();
        let t = Instant::now();
        g.act(Action::Play(false));
        g.wait(100_000_000_000);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
