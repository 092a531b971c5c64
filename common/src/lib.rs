//! Records and constants shared by the eBPF programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so both sides agree on the
//! layout byte for byte; the size asserts at the bottom fail the build if that ever drifts.
//! Records travel through one BPF ring buffer, each starting with a [`Header`] whose `kind`
//! tags what follows.
#![no_std]

/// Tags of ring-buffer records ([`Header::kind`]).
pub mod kind {
    /// An [`AllocRecord`](super::AllocRecord): a block came into being (or moved, for realloc).
    pub const ALLOC: u8 = 1;
    /// A [`FreeRecord`](super::FreeRecord): a block was handed back.
    pub const FREE: u8 = 2;
    /// An [`ExecRecord`](super::ExecRecord): the process exec'd a new program (its old
    /// address space, and every block in it, is gone).
    pub const EXEC: u8 = 3;
    /// An [`AllocStackRecord`](super::AllocStackRecord): an allocation carrying its stack.
    pub const ALLOC_STACK: u8 = 4;
    /// A [`ForkRecord`](super::ForkRecord): a followed process forked a new process (which is
    /// followed too).
    pub const FORK: u8 = 5;
    /// A [`MunmapRecord`](super::MunmapRecord): the program unmapped a range of its address
    /// space (anonymous mappings it made are [`ALLOC_STACK`] records of `AllocFn::Mmap`).
    pub const MUNMAP: u8 = 6;
    /// A [`Header`](super::Header) alone, on the `NOTICES` ring only: the process is entering
    /// `exit()`, its libraries still mapped (read its map now: it may be gone in microseconds).
    pub const EXITING: u8 = 7;
    /// A [`HeapRecord`](super::HeapRecord): a heap of blocks was destroyed or deleted.
    pub const HEAP_RELEASE: u8 = 8;
    // 9 was a notice of an exception leaving an allocator call, when the process stopped
    // until tracer mended its stack; nothing is mended now (see `collector::returns`).
    /// An [`UnwindMissRecord`](super::UnwindMissRecord), on the `NOTICES` ring only: a stack
    /// went through a file that has no unwind table yet (build one).
    pub const UNWIND_MISS: u8 = 10;
    /// An [`UnwindMissRecord`](super::UnwindMissRecord) whose key is not known (zero), on the
    /// `NOTICES` ring only: a traced process mapped code from a file at `vm_start` (an
    /// executable `mmap`, as the dynamic loader makes for each library); userspace finds the
    /// file and builds its table before a stack meets it.
    pub const CODE_MAPPED: u8 = 11;
}

/// The allocator entry point an event came from ([`Header::func`]); also the uprobe cookie.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllocFn {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    ReallocArray = 4,
    PosixMemalign = 5,
    AlignedAlloc = 6,
    Memalign = 7,
    Valloc = 8,
    Pvalloc = 9,
    Free = 10,
    /// C++ `operator new(size_t)` and its array, nothrow and aligned variants (libstdc++, or
    /// an allocator that defines its own): probed so that the stack starts at the caller of
    /// `new`; the `malloc` they call inside is nested, not counted twice. `operator delete`
    /// needs no probe: it frees through `free`.
    New = 11,
    NewArray = 12,
    NewNothrow = 13,
    NewArrayNothrow = 14,
    NewAligned = 15,
    NewArrayAligned = 16,
    NewAlignedNothrow = 17,
    NewArrayAlignedNothrow = 18,
    /// An anonymous memory mapping the program made itself (`mmap`, or the raw syscall), not
    /// one an allocator made inside a call: its own category in the reports.
    Mmap = 19,
    /// `mremap` of such a mapping: like realloc, it may move it.
    Mremap = 20,
    /// mimalloc's `mi_heap_destroy(heap)`: every block still in the heap is freed at once.
    /// Never an allocation's label: a [`HeapRecord`] says it happened.
    HeapDestroy = 21,
    /// mimalloc's `mi_heap_delete(heap)`: the heap goes, its blocks live on in the default
    /// heap (and `mi_heap_destroy` of a heap it may not destroy does this instead).
    HeapDelete = 22,
}

impl AllocFn {
    pub const ALL: [AllocFn; 22] = [
        AllocFn::Malloc,
        AllocFn::Calloc,
        AllocFn::Realloc,
        AllocFn::ReallocArray,
        AllocFn::PosixMemalign,
        AllocFn::AlignedAlloc,
        AllocFn::Memalign,
        AllocFn::Valloc,
        AllocFn::Pvalloc,
        AllocFn::Free,
        AllocFn::New,
        AllocFn::NewArray,
        AllocFn::NewNothrow,
        AllocFn::NewArrayNothrow,
        AllocFn::NewAligned,
        AllocFn::NewArrayAligned,
        AllocFn::NewAlignedNothrow,
        AllocFn::NewArrayAlignedNothrow,
        AllocFn::Mmap,
        AllocFn::Mremap,
        AllocFn::HeapDestroy,
        AllocFn::HeapDelete,
    ];

    pub fn from_u8(v: u8) -> Option<AllocFn> {
        AllocFn::ALL.iter().copied().find(|f| *f as u8 == v)
    }

    /// The C symbol of this entry point.
    pub fn symbol(self) -> &'static str {
        match self {
            AllocFn::Malloc => "malloc",
            AllocFn::Calloc => "calloc",
            AllocFn::Realloc => "realloc",
            AllocFn::ReallocArray => "reallocarray",
            AllocFn::PosixMemalign => "posix_memalign",
            AllocFn::AlignedAlloc => "aligned_alloc",
            AllocFn::Memalign => "memalign",
            AllocFn::Valloc => "valloc",
            AllocFn::Pvalloc => "pvalloc",
            AllocFn::Free => "free",
            AllocFn::New => "_Znwm",
            AllocFn::NewArray => "_Znam",
            AllocFn::NewNothrow => "_ZnwmRKSt9nothrow_t",
            AllocFn::NewArrayNothrow => "_ZnamRKSt9nothrow_t",
            AllocFn::NewAligned => "_ZnwmSt11align_val_t",
            AllocFn::NewArrayAligned => "_ZnamSt11align_val_t",
            AllocFn::NewAlignedNothrow => "_ZnwmSt11align_val_tRKSt9nothrow_t",
            AllocFn::NewArrayAlignedNothrow => "_ZnamSt11align_val_tRKSt9nothrow_t",
            AllocFn::Mmap => "mmap",
            AllocFn::Mremap => "mremap",
            AllocFn::HeapDestroy => "mi_heap_destroy",
            AllocFn::HeapDelete => "mi_heap_delete",
        }
    }

    /// One of C++'s `operator new` variants.
    pub fn is_cxx_new(self) -> bool {
        (AllocFn::New as u8..=AllocFn::NewArrayAlignedNothrow as u8).contains(&(self as u8))
    }

    /// C++'s `operator new`, in any of its forms.
    pub fn is_new(self) -> bool {
        (AllocFn::New as u8..=AllocFn::NewArrayAlignedNothrow as u8).contains(&(self as u8))
    }

    /// A memory mapping (its own category), not a heap block.
    pub fn is_mapping(self) -> bool {
        matches!(self, AllocFn::Mmap | AllocFn::Mremap)
    }

    /// The end of a heap of blocks (mimalloc's `mi_heap_destroy`, `mi_heap_delete`).
    pub fn is_heap_release(self) -> bool {
        matches!(self, AllocFn::HeapDestroy | AllocFn::HeapDelete)
    }

    /// Whether this entry point may release a block it was given (realloc's input).
    pub fn moves(self) -> bool {
        matches!(self, AllocFn::Realloc | AllocFn::ReallocArray)
    }
}

/// Common start of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u8,
    /// An [`AllocFn`] as `u8`.
    pub func: u8,
    /// An [`ALLOC_STACK`](kind::ALLOC_STACK) record: how its stack ended, one of
    /// [`stack_end`], with [`stack_end::FP_FALLBACK`] set when a frame was walked by frame
    /// pointers because its file's unwind table was not ready. 0 in other records.
    pub stack_end: u16,
    /// Process (thread group) id.
    pub pid: u32,
    /// `CLOCK_MONOTONIC` nanoseconds at the allocator's return (allocs) or entry (frees).
    pub ts_ns: u64,
}

/// An allocation that succeeded, or a realloc that moved or released its input.
///
/// For realloc-like functions `old_addr` is the block passed in (0 for `realloc(NULL, n)`) and
/// `addr` the block returned; `addr == 0` with `size == 0` means `realloc(p, 0)` freed `p`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocRecord {
    pub hdr: Header,
    /// Thread id of the allocating thread.
    pub tid: u32,
    /// A negative errno when the record has no stack (a release, or a stack that could not be
    /// taken); the records with one are [`AllocStackRecord`]s. (Recordings keep the
    /// collector's own ids here.)
    pub stack_id: i32,
    pub addr: u64,
    /// realloc's input block. For an `operator new` probed at entry only
    /// ([`COOKIE_ENTRY_ONLY`]): the return address into its caller, the stack's first frame
    /// (the stack, taken at the function's entry, starts at the caller's caller: a frame-pointer
    /// walk from a function's first instruction cannot see its caller).
    pub old_addr: u64,
    /// Bytes requested (`nmemb * size` for calloc and reallocarray).
    pub size: u64,
    /// How many calls this record stands for: 1 now, more once sampling exists.
    pub weight: u64,
    /// The heap the block was taken from when the caller named one (mimalloc's
    /// `mi_heap_*`): destroying that heap frees the block. 0: the allocator's default.
    pub heap: u64,
}

/// An allocation with its user stack: `nr_bytes` of `ips` are return addresses, innermost
/// first. Only the record and those bytes travel on the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocStackRecord {
    pub alloc: AllocRecord,
    pub nr_bytes: u64,
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// A block handed back to the allocator.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeRecord {
    pub hdr: Header,
    pub addr: u64,
}

/// A process exec'd: its new command name (the kernel's comm), for a process gone before
/// userspace could read /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRecord {
    pub hdr: Header,
    pub comm: [u8; 16],
}

/// A followed process forked: `hdr.pid` is the child, which starts as a copy of `parent`'s
/// address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkRecord {
    pub hdr: Header,
    pub parent: u32,
    pub _pad: u32,
}

/// A heap of blocks went (`hdr.func`: [`AllocFn::HeapDestroy`] freed its blocks,
/// [`AllocFn::HeapDelete`] left them live). The heap's own block, at `heap`, is freed either way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapRecord {
    pub hdr: Header,
    pub heap: u64,
}

/// The program unmapped `[addr, addr + len)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MunmapRecord {
    pub hdr: Header,
    pub addr: u64,
    pub len: u64,
}

/// A memory-mapping syscall between its entry and its exit, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapCall {
    /// Syscall number (mmap 9, munmap 11, mremap 25 on x86_64).
    pub nr: u64,
    /// munmap's and mremap's address.
    pub addr: u64,
    /// mmap's and munmap's length, mremap's new length.
    pub len: u64,
    /// Kept by the C library's wrapper, whose return sends it (see [`COOKIE_MAP_CALL`]); the
    /// syscall tracepoints, when attached too, leave it alone.
    pub by_wrapper: u64,
}

/// The caller of a C-library mapping wrapper (`mmap`, `munmap`, `mremap`), taken at its
/// entry: the syscall's stack then starts at the caller, as an allocator's does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapCaller {
    /// Stack pointer at the wrapper's entry.
    pub sp: u64,
    /// Return address into the caller.
    pub ret: u64,
}

/// How a walked stack ended ([`Header::stack_end`]).
pub mod stack_end {
    /// Walked by frame pointers to a null frame pointer or an unreadable frame (whether that
    /// was the outermost frame is not known).
    pub const FRAME_POINTERS: u16 = 0;
    /// At the outermost frame (`_start`, a thread's start): the stack is whole.
    pub const OUTERMOST: u16 = 1;
    /// At the depth limit ([`MAX_STACK_DEPTH`](super::MAX_STACK_DEPTH)).
    pub const DEPTH: u16 = 2;
    /// At an address its file's unwind table has no rule for.
    pub const NO_INFO: u16 = 3;
    /// At a rule the unwinder does not follow (a DWARF expression other than the PLT's).
    pub const UNSUPPORTED: u16 = 4;
    /// A saved register or return address could not be read.
    pub const UNREADABLE: u16 = 5;
    /// At a return address in no mapping of the process.
    pub const UNMAPPED: u16 = 6;
    /// The low byte's mask.
    pub const REASON: u16 = 0xff;
    /// Set when some frame was walked by frame pointers because its file's unwind table was
    /// not built yet (its frames may be wrong from there on).
    pub const FP_FALLBACK: u16 = 0x100;
}

/// The base of the pseudo-frames userspace appends to a stack cut short (far above any user
/// address): the low bits are the record's [`Header::stack_end`].
pub const STACK_CUT_MARK: u64 = 0xffff_ffff_ffff_f000;

/// The pseudo-frame that ends a stack the walk cut short (the depth limit, a frame no rule
/// covers, an unreadable one, a return address in no mapping), None for a stack that ended at
/// its outermost frame or at the end of its frame-pointer chain. A frame walked by frame
/// pointers for want of its table is counted apart (`counter::FP_FALLBACK`), not marked: in a
/// file that keeps frame pointers its stack is the right one, and in one that does not, the
/// garbage it reads is cut where it leaves the process's code.
pub fn stack_cut_marker(end: u16) -> Option<u64> {
    let cut = matches!(
        end & stack_end::REASON,
        stack_end::DEPTH
            | stack_end::NO_INFO
            | stack_end::UNSUPPORTED
            | stack_end::UNREADABLE
            | stack_end::UNMAPPED
    );
    cut.then_some(STACK_CUT_MARK | (end & 0x1ff) as u64)
}

/// A file's identity for its unwind table: the mapping's `st_dev` (the kernel's encoding,
/// `major << 20 | minor`) and inode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

/// A file's unwind table in the `UNWIND_FILES` map: rows `first_row..first_row + rows` of
/// `UNWIND_ROWS`, sorted by address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileTable {
    /// One of [`table_state`].
    pub state: u32,
    pub first_row: u32,
    pub rows: u32,
    pub _pad: u32,
    /// The file's link-time address of a byte minus that byte's offset in the file, for its
    /// executable segment: a row's `pc` is the file offset plus this.
    pub vaddr_minus_offset: i64,
}

/// [`FileTable::state`].
pub mod table_state {
    /// Asked for (a stack met the file), not built yet: frames in it are walked by frame
    /// pointers meanwhile.
    pub const PENDING: u32 = 0;
    /// Its rows are loaded.
    pub const ROWS: u32 = 1;
    /// The file keeps frame pointers: walked by them (cheaper, same frames).
    pub const FRAME_POINTERS: u32 = 2;
    /// No table can be built (no `.eh_frame`, not an ELF file): frame pointers, as before.
    pub const NONE: u32 = 3;
}

/// One row of an unwind table: from `pc` to the next row's, how to find the caller's frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// Link-time address (see [`FileTable::vaddr_minus_offset`]).
    pub pc: u32,
    /// The canonical frame address is this register's value plus `cfa_offset`.
    pub cfa_offset: u16,
    /// One of [`unwind_rule`].
    pub rule: u8,
    /// Where the caller's rbp was saved, in 8-byte words from the CFA; 0: rbp is unchanged
    /// (not saved, or restored already); [`RBP_LOST`]: unknown from here on.
    pub rbp: i8,
}

/// [`UnwindRow::rbp`]: the caller's rbp cannot be recovered.
pub const RBP_LOST: i8 = i8::MIN;

/// [`UnwindRow::rule`]. The return address is always at CFA - 8 (x86-64).
pub mod unwind_rule {
    /// CFA = rsp + offset.
    pub const CFA_RSP: u8 = 0;
    /// CFA = rbp + offset.
    pub const CFA_RBP: u8 = 1;
    /// The PLT's expression: CFA = rsp + 8, + 8 more from the 11th byte of each 16-byte entry.
    pub const CFA_PLT: u8 = 2;
    /// The outermost frame: the return address is undefined.
    pub const OUTERMOST: u8 = 3;
    /// No rule covers this address (between functions).
    pub const NO_INFO: u8 = 4;
    /// A rule this unwinder does not follow.
    pub const UNSUPPORTED: u8 = 5;
}

/// A stack met a file with no unwind table in `UNWIND_FILES` (now marked pending): build it.
/// The mapping `[vm_start, vm_end)` of process `hdr.pid` is that file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMissRecord {
    pub hdr: Header,
    pub key: FileKey,
    pub vm_start: u64,
    pub vm_end: u64,
}

/// Per-CPU counters (index into the `COUNTERS` map) of what happened in the kernel, and above
/// all of what could not be recorded.
pub mod counter {
    /// Allocation records dropped because the ring buffer was full.
    pub const RING_FULL_ALLOC: u32 = 0;
    /// Free records dropped because the ring buffer was full.
    pub const RING_FULL_FREE: u32 = 1;
    /// Allocations whose stack collided in a stack map (tracers before stacks came inline with
    /// every record; no longer bumped, kept so that counters keep their positions).
    pub const STACK_COLLISION: u32 = 2;
    /// Allocations whose stack could not be kept (an entry-only call's per-thread slot).
    pub const STACK_FAILED: u32 = 3;
    /// Allocator calls missed because the in-flight map (entry → return) was full.
    pub const INFLIGHT_FULL: u32 = 4;
    /// posix_memalign calls whose result could not be read from the out-pointer.
    pub const MEMPTR_FAULT: u32 = 5;
    /// Allocation records the kernel tried to send (successful allocations and releasing reallocs).
    pub const ALLOCS: u32 = 6;
    /// Free records the kernel tried to send (`free(p)` with `p != NULL`).
    pub const FREES: u32 = 7;
    /// Allocator calls made from inside another allocator call on the same thread (its
    /// implementation, e.g. glibc's `realloc(NULL, n)` calling `malloc`), and free-like calls
    /// made by another on the same block (`operator delete` calling `free`): not counted twice.
    pub const NESTED: u32 = 8;
    /// Allocation calls that failed (returned NULL / an error): nothing to track.
    pub const FAILED: u32 = 9;
    /// Returns that matched no recorded entry at the same stack depth.
    pub const UNMATCHED_RETURN: u32 = 10;
    /// Times a launched process was held at `exit()` (tracers before version 4 of the
    /// recording format; no longer bumped, kept so that counters keep their positions).
    pub const EXIT_STOPS: u32 = 11;
    /// Allocations outside the --min-size/--max-size range: not recorded.
    pub const FILTERED: u32 = 12;
    /// Stack-map collisions recovered by sending the stack inline (tracers before stacks came
    /// inline with every record; no longer bumped).
    pub const STACK_INLINE: u32 = 15;
    /// Exec records dropped because the ring buffer was full.
    pub const RING_FULL_EXEC: u32 = 13;
    /// Times a launched process was held at exec (no longer bumped, as [`EXIT_STOPS`]).
    pub const EXEC_STOPS: u32 = 14;
    /// Processes forked by a followed process, and followed from then on (--follow-children).
    pub const FORKS_FOLLOWED: u32 = 16;
    /// Forked processes not followed: the table of followed processes was full.
    pub const FOLLOW_FULL: u32 = 17;
    /// Fork records dropped because the ring buffer was full (the child is followed anyway).
    pub const RING_FULL_FORK: u32 = 18;
    /// Mapping records (mmap, munmap, mremap) dropped because the ring buffer was full.
    pub const RING_FULL_MAP: u32 = 19;
    /// Anonymous mappings the program made (recorded).
    pub const MAPS: u32 = 20;
    /// Allocator calls an exception left (operator new throwing `bad_alloc`): their slot was
    /// cleared.
    pub const THROWN: u32 = 21;
    /// Sampled blocks the kernel's table of them had no room for: their frees are not seen.
    pub const SAMPLED_FULL: u32 = 22;
    /// Stack frames walked by frame pointers because their file's unwind table was not ready.
    pub const FP_FALLBACK: u32 = 23;
    /// Stack frames walked by frame pointers because the process's mappings were being
    /// changed that instant (their lock was taken: the lookup does not wait).
    pub const FP_MAPS_BUSY: u32 = 24;
    /// Number of counters.
    pub const COUNT: u32 = 25;
}

/// Every kind of loss, in one table: the kernel counter (or the reader's own count) it is
/// kept in, its name in the report's `lost` object, what it leaves wrong, and how to avoid it.
/// The report's `lost` object, its hints and the uncertainty of verdicts all come from here.
pub mod losses {
    use super::counter;

    /// The sites a loss may leave wrong, whose verdicts it makes `uncertain`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Touches {
        /// Sites of heap blocks (an allocation or free record lost, a call missed).
        Heap,
        /// Sites of memory mappings (an mmap, munmap or mremap record lost).
        Mappings,
        /// Every site of the process (its exec lost, or a record no process can be named for).
        Any,
        /// The sites of allocations recorded without their stack.
        NoStack,
        /// No site: what was lost is not in the books (a process not followed at all).
        None,
    }

    /// What avoids the loss next time.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fix {
        RingSize,
        /// No flag: the sentence says why.
        Nothing,
    }

    /// Where a loss is counted.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Count {
        /// An index of the kernel's `COUNTERS`.
        Kernel(u32),
        /// Ring records the reader could not decode.
        BadRecords,
    }

    pub struct Loss {
        pub count: Count,
        /// Its key in the report's `lost` object.
        pub key: &'static str,
        /// What was lost, as counted ("allocations").
        pub what: &'static str,
        pub touches: Touches,
        pub fix: Fix,
        /// Why, said when there is no flag to raise.
        pub why: &'static str,
    }

    const fn ring(c: u32, key: &'static str, what: &'static str, touches: Touches) -> Loss {
        Loss {
            count: Count::Kernel(c),
            key,
            what,
            touches,
            fix: Fix::RingSize,
            why: "",
        }
    }

    pub const LOSSES: &[Loss] = &[
        ring(
            counter::RING_FULL_ALLOC,
            "ring_full_allocs",
            "allocations",
            Touches::Heap,
        ),
        ring(
            counter::RING_FULL_FREE,
            "ring_full_frees",
            "frees",
            Touches::Heap,
        ),
        ring(
            counter::RING_FULL_EXEC,
            "ring_full_execs",
            "execs",
            Touches::Any,
        ),
        ring(
            counter::RING_FULL_MAP,
            "ring_full_maps",
            "mapping records",
            Touches::Mappings,
        ),
        // The child is followed anyway; its parent and allocator are not learnt from it.
        ring(
            counter::RING_FULL_FORK,
            "ring_full_forks",
            "fork records",
            Touches::None,
        ),
        Loss {
            count: Count::Kernel(counter::STACK_COLLISION),
            key: "stack_collisions",
            what: "allocations without their stack",
            touches: Touches::NoStack,
            fix: Fix::Nothing,
            why: "their stacks collided in the stack map of the tracer that recorded this \
                  (tracers since then send every stack with its record)",
        },
        Loss {
            count: Count::Kernel(counter::STACK_FAILED),
            key: "stack_failures",
            what: "allocations without their stack",
            touches: Touches::NoStack,
            fix: Fix::Nothing,
            why: "their stack could not be kept until the call completed, or the stack ids \
                  ran out (a bug: please report it)",
        },
        Loss {
            count: Count::Kernel(counter::SAMPLED_FULL),
            key: "sampled_full",
            what: "sampled blocks whose free cannot be seen",
            touches: Touches::Heap,
            fix: Fix::Nothing,
            why: "the kernel's table of live sampled blocks (1,048,576) was full: raise \
                  --sample-rate so that fewer blocks are sampled",
        },
        Loss {
            count: Count::Kernel(counter::INFLIGHT_FULL),
            key: "inflight_full",
            what: "allocator calls missed",
            touches: Touches::Heap,
            fix: Fix::Nothing,
            why: "more threads were inside the allocator at once than the in-flight table holds",
        },
        Loss {
            count: Count::Kernel(counter::MEMPTR_FAULT),
            key: "memptr_faults",
            what: "posix_memalign results lost",
            touches: Touches::Heap,
            fix: Fix::Nothing,
            why: "they could not be read from the target's memory",
        },
        Loss {
            count: Count::Kernel(counter::FOLLOW_FULL),
            key: "follow_full",
            what: "forked processes not followed",
            touches: Touches::None,
            fix: Fix::Nothing,
            why: "the kernel's table of followed processes (16,384) was full",
        },
        Loss {
            count: Count::BadRecords,
            key: "bad_records",
            what: "ring records not decoded",
            touches: Touches::Any,
            fix: Fix::Nothing,
            why: "they were not records this tracer knows (a bug: please report it)",
        },
    ];

    /// The loss kept in kernel counter `c`, if it is one.
    pub fn of_counter(c: u32) -> Option<&'static Loss> {
        LOSSES.iter().find(|l| l.count == Count::Kernel(c))
    }
}

/// Names of the map and programs userspace looks up in the object.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const INFLIGHT: &str = "INFLIGHT";
    pub const COUNTERS: &str = "COUNTERS";
    /// `u32 tgid → u32 parent tgid`: the processes traced besides `FILTER_PID`: followed
    /// children, or (with `FILTER_SET`) the several `--pid` targets (parent 0).
    pub const FOLLOWED: &str = "FOLLOWED";
    /// A small ring of [`Header`]s (`kind::EXEC`, `kind::EXITING`) that wakes its reader at
    /// once: the moments a short-lived process's memory map must be read, apart from the
    /// event stream so that reading them waits for nothing else.
    pub const NOTICES: &str = "NOTICES";
    /// `u32 tgid → u64`: events lost per process (an LRU table: a process evicted from it
    /// starts again from zero).
    pub const LOST_BY_PID: &str = "LOST_BY_PID";
    /// [`FileKey`](super::FileKey) → [`FileTable`](super::FileTable): the unwind tables.
    pub const UNWIND_FILES: &str = "UNWIND_FILES";
    /// Array of [`UnwindRow`](super::UnwindRow)s, every file's table in its own range.
    pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
}

/// Load-time settings (read-only globals of the eBPF object).
pub mod globals {
    /// `u32`: only this process (tgid) is traced; 0 traces every process.
    pub const FILTER_PID: &str = "FILTER_PID";
    /// `u32`: the tracer's own process, never traced.
    pub const SELF_PID: &str = "SELF_PID";
    /// `u64`: submit with a wakeup once this many bytes wait in the ring (the drain watermark).
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    /// `u64`, `u64`: only allocations of `MIN_SIZE..=MAX_SIZE` bytes are recorded (a realloc
    /// out of range still releases its input block).
    pub const MIN_SIZE: &str = "MIN_SIZE";
    pub const MAX_SIZE: &str = "MAX_SIZE";
    /// `u32`: non-zero traces only the processes in the `FOLLOWED` table (several --pid: the
    /// uprobes are scoped per process, the tracepoints are not).
    pub const FILTER_SET: &str = "FILTER_SET";
    /// `[u8; 16]`: with `FILTER_SET`, a process that execs a program of this command name
    /// (the kernel's comm, NUL-padded) joins the `FOLLOWED` table (--comm); all zero: none.
    pub const FILTER_COMM: &str = "FILTER_COMM";
    /// `u32`: non-zero follows the processes `FILTER_PID` forks, and theirs (--follow-children).
    pub const FOLLOW_FORKS: &str = "FOLLOW_FORKS";
    /// `u64`: byte offset of `tgid` in the kernel's `struct task_struct` (from its BTF).
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// `u64`: mean bytes between sampled allocations (--sample-rate); 0 records every call.
    pub const SAMPLE_RATE: &str = "SAMPLE_RATE";
    /// `[u32; SAMPLE_GAP_COUNT]`: quantiles of the exponential distribution of mean 1, in
    /// 1/1024ths, the sampler's gaps are drawn from.
    pub const SAMPLE_GAPS: &str = "SAMPLE_GAPS";
    /// `u32`: how stacks are walked, one of [`unwind_mode`](super::unwind_mode).
    pub const UNWIND_MODE: &str = "UNWIND_MODE";
    /// `[u64; 8]`: byte offsets in kernel structures (from its BTF) the unwinder reads a
    /// mapping's file identity with, in the order of [`vma_offsets`](super::vma_offsets).
    pub const VMA_OFFSETS: &str = "VMA_OFFSETS";
}

/// `globals::UNWIND_MODE`.
pub mod unwind_mode {
    /// Frame pointers only.
    pub const FP: u32 = 0;
    /// Unwind tables for files without frame pointers, frame pointers for the others.
    pub const AUTO: u32 = 1;
    /// Unwind tables wherever a file has one.
    pub const DWARF: u32 = 2;
}

/// Indexes into `globals::VMA_OFFSETS`: `vm_area_struct.vm_start`, `.vm_end`, `.vm_pgoff`,
/// `.vm_file`, `file.f_inode`, `inode.i_ino`, `inode.i_sb`, `super_block.s_dev`.
pub mod vma_offsets {
    pub const VM_START: usize = 0;
    pub const VM_END: usize = 1;
    pub const VM_PGOFF: usize = 2;
    pub const VM_FILE: usize = 3;
    pub const F_INODE: usize = 4;
    pub const I_INO: usize = 5;
    pub const I_SB: usize = 6;
    pub const S_DEV: usize = 7;
    pub const COUNT: usize = 8;
}

/// How many quantiles of the exponential distribution the sampler draws its gaps from
/// (`globals::SAMPLE_GAPS`): a power of two.
pub const SAMPLE_GAP_COUNT: usize = 1024;

/// Deepest user stack a record carries (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Uprobe cookie: the low byte is the [`AllocFn`]; this bit says the probed file has several
/// free-like functions that may call one another (so frees are checked for nesting; a file
/// with `free` alone, glibc's, skips that work).
pub const COOKIE_NESTING_FREES: u64 = 1 << 8;
/// Uprobe cookie: the function is probed at entry only, and the first allocator call nested in
/// it that has a return probe completes it (libstdc++'s `operator new`, which calls `malloc`).
/// Its stack is taken at its entry. No return probe means no kernel trampoline in its frame,
/// so an exception it throws unwinds as without tracer.
pub const COOKIE_ENTRY_ONLY: u64 = 1 << 9;
/// Uprobe cookie of a C-library mapping wrapper: its call is the record (no fexit on the
/// system calls here), its return probe sends it. The system call's number is in the bits
/// from [`COOKIE_MAP_NR_SHIFT`].
pub const COOKIE_MAP_CALL: u64 = 1 << 10;
/// Uprobe cookie: the function has no return probe; uprobes on its `ret` instructions see it
/// return (an allocator's own throwing `operator new`), so no trampoline is ever in its frame.
pub const COOKIE_AT_RETS: u64 = 1 << 11;
pub const COOKIE_MAP_NR_SHIFT: u32 = 16;

/// Entry state kept between an allocator call's entry and its return, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InFlight {
    /// Stack pointer at entry: the return matches when its stack pointer is this + 8.
    pub sp: u64,
    pub size: u64,
    /// realloc's input block, or posix_memalign's out-pointer.
    pub ptr: u64,
    pub func: u8,
    /// Non-zero when the size is outside the recorded range: the return only releases
    /// realloc's input block.
    pub filtered: u8,
    /// The call's file has nesting free-like functions ([`COOKIE_NESTING_FREES`]).
    pub nesting_frees: u8,
    /// Probed at entry only ([`COOKIE_ENTRY_ONLY`]): completed by a nested call's return.
    pub entry_only: u8,
    /// An entry-only call's stack, taken at its entry: [`STACK_AT_ENTRY_INLINE`] when it is
    /// kept in the per-thread entry stack, a negative errno when it could not be.
    pub stack_id: i32,
    /// The heap named by the caller (`mi_heap_*`), 0 when none.
    pub heap: u64,
    /// An entry-only call's return address, its stack's first frame.
    pub ret: u64,
    /// An entry-only call: the stack pointer at entry of the nested call that completes it
    /// (0 until that call enters), and that call's own pointer argument and function
    /// (posix_memalign's result comes through its out-pointer).
    pub inner_sp: u64,
    pub inner_ptr: u64,
    pub inner_func: u8,
    /// Seen returning at its `ret` instructions ([`COOKIE_AT_RETS`]): its return address is
    /// never the kernel's trampoline.
    pub at_rets: u8,
    pub _pad: [u8; 6],
    /// That nested call's entry address (sampled mode: its session's return is told by it).
    pub inner_ip: u64,
    /// Sampled mode: the call's entry address (its session's return is not at it) and when it
    /// entered (a slot whose return never came is dropped after [`STALE_CALL_NS`]).
    pub entry_ip: u64,
    pub ts_ns: u64,
}

/// Sampled mode: an in-flight slot this old is a call whose return was missed (its uretprobe
/// not set up, or a longjmp out of it), not a call still running: it is dropped.
pub const STALE_CALL_NS: u64 = 1_000_000_000;

/// [`InFlight::stack_id`] of an entry-only call whose stack waits in a per-thread map for the
/// call's completion.
pub const STACK_AT_ENTRY_INLINE: i32 = i32::MIN;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::InFlight {}
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::FileTable {}
    unsafe impl aya::Pod for super::UnwindRow {}
}

const _: () = assert!(core::mem::size_of::<Header>() == 16);
const _: () = assert!(core::mem::size_of::<AllocRecord>() == 64);
const _: () = assert!(core::mem::size_of::<FreeRecord>() == 24);
const _: () = assert!(core::mem::size_of::<ForkRecord>() == 24);
const _: () = assert!(core::mem::size_of::<ExecRecord>() == 32);
const _: () = assert!(core::mem::size_of::<MunmapRecord>() == 32);
const _: () = assert!(core::mem::size_of::<AllocStackRecord>() == 64 + 8 + 8 * MAX_STACK_DEPTH);
const _: () = assert!(core::mem::size_of::<InFlight>() == 96);
const _: () = assert!(core::mem::size_of::<UnwindRow>() == 8);
const _: () = assert!(core::mem::size_of::<FileTable>() == 24);
const _: () = assert!(core::mem::size_of::<UnwindMissRecord>() == 48);
