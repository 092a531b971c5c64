//! Reading a recording: frames checked one by one (length caps, checksums, field by field),
//! every error naming its byte offset.
use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

use super::{
    codec::decode, frame_crc, tag, Frame, CRC_VERSION, MAGIC, MAX_FRAME, REACH_VERSION,
    UNWIND_VERSION, VERSION,
};

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
    version: u16,
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
            version,
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
        if head[0] == tag::REACH && self.version < REACH_VERSION {
            return Err(FormatError {
                offset: at,
                what: format!(
                    "a scan's frame in a recording of version {} (they came with version \
                     {REACH_VERSION})",
                    self.version
                ),
            });
        }
        if head[0] == tag::UNWIND && self.version < UNWIND_VERSION {
            return Err(FormatError {
                offset: at,
                what: format!(
                    "an unwind tables' frame in a recording of version {} (they came with \
                     version {UNWIND_VERSION})",
                    self.version
                ),
            });
        }
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
