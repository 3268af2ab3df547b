//! Load balancing and connect behaviour: weighted round robin, locality-weighted balancing
//! (by `lb_policy` and by the typed `load_balancing_policy`),
//! connect-failure retry on another endpoint (`max_connect_attempts`), and a cluster with no
//! endpoints.
//!
//! Run against real Envoy with `SWITCHYARD_TEST_PROXY=envoy`.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Weights 1 and 3 over 400 sequential connections with one worker: Envoy's EDF scheduler gives
/// exactly 100/300 (every window of 4 picks is 1+3). We allow +-2 for a different but still
/// smooth weighted round robin.
#[test]
fn weighted_round_robin_1_to_3() {
    let a = Backend::tagged("a");
    let b = Backend::tagged("b");
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("wrr", port, "wrr", "wrr"),
        &static_cluster("wrr", &[(a.addr, 1), (b.addr, 3)]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let addr = local(port);
    const N: usize = 400;
    let (mut na, mut nb) = (0usize, 0usize);
    for i in 0..N {
        let tag =
            which_backend(addr).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", proxy.logs()));
        match tag.as_str() {
            "a" => na += 1,
            "b" => nb += 1,
            other => panic!("connection {i}: unexpected tag {other:?}\n{}", proxy.logs()),
        }
    }
    eprintln!("weighted RR over {N}: a={na} b={nb}");
    assert_eq!(na + nb, N);
    assert!(
        na.abs_diff(100) <= 2 && nb.abs_diff(300) <= 2,
        "weighted RR 1:3 over {N}: a={na} b={nb}"
    );
    assert!(wait_until(Duration::from_secs(5), || a.accepted() == na
        && b.accepted() == nb));
    // Envoy's stat names.
    let total = proxy.wait_stat(
        "cluster.wrr.upstream_cx_total",
        N as u64,
        Duration::from_secs(5),
    );
    assert_eq!(total, N as u64, "cluster.wrr.upstream_cx_total");
    assert_eq!(proxy.stat("tcp.wrr.downstream_cx_total"), N as u64);
}

/// `common_lb_config.locality_weighted_lb_config` with localities weighted 1 and 3 (two
/// backends each) and a third without a weight, over 400 sequential connections with one
/// worker: the localities get 100 and 300 (Envoy's EDF over locality weights), each split
/// evenly between its two backends, the weightless one none; `/clusters` shows each host's
/// region and zone.
#[test]
fn locality_weights_split_connections_before_hosts() {
    locality_split(
        "    lb_policy: ROUND_ROBIN\n    common_lb_config:\n      locality_weighted_lb_config: {}\n",
    );
}

/// The same through the typed `load_balancing_policy` (Envoy's round_robin extension with
/// `locality_lb_config.locality_weighted_lb_config`), listed after an empty entry that Envoy
/// skips: the same split. Its `lb_policy` (the default, ROUND_ROBIN) is what Envoy ignores.
#[test]
fn typed_round_robin_policy_splits_like_lb_policy() {
    locality_split(
        "    load_balancing_policy:
      policies:
      - {}
      - typed_extension_config:
          name: envoy.load_balancing_policies.round_robin
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin
            locality_lb_config:
              locality_weighted_lb_config: {}
",
    );
}

/// Localities weighted 1 and 3 and one without a weight, under the balancing given by `lb`
/// (lines of the cluster): see `locality_weights_split_connections_before_hosts`.
fn locality_split(lb: &str) {
    let tags = ["a1", "a2", "b1", "b2", "c1"];
    let backends: Vec<Backend> = tags.iter().map(|t| Backend::tagged(t)).collect();
    let (admin, port) = (free_port(), free_port());
    let endpoint = |b: &Backend| {
        format!(
            "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n",
            b.addr.ip(),
            b.addr.port()
        )
    };
    let locality = |zone: &str, weight: Option<u32>, members: &[&Backend]| {
        let weight = weight.map_or(String::new(), |w| {
            format!("        load_balancing_weight: {w}\n")
        });
        let eps: String = members.iter().map(|b| endpoint(b)).collect();
        format!("      - locality: {{ region: r1, zone: {zone} }}\n{weight}        lb_endpoints:\n{eps}")
    };
    let cluster = format!(
        "  - name: loc\n    type: STATIC\n    connect_timeout: 1s\n{lb}    load_assignment:\n      cluster_name: loc\n      endpoints:\n{}{}{}",
        locality("za", Some(1), &[&backends[0], &backends[1]]),
        locality("zb", Some(3), &[&backends[2], &backends[3]]),
        locality("zc", None, &[&backends[4]]),
    );
    let yaml = bootstrap(admin, &tcp_listener("loc", port, "loc", "loc"), &cluster);
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    const N: usize = 400;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..N {
        let tag = which_backend(local(port))
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", proxy.logs()));
        *counts.entry(tag).or_default() += 1;
    }
    let n = |t: &str| counts.get(t).copied().unwrap_or(0);
    eprintln!("locality-weighted over {N}: {counts:?}");
    assert_eq!(
        n("c1"),
        0,
        "the locality without a weight got connections: {counts:?}"
    );
    let (za, zb) = (n("a1") + n("a2"), n("b1") + n("b2"));
    assert_eq!(za + zb, N, "{counts:?}");
    assert!(
        za.abs_diff(100) <= 2 && zb.abs_diff(300) <= 2,
        "localities 1:3: {counts:?}"
    );
    assert!(
        n("a1").abs_diff(n("a2")) <= 2 && n("b1").abs_diff(n("b2")) <= 2,
        "{counts:?}"
    );
    let clusters = proxy.get("/clusters").body;
    for (b, zone) in [
        (&backends[0], "za"),
        (&backends[2], "zb"),
        (&backends[4], "zc"),
    ] {
        for line in [
            format!("loc::{}::region::r1", b.addr),
            format!("loc::{}::zone::{zone}", b.addr),
        ] {
            assert!(
                clusters.contains(&line),
                "/clusters lacks {line}:\n{clusters}"
            );
        }
    }
}

/// One endpoint is a closed port; with `max_connect_attempts: 2` every client connection must
/// still reach the healthy endpoint, and the failures are counted.
#[test]
fn connect_failure_is_retried_on_the_healthy_endpoint() {
    let good = Backend::tagged("good");
    let dead = local(closed_port());
    let admin = free_port();
    let port = free_port();
    let listener = format!(
        r#"  - name: retry
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: retry
          cluster: retry
          max_connect_attempts: 2
"#
    );
    let yaml = bootstrap(
        admin,
        &listener,
        &static_cluster("retry", &[(dead, 1), (good.addr, 1)]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let addr = local(port);
    const N: usize = 40;
    for i in 0..N {
        let tag =
            which_backend(addr).unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", proxy.logs()));
        assert_eq!(
            tag,
            "good",
            "connection {i} did not reach the healthy endpoint\n{}",
            proxy.logs()
        );
    }
    assert_eq!(good.accepted(), N);
    let fails = proxy.stat("cluster.retry.upstream_cx_connect_fail");
    eprintln!("upstream_cx_connect_fail = {fails} over {N} connections");
    assert!(
        fails >= 1,
        "upstream_cx_connect_fail should count the refused attempts, got {fails}"
    );
    assert_eq!(proxy.stat("tcp.retry.downstream_cx_total"), N as u64);
}

/// A cluster with no endpoints: the client is closed at once (EOF or reset within 1 s).
#[test]
fn cluster_without_endpoints_closes_client_at_once() {
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("empty", port, "empty", "empty"),
        &static_cluster("empty", &[]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let addr = local(port);
    for i in 0..5 {
        let t0 = Instant::now();
        let mut s = connect_retry(addr, Duration::from_secs(5));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (data, end) = read_all(&mut s, 1024);
        let took = t0.elapsed();
        assert!(data.is_empty(), "connection {i}: got data {data:?}");
        assert!(
            matches!(end, End::Eof | End::Reset),
            "connection {i}: expected close, got {end:?} after {took:?}\n{}",
            proxy.logs()
        );
        assert!(
            took < Duration::from_secs(1),
            "connection {i}: closed only after {took:?}"
        );
    }
    let none = proxy.stat("cluster.empty.upstream_cx_none_healthy");
    assert_eq!(none, 5, "cluster.empty.upstream_cx_none_healthy");
}
