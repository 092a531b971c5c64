//! The launched command's end, held for the final scan: a thread of its own ptrace-seizes the
//! child (`PTRACE_SEIZE` with `PTRACE_O_TRACEEXIT`), so that its exit stops before the kernel
//! takes its memory away. The final report reads that memory (who still holds what, as
//! valgrind sees it at exit), then [`Watched::release`] lets the exit go on.
//!
//! Nothing is left behind if tracer dies at any instant: a tracer's death detaches its
//! tracees, and one stopped at its exit goes on exiting. The seize injects nothing and stops
//! nothing else: every signal the child gets is passed on as it came (a signal-delivery stop
//! is continued with that signal; a group stop is kept with `PTRACE_LISTEN`, as job control
//! expects). Only the command's first thread is seized: its exit is the process's, since the
//! kernel kills the other threads first on `exit_group`.
//!
//! This thread is also the only one that waits for the child: the ptrace stops and the exit
//! status come to it, and the others read them from [`Watched`]. Being the child's tracer, it
//! is also the one that holds it still for a scan (`--stop-for-scan`, [`Watched::freeze`]):
//! asked, it is woken from its wait by a signal of its own and stops every thread.
use std::{
    sync::{
        atomic::{AtomicI32, Ordering},
        mpsc, Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use super::launch::ExitStatus;
use crate::reach::freeze::{Frozen, Stopped, ThreadRegs};

/// Where the launched command is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stopped in its exit with this status, memory intact, until released.
    AtExit(ExitStatus),
    /// Gone (reaped).
    Ended(ExitStatus),
}

struct State {
    phase: Phase,
    release: bool,
    freeze: Freeze,
}

/// A scan's hold, asked of the watching thread.
enum Freeze {
    Idle,
    Asked,
    Done(Result<(Vec<ThreadRegs>, Instant), String>),
    /// Held, until the scan lets it go.
    Holding,
    Thaw,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// The watching thread's id, for the signal that wakes it.
    tid: AtomicI32,
}

/// Wakes the watching thread from its wait (a handler that does nothing, without
/// SA_RESTART, so that the wait returns EINTR).
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_wake(_: libc::c_int) {}

/// Lets a scan's hold go when dropped.
struct Thaw(Arc<Shared>);

impl Drop for Thaw {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.freeze = Freeze::Thaw;
        self.0.changed.notify_all();
    }
}

/// The launched command, watched (and held at its exit) by a thread of its own.
pub struct Watched {
    pub pid: u32,
    /// Whether its exit is held: the seize succeeded (or why it did not).
    pub holds_exit: Result<bool, String>,
    shared: Arc<Shared>,
}

impl Shared {
    fn set(&self, phase: Phase) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.phase = phase;
        self.changed.notify_all();
    }
}

fn decode(status: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitStatus::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

fn ptrace(req: libc::c_uint, pid: u32, data: usize) -> libc::c_long {
    // SAFETY: requests on our own seized child whose `data` is a plain value (no pointer).
    unsafe { libc::ptrace(req, pid as libc::pid_t, 0usize, data) }
}

impl Watched {
    /// Watches child `pid` (forked, not yet released to exec) from a thread of its own,
    /// holding its exit when `hold` and the kernel lets it seize the child. Returns once the
    /// child is seized (or known not to be).
    pub fn start(pid: u32, hold: bool) -> std::io::Result<Watched> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Running,
                release: false,
                freeze: Freeze::Idle,
            }),
            changed: Condvar::new(),
            tid: AtomicI32::new(0),
        });
        // SAFETY: a handler that does nothing, installed for a signal only tracer sends.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_wake as *const () as usize;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(wake_signal(), &sa, std::ptr::null_mut());
        }
        let (seized_tx, seized_rx) = mpsc::channel();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("tracer-child".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                s.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
                let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACEEXEC;
                let seized = if !hold {
                    Ok(false)
                } else if ptrace(libc::PTRACE_SEIZE, pid, options as usize) == 0 {
                    Ok(true)
                } else {
                    Err(std::io::Error::last_os_error())
                };
                let _ = seized_tx.send(seized.as_ref().map(|&s| s).map_err(|e| e.to_string()));
                let seized = seized.unwrap_or(false);
                watch(pid, seized, &s);
            })?;
        let holds_exit = seized_rx.recv().unwrap_or(Ok(false));
        Ok(Watched {
            pid,
            holds_exit,
            shared,
        })
    }

    pub fn phase(&self) -> Phase {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .phase
    }

    /// Its exit status once it has exited (held at its exit or gone).
    pub fn status(&self) -> Option<ExitStatus> {
        match self.phase() {
            Phase::Running => None,
            Phase::AtExit(s) | Phase::Ended(s) => Some(s),
        }
    }

    /// Holds it still for a scan (every thread stopped, registers read) until the returned
    /// guard is dropped; an error when it cannot be (not seized, or exiting).
    pub fn freeze(&self) -> std::io::Result<Stopped> {
        let other = |e: String| std::io::Error::other(e);
        if self.holds_exit != Ok(true) {
            return Err(other("the command is not seized".into()));
        }
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.phase != Phase::Running {
            return Err(other("the command is exiting".into()));
        }
        s.freeze = Freeze::Asked;
        loop {
            // Woken from its wait; again until it answers (the signal may come between its
            // look at the request and its wait).
            let tid = self.shared.tid.load(Ordering::Relaxed);
            // SAFETY: a signal to one thread of this process, whose handler does nothing.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    std::process::id() as libc::c_long,
                    tid as libc::c_long,
                    wake_signal() as libc::c_long,
                )
            };
            let (next, _) = self
                .shared
                .changed
                .wait_timeout_while(s, Duration::from_millis(10), |s| {
                    matches!(s.freeze, Freeze::Asked) && s.phase == Phase::Running
                })
                .unwrap_or_else(|e| e.into_inner());
            s = next;
            match std::mem::replace(&mut s.freeze, Freeze::Idle) {
                Freeze::Done(Ok((regs, since))) => {
                    s.freeze = Freeze::Holding;
                    let thaw = Box::new(Thaw(self.shared.clone()));
                    return Ok(Stopped::elsewhere(regs, since, thaw));
                }
                Freeze::Done(Err(e)) => return Err(other(e)),
                Freeze::Asked if s.phase == Phase::Running => s.freeze = Freeze::Asked,
                _ => return Err(other("the command is exiting".into())),
            }
        }
    }

    /// Lets a held exit go on (now, or as soon as it comes).
    pub fn release(&self) {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.release = true;
        self.shared.changed.notify_all();
    }

    /// Releases it and waits until it is gone, at most `limit`: its status.
    pub fn wait_gone(&self, limit: Duration) -> Option<ExitStatus> {
        self.release();
        let s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let (s, _) = self
            .shared
            .changed
            .wait_timeout_while(s, limit, |s| !matches!(s.phase, Phase::Ended(_)))
            .unwrap_or_else(|e| e.into_inner());
        match s.phase {
            Phase::Ended(st) => Some(st),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("pid", &self.pid)
            .field("phase", &self.phase())
            .finish()
    }
}

impl Drop for Watched {
    /// Never leaves the command held.
    fn drop(&mut self) {
        self.release();
    }
}

/// The watching thread: passes every stop on, holds the exit until released, holds the
/// command still for a scan when asked, reaps.
fn watch(pid: u32, seized: bool, shared: &Shared) {
    loop {
        if seized && serve_freeze(pid, shared) {
            // It began its exit while held for the scan: that was its exit stop.
            hold_exit(pid, shared);
        }
        let mut status = 0;
        // SAFETY: waiting for our own child; `__WALL` also reports it as a tracee.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::__WALL) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // Not our child any more (reaped by someone else): its status is not known.
            eprintln!(
                "tracer: warning: lost track of the launched command (pid {pid}): {}; its exit \
                 status is not known",
                std::io::Error::last_os_error()
            );
            shared.set(Phase::Ended(ExitStatus::Code(0)));
            return;
        }
        if let Some(end) = decode(status) {
            shared.set(Phase::Ended(end));
            return;
        }
        if !seized || !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        match event {
            libc::PTRACE_EVENT_EXIT => hold_exit(pid, shared),
            libc::PTRACE_EVENT_STOP => {
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // A group stop: it stays stopped, as without tracer, until SIGCONT.
                    ptrace(libc::PTRACE_LISTEN, pid, 0);
                } else {
                    ptrace(libc::PTRACE_CONT, pid, 0);
                }
            }
            // The exec (and any other event): nothing to do but go on.
            e if e != 0 => {
                ptrace(libc::PTRACE_CONT, pid, 0);
            }
            // A signal on its way to the child: delivered as it came.
            _ => {
                ptrace(libc::PTRACE_CONT, pid, sig as usize);
            }
        }
    }
}

/// The child in its exit stop: says so with its status, waits to be released, lets it go.
fn hold_exit(pid: u32, shared: &Shared) {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: GETEVENTMSG writes one unsigned long to `msg`.
    unsafe {
        libc::ptrace(
            libc::PTRACE_GETEVENTMSG,
            pid as libc::pid_t,
            0usize,
            &mut msg as *mut libc::c_ulong,
        )
    };
    let end = decode(msg as libc::c_int).unwrap_or(ExitStatus::Code(0));
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    s.phase = Phase::AtExit(end);
    shared.changed.notify_all();
    while !s.release {
        s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    drop(s);
    // Detached, it finishes exiting; it is still our child, reaped by the caller.
    ptrace(libc::PTRACE_DETACH, pid, 0);
}

/// A scan's hold, when one is asked: every thread stopped (the first one is ours already),
/// the registers handed over, held until the scan lets go. Whether the command began its exit
/// meanwhile (it is then in its exit stop).
fn serve_freeze(pid: u32, shared: &Shared) -> bool {
    {
        let s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(s.freeze, Freeze::Asked) {
            return false;
        }
    }
    let frozen = Frozen::freeze(pid, Some(pid));
    let mut s = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let f = match frozen {
        Ok(f) => f,
        Err(e) => {
            s.freeze = Freeze::Done(Err(e.to_string()));
            shared.changed.notify_all();
            return false;
        }
    };
    s.freeze = Freeze::Done(Ok((f.regs.clone(), f.since)));
    shared.changed.notify_all();
    while !matches!(s.freeze, Freeze::Thaw) {
        s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
    }
    s.freeze = Freeze::Idle;
    drop(s);
    let exiting = f.own_exiting;
    drop(f);
    exiting
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::collector::launch::spawn_held;

    const LIMIT: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> Watched {
        let child = spawn_held(
            Path::new("/bin/sh"),
            &["sh".into(), "-c".into(), script.into()],
            None,
        )
        .unwrap();
        child.release(Path::new("/bin/sh")).unwrap()
    }

    /// The state letter of `pid` in /proc (`t`: stopped by its tracer).
    fn state(pid: u32) -> char {
        crate::procs::live::state(pid).unwrap_or('?')
    }

    fn until(what: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !what() {
            assert!(start.elapsed() < LIMIT, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_exit_waits_for_release_with_its_memory() {
        let w = sh("exit 3");
        assert_eq!(w.holds_exit, Ok(true));
        until(|| w.phase() != Phase::Running);
        assert_eq!(w.phase(), Phase::AtExit(ExitStatus::Code(3)));
        // Held: stopped by its tracer, its memory still there to read.
        assert_eq!(state(w.pid), 't');
        assert!(std::fs::read_to_string(format!("/proc/{}/maps", w.pid))
            .unwrap()
            .contains("sh"));
        assert_eq!(w.wait_gone(LIMIT), Some(ExitStatus::Code(3)));
    }

    #[test]
    fn signals_reach_the_command_as_they_came() {
        // A handled signal runs its handler; a fatal one kills.
        let w = sh("trap 'exit 7' USR1; kill -USR1 $$; sleep 5");
        assert_eq!(w.wait_gone(LIMIT), Some(ExitStatus::Code(7)));
        let w = sh("kill -TERM $$; sleep 5");
        assert_eq!(w.wait_gone(LIMIT), Some(ExitStatus::Signal(libc::SIGTERM)));
    }

    #[test]
    fn a_stopped_command_stays_stopped_until_continued() {
        let w = sh("kill -STOP $$; exit 4");
        until(|| state(w.pid) == 't' || state(w.pid) == 'T');
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(w.phase(), Phase::Running, "it ran on without SIGCONT");
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(w.pid as i32, libc::SIGCONT) };
        assert_eq!(w.wait_gone(LIMIT), Some(ExitStatus::Code(4)));
    }

    #[test]
    fn a_dropped_watch_never_leaves_the_command_held() {
        let w = sh("exit 5");
        let pid = w.pid;
        until(|| w.phase() != Phase::Running);
        drop(w);
        // Released: it exits (a zombie until the watching thread reaps it, then gone).
        until(|| !matches!(state(pid), 't'));
    }
}
