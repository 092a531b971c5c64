//! Setting up a live run: what to probe for the target asked (pids, a command to launch,
//! every process), attaching, the allocators probed up front for programs started later, the
//! banner, the recording, then the live loop.
use std::time::Instant;

use anyhow::{Context, Result};

use super::{
    probe::{Ctx, Prober},
    Session,
};
use crate::{
    collector::{
        ebpf::{EbpfCollector, Settings},
        launch,
        stream::Stream,
        target::{self, file_id},
    },
    config::{ReportOptions, Target, TraceOptions},
    engine::Engine,
    output,
    procs::live::{comm, user_processes, Allocator, Live},
    procs::watch::{EarlyBook, MapWatch},
    record::{RecordHeader, Recorder},
    report::LimitSettings,
    serve::Exporter,
    signals, tui,
    unwind::Unwinder,
};

pub fn trace(t: TraceOptions, opts: ReportOptions) -> Result<i32> {
    // The port is taken before anything is attached or launched: a busy one ends here.
    let exporter = t.metrics.map(Exporter::serve).transpose()?;
    // What to probe: (scope pid, allocator) pairs; the pid the reports are about (0: several).
    let (plan, held, program, head_pid) = match &t.target {
        Target::Pids(pids) => {
            let mut plan = Vec::new();
            for &pid in pids {
                // A process caught in its exec (its loader has not mapped its libraries yet)
                // gets those its loader will map.
                let lib = target::for_pid(pid).or_else(|e| target::for_exec(pid).map_err(|_| e))?;
                plan.push((Some(pid), lib));
            }
            let head = if pids.len() == 1 { pids[0] } else { 0 };
            (plan, None, None, head)
        }
        Target::All => {
            // The C library tracer itself runs on is the system's: probing that file reaches
            // every process that maps it, including those started later.
            let mut lib = target::for_pid(std::process::id())?;
            // tracer's own allocator (linked into its executable) is no one else's.
            let me = std::fs::read_link("/proc/self/exe").ok();
            lib.also.retain(|a| Some(&a.path) != me.as_ref());
            (vec![(None, lib)], None, None, 0)
        }
        Target::Named(name) => {
            let mut plan = Vec::new();
            for pid in user_processes().into_iter().filter(|&p| comm(p) == *name) {
                match target::for_pid(pid) {
                    Ok(lib) => plan.push((Some(pid), lib)),
                    Err(e) => eprintln!("tracer: note: pid {pid} ({name}) is not traced: {e:#}"),
                }
            }
            (plan, None, None, 0)
        }
        Target::Launch {
            program,
            argv,
            user,
        } => {
            let lib = target::for_program(program)?;
            // Forked before the runtime exists, so the child is a copy of a one-thread process.
            let child = launch::spawn_held(program, argv, user.as_ref())?;
            let pid = child.pid;
            (
                vec![(Some(pid), lib)],
                Some(child),
                Some(program.clone()),
                pid,
            )
        }
    };
    let named = match &t.target {
        Target::Named(name) => Some(name.clone()),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let settings = Settings {
            filter_pid: head_pid,
            ring_size: t.ring_size,
            min_size: t.min_size,
            sample_rate: t.sample_rate,
            max_size: t.max_size,
            // A named process's children are followed too (a server's workers), and probed
            // on their own as they come.
            follow_forks: t.follow_children || named.is_some(),
            trace_maps: t.trace_maps,
            filter_set: match &t.target {
                Target::Pids(p) if p.len() > 1 => p.clone(),
                Target::Named(_) => plan.iter().filter_map(|(p, _)| *p).collect(),
                _ => Vec::new(),
            },
            filter_comm: named.clone(),
            unwind_mode: t.unwind_mode,
            unwind_rows: t.unwind_rows,
        };
        // Followed children are other processes: the probes must fire in every process that
        // maps the allocator (the kernel keeps only the followed ones).
        let scope_of = |pid: Option<u32>| if t.follow_children { None } else { pid };
        // Following children, the reports have a process level, as with several pids.
        let report_pid = if t.follow_children { 0 } else { head_pid };
        let mut collector = EbpfCollector::load(&settings)?;
        let early = EarlyBook::default();
        let unwinder = match collector.take_unwind() {
            Some(mut store) => {
                if let Some(dir) = &t.unwind_cache {
                    match crate::unwind::cache::Cache::open(dir) {
                        Ok(cache) => store.use_cache(cache),
                        Err(e) => eprintln!(
                            "tracer: note: unwind tables are not kept between runs: {e:#} \
                             (--unwind-cache names another directory)"
                        ),
                    }
                }
                Some(Unwinder::start(store).context("cannot start the unwind table builder")?)
            }
            None => None,
        };
        let watch = match collector.take_notices() {
            Some(ring) => Some(
                MapWatch::start(ring, early.clone(), unwinder.as_ref().map(|u| u.sender()))
                    .context("cannot start the map reader")?,
            ),
            None => None,
        };
        // From here on a thread of its own empties the ring buffer: what the probes send
        // while the rest starts up (probing every running process takes a while) waits in
        // memory, not in the kernel's ring.
        let stream = Stream::start(
            collector
                .take_reader()
                .context("the ring buffer's reader was taken twice")?,
        )
        .context("cannot start the ring buffer's reader")?;
        let mut warnings = Vec::new();
        if t.sample_rate != 0 && !collector.has_sessions() {
            warnings.push(
                "this kernel has no uprobe sessions (Linux 6.13) or uprobe-multi links: every \
                 allocation still takes its return trap, and sampling saves only the recording"
                    .to_string(),
            );
        }
        if let Target::Pids(_) | Target::Named(_) = &t.target {
            for (pid, lib) in plan.iter().filter_map(|(p, l)| Some(((*p)?, l))) {
                let held = target::breakpoints_in_place(pid, lib);
                if !held.is_empty() {
                    warnings.push(format!(
                        "pid {pid} already has breakpoints on {} before tracer attaches: uprobes \
                         another tool holds, or that the kernel kept when a tracer was killed \
                         while detaching (it logs \"failed to unregister, leaking uprobe\"); \
                         every call there traps into the kernel until that tool stops or the \
                         process exits",
                        held.join(", ")
                    ));
                }
            }
        }
        // A running target's code already mapped gets its tables before the probes go on;
        // tracing every process, the code running processes share most, in up to half the
        // room (the rest is for what starts later).
        match (&unwinder, &t.target) {
            (Some(u), Target::Pids(_) | Target::Named(_)) => u.preload(
                plan.iter()
                    .filter_map(|(p, _)| *p)
                    .flat_map(target::mapped_code)
                    .collect(),
            ),
            (Some(u), Target::All) => u.preload_within(
                target::mapped_code_everywhere(),
                Some(u64::from(t.unwind_rows) / 2),
            ),
            _ => {}
        }
        for (pid, lib) in &plan {
            if pid.is_some() {
                warnings.extend(lib.notes.iter().cloned());
            }
            for w in collector.attach(lib, scope_of(*pid))? {
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
        for w in warnings {
            eprintln!("tracer: note: {w}");
        }
        // Tracing processes not started yet (every process, children, or the programs a
        // launched command execs), the system's other allocator libraries are probed now: a
        // program started on one is traced from its first call, and nothing has to hold a
        // process at its exec (a process held for tracer would stay held if tracer died).
        // Only with uprobe-multi links, whose detaching is quick.
        let launching = matches!(t.target, Target::Launch { .. });
        if (matches!(t.target, Target::All) || t.follow_children || launching)
            && collector.has_multi()
        {
            let dirs: Vec<std::path::PathBuf> = plan
                .iter()
                .filter_map(|(_, l)| l.path.parent().map(|d| d.to_path_buf()))
                .chain(["/usr/lib", "/usr/local/lib"].map(std::path::PathBuf::from))
                .collect();
            let mut probed = Vec::new();
            // A launched command's are its own (the kernel filters by process).
            let scope = if launching && !t.follow_children {
                Some(head_pid)
            } else {
                None
            };
            let mut probed_paths = Vec::new();
            for lib in target::system_allocators(&dirs) {
                match collector.attach(&lib, scope) {
                    Ok(_) => {
                        probed.push(lib.path.display().to_string());
                        probed_paths.push(lib.path.clone());
                    }
                    Err(e) => eprintln!("tracer: note: {e:#}"),
                }
            }
            // Programs not started yet go through these libraries (and the C library's
            // start-up code below their `main`): their tables are there before the first
            // such program allocates, so its first stacks are walked as its later ones.
            if let (Some(u), false) = (&unwinder, launching && !t.follow_children) {
                u.preload(
                    plan.iter()
                        .map(|(_, l)| l.path.clone())
                        .chain(probed_paths)
                        .collect(),
                );
            }
            if !probed.is_empty() {
                eprintln!(
                    "tracer: note: also probed up front, for programs started on them: {}",
                    probed.join(", ")
                );
            }
        }
        let noted = program.as_deref().and_then(file_id).into_iter().collect();
        // A launched program's tables are in place before its first allocation.
        if let (Some(u), Some(program)) = (&unwinder, &program) {
            u.preload(target::program_files(program));
        }
        let watched = match (held, program) {
            (Some(child), Some(program)) => Some(child.release(&program)?),
            _ => None,
        };
        let launched = watched.as_ref().map(|w| w.pid);
        if let Some(Err(e)) = watched.as_ref().map(|w| &w.holds_exit) {
            eprintln!(
                "tracer: note: cannot hold the command at its exit (ptrace: {e}): the final \
                 report says nothing of who holds what it left"
            );
        }
        signals::install(launched);
        // A launched command owns the terminal's input; marks then come by SIGUSR1 only (or
        // the live view's `m`, which reads the terminal itself).
        let enter_marks = launched.is_none() && !opts.live && signals::marks_from_terminal();
        let mut allocators: Vec<String> = plan
            .iter()
            .map(|(_, l)| l.path.display().to_string())
            .collect();
        allocators.dedup();
        let mut kinds: Vec<String> = plan.iter().map(|(_, l)| l.kinds()).collect();
        kinds.dedup();
        let (command, what) = match (&t.target, head_pid) {
            (Target::Named(name), _) => (
                "*".to_string(),
                format!(
                    "the processes named {name} ({} running; more as they exec it, and their \
                     children)",
                    plan.len()
                ),
            ),
            (Target::All, _) => (
                "*".to_string(),
                format!(
                    "every process{}",
                    opts.comm
                        .as_ref()
                        .map(|c| format!(" named {c}"))
                        .unwrap_or_default()
                ),
            ),
            (_, 0) => (
                "*".to_string(),
                format!(
                    "pids {}",
                    plan.iter()
                        .filter_map(|(p, _)| p.map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (_, pid) => {
                let c = comm(pid);
                let w = format!("pid {pid} ({c})");
                (c, w)
            }
        };
        let what = if t.follow_children {
            format!("{what} and the processes it forks")
        } else {
            what
        };
        eprintln!(
            "tracer: tracing {what}: malloc and friends in {} ({}); a report every {:.1}s{}{}",
            allocators.join(", "),
            kinds.join("; "),
            opts.interval.as_secs_f64(),
            if launched.is_some() {
                ""
            } else {
                ", Ctrl-C for the final report"
            },
            if enter_marks {
                "; Enter takes a mark"
            } else {
                ""
            },
        );
        let start = Instant::now();
        let head = RecordHeader {
            tracer: env!("CARGO_PKG_VERSION").into(),
            pid: report_pid,
            command,
            allocator: allocators.join(", "),
            allocator_kind: kinds.join("; "),
            start_mono_ns: monotonic_ns(),
            start_unix_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            ring_size: t.ring_size,
            sample_rate: t.sample_rate,
        };
        let recorder = match &t.record {
            Some(path) => Some(Recorder::create(path, &head)?),
            None => None,
        };
        let limits = LimitSettings {
            ring_size: t.ring_size,
        };
        let view = tui::start_if_asked(
            &opts,
            tui::Source::Live,
            limits,
            Box::new(|a| match a {
                tui::Action::Mark => signals::request_mark(),
                tui::Action::Quit => signals::request_stop(),
                _ => {}
            }),
        );
        // Reports go through a writer thread: a slow reader of stdout never stalls the draining.
        let (out, writer) = output::spawn(std::io::stdout());
        let mut engine = Engine::new(opts, head, recorder, Box::new(out));
        if let Some(stats) = unwinder.as_ref().map(|u| u.stats()) {
            engine.report_unwind(Box::new(move || stats.summary()));
        }
        if let Some(mut v) = view {
            engine.show_only_final();
            engine.publish_to(Box::new(move |r| v.show(r)));
        }
        if let Some(x) = exporter {
            engine.publish_to(Box::new(move |r| x.publish(r)));
        }
        let running: Vec<u32> = plan.iter().filter_map(|(p, _)| *p).collect();
        // Processes of a name come and go: tracing them ends when asked, not when those
        // running now have ended.
        let targets = if named.is_some() {
            Vec::new()
        } else {
            running.clone()
        };
        // Keyed by the scope the probes really have (following children, every process).
        let attached = plan
            .iter()
            .filter_map(|(p, l)| file_id(&l.open_path).map(|id| (scope_of(*p), id)))
            .collect();
        let allocator_of = plan
            .iter()
            .filter_map(|(p, l)| p.map(|p| (p, Allocator::of(l))))
            .collect();
        let default_allocator = plan
            .first()
            .map(|(_, l)| Allocator::of(l))
            .unwrap_or_default();
        let scope_all = matches!(t.target, Target::All) || t.follow_children;
        let mut session = Session {
            collector,
            _watch: watch,
            _unwinder: unwinder,
            stream,
            live: Live::new(allocator_of, default_allocator, early),
            prober: Prober::new(launched, scope_all, noted, attached),
            launched,
            watched,
            scan_each_report: t.scan_each_report,
            stop_for_scan: t.stop_for_scan,
            launched_status: None,
            followed: Vec::new(),
            targets,
            named: named.is_some(),
            start,
            deadline: t.duration.map(|d| start + d),
            marks_handled: 0,
            pending: None,
            exit: None,
        };
        for pid in running {
            engine.refresh_maps(&mut session.live, pid)?;
        }
        if matches!(t.target, Target::All) {
            let mut cx = Ctx {
                collector: &mut session.collector,
                live: &mut session.live,
                engine: &mut engine,
            };
            for pid in user_processes() {
                session.prober.running(&mut cx, pid)?;
            }
        }
        let result = session.run(&mut engine).await;
        drop(session);
        drop(engine);
        writer.finish();
        result
    })
}

/// CLOCK_MONOTONIC now, the clock of the kernel's event timestamps.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
