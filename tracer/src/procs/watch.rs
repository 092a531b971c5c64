//! Memory maps read the moment the kernel says so, from a thread of its own.
//!
//! A process that lives a millisecond is gone long before the event stream is drained, and
//! with it /proc/PID/maps: its frames could not be named. The kernel sends a notice on a
//! small ring of its own at two moments: right after an exec (the program and its loader are
//! mapped) and on entry to `exit()` (every library is). This thread wakes on each and reads
//! the map at once, waiting for nothing else the pipeline does.
use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use tracer_common::kind;

use crate::{
    collector::{self, Event, Record},
    symbolize::Mapping,
};

/// What is known of a process from the moments it could still be read.
#[derive(Default)]
pub struct Early {
    /// Its memory map at the latest notice (None: not read, or it was gone already).
    pub maps: Option<Vec<Mapping>>,
    pub at: Option<Instant>,
}

/// Early knowledge of processes, by pid, filled by the watcher thread and the pipeline.
#[derive(Clone, Default)]
pub struct EarlyBook(Arc<Mutex<HashMap<u32, Early>>>);

impl EarlyBook {
    pub fn lock(&self) -> MutexGuard<'_, HashMap<u32, Early>> {
        // A panic elsewhere while holding it leaves plain data: go on with it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn maps(&self, pid: u32) -> Option<Vec<Mapping>> {
        self.lock().get(&pid)?.maps.clone()
    }

    /// A notice came: read the map now. After an exec the old program's map is wrong even
    /// if the new one cannot be read; entering exit() a failed read keeps what was known.
    /// Later reads add to what was known: a process read while it exits may have unmapped
    /// part of its address space already.
    fn noticed(&self, kind: u8, pid: u32, read: impl FnOnce(u32) -> Option<Vec<Mapping>>) {
        let maps = read(pid).filter(|m| !m.is_empty());
        let exec = kind == tracer_common::kind::EXEC;
        let mut book = self.lock();
        let e = book.entry(pid).or_default();
        if exec {
            e.maps = maps;
        } else if let Some(new) = maps {
            e.maps = Some(match e.maps.take() {
                Some(old) => merged(old, new),
                None => new,
            });
        }
        e.at = Some(Instant::now());
    }

    /// Forgets processes gone for more than `keep` (their reports are out by then).
    pub fn retain(&self, keep: Duration, alive: impl Fn(u32) -> bool) {
        self.lock()
            .retain(|&pid, e| e.at.is_some_and(|t| t.elapsed() < keep) || alive(pid));
    }
}

/// `new`, with the mappings of `old` that overlap none of it, in address order.
fn merged(old: Vec<Mapping>, mut new: Vec<Mapping>) -> Vec<Mapping> {
    let kept: Vec<Mapping> = old
        .into_iter()
        .filter(|o| !new.iter().any(|n| n.start < o.end && o.start < n.end))
        .collect();
    new.extend(kept);
    new.sort_by_key(|m| m.start);
    new
}

/// How long after an exec a process's map is read again (its loader has mapped its libraries
/// within a millisecond or two).
const REREAD_AFTER: Duration = Duration::from_millis(3);

/// The notices to act on, newest first, once per process (its latest: a map read at exit
/// supersedes the one at exec). After a burst of execs the processes still alive come first:
/// the oldest may be gone already, and every read of a gone process is time lost.
fn newest_first(batch: &mut Vec<(u8, u32)>) -> Vec<(u8, u32)> {
    let mut seen = std::collections::HashSet::new();
    let out = batch
        .drain(..)
        .rev()
        .filter(|(_, pid)| seen.insert(*pid))
        .collect();
    out
}

/// The watcher thread; stopped and joined on drop.
pub struct MapWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MapWatch {
    /// `unwind`: where the files stacks met without an unwind table are sent.
    pub fn start(
        mut ring: RingBuf<MapData>,
        book: EarlyBook,
        unwind: Option<std::sync::mpsc::Sender<crate::unwind::Job>>,
    ) -> std::io::Result<MapWatch> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tracer-maps".into())
            .spawn(move || {
                // Woken by a notice, it must run before the process it reads is gone, even
                // while the pipeline, the process and its parent keep every core busy: the
                // lowest real-time priority. Its work is one /proc read per exec and exit (and
                // without the privilege it still works, only later).
                let param = libc::sched_param { sched_priority: 1 };
                // SAFETY: sets this thread's own policy; `param` is a valid sched_param.
                unsafe {
                    libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param)
                };
                let fd = ring.as_raw_fd();
                let mut batch = Vec::new();
                // Processes that exec'd, read again a moment later: at the exec only the
                // program and its loader are mapped, and a process that lives a few
                // milliseconds may be gone before anything else reads its libraries.
                let mut again: Vec<(Instant, u32)> = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    while let Some(item) = ring.next() {
                        match collector::parse(&item) {
                            Ok(Record::Exiting { pid }) => batch.push((kind::EXITING, pid)),
                            Ok(Record::UnwindMiss(m)) => {
                                if let Some(u) = &unwind {
                                    let _ = u.send(crate::unwind::Job::Miss(m));
                                }
                            }
                            Ok(Record::CodeMapped { pid, addr }) => {
                                if let Some(u) = &unwind {
                                    let _ = u.send(crate::unwind::Job::Mapped { pid, addr });
                                }
                            }
                            Ok(Record::Event {
                                event: Event::Exec { pid, .. },
                                ..
                            }) => batch.push((kind::EXEC, pid)),
                            _ => {}
                        }
                    }
                    for (kind, pid) in newest_first(&mut batch) {
                        book.noticed(kind, pid, crate::symbolize::read_maps);
                        if kind == tracer_common::kind::EXEC {
                            again.push((Instant::now() + REREAD_AFTER, pid));
                        }
                    }
                    let now = Instant::now();
                    again.retain(|&(at, pid)| {
                        if at > now {
                            return true;
                        }
                        // Read like at exit(): a process gone by now keeps what was read.
                        book.noticed(
                            tracer_common::kind::EXITING,
                            pid,
                            crate::symbolize::read_maps,
                        );
                        false
                    });
                    let wait_ms = again
                        .iter()
                        .map(|&(at, _)| at.saturating_duration_since(now).as_millis() as i32 + 1)
                        .min()
                        .unwrap_or(100)
                        .min(100);
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the ring (and its fd) lives in this thread.
                    unsafe { libc::poll(&mut pfd, 1, wait_ms) };
                }
            })?;
        Ok(MapWatch {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MapWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::kind;

    fn map(path: &str) -> Vec<Mapping> {
        vec![Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            path: path.into(),
            open_path: None,
        }]
    }

    #[test]
    fn an_exec_replaces_the_old_program_even_when_unreadable() {
        let book = EarlyBook::default();
        book.noticed(kind::EXEC, 7, |_| Some(map("/bin/a")));
        assert_eq!(
            book.maps(7).unwrap()[0].path,
            std::path::Path::new("/bin/a")
        );
        book.noticed(kind::EXEC, 7, |_| None);
        assert!(book.maps(7).is_none());
    }

    #[test]
    fn entering_exit_keeps_the_last_map_when_the_process_is_gone() {
        let book = EarlyBook::default();
        book.noticed(kind::EXEC, 7, |_| Some(map("/bin/a")));
        book.noticed(kind::EXITING, 7, |_| Some(map("/lib/libc.so.6")));
        assert_eq!(
            book.maps(7).unwrap()[0].path,
            std::path::Path::new("/lib/libc.so.6")
        );
        book.noticed(kind::EXITING, 7, |_| None);
        assert_eq!(
            book.maps(7).unwrap()[0].path,
            std::path::Path::new("/lib/libc.so.6")
        );
    }

    #[test]
    fn a_map_read_while_the_process_exits_adds_to_what_was_known() {
        let at = |start: u64, path: &str| Mapping {
            start,
            end: start + 0x1000,
            offset: 0,
            path: path.into(),
            open_path: None,
        };
        let book = EarlyBook::default();
        book.noticed(kind::EXEC, 7, |_| Some(vec![at(0x1000, "/bin/a")]));
        book.noticed(kind::EXITING, 7, |_| {
            Some(vec![at(0x1000, "/bin/a"), at(0x9000, "/lib/libc.so.6")])
        });
        // exiting, its libraries half unmapped: what was read before stays
        book.noticed(kind::EXITING, 7, |_| Some(vec![at(0x1000, "/bin/a")]));
        let paths: Vec<_> = book.maps(7).unwrap().into_iter().map(|m| m.path).collect();
        assert_eq!(
            paths,
            [std::path::PathBuf::from("/bin/a"), "/lib/libc.so.6".into()]
        );
    }

    #[test]
    fn a_burst_of_notices_is_read_newest_first_once_per_process() {
        let mut batch = vec![
            (kind::EXEC, 1),
            (kind::EXEC, 2),
            (kind::EXITING, 1),
            (kind::EXEC, 3),
        ];
        assert_eq!(
            newest_first(&mut batch),
            [(kind::EXEC, 3), (kind::EXITING, 1), (kind::EXEC, 2)]
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn gone_processes_are_forgotten_after_a_while_only() {
        let book = EarlyBook::default();
        book.noticed(kind::EXEC, 7, |_| Some(map("/bin/a")));
        book.retain(Duration::from_secs(10), |_| false);
        assert!(book.maps(7).is_some());
        book.retain(Duration::ZERO, |_| false);
        assert!(book.maps(7).is_none());
        book.noticed(kind::EXEC, 8, |_| Some(map("/bin/a")));
        book.retain(Duration::ZERO, |p| p == 8);
        assert!(book.maps(8).is_some());
    }
}
