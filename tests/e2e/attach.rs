//! `tracer --pid N` on a running process: per-interval growth matches the victim's rates.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use serde_json::Value;
use tracer_tests::*;

/// (site, ticks per event, bytes per event, objects per event)
const LEAKY_RATES: [(&str, f64, i64, i64); 5] = [
    ("leak_fixed", 1.0, 64, 1),
    ("leak_realloc_grow", 1.0, 32, 0),
    ("leak_calloc", 5.0, 400, 1),
    ("leak_shared<-path_a", 2.0, 128, 1),
    ("leak_shared<-path_b", 10.0, 256, 1),
];

fn first_frame<'a>(report: &'a Value, site: &str) -> &'a Value {
    report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| site_name(s) == site)
        .map(|s| &s["frames"][0])
        .unwrap_or_else(|| panic!("{site} not in {report}"))
}

#[test]
fn leaky_interval_growth_matches_each_sites_rate() {
    if !privileged("leaky_interval_growth_matches_each_sites_rate") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    // Two idle seconds first: the tracer is attached before leaky's first allocation.
    let mut child = Command::new(&leaky)
        .args(["13", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let out = run(Command::new(tracer()).args([
        "--pid",
        &child.id().to_string(),
        "-i",
        "2",
        "-d",
        "11",
        "--format",
        "json",
    ]));
    child.wait().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{se}");
    let reps = reports(&so);
    let intervals: Vec<&Value> = reps.iter().filter(|r| r["kind"] == "interval").collect();
    assert!(
        intervals.len() >= 4,
        "{} interval reports: {se}",
        intervals.len()
    );
    // The first interval holds the 2 idle seconds; leaky's cache fills for 4 s after that.
    for rep in &intervals[1..] {
        let window_ticks = rep["window_s"].as_f64().unwrap() * 100.0;
        let d_bytes = by_site(rep, "delta_bytes");
        let d_objs = by_site(rep, "delta_objects");
        for (site, every, bytes, objs) in LEAKY_RATES {
            // The interval's edges cut a tick: allow one tick either side, plus one event.
            let events = window_ticks / every;
            let tol = 2.0 / every + 1.0;
            let got = d_bytes.get(site).copied().unwrap_or(0) as f64 / bytes as f64;
            assert!(
                (got - events).abs() <= tol,
                "{site}: Δbytes {} is {got:.1} events, expected {events:.1} ± {tol:.1} at {}s",
                d_bytes.get(site).copied().unwrap_or(0),
                rep["elapsed_s"]
            );
            if objs > 0 {
                assert_eq!(
                    d_objs.get(site).copied().unwrap_or(0) * bytes,
                    d_bytes[site],
                    "{site}: every block has the site's size"
                );
            } else {
                assert_eq!(
                    d_objs.get(site).copied().unwrap_or(0),
                    0,
                    "{site} stays one block"
                );
            }
        }
        let churn = d_bytes.get("temp_churn").copied().unwrap_or(0);
        assert!(
            churn.abs() <= 1024,
            "temp_churn grew {churn} B at {}s",
            rep["elapsed_s"]
        );
    }
    // The immediate caller of malloc is the first frame, with the line of the call.
    let last = intervals.last().unwrap();
    for (site, needle) in [
        ("leak_fixed", "malloc(64)"),
        ("leak_calloc", "calloc(4, 100)"),
        ("leak_realloc_grow", "realloc(realloc_buf"),
    ] {
        let f = first_frame(last, site);
        assert!(
            f["file"].as_str().unwrap_or("").ends_with("leaky.c"),
            "{site}: {f}"
        );
        assert_eq!(
            f["line"].as_u64(),
            Some(line_of(
                "workloads/leaky.c",
                &format!("SITE void {site}"),
                needle
            )),
            "{site}: {f}"
        );
    }
    // One site, two call paths: two rows, each with its caller.
    let a = first_frame(last, "leak_shared<-path_a");
    let b = first_frame(last, "leak_shared<-path_b");
    assert_eq!(a["line"], b["line"]);
    assert_eq!(
        a["line"].as_u64(),
        Some(line_of(
            "workloads/leaky.c",
            "SITE void *leak_shared",
            "malloc(n)"
        ))
    );
}

#[test]
fn attached_before_the_first_allocation_the_books_are_exact() {
    if !privileged("attached_before_the_first_allocation_the_books_are_exact") {
        return;
    }
    let allocs = victim("victims/allocs.c", FP);
    let mut child = Command::new(&allocs)
        .args(["300", "1.5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let out = run(Command::new(tracer()).args([
        "--pid",
        &child.id().to_string(),
        "-i",
        "1",
        "-n",
        "50",
        "--format",
        "json",
    ]));
    let mut victim_out = String::new();
    std::io::Read::read_to_string(&mut reader, &mut victim_out).unwrap();
    child.wait().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{se}");
    let truth = truth_leaks(&victim_out);
    assert_eq!(truth.len(), 9, "{victim_out}");
    let reps = reports(&so);
    // The target's exit ends tracing with a final report equal to its truth.
    let fin = reps
        .iter()
        .rfind(|r| r["kind"] == "final")
        .expect("final report");
    assert_outstanding_is_truth(fin, &truth);
    // And each leaking site was seen growing in the intervals.
    for site in truth.keys() {
        assert!(
            reps.iter().any(|r| r["kind"] == "interval"
                && by_site(r, "delta_bytes").get(site).copied().unwrap_or(0) > 0),
            "{site} never grew in an interval"
        );
    }
}
