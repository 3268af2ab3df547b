//! HBONE's config (issue 21): a tcp_proxy's `tunneling_config` (its `hostname` and
//! `headers_to_add` with Envoy's substitution operators), a cluster's HTTP/2
//! (`typed_extension_protocol_options` `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`,
//! or the deprecated `http2_protocol_options`) and ORIGINAL_DST by `:authority`
//! (`original_dst_lb_config`).
//!
//! The walker lets through only the fields listed for these messages; what is left to refuse
//! here are values (header names, operators, ranges) and Envoy's required fields, each by its
//! path.

use super::{decode_any, timeout_or, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{millis_ceil, ClusterConfig, ListenerConfig, DEFAULT_HTTP_IDLE_TIMEOUT};
use crate::type_names::HTTP_PROTOCOL_OPTIONS;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, Http2ProtocolOptions};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TunnelingConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::UInt32Value;
use std::sync::Arc;
use switchyard_dataplane::fib::hbone::{
    Http2Settings, Http2Upstream, Template, TemplatePart, TunnelHeader, Tunneling,
};

/// The extension name Envoy also takes as the key of `HttpProtocolOptions` in
/// `typed_extension_protocol_options` (besides its type name).
const HTTP_PROTOCOL_OPTIONS_NAME: &str = "envoy.upstreams.http.http_protocol_options";

/// Envoy's bounds of `max_concurrent_streams`.
const STREAMS: (u32, u32) = (1, 2_147_483_647);
/// Envoy's bounds of `initial_stream_window_size` and `initial_connection_window_size`.
const WINDOW: (u32, u32) = (65_535, 2_147_483_647);

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
            _ => {
                return Err(ConfigError::unsupported(
                    path,
                    format!(
                        "command operator '%{name}%' is not supported here (only \
                         %DOWNSTREAM_LOCAL_ADDRESS%, %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%, \
                         %DOWNSTREAM_LOCAL_PORT%, %DOWNSTREAM_REMOTE_ADDRESS%, \
                         %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %DOWNSTREAM_REMOTE_PORT%)"
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

/// Each static listener's tunneling tcp_proxies route only to clusters with HTTP/2, among
/// the bootstrap's clusters (a name that is not among them is a no-route, as Envoy's; one
/// from CDS is checked when it compiles). `protos` are the listeners `listeners` came from.
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
            if c.tcp_proxy.tunneling.is_none() {
                continue;
            }
            let Some(name) = c.tcp_proxy.route.cluster_names().find(|n| {
                clusters
                    .iter()
                    .any(|cl| cl.name == *n && cl.http2.is_none())
            }) else {
                continue;
            };
            let last = p.filters.len().saturating_sub(1);
            let path = field(
                &field(&index(&field(&cpath, "filters"), last), "typed_config"),
                "tunneling_config",
            );
            return Err(ConfigError::invalid(
                path,
                format!(
                    "routes to cluster '{name}', which has no HTTP/2 \
                     (typed_extension_protocol_options {HTTP_PROTOCOL_OPTIONS} with \
                     explicit_http_config.http2_protocol_options): a tunnel is a CONNECT stream \
                     over HTTP/2"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_yaml_rib;
    use crate::rib::{FilterChainConfig, Rib};
    use switchyard_dataplane::fib::hbone::TemplatePart as P;

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
            ("            hostname: '%UPSTREAM_HOST%'".to_string(), "hostname"),
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
