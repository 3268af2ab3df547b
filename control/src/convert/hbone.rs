//! HBONE's config (issue 21), first the upstream side: a cluster's HTTP/2
//! (`typed_extension_protocol_options` `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`,
//! or the deprecated `http2_protocol_options`) and ORIGINAL_DST by `:authority`
//! (`original_dst_lb_config`).
//!
//! The walker lets through only the fields listed for these messages; what is left to refuse
//! here are values (header names, ranges) and Envoy's required fields, each by its path.

use super::{decode_any, timeout_or, Result};
use crate::error::ConfigError;
use crate::path::field;
use crate::rib::{millis_ceil, DEFAULT_HTTP_IDLE_TIMEOUT};
use crate::type_names::HTTP_PROTOCOL_OPTIONS;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::UInt32Value;
use switchyard_dataplane::fib::hbone::{Http2Settings, Http2Upstream};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_yaml_rib;
    use crate::rib::Rib;

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
