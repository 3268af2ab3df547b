//! UDP listeners: `address.socket_address.protocol: UDP` with Envoy's UDP proxy
//! (`envoy.filters.udp_listener.udp_proxy`, `UdpProxyConfig`) as the one listener filter.
//!
//! What is accepted, beyond what the walker already checked field by field:
//! - the route: the deprecated `cluster`, or a `matcher` with only `on_no_match` whose
//!   action is Envoy's `Route` or Switchyard's `WeightedRoute` (every session takes it;
//!   `matcher_list` and `matcher_tree` are refused by path);
//! - `idle_timeout` (Envoy's default 60 s; `0s`, as in Envoy, ends a session right after
//!   its last datagram, at the worker's next tick), `hash_policies: [{source_ip: true}]`;
//! - `use_original_src_ip` and `use_per_packet_load_balancing` only as `false`;
//! - `udp_listener_config.downstream_socket_config` and `upstream_socket_config`
//!   (`max_rx_datagram_size`, 1 to 65535, default 1,500; `prefer_gro`) say which datagrams
//!   are too long, as Envoy 1.40 on Linux treats them (verified against it): a socket that
//!   does not prefer GRO drops a datagram longer than `max_rx_datagram_size`
//!   (`listener.<address>.udp.downstream_rx_datagram_dropped` on the listener,
//!   `cluster.<name>.udp.sess_rx_datagrams_dropped` upstream); one that prefers GRO reads up
//!   to 64 KiB at a time and drops none, whatever the size says. `prefer_gro` is `false` by
//!   default on the listener and `true` on the upstream sockets, so by default a client's
//!   datagram over 1,500 B is dropped and an endpoint's is forwarded. Switchyard's buffers
//!   always hold a whole datagram: the limit is a comparison, never a truncation.

use super::{decode_any, duration, ext, type_name, Result};
use crate::error::ConfigError;
use crate::ext::udp_route::WeightedRoute as PbWeightedRoute;
use crate::path::{field, index};
use crate::rib::{
    RouteConfig, UdpProxyConfig, DEFAULT_MAX_RX_DATAGRAM_SIZE, DEFAULT_UDP_IDLE_TIMEOUT,
};
use crate::type_names::{UDP_PROXY, UDP_ROUTE, UDP_WEIGHTED_ROUTE};
use envoy_types::pb::envoy::config::core::v3::UdpSocketConfig;
use envoy_types::pb::envoy::config::listener::v3::{listener_filter, Listener, UdpListenerConfig};
use envoy_types::pb::envoy::extensions::filters::udp::udp_proxy::v3::{
    udp_proxy_config::{hash_policy::PolicySpecifier, HashPolicy, RouteSpecifier},
    Route as PbRoute, UdpProxyConfig as PbUdpProxyConfig,
};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{on_match::OnMatch, MatcherType};
use envoy_types::pb::xds::r#type::matcher::v3::Matcher;

/// The listener filter's name in Envoy's docs (the `@type` decides, not the name).
const UDP_PROXY_NAME: &str = "envoy.filters.udp_listener.udp_proxy";

/// A UDP listener's proxy; `path` is the listener's.
pub(super) fn udp_listener(l: &Listener, path: &str) -> Result<UdpProxyConfig> {
    let not_udp = |name: &str, what: &str| {
        ConfigError::invalid(
            field(path, name),
            format!(
                "a UDP listener has no {what}: its datagrams go to the {UDP_PROXY_NAME} listener filter"
            ),
        )
    };
    if !l.filter_chains.is_empty() {
        return Err(not_udp("filter_chains", "filter chains"));
    }
    if l.default_filter_chain.is_some() {
        return Err(not_udp("default_filter_chain", "default filter chain"));
    }
    if l.filter_chain_matcher.is_some() {
        return Err(not_udp("filter_chain_matcher", "filter chain matcher"));
    }
    for (name, value) in [
        ("use_original_dst", l.use_original_dst),
        ("transparent", l.transparent),
    ] {
        if value.is_some_and(|b| b.value) {
            return Err(ConfigError::unsupported(
                field(path, name),
                "not supported on a UDP listener by Switchyard",
            ));
        }
    }
    let max_downstream = match &l.udp_listener_config {
        Some(c) => udp_listener_config(c, &field(path, "udp_listener_config"))?,
        None => rx_datagram_limit(None, DOWNSTREAM_PREFERS_GRO, path)?,
    };
    let fpath = field(path, "listener_filters");
    let filter = match l.listener_filters.as_slice() {
        [f] => f,
        [] => {
            return Err(ConfigError::invalid(
                fpath,
                format!(
                    "a UDP listener needs the {UDP_PROXY_NAME} listener filter (type.googleapis.com/{UDP_PROXY})"
                ),
            ))
        }
        _ => {
            return Err(ConfigError::invalid(
                index(&fpath, 1),
                format!(
                    "a UDP listener takes one listener filter, {UDP_PROXY_NAME}, in Switchyard"
                ),
            ))
        }
    };
    let tpath = field(&index(&fpath, 0), "typed_config");
    let Some(listener_filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Err(ConfigError::invalid(
            tpath,
            format!("required (type.googleapis.com/{UDP_PROXY})"),
        ));
    };
    if type_name(any) != UDP_PROXY {
        return Err(ConfigError::invalid(
            tpath,
            format!(
                "a UDP listener's filter must be the {UDP_PROXY_NAME} (type.googleapis.com/{UDP_PROXY}); '{}' is a TCP listener filter",
                any.type_url
            ),
        ));
    }
    let proxy: PbUdpProxyConfig = decode_any(any, UDP_PROXY, &tpath)?;
    udp_proxy(&proxy, &tpath, max_downstream)
}

/// Envoy's `prefer_gro` default for a listener's socket (`UdpListenerConfig`).
const DOWNSTREAM_PREFERS_GRO: bool = false;
/// Envoy's `prefer_gro` default for udp_proxy's upstream sockets.
const UPSTREAM_PREFERS_GRO: bool = true;

/// `udp_listener_config`: only `downstream_socket_config` (the walker refuses the rest); the
/// longest datagram a client may send.
fn udp_listener_config(c: &UdpListenerConfig, path: &str) -> Result<Option<u32>> {
    rx_datagram_limit(
        c.downstream_socket_config.as_ref(),
        DOWNSTREAM_PREFERS_GRO,
        &field(path, "downstream_socket_config"),
    )
}

/// A `UdpSocketConfig` (or its absence): the longest datagram the socket takes, `None` for
/// any. `max_rx_datagram_size` in Envoy's range (1 to 65535, default 1,500) applies to a
/// socket that does not prefer GRO; Envoy reads a GRO socket into 64 KiB whatever the size
/// says (Envoy 1.40: 65,000 B datagrams pass with the default 1,500 and `prefer_gro: true`),
/// so Switchyard, which receives whole datagrams without GRO, applies no limit there.
fn rx_datagram_limit(
    s: Option<&UdpSocketConfig>,
    prefers_gro_by_default: bool,
    path: &str,
) -> Result<Option<u32>> {
    let size = match s.and_then(|s| s.max_rx_datagram_size) {
        Some(v) if v.value == 0 || v.value >= 65536 => {
            return Err(ConfigError::invalid(
                field(path, "max_rx_datagram_size"),
                format!("{} is out of range (1-65535, as in Envoy)", v.value),
            ))
        }
        Some(v) => v.value as u32,
        None => DEFAULT_MAX_RX_DATAGRAM_SIZE,
    };
    let prefer_gro = s
        .and_then(|s| s.prefer_gro)
        .map_or(prefers_gro_by_default, |b| b.value);
    Ok((!prefer_gro).then_some(size))
}

/// `UdpProxyConfig`, at `path` (its `typed_config`), behind a listener that takes client
/// datagrams of up to `max_downstream_rx_datagram_bytes`.
fn udp_proxy(
    u: &PbUdpProxyConfig,
    path: &str,
    max_downstream_rx_datagram_bytes: Option<u32>,
) -> Result<UdpProxyConfig> {
    if u.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    #[allow(deprecated)] // `cluster` is deprecated in favour of `matcher`, still accepted.
    let route = match &u.route_specifier {
        None => {
            return Err(ConfigError::invalid(
                path,
                "one of 'cluster' or 'matcher' is required",
            ))
        }
        Some(RouteSpecifier::Cluster(name)) if name.is_empty() => {
            return Err(ConfigError::invalid(
                field(path, "cluster"),
                "must not be empty",
            ))
        }
        Some(RouteSpecifier::Cluster(name)) => RouteConfig::Cluster(name.clone()),
        Some(RouteSpecifier::Matcher(m)) => matcher_route(m, &field(path, "matcher"))?,
    };
    let idle_timeout = match &u.idle_timeout {
        None => Some(DEFAULT_UDP_IDLE_TIMEOUT),
        // 0 as in Envoy (whose timer then fires at once): a session ends at the first tick
        // after its last datagram.
        Some(d) => Some(duration(d, &field(path, "idle_timeout"))?),
    };
    if u.use_original_src_ip {
        return Err(ConfigError::unsupported(
            field(path, "use_original_src_ip"),
            "not supported by Switchyard (sessions leave from the proxy's own address)",
        ));
    }
    if u.use_per_packet_load_balancing {
        return Err(ConfigError::unsupported(
            field(path, "use_per_packet_load_balancing"),
            "not supported by Switchyard (a session keeps the endpoint its first datagram was sent to)",
        ));
    }
    let max_upstream_rx_datagram_bytes = rx_datagram_limit(
        u.upstream_socket_config.as_ref(),
        UPSTREAM_PREFERS_GRO,
        &field(path, "upstream_socket_config"),
    )?;
    Ok(UdpProxyConfig {
        stat_prefix: u.stat_prefix.clone(),
        route,
        idle_timeout,
        hash_source_ip: hash_policies(&u.hash_policies, &field(path, "hash_policies"))?,
        max_downstream_rx_datagram_bytes,
        max_upstream_rx_datagram_bytes,
    })
}

/// `matcher`: Switchyard matches nothing, so the one form it takes is `on_no_match` with an
/// action, which every session takes.
fn matcher_route(m: &Matcher, path: &str) -> Result<RouteConfig> {
    if let Some(t) = &m.matcher_type {
        let name = match t {
            MatcherType::MatcherList(_) => "matcher_list",
            MatcherType::MatcherTree(_) => "matcher_tree",
        };
        return Err(ConfigError::unsupported(
            field(path, name),
            "not supported by Switchyard in the UDP proxy (on_no_match is)",
        ));
    }
    let npath = field(path, "on_no_match");
    let Some(on_no_match) = &m.on_no_match else {
        return Err(ConfigError::invalid(
            npath,
            "required: Switchyard routes every session by the matcher's on_no_match action",
        ));
    };
    if on_no_match.keep_matching {
        return Err(ConfigError::unsupported(
            field(&npath, "keep_matching"),
            "not supported by Switchyard",
        ));
    }
    let apath = field(&npath, "action");
    let action = match &on_no_match.on_match {
        Some(OnMatch::Action(a)) => a,
        Some(OnMatch::Matcher(_)) => {
            return Err(ConfigError::unsupported(
                field(&npath, "matcher"),
                "a nested matcher is not supported by Switchyard (action is)",
            ))
        }
        None => return Err(ConfigError::invalid(apath, "required")),
    };
    if action.name.is_empty() {
        return Err(ConfigError::invalid(
            field(&apath, "name"),
            "required (non-empty), as in Envoy",
        ));
    }
    let tpath = field(&apath, "typed_config");
    let Some(any) = &action.typed_config else {
        return Err(ConfigError::invalid(
            tpath,
            format!("required (type.googleapis.com/{UDP_ROUTE} or {UDP_WEIGHTED_ROUTE})"),
        ));
    };
    if type_name(any) == UDP_WEIGHTED_ROUTE {
        let w: PbWeightedRoute = decode_any(any, UDP_WEIGHTED_ROUTE, &tpath)?;
        return ext::udp_weighted_route(&w, &tpath);
    }
    let route: PbRoute = decode_any(any, UDP_ROUTE, &tpath)?;
    if route.cluster.is_empty() {
        return Err(ConfigError::invalid(
            field(&tpath, "cluster"),
            "required (non-empty)",
        ));
    }
    Ok(RouteConfig::Cluster(route.cluster))
}

/// `hash_policies`: at most one entry (as Envoy), `source_ip: true`.
fn hash_policies(policies: &[HashPolicy], path: &str) -> Result<bool> {
    match policies {
        [] => Ok(false),
        [p] => match &p.policy_specifier {
            Some(PolicySpecifier::SourceIp(true)) => Ok(true),
            Some(PolicySpecifier::SourceIp(false)) => Err(ConfigError::invalid(
                field(&index(path, 0), "source_ip"),
                "must be true (as in Envoy)",
            )),
            Some(PolicySpecifier::Key(_)) => Err(ConfigError::unsupported(
                field(&index(path, 0), "key"),
                "not supported by Switchyard (source_ip is)",
            )),
            None => Err(ConfigError::invalid(
                index(path, 0),
                "one of 'source_ip' or 'key' is required",
            )),
        },
        _ => Err(ConfigError::invalid(
            index(path, 1),
            "at most one hash policy (as in Envoy)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::error::{ConfigError, ErrorKind};
    use crate::load::parse_yaml_rib;
    use crate::rib::{
        ListenerConfig, ListenerKind, Protocol, RouteConfig, UdpProxyConfig, WeightedClusterConfig,
    };
    use std::time::Duration;

    /// A bootstrap with one UDP listener whose udp_proxy has `proxy` (YAML lines at the
    /// typed_config's indentation) after its `@type` and `stat_prefix`.
    fn bootstrap(proxy: &str) -> String {
        let proxy: String = proxy.lines().map(|l| format!("        {l}\n")).collect();
        format!(
            r#"
static_resources:
  listeners:
  - name: u
    address: {{socket_address: {{protocol: UDP, address: 127.0.0.1, port_value: 10053}}}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: dns
{proxy}  clusters:
  - name: c
"#
        )
    }

    fn listener(proxy: &str) -> Result<ListenerConfig, ConfigError> {
        let (rib, _) = parse_yaml_rib(&bootstrap(proxy))?;
        Ok(rib.listeners[0].clone())
    }

    fn proxy(text: &str) -> UdpProxyConfig {
        match listener(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .kind
        {
            ListenerKind::Udp(u) => u,
            ListenerKind::Tcp(_) => panic!("a TCP listener"),
        }
    }

    /// The error for `text`, which must name `path` (relative to the typed_config).
    fn error(text: &str, path: &str) -> ConfigError {
        let e = listener(text).expect_err(text);
        let full = format!("static_resources.listeners[0].listener_filters[0].typed_config{path}");
        assert_eq!(e.path(), full, "{text}: {e}");
        e
    }

    const ROUTE: &str = r#"matcher:
  on_no_match:
    action:
      name: route
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
        cluster: c"#;

    fn weighted(clusters: &str) -> String {
        format!(
            r#"matcher:
  on_no_match:
    action:
      name: route
      typed_config:
        "@type": type.googleapis.com/switchyard.filters.udp.udp_proxy.v1.WeightedRoute
        clusters: {clusters}"#
        )
    }

    #[test]
    fn matcher_route_to_one_cluster_with_envoy_defaults() {
        let l = listener(ROUTE).unwrap();
        assert_eq!(l.name, "u");
        assert_eq!(l.address, "127.0.0.1:10053".parse().unwrap());
        assert_eq!(l.protocol(), Protocol::Udp);
        assert_eq!(
            l.udp(),
            Some(&UdpProxyConfig {
                stat_prefix: "dns".into(),
                route: RouteConfig::Cluster("c".into()),
                idle_timeout: Some(Duration::from_secs(60)),
                hash_source_ip: false,
                max_downstream_rx_datagram_bytes: Some(1500),
                max_upstream_rx_datagram_bytes: None,
            })
        );
        assert_eq!(l.routed_clusters().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn deprecated_cluster() {
        let u = proxy("cluster: c");
        assert_eq!(u.route, RouteConfig::Cluster("c".into()));
        let e = error("cluster: \"\"", ".cluster");
        assert!(e.message().contains("must not be empty"), "{e}");
    }

    #[test]
    fn weighted_route_leaves_out_zero_weights() {
        let u = proxy(&weighted(
            "[{name: a, weight: 3}, {name: spare, weight: 0}, {name: b, weight: 1}]",
        ));
        assert_eq!(
            u.route,
            RouteConfig::Weighted(vec![
                WeightedClusterConfig {
                    name: "a".into(),
                    weight: 3
                },
                WeightedClusterConfig {
                    name: "b".into(),
                    weight: 1
                },
            ])
        );
        let action = ".matcher.on_no_match.action.typed_config";
        let e = error(&weighted("[]"), &format!("{action}.clusters"));
        assert!(e.message().contains("at least one cluster"), "{e}");
        let e = error(
            &weighted("[{name: a, weight: 0}, {name: b, weight: 0}]"),
            &format!("{action}.clusters"),
        );
        assert!(e.message().contains("total weight"), "{e}");
        error(
            &weighted("[{name: a, weight: 1}, {weight: 1}]"),
            &format!("{action}.clusters[1].name"),
        );
        error(
            &weighted("[{name: a, weight: 1, priority: 2}]"),
            &format!("{action}.clusters[0].priority"),
        );
    }

    #[test]
    fn idle_timeout_default_zero_and_given() {
        assert_eq!(
            proxy("cluster: c").idle_timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            proxy("cluster: c\nidle_timeout: 0s").idle_timeout,
            Some(Duration::ZERO)
        );
        assert_eq!(
            proxy("cluster: c\nidle_timeout: 1.5s").idle_timeout,
            Some(Duration::from_millis(1500))
        );
        error("cluster: c\nidle_timeout: -1s", ".idle_timeout");
    }

    #[test]
    fn hash_policies() {
        assert!(proxy("cluster: c\nhash_policies: [{source_ip: true}]").hash_source_ip);
        assert!(!proxy("cluster: c\nhash_policies: []").hash_source_ip);
        let e = error(
            "cluster: c\nhash_policies: [{source_ip: false}]",
            ".hash_policies[0].source_ip",
        );
        assert!(e.message().contains("must be true"), "{e}");
        let e = error(
            "cluster: c\nhash_policies: [{key: k}]",
            ".hash_policies[0].key",
        );
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        error(
            "cluster: c\nhash_policies: [{source_ip: true}, {source_ip: true}]",
            ".hash_policies[1]",
        );
    }

    #[test]
    fn route_errors_name_their_field() {
        let e = error("idle_timeout: 1s", "");
        assert!(e.message().contains("'cluster' or 'matcher'"), "{e}");
        let both = format!("cluster: c\n{ROUTE}");
        let e = error(&both, ".matcher");
        assert!(e.message().contains("only one of"), "{e}");
        error("matcher: {}", ".matcher.on_no_match");
        error("matcher: {on_no_match: {}}", ".matcher.on_no_match.action");
        error(
            "matcher: {on_no_match: {matcher: {}}}",
            ".matcher.on_no_match.matcher",
        );
        error(
            "matcher: {on_no_match: {keep_matching: true}}",
            ".matcher.on_no_match.keep_matching",
        );
        for tree in ["matcher_list: {matchers: []}", "matcher_tree: {}"] {
            let e = error(
                &format!("matcher: {{{tree}}}"),
                &format!(".matcher.{}", tree.split(':').next().unwrap()),
            );
            assert_eq!(e.kind(), ErrorKind::Unsupported);
        }
        error(
            &ROUTE.replace("name: route", "name: \"\""),
            ".matcher.on_no_match.action.name",
        );
        error(
            &ROUTE.replace("cluster: c", "cluster: \"\""),
            ".matcher.on_no_match.action.typed_config.cluster",
        );
        let e = error(
            &ROUTE.replace(
                "envoy.extensions.filters.udp.udp_proxy.v3.Route",
                "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            ),
            ".matcher.on_no_match.action.typed_config",
        );
        assert!(e.message().contains("accepted here"), "{e}");
        let no_prefix = bootstrap("cluster: c").replace("stat_prefix: dns", "stat_prefix: \"\"");
        let e = parse_yaml_rib(&no_prefix).unwrap_err();
        assert_eq!(
            e.path(),
            "static_resources.listeners[0].listener_filters[0].typed_config.stat_prefix"
        );
    }

    #[test]
    fn what_switchyard_does_not_do_is_refused_only_when_asked_for() {
        let u = proxy(
            "cluster: c\nuse_per_packet_load_balancing: false\nuse_original_src_ip: false\n\
             upstream_socket_config: {max_rx_datagram_size: 9000, prefer_gro: true}",
        );
        assert_eq!(u.route, RouteConfig::Cluster("c".into()));
        for (field, value) in [
            ("use_per_packet_load_balancing", "true"),
            ("use_original_src_ip", "true"),
        ] {
            let e = error(
                &format!("cluster: c\n{field}: {value}"),
                &format!(".{field}"),
            );
            assert_eq!(e.kind(), ErrorKind::Unsupported);
        }
        for field in [
            "session_filters: [{name: f}]",
            "tunneling_config: {proxy_host: h, target_host: t}",
            "access_log: [{name: a}]",
            "proxy_access_log: [{name: a}]",
            "access_log_options: {}",
        ] {
            let name = field.split(':').next().unwrap();
            let e = error(&format!("cluster: c\n{field}"), &format!(".{name}"));
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        }
        error(
            "cluster: c\nupstream_socket_config: {max_rx_datagram_size: 0}",
            ".upstream_socket_config.max_rx_datagram_size",
        );
    }

    /// `max_rx_datagram_size` as Envoy 1.40 applies it: to a socket that does not prefer
    /// GRO (the listener's by default, 1,500 B by default); a socket that prefers GRO (the
    /// upstream ones by default) takes any datagram.
    #[test]
    fn datagram_size_limits_follow_envoy() {
        let limits = |listener: &str, proxy: &str| {
            let text = bootstrap(&format!("cluster: c\n{proxy}")).replace(
                "    listener_filters:",
                &format!("{listener}    listener_filters:"),
            );
            let (rib, _) = parse_yaml_rib(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let u = rib.listeners[0].udp().expect("udp").clone();
            (
                u.max_downstream_rx_datagram_bytes,
                u.max_upstream_rx_datagram_bytes,
            )
        };
        let down =
            |c: &str| format!("    udp_listener_config: {{downstream_socket_config: {c}}}\n");
        assert_eq!(limits("", ""), (Some(1500), None), "Envoy's defaults");
        assert_eq!(
            limits(&down("{max_rx_datagram_size: 9000}"), ""),
            (Some(9000), None)
        );
        assert_eq!(limits(&down("{prefer_gro: true}"), ""), (None, None));
        assert_eq!(
            limits(&down("{max_rx_datagram_size: 9000, prefer_gro: false}"), ""),
            (Some(9000), None)
        );
        assert_eq!(
            limits("", "upstream_socket_config: {max_rx_datagram_size: 9000}"),
            (Some(1500), None),
            "upstream sockets prefer GRO by default"
        );
        assert_eq!(
            limits("", "upstream_socket_config: {prefer_gro: false}"),
            (Some(1500), Some(1500))
        );
        assert_eq!(
            limits(
                "",
                "upstream_socket_config: {max_rx_datagram_size: 512, prefer_gro: false}"
            ),
            (Some(1500), Some(512))
        );
        let e = parse_yaml_rib(&bootstrap("cluster: c").replace(
            "    listener_filters:",
            &format!(
                "{}    listener_filters:",
                down("{max_rx_datagram_size: 65536}")
            ),
        ))
        .unwrap_err();
        assert_eq!(
            e.path(),
            "static_resources.listeners[0].udp_listener_config.downstream_socket_config.max_rx_datagram_size"
        );
    }

    /// The listener around the proxy: UDP listeners take no filter chains and no other
    /// listener filter; `udp_listener_config` is for them only.
    #[test]
    fn listener_level_rules() {
        let parse = |text: &str| parse_yaml_rib(text).map(|(rib, _)| rib);
        let udp = bootstrap("cluster: c");
        let rib = parse(&udp.replace("  - name: u\n    address", "  - address")).unwrap();
        assert_eq!(rib.listeners[0].name, "127.0.0.1:10053/udp");
        let with_config = udp.replace(
            "    listener_filters:",
            "    udp_listener_config: {downstream_socket_config: {max_rx_datagram_size: 1500, prefer_gro: true}}\n    listener_filters:",
        );
        assert!(parse(&with_config).is_ok());
        let cases: &[(&str, &str)] = &[
            (
                "    listener_filters:",
                "    filter_chains: [{filters: []}]\n    listener_filters:",
            ),
            (
                "    listener_filters:",
                "    default_filter_chain: {filters: []}\n    listener_filters:",
            ),
            (
                "    listener_filters:",
                "    transparent: true\n    listener_filters:",
            ),
            (
                "    listener_filters:",
                "    use_original_dst: true\n    listener_filters:",
            ),
            (
                "    listener_filters:",
                "    udp_listener_config: {quic_options: {}}\n    listener_filters:",
            ),
        ];
        let paths = [
            "filter_chains",
            "default_filter_chain",
            "transparent",
            "use_original_dst",
            "udp_listener_config.quic_options",
        ];
        for ((from, to), path) in cases.iter().zip(paths) {
            let e = parse(&udp.replace(from, to)).expect_err(path);
            assert_eq!(
                e.path(),
                format!("static_resources.listeners[0].{path}"),
                "{e}"
            );
        }
        let original_dst = r#"    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
"#;
        let two = udp.replace("  clusters:", &format!("{original_dst}  clusters:"));
        let e = parse(&two).unwrap_err();
        assert_eq!(
            e.path(),
            "static_resources.listeners[0].listener_filters[1]"
        );
        let only_tcp = udp.replace(
            "    - name: envoy.filters.udp_listener.udp_proxy",
            &format!("{original_dst}    - name: x"),
        );
        let e = parse(&only_tcp).unwrap_err();
        assert!(
            e.path()
                .starts_with("static_resources.listeners[0].listener_filters"),
            "{e}"
        );
    }
}
