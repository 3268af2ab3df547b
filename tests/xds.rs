//! Listeners, clusters and endpoints over ADS (State of the World), end to end through the
//! proxy binary, from the scripted ADS server (`switchyard_control::xds::server`):
//!
//! * the proxy subscribes and is INITIALIZING (`/ready` 503) until the first clusters, their
//!   endpoints and the first listeners are in; then traffic reaches the endpoint;
//! * an endpoint update moves new connections to the new endpoint while an established one
//!   keeps talking to the old;
//! * an invalid listener (an unknown filter type) is NACKed, naming it, the rest of that
//!   update is applied, and traffic is not disturbed; `listener_manager.lds.update_rejected`,
//!   `*.update_success` and `control_plane.connected_state` say so.
//!
//! * Switchyard's own fault filter is switched on and off by listener updates, in one
//!   process (Switchyard only).
//! * a UDP listener (udp_proxy) added over LDS carries datagrams, keeps its session through
//!   an update that changes only the TCP listeners, and stops when removed.
//! * a STRICT_DNS cluster received over CDS resolves its name (the test's DNS server) and
//!   follows a changed answer.
//!
//! The same test runs against real Envoy (`SWITCHYARD_TEST_PROXY=envoy`), which keeps its
//! expectations honest. Requests are matched by type, not order: Envoy asks for listeners
//! only after its clusters have warmed.

mod common;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Address, CidrRange};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, Listener};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use prost::Message;
use std::net::SocketAddr;
use std::time::Duration;
use switchyard_control::xds::fixtures::{
    self, any, eds_cluster, eds_cluster_watching, TCP_PROXY_TYPE,
};
use switchyard_control::xds::server::{start_server, DeltaHandle, SotwHandle};
use switchyard_control::xds::{CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE};

const WAIT: Duration = Duration::from_secs(15);

/// An address with any 32-bit port (so an invalid one, like 70000, can be written).
fn address_of(ip: &str, port: u32) -> Address {
    fixtures::socket_address(ip, port)
}

fn assignment(cluster: &str, endpoint: SocketAddr) -> Any {
    fixtures::assignment(cluster, &[endpoint])
}

/// One endpoint at `endpoint` for `cluster`.
fn load_assignment(cluster: &str, endpoint: Address) -> ClusterLoadAssignment {
    fixtures::load_assignment(cluster, &[endpoint])
}

fn listener(name: &str, port: u16, cluster: &str) -> Any {
    listener_with_filter(name, port.into(), cluster, TCP_PROXY_TYPE)
}

/// A tcp_proxy listener on 127.0.0.1:`port` (any 32-bit port) whose filter's `@type` is
/// `filter_type`.
fn listener_with_filter(name: &str, port: u32, cluster: &str, filter_type: &str) -> Any {
    fixtures::tcp_proxy_listener(name, "127.0.0.1", port, cluster, filter_type)
}

fn bootstrap_with_timeout(admin: u16, ads: SocketAddr, initial_fetch_timeout: &str) -> String {
    bootstrap_full(admin, ads, initial_fetch_timeout, "GRPC")
}

fn bootstrap_full(admin: u16, ads: SocketAddr, initial_fetch_timeout: &str, api: &str) -> String {
    fixtures::ads_bootstrap("xds-test", admin, ads, api, initial_fetch_timeout)
}

/// A discovery request of either variant.
trait TypedRequest: std::fmt::Debug {
    fn type_url(&self) -> &str;
}

impl TypedRequest for DiscoveryRequest {
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

impl TypedRequest for DeltaDiscoveryRequest {
    fn type_url(&self) -> &str {
        &self.type_url
    }
}

/// Requests of one stream, matched by type in arrival order (a request read while waiting
/// for another type is kept for later).
struct Requests<'a, Req> {
    requests: &'a std::sync::mpsc::Receiver<Req>,
    pending: Vec<Req>,
}

impl<'a, Req: TypedRequest> Requests<'a, Req> {
    fn new(requests: &'a std::sync::mpsc::Receiver<Req>) -> Self {
        Requests {
            requests,
            pending: Vec::new(),
        }
    }

    /// The next request of `type_url` that satisfies `want`.
    fn next(&mut self, type_url: &str, want: impl Fn(&Req) -> bool) -> Req {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self
                .pending
                .iter()
                .position(|r| r.type_url() == type_url && want(r))
            {
                return self.pending.remove(i);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let r = self
                .requests
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {type_url} request; got {:?}", self.pending));
            self.pending.push(r);
        }
    }
}

fn respond(stream: &SotwHandle, type_url: &str, version: &str, nonce: &str, resources: Vec<Any>) {
    let resp = DiscoveryResponse {
        version_info: version.into(),
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        ..DiscoveryResponse::default()
    };
    stream
        .responses
        .blocking_send(Ok(resp))
        .expect("stream open");
}

/// The tag of the backend a new connection through `addr` reaches, retrying while the
/// listener is not there yet or routes nowhere.
fn reached(addr: SocketAddr) -> String {
    let mut last = String::new();
    let ok = wait_until(WAIT, || match which_backend(addr) {
        Ok(tag) => {
            last = tag;
            true
        }
        Err(e) => {
            last = e.to_string();
            false
        }
    });
    assert!(ok, "no backend reached through {addr}: {last}");
    last
}

/// After the first CDS request: the EDS cluster `svc` (version c1, nonce n1), its endpoint
/// `backend_port` once EDS asks for it (e1, n2), and the listener `ingress` on `port` to it
/// once LDS asks (l1, n3).
fn first_config(
    stream: &SotwHandle,
    requests: &mut Requests<'_, DiscoveryRequest>,
    backend_port: u16,
    port: u16,
) {
    respond(stream, CLUSTER_TYPE, "c1", "n1", vec![eds_cluster("svc")]);
    let eds = requests.next(ENDPOINTS_TYPE, |r| !r.resource_names.is_empty());
    assert_eq!(eds.resource_names, ["svc"]);
    respond(
        stream,
        ENDPOINTS_TYPE,
        "e1",
        "n2",
        vec![assignment("svc", local(backend_port))],
    );
    requests.next(LISTENER_TYPE, |_| true);
    respond(
        stream,
        LISTENER_TYPE,
        "l1",
        "n3",
        vec![listener("ingress", port, "svc")],
    );
}

/// [`first_config`] on the proxy's first stream, once it asked for clusters; returns when
/// traffic on `port` reaches backend `a` (at `backend_port`).
fn configured(stream: &SotwHandle, backend_port: u16, port: u16) -> Requests<'_, DiscoveryRequest> {
    let mut requests = Requests::new(&stream.requests);
    requests.next(CLUSTER_TYPE, |_| true);
    first_config(stream, &mut requests, backend_port, port);
    assert_eq!(reached(local(port)), "a");
    requests
}

/// What each end-to-end test starts with: two tagged backends, the scripted ADS server and
/// the proxy subscribed to it with `api`, and a free port for the listener xDS will create.
struct Setup {
    a: Backend,
    b: Backend,
    proxy: Proxy,
    port: u16,
    sotw: std::sync::mpsc::Receiver<SotwHandle>,
    delta: std::sync::mpsc::Receiver<DeltaHandle>,
}

/// `None` (after saying why) when the selected proxy is not available.
fn setup(api: &str) -> Option<Setup> {
    let kind = selected_proxy();
    if !require(proxy_available(kind), "the proxy binary under test") {
        return None;
    }
    let a = Backend::tagged("a");
    let b = Backend::tagged("b");
    let (ads, sotw, delta) = start_server();
    let yaml = bootstrap_full(free_port(), ads, "15s", api);
    let proxy = Proxy::spawn(kind, &yaml, ProxyOpts::default());
    Some(Setup {
        a,
        b,
        proxy,
        port: free_port(),
        sotw,
        delta,
    })
}

/// The first stream a proxy opens on `streams`.
fn first_stream<H>(streams: &std::sync::mpsc::Receiver<H>, proxy: &Proxy) -> H {
    streams
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("the proxy never opened an ADS stream\n{}", proxy.logs()))
}

#[test]
fn listeners_clusters_and_endpoints_over_ads() {
    let Some(Setup {
        a,
        b,
        proxy,
        port,
        sotw,
        ..
    }) = setup("GRPC")
    else {
        return;
    };
    let stream = first_stream(&sotw, &proxy);

    let mut requests = Requests::new(&stream.requests);
    let cds = requests.next(CLUSTER_TYPE, |_| true);
    // Initializing until the first clusters, endpoints and listeners are in.
    let mut status = 0;
    assert!(
        wait_until(WAIT, || {
            status = http(proxy.admin, "GET", "/ready").map_or(0, |r| r.status);
            status != 0
        }),
        "admin never answered"
    );
    assert_eq!(status, 503, "/ready before the first fetch");
    assert_eq!(cds.node.as_ref().map(|n| n.id.as_str()), Some("xds-test"));
    first_config(&stream, &mut requests, a.port(), port);
    let through = local(port);
    assert_eq!(reached(through), "a");
    assert!(
        wait_until(WAIT, || http(proxy.admin, "GET", "/ready")
            .is_ok_and(|r| r.status == 200)),
        "/ready never turned 200 after the first fetch"
    );

    // An established connection keeps its endpoint across an endpoint update.
    let mut held = connect_retry(through, WAIT);
    assert_eq!(read_line(&mut held).unwrap(), "a");
    respond(
        &stream,
        ENDPOINTS_TYPE,
        "e2",
        "n4",
        vec![assignment("svc", local(b.port()))],
    );
    assert!(
        wait_until(WAIT, || which_backend(through).ok().as_deref() == Some("b")),
        "new connections never reached the new endpoint"
    );
    assert_eq!(ping(&mut held, b"still here").unwrap(), b"still here");
    // Two assignments for svc, both accepted.
    assert_eq!(proxy.wait_stat("cluster.svc.update_success", 2, WAIT), 2);
    assert_eq!(
        proxy.stat("cluster.svc.update_attempt"),
        3,
        "the start and two responses"
    );
    assert_eq!(proxy.stat("cluster.svc.update_empty"), 0);
    assert_eq!(proxy.stat("cluster.svc.membership_total"), 1);

    // One invalid listener among valid ones: NACK naming it, the others applied.
    let port2 = free_port();
    respond(
        &stream,
        LISTENER_TYPE,
        "l2",
        "n5",
        vec![
            listener("ingress", port, "svc"),
            listener("second", port2, "svc"),
            listener_with_filter(
                "broken",
                free_port().into(),
                "svc",
                "type.googleapis.com/example.UnknownFilter",
            ),
        ],
    );
    let nack = requests.next(LISTENER_TYPE, |r| r.response_nonce == "n5");
    let detail = nack.error_detail.as_ref().expect("a NACK");
    assert!(detail.message.contains("broken"), "{}", detail.message);
    assert_eq!(
        nack.version_info, "l1",
        "the NACK echoes the last accepted version"
    );
    // Envoy's xDS stats: one rejected LDS update, accepted CDS updates, connected.
    assert_eq!(
        proxy.wait_stat("listener_manager.lds.update_rejected", 1, WAIT),
        1
    );
    assert_eq!(proxy.stat("listener_manager.lds.update_success"), 1);
    assert_eq!(proxy.stat("cluster_manager.cds.update_success"), 1);
    assert_eq!(proxy.stat("control_plane.connected_state"), 1);
    if proxy.kind == ProxyKind::Switchyard {
        // Envoy 1.40 answers this /config_dump with 500 ("could not find @type
        // 'type.googleapis.com/example.UnknownFilter'"): it cannot print the failed
        // configuration it keeps in error_state. Switchyard prints what it can of it.
        check_listener_dump(&proxy);
    }
    assert_eq!(reached(local(port2)), "b");
    assert_eq!(reached(through), "b");
    assert_eq!(ping(&mut held, b"and still").unwrap(), b"and still");
    drop(stream);
}

/// `/config_dump` after the partly rejected listener update: the two valid listeners active
/// (with their config), the broken one with an `error_state` saying why.
fn check_listener_dump(proxy: &Proxy) {
    let r = proxy.get("/config_dump");
    assert_eq!(r.status, 200);
    let dump: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", &r.body[..r.body.len().min(400)]));
    let listeners = dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|d| d["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        })
        .expect("a ListenersConfigDump")
        .clone();
    assert_eq!(listeners["version_info"], "l2", "{listeners}");
    let dynamic = listeners["dynamic_listeners"]
        .as_array()
        .expect("dynamic_listeners");
    let by_name = |n: &str| {
        dynamic
            .iter()
            .find(|l| l["name"] == n)
            .unwrap_or_else(|| panic!("no dynamic listener {n}: {listeners}"))
    };
    for name in ["ingress", "second"] {
        let active = &by_name(name)["active_state"];
        assert_eq!(active["version_info"], "l2", "{name}: {active}");
        assert_eq!(active["listener"]["name"], name);
    }
    let error = &by_name("broken")["error_state"];
    assert!(
        error["details"].as_str().is_some_and(|d| !d.is_empty()),
        "broken: {error}"
    );
}

/// A management server that accepts the stream and never answers: after
/// `initial_fetch_timeout` the proxy serves anyway (`/ready` 200), as Envoy does.
#[test]
fn initial_fetch_timeout_goes_live_without_an_answer() {
    let kind = selected_proxy();
    if !require(proxy_available(kind), "the proxy binary under test") {
        return;
    }
    let (ads, streams, _) = start_server();
    let admin = free_port();
    let proxy = Proxy::spawn(
        kind,
        &bootstrap_with_timeout(admin, ads, "0.5s"),
        ProxyOpts::default(),
    );
    let _stream = streams
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("the proxy never opened an ADS stream\n{}", proxy.logs()));
    assert!(
        wait_until(WAIT, || http(proxy.admin, "GET", "/ready")
            .is_ok_and(|r| r.status == 200)),
        "/ready never turned 200 after initial_fetch_timeout\n{}",
        proxy.logs()
    );
}

/// `(name, version, resource)` as a Delta response for `type_url`.
fn delta_respond(
    stream: &DeltaHandle,
    type_url: &str,
    nonce: &str,
    resources: Vec<(&str, &str, Any)>,
    removed: &[&str],
) {
    let resp = DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources: resources
            .into_iter()
            .map(|(name, version, any)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(any),
                ..Resource::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|r| r.to_string()).collect(),
        ..DeltaDiscoveryResponse::default()
    };
    stream
        .responses
        .blocking_send(Ok(resp))
        .expect("stream open");
}

/// Delta's first config, each answer after the proxy asks for it: the EDS cluster `svc`
/// (nonce d1), its endpoint `backend_port` (d2), the listener `ingress` on `port` to it (d3).
/// Returns the first cluster request.
fn delta_first_config(
    stream: &DeltaHandle,
    requests: &mut Requests<'_, DeltaDiscoveryRequest>,
    backend_port: u16,
    port: u16,
) -> DeltaDiscoveryRequest {
    let cds = requests.next(CLUSTER_TYPE, |_| true);
    let svc = eds_cluster("svc");
    delta_respond(stream, CLUSTER_TYPE, "d1", vec![("svc", "1", svc)], &[]);
    requests.next(ENDPOINTS_TYPE, |r| {
        r.resource_names_subscribe.iter().any(|n| n == "svc")
    });
    let endpoint = assignment("svc", local(backend_port));
    delta_respond(
        stream,
        ENDPOINTS_TYPE,
        "d2",
        vec![("svc", "1", endpoint)],
        &[],
    );
    requests.next(LISTENER_TYPE, |_| true);
    let ingress = listener("ingress", port, "svc");
    delta_respond(
        stream,
        LISTENER_TYPE,
        "d3",
        vec![("ingress", "1", ingress)],
        &[],
    );
    cds
}

/// Delta xDS end to end: wildcard subscriptions, an EDS subscription by name, an endpoint
/// update, and a listener removed by `removed_resources` (its port then refuses).
#[test]
fn delta_xds_adds_updates_and_removes() {
    let Some(Setup {
        a,
        b,
        proxy,
        port,
        delta,
        ..
    }) = setup("DELTA_GRPC")
    else {
        return;
    };
    let stream = first_stream(&delta, &proxy);
    let mut requests = Requests::new(&stream.requests);
    let cds = delta_first_config(&stream, &mut requests, a.port(), port);
    assert!(
        cds.resource_names_subscribe.is_empty() || cds.resource_names_subscribe == ["*"],
        "a wildcard subscription: {:?}",
        cds.resource_names_subscribe
    );
    let through = local(port);
    assert_eq!(reached(through), "a");
    let ack = requests.next(LISTENER_TYPE, |r| r.response_nonce == "d3");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);

    delta_respond(
        &stream,
        ENDPOINTS_TYPE,
        "d4",
        vec![("svc", "2", assignment("svc", local(b.port())))],
        &[],
    );
    assert!(
        wait_until(WAIT, || which_backend(through).ok().as_deref() == Some("b")),
        "new connections never reached the new endpoint"
    );
    delta_respond(&stream, LISTENER_TYPE, "d5", Vec::new(), &["ingress"]);
    assert!(
        wait_until(WAIT, || connect(through).is_err()),
        "the removed listener still accepts"
    );
}

/// The clusters a `/config_dump` lists under `field` (`dynamic_active_clusters`,
/// `dynamic_warming_clusters`): `(name, version_info)`.
fn dumped_clusters(proxy: &Proxy, field: &str) -> Vec<(String, String)> {
    let r = proxy.get("/config_dump");
    let dump: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    let clusters = dump["configs"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|d| d["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump")
        })
        .cloned()
        .unwrap_or_default();
    clusters[field]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let name = i["cluster"]["name"].as_str().unwrap_or_default();
                    let version = i["version_info"].as_str().unwrap_or_default();
                    (name.to_string(), version.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Cluster warming, as Envoy does it: an updated EDS cluster whose new assignment has not
/// arrived keeps serving with its previous version (listed under
/// `dynamic_warming_clusters`) until the assignment comes. Switchyard also holds back a new
/// listener that routes to a warming cluster (Envoy activates it at once and closes its
/// connections until the cluster is ready).
#[test]
fn an_updated_cluster_warms_while_its_previous_version_serves() {
    let Some(Setup {
        a,
        b,
        proxy,
        port,
        delta,
        ..
    }) = setup("DELTA_GRPC")
    else {
        return;
    };
    let stream = first_stream(&delta, &proxy);
    let mut requests = Requests::new(&stream.requests);
    delta_first_config(&stream, &mut requests, a.port(), port);
    let through = local(port);
    assert_eq!(reached(through), "a");

    // The cluster now watches "svc-v2", which has no assignment yet.
    let v2 = eds_cluster_watching("svc", "svc-v2");
    delta_respond(&stream, CLUSTER_TYPE, "d4", vec![("svc", "c2", v2)], &[]);
    requests.next(ENDPOINTS_TYPE, |r| {
        r.resource_names_subscribe.iter().any(|n| n == "svc-v2")
    });
    assert!(
        wait_until(WAIT, || dumped_clusters(&proxy, "dynamic_warming_clusters")
            == [("svc".to_string(), "c2".to_string())]),
        "svc c2 never listed as warming: {:?}",
        dumped_clusters(&proxy, "dynamic_warming_clusters")
    );
    for _ in 0..5 {
        assert_eq!(
            reached(through),
            "a",
            "the previous version serves while warming"
        );
    }
    let to_b = assignment("svc-v2", local(b.port()));
    delta_respond(
        &stream,
        ENDPOINTS_TYPE,
        "d5",
        vec![("svc-v2", "e2", to_b)],
        &[],
    );
    assert!(
        wait_until(WAIT, || which_backend(through).ok().as_deref() == Some("b")),
        "the warmed cluster never served its assignment\n{}",
        proxy.logs()
    );
    assert!(dumped_clusters(&proxy, "dynamic_warming_clusters").is_empty());
    assert!(dumped_clusters(&proxy, "dynamic_active_clusters")
        .contains(&("svc".to_string(), "c2".to_string())));

    if proxy.kind != ProxyKind::Switchyard {
        return;
    }
    // Switchyard only: a listener to a warming cluster waits for it.
    let port2 = free_port();
    delta_respond(
        &stream,
        CLUSTER_TYPE,
        "d6",
        vec![("late", "c3", eds_cluster("late"))],
        &[],
    );
    requests.next(ENDPOINTS_TYPE, |r| {
        r.resource_names_subscribe.iter().any(|n| n == "late")
    });
    let l2 = listener("second", port2, "late");
    delta_respond(
        &stream,
        LISTENER_TYPE,
        "d7",
        vec![("second", "l2", l2)],
        &[],
    );
    requests.next(LISTENER_TYPE, |r| r.response_nonce == "d7");
    // The ACK says the listener was accepted, not yet recorded: wait for the dump.
    assert!(
        wait_until(WAIT, || proxy
            .get("/config_dump")
            .body
            .contains("warming_state")),
        "no listener in warming_state: {}",
        proxy.get("/config_dump").body
    );
    assert!(
        connect(local(port2)).is_err(),
        "a warming listener does not listen"
    );
    let to_a = assignment("late", local(a.port()));
    delta_respond(
        &stream,
        ENDPOINTS_TYPE,
        "d8",
        vec![("late", "e3", to_a)],
        &[],
    );
    assert_eq!(reached(local(port2)), "a");
}

/// `--state-dir` (Switchyard only; Envoy has no warm start): a proxy restarted against a
/// management server that never answers serves the last accepted listeners, clusters and
/// endpoints at once.
#[test]
fn state_dir_warm_start_serves_before_the_server_answers() {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "--state-dir is Switchyard's (Envoy has no warm start)",
        );
        return;
    }
    if !require(
        proxy_available(ProxyKind::Switchyard),
        "the proxy binary under test",
    ) {
        return;
    }
    let a = Backend::tagged("a");
    let state = test_dir("xds-state");
    let opts = ProxyOpts {
        switchyard_args: vec!["--state-dir".into(), state.display().to_string()],
        ..ProxyOpts::default()
    };
    let port = free_port();
    {
        let (ads, streams, _) = start_server();
        let yaml = bootstrap_full(free_port(), ads, "15s", "GRPC");
        let mut proxy = Proxy::spawn(ProxyKind::Switchyard, &yaml, opts.clone());
        let stream = first_stream(&streams, &proxy);
        let mut requests = Requests::new(&stream.requests);
        requests.next(CLUSTER_TYPE, |_| true);
        first_config(&stream, &mut requests, a.port(), port);
        assert_eq!(reached(local(port)), "a");
        requests.next(LISTENER_TYPE, |r| r.response_nonce == "n3");
        proxy.sigterm();
        assert!(
            proxy.wait_exit(WAIT).is_some(),
            "no exit after SIGTERM\n{}",
            proxy.logs()
        );
    }
    // A new management server that never answers; a long initial_fetch_timeout.
    let (ads, streams, _) = start_server();
    let yaml = bootstrap_full(free_port(), ads, "60s", "GRPC");
    let proxy = Proxy::spawn(ProxyKind::Switchyard, &yaml, opts);
    let stream = first_stream(&streams, &proxy);
    assert!(
        wait_until(WAIT, || http(proxy.admin, "GET", "/ready")
            .is_ok_and(|r| r.status == 200)),
        "not LIVE from the state dir\n{}",
        proxy.logs()
    );
    assert_eq!(reached(local(port)), "a");
    // The server answers at last, without the listener: the loaded one goes (the client
    // started out holding it, so State of the World removes it).
    let mut requests = Requests::new(&stream.requests);
    let lds = requests.next(LISTENER_TYPE, |_| true);
    assert!(
        lds.version_info.is_empty(),
        "a new process has accepted nothing yet"
    );
    respond(&stream, LISTENER_TYPE, "l9", "n9", Vec::new());
    assert!(
        wait_until(WAIT, || connect(local(port)).is_err()),
        "a listener the server no longer has still serves after the warm start\n{}",
        proxy.logs()
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// One row of the ACK/NACK table: a response of `type_url` with `resources`, and whether it
/// must be accepted whole.
struct Case {
    what: &'static str,
    type_url: &'static str,
    resources: Vec<Any>,
    ack: bool,
}

fn static_cluster_any(name: &str, endpoint_port: u32) -> Any {
    let la = load_assignment(name, address_of("127.0.0.1", endpoint_port));
    let c = Cluster {
        name: name.into(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        load_assignment: Some(la),
        ..Cluster::default()
    };
    any(CLUSTER_TYPE, &c)
}

fn listener_on_port(name: &str, port: u32) -> Any {
    listener_with_filter(name, port, "svc", TCP_PROXY_TYPE)
}

fn listener_matching(port: u32, prefix: &str) -> Any {
    let mut l = Listener::decode(listener_on_port("l-cidr", port).value.as_slice()).unwrap();
    l.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
        prefix_ranges: vec![CidrRange {
            address_prefix: prefix.into(),
            prefix_len: Some(UInt32Value { value: 8 }),
        }],
        ..FilterChainMatch::default()
    });
    any(LISTENER_TYPE, &l)
}

fn listener_without_chains(port: u32) -> Any {
    let mut l = Listener::decode(listener_on_port("l-empty", port).value.as_slice()).unwrap();
    l.filter_chains.clear();
    any(LISTENER_TYPE, &l)
}

/// The same table of valid and invalid resources gets the same ACK/NACK decisions from
/// Switchyard and from real Envoy (the CI runs this file against both).
#[test]
fn ack_nack_decisions_match_envoy() {
    let Some(Setup { proxy, sotw, .. }) = setup("GRPC") else {
        return;
    };
    let stream = first_stream(&sotw, &proxy);
    let mut requests = Requests::new(&stream.requests);
    requests.next(CLUSTER_TYPE, |_| true);
    let free = u32::from(free_port());
    let free2 = u32::from(free_port());
    let cases = vec![
        Case {
            what: "a static cluster",
            type_url: CLUSTER_TYPE,
            resources: vec![static_cluster_any("ok1", 9000)],
            ack: true,
        },
        Case {
            what: "an endpoint on port 70000",
            type_url: CLUSTER_TYPE,
            resources: vec![static_cluster_any("bad-port", 70000)],
            ack: false,
        },
        Case {
            what: "two clusters with one name",
            type_url: CLUSTER_TYPE,
            resources: vec![
                static_cluster_any("dup", 9000),
                static_cluster_any("dup", 9001),
            ],
            ack: false,
        },
        Case {
            what: "a cluster without a name",
            type_url: CLUSTER_TYPE,
            resources: vec![static_cluster_any("", 9000)],
            ack: false,
        },
        Case {
            what: "a listener",
            type_url: LISTENER_TYPE,
            resources: vec![listener_on_port("l-ok", free)],
            ack: true,
        },
        Case {
            what: "a listener on port 70000",
            type_url: LISTENER_TYPE,
            resources: vec![listener_on_port("l-bad", 70000)],
            ack: false,
        },
        Case {
            what: "a listener with an unknown filter type",
            type_url: LISTENER_TYPE,
            resources: vec![listener_with_filter(
                "l-unknown",
                free_port().into(),
                "svc",
                "type.googleapis.com/example.UnknownFilter",
            )],
            ack: false,
        },
        Case {
            what: "a listener matching a malformed CIDR",
            type_url: LISTENER_TYPE,
            resources: vec![listener_matching(free, "10.0.0.300")],
            ack: false,
        },
        Case {
            what: "a listener without filter chains",
            type_url: LISTENER_TYPE,
            resources: vec![listener_without_chains(free)],
            ack: false,
        },
        Case {
            what: "two listeners on one address",
            type_url: LISTENER_TYPE,
            resources: vec![
                listener_on_port("l-one", free2),
                listener_on_port("l-two", free2),
            ],
            ack: false,
        },
    ];
    let mut mismatches = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let nonce = format!("t{i}");
        // Each response is the whole set of its type (SotW): the valid first resource of the
        // type rides along so that a later case does not remove it.
        respond(
            &stream,
            case.type_url,
            &format!("v{i}"),
            &nonce,
            case.resources.clone(),
        );
        let answer = requests.next(case.type_url, |r| r.response_nonce == nonce);
        let acked = answer.error_detail.is_none();
        if acked != case.ack {
            mismatches.push(format!(
                "{}: expected {}, got {} ({:?})",
                case.what,
                if case.ack { "ACK" } else { "NACK" },
                if acked { "ACK" } else { "NACK" },
                answer.error_detail.map(|d| d.message)
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// `ingress` on `port` to `cluster`, with Switchyard's fault filter (abort at accept for
/// `percent` of connections) before the tcp_proxy.
fn faulty_listener(port: u16, cluster: &str, percent: f64) -> Any {
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
    use switchyard_control::ext::fault::{Abort, Fault};
    let plain = Listener::decode(listener("ingress", port, cluster).value.as_slice())
        .expect("listener decodes");
    let fault = Fault {
        stat_prefix: "chaos".into(),
        abort: Some(Abort {
            after_bytes: 0,
            percent: Some(percent),
        }),
        ..Fault::default()
    };
    let mut l = plain;
    l.filter_chains[0].filters.insert(
        0,
        Filter {
            name: "switchyard.filters.network.fault".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(
                &format!(
                    "type.googleapis.com/{}",
                    switchyard_control::type_names::FAULT
                ),
                &fault,
            ))),
        },
    );
    any(LISTENER_TYPE, &l)
}

/// Faults change over LDS without a restart: a listener update adds the fault filter
/// (every connection aborted), is ACKed, and a second update takes it away again, in one
/// process. Switchyard only: the fault filter is its own extension.
#[test]
fn a_fault_is_switched_on_and_off_over_lds() {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "L4 fault injection (a Switchyard extension)");
        return;
    }
    let Some(Setup {
        a,
        proxy,
        port,
        sotw,
        ..
    }) = setup("GRPC")
    else {
        return;
    };
    let pid = proxy.pid();
    let stream = first_stream(&sotw, &proxy);
    let mut requests = configured(&stream, a.port(), port);

    respond_acked(
        &stream,
        &mut requests,
        LISTENER_TYPE,
        "l2",
        "n4",
        vec![faulty_listener(port, "svc", 100.0)],
    );
    assert!(
        wait_until(WAIT, || which_backend(local(port)).is_err()),
        "the fault took effect"
    );
    for i in 0..20 {
        assert!(
            which_backend(local(port)).is_err(),
            "connection {i} was not aborted"
        );
    }
    assert!(proxy.stat("fault.chaos.aborts_injected") >= 20);

    respond(
        &stream,
        LISTENER_TYPE,
        "l3",
        "n5",
        vec![listener("ingress", port, "svc")],
    );
    assert_eq!(reached(local(port)), "a", "the fault is gone");
    assert_eq!(proxy.pid(), pid, "one process throughout");
}

/// Sends a response and waits for its ACK (a request of that type with its nonce and no
/// error).
fn respond_acked(
    stream: &SotwHandle,
    requests: &mut Requests<'_, DiscoveryRequest>,
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) {
    respond(stream, type_url, version, nonce, resources);
    let ack = requests.next(type_url, |r| r.response_nonce == nonce);
    assert_eq!(ack.version_info, version, "ACKed");
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
}

/// Sends `msg` from `c` and says whether it came back within 200 ms.
fn udp_answered(c: &std::net::UdpSocket, msg: &[u8]) -> bool {
    let mut buf = [0u8; 2048];
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = c.send(msg);
    loop {
        match udp_recv(c, &mut buf) {
            Ok(n) if &buf[..n] == msg => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_udp_listener_comes_and_goes_over_lds_and_its_sessions_survive_other_updates() {
    let Some(Setup {
        a,
        proxy,
        port,
        sotw,
        ..
    }) = setup("GRPC")
    else {
        return;
    };
    let echo = UdpBackend::echo();
    let echo_port = u32::from(echo.addr.port());
    let udp_port = free_port();
    let stream = first_stream(&sotw, &proxy);
    let mut requests = configured(&stream, a.port(), port);

    respond_acked(
        &stream,
        &mut requests,
        CLUSTER_TYPE,
        "c2",
        "n4",
        vec![eds_cluster("svc"), static_cluster_any("udp", echo_port)],
    );
    let dns = || fixtures::udp_proxy_listener("dns", "127.0.0.1", udp_port.into(), "udp");
    respond_acked(
        &stream,
        &mut requests,
        LISTENER_TYPE,
        "l2",
        "n5",
        vec![listener("ingress", port, "svc"), dns()],
    );
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(local(udp_port)).unwrap();
    assert!(
        wait_until(WAIT, || udp_answered(&client, b"query 1")),
        "the UDP listener never answered\n{}",
        proxy.logs()
    );
    assert_eq!(proxy.stat("udp.dns.downstream_sess_total"), 1);

    // The TCP listener moves; the UDP listener is the same: its session goes on.
    let port2 = free_port();
    respond_acked(
        &stream,
        &mut requests,
        LISTENER_TYPE,
        "l3",
        "n6",
        vec![listener("ingress2", port2, "svc"), dns()],
    );
    assert_eq!(reached(local(port2)), "a");
    for i in 2..12 {
        assert!(
            udp_answered(&client, format!("query {i}").as_bytes()),
            "query {i}"
        );
    }
    assert_eq!(
        proxy.stat("udp.dns.downstream_sess_total"),
        1,
        "one session throughout"
    );

    // The UDP listener is removed: nothing answers.
    respond_acked(
        &stream,
        &mut requests,
        LISTENER_TYPE,
        "l4",
        "n7",
        vec![listener("ingress2", port2, "svc")],
    );
    assert!(
        wait_until(WAIT, || !udp_answered(&client, b"anyone?")),
        "the removed UDP listener still answers"
    );
}

/// A STRICT_DNS cluster received over CDS, its name answered by the test's DNS server:
/// traffic reaches the address the name resolves to, and follows a changed answer while a
/// held connection keeps its backend.
#[test]
#[allow(deprecated)] // `dns_refresh_rate`: the v3 API prefers the DnsCluster extension
fn a_dns_cluster_over_cds_follows_its_names_answers() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType, DnsLookupFamily,
    };
    use envoy_types::pb::envoy::config::core::v3::{DnsResolverOptions, TypedExtensionConfig};
    use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
    let Some(Setup {
        a,
        proxy,
        port,
        sotw,
        ..
    }) = setup("GRPC")
    else {
        return;
    };
    // The same port as `a` on 127.0.0.2, for the changed answer.
    let _c = Backend::start_at(
        SocketAddr::from(([127, 0, 0, 2], a.port())),
        Mode::Tagged("c".into()),
    );
    let dns = DnsServer::start();
    let name = "cds.switchyard.test";
    dns.set_a(name, &[std::net::Ipv4Addr::LOCALHOST]);
    let resolver = CaresDnsResolverConfig {
        resolvers: vec![address_of("127.0.0.1", dns.port().into())],
        dns_resolver_options: Some(DnsResolverOptions {
            no_default_search_domain: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let cluster = Cluster {
        name: "svc".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32)),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        dns_refresh_rate: Some(PbDuration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        typed_dns_resolver_config: Some(TypedExtensionConfig {
            name: "envoy.network.dns_resolver.cares".into(),
            typed_config: Some(any(
                "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
                &resolver,
            )),
        }),
        load_assignment: Some(load_assignment("svc", address_of(name, a.port().into()))),
        ..Cluster::default()
    };
    let stream = first_stream(&sotw, &proxy);
    let mut requests = Requests::new(&stream.requests);
    requests.next(CLUSTER_TYPE, |_| true);
    respond(
        &stream,
        CLUSTER_TYPE,
        "c1",
        "n1",
        vec![any(CLUSTER_TYPE, &cluster)],
    );
    requests.next(LISTENER_TYPE, |_| true);
    respond(
        &stream,
        LISTENER_TYPE,
        "l1",
        "n2",
        vec![listener("ingress", port, "svc")],
    );
    let through = local(port);
    assert_eq!(reached(through), "a", "{}", proxy.logs());
    let mut held = connect_retry(through, WAIT);
    assert_eq!(read_line(&mut held).unwrap(), "a");
    dns.set_a(name, &[std::net::Ipv4Addr::new(127, 0, 0, 2)]);
    assert!(
        wait_until(WAIT, || which_backend(through).ok().as_deref() == Some("c")),
        "new connections never followed the answer\n{}",
        proxy.logs()
    );
    assert_eq!(ping(&mut held, b"still here").unwrap(), b"still here");
    assert!(proxy.stat("cluster.svc.update_success") >= 2);
}
