//! The stats registry: stat blocks by stable identity.
//!
//! Guarantees:
//! - Asking twice for the same name returns the same `Arc`, so a FIB compiled after a config
//!   change shares its counters with the FIB before it: counters survive every swap.
//! - Only the control and admin threads touch the registry (behind a mutex); workers hold the
//!   `Arc`s inside the FIB and never see the registry.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use switchyard_dataplane::health::{ClusterHealth, HealthSignal};
use switchyard_dataplane::rate_limit::TokenBucket;
use switchyard_dataplane::source_limit::{SourceLimitSettings, SourceTable};
use switchyard_dataplane::stats::{
    listener_stat_name, ClusterResources, ClusterStats, ClusterUdpStats, ConnectionLimitState,
    FaultStats, ListenerStats, ListenerUdpStats, LocalRateLimitStats, MirrorStats, ProxyProtoStats,
    RbacStats, ServerStats, SourceLimitStats, SslStats, TcpStats, TlsInspectorStats, UdpStats,
};

/// All stat blocks, by name.
#[derive(Debug)]
pub struct StatsRegistry {
    workers: usize,
    server: Arc<ServerStats>,
    xds: XdsStats,
    dns: Arc<DnsStats>,
    /// Wakes the health thread when a worker sees a host reach an ejection threshold.
    health_signal: Option<Arc<HealthSignal>>,
    /// The `cluster.<name>.udp.` block of every cluster no UDP route names (see
    /// [`StatsRegistry::cluster_udp_unrouted`]).
    cluster_udp_unrouted: Arc<ClusterUdpStats>,
    inner: Mutex<Blocks>,
}

/// The blocks themselves, sorted by name (the order `/stats` prints them in).
#[derive(Debug, Default)]
pub struct Blocks {
    /// `tcp.<stat_prefix>.`
    pub tcp: BTreeMap<String, Arc<TcpStats>>,
    /// `udp.<stat_prefix>.`
    pub udp: BTreeMap<String, Arc<UdpStats>>,
    /// `cluster.<name>.udp.`, for the clusters a UDP route has named.
    pub cluster_udp: BTreeMap<String, Arc<ClusterUdpStats>>,
    /// `cluster.<name>.`
    pub cluster: BTreeMap<String, Arc<ClusterStats>>,
    /// `listener.<ip>_<port>.`
    pub listener: BTreeMap<String, Arc<ListenerStats>>,
    /// `listener.<ip>_<port>.udp.`, for UDP listeners.
    pub listener_udp: BTreeMap<String, Arc<ListenerUdpStats>>,
    /// `listener.<ip>_<port>.ssl.`, for listeners with a chain that terminates TLS.
    pub listener_ssl: BTreeMap<String, Arc<SslStats>>,
    /// `cluster.<name>.ssl.`, for clusters that originate TLS.
    pub cluster_ssl: BTreeMap<String, Arc<SslStats>>,
    /// `tls_inspector.`, once a listener has a TLS inspector (one block for all, as Envoy's
    /// inspector counts in the root scope).
    pub tls_inspector: Option<Arc<TlsInspectorStats>>,
    /// `proxy_proto.[<stat_prefix>.]`, by `stat_prefix` (empty: the unprefixed block).
    pub proxy_proto: BTreeMap<String, Arc<ProxyProtoStats>>,
    /// Circuit-breaker resources in use, by cluster name.
    pub resources: BTreeMap<String, Arc<ClusterResources>>,
    /// `connection_limit.<stat_prefix>.`
    pub connection_limit: BTreeMap<String, Arc<ConnectionLimitState>>,
    /// `local_rate_limit.<stat_prefix>.`
    pub local_rate_limit: BTreeMap<String, Arc<LocalRateLimitStats>>,
    /// `<stat_prefix>.rbac.`, by stat prefix and shadow rules' stat prefix.
    pub rbac: BTreeMap<(String, String), Arc<RbacStats>>,
    /// `source_limit.<stat_prefix>.`: each prefix's table and refusals.
    pub source_limit: BTreeMap<String, (Arc<SourceTable>, Arc<SourceLimitStats>)>,
    /// The local rate limits' token buckets, by `share_key` (or by the filter's place when it
    /// has none), so that a recompilation keeps each bucket's tokens.
    pub token_buckets: BTreeMap<String, Arc<TokenBucket>>,
    /// `fault.<stat_prefix>.`
    pub fault: BTreeMap<String, Arc<FaultStats>>,
    /// `mirror.<stat_prefix>.`
    pub mirror: BTreeMap<String, Arc<MirrorStats>>,
    /// Health state and `outlier_detection.*` / `health_check.*` stats, by cluster name.
    pub health: BTreeMap<String, Arc<ClusterHealth>>,
}

impl StatsRegistry {
    /// A registry whose blocks have one slot per worker (plus one).
    pub fn new(workers: usize) -> Self {
        StatsRegistry {
            workers,
            server: Arc::new(ServerStats::new("server", workers)),
            xds: XdsStats::default(),
            dns: Arc::default(),
            health_signal: match HealthSignal::new() {
                Ok(signal) => Some(Arc::new(signal)),
                Err(e) => {
                    tracing::warn!(error = %e, "no eventfd for the health thread: outlier ejections wait for its next interval");
                    None
                }
            },
            cluster_udp_unrouted: Arc::new(ClusterUdpStats::new("", 0)),
            inner: Mutex::new(Blocks::default()),
        }
    }

    /// Number of workers the blocks are sized for.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// `server.*` stats written by workers.
    pub fn server(&self) -> Arc<ServerStats> {
        self.server.clone()
    }

    /// Zeroes every counter of every block, the server's and the control plane's (gauges
    /// keep their values): `POST /reset_counters`.
    pub fn reset_counters(&self) {
        {
            let blocks = self.blocks();
            blocks.tcp.values().for_each(|b| b.reset_counters());
            blocks.udp.values().for_each(|b| b.reset_counters());
            blocks.cluster_udp.values().for_each(|b| b.reset_counters());
            blocks.cluster.values().for_each(|b| b.reset_counters());
            blocks.listener.values().for_each(|b| b.reset_counters());
            blocks
                .listener_udp
                .values()
                .for_each(|b| b.reset_counters());
            let ssl = blocks
                .listener_ssl
                .values()
                .chain(blocks.cluster_ssl.values());
            ssl.for_each(|b| b.reset_counters());
            if let Some(b) = &blocks.tls_inspector {
                b.reset_counters();
            }
            blocks.proxy_proto.values().for_each(|b| b.reset_counters());
            blocks
                .connection_limit
                .values()
                .for_each(|b| b.reset_counters());
            blocks
                .local_rate_limit
                .values()
                .for_each(|b| b.reset_counters());
            blocks.rbac.values().for_each(|b| b.reset_counters());
            blocks
                .source_limit
                .values()
                .for_each(|(_, b)| b.reset_counters());
            blocks.health.values().for_each(|b| b.reset_counters());
            blocks.fault.values().for_each(|b| b.reset_counters());
            blocks.mirror.values().for_each(|b| b.reset_counters());
        }
        self.server.reset_counters();
        self.xds.reset();
        self.dns.reset();
    }

    /// The control plane's stats (written by the control thread only).
    pub fn xds(&self) -> &XdsStats {
        &self.xds
    }

    /// The DNS stats (written by the `dns` thread).
    pub fn dns(&self) -> &Arc<DnsStats> {
        &self.dns
    }

    /// Locks the registry for reading every block (admin) or creating blocks (compile).
    pub fn blocks(&self) -> MutexGuard<'_, Blocks> {
        // A panic while holding this lock cannot leave a block half-inserted: recover.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `tcp.<prefix>.` block.
    pub fn tcp(&self, prefix: &str) -> Arc<TcpStats> {
        let w = self.workers;
        self.blocks()
            .tcp
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(TcpStats::new(prefix, w)))
            .clone()
    }

    /// The `udp.<prefix>.` block.
    pub fn udp(&self, prefix: &str) -> Arc<UdpStats> {
        let w = self.workers;
        self.blocks()
            .udp
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(UdpStats::new(prefix, w)))
            .clone()
    }

    /// The `cluster.<name>.udp.` block, for a cluster a UDP route names.
    pub fn cluster_udp(&self, name: &str) -> Arc<ClusterUdpStats> {
        let w = self.workers;
        self.blocks()
            .cluster_udp
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ClusterUdpStats::new(name, w)))
            .clone()
    }

    /// What a cluster that no UDP route names has as its `cluster.<name>.udp.` block: one
    /// shared, unnamed block of one slot that nothing writes (no UDP session reaches such a
    /// cluster) and `/stats` never shows. A block per cluster would cost every cluster one
    /// cache line per worker for a feature most never use.
    pub fn cluster_udp_unrouted(&self) -> &Arc<ClusterUdpStats> {
        &self.cluster_udp_unrouted
    }

    /// The `fault.<prefix>.` block.
    pub fn fault(&self, prefix: &str) -> Arc<FaultStats> {
        let w = self.workers;
        self.blocks()
            .fault
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(FaultStats::new(prefix, w)))
            .clone()
    }

    /// The `mirror.<prefix>.` block.
    pub fn mirror(&self, prefix: &str) -> Arc<MirrorStats> {
        let w = self.workers;
        self.blocks()
            .mirror
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(MirrorStats::new(prefix, w)))
            .clone()
    }

    /// The `cluster.<name>.` block.
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        let w = self.workers;
        self.blocks()
            .cluster
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ClusterStats::new(name, w)))
            .clone()
    }

    /// The circuit-breaker resources of cluster `name`: one object for the cluster's life
    /// (connections counted under one FIB are released under the next).
    pub fn resources(&self, name: &str) -> Arc<ClusterResources> {
        self.blocks()
            .resources
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The per-source table and stats of `source_limit.<prefix>.`: the table kept while its
    /// settings stay the same (so a reload or an endpoint update forgets no source), a new
    /// one when they change.
    pub fn source_limit(
        &self,
        prefix: &str,
        settings: &SourceLimitSettings,
    ) -> (Arc<SourceTable>, Arc<SourceLimitStats>) {
        let mut blocks = self.blocks();
        let entry = blocks
            .source_limit
            .entry(prefix.to_string())
            .or_insert_with(|| {
                let table = Arc::new(SourceTable::new(settings.clone()));
                (table, Arc::new(SourceLimitStats::new(prefix)))
            });
        if entry.0.settings() != settings {
            entry.0 = Arc::new(SourceTable::new(settings.clone()));
        }
        (entry.0.clone(), entry.1.clone())
    }

    /// The `<prefix>.rbac.` stats (shadow ones under `shadow_prefix`).
    pub fn rbac(&self, prefix: &str, shadow_prefix: &str) -> Arc<RbacStats> {
        self.blocks()
            .rbac
            .entry((prefix.to_string(), shadow_prefix.to_string()))
            .or_insert_with(|| Arc::new(RbacStats::new(prefix, shadow_prefix)))
            .clone()
    }

    /// The `local_rate_limit.<prefix>.` stats.
    pub fn local_rate_limit(&self, prefix: &str) -> Arc<LocalRateLimitStats> {
        self.blocks()
            .local_rate_limit
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(LocalRateLimitStats::new(prefix)))
            .clone()
    }

    /// The token bucket kept under `key`, or a new full one when there is none or the one
    /// there has other settings.
    pub fn token_bucket(
        &self,
        key: &str,
        max_tokens: u32,
        tokens_per_fill: u32,
        interval_ms: u64,
    ) -> Arc<TokenBucket> {
        let mut blocks = self.blocks();
        let kept = blocks
            .token_buckets
            .get(key)
            .filter(|b| b.has_settings(max_tokens, tokens_per_fill, interval_ms));
        if let Some(b) = kept {
            return b.clone();
        }
        let bucket = Arc::new(TokenBucket::new(max_tokens, tokens_per_fill, interval_ms));
        blocks.token_buckets.insert(key.to_string(), bucket.clone());
        bucket
    }

    /// The `connection_limit.<prefix>.` count and stats.
    pub fn connection_limit(&self, prefix: &str) -> Arc<ConnectionLimitState> {
        self.blocks()
            .connection_limit
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(ConnectionLimitState::new(prefix)))
            .clone()
    }

    /// The health state of cluster `name`: one object for the cluster's life, shared by
    /// every FIB and the health thread.
    pub fn health(&self, name: &str) -> Arc<ClusterHealth> {
        let signal = self.health_signal.clone();
        self.blocks()
            .health
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ClusterHealth::new(name, signal)))
            .clone()
    }

    /// What wakes the health thread (`None` when no eventfd could be had).
    pub fn health_signal(&self) -> Option<Arc<HealthSignal>> {
        self.health_signal.clone()
    }

    /// The `listener.<ip>_<port>.` block.
    pub fn listener(&self, addr: SocketAddr) -> Arc<ListenerStats> {
        let w = self.workers;
        let name = listener_stat_name(&addr);
        self.blocks()
            .listener
            .entry(name.clone())
            .or_insert_with(|| Arc::new(ListenerStats::new(name, w)))
            .clone()
    }

    /// The `tls_inspector.` block, shared by every listener with a TLS inspector.
    pub fn tls_inspector(&self) -> Arc<TlsInspectorStats> {
        let w = self.workers;
        self.blocks()
            .tls_inspector
            .get_or_insert_with(|| Arc::new(TlsInspectorStats::new("tls_inspector", w)))
            .clone()
    }

    /// The `proxy_proto.[<prefix>.]` block of the PROXY protocol filters with this
    /// `stat_prefix` (shared by them, as Envoy's scope is).
    pub fn proxy_proto(&self, prefix: &str) -> Arc<ProxyProtoStats> {
        let w = self.workers;
        self.blocks()
            .proxy_proto
            .entry(prefix.to_string())
            .or_insert_with(|| Arc::new(ProxyProtoStats::new(prefix, w)))
            .clone()
    }

    /// The `listener.<ip>_<port>.ssl.` block of a listener that terminates TLS.
    pub fn listener_ssl(&self, addr: SocketAddr) -> Arc<SslStats> {
        let w = self.workers;
        let name = listener_stat_name(&addr);
        self.blocks()
            .listener_ssl
            .entry(name.clone())
            .or_insert_with(|| Arc::new(SslStats::new(name, w)))
            .clone()
    }

    /// The `cluster.<name>.ssl.` block of a cluster that originates TLS.
    pub fn cluster_ssl(&self, name: &str) -> Arc<SslStats> {
        let w = self.workers;
        self.blocks()
            .cluster_ssl
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(SslStats::new(name, w)))
            .clone()
    }

    /// The `listener.<ip>_<port>.udp.` block of a UDP listener.
    pub fn listener_udp(&self, addr: SocketAddr) -> Arc<ListenerUdpStats> {
        let w = self.workers;
        let name = listener_stat_name(&addr);
        self.blocks()
            .listener_udp
            .entry(name.clone())
            .or_insert_with(|| Arc::new(ListenerUdpStats::new(name, w)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_same_block() {
        let r = StatsRegistry::new(2);
        let a = r.cluster("echo");
        let b = r.cluster("echo");
        assert!(Arc::ptr_eq(&a, &b));
        let l = r.listener("127.0.0.1:10000".parse().unwrap());
        assert_eq!(&*l.name, "127.0.0.1_10000");
        assert_eq!(r.blocks().listener.len(), 1);
        assert!(Arc::ptr_eq(&r.udp("dns"), &r.udp("dns")));
        let c = r.cluster_udp("echo");
        assert!(Arc::ptr_eq(&c, &r.cluster_udp("echo")));
        assert!(!Arc::ptr_eq(&c, r.cluster_udp_unrouted()));
        assert_eq!(r.blocks().cluster_udp.len(), 1);
    }

    #[test]
    fn reset_covers_udp_blocks() {
        use switchyard_dataplane::stats::{ClusterUdpStat, UdpStat};
        let r = StatsRegistry::new(1);
        let u = r.udp("dns");
        u.inc(0, UdpStat::DownstreamSessTotal);
        u.inc(0, UdpStat::DownstreamSessActive);
        let c = r.cluster_udp("echo");
        c.inc(0, ClusterUdpStat::SessTxDatagrams);
        r.reset_counters();
        assert_eq!(u.get(UdpStat::DownstreamSessTotal), 0);
        assert_eq!(u.gauge(UdpStat::DownstreamSessActive), 1);
        assert_eq!(c.get(ClusterUdpStat::SessTxDatagrams), 0);
    }
}

/// Envoy's xDS stats: `control_plane.connected_state`, and per subscription
/// `cluster_manager.cds.*` / `listener_manager.lds.*` `update_attempt` (a response
/// arrived), `update_success` (accepted whole), `update_rejected` (NACKed) and
/// `update_failure` (the stream broke).
#[derive(Debug, Default)]
pub struct XdsStats {
    /// Set once `dynamic_resources` is configured: the stats are reported from then on.
    pub enabled: AtomicBool,
    /// Set when there is an ADS stream (`ads_config`): `control_plane.connected_state` is
    /// reported from then on.
    pub ads: AtomicBool,
    /// `control_plane.connected_state`: 1 while the ADS stream is up.
    pub connected: AtomicU64,
    pub cds: SubscriptionStats,
    pub lds: SubscriptionStats,
    /// `cluster_manager.cds.control_plane.connected_state`: CDS over a gRPC stream of its
    /// own (`cds_config.api_config_source`).
    pub cds_stream: StreamState,
    /// `listener_manager.lds.control_plane.connected_state`, likewise.
    pub lds_stream: StreamState,
    /// Per EDS cluster, `cluster.<name>.update_*`: an assignment for it arrived (accepted,
    /// or rejected), and `update_empty` when it had no endpoints.
    eds: Mutex<BTreeMap<String, Arc<EdsStats>>>,
    /// Per secret named over SDS, Envoy's `sds.<name>.update_*`.
    sds: Mutex<BTreeMap<String, Arc<SubscriptionStats>>>,
}

/// `cluster.<name>.update_*` of one EDS cluster.
#[derive(Debug, Default)]
pub struct EdsStats {
    pub updates: SubscriptionStats,
    pub update_empty: AtomicU64,
    /// `cluster.<name>.control_plane.connected_state`: an EDS cluster whose assignment
    /// comes over a gRPC stream of its own (`eds_config.api_config_source`).
    pub stream: StreamState,
}

/// The state of a gRPC stream that is not ADS, as Envoy reports it under the subscription's
/// prefix (`<prefix>.control_plane.connected_state`).
#[derive(Debug, Default)]
pub struct StreamState {
    /// The subscription has such a stream: the gauge is reported.
    pub enabled: AtomicBool,
    /// 1 while the stream is up.
    pub connected: AtomicU64,
}

impl StreamState {
    /// The gauge, when there is such a stream.
    pub fn connected_state(&self) -> Option<i64> {
        self.enabled
            .load(Ordering::Relaxed)
            .then(|| self.connected.load(Ordering::Relaxed) as i64)
    }

    /// Marks the stream up or down (and present).
    pub fn set(&self, connected: bool) {
        self.enabled.store(true, Ordering::Relaxed);
        self.connected
            .store(u64::from(connected), Ordering::Relaxed);
    }
}

impl XdsStats {
    /// The EDS counters of cluster `name`. Created when the cluster starts watching its
    /// assignment, with `update_attempt` 1: Envoy counts the subscription's start as an
    /// attempt, then one per response.
    pub fn eds(&self, name: &str) -> Arc<EdsStats> {
        self.eds_for(name, true)
    }

    /// [`XdsStats::eds`], created with `update_attempt` 1 only when `counts_start`: a file
    /// subscription's start is its first read, counted as that read's attempt.
    pub fn eds_for(&self, name: &str, counts_start: bool) -> Arc<EdsStats> {
        let mut eds = self.eds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = eds.get(name) {
            return s.clone();
        }
        let s = Arc::<EdsStats>::default();
        s.updates
            .update_attempt
            .store(u64::from(counts_start), Ordering::Relaxed);
        eds.insert(name.to_string(), s.clone());
        s
    }

    /// `sds.<name>.*` of secret `name` (made on first use).
    pub fn sds(&self, name: &str) -> Arc<SubscriptionStats> {
        let mut sds = self.sds.lock().unwrap_or_else(|e| e.into_inner());
        sds.entry(name.to_string()).or_default().clone()
    }

    /// Every `sds.<name>` block, by secret name.
    pub fn sds_all(&self) -> Vec<(String, Arc<SubscriptionStats>)> {
        let sds = self.sds.lock().unwrap_or_else(|e| e.into_inner());
        sds.iter().map(|(n, s)| (n.clone(), s.clone())).collect()
    }

    /// The EDS counters of cluster `name`, if it ever had an assignment.
    pub fn eds_of(&self, name: &str) -> Option<Arc<EdsStats>> {
        let eds = self.eds.lock().unwrap_or_else(|e| e.into_inner());
        eds.get(name).cloned()
    }

    /// Zeroes every counter.
    fn reset(&self) {
        self.cds.reset();
        self.lds.reset();
        let sds = self.sds.lock().unwrap_or_else(|e| e.into_inner());
        for s in sds.values() {
            s.reset();
        }
        let eds = self.eds.lock().unwrap_or_else(|e| e.into_inner());
        for s in eds.values() {
            s.updates.reset();
            s.update_empty.store(0, Ordering::Relaxed);
        }
    }
}

impl EdsStats {
    /// `(name, value)` of each counter, sorted by name.
    pub fn counters(&self) -> [(&'static str, u64); 5] {
        let [a, f, r, s] = self.updates.counters();
        let empty = ("update_empty", self.update_empty.load(Ordering::Relaxed));
        [a, empty, f, r, s]
    }
}

/// The counters of one subscription.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    pub update_attempt: AtomicU64,
    pub update_success: AtomicU64,
    pub update_rejected: AtomicU64,
    pub update_failure: AtomicU64,
}

impl SubscriptionStats {
    /// A response arrived: accepted whole, or rejected (in part).
    pub fn response(&self, accepted_all: bool) {
        self.update_attempt.fetch_add(1, Ordering::Relaxed);
        let c = if accepted_all {
            &self.update_success
        } else {
            &self.update_rejected
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// `(name, value)` of each counter.
    pub fn counters(&self) -> [(&'static str, u64); 4] {
        [
            (
                "update_attempt",
                self.update_attempt.load(Ordering::Relaxed),
            ),
            (
                "update_failure",
                self.update_failure.load(Ordering::Relaxed),
            ),
            (
                "update_rejected",
                self.update_rejected.load(Ordering::Relaxed),
            ),
            (
                "update_success",
                self.update_success.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Zeroes the counters (`POST /reset_counters`).
    pub fn reset(&self) {
        for c in [
            &self.update_attempt,
            &self.update_success,
            &self.update_rejected,
            &self.update_failure,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// What the `dns` thread counts, under Envoy's names: per DNS cluster
/// `cluster.<name>.update_*` and `membership_change` ([`DnsClusterStats`]), and the c-ares
/// resolver's `dns.cares.*` ([`ResolverStats`]; Envoy's getaddrinfo resolver has no stats,
/// so neither has Switchyard's). Also the host name each resolved host came from, for
/// `/clusters`.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// `dns.cares.*`, shared by every c-ares resolver (Envoy's share them by name too).
    pub cares: ResolverStats,
    clusters: Mutex<BTreeMap<String, Arc<DnsClusterStats>>>,
    hostnames: Mutex<HashMap<String, Hostnames>>,
}

/// The host name behind each resolved address of one DNS cluster.
pub type Hostnames = Arc<HashMap<SocketAddr, Arc<str>>>;

impl DnsStats {
    /// The counters of DNS cluster `name` (created at its first resolution).
    pub fn cluster(&self, name: &str) -> Arc<DnsClusterStats> {
        let mut clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.entry(name.to_string()).or_default().clone()
    }

    /// The counters of cluster `name`, if it was ever resolved.
    pub fn cluster_of(&self, name: &str) -> Option<Arc<DnsClusterStats>> {
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.get(name).cloned()
    }

    /// Records the host name behind each resolved address of cluster `name`.
    pub fn set_hostnames(&self, name: &str, hosts: HashMap<SocketAddr, Arc<str>>) {
        let mut all = self.hostnames.lock().unwrap_or_else(|e| e.into_inner());
        all.insert(name.to_string(), Arc::new(hosts));
    }

    /// The host names behind cluster `name`'s resolved addresses (for `/clusters`).
    pub fn hostnames(&self, name: &str) -> Option<Hostnames> {
        let all = self.hostnames.lock().unwrap_or_else(|e| e.into_inner());
        all.get(name).cloned()
    }

    /// Zeroes every counter (gauges keep their values).
    fn reset(&self) {
        self.cares.reset();
        let clusters = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        clusters.values().for_each(|c| c.reset());
    }
}

/// Envoy's `cluster.<name>.update_*` and `membership_change` of a DNS cluster, as its
/// `DnsClusterImpl` counts them: an attempt per name resolved, a success or failure per
/// answer, `update_no_rebuild` for a good answer that changed no host, `membership_change`
/// when the cluster's hosts changed. `update_empty` stays 0, as in Envoy (an EDS counter).
#[derive(Debug, Default)]
pub struct DnsClusterStats {
    pub update_attempt: AtomicU64,
    pub update_success: AtomicU64,
    pub update_failure: AtomicU64,
    pub update_empty: AtomicU64,
    pub update_no_rebuild: AtomicU64,
    pub membership_change: AtomicU64,
}

impl DnsClusterStats {
    /// `(name, value)` of each counter, sorted by name.
    pub fn counters(&self) -> [(&'static str, u64); 6] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("membership_change", get(&self.membership_change)),
            ("update_attempt", get(&self.update_attempt)),
            ("update_empty", get(&self.update_empty)),
            ("update_failure", get(&self.update_failure)),
            ("update_no_rebuild", get(&self.update_no_rebuild)),
            ("update_success", get(&self.update_success)),
        ]
    }

    fn reset(&self) {
        for c in [
            &self.update_attempt,
            &self.update_success,
            &self.update_failure,
            &self.update_empty,
            &self.update_no_rebuild,
            &self.membership_change,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Envoy's `dns.cares.*`: `resolve_total` (every finished query of one family, or of both
/// for ALL), `pending_resolutions` (a gauge), and per failed query `not_found` (NXDOMAIN, or
/// no address of that family), `timeouts` or `get_addr_failure` (anything else).
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// A resolver of this kind exists: the stats are reported from then on.
    pub used: AtomicBool,
    pub resolve_total: AtomicU64,
    pub pending_resolutions: AtomicI64,
    pub not_found: AtomicU64,
    pub timeouts: AtomicU64,
    pub get_addr_failure: AtomicU64,
}

impl ResolverStats {
    /// `(name, value, is_gauge)` of each stat, sorted by name.
    pub fn stats(&self) -> [(&'static str, i64, bool); 5] {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        [
            ("get_addr_failure", get(&self.get_addr_failure), false),
            ("not_found", get(&self.not_found), false),
            (
                "pending_resolutions",
                self.pending_resolutions.load(Ordering::Relaxed),
                true,
            ),
            ("resolve_total", get(&self.resolve_total), false),
            ("timeouts", get(&self.timeouts), false),
        ]
    }

    fn reset(&self) {
        for c in [
            &self.resolve_total,
            &self.not_found,
            &self.timeouts,
            &self.get_addr_failure,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}
