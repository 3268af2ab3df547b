//! `idle`: hold N connections open and idle, then check that each still works and close it.
//!
//! Opening: a few threads connect and do one verified 64 B exchange per connection (so each
//! connection is known to reach the backend through the proxy). Holding: nothing is sent for
//! `hold`. Checking: one more verified exchange per connection, then the close (FIN by default,
//! so a proxy that dropped the idle connection shows up as `eof` or `reset`). Each connection
//! holds one file descriptor here; the process limit (20,000 on the project's machines) bounds
//! N, and an in-process backend needs one more per connection.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, ErrorSink, Failure};
use crate::hist::LatencyHistogram;
use crate::net::{self, CloseMode};
use crate::pattern::{conn_seed, fill, PatternVerifier};
use crate::report::{Progress, Report, TableRows};

/// The most connections one idle run holds.
pub const IDLE_CONNS_MAX: usize = 100_000;
/// Threads that open and check connections, at most.
pub const IDLE_THREADS_MAX: usize = 8;

/// What an `idle` run does.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleConfig {
    pub target: SocketAddr,
    /// Connections to hold.
    pub conns: usize,
    /// How long to hold them idle.
    pub hold: Duration,
    /// Size of the exchange before and after the hold, bytes.
    pub msg: usize,
    pub close: CloseMode,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub progress: bool,
}

impl IdleConfig {
    /// 100 connections held 3 s, 64 B exchanges, FIN close, 2 s connect and 5 s I/O timeouts.
    pub fn new(target: SocketAddr) -> IdleConfig {
        IdleConfig {
            target,
            conns: 100,
            hold: Duration::from_secs(3),
            msg: 64,
            close: CloseMode::Fin,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            progress: false,
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.conns == 0 || self.conns > IDLE_CONNS_MAX {
            return Err(BenchError::Config(format!(
                "conns must be 1..={IDLE_CONNS_MAX}, got {}",
                self.conns
            )));
        }
        if self.msg == 0 || self.msg > 64 * 1024 {
            return Err(BenchError::Config(format!(
                "msg must be 1..=65536 bytes, got {}",
                self.msg
            )));
        }
        Ok(())
    }
}

/// `params` of an idle report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleParams {
    pub conns: usize,
    pub hold_s: f64,
    pub msg_bytes: usize,
    pub close: CloseMode,
    pub connect_timeout_s: f64,
    pub io_timeout_s: f64,
}

impl TableRows for IdleParams {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("conns", self.conns.to_string()),
            ("hold", format!("{}s", self.hold_s)),
            ("msg", format!("{}B", self.msg_bytes)),
            ("close", self.close.name().to_string()),
        ]
    }
}

/// `results` of an idle report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleResults {
    /// Connections opened with a verified exchange.
    pub conns_opened: u64,
    /// Of those, connections that still exchanged verified bytes after the hold and closed
    /// cleanly.
    pub conns_alive_after_hold: u64,
    /// Time to open all connections, seconds.
    pub open_s: f64,
    /// `conns_opened / open_s`.
    pub open_per_s: f64,
    /// Time actually held, seconds.
    pub hold_s: f64,
    /// Time to check and close all connections, seconds.
    pub close_s: f64,
}

impl TableRows for IdleResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("opened", self.conns_opened.to_string()),
            ("alive after hold", self.conns_alive_after_hold.to_string()),
            (
                "open",
                format!("{:.3} s ({:.0}/s)", self.open_s, self.open_per_s),
            ),
            ("held", format!("{:.3} s", self.hold_s)),
            ("check+close", format!("{:.3} s", self.close_s)),
        ]
    }
}

/// An idle report; `latency_us` is connect + first exchange, per connection.
pub type IdleReport = Report<IdleParams, IdleResults>;

#[derive(Debug)]
struct Held {
    stream: TcpStream,
    seed: u64,
    verifier: PatternVerifier,
}

/// Opens, holds, checks and closes `conns` idle connections to an echo server.
pub fn run_idle(cfg: &IdleConfig) -> Result<IdleReport, BenchError> {
    cfg.validate()?;
    let errors = Arc::new(ErrorSink::default());
    let opened = Arc::new(AtomicU64::new(0));
    let threads = cfg.conns.min(IDLE_THREADS_MAX);
    let run_start = Instant::now();

    // Open.
    let mut openers = Vec::with_capacity(threads);
    for t in 0..threads {
        let cfg = cfg.clone();
        let errors = Arc::clone(&errors);
        let opened = Arc::clone(&opened);
        let spawned = thread::Builder::new()
            .name(format!("idle-open-{t}"))
            .spawn(move || open_share(&cfg, t, threads, &errors, &opened));
        match spawned {
            Ok(h) => openers.push(h),
            Err(e) => {
                for h in openers {
                    let _ = h.join();
                }
                return Err(BenchError::Io(e));
            }
        }
    }
    let mut hist = LatencyHistogram::new();
    let mut shares: Vec<Vec<Held>> = Vec::with_capacity(threads);
    for h in openers {
        match h.join() {
            Ok((held, h)) => {
                hist.merge(&h);
                shares.push(held);
            }
            Err(_) => errors.record(&Failure::new(ErrorClass::Other, "opener thread panicked")),
        }
    }
    let open_s = run_start.elapsed().as_secs_f64();
    let conns_opened: u64 = shares.iter().map(|s| s.len() as u64).sum();

    // Hold.
    let hold_start = Instant::now();
    let progress = {
        let errors = Arc::clone(&errors);
        Progress::start(cfg.progress, "idle", cfg.hold, move || {
            format!(
                "holding {conns_opened} connections  errors {}",
                errors.total()
            )
        })
    };
    thread::sleep(cfg.hold);
    progress.finish();
    let hold_s = hold_start.elapsed().as_secs_f64();

    // Check and close.
    let close_start = Instant::now();
    let mut checkers = Vec::with_capacity(shares.len());
    let mut alive = 0;
    for (t, share) in shares.into_iter().enumerate() {
        let cfg = cfg.clone();
        let thread_errors = Arc::clone(&errors);
        let spawned = thread::Builder::new()
            .name(format!("idle-check-{t}"))
            .spawn(move || check_share(&cfg, share, &thread_errors));
        match spawned {
            Ok(h) => checkers.push(h),
            Err(e) => errors.record(&Failure::io("spawn checker thread", &e)),
        }
    }
    for h in checkers {
        match h.join() {
            Ok(n) => alive += n,
            Err(_) => errors.record(&Failure::new(ErrorClass::Other, "checker thread panicked")),
        }
    }
    let close_s = close_start.elapsed().as_secs_f64();

    let (error_counts, samples) = errors.snapshot();
    Ok(Report::new(
        "idle",
        cfg.target.to_string(),
        IdleParams {
            conns: cfg.conns,
            hold_s: cfg.hold.as_secs_f64(),
            msg_bytes: cfg.msg,
            close: cfg.close,
            connect_timeout_s: cfg.connect_timeout.as_secs_f64(),
            io_timeout_s: cfg.io_timeout.as_secs_f64(),
        },
        run_start.elapsed().as_secs_f64(),
        IdleResults {
            conns_opened,
            conns_alive_after_hold: alive,
            open_s,
            open_per_s: conns_opened as f64 / open_s.max(1e-9),
            hold_s,
            close_s,
        },
        error_counts,
        samples,
        Some(hist.summary()),
    ))
}

/// Opens connections `t, t + threads, ...` with one exchange each.
fn open_share(
    cfg: &IdleConfig,
    t: usize,
    threads: usize,
    errors: &ErrorSink,
    opened: &AtomicU64,
) -> (Vec<Held>, LatencyHistogram) {
    let mut held = Vec::with_capacity(cfg.conns / threads + 1);
    let mut hist = LatencyHistogram::new();
    let mut request = vec![0u8; cfg.msg];
    let mut response = vec![0u8; cfg.msg];
    for index in (t..cfg.conns).step_by(threads) {
        let seed = conn_seed(index as u64);
        let t0 = Instant::now();
        let result =
            net::connect(cfg.target, cfg.connect_timeout, cfg.io_timeout).and_then(|mut stream| {
                let mut verifier = PatternVerifier::new(seed);
                fill(seed, 0, &mut request);
                net::write_all(&mut stream, &request, "first request")?;
                net::read_verified(&mut stream, &mut response, &mut verifier, "first response")?;
                Ok(Held {
                    stream,
                    seed,
                    verifier,
                })
            });
        match result {
            Ok(h) => {
                hist.record_ns(t0.elapsed().as_nanos() as u64);
                opened.fetch_add(1, Ordering::Relaxed);
                held.push(h);
            }
            Err(f) => errors.record(&f),
        }
    }
    (held, hist)
}

/// One more exchange on each held connection, then the close; returns how many passed.
fn check_share(cfg: &IdleConfig, share: Vec<Held>, errors: &ErrorSink) -> u64 {
    let mut request = vec![0u8; cfg.msg];
    let mut response = vec![0u8; cfg.msg];
    let mut alive = 0;
    for mut h in share {
        let result = (|| {
            fill(h.seed, cfg.msg as u64, &mut request);
            net::write_all(&mut h.stream, &request, "request after hold")?;
            net::read_verified(
                &mut h.stream,
                &mut response,
                &mut h.verifier,
                "response after hold",
            )?;
            net::close(net::Conn::Plain(h.stream), cfg.close)
        })();
        match result {
            Ok(()) => alive += 1,
            Err(f) => errors.record(&f),
        }
    }
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_zero_conns() {
        let mut cfg = IdleConfig::new(([127, 0, 0, 1], 1).into());
        cfg.conns = 0;
        assert!(matches!(run_idle(&cfg), Err(BenchError::Config(_))));
    }
}
