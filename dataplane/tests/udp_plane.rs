//! The UDP proxy through the data plane alone (a hand-built FIB, real sockets on loopback):
//! datagrams both ways byte-exact at every size, sessions per source, idle expiry.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::accesslog::AccessLogQueues;
use switchyard_dataplane::fib::*;
use switchyard_dataplane::plane::{DataPlane, PlaneConfig};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::worker::Limits;

/// A UDP echo on loopback (one thread), returning every datagram to its source; stops
/// when the test process ends.
fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Plane {
    plane: DataPlane,
    fib: Arc<Fib>,
    listen: SocketAddr,
}

fn start(backend: SocketAddr, idle_timeout_ms: Option<u64>) -> Plane {
    let workers = 1;
    let listen = free_udp_port();
    let cluster = Cluster {
        name: "udp_echo".into(),
        connect_timeout_ms: 1000,
        lb_policy: LbPolicy::RoundRobin,
        endpoints: vec![Endpoint {
            address: backend,
            weight: 1,
            priority: 0,
            stats: Arc::new(HostStats::new()),
        }],
        stats: Arc::new(ClusterStats::new("udp_echo", workers)),
        upstream_bind: Default::default(),
        hash_table: None,
        circuit_breakers: Default::default(),
        resources: Default::default(),
        health: Default::default(),
        health_state: Default::default(),
        added_via_api: false,
        udp_stats: Arc::new(ClusterUdpStats::new("udp_echo", workers)),
    };
    let fib = Arc::new(Fib {
        generation: 1,
        listeners: Vec::new(),
        udp_listeners: vec![UdpListener {
            name: "udp".into(),
            address: listen,
            proxy: UdpProxy {
                stats: Arc::new(UdpStats::new("udp", workers)),
                route: Route::Cluster(ClusterId(0)),
                idle_timeout_ms,
                hash_source_ip: false,
            },
        }],
        clusters: vec![Arc::new(cluster)],
        own_addresses: Vec::new(),
    });
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits::default(),
            drain_time: Duration::from_secs(1),
        },
        Arc::new(ServerStats::new("server", workers)),
        Arc::new(AccessLogQueues::new(workers, 64)),
    )
    .expect("start");
    plane.publish(fib.clone()).expect("publish");
    Plane { plane, fib, listen }
}

fn stats(p: &Plane) -> &UdpStats {
    &p.fib.udp_listeners[0].proxy.stats
}

fn client(to: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.connect(to).unwrap();
    c
}

/// `recv`, retried when a signal interrupts it.
fn recv(c: &UdpSocket, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match c.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn datagrams_of_every_size_come_back_byte_exact() {
    let p = start(udp_echo(), None);
    let c = client(p.listen);
    let sizes = [
        1usize, 2, 63, 64, 1399, 1400, 1472, 1473, 8192, 32768, 65000, 65507,
    ];
    let mut buf = vec![0u8; 65536];
    for (i, &len) in sizes.iter().enumerate() {
        let sent = pattern(len, i as u8);
        c.send(&sent).unwrap();
        let n = recv(&c, &mut buf).unwrap_or_else(|e| panic!("no echo of {len} B: {e}"));
        assert_eq!(n, len, "datagram of {len} B came back as {n} B");
        assert_eq!(&buf[..n], &sent[..], "datagram of {len} B changed");
    }
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let s = stats(&p);
    wait_for("tx stats", || {
        s.get(UdpStat::DownstreamSessTxDatagrams) == sizes.len() as u64
    });
    assert_eq!(
        s.get(UdpStat::DownstreamSessTotal),
        1,
        "one source, one session"
    );
    assert_eq!(s.gauge(UdpStat::DownstreamSessActive), 1);
    assert_eq!(
        s.get(UdpStat::DownstreamSessRxDatagrams),
        sizes.len() as u64
    );
    assert_eq!(s.get(UdpStat::DownstreamSessRxBytes), total);
    assert_eq!(s.get(UdpStat::DownstreamSessTxBytes), total);
    let cu = &p.fib.clusters[0].udp_stats;
    assert_eq!(cu.get(ClusterUdpStat::SessTxDatagrams), sizes.len() as u64);
    assert_eq!(cu.get(ClusterUdpStat::SessRxDatagrams), sizes.len() as u64);
    p.plane.shutdown(Duration::from_millis(10));
}

#[test]
fn each_source_is_a_session_and_an_idle_one_expires() {
    let p = start(udp_echo(), Some(300));
    let clients: Vec<UdpSocket> = (0..20).map(|_| client(p.listen)).collect();
    let mut buf = [0u8; 64];
    for (i, c) in clients.iter().enumerate() {
        c.send(&[i as u8; 10]).unwrap();
        assert_eq!(recv(c, &mut buf).unwrap(), 10);
        assert_eq!(buf[..10], [i as u8; 10]);
    }
    let s = stats(&p);
    assert_eq!(s.get(UdpStat::DownstreamSessTotal), 20);
    assert_eq!(s.gauge(UdpStat::DownstreamSessActive), 20);
    // Kept alive by traffic past the timeout...
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        clients[0].send(b"keep").unwrap();
        assert_eq!(recv(&clients[0], &mut buf).unwrap(), 4);
    }
    // ...while the others expire.
    wait_for("19 idle sessions to expire", || {
        s.get(UdpStat::IdleTimeout) == 19
    });
    assert_eq!(s.gauge(UdpStat::DownstreamSessActive), 1);
    wait_for("the last to expire", || s.get(UdpStat::IdleTimeout) == 20);
    assert_eq!(s.gauge(UdpStat::DownstreamSessActive), 0);
    // An expired source starts a new session.
    clients[1].send(b"again").unwrap();
    assert_eq!(recv(&clients[1], &mut buf).unwrap(), 5);
    assert_eq!(s.get(UdpStat::DownstreamSessTotal), 21);
    p.plane.shutdown(Duration::from_millis(10));
}
