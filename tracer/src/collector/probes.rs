//! The probe table: which eBPF program goes on which allocator function, and whether a
//! target without that function can still be traced.
use tracer_common::AllocFn;

pub struct ProbeSpec {
    pub func: AllocFn,
    /// The entry program (an argument-shape handler; the cookie names the function).
    pub entry: &'static str,
    /// Whether the function's return is probed too (everything but free).
    pub has_return: bool,
    /// Without a required function the books would be wrong; optional ones only warn.
    pub required: bool,
}

pub const RETURN_PROGRAM: &str = "alloc_return";

pub const PROBES: &[ProbeSpec] = &[
    spec(AllocFn::Malloc, "size_arg0", true, true),
    spec(AllocFn::Free, "free", false, true),
    spec(AllocFn::Calloc, "calloc", true, true),
    spec(AllocFn::Realloc, "realloc", true, true),
    spec(AllocFn::ReallocArray, "reallocarray", true, false),
    spec(AllocFn::PosixMemalign, "posix_memalign", true, false),
    spec(AllocFn::AlignedAlloc, "size_arg1", true, false),
    spec(AllocFn::Memalign, "size_arg1", true, false),
    spec(AllocFn::Valloc, "size_arg0", true, false),
    spec(AllocFn::Pvalloc, "size_arg0", true, false),
    // C++: every variant takes the size first.
    spec(AllocFn::New, "size_arg0", true, false),
    spec(AllocFn::NewArray, "size_arg0", true, false),
    spec(AllocFn::NewNothrow, "size_arg0", true, false),
    spec(AllocFn::NewArrayNothrow, "size_arg0", true, false),
    spec(AllocFn::NewAligned, "size_arg0", true, false),
    spec(AllocFn::NewArrayAligned, "size_arg0", true, false),
    spec(AllocFn::NewAlignedNothrow, "size_arg0", true, false),
    spec(AllocFn::NewArrayAlignedNothrow, "size_arg0", true, false),
];

const fn spec(func: AllocFn, entry: &'static str, has_return: bool, required: bool) -> ProbeSpec {
    ProbeSpec {
        func,
        entry,
        has_return,
        required,
    }
}

/// The entry program names, each once.
pub fn entry_programs() -> Vec<&'static str> {
    let mut v: Vec<_> = PROBES.iter().map(|p| p.entry).collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_one_probe() {
        for f in AllocFn::ALL {
            assert_eq!(PROBES.iter().filter(|p| p.func == f).count(), 1, "{f:?}");
        }
        assert!(PROBES.iter().filter(|p| p.required).all(|p| {
            matches!(
                p.func,
                AllocFn::Malloc | AllocFn::Free | AllocFn::Calloc | AllocFn::Realloc
            )
        }));
    }
}
