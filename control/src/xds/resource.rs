//! xDS resources (binary `google.protobuf.Any` payloads) checked and converted by exactly the
//! rules a bootstrap's static resources go through: the payload is decoded with the vendored
//! descriptors, walked (an unknown or unsupported field is refused with its path, nothing is
//! silently ignored), then converted by `convert` (ports, addresses, CIDRs, names...). The
//! error of a refused resource names the field, relative to the resource, for the NACK.

use crate::config::{checked_message, descriptors, proto_json, walk};
use crate::convert;
use crate::duration::check_duration;
use crate::error::{ConfigError, ErrorKind};
use crate::path::{field, index};
use crate::rib::{ClusterConfig, EndpointConfig, ListenerConfig, SecretValue};
use crate::xds::{self, Rejected};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use std::sync::Arc;

/// A listener resource (LDS): its name and config.
pub fn listener(any: &Any) -> Result<(String, ListenerConfig), Rejected> {
    let l: Listener = checked(any, xds::LISTENER_TYPE)?;
    let config = convert::listener_resource(&l).map_err(|e| rejected(&l.name, e))?;
    Ok((config.name.clone(), config))
}

/// A cluster resource (CDS): its name and config.
pub fn cluster(any: &Any) -> Result<(String, ClusterConfig), Rejected> {
    let c: Cluster = checked(any, xds::CLUSTER_TYPE)?;
    let config = convert::cluster_resource(&c).map_err(|e| rejected(&c.name, e))?;
    Ok((config.name.clone(), config))
}

/// An endpoint assignment resource (EDS): its cluster name and endpoints.
pub fn endpoints(any: &Any) -> Result<(String, Arc<[EndpointConfig]>), Rejected> {
    let la: ClusterLoadAssignment = checked(any, xds::ENDPOINTS_TYPE)?;
    convert::endpoints_resource(&la).map_err(|e| rejected(&la.cluster_name, e))
}

/// A secret resource (SDS): its name and checked payload (a certificate whose key belongs
/// to it, or a validation context whose CA and CRLs parse).
pub fn secret(any: &Any) -> Result<(String, SecretValue), Rejected> {
    let s: Secret = checked(any, xds::SECRET_TYPE)?;
    convert::secret_resource(&s).map_err(|e| rejected(&s.name, e))
}

/// A resource payload as proto3 JSON with its `@type` first (as `/config_dump` shows an
/// `Any`); `{"@type": ...}` alone when it does not decode.
pub fn to_json(any: &Any) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("@type".into(), any.type_url.clone().into());
    let full_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let pool = descriptors::pool();
    let decoded = pool
        .get_message_by_name(full_name)
        .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
        .filter(|m| unknown_any(m, "").is_none());
    if let Some(Ok(serde_json::Value::Object(fields))) = decoded.as_ref().map(proto_json) {
        out.extend(fields);
    }
    serde_json::Value::Object(out)
}

/// The inverse of [`to_json`]: the payload back from its JSON with `@type`; `None` when it
/// does not parse as that type.
pub fn from_json(value: &serde_json::Value) -> Option<Any> {
    let type_url = value.get("@type")?.as_str()?.to_string();
    let full_name = type_url.rsplit('/').next()?;
    let desc = descriptors::pool().get_message_by_name(full_name)?;
    let mut fields = value.as_object()?.clone();
    fields.remove("@type");
    let message = DynamicMessage::deserialize(desc, serde_json::Value::Object(fields)).ok()?;
    Some(Any {
        type_url,
        value: message.encode_to_vec(),
    })
}

/// The contents of a file subscription (`path_config_source`): Envoy's `DiscoveryResponse`
/// as a JSON value (`version_info`, `resources` with `@type`, optionally `type_url`). Each
/// resource is walked as its `@type` (a listener, cluster or assignment; an unknown or
/// unsupported field anywhere is refused with its path from the file's root,
/// `resources[1].address.socket_address.port_value`) and encoded; the subscription then
/// checks each on its own, exactly as over ADS. The other fields of a `DiscoveryResponse`
/// mean nothing in a file and are refused.
pub fn file_response(value: &serde_json::Value) -> Result<DiscoveryResponse, ConfigError> {
    const ACCEPTED: [&str; 4] = [
        xds::LISTENER_TYPE,
        xds::CLUSTER_TYPE,
        xds::ENDPOINTS_TYPE,
        xds::SECRET_TYPE,
    ];
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigError::invalid(
            "",
            "expected a DiscoveryResponse (a mapping with version_info and resources)",
        ));
    };
    let string = |key: &str, v: &serde_json::Value| -> Result<String, ConfigError> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| ConfigError::invalid(key, "expected a string"))
    };
    let mut response = DiscoveryResponse::default();
    for (key, v) in map {
        match key.as_str() {
            "version_info" | "versionInfo" => response.version_info = string("version_info", v)?,
            "type_url" | "typeUrl" => response.type_url = string("type_url", v)?,
            "resources" => {
                let serde_json::Value::Array(items) = v else {
                    return Err(ConfigError::invalid("resources", "expected a list"));
                };
                for (i, item) in items.iter().enumerate() {
                    let path = index("resources", i);
                    response
                        .resources
                        .push(file_resource(item, &path, &ACCEPTED)?);
                }
            }
            "nonce" | "canary" | "control_plane" | "controlPlane" | "resource_errors"
            | "resourceErrors" => {
                return Err(ConfigError::unsupported(
                    key.as_str(),
                    "means nothing in a file (Envoy reads version_info and resources); not \
                     supported by Switchyard",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    ErrorKind::UnknownField,
                    key.as_str(),
                    "unknown field (not in Envoy's DiscoveryResponse)",
                ))
            }
        }
    }
    Ok(response)
}

/// One resource of a file (`@type` among `accepted`) as an `Any`, walked first; errors name
/// the field under `path`.
fn file_resource(
    item: &serde_json::Value,
    path: &str,
    accepted: &[&str],
) -> Result<Any, ConfigError> {
    let serde_json::Value::Object(map) = item else {
        return Err(ConfigError::invalid(
            path,
            "expected an object with '@type'",
        ));
    };
    let type_url = match map.get("@type").map(|t| t.as_str()) {
        None => return Err(ConfigError::invalid(path, "missing '@type'")),
        Some(None) => {
            return Err(ConfigError::invalid(
                field(path, "@type"),
                "expected a string",
            ))
        }
        Some(Some(t)) if accepted.contains(&t) => t,
        Some(Some(t)) => {
            return Err(ConfigError::unsupported(
                field(path, "@type"),
                format!(
                    "'{t}' is not a resource here (accepted: {})",
                    accepted.join(", ")
                ),
            ))
        }
    };
    let pool = descriptors::pool();
    let desc = pool
        .get_message_by_name(type_url.rsplit('/').next().unwrap_or_default())
        .expect("the vendored descriptor set has every xDS resource type");
    let mut rest = map.clone();
    rest.remove("@type");
    let message = checked_message(&pool, desc, serde_json::Value::Object(rest)).map_err(|e| {
        let inner = e.path();
        let full = if inner.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::new(e.kind(), full, e.message())
    })?;
    Ok(Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    })
}

fn rejected(name: &str, e: ConfigError) -> Rejected {
    Rejected::new(name, e.to_string())
}

/// Decodes `any` as the message `type_url` names, walks it like a bootstrap section, and
/// returns the prost message. Errors are rejections without a name (the caller's label is
/// used), except where the name field could be read.
fn checked<M: Message + Default>(any: &Any, type_url: &str) -> Result<M, Rejected> {
    let full_name = type_url.rsplit('/').next().unwrap_or(type_url);
    if any.type_url != type_url {
        return Err(Rejected::new(
            "",
            format!("type_url: {:?}, expected {type_url:?}", any.type_url),
        ));
    }
    let pool = descriptors::pool();
    let desc = pool
        .get_message_by_name(full_name)
        .expect("the vendored descriptor set has every xDS resource type");
    let message = DynamicMessage::decode(desc.clone(), any.value.as_slice())
        .map_err(|e| Rejected::new("", format!("does not decode as {full_name}: {e}")))?;
    let name = name_of(&message);
    if let Some((path, type_url)) = unknown_any(&message, "") {
        return Err(Rejected::new(
            &name,
            format!("{path}: unknown or unsupported @type {type_url:?}"),
        ));
    }
    if let Some((path, reason)) = bad_duration(&message) {
        return Err(Rejected::new(&name, format!("{path}: {reason}")));
    }
    let mut value =
        proto_json(&message).map_err(|e| Rejected::new(&name, format!("internal error: {e}")))?;
    walk::check(&pool, &desc, &mut value).map_err(|e| rejected(&name, e))?;
    M::decode(any.value.as_slice())
        .map_err(|e| Rejected::new(&name, format!("does not decode: {e}")))
}

/// The path and type of the first `Any` inside `message` whose type the descriptors do not
/// know (JSON serialization cannot represent it, so the walker would never see it). The path
/// is only built for the one found, not for every field walked.
fn unknown_any(message: &DynamicMessage, path: &str) -> Option<(String, String)> {
    let (mut segments, type_url) = find_unknown_any(message)?;
    segments.reverse();
    Some((join_path(path, &segments), type_url))
}

/// One step of a path, innermost first as `find_first` returns them.
enum Segment {
    Field(String),
    Index(usize),
    Key(String),
}

fn find_unknown_any(message: &DynamicMessage) -> Option<(Vec<Segment>, String)> {
    find_first(message, &|m| {
        if m.descriptor().full_name() != "google.protobuf.Any" {
            return None;
        }
        let type_url = any_type_url(m);
        let known = descriptors::pool()
            .get_message_by_name(type_url.rsplit('/').next().unwrap_or_default())
            .is_some();
        (!known).then_some(type_url)
    })
}

/// The path and reason of the first duration in `message` that Envoy refuses (the walker
/// would refuse it too, but proto3 JSON cannot spell every binary duration, so it is found
/// here, before the payload is turned into JSON).
fn bad_duration(message: &DynamicMessage) -> Option<(String, String)> {
    let (mut segments, reason) = find_first(message, &|m| {
        if m.descriptor().full_name() != "google.protobuf.Duration" {
            return None;
        }
        let seconds = m.get_field_by_name("seconds").and_then(|v| v.as_i64())?;
        let nanos = m.get_field_by_name("nanos").and_then(|v| v.as_i32())?;
        check_duration(seconds, nanos).err()
    })?;
    segments.reverse();
    Some((join_path("", &segments), reason))
}

/// `base` followed by `segments` (outermost first), as the walker spells paths.
fn join_path(base: &str, segments: &[Segment]) -> String {
    segments.iter().fold(base.to_string(), |p, s| match s {
        Segment::Field(name) => field(&p, name),
        Segment::Index(i) => index(&p, *i),
        Segment::Key(k) => format!("{p}[{k}]"),
    })
}

fn any_type_url(any: &DynamicMessage) -> String {
    any.get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The first message in `message` (itself, its fields, and the payloads of `Any`s of known
/// types, whose fields the JSON form shows in place) for which `problem` says something: its
/// path, innermost segment first, and what was said.
fn find_first(
    message: &DynamicMessage,
    problem: &dyn Fn(&DynamicMessage) -> Option<String>,
) -> Option<(Vec<Segment>, String)> {
    if let Some(p) = problem(message) {
        return Some((Vec::new(), p));
    }
    if message.descriptor().full_name() == "google.protobuf.Any" {
        let type_url = any_type_url(message);
        let desc = descriptors::pool()
            .get_message_by_name(type_url.rsplit('/').next().unwrap_or_default())?;
        let value = message.get_field_by_name("value")?;
        let inner = DynamicMessage::decode(desc, value.as_bytes()?.as_ref()).ok()?;
        return find_first(&inner, problem);
    }
    for (fd, value) in message.fields() {
        let found = match value {
            Value::Message(m) => find_first(m, problem),
            Value::List(items) => items.iter().enumerate().find_map(|(i, v)| match v {
                Value::Message(m) => find_first(m, problem).map(|(mut p, t)| {
                    p.push(Segment::Index(i));
                    (p, t)
                }),
                _ => None,
            }),
            Value::Map(entries) => entries.iter().find_map(|(k, v)| match v {
                Value::Message(m) => find_first(m, problem).map(|(mut p, t)| {
                    p.push(Segment::Key(format!("{k:?}")));
                    (p, t)
                }),
                _ => None,
            }),
            _ => None,
        };
        if let Some((mut p, t)) = found {
            p.push(Segment::Field(fd.name().to_string()));
            return Some((p, t));
        }
    }
    None
}

/// The resource's own name (`name`, or `cluster_name` for an assignment), when readable.
fn name_of(message: &DynamicMessage) -> String {
    ["name", "cluster_name"]
        .iter()
        .find_map(|f| {
            message
                .get_field_by_name(f)
                .and_then(|v| v.as_str().map(str::to_string))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address::PortSpecifier, Address, CidrRange, SocketAddress,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::{
        lb_endpoint::HostIdentifier, Endpoint, LbEndpoint, LocalityLbEndpoints,
    };
    use envoy_types::pb::envoy::config::listener::v3::{
        filter, Filter, FilterChain, FilterChainMatch,
    };
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy, TcpProxy,
    };

    fn any<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.into(),
            value: m.encode_to_vec(),
        }
    }

    fn addr(ip: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }
    }

    fn tcp_proxy_filter(type_url: &str) -> Filter {
        let tp = TcpProxy {
            stat_prefix: "t".into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("c".into())),
            ..TcpProxy::default()
        };
        Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: type_url.into(),
                value: tp.encode_to_vec(),
            })),
        }
    }

    fn listener_msg(port: u32) -> Listener {
        Listener {
            name: "l1".into(),
            address: Some(addr("127.0.0.1", port)),
            filter_chains: vec![FilterChain {
                filters: vec![tcp_proxy_filter(
                    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                )],
                ..FilterChain::default()
            }],
            ..Listener::default()
        }
    }

    fn assignment(endpoint_address: Option<Address>) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: endpoint_address,
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                }],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }
    }

    #[test]
    fn a_valid_listener_and_assignment_convert() {
        let (name, l) = listener(&any(xds::LISTENER_TYPE, &listener_msg(10000))).unwrap();
        assert_eq!(name, "l1");
        assert_eq!(l.address.port(), 10000);
        let (name, eps) = endpoints(&any(
            xds::ENDPOINTS_TYPE,
            &assignment(Some(addr("10.0.0.1", 80))),
        ))
        .unwrap();
        assert_eq!(name, "c");
        assert_eq!(eps[0].address.to_string(), "10.0.0.1:80");
    }

    #[test]
    fn port_70000_is_refused_naming_the_field() {
        let e = listener(&any(xds::LISTENER_TYPE, &listener_msg(70000))).unwrap_err();
        assert_eq!(e.name, "l1");
        assert!(
            e.reason.contains("address.socket_address.port_value"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn an_unknown_filter_type_is_refused_naming_the_field() {
        let mut l = listener_msg(10000);
        l.filter_chains[0].filters = vec![tcp_proxy_filter("type.googleapis.com/example.Unknown")];
        let e = listener(&any(xds::LISTENER_TYPE, &l)).unwrap_err();
        assert!(
            e.reason
                .contains("filter_chains[0].filters[0].typed_config"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn a_malformed_cidr_is_refused_naming_the_field() {
        let mut l = listener_msg(10000);
        l.filter_chains[0].filter_chain_match = Some(FilterChainMatch {
            prefix_ranges: vec![CidrRange {
                address_prefix: "10.0.0.300".into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 8 }),
            }],
            ..FilterChainMatch::default()
        });
        let e = listener(&any(xds::LISTENER_TYPE, &l)).unwrap_err();
        assert!(
            e.reason
                .contains("filter_chains[0].filter_chain_match.prefix_ranges[0]"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn an_endpoint_without_an_address_is_refused_naming_the_field() {
        let e = endpoints(&any(xds::ENDPOINTS_TYPE, &assignment(None))).unwrap_err();
        assert_eq!(e.name, "c");
        assert!(
            e.reason
                .contains("endpoints[0].lb_endpoints[0].endpoint.address"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn an_unsupported_field_is_refused_not_ignored() {
        let mut l = listener_msg(10000);
        l.stat_prefix = "x".into();
        let e = listener(&any(xds::LISTENER_TYPE, &l)).unwrap_err();
        assert!(e.reason.contains("stat_prefix"), "{}", e.reason);
    }

    /// A UDP listener over LDS: Envoy's udp_proxy with a matcher whose action is
    /// `action` (an `Any`), on 127.0.0.1:10053.
    fn udp_listener_msg(action: Any) -> Listener {
        use envoy_types::pb::envoy::config::core::v3::socket_address::Protocol;
        use envoy_types::pb::envoy::config::listener::v3::{listener_filter, ListenerFilter};
        use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
            udp_proxy_config::RouteSpecifier, UdpProxyConfig,
        };
        use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
        use envoy_types::pb::xds::r#type::matcher::v3::{matcher, Matcher};
        let mut address = addr("127.0.0.1", 10053);
        if let Some(address::Address::SocketAddress(sa)) = &mut address.address {
            sa.protocol = Protocol::Udp as i32;
        }
        let proxy = UdpProxyConfig {
            stat_prefix: "dns".into(),
            route_specifier: Some(RouteSpecifier::Matcher(Matcher {
                on_no_match: Some(Box::new(matcher::OnMatch {
                    on_match: Some(matcher::on_match::OnMatch::Action(TypedExtensionConfig {
                        name: "route".into(),
                        typed_config: Some(action),
                    })),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        };
        Listener {
            name: "dns".into(),
            address: Some(address),
            listener_filters: vec![ListenerFilter {
                name: "envoy.filters.udp_listener.udp_proxy".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                    "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
                    &proxy,
                ))),
                ..ListenerFilter::default()
            }],
            ..Listener::default()
        }
    }

    #[test]
    fn a_udp_listener_converts_and_dumps_as_received() {
        use crate::rib::{ListenerKind, RouteConfig, WeightedClusterConfig};
        use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::Route;
        let route = any(
            "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
            &Route {
                cluster: "c".into(),
            },
        );
        let payload = any(xds::LISTENER_TYPE, &udp_listener_msg(route));
        let (name, l) = listener(&payload).unwrap();
        assert_eq!(name, "dns");
        let ListenerKind::Udp(u) = &l.kind else {
            panic!("{l:?}")
        };
        assert_eq!(u.route, RouteConfig::Cluster("c".into()));
        let json = to_json(&payload);
        assert_eq!(json["address"]["socket_address"]["protocol"], "UDP");
        assert_eq!(
            json["listener_filters"][0]["typed_config"]["matcher"]["on_no_match"]["action"]
                ["typed_config"]["cluster"],
            "c"
        );
        assert_eq!(from_json(&json).as_ref(), Some(&payload));

        // Switchyard's own weighted route comes over LDS the same way.
        use crate::ext::udp_route::{ClusterWeight, WeightedRoute};
        let weighted = WeightedRoute {
            clusters: vec![
                ClusterWeight {
                    name: "a".into(),
                    weight: 1,
                },
                ClusterWeight {
                    name: "b".into(),
                    weight: 2,
                },
            ],
        };
        let w = any(
            "type.googleapis.com/switchyard.filters.udp.udp_proxy.v1.WeightedRoute",
            &weighted,
        );
        let (_, l) = listener(&any(xds::LISTENER_TYPE, &udp_listener_msg(w))).unwrap();
        assert_eq!(
            l.udp().unwrap().route,
            RouteConfig::Weighted(vec![
                WeightedClusterConfig {
                    name: "a".into(),
                    weight: 1
                },
                WeightedClusterConfig {
                    name: "b".into(),
                    weight: 2
                },
            ])
        );
    }

    #[test]
    fn a_bad_udp_listener_is_refused_naming_the_field() {
        use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::Route;
        let empty = any(
            "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
            &Route::default(),
        );
        let e = listener(&any(xds::LISTENER_TYPE, &udp_listener_msg(empty))).unwrap_err();
        assert!(
            e.reason.contains(
                "listener_filters[0].typed_config.matcher.on_no_match.action.typed_config.cluster"
            ),
            "{}",
            e.reason
        );
        let mut l = udp_listener_msg(any(
            "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
            &Route {
                cluster: "c".into(),
            },
        ));
        l.filter_chains = listener_msg(1).filter_chains;
        let e = listener(&any(xds::LISTENER_TYPE, &l)).unwrap_err();
        assert!(e.reason.starts_with("filter_chains: "), "{}", e.reason);
    }

    #[test]
    fn a_payload_of_another_type_or_garbage_is_refused() {
        let e = cluster(&any(xds::LISTENER_TYPE, &listener_msg(1))).unwrap_err();
        assert!(e.reason.contains("type_url"));
        let garbage = Any {
            type_url: xds::CLUSTER_TYPE.into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(cluster(&garbage)
            .unwrap_err()
            .reason
            .contains("does not decode"));
    }

    /// A resource holding a duration Envoy refuses is NACKed naming the field, whatever the
    /// binary payload holds (seconds past what proto3 JSON can spell included), inside an
    /// `Any` too.
    #[test]
    fn out_of_range_durations_are_refused_naming_the_field() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use envoy_types::pb::google::protobuf::Duration as PbDuration;
        for (seconds, nanos) in [
            (315_576_000_000, 0),
            (9_223_372_036, 0),
            (i64::MAX, 0),
            (-1, 0),
            (1, 1_000_000_000),
        ] {
            let d = PbDuration { seconds, nanos };
            let c = Cluster {
                name: "c".into(),
                connect_timeout: Some(d),
                ..Cluster::default()
            };
            let e = cluster(&any(xds::CLUSTER_TYPE, &c)).expect_err("out of range");
            assert!(
                e.reason.starts_with("connect_timeout: "),
                "{seconds}s {nanos}ns: {}",
                e.reason
            );
            let mut l = listener_msg(10000);
            let tp = TcpProxy {
                stat_prefix: "t".into(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("c".into())),
                idle_timeout: Some(d),
                ..TcpProxy::default()
            };
            l.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                &tp,
            )));
            let e = listener(&any(xds::LISTENER_TYPE, &l)).expect_err("out of range");
            assert!(
                e.reason
                    .starts_with("filter_chains[0].filters[0].typed_config.idle_timeout: "),
                "{seconds}s {nanos}ns: {}",
                e.reason
            );
        }
    }
}
