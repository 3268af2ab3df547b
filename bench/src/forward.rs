//! The floor: the least work a user-space TCP forwarder can do, as a reference point.
//!
//! [`Forwarder`] accepts a connection, connects to its target, and gives each direction its own
//! thread running `read` -> `write_all` on blocking sockets until end of stream, which it passes
//! on as `shutdown(SHUT_WR)`; an error on either side resets the other (`SO_LINGER 0`). No event
//! loop, no bookkeeping, no buffer management beyond one buffer per direction: every system
//! call it makes is one any proxy must make too. What a real proxy measures above this floor
//! is its own cost; what the floor measures above a direct connection is the kernel's (the
//! extra sockets, copies and wake-ups of any user-space hop).
//!
//! Not a proxy to deploy: a thread pair per connection, nothing bounded, no timeouts. It is a
//! floor for latency and bulk throughput of a few connections; connect-heavy runs pay a thread
//! spawn per connection and are not a floor.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use socket2::{Domain, SockRef, Socket, Type};

/// Default size of each direction's buffer.
pub const FORWARD_BUFFER_BYTES: usize = 1024 * 1024;
const PUMP_STACK: usize = 64 * 1024;

/// A running floor forwarder. Dropping it stops accepting (open connections finish on their
/// own when their peers close).
#[derive(Debug)]
pub struct Forwarder {
    local_addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    connect_failures: AtomicU64,
}

/// Starts a forwarder listening on `listen` (port 0 picks one) that relays every connection to
/// `target`, with `buffer_bytes` per direction.
pub fn spawn_forward(
    listen: SocketAddr,
    target: SocketAddr,
    buffer_bytes: usize,
) -> io::Result<Forwarder> {
    let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into())?;
    socket.listen(crate::server::LISTEN_BACKLOG)?;
    let listener: TcpListener = socket.into();
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        connections: AtomicU64::new(0),
        connect_failures: AtomicU64::new(0),
    });
    let accept_listener = listener.try_clone()?;
    let accept_shared = Arc::clone(&shared);
    let buffer_bytes = buffer_bytes.max(1);
    let accept = thread::Builder::new()
        .name("forward-accept".into())
        .spawn(move || accept_loop(accept_listener, target, buffer_bytes, accept_shared))?;
    Ok(Forwarder {
        local_addr,
        listener,
        shared,
        accept: Some(accept),
    })
}

impl Forwarder {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Connections closed because the target refused or was unreachable.
    pub fn connect_failures(&self) -> u64 {
        self.shared.connect_failures.load(Ordering::Relaxed)
    }

    /// Stops accepting new connections (bounded: the accept thread is woken and joined).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // On Linux, shutdown() of a listening socket makes a blocked accept() fail at once.
        let _ = SockRef::from(&self.listener).shutdown(Shutdown::Both);
        let _ = accept.join();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    buffer_bytes: usize,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, _)) = accepted else {
            continue;
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let backend = match TcpStream::connect(target) {
            Ok(b) => b,
            Err(_) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = backend.set_nodelay(true);
        let pairs = client
            .try_clone()
            .and_then(|c| backend.try_clone().map(|b| (c, b)));
        let Ok((client2, backend2)) = pairs else {
            reset(&client);
            continue;
        };
        spawn_pump(client, backend, buffer_bytes);
        spawn_pump(backend2, client2, buffer_bytes);
    }
}

fn spawn_pump(from: TcpStream, to: TcpStream, buffer_bytes: usize) {
    let _ = thread::Builder::new()
        .name("forward-pump".into())
        .stack_size(PUMP_STACK)
        .spawn(move || pump(from, to, buffer_bytes));
}

/// Copies `from` to `to` until end of stream (passed on as a half-close) or an error (passed on
/// as a reset of both).
fn pump(mut from: TcpStream, mut to: TcpStream, buffer_bytes: usize) {
    let mut buf = vec![0u8; buffer_bytes];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    reset(&from);
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                reset(&to);
                return;
            }
        }
    }
}

/// Closes the connection with a reset: `SO_LINGER {1, 0}`, then shutdown so the other pump
/// (which holds a clone) wakes up too.
fn reset(s: &TcpStream) {
    let _ = SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
    let _ = s.shutdown(Shutdown::Both);
}
