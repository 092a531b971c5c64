//! The kernel collector: loads the embedded eBPF object, attaches the probe table to the
//! allocator, drains the ring buffer and reads the drop counters.
//!
//! Needs: root (or CAP_BPF + CAP_PERFMON), a kernel with uprobes, BPF ring buffers (5.8) and
//! uprobe cookies (5.15).
use std::sync::{atomic::Ordering, Arc};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{HashMap as AyaHashMap, MapData, PerCpuArray, RingBuf},
    programs::{FExit, RawTracePoint, UProbe},
    Ebpf, EbpfLoader,
};
use tracer_common::{counter, globals, names, vma_offsets, SAMPLE_GAP_COUNT};

use super::{
    attach::{Attached, MapHook, EXIT_PROGRAM},
    multi::MultiPrograms,
    probes::{
        entry_programs, session_programs, MAP_RETURN_PROGRAM, RETURN_PROGRAM, RET_SITE_PROGRAM,
    },
    stacks::Stacks,
    stream::{Reader, ReaderCounts},
    target::AllocatorLib,
    Counters,
};

/// Follows forks (--follow-children).
const FORK_PROGRAM: &str = "process_fork";
/// The mapping system calls' fexit programs and the kernel functions they attach to.
const MAP_SYSCALL_PROGRAMS: [(&str, &str); 3] = [
    ("mmap_exit", "__x64_sys_mmap"),
    ("munmap_exit", "__x64_sys_munmap"),
    ("mremap_exit", "__x64_sys_mremap"),
];
/// Reports execs (and holds a launched process at exec until its new program is probed).
const EXEC_PROGRAM: &str = "process_exec";

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

pub struct Settings {
    /// Only this process is traced (0: every process).
    pub filter_pid: u32,
    pub ring_size: u32,
    /// Only allocations of `min_size..=max_size` bytes are recorded.
    pub min_size: u64,
    /// Mean bytes between sampled allocations (0: every call).
    pub sample_rate: u64,
    pub max_size: u64,
    /// Follow the processes `filter_pid` forks (and theirs).
    pub follow_forks: bool,
    /// Trace anonymous memory mappings (mmap, munmap, mremap).
    pub trace_maps: bool,
    /// Several processes, no pid filter: only these (the tracepoints see every process).
    pub filter_set: Vec<u32>,
    /// With `filter_set`: processes that exec a program of this name join it (--comm).
    pub filter_comm: Option<String>,
    /// How stacks are walked (`tracer_common::unwind_mode`).
    pub unwind_mode: u32,
    /// Room for this many unwind-table rows (every file's together).
    pub unwind_rows: u32,
}

pub struct EbpfCollector {
    /// Never dropped (see the `Drop` impl): its programs hold the perf-event links.
    ebpf: std::mem::ManuallyDrop<Ebpf>,
    /// What empties the ring buffer, until it is taken to a thread of its own.
    reader: Option<Reader>,
    /// The reader's own counts.
    reader_counts: Arc<ReaderCounts>,
    counters: PerCpuArray<MapData, u64>,
    lost_by_pid: AyaHashMap<MapData, u32, u64>,
    followed: AyaHashMap<MapData, u32, u32>,
    notices: Option<RingBuf<MapData>>,
    /// The unwind tables' maps, until taken (stacks walked by tables only).
    unwind: Option<crate::unwind::Store>,
    /// The probes attached (see `attach`).
    attached: Attached,
}

impl Drop for EbpfCollector {
    /// The probes are not detached by a system call of tracer's: a SIGKILL landing midway
    /// interrupts it, and the kernel then leaves that uprobe in place ("failed to unregister,
    /// leaking uprobe": the target keeps a breakpoint that traps on every call). Links are
    /// released when their last file descriptor closes, and a process's descriptors close
    /// on its exit path, where signals are dropped and nothing interrupts the unregistering.
    /// That takes an RCU grace period per link: a child holds copies of the descriptors and
    /// exits once tracer has, so tracer itself ends at once and the child's exit releases
    /// them (a second or two later). Without a child, tracer's own exit does it.
    fn drop(&mut self) {
        self.attached.leak_multi_links();
        // Our end (`_write`) is never closed: it closes when tracer exits, the child's signal.
        let Ok([read, _write]) = super::launch::pipe_cloexec() else {
            return;
        };
        // Everything but the kernel's BPF and perf objects is closed in the child: a pipe held
        // open there (tracer's output, a launched command's start gate) would keep its other
        // end waiting for the child.
        let others = descriptors_but_bpf(read);
        // SAFETY: the child only makes async-signal-safe calls (close, prctl, read, _exit).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: plain system calls on this process's own descriptors.
            unsafe {
                for &fd in &others {
                    libc::close(fd);
                }
                libc::prctl(libc::PR_SET_NAME, c"tracer-detach".as_ptr());
                let mut b = 0u8;
                // EOF once tracer has exited (and closed its end and its links).
                while libc::read(read, (&raw mut b).cast(), 1) != 0 {
                    if *libc::__errno_location() != libc::EINTR {
                        break;
                    }
                }
                libc::_exit(0);
            }
        }
        // SAFETY: our copy of the child's end; ours (`write`) stays open until tracer exits.
        unsafe { libc::close(read) };
    }
}

/// This process's descriptors that are not BPF objects or perf events (nor `keep`).
fn descriptors_but_bpf(keep: libc::c_int) -> Vec<libc::c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return (0..3).collect();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: libc::c_int = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        let kernel_object =
            t.starts_with("anon_inode:bpf") || t.starts_with("anon_inode:[perf_event]");
        (fd != keep && !kernel_object).then_some(fd)
    })
    .collect()
}

/// Stacks the collector holds before [`Stacks::trim`] forgets them: ~400 bytes each.
const STACKS_KEPT: usize = 1 << 14;

/// Turns load failures into what a user can act on, by the system error under them.
fn explain_load_error(e: aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut errno = None;
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            errno = io.raw_os_error();
            break;
        }
        cause = c.source();
    }
    match errno {
        Some(libc::EPERM | libc::EACCES) => anyhow!(
            "the kernel refused to load tracer's eBPF programs ({text}). tracer needs root, or the \
             CAP_BPF and CAP_PERFMON capabilities: run it with sudo"
        ),
        Some(libc::ENOSYS | libc::EINVAL) => anyhow!(
            "this kernel cannot load tracer's eBPF programs ({text}). tracer needs a kernel (5.15 or \
             newer) built with CONFIG_BPF_SYSCALL, CONFIG_BPF_EVENTS and CONFIG_UPROBE_EVENTS"
        ),
        _ => anyhow!("loading tracer's eBPF programs failed: {text}"),
    }
}

/// The sampler's gaps (see `globals::SAMPLE_GAPS`): the midpoints of equal slices of the
/// exponential distribution of mean 1, in 1/1024ths.
fn sample_gaps() -> [u32; SAMPLE_GAP_COUNT] {
    let mut q = [0u32; SAMPLE_GAP_COUNT];
    for (i, g) in q.iter_mut().enumerate() {
        let p = (i as f64 + 0.5) / SAMPLE_GAP_COUNT as f64;
        *g = (-(1.0 - p).ln() * 1024.0).round() as u32;
    }
    q
}

/// How the mapping system calls are seen: fexit of the kernel's `__x64_sys_mmap`,
/// `__x64_sys_munmap` and `__x64_sys_mremap` where the kernel allows it, so no other system call
/// runs a program; else see [`MapHook::NoFexit`].
fn hook_map_syscalls(ebpf: &mut Ebpf) -> MapHook {
    // TRACER_MAP_HOOK=wrappers or =tracepoints does without fexit, as on kernels without BPF
    // trampolines, and the latter without the wrappers too (tests).
    let forced = std::env::var("TRACER_MAP_HOOK").ok();
    let mut fexits = || -> Result<()> {
        if let Some(f) = forced.as_deref().filter(|f| *f != "fexit") {
            bail!("TRACER_MAP_HOOK={f}");
        }
        let btf = aya::Btf::from_sys_fs().context("no kernel BTF")?;
        for (prog, func) in MAP_SYSCALL_PROGRAMS {
            let p: &mut FExit = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load(func, &btf)
                .with_context(|| format!("cannot load fexit of {func}"))?;
            p.attach()
                .with_context(|| format!("cannot attach fexit of {func}"))?;
        }
        Ok(())
    };
    let why = match fexits() {
        Ok(()) => return MapHook::Fexit,
        Err(e) => format!("{e:#}"),
    };
    // Drop what did attach: a half set would record some calls twice.
    for (prog, _) in MAP_SYSCALL_PROGRAMS {
        let p: Option<&mut FExit> = ebpf.program_mut(prog).and_then(|p| p.try_into().ok());
        if let Some(p) = p {
            let _ = p.unload();
        }
    }
    MapHook::NoFexit {
        why,
        wrappers: forced.as_deref() != Some("tracepoints"),
        tracepoints: false,
    }
}

impl EbpfCollector {
    /// Loads the programs and maps (nothing is attached yet).
    pub fn load(s: &Settings) -> Result<EbpfCollector> {
        preflight()?;
        let wakeup = (s.ring_size as u64 / 4).max(1);
        // The fork tracepoint reads the child's tgid from its task_struct, whose layout is
        // this kernel's: the offset comes from the kernel's BTF.
        let tgid_offset = if s.follow_forks {
            super::btf::Btf::kernel()
                .and_then(|b| b.member_offset("task_struct", "tgid"))
                .context("--follow-children needs the kernel's BTF to read a forked task's tgid")?
        } else {
            0
        };
        let (unwind_mode, vma_offsets) = match s.unwind_mode {
            tracer_common::unwind_mode::FP => (s.unwind_mode, [0; vma_offsets::COUNT]),
            mode => (
                mode,
                kernel_vma_offsets().context(
                    "walking stacks by unwind tables needs the kernel's BTF (use --unwind fp)",
                )?,
            ),
        };
        let mut filter_comm = [0u8; 16];
        if let Some(name) = &s.filter_comm {
            let n = name.len().min(15);
            filter_comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        }
        #[allow(deprecated)]
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::FILTER_PID, &s.filter_pid, true)
            .override_global(globals::SELF_PID, &std::process::id(), true)
            .override_global(globals::WAKEUP_BYTES, &wakeup, true)
            .override_global(globals::MIN_SIZE, &s.min_size, true)
            .override_global(globals::MAX_SIZE, &s.max_size, true)
            .override_global(globals::FOLLOW_FORKS, &u32::from(s.follow_forks), true)
            .override_global(globals::TASK_TGID_OFFSET, &tgid_offset, true)
            .override_global(
                globals::FILTER_SET,
                &u32::from(!s.filter_set.is_empty() || s.filter_comm.is_some()),
                true,
            )
            .override_global(globals::FILTER_COMM, &filter_comm, true)
            .override_global(globals::SAMPLE_RATE, &s.sample_rate, true)
            .override_global(globals::SAMPLE_GAPS, &sample_gaps(), true)
            .override_global(globals::UNWIND_MODE, &unwind_mode, true)
            .override_global(globals::VMA_OFFSETS, &vma_offsets, true)
            .map_max_entries(names::EVENTS, s.ring_size)
            .map_max_entries(names::UNWIND_ROWS, s.unwind_rows.max(1))
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;
        let uprobes: Vec<&'static str> = entry_programs()
            .into_iter()
            .chain([
                RETURN_PROGRAM,
                RET_SITE_PROGRAM,
                MAP_RETURN_PROGRAM,
                EXIT_PROGRAM,
            ])
            .collect();
        // uprobe-multi links where the kernel has them (TRACER_UPROBE_MULTI=0 forces the
        // perf-event probes, as on older kernels); loaded before any map is taken out of aya.
        let multi = if std::env::var("TRACER_UPROBE_MULTI").as_deref() == Ok("0") {
            None
        } else {
            // Sampling: the allocating functions' entries as uprobe sessions, so that an
            // unsampled call takes no return trap.
            let sessions: Vec<&'static str> = if s.sample_rate != 0 {
                session_programs()
            } else {
                Vec::new()
            };
            MultiPrograms::load(EBPF_OBJECT, &ebpf, &uprobes, &sessions).ok()
        };
        let sessions = s.sample_rate != 0 && multi.as_ref().is_some_and(|m| m.has_sessions());
        for &name in uprobes.iter().filter(|_| multi.is_none()) {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| anyhow!("the kernel's verifier rejected program {name}: {e}"))?;
        }
        // Execs: a traced process that replaces its program restarts its books (and may bring
        // another allocator to probe).
        let exec: &mut RawTracePoint = ebpf
            .program_mut(EXEC_PROGRAM)
            .context("program process_exec missing from the eBPF object")?
            .try_into()?;
        exec.load()
            .map_err(|e| anyhow!("the kernel's verifier rejected program {EXEC_PROGRAM}: {e}"))?;
        exec.attach("sched_process_exec").map_err(|e| {
            anyhow!("cannot attach to the sched_process_exec raw tracepoint (needs CONFIG_BPF_EVENTS): {e}")
        })?;
        let maps = if s.trace_maps {
            hook_map_syscalls(&mut ebpf)
        } else {
            MapHook::Off
        };
        let system_wide = s.filter_pid == 0 && s.filter_set.is_empty() && s.filter_comm.is_none();
        if s.follow_forks {
            let fork: &mut RawTracePoint = ebpf
                .program_mut(FORK_PROGRAM)
                .context("program process_fork missing from the eBPF object")?
                .try_into()?;
            fork.load().map_err(|e| {
                anyhow!("the kernel's verifier rejected program {FORK_PROGRAM}: {e}")
            })?;
            fork.attach("sched_process_fork").map_err(|e| {
                anyhow!("cannot attach to the sched_process_fork raw tracepoint (needs CONFIG_BPF_EVENTS): {e}")
            })?;
        }
        let mut followed: AyaHashMap<MapData, u32, u32> =
            AyaHashMap::try_from(ebpf.take_map(names::FOLLOWED).context("no FOLLOWED map")?)?;
        for &pid in &s.filter_set {
            followed
                .insert(pid, 0, 0)
                .context("cannot fill the kernel's table of traced processes")?;
        }
        let ring_buf = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("no EVENTS map")?)?;
        let notices = RingBuf::try_from(ebpf.take_map(names::NOTICES).context("no NOTICES map")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(names::COUNTERS).context("no COUNTERS map")?)?;
        let lost_by_pid = AyaHashMap::try_from(
            ebpf.take_map(names::LOST_BY_PID)
                .context("no LOST_BY_PID map")?,
        )?;
        let unwind = if unwind_mode == tracer_common::unwind_mode::FP {
            None
        } else {
            Some(crate::unwind::Store::new(
                ebpf.take_map(names::UNWIND_FILES)
                    .context("no UNWIND_FILES map")?,
                ebpf.take_map(names::UNWIND_ROWS)
                    .context("no UNWIND_ROWS map")?,
                s.unwind_rows.max(1),
                unwind_mode,
            )?)
        };
        let reader_counts = Arc::new(ReaderCounts::default());
        let reader = Reader::new(
            ring_buf,
            Stacks::new(STACKS_KEPT),
            reader_counts.clone(),
            s.sample_rate,
        );
        Ok(EbpfCollector {
            ebpf: std::mem::ManuallyDrop::new(ebpf),
            reader: Some(reader),
            reader_counts,
            counters,
            lost_by_pid,
            followed,
            notices: Some(notices),
            unwind,
            attached: Attached::new(maps, system_wide, multi, sessions),
        })
    }

    /// Attaches the probe table to `lib` (and the files probed with it), for one process or
    /// (pid None) every process. Returns warnings (optional functions missing).
    pub fn attach(&mut self, lib: &AllocatorLib, pid: Option<u32>) -> Result<Vec<String>> {
        self.attached.attach(&mut self.ebpf, lib, pid)
    }

    /// Whether an unsampled call is spared its return trap (uprobe sessions, sampled mode).
    pub fn has_sessions(&self) -> bool {
        self.attached.has_sessions()
    }

    /// How many addresses are probed (entries and returns of one function count once).
    pub fn probes(&self) -> usize {
        self.attached.probes()
    }

    /// Whether probes go on as uprobe-multi links (quick to detach).
    pub fn has_multi(&self) -> bool {
        self.attached.has_multi()
    }

    /// The ring of notices (when to read a process's map), for a reader of its own.
    pub fn take_notices(&mut self) -> Option<RingBuf<MapData>> {
        self.notices.take()
    }

    /// The unwind tables, for a thread of their own (None: stacks by frame pointers only).
    pub fn take_unwind(&mut self) -> Option<crate::unwind::Store> {
        self.unwind.take()
    }

    /// What empties the ring buffer, for a thread of its own (see [`Stream`]).
    pub fn take_reader(&mut self) -> Option<Reader> {
        self.reader.take()
    }

    /// A followed process exited: its pid leaves the kernel's table, so a process that gets
    /// the pid later is not followed by mistake.
    pub fn unfollow(&mut self, pid: u32) {
        let _ = self.followed.remove(&pid);
    }

    /// Events lost per process, as the kernel counted them (see `names::LOST_BY_PID`).
    pub fn lost_by_pid(&self) -> std::collections::BTreeMap<u32, u64> {
        self.lost_by_pid.iter().filter_map(|kv| kv.ok()).collect()
    }

    /// The kernel's counters (summed over CPUs) and this side's undecodable records.
    pub fn counters(&self) -> Counters {
        let mut out = Counters {
            bad_records: self.reader_counts.bad_records.load(Ordering::Relaxed),
            ..Counters::default()
        };
        for i in 0..counter::COUNT {
            if let Ok(vals) = self.counters.get(&i, 0) {
                out.kernel[i as usize] = vals.iter().sum();
            }
        }
        // Stacks this side could not name: they failed as those the kernel could not take.
        out.kernel[counter::STACK_FAILED as usize] +=
            self.reader_counts.stacks_failed.load(Ordering::Relaxed);
        out
    }
}

/// The offsets the unwinder reads a mapping's file identity with (see
/// `tracer_common::vma_offsets`), from the kernel's BTF.
fn kernel_vma_offsets() -> Result<[u64; vma_offsets::COUNT]> {
    let btf = super::btf::Btf::kernel()?;
    let fields = [
        ("vm_area_struct", "vm_start"),
        ("vm_area_struct", "vm_end"),
        ("vm_area_struct", "vm_pgoff"),
        ("vm_area_struct", "vm_file"),
        ("file", "f_inode"),
        ("inode", "i_ino"),
        ("inode", "i_sb"),
        ("super_block", "s_dev"),
    ];
    let mut out = [0; vma_offsets::COUNT];
    for (o, (st, member)) in out.iter_mut().zip(fields) {
        *o = btf.member_offset(st, member)?;
    }
    Ok(out)
}

/// Root or CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN), and a kernel with uprobes: checked first so
/// the user gets one clear sentence instead of a syscall error.
fn preflight() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| cap_eff & (1 << c) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        bail!(
            "tracer needs root, or the CAP_BPF and CAP_PERFMON capabilities, to load eBPF programs \
             and attach uprobes: run it with sudo"
        );
    }
    if !std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        bail!(
            "this kernel has no uprobe support (no /sys/bus/event_source/devices/uprobe): tracer \
             needs a kernel built with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS"
        );
    }
    Ok(())
}
