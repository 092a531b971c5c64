//! --follow-children: processes forked by the target, with and without exec, each with its
//! own books; the end comes when all of them have exited.
use std::{collections::BTreeMap, process::Command};

use serde_json::Value;
use tracer_tests::*;

/// `TRUTH <pid> <site> LEAK blocks=B bytes=N` lines (forker's format) → pid → site → truth.
fn truth_per_pid(text: &str) -> BTreeMap<u32, BTreeMap<String, (u64, u64)>> {
    let mut t: BTreeMap<u32, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() == 6 && w[0] == "TRUTH" && w[3] == "LEAK" {
            let line = format!("TRUTH {} LEAK {} {}", w[2], w[4], w[5]);
            let (pid, one) = (w[1].parse().unwrap(), truth_leaks(&line));
            assert_eq!(one.len(), 1, "{l}");
            t.entry(pid).or_default().extend(one);
        }
    }
    t
}

fn process(r: &Value, pid: u32) -> &Value {
    r["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not in the report: {r}"))
}

#[test]
fn forked_children_are_followed_with_their_own_books() {
    if !privileged("forked_children_are_followed_with_their_own_books") {
        return;
    }
    let forker = victim("victims/forker.c", FP);
    let dir = std::env::temp_dir().join(format!("tracer-follow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("f.rec");
    // Three children that leak and _exit within milliseconds, without exec: each is followed
    // from its first instruction and symbolized with what it inherited from its parent.
    let run = launch_json(&["-f", "--record", rec.to_str().unwrap()], &forker, &["3"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let truth = truth_per_pid(&run.stdout);
    assert_eq!(truth.len(), 4, "{}", run.stdout);
    for (pid, sites) in &truth {
        let p = process(fin, *pid);
        assert_eq!(p["command"], "forker-fp", "{p}");
        assert_eq!(p["exited"], true, "{p}");
        assert_outstanding_is_truth(p, sites);
        assert_eq!(p["totals"]["frees"], 0, "{p}");
    }
    assert_eq!(fin["events"]["unknown_frees"], 0);
    // The recording replays to the same final report.
    let re = run_ok(
        Command::new(tracer())
            .args(["replay", "--format", "json"])
            .arg(&rec),
    );
    let replayed = reports(&re)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .unwrap();
    assert_eq!(&replayed, fin);
    std::fs::remove_dir_all(&dir).ok();

    // Without the flag the children are not traced.
    let run = launch_json(&[], &forker, &["3"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let live = by_site(&run.final_report, "live_bytes");
    assert_eq!(live.get("parent_leak"), Some(&400), "{live:?}");
    assert!(!live.contains_key("child_leak"), "{live:?}");
}

#[test]
fn children_that_exec_are_followed_until_the_last_exits() {
    if !privileged("children_that_exec_are_followed_until_the_last_exits") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let dir = std::env::temp_dir().join(format!("tracer-follow-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    // The shell exits first (exit status 3); the backgrounded leaky outlives it, and tracing
    // ends only when it is gone.
    let script = format!(
        "{l} 2 0 > {a} & {l} 1 0 > {b}; echo $! > {d}/bg; exit 3",
        l = leaky.display(),
        a = a.display(),
        b = b.display(),
        d = dir.display()
    );
    let run = launch_json(&["-f"], std::path::Path::new("/bin/sh"), &["-c", &script]);
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    let fin = &run.final_report;
    assert_eq!(fin["exit_code"], 3);
    let bg: u32 = std::fs::read_to_string(dir.join("bg"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let truth_a = truth_leaks(&std::fs::read_to_string(&a).unwrap());
    let truth_b = truth_leaks(&std::fs::read_to_string(&b).unwrap());
    assert_eq!((truth_a.len(), truth_b.len()), (5, 5));
    // The backgrounded one (its pid is $!) ran for two seconds, the other for one.
    let p = process(fin, bg);
    assert_eq!(p["command"], "leaky-fp", "{p}");
    assert_outstanding_is_truth(p, &truth_a);
    let other = fin["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] != bg && p["command"] == "leaky-fp")
        .unwrap_or_else(|| panic!("second leaky missing: {fin}"));
    assert_outstanding_is_truth(other, &truth_b);
    // Every function is probed once: the C library is not probed a second time when the
    // shell and its children exec (a second probe shows as a nested call for nearly every
    // allocation, and doubles the cost).
    let ev = &fin["events"];
    assert!(
        ev["nested"].as_u64().unwrap() * 10 < ev["allocs"].as_u64().unwrap(),
        "{ev}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
