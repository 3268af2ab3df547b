//! A standalone SNI gateway through the real proxy: one listener with a TLS inspector and
//! 2,000 filter chains, each matching one server name and sending it to one of two clusters
//! (even and odd names); a ClientHello for a name reaches its cluster's tagged backend, and a
//! name no chain lists matches nothing (`no_filter_chain_match`). Against Envoy too.

mod common;

use common::*;
use std::io::Write;
use std::time::Duration;

const CHAINS: usize = 2_000;

/// The cluster of `svc-i.example.com`.
fn cluster_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "even"
    } else {
        "odd"
    }
}

/// The chain of `svc-i.example.com`: to its cluster.
fn chain(i: usize) -> String {
    let cluster = cluster_of(i);
    format!(
        r#"    - filter_chain_match: {{ server_names: [svc-{i}.example.com] }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: sni
          cluster: {cluster}
"#
    )
}

/// Sends a ClientHello for `name` through `port`; the tag of the backend it reached, or
/// `None` when the proxy closed the connection.
fn reach(port: u16, name: &str) -> Option<String> {
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&client_hello(name)).unwrap();
    let tag = read_line(&mut s).ok()?;
    (!tag.is_empty()).then(|| tag.trim().to_string())
}

#[test]
fn two_thousand_server_names_each_their_chain() {
    let (even, odd) = (Backend::tagged("even"), Backend::tagged("odd"));
    let (admin, port) = (free_port(), free_port());
    let chains: String = (0..CHAINS).map(chain).collect();
    let listener = format!(
        "  - name: sni\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n    listener_filters:\n    - name: envoy.filters.listener.tls_inspector\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector\n    filter_chains:\n{chains}"
    );
    let clusters =
        static_cluster("even", &[(even.addr, 1)]) + &static_cluster("odd", &[(odd.addr, 1)]);
    let Some(proxy) = start_selected(&bootstrap(admin, &listener, &clusters)) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(20));
    for i in [0, 1, 2, 777, 1_000, 1_998, 1_999] {
        let got = reach(port, &format!("svc-{i}.example.com"));
        assert_eq!(got.as_deref(), Some(cluster_of(i)), "svc-{i}.example.com");
    }
    assert_eq!(reach(port, "svc-2000.example.com"), None);
    let stat = format!("listener.127.0.0.1_{port}.no_filter_chain_match");
    assert_eq!(proxy.wait_stat(&stat, 1, Duration::from_secs(5)), 1);
}
