//! The bootstrap's `stats_config` through the admin API: an inclusion list keeps only the
//! stats it matches in `/stats`, `/stats?format=json` and `/stats/prometheus`; custom regex
//! tags, a fixed tag and a default tag named without a regex (with
//! `use_all_default_tags: false`) shape the Prometheus form.
//!
//! Run against real Envoy with `SWITCHYARD_TEST_PROXY=envoy`: the assertions hold for both
//! (Envoy has histograms Switchyard lacks; only stats both have are named).

mod common;

use common::*;
use std::time::Duration;

const PREFIX: &str = "sc_l4";
const CLUSTER: &str = "sc_be";

fn stats_config() -> String {
    format!(
        "stats_config:
  use_all_default_tags: false
  stats_tags:
  - tag_name: envoy.cluster_name
  - tag_name: env
    fixed_value: prod
  - tag_name: direction
    regex: '_((rx|tx)_)bytes_total$'
  stats_matcher:
    inclusion_list:
      patterns:
      - prefix: cluster.{CLUSTER}.upstream_cx_
      - safe_regex: {{ regex: 'tcp\\.{PREFIX}\\.downstream_cx_(total|rx_bytes_total)' }}
      - exact: SERVER.LIVE
        ignore_case: true
"
    )
}

/// Whether the inclusion list above keeps `name`.
fn included(name: &str) -> bool {
    name.starts_with(&format!("cluster.{CLUSTER}.upstream_cx_"))
        || name == format!("tcp.{PREFIX}.downstream_cx_total")
        || name == format!("tcp.{PREFIX}.downstream_cx_rx_bytes_total")
        || name == "server.live"
}

#[test]
fn stats_config_tags_and_inclusion_list_in_every_form() {
    let be = Backend::echo();
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("sc_listener", port, PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(be.addr, 1)]),
    ) + &stats_config();
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let x = exchange(connect_retry(local(port), Duration::from_secs(5)), 1, 100);
    assert_eq!(x.received, 100);
    let _ = be.wait_reports(1, Duration::from_secs(5));
    let t = Duration::from_secs(5);
    let total = format!("tcp.{PREFIX}.downstream_cx_total");
    assert_eq!(proxy.wait_stat(&total, 1, t), 1);
    let rx = format!("cluster.{CLUSTER}.upstream_cx_rx_bytes_total");
    assert_eq!(proxy.wait_stat(&rx, 100, t), 100);

    // Text: only included names, and those both proxies have.
    let text = proxy.get("/stats").body;
    let names: Vec<&str> = text.lines().filter_map(|l| l.split(": ").next()).collect();
    for n in &names {
        assert!(included(n), "{n} is not in the inclusion list:\n{text}");
    }
    for want in [
        total.as_str(),
        &format!("tcp.{PREFIX}.downstream_cx_rx_bytes_total"),
        &format!("cluster.{CLUSTER}.upstream_cx_total"),
        &rx,
        "server.live",
    ] {
        assert!(names.contains(&want), "{want} missing:\n{text}");
    }

    // JSON: the same names.
    let v: serde_json::Value = serde_json::from_str(&proxy.get("/stats?format=json").body)
        .expect("/stats?format=json is JSON");
    let json_names: Vec<&str> = v["stats"]
        .as_array()
        .expect("stats array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(json_names.iter().all(|n| included(n)), "{json_names:?}");
    assert!(json_names.contains(&total.as_str()), "{json_names:?}");

    // Prometheus: tags in Envoy's order (unprefixed extractors first: the fixed tag, then the
    // regex; then envoy.cluster_name, whose regex starts with `cluster`).
    for path in ["/stats/prometheus", "/stats?format=prometheus"] {
        let prom = proxy.get(path).body;
        for line in [
            format!("envoy_tcp_{PREFIX}_downstream_cx_total{{env=\"prod\"}} 1\n"),
            format!(
                "envoy_tcp_{PREFIX}_downstream_cx_bytes_total{{env=\"prod\",direction=\"rx\"}} 100\n"
            ),
            format!(
                "envoy_cluster_upstream_cx_bytes_total{{env=\"prod\",direction=\"rx\",envoy_cluster_name=\"{CLUSTER}\"}} 100\n"
            ),
            format!("envoy_cluster_upstream_cx_total{{env=\"prod\",envoy_cluster_name=\"{CLUSTER}\"}} 1\n"),
            "envoy_server_live{env=\"prod\"} 1\n".to_string(),
        ] {
            assert!(prom.contains(&line), "{path}: missing {line:?} in\n{prom}");
        }
        assert!(
            !prom.contains("listener"),
            "{path}: listener stats kept:\n{prom}"
        );
        assert!(
            !prom.contains("membership_total"),
            "{path}: membership kept:\n{prom}"
        );
    }
}
