//! `cps`: connections per second. Each of N workers loops: connect, send a small request (64 B
//! by default), read its echo and verify it, close (RST by default, or FIN and wait for the
//! peer's FIN). Latency is connect + exchange, measured before the close; the connect alone is
//! reported too. A failed connection is counted and the worker goes on after a 1 ms pause (so
//! a refusing target is not hammered).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, ErrorSink, Failure};
use crate::hist::{LatencyHistogram, LatencySummary};
use crate::net::{self, CloseMode};
use crate::pattern::{conn_seed, fill, PatternVerifier};
use crate::report::{Progress, Report, TableRows};
use crate::throughput::CONNS_MAX;

/// The pause after a failed connection.
pub const FAILURE_PAUSE: Duration = Duration::from_millis(1);
/// The largest request accepted.
pub const CPS_MSG_MAX: usize = 1024 * 1024;

/// What a `cps` run does.
#[derive(Debug, Clone, PartialEq)]
pub struct CpsConfig {
    pub target: SocketAddr,
    /// Connections in flight at once (one worker thread each).
    pub concurrency: usize,
    pub duration: Duration,
    /// Request (and echoed response) size, bytes.
    pub msg: usize,
    pub close: CloseMode,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub progress: bool,
}

impl CpsConfig {
    /// Concurrency 1, 3 s, 64 B, RST close, 2 s connect and 5 s I/O timeouts.
    pub fn new(target: SocketAddr) -> CpsConfig {
        CpsConfig {
            target,
            concurrency: 1,
            duration: Duration::from_secs(3),
            msg: 64,
            close: CloseMode::Rst,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            progress: false,
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.concurrency == 0 || self.concurrency > CONNS_MAX {
            return Err(BenchError::Config(format!(
                "concurrency must be 1..={CONNS_MAX}, got {}",
                self.concurrency
            )));
        }
        if self.msg == 0 || self.msg > CPS_MSG_MAX {
            return Err(BenchError::Config(format!(
                "msg must be 1..={CPS_MSG_MAX} bytes, got {}",
                self.msg
            )));
        }
        if self.duration.is_zero() {
            return Err(BenchError::Config("duration must be positive".into()));
        }
        Ok(())
    }
}

/// `params` of a cps report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpsParams {
    pub concurrency: usize,
    pub msg_bytes: usize,
    pub close: CloseMode,
    pub duration_s: f64,
    pub connect_timeout_s: f64,
    pub io_timeout_s: f64,
}

impl TableRows for CpsParams {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("concurrency", self.concurrency.to_string()),
            ("msg", format!("{}B", self.msg_bytes)),
            ("close", self.close.name().to_string()),
            ("duration", format!("{}s", self.duration_s)),
        ]
    }
}

/// `results` of a cps report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpsResults {
    /// Connections that connected, exchanged verified bytes and closed cleanly.
    pub connections: u64,
    /// `connections` over `duration_s`.
    pub connections_per_s: f64,
    /// Bytes sent (and received back) over completed connections.
    pub bytes_each_way: u64,
    /// The connect alone (the envelope's `latency_us` is connect + exchange).
    pub connect_latency_us: LatencySummary,
}

impl TableRows for CpsResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("connections", self.connections.to_string()),
            ("connections/s", format!("{:.0}", self.connections_per_s)),
            ("connect (µs)", self.connect_latency_us.row()),
        ]
    }
}

/// A cps report; `latency_us` is connect + exchange.
pub type CpsReport = Report<CpsParams, CpsResults>;

#[derive(Debug)]
struct WorkerOutcome {
    total: LatencyHistogram,
    connect: LatencyHistogram,
    completed: u64,
}

/// Runs a connections-per-second test against an echo server.
pub fn run_cps(cfg: &CpsConfig) -> Result<CpsReport, BenchError> {
    cfg.validate()?;
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorSink::default());
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut handles = Vec::with_capacity(cfg.concurrency);
    for w in 0..cfg.concurrency {
        let cfg = cfg.clone();
        let completed = Arc::clone(&completed);
        let errors = Arc::clone(&errors);
        let spawned = thread::Builder::new()
            .name(format!("cps-{w}"))
            .spawn(move || worker(&cfg, w, deadline, &completed, &errors));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The workers already started stop at the deadline on their own.
                for h in handles {
                    let _ = h.join();
                }
                return Err(BenchError::Io(e));
            }
        }
    }
    let progress = {
        let completed = Arc::clone(&completed);
        let errors = Arc::clone(&errors);
        let last = Mutex::new((0u64, Instant::now()));
        Progress::start(cfg.progress, "cps", cfg.duration, move || {
            let total = completed.load(Ordering::Relaxed);
            let mut prev = last.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let secs = now.duration_since(prev.1).as_secs_f64().max(1e-9);
            let rate = total.saturating_sub(prev.0) as f64 / secs;
            *prev = (total, now);
            format!("{rate:.0} conn/s  errors {}", errors.total())
        })
    };
    let mut total = LatencyHistogram::new();
    let mut connect = LatencyHistogram::new();
    let mut connections = 0;
    for h in handles {
        match h.join() {
            Ok(o) => {
                total.merge(&o.total);
                connect.merge(&o.connect);
                connections += o.completed;
            }
            Err(_) => errors.record(&Failure::new(ErrorClass::Other, "worker thread panicked")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish();
    let (error_counts, samples) = errors.snapshot();
    Ok(Report::new(
        "cps",
        cfg.target.to_string(),
        CpsParams {
            concurrency: cfg.concurrency,
            msg_bytes: cfg.msg,
            close: cfg.close,
            duration_s: cfg.duration.as_secs_f64(),
            connect_timeout_s: cfg.connect_timeout.as_secs_f64(),
            io_timeout_s: cfg.io_timeout.as_secs_f64(),
        },
        elapsed,
        CpsResults {
            connections,
            connections_per_s: connections as f64 / elapsed.max(1e-9),
            bytes_each_way: connections * cfg.msg as u64,
            connect_latency_us: connect.summary(),
        },
        error_counts,
        samples,
        Some(total.summary()),
    ))
}

fn worker(
    cfg: &CpsConfig,
    w: usize,
    deadline: Instant,
    completed: &AtomicU64,
    errors: &ErrorSink,
) -> WorkerOutcome {
    let mut out = WorkerOutcome {
        total: LatencyHistogram::new(),
        connect: LatencyHistogram::new(),
        completed: 0,
    };
    let mut request = vec![0u8; cfg.msg];
    let mut response = vec![0u8; cfg.msg];
    let mut k: u64 = 0;
    while Instant::now() < deadline {
        let seed = conn_seed(k * cfg.concurrency as u64 + w as u64);
        k += 1;
        let t0 = Instant::now();
        let result =
            net::connect(cfg.target, cfg.connect_timeout, cfg.io_timeout).and_then(|mut stream| {
                let t1 = Instant::now();
                fill(seed, 0, &mut request);
                net::write_all(&mut stream, &request, "request")?;
                let mut verifier = PatternVerifier::new(seed);
                net::read_verified(&mut stream, &mut response, &mut verifier, "response")?;
                let t2 = Instant::now();
                net::close(stream, cfg.close)?;
                Ok((t1, t2))
            });
        match result {
            Ok((t1, t2)) => {
                out.connect.record_ns((t1 - t0).as_nanos() as u64);
                out.total.record_ns((t2 - t0).as_nanos() as u64);
                out.completed += 1;
                completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => {
                errors.record(&f);
                thread::sleep(FAILURE_PAUSE);
            }
        }
    }
    out
}
