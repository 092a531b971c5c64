//! `tracer -- CMD`: probes in place before the first allocation, so the books are exact.
use std::process::Command;

use tracer_tests::*;

#[test]
fn leaky_outstanding_at_exit_equals_its_truth() {
    if !privileged("leaky_outstanding_at_exit_equals_its_truth") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    // Probes as uprobe-multi links (one per program and file), and as one perf event each
    // (what kernels before 6.6 get): the same books.
    for env in [&[][..], &[("TRACER_UPROBE_MULTI", "0")][..]] {
        let run = launch_json_env(&["-i", "1"], env, &leaky, &["3", "0"]);
        let (so, se, fin) = (&run.stdout, &run.stderr, &run.final_report);
        assert_eq!(run.code, Some(0), "tracer failed: {se}");
        let truth = truth_leaks(so);
        assert_eq!(truth.len(), 5, "leaky printed no truth: {so}");
        assert_eq!(fin["exit_code"], 0);
        assert_outstanding_is_truth(fin, &truth);
        let live_b = by_site(fin, "live_bytes");
        for not_leaking in ["temp_churn", "cache_insert"] {
            assert_eq!(
                live_b.get(not_leaking).copied().unwrap_or(0),
                0,
                "{not_leaking} outstanding"
            );
        }
        // Nothing lost, and every event the kernel produced was received.
        assert!(
            fin["lost"].as_object().unwrap().values().all(|v| v == 0),
            "{}",
            fin["lost"]
        );
        assert_eq!(fin["events"]["allocs"], fin["events"]["received_allocs"]);
        assert_eq!(fin["events"]["frees"], fin["events"]["received_frees"]);
        // leaky's own calls are all seen (libc's stdio adds a few).
        let calls: Vec<u64> = so
            .lines()
            .find(|l| l.starts_with("TRUTH calls"))
            .unwrap()
            .split_whitespace()
            .filter_map(|w| w.split_once('=').and_then(|(_, v)| v.parse().ok()))
            .collect();
        let (malloc, calloc, realloc, free) = (calls[0], calls[1], calls[2], calls[3]);
        let allocs = fin["events"]["allocs"].as_u64().unwrap();
        assert!(
            allocs >= malloc + calloc + realloc && allocs <= malloc + calloc + realloc + 5,
            "allocs {allocs}"
        );
        let frees = fin["events"]["frees"].as_u64().unwrap();
        assert!(
            frees >= free && frees <= free + 5,
            "frees {frees} vs {free}"
        );
    }
}

#[test]
fn every_allocator_entry_point_is_followed_exactly() {
    if !privileged("every_allocator_entry_point_is_followed_exactly") {
        return;
    }
    let allocs = victim("victims/allocs.c", FP);
    let run = launch_json(&["-n", "100"], &allocs, &["100"]);
    let (so, fin) = (&run.stdout, &run.final_report);
    assert_eq!(run.code, Some(0), "tracer failed: {}", run.stderr);
    let truth = truth_leaks(so);
    assert_eq!(truth.len(), 9, "{so}");
    assert_outstanding_is_truth(fin, &truth);
    let live_b = by_site(fin, "live_bytes");
    // realloc(p, 0) released p, failed allocations counted nothing, a block freed on another
    // thread was matched.
    for ok in truth_ok(so) {
        assert_eq!(
            live_b.get(&ok).copied().unwrap_or(0),
            0,
            "{ok} shows outstanding bytes"
        );
    }
    assert!(
        fin["events"]["failed"].as_u64().unwrap() >= 200,
        "failed calls: {}",
        fin["events"]
    );
    // glibc frees each exiting thread's tcache, which it allocated internally (not through
    // malloc): such frees are unknown to any uprobe tracer. 20 threads ran; nothing else may be.
    let threads = 20;
    assert!(
        fin["events"]["unknown_frees"].as_u64().unwrap() <= 2 * threads,
        "{}",
        fin["events"]
    );
}

#[test]
fn arguments_and_exit_status_pass_through() {
    if !privileged("arguments_and_exit_status_pass_through") {
        return;
    }
    let sh = std::path::Path::new("/bin/sh");
    let run = launch_json(
        &[],
        sh,
        &["-c", "echo \"$1|$2\"; exit 7", "sh", "a b", "--flag"],
    );
    assert!(run.stdout.contains("a b|--flag"), "{}", run.stdout);
    assert_eq!(run.code, Some(7), "{}", run.stderr);
    let fin = &run.final_report;
    assert_eq!(fin["exit_code"], 7);
}

#[test]
fn cpp_names_are_demangled_and_symbols_outlive_a_short_process() {
    if !privileged("cpp_names_are_demangled_and_symbols_outlive_a_short_process") {
        return;
    }
    // Runs for a few milliseconds: its memory map must still be read before it is gone.
    let widgets = victim("victims/widgets.cpp", FP);
    let run = launch_json(&[], &widgets, &["50"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let live = by_site(fin, "live_bytes");
    assert_eq!(
        live.get("shop::Widget::raw_buffer(unsigned long)").copied(),
        Some(50 * 24),
        "{live:?}"
    );
    // operator new is probed: the stack starts at the caller of new, for every form of it.
    for (site, bytes) in [
        ("shop::Widget::make(int)", 50 * 48),
        ("shop::Widget::make_nothrow(int)", 50 * 48),
        ("shop::Widget::ids(int)", 50 * 32),
    ] {
        assert_eq!(live.get(site).copied(), Some(bytes), "{site}: {live:?}");
    }
    assert!(
        !live.keys().any(|k| k.starts_with("operator new")),
        "{live:?}"
    );
    // new/delete pairs leave nothing, and the malloc inside new is not counted twice.
    assert!(!live.contains_key("shop::Widget::scratch()"), "{live:?}");
    let ev = &fin["events"];
    assert_eq!(ev["unknown_frees"], 0, "{ev}");
    assert_eq!(ev["received_frees"], 50 * 10 * 2, "{ev}");
    assert_eq!(
        ev["received_allocs"].as_u64().unwrap(),
        ev["received_frees"].as_u64().unwrap() + fin["totals"]["live_objects"].as_u64().unwrap(),
        "{ev}"
    );
    let raw = fin["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| site_name(s).starts_with("shop::Widget::raw_buffer"))
        .unwrap();
    assert_eq!(functions(raw).get(1).map(String::as_str), Some("main"));
    assert!(raw["frames"][0]["file"]
        .as_str()
        .unwrap_or("")
        .ends_with("widgets.cpp"));
}

#[test]
fn rust_functions_are_demangled() {
    if !privileged("rust_functions_are_demangled") {
        return;
    }
    // A Rust program on the system allocator, built with the workspace's own rustc.
    let dir = root().join("target/test-victims");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("rusty");
    let st = Command::new("rustc")
        .args(["-O", "-g", "-C", "force-frame-pointers=yes", "-o"])
        .arg(&bin)
        .arg(root().join("tests/victims/rusty.rs"))
        .status()
        .expect("rustc");
    assert!(st.success());
    let run = launch_json(&[], &bin, &["100"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let leak = fin["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            functions(s)
                .iter()
                .any(|f| f == "rusty::inventory::Store::leak_orders")
        })
        .unwrap_or_else(|| panic!("no site through leak_orders: {fin}"));
    assert_eq!(leak["live_objects"], 100, "{leak}");
    assert_eq!(leak["live_bytes"], 4800, "{leak}");
    assert_eq!(fin["events"]["unknown_frees"], 0);
}
