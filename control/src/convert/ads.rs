//! `dynamic_resources` and every `ConfigSource`: ADS over gRPC (SotW or Delta) to a static
//! cluster (STATIC, STRICT_DNS or LOGICAL_DNS), a stream of the type's own discovery service (`api_config_source` with
//! `api_type: GRPC` or `DELTA_GRPC`), or a watched file (`path_config_source`, or the
//! deprecated `path`). REST polling and `self` are refused with their path.

use super::{duration, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{
    ClusterConfig, DynamicConfig, FileSource, GrpcSource, ReconnectBackoff, XdsApi, XdsSource,
    DEFAULT_INITIAL_FETCH_TIMEOUT,
};
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources;
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, HeaderValue, PathConfigSource,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A `ConfigSource` (resource API version V3, or AUTO, which is V3): where the resources
/// come from, and its `initial_fetch_timeout` (`None` for `0s`: wait forever). A gRPC
/// source's cluster is checked by the caller ([`management_cluster`]), which knows the
/// static clusters.
pub(super) fn config_source(
    cs: Option<&ConfigSource>,
    path: &str,
) -> Result<(XdsSource, Option<Duration>)> {
    let Some(cs) = cs else {
        return Err(ConfigError::invalid(path, "required"));
    };
    let source =
        match &cs.config_source_specifier {
            Some(ConfigSourceSpecifier::Ads(_)) => XdsSource::Ads,
            // Deprecated in Envoy's API for `path_config_source`, still accepted by Envoy 1.40
            // (with a warning, as here).
            #[allow(deprecated)]
            Some(ConfigSourceSpecifier::Path(p)) => {
                tracing::warn!(
                    field = %field(path, "path"),
                    "deprecated: ConfigSource.path; use path_config_source.path"
                );
                XdsSource::File(file_source(
                    &PathConfigSource {
                        path: p.clone(),
                        ..PathConfigSource::default()
                    },
                    &field(path, "path"),
                )?)
            }
            Some(ConfigSourceSpecifier::PathConfigSource(p)) => {
                XdsSource::File(file_source(p, &field(path, "path_config_source"))?)
            }
            Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
                XdsSource::Grpc(api_source(api, &field(path, "api_config_source"))?)
            }
            Some(ConfigSourceSpecifier::Self_(_)) => return Err(ConfigError::unsupported(
                field(path, "self"),
                "not supported by Switchyard (use ads, api_config_source or path_config_source)",
            )),
            None => {
                return Err(ConfigError::invalid(
                    path,
                    "one of ads, api_config_source or path_config_source is required",
                ))
            }
        };
    if !matches!(
        ApiVersion::try_from(cs.resource_api_version),
        Ok(ApiVersion::V3 | ApiVersion::Auto)
    ) {
        return Err(ConfigError::invalid(
            field(path, "resource_api_version"),
            "must be V3",
        ));
    }
    let timeout = match &cs.initial_fetch_timeout {
        None => Some(DEFAULT_INITIAL_FETCH_TIMEOUT),
        Some(d) => {
            let d = duration(d, &field(path, "initial_fetch_timeout"))?;
            (!d.is_zero()).then_some(d)
        }
    };
    Ok((source, timeout))
}

/// `path_config_source`: a non-empty path, and a non-empty `watched_directory.path` if one
/// is given. Whether they exist is checked when the subscription starts (as Envoy does:
/// `validate` touches no file).
fn file_source(p: &PathConfigSource, path: &str) -> Result<FileSource> {
    if p.path.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "path"),
            "must not be empty",
        ));
    }
    let watched_directory = match &p.watched_directory {
        None => None,
        Some(w) if w.path.is_empty() => {
            return Err(ConfigError::invalid(
                field(&field(path, "watched_directory"), "path"),
                "must not be empty",
            ))
        }
        Some(w) => Some(PathBuf::from(&w.path)),
    };
    Ok(FileSource {
        path: PathBuf::from(&p.path),
        watched_directory,
    })
}

/// `api_config_source` (or `ads_config`): `api_type` GRPC (State of the World) or
/// DELTA_GRPC (Delta), transport V3, one `envoy_grpc` service.
fn api_source(api: &ApiConfigSource, path: &str) -> Result<GrpcSource> {
    let xds_api = match ApiType::try_from(api.api_type) {
        Ok(ApiType::Grpc) => XdsApi::Sotw,
        Ok(ApiType::DeltaGrpc) => XdsApi::Delta,
        Ok(ApiType::Rest) => {
            return Err(ConfigError::unsupported(
                field(path, "api_type"),
                "REST (polling JSON over HTTP) is not supported by Switchyard: use GRPC or \
                 DELTA_GRPC, or a file (path_config_source)",
            ))
        }
        _ => {
            return Err(ConfigError::unsupported(
                field(path, "api_type"),
                "must be GRPC or DELTA_GRPC",
            ))
        }
    };
    if ApiVersion::try_from(api.transport_api_version) != Ok(ApiVersion::V3) {
        return Err(ConfigError::invalid(
            field(path, "transport_api_version"),
            "must be V3",
        ));
    }
    let gpath = field(path, "grpc_services");
    let [service] = api.grpc_services.as_slice() else {
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
    Ok(GrpcSource {
        cluster: target.cluster_name.clone(),
        api: xds_api,
        initial_metadata: initial_metadata(
            &service.initial_metadata,
            &field(&gpath, "initial_metadata"),
        )?,
        reconnect: reconnect_backoff(target, &field(&gpath, "envoy_grpc"))?,
    })
}

/// `envoy_grpc.retry_policy`: for an xDS stream Envoy reads only `retry_back_off` (the walker
/// refuses the policy's other fields by path). `base_interval` is required and at least 1 ms;
/// `max_interval`, when given, is at least `base_interval`, and is ten times it otherwise.
fn reconnect_backoff(target: &EnvoyGrpc, path: &str) -> Result<ReconnectBackoff> {
    let Some(policy) = &target.retry_policy else {
        return Ok(ReconnectBackoff::default());
    };
    let path = field(&field(path, "retry_policy"), "retry_back_off");
    let Some(backoff) = &policy.retry_back_off else {
        return Ok(ReconnectBackoff::default());
    };
    let base_path = field(&path, "base_interval");
    let Some(base) = &backoff.base_interval else {
        return Err(ConfigError::invalid(base_path, "required"));
    };
    let base = duration(base, &base_path)?;
    if base < Duration::from_millis(1) {
        return Err(ConfigError::invalid(base_path, "must be at least 1ms"));
    }
    let max = match &backoff.max_interval {
        None => base.saturating_mul(10),
        Some(m) => {
            let max_path = field(&path, "max_interval");
            let max = duration(m, &max_path)?;
            if max.is_zero() || max < base {
                return Err(ConfigError::invalid(
                    max_path,
                    "must be greater than zero and at least base_interval",
                ));
            }
            max
        }
    };
    Ok(ReconnectBackoff { base, max })
}

/// `initial_metadata`: headers the xDS client sends when each stream opens. Envoy lower-cases
/// the names and sends the values as given; a name gRPC could not carry (not an HTTP token,
/// a pseudo-header) is refused, and so are binary (`-bin`) metadata, whose values gRPC
/// base64-encodes, and values that are not visible ASCII (tonic's ASCII metadata).
fn initial_metadata(headers: &[HeaderValue], path: &str) -> Result<Vec<(String, String)>> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let hpath = index(path, i);
            let key = h.key.to_ascii_lowercase();
            let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            if key.is_empty() || !key.bytes().all(token) {
                return Err(ConfigError::invalid(
                    field(&hpath, "key"),
                    format!("'{}' is not a header name (an HTTP token)", h.key),
                ));
            }
            if key.ends_with("-bin") {
                return Err(ConfigError::unsupported(
                    field(&hpath, "key"),
                    "binary (-bin) metadata is not supported by Switchyard",
                ));
            }
            if !h
                .value
                .bytes()
                .all(|c| c == b'\t' || (b' '..=b'~').contains(&c))
            {
                return Err(ConfigError::invalid(
                    field(&hpath, "value"),
                    "must be visible ASCII (spaces and tabs allowed)",
                ));
            }
            Ok((key, h.value.clone()))
        })
        .collect()
}

/// The path of a gRPC source's cluster name, under the `ConfigSource` at `path`.
pub(crate) fn grpc_cluster_path(path: &str, ads_config: bool) -> String {
    let api = if ads_config {
        path.to_string()
    } else {
        field(path, "api_config_source")
    };
    field(
        &field(&index(&field(&api, "grpc_services"), 0), "envoy_grpc"),
        "cluster_name",
    )
}

/// Checks that `name` is a cluster a management server can be reached through: a static
/// one (`clusters` are the static ones), STATIC with at least one endpoint, or STRICT_DNS /
/// LOGICAL_DNS (its names are resolved on the `dns` thread once running, never here).
/// `path` names the field.
pub(crate) fn management_cluster(
    name: &str,
    path: &str,
    clusters: &[Arc<ClusterConfig>],
) -> Result<()> {
    let Some(cluster) = clusters.iter().find(|c| c.name == name) else {
        return Err(ConfigError::invalid(
            path,
            format!("no static cluster named '{name}'"),
        ));
    };
    if cluster.dns.is_none() && (cluster.endpoints.is_empty() || cluster.eds_service.is_some()) {
        return Err(ConfigError::invalid(
            path,
            format!(
                "cluster '{name}' must be a STATIC cluster with at least one endpoint, or a \
                 STRICT_DNS or LOGICAL_DNS cluster"
            ),
        ));
    }
    Ok(())
}

/// `dynamic_resources`: `lds_config` / `cds_config` (ADS, a gRPC stream of their own, or a
/// file) and `ads_config`, which every `ads: {}` source needs.
pub(super) fn dynamic_resources(
    d: &DynamicResources,
    clusters: &[Arc<ClusterConfig>],
) -> Result<DynamicConfig> {
    let path = "dynamic_resources";
    let apath = field(path, "ads_config");
    let ads = match &d.ads_config {
        Some(ads) => {
            let source = api_source(ads, &apath)?;
            management_cluster(&source.cluster, &grpc_cluster_path(&apath, true), clusters)?;
            Some(source)
        }
        None => None,
    };
    let mut timeout = None;
    let mut sources = [None, None];
    for (i, (name, cs)) in [("lds_config", &d.lds_config), ("cds_config", &d.cds_config)]
        .into_iter()
        .enumerate()
    {
        let Some(cs) = cs else { continue };
        let spath = field(path, name);
        let (source, t) = config_source(Some(cs), &spath)?;
        match &source {
            XdsSource::Ads if ads.is_none() => {
                return Err(ConfigError::invalid(
                    field(&spath, "ads"),
                    "needs dynamic_resources.ads_config",
                ))
            }
            XdsSource::Grpc(g) => {
                management_cluster(&g.cluster, &grpc_cluster_path(&spath, false), clusters)?
            }
            // Envoy refuses a missing CDS file at load, `validate` included; a missing LDS
            // file only when its subscription starts (`run`: the controller checks it).
            XdsSource::File(f) if name == "cds_config" => super::file_source_present(f, &spath)?,
            XdsSource::File(_) | XdsSource::Ads => {}
        }
        timeout = timeout.max(t);
        sources[i] = Some(source);
    }
    let [lds, cds] = sources;
    let any = lds.is_some() || cds.is_some();
    Ok(DynamicConfig {
        ads,
        lds,
        cds,
        initial_fetch_timeout: if any {
            timeout
        } else {
            Some(DEFAULT_INITIAL_FETCH_TIMEOUT)
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::load::parse_yaml_rib;

    #[test]
    fn initial_metadata_is_kept_in_order_with_lower_case_names() {
        let yaml = "node: {id: node1, cluster: cluster1}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {cluster_name: xds}
      initial_metadata:
      - {key: X-Tenant, value: team-a}
      - {key: authorization, value: 'Bearer t0ken'}
      - {key: x-tenant, value: team-b}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18000}}}
";
        let (rib, _) = parse_yaml_rib(yaml).unwrap_or_else(|e| panic!("{e}"));
        let ads = rib.dynamic.and_then(|d| d.ads).expect("an ADS source");
        let pairs: Vec<(&str, &str)> = ads
            .initial_metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("x-tenant", "team-a"),
                ("authorization", "Bearer t0ken"),
                ("x-tenant", "team-b")
            ]
        );
    }

    /// `envoy_grpc.retry_policy.retry_back_off` sets the reconnect backoff; `max_interval`
    /// defaults to ten times `base_interval`, and no policy means Envoy's 500 ms / 30 s.
    #[test]
    fn retry_back_off_sets_the_reconnect_backoff() {
        let yaml = |policy: &str| {
            format!(
                "dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{cluster_name: xds{policy}}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 18000}}}}}}
"
            )
        };
        let reconnect = |policy: &str| {
            let (rib, _) = parse_yaml_rib(&yaml(policy)).unwrap_or_else(|e| panic!("{e}"));
            let r = rib.dynamic.and_then(|d| d.ads).expect("ADS").reconnect;
            (r.base.as_millis(), r.max.as_millis())
        };
        assert_eq!(reconnect(""), (500, 30_000));
        assert_eq!(reconnect(", retry_policy: {}"), (500, 30_000));
        let both = ", retry_policy: {retry_back_off: {base_interval: 0.1s, max_interval: 0.5s}}";
        assert_eq!(reconnect(both), (100, 500));
        let base = ", retry_policy: {retry_back_off: {base_interval: 0.25s}}";
        assert_eq!(reconnect(base), (250, 2500));
        let e = parse_yaml_rib(&yaml(
            ", retry_policy: {retry_back_off: {max_interval: 1s}}",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("retry_back_off.base_interval"), "{e}");
    }

    /// A STRICT_DNS or LOGICAL_DNS management cluster is accepted and resolved by nobody
    /// here (the `dns` thread does, once running); a STATIC one still needs an endpoint.
    #[test]
    fn a_dns_management_cluster_is_accepted_unresolved() {
        let yaml = |kind: &str, endpoints: &str| {
            format!(
                "dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{cluster_name: xds}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: {kind}
    load_assignment:
      cluster_name: xds
      endpoints:{endpoints}
"
            )
        };
        let named = "
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: xds.example, port_value: 18000}}}";
        for kind in ["STRICT_DNS", "LOGICAL_DNS"] {
            let (rib, _) = parse_yaml_rib(&yaml(kind, named)).unwrap_or_else(|e| panic!("{e}"));
            let xds = rib.cluster("xds").expect("the xds cluster");
            assert!(xds.dns.is_some() && xds.endpoints.is_empty(), "{kind}");
            assert_eq!(rib.dynamic.and_then(|d| d.ads).unwrap().cluster, "xds");
        }
        let e = parse_yaml_rib(&yaml("STATIC", " []"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name")
                && e.contains("STRICT_DNS or LOGICAL_DNS"),
            "{e}"
        );
    }
}
