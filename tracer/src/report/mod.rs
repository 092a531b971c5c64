//! The report model and its reporters. A reporter is a pure function from a [`Report`] to a
//! writer; building the model from the books happens in [`build`].
pub mod build;
pub mod json;
pub mod metrics;
mod rows;
pub mod table;
pub mod writer;

use std::collections::BTreeMap;

use serde::Serialize;
use tracer_common::losses::{Fix, LOSSES};

use crate::{
    aggregate::verdict::Assessment,
    reach::summary::{ScanStats, SiteReach, TypeCount},
    symbolize::Frame,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportKind {
    /// Growth over the last interval.
    Interval,
    /// What is still outstanding at the end; deltas count from the start of tracing.
    Final,
    /// What changed between two marks (SIGUSR1 or Enter): what the user's action left behind.
    Mark,
}

/// Live and changed objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Heap blocks and memory mappings together.
    pub live_objects: u64,
    pub live_bytes: u64,
    /// Of which memory mappings the program made itself (mmap).
    pub mmap_live_objects: u64,
    pub mmap_live_bytes: u64,
    pub delta_objects: i64,
    pub delta_bytes: i64,
    /// Allocations and releases (frees, blocks moved by realloc) within the report's window.
    pub allocs: u64,
    pub frees: u64,
}

/// A site's kind of memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Blocks from malloc and its relatives (and C++'s new).
    #[default]
    Heap,
    /// Anonymous mappings made by the program itself (not by its allocator).
    Mmap,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteReport {
    /// The process the site belongs to.
    pub pid: u32,
    /// What its blocks are: heap blocks, or memory mappings the program made itself.
    pub category: Category,
    /// Innermost first; the allocator itself is not included.
    pub frames: Vec<Frame>,
    /// Why the stack ends short of the program's outermost frame (the last frame is then a
    /// `[stack cut]` pseudo-frame). Absent: the walk reached the outermost frame, or the end
    /// of a frame-pointer chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_cut: Option<String>,
    pub live_objects: u64,
    pub live_bytes: u64,
    pub delta_objects: i64,
    pub delta_bytes: i64,
    /// Allocations and frees of this site within the report's window.
    pub allocs: u64,
    pub frees: u64,
    /// The verdict from the site's history and its growth rate.
    #[serde(flatten)]
    pub assessment: Assessment,
    /// What its live blocks are.
    #[serde(flatten)]
    pub objects: LiveObjects,
    /// The classes of its C++ objects at the last scan (none when no block's first word is a
    /// vtable's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<TypeCount>,
    /// Its blocks by reachability, and who holds them, at the last scan (a mark, or the final
    /// report of a process still alive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reachability: Option<SiteReach>,
    /// A `leak` whose blocks were scanned: `unreachable` (lost pointers), or `held by` the
    /// root that keeps most of them (`held by g_list in server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_detail: Option<String>,
}

/// The live blocks of one class, over all sites.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClassRow {
    /// The class; None for the blocks whose first word is no vtable.
    pub name: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub delta_objects: i64,
    pub delta_bytes: i64,
}

/// One process's memory scan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScanReport {
    pub pid: u32,
    #[serde(flatten)]
    pub stats: ScanStats,
}

/// The live blocks of a site: sizes and age.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LiveObjects {
    /// The most common block sizes by bytes (at most four), largest share first.
    pub sizes: Vec<SizeCount>,
    pub distinct_sizes: usize,
    pub size_min: u64,
    pub size_max: u64,
    /// Live blocks per power-of-two size class: `[lower bound, blocks]`, for varied sizes.
    pub size_histogram: Vec<(u64, u64)>,
    /// Age of the oldest live block, in seconds (absent when nothing is live).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_age_s: Option<f64>,
}

impl LiveObjects {
    /// The most blocks any size class holds (at least 1).
    pub fn largest_class(&self) -> u64 {
        self.size_histogram
            .iter()
            .map(|h| h.1)
            .max()
            .unwrap_or(1)
            .max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SizeCount {
    pub size: u64,
    pub objects: u64,
}

/// The answer to "is there a leak?": sites whose verdict is `leak`, over all sites (not only
/// the ones shown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub leak_sites: usize,
    pub leak_bytes_per_s: f64,
    pub plateau_sites: usize,
    pub uncertain_sites: usize,
}

/// Counters of events seen, received and dropped (cumulative since tracing began).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Allocation records the kernel produced (successful calls).
    pub allocs: u64,
    /// Free records the kernel produced (`free(p)`, p not NULL).
    pub frees: u64,
    pub received_allocs: u64,
    pub received_frees: u64,
    /// Allocator calls made inside another allocator call (its implementation): not counted.
    pub nested: u64,
    /// Allocation calls that failed (returned NULL): nothing to track.
    pub failed: u64,
    /// Frees of blocks the books did not hold (allocated before tracing began, filtered out
    /// by --min-size/--max-size, or lost).
    pub unknown_frees: u64,
    /// Allocations outside the --min-size/--max-size range (not recorded).
    pub filtered: u64,
    /// Anonymous mappings the program made itself (kernel count), and the mapping and
    /// munmap records received.
    pub maps: u64,
    pub received_maps: u64,
    pub received_unmaps: u64,
    /// Heaps destroyed or deleted (mimalloc's `mi_heap_destroy`/`mi_heap_delete`; each is
    /// one of the kernel's `frees`), and the live blocks destroying them freed.
    pub heap_releases: u64,
    pub heap_freed: u64,
    /// Allocator calls an exception left (a throwing `operator new`): the process was stopped
    /// for a moment while its caller's return address was put back (see README).
    pub thrown: u64,
    /// Stack frames walked by frame pointers because their file's unwind table was not
    /// built yet (the first allocations after a library appears); those stacks may be cut
    /// short or wrong below that frame.
    pub fp_fallback: u64,
    /// Stack frames walked by frame pointers because another thread was changing the
    /// process's mappings that instant (same caveat).
    pub fp_maps_busy: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub kind: ReportKind,
    /// Seconds since tracing began.
    pub elapsed_s: f64,
    /// Seconds this report's deltas cover.
    pub window_s: f64,
    pub pid: u32,
    pub command: String,
    /// The file whose allocator functions are probed.
    pub allocator: String,
    /// Which allocator that is: `glibc`, `musl`, `jemalloc`, `tcmalloc`, `mimalloc` or
    /// `unknown`; `glibc, mimalloc` when a second one serves the program's own calls.
    pub allocator_kind: String,
    /// Events that could not be recorded, by cause (cumulative). See [`lost_hints`].
    pub lost: BTreeMap<&'static str, u64>,
    pub events: EventCounts,
    pub totals: Totals,
    /// The top sites (by Δbytes for intervals, by live bytes for the final report).
    pub sites: Vec<SiteReport>,
    /// Sites that qualified but were cut by --top.
    pub sites_omitted: usize,
    pub summary: Summary,
    /// Verdicts ignore intervals before this many seconds (--warmup).
    pub warmup_s: f64,
    /// The mark's number (mark reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
    /// Tracing several processes: each one's own numbers and top sites, the top processes first
    /// (by growth; by outstanding bytes in the final report). `sites` then holds the top sites
    /// over all of them, and the top-level `pid` is 0.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessReport>,
    /// How the launched command ended (final report of launch mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The memory scans this report tells (see `reachability`): how each process stood, the
    /// bytes read, how long it took, how long the process was held still, what it skipped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scans: Vec<ScanReport>,
    /// `--by class`: the live blocks of every site by C++ class (`None`: no class), with the
    /// change since the last report of the same kind; most objects first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassRow>,
    /// Final report tracing several processes: exited processes left out of `processes`
    /// (beyond `--keep-exited`, the least outstanding first).
    #[serde(skip_serializing_if = "is_zero")]
    pub exited_omitted: u64,
    /// Tracing several processes: processes with sites left out of `processes` (beyond
    /// `--processes`; their numbers are in the totals).
    #[serde(skip_serializing_if = "is_zero_usize")]
    pub processes_omitted: usize,
    /// Outputs that failed since the previous report (a recording or flame file that could
    /// not be written): tracing went on without them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Sampled mode (--sample-rate): the figures are estimates (absent in a full trace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Stacks walked by unwind tables (--unwind auto or dwarf): the tables built so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unwind: Option<UnwindSummary>,
}

/// The unwind tables behind the stacks, so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UnwindSummary {
    /// Files whose tables are loaded, their rows, and the kernel memory those take.
    pub files: u64,
    pub rows: u64,
    pub table_bytes: u64,
    /// Files walked by frame pointers, which they keep (--unwind auto).
    pub frame_pointer_files: u64,
    /// Files no table could be built for (no call-frame information), walked by frame
    /// pointers.
    pub failed: u64,
    /// Files left without a table for want of room: raise --unwind-rows.
    pub full: u64,
    /// Files whose table was read from the disk cache (--unwind-cache).
    pub cached: u64,
    /// Milliseconds spent building and loading tables.
    pub build_ms: f64,
}

/// How the allocations were sampled: one every `rate_bytes` bytes on average, each sampled
/// call counted as the 1 / (1 - exp(-size / rate_bytes)) calls it stands for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sampling {
    pub rate_bytes: u64,
    /// Always true: objects, bytes and rates are estimates, with error bounds on the rates.
    pub estimates: bool,
}

/// One process of a several-process report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Events of this process the kernel could not record (cumulative; absent when none):
    /// they make its verdicts, and only its, `uncertain`.
    #[serde(skip_serializing_if = "is_zero")]
    pub lost: u64,
    pub command: String,
    pub allocator: String,
    pub allocator_kind: String,
    /// It exited: these are its last numbers (its books are closed after this report).
    pub exited: bool,
    pub totals: Totals,
    pub summary: Summary,
    pub sites: Vec<SiteReport>,
    pub sites_omitted: usize,
}

/// How reports are written (the table for people, one JSON object a line for programs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// What a report's sites are ordered by.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SortKey {
    Bytes,
    Objects,
    Rate,
}

/// Settings a report mentions when telling how to avoid losses.
#[derive(Clone, Copy, Debug)]
pub struct LimitSettings {
    pub ring_size: u32,
}

/// One sentence per kind of loss (see `losses::LOSSES`), naming the flag that fixes it: those
/// of a full ring together, then each other kind with why.
pub fn lost_hints(lost: &BTreeMap<&'static str, u64>, limits: LimitSettings) -> Vec<String> {
    let get = |k: &str| lost.get(k).copied().unwrap_or(0);
    let of = |fix: Fix| {
        LOSSES
            .iter()
            .filter(move |l| l.fix == fix && get(l.key) > 0)
    };
    let mut out = Vec::new();
    let ring: u64 = of(Fix::RingSize).map(|l| get(l.key)).sum();
    if ring > 0 {
        let parts: Vec<String> = of(Fix::RingSize)
            .map(|l| format!("{} {}", group(get(l.key)), l.what))
            .collect();
        out.push(format!(
            "{} events lost ({}): the ring buffer ({}) was full; raise --ring-size (e.g. --ring-size {})",
            group(ring),
            parts.join(", "),
            size_name(limits.ring_size as u64),
            size_name((limits.ring_size as u64 * 4).min(1 << 30)),
        ));
    }
    for l in of(Fix::Nothing) {
        out.push(format!("{} {}: {}", group(get(l.key)), l.what, l.why));
    }
    out
}

/// `12,345`
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `+12,345` / `-7` / `0`
pub fn signed(n: i64) -> String {
    match n {
        0 => "0".into(),
        n if n > 0 => format!("+{}", group(n as u64)),
        n => format!("-{}", group(n.unsigned_abs())),
    }
}

/// `4 KiB`, `8 MiB`, `1000 B`
pub fn size_name(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    if n >= 1 << 10 {
        return format!("{:.1} KiB", n as f64 / 1024.0);
    }
    format!("{n} B")
}

/// Rounded to three decimals (milliseconds, or thousandths of a byte a second).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A small report for reporter tests.
#[cfg(test)]
pub(crate) fn sample_report() -> Report {
    Report {
        kind: ReportKind::Interval,
        elapsed_s: 4.0,
        window_s: 2.0,
        pid: 42,
        command: "leaky".into(),
        allocator: "/lib/libc.so.6".into(),
        allocator_kind: "glibc".into(),
        lost: BTreeMap::from([("ring_full_allocs", 3), ("ring_full_frees", 0)]),
        events: EventCounts::default(),
        totals: Totals {
            live_objects: 10,
            live_bytes: 640,
            delta_objects: 2,
            delta_bytes: 128,
            allocs: 2,
            frees: 0,
            ..Totals::default()
        },
        sites: vec![SiteReport {
            pid: 42,
            category: Category::Heap,
            stack_cut: None,
            frames: vec![Frame {
                addr: 0x401136,
                function: Some("leak_fixed".into()),
                file: Some("/src/leaky.c".into()),
                line: Some(42),
                module: Some("/bin/leaky".into()),
                offset: 0x1136,
                inlined: false,
                unsymbolized: None,
            }],
            live_objects: 10,
            live_bytes: 640,
            delta_objects: 2,
            delta_bytes: 128,
            allocs: 2,
            frees: 0,
            assessment: Assessment {
                verdict: crate::aggregate::verdict::Verdict::Leak,
                rate_bytes_per_s: 64.0,
                rate_objects_per_s: 1.0,
                grown_intervals: 4,
                verdict_intervals: 4,
                growth_streak: 4,
                verdict_scope: Default::default(),
                rate_error_bytes_per_s: None,
            },
            objects: LiveObjects {
                sizes: vec![SizeCount {
                    size: 64,
                    objects: 10,
                }],
                distinct_sizes: 1,
                size_min: 64,
                size_max: 64,
                size_histogram: vec![(64, 10)],
                oldest_age_s: Some(3.5),
            },
            types: Vec::new(),
            reachability: None,
            verdict_detail: None,
        }],
        sites_omitted: 0,
        summary: Summary {
            leak_sites: 1,
            leak_bytes_per_s: 64.0,
            ..Summary::default()
        },
        warmup_s: 0.0,
        mark: None,
        processes: Vec::new(),
        exit_code: None,
        scans: Vec::new(),
        classes: Vec::new(),
        exited_omitted: 0,
        processes_omitted: 0,
        warnings: Vec::new(),
        sampling: None,
        unwind: None,
    }
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(signed(12800), "+12,800");
        assert_eq!(signed(-5), "-5");
        assert_eq!(size_name(4096), "4 KiB");
        assert_eq!(size_name(8 << 20), "8 MiB");
        assert_eq!(size_name(1000), "1000 B");
    }

    #[test]
    fn every_loss_names_its_flag() {
        let limits = LimitSettings { ring_size: 4096 };
        let mut lost = BTreeMap::new();
        assert!(lost_hints(&lost, limits).is_empty());
        lost.insert("ring_full_allocs", 10);
        lost.insert("ring_full_frees", 5);
        lost.insert("stack_collisions", 2);
        let h = lost_hints(&lost, limits);
        assert_eq!(h.len(), 2);
        assert!(
            h[0].contains("15 events lost")
                && h[0].contains("--ring-size")
                && h[0].contains("4 KiB"),
            "{}",
            h[0]
        );
        assert!(h[1].contains("collided in the stack map"), "{}", h[1]);
    }
}
