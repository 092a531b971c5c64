//! The frames' payloads: encoding and decoding (see the format in the module above).
use crate::reach::summary::{Held, Link, ProcessScan, ScanHow, ScanStats, SiteScan, TypeCount};
use std::path::PathBuf;

use tracer_common::AllocFn;

use super::{tag, FormatError, Frame, RecordHeader, RecordedMapping};
use crate::collector::{Alloc, Counters, Event};
use crate::report::UnwindSummary;

pub(super) fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub(super) fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub(super) fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub(super) fn put_var(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}
pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}
pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}
pub(super) fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    let n = v.len().min(u16::MAX as usize);
    put_u16(b, n as u16);
    b.extend_from_slice(&v[..n]);
}
/// Names with two counts each (a scan's holders, its classes).
fn put_named<'a>(b: &mut Vec<u8>, items: impl ExactSizeIterator<Item = (&'a String, u64, u64)>) {
    put_u32(b, items.len() as u32);
    for (name, objects, bytes) in items {
        put_bytes(b, name.as_bytes());
        put_var(b, objects);
        put_var(b, bytes);
    }
}

/// What version 6 adds at the end of a scan's frame: what it cost, and each site's chain of
/// holders (in the sites' order).
pub(super) fn put_reach_tail(b: &mut Vec<u8>, scan: &ProcessScan) {
    let sites = &scan.sites;
    let st = &scan.stats;
    b.push(match st.how {
        ScanHow::Running => 0,
        ScanHow::Stopped => 1,
        ScanHow::AtExit => 2,
    });
    put_var(b, st.bytes);
    put_var(b, st.micros);
    put_var(b, st.pause_micros);
    put_var(b, st.unreadable_blocks);
    put_var(b, st.unreadable_root_bytes);
    // And each site's chain of holders, in the sites' order.
    for (_, s) in sites {
        put_u32(b, s.chain.len() as u32);
        for link in &s.chain {
            match link {
                Link::Root(name) => {
                    b.push(0);
                    put_bytes(b, name.as_bytes());
                }
                Link::Site { site, blocks } => {
                    b.push(1);
                    put_var(b, *site as u64);
                    put_var(b, *blocks);
                }
            }
        }
    }
}

pub(super) fn put_counters(b: &mut Vec<u8>, c: &Counters) {
    put_u64(b, c.bad_records);
    b.push(c.kernel.len() as u8);
    for v in c.kernel {
        put_u64(b, v);
    }
}

/// Events: u8 kind (1 alloc, 2 free, 3 exec, 4 fork, 5 munmap, 6 alloc in a named heap, 7 heap
/// released), then varints; timestamps as zigzag deltas from the
/// previous event of the frame (CPUs interleave, so they are not monotonic).
pub(super) fn put_event(b: &mut Vec<u8>, ev: &Event, prev_ts: &mut u64) {
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
        Event::Exec { pid, ts_ns, .. } => {
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

pub(super) fn encode_events(evs: &[Event], b: &mut Vec<u8>) -> u8 {
    put_u32(b, evs.len() as u32);
    let mut prev = 0;
    for e in evs {
        put_event(b, e, &mut prev);
    }
    tag::EVENTS
}

/// Writes the payload of `frame` into `b`; returns its tag.
pub(super) fn encode(frame: &Frame, b: &mut Vec<u8>) -> u8 {
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
        Frame::Reach { pid, scan } => {
            let sites = &scan.sites;
            put_u32(b, *pid);
            put_u32(b, sites.len() as u32);
            for (site, s) in sites {
                put_u64(b, *site as u64);
                let r = &s.reach;
                for (objects, bytes) in r.counts() {
                    put_var(b, objects);
                    put_var(b, bytes);
                }
                put_named(b, r.held_by.iter().map(|h| (&h.root, h.objects, h.bytes)));
                put_named(b, s.types.iter().map(|t| (&t.name, t.objects, t.bytes)));
            }
            put_reach_tail(b, scan);
            tag::REACH
        }
        Frame::Unwind(u) => {
            for v in [
                u.files,
                u.rows,
                u.table_bytes,
                u.frame_pointer_files,
                u.failed,
                u.full,
                u.cached,
            ] {
                put_var(b, v);
            }
            put_u64(b, u.build_ms.to_bits());
            tag::UNWIND
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
pub(super) struct Cursor<'a> {
    pub(super) b: &'a [u8],
    pub(super) pos: usize,
    pub(super) base: u64,
}

impl<'a> Cursor<'a> {
    pub(super) fn err(&self, what: impl Into<String>) -> FormatError {
        FormatError {
            offset: self.base + self.pos as u64,
            what: what.into(),
        }
    }
    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
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
    /// What [`put_named`] wrote.
    fn named(&mut self, what: &str) -> Result<Vec<(String, u64, u64)>, FormatError> {
        let n = self.u32(what)? as usize;
        // At least 3 bytes each.
        if n > self.b.len() / 3 {
            return Err(self.err(format!("{n} of {what} cannot fit in the frame")));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let name = String::from_utf8_lossy(self.bytes(what)?).into_owned();
            v.push((name, self.var("objects")?, self.var("bytes")?));
        }
        Ok(v)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        let s = self.take(8, what)?;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    pub(super) fn var(&mut self, what: &str) -> Result<u64, FormatError> {
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
    pub(super) fn var32(&mut self, what: &str) -> Result<u32, FormatError> {
        let v = self.var(what)?;
        u32::try_from(v).map_err(|_| self.err(format!("{what}: {v} does not fit 32 bits")))
    }
    pub(super) fn bytes(&mut self, what: &str) -> Result<&'a [u8], FormatError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
    pub(super) fn counters(&mut self) -> Result<Counters, FormatError> {
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
    pub(super) fn done(&self, what: &str) -> Result<(), FormatError> {
        if self.pos != self.b.len() {
            return Err(self.err(format!(
                "{what} frame has {} unexpected trailing bytes",
                self.b.len() - self.pos
            )));
        }
        Ok(())
    }
}

pub(super) fn decode(t: u8, payload: &[u8], base: u64) -> Result<Frame, FormatError> {
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
                        Event::Exec {
                            pid,
                            ts_ns,
                            comm: None,
                        }
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
        tag::REACH => {
            let pid = c.u32("pid")?;
            let n = c.u32("count")? as usize;
            // At least 18 bytes each: a count above what the frame holds is corruption.
            if n > c.b.len() / 18 {
                return Err(c.err(format!("{n} sites cannot fit in the frame")));
            }
            let mut sites = Vec::with_capacity(n);
            for _ in 0..n {
                let site = c.u64("site")? as usize;
                let mut v = [(0u64, 0u64); 4];
                for x in &mut v {
                    *x = (c.var("count")?, c.var("count")?);
                }
                let mut s = SiteScan::default();
                let r = &mut s.reach;
                r.set_counts(v);
                r.held_by = c
                    .named("holder")?
                    .into_iter()
                    .map(|(root, objects, bytes)| Held {
                        root,
                        objects,
                        bytes,
                    })
                    .collect();
                s.types = c
                    .named("class")?
                    .into_iter()
                    .map(|(name, objects, bytes)| TypeCount {
                        name,
                        objects,
                        bytes,
                    })
                    .collect();
                sites.push((site, s));
            }
            // A version-5 frame ends here: its cost was not recorded.
            let stats = if c.pos < c.b.len() {
                ScanStats {
                    how: match c.u8("scan kind")? {
                        0 => ScanHow::Running,
                        1 => ScanHow::Stopped,
                        2 => ScanHow::AtExit,
                        k => {
                            return Err(FormatError {
                                offset: base + c.pos as u64,
                                what: format!("unknown scan kind {k}"),
                            })
                        }
                    },
                    bytes: c.var("bytes scanned")?,
                    micros: c.var("scan time")?,
                    pause_micros: c.var("pause")?,
                    unreadable_blocks: c.var("unreadable blocks")?,
                    unreadable_root_bytes: c.var("unreadable root bytes")?,
                }
            } else {
                ScanStats::default()
            };
            if c.pos < c.b.len() {
                for (_, s) in sites.iter_mut() {
                    let n = c.u32("chain length")? as usize;
                    // At least 2 bytes a link.
                    if n > c.b.len() / 2 {
                        return Err(FormatError {
                            offset: base + c.pos as u64,
                            what: format!("a chain of {n} links cannot fit in the frame"),
                        });
                    }
                    for _ in 0..n {
                        s.chain.push(match c.u8("link kind")? {
                            0 => Link::Root(String::from_utf8_lossy(c.bytes("root")?).into_owned()),
                            1 => Link::Site {
                                site: c.var("site")? as usize,
                                blocks: c.var("blocks")?,
                            },
                            k => {
                                return Err(FormatError {
                                    offset: base + c.pos as u64,
                                    what: format!("unknown link kind {k}"),
                                })
                            }
                        });
                    }
                }
            }
            Frame::Reach {
                pid,
                scan: ProcessScan { sites, stats },
            }
        }
        tag::UNWIND => Frame::Unwind(UnwindSummary {
            files: c.var("files")?,
            rows: c.var("rows")?,
            table_bytes: c.var("table bytes")?,
            frame_pointer_files: c.var("frame-pointer files")?,
            failed: c.var("failed files")?,
            full: c.var("files left out")?,
            cached: c.var("files from the cache")?,
            build_ms: f64::from_bits(c.u64("build time")?),
        }),
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
