//! Several processes: every process (no target), several --pid, --comm.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use serde_json::Value;
use tracer_tests::*;

fn process(r: &Value, pid: u32) -> Option<&Value> {
    r["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["pid"] == pid)
}

#[test]
fn every_process_finds_two_leakers_started_after_it() {
    if !privileged("every_process_finds_two_leakers_started_after_it") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    // An idle process, running before the tracer: it must never show up.
    let mut idle = Command::new("sleep").arg("30").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = start_tracer(&["-i", "1", "-d", "9"]);
    let spawn = || {
        // long enough for verdicts (three intervals of history) before it exits
        Command::new(&leaky)
            .args(["5", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (pa, pb) = (a.id(), b.id());
    let truth_a = truth_leaks(&stdout(&a.wait_with_output().unwrap()));
    let truth_b = truth_leaks(&stdout(&b.wait_with_output().unwrap()));
    let (reps, _) = finish(t);
    idle.kill().unwrap();
    idle.wait().unwrap();
    let fin = reps.last().unwrap();
    assert_eq!(fin["kind"], "final");
    assert_eq!(fin["pid"], 0);
    for (pid, truth) in [(pa, &truth_a), (pb, &truth_b)] {
        let p = process(fin, pid).unwrap_or_else(|| panic!("{pid} not in the final report"));
        assert_eq!(p["exited"], true);
        assert_eq!(p["command"], "leaky-fp");
        assert!(p["allocator"].as_str().unwrap().contains("libc"));
        // started after the tracer: its books are exact
        assert_outstanding_is_truth(p, truth);
        let verdicts: Vec<String> = p["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{} {} {}/{}",
                    site_name(s),
                    s["verdict"],
                    s["grown_intervals"],
                    s["verdict_intervals"]
                )
            })
            .collect();
        assert_eq!(p["summary"]["leak_sites"], 5, "{verdicts:?}");
    }
    for r in &reps {
        assert!(
            process(r, idle.id()).is_none(),
            "the idle process was reported"
        );
    }
}

#[test]
fn several_pids_each_with_its_own_books() {
    if !privileged("several_pids_each_with_its_own_books") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let mut kids = Vec::new();
    for _ in 0..2 {
        let mut c = Command::new(&leaky)
            .args(["2", "2"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        kids.push(c);
    }
    let pids: Vec<String> = kids.iter().map(|k| k.id().to_string()).collect();
    let t = start_tracer(&["--pid", &pids.join(","), "-i", "1"]);
    let truths: Vec<_> = kids
        .into_iter()
        .map(|k| (k.id(), truth_leaks(&stdout(&k.wait_with_output().unwrap()))))
        .collect();
    // the tracer ends by itself once both are gone
    let (reps, _) = finish(t);
    let fin = reps.last().unwrap();
    for (pid, truth) in &truths {
        let p = process(fin, *pid).unwrap_or_else(|| panic!("{pid} missing: {fin}"));
        assert_outstanding_is_truth(p, truth);
    }
    // Only the targets: no other process's mappings or execs (the tracepoints see every
    // process; the kernel keeps the targets).
    for r in &reps {
        for p in r["processes"].as_array().into_iter().flatten() {
            assert!(
                truths.iter().any(|(pid, _)| p["pid"] == *pid),
                "not a target: {p}"
            );
        }
    }
}

/// The first byte of the C library's `malloc` in process `pid`, as the process sees it: an
/// int3 (0xcc) is a breakpoint, a uprobe's.
fn malloc_first_byte(pid: u32) -> u8 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let (start, offset, path) = maps
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 6 && w[1].contains('x') && w[5].ends_with("/libc.so.6")).then(|| {
                let start = u64::from_str_radix(w[0].split('-').next().unwrap(), 16).unwrap();
                (
                    start,
                    u64::from_str_radix(w[2], 16).unwrap(),
                    w[5].to_string(),
                )
            })
        })
        .expect("the C library mapped");
    let nm = run_ok(Command::new("nm").args(["-D", &path]));
    let malloc = nm
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[2].split('@').next() == Some("malloc"))
                .then(|| u64::from_str_radix(w[0], 16).unwrap())
        })
        .expect("malloc in the C library");
    // The C library's text segment has file offsets equal to its addresses.
    let at = start + malloc - offset;
    let mut b = [0u8];
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    b[0]
}

/// `--comm NAME`: the processes of that name, the one running before tracer and the one that
/// execs it later, are traced; any other process is not probed at all (no breakpoint on its
/// malloc, so it pays nothing).
#[test]
fn comm_traces_processes_of_a_name_and_no_other() {
    if !privileged("comm_traces_processes_of_a_name_and_no_other") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let churn = victim("workloads/churn.c", FP);
    // A bystander, waiting (CHURN_WAIT) for the whole test.
    let mut bystander = Command::new(&churn)
        .args(["1000", "1", "30"])
        .env("CHURN_WAIT", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(bystander.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let early = Command::new(&leaky)
        .args(["4", "0"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = start_tracer(&["--comm", "leaky-fp", "-i", "1", "-d", "4"]);
    let late = Command::new(&leaky)
        .args(["2", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (pe, pl) = (early.id(), late.id());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let traced = malloc_first_byte(pl);
    let untouched = malloc_first_byte(bystander.id());
    let late_out = late.wait_with_output().unwrap();
    early.wait_with_output().unwrap();
    let (reps, _) = finish(t);
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    assert_eq!(traced, 0xcc, "no probe on the named process's malloc");
    assert_ne!(untouched, 0xcc, "a probe on a bystander's malloc");
    let fin = reps.last().unwrap();
    let mut seen = Vec::new();
    for r in &reps {
        for p in r["processes"].as_array().into_iter().flatten() {
            assert_eq!(p["command"], "leaky-fp", "{p}");
            seen.push(p["pid"].as_u64().unwrap() as u32);
        }
    }
    assert!(seen.contains(&pe), "the running one not reported");
    assert!(seen.contains(&pl), "the one started later not reported");
    // The late one is probed at its exec: what it allocates before the probes are on (its
    // first tick or so) is missed, nothing after.
    let truth = truth_leaks(&stdout(&late_out));
    let sites: Vec<&Value> = fin["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["pid"] == pl)
        .collect();
    for (site, (blocks, _)) in &truth {
        let live: i64 = sites
            .iter()
            .filter(|s| site_name(s) == *site)
            .map(|s| s["live_objects"].as_i64().unwrap_or(0))
            .sum();
        assert!(
            live as f64 >= 0.9 * *blocks as f64 && live as u64 <= *blocks,
            "{site}: {live} of {blocks} blocks"
        );
    }
}

/// `--comm NAME`: the children a named process forks (a server's workers) are probed on
/// their own as they come, and their leaks are counted exactly.
#[test]
fn comm_follows_the_children_of_a_named_process() {
    if !privileged("comm_follows_the_children_of_a_named_process") {
        return;
    }
    let forker = victim("victims/forker.c", FP);
    let t = start_tracer(&["--comm", "forker-fp", "-i", "1", "-d", "3"]);
    let out = run_ok(Command::new(&forker).args(["2", "300"]));
    let (reps, _) = finish(t);
    let fin = reps.last().unwrap();
    let mut children = 0;
    for l in out.lines().filter(|l| l.contains("child_leak")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let pid: u32 = w[1].parse().unwrap();
        let blocks: i64 = w[4].trim_start_matches("blocks=").parse().unwrap();
        let live: i64 = fin["sites"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| {
                s["pid"] == pid && functions(s).first().map(String::as_str) == Some("child_leak")
            })
            .map(|s| s["live_objects"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(live, blocks, "child {pid}: {out}");
        children += 1;
    }
    assert_eq!(children, 2, "{out}");
}

#[test]
fn every_process_probes_the_allocator_of_one_already_running() {
    if !privileged("every_process_probes_the_allocator_of_one_already_running") {
        return;
    }
    // leaky on jemalloc, running before the tracer starts: its allocator is found from its
    // map and probed, and its leak is seen from then on at its true rate.
    let leaky = victim("workloads/leaky.c", FP);
    let mut c = Command::new(&leaky)
        .args(["6", "0"])
        .env("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let t = start_tracer(&["-i", "1", "-d", "4"]);
    let (reps, rest) = finish(t);
    c.wait().unwrap();
    assert!(
        rest.contains(&format!(
            "pid {} (leaky-fp) is running: probing its allocator (jemalloc)",
            c.id()
        )),
        "{rest}"
    );
    let intervals: Vec<(f64, &Value)> = reps
        .iter()
        .filter(|r| r["kind"] == "interval")
        .filter_map(|r| Some((r["window_s"].as_f64()?, process(r, c.id())?)))
        .collect();
    assert!(intervals.len() >= 3, "{reps:?}");
    // leak_fixed: 100 blocks of 64 bytes a second, from the first full interval on, over the
    // time the reports cover. (Summed: leaky catches up the ticks a loaded machine made it
    // miss, so one interval holds 77 blocks and a later one 126.)
    let (mut got, mut secs) = (0.0, 0.0);
    for (window, p) in &intervals[1..] {
        assert_eq!(p["allocator_kind"], "jemalloc", "{p}");
        got += by_site(p, "delta_bytes")
            .get("leak_fixed")
            .copied()
            .unwrap_or(0) as f64;
        secs += window;
    }
    let want = 6400.0 * secs;
    assert!(
        (got / want - 1.0).abs() <= 0.1,
        "leak_fixed grew {got} B in {secs} s: {intervals:?}"
    );
}

#[test]
fn every_process_reaches_a_c_library_in_another_mount_namespace() {
    if !privileged("every_process_reaches_a_c_library_in_another_mount_namespace") {
        return;
    }
    // As in a container: a process in its own mount namespace sees a C library that is
    // another file (here a copy bind-mounted over the system's path). Its exec brings that
    // file into the probes, opened through /proc/PID/root.
    let leaky = victim("workloads/leaky.c", FP);
    let dir = std::env::temp_dir().join(format!("tracer-mntns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    let copy = dir.join("libc.so.6");
    std::fs::copy(libc, &copy).unwrap();
    let t = start_tracer(&["-i", "1", "-d", "5"]);
    // Past tracer's look at the processes already running: this one is seen at its exec.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} {libc} && exec {} 2 0",
            copy.display(),
            leaky.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let truth = truth_leaks(&stdout(&out));
    let (reps, rest) = finish(t);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        rest.contains(&format!(
            "pid {pid} (leaky-fp) exec'd: probing its allocator (glibc)"
        )),
        "{rest}"
    );
    let fin = reps.last().unwrap();
    let p = process(fin, pid).unwrap_or_else(|| panic!("{pid} not in {fin}"));
    // Probed within milliseconds of its exec: of leak_fixed's 200 blocks over 2 s, the
    // first few may be missed, never more than the truth counted.
    let live = by_site(p, "live_objects");
    let (blocks, _) = truth["leak_fixed"];
    let got = live.get("leak_fixed").copied().unwrap_or(0) as u64;
    assert!(
        got <= blocks && got >= blocks * 9 / 10,
        "leak_fixed {got} of {blocks}: {live:?}"
    );
}

#[test]
fn every_process_names_processes_that_live_milliseconds() {
    if !privileged("every_process_names_processes_that_live_milliseconds") {
        return;
    }
    // forker with no children: leaks 10 blocks of 40 bytes and exits within a millisecond or
    // two, before tracer can read anything of it in /proc. Its name comes with its exec record.
    let forker = victim("victims/forker.c", FP);
    let t = start_tracer(&["-i", "1", "-d", "4"]);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let mut pids = Vec::new();
    for _ in 0..3 {
        let c = Command::new(&forker)
            .arg("0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        pids.push(c.id());
        c.wait_with_output().unwrap();
    }
    let (reps, _) = finish(t);
    let fin = reps.last().unwrap();
    for pid in pids {
        let p = process(fin, pid).unwrap_or_else(|| panic!("{pid} not in {fin}"));
        assert_eq!(p["command"], "forker-fp", "{p}");
        assert_eq!(p["exited"], true, "{p}");
        // Its 10 blocks of 40 bytes are one site, named: its map was read at its exec (and
        // entering exit()), long before its events were drained.
        let site = p["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["live_objects"] == 10 && s["live_bytes"] == 400)
            .unwrap_or_else(|| panic!("no 10 x 40 B site in {p}"));
        assert_eq!(site["frames"][0]["function"], "parent_leak", "{site}");
        // The loader's own mappings (made before any map could be read) are not the program's.
        assert!(
            p["sites"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["category"] == "heap"),
            "{p}"
        );
    }
}
