//! Echo backends on 127.0.0.1 that remember when they first accepted a connection, and the
//! client loops that drive connections through the proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// An echo server: one thread accepting, one per connection echoing until EOF.
#[derive(Debug, Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    first_accept: Arc<OnceLock<Instant>>,
}

impl Backend {
    /// Listens on a free port of 127.0.0.1.
    pub fn start() -> std::io::Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let b = Backend {
            addr: listener.local_addr()?,
            first_accept: Arc::default(),
        };
        let first = b.first_accept.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = first.set(Instant::now());
                std::thread::spawn(move || echo(conn));
            }
        });
        Ok(b)
    }

    /// When the first connection arrived.
    pub fn first_accept(&self) -> Option<Instant> {
        self.first_accept.get().copied()
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// One short connection through `target`: connect, one byte each way, close. True when the
/// byte came back.
pub fn one_exchange(target: SocketAddr) -> bool {
    let Ok(mut c) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = c.set_nodelay(true);
    let mut b = [0u8; 1];
    c.write_all(b"x").is_ok() && c.read_exact(&mut b).is_ok()
}

/// Threads making short connections through `target` back to back until `stop`; counts the
/// exchanges that completed.
#[derive(Debug)]
pub struct Connectors {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Connectors {
    pub fn start(target: SocketAddr, threads: usize) -> Connectors {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if one_exchange(target) {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            std::thread::sleep(Duration::from_micros(500));
                        }
                    }
                })
            })
            .collect();
        Connectors {
            stop,
            done,
            threads,
        }
    }

    /// Completed exchanges so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.done.load(Ordering::Relaxed)
    }
}
