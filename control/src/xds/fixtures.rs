//! Resources and bootstraps for driving a proxy over ADS from tests and benchmarks, with the
//! scripted [`server`](super::server): the same shapes the integration tests, the Python
//! differential and the scale benchmark send, written once. Test support: built only with
//! the `testing` feature (and for this crate's unit tests).

use super::{CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use std::net::SocketAddr;

/// The tcp_proxy filter's `@type`.
pub const TCP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// A bootstrap whose listeners and clusters come over ADS (`api`: `GRPC` or `DELTA_GRPC`)
/// from the server at `ads`, with the admin on 127.0.0.1:`admin_port`.
pub fn ads_bootstrap(
    node_id: &str,
    admin_port: u16,
    ads: SocketAddr,
    api: &str,
    initial_fetch_timeout: &str,
) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
node: {{ id: {node_id}, cluster: switchyard-test }}
dynamic_resources:
  ads_config:
    api_type: {api}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
  cds_config: {{ ads: {{}}, resource_api_version: V3, initial_fetch_timeout: {initial_fetch_timeout} }}
  lds_config: {{ ads: {{}}, resource_api_version: V3, initial_fetch_timeout: {initial_fetch_timeout} }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ads_ip}, port_value: {ads_port} }} }} }}
"#,
        ads_ip = ads.ip(),
        ads_port = ads.port()
    )
}

/// `message` packed as an `Any` of `type_url`.
pub fn any<M: Message>(type_url: &str, message: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: message.encode_to_vec(),
    }
}

/// A socket address with any 32-bit port (so an invalid one, like 70000, can be written).
pub fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// The address `addr`.
pub fn address(addr: SocketAddr) -> Address {
    socket_address(&addr.ip().to_string(), u32::from(addr.port()))
}

/// An EDS cluster (connect timeout 1 s) whose endpoints come over ADS under its own name.
pub fn eds_cluster(name: &str) -> Any {
    eds_cluster_watching(name, "")
}

/// An EDS cluster whose endpoints come over ADS as the assignment `service` (its own name
/// when empty).
pub fn eds_cluster_watching(name: &str, service: &str) -> Any {
    let c = Cluster {
        name: name.into(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource::default(),
                )),
                resource_api_version: ApiVersion::V3 as i32,
                ..ConfigSource::default()
            }),
            service_name: service.into(),
        }),
        ..Cluster::default()
    };
    any(CLUSTER_TYPE, &c)
}

/// The assignment of `cluster`: `endpoints` in one locality, weight 1 each.
pub fn load_assignment(cluster: &str, endpoints: &[Address]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|a| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(a.clone()),
                        ..Endpoint::default()
                    })),
                    ..LbEndpoint::default()
                })
                .collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

/// [`load_assignment`] of socket addresses, as an `Any`.
pub fn assignment(cluster: &str, endpoints: &[SocketAddr]) -> Any {
    let addresses: Vec<Address> = endpoints.iter().map(|a| address(*a)).collect();
    any(ENDPOINTS_TYPE, &load_assignment(cluster, &addresses))
}

/// A listener on `ip`:`port` (any 32-bit port) with one chain: a tcp_proxy to `cluster`,
/// stat prefix `name`, packed under `filter_type` (pass [`TCP_PROXY_TYPE`], or another type
/// to be refused).
pub fn tcp_proxy_listener(
    name: &str,
    ip: &str,
    port: u32,
    cluster: &str,
    filter_type: &str,
) -> Any {
    let tp = TcpProxy {
        stat_prefix: name.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..TcpProxy::default()
    };
    let l = Listener {
        name: name.into(),
        address: Some(socket_address(ip, port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(filter_type, &tp))),
            }],
            ..FilterChain::default()
        }],
        ..Listener::default()
    };
    any(LISTENER_TYPE, &l)
}

/// The udp_proxy listener filter's `@type`.
pub const UDP_PROXY_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig";

/// A UDP listener on `ip`:`port`: Envoy's udp_proxy, stat prefix `name`, whose matcher routes
/// every session to `cluster` (`on_no_match` with a `Route` action).
pub fn udp_proxy_listener(name: &str, ip: &str, port: u32, cluster: &str) -> Any {
    use envoy_types::pb::envoy::config::core::v3::socket_address::Protocol;
    use envoy_types::pb::envoy::config::listener::v3::{listener_filter, ListenerFilter};
    use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
        udp_proxy_config::RouteSpecifier, Route, UdpProxyConfig,
    };
    use envoy_types::pb::xds::core::v3::TypedExtensionConfig;
    use envoy_types::pb::xds::r#type::matcher::v3::{matcher, Matcher};
    let route = Route {
        cluster: cluster.into(),
    };
    let action = TypedExtensionConfig {
        name: "route".into(),
        typed_config: Some(any(
            "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route",
            &route,
        )),
    };
    let proxy = UdpProxyConfig {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Matcher(Matcher {
            on_no_match: Some(Box::new(matcher::OnMatch {
                on_match: Some(matcher::on_match::OnMatch::Action(action)),
                ..matcher::OnMatch::default()
            })),
            ..Matcher::default()
        })),
        ..UdpProxyConfig::default()
    };
    let mut address = socket_address(ip, port);
    if let Some(address::Address::SocketAddress(sa)) = &mut address.address {
        sa.protocol = Protocol::Udp as i32;
    }
    let l = Listener {
        name: name.into(),
        address: Some(address),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.udp_listener.udp_proxy".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(
                UDP_PROXY_TYPE,
                &proxy,
            ))),
            ..ListenerFilter::default()
        }],
        ..Listener::default()
    };
    any(LISTENER_TYPE, &l)
}
