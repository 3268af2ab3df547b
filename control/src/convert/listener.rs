//! A listener: its address's protocol picks TCP (filter chains, converted in
//! `filter_chain`) or UDP (`udp`); for TCP, the chains' matches must differ (Envoy's
//! duplicate rule), or with a `filter_chain_matcher` (`chain_matcher`) the chains are picked
//! by their names, and the listener filters (`original_dst`, `original_src`,
//! `proxy_protocol` (`proxy_protocol`), `tls_inspector`, with the listener filters'
//! deadline) are read. A listener whose chains
//! match on what only a TLS inspector can tell (a server name, the `tls` transport,
//! application protocols) without one is accepted with a warning, as Envoy 1.40 accepts it:
//! its connections have no server name, `raw_buffer` and no protocols, so those chains never
//! match (checked against Envoy 1.40, which injects no inspector).

use super::access_log::access_logs;
use super::address::listener_address;
use super::chain_matcher::{chain_matcher, ChainNames};
use super::filter_chain::filter_chain;
use super::proxy_protocol::{proxy_protocol_filter, trusted_sources};
use super::{decode_any, duration, type_name, udp, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{
    AccessLogConfig, Bind, FilterChainConfig, ListenerConfig, ListenerKind, Protocol,
    ProxyProtocolConfig, TcpListenerConfig, TlsInspectorConfig,
};
use crate::type_names::{
    ORIGINAL_DST_FILTER, ORIGINAL_SRC_FILTER, PROXY_PROTOCOL, TLS_INSPECTOR, TRUSTED_SOURCES,
    UDP_PROXY,
};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::original_src::v3::OriginalSrc as PbOriginalSrc;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector as PbTlsInspector;
use std::net::SocketAddr;
use switchyard_dataplane::fib::{ChainIndex, FilterDeadline, OriginalSrc, MAX_FILTER_CHAINS};
use switchyard_dataplane::tls::client_hello::DEFAULT_MAX_CLIENT_HELLO_BYTES;

/// A listener: its address's protocol decides whether it is a TCP listener (filter chains)
/// or a UDP one (the udp_proxy listener filter).
pub(super) fn listener(l: &Listener, path: &str) -> Result<ListenerConfig> {
    let bind = listener_address(l.address.as_ref(), &field(path, "address"))?;
    let name = if l.name.is_empty() {
        bind.to_string()
    } else {
        l.name.clone()
    };
    if bind.protocol == Protocol::Udp && !l.access_log.is_empty() {
        return Err(ConfigError::unsupported(
            field(path, "access_log"),
            "a UDP listener's own access log is not supported by Switchyard",
        ));
    }
    let kind = match bind.protocol {
        Protocol::Tcp => ListenerKind::Tcp(Box::new(tcp_listener(l, path)?)),
        Protocol::Udp => ListenerKind::Udp(udp::udp_listener(l, path)?),
    };
    Ok(ListenerConfig {
        name,
        address: bind.address,
        additional_addresses: additional_addresses(l, bind, path)?,
        inbound: l.traffic_direction == TrafficDirection::Inbound as i32,
        kind,
    })
}

/// `additional_addresses`: each of the primary's protocol (as Envoy requires), none twice.
fn additional_addresses(l: &Listener, primary: Bind, path: &str) -> Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(l.additional_addresses.len());
    for (i, a) in l.additional_addresses.iter().enumerate() {
        let apath = field(&index(&field(path, "additional_addresses"), i), "address");
        let bind = listener_address(a.address.as_ref(), &apath)?;
        if bind.protocol != primary.protocol {
            return Err(ConfigError::invalid(
                field(&field(&apath, "socket_address"), "protocol"),
                "a listener's addresses all have one protocol (its address's)",
            ));
        }
        if bind.address == primary.address || out.contains(&bind.address) {
            return Err(ConfigError::invalid(
                apath,
                format!("{} is already an address of this listener", bind.address),
            ));
        }
        out.push(bind.address);
    }
    Ok(out)
}

fn tcp_listener(l: &Listener, path: &str) -> Result<TcpListenerConfig> {
    if l.udp_listener_config.is_some() {
        return Err(ConfigError::invalid(
            field(path, "udp_listener_config"),
            "only for a UDP listener (address.socket_address.protocol: UDP)",
        ));
    }
    let filter_chains = filter_chains(l, &field(path, "filter_chains"))?;
    let chain_matcher = match &l.filter_chain_matcher {
        Some(m) => {
            let names: ChainNames = filter_chains
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.as_str(), i as u32))
                .collect();
            Some(chain_matcher(
                m,
                &names,
                &field(path, "filter_chain_matcher"),
            )?)
        }
        None => None,
    };
    let default_filter_chain = match &l.default_filter_chain {
        Some(fc) => Some(default_filter_chain(
            fc,
            &field(path, "default_filter_chain"),
        )?),
        None => None,
    };
    let filters = listener_filters(&l.listener_filters, &field(path, "listener_filters"))?;
    let tls_inspector = tls_inspector(filters.tls_inspector, &filter_chains, path);
    Ok(TcpListenerConfig {
        filter_chains,
        default_filter_chain,
        chain_matcher,
        use_original_dst: l.use_original_dst.is_some_and(|b| b.value) || filters.original_dst,
        transparent: l.transparent.is_some_and(|b| b.value),
        reuse_port: reuse_port(l),
        original_src: filters.original_src,
        buffer_limit_bytes: buffer_limit_bytes(
            l.per_connection_buffer_limit_bytes.map(|v| v.value),
        ),
        max_accepts_per_event: max_accepts_per_event(l, path)?,
        access_logs: listener_access_logs(l, path)?,
        ignore_global_conn_limit: l.ignore_global_conn_limit,
        proxy_protocol: filters.proxy_protocol,
        tls_inspector,
        filter_deadline: filter_deadline(l, path)?,
    })
}

/// Envoy's default `listener_filters_timeout`.
const DEFAULT_LISTENER_FILTERS_TIMEOUT_MS: u64 = 15_000;

/// `listener_filters_timeout` and `continue_on_listener_filters_timeout`.
fn filter_deadline(l: &Listener, path: &str) -> Result<FilterDeadline> {
    let timeout_ms = match &l.listener_filters_timeout {
        None => Some(DEFAULT_LISTENER_FILTERS_TIMEOUT_MS),
        Some(d) => {
            let d = duration(d, &field(path, "listener_filters_timeout"))?;
            // 0 is no deadline; below a millisecond is one millisecond.
            (!d.is_zero()).then(|| (d.as_millis() as u64).max(1))
        }
    };
    Ok(FilterDeadline {
        timeout_ms,
        continue_on_timeout: l.continue_on_listener_filters_timeout,
    })
}

/// The listener's TLS inspector; without one, a warning when a chain's match reads what
/// only an inspector can tell.
fn tls_inspector(
    configured: Option<InspectorFilter>,
    chains: &[FilterChainConfig],
    path: &str,
) -> Option<TlsInspectorConfig> {
    let Some(filter) = configured else {
        if chains.iter().any(|c| c.matcher.needs_tls_inspector()) {
            tracing::warn!(
                listener = %path,
                "filter chain match rules read the server name, the tls transport or \
                 application protocols, but the listener has no tls_inspector: those chains \
                 never match (as in Envoy)"
            );
        }
        return None;
    };
    Some(TlsInspectorConfig {
        max_client_hello_bytes: filter.max_client_hello_bytes,
        close_on_parse_error: filter.close_on_parse_error,
        initial_read_bytes: filter.initial_read_bytes,
    })
}

/// What an `envoy.filters.listener.tls_inspector` says.
#[derive(Debug, Clone, Copy)]
struct InspectorFilter {
    max_client_hello_bytes: u32,
    close_on_parse_error: bool,
    initial_read_bytes: Option<u32>,
}

/// A `TlsInspector` at `path`: Envoy's ranges; the JA3/JA4 fingerprints are refused when
/// enabled (Switchyard computes none); `initial_read_buffer_size` bounds the first receive.
fn inspector_filter(t: &PbTlsInspector, path: &str) -> Result<InspectorFilter> {
    for (name, on) in [
        ("enable_ja3_fingerprinting", t.enable_ja3_fingerprinting),
        ("enable_ja4_fingerprinting", t.enable_ja4_fingerprinting),
    ] {
        if on.is_some_and(|b| b.value) {
            return Err(ConfigError::unsupported(
                field(path, name),
                "TLS fingerprints are not supported by Switchyard (false or unset only)",
            ));
        }
    }
    if let Some(size) = t.initial_read_buffer_size {
        if !(256..65537).contains(&size.value) {
            return Err(ConfigError::invalid(
                field(path, "initial_read_buffer_size"),
                "value must be greater than 255 and less than 65537, as in Envoy",
            ));
        }
    }
    let max = match t.max_client_hello_size {
        None => DEFAULT_MAX_CLIENT_HELLO_BYTES,
        Some(v) if (256..=DEFAULT_MAX_CLIENT_HELLO_BYTES).contains(&v.value) => v.value,
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "max_client_hello_size"),
                "value must be greater than 255 and at most 16384, as in Envoy",
            ))
        }
    };
    Ok(InspectorFilter {
        max_client_hello_bytes: max,
        close_on_parse_error: t.close_connection_on_client_hello_parsing_errors,
        initial_read_bytes: t.initial_read_buffer_size.map(|v| v.value),
    })
}

/// `filter_chains`: at least one chain (or a default chain), at most [`MAX_FILTER_CHAINS`],
/// no two with the same matching rules.
fn filter_chains(l: &Listener, chains_path: &str) -> Result<Vec<FilterChainConfig>> {
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
        let chain_path = index(chains_path, i);
        let chain = filter_chain(fc, &chain_path)?;
        if l.filter_chain_matcher.is_some() {
            // The matcher picks chains by name; their own matches play no part.
            by_name(fc, &filter_chains, &chain_path)?;
        }
        filter_chains.push(chain);
    }
    if l.filter_chain_matcher.is_none() {
        no_duplicate_rules(&filter_chains, chains_path)?;
    }
    Ok(filter_chains)
}

/// Envoy's duplicate check: two chains conflict when some connection would reach the same
/// leaf of the match tree through both, i.e. every criterion has a value in common (or is
/// empty in both). Found by building the match index (linear in the chains' criteria).
fn no_duplicate_rules(chains: &[FilterChainConfig], chains_path: &str) -> Result<()> {
    let chain_index = ChainIndex::build(chains.iter().map(|c| &c.matcher));
    match chain_index.first_duplicate() {
        None => Ok(()),
        Some((later, earlier)) => Err(ConfigError::invalid(
            field(&index(chains_path, later), "filter_chain_match"),
            format!(
                "multiple filter chains with the same matching rules are defined (same as filter_chains[{earlier}])"
            ),
        )),
    }
}

/// A chain of a listener with a `filter_chain_matcher` (Envoy's rules): named, the name
/// not taken by an earlier chain, and no `filter_chain_match` (which Envoy would ignore).
fn by_name(fc: &FilterChain, earlier: &[FilterChainConfig], chain_path: &str) -> Result<()> {
    if fc.filter_chain_match.is_some() {
        return Err(ConfigError::invalid(
            field(chain_path, "filter_chain_match"),
            "Envoy ignores filter_chain_match when the listener has a filter_chain_matcher: \
             set one or the other",
        ));
    }
    if fc.name.is_empty() {
        return Err(ConfigError::invalid(
            field(chain_path, "name"),
            "required when the listener has a filter_chain_matcher (its actions name chains), \
             as in Envoy",
        ));
    }
    if let Some(j) = earlier.iter().position(|o| o.name == fc.name) {
        return Err(ConfigError::invalid(
            field(chain_path, "name"),
            format!(
                "duplicate filter chain name '{}' (also filter_chains[{j}]); a \
                 filter_chain_matcher names chains",
                fc.name
            ),
        ));
    }
    Ok(())
}

/// `default_filter_chain`: a chain without a `filter_chain_match`.
fn default_filter_chain(fc: &FilterChain, path: &str) -> Result<FilterChainConfig> {
    if fc.filter_chain_match.is_some() {
        return Err(ConfigError::invalid(
            field(path, "filter_chain_match"),
            "the default filter chain matches everything that no other chain matches; it takes no filter_chain_match",
        ));
    }
    filter_chain(fc, path)
}

/// What a listener's `listener_filters` ask for.
#[derive(Default)]
struct ListenerFilters {
    /// `envoy.filters.listener.original_dst`: the same as `use_original_dst: true`.
    original_dst: bool,
    /// `envoy.filters.listener.original_src`.
    original_src: Option<OriginalSrc>,
    /// `envoy.filters.listener.proxy_protocol`.
    proxy_protocol: Option<ProxyProtocolConfig>,
    /// `envoy.filters.listener.tls_inspector`.
    tls_inspector: Option<InspectorFilter>,
}

/// The listener filters, in order. Each at most once; the PROXY protocol's before the TLS
/// inspector (which would otherwise read the header where a ClientHello belongs); an
/// `original_dst` after the PROXY protocol's keeps its own destination, as in Envoy.
fn listener_filters(filters: &[ListenerFilter], path: &str) -> Result<ListenerFilters> {
    let mut out = ListenerFilters::default();
    // Switchyard's trusted sources, until the proxy_protocol filter after them takes them.
    let mut trusted = None;
    for (i, f) in filters.iter().enumerate() {
        let fpath = index(path, i);
        let tpath = field(&fpath, "typed_config");
        let Some(listener_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(ConfigError::invalid(
                tpath,
                format!(
                    "required (type.googleapis.com/{ORIGINAL_DST_FILTER}, {ORIGINAL_SRC_FILTER}, \
                     {PROXY_PROTOCOL} or {TLS_INSPECTOR})"
                ),
            ));
        };
        if type_name(any) == ORIGINAL_DST_FILTER {
            let _: OriginalDst = decode_any(any, ORIGINAL_DST_FILTER, &tpath)?;
            out.original_dst = true;
            if let Some(p) = &mut out.proxy_protocol {
                p.declares_destination = false;
            }
        } else if type_name(any) == TRUSTED_SOURCES {
            if out.proxy_protocol.is_some() || trusted.is_some() {
                return Err(ConfigError::invalid(
                    fpath,
                    "the trusted sources come once, before the proxy_protocol filter they guard",
                ));
            }
            trusted = Some((trusted_sources(any, &tpath)?, fpath));
        } else if type_name(any) == PROXY_PROTOCOL {
            if out.proxy_protocol.is_some() || out.tls_inspector.is_some() {
                return Err(ConfigError::invalid(
                    fpath,
                    "the proxy_protocol filter must come once, before any tls_inspector (which \
                     would read the PROXY header where the ClientHello belongs)",
                ));
            }
            let mut filter = proxy_protocol_filter(any, &tpath)?;
            filter.trusted_sources = trusted.take().map(|(ranges, _)| ranges);
            out.proxy_protocol = Some(filter);
        } else if type_name(any) == TLS_INSPECTOR {
            let t: PbTlsInspector = decode_any(any, TLS_INSPECTOR, &tpath)?;
            out.tls_inspector = Some(inspector_filter(&t, &tpath)?);
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
    if let Some((_, fpath)) = trusted {
        return Err(ConfigError::invalid(
            fpath,
            "trusted sources guard the envoy.filters.listener.proxy_protocol filter after them, \
             and none follows",
        ));
    }
    Ok(out)
}

/// The listener's `access_log`, each as a tcp_proxy's.
fn listener_access_logs(l: &Listener, path: &str) -> Result<Vec<AccessLogConfig>> {
    access_logs(&l.access_log, &field(path, "access_log"))
}

/// `max_connections_to_accept_per_socket_event`: more than 0, as Envoy validates it.
fn max_accepts_per_event(l: &Listener, path: &str) -> Result<Option<u32>> {
    match l.max_connections_to_accept_per_socket_event {
        None => Ok(None),
        Some(v) if v.value > 0 => Ok(Some(v.value)),
        Some(_) => Err(ConfigError::invalid(
            field(path, "max_connections_to_accept_per_socket_event"),
            "value must be greater than 0",
        )),
    }
}

/// `per_connection_buffer_limit_bytes` of a listener or a cluster: Envoy's default (1 MiB)
/// when not given; 0 stands for no limit, as in Envoy (its watermarks are off then).
pub(super) fn buffer_limit_bytes(value: Option<u32>) -> u32 {
    value.unwrap_or(DEFAULT_BUFFER_LIMIT_BYTES)
}

/// Envoy's default `per_connection_buffer_limit_bytes`.
const DEFAULT_BUFFER_LIMIT_BYTES: u32 = 1024 * 1024;

/// `enable_reuse_port`, Envoy's default true. The deprecated `reuse_port` changes nothing:
/// Envoy follows `enable_reuse_port` when given, else its server default (true), which a
/// `reuse_port: true` only repeats.
fn reuse_port(l: &Listener) -> bool {
    l.enable_reuse_port.as_ref().is_none_or(|b| b.value)
}
