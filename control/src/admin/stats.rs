//! `/stats` and `/stats/prometheus`: every stat with its Envoy name, in Envoy's text, JSON and
//! Prometheus forms.
//!
//! Names: `tcp.<stat_prefix>.<stat>`, `udp.<stat_prefix>.<stat>`, `cluster.<name>.<stat>`
//! (and `cluster.<name>.udp.<stat>` for a cluster a UDP listener routes to),
//! `listener.<ip>_<port>.<stat>` (and `.worker_N.downstream_cx_total|downstream_cx_active`;
//! `listener.<ip>_<port>.udp.downstream_rx_datagram_dropped` for a UDP listener),
//! `server.<stat>`. Each dynamic part goes through Envoy's stat-name sanitizing (`:` becomes
//! `_`, so an IPv6 listener is `listener.[__1]_80.`).
//!
//! The Prometheus form turns name parts into tags with the config's tag extractors
//! (`stats_config.stats_tags` and Envoy's defaults: `envoy.tcp_prefix`, `envoy.cluster_name`,
//! `envoy.listener_address`, `envoy.worker_id`, ...; see `crate::stats_config`), so a cluster
//! whose name holds a dot is split where Envoy splits it. A stat `stats_config.stats_matcher`
//! rejects is in no form.
//!
//! `usedonly` keeps stats whose value is not zero: stats here carry no "ever written" bit, so
//! a counter that was written and then reset to zero is left out (Envoy would keep it).

use super::http::{Query, Response};
use super::{AdminState, STATE_LIVE};
use crate::stats_config::{Tag, TagProducer};
use regex::Regex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use switchyard_dataplane::fib::{Cluster, Fib, HashLookup, Route};
use switchyard_dataplane::health::FAILED_ACTIVE_HC;
use switchyard_dataplane::stats::{
    ClusterStat, ClusterUdpStat, FaultStat, HealthStat, ListenerStat, ListenerUdpStat, MirrorStat,
    ProxyProtoStat, ProxyProtoStats, RbacStat, Resource, ServerStat, SslStat, StatKind, TcpStat,
    TlsInspectorStat, UdpStat,
};

/// A stat's value: counters are unsigned, gauges signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatValue {
    /// Envoy counter.
    Counter(u64),
    /// Envoy gauge.
    Gauge(i64),
}

impl StatValue {
    fn new(kind: StatKind, raw: u64) -> StatValue {
        match kind {
            StatKind::Counter => StatValue::Counter(raw),
            StatKind::Gauge => StatValue::Gauge(raw as i64),
        }
    }

    fn is_zero(self) -> bool {
        matches!(self, StatValue::Counter(0) | StatValue::Gauge(0))
    }

    fn json(self) -> serde_json::Value {
        match self {
            StatValue::Counter(v) => v.into(),
            StatValue::Gauge(v) => v.into(),
        }
    }
}

impl std::fmt::Display for StatValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatValue::Counter(v) => write!(f, "{v}"),
            StatValue::Gauge(v) => write!(f, "{v}"),
        }
    }
}

/// One stat: its full Envoy name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// `cluster.echo.upstream_cx_total`.
    pub name: String,
    /// The value now.
    pub value: StatValue,
}

/// Envoy's stat-name sanitizing for a dynamic name part: `:` becomes `_`.
fn sanitize_element(s: &str) -> String {
    s.replace(':', "_")
}

fn push_block<S: Copy>(
    out: &mut Vec<Stat>,
    prefix: &str,
    all: &[S],
    name: fn(S) -> &'static str,
    kind: fn(S) -> StatKind,
    get: impl Fn(S) -> u64,
) {
    for &s in all {
        out.push(Stat {
            name: format!("{prefix}.{}", name(s)),
            value: StatValue::new(kind(s), get(s)),
        });
    }
}

/// `proxy_proto.[<prefix>.]*` per `stat_prefix`, and Envoy's root
/// `downstream_cx_proxy_proto_error` (every block's errors) once any listener has the filter.
fn proxy_proto_stats(out: &mut Vec<Stat>, blocks: &BTreeMap<String, Arc<ProxyProtoStats>>) {
    if blocks.is_empty() {
        return;
    }
    let errors: u64 = blocks.values().map(|b| b.errors()).sum();
    out.push(Stat {
        name: "downstream_cx_proxy_proto_error".to_string(),
        value: StatValue::new(StatKind::Counter, errors),
    });
    for (prefix, b) in blocks {
        let p = if prefix.is_empty() {
            "proxy_proto".to_string()
        } else {
            format!("proxy_proto.{}", sanitize_element(prefix))
        };
        push_block(
            out,
            &p,
            &ProxyProtoStat::ALL,
            ProxyProtoStat::name,
            ProxyProtoStat::kind,
            |s| b.get(s),
        );
    }
}

/// `outlier_detection.*` (with outlier detection) and `health_check.*` (with an active
/// check), under Envoy's names; `health_check.healthy` counts the hosts whose check passes.
fn health_stats(p: &str, c: &Cluster) -> Vec<Stat> {
    let health = &c.health_state;
    let checked_healthy = c
        .endpoints
        .iter()
        .filter(|e| e.health().flags() & FAILED_ACTIVE_HC == 0)
        .count() as i64;
    HealthStat::ALL
        .iter()
        .filter(|s| {
            if s.is_outlier() {
                c.health.outlier.is_some()
            } else {
                c.health.health_check.is_some()
            }
        })
        .map(|&s| Stat {
            name: format!("{p}.{}", s.name()),
            value: match (s, s.kind()) {
                (HealthStat::HcHealthy, _) => StatValue::Gauge(checked_healthy),
                (_, StatKind::Gauge) => StatValue::Gauge(health.get(s) as i64),
                (_, StatKind::Counter) => StatValue::Counter(health.get(s)),
            },
        })
        .collect()
}

/// The clusters the FIB's UDP listeners route to (each once, in id order): those with
/// `cluster.<name>.udp.*` stats, as Envoy's udp_proxy creates them for the clusters it uses.
fn udp_routed_clusters(fib: &Fib) -> impl Iterator<Item = &Cluster> {
    let mut ids: Vec<usize> = fib
        .udp_listeners
        .iter()
        .flat_map(|l| match &l.proxy.route {
            Route::Cluster(id) => vec![id.0 as usize],
            Route::Weighted(w) => w
                .entries
                .iter()
                .filter_map(|e| e.cluster.map(|id| id.0 as usize))
                .collect(),
            Route::Missing(_) => Vec::new(),
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|i| fib.clusters.get(i).map(|c| &**c))
}

/// Envoy's `cluster.<name>.circuit_breakers.default.*` gauges: `cx_open` and
/// `rq_pending_open` (1 while the limit is reached), and with `track_remaining`,
/// `remaining_cx` and `remaining_pending`.
fn circuit_breaker_gauges(prefix: &str, c: &Cluster) -> Vec<Stat> {
    let limits = c.circuit_breakers;
    let p = format!("{prefix}.circuit_breakers.default");
    let mut out = Vec::with_capacity(4);
    for (open, remaining, resource, max) in [
        (
            "cx_open",
            "remaining_cx",
            Resource::Connections,
            limits.max_connections,
        ),
        (
            "rq_pending_open",
            "remaining_pending",
            Resource::Pending,
            limits.max_pending_requests,
        ),
    ] {
        let used = c.resources.in_use(resource);
        out.push(Stat {
            name: format!("{p}.{open}"),
            value: StatValue::Gauge(i64::from(used >= u64::from(max))),
        });
        if limits.track_remaining {
            let left = u64::from(max).saturating_sub(used);
            out.push(Stat {
                name: format!("{p}.{remaining}"),
                value: StatValue::Gauge(left as i64),
            });
        }
    }
    out
}

/// Envoy's gauges of a hashing balancer's table: `maglev_lb.{min,max}_entries_per_host`, or
/// `ring_hash_lb.size` and `ring_hash_lb.{min,max}_hashes_per_host`.
fn hash_table_gauges(prefix: &str, c: &Cluster) -> Vec<Stat> {
    let Some(t) = &c.hash_table else {
        return Vec::new();
    };
    let gauge = |name: String, v: u64| Stat {
        name,
        value: StatValue::Gauge(v as i64),
    };
    let (min, max) = (t.min_entries_per_host, t.max_entries_per_host);
    match &t.lookup {
        HashLookup::Maglev(_) => vec![
            gauge(format!("{prefix}.maglev_lb.max_entries_per_host"), max),
            gauge(format!("{prefix}.maglev_lb.min_entries_per_host"), min),
        ],
        HashLookup::Ring(r) => vec![
            gauge(format!("{prefix}.ring_hash_lb.max_hashes_per_host"), max),
            gauge(format!("{prefix}.ring_hash_lb.min_hashes_per_host"), min),
            gauge(format!("{prefix}.ring_hash_lb.size"), r.size_stat()),
        ],
    }
}

/// Every stat, sorted by name: the registry's blocks summed over workers, per-worker listener
/// stats, cluster membership from the current FIB, and the `server.*` stats.
pub fn collect_stats(state: &AdminState) -> Vec<Stat> {
    let reg = &state.stats;
    let workers = reg.workers();
    let mut out = Vec::new();
    {
        let blocks = reg.blocks();
        for (prefix, b) in &blocks.tcp {
            let p = format!("tcp.{}", sanitize_element(prefix));
            push_block(
                &mut out,
                &p,
                &TcpStat::ALL,
                TcpStat::name,
                TcpStat::kind,
                |s| b.get(s),
            );
        }
        for (prefix, b) in &blocks.udp {
            let p = format!("udp.{}", sanitize_element(prefix));
            push_block(
                &mut out,
                &p,
                &UdpStat::ALL,
                UdpStat::name,
                UdpStat::kind,
                |s| b.get(s),
            );
        }
        for (name, b) in &blocks.cluster {
            let p = format!("cluster.{}", sanitize_element(name));
            let all = &ClusterStat::ALL;
            push_block(
                &mut out,
                &p,
                all,
                ClusterStat::name,
                ClusterStat::kind,
                |s| b.get(s),
            );
        }
        for (prefix, b) in &blocks.fault {
            let p = format!("fault.{}", sanitize_element(prefix));
            push_block(
                &mut out,
                &p,
                &FaultStat::ALL,
                FaultStat::name,
                FaultStat::kind,
                |s| b.get(s),
            );
        }
        for (prefix, b) in &blocks.mirror {
            let p = format!("mirror.{}", sanitize_element(prefix));
            push_block(
                &mut out,
                &p,
                &MirrorStat::ALL,
                MirrorStat::name,
                MirrorStat::kind,
                |s| b.get(s),
            );
        }
        for (prefix, l) in &blocks.local_rate_limit {
            out.push(Stat {
                name: format!("local_rate_limit.{}.rate_limited", sanitize_element(prefix)),
                value: StatValue::Counter(l.rate_limited()),
            });
        }
        for (prefix, (table, l)) in &blocks.source_limit {
            let p = format!("source_limit.{}", sanitize_element(prefix));
            for (name, value) in l.counts() {
                out.push(Stat {
                    name: format!("{p}.{name}"),
                    value: StatValue::Counter(value),
                });
            }
            out.push(Stat {
                name: format!("{p}.evictions"),
                value: StatValue::Counter(table.counters().evictions),
            });
            out.push(Stat {
                name: format!("{p}.table_bytes"),
                value: StatValue::Gauge(table.memory_bytes() as i64),
            });
        }
        for r in blocks.rbac.values() {
            for stat in RbacStat::ALL {
                out.push(Stat {
                    name: r.full_name(stat),
                    value: StatValue::Counter(r.get(stat)),
                });
            }
        }
        for (prefix, l) in &blocks.connection_limit {
            let p = format!("connection_limit.{}", sanitize_element(prefix));
            out.push(Stat {
                name: format!("{p}.active_connections"),
                value: StatValue::Gauge(l.active() as i64),
            });
            out.push(Stat {
                name: format!("{p}.limited_connections"),
                value: StatValue::Counter(l.limited()),
            });
        }
        for (name, b) in &blocks.listener {
            let p = format!("listener.{}", sanitize_element(name));
            let all = &ListenerStat::ALL;
            push_block(
                &mut out,
                &p,
                all,
                ListenerStat::name,
                ListenerStat::kind,
                |s| b.get(s),
            );
            for w in 0..workers.min(b.slot_count()) {
                let per_worker = [
                    ListenerStat::DownstreamCxTotal,
                    ListenerStat::DownstreamCxActive,
                ];
                let wp = format!("{p}.worker_{w}");
                let get = |s| b.worker_value(w, s);
                push_block(
                    &mut out,
                    &wp,
                    &per_worker,
                    ListenerStat::name,
                    ListenerStat::kind,
                    get,
                );
            }
        }
        for (prefix, factory, ssl) in [
            (
                "listener",
                "server_ssl_socket_factory",
                &blocks.listener_ssl,
            ),
            ("cluster", "client_ssl_socket_factory", &blocks.cluster_ssl),
        ] {
            for (name, b) in ssl {
                let element = sanitize_element(name);
                let p = format!("{prefix}.{element}.ssl");
                let shown = SslStat::ALL.iter().copied().filter(|s| !s.is_factory());
                let shown: Vec<SslStat> = shown
                    .filter(|s| !s.on_first_use() || b.get(*s) > 0)
                    .collect();
                push_block(&mut out, &p, &shown, SslStat::name, SslStat::kind, |s| {
                    b.get(s)
                });
                let p = format!("{prefix}.{element}.{factory}");
                let shown: Vec<SslStat> = SslStat::ALL
                    .iter()
                    .copied()
                    .filter(|s| s.is_factory())
                    .collect();
                push_block(&mut out, &p, &shown, SslStat::name, SslStat::kind, |s| {
                    b.get(s)
                });
            }
        }
        proxy_proto_stats(&mut out, &blocks.proxy_proto);
        if let Some(b) = &blocks.tls_inspector {
            push_block(
                &mut out,
                "tls_inspector",
                &TlsInspectorStat::ALL,
                TlsInspectorStat::name,
                TlsInspectorStat::kind,
                |s| b.get(s),
            );
        }
        for (name, b) in &blocks.listener_udp {
            let p = format!("listener.{}.udp", sanitize_element(name));
            push_block(
                &mut out,
                &p,
                &ListenerUdpStat::ALL,
                ListenerUdpStat::name,
                ListenerUdpStat::kind,
                |s| b.get(s),
            );
        }
    }
    let fib = state.fib.load();
    for c in udp_routed_clusters(&fib) {
        let p = format!("cluster.{}.udp", sanitize_element(&c.observability_name));
        let b = &c.udp_stats;
        push_block(
            &mut out,
            &p,
            &ClusterUdpStat::ALL,
            ClusterUdpStat::name,
            ClusterUdpStat::kind,
            |s| b.get(s),
        );
    }
    for c in &fib.clusters {
        let p = format!("cluster.{}", sanitize_element(&c.observability_name));
        let n = c.endpoints.len() as i64;
        let healthy = c
            .endpoints
            .iter()
            .filter(|e| e.health().is_healthy())
            .count();
        out.push(Stat {
            name: format!("{p}.membership_healthy"),
            value: StatValue::Gauge(healthy as i64),
        });
        // Nothing is degraded or excluded at L4 (no degraded checks, no EDS health status).
        for (name, value) in [
            ("membership_degraded", 0),
            ("membership_excluded", 0),
            ("membership_total", n),
        ] {
            out.push(Stat {
                name: format!("{p}.{name}"),
                value: StatValue::Gauge(value),
            });
        }
        out.extend(health_stats(&p, c));
        out.extend(circuit_breaker_gauges(&p, c));
        out.extend(hash_table_gauges(&p, c));
        if let Some(eds) = reg.xds().eds_of(&c.name) {
            for (name, v) in eds.counters() {
                out.push(Stat {
                    name: format!("{p}.{name}"),
                    value: StatValue::Counter(v),
                });
            }
            if let Some(v) = eds.stream.connected_state() {
                out.push(Stat {
                    name: format!("{p}.control_plane.connected_state"),
                    value: StatValue::Gauge(v),
                });
            }
        }
        if let Some(dns) = reg.dns().cluster_of(&c.name) {
            for (name, v) in dns.counters() {
                out.push(Stat {
                    name: format!("{p}.{name}"),
                    value: StatValue::Counter(v),
                });
            }
        }
    }
    let cares = &reg.dns().cares;
    if cares.used.load(std::sync::atomic::Ordering::Relaxed) {
        for (name, v, gauge) in cares.stats() {
            out.push(Stat {
                name: format!("dns.cares.{name}"),
                value: if gauge {
                    StatValue::Gauge(v)
                } else {
                    StatValue::Counter(v as u64)
                },
            });
        }
    }
    let server = reg.server();
    push_block(
        &mut out,
        "server",
        &ServerStat::ALL,
        ServerStat::name,
        ServerStat::kind,
        |s| server.get(s),
    );
    let xds = reg.xds();
    if xds.ads.load(std::sync::atomic::Ordering::Relaxed) {
        out.push(Stat {
            name: "control_plane.connected_state".into(),
            value: StatValue::Gauge(xds.connected.load(std::sync::atomic::Ordering::Relaxed) as i64),
        });
    }
    if xds.enabled.load(std::sync::atomic::Ordering::Relaxed) {
        for (prefix, sub, stream) in [
            ("cluster_manager.cds", &xds.cds, &xds.cds_stream),
            ("listener_manager.lds", &xds.lds, &xds.lds_stream),
        ] {
            for (name, v) in sub.counters() {
                out.push(Stat {
                    name: format!("{prefix}.{name}"),
                    value: StatValue::Counter(v),
                });
            }
            if let Some(v) = stream.connected_state() {
                out.push(Stat {
                    name: format!("{prefix}.control_plane.connected_state"),
                    value: StatValue::Gauge(v),
                });
            }
        }
    }
    for (secret, sub) in xds.sds_all() {
        for (name, v) in sub.counters() {
            out.push(Stat {
                name: format!("sds.{secret}.{name}"),
                value: StatValue::Counter(v),
            });
        }
    }
    let s = state.effective_state();
    for (name, v) in [
        ("server.live", i64::from(s == STATE_LIVE)),
        ("server.state", i64::from(s)),
        ("server.concurrency", state.concurrency as i64),
        ("server.uptime", state.started.elapsed().as_secs() as i64),
    ] {
        out.push(Stat {
            name: name.into(),
            value: StatValue::Gauge(v),
        });
    }
    let matcher = &state.stats_config.matcher;
    out.retain(|s| matcher.keeps(&s.name));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Which stats a request asks for.
struct Selection {
    filter: Option<Regex>,
    used_only: bool,
    counters: bool,
    gauges: bool,
}

impl Selection {
    fn from_query(q: &Query) -> Result<Selection, Response> {
        let filter = match q.get("filter") {
            None | Some("") => None,
            Some(re) => Some(
                Regex::new(re)
                    .map_err(|e| Response::text(400, format!("Invalid re2 regex: {e}\n")))?,
            ),
        };
        let (counters, gauges) = match q.get("type").unwrap_or("All") {
            "All" => (true, true),
            "Counters" => (true, false),
            "Gauges" => (false, true),
            "Histograms" | "TextReadouts" => (false, false),
            other => {
                return Err(Response::text(
                    400,
                    format!("invalid stats type '{other}': one of All, Counters, Gauges, Histograms, TextReadouts\n"),
                ))
            }
        };
        Ok(Selection {
            filter,
            used_only: q.flag("usedonly"),
            counters,
            gauges,
        })
    }

    fn keeps(&self, s: &Stat) -> bool {
        let kind_ok = match s.value {
            StatValue::Counter(_) => self.counters,
            StatValue::Gauge(_) => self.gauges,
        };
        kind_ok
            && !(self.used_only && s.value.is_zero())
            && self.filter.as_ref().is_none_or(|re| re.is_match(&s.name))
    }
}

/// `name: value` lines, sorted by name.
pub(crate) fn render_text(stats: &[Stat]) -> String {
    let mut out = String::new();
    for s in stats {
        let _ = writeln!(out, "{}: {}", s.name, s.value);
    }
    out
}

/// `{"stats":[{"name":..,"value":..}]}`.
pub(crate) fn render_json(stats: &[Stat]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = stats
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "value": s.value.json()}))
        .collect();
    serde_json::json!({ "stats": items })
}

/// Prometheus sanitizing, like Envoy: every byte outside `[a-zA-Z0-9_]` becomes `_`.
fn prom_sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Envoy's Prometheus text: counters, then gauges; within each, one family per tag-extracted
/// name (sorted), `# TYPE envoy_<name> <type>`, one sample per stat, a blank line.
pub(crate) fn render_prometheus(stats: &[Stat], tagger: &TagProducer) -> String {
    type Family<'a> = Vec<(&'a str, Vec<Tag>, StatValue)>;
    let mut families: BTreeMap<(u8, String), Family<'_>> = BTreeMap::new();
    for s in stats {
        let (extracted, tags) = tagger.produce(&s.name);
        let order = match s.value {
            StatValue::Counter(_) => 0,
            StatValue::Gauge(_) => 1,
        };
        families
            .entry((order, extracted))
            .or_default()
            .push((&s.name, tags, s.value));
    }
    let mut out = String::new();
    for ((order, extracted), mut samples) in families {
        let metric = format!("envoy_{}", prom_sanitize(&extracted));
        let kind = if order == 0 { "counter" } else { "gauge" };
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        samples.sort_by(|a, b| a.0.cmp(b.0));
        for (_, tags, value) in samples {
            let tags: Vec<String> = tags
                .iter()
                .map(|t| {
                    let (k, v) = (prom_sanitize(&t.name), escape_label_value(&t.value));
                    format!("{k}=\"{v}\"")
                })
                .collect();
            let _ = writeln!(out, "{metric}{{{}}} {value}", tags.join(","));
        }
        out.push('\n');
    }
    out
}

fn selected(state: &AdminState, sel: &Selection) -> Vec<Stat> {
    collect_stats(state)
        .into_iter()
        .filter(|s| sel.keeps(s))
        .collect()
}

/// `GET /stats`: `?filter=`, `?usedonly`, `?type=`, `?format=text|json|prometheus`.
pub(super) fn handle_stats(state: &AdminState, q: &Query) -> Response {
    let sel = match Selection::from_query(q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match q.get("format").unwrap_or("text") {
        "text" | "" => Response::text(200, render_text(&selected(state, &sel))),
        "json" => Response::json(&render_json(&selected(state, &sel))),
        "prometheus" => Response::text(
            200,
            render_prometheus(&selected(state, &sel), &state.stats_config.tags),
        ),
        other => Response::text(
            400,
            format!("unsupported stats format '{other}': one of text, json, prometheus\n"),
        ),
    }
}

/// `GET /stats/prometheus`: `?filter=`, `?usedonly`.
pub(super) fn handle_prometheus(state: &AdminState, q: &Query) -> Response {
    let sel = match Selection::from_query(q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    Response::text(
        200,
        render_prometheus(&selected(state, &sel), &state.stats_config.tags),
    )
}

/// `GET /source_limits[?limit=N]`: each per-source limit's table (its size, memory and
/// counters) and its `N` busiest sources (by open connections, then refusals), as JSON.
pub(super) fn handle_source_limits(state: &AdminState, query: &Query) -> Response {
    let limit = match query.get("limit").map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Response::text(400, "limit: not a number\n"),
    };
    let tables: Vec<(String, Arc<switchyard_dataplane::source_limit::SourceTable>)> = state
        .stats
        .blocks()
        .source_limit
        .iter()
        .map(|(prefix, (table, _))| (prefix.clone(), table.clone()))
        .collect();
    let filters: Vec<serde_json::Value> = tables
        .iter()
        .map(|(prefix, table)| {
            let busiest: Vec<serde_json::Value> = table
                .busiest(limit)
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "source": s.prefix,
                        "open_connections": s.open_connections,
                        "tokens_left": s.tokens_left,
                        "connections_admitted": s.connections_admitted,
                        "connections_refused": s.connections_refused,
                    })
                })
                .collect();
            let counters = table.counters();
            serde_json::json!({
                "stat_prefix": prefix,
                "table_entries": table.entries(),
                "table_bytes": table.memory_bytes(),
                "evictions": counters.evictions,
                "refused_table_full": counters.refused_table_full,
                "busiest": busiest,
            })
        })
        .collect();
    Response::json(&serde_json::json!({ "source_limits": filters }))
}

#[cfg(test)]
mod tests {
    use super::super::fixture::fixture;
    use super::*;

    #[test]
    fn collects_every_stat_with_envoy_names() {
        let f = fixture();
        let stats = collect_stats(&f.state);
        let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        // 10 tcp + 12 udp + 2 clusters x (20 + 4 membership + 2 circuit breaker) + 5 udp of
        // echo (empty has no UDP route) + the listener block + 2 workers x 2 + the UDP
        // listener's 1 + the worker server block + 4 admin server stats.
        assert_eq!(
            stats.len(),
            10 + 12 + 2 * 26 + 5 + ListenerStat::ALL.len() + 4 + 1 + ServerStat::ALL.len() + 4
        );
        let text = render_text(&stats);
        for line in [
            "tcp.l4.downstream_cx_total: 3\n",
            "tcp.l4.downstream_cx_active: 1\n",
            "udp.dns.downstream_sess_total: 2\n",
            "udp.dns.downstream_sess_active: 1\n",
            "udp.dns.idle_timeout: 0\n",
            "cluster.echo.udp.sess_tx_datagrams: 4\n",
            "cluster.echo.udp.sess_rx_datagrams: 0\n",
            "cluster.echo.upstream_cx_total: 5\n",
            "cluster.echo.upstream_cx_connect_fail: 1\n",
            "cluster.echo.membership_total: 2\n",
            "cluster.echo.membership_healthy: 2\n",
            "cluster.empty.membership_total: 0\n",
            "listener.127.0.0.1_10000.downstream_cx_total: 3\n",
            "listener.127.0.0.1_10000.worker_0.downstream_cx_total: 1\n",
            "listener.127.0.0.1_10000.worker_1.downstream_cx_total: 2\n",
            "listener.127.0.0.1_10000.worker_1.downstream_cx_active: 1\n",
            "listener.127.0.0.1_10000.udp.downstream_rx_datagram_dropped: 1\n",
            "server.live: 1\n",
            "server.state: 0\n",
            "server.concurrency: 2\n",
            "server.uptime: 0\n",
            "server.total_connections: 1\n",
            "server.access_log_dropped: 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.starts_with("cluster.echo.circuit_breakers.default.cx_open: 0\n"),
            "{text}"
        );
        assert!(!text.contains("cluster.empty.udp."), "{text}");
    }

    #[test]
    fn udp_stats_in_every_form() {
        let f = fixture();
        let sel = Selection::from_query(&Query::parse("filter=udp%5C.")).unwrap();
        let text = render_text(&selected(&f.state, &sel));
        assert_eq!(
            text,
            "cluster.echo.udp.sess_rx_datagrams: 0\n\
             cluster.echo.udp.sess_rx_datagrams_dropped: 0\n\
             cluster.echo.udp.sess_rx_errors: 0\n\
             cluster.echo.udp.sess_tx_datagrams: 4\n\
             cluster.echo.udp.sess_tx_errors: 0\n\
             listener.127.0.0.1_10000.udp.downstream_rx_datagram_dropped: 1\n\
             udp.dns.downstream_sess_active: 1\n\
             udp.dns.downstream_sess_no_route: 0\n\
             udp.dns.downstream_sess_rx_bytes: 0\n\
             udp.dns.downstream_sess_rx_datagrams: 0\n\
             udp.dns.downstream_sess_rx_errors: 0\n\
             udp.dns.downstream_sess_table_full: 0\n\
             udp.dns.downstream_sess_total: 2\n\
             udp.dns.downstream_sess_tx_bytes: 0\n\
             udp.dns.downstream_sess_tx_datagrams: 0\n\
             udp.dns.downstream_sess_tx_errors: 0\n\
             udp.dns.idle_timeout: 0\n\
             udp.dns.session_filter_config_missing: 0\n"
        );
        let sel = Selection::from_query(&Query::parse("usedonly&filter=udp")).unwrap();
        assert_eq!(
            render_json(&selected(&f.state, &sel)),
            serde_json::json!({"stats": [
                {"name": "cluster.echo.udp.sess_tx_datagrams", "value": 4},
                {"name": "listener.127.0.0.1_10000.udp.downstream_rx_datagram_dropped", "value": 1},
                {"name": "udp.dns.downstream_sess_active", "value": 1},
                {"name": "udp.dns.downstream_sess_total", "value": 2},
            ]})
        );
        assert_eq!(
            render_prometheus(&selected(&f.state, &sel), &f.state.stats_config.tags),
            "# TYPE envoy_cluster_udp_sess_tx_datagrams counter\n\
             envoy_cluster_udp_sess_tx_datagrams{envoy_cluster_name=\"echo\"} 4\n\
             \n\
             # TYPE envoy_listener_udp_downstream_rx_datagram_dropped counter\n\
             envoy_listener_udp_downstream_rx_datagram_dropped{envoy_listener_address=\"127.0.0.1_10000\"} 1\n\
             \n\
             # TYPE envoy_udp_downstream_sess_total counter\n\
             envoy_udp_downstream_sess_total{envoy_udp_prefix=\"dns\"} 2\n\
             \n\
             # TYPE envoy_udp_downstream_sess_active gauge\n\
             envoy_udp_downstream_sess_active{envoy_udp_prefix=\"dns\"} 1\n\
             \n"
        );
        // Reset zeroes the UDP counters, not the gauge.
        f.state.stats.reset_counters();
        let text = render_text(&collect_stats(&f.state));
        assert!(
            text.contains("udp.dns.downstream_sess_total: 0\n"),
            "{text}"
        );
        assert!(
            text.contains("udp.dns.downstream_sess_active: 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cluster.echo.udp.sess_tx_datagrams: 0\n"),
            "{text}"
        );
        assert!(
            text.contains("listener.127.0.0.1_10000.udp.downstream_rx_datagram_dropped: 0\n"),
            "{text}"
        );
    }

    #[test]
    fn selection_filters_usedonly_and_type() {
        let f = fixture();
        let q = Query::parse("filter=^cluster%5C.echo%5C.upstream_cx_(total|active)$");
        let sel = Selection::from_query(&q).unwrap();
        let text = render_text(&selected(&f.state, &sel));
        assert_eq!(
            text,
            "cluster.echo.upstream_cx_active: 1\ncluster.echo.upstream_cx_total: 5\n"
        );

        let sel = Selection::from_query(&Query::parse("usedonly&filter=^tcp")).unwrap();
        let text = render_text(&selected(&f.state, &sel));
        assert_eq!(
            text,
            "tcp.l4.downstream_cx_active: 1\ntcp.l4.downstream_cx_rx_bytes_total: 100\n\
             tcp.l4.downstream_cx_total: 3\n"
        );

        let sel = Selection::from_query(&Query::parse("type=Gauges&filter=^server")).unwrap();
        let text = render_text(&selected(&f.state, &sel));
        assert_eq!(
            text,
            "server.concurrency: 2\nserver.live: 1\nserver.state: 0\nserver.total_connections: 1\n\
             server.uptime: 0\nserver.worker_own_core: 0\n"
        );
        assert!(Selection::from_query(&Query::parse("filter=(")).is_err());
        assert!(Selection::from_query(&Query::parse("type=Nope")).is_err());
    }

    #[test]
    fn json_form() {
        let f = fixture();
        let sel =
            Selection::from_query(&Query::parse("filter=^tcp.l4.downstream_cx_(total|active)"))
                .unwrap();
        let v = render_json(&selected(&f.state, &sel));
        assert_eq!(
            v,
            serde_json::json!({"stats": [
                {"name": "tcp.l4.downstream_cx_active", "value": 1},
                {"name": "tcp.l4.downstream_cx_total", "value": 3},
            ]})
        );
    }

    #[test]
    fn prometheus_form() {
        let f = fixture();
        let sel = Selection::from_query(&Query::parse(
            "filter=(downstream_cx_total|upstream_cx_total|upstream_cx_active|membership_total|server.live)",
        ))
        .unwrap();
        let text = render_prometheus(&selected(&f.state, &sel), &f.state.stats_config.tags);
        assert_eq!(
            text,
            "# TYPE envoy_cluster_upstream_cx_total counter\n\
             envoy_cluster_upstream_cx_total{envoy_cluster_name=\"echo\"} 5\n\
             envoy_cluster_upstream_cx_total{envoy_cluster_name=\"empty\"} 0\n\
             \n\
             # TYPE envoy_listener_downstream_cx_total counter\n\
             envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_10000\"} 3\n\
             \n\
             # TYPE envoy_listener_worker_downstream_cx_total counter\n\
             envoy_listener_worker_downstream_cx_total{envoy_worker_id=\"0\",envoy_listener_address=\"127.0.0.1_10000\"} 1\n\
             envoy_listener_worker_downstream_cx_total{envoy_worker_id=\"1\",envoy_listener_address=\"127.0.0.1_10000\"} 2\n\
             \n\
             # TYPE envoy_tcp_downstream_cx_total counter\n\
             envoy_tcp_downstream_cx_total{envoy_tcp_prefix=\"l4\"} 3\n\
             \n\
             # TYPE envoy_cluster_membership_total gauge\n\
             envoy_cluster_membership_total{envoy_cluster_name=\"echo\"} 2\n\
             envoy_cluster_membership_total{envoy_cluster_name=\"empty\"} 0\n\
             \n\
             # TYPE envoy_cluster_upstream_cx_active gauge\n\
             envoy_cluster_upstream_cx_active{envoy_cluster_name=\"echo\"} 1\n\
             envoy_cluster_upstream_cx_active{envoy_cluster_name=\"empty\"} 0\n\
             \n\
             # TYPE envoy_server_live gauge\n\
             envoy_server_live{} 1\n\
             \n"
        );
    }

    #[test]
    fn stats_config_drops_stats_and_tags_them() {
        use crate::stats_config::{NameMatch, StatsConfig, StatsMatcher};
        use std::sync::Arc;
        use switchyard_dataplane::fib::chain_matcher::{StringMatch, StringMatchKind};
        let mut f = fixture();
        let mut tags = TagProducer::new(false);
        tags.add_fixed("env", "prod");
        tags.add_regex("what", Regex::new(r"\.(downstream_(cx)_)total$").unwrap());
        tags.add_defaults_named("envoy.tcp_prefix");
        let keep = |kind, pattern: &str| {
            NameMatch::Plain(StringMatch {
                kind,
                pattern: pattern.into(),
                ignore_case: false,
            })
        };
        let matcher = StatsMatcher::Include(vec![
            keep(StringMatchKind::Prefix, "tcp.l4.downstream_cx_"),
            keep(StringMatchKind::Exact, "server.live"),
        ]);
        Arc::get_mut(&mut f.state).unwrap().stats_config = Arc::new(StatsConfig { tags, matcher });
        let sel = Selection::from_query(&Query::parse("filter=total|live")).unwrap();
        let stats = selected(&f.state, &sel);
        assert_eq!(
            render_text(&stats),
            "server.live: 1\ntcp.l4.downstream_cx_rx_bytes_total: 100\n\
             tcp.l4.downstream_cx_total: 3\ntcp.l4.downstream_cx_tx_bytes_total: 0\n"
        );
        assert_eq!(
            render_prometheus(&stats[..1], &f.state.stats_config.tags),
            "# TYPE envoy_server_live gauge\nenvoy_server_live{env=\"prod\"} 1\n\n"
        );
        assert_eq!(
            render_prometheus(&stats[2..3], &f.state.stats_config.tags),
            "# TYPE envoy_tcp_total counter\n\
             envoy_tcp_total{env=\"prod\",what=\"cx\",envoy_tcp_prefix=\"l4\"} 3\n\n"
        );
        let all = collect_stats(&f.state);
        // server.live and the 7 tcp.l4.downstream_cx_* stats.
        assert_eq!(all.len(), 8, "{all:?}");
    }

    #[test]
    fn reset_zeroes_counters_not_gauges() {
        let f = fixture();
        f.state.stats.reset_counters();
        let text = render_text(&collect_stats(&f.state));
        assert!(text.contains("cluster.echo.upstream_cx_total: 0\n"));
        assert!(text.contains("cluster.echo.upstream_cx_active: 1\n"));
        assert!(text.contains("tcp.l4.downstream_cx_total: 0\n"));
        assert!(text.contains("listener.127.0.0.1_10000.worker_1.downstream_cx_active: 1\n"));
    }

    #[test]
    fn state_drives_server_live() {
        let f = fixture();
        f.state
            .healthcheck_failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let text = render_text(&collect_stats(&f.state));
        assert!(text.contains("server.live: 0\n"), "{text}");
        assert!(text.contains("server.state: 1\n"), "{text}");
    }
}
