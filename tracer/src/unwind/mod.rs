//! Unwind tables for the kernel side's stack walk (see `tracer-ebpf/src/unwind.rs`): built
//! from each file's call-frame information, one per file, on a thread of their own.
pub mod cache;
pub mod store;
pub mod table;

use std::{
    path::PathBuf,
    sync::{mpsc, Arc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How often the tables of files no process maps any more are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub use store::{Miss, Stats, Store};

/// What the unwind thread is asked to do.
pub enum Job {
    Miss(Miss),
    /// `pid` mapped code from a file at `addr`.
    Mapped {
        pid: u32,
        addr: u64,
    },
    /// Build these files' tables now (while the tables hold fewer rows than the limit),
    /// then answer.
    Preload(Vec<PathBuf>, Option<u64>, mpsc::Sender<()>),
    Stop,
}

/// The thread that builds tables; stopped and joined on drop.
pub struct Unwinder {
    jobs: mpsc::Sender<Job>,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
}

impl Unwinder {
    pub fn start(mut store: Store) -> std::io::Result<Unwinder> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let stats = store.stats();
        let thread = std::thread::Builder::new()
            .name("tracer-unwind".into())
            .spawn(move || {
                // A table asked for is awaited by every walk through its file (walked by frame
                // pointers meanwhile): this thread runs before the busy ones when woken. Not
                // real-time: a large file takes half a second to build.
                // SAFETY: sets this thread's own nice value.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -15) };
                let mut next_sweep = Instant::now() + SWEEP_EVERY;
                loop {
                    let job = match rx
                        .recv_timeout(next_sweep.saturating_duration_since(Instant::now()))
                    {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            store.sweep();
                            next_sweep = Instant::now() + SWEEP_EVERY;
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    match job {
                        Job::Stop => break,
                        Job::Miss(m) => store.miss(&m),
                        Job::Mapped { pid, addr } => store.mapped(pid, addr),
                        Job::Preload(paths, limit, done) => {
                            for p in &paths {
                                if limit.is_some_and(|l| store.rows() >= l) {
                                    break;
                                }
                                store.preload(p);
                            }
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Unwinder {
            jobs,
            stats,
            thread: Some(thread),
        })
    }

    /// Where misses go.
    pub fn sender(&self) -> mpsc::Sender<Job> {
        self.jobs.clone()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Builds the tables of `paths` before returning.
    pub fn preload(&self, paths: Vec<PathBuf>) {
        self.preload_within(paths, None);
    }

    /// Builds the tables of `paths`, in order, before returning; with a `limit`, stops once
    /// the tables hold that many rows (room is left for the files that come later).
    pub fn preload_within(&self, paths: Vec<PathBuf>, limit: Option<u64>) {
        let (tx, rx) = mpsc::channel();
        if self.jobs.send(Job::Preload(paths, limit, tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

impl Drop for Unwinder {
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
