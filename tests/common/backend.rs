//! TCP backends served by threads of the test process ([`Backend`], one [`Mode`] each: echo,
//! half-close echo, source, sink, reset, abort, banner, tagged), with an accepted-connection
//! counter and a per-connection [`ConnReport`] (bytes and SHA-256 both ways, how it ended).

use super::{
    classify, hex, read_all, read_hash, sha256_hex, End, Prng, BACKEND_LIFETIME, BACKEND_MAX_CONNS,
    CHUNK, IO_TIMEOUT,
};
use sha2::{Digest, Sha256};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a backend does with each accepted connection.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Echoes every byte; on EOF shuts down its write side and keeps nothing open.
    Echo,
    /// Reads everything until the client's FIN, then writes it all back and FINs (half-close).
    EchoAfterEof,
    /// Writes `n` PRNG bytes of `seed`, FINs, then reads until EOF (so the client can keep
    /// sending after the backend's FIN; the report has what it read).
    Source { n: u64, seed: u64 },
    /// Reads until EOF (count + SHA-256 in the report), then FINs.
    Sink,
    /// Writes `n` PRNG bytes of `seed`, waits `pause`, then resets (SO_LINGER 0 + close).
    RstAfter { n: u64, seed: u64, pause: Duration },
    /// Writes `n` PRNG bytes of `seed`, waits `pause`, then closes abruptly without reading what
    /// the client sent (the kernel sends RST when unread data is queued, FIN otherwise).
    AbortAfter { n: u64, seed: u64, pause: Duration },
    /// Writes `text`, then echoes.
    Banner(String),
    /// Writes `"<name>\n"`, then echoes (the client learns which backend it reached).
    Tagged(String),
}

/// What one backend connection saw.
#[derive(Debug, Clone, Default)]
pub struct ConnReport {
    pub rx_bytes: u64,
    pub rx_sha: String,
    pub tx_bytes: u64,
    pub tx_sha: String,
    /// "eof", "reset", "timeout", "stopped", or an error text.
    pub end: String,
    pub peer: Option<SocketAddr>,
}

#[derive(Debug)]
struct BackendShared {
    accepted: AtomicUsize,
    stop: AtomicBool,
    reports: Mutex<Vec<ConnReport>>,
    rx_total: AtomicU64,
    tx_total: AtomicU64,
}

/// A TCP backend on 127.0.0.1:0 served by threads of the test process.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    pub mode: Mode,
    shared: Arc<BackendShared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn start(mode: Mode) -> Backend {
        Backend::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), mode)
    }

    /// A backend on `addr` (any loopback address; port 0 for any port).
    pub fn start_at(addr: SocketAddr, mode: Mode) -> Backend {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind backend on {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(BackendShared {
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            reports: Mutex::new(Vec::new()),
            rx_total: AtomicU64::new(0),
            tx_total: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let m = mode.clone();
        let accept_thread = thread::spawn(move || accept_loop(listener, m, sh));
        Backend {
            addr,
            mode,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn echo() -> Backend {
        Backend::start(Mode::Echo)
    }
    pub fn echo_after_eof() -> Backend {
        Backend::start(Mode::EchoAfterEof)
    }
    pub fn source(n: u64, seed: u64) -> Backend {
        Backend::start(Mode::Source { n, seed })
    }
    pub fn sink() -> Backend {
        Backend::start(Mode::Sink)
    }
    pub fn rst_after(n: u64, seed: u64) -> Backend {
        Backend::start(Mode::RstAfter {
            n,
            seed,
            pause: Duration::from_millis(200),
        })
    }
    pub fn abort_after(n: u64, seed: u64) -> Backend {
        Backend::start(Mode::AbortAfter {
            n,
            seed,
            pause: Duration::from_millis(200),
        })
    }
    pub fn banner(text: &str) -> Backend {
        Backend::start(Mode::Banner(text.to_string()))
    }
    pub fn tagged(name: &str) -> Backend {
        Backend::start(Mode::Tagged(name.to_string()))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Bytes this backend read / wrote over all connections so far.
    pub fn rx_total(&self) -> u64 {
        self.shared.rx_total.load(Ordering::SeqCst)
    }
    pub fn tx_total(&self) -> u64 {
        self.shared.tx_total.load(Ordering::SeqCst)
    }

    /// Reports of connections that have finished so far.
    pub fn reports(&self) -> Vec<ConnReport> {
        self.shared.reports.lock().expect("reports").clone()
    }

    /// Waits until `n` connections have finished (or `timeout`), returns their reports.
    pub fn wait_reports(&self, n: usize, timeout: Duration) -> Vec<ConnReport> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.reports();
            if r.len() >= n || Instant::now() >= deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops accepting (existing connection threads end by themselves).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, mode: Mode, sh: Arc<BackendShared>) {
    let deadline = Instant::now() + BACKEND_LIFETIME;
    let mut n = 0usize;
    while !sh.stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < BACKEND_MAX_CONNS {
        match listener.accept() {
            Ok((s, peer)) => {
                n += 1;
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                let m = mode.clone();
                let sh2 = sh.clone();
                thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = s.set_nodelay(true);
                    let mut rep = serve(s, &m, &sh2);
                    rep.peer = Some(peer);
                    sh2.reports.lock().expect("reports").push(rep);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(2)),
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn end_str(e: &End) -> String {
    match e {
        End::Eof => "eof".into(),
        End::Reset => "reset".into(),
        End::Timeout => "timeout".into(),
        End::Stopped => "stopped".into(),
        End::Other(s) => s.clone(),
    }
}

/// Echo loop: reads and writes back until EOF; hashes both directions (they are equal).
fn echo_loop(s: &mut TcpStream, sh: &BackendShared, rep: &mut ConnReport) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let deadline = Instant::now() + BACKEND_LIFETIME;
    let end = loop {
        if Instant::now() >= deadline {
            break End::Timeout;
        }
        match s.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => {
                h.update(&buf[..n]);
                rep.rx_bytes += n as u64;
                sh.rx_total.fetch_add(n as u64, Ordering::SeqCst);
                if let Err(e) = s.write_all(&buf[..n]) {
                    break classify(&e);
                }
                rep.tx_bytes += n as u64;
                sh.tx_total.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break classify(&e),
        }
    };
    let d = hex(&h.finalize());
    rep.rx_sha = d.clone();
    rep.tx_sha = d;
    rep.end = end_str(&end);
    let _ = s.shutdown(Shutdown::Write);
}

fn write_counted(
    s: &mut TcpStream,
    data: &[u8],
    sh: &BackendShared,
    rep: &mut ConnReport,
) -> io::Result<()> {
    s.write_all(data)?;
    rep.tx_bytes += data.len() as u64;
    sh.tx_total.fetch_add(data.len() as u64, Ordering::SeqCst);
    Ok(())
}

fn write_prng_counted(
    s: &mut TcpStream,
    seed: u64,
    n: u64,
    sh: &BackendShared,
    rep: &mut ConnReport,
) -> io::Result<()> {
    let mut p = Prng::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let r = loop {
        if done >= n {
            break Ok(());
        }
        let k = (n - done).min(CHUNK as u64) as usize;
        p.fill(&mut buf[..k]);
        if let Err(e) = s.write_all(&buf[..k]) {
            break Err(e);
        }
        h.update(&buf[..k]);
        done += k as u64;
        rep.tx_bytes += k as u64;
        sh.tx_total.fetch_add(k as u64, Ordering::SeqCst);
    };
    rep.tx_sha = hex(&h.finalize());
    r
}

fn sink_into(s: &mut TcpStream, sh: &BackendShared, rep: &mut ConnReport) {
    let (n, sha, end) = read_hash(s, u64::MAX);
    rep.rx_bytes += n;
    sh.rx_total.fetch_add(n, Ordering::SeqCst);
    rep.rx_sha = sha;
    rep.end = end_str(&end);
}

fn serve(mut s: TcpStream, mode: &Mode, sh: &BackendShared) -> ConnReport {
    let mut rep = ConnReport::default();
    match mode {
        Mode::Echo => echo_loop(&mut s, sh, &mut rep),
        Mode::Banner(text) | Mode::Tagged(text) => {
            let first = match mode {
                Mode::Tagged(name) => format!("{name}\n"),
                _ => text.clone(),
            };
            if let Err(e) = write_counted(&mut s, first.as_bytes(), sh, &mut rep) {
                rep.end = end_str(&classify(&e));
                return rep;
            }
            let banner_len = rep.tx_bytes;
            echo_loop(&mut s, sh, &mut rep);
            rep.tx_bytes += banner_len;
        }
        Mode::EchoAfterEof => {
            let (data, end) = read_all(&mut s, 256 * 1024 * 1024);
            rep.rx_bytes = data.len() as u64;
            sh.rx_total.fetch_add(rep.rx_bytes, Ordering::SeqCst);
            rep.rx_sha = sha256_hex(&data);
            if end != End::Eof {
                rep.end = end_str(&end);
                return rep;
            }
            match write_counted(&mut s, &data, sh, &mut rep) {
                Ok(()) => rep.end = "eof".into(),
                Err(e) => rep.end = end_str(&classify(&e)),
            }
            rep.tx_sha = sha256_hex(&data);
            let _ = s.shutdown(Shutdown::Write);
        }
        Mode::Source { n, seed } => {
            if let Err(e) = write_prng_counted(&mut s, *seed, *n, sh, &mut rep) {
                rep.end = end_str(&classify(&e));
                return rep;
            }
            let _ = s.shutdown(Shutdown::Write);
            sink_into(&mut s, sh, &mut rep);
        }
        Mode::Sink => {
            sink_into(&mut s, sh, &mut rep);
            let _ = s.shutdown(Shutdown::Write);
        }
        Mode::RstAfter { n, seed, pause } => {
            let r = write_prng_counted(&mut s, *seed, *n, sh, &mut rep);
            thread::sleep(*pause);
            let sock = socket2::Socket::from(s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock);
            rep.end = match r {
                Ok(()) => "rst-sent".into(),
                Err(e) => end_str(&classify(&e)),
            };
        }
        Mode::AbortAfter { n, seed, pause } => {
            let r = write_prng_counted(&mut s, *seed, *n, sh, &mut rep);
            thread::sleep(*pause);
            drop(s);
            rep.end = match r {
                Ok(()) => "aborted".into(),
                Err(e) => end_str(&classify(&e)),
            };
        }
    }
    rep
}
