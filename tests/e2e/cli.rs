//! Bad input: a clear sentence, a non-zero exit, never a panic.
use std::process::Command;

use tracer_tests::*;

fn fails_with(args: &[&str], pattern: &[&str]) {
    let out = run(Command::new(tracer()).args(args));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{args:?} succeeded: {text}");
    assert!(
        !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {text}"
    );
    let lower = text.to_lowercase();
    for p in pattern {
        assert!(
            lower.contains(&p.to_lowercase()),
            "{args:?}: {text:?} lacks {p:?}"
        );
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    fails_with(&["--pid", "4194300", "-d", "1"], &["4194300", "no process"]);
    fails_with(&["--pid", "2", "-d", "1"], &["kernel thread"]);
    fails_with(&["--pid", "1", "-i", "zero"], &["--interval", "zero"]);
    fails_with(
        &["--ring-size", "1000", "--", "true"],
        &["ring buffer", "power of two"],
    );
    fails_with(&["--", "/nonexistent/prog"], &["/nonexistent/prog"]);
    fails_with(&["--frobnicate"], &["--frobnicate"]);
    fails_with(&["--comm", "x", "--pid", "1"], &["--comm"]);
    let me = std::process::id().to_string();
    fails_with(
        &["--pid", &format!("{me},4194300"), "-d", "1"],
        &["4194300", "no process"],
    );
    fails_with(&["--pid", "1", "--", "true"], &["not both"]);
}

/// What the README says: bad usage exits 2, an error of the system 1.
#[test]
fn usage_errors_exit_2() {
    for (args, says) in [
        (&["--site", "(", "--pid", "1"][..], "--site"),
        (&["--pid", "1", "--", "true"][..], "not both"),
        (&["-i", "-1", "--pid", "1"][..], "positive number"),
        (&["-i", "1e-9", "--pid", "1"][..], "shortest interval"),
        (&["--comm", "x", "--pid", "1"][..], "--comm"),
        (&["--user", "nobody", "--pid", "1"][..], "--user"),
        (&["--", "/nonexistent/prog"][..], "/nonexistent/prog"),
    ] {
        let out = run(Command::new(tracer()).args(args));
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?}: {text}");
        assert!(!text.contains("-- -1"), "{args:?}: {text}");
    }
    // An output that cannot be created is no usage error, and is said before any tracing.
    let out =
        run(Command::new(tracer()).args(["--record", "/nonexistent-dir/x.rec", "--", "true"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[test]
fn without_privileges_it_says_to_use_sudo() {
    if !privileged("without_privileges_it_says_to_use_sudo") {
        return;
    }
    let out = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tracer())
        .args(["--", "true"]));
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(text.contains("sudo") && text.contains("CAP_BPF"), "{text}");
    assert!(!text.contains("panicked"));
}

/// The file offset of `symbol` in a non-PIE ELF executable (from `nm` and `readelf`).
fn file_offset(path: &std::path::Path, symbol: &str) -> u64 {
    let nm = run_ok(Command::new("nm").arg(path));
    let vaddr = nm
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(symbol))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .unwrap_or_else(|| panic!("{symbol} not in {}", path.display()));
    let segments = run_ok(Command::new("readelf").args(["-lW"]).arg(path));
    for l in segments
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD"))
    {
        let w: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .take(5)
            .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap_or(0))
            .collect();
        let (off, va, filesz) = (w[0], w[1], w[3]);
        if vaddr >= va && vaddr < va + filesz.max(1) {
            return off + (vaddr - va);
        }
    }
    panic!("{symbol} is in no loaded segment of {}", path.display());
}

/// Another tool holds a uprobe on the allocator with a reference counter (as bcc's memleak
/// does): tracer's refused uprobe says why and names that probe, on the uprobe-multi path.
#[test]
fn a_uprobe_held_by_another_tool_is_named() {
    if !privileged("a_uprobe_held_by_another_tool_is_named") {
        return;
    }
    let sema = victim_with("victims/sema.c", &["-O1", "-static"], "static", "");
    let malloc = file_offset(&sema, "malloc");
    let counter = file_offset(&sema, "tracer_test_semaphore");
    let held = UprobeEvent::new(
        "tracer_test/held",
        &format!("{}:{malloc:#x}({counter:#x})", sema.display()),
    );
    let out = run(Command::new(tracer()).arg("--").arg(&sema));
    drop(held);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("another tool") && text.contains("tracer_test/held"),
        "{text}"
    );
}
