//! The conversion boundary: envoy-types proto messages in, RIB domain types out.
//!
//! This is the one module that touches proto types. It assumes the config walker
//! (`config::walk`) already rejected unknown and unsupported fields, and runs the semantic
//! checks the walker cannot: required fields, ranges, addresses, duplicate names and
//! addresses, identical filter-chain matches. Each error names the field's full path in proto
//! field names, e.g. `static_resources.listeners[1].filter_chains[0].filters[0].typed_config.idle_timeout`.
//! Defaults are applied here (Envoy's where Envoy has one), so the RIB never holds "absent".

use crate::error::ConfigError;
use crate::ext::fault::Fault as PbFault;
use crate::ext::mirror::Mirror as PbMirror;
use crate::path::{field, index};
use crate::rib::{
    AccessLogConfig, AdminAddress, AdminConfig, Bind, ClusterConfig, ConnectionLimitConfig,
    DynamicConfig, EndpointConfig, FilterChainConfig, ListenerConfig, ListenerKind, NodeInfo,
    Protocol, Rib, RouteConfig, TcpListenerConfig, TcpProxyConfig, WeightedClusterConfig, XdsApi,
    DEFAULT_ADMIN_ADDRESS, DEFAULT_CHOICE_COUNT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INITIAL_FETCH_TIMEOUT,
};
use crate::type_names::{
    CONNECTION_LIMIT, FAULT, MIRROR, ORIGINAL_DST_FILTER, ORIGINAL_SRC_FILTER, UDP_PROXY,
};
use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ring_hash_lb_config::HashFunction as PbHashFunction, ClusterDiscoveryType, DiscoveryType,
    LbConfig, LbPolicy as PbLbPolicy, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers as PbCircuitBreakers, Cluster};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source::ApiType, config_source::ConfigSourceSpecifier, data_source,
    grpc_service::TargetSpecifier, socket_address, substitution_format_string, Address, ApiVersion,
    CidrRange as PbCidr, ConfigSource, SubstitutionFormatString,
};
use envoy_types::pb::envoy::config::core::v3::{
    socket_option, socket_option::SocketState, BindConfig, SocketOption as PbSocketOption,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, FilterChain, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    stderr_access_log, stdout_access_log, StderrAccessLog, StdoutAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc as PbOriginalSrc;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit as PbConnectionLimit;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::v3::{
    hash_policy::PolicySpecifier, HashPolicy as PbHashPolicy,
};
use envoy_types::pb::google::protobuf::{
    value::Kind as PbKind, Any, Duration as PbDuration, Struct,
};
use prost::Message;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::accesslog::{parse_json_value, parse_text_format, LogFormat, LogPath};
use switchyard_dataplane::fib::{
    ChainMatch, CidrRange, CircuitBreakers, LbPolicy, OriginalSrc, RingHashFunction, SocketOption,
    UpstreamBind, MAX_FILTER_CHAINS,
};
use switchyard_dataplane::hash_lb::{is_prime, MaglevTable, RingHash};

mod ext;
mod health;
mod udp;

type Result<T> = std::result::Result<T, ConfigError>;

/// The `lb_policy` values Switchyard implements.
const SUPPORTED_LB: &str =
    "ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV, CLUSTER_PROVIDED for ORIGINAL_DST";

/// Converts a decoded bootstrap to the RIB, checking everything the walker could not.
pub fn bootstrap(b: &Bootstrap) -> Result<Rib> {
    let node = b
        .node
        .as_ref()
        .map(|n| NodeInfo {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
        })
        .unwrap_or_default();
    let admin_address = match b.admin.as_ref().and_then(|a| a.address.as_ref()) {
        Some(addr) => admin_address(addr, "admin.address")?,
        None => AdminAddress::Tcp(
            DEFAULT_ADMIN_ADDRESS
                .parse()
                .expect("default admin address parses"),
        ),
    };
    let empty = Default::default();
    let statics = b.static_resources.as_ref().unwrap_or(&empty);

    let mut clusters = Vec::with_capacity(statics.clusters.len());
    let mut cluster_names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in statics.clusters.iter().enumerate() {
        let path = index("static_resources.clusters", i);
        let converted = cluster(c, &path)?;
        if let Some(first) = cluster_names.insert(&c.name, i) {
            return Err(ConfigError::invalid(
                field(&path, "name"),
                format!(
                    "duplicate cluster name '{}' (also clusters[{first}])",
                    c.name
                ),
            ));
        }
        clusters.push(Arc::new(converted));
    }

    let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(statics.listeners.len());
    for (i, l) in statics.listeners.iter().enumerate() {
        let path = index("static_resources.listeners", i);
        let converted = listener(l, &path)?;
        if let Some(j) = listeners.iter().position(|o| o.name == converted.name) {
            return Err(ConfigError::invalid(
                field(&path, "name"),
                format!(
                    "duplicate listener name '{}' (also listeners[{j}])",
                    converted.name
                ),
            ));
        }
        if let Some(j) = listeners.iter().position(|o| o.bind() == converted.bind()) {
            return Err(ConfigError::invalid(
                field(&path, "address"),
                format!(
                    "duplicate listener address {} (also listeners[{j}])",
                    converted.bind()
                ),
            ));
        }
        if admin_address.socket().map(Bind::tcp) == Some(converted.bind()) {
            return Err(ConfigError::invalid(
                field(&path, "address"),
                format!(
                    "listener address {} is the admin address",
                    converted.address
                ),
            ));
        }
        listeners.push(converted);
    }

    let dynamic = match &b.dynamic_resources {
        Some(d) => Some(dynamic_resources(d, &clusters)?),
        None => None,
    };
    if dynamic.is_none() {
        if let Some((i, _)) = clusters
            .iter()
            .enumerate()
            .find(|(_, c)| c.eds_service.is_some())
        {
            return Err(ConfigError::invalid(
                field(&index("static_resources.clusters", i), "eds_cluster_config"),
                "EDS needs dynamic_resources.ads_config",
            ));
        }
    }
    let rib = Rib {
        node,
        admin: AdminConfig {
            address: admin_address,
        },
        listeners,
        clusters,
        dynamic,
    };
    warn_missing_clusters(&rib);
    Ok(rib)
}

/// Envoy accepts a tcp_proxy or udp_proxy naming a cluster that does not exist (it counts
/// `downstream_cx_no_route` / `downstream_sess_no_route` at run time); say so in the log.
fn warn_missing_clusters(rib: &Rib) {
    for l in &rib.listeners {
        let chains = l.tcp().into_iter().flat_map(|t| t.chains());
        for chain in chains {
            for name in chain
                .tcp_proxy
                .route
                .cluster_names()
                .filter(|n| rib.cluster(n).is_none())
            {
                tracing::warn!(
                    listener = %l.name,
                    chain = %chain.name,
                    cluster = name,
                    "tcp_proxy routes to a cluster that does not exist; its connections will be closed (downstream_cx_no_route)"
                );
            }
            if let Some(m) = chain
                .mirror
                .as_ref()
                .filter(|m| rib.cluster(&m.cluster).is_none())
            {
                tracing::warn!(
                    listener = %l.name,
                    chain = %chain.name,
                    cluster = %m.cluster,
                    "the mirror's shadow cluster does not exist; nothing is mirrored (connections_failed)"
                );
            }
        }
        let udp_routes = l.udp().into_iter().flat_map(|u| u.route.cluster_names());
        for name in udp_routes.filter(|n| rib.cluster(n).is_none()) {
            tracing::warn!(
                listener = %l.name,
                cluster = name,
                "udp_proxy routes to a cluster that does not exist; its datagrams will be dropped (downstream_sess_no_route)"
            );
        }
    }
}

/// A listener: its address's protocol decides whether it is a TCP listener (filter chains)
/// or a UDP one (the udp_proxy listener filter).
fn listener(l: &Listener, path: &str) -> Result<ListenerConfig> {
    let bind = listener_address(l.address.as_ref(), &field(path, "address"))?;
    let name = if l.name.is_empty() {
        bind.to_string()
    } else {
        l.name.clone()
    };
    let kind = match bind.protocol {
        Protocol::Tcp => ListenerKind::Tcp(Box::new(tcp_listener(l, path)?)),
        Protocol::Udp => ListenerKind::Udp(udp::udp_listener(l, path)?),
    };
    Ok(ListenerConfig {
        name,
        address: bind.address,
        kind,
    })
}

fn tcp_listener(l: &Listener, path: &str) -> Result<TcpListenerConfig> {
    if l.udp_listener_config.is_some() {
        return Err(ConfigError::invalid(
            field(path, "udp_listener_config"),
            "only for a UDP listener (address.socket_address.protocol: UDP)",
        ));
    }
    let chains_path = field(path, "filter_chains");
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        return Err(ConfigError::invalid(
            chains_path,
            "a listener needs at least one filter chain (or a default_filter_chain)",
        ));
    }
    if l.filter_chains.len() > MAX_FILTER_CHAINS {
        return Err(ConfigError::invalid(
            chains_path,
            format!(
                "{} filter chains; Switchyard supports at most {MAX_FILTER_CHAINS} per listener",
                l.filter_chains.len()
            ),
        ));
    }
    let mut filter_chains: Vec<FilterChainConfig> = Vec::with_capacity(l.filter_chains.len());
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let chain_path = index(&chains_path, i);
        let chain = filter_chain(fc, &chain_path)?;
        if let Some(j) = filter_chains
            .iter()
            .position(|o| same_rules(&o.matcher, &chain.matcher))
        {
            return Err(ConfigError::invalid(
                field(&chain_path, "filter_chain_match"),
                format!(
                    "multiple filter chains with the same matching rules are defined (same as filter_chains[{j}])"
                ),
            ));
        }
        filter_chains.push(chain);
    }
    let default_filter_chain = match &l.default_filter_chain {
        Some(fc) => {
            let path = field(path, "default_filter_chain");
            if fc.filter_chain_match.is_some() {
                return Err(ConfigError::invalid(
                    field(&path, "filter_chain_match"),
                    "the default filter chain matches everything that no other chain matches; it takes no filter_chain_match",
                ));
            }
            Some(filter_chain(fc, &path)?)
        }
        None => None,
    };
    let filters = listener_filters(&l.listener_filters, &field(path, "listener_filters"))?;
    Ok(TcpListenerConfig {
        filter_chains,
        default_filter_chain,
        use_original_dst: l.use_original_dst.is_some_and(|b| b.value) || filters.original_dst,
        transparent: l.transparent.is_some_and(|b| b.value),
        original_src: filters.original_src,
    })
}

/// What a listener's `listener_filters` ask for.
#[derive(Default)]
struct ListenerFilters {
    /// `envoy.filters.listener.original_dst`: the same as `use_original_dst: true`.
    original_dst: bool,
    /// `envoy.filters.listener.original_src`.
    original_src: Option<OriginalSrc>,
}

fn listener_filters(filters: &[ListenerFilter], path: &str) -> Result<ListenerFilters> {
    let mut out = ListenerFilters::default();
    for (i, f) in filters.iter().enumerate() {
        let fpath = index(path, i);
        let tpath = field(&fpath, "typed_config");
        let Some(listener_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(ConfigError::invalid(
                tpath,
                format!(
                    "required (type.googleapis.com/{ORIGINAL_DST_FILTER} or {ORIGINAL_SRC_FILTER})"
                ),
            ));
        };
        if type_name(any) == ORIGINAL_DST_FILTER {
            let _: OriginalDst = decode_any(any, ORIGINAL_DST_FILTER, &tpath)?;
            out.original_dst = true;
        } else if type_name(any) == UDP_PROXY {
            return Err(ConfigError::invalid(
                tpath,
                "the udp_proxy is a UDP listener filter: this listener's address is TCP (set address.socket_address.protocol: UDP)",
            ));
        } else {
            let src: PbOriginalSrc = decode_any(any, ORIGINAL_SRC_FILTER, &tpath)?;
            out.original_src = Some(OriginalSrc { mark: src.mark });
        }
    }
    Ok(out)
}

/// Envoy's duplicate check: two chains conflict when some connection would reach the same
/// leaf of the match tree through both, i.e. every criterion has a value in common (or is
/// empty in both).
fn same_rules(a: &ChainMatch, b: &ChainMatch) -> bool {
    fn overlap<T: PartialEq>(x: &[T], y: &[T]) -> bool {
        (x.is_empty() && y.is_empty()) || x.iter().any(|e| y.contains(e))
    }
    a.destination_port == b.destination_port
        && overlap(&a.prefix_ranges, &b.prefix_ranges)
        && overlap(&a.source_prefix_ranges, &b.source_prefix_ranges)
        && overlap(&a.source_ports, &b.source_ports)
}

fn filter_chain(fc: &FilterChain, path: &str) -> Result<FilterChainConfig> {
    let matcher = match &fc.filter_chain_match {
        Some(m) => {
            let mpath = field(path, "filter_chain_match");
            let cidrs = |ranges: &[PbCidr], name: &str| -> Result<Vec<CidrRange>> {
                let p = field(&mpath, name);
                ranges
                    .iter()
                    .enumerate()
                    .map(|(i, r)| cidr(r, &index(&p, i)))
                    .collect()
            };
            let destination_port = match m.destination_port {
                Some(p) => Some(port(p.value, &field(&mpath, "destination_port"))?),
                None => None,
            };
            let sp = field(&mpath, "source_ports");
            let source_ports = m
                .source_ports
                .iter()
                .enumerate()
                .map(|(i, p)| port(*p, &index(&sp, i)))
                .collect::<Result<Vec<u16>>>()?;
            ChainMatch {
                destination_port,
                prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
                source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
                source_ports,
            }
        }
        None => ChainMatch::default(),
    };
    let filters_path = field(path, "filters");
    let Some(last) = fc.filters.len().checked_sub(1) else {
        return Err(ConfigError::invalid(
            filters_path,
            "a filter chain needs a tcp_proxy filter (its terminal filter)",
        ));
    };
    let mut tcp = None;
    let mut connection_limit = None;
    let mut fault = None;
    let mut mirror = None;
    for (i, f) in fc.filters.iter().enumerate() {
        let fpath = index(&filters_path, i);
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(ConfigError::invalid(
                field(&fpath, "typed_config"),
                "required",
            ));
        };
        let tpath = field(&fpath, "typed_config");
        let name = type_name(any);
        if name != crate::type_names::TCP_PROXY {
            // A filter before the tcp_proxy: at most one of each kind, never the last.
            if i == last {
                return Err(ConfigError::invalid(
                    fpath,
                    "the chain must end with a tcp_proxy filter",
                ));
            }
            let taken = match name {
                FAULT => fault.is_some(),
                MIRROR => mirror.is_some(),
                _ => connection_limit.is_some(),
            };
            if taken {
                return Err(ConfigError::invalid(
                    fpath,
                    format!("a second {} filter in one chain", filter_kind(name)),
                ));
            }
            match name {
                FAULT => {
                    let f: PbFault = decode_any(any, FAULT, &tpath)?;
                    fault = Some(ext::fault_config(&f, &tpath)?);
                }
                MIRROR => {
                    let m: PbMirror = decode_any(any, MIRROR, &tpath)?;
                    mirror = Some(ext::mirror_config(&m, &tpath)?);
                }
                _ => {
                    let limit: PbConnectionLimit = decode_any(any, CONNECTION_LIMIT, &tpath)?;
                    connection_limit = Some(connection_limit_config(&limit, &tpath)?);
                }
            }
            continue;
        }
        let proxy: TcpProxy = decode_any(any, crate::type_names::TCP_PROXY, &tpath)?;
        if i != last {
            return Err(ConfigError::invalid(
                fpath,
                "tcp_proxy is a terminal filter: it must be the last filter in the chain",
            ));
        }
        tcp = Some(tcp_proxy(&proxy, &tpath)?);
    }
    let tcp_proxy = tcp.expect("the last filter was converted");
    Ok(FilterChainConfig {
        name: fc.name.clone(),
        matcher,
        connection_limit,
        fault,
        mirror,
        tcp_proxy,
    })
}

/// A network filter's short name in errors.
fn filter_kind(type_name: &str) -> &'static str {
    match type_name {
        FAULT => "fault",
        MIRROR => "mirror",
        _ => "connection_limit",
    }
}

fn connection_limit_config(c: &PbConnectionLimit, path: &str) -> Result<ConnectionLimitConfig> {
    if c.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    let max_connections = match c.max_connections {
        Some(v) if v.value >= 1 => v.value,
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "max_connections"),
                "must be at least 1",
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                field(path, "max_connections"),
                "required",
            ))
        }
    };
    let delay = match &c.delay {
        Some(d) => Some(duration(d, &field(path, "delay"))?).filter(|d| !d.is_zero()),
        None => None,
    };
    Ok(ConnectionLimitConfig {
        stat_prefix: c.stat_prefix.clone(),
        max_connections,
        delay,
    })
}

fn tcp_proxy(t: &TcpProxy, path: &str) -> Result<TcpProxyConfig> {
    if t.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    let route = match &t.cluster_specifier {
        None => {
            return Err(ConfigError::invalid(
                path,
                "one of 'cluster' or 'weighted_clusters' is required",
            ))
        }
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    field(path, "cluster"),
                    "must not be empty",
                ));
            }
            RouteConfig::Cluster(name.clone())
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let wpath = field(&field(path, "weighted_clusters"), "clusters");
            if w.clusters.is_empty() {
                return Err(ConfigError::invalid(
                    wpath,
                    "at least one cluster is required (the total weight must be greater than 0)",
                ));
            }
            let mut entries = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                let cpath = index(&wpath, i);
                if c.name.is_empty() {
                    return Err(ConfigError::invalid(
                        field(&cpath, "name"),
                        "required (non-empty)",
                    ));
                }
                if c.weight == 0 {
                    return Err(ConfigError::invalid(
                        field(&cpath, "weight"),
                        "must be at least 1 (as in Envoy)",
                    ));
                }
                entries.push(WeightedClusterConfig {
                    name: c.name.clone(),
                    weight: c.weight,
                });
            }
            RouteConfig::Weighted(entries)
        }
    };
    let idle_timeout = match &t.idle_timeout {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(d) => Some(duration(d, &field(path, "idle_timeout"))?).filter(|d| !d.is_zero()),
    };
    let max_connect_attempts = match t.max_connect_attempts {
        None => 1,
        Some(v) if v.value >= 1 => v.value,
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "max_connect_attempts"),
                "must be at least 1",
            ))
        }
    };
    let lpath = field(path, "access_log");
    let access_logs = t
        .access_log
        .iter()
        .enumerate()
        .map(|(i, a)| access_log_config(a, &index(&lpath, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(TcpProxyConfig {
        stat_prefix: t.stat_prefix.clone(),
        route,
        idle_timeout,
        max_connect_attempts,
        access_logs,
        hash_source_ip: hash_policy(&t.hash_policy, &field(path, "hash_policy"))?,
    })
}

/// `hash_policy`: at most one entry (as Envoy), `source_ip`.
fn hash_policy(policies: &[PbHashPolicy], path: &str) -> Result<bool> {
    match policies {
        [] => Ok(false),
        [p] => match &p.policy_specifier {
            Some(PolicySpecifier::SourceIp(_)) => Ok(true),
            Some(PolicySpecifier::FilterState(_)) => Err(ConfigError::unsupported(
                field(&index(path, 0), "filter_state"),
                "not supported by Switchyard (source_ip is)",
            )),
            None => Err(ConfigError::invalid(
                index(path, 0),
                "one of 'source_ip' or 'filter_state' is required",
            )),
        },
        _ => Err(ConfigError::invalid(
            index(path, 1),
            "at most one hash policy (as in Envoy)",
        )),
    }
}

fn access_log_config(a: &AccessLog, path: &str) -> Result<AccessLogConfig> {
    let Some(access_log::ConfigType::TypedConfig(any)) = &a.config_type else {
        return Err(ConfigError::invalid(
            field(path, "typed_config"),
            "required",
        ));
    };
    use crate::type_names::{FILE_LOG, STDERR_LOG, STDOUT_LOG};
    let tpath = field(path, "typed_config");
    let name = type_name(any);
    if name == STDOUT_LOG {
        let log: StdoutAccessLog = decode_any(any, STDOUT_LOG, &tpath)?;
        let format = match &log.access_log_format {
            Some(stdout_access_log::AccessLogFormat::LogFormat(f)) => {
                log_format(f, &field(&tpath, "log_format"))?
            }
            None => LogFormat::EnvoyDefault,
        };
        Ok(AccessLogConfig {
            path: LogPath::Stdout,
            format,
        })
    } else if name == STDERR_LOG {
        let log: StderrAccessLog = decode_any(any, STDERR_LOG, &tpath)?;
        let format = match &log.access_log_format {
            Some(stderr_access_log::AccessLogFormat::LogFormat(f)) => {
                log_format(f, &field(&tpath, "log_format"))?
            }
            None => LogFormat::EnvoyDefault,
        };
        Ok(AccessLogConfig {
            path: LogPath::Stderr,
            format,
        })
    } else {
        let log: FileAccessLog = decode_any(any, FILE_LOG, &tpath)?;
        if log.path.is_empty() {
            return Err(ConfigError::invalid(
                field(&tpath, "path"),
                "required (non-empty)",
            ));
        }
        #[allow(deprecated)] // `format` and `json_format` are deprecated, still accepted.
        let format = match &log.access_log_format {
            None => LogFormat::EnvoyDefault,
            Some(file_access_log::AccessLogFormat::Format(s)) if s.is_empty() => {
                LogFormat::EnvoyDefault
            }
            Some(file_access_log::AccessLogFormat::Format(s)) => {
                text_format(s, &field(&tpath, "format"))?
            }
            Some(file_access_log::AccessLogFormat::JsonFormat(s)) => {
                json_format(s, &field(&tpath, "json_format"))?
            }
            Some(file_access_log::AccessLogFormat::LogFormat(f)) => {
                log_format(f, &field(&tpath, "log_format"))?
            }
            Some(_) => {
                return Err(ConfigError::unsupported(
                    tpath,
                    "this format is not supported by Switchyard",
                ))
            }
        };
        Ok(AccessLogConfig {
            path: LogPath::File(log.path.into()),
            format,
        })
    }
}

fn log_format(f: &SubstitutionFormatString, path: &str) -> Result<LogFormat> {
    use substitution_format_string::Format;
    #[allow(deprecated)] // `text_format` is deprecated, still accepted.
    match &f.format {
        Some(Format::TextFormat(s)) => text_format(s, &field(path, "text_format")),
        Some(Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(data_source::Specifier::InlineString(s)) => text_format(
                s,
                &field(&field(path, "text_format_source"), "inline_string"),
            ),
            _ => Err(ConfigError::invalid(
                field(path, "text_format_source"),
                "inline_string is required",
            )),
        },
        Some(Format::JsonFormat(s)) => json_format(s, &field(path, "json_format")),
        None => Err(ConfigError::invalid(
            path,
            "one of 'text_format_source' or 'json_format' is required",
        )),
    }
}

fn text_format(template: &str, path: &str) -> Result<LogFormat> {
    parse_text_format(template)
        .map(LogFormat::Text)
        .map_err(|e| ConfigError::invalid(path, e))
}

/// `json_format`: keys in sorted order (a protobuf `Struct` keeps no order).
fn json_format(s: &Struct, path: &str) -> Result<LogFormat> {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let kpath = field(path, key);
        match &s.fields[key].kind {
            Some(PbKind::StringValue(v)) => {
                let segment = parse_json_value(v).map_err(|e| ConfigError::invalid(&kpath, e))?;
                out.push((key.clone(), segment));
            }
            _ => return Err(ConfigError::unsupported(
                kpath,
                "only string values (a command operator or a literal) are supported by Switchyard",
            )),
        }
    }
    Ok(LogFormat::Json(out))
}

fn cluster(c: &Cluster, path: &str) -> Result<ClusterConfig> {
    if c.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty)",
        ));
    }
    match &c.cluster_discovery_type {
        None => {}
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Static | DiscoveryType::Eds | DiscoveryType::OriginalDst) => {}
            Ok(other) => {
                return Err(ConfigError::unsupported(
                    field(path, "type"),
                    format!(
                        "{} is not supported by Switchyard yet (STATIC, EDS and ORIGINAL_DST are)",
                        other.as_str_name()
                    ),
                ))
            }
            Err(_) => {
                return Err(ConfigError::invalid(
                    field(path, "type"),
                    format!("unknown type {t}"),
                ))
            }
        },
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(ConfigError::unsupported(
                field(path, "cluster_type"),
                "not supported by Switchyard",
            ))
        }
    }
    let connect_timeout = match &c.connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) => {
            let p = field(path, "connect_timeout");
            let d = duration(d, &p)?;
            if d.is_zero() {
                return Err(ConfigError::invalid(p, "must be greater than 0"));
            }
            d
        }
    };
    let policy = PbLbPolicy::try_from(c.lb_policy).map_err(|_| {
        ConfigError::invalid(
            field(path, "lb_policy"),
            format!("unknown policy {}", c.lb_policy),
        )
    })?;
    let mut hashing = HashingConfig::default();
    let choice_count = match &c.lb_config {
        None => None,
        Some(LbConfig::RingHashLbConfig(r)) => {
            hashing.ring = Some(ring_hash_config(
                r,
                policy,
                &field(path, "ring_hash_lb_config"),
            )?);
            None
        }
        Some(LbConfig::MaglevLbConfig(m)) => {
            hashing.maglev_table_size = Some(maglev_table_size(
                m,
                policy,
                &field(path, "maglev_lb_config"),
            )?);
            None
        }
        Some(LbConfig::LeastRequestLbConfig(lr)) => {
            let p = field(path, "least_request_lb_config");
            if policy != PbLbPolicy::LeastRequest {
                return Err(ConfigError::invalid(
                    p,
                    "only valid with lb_policy LEAST_REQUEST",
                ));
            }
            match lr.choice_count {
                Some(n) if n.value < 2 => {
                    return Err(ConfigError::invalid(
                        field(&p, "choice_count"),
                        "must be at least 2",
                    ))
                }
                n => n.map(|n| n.value),
            }
        }
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "this lb_config is not supported by Switchyard",
            ))
        }
    };
    let original_dst = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32
    );
    // Envoy's rule, both ways: CLUSTER_PROVIDED belongs to ORIGINAL_DST and nothing else.
    if original_dst != (policy == PbLbPolicy::ClusterProvided) {
        return Err(ConfigError::invalid(
            field(path, "lb_policy"),
            format!(
                "{} is not valid for this cluster type: type ORIGINAL_DST takes lb_policy CLUSTER_PROVIDED, and only it does",
                policy.as_str_name()
            ),
        ));
    }
    if original_dst && c.load_assignment.is_some() {
        return Err(ConfigError::invalid(
            field(path, "load_assignment"),
            "an ORIGINAL_DST cluster has no endpoints: each connection goes to its own original destination",
        ));
    }
    let lb_policy = match policy {
        PbLbPolicy::ClusterProvided => LbPolicy::ClusterProvided,
        PbLbPolicy::RingHash => {
            let (min_ring_size, max_ring_size, hash_function) = hashing.ring.unwrap_or((
                RingHash::DEFAULT_MIN_RING_SIZE,
                RingHash::DEFAULT_MAX_RING_SIZE,
                RingHashFunction::XxHash,
            ));
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
                hash_function,
            }
        }
        PbLbPolicy::Maglev => LbPolicy::Maglev {
            table_size: hashing
                .maglev_table_size
                .unwrap_or(MaglevTable::DEFAULT_TABLE_SIZE),
        },
        PbLbPolicy::RoundRobin => LbPolicy::RoundRobin,
        PbLbPolicy::Random => LbPolicy::Random,
        PbLbPolicy::LeastRequest => LbPolicy::LeastRequest {
            choice_count: choice_count.unwrap_or(DEFAULT_CHOICE_COUNT),
        },
        other => {
            let name = other.as_str_name();
            return Err(ConfigError::unsupported(
                field(path, "lb_policy"),
                format!("{name} is not supported by Switchyard (supported: {SUPPORTED_LB})"),
            ));
        }
    };
    let eds_service = eds_service(c, path)?;
    let endpoints = match &c.load_assignment {
        Some(_) if eds_service.is_some() => {
            return Err(ConfigError::invalid(
                field(path, "load_assignment"),
                "an EDS cluster gets its endpoints from EDS, not load_assignment",
            ))
        }
        Some(la) => load_assignment(la, &field(path, "load_assignment"))?,
        None => Vec::new(),
    };
    let upstream_bind = match &c.upstream_bind_config {
        Some(b) => upstream_bind(b, &field(path, "upstream_bind_config"))?,
        None => UpstreamBind::default(),
    };
    let circuit_breakers = match &c.circuit_breakers {
        Some(cb) => circuit_breakers(cb, &field(path, "circuit_breakers"))?,
        None => CircuitBreakers::default(),
    };
    let health = health::health_policy(c, path)?;
    if original_dst && health.health_check.is_some() {
        return Err(ConfigError::invalid(
            field(path, "health_checks"),
            "an ORIGINAL_DST cluster has no endpoints to check",
        ));
    }
    Ok(ClusterConfig {
        name: c.name.clone(),
        connect_timeout,
        lb_policy,
        endpoints: endpoints.into(),
        eds_service,
        upstream_bind,
        circuit_breakers,
        health,
        added_via_api: false,
    })
}

/// `circuit_breakers.thresholds`: one entry per priority; Switchyard routes at priority
/// DEFAULT only, so a HIGH entry is refused rather than ignored. `max_requests` and
/// `max_retries` are accepted (Istio always sets them) and, as in Envoy's tcp_proxy, limit
/// nothing at L4: a TCP connection makes no requests and no retries through the pool.
fn circuit_breakers(cb: &PbCircuitBreakers, path: &str) -> Result<CircuitBreakers> {
    let mut out = CircuitBreakers::default();
    let tpath = field(path, "thresholds");
    for (i, t) in cb.thresholds.iter().enumerate() {
        let p = index(&tpath, i);
        if t.priority != RoutingPriority::Default as i32 {
            return Err(ConfigError::unsupported(
                field(&p, "priority"),
                "only DEFAULT is supported by Switchyard (it routes no HIGH priority traffic)",
            ));
        }
        if let Some(v) = t.max_connections {
            out.max_connections = v.value;
        }
        if let Some(v) = t.max_pending_requests {
            out.max_pending_requests = v.value;
        }
        if let Some(v) = t.max_requests {
            out.max_requests = v.value;
        }
        if let Some(v) = t.max_retries {
            out.max_retries = v.value;
        }
        out.track_remaining = t.track_remaining;
    }
    Ok(out)
}

/// A hashing policy's `lb_config`, when given.
#[derive(Default)]
struct HashingConfig {
    /// `ring_hash_lb_config`: minimum and maximum ring size, hash function.
    ring: Option<(u64, u64, RingHashFunction)>,
    /// `maglev_lb_config.table_size`.
    maglev_table_size: Option<u64>,
}

/// Envoy's largest ring (`maximum_ring_size` may not exceed it).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

fn ring_hash_config(
    r: &RingHashLbConfig,
    policy: PbLbPolicy,
    path: &str,
) -> Result<(u64, u64, RingHashFunction)> {
    if policy != PbLbPolicy::RingHash {
        return Err(ConfigError::invalid(
            path,
            "only valid with lb_policy RING_HASH",
        ));
    }
    let min = r
        .minimum_ring_size
        .map_or(RingHash::DEFAULT_MIN_RING_SIZE, |v| v.value);
    let max = r
        .maximum_ring_size
        .map_or(RingHash::DEFAULT_MAX_RING_SIZE, |v| v.value);
    for (name, value) in [("minimum_ring_size", min), ("maximum_ring_size", max)] {
        if value > MAX_RING_SIZE {
            return Err(ConfigError::invalid(
                field(path, name),
                format!("{value} is above Envoy's limit of {MAX_RING_SIZE}"),
            ));
        }
    }
    if min > max {
        return Err(ConfigError::invalid(
            field(path, "minimum_ring_size"),
            format!("{min} is greater than maximum_ring_size {max}"),
        ));
    }
    let function = match PbHashFunction::try_from(r.hash_function) {
        Ok(PbHashFunction::XxHash) => RingHashFunction::XxHash,
        Ok(PbHashFunction::MurmurHash2) => RingHashFunction::MurmurHash2,
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "hash_function"),
                format!("unknown hash function {}", r.hash_function),
            ))
        }
    };
    Ok((min, max, function))
}

/// Envoy's largest Maglev table.
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

fn maglev_table_size(m: &MaglevLbConfig, policy: PbLbPolicy, path: &str) -> Result<u64> {
    if policy != PbLbPolicy::Maglev {
        return Err(ConfigError::invalid(
            path,
            "only valid with lb_policy MAGLEV",
        ));
    }
    let size = m
        .table_size
        .map_or(MaglevTable::DEFAULT_TABLE_SIZE, |v| v.value);
    if size > MAX_MAGLEV_TABLE_SIZE || !is_prime(size) {
        return Err(ConfigError::invalid(
            field(path, "table_size"),
            format!("{size} must be a prime number no greater than {MAX_MAGLEV_TABLE_SIZE}"),
        ));
    }
    Ok(size)
}

/// A cluster's `upstream_bind_config`: source IP (port 0: the kernel picks), freebind, and
/// integer socket options applied before bind (`SO_MARK` is `{level: 1, name: 36}`).
fn upstream_bind(b: &BindConfig, path: &str) -> Result<UpstreamBind> {
    let source_ip = match &b.source_address {
        None => None,
        Some(sa) => {
            let spath = field(path, "source_address");
            let ip = ip_address(&sa.address, field(&spath, "address"))?;
            if !matches!(
                sa.port_specifier,
                None | Some(socket_address::PortSpecifier::PortValue(0))
            ) {
                return Err(ConfigError::unsupported(
                    field(&spath, "port_value"),
                    "a fixed source port is not supported by Switchyard (leave it 0: the kernel picks one per connection)",
                ));
            }
            Some(ip)
        }
    };
    let mut socket_options = Vec::with_capacity(b.socket_options.len());
    for (i, o) in b.socket_options.iter().enumerate() {
        socket_options.push(socket_option(o, &index(&field(path, "socket_options"), i))?);
    }
    Ok(UpstreamBind {
        source_ip: source_ip.filter(|ip| !ip.is_unspecified()),
        freebind: b.freebind.is_some_and(|f| f.value),
        socket_options,
    })
}

/// One integer `SocketOption`, set before bind (`STATE_PREBIND`, or `STATE_BOUND`: an
/// upstream socket is bound and connected in one go, so both come before the connect).
fn socket_option(o: &PbSocketOption, path: &str) -> Result<SocketOption> {
    let int = |v: i64, name: &str| {
        i32::try_from(v).map_err(|_| {
            ConfigError::invalid(field(path, name), format!("{v} does not fit a C int"))
        })
    };
    let value = match &o.value {
        Some(socket_option::Value::IntValue(v)) => int(*v, "int_value")?,
        Some(socket_option::Value::BufValue(_)) => {
            return Err(ConfigError::unsupported(
                field(path, "buf_value"),
                "not supported by Switchyard (int_value is)",
            ))
        }
        None => return Err(ConfigError::invalid(field(path, "int_value"), "required")),
    };
    if o.state == SocketState::StateListening as i32 {
        return Err(ConfigError::invalid(
            field(path, "state"),
            "STATE_LISTENING applies to listening sockets, not to upstream connections",
        ));
    }
    Ok(SocketOption {
        level: int(o.level, "level")?,
        name: int(o.name, "name")?,
        value,
    })
}

/// For `type: EDS`, the assignment name to watch; `None` for a static cluster. EDS must come
/// over ADS (`eds_cluster_config.eds_config: {ads: {}}`).
fn eds_service(c: &Cluster, path: &str) -> Result<Option<String>> {
    let is_eds = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    let epath = field(path, "eds_cluster_config");
    let Some(eds) = &c.eds_cluster_config else {
        if is_eds {
            return Err(ConfigError::invalid(epath, "required for type EDS"));
        }
        return Ok(None);
    };
    if !is_eds {
        return Err(ConfigError::invalid(epath, "only valid with type EDS"));
    }
    ads_source(eds.eds_config.as_ref(), &field(&epath, "eds_config"))?;
    Ok(Some(if eds.service_name.is_empty() {
        c.name.clone()
    } else {
        eds.service_name.clone()
    }))
}

/// A `ConfigSource` that must be `{ads: {}}` (the only xDS source Switchyard supports), with
/// resource API version V3 (or AUTO, which is V3). Returns its `initial_fetch_timeout`
/// (`None` for `0s`: wait forever).
fn ads_source(cs: Option<&ConfigSource>, path: &str) -> Result<Option<Duration>> {
    let Some(cs) = cs else {
        return Err(ConfigError::invalid(path, "required"));
    };
    if !matches!(
        cs.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ) {
        return Err(ConfigError::unsupported(
            path,
            "only `ads: {}` is supported by Switchyard (path, api_config_source and self are not)",
        ));
    }
    if !matches!(
        ApiVersion::try_from(cs.resource_api_version),
        Ok(ApiVersion::V3 | ApiVersion::Auto)
    ) {
        return Err(ConfigError::invalid(
            field(path, "resource_api_version"),
            "must be V3",
        ));
    }
    match &cs.initial_fetch_timeout {
        None => Ok(Some(DEFAULT_INITIAL_FETCH_TIMEOUT)),
        Some(d) => {
            let d = duration(d, &field(path, "initial_fetch_timeout"))?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// `dynamic_resources`: an ADS `ads_config` over gRPC to a static cluster, and `lds_config` /
/// `cds_config` that use it.
fn dynamic_resources(
    d: &DynamicResources,
    clusters: &[Arc<ClusterConfig>],
) -> Result<DynamicConfig> {
    let path = "dynamic_resources";
    let apath = field(path, "ads_config");
    let Some(ads) = &d.ads_config else {
        return Err(ConfigError::invalid(
            apath,
            "required: Switchyard takes listeners and clusters over ADS only",
        ));
    };
    let api = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc) => XdsApi::Sotw,
        Ok(ApiType::DeltaGrpc) => XdsApi::Delta,
        _ => {
            return Err(ConfigError::unsupported(
                field(&apath, "api_type"),
                "must be GRPC or DELTA_GRPC",
            ))
        }
    };
    if ApiVersion::try_from(ads.transport_api_version) != Ok(ApiVersion::V3) {
        return Err(ConfigError::invalid(
            field(&apath, "transport_api_version"),
            "must be V3",
        ));
    }
    let gpath = field(&apath, "grpc_services");
    let [service] = ads.grpc_services.as_slice() else {
        return Err(ConfigError::invalid(
            gpath,
            "exactly one gRPC service is required",
        ));
    };
    let gpath = index(&gpath, 0);
    let Some(TargetSpecifier::EnvoyGrpc(target)) = &service.target_specifier else {
        return Err(ConfigError::unsupported(
            gpath,
            "only envoy_grpc is supported by Switchyard",
        ));
    };
    let cpath = field(&field(&gpath, "envoy_grpc"), "cluster_name");
    let Some(cluster) = clusters.iter().find(|c| c.name == target.cluster_name) else {
        return Err(ConfigError::invalid(
            cpath,
            format!("no static cluster named '{}'", target.cluster_name),
        ));
    };
    if cluster.endpoints.is_empty() || cluster.eds_service.is_some() {
        return Err(ConfigError::invalid(
            cpath,
            format!(
                "cluster '{}' must be a STATIC cluster with at least one endpoint",
                cluster.name
            ),
        ));
    }
    let lds = d.lds_config.is_some();
    let cds = d.cds_config.is_some();
    let mut timeout = None;
    for (name, source) in [("lds_config", &d.lds_config), ("cds_config", &d.cds_config)] {
        if let Some(cs) = source {
            let t = ads_source(Some(cs), &field(path, name))?;
            timeout = timeout.max(t);
        }
    }
    Ok(DynamicConfig {
        ads_cluster: cluster.name.clone(),
        api,
        lds,
        cds,
        initial_fetch_timeout: if lds || cds {
            timeout
        } else {
            Some(DEFAULT_INITIAL_FETCH_TIMEOUT)
        },
    })
}

/// The endpoints of a `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS
/// resource), sorted by priority; every endpoint an IP address with a non-zero port.
fn load_assignment(la: &ClusterLoadAssignment, lpath: &str) -> Result<Vec<EndpointConfig>> {
    if la.cluster_name.is_empty() {
        return Err(ConfigError::invalid(
            field(lpath, "cluster_name"),
            "required (non-empty)",
        ));
    }
    let mut endpoints = Vec::new();
    let epath = field(lpath, "endpoints");
    for (i, locality) in la.endpoints.iter().enumerate() {
        let locpath = index(&epath, i);
        let lbpath = field(&locpath, "lb_endpoints");
        for (j, lbe) in locality.lb_endpoints.iter().enumerate() {
            let p = index(&lbpath, j);
            let Some(HostIdentifier::Endpoint(ep)) = &lbe.host_identifier else {
                return Err(ConfigError::invalid(field(&p, "endpoint"), "required"));
            };
            // Either protocol, as Envoy takes it: the tcp_proxy connects to the address and
            // the udp_proxy sends to it.
            let (_, address) = any_socket_address(
                ep.address.as_ref(),
                &field(&field(&p, "endpoint"), "address"),
            )?;
            let weight = match lbe.load_balancing_weight {
                None => 1,
                Some(w) if w.value >= 1 => w.value,
                Some(_) => {
                    return Err(ConfigError::invalid(
                        field(&p, "load_balancing_weight"),
                        "must be at least 1 (as in Envoy)",
                    ))
                }
            };
            endpoints.push(EndpointConfig {
                address,
                weight,
                priority: locality.priority,
            });
        }
    }
    // Priority levels in order (a stable sort keeps config order within a level, which
    // the hashing policies' tables depend on).
    endpoints.sort_by_key(|e| e.priority);
    Ok(endpoints)
}

/// One listener received as an xDS resource (field paths relative to the resource).
pub fn listener_resource(l: &Listener) -> Result<ListenerConfig> {
    listener(l, "")
}

/// One cluster received as an xDS resource.
pub fn cluster_resource(c: &Cluster) -> Result<ClusterConfig> {
    let mut config = cluster(c, "")?;
    config.added_via_api = true;
    Ok(config)
}

/// One `ClusterLoadAssignment` received as an xDS (EDS) resource: its cluster name and
/// endpoints.
pub fn endpoints_resource(la: &ClusterLoadAssignment) -> Result<(String, Arc<[EndpointConfig]>)> {
    Ok((la.cluster_name.clone(), load_assignment(la, "")?.into()))
}

/// A listener's `Address`: an IP `socket_address` with a non-zero port, TCP or UDP.
fn listener_address(a: Option<&Address>, path: &str) -> Result<Bind> {
    let (protocol, address) = any_socket_address(a, path)?;
    let protocol = match protocol {
        socket_address::Protocol::Tcp => Protocol::Tcp,
        socket_address::Protocol::Udp => Protocol::Udp,
    };
    Ok(Bind { protocol, address })
}

/// The admin's `Address`: an IP `socket_address` with a non-zero port, TCP (the default).
fn socket_address(a: Option<&Address>, path: &str) -> Result<SocketAddr> {
    match any_socket_address(a, path)? {
        (socket_address::Protocol::Tcp, address) => Ok(address),
        (socket_address::Protocol::Udp, _) => Err(ConfigError::unsupported(
            field(&field(path, "socket_address"), "protocol"),
            "the admin serves HTTP over TCP",
        )),
    }
}

/// An `Address` that must be an IP `socket_address` with a non-zero port, and its protocol.
fn any_socket_address(
    a: Option<&Address>,
    path: &str,
) -> Result<(socket_address::Protocol, SocketAddr)> {
    let Some(a) = a else {
        return Err(ConfigError::invalid(path, "required"));
    };
    let sa = match &a.address {
        Some(address::Address::SocketAddress(sa)) => sa,
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "only socket_address is supported by Switchyard",
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                field(path, "socket_address"),
                "required",
            ))
        }
    };
    let path = field(path, "socket_address");
    let Ok(protocol) = socket_address::Protocol::try_from(sa.protocol) else {
        return Err(ConfigError::invalid(
            field(&path, "protocol"),
            format!("unknown protocol {}", sa.protocol),
        ));
    };
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        ConfigError::invalid(
            field(&path, "address"),
            format!(
                "'{}' is not an IP address (static config takes IP literals)",
                sa.address
            ),
        )
    })?;
    let port_value = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => *p,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::unsupported(
                field(&path, "named_port"),
                "not supported by Switchyard",
            ))
        }
        None => 0,
    };
    let port = port(port_value, &field(&path, "port_value"))?;
    Ok((protocol, SocketAddr::new(ip, port)))
}

/// The admin's address: a socket address, or a Unix socket path (`pipe`).
fn admin_address(a: &Address, path: &str) -> Result<AdminAddress> {
    let Some(address::Address::Pipe(pipe)) = &a.address else {
        return socket_address(Some(a), path).map(AdminAddress::Tcp);
    };
    let ppath = field(path, "pipe");
    if pipe.path.is_empty() || pipe.path.starts_with('@') {
        return Err(ConfigError::invalid(
            field(&ppath, "path"),
            "a filesystem path is required (abstract sockets are not supported)",
        ));
    }
    if pipe.mode > 0o777 {
        return Err(ConfigError::invalid(
            field(&ppath, "mode"),
            format!("{:#o} is not a permission mode (at most 0777)", pipe.mode),
        ));
    }
    Ok(AdminAddress::Pipe {
        path: pipe.path.clone().into(),
        mode: pipe.mode,
    })
}

/// A TCP port: 1 to 65535.
fn port(value: u32, path: &str) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::invalid(
            path,
            format!("port {value} is out of range (1-65535)"),
        )),
    }
}

/// An IP address literal; the error names `path`.
fn ip_address(text: &str, path: String) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| ConfigError::invalid(path, format!("'{text}' is not an IP address")))
}

/// A `CidrRange`, with host bits cleared (Envoy matches on the network part only).
fn cidr(r: &PbCidr, path: &str) -> Result<CidrRange> {
    let address = ip_address(&r.address_prefix, field(path, "address_prefix"))?;
    let len = r.prefix_len.map_or(0, |l| l.value);
    let (max, family) = if address.is_ipv4() {
        (32, "IPv4")
    } else {
        (128, "IPv6")
    };
    if len > max {
        return Err(ConfigError::invalid(
            field(path, "prefix_len"),
            format!("{len} is too long for an {family} prefix (at most {max})"),
        ));
    }
    let address = match address {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    Ok(CidrRange {
        address,
        prefix_len: len as u8,
    })
}

/// A duration Envoy accepts (not negative, at most 9,223,372,035 s, nanos below a second).
/// The walker refuses the others first with the same message; this keeps the conversion
/// total for any message handed to `convert`.
fn duration(d: &PbDuration, path: &str) -> Result<Duration> {
    crate::duration::check_duration(d.seconds, d.nanos)
        .map_err(|m| ConfigError::invalid(path, m))?;
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// The message name an `Any` carries.
fn type_name(any: &Any) -> &str {
    any.type_url
        .rsplit_once('/')
        .map_or(any.type_url.as_str(), |(_, n)| n)
}

/// Decodes an `Any` the walker accepted as `expected`.
fn decode_any<M: Message + Default>(any: &Any, expected: &str, path: &str) -> Result<M> {
    if type_name(any) != expected {
        return Err(ConfigError::unsupported(
            path,
            format!(
                "@type '{}' is not supported here (expected type.googleapis.com/{expected})",
                any.type_url
            ),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ConfigError::invalid(path, format!("does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_only_in_envoy_range() {
        let d = |seconds, nanos| PbDuration { seconds, nanos };
        assert_eq!(duration(&d(0, 0), "f"), Ok(Duration::ZERO));
        assert_eq!(
            duration(&d(9_223_372_035, 999_999_999), "f"),
            Ok(Duration::new(9_223_372_035, 999_999_999))
        );
        for (s, n) in [
            (315_576_000_000, 0),
            (9_223_372_036, 0),
            (i64::MAX, 999_999_999),
            (0, 1_000_000_000),
            (-1, 0),
            (0, -1),
        ] {
            let e = duration(&d(s, n), "a.b").unwrap_err();
            assert_eq!(e.path(), "a.b", "{s} {n}: {e}");
        }
    }
}
