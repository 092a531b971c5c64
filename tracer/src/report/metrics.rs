//! A report as Prometheus / OpenMetrics metrics (`--metrics`): the writer behind `/metrics`.
//!
//! Each interval report replaces the whole exposition: per process its live bytes and
//! objects; per site of the report (its top sites by growth, at most `--top`: a bounded
//! number of series) the live bytes and objects, the growth rate and the verdict as a state
//! set; the totals and the verdict summary; lost events by cause; tracer's own CPU time and
//! memory. Names follow Prometheus conventions (base units, `_total` on counters); the README
//! lists them with example queries.
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry},
};

use super::{Report, SiteReport};
use crate::aggregate::verdict::Verdict;

/// Every verdict, in the order the state set lists them.
const VERDICTS: [Verdict; 6] = [
    Verdict::New,
    Verdict::Leak,
    Verdict::Plateau,
    Verdict::Churn,
    Verdict::Freed,
    Verdict::Uncertain,
];

type Labels = Vec<(&'static str, String)>;
type IntGauges = Family<Labels, Gauge>;
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;

/// What tracer itself costs, read when the report is encoded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Own {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

impl Own {
    /// This process's CPU time (user and system) and resident memory now.
    pub fn now() -> Own {
        // SAFETY: an out-parameter getrusage fills.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a rusage.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let resident = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0);
        Own {
            cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
            resident_bytes: resident * page,
        }
    }
}

/// A short label that stays the same for a site from one scrape to the next: its process and
/// where its frames are (file and offset, never a reused id), hashed.
pub fn site_label(s: &SiteReport) -> String {
    let mut h = crc32fast::Hasher::new();
    h.update(&s.pid.to_le_bytes());
    h.update(&[s.category as u8]);
    for f in &s.frames {
        match &f.module {
            Some(m) => {
                h.update(m.as_bytes());
                h.update(&f.offset.to_le_bytes());
            }
            None => h.update(&f.addr.to_le_bytes()),
        }
    }
    format!("{:08x}", h.finalize())
}

/// The leaf of a site's stack (the function that called the allocator) and where.
fn leaf(s: &SiteReport) -> (String, String) {
    match s.frames.first() {
        Some(f) => (f.name(), f.location().unwrap_or_default()),
        None => ("[stack unavailable]".into(), String::new()),
    }
}

/// A label value as the text format wants it. prometheus-client writes label values as they
/// are: a process may name itself anything (`a"b`, a newline), and one unescaped quote would
/// make the whole exposition unreadable to Prometheus.
fn esc(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A new metric of type `M`, registered under `name`.
fn metric<M: Metric + Clone + Default>(reg: &mut Registry, name: &str, help: &str) -> M {
    let m = M::default();
    reg.register(name, help, m.clone());
    m
}

/// The OpenMetrics text of a report.
pub fn encode_report(r: &Report, own: Own) -> String {
    let mut reg = Registry::default();
    let proc_bytes: IntGauges = metric(
        &mut reg,
        "tracer_process_live_bytes",
        "Bytes the process holds in live heap blocks and mappings it made, as traced",
    );
    let proc_objects: IntGauges = metric(
        &mut reg,
        "tracer_process_live_objects",
        "Live heap blocks and mappings of the process, as traced",
    );
    let site_bytes: IntGauges = metric(
        &mut reg,
        "tracer_site_live_bytes",
        "Bytes live at a call site (the top sites of the last report)",
    );
    let site_objects: IntGauges = metric(
        &mut reg,
        "tracer_site_live_objects",
        "Live blocks of a call site (the top sites of the last report)",
    );
    let site_rate: FloatGauges = metric(
        &mut reg,
        "tracer_site_growth_rate_bytes_per_second",
        "Growth of a call site's live bytes over the verdict window (slope), in bytes per second",
    );
    let site_verdict: IntGauges = metric(
        &mut reg,
        "tracer_site_verdict",
        "A call site's verdict as a state set: 1 for its current verdict, 0 for the others",
    );
    let leak_sites: Gauge = metric(
        &mut reg,
        "tracer_leak_sites",
        "Call sites judged leaking in the last report",
    );
    let leak_rate: Gauge<f64, AtomicU64> = metric(
        &mut reg,
        "tracer_leak_rate_bytes_per_second",
        "Summed growth rate of the leaking call sites, in bytes per second",
    );
    let live_bytes: Gauge = metric(
        &mut reg,
        "tracer_live_bytes",
        "Bytes live over every traced process",
    );
    let events: Family<Labels, Counter> = metric(
        &mut reg,
        "tracer_events",
        "Allocator calls the kernel recorded, by kind",
    );
    let lost: Family<Labels, Counter> = metric(
        &mut reg,
        "tracer_lost_events",
        "Events the kernel could not record, by cause (see the README for the flag that fixes \
         each)",
    );
    let cpu: Counter<f64, AtomicU64> = metric(
        &mut reg,
        "tracer_cpu_seconds",
        "CPU time tracer itself used, user and system, in seconds",
    );
    let rss: Gauge = metric(
        &mut reg,
        "tracer_resident_memory_bytes",
        "Resident memory of tracer itself, in bytes",
    );

    let procs: Vec<(u32, &str, u64, u64)> = if r.processes.is_empty() {
        vec![(
            r.pid,
            &r.command[..],
            r.totals.live_bytes,
            r.totals.live_objects,
        )]
    } else {
        r.processes
            .iter()
            .map(|p| {
                (
                    p.pid,
                    &p.command[..],
                    p.totals.live_bytes,
                    p.totals.live_objects,
                )
            })
            .collect()
    };
    for (pid, command, bytes, objects) in procs {
        let l: Labels = vec![("pid", pid.to_string()), ("command", esc(command))];
        proc_bytes.get_or_create(&l).set(bytes as i64);
        proc_objects.get_or_create(&l).set(objects as i64);
    }
    for s in &r.sites {
        let (function, location) = leaf(s);
        let l: Labels = vec![
            ("pid", s.pid.to_string()),
            ("site", site_label(s)),
            ("function", esc(&function)),
            ("location", esc(&location)),
        ];
        site_bytes.get_or_create(&l).set(s.live_bytes as i64);
        site_objects.get_or_create(&l).set(s.live_objects as i64);
        site_rate
            .get_or_create(&l)
            .set(s.assessment.rate_bytes_per_s);
        for v in VERDICTS {
            let mut lv = l.clone();
            lv.push(("verdict", v.as_str().to_string()));
            site_verdict
                .get_or_create(&lv)
                .set((s.assessment.verdict == v) as i64);
        }
    }
    leak_sites.set(r.summary.leak_sites as i64);
    leak_rate.set(r.summary.leak_bytes_per_s);
    live_bytes.set(r.totals.live_bytes as i64);
    for (kind, n) in [("alloc", r.events.allocs), ("free", r.events.frees)] {
        events
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc_by(n);
    }
    for (&cause, &n) in &r.lost {
        lost.get_or_create(&vec![("cause", cause.to_string())])
            .inc_by(n);
    }
    cpu.inc_by(own.cpu_seconds);
    rss.set(own.resident_bytes as i64);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample_report;

    fn site(function: &str, line: u32, verdict: Verdict, rate: f64) -> SiteReport {
        let mut s = sample_report().sites.remove(0);
        let f = &mut s.frames[0];
        f.function = Some(function.into());
        f.line = Some(line);
        f.offset = 0x1000 + line as u64;
        s.assessment.verdict = verdict;
        s.assessment.rate_bytes_per_s = rate;
        s
    }

    fn report() -> Report {
        let mut r = sample_report();
        r.sites = vec![
            site("leak_fixed", 67, Verdict::Leak, 6400.0),
            site("cache_insert", 80, Verdict::Plateau, 0.0),
        ];
        r.totals.live_bytes = 1280;
        r.events.allocs = 100;
        r
    }

    #[test]
    fn sites_carry_their_rate_and_one_verdict_set_to_one() {
        let text = encode_report(&report(), Own::default());
        let leak = site_label(&report().sites[0]);
        assert!(
            text.contains(&format!(
                "tracer_site_growth_rate_bytes_per_second{{pid=\"42\",site=\"{leak}\",function=\"leak_fixed\",location=\"leaky.c:67\"}} 6400.0"
            )),
            "{text}"
        );
        let verdicts: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tracer_site_verdict{") && l.contains("cache_insert"))
            .collect();
        assert_eq!(verdicts.len(), VERDICTS.len(), "{text}");
        let on: Vec<&&str> = verdicts.iter().filter(|l| l.ends_with(" 1")).collect();
        assert_eq!(on.len(), 1, "{text}");
        assert!(on[0].contains("verdict=\"plateau\""), "{text}");
        assert!(text.contains("tracer_lost_events_total{cause=\"ring_full_allocs\"} 3"));
        assert!(text.contains("tracer_process_live_bytes{pid=\"42\",command=\"leaky\"} 1280"));
        assert!(text.contains("# TYPE tracer_cpu_seconds counter"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_site_label_is_stable_and_tells_sites_apart() {
        let r = report();
        assert_eq!(site_label(&r.sites[0]), site_label(&report().sites[0]));
        assert_ne!(site_label(&r.sites[0]), site_label(&r.sites[1]));
        let mut other = report().sites[0].clone();
        other.pid = 43;
        assert_ne!(site_label(&r.sites[0]), site_label(&other));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = report();
        r.command = "we\"ird\\name\n".into();
        let text = encode_report(&r, Own::default());
        assert!(text.contains(r#"command="we\"ird\\name\n""#), "{text}");
    }
}
