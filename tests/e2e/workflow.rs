//! The leak workflow on real processes: verdicts and rates, marks around known actions, record
//! and replay, losses making verdicts uncertain, kernel-side size filters.
use std::process::Command;

use serde_json::Value;
use tracer_tests::*;

/// leaky's truth: (site, bytes/s).
const LEAK_RATES: [(&str, f64); 5] = [
    ("leak_fixed", 6400.0),
    ("leak_realloc_grow", 3200.0),
    ("leak_calloc", 8000.0),
    ("leak_shared<-path_a", 6400.0),
    ("leak_shared<-path_b", 2560.0),
];

fn rows<'a>(r: &'a Value, name: &str) -> Vec<&'a Value> {
    r["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| site_name(s) == name)
        .collect()
}

#[test]
fn leaky_verdicts_and_rates_after_warmup() {
    if !privileged("leaky_verdicts_and_rates_after_warmup") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let run = launch_json(&["-i", "1", "--warmup", "4"], &leaky, &["13", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let reps = reports(&run.stdout);
    let intervals: Vec<&Value> = reps.iter().filter(|r| r["kind"] == "interval").collect();
    assert!(intervals.len() >= 11, "{} intervals", intervals.len());
    // Before warm-up ends plus the minimum history, every site is new.
    for s in intervals[2]["sites"].as_array().unwrap() {
        assert_eq!(s["verdict"], "new", "{s}");
    }
    // The last full interval: everything judged, every rate within 5 % of the truth.
    let r = intervals[intervals.len() - 2];
    for (site, rate) in LEAK_RATES {
        let row = rows(r, site);
        assert_eq!(row.len(), 1, "{site} in {r}");
        assert_eq!(row[0]["verdict"], "leak", "{site}: {}", row[0]);
        let got = row[0]["rate_bytes_per_s"].as_f64().unwrap();
        assert!(
            (got - rate).abs() <= rate * 0.05,
            "{site}: rate {got} B/s, truth {rate}"
        );
    }
    let cache = rows(r, "cache_insert");
    assert!(!cache.is_empty(), "cache_insert not in {r}");
    for row in cache {
        assert_eq!(row["verdict"], "plateau", "{row}");
    }
    let temp = rows(r, "temp_churn");
    assert_eq!(temp.len(), 1, "temp_churn not in {r}");
    assert_eq!(temp[0]["verdict"], "churn");
    assert_eq!(r["summary"]["leak_sites"], 5, "{}", r["summary"]);
    let sum = r["summary"]["leak_bytes_per_s"].as_f64().unwrap();
    assert!(
        (sum - 26560.0).abs() <= 26560.0 * 0.05,
        "total leak rate {sum}"
    );
    // What the leaked blocks are.
    let fixed = rows(r, "leak_fixed")[0];
    assert_eq!(fixed["sizes"][0]["size"], 64);
    assert_eq!(fixed["distinct_sizes"], 1);
    assert!(fixed["oldest_age_s"].as_f64().unwrap() > 10.0, "{fixed}");
}

#[test]
fn a_mark_diff_shows_exactly_the_blocks_of_the_actions_between_marks() {
    if !privileged("a_mark_diff_shows_exactly_the_blocks_of_the_actions_between_marks") {
        return;
    }
    const ACTIONS: u64 = 3;
    const BLOCKS: u64 = 5;
    const SIZE: u64 = 96;
    let mut run = Actions::start(&[]);
    run.act(1); // before the first mark: not part of the diff
    let m1 = run.mark();
    assert_eq!(m1["mark"], 1);
    run.act(ACTIONS);
    let m2 = run.mark();
    assert_eq!(m2["mark"], 2);
    run.stop();
    let leaked: Vec<&Value> = m2["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| functions(s).first().map(String::as_str) == Some("leak_one"))
        .collect();
    assert_eq!(leaked.len(), 1, "{m2}");
    assert_eq!(leaked[0]["delta_objects"], ACTIONS * BLOCKS, "{m2}");
    assert_eq!(leaked[0]["delta_bytes"], ACTIONS * BLOCKS * SIZE, "{m2}");
    assert!(functions(leaked[0]).iter().any(|f| f == "action"));
    assert_eq!(leaked[0]["sizes"][0]["size"], SIZE);
    // Nothing else was left behind but, at most, the churn thread's one block in flight.
    for s in m2["sites"].as_array().unwrap() {
        if functions(s).first().map(String::as_str) != Some("leak_one") {
            assert!(s["delta_objects"].as_i64().unwrap().abs() <= 1, "{s}");
            assert!(
                functions(s).first().map(String::as_str) != Some("temporaries"),
                "{s}"
            );
        }
    }
    let extra = m2["totals"]["delta_objects"].as_i64().unwrap() - (ACTIONS * BLOCKS) as i64;
    assert!(extra.abs() <= 1, "{}", m2["totals"]);
}

#[test]
fn a_recording_replays_without_root_to_the_same_reports() {
    if !privileged("a_recording_replays_without_root_to_the_same_reports") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // Everything the replay reads (recording, victim binary) in a directory nobody can reach.
    let dir = std::env::temp_dir().join(format!("tracer-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let leaky = dir.join("leaky");
    std::fs::copy(victim("workloads/leaky.c", FP), &leaky).unwrap();
    let rec = dir.join("leaky.rec");
    let rec_s = rec.to_str().unwrap();
    let launched = launch_json(&["-i", "1", "--record", rec_s], &leaky, &["3", "0"]);
    assert_eq!(launched.code, Some(0), "{}", launched.stderr);
    let live = reports(&launched.stdout);
    assert!(live.len() >= 3);
    std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let nobody = |args: &[&str]| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["--inh-caps=-all", "--bounding-set=-all"])
            .arg(tracer())
            .args(args))
    };
    let out = nobody(&["replay", rec_s, "-i", "1", "--format", "json"]);
    if !out.status.success() && stderr(&out).contains("cannot open the recording") {
        panic!(
            "nobody cannot read {rec_s}: the test needs a world-readable path: {}",
            stderr(&out)
        );
    }
    assert!(out.status.success(), "{}", stderr(&out));
    let replayed = reports(&stdout(&out));
    assert_eq!(replayed, live);
    // The table format replays too, and a truncated recording names its offset.
    let len = std::fs::metadata(&rec).unwrap().len();
    let cut = dir.join("cut.rec");
    std::fs::write(&cut, &std::fs::read(&rec).unwrap()[..(len as usize - 10)]).unwrap();
    let out = run(Command::new(tracer()).args(["replay", cut.to_str().unwrap(), "-i", "1"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("corrupt at byte") && err.contains("truncated") && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("[1.0s]"),
        "reports before the cut still print"
    );
    let out = run(Command::new(tracer()).args(["replay", "/nonexistent.rec"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open the recording"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lost_events_make_sites_uncertain_never_leaks() {
    if !privileged("lost_events_make_sites_uncertain_never_leaks") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let run = launch_json(&["-i", "1", "--ring-size", "4096"], &leaky, &["7", "0"]);
    let reps = reports(&run.stdout);
    let lost = |r: &Value| -> u64 {
        r["lost"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum()
    };
    let mut judged = 0;
    let mut prev_lost = 0;
    let mut lost_since = None;
    for (i, r) in reps.iter().enumerate() {
        if lost(r) > prev_lost && lost_since.is_none() {
            lost_since = Some(i);
        }
        prev_lost = lost(r);
        // every window from the first loss on (the window is 10 intervals: the whole run)
        if lost_since.is_some() {
            for s in r["sites"].as_array().unwrap() {
                assert_ne!(s["verdict"], "leak", "report {i} after losses: {s}");
                if s["verdict"] == "uncertain" {
                    judged += 1;
                }
            }
        }
    }
    assert!(
        lost_since.is_some(),
        "a 4 KiB ring lost nothing: {}",
        run.final_report["lost"]
    );
    assert!(judged > 0, "no site was marked uncertain");
    assert_eq!(run.final_report["summary"]["leak_sites"], 0);
}

#[test]
fn size_filters_apply_in_the_kernel() {
    if !privileged("size_filters_apply_in_the_kernel") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let run = launch_json(
        &["--min-size", "300", "--max-size", "1K"],
        &leaky,
        &["2", "0"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let truth = truth_leaks(&run.stdout);
    let live_o = by_site(fin, "live_objects");
    let live_b = by_site(fin, "live_bytes");
    // 400 B calloc blocks: all of them; 64, 128, 256 B blocks: none
    let calloc = truth["leak_calloc"];
    assert_eq!(
        live_o.get("leak_calloc").copied(),
        Some(calloc.0 as i64),
        "{live_o:?}"
    );
    assert_eq!(live_b.get("leak_calloc").copied(), Some(calloc.1 as i64));
    for small in ["leak_fixed", "leak_shared<-path_a", "leak_shared<-path_b"] {
        assert!(!live_o.contains_key(small), "{small} recorded: {live_o:?}");
    }
    // the realloc'd buffer outgrew 1 KiB: its release was recorded, the block is not live
    assert!(!live_o.contains_key("leak_realloc_grow"), "{live_o:?}");
    assert!(fin["events"]["filtered"].as_u64().unwrap() > 0);
    for s in fin["sites"].as_array().unwrap() {
        let (lo, hi) = (
            s["size_min"].as_u64().unwrap(),
            s["size_max"].as_u64().unwrap(),
        );
        assert!(lo >= 300 && hi <= 1024, "{s}");
    }
}
