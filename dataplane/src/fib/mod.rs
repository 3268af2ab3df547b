//! The forwarding information base (FIB): the immutable table every worker reads.
//!
//! # Design
//!
//! The control thread owns the routing information base (RIB): the config as the user wrote
//! it, validated. From it, it compiles a [`Fib`]: listeners with their filter chains compiled
//! into match tables, clusters as a dense array indexed by [`ClusterId`], endpoints in
//! contiguous arrays. A FIB is never mutated after it is built; the control thread publishes a
//! new one with a single pointer swap (`arc_swap::ArcSwap<Fib>`), and workers pick it up the
//! next time round their loop. That gives three guarantees:
//!
//! - Workers never lock and never see a half-built table: a FIB is complete when published.
//! - Every connection records the generation it was decided under and keeps that snapshot
//!   alive (a per-worker reference count) until it closes, so established flows survive every
//!   config change with the backend they were given.
//! - Ids are indices into this snapshot's arrays. They mean nothing in another generation;
//!   state that must survive a swap (counters) lives in stat blocks shared by stable name.
//!
//! The data graph holds no loops: listener -> filter chain -> route -> cluster -> endpoint.

mod chain_match;
pub mod chain_matcher;
pub mod hbone;
pub(crate) mod prefix_map;

pub use chain_match::{
    ChainIndex, ChainMatch, CidrRange, Detected, SourceType, MAX_FILTER_CHAINS,
    TRANSPORT_RAW_BUFFER, TRANSPORT_TLS,
};
pub use chain_matcher::ChainMatcher;

pub use crate::hash_lb::RingHashFunction;
// Defined by the socket code that applies them, so `sys` needs nothing from the FIB.
pub use crate::sys::net::{SocketOption, UpstreamBind};

use crate::accesslog::AccessLogSink;
use crate::hash_lb::{envoy_host_key, HashHost, MaglevTable, RingHash};
use crate::health::ClusterHealth;
use crate::host::HostState;
use crate::stats::{
    ClusterResources, ClusterStats, ClusterUdpStats, ConnectionLimitState, FaultStats,
    ListenerStats, ListenerUdpStats, MirrorStats, TcpStats, UdpStats,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// Index of a cluster in [`Fib::clusters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u32);

/// The chain index [`Listener::match_chain_index`] gives for `default_filter_chain`.
pub const DEFAULT_CHAIN: u32 = u32::MAX;

/// Index of a listener in [`Fib::listeners`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub u32);

/// One immutable, complete forwarding table.
#[derive(Debug, Default)]
pub struct Fib {
    /// Increases by one on every publication; 0 is the empty table before the first config.
    pub generation: u64,
    /// Listeners, each opened by every worker.
    pub listeners: Vec<Listener>,
    /// UDP listeners (Envoy `protocol: UDP` with the udp_proxy), each opened by every worker.
    pub udp_listeners: Vec<UdpListener>,
    /// Clusters, indexed by [`ClusterId`]. Shared with the generations before and after
    /// while unchanged, so a change to one cluster rebuilds only that one.
    pub clusters: Vec<Arc<Cluster>>,
    /// Every address the proxy itself listens on (its listeners and its admin): a connection
    /// sent to one of them through an original-destination listener would loop back into the
    /// proxy, so it is refused (see [`Fib::is_own_address`]).
    pub own_addresses: Vec<SocketAddr>,
}

impl Fib {
    /// True when `destination` is one of [`Fib::own_addresses`]: the same port, and the same
    /// IP or a wildcard listener (which owns the port on every local address, so a
    /// redirected destination with that port is the proxy itself, as Istio's `BlackHole`
    /// chain on 15001 assumes). Allocation-free.
    pub fn is_own_address(&self, destination: SocketAddr) -> bool {
        self.own_addresses.iter().any(|own| {
            own.port() == destination.port()
                && (own.ip().is_unspecified() || own.ip() == destination.ip())
        })
    }

    /// The cluster with this id. Panics only on an id from another generation (a bug).
    #[inline]
    pub fn cluster(&self, id: ClusterId) -> &Cluster {
        &self.clusters[id.0 as usize]
    }

    /// Whether cluster `i` of this FIB is the very cluster `previous` has at `i` (the same
    /// `Arc`, shared by an incremental compile): state kept per cluster may carry over.
    pub fn shares_cluster(&self, previous: &Fib, i: usize) -> bool {
        match (self.clusters.get(i), previous.clusters.get(i)) {
            (Some(new), Some(old)) => Arc::ptr_eq(new, old),
            _ => false,
        }
    }

    /// Looks a listener up by name.
    pub fn listener_by_name(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

/// A listening address and the filter chains that decide what to do with its connections.
#[derive(Debug)]
pub struct Listener {
    /// The listener's name (Envoy `Listener.name`); with the address, its stable identity.
    pub name: Arc<str>,
    /// Where every worker binds its SO_REUSEPORT socket.
    pub address: SocketAddr,
    /// Filter chains in config order; [`Listener::match_chain`] picks one.
    pub filter_chains: Vec<FilterChain>,
    /// The chains' `matcher`s compiled ([`ChainIndex::of`]); rebuilt whenever
    /// `filter_chains` change.
    pub chain_index: ChainIndex,
    /// Used when no chain matches (Envoy `default_filter_chain`).
    pub default_chain: Option<FilterChain>,
    /// Envoy's `filter_chain_matcher`: when set, it picks the chain (the chains' own
    /// `matcher`s are all empty then).
    pub chain_matcher: Option<ChainMatcher>,
    /// Kernel accept backlog.
    pub backlog: u32,
    /// `listener.<ip>_<port>.*` stats, shared across generations.
    pub stats: Arc<ListenerStats>,
    /// Chains match on the connection's original destination (`SO_ORIGINAL_DST`, set by an
    /// iptables REDIRECT), or on its local address when it was not redirected.
    pub use_original_dst: bool,
    /// `IP_TRANSPARENT` on the listening socket (Envoy `transparent`): it accepts
    /// connections a TPROXY rule steered to it, whatever their destination.
    pub transparent: bool,
    /// `enable_reuse_port` (Envoy's default true): one `SO_REUSEPORT` socket per worker;
    /// false: one socket without it, which every worker accepts from (and no other process
    /// can bind the port).
    pub reuse_port: bool,
    /// `envoy.filters.listener.original_src`: upstream connections leave from the client's
    /// own address.
    pub original_src: Option<OriginalSrc>,
    /// `per_connection_buffer_limit_bytes` of its client connections (0: none); see
    /// [`crate::relay::BufferLimits`].
    pub buffer_limit_bytes: u32,
    /// `max_connections_to_accept_per_socket_event`: each worker takes at most this many
    /// new connections from its socket per completion batch; `None`: no bound.
    pub max_accepts_per_event: Option<u32>,
    /// The listener's own access logs: a line for every connection when it closes, whether
    /// a filter chain took it or not (no chain: `NR`).
    pub access_logs: Vec<Arc<AccessLogSink>>,
    /// `ignore_global_conn_limit`: its connections count toward the global connection limit
    /// ([`crate::global_limit`]) but are never refused by it.
    pub ignore_global_conn_limit: bool,
    /// `listener.<ip>_<port>.ssl.*` when a chain terminates TLS, by address across FIBs.
    pub ssl_stats: Option<Arc<crate::stats::SslStats>>,
    /// `envoy.filters.listener.proxy_protocol`: the chain waits for the PROXY header, whose
    /// addresses then stand for the connection's (read before any ClientHello).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `envoy.filters.listener.tls_inspector`: the chain waits for the ClientHello.
    pub tls_inspector: Option<TlsInspector>,
    /// The deadline of the listener filters that read the client's first bytes.
    pub filter_deadline: FilterDeadline,
}

/// `listener_filters_timeout` and `continue_on_listener_filters_timeout`: how long the
/// listener filters that read (the PROXY protocol's, the TLS inspector) may wait for the
/// client's bytes, and what happens then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterDeadline {
    /// `listener_filters_timeout` (Envoy's default 15 s; `None`: 0, no deadline).
    pub timeout_ms: Option<u64>,
    /// `continue_on_listener_filters_timeout`: past the deadline the connection goes on
    /// with what was read (its own addresses, as plaintext) instead of being closed.
    pub continue_on_timeout: bool,
}

impl Default for FilterDeadline {
    /// Envoy's: 15 s, then closed.
    fn default() -> FilterDeadline {
        FilterDeadline {
            timeout_ms: Some(15_000),
            continue_on_timeout: false,
        }
    }
}

/// A listener's `envoy.filters.listener.proxy_protocol`.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    /// `disallowed_versions` (as the versions taken) and
    /// `allow_requests_without_proxy_protocol`.
    pub acceptance: crate::proxy_protocol::Acceptance,
    /// Whether a declared destination replaces the connection's local address; false when
    /// an `original_dst` filter runs after this one (its `SO_ORIGINAL_DST` then stands, as
    /// in Envoy, where the last filter to restore the local address wins).
    pub declares_destination: bool,
    /// Switchyard's `TrustedSources`: only peers in these ranges have their header read;
    /// `None`: every peer's.
    pub trusted_sources: Option<Box<[CidrRange]>>,
    /// `pass_through_tlvs`: the TLVs of these types are kept with the connection, for its
    /// cluster's upstream header; `None`: none are.
    pub pass_through_tlvs: Option<crate::proxy_protocol::TlvTypes>,
    /// `proxy_proto.[<stat_prefix>.]*`.
    pub stats: Arc<crate::stats::ProxyProtoStats>,
}

impl ProxyProtocol {
    /// Whether the header of a connection from `peer` is read (an unknown peer is not
    /// trusted when ranges are set).
    pub fn reads_header_of(&self, peer: Option<SocketAddr>) -> bool {
        match &self.trusted_sources {
            None => true,
            Some(ranges) => peer.is_some_and(|p| ranges.iter().any(|r| r.contains(p.ip()))),
        }
    }
}

/// A cluster's `envoy.transport_sockets.upstream_proxy_protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxyProtocol {
    /// `config.version`.
    pub version: crate::proxy_protocol::Version,
    /// `config.added_tlvs`, encoded (version 2 only; empty for version 1).
    pub tlvs: Box<[u8]>,
    /// `config.pass_through_tlvs` less the types `added_tlvs` sets (an added TLV replaces
    /// every passed one of its type, as in Envoy): which of the TLVs the downstream header
    /// brought go on; empty: none.
    pub pass_through_tlvs: crate::proxy_protocol::TlvTypes,
}

/// A listener's TLS inspector.
#[derive(Debug, Clone)]
pub struct TlsInspector {
    /// `max_client_hello_size`: a longer ClientHello is `client_hello_too_large`.
    pub max_client_hello_bytes: u32,
    /// `close_connection_on_client_hello_parsing_errors`: first bytes that do not parse as
    /// a ClientHello (plaintext included) close the connection instead of going on as
    /// `raw_buffer`, as Envoy's (a ClientHello too large closes it either way).
    pub close_on_parse_error: bool,
    /// `initial_read_buffer_size`: the most the first receive takes (later ones take up to
    /// `max_client_hello_bytes` in all); `None`: the first takes up to that too.
    pub initial_read_bytes: Option<u32>,
    /// `tls_inspector.*`, one block shared by every listener.
    pub stats: Arc<crate::stats::TlsInspectorStats>,
}

/// A UDP listener: Envoy's `address.socket_address.protocol: UDP` with the listener filter
/// `envoy.filters.udp_listener.udp_proxy`. Every worker binds one SO_REUSEPORT socket, so the
/// kernel spreads sources over workers by their 4-tuple and a source stays on one worker.
#[derive(Debug)]
pub struct UdpListener {
    /// The listener's name; with the address, its stable identity.
    pub name: Arc<str>,
    /// Where every worker binds its socket.
    pub address: SocketAddr,
    /// What its datagrams do.
    pub proxy: UdpProxy,
    /// A client's datagram longer than this is dropped (`udp_listener_config`'s
    /// `downstream_socket_config.max_rx_datagram_size`, 1,500 by default); `None`: none is
    /// (the socket prefers GRO, which Envoy reads up to 64 KiB at a time).
    pub max_rx_datagram_bytes: Option<u32>,
    /// `listener.<ip>_<port>.udp.*`, shared across generations.
    pub udp_stats: Arc<ListenerUdpStats>,
}

/// Envoy's `UdpProxyConfig`, compiled: each new source (client address) opens a session, a
/// connected socket to one endpoint picked at the session's first datagram, which carries
/// that source's datagrams both ways, one for one, until the session is idle.
#[derive(Debug)]
pub struct UdpProxy {
    /// `udp.<stat_prefix>.*`, shared across generations.
    pub stats: Arc<UdpStats>,
    /// The matcher's `on_no_match` route (or the deprecated `cluster`): one cluster, or
    /// weighted clusters (`switchyard.filters.udp.udp_proxy.v1.WeightedRoute`).
    pub route: Route,
    /// A session with no datagram either way for this long is closed (Envoy's default
    /// 60 s); `None` never.
    pub idle_timeout_ms: Option<u64>,
    /// `hash_policies: [{source_ip: true}]`: hashing balancers (MAGLEV, RING_HASH) key on
    /// the client's IP, so its sessions land on one endpoint.
    pub hash_source_ip: bool,
    /// An endpoint's datagram longer than this is dropped (`upstream_socket_config`'s
    /// `max_rx_datagram_size` when it has `prefer_gro: false`); `None`: none is (the
    /// default: Envoy's upstream sockets prefer GRO, read up to 64 KiB at a time).
    pub max_upstream_rx_datagram_bytes: Option<u32>,
}

/// Envoy's `envoy.filters.listener.original_src`: each upstream socket binds the client's IP
/// (port chosen by the kernel) with `IP_TRANSPARENT`, so the endpoint sees the client, and
/// carries `mark` (`SO_MARK`, when not 0) so policy routing brings the replies back here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginalSrc {
    /// `SO_MARK` of the upstream socket; 0 sets none.
    pub mark: u32,
}

impl Listener {
    /// Envoy's filter chain match for a connection from `remote` to `local`, or the default
    /// chain, or `None`. Allocation-free.
    pub fn match_chain(&self, local: SocketAddr, remote: SocketAddr) -> Option<&FilterChain> {
        self.match_chain_index(local, remote, &Detected::NOTHING)
            .map(|i| self.chain(i))
    }

    /// Like [`Listener::match_chain`], as an index for [`Listener::chain`]: a position in
    /// `filter_chains`, or [`DEFAULT_CHAIN`].
    pub fn match_chain_index(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        detected: &Detected,
    ) -> Option<u32> {
        if let Some(m) = &self.chain_matcher {
            return match m.select(local, remote, detected) {
                chain_matcher::Outcome::Chain(i) => Some(i),
                // An action naming no chain: Envoy closes the connection, default or not.
                chain_matcher::Outcome::Closed => None,
                chain_matcher::Outcome::NoMatch => {
                    self.default_chain.as_ref().map(|_| DEFAULT_CHAIN)
                }
            };
        }
        debug_assert_eq!(
            self.chain_index.chains(),
            self.filter_chains.len(),
            "the chain index was built from other chains"
        );
        match self.chain_index.select(local, remote, detected) {
            Some(i) => Some(i as u32),
            None => self.default_chain.as_ref().map(|_| DEFAULT_CHAIN),
        }
    }

    /// The chain at `index` (from [`Listener::match_chain_index`]). Panics only on an index
    /// from another listener (a bug).
    pub fn chain(&self, index: u32) -> &FilterChain {
        if index == DEFAULT_CHAIN {
            self.default_chain
                .as_ref()
                .expect("default chain index without a default chain")
        } else {
            &self.filter_chains[index as usize]
        }
    }

    /// True when matching needs the connection's real local address (a wildcard listener
    /// with chains, or a chain matcher, that match on destination address or source type).
    pub fn needs_local_address(&self) -> bool {
        use chain_matcher::Input;
        let matcher_reads = |i| self.chain_matcher.as_ref().is_some_and(|m| m.reads(i));
        self.use_original_dst
            || self.transparent
            || self.address.ip().is_unspecified()
                && (self.filter_chains.iter().any(|c| {
                    !c.matcher.prefix_ranges.is_empty() || c.matcher.source_type != SourceType::Any
                }) || matcher_reads(Input::DestinationIp)
                    || matcher_reads(Input::SourceType)
                    || self.has_rbac())
    }

    /// True when a chain (or the default chain) has an RBAC filter (which reads the
    /// connection's addresses).
    pub fn has_rbac(&self) -> bool {
        self.filter_chains
            .iter()
            .chain(self.default_chain.iter())
            .any(|c| c.rbac.is_some())
    }

    /// True when any chain (or the default chain) writes an access log.
    pub fn has_access_logs(&self) -> bool {
        !self.access_logs.is_empty()
            || self
                .filter_chains
                .iter()
                .chain(self.default_chain.iter())
                .any(|c| !c.tcp_proxy.access_logs.is_empty())
    }

    /// True when the peer address is needed: chains match on the source, upstream sockets
    /// bind it (`original_src`), a hash policy keys on it, or only trusted peers' PROXY
    /// headers are read.
    pub fn needs_remote_address(&self) -> bool {
        self.original_src.is_some()
            || self.has_rbac()
            || self
                .filter_chains
                .iter()
                .chain(self.default_chain.iter())
                .any(|c| c.source_limit.is_some())
            || self
                .proxy_protocol
                .as_ref()
                .is_some_and(|p| p.trusted_sources.is_some())
            || self
                .filter_chains
                .iter()
                .chain(self.default_chain.iter())
                .any(|c| c.tcp_proxy.hash_source_ip)
            || self.filter_chains.iter().any(|c| c.matcher.reads_source())
            || self.chain_matcher.as_ref().is_some_and(|m| {
                use chain_matcher::Input;
                [
                    Input::SourceIp,
                    Input::SourcePort,
                    Input::DirectSourceIp,
                    Input::SourceType,
                ]
                .into_iter()
                .any(|i| m.reads(i))
            })
    }
}

impl ChainIndex {
    /// The index of `chains`' matchers, for [`Listener::chain_index`].
    pub fn of(chains: &[FilterChain]) -> ChainIndex {
        ChainIndex::build(chains.iter().map(|c| &c.matcher))
    }
}

/// A filter chain: match criteria and the network filter that handles the connection.
#[derive(Debug)]
pub struct FilterChain {
    /// The chain's name (may be empty).
    pub name: Arc<str>,
    /// What this chain matches.
    pub matcher: ChainMatch,
    /// `envoy.filters.network.connection_limit` before the tcp_proxy, if any.
    pub connection_limit: Option<ConnectionLimit>,
    /// `envoy.filters.network.local_ratelimit` before the tcp_proxy, if any.
    pub local_rate_limit: Option<LocalRateLimit>,
    /// `envoy.filters.network.rbac` before the tcp_proxy, if any.
    pub rbac: Option<NetworkRbac>,
    /// `switchyard.filters.network.source_limit` before the tcp_proxy, if any.
    pub source_limit: Option<SourceLimit>,
    /// The filters that may refuse a new connection (RBAC, the rate and connection limits),
    /// in the chain's order: the first to refuse decides, and those after it are not
    /// consulted (Envoy runs them in order).
    pub gates: Vec<Gate>,
    /// `switchyard.filters.network.fault`, when configured.
    pub fault: Option<Fault>,
    /// `switchyard.filters.network.mirror`, when configured.
    pub mirror: Option<Mirror>,
    /// The terminal network filter.
    pub tcp_proxy: TcpProxy,
    /// `transport_socket` `envoy.transport_sockets.tls`: TLS is terminated with this
    /// context (the handshake completes before the upstream connect); `None`: plaintext.
    pub tls: Option<ChainTls>,
    /// The chain terminates HBONE (HTTP/2 CONNECT): each connection is an HTTP/2 connection
    /// and each of its CONNECT streams is proxied by `tcp_proxy`; `None`: the connection is.
    pub hbone: Option<hbone::HboneTerminate>,
}

/// A filter chain's TLS termination.
#[derive(Debug, Clone)]
pub struct ChainTls {
    /// The context every worker handshakes with (shared; its ticket keys too); `None` while
    /// it waits for SDS secrets: each connection is then closed at once
    /// (`downstream_context_secrets_not_ready`).
    pub context: Option<Arc<crate::tls::ServerContext>>,
    /// `transport_socket_connect_timeout`: a handshake not done by then closes the
    /// connection; `None`: no deadline but the tcp_proxy's idle timeout (Envoy's default).
    pub handshake_timeout_ms: Option<u64>,
}

/// `switchyard.filters.network.fault`: each fault is drawn per connection, independently.
#[derive(Debug)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    pub throttle: Option<FaultThrottle>,
    /// `fault.<stat_prefix>.*`, shared across generations.
    pub stats: Arc<FaultStats>,
}

/// `switchyard.filters.network.mirror`: a sampled share of connections also sends every
/// client byte to an endpoint of the shadow cluster.
#[derive(Debug)]
pub struct Mirror {
    /// The shadow cluster (`None`: not in this FIB; nothing is mirrored).
    pub cluster: Option<ClusterId>,
    /// Connections mirrored, per million.
    pub per_million: u32,
    /// Bytes waiting for the shadow at most, per connection, before it is given up.
    pub max_buffered_bytes: u32,
    /// `mirror.<stat_prefix>.*`, shared across generations.
    pub stats: Arc<MirrorStats>,
}

/// Delay the upstream connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub delay_ms: u64,
    /// Connections delayed, per million.
    pub per_million: u32,
}

/// Reset the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    /// Once the client has sent this many bytes (0: at accept). The upstream receives at
    /// most this many.
    pub after_bytes: u64,
    /// Connections aborted, per million.
    pub per_million: u32,
}

/// Limit throughput, each direction on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultThrottle {
    /// Bytes per second, by [`crate::relay::Dir`] (`Up`: client to upstream); 0 unlimited.
    pub bytes_per_second: [u64; 2],
    /// Connections throttled, per million.
    pub per_million: u32,
}

/// A draw that succeeds for `per_million` of a million.
#[inline]
pub fn drawn(per_million: u32, random: u64) -> bool {
    random % 1_000_000 < u64::from(per_million)
}

/// Envoy's `envoy.filters.network.connection_limit`: at most `max_connections` open on the
/// chain, across every worker; one more is closed, after `delay_ms` if set.
#[derive(Debug)]
pub struct ConnectionLimit {
    pub max_connections: u64,
    /// Hold a refused connection this long before closing it (0: at once).
    pub delay_ms: u64,
    /// The shared count and stats, by stat prefix, across FIB generations.
    pub state: Arc<ConnectionLimitState>,
}

/// Envoy's `envoy.filters.network.local_ratelimit`: each new connection takes a token of
/// the bucket, shared by every worker, or is closed (`rate_limited`) before anything
/// upstream is picked or opened.
#[derive(Debug)]
pub struct LocalRateLimit {
    /// The filter's bucket (or its `share_key`'s), across FIB generations.
    pub bucket: Arc<crate::rate_limit::TokenBucket>,
    /// `local_rate_limit.<stat_prefix>.*`.
    pub stats: Arc<crate::stats::LocalRateLimitStats>,
}

/// A filter that may refuse a new connection before the tcp_proxy routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The chain's [`NetworkRbac`].
    Rbac,
    /// The chain's [`LocalRateLimit`].
    RateLimit,
    /// The chain's [`ConnectionLimit`].
    ConnectionLimit,
    /// The chain's [`SourceLimit`].
    SourceLimit,
}

/// `switchyard.filters.network.source_limit`: per client source (address or prefix), a
/// token bucket of new connections and a cap on open ones, in a table every worker shares.
#[derive(Debug)]
pub struct SourceLimit {
    /// The table (kept across FIB generations while the filter's settings stay the same).
    pub table: Arc<crate::source_limit::SourceTable>,
    /// `source_limit.<stat_prefix>.*`.
    pub stats: Arc<crate::stats::SourceLimitStats>,
}

/// Envoy's `envoy.filters.network.rbac`: `rules` (enforced) and `shadow_rules` (counted
/// only), decided as soon as what they read of the connection is known: at accept, after
/// the ClientHello for server names, after the client's handshake for its certificate;
/// never later, so the upstream connect waits for nothing else.
#[derive(Debug)]
pub struct NetworkRbac {
    /// `rules`; `None`: every connection is allowed (and counted `allowed`).
    pub rules: Option<Arc<crate::rbac::Rbac>>,
    /// `shadow_rules`, if any.
    pub shadow_rules: Option<Arc<crate::rbac::Rbac>>,
    /// `enforcement_type: CONTINUOUS`: a connection the chain's RBAC of a later FIB denies
    /// is closed when that FIB is published.
    pub continuous: bool,
    /// `<stat_prefix>.rbac.*`.
    pub stats: Arc<crate::stats::RbacStats>,
}

impl NetworkRbac {
    /// The late inputs either set of rules reads.
    pub fn reads(&self) -> crate::rbac::Reads {
        let mut out = crate::rbac::Reads::default();
        for r in self.rules.iter().chain(self.shadow_rules.iter()) {
            let reads = r.reads();
            out.server_name |= reads.server_name;
            out.peer |= reads.peer;
        }
        out
    }
}

/// Envoy `envoy.filters.network.tcp_proxy`, compiled.
#[derive(Debug)]
pub struct TcpProxy {
    /// `tcp.<stat_prefix>.*` stats, shared across generations.
    pub stats: Arc<TcpStats>,
    /// Where connections go.
    pub route: Route,
    /// Close a connection after this long without bytes in either direction; `None` disables.
    pub idle_timeout_ms: Option<u64>,
    /// Connect attempts (first try included) before giving up; at least 1.
    pub max_connect_attempts: u32,
    /// Access-log sinks written when a connection closes.
    pub access_logs: Vec<Arc<AccessLogSink>>,
    /// `hash_policy: [{source_ip: {}}]`: hashing balancers (RING_HASH, MAGLEV) key on the
    /// client's IP, so one client keeps its endpoint; without it they hash a random number.
    pub hash_source_ip: bool,
    /// `tunneling_config`: each connection is a CONNECT stream over its cluster's pooled
    /// HTTP/2 connections (the cluster has [`Cluster::http2`]); `None`: a TCP connection.
    pub tunneling: Option<Arc<hbone::Tunneling>>,
}

/// The tcp_proxy's destination.
#[derive(Debug)]
pub enum Route {
    /// One cluster.
    Cluster(ClusterId),
    /// Several clusters chosen at random in proportion to their weights.
    Weighted(WeightedClusters),
    /// The named cluster does not exist in this generation: `downstream_cx_no_route`.
    Missing(Arc<str>),
}

/// Weighted clusters, compiled for an O(log n) pick.
#[derive(Debug)]
pub struct WeightedClusters {
    /// Clusters with their cumulative weight: entry i covers `[cumulative[i-1], cumulative[i])`.
    pub entries: Vec<WeightedEntry>,
    /// Sum of all weights (> 0).
    pub total_weight: u64,
}

/// One weighted cluster.
#[derive(Debug)]
pub struct WeightedEntry {
    /// The cluster, or `None` if it does not exist (counts as no route when picked).
    pub cluster: Option<ClusterId>,
    /// Name as configured, for logs.
    pub name: Arc<str>,
    /// Weight as configured.
    pub weight: u32,
    /// Running total up to and including this entry.
    pub cumulative: u64,
}

impl WeightedClusters {
    /// Builds the table; `None` if the total weight is zero.
    pub fn new(items: Vec<(Option<ClusterId>, Arc<str>, u32)>) -> Option<Self> {
        let mut total = 0u64;
        let entries: Vec<WeightedEntry> = items
            .into_iter()
            .map(|(cluster, name, weight)| {
                total += u64::from(weight);
                WeightedEntry {
                    cluster,
                    name,
                    weight,
                    cumulative: total,
                }
            })
            .collect();
        (total > 0).then_some(WeightedClusters {
            entries,
            total_weight: total,
        })
    }

    /// Picks the entry for a uniformly random `r`.
    pub fn pick(&self, r: u64) -> &WeightedEntry {
        let point = r % self.total_weight;
        let i = self.entries.partition_point(|e| e.cumulative <= point);
        &self.entries[i]
    }
}

/// Load-balancing policy, Envoy's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin (EDF when weights differ, like Envoy).
    RoundRobin,
    /// Uniform (weighted) random.
    Random,
    /// Power of `choice_count` choices on active connections (weighted when weights differ).
    LeastRequest {
        /// Hosts sampled per pick (Envoy default 2).
        choice_count: u32,
    },
    /// Envoy's `CLUSTER_PROVIDED`, for a `type: ORIGINAL_DST` cluster: no endpoints; each
    /// connection goes to its own original destination (the local address its listener
    /// restored with `use_original_dst`). A connection without one gets no upstream.
    ClusterProvided,
    /// Envoy's ring hash (Karger et al.): each endpoint owns points on a ring of 64-bit
    /// hashes in proportion to its weight; a key goes to the next point.
    RingHash {
        min_ring_size: u64,
        max_ring_size: u64,
        hash_function: RingHashFunction,
    },
    /// Envoy's Maglev: a lookup table of `table_size` (prime) slots filled by each
    /// endpoint's permutation, weighted; a key goes to `table[key % table_size]`.
    Maglev { table_size: u64 },
}

impl LbPolicy {
    /// True for the policies that pick by a hash key (a table built with the FIB).
    pub fn is_hashing(&self) -> bool {
        matches!(self, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. })
    }
}

/// A hashing balancer's lookup structure, built by the control thread with the FIB (one per
/// cluster, shared by every worker: picks are reads), with the per-host entry counts Envoy
/// publishes as stats.
#[derive(Debug, Clone, PartialEq)]
pub struct HashTable {
    pub lookup: HashLookup,
    /// Fewest table slots (Maglev) or ring points (ring hash) any endpoint owns: Envoy's
    /// `maglev_lb.min_entries_per_host` / `ring_hash_lb.min_hashes_per_host`.
    pub min_entries_per_host: u64,
    /// The most: `max_entries_per_host` / `max_hashes_per_host`.
    pub max_entries_per_host: u64,
}

/// The table itself.
#[derive(Debug, Clone, PartialEq)]
pub enum HashLookup {
    Maglev(MaglevTable),
    Ring(RingHash),
}

impl HashTable {
    /// The table for `policy` over `endpoints` (Envoy's host keys: `ip:port`), or `None` for
    /// a policy that does not hash.
    pub fn build(policy: LbPolicy, endpoints: &[Endpoint]) -> Option<HashTable> {
        let keys: Vec<String> = endpoints
            .iter()
            .map(|e| envoy_host_key(e.address))
            .collect();
        let hosts: Vec<HashHost> = keys
            .iter()
            .zip(endpoints)
            .map(|(key, e)| HashHost {
                key,
                weight: e.weight.max(1),
            })
            .collect();
        let lookup = match policy {
            LbPolicy::Maglev { table_size } => {
                HashLookup::Maglev(MaglevTable::build(&hosts, table_size))
            }
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
                hash_function,
            } => HashLookup::Ring(RingHash::build(
                &hosts,
                min_ring_size,
                max_ring_size,
                hash_function,
            )),
            _ => return None,
        };
        let mut counts = vec![0u64; endpoints.len()];
        match &lookup {
            HashLookup::Maglev(t) => {
                for slot in 0..t.len() as u64 {
                    if let Some(host) = t.pick(slot) {
                        counts[host] += 1;
                    }
                }
            }
            HashLookup::Ring(r) => r.entries().for_each(|(_, host)| counts[host] += 1),
        }
        Some(HashTable {
            lookup,
            min_entries_per_host: counts.iter().copied().min().unwrap_or(0),
            max_entries_per_host: counts.iter().copied().max().unwrap_or(0),
        })
    }

    /// The endpoint for `hash`, or `None` when the cluster has none. Allocation-free.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        self.pick_attempt(hash, 0)
    }

    /// Envoy's pick for retry `attempt` (0: the first), which moves to another endpoint
    /// the way Envoy's retry host predicate does. Allocation-free.
    #[inline]
    pub fn pick_attempt(&self, hash: u64, attempt: u32) -> Option<usize> {
        match &self.lookup {
            HashLookup::Maglev(t) => t.pick_attempt(hash, attempt),
            HashLookup::Ring(r) => r.pick_attempt(hash, attempt),
        }
    }
}

/// A cluster of endpoints.
#[derive(Debug)]
pub struct Cluster {
    /// The cluster's name: its stable identity.
    pub name: Arc<str>,
    /// The name its stats and access logs show: `alt_stat_name`, or `name` (Envoy's
    /// observability name).
    pub observability_name: Arc<str>,
    /// Give up a connect after this long.
    pub connect_timeout_ms: u64,
    /// `per_connection_buffer_limit_bytes` of its backend connections (0: none); see
    /// [`crate::relay::BufferLimits`].
    pub buffer_limit_bytes: u32,
    /// How an endpoint is picked.
    pub lb_policy: LbPolicy,
    /// Endpoints by priority (0 first), in config order within a priority.
    pub endpoints: Vec<Endpoint>,
    /// `cluster.<name>.*` stats, shared across generations.
    pub stats: Arc<ClusterStats>,
    /// Socket setup before every connect.
    pub upstream_bind: UpstreamBind,
    /// RING_HASH and MAGLEV: the table picks are read from.
    pub hash_table: Option<HashTable>,
    /// Limits on the resources below (`circuit_breakers`, priority DEFAULT).
    pub circuit_breakers: CircuitBreakers,
    /// Connections and pending clients now, across workers; shared by name across FIBs.
    pub resources: Arc<ClusterResources>,
    /// Health checking, outlier detection and the panic threshold.
    pub health: HealthPolicy,
    /// Health state shared with the health thread; by name across FIBs.
    pub health_state: Arc<ClusterHealth>,
    /// Received over xDS rather than from the bootstrap (`/clusters`' `added_via_api`).
    pub added_via_api: bool,
    /// `cluster.<name>.udp.*`: the upstream side of UDP sessions, by name across FIBs.
    pub udp_stats: Arc<ClusterUdpStats>,
    /// `transport_socket` `envoy.transport_sockets.tls`: connections to its endpoints
    /// originate TLS with this context (the handshake is part of the connect, as in Envoy);
    /// `None`: plaintext.
    pub tls: Option<Arc<crate::tls::ClientContext>>,
    /// `transport_socket` `envoy.transport_sockets.upstream_proxy_protocol`: each connection
    /// to its endpoints starts with a PROXY header declaring the client's addresses (before
    /// any TLS); `None`: no header.
    pub proxy_protocol: Option<UpstreamProxyProtocol>,
    /// The cluster originates TLS but its context waits for SDS secrets (`tls` is `None`):
    /// each connect fails at once (`upstream_context_secrets_not_ready`).
    pub tls_secrets_missing: bool,
    /// `cluster.<name>.ssl.*`, by name across FIBs (with `tls`).
    pub ssl_stats: Option<Arc<crate::stats::SslStats>>,
    /// Its connections carry HTTP/2 (`typed_extension_protocol_options`): a tcp_proxy with
    /// a `tunneling_config` sends each connection as a CONNECT stream over them.
    pub http2: Option<hbone::Http2Upstream>,
    /// `ORIGINAL_DST` with `original_dst_lb_config: {use_http_header: true,
    /// http_header_name: ":authority"}`: an HBONE stream goes to the address its
    /// `:authority` names (else, as in Envoy, to the connection's local address).
    pub original_dst_authority: bool,
}

/// What decides a cluster's endpoints' health, and what balancing does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    /// `common_lb_config.healthy_panic_threshold`, whole percent (Envoy's default 50): below
    /// this share of healthy hosts a priority level balances over all its hosts; 0 never.
    pub panic_threshold_pct: u32,
    /// `outlier_detection`, when configured.
    pub outlier: Option<OutlierDetection>,
    /// `health_checks[0]` (a TCP check), when configured.
    pub health_check: Option<Arc<HealthCheck>>,
    /// `common_lb_config.locality_weighted_lb_config`: within a priority level, a locality
    /// is picked by its effective weight before a host is picked within it
    /// ([`crate::lb::levels`]).
    pub locality_weighted: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            panic_threshold_pct: 50,
            outlier: None,
            health_check: None,
            locality_weighted: false,
        }
    }
}

impl HealthPolicy {
    /// True when some host's health may change at run time (balancers then watch the
    /// cluster's health epoch).
    pub fn tracks_health(&self) -> bool {
        self.outlier.is_some() || self.health_check.is_some()
    }
}

/// Envoy's `outlier_detection` for L4: a connect failure or timeout is a local-origin
/// failure; unless `split_external_local_origin_errors`, Envoy maps it to a 503/504, so it
/// counts for `consecutive_5xx` and `consecutive_gateway_failure` alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    /// Percent chance that a detected run is enforced (ejects).
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
    /// How often ejected hosts are checked for return.
    pub interval_ms: u64,
    /// An ejection lasts this times the host's ejection count...
    pub base_ejection_time_ms: u64,
    /// ... but no longer than this (or `base_ejection_time_ms`, when larger).
    pub max_ejection_time_ms: u64,
    /// At most this share of the cluster's hosts ejected at once...
    pub max_ejection_percent: u32,
    /// ... except that one host may always be (`always_eject_one_host`).
    pub always_eject_one_host: bool,
    /// Up to this much is added to each ejection at random.
    pub max_ejection_time_jitter_ms: u64,
    /// A passing active health check returns an ejected host (Envoy's default).
    pub successful_active_health_check_uneject_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            consecutive_local_origin_failure: 5,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_consecutive_local_origin_failure: 100,
            split_external_local_origin_errors: false,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_time_ms: 300_000,
            max_ejection_percent: 10,
            always_eject_one_host: false,
            max_ejection_time_jitter_ms: 0,
            successful_active_health_check_uneject_host: true,
        }
    }
}

impl OutlierDetection {
    /// The failure run at which a worker asks the health thread to look: the lowest
    /// threshold that applies (a threshold of 0 detects nothing, as in Envoy).
    pub fn review_threshold(&self) -> u32 {
        let enabled = |t: u32| if t == 0 { u32::MAX } else { t };
        if self.split_external_local_origin_errors {
            enabled(self.consecutive_local_origin_failure)
        } else {
            enabled(self.consecutive_5xx).min(enabled(self.consecutive_gateway_failure))
        }
    }
}

/// Envoy's `health_checks` entry with a `tcp_health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub timeout_ms: u64,
    pub interval_ms: u64,
    /// Up to this much is added to each interval at random.
    pub interval_jitter_ms: u64,
    /// Up to this much delays a host's first check at random.
    pub initial_jitter_ms: u64,
    /// The interval while a host is unhealthy (`unhealthy_interval`, default `interval`).
    pub unhealthy_interval_ms: u64,
    /// The interval until the cluster has carried a connection (`no_traffic_interval`,
    /// Envoy's default 60 s).
    pub no_traffic_interval_ms: u64,
    /// Consecutive failures that mark a healthy host unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive successes that mark an unhealthy host healthy (a new host's first
    /// success is enough, as in Envoy).
    pub healthy_threshold: u32,
    /// Bytes written once connected (empty: connect only).
    pub send: Vec<u8>,
    /// Byte strings that must all arrive, in this order (empty: connect only).
    pub receive: Vec<Vec<u8>>,
}

/// Envoy's `circuit_breakers.thresholds` for priority DEFAULT, defaults included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Upstream connections open or opening at once (Envoy default 1024).
    pub max_connections: u32,
    /// Upstream connections being opened at once (Envoy's pending requests; default 1024).
    pub max_pending_requests: u32,
    /// `max_requests` (default 1024) and `max_retries` (default 3): accepted and shown in
    /// `/clusters` as Envoy shows them; an L4 connection makes no requests or retries
    /// through the pool, so they limit nothing.
    pub max_requests: u32,
    pub max_retries: u32,
    /// `track_remaining`: publish `remaining_cx` and `remaining_pending` gauges.
    pub track_remaining: bool,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
        }
    }
}

impl Cluster {
    /// True for a `type: ORIGINAL_DST` cluster (its connections go where they were going).
    pub fn is_original_dst(&self) -> bool {
        self.lb_policy == LbPolicy::ClusterProvided
    }

    /// Some endpoint is reached through an HBONE tunnel ([`Endpoint::tunnel`]): only a
    /// tunnelling tcp_proxy may route here.
    pub fn has_tunnels(&self) -> bool {
        self.endpoints.iter().any(|e| e.tunnel.is_some())
    }
}

/// One backend address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where to connect.
    pub address: SocketAddr,
    /// `load_balancing_weight` (>= 1).
    pub weight: u32,
    /// The priority of its locality (0 is tried first).
    pub priority: u32,
    /// The `LocalityLbEndpoints` it came from.
    pub locality: Locality,
    /// The node proxy a tunnelled connection reaches it through (its metadata's HBONE
    /// tunnel): the pooled HTTP/2 connection goes there, not to `address`, and
    /// `%UPSTREAM_HOST%` is still `address`. Only tunnelling tcp_proxies route to a
    /// cluster with such endpoints.
    pub tunnel: Option<SocketAddr>,
    /// The host's counters and health ([`HostState`]), shared across generations by cluster
    /// and address.
    pub stats: Arc<HostState>,
}

/// The `LocalityLbEndpoints` group an endpoint belongs to. Endpoints of one group are
/// contiguous in [`Cluster::endpoints`] (groups keep their config order within a priority).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// The group's position in the assignment's `endpoints`: what tells groups apart.
    pub group: u32,
    /// The group's `load_balancing_weight`; 0 when unset (such a locality is never picked
    /// by locality-weighted balancing, as in Envoy).
    pub weight: u32,
    /// `locality`: `region`, `zone`, `sub_zone` (`/clusters` shows them); `None` when unset.
    pub name: Option<Arc<LocalityName>>,
}

/// Envoy's `core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LocalityName {
    /// `region`.
    pub region: String,
    /// `zone`.
    pub zone: String,
    /// `sub_zone`.
    pub sub_zone: String,
}

impl Endpoint {
    /// The host's health flags and failure run.
    #[inline]
    pub fn health(&self) -> &crate::health::HostHealth {
        &self.stats.health
    }
}
