//! `tracer`: parse the flags, validate them into a config, run, turn the outcome into an exit
//! code. Errors are printed once, here, as a sentence saying what to do.
mod aggregate;
mod app;
mod cli;
mod collector;
mod config;
mod engine;
mod flame;
mod output;
mod procs;
mod reach;
mod record;
mod replay;
mod report;
mod serve;
mod signals;
mod symbolize;
mod tui;
mod unwind;

/// Not the C library's malloc: tracing every process (or children), its probes would trap on
/// each of tracer's own allocations too (filtered out in the kernel, but after the trap: about
/// 85 % of tracer's CPU while a host execs programs, by `perf record`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let cfg = match config::Config::from_cli(cli) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            // Flags that do not go together, or name nothing, are bad usage (2, as clap's own);
            // an output that cannot be created is the system's refusal (1).
            let usage = e.downcast_ref::<output::CannotWrite>().is_none();
            return ExitCode::from(if usage { 2 } else { 1 });
        }
    };
    let result = app::run(cfg);
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
