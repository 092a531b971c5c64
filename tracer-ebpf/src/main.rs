//! Probe entry points only: each is a line or two calling the helpers in `alloc.rs`.
//!
//! Entry probes are grouped by argument shape; the uprobe cookie says which allocator function
//! a program is attached to, so one program serves e.g. malloc, valloc and pvalloc.
//!
//! The allocating functions' entry programs are written out without aya's `#[uprobe]` macro,
//! whose programs always return 0: attached as uprobe sessions (sampled mode), their return
//! value says whether the call's return is wanted (see `alloc::KEEP_RETURN`).
//! Needs a kernel with uprobes, BPF ring buffers (5.8) and uprobe cookies (5.15).
#![no_std]
#![no_main]

mod alloc;
mod unwind;

use core::ffi::c_void;

use aya_ebpf::{
    macros::{fexit, raw_tracepoint, uprobe, uretprobe},
    programs::{FExitContext, ProbeContext, RawTracePointContext, RetProbeContext},
};

/// `sched_process_exec` (a raw tracepoint: attached by name, no tracefs needed): a process
/// replaced its program.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_exec(_ctx: RawTracePointContext) -> i32 {
    alloc::exec();
    0
}

/// `sched_process_fork(parent, child)`: a followed process forked (--follow-children).
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn process_fork(ctx: RawTracePointContext) -> i32 {
    alloc::fork(ctx.arg::<u64>(1));
    0
}

/// Return of the kernel's `mmap(2)`: `(regs, ret)`, the caller's registers and the result.
#[fexit(function = "__x64_sys_mmap")]
pub fn mmap_exit(ctx: FExitContext) -> i32 {
    alloc::map_syscall(&ctx, alloc::NR_MMAP, ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

/// Return of the kernel's `munmap(2)`.
#[fexit(function = "__x64_sys_munmap")]
pub fn munmap_exit(ctx: FExitContext) -> i32 {
    alloc::map_syscall(&ctx, alloc::NR_MUNMAP, ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

/// Return of the kernel's `mremap(2)`.
#[fexit(function = "__x64_sys_mremap")]
pub fn mremap_exit(ctx: FExitContext) -> i32 {
    alloc::map_syscall(&ctx, alloc::NR_MREMAP, ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

/// Without BPF trampolines, entry of every system call: mmap, munmap and mremap of traced
/// processes are noted.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr = ctx.arg::<u64>(1);
    if alloc::is_map_syscall(nr) {
        alloc::map_enter(ctx.arg::<u64>(0), nr);
    }
    0
}

/// Without BPF trampolines, exit of every system call: a noted mapping call's result is sent.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    alloc::map_exit(&ctx, ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

/// Entry of the C library's `mmap`, `munmap`, `mremap`, `syscall`: remembers the caller, or
/// keeps the call for its return.
#[uprobe]
pub fn map_caller(ctx: ProbeContext) -> u32 {
    alloc::map_caller(&ctx);
    0
}

/// Return of a C-library mapping wrapper whose call is the record.
#[uretprobe]
pub fn map_return(ctx: RetProbeContext) -> u32 {
    alloc::map_return(&ctx);
    0
}

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn size_arg0(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    alloc::enter(&ctx, size, 0)
}

/// `operator new(size, ...)` probed at entry only (libstdc++'s: see
/// `tracer_common::COOKIE_ENTRY_ONLY`): its stack is walked at its entry.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn new_entry_only(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let size = ctx.arg::<u64>(0).unwrap_or(0);
    alloc::enter_entry_only(&ctx, size)
}

/// `calloc(nmemb, size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn calloc(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let n = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    alloc::enter(
        &ctx,
        n.wrapping_mul(size), /* overflow makes the call fail: no record */
        0,
    )
}

/// `realloc(ptr, size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn realloc(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let ptr = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    alloc::enter(&ctx, size, ptr)
}

/// `reallocarray(ptr, nmemb, size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn reallocarray(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let ptr = ctx.arg::<u64>(0).unwrap_or(0);
    let n = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    alloc::enter(
        &ctx,
        n.wrapping_mul(size), /* overflow makes the call fail: no record */
        ptr,
    )
}

/// `memalign(alignment, size)`, `aligned_alloc(alignment, size)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn size_arg1(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    alloc::enter(&ctx, size, 0)
}

/// `posix_memalign(memptr, alignment, size)`: the block comes back through `*memptr`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn posix_memalign(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let memptr = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    alloc::enter(&ctx, size, memptr)
}

/// mimalloc's `mi_heap_malloc(heap, size)` and the others whose size follows the heap.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn heap_size(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let heap = ctx.arg::<u64>(0).unwrap_or(0);
    let size = ctx.arg::<u64>(1).unwrap_or(0);
    alloc::enter_heap::<false>(&ctx, size, 0, heap)
}

/// `mi_heap_calloc(heap, count, size)`, `mi_heap_mallocn`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn heap_calloc(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let heap = ctx.arg::<u64>(0).unwrap_or(0);
    let n = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    alloc::enter_heap::<false>(&ctx, n.wrapping_mul(size), 0, heap)
}

/// `mi_heap_realloc(heap, ptr, size)` and its variants.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn heap_realloc(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let heap = ctx.arg::<u64>(0).unwrap_or(0);
    let ptr = ctx.arg::<u64>(1).unwrap_or(0);
    let size = ctx.arg::<u64>(2).unwrap_or(0);
    alloc::enter_heap::<false>(&ctx, size, ptr, heap)
}

/// `mi_heap_reallocn(heap, ptr, count, size)`, `mi_heap_recalloc`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn heap_reallocarray(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let heap = ctx.arg::<u64>(0).unwrap_or(0);
    let ptr = ctx.arg::<u64>(1).unwrap_or(0);
    let n = ctx.arg::<u64>(2).unwrap_or(0);
    let size = ctx.arg::<u64>(3).unwrap_or(0);
    alloc::enter_heap::<false>(&ctx, n.wrapping_mul(size), ptr, heap)
}

/// `mi_heap_destroy(heap)`, `mi_heap_delete(heap)`: reported at their return.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn heap_release(ctx: *mut c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    let heap = ctx.arg::<u64>(0).unwrap_or(0);
    alloc::enter(&ctx, 0, heap)
}

/// `__cxa_throw(obj, type, dtor)`: see `alloc::thrown`.
#[uprobe]
pub fn cxa_throw(ctx: ProbeContext) -> u32 {
    alloc::thrown(&ctx);
    0
}

/// A `ret` instruction of an allocator's own throwing `operator new`, or of a function it
/// tail-calls: see `alloc::left_at_ret`.
#[uprobe]
pub fn alloc_ret_site(ctx: ProbeContext) -> u32 {
    alloc::left_at_ret(&ctx);
    0
}

/// Return of every allocation function above.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    alloc::leave(alloc::Returned::from_regs(unsafe { &*ctx.regs }));
    0
}

/// `free(ptr)`.
#[uprobe]
pub fn free(ctx: ProbeContext) -> u32 {
    let ptr = ctx.arg::<u64>(0).unwrap_or(0);
    alloc::free(&ctx, ptr);
    0
}

/// `exit(status)`: the map reader reads the process's map while it still has one.
#[uprobe]
pub fn exiting(_ctx: ProbeContext) -> u32 {
    alloc::exiting();
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
