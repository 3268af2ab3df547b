//! Shared harness for Switchyard's integration tests.
//!
//! Everything here uses real sockets on 127.0.0.1 only. Pieces:
//!
//! * [`Backend`]: a TCP server in threads of the test process (echo, half-close echo, source,
//!   sink, reset, abort, banner, tagged), with an accepted-connection counter and a per-connection
//!   report (bytes and SHA-256 both ways, how the connection ended).
//! * [`Proxy`]: the proxy under test, Switchyard (`CARGO_BIN_EXE_switchyard run -c FILE`) or real
//!   Envoy (`ENVOY_BIN`, default `<repo>/.venv/bin/envoy`), chosen with
//!   `SWITCHYARD_TEST_PROXY=switchyard|envoy` (default switchyard). The same YAML (an Envoy v3
//!   bootstrap) is given to both.
//! * A tiny HTTP/1.1 client for the admin API ([`http`], [`Proxy::stats`], [`Proxy::stat`]).
//! * Client helpers that stream deterministic PRNG data and hash what comes back.
//!
//! Every loop is bounded in count and in time; every thread ends by itself.
//! Skips: outside CI a test that cannot run (Envoy missing, feature not in the selected proxy)
//! prints why and returns; with `CI=true` a missing prerequisite fails the test instead
//! ([`require`]). A deliberate "this proxy has no such feature" is a skip in CI too
//! ([`skip_unsupported`]).
#![allow(dead_code)]

pub mod netns;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Limits (every loop in the harness is bounded by one of these)
// ---------------------------------------------------------------------------------------------

/// A backend stops accepting after this long, whatever happens.
pub const BACKEND_LIFETIME: Duration = Duration::from_secs(300);
/// A backend accepts at most this many connections.
pub const BACKEND_MAX_CONNS: usize = 4096;
/// Read/write timeout on every socket the harness owns.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a proxy's `/ready` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunk size for streaming.
pub const CHUNK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Environment: which proxy, CI or not
// ---------------------------------------------------------------------------------------------

/// The proxy implementation a test drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Switchyard,
    Envoy,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Switchyard => "switchyard",
            ProxyKind::Envoy => "envoy",
        }
    }
}

/// `SWITCHYARD_TEST_PROXY=envoy|switchyard` (default switchyard).
pub fn selected_proxy() -> ProxyKind {
    match std::env::var("SWITCHYARD_TEST_PROXY").as_deref() {
        Ok("envoy") => ProxyKind::Envoy,
        Ok("switchyard") | Ok("") | Err(_) => ProxyKind::Switchyard,
        Ok(other) => panic!("SWITCHYARD_TEST_PROXY={other:?}: expected envoy or switchyard"),
    }
}

/// True when running under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE") | Ok("True")
    )
}

/// A prerequisite check. Returns true if the test may go on. When the prerequisite is missing:
/// in CI the test fails (panics) with the reason; outside CI it prints the reason and the caller
/// returns (a skip).
#[must_use]
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI=true (tests must not skip in CI): {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// A deliberate skip: the selected proxy does not have this feature (e.g. Envoy has no
/// file-reload). Allowed in CI too, printed loudly.
pub fn skip_unsupported(kind: ProxyKind, why: &str) {
    eprintln!("SKIPPED for {}: {why}", kind.name());
}

/// Path to the Envoy binary: `ENVOY_BIN`, or `<repo>/.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"),
    }
}

pub fn envoy_available() -> bool {
    envoy_bin().is_file()
}

/// `envoy --mode validate -c <config>` (no hot restart, errors only), its output.
pub fn envoy_validate(config: &Path) -> std::process::Output {
    Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "error",
            "-c",
        ])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run envoy --mode validate")
}

pub fn switchyard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// Checks that the selected proxy can run at all; `false` means skip (outside CI only).
#[must_use]
pub fn proxy_available(kind: ProxyKind) -> bool {
    match kind {
        ProxyKind::Switchyard => require(switchyard_bin().is_file(), "switchyard binary missing"),
        ProxyKind::Envoy => require(
            envoy_available(),
            &format!(
                "envoy binary not found at {} (set ENVOY_BIN or run ci/install-deps)",
                envoy_bin().display()
            ),
        ),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory for one test's files (configs, logs), under cargo's target tmpdir.
pub fn test_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("it-{tag}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).expect("create test dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// A connection to `dst` from source address `src` (any 127/8 address is local), with 10 s
/// read and write timeouts.
pub fn connect_from(src: std::net::Ipv4Addr, dst: SocketAddr) -> io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&dst.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// A free TCP port on 127.0.0.1 for a proxy listener or admin.
///
/// Ports are taken below the kernel's ephemeral range (32768-60999) so that the many outgoing
/// connections of a test cannot grab them between "free" and "bound"; a per-process counter keeps
/// parallel tests of one binary apart, and each candidate is checked by binding it.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let span = 12_000usize;
    let base = 20_000usize;
    let start = (std::process::id() as usize * 7919) % span;
    for _ in 0..span {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + (start + i) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found");
}

/// A port on which nothing listens (connect gives ECONNREFUSED).
pub fn closed_port() -> u16 {
    free_port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// Deterministic data and hashing
// ---------------------------------------------------------------------------------------------

/// Deterministic byte stream (splitmix64). The same seed gives the same bytes on both sides.
#[derive(Debug, Clone)]
pub struct Prng {
    state: u64,
    buf: [u8; 8],
    pos: usize,
}

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng {
            state: seed ^ 0x5eed_5eed_5eed_5eed,
            buf: [0; 8],
            pos: 8,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.pos == 8 {
                self.buf = self.next_u64().to_le_bytes();
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }

    pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        Prng::new(seed).fill(&mut v);
        v
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of the first `n` bytes of `Prng::new(seed)`, computed in chunks.
pub fn prng_sha256(seed: u64, n: u64) -> String {
    let mut p = Prng::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        left -= k as u64;
    }
    hex(&h.finalize())
}

// ---------------------------------------------------------------------------------------------
// How a read side ended
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
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

// ---------------------------------------------------------------------------------------------
// Admin HTTP client
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close`; decodes chunked bodies.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let (raw, end) = read_all(&mut s, 64 * 1024 * 1024);
    if raw.is_empty() {
        return Err(io::Error::other(format!("empty HTTP response ({end:?})")));
    }
    parse_http(&raw)
}

fn parse_http(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |m: &str| io::Error::new(ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_txt = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    None
}

/// Parses Envoy's text `/stats` output (`name: value` lines) into a map of the integer ones.
pub fn parse_stats(body: &str) -> BTreeMap<String, u64> {
    body.lines()
        .filter_map(|l| l.rsplit_once(": "))
        .filter_map(|(k, v)| {
            v.trim()
                .parse::<u64>()
                .ok()
                .map(|v| (k.trim().to_string(), v))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Config templating
// ---------------------------------------------------------------------------------------------

/// Replaces every `{{key}}` in `template` with its value; panics if a placeholder remains.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(i) = s.find("{{") {
        let end = (i + 40).min(s.len());
        panic!("unfilled placeholder in config: {}", &s[i..end]);
    }
    s
}

/// An Envoy v3 bootstrap: admin on `admin_port`, then the given listener and cluster YAML
/// (each a list of items already indented for `static_resources.listeners` / `.clusters`).
pub fn bootstrap(admin_port: u16, listeners: &str, clusters: &str) -> String {
    format!(
        "admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}\n\
static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )
}

/// One TCP proxy listener item (indented for `static_resources.listeners`).
pub fn tcp_listener(name: &str, port: u16, stat_prefix: &str, cluster: &str) -> String {
    tcp_listener_after(name, port, "", stat_prefix, cluster)
}

/// Like [`tcp_listener`], with network filters (`filters` items, indented as such) before
/// the tcp_proxy.
pub fn tcp_listener_after(
    name: &str,
    port: u16,
    filters: &str,
    stat_prefix: &str,
    cluster: &str,
) -> String {
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
{filters}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {stat_prefix}
          cluster: {cluster}
"#
    )
}

/// One STATIC round-robin cluster item with `(address, weight)` endpoints.
pub fn static_cluster(name: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    static_cluster_lb(name, "ROUND_ROBIN", endpoints)
}

pub fn static_cluster_lb(name: &str, lb: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let mut eps = String::new();
    for (a, w) in endpoints {
        let _ = write!(
            eps,
            "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n          load_balancing_weight: {w}\n",
            a.ip(),
            a.port()
        );
    }
    let lb_endpoints = if endpoints.is_empty() {
        "      endpoints: []\n".to_string()
    } else {
        format!("      endpoints:\n      - lb_endpoints:\n{eps}")
    };
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    lb_policy: {lb}
    load_assignment:
      cluster_name: {name}
{lb_endpoints}"#
    )
}

// ---------------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------------

/// A UDP echo backend on loopback: returns each datagram to its source unchanged, or, when
/// tagged, answers each with its tag (which backend a session reached).
pub struct UdpBackend {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl UdpBackend {
    pub fn echo() -> UdpBackend {
        UdpBackend::start(None)
    }

    pub fn tagged(tag: &str) -> UdpBackend {
        UdpBackend::start(Some(tag.as_bytes().to_vec()))
    }

    fn start(tag: Option<Vec<u8>>) -> UdpBackend {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind backend");
        set_udp_buffers(&socket);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (received.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                r.fetch_add(1, Ordering::Relaxed);
                let reply = tag.as_deref().unwrap_or(&buf[..n]);
                let _ = socket.send_to(reply, from);
            }
        });
        UdpBackend {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 4 MiB socket buffers (capped by the kernel's rmem_max/wmem_max): room for bursts.
pub fn set_udp_buffers(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

/// `recv`, retried when a signal interrupts it.
pub fn udp_recv(c: &UdpSocket, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match c.recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------------

/// Options for starting a proxy.
#[derive(Debug, Clone)]
pub struct ProxyOpts {
    pub concurrency: u32,
    pub drain_time_s: Option<u32>,
    pub log_level: &'static str,
    /// More arguments for Switchyard only (Envoy has no equivalent of its own flags).
    pub switchyard_args: Vec<String>,
    /// Run Switchyard with this descriptor limit (soft and hard, through `prlimit`).
    pub nofile_limit: Option<u64>,
}

impl Default for ProxyOpts {
    fn default() -> Self {
        ProxyOpts {
            concurrency: 1,
            drain_time_s: None,
            log_level: "info",
            switchyard_args: Vec::new(),
            nofile_limit: None,
        }
    }
}

/// The brief's name for [`Proxy`].
pub type ProxyUnderTest = Proxy;

/// A running proxy (Switchyard or Envoy) with its config file, logs and admin address.
/// Dropping it kills the process (SIGKILL by its PID) if it is still running.
#[derive(Debug)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    child: Child,
    exited: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// Admin port written in a bootstrap (`admin.address.socket_address.port_value`).
fn admin_port_of(yaml: &str) -> Option<u16> {
    let i = yaml.find("admin:")?;
    let rest = &yaml[i..];
    let j = rest.find("port_value:")?;
    let digits: String = rest[j + "port_value:".len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

impl Proxy {
    /// Starts the selected proxy with `yaml` and waits for `/ready` 200.
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with(selected_proxy(), yaml, ProxyOpts::default())
    }

    /// Starts a proxy of `kind` and waits for `/ready` 200; panics with its logs otherwise.
    pub fn start_with(kind: ProxyKind, yaml: &str, opts: ProxyOpts) -> Proxy {
        let p = Proxy::spawn(kind, yaml, opts);
        p.wait_ready(READY_TIMEOUT);
        p
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(kind: ProxyKind, yaml: &str, opts: ProxyOpts) -> Proxy {
        let dir = test_dir(kind.name());
        let config_path = dir.join("config.yaml");
        fs::write(&config_path, yaml).expect("write config");
        let admin_port = admin_port_of(yaml).expect("config has no admin port_value");
        let stdout_path = dir.join("stdout.log");
        let stderr_path = dir.join("stderr.log");
        let mut cmd = match kind {
            ProxyKind::Switchyard => {
                let mut c = match opts.nofile_limit {
                    Some(n) => {
                        let mut c = Command::new("prlimit");
                        c.arg(format!("--nofile={n}:{n}"))
                            .arg("--")
                            .arg(switchyard_bin());
                        c
                    }
                    None => Command::new(switchyard_bin()),
                };
                c.arg("run")
                    .arg("-c")
                    .arg(&config_path)
                    .arg("--concurrency")
                    .arg(opts.concurrency.to_string())
                    .arg("--log-level")
                    .arg(opts.log_level);
                if let Some(d) = opts.drain_time_s {
                    c.arg("--drain-time-s").arg(d.to_string());
                }
                c.args(&opts.switchyard_args);
                c
            }
            ProxyKind::Envoy => {
                let mut c = Command::new(envoy_bin());
                // --disable-hot-restart: no shared memory, so no base id is needed and parallel
                // instances never collide (verified with Envoy 1.40).
                c.arg("-c")
                    .arg(&config_path)
                    .arg("--concurrency")
                    .arg(opts.concurrency.to_string())
                    .arg("--disable-hot-restart")
                    .arg("--log-level")
                    .arg(opts.log_level);
                if let Some(d) = opts.drain_time_s {
                    c.arg("--drain-time-s").arg(d.to_string());
                }
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("stdout log"))
            .stderr(fs::File::create(&stderr_path).expect("stderr log"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} failed: {e}", kind.name()));
        Proxy {
            kind,
            dir,
            config_path,
            admin: local(admin_port),
            child,
            exited: None,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout + stderr so far (for assertion messages).
    pub fn logs(&self) -> String {
        let out = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let err = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail = |s: &str| {
            let n = s.len();
            let start = n.saturating_sub(8000);
            let start = (start..n).find(|i| s.is_char_boundary(*i)).unwrap_or(n);
            s[start..].to_string()
        };
        format!(
            "--- {} pid {} dir {} ---\n[stdout]\n{}\n[stderr]\n{}",
            self.kind.name(),
            self.pid(),
            self.dir.display(),
            tail(&out),
            tail(&err)
        )
    }

    /// Full log text (stdout + stderr) for searching.
    pub fn log_text(&self) -> String {
        let out = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let err = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        out + &err
    }

    /// Has the process exited? (Reaps it.)
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/ready` until 200, panicking with the logs if the process dies or time runs out.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match http(self.admin, "GET", "/ready") {
                Ok(r) if r.status == 200 => return,
                Ok(r) => last = format!("status {} body {:?}", r.status, r.body),
                Err(e) => last = e.to_string(),
            }
            // Cannot reap through &self; check /proc instead.
            if !Path::new(&format!("/proc/{}", self.pid())).exists() || self.is_zombie() {
                panic!(
                    "{} exited before becoming ready (last /ready: {last})\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not ready after {timeout:?} (last /ready: {last})\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn is_zombie(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(true)
    }

    /// Sends a signal by PID with the `kill` command (never by name).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Rewrites the config file atomically (write + rename).
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.join("config.yaml.tmp");
        fs::write(&tmp, yaml).expect("write config");
        fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// VmRSS in KiB from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http(self.admin, "GET", path)
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}\n{}", self.logs()))
    }

    pub fn post(&self, path: &str) -> HttpResponse {
        http(self.admin, "POST", path)
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}\n{}", self.logs()))
    }

    /// All integer stats from `/stats`.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let r = self.get("/stats");
        assert_eq!(r.status, 200, "/stats status\n{}", self.logs());
        parse_stats(&r.body)
    }

    /// One stat by its exact name; 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Waits until `stat(name) == want` (or timeout); returns the last value.
    pub fn wait_stat(&self, name: &str, want: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v == want || Instant::now() >= deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("proxy files kept in {}", self.dir.display());
        }
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the selected proxy with `concurrency` workers, or returns None (a skip outside
/// CI; a failure in CI) when it is not available.
pub fn start_selected_with(yaml: &str, concurrency: u32) -> Option<Proxy> {
    let kind = selected_proxy();
    if !require(proxy_available(kind), kind.name()) {
        return None;
    }
    Some(Proxy::start_with(
        kind,
        yaml,
        ProxyOpts {
            concurrency,
            ..Default::default()
        },
    ))
}

/// Starts the selected proxy, or returns None (skip outside CI) if it is not available.
pub fn start_selected(yaml: &str) -> Option<Proxy> {
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return None;
    }
    Some(Proxy::start(yaml))
}

// ---------------------------------------------------------------------------------------------
// Relay modes (`switchyard run --relay-mode`)
// ---------------------------------------------------------------------------------------------

/// How Switchyard moves a connection's bytes (`switchyard run --relay-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// Provided-buffer rings (Switchyard's default).
    BufferRing,
    /// `splice` through a pipe per direction.
    Splice,
}

impl RelayMode {
    /// The value of `--relay-mode`.
    pub fn arg(self) -> &'static str {
        match self {
            RelayMode::BufferRing => "buffer-ring",
            RelayMode::Splice => "splice",
        }
    }
}

/// Defines, for each test function `name(mode: RelayMode)` listed, the tests
/// `buffer_ring::name` and `splice::name` (use with `#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! in_both_relay_modes {
    ($($name:ident),* $(,)?) => {
        mod buffer_ring {
            $(#[test]
            fn $name() {
                super::$name(super::RelayMode::BufferRing)
            })*
        }
        mod splice {
            $(#[test]
            fn $name() {
                super::$name(super::RelayMode::Splice)
            })*
        }
    };
}

/// `opts` for a test of relay mode `mode` on a proxy of `kind`: `--relay-mode` added to
/// Switchyard's arguments. None (after printing why) when `kind` has no such mode: Envoy has
/// no relay modes, so its pass runs each relay test once, as the buffer-ring variant (the
/// Switchyard-only arguments in `opts` do not reach Envoy).
pub fn relay_mode_opts(kind: ProxyKind, mode: RelayMode, mut opts: ProxyOpts) -> Option<ProxyOpts> {
    if kind == ProxyKind::Envoy && mode != RelayMode::BufferRing {
        skip_unsupported(
            kind,
            &format!(
                "Envoy has no relay mode; the {} variant runs against Switchyard only",
                mode.arg()
            ),
        );
        return None;
    }
    opts.switchyard_args
        .extend(["--relay-mode".to_string(), mode.arg().to_string()]);
    Some(opts)
}

/// Starts the selected proxy (one worker) in relay mode `mode` with `extra` Switchyard
/// arguments, or returns None: a skip when the proxy has no such mode ([`relay_mode_opts`]),
/// or when it is not available (a failure under CI).
pub fn start_selected_mode(yaml: &str, mode: RelayMode, extra: &[&str]) -> Option<Proxy> {
    let kind = selected_proxy();
    let mut opts = relay_mode_opts(kind, mode, ProxyOpts::default())?;
    if !require(proxy_available(kind), kind.name()) {
        return None;
    }
    opts.switchyard_args
        .extend(extra.iter().map(|a| a.to_string()));
    Some(Proxy::start_with(kind, yaml, opts))
}
