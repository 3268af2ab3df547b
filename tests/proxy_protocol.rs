//! `envoy.filters.listener.proxy_protocol` through the real proxy, with two workers, against
//! Switchyard and (CI's second pass) Envoy on the same configs, with the same stat names:
//!
//! * a header (version 1 or 2), its data and its FIN sent in one burst by eight clients at
//!   once, each served in full: the backend gets exactly the data, never the header (beyond
//!   Envoy: 1.40 resets most such clients; its pass prints how many and skips the asserts);
//! * a header written one byte per segment, read whole; the declared addresses in the
//!   access log, the socket's peer in `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`;
//! * the declared source picking the filter chain, and a TLS inspector reading the
//!   ClientHello that follows the header (SNI passthrough behind a load balancer);
//! * no header, a malformed one, one of a disallowed version: that connection closed and
//!   counted (`proxy_proto.[<prefix>.]*`, `downstream_cx_proxy_proto_error`), the others
//!   served; `allow_requests_without_proxy_protocol` passing headerless streams (and, with
//!   `disallowed_versions`, a disallowed header as the stream's own bytes);
//! * an unfinished header closed at `listener_filters_timeout`.
//!
//! The relay tests run in both relay modes.

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use switchyard_dataplane::proxy_protocol;

const WAIT: Duration = Duration::from_secs(10);

/// The listener filter, with `fields` (indented as its `typed_config`'s own).
fn pp_filter(fields: &str) -> String {
    format!(
        r#"    listener_filters:
    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
{fields}"#
    )
}

const INSPECTOR: &str = r#"    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
"#;

/// A listener on `port` with `head` (listener filters and fields) and `chains` (items of
/// `filter_chains`, with `rest` after them: a default chain).
fn listener(name: &str, port: u16, head: &str, chains: &str, rest: &str) -> String {
    format!(
        "  - name: {name}\n    address:\n      socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n\
         {head}    filter_chains:\n{chains}{rest}"
    )
}

/// A filter chain item: `matches` (empty: none), a tcp_proxy to `cluster`, logging `logs`.
fn chain(matches: &str, cluster: &str, logs: &str) -> String {
    let first = if matches.is_empty() {
        String::new()
    } else {
        format!("filter_chain_match: {{ {matches} }}\n      ")
    };
    format!(
        r#"    - {first}filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}
{logs}"#
    )
}

/// A `default_filter_chain` with a tcp_proxy to `cluster`.
fn default_chain(cluster: &str) -> String {
    let item = chain("", cluster, "");
    format!(
        "    default_filter_chain:\n      {}",
        &item["    - ".len()..]
    )
}

/// A version 1 header declaring `src` -> `dst`.
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A version 2 `PROXY` header declaring IPv4 `src` -> `dst`, with `tlvs` after the addresses.
fn v2(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 addresses")
    };
    let mut body = Vec::new();
    body.extend_from_slice(&s.ip().octets());
    body.extend_from_slice(&d.ip().octets());
    body.extend_from_slice(&s.port().to_be_bytes());
    body.extend_from_slice(&d.port().to_be_bytes());
    body.extend_from_slice(tlvs);
    v2_raw(0x21, 0x11, &body)
}

/// A version 2 header from its command byte, family byte and body.
fn v2_raw(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(command);
    h.push(family);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Starts the selected proxy (two workers, `mode`) with `listeners`, `clusters` and a probe
/// listener without the filter to wait on (a probe without a header would count).
fn start(listeners: &str, clusters: &str, probe_cluster: &str, mode: RelayMode) -> Option<Proxy> {
    let probe = free_port();
    let items = format!(
        "{listeners}{}",
        tcp_listener("probe", probe, "probe", probe_cluster)
    );
    let proxy = start_selected_mode_with(&bootstrap(free_port(), &items, clusters), mode, 2)?;
    proxy.wait_listening(local(probe), WAIT);
    Some(proxy)
}

/// Eight clients at once, ten connections each: every one writes its header (version 1 or
/// 2 by turns), then data of its own length, then its FIN, without waiting between them, and
/// must get exactly its data back from a backend that echoes after the FIN.
fn a_header_its_data_and_fin_in_one_burst_are_served_in_full_where_envoy_resets(mode: RelayMode) {
    let backend = Backend::echo_after_eof();
    let port = free_port();
    let front = listener("front", port, &pp_filter(""), &chain("", "echo", ""), "");
    let clusters = static_cluster("echo", &[(backend.addr, 1)]);
    let Some(proxy) = start(&front, &clusters, "echo", mode) else {
        return;
    };
    let failures: Vec<String> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..8u64)
            .map(|client| {
                scope.spawn(move || {
                    (0..10u64)
                        .filter_map(|i| burst(port, client * 10 + i).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    if selected_proxy() == ProxyKind::Envoy {
        // Beyond Envoy: 1.40 resets most of these clients (76 of 80 in one run here).
        return skip_unsupported(
            ProxyKind::Envoy,
            &format!(
                "Envoy reset {} of 80 clients that sent header, data and FIN at once",
                failures.len()
            ),
        );
    }
    assert!(
        failures.is_empty(),
        "{} of 80 bursts failed: {failures:?}\n{}",
        failures.len(),
        proxy.logs()
    );
    let reports = backend.wait_reports(81, WAIT);
    let sent: u64 = (0..80).map(burst_len).sum();
    let received: u64 = reports.iter().map(|r| r.rx_bytes).sum();
    assert_eq!(received, sent, "the backends got the data and no header");
    assert_eq!(proxy.stat("proxy_proto.versions.v1.found"), 40);
    assert_eq!(proxy.stat("proxy_proto.versions.v2.found"), 40);
}

fn burst_len(n: u64) -> u64 {
    1 + (n * 7919) % 48_000
}

/// One connection of the burst test: `Err` says how it failed.
fn burst(port: u16, n: u64) -> Result<(), String> {
    let data = Prng::bytes(n, burst_len(n) as usize);
    let (src, dst) = (
        addr(&format!("192.0.2.{}:{}", 1 + n % 200, 40000 + n)),
        local(port),
    );
    let mut all = if n.is_multiple_of(2) {
        v1(src, dst)
    } else {
        v2(src, dst, &[])
    };
    all.extend_from_slice(&data);
    let mut s = connect(local(port)).map_err(|e| format!("#{n} connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&all).map_err(|e| format!("#{n} write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("#{n} FIN: {e}"))?;
    let mut back = Vec::new();
    s.read_to_end(&mut back)
        .map_err(|e| format!("#{n} read after {} bytes: {e}", back.len()))?;
    if back != data {
        return Err(format!("#{n}: {} bytes back of {}", back.len(), data.len()));
    }
    Ok(())
}

/// An access log (in a directory of its own, tagged `tag`) of lines `fields`: its path, and
/// the tcp_proxy's `access_log` YAML writing it.
fn access_log_of(tag: &str, fields: &str) -> (std::path::PathBuf, String) {
    let log = test_dir(tag).join("access.log");
    let format = format!(
        "              log_format:\n                text_format_source:\n                  \
         inline_string: \"{fields}\\n\"\n"
    );
    let logs = format!(
        "          access_log:\n{}",
        file_access_log(&log, Some(&format))
    );
    (log, logs)
}

/// Version 1 and version 2 (with TLVs) headers written one byte per segment are read whole;
/// the access log shows the declared addresses and the socket's peer.
fn a_header_sent_one_byte_per_segment_is_read_whole(mode: RelayMode) {
    let backend = Backend::echo();
    let port = free_port();
    let (log, logs) = access_log_of(
        "proxy-protocol-log",
        "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
                  %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
    );
    let front = listener(
        "front",
        port,
        &pp_filter("        stat_prefix: lb\n"),
        &chain("", "echo", &logs),
        "",
    );
    let clusters = static_cluster("echo", &[(backend.addr, 1)]);
    let Some(proxy) = start(&front, &clusters, "echo", mode) else {
        return;
    };
    let tlvs = [0x01, 0, 2, b'h', b'2', 0x04, 0, 0];
    let headers = [
        (
            v1(addr("198.51.100.7:5555"), addr("203.0.113.1:443")),
            "198.51.100.7:5555 203.0.113.1:443 127.0.0.1",
        ),
        (
            v2(addr("198.51.100.8:6666"), addr("203.0.113.2:8443"), &tlvs),
            "198.51.100.8:6666 203.0.113.2:8443 127.0.0.1",
        ),
    ];
    for (header, _) in &headers {
        let mut s = connect_retry(local(port), WAIT);
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        for b in header {
            s.write_all(std::slice::from_ref(b)).unwrap();
            std::thread::sleep(Duration::from_micros(300));
        }
        assert_eq!(
            ping(&mut s, b"after the header").unwrap(),
            b"after the header"
        );
    }
    let lines = wait_log_lines(&log, 2);
    for (_, want) in &headers {
        assert!(lines.iter().any(|l| l == want), "{want:?} in {lines:?}");
    }
    assert_eq!(
        proxy.wait_stat("proxy_proto.lb.versions.v1.found", 1, WAIT),
        1
    );
    assert_eq!(
        proxy.wait_stat("proxy_proto.lb.versions.v2.found", 1, WAIT),
        1
    );
}

/// The declared source picks the chain; a ClientHello after the header is read by the TLS
/// inspector, and its server name picks a passthrough chain (the backend gets the TLS bytes).
fn declared_sources_and_a_client_hello_after_the_header_pick_the_chain(mode: RelayMode) {
    let (inside, sni, other) = (
        Backend::tagged("inside"),
        Backend::tagged("sni"),
        Backend::tagged("other"),
    );
    let port = free_port();
    let head = format!("{}{INSPECTOR}", pp_filter(""));
    let chains = chain("server_names: [\"sni.example.com\"]", "sni", "")
        + &chain(
            "source_prefix_ranges: [{address_prefix: 192.0.2.0, prefix_len: 24}]",
            "inside",
            "",
        );
    let front = listener("front", port, &head, &chains, &default_chain("other"));
    let clusters = static_cluster("inside", &[(inside.addr, 1)])
        + &static_cluster("sni", &[(sni.addr, 1)])
        + &static_cluster("other", &[(other.addr, 1)]);
    let Some(proxy) = start(&front, &clusters, "other", mode) else {
        return;
    };
    let reach = |header: Vec<u8>, first: &[u8]| {
        let mut s = connect_retry(local(port), WAIT);
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut all = header;
        all.extend_from_slice(first);
        s.write_all(&all).unwrap();
        read_line(&mut s).unwrap().trim().to_string()
    };
    let dst = local(port);
    assert_eq!(reach(v1(addr("192.0.2.10:1000"), dst), b"plain"), "inside");
    assert_eq!(
        reach(v2(addr("192.0.2.11:1001"), dst, &[]), b"plain"),
        "inside"
    );
    assert_eq!(reach(v1(addr("198.51.100.1:1002"), dst), b"plain"), "other");
    // LOCAL (a health check from the load balancer): the socket's own addresses.
    assert_eq!(reach(v2_raw(0x20, 0, &[]), b"plain"), "other");
    let hello = client_hello("sni.example.com");
    assert_eq!(reach(v1(addr("198.51.100.2:1003"), dst), &hello), "sni");
    assert_eq!(proxy.wait_stat("tls_inspector.sni_found", 1, WAIT), 1);
    assert_eq!(proxy.stat("proxy_proto.versions.v2.found"), 2);
}

/// Whether the proxy closed `s` (EOF or reset) within `WAIT` without relaying anything.
fn closed(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_))
}

/// Sends `bytes` to `port` and says whether the proxy closed the connection.
fn closed_after(port: u16, bytes: &[u8]) -> bool {
    let mut s = connect_retry(local(port), WAIT);
    s.write_all(bytes).unwrap();
    closed(s)
}

/// Strict, headerless-allowed without version 1, and without version 2: what each closes,
/// passes and counts, with a served connection open through it all.
fn missing_malformed_and_disallowed_headers_close_that_connection_and_count(mode: RelayMode) {
    let backend = Backend::echo();
    let (strict, lenient, no_v2) = (free_port(), free_port(), free_port());
    let listeners = listener("strict", strict, &pp_filter(""), &chain("", "echo", ""), "")
        + &listener(
            "lenient",
            lenient,
            &pp_filter(
                "        stat_prefix: lenient\n        allow_requests_without_proxy_protocol: true\n        disallowed_versions: [V1]\n",
            ),
            &chain("", "echo", ""),
            "",
        )
        + &listener(
            "no_v2",
            no_v2,
            &pp_filter("        stat_prefix: no_v2\n        disallowed_versions: [V2]\n"),
            &chain("", "echo", ""),
            "",
        );
    let clusters = static_cluster("echo", &[(backend.addr, 1)]);
    let Some(proxy) = start(&listeners, &clusters, "echo", mode) else {
        return;
    };
    let dst = local(strict);
    let mut served = connect_retry(dst, WAIT);
    served.set_read_timeout(Some(WAIT)).unwrap();
    served.write_all(&v1(addr("192.0.2.1:1"), dst)).unwrap();
    assert_eq!(ping(&mut served, b"one").unwrap(), b"one");
    // Strict: no header, a malformed version 1, UNIX addresses in version 2.
    assert!(closed_after(strict, b"GET / HTTP/1.1\r\n\r\n"));
    assert!(closed_after(strict, b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\nx"));
    assert!(closed_after(strict, &v2_raw(0x21, 0x31, &[0u8; 216])));
    assert_eq!(
        proxy.wait_stat("proxy_proto.not_found_disallowed", 1, WAIT),
        1
    );
    assert_eq!(proxy.wait_stat("proxy_proto.versions.v1.error", 1, WAIT), 1);
    assert_eq!(proxy.wait_stat("proxy_proto.versions.v2.error", 1, WAIT), 1);
    // Lenient without version 1: no header passes as it is, and so does a version 1
    // header (the stream's own bytes: the backend echoes it).
    let mut s = connect_retry(local(lenient), WAIT);
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(ping(&mut s, b"plain").unwrap(), b"plain");
    let header = v1(addr("192.0.2.2:2"), local(lenient));
    let mut s = connect_retry(local(lenient), WAIT);
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(ping(&mut s, &header).unwrap(), header);
    assert_eq!(
        proxy.wait_stat("proxy_proto.lenient.not_found_allowed", 2, WAIT),
        2
    );
    // Without version 2: a version 2 header is found and refused.
    assert!(closed_after(
        no_v2,
        &v2(addr("192.0.2.3:3"), local(no_v2), &[])
    ));
    assert_eq!(
        proxy.wait_stat("proxy_proto.no_v2.versions.v2.disallowed", 1, WAIT),
        1
    );
    assert_eq!(proxy.stat("proxy_proto.no_v2.versions.v2.found"), 1);
    // The malformed and the missing count as errors; the disallowed do not (as Envoy).
    assert_eq!(proxy.stat("downstream_cx_proxy_proto_error"), 3);
    // As Envoy's, the listener counts only the connection a filter chain took.
    let listener_stat = |s: &str| proxy.stat(&format!("listener.127.0.0.1_{strict}.{s}"));
    assert_eq!(listener_stat("downstream_cx_total"), 1);
    assert_eq!(listener_stat("downstream_cx_active"), 1);
    assert_eq!(ping(&mut served, b"two").unwrap(), b"two", "still served");
}

/// A backend that reads a PROXY header first (parsed with the dataplane's parser, which
/// the Envoy pass checks against Envoy's writer), writes `ready\n`, then echoes; it keeps
/// each header's version, addresses and TLVs.
struct HeaderBackend {
    addr: SocketAddr,
    headers: std::sync::Arc<std::sync::Mutex<Vec<SeenHeader>>>,
}

#[derive(Debug, Clone, PartialEq)]
struct SeenHeader {
    version: proxy_protocol::Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: Vec<(u8, Vec<u8>)>,
}

impl HeaderBackend {
    fn start() -> HeaderBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let headers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = headers.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().take(BACKEND_MAX_CONNS) {
                let Ok(s) = s else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || serve_after_header(s, &seen));
            }
        });
        HeaderBackend { addr, headers }
    }

    fn wait_headers(&self, n: usize) -> Vec<SeenHeader> {
        wait_until(WAIT, || self.headers.lock().unwrap().len() >= n);
        self.headers.lock().unwrap().clone()
    }
}

/// Reads the header (closing the connection on anything else), answers `ready\n`, echoes.
fn serve_after_header(mut s: TcpStream, seen: &std::sync::Mutex<Vec<SeenHeader>>) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut held = Vec::new();
    let mut buf = [0u8; 4096];
    let header = loop {
        match proxy_protocol::parse(&held, 65_551) {
            proxy_protocol::Parsed::NeedMore => {}
            proxy_protocol::Parsed::Header(h) => break h,
            _ => return,
        }
        match s.read(&mut buf) {
            Ok(n) if n > 0 => held.extend_from_slice(&buf[..n]),
            _ => return,
        }
    };
    seen.lock().unwrap().push(SeenHeader {
        version: header.version,
        addresses: header.addresses,
        tlvs: header.tlvs(&held).map(|(t, v)| (t, v.to_vec())).collect(),
    });
    let rest = held[header.len..].to_vec();
    if s.write_all(b"ready\n").is_err() || s.write_all(&rest).is_err() {
        return;
    }
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// A static cluster to `endpoint` whose connections start with a PROXY header of `config`
/// (`ProxyProtocolConfig` fields, a flow map's contents), around `inner` (a transport
/// socket's `name` and `typed_config` lines; empty: raw_buffer).
fn pp_cluster(name: &str, endpoint: SocketAddr, config: &str, inner: &str) -> String {
    let inner = if inner.is_empty() {
        "          name: envoy.transport_sockets.raw_buffer\n          typed_config:\n            \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer\n"
            .to_string()
    } else {
        inner.to_string()
    };
    static_cluster(name, &[(endpoint, 1)]).replace(
        &format!("  - name: {name}\n"),
        &format!(
            r#"  - name: {name}
    transport_socket:
      name: envoy.transport_sockets.upstream_proxy_protocol
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport
        config: {{ {config} }}
        transport_socket:
{inner}"#
        ),
    )
}

/// Connects to `port` and reads the backend's `ready` line before sending anything (the
/// header went out at connect, as a server-first protocol needs), then checks an echo.
fn ready_then_echo(port: u16) -> TcpStream {
    let mut s = connect_retry(local(port), WAIT);
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(read_line(&mut s).unwrap(), "ready");
    assert_eq!(ping(&mut s, b"after ready").unwrap(), b"after ready");
    s
}

/// Clusters send version 1 and version 2 headers (with their `added_tlvs`) declaring the
/// client's address and the address it reached, before the client's first byte; behind a
/// downstream PROXY header, the declared client.
fn clusters_send_a_proxy_header_declaring_the_client(mode: RelayMode) {
    let backend = HeaderBackend::start();
    let (to_v1, to_v2, behind) = (free_port(), free_port(), free_port());
    let listeners = tcp_listener("to_v1", to_v1, "to_v1", "v1")
        + &tcp_listener("to_v2", to_v2, "to_v2", "v2")
        + &listener("behind", behind, &pp_filter(""), &chain("", "v2", ""), "");
    let clusters = pp_cluster("v1", backend.addr, "version: V1", "")
        + &pp_cluster(
            "v2",
            backend.addr,
            "version: V2, added_tlvs: [{ type: 0xE0, value: c3dpdGNoeWFyZA== }, { type: 0x05, value: AA== }]",
            "",
        )
        + &static_cluster("probe", &[(local(closed_port()), 1)]);
    let Some(_proxy) = start(&listeners, &clusters, "probe", mode) else {
        return;
    };
    let client = ready_then_echo(to_v1);
    let v1_seen = backend.wait_headers(1);
    assert_eq!(
        v1_seen[0],
        SeenHeader {
            version: proxy_protocol::Version::V1,
            addresses: Some((client.local_addr().unwrap(), local(to_v1))),
            tlvs: vec![],
        }
    );
    let client = ready_then_echo(to_v2);
    let tlvs = vec![(0xe0, b"switchyard".to_vec()), (0x05, vec![0])];
    assert_eq!(
        backend.wait_headers(2)[1],
        SeenHeader {
            version: proxy_protocol::Version::V2,
            addresses: Some((client.local_addr().unwrap(), local(to_v2))),
            tlvs: tlvs.clone(),
        }
    );
    // Behind a downstream header: the declared client and destination go on.
    let mut s = connect_retry(local(behind), WAIT);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let (src, dst) = (addr("192.0.2.44:4444"), addr("203.0.113.9:443"));
    s.write_all(&v1(src, dst)).unwrap();
    assert_eq!(read_line(&mut s).unwrap(), "ready");
    assert_eq!(
        backend.wait_headers(3)[2],
        SeenHeader {
            version: proxy_protocol::Version::V2,
            addresses: Some((src, dst)),
            tlvs,
        }
    );
}

/// Beyond Envoy: Switchyard's `TrustedSources` before the filter. A header from a peer in
/// the ranges is read; one from any other peer is its stream's own bytes (the backend echoes
/// it) and the peer's own address stands in the access log.
fn only_trusted_peers_declare_the_source(mode: RelayMode) {
    if selected_proxy() == ProxyKind::Envoy {
        return skip_unsupported(
            ProxyKind::Envoy,
            "TrustedSources is Switchyard's own listener filter",
        );
    }
    let backend = Backend::echo();
    let port = free_port();
    let (log, logs) = access_log_of(
        "proxy-protocol-trusted",
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    );
    let trusted = r#"    - name: switchyard.filters.listener.proxy_protocol_trusted_sources
      typed_config:
        "@type": type.googleapis.com/switchyard.filters.listener.proxy_protocol.v1.TrustedSources
        source_prefix_ranges: [{ address_prefix: 127.0.0.2, prefix_len: 32 }]
"#;
    let head = pp_filter("        stat_prefix: lb\n").replacen(
        "    listener_filters:\n",
        &format!("    listener_filters:\n{trusted}"),
        1,
    );
    let front = listener("front", port, &head, &chain("", "echo", &logs), "");
    let clusters = static_cluster("echo", &[(backend.addr, 1)]);
    let Some(proxy) = start(&front, &clusters, "echo", mode) else {
        return;
    };
    let header = v1(addr("192.0.2.5:5555"), local(port));
    let mut untrusted = connect_retry(local(port), WAIT);
    untrusted.set_read_timeout(Some(WAIT)).unwrap();
    let mut sent = header.clone();
    sent.extend_from_slice(b"x");
    assert_eq!(ping(&mut untrusted, &sent).unwrap(), sent, "passed as data");
    drop(untrusted);
    let mut trusted = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), local(port)).unwrap();
    trusted.set_read_timeout(Some(WAIT)).unwrap();
    trusted.write_all(&header).unwrap();
    assert_eq!(
        ping(&mut trusted, b"y").unwrap(),
        b"y",
        "the header was read"
    );
    drop(trusted);
    let mut lines = wait_log_lines(&log, 2);
    lines.sort();
    assert_eq!(lines, ["127.0.0.1", "192.0.2.5"]);
    assert_eq!(proxy.stat("proxy_proto.lb.untrusted_source"), 1);
    assert_eq!(proxy.stat("proxy_proto.lb.versions.v1.found"), 1);
}

/// `pass_through_tlvs` on both sides: the listener keeps the downstream header's TLVs of its
/// types, the cluster sends those of its own types and its `added_tlvs`, an added TLV
/// replacing the passed ones of its type; a listener without it passes none.
fn tlvs_pass_through_from_the_downstream_header_to_the_upstream_one(mode: RelayMode) {
    let backend = HeaderBackend::start();
    let (passing, keeping_none) = (free_port(), free_port());
    let listeners = listener(
        "passing",
        passing,
        &pp_filter("        pass_through_tlvs: { match_type: INCLUDE, tlv_type: [0xE0, 0x01] }\n"),
        &chain("", "pass", ""),
        "",
    ) + &listener(
        "none",
        keeping_none,
        &pp_filter(""),
        &chain("", "pass", ""),
        "",
    );
    let clusters = pp_cluster(
        "pass",
        backend.addr,
        "version: V2, pass_through_tlvs: { match_type: INCLUDE_ALL }, added_tlvs: [{ type: 0x01, value: b3ZlcnJpZGU= }]",
        "",
    ) + &static_cluster("probe", &[(local(closed_port()), 1)]);
    let Some(_proxy) = start(&listeners, &clusters, "probe", mode) else {
        return;
    };
    let mut tlvs = Vec::new();
    for (t, v) in [(0xe0u8, &b"abc"[..]), (0xe1, b"def"), (0x01, b"h2")] {
        tlvs.push(t);
        tlvs.extend_from_slice(&(v.len() as u16).to_be_bytes());
        tlvs.extend_from_slice(v);
    }
    let dst = addr("203.0.113.9:443");
    for (i, port) in [passing, keeping_none].into_iter().enumerate() {
        // Each listener's client declares its own source, so its upstream header is found
        // by what it declares, not by the order the backend saw headers in.
        let src = addr(&format!("192.0.2.44:{}", 4444 + i));
        let mut s = connect_retry(local(port), WAIT);
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&v2(src, dst, &tlvs)).unwrap();
        assert_eq!(read_line(&mut s).unwrap(), "ready");
        let headers = backend.wait_headers(i + 1);
        let from_src: Vec<_> = headers
            .iter()
            .filter(|h| h.addresses == Some((src, dst)))
            .collect();
        assert_eq!(
            from_src.len(),
            1,
            "listener {i}: one upstream header declaring {src}: {headers:?}"
        );
        let mut got = from_src[0].tlvs.clone();
        got.sort();
        let want = if i == 0 {
            // 0xE1: not kept by the listener; 0x01: replaced by the added one.
            vec![(0x01, b"override".to_vec()), (0xe0, b"abc".to_vec())]
        } else {
            vec![(0x01, b"override".to_vec())]
        };
        assert_eq!(got, want, "listener {i}");
    }
}

in_both_relay_modes!(
    tlvs_pass_through_from_the_downstream_header_to_the_upstream_one,
    only_trusted_peers_declare_the_source,
    clusters_send_a_proxy_header_declaring_the_client,
    a_header_its_data_and_fin_in_one_burst_are_served_in_full_where_envoy_resets,
    a_header_sent_one_byte_per_segment_is_read_whole,
    declared_sources_and_a_client_hello_after_the_header_pick_the_chain,
    missing_malformed_and_disallowed_headers_close_that_connection_and_count,
);

/// A cluster's header wraps its TLS: the header first, then the handshake. The proxy talks
/// to itself: its inner listener reads the header (as a TLS gateway behind a load balancer
/// would) and terminates TLS, and its access log shows the client the header declared.
#[test]
fn a_proxy_header_goes_before_the_tls_handshake_it_wraps() {
    let backend = Backend::echo();
    let (front, inner) = (free_port(), free_port());
    let (log, logs) = access_log_of(
        "proxy-protocol-tls",
        "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_TLS_VERSION%",
    );
    let tls_chain = format!(
        "{}      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          \
         common_tls_context:\n            tls_certificates:\n            - certificate_chain: {{ filename: {} }}\n              \
         private_key: {{ filename: {} }}\n",
        chain("", "echo", &logs),
        cert("server.pem").display(),
        cert("server.key").display()
    );
    let listeners = tcp_listener("front", front, "front", "inner_tls")
        + &listener("inner", inner, &pp_filter(""), &tls_chain, "");
    let upstream_tls = format!(
        "          name: envoy.transport_sockets.tls\n          typed_config:\n            \
         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n            \
         sni: backend.example.com\n            common_tls_context:\n              validation_context:\n                \
         trusted_ca: {{ filename: {} }}\n",
        cert("ca.pem").display()
    );
    let clusters = pp_cluster("inner_tls", local(inner), "version: V2", &upstream_tls)
        + &static_cluster("echo", &[(backend.addr, 1)]);
    let Some(proxy) = start(&listeners, &clusters, "echo", RelayMode::BufferRing) else {
        return;
    };
    let mut s = connect_retry(local(front), WAIT);
    s.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(ping(&mut s, b"through tls").unwrap(), b"through tls");
    let client = s.local_addr().unwrap();
    drop(s);
    let lines = wait_log_lines(&log, 1);
    // TLS 1.2: an upstream context's default maximum, Envoy's and so Switchyard's.
    assert_eq!(lines, [format!("{client} TLSv1.2")], "{}", proxy.logs());
    assert_eq!(proxy.wait_stat("proxy_proto.versions.v2.found", 1, WAIT), 1);
}

/// A header that never ends is closed at `listener_filters_timeout`, reaching no backend.
#[test]
fn an_unfinished_header_is_closed_at_the_listener_filters_timeout() {
    let backend = Backend::echo();
    let port = free_port();
    let head = format!("{}    listener_filters_timeout: 0.5s\n", pp_filter(""));
    let front = listener("front", port, &head, &chain("", "echo", ""), "");
    let clusters = static_cluster("echo", &[(backend.addr, 1)]);
    let Some(proxy) = start(&front, &clusters, "echo", RelayMode::BufferRing) else {
        return;
    };
    let mut s = connect_retry(local(port), WAIT);
    s.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    let started = Instant::now();
    assert!(closed(s));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    let timeouts = format!("listener.127.0.0.1_{port}.downstream_pre_cx_timeout");
    assert_eq!(proxy.wait_stat(&timeouts, 1, WAIT), 1);
    assert_eq!(backend.accepted(), 1, "only the probe reached the backend");
}
