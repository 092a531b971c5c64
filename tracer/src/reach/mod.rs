//! Who still holds the live blocks: valgrind's leak check, done from outside on a running
//! process, with the books' live blocks as the heap.
//!
//! From the roots (the writable data of mapped files, the threads' stacks, memory no known
//! block covers), every aligned word that points into a live block marks it: at its start,
//! `Reachable`; only inside it, `Possible` (valgrind's "possibly lost"). Marked blocks are
//! scanned in turn, breadth first, so each block's holder is on a shortest chain from a root.
//! What no root reaches is lost: `Indirect` when another lost block points to it (valgrind's
//! "indirectly lost"), `Unreachable` otherwise ("definitely lost"; in a cycle of lost blocks,
//! the one met first, as valgrind's clique leader). The first word of each block is kept: it
//! names the class of a C++ object (`classes`).
//!
//! This module is the algorithm over any [`Memory`]; reading a live process is `proc`.
use std::collections::VecDeque;

pub mod classes;
pub mod freeze;
pub mod glibc;
pub mod proc;
pub mod summary;

/// Bytes of a process, read by address.
pub trait Memory {
    /// Fills `buf` from `addr`; false when (part of) it cannot be read.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool;

    /// Reads each `(address, length)` of `parts` into `buf`, one after the other (`buf` holds
    /// their lengths' sum): whether each could be read.
    fn read_many(&mut self, parts: &[(u64, usize)], buf: &mut [u8]) -> Vec<bool> {
        let mut at = 0;
        parts
            .iter()
            .map(|&(addr, len)| {
                let ok = self.read(addr, &mut buf[at..at + len]);
                at += len;
                ok
            })
            .collect()
    }
}

/// How a block stands after the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reach {
    /// No root reaches it, and no other lost block points to it: definitely lost.
    Unreachable,
    /// Only other lost blocks point to it.
    Indirect,
    /// Reached only through pointers into its middle.
    Possible,
    /// Reached through a chain of pointers to block starts.
    Reachable,
}

impl Reach {
    /// Every class, in valgrind's order.
    pub const ALL: [Reach; 4] = [
        Reach::Unreachable,
        Reach::Indirect,
        Reach::Possible,
        Reach::Reachable,
    ];
}

/// Who reached a block first (on a shortest chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Nobody,
    /// The word at `at`, in root region `region`.
    Root {
        region: usize,
        at: u64,
    },
    /// Another block (its index).
    Block(usize),
    /// Memory tracer knows no block of (tracing began late): conservatively held.
    Unknown,
}

/// `root_of`'s mark for chains that start in memory no known block covers.
pub const UNKNOWN_ROOT: usize = usize::MAX;

/// Memory scanned for pointers into the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

/// A live block of the heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapBlock {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Per block, in the order given.
    pub reach: Vec<Reach>,
    pub holder: Vec<Holder>,
    /// The block's first word, when it was read.
    pub first_word: Vec<Option<u64>>,
    /// Blocks that could not be read (freed and unmapped meanwhile, in a running target):
    /// their pointers were not followed.
    pub unreadable_blocks: u64,
    /// Root bytes that could not be read (skipped).
    pub unreadable_root_bytes: u64,
    /// Where each block's chain of holders starts: a root region and the word's address
    /// (`UNKNOWN_ROOT` for memory tracer knows no block of), None when lost.
    pub root: Vec<Option<(usize, u64)>>,
}

/// Bytes read at a time: the scan's memory stays bounded whatever the blocks' sizes.
const CHUNK: usize = 1 << 20;

struct Heap<'a> {
    blocks: &'a [HeapBlock],
    lo: u64,
    hi: u64,
}

impl Heap<'_> {
    /// The block `p` points into, and whether at its start.
    fn find(&self, p: u64) -> Option<(usize, bool)> {
        if p < self.lo || p >= self.hi {
            return None;
        }
        let i = self
            .blocks
            .partition_point(|b| b.addr <= p)
            .checked_sub(1)?;
        let b = self.blocks[i];
        if p == b.addr {
            Some((i, true))
        } else if p < b.addr + b.size {
            Some((i, false))
        } else {
            None
        }
    }
}

/// Calls `f(address, word)` for every aligned word of `[start, end)`; false when part of it
/// could not be read (the rest still is). `first` gets the first word when it was read.
fn words(
    mem: &mut dyn Memory,
    start: u64,
    end: u64,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(u64, u64),
) -> (bool, u64) {
    let mut all = true;
    let mut unread = 0;
    let mut at = start.next_multiple_of(8);
    while at + 8 <= end {
        let n = ((end - at) as usize).min(CHUNK) & !7;
        buf.resize(n, 0);
        if mem.read(at, buf) {
            for (k, w) in buf.chunks_exact(8).enumerate() {
                f(at + 8 * k as u64, u64::from_le_bytes(w.try_into().unwrap()));
            }
        } else {
            all = false;
            unread += n as u64;
        }
        at += n as u64;
    }
    (all, unread)
}

/// Blocks read in one system call at most, and their bytes at most.
const BATCH_BLOCKS: usize = 512;

/// Blocks up to this size met alone are read through [`ReadAhead`].
const AHEAD_BLOCK: usize = 4096;

/// Memory read around a block met alone, for the blocks near it that come next (a list's
/// nodes, allocated one after the other, lie side by side). The window doubles while it
/// serves many blocks and halves while it serves few, down to none: a pattern without
/// neighbours costs a few wasted reads, then reads each block alone.
struct ReadAhead {
    start: u64,
    buf: Vec<u8>,
    /// The next window's size (0: reading ahead does not pay).
    size: usize,
    /// Blocks the current window served.
    served: u32,
    /// Where the last window was read for.
    last: Option<u64>,
}

const AHEAD_MIN: usize = 16 << 10;
const AHEAD_MAX: usize = 1 << 20;

impl ReadAhead {
    fn new() -> ReadAhead {
        ReadAhead {
            start: 0,
            buf: Vec::new(),
            size: 64 << 10,
            served: 0,
            last: None,
        }
    }

    /// Reads `out.len()` bytes at `at`, from the window when it holds them.
    fn read(&mut self, mem: &mut dyn Memory, at: u64, out: &mut [u8]) -> bool {
        let end = at + out.len() as u64;
        if at >= self.start && end <= self.start + self.buf.len() as u64 {
            let i = (at - self.start) as usize;
            out.copy_from_slice(&self.buf[i..i + out.len()]);
            self.served += 1;
            return true;
        }
        // A new window: sized by how the last one did.
        if !self.buf.is_empty() {
            if self.served >= 8 {
                self.size = (self.size * 2).min(AHEAD_MAX);
            } else if self.served < 2 {
                self.size /= 2;
                if self.size < AHEAD_MIN {
                    self.size = 0;
                }
            }
        }
        self.buf.clear();
        self.served = 0;
        if self.size == 0 {
            return mem.read(at, out);
        }
        // Ahead of the way the blocks go (a list met from its newest node goes down), centred
        // the first time; where that runs past its mapping, smaller, down to a page.
        let down = self.last.map(|last| at < last);
        self.last = Some(at);
        let mut size = self.size as u64;
        while size >= 4096 {
            let start = match down {
                Some(true) => end.next_multiple_of(4096).saturating_sub(size),
                Some(false) => at & !4095,
                None => at.saturating_sub(size / 2) & !4095,
            };
            if start <= at && start + size >= end {
                self.buf.resize(size as usize, 0);
                if mem.read(start, &mut self.buf) {
                    self.start = start;
                    let i = (at - start) as usize;
                    out.copy_from_slice(&self.buf[i..i + out.len()]);
                    self.served = 1;
                    return true;
                }
            }
            size /= 2;
        }
        // No window fits: the block alone, and smaller windows from now on.
        self.buf.clear();
        self.size /= 2;
        if self.size < AHEAD_MIN {
            self.size = 0;
        }
        mem.read(at, out)
    }
}

/// The next blocks of the queue to read together: up to [`BATCH_BLOCKS`] of them and
/// [`CHUNK`] bytes, or one bigger block alone.
fn take_batch(queue: &mut VecDeque<usize>, blocks: &[HeapBlock]) -> Vec<usize> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(&i) = queue.front() {
        let len = word_range(blocks[i]).1;
        if !batch.is_empty() && (batch.len() == BATCH_BLOCKS || bytes + len > CHUNK) {
            break;
        }
        queue.pop_front();
        batch.push(i);
        bytes += len;
        if bytes > CHUNK {
            break;
        }
    }
    batch
}

/// The aligned words of a block: where the first is, and their bytes.
fn word_range(b: HeapBlock) -> (u64, usize) {
    let at = b.addr.next_multiple_of(8);
    let end = b.addr + b.size;
    (at, (end.saturating_sub(at) & !7) as usize)
}

/// Scans `roots` and the heap `blocks` (sorted by address, not overlapping).
///
/// `unknown`: heap memory no known block covers. It may hold blocks tracer has not seen
/// (allocated before tracing began, or an instant ago, their events not taken in yet): a
/// pointer into it is followed through it, as if to a block's start. With `unknown_roots`,
/// what of it nothing reaches is a root too (conservatively: tracing began late).
pub fn scan(
    mem: &mut dyn Memory,
    blocks: &[HeapBlock],
    roots: &[Region],
    unknown: &[Region],
    unknown_roots: bool,
) -> Outcome {
    if unknown.iter().all(|r| r.end <= r.start) {
        // Known blocks only: their own order, no second copy of the heap.
        let mut o = scan_heap(mem, blocks, &vec![false; blocks.len()], roots, false);
        o.root = root_of(&o.holder);
        return o;
    }
    // Known blocks and unknown memory in one address order.
    let mut all: Vec<(HeapBlock, Option<usize>)> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, Some(i)))
        .chain(unknown.iter().filter(|r| r.end > r.start).map(|r| {
            (
                HeapBlock {
                    addr: r.start,
                    size: r.end - r.start,
                },
                None,
            )
        }))
        .collect();
    all.sort_by_key(|(b, _)| b.addr);
    let heap: Vec<HeapBlock> = all.iter().map(|(b, _)| *b).collect();
    let weak: Vec<bool> = all.iter().map(|(_, i)| i.is_none()).collect();
    let o = scan_heap(mem, &heap, &weak, roots, unknown_roots);
    let root = root_of(&o.holder);
    let mut out = Outcome {
        reach: vec![Reach::Unreachable; blocks.len()],
        holder: vec![Holder::Nobody; blocks.len()],
        first_word: vec![None; blocks.len()],
        root: vec![None; blocks.len()],
        unreadable_blocks: o.unreadable_blocks,
        unreadable_root_bytes: o.unreadable_root_bytes,
    };
    for (p, (_, orig)) in all.iter().enumerate() {
        let Some(i) = *orig else { continue };
        out.reach[i] = o.reach[p];
        out.first_word[i] = o.first_word[p];
        out.root[i] = root[p];
        out.holder[i] = match o.holder[p] {
            Holder::Block(q) => all[q].1.map_or(Holder::Unknown, Holder::Block),
            h => h,
        };
    }
    out
}

/// [`scan`] over one address-ordered heap; `weak` marks unknown memory.
fn scan_heap(
    mem: &mut dyn Memory,
    blocks: &[HeapBlock],
    weak: &[bool],
    roots: &[Region],
    weak_roots: bool,
) -> Outcome {
    debug_assert!(blocks.windows(2).all(|w| w[0].addr < w[1].addr));
    let n = blocks.len();
    let heap = Heap {
        blocks,
        lo: blocks.first().map_or(0, |b| b.addr),
        hi: blocks
            .iter()
            .map(|b| b.addr + b.size.max(1))
            .max()
            .unwrap_or(0),
    };
    // 0: not reached, 1: possible, 2: reachable.
    let mut state = vec![0u8; n];
    let mut out = Outcome {
        reach: Vec::new(),
        holder: vec![Holder::Nobody; n],
        first_word: vec![None; n],
        ..Outcome::default()
    };
    let mut queue = VecDeque::new();
    let mut buf = Vec::new();
    let visit = |p: u64,
                 from: Holder,
                 strong: bool,
                 state: &mut [u8],
                 holder: &mut [Holder],
                 queue: &mut VecDeque<usize>| {
        if let Some((i, start)) = heap.find(p) {
            let new = if strong && (start || weak[i]) { 2 } else { 1 };
            if new > state[i] {
                state[i] = new;
                holder[i] = from;
                queue.push_back(i);
            }
        }
    };
    for (r, region) in roots.iter().enumerate() {
        let (_, unread) = words(mem, region.start, region.end, &mut buf, |at, w| {
            visit(
                w,
                Holder::Root { region: r, at },
                true,
                &mut state,
                &mut out.holder,
                &mut queue,
            )
        });
        out.unreadable_root_bytes += unread;
    }
    let mut scanned = vec![false; n];
    let mut ahead = ReadAhead::new();
    let mut phase_two = !weak_roots;
    loop {
        while !queue.is_empty() {
            // Blocks are read a batch at a time (one system call for many small blocks), then
            // each is followed in queue order, as if read one by one.
            let batch = take_batch(&mut queue, blocks);
            let ranges: Vec<(u64, usize)> = batch.iter().map(|&i| word_range(blocks[i])).collect();
            let big = ranges.iter().any(|r| r.1 > CHUNK);
            let read = if big {
                Vec::new()
            } else {
                buf.resize(ranges.iter().map(|r| r.1).sum(), 0);
                match ranges[..] {
                    // One small block at a time (a list, followed node after node): its
                    // neighbours are likely next, so memory around it is read ahead.
                    [(at, len)] if len <= AHEAD_BLOCK => vec![ahead.read(mem, at, &mut buf[..len])],
                    _ => mem.read_many(&ranges, &mut buf),
                }
            };
            let mut offset = 0;
            for (k, &i) in batch.iter().enumerate() {
                // Upgraded from possible to reachable: its children may be upgraded too.
                let strong = state[i] == 2;
                let b = blocks[i];
                let first = &mut out.first_word[i];
                let holder = &mut out.holder;
                let mut follow = |at: u64, w: u64| {
                    if at == b.addr {
                        *first = Some(w);
                    }
                    visit(w, Holder::Block(i), strong, &mut state, holder, &mut queue);
                };
                let ok = if big {
                    // One block bigger than a chunk: read a chunk at a time, each word followed
                    // as it is read, so memory stays one chunk whatever the block's size.
                    let mut own = Vec::new();
                    words(mem, b.addr, b.addr + b.size, &mut own, follow).0
                } else {
                    let (at, len) = ranges[k];
                    if read[k] {
                        for (j, w) in buf[offset..offset + len].chunks_exact(8).enumerate() {
                            follow(at + 8 * j as u64, u64::from_le_bytes(w.try_into().unwrap()));
                        }
                    }
                    offset += len;
                    read[k]
                };
                if !ok && !scanned[i] {
                    out.unreadable_blocks += 1;
                }
                scanned[i] = true;
            }
        }
        if phase_two {
            break;
        }
        phase_two = true;
        // Unknown memory nothing reached: held, conservatively.
        for i in 0..n {
            if weak[i] && state[i] == 0 {
                state[i] = 2;
                out.holder[i] = Holder::Unknown;
                queue.push_back(i);
            }
        }
    }
    // What no root reached: the lost blocks, led by the first of each group met.
    let mut lost_seen = vec![false; n];
    let mut indirect = vec![false; n];
    let mut leader_of = vec![usize::MAX; n];
    for i in 0..n {
        if state[i] != 0 || lost_seen[i] || weak[i] {
            continue;
        }
        lost_seen[i] = true;
        leader_of[i] = i;
        let mut stack = vec![i];
        while let Some(k) = stack.pop() {
            let b = blocks[k];
            let first = &mut out.first_word[k];
            let holder = &mut out.holder;
            // Each word is followed as it is read, as in the marking above.
            let (ok, _) = words(mem, b.addr, b.addr + b.size, &mut buf, |at, w| {
                if at == b.addr {
                    *first = Some(w);
                }
                let Some((j, _)) = heap.find(w) else { return };
                if state[j] != 0 || weak[j] || j == i || j == k {
                    return;
                }
                if !lost_seen[j] {
                    lost_seen[j] = true;
                    indirect[j] = true;
                    leader_of[j] = i;
                    holder[j] = Holder::Block(k);
                    stack.push(j);
                } else if leader_of[j] == j {
                    // An earlier group's leader is pointed to from this group: it is
                    // indirectly lost too.
                    indirect[j] = true;
                    leader_of[j] = i;
                    holder[j] = Holder::Block(k);
                }
            });
            if !ok {
                out.unreadable_blocks += 1;
            }
        }
    }
    out.reach = (0..n)
        .map(|i| match state[i] {
            2 => Reach::Reachable,
            1 => Reach::Possible,
            _ if indirect[i] => Reach::Indirect,
            _ => Reach::Unreachable,
        })
        .collect();
    out
}

/// What tracer knows of a process's blocks when it scans it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Traced since its start: every block it allocated went through the probes.
    pub since_start: bool,
    /// Stopped, every event from before the stop taken in: the books are its heap as it is.
    pub settled: bool,
    /// Its heap is the C library's: chunk headers give the bounds of blocks not on record.
    pub glibc_heap: bool,
}

/// Scans a live process whose heap is `blocks` (address, and the site it belongs to, sorted
/// by address): per site, what the scan found. None when its memory map cannot be read (it
/// is gone).
///
/// Heap memory no known block covers may hold blocks not seen yet (allocated before tracing
/// began, or whose events are still on their way): it is followed, and a root too when
/// tracing began late. Traced since its start and settled, there are none: that memory is
/// the allocator's own (free chunks and their stale contents), and it is not followed, as
/// valgrind follows no freed memory.
///
/// `frozen`: the process held still (`--stop-for-scan`): its threads' stack pointers and
/// registers are exact, and the registers are roots too.
pub fn process(
    pid: u32,
    blocks: &[(u64, summary::Owned)],
    known: Known,
    frozen: Option<&freeze::Stopped>,
) -> Option<summary::ProcessScan> {
    let began = std::time::Instant::now();
    let heap: Vec<HeapBlock> = blocks
        .iter()
        .map(|(addr, o)| HeapBlock {
            addr: *addr,
            size: o.size,
        })
        .collect();
    let regs = frozen.map(|f| f.regs.as_slice()).unwrap_or_default();
    let mut roots = proc::roots(pid, &heap, regs)?;
    let mut mem = proc::ProcMemory::new(pid).with_registers(regs);
    // Nothing reads the gaps after this: taken, not copied (one per block, attached late).
    let gaps = std::mem::take(&mut roots.unknown);
    let unknown = if known.since_start && known.settled {
        Vec::new()
    } else if known.glibc_heap {
        glibc::split_gaps(&mut mem, &heap, gaps)
    } else {
        gaps
    };
    let outcome = scan(
        &mut mem,
        &heap,
        &roots.regions,
        &unknown,
        !known.since_start,
    );
    let owned: Vec<summary::Owned> = blocks.iter().map(|(_, o)| *o).collect();
    let mut names = classes::Names::new(roots.files.clone());
    let sites = summary::by_site(pid, &owned, &outcome, &roots, &mut names)
        .into_iter()
        .collect();
    let stats = summary::ScanStats {
        how: match (frozen, known.settled) {
            (Some(_), _) => summary::ScanHow::Stopped,
            (None, true) => summary::ScanHow::AtExit,
            (None, false) => summary::ScanHow::Running,
        },
        bytes: mem.read_bytes,
        micros: began.elapsed().as_micros() as u64,
        pause_micros: frozen.map_or(0, |f| f.since.elapsed().as_micros() as u64),
        unreadable_blocks: outcome.unreadable_blocks,
        unreadable_root_bytes: outcome.unreadable_root_bytes,
    };
    Some(summary::ProcessScan { sites, stats })
}

/// The root region each block's chain of holders starts at (None: lost, or reached only
/// from lost blocks).
pub fn root_of(holder: &[Holder]) -> Vec<Option<(usize, u64)>> {
    const UNKNOWN: Option<Option<(usize, u64)>> = None;
    let mut memo = vec![UNKNOWN; holder.len()];
    let mut path = Vec::new();
    for i in 0..holder.len() {
        let mut k = i;
        let found = loop {
            if let Some(m) = memo[k] {
                break m;
            }
            match holder[k] {
                Holder::Nobody => break None,
                Holder::Unknown => break Some((UNKNOWN_ROOT, 0)),
                Holder::Root { region, at } => break Some((region, at)),
                Holder::Block(p) => {
                    // A holder chain is a tree from the roots; a cycle (lost blocks) holds
                    // nothing up.
                    if path.len() > holder.len() {
                        break None;
                    }
                    path.push(k);
                    k = p;
                }
            }
        };
        memo[k] = Some(found);
        for p in path.drain(..) {
            memo[p] = Some(found);
        }
        memo[i] = Some(found);
    }
    memo.into_iter().map(|m| m.flatten()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Memory made of words at addresses; anything else is unreadable.
    #[derive(Default)]
    pub struct Words(pub BTreeMap<u64, u64>);

    impl Words {
        pub fn set(&mut self, at: u64, w: u64) {
            self.0.insert(at, w);
        }
        /// A zeroed region.
        pub fn zero(&mut self, start: u64, len: u64) {
            for a in (start..start + len).step_by(8) {
                self.0.entry(a).or_insert(0);
            }
        }
    }

    impl Memory for Words {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            for (k, c) in buf.chunks_mut(8).enumerate() {
                match self.0.get(&(addr + 8 * k as u64)) {
                    Some(w) => c.copy_from_slice(&w.to_le_bytes()[..c.len()]),
                    None => return false,
                }
            }
            true
        }
    }

    const GLOBALS: u64 = 0x1000;
    const HEAP: u64 = 0x10_0000;

    /// holders.c in miniature: a global list of two nodes, an interior pointer, a dropped
    /// block, a bag holding the only pointer to its child, and a cycle of two lost blocks.
    fn holders() -> (Words, Vec<HeapBlock>, Vec<Region>) {
        let mut m = Words::default();
        m.zero(GLOBALS, 64);
        let b = |i: u64| HEAP + i * 0x100;
        let blocks: Vec<HeapBlock> = (0..8)
            .map(|i| HeapBlock {
                addr: b(i),
                size: 64,
            })
            .collect();
        for x in &blocks {
            m.zero(x.addr, x.size);
        }
        // 0 ← g_list, 0 → 1 (list nodes)
        m.set(GLOBALS, b(0));
        m.set(b(0), b(1));
        // 2: only an interior pointer from a global
        m.set(GLOBALS + 8, b(2) + 16);
        // 3: dropped
        // 4 → 5: a lost bag and its child
        m.set(b(4) + 8, b(5));
        // 6 ↔ 7: a lost cycle
        m.set(b(6), b(7));
        m.set(b(7), b(6));
        // 2 (possible) → 3? no: 2 holds nothing.
        let roots = vec![Region {
            start: GLOBALS,
            end: GLOBALS + 64,
        }];
        (m, blocks, roots)
    }

    /// Memory that counts the reads made of it.
    struct Counted<'a>(&'a mut Words, u32);

    impl Memory for Counted<'_> {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> bool {
            self.1 += 1;
            self.0.read(addr, buf)
        }
    }

    #[test]
    fn a_list_read_ahead_takes_few_reads_and_a_scattered_one_reads_blocks_alone() {
        let mut m = Words::default();
        m.zero(0x10_0000, 1 << 20);
        let mut c = Counted(&mut m, 0);
        let mut ahead = ReadAhead::new();
        let mut out = [0u8; 64];
        // 1,000 neighbours, from the top down as a list's nodes are met.
        for k in (0..1000u64).rev() {
            assert!(ahead.read(&mut c, 0x10_0000 + 64 * k, &mut out));
        }
        assert!(c.1 < 20, "{} reads", c.1);
        // Blocks far apart: after a few windows that serve one block each, one read each.
        let mut far = Words::default();
        for k in 0..200u64 {
            far.zero(k << 32, 64);
        }
        let mut c = Counted(&mut far, 0);
        let mut ahead = ReadAhead::new();
        for k in 0..200u64 {
            assert!(ahead.read(&mut c, k << 32, &mut out));
        }
        // Windows tried and refused for each of the first few, then one read each.
        assert!(c.1 <= 200 + 20, "{} reads", c.1);
        assert_eq!(ahead.size, 0);
    }

    #[test]
    fn each_block_gets_valgrinds_class() {
        let (mut m, blocks, roots) = holders();
        let o = scan(&mut m, &blocks, &roots, &[], false);
        use Reach::*;
        assert_eq!(
            o.reach,
            [
                Reachable,
                Reachable,
                Possible,
                Unreachable,
                Unreachable,
                Indirect,
                Unreachable,
                Indirect
            ]
        );
        assert_eq!(o.unreadable_blocks, 0);
        assert_eq!(o.unreadable_root_bytes, 0);
    }

    #[test]
    fn holders_lead_back_to_the_root_word() {
        let (mut m, blocks, roots) = holders();
        let o = scan(&mut m, &blocks, &roots, &[], false);
        assert_eq!(
            o.holder[0],
            Holder::Root {
                region: 0,
                at: GLOBALS
            }
        );
        assert_eq!(o.holder[1], Holder::Block(0));
        let roots_of = &o.root;
        assert_eq!(roots_of[1], Some((0, GLOBALS)));
        assert_eq!(roots_of[2], Some((0, GLOBALS + 8)));
        assert_eq!(roots_of[3], None);
        assert_eq!(roots_of[5], None, "held by a lost block only");
    }

    #[test]
    fn a_possible_block_passes_on_only_possible() {
        let (mut m, blocks, roots) = holders();
        // The interior-pointed block 2 points at 3's start: 3 is possible, not reachable.
        m.set(blocks[2].addr + 8, blocks[3].addr);
        let o = scan(&mut m, &blocks, &roots, &[], false);
        assert_eq!(o.reach[3], Reach::Possible);
        // And once 2 is also reached at its start, both become reachable.
        m.set(GLOBALS + 16, blocks[2].addr);
        let o = scan(&mut m, &blocks, &roots, &[], false);
        assert_eq!(
            (o.reach[2], o.reach[3]),
            (Reach::Reachable, Reach::Reachable)
        );
    }

    #[test]
    fn a_lost_leader_pointed_to_by_a_later_lost_block_is_indirect() {
        let (mut m, blocks, roots) = holders();
        // Block 7 (lost) also points at 3, met first as a leader: 3 becomes indirect.
        m.set(blocks[7].addr + 8, blocks[3].addr);
        let o = scan(&mut m, &blocks, &roots, &[], false);
        assert_eq!(o.reach[3], Reach::Indirect);
        assert_eq!(o.reach[6], Reach::Unreachable);
    }

    #[test]
    fn unreadable_memory_is_counted_and_skipped() {
        let (mut m, blocks, mut roots) = holders();
        roots.push(Region {
            start: 0x9000,
            end: 0x9000 + 4096,
        });
        m.0.retain(|&a, _| !(blocks[1].addr..blocks[1].addr + 64).contains(&a));
        let o = scan(&mut m, &blocks, &roots, &[], false);
        assert_eq!(o.unreadable_root_bytes, 4096);
        assert_eq!(o.unreadable_blocks, 1);
        assert_eq!(o.reach[1], Reach::Reachable, "reached, though not read");
        assert_eq!(o.first_word[1], None);
        assert_eq!(o.first_word[0], Some(blocks[1].addr));
    }

    #[test]
    fn chains_pass_through_memory_of_blocks_not_seen() {
        let (mut m, blocks, roots) = holders();
        // An unseen block (a list node allocated an instant ago) between the global and the
        // known node 0: the global points into it, it points to 0.
        let unseen = HEAP + 0x2000;
        m.zero(unseen, 64);
        m.set(GLOBALS, unseen + 16);
        m.set(unseen + 24, blocks[0].addr);
        let gap = [Region {
            start: unseen,
            end: unseen + 64,
        }];
        let o = scan(&mut m, &blocks, &roots, &gap, false);
        assert_eq!(
            (o.reach[0], o.reach[1]),
            (Reach::Reachable, Reach::Reachable)
        );
        assert_eq!(
            o.root[1],
            Some((0, GLOBALS)),
            "held by the global, through it"
        );
        // Reached from nothing, unknown memory is a root only when tracing began late.
        m.set(GLOBALS, 0);
        let o = scan(&mut m, &blocks, &roots, &gap, false);
        assert_eq!(o.reach[0], Reach::Unreachable);
        let o = scan(&mut m, &blocks, &roots, &gap, true);
        assert_eq!(o.reach[0], Reach::Reachable);
        assert_eq!(o.root[0], Some((UNKNOWN_ROOT, 0)));
        assert_eq!(o.holder[0], Holder::Unknown);
    }

    #[test]
    fn a_long_list_is_marked_without_recursion() {
        let mut m = Words::default();
        let n = 100_000u64;
        let blocks: Vec<HeapBlock> = (0..n)
            .map(|i| HeapBlock {
                addr: HEAP + i * 32,
                size: 32,
            })
            .collect();
        for (i, b) in blocks.iter().enumerate() {
            m.zero(b.addr, 32);
            if i + 1 < blocks.len() {
                m.set(b.addr, blocks[i + 1].addr);
            }
        }
        m.zero(GLOBALS, 8);
        m.set(GLOBALS, HEAP);
        let o = scan(
            &mut m,
            &blocks,
            &[Region {
                start: GLOBALS,
                end: GLOBALS + 8,
            }],
            &[],
            false,
        );
        assert!(o.reach.iter().all(|&r| r == Reach::Reachable));
        assert!(o.root.iter().all(|r| *r == Some((0, GLOBALS))));
    }
}
