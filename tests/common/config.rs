//! Config templating: `{{var}}` substitution and builders for the Envoy v3 bootstrap YAML
//! (admin, TCP proxy listeners, static clusters) that both proxies are given.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Replaces every `{{key}}` in `template` with its value; panics if a placeholder remains.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    if let Some(i) = s.find("{{") {
        let end = (i + 40).min(s.len());
        panic!("unfilled placeholder in config: {}", &s[i..end]);
    }
    s
}

/// An Envoy v3 bootstrap: admin on `admin_port`, then the given listener and cluster YAML
/// (each a list of items already indented for `static_resources.listeners` / `.clusters`).
pub fn bootstrap(admin_port: u16, listeners: &str, clusters: &str) -> String {
    format!(
        "admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}\n\
static_resources:\n  listeners:\n{listeners}  clusters:\n{clusters}"
    )
}

/// One TCP proxy listener item (indented for `static_resources.listeners`).
pub fn tcp_listener(name: &str, port: u16, stat_prefix: &str, cluster: &str) -> String {
    tcp_listener_after(name, port, "", stat_prefix, cluster)
}

/// Like [`tcp_listener`], its tcp_proxy logging to each of `logs` ([`file_access_log`]
/// items).
pub fn tcp_listener_logged(name: &str, port: u16, cluster: &str, logs: &[String]) -> String {
    tcp_listener(name, port, name, cluster).replace(
        &format!("cluster: {cluster}\n"),
        &format!(
            "cluster: {cluster}\n          access_log:\n{}",
            logs.concat()
        ),
    )
}

/// One `FileAccessLog` item of a tcp_proxy's `access_log`, writing to `path` in Envoy's
/// default format, or in `log_format` (its YAML, indented under `log_format:`) when given.
pub fn file_access_log(path: &std::path::Path, log_format: Option<&str>) -> String {
    let format = log_format.map_or(String::new(), |f| format!("              log_format:\n{f}"));
    format!(
        r#"          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
{format}"#,
        path.display()
    )
}

/// Waits (up to 10 s) until the file at `path` (an access log) has `n` lines; its lines.
pub fn wait_log_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    super::wait_until(std::time::Duration::from_secs(10), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= n
    });
    lines
}

/// Like [`tcp_listener`], with network filters (`filters` items, indented as such) before
/// the tcp_proxy.
pub fn tcp_listener_after(
    name: &str,
    port: u16,
    filters: &str,
    stat_prefix: &str,
    cluster: &str,
) -> String {
    format!(
        r#"  - name: {name}
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
{filters}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {stat_prefix}
          cluster: {cluster}
"#
    )
}

/// A listener or cluster item (as [`tcp_listener`] or [`static_cluster`] write them) with
/// `fields` (indented as the item's own fields) after its first line.
pub fn with_fields(item: &str, fields: &str) -> String {
    let (first, rest) = item.split_once('\n').expect("an item of several lines");
    format!("{first}\n{fields}{rest}")
}

/// [`with_fields`]: `per_connection_buffer_limit_bytes: bytes`.
pub fn with_buffer_limit(item: &str, bytes: u32) -> String {
    with_fields(
        item,
        &format!("    per_connection_buffer_limit_bytes: {bytes}\n"),
    )
}

/// [`file_access_log`] (Envoy's default format) with a `response_flag_filter` of `flags`
/// (short codes joined with `,`; empty: any flag).
pub fn flagged_file_access_log(path: &std::path::Path, flags: &str) -> String {
    file_access_log(path, None).replacen(
        "          - name:",
        &format!("          - filter: {{ response_flag_filter: {{ flags: [{flags}] }} }}\n            name:"),
        1,
    )
}

/// A listener's own `access_log` field (for [`with_fields`]) holding `item`, an access-log
/// item as [`file_access_log`] indents it for a tcp_proxy.
pub fn listener_access_log(item: &str) -> String {
    let item: String = item.lines().map(|l| format!("{}\n", &l[6..])).collect();
    format!("    access_log:\n{item}")
}

/// An `envoy.filters.network.connection_limit` item for [`tcp_listener_after`]'s `filters`:
/// `max` connections, and `delay` (`"0.5s"`) before a refused one is closed, if given.
pub fn connection_limit_filter(stat_prefix: &str, max: u32, delay: Option<&str>) -> String {
    let delay = delay.map_or(String::new(), |d| format!("          delay: {d}\n"));
    format!(
        r#"      - name: envoy.filters.network.connection_limit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: {stat_prefix}
          max_connections: {max}
{delay}"#
    )
}

/// One STATIC round-robin cluster item with `(address, weight)` endpoints.
pub fn static_cluster(name: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    static_cluster_lb(name, "ROUND_ROBIN", endpoints)
}

pub fn static_cluster_lb(name: &str, lb: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let mut eps = String::new();
    for (a, w) in endpoints {
        let _ = write!(
            eps,
            "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n          load_balancing_weight: {w}\n",
            a.ip(),
            a.port()
        );
    }
    let lb_endpoints = if endpoints.is_empty() {
        "      endpoints: []\n".to_string()
    } else {
        format!("      endpoints:\n      - lb_endpoints:\n{eps}")
    };
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    lb_policy: {lb}
    load_assignment:
      cluster_name: {name}
{lb_endpoints}"#
    )
}
