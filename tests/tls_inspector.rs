//! `envoy.filters.listener.tls_inspector` and filter-chain selection by what it reads,
//! through the real proxy, against Switchyard and (CI's second pass) Envoy on the same
//! configs, with the same stat names:
//!
//! * one listener holding several TLS chains with different certificates (ECDSA
//!   `server.pem`, RSA `server-rsa.pem`) picked by SNI: an exact name, the longest `*.`
//!   suffix, chains without names; by ALPN; and a `raw_buffer` chain on the same port that a
//!   plaintext client (or garbage) reaches with its first bytes intact;
//! * a ClientHello written one byte at a time, read whole; one over `max_client_hello_size`
//!   closed (`client_hello_too_large`), with or without
//!   `close_connection_on_client_hello_parsing_errors`;
//! * `tls_inspector.*` counted as Envoy counts them, `%REQUESTED_SERVER_NAME%` in the access
//!   log;
//! * a silent or stalled client closed at `listener_filters_timeout`
//!   (`downstream_pre_cx_timeout`), or passed on as plaintext with what it sent under
//!   `continue_on_listener_filters_timeout`;
//! * a listener whose chains match on server names without an inspector (accepted, as by
//!   Envoy, and those chains never match), and a `filter_chain_matcher` reading the server
//!   name and transport protocol inputs.

mod common;

use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accepts any server certificate (the test names are not in the certificates) and keeps
/// the leaf it was shown, to tell which chain's certificate served the handshake.
#[derive(Debug)]
struct KeepLeaf {
    seen: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for KeepLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a TLS client learned: the backend's tag line and the certificate it was served.
struct Reached {
    tag: String,
    leaf: Vec<u8>,
}

/// A TLS client sending `sni` (none for `None`) and offering `alpn`.
fn tls_client(sni: Option<&str>, alpn: &[&str]) -> (rustls::ClientConnection, Arc<KeepLeaf>) {
    // The ring provider, as the proxy's (deprecated by rustls only for lacking a
    // post-quantum group).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(KeepLeaf {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    // An IP address as the name: rustls sends no SNI.
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
    };
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    (conn, verifier)
}

/// Connects through `port` with TLS (`sni`, `alpn`) and reads the backend's tag.
fn reach_tls(port: u16, sni: Option<&str>, alpn: &[&str]) -> Reached {
    let (conn, verifier) = tls_client(sni, alpn);
    let s = connect_retry(local(port), Duration::from_secs(5));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    read_tag(rustls::StreamOwned::new(conn, s), &verifier)
}

fn read_tag(
    mut s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    verifier: &KeepLeaf,
) -> Reached {
    let mut tag = Vec::new();
    let mut byte = [0u8; 1];
    while !tag.ends_with(b"\n") {
        match s.read(&mut byte) {
            Ok(1) => tag.push(byte[0]),
            other => panic!("no tag line (read {other:?}, got {tag:?})"),
        }
    }
    s.conn.send_close_notify();
    let _ = s.flush();
    Reached {
        tag: String::from_utf8(tag).unwrap().trim().to_string(),
        leaf: verifier
            .seen
            .lock()
            .unwrap()
            .clone()
            .expect("a certificate"),
    }
}

/// Sends `first` in plaintext through `port`; the backend's tag and the echo of `first`.
fn reach_plain(port: u16, first: &[u8]) -> (String, Vec<u8>) {
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(first).unwrap();
    let tag = read_line(&mut s).unwrap();
    let mut echo = vec![0u8; first.len()];
    s.read_exact(&mut echo).unwrap();
    (tag.trim().to_string(), echo)
}

/// A `DownstreamTlsContext` serving `chain`/`key` (under a filter chain).
fn tls_socket(chain: &str, key: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: {} }}
              private_key: {{ filename: {} }}
"#,
        cert(chain).display(),
        cert(key).display(),
    )
}

/// One filter chain: `filter_chain_match` lines (empty: none), a tcp_proxy to `cluster`,
/// TLS when `tls`; named `cluster`.
fn chain(matches: &str, cluster: &str, tls: Option<(&str, &str)>, logs: &str) -> String {
    let m = if matches.is_empty() {
        String::new()
    } else {
        format!("      filter_chain_match: {{ {matches} }}\n")
    };
    let socket = tls.map_or(String::new(), |(c, k)| tls_socket(c, k));
    format!(
        r#"    - name: {cluster}
{m}      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}
{logs}{socket}"#
    )
}

const INSPECTOR: &str = r#"    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
"#;

/// A listener on `port` with `head` (listener filters, timeouts) and `chains`.
fn listener(port: u16, head: &str, chains: &[String]) -> String {
    format!(
        "  - name: l{port}\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n{head}    filter_chains:\n{}",
        chains.concat()
    )
}

/// Tagged backends (each its own cluster, tagged with its name).
struct Backends(Vec<(String, Backend)>);

impl Backends {
    fn start(names: &[&str]) -> Backends {
        Backends(
            names
                .iter()
                .map(|n| (n.to_string(), Backend::tagged(n)))
                .collect(),
        )
    }

    fn clusters(&self) -> String {
        self.0
            .iter()
            .map(|(n, b)| static_cluster(n, &[(b.addr, 1)]))
            .collect()
    }
}

const ECDSA: Option<(&str, &str)> = Some(("server.pem", "server.key"));
const RSA: Option<(&str, &str)> = Some(("server-rsa.pem", "server-rsa.key"));

/// The chains of the SNI listener: exact, wildcards, by ALPN, TLS without a name, and
/// plaintext.
fn sni_chains(logs: &str) -> Vec<String> {
    vec![
        chain("server_names: [a.example.com]", "exact", ECDSA, logs),
        chain("server_names: ['*.example.com']", "wild", RSA, logs),
        chain(
            "server_names: ['*.b.example.com']",
            "longer_wild",
            ECDSA,
            logs,
        ),
        chain(
            "server_names: [alpn.test], application_protocols: [h2]",
            "h2",
            ECDSA,
            logs,
        ),
        chain("server_names: [alpn.test]", "alpn_other", RSA, logs),
        chain("transport_protocol: tls", "tls_default", ECDSA, logs),
        chain("transport_protocol: raw_buffer", "plain", None, logs),
    ]
}

const SNI_BACKENDS: &[&str] = &[
    "exact",
    "wild",
    "longer_wild",
    "h2",
    "alpn_other",
    "tls_default",
    "plain",
];

/// A TLS client's SNI and ALPN offer, the chain (backend tag) and certificate it must get.
type Case<'a> = (Option<&'a str>, &'a [&'a str], &'a str, &'a Vec<u8>);

#[test]
fn chains_are_picked_by_server_name_transport_and_alpn() {
    let backends = Backends::start(SNI_BACKENDS);
    let (admin, port) = (free_port(), free_port());
    let log = test_dir("tls_inspector_sni").join("access.log");
    let logs = file_access_log(
        &log,
        Some("                text_format_source: { inline_string: \"%REQUESTED_SERVER_NAME% %UPSTREAM_CLUSTER%\\n\" }\n"),
    );
    let logs = format!("          access_log:\n{logs}");
    let yaml = bootstrap(
        admin,
        &listener(port, INSPECTOR, &sni_chains(&logs)),
        &backends.clusters(),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    let (ecdsa, rsa) = (leaf("server.pem"), leaf("server-rsa.pem"));
    let cases: &[Case] = &[
        (Some("a.example.com"), &[], "exact", &ecdsa),
        (Some("c.example.com"), &[], "wild", &rsa),
        (Some("x.b.example.com"), &[], "longer_wild", &ecdsa),
        (Some("a.b.example.com"), &["h2"], "longer_wild", &ecdsa),
        (Some("alpn.test"), &["h2", "http/1.1"], "h2", &ecdsa),
        (Some("alpn.test"), &["http/1.1"], "alpn_other", &rsa),
        (Some("alpn.test"), &[], "alpn_other", &rsa),
        (Some("example.com"), &[], "tls_default", &ecdsa),
        (None, &["h2"], "tls_default", &ecdsa),
    ];
    for (sni, alpn, want, want_leaf) in cases {
        let got = reach_tls(port, *sni, alpn);
        assert_eq!(got.tag, *want, "SNI {sni:?}, ALPN {alpn:?}");
        assert!(
            got.leaf == **want_leaf,
            "SNI {sni:?}: the chain's certificate"
        );
    }
    // Plaintext on the same port: the raw_buffer chain, with the first bytes intact.
    let (tag, echo) = reach_plain(port, b"hello, plaintext\n");
    assert_eq!(
        (tag.as_str(), &echo[..]),
        ("plain", &b"hello, plaintext\n"[..])
    );
    let (tag, echo) = reach_plain(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((tag.as_str(), echo.len()), ("plain", 27));
    // Not a TLS record header after a handshake byte: plaintext too.
    let garbage = b"\x16\x00\x00\x05garbage";
    let (tag, echo) = reach_plain(port, garbage);
    assert_eq!((tag.as_str(), &echo[..]), ("plain", &garbage[..]));

    let tls = cases.len() as u64;
    let with_sni = cases.iter().filter(|c| c.0.is_some()).count() as u64;
    let with_alpn = cases.iter().filter(|c| !c.1.is_empty()).count() as u64;
    for (stat, want) in [
        ("tls_found", tls),
        ("tls_not_found", 3),
        ("sni_found", with_sni),
        ("sni_not_found", tls - with_sni),
        ("alpn_found", with_alpn),
        ("alpn_not_found", tls - with_alpn),
        ("client_hello_too_large", 0),
    ] {
        let name = format!("tls_inspector.{stat}");
        assert_eq!(
            proxy.wait_stat(&name, want, Duration::from_secs(5)),
            want,
            "{name}"
        );
    }
    // The access log: the SNI the inspector read ("-" without one).
    let lines = wait_log_lines(&log, cases.len() + 3);
    for want in [
        "a.example.com exact",
        "x.b.example.com longer_wild",
        "- tls_default",
        "- plain",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want:?} in {lines:?}");
    }
}

#[test]
fn a_client_hello_written_one_byte_at_a_time_is_read_whole() {
    let backends = Backends::start(SNI_BACKENDS);
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &listener(port, INSPECTOR, &sni_chains("")),
        &backends.clusters(),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    let (mut conn, verifier) = tls_client(Some("c.example.com"), &["h2"]);
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100, "a ClientHello of {} bytes", hello.len());
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    for b in &hello {
        s.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_micros(300));
    }
    let got = read_tag(rustls::StreamOwned::new(conn, s), &verifier);
    assert_eq!(got.tag, "wild");
    assert!(got.leaf == leaf("server-rsa.pem"));
    assert_eq!(
        proxy.wait_stat("tls_inspector.tls_found", 1, Duration::from_secs(5)),
        1
    );
}

#[test]
fn a_stalled_client_is_closed_at_the_listener_filters_timeout_or_passed_on() {
    let backends = Backends::start(&["tls_default", "plain"]);
    let (admin, closing, continuing) = (free_port(), free_port(), free_port());
    let chains = [
        chain("transport_protocol: tls", "tls_default", ECDSA, ""),
        chain("transport_protocol: raw_buffer", "plain", None, ""),
    ];
    let closing_head = format!("{INSPECTOR}    listener_filters_timeout: 0.5s\n");
    let continuing_head = format!(
        "{INSPECTOR}    listener_filters_timeout: 0.5s\n    continue_on_listener_filters_timeout: true\n"
    );
    let yaml = bootstrap(
        admin,
        &(listener(closing, &closing_head, &chains)
            + &listener(continuing, &continuing_head, &chains)),
        &backends.clusters(),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(closing), Duration::from_secs(10));
    proxy.wait_listening(local(continuing), Duration::from_secs(10));
    // Silent, and stalled in the middle of a record header: both closed near the deadline,
    // without reaching any backend.
    for first in [&b""[..], &b"\x16\x03\x01"[..]] {
        let mut s = connect_retry(local(closing), Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(first).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let end = s.read(&mut buf);
        let waited = started.elapsed();
        assert!(matches!(end, Ok(0) | Err(_)), "closed, not {end:?}");
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
            "closed after {waited:?}"
        );
    }
    let timeouts = format!("listener.127.0.0.1_{closing}.downstream_pre_cx_timeout");
    assert_eq!(proxy.wait_stat(&timeouts, 2, Duration::from_secs(5)), 2);
    // With continue_on_listener_filters_timeout: plaintext after the deadline, with what
    // was sent so far.
    let mut s = connect_retry(local(continuing), Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"\x16\x03\x01").unwrap();
    assert_eq!(read_line(&mut s).unwrap().trim(), "plain");
    let mut echo = [0u8; 3];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x16\x03\x01");
    assert_eq!(
        backends.0[0].1.accepted(),
        0,
        "no connection reached the TLS chain"
    );
    // Counted either way, as Envoy counts it.
    let continued = format!("listener.127.0.0.1_{continuing}.downstream_pre_cx_timeout");
    assert_eq!(proxy.wait_stat(&continued, 1, Duration::from_secs(5)), 1);
}

/// Envoy 1.40 accepts chains matching on server names on a listener without an inspector
/// and injects none: no connection has a server name, so only the other chain matches.
#[test]
fn server_names_without_an_inspector_never_match_as_in_envoy() {
    let backends = Backends::start(&["exact", "other"]);
    let (admin, port) = (free_port(), free_port());
    let chains = [
        chain("server_names: [a.example.com]", "exact", ECDSA, ""),
        chain("", "other", RSA, ""),
    ];
    let yaml = bootstrap(admin, &listener(port, "", &chains), &backends.clusters());
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    assert_eq!(reach_tls(port, Some("a.example.com"), &[]).tag, "other");
    assert_eq!(reach_tls(port, Some("b.example.com"), &[]).tag, "other");
    let stats = proxy.stats();
    assert!(
        !stats.contains_key("tls_inspector.sni_found"),
        "no inspector, no stats"
    );
}

#[test]
fn a_filter_chain_matcher_reads_server_name_and_transport_protocol() {
    let backends = Backends::start(&["exact", "tls_default", "plain"]);
    let (admin, port) = (free_port(), free_port());
    let chains = [
        chain("", "exact", ECDSA, ""),
        chain("", "tls_default", RSA, ""),
        chain("", "plain", None, ""),
    ];
    let matcher = r#"    filter_chain_matcher:
      matcher_tree:
        input:
          name: transport
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.TransportProtocolInput
        exact_match_map:
          map:
            raw_buffer:
              action: { name: plain, typed_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: plain } }
            tls:
              matcher:
                matcher_tree:
                  input:
                    name: sni
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ServerNameInput
                  exact_match_map:
                    map:
                      a.example.com:
                        action: { name: exact, typed_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: exact } }
                on_no_match:
                  action: { name: tls_default, typed_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: tls_default } }
"#;
    let yaml = bootstrap(
        admin,
        &(listener(port, INSPECTOR, &chains) + matcher),
        &backends.clusters(),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    assert_eq!(reach_tls(port, Some("a.example.com"), &[]).tag, "exact");
    assert_eq!(
        reach_tls(port, Some("b.example.com"), &[]).tag,
        "tls_default"
    );
    assert_eq!(reach_plain(port, b"plain\n").0, "plain");
}

/// A ClientHello longer than `max_client_hello_size` is `client_hello_too_large`, and the
/// connection is closed, with `close_connection_on_client_hello_parsing_errors` or without
/// (Envoy 1.40 closes it either way).
#[test]
fn a_client_hello_too_large_is_closed() {
    let backends = Backends::start(&["tls_default", "plain"]);
    let (admin, lenient, strict) = (free_port(), free_port(), free_port());
    let chains = [
        chain("transport_protocol: tls", "tls_default", ECDSA, ""),
        chain("transport_protocol: raw_buffer", "plain", None, ""),
    ];
    let small = INSPECTOR.to_string() + "        max_client_hello_size: 256\n";
    let closing = small.clone() + "        close_connection_on_client_hello_parsing_errors: true\n";
    let yaml = bootstrap(
        admin,
        &(listener(lenient, &small, &chains) + &listener(strict, &closing, &chains)),
        &backends.clusters(),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(lenient), Duration::from_secs(10));
    proxy.wait_listening(local(strict), Duration::from_secs(10));
    let long_name = format!("{}.example.com", "n".repeat(60));
    let hello = || {
        let (mut conn, _) = tls_client(Some(&long_name), &["h2", "http/1.1"]);
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        assert!(hello.len() > 256, "a ClientHello of {} bytes", hello.len());
        hello
    };
    for port in [lenient, strict] {
        let mut s = connect_retry(local(port), Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&hello()).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed");
    }
    let name = "tls_inspector.client_hello_too_large";
    assert_eq!(proxy.wait_stat(name, 2, Duration::from_secs(5)), 2);
    assert_eq!(
        backends.0[0].1.accepted(),
        0,
        "no connection reached the TLS chain"
    );
}

#[test]
fn first_bytes_that_are_no_client_hello_close_only_where_asked() {
    let backends = Backends::start(&["tls_default", "plain"]);
    let (admin, lenient, strict) = (free_port(), free_port(), free_port());
    let chains = [
        chain("transport_protocol: tls", "tls_default", ECDSA, ""),
        chain("transport_protocol: raw_buffer", "plain", None, ""),
    ];
    // A small first read too: the ClientHello is then read in more than one receive.
    let small_first = INSPECTOR.to_string() + "        initial_read_buffer_size: 256\n";
    let closing =
        INSPECTOR.to_string() + "        close_connection_on_client_hello_parsing_errors: true\n";
    let yaml = bootstrap(
        admin,
        &(listener(lenient, &small_first, &chains) + &listener(strict, &closing, &chains)),
        &backends.clusters(),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(lenient), Duration::from_secs(10));
    proxy.wait_listening(local(strict), Duration::from_secs(10));
    let request = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(
        reach_plain(lenient, request),
        ("plain".to_string(), request.to_vec())
    );
    let mut s = connect_retry(local(strict), Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "closed");
    // TLS still passes on both, the long ClientHello over several reads on the first.
    for port in [lenient, strict] {
        assert_eq!(reach_tls(port, Some("x.test"), &[]).tag, "tls_default");
    }
    assert!(proxy.wait_stat("tls_inspector.tls_not_found", 2, Duration::from_secs(5)) >= 2);
    assert_eq!(
        backends.0[1].1.accepted(),
        1,
        "only the lenient listener's client"
    );
}
