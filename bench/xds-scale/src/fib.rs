//! `--fib-only`: Switchyard's RIB -> FIB step alone, in this process, for the benchmark's
//! snapshot: what the control thread does for every xDS change (compose the static and
//! dynamic resources, compile, keep the result), timed, and the memory it keeps.
//!
//! Memory is measured as this process's RSS growth while the FIB is alive (no allocator
//! hooks), so it includes everything the FIB holds: endpoint arrays and per-host stat blocks.

use crate::snapshot::{cluster_name, Snapshot};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_control::compile::{compile, CompileCache};
use switchyard_control::dynamic::DynamicState;
use switchyard_control::rib::{
    AdminAddress, AdminConfig, ClusterConfig, EndpointConfig, NodeInfo, Rib,
};
use switchyard_control::stats::StatsRegistry;
use switchyard_control::xds::resource;
use switchyard_control::xds::{Parallel, Validator};
use switchyard_dataplane::fib::LbPolicy;

#[derive(Debug, Serialize)]
pub struct FibReport {
    schema: &'static str,
    clusters: usize,
    endpoints: usize,
    /// Compose + compile of the whole snapshot (first apply).
    full_ms: f64,
    /// Compose + compile after one endpoint of one cluster changed (median of 20).
    one_change_ms: f64,
    /// RSS growth of the dynamic state (what xDS delivered, as domain types) per endpoint.
    state_bytes_per_endpoint: f64,
    /// RSS growth of the composed RIB and its FIB, stat blocks included, per endpoint.
    fib_bytes_per_endpoint: f64,
    /// Decoding and validating every cluster resource, then every assignment, as the xDS
    /// client does for a full push.
    validate_clusters_ms: f64,
    validate_assignments_ms: f64,
    /// The same for the assignments through the client's parallel validator.
    validate_assignments_parallel_ms: f64,
}

/// VmRSS of this process, bytes.
fn rss() -> u64 {
    crate::proxy::rss_bytes(std::process::id())
}

fn cluster(
    i: usize,
    endpoints: &[std::net::SocketAddr],
) -> (String, ClusterConfig, Arc<[EndpointConfig]>) {
    let name = cluster_name(i);
    let c = ClusterConfig {
        alt_stat_name: None,
        name: name.clone(),
        connect_timeout: Duration::from_secs(1),
        buffer_limit_bytes: 1024 * 1024,
        lb_policy: LbPolicy::RoundRobin,
        endpoints: Default::default(),
        eds_service: Some(name.clone()),
        eds_source: Default::default(),
        upstream_bind: Default::default(),
        circuit_breakers: Default::default(),
        health: Default::default(),
        added_via_api: true,
        dns: None,
        tls: None,
        proxy_protocol: None,
        http2: None,
        original_dst_authority: false,
    };
    let eps: Vec<EndpointConfig> = endpoints
        .iter()
        .map(|a| EndpointConfig {
            address: *a,
            weight: 1,
            priority: 0,
            locality: Default::default(),
            tunnel: None,
        })
        .collect();
    (name, c, eps.into())
}

/// Measures compose + compile for `clusters` x `endpoints`.
pub fn measure(clusters: usize, endpoints: usize) -> Result<FibReport, String> {
    let snap = Snapshot::new(clusters, endpoints);
    let (validate_clusters_ms, validate_assignments_ms, validate_assignments_parallel_ms) =
        validate(&snap)?;
    let statics = Rib {
        node: NodeInfo::default(),
        admin: AdminConfig {
            address: Some(AdminAddress::Tcp("127.0.0.1:15000".parse().unwrap())),
            access_logs: Vec::new(),
            ignore_global_conn_limit: false,
        },
        listeners: Vec::new(),
        clusters: Vec::new(),
        dynamic: None,
        dns_resolver: Default::default(),
        runtime: Default::default(),
        outlier_event_log: None,
        secrets: Default::default(),
        stats: Default::default(),
    };
    let stats = StatsRegistry::new(1);
    let mut cache = CompileCache::new();
    let rss0 = rss();
    let mut state = DynamicState::default();
    for (i, eps) in snap.clusters.iter().enumerate() {
        let (name, c, eps) = cluster(i, eps);
        state.insert_cluster(name.clone(), c);
        state.insert_endpoints(name, eps);
    }
    let rss1 = rss();
    let t = Instant::now();
    let (rib, _) = state.compose(&statics);
    let fib = compile(&rib, 1, &stats, &mut cache).expect("compiles");
    let full_ms = t.elapsed().as_secs_f64() * 1000.0;
    let rss2 = rss();
    let total = (clusters * endpoints) as f64;
    let mut held = (rib, fib);
    let mut times = Vec::new();
    for n in 0..20 {
        let name = cluster_name(n % clusters);
        if let Some(eps) = state.endpoints(&name) {
            let mut changed = eps.to_vec();
            let port = changed[0].address.port().wrapping_add(1).max(1);
            changed[0].address.set_port(port);
            state.insert_endpoints(name, changed.into());
        }
        let t = Instant::now();
        let (rib, _) = state.compose(&statics);
        let changed = rib != held.0;
        let fib = compile(&rib, n as u64 + 2, &stats, &mut cache).expect("compiles");
        held = (rib, fib);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if !changed {
            return Err("a change left the RIB as it was".into());
        }
    }
    times.sort_by(f64::total_cmp);
    drop(held);
    Ok(FibReport {
        schema: "switchyard-xds-scale-fib/v1",
        clusters,
        endpoints: clusters * endpoints,
        full_ms,
        one_change_ms: times[times.len() / 2],
        state_bytes_per_endpoint: rss1.saturating_sub(rss0) as f64 / total,
        fib_bytes_per_endpoint: rss2.saturating_sub(rss1) as f64 / total,
        validate_clusters_ms,
        validate_assignments_ms,
        validate_assignments_parallel_ms,
    })
}

/// Times `resource::cluster` over every cluster and `resource::endpoints` over every
/// assignment of `snap`.
fn validate(snap: &Snapshot) -> Result<(f64, f64, f64), String> {
    let clusters = snap.cluster_resources();
    let assignments: Vec<_> = (0..snap.clusters.len())
        .map(|i| snap.assignment_resource(i))
        .collect();
    let t = Instant::now();
    for c in &clusters {
        resource::cluster(c).map_err(|r| format!("cluster rejected: {}", r.reason))?;
    }
    let clusters_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    for a in &assignments {
        resource::endpoints(a).map_err(|r| format!("assignment rejected: {}", r.reason))?;
    }
    let sequential_ms = t.elapsed().as_secs_f64() * 1000.0;
    let refs: Vec<_> = assignments.iter().collect();
    let t = Instant::now();
    let results = Parallel(resource::endpoints).validate_many(&refs);
    let parallel_ms = t.elapsed().as_secs_f64() * 1000.0;
    if results.iter().any(Result::is_err) {
        return Err("an assignment was rejected in parallel".into());
    }
    Ok((clusters_ms, sequential_ms, parallel_ms))
}
