//! Maps, settings and the shared logic of the allocator probes.
//!
//! In-flight state: one slot per thread holds the *outermost* allocator call in progress, with
//! its stack pointer. A call that enters while an outer call on the same thread is still running
//! at a shallower (or the same, for a tail call) stack depth is the allocator's own
//! implementation (glibc's `realloc(NULL, n)` calls `malloc`, `reallocarray` calls `realloc`) and
//! is skipped, so it can neither clobber the outer call's state nor be counted twice. A return is
//! matched to the slot by its stack pointer (entry sp + 8), so inner returns never consume the
//! outer call's state. (A signal handler cannot re-enter glibc's malloc: it would deadlock on the
//! arena lock, so "nested means implementation" holds.)
use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32,
        bpf_get_stack, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::{
    counter, kind, stack_end, AllocFn, AllocRecord, AllocStackRecord, ExecRecord, ForkRecord,
    FreeRecord, Header, HeapRecord, InFlight, MapCall, MapCaller, MunmapRecord, COOKIE_AT_RETS,
    COOKIE_ENTRY_ONLY, COOKIE_MAP_CALL, COOKIE_MAP_NR_SHIFT, COOKIE_NESTING_FREES, MAX_STACK_DEPTH,
    SAMPLE_GAP_COUNT, STACK_AT_ENTRY_INLINE, STALE_CALL_NS,
};

use crate::unwind;

/// Sizes here are defaults; userspace sets the real ones before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
#[map]
pub(crate) static NOTICES: RingBuf = RingBuf::with_byte_size(64 << 10, 0);
#[map]
static INFLIGHT: HashMap<u64, InFlight> = HashMap::with_max_entries(65536, 0);
/// Per thread, the last block a free-like function was entered with (see [`free`]).
#[map]
static LAST_FREE: LruHashMap<u64, LastFree> = LruHashMap::with_max_entries(65536, 0);
/// Per thread, the stack of an entry-only call taken at its entry
/// (see [`COOKIE_ENTRY_ONLY`]), until the call completes.
#[map]
static ENTRY_STACKS: LruHashMap<u64, EntryStack> = LruHashMap::with_max_entries(1024, 0);
/// Where an entry stack is walked before it is stored (too large for the eBPF stack).
#[map]
static ENTRY_SCRATCH: PerCpuArray<EntryStack> = PerCpuArray::with_max_entries(1, 0);
/// Where an allocation record and its stack are put together before they are sent, at their
/// length (too large for the eBPF stack).
#[map]
static RECORD_SCRATCH: PerCpuArray<AllocStackRecord> = PerCpuArray::with_max_entries(1, 0);
#[map]
static MAP_CALLS: HashMap<u64, MapCall> = HashMap::with_max_entries(16384, 0);
#[map]
static MAP_CALLERS: LruHashMap<u64, MapCaller> = LruHashMap::with_max_entries(16384, 0);
#[map]
static FOLLOWED: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Per process (tgid), the events lost to a full ring, a full in-flight table or an unreadable
/// out-pointer: those make that process's verdicts uncertain, and only its.
#[map]
static LOST_BY_PID: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

#[unsafe(no_mangle)]
static FILTER_PID: u32 = 0;
#[unsafe(no_mangle)]
static SELF_PID: u32 = 0;
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 1 << 20;
#[unsafe(no_mangle)]
static MIN_SIZE: u64 = 0;
#[unsafe(no_mangle)]
static MAX_SIZE: u64 = u64::MAX;
#[unsafe(no_mangle)]
static FOLLOW_FORKS: u32 = 0;
#[unsafe(no_mangle)]
static TASK_TGID_OFFSET: u64 = 0;
#[unsafe(no_mangle)]
static FILTER_SET: u32 = 0;
/// See `tracer_common::globals::FILTER_COMM`.
#[unsafe(no_mangle)]
static FILTER_COMM: [u8; 16] = [0; 16];
/// Mean bytes between sampled allocations (--sample-rate); 0 records every call.
#[unsafe(no_mangle)]
static SAMPLE_RATE: u64 = 0;
/// Quantiles of the exponential distribution of mean 1, in 1/1024ths: the gaps between
/// samples are drawn from them (no floating point here). Userspace fills them.
#[unsafe(no_mangle)]
static SAMPLE_GAPS: [u32; SAMPLE_GAP_COUNT] = [1024; SAMPLE_GAP_COUNT];

/// Per thread, the bytes left until the next sampled allocation, and the unsampled call in
/// progress (see [`sample`]).
#[map]
static SAMPLERS: LruHashMap<u64, Sampler> = LruHashMap::with_max_entries(65536, 0);
/// The sampled blocks still live (address → 0): a free of any other block sends nothing.
#[map]
static SAMPLED: HashMap<u64, u8> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// The program's answer to a uprobe session: 0 runs it again at the function's return, 1
/// does not (an unsampled call, or one whose return is of no interest). Ignored by the
/// other uprobe kinds.
pub const KEEP_RETURN: u32 = 0;
pub const SKIP_RETURN: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;

const BPF_RB_AVAIL_DATA: u64 = 0;
/// A free-like call of the same block on the same thread, at the same depth or deeper, this
/// soon after another is that one's implementation (see [`free`]).
const NESTED_FREE_NS: u64 = 1_000_000;

#[repr(C)]
#[derive(Clone, Copy)]
struct Sampler {
    /// Bytes until the next sample (at or below 0: this call is sampled).
    countdown: i64,
    /// The last unsampled call: its stack pointer at entry, return address and entry address.
    /// See [`implementation_of_unsampled`].
    skip_sp: u64,
    skip_ret: u64,
    skip_ip: u64,
    /// The kernel's uretprobe trampoline in this process, learnt inside a sampled call (see
    /// [`learn_trampoline`]): what a return address reads when another tool's uretprobe took
    /// it.
    trampoline: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct LastFree {
    addr: u64,
    sp: u64,
    ts_ns: u64,
}
const EEXIST: i64 = 17;

#[repr(C)]
#[derive(Clone, Copy)]
struct EntryStack {
    nr_bytes: u64,
    /// How the stack ended ([`tracer_common::stack_end`]).
    end: u64,
    ips: [u64; MAX_STACK_DEPTH],
}

/// The stack buffers a walk writes into: 0, the allocation record's; 1, the entry stack's.
#[inline(always)]
pub(crate) fn stack_buffer(which: u64) -> Option<*mut [u64; MAX_STACK_DEPTH]> {
    if which == 0 {
        let buf = RECORD_SCRATCH.get_ptr_mut(0)?;
        Some(unsafe { core::ptr::addr_of_mut!((*buf).ips) })
    } else {
        let buf = ENTRY_SCRATCH.get_ptr_mut(0)?;
        Some(unsafe { core::ptr::addr_of_mut!((*buf).ips) })
    }
}

#[inline(always)]
pub(crate) fn bump(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *c += 1 };
    }
}

/// An event of the current process is lost: counted with `idx` and for the process.
#[inline(always)]
fn lose(idx: u32) {
    bump(idx);
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match LOST_BY_PID.get_ptr_mut(tgid) {
        // Not atomic: two CPUs may count one loss where there were two, never none.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = LOST_BY_PID.insert(tgid, 1, 0);
        }
    }
}

/// The pid_tgid of the current thread when its process is traced.
#[inline(always)]
fn traced() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let filter = unsafe { core::ptr::read_volatile(&FILTER_PID) };
    if filter != 0 && tgid != filter && !followed_child(tgid) {
        return None;
    }
    if unsafe { core::ptr::read_volatile(&FILTER_SET) } != 0
        && unsafe { FOLLOWED.get(&tgid) }.is_none()
    {
        return None;
    }
    // Tracing every process must not trace the tracer: its own allocations would feed back.
    if tgid == unsafe { core::ptr::read_volatile(&SELF_PID) } {
        return None;
    }
    Some(pid_tgid)
}

/// A process forked (directly or not) by the traced one, with --follow-children.
#[inline(always)]
fn followed_child(tgid: u32) -> bool {
    let follow = unsafe { core::ptr::read_volatile(&FOLLOW_FORKS) };
    follow != 0 && unsafe { FOLLOWED.get(&tgid) }.is_some()
}

/// CLOCK_MONOTONIC nanoseconds, the records' clock.
#[inline(always)]
pub(crate) fn ktime() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// The start of every record.
#[inline(always)]
pub(crate) fn header(kind: u8, func: u8, pid: u32, ts_ns: u64) -> Header {
    Header {
        kind,
        func,
        stack_end: 0,
        pid,
        ts_ns,
    }
}

/// Submit without waking the reader unless the watermark is reached: userspace drains on a
/// timer, and a wakeup per event would cost more than the event itself.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let watermark = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= watermark {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// An outer allocator call is running on this thread at a depth at or above `sp`.
#[inline(always)]
fn nested_in_outer_call(pid_tgid: u64, sp: u64) -> bool {
    match INFLIGHT.get_ptr(pid_tgid) {
        Some(outer) => unsafe { (*outer).sp >= sp },
        None => false,
    }
}

#[inline(always)]
pub fn enter(ctx: &ProbeContext, size: u64, ptr: u64) -> u32 {
    enter_heap::<false>(ctx, size, ptr, 0)
}

/// The entry of a function probed at entry only ([`COOKIE_ENTRY_ONLY`]: libstdc++'s
/// `operator new`), whose stack is walked here. Only this program has the unwind-table walk
/// at entry: each program with it takes the verifier a quarter of a second to check.
#[inline(always)]
pub fn enter_entry_only(ctx: &ProbeContext, size: u64) -> u32 {
    enter_heap::<true>(ctx, size, 0, 0)
}

/// An allocator call's entry; `heap`: the heap the caller named (mimalloc's `mi_heap_*`).
/// Attached as a uprobe session (sampled mode), the same program runs at the return of the
/// calls it keeps: that return is handed to [`leave`]. Returns [`KEEP_RETURN`] or
/// [`SKIP_RETURN`].
#[inline(always)]
/// `BY_TABLES`: an entry-only call's stack may be walked by unwind tables (see
/// [`enter_entry_only`]); else by frame pointers.
pub fn enter_heap<const BY_TABLES: bool>(
    ctx: &ProbeContext,
    size: u64,
    ptr: u64,
    heap: u64,
) -> u32 {
    let Some(pid_tgid) = traced() else {
        return SKIP_RETURN;
    };
    let regs = unsafe { &*ctx.regs };
    let sp = regs.rsp;
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let func = cookie as u8;
    let entry_only = cookie & COOKIE_ENTRY_ONLY != 0;
    let rate = unsafe { core::ptr::read_volatile(&SAMPLE_RATE) };
    let mut slot = INFLIGHT.get_ptr_mut(pid_tgid);
    if let Some(outer) = slot {
        // A session's return: one word above its entry's stack pointer, anywhere but at the
        // function's entry. (Not told by the return address read at entry: a tail call from
        // a function whose return another uprobe took finds the kernel's trampoline there.)
        let (at_return, at_inner_return) = unsafe {
            (
                (*outer).entry_ip != 0
                    && (*outer).sp.wrapping_add(8) == sp
                    && (*outer).entry_ip != regs.rip,
                (*outer).entry_only != 0
                    && (*outer).inner_ip != 0
                    && (*outer).inner_sp.wrapping_add(8) == sp
                    && (*outer).inner_ip != regs.rip,
            )
        };
        if at_return || at_inner_return {
            // The return of the call in the slot, in its own function's program; another
            // function's return there is a call it tail-called (glibc's realloc(NULL, n) jumps
            // to malloc), which the kernel may report too when another tool's uretprobe shares
            // the frame: nothing to do.
            let own = unsafe {
                if at_inner_return {
                    func == (*outer).inner_func
                } else {
                    func == (*outer).func
                        || (is_heap_release(func) && is_heap_release((*outer).func))
                }
            };
            if own {
                leave(Returned::from_regs(regs));
            }
            return KEEP_RETURN;
        }
        if rate != 0 && ktime().wrapping_sub(unsafe { (*outer).ts_ns }) > STALE_CALL_NS {
            // Its return was missed: everything after would look nested in it.
            bump(counter::UNMATCHED_RETURN);
            let _ = INFLIGHT.remove(pid_tgid);
            slot = None;
        }
    }
    if let Some(outer) = slot {
        if unsafe { (*outer).sp } >= sp {
            // An entry-only call is completed by the first call nested in it that has a
            // return probe (libstdc++'s operator new by its malloc).
            unsafe {
                if (*outer).entry_only != 0 && (*outer).inner_sp == 0 && !entry_only {
                    (*outer).inner_sp = sp;
                    (*outer).inner_ptr = ptr;
                    (*outer).inner_func = func;
                    if rate != 0 {
                        (*outer).inner_ip = regs.rip;
                    }
                    return KEEP_RETURN;
                }
            }
            // mi_heap_destroy of a heap it may not destroy (one that may hold reclaimed pages)
            // deletes it instead: its blocks live on.
            unsafe {
                if func == AllocFn::HeapDelete as u8
                    && (*outer).func == AllocFn::HeapDestroy as u8
                    && (*outer).ptr == ptr
                {
                    (*outer).func = func;
                }
            }
            bump(counter::NESTED);
            if rate != 0 && unsafe { (*outer).at_rets } == 0 {
                learn_trampoline(pid_tgid, unsafe { (*outer).sp });
            }
            return SKIP_RETURN;
        }
    }
    let mut release_only = false;
    // A heap's destruction is never sampled: every block of it goes.
    let heap_release = is_heap_release(func);
    if rate != 0 && !heap_release {
        match sample(pid_tgid, (sp, regs.rip), size, func, ptr, rate) {
            Sample::Skip => return SKIP_RETURN,
            Sample::ReleaseOnly => release_only = true,
            Sample::Take => {}
        }
    }
    // Out-of-range calls keep their slot so that the calls nested in them are still known
    // as nested; their return does no stack walk and sends nothing but a release.
    let min = unsafe { core::ptr::read_volatile(&MIN_SIZE) };
    let max = unsafe { core::ptr::read_volatile(&MAX_SIZE) };
    // An entry-only call's return address: its stack's first frame.
    let ret = if entry_only {
        unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
    } else {
        0
    };
    let filtered = size < min || size > max || release_only;
    let stack_id = if entry_only && !filtered {
        entry_stack::<BY_TABLES>(ctx, pid_tgid, ret)
    } else {
        0
    };
    let slot = InFlight {
        sp,
        size,
        ptr,
        func,
        filtered: filtered as u8,
        nesting_frees: (cookie & COOKIE_NESTING_FREES != 0) as u8,
        entry_only: entry_only as u8,
        stack_id,
        heap,
        ret,
        inner_sp: 0,
        inner_ptr: 0,
        inner_func: 0,
        at_rets: (cookie & COOKIE_AT_RETS != 0) as u8,
        _pad: [0; 6],
        inner_ip: 0,
        entry_ip: if rate != 0 { regs.rip } else { 0 },
        ts_ns: if rate != 0 { ktime() } else { 0 },
    };
    if INFLIGHT.insert(pid_tgid, slot, 0).is_err() {
        lose(counter::INFLIGHT_FULL);
        return SKIP_RETURN;
    }
    KEEP_RETURN
}

/// Inside a sampled call: the word its return address was in holds the kernel's uretprobe
/// trampoline, which replaced it for the call (see [`implementation_of_unsampled`]).
#[inline(always)]
fn learn_trampoline(pid_tgid: u64, entry_sp: u64) {
    if let Some(s) = SAMPLERS.get_ptr_mut(pid_tgid) {
        if let Ok(t) = unsafe { bpf_probe_read_user(entry_sp as *const u64) } {
            unsafe { (*s).trampoline = t };
        }
    }
}

#[inline(always)]
fn is_heap_release(func: u8) -> bool {
    func == AllocFn::HeapDestroy as u8 || func == AllocFn::HeapDelete as u8
}

/// What sampling makes of a call.
enum Sample {
    /// Not sampled: no return probe, no record.
    Skip,
    /// Not sampled, but it takes a sampled block away (a realloc of one): its return sends
    /// the release alone.
    ReleaseOnly,
    /// Sampled: recorded as in a full trace, standing for 1 / (1 - exp(-size / rate)) calls
    /// of its size (userspace weighs it so).
    Take,
}

/// Sampling by bytes (as heapprofd, tcmalloc and Go do): each thread counts down an
/// exponentially distributed number of bytes of mean `rate`; the call that reaches zero is
/// sampled and the count starts again. A call of `size` bytes is then sampled with
/// probability 1 - exp(-size / rate), whatever came before it. `(sp, ip)`: the call's stack
/// pointer and address at entry.
#[inline(always)]
fn sample(pid_tgid: u64, (sp, ip): (u64, u64), size: u64, func: u8, ptr: u64, rate: u64) -> Sample {
    let s = match SAMPLERS.get_ptr_mut(pid_tgid) {
        Some(s) => s,
        None => {
            let fresh = Sampler {
                countdown: sample_gap(rate),
                skip_sp: 0,
                skip_ret: 0,
                skip_ip: 0,
                trampoline: 0,
            };
            if SAMPLERS.insert(pid_tgid, fresh, 0).is_err() {
                return Sample::Skip;
            }
            match SAMPLERS.get_ptr_mut(pid_tgid) {
                Some(s) => s,
                None => return Sample::Skip,
            }
        }
    };
    let ret = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
    unsafe {
        if implementation_of_unsampled(&*s, sp, ip, ret) {
            return Sample::Skip;
        }
        (*s).countdown -= size as i64;
        if (*s).countdown > 0 {
            (*s).skip_sp = sp;
            (*s).skip_ret = ret;
            (*s).skip_ip = ip;
            let moves = func == AllocFn::Realloc as u8 || func == AllocFn::ReallocArray as u8;
            if moves && ptr != 0 && SAMPLED.get_ptr(ptr).is_some() {
                return Sample::ReleaseOnly;
            }
            return Sample::Skip;
        }
        (*s).skip_sp = 0;
        (*s).countdown = sample_gap(rate);
    }
    Sample::Take
}

/// How far from an allocator function's entry the calls it makes itself come from.
const IMPLEMENTATION_SPAN: u64 = 64 << 10;

/// Whether a call entered at `sp`, at address `ip`, returning to `ret`, is the implementation
/// of the thread's last unsampled call (glibc's realloc calling or tail-calling malloc,
/// operator new calling malloc), whose bytes were counted already. Without a return probe
/// on the unsampled call, that it is still in progress is told by its return address still
/// in its slot and, for a call made from inside it, by a return address within its code; a
/// tail call reuses the slot and goes to another function.
#[inline(always)]
fn implementation_of_unsampled(s: &Sampler, sp: u64, ip: u64, ret: u64) -> bool {
    if s.skip_sp == 0 || s.skip_sp < sp {
        return false;
    }
    if s.skip_sp == sp {
        // A tail call finds the unsampled call's return address, or the trampoline that
        // another tool's uretprobe on that call put there.
        return ip != s.skip_ip && (ret == s.skip_ret || (ret == s.trampoline && ret != 0));
    }
    ret.wrapping_sub(s.skip_ip) < IMPLEMENTATION_SPAN
        && unsafe { bpf_probe_read_user(s.skip_sp as *const u64) }.unwrap_or(0) == s.skip_ret
}

/// An exponentially distributed gap of mean `rate` bytes (at least 1).
#[inline(always)]
fn sample_gap(rate: u64) -> i64 {
    let i = (unsafe { bpf_get_prandom_u32() } as usize) & (SAMPLE_GAP_COUNT - 1);
    let q = unsafe { core::ptr::read_volatile(&SAMPLE_GAPS[i]) } as u64;
    // rate <= 2^40 (the command line's bound) and q < 2^13: no overflow.
    ((rate.wrapping_mul(q) >> 10) as i64).max(1)
}

/// The stack of an entry-only call, at its entry, kept per thread until the call completes:
/// the caller's return address `ret` (read at the stack pointer: a probe on a function's first
/// instruction, `endbr64` or `push %rbp`, runs before the function's own frame exists) and then
/// the caller's frame-pointer chain, so the stack is the one a return probe would have seen.
#[inline(always)]
fn entry_stack<const BY_TABLES: bool>(ctx: &ProbeContext, pid_tgid: u64, ret: u64) -> i32 {
    let Some(scratch) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        bump(counter::STACK_FAILED);
        return -1;
    };
    let regs = unsafe { &*ctx.regs };
    let (n, end) = if BY_TABLES && unwind::by_tables() {
        // The caller's frame as it will be at the return: the return address popped.
        unwind::walk(1, ret, regs.rsp + 8, regs.rbp)
    } else {
        unsafe { walk_user_stack(ret, regs.rbp, &mut (*scratch).ips) }
    };
    unsafe {
        (*scratch).nr_bytes = (n * 8) as u64;
        (*scratch).end = end as u64;
    }
    if ENTRY_STACKS
        .insert(pid_tgid, unsafe { &*scratch }, 0)
        .is_err()
    {
        bump(counter::STACK_FAILED);
        return -1;
    }
    STACK_AT_ENTRY_INLINE
}

/// A thread's registers just after an allocator call returned, as [`leave`] needs them.
#[derive(Clone, Copy)]
pub struct Returned {
    /// The return address the call went back to (the caller's next instruction).
    pub ip: u64,
    /// The stack pointer past the return address.
    pub sp: u64,
    pub bp: u64,
    /// The call's return value.
    pub ret: u64,
}

impl Returned {
    /// At a return probe (or a uprobe session's return): the registers as they are.
    #[inline(always)]
    pub fn from_regs(regs: &aya_ebpf::bindings::pt_regs) -> Returned {
        Returned {
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
            ret: regs.rax,
        }
    }
}

/// A uprobe on a `ret` instruction of an allocator's own `operator new` (or of a function it
/// tail-calls), which has no return probe: see `collector::returns` in tracer. At the `ret`,
/// the stack pointer is the call's entry stack pointer exactly when this is the return of the
/// call in flight; the return address is still the caller's, read from the stack, and the
/// value is in rax.
#[inline(always)]
pub fn left_at_ret(ctx: &ProbeContext) {
    let Some(pid_tgid) = traced() else { return };
    let regs = unsafe { &*ctx.regs };
    let Some(slot) = INFLIGHT.get_ptr(pid_tgid) else {
        return;
    };
    if unsafe { (*slot).sp != regs.rsp || (*slot).at_rets == 0 } {
        // Another call's ret: one nested in the call, or a function with a return probe
        // (tcmalloc's malloc) that tail-calls the same slow path.
        return;
    }
    let Ok(ip) = (unsafe { bpf_probe_read_user(regs.rsp as *const u64) }) else {
        return;
    };
    leave(Returned {
        ip,
        sp: regs.rsp + 8,
        bp: regs.rbp,
        ret: regs.rax,
    });
}

#[inline(always)]
pub fn leave(after: Returned) {
    let Some(pid_tgid) = traced() else { return };
    let sp = after.sp;
    let Some(slot) = INFLIGHT.get_ptr(pid_tgid) else {
        return;
    };
    let call = unsafe { *slot };
    let entry_only = call.entry_only != 0;
    if entry_only && call.inner_sp != 0 && call.inner_sp.wrapping_add(8) == sp {
        // The nested call that completes an entry-only call returns: handled below.
    } else if entry_only || call.sp.wrapping_add(8) != sp {
        // An inner (skipped) call's return, or state left by a call whose return was missed.
        if call.sp.wrapping_add(8) > sp {
            return;
        }
        bump(counter::UNMATCHED_RETURN);
        let _ = INFLIGHT.remove(pid_tgid);
        return;
    }
    let _ = INFLIGHT.remove(pid_tgid);
    if call.func == AllocFn::HeapDestroy as u8 || call.func == AllocFn::HeapDelete as u8 {
        heap_released(pid_tgid, call.func, call.ptr);
        return;
    }
    let ret = after.ret;

    let mut addr = ret;
    // What the returning call is: an entry-only call's result is its nested call's.
    let (ret_func, ret_ptr) = if entry_only {
        (call.inner_func, call.inner_ptr)
    } else {
        (call.func, call.ptr)
    };
    if ret_func == AllocFn::PosixMemalign as u8 {
        // Returns 0 on success, with the block stored through the out-pointer.
        addr = 0;
        if ret as u32 == 0 {
            match unsafe { bpf_probe_read_user(ret_ptr as *const u64) } {
                Ok(a) => addr = a,
                Err(_) => {
                    lose(counter::MEMPTR_FAULT);
                    return;
                }
            }
        }
    }
    let moves = !entry_only
        && (call.func == AllocFn::Realloc as u8 || call.func == AllocFn::ReallocArray as u8);
    let old_addr = if moves {
        call.ptr
    } else if entry_only {
        call.ret
    } else {
        0
    };
    // realloc(p, 0) frees p and returns NULL; any other NULL is a failure that changed nothing.
    let released = moves && addr == 0 && call.size == 0 && old_addr != 0;
    if addr == 0 && !released {
        bump(counter::FAILED);
        if entry_only && call.stack_id == STACK_AT_ENTRY_INLINE {
            let _ = ENTRY_STACKS.remove(pid_tgid);
        }
        return;
    }
    if call.filtered != 0 {
        bump(counter::FILTERED);
        // A successful realloc out of range still took its input block away (moved, or
        // resized out of the range): send that release alone.
        if !moves || old_addr == 0 {
            return;
        }
        addr = 0;
    }
    bump(counter::ALLOCS);

    // No stack: a release, or an entry-only call whose stack could not be kept.
    let stack_id = if entry_only { call.stack_id } else { -1 };
    if unsafe { core::ptr::read_volatile(&SAMPLE_RATE) } != 0 {
        // The sampled blocks live: the frees of these alone are sent.
        if moves && old_addr != 0 {
            let _ = SAMPLED.remove(&old_addr);
        }
        if addr != 0 && SAMPLED.insert(&addr, &0, 0).is_err() {
            lose(counter::SAMPLED_FULL);
        }
    }
    if addr != 0 && call.nesting_frees != 0 {
        // This thread got the block back: a later free of it is a new free, not the
        // implementation of the earlier one.
        if let Some(last) = LAST_FREE.get_ptr_mut(pid_tgid) {
            unsafe {
                if (*last).addr == addr {
                    (*last).addr = 0;
                }
            }
        }
    }
    let record = AllocRecord {
        hdr: header(kind::ALLOC, call.func, (pid_tgid >> 32) as u32, ktime()),
        tid: pid_tgid as u32,
        stack_id,
        addr,
        old_addr,
        size: call.size,
        weight: 1,
        heap: call.heap,
    };
    if !entry_only && addr != 0 {
        // Taken at the return: the walk starts at the caller's return address, so the
        // immediate caller is always the first frame whatever the allocator's prologue is.
        send_with_walked_stack(&after, record);
        return;
    }
    if entry_only && stack_id == STACK_AT_ENTRY_INLINE {
        send_with_entry_stack(pid_tgid, record);
        return;
    }
    send(record, counter::RING_FULL_ALLOC);
}

/// Sends `record` on the event ring, waking the reader only past the watermark; a full ring
/// counts it lost under `lost` (see [`lose`]).
#[inline(always)]
fn send<T: 'static>(record: T, lost: u32) {
    let flags = wakeup_flags();
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(flags);
        }
        None => lose(lost),
    }
}

/// `__cxa_throw`: an exception is thrown. Thrown inside the allocator call in flight on this
/// thread (operator new's `bad_alloc`), the call never returns: its slot goes, or the calls
/// made after the catch, deeper than it was, would look nested in it. (No return probe is in
/// its frame: an allocator's own throwing `operator new` is seen returning at its `ret`
/// instructions, libstdc++'s at its malloc's return; see `left_at_ret`.)
#[inline(always)]
pub fn thrown(ctx: &ProbeContext) {
    let Some(pid_tgid) = traced() else { return };
    let sp = unsafe { (*ctx.regs).rsp };
    let Some(slot) = INFLIGHT.get_ptr(pid_tgid) else {
        return;
    };
    let call = unsafe { *slot };
    if call.sp <= sp {
        return; // not inside the call
    }
    let _ = INFLIGHT.remove(pid_tgid);
    bump(counter::THROWN);
    if call.entry_only != 0 && call.stack_id == STACK_AT_ENTRY_INLINE {
        let _ = ENTRY_STACKS.remove(pid_tgid);
    }
}

/// A heap went, at the return of the call that released it (see `enter_heap`).
#[inline(always)]
fn heap_released(pid_tgid: u64, func: u8, heap: u64) {
    bump(counter::FREES);
    let record = HeapRecord {
        hdr: header(kind::HEAP_RELEASE, func, (pid_tgid >> 32) as u32, ktime()),
        heap,
    };
    send(record, counter::RING_FULL_FREE);
}

/// An allocation record with its user stack inline, sent at its length.
///
/// The stack is walked here by frame pointers, not by the kernel's stack helpers: on this
/// machine's kernel those cost about a microsecond per walk (measured with
/// `kernel.bpf_stats_enabled`: 1.58 us against 0.15 us for this walk of the same frames),
/// most of the return probe's time.
#[inline(always)]
fn send_with_walked_stack(after: &Returned, mut record: AllocRecord) {
    let Some(buf) = RECORD_SCRATCH.get_ptr_mut(0) else {
        bump(counter::STACK_FAILED);
        send(record, counter::RING_FULL_ALLOC);
        return;
    };
    record.hdr.kind = kind::ALLOC_STACK;
    unsafe { (*buf).alloc = record };
    let (n, end) = if unwind::by_tables() {
        unwind::walk(0, after.ip, after.sp, after.bp)
    } else {
        unsafe { walk_user_stack(after.ip, after.bp, &mut (*buf).ips) }
    };
    unsafe {
        (*buf).alloc.hdr.stack_end = end;
        (*buf).nr_bytes = (n * 8) as u64;
    }
    output_alloc_stack(buf, n);
}

/// Sends the allocation record in `buf` with its first `n` frames: only those bytes go on the
/// ring.
#[inline(always)]
fn output_alloc_stack(buf: *mut AllocStackRecord, n: usize) {
    let len = core::mem::size_of::<AllocRecord>() + 8 + n.min(MAX_STACK_DEPTH) * 8;
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const u8, len) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        lose(counter::RING_FULL_ALLOC);
    }
}

/// The user stack from `ip` (the innermost frame) up the frame-pointer chain from `fp`, into
/// `ips`: how many frames, and how the walk ended. The walk ends at a null frame pointer (the
/// outermost frame, which `_start` and thread starts mark so), an unreadable or misaligned
/// one, or `ips`' end.
#[inline(always)]
fn walk_user_stack(ip: u64, mut fp: u64, ips: &mut [u64; MAX_STACK_DEPTH]) -> (usize, u16) {
    ips[0] = ip;
    let mut n = 1;
    while n < MAX_STACK_DEPTH {
        if fp == 0 || fp & 7 != 0 {
            break;
        }
        // [fp] = the caller's frame pointer, [fp + 8] = the return address into the caller.
        let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        if frame[1] == 0 {
            break;
        }
        ips[n] = frame[1];
        n += 1;
        fp = frame[0];
    }
    let end = if n == MAX_STACK_DEPTH {
        stack_end::DEPTH
    } else {
        stack_end::FRAME_POINTERS
    };
    (n, end)
}

/// An entry-only call's record with the stack kept aside at its entry (see [`entry_stack`]).
#[inline(always)]
fn send_with_entry_stack(pid_tgid: u64, mut record: AllocRecord) {
    let Some(saved) = ENTRY_STACKS.get_ptr(pid_tgid) else {
        record.stack_id = -(EEXIST as i32);
        bump(counter::STACK_FAILED);
        send(record, counter::RING_FULL_ALLOC);
        return;
    };
    let Some(buf) = RECORD_SCRATCH.get_ptr_mut(0) else {
        let _ = ENTRY_STACKS.remove(pid_tgid);
        return;
    };
    record.hdr.kind = kind::ALLOC_STACK;
    let n = unsafe {
        record.hdr.stack_end = (*saved).end as u16;
        (*buf).alloc = record;
        (*buf).nr_bytes = (*saved).nr_bytes;
        // One helper call: a plain assignment becomes a byte-by-byte memmove whose two loops
        // the verifier walks through, 1,016 bytes each, in every program that has this path.
        let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            core::ptr::addr_of_mut!((*buf).ips) as *mut core::ffi::c_void,
            (8 * MAX_STACK_DEPTH) as u32,
            core::ptr::addr_of!((*saved).ips) as *const core::ffi::c_void,
        );
        ((*saved).nr_bytes / 8) as usize
    };
    let _ = ENTRY_STACKS.remove(pid_tgid);
    output_alloc_stack(buf, n);
}

/// Entry of a free-like function (`free`, `sdallocx`, `operator delete`...).
///
/// Free-like functions often call one another (libstdc++'s sized delete calls delete, which
/// calls free; mimalloc's delete calls `mi_free`), and all of them are probed, with no return
/// probe to say when the outer one ends. A free of the block the same thread entered a
/// free-like function with last, at that call's depth or deeper (a tail call keeps the
/// depth), within [`NESTED_FREE_NS`], is that call's implementation: skipped. The thread's
/// entry is cleared when an allocation on it returns that block again, so a block freed,
/// reallocated and freed again is two frees.
#[inline(always)]
pub fn free(ctx: &ProbeContext, ptr: u64) {
    if ptr == 0 {
        return;
    }
    let Some(pid_tgid) = traced() else { return };
    if unsafe { core::ptr::read_volatile(&SAMPLE_RATE) } != 0 {
        // Sampled: only a sampled block's free is of interest (one lookup for the others).
        if SAMPLED.get_ptr(ptr).is_none() {
            return;
        }
        let _ = SAMPLED.remove(&ptr);
    }
    let sp = unsafe { (*ctx.regs).rsp };
    if nested_in_outer_call(pid_tgid, sp) {
        // realloc(p, 0) freeing p itself: the realloc record says so.
        bump(counter::NESTED);
        return;
    }
    let now = ktime();
    let nesting = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } & COOKIE_NESTING_FREES != 0;
    match LAST_FREE.get_ptr_mut(pid_tgid).filter(|_| nesting) {
        Some(last) => unsafe {
            if (*last).addr == ptr
                && (*last).sp >= sp
                && now.wrapping_sub((*last).ts_ns) < NESTED_FREE_NS
            {
                bump(counter::NESTED);
                return;
            }
            *last = LastFree {
                addr: ptr,
                sp,
                ts_ns: now,
            };
        },
        None if nesting => {
            let _ = LAST_FREE.insert(
                pid_tgid,
                LastFree {
                    addr: ptr,
                    sp,
                    ts_ns: now,
                },
                0,
            );
        }
        None => {}
    }
    bump(counter::FREES);
    let record = FreeRecord {
        hdr: header(
            kind::FREE,
            AllocFn::Free as u8,
            (pid_tgid >> 32) as u32,
            now,
        ),
        addr: ptr,
    };
    send(record, counter::RING_FULL_FREE);
}

/// `sched_process_fork` (current: the parent). A new process forked by a followed one is
/// followed from its first instruction: it is in the table before it can run. Threads (same
/// tgid) need nothing.
#[inline(always)]
pub fn fork(child_task: u64) {
    if unsafe { core::ptr::read_volatile(&FOLLOW_FORKS) } == 0 {
        return;
    }
    let Some(pid_tgid) = traced() else { return };
    let parent = (pid_tgid >> 32) as u32;
    let off = unsafe { core::ptr::read_volatile(&TASK_TGID_OFFSET) };
    let Ok(child) = (unsafe { bpf_probe_read_kernel((child_task + off) as *const u32) }) else {
        return;
    };
    if child == parent || child == 0 {
        return;
    }
    if FOLLOWED.insert(&child, &parent, 0).is_err() {
        bump(counter::FOLLOW_FULL);
        return;
    }
    bump(counter::FORKS_FOLLOWED);
    let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
        bump(counter::RING_FULL_FORK);
        return;
    };
    entry.write(ForkRecord {
        hdr: header(kind::FORK, 0, child, ktime()),
        parent,
        _pad: 0,
    });
    // Woken at once: the child's symbols are its parent's until it execs, read while both live.
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
}

// ---- memory mappings -------------------------------------------------------------------
//
// The syscalls themselves are traced (fexit of the kernel's mmap, munmap and mremap functions,
// so no other system call runs a program; on kernels without BPF trampolines, the sys_enter and
// sys_exit raw tracepoints, which every system call of every process pays for; --no-mmap leaves
// them and the wrapper probes off), so a mapping made
// without the C library (Go's runtime, a raw syscall) is seen too. A mapping made inside an
// allocator call on the same thread (an arena, a large malloc block) is the allocator's: not
// recorded, so it is never counted twice. The C library's wrappers are probed at entry only
// to learn the caller: a syscall's user stack starts inside the wrapper, whose frame (or lack
// of one) hides its caller from a frame-pointer walk.

pub const NR_MMAP: u64 = 9;
pub const NR_MUNMAP: u64 = 11;
pub const NR_MREMAP: u64 = 25;
const MAP_ANONYMOUS: u64 = 0x20;
const PROT_EXEC: u64 = 0x4;
/// Offsets in x86_64's `struct pt_regs` (a kernel ABI): the syscall's arguments and the user
/// stack pointer.
const REGS_R10: u64 = 56;
const REGS_DX: u64 = 96;
const REGS_SI: u64 = 104;
const REGS_DI: u64 = 112;
const REGS_SP: u64 = 152;
/// How far below the wrapper's entry the syscall may find the stack pointer (mremap's frame).
const WRAPPER_FRAME_MAX: u64 = 512;

#[inline(always)]
pub fn is_map_syscall(nr: u64) -> bool {
    nr == NR_MMAP || nr == NR_MUNMAP || nr == NR_MREMAP
}

#[inline(always)]
fn reg(regs: u64, off: u64) -> u64 {
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0)
}

/// Entry of a C-library mapping wrapper (`mmap`, `munmap`, `mremap`). Its caller
/// is remembered for the system call's own probe; or, where nothing probes the system calls
/// themselves ([`COOKIE_MAP_CALL`]), the call is kept for the wrapper's return.
#[inline(always)]
pub fn map_caller(ctx: &ProbeContext) {
    let Some(pid_tgid) = traced() else { return };
    let sp = unsafe { (*ctx.regs).rsp };
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    if cookie & COOKIE_MAP_CALL != 0 {
        // Function arguments: mmap(addr, len, prot, flags), munmap(addr, len),
        // mremap(addr, old_len, new_len).
        let arg = |n: usize| ctx.arg::<u64>(n).unwrap_or(0);
        let nr = (cookie >> COOKIE_MAP_NR_SHIFT) & 0xffff;
        if let Some(mut call) = map_call(pid_tgid, sp, [nr, arg(0), arg(1), arg(2), arg(3)]) {
            call.by_wrapper = 1;
            if MAP_CALLS.insert(&pid_tgid, &call, 0).is_err() {
                lose(counter::INFLIGHT_FULL);
            }
        }
        return;
    }
    let Ok(ret) = (unsafe { bpf_probe_read_user(sp as *const u64) }) else {
        return;
    };
    let _ = MAP_CALLERS.insert(&pid_tgid, &MapCaller { sp, ret }, 0);
}

/// Return of a C-library mapping wrapper whose call was kept ([`COOKIE_MAP_CALL`]): the stack,
/// taken here, starts at the caller.
#[inline(always)]
pub fn map_return(ctx: &RetProbeContext) {
    let Some(pid_tgid) = traced() else { return };
    let Some(call) = (unsafe { MAP_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    if call.by_wrapper == 0 {
        return;
    }
    let _ = MAP_CALLS.remove(&pid_tgid);
    let ret: u64 = ctx.ret();
    let regs = unsafe { &*ctx.regs };
    map_done::<_, true>(ctx, pid_tgid, &call, 0, ret, (regs.rip, regs.rsp, regs.rbp));
}

/// The mapping a system call `[nr, a0, a1, a2, a3]` made at stack pointer `sp` makes, if it
/// is one tracer records: anonymous accessible mmaps, munmaps, mremaps, outside any allocator
/// call.
#[inline(always)]
fn map_call(pid_tgid: u64, sp: u64, call: [u64; 5]) -> Option<MapCall> {
    let [nr, a0, a1, a2, a3] = call;
    if !is_map_syscall(nr) {
        return None;
    }
    if nested_in_outer_call(pid_tgid, sp) {
        // The allocator's own mapping (an arena, a large block): its blocks are the record.
        bump(counter::NESTED);
        let _ = MAP_CALLERS.remove(&pid_tgid);
        return None;
    }
    let (addr, len) = match nr {
        NR_MMAP => {
            // Anonymous and accessible: a reservation (PROT_NONE) is address space, not memory.
            let (prot, flags) = (a2, a3);
            if flags & MAP_ANONYMOUS == 0 || prot == 0 {
                return None;
            }
            (0, a1)
        }
        NR_MUNMAP => (a0, a1),
        _ => (a0, a2),
    };
    Some(MapCall {
        nr,
        addr,
        len,
        by_wrapper: 0,
    })
}

/// A system call's mapping, from the user registers it saved.
#[inline(always)]
fn syscall_call(pid_tgid: u64, regs: u64, nr: u64) -> Option<MapCall> {
    let r = |off| reg(regs, off);
    let sp = r(REGS_SP);
    map_call(
        pid_tgid,
        sp,
        [nr, r(REGS_DI), r(REGS_SI), r(REGS_DX), r(REGS_R10)],
    )
}

/// `sys_enter` (the fallback without BPF trampolines): a traced mapping call is kept until its
/// exit.
#[inline(always)]
pub fn map_enter(regs: u64, nr: u64) {
    let Some(pid_tgid) = traced() else { return };
    let Some(call) = syscall_call(pid_tgid, regs, nr) else {
        return;
    };
    // A wrapper that keeps its own call (see `map_caller`) is left to its return.
    if MAP_CALLS
        .insert(&pid_tgid, &call, BPF_NOEXIST as u64)
        .is_err()
        && unsafe { MAP_CALLS.get(&pid_tgid) }.is_none()
    {
        lose(counter::INFLIGHT_FULL);
    }
}

/// `sys_exit` (the fallback): a kept mapping call's result.
#[inline(always)]
pub fn map_exit<C: EbpfContext>(ctx: &C, regs: u64, ret: u64) {
    let Some(pid_tgid) = traced() else { return };
    let Some(call) = (unsafe { MAP_CALLS.get(&pid_tgid) }).copied() else {
        return;
    };
    if call.by_wrapper != 0 {
        return;
    }
    let _ = MAP_CALLS.remove(&pid_tgid);
    map_done::<_, false>(ctx, pid_tgid, &call, reg(regs, REGS_SP), ret, (0, 0, 0));
}

/// fexit of the mapping system call `nr` itself: its arguments and result at once, and only
/// that system call pays (other processes' system calls run no program).
#[inline(always)]
pub fn map_syscall<C: EbpfContext>(ctx: &C, nr: u64, regs: u64, ret: u64) {
    let Some(pid_tgid) = traced() else { return };
    if nr == NR_MMAP
        && ret <= (-4096i64) as u64
        && reg(regs, REGS_DX) & PROT_EXEC != 0
        && reg(regs, REGS_R10) & MAP_ANONYMOUS == 0
    {
        crate::unwind::code_mapped(ret);
        return;
    }
    let Some(call) = syscall_call(pid_tgid, regs, nr) else {
        return;
    };
    map_done::<_, false>(ctx, pid_tgid, &call, reg(regs, REGS_SP), ret, (0, 0, 0));
}

/// A recorded mapping call returned `ret`: the mapping (with its stack) or unmapping is sent.
/// `sp`: the stack pointer of the system call, whose stack starts in the C library's wrapper
/// when one was called (0: the stack is taken at the wrapper's return, at its caller).
/// `AT_RETURN`: at the wrapper's return, whose user registers `(ip, sp, bp)` are `at`: the
/// stack is walked from there by the unwind tables when stacks are (the system calls' own
/// programs keep the kernel's frame-pointer walk: the mapping lookup the tables need is not
/// allowed in every one of them).
#[inline(always)]
fn map_done<C: EbpfContext, const AT_RETURN: bool>(
    ctx: &C,
    pid_tgid: u64,
    call: &MapCall,
    sp: u64,
    ret: u64,
    at: (u64, u64, u64),
) {
    // -4095..-1 are errors: nothing changed.
    if ret > (-4096i64) as u64 {
        let _ = MAP_CALLERS.remove(&pid_tgid);
        return;
    }
    let pid = (pid_tgid >> 32) as u32;
    let ts_ns = ktime();
    if call.nr == NR_MUNMAP {
        let _ = MAP_CALLERS.remove(&pid_tgid);
        let Some(mut entry) = EVENTS.reserve::<MunmapRecord>(0) else {
            lose(counter::RING_FULL_MAP);
            return;
        };
        entry.write(MunmapRecord {
            hdr: header(kind::MUNMAP, AllocFn::Mmap as u8, pid, ts_ns),
            addr: call.addr,
            len: call.len,
        });
        entry.submit(wakeup_flags());
        return;
    }
    let moves = call.nr == NR_MREMAP;
    let flags = wakeup_flags();
    let Some(mut entry) = EVENTS.reserve::<AllocStackRecord>(0) else {
        lose(counter::RING_FULL_MAP);
        let _ = MAP_CALLERS.remove(&pid_tgid);
        return;
    };
    bump(counter::MAPS);
    let caller = if sp == 0 {
        None
    } else {
        MAP_CALLERS.get_ptr(&pid_tgid)
    };
    let p = entry.as_mut_ptr();
    unsafe {
        (*p).alloc = AllocRecord {
            hdr: Header {
                kind: kind::ALLOC_STACK,
                func: if moves {
                    AllocFn::Mremap
                } else {
                    AllocFn::Mmap
                } as u8,
                stack_end: 0,
                pid,
                ts_ns,
            },
            tid: pid_tgid as u32,
            stack_id: -1,
            addr: ret,
            old_addr: if moves { call.addr } else { 0 },
            size: call.len,
            weight: 1,
            heap: 0,
        };
    }
    if AT_RETURN && unwind::by_tables() {
        let (n, end) = unwind::walk(0, at.0, at.1, at.2);
        unsafe {
            if let Some(ips) = stack_buffer(0) {
                // One helper call, as for the entry stacks (see `send_with_entry_stack`).
                let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    (*p).ips.as_mut_ptr() as *mut core::ffi::c_void,
                    (8 * MAX_STACK_DEPTH) as u32,
                    ips as *const core::ffi::c_void,
                );
            }
            (*p).alloc.hdr.stack_end = end;
            (*p).nr_bytes = (n * 8) as u64;
        }
        let _ = MAP_CALLERS.remove(&pid_tgid);
        entry.submit(flags);
        return;
    }
    unsafe {
        let n = bpf_get_stack(
            ctx.as_ptr(),
            (*p).ips.as_mut_ptr() as *mut core::ffi::c_void,
            (8 * MAX_STACK_DEPTH) as u32,
            BPF_F_USER_STACK as u64,
        );
        (*p).nr_bytes = if n > 0 { n as u64 } else { 0 };
        // Called through the C library's wrapper: the stack starts at the wrapper's caller.
        if n > 0 {
            if let Some(c) = caller {
                let (csp, cret) = ((*c).sp, (*c).ret);
                if csp >= sp && csp - sp <= WRAPPER_FRAME_MAX {
                    (*p).ips[0] = cret;
                }
            }
        }
    }
    let _ = MAP_CALLERS.remove(&pid_tgid);
    entry.submit(flags);
}

/// A traced process exec'd: tell userspace (its books restart), waking the reader at once.
/// Nothing holds the process meanwhile: a process stopped for tracer would stay stopped if
/// tracer died before continuing it.
#[inline(always)]
pub fn exec() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let want = unsafe { core::ptr::read_volatile(&FILTER_COMM) };
    if want[0] != 0 && bpf_get_current_comm().is_ok_and(|c| c == want) {
        // A process named as asked (--comm): followed from now on, and its probes go on in
        // userspace at this exec's record.
        let tgid = (pid_tgid >> 32) as u32;
        if FOLLOWED.insert(&tgid, &tgid, 0).is_err() {
            bump(counter::FOLLOW_FULL);
        }
    }
    if traced().is_none() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        lose(counter::RING_FULL_EXEC);
        return;
    };
    entry.write(ExecRecord {
        hdr: header(kind::EXEC, 0, (pid_tgid >> 32) as u32, ktime()),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(BPF_RB_FORCE_WAKEUP as u64);
    notice(kind::EXEC, (pid_tgid >> 32) as u32);
}

/// Tells the map reader to read `pid`'s memory map now (a lost notice only costs names).
#[inline(always)]
fn notice(kind: u8, pid: u32) {
    let hdr = header(kind, 0, pid, ktime());
    let _ = NOTICES.output::<Header>(&hdr, BPF_RB_FORCE_WAKEUP as u64);
}

/// The traced process is entering `exit()`: its map is read while `exit()` runs (the reader
/// thread runs at real-time priority); the process is not held.
#[inline(always)]
pub fn exiting() {
    let Some(pid_tgid) = traced() else { return };
    notice(kind::EXITING, (pid_tgid >> 32) as u32);
}
