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
fn distinct_stacks_of_every_depth_are_each_their_own_site() {
    if !privileged("distinct_stacks_of_every_depth_are_each_their_own_site") {
        return;
    }
    // 100 distinct stacks, 1 to 100 frames deep above the allocation: each its own site with
    // exactly its block, and no stack lost.
    let stacks = victim("victims/stacks.c", FP);
    let run = launch_json(&["-n", "1000"], &stacks, &["100"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    assert_eq!(fin["lost"]["stack_failures"], 0, "{}", fin["lost"]);
    assert_outstanding_is_truth(fin, &truth_leaks(&run.stdout));
    // Each depth is a site of its own, its whole stack down to main.
    let depths: std::collections::BTreeSet<usize> = fin["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| site_name(s) == "leaf")
        .map(|s| {
            let f = functions(s);
            assert!(f.iter().any(|f| f == "main"), "{f:?}");
            f.iter().filter(|f| *f == "descend").count()
        })
        .collect();
    assert_eq!(depths, (1..=100).collect(), "{depths:?}");
}

#[test]
fn the_stacks_of_many_short_processes_are_all_kept() {
    if !privileged("the_stacks_of_many_short_processes_are_all_kept") {
        return;
    }
    // 150 short processes bring thousands of distinct stacks (each process's libraries sit at
    // addresses of their own): every allocation keeps its stack, and the last process's books
    // are its truth.
    let leaky = victim("workloads/leaky.c", FP);
    let dir = std::env::temp_dir().join(format!("tracer-many-stacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, rec) = (dir.join("leaky.txt"), dir.join("s.rec"));
    let script = format!(
        "for i in $(seq 150); do ls / > /dev/null; done; {} 1 0 > {}",
        leaky.display(),
        out.display()
    );
    let run = launch_json(
        &[
            "-f",
            "--keep-exited",
            "1000",
            "--record",
            rec.to_str().unwrap(),
        ],
        std::path::Path::new("/bin/sh"),
        &["-c", &script],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    assert_eq!(fin["lost"]["stack_collisions"], 0, "{}", fin["lost"]);
    assert_eq!(fin["lost"]["stack_failures"], 0, "{}", fin["lost"]);
    let truth = truth_leaks(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(truth.len(), 5);
    let p = fin["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["command"] == "leaky-fp")
        .unwrap_or_else(|| panic!("leaky missing: {fin}"));
    assert_outstanding_is_truth(p, &truth);
    // The collector's own stack ids replay to the same report.
    let re = run_ok(
        std::process::Command::new(tracer())
            .args(["replay", "--format", "json", "--keep-exited", "1000"])
            .arg(&rec),
    );
    let replayed = reports(&re)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .unwrap();
    assert!(&replayed == fin, "the replay differs");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn lost_mapping_records_make_the_mapping_sites_uncertain() {
    if !privileged("lost_mapping_records_make_the_mapping_sites_uncertain") {
        return;
    }
    // A program that only maps memory, its mapping records (each with its stack) into a ring
    // of one page: mapping records are lost, and nothing else.
    let mapper = victim("victims/mapper.c", FP);
    let run = launch_json(&["--ring-size", "4096", "-i", "0.5"], &mapper, &["4"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lost = &run.final_report["lost"];
    assert!(lost["ring_full_maps"].as_u64().unwrap() > 0, "{lost}");
    assert_eq!(lost["ring_full_allocs"], 0, "{lost}");
    assert_eq!(lost["ring_full_frees"], 0, "{lost}");
    // The kept mappings' site is never judged on numbers that miss records: `uncertain` once
    // it has the intervals for a verdict (`new` before).
    let judged: Vec<String> = reports(&run.stdout)
        .iter()
        .filter(|r| r["kind"] == "interval")
        .filter_map(|r| {
            r["sites"]
                .as_array()?
                .iter()
                .find(|s| site_name(s) == "map_keep")
                .map(|s| s["verdict"].as_str().unwrap().to_owned())
        })
        .collect();
    assert!(
        judged.iter().any(|v| v == "uncertain")
            && judged.iter().all(|v| v == "uncertain" || v == "new"),
        "{judged:?}"
    );
    assert!(
        run.stderr.contains("mapping records") && run.stderr.contains("--ring-size"),
        "{}",
        run.stderr
    );
}
