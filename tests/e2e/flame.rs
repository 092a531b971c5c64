//! Flame exports read by real consumers nobody here wrote: `go tool pprof`, inferno's flame
//! graph and differential code, speedscope's published JSON schema.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use tracer_tests::*;

fn scratch(name: &str) -> PathBuf {
    let d = root()
        .join("target/test-flame")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// leaky's leaking sites: (name in the report, leaf function in flame data)
const LEAKS: [&str; 5] = [
    "leak_fixed",
    "leak_realloc_grow",
    "leak_calloc",
    "leak_shared<-path_a",
    "leak_shared<-path_b",
];

/// Bytes per folded stack, keyed like the report's site names (leaf, and caller for
/// leak_shared).
fn folded_by_site(text: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let (stack, v) = line.rsplit_once(' ').unwrap();
        let frames: Vec<&str> = stack.split(';').collect();
        let leaf = frames[frames.len() - 1];
        let name = if leaf == "leak_shared" {
            format!("leak_shared<-{}", frames[frames.len() - 2])
        } else {
            leaf.to_string()
        };
        *m.entry(name).or_insert(0) += v.parse::<i64>().unwrap();
    }
    m
}

#[test]
fn every_format_of_the_leaks_view_from_one_run() {
    if !privileged("every_format_of_the_leaks_view_from_one_run") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let d = scratch("leaks");
    let files = ["l.folded", "l.svg", "l.pb.gz", "l.speedscope.json"].map(|f| d.join(f));
    let mut flags: Vec<&str> = Vec::new();
    for f in &files {
        flags.push("--flame");
        flags.push(f.to_str().unwrap());
    }
    let run = launch_json(&flags, &leaky, &["3", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let truth = truth_leaks(&run.stdout);
    let report = by_site(fin, "live_bytes");

    // folded: each leaking path with the report's (and the truth's) bytes, no temporaries
    let folded = std::fs::read_to_string(&files[0]).unwrap();
    let by = folded_by_site(&folded);
    for site in LEAKS {
        assert_eq!(by.get(site), report.get(site), "{site}: {folded}");
        assert_eq!(by[site], truth[site].1 as i64, "{site} truth");
    }
    assert!(!folded.contains("temp_churn") && !folded.contains("cache_insert"));
    // ...and inferno's own flame graph code renders it
    let mut svg = Vec::new();
    inferno::flamegraph::from_reader(
        &mut inferno::flamegraph::Options::default(),
        std::fs::File::open(&files[0]).unwrap(),
        &mut svg,
    )
    .expect("inferno renders the folded file");
    assert!(String::from_utf8(svg).unwrap().contains("leak_calloc"));

    // SVG: titled with the target and the value; the five leaf towers carry the report's
    // bytes and are the largest leaves
    let svg = std::fs::read_to_string(&files[1]).unwrap();
    assert!(
        svg.contains("outstanding bytes of leaking sites of leaky-fp"),
        "title"
    );
    let towers = svg_frames(&svg);
    let mut leaves: Vec<(i64, String)> = Vec::new();
    for site in ["leak_fixed", "leak_realloc_grow", "leak_calloc"] {
        assert_eq!(
            towers.get(site).copied(),
            report.get(site).copied(),
            "{site}"
        );
        leaves.push((towers[site], site.to_string()));
    }
    let shared = report["leak_shared<-path_a"] + report["leak_shared<-path_b"];
    assert_eq!(towers.get("leak_shared").copied(), Some(shared));
    assert_eq!(
        towers.get("path_a").copied(),
        Some(report["leak_shared<-path_a"])
    );
    assert_eq!(
        towers.get("path_b").copied(),
        Some(report["leak_shared<-path_b"])
    );
    for (f, v) in &towers {
        if ![
            "leak_fixed",
            "leak_realloc_grow",
            "leak_calloc",
            "leak_shared",
            "path_a",
            "path_b",
            "main",
            "_start",
            "all",
        ]
        .contains(&f.as_str())
            && !f.starts_with("__libc_start")
        {
            assert!(
                leaves.iter().all(|(l, _)| v < l),
                "{f} ({v} B) outweighs a leak: {towers:?}"
            );
        }
    }
    assert!(!svg.contains("temp_churn"));

    // pprof: go tool pprof lists the leaking functions with their bytes
    let top = pprof_top(&files[2], "inuse_space");
    for site in ["leak_fixed", "leak_realloc_grow", "leak_calloc"] {
        assert_eq!(
            top.get(site).copied(),
            Some(truth[site].1 as i64),
            "{site}: {top:?}"
        );
    }
    assert_eq!(
        top.get("leak_shared").copied(),
        Some((truth["leak_shared<-path_a"].1 + truth["leak_shared<-path_b"].1) as i64)
    );
    assert!(!top.contains_key("temp_churn"));
    let objects = pprof_top(&files[2], "inuse_objects");
    assert_eq!(
        objects.get("leak_fixed").copied(),
        Some(truth["leak_fixed"].0 as i64)
    );

    // speedscope: valid against speedscope's own published schema
    validate_speedscope(&files[3]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&files[3]).unwrap()).unwrap();
    assert_eq!(doc["profiles"][0]["unit"], "bytes");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn allocs_view_shows_the_temporaries() {
    if !privileged("allocs_view_shows_the_temporaries") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let d = scratch("allocs");
    let folded = d.join("a.folded");
    let pb = d.join("a.pb.gz");
    let run = launch_json(
        &[
            "--flame-what",
            "allocs",
            "--flame",
            folded.to_str().unwrap(),
            "--flame",
            pb.to_str().unwrap(),
        ],
        &leaky,
        &["2", "0"],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let by = folded_by_site(&std::fs::read_to_string(&folded).unwrap());
    assert!(by.get("temp_churn").copied().unwrap_or(0) > 0, "{by:?}");
    assert!(by.get("cache_insert").copied().unwrap_or(0) > 0, "{by:?}");
    // every leak_fixed allocation leaked: allocated bytes are the truth
    let truth = truth_leaks(&run.stdout);
    assert_eq!(by["leak_fixed"], truth["leak_fixed"].1 as i64);
    let top = pprof_top(&pb, "alloc_space");
    assert!(top.get("temp_churn").copied().unwrap_or(0) > 0, "{top:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn growth_between_marks_as_a_differential_flame_graph() {
    if !privileged("growth_between_marks_as_a_differential_flame_graph") {
        return;
    }
    let d = scratch("growth");
    let diff = d.join("g.diff.folded");
    let svg = d.join("g.svg");
    let mut run = Actions::start(&[
        "--flame-what",
        "growth",
        "--flame",
        diff.to_str().unwrap(),
        "--flame",
        svg.to_str().unwrap(),
    ]);
    run.act(1);
    run.mark();
    run.act(3);
    run.mark();
    run.act(2); // after the last mark: not part of the growth between the two marks
    run.stop();
    let text = std::fs::read_to_string(&diff).unwrap();
    let row = text
        .lines()
        .find(|l| l.contains("leak_one"))
        .unwrap_or_else(|| panic!("no leak_one stack in {text}"));
    let cols: Vec<i64> = row
        .rsplitn(3, ' ')
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    // before = 1 action, after = 4 actions of 5 blocks of 96 bytes
    assert_eq!((cols[1], cols[0]), (480, 1920), "{row}");
    // inferno's flame graph code reads the differential file
    let mut out = Vec::new();
    inferno::flamegraph::from_reader(
        &mut inferno::flamegraph::Options::default(),
        std::fs::File::open(&diff).unwrap(),
        &mut out,
    )
    .expect("inferno renders the differential file");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.contains("leak_one") && svg_text.contains("bytes grown"));
    std::fs::remove_dir_all(&d).unwrap();
}

/// `<title>name (1,234 bytes, 12.5%)</title>` → name → bytes, summed over the SVG's frames.
fn svg_frames(svg: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for part in svg.split("<title>").skip(1) {
        let title = &part[..part.find("</title>").unwrap()];
        if let Some((name, rest)) = title.rsplit_once(" (") {
            let n: String = rest
                .split(" bytes")
                .next()
                .unwrap()
                .chars()
                .filter(char::is_ascii_digit)
                .collect();
            if let Ok(v) = n.parse::<i64>() {
                *m.entry(name.to_string()).or_insert(0) += v;
            }
        }
    }
    m
}

/// `go tool pprof -top` for one sample type: function → flat bytes (or objects).
fn pprof_top(file: &Path, index: &str) -> BTreeMap<String, i64> {
    let unit = if index.ends_with("objects") {
        ""
    } else {
        "-unit=B"
    };
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-top", "-nodecount=200"])
        .arg(format!("-sample_index={index}"));
    if !unit.is_empty() {
        cmd.arg(unit);
    }
    let out = cmd
        .arg(file)
        .output()
        .expect("go (Debian's golang-go; scripts/setup installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let mut m = BTreeMap::new();
    for l in stdout(&out).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 6 && w[1].ends_with('%') && w[4].ends_with('%') {
            let n: String = w[0].trim_end_matches('B').to_string();
            if let Ok(v) = n.parse::<i64>() {
                m.insert(w[5..].join(" "), v);
            }
        }
    }
    m
}

/// Validates a speedscope file against the schema from speedscope's npm package (fetched by
/// scripts/setup) with python's jsonschema (Debian's python3-jsonschema).
fn validate_speedscope(file: &Path) {
    let schema = root().join("target/test-tools/speedscope-file-format-schema.json");
    assert!(
        schema.exists(),
        "{} missing: run scripts/setup (it fetches speedscope's schema with npm)",
        schema.display()
    );
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, jsonschema; \
             jsonschema.validate(json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))); \
             print('valid')",
        ])
        .arg(file)
        .arg(&schema)
        .output()
        .expect("/usr/bin/python3");
    assert!(
        stdout(&out).trim() == "valid",
        "speedscope file invalid: {}",
        stderr(&out)
    );
}
