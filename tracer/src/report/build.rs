//! Report builders: a report of the books as they stand, a pure function of the books, the
//! process table, the symbols and the report options. Writers (`table`, `json`) take what is
//! built here.
use std::collections::{BTreeMap, HashMap, HashSet};

use tracer_common::{counter, losses::LOSSES};

use super::{
    round3,
    rows::{self, Group},
    Category, EventCounts, ProcessReport, Report, ReportKind, SiteReport, SortKey, Summary, Totals,
};
use crate::{
    aggregate::{books::Books, verdict::Verdict, SiteDelta, SiteId, Snapshot},
    collector::Counters,
    procs::Procs,
    reach::summary::{
        add, classes, holders, Link, ScanStats, SiteReach, SiteScan, Tally, TypeCount,
    },
    symbolize::{Frame, Symbolizer},
};

/// How reports select and order their rows (the report options that concern building).
#[derive(Debug, Clone)]
pub struct Selection {
    /// At most this many sites a report (and a process of one).
    pub top: usize,
    /// At most this many sites an interval or mark report (more for the live view).
    pub interval_top: usize,
    pub sort: SortKey,
    /// Only sites with a frame that matches.
    pub site: Option<regex_lite::Regex>,
    /// The final report: only blocks at least this old.
    pub older_than: Option<std::time::Duration>,
    /// Several processes: at most this many listed.
    pub processes: usize,
}

/// What a report is built from.
pub struct Builder<'a> {
    pub books: &'a Books,
    pub procs: &'a Procs,
    pub opts: &'a Selection,
    /// The start, on the clock of the events' timestamps (for ages).
    pub start_mono_ns: u64,
    /// Mean bytes between sampled allocations (0: every call was recorded).
    pub sample_rate: u64,
    /// Symbolizes the sites listed (its caches fill as it goes).
    pub symbols: &'a mut Symbolizer,
    /// Each process's last reachability scan, per site.
    pub scans: &'a HashMap<u32, HashMap<SiteId, SiteScan>>,
    pub scan_stats: &'a BTreeMap<u32, ScanStats>,
}

impl Builder<'_> {
    fn counters(&self, c: &Counters) -> (BTreeMap<&'static str, u64>, EventCounts) {
        let lost = LOSSES.iter().map(|l| (l.key, c.of(l))).collect();
        let st = self.books.ledger.stats;
        let events = EventCounts {
            allocs: c.get(counter::ALLOCS),
            frees: c.get(counter::FREES),
            received_allocs: st.alloc_events,
            received_frees: st.free_events,
            nested: c.get(counter::NESTED),
            failed: c.get(counter::FAILED),
            unknown_frees: st.unknown_frees,
            filtered: c.get(counter::FILTERED),
            maps: c.get(counter::MAPS),
            received_maps: st.map_events,
            received_unmaps: st.unmap_events,
            heap_releases: st.heap_releases,
            heap_freed: st.heap_freed,
            thrown: c.get(counter::THROWN),
            fp_fallback: c.get(counter::FP_FALLBACK),
            fp_maps_busy: c.get(counter::FP_MAPS_BUSY),
        };
        (lost, events)
    }

    /// A report of `kind` from the change `base` → `snap`: selects the sites, merges those
    /// whose stacks read the same (e.g. the copies of an unrolled loop's call), judges,
    /// describes their blocks, filters, sorts and keeps the top N. Tracing several processes,
    /// of `only` (no limit), or else of the `--processes` that grew most (outstanding most, in
    /// the final report): only their sites are symbolized and judged; the totals are
    /// everyone's.
    pub fn report(
        &mut self,
        kind: ReportKind,
        snap: &Snapshot,
        base: &Snapshot,
        window_ns: u64,
        c: &Counters,
        only: Option<&[u32]>,
    ) -> Report {
        let t = self.books.ledger.totals();
        let m = self.books.ledger.mapping_totals();
        let mut totals = Totals {
            live_objects: t.live_objects,
            live_bytes: t.live_bytes,
            mmap_live_objects: m.live_objects,
            mmap_live_bytes: m.live_bytes,
            ..Totals::default()
        };
        let deltas = snap.diff(base);
        let listed = self
            .procs
            .multi()
            .then(|| self.listed_processes(kind, &deltas, only));
        let pid_of = |id: SiteId| self.books.ledger.site(id).key.map_or(0, |k| k.pid);
        let mut picked: Vec<SiteDelta> = Vec::new();
        for d in deltas {
            if self.books.ledger.site(d.site).retired {
                continue;
            }
            if listed
                .as_ref()
                .is_some_and(|(l, _)| !l.contains(&pid_of(d.site)))
            {
                totals.delta_objects += d.delta_objects;
                totals.delta_bytes += d.delta_bytes;
                totals.allocs += d.delta_allocs;
                totals.frees += d.delta_frees;
                continue;
            }
            totals.delta_objects += d.delta_objects;
            totals.delta_bytes += d.delta_bytes;
            totals.allocs += d.delta_allocs;
            totals.frees += d.delta_frees;
            let keep = match kind {
                ReportKind::Interval => true,
                ReportKind::Mark => d.delta_objects != 0 || d.delta_bytes != 0,
                ReportKind::Final => d.now.live_objects > 0,
            };
            if keep {
                picked.push(d);
            }
        }
        let mut groups = self.group(picked.iter().map(|d| d.site));
        let delta_of: HashMap<SiteId, &SiteDelta> = picked.iter().map(|d| (d.site, d)).collect();
        for g in &mut groups {
            for d in g.members.iter().map(|m| delta_of[m]) {
                g.live_objects += d.now.live_objects;
                g.live_bytes += d.now.live_bytes;
                g.delta_objects += d.delta_objects;
                g.delta_bytes += d.delta_bytes;
                g.allocs += d.delta_allocs;
                g.frees += d.delta_frees;
            }
        }
        if let Some(re) = &self.opts.site {
            groups.retain(|g| g.frames.iter().any(|f| frame_matches(re, f)));
        }
        let now_mono = self.start_mono_ns + snap.ts_ns;
        let cutoff = match (kind, self.opts.older_than) {
            (ReportKind::Final, Some(age)) => Some(now_mono.saturating_sub(age.as_nanos() as u64)),
            _ => None,
        };
        let blocks = rows::describe_blocks(&self.books.ledger, &groups, cutoff);
        let procs = self.procs;
        let exited = |pid: u32| procs.exited(pid);
        let mut judge = self.books.judge(&exited);
        if cutoff.is_some() {
            totals.live_objects = 0;
            totals.live_bytes = 0;
        }
        let mut sites: Vec<SiteReport> = Vec::with_capacity(groups.len());
        for (g, b) in groups.into_iter().zip(blocks) {
            let (mut live_objects, mut live_bytes) = (g.live_objects, g.live_bytes);
            if cutoff.is_some() {
                (live_objects, live_bytes) = (b.objects, b.bytes);
                totals.live_objects += live_objects;
                totals.live_bytes += live_bytes;
                if live_objects == 0 {
                    continue;
                }
            }
            let (delta_objects, delta_bytes) = match kind {
                ReportKind::Final => (live_objects as i64, live_bytes as i64),
                _ => (g.delta_objects, g.delta_bytes),
            };
            let assessment = judge.of(&g.members);
            let (types, reachability) = scanned(self.scans.get(&g.pid), &g.members);
            let verdict_detail = match (&assessment.verdict, &reachability) {
                (Verdict::Leak, Some(r)) => r.leak_detail(),
                _ => None,
            };
            sites.push(SiteReport {
                verdict_detail,
                types,
                reachability,
                pid: g.pid,
                category: if g.mapping {
                    Category::Mmap
                } else {
                    Category::Heap
                },
                assessment,
                objects: b.summary(now_mono),
                stack_cut: g
                    .frames
                    .last()
                    .filter(|f| f.is_cut())
                    .and_then(|f| f.unsymbolized.clone()),
                frames: g.frames,
                live_objects,
                live_bytes,
                delta_objects,
                delta_bytes,
                allocs: g.allocs,
                frees: g.frees,
            });
        }
        if cutoff.is_some() {
            totals.delta_objects = totals.live_objects as i64;
            totals.delta_bytes = totals.live_bytes as i64;
        }
        let summary = summarize(&sites);
        sort(&mut sites, kind, self.opts.sort);
        let (processes, processes_omitted) = match &listed {
            Some((l, omitted)) => (self.processes(kind, &sites, &picked, l), *omitted),
            None => (Vec::new(), 0),
        };
        let top = match kind {
            ReportKind::Final => self.opts.top,
            _ => self.opts.interval_top,
        };
        let omitted = sites.len().saturating_sub(top);
        sites.truncate(top);
        self.name_chains(&mut sites);
        let (lost, events) = self.counters(c);
        let (subject_pid, subject) = self.procs.subject();
        Report {
            kind,
            elapsed_s: round3(snap.ts_ns as f64 / 1e9),
            window_s: round3(window_ns as f64 / 1e9),
            pid: subject_pid,
            command: subject.command.clone(),
            allocator: subject.allocator.clone(),
            allocator_kind: subject.allocator_kind.clone(),
            lost,
            events,
            totals,
            sites,
            sites_omitted: omitted,
            summary,
            warmup_s: round3(self.books.warmup_s()),
            mark: None,
            processes,
            exit_code: None,
            classes: Vec::new(),
            scans: self
                .scan_stats
                .iter()
                .map(|(&pid, &stats)| super::ScanReport { pid, stats })
                .collect(),
            exited_omitted: 0,
            processes_omitted,
            warnings: Vec::new(),
            unwind: None,
            sampling: (self.sample_rate != 0).then_some(super::Sampling {
                rate_bytes: self.sample_rate,
                estimates: true,
            }),
        }
    }

    /// The processes a several-process report lists: `only`, or the `--processes` that grew
    /// most in the window (then outstanding most; in the final report, outstanding most).
    /// Returns them and how many others had sites.
    fn listed_processes(
        &self,
        kind: ReportKind,
        deltas: &[SiteDelta],
        only: Option<&[u32]>,
    ) -> (HashSet<u32>, usize) {
        if let Some(only) = only {
            return (only.iter().copied().collect(), 0);
        }
        // (growth, outstanding) per process.
        let mut score: HashMap<u32, (i64, u64)> = HashMap::new();
        for s in self.books.ledger.sites().iter().filter(|s| !s.retired) {
            if let Some(k) = s.key {
                score.entry(k.pid).or_default().1 += s.counts.live_bytes;
            }
        }
        for d in deltas {
            if let Some(k) = self.books.ledger.site(d.site).key {
                score.entry(k.pid).or_default().0 += d.delta_bytes;
            }
        }
        // The final report lists every process that exited since the last report: they join
        // the exited ones under `--keep-exited` (see `finish`).
        let mut listed: HashSet<u32> = HashSet::new();
        if kind == ReportKind::Final {
            score.retain(|pid, _| {
                let exited = self.procs.exited(*pid);
                if exited {
                    listed.insert(*pid);
                }
                !exited
            });
        }
        let mut all: Vec<(u32, (i64, u64))> = score.into_iter().collect();
        all.sort_by_key(|&(pid, (growth, live))| match kind {
            ReportKind::Final => (std::cmp::Reverse(live as i64), std::cmp::Reverse(0), pid),
            _ => (std::cmp::Reverse(growth), std::cmp::Reverse(live), pid),
        });
        let keep = self.opts.processes.min(all.len());
        let omitted = all.len() - keep;
        listed.extend(all.into_iter().take(keep).map(|(p, _)| p));
        (listed, omitted)
    }

    /// The events lost so far per process, as the kernel counts them: from now on a loss
    /// The process level of a several-process report: each process with its totals, verdict
    /// summary and top sites (`sites` sorted, all of them), the top processes first.
    fn processes(
        &self,
        kind: ReportKind,
        sites: &[SiteReport],
        picked: &[SiteDelta],
        listed: &HashSet<u32>,
    ) -> Vec<ProcessReport> {
        let mut per: BTreeMap<u32, ProcessReport> = BTreeMap::new();
        let entry = |per: &mut BTreeMap<u32, ProcessReport>, pid: u32| {
            per.entry(pid)
                .or_insert_with(|| {
                    let info = self.procs.get(pid).cloned().unwrap_or_default();
                    ProcessReport {
                        pid,
                        lost: self.books.lost_of(pid),
                        command: info.command,
                        allocator: info.allocator,
                        allocator_kind: info.allocator_kind,
                        exited: info.exited,
                        totals: Totals::default(),
                        summary: Summary::default(),
                        sites: Vec::new(),
                        sites_omitted: 0,
                    }
                })
                .pid
        };
        for s in self.books.ledger.sites().iter().filter(|s| !s.retired) {
            let Some(k) = s.key else { continue };
            if !listed.contains(&k.pid) {
                continue;
            }
            if s.counts.live_objects > 0 || kind != ReportKind::Final {
                entry(&mut per, k.pid);
            }
            if let Some(p) = per.get_mut(&k.pid) {
                p.totals.live_objects += s.counts.live_objects;
                p.totals.live_bytes += s.counts.live_bytes;
            }
        }
        for d in picked {
            let pid = self.books.ledger.site(d.site).key.map_or(0, |k| k.pid);
            entry(&mut per, pid);
            let t = &mut per.get_mut(&pid).expect("just added").totals;
            t.delta_objects += d.delta_objects;
            t.delta_bytes += d.delta_bytes;
            t.allocs += d.delta_allocs;
            t.frees += d.delta_frees;
        }
        for s in sites {
            entry(&mut per, s.pid);
            per.get_mut(&s.pid)
                .expect("just added")
                .sites
                .push(s.clone());
        }
        let mut out: Vec<ProcessReport> = per
            .into_values()
            .filter(|p| !p.sites.is_empty() || p.totals.live_objects > 0)
            .map(|mut p| {
                if kind == ReportKind::Final {
                    p.totals.delta_objects = p.totals.live_objects as i64;
                    p.totals.delta_bytes = p.totals.live_bytes as i64;
                }
                p.summary = summarize(&p.sites);
                p.sites_omitted = p.sites.len().saturating_sub(self.opts.top);
                p.sites.truncate(self.opts.top);
                p
            })
            .collect();
        out.sort_by(|a, b| match kind {
            ReportKind::Final => b.totals.live_bytes.cmp(&a.totals.live_bytes),
            _ => b
                .totals
                .delta_bytes
                .cmp(&a.totals.delta_bytes)
                .then(b.totals.live_bytes.cmp(&a.totals.live_bytes)),
        });
        out
    }

    /// Symbolizes sites and merges those whose stacks read the same: one group per row.
    /// The chains of holders of the sites listed, their sites named.
    fn name_chains(&mut self, sites: &mut [SiteReport]) {
        for s in sites {
            let Some(r) = &mut s.reachability else {
                continue;
            };
            let links = std::mem::take(&mut r.links);
            r.chain = links
                .into_iter()
                .map(|link| match link {
                    Link::Root(name) => name,
                    Link::Site { site, blocks } => {
                        let frames = self
                            .group(std::iter::once(site))
                            .pop()
                            .map(|g| g.frames)
                            .unwrap_or_default();
                        // Its own frame is enough in a chain.
                        let label = super::table::site_label(&frames);
                        let name = label.split(" ← ").next().unwrap_or(&label).to_string();
                        if blocks > 1 {
                            format!("{name} × {blocks}")
                        } else {
                            name
                        }
                    }
                })
                .collect();
        }
    }

    pub fn group(&mut self, sites: impl Iterator<Item = SiteId>) -> Vec<Group> {
        let subject = self.procs.subject().0;
        rows::group(&self.books.ledger, self.symbols, subject, sites)
    }
}

/// Verdict counts over some sites.
fn summarize(sites: &[SiteReport]) -> Summary {
    let mut summary = Summary::default();
    for s in sites {
        match s.assessment.verdict {
            Verdict::Leak => {
                summary.leak_sites += 1;
                summary.leak_bytes_per_s += s.assessment.rate_bytes_per_s;
            }
            Verdict::Plateau => summary.plateau_sites += 1,
            Verdict::Uncertain => summary.uncertain_sites += 1,
            _ => {}
        }
    }
    summary.leak_bytes_per_s = round3(summary.leak_bytes_per_s);
    summary
}

pub fn sort(sites: &mut [SiteReport], kind: ReportKind, key: SortKey) {
    let outstanding = kind == ReportKind::Final;
    sites.sort_by(|a, b| {
        let (ab, ao, bb, bo) = if outstanding {
            (
                a.live_bytes as i64,
                a.live_objects as i64,
                b.live_bytes as i64,
                b.live_objects as i64,
            )
        } else {
            (
                a.delta_bytes,
                a.delta_objects,
                b.delta_bytes,
                b.delta_objects,
            )
        };
        let by_bytes = bb.cmp(&ab).then(bo.cmp(&ao));
        match key {
            SortKey::Bytes => by_bytes,
            SortKey::Objects => bo.cmp(&ao).then(bb.cmp(&ab)),
            SortKey::Rate => b
                .assessment
                .rate_bytes_per_s
                .total_cmp(&a.assessment.rate_bytes_per_s)
                .then(by_bytes),
        }
    });
}

pub fn frame_matches(re: &regex_lite::Regex, f: &Frame) -> bool {
    [&f.function, &f.file, &f.module]
        .into_iter()
        .flatten()
        .any(|s| re.is_match(s))
}

/// The final report of a several-process run with the summaries of the processes that exited
/// on the way (what they left outstanding at exit) added to its totals and sites.
pub fn add_exited(r: &mut Report, exited: &[ProcessReport], opts: &Selection) {
    if exited.is_empty() {
        return;
    }
    for p in exited {
        r.totals.live_objects += p.totals.live_objects;
        r.totals.live_bytes += p.totals.live_bytes;
        r.totals.delta_objects += p.totals.delta_objects;
        r.totals.delta_bytes += p.totals.delta_bytes;
        r.totals.allocs += p.totals.allocs;
        r.totals.frees += p.totals.frees;
        r.sites.extend(p.sites.iter().cloned());
        r.summary.leak_sites += p.summary.leak_sites;
        r.summary.leak_bytes_per_s =
            round3(r.summary.leak_bytes_per_s + p.summary.leak_bytes_per_s);
        r.summary.plateau_sites += p.summary.plateau_sites;
        r.summary.uncertain_sites += p.summary.uncertain_sites;
    }
    sort(&mut r.sites, ReportKind::Final, opts.sort);
    r.sites_omitted += r.sites.len().saturating_sub(opts.top);
    r.sites.truncate(opts.top);
}

/// Keeps at most `keep` summaries of exited processes: those with leaking sites first, then
/// by what they left outstanding. How many were dropped.
pub fn keep_exited(exited: &mut Vec<ProcessReport>, keep: usize) -> u64 {
    if exited.len() <= keep {
        return 0;
    }
    exited.sort_by_key(|p| std::cmp::Reverse((p.summary.leak_sites > 0, p.totals.live_bytes)));
    let dropped = (exited.len() - keep) as u64;
    exited.truncate(keep);
    dropped
}

/// What the last scan found of a row's sites, together.
fn scanned(
    scans: Option<&HashMap<SiteId, SiteScan>>,
    members: &[SiteId],
) -> (Vec<TypeCount>, Option<SiteReach>) {
    let Some(scans) = scans else {
        return (Vec::new(), None);
    };
    let found: Vec<&SiteScan> = members.iter().filter_map(|m| scans.get(m)).collect();
    if found.is_empty() {
        return (Vec::new(), None);
    }
    let mut r = SiteReach::default();
    let (mut held, mut types) = (Tally::new(), Tally::new());
    // The chain of the member with the most bytes.
    let bytes = |s: &SiteScan| s.reach.counts().iter().map(|c| c.1).sum::<u64>();
    if let Some(most) = found.iter().max_by_key(|s| bytes(s)) {
        r.links = most.chain.clone();
    }
    for s in found {
        let x = &s.reach;
        r.add_counts(x);
        for h in &x.held_by {
            add(&mut held, &h.root, h.objects, h.bytes);
        }
        for t in &s.types {
            add(&mut types, &t.name, t.objects, t.bytes);
        }
    }
    r.held_by = holders(held);
    (classes(types), Some(r))
}
