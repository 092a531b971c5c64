//! `--metrics ADDR`: `/metrics` served over HTTP from a thread of its own, for Prometheus (or
//! anything that scrapes OpenMetrics) while tracing.
//!
//! The text served is the last report's, encoded when the report is made
//! (`report::metrics`): a scrape never waits for the pipeline, and the pipeline never waits
//! for a scraper. The server answers `GET /metrics` (and `GET /` with a pointer to it), one
//! short request at a time, each read with a timeout and a size cap, so a slow or hostile
//! client cannot hold it or make it buffer without bound.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::report::{
    metrics::{encode_report, Own},
    Report, ReportKind,
};

/// What a request may send before tracer answers.
const MAX_REQUEST: usize = 8192;

/// The metrics endpoint: publish a report, and scrapers see it.
#[derive(Clone)]
pub struct Exporter {
    text: Arc<Mutex<Arc<str>>>,
}

impl Exporter {
    /// Listens on `addr` (the port is taken now: a busy one is an error before tracing).
    pub fn serve(addr: SocketAddr) -> Result<Exporter> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("cannot serve metrics on {addr}: is the port in use, or the address not this host's?")
        })?;
        let text: Arc<Mutex<Arc<str>>> = Arc::new(Mutex::new(Arc::from("# EOF\n")));
        let shared = text.clone();
        std::thread::Builder::new()
            .name("tracer-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let body = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    // A client that misbehaves only loses its own answer.
                    let _ = answer(conn, &body);
                }
            })
            .context("cannot start the metrics thread")?;
        Ok(Exporter { text })
    }

    /// Makes `r` what the next scrapes read. A mark's report (what changed between two
    /// marks) is not the state of the process: the metrics stay the last interval's.
    pub fn publish(&self, r: &Report) {
        if r.kind == ReportKind::Mark {
            return;
        }
        let body: Arc<str> = Arc::from(encode_report(r, Own::now()));
        *self.text.lock().unwrap_or_else(|e| e.into_inner()) = body;
    }
}

/// Reads one request and answers it.
fn answer(mut conn: TcpStream, body: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = String::from_utf8_lossy(&req);
    let mut words = line.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(
            &mut conn,
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        ("GET", "/") => respond(
            &mut conn,
            "200 OK",
            "text/plain; charset=utf-8",
            "tracer: the metrics are at /metrics\n",
        ),
        ("GET", _) => respond(&mut conn, "404 Not Found", "text/plain", "see /metrics\n"),
        _ => respond(&mut conn, "405 Method Not Allowed", "text/plain", ""),
    }
}

fn respond(conn: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body.as_bytes())?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn serves_the_last_report_and_nothing_else() {
        // A free port: bound, then let go for the exporter.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let e = Exporter::serve(addr).unwrap();
        let first = get(addr, "/metrics");
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
        assert!(first.ends_with("\r\n\r\n# EOF\n"), "{first}");
        let mut r = crate::report::sample_report();
        r.pid = 7;
        r.totals.live_bytes = 0;
        e.publish(&r);
        let second = get(addr, "/metrics?x=1");
        assert!(
            second.contains("tracer_process_live_bytes{pid=\"7\",command=\"leaky\"} 0"),
            "{second}"
        );
        assert!(get(addr, "/other").starts_with("HTTP/1.1 404"));
        let mut c = TcpStream::connect(addr).unwrap();
        write!(c, "POST /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        assert!(s.starts_with("HTTP/1.1 405"), "{s}");
        // A port in use is an error that says so.
        let busy = Exporter::serve(addr).err().unwrap();
        assert!(format!("{busy:#}").contains("in use"), "{busy:#}");
    }
}
