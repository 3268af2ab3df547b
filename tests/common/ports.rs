//! Ports and addresses on loopback: a free port, a closed one, connecting from a chosen
//! 127/8 source.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
