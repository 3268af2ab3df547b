//! `throughput`: bulk transfer over N connections for a fixed time, in Gbit/s.
//!
//! * `up`: write the pattern to a sink; then half-close and wait for the sink's close, so every
//!   byte counted as sent has been read by the far end.
//! * `down`: read the [`SOURCE_SEED`] pattern from a source and verify every byte.
//! * `both`: write to an echo server from one thread while another reads the echo back and
//!   verifies it byte for byte; after the deadline, half-close and read until the echo closes:
//!   the bytes received must equal the bytes sent.
//!
//! All connections connect first; the clock starts when all have connected (or failed).
//!
//! With TLS ([`ThroughputConfig::tls`]) each connection completes its handshake before the
//! clock starts; `up` ends with close_notify before the FIN. `both` is plain TCP only (its
//! reader and writer threads would need to share one TLS session).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, ErrorSink, Failure};
use crate::gate::Gate;
use crate::net::{self, Conn};
use crate::pattern::{conn_seed, PatternSource, PatternVerifier, SOURCE_SEED};
use crate::report::{fmt_bytes, Progress, Report, TableRows};
use crate::tls::{TlsClient, TlsOptions, TlsParams};

/// The largest write size accepted.
pub const SIZE_MAX: usize = 16 * 1024 * 1024;
/// The most connections one run opens.
pub const CONNS_MAX: usize = 4096;

/// Which way the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to server (target: a sink).
    Up,
    /// Server to client (target: a source).
    Down,
    /// Both at once (target: an echo server).
    #[default]
    Both,
}

impl Direction {
    /// `"up"`, `"down"` or `"both"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }
}

/// What a `throughput` run does.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputConfig {
    pub target: SocketAddr,
    /// Parallel connections.
    pub conns: usize,
    /// How long to transfer.
    pub duration: Duration,
    /// Bytes per write (and per read buffer).
    pub size: usize,
    pub direction: Direction,
    pub connect_timeout: Duration,
    /// A read or write that waits longer than this fails with `timeout`.
    pub io_timeout: Duration,
    /// Print a progress line on stderr (runs of 3 s or more).
    pub progress: bool,
    /// TLS on every connection (`None`: plain TCP); `up` and `down` only.
    pub tls: Option<TlsOptions>,
}

impl ThroughputConfig {
    /// One connection, 3 s, 64 KiB writes, both directions (echo), 2 s connect and 5 s I/O
    /// timeouts, no progress line.
    pub fn new(target: SocketAddr) -> ThroughputConfig {
        ThroughputConfig {
            target,
            conns: 1,
            duration: Duration::from_secs(3),
            size: 64 * 1024,
            direction: Direction::Both,
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
            progress: false,
            tls: None,
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.conns == 0 || self.conns > CONNS_MAX {
            return Err(BenchError::Config(format!(
                "conns must be 1..={CONNS_MAX}, got {}",
                self.conns
            )));
        }
        if self.size == 0 || self.size > SIZE_MAX {
            return Err(BenchError::Config(format!(
                "size must be 1..={SIZE_MAX} bytes, got {}",
                self.size
            )));
        }
        if self.duration.is_zero() {
            return Err(BenchError::Config("duration must be positive".into()));
        }
        if self.tls.is_some() && self.direction == Direction::Both {
            return Err(BenchError::Config(
                "TLS throughput runs up or down, not both".into(),
            ));
        }
        Ok(())
    }
}

/// `params` of a throughput report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputParams {
    pub conns: usize,
    pub size_bytes: usize,
    pub direction: Direction,
    pub duration_s: f64,
    pub connect_timeout_s: f64,
    pub io_timeout_s: f64,
    /// Present only with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsParams>,
}

impl TableRows for ThroughputParams {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let mut rows = vec![
            ("conns", self.conns.to_string()),
            ("size", fmt_bytes(self.size_bytes as u64).replace(' ', "")),
            ("direction", self.direction.name().to_string()),
            ("duration", format!("{}s", self.duration_s)),
        ];
        if let Some(tls) = &self.tls {
            rows.push(("tls", tls.row()));
        }
        rows
    }
}

/// `results` of a throughput report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputResults {
    /// Connections that ran to the end without an error.
    pub connections_ok: u64,
    /// Payload bytes written (and, for `up`, confirmed read by the sink).
    pub bytes_sent: u64,
    /// Payload bytes received and verified.
    pub bytes_received: u64,
    /// `bytes_sent` as Gbit/s over `duration_s`.
    pub gbit_s_up: f64,
    /// `bytes_received` as Gbit/s over `duration_s`.
    pub gbit_s_down: f64,
    /// Both together.
    pub gbit_s: f64,
}

impl TableRows for ThroughputResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("connections ok", self.connections_ok.to_string()),
            (
                "sent",
                format!("{} ({} B)", fmt_bytes(self.bytes_sent), self.bytes_sent),
            ),
            (
                "received",
                format!(
                    "{} ({} B)",
                    fmt_bytes(self.bytes_received),
                    self.bytes_received
                ),
            ),
            ("Gbit/s up", format!("{:.3}", self.gbit_s_up)),
            ("Gbit/s down", format!("{:.3}", self.gbit_s_down)),
            ("Gbit/s total", format!("{:.3}", self.gbit_s)),
        ]
    }
}

/// A throughput report.
pub type ThroughputReport = Report<ThroughputParams, ThroughputResults>;

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    ok: AtomicU64,
}

/// Runs a throughput test; per-connection failures are counted in the report.
pub fn run_throughput(cfg: &ThroughputConfig) -> Result<ThroughputReport, BenchError> {
    cfg.validate()?;
    let tls = cfg.tls.as_ref().map(TlsClient::new).transpose()?;
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(ErrorSink::default());
    let gate = Arc::new(Gate::default());
    let mut handles = Vec::with_capacity(cfg.conns);
    for index in 0..cfg.conns {
        let cfg = cfg.clone();
        let tls = tls.clone();
        let counters = Arc::clone(&counters);
        let errors = Arc::clone(&errors);
        let conn_gate = Arc::clone(&gate);
        let spawned = thread::Builder::new()
            .name(format!("tput-{index}"))
            .spawn(move || {
                let connected = net::connect_conn(
                    cfg.target,
                    cfg.connect_timeout,
                    cfg.io_timeout,
                    None,
                    tls.as_ref(),
                );
                let Some(start) = conn_gate.arrive_and_wait() else {
                    return;
                };
                let result = connected.and_then(|stream| {
                    let deadline = start + cfg.duration;
                    run_conn(&cfg, stream, index as u64, deadline, &counters)
                });
                match result {
                    Ok(()) => {
                        counters.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => errors.record(&f),
                }
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
        let counters = Arc::clone(&counters);
        let errors = Arc::clone(&errors);
        let last = Mutex::new((0u64, Instant::now()));
        Progress::start(cfg.progress, "throughput", cfg.duration, move || {
            let total =
                counters.sent.load(Ordering::Relaxed) + counters.received.load(Ordering::Relaxed);
            let mut prev = last.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let secs = now.duration_since(prev.1).as_secs_f64().max(1e-9);
            let gbit = total.saturating_sub(prev.0) as f64 * 8.0 / secs / 1e9;
            *prev = (total, now);
            format!("{gbit:.2} Gbit/s  errors {}", errors.total())
        })
    };
    for h in handles {
        if h.join().is_err() {
            errors.record(&Failure::new(
                ErrorClass::Other,
                "connection thread panicked",
            ));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress.finish();

    let sent = counters.sent.load(Ordering::Relaxed);
    let received = counters.received.load(Ordering::Relaxed);
    let gbit = |bytes: u64| bytes as f64 * 8.0 / elapsed.max(1e-9) / 1e9;
    let (error_counts, samples) = errors.snapshot();
    Ok(Report::new(
        "throughput",
        cfg.target.to_string(),
        ThroughputParams {
            conns: cfg.conns,
            size_bytes: cfg.size,
            direction: cfg.direction,
            duration_s: cfg.duration.as_secs_f64(),
            connect_timeout_s: cfg.connect_timeout.as_secs_f64(),
            io_timeout_s: cfg.io_timeout.as_secs_f64(),
            tls: cfg.tls.as_ref().map(TlsOptions::params),
        },
        elapsed,
        ThroughputResults {
            connections_ok: counters.ok.load(Ordering::Relaxed),
            bytes_sent: sent,
            bytes_received: received,
            gbit_s_up: gbit(sent),
            gbit_s_down: gbit(received),
            gbit_s: gbit(sent + received),
        },
        error_counts,
        samples,
        None,
    ))
}

fn run_conn(
    cfg: &ThroughputConfig,
    stream: Conn,
    index: u64,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> Result<(), Failure> {
    match (cfg.direction, stream) {
        (Direction::Up, mut stream) => {
            write_until(&mut stream, conn_seed(index), cfg.size, deadline, counters)?;
            stream.half_close()?;
            net::expect_eof(&mut stream, "up (is the target a sink?)")
        }
        (Direction::Down, mut stream) => {
            let mut verifier = PatternVerifier::new(SOURCE_SEED);
            let mut buf = vec![0u8; cfg.size];
            while Instant::now() < deadline {
                let n = read_some(&mut stream, &mut buf, "read from source")?;
                if n == 0 {
                    return Err(Failure::new(
                        ErrorClass::Eof,
                        format!(
                            "source closed after {} bytes, before the run ended",
                            verifier.offset()
                        ),
                    ));
                }
                verifier
                    .feed(&buf[..n])
                    .map_err(|at| net::mismatch("data from source", at))?;
                counters.received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(())
        }
        (Direction::Both, Conn::Plain(stream)) => both(cfg, stream, index, deadline, counters),
        (Direction::Both, Conn::Tls(_)) => Err(Failure::new(
            ErrorClass::Other,
            "TLS throughput runs up or down, not both",
        )),
    }
}

fn read_some(stream: &mut impl Read, buf: &mut [u8], what: &str) -> Result<usize, Failure> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io(what, &e)),
        }
    }
}

/// Writes the pattern of `seed` until `deadline`; returns the bytes written.
fn write_until(
    stream: &mut impl Write,
    seed: u64,
    size: usize,
    deadline: Instant,
    counters: &Counters,
) -> Result<u64, Failure> {
    let mut src = PatternSource::new(seed, size);
    while Instant::now() < deadline {
        match stream.write(src.next_chunk()) {
            Ok(n) => {
                src.advance(n);
                counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io("write", &e)),
        }
    }
    Ok(src.offset())
}

fn both(
    cfg: &ThroughputConfig,
    stream: TcpStream,
    index: u64,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> Result<(), Failure> {
    let seed = conn_seed(index);
    let mut writer_stream = stream
        .try_clone()
        .map_err(|e| Failure::io("clone socket", &e))?;
    let writer_counters = Arc::clone(counters);
    let size = cfg.size;
    let writer = thread::Builder::new()
        .name(format!("tput-{index}-w"))
        .spawn(move || {
            let sent = write_until(&mut writer_stream, seed, size, deadline, &writer_counters)?;
            writer_stream
                .shutdown(Shutdown::Write)
                .map_err(|e| Failure::io("half-close", &e))?;
            Ok::<u64, Failure>(sent)
        })
        .map_err(|e| Failure::io("spawn writer thread", &e))?;

    let mut reader = stream;
    let mut verifier = PatternVerifier::new(seed);
    let mut buf = vec![0u8; cfg.size];
    let read_result = loop {
        let n = match read_some(&mut reader, &mut buf, "read echo") {
            Ok(n) => n,
            Err(f) => break Err(f),
        };
        if n == 0 {
            break Ok(verifier.offset());
        }
        if let Err(at) = verifier.feed(&buf[..n]) {
            break Err(net::mismatch("echoed data", at));
        }
        counters.received.fetch_add(n as u64, Ordering::Relaxed);
    };
    if read_result.is_err() {
        // Unblock the writer.
        let _ = reader.shutdown(Shutdown::Both);
    }
    let write_result = writer
        .join()
        .unwrap_or_else(|_| Err(Failure::new(ErrorClass::Other, "writer thread panicked")));
    let received = read_result?;
    let sent = write_result?;
    if received < sent {
        return Err(Failure::new(
            ErrorClass::Eof,
            format!("echo closed after {received} of {sent} bytes"),
        ));
    }
    if received > sent {
        return Err(Failure::new(
            ErrorClass::Mismatch,
            format!("echo returned {received} bytes, {sent} were sent"),
        ));
    }
    Ok(())
}
