//! The UDP proxy (`envoy.filters.udp_listener.udp_proxy`) through real sockets, two workers,
//! against UDP echo backends in this process:
//!
//! * datagrams of 1 B to 65,507 B (the largest UDP payload over IPv4) come back byte-exact,
//!   one for one: never merged, never split;
//! * a session per source: an idle one expires (`idle_timeout`), one kept busy does not, and
//!   the next datagram of an expired source opens a new one;
//! * 10,000 sources at once are 10,000 sessions, every one answered;
//! * MAGLEV on the source IP keeps every session of a client IP on one endpoint;
//! * weighted clusters split sessions 90/10 (a Switchyard extension: Envoy 1.40's udp_proxy
//!   has no weighted clusters), and sessions keep their endpoint across a config reload;
//! * `max_rx_datagram_size` as Envoy applies it: a client's datagram over the listener's
//!   (1,500 B by default) is dropped and counted, an endpoint's over the upstream one only
//!   with `prefer_gro: false` (Envoy's upstream sockets prefer GRO and take any size).
//!
//! The same tests run against Envoy (`SWITCHYARD_TEST_PROXY=envoy`), except the Switchyard
//! extensions.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

/// One UDP proxy listener item on 127.0.0.1:`port` (indented for
/// `static_resources.listeners`), routing to `route` (an `on_no_match` action's
/// `typed_config` body, indented 16), with extra `UdpProxyConfig` fields (indented 8).
fn udp_listener_with(name: &str, port: u16, stat_prefix: &str, route: &str, extra: &str) -> String {
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{ protocol: UDP, address: 127.0.0.1, port_value: {port} }}
    udp_listener_config:
      downstream_socket_config: {{ max_rx_datagram_size: 65535 }}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: {stat_prefix}
        upstream_socket_config: {{ max_rx_datagram_size: 65535 }}
{extra}        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
{route}"#
    )
}

/// The Envoy route action to one cluster.
fn to_cluster(cluster: &str) -> String {
    format!(
        "                \"@type\": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route\n                cluster: {cluster}\n"
    )
}

fn udp_listener(port: u16, stat_prefix: &str, cluster: &str, extra: &str) -> String {
    udp_listener_with("udp", port, stat_prefix, &to_cluster(cluster), extra)
}

/// A STATIC cluster that admits `max` sessions (Envoy counts UDP sessions against the
/// circuit breaker's `max_connections`, 1024 by default).
fn udp_cluster(name: &str, lb: &str, endpoints: &[SocketAddr], max: u32) -> String {
    let eps: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
    static_cluster_lb(name, lb, &eps)
        + &format!("    circuit_breakers:\n      thresholds:\n      - max_connections: {max}\n")
}

fn start(yaml: &str) -> Option<Proxy> {
    start_selected_with(yaml, 2)
}

/// A client socket connected to the proxy's UDP port, from `ip`.
fn client_from(ip: Ipv4Addr, port: u16) -> UdpSocket {
    let c = UdpSocket::bind(SocketAddr::from((ip, 0))).expect("bind client");
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.connect(local(port)).expect("connect client");
    c
}

fn client(port: u16) -> UdpSocket {
    client_from(Ipv4Addr::LOCALHOST, port)
}

/// Sends `msg` and waits for one answer, resending (same source, same session) if none comes
/// within a second; panics after `tries`.
fn ask(c: &UdpSocket, msg: &[u8], tries: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    for _ in 0..tries {
        c.send(msg).expect("send");
        match udp_recv(c, &mut buf) {
            Ok(n) => return buf[..n].to_vec(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!(
        "no answer to a {} B datagram after {tries} tries",
        msg.len()
    );
}

#[test]
fn datagrams_of_1_to_65507_bytes_come_back_byte_exact() {
    let echo = UdpBackend::echo();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &udp_listener(port, "up", "echo", ""),
        &udp_cluster("echo", "ROUND_ROBIN", &[echo.addr], 1024),
    );
    let Some(p) = start(&yaml) else { return };
    let c = client(port);
    let sizes = [
        1usize, 2, 3, 63, 64, 512, 1399, 1400, 1472, 1473, 1500, 4096, 9000, 16384, 32768, 65000,
        65506, 65507,
    ];
    let mut total = 0u64;
    for round in 0..3u64 {
        for (i, &len) in sizes.iter().enumerate() {
            let sent = Prng::bytes(round * 100 + i as u64, len);
            let got = ask(&c, &sent, 3);
            assert_eq!(
                got.len(),
                len,
                "a {len} B datagram came back as {} B",
                got.len()
            );
            assert!(got == sent, "a {len} B datagram came back changed");
            total += len as u64;
        }
    }
    let n = 3 * sizes.len() as u64;
    assert_eq!(
        p.wait_stat(
            "udp.up.downstream_sess_tx_datagrams",
            n,
            Duration::from_secs(5)
        ),
        n
    );
    let stats = p.stats();
    let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(
        stat("udp.up.downstream_sess_total"),
        1,
        "one source, one session"
    );
    assert_eq!(stat("udp.up.downstream_sess_active"), 1);
    assert_eq!(stat("udp.up.downstream_sess_rx_datagrams"), n);
    assert_eq!(stat("udp.up.downstream_sess_rx_bytes"), total);
    assert_eq!(stat("udp.up.downstream_sess_tx_bytes"), total);
    assert_eq!(stat("cluster.echo.udp.sess_tx_datagrams"), n);
    assert_eq!(stat("cluster.echo.udp.sess_rx_datagrams"), n);
    assert_eq!(echo.received(), n, "the backend got each datagram once");
    let dump = p.get("/config_dump").body;
    assert!(
        dump.contains(
            "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
        ) && dump.contains("\"stat_prefix\": \"up\""),
        "the UDP listener is in /config_dump"
    );
}

#[test]
fn an_idle_session_expires_and_the_next_datagram_opens_a_new_one() {
    let echo = UdpBackend::echo();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &udp_listener(port, "idle", "echo", "        idle_timeout: 1s\n"),
        &udp_cluster("echo", "ROUND_ROBIN", &[echo.addr], 1024),
    );
    let Some(p) = start(&yaml) else { return };
    let clients: Vec<UdpSocket> = (0..5).map(|_| client(port)).collect();
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(ask(c, &[i as u8; 8], 3), vec![i as u8; 8]);
    }
    assert_eq!(p.stat("udp.idle.downstream_sess_active"), 5);
    // Client 0 keeps talking for 2.5 s, past the timeout; the other four stay quiet.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(ask(&clients[0], b"busy", 3), b"busy");
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        p.wait_stat("udp.idle.idle_timeout", 4, Duration::from_secs(3)),
        4,
        "the four quiet sessions expired"
    );
    assert_eq!(
        p.stat("udp.idle.downstream_sess_active"),
        1,
        "the busy one stays"
    );
    assert_eq!(p.stat("udp.idle.downstream_sess_total"), 5);
    // A quiet source comes back: a new session.
    assert_eq!(ask(&clients[1], b"back", 3), b"back");
    assert_eq!(p.stat("udp.idle.downstream_sess_total"), 6);
    assert_eq!(
        p.wait_stat("udp.idle.idle_timeout", 6, Duration::from_secs(4)),
        6,
        "all expire once quiet"
    );
    assert_eq!(p.stat("udp.idle.downstream_sess_active"), 0);
}

#[test]
fn ten_thousand_sources_are_ten_thousand_sessions() {
    const N: usize = 10_000;
    let echo = UdpBackend::echo();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &udp_listener(port, "many", "echo", ""),
        &udp_cluster("echo", "ROUND_ROBIN", &[echo.addr], 20_000),
    );
    let Some(p) = start(&yaml) else { return };
    let clients: Vec<UdpSocket> = (0..N)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").expect("bind client");
            c.connect(local(port)).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    // Send in waves of 500, collect answers, resend to the sources still waiting.
    let mut waiting: BTreeSet<usize> = (0..N).collect();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !waiting.is_empty() && Instant::now() < deadline {
        let wave: Vec<usize> = waiting.iter().copied().take(500).collect();
        for &i in &wave {
            let _ = clients[i].send(format!("session {i}").as_bytes());
        }
        let until = Instant::now() + Duration::from_millis(500);
        let mut left: BTreeSet<usize> = wave.iter().copied().collect();
        while !left.is_empty() && Instant::now() < until {
            left.retain(|&i| match clients[i].recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], format!("session {i}").as_bytes(), "source {i}");
                    waiting.remove(&i);
                    false
                }
                Err(_) => true,
            });
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(
        waiting.is_empty(),
        "{} sources never answered",
        waiting.len()
    );
    let stats = p.stats();
    let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(stat("udp.many.downstream_sess_total"), N as u64);
    assert_eq!(stat("udp.many.downstream_sess_active"), N as u64);
    // The last datagram of each source has been answered, so every session is still open.
    for (i, c) in clients.iter().enumerate().step_by(997) {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(ask(c, b"again", 3), b"again", "source {i}");
    }
    assert_eq!(p.stat("udp.many.downstream_sess_total"), N as u64);
}

#[test]
fn maglev_keeps_every_session_of_a_client_ip_on_one_endpoint() {
    let backends: Vec<UdpBackend> = (0..4)
        .map(|i| UdpBackend::tagged(&format!("b{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &udp_listener(
            port,
            "hash",
            "hashed",
            "        hash_policies:\n        - source_ip: true\n",
        ),
        &udp_cluster("hashed", "MAGLEV", &addrs, 1024),
    );
    let Some(p) = start(&yaml) else { return };
    let mut by_ip: BTreeMap<Ipv4Addr, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for host in 1..=32u8 {
        let ip = Ipv4Addr::new(127, 0, 0, host);
        for _ in 0..4 {
            let c = client_from(ip, port);
            let tag = ask(&c, b"which", 3);
            by_ip.entry(ip).or_default().insert(tag);
        }
    }
    for (ip, tags) in &by_ip {
        assert_eq!(tags.len(), 1, "sessions from {ip} reached {tags:?}");
    }
    let used: BTreeSet<&Vec<u8>> = by_ip.values().flatten().collect();
    assert!(
        used.len() >= 3,
        "32 client IPs used only {} of 4 endpoints",
        used.len()
    );
    assert_eq!(p.stat("udp.hash.downstream_sess_total"), 32 * 4);
}

/// Weighted clusters for UDP: our route action (Envoy 1.40 has none).
fn weighted_route(heavy: u32, light: u32) -> String {
    format!(
        "                \"@type\": type.googleapis.com/switchyard.filters.udp.udp_proxy.v1.WeightedRoute\n                clusters:\n                - {{ name: heavy, weight: {heavy} }}\n                - {{ name: light, weight: {light} }}\n"
    )
}

fn weighted_config(
    admin: u16,
    port: u16,
    heavy: &UdpBackend,
    light: &UdpBackend,
    other: &str,
) -> String {
    bootstrap(
        admin,
        &udp_listener_with("udp", port, "split", &weighted_route(90, 10), ""),
        &(udp_cluster("heavy", "ROUND_ROBIN", &[heavy.addr], 4096)
            + &udp_cluster("light", "ROUND_ROBIN", &[light.addr], 4096)
            + other),
    )
}

#[test]
fn weighted_clusters_split_sessions_and_sessions_survive_a_reload() {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "weighted clusters for UDP (a Switchyard extension)");
        return;
    }
    let heavy = UdpBackend::tagged("heavy");
    let light = UdpBackend::tagged("light");
    let spare = UdpBackend::echo();
    let (admin, port) = (free_port(), free_port());
    let Some(p) = start(&weighted_config(admin, port, &heavy, &light, "")) else {
        return;
    };
    let n = 2000;
    let clients: Vec<UdpSocket> = (0..n).map(|_| client(port)).collect();
    let mut first = Vec::with_capacity(n);
    for c in &clients {
        first.push(ask(c, b"which", 3));
    }
    let light_share = first.iter().filter(|t| t.as_slice() == b"light").count();
    let pct = light_share as f64 * 100.0 / n as f64;
    assert!(
        (7.0..=13.0).contains(&pct),
        "light got {pct:.2}% of {n} sessions, configured 10%"
    );
    // A reload that changes the clusters (a new one) keeps every open session where it was.
    let extra = udp_cluster("spare", "ROUND_ROBIN", &[spare.addr], 16);
    p.rewrite_config(&weighted_config(admin, port, &heavy, &light, &extra));
    p.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || p
            .get("/clusters")
            .body
            .contains("spare::")),
        "the reload did not apply\n{}",
        p.logs()
    );
    for (i, c) in clients.iter().enumerate().step_by(7) {
        assert_eq!(
            ask(c, b"which", 3),
            first[i],
            "session {i} moved after the reload"
        );
    }
    assert_eq!(p.stat("udp.split.downstream_sess_total"), n as u64);
}

#[test]
fn a_route_to_a_missing_cluster_drops_datagrams_and_counts_them() {
    let kind = selected_proxy();
    let (admin, port) = (free_port(), free_port());
    let echo = UdpBackend::echo();
    let yaml = bootstrap(
        admin,
        &udp_listener(port, "nowhere", "absent", ""),
        &udp_cluster("echo", "ROUND_ROBIN", &[echo.addr], 1024),
    );
    let Some(p) = start(&yaml) else { return };
    let c = client(port);
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for _ in 0..3 {
        c.send(b"lost").unwrap();
    }
    let mut buf = [0u8; 16];
    assert!(
        udp_recv(&c, &mut buf).is_err(),
        "{}: an answer with no route",
        kind.name()
    );
    assert_eq!(
        p.wait_stat(
            "udp.nowhere.downstream_sess_no_route",
            3,
            Duration::from_secs(3)
        ),
        3
    );
    assert_eq!(p.stat("udp.nowhere.downstream_sess_active"), 0);
    assert_eq!(echo.received(), 0);
}

/// Sends `msg` once and expects no answer within 700 ms.
fn unanswered(c: &UdpSocket, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; 65536];
    c.send(msg).expect("send");
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let r = udp_recv(c, &mut buf);
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    matches!(r, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// `max_rx_datagram_size`, as Envoy 1.40 drops datagrams (the same traffic gives the same
/// forwarding and counters through both): with the defaults a client's datagram of 1,501 B
/// is dropped at the listener (`listener.<address>.udp.downstream_rx_datagram_dropped`) while
/// an endpoint's reply of 4,000 B is forwarded (upstream sockets prefer GRO, which takes any
/// size); with sizes set, the listener takes up to its size, and an upstream size with
/// `prefer_gro: false` drops longer replies (`cluster.<name>.udp.sess_rx_datagrams_dropped`).
/// Switchyard used to forward every size.
#[test]
fn datagrams_over_max_rx_datagram_size_are_dropped_as_envoy_drops_them() {
    let big = UdpBackend::tagged(&"r".repeat(4000));
    let echo = UdpBackend::echo();
    let (admin, plain, sized) = (free_port(), free_port(), free_port());
    let defaults = udp_listener_with("plain", plain, "plain", &to_cluster("big"), "")
        .replace(
            "    udp_listener_config:\n      downstream_socket_config: { max_rx_datagram_size: 65535 }\n",
            "",
        )
        .replace("        upstream_socket_config: { max_rx_datagram_size: 65535 }\n", "");
    let set = udp_listener_with("sized", sized, "sized", &to_cluster("echo"), "")
        .replace(
            "downstream_socket_config: { max_rx_datagram_size: 65535 }",
            "downstream_socket_config: { max_rx_datagram_size: 9000 }",
        )
        .replace(
            "upstream_socket_config: { max_rx_datagram_size: 65535 }",
            "upstream_socket_config: { max_rx_datagram_size: 3999, prefer_gro: false }",
        );
    assert!(!defaults.contains("socket_config") && set.contains("prefer_gro: false"));
    let yaml = bootstrap(
        admin,
        &(defaults + &set),
        &(udp_cluster("big", "ROUND_ROBIN", &[big.addr], 1024)
            + &udp_cluster("echo", "ROUND_ROBIN", &[echo.addr], 1024)),
    );
    let Some(p) = start(&yaml) else { return };
    let counted_once = |stat: &str| {
        let got = p.wait_stat(stat, 1, Duration::from_secs(3));
        assert_eq!(got, 1, "{stat}\n{}", p.logs());
    };
    let dropped_at =
        |port: u16| format!("listener.127.0.0.1_{port}.udp.downstream_rx_datagram_dropped");

    // Defaults: 1,500 B in, a 4,000 B reply out; 1,501 B in is dropped at the listener.
    let c = client(plain);
    assert_eq!(ask(&c, &[1u8; 1500], 5).len(), 4000);
    let reached = big.received();
    assert!(unanswered(&c, &[2u8; 1501]), "1,501 B went through");
    assert_eq!(big.received(), reached, "the endpoint got 1,501 B");
    counted_once(&dropped_at(plain));

    // Sizes set: up to 9,000 B in; replies up to 3,999 B out.
    let c = client(sized);
    assert_eq!(ask(&c, &[3u8; 3999], 5), [3u8; 3999]);
    let reached = echo.received();
    assert!(unanswered(&c, &[4u8; 4000]), "a 4,000 B reply went through");
    assert_eq!(
        echo.received(),
        reached + 1,
        "4,000 B never reached the echo"
    );
    counted_once("cluster.echo.udp.sess_rx_datagrams_dropped");
    assert!(unanswered(&c, &[5u8; 9001]), "9,001 B went through");
    assert_eq!(echo.received(), reached + 1, "the echo got 9,001 B");
    counted_once(&dropped_at(sized));
    assert_eq!(p.stat("cluster.big.udp.sess_rx_datagrams_dropped"), 0);
}
