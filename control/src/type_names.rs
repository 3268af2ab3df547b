//! The `@type` names (full message names) of the extensions Switchyard accepts in a
//! `typed_config`: Envoy's and Switchyard's own. A leaf: the walker (`config`) whitelists
//! them and `convert` dispatches on them, neither importing the other.

pub(crate) const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
/// HBONE's termination: `envoy.filters.network.http_connection_manager`, CONNECT only.
pub(crate) const HTTP_CONNECTION_MANAGER: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// The connection manager's one HTTP filter, `envoy.filters.http.router`.
pub(crate) const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
pub(crate) const STDOUT_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
pub(crate) const STDERR_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
pub(crate) const FILE_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
pub(crate) const CONNECTION_LIMIT: &str =
    "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit";
pub(crate) const LOCAL_RATELIMIT: &str =
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";
pub(crate) const RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
pub(crate) const ORIGINAL_DST_FILTER: &str =
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
pub(crate) const ORIGINAL_SRC_FILTER: &str =
    "envoy.extensions.filters.listener.original_src.v3.OriginalSrc";
pub(crate) const PROXY_PROTOCOL: &str =
    "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol";
pub(crate) const TLS_INSPECTOR: &str =
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
pub(crate) const UDP_PROXY: &str = "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";
pub(crate) const UDP_ROUTE: &str = "envoy.extensions.filters.udp.udp_proxy.v3.Route";
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The overload manager's global downstream connection limit.
pub(crate) const DOWNSTREAM_CONNECTIONS_MONITOR: &str =
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
pub(crate) const CARES_RESOLVER: &str =
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";
pub(crate) const GETADDRINFO_RESOLVER: &str =
    "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig";
/// The typed load balancing policies (a cluster's `load_balancing_policy`).
pub(crate) const ROUND_ROBIN_POLICY: &str =
    "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin";
pub(crate) const LEAST_REQUEST_POLICY: &str =
    "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
pub(crate) const RANDOM_POLICY: &str = "envoy.extensions.load_balancing_policies.random.v3.Random";
pub(crate) const RING_HASH_POLICY: &str =
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash";
pub(crate) const MAGLEV_POLICY: &str = "envoy.extensions.load_balancing_policies.maglev.v3.Maglev";

/// `@type` of the fault filter's config.
pub const FAULT: &str = "switchyard.filters.network.fault.v1.Fault";
/// `@type` of the mirror filter's config.
pub const MIRROR: &str = "switchyard.filters.network.mirror.v1.Mirror";
/// `@type` of the per-source limits filter's config.
pub const SOURCE_LIMIT: &str = "switchyard.filters.network.source_limit.v1.SourceLimit";
/// `@type` of the listener filter naming the peers a PROXY protocol filter trusts.
pub const TRUSTED_SOURCES: &str = "switchyard.filters.listener.proxy_protocol.v1.TrustedSources";
/// `@type` of an endpoint's HBONE tunnel (its typed metadata under [`HBONE_TUNNEL_KEY`]).
pub const HBONE_TUNNEL: &str = "switchyard.config.endpoint.v1.HboneTunnel";
/// The `typed_filter_metadata` key of an endpoint's [`HBONE_TUNNEL`].
pub const HBONE_TUNNEL_KEY: &str = "switchyard.hbone";
/// `@type` of the UDP proxy's weighted route (the action of its matcher).
pub const UDP_WEIGHTED_ROUTE: &str = "switchyard.filters.udp.udp_proxy.v1.WeightedRoute";

/// `filter_chain_matcher`: the action naming a filter chain.
pub(crate) const STRING_VALUE: &str = "google.protobuf.StringValue";
/// `filter_chain_matcher`: the IP matcher (`envoy.matching.custom_matchers.trie_matcher`).
pub(crate) const IP_MATCHER: &str = "xds.type.matcher.v3.IPMatcher";
/// The network inputs of the matching API (`envoy.matching.inputs.*`).
pub(crate) const DESTINATION_IP_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput";
pub(crate) const DESTINATION_PORT_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput";
pub(crate) const SOURCE_IP_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput";
pub(crate) const SOURCE_PORT_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput";
pub(crate) const DIRECT_SOURCE_IP_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput";
pub(crate) const SOURCE_TYPE_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.SourceTypeInput";
/// Inputs that read what the TLS inspector detected.
pub(crate) const SERVER_NAME_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput";
pub(crate) const TRANSPORT_PROTOCOL_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.TransportProtocolInput";
pub(crate) const APPLICATION_PROTOCOL_INPUT: &str =
    "envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput";

/// `envoy.transport_sockets.tls` on a filter chain: TLS termination.
pub(crate) const DOWNSTREAM_TLS: &str =
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// `envoy.transport_sockets.tls` on a cluster: TLS origination.
pub(crate) const UPSTREAM_TLS: &str =
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// `envoy.transport_sockets.upstream_proxy_protocol` on a cluster: a PROXY header first,
/// around a plaintext or TLS socket.
pub(crate) const UPSTREAM_PROXY_PROTOCOL: &str =
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";
/// `envoy.transport_sockets.raw_buffer`: plaintext (the same as no transport socket).
pub(crate) const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
