//! The event stream: a thread of its own empties the kernel's ring buffer into batches, so that
//! the slow work of the pipeline (reading a new process's `/proc` files, probing a new
//! allocator, symbolizing, writing reports) never keeps the ring from being drained. A burst of
//! process starts then waits in memory here, not in the kernel's ring, where it would be lost.
//!
//! The queue is bounded (by events): past the bound the reader stops draining, and the kernel
//! counts what its full ring loses, as with no thread at all.
use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use super::{parse, stacks::Stacks, Event, Record};

/// The reader drains at least this often (the kernel wakes it sooner when a quarter of the
/// ring is full, and for the records it sends at once).
const DRAIN_PERIOD: Duration = Duration::from_millis(100);
/// Events queued for the pipeline beyond which the reader stops draining (about 100 bytes
/// each).
const MAX_QUEUED: usize = 1 << 20;

/// What one drain brought, in the ring's order, and what names it.
#[derive(Default)]
pub struct Batch {
    pub events: Vec<Event>,
    /// The frames (innermost first) of every stack id the events name.
    pub stacks: HashMap<i32, Arc<[u64]>>,
    /// The last flush (see [`Stream::flush`]) this batch completes.
    flushed: u64,
}

/// The reader's own counts, read by the collector's counters.
#[derive(Default)]
pub struct ReaderCounts {
    /// Records that could not be decoded.
    pub bad_records: AtomicU64,
    /// Stacks the reader could not name (see [`Stacks`]).
    pub stacks_failed: AtomicU64,
}

/// Decodes the ring buffer into batches (what the thread runs).
pub struct Reader {
    ring_buf: RingBuf<MapData>,
    stacks: Stacks,
    counts: Arc<ReaderCounts>,
    /// Sampled mode: each sampled allocation's weight (see [`Weights`]).
    weights: Option<Weights>,
}

impl Reader {
    pub(super) fn new(
        ring_buf: RingBuf<MapData>,
        stacks: Stacks,
        counts: Arc<ReaderCounts>,
        sample_rate: u64,
    ) -> Reader {
        Reader {
            ring_buf,
            stacks,
            counts,
            weights: (sample_rate != 0).then(|| Weights::new(sample_rate)),
        }
    }

    /// Everything waiting in the ring buffer. Every allocation's stack id is the reader's own
    /// (see [`Stacks`]), and its frames come with the batch.
    fn drain(&mut self) -> Batch {
        self.stacks.trim();
        let mut batch = Batch::default();
        while let Some(item) = self.ring_buf.next() {
            match parse(&item) {
                Ok(Record::Event {
                    event: Event::Alloc(mut a),
                    stack,
                    ..
                }) => {
                    // A mapping's stack is a site of its own even where a heap block's stack
                    // has the same frames: the category is part of the key.
                    let mapping = a.func.is_mapping();
                    // Mappings are never sampled; a release-only record stands for itself.
                    if let Some(w) = self.weights.as_mut().filter(|_| !mapping && a.addr != 0) {
                        a.weight = w.of(a.size);
                    }
                    a.stack_id = match stack {
                        Some(ips) => self.stacks.intern(mapping, ips),
                        // Without frames (a release, or a stack the kernel could not take):
                        // a negative errno, never an id.
                        None => a.stack_id.min(-1),
                    };
                    batch.events.push(Event::Alloc(a))
                }
                Ok(Record::Event { event, .. }) => batch.events.push(event),
                // Notices come on their own ring, to the map reader: not here.
                Ok(Record::Exiting { .. } | Record::UnwindMiss(_) | Record::CodeMapped { .. })
                | Err(_) => {
                    self.counts.bad_records.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for ev in &mut batch.events {
            let Event::Alloc(a) = ev else { continue };
            // An `operator new` probed at entry only carries its caller's return address apart
            // (see `AllocRecord::old_addr`): its stack becomes that frame, then the stack taken.
            if a.func.is_new() && a.old_addr != 0 {
                let lead = std::mem::take(&mut a.old_addr);
                a.stack_id = self.stacks.with_lead(a.stack_id, lead);
            }
            if a.stack_id >= 0 {
                if let std::collections::hash_map::Entry::Vacant(e) = batch.stacks.entry(a.stack_id)
                {
                    e.insert(self.stacks.shared(a.stack_id));
                }
            }
        }
        self.counts
            .stacks_failed
            .store(self.stacks.exhausted, Ordering::Relaxed);
        batch
    }
}

/// The weights of sampled allocations. A call of `size` bytes is sampled with probability
/// p = 1 - exp(-size / rate), so each sampled one stands for 1 / p calls (the estimator of Go's
/// heap profiles and of jemalloc's). The books count whole calls: the weight is rounded up or
/// down at random in proportion, so that its expectation stays 1 / p.
pub struct Weights {
    rate: f64,
    /// xorshift64 state (any fixed seed: the estimate is unbiased whatever it is).
    state: u64,
}

impl Weights {
    pub fn new(rate: u64) -> Weights {
        Weights {
            rate: rate as f64,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The expected number of calls one sampled call of `size` bytes stands for.
    pub fn expected(&self, size: u64) -> f64 {
        if size == 0 {
            return 1.0;
        }
        1.0 / -(-(size as f64) / self.rate).exp_m1()
    }

    /// A whole number of calls whose expectation is [`Weights::expected`].
    pub fn of(&mut self, size: u64) -> u64 {
        let w = self.expected(size);
        let whole = w.floor();
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let u = (self.state >> 11) as f64 / (1u64 << 53) as f64;
        (whole as u64 + u64::from(u < w - whole)).max(1)
    }
}

/// The reader thread and its queue; the thread stops when this is dropped.
pub struct Stream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Batch>,
    queued: Arc<AtomicUsize>,
    /// The latest flush asked for, and an eventfd that wakes the reader for it.
    flush_req: Arc<AtomicU64>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Stream {
    pub fn start(mut reader: Reader) -> std::io::Result<Stream> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let flush_req = Arc::new(AtomicU64::new(0));
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just created, owned from here on.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (queued, flush_req, wake, stop) = (
                queued.clone(),
                flush_req.clone(),
                wake.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("tracer-ring".into())
                .spawn(move || {
                    let ring_fd = reader.ring_buf.as_raw_fd();
                    let mut answered = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let want = flush_req.load(Ordering::Acquire);
                        // A flush is answered even past the bound: it is the end of a run or a
                        // report, and must see what the kernel holds.
                        let room = queued.load(Ordering::Relaxed) < MAX_QUEUED;
                        let mut batch = if room || want > answered {
                            reader.drain()
                        } else {
                            Batch::default()
                        };
                        if !batch.events.is_empty() || want > answered {
                            batch.flushed = want;
                            answered = want;
                            queued.fetch_add(batch.events.len(), Ordering::Relaxed);
                            if tx.send(batch).is_err() {
                                break;
                            }
                        }
                        let mut fds = [
                            libc::pollfd {
                                fd: ring_fd,
                                events: libc::POLLIN,
                                revents: 0,
                            },
                            libc::pollfd {
                                fd: wake.as_raw_fd(),
                                events: libc::POLLIN,
                                revents: 0,
                            },
                        ];
                        let wait = if room {
                            DRAIN_PERIOD
                        } else {
                            Duration::from_millis(10)
                        };
                        // SAFETY: two valid pollfds, whose descriptors outlive the call.
                        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis() as i32) };
                        if fds[1].revents != 0 {
                            let mut n = 0u64;
                            // SAFETY: reads the eventfd's 8-byte counter into `n`.
                            unsafe {
                                libc::read(wake.as_raw_fd(), (&raw mut n).cast(), 8);
                            }
                        }
                    }
                })?
        };
        Ok(Stream {
            rx,
            queued,
            flush_req,
            wake,
            stop,
            thread: Some(thread),
        })
    }

    fn took(&self, b: Batch) -> Batch {
        self.queued.fetch_sub(b.events.len(), Ordering::Relaxed);
        b
    }

    /// The next batch, waiting up to `timeout` for one.
    pub async fn next(&mut self, timeout: Duration) -> Option<Batch> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(b)) => Some(self.took(b)),
            _ => None,
        }
    }

    /// A batch already queued, if any.
    pub fn try_next(&mut self) -> Option<Batch> {
        self.rx.try_recv().ok().map(|b| self.took(b))
    }

    /// Every batch up to what the kernel holds now: the reader drains at once.
    pub async fn flush(&mut self) -> Vec<Batch> {
        let seq = self.flush_req.fetch_add(1, Ordering::AcqRel) + 1;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to the eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
        let mut out = Vec::new();
        while let Some(b) = self.rx.recv().await {
            let done = b.flushed >= seq;
            out.push(self.took(b));
            if done {
                break;
            }
        }
        out
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to the eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Weights;

    #[test]
    fn sampled_weights_are_unbiased_whole_calls() {
        let mut w = Weights::new(4096);
        // Large blocks are nearly always sampled: they stand for about one call each.
        assert!((w.expected(1 << 20) - 1.0).abs() < 1e-9);
        // Small ones for about rate / size.
        assert!(
            (w.expected(64) / 64.5 - 1.0).abs() < 0.01,
            "{}",
            w.expected(64)
        );
        for size in [16u64, 100, 3000, 4096, 10_000] {
            let n = 200_000;
            let sum: u64 = (0..n).map(|_| w.of(size)).sum();
            let mean = sum as f64 / n as f64;
            let want = w.expected(size);
            assert!(
                (mean / want - 1.0).abs() < 0.01,
                "size {size}: mean {mean}, expected {want}"
            );
        }
        assert_eq!(w.of(0), 1);
    }
}
