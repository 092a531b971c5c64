//! Where reports go: the table or JSON lines on the output, and the hints of lost events on
//! stderr the first time each grows.
use std::io::Write;

use anyhow::{Context, Result};

use super::{json, lost_hints, table, Format, LimitSettings, Report, ReportKind};

/// Whether to go on: a reader that closed the output ends the run quietly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Quit,
}

pub struct Writer {
    out: Box<dyn Write>,
    format: Format,
    limits: LimitSettings,
    /// Losses already announced on stderr.
    lost_told: u64,
    /// Only the final report (the others go to the live view).
    final_only: bool,
}

impl Writer {
    pub fn new(out: Box<dyn Write>, format: Format, limits: LimitSettings) -> Writer {
        Writer {
            out,
            format,
            limits,
            lost_told: 0,
            final_only: false,
        }
    }

    /// From now on only the final report is written (the live view shows the others).
    pub fn final_only(&mut self) {
        self.final_only = true;
    }

    /// Writes a report; Quit when the output is gone.
    pub fn write(&mut self, r: &Report) -> Result<Flow> {
        if self.final_only && r.kind != ReportKind::Final {
            return Ok(Flow::Continue);
        }
        let lost_now: u64 = r.lost.values().sum();
        if lost_now > self.lost_told {
            for h in lost_hints(&r.lost, self.limits) {
                eprintln!("tracer: warning: {h}");
            }
            self.lost_told = lost_now;
        }
        let res = match self.format {
            Format::Table => table::write(r, self.limits, &mut self.out),
            Format::Json => json::write(r, &mut self.out),
        };
        match res {
            Ok(()) => Ok(Flow::Continue),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Flow::Quit),
            Err(e) => Err(e).context("cannot write the report"),
        }
    }
}
