use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    rc::Rc,
};

use serde_json::Value;
use tracer_common::{
    counter,
    losses::{Touches, LOSSES},
    AllocFn,
};

use super::*;
use crate::{
    aggregate::books::COMPACT_AFTER, collector::Alloc, flame::Profile as FlameProfile, report,
    symbolize::Mapping,
};

const S: u64 = 1_000_000_000;
const PID: u32 = 7;

/// Stacks by id: stack id N has the single return address 0x1000 * N (so every stack is
/// its own allocation point unless a test shares one).
#[derive(Default)]
struct Fake {
    stacks: HashMap<i32, Vec<u64>>,
}

impl Source for Fake {
    fn stack(&mut self, _pid: u32, id: i32) -> Vec<u64> {
        self.stacks
            .get(&id)
            .cloned()
            .unwrap_or_else(|| vec![0x1000 * id as u64])
    }
    fn maps(&mut self, _pid: u32) -> Option<Vec<Mapping>> {
        None
    }
    fn process(&mut self, pid: u32) -> ProcInfo {
        ProcInfo {
            command: format!("proc{pid}"),
            allocator: "libc.so.6".into(),
            allocator_kind: "glibc".into(),
            exited: false,
        }
    }
}

#[derive(Clone, Default)]
struct Buf(Rc<RefCell<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn reports(&self) -> Vec<Value> {
        String::from_utf8(self.0.borrow().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn opts(args: &[&str]) -> ReportOptions {
    let mut argv = vec!["tracer", "replay", "x", "--format", "json", "-i", "1"];
    argv.extend_from_slice(args);
    crate::config::Config::from_argv(&argv).unwrap().report
}

fn head() -> RecordHeader {
    RecordHeader {
        tracer: "test".into(),
        pid: PID,
        command: "victim".into(),
        allocator: "libc.so.6".into(),
        allocator_kind: "glibc".into(),
        start_mono_ns: 0,
        start_unix_ns: 0,
        ring_size: 4096,
        sample_rate: 0,
    }
}

fn engine(args: &[&str]) -> (Engine, Buf) {
    let out = Buf::default();
    (
        Engine::new(opts(args), head(), None, Box::new(out.clone())),
        out,
    )
}

fn malloc(addr: u64, size: u64, stack_id: i32, ts_ns: u64) -> Event {
    Event::Alloc(Alloc {
        pid: PID,
        tid: PID,
        ts_ns,
        func: AllocFn::Malloc,
        addr,
        old_addr: 0,
        size,
        weight: 1,
        stack_id,
        heap: 0,
    })
}

fn free(addr: u64, ts_ns: u64) -> Event {
    Event::Free {
        pid: PID,
        ts_ns,
        addr,
    }
}

/// The report's site whose first frame is `0x1000 * stack`.
fn site(r: &Value, stack: i32) -> Option<&Value> {
    let addr = format!("{:#x}", 0x1000 * stack as u64);
    r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frames"][0]["addr"] == addr.as_str())
}

/// Each second: stack 1 leaks ten 64 B blocks, stack 2 allocates and frees fifty, stack 3
/// fills a 100-entry cache of 512 B blocks in two seconds, then replaces one a second.
fn leaky_second(e: &mut Engine, w: &mut Fake, sec: u64, cache: &mut VecDeque<u64>) {
    let t = sec * S;
    let mut evs = Vec::new();
    for i in 0..10 {
        evs.push(malloc(0x10_0000 + sec * 100 + i, 64, 1, t + i));
    }
    for i in 0..50 {
        evs.push(malloc(0x20_0000 + i, 100 + i, 2, t + i));
        evs.push(free(0x20_0000 + i, t + i));
    }
    let inserts = if cache.len() < 100 { 50 } else { 1 };
    for i in 0..inserts {
        let a = 0x30_0000 + sec * 100 + i;
        evs.push(malloc(a, 512, 3, t + i));
        cache.push_back(a);
        if cache.len() > 100 {
            evs.push(free(cache.pop_front().unwrap(), t + i));
        }
    }
    e.ingest(w, &evs).unwrap();
}

fn run_leaky(e: &mut Engine, secs: u64) {
    let mut w = Fake::default();
    let mut cache = VecDeque::new();
    let c = Counters::default();
    for sec in 0..secs {
        leaky_second(e, &mut w, sec, &mut cache);
        e.tick((sec + 1) * S, &c).unwrap();
    }
    e.finish(secs * S + S / 2, &c, Some(0)).unwrap();
}

#[test]
fn verdicts_and_rates_from_the_history() {
    let (mut e, out) = engine(&["--warmup", "3"]);
    run_leaky(&mut e, 14);
    let reps = out.reports();
    assert_eq!(reps.len(), 15);
    let early = &reps[1];
    assert_eq!(site(early, 1).unwrap()["verdict"], "new");
    let r = &reps[13];
    assert_eq!(r["kind"], "interval");
    assert_eq!(r["warmup_s"], 3.0);
    let leak = site(r, 1).unwrap();
    assert_eq!(leak["verdict"], "leak");
    assert_eq!(leak["rate_bytes_per_s"], 640.0);
    assert_eq!(leak["rate_objects_per_s"], 10.0);
    assert_eq!(leak["verdict_intervals"], 10);
    assert_eq!(leak["grown_intervals"], 10);
    assert_eq!(leak["verdict_scope"], "stack");
    assert_eq!(site(r, 2).unwrap()["verdict"], "churn");
    assert_eq!(site(r, 3).unwrap()["verdict"], "plateau");
    assert_eq!(r["summary"]["leak_sites"], 1);
    assert_eq!(r["summary"]["leak_bytes_per_s"], 640.0);
    // the churn site had activity but no growth: it is listed
    assert_eq!(site(r, 2).unwrap()["delta_bytes"], 0);
    let fin = reps.last().unwrap();
    assert_eq!(fin["kind"], "final");
    assert_eq!(fin["exit_code"], 0);
    assert_eq!(site(fin, 1).unwrap()["verdict"], "leak");
    assert_eq!(site(fin, 1).unwrap()["live_objects"], 140);
    assert!(
        site(fin, 2).is_none(),
        "nothing of the churn site is outstanding"
    );
}

#[test]
fn a_cache_fed_from_two_callers_is_one_plateau() {
    // stacks 4 and 5 share the allocation point 0x4000: 5 fills the cache, 4 replaces
    let (mut e, out) = engine(&[]);
    let mut w = Fake::default();
    w.stacks.insert(4, vec![0x4000, 0x9004]);
    w.stacks.insert(5, vec![0x4000, 0x9005]);
    let c = Counters::default();
    let mut cache = VecDeque::new();
    let mut n = 0u64;
    for sec in 0..12u64 {
        let mut evs = Vec::new();
        let (stack, count) = if sec < 2 { (5, 50) } else { (4, 10) };
        for _ in 0..count {
            n += 1;
            evs.push(malloc(0x50_0000 + n, 512, stack, sec * S));
            cache.push_back(0x50_0000 + n);
            if cache.len() > 100 {
                evs.push(free(cache.pop_front().unwrap(), sec * S));
            }
        }
        e.ingest(&mut w, &evs).unwrap();
        e.tick((sec + 1) * S, &c).unwrap();
    }
    let reps = out.reports();
    let r = &reps[11];
    let rows = r["sites"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{r}");
    for s in rows {
        assert_eq!(s["verdict"], "plateau", "{s}");
        assert_eq!(s["verdict_scope"], "allocation_point", "{s}");
    }
}

#[test]
fn lost_events_make_active_sites_uncertain() {
    let (mut e, out) = engine(&[]);
    let mut w = Fake::default();
    let mut cache = VecDeque::new();
    let mut c = Counters::default();
    for sec in 0..12 {
        leaky_second(&mut e, &mut w, sec, &mut cache);
        if sec == 8 {
            c.kernel[counter::RING_FULL_FREE as usize] += 3;
        }
        e.tick((sec + 1) * S, &c).unwrap();
    }
    let reps = out.reports();
    assert_eq!(site(&reps[7], 1).unwrap()["verdict"], "leak");
    let r = &reps[11];
    for s in r["sites"].as_array().unwrap() {
        assert_eq!(s["verdict"], "uncertain", "{s}");
    }
    assert_eq!(r["summary"]["leak_sites"], 0);
    assert_eq!(r["summary"]["uncertain_sites"], 3);
    assert_eq!(r["lost"]["ring_full_frees"], 3);
}

/// Every kind of loss in the table reaches the report's `lost` object and a hint, and
/// makes uncertain the verdicts of the sites it touches, and only those.
#[test]
fn every_loss_reaches_the_report_the_hints_and_the_sites_it_touches() {
    use tracer_common::losses::{Count, Fix};
    for loss in LOSSES {
        let (mut e, out) = engine(&[]);
        let mut w = Fake::default();
        let mut cache = VecDeque::new();
        let mut c = Counters::default();
        for sec in 0..12 {
            leaky_second(&mut e, &mut w, sec, &mut cache);
            // A mapping that leaks (stack 9) and heap blocks without a stack that leak.
            let t = sec * S;
            let mut map = match malloc(0x7000_0000 + sec * 0x1000, 4096, 9, t) {
                Event::Alloc(a) => a,
                _ => unreachable!(),
            };
            map.func = AllocFn::Mmap;
            let evs = [Event::Alloc(map), malloc(0x50_0000 + sec, 32, -1, t)];
            e.ingest(&mut w, &evs).unwrap();
            if sec == 8 {
                match loss.count {
                    Count::Kernel(i) => c.kernel[i as usize] += 3,
                    Count::BadRecords => c.bad_records += 3,
                }
            }
            e.tick((sec + 1) * S, &c).unwrap();
        }
        let reps = out.reports();
        let r = &reps[11];
        assert_eq!(r["lost"][loss.key], 3, "{}: {}", loss.key, r["lost"]);
        let lost: BTreeMap<&'static str, u64> = LOSSES
            .iter()
            .map(|l| (l.key, r["lost"][l.key].as_u64().unwrap()))
            .collect();
        let limits = report::LimitSettings { ring_size: 1 << 20 };
        let hints = report::lost_hints(&lost, limits).join("\n");
        let named = match loss.fix {
            Fix::RingSize => "--ring-size",
            Fix::Nothing => loss.why,
        };
        assert!(hints.contains(named), "{}: {hints}", loss.key);
        let verdict = |s: Option<&Value>| s.unwrap()["verdict"].as_str().unwrap().to_owned();
        let no_stack = r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frames"].as_array().unwrap().is_empty());
        let (heap, mapping, stackless) =
            (verdict(site(r, 1)), verdict(site(r, 9)), verdict(no_stack));
        let want = |touched: bool| if touched { "uncertain" } else { "leak" };
        let t = loss.touches;
        assert_eq!(
            heap,
            want(matches!(t, Touches::Heap | Touches::Any)),
            "{}",
            loss.key
        );
        assert_eq!(
            mapping,
            want(matches!(t, Touches::Mappings | Touches::Any)),
            "{}",
            loss.key
        );
        assert_eq!(
            stackless,
            want(matches!(t, Touches::Heap | Touches::Any | Touches::NoStack)),
            "{}",
            loss.key
        );
    }
}

/// Every counter the kernel side bumps is either a loss in the table or a count of what
/// happened: a new one has to be put in one or the other.
#[test]
fn every_kernel_counter_is_a_loss_or_a_count() {
    let counts = [
        counter::ALLOCS,
        counter::FREES,
        counter::NESTED,
        counter::FAILED,
        counter::UNMATCHED_RETURN,
        counter::EXIT_STOPS,
        counter::EXEC_STOPS,
        counter::FILTERED,
        counter::STACK_INLINE,
        counter::FORKS_FOLLOWED,
        counter::MAPS,
        counter::THROWN,
        counter::FP_FALLBACK,
        counter::FP_MAPS_BUSY,
    ];
    for i in 0..counter::COUNT {
        let loss = tracer_common::losses::of_counter(i).is_some();
        assert!(
            loss != counts.contains(&i),
            "counter {i} is {} a loss and a count",
            if loss { "both" } else { "neither" }
        );
    }
}

/// Tracing several processes, a loss the kernel names a process for makes only that
/// process's verdicts uncertain; told nothing per process (a recording of an earlier
/// tracer), any loss touches every active site, as before.
#[test]
fn one_processs_losses_make_only_its_verdicts_uncertain() {
    for per_process in [true, false] {
        let (mut e, out) = multi_engine(&[]);
        let mut w = Fake::default();
        let mut c = Counters::default();
        for sec in 0..12u64 {
            let evs: Vec<Event> = (0..100)
                .flat_map(|i| {
                    let a = 0x100_0000 + sec * 1000 + i;
                    [malloc_in(10, a, 64, 1), malloc_in(20, a, 64, 2)]
                })
                .collect();
            e.ingest(&mut w, &evs).unwrap();
            if sec == 8 {
                c.kernel[counter::RING_FULL_ALLOC as usize] += 5;
            }
            if per_process {
                let lost = if sec >= 8 { 5 } else { 0 };
                e.set_process_losses(BTreeMap::from([(20, lost)])).unwrap();
            }
            e.tick((sec + 1) * S, &c).unwrap();
        }
        let reps = out.reports();
        let last = &reps[11];
        let verdict = |pid: u32| {
            last["sites"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["pid"] == pid)
                .unwrap()["verdict"]
                .clone()
        };
        assert_eq!(verdict(20), "uncertain", "per process: {per_process}");
        if per_process {
            assert_eq!(verdict(10), "leak");
            let p20 = last["processes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["pid"] == 20)
                .unwrap();
            assert_eq!(p20["lost"], 5);
        } else {
            assert_eq!(verdict(10), "uncertain");
        }
    }
}

#[test]
fn a_mark_shows_exactly_what_was_left_between_marks() {
    let (mut e, out) = engine(&["-i", "1000"]);
    let mut w = Fake::default();
    let mut cache = VecDeque::new();
    let c = Counters::default();
    for sec in 0..3 {
        leaky_second(&mut e, &mut w, sec, &mut cache);
    }
    e.mark(3 * S, &c).unwrap();
    // the action: seven 48 B blocks at stack 9, plus temporaries
    let mut evs = Vec::new();
    for i in 0..7 {
        evs.push(malloc(0x90_0000 + i, 48, 9, 3 * S));
        evs.push(malloc(0x91_0000 + i, 999, 10, 3 * S));
        evs.push(free(0x91_0000 + i, 3 * S));
    }
    e.ingest(&mut w, &evs).unwrap();
    e.mark(4 * S, &c).unwrap();
    let reps = out.reports();
    assert_eq!(reps.len(), 2);
    let m = &reps[1];
    assert_eq!(
        (m["kind"].as_str(), m["mark"].as_u64()),
        (Some("mark"), Some(2))
    );
    assert_eq!(m["window_s"], 1.0);
    let rows = m["sites"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{m}");
    assert_eq!(rows[0]["delta_objects"], 7);
    assert_eq!(rows[0]["delta_bytes"], 7 * 48);
    assert_eq!(rows[0]["sizes"][0]["size"], 48);
    assert_eq!(rows[0]["sizes"][0]["objects"], 7);
    assert_eq!(rows[0]["oldest_age_s"], 1.0);
    assert_eq!(m["totals"]["delta_bytes"], 7 * 48);
}

#[test]
fn since_attach_reports_cumulative_growth() {
    let (mut e, out) = engine(&["--since-attach"]);
    run_leaky(&mut e, 4);
    let reps = out.reports();
    let r = &reps[3];
    assert_eq!(r["window_s"], 4.0);
    assert_eq!(site(r, 1).unwrap()["delta_objects"], 40);
}

#[test]
fn older_than_keeps_old_blocks_in_the_outstanding_report() {
    let (mut e, out) = engine(&["--older-than", "5"]);
    run_leaky(&mut e, 10);
    let fin = out.reports().pop().unwrap();
    // at 10.5 s, blocks allocated at or before 5.5 s: seconds 0..=5 of stack 1
    let s = site(&fin, 1).unwrap();
    assert_eq!(s["live_objects"], 60, "{s}");
    assert_eq!(s["oldest_age_s"], 10.5);
    // the cache: 42 + 50 entries of the first two seconds not yet replaced, and the
    // replacements of seconds 2..=5
    assert_eq!(site(&fin, 3).unwrap()["live_objects"], 96);
    assert_eq!(fin["totals"]["live_objects"], 156);
    assert!(site(&fin, 2).is_none());
}

#[test]
fn sort_top_and_site_filter() {
    let (mut e, out) = engine(&["--sort", "objects", "-n", "1"]);
    run_leaky(&mut e, 3);
    let reps = out.reports();
    // by Δobjects the cache (50 a second while filling) beats the leak (10)
    assert_eq!(reps[0]["sites"].as_array().unwrap().len(), 1);
    assert!(site(&reps[0], 3).is_some());
    assert_eq!(reps[0]["sites_omitted"], 2);

    let (mut e, out) = engine(&["--site", "leaky_lib"]);
    let mut w = Fake::default();
    e.apply(Fact::Maps {
        pid: PID,
        maps: vec![Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            path: "/opt/leaky_lib.so".into(),
            open_path: None,
        }],
    });
    e.ingest(&mut w, &[malloc(1, 8, 1, 0), malloc(2, 8, 2, 0)])
        .unwrap();
    e.tick(S, &Counters::default()).unwrap();
    let r = &out.reports()[0];
    let rows = r["sites"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{r}");
    assert_eq!(rows[0]["frames"][0]["module"], "/opt/leaky_lib.so");
}

#[test]
fn a_recording_replays_to_the_same_reports() {
    let dir = std::env::temp_dir().join(format!("tracer-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.rec");
    let live = Buf::default();
    let rec = Recorder::create(&path, &head()).unwrap();
    let mut e = Engine::new(
        opts(&["--warmup", "2i"]),
        head(),
        Some(rec),
        Box::new(live.clone()),
    );
    // The unwind tables grow during the run: each report's figures replay too.
    let rows = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let source = rows.clone();
    e.report_unwind(Box::new(move || crate::report::UnwindSummary {
        files: 1,
        rows: source.load(std::sync::atomic::Ordering::Relaxed),
        build_ms: 0.5,
        ..Default::default()
    }));
    let mut w = Fake::default();
    let mut cache = VecDeque::new();
    let c = Counters::default();
    for sec in 0..8 {
        rows.store(100 * (sec / 3), std::sync::atomic::Ordering::Relaxed);
        leaky_second(&mut e, &mut w, sec, &mut cache);
        e.tick(sec * S + S / 2, &c).unwrap();
        if sec == 4 {
            e.mark(sec * S + S / 3, &c).unwrap();
        }
        e.tick((sec + 1) * S, &c).unwrap();
    }
    e.finish(8 * S + 1, &c, Some(3)).unwrap();
    drop(e);
    let replayed = Buf::default();
    crate::replay::run_to(&path, opts(&["--warmup", "2i"]), Box::new(replayed.clone())).unwrap();
    assert_eq!(live.reports().len(), 10);
    let table_rows: Vec<u64> = live
        .reports()
        .iter()
        .map(|r| r["unwind"]["rows"].as_u64().unwrap())
        .collect();
    // Reports at 1..=8 s, the mark in the fifth second, the final one.
    assert_eq!(table_rows, [0, 0, 0, 100, 100, 100, 100, 200, 200, 200]);
    assert_eq!(
        String::from_utf8(replayed.0.borrow().clone()).unwrap(),
        String::from_utf8(live.0.borrow().clone()).unwrap()
    );
    // a different interval re-buckets the same recording
    let coarse = Buf::default();
    crate::replay::run_to(&path, opts(&["-i", "2"]), Box::new(coarse.clone())).unwrap();
    let reps = coarse.reports();
    let kinds: Vec<&str> = reps.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["interval", "interval", "mark", "interval", "interval", "final"]
    );
    assert_eq!(site(&reps[0], 1).unwrap()["delta_objects"], 20);
    // a truncated recording replays what it holds, then names the offset
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let err = crate::replay::run_to(&path, opts(&[]), Box::new(Buf::default()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("corrupt at byte") && err.contains("truncated"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flame_views_pick_their_stacks_and_values() {
    let (mut e, _out) = engine(&[]);
    let mut w = Fake::default();
    let mut cache = VecDeque::new();
    let c = Counters::default();
    for sec in 0..12 {
        leaky_second(&mut e, &mut w, sec, &mut cache);
        e.tick((sec + 1) * S, &c).unwrap();
    }
    let first = |p: &FlameProfile| -> Vec<(u64, i64)> {
        let mut v: Vec<(u64, i64)> = p
            .stacks
            .iter()
            .map(|s| (s.frames[0].addr, p.value(s)))
            .collect();
        v.sort();
        v
    };
    // leaks: the leaking stack only (the cache is a plateau, the churn holds nothing)
    let p = e.flame_profile(What::Leaks, 12 * S);
    assert_eq!(first(&p), [(0x1000, 120 * 64)]);
    assert_eq!(p.stacks[0].inuse_objects, 120);
    // live: the cache too
    let p = e.flame_profile(What::Live, 12 * S);
    assert_eq!(first(&p), [(0x1000, 120 * 64), (0x3000, 100 * 512)]);
    // allocs: everything allocated, the churn included
    let p = e.flame_profile(What::Allocs, 12 * S);
    let churn: i64 = (0..50).map(|i| 100 + i).sum::<i64>() * 12;
    assert_eq!(
        first(&p),
        [(0x1000, 120 * 64), (0x2000, churn), (0x3000, 110 * 512)]
    );
}

#[test]
fn growth_is_between_the_last_two_marks() {
    let (mut e, _out) = engine(&["-i", "1000"]);
    let mut w = Fake::default();
    let c = Counters::default();
    let leak = |e: &mut Engine, w: &mut Fake, from: u64, n: u64| {
        let evs: Vec<Event> = (from..from + n).map(|a| malloc(a, 10, 1, 0)).collect();
        e.ingest(w, &evs).unwrap();
    };
    leak(&mut e, &mut w, 1, 5);
    // no mark yet: growth since the start
    let p = e.flame_profile(What::Growth, S);
    assert_eq!((p.stacks[0].before_bytes, p.stacks[0].after_bytes), (0, 50));
    e.mark(S, &c).unwrap();
    leak(&mut e, &mut w, 100, 3);
    // one mark: from it to now
    let p = e.flame_profile(What::Growth, 2 * S);
    assert_eq!(
        (p.stacks[0].before_bytes, p.stacks[0].after_bytes),
        (50, 80)
    );
    assert_eq!((p.start_s, p.end_s), (1.0, 2.0));
    e.mark(2 * S, &c).unwrap();
    leak(&mut e, &mut w, 200, 7);
    // two marks: between them, whatever happened since
    let p = e.flame_profile(What::Growth, 3 * S);
    assert_eq!(p.stacks[0].inuse_bytes, 30);
    assert_eq!(
        (p.stacks[0].before_bytes, p.stacks[0].after_bytes),
        (50, 80)
    );
    assert_eq!((p.start_s, p.end_s), (1.0, 2.0));
    assert!(flame::diff_folded(&p).ends_with(" 50 80\n"));
}

#[test]
fn flame_every_rewrites_the_file_at_each_interval() {
    let dir = std::env::temp_dir().join(format!("tracer-every-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("l.folded");
    let (mut e, _out) = engine(&["--flame", path.to_str().unwrap(), "--flame-every"]);
    let mut w = Fake::default();
    let c = Counters::default();
    let mut last = 0;
    for sec in 1..=3u64 {
        let evs: Vec<Event> = (0..sec).map(|i| malloc(sec * 100 + i, 10, 1, 0)).collect();
        e.ingest(&mut w, &evs).unwrap();
        e.tick(sec * S, &c).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: i64 = text.trim().rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(v > last, "{text}");
        last = v;
    }
    assert_eq!(last, 60);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn malloc_in(pid: u32, addr: u64, size: u64, stack_id: i32) -> Event {
    match malloc(addr, size, stack_id, 0) {
        Event::Alloc(mut a) => {
            a.pid = pid;
            Event::Alloc(a)
        }
        e => e,
    }
}

fn multi_engine(args: &[&str]) -> (Engine, Buf) {
    let out = Buf::default();
    let mut h = head();
    h.pid = 0;
    (Engine::new(opts(args), h, None, Box::new(out.clone())), out)
}

#[test]
fn several_processes_get_a_process_level_and_their_own_rows() {
    let (mut e, out) = multi_engine(&[]);
    let mut w = Fake::default();
    let c = Counters::default();
    // the same stack id in two processes: two rows, one per process
    e.ingest(
        &mut w,
        &[
            malloc_in(10, 1, 100, 1),
            malloc_in(10, 2, 100, 1),
            malloc_in(20, 1, 50, 1),
        ],
    )
    .unwrap();
    e.tick(S, &c).unwrap();
    let r = &out.reports()[0];
    assert_eq!(r["pid"], 0);
    let procs = r["processes"].as_array().unwrap();
    let pids: Vec<u64> = procs.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids, [10, 20], "by growth");
    assert_eq!(procs[0]["command"], "proc10");
    assert_eq!(procs[0]["totals"]["delta_bytes"], 200);
    assert_eq!(procs[1]["sites"][0]["live_bytes"], 50);
    assert_eq!(r["sites"].as_array().unwrap().len(), 2);
    assert_eq!(r["sites"][0]["pid"], 10);
}

#[test]
fn an_exited_process_keeps_its_last_line_and_its_pid_can_come_back() {
    let (mut e, out) = multi_engine(&[]);
    let mut w = Fake::default();
    let c = Counters::default();
    e.ingest(&mut w, &[malloc_in(10, 1, 100, 1), malloc_in(20, 1, 7, 1)])
        .unwrap();
    e.tick(S, &c).unwrap();
    e.process_exited(10).unwrap();
    e.tick(2 * S, &c).unwrap();
    // a new process 10: a stranger, same address and stack id
    e.ingest(&mut w, &[malloc_in(10, 1, 30, 1)]).unwrap();
    e.tick(3 * S, &c).unwrap();
    e.finish(4 * S, &c, None).unwrap();
    let reps = out.reports();
    let p10 = |r: &Value| -> Vec<Value> {
        r["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pid"] == 10)
            .cloned()
            .collect()
    };
    // the report after the exit: marked exited, still holding its 100 bytes
    let after_exit = p10(&reps[1]);
    assert_eq!(after_exit[0]["exited"], true);
    assert_eq!(after_exit[0]["totals"]["live_bytes"], 100);
    // the new process 10 counts from zero
    let again = p10(&reps[2]);
    assert_eq!(again[0]["exited"], false);
    assert_eq!(again[0]["totals"]["live_bytes"], 30);
    // the final report: both incarnations, the exited one as it was at exit
    let fin = reps.last().unwrap();
    let mut both: Vec<(bool, u64)> = p10(fin)
        .iter()
        .map(|p| {
            (
                p["exited"].as_bool().unwrap(),
                p["totals"]["live_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    both.sort();
    assert_eq!(both, [(false, 30), (true, 100)]);
    assert_eq!(fin["totals"]["live_bytes"], 137);
}

/// Thousands of short processes come and go while one leaks: the books hold only what
/// lives, the leaker's verdict and rate stay exact across the forgetting, and the final
/// report keeps `--keep-exited` exited processes and counts the rest.
#[test]
fn a_busy_host_stays_bounded_and_the_leaker_exact() {
    let (mut e, out) = multi_engine(&["--keep-exited", "5", "-n", "3"]);
    let mut w = Fake::default();
    let c = Counters::default();
    let mut next_pid = 1000;
    let mut addr = 0x10_0000;
    let mut most_sites = 0;
    for sec in 1..=12u64 {
        // The leaker (pid 7): 100 blocks of 64 bytes a second at one site.
        let mut evs: Vec<Event> = (0..100)
            .map(|i| malloc_in(7, 0x4000_0000 + sec * 1000 + i, 64, 1))
            .collect();
        // 500 short processes, each with 10 sites and one block left at exit; process
        // `1000 + k` leaves k % 7 bytes more, so the biggest are known.
        let born: Vec<u32> = (0..500).map(|k| next_pid + k).collect();
        next_pid += 500;
        for &pid in &born {
            for st in 0..10 {
                addr += 16;
                evs.push(malloc_in(pid, addr, 16 + u64::from(pid % 7), 100 + st));
            }
        }
        e.ingest(&mut w, &evs).unwrap();
        for &pid in &born {
            e.process_exited(pid).unwrap();
        }
        e.tick(sec * S, &c).unwrap();
        most_sites = most_sites.max(e.books.ledger.sites().len());
    }
    // 6,000 processes and 60,000 sites went by; the ledger never held more than about
    // COMPACT_AFTER retired sites plus a tick's worth.
    assert!(
        most_sites <= COMPACT_AFTER + 5_100,
        "{most_sites} sites held"
    );
    assert!(
        e.intake.known.procs.len() <= 1,
        "{} processes held",
        e.intake.known.procs.len()
    );
    e.finish(13 * S, &c, None).unwrap();
    let reps = out.reports();
    let fin = reps.last().unwrap();
    let leaker = fin["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == 7)
        .unwrap()
        .clone();
    assert_eq!(leaker["totals"]["live_bytes"], 12 * 100 * 64);
    let interval = &reps[reps.len() - 2];
    let site = interval["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["pid"] == 7)
        .unwrap();
    assert_eq!(site["verdict"], "leak", "{site}");
    assert_eq!(site["rate_bytes_per_s"], 6400.0, "{site}");
    // At most five exited processes kept, the biggest (22 bytes a site); the rest counted.
    let exited: Vec<&Value> = fin["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["exited"] == true)
        .collect();
    assert_eq!(exited.len(), 5);
    assert!(exited.iter().all(|p| p["totals"]["live_bytes"] == 220));
    assert_eq!(fin["exited_omitted"], 6_000 - 5);
}

/// An interval report lists `--processes` processes, those that grew most, and counts
/// the others; its totals are everyone's.
#[test]
fn a_report_lists_the_processes_that_grew_most() {
    let (mut e, out) = multi_engine(&["--processes", "3"]);
    let mut w = Fake::default();
    let c = Counters::default();
    // Process 100 + k grows by k blocks of 100 bytes.
    let mut evs = Vec::new();
    for k in 1..=10u32 {
        for i in 0..k {
            evs.push(malloc_in(100 + k, 0x1000 * u64::from(i + 1), 100, 1));
        }
    }
    e.ingest(&mut w, &evs).unwrap();
    e.tick(S, &c).unwrap();
    let reps = out.reports();
    let r = &reps[0];
    let pids: Vec<u64> = r["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, [110, 109, 108]);
    assert_eq!(r["processes_omitted"], 7);
    assert_eq!(r["totals"]["live_bytes"], 55 * 100);
    assert_eq!(r["totals"]["delta_bytes"], 55 * 100);
}

#[test]
fn comm_keeps_only_the_named_processes() {
    let (mut e, out) = multi_engine(&["--comm", "proc20"]);
    let mut w = Fake::default();
    e.ingest(&mut w, &[malloc_in(10, 1, 100, 1), malloc_in(20, 1, 7, 1)])
        .unwrap();
    e.tick(S, &Counters::default()).unwrap();
    let r = &out.reports()[0];
    let procs = r["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 1);
    assert_eq!(procs[0]["pid"], 20);
    assert_eq!(r["totals"]["live_bytes"], 7);
}

#[test]
fn an_exec_closes_the_old_programs_books() {
    let (mut e, out) = engine(&[]);
    let mut w = Fake::default();
    let c = Counters::default();
    // the old program leaves two blocks; then it execs; the new one reuses an address and
    // the stack id under a different program
    e.ingest(
        &mut w,
        &[
            malloc(0x10, 100, 1, 0),
            malloc(0x20, 100, 1, 0),
            Event::Exec {
                pid: PID,
                ts_ns: 1,
                comm: Some("next".into()),
            },
            malloc(0x10, 8, 1, 2),
        ],
    )
    .unwrap();
    assert_eq!(e.take_execs(), [PID]);
    e.tick(S, &c).unwrap();
    e.finish(2 * S, &c, None).unwrap();
    let fin = out.reports().pop().unwrap();
    assert_eq!(fin["totals"]["live_bytes"], 8, "{fin}");
    let rows = fin["sites"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["live_bytes"], 8);
    assert_eq!(fin["events"]["unknown_frees"], 0);
    // The new program is called by the name its exec record carried.
    assert_eq!(fin["command"], "next", "{fin}");
}

#[test]
fn an_exec_names_a_process_gone_before_its_name_could_be_read() {
    /// A world where every process is gone already.
    struct Gone;
    impl Source for Gone {
        fn stack(&mut self, _pid: u32, id: i32) -> Vec<u64> {
            vec![0x1000 * id as u64]
        }
        fn maps(&mut self, _pid: u32) -> Option<Vec<Mapping>> {
            None
        }
        fn process(&mut self, _pid: u32) -> ProcInfo {
            ProcInfo::default()
        }
    }
    let (mut e, out) = multi_engine(&[]);
    let exec = |pid, comm: Option<&str>| Event::Exec {
        pid,
        ts_ns: 0,
        comm: comm.map(Into::into),
    };
    e.ingest(
        &mut Gone,
        &[
            exec(20, Some("brief")),
            malloc_in(20, 0x10, 8, 1),
            exec(21, None),
            malloc_in(21, 0x10, 8, 1),
        ],
    )
    .unwrap();
    e.finish(S, &Counters::default(), None).unwrap();
    let fin = out.reports().pop().unwrap();
    let name = |pid: u32| {
        fin["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .map(|p| p["command"].clone())
    };
    assert_eq!(name(20), Some("brief".into()), "{fin}");
    assert_eq!(name(21), Some("?".into()), "{fin}");
}

/// A scan of one site whose `live` objects hold `circles` of class Circle.
fn class_scan(site: usize, live: u64, circles: u64) -> crate::reach::summary::ProcessScan {
    use crate::reach::summary::{ProcessScan, SiteScan, TypeCount};
    let mut s = SiteScan::default();
    s.reach.reachable_objects = live;
    s.reach.reachable_bytes = live * 16;
    if circles > 0 {
        s.types = vec![TypeCount {
            name: "Circle".into(),
            objects: circles,
            bytes: circles * 16,
        }];
    }
    ProcessScan {
        sites: vec![(site, s)],
        ..ProcessScan::default()
    }
}

#[test]
fn by_class_rows_change_since_the_last_report_of_their_kind_and_need_a_scan() {
    let (mut e, out) = engine(&["--by", "class"]);
    let mut w = Fake::default();
    let c = Counters::default();
    e.ingest(&mut w, &[malloc(0x1000, 16, 1, 1)]).unwrap();
    // No scan: no rows.
    e.tick(S, &c).unwrap();
    // A mark with a scan: 10 blocks, 6 of them Circles.
    e.apply(Fact::Reach {
        pid: PID,
        scan: class_scan(0, 10, 6),
    });
    e.mark(S + 1, &c).unwrap();
    e.tick(S + 2, &c).unwrap();
    // The next mark: 15 blocks, 9 Circles.
    e.apply(Fact::Reach {
        pid: PID,
        scan: class_scan(0, 15, 9),
    });
    e.mark(2 * S, &c).unwrap();
    e.tick(2 * S + 1, &c).unwrap();
    let reps = out.reports();
    let rows = |r: &Value| -> Vec<(Value, i64, i64)> {
        r["classes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["name"].clone(),
                            c["objects"].as_i64().unwrap(),
                            c["delta_objects"].as_i64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(rows(&reps[0]).is_empty(), "{}", reps[0]);
    let marks: Vec<&Value> = reps.iter().filter(|r| r["kind"] == "mark").collect();
    assert_eq!(
        rows(marks[0]),
        [("Circle".into(), 6, 6), (Value::Null, 4, 4)]
    );
    assert_eq!(
        rows(marks[1]),
        [("Circle".into(), 9, 3), (Value::Null, 6, 2)]
    );
}
