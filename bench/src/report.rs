//! The report every mode returns: one envelope (`Report<P, R>`) with mode-specific `params` and
//! `results`, printed as a table and written as JSON. The schema is documented in
//! `bench/README.md`; [`SCHEMA`] names its version.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCounts;
use crate::hist::LatencySummary;

/// The `schema` value of every report this version writes.
pub const SCHEMA: &str = "switchyard-bench/v1";

/// Mode-specific parts of a report that render as table rows.
pub trait TableRows {
    /// `(label, value)` pairs, in display order.
    fn rows(&self) -> Vec<(&'static str, String)>;
}

impl TableRows for serde_json::Value {
    fn rows(&self) -> Vec<(&'static str, String)> {
        match self {
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| ("", format!("{k} = {v}")))
                .collect(),
            other => vec![("", other.to_string())],
        }
    }
}

/// One run's report. `P` and `R` are the mode's params and results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report<P, R> {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// `throughput`, `rr`, `cps`, `idle` or `udp`.
    pub mode: String,
    /// The address the run connected to.
    pub target: String,
    /// What was asked for.
    pub params: P,
    /// Measured wall time of the run's main phase, seconds.
    pub duration_s: f64,
    /// What was measured.
    pub results: R,
    /// Failures by class.
    pub errors: ErrorCounts,
    /// Sum of `errors`.
    pub errors_total: u64,
    /// The first few failure messages, verbatim.
    pub error_samples: Vec<String>,
    /// Latency percentiles in µs, for modes that measure latency (`null` for throughput).
    pub latency_us: Option<LatencySummary>,
}

/// Any report, with `params` and `results` left as JSON: for tools that read reports of every
/// mode.
pub type Envelope = Report<serde_json::Value, serde_json::Value>;

impl<P, R> Report<P, R> {
    /// A report with `errors_total` computed from `errors`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: &str,
        target: String,
        params: P,
        duration_s: f64,
        results: R,
        errors: ErrorCounts,
        error_samples: Vec<String>,
        latency_us: Option<LatencySummary>,
    ) -> Report<P, R> {
        Report {
            schema: SCHEMA.to_string(),
            mode: mode.to_string(),
            target,
            params,
            duration_s,
            results,
            errors_total: errors.total(),
            errors,
            error_samples,
            latency_us,
        }
    }

    /// True when no error of any class was counted.
    pub fn ok(&self) -> bool {
        self.errors.total() == 0
    }
}

impl<P: TableRows, R: TableRows> Report<P, R> {
    /// A human-readable table, one `label  value` per line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "switchyard-bench {} -> {}", self.mode, self.target);
        let mut rows: Vec<(String, String)> = Vec::new();
        let params = self
            .params
            .rows()
            .into_iter()
            .map(|(k, v)| if k.is_empty() { v } else { format!("{k}={v}") })
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(("params".into(), params));
        rows.push(("duration".into(), format!("{:.3} s", self.duration_s)));
        for (k, v) in self.results.rows() {
            rows.push((k.to_string(), v));
        }
        if let Some(lat) = &self.latency_us {
            rows.push(("latency (µs)".into(), lat.row()));
        }
        rows.push((
            "errors".into(),
            format!("{}  ({})", self.errors.total(), self.errors.summary()),
        ));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in rows {
            let pad = width - k.chars().count();
            let _ = writeln!(out, "  {k}{}  {v}", " ".repeat(pad));
        }
        for sample in &self.error_samples {
            let _ = writeln!(out, "  ! {sample}");
        }
        out
    }
}

impl<P: Serialize, R: Serialize> Report<P, R> {
    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("reports serialize to JSON")
    }

    /// Writes [`Report::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        let mut text = self.to_json();
        text.push('\n');
        std::fs::write(path, text)
    }
}

impl<P: DeserializeOwned, R: DeserializeOwned> Report<P, R> {
    /// Parses a report written by [`Report::to_json`].
    pub fn from_json(text: &str) -> serde_json::Result<Report<P, R>> {
        serde_json::from_str(text)
    }
}

/// Formats a byte count with a binary suffix (`64 KiB`).
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// Runs at least this long get a progress line on stderr.
pub const PROGRESS_MIN_RUN: Duration = Duration::from_secs(3);

/// A once-a-second progress line on stderr, while a run lasts.
#[derive(Debug)]
pub(crate) struct Progress {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts printing `label elapsed/total line()` every second when `enabled` and `total` is
    /// at least [`PROGRESS_MIN_RUN`]; otherwise does nothing.
    pub(crate) fn start(
        enabled: bool,
        label: &'static str,
        total: Duration,
        line: impl Fn() -> String + Send + 'static,
    ) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || total < PROGRESS_MIN_RUN {
            return Progress { stop, handle: None };
        }
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let start = Instant::now();
                let tty = io::stderr().is_terminal();
                let mut printed = false;
                let mut next = Duration::from_secs(1);
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(100));
                    let elapsed = start.elapsed();
                    if elapsed < next {
                        continue;
                    }
                    next += Duration::from_secs(1);
                    let text = format!(
                        "[{label}] {:>4.0}s/{:.0}s  {}",
                        elapsed.as_secs_f64(),
                        total.as_secs_f64(),
                        line()
                    );
                    let mut err = io::stderr().lock();
                    let _ = if tty {
                        write!(err, "\r\x1b[2K{text}")
                    } else {
                        writeln!(err, "{text}")
                    };
                    let _ = err.flush();
                    printed = true;
                }
                if tty && printed {
                    let _ = writeln!(io::stderr());
                }
            })
            .ok();
        Progress { stop, handle }
    }

    /// Stops the progress line.
    pub(crate) fn finish(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_format() {
        assert_eq!(fmt_bytes(64), "64 B");
        assert_eq!(fmt_bytes(65536), "64.00 KiB");
        assert_eq!(fmt_bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
    }
}
