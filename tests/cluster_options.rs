//! Cluster fields that change what the cluster shows or how its sockets behave, against Envoy
//! too (`SWITCHYARD_TEST_PROXY=envoy`: the same file, the same traffic, the same results):
//!
//! * `alt_stat_name`: stats under `cluster.<alt_stat_name>.*` and none under the name,
//!   `/clusters`' `observability_name`, `%UPSTREAM_CLUSTER%` (the observability name) and
//!   `%UPSTREAM_CLUSTER_RAW%` (the name) in the access log;
//! * `upstream_connection_options.tcp_keepalive`: the proxy's upstream socket runs the
//!   kernel's keepalive timer (`ss -o` shows `timer:(keepalive,...)`) with the idle time
//!   asked for, and a cluster without it does not.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// A listener on `port` to `cluster` that logs `%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW%`
/// per connection to `log`.
fn logged_listener(port: u16, cluster: &str, log: &std::path::Path) -> String {
    let format = "                text_format_source:\n                  inline_string: \"%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW%\\n\"\n";
    tcp_listener_logged("gw", port, cluster, &[file_access_log(log, Some(format))])
}

/// A STATIC cluster `name` to `backend` with `extra` fields (indented as cluster fields).
fn cluster_with(name: &str, backend: std::net::SocketAddr, extra: &str) -> String {
    static_cluster(name, &[(backend, 1)]).replacen(
        &format!("  - name: {name}\n"),
        &format!("  - name: {name}\n{extra}"),
        1,
    )
}

/// One echoed exchange through `port`; the stream is returned open.
fn echo_once(port: u16) -> TcpStream {
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");
    s
}

#[test]
fn alt_stat_name_names_stats_clusters_and_logs() {
    let backend = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let dir = test_dir("alt-stat-name");
    let log = dir.join("access.log");
    let yaml = bootstrap(
        admin,
        &logged_listener(port, "real_name", &log),
        &cluster_with("real_name", backend.addr, "    alt_stat_name: observed\n"),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    drop(echo_once(port));
    assert_eq!(
        proxy.wait_stat(
            "cluster.observed.upstream_cx_total",
            1,
            Duration::from_secs(5)
        ),
        1
    );
    let stats = proxy.stats();
    assert!(
        !stats.keys().any(|k| k.starts_with("cluster.real_name.")),
        "no stat under the cluster's own name: {:?}",
        stats
            .keys()
            .filter(|k| k.contains("real_name"))
            .collect::<Vec<_>>()
    );
    let clusters = proxy.get("/clusters").body;
    assert!(
        clusters
            .lines()
            .any(|l| l == "real_name::observability_name::observed"),
        "{clusters}"
    );
    let mut line = String::new();
    wait_until(Duration::from_secs(10), || {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        !line.is_empty()
    });
    assert_eq!(line, "observed real_name\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ss -tno` for the established connections to `port`: one line per socket, with its timer.
fn sockets_to(port: u16) -> Vec<String> {
    let out = Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The keepalive timer's seconds left on the one socket to `port`, or None without one.
fn keepalive_timer_s(port: u16) -> Option<u64> {
    let lines = sockets_to(port);
    assert_eq!(lines.len(), 1, "one upstream connection: {lines:?}");
    let timer = lines[0].split("timer:(keepalive,").nth(1)?;
    Some(ss_seconds(timer.split(',').next()?))
}

/// Seconds in an `ss` timer such as `29sec`, `4min59sec` or `5min` (fractions dropped).
fn ss_seconds(text: &str) -> u64 {
    let (min, rest) = match text.split_once("min") {
        Some((m, rest)) => (m.parse::<u64>().expect("minutes"), rest),
        None => (0, text),
    };
    let sec = rest
        .trim_end_matches("sec")
        .split('.')
        .next()
        .filter(|s| !s.is_empty())
        .map_or(0, |s| s.parse::<u64>().expect("seconds"));
    min * 60 + sec
}

#[test]
fn tcp_keepalive_reaches_the_upstream_socket() {
    if !require(netns_tool("ss"), "ss (iproute2) to read the socket's timer") {
        return;
    }
    let (with, without) = (Backend::echo(), Backend::echo());
    let admin = free_port();
    let (port_with, port_without) = (free_port(), free_port());
    let listeners = format!(
        "{}{}",
        tcp_listener("a", port_with, "a", "kept"),
        tcp_listener("b", port_without, "b", "plain")
    );
    let clusters = format!(
        "{}{}",
        cluster_with(
            "kept",
            with.addr,
            "    upstream_connection_options:\n      tcp_keepalive: { keepalive_time: 300, keepalive_interval: 7, keepalive_probes: 3 }\n"
        ),
        static_cluster("plain", &[(without.addr, 1)])
    );
    let Some(_proxy) = start_selected(&bootstrap(admin, &listeners, &clusters)) else {
        return;
    };
    let _a = echo_once(port_with);
    let _b = echo_once(port_without);
    let left = keepalive_timer_s(with.addr.port()).unwrap_or_else(|| {
        panic!(
            "no keepalive timer on the upstream socket: {:?}",
            sockets_to(with.addr.port())
        )
    });
    assert!(
        (280..=300).contains(&left),
        "keepalive_time 300 s: the timer shows {left} s"
    );
    assert_eq!(
        keepalive_timer_s(without.addr.port()),
        None,
        "a cluster without tcp_keepalive leaves the socket's keepalive off"
    );
}

/// Whether `name` is on PATH.
fn netns_tool(name: &str) -> bool {
    common::netns::tool_exists(name)
}
