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
