//! Config sources other than ADS: listeners, clusters and endpoint assignments from watched
//! files (`path_config_source`, Envoy's `DiscoveryResponse` format), and from gRPC streams of
//! their own (`api_config_source`, the Python server of `tests/xds_py/` serving LDS, CDS
//! and EDS as separate services, on two management servers).
//!
//! * files: traffic flows from the first read; a new version moved into place applies
//!   without disturbing an established connection; a write in place is not a change (Envoy
//!   watches moves only); a move into a `watched_directory` reloads the file it watches; a
//!   refused file (`update_rejected`) or an unparsable one (`update_failure`) changes
//!   nothing; a file missing at start stops the start;
//! * gRPC, State of the World and Delta: each type on its own stream of its own service
//!   (LDS from one server, CDS and EDS from another), ACKs, an endpoint update, a NACK that
//!   keeps the last good listener, `<prefix>.control_plane.connected_state` per stream (the
//!   LDS server gone: only its stream is down).
//!
//! The same files and servers run against real Envoy (`SWITCHYARD_TEST_PROXY=envoy`), with
//! the same stats.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::Duration;

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Resources (proto3 JSON with "@type", as in a file or a server's snapshot)
// ---------------------------------------------------------------------------------------------

fn socket(port: u32) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn tcp_listener(name: &str, port: u16, cluster: &str) -> Value {
    json!({
        "@type": LISTENER,
        "name": name,
        "address": socket(port.into()),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster},
        }]}],
    })
}

/// An EDS cluster whose assignment comes from `eds_config`.
fn eds_cluster_from(name: &str, eds_config: Value) -> Value {
    json!({
        "@type": CLUSTER,
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": eds_config},
    })
}

fn one_endpoint_cluster(name: &str, port: u16) -> Value {
    json!({
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": socket(port.into())}}
        ]}]},
    })
}

fn assignment_at(cluster: &str, port: u32) -> Value {
    json!({
        "@type": ENDPOINTS,
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(port)}}]}],
    })
}

/// A file's contents: Envoy's `DiscoveryResponse`.
fn discovery_response(version: &str, resources: Vec<Value>) -> Value {
    json!({"version_info": version, "resources": resources})
}

/// Writes `text` beside `path` and renames it into place, as Envoy's docs ask.
fn move_text_into_place(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it into place");
}

/// [`move_text_into_place`] of a response, as JSON (which YAML reads too).
fn move_into_place(path: &Path, doc: &Value) {
    move_text_into_place(path, &serde_json::to_string_pretty(doc).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// Waits until a new connection through `addr` reaches the backend tagged `tag`.
fn wait_reaches(proxy: &Proxy, addr: SocketAddr, tag: &str, what: &str) {
    let mut last = String::new();
    if !wait_until(WAIT, || match which_backend(addr) {
        Ok(t) => {
            last = t;
            last == tag
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    }) {
        panic!(
            "{what}: new connections through {addr} never reached {tag} (last: {last:?})\n{}",
            proxy.logs()
        );
    }
}

/// A new connection through `addr` reaches `tag` at once.
fn reaches_now(proxy: &Proxy, addr: SocketAddr, tag: &str, what: &str) {
    let got = which_backend(addr).map_err(|e| e.to_string());
    assert_eq!(got.as_deref(), Ok(tag), "{what}\n{}", proxy.logs());
}

/// An established connection to a tagged backend, pinged to show it is undisturbed.
struct Held {
    stream: TcpStream,
    round: u64,
}

impl Held {
    fn open(proxy: &Proxy, addr: SocketAddr, tag: &str) -> Held {
        let mut stream = connect_retry(addr, WAIT);
        let got = read_line(&mut stream).expect("the held connection's tag");
        assert_eq!(got, tag, "held connection\n{}", proxy.logs());
        Held { stream, round: 0 }
    }

    fn ping(&mut self, proxy: &Proxy, when: &str) {
        self.round += 1;
        let msg = Prng::bytes(0x5eed + self.round, 4096);
        match ping(&mut self.stream, &msg) {
            Ok(back) if back == msg => {}
            other => panic!(
                "{when}: the held connection broke: {:?}\n{}",
                other.map(|b| b.len()),
                proxy.logs()
            ),
        }
    }

    /// 1 MiB each way, SHA-exact, then a clean end.
    fn finish(self, proxy: &Proxy) {
        let n = 1 << 20;
        let x = exchange(self.stream, 0xf11e, n);
        assert!(
            x.sent == n && x.received == n && x.sent_sha == x.received_sha && x.end == End::Eof,
            "the held connection's last exchange: {x:?}\n{}",
            proxy.logs()
        );
    }
}

/// Asserts each `(stat, value)`.
fn assert_stats(proxy: &Proxy, want: &[(&str, u64)]) {
    let stats = proxy.stats();
    let wrong: Vec<String> = want
        .iter()
        .filter(|(name, v)| stats.get(*name) != Some(v))
        .map(|(name, v)| format!("{name}: {:?}, expected {v}", stats.get(*name)))
        .collect();
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), proxy.logs());
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn files_bootstrap(admin: u16, lds: &Path, cds: &Path, cds_dir: &Path) -> String {
    format!(
        r#"node: {{ id: files-test, cluster: switchyard-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
dynamic_resources:
  lds_config:
    resource_api_version: V3
    path_config_source: {{ path: "{lds}" }}
  cds_config:
    resource_api_version: V3
    path_config_source:
      path: "{cds}"
      watched_directory: {{ path: "{cds_dir}" }}
"#,
        lds = lds.display(),
        cds = cds.display(),
        cds_dir = cds_dir.display(),
    )
}

#[test]
fn listeners_clusters_and_endpoints_from_watched_files() {
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return;
    }
    let (a, b) = (Backend::tagged("a"), Backend::tagged("b"));
    let dir = test_dir("xds-files");
    let cds_dir = dir.join("clusters");
    std::fs::create_dir_all(&cds_dir).unwrap();
    let lds = dir.join("lds.yaml");
    let cds = cds_dir.join("cds.yaml");
    let eds = dir.join("eds.json");
    let (port, port2) = (free_port(), free_port());
    let (ingress, ingress2) = (local(port), local(port2));
    let eds_config = json!({"path_config_source": {"path": eds}});
    let svc = eds_cluster_from("svc", eds_config);
    move_into_place(
        &eds,
        &discovery_response("e1", vec![assignment_at("svc", a.port().into())]),
    );
    move_into_place(&cds, &discovery_response("c1", vec![svc.clone()]));
    move_into_place(
        &lds,
        &discovery_response("l1", vec![tcp_listener("ingress", port, "svc")]),
    );
    let yaml = files_bootstrap(free_port(), &lds, &cds, &cds_dir);
    let proxy = Proxy::start_with(kind, &yaml, ProxyOpts::default());

    wait_reaches(&proxy, ingress, "a", "first read");
    let mut held = Held::open(&proxy, ingress, "a");

    // A new assignment moved into place: new connections go to b, the held one stays.
    move_into_place(
        &eds,
        &discovery_response("e2", vec![assignment_at("svc", b.port().into())]),
    );
    wait_reaches(&proxy, ingress, "b", "endpoints moved into place");
    held.ping(&proxy, "after the endpoint update");

    // Written in place, not moved: not a change (a reader could see it half written).
    std::fs::write(
        &eds,
        serde_json::to_string(&discovery_response(
            "e3",
            vec![assignment_at("svc", a.port().into())],
        ))
        .unwrap(),
    )
    .unwrap();
    thread::sleep(Duration::from_millis(1500));
    reaches_now(&proxy, ingress, "b", "a file written in place is not read");

    // A refused assignment (port 70000): nothing changes, update_rejected counts it.
    move_into_place(
        &eds,
        &discovery_response("e4", vec![assignment_at("svc", 70000)]),
    );
    let rejected = proxy.wait_stat("cluster.svc.update_rejected", 1, WAIT);
    assert_eq!(rejected, 1, "{}", proxy.logs());
    reaches_now(&proxy, ingress, "b", "after a refused endpoint file");

    // A second listener, to a cluster that does not exist yet.
    let listeners = vec![
        tcp_listener("ingress", port, "svc"),
        tcp_listener("ingress2", port2, "direct"),
    ];
    move_into_place(&lds, &discovery_response("l2", listeners));
    let listening = wait_until(WAIT, || TcpStream::connect(ingress2).is_ok());
    assert!(listening, "the second listener\n{}", proxy.logs());
    held.ping(&proxy, "after the listener update");

    // Anything moved into the watched directory reloads the cluster file: `direct` arrives.
    let clusters = vec![svc, one_endpoint_cluster("direct", a.port())];
    move_into_place(&cds, &discovery_response("c2", clusters));
    wait_reaches(
        &proxy,
        ingress2,
        "a",
        "a cluster moved into the watched directory",
    );

    // A file that does not parse: update_failure, both listeners serve on.
    move_text_into_place(&lds, "version_info: l3\nresources: [ {\n");
    let failed = proxy.wait_stat("listener_manager.lds.update_failure", 1, WAIT);
    assert_eq!(failed, 1, "{}", proxy.logs());
    reaches_now(&proxy, ingress, "b", "after an unparsable listener file");
    reaches_now(&proxy, ingress2, "a", "after an unparsable listener file");
    held.ping(&proxy, "after the refused files");

    assert_stats(
        &proxy,
        &[
            ("listener_manager.lds.update_attempt", 3),
            ("listener_manager.lds.update_success", 2),
            ("listener_manager.lds.update_failure", 1),
            ("listener_manager.lds.update_rejected", 0),
            ("cluster_manager.cds.update_success", 2),
            ("cluster_manager.cds.update_rejected", 0),
            ("cluster.svc.update_attempt", 3),
            ("cluster.svc.update_success", 2),
            ("cluster.svc.update_rejected", 1),
        ],
    );
    held.finish(&proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_missing_at_start_stops_the_start() {
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return;
    }
    let dir = test_dir("xds-files-missing");
    let lds = dir.join("absent-lds.yaml");
    let cds = dir.join("cds.yaml");
    move_into_place(&cds, &discovery_response("c1", vec![]));
    let yaml = files_bootstrap(free_port(), &lds, &cds, &dir);
    let mut proxy = Proxy::spawn(kind, &yaml, ProxyOpts::default());
    let status = proxy.wait_exit(WAIT);
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}\n{}",
        proxy.logs()
    );
    let logs = proxy.logs();
    assert!(
        logs.contains(&lds.display().to_string()) && logs.contains("does not exist"),
        "{logs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// gRPC streams of their own
// ---------------------------------------------------------------------------------------------

/// A management server's static cluster (HTTP/2).
fn management_cluster(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}

/// `api_config_source` of `api` (GRPC or DELTA_GRPC) through `cluster`, as JSON.
fn api_source(api: &str, cluster: &str) -> Value {
    json!({
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": api,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}],
        },
    })
}

fn grpc_bootstrap(admin: u16, api: &str, lds_server: &Ads, cds_server: &Ads) -> String {
    let source = |cluster: &str| serde_json::to_string(&api_source(api, cluster)).unwrap();
    format!(
        r#"node: {{ id: grpc-test, cluster: switchyard-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
dynamic_resources:
  lds_config: {lds}
  cds_config: {cds}
static_resources:
  clusters:
{lds_cluster}{cds_cluster}"#,
        lds = source("lds_server"),
        cds = source("cds_server"),
        lds_cluster = management_cluster("lds_server", lds_server.port),
        cds_cluster = management_cluster("cds_server", cds_server.port),
    )
}

/// The first event of `server` from `from` on that satisfies `want`.
fn event(server: &Ads, proxy: &Proxy, from: usize, what: &str, want: impl Fn(&Value) -> bool) {
    if let Err(e) = server.wait_event(from, what, want) {
        panic!("{e}\n{}", proxy.logs());
    }
}

/// The proxy's answer (`ack` or `nack`) to the response of `type_url` at `version`.
fn answered(server: &Ads, proxy: &Proxy, type_url: &str, version: &str, answer: &str) {
    let sent = server
        .wait_event(0, &format!("{type_url} {version} sent"), |e| {
            e["event"] == "sent" && e["type_url"] == type_url && e["version"] == version
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.logs()));
    let nonce = sent["nonce"].clone();
    event(server, proxy, 0, &format!("{answer} of {sent}"), |e| {
        e["event"] == answer && e["response_nonce"] == nonce
    });
}

fn each_type_on_its_own_stream(api: &str) {
    let kind = selected_proxy();
    if !proxy_available(kind)
        || !require(
            python_ready(),
            &format!(
                "{} with grpc and xds-protos importable (run ci/install-deps)",
                python().display()
            ),
        )
    {
        return;
    }
    let (a, b) = (Backend::tagged("a"), Backend::tagged("b"));
    let mut lds_server = Ads::start();
    let mut cds_server = Ads::start();
    let port = free_port();
    let ingress = local(port);
    lds_server.set(LISTENER, "l1", vec![tcp_listener("ingress", port, "svc")]);
    cds_server.set(ENDPOINTS, "e1", vec![assignment_at("svc", a.port().into())]);
    let svc = eds_cluster_from("svc", api_source(api, "cds_server"));
    cds_server.set(CLUSTER, "c1", vec![svc]);
    let yaml = grpc_bootstrap(free_port(), api, &lds_server, &cds_server);
    let proxy = Proxy::start_with(kind, &yaml, ProxyOpts::default());
    wait_reaches(&proxy, ingress, "a", "first sync");

    // Each type on a stream of its own service; every response ACKed.
    for (server, service) in [
        (&lds_server, "lds"),
        (&cds_server, "cds"),
        (&cds_server, "eds"),
    ] {
        event(server, &proxy, 0, &format!("a {service} stream"), |e| {
            e["event"] == "stream_open" && e["service"] == service
        });
    }
    answered(&lds_server, &proxy, LISTENER, "l1", "ack");
    answered(&cds_server, &proxy, CLUSTER, "c1", "ack");
    answered(&cds_server, &proxy, ENDPOINTS, "e1", "ack");
    let mut held = Held::open(&proxy, ingress, "a");

    // An endpoint update over the EDS stream.
    cds_server.set(ENDPOINTS, "e2", vec![assignment_at("svc", b.port().into())]);
    answered(&cds_server, &proxy, ENDPOINTS, "e2", "ack");
    wait_reaches(&proxy, ingress, "b", "endpoint update");
    held.ping(&proxy, "after the endpoint update");

    // A refused listener: NACKed, the last good version serves on.
    lds_server.set(
        LISTENER,
        "l2",
        vec![tcp_listener_on("ingress", 70000, "svc")],
    );
    answered(&lds_server, &proxy, LISTENER, "l2", "nack");
    let rejected = proxy.wait_stat("listener_manager.lds.update_rejected", 1, WAIT);
    assert_eq!(rejected, 1, "{}", proxy.logs());
    reaches_now(&proxy, ingress, "b", "after the NACK");
    assert_stats(
        &proxy,
        &[
            ("listener_manager.lds.update_success", 1),
            ("cluster_manager.cds.update_success", 1),
            ("cluster.svc.update_success", 2),
            ("listener_manager.lds.control_plane.connected_state", 1),
            ("cluster_manager.cds.control_plane.connected_state", 1),
            ("cluster.svc.control_plane.connected_state", 1),
        ],
    );

    // The LDS server gone: its stream is down, the others are not, traffic goes on.
    lds_server.kill();
    let down = proxy.wait_stat(
        "listener_manager.lds.control_plane.connected_state",
        0,
        WAIT,
    );
    assert_eq!(down, 0, "{}", proxy.logs());
    assert_stats(
        &proxy,
        &[
            ("cluster_manager.cds.control_plane.connected_state", 1),
            ("cluster.svc.control_plane.connected_state", 1),
        ],
    );
    reaches_now(&proxy, ingress, "b", "with the LDS server gone");
    held.finish(&proxy);
}

/// A listener on a port number that may be out of range.
fn tcp_listener_on(name: &str, port: u32, cluster: &str) -> Value {
    let mut l = tcp_listener(name, 1, cluster);
    l["address"] = socket(port);
    l
}

#[test]
fn each_type_on_its_own_stream_sotw() {
    each_type_on_its_own_stream("GRPC");
}

#[test]
fn each_type_on_its_own_stream_delta() {
    each_type_on_its_own_stream("DELTA_GRPC");
}
