//! TLS through the data plane alone, with real sockets: a hand-built FIB whose chain
//! terminates TLS and whose cluster originates it, and a listener whose TLS inspector picks
//! a TLS or a plaintext chain; rustls peers on loopback, loaded.

use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_dataplane::accesslog::AccessLogQueues;
use switchyard_dataplane::fib::*;
use switchyard_dataplane::plane::{DataPlane, PlaneConfig};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::tls::settings::*;
use switchyard_dataplane::tls::{ClientContext, ServerContext};
use switchyard_dataplane::worker::Limits;

mod support;
use support::fib::echo;
use support::pki::{chain_der, client_config, client_settings, key_der, server_settings, Pki};

/// An echo server speaking TLS with `cert`.
fn tls_echo_backend(cert: &Certificate) -> SocketAddr {
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain_der(cert), key_der(cert))
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                echo(&mut tls);
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tls.sock.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// The support FIB with TLS on its chain and cluster as given.
fn fib(
    listen: SocketAddr,
    backend: SocketAddr,
    chain_tls: Option<ChainTls>,
    cluster_tls: Option<Arc<ClientContext>>,
) -> Fib {
    let mut f = support::fib::fib(listen, &[backend], 1);
    f.listeners[0].ssl_stats = chain_tls
        .as_ref()
        .map(|_| Arc::new(SslStats::new("listener", 1)));
    f.listeners[0].filter_chains[0].tls = chain_tls;
    let cluster = Arc::get_mut(&mut f.clusters[0]).expect("fresh");
    cluster.ssl_stats = cluster_tls
        .as_ref()
        .map(|_| Arc::new(SslStats::new("cluster", 1)));
    cluster.tls = cluster_tls;
    f
}

/// The listener's `ssl.*` stats.
fn listener_ssl(f: &Fib) -> &SslStats {
    f.listeners[0].ssl_stats.as_deref().expect("a TLS listener")
}

/// The cluster's `ssl.*` stats.
fn cluster_ssl(f: &Fib) -> &SslStats {
    f.clusters[0].ssl_stats.as_deref().expect("a TLS cluster")
}

fn start(f: impl FnOnce(SocketAddr) -> Fib) -> (DataPlane, Arc<Fib>, SocketAddr) {
    let (plane, fib, listen, _) = start_with(Limits::default(), f);
    (plane, fib, listen)
}

/// [`start`] with `limits`, and the server stats.
fn start_with(
    limits: Limits,
    f: impl FnOnce(SocketAddr) -> Fib,
) -> (DataPlane, Arc<Fib>, SocketAddr, Arc<ServerStats>) {
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = Arc::new(ServerStats::new("server", 1));
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits,
            drain_time: Duration::from_secs(1),
        },
        server.clone(),
        Arc::new(AccessLogQueues::new(1, 64)),
    )
    .expect("start");
    let fib = Arc::new(f(listen));
    plane.publish(fib.clone()).expect("publish");
    (plane, fib, listen, server)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(13) + seed) as u8)
        .collect()
}

/// Sends `msg` through `stream` in 64 KiB pieces, reading the echo of each back.
fn exchange(mut stream: impl Read + Write, msg: &[u8]) -> Vec<u8> {
    let mut got = Vec::with_capacity(msg.len());
    let mut buf = vec![0u8; 65536];
    let mut sent = 0;
    for chunk in msg.chunks(64 * 1024) {
        stream.write_all(chunk).unwrap();
        stream.flush().unwrap();
        sent += chunk.len();
        while got.len() < sent {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the echo ended early at {}", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }
    got
}

fn tls_client(
    listen: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("gateway.example.com").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    rustls::StreamOwned::new(conn, s)
}

/// Waits up to 2 s for `cond` (a count the worker makes just after the peer saw the end).
fn eventually(cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(Instant::now() < until, "not within 2 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `client(id)` for ids `0..n` on threads of their own, all at once; panics if one did.
fn in_parallel(n: u32, client: impl Fn(u32) + Send + Sync + Clone + 'static) {
    let threads: Vec<_> = (0..n)
        .map(|id| {
            let client = client.clone();
            std::thread::spawn(move || client(id))
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
}

/// Eight clients at once each move 1 MiB both ways through a chain that terminates TLS
/// (with the default pools: records split over receives are carried in spare buffers).
#[test]
fn a_terminating_chain_relays_eight_loaded_connections() {
    let server = terminate_eight_loaded(Limits::default());
    assert!(server.get(ServerStat::TlsRecordsCarried) > 0);
    assert_eq!(server.get(ServerStat::TlsRecordsParked), 0);
}

/// The same with a pool so small that no spare buffer is ever free: records split over
/// receives are parked beside their session and still reach the backend whole.
#[test]
fn with_no_spare_buffer_split_records_are_parked_and_still_relayed_whole() {
    let server = terminate_eight_loaded(Limits {
        buffers_per_worker: 64,
        large_buffer_size_bytes: 0,
        ..Limits::default()
    });
    assert!(server.get(ServerStat::TlsRecordsParked) > 0);
}

/// Eight rustls clients each move 1 MiB both ways through a terminating chain to an echo
/// backend; every byte comes back, every handshake is counted. Returns the server stats.
fn terminate_eight_loaded(limits: Limits) -> Arc<ServerStats> {
    let pki = Pki::new();
    let ctx = Arc::new(
        ServerContext::new(&server_settings(pki.leaf(&["gateway.example.com"], &[]))).unwrap(),
    );
    let backend = support::fib::echo_backend();
    let chain = ChainTls {
        context: Some(ctx),
        handshake_timeout_ms: None,
    };
    let (plane, f, listen, server) = start_with(limits, |l| fib(l, backend, Some(chain), None));
    let config = client_config(&pki, None);
    in_parallel(8, move |id| {
        let config = config.clone();
        let msg = pattern(1 << 20, id);
        let mut tls = tls_client(listen, config);
        let got = exchange(&mut tls, &msg);
        assert!(got == msg, "connection {id}: the echo differs");
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        let mut rest = Vec::new();
        // The backend's end comes back as close_notify, then the socket's end.
        let _ = tls.read_to_end(&mut rest);
        assert!(rest.is_empty());
    });
    let ssl = listener_ssl(&f);
    assert_eq!(ssl.get(SslStat::Handshake), 8);
    assert_eq!(ssl.get(SslStat::VersionTls13), 8);
    // The group the client sent a key share for (rustls' own client: P-384).
    let curves = [SslStat::CurveX25519, SslStat::CurveP256, SslStat::CurveP384];
    assert_eq!(curves.iter().map(|&c| ssl.get(c)).sum::<u64>(), 8);
    let tls13 = [
        SslStat::CipherAes128Gcm,
        SslStat::CipherAes256Gcm,
        SslStat::CipherChacha20,
    ];
    assert_eq!(tls13.iter().map(|&c| ssl.get(c)).sum::<u64>(), 8);
    assert_eq!(ssl.get(SslStat::ConnectionError), 0);
    plane.shutdown(Duration::from_millis(100));
    server
}

/// Plaintext clients, a cluster that originates TLS to a rustls echo server.
#[test]
fn an_originating_cluster_relays_eight_loaded_connections() {
    let pki = Pki::new();
    let backend = tls_echo_backend(&pki.leaf(&["backend.example.com"], &[]));
    let ctx = ClientContext::new(&client_settings(&pki)).unwrap();
    let (plane, f, listen) = start(|l| fib(l, backend, None, Some(Arc::new(ctx))));
    in_parallel(8, move |id| {
        let msg = pattern(1 << 20, id);
        let s = TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let got = exchange(&s, &msg);
        assert!(got == msg, "connection {id}: the echo differs");
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        (&s).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    });
    assert_eq!(cluster_ssl(&f).get(SslStat::Handshake), 8);
    assert_eq!(cluster_ssl(&f).get(SslStat::ConnectionError), 0);
    plane.shutdown(Duration::from_millis(100));
}

/// TLS on both sides, a bad client among good ones: garbage instead of a ClientHello and a
/// silent client are closed (the silent one at the handshake deadline); the others pass.
#[test]
fn bad_clients_are_closed_and_good_ones_pass_with_tls_on_both_sides() {
    let pki = Pki::new();
    let backend = tls_echo_backend(&pki.leaf(&["backend.example.com"], &[]));
    let server = Arc::new(
        ServerContext::new(&server_settings(pki.leaf(&["gateway.example.com"], &[]))).unwrap(),
    );
    let client = ClientContext::new(&client_settings(&pki)).unwrap();
    let chain = ChainTls {
        context: Some(server),
        handshake_timeout_ms: Some(300),
    };
    let (plane, f, listen) = start(|l| fib(l, backend, Some(chain), Some(Arc::new(client))));
    // Garbage: an alert comes back, then the end.
    let mut garbage = TcpStream::connect(listen).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = garbage.read_to_end(&mut answer);
    assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
    // Silent: closed at the handshake deadline.
    let mut silent = TcpStream::connect(listen).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = loop {
        match silent.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.unwrap_or(0),
        }
    };
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    let config = client_config(&pki, None);
    in_parallel(4, move |id| {
        let config = config.clone();
        let msg = pattern(300_000, id);
        let mut tls = tls_client(listen, config);
        assert!(exchange(&mut tls, &msg) == msg);
    });
    let ssl = listener_ssl(&f);
    eventually(|| ssl.get(SslStat::HandshakeTimeout) == 1);
    assert_eq!(ssl.get(SslStat::Handshake), 4);
    assert_eq!(ssl.get(SslStat::ConnectionError), 1, "the garbage");
    let timeouts = ListenerStat::DownstreamCxTransportSocketConnectTimeout;
    assert_eq!(f.listeners[0].stats.get(timeouts), 1);
    assert_eq!(cluster_ssl(&f).get(SslStat::Handshake), 4);
    plane.shutdown(Duration::from_millis(100));
}

/// mTLS: a client whose SPIFFE ID the chain's SAN matcher accepts gets through; another
/// is refused in the handshake; a client without a certificate too.
#[test]
fn a_client_certificate_is_checked_by_its_spiffe_id() {
    let pki = Pki::new();
    let backend = support::fib::echo_backend();
    let mut settings = server_settings(pki.leaf(&["gateway.example.com"], &[]));
    settings.validation = Some(Validation {
        trusted_ca: vec![pki.ca.clone()],
        crls: Vec::new(),
        san_matchers: vec![SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatch {
                pattern: StringPattern::Exact("spiffe://cluster.local/ns/default/sa/web".into()),
                ignore_case: false,
            },
        }],
        trusted_ca_source: None,
    });
    settings.require_client_certificate = true;
    let chain = ChainTls {
        context: Some(Arc::new(ServerContext::new(&settings).unwrap())),
        handshake_timeout_ms: None,
    };
    let (plane, f, listen) = start(|l| fib(l, backend, Some(chain), None));
    let web = pki.leaf(&[], &["spiffe://cluster.local/ns/default/sa/web"]);
    let mut ok = tls_client(listen, client_config(&pki, Some(&web)));
    assert_eq!(exchange(&mut ok, b"hello"), b"hello");
    let intruder = pki.leaf(&[], &["spiffe://cluster.local/ns/other/sa/web"]);
    for cert in [Some(&intruder), None] {
        let mut refused = tls_client(listen, client_config(&pki, cert));
        // TLS 1.3: the client's write succeeds; the server's refusal arrives on the read.
        let _ = refused.write_all(b"hello");
        let _ = refused.flush();
        let mut buf = [0u8; 16];
        let r = refused.read(&mut buf);
        assert!(
            matches!(r, Err(_) | Ok(0)),
            "a refused client reads nothing: {r:?}"
        );
    }
    let ssl = listener_ssl(&f);
    eventually(|| ssl.get(SslStat::ConnectionError) == 2);
    assert_eq!(ssl.get(SslStat::Handshake), 1);
    assert_eq!(ssl.get(SslStat::FailVerifySan), 1);
    assert_eq!(ssl.get(SslStat::FailVerifyNoCert), 1);
    plane.shutdown(Duration::from_millis(100));
}

/// The splice relay never sees the bytes: a FIB with TLS is refused, naming what has it.
#[test]
fn a_splicing_plane_refuses_tls() {
    let pki = Pki::new();
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits {
                relay_mode: switchyard_dataplane::worker::RelayMode::Splice,
                ..Limits::default()
            },
            drain_time: Duration::from_secs(1),
        },
        Arc::new(ServerStats::new("server", 1)),
        Arc::new(AccessLogQueues::new(1, 64)),
    )
    .expect("start");
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let chain = ChainTls {
        context: Some(Arc::new(
            ServerContext::new(&server_settings(pki.leaf(&["a"], &[]))).unwrap(),
        )),
        handshake_timeout_ms: None,
    };
    let err = plane
        .publish(Arc::new(fib(listen, listen, Some(chain), None)))
        .unwrap_err();
    assert!(
        err.to_string().contains("listener 'gw' speaks TLS"),
        "{err}"
    );
    assert!(
        err.to_string().contains("--relay-mode buffer-ring"),
        "{err}"
    );
    plane.shutdown(Duration::from_millis(100));
}

/// A listener with a TLS inspector, a TLS chain picked by SNI and a plaintext chain beside
/// it: eight TLS clients and eight plaintext ones at once, each moving 256 KiB both ways;
/// every one reaches its chain with its first bytes intact, and the inspector counts them.
#[test]
fn an_inspected_listener_relays_eight_tls_and_eight_plaintext_connections() {
    let pki = Pki::new();
    let ctx = Arc::new(
        ServerContext::new(&server_settings(pki.leaf(&["gateway.example.com"], &[]))).unwrap(),
    );
    let backend = support::fib::echo_backend();
    let (plane, f, listen) = start(|l| {
        let mut f = fib(
            l,
            backend,
            Some(ChainTls {
                context: Some(ctx),
                handshake_timeout_ms: None,
            }),
            None,
        );
        let listener = &mut f.listeners[0];
        listener.filter_chains[0].matcher = ChainMatch {
            server_names: vec!["gateway.example.com".into()],
            transport_protocol: Some(TRANSPORT_TLS.into()),
            ..ChainMatch::default()
        };
        listener.filter_chains.push(FilterChain {
            matcher: ChainMatch {
                transport_protocol: Some(TRANSPORT_RAW_BUFFER.into()),
                ..ChainMatch::default()
            },
            ..support::fib::plain_chain("plain", "plain", 1, 1)
        });
        listener.chain_index = ChainIndex::of(&listener.filter_chains);
        listener.filter_deadline.timeout_ms = Some(5_000);
        listener.tls_inspector = Some(TlsInspector {
            max_client_hello_bytes: 16 * 1024,
            close_on_parse_error: false,
            initial_read_bytes: None,
            stats: Arc::new(TlsInspectorStats::new("tls_inspector", 1)),
        });
        f
    });
    let config = client_config(&pki, None);
    in_parallel(16, move |id| {
        let msg = pattern(256 * 1024, id);
        if id % 2 == 0 {
            let mut tls = tls_client(listen, config.clone());
            let got = exchange(&mut tls, &msg);
            assert!(got == msg, "TLS connection {id}: the echo differs");
            tls.conn.send_close_notify();
            tls.flush().unwrap();
        } else {
            let s = TcpStream::connect(listen).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let got = exchange(&s, &msg);
            assert!(got == msg, "plaintext connection {id}: the echo differs");
            s.shutdown(Shutdown::Write).unwrap();
        }
    });
    let inspector = &f.listeners[0].tls_inspector.as_ref().unwrap().stats;
    assert_eq!(inspector.get(TlsInspectorStat::TlsFound), 8);
    assert_eq!(inspector.get(TlsInspectorStat::SniFound), 8);
    assert_eq!(inspector.get(TlsInspectorStat::TlsNotFound), 8);
    assert_eq!(listener_ssl(&f).get(SslStat::Handshake), 8);
    let plain = &f.listeners[0].filter_chains[1].tcp_proxy.stats;
    eventually(|| plain.get(TcpStat::DownstreamCxTotal) == 8);
    plane.shutdown(Duration::from_millis(100));
}
