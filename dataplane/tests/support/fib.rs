//! The one-listener, one-cluster FIB the data plane's socket tests start from.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use switchyard_dataplane::fib::*;
use switchyard_dataplane::host::HostState;
use switchyard_dataplane::stats::*;

/// A plaintext chain `name` matching everything, with only a tcp_proxy (stats
/// `tcp.<stat_prefix>`) to the first cluster, making at most `max_connect_attempts`.
pub fn plain_chain(
    name: &str,
    stat_prefix: &str,
    workers: usize,
    max_connect_attempts: u32,
) -> FilterChain {
    FilterChain {
        hbone: None,
        name: name.into(),
        matcher: ChainMatch::default(),
        connection_limit: None,
        local_rate_limit: None,
        rbac: None,
        source_limit: None,
        gates: Vec::new(),
        fault: None,
        mirror: None,
        tcp_proxy: TcpProxy {
            tunneling: None,
            stats: Arc::new(TcpStats::new(stat_prefix, workers)),
            route: Route::Cluster(ClusterId(0)),
            idle_timeout_ms: None,
            max_connect_attempts,
            access_logs: vec![],
            hash_source_ip: false,
        },
        tls: None,
    }
}

/// A listener on `listen` with one plaintext chain to cluster `echo` over `backends`
/// (round robin, two connect attempts), for `workers` workers.
pub fn fib(listen: SocketAddr, backends: &[SocketAddr], workers: usize) -> Fib {
    let cluster = Cluster {
        http2: None,
        original_dst_authority: false,
        name: "echo".into(),
        observability_name: "echo".into(),
        connect_timeout_ms: 1000,
        buffer_limit_bytes: 1024 * 1024,
        lb_policy: LbPolicy::RoundRobin,
        endpoints: backends
            .iter()
            .map(|a| Endpoint {
                address: *a,
                weight: 1,
                priority: 0,
                locality: Default::default(),
                tunnel: None,
                stats: Arc::new(HostState::new()),
            })
            .collect(),
        stats: Arc::new(ClusterStats::new("echo", workers)),
        upstream_bind: Default::default(),
        hash_table: None,
        circuit_breakers: Default::default(),
        resources: Default::default(),
        health: Default::default(),
        health_state: Default::default(),
        added_via_api: false,
        udp_stats: Arc::new(ClusterUdpStats::new("echo", 1)),
        tls: None,
        proxy_protocol: None,
        tls_secrets_missing: false,
        ssl_stats: None,
    };
    let chain = plain_chain("", "l4", workers, 2);
    Fib {
        generation: 1,
        listeners: vec![Listener {
            name: "gw".into(),
            address: listen,
            chain_index: ChainIndex::build([&chain.matcher]),
            filter_chains: vec![chain],
            default_chain: None,
            chain_matcher: None,
            backlog: 128,
            stats: Arc::new(ListenerStats::new(listener_stat_name(&listen), workers)),
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
            filter_deadline: FilterDeadline::default(),
        }],
        clusters: vec![Arc::new(cluster)],
        own_addresses: vec![listen],
        udp_listeners: Vec::new(),
    }
}

/// An echo server on loopback (for the first 64 connections), each connection on its own
/// thread; it ends its side after the client's end.
pub fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                echo(&s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

/// Writes back what `s` reads until its end or an error.
pub fn echo(mut s: impl Read + Write) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}
