//! A hand-built FIB, stats registry and admin state for the admin's tests.

use super::{AdminAction, AdminState, STATE_LIVE};
use crate::stats::StatsRegistry;
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use switchyard_dataplane::fib::{
    Cluster, ClusterId, Endpoint, Fib, LbPolicy, Listener, Route, UdpListener, UdpProxy,
};
use switchyard_dataplane::host::HostState;
use switchyard_dataplane::stats::{
    ClusterStat, ClusterUdpStat, HostStat, ListenerStat, ListenerUdpStat, ServerStat, TcpStat,
    UdpStat,
};

pub(crate) struct Fixture {
    pub state: Arc<AdminState>,
    pub actions: Receiver<AdminAction>,
}

/// Two workers; listener `gw` on 127.0.0.1:10000; cluster `echo` with endpoints
/// 127.0.0.1:9001 (weight one) and 127.0.0.1:9002 (weight three); cluster `empty` with no
/// endpoint; tcp prefix `l4`; UDP listener `dns` on 127.0.0.1:10000 to `echo`, udp prefix
/// `dns`.
///
/// Traffic so far: three connections (one on worker 0, two on worker 1, one of them still
/// open), five upstream connects to echo (three to 9001 with one failure, two to 9002), and
/// 100 bytes received; two UDP sessions (one still open), four datagrams sent to echo, one
/// dropped at the UDP listener (longer than its `max_rx_datagram_size`).
pub(crate) fn fixture() -> Fixture {
    let reg = Arc::new(StatsRegistry::new(2));
    let tcp = reg.tcp("l4");
    tcp.inc(0, TcpStat::DownstreamCxTotal);
    tcp.add(1, TcpStat::DownstreamCxTotal, 2);
    tcp.inc(1, TcpStat::DownstreamCxActive);
    tcp.add(0, TcpStat::DownstreamCxRxBytesTotal, 100);

    let listener_addr = "127.0.0.1:10000".parse().unwrap();
    let ls = reg.listener(listener_addr);
    ls.inc(0, ListenerStat::DownstreamCxTotal);
    ls.add(1, ListenerStat::DownstreamCxTotal, 2);
    ls.inc(1, ListenerStat::DownstreamCxActive);

    let echo = reg.cluster("echo");
    echo.add(0, ClusterStat::UpstreamCxTotal, 5);
    echo.inc(1, ClusterStat::UpstreamCxActive);
    echo.inc(0, ClusterStat::UpstreamCxConnectFail);
    let empty = reg.cluster("empty");

    let udp = reg.udp("dns");
    udp.add(0, UdpStat::DownstreamSessTotal, 2);
    udp.inc(1, UdpStat::DownstreamSessActive);
    let echo_udp = reg.cluster_udp("echo");
    echo_udp.add(1, ClusterUdpStat::SessTxDatagrams, 4);
    reg.listener_udp(listener_addr)
        .inc(0, ListenerUdpStat::DownstreamRxDatagramDropped);

    let a1 = "127.0.0.1:9001".parse().unwrap();
    let a2 = "127.0.0.1:9002".parse().unwrap();
    let h1 = Arc::new(HostState::new());
    h1.add(HostStat::CxTotal, 3);
    h1.inc(HostStat::CxConnectFail);
    h1.inc(HostStat::CxActive);
    let h2 = Arc::new(HostState::new());
    h2.add(HostStat::CxTotal, 2);
    h2.inc(HostStat::RqError);

    reg.server().inc(1, ServerStat::TotalConnections);

    let fib = Fib {
        generation: 1,
        listeners: vec![Listener {
            name: "gw".into(),
            address: listener_addr,
            filter_chains: Vec::new(),
            chain_index: Default::default(),
            default_chain: None,
            chain_matcher: None,
            backlog: 1024,
            stats: ls,
            use_original_dst: false,
            transparent: false,
            reuse_port: true,
            original_src: None,
            buffer_limit_bytes: 1024 * 1024,
            max_accepts_per_event: None,
            access_logs: Vec::new(),
            ignore_global_conn_limit: false,
            ssl_stats: None,
            proxy_protocol: None,
            tls_inspector: None,
            filter_deadline: Default::default(),
        }],
        clusters: vec![
            Arc::new(Cluster {
                http2: None,
                original_dst_authority: false,
                name: "echo".into(),
                observability_name: "echo".into(),
                connect_timeout_ms: 1000,
                buffer_limit_bytes: 1024 * 1024,
                lb_policy: LbPolicy::RoundRobin,
                endpoints: vec![
                    Endpoint {
                        address: a1,
                        weight: 1,
                        priority: 0,
                        locality: Default::default(),
                        tunnel: None,
                        stats: h1,
                    },
                    Endpoint {
                        address: a2,
                        weight: 3,
                        priority: 0,
                        locality: Default::default(),
                        tunnel: None,
                        stats: h2,
                    },
                ],
                stats: echo,
                upstream_bind: Default::default(),
                hash_table: None,
                circuit_breakers: Default::default(),
                resources: Default::default(),
                health: Default::default(),
                health_state: Default::default(),
                added_via_api: false,
                udp_stats: echo_udp,
                tls: None,
                proxy_protocol: None,
                tls_secrets_missing: false,
                ssl_stats: None,
            }),
            Arc::new(Cluster {
                http2: None,
                original_dst_authority: false,
                name: "empty".into(),
                observability_name: "empty".into(),
                connect_timeout_ms: 1000,
                buffer_limit_bytes: 1024 * 1024,
                lb_policy: LbPolicy::RoundRobin,
                endpoints: Vec::new(),
                stats: empty,
                upstream_bind: Default::default(),
                hash_table: None,
                circuit_breakers: Default::default(),
                resources: Default::default(),
                health: Default::default(),
                health_state: Default::default(),
                added_via_api: false,
                udp_stats: reg.cluster_udp_unrouted().clone(),
                tls: None,
                proxy_protocol: None,
                tls_secrets_missing: false,
                ssl_stats: None,
            }),
        ],
        own_addresses: vec![listener_addr],
        udp_listeners: vec![UdpListener {
            name: "dns".into(),
            address: listener_addr,
            proxy: UdpProxy {
                stats: udp,
                route: Route::Cluster(ClusterId(0)),
                idle_timeout_ms: Some(60_000),
                hash_source_ip: false,
                max_upstream_rx_datagram_bytes: None,
            },
            max_rx_datagram_bytes: Some(1500),
            udp_stats: reg.listener_udp(listener_addr),
        }],
    };
    let (tx, rx) = channel();
    let state = AdminState::new(
        reg,
        Arc::new(ArcSwap::from_pointee(fib)),
        2,
        vec![
            "switchyard".into(),
            "-c".into(),
            "/etc/sy.yaml".into(),
            "--drain-time-s=30".into(),
        ],
        tx,
    );
    state.server_state.store(STATE_LIVE, Ordering::Relaxed);
    *state.config_dump.lock().unwrap() = bootstrap_json();
    Fixture {
        state: Arc::new(state),
        actions: rx,
    }
}

/// The bootstrap the fixture's FIB came from, as proto3 JSON.
pub(crate) fn bootstrap_json() -> serde_json::Value {
    serde_json::json!({
        "node": {"id": "node-1", "cluster": "gateways"},
        "static_resources": {
            "listeners": [{
                "name": "gw",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "l4",
                        "cluster": "echo"
                    }
                }]}]
            }, {
                "name": "dns",
                "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1", "port_value": 10000}},
                "listener_filters": [{
                    "name": "envoy.filters.udp_listener.udp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
                        "stat_prefix": "dns",
                        "matcher": {"on_no_match": {"action": {
                            "name": "route",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
                                "cluster": "echo"
                            }
                        }}}
                    }
                }]
            }],
            "clusters": [
                {"name": "echo", "connect_timeout": "1s"},
                {"name": "empty", "connect_timeout": "1s"}
            ]
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}}
    })
}
