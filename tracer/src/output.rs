//! Report output that never stalls the tracing: reports are handed to a writer thread, so a
//! reader that is slow to empty the pipe (or a terminal scrolled back) delays the text, not the
//! draining of the ring buffer. A closed pipe still ends the run quietly.
use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
};

/// Reports waiting before a warning says the reader is behind.
const BACKLOG_WARNING: usize = 64;

struct Shared {
    closed: AtomicBool,
    pending: AtomicUsize,
    warned: AtomicBool,
}

/// The `Write` the reports go to: bytes gather until `flush`, which queues them as one piece.
pub struct Queued {
    buf: Vec<u8>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    shared: Arc<Shared>,
}

/// Waits for the queued reports to be written (call at the end of the run).
pub struct Writer(Option<JoinHandle<()>>);

impl Writer {
    pub fn finish(mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// A writer thread on `out` and the queue feeding it.
pub fn spawn(mut out: impl Write + Send + 'static) -> (Queued, Writer) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let shared = Arc::new(Shared {
        closed: AtomicBool::new(false),
        pending: AtomicUsize::new(0),
        warned: AtomicBool::new(false),
    });
    let s = shared.clone();
    let handle = std::thread::Builder::new()
        .name("reports".into())
        .spawn(move || {
            for piece in rx {
                let res = out.write_all(&piece).and_then(|_| out.flush());
                s.pending.fetch_sub(1, Ordering::Relaxed);
                if res.is_err() {
                    // A closed pipe (or a full disk): nobody reads any more.
                    s.closed.store(true, Ordering::Relaxed);
                    break;
                }
            }
        })
        .expect("cannot start the report writer thread");
    (
        Queued {
            buf: Vec::new(),
            tx: Some(tx),
            shared,
        },
        Writer(Some(handle)),
    )
}

impl Write for Queued {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::take(&mut self.buf);
        let pending = self.shared.pending.fetch_add(1, Ordering::Relaxed) + 1;
        if pending > BACKLOG_WARNING && !self.shared.warned.swap(true, Ordering::Relaxed) {
            eprintln!(
                "tracer: warning: {pending} reports wait for their reader (stdout is not being read); \
                 tracing goes on, the reports queue in memory"
            );
        }
        match &self.tx {
            Some(tx) if tx.send(piece).is_ok() => Ok(()),
            _ => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let _ = self.flush();
        // Closing the queue ends the writer thread once it has written everything.
        self.tx.take();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>, Arc<AtomicBool>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.1.load(Ordering::Relaxed) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn reports_arrive_whole_and_in_order() {
        let sink = Sink::default();
        let (mut q, w) = spawn(sink.clone());
        for i in 0..100 {
            write!(q, "report {i} ").unwrap();
            writeln!(q, "line").unwrap();
            q.flush().unwrap();
        }
        drop(q);
        w.finish();
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert!(text.starts_with("report 0 line\nreport 1 line\n"));
    }

    #[test]
    fn a_closed_reader_shows_as_a_broken_pipe() {
        let sink = Sink::default();
        sink.1.store(true, Ordering::Relaxed);
        let (mut q, w) = spawn(sink);
        writeln!(q, "x").unwrap();
        q.flush().unwrap();
        // the writer thread meets the closed pipe; later writes say so
        let mut broken = false;
        for _ in 0..1000 {
            if q.write(b"y").is_err() {
                broken = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(broken);
        drop(q);
        w.finish();
    }
}
