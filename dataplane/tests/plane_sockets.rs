//! The data plane alone, through real sockets: a hand-built FIB, echo backends on loopback.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::accesslog::{AccessLogQueues, AccessLogSink, LogFormat, LogPath};
use switchyard_dataplane::fib::*;
use switchyard_dataplane::plane::{DataPlane, PlaneConfig};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::worker::{Limits, RelayMode};

mod support;
use support::fib::{echo_backend, fib};

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One worker relaying in `mode` to `backend`; returns the plane, its FIB and its address.
fn start_plane(mode: RelayMode, backend: SocketAddr) -> (DataPlane, Arc<Fib>, SocketAddr) {
    start_plane_with(
        Limits {
            relay_mode: mode,
            ..Limits::default()
        },
        backend,
    )
}

fn start_plane_with(limits: Limits, backend: SocketAddr) -> (DataPlane, Arc<Fib>, SocketAddr) {
    start_plane_stats(limits, backend, Arc::new(ServerStats::new("server", 1)))
}

fn start_plane_stats(
    limits: Limits,
    backend: SocketAddr,
    server: Arc<ServerStats>,
) -> (DataPlane, Arc<Fib>, SocketAddr) {
    let listen = free_port();
    let workers = 1;
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits,
            drain_time: Duration::from_secs(1),
        },
        server,
        Arc::new(AccessLogQueues::new(workers, 64)),
    )
    .expect("start");
    let f = Arc::new(fib(listen, &[backend], workers));
    plane.publish(f.clone()).expect("publish");
    (plane, f, listen)
}

/// Two provided buffers for sixteen busy connections: receives keep failing with ENOBUFS and
/// every starved direction must be re-armed when a buffer comes back; nothing may stall.
#[test]
fn buffer_starvation_never_stalls_a_connection() {
    let backend = echo_backend();
    let limits = Limits {
        buffers_per_worker: 2,
        buffer_size_bytes: 4096,
        ..Limits::default()
    };
    let server = Arc::new(ServerStats::new("server", 1));
    let (plane, f, listen) = start_plane_stats(limits, backend, server.clone());
    let clients: Vec<_> = (0..16u32)
        .map(|id| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(listen).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let msg: Vec<u8> = (0..300_000u32).map(|i| (i * 13 + id) as u8).collect();
                let m2 = msg.clone();
                let mut w = c.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    w.write_all(&m2).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                t.join().unwrap();
                assert!(
                    got == msg,
                    "connection {id}: echo differs ({} bytes)",
                    got.len()
                );
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let tcp = &f.listeners[0].filter_chains[0].tcp_proxy.stats;
    assert_eq!(tcp.get(TcpStat::DownstreamCxRxBytesTotal), 16 * 300_000);
    assert!(
        server.get(ServerStat::RelayBufferExhausted) > 0,
        "the test must exercise buffer starvation"
    );
    plane.shutdown(Duration::from_millis(100));
}

/// Sends `len` patterned bytes through `c` from another thread while reading the echo back;
/// true when every byte came back in order.
fn echo_bulk(c: &mut TcpStream, len: usize, seed: u32) -> bool {
    let msg: Vec<u8> = (0..len as u32).map(|i| (i * 31 + seed) as u8).collect();
    let m2 = msg.clone();
    let mut w = c.try_clone().unwrap();
    let t = std::thread::spawn(move || w.write_all(&m2).unwrap());
    let mut got = vec![0u8; len];
    c.read_exact(&mut got).unwrap();
    t.join().unwrap();
    got == msg
}

/// A bulk direction moves to large buffers, and back to small ones once the traffic turns
/// into small messages: after the bulk phase, fifty 100-byte exchanges take at most one
/// large receive per direction (the one that shows the burst is over).
#[test]
fn bulk_moves_to_large_buffers_and_small_messages_move_back() {
    let backend = echo_backend();
    let server = Arc::new(ServerStats::new("server", 1));
    let (plane, _f, listen) = start_plane_stats(Limits::default(), backend, server.clone());
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(echo_bulk(&mut c, 16 << 20, 1), "bulk echo differs");
    let after_bulk = server.get(ServerStat::RelayLargeBufferReceives);
    assert!(after_bulk > 0, "16 MiB of bulk never used a large buffer");
    for round in 0..50u8 {
        let msg = [round; 100];
        c.write_all(&msg).unwrap();
        let mut got = [0u8; 100];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    let small_phase = server.get(ServerStat::RelayLargeBufferReceives) - after_bulk;
    assert!(
        small_phase <= 2,
        "{small_phase} large receives for 50 small exchanges"
    );
    plane.shutdown(Duration::from_millis(100));
}

/// One large buffer for eight bulk connections: directions that find none fall back to
/// small buffers (no stall, no `relay_buffer_exhausted`: the small pool is not short).
#[test]
fn large_buffer_shortage_falls_back_to_small_buffers() {
    let backend = echo_backend();
    let limits = Limits {
        large_buffers_per_worker: 1,
        ..Limits::default()
    };
    let server = Arc::new(ServerStats::new("server", 1));
    let (plane, _f, listen) = start_plane_stats(limits, backend, server.clone());
    let clients: Vec<_> = (0..8u32)
        .map(|id| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(listen).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                assert!(
                    echo_bulk(&mut c, 4 << 20, id),
                    "connection {id}: echo differs"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    assert!(server.get(ServerStat::RelayLargeBufferReceives) > 0);
    assert_eq!(server.get(ServerStat::RelayBufferExhausted), 0);
    plane.shutdown(Duration::from_millis(100));
}

#[test]
fn echo_through_the_plane_buffer_ring() {
    echo_through_the_plane(RelayMode::BufferRing);
}

#[test]
fn echo_through_the_plane_splice() {
    echo_through_the_plane(RelayMode::Splice);
}

fn echo_through_the_plane(mode: RelayMode) {
    let backend = echo_backend();
    let (plane, f, listen) = start_plane(mode, backend);
    for round in 0..3 {
        let mut c = TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + round) as u8).collect();
        let m2 = msg.clone();
        let mut w = c.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            w.write_all(&m2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), msg.len());
        assert!(got == msg);
    }
    let tcp = &f.listeners[0].filter_chains[0].tcp_proxy.stats;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tcp.get(TcpStat::DownstreamCxTotal), 3);
    assert_eq!(tcp.get(TcpStat::DownstreamCxRxBytesTotal), 600_000);
    assert_eq!(tcp.get(TcpStat::DownstreamCxTxBytesTotal), 600_000);
    assert_eq!(f.clusters[0].stats.get(ClusterStat::UpstreamCxTotal), 3);
    assert_eq!(tcp.gauge(TcpStat::DownstreamCxActive), 0);
    plane.shutdown(Duration::from_millis(100));
}

/// A backend that reads everything until the client's FIN, then answers with `reply` and
/// closes: the client's half-close must reach it while the other direction stays open.
fn half_close_backend(reply: Vec<u8>) -> (SocketAddr, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.send(got).unwrap();
        s.write_all(&reply).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    });
    (addr, rx)
}

#[test]
fn splice_half_close_keeps_the_other_direction() {
    let reply: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
    let (backend, got_rx) = half_close_backend(reply.clone());
    let (plane, f, listen) = start_plane(RelayMode::Splice, backend);
    let request: Vec<u8> = (0..150_000u32).map(|i| (i * 3) as u8).collect();
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&request).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    // The backend saw every byte and the end of stream before it answered.
    let seen = got_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(seen == request, "backend got {} bytes", seen.len());
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    assert!(answer == reply, "client got {} bytes", answer.len());
    std::thread::sleep(Duration::from_millis(100));
    let tcp = &f.listeners[0].filter_chains[0].tcp_proxy.stats;
    assert_eq!(tcp.get(TcpStat::DownstreamCxRxBytesTotal), 150_000);
    assert_eq!(tcp.get(TcpStat::DownstreamCxTxBytesTotal), 300_000);
    assert_eq!(
        f.clusters[0].stats.get(ClusterStat::UpstreamCxTxBytesTotal),
        150_000
    );
    assert_eq!(
        f.clusters[0].stats.get(ClusterStat::UpstreamCxRxBytesTotal),
        300_000
    );
    assert_eq!(tcp.gauge(TcpStat::DownstreamCxActive), 0);
    assert_eq!(f.clusters[0].stats.get(ClusterStat::UpstreamCxReset), 0);
    plane.shutdown(Duration::from_millis(100));
}

/// A backend that accepts, reads a little, then resets (SO_LINGER 0) while the client is
/// still sending; reports when it is done.
fn resetting_backend() -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 1000];
        s.read_exact(&mut buf).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        tx.send(()).unwrap();
    });
    (addr, rx)
}

#[test]
fn splice_reset_reaches_the_client_as_a_reset() {
    let (backend, done) = resetting_backend();
    let (plane, f, listen) = start_plane(RelayMode::Splice, backend);
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[7u8; 1000]).unwrap();
    done.recv_timeout(Duration::from_secs(5)).unwrap();
    // The client must see a reset, not a clean end of stream.
    let mut buf = [0u8; 100];
    let outcome = loop {
        match c.read(&mut buf) {
            Ok(0) => break Ok(0),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    let err = outcome.expect_err("clean end of stream instead of a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // The connection is gone on the proxy too, with the reset counted, and a new connection
    // still works (its pipes came from the pool, or were created fresh).
    std::thread::sleep(Duration::from_millis(200));
    let tcp = &f.listeners[0].filter_chains[0].tcp_proxy.stats;
    assert_eq!(tcp.gauge(TcpStat::DownstreamCxActive), 0);
    assert_eq!(f.clusters[0].stats.get(ClusterStat::UpstreamCxReset), 1);
    plane.shutdown(Duration::from_millis(100));
}

#[test]
fn splice_client_reset_resets_the_backend_and_pipes_are_reused() {
    // The backend keeps reading until it sees the end of its connection: a reset, because
    // the client reset while its bytes were still in flight.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 65536];
        let mut first = true;
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(_) if first => {
                    first = false;
                    tx.send(Ok(())).unwrap();
                }
                Ok(_) => {}
                Err(e) => break Err(e.kind()),
            }
        };
        tx.send(end).unwrap();
        // Then serve echo for the next connection.
        let (mut s, _) = l.accept().unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => s.write_all(&buf[..n]).unwrap(),
            }
        }
    });
    let (plane, f, listen) = start_plane(RelayMode::Splice, backend);
    let c = TcpStream::connect(listen).unwrap();
    (&c).write_all(&[1u8; 4096]).unwrap();
    rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let end = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(f.clusters[0].stats.get(ClusterStat::UpstreamCxReset), 1);
    // A second connection relays through the same worker's pipes.
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut pong = [0u8; 4];
    c.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"ping");
    drop(c);
    plane.shutdown(Duration::from_millis(100));
}

/// The inode of the socket listening on `addr` (from /proc/net/tcp).
fn listening_inode(addr: SocketAddr) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1].ends_with(&local) && f[3] == "0A")
        .map(|f| f[9].parse().expect("inode"))
        .expect("a listening socket on the port")
}

/// This process's descriptors that refer to socket `inode`.
fn fds_of_socket(inode: u64) -> Vec<i32> {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| {
            let e = e.ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            (link.to_string_lossy() == want)
                .then(|| e.file_name().to_string_lossy().parse().ok())?
        })
        .collect()
}

/// A worker that adopts a snapshot late (here: 3 s, beyond the plane's 2 s wait) must still
/// find the removed listener's descriptor open: the plane used to close it when its wait ran
/// out, so the lagging worker's slot named a descriptor number that any socket opened
/// meanwhile could take. Now the descriptor stays open until the worker has let go of it,
/// and is closed right after.
#[test]
fn a_lagging_worker_keeps_a_removed_listeners_descriptor_until_it_lets_go() {
    let backend = echo_backend();
    let (plane, f, listen) = start_plane(RelayMode::BufferRing, backend);
    let mut c = TcpStream::connect(listen).expect("listener serves");
    assert!(echo_bulk(&mut c, 1000, 1));
    drop(c);
    let inode = listening_inode(listen);
    let fds = fds_of_socket(inode);
    assert_eq!(fds.len(), 1, "one worker, one descriptor: {fds:?}");
    let without = Fib {
        generation: 2,
        listeners: Vec::new(),
        clusters: f.clusters.clone(),
        own_addresses: Vec::new(),
        udp_listeners: Vec::new(),
    };
    plane.delay_next_adoption_for_test(Duration::from_secs(3));
    let t0 = std::time::Instant::now();
    plane.publish(Arc::new(without)).expect("publish");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "the plane waited for the lagging worker ({waited:?})"
    );
    // The worker has not adopted yet: the descriptor number it holds must still be its socket.
    assert_eq!(
        fds_of_socket(inode),
        fds,
        "removed listener's descriptor closed under a worker that still names it"
    );
    // Once the worker caught up and its accept ended, the descriptor is closed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !fds_of_socket(inode).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the removed listener's descriptor was never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(2900),
        "closed only after the worker adopted"
    );
    plane.shutdown(Duration::from_millis(100));
}

/// Connections the kernel completes while the plane drains its listeners (the worker has
/// not yet stopped its accept, or has stopped it but not yet closed the socket) count as
/// connected for their clients: each is served, byte-exact, and only then does the listener
/// stop listening. The worker is held in its adoption of the drain so that every connection
/// lands in that window; a drain used to close what it accepted there and reset what was
/// still queued.
fn a_drain_serves_what_the_kernel_completed(mode: RelayMode) {
    let backend = echo_backend();
    let (plane, _f, listen) = start_plane(mode, backend);
    plane.delay_next_adoption_for_test(Duration::from_millis(600));
    std::thread::scope(|scope| {
        let drain = scope.spawn(|| plane.drain_listeners());
        std::thread::sleep(Duration::from_millis(100));
        let mut clients: Vec<TcpStream> = (0..24)
            .map(|_| TcpStream::connect(listen).expect("the listener still listens"))
            .collect();
        for (seed, c) in clients.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert!(
                echo_bulk(c, 4096, seed as u32),
                "connection {seed}, completed during the drain, was not served"
            );
        }
        drain.join().unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the drained listener still accepts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    plane.shutdown(Duration::from_millis(100));
}

#[test]
fn a_drain_serves_what_the_kernel_completed_buffer_ring() {
    a_drain_serves_what_the_kernel_completed(RelayMode::BufferRing);
}

#[test]
fn a_drain_serves_what_the_kernel_completed_splice() {
    a_drain_serves_what_the_kernel_completed(RelayMode::Splice);
}

/// A shutdown records every connection the kernel completed before the listeners closed,
/// even with a drain time of 0. Eight clients connect and send, then the stop comes and the
/// worker is held right after it acknowledged the drain (as one taken off its CPU there
/// would be); the plane
/// used to stop as soon as the worker had acknowledged, before it had served what its
/// listener still held, and the worker then closed those connections without a record
/// (lines lost at shutdown).
#[test]
fn a_shutdown_records_every_connection_the_kernel_completed() {
    let backend = echo_backend();
    let listen = free_port();
    let queues = Arc::new(AccessLogQueues::new(1, 64));
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits::default(),
            drain_time: Duration::ZERO,
        },
        Arc::new(ServerStats::new("server", 1)),
        queues.clone(),
    )
    .expect("start");
    let mut f = fib(listen, &[backend], 1);
    f.listeners[0].filter_chains[0].tcp_proxy.access_logs = vec![Arc::new(AccessLogSink {
        path: LogPath::Stdout,
        format: LogFormat::EnvoyDefault,
        filter: Default::default(),
    })];
    plane.publish(Arc::new(f)).expect("publish");
    let mut c = TcpStream::connect(listen).expect("listener serves");
    assert!(echo_bulk(&mut c, 100, 1));
    drop(c);
    // Eight clients the kernel completes (accepted or still in the accept queue) just before
    // the stop; the worker is then held right after it adopts the drain.
    let clients: Vec<TcpStream> = (0..8u8)
        .map(|i| {
            let mut c = TcpStream::connect(listen).expect("the listener listens");
            c.write_all(&[i; 16]).unwrap();
            c
        })
        .collect();
    plane.delay_after_next_adoption_for_test(Duration::from_millis(500));
    plane.shutdown(Duration::ZERO);
    drop(clients);
    let mut records = 0;
    while queues.pop(0).is_some() {
        records += 1;
    }
    assert_eq!(
        records,
        1 + 8,
        "one record per connection, the eight included"
    );
}
