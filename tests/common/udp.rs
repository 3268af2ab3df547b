//! UDP: an echo (or tagged) backend on loopback ([`UdpBackend`]), socket buffer sizing and
//! an interrupt-safe `recv`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

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
