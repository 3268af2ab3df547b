//! Secrets (SDS) through the real proxy, against Switchyard and (CI's second pass) Envoy on
//! the same files:
//!
//! * a chain's certificate from `static_resources.secrets`, another from a watched file
//!   (`path_config_source`); a new certificate moved into place reaches new handshakes
//!   within a second, ten times over, while `switchyard-bench rr --tls` keeps eight
//!   established connections busy with no error; a secret file whose key does not belong to its certificate is refused
//!   (`sds.<name>.update_rejected`) and the last good certificate keeps serving;
//! * mTLS whose trust bundle comes from SDS through a `combined_validation_context` (the
//!   SAN matcher inline, the CA from the file): the client is accepted, an intruder refused,
//!   and a new trust bundle that no longer trusts the client's CA refuses new handshakes of
//!   the same client while its established connection goes on;
//! * a listener over LDS whose certificate comes over ADS warms until the secret arrives,
//!   then serves; a bad secret is NACKed, naming the field, and the old one keeps serving;
//!   the same over Delta ADS (the secret subscribed by name, NACKed when bad, rotated).

mod common;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any as PbAny;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard_control::xds::fixtures::{self, any};
use switchyard_control::xds::server::{start_server, DeltaHandle, SotwHandle};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// SDS needs the node's id and cluster (Envoy refuses the bootstrap without them).
const NODE: &str = "node: { id: sds-test, cluster: test }\n";
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// A file subscription's contents: one `tls_certificate` secret `name` (chain and key from
/// the test PKI).
fn certificate_file(name: &str, chain: &str, key: &str) -> String {
    format!(
        r#"resources:
- "@type": {SECRET_TYPE}
  name: {name}
  tls_certificate:
    certificate_chain: {{ filename: {} }}
    private_key: {{ filename: {} }}
"#,
        cert(chain).display(),
        cert(key).display()
    )
}

/// A file subscription's contents: one `validation_context` secret trusting `ca`.
fn trust_file(name: &str, ca: &str) -> String {
    format!(
        r#"resources:
- "@type": {SECRET_TYPE}
  name: {name}
  validation_context:
    trusted_ca: {{ filename: {} }}
"#,
        cert(ca).display()
    )
}

/// Replaces `path` with `text` the way a writer must (a temporary file renamed onto it).
fn move_into(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A DownstreamTlsContext transport socket whose certificate is SDS secret `name` from
/// `source` (`sds_config` YAML lines indented for it, or none for a static secret), with
/// `top` beside `common_tls_context` and `common` inside it.
fn sds_tls(name: &str, sds_config: Option<&str>, top: &str, common: &str) -> String {
    let source = sds_config.map_or(String::new(), |s| format!("              sds_config:\n{s}"));
    let certificates = format!(
        "            tls_certificate_sds_secret_configs:\n            - name: {name}\n{source}{common}"
    );
    downstream_tls_socket(top, &certificates)
}

/// `sds_config` lines for a file.
fn file_source(path: &Path) -> String {
    format!(
        "                path_config_source: {{ path: {} }}\n                resource_api_version: V3\n",
        path.display()
    )
}

/// The leaf certificate a TLS listener on `port` serves to a new handshake (`None` when
/// the handshake fails).
fn served_leaf(port: u16, identity: Option<&str>) -> Option<Vec<u8>> {
    let mut s = tls_connect(local(port), client_config(identity));
    s.write_all(b"ping").ok()?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).ok()?;
    let leaf = s.conn.peer_certificates()?.first()?.to_vec();
    Some(leaf)
}

/// Polls new handshakes on `port` until one is served `want`; how long it took.
fn wait_for_leaf(port: u16, want: &[u8], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if served_leaf(port, None).as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "new handshakes on {port} were not served the new certificate within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `switchyard-bench rr --tls --conns 8 --msg 4k` to `port` for `duration`, on a thread.
fn bench_rr(port: u16, duration: Duration) -> std::thread::JoinHandle<switchyard_bench::RrReport> {
    let mut cfg = switchyard_bench::RrConfig::new(local(port));
    cfg.conns = 8;
    cfg.msg = 4096;
    cfg.duration = duration;
    cfg.tls = Some(switchyard_bench::TlsOptions::new(cert("ca.pem")));
    std::thread::spawn(move || switchyard_bench::run_rr(&cfg).expect("rr runs"))
}

#[test]
fn static_and_file_secrets_serve_and_ten_rotations_reach_new_handshakes_only() {
    let backend = Backend::echo();
    let dir = test_dir("sds-rotate");
    let file = dir.join("server-cert.yaml");
    std::fs::write(
        &file,
        certificate_file("server_cert", "server.pem", "server.key"),
    )
    .unwrap();
    let (admin, static_port, file_port) = (free_port(), free_port(), free_port());
    let listeners = tcp_listener("static", static_port, "static", "echo")
        + &sds_tls("static_cert", None, "", "")
        + &tcp_listener("file", file_port, "file", "echo")
        + &sds_tls("server_cert", Some(&file_source(&file)), "", "");
    let secrets = format!(
        r#"  secrets:
  - name: static_cert
    tls_certificate:
      certificate_chain: {{ filename: {} }}
      private_key: {{ filename: {} }}
"#,
        cert("server-rsa.pem").display(),
        cert("server-rsa.key").display()
    );
    let yaml = NODE.to_string()
        + &bootstrap(
            admin,
            &listeners,
            &static_cluster("echo", &[(backend.addr, 1)]),
        )
        + &secrets;
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(file_port), Duration::from_secs(10));
    let (ecdsa, rsa) = (leaf("server.pem"), leaf("server-rsa.pem"));
    assert_eq!(served_leaf(static_port, None), Some(rsa.clone()));
    wait_for_leaf(file_port, &ecdsa, Duration::from_secs(10));
    dumped_secret(&proxy, "static_secrets", "static_cert");
    dumped_secret(&proxy, "dynamic_active_secrets", "server_cert");

    // Ten rotations under `switchyard-bench rr` (8 TLS connections): each reaches new
    // handshakes within a second; the established connections never notice.
    let rr = bench_rr(file_port, Duration::from_secs(8));
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (chain, key, leaf) = if i % 2 == 0 {
            ("server-rsa.pem", "server-rsa.key", &rsa)
        } else {
            ("server.pem", "server.key", &ecdsa)
        };
        move_into(&file, &certificate_file("server_cert", chain, key));
        slowest = slowest.max(wait_for_leaf(file_port, leaf, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = rr.join().expect("rr");
    eprintln!(
        "10 rotations: slowest reached new handshakes in {slowest:?}; {} requests",
        report.results.requests
    );
    assert_eq!(report.errors_total, 0, "{:?}", report.error_samples);
    assert_eq!(
        report.results.connections_ok, 8,
        "every connection ran to the end"
    );
    assert!(
        report.results.requests >= 80,
        "the established connections stalled"
    );

    // A key that does not belong to its certificate: refused, the last good one serves.
    let rejected = proxy.stat("sds.server_cert.update_rejected");
    move_into(
        &file,
        &certificate_file("server_cert", "server.pem", "server-rsa.key"),
    );
    proxy.wait_stat(
        "sds.server_cert.update_rejected",
        rejected + 1,
        Duration::from_secs(5),
    );
    assert_eq!(served_leaf(file_port, None), Some(ecdsa));
    assert!(proxy.stat("sds.server_cert.update_success") >= 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_trust_bundle_from_sds_is_merged_and_rotated() {
    let backend = Backend::echo();
    let dir = test_dir("sds-trust");
    let file = dir.join("trust.yaml");
    std::fs::write(&file, trust_file("trust", "ca.pem")).unwrap();
    let (admin, port) = (free_port(), free_port());
    let common = format!(
        r#"            combined_validation_context:
              default_validation_context:
                match_typed_subject_alt_names:
                - san_type: URI
                  matcher: {{ exact: "spiffe://cluster.local/ns/default/sa/client" }}
              validation_context_sds_secret_config:
                name: trust
                sds_config:
{}"#,
        file_source(&file).replace("                ", "                  ")
    );
    let secrets = format!(
        r#"  secrets:
  - name: server
    tls_certificate:
      certificate_chain: {{ filename: {} }}
      private_key: {{ filename: {} }}
"#,
        cert("server.pem").display(),
        cert("server.key").display()
    );
    let tls = sds_tls(
        "server",
        None,
        "          require_client_certificate: true\n",
        &common,
    );
    let yaml = NODE.to_string()
        + &bootstrap(
            admin,
            &(tcp_listener("mtls", port, "mtls", "echo") + &tls),
            &static_cluster("echo", &[(backend.addr, 1)]),
        )
        + &secrets;
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    let started = Instant::now();
    while served_leaf(port, Some("client")).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the client is refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(served_leaf(port, Some("intruder")), None);
    assert!(proxy.stat(&format!("listener.127.0.0.1_{port}.ssl.fail_verify_san")) >= 1);

    // An established mTLS connection, then a bundle that no longer trusts the client's CA.
    let mut established = tls_connect(local(port), client_config(Some("client")));
    assert_eq!(
        echo_once(&mut established, b"before"),
        Some(b"before".to_vec())
    );
    move_into(&file, &trust_file("trust", "other-ca.pem"));
    let started = Instant::now();
    while served_leaf(port, Some("client")).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the new trust bundle did not reach new handshakes within a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        echo_once(&mut established, b"after"),
        Some(b"after".to_vec())
    );
    assert!(proxy.stat(&format!("listener.127.0.0.1_{port}.ssl.fail_verify_error")) >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn echo_once(s: &mut TlsStream, msg: &[u8]) -> Option<Vec<u8>> {
    s.write_all(msg).ok()?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).ok()?;
    Some(got)
}

/// A `tls_certificate` secret resource with inline PEM.
fn certificate_secret(name: &str, chain: &str, key: &str) -> Secret {
    let inline = |file: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(
            std::fs::read_to_string(cert(file)).unwrap(),
        )),
        ..DataSource::default()
    };
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain)),
            private_key: Some(inline(key)),
            ..TlsCertificate::default()
        })),
    }
}

/// The next request of `type_url` on `stream` (others are answered by the caller's loop).
fn next_request(stream: &SotwHandle, type_url: &str, within: Duration) -> DiscoveryRequest {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let req = stream
            .requests
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {type_url} request within {within:?}"));
        if req.type_url == type_url {
            return req;
        }
    }
}

fn respond(stream: &SotwHandle, type_url: &str, version: &str, resources: Vec<PbAny>) {
    let response = DiscoveryResponse {
        version_info: version.into(),
        type_url: type_url.into(),
        nonce: format!("n{version}"),
        resources,
        ..DiscoveryResponse::default()
    };
    stream.responses.blocking_send(Ok(response)).unwrap();
}

/// A proxy whose listeners and clusters come over ADS (`api`: `GRPC` or `DELTA_GRPC`) from
/// the scripted server, and the listener (named `name`, to the echo) it will be sent, whose
/// certificate is the ADS secret `secret`. `None` when the proxy binary is missing.
struct AdsSetup {
    _backend: Backend,
    proxy: Proxy,
    port: u16,
    listener: PbAny,
    sotw: std::sync::mpsc::Receiver<SotwHandle>,
    delta: std::sync::mpsc::Receiver<DeltaHandle>,
}

fn ads_setup(api: &str, name: &str, secret: &str) -> Option<AdsSetup> {
    let backend = Backend::echo();
    let (server_addr, sotw, delta) = start_server();
    let (admin, port) = (free_port(), free_port());
    let listener = tcp_listener(name, port, name, "echo")
        + &sds_tls(
            secret,
            Some("                ads: {}\n                resource_api_version: V3\n"),
            "",
            "",
        );
    let yaml = fixtures::ads_bootstrap("sds-test", admin, server_addr, api, "15s")
        + &static_cluster("echo", &[(backend.addr, 1)]);
    let kind = selected_proxy();
    if !require(proxy_available(kind), "the proxy binary under test") {
        return None;
    }
    // Not waited for: it is INITIALIZING until the server answers.
    let proxy = Proxy::spawn(kind, &yaml, ProxyOpts::default());
    Some(AdsSetup {
        _backend: backend,
        proxy,
        port,
        listener: yaml_listener_any(&listener),
        sotw,
        delta,
    })
}

#[test]
fn a_listener_warms_until_its_secret_arrives_over_ads_and_a_bad_secret_is_nacked() {
    // `_backend` bound, not `..`: the echo must live as long as the test.
    let Some(AdsSetup {
        _backend,
        proxy,
        port,
        listener,
        sotw: streams,
        ..
    }) = ads_setup("GRPC", "warm", "ads_cert")
    else {
        return;
    };
    let stream = streams
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy opens an ADS stream");
    next_request(&stream, CLUSTER_TYPE, Duration::from_secs(10));
    respond(&stream, CLUSTER_TYPE, "1", Vec::new());
    next_request(&stream, LISTENER_TYPE, Duration::from_secs(10));
    respond(&stream, LISTENER_TYPE, "1", vec![listener]);
    let req = next_request(&stream, SECRET_TYPE, Duration::from_secs(10));
    assert_eq!(req.resource_names, vec!["ads_cert".to_string()]);
    // Warming: not listening until the secret arrives.
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .get("/config_dump")
            .body
            .contains("warming_state")),
        "the listener is not warming: {}",
        proxy.get("/config_dump").body
    );
    assert!(
        connect(local(port)).is_err(),
        "a listener without its secret must warm, not serve"
    );
    let good = certificate_secret("ads_cert", "server.pem", "server.key");
    respond(&stream, SECRET_TYPE, "1", vec![any(SECRET_TYPE, &good)]);
    proxy.wait_listening(local(port), Duration::from_secs(10));
    wait_for_leaf(port, &leaf("server.pem"), Duration::from_secs(5));
    let dumped = dumped_secret(&proxy, "dynamic_active_secrets", "ads_cert");
    assert_eq!(dumped["version_info"], "1", "{dumped}");

    // A key that is not the certificate's: NACKed, the old certificate serves.
    let bad = certificate_secret("ads_cert", "server.pem", "server-rsa.key");
    respond(&stream, SECRET_TYPE, "2", vec![any(SECRET_TYPE, &bad)]);
    let nack = loop {
        let r = next_request(&stream, SECRET_TYPE, Duration::from_secs(10));
        if r.response_nonce == "n2" {
            break r;
        }
    };
    // Switchyard names the secret and the field; Envoy quotes BoringSSL's reason.
    let detail = nack.error_detail.expect("a NACK").message;
    assert!(
        detail.contains("tls_certificate") || detail.contains("private key"),
        "{detail}"
    );
    assert_eq!(nack.version_info, "1");
    assert_eq!(served_leaf(port, None), Some(leaf("server.pem")));
    assert!(proxy.stat("sds.ads_cert.update_rejected") >= 1);
    // Rotation over ADS.
    let rsa = certificate_secret("ads_cert", "server-rsa.pem", "server-rsa.key");
    respond(&stream, SECRET_TYPE, "3", vec![any(SECRET_TYPE, &rsa)]);
    wait_for_leaf(port, &leaf("server-rsa.pem"), Duration::from_secs(1));
}

/// The entry named `name` of `/config_dump?resource=<field>` (Envoy's `StaticSecret` or
/// `DynamicSecret`): there, with its secret, and its private key redacted.
fn dumped_secret(proxy: &Proxy, field: &str, name: &str) -> serde_json::Value {
    let body = proxy.get(&format!("/config_dump?resource={field}")).body;
    let dump: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let entry = dump["configs"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {field}: {body}"))
        .clone();
    assert!(
        entry["secret"]["tls_certificate"]["private_key"].is_object(),
        "{entry}"
    );
    assert!(!body.contains("PRIVATE KEY"), "a key in the dump: {body}");
    entry
}

/// A listener item of the test YAML as an LDS resource.
fn yaml_listener_any(item: &str) -> PbAny {
    let yaml = format!("listeners:\n{item}");
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    let mut listener = value["listeners"][0].clone();
    listener["@type"] = LISTENER_TYPE.into();
    switchyard_control::xds::resource::from_json(&listener).expect("a listener")
}

/// The next Delta request of `type_url` on `stream`.
fn next_delta_request(
    stream: &DeltaHandle,
    type_url: &str,
    within: Duration,
) -> DeltaDiscoveryRequest {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let req = stream
            .requests
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no Delta {type_url} request within {within:?}"));
        if req.type_url == type_url {
            return req;
        }
    }
}

/// A Delta response of `type_url` with `resources` (name, version, payload).
fn delta_respond(stream: &DeltaHandle, type_url: &str, nonce: &str, resources: Vec<(&str, PbAny)>) {
    let response = DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources: resources
            .into_iter()
            .map(|(name, any)| Resource {
                name: name.into(),
                version: nonce.into(),
                resource: Some(any),
                ..Resource::default()
            })
            .collect(),
        ..DeltaDiscoveryResponse::default()
    };
    stream.responses.blocking_send(Ok(response)).unwrap();
}

#[test]
fn a_secret_over_delta_ads_is_subscribed_by_name_nacked_when_bad_and_rotated() {
    let Some(AdsSetup {
        _backend,
        proxy,
        port,
        listener,
        delta: streams,
        ..
    }) = ads_setup("DELTA_GRPC", "delta", "delta_cert")
    else {
        return;
    };
    let stream = streams
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy opens a Delta ADS stream");
    let wait = Duration::from_secs(10);
    next_delta_request(&stream, CLUSTER_TYPE, wait);
    delta_respond(&stream, CLUSTER_TYPE, "c1", Vec::new());
    next_delta_request(&stream, LISTENER_TYPE, wait);
    delta_respond(&stream, LISTENER_TYPE, "l1", vec![("delta", listener)]);
    let req = loop {
        let r = next_delta_request(&stream, SECRET_TYPE, wait);
        if !r.resource_names_subscribe.is_empty() {
            break r;
        }
    };
    assert_eq!(req.resource_names_subscribe, vec!["delta_cert".to_string()]);
    let good = certificate_secret("delta_cert", "server.pem", "server.key");
    delta_respond(
        &stream,
        SECRET_TYPE,
        "s1",
        vec![("delta_cert", any(SECRET_TYPE, &good))],
    );
    proxy.wait_listening(local(port), wait);
    wait_for_leaf(port, &leaf("server.pem"), Duration::from_secs(5));

    let bad = certificate_secret("delta_cert", "server.pem", "server-rsa.key");
    delta_respond(
        &stream,
        SECRET_TYPE,
        "s2",
        vec![("delta_cert", any(SECRET_TYPE, &bad))],
    );
    let nack = loop {
        let r = next_delta_request(&stream, SECRET_TYPE, wait);
        if r.response_nonce == "s2" {
            break r;
        }
    };
    assert!(nack.error_detail.is_some(), "a NACK");
    assert_eq!(served_leaf(port, None), Some(leaf("server.pem")));

    let rsa = certificate_secret("delta_cert", "server-rsa.pem", "server-rsa.key");
    delta_respond(
        &stream,
        SECRET_TYPE,
        "s3",
        vec![("delta_cert", any(SECRET_TYPE, &rsa))],
    );
    wait_for_leaf(port, &leaf("server-rsa.pem"), Duration::from_secs(1));
}
