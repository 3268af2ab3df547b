//! `udp`: datagrams at a fixed rate through a UDP echo, with loss and round-trip time.
//!
//! `sessions` sockets, each bound to its own port (so a proxy sees one session per socket),
//! send `size`-byte datagrams round robin at `rate` datagrams per second in all, paced on
//! an open-loop schedule (a late sender catches up rather than lowering the rate). Each
//! datagram carries its sequence number and session in a 16-byte header and the pattern
//! after it; every echo is checked byte for byte (a wrong, foreign or duplicated datagram is
//! a `mismatch`). After the sending phase the run waits `drain` for late echoes; what has
//! not come back by then is lost. Round trips are measured from the actual
//! send (a UDP sender never waits on the proxy, so there is no omission to correct).
//!
//! The echo backend ([`spawn_udp_echo`]) answers each datagram with the same bytes to the
//! same source, one thread, until stopped.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, ErrorCounts, ErrorSink, Failure};
use crate::hist::LatencyHistogram;
use crate::pattern::{conn_seed, fill};
use crate::report::{Report, TableRows};

/// The largest UDP payload over IPv4.
pub const DATAGRAM_MAX: usize = 65_507;
/// Sequence number and session index at the start of every datagram.
pub const HEADER: usize = 16;
/// Most sessions (sockets) one run opens.
pub const SESSIONS_MAX: usize = 4_096;
/// Send times kept for round trips: a datagram older than this many sends is not timed.
const TIMES: usize = 1 << 20;

/// What a `udp` run does.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpConfig {
    pub target: SocketAddr,
    /// Sockets (client ports), each a session to a proxy.
    pub sessions: usize,
    /// Datagram size in bytes, header included (16 to 65,507).
    pub size: usize,
    /// Datagrams per second, all sessions together.
    pub rate: f64,
    pub duration: Duration,
    /// How long to wait for late echoes after the last send.
    pub drain: Duration,
}

impl UdpConfig {
    /// One session, 64 B, 10,000 datagrams/s for 3 s, 500 ms drain.
    pub fn new(target: SocketAddr) -> UdpConfig {
        UdpConfig {
            target,
            sessions: 1,
            size: 64,
            rate: 10_000.0,
            duration: Duration::from_secs(3),
            drain: Duration::from_millis(500),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if !(HEADER..=DATAGRAM_MAX).contains(&self.size) {
            return Err(BenchError::Config(format!(
                "--size must be {HEADER} to {DATAGRAM_MAX} bytes"
            )));
        }
        if !(1..=SESSIONS_MAX).contains(&self.sessions) {
            return Err(BenchError::Config(format!(
                "--sessions must be 1 to {SESSIONS_MAX}"
            )));
        }
        if !(self.rate.is_finite() && self.rate >= 1.0) {
            return Err(BenchError::Config("--rate must be at least 1".into()));
        }
        Ok(())
    }
}

/// The params section of a `udp` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpParams {
    pub sessions: usize,
    pub size: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub drain_s: f64,
}

/// The results section of a `udp` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpResults {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub datagrams_lost: u64,
    /// Lost over sent, percent.
    pub loss_pct: f64,
    /// Echoes received per second of the sending phase.
    pub received_per_s: f64,
    /// Payload megabits per second received.
    pub mbit_s: f64,
}

/// A `udp` report.
pub type UdpReport = Report<UdpParams, UdpResults>;

impl TableRows for UdpParams {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("sessions", self.sessions.to_string()),
            ("datagram", format!("{} B", self.size)),
            ("rate", format!("{:.0}/s", self.rate)),
        ]
    }
}

impl TableRows for UdpResults {
    fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("sent", self.datagrams_sent.to_string()),
            ("received", self.datagrams_received.to_string()),
            (
                "lost",
                format!("{} ({:.3}%)", self.datagrams_lost, self.loss_pct),
            ),
            ("received/s", format!("{:.0}", self.received_per_s)),
            ("Mbit/s", format!("{:.1}", self.mbit_s)),
        ]
    }
}

/// Socket buffers for bursts of large datagrams (the kernel caps them at
/// `net.core.{r,w}mem_max`); best effort.
fn big_buffers(s: &UdpSocket) {
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_recv_buffer_size(BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(BUFFER_BYTES);
}

/// Socket buffer size asked for.
const BUFFER_BYTES: usize = 8 << 20;

/// Writes datagram `seq` of session `session`: header, then the session's pattern.
fn build(buf: &mut [u8], seq: u64, session: u32) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&session.to_le_bytes());
    let len = buf.len() as u32;
    buf[12..16].copy_from_slice(&len.to_le_bytes());
    fill(conn_seed(u64::from(session)), seq, &mut buf[HEADER..]);
}

/// Checks an echo; returns its sequence number.
fn check(got: &[u8], session: u32, size: usize, scratch: &mut [u8]) -> Result<u64, String> {
    if got.len() != size {
        return Err(format!("datagram of {} bytes, expected {size}", got.len()));
    }
    let seq = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
    let from = u32::from_le_bytes(got[8..12].try_into().expect("4 bytes"));
    if from != session {
        return Err(format!("session {session} got session {from}'s datagram"));
    }
    build(&mut scratch[..size], seq, session);
    if got != &scratch[..size] {
        return Err(format!("datagram {seq} of session {session} differs"));
    }
    Ok(seq)
}

/// Runs the mode.
pub fn run_udp(cfg: &UdpConfig) -> Result<UdpReport, BenchError> {
    cfg.validate()?;
    let bind: SocketAddr = if cfg.target.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let sockets = (0..cfg.sessions)
        .map(|_| {
            let s = UdpSocket::bind(bind)?;
            big_buffers(&s);
            s.connect(cfg.target)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(Arc::new(s))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(BenchError::Io)?;
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..TIMES).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(ErrorSink::default());
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(LatencyHistogram::new()));
    let t0 = Instant::now();
    let receivers: Vec<JoinHandle<()>> = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (s, sent_at, errors, stop, received, hist) = (
                s.clone(),
                sent_at.clone(),
                errors.clone(),
                stop.clone(),
                received.clone(),
                hist.clone(),
            );
            let size = cfg.size;
            thread::spawn(move || {
                receive(
                    &s, i as u32, size, t0, &sent_at, &errors, &stop, &received, &hist,
                )
            })
        })
        .collect();
    let sent = send_paced(cfg, &sockets, t0, &sent_at, &errors);
    let sending = t0.elapsed();
    // Late echoes: wait up to `drain`, less once every echo is in.
    let drain_end = Instant::now() + cfg.drain;
    while received.load(Ordering::Relaxed) < sent && Instant::now() < drain_end {
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    let got = received.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(got);
    let secs = sending.as_secs_f64().max(1e-9);
    let results = UdpResults {
        datagrams_sent: sent,
        datagrams_received: got,
        datagrams_lost: lost,
        loss_pct: if sent == 0 {
            0.0
        } else {
            100.0 * lost as f64 / sent as f64
        },
        received_per_s: got as f64 / secs,
        mbit_s: got as f64 * cfg.size as f64 * 8.0 / secs / 1e6,
    };
    let (counts, samples): (ErrorCounts, Vec<String>) = errors.snapshot();
    let latency = hist.lock().map(|h| h.summary()).ok();
    Ok(Report::new(
        "udp",
        cfg.target.to_string(),
        UdpParams {
            sessions: cfg.sessions,
            size: cfg.size,
            rate: cfg.rate,
            duration_s: cfg.duration.as_secs_f64(),
            drain_s: cfg.drain.as_secs_f64(),
        },
        secs,
        results,
        counts,
        samples,
        latency,
    ))
}

/// Sends on the open-loop schedule for `cfg.duration`; returns how many were sent.
fn send_paced(
    cfg: &UdpConfig,
    sockets: &[Arc<UdpSocket>],
    t0: Instant,
    sent_at: &[AtomicU64],
    errors: &ErrorSink,
) -> u64 {
    let interval_ns = 1e9 / cfg.rate;
    let total = (cfg.duration.as_secs_f64() * cfg.rate).floor() as u64;
    let mut buf = vec![0u8; cfg.size];
    let mut sent = 0;
    for seq in 0..total {
        let due_ns = (seq as f64 * interval_ns) as u64;
        // Sleep, never spin: on a shared core a spinning sender would take the CPU from the
        // proxy it measures. Timer slack makes a wake-up up to ~50 µs late; what is due then
        // goes at once, so the rate holds (in bursts of a few datagrams at high rates).
        let now_ns = t0.elapsed().as_nanos() as u64;
        if now_ns < due_ns {
            thread::sleep(Duration::from_nanos(due_ns - now_ns));
        }
        let session = (seq % sockets.len() as u64) as u32;
        build(&mut buf, seq, session);
        // The round trip counts from the actual send: a UDP sender never waits for the
        // proxy, so there is no omission to correct, and the sender's own lateness is not
        // the proxy's.
        let sent_ns = t0.elapsed().as_nanos() as u64;
        sent_at[(seq as usize) % TIMES].store(sent_ns + 1, Ordering::Relaxed);
        match sockets[session as usize].send(&buf) {
            Ok(_) => sent += 1,
            Err(e) => errors.record(&Failure::io("send", &e)),
        }
    }
    sent
}

#[allow(clippy::too_many_arguments)]
fn receive(
    s: &UdpSocket,
    session: u32,
    size: usize,
    t0: Instant,
    sent_at: &[AtomicU64],
    errors: &ErrorSink,
    stop: &AtomicBool,
    received: &AtomicU64,
    hist: &Mutex<LatencyHistogram>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX + 1];
    let mut scratch = vec![0u8; DATAGRAM_MAX + 1];
    let mut local = LatencyHistogram::new();
    let mut seen = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        match s.recv(&mut buf) {
            Ok(n) => match check(&buf[..n], session, size, &mut scratch) {
                Ok(seq) if seen.insert(seq) => {
                    received.fetch_add(1, Ordering::Relaxed);
                    let at = sent_at[(seq as usize) % TIMES].load(Ordering::Relaxed);
                    if at > 0 {
                        let now_ns = t0.elapsed().as_nanos() as u64;
                        local.record_ns(now_ns.saturating_sub(at - 1));
                    }
                }
                Ok(seq) => errors.record(&Failure::new(
                    ErrorClass::Mismatch,
                    format!("datagram {seq} of session {session} came back twice"),
                )),
                Err(m) => errors.record(&Failure::new(ErrorClass::Mismatch, m)),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Nothing listening: an ICMP error comes back as ECONNREFUSED on a connected
            // socket.
            Err(e) => {
                errors.record(&Failure::io("recv", &e));
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    if let Ok(mut h) = hist.lock() {
        h.merge(&local);
    }
}

/// A UDP echo backend: every datagram goes back, unchanged, to where it came from.
#[derive(Debug)]
pub struct UdpEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    datagrams: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a UDP echo on `addr` (port 0 picks one).
pub fn spawn_udp_echo(addr: SocketAddr) -> std::io::Result<UdpEcho> {
    let s = UdpSocket::bind(addr)?;
    big_buffers(&s);
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    let addr = s.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let datagrams = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let (stop2, d2, b2) = (stop.clone(), datagrams.clone(), bytes.clone());
    let thread = thread::spawn(move || {
        let mut buf = vec![0u8; DATAGRAM_MAX + 1];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                if s.send_to(&buf[..n], from).is_ok() {
                    d2.fetch_add(1, Ordering::Relaxed);
                    b2.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    });
    Ok(UdpEcho {
        addr,
        stop,
        datagrams,
        bytes,
        thread: Some(thread),
    })
}

impl UdpEcho {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams and bytes echoed so far.
    pub fn echoed(&self) -> (u64, u64) {
        (
            self.datagrams.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Stops and returns the final counts.
    pub fn stop(mut self) -> (u64, u64) {
        self.shut();
        self.echoed()
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.shut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_check_their_own_bytes() {
        let mut a = vec![0u8; 100];
        let mut scratch = vec![0u8; 100];
        build(&mut a, 42, 3);
        assert_eq!(check(&a, 3, 100, &mut scratch), Ok(42));
        assert!(
            check(&a, 4, 100, &mut scratch).is_err(),
            "another session's"
        );
        assert!(check(&a[..99], 3, 100, &mut scratch).is_err(), "truncated");
        a[50] ^= 1;
        assert!(check(&a, 3, 100, &mut scratch).is_err(), "corrupted");
    }
}
