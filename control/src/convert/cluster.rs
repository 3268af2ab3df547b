//! A cluster: its discovery type (STATIC, EDS over ADS, ORIGINAL_DST, STRICT_DNS,
//! LOGICAL_DNS), connect timeout and endpoints, with the parts that have their own files
//! (`lb`, `circuit_breakers`, `upstream_bind`, `health`, `endpoints`, `dns`, `tls` for its
//! `transport_socket`). Envoy's
//! cross-field rules (ORIGINAL_DST with CLUSTER_PROVIDED and no endpoints, EDS without
//! `load_assignment`) are checked here.

use super::ads::config_source;
use super::circuit_breakers::circuit_breakers;
use super::dns::{dns_cluster, unused_dns_fields};
use super::endpoints::load_assignment;
use super::tls::cluster_transport;
use super::upstream_bind::{upstream_bind, upstream_connection_options};
use super::{duration, hbone, health, lb, Result};
use crate::error::ConfigError;
use crate::path::field;
use crate::rib::{ClusterConfig, EndpointConfig, XdsSource, DEFAULT_CONNECT_TIMEOUT};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy as PbLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::fib::{CircuitBreakers, UpstreamBind};

pub(super) fn cluster(c: &Cluster, path: &str) -> Result<ClusterConfig> {
    if c.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty)",
        ));
    }
    let kind = discovery_type(c, path)?;
    let connect_timeout = connect_timeout(c, path)?;
    let original_dst = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32
    );
    // Before the balancer's settings, which take an `original_dst_lb_config` as checked.
    let original_dst_authority = hbone::original_dst_authority(c, original_dst, path)?;
    let lb = lb::settings(c, path)?;
    original_dst_rules(c, original_dst, lb.policy, path)?;
    let typed_locality_weighted = lb.locality_weighted;
    let lb_policy = lb::lb_policy(lb, path)?;
    let (eds_service, eds_source) = match eds_service(c, path)? {
        Some((service, source)) => (Some(service), source),
        None => (None, XdsSource::Ads),
    };
    let dns = match kind {
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => Some(Arc::new(dns_cluster(
            c,
            kind == DiscoveryType::LogicalDns,
            path,
        )?)),
        other => {
            unused_dns_fields(c, other.as_str_name(), path)?;
            None
        }
    };
    let endpoints = match dns {
        // Resolved on the `dns` thread; none until then.
        Some(_) => Vec::new(),
        None => endpoints(c, eds_service.is_some(), path)?,
    };
    let mut upstream_bind = match &c.upstream_bind_config {
        Some(b) => upstream_bind(b, &field(path, "upstream_bind_config"))?,
        None => UpstreamBind::default(),
    };
    if let Some(o) = &c.upstream_connection_options {
        let keepalive =
            upstream_connection_options(o, &field(path, "upstream_connection_options"))?;
        upstream_bind.socket_options.extend(keepalive);
    }
    let (tls, proxy_protocol) = cluster_transport(c.transport_socket.as_ref(), path)?;
    let circuit_breakers = match &c.circuit_breakers {
        Some(cb) => circuit_breakers(cb, &field(path, "circuit_breakers"))?,
        None => CircuitBreakers::default(),
    };
    let mut health = health::health_policy(c, path)?;
    // A typed policy's locality weights (`lb_typed` refused them in `common_lb_config`
    // beside it, as Envoy does).
    health.locality_weighted |= typed_locality_weighted;
    if original_dst && health.health_check.is_some() {
        return Err(ConfigError::invalid(
            field(path, "health_checks"),
            "an ORIGINAL_DST cluster has no endpoints to check",
        ));
    }
    let http2 = hbone::cluster_http2(c, path)?;
    if http2.is_none() {
        hbone::tunnels_need_http2(c, path)?;
    }
    Ok(ClusterConfig {
        name: c.name.clone(),
        alt_stat_name: Some(c.alt_stat_name.clone()).filter(|n| !n.is_empty()),
        connect_timeout,
        buffer_limit_bytes: super::listener::buffer_limit_bytes(
            c.per_connection_buffer_limit_bytes.map(|v| v.value),
        ),
        lb_policy,
        endpoints: endpoints.into(),
        eds_service,
        eds_source,
        upstream_bind,
        circuit_breakers,
        health,
        added_via_api: false,
        dns,
        tls,
        proxy_protocol,
        http2,
        original_dst_authority,
    })
}

/// `type` (STATIC, EDS, ORIGINAL_DST, STRICT_DNS or LOGICAL_DNS; STATIC when not given);
/// `cluster_type` (an extension) is refused.
fn discovery_type(c: &Cluster, path: &str) -> Result<DiscoveryType> {
    match &c.cluster_discovery_type {
        None => Ok(DiscoveryType::Static),
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(
                t @ (DiscoveryType::Static
                | DiscoveryType::Eds
                | DiscoveryType::OriginalDst
                | DiscoveryType::StrictDns
                | DiscoveryType::LogicalDns),
            ) => Ok(t),
            Err(_) => Err(ConfigError::invalid(
                field(path, "type"),
                format!("unknown type {t}"),
            )),
        },
        Some(ClusterDiscoveryType::ClusterType(_)) => Err(ConfigError::unsupported(
            field(path, "cluster_type"),
            "not supported by Switchyard",
        )),
    }
}

/// `connect_timeout`: greater than 0; Envoy's default when not given.
fn connect_timeout(c: &Cluster, path: &str) -> Result<Duration> {
    let Some(d) = &c.connect_timeout else {
        return Ok(DEFAULT_CONNECT_TIMEOUT);
    };
    let p = field(path, "connect_timeout");
    let d = duration(d, &p)?;
    if d.is_zero() {
        return Err(ConfigError::invalid(p, "must be greater than 0"));
    }
    Ok(d)
}

/// Envoy's rules, both ways: CLUSTER_PROVIDED belongs to ORIGINAL_DST and nothing else; an
/// ORIGINAL_DST cluster has no `load_assignment`.
fn original_dst_rules(
    c: &Cluster,
    original_dst: bool,
    policy: PbLbPolicy,
    path: &str,
) -> Result<()> {
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
    Ok(())
}

/// `load_assignment`: the endpoints of a static cluster; an EDS cluster has none here.
fn endpoints(c: &Cluster, eds: bool, path: &str) -> Result<Vec<EndpointConfig>> {
    match &c.load_assignment {
        Some(_) if eds => Err(ConfigError::invalid(
            field(path, "load_assignment"),
            "an EDS cluster gets its endpoints from EDS, not load_assignment",
        )),
        Some(la) => load_assignment(la, &field(path, "load_assignment")),
        None => Ok(Vec::new()),
    }
}

/// For `type: EDS`, the assignment name to watch and where it comes from
/// (`eds_cluster_config.eds_config`: ADS, a gRPC stream of its own, or a file); `None` for
/// a cluster that is not EDS.
fn eds_service(c: &Cluster, path: &str) -> Result<Option<(String, XdsSource)>> {
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
    let (source, _) = config_source(eds.eds_config.as_ref(), &field(&epath, "eds_config"))?;
    let service = if eds.service_name.is_empty() {
        c.name.clone()
    } else {
        eds.service_name.clone()
    };
    Ok(Some((service, source)))
}
