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
