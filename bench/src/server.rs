//! Fast backends: echo, sink and source servers on plain std threads.
//!
//! One accept thread hands each connection to a worker thread. Workers are cached: a worker that
//! finishes a connection waits up to [`WORKER_IDLE_EXIT`] for the next one before it exits, so a
//! connections-per-second run does not pay a thread spawn per connection, and an `idle` run with
//! thousands of open connections gets one thread each. Every socket has TCP_NODELAY; reads use a
//! buffer that starts at 4 KiB (cheap for idle connections) and grows to 256 KiB under bulk load.
//!
//! * echo: writes back every byte it reads; closes after the client's FIN.
//! * sink: reads and discards; closes after the client's FIN.
//! * source: writes the [`crate::pattern::SOURCE_SEED`] pattern stream until the
//!   client goes away.
//!
//! With a TLS config ([`Server::spawn_tls`]) every connection first completes a TLS 1.3
//! handshake (counted, and counted again when it resumed a session), then gets the same
//! echo, sink or source over TLS records, and ends with close_notify.
//!
//! [`Server::stop`] is bounded: it shuts the listener down (which wakes a blocked `accept` on
//! Linux), shuts down every open connection (which wakes blocked reads and writes), and joins
//! every thread.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustls::ServerConfig;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};

use crate::pattern::{PatternSource, SOURCE_SEED};
use crate::tls;

/// How long a worker without a connection waits for the next before it exits.
pub const WORKER_IDLE_EXIT: Duration = Duration::from_secs(10);
/// Listen backlog (the kernel caps it at net.core.somaxconn).
pub const LISTEN_BACKLOG: i32 = 4096;
/// First size of a connection's read buffer.
pub const READ_BUF_MIN: usize = 4 * 1024;
/// Largest size of a connection's read buffer, and the source's write size.
pub const READ_BUF_MAX: usize = 256 * 1024;
const WORKER_STACK: usize = 256 * 1024;

/// What a server does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Echo,
    Sink,
    Source,
}

impl ServerKind {
    /// `"echo"`, `"sink"` or `"source"`.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Echo => "echo",
            ServerKind::Sink => "sink",
            ServerKind::Source => "source",
        }
    }
}

/// Counters of a server, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections_total: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Connections that ended in a reset (normal for clients that close with RST, and for a
    /// source whose client closes).
    pub resets: u64,
    /// Connections that ended in any other error.
    pub errors: u64,
    /// TLS handshakes completed (0 without TLS).
    #[serde(default)]
    pub tls_handshakes: u64,
    /// Of those, handshakes that resumed a session.
    #[serde(default)]
    pub tls_resumed: u64,
}

#[derive(Debug)]
struct Shared {
    kind: ServerKind,
    tls: Option<Arc<ServerConfig>>,
    stop: AtomicBool,
    open: Mutex<HashMap<u64, TcpStream>>,
    idle: Mutex<Vec<(u64, Sender<TcpStream>)>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
    connections_total: AtomicU64,
    connections_active: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    resets: AtomicU64,
    errors: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_resumed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running backend. Dropping it stops it (as [`Server::stop`] does).
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// Starts an echo server on `addr` (port 0 picks a free port; see [`Server::local_addr`]).
pub fn spawn_echo(addr: SocketAddr) -> io::Result<Server> {
    Server::spawn(ServerKind::Echo, addr)
}

/// Starts a sink server on `addr`.
pub fn spawn_sink(addr: SocketAddr) -> io::Result<Server> {
    Server::spawn(ServerKind::Sink, addr)
}

/// Starts a source server on `addr`.
pub fn spawn_source(addr: SocketAddr) -> io::Result<Server> {
    Server::spawn(ServerKind::Source, addr)
}

impl Server {
    /// Starts a server of `kind` on `addr`.
    pub fn spawn(kind: ServerKind, addr: SocketAddr) -> io::Result<Server> {
        Server::spawn_with(kind, addr, None)
    }

    /// Starts a server of `kind` on `addr` that speaks TLS (see [`crate::tls::server_config`]).
    pub fn spawn_tls(
        kind: ServerKind,
        addr: SocketAddr,
        config: Arc<ServerConfig>,
    ) -> io::Result<Server> {
        Server::spawn_with(kind, addr, Some(config))
    }

    fn spawn_with(
        kind: ServerKind,
        addr: SocketAddr,
        tls: Option<Arc<ServerConfig>>,
    ) -> io::Result<Server> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let listener: TcpListener = socket.into();
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            kind,
            tls,
            stop: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            idle: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_active: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
        });
        let accept_listener = listener.try_clone()?;
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("{}-accept", kind.name()))
            .spawn(move || accept_loop(accept_listener, accept_shared))?;
        Ok(Server {
            local_addr,
            listener,
            shared,
            accept: Some(accept),
        })
    }

    /// What this server does.
    pub fn kind(&self) -> ServerKind {
        self.shared.kind
    }

    /// The address it listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        let s = &self.shared;
        ServerStats {
            connections_total: s.connections_total.load(Ordering::Relaxed),
            connections_active: s.connections_active.load(Ordering::Relaxed),
            bytes_received: s.bytes_received.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            tls_handshakes: s.tls_handshakes.load(Ordering::Relaxed),
            tls_resumed: s.tls_resumed.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes every open connection, joins every thread, and returns the final
    /// counters. Bounded: nothing it waits for can block once its socket is shut down.
    pub fn stop(mut self) -> ServerStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // On Linux, shutdown() of a listening socket makes a blocked accept() fail at once.
        let _ = socket2::SockRef::from(&self.listener).shutdown(Shutdown::Both);
        let _ = accept.join();
        for stream in lock(&self.shared.open).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Dropping the idle workers' senders wakes them with "disconnected".
        lock(&self.shared.idle).clear();
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _peer)) => dispatch(&shared, stream),
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                if let Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) =
                    e.raw_os_error()
                {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// Hands `stream` to an idle worker, or to a new one.
fn dispatch(shared: &Arc<Shared>, stream: TcpStream) {
    let mut stream = stream;
    loop {
        let idle = lock(&shared.idle).pop();
        match idle {
            Some((_, tx)) => match tx.send(stream) {
                Ok(()) => return,
                // That worker is gone (it cannot be, it was idle; but stay safe): try the next.
                Err(mpsc::SendError(s)) => stream = s,
            },
            None => break,
        }
    }
    let worker_shared = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name(format!("{}-conn", shared.kind.name()))
        .stack_size(WORKER_STACK)
        .spawn(move || worker(worker_shared, stream));
    match spawned {
        Ok(handle) => {
            let mut workers = lock(&shared.workers);
            workers.retain(|h| !h.is_finished());
            workers.push(handle);
        }
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn worker(shared: Arc<Shared>, first: TcpStream) {
    let worker_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut buf = Vec::new();
    let mut next = Some(first);
    while let Some(stream) = next.take() {
        serve_connection(&shared, stream, &mut buf);
        // Become idle: publish a sender, unless the server is stopping.
        let (tx, rx) = mpsc::channel();
        {
            let mut idle = lock(&shared.idle);
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            idle.push((worker_id, tx));
        }
        next = match rx.recv_timeout(WORKER_IDLE_EXIT) {
            Ok(s) => Some(s),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = lock(&shared.idle);
                match idle.iter().position(|(id, _)| *id == worker_id) {
                    Some(i) => {
                        idle.swap_remove(i);
                        None
                    }
                    // The acceptor took our sender just now: a connection is on its way.
                    None => {
                        drop(idle);
                        rx.recv().ok()
                    }
                }
            }
        };
        // Keep memory low for a worker that may now wait a long time.
        if buf.len() > READ_BUF_MIN {
            buf = Vec::new();
        }
    }
}

fn serve_connection(shared: &Shared, stream: TcpStream, buf: &mut Vec<u8>) {
    shared.connections_total.fetch_add(1, Ordering::Relaxed);
    shared.connections_active.fetch_add(1, Ordering::Relaxed);
    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let registered = stream.try_clone().ok().and_then(|clone| {
        let mut open = lock(&shared.open);
        if shared.stop.load(Ordering::SeqCst) {
            return None;
        }
        open.insert(conn_id, clone);
        Some(())
    });
    let result = if registered.is_some() {
        let _ = stream.set_nodelay(true);
        match &shared.tls {
            None => serve_kind(shared, stream, buf),
            Some(config) => serve_tls(shared, config, stream, buf),
        }
    } else {
        Ok(())
    };
    lock(&shared.open).remove(&conn_id);
    match result {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ) =>
        {
            shared.resets.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) if shared.stop.load(Ordering::SeqCst) => {}
        Err(_) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.connections_active.fetch_sub(1, Ordering::Relaxed);
}

fn serve_kind(shared: &Shared, stream: impl Read + Write, buf: &mut Vec<u8>) -> io::Result<()> {
    match shared.kind {
        ServerKind::Echo => echo(shared, stream, buf),
        ServerKind::Sink => sink(shared, stream, buf),
        ServerKind::Source => source(shared, stream),
    }
}

/// The handshake, then the backend over TLS, then close_notify.
fn serve_tls(
    shared: &Shared,
    config: &Arc<ServerConfig>,
    tcp: TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut stream = tls::accept(config, tcp)?;
    shared.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    if tls::resumed(stream.conn.handshake_kind()) {
        shared.tls_resumed.fetch_add(1, Ordering::Relaxed);
    }
    serve_kind(shared, &mut stream, buf)?;
    tls::send_close_notify(&mut stream)
}

/// Reads into `buf`, growing it (up to [`READ_BUF_MAX`]) when a read fills it. A TLS peer that
/// closed without close_notify is an end of stream, as a plain FIN is.
fn read_some(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.is_empty() {
        buf.resize(READ_BUF_MIN, 0);
    }
    loop {
        match tls::read_lenient(stream, buf) {
            Ok(n) => {
                if n == buf.len() && buf.len() < READ_BUF_MAX {
                    let grown = (buf.len() * 4).min(READ_BUF_MAX);
                    buf.resize(grown, 0);
                }
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn echo(shared: &Shared, mut stream: impl Read + Write, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let n = read_some(&mut stream, buf)?;
        if n == 0 {
            return Ok(());
        }
        shared.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
        stream.write_all(&buf[..n])?;
        shared.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn sink(shared: &Shared, mut stream: impl Read, buf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let n = read_some(&mut stream, buf)?;
        if n == 0 {
            return Ok(());
        }
        shared.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn source(shared: &Shared, mut stream: impl Write) -> io::Result<()> {
    let mut pattern = PatternSource::new(SOURCE_SEED, READ_BUF_MAX);
    loop {
        let n = stream.write(pattern.next_chunk())?;
        if n == 0 {
            return Ok(());
        }
        pattern.advance(n);
        shared.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn loopback() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    #[test]
    fn echo_echoes_and_counts() {
        let server = spawn_echo(loopback()).unwrap();
        let mut c = TcpStream::connect(server.local_addr()).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(c.read(&mut got).unwrap(), 0);
        let stats = server.stop();
        assert_eq!(stats.connections_total, 1);
        assert_eq!(stats.bytes_received, 5);
        assert_eq!(stats.bytes_sent, 5);
        assert_eq!(stats.connections_active, 0);
    }

    #[test]
    fn stop_is_bounded_with_open_connections() {
        let server = spawn_source(loopback()).unwrap();
        let idle = spawn_sink(loopback()).unwrap();
        // A client that never reads (source blocks in write) and one that never writes.
        let _a = TcpStream::connect(server.local_addr()).unwrap();
        let _b = TcpStream::connect(idle.local_addr()).unwrap();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(server.stats().connections_active, 1);
        let stats = server.stop();
        assert_eq!(stats.connections_active, 0);
        assert!(stats.bytes_sent > 0);
        assert_eq!(idle.stop().connections_total, 1);
    }

    #[test]
    fn workers_are_reused() {
        let server = spawn_echo(loopback()).unwrap();
        for _ in 0..20 {
            let mut c = TcpStream::connect(server.local_addr()).unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(c.read(&mut b).unwrap(), 0);
        }
        // Usually one worker serves all 20; a worker preempted before it became idle makes
        // the acceptor spawn another, so only check that reuse happened at all.
        assert!(lock(&server.shared.workers).len() < 20);
        assert_eq!(server.stop().connections_total, 20);
    }
}
