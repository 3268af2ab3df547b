//! The walker: checks a bootstrap, as a JSON value, against the Envoy message descriptors and
//! Switchyard's whitelist before anything is decoded.
//!
//! Guarantees, each error naming the field's full path:
//! - a key that is no field of its message (a typo) is rejected as unknown;
//! - a field Envoy has but Switchyard does not handle is rejected as not supported, so nothing
//!   in a config is ever silently ignored;
//! - `typed_config` (`google.protobuf.Any`) is resolved through its `@type` and walked as the
//!   message it names; only the extension types listed for that field are accepted;
//! - scalar values have the JSON type and range the proto3 JSON mapping requires (durations
//!   like `"1.5s"`, enum names, 64-bit integers as strings, ...);
//! - two members of one `oneof`, or one field under both its names, are rejected.
//!
//! Semantic checks (duplicates, ports, addresses) come later, in `convert`.

use super::lenient;
use crate::duration::{check_duration, parse_duration};
use crate::error::{ConfigError, ErrorKind};
use crate::path::{field, index};
use crate::type_names::{
    APPLICATION_PROTOCOL_INPUT, CARES_RESOLVER, CONNECTION_LIMIT, DESTINATION_IP_INPUT,
    DESTINATION_PORT_INPUT, DIRECT_SOURCE_IP_INPUT, DOWNSTREAM_CONNECTIONS_MONITOR, FAULT,
    FILE_LOG, GETADDRINFO_RESOLVER, HBONE_TUNNEL, HTTP_CONNECTION_MANAGER, HTTP_PROTOCOL_OPTIONS,
    IP_MATCHER, LEAST_REQUEST_POLICY, LOCAL_RATELIMIT, MAGLEV_POLICY, MIRROR, ORIGINAL_DST_FILTER,
    ORIGINAL_SRC_FILTER, PROXY_PROTOCOL, RANDOM_POLICY, RBAC, RING_HASH_POLICY, ROUND_ROBIN_POLICY,
    ROUTER, SERVER_NAME_INPUT, SOURCE_IP_INPUT, SOURCE_LIMIT, SOURCE_PORT_INPUT, SOURCE_TYPE_INPUT,
    STDERR_LOG, STDOUT_LOG, STRING_VALUE, TCP_PROXY, TLS_INSPECTOR, TRANSPORT_PROTOCOL_INPUT,
    TRUSTED_SOURCES, UDP_PROXY, UDP_ROUTE, UDP_WEIGHTED_ROUTE,
};
use crate::type_names::{DOWNSTREAM_TLS, RAW_BUFFER, UPSTREAM_PROXY_PROTOCOL, UPSTREAM_TLS};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::Value;
use std::collections::HashMap;

/// Fields Switchyard supports, by message: any other field is "not supported by Switchyard".
/// A message missing from this table can only be reached through a field that is not listed.
const SUPPORTED: &[(&str, &[&str])] = &[
    (
        "envoy.config.bootstrap.v3.Bootstrap",
        &[
            "node",
            "admin",
            "static_resources",
            "dynamic_resources",
            "typed_dns_resolver_config",
            "dns_resolution_config",
            "use_tcp_for_dns_lookups",
            "layered_runtime",
            "overload_manager",
            "cluster_manager",
            // Tag extraction and the stats matcher (`convert::stats_config`).
            "stats_config",
        ],
    ),
    // The outlier event log only: `local_cluster_name` (zone-aware routing), load reports
    // (`load_stats_config`) and the event service are not supported.
    (
        "envoy.config.bootstrap.v3.ClusterManager",
        &["outlier_detection"],
    ),
    (
        "envoy.config.bootstrap.v3.ClusterManager.OutlierDetection",
        &["event_log_path"],
    ),
    // Static and admin layers; disk and RTDS layers are not read.
    (
        "envoy.config.bootstrap.v3.LayeredRuntime",
        &["layers"],
    ),
    (
        "envoy.config.bootstrap.v3.RuntimeLayer",
        &["name", "static_layer", "admin_layer"],
    ),
    ("envoy.config.bootstrap.v3.RuntimeLayer.AdminLayer", &[]),
    // The global downstream connection monitor only: `refresh_interval` paces monitors that
    // are sampled, which the connection count is not (Envoy checks it at each accept), so it
    // has no effect here as in Envoy with only this monitor.
    (
        "envoy.config.overload.v3.OverloadManager",
        &["refresh_interval", "resource_monitors"],
    ),
    (
        "envoy.config.overload.v3.ResourceMonitor",
        &["name", "typed_config"],
    ),
    (
        DOWNSTREAM_CONNECTIONS_MONITOR,
        &["max_active_downstream_connections"],
    ),
    (
        "envoy.config.metrics.v3.StatsConfig",
        &["stats_tags", "use_all_default_tags", "stats_matcher"],
    ),
    (
        "envoy.config.metrics.v3.TagSpecifier",
        &["tag_name", "regex", "fixed_value"],
    ),
    (
        "envoy.config.metrics.v3.StatsMatcher",
        &["reject_all", "exclusion_list", "inclusion_list"],
    ),
    ("envoy.type.matcher.v3.ListStringMatcher", &["patterns"]),
    (
        "envoy.type.matcher.v3.StringMatcher",
        &[
            "exact",
            "prefix",
            "suffix",
            "contains",
            "safe_regex",
            "ignore_case",
        ],
    ),
    ("envoy.type.matcher.v3.RegexMatcher", &["regex"]),
    (
        "envoy.config.bootstrap.v3.Bootstrap.DynamicResources",
        &["lds_config", "cds_config", "ads_config"],
    ),
    (
        "envoy.config.core.v3.ConfigSource",
        &[
            "ads",
            "api_config_source",
            "path",
            "path_config_source",
            "initial_fetch_timeout",
            "resource_api_version",
        ],
    ),
    (
        "envoy.config.core.v3.PathConfigSource",
        &["path", "watched_directory"],
    ),
    ("envoy.config.core.v3.WatchedDirectory", &["path"]),
    ("envoy.config.core.v3.AggregatedConfigSource", &[]),
    (
        "envoy.config.core.v3.ApiConfigSource",
        &[
            "api_type",
            "transport_api_version",
            "grpc_services",
            "set_node_on_first_message_only",
        ],
    ),
    (
        "envoy.config.core.v3.GrpcService",
        &["envoy_grpc", "timeout", "initial_metadata"],
    ),
    ("envoy.config.core.v3.HeaderValue", &["key", "value"]),
    (
        "envoy.config.core.v3.GrpcService.EnvoyGrpc",
        &["cluster_name", "retry_policy"],
    ),
    ("envoy.config.core.v3.RetryPolicy", &["retry_back_off"]),
    (
        "envoy.config.core.v3.BackoffStrategy",
        &["base_interval", "max_interval"],
    ),
    ("envoy.config.core.v3.Node", &["id", "cluster", "metadata", "locality"]),
    (
        "envoy.config.bootstrap.v3.Admin",
        &[
            "address",
            "access_log",
            "access_log_path",
            "ignore_global_conn_limit",
            // Where Envoy's /cpuprofiler writes. Switchyard has no profiler endpoint (and the
            // Envoy 1.40 build compared against fails to start its profiler), so no effect:
            // kept in /config_dump, README says so.
            "profile_path",
        ],
    ),
    ("envoy.config.core.v3.Address", &["socket_address", "pipe"]),
    ("envoy.config.core.v3.Pipe", &["path", "mode"]),
    (
        "envoy.config.core.v3.SocketAddress",
        &["protocol", "address", "port_value"],
    ),
    (
        "envoy.config.bootstrap.v3.Bootstrap.StaticResources",
        &["listeners", "clusters", "secrets"],
    ),
    (
        "envoy.config.listener.v3.Listener",
        &[
            "name",
            "address",
            "filter_chains",
            "default_filter_chain",
            "use_original_dst",
            "listener_filters",
            "transparent",
            "udp_listener_config",
            "filter_chain_matcher",
            // Informational in Envoy on Linux (tracing and Windows' original_dst use it):
            // kept in /config_dump, no effect on forwarding. README says so.
            "traffic_direction",
            // Envoy: whether POST /healthcheck/fail makes the listener's drain decision
            // "close" (DEFAULT) or not (MODIFY_ONLY). Only HTTP's connection manager asks that
            // decision; tcp_proxy and udp_proxy never do, and a failed health check stops no
            // listener (in Envoy or Switchyard). So no effect at L4: kept in /config_dump,
            // README says so (tests/listener_options.rs checks it against Envoy).
            "drain_type",
            "enable_reuse_port",
            "reuse_port",
            // Watermarks on client connections (`relay::BufferLimits`); no effect on a UDP
            // listener, as in Envoy.
            "per_connection_buffer_limit_bytes",
            // Bounds each worker's accepts per completion batch (TCP); no effect on a UDP
            // listener, which accepts nothing (as in Envoy).
            "max_connections_to_accept_per_socket_event",
            // More addresses with the same chains: one FIB listener per address.
            "additional_addresses",
            // A line per connection at close, chain or not (refused on a UDP listener).
            "access_log",
            // Counted toward the global connection limit, never refused by it; no effect on a
            // UDP listener, whose sessions are not counted (as in Envoy).
            "ignore_global_conn_limit",
            // The TLS inspector's deadline, and what happens past it (no effect on a listener
            // without one: no other listener filter waits for bytes).
            "listener_filters_timeout",
            "continue_on_listener_filters_timeout",
        ],
    ),
    (
        "envoy.config.listener.v3.AdditionalAddress",
        &["address"],
    ),
    (
        "envoy.config.listener.v3.UdpListenerConfig",
        &["downstream_socket_config"],
    ),
    (
        "envoy.config.core.v3.UdpSocketConfig",
        &["max_rx_datagram_size", "prefer_gro"],
    ),
    (
        UDP_PROXY,
        &[
            "stat_prefix",
            "cluster",
            "matcher",
            "idle_timeout",
            "hash_policies",
            "use_original_src_ip",
            "use_per_packet_load_balancing",
            "upstream_socket_config",
        ],
    ),
    (
        "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig.HashPolicy",
        &["source_ip"],
    ),
    // The matching API: a listener's `filter_chain_matcher` (`convert::chain_matcher`) and
    // the UDP proxy's matcher (`convert::udp`, which takes only `on_no_match` with an action);
    // each refuses by path what its place does not support.
    (
        "xds.type.matcher.v3.Matcher",
        &["on_no_match", "matcher_list", "matcher_tree"],
    ),
    (
        "xds.type.matcher.v3.Matcher.OnMatch",
        &["action", "matcher", "keep_matching"],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherList", &["matchers"]),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.FieldMatcher",
        &["predicate", "on_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate",
        &[
            "single_predicate",
            "or_matcher",
            "and_matcher",
            "not_matcher",
        ],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate",
        &["input", "value_match"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.PredicateList",
        &["predicate"],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherTree",
        &[
            "input",
            "exact_match_map",
            "prefix_match_map",
            "custom_match",
        ],
    ),
    ("xds.type.matcher.v3.Matcher.MatcherTree.MatchMap", &["map"]),
    (
        "xds.type.matcher.v3.StringMatcher",
        &["exact", "prefix", "suffix", "contains", "ignore_case"],
    ),
    (IP_MATCHER, &["range_matchers"]),
    (
        "xds.type.matcher.v3.IPMatcher.IPRangeMatcher",
        &["ranges", "on_match", "exclusive"],
    ),
    ("xds.core.v3.CidrRange", &["address_prefix", "prefix_len"]),
    // A filter chain's name, as a matcher action.
    (STRING_VALUE, &["value"]),
    (DESTINATION_IP_INPUT, &[]),
    (DESTINATION_PORT_INPUT, &[]),
    (SOURCE_IP_INPUT, &[]),
    (SOURCE_PORT_INPUT, &[]),
    (DIRECT_SOURCE_IP_INPUT, &[]),
    (SOURCE_TYPE_INPUT, &[]),
    // What the TLS inspector read (none, raw_buffer and none without one).
    (SERVER_NAME_INPUT, &[]),
    (TRANSPORT_PROTOCOL_INPUT, &[]),
    (APPLICATION_PROTOCOL_INPUT, &[]),
    (
        "xds.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (UDP_ROUTE, &["cluster"]),
    (
        "envoy.config.listener.v3.ListenerFilter",
        &["name", "typed_config"],
    ),
    (ORIGINAL_DST_FILTER, &[]),
    (
        CONNECTION_LIMIT,
        &["stat_prefix", "max_connections", "delay"],
    ),
    // `runtime_enabled` is refused (no runtime key turns it off here).
    (LOCAL_RATELIMIT, &["stat_prefix", "token_bucket", "share_key"]),
    // `matcher`, `shadow_matcher` and `delay_deny` are refused (`convert::rbac`).
    (
        RBAC,
        &[
            "rules",
            "shadow_rules",
            "stat_prefix",
            "shadow_rules_stat_prefix",
            "enforcement_type",
        ],
    ),
    // Audit logging is refused.
    ("envoy.config.rbac.v3.RBAC", &["action", "policies"]),
    // CEL conditions are refused.
    (
        "envoy.config.rbac.v3.Policy",
        &["permissions", "principals"],
    ),
    // The L4 rules; HTTP's, metadata and extensions are refused.
    (
        "envoy.config.rbac.v3.Permission",
        &[
            "and_rules",
            "or_rules",
            "any",
            "destination_ip",
            "destination_port",
            "destination_port_range",
            "not_rule",
            "requested_server_name",
        ],
    ),
    ("envoy.config.rbac.v3.Permission.Set", &["rules"]),
    (
        "envoy.config.rbac.v3.Principal",
        &[
            "and_ids",
            "or_ids",
            "any",
            "authenticated",
            "source_ip",
            "direct_remote_ip",
            "remote_ip",
            "not_id",
        ],
    ),
    ("envoy.config.rbac.v3.Principal.Set", &["ids"]),
    (
        "envoy.config.rbac.v3.Principal.Authenticated",
        &["principal_name"],
    ),
    ("envoy.type.v3.Int32Range", &["start", "end"]),
    (
        "envoy.type.v3.TokenBucket",
        &["max_tokens", "tokens_per_fill", "fill_interval"],
    ),
    (ORIGINAL_SRC_FILTER, &["mark"]),
    // `convert::proxy_protocol` refuses `rules` and a `tlv_location` other than the
    // default, by path.
    (
        PROXY_PROTOCOL,
        &[
            "rules",
            "allow_requests_without_proxy_protocol",
            "pass_through_tlvs",
            "disallowed_versions",
            "stat_prefix",
            "tlv_location",
        ],
    ),
    // Reached only to be refused (by `convert`, or here when they carry fields).
    (
        "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol.Rule",
        &[],
    ),
    (
        "envoy.config.core.v3.ProxyProtocolPassThroughTLVs",
        &["match_type", "tlv_type"],
    ),
    // `convert::listener` refuses the fingerprints when enabled (Switchyard computes none).
    (
        TLS_INSPECTOR,
        &[
            "enable_ja3_fingerprinting",
            "enable_ja4_fingerprinting",
            "initial_read_buffer_size",
            "close_connection_on_client_hello_parsing_errors",
            "max_client_hello_size",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChain",
        &[
            "name",
            "filter_chain_match",
            "filters",
            // TLS termination (`convert::tls`): a DownstreamTlsContext, or raw_buffer.
            "transport_socket",
            // The TLS handshake's deadline.
            "transport_socket_connect_timeout",
        ],
    ),
    (
        "envoy.config.listener.v3.FilterChainMatch",
        &[
            "destination_port",
            "prefix_ranges",
            "server_names",
            "transport_protocol",
            "application_protocols",
            "direct_source_prefix_ranges",
            "source_type",
            "source_prefix_ranges",
            "source_ports",
        ],
    ),
    (
        "envoy.config.core.v3.CidrRange",
        &["address_prefix", "prefix_len"],
    ),
    ("envoy.config.listener.v3.Filter", &["name", "typed_config"]),
    (
        TCP_PROXY,
        &[
            "stat_prefix",
            "cluster",
            "weighted_clusters",
            "idle_timeout",
            "max_connect_attempts",
            "access_log",
            "hash_policy",
            // HBONE's origination (`convert::hbone`): the connection is a CONNECT stream.
            "tunneling_config",
        ],
    ),
    // `use_post`, `post_path`, the response propagation and request ids are refused.
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig",
        &["hostname", "headers_to_add"],
    ),
    // `keep_empty_value` is refused; `append_action` takes the two that add or overwrite
    // (`convert::hbone`).
    (
        "envoy.config.core.v3.HeaderValueOption",
        &["header", "append", "append_action"],
    ),
    // HBONE's termination (`convert::hbone`): the connection manager in exactly the shape
    // that terminates HTTP/2 CONNECT into the chain's proxying; every other field (RDS,
    // HTTP/1, tracing, timeouts other than the streams' and the connection's idle ones, ...)
    // is refused.
    (
        HTTP_CONNECTION_MANAGER,
        &[
            "stat_prefix",
            "codec_type",
            "http2_protocol_options",
            "upgrade_configs",
            "route_config",
            "http_filters",
            "access_log",
            "stream_idle_timeout",
            "common_http_protocol_options",
        ],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig",
        &["upgrade_type"],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
        &["name", "typed_config"],
    ),
    // The router takes no field: its defaults are what proxying a CONNECT stream does.
    (ROUTER, &[]),
    // Inline routes only. `name`s label the route table and its virtual host in
    // /config_dump (a virtual host's is required, as in Envoy); nothing matches on them.
    (
        "envoy.config.route.v3.RouteConfiguration",
        &["name", "virtual_hosts"],
    ),
    (
        "envoy.config.route.v3.VirtualHost",
        &["name", "domains", "routes"],
    ),
    ("envoy.config.route.v3.Route", &["match", "route"]),
    ("envoy.config.route.v3.RouteMatch", &["connect_matcher"]),
    ("envoy.config.route.v3.RouteMatch.ConnectMatcher", &[]),
    (
        "envoy.config.route.v3.RouteAction",
        &["cluster", "upgrade_configs"],
    ),
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig",
        &["upgrade_type", "connect_config"],
    ),
    // `proxy_protocol_config` and `allow_post` are refused.
    (
        "envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig",
        &[],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        &["clusters"],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        &["name", "weight"],
    ),
    (
        "envoy.config.accesslog.v3.AccessLog",
        &["name", "typed_config", "filter"],
    ),
    (
        "envoy.config.accesslog.v3.AccessLogFilter",
        &["response_flag_filter"],
    ),
    ("envoy.config.accesslog.v3.ResponseFlagFilter", &["flags"]),
    (STDOUT_LOG, &["log_format"]),
    (STDERR_LOG, &["log_format"]),
    (FILE_LOG, &["path", "log_format", "format", "json_format"]),
    (
        "envoy.config.core.v3.SubstitutionFormatString",
        &["text_format", "text_format_source", "json_format"],
    ),
    // Where each holder reads one from: an access log's `text_format_source` takes
    // `inline_string` only (`convert::access_log`), TLS certificates, keys, CAs and ticket
    // keys take all four (`convert::tls`).
    (
        "envoy.config.core.v3.DataSource",
        &[
            "inline_string",
            "inline_bytes",
            "filename",
            "environment_variable",
        ],
    ),
    // `envoy.transport_sockets.tls` (`convert::tls`): files and inline PEM only; SDS,
    // certificate providers, custom handshakers, key logs, OCSP and SCTs are refused by path.
    ("envoy.config.core.v3.TransportSocket", &["name", "typed_config"]),
    (RAW_BUFFER, &[]),
    // `convert::cluster` refuses `tlv_as_pool_key: true` (no connection pools).
    (
        UPSTREAM_PROXY_PROTOCOL,
        &[
            "config",
            "transport_socket",
            "allow_unspecified_address",
            "tlv_as_pool_key",
        ],
    ),
    (
        "envoy.config.core.v3.ProxyProtocolConfig",
        &["version", "pass_through_tlvs", "added_tlvs"],
    ),
    ("envoy.config.core.v3.TlvEntry", &["type", "value"]),
    (
        DOWNSTREAM_TLS,
        &[
            "common_tls_context",
            "require_client_certificate",
            "session_ticket_keys",
            "disable_stateless_session_resumption",
            // Switchyard keeps no stateful session cache at all (session tickets only), so
            // this is what it does either way (README: fields with no effect).
            "disable_stateful_session_resumption",
            // The default (LENIENT_STAPLING) only: no OCSP staple can be configured.
            "ocsp_staple_policy",
        ],
    ),
    (
        UPSTREAM_TLS,
        &[
            "common_tls_context",
            "sni",
            "max_session_keys",
            "allow_renegotiation",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys",
        &["keys"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            "tls_params",
            "tls_certificates",
            "tls_certificate_sds_secret_configs",
            "validation_context",
            "validation_context_sds_secret_config",
            "combined_validation_context",
            "alpn_protocols",
        ],
    ),
    // SDS (`convert::tls`, `crate::secrets`): from ADS, a file, or `static_resources.secrets`.
    (
        "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
        &["name", "sds_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
        &["default_validation_context", "validation_context_sds_secret_config"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &["name", "tls_certificate", "validation_context"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
        &[
            "tls_minimum_protocol_version",
            "tls_maximum_protocol_version",
            "cipher_suites",
            "ecdh_curves",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        &["certificate_chain", "private_key"],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        &[
            "trusted_ca",
            "crl",
            "match_typed_subject_alt_names",
            "match_subject_alt_names",
            // Their defaults only (ONLY_VALUE below).
            "allow_expired_certificate",
            "trust_chain_verification",
            "only_verify_leaf_cert_crl",
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
        &["san_type", "matcher"],
    ),
    (
        "envoy.config.cluster.v3.Cluster",
        &[
            "name",
            "type",
            "connect_timeout",
            "lb_policy",
            "load_balancing_policy",
            "least_request_lb_config",
            "ring_hash_lb_config",
            "maglev_lb_config",
            "load_assignment",
            "eds_cluster_config",
            // HTTP/2 to the endpoints (`convert::hbone`): an xDS cluster's gRPC, a tcp_proxy's
            // `tunneling_config` streams.
            "typed_extension_protocol_options",
            // The deprecated form of `typed_extension_protocol_options`'
            // `explicit_http_config.http2_protocol_options`, with the same meaning and the
            // same message. Envoy takes both forms at once (the typed one wins), and so does
            // Switchyard.
            "http2_protocol_options",
            // ORIGINAL_DST by `:authority` (`convert::hbone`).
            "original_dst_lb_config",
            "upstream_bind_config",
            "circuit_breakers",
            "health_checks",
            "outlier_detection",
            "common_lb_config",
            "alt_stat_name",
            "upstream_connection_options",
            "ignore_health_on_host_removal",
            "dns_refresh_rate",
            "dns_jitter",
            "dns_failure_refresh_rate",
            "respect_dns_ttl",
            "dns_lookup_family",
            "dns_resolvers",
            "use_tcp_for_dns_lookups",
            "dns_resolution_config",
            "typed_dns_resolver_config",
            "wait_for_warm_on_init",
            "per_connection_buffer_limit_bytes",
            // TLS origination (`convert::tls`): an UpstreamTlsContext, or raw_buffer.
            "transport_socket",
        ],
    ),
    (
        "envoy.config.cluster.v3.UpstreamConnectionOptions",
        &["tcp_keepalive"],
    ),
    (
        "envoy.config.core.v3.TcpKeepalive",
        &["keepalive_probes", "keepalive_time", "keepalive_interval"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RefreshRate",
        &["base_interval", "max_interval"],
    ),
    (
        "envoy.config.core.v3.DnsResolutionConfig",
        &["resolvers", "dns_resolver_options"],
    ),
    (
        "envoy.config.core.v3.DnsResolverOptions",
        &["use_tcp_for_dns_lookups", "no_default_search_domain"],
    ),
    (
        "envoy.config.core.v3.TypedExtensionConfig",
        &["name", "typed_config"],
    ),
    (
        CARES_RESOLVER,
        &[
            "resolvers",
            "dns_resolver_options",
            "use_resolvers_as_fallback",
            "query_timeout_seconds",
            "query_tries",
        ],
    ),
    (GETADDRINFO_RESOLVER, &[]),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig",
        &[
            "healthy_panic_threshold",
            "update_merge_window",
            "locality_weighted_lb_config",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.CommonLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.config.core.v3.Locality",
        &["region", "zone", "sub_zone"],
    ),
    ("envoy.type.v3.Percent", &["value"]),
    (
        "envoy.config.cluster.v3.OutlierDetection",
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "enforcing_consecutive_5xx",
            "enforcing_success_rate",
            "consecutive_gateway_failure",
            "enforcing_consecutive_gateway_failure",
            "split_external_local_origin_errors",
            "consecutive_local_origin_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_local_origin_success_rate",
            "enforcing_failure_percentage",
            "enforcing_failure_percentage_local_origin",
            "max_ejection_time",
            "max_ejection_time_jitter",
            "successful_active_health_check_uneject_host",
            "always_eject_one_host",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck",
        &[
            "timeout",
            "interval",
            "initial_jitter",
            "interval_jitter",
            "unhealthy_threshold",
            "healthy_threshold",
            "unhealthy_interval",
            "no_traffic_interval",
            "reuse_connection",
            "tcp_health_check",
        ],
    ),
    (
        "envoy.config.core.v3.HealthCheck.TcpHealthCheck",
        &["send", "receive"],
    ),
    (
        "envoy.config.core.v3.HealthCheck.Payload",
        &["text", "binary"],
    ),
    ("envoy.config.cluster.v3.CircuitBreakers", &["thresholds"]),
    (
        "envoy.config.cluster.v3.CircuitBreakers.Thresholds",
        &[
            "priority",
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "track_remaining",
        ],
    ),
    (
        "envoy.config.core.v3.BindConfig",
        &["source_address", "freebind", "socket_options"],
    ),
    (
        "envoy.config.core.v3.SocketOption",
        &[
            "description",
            "level",
            "name",
            "int_value",
            "buf_value",
            "state",
        ],
    ),
    // Explicit HTTP/2 only (`auto_config`, `use_downstream_protocol_config`, HTTP/1 and
    // HTTP/3, filters, ... are refused).
    (
        HTTP_PROTOCOL_OPTIONS,
        &["explicit_http_config", "common_http_protocol_options"],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        &["http2_protocol_options"],
    ),
    // `CommonHttpProtocolOptions`: a pooled connection's idle timeout only.
    ("envoy.config.core.v3.HttpProtocolOptions", &["idle_timeout"]),
    // The settings HBONE uses, on either side; `allow_connect` belongs to the connection
    // manager (`convert::hbone` refuses it on a cluster).
    (
        "envoy.config.core.v3.Http2ProtocolOptions",
        &[
            "allow_connect",
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
        ],
    ),
    (
        "envoy.config.cluster.v3.Cluster.OriginalDstLbConfig",
        &["use_http_header", "http_header_name"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.EdsClusterConfig",
        &["eds_config", "service_name"],
    ),
    ("envoy.config.cluster.v3.LoadBalancingPolicy", &["policies"]),
    (
        "envoy.config.cluster.v3.LoadBalancingPolicy.Policy",
        &["typed_extension_config"],
    ),
    // The typed policies: what maps onto lb_policy and its *_lb_config (convert refuses
    // locality weights for the hashing ones, as with common_lb_config).
    (ROUND_ROBIN_POLICY, &["locality_lb_config"]),
    (LEAST_REQUEST_POLICY, &["choice_count", "locality_lb_config"]),
    (RANDOM_POLICY, &["locality_lb_config"]),
    (
        RING_HASH_POLICY,
        &[
            "hash_function",
            "minimum_ring_size",
            "maximum_ring_size",
            "locality_weighted_lb_config",
        ],
    ),
    (MAGLEV_POLICY, &["table_size", "locality_weighted_lb_config"]),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig",
        &["locality_weighted_lb_config"],
    ),
    (
        "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig",
        &[],
    ),
    (
        "envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
        &["choice_count"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.RingHashLbConfig",
        &["minimum_ring_size", "maximum_ring_size", "hash_function"],
    ),
    (
        "envoy.config.cluster.v3.Cluster.MaglevLbConfig",
        &["table_size"],
    ),
    ("envoy.type.v3.HashPolicy", &["source_ip"]),
    ("envoy.type.v3.HashPolicy.SourceIp", &[]),
    (
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &["cluster_name", "endpoints"],
    ),
    (
        "envoy.config.endpoint.v3.LocalityLbEndpoints",
        &[
            "lb_endpoints",
            "priority",
            "locality",
            "load_balancing_weight",
        ],
    ),
    (
        "envoy.config.endpoint.v3.LbEndpoint",
        &["endpoint", "load_balancing_weight", "metadata"],
    ),
    // An endpoint's metadata: only Switchyard's HBONE tunnel, typed (`convert` checks the
    // key); untyped `filter_metadata` is read by no Switchyard filter.
    ("envoy.config.core.v3.Metadata", &["typed_filter_metadata"]),
    (
        "switchyard.config.endpoint.v1.HboneTunnel",
        &["address", "port_value"],
    ),
    ("envoy.config.endpoint.v3.Endpoint", &["address"]),
    (
        "switchyard.filters.network.mirror.v1.Mirror",
        &["stat_prefix", "cluster", "percent", "max_buffered_bytes"],
    ),
    (TRUSTED_SOURCES, &["source_prefix_ranges"]),
    (
        "switchyard.filters.listener.proxy_protocol.v1.CidrRange",
        &["address_prefix", "prefix_len"],
    ),
    (
        "switchyard.filters.udp.udp_proxy.v1.WeightedRoute",
        &["clusters"],
    ),
    (
        "switchyard.filters.udp.udp_proxy.v1.ClusterWeight",
        &["name", "weight"],
    ),
    (
        "switchyard.filters.network.fault.v1.Fault",
        &["stat_prefix", "delay", "abort", "throttle"],
    ),
    (
        SOURCE_LIMIT,
        &[
            "stat_prefix",
            "ipv4_prefix_len",
            "ipv6_prefix_len",
            "connection_rate",
            "max_connections_per_source",
            "table_entries",
        ],
    ),
    (
        "switchyard.filters.network.source_limit.v1.TokenBucket",
        &["max_tokens", "tokens_per_fill", "fill_interval"],
    ),
    (
        "switchyard.filters.network.fault.v1.Delay",
        &["fixed_delay", "percent"],
    ),
    (
        "switchyard.filters.network.fault.v1.Abort",
        &["after_bytes", "percent"],
    ),
    (
        "switchyard.filters.network.fault.v1.Throttle",
        &[
            "upstream_bytes_per_second",
            "downstream_bytes_per_second",
            "percent",
        ],
    ),
];

/// `@type`s accepted in each `typed_config` field (by the field's full name).
const TYPED_CONFIG: &[(&str, &[&str])] = &[
    (
        "envoy.config.listener.v3.Filter.typed_config",
        &[
            TCP_PROXY,
            HTTP_CONNECTION_MANAGER,
            CONNECTION_LIMIT,
            LOCAL_RATELIMIT,
            RBAC,
            SOURCE_LIMIT,
            FAULT,
            MIRROR,
        ],
    ),
    (
        "envoy.config.listener.v3.ListenerFilter.typed_config",
        &[
            ORIGINAL_DST_FILTER,
            ORIGINAL_SRC_FILTER,
            PROXY_PROTOCOL,
            TRUSTED_SOURCES,
            TLS_INSPECTOR,
            UDP_PROXY,
        ],
    ),
    // The matching API (a `TypedExtensionConfig` takes what the field holding it takes):
    // the actions of the UDP proxy's routes and of a filter chain matcher's chain names
    // (`convert` checks which belong to which), the inputs, the IP range matcher.
    (
        "xds.type.matcher.v3.Matcher.OnMatch.action",
        &[UDP_ROUTE, UDP_WEIGHTED_ROUTE, STRING_VALUE],
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherTree.input",
        NETWORK_INPUTS,
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherList.Predicate.SinglePredicate.input",
        NETWORK_INPUTS,
    ),
    (
        "xds.type.matcher.v3.Matcher.MatcherTree.custom_match",
        &[IP_MATCHER],
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter.typed_config",
        &[ROUTER],
    ),
    (
        "envoy.config.accesslog.v3.AccessLog.typed_config",
        &[STDOUT_LOG, STDERR_LOG, FILE_LOG],
    ),
    (
        "envoy.config.core.v3.Metadata.TypedFilterMetadataEntry.value",
        &[HBONE_TUNNEL],
    ),
    (
        "envoy.config.overload.v3.ResourceMonitor.typed_config",
        &[DOWNSTREAM_CONNECTIONS_MONITOR],
    ),
    // Envoy's own `TypedExtensionConfig`, like the matching API's, takes what the field
    // holding it takes: a DNS resolver (a cluster's or the bootstrap's
    // `typed_dns_resolver_config`), a load balancing policy.
    (
        "envoy.config.bootstrap.v3.Bootstrap.typed_dns_resolver_config",
        DNS_RESOLVERS,
    ),
    (
        "envoy.config.cluster.v3.Cluster.typed_dns_resolver_config",
        DNS_RESOLVERS,
    ),
    (
        "envoy.config.cluster.v3.LoadBalancingPolicy.Policy.typed_extension_config",
        &[
            ROUND_ROBIN_POLICY,
            LEAST_REQUEST_POLICY,
            RANDOM_POLICY,
            RING_HASH_POLICY,
            MAGLEV_POLICY,
        ],
    ),
    // A transport socket's `typed_config` takes what the field holding it takes (as an
    // extension): TLS termination on a chain, origination on a cluster, plaintext on either.
    (
        "envoy.config.listener.v3.FilterChain.transport_socket",
        &[DOWNSTREAM_TLS, RAW_BUFFER],
    ),
    (
        "envoy.config.cluster.v3.Cluster.transport_socket",
        &[UPSTREAM_TLS, RAW_BUFFER, UPSTREAM_PROXY_PROTOCOL],
    ),
    (
        "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport.transport_socket",
        &[UPSTREAM_TLS, RAW_BUFFER],
    ),
    // Every real xDS bootstrap gives its ADS cluster HTTP/2 this way (Switchyard speaks gRPC
    // over HTTP/2 to it regardless); a tcp_proxy's `tunneling_config` needs it on its
    // clusters. The key is checked by `convert::hbone`.
    (
        "envoy.config.cluster.v3.Cluster.TypedExtensionProtocolOptionsEntry.value",
        &[HTTP_PROTOCOL_OPTIONS],
    ),
];

const DNS_RESOLVERS: &[&str] = &[CARES_RESOLVER, GETADDRINFO_RESOLVER];

/// The matching API's network inputs; the last three need TLS inspection and are refused by
/// `convert` with their own message.
const NETWORK_INPUTS: &[&str] = &[
    DESTINATION_IP_INPUT,
    DESTINATION_PORT_INPUT,
    SOURCE_IP_INPUT,
    SOURCE_PORT_INPUT,
    DIRECT_SOURCE_IP_INPUT,
    SOURCE_TYPE_INPUT,
    SERVER_NAME_INPUT,
    TRANSPORT_PROTOCOL_INPUT,
    APPLICATION_PROTOCOL_INPUT,
];

/// The messages of an extension (the matching API's and Envoy's own): its `typed_config` is
/// checked against the field that holds it.
const TYPED_EXTENSIONS: &[&str] = &[
    "xds.core.v3.TypedExtensionConfig",
    "envoy.config.core.v3.TypedExtensionConfig",
    "envoy.config.core.v3.TransportSocket",
];

/// Supported fields that Switchyard implements for some values only: (message, field, the
/// values it takes, why another is refused).
type OnlyValue = (&'static str, &'static str, fn(&Value) -> bool, &'static str);
const ONLY_VALUE: &[OnlyValue] = &[
    (
        "envoy.config.cluster.v3.Cluster",
        "ignore_health_on_host_removal",
        |v| v.as_bool() == Some(true),
        "Switchyard removes a host as soon as discovery drops it, whatever its health (Envoy's \
behaviour with true); keeping a removed host until its health check fails is not supported",
    ),
    (
        DOWNSTREAM_TLS,
        "ocsp_staple_policy",
        |v| v.as_str() == Some("LENIENT_STAPLING") || v.as_i64() == Some(0),
        "only LENIENT_STAPLING (the default) is supported: Switchyard staples no OCSP response",
    ),
    (
        UPSTREAM_TLS,
        "allow_renegotiation",
        |v| v.as_bool() == Some(false),
        "rustls never renegotiates (nor does TLS 1.3); only false is supported",
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        "allow_expired_certificate",
        |v| v.as_bool() == Some(false),
        "an expired peer certificate is always refused; only false is supported",
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        "trust_chain_verification",
        |v| v.as_str() == Some("VERIFY_TRUST_CHAIN") || v.as_i64() == Some(0),
        "only VERIFY_TRUST_CHAIN (the default) is supported: an untrusted chain is refused",
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
        "only_verify_leaf_cert_crl",
        |v| v.as_bool() == Some(false),
        "CRLs are checked along the whole chain; only false is supported",
    ),
];

/// Whose message `desc` is, for error messages: "Envoy's envoy.config...", or Switchyard's
/// own extension by name.
fn owner(desc: &MessageDescriptor) -> String {
    if desc.full_name().starts_with("switchyard.") {
        desc.full_name().to_string()
    } else {
        format!("Envoy's {}", desc.full_name())
    }
}

/// Checks `value` as a `desc` message at the root path, rewriting what Envoy's loader is
/// lenient about into the canonical proto3 JSON form (see [`lenient`]).
pub(crate) fn check(
    pool: &DescriptorPool,
    desc: &MessageDescriptor,
    value: &mut Value,
) -> Result<(), ConfigError> {
    let walker = Walker {
        pool,
        supported: SUPPORTED.iter().copied().collect(),
        typed: TYPED_CONFIG.iter().copied().collect(),
    };
    walker.message(desc, value, "", None)
}

struct Walker<'a> {
    pool: &'a DescriptorPool,
    supported: HashMap<&'static str, &'static [&'static str]>,
    typed: HashMap<&'static str, &'static [&'static str]>,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::invalid(path, message)
}

impl Walker<'_> {
    /// `value` as a message of type `desc`. `field` is the field holding it (for `Any`).
    fn message(
        &self,
        desc: &MessageDescriptor,
        value: &mut Value,
        path: &str,
        holder: Option<&FieldDescriptor>,
    ) -> Result<(), ConfigError> {
        if let Some(done) = self.well_known(desc, value, path, holder) {
            return done;
        }
        let Value::Object(map) = value else {
            return Err(invalid(
                path,
                format!("expected an object ({})", desc.name()),
            ));
        };
        // A `TypedExtensionConfig`'s `typed_config` accepts what the field holding the
        // extension takes (a matcher's input, action, custom matcher, a DNS resolver, a load
        // balancing policy).
        let extension = TYPED_EXTENSIONS
            .contains(&desc.full_name())
            .then(|| holder.map(|h| h.full_name().to_string()))
            .flatten();
        self.fields(
            desc,
            map.iter_mut().map(|(k, v)| (k.as_str(), v)),
            path,
            extension.as_deref(),
        )
    }

    /// The fields of one message, given as key/value pairs. `extension` is the field holding
    /// a `TypedExtensionConfig` whose fields these are.
    fn fields<'v>(
        &self,
        desc: &MessageDescriptor,
        entries: impl Iterator<Item = (&'v str, &'v mut Value)>,
        path: &str,
        extension: Option<&str>,
    ) -> Result<(), ConfigError> {
        let supported = self.supported.get(desc.full_name()).copied().unwrap_or(&[]);
        let mut seen_fields: HashMap<u32, &str> = HashMap::new();
        let mut seen_oneofs: HashMap<String, String> = HashMap::new();
        for (key, value) in entries {
            let Some(fd) = desc
                .get_field_by_json_name(key)
                .or_else(|| desc.get_field_by_name(key))
            else {
                return Err(ConfigError::new(
                    ErrorKind::UnknownField,
                    field(path, key),
                    match suggest(desc, key) {
                        Some(near) => format!(
                            "unknown field (not in {}); did you mean '{near}'?",
                            owner(desc)
                        ),
                        None => format!("unknown field (not in {})", owner(desc)),
                    },
                ));
            };
            let fpath = field(path, fd.name());
            if let Some(other) = seen_fields.insert(fd.number(), key) {
                // Envoy takes one of the two, chosen by protobuf's map order rather than the
                // file's: refused rather than guessed.
                return Err(invalid(
                    &fpath,
                    format!("set twice (as '{other}' and '{key}')"),
                ));
            }
            if value.is_null() {
                // proto3 JSON: null is the default value, the same as leaving the field out.
                continue;
            }
            if !supported.contains(&fd.name()) {
                return Err(ConfigError::unsupported(
                    fpath,
                    "not supported by Switchyard",
                ));
            }
            if let Some(oneof) = fd.containing_oneof().filter(|o| !o.is_synthetic()) {
                if let Some(other) =
                    seen_oneofs.insert(oneof.name().to_string(), fd.name().to_string())
                {
                    return Err(invalid(
                        fpath,
                        format!("only one of '{other}' and '{}' may be set", fd.name()),
                    ));
                }
            }
            match extension {
                Some(holder) if fd.name() == "typed_config" => self.any(value, &fpath, holder)?,
                _ => self.field(&fd, value, &fpath)?,
            }
            // After the walk, so the value is in its canonical form (`"yes"` is `true`).
            if let Some(&(_, _, only, why)) = ONLY_VALUE
                .iter()
                .find(|(m, f, _, _)| *m == desc.full_name() && *f == fd.name())
            {
                if !only(value) {
                    return Err(ConfigError::unsupported(fpath, why));
                }
            }
        }
        Ok(())
    }

    fn field(
        &self,
        fd: &FieldDescriptor,
        value: &mut Value,
        path: &str,
    ) -> Result<(), ConfigError> {
        if fd.is_map() {
            let Value::Object(map) = value else {
                return Err(invalid(path, "expected an object (a map)"));
            };
            let Kind::Message(entry) = fd.kind() else {
                unreachable!("map fields are messages")
            };
            let value_field = entry.map_entry_value_field();
            for (k, v) in map.iter_mut() {
                self.single(&value_field, v, &field(path, k))?;
            }
            Ok(())
        } else if fd.is_list() {
            *value = Value::Array(lenient::list(fd, std::mem::take(value)));
            let Value::Array(items) = value else {
                unreachable!("just made a list")
            };
            for (i, item) in items.iter_mut().enumerate() {
                self.single(fd, item, &index(path, i))?;
            }
            Ok(())
        } else {
            self.single(fd, value, path)
        }
    }

    /// One value (not a list) of field `fd`.
    fn single(
        &self,
        fd: &FieldDescriptor,
        value: &mut Value,
        path: &str,
    ) -> Result<(), ConfigError> {
        match fd.kind() {
            Kind::Message(m) => self.message(&m, value, path, Some(fd)),
            kind => scalar(&kind, value, path),
        }
    }

    /// Well-known types with their own JSON form; `None` for ordinary messages.
    fn well_known(
        &self,
        desc: &MessageDescriptor,
        value: &mut Value,
        path: &str,
        holder: Option<&FieldDescriptor>,
    ) -> Option<Result<(), ConfigError>> {
        let name = desc.full_name();
        Some(match name {
            "google.protobuf.Any" => self.any(value, path, holder.map_or("", |h| h.full_name())),
            "google.protobuf.Duration" => duration(value, path),
            "google.protobuf.Timestamp" | "google.protobuf.FieldMask" => match value {
                Value::String(_) => Ok(()),
                _ => Err(invalid(path, "expected a string")),
            },
            "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue" => wrapper(desc, value, path),
            "google.protobuf.Struct" => match value {
                Value::Object(_) => Ok(()),
                _ => Err(invalid(path, "expected an object")),
            },
            "google.protobuf.ListValue" => match value {
                Value::Array(_) => Ok(()),
                _ => Err(invalid(path, "expected a list")),
            },
            "google.protobuf.Value" => Ok(()),
            "google.protobuf.Empty" => match value {
                Value::Object(m) if m.is_empty() => Ok(()),
                _ => Err(invalid(path, "expected an empty object")),
            },
            _ => return None,
        })
    }

    /// A `typed_config`: resolve `@type`, check it is accepted in `holder` (the full name of
    /// the field holding it, or holding its `TypedExtensionConfig`), walk the payload.
    fn any(&self, value: &mut Value, path: &str, holder: &str) -> Result<(), ConfigError> {
        let Value::Object(map) = value else {
            return Err(invalid(path, "expected an object with '@type'"));
        };
        let accepted: &[&str] = self.typed.get(holder).copied().unwrap_or(&[]);
        let Some(type_url) = map.get("@type") else {
            return Err(invalid(path, "missing '@type'"));
        };
        let Some(type_url) = type_url.as_str() else {
            return Err(invalid(field(path, "@type"), "expected a string"));
        };
        let name = type_url.rsplit_once('/').map_or(type_url, |(_, n)| n);
        let desc = match self.pool.get_message_by_name(name) {
            Some(desc) if accepted.contains(&name) => desc,
            found => {
                let what = if found.is_some() {
                    "not supported by Switchyard"
                } else {
                    "unknown or not supported by Switchyard"
                };
                return Err(ConfigError::unsupported(
                    path,
                    format!(
                        "@type '{type_url}' is {what} (accepted here: {})",
                        accepted
                            .iter()
                            .map(|t| format!("type.googleapis.com/{t}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        // Accepted types are ordinary messages (or `StringValue`, whose JSON in an `Any` is
        // its field `value`): their fields sit beside `@type`.
        let rest = map
            .iter_mut()
            .filter(|(k, _)| *k != "@type")
            .map(|(k, v)| (k.as_str(), v));
        self.fields(&desc, rest, path, None)
    }
}

/// A `google.protobuf.Duration`: the proto3 JSON string, or (protobuf's legacy syntax) an
/// object of `seconds` and `nanos`, rewritten as the string; either way within Envoy's range.
fn duration(value: &mut Value, path: &str) -> Result<(), ConfigError> {
    let bad = |value: &Value| {
        invalid(
            path,
            format!("invalid duration {value} (expected a string like \"1.5s\")"),
        )
    };
    let (seconds, nanos) = match value {
        Value::String(s) => parse_duration(s).ok_or_else(|| bad(value))?,
        Value::Object(map) => {
            let (mut seconds, mut nanos) = (0, 0);
            for (k, v) in map.iter_mut() {
                let fpath = field(path, k);
                match k.as_str() {
                    "seconds" => {
                        scalar(&Kind::Int64, v, &fpath)?;
                        seconds = v.as_i64().expect("normalized to an integer");
                    }
                    "nanos" => {
                        scalar(&Kind::Int32, v, &fpath)?;
                        nanos = v.as_i64().expect("normalized to an integer") as i32;
                    }
                    _ => {
                        return Err(ConfigError::new(
                            ErrorKind::UnknownField,
                            fpath,
                            "unknown field (a duration has 'seconds' and 'nanos')",
                        ))
                    }
                }
            }
            (seconds, nanos)
        }
        _ => return Err(bad(value)),
    };
    check_duration(seconds, nanos).map_err(|m| invalid(path, m))?;
    *value = Value::String(lenient::duration_text(seconds, nanos));
    Ok(())
}

/// A wrapper (`UInt32Value`, ...): its value, or (protobuf's legacy syntax) an object with
/// the field `value`, rewritten as the value.
fn wrapper(desc: &MessageDescriptor, value: &mut Value, path: &str) -> Result<(), ConfigError> {
    let inner = desc
        .get_field_by_name("value")
        .expect("wrappers have 'value'");
    if let Value::Object(map) = value {
        let mut unwrapped = lenient::default_value(&inner);
        for (k, v) in std::mem::take(map) {
            if k != "value" {
                return Err(ConfigError::new(
                    ErrorKind::UnknownField,
                    field(path, &k),
                    format!("unknown field (not in {})", owner(desc)),
                ));
            }
            if !v.is_null() {
                unwrapped = v;
            }
        }
        *value = unwrapped;
    }
    scalar(&inner.kind(), value, path)
}

/// The field of `desc` closest to a misspelled `key` (edit distance at most 2), if any.
fn suggest(desc: &MessageDescriptor, key: &str) -> Option<String> {
    desc.fields()
        .map(|f| (distance(key, f.name()), f.name().to_string()))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, name)| name)
}

/// Levenshtein distance between two short strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A scalar (or enum) value in the proto3 JSON mapping, as Envoy's parser (protobuf's, in
/// its legacy mode) reads it, rewritten into the canonical form.
fn scalar(kind: &Kind, value: &mut Value, path: &str) -> Result<(), ConfigError> {
    let wrong = |value: &Value, expected: &str| {
        invalid(path, format!("invalid value {value} (expected {expected})"))
    };
    match kind {
        Kind::Bool => match value {
            Value::Bool(_) => Ok(()),
            Value::String(s) => match lenient::bool_text(s) {
                Some(b) => {
                    *value = Value::Bool(b);
                    Ok(())
                }
                None => Err(wrong(value, kind_name(kind))),
            },
            _ => Err(wrong(value, kind_name(kind))),
        },
        Kind::String | Kind::Bytes => match value {
            Value::String(_) => Ok(()),
            _ => Err(wrong(value, kind_name(kind))),
        },
        Kind::Double | Kind::Float => {
            let float = matches!(kind, Kind::Float);
            match lenient::float(value, float) {
                Ok(canonical) => {
                    *value = canonical;
                    Ok(())
                }
                Err(why) => Err(wrong(value, why)),
            }
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            integer(value, i32::MIN.into(), i32::MAX.into(), kind, path)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            integer(value, i64::MIN.into(), i64::MAX.into(), kind, path)
        }
        Kind::Uint32 | Kind::Fixed32 => integer(value, 0, u32::MAX.into(), kind, path),
        Kind::Uint64 | Kind::Fixed64 => integer(value, 0, u64::MAX.into(), kind, path),
        Kind::Enum(e) => {
            let number = match &*value {
                Value::String(s) => {
                    if let Some(v) = e.values().find(|v| v.name().eq_ignore_ascii_case(s)) {
                        // Envoy matches enum names without regard to case.
                        *value = Value::String(v.name().to_string());
                        return Ok(());
                    }
                    lenient::decimal(s.trim_matches(|c: char| c.is_ascii_whitespace()))
                }
                Value::Number(_) => lenient::int(value, false).ok(),
                _ => None,
            };
            match number.and_then(|n| i32::try_from(n).ok()) {
                Some(n) => {
                    *value = Value::from(n);
                    Ok(())
                }
                None => Err(invalid(
                    path,
                    format!(
                        "invalid value {value} (expected one of {})",
                        e.values()
                            .map(|v| v.name().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        Kind::Message(_) => unreachable!("messages are walked, not scalars"),
    }
}

/// An integer field's value within `lo..=hi`, rewritten as a JSON integer.
fn integer(
    value: &mut Value,
    lo: i128,
    hi: i128,
    kind: &Kind,
    path: &str,
) -> Result<(), ConfigError> {
    let unsigned = lo == 0;
    match lenient::int(value, unsigned) {
        Ok(n) if (lo..=hi).contains(&n) => {
            *value = if unsigned {
                Value::from(n as u64)
            } else {
                Value::from(n as i64)
            };
            Ok(())
        }
        Ok(_) => Err(invalid(
            path,
            format!(
                "invalid value {value} (out of range: expected {})",
                kind_name(kind)
            ),
        )),
        Err(why) => Err(invalid(
            path,
            format!(
                "invalid value {value} (expected {}: {why})",
                kind_name(kind)
            ),
        )),
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "true or false",
        Kind::String => "a string",
        Kind::Bytes => "a base64 string",
        Kind::Double | Kind::Float => "a number",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit integer",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit integer",
        Kind::Uint32 | Kind::Fixed32 => "an unsigned 32-bit integer",
        Kind::Uint64 | Kind::Fixed64 => "an unsigned 64-bit integer",
        Kind::Enum(_) | Kind::Message(_) => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance() {
        assert_eq!(distance("conect_timeout", "connect_timeout"), 1);
        assert_eq!(distance("", "ab"), 2);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    /// Every message a supported field leads to is itself in the table (or is well known),
    /// and every listed field exists: the whitelist has no dead or misspelled entries.
    #[test]
    fn whitelist_is_consistent() {
        let pool = super::super::descriptors::pool();
        let table: HashMap<_, _> = SUPPORTED.iter().copied().collect();
        for (msg, fields) in SUPPORTED {
            let desc = pool
                .get_message_by_name(msg)
                .unwrap_or_else(|| panic!("{msg}"));
            for f in *fields {
                let fd = desc
                    .get_field_by_name(f)
                    .unwrap_or_else(|| panic!("{msg}.{f}"));
                let kind = match fd.kind() {
                    // A map leads to its values (the entry type is synthetic).
                    Kind::Message(entry) if fd.is_map() => entry.map_entry_value_field().kind(),
                    kind => kind,
                };
                if let Kind::Message(m) = kind {
                    let name = m.full_name();
                    assert!(
                        name.starts_with("google.protobuf.") || table.contains_key(name),
                        "{msg}.{f} leads to {name}, which is not in the table"
                    );
                }
            }
        }
        // Every supported field holding an extension names what it takes.
        let typed: HashMap<_, _> = TYPED_CONFIG.iter().copied().collect();
        for (msg, fields) in SUPPORTED {
            let desc = pool.get_message_by_name(msg).unwrap();
            for f in *fields {
                let fd = desc.get_field_by_name(f).unwrap();
                if matches!(fd.kind(), Kind::Message(m) if TYPED_EXTENSIONS.contains(&m.full_name()))
                {
                    assert!(
                        typed.contains_key(fd.full_name()),
                        "{} holds an extension but TYPED_CONFIG has no entry for it",
                        fd.full_name()
                    );
                }
            }
        }
        for (fd_name, types) in TYPED_CONFIG {
            let (msg, f) = fd_name.rsplit_once('.').unwrap();
            assert!(pool
                .get_message_by_name(msg)
                .unwrap()
                .get_field_by_name(f)
                .is_some());
            for t in *types {
                assert!(table.contains_key(t), "{t}");
            }
        }
    }
}
