//! Report output that never stalls the tracing: reports are handed to a writer thread, so a
//! reader that is slow to empty the pipe (or a terminal scrolled back) delays the text, not the
//! draining of the ring buffer. A closed pipe still ends the run quietly.
use std::{
    io::{self, Write},
    path::Path,
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

/// The directory a file at `path` is created in.
fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A new file that takes the place of `path`: created in `path`'s directory under a name
/// nobody can guess (`O_EXCL`), then renamed over `path`. Nothing another user planted there
/// (a symlink, a file) is followed or written through; whatever was at `path` is replaced.
/// Readable by all (a recording made as root is replayed without root), written by its owner.
pub fn create_replacing(path: &Path) -> io::Result<std::fs::File> {
    let tmp = new_temp(path)?;
    tmp.persist(path).map_err(|e| e.error)
}

/// Writes `bytes` to a fresh file that then replaces `path` in one step (see
/// [`create_replacing`]): a reader sees the old file or the new one, never a part.
pub fn replace_with(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = new_temp(path)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn new_temp(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    if path.is_dir() {
        return Err(io::Error::other("it is a directory"));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".tracer-")
        .tempfile_in(dir_of(path))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(tmp)
}

/// Fails unless a file can be created at `path` (its directory exists and is writable, and
/// it is not a directory): said before tracing starts, not after.
pub fn check_writable(path: &Path, what: &str) -> Result<(), CannotWrite> {
    let dir = dir_of(path);
    if !dir.is_dir() {
        return Err(CannotWrite(format!(
            "{what} {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    new_temp(path)
        .map(drop)
        .map_err(|e| CannotWrite(format!("{what} {}: cannot create it: {e}", path.display())))
}

/// An output file that cannot be written: an error of the system, not of the command line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CannotWrite(String);

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
