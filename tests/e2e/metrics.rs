//! `--metrics`: what a scraper reads while tracing, read by a real Prometheus and compared
//! with leaky's truth.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use tracer_tests::*;

/// GET `path` from 127.0.0.1:`port`: the response's head and body.
fn get(port: u16, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let (head, body) = s.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

fn scrape(port: u16) -> String {
    let (head, body) = get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An instant query to Prometheus's HTTP API: each series' labels and value.
fn query(port: u16, expr: &str) -> Vec<(serde_json::Value, f64)> {
    let mut q = String::new();
    for b in expr.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => q.push(b as char),
            _ => q.push_str(&format!("%{b:02X}")),
        }
    }
    let (_, body) = get(port, &format!("/api/v1/query?query={q}"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let value = r["value"][1].as_str().and_then(|x| x.parse().ok());
            (r["metric"].clone(), value.unwrap_or(f64::NAN))
        })
        .collect()
}

/// A Prometheus server scraping 127.0.0.1:`target` every second; stopped on drop.
struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let bin = std::path::Path::new("/usr/bin/prometheus");
        assert!(
            bin.exists(),
            "prometheus is missing: scripts/setup installs it (Debian package prometheus)"
        );
        let dir = std::env::temp_dir().join(format!("tracer-prom-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        // The README's alerting rule, with a `for` short enough for a test.
        let rules = dir.join("rules.yml");
        std::fs::write(
            &rules,
            "groups:\n  - name: tracer\n    rules:\n      - alert: MemoryLeak\n        \
             expr: tracer_site_verdict{verdict=\"leak\"} == 1\n        for: 2s\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: ['{}']\n\
                 scrape_configs:\n  - job_name: tracer\n    static_configs: [{{targets: ['127.0.0.1:{target}']}}]\n",
                rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus { child, dir, port }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sample of `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn prometheus_reads_leak_rates_and_verdicts_while_tracing() {
    if !privileged("prometheus_reads_leak_rates_and_verdicts_while_tracing") {
        return;
    }
    let leaky = victim("workloads/leaky.c", FP);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let prom = Prometheus::start(port);
    let t = Command::new(tracer())
        .args([
            "--metrics",
            &addr,
            "-i",
            "1",
            "--warmup",
            "3",
            "--format",
            "json",
            "--",
        ])
        .arg(&leaky)
        .args(["14", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past warm-up and the minimum history: every site judged.
    std::thread::sleep(Duration::from_secs(11));
    let text = scrape(port);
    // What Prometheus scraped and stored, read back through its query API.
    let up = query(prom.port, "up{job=\"tracer\"}");
    let rates = query(
        prom.port,
        "tracer_site_growth_rate_bytes_per_second{function=\"leak_fixed\"}",
    );
    let plateau = query(
        prom.port,
        "tracer_site_verdict{function=\"cache_insert\",verdict=\"plateau\"}",
    );
    let leaking = query(prom.port, "tracer_site_verdict{verdict=\"leak\"} == 1");
    // The rule fires 2 s after a site turns `leak` (the last one turned a moment ago): the
    // alerts are read until they cover the leaking sites, while tracer still runs.
    let functions = |v: &[(serde_json::Value, f64)]| {
        let mut f: Vec<String> = v
            .iter()
            .map(|(m, _)| m["function"].as_str().unwrap_or("").to_string())
            .collect();
        f.sort();
        f.dedup();
        f
    };
    let firing_now = || {
        query(
            prom.port,
            "ALERTS{alertname=\"MemoryLeak\",alertstate=\"firing\"}",
        )
    };
    let mut firing = firing_now();
    for _ in 0..10 {
        if functions(&firing) == functions(&leaking) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        firing = firing_now();
    }
    let out = t.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(up.len() == 1 && up[0].1 == 1.0, "up: {up:?}");
    assert_eq!(rates.len(), 1, "{rates:?}");
    assert!(
        (rates[0].1 - 6400.0).abs() <= 320.0,
        "Prometheus read leak_fixed at {} B/s, truth 6400",
        rates[0].1
    );
    assert!(plateau.iter().any(|(_, v)| *v == 1.0), "{plateau:?}");
    let mut leaks: Vec<String> = leaking
        .iter()
        .map(|(m, _)| m["function"].as_str().unwrap_or("").to_string())
        .collect();
    leaks.sort();
    leaks.dedup();
    // leak_shared's two callers are two sites of one leaf.
    assert_eq!(
        leaks,
        [
            "leak_calloc",
            "leak_fixed",
            "leak_realloc_grow",
            "leak_shared"
        ],
        "{leaking:?}"
    );

    // The alerting rule fires for the leaking sites, and for no other.
    assert_eq!(functions(&firing), leaks, "firing: {firing:?}");

    // The exposition itself, as served.
    let rate = sample(
        &text,
        "tracer_site_growth_rate_bytes_per_second",
        &["function=\"leak_fixed\""],
    )
    .unwrap_or_else(|| panic!("no leak_fixed rate in\n{text}"));
    assert!(
        (rate - 6400.0).abs() <= 320.0,
        "leak_fixed {rate} B/s, truth 6400\n{text}"
    );
    for (function, verdict) in [("leak_fixed", "leak"), ("cache_insert", "plateau")] {
        let f = format!("function=\"{function}\"");
        let v = format!("verdict=\"{verdict}\"");
        assert_eq!(
            sample(&text, "tracer_site_verdict", &[&f, &v]),
            Some(1.0),
            "{function} not {verdict}\n{text}"
        );
    }
    // A state set: exactly one verdict at 1 per site.
    let mut on: std::collections::BTreeMap<String, u32> = Default::default();
    for l in text
        .lines()
        .filter(|l| l.starts_with("tracer_site_verdict{"))
    {
        let site = l
            .split("site=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        *on.entry(site.to_string()).or_default() += l.ends_with(" 1") as u32;
    }
    assert!(
        !on.is_empty() && on.values().all(|&n| n == 1),
        "{on:?}\n{text}"
    );
    let leak_sites: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tracer_leak_sites "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tracer_leak_sites\n{text}"));
    assert_eq!(leak_sites, 5.0, "{text}");
    assert!(process_pid(&text) > 0, "{text}");
    assert!(text.contains("tracer_cpu_seconds_total "), "{text}");
    assert!(
        text.contains("tracer_lost_events_total{cause=\"ring_full_allocs\"} 0"),
        "{text}"
    );
}

/// The pid of the process line (the launched leaky).
fn process_pid(text: &str) -> u32 {
    text.lines()
        .find(|l| l.starts_with("tracer_process_live_bytes{"))
        .and_then(|l| l.split("pid=\"").nth(1)?.split('"').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_bad_or_busy_metrics_address_is_refused_before_tracing() {
    let out = run(Command::new(tracer()).args(["--metrics", "nonsense", "--", "true"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--metrics"), "{}", stderr(&out));
    if !privileged("a_bad_or_busy_metrics_address_is_refused_before_tracing") {
        return;
    }
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(Command::new(tracer()).args(["--metrics", &addr, "--", "true"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("in use"), "{}", stderr(&out));
}
