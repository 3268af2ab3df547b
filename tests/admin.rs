//! The admin API, Envoy-compatible: /ready, /stats (text and JSON) with Envoy's stat names and
//! exact values, /stats/prometheus, /clusters, /listeners, /config_dump, and /quitquitquit
//! (GET refused with 405, POST exits).
//!
//! Run against real Envoy with `SWITCHYARD_TEST_PROXY=envoy`.

mod common;

use common::*;
use std::time::Duration;

const PREFIX: &str = "admin_l4";
const CLUSTER: &str = "admin_be";

#[test]
fn admin_endpoints_report_connections_and_bytes() {
    let be = Backend::echo();
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("admin_listener", port, PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(be.addr, 1)]),
    );
    let Some(mut proxy) = start_selected(&yaml) else {
        return;
    };

    // /ready
    let r = proxy.get("/ready");
    assert_eq!(r.status, 200, "/ready");
    assert_eq!(r.body.trim(), "LIVE", "/ready body");

    // N connections, each sending i+1000 bytes through the echo backend.
    const N: u64 = 10;
    let addr = local(port);
    let mut total: u64 = 0;
    for i in 0..N {
        let s = connect_retry(addr, Duration::from_secs(5));
        let n = 1000 + i;
        let x = exchange(s, i, n);
        assert_eq!(x.received, n, "connection {i}");
        assert_eq!(x.received_sha, x.sent_sha, "connection {i}");
        total += n;
    }
    let _ = be.wait_reports(N as usize, Duration::from_secs(5));

    let ds = |s: &str| format!("tcp.{PREFIX}.{s}");
    let us = |s: &str| format!("cluster.{CLUSTER}.{s}");
    let t = Duration::from_secs(5);
    // Counters can trail the close by a moment: poll for the final values.
    assert_eq!(proxy.wait_stat(&ds("downstream_cx_total"), N, t), N);
    assert_eq!(proxy.wait_stat(&us("upstream_cx_total"), N, t), N);
    assert_eq!(
        proxy.wait_stat(&ds("downstream_cx_rx_bytes_total"), total, t),
        total
    );
    assert_eq!(
        proxy.wait_stat(&ds("downstream_cx_tx_bytes_total"), total, t),
        total
    );
    assert_eq!(
        proxy.wait_stat(&us("upstream_cx_rx_bytes_total"), total, t),
        total
    );
    assert_eq!(
        proxy.wait_stat(&us("upstream_cx_tx_bytes_total"), total, t),
        total
    );
    assert_eq!(proxy.wait_stat(&us("upstream_cx_active"), 0, t), 0);
    let stats = proxy.stats();
    assert_eq!(stats.get(&us("upstream_cx_connect_fail")).copied(), Some(0));
    assert_eq!(stats.get(&us("membership_total")).copied(), Some(1));
    assert_eq!(stats.get(&us("membership_healthy")).copied(), Some(1));
    assert_eq!(
        stats
            .get(&format!("listener.127.0.0.1_{port}.downstream_cx_total"))
            .copied(),
        Some(N),
        "listener.<ip>_<port>.downstream_cx_total"
    );

    // ?format=json parses and carries the same counter.
    let r = proxy.get("/stats?format=json");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/stats?format=json is not JSON: {e}"));
    let list = v["stats"].as_array().expect("stats array");
    let found = list
        .iter()
        .find(|s| s["name"] == serde_json::json!(ds("downstream_cx_total")))
        .expect("downstream_cx_total in JSON stats");
    assert_eq!(found["value"].as_u64(), Some(N));

    // Prometheus: prefixes become labels.
    let r = proxy.get("/stats/prometheus");
    assert_eq!(r.status, 200);
    let want = format!("envoy_tcp_downstream_cx_total{{envoy_tcp_prefix=\"{PREFIX}\"}} {N}");
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "prometheus output lacks {want:?}"
    );
    let want = format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{CLUSTER}\"}} {N}");
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "prometheus output lacks {want:?}"
    );

    // /clusters: name::host:port::cx_total::N
    let r = proxy.get("/clusters");
    assert_eq!(r.status, 200);
    let want = format!("{CLUSTER}::{}::cx_total::{N}", be.addr);
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "/clusters lacks {want:?}:\n{}",
        r.body
    );
    for want in [
        format!("{CLUSTER}::default_priority::max_connections::1024"),
        format!("{CLUSTER}::default_priority::max_retries::3"),
        format!("{CLUSTER}::high_priority::max_pending_requests::1024"),
    ] {
        assert!(
            r.body.lines().any(|l| l.trim() == want),
            "/clusters lacks the circuit breaker line {want:?}:\n{}",
            r.body
        );
    }
    let r = proxy.get("/clusters?format=json");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("/clusters?format=json");
    let cluster = v["cluster_statuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == CLUSTER))
        .unwrap_or_else(|| panic!("no {CLUSTER} in /clusters?format=json: {v}"));
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][0]["max_connections"], 1024,
        "{cluster}"
    );
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][1]["priority"], "HIGH",
        "{cluster}"
    );

    // /listeners: name::address
    let r = proxy.get("/listeners");
    assert_eq!(r.status, 200);
    let want = format!("admin_listener::127.0.0.1:{port}");
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "/listeners lacks {want:?}:\n{}",
        r.body
    );

    // /config_dump is JSON and names our cluster and listener.
    let r = proxy.get("/config_dump");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("/config_dump is JSON");
    assert!(v["configs"].is_array(), "config_dump.configs");
    assert!(r.body.contains(CLUSTER) && r.body.contains("admin_listener"));

    // Mutations are POST only.
    let r = proxy.get("/quitquitquit");
    assert_eq!(r.status, 405, "GET /quitquitquit must be refused");
    assert!(
        proxy.try_exit().is_none(),
        "GET /quitquitquit must not stop the proxy"
    );
    assert_eq!(proxy.get("/ready").status, 200);

    // POST /quitquitquit exits the process.
    let r = proxy.post("/quitquitquit");
    assert_eq!(r.status, 200, "POST /quitquitquit");
    let st = proxy.wait_exit(Duration::from_secs(10));
    let st = st.unwrap_or_else(|| panic!("did not exit after POST /quitquitquit"));
    assert!(st.success(), "exit status {st:?}\n{}", proxy.logs());
}
