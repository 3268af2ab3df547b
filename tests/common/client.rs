//! Client helpers: connecting with timeouts (and retrying), a full PRNG exchange with
//! hashes both ways ([`Exchange`], [`echoed_exactly`]), request/response rounds against an
//! echo ([`echo_rounds`]), line-based ping and "which backend answered".

use super::{prng_sha256, read_all, read_hash, write_prng, End, Prng, IO_TIMEOUT, ROUND_BOUND};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connects, retrying refused connections for up to `timeout` (listeners may come up a little
/// after `/ready` on some proxies).
pub fn connect_retry(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match connect(addr) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to {addr} failed for {timeout:?}: {e}"),
        }
    }
}

/// Result of one concurrent write+read exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub sent: u64,
    pub sent_sha: String,
    pub received: u64,
    pub received_sha: String,
    pub end: End,
    pub write_error: Option<String>,
}

/// Writes `n` PRNG bytes (seed) on one thread and reads on this one until EOF, concurrently;
/// shuts down the write side after sending (so the backend sees FIN).
pub fn exchange(stream: TcpStream, seed: u64, n: u64) -> Exchange {
    let mut w = stream.try_clone().expect("clone stream");
    let writer = thread::spawn(move || {
        let r = write_prng(&mut w, seed, n);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut r = stream;
    let (received, received_sha, end) = read_hash(&mut r, u64::MAX);
    let wr = writer.join().expect("writer thread");
    let (sent, write_error) = match wr {
        Ok(k) => (k, None),
        Err(e) => (0, Some(e.to_string())),
    };
    Exchange {
        sent,
        sent_sha: prng_sha256(seed, sent),
        received,
        received_sha,
        end,
        write_error,
    }
}

/// Connection `i`'s exchange with an echo: everything sent came back, byte-exact, then a
/// clean end of stream.
pub fn echoed_exactly(i: u64, x: &Exchange) -> Result<(), String> {
    if x.write_error.is_some()
        || x.end != End::Eof
        || x.received != x.sent
        || x.received_sha != x.sent_sha
    {
        return Err(format!("conn {i}: {x:?}"));
    }
    Ok(())
}

/// Connection `i` (on `s`, through an echo) does `rounds` closed-loop rounds of 64 PRNG
/// bytes: each answered, byte-exact, within [`ROUND_BOUND`]; then, after the client's FIN, a
/// clean end of stream. The error names the connection and the round.
pub fn echo_rounds(s: &mut TcpStream, i: u64, rounds: u64) -> Result<(), String> {
    s.set_read_timeout(Some(ROUND_BOUND))
        .map_err(|e| e.to_string())?;
    let mut back = [0u8; 64];
    for r in 0..rounds {
        let msg = Prng::bytes(i * 1_000_000 + r, 64);
        let t = Instant::now();
        s.write_all(&msg)
            .map_err(|e| format!("conn {i} round {r}: write: {e}"))?;
        s.read_exact(&mut back)
            .map_err(|e| format!("conn {i} round {r}: no answer after {:?}: {e}", t.elapsed()))?;
        if back[..] != msg[..] {
            return Err(format!("conn {i} round {r}: echo differs"));
        }
        if t.elapsed() > ROUND_BOUND {
            return Err(format!("conn {i} round {r}: took {:?}", t.elapsed()));
        }
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let (rest, end) = read_all(s, 1024);
    if !rest.is_empty() || end != End::Eof {
        return Err(format!(
            "conn {i}: expected a clean EOF, got {} bytes then {end:?}",
            rest.len()
        ));
    }
    Ok(())
}

/// Request/response ping over an echo path: sends `msg`, reads the same number of bytes back.
pub fn ping(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// Reads one `\n`-terminated line (bounded to 256 bytes).
pub fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 256 {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Connects through `addr` to a tagged backend and returns its tag (one line), then closes.
pub fn which_backend(addr: SocketAddr) -> io::Result<String> {
    let mut s = connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let tag = read_line(&mut s)?;
    let _ = s.shutdown(Shutdown::Both);
    Ok(tag)
}
