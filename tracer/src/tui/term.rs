//! The terminal the live view draws on, and giving it back as it was.
//!
//! The view draws on the controlling terminal (`/dev/tty`), not on stdout: stdout keeps the
//! final report, so `tracer --live -- cmd > report.txt` (or `| tee`) works. While the view is
//! up, what tracer writes on stderr is caught (it would scribble over the screen), shown on
//! the status line, and written to the real stderr when the terminal is given back. A panic
//! gives the terminal back before its message is printed.
use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use ratatui::crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
};
use ratatui::{backend::CrosstermBackend, Terminal};

pub type Screen = Terminal<CrosstermBackend<BufWriter<File>>>;

/// A frame is written in one piece (ratatui flushes once per frame): a terminal never shows
/// half of one.
const FRAME_BUFFER: usize = 1 << 18;

/// Opens the controlling terminal in raw mode on its alternate screen; the reason when there
/// is none (a service, a pipeline without a terminal).
pub fn open() -> Result<Screen, String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("no terminal to draw on (/dev/tty: {e})"))?;
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(tty.as_raw_fd()) } != 1 {
        return Err("/dev/tty is not a terminal".into());
    }
    enable_raw_mode().map_err(|e| format!("cannot put the terminal in raw mode: {e}"))?;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        prev(info);
    }));
    let mut out = tty;
    if let Err(e) = execute!(out, EnterAlternateScreen, Hide) {
        restore();
        return Err(format!("cannot draw on the terminal: {e}"));
    }
    Terminal::new(CrosstermBackend::new(BufWriter::with_capacity(
        FRAME_BUFFER,
        out,
    )))
    .map_err(|e| {
        restore();
        format!("cannot draw on the terminal: {e}")
    })
}

/// The terminal as it was (safe to call more than once).
pub fn restore() {
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = execute!(tty, LeaveAlternateScreen, Show);
    }
    let _ = disable_raw_mode();
}

/// tracer's stderr caught into a pipe while the view is up.
pub struct Caught {
    saved: OwnedFd,
    reader: Option<JoinHandle<()>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Caught {
    /// Catches fd 2 from now on; each line is also given to `each` as it comes.
    pub fn start(mut each: Box<dyn FnMut(String) + Send>) -> io::Result<Caught> {
        let mut fds = [0; 2];
        // SAFETY: a valid array of two fds; each call's result is checked.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            let (r, w) = (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]));
            let saved = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
            if saved < 0 {
                return Err(io::Error::last_os_error());
            }
            let saved = OwnedFd::from_raw_fd(saved);
            if libc::dup2(w.as_raw_fd(), 2) < 0 {
                return Err(io::Error::last_os_error());
            }
            drop(w);
            let lines = Arc::new(Mutex::new(Vec::new()));
            let kept = lines.clone();
            let reader = std::thread::Builder::new()
                .name("stderr".into())
                .spawn(move || {
                    for line in BufReader::new(File::from(r)).lines() {
                        let Ok(line) = line else { break };
                        each(line.clone());
                        if let Ok(mut k) = kept.lock() {
                            k.push(line);
                        }
                    }
                })?;
            Ok(Caught {
                saved,
                reader: Some(reader),
                lines,
            })
        }
    }

    /// stderr back where it was, and what was caught written there.
    pub fn release(mut self) {
        // SAFETY: `saved` is a valid fd; dup2 closes the pipe's write end at fd 2, so the
        // reader sees its end.
        unsafe { libc::dup2(self.saved.as_raw_fd(), 2) };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()));
        let mut err = io::stderr().lock();
        for l in lines {
            let _ = writeln!(err, "{l}");
        }
    }
}
