//! HBONE (HTTP/2 CONNECT over mTLS, Istio ambient's node-to-node tunnel) through real
//! proxies configured in Envoy's terms, with the checked-in test PKI (`tests/certs`): a
//! source proxy whose tcp_proxy tunnels each connection (`tunneling_config`) over pooled
//! HTTP/2 connections of a cluster with HTTP/2 protocol options and an `UpstreamTlsContext`
//! (the workload's SPIFFE certificate), and a destination proxy whose chain terminates
//! the tunnel (the CONNECT subset of `http_connection_manager`, mTLS with the caller's
//! SPIFFE ID matched) and delivers each stream to the address its `:authority` names
//! (`ORIGINAL_DST` by `:authority`).
//!
//! Every pair runs: the proxy under test on both ends, and, when that is Switchyard, real
//! Envoy on either end (Switchyard -> Envoy, Envoy -> Switchyard). Checked: 1 MiB
//! byte-exact each way with half-closes; 100 concurrent streams over one HTTP/2
//! connection (the listener's and the cluster's connection counts); a reset both ways; a
//! caller with the wrong SPIFFE ID refused; the caller's identity in the destination's
//! access log.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

const CALLER: &str = "spiffe://cluster.local/ns/default/sa/client";

/// A destination proxy of `kind`: HBONE terminated on `port` (mTLS, [`CALLER`] only),
/// streams to their `:authority`; its stream access log at `log` with the caller's SPIFFE
/// ID and the pod (and, from Envoy, which renders request headers, the `forwarded` header
/// the source added).
fn destination(kind: ProxyKind, admin: u16, port: u16, log: &std::path::Path) -> String {
    let headers = if kind == ProxyKind::Envoy {
        " %REQ(FORWARDED)%"
    } else {
        ""
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: hbone
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
            - certificate_chain: {{ filename: {server_pem} }}
              private_key: {{ filename: {server_key} }}
            validation_context:
              trusted_ca: {{ filename: {ca} }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "{CALLER}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options:
            allow_connect: true
            max_concurrent_streams: 100
            initial_stream_window_size: 4194304
            initial_connection_window_size: 16777216
          upgrade_configs:
          - upgrade_type: CONNECT
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format:
                text_format_source:
                  inline_string: "%DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_HOST%{headers}\n"
          route_config:
            name: hbone
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ connect_matcher: {{}} }}
                route:
                  cluster: pods
                  upgrade_configs:
                  - upgrade_type: CONNECT
                    connect_config: {{}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: pods
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config:
      use_http_header: true
      http_header_name: ":authority"
"#,
        log = log.display(),
        server_pem = cert("server.pem").display(),
        server_key = cert("server.key").display(),
        ca = cert("ca.pem").display(),
    )
}

/// A source proxy: plaintext connections on `port` tunnelled to `to` as the workload with
/// certificate `identity` (`client` or `intruder`), `:authority` `authority`.
fn source(admin: u16, port: u16, to: u16, authority: &str, identity: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: outbound
          cluster: tunnel
          tunneling_config:
            hostname: "{authority}"
            headers_to_add:
            - header: {{ key: forwarded, value: "for=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }}
  clusters:
  - name: tunnel
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: tunnel
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {to} }} }} }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            max_concurrent_streams: 100
            initial_stream_window_size: 4194304
            initial_connection_window_size: 16777216
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.example.com
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{ filename: {id_pem} }}
            private_key: {{ filename: {id_key} }}
          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: backend.example.com }}
"#,
        id_pem = cert(&format!("{identity}.pem")).display(),
        id_key = cert(&format!("{identity}.key")).display(),
        ca = cert("ca.pem").display(),
    )
}

/// The pairs this run checks: (source, destination).
fn pairs() -> Vec<(ProxyKind, ProxyKind)> {
    let selected = selected_proxy();
    if !require(proxy_available(selected), selected.name()) {
        return Vec::new();
    }
    let mut pairs = vec![(selected, selected)];
    if selected == ProxyKind::Switchyard && require(envoy_available(), "envoy") {
        pairs.push((ProxyKind::Switchyard, ProxyKind::Envoy));
        pairs.push((ProxyKind::Envoy, ProxyKind::Switchyard));
    }
    pairs
}

/// A started pair: the source's outbound port, both proxies, the destination's log.
struct Pair {
    outbound: u16,
    source: Proxy,
    destination: Proxy,
    hbone_port: u16,
    log: std::path::PathBuf,
    name: String,
}

fn start_pair(kinds: (ProxyKind, ProxyKind), authority: &str, identity: &str) -> Pair {
    let (outbound, hbone_port) = (free_port(), free_port());
    let log = test_dir("hbone-log").join("streams.log");
    let dest = destination(kinds.1, free_port(), hbone_port, &log);
    let src = source(free_port(), outbound, hbone_port, authority, identity);
    let opts = || ProxyOpts {
        concurrency: 1,
        ..Default::default()
    };
    let destination = Proxy::start_with(kinds.1, &dest, opts());
    let source = Proxy::start_with(kinds.0, &src, opts());
    // The probe's connection crosses the tunnel: its HTTP/2 connection is the pool's first
    // (the destination is ready, so its listener is up: no probe of its own).
    source.wait_listening(local(outbound), Duration::from_secs(10));
    Pair {
        outbound,
        source,
        destination,
        hbone_port,
        log,
        name: format!("{} -> {}", kinds.0.name(), kinds.1.name()),
    }
}

/// The destination's HTTP/2 connections so far (its HBONE listener's connections).
fn tunnels(p: &Pair) -> u64 {
    p.destination.stat(&format!(
        "listener.127.0.0.1_{}.downstream_cx_total",
        p.hbone_port
    ))
}

/// Eight connections at once move 1 MiB each way, byte-exact, half-closed both ways, over
/// one HTTP/2 connection; the destination logs the caller's SPIFFE ID for each.
#[test]
fn a_mib_each_way_crosses_the_tunnel_with_the_callers_identity() {
    let backend = Backend::echo();
    for kinds in pairs() {
        let p = start_pair(kinds, &backend.addr.to_string(), "client");
        let threads: Vec<_> = (0..8u64)
            .map(|i| {
                let addr = local(p.outbound);
                std::thread::spawn(move || {
                    let s = connect_retry(addr, Duration::from_secs(5));
                    let x = exchange(s, i, 1024 * 1024);
                    echoed_exactly(i, &x)
                })
            })
            .collect();
        for t in threads {
            t.join()
                .expect("client")
                .unwrap_or_else(|e| panic!("{}: {e}", p.name));
        }
        assert_eq!(tunnels(&p), 1, "{}: eight streams, one connection", p.name);
        let lines = wait_log_lines(&p.log, 8);
        let pod = backend.addr.to_string();
        let forwarded = format!("{pod} for=127.0.0.1");
        for line in &lines {
            assert!(
                line.starts_with(&format!("{CALLER} {pod}")),
                "{}: the stream's log names the caller and the pod: {line}",
                p.name
            );
            if kinds.1 == ProxyKind::Envoy {
                assert!(
                    line.ends_with(&forwarded),
                    "{}: the source's headers_to_add arrived: {line}",
                    p.name
                );
            }
        }
    }
}

/// A hundred connections open at once are a hundred streams of one HTTP/2 connection: the
/// destination accepted one connection and the source's cluster made one.
#[test]
fn a_hundred_concurrent_streams_share_one_http2_connection() {
    let backend = Backend::echo();
    for kinds in pairs() {
        let p = start_pair(kinds, &backend.addr.to_string(), "client");
        let mut open = Vec::new();
        for i in 0..100u64 {
            let mut s = connect_retry(local(p.outbound), Duration::from_secs(5));
            ping(&mut s, i).unwrap_or_else(|e| panic!("{}: conn {i}: {e}", p.name));
            open.push(s);
        }
        assert_eq!(tunnels(&p), 1, "{}: one connection for 100 streams", p.name);
        assert_eq!(
            p.source.stat("cluster.tunnel.upstream_cx_total"),
            1,
            "{}: the source made one connection",
            p.name
        );
        // All hundred are open at once: each answers again.
        for (i, s) in open.iter_mut().enumerate() {
            ping(s, 1000 + i as u64).unwrap_or_else(|e| panic!("{}: conn {i}: {e}", p.name));
            s.shutdown(Shutdown::Write).unwrap();
        }
    }
}

/// 64 bytes through an echo and back, the connection left open.
fn ping(s: &mut TcpStream, seed: u64) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let msg = Prng::bytes(seed, 64);
    s.write_all(&msg)?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back)?;
    if back[..] != msg[..] {
        return Err(std::io::Error::other("the echo differs"));
    }
    Ok(())
}

/// A backend's reset reaches the client as a reset through two Switchyards (RST_STREAM
/// between them). Envoy ends such a stream cleanly (verified with 1.40: the client reads
/// the end of stream), so a pair with Envoy gets the bytes before it and an end.
#[test]
fn a_reset_crosses_the_tunnel() {
    let backend = Backend::rst_after(1000, 7);
    for kinds in pairs() {
        let p = start_pair(kinds, &backend.addr.to_string(), "client");
        let s = connect_retry(local(p.outbound), Duration::from_secs(5));
        let x = exchange(s, 1, 10);
        assert_eq!(x.received, 1000, "{}: the bytes before the reset", p.name);
        if kinds == (ProxyKind::Switchyard, ProxyKind::Switchyard) {
            assert_eq!(x.end, End::Reset, "{}: {x:?}", p.name);
        } else {
            assert!(matches!(x.end, End::Reset | End::Eof), "{}: {x:?}", p.name);
        }
    }
}

/// A caller whose certificate names another workload is refused at the handshake: its
/// connection reads nothing.
#[test]
fn a_caller_with_the_wrong_spiffe_id_is_refused() {
    let backend = Backend::echo();
    for kinds in pairs() {
        let p = start_pair(kinds, &backend.addr.to_string(), "intruder");
        let s = connect_retry(local(p.outbound), Duration::from_secs(5));
        let x = exchange(s, 1, 1000);
        assert_eq!(x.received, 0, "{}: nothing through: {x:?}", p.name);
        let failed = p.destination.wait_stat(
            &format!("listener.127.0.0.1_{}.ssl.fail_verify_san", p.hbone_port),
            1,
            Duration::from_secs(5),
        );
        assert!(failed >= 1, "{}: the refusal counted", p.name);
        assert_eq!(backend.accepted(), 0, "{}: the pod saw nothing", p.name);
    }
}

/// The destination's side ends first: the backend's FIN reaches the client as the end of
/// its stream while the client's direction stays open and goes on delivering (half-close
/// from the far side, END_STREAM on the stream in that one direction). Two Switchyards
/// only: Envoy 1.40 closes the whole tunnelled connection once the far side's stream ends
/// (verified: the client's later shutdown finds the socket closed).
#[test]
fn the_far_side_half_closes_first() {
    let backend = Backend::source(256 * 1024, 11);
    let both_switchyard = (ProxyKind::Switchyard, ProxyKind::Switchyard);
    for kinds in pairs().into_iter().filter(|k| *k == both_switchyard) {
        let p = start_pair(kinds, &backend.addr.to_string(), "client");
        let mut s = connect_retry(local(p.outbound), Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (got, end) = read_all(&mut s, usize::MAX);
        assert_eq!(got.len(), 256 * 1024, "{}: the backend's bytes", p.name);
        assert_eq!(end, End::Eof, "{}: then its end", p.name);
        let sent = write_prng(&mut s, 5, 64 * 1024)
            .unwrap_or_else(|e| panic!("{}: the client's direction is still open: {e}", p.name));
        s.shutdown(Shutdown::Write).unwrap();
        // The source's listening probe reached the backend too: find this connection's
        // report by what it received.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !backend
            .reports()
            .iter()
            .any(|r| r.rx_bytes == sent && r.end == "eof")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: what the client sent after the far side's end arrived: {:?}",
                p.name,
                backend.reports()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
