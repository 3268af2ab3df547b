//! `dynamic_resources` and every `ConfigSource`: ADS over gRPC (SotW or Delta) to a static
//! cluster is the one xDS source Switchyard supports; anything else is refused with its
//! path.

use super::{duration, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{ClusterConfig, DynamicConfig, XdsApi, DEFAULT_INITIAL_FETCH_TIMEOUT};
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::{ApiConfigSource, ApiVersion, ConfigSource};
use std::sync::Arc;
use std::time::Duration;

/// A `ConfigSource` that must be `{ads: {}}` (the only xDS source Switchyard supports), with
/// resource API version V3 (or AUTO, which is V3). Returns its `initial_fetch_timeout`
/// (`None` for `0s`: wait forever).
pub(super) fn ads_source(cs: Option<&ConfigSource>, path: &str) -> Result<Option<Duration>> {
    let Some(cs) = cs else {
        return Err(ConfigError::invalid(path, "required"));
    };
    if !matches!(
        cs.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ) {
        return Err(ConfigError::unsupported(
            path,
            "only `ads: {}` is supported by Switchyard (path, api_config_source and self are not)",
        ));
    }
    if !matches!(
        ApiVersion::try_from(cs.resource_api_version),
        Ok(ApiVersion::V3 | ApiVersion::Auto)
    ) {
        return Err(ConfigError::invalid(
            field(path, "resource_api_version"),
            "must be V3",
        ));
    }
    match &cs.initial_fetch_timeout {
        None => Ok(Some(DEFAULT_INITIAL_FETCH_TIMEOUT)),
        Some(d) => {
            let d = duration(d, &field(path, "initial_fetch_timeout"))?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// `dynamic_resources`: an ADS `ads_config` over gRPC to a static cluster, and `lds_config` /
/// `cds_config` that use it.
pub(super) fn dynamic_resources(
    d: &DynamicResources,
    clusters: &[Arc<ClusterConfig>],
) -> Result<DynamicConfig> {
    let path = "dynamic_resources";
    let apath = field(path, "ads_config");
    let Some(ads) = &d.ads_config else {
        return Err(ConfigError::invalid(
            apath,
            "required: Switchyard takes listeners and clusters over ADS only",
        ));
    };
    let api = ads_api(ads, &apath)?;
    let ads_cluster = ads_cluster(ads, &apath, clusters)?;
    let lds = d.lds_config.is_some();
    let cds = d.cds_config.is_some();
    let mut timeout = None;
    for (name, source) in [("lds_config", &d.lds_config), ("cds_config", &d.cds_config)] {
        if let Some(cs) = source {
            let t = ads_source(Some(cs), &field(path, name))?;
            timeout = timeout.max(t);
        }
    }
    Ok(DynamicConfig {
        ads_cluster,
        api,
        lds,
        cds,
        initial_fetch_timeout: if lds || cds {
            timeout
        } else {
            Some(DEFAULT_INITIAL_FETCH_TIMEOUT)
        },
    })
}

/// `ads_config.api_type` (GRPC: State of the World, DELTA_GRPC: Delta), transport V3.
fn ads_api(ads: &ApiConfigSource, apath: &str) -> Result<XdsApi> {
    let api = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc) => XdsApi::Sotw,
        Ok(ApiType::DeltaGrpc) => XdsApi::Delta,
        _ => {
            return Err(ConfigError::unsupported(
                field(apath, "api_type"),
                "must be GRPC or DELTA_GRPC",
            ))
        }
    };
    if ApiVersion::try_from(ads.transport_api_version) != Ok(ApiVersion::V3) {
        return Err(ConfigError::invalid(
            field(apath, "transport_api_version"),
            "must be V3",
        ));
    }
    Ok(api)
}

/// `ads_config.grpc_services`: one `envoy_grpc` service naming a static cluster with
/// endpoints; returns the cluster's name.
fn ads_cluster(
    ads: &ApiConfigSource,
    apath: &str,
    clusters: &[Arc<ClusterConfig>],
) -> Result<String> {
    let gpath = field(apath, "grpc_services");
    let [service] = ads.grpc_services.as_slice() else {
        return Err(ConfigError::invalid(
            gpath,
            "exactly one gRPC service is required",
        ));
    };
    let gpath = index(&gpath, 0);
    let Some(TargetSpecifier::EnvoyGrpc(target)) = &service.target_specifier else {
        return Err(ConfigError::unsupported(
            gpath,
            "only envoy_grpc is supported by Switchyard",
        ));
    };
    let cpath = field(&field(&gpath, "envoy_grpc"), "cluster_name");
    let Some(cluster) = clusters.iter().find(|c| c.name == target.cluster_name) else {
        return Err(ConfigError::invalid(
            cpath,
            format!("no static cluster named '{}'", target.cluster_name),
        ));
    };
    if cluster.endpoints.is_empty() || cluster.eds_service.is_some() {
        return Err(ConfigError::invalid(
            cpath,
            format!(
                "cluster '{}' must be a STATIC cluster with at least one endpoint",
                cluster.name
            ),
        ));
    }
    Ok(cluster.name.clone())
}
