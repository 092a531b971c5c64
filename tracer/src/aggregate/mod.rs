//! The books: every live block per process, call sites with their totals, snapshots and diffs.
//!
//! Plain synchronous code that owns all state: no kernel, no locks, no I/O, so every rule here
//! is unit-tested. Blocks are keyed by (process, address) in an ordered map so that "which live
//! block holds address X" is one range lookup.
use std::collections::{BTreeMap, BTreeSet};

/// Mappings are whole pages.
const PAGE: u64 = 4096;

pub mod books;
mod sites;
pub mod verdict;

use crate::collector::{Alloc, Event};
use sites::SiteTable;

/// Identifies a call site: one process, one user stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    pub pid: u32,
    /// Stack id from the collector; all allocations whose stack was not taken share
    /// [`SiteKey::NO_STACK`].
    pub stack_id: i32,
}

impl SiteKey {
    pub const NO_STACK: i32 = -1;
}

/// Index of a site in [`Ledger::sites`].
pub type SiteId = usize;

/// A call site and what it has done since tracing began.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Site {
    pub key: Option<SiteKey>,
    /// Return addresses, innermost first: the allocator's caller, its caller, ... (the
    /// allocator itself is not included). Empty when the stack was not available.
    pub frames: Vec<u64>,
    pub counts: Counts,
    /// Its blocks are memory mappings the program made (mmap), not heap blocks.
    pub mapping: bool,
    /// Its process exited and its books were closed (a new process with the same pid gets new
    /// sites).
    pub retired: bool,
}

/// What a site (or the whole process) has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Live objects (weighted: a sampled block stands for the calls it estimates).
    pub live_objects: u64,
    pub live_bytes: u64,
    /// Live blocks recorded, and blocks recorded in all (unweighted: the samples behind an
    /// estimate).
    pub live_blocks: u64,
    pub blocks: u64,
    /// Allocations made (weighted), and their bytes.
    pub allocs: u64,
    pub alloc_bytes: u64,
    /// Blocks of this site that were freed (or moved away by realloc).
    pub frees: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    pub site: SiteId,
    pub ts_ns: u64,
    pub weight: u64,
}

/// Things the books noticed that are not errors but say how complete they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStats {
    pub alloc_events: u64,
    pub free_events: u64,
    /// Mappings made (or moved by mremap) and munmap calls.
    pub map_events: u64,
    pub unmap_events: u64,
    /// Frees (or realloc inputs) of blocks allocated before tracing began, or whose allocation
    /// was lost.
    pub unknown_frees: u64,
    /// An allocation returned an address that was still live in the books: its free was lost.
    pub reused_live: u64,
    /// Heaps destroyed or deleted (mimalloc), and the live blocks destroying them freed.
    pub heap_releases: u64,
    pub heap_freed: u64,
}

#[derive(Default)]
pub struct Ledger {
    live: BTreeMap<(u32, u64), Block>,
    /// The starts of the live blocks that are mappings (they never overlap one another, so a
    /// munmap finds the ones it touches by walking down from its end).
    mapped: BTreeSet<(u32, u64)>,
    /// Blocks allocated in a heap the caller named (mimalloc's `mi_heap_*`), which can be
    /// destroyed whole: (process, heap) → its live blocks, and each block's heap.
    heaps: BTreeMap<(u32, u64), BTreeSet<u64>>,
    heap_of: BTreeMap<(u32, u64), u64>,
    sites: SiteTable,
    pub stats: LedgerStats,
}

/// Per-site counts at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub ts_ns: u64,
    pub sites: Vec<Counts>,
}

impl Snapshot {
    /// Follows a [`Ledger::compact`]: the counts of forgotten sites go, the others move to
    /// their new ids.
    pub fn remap(&mut self, map: &[Option<SiteId>]) {
        self.sites = remap_counts(&self.sites, map);
    }
}

/// Per-site counts (indexed by site id) after a [`Ledger::compact`].
pub fn remap_counts(counts: &[Counts], map: &[Option<SiteId>]) -> Vec<Counts> {
    counts
        .iter()
        .enumerate()
        .filter(|(i, _)| map.get(*i).copied().flatten().is_some())
        .map(|(_, c)| *c)
        .collect()
}

/// Change of one site between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteDelta {
    pub site: SiteId,
    pub now: Counts,
    pub delta_objects: i64,
    pub delta_bytes: i64,
    pub delta_allocs: u64,
    pub delta_frees: u64,
}

/// Removes a process's entries from a map keyed by (process, address).
fn remove_process<V>(m: &mut BTreeMap<(u32, u64), V>, pid: u32) {
    let keys: Vec<(u32, u64)> = m
        .range((pid, 0)..=(pid, u64::MAX))
        .map(|(k, _)| *k)
        .collect();
    for k in keys {
        m.remove(&k);
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn sites(&self) -> &[Site] {
        self.sites.all()
    }

    pub fn site(&self, id: SiteId) -> &Site {
        self.sites.get(id)
    }

    /// The site of `key`, if it was seen.
    pub fn site_id(&self, key: &SiteKey) -> Option<SiteId> {
        self.sites.id_of(key)
    }

    /// Applies one event. `frames_of` is asked for the frames of a stack seen the first time.
    pub fn apply(&mut self, ev: &Event, frames_of: impl FnOnce(&SiteKey) -> Vec<u64>) {
        match ev {
            Event::Free { pid, addr, .. } => {
                self.stats.free_events += 1;
                if !self.release(*pid, *addr) {
                    self.stats.unknown_frees += 1;
                }
            }
            Event::Alloc(a) => self.alloc(a, frames_of),
            Event::Munmap { pid, addr, len, .. } => self.unmap(*pid, *addr, *len),
            Event::HeapRelease {
                pid, heap, destroy, ..
            } => self.release_heap(*pid, *heap, *destroy),
            // The engine closes the old program's books (it knows what to report of them).
            Event::Exec { .. } | Event::Fork { .. } => {}
        }
    }

    fn alloc(&mut self, a: &Alloc, frames_of: impl FnOnce(&SiteKey) -> Vec<u64>) {
        if a.func.is_mapping() {
            self.stats.map_events += 1;
        } else {
            self.stats.alloc_events += 1;
        }
        // realloc: the input block is gone once the call succeeded (moved or released).
        if a.old_addr != 0 && !self.release(a.pid, a.old_addr) {
            self.stats.unknown_frees += 1;
        }
        if a.addr == 0 {
            return; // realloc(p, 0): released only
        }
        let stack_id = if a.stack_id < 0 {
            SiteKey::NO_STACK
        } else {
            a.stack_id
        };
        let mapping = a.func.is_mapping();
        let site = self.sites.intern(
            SiteKey {
                pid: a.pid,
                stack_id,
            },
            mapping,
            frames_of,
        );
        if self.release(a.pid, a.addr) {
            // The allocator handed out an address we still hold as live: its free was lost.
            self.stats.reused_live += 1;
        }
        let weight = a.weight.max(1);
        // A mapping holds whole pages, whatever length was asked for.
        let size = if mapping {
            a.size.div_ceil(PAGE) * PAGE
        } else {
            a.size
        };
        let c = self.sites.counts_mut(site);
        c.live_objects += weight;
        c.live_bytes += size * weight;
        c.live_blocks += 1;
        c.blocks += 1;
        c.allocs += weight;
        c.alloc_bytes += size * weight;
        self.insert(
            a.pid,
            a.addr,
            Block {
                size,
                site,
                ts_ns: a.ts_ns,
                weight,
            },
        );
        if a.heap != 0 && !mapping {
            self.heaps
                .entry((a.pid, a.heap))
                .or_default()
                .insert(a.addr);
            self.heap_of.insert((a.pid, a.addr), a.heap);
        }
    }

    /// A heap went: destroyed, its blocks are freed with it; deleted, they live on (in the
    /// allocator's default heap). The heap's own block is freed either way.
    fn release_heap(&mut self, pid: u32, heap: u64, destroy: bool) {
        // One free-like record of the kernel's (it counts them with the frees).
        self.stats.free_events += 1;
        self.stats.heap_releases += 1;
        let blocks = self.heaps.remove(&(pid, heap)).unwrap_or_default();
        for addr in blocks {
            self.heap_of.remove(&(pid, addr));
            if destroy && self.release(pid, addr) {
                self.stats.heap_freed += 1;
            }
        }
        // The heap's own block, when the books hold one (a heap made by mi_heap_new; the
        // default heap is no block).
        self.release(pid, heap);
    }

    fn insert(&mut self, pid: u32, addr: u64, b: Block) {
        if self.sites.get(b.site).mapping {
            self.mapped.insert((pid, addr));
        }
        self.live.insert((pid, addr), b);
    }

    /// `munmap(addr, len)`: the mappings in the range go, those it cuts keep what is left of
    /// them (one mapping cut in the middle becomes two). Ranges the books do not hold (an
    /// allocator returning its own mapping) change nothing.
    fn unmap(&mut self, pid: u32, addr: u64, len: u64) {
        self.stats.unmap_events += 1;
        let end = addr.saturating_add(len.div_ceil(PAGE) * PAGE);
        let touched: Vec<u64> = self
            .mapped
            .range(..(pid, end))
            .rev()
            .take_while(|(p, _)| *p == pid)
            .map(|(_, s)| *s)
            .take_while(|s| self.live.get(&(pid, *s)).is_some_and(|b| s + b.size > addr))
            .collect();
        for start in touched {
            let Some(b) = self.live.remove(&(pid, start)) else {
                continue;
            };
            self.mapped.remove(&(pid, start));
            let c = self.sites.counts_mut(b.site);
            c.live_objects -= b.weight;
            c.live_bytes -= b.size * b.weight;
            c.live_blocks -= 1;
            let block_end = start + b.size;
            let left = addr.saturating_sub(start).min(b.size);
            let right = block_end.saturating_sub(end).min(b.size);
            if left == 0 && right == 0 {
                c.frees += b.weight;
            }
            for (at, size) in [(start, left), (end, right)] {
                if size > 0 {
                    let c = self.sites.counts_mut(b.site);
                    c.live_objects += b.weight;
                    c.live_bytes += size * b.weight;
                    c.live_blocks += 1;
                    self.insert(pid, at, Block { size, ..b });
                }
            }
        }
    }

    /// Drops a live block; false when the books did not hold it.
    fn release(&mut self, pid: u32, addr: u64) -> bool {
        match self.live.remove(&(pid, addr)) {
            Some(b) => {
                if self.sites.get(b.site).mapping {
                    self.mapped.remove(&(pid, addr));
                }
                if !self.heap_of.is_empty() {
                    if let Some(heap) = self.heap_of.remove(&(pid, addr)) {
                        if let Some(set) = self.heaps.get_mut(&(pid, heap)) {
                            set.remove(&addr);
                        }
                    }
                }
                let c = self.sites.counts_mut(b.site);
                c.live_objects -= b.weight;
                c.live_bytes -= b.size * b.weight;
                c.live_blocks -= 1;
                c.frees += b.weight;
                true
            }
            None => false,
        }
    }

    /// The live block of `pid` that contains `addr`, with its start address.
    // For naming who points at a leaked block (reading the target's memory): not wired yet.
    #[allow(dead_code)]
    pub fn block_containing(&self, pid: u32, addr: u64) -> Option<(u64, &Block)> {
        let ((p, start), b) = self.live.range(..=(pid, addr)).next_back()?;
        (*p == pid && addr < start + b.size.max(1)).then_some((*start, b))
    }

    /// Live blocks of one process, by address.
    pub fn live_blocks(&self, pid: u32) -> impl Iterator<Item = (u64, &Block)> {
        self.live
            .range((pid, 0)..=(pid, u64::MAX))
            .map(|((_, a), b)| (*a, b))
    }

    /// Closes the books of a process that exited: its live blocks are dropped and its sites
    /// retired (live counts zero, cumulative counts kept), so that a new process given the same
    /// pid starts with books of its own.
    pub fn retire(&mut self, pid: u32) {
        self.retire_all(&[pid]);
    }

    /// [`Ledger::retire`] of several processes.
    pub fn retire_all(&mut self, pids: &[u32]) {
        for &pid in pids {
            let addrs: Vec<u64> = self.live_blocks(pid).map(|(a, _)| a).collect();
            for a in addrs {
                self.live.remove(&(pid, a));
                self.mapped.remove(&(pid, a));
            }
            remove_process(&mut self.heaps, pid);
            remove_process(&mut self.heap_of, pid);
            self.sites.retire(pid);
        }
    }

    /// Every live block: (process, address, block).
    pub fn all_live_blocks(&self) -> impl Iterator<Item = (u32, u64, &Block)> {
        self.live.iter().map(|(&(p, a), b)| (p, a, b))
    }

    /// Totals over every site.
    pub fn totals(&self) -> Counts {
        self.sites.totals(|_| true)
    }

    /// Totals over the sites of memory mappings.
    pub fn mapping_totals(&self) -> Counts {
        self.sites.totals(|s| s.mapping)
    }

    /// Sites of retired processes still held.
    pub fn retired_sites(&self) -> usize {
        self.sites.retired()
    }

    /// Forgets the sites of retired processes (their books are closed and their last numbers
    /// were reported), so that tracing every process on a busy host holds what lives, not
    /// everything that ever ran. Returns each old site id's new one (None: gone); the live
    /// blocks and the index follow, and the caller remaps what else it keeps by site id
    /// ([`Snapshot::remap`]). Kept sites keep their order.
    pub fn compact(&mut self) -> Vec<Option<SiteId>> {
        let map = self.sites.compact();
        for b in self.live.values_mut() {
            // A retired process's blocks went with it (see `retire`).
            b.site = map[b.site].unwrap_or(b.site);
        }
        map
    }

    pub fn snapshot(&self, ts_ns: u64) -> Snapshot {
        self.sites.snapshot(ts_ns)
    }
}

pub(crate) fn add(a: Counts, b: Counts) -> Counts {
    Counts {
        live_objects: a.live_objects + b.live_objects,
        live_bytes: a.live_bytes + b.live_bytes,
        live_blocks: a.live_blocks + b.live_blocks,
        blocks: a.blocks + b.blocks,
        allocs: a.allocs + b.allocs,
        alloc_bytes: a.alloc_bytes + b.alloc_bytes,
        frees: a.frees + b.frees,
    }
}

impl Snapshot {
    /// Per-site change from `prev` to `self`, for every site that allocated or freed anything
    /// in between (sites created after `prev` count from zero).
    pub fn diff(&self, prev: &Snapshot) -> Vec<SiteDelta> {
        let zero = Counts::default();
        self.sites
            .iter()
            .enumerate()
            .filter_map(|(site, now)| {
                let before = prev.sites.get(site).unwrap_or(&zero);
                let d = SiteDelta {
                    site,
                    now: *now,
                    delta_objects: now.live_objects as i64 - before.live_objects as i64,
                    delta_bytes: now.live_bytes as i64 - before.live_bytes as i64,
                    delta_allocs: now.allocs.saturating_sub(before.allocs),
                    delta_frees: now.frees.saturating_sub(before.frees),
                };
                (d.delta_allocs != 0 || d.delta_frees != 0).then_some(d)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::AllocFn;

    use super::*;

    const PID: u32 = 42;

    fn alloc(func: AllocFn, addr: u64, old_addr: u64, size: u64, stack_id: i32) -> Event {
        Event::Alloc(Alloc {
            pid: PID,
            tid: PID,
            ts_ns: 1,
            func,
            addr,
            old_addr,
            size,
            weight: 1,
            stack_id,
            heap: 0,
        })
    }
    fn heap_malloc(heap: u64, addr: u64, size: u64, stack: i32) -> Event {
        match malloc(addr, size, stack) {
            Event::Alloc(a) => Event::Alloc(Alloc { heap, ..a }),
            _ => unreachable!(),
        }
    }
    fn heap_release(heap: u64, destroy: bool) -> Event {
        Event::HeapRelease {
            pid: PID,
            ts_ns: 3,
            heap,
            destroy,
        }
    }
    fn malloc(addr: u64, size: u64, stack: i32) -> Event {
        alloc(AllocFn::Malloc, addr, 0, size, stack)
    }
    fn free(addr: u64) -> Event {
        Event::Free {
            pid: PID,
            ts_ns: 2,
            addr,
        }
    }
    fn frames(k: &SiteKey) -> Vec<u64> {
        vec![0x1000 + k.stack_id as u64, 0x2000]
    }
    fn run(events: &[Event]) -> Ledger {
        let mut l = Ledger::new();
        for e in events {
            l.apply(e, frames);
        }
        l
    }

    #[test]
    fn a_stack_under_a_new_id_is_its_old_site_until_the_process_is_retired() {
        let same = |_: &SiteKey| vec![0x1000, 0x2000];
        let mut l = Ledger::new();
        l.apply(&malloc(0x10, 8, 1), same);
        l.apply(&malloc(0x20, 8, 2), same);
        // A mapping with the same frames is a site of its own.
        l.apply(&alloc(AllocFn::Mmap, 0x9000, 0, 4096, 3), same);
        assert_eq!(l.sites().len(), 2);
        let key = |stack_id| SiteKey { pid: PID, stack_id };
        assert_eq!(l.site_id(&key(1)), l.site_id(&key(2)));
        assert_eq!(l.site(l.site_id(&key(2)).unwrap()).counts.live_objects, 2);
        // A new process with the pid gets sites of its own.
        l.retire(PID);
        l.apply(&malloc(0x10, 8, 4), same);
        assert_eq!(l.sites().len(), 3);
        let map = l.compact();
        assert_eq!(map, [None, None, Some(0)]);
        l.apply(&malloc(0x30, 8, 5), same);
        assert_eq!(l.site_id(&key(5)), Some(0));
        assert_eq!(l.site(0).counts.live_objects, 2);
    }

    #[test]
    fn destroying_a_heap_frees_its_blocks_and_itself_only() {
        const H: u64 = 0x9000;
        let l = run(&[
            malloc(H, 3000, 1), // the heap's own block (mi_heap_new)
            heap_malloc(H, 0x10, 16, 2),
            heap_malloc(H, 0x20, 32, 2),
            heap_malloc(H, 0x30, 64, 2),
            free(0x20),                      // freed before: not freed twice
            heap_malloc(0xa000, 0x40, 8, 3), // another heap
            malloc(0x50, 128, 4),            // the default heap
            heap_release(H, true),
        ]);
        assert_eq!(
            l.live_blocks(PID).map(|(a, _)| a).collect::<Vec<_>>(),
            [0x40, 0x50]
        );
        assert_eq!((l.stats.heap_releases, l.stats.heap_freed), (1, 2));
        assert_eq!(l.stats.unknown_frees, 0);
        let site2 = l
            .site_id(&SiteKey {
                pid: PID,
                stack_id: 2,
            })
            .unwrap();
        assert_eq!(l.site(site2).counts.frees, 3);
        assert_eq!(l.site(site2).counts.live_bytes, 0);
    }

    #[test]
    fn deleting_a_heap_keeps_its_blocks_live_and_untagged() {
        const H: u64 = 0x9000;
        let l = run(&[
            malloc(H, 3000, 1),
            heap_malloc(H, 0x10, 16, 2),
            heap_release(H, false),
            // A new heap at the same address later: destroying it leaves the old block alone.
            malloc(H, 3000, 1),
            heap_malloc(H, 0x30, 64, 2),
            heap_release(H, true),
        ]);
        assert_eq!(
            l.live_blocks(PID).map(|(a, _)| a).collect::<Vec<_>>(),
            [0x10]
        );
        assert_eq!((l.stats.heap_releases, l.stats.heap_freed), (2, 1));
    }

    #[test]
    fn a_block_moved_by_realloc_leaves_its_heap() {
        const H: u64 = 0x9000;
        let mut l = run(&[heap_malloc(H, 0x10, 16, 2)]);
        // Plain realloc: the new block is in the default heap.
        l.apply(&alloc(AllocFn::Realloc, 0x20, 0x10, 32, 3), frames);
        l.apply(&heap_release(H, true), frames);
        assert_eq!(
            l.live_blocks(PID).map(|(a, _)| a).collect::<Vec<_>>(),
            [0x20]
        );
        assert!(l.heaps.is_empty() && l.heap_of.is_empty());
    }

    #[test]
    fn malloc_then_free_leaves_nothing() {
        let l = run(&[malloc(0x10, 64, 1), free(0x10)]);
        assert_eq!(l.totals().live_bytes, 0);
        assert_eq!(l.totals().allocs, 1);
        assert_eq!(l.totals().frees, 1);
        assert_eq!(l.sites()[0].frames, vec![0x1001, 0x2000]);
    }

    #[test]
    fn sites_are_split_by_stack_and_process() {
        let mut l = run(&[malloc(0x10, 64, 1), malloc(0x20, 64, 2), malloc(0x30, 8, 1)]);
        l.apply(
            &Event::Alloc(Alloc {
                pid: PID + 1,
                tid: 1,
                ts_ns: 0,
                func: AllocFn::Malloc,
                addr: 0x10,
                old_addr: 0,
                size: 1,
                weight: 1,
                stack_id: 1,
                heap: 0,
            }),
            frames,
        );
        assert_eq!(l.sites().len(), 3);
        assert_eq!(l.sites()[0].counts.live_bytes, 72);
        assert_eq!(l.sites()[0].counts.live_objects, 2);
        assert_eq!(l.sites()[1].counts.live_bytes, 64);
        // Same address in two processes: two blocks.
        assert_eq!(l.live_blocks(PID).count(), 3);
        assert_eq!(l.live_blocks(PID + 1).count(), 1);
    }

    #[test]
    fn realloc_moves_the_block_to_the_new_site() {
        let l = run(&[
            malloc(0x10, 64, 1),
            alloc(AllocFn::Realloc, 0x80, 0x10, 128, 2),
        ]);
        assert_eq!(l.sites()[0].counts.live_bytes, 0);
        assert_eq!(l.sites()[0].counts.frees, 1);
        assert_eq!(l.sites()[1].counts.live_bytes, 128);
        assert_eq!(l.totals().live_objects, 1);
        assert_eq!(l.stats.unknown_frees, 0);
    }

    #[test]
    fn realloc_in_place_keeps_one_block() {
        let l = run(&[
            malloc(0x10, 64, 1),
            alloc(AllocFn::Realloc, 0x10, 0x10, 96, 1),
            alloc(AllocFn::Realloc, 0x10, 0x10, 128, 1),
        ]);
        assert_eq!(l.totals().live_objects, 1);
        assert_eq!(l.totals().live_bytes, 128);
        assert_eq!(l.stats.reused_live, 0);
    }

    #[test]
    fn realloc_null_is_an_allocation() {
        let l = run(&[alloc(AllocFn::Realloc, 0x10, 0, 32, 1)]);
        assert_eq!(l.totals().live_bytes, 32);
        assert_eq!(l.stats.unknown_frees, 0);
    }

    #[test]
    fn realloc_to_zero_releases_the_block() {
        let l = run(&[malloc(0x10, 64, 1), alloc(AllocFn::Realloc, 0, 0x10, 0, 2)]);
        assert_eq!(l.totals().live_bytes, 0);
        assert_eq!(l.totals().live_objects, 0);
        // No site is created for the release itself.
        assert_eq!(l.sites().len(), 1);
    }

    #[test]
    fn reallocarray_and_the_other_functions_count_like_malloc() {
        let l = run(&[
            alloc(AllocFn::Calloc, 0x10, 0, 400, 1),
            alloc(AllocFn::PosixMemalign, 0x1000, 0, 100, 1),
            alloc(AllocFn::AlignedAlloc, 0x2000, 0, 64, 1),
            alloc(AllocFn::ReallocArray, 0x3000, 0x10, 800, 1),
        ]);
        assert_eq!(l.totals().live_bytes, 100 + 64 + 800);
        assert_eq!(l.totals().live_objects, 3);
    }

    #[test]
    fn unknown_frees_are_counted_not_applied() {
        let l = run(&[free(0x99), malloc(0x10, 8, 1), free(0x10), free(0x10)]);
        assert_eq!(l.stats.unknown_frees, 2);
        assert_eq!(l.totals().live_bytes, 0);
        assert_eq!(l.totals().frees, 1);
    }

    #[test]
    fn an_address_handed_out_twice_means_a_lost_free() {
        let l = run(&[malloc(0x10, 8, 1), malloc(0x10, 16, 2)]);
        assert_eq!(l.stats.reused_live, 1);
        assert_eq!(l.totals().live_objects, 1);
        assert_eq!(l.totals().live_bytes, 16);
    }

    #[test]
    fn allocations_without_a_stack_share_one_site_without_frames() {
        let l = run(&[malloc(0x10, 8, -17), malloc(0x20, 8, -14)]);
        assert_eq!(l.sites().len(), 1);
        assert!(l.sites()[0].frames.is_empty());
        assert_eq!(l.sites()[0].counts.live_objects, 2);
    }

    #[test]
    fn weights_scale_objects_and_bytes() {
        let mut e = malloc(0x10, 8, 1);
        if let Event::Alloc(a) = &mut e {
            a.weight = 10;
        }
        let l = run(&[e, free(0x10)]);
        assert_eq!(l.sites()[0].counts.allocs, 10);
        assert_eq!(l.sites()[0].counts.alloc_bytes, 80);
        assert_eq!(l.sites()[0].counts.frees, 10);
        assert_eq!(l.totals().live_bytes, 0);
    }

    #[test]
    fn finds_the_block_holding_an_address() {
        let l = run(&[malloc(0x100, 64, 1), malloc(0x200, 16, 2)]);
        assert_eq!(l.block_containing(PID, 0x100).unwrap().0, 0x100);
        assert_eq!(l.block_containing(PID, 0x13f).unwrap().0, 0x100);
        assert!(l.block_containing(PID, 0x140).is_none());
        assert_eq!(l.block_containing(PID, 0x20f).unwrap().1.site, 1);
        assert!(l.block_containing(PID, 0x50).is_none());
        assert!(l.block_containing(PID + 1, 0x100).is_none());
    }

    #[test]
    fn diff_reports_changed_sites_only() {
        let mut l = run(&[malloc(0x10, 64, 1), malloc(0x20, 32, 2)]);
        let s1 = l.snapshot(1);
        for e in [
            malloc(0x30, 64, 1),
            malloc(0x40, 64, 1),
            free(0x20),
            malloc(0x50, 10, 3),
        ] {
            l.apply(&e, frames);
        }
        let s2 = l.snapshot(2);
        let d = s2.diff(&s1);
        let by: std::collections::HashMap<_, _> = d.iter().map(|d| (d.site, *d)).collect();
        assert_eq!(by.len(), 3);
        assert_eq!((by[&0].delta_objects, by[&0].delta_bytes), (2, 128));
        assert_eq!((by[&1].delta_objects, by[&1].delta_bytes), (-1, -32));
        assert_eq!(
            (
                by[&2].delta_objects,
                by[&2].delta_bytes,
                by[&2].now.live_bytes
            ),
            (1, 10, 10)
        );
        // Nothing happened since: no rows.
        assert!(l.snapshot(3).diff(&s2).is_empty());
    }

    #[test]
    fn churn_shows_activity_but_no_growth() {
        let mut l = Ledger::new();
        let s1 = l.snapshot(0);
        for i in 0..100u64 {
            l.apply(&malloc(0x1000 + i, 32, 7), frames);
            l.apply(&free(0x1000 + i), frames);
        }
        let d = l.snapshot(1).diff(&s1);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].delta_bytes, d[0].delta_allocs, d[0].delta_frees),
            (0, 100, 100)
        );
    }

    #[test]
    fn a_retired_process_leaves_room_for_a_new_one_with_its_pid() {
        let mut l = run(&[malloc(0x10, 8, 1), malloc(0x20, 8, 1)]);
        let before = l.snapshot(0);
        l.retire(PID);
        assert_eq!(l.totals().live_objects, 0);
        assert!(l.sites()[0].retired);
        assert_eq!(l.live_blocks(PID).count(), 0);
        // the same pid and stack id again: a new site
        l.apply(&malloc(0x10, 16, 1), frames);
        assert_eq!(l.sites().len(), 2);
        assert_eq!(l.sites()[1].counts.live_bytes, 16);
        // diffs across the retirement do not underflow, and show no activity for the old site
        let d = l.snapshot(1).diff(&before);
        assert!(d.iter().all(|d| d.site != 0));
        assert!(d.iter().any(|d| d.site == 1 && d.delta_bytes == 16));
    }

    fn malloc_in(pid: u32, addr: u64, size: u64, stack: i32) -> Event {
        match malloc(addr, size, stack) {
            Event::Alloc(a) => Event::Alloc(Alloc { pid, tid: pid, ..a }),
            _ => unreachable!(),
        }
    }

    #[test]
    fn compacting_forgets_retired_processes_and_keeps_the_rest_exact() {
        let mut l = Ledger::new();
        for pid in 1..=3 {
            for i in 0..4 {
                l.apply(
                    &malloc_in(pid, 0x100 * i + 0x10, 8 * pid as u64, i as i32),
                    frames,
                );
            }
        }
        l.apply(&free(0x999), frames); // an unknown free: stats stay
        let base = l.snapshot(0);
        l.retire(2);
        assert_eq!(l.retired_sites(), 4);
        let live_before: Vec<(u32, u64, u64)> = l
            .all_live_blocks()
            .map(|(p, a, b)| (p, a, l.site(b.site).counts.live_bytes))
            .collect();
        let map = l.compact();
        assert_eq!(l.retired_sites(), 0);
        assert_eq!(l.sites().len(), 8);
        assert_eq!(map.iter().filter(|m| m.is_none()).count(), 4);
        assert!(l.sites().iter().all(|s| s.key.unwrap().pid != 2));
        // Every live block still points at its own site, with the same numbers.
        let live_after: Vec<(u32, u64, u64)> = l
            .all_live_blocks()
            .map(|(p, a, b)| (p, a, l.site(b.site).counts.live_bytes))
            .collect();
        assert_eq!(live_before, live_after);
        for (p, _, b) in l.all_live_blocks() {
            assert_eq!(l.site(b.site).key.unwrap().pid, p);
        }
        // The index follows: the same key finds the same site, and frees land.
        let id = l
            .site_id(&SiteKey {
                pid: 3,
                stack_id: 2,
            })
            .unwrap();
        assert_eq!(
            l.site(id).key.unwrap(),
            SiteKey {
                pid: 3,
                stack_id: 2
            }
        );
        l.apply(
            &Event::Free {
                pid: 3,
                ts_ns: 5,
                addr: 0x210,
            },
            frames,
        );
        assert_eq!(l.site(id).counts.live_objects, 0);
        // A snapshot taken before follows too.
        let mut b = base.clone();
        b.remap(&map);
        assert_eq!(b.sites.len(), 8);
        assert_eq!(
            b.sites[id],
            base.sites[map.iter().position(|m| *m == Some(id)).unwrap()]
        );
        assert_eq!(l.stats.unknown_frees, 1);
    }

    fn munmap(addr: u64, len: u64) -> Event {
        Event::Munmap {
            pid: PID,
            ts_ns: 2,
            addr,
            len,
        }
    }

    const P: u64 = PAGE;

    #[test]
    fn mappings_are_whole_pages_and_their_own_sites() {
        let l = run(&[
            alloc(AllocFn::Mmap, 0x10000, 0, 3000, 5),
            malloc(0x50, 3000, 6),
        ]);
        assert_eq!(l.totals().live_bytes, P + 3000);
        assert_eq!(l.mapping_totals().live_bytes, P);
        assert!(l.sites()[0].mapping && !l.sites()[1].mapping);
        assert_eq!(l.stats.map_events, 1);
        assert_eq!(l.stats.alloc_events, 1);
    }

    #[test]
    fn munmap_removes_cuts_and_splits_mappings() {
        let base = 0x100000;
        // whole
        let l = run(&[alloc(AllocFn::Mmap, base, 0, 2 * P, 5), munmap(base, 2 * P)]);
        assert_eq!(l.totals().live_bytes, 0);
        assert_eq!(l.sites()[0].counts.frees, 1);
        // the middle of five pages: two mappings of one and two pages are left
        let l = run(&[
            alloc(AllocFn::Mmap, base, 0, 5 * P, 5),
            munmap(base + P, 2 * P),
        ]);
        let live: Vec<(u64, u64)> = l.live_blocks(PID).map(|(a, b)| (a, b.size)).collect();
        assert_eq!(live, vec![(base, P), (base + 3 * P, 2 * P)]);
        assert_eq!(l.totals().live_objects, 2);
        assert_eq!(l.totals().live_bytes, 3 * P);
        assert_eq!(l.sites()[0].counts.frees, 0);
        // one range over two mappings, cutting the head of one and the tail of the other; a
        // length that is not a page multiple covers its last page
        let l = run(&[
            alloc(AllocFn::Mmap, base, 0, 2 * P, 5),
            alloc(AllocFn::Mmap, base + 2 * P, 0, 2 * P, 6),
            munmap(base + P, 2 * P - 100),
        ]);
        let live: Vec<(u64, u64)> = l.live_blocks(PID).map(|(a, b)| (a, b.size)).collect();
        assert_eq!(live, vec![(base, P), (base + 3 * P, P)]);
        assert_eq!(l.stats.unmap_events, 1);
    }

    #[test]
    fn munmap_of_what_the_books_do_not_hold_changes_nothing() {
        // an allocator's own mapping (its large blocks are heap blocks, not mappings)
        let l = run(&[
            malloc(0x200010, 1 << 20, 1),
            munmap(0x200000, (1 << 20) + P),
            alloc(AllocFn::Mmap, 0x900000, 0, P, 2),
            munmap(0x800000, P),
        ]);
        assert_eq!(l.totals().live_objects, 2);
        assert_eq!(l.stats.unknown_frees, 0);
        // a heap block's free never touches mappings, and retiring drops both kinds
        let mut l = run(&[alloc(AllocFn::Mmap, 0x900000, 0, P, 2), free(0x900000)]);
        assert_eq!(l.stats.unknown_frees, 0);
        assert_eq!(l.totals().live_objects, 0);
        l.apply(&alloc(AllocFn::Mmap, 0x900000, 0, P, 2), frames);
        l.retire(PID);
        l.apply(&munmap(0x900000, P), frames);
        assert_eq!(l.totals().live_objects, 0);
    }

    #[test]
    fn mremap_moves_a_mapping() {
        let l = run(&[
            alloc(AllocFn::Mmap, 0x100000, 0, P, 5),
            alloc(AllocFn::Mremap, 0x300000, 0x100000, 3 * P, 6),
        ]);
        let live: Vec<(u64, u64)> = l.live_blocks(PID).map(|(a, b)| (a, b.size)).collect();
        assert_eq!(live, vec![(0x300000, 3 * P)]);
        assert_eq!(l.mapping_totals().live_bytes, 3 * P);
        assert_eq!(l.stats.unknown_frees, 0);
        // and a munmap of the new place finds it
        let mut l = l;
        l.apply(&munmap(0x300000, 3 * P), frames);
        assert_eq!(l.totals().live_bytes, 0);
    }
}
