//! The live run: attach, drain on a timer, feed the pipeline ([`Engine`]), stop at the end.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    collector::{
        ebpf::{EbpfCollector, Settings},
        launch::{self, ExitStatus},
        stream::{Batch, Stream},
        target::{self, file_id},
        Event,
    },
    config::{Config, Mode, ReportOptions, Target, TraceOptions},
    engine::{ns, Engine, Flow, Source},
    mapwatch::{EarlyBook, MapWatch},
    output,
    procs::ProcInfo,
    record::{RecordHeader, Recorder},
    replay, signals,
    symbolize::{self, Mapping},
};

/// How often the ring buffer is drained when the watermark wakeup does not come first.
const DRAIN_PERIOD: Duration = Duration::from_millis(100);

/// Runs what the configuration asks; returns the process exit code.
pub fn run(cfg: Config) -> Result<i32> {
    match cfg.mode {
        Mode::Trace(t) => trace(t, cfg.report),
        Mode::Replay(file) => replay::run(&file, cfg.report),
    }
}

fn trace(t: TraceOptions, opts: ReportOptions) -> Result<i32> {
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let settings = Settings {
            filter_pid: head_pid,
            ring_size: t.ring_size,
            stack_slots: t.stack_slots,
            min_size: t.min_size,
            max_size: t.max_size,
            follow_forks: t.follow_children,
            trace_maps: t.trace_maps,
            filter_set: match &t.target {
                Target::Pids(p) if p.len() > 1 => p.clone(),
                _ => Vec::new(),
            },
        };
        // Followed children are other processes: the probes must fire in every process that
        // maps the allocator (the kernel keeps only the followed ones).
        let scope_of = |pid: Option<u32>| if t.follow_children { None } else { pid };
        // Following children, the reports have a process level, as with several pids.
        let report_pid = if t.follow_children { 0 } else { head_pid };
        let mut collector = EbpfCollector::load(&settings)?;
        let early = EarlyBook::default();
        let watch = match collector.take_notices() {
            Some(ring) => {
                Some(MapWatch::start(ring, early.clone()).context("cannot start the map reader")?)
            }
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
        if let Target::Pids(_) = &t.target {
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
            for lib in target::system_allocators(&dirs) {
                match collector.attach(&lib, scope) {
                    Ok(_) => probed.push(lib.path.display().to_string()),
                    Err(e) => eprintln!("tracer: note: {e:#}"),
                }
            }
            if !probed.is_empty() {
                eprintln!(
                    "tracer: note: also probed up front, for programs started on them: {}",
                    probed.join(", ")
                );
            }
        }
        let noted = program.as_deref().and_then(file_id).into_iter().collect();
        let launched = match (held, program) {
            (Some(child), Some(program)) => Some(child.release(&program)?),
            _ => None,
        };
        signals::install(launched);
        // A launched command owns the terminal's input; marks then come by SIGUSR1 only.
        let enter_marks = launched.is_none() && signals::marks_from_terminal();
        let mut allocators: Vec<String> = plan
            .iter()
            .map(|(_, l)| l.path.display().to_string())
            .collect();
        allocators.dedup();
        let mut kinds: Vec<String> = plan.iter().map(|(_, l)| l.kinds()).collect();
        kinds.dedup();
        let (command, what) = match (&t.target, head_pid) {
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
            stack_slots: t.stack_slots,
        };
        let recorder = match &t.record {
            Some(path) => Some(Recorder::create(path, &head)?),
            None => None,
        };
        // Reports go through a writer thread: a slow reader of stdout never stalls the draining.
        let (out, writer) = output::spawn(std::io::stdout());
        let engine = Engine::new(opts, head, recorder, Box::new(out));
        let targets: Vec<u32> = plan.iter().filter_map(|(p, _)| *p).collect();
        // Keyed by the scope the probes really have (following children, every process).
        let attached = plan
            .iter()
            .filter_map(|(p, l)| file_id(&l.open_path).map(|id| (scope_of(*p), id)))
            .collect();
        let mut session = Session {
            launched,
            exec_retries: Vec::new(),
            exes_seen: Default::default(),
            scope_all: matches!(t.target, Target::All) || t.follow_children,
            followed: Vec::new(),
            launched_status: None,
            noted,
            attached,
            live: Live {
                collector,
                allocator_of: plan
                    .iter()
                    .filter_map(|(p, l)| p.map(|p| (p, Allocator::of(l))))
                    .collect(),
                default_allocator: plan
                    .first()
                    .map(|(_, l)| Allocator::of(l))
                    .unwrap_or_default(),
                early,
                _watch: watch,
                stacks: HashMap::new(),
            },
            stream,
            engine,
            targets,
            start,
            duration: t.duration,
            marks_handled: 0,
        };
        for pid in session.targets.clone() {
            session.engine.refresh_maps(&mut session.live, pid)?;
        }
        if matches!(t.target, Target::All) {
            for pid in user_processes() {
                session.probe_running(pid)?;
            }
        }
        let result = session.run(launched).await;
        drop(session);
        writer.finish();
        result
    })
}

/// The live world the pipeline reads: the kernel's stack map and /proc.
struct Live {
    collector: EbpfCollector,
    /// The allocator probed for each target pid; system-wide, the one library probed.
    allocator_of: std::collections::HashMap<u32, Allocator>,
    default_allocator: Allocator,
    /// What was known of a process while it could still be read (its name from the kernel,
    /// its map at exec and entering exit()), for a process gone before its events were read.
    early: EarlyBook,
    /// Reads maps into `early` as the kernel's notices come.
    _watch: Option<MapWatch>,
    /// The frames of the stacks the batch being ingested names.
    stacks: HashMap<i32, Arc<[u64]>>,
}

/// What the reports say of a process's allocator: the file probed and which allocator it is.
#[derive(Clone, Debug, Default)]
struct Allocator {
    path: String,
    kind: String,
}

impl Allocator {
    fn of(lib: &target::AllocatorLib) -> Allocator {
        Allocator {
            path: lib.path.display().to_string(),
            kind: lib.kinds(),
        }
    }
}

impl Source for Live {
    fn stack(&mut self, _pid: u32, stack_id: i32) -> Vec<u64> {
        self.stacks
            .get(&stack_id)
            .map(|f| f.to_vec())
            .unwrap_or_default()
    }

    fn maps(&mut self, pid: u32) -> Option<Vec<Mapping>> {
        symbolize::read_maps(pid).or_else(|| self.early.maps(pid))
    }

    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        let a = self
            .allocator_of
            .get(&pid)
            .unwrap_or(&self.default_allocator);
        let early = self.early.comm(pid);
        Some(ProcInfo {
            command: read_comm(pid).or(early)?,
            allocator: a.path.clone(),
            allocator_kind: a.kind.clone(),
            exited: false,
        })
    }
}

struct Session {
    /// The launched command, if any.
    launched: Option<u32>,
    /// Exec'd processes whose allocator could not be found yet, and how often it was tried.
    exec_retries: Vec<(u32, u32)>,
    /// Programs (scope pid, file identity) whose allocator was already found, and its path.
    exes_seen: std::collections::HashMap<(Option<u32>, (u64, u64)), Allocator>,
    /// Programs (file identity) whose notes were said.
    noted: std::collections::HashSet<(u64, u64)>,
    /// Probes attached for one process reach every process (system-wide, or following
    /// children: the kernel filters).
    scope_all: bool,
    /// Processes forked by the target (and theirs) that are still alive (--follow-children).
    followed: Vec<u32>,
    /// The launched command's exit, while followed children still run.
    launched_status: Option<ExitStatus>,
    /// Allocator files probed, by (scope pid, (device, inode)): one probe set per file.
    attached: std::collections::HashSet<(Option<u32>, (u64, u64))>,
    live: Live,
    /// The kernel's events, in batches, from the ring buffer's reader thread.
    stream: Stream,
    engine: Engine,
    /// The processes asked for (none: every process).
    targets: Vec<u32>,
    start: Instant,
    duration: Option<Duration>,
    marks_handled: u32,
}

enum End {
    Exited(Option<ExitStatus>),
    Stopped,
}

impl Session {
    async fn run(&mut self, launched: Option<u32>) -> Result<i32> {
        let deadline = self.duration.map(|d| self.start + d);
        let end = loop {
            let next_report = self.start + Duration::from_nanos(self.engine.next_report_ns());
            let mut wake = next_report;
            if let Some(d) = deadline {
                wake = wake.min(d);
            }
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(DRAIN_PERIOD);
            if let Some(b) = self.stream.next(wait).await {
                self.ingest(b)?;
                while let Some(b) = self.stream.try_next() {
                    self.ingest(b)?;
                }
            }
            let stops = signals::stop_requests();
            // A launched command gets the signal too; wait for it unless asked twice.
            if stops > 1 || (stops == 1 && launched.is_none()) {
                break End::Stopped;
            }
            self.forget_gone();
            if let Some(child) = launched {
                if self.launched_status.is_none() {
                    self.launched_status = launch::try_wait(child);
                }
                if self.launched_status.is_some() && self.followed.is_empty() {
                    break End::Exited(self.launched_status);
                }
            } else if !self.targets.is_empty()
                && !self.targets.iter().any(|&p| alive(p))
                && self.followed.is_empty()
            {
                break End::Exited(None);
            }
            if self.engine.multi() {
                for pid in self.engine.live_processes() {
                    if !alive(pid) {
                        self.engine.process_exited(pid)?;
                    }
                }
                self.engine.recheck_names(&mut self.live)?;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break End::Stopped;
            }
            let marks = signals::mark_requests();
            let due = marks != self.marks_handled
                || ns(self.start.elapsed()) >= self.engine.next_report_ns();
            if due {
                // A report holds every event the kernel sent before it.
                self.flush().await?;
            }
            let t_ns = ns(self.start.elapsed());
            let c = self.live.collector.counters();
            // Read per process only when a report will use them (a table of up to 8,192).
            if due {
                self.engine
                    .set_process_losses(self.live.collector.lost_by_pid())?;
            }
            let mut flow = Flow::Continue;
            if marks != self.marks_handled {
                self.marks_handled = marks;
                flow = self.engine.mark(t_ns, &c)?;
            }
            if flow == Flow::Continue {
                let reports = t_ns >= self.engine.next_report_ns();
                flow = self.engine.tick(t_ns, &c)?;
                if reports {
                    // Libraries loaded since: their frames are named while the process lives.
                    self.engine.refresh_live(&mut self.live)?;
                }
            }
            // Nobody reads the reports any more (`tracer -- cmd | head`). A launched command
            // is never left running without tracer: tracing goes on without reports until it
            // ends, the other outputs (--record, --flame) are still written, and tracer exits
            // with its status. Otherwise there is nothing to wait for.
            if flow == Flow::Quit && launched.is_none() {
                return Ok(0);
            }
        };
        // Whatever the kernel still holds belongs in the final report, and so does which
        // processes have exited.
        self.flush().await?;
        if self.engine.multi() {
            for pid in self.engine.live_processes() {
                if !alive(pid) {
                    self.engine.process_exited(pid)?;
                }
            }
        }
        let exit = match end {
            End::Exited(status) => status,
            End::Stopped => None,
        };
        let c = self.live.collector.counters();
        self.engine
            .set_process_losses(self.live.collector.lost_by_pid())?;
        self.engine
            .finish(ns(self.start.elapsed()), &c, exit.map(ExitStatus::code))?;
        Ok(match exit {
            Some(s) => s.code(),
            None => 0,
        })
    }

    /// Followed children that exited leave the kernel's table (their pids may be reused), and
    /// what was noted of processes at their exec goes once they are long gone.
    fn forget_gone(&mut self) {
        self.live.early.retain(Duration::from_secs(10), alive);
        // Tracing every process, one entry per process that ever ran would pile up.
        if self.live.allocator_of.len() > 1024 {
            let targets = &self.targets;
            self.live
                .allocator_of
                .retain(|pid, _| targets.contains(pid) || alive(*pid));
        }
        let collector = &mut self.live.collector;
        self.followed.retain(|&pid| {
            let keep = alive(pid);
            if !keep {
                collector.unfollow(pid);
            }
            keep
        });
    }

    /// Ingests everything the kernel holds now.
    async fn flush(&mut self) -> Result<()> {
        for b in self.stream.flush().await {
            self.ingest(b)?;
        }
        Ok(())
    }

    fn ingest(&mut self, mut batch: Batch) -> Result<()> {
        for ev in &batch.events {
            if let Event::Exec { pid, .. } = *ev {
                // Its map was read when the kernel's notice came (see mapwatch).
                let comm = batch.exec_names.remove(&pid);
                let mut early = self.live.early.lock();
                let e = early.entry(pid).or_default();
                e.comm = comm;
                e.at.get_or_insert_with(Instant::now);
            }
            if let Event::Fork { pid, parent, .. } = *ev {
                self.followed.push(pid);
                // Its allocator is its parent's until it execs.
                if let Some(a) = self.live.allocator_of.get(&parent).cloned() {
                    self.live.allocator_of.insert(pid, a);
                }
            }
        }
        self.live.stacks = std::mem::take(&mut batch.stacks);
        let r = self.engine.ingest(&mut self.live, &batch.events);
        self.live.stacks.clear();
        r?;
        self.retry_execs()?;
        for pid in self.engine.take_execs() {
            // With several --pid the kernel reports every exec (its pid filter is off; the
            // probes are scoped per process): only the targets' matter.
            if !self.scope_all && !self.targets.contains(&pid) && Some(pid) != self.launched {
                continue;
            }
            if !self.probe_after_exec(pid)? && alive(pid) {
                self.exec_retries.push((pid, 0));
            }
            self.engine.learn_after_exec(&mut self.live, pid)?;
            // Its new program's map, read now: a process that lives only milliseconds may be
            // gone before its first events are drained, and its program's frames can still
            // be named (libraries mapped later are read with its first new sites).
            self.engine.refresh_maps(&mut self.live, pid)?;
        }
        Ok(())
    }

    /// A traced process exec'd: probe its new program's allocator unless that file already is
    /// (for this process, or for every process when tracing system-wide).
    /// Ok(false): its libraries are not mapped yet (look again later).
    fn probe_after_exec(&mut self, pid: u32) -> Result<bool> {
        self.probe_process(pid, true)
    }

    /// A process that was running before tracing began (system-wide): probe its allocator
    /// if that is not the file already probed (jemalloc linked into a service, another C
    /// library in a container). Its allocations before now are not known: their frees count
    /// as unknown frees.
    fn probe_running(&mut self, pid: u32) -> Result<()> {
        self.probe_process(pid, false).map(|_| ())
    }

    fn probe_process(&mut self, pid: u32, exec: bool) -> Result<bool> {
        let scope = if self.scope_all { None } else { Some(pid) };
        // A program already examined (most execs on a busy host run the same few) brings no
        // new allocator: its libraries are not parsed again.
        let exe = file_id(std::path::Path::new(&format!("/proc/{pid}/exe")));
        if Some(pid) != self.launched {
            if let Some(a) = exe.and_then(|e| self.exes_seen.get(&(scope, e))) {
                self.live.allocator_of.insert(pid, a.clone());
                self.engine.relearn(&mut self.live, pid)?;
                return Ok(true);
            }
        }
        // Just after the exec (the launched command is held there) nothing but the program
        // and its loader is mapped yet: find its libraries as its loader will (reading files,
        // with the process's own LD_PRELOAD), rather than wait for them to appear in its map.
        let lib = if exec {
            target::for_exec(pid).or_else(|_| target::for_pid(pid))
        } else {
            target::for_pid(pid)
        };
        let lib = match lib {
            Ok(lib) => lib,
            Err(e) => {
                // A program with no allocator tracer knows is worth saying, once.
                if matches!(e, target::Lookup::NoAllocator(_))
                    && exe.is_some_and(|x| self.noted.insert(x))
                {
                    eprintln!("tracer: note: pid {pid} ({}): {e}", comm(pid));
                }
                // Not mapped yet (or gone).
                return Ok(false);
            }
        };
        let Some(id) = file_id(&lib.open_path) else {
            return Ok(true);
        };
        // Said once per program (the launched one's at the start).
        if exe.is_some_and(|e| self.noted.insert(e)) {
            for n in &lib.notes {
                eprintln!("tracer: note: pid {pid}: {n}");
            }
        }
        let a = Allocator::of(&lib);
        if let Some(exe) = exe {
            self.exes_seen.insert((scope, exe), a.clone());
        }
        self.live.allocator_of.insert(pid, a);
        // Its events may have come in the same batch as its exec: the engine met it first.
        self.engine.relearn(&mut self.live, pid)?;
        // A pure Go program has no allocator functions: its mappings are traced already.
        if lib.mappings_only() {
            return Ok(true);
        }
        if self.attached.insert((scope, id)) {
            let before = self.live.collector.probes();
            if let Err(e) = self.live.collector.attach(&lib, scope) {
                // A process gone while its probes went on has nothing left to trace.
                if scope.is_some() && !alive(pid) {
                    return Ok(true);
                }
                return Err(e);
            }
            // Said when it took new probes (not for a library probed up front).
            if self.live.collector.probes() > before {
                eprintln!(
                    "tracer: note: pid {pid} ({}) {}: probing its allocator ({}) in {}",
                    comm(pid),
                    if exec { "exec'd" } else { "is running" },
                    lib.kinds(),
                    lib.path.display()
                );
            }
        }
        Ok(true)
    }

    /// Processes whose libraries were not mapped yet at the last look: look again (a few
    /// times, one drain apart).
    fn retry_execs(&mut self) -> Result<()> {
        for (pid, tries) in std::mem::take(&mut self.exec_retries) {
            if tries < 10 && alive(pid) && !self.probe_after_exec(pid)? {
                self.exec_retries.push((pid, tries + 1));
            }
        }
        Ok(())
    }
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

fn comm(pid: u32) -> String {
    read_comm(pid).unwrap_or_else(|| "?".into())
}

/// The command name of a process (/proc/PID/comm), None when it is gone.
fn read_comm(pid: u32) -> Option<String> {
    let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(c.trim_end().to_string())
}

/// The process state letter from /proc/PID/stat (R, S, T, Z...), None when it is gone.
fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The user processes running now (not kernel threads, not tracer).
fn user_processes() -> Vec<u32> {
    let me = std::process::id();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(|p| p.ok())
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            const PF_KTHREAD: u32 = 0x0020_0000;
            (stat.flags & PF_KTHREAD == 0 && p.pid as u32 != me).then_some(p.pid as u32)
        })
        .collect()
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}
