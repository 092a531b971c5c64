//! User stacks walked by unwind tables, for code built without frame pointers.
//!
//! Userspace builds each file's table from its `.eh_frame` (rows sorted by address, each
//! saying how to find the canonical frame address (CFA) and the caller's saved rbp; the
//! return address is at CFA - 8 on x86-64) and loads it into one array, [`UNWIND_ROWS`], at
//! the range [`UNWIND_FILES`] gives for the file's identity (device and inode). Every process
//! mapping the same file shares its table, and no per-process table exists: the file under an
//! address is found with the kernel's own lookup of the process's mappings (`bpf_find_vma`),
//! so a library mapped a moment ago (dlopen) is found at once.
//!
//! One frame is one iteration of `bpf_loop`, whose body the verifier checks once, so the
//! depth is not bounded by the verifier's budget. A frame in a file whose table is not built
//! yet is walked by frame pointers, the record says so, and userspace is asked for the table.
//! A frame in a file that keeps frame pointers is walked by them (cheaper, same frames).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_loop},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracer_common::{
    counter, kind, stack_end, table_state, unwind_mode, unwind_rule, vma_offsets, FileKey,
    FileTable, UnwindMissRecord, UnwindRow, MAX_STACK_DEPTH, RBP_LOST,
};

use crate::alloc::{bump, header, ktime, stack_buffer, NOTICES};

/// Sizes here are defaults; userspace sets the real ones before load.
#[map]
static UNWIND_FILES: HashMap<FileKey, FileTable> = HashMap::with_max_entries(4096, 0);
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Userspace writes the rows straight into the map's memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[unsafe(no_mangle)]
static UNWIND_MODE: u32 = 0;
#[unsafe(no_mangle)]
static VMA_OFFSETS: [u64; vma_offsets::COUNT] = [0; vma_offsets::COUNT];

/// Binary search steps: enough for 2^24 rows in one file.
const SEARCH_STEPS: usize = 24;

/// How the frames of the mapping last looked up are walked.
const HOW_NONE: u32 = 0;
const HOW_ROWS: u32 = 1;
const HOW_FP: u32 = 2;

/// The walk in progress on this CPU. Kept in a map, not on the program's stack: the verifier
/// does not track map memory, so the loops' bodies verify once whatever the frame count.
#[map]
static WALKS: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// A walk in progress.
#[repr(C)]
struct Walk {
    /// The current frame: its return address (an address after a call), stack pointer at
    /// that address, and rbp.
    ip: u64,
    sp: u64,
    bp: u64,
    /// Frames in the buffer so far.
    n: u64,
    /// Which buffer (see [`stack_buffer`]).
    buffer: u64,
    /// How the walk ended ([`stack_end`]), with the fallback bit.
    end: u16,
    _pad: [u16; 3],
    /// The mapping last looked up, `[vm_start, vm_end)`, and how its frames are walked.
    vm_start: u64,
    vm_end: u64,
    /// A frame's row address is its address minus this.
    pc_bias: u64,
    first_row: u32,
    rows: u32,
    how: u32,
    /// Non-zero while the current frame's row is being searched for, one step an iteration:
    /// the search's bounds `[lo, hi)` and the row address sought.
    searching: u32,
    lo: u32,
    hi: u32,
    pc: u32,
}

/// What the kernel's mapping lookup found.
#[repr(C)]
struct Vma {
    start: u64,
    end: u64,
    pgoff: u64,
    /// 0: an anonymous mapping (JIT code).
    ino: u64,
    dev: u64,
}

/// Whether stacks are walked by tables at all.
#[inline(always)]
pub fn by_tables() -> bool {
    let mode = unsafe { core::ptr::read_volatile(&UNWIND_MODE) };
    mode != unwind_mode::FP
}

/// Walks the user stack whose innermost frame returns to `ip`, with stack pointer `sp` and rbp
/// `bp` there, into stack buffer `buffer` (its first frame is `ip`): the number of frames and
/// how the walk ended.
#[inline(always)]
pub fn walk(buffer: u64, ip: u64, sp: u64, bp: u64) -> (usize, u16) {
    let (Some(ips), Some(state)) = (stack_buffer(buffer), WALKS.get_ptr_mut(0)) else {
        return (0, stack_end::UNREADABLE);
    };
    unsafe {
        (*ips)[0] = ip;
        *state = Walk {
            ip,
            sp,
            bp,
            n: 1,
            buffer,
            end: stack_end::DEPTH,
            _pad: [0; 3],
            vm_start: 0,
            vm_end: 0,
            pc_bias: 0,
            first_row: 0,
            rows: 0,
            how: HOW_NONE,
            searching: 0,
            lo: 0,
            hi: 0,
            pc: 0,
        };
        // Every frame takes one iteration, and one more per step of its row's search.
        bpf_loop(
            (MAX_STACK_DEPTH * (SEARCH_STEPS + 2)) as u32,
            step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        let w = &*state;
        ((w.n as usize).min(MAX_STACK_DEPTH), w.end)
    }
}

/// One step of the walk: a frame, or a step of the search for a frame's row. 0 goes on, 1
/// ends. One loop body, no loop nested in it: the verifier checks it once.
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALKS.get_ptr_mut(0) else {
        return 1;
    };
    let w = unsafe { &mut *w };
    let n = w.n as usize;
    if n >= MAX_STACK_DEPTH {
        w.end = (w.end & stack_end::FP_FALLBACK) | stack_end::DEPTH;
        return 1;
    }
    let found = if w.searching != 0 {
        if search_step(w) {
            return 0;
        }
        w.searching = 0;
        by_row(w)
    } else {
        match frame(w) {
            Ok(Some(ra)) => Ok(ra),
            // The search for its row starts.
            Ok(None) => return 0,
            Err(end) => Err(end),
        }
    };
    match found {
        Ok(ra) => {
            let Some(ips) = stack_buffer(w.buffer) else {
                return 1;
            };
            unsafe { (*ips)[n] = ra };
            w.n += 1;
            0
        }
        Err(end) => {
            w.end = (w.end & stack_end::FP_FALLBACK) | end;
            1
        }
    }
}

/// The current frame's caller when frame pointers give it; None when its row is to be
/// searched for first (the search is set up); or how the stack ends here.
#[inline(always)]
fn frame(w: &mut Walk) -> Result<Option<u64>, u16> {
    // A return address is the instruction after a call: the call's own rules are the ones
    // that hold, and the call may be a function's last instruction.
    let at = w.ip.wrapping_sub(1);
    if at < w.vm_start || at >= w.vm_end {
        look_up(w, at)?;
    }
    if w.how != HOW_ROWS {
        return by_frame_pointer(w).map(Some);
    }
    let pc = at.wrapping_sub(w.pc_bias);
    if pc > u32::MAX as u64 {
        return Err(stack_end::NO_INFO);
    }
    w.pc = pc as u32;
    w.lo = w.first_row;
    w.hi = w.first_row.wrapping_add(w.rows);
    w.searching = 1;
    Ok(None)
}

/// Finds the mapping of `at` and how its frames are walked.
#[inline(always)]
fn look_up(w: &mut Walk, at: u64) -> Result<(), u16> {
    let mut at_vma: u64 = 0;
    let found = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf(),
            at,
            vma_found as *mut c_void,
            &mut at_vma as *mut u64 as *mut c_void,
            0,
        )
    };
    let vma = if found == 0 && at_vma != 0 {
        read_vma(at_vma)
    } else {
        Vma {
            start: 0,
            end: 0,
            pgoff: 0,
            ino: 0,
            dev: 0,
        }
    };
    if found == -EBUSY {
        // Another thread of the process holds its mappings' lock this instant (the lookup
        // does not wait): this frame is walked by frame pointers, the next looks again.
        w.vm_start = 0;
        w.vm_end = 0;
        w.how = HOW_FP;
        w.end |= stack_end::FP_FALLBACK;
        bump(counter::FP_MAPS_BUSY);
        return Ok(());
    }
    if found != 0 || vma.end == 0 {
        // Not in any mapping: a garbage return address.
        w.vm_start = 0;
        w.vm_end = 0;
        return Err(stack_end::UNMAPPED);
    }
    w.vm_start = vma.start;
    w.vm_end = vma.end;
    w.how = HOW_FP;
    if vma.ino == 0 {
        // Anonymous code (a JIT's): frame pointers are all there is.
        return Ok(());
    }
    let key = FileKey {
        dev: vma.dev,
        ino: vma.ino,
    };
    let Some(table) = (unsafe { UNWIND_FILES.get(&key) }) else {
        ask_for_table(key, &vma);
        fallback(w);
        return Ok(());
    };
    match table.state {
        table_state::ROWS => {
            w.how = HOW_ROWS;
            w.first_row = table.first_row;
            w.rows = table.rows;
            // row pc = at - vm_start + pgoff * 4096 + vaddr_minus_offset
            w.pc_bias = vma
                .start
                .wrapping_sub(vma.pgoff << 12)
                .wrapping_sub(table.vaddr_minus_offset as u64);
        }
        table_state::PENDING => fallback(w),
        _ => {}
    }
    Ok(())
}

/// A traced process mapped code from a file at `addr` (an executable `mmap`, as the dynamic
/// loader makes for each library it loads): userspace is told at once, so the file's table is
/// built before a stack meets it (a library's first allocations after a `dlopen` find it more
/// often ready). The file is found there: the lookup of a mapping (`bpf_find_vma`) is not
/// allowed where this runs, at the return of the `mmap` system call.
#[inline(always)]
pub fn code_mapped(addr: u64) {
    if !by_tables() {
        return;
    }
    let pid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let note = UnwindMissRecord {
        hdr: header(kind::CODE_MAPPED, 0, pid, ktime()),
        key: FileKey { dev: 0, ino: 0 },
        vm_start: addr,
        vm_end: 0,
    };
    let _ =
        NOTICES.output::<UnwindMissRecord>(&note, aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64);
}

/// `bpf_find_vma`'s answer when the mappings' lock is taken.
const EBUSY: i64 = 16;

/// This frame is walked by frame pointers for want of its file's table.
#[inline(always)]
fn fallback(w: &mut Walk) {
    w.end |= stack_end::FP_FALLBACK;
    bump(counter::FP_FALLBACK);
}

/// Marks the file pending and asks userspace for its table (once: the pending entry keeps
/// later walks from asking again).
#[inline(always)]
fn ask_for_table(key: FileKey, vma: &Vma) {
    let pending = FileTable {
        state: table_state::PENDING,
        first_row: 0,
        rows: 0,
        _pad: 0,
        vaddr_minus_offset: 0,
    };
    if UNWIND_FILES
        .insert(&key, &pending, BPF_NOEXIST as u64)
        .is_err()
    {
        return;
    }
    let pid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    let miss = UnwindMissRecord {
        hdr: header(kind::UNWIND_MISS, 0, pid, ktime()),
        key,
        vm_start: vma.start,
        vm_end: vma.end,
    };
    let _ =
        NOTICES.output::<UnwindMissRecord>(&miss, aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64);
}

/// `bpf_find_vma`'s callback: keeps the mapping's address. Its fields are read after the
/// lookup (with `bpf_probe_read_kernel`, which cannot fault): reading them here made the
/// verifier walk them once for every pass it makes over the loop body, a quarter of a second
/// a program. (A mapping unmapped by another thread in between reads as another identity or
/// none: that frame's walk ends or asks for a table that is not there.)
#[inline(never)]
extern "C" fn vma_found(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    unsafe { *(ctx as *mut u64) = vma as u64 };
    0
}

/// The range, file offset and file identity of the mapping at kernel address `vma`.
#[inline(always)]
fn read_vma(vma: u64) -> Vma {
    let off = |i: usize| unsafe { core::ptr::read_volatile(&VMA_OFFSETS[i]) };
    let read = |addr: u64| unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0);
    let mut out = Vma {
        start: read(vma + off(vma_offsets::VM_START)),
        end: read(vma + off(vma_offsets::VM_END)),
        pgoff: read(vma + off(vma_offsets::VM_PGOFF)),
        ino: 0,
        dev: 0,
    };
    let file = read(vma + off(vma_offsets::VM_FILE));
    let inode = if file == 0 {
        0
    } else {
        read(file + off(vma_offsets::F_INODE))
    };
    if inode == 0 {
        return out;
    }
    out.ino = read(inode + off(vma_offsets::I_INO));
    let sb = read(inode + off(vma_offsets::I_SB));
    if sb != 0 {
        out.dev = unsafe { bpf_probe_read_kernel((sb + off(vma_offsets::S_DEV)) as *const u32) }
            .unwrap_or(0) as u64;
    }
    out
}

/// The caller by the frame-pointer chain: [rbp] is the caller's rbp, [rbp + 8] the return
/// address.
#[inline(always)]
fn by_frame_pointer(w: &mut Walk) -> Result<u64, u16> {
    let fp = w.bp;
    if fp == 0 || fp & 7 != 0 {
        return Err(stack_end::FRAME_POINTERS);
    }
    let Ok(frame) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
        return Err(stack_end::FRAME_POINTERS);
    };
    if frame[1] == 0 {
        return Err(stack_end::FRAME_POINTERS);
    }
    w.ip = frame[1];
    w.bp = frame[0];
    w.sp = fp + 16;
    Ok(frame[1])
}

/// One step of the binary search for the last row at or below `w.pc` in `[w.lo, w.hi)`:
/// false once it is over (`w.lo` is then just past that row).
#[inline(always)]
fn search_step(w: &mut Walk) -> bool {
    if w.lo >= w.hi {
        return false;
    }
    let mid = w.lo + (w.hi - w.lo) / 2;
    let Some(row) = UNWIND_ROWS.get(mid) else {
        w.hi = w.lo;
        return false;
    };
    if row.pc <= w.pc {
        w.lo = mid + 1;
    } else {
        w.hi = mid;
    }
    true
}

/// The caller by the row the search found.
#[inline(always)]
fn by_row(w: &mut Walk) -> Result<u64, u16> {
    if w.lo == w.first_row {
        return Err(stack_end::NO_INFO);
    }
    let Some(row) = UNWIND_ROWS.get(w.lo - 1) else {
        return Err(stack_end::NO_INFO);
    };
    let cfa = match row.rule {
        unwind_rule::CFA_RSP => w.sp.wrapping_add(row.cfa_offset as u64),
        unwind_rule::CFA_RBP => w.bp.wrapping_add(row.cfa_offset as u64),
        unwind_rule::CFA_PLT => w.sp + 8 + if w.ip & 15 >= 11 { 8 } else { 0 },
        unwind_rule::OUTERMOST => return Err(stack_end::OUTERMOST),
        unwind_rule::NO_INFO => return Err(stack_end::NO_INFO),
        _ => return Err(stack_end::UNSUPPORTED),
    };
    let Ok(ra) = (unsafe { bpf_probe_read_user((cfa.wrapping_sub(8)) as *const u64) }) else {
        return Err(stack_end::UNREADABLE);
    };
    if row.rbp == RBP_LOST {
        w.bp = 0;
    } else if row.rbp != 0 {
        let at = cfa.wrapping_add((row.rbp as i64 * 8) as u64);
        let Ok(bp) = (unsafe { bpf_probe_read_user(at as *const u64) }) else {
            return Err(stack_end::UNREADABLE);
        };
        w.bp = bp;
    }
    if ra == 0 {
        return Err(stack_end::OUTERMOST);
    }
    w.sp = cfa;
    w.ip = ra;
    Ok(ra)
}
