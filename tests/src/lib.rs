//! Harness for the end-to-end tests: builds the C victims, runs the release `tracer` binary on
//! them as a user would, and parses its JSON reports and the victims' printed truth.
//!
//! These tests need root (they load eBPF). Outside CI they skip with a message when not root;
//! with `CI=true` a test that cannot load BPF fails instead, so CI can never pass by skipping.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Mutex,
};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The tracer under test: `TRACER_BIN`, or the workspace's release build.
pub fn tracer() -> PathBuf {
    let p = std::env::var_os("TRACER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/tracer"));
    assert!(
        p.exists(),
        "{} not found: run `cargo build --release` first (scripts/test does)",
        p.display()
    );
    p
}

/// True when the tests may load BPF. Not root: skip (false) locally, fail under CI=true.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: CI=true but not root: cannot load BPF, and CI must not skip");
    }
    eprintln!("SKIPPED {test}: needs root to load eBPF (run scripts/test as root)");
    false
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Compiles a C victim (tests/victims or tests/workloads) with gcc, once per test run.
pub fn victim(source: &str, flags: &[&str]) -> PathBuf {
    let tag = if flags.contains(&"-fno-omit-frame-pointer") {
        "fp"
    } else {
        "nofp"
    };
    victim_with(source, flags, tag, "")
}

/// Compiles a victim with extra flags (after the source: libraries to link) into a binary
/// named after `tag`, with `compiler` (empty: gcc or g++ by the source's extension).
pub fn victim_with(source: &str, flags: &[&str], tag: &str, compiler: &str) -> PathBuf {
    let _g = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = root().join("tests").join(source);
    let stem = Path::new(source)
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let dir = root().join("target/test-victims");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{stem}-{tag}"));
    let fresh = out
        .metadata()
        .and_then(|o| Ok(o.modified()? >= src.metadata()?.modified()?))
        .unwrap_or(false);
    if !fresh {
        let compiler = match compiler {
            "" if source.ends_with(".cpp") => "g++",
            "" => "gcc",
            c => c,
        };
        let (before, after): (Vec<&str>, Vec<&str>) =
            flags.iter().partition(|f| !f.starts_with("-l"));
        let st = Command::new(compiler)
            .args(&before)
            .arg("-pthread")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .args(&after)
            .status()
            .unwrap_or_else(|e| panic!("{compiler}: {e} (scripts/setup installs it)"));
        assert!(st.success(), "{compiler} failed on {}", src.display());
    }
    out
}

pub const FP: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer"];

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

/// Runs a command that must succeed; its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON reports (one object per line) in a tracer's stdout.
pub fn reports(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// `TRUTH <site> LEAK blocks=B bytes=N` lines → site → (blocks, bytes).
pub fn truth_leaks(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut t = BTreeMap::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 5 && w[0] == "TRUTH" && w[2] == "LEAK" {
            let num = |s: &str, k: &str| s.strip_prefix(k).and_then(|v| v.parse().ok());
            if let (Some(b), Some(n)) = (num(w[3], "blocks="), num(w[4], "bytes=")) {
                t.insert(w[1].to_string(), (b, n));
            }
        }
    }
    t
}

/// `TRUTH <site> OK ...` sites.
pub fn truth_ok(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3 && w[0] == "TRUTH" && w[2] == "OK").then(|| w[1].to_string())
        })
        .collect()
}

pub fn functions(site: &Value) -> Vec<String> {
    site["frames"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| f["function"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The victim site a report row belongs to: its first frame's function, with the caller for
/// leaky's shared site (`leak_shared<-path_a`).
pub fn site_name(site: &Value) -> String {
    let f = functions(site);
    match f.first().map(String::as_str) {
        Some("leak_shared") => format!("leak_shared<-{}", f.get(1).cloned().unwrap_or_default()),
        Some(name) => name.to_string(),
        None => "[no frames]".into(),
    }
}

/// Sum of a numeric field per victim site.
pub fn by_site(report: &Value, field: &str) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for s in report["sites"].as_array().into_iter().flatten() {
        *m.entry(site_name(s)).or_insert(0) += s[field].as_i64().unwrap_or(0);
    }
    m
}

/// Line number of the first line in a source file containing `needle` after `after`.
pub fn line_of(source: &str, after: &str, needle: &str) -> u64 {
    let text = std::fs::read_to_string(root().join("tests").join(source)).unwrap();
    let mut seen = false;
    for (i, l) in text.lines().enumerate() {
        if l.contains(after) {
            seen = true;
        }
        if seen && l.contains(needle) {
            return i as u64 + 1;
        }
    }
    panic!("{needle} after {after} not in {source}");
}

/// Asserts that a final report's outstanding bytes and blocks per site equal the victim's truth.
pub fn assert_outstanding_is_truth(fin: &Value, truth: &BTreeMap<String, (u64, u64)>) {
    let live_b = by_site(fin, "live_bytes");
    let live_o = by_site(fin, "live_objects");
    for (site, (blocks, bytes)) in truth {
        assert_eq!(
            live_b.get(site).copied(),
            Some(*bytes as i64),
            "{site} bytes; sites {live_b:?}"
        );
        assert_eq!(
            live_o.get(site).copied(),
            Some(*blocks as i64),
            "{site} blocks; sites {live_o:?}"
        );
    }
}

/// What `tracer --format json FLAGS -- PROGRAM ARGS` printed, with its final report.
pub struct Launched {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub final_report: Value,
}

/// Launches `program` under the tracer (JSON reports) and returns its output and final report.
pub fn launch_json(flags: &[&str], program: &Path, args: &[&str]) -> Launched {
    launch_json_env(flags, &[], program, args)
}

/// [`launch_json`] with environment variables set for the tracer and so for the program
/// (`VAR=x tracer -- prog`).
pub fn launch_json_env(
    flags: &[&str],
    env: &[(&str, &str)],
    program: &Path,
    args: &[&str],
) -> Launched {
    let out = run(Command::new(tracer())
        .args(["--format", "json"])
        .args(flags)
        .envs(env.iter().copied())
        .arg("--")
        .arg(program)
        .args(args));
    let (so, se) = (stdout(&out), stderr(&out));
    let final_report = reports(&so)
        .into_iter()
        .rfind(|r| r["kind"] == "final")
        .unwrap_or_else(|| panic!("no final report (exit {:?}): {se}", out.status.code()));
    Launched {
        stdout: so,
        stderr: se,
        code: out.status.code(),
        final_report,
    }
}

/// Reads lines from a child's pipe until one starts with `prefix`; returns it.
pub fn read_until(r: &mut impl std::io::BufRead, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "end of output before a line starting with {prefix:?}"
        );
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// tests/victims/actions.c (a process that leaks only when told to) with a tracer attached to
/// it: the test drives actions and takes marks.
pub struct Actions {
    victim: std::process::Child,
    vin: std::process::ChildStdin,
    vout: std::io::BufReader<std::process::ChildStdout>,
    tracer: std::process::Child,
    tout: std::io::BufReader<std::process::ChildStdout>,
}

impl Actions {
    /// Starts the victim, then `tracer --pid VICTIM --format json -i 1000 FLAGS`, and waits
    /// until the probes are attached.
    pub fn start(flags: &[&str]) -> Actions {
        use std::process::Stdio;
        let mut victim = Command::new(crate::victim("victims/actions.c", FP))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let vin = victim.stdin.take().unwrap();
        let mut vout = std::io::BufReader::new(victim.stdout.take().unwrap());
        read_until(&mut vout, "actions pid=");
        let mut tracer = Command::new(tracer())
            .args(["--pid", &victim.id().to_string()])
            .args(["-i", "1000", "--format", "json"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let tout = std::io::BufReader::new(tracer.stdout.take().unwrap());
        let mut terr = std::io::BufReader::new(tracer.stderr.take().unwrap());
        read_until(&mut terr, "tracer: tracing pid");
        Actions {
            victim,
            vin,
            vout,
            tracer,
            tout,
        }
    }

    /// Runs `n` actions, each acknowledged by the victim.
    pub fn act(&mut self, n: u64) {
        use std::io::Write;
        for _ in 0..n {
            self.vin.write_all(b"go\n").unwrap();
            self.vin.flush().unwrap();
            read_until(&mut self.vout, "done ");
        }
    }

    /// Takes a mark (SIGUSR1) and returns its report.
    pub fn mark(&mut self) -> Value {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.tracer.id() as i32, libc::SIGUSR1) };
        let r: Value = serde_json::from_str(&read_until(&mut self.tout, "{")).unwrap();
        assert_eq!(r["kind"], "mark", "{r}");
        r
    }

    /// Stops the tracer (SIGINT) and the victim; the tracer's exit must be clean.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.tracer.id() as i32, libc::SIGINT) };
        drop(self.vin);
        self.victim.wait().unwrap();
        assert!(self.tracer.wait().unwrap().success());
    }
}

/// A running tracer: its process, its stderr, and a thread reading its stdout as it comes (a
/// pipe nobody reads fills up and blocks the tracer's reports, and then its draining).
pub struct Running {
    child: std::process::Child,
    /// What tracer said before it was tracing.
    head: String,
    err: std::io::BufReader<std::process::ChildStderr>,
    out: std::thread::JoinHandle<String>,
}

impl Running {
    /// tracer's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts the tracer and waits until its probes are attached. The caller waits for it
/// ([`finish`]); a test that panics first leaves it to its -d deadline.
#[allow(clippy::zombie_processes)]
pub fn start_tracer(args: &[&str]) -> Running {
    let mut t = Command::new(tracer())
        .args(args)
        .args(["--format", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(t.stderr.take().unwrap());
    let mut line = String::new();
    let mut head = String::new();
    loop {
        line.clear();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
            let status = t.wait().unwrap();
            panic!("tracer ended ({status}) before attaching: {head}");
        }
        head.push_str(&line);
        if line.starts_with("tracer: tracing") {
            let mut stdout = t.stdout.take().unwrap();
            let out = std::thread::spawn(move || {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
                s
            });
            return Running {
                child: t,
                head,
                err,
                out,
            };
        }
    }
}

pub fn finish(r: Running) -> (Vec<Value>, String) {
    let Running {
        mut child,
        head,
        mut err,
        out,
    } = r;
    let status = child.wait().unwrap();
    let mut rest = head;
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    let text = out.join().unwrap();
    assert!(!rest.contains("events lost"), "{rest}");
    (reports(&text), rest)
}

/// A tracer started in the background, once its probes are on ([`spawn_tracing`]). Its stderr
/// stays open (read no further) until the process is reaped, so that a late warning of
/// tracer's never meets a closed pipe.
pub struct Tracing {
    pub child: std::process::Child,
    _err: std::io::BufReader<std::process::ChildStderr>,
}

impl Tracing {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to tracer (it may be gone already).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

/// Starts `tracer ARGS` (stdout discarded) and returns once it says it is tracing.
pub fn spawn_tracing(args: &[&std::ffi::OsStr]) -> Tracing {
    let mut child = Command::new(tracer())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    read_until(&mut err, "tracer: tracing");
    Tracing { child, _err: err }
}

/// A uprobe of another tool's: a tracefs uprobe event (`p:GROUP/NAME PATH:OFFSET[(REFCTR)]`),
/// registered and enabled (tracefs mounted for the while when it is not); gone on drop.
pub struct UprobeEvent {
    tracing: PathBuf,
    name: String,
    mounted: bool,
}

impl UprobeEvent {
    pub fn new(name: &str, place: &str) -> UprobeEvent {
        let tracing = PathBuf::from("/sys/kernel/tracing");
        let mounted = !tracing.join("uprobe_events").exists();
        if mounted {
            run_ok(
                Command::new("mount")
                    .args(["-t", "tracefs", "nodev"])
                    .arg(&tracing),
            );
        }
        let e = UprobeEvent {
            tracing,
            name: name.to_string(),
            mounted,
        };
        e.append(&format!("p:{name} {place}")).unwrap();
        std::fs::write(e.enable(), "1").unwrap();
        e
    }

    fn enable(&self) -> PathBuf {
        self.tracing.join("events").join(&self.name).join("enable")
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.tracing.join("uprobe_events"))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
    }
}

impl Drop for UprobeEvent {
    fn drop(&mut self) {
        let _ = std::fs::write(self.enable(), "0");
        let _ = self.append(&format!("-:{}", self.name));
        if self.mounted {
            let _ = Command::new("umount").arg(&self.tracing).status();
        }
    }
}
