//! Recordings: the raw event stream of a live run, written so that `tracer replay` can run the
//! whole pipeline again later, with no kernel and no root.
//!
//! A recording holds everything the pipeline read from the outside world, in the order it read
//! it: the target's identity, its memory maps (with the build ids of the mapped files, so a
//! replay notices a file that changed), each stack the first time it was seen, batches of
//! events, and the drain points ("ticks") with the kernel's counters at each. Replaying the
//! same stream through the same code gives the same reports.
//!
//! File format, version 4, all integers little-endian:
//!
//! ```text
//! "TRACEREC" u16 version (4)  u16 reserved
//! then frames: u8 tag  u32 length  payload  u32 CRC-32 of tag, length and payload
//!              (versions 1 to 3: no CRC)
//!   1 header  JSON object (RecordHeader)
//!   2 maps    u32 pid, u32 n, n × (u64 start, u64 end, u64 offset, str path, bytes build_id)
//!   3 stack   u32 pid, i32 stack id, u16 n, n × u64 return address (innermost first)
//!   4 events  u32 n, n × event (varints, see `put_event`: alloc, free, exec, fork, munmap)
//!   5 tick    u64 ns since start, counters
//!   6 mark    u64 ns since start, counters
//!   7 end     u64 ns since start, counters, u8 has exit code, i32 exit code
//!   8 process u32 pid, str command, str allocator, u8 exited   (version 2)
//!             [str allocator kind]   (absent in recordings of earlier tracers)
//!   9 losses  u32 n, n × (u32 pid, u64 events lost)   (version 4)
//! counters: u64 bad records, u8 n, n × u64 kernel counter
//! str/bytes: u16 length, bytes
//! ```
//!
//! Readers reject what they cannot trust with an error naming the byte offset; they never
//! panic and never allocate more than a frame's stated length, itself capped. A frame whose
//! checksum fails is such an error: a damaged recording never replays to other numbers.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracer_common::AllocFn;

use crate::{
    collector::{Alloc, Counters, Event},
    procs::ProcInfo,
    symbolize::Mapping,
};

const MAGIC: &[u8; 8] = b"TRACEREC";
/// Written; readers accept every version from 1 (which has no process frames) to this one (3
/// added events in named heaps and heap releases, 4 a checksum per frame).
pub const VERSION: u16 = 4;
/// The first version whose frames end with a CRC-32.
const CRC_VERSION: u16 = 4;

/// The checksum closing a frame: over its tag, length and payload.
fn frame_crc(head: &[u8; 5], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}
/// No frame is larger than this: a length above it is corruption, not a reason to allocate.
const MAX_FRAME: u32 = 64 << 20;

mod tag {
    pub const HEADER: u8 = 1;
    pub const MAPS: u8 = 2;
    pub const STACK: u8 = 3;
    pub const EVENTS: u8 = 4;
    pub const TICK: u8 = 5;
    pub const MARK: u8 = 6;
    pub const END: u8 = 7;
    pub const PROCESS: u8 = 8;
    pub const LOSSES: u8 = 9;
}

/// What a replay needs to know about the run before its first event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    /// The tracer version that wrote the recording.
    pub tracer: String,
    pub pid: u32,
    pub command: String,
    pub allocator: String,
    /// Absent from recordings of tracer versions before it was reported.
    #[serde(default)]
    pub allocator_kind: String,
    /// CLOCK_MONOTONIC at the start of tracing (event timestamps use that clock).
    pub start_mono_ns: u64,
    /// Wall-clock time at the start of tracing, ns since the Unix epoch.
    #[serde(default)]
    pub start_unix_ns: i64,
    pub ring_size: u32,
    pub stack_slots: u32,
}

/// One frame of a recording.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Header(RecordHeader),
    Maps {
        pid: u32,
        maps: Vec<RecordedMapping>,
    },
    Stack {
        pid: u32,
        stack_id: i32,
        addrs: Vec<u64>,
    },
    Events(Vec<Event>),
    Tick {
        t_ns: u64,
        counters: Counters,
    },
    Mark {
        t_ns: u64,
        counters: Counters,
    },
    End {
        t_ns: u64,
        counters: Counters,
        exit_code: Option<i32>,
    },
    /// Events lost so far per process, as the kernel counted them (version 4; written when
    /// they change, before the drain point that reports them).
    Losses(Vec<(u32, u64)>),
    /// A process first seen, renamed, or exited.
    Process {
        pid: u32,
        command: String,
        allocator: String,
        /// Written after `exited`; absent (empty) in older recordings.
        allocator_kind: String,
        exited: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedMapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: PathBuf,
    /// GNU build id of the file when it was recorded (empty when it has none).
    pub build_id: Vec<u8>,
}

impl RecordedMapping {
    pub fn of(m: &Mapping, build_id: Vec<u8>) -> RecordedMapping {
        RecordedMapping {
            start: m.start,
            end: m.end,
            offset: m.offset,
            path: m.path.clone(),
            build_id,
        }
    }
}

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

/// Why a recording cannot be read on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("byte {offset}: {what}")]
pub struct FormatError {
    /// Offset from the start of the file of the frame (or field) that is wrong.
    pub offset: u64,
    pub what: String,
}

/// Reads a recording frame by frame.
pub struct Reader<R> {
    input: R,
    offset: u64,
    buf: Vec<u8>,
    /// The frames end with a checksum (version 4 on).
    crc: bool,
}

impl Reader<BufReader<File>> {
    pub fn open(path: &Path) -> anyhow::Result<Reader<BufReader<File>>> {
        let file = File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open the recording {}: {e}", path.display()))?;
        Reader::new(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| anyhow::anyhow!("{} is not a tracer recording: {e}", path.display()))
    }
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Reader<R>, FormatError> {
        let mut start = [0u8; 12];
        let n = read_full(&mut input, &mut start).map_err(|e| FormatError {
            offset: 0,
            what: e.to_string(),
        })?;
        if n < 12 || &start[..8] != MAGIC {
            return Err(FormatError {
                offset: 0,
                what: "it does not start with the recording signature (TRACEREC)".into(),
            });
        }
        let version = u16::from_le_bytes([start[8], start[9]]);
        if !(1..=VERSION).contains(&version) {
            return Err(FormatError {
                offset: 8,
                what: format!(
                    "format version {version}; this tracer reads version {VERSION} (use the tracer that wrote it)"
                ),
            });
        }
        Ok(Reader {
            input,
            offset: 12,
            buf: Vec::new(),
            crc: version >= CRC_VERSION,
        })
    }

    /// Offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame; None at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FormatError> {
        let at = self.offset;
        let io = |e: std::io::Error| FormatError {
            offset: at,
            what: e.to_string(),
        };
        let mut head = [0u8; 5];
        match read_full(&mut self.input, &mut head).map_err(io)? {
            0 => return Ok(None),
            5 => {}
            n => {
                return Err(FormatError {
                    offset: at,
                    what: format!(
                        "truncated: a frame header needs 5 bytes, the file ends after {n}"
                    ),
                })
            }
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME {
            return Err(FormatError {
                offset: at,
                what: format!("frame length {len} is over the {MAX_FRAME} limit (corrupt)"),
            });
        }
        self.buf.resize(len as usize, 0);
        let got = read_full(&mut self.input, &mut self.buf).map_err(io)?;
        if got < len as usize {
            return Err(FormatError {
                offset: at,
                what: format!("truncated: the frame holds {len} bytes, the file ends after {got}"),
            });
        }
        if self.crc {
            let mut crc = [0u8; 4];
            let got = read_full(&mut self.input, &mut crc).map_err(io)?;
            if got < 4 {
                return Err(FormatError {
                    offset: at,
                    what: "truncated: the frame's checksum is missing".into(),
                });
            }
            if u32::from_le_bytes(crc) != frame_crc(&head, &self.buf) {
                return Err(FormatError {
                    offset: at,
                    what: format!(
                        "the frame's checksum does not match: the recording is damaged from \
                         here on (a {len}-byte frame of kind {})",
                        head[0]
                    ),
                });
            }
            self.offset += 4;
        }
        self.offset += 5 + len as u64;
        decode(head[0], &self.buf, at + 5).map(Some)
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

// ---- encoding ---------------------------------------------------------------------------

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_var(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    let n = v.len().min(u16::MAX as usize);
    put_u16(b, n as u16);
    b.extend_from_slice(&v[..n]);
}
fn put_counters(b: &mut Vec<u8>, c: &Counters) {
    put_u64(b, c.bad_records);
    b.push(c.kernel.len() as u8);
    for v in c.kernel {
        put_u64(b, v);
    }
}

/// Events: u8 kind (1 alloc, 2 free, 3 exec, 4 fork, 5 munmap, 6 alloc in a named heap, 7 heap
/// released), then varints; timestamps as zigzag deltas from the
/// previous event of the frame (CPUs interleave, so they are not monotonic).
fn put_event(b: &mut Vec<u8>, ev: &Event, prev_ts: &mut u64) {
    let mut ts = |b: &mut Vec<u8>, t: u64| {
        put_var(b, zigzag(t.wrapping_sub(*prev_ts) as i64));
        *prev_ts = t;
    };
    match ev {
        Event::Alloc(a) => {
            // Kind 6: an allocation in a named heap (its heap follows the stack id).
            b.push(if a.heap == 0 { 1 } else { 6 });
            put_var(b, a.pid as u64);
            put_var(b, a.tid as u64);
            ts(b, a.ts_ns);
            b.push(a.func as u8);
            put_var(b, a.addr);
            put_var(b, a.old_addr);
            put_var(b, a.size);
            put_var(b, a.weight);
            put_var(b, zigzag(a.stack_id as i64));
            if a.heap != 0 {
                put_var(b, a.heap);
            }
        }
        Event::HeapRelease {
            pid,
            ts_ns,
            heap,
            destroy,
        } => {
            b.push(7);
            put_var(b, *pid as u64);
            ts(b, *ts_ns);
            put_var(b, *heap);
            b.push(u8::from(*destroy));
        }
        Event::Free { pid, ts_ns, addr } => {
            b.push(2);
            put_var(b, *pid as u64);
            ts(b, *ts_ns);
            put_var(b, *addr);
        }
        Event::Exec { pid, ts_ns } => {
            b.push(3);
            put_var(b, *pid as u64);
            ts(b, *ts_ns);
        }
        Event::Munmap {
            pid,
            ts_ns,
            addr,
            len,
        } => {
            b.push(5);
            put_var(b, *pid as u64);
            ts(b, *ts_ns);
            put_var(b, *addr);
            put_var(b, *len);
        }
        Event::Fork { pid, parent, ts_ns } => {
            b.push(4);
            put_var(b, *pid as u64);
            ts(b, *ts_ns);
            put_var(b, *parent as u64);
        }
    }
}

fn encode_events(evs: &[Event], b: &mut Vec<u8>) -> u8 {
    put_u32(b, evs.len() as u32);
    let mut prev = 0;
    for e in evs {
        put_event(b, e, &mut prev);
    }
    tag::EVENTS
}

/// Writes the payload of `frame` into `b`; returns its tag.
fn encode(frame: &Frame, b: &mut Vec<u8>) -> u8 {
    match frame {
        Frame::Header(h) => {
            b.extend_from_slice(&serde_json::to_vec(h).unwrap_or_default());
            tag::HEADER
        }
        Frame::Maps { pid, maps } => {
            put_u32(b, *pid);
            put_u32(b, maps.len() as u32);
            for m in maps {
                put_u64(b, m.start);
                put_u64(b, m.end);
                put_u64(b, m.offset);
                put_bytes(b, m.path.as_os_str().as_encoded_bytes());
                put_bytes(b, &m.build_id);
            }
            tag::MAPS
        }
        Frame::Stack {
            pid,
            stack_id,
            addrs,
        } => {
            put_u32(b, *pid);
            b.extend_from_slice(&stack_id.to_le_bytes());
            let n = addrs.len().min(u16::MAX as usize);
            put_u16(b, n as u16);
            for a in &addrs[..n] {
                put_u64(b, *a);
            }
            tag::STACK
        }
        Frame::Events(evs) => encode_events(evs, b),
        Frame::Losses(lost) => {
            put_u32(b, lost.len() as u32);
            for (pid, n) in lost {
                put_u32(b, *pid);
                put_u64(b, *n);
            }
            tag::LOSSES
        }
        Frame::Tick { t_ns, counters } => {
            put_u64(b, *t_ns);
            put_counters(b, counters);
            tag::TICK
        }
        Frame::Mark { t_ns, counters } => {
            put_u64(b, *t_ns);
            put_counters(b, counters);
            tag::MARK
        }
        Frame::End {
            t_ns,
            counters,
            exit_code,
        } => {
            put_u64(b, *t_ns);
            put_counters(b, counters);
            b.push(exit_code.is_some() as u8);
            b.extend_from_slice(&exit_code.unwrap_or(0).to_le_bytes());
            tag::END
        }
        Frame::Process {
            pid,
            command,
            allocator,
            allocator_kind,
            exited,
        } => {
            put_u32(b, *pid);
            put_bytes(b, command.as_bytes());
            put_bytes(b, allocator.as_bytes());
            b.push(*exited as u8);
            put_bytes(b, allocator_kind.as_bytes());
            tag::PROCESS
        }
    }
}

// ---- decoding ---------------------------------------------------------------------------

/// A bounds-checked reader over one frame's payload; errors carry file offsets.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    base: u64,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: impl Into<String>) -> FormatError {
        FormatError {
            offset: self.base + self.pos as u64,
            what: what.into(),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        if self.b.len() - self.pos < n {
            return Err(self.err(format!(
                "{what}: needs {n} bytes, the frame has {} left",
                self.b.len() - self.pos
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        let s = self.take(8, what)?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    fn var(&mut self, what: &str) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8(what)?;
            let bits = (byte & 0x7f) as u64;
            if i == 9 && bits > 1 {
                return Err(self.err(format!("{what}: varint overflows 64 bits")));
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err(format!("{what}: varint longer than 10 bytes")))
    }
    fn var32(&mut self, what: &str) -> Result<u32, FormatError> {
        let v = self.var(what)?;
        u32::try_from(v).map_err(|_| self.err(format!("{what}: {v} does not fit 32 bits")))
    }
    fn bytes(&mut self, what: &str) -> Result<&'a [u8], FormatError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    fn counters(&mut self) -> Result<Counters, FormatError> {
        let mut c = Counters {
            bad_records: self.u64("bad record count")?,
            ..Counters::default()
        };
        let n = self.u8("counter count")? as usize;
        for i in 0..n {
            let v = self.u64("counter")?;
            // Counters a newer tracer added are skipped; missing ones stay zero.
            if let Some(slot) = c.kernel.get_mut(i) {
                *slot = v;
            }
        }
        Ok(c)
    }
    fn done(&self, what: &str) -> Result<(), FormatError> {
        if self.pos != self.b.len() {
            return Err(self.err(format!(
                "{what} frame has {} unexpected trailing bytes",
                self.b.len() - self.pos
            )));
        }
        Ok(())
    }
}

fn decode(t: u8, payload: &[u8], base: u64) -> Result<Frame, FormatError> {
    let mut c = Cursor {
        b: payload,
        pos: 0,
        base,
    };
    let frame = match t {
        tag::HEADER => {
            let h: RecordHeader = serde_json::from_slice(payload)
                .map_err(|e| c.err(format!("header is not valid: {e}")))?;
            c.pos = payload.len();
            Frame::Header(h)
        }
        tag::MAPS => {
            let pid = c.u32("pid")?;
            let n = c.u32("mapping count")? as usize;
            // each mapping takes at least 28 bytes: do not trust n for the allocation
            let mut maps = Vec::with_capacity(n.min(payload.len() / 28));
            for _ in 0..n {
                let start = c.u64("mapping start")?;
                let end = c.u64("mapping end")?;
                let offset = c.u64("mapping offset")?;
                let path = c.bytes("mapping path")?;
                let build_id = c.bytes("build id")?.to_vec();
                if end < start {
                    return Err(c.err(format!(
                        "mapping ends ({end:#x}) before it starts ({start:#x})"
                    )));
                }
                maps.push(RecordedMapping {
                    start,
                    end,
                    offset,
                    path: PathBuf::from(String::from_utf8_lossy(path).into_owned()),
                    build_id,
                });
            }
            Frame::Maps { pid, maps }
        }
        tag::STACK => {
            let pid = c.u32("pid")?;
            let stack_id = c.u32("stack id")? as i32;
            let n = c.u16("frame count")? as usize;
            let mut addrs = Vec::with_capacity(n.min(payload.len() / 8));
            for _ in 0..n {
                addrs.push(c.u64("return address")?);
            }
            Frame::Stack {
                pid,
                stack_id,
                addrs,
            }
        }
        tag::EVENTS => {
            let n = c.u32("event count")? as usize;
            let mut evs = Vec::with_capacity(n.min(payload.len() / 4));
            let mut prev_ts = 0u64;
            for _ in 0..n {
                let at = c.pos;
                let ev = match c.u8("event kind")? {
                    k @ (1 | 6) => {
                        let pid = c.var32("pid")?;
                        let tid = c.var32("tid")?;
                        let ts_ns = prev_ts.wrapping_add(unzigzag(c.var("timestamp")?) as u64);
                        let f = c.u8("function")?;
                        let func = AllocFn::from_u8(f)
                            .ok_or_else(|| c.err(format!("unknown allocator function {f}")))?;
                        let addr = c.var("address")?;
                        let old_addr = c.var("old address")?;
                        let size = c.var("size")?;
                        let weight = c.var("weight")?;
                        let sid = unzigzag(c.var("stack id")?);
                        let stack_id = i32::try_from(sid)
                            .map_err(|_| c.err(format!("stack id {sid} out of range")))?;
                        let heap = if k == 6 { c.var("heap")? } else { 0 };
                        prev_ts = ts_ns;
                        Event::Alloc(Alloc {
                            pid,
                            tid,
                            ts_ns,
                            func,
                            addr,
                            old_addr,
                            size,
                            weight,
                            stack_id,
                            heap,
                        })
                    }
                    7 => {
                        let pid = c.var32("pid")?;
                        let ts_ns = prev_ts.wrapping_add(unzigzag(c.var("timestamp")?) as u64);
                        prev_ts = ts_ns;
                        let heap = c.var("heap")?;
                        let destroy = c.u8("destroy flag")? != 0;
                        Event::HeapRelease {
                            pid,
                            ts_ns,
                            heap,
                            destroy,
                        }
                    }
                    2 => {
                        let pid = c.var32("pid")?;
                        let ts_ns = prev_ts.wrapping_add(unzigzag(c.var("timestamp")?) as u64);
                        let addr = c.var("address")?;
                        prev_ts = ts_ns;
                        Event::Free { pid, ts_ns, addr }
                    }
                    3 => {
                        let pid = c.var32("pid")?;
                        let ts_ns = prev_ts.wrapping_add(unzigzag(c.var("timestamp")?) as u64);
                        prev_ts = ts_ns;
                        Event::Exec { pid, ts_ns }
                    }
                    4 => {
                        let pid = c.var32("pid")?;
                        let ts_ns = prev_ts.wrapping_add(unzigzag(c.var("timestamp")?) as u64);
                        prev_ts = ts_ns;
                        let parent = c.var32("parent pid")?;
                        Event::Fork { pid, parent, ts_ns }
                    }
                    5 => {
                        let pid = c.var32("pid")?;
                        let ts_ns = prev_ts.wrapping_add(unzigzag(c.var("timestamp")?) as u64);
                        prev_ts = ts_ns;
                        let addr = c.var("address")?;
                        let len = c.var("length")?;
                        Event::Munmap {
                            pid,
                            ts_ns,
                            addr,
                            len,
                        }
                    }
                    k => {
                        c.pos = at;
                        return Err(c.err(format!("unknown event kind {k}")));
                    }
                };
                evs.push(ev);
            }
            Frame::Events(evs)
        }
        tag::LOSSES => {
            let n = c.u32("count")? as usize;
            // 12 bytes each: a count above what the frame holds is corruption.
            if n > c.b.len() / 12 {
                return Err(c.err(format!("{n} processes cannot fit in the frame")));
            }
            let mut lost = Vec::with_capacity(n);
            for _ in 0..n {
                lost.push((c.u32("pid")?, c.u64("lost")?));
            }
            Frame::Losses(lost)
        }
        tag::TICK | tag::MARK => {
            let t_ns = c.u64("time")?;
            let counters = c.counters()?;
            if t == tag::TICK {
                Frame::Tick { t_ns, counters }
            } else {
                Frame::Mark { t_ns, counters }
            }
        }
        tag::END => {
            let t_ns = c.u64("time")?;
            let counters = c.counters()?;
            let has = c.u8("exit flag")?;
            let code = c.u32("exit code")? as i32;
            Frame::End {
                t_ns,
                counters,
                exit_code: (has != 0).then_some(code),
            }
        }
        tag::PROCESS => {
            let pid = c.u32("pid")?;
            let command = String::from_utf8_lossy(c.bytes("command")?).into_owned();
            let allocator = String::from_utf8_lossy(c.bytes("allocator")?).into_owned();
            let exited = c.u8("exited flag")? != 0;
            let allocator_kind = if c.pos < c.b.len() {
                String::from_utf8_lossy(c.bytes("allocator kind")?).into_owned()
            } else {
                String::new()
            };
            Frame::Process {
                pid,
                command,
                allocator,
                allocator_kind,
                exited,
            }
        }
        t => {
            return Err(FormatError {
                offset: base.saturating_sub(5),
                what: format!("unknown frame tag {t}"),
            })
        }
    };
    c.done(match t {
        tag::MAPS => "maps",
        tag::STACK => "stack",
        tag::EVENTS => "events",
        _ => "a",
    })?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_frames() -> Vec<Frame> {
        let mut counters = Counters::default();
        counters.kernel[0] = 3;
        counters.kernel[7] = 12345;
        counters.bad_records = 1;
        vec![
            Frame::Header(RecordHeader {
                tracer: "0.1.0".into(),
                pid: 42,
                command: "leaky".into(),
                allocator: "/lib/libc.so.6".into(),
                allocator_kind: "glibc".into(),
                start_mono_ns: 1_000_000,
                start_unix_ns: 1_700_000_000_000_000_000,
                ring_size: 4096,
                stack_slots: 1024,
            }),
            Frame::Maps {
                pid: 42,
                maps: vec![RecordedMapping {
                    start: 0x400000,
                    end: 0x401000,
                    offset: 0x1000,
                    path: "/bin/leaky".into(),
                    build_id: vec![0xde, 0xad],
                }],
            },
            Frame::Stack {
                pid: 42,
                stack_id: 7,
                addrs: vec![0x401136, 0x7f00_0000_1234],
            },
            Frame::Events(vec![
                Event::Alloc(Alloc {
                    pid: 42,
                    tid: 43,
                    ts_ns: 5_000_000,
                    func: AllocFn::Realloc,
                    addr: 0x5555_0000,
                    old_addr: 0x5555_1000,
                    size: 64,
                    weight: 1,
                    stack_id: 7,
                    heap: 0,
                }),
                Event::Alloc(Alloc {
                    pid: 42,
                    tid: 43,
                    ts_ns: 5_000_100,
                    func: AllocFn::Malloc,
                    addr: 0x5555_2000,
                    old_addr: 0,
                    size: 24,
                    weight: 1,
                    stack_id: 7,
                    heap: 0x7f00_0000_8000,
                }),
                Event::HeapRelease {
                    pid: 42,
                    ts_ns: 5_000_200,
                    heap: 0x7f00_0000_8000,
                    destroy: true,
                },
                Event::Free {
                    pid: 42,
                    ts_ns: 4_999_000,
                    addr: 0x5555_0000,
                },
                Event::Alloc(Alloc {
                    pid: 42,
                    tid: 42,
                    ts_ns: 6_000_000,
                    func: AllocFn::Malloc,
                    addr: u64::MAX,
                    old_addr: 0,
                    size: 1,
                    weight: 1,
                    stack_id: -17,
                    heap: 0,
                }),
            ]),
            Frame::Tick {
                t_ns: 100_000_000,
                counters,
            },
            Frame::Mark {
                t_ns: 150_000_000,
                counters,
            },
            Frame::Process {
                pid: 43,
                command: "worker".into(),
                allocator: "/lib/libc.so.6".into(),
                allocator_kind: "glibc".into(),
                exited: true,
            },
            Frame::Losses(vec![(42, 7), (43, 1 << 40)]),
            Frame::End {
                t_ns: 200_000_000,
                counters,
                exit_code: Some(-3),
            },
        ]
    }

    fn to_bytes(frames: &[Frame]) -> Vec<u8> {
        to_bytes_version(frames, VERSION)
    }

    /// A recording as a tracer writing `version` would have written it.
    fn to_bytes_version(frames: &[Frame], version: u16) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        let mut b = Vec::new();
        for f in frames {
            b.clear();
            let t = encode(f, &mut b);
            let mut head = [t, 0, 0, 0, 0];
            head[1..].copy_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(&head);
            out.extend_from_slice(&b);
            if version >= CRC_VERSION {
                out.extend_from_slice(&frame_crc(&head, &b).to_le_bytes());
            }
        }
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, FormatError> {
        let mut r = Reader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip() {
        let frames = sample_frames();
        assert_eq!(read_all(&to_bytes(&frames)).unwrap(), frames);
    }

    #[test]
    fn the_recorder_writes_what_the_reader_reads() {
        let dir = std::env::temp_dir().join(format!("tracer-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.rec");
        let frames = sample_frames();
        let Frame::Header(h) = &frames[0] else {
            unreachable!()
        };
        let mut rec = Recorder::create(&path, h).unwrap();
        for f in &frames[1..] {
            rec.write(f).unwrap();
        }
        rec.flush().unwrap();
        let mut r = Reader::open(&path).unwrap();
        let mut got = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            got.push(f);
        }
        assert_eq!(got, frames);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncation_names_the_offset() {
        let bytes = to_bytes(&sample_frames());
        // the End frame starts 5 + 8 + 8 + 1 + 12*8 + 1 + 4 bytes (and its checksum) before
        // the end: cut in its checksum, then in its payload
        let end_len = 8 + 8 + 1 + 8 * tracer_common::counter::COUNT as usize + 1 + 4;
        for cut in [3, 7] {
            let err = read_all(&bytes[..bytes.len() - cut]).unwrap_err();
            assert!(err.what.contains("truncated"), "{err}");
            assert_eq!(err.offset as usize, bytes.len() - 4 - 5 - end_len);
        }
        // cut inside a frame header
        let err = read_all(&bytes[..14]).unwrap_err();
        assert_eq!(err.offset, 12);
        assert!(err.to_string().starts_with("byte 12: truncated"), "{err}");
    }

    #[test]
    fn wrong_signature_and_version_are_refused() {
        assert!(Reader::new(&b"hello world, not a recording"[..]).is_err());
        assert!(Reader::new(&b""[..]).is_err());
        let mut bytes = to_bytes(&sample_frames());
        bytes[8] = 9;
        let err = Reader::new(&bytes[..]).err().unwrap();
        assert!(err.what.contains("version 9"), "{err}");
    }

    #[test]
    fn recordings_of_earlier_versions_still_read() {
        let frames = sample_frames();
        assert_eq!(read_all(&to_bytes_version(&frames, 3)).unwrap(), frames);
    }

    /// Every single-bit flip anywhere in a recording is an error, or reads the same frames (and
    /// so replays to byte-identical reports): never other numbers in silence.
    #[test]
    fn no_bit_flip_changes_what_a_recording_says() {
        let frames = sample_frames();
        let bytes = to_bytes(&frames);
        let mut errors = 0;
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            match read_all(&b) {
                Err(_) => errors += 1,
                Ok(got) => assert_eq!(got, frames, "bit {bit} changed the frames silently"),
            }
        }
        // Only the reserved field's 16 bits may flip unseen.
        assert_eq!(errors, bytes.len() * 8 - 16);
        // A flipped checksum byte names its frame.
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 0x10;
        let err = read_all(&b).unwrap_err();
        assert!(err.what.contains("checksum"), "{err}");
    }

    #[test]
    fn corrupt_fields_name_their_offset() {
        // Version 3 (no checksums): the decoder's own checks name the field.
        let mut bytes = to_bytes_version(&sample_frames()[..4], 3);
        // the events frame: kind byte of the first event follows the u32 count
        let events_at = bytes.len() - {
            let mut b = Vec::new();
            encode(&sample_frames()[3], &mut b);
            b.len()
        };
        bytes[events_at + 4] = 9;
        let err = read_all(&bytes).unwrap_err();
        assert_eq!(err.offset as usize, events_at + 4, "{err}");
        assert!(err.what.contains("unknown event kind 9"), "{err}");
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() {
        let mut bytes = to_bytes(&[]);
        bytes.push(tag::EVENTS);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = read_all(&bytes).unwrap_err();
        assert!(err.what.contains("limit"), "{err}");
        // a count far above what the frame holds is a short read, not an allocation
        let mut bytes = to_bytes(&[]);
        bytes.push(tag::MAPS);
        bytes.extend_from_slice(&8u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_all(&bytes).is_err());
    }

    #[test]
    fn varints_and_zigzag_round_trip_at_the_edges() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut b = Vec::new();
            put_var(&mut b, v);
            let mut c = Cursor {
                b: &b,
                pos: 0,
                base: 0,
            };
            assert_eq!(c.var("v").unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        // 11 continuation bytes
        let b = [0xffu8; 11];
        let mut c = Cursor {
            b: &b,
            pos: 0,
            base: 0,
        };
        assert!(c.var("v").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes after a valid start: errors, never a panic.
        #[test]
        fn garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = to_bytes(&[]);
            bytes.extend_from_slice(&tail);
            let _ = read_all(&bytes);
        }

        /// A valid recording with bytes flipped, cut or inserted: errors, never a panic.
        #[test]
        fn mutated_recordings_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = to_bytes(&sample_frames());
            for (i, v) in &flips {
                let i = i.index(bytes.len());
                bytes[i] ^= *v;
            }
            let n = cut.index(bytes.len() + 1);
            let _ = read_all(&bytes[..n]);
            let _ = read_all(&bytes);
        }

        #[test]
        fn events_round_trip(evs in proptest::collection::vec(arb_event(), 0..50)) {
            let frames = vec![Frame::Events(evs)];
            prop_assert_eq!(read_all(&to_bytes(&frames)).unwrap(), frames);
        }
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let alloc = (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            0..AllocFn::ALL.len(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            1..1000u64,
            any::<i32>(),
            prop_oneof![Just(0u64), any::<u64>()],
        )
            .prop_map(
                |(pid, tid, ts_ns, f, addr, old_addr, size, weight, stack_id, heap)| {
                    Event::Alloc(Alloc {
                        pid,
                        tid,
                        ts_ns,
                        func: AllocFn::ALL[f],
                        addr,
                        old_addr,
                        size,
                        weight,
                        stack_id,
                        heap,
                    })
                },
            );
        let heap_release = (any::<u32>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(pid, ts_ns, heap, destroy)| Event::HeapRelease {
                pid,
                ts_ns,
                heap,
                destroy,
            },
        );
        let free = (any::<u32>(), any::<u64>(), any::<u64>())
            .prop_map(|(pid, ts_ns, addr)| Event::Free { pid, ts_ns, addr });
        let exec = (any::<u32>(), any::<u64>()).prop_map(|(pid, ts_ns)| Event::Exec { pid, ts_ns });
        let fork = (any::<u32>(), any::<u32>(), any::<u64>())
            .prop_map(|(pid, parent, ts_ns)| Event::Fork { pid, parent, ts_ns });
        let munmap = (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(pid, ts_ns, addr, len)| Event::Munmap {
                pid,
                ts_ns,
                addr,
                len,
            },
        );
        prop_oneof![alloc, free, exec, fork, munmap, heap_release]
    }
}
