//! The process table: every process the reports speak of, from its first event to its
//! retirement after it exited, with its name and allocator; the `--comm` filter; and, tracing
//! one process, what the reports call it (its name changes when it execs).
//!
//! The table owns no I/O: what it holds is learned by the live intake (through [`live::Live`]:
//! `/proc`, the kernel's exec names, what was read of a process at its exec and exit, the
//! allocator probed for it) or read back from a recording, and installed here.
use std::collections::BTreeMap;

pub mod live;
pub mod watch;

/// What the reports say of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub command: String,
    pub allocator: String,
    /// Which allocator that is (`glibc`, `jemalloc`...; empty when unknown).
    pub allocator_kind: String,
    pub exited: bool,
}

pub struct Procs {
    /// The one process traced; 0 when several are (system-wide, several pids, children).
    subject_pid: u32,
    /// What the reports call the one process traced (or all of them: `*`).
    subject: ProcInfo,
    /// Only processes with this command name (--comm).
    comm: Option<String>,
    /// Every process seen and not yet retired (several-process runs).
    table: BTreeMap<u32, ProcInfo>,
}

impl Procs {
    pub fn new(subject_pid: u32, subject: ProcInfo, comm: Option<String>) -> Procs {
        Procs {
            subject_pid,
            subject,
            comm,
            table: BTreeMap::new(),
        }
    }

    /// Tracing several processes (system-wide, or several pids): reports get a process level.
    pub fn multi(&self) -> bool {
        self.subject_pid == 0
    }

    /// The one process traced (0: several) and what the reports call it.
    pub fn subject(&self) -> (u32, &ProcInfo) {
        (self.subject_pid, &self.subject)
    }

    /// Whether `pid` is the one process traced.
    pub fn is_subject(&self, pid: u32) -> bool {
        !self.multi() && pid == self.subject_pid
    }

    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.table.get(&pid)
    }

    /// Whether a process's events are kept (--comm).
    pub fn wanted(&self, pid: u32) -> bool {
        match (&self.comm, self.table.get(&pid)) {
            (None, _) => true,
            (Some(c), Some(p)) => &p.command == c,
            (Some(_), None) => false,
        }
    }

    /// Whether events are kept by name (--comm).
    pub fn filters(&self) -> bool {
        self.comm.is_some()
    }

    /// Keeps what is known of a process. Tracing one process, a new name (after an exec) is
    /// the reports' name.
    pub fn install(&mut self, pid: u32, info: ProcInfo) {
        if self.is_subject(pid) {
            self.subject.command = info.command.clone();
            if !info.allocator.is_empty() {
                self.subject.allocator = info.allocator.clone();
                self.subject.allocator_kind = info.allocator_kind.clone();
            }
        }
        self.table.insert(pid, info);
    }

    /// Forgets a process: a new one may come with its pid, and it is a stranger.
    pub fn forget(&mut self, pid: u32) {
        self.table.remove(&pid);
    }

    /// Marks a known process exited; what is known of it then.
    pub fn exit(&mut self, pid: u32) -> Option<&ProcInfo> {
        let p = self.table.get_mut(&pid)?;
        p.exited = true;
        Some(p)
    }

    pub fn exited(&self, pid: u32) -> bool {
        self.table.get(&pid).is_some_and(|p| p.exited)
    }

    /// Processes seen and not known to have exited.
    pub fn live(&self) -> Vec<u32> {
        self.pids(|_, p| !p.exited)
    }

    /// Processes known to have exited (and not yet forgotten).
    pub fn gone(&self) -> Vec<u32> {
        self.pids(|_, p| p.exited)
    }

    /// Live processes whose events --comm drops.
    pub fn unwanted(&self) -> Vec<u32> {
        self.pids(|pid, p| !p.exited && !self.wanted(pid))
    }

    /// Processes held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    fn pids(&self, keep: impl Fn(u32, &ProcInfo) -> bool) -> Vec<u32> {
        self.table
            .iter()
            .filter(|(&pid, p)| keep(pid, p))
            .map(|(&pid, _)| pid)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(c: &str) -> ProcInfo {
        ProcInfo {
            command: c.into(),
            allocator: "libc.so.6".into(),
            allocator_kind: "glibc".into(),
            exited: false,
        }
    }

    #[test]
    fn one_process_takes_its_new_name_after_an_exec() {
        let mut p = Procs::new(7, named("sh"), None);
        assert!(!p.multi());
        p.install(8, named("other"));
        assert_eq!(p.subject().1.command, "sh");
        p.install(7, named("leaky"));
        assert_eq!(p.subject(), (7, &named("leaky")));
    }

    #[test]
    fn comm_keeps_named_processes_and_lists_the_others() {
        let mut p = Procs::new(0, named("*"), Some("leaky".into()));
        assert!(p.multi() && p.filters());
        p.install(1, named("bash"));
        p.install(2, named("leaky"));
        assert!(!p.wanted(1) && p.wanted(2) && !p.wanted(3));
        assert_eq!(p.unwanted(), vec![1]);
        assert_eq!(p.exit(1).map(|i| i.exited), Some(true));
        assert!(p.exit(3).is_none());
        assert_eq!((p.live(), p.gone()), (vec![2], vec![1]));
        assert!(p.unwanted().is_empty());
        p.forget(1);
        assert!(!p.exited(1) && p.get(1).is_none());
    }
}
