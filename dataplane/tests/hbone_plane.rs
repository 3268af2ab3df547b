//! HBONE through the data plane alone, with real sockets: one listener tunnels each
//! connection as an HTTP/2 CONNECT stream over pooled connections to a second listener,
//! which terminates HBONE and delivers each stream to the address its `:authority` names;
//! loaded, with TLS and without.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::accesslog::AccessLogQueues;
use switchyard_dataplane::fib::hbone::*;
use switchyard_dataplane::fib::*;
use switchyard_dataplane::plane::{DataPlane, PlaneConfig, PlaneError};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::tls::settings::*;
use switchyard_dataplane::tls::{ClientContext, ServerContext};
use switchyard_dataplane::worker::{Limits, RelayMode};

mod support;
use support::fib::echo_backend;
use support::pki::{client_settings, server_settings, Pki};

/// Streams of one pooled connection in these tests.
const MAX_STREAMS: u32 = 100;

fn settings() -> Http2Settings {
    Http2Settings {
        max_concurrent_streams: MAX_STREAMS,
        initial_stream_window_bytes: 256 * 1024,
        initial_connection_window_bytes: 16 * 1024 * 1024,
    }
}

/// TLS on both ends of the tunnel: the terminating chain's and the tunnel cluster's.
struct Mtls {
    chain: ChainTls,
    cluster: Arc<ClientContext>,
}

/// The SPIFFE ID the terminating chain accepts.
const CALLER: &str = "spiffe://cluster.local/ns/default/sa/web";

/// mTLS as HBONE has it: the terminating chain asks for a client certificate with
/// [`CALLER`]'s SPIFFE ID; the tunnel cluster presents one with `client_spiffe_id`.
fn mtls(pki: &Pki, client_spiffe_id: &str) -> Mtls {
    let mut settings = server_settings(pki.leaf(&["hbone.example.com"], &[]));
    settings.validation = Some(Validation {
        trusted_ca: vec![pki.ca.clone()],
        crls: Vec::new(),
        san_matchers: vec![SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatch {
                pattern: StringPattern::Exact(CALLER.into()),
                ignore_case: false,
            },
        }],
        trusted_ca_source: None,
    });
    settings.require_client_certificate = true;
    settings.alpn = vec![b"h2".to_vec()];
    let mut client = client_settings(pki);
    client.certificate = Some(pki.leaf(&[], &[client_spiffe_id]));
    client.sni = Some("hbone.example.com".into());
    client.alpn = vec![b"h2".to_vec()];
    Mtls {
        chain: ChainTls {
            context: Some(Arc::new(ServerContext::new(&settings).unwrap())),
            handshake_timeout_ms: None,
        },
        cluster: Arc::new(ClientContext::new(&client).unwrap()),
    }
}

/// Listeners on `outers` (each with its own `:authority`) tunnel to cluster 0 (`tunnel`:
/// HTTP/2 to `inner`, with `tls` when given); the last listener, on `inner`, terminates
/// HBONE and routes to cluster 1 (`dst`: ORIGINAL_DST by `:authority`).
fn fib(outers: &[(SocketAddr, String)], inner: SocketAddr, tls: Option<Mtls>) -> Fib {
    let mut f = support::fib::fib(outers[0].0, &[inner], 1);
    let template = f.listeners.remove(0);
    for (i, (outer, authority)) in outers.iter().enumerate() {
        let mut chain = support::fib::plain_chain("", &format!("out{i}"), 1, 1);
        chain.tcp_proxy.tunneling = Some(Arc::new(Tunneling {
            hostname: Template::literal(authority),
            headers: vec![TunnelHeader {
                name: "x-test".into(),
                value: Template {
                    parts: vec![TemplatePart::DownstreamRemoteAddressWithoutPort],
                },
                append: true,
            }],
        }));
        f.listeners
            .push(listener(&template, &format!("out{i}"), *outer, chain));
    }
    let tunnel = Arc::get_mut(&mut f.clusters[0]).expect("fresh");
    tunnel.http2 = Some(Http2Upstream {
        http2: settings(),
        idle_timeout_ms: Some(60_000),
    });
    let mut terminate = support::fib::plain_chain("hbone", "hbone", 1, 1);
    terminate.hbone = Some(HboneTerminate {
        http2: settings(),
        idle_timeout_ms: Some(60_000),
    });
    terminate.tcp_proxy.route = Route::Cluster(ClusterId(1));
    if let Some(t) = tls {
        tunnel.ssl_stats = Some(Arc::new(SslStats::new("tunnel", 1)));
        tunnel.tls = Some(t.cluster);
        terminate.tls = Some(t.chain);
    }
    let mut inner_listener = listener(&template, "hbone", inner, terminate);
    inner_listener.ssl_stats = Some(Arc::new(SslStats::new("hbone", 1)));
    f.listeners.push(inner_listener);
    let mut dst = support::fib::fib(inner, &[], 1).clusters.remove(0);
    let d = Arc::get_mut(&mut dst).expect("fresh");
    d.name = "dst".into();
    d.lb_policy = LbPolicy::ClusterProvided;
    d.original_dst_authority = true;
    d.stats = Arc::new(ClusterStats::new("dst", 1));
    f.clusters.push(dst);
    f.own_addresses = outers.iter().map(|o| o.0).chain([inner]).collect();
    f
}

/// `template` renamed, on `address`, with the one chain `chain`.
fn listener(template: &Listener, name: &str, address: SocketAddr, chain: FilterChain) -> Listener {
    Listener {
        name: name.into(),
        address,
        stats: Arc::new(ListenerStats::new(listener_stat_name(&address), 1)),
        chain_index: ChainIndex::build([&chain.matcher]),
        filter_chains: vec![chain],
        default_chain: None,
        chain_matcher: None,
        backlog: template.backlog,
        use_original_dst: false,
        transparent: false,
        reuse_port: true,
        original_src: None,
        buffer_limit_bytes: template.buffer_limit_bytes,
        max_accepts_per_event: None,
        access_logs: Vec::new(),
        ignore_global_conn_limit: false,
        ssl_stats: None,
        proxy_protocol: None,
        tls_inspector: None,
        filter_deadline: FilterDeadline::default(),
    }
}

/// The terminating listener of [`fib`].
fn inner(f: &Fib) -> &Listener {
    f.listeners.last().expect("the terminating listener")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(f: Fib) -> (DataPlane, Arc<Fib>, Arc<ServerStats>) {
    start_draining_in(f, Duration::from_secs(1))
}

/// [`start`] with the plane's `drain_time`.
fn start_draining_in(f: Fib, drain_time: Duration) -> (DataPlane, Arc<Fib>, Arc<ServerStats>) {
    let server = Arc::new(ServerStats::new("server", 1));
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits::default(),
            drain_time,
        },
        server.clone(),
        Arc::new(AccessLogQueues::new(1, 64)),
    )
    .expect("start");
    let fib = Arc::new(f);
    plane.publish(fib.clone()).expect("publish");
    (plane, fib, server)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(13) + seed) as u8)
        .collect()
}

/// Sends `msg` in 64 KiB pieces, reading the echo of each back; then ends the stream and
/// expects the echo's end.
fn exchange(mut stream: TcpStream, msg: &[u8]) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::with_capacity(msg.len());
    let mut buf = vec![0u8; 65536];
    let mut sent = 0;
    for chunk in msg.chunks(64 * 1024) {
        stream.write_all(chunk).unwrap();
        sent += chunk.len();
        while got.len() < sent {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the echo ended early at {}", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        stream.read(&mut buf).unwrap(),
        0,
        "the echo's end follows ours"
    );
    got
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < until, "not within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Eight clients at once each move 1 MiB both ways through a tunnel (with `tls` or in
/// plaintext): byte-exact, half-closed both ways, over one pooled HTTP/2 connection.
fn eight_loaded(tls: impl FnOnce(&Pki) -> Option<Mtls>) -> (Arc<Fib>, Arc<ServerStats>) {
    eight_loaded_through(tls, |_, _, _| {})
}

/// [`eight_loaded`] with `reshape(fib, echo, inner)` applied to the FIB first.
fn eight_loaded_through(
    tls: impl FnOnce(&Pki) -> Option<Mtls>,
    reshape: impl FnOnce(&mut Fib, SocketAddr, SocketAddr),
) -> (Arc<Fib>, Arc<ServerStats>) {
    let pki = Pki::new();
    let echo = echo_backend();
    let (outer, inner_addr) = (free_port(), free_port());
    let mut f = fib(&[(outer, echo.to_string())], inner_addr, tls(&pki));
    reshape(&mut f, echo, inner_addr);
    let (plane, fib, server) = start(f);
    let threads: Vec<_> = (0..8u32)
        .map(|id| {
            std::thread::spawn(move || {
                let msg = pattern(1024 * 1024, id);
                let got = exchange(TcpStream::connect(outer).unwrap(), &msg);
                assert!(got == msg, "client {id}: the echo differs");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    assert_eq!(
        server.get(ServerStat::HbonePooledConnections),
        1,
        "eight streams share one HTTP/2 connection"
    );
    let terminating = inner(&fib);
    assert_eq!(terminating.stats.get(ListenerStat::DownstreamCxTotal), 1);
    let streams = &terminating.filter_chains[0].tcp_proxy.stats;
    eventually("the streams closed", || {
        streams.gauge(TcpStat::DownstreamCxActive) == 0
    });
    assert_eq!(streams.get(TcpStat::DownstreamCxTotal), 8);
    assert_eq!(server.get(ServerStat::WorkerInvariantViolations), 0);
    plane.shutdown(Duration::from_millis(100));
    (fib, server)
}

#[test]
fn eight_loaded_connections_cross_one_pooled_plaintext_tunnel() {
    eight_loaded(|_| None);
}

/// The node-to-node shape: the tunnel cluster's endpoint is the pod (the echo backend) and
/// its HBONE tunnel names the node proxy (the terminating listener); `:authority` is
/// `%UPSTREAM_HOST%`. Eight loaded clients share one pooled connection to the node proxy,
/// which delivers each stream to the pod.
#[test]
fn eight_loaded_connections_reach_a_pod_through_its_node_proxy() {
    let (fib, _) = eight_loaded_through(
        |pki| Some(mtls(pki, CALLER)),
        |f, pod, node| {
            let c = Arc::get_mut(&mut f.clusters[0]).expect("fresh");
            c.endpoints[0].address = pod;
            c.endpoints[0].tunnel = Some(node);
            f.listeners[0].filter_chains[0].tcp_proxy.tunneling = Some(Arc::new(Tunneling {
                hostname: Template {
                    parts: vec![TemplatePart::UpstreamHost],
                },
                headers: Vec::new(),
            }));
        },
    );
    let pod = &fib.clusters[0].endpoints[0];
    assert_eq!(pod.tunnel, Some(inner(&fib).address));
    let delivered = &fib.clusters[1].stats;
    assert_eq!(
        delivered.get(ClusterStat::UpstreamCxTotal),
        8,
        "the node proxy connected each stream to the pod its :authority named"
    );
}

#[test]
fn eight_loaded_connections_cross_one_pooled_mtls_tunnel() {
    let (fib, _) = eight_loaded(|pki| Some(mtls(pki, CALLER)));
    let ssl = inner(&fib).ssl_stats.as_deref().expect("TLS");
    assert_eq!(
        ssl.get(SslStat::Handshake),
        1,
        "one handshake for eight streams"
    );
}

/// A tunnel whose client certificate names another workload is refused at its
/// handshake: the tunnelled connection is closed without a byte.
#[test]
fn a_peer_with_the_wrong_spiffe_id_is_refused() {
    let pki = Pki::new();
    let echo = echo_backend();
    let (outer, inner_addr) = (free_port(), free_port());
    let tls = mtls(&pki, "spiffe://cluster.local/ns/other/sa/intruder");
    let (plane, fib, _) = start(fib(&[(outer, echo.to_string())], inner_addr, Some(tls)));
    let mut s = TcpStream::connect(outer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "refused, it reads nothing: {r:?}"
    );
    let ssl = inner(&fib).ssl_stats.as_deref().expect("TLS");
    eventually("the refusal counted", || {
        ssl.get(SslStat::FailVerifySan) == 1
    });
    assert_eq!(ssl.get(SslStat::Handshake), 0);
    plane.shutdown(Duration::from_millis(100));
}

/// A pooled connection carries at most its stream limit: 150 connections open at once
/// take two HTTP/2 connections.
#[test]
fn streams_beyond_the_limit_open_a_second_pooled_connection() {
    let echo = echo_backend_many();
    let (outer, inner_addr) = (free_port(), free_port());
    let (plane, fib, server) = start(fib(&[(outer, echo.to_string())], inner_addr, None));
    let mut open = Vec::new();
    for i in 0..150u32 {
        let mut s = TcpStream::connect(outer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = i.to_be_bytes();
        s.write_all(&msg).unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
        open.push(s);
    }
    assert_eq!(server.get(ServerStat::HbonePooledConnections), 2);
    assert_eq!(inner(&fib).stats.get(ListenerStat::DownstreamCxTotal), 2);
    drop(open);
    plane.shutdown(Duration::from_millis(100));
}

/// An echo server for many connections at once (one thread each).
fn echo_backend_many() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                support::fib::echo(&s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// A CONNECT the far side cannot serve (its destination refuses) fails that connection
/// alone: closed without a byte and counted, while another stream of the same pooled
/// connection goes on.
#[test]
fn a_refused_connect_fails_only_its_connection() {
    let echo = echo_backend();
    let closed = free_port();
    let (good, bad, inner_addr) = (free_port(), free_port(), free_port());
    let outers = [(good, echo.to_string()), (bad, closed.to_string())];
    let (plane, _fib, server) = start(fib(&outers, inner_addr, None));
    let mut first = TcpStream::connect(good).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    first.write_all(b"one").unwrap();
    let mut got = [0u8; 3];
    first.read_exact(&mut got).unwrap();
    let mut refused = TcpStream::connect(bad).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = refused.write_all(b"lost");
    let mut buf = [0u8; 8];
    let r = refused.read(&mut buf);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "refused, it reads nothing: {r:?}"
    );
    eventually("the refusal counted", || {
        server.get(ServerStat::HboneConnectRefused) == 1
    });
    first.write_all(b"two").unwrap();
    first.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"two");
    assert_eq!(server.get(ServerStat::HbonePooledConnections), 1);
    plane.shutdown(Duration::from_millis(100));
}

/// One tunnelled connection whose client stops reading fills only its own stream's
/// window: four others move 1 MiB each meanwhile, and the slow one gets every byte once
/// it reads.
#[test]
fn a_slow_stream_does_not_stall_the_others() {
    let echo = echo_backend_many();
    let (outer, inner_addr) = (free_port(), free_port());
    let (plane, _fib, server) = start(fib(&[(outer, echo.to_string())], inner_addr, None));
    let mut slow = TcpStream::connect(outer).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // More than every socket buffer and window on the way can hold: its echo backs up.
    let slow_msg = pattern(48 * 1024 * 1024, 99);
    let writer = {
        let mut w = slow.try_clone().unwrap();
        let msg = slow_msg.clone();
        std::thread::spawn(move || w.write_all(&msg).unwrap())
    };
    std::thread::sleep(Duration::from_millis(200));
    let fast: Vec<_> = (0..4u32)
        .map(|id| {
            std::thread::spawn(move || {
                let msg = pattern(1024 * 1024, id);
                let got = exchange(TcpStream::connect(outer).unwrap(), &msg);
                assert!(got == msg, "client {id}: the echo differs");
            })
        })
        .collect();
    for t in fast {
        t.join()
            .expect("a fast client finished while the slow one did not read");
    }
    assert!(
        !writer.is_finished(),
        "the slow stream was stalled meanwhile"
    );
    let mut got = vec![0u8; slow_msg.len()];
    slow.read_exact(&mut got).unwrap();
    assert!(got == slow_msg, "the slow client's echo differs");
    writer.join().unwrap();
    assert_eq!(server.get(ServerStat::HbonePooledConnections), 1);
    plane.shutdown(Duration::from_millis(100));
}

/// A reset crosses the tunnel both ways: a client's reset reaches the destination as a
/// reset, and a destination's reset reaches the client as one.
#[test]
fn resets_cross_the_tunnel_both_ways() {
    let (resetting, seen) = resetting_backend();
    let (outer, inner_addr) = (free_port(), free_port());
    let (plane, _fib, _) = start(fib(&[(outer, resetting.to_string())], inner_addr, None));
    // The backend resets after "reset".
    let mut s = TcpStream::connect(outer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"reset").unwrap();
    let mut buf = [0u8; 8];
    let r = s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the backend's reset arrives as one: {r:?}"
    );
    // The client resets after "hold": the backend's read fails with a reset.
    let s = TcpStream::connect(outer).unwrap();
    (&s).write_all(b"hold").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
    let outcome = seen
        .recv_timeout(Duration::from_secs(5))
        .expect("the backend's read");
    assert_eq!(outcome, std::io::ErrorKind::ConnectionReset);
    plane.shutdown(Duration::from_millis(100));
}

/// A backend that resets a connection that sends "reset", and reports how a read after
/// "hold" ended.
fn resetting_backend() -> (SocketAddr, std::sync::mpsc::Receiver<std::io::ErrorKind>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 5];
                let n = s.read(&mut buf).unwrap_or(0);
                if &buf[..n] == b"reset" {
                    socket2::SockRef::from(&s)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    return;
                }
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let kind = match s.read(&mut buf) {
                    Ok(0) => std::io::ErrorKind::UnexpectedEof,
                    Ok(_) => std::io::ErrorKind::InvalidData,
                    Err(e) => e.kind(),
                };
                let _ = tx.send(kind);
            });
        }
    });
    (addr, rx)
}

/// A drain lets streams in flight finish: the terminating side sends GOAWAY, the stream
/// open at that moment goes on moving bytes both ways, and once it ends both HTTP/2
/// connections close (before the drain time runs out).
#[test]
fn a_drain_lets_streams_in_flight_finish() {
    let echo = echo_backend();
    let (outer, inner_addr) = (free_port(), free_port());
    let f = fib(&[(outer, echo.to_string())], inner_addr, None);
    let (plane, fib, server) = start_draining_in(f, Duration::from_secs(30));
    let mut s = TcpStream::connect(outer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = [0u8; 6];
    s.write_all(b"before").unwrap();
    s.read_exact(&mut got).unwrap();
    plane.drain_listeners();
    std::thread::sleep(Duration::from_millis(300));
    let msg = pattern(1024 * 1024, 7);
    let echoed = exchange(s, &msg);
    assert!(
        echoed == msg,
        "the stream in flight went on after the drain began"
    );
    let carriers = &inner(&fib).stats;
    eventually("the terminating HTTP/2 connection closed", || {
        carriers.gauge(ListenerStat::DownstreamCxActive) == 0
    });
    assert_eq!(server.gauge(ServerStat::TotalConnections), 0);
    plane.shutdown(Duration::from_millis(100));
}

/// The far side ends first: the destination's FIN reaches the client as the end of its
/// stream, while the client's direction stays open and keeps delivering.
#[test]
fn the_far_side_half_closes_first() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&pattern(256 * 1024, 3)).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.read_to_end(&mut got);
        tx.send(got).unwrap();
    });
    let (outer, inner_addr) = (free_port(), free_port());
    let (plane, _fib, _) = start(fib(&[(outer, backend.to_string())], inner_addr, None));
    let mut s = TcpStream::connect(outer).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert!(
        got == pattern(256 * 1024, 3),
        "the backend's bytes, then its end"
    );
    let after = pattern(64 * 1024, 4);
    s.write_all(&after).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let received = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        received == after,
        "what the client sent after the far side's end: {} bytes",
        received.len()
    );
    plane.shutdown(Duration::from_millis(100));
}

/// A pooled connection without streams for its cluster's idle timeout closes (GOAWAY, then
/// its socket); the next tunnelled connection opens a new one.
#[test]
fn an_idle_pooled_connection_closes_and_the_next_stream_opens_another() {
    let (outer, mut f) = echo_tunnel();
    let tunnel = Arc::get_mut(&mut f.clusters[0]).expect("fresh");
    tunnel.http2 = Some(Http2Upstream {
        http2: settings(),
        idle_timeout_ms: Some(300),
    });
    idle_closes_and_the_next_stream_opens_another(outer, f);
}

/// A terminating connection without streams for its idle timeout (HCM's
/// `common_http_protocol_options.idle_timeout`) drains (GOAWAY) and closes, as Envoy's does;
/// the source's pooled connection sees it end and the next stream opens another.
#[test]
fn an_idle_terminating_connection_drains_and_closes() {
    let (outer, mut f) = echo_tunnel();
    let terminating = f.listeners.last_mut().expect("the HBONE listener");
    terminating.filter_chains[0]
        .hbone
        .as_mut()
        .expect("terminates")
        .idle_timeout_ms = Some(300);
    idle_closes_and_the_next_stream_opens_another(outer, f);
}

/// A tunnel from a fresh port to an echo backend: the port and the FIB.
fn echo_tunnel() -> (SocketAddr, Fib) {
    let echo = echo_backend();
    let (outer, inner_addr) = (free_port(), free_port());
    (outer, fib(&[(outer, echo.to_string())], inner_addr, None))
}

/// One tunnelled connection through `f` (whose tunnel or termination closes when idle), the
/// HTTP/2 connection closes, and a second connection crosses a new one.
fn idle_closes_and_the_next_stream_opens_another(outer: SocketAddr, f: Fib) {
    let (plane, fib, server) = start(f);
    let one = |id: u32| {
        let msg = pattern(1000, id);
        let got = exchange(TcpStream::connect(outer).unwrap(), &msg);
        assert!(got == msg, "connection {id}: the echo differs");
    };
    one(1);
    let carriers = &inner(&fib).stats;
    assert_eq!(carriers.get(ListenerStat::DownstreamCxTotal), 1);
    eventually("the idle HTTP/2 connection closed", || {
        carriers.gauge(ListenerStat::DownstreamCxActive) == 0
    });
    one(2);
    assert_eq!(server.get(ServerStat::HbonePooledConnections), 2);
    assert_eq!(carriers.get(ListenerStat::DownstreamCxTotal), 2);
    plane.shutdown(Duration::from_millis(100));
}

/// The splice relay never sees the bytes, so it cannot carry HTTP/2: a FIB that terminates
/// HBONE, or only originates it, is refused by name and nothing of it is published.
#[test]
fn splicing_workers_refuse_hbone() {
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits {
                relay_mode: RelayMode::Splice,
                ..Limits::default()
            },
            drain_time: Duration::from_secs(1),
        },
        Arc::new(ServerStats::new("server", 1)),
        Arc::new(AccessLogQueues::new(1, 64)),
    )
    .expect("start");
    let (outer, inner_addr) = (free_port(), free_port());
    let make = || fib(&[(outer, "10.0.0.1:80".into())], inner_addr, None);
    let refused = |f: Fib| match plane.publish(Arc::new(f)) {
        Err(PlaneError::TlsNeedsBufferRing { what }) => what,
        other => panic!("published: {other:?}"),
    };
    assert_eq!(
        refused(make()),
        "listener 'out0'",
        "the tunnelling listener"
    );
    let mut terminating_only = make();
    terminating_only.listeners.remove(0);
    Arc::get_mut(&mut terminating_only.clusters[0])
        .expect("fresh")
        .http2 = None;
    assert_eq!(refused(terminating_only), "listener 'hbone'");
    let mut originating_cluster_only = make();
    originating_cluster_only.listeners.clear();
    assert_eq!(
        refused(originating_cluster_only),
        "cluster 'echo'",
        "the HTTP/2 cluster"
    );
    assert!(
        TcpStream::connect(inner_addr).is_err(),
        "nothing of a refused FIB listens"
    );
    plane.shutdown(Duration::from_millis(100));
}
