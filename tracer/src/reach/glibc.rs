//! The C library's heap layout, to cut memory tracer has no block of into the allocator's own
//! chunks.
//!
//! Heap memory between known blocks may hold blocks tracer has not seen (allocated before
//! tracing began, or an instant ago). Followed as one piece, such a gap joins unrelated
//! blocks: a pointer into one makes the whole gap reachable, and the pointers of every other
//! block in it then seem to come from that holder. glibc puts a header before each block
//! (`prev_size`, then `size` with three flag bits), so from the end of a known block's chunk
//! the chunks that follow can be walked to the next known block: each becomes a piece of its
//! own. A walk that meets anything inconsistent leaves the rest of the gap whole.
use super::{HeapBlock, Memory, Region};

/// glibc's chunk header: `prev_size` and `size`, before the block's first byte.
const HEADER: u64 = 16;
/// The smallest chunk on 64-bit glibc, and its alignment.
const MIN_CHUNK: u64 = 32;
const ALIGN: u64 = 16;

/// Reads 8-byte words through a window of `WINDOW` bytes: a walk reads one word per chunk.
struct Window<'a> {
    mem: &'a mut dyn Memory,
    start: u64,
    buf: Vec<u8>,
}

const WINDOW: usize = 64 << 10;

impl Window<'_> {
    fn word(&mut self, at: u64) -> Option<u64> {
        let in_window = at >= self.start && at + 8 <= self.start + self.buf.len() as u64;
        if !in_window {
            self.buf.resize(WINDOW, 0);
            self.start = at;
            if !self.mem.read(at, &mut self.buf) {
                // Near the end of a mapping: the word alone.
                self.buf.resize(8, 0);
                if !self.mem.read(at, &mut self.buf) {
                    self.buf.clear();
                    return None;
                }
            }
        }
        let i = (at - self.start) as usize;
        Some(u64::from_le_bytes(self.buf[i..i + 8].try_into().ok()?))
    }
}

/// The chunk size in a `size` word (without its flag bits), when it can be one.
fn chunk_size(word: u64) -> Option<u64> {
    let size = word & !7;
    (size >= MIN_CHUNK && size.is_multiple_of(ALIGN)).then_some(size)
}

/// `gaps` (address order) cut into glibc's chunks where the walk from the known block before
/// each succeeds: the pieces are the chunks' blocks (header excluded); gaps too small to hold
/// a chunk are left out. `blocks`: the known blocks, sorted by address.
pub fn split_gaps(mem: &mut dyn Memory, blocks: &[HeapBlock], gaps: Vec<Region>) -> Vec<Region> {
    let mut w = Window {
        mem,
        start: 0,
        buf: Vec::new(),
    };
    let mut out = Vec::with_capacity(gaps.len());
    for g in gaps {
        // Too small to hold a chunk: the known block's slack and the next one's header, no
        // block of anyone's. Dropped (not followed): a heap of N known blocks has N of them.
        if g.end - g.start < MIN_CHUNK + HEADER {
            continue;
        }
        // The known block the gap follows.
        let before = blocks
            .partition_point(|b| b.addr < g.start)
            .checked_sub(1)
            .map(|i| blocks[i]);
        match before.and_then(|b| walk(&mut w, b, &g)) {
            Some(pieces) => out.extend(pieces),
            None => out.push(g),
        }
    }
    out
}

/// The chunks from the end of `known`'s chunk to the end of `gap`: their blocks, or None when
/// the walk cannot be trusted.
fn walk(w: &mut Window, known: HeapBlock, gap: &Region) -> Option<Vec<Region>> {
    let own = chunk_size(w.word(known.addr.checked_sub(8)?)?)?;
    // Its chunk covers its block (the usable size may pass the requested one).
    let mut chunk = known.addr - HEADER + own;
    if chunk + HEADER < known.addr + known.size || chunk > gap.end {
        return None;
    }
    let mut pieces = Vec::new();
    // The next known block's header sits just before the gap's end.
    while chunk + HEADER < gap.end {
        let size = chunk_size(w.word(chunk + 8)?)?;
        let block = chunk + HEADER;
        if chunk + size > gap.end - HEADER {
            // Runs past the next known block: the top chunk (memory not handed out yet, or
            // only just), or no chunk at all. The rest stays one piece.
            pieces.push(Region {
                start: block,
                end: gap.end,
            });
            return Some(pieces);
        }
        // A block may use the next chunk's prev_size field.
        pieces.push(Region {
            start: block,
            end: (chunk + size + 8).min(gap.end),
        });
        chunk += size;
    }
    // Landed on the next known block's header, or the gap is the known block's slack.
    (chunk + HEADER == gap.end || pieces.is_empty()).then_some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reach::tests::Words;

    /// A glibc-like heap at 0x1000: chunks of the given sizes, each header written.
    fn heap(sizes: &[u64]) -> (Words, Vec<u64>) {
        let mut m = Words::default();
        let mut at = 0x1000;
        let mut blocks = Vec::new();
        for &s in sizes {
            m.zero(at, s);
            m.set(at + 8, s | 1);
            blocks.push(at + HEADER);
            at += s;
        }
        m.zero(at, 64);
        m.set(at + 8, 0x20000 | 1);
        (m, blocks)
    }

    #[test]
    fn a_gap_between_known_blocks_is_cut_into_its_chunks() {
        let (mut m, b) = heap(&[48, 32, 64, 48]);
        // Known: the first and the last block; the two between are unknown.
        let known = [
            HeapBlock {
                addr: b[0],
                size: 30,
            },
            HeapBlock {
                addr: b[3],
                size: 20,
            },
        ];
        let gap = Region {
            start: b[0] + 30,
            end: b[3],
        };
        let pieces = split_gaps(&mut m, &known, vec![gap]);
        assert_eq!(
            pieces,
            [
                Region {
                    start: b[1],
                    end: b[1] + 32 - HEADER + 8,
                },
                Region {
                    start: b[2],
                    end: b[2] + 64 - HEADER + 8,
                },
            ]
        );
    }

    #[test]
    fn the_top_chunk_and_inconsistent_headers_stay_whole() {
        let (mut m, b) = heap(&[48, 32]);
        let known = [HeapBlock {
            addr: b[0],
            size: 40,
        }];
        // Up to the end of the mapping: the unknown block, then the top chunk.
        let end = b[1] + 32 + 4096;
        let gap = Region {
            start: b[0] + 40,
            end,
        };
        let pieces = split_gaps(&mut m, &known, vec![gap.clone()]);
        assert_eq!(pieces[0].start, b[1]);
        assert_eq!(pieces.last().unwrap().end, end);
        // A broken size field: the gap is left as it is.
        m.set(b[1] - 8, 7);
        assert_eq!(split_gaps(&mut m, &known, vec![gap.clone()]), vec![gap]);
        // No known block before it (the start of a heap): left whole.
        let lone = Region {
            start: 0x800,
            end: 0x900,
        };
        assert_eq!(split_gaps(&mut m, &known, vec![lone.clone()]), vec![lone]);
    }

    /// The newest node of a list, not on record yet, sits in a gap beside a block that a
    /// global of another kind points into. Whole, the gap would make that global the holder
    /// of every known node behind the newest; cut into chunks, the list's own global is.
    #[test]
    fn a_gap_cut_into_chunks_keeps_holders_apart() {
        // Chunks: [known node A][unknown X: interior target][unknown N: newest node][known B]
        let (mut m, b) = heap(&[48, 64, 48, 48]);
        let (a, x, newest, last) = (b[0], b[1], b[2], b[3]);
        // The roots: g_interior (0x100) points inside X, g_list (0x108) to the newest node.
        m.set(0x100, x + 16);
        m.set(0x108, newest);
        // The newest node's next is A.
        m.set(newest, a);
        let known = [
            HeapBlock { addr: a, size: 32 },
            HeapBlock {
                addr: last,
                size: 32,
            },
        ];
        let roots = [Region {
            start: 0x100,
            end: 0x110,
        }];
        let gaps = vec![Region {
            start: a + 32,
            end: last,
        }];
        let holder_of_a = |m: &mut Words, gaps: &[Region]| {
            let o = crate::reach::scan(m, &known, &roots, gaps, false);
            o.root[0].map(|(_, at)| at)
        };
        // Whole, the gap is reached first from g_interior (scanned first), and A through it.
        assert_eq!(holder_of_a(&mut m, &gaps), Some(0x100));
        let cut = split_gaps(&mut m, &known, gaps);
        assert_eq!(holder_of_a(&mut m, &cut), Some(0x108));
    }
}
