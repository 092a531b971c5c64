//! Anonymous memory mappings the program makes itself: their own category, exact in pages,
//! munmap and mremap followed, and never counted twice with the allocator's own mappings.
use std::process::Command;

use tracer_tests::*;

#[test]
fn the_programs_own_mappings_are_their_own_category() {
    if !privileged("the_programs_own_mappings_are_their_own_category") {
        return;
    }
    let maps = victim("victims/maps.c", FP);
    let rec = std::env::temp_dir().join(format!("tracer-maps-{}.rec", std::process::id()));
    let run = launch_json(&["--record", rec.to_str().unwrap()], &maps, &["20"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let truth = truth_leaks(&run.stdout);
    assert_eq!(truth.len(), 4, "{}", run.stdout);
    assert_outstanding_is_truth(fin, &truth);
    // Seen by fexit or, without it, the C library's wrappers: no other process pays, and no
    // note of the costly tracepoints.
    assert!(!run.stderr.contains("sys_enter"), "{}", run.stderr);
    let sites = fin["sites"].as_array().unwrap();
    for s in sites {
        let name = site_name(s);
        let expected = if name.starts_with("map_") {
            "mmap"
        } else {
            "heap"
        };
        assert_eq!(s["category"], expected, "{name}");
        // The dynamic loader's mappings (the libraries' zero-filled data) are not the program's.
        assert!(!functions(s).iter().any(|f| f.starts_with("_dl_")), "{s}");
    }
    let live = by_site(fin, "live_bytes");
    for gone in ["map_churn", "map_reserve"] {
        assert!(!live.contains_key(gone), "{gone}: {live:?}");
    }
    let mapped: u64 = ["map_leak", "map_grow", "map_cut"]
        .iter()
        .map(|s| truth[*s].1)
        .sum();
    assert_eq!(
        fin["totals"]["mmap_live_bytes"], mapped,
        "{}",
        fin["totals"]
    );
    assert_eq!(fin["events"]["unknown_frees"], 0);
    // 1 MiB blocks: heap blocks only (glibc's mapping for each, made inside malloc, is nested)
    assert_eq!(live["big_malloc"], 20 << 20);
    // Mappings and munmaps replay to the same report.
    let re = run_ok(
        Command::new(tracer())
            .args(["replay", "--format", "json"])
            .arg(&rec),
    );
    std::fs::remove_file(&rec).ok();
    let replayed = reports(&re)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .unwrap();
    assert_eq!(&replayed, fin);

    // Each way of seeing the mapping system calls gives the same books: the wrappers alone
    // (kernels without BPF trampolines), and the sys_enter/sys_exit tracepoints (which says
    // what it costs).
    for hook in ["wrappers", "tracepoints"] {
        let run = launch_json_env(&[], &[("TRACER_MAP_HOOK", hook)], &maps, &["20"]);
        assert_eq!(run.code, Some(0), "{hook}: {}", run.stderr);
        assert_outstanding_is_truth(&run.final_report, &truth_leaks(&run.stdout));
        let t = &run.final_report["totals"];
        assert_eq!(t["mmap_live_bytes"], mapped, "{hook}: {t}");
        assert_eq!(
            run.stderr
                .contains("sys_enter/sys_exit tracepoints, which every system call"),
            hook == "tracepoints",
            "{hook}: {}",
            run.stderr
        );
    }

    // --no-mmap: the heap alone, as before.
    let run = launch_json(&["--no-mmap"], &maps, &["20"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    assert_eq!(fin["events"]["maps"], 0);
    assert_eq!(fin["totals"]["mmap_live_bytes"], 0);
    let live = by_site(fin, "live_bytes");
    assert_eq!(live.get("big_malloc"), Some(&(20 << 20)));
    assert!(!live.keys().any(|k| k.starts_with("map_")), "{live:?}");
}
