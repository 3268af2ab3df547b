//! `cps`: connections per second. Each of N workers loops: connect, send a small request (64 B
//! by default), read its echo and verify it, close (RST by default, or FIN and wait for the
//! peer's FIN). Latency is connect + exchange, measured before the close; the connect alone is
//! reported too. A failed connection is counted and the worker goes on after a 1 ms pause (so
//! a refusing target is not hammered).
//!
//! With TLS ([`CpsConfig::tls`]) each connection runs a TLS 1.3 handshake right after the
//! connect, inside the measured exchange: full handshakes by default, resumed ones (a ticket
//! from the run's shared session cache) with `resume`. The report counts how many resumed and
//! summarizes the handshakes' own latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, ErrorSink, Failure};
use crate::hist::{LatencyHistogram, LatencySummary};
use crate::net::{self, CloseMode, Conn, ProxyHeader};
use crate::pattern::{conn_seed, fill, PatternVerifier};
use crate::report::{Progress, Report, TableRows};
use crate::throughput::CONNS_MAX;
use crate::tls::{TlsClient, TlsOptions, TlsParams};

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
    /// TLS on every connection (`None`: plain TCP).
    pub tls: Option<TlsOptions>,
    /// A PROXY header first on every connection (`None`: none).
    pub proxy_header: Option<ProxyHeader>,
    /// Connections started per second, all workers together (`None`: as fast as they
    /// complete, closed loop). Each worker starts its k-th connection at
    /// `k * concurrency / rate` seconds, or as soon as the one before is done if later.
    pub rate_per_s: Option<f64>,
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
            tls: None,
            proxy_header: None,
            rate_per_s: None,
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
    /// Present only with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsParams>,
    /// Present only with a PROXY header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyHeader>,
}

impl TableRows for CpsParams {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("concurrency", self.concurrency.to_string()),
            ("msg", format!("{}B", self.msg_bytes)),
            ("close", self.close.name().to_string()),
            ("duration", format!("{}s", self.duration_s)),
        ];
        if let Some(tls) = &self.tls {
            rows.push(("tls", tls.row()));
        }
        if let Some(p) = self.proxy_protocol {
            rows.push(("PROXY header", p.name().to_string()));
        }
        rows
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
    /// TLS only: completed connections whose handshake resumed a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_resumed: Option<u64>,
    /// TLS only: the handshake alone (after the connect, before the request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_handshake_latency_us: Option<LatencySummary>,
}

impl TableRows for CpsResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("connections", self.connections.to_string()),
            ("connections/s", format!("{:.0}", self.connections_per_s)),
            ("connect (µs)", self.connect_latency_us.row()),
        ];
        if let Some(resumed) = self.tls_resumed {
            rows.push(("TLS resumed", resumed.to_string()));
        }
        if let Some(handshake) = &self.tls_handshake_latency_us {
            rows.push(("TLS handshake (µs)", handshake.row()));
        }
        rows
    }
}

/// A cps report; `latency_us` is connect + exchange.
pub type CpsReport = Report<CpsParams, CpsResults>;

#[derive(Debug)]
struct WorkerOutcome {
    total: LatencyHistogram,
    connect: LatencyHistogram,
    handshake: LatencyHistogram,
    completed: u64,
    resumed: u64,
}

/// The instants of one connection: connected, handshake done (= connected without TLS),
/// response verified; and whether TLS resumed.
struct ConnTimes {
    connected: Instant,
    handshaken: Instant,
    exchanged: Instant,
    resumed: bool,
}

/// Runs a connections-per-second test against an echo server.
pub fn run_cps(cfg: &CpsConfig) -> Result<CpsReport, BenchError> {
    cfg.validate()?;
    let tls = cfg.tls.as_ref().map(TlsClient::new).transpose()?;
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorSink::default());
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut handles = Vec::with_capacity(cfg.concurrency);
    for w in 0..cfg.concurrency {
        let cfg = cfg.clone();
        let completed = Arc::clone(&completed);
        let errors = Arc::clone(&errors);
        let tls = tls.clone();
        let spawned = thread::Builder::new()
            .name(format!("cps-{w}"))
            .spawn(move || worker(&cfg, tls.as_ref(), w, deadline, &completed, &errors));
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
    let mut handshake = LatencyHistogram::new();
    let mut connections = 0;
    let mut resumed = 0;
    for h in handles {
        match h.join() {
            Ok(o) => {
                total.merge(&o.total);
                connect.merge(&o.connect);
                handshake.merge(&o.handshake);
                connections += o.completed;
                resumed += o.resumed;
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
            tls: cfg.tls.as_ref().map(TlsOptions::params),
            proxy_protocol: cfg.proxy_header,
        },
        elapsed,
        CpsResults {
            connections,
            connections_per_s: connections as f64 / elapsed.max(1e-9),
            bytes_each_way: connections * cfg.msg as u64,
            connect_latency_us: connect.summary(),
            tls_resumed: tls.as_ref().map(|_| resumed),
            tls_handshake_latency_us: tls.as_ref().map(|_| handshake.summary()),
        },
        error_counts,
        samples,
        Some(total.summary()),
    ))
}

fn worker(
    cfg: &CpsConfig,
    tls: Option<&TlsClient>,
    w: usize,
    deadline: Instant,
    completed: &AtomicU64,
    errors: &ErrorSink,
) -> WorkerOutcome {
    let mut out = WorkerOutcome {
        total: LatencyHistogram::new(),
        connect: LatencyHistogram::new(),
        handshake: LatencyHistogram::new(),
        completed: 0,
        resumed: 0,
    };
    let mut request = vec![0u8; cfg.msg];
    let mut response = vec![0u8; cfg.msg];
    let mut k: u64 = 0;
    let started = Instant::now();
    // Workers start offset from each other so the paced starts spread over the interval.
    let interval = cfg
        .rate_per_s
        .map(|r| Duration::from_secs_f64(cfg.concurrency as f64 / r));
    while Instant::now() < deadline {
        if let Some(interval) = interval {
            let offset = interval.mul_f64(w as f64 / cfg.concurrency as f64);
            let due = started + offset + interval.mul_f64(k as f64);
            if due >= deadline {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let seed = conn_seed(k * cfg.concurrency as u64 + w as u64);
        k += 1;
        let t0 = Instant::now();
        let result =
            net::connect(cfg.target, cfg.connect_timeout, cfg.io_timeout).and_then(|mut tcp| {
                net::send_proxy_header(&mut tcp, cfg.proxy_header)?;
                let connected = Instant::now();
                let mut stream = Conn::establish(tcp, tls)?;
                let handshaken = Instant::now();
                fill(seed, 0, &mut request);
                net::write_all(&mut stream, &request, "request")?;
                let mut verifier = PatternVerifier::new(seed);
                net::read_verified(&mut stream, &mut response, &mut verifier, "response")?;
                let exchanged = Instant::now();
                let resumed = stream.tls_resumed() == Some(true);
                net::close(stream, cfg.close)?;
                Ok(ConnTimes {
                    connected,
                    handshaken,
                    exchanged,
                    resumed,
                })
            });
        match result {
            Ok(t) => {
                out.connect.record_ns((t.connected - t0).as_nanos() as u64);
                out.handshake
                    .record_ns((t.handshaken - t.connected).as_nanos() as u64);
                out.total.record_ns((t.exchanged - t0).as_nanos() as u64);
                out.completed += 1;
                out.resumed += u64::from(t.resumed);
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
