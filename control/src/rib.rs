//! The routing information base: the config as Switchyard understands it, validated.
//!
//! The RIB holds domain types only, never proto types: `convert` is the one boundary where
//! envoy-types messages become these, and `compile` turns them into a [`Fib`] for workers.
//! Every invariant the data plane relies on is established by `convert` and documented on
//! the field (ports are non-zero, weights are at least 1, names are unique, ...). Defaults are
//! already applied: nothing here is "absent, meaning Envoy's default".
//!
//! [`Fib`]: switchyard_dataplane::fib::Fib

use crate::stats_config::StatsConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::accesslog::{LogFilter, LogFormat, LogPath};
use switchyard_dataplane::fib::hbone::{HboneTerminate, Http2Upstream, Tunneling};
use switchyard_dataplane::fib::{
    ChainMatch, ChainMatcher, CidrRange, CircuitBreakers, FaultAbort, FaultDelay, FaultThrottle,
    FilterDeadline, HealthPolicy, LbPolicy, Locality, LocalityName, OriginalSrc, UpstreamBind,
    UpstreamProxyProtocol,
};
use switchyard_dataplane::proxy_protocol::Acceptance;
use switchyard_dataplane::tls::settings::{ClientSettings, ServerSettings};

/// Envoy's default tcp_proxy `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Envoy's default `stream_idle_timeout` of the connection manager (an HBONE chain's streams).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Envoy's default `common_http_protocol_options.idle_timeout` of a cluster's HTTP
/// connections (an HBONE origination pool's).
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Envoy's default udp_proxy `idle_timeout`.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Envoy's default cluster `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Envoy's default `least_request_lb_config.choice_count`.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;

/// The whole validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rib {
    /// `node.id` / `node.cluster` (empty when not set).
    pub node: NodeInfo,
    /// The admin HTTP server (none without `admin.address`).
    pub admin: AdminConfig,
    /// Listeners (TCP and UDP) in config order; names are unique, and so is what each binds
    /// (protocol and address).
    pub listeners: Vec<ListenerConfig>,
    /// Clusters in config order; names are unique. Shared with the xDS state and the
    /// compile cache: an unchanged cluster is the same `Arc` from one RIB to the next.
    pub clusters: Vec<Arc<ClusterConfig>>,
    /// `dynamic_resources`: where listeners, clusters and endpoints come from over xDS.
    pub dynamic: Option<DynamicConfig>,
    /// The bootstrap's DNS resolver (`typed_dns_resolver_config`, `dns_resolution_config`,
    /// `use_tcp_for_dns_lookups`): what a STRICT_DNS or LOGICAL_DNS cluster without a
    /// resolver of its own resolves with.
    pub dns_resolver: Arc<DnsResolverConfig>,
    /// `stats_config`: tag extraction and the stats matcher, compiled; fixed at start.
    pub stats: Arc<StatsConfig>,
    /// `layered_runtime` and the overload manager's connection limit.
    pub runtime: RuntimeConfig,
    /// `cluster_manager.outlier_detection.event_log_path`: where outlier ejections and
    /// returns are logged (fixed at start, like `admin`).
    pub outlier_event_log: Option<std::path::PathBuf>,
    /// `static_resources.secrets` by name.
    pub secrets: std::collections::BTreeMap<String, SecretValue>,
}

/// Envoy's runtime (`layered_runtime`) and `overload_manager`, as far as an L4 proxy reads
/// them: the global downstream connection limit (see [`crate::runtime`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// `layered_runtime.layers` in order (a later layer's value wins); names are unique and
    /// at most one is the admin layer.
    pub layers: Vec<RuntimeLayer>,
    /// The overload manager's `envoy.resource_monitors.global_downstream_max_connections`
    /// (`max_active_downstream_connections`, at least 1). When set, it is the limit and the
    /// runtime key is not read, as in Envoy.
    pub overload_max_connections: Option<u64>,
}

/// One runtime layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLayer {
    /// `name`, as `/runtime` lists it.
    pub name: String,
    /// What it holds.
    pub kind: RuntimeLayerKind,
}

/// A runtime layer's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeLayerKind {
    /// `static_layer`: its entries, flattened to dotted keys, values as Envoy prints them;
    /// every key is one [`crate::runtime::check_entry`] accepts.
    Static(std::collections::BTreeMap<String, String>),
    /// `admin_layer`: what `POST /runtime_modify` sets, held by the running process.
    Admin,
}

/// Envoy's `dynamic_resources`: where listeners (`lds_config`) and clusters (`cds_config`)
/// come from, and the ADS stream (`ads_config`) that sources naming `ads: {}` share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicConfig {
    /// `ads_config`: the ADS stream, if there is one.
    pub ads: Option<GrpcSource>,
    /// `lds_config`: where listeners come from (`None`: only the static ones).
    pub lds: Option<XdsSource>,
    /// `cds_config`: where clusters come from (`None`: only the static ones).
    pub cds: Option<XdsSource>,
    /// How long the first fetch may take before serving without it (Envoy's default 15 s;
    /// `None` when `0s`: wait forever).
    pub initial_fetch_timeout: Option<Duration>,
}

/// Where one kind of resource comes from (Envoy's `ConfigSource`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum XdsSource {
    /// `ads: {}`: the ADS stream of `dynamic_resources.ads_config`.
    #[default]
    Ads,
    /// `path_config_source` (or the deprecated `path`): a file in Envoy's
    /// `DiscoveryResponse` format, read again when something is moved into place.
    File(FileSource),
    /// `api_config_source` with `api_type: GRPC` or `DELTA_GRPC`: a stream of its own (the
    /// type's own discovery service) to a static cluster.
    Grpc(GrpcSource),
}

/// A file subscription (`path_config_source`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileSource {
    /// The file (YAML by a `.yaml`/`.yml` name, else JSON).
    pub path: std::path::PathBuf,
    /// `watched_directory.path`: a move into this directory reloads `path`; without it, a
    /// move onto `path` itself does.
    pub watched_directory: Option<std::path::PathBuf>,
}

/// A gRPC management server (`api_config_source`, or `ads_config`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrpcSource {
    /// The static cluster it is reached through (`grpc_services[0].envoy_grpc`).
    pub cluster: String,
    /// State of the World (`GRPC`) or Delta (`DELTA_GRPC`).
    pub api: XdsApi,
    /// `grpc_services[0].initial_metadata`: request metadata (header name, lower-cased as
    /// Envoy sends it, and value) sent when every stream to this server opens, in order.
    pub initial_metadata: Vec<(String, String)>,
    /// `envoy_grpc.retry_policy.retry_back_off`: the reconnect backoff after a stream fails.
    pub reconnect: ReconnectBackoff,
}

/// The jittered exponential backoff between attempts to (re)open an xDS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReconnectBackoff {
    /// `base_interval`: the first delay; it doubles per failed attempt.
    pub base: Duration,
    /// `max_interval`: the cap (ten times `base` when not given, as Envoy).
    pub max: Duration,
}

impl Default for ReconnectBackoff {
    /// Envoy's default for xDS streams: 500 ms base, 30 s cap.
    fn default() -> ReconnectBackoff {
        ReconnectBackoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The xDS protocol variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdsApi {
    Sotw,
    Delta,
}

/// Envoy's default `initial_fetch_timeout`.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

impl Rib {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name).map(|c| &**c)
    }

    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// Identity of this proxy, as Envoy's `node`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata`, a `google.protobuf.Struct` kept encoded (the RIB holds no proto
    /// types): sent to every management server in the `Node`, as Envoy sends it (Istio's
    /// control plane reads the proxy's labels, version and interception mode from it).
    pub metadata: Option<Vec<u8>>,
    /// `node.locality` (`region`, `zone`, `sub_zone`), sent in the `Node` likewise (a
    /// control plane picks endpoints near the proxy with it). Switchyard balances no
    /// differently by it: Envoy's own use is zone-aware routing, which needs
    /// `cluster_manager.local_cluster_name` (not supported).
    pub locality: Option<LocalityName>,
}

/// The admin server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// Listening address; `None` (no `admin.address`, or no `admin` at all): no admin
    /// listener is opened, as in Envoy ("No admin address given, so no admin HTTP server
    /// started").
    pub address: Option<AdminAddress>,
    /// `admin.access_log` and `admin.access_log_path`: where a line per admin request goes
    /// (Envoy's default HTTP format).
    pub access_logs: Vec<LogPath>,
    /// `admin.ignore_global_conn_limit`: admin connections count toward the global
    /// connection limit but are never refused by it (by default they are refused, as in
    /// Envoy).
    pub ignore_global_conn_limit: bool,
}

impl AdminConfig {
    /// The admin's TCP address, if it listens on one (a listener may not take it).
    pub fn socket(&self) -> Option<SocketAddr> {
        self.address.as_ref().and_then(AdminAddress::socket)
    }
}

/// Where the admin listens: a TCP address, or a Unix socket (Envoy `address.pipe`), which
/// two processes sharing a network namespace (a DaemonSet's old and new pod during a
/// rolling update) can each have at their own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddress {
    Tcp(SocketAddr),
    Pipe {
        path: std::path::PathBuf,
        /// Permission bits of the socket file (Envoy `pipe.mode`, 0 keeps the umask's).
        mode: u32,
    },
}

impl AdminAddress {
    /// The TCP address, if it is one (a listener may not take it).
    pub fn socket(&self) -> Option<SocketAddr> {
        match self {
            AdminAddress::Tcp(a) => Some(*a),
            AdminAddress::Pipe { .. } => None,
        }
    }
}

impl std::fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddress::Tcp(a) => write!(f, "{a}"),
            AdminAddress::Pipe { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A listener: TCP (filter chains ending in a tcp_proxy) or UDP (the udp_proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Unique among all listeners, TCP and UDP (the address, `ip:port`, when the config
    /// gives none; `ip:port/udp` for a UDP listener).
    pub name: String,
    /// Listening address, port non-zero; unique among the listeners of its protocol (a TCP
    /// and a UDP listener may share one). Its stats are named after it.
    pub address: SocketAddr,
    /// `additional_addresses`: more addresses of the same protocol it also listens on, with
    /// the same chains and stats; each unique like `address`.
    pub additional_addresses: Vec<SocketAddr>,
    /// `traffic_direction: INBOUND`: `POST /drain_listeners?inboundonly` stops it (its one
    /// effect at L4, as in Envoy on Linux).
    pub inbound: bool,
    /// What it does with what arrives.
    pub kind: ListenerKind,
}

/// A listener's protocol and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    /// `protocol: TCP` (the default): filter chains (boxed: much larger than the UDP
    /// variant).
    Tcp(Box<TcpListenerConfig>),
    /// `protocol: UDP` with the `envoy.filters.udp_listener.udp_proxy` listener filter.
    Udp(UdpProxyConfig),
}

/// The transport protocol of a listener's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// `protocol: TCP`, the default.
    Tcp,
    /// `protocol: UDP`.
    Udp,
}

/// What a listener binds: two listeners may not bind the same one (a TCP and a UDP listener
/// on one address and port bind different ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bind {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// IP and port.
    pub address: SocketAddr,
}

impl Bind {
    /// A TCP address (the admin's, a TCP listener's).
    pub fn tcp(address: SocketAddr) -> Bind {
        Bind {
            protocol: Protocol::Tcp,
            address,
        }
    }
}

/// `127.0.0.1:80` for TCP (as every message showed before UDP existed), `127.0.0.1:53/udp`
/// for UDP.
impl std::fmt::Display for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(f, "{}", self.address),
            Protocol::Udp => write!(f, "{}/udp", self.address),
        }
    }
}

impl ListenerConfig {
    /// TCP or UDP.
    pub fn protocol(&self) -> Protocol {
        match self.kind {
            ListenerKind::Tcp(_) => Protocol::Tcp,
            ListenerKind::Udp(_) => Protocol::Udp,
        }
    }

    /// What it binds (protocol and address).
    pub fn bind(&self) -> Bind {
        Bind {
            protocol: self.protocol(),
            address: self.address,
        }
    }

    /// Every address it listens on: `address`, then the `additional_addresses`.
    pub fn addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.address).chain(self.additional_addresses.iter().copied())
    }

    /// What each of its addresses binds.
    pub fn binds(&self) -> impl Iterator<Item = Bind> + '_ {
        let protocol = self.protocol();
        self.addresses()
            .map(move |address| Bind { protocol, address })
    }

    /// The TCP part, if it is a TCP listener.
    pub fn tcp(&self) -> Option<&TcpListenerConfig> {
        match &self.kind {
            ListenerKind::Tcp(t) => Some(t),
            ListenerKind::Udp(_) => None,
        }
    }

    /// The TCP part, mutable, if it is a TCP listener.
    pub fn tcp_mut(&mut self) -> Option<&mut TcpListenerConfig> {
        match &mut self.kind {
            ListenerKind::Tcp(t) => Some(t),
            ListenerKind::Udp(_) => None,
        }
    }

    /// The UDP proxy, if it is a UDP listener.
    pub fn udp(&self) -> Option<&UdpProxyConfig> {
        match &self.kind {
            ListenerKind::Tcp(_) => None,
            ListenerKind::Udp(u) => Some(u),
        }
    }

    /// The names of the clusters it routes to (tcp_proxy routes of every chain, or the UDP
    /// proxy's route), in config order, possibly repeated; mirrors' shadow clusters are not
    /// included.
    pub fn routed_clusters(&self) -> impl Iterator<Item = &str> {
        let (tcp, udp) = match &self.kind {
            ListenerKind::Tcp(t) => (Some(t), None),
            ListenerKind::Udp(u) => (None, Some(&u.route)),
        };
        tcp.into_iter()
            .flat_map(|t| t.chains().map(|c| &c.tcp_proxy.route))
            .chain(udp)
            .flat_map(RouteConfig::cluster_names)
    }
}

/// A TCP listener's chains and socket options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpListenerConfig {
    /// Filter chains in config order: at most `MAX_FILTER_CHAINS`, no two with the same
    /// match criteria (with a `chain_matcher`: each named, no two alike, none with a match).
    pub filter_chains: Vec<FilterChainConfig>,
    /// The chain used when none matches.
    pub default_filter_chain: Option<FilterChainConfig>,
    /// `filter_chain_matcher`: picks the chain by name (resolved to `filter_chains`
    /// indices) instead of the chains' `filter_chain_match`.
    pub chain_matcher: Option<ChainMatcher>,
    /// `use_original_dst`: chains match on the destination the connection had before it was
    /// redirected here (iptables REDIRECT), not on this listener's address.
    pub use_original_dst: bool,
    /// `transparent`: `IP_TRANSPARENT` on the listening socket (TPROXY).
    pub transparent: bool,
    /// `enable_reuse_port` (or the deprecated `reuse_port`); default true: a socket per
    /// worker with `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// `envoy.filters.listener.original_src`: upstream connections leave from the client's
    /// address.
    pub original_src: Option<OriginalSrc>,
    /// `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB; 0: no limit): the most
    /// one receive from a client takes, and what a connection may hold for its client
    /// before it stops reading from the backend.
    pub buffer_limit_bytes: u32,
    /// `max_connections_to_accept_per_socket_event` (more than 0): each worker takes at
    /// most this many new connections per completion batch; `None`: no bound (Envoy's
    /// default).
    pub max_accepts_per_event: Option<u32>,
    /// The listener's own `access_log`: a line for every connection it accepted, when it
    /// closes, whether a filter chain took it or not (Envoy's listener access log).
    pub access_logs: Vec<AccessLogConfig>,
    /// `ignore_global_conn_limit`: its connections count toward the global connection limit
    /// but are never refused by it.
    pub ignore_global_conn_limit: bool,
    /// `envoy.filters.listener.proxy_protocol`.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// `envoy.filters.listener.tls_inspector`.
    pub tls_inspector: Option<TlsInspectorConfig>,
    /// `listener_filters_timeout` and `continue_on_listener_filters_timeout`, for the
    /// filters above.
    pub filter_deadline: FilterDeadline,
}

/// A listener's PROXY protocol filter (`convert::listener`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// The versions taken (`disallowed_versions`) and
    /// `allow_requests_without_proxy_protocol`.
    pub acceptance: Acceptance,
    /// False when an `original_dst` filter follows it (whose address then stands).
    pub declares_destination: bool,
    /// `stat_prefix` (empty: none).
    pub stat_prefix: String,
    /// Switchyard's `TrustedSources` before it: only these peers' headers are read.
    pub trusted_sources: Option<Vec<CidrRange>>,
    /// `pass_through_tlvs`: the TLV types kept for the upstream header.
    pub pass_through_tlvs: Option<switchyard_dataplane::proxy_protocol::TlvTypes>,
}

/// A listener's TLS inspector (`convert::listener`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInspectorConfig {
    /// `max_client_hello_size` (256 to 16,384 bytes; Envoy's default 16 KiB).
    pub max_client_hello_bytes: u32,
    /// `close_connection_on_client_hello_parsing_errors`.
    pub close_on_parse_error: bool,
    /// `initial_read_buffer_size` (256 to 65,536), if given.
    pub initial_read_bytes: Option<u32>,
}

impl TcpListenerConfig {
    /// Every chain: the filter chains in order, then the default chain.
    pub fn chains(&self) -> impl Iterator<Item = &FilterChainConfig> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.as_ref())
    }

    /// Every chain, mutable, in the order of [`TcpListenerConfig::chains`].
    pub fn chains_mut(&mut self) -> impl Iterator<Item = &mut FilterChainConfig> {
        self.filter_chains
            .iter_mut()
            .chain(self.default_filter_chain.as_mut())
    }
}

/// Envoy's UDP proxy (`envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig`): each new
/// source opens a session to an endpoint of the routed cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpProxyConfig {
    /// Non-empty; stats are `udp.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// Where sessions go: the deprecated `cluster`, the matcher's `on_no_match` action
    /// (Envoy's `Route`), or Switchyard's `WeightedRoute` (every weight at least 1: entries
    /// of weight 0 are left out, as they can never be picked).
    pub route: RouteConfig,
    /// A session idle this long is closed (Envoy's default 60 s); `None` never (`0s`).
    pub idle_timeout: Option<Duration>,
    /// `hash_policies: [{source_ip: true}]`: hashing balancers key on the client's IP.
    pub hash_source_ip: bool,
    /// The listener's `udp_listener_config.downstream_socket_config`: a client's datagram
    /// longer than this is dropped ([`DEFAULT_MAX_RX_DATAGRAM_SIZE`] by default); `None`:
    /// none is (`prefer_gro: true`, see [`crate::convert`]'s UDP rules).
    pub max_downstream_rx_datagram_bytes: Option<u32>,
    /// `upstream_socket_config`: an endpoint's datagram longer than this is dropped; `None`
    /// (the default, as upstream sockets prefer GRO): none is.
    pub max_upstream_rx_datagram_bytes: Option<u32>,
}

/// Envoy's default `max_rx_datagram_size`.
pub const DEFAULT_MAX_RX_DATAGRAM_SIZE: u32 = 1500;

/// A filter chain: what it matches and its one terminal filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterChainConfig {
    /// The chain's name (may be empty).
    pub name: String,
    /// Match criteria; CIDR ranges have their host bits cleared.
    pub matcher: ChainMatch,
    /// `envoy.filters.network.connection_limit`, before the tcp_proxy.
    pub connection_limit: Option<ConnectionLimitConfig>,
    /// `envoy.filters.network.local_ratelimit`, before the tcp_proxy.
    pub local_rate_limit: Option<LocalRateLimitConfig>,
    /// `envoy.filters.network.rbac`, before the tcp_proxy.
    pub rbac: Option<RbacConfig>,
    /// `switchyard.filters.network.source_limit`, before the tcp_proxy.
    pub source_limit: Option<SourceLimitConfig>,
    /// The filters that may refuse a connection (RBAC, the limits), in the chain's order.
    pub gates: Vec<switchyard_dataplane::fib::Gate>,
    /// `switchyard.filters.network.fault`, before the tcp_proxy.
    pub fault: Option<FaultConfig>,
    /// `switchyard.filters.network.mirror`, before the tcp_proxy.
    pub mirror: Option<MirrorConfig>,
    /// The tcp_proxy filter (the chain's terminal filter); for an HBONE chain, what each
    /// CONNECT stream is proxied by, compiled from the connection manager (`stat_prefix`,
    /// the route's cluster, `stream_idle_timeout`, `access_log`; one connect attempt, no
    /// hash policy, no tunneling).
    pub tcp_proxy: TcpProxyConfig,
    /// The terminal filter is `envoy.filters.network.http_connection_manager` in the shape
    /// that terminates HBONE (HTTP/2 CONNECT): its server's HTTP/2 settings. HBONE is
    /// mTLS in a mesh; a plaintext chain is accepted too (tests use it).
    pub hbone: Option<HboneTerminate>,
    /// `transport_socket` with a `DownstreamTlsContext`: the chain terminates TLS; `None`:
    /// plaintext (no transport socket, or `raw_buffer`).
    pub tls: Option<ChainTlsConfig>,
}

/// A filter chain's TLS termination, checked by `convert` (its context was built once when
/// it takes nothing from SDS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTlsConfig {
    /// The `DownstreamTlsContext`, Envoy's defaults applied; what comes from SDS is filled
    /// in when the RIB is composed ([`crate::secrets::resolve`]).
    pub settings: ServerSettings,
    /// What the context takes from SDS, and whether all of it is there.
    pub secrets: TlsSecrets,
    /// `transport_socket_connect_timeout`: how long the handshake may take (`None`: no
    /// limit, Envoy's default).
    pub handshake_timeout: Option<Duration>,
}

/// A cluster's TLS origination, checked by `convert` as [`ChainTlsConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTlsConfig {
    /// The `UpstreamTlsContext`, Envoy's defaults applied; SDS parts filled in at compose.
    pub settings: ClientSettings,
    /// What the context takes from SDS, and whether all of it is there.
    pub secrets: TlsSecrets,
}

/// Where an SDS secret comes from (`SdsSecretConfig.sds_config`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretSource {
    /// No `sds_config`: `static_resources.secrets`.
    Static,
    /// `ads: {}`: the ADS stream.
    Ads,
    /// `path_config_source`: a watched file holding a `DiscoveryResponse` of secrets.
    File(FileSource),
}

/// A secret as a TLS context names it: where from, and its name there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    pub source: SecretSource,
    pub name: String,
}

/// A TLS context's SDS references (`tls_certificate_sds_secret_configs`,
/// `validation_context_sds_secret_config`, `combined_validation_context`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSecrets {
    /// How many certificates the context has inline (`tls_certificates`): the SDS ones
    /// follow them.
    pub inline_certificates: usize,
    /// `tls_certificate_sds_secret_configs`, in order.
    pub certificates: Vec<SecretKey>,
    /// The validation context from SDS, with the combined context's default, if any.
    pub validation: Option<ValidationSecretRef>,
    /// Every secret named is there (always true without SDS); false until then, and while
    /// false the context does not serve: a chain closes its connections, a cluster fails
    /// its connects (Envoy's `*_context_secrets_not_ready`).
    pub ready: bool,
    /// How long a listener or cluster received over xDS warms waiting for these secrets
    /// (their sources' longest `initial_fetch_timeout`; `None`: as long as it takes).
    pub initial_fetch_timeout: Option<Duration>,
}

impl TlsSecrets {
    /// Nothing from SDS.
    pub fn none() -> TlsSecrets {
        TlsSecrets {
            ready: true,
            ..TlsSecrets::default()
        }
    }

    /// Every secret named.
    pub fn keys(&self) -> impl Iterator<Item = &SecretKey> {
        self.certificates
            .iter()
            .chain(self.validation.as_ref().map(|v| &v.secret))
    }
}

/// `validation_context_sds_secret_config`, or `combined_validation_context` (the SDS one
/// merged into `default`, as Envoy's `MergeFrom`: its singular fields win, lists join).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationSecretRef {
    pub secret: SecretKey,
    /// `default_validation_context` of a combined context.
    pub default: Option<ValidationParts>,
}

/// A `CertificateValidationContext` as given, before defaults and merging: each singular
/// field only if set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationParts {
    /// `trusted_ca`: DER roots and the file they came from.
    pub trusted_ca: Option<(Vec<Vec<u8>>, Option<String>)>,
    /// `crl`: DER CRLs.
    pub crls: Option<Vec<Vec<u8>>>,
    /// `match_typed_subject_alt_names` (and the untyped form, expanded).
    pub san_matchers: Vec<switchyard_dataplane::tls::settings::SanMatcher>,
}

/// A secret's payload (`envoy.extensions.transport_sockets.tls.v3.Secret`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretValue {
    /// `tls_certificate`: a chain and its key (they belong together).
    Certificate(switchyard_dataplane::tls::settings::Certificate),
    /// `validation_context`.
    Validation(ValidationParts),
}

/// Switchyard's L4 fault injection filter: each fault with its share of connections in
/// per million.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultConfig {
    /// `fault.<stat_prefix>.*`.
    pub stat_prefix: String,
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    pub throttle: Option<FaultThrottle>,
}

/// Switchyard's L4 mirroring filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// `mirror.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// The shadow cluster's name.
    pub cluster: String,
    /// Connections mirrored, per million.
    pub per_million: u32,
    /// Bytes waiting for the shadow at most, per connection.
    pub max_buffered_bytes: u32,
}

/// Envoy's connection limit network filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimitConfig {
    /// `connection_limit.<stat_prefix>.*`; chains with one prefix share one count.
    pub stat_prefix: String,
    /// At least 1.
    pub max_connections: u64,
    /// Hold a refused connection this long before closing it.
    pub delay: Option<Duration>,
}

/// Envoy's RBAC network filter, its rules compiled (and shared by every FIB built from
/// them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacConfig {
    /// `<stat_prefix>.rbac.*` (required).
    pub stat_prefix: String,
    /// The shadow counters' own prefix after `<stat_prefix>.rbac.`.
    pub shadow_rules_stat_prefix: String,
    /// `rules`; `None`: every connection is allowed.
    pub rules: Option<std::sync::Arc<switchyard_dataplane::rbac::Rbac>>,
    /// `shadow_rules`: decided and counted, never enforced.
    pub shadow_rules: Option<std::sync::Arc<switchyard_dataplane::rbac::Rbac>>,
    /// `enforcement_type: CONTINUOUS`.
    pub continuous: bool,
}

/// Switchyard's per-source limits: filters with one `stat_prefix` share its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLimitConfig {
    /// `source_limit.<stat_prefix>.*` (required).
    pub stat_prefix: String,
    /// The sources' prefixes, limits and the table's size.
    pub settings: switchyard_dataplane::source_limit::SourceLimitSettings,
}

/// Envoy's local rate limit network filter: a token bucket of new connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRateLimitConfig {
    /// `local_rate_limit.<stat_prefix>.rate_limited`.
    pub stat_prefix: String,
    /// The bucket starts full (0: it never holds a token, and every connection is limited,
    /// as in Envoy).
    pub max_tokens: u32,
    /// At least 1 (default 1).
    pub tokens_per_fill: u32,
    /// At least 50 ms, as Envoy requires.
    pub fill_interval: Duration,
    /// Filters with the same key share one bucket (empty: this filter's own).
    pub share_key: String,
}

/// Envoy's tcp_proxy network filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpProxyConfig {
    /// Non-empty; stats are `tcp.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// Where connections go.
    pub route: RouteConfig,
    /// `None` disables the idle timeout (`0s` in the config).
    pub idle_timeout: Option<Duration>,
    /// At least 1.
    pub max_connect_attempts: u32,
    /// `hash_policy: [{source_ip: {}}]`: hashing balancers key on the client's IP.
    pub hash_source_ip: bool,
    /// Access logs written when a connection closes.
    pub access_logs: Vec<AccessLogConfig>,
    /// `tunneling_config`: each connection is a CONNECT stream to its cluster, which must
    /// have [`ClusterConfig::http2`] (checked against the bootstrap's clusters by `convert`,
    /// and at compile for clusters from CDS: one without it is no route).
    pub tunneling: Option<Arc<Tunneling>>,
}

/// The tcp_proxy's or udp_proxy's destination, by cluster name (a name may be missing from
/// the clusters: Envoy accepts that and counts `downstream_cx_no_route` /
/// `downstream_sess_no_route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteConfig {
    /// `cluster`.
    Cluster(String),
    /// `weighted_clusters`: at least one entry, every weight at least 1.
    Weighted(Vec<WeightedClusterConfig>),
}

impl RouteConfig {
    /// The cluster names, in config order.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        let (single, weighted): (Option<&String>, &[WeightedClusterConfig]) = match self {
            RouteConfig::Cluster(name) => (Some(name), &[]),
            RouteConfig::Weighted(entries) => (None, entries),
        };
        single
            .map(String::as_str)
            .into_iter()
            .chain(weighted.iter().map(|w| w.name.as_str()))
    }
}

/// One entry of `weighted_clusters.clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedClusterConfig {
    /// Cluster name.
    pub name: String,
    /// At least 1.
    pub weight: u32,
}

/// One access log: where, and in which format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Stdout, stderr or a file.
    pub path: LogPath,
    /// Compiled format.
    pub format: LogFormat,
    /// `filter` (`response_flag_filter`), or every connection.
    pub filter: LogFilter,
}

/// A cluster of static endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Unique, non-empty name.
    pub name: String,
    /// `alt_stat_name`: the name stats and access logs show instead of `name` (Envoy's
    /// observability name); `None` shows `name`.
    pub alt_stat_name: Option<String>,
    /// Greater than zero.
    pub connect_timeout: Duration,
    /// `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB; 0: no limit): the most
    /// one receive from a backend takes, and what a connection may hold for its backend
    /// before it stops reading from the client. No effect on UDP sessions (nor in Envoy's
    /// `udp_proxy`).
    pub buffer_limit_bytes: u32,
    /// Load-balancing policy (`choice_count` >= 2 for least request).
    pub lb_policy: LbPolicy,
    /// Endpoints by priority, in config order within one; for an EDS cluster, the last assignment
    /// received (empty until one arrives). Shared, not copied, between the xDS state, the
    /// composed RIB and the compile cache: an unchanged list is recognised by pointer.
    pub endpoints: Arc<[EndpointConfig]>,
    /// `type: EDS`: the assignment's name to watch (`eds_cluster_config.service_name`, or the
    /// cluster's name); `None` for a static cluster.
    pub eds_service: Option<String>,
    /// Where an EDS cluster's assignment comes from (`eds_cluster_config.eds_config`); `Ads`
    /// for a cluster that is not EDS.
    pub eds_source: XdsSource,
    /// `upstream_bind_config`: socket setup before each connect.
    pub upstream_bind: UpstreamBind,
    /// `circuit_breakers` (priority DEFAULT), Envoy's defaults when not given.
    pub circuit_breakers: CircuitBreakers,
    /// `health_checks`, `outlier_detection`, `common_lb_config.healthy_panic_threshold`.
    pub health: HealthPolicy,
    /// Received over xDS (CDS) rather than from the bootstrap.
    pub added_via_api: bool,
    /// `type: STRICT_DNS` or `LOGICAL_DNS`: the names to resolve and how; `None` for the
    /// other types. `endpoints` is then what the last answers resolved to (empty in what
    /// `convert` returns: a name is resolved only on the `dns` thread, never by `validate`).
    pub dns: Option<Arc<DnsCluster>>,
    /// `transport_socket` with an `UpstreamTlsContext`: connections to the endpoints speak
    /// TLS; `None`: plaintext (no transport socket, or `raw_buffer`).
    pub tls: Option<ClusterTlsConfig>,
    /// `transport_socket` `envoy.transport_sockets.upstream_proxy_protocol`: a PROXY header
    /// starts each connection (around `tls`, or plaintext).
    pub proxy_protocol: Option<UpstreamProxyProtocol>,
    /// `typed_extension_protocol_options` `HttpProtocolOptions` with
    /// `explicit_http_config.http2_protocol_options` (or the deprecated
    /// `http2_protocol_options`): the endpoints speak HTTP/2, with these settings; what a
    /// tcp_proxy's `tunneling_config` needs.
    pub http2: Option<Http2Upstream>,
    /// `type: ORIGINAL_DST` with `original_dst_lb_config: {use_http_header: true,
    /// http_header_name: ":authority"}`: an HBONE stream goes where its `:authority` says.
    pub original_dst_authority: bool,
}

/// A STRICT_DNS or LOGICAL_DNS cluster's discovery: what to resolve ([`DnsQuery`]), with
/// which resolver, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCluster {
    /// The names, the family, the cluster type: what decides its hosts.
    pub query: Arc<DnsQuery>,
    /// The cluster's own resolver (`typed_dns_resolver_config`, `dns_resolution_config`,
    /// `dns_resolvers`), or `None`: the bootstrap's ([`Rib::dns_resolver`]).
    pub resolver: Option<Arc<DnsResolverConfig>>,
    /// `dns_refresh_rate` (Envoy's default 5 s, more than 1 ms).
    pub refresh_rate: Duration,
    /// `respect_dns_ttl`: after a good answer, resolve again after its smallest TTL.
    pub respect_dns_ttl: bool,
    /// `dns_failure_refresh_rate`: the jittered exponential backoff after a failure; `None`:
    /// `refresh_rate` after a failure too.
    pub failure_refresh: Option<RefreshBackoff>,
    /// `dns_jitter`: up to this much (exclusive) is added to each refresh after a good
    /// answer; zero for none.
    pub jitter: Duration,
    /// `wait_for_warm_on_init` (default true): at start, listeners open once this cluster's
    /// names have had their first answer (or failure).
    pub wait_for_warm_on_init: bool,
}

/// What a DNS cluster resolves: its hosts follow from this and the answers alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// LOGICAL_DNS (one host: the first address of the latest answer) rather than
    /// STRICT_DNS (every address of every name a host).
    pub logical: bool,
    /// The `load_assignment`'s endpoints, in config order (one for LOGICAL_DNS).
    pub targets: Vec<DnsTarget>,
    /// `dns_lookup_family` (default AUTO).
    pub family: DnsLookupFamily,
}

/// One endpoint of a DNS cluster's `load_assignment`: a name resolved into hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    /// `socket_address.address`: a host name (or an IP literal, which resolves to itself),
    /// without a trailing dot unless the config has one.
    pub name: String,
    /// `socket_address.port_value`, non-zero: every resolved host's port.
    pub port: u16,
    /// `load_balancing_weight` of every host it resolves to (at least 1).
    pub weight: u32,
    /// The locality's `priority` (always 0 for LOGICAL_DNS, as Envoy rewrites it).
    pub priority: u32,
    /// The `LocalityLbEndpoints` group it came from.
    pub locality: Locality,
}

/// Envoy's `dns_lookup_family`, with its c-ares resolver's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsLookupFamily {
    /// AAAA; if that gives no address, A (Envoy's default; "V6_PREFERRED").
    Auto,
    /// A only.
    V4Only,
    /// AAAA only.
    V6Only,
    /// A; if that gives no address, AAAA.
    V4Preferred,
    /// A and AAAA, every address of both.
    All,
}

/// `dns_failure_refresh_rate`: Envoy's jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshBackoff {
    /// `base_interval` (more than 1 ms).
    pub base: Duration,
    /// `max_interval` (default 10 x `base`, at least `base`).
    pub max: Duration,
}

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH_RATE: Duration = Duration::from_secs(5);

/// A DNS resolver: Envoy's `envoy.network.dns_resolver.cares` (also what the deprecated
/// `dns_resolvers` / `use_tcp_for_dns_lookups` / `dns_resolution_config` fields mean) or
/// `envoy.network.dns_resolver.getaddrinfo`. Equal configs share one resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsResolverConfig {
    /// c-ares' settings, resolved with hickory-resolver. The default (no config at all):
    /// the system's name servers and search list.
    Cares(CaresResolver),
    /// The system's `getaddrinfo()` (on a blocking thread of the `dns` thread's runtime).
    /// It has no TTL: Envoy's 60 s stands in for one.
    GetAddrInfo,
}

impl Default for DnsResolverConfig {
    /// Envoy's default resolver: c-ares with the system's configuration.
    fn default() -> Self {
        DnsResolverConfig::Cares(CaresResolver::default())
    }
}

/// `CaresDnsResolverConfig` (or its deprecated spellings).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CaresResolver {
    /// `resolvers` (port 53 when 0); empty: the system's (`/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
    /// `use_resolvers_as_fallback`: `resolvers` only when the system has no name server.
    pub resolvers_as_fallback: bool,
    /// `dns_resolver_options.use_tcp_for_dns_lookups`.
    pub use_tcp: bool,
    /// `dns_resolver_options.no_default_search_domain`: names are queried as they are,
    /// never with the system's search domains.
    pub no_default_search_domain: bool,
    /// `query_timeout_seconds` (c-ares' default 2 s when `None`).
    pub query_timeout: Option<Duration>,
    /// `query_tries` (c-ares' default 3 when `None`), at least 1.
    pub query_tries: Option<u32>,
}

impl ClusterConfig {
    /// The name stats and access logs show: `alt_stat_name`, or the cluster's name.
    pub fn observability_name(&self) -> &str {
        self.alt_stat_name.as_deref().unwrap_or(&self.name)
    }
}

/// One static endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// IP address and non-zero port.
    pub address: SocketAddr,
    /// `load_balancing_weight`, at least 1 (default 1).
    pub weight: u32,
    /// The locality's `priority` (0 first).
    pub priority: u32,
    /// The `LocalityLbEndpoints` group it came from (its weight and name).
    pub locality: Locality,
    /// Its metadata's HBONE tunnel (`switchyard.hbone`): the node proxy a tunnelled
    /// connection reaches it through.
    pub tunnel: Option<SocketAddr>,
}

/// Whole milliseconds of `d`, rounded up so that a non-zero duration never becomes zero
/// (saturating at `u64::MAX`).
pub fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}
