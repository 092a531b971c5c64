//! Who holds the live blocks, and what they are: a scan of a running process's memory at a
//! mark and at the final report, checked against programs whose every block's fate is known
//! (holders.c: one block of each reachability class per tick; classes.cpp: objects of three
//! classes and a plain struct from one factory).
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracer_tests::*;

/// A victim running in the background, killed on drop.
struct Victim(std::process::Child);

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(program: &std::path::Path) -> Victim {
    let v = Command::new(program)
        .arg("60")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Past its start-up: its first blocks are older than tracing.
    std::thread::sleep(Duration::from_millis(500));
    Victim(v)
}

/// The sites of a report by leaf function (the allocator's caller), rows of one leaf summed
/// by the caller's closure.
fn leaf(site: &Value) -> String {
    functions(site).first().cloned().unwrap_or_default()
}

/// A mark, as a user takes one (SIGUSR1 to tracer).
fn take_mark(t: &Running) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(t.pid() as i32, libc::SIGUSR1) };
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn check_holders(r: &Value) {
    let mut seen = Vec::new();
    for s in r["sites"].as_array().unwrap() {
        let f = leaf(s);
        let class = match f.as_str() {
            "drop_leak" | "bag_leak" => "unreachable",
            "child_alloc" => "indirect",
            "interior_keep" => "possible",
            "list_push" => "reachable",
            _ => continue,
        };
        let reach = &s["reachability"];
        assert!(reach.is_object(), "{f} was not scanned: {s}");
        // Every live block the books hold of the site is in its class: tracing began after
        // the program started, and what it allocated before is held as conservatively as
        // valgrind would, but the blocks seen are each exactly where the program put them.
        assert_eq!(
            (
                n(reach, &format!("{class}_objects")),
                n(reach, &format!("{class}_bytes"))
            ),
            (n(s, "live_objects"), n(s, "live_bytes")),
            "{f} should be all {class}: {reach}"
        );
        let held: Vec<&str> = reach["held_by"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["root"].as_str())
            .collect();
        match f.as_str() {
            "list_push" => assert_eq!(held, ["g_list in holders-fp"], "{reach}"),
            "interior_keep" => assert_eq!(held, ["g_interior in holders-fp"], "{reach}"),
            _ => assert!(held.is_empty(), "{f}: {reach}"),
        }
        seen.push(f);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "bag_leak",
            "child_alloc",
            "drop_leak",
            "interior_keep",
            "list_push"
        ],
        "{r}"
    );
}

#[test]
fn marks_and_the_final_report_tell_who_holds_each_block() {
    if !privileged("marks_and_the_final_report_tell_who_holds_each_block") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    let v = start(&holders);
    let dir = std::env::temp_dir().join(format!("tracer-reach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("holders.rec");
    let pid = v.0.id().to_string();
    let t = start_tracer(&[
        "--pid",
        &pid,
        "-d",
        "4",
        "-i",
        "10",
        "-n",
        "50",
        "--record",
        rec.to_str().unwrap(),
    ]);
    // The scans are exact on a target that stands still (a running one may have blocks whose
    // events tracer has not taken in yet: see README): the victim is stopped for the mark and
    // for the end, and goes on in between.
    let victim = v.0.id() as i32;
    // SAFETY: kill has no memory preconditions.
    let signal = |pid: i32, sig: i32| unsafe { libc::kill(pid, sig) };
    std::thread::sleep(Duration::from_millis(1500));
    signal(victim, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    signal(t.pid() as i32, libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(700));
    signal(victim, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(1000));
    signal(victim, libc::SIGSTOP);
    let (reps, _) = finish(t);
    signal(victim, libc::SIGCONT);
    let mark = reps.iter().find(|r| r["kind"] == "mark").expect("a mark");
    let fin = reps
        .iter()
        .find(|r| r["kind"] == "final")
        .expect("the final report");
    check_holders(mark);
    check_holders(fin);

    // A replay shows the same scans (they are in the recording).
    let replayed = run_ok(
        Command::new(tracer())
            .arg("replay")
            .arg(&rec)
            .args(["-i", "10", "-n", "50", "--format", "json"]),
    );
    let again = reports(&replayed);
    assert_eq!(again.iter().find(|r| r["kind"] == "final"), Some(fin));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cpp_objects_are_counted_by_class_and_a_plain_struct_gets_no_name() {
    if !privileged("cpp_objects_are_counted_by_class_and_a_plain_struct_gets_no_name") {
        return;
    }
    let classes = victim("workloads/classes.cpp", FP);
    let v = start(&classes);
    let pid = v.0.id().to_string();
    let t = start_tracer(&["--pid", &pid, "-d", "3", "-i", "10", "-n", "50"]);
    let (reps, _) = finish(t);
    let fin = reps.iter().find(|r| r["kind"] == "final").unwrap();
    let mut named = std::collections::BTreeMap::new();
    let mut plain = 0;
    for s in fin["sites"].as_array().unwrap() {
        if !leaf(s).starts_with("make") {
            continue;
        }
        let types = s["types"].as_array().cloned().unwrap_or_default();
        match types.as_slice() {
            [] => plain += n(s, "live_objects"),
            [t] => {
                // One class per `new` in make(): every live object of the row is of it.
                assert_eq!(n(t, "objects"), n(s, "live_objects"), "{s}");
                assert_eq!(n(t, "bytes"), n(s, "live_bytes"), "{s}");
                named.insert(t["name"].as_str().unwrap().to_string(), n(t, "objects"));
            }
            _ => panic!("one new, several classes: {s}"),
        }
    }
    assert_eq!(
        named.keys().map(String::as_str).collect::<Vec<_>>(),
        ["Circle", "Square", "Triangle"],
        "{fin}"
    );
    assert!(plain > 0, "the Plain structs are there, unnamed: {fin}");
    // Tracing began at one tick: one of each per tick, give or take the tick in progress.
    let counts: Vec<u64> = named.values().copied().collect();
    assert!(
        counts.iter().all(|&c| c.abs_diff(plain) <= 1),
        "{named:?} plain {plain}"
    );
}

/// valgrind's leak summary of `program args` at its exit: bytes definitely lost, indirectly
/// lost, possibly lost and still reachable.
fn valgrind_summary(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> [u64; 4] {
    let o = run(Command::new("valgrind")
        .envs(env.iter().copied())
        .args(["--leak-check=full", "--show-leak-kinds=all"])
        .arg(program)
        .args(args)
        .stdout(Stdio::null()));
    let text = stderr(&o);
    assert!(o.status.success(), "valgrind: {text}");
    [
        "definitely lost:",
        "indirectly lost:",
        "possibly lost:",
        "still reachable:",
    ]
    .map(|k| {
        let line = text
            .lines()
            .find(|l| l.contains(k))
            .unwrap_or_else(|| panic!("no '{k}' in valgrind's summary: {text}"));
        let after = line.split(k).nth(1).unwrap();
        let bytes = after.split_whitespace().next().unwrap().replace(',', "");
        bytes.parse().unwrap()
    })
}

/// A launched command's final report scans its memory at its exit (tracer holds the exit for
/// it, the way valgrind's leak check runs at exit): every block of holders.c is in its class,
/// held by its global, and each class's bytes equal valgrind's leak summary of the same run.
#[test]
fn a_launched_command_is_scanned_at_its_exit_as_valgrind_does() {
    if !privileged("a_launched_command_is_scanned_at_its_exit_as_valgrind_does") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    // 100 ticks: one block of each class per tick, whatever the pace.
    let l = launch_json(&["-n", "50", "-i", "10"], &holders, &["1"]);
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    let fin = &l.final_report;
    check_holders(fin);
    let ours = |k: &str| -> u64 {
        fin["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                let f = leaf(s);
                // The C library's stdout buffer: valgrind frees it at exit (__libc_freeres).
                [
                    "drop_leak",
                    "bag_leak",
                    "child_alloc",
                    "list_push",
                    "interior_keep",
                ]
                .contains(&f.as_str())
            })
            .map(|s| n(&s["reachability"], k))
            .sum()
    };
    let got = [
        ours("unreachable_bytes"),
        ours("indirect_bytes"),
        ours("possible_bytes"),
        ours("reachable_bytes"),
    ];
    // The program's own account (TRUTH lines at its exit), by class.
    let mut truth = [0u64; 4];
    for line in l.stdout.lines().filter(|l| l.starts_with("TRUTH")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let class = ["UNREACHABLE", "INDIRECT", "POSSIBLE", "REACHABLE"]
            .iter()
            .position(|c| *c == w[2]);
        let bytes: u64 = w[4].strip_prefix("bytes=").unwrap().parse().unwrap();
        if let Some(c) = class {
            truth[c] += bytes;
        }
    }
    assert_eq!(truth, [8_000, 8_000, 12_800, 6_400], "{}", l.stdout);
    assert_eq!(got, truth, "{fin}");
    assert_eq!(got, valgrind_summary(&holders, &["1"], &[]));
}

/// Debian's python3 (every object from malloc) with native blocks of each class from ctypes
/// (tests/victims/pyholders.py): at its exit, tracer's bytes per class agree with valgrind's
/// leak summary of the same program within 5 % of the total.
#[test]
fn a_real_python_at_exit_is_split_as_valgrind_splits_it() {
    if !privileged("a_real_python_at_exit_is_split_as_valgrind_splits_it") {
        return;
    }
    let script = root().join("tests/victims/pyholders.py");
    let python = std::path::Path::new("/usr/bin/python3");
    let script = script.to_str().unwrap();
    let env = [("PYTHONMALLOC", "malloc")];
    let l = launch_json_env(&["-n", "100000", "-i", "60"], &env, python, &[script]);
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    let mut ours = [0u64; 4];
    for s in l.final_report["sites"].as_array().unwrap() {
        let r = &s["reachability"];
        for (i, k) in ["unreachable", "indirect", "possible", "reachable"]
            .iter()
            .enumerate()
        {
            ours[i] += n(r, &format!("{k}_bytes"));
        }
    }
    let theirs = valgrind_summary(python, &[script], &env);
    let total: u64 = theirs.iter().sum();
    for (i, what) in [
        "definitely lost",
        "indirectly lost",
        "possibly lost",
        "still reachable",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            ours[i].abs_diff(theirs[i]) * 20 <= total,
            "{what}: tracer {} B, valgrind {} B (total {total} B): {ours:?} {theirs:?}",
            ours[i],
            theirs[i]
        );
    }
    // The blocks the script drops are most of what is lost: 2,000 of 1,000 B.
    assert!(ours[0] >= 1_900_000, "{ours:?}");
}

/// With --reachability every interval report is scanned, and a `leak` says what kind: the
/// dropped blocks `unreachable`, the list `held by` its global. Without it, a mark's scan is
/// told in the mark's report only, never in a later interval report.
#[test]
fn reachability_at_every_report_tells_what_kind_of_leak() {
    if !privileged("reachability_at_every_report_tells_what_kind_of_leak") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    let v = start(&holders);
    let pid = v.0.id().to_string();
    // Held still for each scan: a running target's newest blocks, not on record yet, can
    // lend one holder to another's (see README), and the test wants exact holders.
    let t = start_tracer(&[
        "--pid",
        &pid,
        "-d",
        "5.5",
        "-i",
        "1",
        "--reachability",
        "--stop-for-scan",
    ]);
    let (reps, _) = finish(t);
    let last = reps
        .iter()
        .rfind(|r| r["kind"] == "interval")
        .expect("interval reports");
    let mut told = std::collections::BTreeMap::new();
    for s in last["sites"].as_array().unwrap() {
        let f = leaf(s);
        // Every site with live blocks (temp_buffer has none).
        assert!(
            n(s, "live_objects") == 0 || s["reachability"].is_object(),
            "{f} not scanned: {s}"
        );
        if s["verdict"] == "leak" {
            told.insert(f, s["verdict_detail"].as_str().unwrap_or("").to_string());
        }
    }
    let lost = "unreachable".to_string();
    assert_eq!(told.get("drop_leak"), Some(&lost), "{last}");
    assert_eq!(told.get("bag_leak"), Some(&lost), "{last}");
    assert_eq!(told.get("child_alloc"), Some(&lost), "{last}");
    assert_eq!(
        told.get("list_push").map(String::as_str),
        Some("held by g_list in holders-fp"),
        "{last}"
    );
    assert_eq!(
        told.get("interior_keep").map(String::as_str),
        Some("held by g_interior in holders-fp"),
        "{last}"
    );

    // Without the flag: a mark is scanned, the interval reports after it are not.
    let t = start_tracer(&["--pid", &pid, "-d", "3.5", "-i", "1"]);
    std::thread::sleep(Duration::from_millis(1200));
    take_mark(&t);
    let (reps, _) = finish(t);
    let at = reps
        .iter()
        .position(|r| r["kind"] == "mark")
        .expect("a mark");
    assert!(
        reps[at]["sites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["reachability"].is_object()),
        "the mark was not scanned: {}",
        reps[at]
    );
    let later: Vec<&Value> = reps[at + 1..]
        .iter()
        .filter(|r| r["kind"] == "interval")
        .collect();
    assert!(!later.is_empty());
    for r in later {
        for s in r["sites"].as_array().unwrap() {
            assert!(s.get("reachability").is_none(), "a stale scan: {s}");
        }
    }
}

/// The state letter of a process (`T`/`t`: stopped).
fn state_of(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|r| r.trim().chars().next())
        .unwrap_or('?')
}

/// --stop-for-scan holds a running program still for each scan: the mark's and the final
/// scans are exact with no help from outside (the marks test stops holders.c itself), the
/// report says how long it was held, and it runs on afterwards.
#[test]
fn stop_for_scan_makes_a_running_programs_scan_exact() {
    if !privileged("stop_for_scan_makes_a_running_programs_scan_exact") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    let v = start(&holders);
    let pid = v.0.id();
    let ps = pid.to_string();
    let t = start_tracer(&[
        "--pid",
        &ps,
        "-d",
        "3",
        "-i",
        "10",
        "-n",
        "50",
        "--stop-for-scan",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    take_mark(&t);
    let (reps, _) = finish(t);
    for kind in ["mark", "final"] {
        let r = reps.iter().find(|r| r["kind"] == kind).expect(kind);
        check_holders(r);
        let scan = &r["scans"][0];
        assert_eq!(scan["pid"], pid, "{r}");
        assert_eq!(scan["how"], "stopped", "{r}");
        assert!(n(scan, "pause_micros") >= n(scan, "micros"), "{scan}");
        assert!(n(scan, "bytes") > 0, "{scan}");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!matches!(state_of(pid), 't' | 'T'), "left stopped");
}

/// tracer SIGKILLed at many instants while it scans with --stop-for-scan at every report:
/// the program is never left stopped (the kernel lets go of a dead tracer's tracees).
#[test]
fn a_killed_tracer_never_leaves_a_program_stopped_for_a_scan() {
    if !privileged("a_killed_tracer_never_leaves_a_program_stopped_for_a_scan") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    let v = start(&holders);
    let pid = v.0.id();
    let ps = pid.to_string();
    for i in 0..30u64 {
        let t = spawn_tracing(&[
            "--pid".as_ref(),
            ps.as_ref(),
            "-i".as_ref(),
            "0.1".as_ref(),
            "--reachability".as_ref(),
            "--stop-for-scan".as_ref(),
        ]);
        // Spread over a few reports, each with a scan.
        std::thread::sleep(Duration::from_millis(100 + (i * 37) % 300));
        t.signal(libc::SIGKILL);
        t.wait();
        std::thread::sleep(Duration::from_millis(50));
        let s = state_of(pid);
        assert!(!matches!(s, 't' | 'T'), "kill #{i} left it stopped ({s})");
    }
    // Still running its ticks: alive.
    assert!(v.0.id() == pid && state_of(pid) != 'Z' && state_of(pid) != '?');
}

/// Reads a child's stdout until a line starting with `prefix`.
fn line_from(out: &mut impl std::io::BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "no {prefix} line");
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// A target that exits while it is being scanned (running), or is killed while held still
/// for a scan: the scan ends cleanly, tracer neither crashes nor hangs, and the final report
/// comes.
#[test]
fn a_target_gone_in_the_middle_of_a_scan_ends_it_cleanly() {
    if !privileged("a_target_gone_in_the_middle_of_a_scan_ends_it_cleanly") {
        return;
    }
    let bigheap = victim("victims/bigheap.c", FP);
    for stop in [false, true] {
        // 256 MiB in 1 KiB blocks: a scan of a second or so. It lives 1 s once ready.
        let mut v = Command::new(&bigheap)
            .args(["256", "1024", "1", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(v.stdout.take().unwrap());
        line_from(&mut out, "START");
        let pid = v.id().to_string();
        let mut args = vec!["--pid", &pid, "-i", "60"];
        if stop {
            args.push("--stop-for-scan");
        }
        let t = start_tracer(&args);
        line_from(&mut out, "READY");
        let began = std::time::Instant::now();
        take_mark(&t);
        if stop {
            // Held still by the scan: killed there.
            std::thread::sleep(Duration::from_millis(300));
            v.kill().unwrap();
        }
        let (reps, _) = finish(t);
        let _ = v.wait();
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "tracer took {:?}",
            began.elapsed()
        );
        assert!(
            reps.iter().any(|r| r["kind"] == "final"),
            "no final report (stop: {stop}): {reps:?}"
        );
    }
}

/// The chain of holders of a site: chains.c keeps each buffer (buf_alloc) in a session
/// (session_new) on the global list g_sessions; holders.c's child_alloc blocks are lost with
/// the bag_leak blocks that point to them.
#[test]
fn a_chain_of_holders_names_the_sites_between_the_root_and_a_block() {
    if !privileged("a_chain_of_holders_names_the_sites_between_the_root_and_a_block") {
        return;
    }
    let chains = victim("victims/chains.c", FP);
    let l = launch_json(&["-n", "50"], &chains, &["50"]);
    let chain_of = |r: &Value, f: &str| -> Vec<String> {
        let s = r["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| leaf(s) == f)
            .unwrap_or_else(|| panic!("no {f} in {r}"));
        s["reachability"]["chain"]
            .as_array()
            .unwrap_or_else(|| panic!("no chain for {f}: {s}"))
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    let starts = |chain: &[String], want: &[&str]| {
        chain.len() == want.len() && chain.iter().zip(want).all(|(c, w)| c.starts_with(w))
    };
    let c = chain_of(&l.final_report, "buf_alloc");
    assert!(
        starts(
            &c,
            &[
                "g_sessions in chains-fp",
                "session_new (chains.c:",
                "buf_alloc (chains.c:"
            ]
        ),
        "{c:?}"
    );
    let c = chain_of(&l.final_report, "session_new");
    assert!(
        starts(&c, &["g_sessions in chains-fp", "session_new (chains.c:"]),
        "{c:?}"
    );
    let holders = victim("workloads/holders.c", FP);
    let l = launch_json(&["-n", "50"], &holders, &["0.5"]);
    let c = chain_of(&l.final_report, "child_alloc");
    assert!(
        starts(&c, &["bag_leak (holders.c:", "child_alloc (holders.c:"]),
        "{c:?}"
    );
}

/// --by class between two marks: each class's change is exactly the objects its `new` made
/// in between (the mark's own rows, from the books), the plain structs in the unnamed row.
#[test]
fn by_class_between_two_marks_counts_the_objects_made_in_between() {
    if !privileged("by_class_between_two_marks_counts_the_objects_made_in_between") {
        return;
    }
    let classes = victim("workloads/classes.cpp", FP);
    let v = start(&classes);
    let pid = v.0.id().to_string();
    let t = start_tracer(&[
        "--pid",
        &pid,
        "-d",
        "4",
        "-i",
        "60",
        "-n",
        "50",
        "--by",
        "class",
        "--stop-for-scan",
    ]);
    for wait in [1000, 1500] {
        std::thread::sleep(Duration::from_millis(wait));
        take_mark(&t);
    }
    let (reps, _) = finish(t);
    let marks: Vec<&Value> = reps.iter().filter(|r| r["kind"] == "mark").collect();
    assert_eq!(marks.len(), 2, "{reps:?}");
    let m = marks[1];
    let rows = m["classes"].as_array().expect("class rows");
    let mut named = 0;
    for row in rows {
        let delta = row["delta_objects"].as_i64().unwrap();
        match row["name"].as_str() {
            Some(class) => {
                // The make() row whose objects are of this class.
                let site = m["sites"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["types"][0]["name"] == class)
                    .unwrap_or_else(|| panic!("no site of {class}: {m}"));
                assert_eq!(
                    delta,
                    site["delta_objects"].as_i64().unwrap(),
                    "{class}: {m}"
                );
                assert!(delta > 50, "{class}: {delta}");
                named += 1;
            }
            None => {
                let plain: i64 = m["sites"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| s["types"].as_array().is_none_or(|t| t.is_empty()))
                    .map(|s| s["delta_objects"].as_i64().unwrap())
                    .sum();
                assert_eq!(delta, plain, "{m}");
            }
        }
    }
    assert_eq!(named, 3, "{rows:?}");
}

/// A launched command is held still for a mark's scan too (by the thread that holds its
/// exit): the mark is exact, and the final scan is at its exit.
#[test]
fn stop_for_scan_holds_a_launched_command_still_at_a_mark() {
    if !privileged("stop_for_scan_holds_a_launched_command_still_at_a_mark") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    let t = start_tracer(&[
        "-i",
        "60",
        "-n",
        "50",
        "--stop-for-scan",
        // Before the command: what start_tracer adds after it goes to holders (ignored).
        "--format",
        "json",
        "--",
        holders.to_str().unwrap(),
        "3",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    take_mark(&t);
    let (reps, _) = finish(t);
    let mark = reps.iter().find(|r| r["kind"] == "mark").expect("a mark");
    check_holders(mark);
    assert_eq!(mark["scans"][0]["how"], "stopped", "{mark}");
    let fin = reps.iter().find(|r| r["kind"] == "final").unwrap();
    check_holders(fin);
    assert_eq!(fin["scans"][0]["how"], "at_exit", "{fin}");
    assert_eq!(fin["exit_code"], 0, "{fin}");
}

/// tracer SIGKILLed at many instants while it scans a launched command held still at every
/// report: the command always runs to its end and prints its own last line.
#[test]
fn a_killed_tracer_never_leaves_a_launched_command_held_for_a_scan() {
    if !privileged("a_killed_tracer_never_leaves_a_launched_command_held_for_a_scan") {
        return;
    }
    let holders = victim("workloads/holders.c", FP);
    for i in 0..12u64 {
        let mut t = Command::new(tracer())
            .args(["-i", "0.1", "--reachability", "--stop-for-scan", "--"])
            .arg(&holders)
            .arg("0.8")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = t.stdout.take().unwrap();
        // Once the command runs (killed before, it never starts: nothing to hold).
        let mut err = std::io::BufReader::new(t.stderr.take().unwrap());
        read_until(&mut err, "tracer: tracing");
        std::thread::sleep(Duration::from_millis((i * 37) % 600));
        t.kill().unwrap();
        t.wait().unwrap();
        // EOF once the command has ended too (it holds the pipe's other copy).
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out, &mut text).unwrap();
        assert!(
            text.contains("TRUTH temp_buffer"),
            "kill #{i}: the command did not finish: {text}"
        );
    }
}
