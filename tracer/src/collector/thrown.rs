//! The one place tracer writes into a traced process.
//!
//! **What, where, why.** A C++ `operator new` of an allocator that brings its own (jemalloc,
//! tcmalloc, mimalloc) keeps its return probe, so the kernel has replaced its caller's return
//! address on the stack with the address of its uretprobe trampoline. When that `operator new`
//! throws (`bad_alloc`), the C++ unwinder reads that stack slot to find the caller, and it
//! cannot step through the trampoline: the program would terminate instead of catching the
//! exception. The eBPF program on `__cxa_throw` (`alloc::thrown`) sees it, sends the address
//! of the slot and the original return address on the notice ring, and stops the thread's
//! process (`bpf_send_signal(SIGSTOP)`). [`restore_return`] writes those 8 bytes, the value
//! the kernel itself put aside, back into that one slot with `process_vm_writev`, and
//! continues the process. Nothing else is ever written, and only where the kernel's own
//! probe wrote first.
//!
//! **Why not in the kernel.** `bpf_probe_write_user` would do the write inside the eBPF
//! program with no stop at all, but kernels in lockdown (integrity mode, as on the machines
//! tracer is tested on) refuse that helper.
//!
//! **Known limit** (README, Limitations): if tracer is killed between the stop and the write,
//! the process stays stopped, and once continued it terminates on the exception.

/// Puts a thrower's original return address back at `sp` in process `pid` (stopped by the
/// eBPF program for this) and continues it.
pub fn restore_return(pid: u32, sp: u64, ret: u64) {
    let bytes = ret.to_ne_bytes();
    let local = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: 8,
    };
    let remote = libc::iovec {
        iov_base: sp as *mut libc::c_void,
        iov_len: 8,
    };
    // SAFETY: one local iovec over `bytes`, one remote iovec in the target; plain syscalls.
    let written = unsafe { libc::process_vm_writev(pid as i32, &local, 1, &remote, 1, 0) };
    if written != 8 {
        eprintln!(
            "tracer: warning: pid {pid}: cannot restore a return address an exception needs \
             ({}); the program may terminate",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: continues the process that stopped itself for this.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}
