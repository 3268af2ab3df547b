//! The UDP proxy through the data plane alone (a hand-built FIB, real sockets on loopback):
//! datagrams both ways byte-exact at every size, sessions per source, idle expiry.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::accesslog::AccessLogQueues;
use switchyard_dataplane::fib::*;
use switchyard_dataplane::host::HostState;
use switchyard_dataplane::plane::{DataPlane, PlaneConfig};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::worker::Limits;

/// A UDP echo on loopback (one thread), returning every datagram to its source (or, when
/// tagged, its tag); stops when the test process ends.
fn udp_echo() -> SocketAddr {
    udp_backend(None)
}

fn udp_backend(tag: Option<&'static [u8]>) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    room_for_bursts(&s);
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(tag.unwrap_or(&buf[..n]), from);
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

/// A cluster `udp_echo` over `endpoints` (round robin), tracking outlier health, admitting
/// `max_sessions`.
fn cluster(endpoints: &[(SocketAddr, Arc<HostState>)], max_sessions: u32) -> Cluster {
    Cluster {
        http2: None,
        original_dst_authority: false,
        name: "udp_echo".into(),
        observability_name: "udp_echo".into(),
        connect_timeout_ms: 1000,
        buffer_limit_bytes: 1024 * 1024,
        lb_policy: LbPolicy::RoundRobin,
        endpoints: endpoints
            .iter()
            .map(|(address, stats)| Endpoint {
                address: *address,
                weight: 1,
                priority: 0,
                locality: Default::default(),
                tunnel: None,
                stats: stats.clone(),
            })
            .collect(),
        stats: Arc::new(ClusterStats::new("udp_echo", 1)),
        upstream_bind: Default::default(),
        hash_table: None,
        circuit_breakers: CircuitBreakers {
            max_connections: max_sessions,
            ..Default::default()
        },
        resources: Default::default(),
        health: HealthPolicy {
            // Outlier detection configured: balancers follow host health (the thread that
            // would eject is not running here; the test sets the flags itself).
            outlier: Some(OutlierDetection::default()),
            ..Default::default()
        },
        health_state: Default::default(),
        added_via_api: false,
        udp_stats: Arc::new(ClusterUdpStats::new("udp_echo", 1)),
        tls: None,
        proxy_protocol: None,
        tls_secrets_missing: false,
        ssl_stats: None,
    }
}

/// A FIB of generation `generation` with the UDP listener on `listen` (none when `None`)
/// routing to `cluster`, whose shared blocks (stats, resources, health) come from `like`
/// when given, as the control plane keeps them across generations.
fn fib_with(
    generation: u64,
    listen: Option<SocketAddr>,
    mut cluster: Cluster,
    like: Option<&Fib>,
    idle_timeout_ms: Option<u64>,
) -> Arc<Fib> {
    let stats = like
        .and_then(|f| f.udp_listeners.first())
        .map(|l| l.proxy.stats.clone())
        .unwrap_or_else(|| Arc::new(UdpStats::new("udp", 1)));
    let listener_udp_stats = like
        .and_then(|f| f.udp_listeners.first())
        .map(|l| l.udp_stats.clone())
        .unwrap_or_else(|| Arc::new(ListenerUdpStats::new("udp", 1)));
    if let Some(old) = like.map(|f| f.cluster(ClusterId(0))) {
        cluster.stats = old.stats.clone();
        cluster.resources = old.resources.clone();
        cluster.health_state = old.health_state.clone();
        cluster.udp_stats = old.udp_stats.clone();
    }
    Arc::new(Fib {
        generation,
        listeners: Vec::new(),
        udp_listeners: listen
            .map(|address| UdpListener {
                name: "udp".into(),
                address,
                proxy: UdpProxy {
                    stats,
                    route: Route::Cluster(ClusterId(0)),
                    idle_timeout_ms,
                    hash_source_ip: false,
                    max_upstream_rx_datagram_bytes: None,
                },
                max_rx_datagram_bytes: None,
                udp_stats: listener_udp_stats.clone(),
            })
            .into_iter()
            .collect(),
        clusters: vec![Arc::new(cluster)],
        own_addresses: Vec::new(),
    })
}

fn start(backend: SocketAddr, idle_timeout_ms: Option<u64>) -> Plane {
    let host = Arc::new(HostState::new());
    start_with(
        Limits::default(),
        cluster(&[(backend, host)], 1024),
        idle_timeout_ms,
    )
}

fn start_with(limits: Limits, cluster: Cluster, idle_timeout_ms: Option<u64>) -> Plane {
    let listen = free_udp_port();
    let fib = fib_with(1, Some(listen), cluster, None, idle_timeout_ms);
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits,
            drain_time: Duration::from_secs(1),
        },
        Arc::new(ServerStats::new("server", 1)),
        Arc::new(AccessLogQueues::new(1, 64)),
    )
    .expect("start");
    plane.publish(fib.clone()).expect("publish");
    Plane { plane, fib, listen }
}

fn stats(p: &Plane) -> &UdpStats {
    &p.fib.udp_listeners[0].proxy.stats
}

/// 4 MiB socket buffers (capped by `rmem_max`): every datagram a test has in flight fits,
/// so a thread kept off its CPU (CI runs tests in parallel) loses none.
fn room_for_bursts(s: &UdpSocket) {
    let s = socket2::SockRef::from(s);
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
}

fn client(to: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    room_for_bursts(&c);
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

fn ask(c: &UdpSocket, msg: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    c.send(msg).unwrap();
    let n = recv(c, &mut buf).expect("an answer");
    buf[..n].to_vec()
}

fn sessions_held(p: &Plane) -> u64 {
    p.fib.clusters[0].resources.in_use(Resource::Connections)
}

#[test]
fn a_session_leaves_an_endpoint_that_is_removed_or_turns_unhealthy() {
    let (a, b) = (udp_backend(Some(b"a")), udp_backend(Some(b"b")));
    let (host_a, host_b) = (Arc::new(HostState::new()), Arc::new(HostState::new()));
    let p = start_with(
        Limits::default(),
        cluster(&[(a, host_a.clone())], 1024),
        None,
    );
    let c = client(p.listen);
    assert_eq!(ask(&c, b"?"), b"a");
    // EDS adds b and removes a: the session closes with the new FIB...
    let two = fib_with(
        2,
        Some(p.listen),
        cluster(&[(b, host_b.clone())], 1024),
        Some(&p.fib),
        None,
    );
    p.plane.publish(two.clone()).unwrap();
    let s = stats(&p);
    wait_for("the session on the removed endpoint to close", || {
        s.gauge(UdpStat::DownstreamSessActive) == 0
    });
    assert_eq!(
        sessions_held(&p),
        0,
        "its circuit-breaker connection is given back"
    );
    // ...and the source's next datagram opens one on b.
    assert_eq!(ask(&c, b"?"), b"b");
    assert_eq!(s.get(UdpStat::DownstreamSessTotal), 2);
    // Both endpoints; b fails an outlier check: the session moves to a.
    let three = fib_with(
        3,
        Some(p.listen),
        cluster(&[(a, host_a.clone()), (b, host_b.clone())], 1024),
        Some(&two),
        None,
    );
    p.plane.publish(three.clone()).unwrap();
    assert_eq!(ask(&c, b"?"), b"b", "a kept endpoint keeps its session");
    host_b
        .health
        .set(switchyard_dataplane::health::FAILED_OUTLIER_CHECK);
    three.clusters[0].health_state.bump_epoch();
    assert_eq!(ask(&c, b"?"), b"a", "moved off the unhealthy endpoint");
    assert_eq!(s.get(UdpStat::DownstreamSessTotal), 3);
    assert_eq!(s.gauge(UdpStat::DownstreamSessActive), 1);
    assert_eq!(sessions_held(&p), 1);
    // The listener goes: its sessions close and give their connections back.
    let four = fib_with(4, None, cluster(&[(a, host_a)], 1024), Some(&three), None);
    p.plane.publish(four).unwrap();
    wait_for("the removed listener's sessions to close", || {
        s.gauge(UdpStat::DownstreamSessActive) == 0
    });
    assert_eq!(sessions_held(&p), 0);
    p.plane.shutdown(Duration::from_millis(10));
}

#[test]
fn two_buffers_carry_a_burst_and_the_circuit_breaker_limits_sessions() {
    // Two datagram buffers: the listener's receive runs dry at every burst and is re-armed
    // as sends complete; nothing is lost (it waits in the socket). 60 datagrams of 1,000 B
    // in flight at most: they fit every socket's buffer even at the kernel's default
    // 212,992 B (when rmem_max keeps room_for_bursts from raising it), so a thread kept
    // off its CPU cannot make the test lose one.
    let limits = Limits {
        datagram_buffers_per_worker: 2,
        ..Limits::default()
    };
    let host = Arc::new(HostState::new());
    let p = start_with(limits, cluster(&[(udp_echo(), host)], 3), None);
    let clients: Vec<UdpSocket> = (0..5).map(|_| client(p.listen)).collect();
    for round in 0..20u8 {
        for c in &clients[..3] {
            c.send(&[round; 1000]).unwrap();
        }
    }
    let mut buf = vec![0u8; 2048];
    for (i, c) in clients[..3].iter().enumerate() {
        for round in 0..20u8 {
            let n = recv(c, &mut buf).unwrap_or_else(|e| panic!("client {i} round {round}: {e}"));
            assert_eq!(&buf[..n], &[round; 1000][..], "client {i} round {round}");
        }
    }
    // max_connections 3: the fourth and fifth sources get no session.
    for c in &clients[3..] {
        c.send(b"over").unwrap();
    }
    let cs = &p.fib.clusters[0].stats;
    wait_for("two overflows", || {
        cs.get(ClusterStat::UpstreamCxOverflow) == 2
    });
    clients[3]
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(
        recv(&clients[3], &mut buf).is_err(),
        "no session, no answer"
    );
    assert_eq!(stats(&p).get(UdpStat::DownstreamSessTotal), 3);
    assert_eq!(sessions_held(&p), 3);
    p.plane.shutdown(Duration::from_millis(10));
}
