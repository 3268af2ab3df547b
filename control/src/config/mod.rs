//! Loading an Envoy v3 bootstrap file.
//!
//! The pipeline, one step per module:
//!
//! 1. text -> `serde_json::Value`: YAML (`yaml`: the first document, scalars typed the way
//!    Envoy's yaml-cpp conversion types them) or JSON (`json`: with the legacy syntax
//!    protobuf's lexer accepts in Envoy), chosen by file extension.
//! 2. `walk`: the value is checked against Envoy's message descriptors and Switchyard's
//!    whitelist. Unknown fields, unsupported fields, unsupported `typed_config` types and
//!    badly typed values are rejected here, each with its full path; what Envoy's loader
//!    (protobuf's JSON parser in its legacy mode) is lenient about is rewritten into the
//!    canonical proto3 JSON form: lower-case enum names, a single value for a list, `"yes"`
//!    for `true`, `{seconds: 5}` for `"5s"`, ...
//! 3. The value is decoded with the proto3 JSON mapping (prost-reflect over the vendored
//!    descriptor set, `descriptors`) and re-encoded into envoy-types'
//!    [`Bootstrap`].
//!
//! Then `convert` turns the proto types into the RIB ([`crate::rib::Rib`]) and runs the
//! semantic checks (duplicates, ports, addresses, chain matches); [`crate::load`] does both.
//! This module does not import `convert` (nor `convert` it): what both need (errors, field
//! paths, `@type` names, duration rules) lives in leaf modules. Every error is a
//! [`ConfigError`] whose `Display` is `<path>: <message>`.

pub(crate) mod descriptors;
pub(crate) mod json;
pub(crate) mod lenient;
pub(crate) mod walk;
pub(crate) mod yaml;

use crate::error::{ConfigError, ErrorKind};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use std::path::Path;

/// Full name of the root message of a bootstrap file.
const BOOTSTRAP: &str = "envoy.config.bootstrap.v3.Bootstrap";

/// The syntax of a config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML 1.2 (a superset of JSON).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format a file's extension names: `.yaml`/`.yml` or `.json`.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A bootstrap that passed the walker and decoded.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The decoded bootstrap (the input to [`crate::convert`]).
    pub bootstrap: Bootstrap,
    /// The bootstrap in the canonical proto3 JSON form, with proto field names and defaults
    /// left out (what `/config_dump` shows).
    pub normalized: serde_json::Value,
}

/// Reads and parses a bootstrap file; the extension picks YAML or JSON.
pub fn load_file(path: impl AsRef<Path>) -> Result<LoadedConfig, ConfigError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let format = Format::from_path(path).ok_or_else(|| {
        ConfigError::new(
            ErrorKind::Io,
            &shown,
            "unknown config format: the file name must end in .yaml, .yml or .json",
        )
    })?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(ErrorKind::Io, &shown, format!("cannot read: {e}")))?;
    parse_str(&text, format).map_err(|e| match e.kind() {
        // Syntax errors have no field path: say which file.
        ErrorKind::Syntax => ConfigError::new(ErrorKind::Syntax, &shown, e.message()),
        _ => e,
    })
}

/// The fewest YAML nodes a document may have, however small the file: the parser's default
/// budget, which every config before the xDS scale bench fit.
pub const MIN_YAML_NODE_LIMIT: usize = 250_000;

/// The most YAML nodes (mappings, sequences and scalars, counting what aliases expand to) a
/// document of `len` bytes may have: one per byte, at least [`MIN_YAML_NODE_LIMIT`]. A node
/// takes at least one byte of its own text, so a document without aliases always fits,
/// however large (10,000 clusters of 10 endpoints is about 1.2 million nodes in 9 MB); a
/// small file whose aliases expand into a huge tree (billion laughs) is refused once it
/// has produced as many nodes as it has bytes.
pub fn yaml_node_limit(len: usize) -> usize {
    len.max(MIN_YAML_NODE_LIMIT)
}

/// Parses a bootstrap from text.
pub fn parse_str(text: &str, format: Format) -> Result<LoadedConfig, ConfigError> {
    parse_owned(parse_text(text, format)?)
}

/// Config text (YAML or JSON) as a JSON value, nothing checked yet: YAML the way Envoy's
/// yaml-cpp types its scalars, JSON with protobuf's legacy syntax.
pub(crate) fn parse_text(text: &str, format: Format) -> Result<serde_json::Value, ConfigError> {
    match format {
        Format::Yaml => yaml::to_json(text),
        Format::Json => json::to_json(text),
    }
}

/// Parses a bootstrap already read into a JSON value.
pub fn parse_value(value: &serde_json::Value) -> Result<LoadedConfig, ConfigError> {
    parse_owned(value.clone())
}

fn parse_owned(value: serde_json::Value) -> Result<LoadedConfig, ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::new(
            ErrorKind::Syntax,
            "",
            "a bootstrap must be a mapping at the top level (is the file empty?)",
        ));
    }
    let pool = descriptors::pool();
    let desc = pool
        .get_message_by_name(BOOTSTRAP)
        .expect("the vendored descriptor set has the bootstrap");
    let message = checked_message(&pool, desc, value)?;
    let bytes = message.encode_to_vec();
    let bootstrap = Bootstrap::decode(bytes.as_slice()).map_err(|e| {
        // The pool and the prost types come from one envoy-types release (tested).
        ConfigError::invalid(
            "",
            format!("internal error: bootstrap does not decode: {e}"),
        )
    })?;
    let normalized = proto_json(&message)
        .map_err(|e| ConfigError::invalid("", format!("internal error: {e}")))?;
    Ok(LoadedConfig {
        bootstrap,
        normalized,
    })
}

/// `value` walked as a `desc` message (every field named by its path when refused), then
/// decoded with the proto3 JSON mapping.
pub(crate) fn checked_message(
    pool: &prost_reflect::DescriptorPool,
    desc: prost_reflect::MessageDescriptor,
    mut value: serde_json::Value,
) -> Result<DynamicMessage, ConfigError> {
    // The walker rewrites what Envoy's loader is lenient about into the canonical form.
    walk::check(pool, &desc, &mut value)?;
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(&value, &mut track);
    DynamicMessage::deserialize(desc, de).map_err(|e| {
        // The walker catches what it can with exact paths; this is the fallback.
        let path = track.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::invalid(path, e.to_string())
    })
}

/// A message as proto3 JSON with proto field names (`static_resources`, not
/// `staticResources`): the form the walker checks and `/config_dump` shows.
pub(crate) fn proto_json(message: &DynamicMessage) -> Result<serde_json::Value, serde_json::Error> {
    let options = SerializeOptions::new().use_proto_field_name(true);
    message.serialize_with_options(serde_json::value::Serializer, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy, TcpProxy,
    };
    use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};

    const YAML: &str = r#"
node: { id: n1, cluster: c1 }
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filter_chain_match:
        destination_port: 10000
        prefix_ranges: [ { address_prefix: 10.0.0.0, prefix_len: 8 } ]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: l
          cluster: c
          idle_timeout: 1.5s
          max_connect_attempts: 3
  clusters:
  - name: c
    connect_timeout: 0.25s
    lb_policy: LEAST_REQUEST
    least_request_lb_config: { choice_count: 4 }
"#;

    fn tcp_proxy_of(b: &Bootstrap) -> TcpProxy {
        let l = &b.static_resources.as_ref().unwrap().listeners[0];
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            panic!("no typed_config")
        };
        TcpProxy::decode(any.value.as_slice()).unwrap()
    }

    /// Pool -> prost: what the pool decoded from JSON is what the prost types read.
    #[test]
    fn pool_and_prost_types_agree_json_to_prost() {
        let loaded = parse_str(YAML, Format::Yaml).unwrap();
        let b = &loaded.bootstrap;
        assert_eq!(b.node.as_ref().unwrap().id, "n1");
        let tp = tcp_proxy_of(b);
        assert_eq!(tp.stat_prefix, "l");
        assert_eq!(
            tp.idle_timeout,
            Some(Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert_eq!(tp.max_connect_attempts, Some(UInt32Value { value: 3 }));
        assert_eq!(
            tp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster("c".into()))
        );
        let c = &b.static_resources.as_ref().unwrap().clusters[0];
        assert_eq!(
            c.connect_timeout,
            Some(Duration {
                seconds: 0,
                nanos: 250_000_000
            })
        );

        // And back: prost bytes -> pool -> JSON is the normalized JSON.
        let desc = descriptors::pool().get_message_by_name(BOOTSTRAP).unwrap();
        let again = DynamicMessage::decode(desc, b.encode_to_vec().as_slice()).unwrap();
        let json = proto_json(&again).unwrap();
        assert_eq!(json, loaded.normalized);
        let tc = &json["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(
            tc["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
        );
        assert_eq!(tc["idle_timeout"], "1.500s");
        assert_eq!(
            json["static_resources"]["clusters"][0]["lb_policy"],
            "LEAST_REQUEST"
        );
    }

    /// Prost -> pool: a bootstrap built with the prost types survives JSON through the pool.
    #[test]
    fn pool_and_prost_types_agree_prost_to_json() {
        use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
        use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
        let tp = TcpProxy {
            stat_prefix: "p".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("c".into())),
            idle_timeout: Some(Duration {
                seconds: 7,
                nanos: 0,
            }),
            ..Default::default()
        };
        let original = Bootstrap {
            static_resources: Some(StaticResources {
                listeners: vec![Listener {
                    name: "l".into(),
                    filter_chains: vec![FilterChain {
                        filters: vec![Filter {
                            name: "tcp".into(),
                            config_type: Some(filter::ConfigType::TypedConfig(Any {
                                type_url: format!(
                                    "type.googleapis.com/{}",
                                    crate::type_names::TCP_PROXY
                                ),
                                value: tp.encode_to_vec(),
                            })),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let desc = descriptors::pool().get_message_by_name(BOOTSTRAP).unwrap();
        let dynamic = DynamicMessage::decode(desc, original.encode_to_vec().as_slice()).unwrap();
        let json = serde_json::to_value(&dynamic).unwrap();
        let loaded = parse_value(&json).unwrap();
        assert_eq!(loaded.bootstrap, original);
        assert_eq!(tcp_proxy_of(&loaded.bootstrap), tp);
    }

    /// A UDP listener's udp_proxy and its matcher's action (an `Any` inside an `Any`) come
    /// out of the normalized form (what `/config_dump` shows) as written, and the prost
    /// types read the same message.
    #[test]
    fn udp_listener_normalizes_with_nested_any() {
        use envoy_types::pb::envoy::config::listener::v3::listener_filter;
        use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
            udp_proxy_config::RouteSpecifier, UdpProxyConfig,
        };
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/configs/valid/udp_weighted.yaml"
        ))
        .unwrap();
        let loaded = parse_str(&text, Format::Yaml).unwrap();
        let l = &loaded.normalized["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["protocol"], "UDP");
        let proxy = &l["listener_filters"][0]["typed_config"];
        assert_eq!(
            proxy["@type"],
            "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
        );
        let action = &proxy["matcher"]["on_no_match"]["action"]["typed_config"];
        assert_eq!(
            action["@type"],
            "type.googleapis.com/switchyard.filters.udp.udp_proxy.v1.WeightedRoute"
        );
        assert_eq!(action["clusters"][1]["name"], "canary");
        assert_eq!(action["clusters"][1]["weight"], 10);
        let b = &loaded
            .bootstrap
            .static_resources
            .as_ref()
            .unwrap()
            .listeners[0];
        let Some(listener_filter::ConfigType::TypedConfig(any)) =
            &b.listener_filters[0].config_type
        else {
            panic!("no typed_config")
        };
        let decoded = UdpProxyConfig::decode(any.value.as_slice()).unwrap();
        assert_eq!(decoded.stat_prefix, "game");
        assert!(matches!(
            decoded.route_specifier,
            Some(RouteSpecifier::Matcher(_))
        ));
    }

    #[test]
    fn json_names_and_proto_names_both_work() {
        let camel = r#"{"staticResources": {"clusters": [{"name": "c", "connectTimeout": "2s"}]}}"#;
        let snake =
            r#"{"static_resources": {"clusters": [{"name": "c", "connect_timeout": "2s"}]}}"#;
        let a = parse_str(camel, Format::Json).unwrap();
        let b = parse_str(snake, Format::Json).unwrap();
        assert_eq!(a.bootstrap, b.bootstrap);
        assert_eq!(a.normalized, b.normalized);
        let both = r#"{"static_resources": {"clusters": [{"name": "c", "connect_timeout": "2s", "connectTimeout": "3s"}]}}"#;
        let e = parse_str(both, Format::Json).unwrap_err();
        assert_eq!(e.path(), "static_resources.clusters[0].connect_timeout");
    }

    #[test]
    fn enum_numbers_and_string_integers_are_accepted() {
        let text = r#"{"static_resources": {"clusters": [{"name": "c", "lb_policy": 3,
            "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint":
            {"address": {"socket_address": {"address": "::1", "port_value": "9000"}}}}]}]}}]}}"#;
        let loaded = parse_str(text, Format::Json).unwrap();
        assert_eq!(
            loaded.normalized["static_resources"]["clusters"][0]["lb_policy"],
            "RANDOM"
        );
    }

    /// `valid/loader_leniency.yaml` uses every leniency of Envoy's loader; what it loads to
    /// (what `/config_dump` shows) is Envoy 1.40's own `/config_dump` of the same file.
    #[test]
    fn leniencies_load_to_envoys_canonical_form() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/configs/valid/loader_leniency.yaml"
        );
        let loaded = load_file(path).unwrap();
        let envoy: serde_json::Value = serde_json::from_str(
            r#"{"listeners": [{"name": "lenient",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                  "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "lenient", "cluster": "lenient",
                    "max_connect_attempts": 2, "idle_timeout": "30.500s"}}]}],
                "use_original_dst": false}],
              "clusters": [{"name": "lenient", "type": "STATIC", "connect_timeout": "0.250s",
                "circuit_breakers": {"thresholds": [{"max_connections": 1000, "track_remaining": true}]},
                "common_lb_config": {"healthy_panic_threshold": {"value": 12.5}},
                "load_assignment": {"cluster_name": "lenient", "endpoints": [{"lb_endpoints": [
                  {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}},
                   "load_balancing_weight": 2},
                  {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9000}}},
                   "load_balancing_weight": 3}]}]}}]}"#,
        )
        .unwrap();
        assert_eq!(loaded.normalized["static_resources"], envoy);
    }

    /// What Envoy's loader refuses, Switchyard refuses too, naming the field (each checked
    /// against Envoy 1.40).
    #[test]
    fn what_envoys_loader_refuses_names_its_path() {
        let listener = |extra: &str, port: &str| {
            format!(
                "static_resources:\n  listeners:\n  - name: l\n{extra}    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n"
            )
        };
        let cluster = |extra: &str| {
            format!("static_resources:\n  clusters:\n  - name: c\n    connect_timeout: 1s\n{extra}")
        };
        let cases: &[(String, &str)] = &[
            // yaml-cpp reads `yes` and `123` as a bool and a number: not a string.
            (
                cluster("    eds_cluster_config: {service_name: yes}\n"),
                "static_resources.clusters[0].eds_cluster_config.service_name",
            ),
            (
                cluster("    eds_cluster_config: {service_name: 123}\n"),
                "static_resources.clusters[0].eds_cluster_config.service_name",
            ),
            (
                cluster("    eds_cluster_config: {service_name: 0x1F}\n"),
                "static_resources.clusters[0].eds_cluster_config.service_name",
            ),
            // `0o` is YAML 1.2 octal, which yaml-cpp does not read.
            (
                listener("", "0o23420"),
                "static_resources.listeners[0].address.socket_address.port_value",
            ),
            (
                listener("", "10_000"),
                "static_resources.listeners[0].address.socket_address.port_value",
            ),
            (
                listener("", "10000.5"),
                "static_resources.listeners[0].address.socket_address.port_value",
            ),
            (
                listener("", "\" 10000\""),
                "static_resources.listeners[0].address.socket_address.port_value",
            ),
            (
                listener("    transparent: \"on\"\n", "1"),
                "static_resources.listeners[0].transparent",
            ),
            (
                listener("    transparent: 1\n", "1"),
                "static_resources.listeners[0].transparent",
            ),
            (
                cluster("    lb_policy: roundrobin\n"),
                "static_resources.clusters[0].lb_policy",
            ),
            (
                cluster("    lb_policy: \"1.5\"\n"),
                "static_resources.clusters[0].lb_policy",
            ),
            // Merge keys are ordinary (unknown) keys to yaml-cpp.
            (
                format!(
                    "!ignore d: &d {{connect_timeout: 1s}}\n{}    <<: *d\n",
                    cluster("")
                ),
                "static_resources.clusters[0].<<",
            ),
            (
                cluster("    connect_timeout: 1\n").replace("    connect_timeout: 1s\n", ""),
                "static_resources.clusters[0].connect_timeout",
            ),
            (
                cluster("    connect_timeout: +1s\n").replace("    connect_timeout: 1s\n", ""),
                "static_resources.clusters[0].connect_timeout",
            ),
            (
                cluster("    connect_timeout: {seconds: 1, nanos: 2000000000}\n")
                    .replace("    connect_timeout: 1s\n", ""),
                "static_resources.clusters[0].connect_timeout",
            ),
            (
                cluster("    connect_timeout: {seconds: 1, millis: 2}\n")
                    .replace("    connect_timeout: 1s\n", ""),
                "static_resources.clusters[0].connect_timeout.millis",
            ),
            (
                listener("    transparent: {value: true, x: 2}\n", "1"),
                "static_resources.listeners[0].transparent.x",
            ),
        ];
        for (text, path) in cases {
            let e = parse_str(text, Format::Yaml).unwrap_err();
            assert_eq!(e.path(), *path, "{text}: {e}");
        }
    }

    #[test]
    fn whole_file_errors() {
        let e = load_file("/nonexistent/bootstrap.yaml").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/bootstrap.yaml: cannot read"),
            "{e}"
        );
        let e = load_file("bootstrap.toml").unwrap_err();
        assert!(
            e.to_string().contains("must end in .yaml, .yml or .json"),
            "{e}"
        );
        assert_eq!(yaml_node_limit(10), MIN_YAML_NODE_LIMIT);
        assert_eq!(yaml_node_limit(9_000_000), 9_000_000);
        let e = parse_str("a: [1, 2", Format::Yaml).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Syntax);
        assert!(e.to_string().starts_with("invalid YAML"), "{e}");
        let e = parse_str("{\"a\": ", Format::Json).unwrap_err();
        assert!(e.to_string().starts_with("invalid JSON"), "{e}");
        assert_eq!(
            parse_str("", Format::Yaml).unwrap_err().kind(),
            ErrorKind::Syntax
        );
        assert_eq!(
            parse_str("[1]", Format::Json).unwrap_err().kind(),
            ErrorKind::Syntax
        );
    }

    #[test]
    fn walker_errors_name_paths() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"admin": {"address": {"envoy_internal_address": {}}}}"#,
                "admin.address.envoy_internal_address",
            ),
            (
                r#"{"admin": {"socket_options": []}}"#,
                "admin.socket_options",
            ),
            (
                r#"{"static_resources": {"clusters": [{"name": 5}]}}"#,
                "static_resources.clusters[0].name",
            ),
            (
                r#"{"static_resources": {"clusters": {"name": 5}}}"#,
                "static_resources.clusters[0].name",
            ),
            (
                r#"{"static_resources": {"clusters": [{"name": "c", "lb_policy": "FASTEST"}]}}"#,
                "static_resources.clusters[0].lb_policy",
            ),
            (
                r#"{"static_resources": {"clusters": [{"name": "c", "connect_timeout": 5}]}}"#,
                "static_resources.clusters[0].connect_timeout",
            ),
            (
                r#"{"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"name": "x", "typed_config": {}}]}]}]}}"#,
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
            ),
            (
                r#"{"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"name": "x", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefx": "a"}}]}]}]}}"#,
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefx",
            ),
            (
                r#"{"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"name": "x", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "on_demand": {}}}]}]}]}}"#,
                "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.on_demand",
            ),
            (
                r#"{"static_resources": {"listeners": [{"filter_chains": [{"filter_chain_match": {"address_suffix": "0.0.0.1", "suffix_len": 8}}]}]}}"#,
                "static_resources.listeners[0].filter_chains[0].filter_chain_match.address_suffix",
            ),
            (
                // A cluster's TLS context on a chain: the walker knows where each one goes.
                r#"{"static_resources": {"listeners": [{"filter_chains": [{"transport_socket": {"name": "tls", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}}]}]}}"#,
                "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config",
            ),
            (
                r#"{"static_resources": {"listeners": [{"filter_chains": [{"transport_socket": {"name": "tls", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {"tls_certificate_provider_instance": {"instance_name": "x"}}}}}]}]}}"#,
                "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance",
            ),
            (
                r#"{"static_resources": {"clusters": [{"name": "c", "transport_socket": {"name": "tls", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "allow_renegotiation": true}}}]}}"#,
                "static_resources.clusters[0].transport_socket.typed_config.allow_renegotiation",
            ),
        ];
        for (text, path) in cases {
            let e = parse_str(text, Format::Json).unwrap_err();
            assert_eq!(e.path(), *path, "{text}: {e}");
        }
    }
}
