//! Size limits of the bootstrap loader: a YAML bootstrap as large as the xDS scale bench's
//! (10,000 clusters x 10 endpoints, about 1.2 million YAML nodes) loads, and a small file whose
//! aliases expand into a huge tree (billion laughs) is refused at once with an error that names
//! the limit and the size of the document.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use switchyard_control::load::load_rib;

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("large-configs-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A bootstrap of `clusters` STATIC clusters with `endpoints` endpoints each, and one listener.
fn bootstrap_yaml(clusters: usize, endpoints: usize) -> String {
    let mut y = String::from(
        "static_resources:\n  listeners:\n  - name: l\n    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: l\n          cluster: c0\n  clusters:\n",
    );
    for c in 0..clusters {
        let _ = write!(
            y,
            "  - name: c{c}\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: c{c}\n      endpoints:\n      - lb_endpoints:\n"
        );
        for e in 0..endpoints {
            let _ = writeln!(
                y,
                "        - endpoint: {{address: {{socket_address: {{address: 10.{}.{}.{}, port_value: 8080}}}}}}",
                c / 256,
                c % 256,
                e + 1
            );
        }
    }
    y
}

#[test]
fn yaml_bootstrap_of_10k_clusters_x_10_endpoints_loads() {
    let yaml = bootstrap_yaml(10_000, 10);
    let path = temp_file("10k-x-10.yaml", &yaml);
    let (rib, _) = load_rib(&path).unwrap_or_else(|e| panic!("10k x 10 YAML refused: {e}"));
    assert_eq!(rib.clusters.len(), 10_000);
    assert!(rib.clusters.iter().all(|c| c.endpoints.len() == 10));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn yaml_alias_bomb_is_refused_quickly_naming_the_limit() {
    // Nine levels of ten aliases each: 10^9 nodes from a file of under 1 KiB.
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let prev = format!("*a{}", level - 1);
        let list = [prev.as_str(); 10].join(", ");
        let _ = writeln!(yaml, "a{level}: &a{level} [{list}]");
    }
    let path = temp_file("bomb.yaml", &yaml);
    let t0 = Instant::now();
    let e = load_rib(&path).expect_err("an alias bomb must be refused");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("nodes") && msg.contains(&format!("{} bytes", yaml.len())),
        "the error names neither the node limit nor the document's size: {msg}"
    );
    assert!(msg.contains("bomb.yaml"), "the error names the file: {msg}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
