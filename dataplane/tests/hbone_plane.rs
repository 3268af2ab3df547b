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
use switchyard_dataplane::plane::{DataPlane, PlaneConfig};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::worker::Limits;

mod support;
use support::fib::echo_backend;

/// Streams of one pooled connection in these tests.
const MAX_STREAMS: u32 = 100;

fn settings() -> Http2Settings {
    Http2Settings {
        max_concurrent_streams: MAX_STREAMS,
        initial_stream_window_bytes: 256 * 1024,
        initial_connection_window_bytes: 16 * 1024 * 1024,
    }
}

/// Listener 0 on `outer` tunnels to cluster 0 (`tunnel`: HTTP/2 to `inner`) with
/// `:authority` `authority`; listener 1 on `inner` terminates HBONE and routes to cluster 1
/// (`dst`: ORIGINAL_DST by `:authority`).
fn fib(outer: SocketAddr, inner: SocketAddr, authority: &str) -> Fib {
    let mut f = support::fib::fib(outer, &[inner], 1);
    let chain = &mut f.listeners[0].filter_chains[0];
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
    let tunnel = Arc::get_mut(&mut f.clusters[0]).expect("fresh");
    tunnel.http2 = Some(Http2Upstream {
        http2: settings(),
        idle_timeout_ms: Some(60_000),
    });
    let mut terminate = support::fib::plain_chain("hbone", "hbone", 1, 1);
    terminate.hbone = Some(HboneTerminate { http2: settings() });
    terminate.tcp_proxy.route = Route::Cluster(ClusterId(1));
    let mut listener = support::fib::fib(inner, &[], 1).listeners.remove(0);
    listener.name = "hbone".into();
    listener.stats = Arc::new(ListenerStats::new(listener_stat_name(&inner), 1));
    listener.chain_index = ChainIndex::build([&terminate.matcher]);
    listener.filter_chains = vec![terminate];
    f.listeners.push(listener);
    let mut dst = support::fib::fib(inner, &[], 1).clusters.remove(0);
    let d = Arc::get_mut(&mut dst).expect("fresh");
    d.name = "dst".into();
    d.lb_policy = LbPolicy::ClusterProvided;
    d.original_dst_authority = true;
    d.stats = Arc::new(ClusterStats::new("dst", 1));
    f.clusters.push(dst);
    f.own_addresses.push(inner);
    f
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start(f: Fib) -> (DataPlane, Arc<Fib>, Arc<ServerStats>) {
    let server = Arc::new(ServerStats::new("server", 1));
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits::default(),
            drain_time: Duration::from_secs(1),
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

/// Eight clients at once move 1 MiB each way through the tunnel: byte-exact, half-closed
/// both ways, over one pooled HTTP/2 connection.
#[test]
fn eight_loaded_connections_cross_one_pooled_tunnel() {
    let echo = echo_backend();
    let (outer, inner) = (free_port(), free_port());
    let (_plane, fib, server) = start(fib(outer, inner, &echo.to_string()));
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
    let inner_listener = &fib.listeners[1].stats;
    assert_eq!(inner_listener.get(ListenerStat::DownstreamCxTotal), 1);
    let streams = &fib.listeners[1].filter_chains[0].tcp_proxy.stats;
    eventually("the streams closed", || {
        streams.get(TcpStat::DownstreamCxActive) == 0
    });
    assert_eq!(streams.get(TcpStat::DownstreamCxTotal), 8);
    assert_eq!(server.get(ServerStat::WorkerInvariantViolations), 0);
}
