//! Human and JSON output, progress bars.
//!
//! stdout carries data (tables, JSON Lines); stderr carries progress and
//! diagnostics. Bars are drawn only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressFinish, ProgressStyle};
use serde::Serialize;

/// Version of the `--json` line schema (README.md "Output"; docs/STATS.md for `stats` and `diff`).
pub const JSON_SCHEMA: u32 = 1;

/// One JSON line: `{"type": ..., "schema": 1, "data": ...}`.
#[derive(Serialize)]
pub struct Envelope<T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: u32,
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    pub fn new(kind: &'static str, data: T) -> Self {
        Envelope {
            kind,
            schema: JSON_SCHEMA,
            data,
        }
    }
}

/// The `--json` record of a failure: `{"type": "error", "schema": 1, "data":
/// {"message": ..., "code": ...}}`, `code` being the exit code.
pub fn error_record(message: &str, code: u8) -> Envelope<ErrorRecord<'_>> {
    Envelope::new("error", ErrorRecord { message, code })
}

/// The data of an `error` line.
#[derive(Serialize)]
pub struct ErrorRecord<'a> {
    pub message: &'a str,
    pub code: u8,
}

pub fn print_json<T: Serialize>(line: &T) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    serde_json::to_writer(&mut out, line)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Human-readable byte count (binary units).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Whether and how to show progress. Bars shown at the same time (a build
/// reads one layer while it chunks another) are drawn one per line.
pub struct Progress {
    enabled: bool,
    multi: MultiProgress,
}

impl Progress {
    pub fn new(disabled: bool) -> Self {
        Progress {
            enabled: !disabled && std::io::stderr().is_terminal(),
            multi: MultiProgress::new(),
        }
    }

    /// A byte-count bar towards a known total, with percent, rate and ETA;
    /// hidden when progress is off.
    pub fn bar(&self, msg: &str, len: u64) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        // Cleared also when dropped unfinished (an error): the message
        // follows on a clean line.
        let pb = self
            .multi
            .add(ProgressBar::new(len).with_finish(ProgressFinish::AndClear));
        pb.set_style(
            ProgressStyle::with_template(
                // Fits 80 columns: the bar takes what the terminal has left.
                "{msg:20!} [{wide_bar}] {bytes:>9}/{total_bytes:<9} {percent:>3}% {bytes_per_sec:>10} {eta:>3}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// A byte counter with no known total (its message lines up with the
    /// bars' messages).
    pub fn counter(&self, msg: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let pb = self
            .multi
            .add(ProgressBar::no_length().with_finish(ProgressFinish::AndClear));
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg:18!} {bytes:>10} {bytes_per_sec:>12}")
                .expect("valid template"),
        );
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    pub fn spinner(&self, msg: &str) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}
