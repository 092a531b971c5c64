//! Starting the traced command so that no allocation is missed: the child is forked and held
//! before `execve` until the probes are attached to it, then released.
//!
//! Between fork and exec the child only calls async-signal-safe functions (read, execve,
//! write, _exit); everything it needs is prepared before the fork.
use std::{
    ffi::{CString, OsString},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::hold::Watched;

/// A user to run the launched command as: ids resolved before the fork (the child may only
/// make async-signal-safe calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups, the user's primary group included.
    pub groups: Vec<libc::gid_t>,
}

impl RunAs {
    /// A user by name or numeric uid, from the password database.
    pub fn lookup(user: &str) -> Result<RunAs> {
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let numeric = user.parse::<libc::uid_t>().ok();
        let name = std::ffi::CString::new(user)
            .map_err(|_| anyhow::anyhow!("--user '{user}' contains a NUL byte"))?;
        // SAFETY: pw, buf and found are valid for the call; buf's length is passed.
        let rc = unsafe {
            match numeric {
                Some(uid) => {
                    libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found)
                }
                None => libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pw,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut found,
                ),
            }
        };
        if found.is_null() {
            if let Some(uid) = numeric.filter(|_| rc == 0) {
                // A uid nobody named: run with it and its own number as the group.
                return Ok(RunAs {
                    name: uid.to_string(),
                    uid,
                    gid: uid,
                    groups: vec![uid],
                });
            }
            bail!("--user '{user}': no such user (check /etc/passwd or give a numeric uid)");
        }
        // SAFETY: getpw*_r filled pw, whose strings point into buf.
        let pw_name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }.to_owned();
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut n = groups.len() as libc::c_int;
        // SAFETY: groups holds n entries; pw_name is a valid C string.
        if unsafe { libc::getgrouplist(pw_name.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) }
            < 0
        {
            groups.truncate(1);
            groups[0] = pw.pw_gid;
        } else {
            groups.truncate(n.max(0) as usize);
        }
        Ok(RunAs {
            name: pw_name.to_string_lossy().into_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            groups,
        })
    }
}

/// Finds the program as execvp would: a name with a slash is a path, anything else is looked
/// up in PATH.
pub fn resolve_program(name: &OsString) -> Result<PathBuf> {
    let p = Path::new(name);
    let shown = p.display();
    if name.is_empty() {
        bail!("the command after `--` is empty");
    }
    let candidate = if p.components().count() > 1 || name.to_string_lossy().contains('/') {
        Some(p.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(p))
                .find(|c| is_executable(c))
        })
    };
    match candidate {
        Some(c) if c.is_file() => {
            if !is_executable(&c) {
                bail!("{} is not executable (check its permissions)", c.display());
            }
            Ok(c)
        }
        Some(c) if c.exists() => bail!("{} is not a regular file", c.display()),
        Some(c) => bail!("{}: no such file: check the command's path", c.display()),
        None => bail!("{shown}: command not found in PATH"),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What failed in the child before its program ran.
const STAGE_USER: i32 = 1;
const STAGE_EXEC: i32 = 2;

/// A forked child waiting for [`HeldChild::release`] before it runs the command.
pub struct HeldChild {
    pub pid: u32,
    go: libc::c_int,
    exec_err: libc::c_int,
    /// The thread that waits for it (and holds its exit, see `hold`).
    watched: Option<Watched>,
}

fn cstring(s: &[u8], what: &str) -> Result<CString> {
    CString::new(s).with_context(|| format!("{what} contains a NUL byte"))
}

/// A pipe whose ends are not inherited across exec.
pub fn pipe_cloexec() -> std::io::Result<[libc::c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fds)
}

/// Forks a child that will run `program` with `argv` (argv[0] included) once released, as
/// `user` when given (its groups, then its gid, then its uid: root's privileges end there).
pub fn spawn_held(program: &Path, argv: &[OsString], user: Option<&RunAs>) -> Result<HeldChild> {
    let prog = cstring(program.as_os_str().as_bytes(), "the program path")?;
    let args: Vec<CString> = argv
        .iter()
        .map(|a| cstring(a.as_bytes(), "an argument"))
        .collect::<Result<_>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let [go_r, go_w] = pipe_cloexec().context("pipe2")?;
    let [err_r, err_w] = pipe_cloexec().context("pipe2")?;
    // SAFETY: fork in a process that has not started other threads yet (the runtime is built
    // after launch); the child below only makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: child side, async-signal-safe calls only, ends in execv or _exit.
        unsafe {
            libc::close(go_w);
            libc::close(err_r);
            let mut b = 0u8;
            // Wait for the go byte; EOF means the tracer gave up (or died): do not run.
            loop {
                let n = libc::read(go_r, (&raw mut b).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(127);
            }
            let fail = |stage: i32| -> ! {
                let errno = *libc::__errno_location();
                let mut bytes = [0u8; 8];
                bytes[..4].copy_from_slice(&stage.to_ne_bytes());
                bytes[4..].copy_from_slice(&errno.to_ne_bytes());
                libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127);
            };
            if let Some(u) = user {
                if libc::setgroups(u.groups.len(), u.groups.as_ptr()) != 0 {
                    fail(STAGE_USER);
                }
                if libc::setgid(u.gid) != 0 || libc::setuid(u.uid) != 0 {
                    fail(STAGE_USER);
                }
            }
            libc::execv(prog.as_ptr(), arg_ptrs.as_ptr());
            fail(STAGE_EXEC);
        }
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(go_r);
        libc::close(err_w);
    }
    let mut child = HeldChild {
        pid: pid as u32,
        go: go_w,
        exec_err: err_r,
        watched: None,
    };
    // On failure, dropping `child` closes the gate: the child exits without running.
    child.watched = Some(Watched::start(pid as u32, true).context("cannot start a thread")?);
    Ok(child)
}

impl HeldChild {
    /// Lets the child exec; returns once the exec has succeeded (or fails with its error).
    pub fn release(mut self, program: &Path) -> Result<Watched> {
        let watched = self.watched.take();
        // SAFETY: fds owned by self; buffers valid for their lengths.
        let (n, errno) = unsafe {
            libc::write(self.go, [1u8].as_ptr().cast(), 1);
            libc::close(self.go);
            let mut buf = [0u8; 8];
            let n = loop {
                let n = libc::read(self.exec_err, buf.as_mut_ptr().cast(), 8);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break n;
            };
            libc::close(self.exec_err);
            std::mem::forget(self);
            let word = |i: usize| i32::from_ne_bytes(buf[i..i + 4].try_into().unwrap_or_default());
            (n, (word(0), word(4)))
        };
        let (stage, errno) = errno;
        let Some(watched) = watched else {
            bail!("the launched command was not watched");
        };
        if n == 8 {
            watched.wait_gone(REAP_LIMIT);
            let err = std::io::Error::from_raw_os_error(errno);
            if stage == STAGE_USER {
                bail!(
                    "cannot switch to the --user for {}: {err}",
                    program.display()
                );
            }
            bail!("cannot execute {}: {err}", program.display());
        }
        Ok(watched)
    }
}

impl Drop for HeldChild {
    /// Not released (attach failed): closing the gate makes the child exit without running.
    fn drop(&mut self) {
        // SAFETY: fds owned by self.
        unsafe {
            libc::close(self.go);
            libc::close(self.exec_err);
        }
        if let Some(w) = &self.watched {
            w.wait_gone(REAP_LIMIT);
        }
    }
}

/// How long a child that was never released may take to exit (it exits at once).
const REAP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell would report.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_child_runs_and_reports_its_status() {
        let child = spawn_held(
            Path::new("/bin/sh"),
            &["sh".into(), "-c".into(), "exit 3".into()],
            None,
        )
        .unwrap();
        let watched = child.release(Path::new("/bin/sh")).unwrap();
        let status = watched.wait_gone(REAP_LIMIT).unwrap();
        assert_eq!(status, ExitStatus::Code(3));
    }

    #[test]
    fn the_command_runs_as_the_user_asked() {
        let nobody = RunAs::lookup("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        let script = format!(
            "test \"$(id -u)\" = {} && test \"$(id -g)\" = {}",
            nobody.uid, nobody.gid
        );
        let child = spawn_held(
            Path::new("/bin/sh"),
            &["sh".into(), "-c".into(), script.into()],
            Some(&nobody),
        )
        .unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let e = child.release(Path::new("/bin/sh")).unwrap_err().to_string();
            assert!(e.contains("--user"), "{e}");
            return;
        }
        let watched = child.release(Path::new("/bin/sh")).unwrap();
        let status = watched.wait_gone(REAP_LIMIT).unwrap();
        assert_eq!(status, ExitStatus::Code(0));
        assert!(RunAs::lookup("no-such-user-here")
            .unwrap_err()
            .to_string()
            .contains("no such user"));
        assert_eq!(RunAs::lookup("0").unwrap().uid, 0);
    }

    #[test]
    fn exec_failure_is_reported() {
        let child = spawn_held(Path::new("/proc/self/nonexistent"), &["x".into()], None).unwrap();
        let e = child
            .release(Path::new("/proc/self/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot execute") && e.contains("nonexistent"),
            "{e}"
        );
    }

    #[test]
    fn a_child_never_released_does_not_run() {
        let marker = std::env::temp_dir().join(format!("tracer-held-{}", std::process::id()));
        let script = format!("touch {}", marker.display());
        let child = spawn_held(
            Path::new("/bin/sh"),
            &["sh".into(), "-c".into(), script.into()],
            None,
        )
        .unwrap();
        drop(child);
        assert!(!marker.exists());
    }
}
