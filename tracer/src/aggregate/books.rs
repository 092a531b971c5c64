//! The books: the ledger of live blocks together with what verdicts are judged from, the
//! history of its counts at each report after warm-up, the bases of intervals and marks, and
//! the losses seen on the way.
//!
//! Owns no I/O. A report asks the books for the two snapshots it compares ([`Books::interval`],
//! [`Books::mark`], [`Books::end`]) and for each row's verdict ([`Books::judge`]), a pure
//! function of the history.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tracer_common::losses::{Touches, LOSSES};

use super::{
    remap_counts,
    verdict::{self, Assessment, Sample, Verdict, VerdictParams, VerdictScope, Warmup},
    Counts, Ledger, SiteId, Snapshot,
};
use crate::collector::Counters;

/// Cumulative losses by the sites they may leave wrong (see `losses::Touches`).
#[derive(Clone, Copy, Debug, Default)]
struct Lost {
    heap: u64,
    mappings: u64,
    any: u64,
    no_stack: u64,
}

impl Lost {
    fn of(c: &Counters) -> Lost {
        let mut l = Lost::default();
        for loss in LOSSES {
            let n = c.of(loss);
            match loss.touches {
                Touches::Heap => l.heap += n,
                Touches::Mappings => l.mappings += n,
                Touches::Any => l.any += n,
                Touches::NoStack => l.no_stack += n,
                Touches::None => {}
            }
        }
        l
    }
}

/// One report's per-site counts, kept for verdicts.
struct Point {
    t_ns: u64,
    sites: Vec<Counts>,
    /// Cumulative losses, by the sites they touch.
    lost: Lost,
    /// Events lost per process (when the kernel counts them so), and those no process can be
    /// named for (undecodable records).
    lost_by_pid: Arc<BTreeMap<u32, u64>>,
    lost_unattributed: u64,
}

/// A snapshot and when it was taken (ns since the start).
pub type Base = (Snapshot, u64);

/// How verdicts are judged: the thresholds, the warm-up, the report interval.
#[derive(Clone, Copy, Debug)]
pub struct Judging {
    pub verdict: VerdictParams,
    pub warmup: Warmup,
    pub interval: Duration,
}

pub struct Books {
    pub ledger: Ledger,
    judging: Judging,
    /// Points after warm-up, at most `window + 1`, oldest first.
    history: VecDeque<Point>,
    /// Interval reports made so far.
    intervals: u32,
    interval_base: Base,
    mark_base: Base,
    /// The mark before the last one (growth between the last two marks).
    prev_mark: Option<Base>,
    marks: u32,
    /// Events lost per process, as last told (see `set_process_losses`); whether they are
    /// told at all (recordings of earlier tracers do not).
    lost_by_pid: Arc<BTreeMap<u32, u64>>,
    per_process_losses: bool,
    /// The launched command has ended (the final report's verdicts stop before its end).
    command_ended: bool,
}

/// Retired sites held before the ledger forgets them (a compaction walks every site).
pub const COMPACT_AFTER: usize = 4096;

impl Books {
    pub fn new(judging: Judging) -> Books {
        let mut b = Books {
            ledger: Ledger::new(),
            judging,
            history: VecDeque::new(),
            intervals: 0,
            interval_base: (Snapshot::default(), 0),
            mark_base: (Snapshot::default(), 0),
            prev_mark: None,
            marks: 0,
            lost_by_pid: Arc::default(),
            per_process_losses: false,
            command_ended: false,
        };
        // With no warm-up, the window starts from nothing at time zero.
        if b.past_warmup(0) {
            b.history.push_back(Point {
                t_ns: 0,
                sites: Vec::new(),
                lost: Lost::default(),
                lost_by_pid: Arc::default(),
                lost_unattributed: 0,
            });
        }
        b
    }

    /// An interval report at `t_ns`: the snapshot now (kept for verdicts) and the base it is
    /// compared with, the previous interval's (or the start's, `since_attach`).
    pub fn interval(&mut self, t_ns: u64, c: &Counters, since_attach: bool) -> (Snapshot, Base) {
        self.intervals += 1;
        let snap = self.ledger.snapshot(t_ns);
        self.remember(&snap, c);
        let base = std::mem::replace(&mut self.interval_base, (snap.clone(), t_ns));
        if since_attach {
            return (snap, (Snapshot::default(), 0));
        }
        (snap, base)
    }

    /// A mark at `t_ns`: its number, the snapshot now and the previous mark's (or the start's).
    pub fn mark(&mut self, t_ns: u64) -> (u32, Snapshot, Base) {
        self.marks += 1;
        let snap = self.ledger.snapshot(t_ns);
        let base = std::mem::replace(&mut self.mark_base, (snap.clone(), t_ns));
        self.prev_mark = (self.marks > 1).then(|| base.clone());
        (self.marks, snap, base)
    }

    /// The end at `t_ns`: the snapshot now, kept for verdicts. `command_ended`: the launched
    /// command exited (its last point is after its end, see `assess`).
    pub fn end(&mut self, t_ns: u64, c: &Counters, command_ended: bool) -> Snapshot {
        let snap = self.ledger.snapshot(t_ns);
        if self.history.back().is_none_or(|p| p.t_ns < t_ns) {
            self.remember(&snap, c);
        }
        self.command_ended = command_ended;
        snap
    }

    /// The two snapshots growth is read between: the last two marks when there were two,
    /// else the last mark (or the start) and now.
    pub fn growth(&self, t_ns: u64) -> (Base, Base) {
        match &self.prev_mark {
            Some(prev) => (prev.clone(), self.mark_base.clone()),
            None => (self.mark_base.clone(), (self.ledger.snapshot(t_ns), t_ns)),
        }
    }

    /// The events lost so far per process, as the kernel counts them: from now on a loss
    /// makes only its own process's verdicts uncertain. Whether that changed anything.
    pub fn set_process_losses(&mut self, lost: BTreeMap<u32, u64>) -> bool {
        if self.per_process_losses && lost == *self.lost_by_pid {
            return false;
        }
        self.per_process_losses = true;
        self.lost_by_pid = Arc::new(lost);
        true
    }

    /// Events the kernel lost of a process (0 when it does not count them per process).
    pub fn lost_of(&self, pid: u32) -> u64 {
        self.lost_by_pid.get(&pid).copied().unwrap_or(0)
    }

    /// Closes the books of processes gone; forgets their sites once enough are retired
    /// (every snapshot kept by site id follows the ledger).
    pub fn retire(&mut self, gone: &[u32]) {
        self.ledger.retire_all(gone);
        if self.ledger.retired_sites() < COMPACT_AFTER {
            return;
        }
        let map = self.ledger.compact();
        for p in &mut self.history {
            p.sites = remap_counts(&p.sites, &map);
        }
        self.interval_base.0.remap(&map);
        self.mark_base.0.remap(&map);
        if let Some((s, _)) = &mut self.prev_mark {
            s.remap(&map);
        }
    }

    fn past_warmup(&self, t_ns: u64) -> bool {
        match self.judging.warmup {
            Warmup::Secs(s) => t_ns as f64 >= s * 1e9,
            Warmup::Intervals(n) => self.intervals >= n,
        }
    }

    /// The warm-up in seconds.
    pub fn warmup_s(&self) -> f64 {
        match self.judging.warmup {
            Warmup::Secs(s) => s,
            Warmup::Intervals(n) => n as f64 * self.judging.interval.as_secs_f64(),
        }
    }

    /// Keeps this moment's counts for verdicts (once past warm-up).
    fn remember(&mut self, snap: &Snapshot, c: &Counters) {
        if !self.past_warmup(snap.ts_ns) {
            return;
        }
        self.history.push_back(Point {
            t_ns: snap.ts_ns,
            sites: snap.sites.clone(),
            lost: Lost::of(c),
            lost_by_pid: self.lost_by_pid.clone(),
            lost_unattributed: c.bad_records,
        });
        while self.history.len() > self.judging.verdict.window + 1 {
            self.history.pop_front();
        }
    }

    /// The verdict of a group of sites (one reported row) from the history. `exited` says
    /// which processes have ended.
    fn assess(&self, members: &[SiteId], exited: &dyn Fn(u32) -> bool) -> Assessment {
        let zero = Counts::default();
        // The point taken after a process ended says how it ended, not how it was going: its
        // last interval may hold a few milliseconds of its life. Verdicts stop at the point
        // before (its outstanding numbers do not).
        let ended = self.command_ended
            || members
                .iter()
                .any(|&m| self.ledger.site(m).key.is_some_and(|k| exited(k.pid)));
        let upto = if ended && self.history.len() > 2 {
            self.history.len() - 1
        } else {
            self.history.len()
        };
        let samples: Vec<Sample> = self
            .history
            .iter()
            .take(upto)
            .map(|p| {
                let mut s = Sample {
                    t: p.t_ns as f64 / 1e9,
                    ..Sample::default()
                };
                for &m in members {
                    let c = p.sites.get(m).unwrap_or(&zero);
                    s.live_bytes += c.live_bytes;
                    s.live_objects += c.live_objects;
                    s.live_blocks += c.live_blocks;
                    s.blocks += c.blocks;
                    s.alloc_bytes += c.alloc_bytes;
                    s.allocs += c.allocs;
                }
                s
            })
            .collect();
        verdict::assess(&samples, &self.judging.verdict, self.lost(members))
    }

    /// Whether events the sites may have had were lost in the window.
    fn lost(&self, members: &[SiteId]) -> bool {
        let zero = Counts::default();
        let (Some(first), Some(last)) = (self.history.front(), self.history.back()) else {
            return false;
        };
        let active = members.iter().any(|&m| {
            let a = first.sites.get(m).unwrap_or(&zero);
            let b = last.sites.get(m).unwrap_or(&zero);
            a.allocs != b.allocs || a.frees != b.frees
        });
        let no_stack = members
            .iter()
            .any(|&m| self.ledger.site(m).key.is_some_and(|k| k.stack_id < 0));
        let grew = |f: fn(&Lost) -> u64| f(&last.lost) > f(&first.lost);
        // A loss touches the sites of its kind: mapping records lost leave heap blocks right,
        // and the other way round.
        let mapping = members.iter().any(|&m| self.ledger.site(m).mapping);
        let of_kind = grew(|l| l.any)
            || if mapping {
                grew(|l| l.mappings)
            } else {
                grew(|l| l.heap)
            };
        // Losses the kernel names a process for touch that process's sites only.
        let lost = if self.per_process_losses {
            last.lost_unattributed > first.lost_unattributed
                || (of_kind
                    && members.iter().any(|&m| {
                        self.ledger.site(m).key.is_some_and(|k| {
                            last.lost_by_pid.get(&k.pid) != first.lost_by_pid.get(&k.pid)
                        })
                    }))
        } else {
            of_kind
        };
        (active && lost) || (no_stack && grew(|l| l.no_stack))
    }

    /// A row's verdict, judged once per row with [`Judge::of`].
    pub fn judge<'a>(&'a self, exited: &'a dyn Fn(u32) -> bool) -> Judge<'a> {
        let mut points: HashMap<(u32, u64), Vec<SiteId>> = HashMap::new();
        for (id, s) in self.ledger.sites().iter().enumerate() {
            if let (Some(k), Some(&first)) = (s.key, s.frames.first()) {
                points.entry((k.pid, first)).or_default().push(id);
            }
        }
        Judge {
            books: self,
            exited,
            points,
            cache: HashMap::new(),
        }
    }
}

/// Judges the rows of one report. Every site is known by its allocation point too: the process
/// and the return address into the allocator's caller (the call instruction that allocates).
pub struct Judge<'a> {
    books: &'a Books,
    exited: &'a dyn Fn(u32) -> bool,
    points: HashMap<(u32, u64), Vec<SiteId>>,
    cache: HashMap<(u32, u64), Assessment>,
}

impl Judge<'_> {
    /// A row's verdict. A stack is judged by its own history, unless all the stacks through
    /// its allocation point together do not grow: then one stack's growth is another's
    /// shrinking (a cache filled from one caller and refilled from another) and the point's
    /// verdict holds.
    pub fn of(&mut self, members: &[SiteId]) -> Assessment {
        let books = self.books;
        let mut own = books.assess(members, self.exited);
        if !matches!(own.verdict, Verdict::Leak | Verdict::Freed) {
            return own;
        }
        let site = books.ledger.site(members[0]);
        let (Some(k), Some(&first)) = (site.key, site.frames.first()) else {
            return own;
        };
        let Some(all) = self.points.get(&(k.pid, first)) else {
            return own;
        };
        if all.iter().all(|m| members.contains(m)) {
            return own;
        }
        let exited = self.exited;
        let point = *self
            .cache
            .entry((k.pid, first))
            .or_insert_with(|| books.assess(all, exited));
        if matches!(point.verdict, Verdict::Plateau | Verdict::Churn) {
            own.verdict = point.verdict;
            own.verdict_scope = VerdictScope::AllocationPoint;
        }
        own
    }
}
