//! RIB -> FIB: turns the validated config into the immutable table workers read.
//!
//! Everything that can be wrong with a config was rejected by `convert`, which also built
//! each TLS context once to check it. Building a context again here can still fail in
//! principle (the random session-ticket key needs the system's RNG, and a hand-built RIB
//! skips `convert`), so [`compile`] returns that as a [`CompileError`] rather than panicking
//! or serving a TLS chain in plaintext: the control thread keeps the previous FIB. Its
//! result depends on the RIB alone; what it draws from outside only decides which objects are
//! shared with earlier generations:
//! - stat blocks come from the [`StatsRegistry`] by stable name (`tcp.<stat_prefix>`,
//!   `udp.<stat_prefix>`, `cluster.<name>`, `listener.<ip>_<port>`; `cluster.<name>.udp`
//!   only for a cluster a UDP route names, the others share one unused block); a host's
//!   block comes from the same cluster in the previous FIB, by address (no registry entry
//!   per endpoint: 100k endpoints cost no map, and a removed host's block goes when the
//!   last FIB holding it does);
//! - access-log sinks come from [`AccessLogSinks`], one `Arc` per distinct (path, format), so
//!   the log writer keeps one open file per sink across generations;
//! - clusters whose config equals the one they were last built from come from the
//!   [`CompileCache`] as they are (an unchanged endpoint list is the same `Arc` and compares by
//!   pointer), so a one-endpoint change among 100k endpoints rebuilds one cluster;
//! - TLS contexts come from the [`CompileCache`] too, one per distinct settings value: a
//!   chain or cluster whose TLS settings equal those of a context the previous FIB had gets
//!   that same `Arc` (a reload that does not touch TLS keeps its contexts, and with them the
//!   random session-ticket key, so tickets issued before it still resume).
//!
//! Cluster ids are indices into `rib.clusters` (the FIB keeps the RIB's order). A tcp_proxy
//! or udp_proxy naming a cluster that does not exist compiles to [`Route::Missing`] (Envoy's
//! behaviour: `downstream_cx_no_route` / `downstream_sess_no_route` at run time); so does a
//! tunneling tcp_proxy's cluster without HTTP/2 (`convert` refuses that among the
//! bootstrap's clusters; one from CDS can only be found here).
//!
//! The RIB's listeners are TCP and UDP in one list; the FIB has them apart
//! ([`Fib::listeners`], [`Fib::udp_listeners`]), each in config order.

use crate::rib::{
    millis_ceil as millis, AccessLogConfig, ChainTlsConfig, ClusterConfig, FilterChainConfig,
    ListenerConfig, ListenerKind, Rib, RouteConfig, TcpProxyConfig, UdpProxyConfig,
};
use crate::stats::StatsRegistry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use switchyard_dataplane::accesslog::AccessLogSink;
use switchyard_dataplane::fib::{
    ChainIndex, ChainTls, Cluster, ClusterId, ConnectionLimit, Endpoint, Fault, Fib, FilterChain,
    HashTable, Listener, LocalRateLimit, Mirror, NetworkRbac, ProxyProtocol, Route, SourceLimit,
    TcpProxy, TlsInspector, UdpListener, UdpProxy, WeightedClusters,
};
use switchyard_dataplane::health::{FAILED_ACTIVE_HC, PENDING_ACTIVE_HC};
use switchyard_dataplane::host::HostState;
use switchyard_dataplane::lb::levels::first_priority_len;
use switchyard_dataplane::stats::{ClusterUdpStats, SslStat, SslStats};
use switchyard_dataplane::tls::settings::{ClientSettings, ServerSettings};
use switchyard_dataplane::tls::{ClientContext, ServerContext, TlsConfigError};

/// A TLS context that could not be built (see the module's documentation for when).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// A filter chain's `DownstreamTlsContext` (listener and chain names).
    ChainTls {
        listener: String,
        chain: String,
        error: TlsConfigError,
    },
    /// A cluster's `UpstreamTlsContext`.
    ClusterTls {
        cluster: String,
        error: TlsConfigError,
    },
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileError::ChainTls {
                listener,
                chain,
                error,
            } => write!(
                f,
                "listener {listener:?}, filter chain {chain:?}: TLS context: {error}"
            ),
            CompileError::ClusterTls { cluster, error } => {
                write!(f, "cluster {cluster:?}: TLS context: {error}")
            }
        }
    }
}

impl std::error::Error for CompileError {}

/// TLS contexts by the settings they were built from: those of the last FIB, and those the
/// compilation in progress used (which become the last FIB's when it succeeds).
#[derive(Debug, Default)]
struct TlsContexts {
    servers: Vec<Arc<ServerContext>>,
    clients: Vec<Arc<ClientContext>>,
    next_servers: Vec<Arc<ServerContext>>,
    next_clients: Vec<Arc<ClientContext>>,
}

impl TlsContexts {
    /// The server context for `settings`: one already used by this compilation, one the last
    /// FIB had, or a new one.
    fn server(
        &mut self,
        settings: &ServerSettings,
    ) -> Result<(Arc<ServerContext>, bool), TlsConfigError> {
        shared(
            &mut self.next_servers,
            &self.servers,
            settings,
            ServerContext::settings,
            ServerContext::new,
        )
    }

    /// The client context for `settings`, as [`TlsContexts::server`].
    fn client(
        &mut self,
        settings: &ClientSettings,
    ) -> Result<(Arc<ClientContext>, bool), TlsConfigError> {
        shared(
            &mut self.next_clients,
            &self.clients,
            settings,
            ClientContext::settings,
            ClientContext::new,
        )
    }

    /// Records that this compilation uses `context` (a cluster taken from the cache as it
    /// was).
    fn keep_client(&mut self, context: &Arc<ClientContext>) {
        keep(&mut self.next_clients, context);
    }

    /// The compilation succeeded: what it used is what the next one starts from (contexts no
    /// FIB uses any more are dropped with the FIBs holding them).
    fn commit(&mut self) {
        self.servers = std::mem::take(&mut self.next_servers);
        self.clients = std::mem::take(&mut self.next_clients);
    }

    /// The compilation failed: forget what it built.
    fn abandon(&mut self) {
        self.next_servers.clear();
        self.next_clients.clear();
    }
}

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
    pub fn get(&mut self, log: &AccessLogConfig) -> Arc<AccessLogSink> {
        if let Some(s) = self
            .sinks
            .iter()
            .find(|s| s.path == log.path && s.format == log.format && s.filter == log.filter)
        {
            return s.clone();
        }
        let sink = Arc::new(AccessLogSink {
            path: log.path.clone(),
            format: log.format.clone(),
            filter: log.filter,
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

/// What one compilation hands to the next: the access-log sinks, and the clusters of the last
/// RIB with what each compiled to, so that a cluster whose config is unchanged is shared with
/// the new FIB instead of rebuilt.
///
/// When the new RIB has the same clusters in the same order (an endpoint change), each
/// cluster is checked against the one at its index, by pointer first: no hashing and no
/// allocation but the new FIB's array; only a changed cluster is rebuilt, its hosts keeping
/// their stat blocks by address. When clusters were added, removed or reordered, they are
/// matched by name.
#[derive(Debug, Default)]
pub struct CompileCache {
    /// Access-log sinks by (path, format).
    pub sinks: AccessLogSinks,
    configs: Vec<Arc<ClusterConfig>>,
    built: Vec<Arc<Cluster>>,
    /// Cluster ids by name for `configs`.
    ids: HashMap<String, ClusterId>,
    reused: usize,
    tls: TlsContexts,
}

impl CompileCache {
    /// An empty cache: the next compilation builds everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many clusters the last compilation took from the cache unchanged.
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// The clusters of `rib`, built or taken from the cache; updates the cache to `rib`.
    ///
    /// A cluster a UDP route names needs its own `cluster.<name>.udp` block: one built
    /// while no UDP route named it (with the shared unused block) is rebuilt, even if its
    /// config is unchanged. Without UDP listeners this costs nothing.
    ///
    /// A cluster's TLS context comes from the cache's contexts ([`TlsContexts`]); one that
    /// cannot be built fails the whole compilation and leaves the cache as it was.
    fn clusters(
        &mut self,
        rib: &Rib,
        stats: &StatsRegistry,
    ) -> Result<Vec<Arc<Cluster>>, CompileError> {
        let udp_routed: HashSet<&str> = udp_routed_clusters(rib).collect();
        let unrouted = stats.cluster_udp_unrouted();
        let stale_udp = |built: &Cluster| {
            !udp_routed.is_empty()
                && Arc::ptr_eq(&built.udp_stats, unrouted)
                && udp_routed.contains(&*built.name)
        };
        let tls = &mut self.tls;
        let mut build = |c: &ClusterConfig, previous: Option<&Cluster>| {
            let udp_stats = if udp_routed.contains(c.name.as_str()) {
                stats.cluster_udp(c.observability_name())
            } else {
                unrouted.clone()
            };
            let context =
                match &c.tls {
                    Some(t) if t.secrets.ready => Some(tls.client(&t.settings).map_err(
                        |error| CompileError::ClusterTls {
                            cluster: c.name.clone(),
                            error,
                        },
                    )?),
                    _ => None,
                };
            let mut built = cluster(c, previous, stats, udp_stats);
            if let (Some((_, true)), Some(ssl)) = (&context, &built.ssl_stats) {
                if c.tls
                    .as_ref()
                    .is_some_and(|t| t.secrets.keys().next().is_some())
                {
                    ssl.inc(0, SslStat::SslContextUpdateBySds);
                }
            }
            built.tls = context.map(|(c, _)| c);
            Ok(Arc::new(built))
        };
        let same_layout = self.configs.len() == rib.clusters.len()
            && rib
                .clusters
                .iter()
                .zip(&self.configs)
                .all(|(new, old)| Arc::ptr_eq(new, old) || new.name == old.name);
        let mut reused = 0;
        let (configs, previous, ids) = (&self.configs, &self.built, &self.ids);
        let built: Result<Vec<Arc<Cluster>>, CompileError> = rib
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let old = if same_layout {
                    Some(i)
                } else {
                    ids.get(c.name.as_str()).map(|id| id.0 as usize)
                };
                match old {
                    Some(j)
                        if (Arc::ptr_eq(c, &configs[j]) || **c == *configs[j])
                            && !stale_udp(&previous[j]) =>
                    {
                        reused += 1;
                        Ok(previous[j].clone())
                    }
                    Some(j) if configs[j].name == c.name => build(c, Some(&previous[j])),
                    _ => build(c, None),
                }
            })
            .collect();
        let built = built?;
        // A cluster taken as it was keeps its context: the next compilation may share it too.
        for context in built.iter().filter_map(|c| c.tls.as_ref()) {
            self.tls.keep_client(context);
        }
        if !same_layout {
            self.ids = rib
                .clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), ClusterId(i as u32)))
                .collect();
        }
        self.configs = rib.clusters.clone();
        self.built = built.clone();
        self.reused = reused;
        Ok(built)
    }
}

/// Compiles `rib` into generation `generation` of the FIB, or says which TLS context could
/// not be built (then the cache's TLS contexts are those of the last FIB still).
pub fn compile(
    rib: &Rib,
    generation: u64,
    stats: &StatsRegistry,
    cache: &mut CompileCache,
) -> Result<Fib, CompileError> {
    let fib = build(rib, generation, stats, cache);
    match fib {
        Ok(_) => cache.tls.commit(),
        Err(_) => cache.tls.abandon(),
    }
    fib
}

fn build(
    rib: &Rib,
    generation: u64,
    stats: &StatsRegistry,
    cache: &mut CompileCache,
) -> Result<Fib, CompileError> {
    let clusters = cache.clusters(rib, stats)?;
    // Once per build, not per route: a cluster may have many endpoints and many routes.
    let tunnelled: Vec<bool> = clusters.iter().map(|c| c.has_tunnels()).collect();
    let ids = &cache.ids;
    let sinks = &mut cache.sinks;
    let contexts = &mut cache.tls;
    // Each TCP listener's own access-log sinks, in `rib.listeners` order.
    let listener_logs: Vec<Vec<Arc<AccessLogSink>>> = rib
        .listeners
        .iter()
        .map(|l| {
            l.tcp().map_or_else(Vec::new, |t| {
                t.access_logs.iter().map(|a| sinks.get(a)).collect()
            })
        })
        .collect();
    let mut chain = |l: &ListenerConfig,
                     c: &FilterChainConfig|
     -> Result<FilterChain, CompileError> {
        let tls = match &c.tls {
            Some(t) => Some(
                chain_tls(contexts, t, &stats.listener_ssl(l.address)).map_err(|error| {
                    CompileError::ChainTls {
                        listener: l.name.clone(),
                        chain: c.name.clone(),
                        error,
                    }
                })?,
            ),
            None => None,
        };
        Ok(FilterChain {
            hbone: c.hbone.clone(),
            name: c.name.as_str().into(),
            matcher: c.matcher.clone(),
            connection_limit: c.connection_limit.as_ref().map(|l| ConnectionLimit {
                max_connections: l.max_connections,
                delay_ms: l.delay.map_or(0, millis),
                state: stats.connection_limit(&l.stat_prefix),
            }),
            gates: c.gates.clone(),
            source_limit: c.source_limit.as_ref().map(|l| {
                let (table, stats) = stats.source_limit(&l.stat_prefix, &l.settings);
                SourceLimit { table, stats }
            }),
            rbac: c.rbac.as_ref().map(|r| NetworkRbac {
                rules: r.rules.clone(),
                shadow_rules: r.shadow_rules.clone(),
                continuous: r.continuous,
                stats: stats.rbac(&r.stat_prefix, &r.shadow_rules_stat_prefix),
            }),
            local_rate_limit: c.local_rate_limit.as_ref().map(|r| {
                // A bucket of its own is the filter's: its listener, chain and match.
                let key = if r.share_key.is_empty() {
                    format!("chain:{}/{}/{:?}", l.name, c.name, c.matcher)
                } else {
                    format!("share:{}", r.share_key)
                };
                let interval_ms = millis(r.fill_interval);
                LocalRateLimit {
                    bucket: stats.token_bucket(&key, r.max_tokens, r.tokens_per_fill, interval_ms),
                    stats: stats.local_rate_limit(&r.stat_prefix),
                }
            }),
            mirror: c.mirror.as_ref().map(|m| Mirror {
                cluster: untunnelled(ids, &tunnelled, &m.cluster, &m.stat_prefix),
                per_million: m.per_million,
                max_buffered_bytes: m.max_buffered_bytes,
                stats: stats.mirror(&m.stat_prefix),
            }),
            fault: c.fault.as_ref().map(|f| Fault {
                delay: f.delay,
                abort: f.abort,
                throttle: f.throttle,
                stats: stats.fault(&f.stat_prefix),
            }),
            tcp_proxy: tcp_proxy(&c.tcp_proxy, ids, (&clusters, &tunnelled), stats, sinks),
            tls,
        })
    };
    let mut listeners = Vec::new();
    let mut udp_listeners = Vec::new();
    // A listener with `additional_addresses` is one FIB listener per address: the same name,
    // chains and stats (named after its first address, as Envoy names them).
    for (i, l, address) in rib
        .listeners
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.addresses().map(move |a| (i, l, a)))
    {
        match &l.kind {
            ListenerKind::Tcp(t) => {
                let filter_chains: Vec<FilterChain> = t
                    .filter_chains
                    .iter()
                    .map(|c| chain(l, c))
                    .collect::<Result<_, _>>()?;
                listeners.push(Listener {
                    name: l.name.as_str().into(),
                    address,
                    chain_index: ChainIndex::of(&filter_chains),
                    filter_chains,
                    default_chain: t
                        .default_filter_chain
                        .as_ref()
                        .map(|c| chain(l, c))
                        .transpose()?,
                    chain_matcher: t.chain_matcher.clone(),
                    backlog: DEFAULT_BACKLOG,
                    stats: stats.listener(l.address),
                    use_original_dst: t.use_original_dst,
                    transparent: t.transparent,
                    reuse_port: t.reuse_port,
                    original_src: t.original_src,
                    buffer_limit_bytes: t.buffer_limit_bytes,
                    max_accepts_per_event: t.max_accepts_per_event,
                    access_logs: listener_logs[i].clone(),
                    ignore_global_conn_limit: t.ignore_global_conn_limit,
                    ssl_stats: t
                        .chains()
                        .any(|c| c.tls.is_some())
                        .then(|| stats.listener_ssl(l.address)),
                    proxy_protocol: t.proxy_protocol.as_ref().map(|p| ProxyProtocol {
                        acceptance: p.acceptance,
                        declares_destination: p.declares_destination,
                        trusted_sources: p.trusted_sources.as_deref().map(Box::from),
                        pass_through_tlvs: p.pass_through_tlvs,
                        stats: stats.proxy_proto(&p.stat_prefix),
                    }),
                    tls_inspector: t.tls_inspector.as_ref().map(|i| TlsInspector {
                        max_client_hello_bytes: i.max_client_hello_bytes,
                        close_on_parse_error: i.close_on_parse_error,
                        initial_read_bytes: i.initial_read_bytes,
                        stats: stats.tls_inspector(),
                    }),
                    filter_deadline: t.filter_deadline,
                });
            }
            ListenerKind::Udp(u) => udp_listeners.push(UdpListener {
                name: l.name.as_str().into(),
                address,
                proxy: udp_proxy(u, ids, &tunnelled, stats),
                max_rx_datagram_bytes: u.max_downstream_rx_datagram_bytes,
                udp_stats: stats.listener_udp(l.address),
            }),
        }
    }
    // What a redirected TCP connection must not loop back into: TCP listeners and the admin.
    let own_addresses = rib
        .listeners
        .iter()
        .filter(|l| l.tcp().is_some())
        .flat_map(|l| l.addresses())
        .chain(rib.admin.socket())
        .collect();
    Ok(Fib {
        generation,
        listeners,
        udp_listeners,
        clusters,
        own_addresses,
    })
}

/// The context built from `settings`: one in `next` (this compilation's) or `last` (the last
/// FIB's) with equal settings, or a new one (then true); recorded in `next` either way.
fn shared<C, S: PartialEq>(
    next: &mut Vec<Arc<C>>,
    last: &[Arc<C>],
    settings: &S,
    settings_of: fn(&C) -> &S,
    new: fn(&S) -> Result<C, TlsConfigError>,
) -> Result<(Arc<C>, bool), TlsConfigError> {
    let found = next
        .iter()
        .chain(last)
        .find(|c| settings_of(c) == settings)
        .cloned();
    let (context, built) = match found {
        Some(c) => (c, false),
        None => (Arc::new(new(settings)?), true),
    };
    keep(next, &context);
    Ok((context, built))
}

/// Adds `context` to `next` unless it is there.
fn keep<C>(next: &mut Vec<Arc<C>>, context: &Arc<C>) {
    if !next.iter().any(|c| Arc::ptr_eq(c, context)) {
        next.push(context.clone());
    }
}

/// A chain's TLS termination: its context (shared, see [`TlsContexts`]; none while it waits
/// for SDS secrets) and deadline. A context built anew from SDS secrets is counted in
/// `ssl` (`ssl_context_update_by_sds`).
fn chain_tls(
    contexts: &mut TlsContexts,
    t: &ChainTlsConfig,
    ssl: &SslStats,
) -> Result<ChainTls, TlsConfigError> {
    let context = if t.secrets.ready {
        let (context, built) = contexts.server(&t.settings)?;
        if built && t.secrets.keys().next().is_some() {
            ssl.inc(0, SslStat::SslContextUpdateBySds);
        }
        Some(context)
    } else {
        None
    };
    Ok(ChainTls {
        context,
        handshake_timeout_ms: t.handshake_timeout.map(millis),
    })
}

/// The names of the clusters the UDP listeners of `rib` route to.
fn udp_routed_clusters(rib: &Rib) -> impl Iterator<Item = &str> {
    rib.listeners
        .iter()
        .filter_map(|l| l.udp())
        .flat_map(|u| u.route.cluster_names())
}

/// Builds one cluster. An endpoint that `previous` (the same cluster as last compiled) also
/// had keeps its stat block; a new one starts from zero (as in Envoy, a host's stats live as
/// long as the host).
fn cluster(
    c: &ClusterConfig,
    previous: Option<&Cluster>,
    stats: &StatsRegistry,
    udp_stats: Arc<ClusterUdpStats>,
) -> Cluster {
    let old: HashMap<SocketAddr, &Arc<HostState>> = previous
        .map(|p| p.endpoints.iter().map(|e| (e.address, &e.stats)).collect())
        .unwrap_or_default();
    let new_host = || {
        let host = HostState::default();
        if c.health.health_check.is_some() {
            // As in Envoy: a host under an active check takes no traffic until its first
            // check passes.
            host.health.set(FAILED_ACTIVE_HC | PENDING_ACTIVE_HC);
        }
        Arc::new(host)
    };
    let mut cluster = Cluster {
        http2: c.http2,
        original_dst_authority: c.original_dst_authority,
        name: c.name.as_str().into(),
        observability_name: c.observability_name().into(),
        connect_timeout_ms: millis(c.connect_timeout),
        buffer_limit_bytes: c.buffer_limit_bytes,
        lb_policy: c.lb_policy,
        upstream_bind: c.upstream_bind.clone(),
        hash_table: None,
        circuit_breakers: c.circuit_breakers,
        resources: stats.resources(&c.name),
        endpoints: c
            .endpoints
            .iter()
            .map(|e| Endpoint {
                address: e.address,
                weight: e.weight,
                priority: e.priority,
                locality: e.locality.clone(),
                tunnel: e.tunnel,
                stats: old.get(&e.address).map_or_else(new_host, |s| Arc::clone(s)),
            })
            .collect(),
        stats: stats.cluster(c.observability_name()),
        health: c.health.clone(),
        health_state: stats.health(&c.name),
        tls: None,
        proxy_protocol: c.proxy_protocol.clone(),
        tls_secrets_missing: c.tls.as_ref().is_some_and(|t| !t.secrets.ready),
        added_via_api: c.added_via_api,
        udp_stats,
        ssl_stats: c
            .tls
            .as_ref()
            .map(|_| stats.cluster_ssl(c.observability_name())),
    };
    // RING_HASH, MAGLEV: the table is built here, on the control thread, once per change of
    // the cluster (an unchanged cluster is shared with the previous FIB, table and all). It
    // covers the first priority level; workers build their own for other levels and for
    // subsets of healthy hosts.
    let first_level = first_priority_len(&cluster.endpoints);
    cluster.hash_table = HashTable::build(cluster.lb_policy, &cluster.endpoints[..first_level]);
    cluster
}

/// A tcp_proxy; with `tunneling`, a cluster without HTTP/2 is no route (a CONNECT stream
/// needs an HTTP/2 connection).
fn tcp_proxy(
    t: &TcpProxyConfig,
    ids: &HashMap<String, ClusterId>,
    (clusters, tunnelled): (&[Arc<Cluster>], &[bool]),
    stats: &StatsRegistry,
    sinks: &mut AccessLogSinks,
) -> TcpProxy {
    let route = match &t.tunneling {
        None => route(&t.route, |name| {
            untunnelled(ids, tunnelled, name, &t.stat_prefix)
        }),
        Some(_) => route(&t.route, |name| {
            let id = ids.get(name).copied()?;
            if clusters[id.0 as usize].http2.is_none() {
                tracing::warn!(
                    stat_prefix = %t.stat_prefix,
                    cluster = name,
                    "a tunneling tcp_proxy routes to a cluster without HTTP/2 (typed_extension_protocol_options); its connections will be closed (downstream_cx_no_route)"
                );
                return None;
            }
            Some(id)
        }),
    };
    TcpProxy {
        stats: stats.tcp(&t.stat_prefix),
        route,
        idle_timeout_ms: t.idle_timeout.map(millis),
        max_connect_attempts: t.max_connect_attempts.max(1),
        access_logs: t.access_logs.iter().map(|a| sinks.get(a)).collect(),
        hash_source_ip: t.hash_source_ip,
        tunneling: t.tunneling.clone(),
    }
}

/// A cluster a connection reaches directly (not through a tunnel): one whose endpoints are
/// reached through HBONE tunnels is no route (a connection never bypasses the tunnel; the
/// bootstrap's are refused by `convert`, CDS and EDS ones land here). `tunnelled`: by
/// cluster id, whether it has such endpoints.
fn untunnelled(
    ids: &HashMap<String, ClusterId>,
    tunnelled: &[bool],
    name: &str,
    stat_prefix: &str,
) -> Option<ClusterId> {
    let id = ids.get(name).copied()?;
    if tunnelled[id.0 as usize] {
        tracing::warn!(
            stat_prefix,
            cluster = name,
            "a proxy without tunneling_config routes to a cluster whose endpoints are reached through HBONE tunnels (metadata switchyard.hbone); its connections will be closed (no route)"
        );
        return None;
    }
    Some(id)
}

fn udp_proxy(
    u: &UdpProxyConfig,
    ids: &HashMap<String, ClusterId>,
    tunnelled: &[bool],
    stats: &StatsRegistry,
) -> UdpProxy {
    UdpProxy {
        stats: stats.udp(&u.stat_prefix),
        route: route(&u.route, |name| {
            untunnelled(ids, tunnelled, name, &u.stat_prefix)
        }),
        idle_timeout_ms: u.idle_timeout.map(millis),
        hash_source_ip: u.hash_source_ip,
        max_upstream_rx_datagram_bytes: u.max_upstream_rx_datagram_bytes,
    }
}

/// A tcp_proxy's or udp_proxy's route: clusters by id (`id` of a name), [`Route::Missing`]
/// for a name `id` does not find.
fn route(r: &RouteConfig, id: impl Fn(&str) -> Option<ClusterId>) -> Route {
    match r {
        RouteConfig::Cluster(name) => match id(name) {
            Some(id) => Route::Cluster(id),
            None => Route::Missing(name.as_str().into()),
        },
        RouteConfig::Weighted(entries) => {
            let items = entries
                .iter()
                .map(|e| (id(&e.name), Arc::from(e.name.as_str()), e.weight))
                .collect();
            match WeightedClusters::new(items) {
                Some(w) => Route::Weighted(w),
                // Only a hand-built RIB can get here (convert requires weights >= 1).
                None => Route::Missing(entries.first().map_or("", |e| e.name.as_str()).into()),
            }
        }
    }
}
