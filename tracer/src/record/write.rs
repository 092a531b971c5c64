//! Writing a recording: the [`Recorder`] (frames to a file, safely created; a failed write
//! stops the recording, not the tracing) and the [`Tap`] the pipeline writes through.
use crate::reach::summary::ProcessScan;
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use super::{
    codec::{encode, encode_events},
    frame_crc, Frame, RecordHeader, RecordedMapping, MAGIC, VERSION,
};
use crate::{
    collector::{Counters, Event},
    procs::ProcInfo,
    report::UnwindSummary,
    symbolize::Mapping,
};

/// The recording as the pipeline writes it: each call writes one frame when recording, and
/// nothing otherwise. A write that fails stops the recording, not the tracing (see
/// [`Recorder::failure`]).
#[derive(Default)]
pub struct Tap(Option<Recorder>);

impl Tap {
    pub fn new(rec: Option<Recorder>) -> Tap {
        Tap(rec)
    }

    /// A process's memory map, each file with its build id.
    pub fn maps(
        &mut self,
        pid: u32,
        maps: &[Mapping],
        mut build_id: impl FnMut(&Mapping) -> Vec<u8>,
    ) -> anyhow::Result<()> {
        let Some(rec) = &mut self.0 else {
            return Ok(());
        };
        let maps = maps
            .iter()
            .map(|m| RecordedMapping::of(m, build_id(m)))
            .collect();
        rec.write(&Frame::Maps { pid, maps })
    }

    /// A stack's return addresses, before the events that name it.
    pub fn stack(&mut self, pid: u32, stack_id: i32, addrs: &[u64]) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write(&Frame::Stack {
                pid,
                stack_id,
                addrs: addrs.to_vec(),
            }),
            None => Ok(()),
        }
    }

    pub fn events(&mut self, evs: &[Event]) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write_events(evs),
            None => Ok(()),
        }
    }

    /// What is known of a process: first seen, renamed, or exited.
    pub fn process(&mut self, pid: u32, info: &ProcInfo) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write(&Frame::Process {
                pid,
                command: info.command.clone(),
                allocator: info.allocator.clone(),
                allocator_kind: info.allocator_kind.clone(),
                exited: info.exited,
            }),
            None => Ok(()),
        }
    }

    /// Events lost per process, as the kernel counts them.
    pub fn losses(&mut self, lost: &BTreeMap<u32, u64>) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write(&Frame::Losses(lost.iter().map(|(&p, &n)| (p, n)).collect())),
            None => Ok(()),
        }
    }

    /// The unwind tables' figures.
    pub fn unwind(&mut self, summary: &UnwindSummary) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write(&Frame::Unwind(summary.clone())),
            None => Ok(()),
        }
    }

    /// What a reachability scan found.
    pub fn reach(&mut self, pid: u32, scan: &ProcessScan) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write(&Frame::Reach {
                pid,
                scan: scan.clone(),
            }),
            None => Ok(()),
        }
    }

    /// A drain point (the frames before it reach the file).
    pub fn tick(&mut self, t_ns: u64, counters: &Counters) -> anyhow::Result<()> {
        self.then_flush(Frame::Tick {
            t_ns,
            counters: *counters,
        })
    }

    pub fn mark(&mut self, t_ns: u64, counters: &Counters) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => rec.write(&Frame::Mark {
                t_ns,
                counters: *counters,
            }),
            None => Ok(()),
        }
    }

    pub fn end(
        &mut self,
        t_ns: u64,
        counters: &Counters,
        exit_code: Option<i32>,
    ) -> anyhow::Result<()> {
        self.then_flush(Frame::End {
            t_ns,
            counters: *counters,
            exit_code,
        })
    }

    fn then_flush(&mut self, f: Frame) -> anyhow::Result<()> {
        match &mut self.0 {
            Some(rec) => {
                rec.write(&f)?;
                rec.flush()
            }
            None => Ok(()),
        }
    }

    /// Why the recording stopped, if it has.
    pub fn failure(&self) -> Option<&str> {
        self.0.as_ref().and_then(|r| r.failure())
    }
}

/// Writes a recording as the run goes. A write that fails (a full disk) stops the recording,
/// not the tracing: the failure is said once on stderr and kept for the next report, and the
/// frames written before it still replay.
pub struct Recorder {
    out: BufWriter<File>,
    path: PathBuf,
    buf: Vec<u8>,
    /// Why the recording stopped, once it has.
    failed: Option<String>,
    /// Bytes handed to the file so far.
    written: u64,
}

impl Recorder {
    pub fn create(path: &Path, header: &RecordHeader) -> anyhow::Result<Recorder> {
        let file = crate::output::create_replacing(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the recording {}: {e}; check the directory exists and is writable",
                path.display()
            )
        })?;
        let mut r = Recorder {
            out: BufWriter::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            buf: Vec::new(),
            failed: None,
            written: 0,
        };
        let mut start = MAGIC.to_vec();
        start.extend_from_slice(&VERSION.to_le_bytes());
        start.extend_from_slice(&0u16.to_le_bytes());
        r.io(|o| o.write_all(&start))?;
        r.write(&Frame::Header(header.clone()))?;
        r.out
            .flush()
            .map_err(|e| anyhow::anyhow!("cannot write the recording {}: {e}", path.display()))?;
        Ok(r)
    }

    /// Why the recording stopped (a write failed), if it has.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn write(&mut self, frame: &Frame) -> anyhow::Result<()> {
        self.buf.clear();
        let t = encode(frame, &mut self.buf);
        self.put(t)
    }

    /// An events frame, written from a slice (no copy of the batch).
    /// Batches are split so that no frame nears the frame size limit.
    pub fn write_events(&mut self, evs: &[Event]) -> anyhow::Result<()> {
        for chunk in evs.chunks(65536) {
            self.buf.clear();
            let t = encode_events(chunk, &mut self.buf);
            self.put(t)?;
        }
        Ok(())
    }

    fn put(&mut self, t: u8) -> anyhow::Result<()> {
        let mut head = [0u8; 5];
        head[0] = t;
        head[1..].copy_from_slice(&(self.buf.len() as u32).to_le_bytes());
        let crc = frame_crc(&head, &self.buf).to_le_bytes();
        let len = (head.len() + self.buf.len() + crc.len()) as u64;
        let buf = std::mem::take(&mut self.buf);
        let r = self.io(|o| {
            o.write_all(&head)
                .and_then(|_| o.write_all(&buf))
                .and_then(|_| o.write_all(&crc))
        });
        self.buf = buf;
        self.written += len;
        r
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.io(|o| o.flush())
    }

    /// Runs one write unless the recording has stopped; a failure stops it (see [`Recorder`]).
    fn io(
        &mut self,
        f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        if let Err(e) = f(&mut self.out) {
            let why = format!(
                "the recording {} stopped after about {} bytes: {e}; tracing goes on, and the \
                 file replays up to there",
                self.path.display(),
                self.written
            );
            eprintln!("tracer: warning: {why}");
            self.failed = Some(why);
        }
        Ok(())
    }
}
