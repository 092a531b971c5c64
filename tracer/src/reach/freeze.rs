//! `--stop-for-scan`: every thread of a process held still for the scan, with ptrace
//! (`PTRACE_SEIZE`, then `PTRACE_INTERRUPT`), and its registers read (`PTRACE_GETREGS`).
//!
//! Nothing is left behind if tracer dies at any instant: the kernel detaches a dead tracer's
//! tracees and they run on. A signal that reached a thread while it was being stopped is
//! handed back to it when it is let go, as it came. Seizing writes nothing into the process.
//! A thread started while the others are being stopped is found by listing the threads again
//! until no new one appears (a stopped thread starts none).
//!
//! ptrace requests must come from the thread that seized: a [`Frozen`] is made, used and
//! dropped on one thread (it is not `Send`).
use std::{io, marker::PhantomData};

/// One stopped thread: its stack pointer and general registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadRegs {
    pub tid: u32,
    pub sp: u64,
    /// Every general register but the instruction pointer and the segment ones: any may hold
    /// the only pointer to a block.
    pub words: Vec<u64>,
}

/// A process held still; let go when dropped.
pub struct Frozen {
    /// Each seized thread, and a signal that reached it meanwhile (given back at the end).
    held: Vec<(u32, i32)>,
    /// A thread this thread had seized before (a launched command's, held for its exit):
    /// interrupted and continued, never detached.
    own: Option<u32>,
    /// That thread began its exit meanwhile: it is left in its exit stop.
    pub own_exiting: bool,
    pub regs: Vec<ThreadRegs>,
    /// When its first thread was stopped.
    pub since: std::time::Instant,
    /// ptrace is per thread: not to be moved to another one.
    _not_send: PhantomData<*const ()>,
}

fn ptrace(req: libc::c_uint, tid: u32, data: usize) -> io::Result<()> {
    // SAFETY: requests on a thread this thread seized, with a plain value as data.
    if unsafe { libc::ptrace(req, tid as libc::pid_t, 0usize, data) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn threads(pid: u32) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

impl Frozen {
    /// Stops every thread of `pid`; an error when one cannot be seized (another debugger
    /// holds it, or the process is gone), and then none stays held. `own`: a thread of it
    /// the calling thread has already seized.
    pub fn freeze(pid: u32, own: Option<u32>) -> io::Result<Frozen> {
        let mut f = Frozen {
            own,
            own_exiting: false,
            held: Vec::new(),
            regs: Vec::new(),
            since: std::time::Instant::now(),
            _not_send: PhantomData,
        };
        loop {
            let new: Vec<u32> = threads(pid)?
                .into_iter()
                .filter(|t| !f.held.iter().any(|(h, _)| h == t))
                .collect();
            if new.is_empty() {
                break;
            }
            let mut seized = Vec::new();
            for t in new {
                if Some(t) == own {
                    f.held.push((t, 0));
                    seized.push(t);
                    ptrace(libc::PTRACE_INTERRUPT, t, 0)?;
                    continue;
                }
                match ptrace(libc::PTRACE_SEIZE, t, 0) {
                    Ok(()) => {
                        f.held.push((t, 0));
                        seized.push(t);
                        ptrace(libc::PTRACE_INTERRUPT, t, 0)?;
                    }
                    // Gone meanwhile (a thread that ended).
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e),
                }
            }
            for t in seized {
                f.wait_stopped(t)?;
            }
        }
        if f.held.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        for &(tid, _) in &f.held {
            let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
            // SAFETY: GETREGS writes one user_regs_struct to `r`.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_GETREGS,
                    tid as libc::pid_t,
                    0usize,
                    &mut r as *mut libc::user_regs_struct,
                )
            };
            if rc < 0 {
                continue;
            }
            f.regs.push(ThreadRegs {
                tid,
                sp: r.rsp,
                words: vec![
                    r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11,
                    r.r12, r.r13, r.r14, r.r15,
                ],
            });
        }
        Ok(f)
    }

    /// Waits until seized thread `t` stops; a signal on its way to it is kept to give back.
    fn wait_stopped(&mut self, t: u32) -> io::Result<()> {
        loop {
            let mut status = 0;
            // SAFETY: waiting for a thread this thread seized.
            let r = unsafe { libc::waitpid(t as libc::pid_t, &mut status, libc::__WALL) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.held.retain(|(h, _)| *h != t);
                return Ok(());
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            let event = (status >> 16) & 0xff;
            if event == libc::PTRACE_EVENT_EXIT && Some(t) == self.own {
                self.own_exiting = true;
            }
            if event == 0 {
                // A signal-delivery stop: stopped too, and the signal is given back at the end.
                if let Some(h) = self.held.iter_mut().find(|(h, _)| *h == t) {
                    h.1 = libc::WSTOPSIG(status);
                }
            }
            return Ok(());
        }
    }
}

impl Drop for Frozen {
    /// Lets every thread go, each with the signal that reached it meanwhile.
    fn drop(&mut self) {
        for &(tid, sig) in &self.held {
            if Some(tid) != self.own {
                let _ = ptrace(libc::PTRACE_DETACH, tid, sig as usize);
            } else if !self.own_exiting {
                let _ = ptrace(libc::PTRACE_CONT, tid, sig as usize);
            }
        }
    }
}

/// A process held still for a scan, by this thread or by another: its registers, since when,
/// and what lets it go when dropped.
pub struct Stopped {
    pub regs: Vec<ThreadRegs>,
    pub since: std::time::Instant,
    _hold: Box<dyn std::any::Any>,
}

impl Stopped {
    /// Held by this thread.
    pub fn here(pid: u32) -> io::Result<Stopped> {
        let f = Frozen::freeze(pid, None)?;
        Ok(Stopped {
            regs: f.regs.clone(),
            since: f.since,
            _hold: Box::new(f),
        })
    }

    /// Held elsewhere; `hold` lets it go when dropped.
    pub fn elsewhere(
        regs: Vec<ThreadRegs>,
        since: std::time::Instant,
        hold: Box<dyn std::any::Any>,
    ) -> Stopped {
        Stopped {
            regs,
            since,
            _hold: hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_thread_is_held_then_let_go() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(50));
        {
            let f = Frozen::freeze(pid, None).unwrap();
            assert_eq!(f.regs.len(), 1);
            assert_ne!(f.regs[0].sp, 0);
            assert_eq!(crate::procs::live::state(pid).unwrap_or('?'), 't');
        }
        // Let go: sleeping again, not stopped.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(crate::procs::live::state(pid).unwrap_or('?'), 'S');
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_missing_or_unseizable_process_is_an_error() {
        assert!(Frozen::freeze(u32::MAX / 2, None).is_err());
        // ptrace refuses the threads of the caller's own process.
        assert!(Frozen::freeze(std::process::id(), None).is_err());
    }
}
