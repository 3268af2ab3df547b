//! RIB -> FIB: turns the validated config into the immutable table workers read.
//!
//! Compilation cannot fail: everything that can be wrong was rejected by `convert`. It is
//! pure apart from the two registries it draws shared state from, so that state survives a
//! swap:
//! - stat blocks come from the [`StatsRegistry`] by stable name (`tcp.<stat_prefix>`,
//!   `cluster.<name>`, host by (cluster, address), `listener.<ip>_<port>`);
//! - access-log sinks come from [`AccessLogSinks`], one `Arc` per distinct (path, format), so
//!   the log writer keeps one open file per sink across generations.
//!
//! Cluster ids are indices into `rib.clusters` (the FIB keeps the RIB's order). A tcp_proxy
//! naming a cluster that does not exist compiles to [`Route::Missing`] (Envoy's behaviour:
//! `downstream_cx_no_route` at run time).

use crate::rib::{FilterChainConfig, Rib, RouteConfig, TcpProxyConfig};
use crate::stats::StatsRegistry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::accesslog::{AccessLogSink, LogFormat, LogPath};
use switchyard_dataplane::fib::{
    Cluster, ClusterId, Endpoint, Fib, FilterChain, Listener, Route, TcpProxy, WeightedClusters,
};

/// Kernel accept backlog for every listener.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Access-log sinks by (path, format), shared across FIB generations.
#[derive(Debug, Default)]
pub struct AccessLogSinks {
    sinks: Vec<Arc<AccessLogSink>>,
}

impl AccessLogSinks {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sink for `path` and `format`: the existing one if there is one, else a new one.
    pub fn get(&mut self, path: &LogPath, format: &LogFormat) -> Arc<AccessLogSink> {
        if let Some(s) = self
            .sinks
            .iter()
            .find(|s| &s.path == path && &s.format == format)
        {
            return s.clone();
        }
        let sink = Arc::new(AccessLogSink {
            path: path.clone(),
            format: format.clone(),
        });
        self.sinks.push(sink.clone());
        sink
    }

    /// Every sink, in creation order (what the log writer opens).
    pub fn all(&self) -> &[Arc<AccessLogSink>] {
        &self.sinks
    }

    /// Forgets sinks no FIB uses any more (only this registry holds them). Call after an old
    /// generation is dropped; returns how many were removed.
    pub fn prune_unused(&mut self) -> usize {
        let before = self.sinks.len();
        self.sinks.retain(|s| Arc::strong_count(s) > 1);
        before - self.sinks.len()
    }
}

/// Compiles `rib` into generation `generation` of the FIB.
pub fn compile(
    rib: &Rib,
    generation: u64,
    stats: &StatsRegistry,
    sinks: &mut AccessLogSinks,
) -> Fib {
    let ids: HashMap<&str, ClusterId> = rib
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), ClusterId(i as u32)))
        .collect();
    let clusters = rib
        .clusters
        .iter()
        .map(|c| Cluster {
            name: c.name.as_str().into(),
            connect_timeout_ms: millis(c.connect_timeout),
            lb_policy: c.lb_policy,
            endpoints: c
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    address: e.address,
                    weight: e.weight,
                    stats: stats.host(&c.name, e.address),
                })
                .collect(),
            stats: stats.cluster(&c.name),
        })
        .collect();
    let mut chain = |c: &FilterChainConfig| FilterChain {
        name: c.name.as_str().into(),
        matcher: c.matcher.clone(),
        tcp_proxy: tcp_proxy(&c.tcp_proxy, &ids, stats, sinks),
    };
    let listeners = rib
        .listeners
        .iter()
        .map(|l| Listener {
            name: l.name.as_str().into(),
            address: l.address,
            filter_chains: l.filter_chains.iter().map(&mut chain).collect(),
            default_chain: l.default_filter_chain.as_ref().map(&mut chain),
            backlog: DEFAULT_BACKLOG,
            stats: stats.listener(l.address),
        })
        .collect();
    Fib {
        generation,
        listeners,
        clusters,
    }
}

fn tcp_proxy(
    t: &TcpProxyConfig,
    ids: &HashMap<&str, ClusterId>,
    stats: &StatsRegistry,
    sinks: &mut AccessLogSinks,
) -> TcpProxy {
    let route = match &t.route {
        RouteConfig::Cluster(name) => match ids.get(name.as_str()) {
            Some(id) => Route::Cluster(*id),
            None => Route::Missing(name.as_str().into()),
        },
        RouteConfig::Weighted(entries) => {
            let items = entries
                .iter()
                .map(|e| {
                    (
                        ids.get(e.name.as_str()).copied(),
                        Arc::from(e.name.as_str()),
                        e.weight,
                    )
                })
                .collect();
            match WeightedClusters::new(items) {
                Some(w) => Route::Weighted(w),
                // Only a hand-built RIB can get here (convert requires weights >= 1).
                None => Route::Missing(entries.first().map_or("", |e| e.name.as_str()).into()),
            }
        }
    };
    TcpProxy {
        stats: stats.tcp(&t.stat_prefix),
        route,
        idle_timeout_ms: t.idle_timeout.map(millis),
        max_connect_attempts: t.max_connect_attempts.max(1),
        access_logs: t
            .access_logs
            .iter()
            .map(|a| sinks.get(&a.path, &a.format))
            .collect(),
    }
}

/// Whole milliseconds, rounded up so that a non-zero duration never becomes zero.
fn millis(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}
