//! `/clusters` and `/listeners`, read from the FIB the workers use now.
//!
//! `/clusters` prints what Switchyard really has: the cluster's name, and per host its
//! counters and gauges, hostname, health, weight, locality and priority. Circuit-breaker
//! thresholds are not printed: Switchyard has none yet, and printing Envoy's defaults would
//! claim limits that are not enforced.

use super::http::{Query, Response};
use super::AdminState;
use crate::stats::DnsStats;
use serde_json::json;
use std::fmt::Write as _;
use std::net::SocketAddr;
use switchyard_dataplane::fib::{CircuitBreakers, Fib, LocalityName};
use switchyard_dataplane::health::{ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK};
use switchyard_dataplane::stats::{HostStat, StatKind};

fn socket_address(addr: &SocketAddr) -> serde_json::Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

/// Host stats sorted by name (Envoy's text order): (name, kind, value).
fn host_stats(stats: &switchyard_dataplane::host::HostState) -> Vec<(&'static str, StatKind, u64)> {
    let mut v: Vec<_> = HostStat::ALL
        .iter()
        .map(|&s| (s.name(), s.kind(), stats.get(s)))
        .collect();
    v.sort_by_key(|(name, _, _)| *name);
    v
}

/// Envoy's `/clusters` text form.
/// One priority's thresholds, in Envoy's order.
fn circuit_breaker_values(cb: &CircuitBreakers) -> [(&'static str, u32); 4] {
    [
        ("max_connections", cb.max_connections),
        ("max_pending_requests", cb.max_pending_requests),
        ("max_requests", cb.max_requests),
        ("max_retries", cb.max_retries),
    ]
}

/// Envoy's `health_flags` text: `healthy`, or each flag set, in Envoy's order. The internal
/// "first check pending" mark is not shown (Envoy shows it only for hosts it ignores until
/// their first check).
fn health_flags(flags: u32) -> String {
    let text: String = [
        (FAILED_ACTIVE_HC, "/failed_active_hc"),
        (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
        (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
    ]
    .iter()
    .filter(|(flag, _)| flags & flag != 0)
    .map(|(_, name)| *name)
    .collect();
    if text.is_empty() {
        "healthy".into()
    } else {
        text
    }
}

/// Envoy's JSON `health_status` of a host.
fn health_status(flags: u32) -> serde_json::Value {
    let mut status = json!({"eds_health_status": "HEALTHY"});
    for (flag, key) in [
        (FAILED_ACTIVE_HC, "failed_active_health_check"),
        (FAILED_OUTLIER_CHECK, "failed_outlier_check"),
        (ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
    ] {
        if flags & flag != 0 {
            status[key] = json!(true);
        }
    }
    status
}

pub(crate) fn render_clusters_text(fib: &Fib, dns: &DnsStats) -> String {
    let mut out = String::new();
    for c in &fib.clusters {
        let n = &c.name;
        let hostnames = dns.hostnames(n);
        let _ = writeln!(out, "{n}::observability_name::{}", c.observability_name);
        let outlier = c.health.outlier.is_some();
        if outlier {
            // Success-rate detection is not implemented: -1, as Envoy shows before it has
            // computed one.
            for name in [
                "success_rate_average",
                "success_rate_ejection_threshold",
                "local_origin_success_rate_average",
                "local_origin_success_rate_ejection_threshold",
            ] {
                let _ = writeln!(out, "{n}::outlier::{name}::-1");
            }
        }
        // Envoy prints both priorities; Switchyard routes at DEFAULT, HIGH keeps Envoy's
        // defaults.
        for (priority, cb) in [
            ("default", c.circuit_breakers),
            ("high", CircuitBreakers::default()),
        ] {
            for (name, value) in circuit_breaker_values(&cb) {
                let _ = writeln!(out, "{n}::{priority}_priority::{name}::{value}");
            }
        }
        let _ = writeln!(out, "{n}::added_via_api::{}", c.added_via_api);
        for e in &c.endpoints {
            let h = format!("{n}::{}", e.address);
            for (name, kind, value) in host_stats(&e.stats) {
                match kind {
                    StatKind::Counter => {
                        let _ = writeln!(out, "{h}::{name}::{value}");
                    }
                    StatKind::Gauge => {
                        let _ = writeln!(out, "{h}::{name}::{}", value as i64);
                    }
                }
            }
            let hostname = hostnames.as_ref().and_then(|m| m.get(&e.address));
            let _ = writeln!(out, "{h}::hostname::{}", hostname.map_or("", |n| &**n));
            let _ = writeln!(
                out,
                "{h}::health_flags::{}",
                health_flags(e.health().flags())
            );
            let _ = writeln!(out, "{h}::weight::{}", e.weight);
            let locality = e.locality.name.as_deref().cloned().unwrap_or_default();
            let _ = writeln!(out, "{h}::region::{}", locality.region);
            let _ = writeln!(out, "{h}::zone::{}", locality.zone);
            let _ = writeln!(out, "{h}::sub_zone::{}", locality.sub_zone);
            let _ = writeln!(out, "{h}::canary::false");
            let _ = writeln!(out, "{h}::priority::{}", e.priority);
            if outlier {
                let _ = writeln!(out, "{h}::success_rate::-1");
                let _ = writeln!(out, "{h}::local_origin_success_rate::-1");
            }
        }
    }
    out
}

/// Envoy's `/clusters?format=json` (`envoy.admin.v3.Clusters`): host stats with values as
/// strings (uint64 in proto3 JSON), counters first, then gauges.
pub(crate) fn render_clusters_json(fib: &Fib, dns: &DnsStats) -> serde_json::Value {
    let statuses: Vec<serde_json::Value> = fib
        .clusters
        .iter()
        .map(|c| {
            let hostnames = dns.hostnames(&c.name);
            let hosts: Vec<serde_json::Value> = c
                .endpoints
                .iter()
                .map(|e| {
                    let mut stats = host_stats(&e.stats);
                    stats.sort_by_key(|(name, kind, _)| (*kind == StatKind::Gauge, *name));
                    let stats: Vec<serde_json::Value> = stats
                        .into_iter()
                        .map(|(name, kind, value)| {
                            let (value, kind) = match kind {
                                StatKind::Counter => (value.to_string(), "COUNTER"),
                                StatKind::Gauge => ((value as i64).max(0).to_string(), "GAUGE"),
                            };
                            json!({"name": name, "value": value, "type": kind})
                        })
                        .collect();
                    let mut host = json!({
                        "address": socket_address(&e.address),
                        "stats": stats,
                        "health_status": health_status(e.health().flags()),
                        "weight": e.weight,
                    });
                    if e.priority != 0 {
                        host["priority"] = json!(e.priority);
                    }
                    if let Some(l) = &e.locality.name {
                        host["locality"] = locality_json(l);
                    }
                    if let Some(name) = hostnames.as_ref().and_then(|m| m.get(&e.address)) {
                        host["hostname"] = json!(&**name);
                    }
                    host
                })
                .collect();
            let thresholds = |cb: &CircuitBreakers| -> serde_json::Map<String, serde_json::Value> {
                circuit_breaker_values(cb)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect()
            };
            let mut high = thresholds(&CircuitBreakers::default());
            high.insert("priority".into(), json!("HIGH"));
            let mut status = json!({
                "name": &*c.name,
                "observability_name": &*c.observability_name,
                "circuit_breakers": {"thresholds": [thresholds(&c.circuit_breakers), high]},
                "host_statuses": hosts,
            });
            // proto3 JSON leaves out a false bool, as Envoy's output does.
            if c.added_via_api {
                status["added_via_api"] = json!(true);
            }
            status
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// Every listener's name and address: the TCP listeners, then the UDP ones. Envoy prints
/// both kinds alike (an address's text and JSON forms carry no protocol).
/// A `Locality` in proto3 JSON: empty fields left out.
fn locality_json(l: &LocalityName) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("region", &l.region),
        ("zone", &l.zone),
        ("sub_zone", &l.sub_zone),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), json!(v));
        }
    }
    serde_json::Value::Object(m)
}

fn all_listeners(fib: &Fib) -> impl Iterator<Item = (&str, &SocketAddr)> {
    let tcp = fib.listeners.iter().map(|l| (&*l.name, &l.address));
    tcp.chain(fib.udp_listeners.iter().map(|l| (&*l.name, &l.address)))
}

/// Envoy's `/listeners` text form: `name::address` lines.
pub(crate) fn render_listeners_text(fib: &Fib) -> String {
    let mut out = String::new();
    for (name, address) in all_listeners(fib) {
        let _ = writeln!(out, "{name}::{address}");
    }
    out
}

/// Envoy's `/listeners?format=json` (`envoy.admin.v3.Listeners`): one status per listener,
/// its first address as `local_address` and the others (`additional_addresses`, compiled
/// into FIB listeners of the same name) as `additional_local_addresses`.
pub(crate) fn render_listeners_json(fib: &Fib) -> serde_json::Value {
    let mut statuses: Vec<serde_json::Value> = Vec::new();
    let mut previous: Option<&str> = None;
    for (name, address) in all_listeners(fib) {
        if previous == Some(name) {
            if let Some(status) = statuses.last_mut() {
                let more = status
                    .as_object_mut()
                    .expect("a status is an object")
                    .entry("additional_local_addresses")
                    .or_insert_with(|| json!([]));
                if let Some(list) = more.as_array_mut() {
                    list.push(socket_address(address));
                }
            }
            continue;
        }
        previous = Some(name);
        statuses.push(json!({"name": name, "local_address": socket_address(address)}));
    }
    json!({ "listener_statuses": statuses })
}

fn bad_format(other: &str) -> Response {
    Response::text(
        400,
        format!("unsupported format '{other}': one of text, json\n"),
    )
}

/// `GET /clusters[?format=json]`.
pub(super) fn handle_clusters(state: &AdminState, q: &Query) -> Response {
    let fib = state.fib.load();
    match q.get("format").unwrap_or("text") {
        "text" | "" => Response::text(200, render_clusters_text(&fib, state.stats.dns())),
        "json" => Response::json(&render_clusters_json(&fib, state.stats.dns())),
        other => bad_format(other),
    }
}

/// `GET /listeners[?format=json]`.
pub(super) fn handle_listeners(state: &AdminState, q: &Query) -> Response {
    let fib = state.fib.load();
    match q.get("format").unwrap_or("text") {
        "text" | "" => Response::text(200, render_listeners_text(&fib)),
        "json" => Response::json(&render_listeners_json(&fib)),
        other => bad_format(other),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::fixture;
    use super::*;

    #[test]
    fn clusters_text() {
        let f = fixture();
        let text = render_clusters_text(&f.state.fib.load(), f.state.stats.dns());
        assert_eq!(
            text,
            "echo::observability_name::echo\n\
             echo::default_priority::max_connections::1024\n\
             echo::default_priority::max_pending_requests::1024\n\
             echo::default_priority::max_requests::1024\n\
             echo::default_priority::max_retries::3\n\
             echo::high_priority::max_connections::1024\n\
             echo::high_priority::max_pending_requests::1024\n\
             echo::high_priority::max_requests::1024\n\
             echo::high_priority::max_retries::3\n\
             echo::added_via_api::false\n\
             echo::127.0.0.1:9001::cx_active::1\n\
             echo::127.0.0.1:9001::cx_connect_fail::1\n\
             echo::127.0.0.1:9001::cx_total::3\n\
             echo::127.0.0.1:9001::rq_error::0\n\
             echo::127.0.0.1:9001::hostname::\n\
             echo::127.0.0.1:9001::health_flags::healthy\n\
             echo::127.0.0.1:9001::weight::1\n\
             echo::127.0.0.1:9001::region::\n\
             echo::127.0.0.1:9001::zone::\n\
             echo::127.0.0.1:9001::sub_zone::\n\
             echo::127.0.0.1:9001::canary::false\n\
             echo::127.0.0.1:9001::priority::0\n\
             echo::127.0.0.1:9002::cx_active::0\n\
             echo::127.0.0.1:9002::cx_connect_fail::0\n\
             echo::127.0.0.1:9002::cx_total::2\n\
             echo::127.0.0.1:9002::rq_error::1\n\
             echo::127.0.0.1:9002::hostname::\n\
             echo::127.0.0.1:9002::health_flags::healthy\n\
             echo::127.0.0.1:9002::weight::3\n\
             echo::127.0.0.1:9002::region::\n\
             echo::127.0.0.1:9002::zone::\n\
             echo::127.0.0.1:9002::sub_zone::\n\
             echo::127.0.0.1:9002::canary::false\n\
             echo::127.0.0.1:9002::priority::0\n\
             empty::observability_name::empty\n\
             empty::default_priority::max_connections::1024\n\
             empty::default_priority::max_pending_requests::1024\n\
             empty::default_priority::max_requests::1024\n\
             empty::default_priority::max_retries::3\n\
             empty::high_priority::max_connections::1024\n\
             empty::high_priority::max_pending_requests::1024\n\
             empty::high_priority::max_requests::1024\n\
             empty::high_priority::max_retries::3\n\
             empty::added_via_api::false\n"
        );
    }

    #[test]
    fn clusters_json() {
        let f = fixture();
        // Envoy's defaults at both priorities, as Envoy prints them.
        let cb = || {
            json!({"thresholds": [
                {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3},
                {"priority": "HIGH", "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3},
            ]})
        };
        let v = render_clusters_json(&f.state.fib.load(), f.state.stats.dns());
        let host = |port: u16, stats: [(&str, &str, &str); 4], weight: u32| {
            let stats: Vec<_> = stats
                .iter()
                .map(|(n, v, t)| json!({"name": n, "value": v, "type": t}))
                .collect();
            json!({
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "stats": stats,
                "health_status": {"eds_health_status": "HEALTHY"},
                "weight": weight,
            })
        };
        assert_eq!(
            v,
            json!({"cluster_statuses": [
                {"name": "echo", "observability_name": "echo", "circuit_breakers": cb(), "host_statuses": [
                    host(9001, [("cx_connect_fail", "1", "COUNTER"), ("cx_total", "3", "COUNTER"),
                                ("rq_error", "0", "COUNTER"), ("cx_active", "1", "GAUGE")], 1),
                    host(9002, [("cx_connect_fail", "0", "COUNTER"), ("cx_total", "2", "COUNTER"),
                                ("rq_error", "1", "COUNTER"), ("cx_active", "0", "GAUGE")], 3),
                ]},
                {"name": "empty", "observability_name": "empty", "circuit_breakers": cb(), "host_statuses": []},
            ]})
        );
    }

    #[test]
    fn listeners_text_and_json() {
        let f = fixture();
        let fib = f.state.fib.load();
        // Envoy prints a UDP listener's address like a TCP one's.
        assert_eq!(
            render_listeners_text(&fib),
            "gw::127.0.0.1:10000\ndns::127.0.0.1:10000\n"
        );
        let address = json!({"socket_address": {"address": "127.0.0.1", "port_value": 10000}});
        assert_eq!(
            render_listeners_json(&fib),
            json!({"listener_statuses": [{"name": "gw", "local_address": address},
                                         {"name": "dns", "local_address": address}]})
        );
    }
}
