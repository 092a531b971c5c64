//! Harm no one: tracer, running as root, never runs what a target names, and the files it writes
//! are created without following what another user planted.
use std::{
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tracer_tests::*;

/// A directory of the test's, readable by every user.
fn shared_dir(tag: &str) -> PathBuf {
    let d = root()
        .join("target/test-victims")
        .join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn nobody() -> (u32, u32) {
    let line = run_ok(Command::new("id").args(["-u", "nobody"]));
    let uid: u32 = line.trim().parse().unwrap();
    let gid: u32 = run_ok(Command::new("id").args(["-g", "nobody"]))
        .trim()
        .parse()
        .unwrap();
    (uid, gid)
}

/// `setpriv` runs a command as nobody.
fn as_nobody(program: &Path) -> Command {
    let (uid, gid) = nobody();
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(program);
    c
}

/// A user's program whose `PT_INTERP` is a static program of theirs that leaves a mark when it
/// runs as root. Returns (victim, mark).
fn fake_interpreter(dir: &Path) -> (PathBuf, PathBuf) {
    let mark = dir.join("RAN_AS_ROOT");
    let fake = dir.join("fakeld");
    let victim = dir.join("victim");
    std::fs::write(
        dir.join("fakeld.c"),
        format!(
            "#include <fcntl.h>\n#include <unistd.h>\nint main(void) {{ if (geteuid() == 0) \
             {{ int fd = open(\"{}\", O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }} \
             return 0; }}\n",
            mark.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("victim.c"), "int main(void) { return 0; }\n").unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&fake)
            .arg(dir.join("fakeld.c")),
    );
    run_ok(
        Command::new("gcc")
            .arg(format!("-Wl,--dynamic-linker={}", fake.display()))
            .arg("-o")
            .arg(&victim)
            .arg(dir.join("victim.c")),
    );
    let (uid, gid) = nobody();
    for f in [&fake, &victim] {
        std::os::unix::fs::chown(f, Some(uid), Some(gid)).unwrap();
    }
    // The interpreter does leave its mark when root runs it: the test can fail.
    run(&mut Command::new(&fake));
    assert!(mark.exists(), "the fake interpreter does not mark");
    std::fs::remove_file(&mark).unwrap();
    (victim, mark)
}

#[test]
fn a_users_program_interpreter_is_never_run_as_root() {
    if !privileged("a_users_program_interpreter_is_never_run_as_root") {
        return;
    }
    let dir = shared_dir("interp");
    let (victim, mark) = fake_interpreter(&dir);
    // Every process: the user runs the program three times while tracer watches.
    let t = start_tracer(&["-i", "60", "-d", "3"]);
    for _ in 0..3 {
        let _ = as_nobody(&victim).status();
    }
    let _ = finish(t);
    assert!(
        !mark.exists(),
        "system-wide: the target's PT_INTERP ran as root"
    );
    // A traced shell of the user's that runs it, children followed.
    let mut sh = as_nobody(Path::new("/bin/sh"))
        .args([
            "-c",
            &format!("read x; {0}; {0}; sleep 1", victim.display()),
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let t = start_tracer(&["--pid", &sh.id().to_string(), "-f", "-i", "60"]);
    {
        use std::io::Write;
        let mut input = sh.stdin.take().unwrap();
        input.write_all(b"go\n").unwrap();
    }
    sh.wait().unwrap();
    let _ = finish(t);
    assert!(
        !mark.exists(),
        "--pid -f: the target's PT_INTERP ran as root"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_files_never_follow_what_another_user_planted() {
    if !privileged("output_files_never_follow_what_another_user_planted") {
        return;
    }
    let dir = shared_dir("planted");
    let precious = dir.join("precious");
    std::fs::write(&precious, "keep me\n").unwrap();
    let flame = dir.join("leaks.folded");
    let record = dir.join("run.rec");
    // The final names are links to the precious file, and so are the temporary names the
    // next few hundred pids would have had.
    symlink(&precious, &flame).unwrap();
    symlink(&precious, &record).unwrap();
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    for pid in me..me + 300 {
        let mut n = flame.clone().into_os_string();
        n.push(format!(".tmp{pid}"));
        let _ = symlink(&precious, n);
    }
    let leaky = victim("workloads/leaky.c", FP);
    let l = launch_json(
        &[
            "-i",
            "1",
            "--flame",
            flame.to_str().unwrap(),
            "--record",
            record.to_str().unwrap(),
        ],
        &leaky,
        &["1", "0"],
    );
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
    for f in [&flame, &record] {
        let m = std::fs::symlink_metadata(f).unwrap();
        assert!(
            m.file_type().is_file(),
            "{} is not a file of its own",
            f.display()
        );
        assert_eq!(m.permissions().mode() & 0o777, 0o644);
    }
    assert!(std::fs::read_to_string(&flame)
        .unwrap()
        .contains("leak_fixed"));
    // A missing directory is said before tracing starts.
    let o = run(Command::new(tracer())
        .args(["--flame", "/nonexistent-dir/x.svg", "--"])
        .arg(&leaky)
        .args(["1", "0"]));
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("TRUTH"), "the command ran");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_launched_command_runs_as_the_user_asked() {
    if !privileged("a_launched_command_runs_as_the_user_asked") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let dir = shared_dir("user");
    let copy = dir.join("leaky");
    std::fs::copy(&leaky, &copy).unwrap();
    let script = dir.join("who.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nid -u\nexec {} 1 0\n", copy.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let l = launch_json(&["-i", "1", "-u", "nobody"], &script, &[]);
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    let (uid, _) = nobody();
    assert!(
        l.stdout.lines().any(|x| x.trim() == uid.to_string()),
        "{}",
        l.stdout
    );
    // Traced exactly, as without --user.
    assert_outstanding_is_truth(&l.final_report, &truth_leaks(&l.stdout));
    // --user without a command, or an unknown user: a usage error.
    for args in [
        &["-u", "nobody"][..],
        &["-u", "no-such-user-x", "--", "true"][..],
    ] {
        let o = run(Command::new(tracer()).args(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The state letter of a process (`T` stopped), None once it is gone or a zombie.
fn live_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let c = s.rsplit_once(')')?.1.trim_start().chars().next()?;
    (c != 'Z').then_some(c)
}

/// Waits up to `secs` for `pid` to be gone; its state when it is not.
fn gone_within(pid: u32, secs: f64) -> Result<(), char> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        match live_state(pid) {
            None => return Ok(()),
            Some(s) if std::time::Instant::now() >= end => return Err(s),
            Some(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// Instants spread evenly over `0..window_ms`, in a scrambled order (the same every run).
fn instants(n: u32, window_ms: u32) -> impl Iterator<Item = std::time::Duration> {
    (0..n).map(move |i| {
        let k = (i * 37) % n;
        std::time::Duration::from_micros(u64::from(window_ms) * 1000 * u64::from(k) / u64::from(n))
    })
}

/// SIGKILLs tracer at many instants while a launched command execs and exits: every command
/// runs to its end by itself (tracer's death leaves nothing that holds it).
#[test]
fn tracer_killed_at_any_instant_leaves_launched_commands_running() {
    if !privileged("tracer_killed_at_any_instant_leaves_launched_commands_running") {
        return;
    }
    let brief = victim("victims/brief.c", FP);
    let dir = shared_dir("killed");
    let mut bad = Vec::new();
    let mut started = 0;
    let mut killed = Vec::new();
    for (kind, window) in [("exec", 100), ("exit", 150)] {
        for (i, at) in instants(50, window).enumerate() {
            let out = dir.join(format!("{kind}{i}"));
            let mut args: Vec<std::ffi::OsString> = vec!["-i".into(), "60".into(), "--".into()];
            if kind == "exec" {
                // The launched shell execs the program: killed around that exec.
                args.extend([
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("exec {} 20 {} 7", brief.display(), out.display()).into(),
                ]);
            } else {
                args.extend([
                    brief.clone().into(),
                    "60".into(),
                    out.clone().into(),
                    "7".into(),
                ]);
            }
            // From the moment the probes are on and the command is released.
            let t = spawn_tracing(&args.iter().map(|a| a.as_ref()).collect::<Vec<_>>());
            std::thread::sleep(at);
            t.signal(libc::SIGKILL);
            // Reaped at the end: a killed tracer's exit releases its probes, which takes a
            // while, and the command is not waiting for it.
            killed.push(t);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let Ok(text) = std::fs::read_to_string(&out) else {
                continue; // killed before the command started: nothing to harm
            };
            let Some(pid) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok())
            else {
                continue;
            };
            started += 1;
            if let Err(state) = gone_within(pid, 5.0) {
                bad.push(format!(
                    "{kind} #{i} at {at:?}: pid {pid} left in state {state}"
                ));
                // SAFETY: signalling a process this test started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGCONT);
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            } else if !std::fs::read_to_string(&out).unwrap().contains("done") {
                bad.push(format!(
                    "{kind} #{i} at {at:?}: the command did not finish its work"
                ));
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(bad.is_empty(), "{bad:#?}");
    // Most kills landed while the command ran (the test is not all early kills).
    assert!(
        started >= 60,
        "only {started} of 100 commands started before the kill"
    );
}

/// SIGKILLs tracer at many instants while it traces a C++ program that throws from `operator
/// new` in a loop, on the C library's allocator (libstdc++'s `operator new`) and on two that
/// bring their own (seen returning at their `ret` instructions, no return probe): the program
/// is never left stopped, catches every throw and exits 0.
#[test]
fn tracer_killed_at_any_instant_leaves_a_throwing_program_well() {
    if !privileged("tracer_killed_at_any_instant_leaves_a_throwing_program_well") {
        return;
    }
    let builds = [
        ("glibc", victim("victims/throws.cpp", FP)),
        (
            "jemalloc",
            victim_with(
                "victims/throws.cpp",
                &[FP, &["-ljemalloc"]].concat(),
                "je",
                "",
            ),
        ),
        (
            "tcmalloc",
            victim_with(
                "victims/throws.cpp",
                &[FP, &["-ltcmalloc_minimal"]].concat(),
                "tc",
                "",
            ),
        ),
    ];
    for (name, throws) in builds {
        killed_while_throwing(name, &throws);
    }
}

fn killed_while_throwing(name: &str, throws: &Path) {
    // Rounds of 3 throws every 2 ms (see throws.cpp), for longer than the kills take.
    let victim = Command::new(throws)
        .args(["100000", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = victim.id();
    let mut stopped = Vec::new();
    let mut killed = Vec::new();
    for (i, at) in instants(40, 300).enumerate() {
        let mut t = Command::new(tracer())
            .args(["--pid", &pid.to_string(), "-i", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50) + at);
        t.kill().unwrap();
        killed.push(t);
        std::thread::sleep(std::time::Duration::from_millis(100));
        if live_state(pid) == Some('T') {
            stopped.push(format!("#{i} at {at:?}"));
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
        assert!(
            live_state(pid).is_some(),
            "{name}: the program died after kill #{i}"
        );
    }
    for mut t in killed {
        t.wait().unwrap();
    }
    // SAFETY: as above; SIGTERM ends its loop early, cleanly (see throws.cpp).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let out = victim.wait_with_output().unwrap();
    assert!(stopped.is_empty(), "{name}: left stopped: {stopped:?}");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{name}: exit {:?}: {text}",
        out.status
    );
    let caught = text
        .lines()
        .find(|l| l.starts_with("caught"))
        .unwrap_or_default();
    let words: Vec<&str> = caught.split_whitespace().collect();
    assert!(
        words.len() == 4 && words[1] == words[3] && words[1] != "0",
        "{name}: {text}"
    );
}

/// `tracer -- cmd | head -1`: the reader goes away, the command is not left running without
/// tracer; tracer waits for it and exits with its status.
#[test]
fn a_closed_stdout_never_orphans_the_command() {
    if !privileged("a_closed_stdout_never_orphans_the_command") {
        return;
    }
    let dir = shared_dir("closed");
    let mark = dir.join("finished");
    let mut t = Command::new(tracer())
        .args(["-i", "0.2", "--format", "json", "--", "/bin/sh", "-c"])
        .arg(format!("sleep 1.5; echo yes > {}; exit 3", mark.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut out = std::io::BufReader::new(t.stdout.take().unwrap());
        read_until(&mut out, "{");
    } // the reader closes the pipe after one report
    let status = t.wait().unwrap();
    assert!(mark.exists(), "tracer exited before its command finished");
    assert_eq!(status.code(), Some(3));
    std::fs::remove_dir_all(&dir).ok();
}

/// A recording that fills its disk stops with a warning; tracing goes on to the final report.
#[test]
fn a_full_disk_stops_the_recording_not_the_tracing() {
    if !privileged("a_full_disk_stops_the_recording_not_the_tracing") {
        return;
    }
    let dir = shared_dir("fulldisk");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tracer-test"])
            .arg(&dir),
    );
    let record = dir.join("run.rec");
    let leaky = victim("workloads/leaky.c", FP);
    let l = launch_json(
        &["-i", "0.5", "--record", record.to_str().unwrap()],
        &leaky,
        &["2", "0"],
    );
    let _ = Command::new("umount").arg(&dir).status();
    assert_eq!(l.code, Some(0), "{}", l.stderr);
    assert!(l.stderr.contains("stopped after"), "{}", l.stderr);
    // Said in a report too, once; the final report is whole and exact.
    let said: Vec<_> = reports(&l.stdout)
        .into_iter()
        .filter(|r| r["warnings"].is_array())
        .collect();
    assert_eq!(said.len(), 1, "{}", l.stdout);
    assert!(said[0]["warnings"][0].as_str().unwrap().contains("run.rec"));
    assert_outstanding_is_truth(&l.final_report, &truth_leaks(&l.stdout));
    std::fs::remove_dir_all(&dir).ok();
}

/// How many times the kernel has logged that it kept a uprobe it failed to unregister.
fn kernel_leaks() -> usize {
    let log = run(&mut Command::new("dmesg"));
    assert!(log.status.success(), "dmesg: {}", stderr(&log));
    stdout(&log).matches("leaking uprobe").count()
}

/// Whether tracer, attaching to `pid` for a moment, finds breakpoints already in place.
fn breakpoints_seen(pid: u32) -> String {
    let o = run(Command::new(tracer()).args(["--pid", &pid.to_string(), "-d", "0.3"]));
    let text = stderr(&o);
    assert!(o.status.success(), "{text}");
    text.lines()
        .filter(|l| l.contains("already has breakpoints"))
        .collect()
}

/// tracer is SIGKILLed at many instants while it ends (its probes being released): the
/// target keeps no breakpoint behind, and a tracer attaching later finds none. Another tool's
/// uprobe on the target's malloc is found and named.
#[test]
fn probes_never_outlive_tracer_and_others_are_named() {
    if !privileged("probes_never_outlive_tracer_and_others_are_named") {
        return;
    }
    let sema = victim_with("victims/sema.c", &["-O1", "-static"], "static", "");
    let leaks_before = kernel_leaks();
    let mut target = Command::new(&sema).arg("120").spawn().unwrap();
    let pid = target.id();
    assert_eq!(breakpoints_seen(pid), "", "breakpoints before the test");
    let mut killed = Vec::new();
    for at in instants(20, 400) {
        let t = spawn_tracing(&[
            "--pid".as_ref(),
            pid.to_string().as_ref(),
            "-i".as_ref(),
            "60".as_ref(),
        ]);
        t.signal(libc::SIGINT);
        std::thread::sleep(at);
        t.signal(libc::SIGKILL);
        killed.push(t);
    }
    // And in launch mode, where a command that ends soon makes tracer end too. (Kills land
    // once the probes are attached: a registration the kill interrupts is the kernel's to
    // leave half done, whoever attaches.)
    let brief = victim("victims/brief.c", FP);
    for at in instants(30, 400) {
        let t = spawn_tracing(&[
            "-i".as_ref(),
            "60".as_ref(),
            "--".as_ref(),
            brief.as_os_str(),
            "100".as_ref(),
            "/dev/null".as_ref(),
            "0".as_ref(),
        ]);
        std::thread::sleep(at);
        t.signal(libc::SIGKILL);
        killed.push(t);
    }
    for t in killed {
        t.wait();
    }
    // The last releases finish (a grace period per link, in the exiting processes).
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(breakpoints_seen(pid), "", "probes outlived a killed tracer");
    assert_eq!(
        kernel_leaks(),
        leaks_before,
        "the kernel says it kept uprobes a killed tracer was releasing"
    );
    // Another tool's uprobe on malloc (a tracefs uprobe event) is seen and named.
    let nm = run_ok(Command::new("nm").arg(&sema));
    let malloc_va = nm
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("malloc"))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .unwrap();
    // A static non-PIE program: its text segment maps file offset 0 at 0x400000.
    let other = UprobeEvent::new(
        "tracer_test/other",
        &format!("{}:{:#x}", sema.display(), malloc_va - 0x400000),
    );
    let seen = breakpoints_seen(pid);
    drop(other);
    target.kill().unwrap();
    target.wait().unwrap();
    assert!(seen.contains("malloc"), "{seen:?}");
}
