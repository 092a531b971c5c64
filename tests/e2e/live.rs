//! `--live` in a real terminal: tmux runs tracer on leaky in a pane, the test types keys with
//! `send-keys` and reads the screen with `capture-pane`, as a user would look at it.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use tracer_tests::*;

/// A detached tmux session of 200×50 running one shell command; killed on drop.
struct Pane {
    name: String,
    dir: PathBuf,
}

impl Pane {
    fn start(tag: &str, command: &str) -> Pane {
        assert!(
            Path::new("/usr/bin/tmux").exists(),
            "tmux is missing: scripts/setup installs it (Debian package tmux)"
        );
        let name = format!("tracer-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // In its own directory; the exit status lands in a file, and the pane stays so that
        // the screen can still be read.
        let script = format!("cd {} && {command}; echo $? > rc; sleep 600", dir.display());
        let st = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "200", "-y", "50"])
            .args(["bash", "-c", &script])
            .status()
            .unwrap();
        assert!(st.success());
        Pane { name, dir }
    }

    fn resize(&self, w: u32, h: u32) {
        let st = Command::new("tmux")
            .args(["resize-window", "-t", &self.name])
            .args(["-x", &w.to_string(), "-y", &h.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let st = Command::new("tmux")
                .args(["send-keys", "-t", &self.name, k])
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    /// Waits until the screen satisfies `ok`; the screen then, or a panic with the last one.
    fn wait_for(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "no {what} after {secs}s; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// tracer's exit status, once it has exited.
    fn exit_code(&self, secs: u64) -> i32 {
        let rc = self.dir.join("rc");
        let end = Instant::now() + Duration::from_secs(secs);
        while !rc.exists() {
            assert!(
                Instant::now() < end,
                "tracer still runs {secs}s after q; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_to_string(rc).unwrap().trim().parse().unwrap()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The table rows on the screen whose site begins with `function`.
fn rows<'a>(screen: &'a str, function: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.contains(&format!("│{function} (")) || l.contains(&format!(" {function} (")))
        .collect()
}

/// The objects column of the table's rows, top to bottom (read where its title begins).
fn objects_column(screen: &str) -> Vec<u64> {
    let chars = |l: &str| l.chars().collect::<Vec<char>>();
    let Some(at) = screen
        .lines()
        .find(|l| l.contains("verdict") && l.contains("objects"))
        .and_then(|l| l.find("objects").map(|b| l[..b].chars().count()))
    else {
        return Vec::new();
    };
    screen
        .lines()
        .filter(|l| l.contains(" ← "))
        .filter_map(|l| {
            let cell: String = chars(l)
                .get(at..)?
                .iter()
                .take_while(|c| !c.is_whitespace())
                .collect();
            cell.replace(',', "").parse().ok()
        })
        .collect()
}

#[test]
fn the_live_view_shows_leaks_sorts_opens_a_stack_marks_and_quits_to_the_final_report() {
    if !privileged(
        "the_live_view_shows_leaks_sorts_opens_a_stack_marks_and_quits_to_the_final_report",
    ) {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    // The view on the terminal, the final report (JSON) on stdout: a file.
    let pane = Pane::start(
        "live",
        &format!(
            "{} --live -i 1 --warmup 2 --format json -- {} 60 0 > out 2> err",
            tracer().display(),
            leaky.display()
        ),
    );
    let s = pane.wait_for("leaking rows with their verdicts", 30, |s| {
        ["leak_fixed", "leak_calloc", "leak_shared"]
            .iter()
            .all(|f| {
                let r = rows(s, f);
                !r.is_empty() && r.iter().all(|l| l.contains("leak "))
            })
    });
    assert!(s.contains("LEAK: "), "{s}");
    assert!(s.contains("lost events: none"), "{s}");

    // A smaller terminal: the view is drawn again to its size, then back.
    pane.resize(100, 30);
    pane.wait_for("the view at 100x30", 10, |s| {
        s.lines().count() <= 30
            && s.lines().all(|l| l.chars().count() <= 100)
            && !rows(s, "leak_fixed").is_empty()
            && s.lines().any(|l| l.starts_with("q quit"))
    });
    pane.resize(200, 50);

    // s: the order goes from live bytes to live objects.
    assert!(s.contains("sites by live bytes"), "{s}");
    pane.keys(&["s"]);
    // (A screen read while a frame is being written is not the frame: wait for a whole one.)
    pane.wait_for("the table by objects", 5, |s| {
        let objects = objects_column(s);
        s.contains("sites by live objects")
            && objects.len() >= 5
            && objects.windows(2).all(|w| w[0] >= w[1])
    });

    // A filter, then Enter: leak_shared's whole stack down to main, with lines.
    pane.keys(&["/", "leak_shared", "Enter"]);
    pane.wait_for("the filtered table", 5, |s| {
        s.contains("matching /leak_shared/") && rows(s, "leak_calloc").is_empty()
    });
    pane.keys(&["Enter"]);
    let shared = line_of("workloads/leaky.c", "void *leak_shared(", "malloc");
    let s = pane.wait_for("leak_shared's stack", 5, |s| s.contains("stack of pid"));
    assert!(
        s.contains(&format!("#0  leak_shared  leaky.c:{shared}")),
        "{s}"
    );
    assert!(s.contains("#1  path_"), "{s}");
    assert!(s.contains("#2  main  leaky.c:"), "{s}");
    assert!(s.contains("verdict leak"), "{s}");

    // Two marks: the second says what changed since the first.
    pane.keys(&["Escape", "/", "Enter", "m"]);
    pane.wait_for("the first mark", 10, |s| s.contains("mark 1 taken"));
    std::thread::sleep(Duration::from_secs(2));
    pane.keys(&["m"]);
    pane.wait_for("the second mark", 10, |s| s.contains("mark 2 taken"));
    pane.keys(&["Tab"]);
    let s = pane.wait_for("the mark's table", 5, |s| s.contains("mark 2:"));
    assert!(s.contains("since mark 1"), "{s}");
    assert!(!rows(&s, "leak_fixed").is_empty(), "{s}");

    // q: leaky is interrupted as by Ctrl-C and the final report is written on stdout.
    pane.keys(&["q"]);
    assert_eq!(pane.exit_code(20), 0, "{}", pane.file("err"));
    let out = pane.file("out");
    let reps = reports(&out);
    assert!(
        reps.iter().all(|r| r["kind"] == "final") && reps.len() == 1,
        "stdout holds the final report only: {out}"
    );
    let truth = truth_leaks(&out);
    assert!(!truth.is_empty(), "leaky's truth: {out}");
    assert_outstanding_is_truth(&reps[0], &truth);
}

#[test]
fn a_recording_can_be_stepped_through_live() {
    if !privileged("a_recording_can_be_stepped_through_live") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let dir = std::env::temp_dir().join(format!("tracer-live-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rec = dir.join("leaky.rec");
    run_ok(
        Command::new(tracer())
            .args(["-i", "1", "--format", "json", "--record"])
            .arg(&rec)
            .arg("--")
            .arg(&leaky)
            .args(["6", "0"]),
    );
    let plain = run_ok(
        Command::new(tracer())
            .arg("replay")
            .arg(&rec)
            .args(["-i", "1", "--format", "json"]),
    );
    // Without a terminal (a new session has none), --live says so and prints the reports.
    let out = run(Command::new("setsid")
        .args(["-w"])
        .arg(tracer())
        .arg("replay")
        .arg(&rec)
        .args(["--live", "-i", "1", "--format", "json"])
        .stdin(std::process::Stdio::null()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--live: no terminal to draw on"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), plain);
    let pane = Pane::start(
        "replay",
        &format!(
            "{} replay {} --live -i 1 --format json > {}",
            tracer().display(),
            rec.display(),
            dir.join("out").display()
        ),
    );
    // The header's seconds since tracing began.
    let elapsed = |s: &str| -> Option<f64> {
        let head = s.lines().next()?;
        head.split(" · ")
            .find_map(|p| p.strip_suffix('s')?.parse().ok())
    };
    let s = pane.wait_for("the first report", 20, |s| {
        s.contains("replay: n next report")
    });
    let first = elapsed(&s).unwrap_or_else(|| panic!("{s}"));
    assert!((1.0..2.0).contains(&first), "{s}");
    // It waits for n.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(elapsed(&pane.screen()), Some(first));
    pane.keys(&["n"]);
    let s = pane.wait_for("the second report", 5, |s| elapsed(s) > Some(first));
    let second = elapsed(&s).unwrap();
    assert!(
        second < first + 1.5,
        "one report at a time: {first} then {second}"
    );
    pane.keys(&["n"]);
    pane.wait_for("the third report", 5, |s| elapsed(s) > Some(second));
    // q: the rest of the recording, and its final report, the same as without the view.
    pane.keys(&["q"]);
    assert_eq!(pane.exit_code(20), 0);
    let out = std::fs::read_to_string(dir.join("out")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let fin = |text: &str| reports(text).into_iter().rfind(|r| r["kind"] == "final");
    assert!(fin(&out).is_some(), "{out}");
    assert_eq!(fin(&out), fin(&plain));
}
