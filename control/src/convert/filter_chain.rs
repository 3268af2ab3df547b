//! A TCP listener's filter chain: its `filter_chain_match` (ports, CIDRs, server names,
//! transport and application protocols, source type) and its network
//! filters, which must end with exactly one `tcp_proxy` (converted in `tcp_proxy`) or
//! `http_connection_manager` terminating HBONE (in `hbone`), each other kind (`rbac`,
//! `connection_limit`, `local_ratelimit`, `source_limit`, and before a tcp_proxy fault and
//! mirror) at most once before it; and its `transport_socket` (TLS termination, in `tls`).

use super::address::{cidr, port};
use super::rbac::rbac_config;
use super::tcp_proxy::tcp_proxy;
use super::tls::chain_tls;
use super::{decode_any, duration, ext, hbone, type_name, Result};
use crate::error::ConfigError;
use crate::ext::fault::Fault as PbFault;
use crate::ext::mirror::Mirror as PbMirror;
use crate::ext::source_limit::SourceLimit as PbSourceLimit;
use crate::path::{field, index};
use crate::rib::{
    ConnectionLimitConfig, FaultConfig, FilterChainConfig, LocalRateLimitConfig, MirrorConfig,
    RbacConfig, SourceLimitConfig, TcpProxyConfig,
};
use crate::type_names::{
    CONNECTION_LIMIT, FAULT, HTTP_CONNECTION_MANAGER, LOCAL_RATELIMIT, MIRROR, RBAC, SOURCE_LIMIT,
    TCP_PROXY,
};
use envoy_types::pb::envoy::config::core::v3::CidrRange as PbCidr;
use envoy_types::pb::envoy::config::listener::v3::filter_chain_match::ConnectionSourceType as PbSourceType;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, FilterChainMatch};
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit as PbConnectionLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit as PbLocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::google::protobuf::Any;
use switchyard_dataplane::fib::hbone::HboneTerminate;
use switchyard_dataplane::fib::{ChainMatch, CidrRange, Gate, SourceType};

pub(super) fn filter_chain(fc: &FilterChain, path: &str) -> Result<FilterChainConfig> {
    let matcher = match &fc.filter_chain_match {
        Some(m) => chain_match(m, &field(path, "filter_chain_match"))?,
        None => ChainMatch::default(),
    };
    let (side, tcp_proxy, hbone) = network_filters(&fc.filters, &field(path, "filters"))?;
    let tls = chain_tls(fc, path)?;
    Ok(FilterChainConfig {
        name: fc.name.clone(),
        matcher,
        connection_limit: side.connection_limit,
        local_rate_limit: side.local_rate_limit,
        rbac: side.rbac,
        source_limit: side.source_limit,
        gates: side.gates,
        fault: side.fault,
        mirror: side.mirror,
        tcp_proxy,
        hbone,
        tls,
    })
}

/// `filter_chain_match`: destination port, destination and source CIDRs (the direct
/// source's too), server names, transport and application protocols, source type, source
/// ports.
fn chain_match(m: &FilterChainMatch, mpath: &str) -> Result<ChainMatch> {
    let cidrs = |ranges: &[PbCidr], name: &str| -> Result<Vec<CidrRange>> {
        let p = field(mpath, name);
        ranges
            .iter()
            .enumerate()
            .map(|(i, r)| cidr(r, &index(&p, i)))
            .collect()
    };
    let destination_port = match m.destination_port {
        Some(p) => Some(port(p.value, &field(mpath, "destination_port"))?),
        None => None,
    };
    let sp = field(mpath, "source_ports");
    let source_ports = m
        .source_ports
        .iter()
        .enumerate()
        .map(|(i, p)| port(*p, &index(&sp, i)))
        .collect::<Result<Vec<u16>>>()?;
    Ok(ChainMatch {
        destination_port,
        prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
        server_names: server_names(&m.server_names, &field(mpath, "server_names"))?,
        transport_protocol: (!m.transport_protocol.is_empty())
            .then(|| m.transport_protocol.as_str().into()),
        application_protocols: m
            .application_protocols
            .iter()
            .map(|p| p.as_str().into())
            .collect(),
        direct_source_prefix_ranges: cidrs(
            &m.direct_source_prefix_ranges,
            "direct_source_prefix_ranges",
        )?,
        source_type: source_type(m.source_type, &field(mpath, "source_type"))?,
        source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
        source_ports,
    })
}

/// `source_type` (`ConnectionSourceType`): ANY, SAME_IP_OR_LOOPBACK or EXTERNAL.
fn source_type(value: i32, path: &str) -> Result<SourceType> {
    match PbSourceType::try_from(value) {
        Ok(PbSourceType::Any) => Ok(SourceType::Any),
        Ok(PbSourceType::SameIpOrLoopback) => Ok(SourceType::SameIpOrLoopback),
        Ok(PbSourceType::External) => Ok(SourceType::External),
        Err(_) => Err(ConfigError::invalid(
            path,
            format!("unknown source type {value}"),
        )),
    }
}

/// `server_names`: exact names, or `*.` wildcards; a `*` anywhere else is refused, as
/// Envoy refuses partial wildcards.
fn server_names(names: &[String], path: &str) -> Result<Vec<Box<str>>> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let wildcard = name.starts_with("*.");
            if name.contains('*') && (!wildcard || name[1..].contains('*')) {
                return Err(ConfigError::invalid(
                    index(path, i),
                    format!(
                        "'{name}': partial wildcards are not supported in server_names (only a \
                         leading '*.', as in Envoy)"
                    ),
                ));
            }
            Ok(name.as_str().into())
        })
        .collect()
}

/// The network filters before a chain's `tcp_proxy`: at most one of each kind.
#[derive(Default)]
struct SideFilters {
    connection_limit: Option<ConnectionLimitConfig>,
    local_rate_limit: Option<LocalRateLimitConfig>,
    rbac: Option<RbacConfig>,
    source_limit: Option<SourceLimitConfig>,
    /// The filters that may refuse a connection, in the chain's order (Envoy runs them in
    /// order: the first to refuse decides, and those after it are not consulted).
    gates: Vec<Gate>,
    fault: Option<FaultConfig>,
    mirror: Option<MirrorConfig>,
}

impl SideFilters {
    /// Adds the filter at `fpath`, whose `typed_config` is `any` (of message `name`).
    fn add(&mut self, name: &str, any: &Any, fpath: &str) -> Result<()> {
        let taken = match name {
            FAULT => self.fault.is_some(),
            MIRROR => self.mirror.is_some(),
            LOCAL_RATELIMIT => self.local_rate_limit.is_some(),
            RBAC => self.rbac.is_some(),
            SOURCE_LIMIT => self.source_limit.is_some(),
            _ => self.connection_limit.is_some(),
        };
        if taken {
            return Err(ConfigError::invalid(
                fpath,
                format!("a second {} filter in one chain", filter_kind(name)),
            ));
        }
        let tpath = field(fpath, "typed_config");
        match name {
            FAULT => {
                let f: PbFault = decode_any(any, FAULT, &tpath)?;
                self.fault = Some(ext::fault_config(&f, &tpath)?);
            }
            MIRROR => {
                let m: PbMirror = decode_any(any, MIRROR, &tpath)?;
                self.mirror = Some(ext::mirror_config(&m, &tpath)?);
            }
            LOCAL_RATELIMIT => {
                let l: PbLocalRateLimit = decode_any(any, LOCAL_RATELIMIT, &tpath)?;
                self.local_rate_limit = Some(local_rate_limit_config(&l, &tpath)?);
                self.gates.push(Gate::RateLimit);
            }
            RBAC => {
                let r: PbRbac = decode_any(any, RBAC, &tpath)?;
                self.rbac = Some(rbac_config(&r, &tpath)?);
                self.gates.push(Gate::Rbac);
            }
            SOURCE_LIMIT => {
                let l: PbSourceLimit = decode_any(any, SOURCE_LIMIT, &tpath)?;
                self.source_limit = Some(ext::source_limit_config(&l, &tpath)?);
                self.gates.push(Gate::SourceLimit);
            }
            _ => {
                let limit: PbConnectionLimit = decode_any(any, CONNECTION_LIMIT, &tpath)?;
                self.connection_limit = Some(connection_limit_config(&limit, &tpath)?);
                self.gates.push(Gate::ConnectionLimit);
            }
        }
        Ok(())
    }
}

/// `filters`: one `tcp_proxy` or `http_connection_manager` (HBONE), last; before it at most
/// one filter of each other kind (no fault or mirror before a connection manager: they act
/// on a connection's bytes, which are HTTP/2 frames there).
fn network_filters(
    filters: &[Filter],
    filters_path: &str,
) -> Result<(SideFilters, TcpProxyConfig, Option<HboneTerminate>)> {
    let Some(last) = filters.len().checked_sub(1) else {
        return Err(ConfigError::invalid(
            filters_path,
            "a filter chain needs a tcp_proxy or http_connection_manager filter (its terminal              filter)",
        ));
    };
    let mut tcp = None;
    let mut hbone = None;
    let mut side = SideFilters::default();
    for (i, f) in filters.iter().enumerate() {
        let fpath = index(filters_path, i);
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(ConfigError::invalid(
                field(&fpath, "typed_config"),
                "required",
            ));
        };
        let tpath = field(&fpath, "typed_config");
        let name = type_name(any);
        if name == HTTP_CONNECTION_MANAGER {
            if i != last {
                return Err(ConfigError::invalid(
                    fpath,
                    "http_connection_manager is a terminal filter: it must be the last filter \
                     in the chain",
                ));
            }
            if let Some((j, kind)) = filters[..i].iter().enumerate().find_map(|(j, f)| {
                let Some(filter::ConfigType::TypedConfig(a)) = &f.config_type else {
                    return None;
                };
                matches!(type_name(a), FAULT | MIRROR).then(|| (j, filter_kind(type_name(a))))
            }) {
                return Err(ConfigError::unsupported(
                    index(filters_path, j),
                    format!(
                        "a {kind} filter cannot come before http_connection_manager (HBONE): \
                         it acts on the connection's bytes, which are HTTP/2 frames there"
                    ),
                ));
            }
            let h: HttpConnectionManager = decode_any(any, HTTP_CONNECTION_MANAGER, &tpath)?;
            let (terminate, proxy) = hbone::connection_manager(&h, &tpath)?;
            hbone = Some(terminate);
            tcp = Some(proxy);
            continue;
        }
        if name != TCP_PROXY {
            // A filter before the tcp_proxy: at most one of each kind, never the last.
            if i == last {
                return Err(ConfigError::invalid(
                    fpath,
                    "the chain must end with a tcp_proxy or http_connection_manager filter",
                ));
            }
            side.add(name, any, &fpath)?;
            continue;
        }
        let proxy: TcpProxy = decode_any(any, TCP_PROXY, &tpath)?;
        if i != last {
            return Err(ConfigError::invalid(
                fpath,
                "tcp_proxy is a terminal filter: it must be the last filter in the chain",
            ));
        }
        tcp = Some(tcp_proxy(&proxy, &tpath)?);
    }
    Ok((side, tcp.expect("the last filter was converted"), hbone))
}

/// A network filter's short name in errors.
fn filter_kind(type_name: &str) -> &'static str {
    match type_name {
        FAULT => "fault",
        MIRROR => "mirror",
        LOCAL_RATELIMIT => "local_ratelimit",
        RBAC => "rbac",
        SOURCE_LIMIT => "source_limit",
        _ => "connection_limit",
    }
}

/// The shortest `fill_interval` Envoy's network rate limit takes.
const MIN_FILL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// A token bucket's `fill_interval` at `path`: required, at least 50 ms (Envoy's bound for
/// its network rate limit, which Switchyard's per-source buckets keep too).
pub(super) fn fill_interval(
    interval: Option<&envoy_types::pb::google::protobuf::Duration>,
    path: &str,
) -> Result<std::time::Duration> {
    let Some(interval) = interval else {
        return Err(ConfigError::invalid(path, "required"));
    };
    let fill_interval = duration(interval, path)?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(ConfigError::invalid(
            path,
            "must be at least 50ms (Envoy: local rate limit token bucket fill timer must be >= 50ms)",
        ));
    }
    Ok(fill_interval)
}

/// `envoy.filters.network.local_ratelimit`: Envoy's validation (a non-empty `stat_prefix`,
/// a `token_bucket` with `tokens_per_fill` above 0 and a `fill_interval` of at least 50 ms;
/// `max_tokens: 0` is taken, as Envoy takes it: a bucket that never holds a token).
fn local_rate_limit_config(l: &PbLocalRateLimit, path: &str) -> Result<LocalRateLimitConfig> {
    if l.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    let bpath = field(path, "token_bucket");
    let Some(bucket) = &l.token_bucket else {
        return Err(ConfigError::invalid(bpath, "required"));
    };
    let tokens_per_fill = match bucket.tokens_per_fill {
        None => 1,
        Some(v) if v.value > 0 => v.value,
        Some(_) => {
            return Err(ConfigError::invalid(
                field(&bpath, "tokens_per_fill"),
                "must be greater than 0",
            ))
        }
    };
    let fill_interval = fill_interval(
        bucket.fill_interval.as_ref(),
        &field(&bpath, "fill_interval"),
    )?;
    Ok(LocalRateLimitConfig {
        stat_prefix: l.stat_prefix.clone(),
        max_tokens: bucket.max_tokens,
        tokens_per_fill,
        fill_interval,
        share_key: l.share_key.clone(),
    })
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
