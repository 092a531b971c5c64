//! Whole stacks through code built without frame pointers: the unwind tables (--unwind auto).
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use serde_json::Value;
use tracer_tests::*;

/// gcc's default at -O2 on x86-64: no frame pointers.
const NOFP: &[&str] = &["-O2", "-g"];

fn sites(fin: &Value) -> &Vec<Value> {
    fin["sites"].as_array().expect("sites")
}

/// The functions of a stack up to `main`, which must be there, every one named.
fn named_to_main(site: &Value) -> Vec<String> {
    let f = functions(site);
    let main = f
        .iter()
        .position(|n| n == "main")
        .unwrap_or_else(|| panic!("no main in {f:?}: {site}"));
    let upto = f[..=main].to_vec();
    assert!(upto.iter().all(|n| !n.is_empty()), "unnamed frame: {f:?}");
    upto
}

#[test]
fn leaky_without_frame_pointers_has_exact_sites_and_whole_stacks() {
    if !privileged("leaky_without_frame_pointers_has_exact_sites_and_whole_stacks") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let run = launch_json(&[], &leaky, &["2", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let truth = truth_leaks(&run.stdout);
    assert_eq!(truth.len(), 5, "{}", run.stdout);
    let fin = &run.final_report;
    assert_outstanding_is_truth(fin, &truth);
    // One row per site: leak_shared's two callers apart, no garbage frames splitting a site.
    let leak_rows: Vec<&Value> = sites(fin)
        .iter()
        .filter(|s| truth.contains_key(&site_name(s)))
        .collect();
    assert_eq!(leak_rows.len(), 5, "{fin}");
    for s in &leak_rows {
        let f = named_to_main(s);
        assert!(s.get("stack_cut").is_none(), "{s}");
        if f[0] == "leak_shared" {
            assert!(f[1] == "path_a" || f[1] == "path_b", "{f:?}");
            assert_eq!(f[2], "main", "{f:?}");
        } else {
            assert_eq!(f[1], "main", "{f:?}");
        }
        // Through the C library's start code to the program's entry.
        assert_eq!(
            functions(s).last().map(String::as_str),
            Some("_start"),
            "{s}"
        );
    }
    let u = &fin["unwind"];
    assert!(u["files"].as_u64().unwrap() >= 2, "{u}");
    assert!(u["rows"].as_u64().unwrap() > 1000, "{u}");
    // Launched: the tables were built before the program ran.
    assert_eq!(fin["events"]["fp_fallback"], 0, "{}", fin["events"]);
}

#[test]
fn frame_pointers_only_loses_the_callers_above_the_first_frame() {
    if !privileged("frame_pointers_only_loses_the_callers_above_the_first_frame") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let run = launch_json(&["--unwind", "fp"], &leaky, &["2", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let fin = &run.final_report;
    let truth = truth_leaks(&run.stdout);
    let live = by_site(fin, "live_bytes");
    // The allocator's caller is still right, so the bytes per first frame are exact...
    for site in ["leak_fixed", "leak_calloc", "leak_realloc_grow"] {
        assert_eq!(
            live.get(site).copied(),
            Some(truth[site].1 as i64),
            "{site}: {live:?}"
        );
    }
    let shared: i64 = live
        .iter()
        .filter(|(k, _)| k.starts_with("leak_shared"))
        .map(|(_, v)| v)
        .sum();
    let want = truth["leak_shared<-path_a"].1 + truth["leak_shared<-path_b"].1;
    assert_eq!(shared, want as i64, "{live:?}");
    // ...but the frames above it are lost: leak_shared's two callers cannot be told apart.
    assert!(
        !(live.contains_key("leak_shared<-path_a") && live.contains_key("leak_shared<-path_b")),
        "{live:?}"
    );
    assert!(fin.get("unwind").is_none(), "{fin}");
}

#[test]
fn cpp_containers_without_frame_pointers_are_whole_through_libstdcxx() {
    if !privileged("cpp_containers_without_frame_pointers_are_whole_through_libstdcxx") {
        return;
    }
    let prog = victim("victims/containers.cpp", NOFP);
    let run = launch_json(&[], &prog, &["1000"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let truth = truth_leaks(&run.stdout);
    assert_eq!(truth.len(), 3, "{}", run.stdout);
    let fin = &run.final_report;
    for (func, &(objects, bytes)) in &truth {
        let with: Vec<&Value> = sites(fin)
            .iter()
            .filter(|s| functions(s).contains(func))
            .collect();
        assert_eq!(with.len(), 1, "{func}: {with:?}");
        let s = with[0];
        assert_eq!(s["live_objects"].as_u64(), Some(objects), "{func}: {s}");
        assert_eq!(s["live_bytes"].as_u64(), Some(bytes), "{func}: {s}");
        let f = named_to_main(s);
        let at = f.iter().position(|n| n == func).unwrap();
        // The program's own frames between its function and main.
        let want: &[&str] = match func.as_str() {
            "store::fill_index(int)" => &["main"],
            _ => &["work(int)", "main"],
        };
        assert_eq!(&f[at + 1..], want, "{func}: {f:?}");
    }
    // std::string grows inside libstdc++ (no frame pointers there): its frames are walked.
    let text = sites(fin)
        .iter()
        .find(|s| functions(s).iter().any(|f| f == "store::grow_text(int)"))
        .unwrap();
    let in_libstdcxx = text["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["module"].as_str().unwrap_or("").contains("libstdc++"))
        .count();
    assert!(in_libstdcxx >= 1, "{text}");
}

#[test]
fn attached_to_a_running_program_its_stacks_are_whole_from_the_first() {
    if !privileged("attached_to_a_running_program_its_stacks_are_whole_from_the_first") {
        return;
    }
    let leaky = victim("workloads/leaky.c", NOFP);
    let mut child = Command::new(&leaky)
        .args(["2", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let out =
        run(Command::new(tracer()).args(["--pid", &child.id().to_string(), "--format", "json"]));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    child.wait().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{se}");
    let fin = reports(&so)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .expect("a final report");
    // The code it had mapped got its tables before the probes went on.
    assert_eq!(fin["events"]["fp_fallback"], 0, "{}", fin["events"]);
    let truth = truth_leaks(&rest);
    assert_outstanding_is_truth(&fin, &truth);
    for s in sites(&fin)
        .iter()
        .filter(|s| truth.contains_key(&site_name(s)))
    {
        named_to_main(s);
        assert!(s.get("stack_cut").is_none(), "{s}");
    }
}

#[test]
fn a_library_loaded_after_attaching_gets_its_table_when_a_stack_meets_it() {
    if !privileged("a_library_loaded_after_attaching_gets_its_table_when_a_stack_meets_it") {
        return;
    }
    let lib = victim_with(
        "victims/plugin.c",
        &["-O2", "-g", "-DPLUGIN", "-shared", "-fPIC"],
        "so-nofp",
        "",
    );
    let prog = victim_with("victims/plugin.c", &["-O2", "-g", "-ldl"], "nofp", "");
    let mut child = Command::new(&prog)
        .arg(&lib)
        .args(["1500", "400"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let out =
        run(Command::new(tracer()).args(["--pid", &child.id().to_string(), "--format", "json"]));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    child.wait().unwrap();
    let (so, se) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{se}");
    let fin = reports(&so)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .expect("a final report");
    let truth = truth_leaks(&rest);
    let (blocks, bytes) = truth["plugin_alloc"];
    let rows: Vec<&Value> = sites(&fin)
        .iter()
        .filter(|s| site_name(s) == "plugin_alloc")
        .collect();
    // Every block counted, whichever way its stack was walked.
    let sum = |k: &str| rows.iter().map(|s| s[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (sum("live_objects"), sum("live_bytes")),
        (blocks, bytes),
        "{rows:?}"
    );
    // The first stacks met the library before its table: walked by frame pointers, counted.
    assert!(
        fin["events"]["fp_fallback"].as_u64().unwrap() > 0,
        "{}",
        fin["events"]
    );
    // Then whole: the library's frames, the program's, main.
    let whole = rows
        .iter()
        .find(|s| functions(s).iter().any(|f| f == "main"))
        .unwrap_or_else(|| panic!("no whole stack: {rows:?}"));
    let f = named_to_main(whole);
    assert_eq!(
        f,
        ["plugin_alloc", "plugin_work", "run_plugin", "main"],
        "{whole}"
    );
    // Most blocks have the whole stack.
    assert!(
        whole["live_objects"].as_u64().unwrap() > blocks / 2,
        "{rows:?}"
    );
}
