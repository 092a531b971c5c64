//! Sampled mode (--sample-rate): estimates that converge on the truth, verdicts that hold on
//! estimates, and every report saying that its figures are estimates.
use tracer_tests::*;

#[test]
fn sampled_estimates_find_the_leaks_and_say_they_are_estimates() {
    if !privileged("sampled_estimates_find_the_leaks_and_say_they_are_estimates") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    // One sampled allocation per KiB: leaky's 64-to-400-byte leaks give hundreds of samples
    // in 20 s, so the estimates' standard deviation is about 5 % of the bytes.
    let run = launch_json(
        &[
            "--sample-rate",
            "1K",
            "-i",
            "2",
            "--warmup",
            "4",
            "-n",
            "100",
        ],
        &leaky,
        &["20", "0"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // This kernel has uprobe sessions: an unsampled call takes no return trap.
    assert!(!run.stderr.contains("uprobe sessions"), "{}", run.stderr);
    let all = reports(&run.stdout);
    for r in &all {
        assert_eq!(r["sampling"]["rate_bytes"], 1024, "{}", r["kind"]);
        assert_eq!(r["sampling"]["estimates"], true);
    }
    let fin = &run.final_report;
    let truth = truth_leaks(&run.stdout);
    let leaked: u64 = truth.values().map(|t| t.1).sum();
    // glibc's stdout buffer, 4 KiB, is outstanding at exit too (a full trace sees it).
    let want = (leaked + 4096) as f64;
    let got = fin["totals"]["live_bytes"].as_f64().unwrap();
    assert!(
        (got / want - 1.0).abs() < 0.2,
        "estimated outstanding {got} B, truth {want} B"
    );
    // The last interval judges as a full trace does: the fastest leaks are leaks, with an error
    // bound on their rate, and the temporaries are not. (The cache's second call site, which
    // refills it after its first four seconds, really grows until its entries have replaced the
    // first site's, 24 s in: the shared check sampled-overhead judges it at 30 s.)
    let last = all.iter().rfind(|r| r["kind"] == "interval").unwrap();
    let mut leaks = 0;
    for s in last["sites"].as_array().unwrap() {
        let name = site_name(s);
        if ["leak_calloc", "leak_fixed", "leak_shared<-path_a"].contains(&name.as_str()) {
            assert_eq!(s["verdict"], "leak", "{name}: {s}");
            assert!(s["rate_error_bytes_per_s"].as_f64().unwrap() > 0.0, "{s}");
            leaks += 1;
        }
        if name == "temp_churn" {
            assert_ne!(s["verdict"], "leak", "{name}: {s}");
        }
    }
    assert_eq!(leaks, 3, "{last}");
}

#[test]
fn a_full_trace_says_nothing_of_sampling() {
    if !privileged("a_full_trace_says_nothing_of_sampling") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let run = launch_json(&[], &leaky, &["1", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.final_report.get("sampling").is_none());
    assert_outstanding_is_truth(&run.final_report, &truth_leaks(&run.stdout));
}

#[test]
fn a_call_made_by_an_unsampled_call_is_not_counted_again() {
    if !privileged("a_call_made_by_an_unsampled_call_is_not_counted_again") {
        return;
    }
    // 201,000 allocations, half of them glibc's realloc(NULL, n) jumping to malloc: counted
    // twice, the estimate would be half as much again.
    let victim = victim("victims/tailcalls.c", FP);
    let run = launch_json(&["--sample-rate", "1K"], &victim, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let t = &run.final_report["totals"];
    let allocs = t["allocs"].as_f64().unwrap();
    assert!((allocs / 201_000.0 - 1.0).abs() < 0.1, "{t}");
    // About 620 of the kept blocks are sampled: 4 % standard deviation.
    let live = t["live_bytes"].as_f64().unwrap();
    assert!((live / 1_000_000.0 - 1.0).abs() < 0.15, "{t}");
}

/// The first frame of a site, as module and offset (Debian's python3 is stripped: no names).
fn first_frame(site: &serde_json::Value) -> String {
    let f = &site["frames"][0];
    format!("{}+{}", f["module"], f["offset"])
}

#[test]
fn a_real_python_sampled_at_64k_matches_its_full_trace() {
    if !privileged("a_real_python_sampled_at_64k_matches_its_full_trace") {
        return;
    }
    // Debian's python3, every object from malloc, leaving with ~50 MB held.
    let script = root().join("tests/victims/pyleak.py");
    let run = |rate: &str| {
        let r = launch_json_env(
            &["--sample-rate", rate, "-n", "10"],
            &[("PYTHONMALLOC", "malloc")],
            std::path::Path::new("/usr/bin/python3"),
            &[script.to_str().unwrap()],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        r.final_report
    };
    let (full, sampled) = (run("0"), run("64K"));
    let bytes = |r: &serde_json::Value| r["totals"]["live_bytes"].as_f64().unwrap();
    assert!(bytes(&full) > 40e6, "{}", full["totals"]);
    assert!(
        (bytes(&sampled) / bytes(&full) - 1.0).abs() < 0.1,
        "sampled {} B, full trace {} B",
        bytes(&sampled),
        bytes(&full)
    );
    // The full trace's top three sites lead the estimate too.
    let top = |r: &serde_json::Value, n: usize| -> Vec<String> {
        r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .take(n)
            .map(first_frame)
            .collect()
    };
    let (want, got) = (top(&full, 3), top(&sampled, 5));
    for w in &want {
        assert!(got.contains(w), "{w} not among {got:?}");
    }
}
