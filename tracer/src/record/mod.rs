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
//!  10 reach   a reachability scan (version 5; its cost from version 6)
//!  11 unwind  the unwind tables so far: varint files, rows, table bytes, frame-pointer
//!             files, failed, full, cached; u64 bits of the build milliseconds   (version 7)
//! counters: u64 bad records, u8 n, n × u64 kernel counter
//! str/bytes: u16 length, bytes
//! ```
//!
//! Readers reject what they cannot trust with an error naming the byte offset; they never
//! panic and never allocate more than a frame's stated length, itself capped. A frame whose
//! checksum fails is such an error: a damaged recording never replays to other numbers.
use crate::reach::summary::ProcessScan;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    collector::{Counters, Event},
    report::UnwindSummary,
    symbolize::Mapping,
};

mod codec;
mod read;
mod write;

pub use read::{FormatError, Reader};
pub use write::{Recorder, Tap};

pub(super) const MAGIC: &[u8; 8] = b"TRACEREC";
/// Written; readers accept every version from 1 (which has no process frames) to this one (3
/// added events in named heaps and heap releases, 4 a checksum per frame, 5 reachability
/// scans, 6 their cost, 7 the unwind tables' figures).
pub const VERSION: u16 = 7;
/// Recordings hold reachability scans from this version on.
pub(super) const REACH_VERSION: u16 = 5;
/// Recordings hold the unwind tables' figures from this version on.
pub(super) const UNWIND_VERSION: u16 = 7;
/// The first version whose frames end with a CRC-32.
pub(super) const CRC_VERSION: u16 = 4;

/// The checksum closing a frame: over its tag, length and payload.
pub(super) fn frame_crc(head: &[u8; 5], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}
/// No frame is larger than this: a length above it is corruption, not a reason to allocate.
pub(super) const MAX_FRAME: u32 = 64 << 20;

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
    pub const REACH: u8 = 10;
    pub const UNWIND: u8 = 11;
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
    /// Mean bytes between sampled allocations (--sample-rate); 0: every call was recorded.
    /// Absent from recordings of tracer versions before sampling.
    #[serde(default)]
    pub sample_rate: u64,
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
    /// What a reachability scan found, per site (version 5), and what it cost (version 6).
    Reach {
        pid: u32,
        scan: ProcessScan,
    },
    /// The unwind tables' figures (version 7; written when they change, before the drain
    /// point that reports them).
    Unwind(UnwindSummary),
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

#[cfg(test)]
mod tests {
    use tracer_common::AllocFn;

    use super::{
        codec::{encode, put_var, unzigzag, zigzag, Cursor},
        *,
    };
    use crate::collector::Alloc;
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
                sample_rate: 0,
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
            Frame::Unwind(UnwindSummary {
                files: 3,
                rows: 30_767,
                table_bytes: 246_136,
                frame_pointer_files: 1,
                failed: 0,
                full: 2,
                cached: 1,
                build_ms: 11.25,
            }),
            Frame::Reach {
                pid: 42,
                scan: ProcessScan {
                    sites: vec![(
                        3,
                        crate::reach::summary::SiteScan {
                            reach: crate::reach::summary::SiteReach {
                                unreachable_objects: 1,
                                unreachable_bytes: 48,
                                reachable_objects: 1 << 33,
                                reachable_bytes: 1 << 40,
                                held_by: vec![crate::reach::summary::Held {
                                    root: "g_list in holders".into(),
                                    objects: 2,
                                    bytes: 128,
                                }],
                                ..Default::default()
                            },
                            types: vec![crate::reach::summary::TypeCount {
                                name: "ns::Widget".into(),
                                objects: 5,
                                bytes: 120,
                            }],
                            chain: vec![
                                crate::reach::summary::Link::Root("g_list in holders".into()),
                                crate::reach::summary::Link::Site {
                                    site: 3,
                                    blocks: 1 << 20,
                                },
                            ],
                        },
                    )],
                    stats: crate::reach::summary::ScanStats {
                        how: crate::reach::summary::ScanHow::Stopped,
                        bytes: 1 << 30,
                        micros: 12_345,
                        pause_micros: 20_000,
                        unreadable_blocks: 3,
                        unreadable_root_bytes: 4096,
                    },
                },
            },
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

    /// A version-5 scan frame (no cost recorded) reads with its cost unknown.
    #[test]
    fn a_scan_recorded_without_its_cost_still_reads() {
        let frames = sample_frames();
        let Some(Frame::Reach { pid, scan }) =
            frames.iter().find(|f| matches!(f, Frame::Reach { .. }))
        else {
            panic!("no scan frame");
        };
        let mut payload = Vec::new();
        let tag = codec::encode(
            &Frame::Reach {
                pid: *pid,
                scan: scan.clone(),
            },
            &mut payload,
        );
        // The cost is the frame's last 1 + 3 varints: cut them as version 5 wrote it.
        let mut tail = Vec::new();
        codec::put_reach_tail(&mut tail, scan);
        payload.truncate(payload.len() - tail.len());
        let Frame::Reach { scan: old, .. } = codec::decode(tag, &payload, 0).unwrap() else {
            panic!("not a scan frame");
        };
        let without_chains: Vec<_> = scan
            .sites
            .iter()
            .map(|(i, s)| {
                let mut s = s.clone();
                s.chain.clear();
                (*i, s)
            })
            .collect();
        assert_eq!(old.sites, without_chains);
        assert_eq!(old.stats, crate::reach::summary::ScanStats::default());
    }

    #[test]
    fn recordings_of_earlier_versions_still_read() {
        let mut frames = sample_frames();
        frames.retain(|f| !matches!(f, Frame::Reach { .. } | Frame::Unwind(_)));
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
        let exec = (any::<u32>(), any::<u64>()).prop_map(|(pid, ts_ns)| Event::Exec {
            pid,
            ts_ns,
            comm: None,
        });
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
