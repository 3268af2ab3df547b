//! `rr`: request/response latency against an echo server.
//!
//! Each connection sends a `msg`-byte request and reads the `msg`-byte echo, verified byte for
//! byte (request `i` carries the pattern bytes at offset `i * msg`, so a stale, duplicated or
//! misrouted response is a mismatch). Closed loop by default; with a rate, open loop with
//! coordinated-omission correction (see [`crate::pacing`]). A connection stops at its first
//! failure; the others go on.
//!
//! With TLS ([`RrConfig::tls`]) each connection completes its handshake before the clock
//! starts; every request and response then goes through TLS records.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, ErrorSink, Failure};
use crate::gate::Gate;
use crate::hist::LatencyHistogram;
use crate::net::{self, Conn, ProxyHeader};
use crate::pacing::{drive, LoopStats, MonotonicClock, OpenLoopSchedule, Pacing};
use crate::pattern::{conn_seed, fill, PatternVerifier};
use crate::report::{Progress, Report, TableRows};
use crate::throughput::CONNS_MAX;
use crate::tls::{TlsClient, TlsOptions, TlsParams};

/// The largest message accepted.
pub const MSG_MAX: usize = 16 * 1024 * 1024;

/// What an `rr` run does.
#[derive(Debug, Clone, PartialEq)]
pub struct RrConfig {
    pub target: SocketAddr,
    /// Parallel connections.
    pub conns: usize,
    /// Request (and response) size in bytes.
    pub msg: usize,
    /// Total requests per second over all connections (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub progress: bool,
    /// TLS on every connection (`None`: plain TCP).
    pub tls: Option<TlsOptions>,
    /// A PROXY header first on every connection (`None`: none).
    pub proxy_header: Option<ProxyHeader>,
}

impl RrConfig {
    /// One connection, 64 B, closed loop, 3 s, 2 s connect and 5 s I/O timeouts.
    pub fn new(target: SocketAddr) -> RrConfig {
        RrConfig {
            target,
            conns: 1,
            msg: 64,
            rate: None,
            duration: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            progress: false,
            tls: None,
            proxy_header: None,
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.conns == 0 || self.conns > CONNS_MAX {
            return Err(BenchError::Config(format!(
                "conns must be 1..={CONNS_MAX}, got {}",
                self.conns
            )));
        }
        if self.msg == 0 || self.msg > MSG_MAX {
            return Err(BenchError::Config(format!(
                "msg must be 1..={MSG_MAX} bytes, got {}",
                self.msg
            )));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(BenchError::Config(format!(
                    "rate must be a positive number, got {rate}"
                )));
            }
        }
        if self.duration.is_zero() {
            return Err(BenchError::Config("duration must be positive".into()));
        }
        Ok(())
    }
}

/// `params` of an rr report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrParams {
    pub conns: usize,
    pub msg_bytes: usize,
    /// `"closed"` or `"open"`.
    pub pacing: String,
    /// Target total rate (open loop), requests/s.
    pub rate_per_s: Option<f64>,
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

impl TableRows for RrParams {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("conns", self.conns.to_string()),
            ("msg", format!("{}B", self.msg_bytes)),
            ("pacing", self.pacing.clone()),
        ];
        if let Some(rate) = self.rate_per_s {
            rows.push(("rate", format!("{rate}/s")));
        }
        rows.push(("duration", format!("{}s", self.duration_s)));
        if let Some(tls) = &self.tls {
            rows.push(("tls", tls.row()));
        }
        if let Some(p) = self.proxy_protocol {
            rows.push(("PROXY header", p.name().to_string()));
        }
        rows
    }
}

/// `results` of an rr report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrResults {
    /// Requests whose response arrived and verified.
    pub requests: u64,
    /// `requests` over `duration_s`.
    pub requests_per_s: f64,
    /// Open loop: requests scheduled before the end that were never sent (0 in closed loop).
    pub requests_unsent: u64,
    /// Connections that ran to the end without an error.
    pub connections_ok: u64,
    /// `requests * msg_bytes`: bytes sent in completed requests (and received back).
    pub bytes_each_way: u64,
}

impl TableRows for RrResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("requests", self.requests.to_string()),
            ("requests/s", format!("{:.0}", self.requests_per_s)),
            ("unsent", self.requests_unsent.to_string()),
            ("connections ok", self.connections_ok.to_string()),
        ]
    }
}

/// An rr report. Latency is from the send (closed loop) or the intended send (open loop).
pub type RrReport = Report<RrParams, RrResults>;

type ConnOutcome = (LatencyHistogram, LoopStats, bool);

/// Runs a request/response test against an echo server.
pub fn run_rr(cfg: &RrConfig) -> Result<RrReport, BenchError> {
    cfg.validate()?;
    let tls = cfg.tls.as_ref().map(TlsClient::new).transpose()?;
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(ErrorSink::default());
    let gate = Arc::new(Gate::default());
    let mut handles = Vec::with_capacity(cfg.conns);
    for index in 0..cfg.conns {
        let cfg = cfg.clone();
        let tls = tls.clone();
        let completed = Arc::clone(&completed);
        let errors = Arc::clone(&errors);
        let conn_gate = Arc::clone(&gate);
        let spawned =
            thread::Builder::new()
                .name(format!("rr-{index}"))
                .spawn(move || -> ConnOutcome {
                    let mut hist = LatencyHistogram::new();
                    let connected = net::connect_conn(
                        cfg.target,
                        cfg.connect_timeout,
                        cfg.io_timeout,
                        cfg.proxy_header,
                        tls.as_ref(),
                    );
                    let Some(start) = conn_gate.arrive_and_wait() else {
                        return (hist, LoopStats::default(), false);
                    };
                    let stream = match connected {
                        Ok(s) => s,
                        Err(f) => {
                            errors.record(&f);
                            return (hist, LoopStats::default(), false);
                        }
                    };
                    let pacing = match cfg.rate {
                        None => Pacing::Closed,
                        Some(rate) => {
                            Pacing::Open(OpenLoopSchedule::for_conn(rate, cfg.conns, index))
                        }
                    };
                    let (stats, failure) = conn_loop(
                        &cfg,
                        stream,
                        index as u64,
                        start,
                        pacing,
                        &mut hist,
                        &completed,
                    );
                    let ok = failure.is_none();
                    if let Some(f) = failure {
                        errors.record(&f);
                    }
                    (hist, stats, ok)
                });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                gate.abort();
                for h in handles {
                    let _ = h.join();
                }
                return Err(BenchError::Io(e));
            }
        }
    }
    let start = gate.open_when(cfg.conns);
    let progress = {
        let completed = Arc::clone(&completed);
        let errors = Arc::clone(&errors);
        let last = Mutex::new((0u64, Instant::now()));
        Progress::start(cfg.progress, "rr", cfg.duration, move || {
            let total = completed.load(Ordering::Relaxed);
            let mut prev = last.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let secs = now.duration_since(prev.1).as_secs_f64().max(1e-9);
            let rate = total.saturating_sub(prev.0) as f64 / secs;
            *prev = (total, now);
            format!("{rate:.0} req/s  errors {}", errors.total())
        })
    };
    let mut hist = LatencyHistogram::new();
    let mut requests = 0;
    let mut unsent = 0;
    let mut connections_ok = 0;
    for h in handles {
        match h.join() {
            Ok((h, stats, ok)) => {
                hist.merge(&h);
                requests += stats.completed;
                unsent += stats.unsent;
                connections_ok += u64::from(ok);
            }
            Err(_) => errors.record(&Failure::new(
                ErrorClass::Other,
                "connection thread panicked",
            )),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish();
    let (error_counts, samples) = errors.snapshot();
    Ok(Report::new(
        "rr",
        cfg.target.to_string(),
        RrParams {
            conns: cfg.conns,
            msg_bytes: cfg.msg,
            pacing: if cfg.rate.is_some() { "open" } else { "closed" }.to_string(),
            rate_per_s: cfg.rate,
            duration_s: cfg.duration.as_secs_f64(),
            connect_timeout_s: cfg.connect_timeout.as_secs_f64(),
            io_timeout_s: cfg.io_timeout.as_secs_f64(),
            tls: cfg.tls.as_ref().map(TlsOptions::params),
            proxy_protocol: cfg.proxy_header,
        },
        elapsed,
        RrResults {
            requests,
            requests_per_s: requests as f64 / elapsed.max(1e-9),
            requests_unsent: unsent,
            connections_ok,
            bytes_each_way: requests * cfg.msg as u64,
        },
        error_counts,
        samples,
        Some(hist.summary()),
    ))
}

fn conn_loop(
    cfg: &RrConfig,
    mut stream: Conn,
    index: u64,
    start: Instant,
    pacing: Pacing,
    hist: &mut LatencyHistogram,
    completed: &AtomicU64,
) -> (LoopStats, Option<Failure>) {
    let seed = conn_seed(index);
    let mut request = vec![0u8; cfg.msg];
    let mut response = vec![0u8; cfg.msg];
    let mut verifier = PatternVerifier::new(seed);
    let mut clock = MonotonicClock::new(start);
    let end_ns = cfg.duration.as_nanos() as u64;
    let result = drive(
        &mut clock,
        pacing,
        end_ns,
        |ns| hist.record_ns(ns),
        |_, i| {
            fill(seed, i * cfg.msg as u64, &mut request);
            net::write_all(&mut stream, &request, "request")?;
            net::read_verified(&mut stream, &mut response, &mut verifier, "response")?;
            completed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
    );
    if result.1.is_none() {
        if let Err(f) = net::close(stream, net::CloseMode::Fin) {
            return (result.0, Some(f));
        }
    }
    result
}
