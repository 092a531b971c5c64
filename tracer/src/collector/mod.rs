//! Collectors turn what the kernel (or, later, a recording) saw into [`Event`]s.
//!
//! The eBPF collector (`ebpf`) loads the probes, attaches them to the allocator the target
//! really uses (`target`, `probes`); a thread of its own drains the ring buffer (`stream`).
//! [`parse`] is the one place that reads the wire format of `tracer-common`.
pub mod attach;
pub mod btf;
pub mod ebpf;
pub mod hold;
pub mod launch;
pub mod ldso;
pub mod multi;
pub mod probes;
pub mod returns;
pub mod stacks;
pub mod stream;
pub mod target;

use tracer_common::{
    kind, AllocFn, AllocRecord, ExecRecord, ForkRecord, FreeRecord, Header, HeapRecord,
    MunmapRecord, MAX_STACK_DEPTH,
};

/// Cumulative counts of what the collector saw, lost and skipped since tracing began: the
/// kernel's counters (indices in `tracer_common::counter`) and records that could not be decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub kernel: [u64; tracer_common::counter::COUNT as usize],
    pub bad_records: u64,
}

impl Counters {
    pub fn get(&self, idx: u32) -> u64 {
        self.kernel[idx as usize]
    }

    /// How many of a kind of loss.
    pub fn of(&self, loss: &tracer_common::losses::Loss) -> u64 {
        match loss.count {
            tracer_common::losses::Count::Kernel(i) => self.get(i),
            tracer_common::losses::Count::BadRecords => self.bad_records,
        }
    }
}

/// One thing an allocator did, as the aggregator consumes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Alloc(Alloc),
    Free {
        pid: u32,
        ts_ns: u64,
        addr: u64,
    },
    /// The process replaced its program: every block of the old one is gone. `comm`: the
    /// new program's command name, as the kernel gave it at the exec (None from a notice,
    /// an older record or a recording: recordings name processes in their process frames).
    Exec {
        pid: u32,
        ts_ns: u64,
        comm: Option<String>,
    },
    /// The program unmapped `[addr, addr + len)`: the mappings it made there shrink or go.
    Munmap {
        pid: u32,
        ts_ns: u64,
        addr: u64,
        len: u64,
    },
    /// A followed process forked `pid` (--follow-children): the child starts as a copy of the
    /// parent's address space, and is followed from then on.
    Fork {
        pid: u32,
        parent: u32,
        ts_ns: u64,
    },
    /// A heap of blocks went (mimalloc's `mi_heap_destroy`/`mi_heap_delete`): with `destroy`
    /// every block allocated in it is freed, without it they live on; the heap's own block
    /// (at `heap`) is freed either way.
    HeapRelease {
        pid: u32,
        ts_ns: u64,
        heap: u64,
        destroy: bool,
    },
}

impl Event {
    pub fn pid(&self) -> u32 {
        match self {
            Event::Alloc(a) => a.pid,
            Event::Free { pid, .. }
            | Event::Exec { pid, .. }
            | Event::Fork { pid, .. }
            | Event::HeapRelease { pid, .. }
            | Event::Munmap { pid, .. } => *pid,
        }
    }
}

/// A successful allocation, or a realloc that moved (`old_addr` → `addr`) or released
/// (`addr == 0`, `size == 0`) its input block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alloc {
    pub pid: u32,
    pub tid: u32,
    pub ts_ns: u64,
    pub func: AllocFn,
    pub addr: u64,
    pub old_addr: u64,
    pub size: u64,
    pub weight: u64,
    /// Stack id in the collector's stack table; negative (an errno) when none was taken.
    pub stack_id: i32,
    /// The heap the caller named (mimalloc's `mi_heap_*`), 0 for the allocator's default.
    pub heap: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its kind requires.
    Short {
        kind: u8,
        len: usize,
    },
    /// A kind this build does not know (a newer kernel side?): counted, not fatal.
    UnknownKind(u8),
    UnknownFunc(u8),
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a repr(C) record of integers (any bit pattern is valid);
    // read_unaligned because ring-buffer data is only 8-byte aligned by convention.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// One ring-buffer record, read once: what it says and what it carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// An event. `stack`: the frames (innermost first) an allocation record carried inline.
    Event {
        event: Event,
        stack: Option<Vec<u64>>,
    },
    /// A notice: the process is entering `exit()`, its map is read now.
    Exiting { pid: u32 },
    /// A notice: a stack met a file with no unwind table; the file is mapped at
    /// `[vm_start, vm_end)` in `pid`.
    UnwindMiss(crate::unwind::Miss),
    /// A notice: `pid` mapped code from a file at `addr`; its table can be built now.
    CodeMapped { pid: u32, addr: u64 },
}

/// Reads one record of either ring (events, notices): the one place that reads the wire
/// format of `tracer-common`.
pub fn parse(bytes: &[u8]) -> Result<Record, DecodeError> {
    let hdr: Header = read(bytes).ok_or(DecodeError::Short {
        kind: bytes.first().copied().unwrap_or(0),
        len: bytes.len(),
    })?;
    let short = || DecodeError::Short {
        kind: hdr.kind,
        len: bytes.len(),
    };
    let plain = |event| Record::Event { event, stack: None };
    match hdr.kind {
        kind::ALLOC | kind::ALLOC_STACK => {
            let r: AllocRecord = read(bytes).ok_or_else(short)?;
            let func = AllocFn::from_u8(r.hdr.func).ok_or(DecodeError::UnknownFunc(r.hdr.func))?;
            let event = Event::Alloc(Alloc {
                pid: r.hdr.pid,
                tid: r.tid,
                ts_ns: r.hdr.ts_ns,
                func,
                addr: r.addr,
                old_addr: r.old_addr,
                size: r.size,
                weight: r.weight.max(1),
                stack_id: r.stack_id,
                heap: r.heap,
            });
            let stack = (hdr.kind == kind::ALLOC_STACK)
                .then(|| {
                    // The stack's length, then its frames (only as many as there are bytes).
                    let base = std::mem::size_of::<AllocRecord>();
                    let nr: u64 = read(bytes.get(base..)?)?;
                    let n = (nr as usize / 8).min(MAX_STACK_DEPTH);
                    let ips = bytes.get(base + 8..base + 8 + 8 * n)?;
                    let mut ips: Vec<u64> = ips
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .filter(|&ip| ip != 0)
                        .collect();
                    // A stack cut short says why in a last pseudo-frame (see
                    // `tracer_common::stack_cut_marker`): it is part of the stack's identity.
                    ips.extend(tracer_common::stack_cut_marker(hdr.stack_end));
                    Some(ips)
                })
                .flatten();
            Ok(Record::Event { event, stack })
        }
        kind::FREE => {
            let r: FreeRecord = read(bytes).ok_or_else(short)?;
            Ok(plain(Event::Free {
                pid: r.hdr.pid,
                ts_ns: r.hdr.ts_ns,
                addr: r.addr,
            }))
        }
        kind::EXEC => {
            // A notice of an exec (or an older record) is a bare header: no name.
            let comm = read::<ExecRecord>(bytes).and_then(|r| {
                let end = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
                Some(String::from_utf8_lossy(&r.comm[..end]).into_owned()).filter(|s| !s.is_empty())
            });
            Ok(plain(Event::Exec {
                pid: hdr.pid,
                ts_ns: hdr.ts_ns,
                comm,
            }))
        }
        kind::EXITING => Ok(Record::Exiting { pid: hdr.pid }),
        kind::UNWIND_MISS => {
            let r: tracer_common::UnwindMissRecord = read(bytes).ok_or_else(short)?;
            Ok(Record::UnwindMiss(crate::unwind::Miss {
                pid: r.hdr.pid,
                key: r.key,
                vm_start: r.vm_start,
                vm_end: r.vm_end,
            }))
        }
        kind::CODE_MAPPED => {
            let r: tracer_common::UnwindMissRecord = read(bytes).ok_or_else(short)?;
            Ok(Record::CodeMapped {
                pid: r.hdr.pid,
                addr: r.vm_start,
            })
        }
        kind::MUNMAP => {
            let r: MunmapRecord = read(bytes).ok_or_else(short)?;
            Ok(plain(Event::Munmap {
                pid: r.hdr.pid,
                ts_ns: r.hdr.ts_ns,
                addr: r.addr,
                len: r.len,
            }))
        }
        kind::HEAP_RELEASE => {
            let r: HeapRecord = read(bytes).ok_or_else(short)?;
            Ok(plain(Event::HeapRelease {
                pid: r.hdr.pid,
                ts_ns: r.hdr.ts_ns,
                heap: r.heap,
                destroy: r.hdr.func == AllocFn::HeapDestroy as u8,
            }))
        }
        kind::FORK => {
            let r: ForkRecord = read(bytes).ok_or_else(short)?;
            Ok(plain(Event::Fork {
                pid: r.hdr.pid,
                parent: r.parent,
                ts_ns: r.hdr.ts_ns,
            }))
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event of a record that is one.
    fn decode(b: &[u8]) -> Result<Event, DecodeError> {
        match parse(b)? {
            Record::Event { event, .. } => Ok(event),
            r => panic!("not an event: {r:?}"),
        }
    }

    fn stack_of(b: &[u8]) -> Option<Vec<u64>> {
        match parse(b) {
            Ok(Record::Event { stack, .. }) => stack,
            _ => None,
        }
    }

    fn comm_of(b: &[u8]) -> Option<String> {
        match parse(b) {
            Ok(Record::Event {
                event: Event::Exec { comm, .. },
                ..
            }) => comm,
            _ => None,
        }
    }

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) POD value.
        unsafe {
            std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_alloc_and_free_records() {
        let a = AllocRecord {
            hdr: Header {
                kind: kind::ALLOC,
                func: AllocFn::Calloc as u8,
                stack_end: 0,
                pid: 7,
                ts_ns: 99,
            },
            tid: 8,
            stack_id: 3,
            addr: 0x1000,
            old_addr: 0,
            size: 400,
            weight: 1,
            heap: 0x7000,
        };
        match decode(&bytes(&a)).unwrap() {
            Event::Alloc(x) => {
                assert_eq!(
                    (x.pid, x.tid, x.func, x.addr, x.size, x.stack_id, x.heap),
                    (7, 8, AllocFn::Calloc, 0x1000, 400, 3, 0x7000)
                )
            }
            e => panic!("{e:?}"),
        }
        for (func, destroy) in [(AllocFn::HeapDestroy, true), (AllocFn::HeapDelete, false)] {
            let h = HeapRecord {
                hdr: Header {
                    kind: kind::HEAP_RELEASE,
                    func: func as u8,
                    stack_end: 0,
                    pid: 7,
                    ts_ns: 6,
                },
                heap: 0x7000,
            };
            assert_eq!(
                decode(&bytes(&h)).unwrap(),
                Event::HeapRelease {
                    pid: 7,
                    ts_ns: 6,
                    heap: 0x7000,
                    destroy
                }
            );
        }
        let f = FreeRecord {
            hdr: Header {
                kind: kind::FREE,
                func: AllocFn::Free as u8,
                stack_end: 0,
                pid: 7,
                ts_ns: 5,
            },
            addr: 0x1000,
        };
        assert_eq!(
            decode(&bytes(&f)).unwrap(),
            Event::Free {
                pid: 7,
                ts_ns: 5,
                addr: 0x1000
            }
        );
    }

    #[test]
    fn an_allocation_can_carry_its_stack() {
        let mut r = tracer_common::AllocStackRecord {
            alloc: AllocRecord {
                hdr: Header {
                    kind: kind::ALLOC_STACK,
                    func: AllocFn::Malloc as u8,
                    stack_end: 0,
                    pid: 7,
                    ts_ns: 1,
                },
                stack_id: -17,
                addr: 0x1000,
                size: 8,
                weight: 1,
                ..AllocRecord::default()
            },
            nr_bytes: 16,
            ips: [0; MAX_STACK_DEPTH],
        };
        r.ips[0] = 0x401000;
        r.ips[1] = 0x402000;
        let b = bytes(&r);
        assert!(matches!(decode(&b), Ok(Event::Alloc(a)) if a.addr == 0x1000));
        assert_eq!(stack_of(&b), Some(vec![0x401000, 0x402000]));
        // a plain record has none; a short one is not read past its end
        assert_eq!(stack_of(&b[..60]), None);
        let mut plain = b.clone();
        plain[0] = kind::ALLOC;
        assert_eq!(stack_of(&plain), None);
    }

    #[test]
    fn an_exec_record_names_the_new_program() {
        let mut r = tracer_common::ExecRecord {
            hdr: Header {
                kind: kind::EXEC,
                pid: 9,
                ..Header::default()
            },
            comm: [0; 16],
        };
        r.comm[..5].copy_from_slice(b"leaky");
        let b = bytes(&r);
        assert_eq!(comm_of(&b).as_deref(), Some("leaky"));
        // a bare header (an older record) decodes, without a name
        assert_eq!(comm_of(&b[..16]), None);
        assert_eq!(
            decode(&b[..16]),
            Ok(Event::Exec {
                pid: 9,
                ts_ns: 0,
                comm: None
            })
        );
    }

    #[test]
    fn notices_are_read_too() {
        let h = Header {
            kind: kind::EXITING,
            pid: 4,
            ..Header::default()
        };
        assert_eq!(parse(&bytes(&h)), Ok(Record::Exiting { pid: 4 }));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(matches!(decode(&[]), Err(DecodeError::Short { .. })));
        let mut b = vec![0u8; 24];
        b[0] = kind::ALLOC;
        assert!(matches!(
            decode(&b),
            Err(DecodeError::Short { kind: 1, len: 24 })
        ));
        b[0] = 200;
        assert_eq!(decode(&b), Err(DecodeError::UnknownKind(200)));
        let mut b = vec![0u8; std::mem::size_of::<AllocRecord>()];
        b[0] = kind::ALLOC;
        b[1] = 77;
        assert_eq!(decode(&b), Err(DecodeError::UnknownFunc(77)));
    }
}
