//! Reading and writing a TCP stream with bounds: how a read side ended ([`End`]), reading
//! all (or hashing) up to a limit, writing a PRNG stream.

use super::{hex, Prng, CHUNK};
use sha2::{Digest, Sha256};
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// read() returned 0.
    Eof,
    /// ECONNRESET (or EPIPE / ECONNABORTED) on read.
    Reset,
    /// The read timed out.
    Timeout,
    /// We stopped reading because we had what we wanted.
    Stopped,
    Other(String),
}

pub fn classify(e: &io::Error) -> End {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            End::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => End::Timeout,
        _ => End::Other(e.to_string()),
    }
}

/// Reads until EOF/error/timeout/`limit` bytes, keeping the bytes.
pub fn read_all(s: &mut TcpStream, limit: usize) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        if out.len() >= limit {
            return (out, End::Stopped);
        }
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return (out, classify(&e)),
        }
    }
}

/// Reads until EOF/error/timeout, hashing; returns (bytes, sha, end).
pub fn read_hash(s: &mut TcpStream, limit: u64) -> (u64, String, End) {
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let end = loop {
        if total >= limit {
            break End::Stopped;
        }
        let want = ((limit - total).min(CHUNK as u64)) as usize;
        match s.read(&mut buf[..want]) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                h.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break classify(&e),
        }
    };
    (total, hex(&h.finalize()), end)
}

/// Writes `n` PRNG bytes of `seed`; returns bytes written (stops at the first error).
pub fn write_prng(s: &mut TcpStream, seed: u64, n: u64) -> io::Result<u64> {
    let mut p = Prng::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < n {
        let k = (n - done).min(CHUNK as u64) as usize;
        p.fill(&mut buf[..k]);
        s.write_all(&buf[..k])?;
        done += k as u64;
    }
    Ok(done)
}

/// Reads exactly `n` bytes (or fails with a message).
pub fn read_exact_timeout(s: &mut TcpStream, n: usize, what: &str) -> Vec<u8> {
    let mut v = vec![0u8; n];
    if let Err(e) = s.read_exact(&mut v) {
        panic!("{what}: reading {n} bytes failed: {e}");
    }
    v
}

/// Waits (up to `wait`) for the peer to close `s` without sending anything (end of stream or
/// a reset); how long that took, or `None`.
pub fn closed_within(s: &mut TcpStream, wait: std::time::Duration) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(wait)).unwrap();
    let (got, end) = read_all(s, 64);
    (got.is_empty() && matches!(end, End::Eof | End::Reset)).then(|| started.elapsed())
}
