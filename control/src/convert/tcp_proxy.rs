//! The `tcp_proxy` network filter: its route (one cluster or weighted clusters), idle
//! timeout, connect attempts, hash policy, access logs (converted in `access_log`) and
//! `tunneling_config` (in `hbone`).

use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{DEFAULT_IDLE_TIMEOUT, RouteConfig, TcpProxyConfig, WeightedClusterConfig};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::v3::HashPolicy as PbHashPolicy;
use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
use super::access_log::access_logs;
use super::{hbone, timeout_or, Result};
use std::sync::Arc;

pub(super) fn tcp_proxy(t: &TcpProxy, path: &str) -> Result<TcpProxyConfig> {
    if t.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    let route = route(t.cluster_specifier.as_ref(), path)?;
    let idle_timeout = timeout_or(
        t.idle_timeout.as_ref(),
        DEFAULT_IDLE_TIMEOUT,
        &field(path, "idle_timeout"),
    )?;
    let max_connect_attempts = match t.max_connect_attempts {
        None => 1,
        Some(v) if v.value >= 1 => v.value,
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "max_connect_attempts"),
                "must be at least 1",
            ))
        }
    };
    let access_logs = access_logs(&t.access_log, &field(path, "access_log"))?;
    Ok(TcpProxyConfig {
        stat_prefix: t.stat_prefix.clone(),
        route,
        idle_timeout,
        max_connect_attempts,
        access_logs,
        hash_source_ip: hash_policy(&t.hash_policy, &field(path, "hash_policy"))?,
        tunneling: t
            .tunneling_config
            .as_ref()
            .map(|c| hbone::tunneling(c, &field(path, "tunneling_config")).map(Arc::new))
            .transpose()?,
    })
}

/// The route: `cluster`, or `weighted_clusters`.
fn route(specifier: Option<&tcp_proxy::ClusterSpecifier>, path: &str) -> Result<RouteConfig> {
    match specifier {
        None => Err(ConfigError::invalid(
            path,
            "one of 'cluster' or 'weighted_clusters' is required",
        )),
        Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    field(path, "cluster"),
                    "must not be empty",
                ));
            }
            Ok(RouteConfig::Cluster(name.clone()))
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let wpath = field(&field(path, "weighted_clusters"), "clusters");
            weighted_clusters(&w.clusters, &wpath).map(RouteConfig::Weighted)
        }
    }
}

/// `weighted_clusters.clusters`: at least one, each with a name and a weight of at least 1.
fn weighted_clusters(
    clusters: &[ClusterWeight],
    wpath: &str,
) -> Result<Vec<WeightedClusterConfig>> {
    if clusters.is_empty() {
        return Err(ConfigError::invalid(
            wpath,
            "at least one cluster is required (the total weight must be greater than 0)",
        ));
    }
    let mut entries = Vec::with_capacity(clusters.len());
    for (i, c) in clusters.iter().enumerate() {
        let cpath = index(wpath, i);
        if c.name.is_empty() {
            return Err(ConfigError::invalid(
                field(&cpath, "name"),
                "required (non-empty)",
            ));
        }
        if c.weight == 0 {
            return Err(ConfigError::invalid(
                field(&cpath, "weight"),
                "must be at least 1 (as in Envoy)",
            ));
        }
        entries.push(WeightedClusterConfig {
            name: c.name.clone(),
            weight: c.weight,
        });
    }
    Ok(entries)
}

/// `hash_policy`: at most one entry (as Envoy), `source_ip`.
fn hash_policy(policies: &[PbHashPolicy], path: &str) -> Result<bool> {
    match policies {
        [] => Ok(false),
        [p] => match &p.policy_specifier {
            Some(PolicySpecifier::SourceIp(_)) => Ok(true),
            Some(PolicySpecifier::FilterState(_)) => Err(ConfigError::unsupported(
                field(&index(path, 0), "filter_state"),
                "not supported by Switchyard (source_ip is)",
            )),
            None => Err(ConfigError::invalid(
                index(path, 0),
                "one of 'source_ip' or 'filter_state' is required",
            )),
        },
        _ => Err(ConfigError::invalid(
            index(path, 1),
            "at most one hash policy (as in Envoy)",
        )),
    }
}
