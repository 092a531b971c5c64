//! The probe table: which symbols are allocator entry points, which eBPF program goes on each,
//! and which a target must have for its books to be right.
//!
//! Symbols are looked up by name in the allocator's ELF file. Several names often share one
//! address (tcmalloc's `malloc` is `tc_malloc`, mimalloc's `free` is `mi_free` and
//! `operator delete`): one probe goes on each address, labelled by the first name in this
//! table, so standard names come first.
use tracer_common::AllocFn;

/// What a symbol does, as far as the books are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub symbol: &'static str,
    /// The label its records carry (also the uprobe cookie: it selects posix_memalign's
    /// out-pointer and realloc's release semantics in the kernel).
    pub func: AllocFn,
    /// The entry program (an argument-shape handler).
    pub entry: &'static str,
    pub group: Group,
}

/// Which files a symbol is probed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// The standard C interface, probed in the file that serves the process's `malloc`.
    Std,
    /// C++ `operator new`: probed where the process's lookup finds it first (libstdc++, or an
    /// allocator that defines its own).
    CxxNew,
    /// C++ `operator delete`: probed only in an allocator that defines its own (jemalloc,
    /// tcmalloc, mimalloc). libstdc++'s calls `free`, which is probed already.
    CxxDelete,
    /// An allocator's own interface (`mallocx`, `tc_*`, `mi_*`, `je_*`, `_rjem_*`): probed in
    /// any file that defines it, even one whose `malloc` is not the process's (a Rust program
    /// with a jemalloc or mimalloc global allocator linked in).
    Own,
    /// The C library's memory-mapping wrappers: probed at entry to learn the caller of the
    /// system call its own probe sees; where the system calls have none (no BPF trampolines),
    /// at entry and return, as the record itself (see `COOKIE_MAP_CALL`).
    Syscall,
    /// C++'s `__cxa_throw`, probed at entry in the first file that defines it: an `operator
    /// new` that throws never returns, and its call in flight must be forgotten.
    Throw,
}

/// The symbol that marks a file as defining C++'s `operator new`.
pub const CXX_NEW: &str = "_Znwm";
pub const RETURN_PROGRAM: &str = "alloc_return";
/// On the `ret` instructions of an allocator's own throwing `operator new`, which has no
/// return probe (see `collector::returns`).
pub const RET_SITE_PROGRAM: &str = "alloc_ret_site";
/// The entry program of functions probed at entry only (see `AllocatorLib::entry_only`).
pub const ENTRY_ONLY_PROGRAM: &str = "new_entry_only";
pub const FREE_PROGRAM: &str = "free";
pub const MAP_CALLER_PROGRAM: &str = "map_caller";
/// The return of a C-library mapping wrapper whose call is the record.
pub const MAP_RETURN_PROGRAM: &str = "map_return";
pub const THROW_PROGRAM: &str = "cxa_throw";

impl ProbeSpec {
    /// Whether the function's return is probed too (everything that allocates).
    pub fn has_return(&self) -> bool {
        self.entry != FREE_PROGRAM
            && self.entry != MAP_CALLER_PROGRAM
            && self.entry != THROW_PROGRAM
    }

    /// How many argument registers its entry program reads (the rest are the function's
    /// scratch before the probe; see `target::at_emulated`).
    pub fn arguments(&self) -> usize {
        match self.entry {
            "size_arg0" | "heap_release" | FREE_PROGRAM => 1,
            "calloc" | "realloc" | "size_arg1" | "heap_size" => 2,
            "reallocarray" | "posix_memalign" | "heap_calloc" | "heap_realloc" => 3,
            "heap_reallocarray" => 4,
            _ => 6,
        }
    }

    /// An `operator new` that throws `bad_alloc` when it fails: an allocator's own is seen
    /// returning at its `ret` instructions, never by a return probe, which would stop the
    /// exception (see `collector::returns`).
    pub fn throws(&self) -> bool {
        self.entry != THROW_PROGRAM
            && matches!(self.func, New | NewArray | NewAligned | NewArrayAligned)
    }

    /// A mapping wrapper's system call number (x86_64), in its cookie (0: not a wrapper).
    pub fn map_syscall(&self) -> u64 {
        match self.symbol {
            "mmap" | "mmap64" => 9,
            "munmap" => 11,
            "mremap" => 25,
            _ => 0,
        }
    }

    /// Without these a process's books would be wrong.
    pub fn required(&self) -> bool {
        self.group == Group::Std && matches!(self.symbol, "malloc" | "free" | "calloc" | "realloc")
    }
}

const fn p(symbol: &'static str, func: AllocFn, entry: &'static str, group: Group) -> ProbeSpec {
    ProbeSpec {
        symbol,
        func,
        entry,
        group,
    }
}

use AllocFn::*;
use Group::*;

/// Every entry point, standard names first (see the module comment).
pub const PROBES: &[ProbeSpec] = &[
    p("malloc", Malloc, "size_arg0", Std),
    p("free", Free, FREE_PROGRAM, Std),
    p("calloc", Calloc, "calloc", Std),
    p("realloc", Realloc, "realloc", Std),
    p("reallocarray", ReallocArray, "reallocarray", Std),
    p("posix_memalign", PosixMemalign, "posix_memalign", Std),
    p("aligned_alloc", AlignedAlloc, "size_arg1", Std),
    p("memalign", Memalign, "size_arg1", Std),
    p("valloc", Valloc, "size_arg0", Std),
    p("pvalloc", Pvalloc, "size_arg0", Std),
    // C23's sized frees and the old cfree.
    p("free_sized", Free, FREE_PROGRAM, Own),
    p("free_aligned_sized", Free, FREE_PROGRAM, Own),
    p("cfree", Free, FREE_PROGRAM, Own),
    // C++: every new takes the size first, every delete the pointer.
    p("_Znwm", New, "size_arg0", CxxNew),
    p("_Znam", NewArray, "size_arg0", CxxNew),
    p("_ZnwmRKSt9nothrow_t", NewNothrow, "size_arg0", CxxNew),
    p("_ZnamRKSt9nothrow_t", NewArrayNothrow, "size_arg0", CxxNew),
    p("_ZnwmSt11align_val_t", NewAligned, "size_arg0", CxxNew),
    p("_ZnamSt11align_val_t", NewArrayAligned, "size_arg0", CxxNew),
    p(
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        NewAlignedNothrow,
        "size_arg0",
        CxxNew,
    ),
    p(
        "_ZnamSt11align_val_tRKSt9nothrow_t",
        NewArrayAlignedNothrow,
        "size_arg0",
        CxxNew,
    ),
    p("_ZdlPv", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdaPv", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdlPvm", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdaPvm", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdlPvRKSt9nothrow_t", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdaPvRKSt9nothrow_t", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdlPvSt11align_val_t", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdaPvSt11align_val_t", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdlPvmSt11align_val_t", Free, FREE_PROGRAM, CxxDelete),
    p("_ZdaPvmSt11align_val_t", Free, FREE_PROGRAM, CxxDelete),
    p(
        "_ZdlPvSt11align_val_tRKSt9nothrow_t",
        Free,
        FREE_PROGRAM,
        CxxDelete,
    ),
    p(
        "_ZdaPvSt11align_val_tRKSt9nothrow_t",
        Free,
        FREE_PROGRAM,
        CxxDelete,
    ),
    // jemalloc's non-standard interface, unprefixed (Debian's libjemalloc), with the `je_`
    // prefix (a prefixed build) and `_rjem_` (Rust's tikv-jemallocator).
    p("mallocx", Malloc, "size_arg0", Own),
    p("rallocx", Realloc, "realloc", Own),
    p("sdallocx", Free, FREE_PROGRAM, Own),
    p("dallocx", Free, FREE_PROGRAM, Own),
    p("je_malloc", Malloc, "size_arg0", Own),
    p("je_calloc", Calloc, "calloc", Own),
    p("je_realloc", Realloc, "realloc", Own),
    p("je_posix_memalign", PosixMemalign, "posix_memalign", Own),
    p("je_aligned_alloc", AlignedAlloc, "size_arg1", Own),
    p("je_memalign", Memalign, "size_arg1", Own),
    p("je_valloc", Valloc, "size_arg0", Own),
    p("je_free", Free, FREE_PROGRAM, Own),
    p("je_mallocx", Malloc, "size_arg0", Own),
    p("je_rallocx", Realloc, "realloc", Own),
    p("je_sdallocx", Free, FREE_PROGRAM, Own),
    p("je_dallocx", Free, FREE_PROGRAM, Own),
    p("_rjem_malloc", Malloc, "size_arg0", Own),
    p("_rjem_calloc", Calloc, "calloc", Own),
    p("_rjem_realloc", Realloc, "realloc", Own),
    p("_rjem_posix_memalign", PosixMemalign, "posix_memalign", Own),
    p("_rjem_aligned_alloc", AlignedAlloc, "size_arg1", Own),
    p("_rjem_free", Free, FREE_PROGRAM, Own),
    p("_rjem_mallocx", Malloc, "size_arg0", Own),
    p("_rjem_rallocx", Realloc, "realloc", Own),
    p("_rjem_sdallocx", Free, FREE_PROGRAM, Own),
    p("_rjem_dallocx", Free, FREE_PROGRAM, Own),
    // gperftools' tcmalloc.
    p("tc_malloc", Malloc, "size_arg0", Own),
    p("tc_malloc_skip_new_handler", Malloc, "size_arg0", Own),
    p("tc_calloc", Calloc, "calloc", Own),
    p("tc_realloc", Realloc, "realloc", Own),
    p("tc_memalign", Memalign, "size_arg1", Own),
    p("tc_posix_memalign", PosixMemalign, "posix_memalign", Own),
    p("tc_valloc", Valloc, "size_arg0", Own),
    p("tc_pvalloc", Pvalloc, "size_arg0", Own),
    p("tc_free", Free, FREE_PROGRAM, Own),
    p("tc_free_sized", Free, FREE_PROGRAM, Own),
    p("tc_cfree", Free, FREE_PROGRAM, Own),
    p("tc_new", New, "size_arg0", Own),
    p("tc_newarray", NewArray, "size_arg0", Own),
    p("tc_new_nothrow", NewNothrow, "size_arg0", Own),
    p("tc_newarray_nothrow", NewArrayNothrow, "size_arg0", Own),
    p("tc_delete", Free, FREE_PROGRAM, Own),
    p("tc_deletearray", Free, FREE_PROGRAM, Own),
    p("tc_delete_sized", Free, FREE_PROGRAM, Own),
    p("tc_deletearray_sized", Free, FREE_PROGRAM, Own),
    p("tc_delete_nothrow", Free, FREE_PROGRAM, Own),
    p("tc_deletearray_nothrow", Free, FREE_PROGRAM, Own),
    // mimalloc: the functions Rust's mimalloc crate and C programs call directly.
    p("mi_malloc", Malloc, "size_arg0", Own),
    p("mi_zalloc", Calloc, "size_arg0", Own),
    p("mi_calloc", Calloc, "calloc", Own),
    p("mi_realloc", Realloc, "realloc", Own),
    p("mi_reallocn", ReallocArray, "reallocarray", Own),
    p("mi_malloc_aligned", AlignedAlloc, "size_arg0", Own),
    p("mi_zalloc_aligned", AlignedAlloc, "size_arg0", Own),
    p("mi_calloc_aligned", Calloc, "calloc", Own),
    p("mi_realloc_aligned", Realloc, "realloc", Own),
    p("mi_new", New, "size_arg0", Own),
    p("mi_new_aligned", NewAligned, "size_arg0", Own),
    p("mi_new_nothrow", NewNothrow, "size_arg0", Own),
    p("mi_new_n", NewArray, "calloc", Own),
    p("mi_free", Free, FREE_PROGRAM, Own),
    p("mi_free_size", Free, FREE_PROGRAM, Own),
    p("mi_free_aligned", Free, FREE_PROGRAM, Own),
    p("mi_free_size_aligned", Free, FREE_PROGRAM, Own),
    p("mi_cfree", Free, FREE_PROGRAM, Own),
    // mimalloc's heaps: the heap comes first, and the block remembers it, since destroying the
    // heap frees every block still in it (with no call per block). strdup and friends allocate
    // through mi_heap_malloc, whose probe sees them.
    p("mi_heap_malloc", Malloc, "heap_size", Own),
    p("mi_heap_malloc_small", Malloc, "heap_size", Own),
    p("mi_heap_zalloc", Calloc, "heap_size", Own),
    p("mi_heap_malloc_aligned", AlignedAlloc, "heap_size", Own),
    p("mi_heap_malloc_aligned_at", AlignedAlloc, "heap_size", Own),
    p("mi_heap_zalloc_aligned", AlignedAlloc, "heap_size", Own),
    p("mi_heap_zalloc_aligned_at", AlignedAlloc, "heap_size", Own),
    p("mi_heap_alloc_new", New, "heap_size", Own),
    p("mi_heap_calloc", Calloc, "heap_calloc", Own),
    p("mi_heap_mallocn", Calloc, "heap_calloc", Own),
    p("mi_heap_calloc_aligned", Calloc, "heap_calloc", Own),
    p("mi_heap_calloc_aligned_at", Calloc, "heap_calloc", Own),
    p("mi_heap_alloc_new_n", NewArray, "heap_calloc", Own),
    p("mi_heap_realloc", Realloc, "heap_realloc", Own),
    p("mi_heap_reallocf", Realloc, "heap_realloc", Own),
    p("mi_heap_rezalloc", Realloc, "heap_realloc", Own),
    p("mi_heap_realloc_aligned", Realloc, "heap_realloc", Own),
    p("mi_heap_realloc_aligned_at", Realloc, "heap_realloc", Own),
    p("mi_heap_rezalloc_aligned", Realloc, "heap_realloc", Own),
    p("mi_heap_rezalloc_aligned_at", Realloc, "heap_realloc", Own),
    p("mi_heap_reallocn", ReallocArray, "heap_reallocarray", Own),
    p("mi_heap_recalloc", ReallocArray, "heap_reallocarray", Own),
    p(
        "mi_heap_recalloc_aligned",
        ReallocArray,
        "heap_reallocarray",
        Own,
    ),
    p(
        "mi_heap_recalloc_aligned_at",
        ReallocArray,
        "heap_reallocarray",
        Own,
    ),
    p("mi_heap_destroy", HeapDestroy, "heap_release", Own),
    p("mi_heap_delete", HeapDelete, "heap_release", Own),
    // The C library's mapping wrappers (mmap64 is mmap's other name). Not `syscall()`: a
    // program's every futex through it (Rust's locks) would trap.
    p("mmap", Mmap, MAP_CALLER_PROGRAM, Syscall),
    p("mmap64", Mmap, MAP_CALLER_PROGRAM, Syscall),
    p("munmap", Mmap, MAP_CALLER_PROGRAM, Syscall),
    p("mremap", Mremap, MAP_CALLER_PROGRAM, Syscall),
    // Its cookie is unused.
    p("__cxa_throw", New, THROW_PROGRAM, Throw),
];

/// The entry programs of the functions that allocate (those with a return probe), each once:
/// in sampled mode they go on as uprobe sessions.
pub fn session_programs() -> Vec<&'static str> {
    let mut v: Vec<_> = PROBES
        .iter()
        .filter(|p| p.has_return() && p.group != Group::Syscall)
        .map(|p| p.entry)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The entry program names, each once.
pub fn entry_programs() -> Vec<&'static str> {
    let mut v: Vec<_> = PROBES.iter().map(|p| p.entry).collect();
    v.push(ENTRY_ONLY_PROGRAM);
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(symbol: &str) -> Option<&'static ProbeSpec> {
        PROBES.iter().find(|p| p.symbol == symbol)
    }

    #[test]
    fn symbols_are_unique_and_shapes_fit_their_labels() {
        for (i, a) in PROBES.iter().enumerate() {
            assert!(
                PROBES[i + 1..].iter().all(|b| b.symbol != a.symbol),
                "{} twice",
                a.symbol
            );
            // The kernel reads the memptr of posix_memalign-labelled calls and releases the
            // input of realloc-labelled ones: the shapes must give it those arguments.
            match a.func {
                PosixMemalign => assert_eq!(a.entry, "posix_memalign", "{}", a.symbol),
                Realloc => assert!(
                    matches!(a.entry, "realloc" | "heap_realloc"),
                    "{}",
                    a.symbol
                ),
                ReallocArray => assert!(
                    matches!(a.entry, "reallocarray" | "heap_reallocarray"),
                    "{}",
                    a.symbol
                ),
                HeapDestroy | HeapDelete => assert_eq!(a.entry, "heap_release", "{}", a.symbol),
                Free => assert_eq!(a.entry, FREE_PROGRAM, "{}", a.symbol),
                Mmap | Mremap => assert_eq!(a.entry, MAP_CALLER_PROGRAM, "{}", a.symbol),
                _ => assert!(
                    !matches!(
                        a.entry,
                        "posix_memalign"
                            | "realloc"
                            | "reallocarray"
                            | "free"
                            | "map_caller"
                            | "heap_realloc"
                            | "heap_reallocarray"
                            | "heap_release"
                    ),
                    "{}",
                    a.symbol
                ),
            }
        }
        let required: Vec<_> = PROBES
            .iter()
            .filter(|p| p.required())
            .map(|p| p.symbol)
            .collect();
        assert_eq!(required, ["malloc", "free", "calloc", "realloc"]);
        // Every standard function has a standard entry in the table.
        for f in [
            Malloc,
            Free,
            Calloc,
            Realloc,
            ReallocArray,
            PosixMemalign,
            AlignedAlloc,
            Memalign,
            Valloc,
            Pvalloc,
        ] {
            assert!(
                PROBES
                    .iter()
                    .any(|p| p.func == f && p.group == Std && p.symbol == f.symbol()),
                "{f:?}"
            );
        }
        for f in AllocFn::ALL.iter().filter(|f| f.is_cxx_new()) {
            assert_eq!(spec(f.symbol()).map(|p| p.group), Some(CxxNew), "{f:?}");
        }
    }
}
