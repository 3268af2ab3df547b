//! Secrets (SDS) through the real proxy, against Switchyard and (CI's second pass) Envoy on
//! the same files:
//!
//! * a chain's certificate from `static_resources.secrets`, another from a watched file
//!   (`path_config_source`); a new certificate moved into place reaches new handshakes
//!   within a second, ten times over, while eight established TLS connections keep echoing
//!   with no error; a secret file whose key does not belong to its certificate is refused
//!   (`sds.<name>.update_rejected`) and the last good certificate keeps serving;
//! * mTLS whose trust bundle comes from SDS through a `combined_validation_context` (the
//!   SAN matcher inline, the CA from the file): the client is accepted, an intruder refused,
//!   and a new trust bundle that no longer trusts the client's CA refuses new handshakes of
//!   the same client while its established connection goes on;
//! * a listener over LDS whose certificate comes over ADS warms until the secret arrives,
//!   then serves; a bad secret is NACKed, naming the field, and the old one keeps serving.

mod common;

use common::*;
use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any as PbAny;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_control::xds::fixtures::{self, any};
use switchyard_control::xds::server::{start_server, SotwHandle};

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

fn leaf_of(name: &str) -> Vec<u8> {
    certs(name).remove(0).to_vec()
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

/// Eight TLS connections to `port` echoing 4 KiB requests back to back until `stop`;
/// counts round trips and errors.
struct Load {
    stop: Arc<AtomicBool>,
    trips: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let trips = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let threads = (0..8u8)
            .map(|i| {
                let (stop, trips, errors) = (stop.clone(), trips.clone(), errors.clone());
                std::thread::spawn(move || {
                    let mut s = tls_connect(local(port), client_config(None));
                    let msg = vec![i; 4096];
                    let mut got = vec![0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        let ok = s.write_all(&msg).is_ok()
                            && s.read_exact(&mut got).is_ok()
                            && got == msg;
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        trips.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            trips,
            errors,
            threads,
        }
    }

    /// Stops the clients; (round trips, errors).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load client");
        }
        (
            self.trips.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
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
    let (ecdsa, rsa) = (leaf_of("server.pem"), leaf_of("server-rsa.pem"));
    assert_eq!(served_leaf(static_port, None), Some(rsa.clone()));
    wait_for_leaf(file_port, &ecdsa, Duration::from_secs(10));

    // Ten rotations under load: each reaches new handshakes within a second; the eight
    // established connections never notice.
    let load = Load::start(file_port);
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (chain, key, leaf) = if i % 2 == 0 {
            ("server-rsa.pem", "server-rsa.key", &rsa)
        } else {
            ("server.pem", "server.key", &ecdsa)
        };
        move_into(&file, &certificate_file("server_cert", chain, key));
        slowest = slowest.max(wait_for_leaf(file_port, leaf, Duration::from_secs(1)));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (trips, errors) = load.finish();
    eprintln!("10 rotations: slowest reached new handshakes in {slowest:?}; {trips} round trips");
    assert_eq!(errors, 0, "an established connection saw an error");
    assert!(trips >= 80, "the established connections stalled: {trips}");

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

#[test]
fn a_listener_warms_until_its_secret_arrives_over_ads_and_a_bad_secret_is_nacked() {
    let backend = Backend::echo();
    let (server_addr, streams, _) = start_server();
    let (admin, port) = (free_port(), free_port());
    let listener = tcp_listener("warm", port, "warm", "echo")
        + &sds_tls(
            "ads_cert",
            Some("                ads: {}\n                resource_api_version: V3\n"),
            "",
            "",
        );
    let yaml = fixtures::ads_bootstrap("sds-test", admin, server_addr, "GRPC", "15s")
        + &static_cluster("echo", &[(backend.addr, 1)]);
    let kind = selected_proxy();
    if !require(proxy_available(kind), "the proxy binary under test") {
        return;
    }
    // Not waited for: it is INITIALIZING until the server answers.
    let proxy = Proxy::spawn(kind, &yaml, ProxyOpts::default());
    let stream = streams
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy opens an ADS stream");
    next_request(&stream, CLUSTER_TYPE, Duration::from_secs(10));
    respond(&stream, CLUSTER_TYPE, "1", Vec::new());
    next_request(&stream, LISTENER_TYPE, Duration::from_secs(10));
    respond(
        &stream,
        LISTENER_TYPE,
        "1",
        vec![yaml_listener_any(&listener)],
    );
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
    wait_for_leaf(port, &leaf_of("server.pem"), Duration::from_secs(5));

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
    assert_eq!(served_leaf(port, None), Some(leaf_of("server.pem")));
    assert!(proxy.stat("sds.ads_cert.update_rejected") >= 1);
    // Rotation over ADS.
    let rsa = certificate_secret("ads_cert", "server-rsa.pem", "server-rsa.key");
    respond(&stream, SECRET_TYPE, "3", vec![any(SECRET_TYPE, &rsa)]);
    wait_for_leaf(port, &leaf_of("server-rsa.pem"), Duration::from_secs(1));
}

/// A listener item of the test YAML as an LDS resource.
fn yaml_listener_any(item: &str) -> PbAny {
    let yaml = format!("listeners:\n{item}");
    let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
    let mut listener = value["listeners"][0].clone();
    listener["@type"] = LISTENER_TYPE.into();
    switchyard_control::xds::resource::from_json(&listener).expect("a listener")
}
