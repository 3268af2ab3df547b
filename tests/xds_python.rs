//! xDS against a management server that shares no code with ours: `tests/xds_py/ads_server.py`,
//! on PyPI's `grpcio` and `xds-protos` (Python protobuf classes generated from Envoy's
//! data-plane-api; resources built from proto3 JSON by `json_format`). It serves a snapshot
//! (per type: a version and its resources) over State of the World and Delta ADS, takes
//! `{"op":"set",...}` lines on stdin and reports every request, ACK, NACK and response as one
//! JSON line on stdout (see the script's docstring).
//!
//! Scenarios, each over SotW and over Delta:
//!
//! * initial sync: INITIALIZING (`/ready` 503) until clusters, endpoints and listeners are in,
//!   then traffic; an endpoint update moves new connections while an established one keeps
//!   working byte-exact; listeners and clusters removed (SotW: left out; Delta:
//!   `removed_resources`);
//! * NACKs of invalid resources (port 70000, duplicate names, an unknown filter type, a
//!   malformed CIDR, an endpoint without an address): the last good config is kept, traffic is
//!   not disturbed, `*.update_rejected` counts them, and a valid update afterwards applies;
//! * the server killed: the last config keeps serving, the proxy reconnects with backoff (a
//!   bounded number of attempts) to a new server on the same port and resyncs (SotW announces
//!   its versions, Delta its `initial_resource_versions`);
//! * Switchyard only: a warm start from `--state-dir` serves before the (new) server answers.
//!
//! The same file runs against real Envoy (`SWITCHYARD_TEST_PROXY=envoy`). Prerequisite:
//! `<repo>/.venv/bin/python` with `grpc` and `xds-protos` importable (`ci/install-deps`).

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const UNKNOWN_FILTER: &str = "type.googleapis.com/example.UnknownFilter";

const WAIT: Duration = Duration::from_secs(15);
/// The longest reconnect delay of Envoy's and Switchyard's backoff (30 s), and a margin.
const RECONNECT_WAIT: Duration = Duration::from_secs(35);

// ---------------------------------------------------------------------------------------------
// Resources as proto3 JSON
// ---------------------------------------------------------------------------------------------

fn socket(ip: &str, port: u32) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

fn eds_cluster(name: &str) -> Value {
    json!({
        "@type": CLUSTER,
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
    })
}

fn static_cluster(name: &str, port: u32) -> Value {
    json!({
        "@type": CLUSTER,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [lb_endpoint(port)]}],
        },
    })
}

fn lb_endpoint(port: u32) -> Value {
    json!({"endpoint": {"address": socket("127.0.0.1", port)}})
}

/// The endpoint assignment of `cluster` with these `lb_endpoints`.
fn assignment_of(cluster: &str, lb_endpoints: Vec<Value>) -> Value {
    json!({
        "@type": ENDPOINTS,
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": lb_endpoints}],
    })
}

fn assignment(cluster: &str, backend: &Backend) -> Value {
    assignment_of(cluster, vec![lb_endpoint(backend.port().into())])
}

/// A tcp_proxy listener on 127.0.0.1:`port` whose filter's `@type` is `filter_type`.
fn listener_with_filter(name: &str, port: u32, cluster: &str, filter_type: &str) -> Value {
    let typed_config = if filter_type == TCP_PROXY {
        json!({"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster})
    } else {
        json!({"@type": filter_type})
    };
    json!({
        "@type": LISTENER,
        "name": name,
        "address": socket("127.0.0.1", port),
        "filter_chains": [{
            "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": typed_config}],
        }],
    })
}

fn listener(name: &str, port: u32, cluster: &str) -> Value {
    listener_with_filter(name, port, cluster, TCP_PROXY)
}

/// `listener` whose one filter chain matches destination addresses in `prefix`/8.
fn listener_matching(name: &str, port: u32, cluster: &str, prefix: &str) -> Value {
    let mut l = listener(name, port, cluster);
    l["filter_chains"][0]["filter_chain_match"] =
        json!({"prefix_ranges": [{"address_prefix": prefix, "prefix_len": 8}]});
    l
}

/// The ADS bootstrap, its node carrying metadata as Istio's does (sent in every request).
fn bootstrap(admin: u16, ads: SocketAddr, api: &str, initial_fetch_timeout: &str) -> String {
    let yaml = switchyard_control::xds::fixtures::ads_bootstrap(
        "xds-py-test",
        admin,
        ads,
        api,
        initial_fetch_timeout,
    );
    let node = "node: { id: xds-py-test, cluster: switchyard-test }";
    assert!(yaml.contains(node), "{yaml}");
    let service = "    - envoy_grpc: { cluster_name: xds }\n";
    assert!(yaml.contains(service), "{yaml}");
    yaml.replace(
        node,
        "node: { id: xds-py-test, cluster: switchyard-test, metadata: { ISTIO_VERSION: 1.24.0, \
         INTERCEPTION_MODE: REDIRECT, LABELS: { app: web }, CONCURRENCY: 2 }, \
         locality: { region: eu-west, zone: eu-west-1a } }",
    )
    .replace(
        service,
        &format!(
            "{service}      initial_metadata:\n{}",
            INITIAL_METADATA_YAML
        ),
    )
}

/// `grpc_services[0].initial_metadata` of the bootstrap: a name in capitals (sent lower-cased,
/// as Envoy sends it) and a value with a space.
const INITIAL_METADATA_YAML: &str = "      - { key: X-Tenant, value: team-a }\n      - { key: authorization, value: Bearer t0ken }\n";
const INITIAL_METADATA: [(&str, &str); 2] =
    [("x-tenant", "team-a"), ("authorization", "Bearer t0ken")];

// ---------------------------------------------------------------------------------------------
// A scenario: backends, the Python server, the proxy under test
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    Sotw,
    Delta,
}

impl Api {
    fn bootstrap_name(self) -> &'static str {
        match self {
            Api::Sotw => "GRPC",
            Api::Delta => "DELTA_GRPC",
        }
    }
}

struct Scenario {
    a: Backend,
    b: Backend,
    ads: Ads,
    proxy: Proxy,
    /// The port of the listener `ingress` that xDS creates.
    port: u16,
}

/// Prerequisites: the proxy under test and the venv's python with grpc + xds-protos.
fn prerequisites() -> bool {
    proxy_available(selected_proxy())
        && require(
            python_ready(),
            &format!(
                "{} with grpc and xds-protos importable (run ci/install-deps)",
                python().display()
            ),
        )
}

impl Scenario {
    /// Backends `a` and `b`, an empty Python server, and the selected proxy subscribed to it.
    fn start(api: Api, opts: ProxyOpts) -> Scenario {
        let a = Backend::tagged("a");
        let b = Backend::tagged("b");
        let ads = Ads::start();
        let yaml = bootstrap(free_port(), ads.addr(), api.bootstrap_name(), "15s");
        let proxy = Proxy::spawn(selected_proxy(), &yaml, opts);
        Scenario {
            a,
            b,
            ads,
            proxy,
            port: free_port(),
        }
    }

    fn through(&self) -> SocketAddr {
        local(self.port)
    }

    /// Panics with the server's events and the proxy's logs.
    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}\n{}", self.ads.diagnostics(), self.proxy.logs())
    }

    fn ok<T>(&self, r: Result<T, String>) -> T {
        r.unwrap_or_else(|e| panic!("{e}\n{}", self.proxy.logs()))
    }

    /// The first response of `type_url` at `version` sent from `from` on.
    fn sent(&self, from: usize, type_url: &str, version: &str) -> Value {
        self.ok(self
            .ads
            .wait_event(from, &format!("response {type_url} {version}"), |e| {
                e["event"] == "sent" && e["type_url"] == type_url && e["version"] == version
            }))
    }

    /// The proxy's ACK or NACK of `sent`.
    fn answer(&self, sent: &Value) -> Value {
        let nonce = sent["nonce"].clone();
        self.ok(self.ads.wait_event(0, &format!("ACK/NACK of {sent}"), |e| {
            (e["event"] == "ack" || e["event"] == "nack") && e["response_nonce"] == nonce
        }))
    }

    /// Sets `resources` and waits for the response that carries them.
    fn push(&mut self, type_url: &str, version: &str, resources: Vec<Value>) -> Value {
        let mark = self.ads.mark();
        self.ads.set(type_url, version, resources);
        self.sent(mark, type_url, version)
    }

    /// Pushes and expects an ACK; returns the response.
    fn push_ack(&mut self, type_url: &str, version: &str, resources: Vec<Value>) -> Value {
        let sent = self.push(type_url, version, resources);
        self.expect_ack(&sent);
        sent
    }

    fn expect_ack(&self, sent: &Value) {
        let answer = self.answer(sent);
        if answer["event"] != "ack" {
            self.fail(&format!("expected an ACK of {sent}, got {answer}"));
        }
    }

    /// The first configuration: cluster `svc` (EDS) at `a`, listener `ingress` on `port`. Set
    /// listeners first: the snapshot server holds them until the proxy asks.
    fn initial_sync(&mut self) {
        let mark = self.ads.mark();
        let (a, port) = (assignment("svc", &self.a), self.port.into());
        self.ads
            .set(LISTENER, "l1", vec![listener("ingress", port, "svc")]);
        self.ads.set(ENDPOINTS, "e1", vec![a]);
        self.ads.set(CLUSTER, "c1", vec![eds_cluster("svc")]);
        for (t, v) in [(CLUSTER, "c1"), (ENDPOINTS, "e1"), (LISTENER, "l1")] {
            let sent = self.sent(mark, t, v);
            self.expect_ack(&sent);
        }
        assert_eq!(self.reached(self.through()), "a");
    }

    /// The tag of the backend a new connection through `addr` reaches, retrying while the
    /// listener is not there yet.
    fn reached(&self, addr: SocketAddr) -> String {
        let mut last = String::new();
        if !wait_until(WAIT, || match which_backend(addr) {
            Ok(tag) if !tag.is_empty() => {
                last = tag;
                true
            }
            Ok(_) => false,
            Err(e) => {
                last = e.to_string();
                false
            }
        }) {
            self.fail(&format!("no backend reached through {addr}: {last}"));
        }
        last
    }

    /// One new connection through `ingress` reaches `tag` at once (traffic undisturbed).
    fn still_reaches(&self, tag: &str, when: &str) {
        match which_backend(self.through()) {
            Ok(t) if t == tag => {}
            other => self.fail(&format!(
                "{when}: a new connection got {other:?}, not {tag}"
            )),
        }
    }

    fn wait_reaches(&self, tag: &str, what: &str) {
        let through = self.through();
        if !wait_until(WAIT, || which_backend(through).ok().as_deref() == Some(tag)) {
            self.fail(&format!("{what}: new connections never reached {tag}"));
        }
    }

    fn ready_status(&self) -> u16 {
        http(self.proxy.admin, "GET", "/ready").map_or(0, |r| r.status)
    }

    fn has_cluster(&self, name: &str) -> bool {
        let prefix = format!("{name}::");
        self.proxy
            .get("/clusters")
            .body
            .lines()
            .any(|l| l.starts_with(&prefix))
    }
}

/// An established connection through the proxy to a tagged backend.
struct Held {
    stream: std::net::TcpStream,
    pings: u64,
}

impl Held {
    fn open(s: &Scenario, tag: &str) -> Held {
        let mut stream = connect_retry(s.through(), WAIT);
        let got = read_line(&mut stream).unwrap_or_else(|e| s.fail(&format!("held: {e}")));
        if got != tag {
            s.fail(&format!("held connection reached {got:?}, not {tag}"));
        }
        Held { stream, pings: 0 }
    }

    /// 4 KiB of fresh PRNG bytes round trip exactly.
    fn ping(&mut self, s: &Scenario, when: &str) {
        self.pings += 1;
        let msg = Prng::bytes(0x9000 + self.pings, 4096);
        match ping(&mut self.stream, &msg) {
            Ok(back) if back == msg => {}
            Ok(_) => s.fail(&format!("{when}: the held connection echoed other bytes")),
            Err(e) => s.fail(&format!("{when}: the held connection broke: {e}")),
        }
    }

    /// 1 MiB each way, SHA-exact, then both sides close cleanly.
    fn finish(self, s: &Scenario) {
        let n = 1 << 20;
        let x = exchange(self.stream, 0x51de, n);
        if x.sent != n || x.received != n || x.sent_sha != x.received_sha || x.end != End::Eof {
            s.fail(&format!("the held connection's last exchange: {x:?}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Initial sync, update, removal
// ---------------------------------------------------------------------------------------------

fn sync_update_and_removal(api: Api) {
    if !prerequisites() {
        return;
    }
    let mut s = Scenario::start(api, ProxyOpts::default());

    // The proxy asks for clusters (wildcard) and is INITIALIZING while nothing is set.
    let cds = s.ok(s.ads.wait_event(0, "a CDS request", |e| {
        e["event"] == "request" && e["type_url"] == CLUSTER
    }));
    assert_eq!(cds["node_id"], "xds-py-test", "{cds}");
    // `initial_metadata` reaches the management server as request metadata of the stream.
    let open = s.ok(s
        .ads
        .wait_event(0, "the stream's opening", |e| e["event"] == "stream_open"));
    let sent: Vec<(String, String)> = open["metadata"]
        .as_array()
        .unwrap_or_else(|| panic!("no metadata: {open}"))
        .iter()
        .map(|kv| {
            (
                kv[0].as_str().unwrap_or_default().to_string(),
                kv[1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    eprintln!("the stream's request metadata: {sent:?}");
    for (name, value) in INITIAL_METADATA {
        assert!(
            sent.iter().any(|(n, v)| n == name && v == value),
            "{name}: {value} not among the stream's metadata: {sent:?}"
        );
    }
    // `node.metadata` reaches the management server as written (CONCURRENCY is a number).
    assert_eq!(
        cds["node_metadata"],
        json!({"ISTIO_VERSION": "1.24.0", "INTERCEPTION_MODE": "REDIRECT",
               "LABELS": {"app": "web"}, "CONCURRENCY": 2.0}),
        "{cds}"
    );
    // So does `node.locality`.
    assert_eq!(
        cds["node_locality"],
        json!({"region": "eu-west", "zone": "eu-west-1a"}),
        "{cds}"
    );
    let names = cds["resource_names"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        names.is_empty() || names == [json!("*")],
        "CDS is a wildcard subscription: {cds}"
    );
    let mut status = 0;
    if !wait_until(WAIT, || {
        status = s.ready_status();
        status != 0
    }) {
        s.fail("the admin never answered");
    }
    assert_eq!(status, 503, "/ready before the first fetch");

    s.initial_sync();
    let eds = s.ok(s.ads.wait_event(0, "an EDS request for svc", |e| {
        e["event"] == "request"
            && e["type_url"] == ENDPOINTS
            && e["resource_names"]
                .as_array()
                .is_some_and(|n| n.contains(&json!("svc")))
    }));
    assert_eq!(eds["resource_names"], json!(["svc"]), "{eds}");
    if !wait_until(WAIT, || s.ready_status() == 200) {
        s.fail("/ready never turned 200 after the first fetch");
    }

    // An endpoint update moves new connections; an established one keeps its endpoint.
    let mut held = Held::open(&s, "a");
    let b = assignment("svc", &s.b);
    let sent = s.push_ack(ENDPOINTS, "e2", vec![b]);
    assert_eq!(sent["resources"], json!(["svc"]), "{sent}");
    s.wait_reaches("b", "after the endpoint update");
    held.ping(&s, "after the endpoint update");
    held.finish(&s);

    // A second listener: Delta sends only it (ingress is unchanged) and must keep ingress.
    let (port, port2) = (u32::from(s.port), u32::from(free_port()));
    let sent = s.push_ack(
        LISTENER,
        "l2",
        vec![
            listener("ingress", port, "svc"),
            listener("second", port2, "svc"),
        ],
    );
    let expect_sent = match api {
        Api::Sotw => json!(["ingress", "second"]),
        Api::Delta => json!(["second"]),
    };
    assert_eq!(sent["resources"], expect_sent, "{sent}");
    assert_eq!(s.reached(local(port2 as u16)), "b");
    s.still_reaches("b", "after adding a listener");

    // A cluster added, then removed.
    let a_port = s.a.port().into();
    s.push_ack(
        CLUSTER,
        "c2",
        vec![eds_cluster("svc"), static_cluster("extra", a_port)],
    );
    if !wait_until(WAIT, || s.has_cluster("extra")) {
        s.fail("cluster extra never appeared in /clusters");
    }
    let sent = s.push_ack(CLUSTER, "c3", vec![eds_cluster("svc")]);
    if api == Api::Delta {
        assert_eq!(sent["removed"], json!(["extra"]), "{sent}");
        assert_eq!(sent["resources"], json!([]), "{sent}");
    }
    if !wait_until(WAIT, || !s.has_cluster("extra")) {
        s.fail("the removed cluster extra is still in /clusters");
    }

    // A listener removed: its port refuses, the other listener still serves.
    let sent = s.push_ack(LISTENER, "l3", vec![listener("second", port2, "svc")]);
    if api == Api::Delta {
        assert_eq!(sent["removed"], json!(["ingress"]), "{sent}");
    }
    let through = s.through();
    if !wait_until(WAIT, || connect(through).is_err()) {
        s.fail("the removed listener still accepts");
    }
    assert_eq!(s.reached(local(port2 as u16)), "b");
    assert_eq!(s.proxy.stat("control_plane.connected_state"), 1);
}

#[test]
fn sotw_initial_sync_update_and_removal() {
    sync_update_and_removal(Api::Sotw);
}

#[test]
fn delta_initial_sync_update_and_removal() {
    sync_update_and_removal(Api::Delta);
}

// ---------------------------------------------------------------------------------------------
// NACKs keep the last good config
// ---------------------------------------------------------------------------------------------

fn nacks_keep_last_good(api: Api) {
    if !prerequisites() {
        return;
    }
    let mut s = Scenario::start(api, ProxyOpts::default());
    s.initial_sync();
    let mut held = Held::open(&s, "a");
    let port = u32::from(s.port);
    let a_port = u32::from(s.a.port());
    let b_port = u32::from(s.b.port());
    let ingress = listener("ingress", port, "svc");
    // Each update carries the valid resources of its type too (SotW: the whole set), and one
    // invalid resource, new or replacing a valid one.
    let cases: Vec<(&str, &str, Vec<Value>)> = vec![
        (
            "a cluster with an endpoint on port 70000",
            CLUSTER,
            vec![eds_cluster("svc"), static_cluster("bad-port", 70000)],
        ),
        (
            "two clusters with one name",
            CLUSTER,
            vec![
                eds_cluster("svc"),
                static_cluster("dup", a_port),
                static_cluster("dup", b_port),
            ],
        ),
        (
            "svc's endpoint on port 70000",
            ENDPOINTS,
            vec![assignment_of("svc", vec![lb_endpoint(70000)])],
        ),
        (
            "svc's endpoint without an address",
            ENDPOINTS,
            vec![assignment_of("svc", vec![json!({"endpoint": {}})])],
        ),
        (
            "a listener on port 70000",
            LISTENER,
            vec![ingress.clone(), listener("bad-port", 70000, "svc")],
        ),
        (
            "a listener with an unknown filter type",
            LISTENER,
            vec![
                ingress.clone(),
                listener_with_filter("unknown", free_port().into(), "svc", UNKNOWN_FILTER),
            ],
        ),
        (
            "ingress matching a malformed CIDR",
            LISTENER,
            vec![listener_matching("ingress", port, "svc", "10.0.0.300")],
        ),
        (
            "two listeners with one name",
            LISTENER,
            vec![ingress.clone(), ingress.clone()],
        ),
    ];
    let mut mismatches = Vec::new();
    for (i, (what, type_url, resources)) in cases.into_iter().enumerate() {
        let version = format!("bad{i}");
        let sent = s.push(type_url, &version, resources);
        let answer = s.answer(&sent);
        if answer["event"] != "nack" {
            mismatches.push(format!("{what}: ACKed ({answer})"));
        } else if answer["error_detail"].as_str().is_none_or(str::is_empty) {
            mismatches.push(format!("{what}: a NACK without a message ({answer})"));
        } else if api == Api::Sotw {
            // The NACK names the last version accepted of its type.
            let last_good = match type_url {
                t if t == CLUSTER => "c1",
                t if t == ENDPOINTS => "e1",
                _ => "l1",
            };
            if answer["version_info"] != last_good {
                mismatches.push(format!(
                    "{what}: NACK version_info is not {last_good}: {answer}"
                ));
            }
        }
        eprintln!("{what}: {}", answer["error_detail"]);
        s.still_reaches("a", what);
        held.ping(&s, what);
    }
    if !mismatches.is_empty() {
        s.fail(&mismatches.join("\n"));
    }
    // Envoy's counters: one rejection per NACKed update, one success each (the first).
    let stats = s.proxy.stats();
    let stat = |n: &str| stats.get(n).copied().unwrap_or(0);
    let counted = [
        ("cluster_manager.cds.update_rejected", 2),
        ("cluster_manager.cds.update_success", 1),
        ("listener_manager.lds.update_rejected", 4),
        ("listener_manager.lds.update_success", 1),
        ("control_plane.connected_state", 1),
    ];
    let wrong: Vec<String> = counted
        .iter()
        .filter(|(n, want)| stat(n) != *want)
        .map(|(n, want)| format!("{n} = {}, expected {want}", stat(n)))
        .collect();
    if !wrong.is_empty() {
        s.fail(&format!("xDS stats after the NACKs: {}", wrong.join("; ")));
    }
    // The stream is healthy: valid updates of every type apply.
    s.push_ack(CLUSTER, "c2", vec![eds_cluster("svc")]);
    s.push_ack(LISTENER, "l2", vec![ingress]);
    let b = assignment("svc", &s.b);
    s.push_ack(ENDPOINTS, "e2", vec![b]);
    s.wait_reaches("b", "after valid updates");
    held.ping(&s, "after valid updates");
    held.finish(&s);
}

#[test]
fn sotw_nacks_keep_last_good() {
    nacks_keep_last_good(Api::Sotw);
}

#[test]
fn delta_nacks_keep_last_good() {
    nacks_keep_last_good(Api::Delta);
}

// ---------------------------------------------------------------------------------------------
// The management cluster found by DNS
// ---------------------------------------------------------------------------------------------

/// The name the test's DNS server answers for the management server.
const XDS_NAME: &str = "xds.switchyard.test";

/// [`bootstrap`] whose `xds` cluster is STRICT_DNS: `XDS_NAME` at the server's port, resolved
/// by the test's DNS server (c-ares `resolvers`, IPv4, refreshed every 200 ms).
fn dns_bootstrap(admin: u16, ads: SocketAddr, api: &str, dns: &DnsServer) -> String {
    let yaml = bootstrap(admin, ads, api, "15s");
    let (kind, address) = (
        "    type: STATIC\n",
        format!("address: {}, port_value: {} ", ads.ip(), ads.port()),
    );
    assert!(yaml.contains(kind) && yaml.contains(&address), "{yaml}");
    let dns_port = dns.port();
    yaml.replace(
        kind,
        &format!(
            r#"    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    dns_refresh_rate: 0.2s
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {dns_port}}}}}]
        dns_resolver_options: {{no_default_search_domain: true}}
"#
        ),
    )
    .replace(
        &address,
        &format!("address: {XDS_NAME}, port_value: {} ", ads.port()),
    )
    // Failed attempts while the name does not resolve grow the reconnect backoff; with
    // Envoy's default (500 ms doubling to 30 s) the first attempt after it resolves may come
    // after the test's wait. Both proxies honour this one.
    .replace(
        "envoy_grpc: { cluster_name: xds }",
        "envoy_grpc: { cluster_name: xds, retry_policy: { retry_back_off: \
         { base_interval: 0.1s, max_interval: 0.5s } } }",
    )
}

/// The ADS cluster is STRICT_DNS: while its name does not resolve (NXDOMAIN) nothing
/// reaches the server and the proxy stays INITIALIZING; once it resolves to 127.0.0.1 the
/// proxy subscribes there, gets its cluster and listener, and forwards.
fn management_cluster_by_dns(api: Api) {
    if !prerequisites() {
        return;
    }
    let dns = DnsServer::start();
    let ads = Ads::start();
    let yaml = dns_bootstrap(free_port(), ads.addr(), api.bootstrap_name(), &dns);
    let quiet = ads.mark();
    let mut s = Scenario {
        a: Backend::tagged("a"),
        b: Backend::tagged("b"),
        proxy: Proxy::spawn(selected_proxy(), &yaml, ProxyOpts::default()),
        ads,
        port: free_port(),
    };
    if !wait_until(WAIT, || !dns.queries(XDS_NAME).is_empty()) {
        s.fail(&format!("{XDS_NAME} was never resolved"));
    }
    thread::sleep(Duration::from_millis(500));
    if s.ads.mark() != quiet {
        s.fail("the server heard from the proxy before its name resolved");
    }
    if s.ready_status() == 200 {
        s.fail("/ready is 200 before the first fetch");
    }
    dns.set_a(XDS_NAME, &[std::net::Ipv4Addr::LOCALHOST]);
    s.initial_sync();
    if s.proxy.wait_stat("control_plane.connected_state", 1, WAIT) != 1 {
        s.fail("control_plane.connected_state is not 1");
    }
    if !wait_until(WAIT, || s.ready_status() == 200) {
        s.fail("/ready never became 200");
    }
    // An endpoint update still applies over the stream.
    let b = assignment("svc", &s.b);
    s.push_ack(ENDPOINTS, "e2", vec![b]);
    s.wait_reaches("b", "after the endpoint update");
}

#[test]
fn sotw_management_cluster_by_dns() {
    management_cluster_by_dns(Api::Sotw);
}

#[test]
fn delta_management_cluster_by_dns() {
    management_cluster_by_dns(Api::Delta);
}

// ---------------------------------------------------------------------------------------------
// The server killed and restarted
// ---------------------------------------------------------------------------------------------

/// Accepts (and closes at once) connections on `port` for `window`; returns how many came.
fn count_attempts(port: u16, window: Duration) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let l = loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot bind the server's port {port} while it is away: {e}"),
        }
    };
    l.set_nonblocking(true).expect("nonblocking");
    let n = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (n2, stop2) = (n.clone(), stop.clone());
    let t = thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((c, _)) => {
                    n2.fetch_add(1, Ordering::SeqCst);
                    drop(c);
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    thread::sleep(window);
    stop.store(true, Ordering::SeqCst);
    t.join().expect("accept thread");
    n.load(Ordering::SeqCst)
}

fn server_restart_resyncs(api: Api) {
    if !prerequisites() {
        return;
    }
    let mut s = Scenario::start(api, ProxyOpts::default());
    s.initial_sync();
    let mut held = Held::open(&s, "a");
    let ads_port = s.ads.port;

    // The server dies: the proxy notices, and the last config keeps serving.
    s.ads.kill();
    let window = Duration::from_millis(3500);
    let started = Instant::now();
    let counter = thread::spawn(move || count_attempts(ads_port, window));
    if s.proxy.wait_stat("control_plane.connected_state", 0, WAIT) != 0 {
        s.fail("control_plane.connected_state stayed 1 with the server gone");
    }
    while started.elapsed() < window {
        s.still_reaches("a", "with the server away");
        held.ping(&s, "with the server away");
        thread::sleep(Duration::from_millis(300));
    }
    let attempts = counter.join().expect("counter");
    eprintln!("{attempts} connection attempts in {window:?} with the server away");
    // Envoy's and Switchyard's backoff (500 ms base, doubling, jittered; Envoy draws each delay
    // in [0, d), Switchyard in [d/2, d]) try at least twice in 3.5 s and rarely more than 6
    // times; a reconnect loop without backoff would try hundreds of times.
    if !(2..=12).contains(&attempts) {
        s.fail(&format!(
            "{attempts} connection attempts in {window:?} with the server away (backoff?)"
        ));
    }

    // A new server on the same port, with svc's endpoint moved to b.
    s.ads = Ads::restart_on(ads_port);
    s.ads.set(
        LISTENER,
        "l1",
        vec![listener("ingress", s.port.into(), "svc")],
    );
    let b = assignment("svc", &s.b);
    s.ads.set(ENDPOINTS, "e2", vec![b]);
    s.ads.set(CLUSTER, "c1", vec![eds_cluster("svc")]);
    // After n failed attempts the next one may be up to 500 ms * 2^n away (16 s for Envoy after
    // 5), capped at 30 s.
    let cds =
        s.ok(s
            .ads
            .wait_event_for(RECONNECT_WAIT, 0, "a CDS request on the new server", |e| {
                e["event"] == "request" && e["type_url"] == CLUSTER
            }));
    assert_eq!(cds["node_id"], "xds-py-test", "the node again: {cds}");
    match api {
        // SotW announces the versions it has.
        Api::Sotw => {
            assert_eq!(cds["version_info"], "c1", "{cds}");
            let lds = s.ok(s
                .ads
                .wait_event(0, "an LDS request on the new server", |e| {
                    e["event"] == "request" && e["type_url"] == LISTENER
                }));
            assert_eq!(lds["version_info"], "l1", "{lds}");
        }
        // Delta announces each resource's version (as the server sent it).
        Api::Delta => {
            let versions = &cds["initial_resource_versions"];
            assert!(versions.get("svc").is_some_and(Value::is_string), "{cds}");
            let lds = s.ok(s
                .ads
                .wait_event(0, "an LDS request on the new server", |e| {
                    e["event"] == "request" && e["type_url"] == LISTENER
                }));
            assert!(
                lds["initial_resource_versions"].get("ingress").is_some(),
                "{lds}"
            );
        }
    }
    // Clusters and listeners did not change: Delta sends nothing of them (the proxy announced
    // the versions it had), SotW the same state again.
    for (t, v, name) in [(CLUSTER, "c1", "svc"), (LISTENER, "l1", "ingress")] {
        let sent = s.sent(0, t, v);
        s.expect_ack(&sent);
        let want = match api {
            Api::Sotw => json!([name]),
            Api::Delta => json!([]),
        };
        assert_eq!(sent["resources"], want, "{sent}");
    }
    let sent = s.sent(0, ENDPOINTS, "e2");
    s.expect_ack(&sent);
    s.wait_reaches("b", "after the resync");
    if s.proxy.wait_stat("control_plane.connected_state", 1, WAIT) != 1 {
        s.fail("control_plane.connected_state not 1 after the reconnect");
    }
    held.ping(&s, "after the resync");
    held.finish(&s);
}

#[test]
fn sotw_server_restart_resyncs() {
    server_restart_resyncs(Api::Sotw);
}

#[test]
fn delta_server_restart_resyncs() {
    server_restart_resyncs(Api::Delta);
}

// ---------------------------------------------------------------------------------------------
// Warm start (Switchyard only)
// ---------------------------------------------------------------------------------------------

/// `--state-dir`: a proxy restarted against a new server that has nothing yet serves the last
/// accepted config at once, and takes the server's config when it comes.
#[test]
fn state_dir_warm_start_then_resync() {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "--state-dir is Switchyard's (Envoy has no warm start)",
        );
        return;
    }
    if !prerequisites() {
        return;
    }
    let state = test_dir("xds-py-state");
    let opts = ProxyOpts {
        switchyard_args: vec!["--state-dir".into(), state.display().to_string()],
        ..ProxyOpts::default()
    };
    let mut s = Scenario::start(Api::Sotw, opts.clone());
    s.initial_sync();
    s.proxy.sigterm();
    if s.proxy.wait_exit(WAIT).is_none() {
        s.fail("switchyard did not exit on SIGTERM");
    }

    // A new, empty server (it answers nothing until set) and a long initial_fetch_timeout.
    s.ads = Ads::start();
    let yaml = bootstrap(free_port(), s.ads.addr(), "GRPC", "60s");
    s.proxy = Proxy::spawn(ProxyKind::Switchyard, &yaml, opts);
    s.ok(s.ads.wait_event(0, "a CDS request", |e| {
        e["event"] == "request" && e["type_url"] == CLUSTER
    }));
    if !wait_until(WAIT, || s.ready_status() == 200) {
        s.fail("not LIVE from the state dir");
    }
    assert_eq!(s.reached(s.through()), "a");

    // The server's config, when it comes, replaces the warm one.
    let mark = s.ads.mark();
    s.ads.set(
        LISTENER,
        "l1",
        vec![listener("ingress", s.port.into(), "svc")],
    );
    let b = assignment("svc", &s.b);
    s.ads.set(ENDPOINTS, "e2", vec![b]);
    s.ads.set(CLUSTER, "c1", vec![eds_cluster("svc")]);
    let sent = s.sent(mark, ENDPOINTS, "e2");
    s.expect_ack(&sent);
    s.wait_reaches("b", "after the server answered");
    let _ = std::fs::remove_dir_all(&state);
}
