//! A ring buffer too small for the event rate: losses are counted, reported and explained.
use tracer_tests::*;

#[test]
fn a_tiny_ring_counts_what_it_loses() {
    if !privileged("a_tiny_ring_counts_what_it_loses") {
        return;
    }
    let churn = victim("workloads/churn.c", FP);
    // Two threads keep both cores busy: the reader cannot keep a 4 KiB ring from filling
    // (with one, it sometimes did, and nothing was lost).
    let run = launch_json(&["--ring-size", "4096"], &churn, &["200000", "2", "3"]);
    let (so, se, fin) = (&run.stdout, &run.stderr, &run.final_report);
    assert_eq!(run.code, Some(0), "{se}");
    let lost = &fin["lost"];
    let ev = &fin["events"];
    let lost_allocs = lost["ring_full_allocs"].as_u64().unwrap();
    let lost_frees = lost["ring_full_frees"].as_u64().unwrap();
    assert!(
        lost_allocs + lost_frees > 0,
        "nothing lost with a 4 KiB ring: {fin}"
    );
    // Every allocation and free the kernel saw was either received or counted as lost.
    assert_eq!(
        ev["allocs"].as_u64().unwrap(),
        ev["received_allocs"].as_u64().unwrap() + lost_allocs,
        "{ev}"
    );
    assert_eq!(
        ev["frees"].as_u64().unwrap(),
        ev["received_frees"].as_u64().unwrap() + lost_frees,
        "{ev}"
    );
    // And the kernel saw all of churn's operations.
    let ops: u64 = so
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ops=").and_then(|v| v.parse().ok()))
        .expect("churn's ops line");
    assert!(
        ev["allocs"].as_u64().unwrap() >= ops,
        "allocs {} < ops {ops}",
        ev["allocs"]
    );
    assert!(
        se.contains("--ring-size"),
        "stderr does not name the flag: {se}"
    );
}

#[test]
fn a_small_stack_map_loses_no_attribution() {
    if !privileged("a_small_stack_map_loses_no_attribution") {
        return;
    }
    // 100 distinct stacks in 64 buckets: collisions are certain; each colliding stack is sent
    // inline instead, so the books stay exact.
    let stacks = victim("victims/stacks.c", FP);
    let run = launch_json(&["--stack-slots", "64", "-n", "1000"], &stacks, &["100"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    assert!(
        fin["events"]["inline_stacks"].as_u64().unwrap() > 0,
        "no collision in 64 buckets: {}",
        fin["events"]
    );
    assert_eq!(fin["lost"]["stack_collisions"], 0, "{}", fin["lost"]);
    assert_outstanding_is_truth(fin, &truth_leaks(&run.stdout));
}
