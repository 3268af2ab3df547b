//! HBONE's config (issue 21): HTTP/2 CONNECT terminated by a filter chain (the subset of
//! `envoy.filters.network.http_connection_manager` that says exactly that), a tcp_proxy's
//! `tunneling_config` (its `hostname` and `headers_to_add` with Envoy's substitution
//! operators), a cluster's HTTP/2 (`typed_extension_protocol_options`
//! `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`, or the deprecated
//! `http2_protocol_options`) and ORIGINAL_DST by `:authority` (`original_dst_lb_config`).
//!
//! The walker lets through only the fields listed for these messages; what is left to refuse
//! here are values (codec types, upgrade types, domains, header names, operators, ranges) and
//! Envoy's required fields, each by its path. HBONE is mTLS in a mesh; a chain that
//! terminates it may be plaintext too (tests use that).

use super::access_log::access_logs;
use super::endpoints::first_tunnel_path;
use super::{decode_any, timeout_or, type_name, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{
    millis_ceil, ClusterConfig, ListenerConfig, RouteConfig, TcpProxyConfig,
    DEFAULT_HTTP_IDLE_TIMEOUT, DEFAULT_STREAM_IDLE_TIMEOUT,
};
use crate::type_names::{HBONE_TUNNEL_KEY, HTTP_PROTOCOL_OPTIONS, ROUTER};
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, Http2ProtocolOptions};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, UpgradeConfig};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier, UpgradeConfig as HcmUpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TunnelingConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::UInt32Value;
use std::sync::Arc;
use switchyard_dataplane::fib::hbone::{
    HboneTerminate, Http2Settings, Http2Upstream, Template, TemplatePart, TunnelHeader, Tunneling,
};

/// The extension name Envoy also takes as the key of `HttpProtocolOptions` in
/// `typed_extension_protocol_options` (besides its type name).
const HTTP_PROTOCOL_OPTIONS_NAME: &str = "envoy.upstreams.http.http_protocol_options";

/// Envoy's bounds of `max_concurrent_streams`.
const STREAMS: (u32, u32) = (1, 2_147_483_647);
/// Envoy's bounds of `initial_stream_window_size` and `initial_connection_window_size`.
const WINDOW: (u32, u32) = (65_535, 2_147_483_647);

/// `envoy.filters.network.http_connection_manager` as HBONE's termination: the chain's
/// HTTP/2 server settings and connection idle timeout (`common_http_protocol_options`), and
/// the tcp_proxy each CONNECT stream is proxied by (`stat_prefix`, the one route's cluster,
/// `stream_idle_timeout`, `access_log`).
pub(super) fn connection_manager(
    h: &HttpConnectionManager,
    path: &str,
) -> Result<(HboneTerminate, TcpProxyConfig)> {
    if h.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Auto | CodecType::Http2) => {}
        Ok(other) => {
            return Err(ConfigError::unsupported(
                field(path, "codec_type"),
                format!(
                    "{} is not supported: HBONE is HTTP/2 (HTTP2, or AUTO, which Switchyard \
                     serves as HTTP/2 only)",
                    other.as_str_name()
                ),
            ))
        }
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "codec_type"),
                format!("unknown codec type {}", h.codec_type),
            ))
        }
    }
    let hpath = field(path, "http2_protocol_options");
    let http2 = match &h.http2_protocol_options {
        Some(o) if o.allow_connect => http2_settings(o, &hpath)?,
        _ => {
            return Err(ConfigError::invalid(
                field(&hpath, "allow_connect"),
                "required (true): HBONE's streams are CONNECT requests",
            ))
        }
    };
    hcm_upgrades(&h.upgrade_configs, &field(path, "upgrade_configs"))?;
    let rpath = field(path, "route_config");
    let routes = member(
        h.route_specifier.as_ref().map(|r| match r {
            RouteSpecifier::RouteConfig(r) => Some(r),
            _ => None,
        }),
        (&rpath, "required (inline)"),
        (
            path,
            "only an inline route_config is supported (not rds or scoped_routes)",
        ),
    )?;
    let cluster = route_config(routes, &rpath)?;
    http_filters(&h.http_filters, &field(path, "http_filters"))?;
    let idle_timeout = timeout_or(
        h.stream_idle_timeout.as_ref(),
        DEFAULT_STREAM_IDLE_TIMEOUT,
        &field(path, "stream_idle_timeout"),
    )?;
    let access_logs = access_logs(&h.access_log, &field(path, "access_log"))?;
    let cpath = field(path, "common_http_protocol_options");
    let connection_idle = timeout_or(
        h.common_http_protocol_options
            .as_ref()
            .and_then(|o| o.idle_timeout.as_ref()),
        DEFAULT_HTTP_IDLE_TIMEOUT,
        &field(&cpath, "idle_timeout"),
    )?;
    Ok((
        HboneTerminate {
            http2,
            idle_timeout_ms: connection_idle.map(millis_ceil),
        },
        TcpProxyConfig {
            stat_prefix: h.stat_prefix.clone(),
            route: RouteConfig::Cluster(cluster),
            idle_timeout,
            max_connect_attempts: 1,
            hash_source_ip: false,
            access_logs,
            tunneling: None,
        },
    ))
}

/// `http2_protocol_options`: the three settings HBONE uses, in Envoy's ranges, Envoy's
/// defaults for those left out (`allow_connect` is the caller's).
fn http2_settings(o: &Http2ProtocolOptions, path: &str) -> Result<Http2Settings> {
    let d = Http2Settings::ENVOY_DEFAULT;
    let setting = |v: Option<&UInt32Value>, name: &str, default: u32, (lo, hi): (u32, u32)| match v
        .map(|v| v.value)
    {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(&v) => Ok(v),
        Some(v) => Err(ConfigError::invalid(
            field(path, name),
            format!("{v} is out of range: must be {lo} to {hi} (as in Envoy)"),
        )),
    };
    Ok(Http2Settings {
        max_concurrent_streams: setting(
            o.max_concurrent_streams.as_ref(),
            "max_concurrent_streams",
            d.max_concurrent_streams,
            STREAMS,
        )?,
        initial_stream_window_bytes: setting(
            o.initial_stream_window_size.as_ref(),
            "initial_stream_window_size",
            d.initial_stream_window_bytes,
            WINDOW,
        )?,
        initial_connection_window_bytes: setting(
            o.initial_connection_window_size.as_ref(),
            "initial_connection_window_size",
            d.initial_connection_window_bytes,
            WINDOW,
        )?,
    })
}

/// The one supported member of a oneof: `found` is `None` when the oneof is unset (an error
/// at `required`'s path), `Some(None)` when another member is set (not supported, at
/// `other`'s path), each with its message.
fn member<T>(found: Option<Option<T>>, required: (&str, &str), other: (&str, &str)) -> Result<T> {
    match found {
        Some(Some(v)) => Ok(v),
        Some(None) => Err(ConfigError::unsupported(other.0, other.1)),
        None => Err(ConfigError::invalid(required.0, required.1)),
    }
}

/// Whether `t` names the CONNECT upgrade (Envoy compares upgrade types without regard to
/// case).
fn is_connect(t: &str) -> bool {
    t.eq_ignore_ascii_case("CONNECT")
}

/// The connection manager's `upgrade_configs`: exactly `[{upgrade_type: CONNECT}]`.
fn hcm_upgrades(upgrades: &[HcmUpgradeConfig], path: &str) -> Result<()> {
    if upgrades.is_empty() {
        return Err(ConfigError::invalid(
            path,
            "required: [{upgrade_type: CONNECT}] (HBONE's streams are CONNECT requests)",
        ));
    }
    for (i, u) in upgrades.iter().enumerate() {
        let upath = index(path, i);
        if !is_connect(&u.upgrade_type) {
            return Err(ConfigError::unsupported(
                field(&upath, "upgrade_type"),
                format!(
                    "'{}' is not supported: only CONNECT (HBONE)",
                    u.upgrade_type
                ),
            ));
        }
        if i > 0 {
            return Err(ConfigError::invalid(
                upath,
                "a second CONNECT upgrade (Envoy: multiple upgrade configs with the same name)",
            ));
        }
    }
    Ok(())
}

/// The inline `route_config`: one virtual host for every domain (`"*"`) with one route,
/// `connect_matcher` to a cluster with CONNECT terminated (`connect_config`). The cluster's
/// name.
fn route_config(r: &RouteConfiguration, path: &str) -> Result<String> {
    let vpath = field(path, "virtual_hosts");
    let vh = one(&r.virtual_hosts, &vpath, "virtual host", ONE_ROUTE)?;
    virtual_host(vh, &index(&vpath, 0))
}

/// Why an HBONE chain has one virtual host, one domain and one route.
const ONE_ROUTE: &str = "every CONNECT stream of an HBONE chain takes the same route";

/// The one element of `items` at `path`: none is an error, a second is not supported
/// (`why`).
fn one<'a, T>(items: &'a [T], path: &str, what: &str, why: &str) -> Result<&'a T> {
    match items {
        [one] => Ok(one),
        [] => Err(ConfigError::invalid(
            path,
            format!("exactly one {what} is required"),
        )),
        _ => Err(ConfigError::unsupported(
            index(path, 1),
            format!("exactly one {what} is supported: {why}"),
        )),
    }
}

fn virtual_host(vh: &VirtualHost, path: &str) -> Result<String> {
    if vh.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty)",
        ));
    }
    let dpath = field(path, "domains");
    let domain = one(&vh.domains, &dpath, "domain (\"*\")", ONE_ROUTE)?;
    if domain != "*" {
        return Err(ConfigError::unsupported(
            index(&dpath, 0),
            format!(
                "'{domain}' is not supported: only \"*\" (Switchyard does not match :authority \
                 per virtual host)"
            ),
        ));
    }
    let rpath = field(path, "routes");
    let route = one(&vh.routes, &rpath, "route", ONE_ROUTE)?;
    connect_route(route, &index(&rpath, 0))
}

/// A route: `match: {connect_matcher: {}}`, `route: {cluster, upgrade_configs: [{upgrade_type:
/// CONNECT, connect_config: {}}]}`.
fn connect_route(route: &Route, path: &str) -> Result<String> {
    let mpath = field(path, "match");
    member(
        route
            .r#match
            .as_ref()
            .and_then(|m| m.path_specifier.as_ref())
            .map(|p| matches!(p, PathSpecifier::ConnectMatcher(_)).then_some(())),
        (&field(&mpath, "connect_matcher"), "required ({})"),
        (
            &mpath,
            "only connect_matcher is supported (an HBONE chain routes CONNECT streams)",
        ),
    )?;
    let apath = field(path, "route");
    let action = member(
        route.action.as_ref().map(|a| match a {
            Action::Route(a) => Some(a),
            _ => None,
        }),
        (&apath, "required"),
        (path, "only a route to a cluster is supported"),
    )?;
    let cluster = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => name.clone(),
        Some(ClusterSpecifier::Cluster(_)) | None => {
            return Err(ConfigError::invalid(
                field(&apath, "cluster"),
                "required (non-empty)",
            ))
        }
        Some(_) => {
            return Err(ConfigError::unsupported(
                &apath,
                "only cluster is supported",
            ))
        }
    };
    route_upgrades(&action.upgrade_configs, &field(&apath, "upgrade_configs"))?;
    Ok(cluster)
}

/// The route's `upgrade_configs`: exactly `[{upgrade_type: CONNECT, connect_config: {}}]`.
/// Without `connect_config` Envoy forwards the CONNECT request to the cluster as HTTP; with
/// it, it sends the stream's payload as a TCP connection, which is what Switchyard does.
fn route_upgrades(upgrades: &[UpgradeConfig], path: &str) -> Result<()> {
    const WANT: &str = "[{upgrade_type: CONNECT, connect_config: {}}]";
    let u = match upgrades {
        [] => {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "required: {WANT} (each stream's payload goes to the cluster as a TCP \
                     connection)"
                ),
            ))
        }
        [u, ..] => u,
    };
    let upath = index(path, 0);
    if !is_connect(&u.upgrade_type) {
        return Err(ConfigError::unsupported(
            field(&upath, "upgrade_type"),
            format!(
                "'{}' is not supported: only CONNECT (HBONE)",
                u.upgrade_type
            ),
        ));
    }
    if u.connect_config.is_none() {
        return Err(ConfigError::invalid(
            field(&upath, "connect_config"),
            "required ({}): without it Envoy forwards the CONNECT request to the cluster as \
             HTTP; with it, as in Switchyard, the stream's payload goes to the cluster as a TCP \
             connection",
        ));
    }
    if upgrades.len() > 1 {
        return Err(ConfigError::unsupported(
            index(path, 1),
            format!("exactly {WANT} is supported"),
        ));
    }
    Ok(())
}

/// `http_filters`: exactly the router (`envoy.filters.http.router`, no field set).
fn http_filters(filters: &[HttpFilter], path: &str) -> Result<()> {
    let f = one(
        filters,
        path,
        "HTTP filter (envoy.filters.http.router)",
        "a CONNECT stream goes through the router alone",
    )?;
    let fpath = index(path, 0);
    if f.name.is_empty() {
        return Err(ConfigError::invalid(
            field(&fpath, "name"),
            "required (non-empty)",
        ));
    }
    let tpath = field(&fpath, "typed_config");
    match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) if type_name(any) == ROUTER => Ok(()),
        Some(http_filter::ConfigType::TypedConfig(any)) => Err(ConfigError::unsupported(
            tpath,
            format!(
                "@type '{}' is not supported (only type.googleapis.com/{ROUTER})",
                any.type_url
            ),
        )),
        _ => Err(ConfigError::invalid(
            tpath,
            format!("required: {{\"@type\": type.googleapis.com/{ROUTER}}}"),
        )),
    }
}

/// `tunneling_config`: `hostname` (required) and `headers_to_add`, with Envoy's
/// substitution operators parsed.
pub(super) fn tunneling(t: &TunnelingConfig, path: &str) -> Result<Tunneling> {
    let hpath = field(path, "hostname");
    if t.hostname.is_empty() {
        return Err(ConfigError::invalid(hpath, "required (non-empty)"));
    }
    let hostname = template(&t.hostname, &hpath)?;
    for part in &hostname.parts {
        if let TemplatePart::Literal(s) = part {
            if let Some(c) = s.chars().find(|c| !authority_char(*c)) {
                return Err(ConfigError::invalid(
                    hpath,
                    format!("{c:?} cannot be in an :authority"),
                ));
            }
        }
    }
    let apath = field(path, "headers_to_add");
    let headers = t
        .headers_to_add
        .iter()
        .enumerate()
        .map(|(i, h)| tunnel_header(h, &index(&apath, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tunneling { hostname, headers })
}

/// What may stand in an `:authority` (RFC 3986's authority: unreserved, sub-delims, `:`,
/// `@`, the brackets of an IPv6 literal, and `%` of a percent-encoding).
fn authority_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@[]%".contains(c)
}

/// Connection-specific headers, which HTTP/2 forbids (RFC 9113 8.2.2; `te` but for
/// `trailers`, which a CONNECT request has no use for).
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// One of `headers_to_add`: a valid HTTP/2 name (lower-cased, as Envoy does), a value with
/// operators, and whether it appends (`append_action`, or the deprecated `append`).
fn tunnel_header(h: &HeaderValueOption, path: &str) -> Result<TunnelHeader> {
    let hpath = field(path, "header");
    let Some(header) = &h.header else {
        return Err(ConfigError::invalid(hpath, "required"));
    };
    let kpath = field(&hpath, "key");
    let name = header.key.to_ascii_lowercase();
    if name.is_empty() {
        return Err(ConfigError::invalid(kpath, "required (non-empty)"));
    }
    if name.starts_with(':') || name == "host" {
        return Err(ConfigError::invalid(
            kpath,
            format!(
                "'{name}' may not be added (Envoy: :-prefixed or host headers may not be modified)"
            ),
        ));
    }
    if CONNECTION_HEADERS.contains(&name.as_str()) {
        return Err(ConfigError::invalid(
            kpath,
            format!(
                "'{name}' may not be added: a connection-specific header, which HTTP/2 forbids"
            ),
        ));
    }
    if let Some(c) = name.chars().find(|c| !token_char(*c)) {
        return Err(ConfigError::invalid(
            kpath,
            format!("'{name}' is not a valid header name ({c:?})"),
        ));
    }
    let vpath = field(&hpath, "value");
    let value = template(&header.value, &vpath)?;
    for part in &value.parts {
        if let TemplatePart::Literal(s) = part {
            if let Some(c) = s.chars().find(|c| c.is_ascii_control() && *c != '\t') {
                return Err(ConfigError::invalid(
                    vpath,
                    format!("{c:?} cannot be in a header value"),
                ));
            }
        }
    }
    #[allow(deprecated)] // `append` is deprecated in Envoy's API, still accepted by Envoy 1.40.
    let append = match (&h.append, HeaderAppendAction::try_from(h.append_action)) {
        (Some(_), _) if h.append_action != 0 => {
            return Err(ConfigError::invalid(
                field(path, "append"),
                "both append and append_action are set (as Envoy, give one)",
            ))
        }
        (Some(a), _) => a.value,
        (None, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => true,
        (None, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => false,
        (None, Ok(other)) => {
            return Err(ConfigError::unsupported(
                field(path, "append_action"),
                format!(
                    "{} is not supported (APPEND_IF_EXISTS_OR_ADD and \
                     OVERWRITE_IF_EXISTS_OR_ADD are)",
                    other.as_str_name()
                ),
            ))
        }
        (None, Err(_)) => {
            return Err(ConfigError::invalid(
                field(path, "append_action"),
                format!("unknown action {}", h.append_action),
            ))
        }
    };
    Ok(TunnelHeader {
        name,
        value,
        append,
    })
}

/// RFC 9110's `tchar`: what a header name is made of.
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Text with Envoy's substitution operators: `%%` is a `%`; `%NAME%` one of the downstream
/// address operators (any other, or one with arguments or a length, is refused); a `%`
/// that starts no operator is refused, as Envoy refuses it.
fn template(text: &str, path: &str) -> Result<Template> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('%') {
        literal.push_str(&rest[..pos]);
        let at = text.len() - rest.len() + pos;
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            literal.push('%');
            rest = r;
            continue;
        }
        let Some(end) = rest.find('%') else {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "no command operator at position {at} (a literal '%' is written '%%', as in \
                     Envoy)"
                ),
            ));
        };
        let name = &rest[..end];
        let part = match name {
            "DOWNSTREAM_LOCAL_ADDRESS" => TemplatePart::DownstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
                TemplatePart::DownstreamLocalAddressWithoutPort
            }
            "DOWNSTREAM_LOCAL_PORT" => TemplatePart::DownstreamLocalPort,
            "DOWNSTREAM_REMOTE_ADDRESS" => TemplatePart::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
                TemplatePart::DownstreamRemoteAddressWithoutPort
            }
            "DOWNSTREAM_REMOTE_PORT" => TemplatePart::DownstreamRemotePort,
            "UPSTREAM_HOST" => TemplatePart::UpstreamHost,
            _ => {
                return Err(ConfigError::unsupported(
                    path,
                    format!(
                        "command operator '%{name}%' is not supported here (only \
                         %DOWNSTREAM_LOCAL_ADDRESS%, %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%, \
                         %DOWNSTREAM_LOCAL_PORT%, %DOWNSTREAM_REMOTE_ADDRESS%, \
                         %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %DOWNSTREAM_REMOTE_PORT%, \
                         %UPSTREAM_HOST%)"
                    ),
                ))
            }
        };
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &rest[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(Template { parts })
}

/// A cluster's HTTP/2: `typed_extension_protocol_options` (keyed by
/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` or Envoy's extension name
/// `envoy.upstreams.http.http_protocol_options`) with `explicit_http_config:
/// {http2_protocol_options}` and optionally `common_http_protocol_options.idle_timeout`; or
/// the deprecated `http2_protocol_options` (Envoy's default idle timeout). Both at once are
/// taken, as Envoy takes them, when they say the same (Envoy uses the typed one).
pub(super) fn cluster_http2(c: &Cluster, path: &str) -> Result<Option<Http2Upstream>> {
    let tpath = field(path, "typed_extension_protocol_options");
    let mut keys: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    keys.sort();
    let mut typed = None;
    for key in keys {
        let kpath = field(&tpath, key);
        if key != HTTP_PROTOCOL_OPTIONS && key != HTTP_PROTOCOL_OPTIONS_NAME {
            return Err(ConfigError::unsupported(
                kpath,
                format!(
                    "only {HTTP_PROTOCOL_OPTIONS} (or {HTTP_PROTOCOL_OPTIONS_NAME}) is \
                     supported (Envoy: Didn't find a registered network or http filter or \
                     protocol options implementation for name: '{key}')"
                ),
            ));
        }
        if typed.is_some() {
            return Err(ConfigError::invalid(
                kpath,
                "HttpProtocolOptions given twice (under its type name and its extension name)",
            ));
        }
        let any = &c.typed_extension_protocol_options[key];
        let o: HttpProtocolOptions = decode_any(any, HTTP_PROTOCOL_OPTIONS, &kpath)?;
        typed = Some(upstream_http2(&o, &kpath)?);
    }
    #[allow(deprecated)] // Deprecated in Envoy's API, still accepted by Envoy 1.40.
    let deprecated = match &c.http2_protocol_options {
        Some(o) => {
            let hpath = field(path, "http2_protocol_options");
            Some(Http2Upstream {
                http2: upstream_settings(o, &hpath)?,
                idle_timeout_ms: Some(millis_ceil(DEFAULT_HTTP_IDLE_TIMEOUT)),
            })
        }
        None => None,
    };
    match (typed, deprecated) {
        (Some(t), Some(d)) if t.http2 != d.http2 => Err(ConfigError::invalid(
            field(path, "http2_protocol_options"),
            "differs from typed_extension_protocol_options' http2_protocol_options, which \
             Envoy uses instead: give one of them",
        )),
        (Some(t), _) => Ok(Some(t)),
        (None, d) => Ok(d),
    }
}

/// `HttpProtocolOptions` on a cluster: explicit HTTP/2, and the pooled connections' idle
/// timeout.
fn upstream_http2(o: &HttpProtocolOptions, path: &str) -> Result<Http2Upstream> {
    let epath = field(path, "explicit_http_config");
    let explicit = member(
        o.upstream_protocol_options.as_ref().map(|u| match u {
            UpstreamProtocolOptions::ExplicitHttpConfig(e) => Some(e),
            _ => None,
        }),
        (
            &epath,
            "required (Envoy: one of explicit_http_config, use_downstream_protocol_config, \
             auto_config)",
        ),
        (path, "only explicit_http_config is supported"),
    )?;
    let hpath = field(&epath, "http2_protocol_options");
    let options = member(
        explicit.protocol_config.as_ref().map(|p| match p {
            ProtocolConfig::Http2ProtocolOptions(h) => Some(h),
            _ => None,
        }),
        (&hpath, "required"),
        (&epath, "only http2_protocol_options is supported"),
    )?;
    let http2 = upstream_settings(options, &hpath)?;
    let idle = timeout_or(
        o.common_http_protocol_options
            .as_ref()
            .and_then(|c| c.idle_timeout.as_ref()),
        DEFAULT_HTTP_IDLE_TIMEOUT,
        &field(&field(path, "common_http_protocol_options"), "idle_timeout"),
    )?;
    Ok(Http2Upstream {
        http2,
        idle_timeout_ms: idle.map(millis_ceil),
    })
}

/// A cluster's `http2_protocol_options`: the settings; `allow_connect` is the connection
/// manager's (HBONE's CONNECT needs none upstream).
fn upstream_settings(o: &Http2ProtocolOptions, path: &str) -> Result<Http2Settings> {
    if o.allow_connect {
        return Err(ConfigError::unsupported(
            field(path, "allow_connect"),
            "not supported on a cluster: a tunnel's CONNECT needs none (it is the connection \
             manager's, for terminating one)",
        ));
    }
    http2_settings(o, path)
}

/// `original_dst_lb_config`: only on an ORIGINAL_DST cluster; `use_http_header: true` with
/// `http_header_name: ":authority"` (an HBONE stream goes where its `:authority` says), or
/// `use_http_header: false` (Envoy's default: the connection's original destination).
pub(super) fn original_dst_authority(c: &Cluster, original_dst: bool, path: &str) -> Result<bool> {
    let Some(LbConfig::OriginalDstLbConfig(o)) = &c.lb_config else {
        return Ok(false);
    };
    let opath = field(path, "original_dst_lb_config");
    if !original_dst {
        return Err(ConfigError::invalid(
            opath,
            "only valid with type ORIGINAL_DST",
        ));
    }
    let npath = field(&opath, "http_header_name");
    if !o.use_http_header {
        if !o.http_header_name.is_empty() {
            return Err(ConfigError::invalid(
                npath,
                "set while use_http_header is false (Envoy: Set use_http_header to true if \
                 http_header_name is desired)",
            ));
        }
        return Ok(false);
    }
    if o.http_header_name.eq_ignore_ascii_case(":authority") {
        return Ok(true);
    }
    let name = if o.http_header_name.is_empty() {
        "x-envoy-original-dst-host (Envoy's default)"
    } else {
        o.http_header_name.as_str()
    };
    Err(ConfigError::unsupported(
        npath,
        format!("{name} is not supported: only \":authority\" (HBONE's destination)"),
    ))
}

/// A cluster without HTTP/2 whose `load_assignment` has an endpoint with an HBONE tunnel
/// (`metadata.typed_filter_metadata["switchyard.hbone"]`) is refused at that endpoint: the
/// tunnel is a CONNECT stream over HTTP/2.
pub(super) fn tunnels_need_http2(c: &Cluster, path: &str) -> Result<()> {
    let Some(la) = &c.load_assignment else {
        return Ok(());
    };
    match first_tunnel_path(la, &field(path, "load_assignment"))? {
        Some(tunnel) => Err(ConfigError::invalid(
            tunnel,
            format!(
                "an HBONE tunnel needs the cluster's HTTP/2 \
                 (typed_extension_protocol_options {HTTP_PROTOCOL_OPTIONS} with \
                 explicit_http_config.http2_protocol_options)"
            ),
        )),
        None => Ok(()),
    }
}

/// Each static listener's tunneling tcp_proxies route only to clusters with HTTP/2, among
/// the bootstrap's clusters (a name that is not among them is a no-route, as Envoy's; one
/// from CDS is checked when it compiles); its other tcp_proxies never route to a cluster
/// whose endpoints are reached through HBONE tunnels (a connection never bypasses its
/// tunnel). `protos` are the listeners `listeners` came from.
pub(super) fn tunneling_clusters(
    protos: &[Listener],
    listeners: &[ListenerConfig],
    clusters: &[Arc<ClusterConfig>],
) -> Result<()> {
    for (i, (proto, l)) in protos.iter().zip(listeners).enumerate() {
        let Some(t) = l.tcp() else { continue };
        let lpath = index("static_resources.listeners", i);
        let chains = t
            .filter_chains
            .iter()
            .zip(&proto.filter_chains)
            .enumerate()
            .map(|(j, (c, p))| (c, p, index(&field(&lpath, "filter_chains"), j)));
        let default = t
            .default_filter_chain
            .as_ref()
            .zip(proto.default_filter_chain.as_ref())
            .map(|(c, p)| (c, p, field(&lpath, "default_filter_chain")));
        for (c, p, cpath) in chains.chain(default) {
            let last = p.filters.len().saturating_sub(1);
            let path = field(&index(&field(&cpath, "filters"), last), "typed_config");
            let tunnelling = c.tcp_proxy.tunneling.is_some();
            let mismatch = |cl: &ClusterConfig| {
                if tunnelling {
                    cl.http2.is_none()
                } else {
                    cl.endpoints.iter().any(|e| e.tunnel.is_some())
                }
            };
            let Some(name) = c
                .tcp_proxy
                .route
                .cluster_names()
                .find(|n| clusters.iter().any(|cl| cl.name == *n && mismatch(cl)))
            else {
                continue;
            };
            return Err(if tunnelling {
                ConfigError::invalid(
                    field(&path, "tunneling_config"),
                    format!(
                        "routes to cluster '{name}', which has no HTTP/2 \
                         (typed_extension_protocol_options {HTTP_PROTOCOL_OPTIONS} with \
                         explicit_http_config.http2_protocol_options): a tunnel is a CONNECT \
                         stream over HTTP/2"
                    ),
                )
            } else {
                ConfigError::invalid(
                    path,
                    format!(
                        "routes to cluster '{name}', whose endpoints are reached through HBONE \
                         tunnels (metadata {HBONE_TUNNEL_KEY}), without tunneling_config: a \
                         connection never bypasses its tunnel"
                    ),
                )
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_yaml_rib;
    use crate::rib::{FilterChainConfig, Rib};
    use std::time::Duration;
    use switchyard_dataplane::fib::hbone::TemplatePart as P;

    const F: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

    fn rib(yaml: &str) -> Rib {
        parse_yaml_rib(yaml)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"))
            .0
    }

    /// The error's path (and that it is one).
    fn refused(yaml: &str) -> String {
        match parse_yaml_rib(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.path().to_string(),
        }
    }

    fn chain(r: &Rib) -> &FilterChainConfig {
        &r.listeners[0].tcp().unwrap().filter_chains[0]
    }

    /// A listener whose one chain ends in a connection manager with `fields` (YAML at its
    /// fields' indent), and a static cluster `backend`. `{route}` in `fields` stands for the
    /// one CONNECT route to `backend`; `{router}` for the router filter.
    fn hcm(fields: &str) -> String {
        let route = "route_config:
            virtual_hosts:
            - name: connect
              domains: ['*']
              routes:
              - match: {connect_matcher: {}}
                route:
                  cluster: backend
                  upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]";
        let router = "http_filters:
          - name: envoy.filters.http.router
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
        let fields = fields.replace("{route}", route).replace("{router}", router);
        format!(
            "static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 15008}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
{fields}
  clusters:
  - name: backend
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9000}}}}}}
"
        )
    }

    /// The minimal termination: what every test below changes one thing of.
    const MINIMAL: &str = "          stat_prefix: hb
          http2_protocol_options: {allow_connect: true}
          upgrade_configs: [{upgrade_type: CONNECT}]
          {route}
          {router}";

    #[test]
    fn a_connection_manager_terminates_hbone_with_envoys_defaults() {
        let r = rib(&hcm(MINIMAL));
        let c = chain(&r);
        assert_eq!(
            c.hbone,
            Some(HboneTerminate {
                http2: Http2Settings::ENVOY_DEFAULT,
                idle_timeout_ms: Some(3_600_000),
            }),
            "Envoy's defaults: the connection's idle timeout is an hour"
        );
        let t = &c.tcp_proxy;
        assert_eq!(t.stat_prefix, "hb");
        assert_eq!(t.route, RouteConfig::Cluster("backend".into()));
        assert_eq!(t.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(t.max_connect_attempts, 1);
        assert!(!t.hash_source_ip);
        assert!(t.access_logs.is_empty());
        assert!(t.tunneling.is_none());
        // What walks routes sees the stream's cluster.
        assert_eq!(
            r.listeners[0].routed_clusters().collect::<Vec<_>>(),
            ["backend"]
        );
    }

    #[test]
    fn a_connection_manager_takes_its_settings_idle_timeout_and_logs() {
        let r = rib(&hcm("          stat_prefix: hb
          codec_type: http2
          http2_protocol_options:
            allow_connect: true
            max_concurrent_streams: 100
            initial_stream_window_size: 65535
            initial_connection_window_size: 2147483647
          upgrade_configs: [{upgrade_type: Connect}]
          stream_idle_timeout: 0s
          common_http_protocol_options: {idle_timeout: 90s}
          access_log:
          - name: stdout
            typed_config:
              '@type': type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
          {route}
          {router}"));
        let c = chain(&r);
        assert_eq!(
            c.hbone.as_ref().unwrap().http2,
            Http2Settings {
                max_concurrent_streams: 100,
                initial_stream_window_bytes: 65_535,
                initial_connection_window_bytes: 2_147_483_647,
            }
        );
        assert_eq!(c.tcp_proxy.idle_timeout, None, "0s turns it off");
        assert_eq!(c.hbone.as_ref().unwrap().idle_timeout_ms, Some(90_000));
        assert_eq!(c.tcp_proxy.access_logs.len(), 1);
        let off = rib(&hcm(MINIMAL).replace(
            "stat_prefix: hb\n",
            "stat_prefix: hb\n          common_http_protocol_options: {idle_timeout: 0s}\n",
        ));
        assert_eq!(chain(&off).hbone.as_ref().unwrap().idle_timeout_ms, None);
        // The connection's other HTTP settings are not Switchyard's (it stays L4).
        let other = hcm(MINIMAL).replace(
            "stat_prefix: hb\n",
            "stat_prefix: hb\n          common_http_protocol_options: {max_connection_duration: 60s}\n",
        );
        assert_eq!(
            refused(&other),
            format!("{F}.common_http_protocol_options.max_connection_duration")
        );
    }

    #[test]
    fn gates_may_come_before_a_connection_manager() {
        let yaml = hcm(MINIMAL).replace(
            "      - name: hcm\n",
            "      - name: rbac
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: r
      - name: hcm\n",
        );
        let r = rib(&yaml);
        assert!(chain(&r).rbac.is_some());
        assert!(chain(&r).hbone.is_some());
    }

    #[test]
    fn each_part_of_the_termination_is_refused_by_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("          stat_prefix: hb\n", "", "stat_prefix"),
            ("stat_prefix: hb\n", "stat_prefix: hb\n          codec_type: HTTP3\n", "codec_type"),
            (
                "http2_protocol_options: {allow_connect: true}",
                "http2_protocol_options: {max_concurrent_streams: 10}",
                "http2_protocol_options.allow_connect",
            ),
            (
                "{allow_connect: true}",
                "{allow_connect: true, max_concurrent_streams: 2147483648}",
                "http2_protocol_options.max_concurrent_streams",
            ),
            (
                "{allow_connect: true}",
                "{allow_connect: true, initial_connection_window_size: 1000}",
                "http2_protocol_options.initial_connection_window_size",
            ),
            (
                "{allow_connect: true}",
                "{allow_connect: true, allow_metadata: true}",
                "http2_protocol_options.allow_metadata",
            ),
            (
                "upgrade_configs: [{upgrade_type: CONNECT}]",
                "upgrade_configs: []",
                "upgrade_configs",
            ),
            (
                "[{upgrade_type: CONNECT}]",
                "[{upgrade_type: CONNECT, filters: []}]",
                "upgrade_configs[0].filters",
            ),
            (
                "[{upgrade_type: CONNECT}]",
                "[{upgrade_type: CONNECT}, {upgrade_type: websocket}]",
                "upgrade_configs[1].upgrade_type",
            ),
            ("domains: ['*']", "domains: []", "route_config.virtual_hosts[0].domains"),
            (
                "domains: ['*']",
                "domains: ['*', 'a']",
                "route_config.virtual_hosts[0].domains[1]",
            ),
            ("- name: connect", "- name: ''", "route_config.virtual_hosts[0].name"),
            (
                "match: {connect_matcher: {}}",
                "match: {path: /x}",
                "route_config.virtual_hosts[0].routes[0].match.path",
            ),
            (
                "match: {connect_matcher: {}}",
                "match: {}",
                "route_config.virtual_hosts[0].routes[0].match.connect_matcher",
            ),
            (
                "cluster: backend",
                "cluster_header: x",
                "route_config.virtual_hosts[0].routes[0].route.cluster_header",
            ),
            (
                "[{upgrade_type: CONNECT, connect_config: {}}]",
                "[{upgrade_type: websocket, connect_config: {}}]",
                "route_config.virtual_hosts[0].routes[0].route.upgrade_configs[0].upgrade_type",
            ),
            (
                "[{upgrade_type: CONNECT, connect_config: {}}]",
                "[{upgrade_type: CONNECT, connect_config: {}, enabled: true}]",
                "route_config.virtual_hosts[0].routes[0].route.upgrade_configs[0].enabled",
            ),
            (
                "[{upgrade_type: CONNECT, connect_config: {}}]",
                "[{upgrade_type: CONNECT, connect_config: {}}, {upgrade_type: CONNECT, connect_config: {}}]",
                "route_config.virtual_hosts[0].routes[0].route.upgrade_configs[1]",
            ),
            ("- name: envoy.filters.http.router", "- name: ''", "http_filters[0].name"),
            (
                "stat_prefix: hb\n",
                "stat_prefix: hb\n          stream_idle_timeout: -1s\n",
                "stream_idle_timeout",
            ),
        ];
        for (from, to, path) in cases {
            let yaml = hcm(MINIMAL).replacen(from, to, 1);
            assert_ne!(yaml, hcm(MINIMAL), "{from}");
            assert_eq!(refused(&yaml), format!("{F}.{path}"), "{from} -> {to}");
        }
        // Fault and mirror act on the connection's bytes: not before a connection manager.
        let yaml = hcm(MINIMAL).replace(
            "      - name: hcm\n",
            "      - name: mirror
        typed_config:
          '@type': type.googleapis.com/switchyard.filters.network.mirror.v1.Mirror
          stat_prefix: m
          cluster: backend
      - name: hcm\n",
        );
        assert_eq!(
            refused(&yaml),
            "static_resources.listeners[0].filter_chains[0].filters[0]"
        );
    }

    #[test]
    fn templates_parse_envoys_operators_among_text() {
        let t = template(
            "%DOWNSTREAM_LOCAL_ADDRESS%%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%:\
             %DOWNSTREAM_LOCAL_PORT% from %DOWNSTREAM_REMOTE_ADDRESS% \
             %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%/%DOWNSTREAM_REMOTE_PORT% 100%%",
            "p",
        )
        .unwrap();
        assert_eq!(
            t.parts,
            [
                P::DownstreamLocalAddress,
                P::DownstreamLocalAddressWithoutPort,
                P::Literal(":".into()),
                P::DownstreamLocalPort,
                P::Literal(" from ".into()),
                P::DownstreamRemoteAddress,
                P::Literal(" ".into()),
                P::DownstreamRemoteAddressWithoutPort,
                P::Literal("/".into()),
                P::DownstreamRemotePort,
                P::Literal(" 100%".into()),
            ]
        );
        assert_eq!(
            template("host.com:443", "p").unwrap(),
            Template::literal("host.com:443")
        );
        assert_eq!(template("%%%%", "p").unwrap(), Template::literal("%%"));
        assert_eq!(template("", "p").unwrap(), Template::default());
        for bad in [
            "a%b",
            "a%",
            "%",
            "%%%",
            "%START_TIME%",
            "%REQ(host)%",
            "%DOWNSTREAM_LOCAL_PORT:3%",
            "%downstream_local_port%",
        ] {
            let e = template(bad, "a.b").unwrap_err();
            assert_eq!(e.path(), "a.b", "{bad}: {e}");
        }
    }

    /// A tcp_proxy with `tunneling` (YAML at tunneling_config's fields' indent) to cluster
    /// `c`, which has HTTP/2 given by `http2` (YAML at the cluster's fields' indent).
    fn tunnel(tunneling: &str, http2: &str) -> String {
        format!(
            "static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 15001}}}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
          tunneling_config:
{tunneling}
  clusters:
  - name: c
{http2}
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 15008}}}}}}
"
        )
    }

    const H2: &str = "    http2_protocol_options: {}";

    fn tunneling_of(yaml: &str) -> Tunneling {
        let r = rib(yaml);
        (*chain(&r).tcp_proxy.tunneling.clone().expect("tunneling")).clone()
    }

    #[test]
    fn tunneling_takes_a_hostname_and_headers() {
        let t = tunneling_of(&tunnel(
            "            hostname: '%DOWNSTREAM_LOCAL_ADDRESS%'
            headers_to_add:
            - header: {key: X-Client, value: '%DOWNSTREAM_REMOTE_ADDRESS%'}
            - header: {key: x-a, value: one}
              append_action: OVERWRITE_IF_EXISTS_OR_ADD
            - header: {key: x-a, value: two}
              append_action: APPEND_IF_EXISTS_OR_ADD
            - header: {key: x-b, value: ''}
              append: false
            - header: {key: x-c, value: v}
              append: true",
            H2,
        ));
        assert_eq!(t.hostname.parts, [P::DownstreamLocalAddress]);
        let got: Vec<(&str, &Template, bool)> = t
            .headers
            .iter()
            .map(|h| (h.name.as_str(), &h.value, h.append))
            .collect();
        let remote = Template {
            parts: vec![P::DownstreamRemoteAddress],
        };
        assert_eq!(
            got,
            [
                ("x-client", &remote, true),
                ("x-a", &Template::literal("one"), false),
                ("x-a", &Template::literal("two"), true),
                ("x-b", &Template::default(), false),
                ("x-c", &Template::literal("v"), true),
            ]
        );
    }

    #[test]
    fn each_part_of_tunneling_is_refused_by_path() {
        let tc = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tunneling_config";
        let h = |header: &str| {
            format!("            hostname: h\n            headers_to_add:\n            - {header}")
        };
        let cases = [
            ("            hostname: ''".to_string(), "hostname"),
            ("            hostname: 'a/b'".to_string(), "hostname"),
            ("            hostname: '%UPSTREAM_CLUSTER%'".to_string(), "hostname"),
            ("            hostname: h\n            post_path: /x".to_string(), "post_path"),
            (
                "            hostname: h\n            propagate_response_trailers: true".to_string(),
                "propagate_response_trailers",
            ),
            (h("header: {key: '', value: v}"), "headers_to_add[0].header.key"),
            (h("header: {key: ':path', value: v}"), "headers_to_add[0].header.key"),
            (h("header: {key: te, value: trailers}"), "headers_to_add[0].header.key"),
            (h("header: {key: 'x(y)', value: v}"), "headers_to_add[0].header.key"),
            (h("header: {key: x, value: \"a\\nb\"}"), "headers_to_add[0].header.value"),
            (h("header: {key: x, value: '%'}"), "headers_to_add[0].header.value"),
            (h("header: {key: x, raw_value: dg==}"), "headers_to_add[0].header.raw_value"),
            (h("{append: true}"), "headers_to_add[0].header"),
            (
                h("header: {key: x, value: v}\n              append_action: OVERWRITE_IF_EXISTS"),
                "headers_to_add[0].append_action",
            ),
            (
                h("header: {key: x, value: v}\n              append: true\n              append_action: OVERWRITE_IF_EXISTS_OR_ADD"),
                "headers_to_add[0].append",
            ),
        ];
        for (t, path) in cases {
            assert_eq!(refused(&tunnel(&t, H2)), format!("{tc}.{path}"), "{t}");
        }
        // Its cluster must speak HTTP/2.
        assert_eq!(refused(&tunnel("            hostname: h", "")), tc);
        // A cluster that is not there is no route, as without tunneling.
        let missing =
            tunnel("            hostname: h", H2).replace("cluster: c\n", "cluster: gone\n");
        assert!(rib(&missing).cluster("gone").is_none());
    }

    /// [`tunnel`]'s bootstrap whose endpoint carries `metadata` (YAML at the endpoint's
    /// fields' indent); `tunneling: None` drops the tcp_proxy's `tunneling_config`.
    fn tunnelled_endpoint(tunneling: Option<&str>, http2: &str, metadata: &str) -> String {
        let yaml = tunnel(tunneling.unwrap_or("            hostname: h"), http2).replace(
            "port_value: 15008}}}\n",
            &format!("port_value: 15008}}}}}}\n{metadata}\n"),
        );
        match tunneling {
            Some(_) => yaml,
            None => yaml.replace("          tunneling_config:\n            hostname: h\n", ""),
        }
    }

    const HBONE_META: &str = "          metadata:
            typed_filter_metadata:
              switchyard.hbone:
                '@type': type.googleapis.com/switchyard.config.endpoint.v1.HboneTunnel
                address: 10.0.0.2
                port_value: 15008";

    #[test]
    fn an_endpoints_hbone_tunnel_is_its_node_proxy_and_upstream_host_renders_the_endpoint() {
        let yaml = tunnelled_endpoint(
            Some("            hostname: '%UPSTREAM_HOST%'"),
            H2,
            HBONE_META,
        );
        let r = rib(&yaml);
        let c = r.cluster("c").unwrap();
        assert_eq!(c.endpoints[0].address, "127.0.0.1:15008".parse().unwrap());
        assert_eq!(
            c.endpoints[0].tunnel,
            Some("10.0.0.2:15008".parse().unwrap())
        );
        assert_eq!(
            tunneling_of(&yaml).hostname.parts,
            vec![P::UpstreamHost],
            "%UPSTREAM_HOST% is taken"
        );
        // Without metadata, no tunnel.
        let plain = rib(&tunnel("            hostname: h", H2));
        assert_eq!(plain.cluster("c").unwrap().endpoints[0].tunnel, None);
    }

    #[test]
    fn each_part_of_an_hbone_tunnel_is_refused_by_path() {
        let ep =
            "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].metadata";
        let key = format!("{ep}.typed_filter_metadata.switchyard.hbone");
        let cases = [
            (
                HBONE_META.replace("10.0.0.2", "node-b"),
                format!("{key}.address"),
            ),
            (
                HBONE_META.replace("port_value: 15008", "port_value: 0"),
                format!("{key}.port_value"),
            ),
            (
                HBONE_META.replace("port_value: 15008", "port_value: 70000"),
                format!("{key}.port_value"),
            ),
            (
                HBONE_META.replace("              switchyard.hbone:", "              istio:"),
                format!("{ep}.typed_filter_metadata.istio"),
            ),
            (
                HBONE_META.replace(
                    "switchyard.config.endpoint.v1.HboneTunnel",
                    "google.protobuf.Struct",
                ),
                key.clone(),
            ),
            (
                "          metadata:\n            filter_metadata: {istio: {workload: b}}"
                    .to_string(),
                format!("{ep}.filter_metadata"),
            ),
            (
                HBONE_META.replace(
                    "port_value: 15008",
                    "port_value: 15008\n                zone: a",
                ),
                format!("{key}.zone"),
            ),
        ];
        for (meta, path) in cases {
            let yaml = tunnelled_endpoint(Some("            hostname: h"), H2, &meta);
            assert_eq!(refused(&yaml), path, "{meta}");
        }
        // The tunnel is a CONNECT stream over HTTP/2: its cluster needs HTTP/2.
        assert_eq!(refused(&tunnelled_endpoint(None, "", HBONE_META)), key);
        // A tcp_proxy that does not tunnel never routes to it (nothing bypasses the tunnel).
        assert_eq!(
            refused(&tunnelled_endpoint(None, H2, HBONE_META)),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
        );
    }

    #[test]
    fn a_dns_clusters_endpoints_have_no_metadata() {
        let yaml = cluster(&format!(
            "    type: STRICT_DNS
{H2}
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: b.example, port_value: 80}}}}}}
{HBONE_META}"
        ));
        assert_eq!(
            refused(&yaml),
            "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].metadata"
        );
    }

    /// A static cluster `c` with `fields` (YAML at its fields' indent).
    fn cluster(fields: &str) -> String {
        format!(
            "static_resources:
  clusters:
  - name: c
{fields}
"
        )
    }

    fn typed(options: &str) -> String {
        cluster(&format!(
            "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
{options}"
        ))
    }

    fn http2_of(yaml: &str) -> Option<Http2Upstream> {
        rib(yaml).clusters[0].http2
    }

    #[test]
    fn a_clusters_http2_takes_envoys_defaults_and_settings() {
        let hour = Some(3_600_000);
        assert_eq!(http2_of(&cluster("    connect_timeout: 1s")), None);
        assert_eq!(
            http2_of(&typed(
                "        explicit_http_config: {http2_protocol_options: {}}"
            )),
            Some(Http2Upstream {
                http2: Http2Settings::ENVOY_DEFAULT,
                idle_timeout_ms: hour,
            })
        );
        assert_eq!(
            http2_of(&typed(
                "        common_http_protocol_options: {idle_timeout: 0.5s}
        explicit_http_config:
          http2_protocol_options:
            max_concurrent_streams: 100
            initial_stream_window_size: 65536
            initial_connection_window_size: 131072"
            )),
            Some(Http2Upstream {
                http2: Http2Settings {
                    max_concurrent_streams: 100,
                    initial_stream_window_bytes: 65_536,
                    initial_connection_window_bytes: 131_072,
                },
                idle_timeout_ms: Some(500),
            })
        );
        let off = http2_of(&typed(
            "        common_http_protocol_options: {idle_timeout: 0s}
        explicit_http_config: {http2_protocol_options: {}}",
        ));
        assert_eq!(off.unwrap().idle_timeout_ms, None, "0s: never");
        // Envoy's extension name as the key.
        let by_name = typed("        explicit_http_config: {http2_protocol_options: {}}").replace(
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:",
            "      envoy.upstreams.http.http_protocol_options:",
        );
        assert!(http2_of(&by_name).is_some());
        // The deprecated form, alone, and beside the typed one when they agree (the typed
        // one's idle timeout stands).
        let deprecated = http2_of(&cluster(
            "    http2_protocol_options: {max_concurrent_streams: 7}",
        ))
        .unwrap();
        assert_eq!(deprecated.http2.max_concurrent_streams, 7);
        assert_eq!(deprecated.idle_timeout_ms, hour);
        let both = http2_of(&typed(
            "        common_http_protocol_options: {idle_timeout: 1s}
        explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 7}}
    http2_protocol_options: {max_concurrent_streams: 7}",
        ))
        .unwrap();
        assert_eq!(both.idle_timeout_ms, Some(1000));
    }

    #[test]
    fn a_clusters_http2_refuses_the_rest_by_path() {
        let opts = "static_resources.clusters[0].typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
        let cases = [
            ("        common_http_protocol_options: {idle_timeout: 1s}", "explicit_http_config"),
            ("        explicit_http_config: {}", "explicit_http_config.http2_protocol_options"),
            (
                "        explicit_http_config: {http3_protocol_options: {}}",
                "explicit_http_config.http3_protocol_options",
            ),
            (
                "        use_downstream_protocol_config: {http2_protocol_options: {}}",
                "use_downstream_protocol_config",
            ),
            (
                "        explicit_http_config: {http2_protocol_options: {}}\n        common_http_protocol_options: {max_connection_duration: 1s}",
                "common_http_protocol_options.max_connection_duration",
            ),
            (
                "        explicit_http_config: {http2_protocol_options: {}}\n        upstream_http_protocol_options: {auto_sni: true}",
                "upstream_http_protocol_options",
            ),
            (
                "        explicit_http_config: {http2_protocol_options: {max_concurrent_streams: 0}}",
                "explicit_http_config.http2_protocol_options.max_concurrent_streams",
            ),
            (
                "        explicit_http_config: {http2_protocol_options: {initial_stream_window_size: 65534}}",
                "explicit_http_config.http2_protocol_options.initial_stream_window_size",
            ),
            (
                "        explicit_http_config: {http2_protocol_options: {allow_connect: true}}",
                "explicit_http_config.http2_protocol_options.allow_connect",
            ),
        ];
        for (options, path) in cases {
            assert_eq!(
                refused(&typed(options)),
                format!("{opts}.{path}"),
                "{options}"
            );
        }
        assert_eq!(
            refused(&cluster(
                "    http2_protocol_options: {allow_connect: true}"
            )),
            "static_resources.clusters[0].http2_protocol_options.allow_connect"
        );
    }

    fn original_dst(config: &str) -> String {
        cluster(&format!(
            "    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    original_dst_lb_config: {config}"
        ))
    }

    #[test]
    fn original_dst_goes_by_authority_only() {
        let authority = |yaml: &str| rib(yaml).clusters[0].original_dst_authority;
        assert!(authority(&original_dst(
            "{use_http_header: true, http_header_name: ':authority'}"
        )));
        assert!(authority(&original_dst(
            "{use_http_header: true, http_header_name: ':Authority'}"
        )));
        assert!(!authority(&original_dst("{use_http_header: false}")));
        assert!(!authority(&original_dst("{}")));
        assert!(!authority(&cluster(
            "    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED"
        )));
        let at = "static_resources.clusters[0].original_dst_lb_config";
        for (config, path) in [
            ("{use_http_header: true}", "http_header_name"),
            (
                "{use_http_header: true, http_header_name: host}",
                "http_header_name",
            ),
            ("{http_header_name: ':authority'}", "http_header_name"),
            ("{metadata_key: {key: k, path: [{key: a}]}}", "metadata_key"),
        ] {
            assert_eq!(
                refused(&original_dst(config)),
                format!("{at}.{path}"),
                "{config}"
            );
        }
        let on_static = cluster(
            "    original_dst_lb_config: {use_http_header: true, http_header_name: ':authority'}",
        );
        assert_eq!(refused(&on_static), at);
    }
}
