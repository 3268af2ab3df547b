//! The conversion boundary: envoy-types proto messages in, RIB domain types out.
//!
//! This is the one module that touches proto types: they stop here, and nothing it returns
//! holds one. It assumes the config walker (`config::walk`) already rejected unknown and
//! unsupported fields, and runs the semantic checks the walker cannot: required fields,
//! ranges, addresses, duplicate names and addresses, identical filter-chain matches. Each
//! error names the field's full path in proto field names, e.g.
//! `static_resources.listeners[1].filter_chains[0].filters[0].typed_config.idle_timeout`.
//! Defaults are applied here (Envoy's where Envoy has one), so the RIB never holds "absent".
//!
//! This file holds the entry points (a bootstrap, one xDS resource) and the helpers every
//! part shares (durations, `Any` decoding); each part of the config has its own file:
//! `listener` (and `filter_chain`, `tcp_proxy`, `access_log` under it, `udp` for UDP
//! listeners), `cluster` (and `lb`, `circuit_breakers`, `upstream_bind`, `health`,
//! `endpoints` under it), `tls` (the transport sockets of both), `ads` (`dynamic_resources`), `address`, `hbone` (HTTP/2
//! CONNECT: a chain's connection manager, a tcp_proxy's tunneling, a cluster's HTTP/2,
//! ORIGINAL_DST by `:authority`), and `ext` (Switchyard's own extensions).

use self::address::admin_address;
use self::ads::dynamic_resources;
use self::cluster::cluster;
use self::endpoints::load_assignment;
use self::listener::listener;
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{
    AdminConfig, Bind, ClusterConfig, EndpointConfig, FileSource, ListenerConfig, NodeInfo, Rib,
    XdsSource,
};
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::accesslog::{LogFormat, LogPath};
use switchyard_dataplane::fib::LocalityName;

mod access_log;
mod address;
mod ads;
mod chain_matcher;
mod circuit_breakers;
mod cluster;
mod dns;
mod endpoints;
mod ext;
mod filter_chain;
mod hbone;
mod health;
mod lb;
mod lb_typed;
mod listener;
mod proxy_protocol;
mod rbac;
mod runtime;
mod stats_config;
mod string_matcher;
mod tcp_proxy;
mod tls;
mod udp;
mod upstream_bind;

type Result<T> = std::result::Result<T, ConfigError>;

/// Converts a decoded bootstrap to the RIB, checking everything the walker could not.
pub fn bootstrap(b: &Bootstrap) -> Result<Rib> {
    // No address, no admin listener: Envoy opens none either.
    let admin = AdminConfig {
        address: b
            .admin
            .as_ref()
            .and_then(|a| a.address.as_ref())
            .map(|addr| admin_address(addr, "admin.address"))
            .transpose()?,
        access_logs: match &b.admin {
            Some(a) => admin_access_logs(a)?,
            None => Vec::new(),
        },
        ignore_global_conn_limit: b.admin.as_ref().is_some_and(|a| a.ignore_global_conn_limit),
    };
    let empty = Default::default();
    let statics = b.static_resources.as_ref().unwrap_or(&empty);
    let clusters = static_clusters(&statics.clusters)?;
    let listeners = static_listeners(&statics.listeners, &admin)?;
    hbone::tunneling_clusters(&statics.listeners, &listeners, &clusters)?;
    let dynamic = match &b.dynamic_resources {
        Some(d) => Some(dynamic_resources(d, &clusters)?),
        None => None,
    };
    eds_sources(&clusters, dynamic.as_ref().is_some_and(|d| d.ads.is_some()))?;
    let secrets = static_secrets(&statics.secrets)?;
    let ads = dynamic.as_ref().is_some_and(|d| d.ads.is_some());
    secret_references(&listeners, &clusters, &secrets, ads)?;
    let node = node_info(b);
    let mut rib = Rib {
        node,
        admin,
        listeners,
        clusters,
        dynamic,
        dns_resolver: dns::bootstrap_resolver(b)?,
        runtime: runtime::runtime_config(b)?,
        outlier_event_log: b
            .cluster_manager
            .as_ref()
            .and_then(|c| c.outlier_detection.as_ref())
            .map(|o| std::path::PathBuf::from(&o.event_log_path))
            .filter(|p| !p.as_os_str().is_empty()),
        stats: Arc::new(stats_config::stats_config(b.stats_config.as_ref())?),
        secrets,
    };
    for problem in crate::secrets::resolve(&mut rib, &Default::default()) {
        tracing::debug!(%problem, "TLS context waits for SDS");
    }
    warn_missing_clusters(&rib);
    Ok(rib)
}

/// `static_resources.secrets`, each name once.
fn static_secrets(
    statics: &[envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret],
) -> Result<std::collections::BTreeMap<String, crate::rib::SecretValue>> {
    let mut out = std::collections::BTreeMap::new();
    for (i, s) in statics.iter().enumerate() {
        let path = index("static_resources.secrets", i);
        let (name, value) = tls::secret(s, &path)?;
        if out.insert(name.clone(), value).is_some() {
            return Err(ConfigError::invalid(
                field(&path, "name"),
                format!("duplicate secret name '{name}'"),
            ));
        }
    }
    Ok(out)
}

/// Every secret a static listener or cluster names: a static one must be in
/// `static_resources.secrets` with the right kind (Envoy: Unknown static secret), one over
/// ADS needs `dynamic_resources.ads_config`.
fn secret_references(
    listeners: &[ListenerConfig],
    clusters: &[Arc<ClusterConfig>],
    secrets: &std::collections::BTreeMap<String, crate::rib::SecretValue>,
    ads: bool,
) -> Result<()> {
    use crate::rib::{SecretSource, SecretValue, TlsSecrets};
    let check = |t: &TlsSecrets, socket: &str| -> Result<()> {
        let common = field(&field(socket, "typed_config"), "common_tls_context");
        let lpath = field(&common, "tls_certificate_sds_secret_configs");
        let certificates = t
            .certificates
            .iter()
            .enumerate()
            .map(|(i, k)| (k, true, index(&lpath, i)));
        let validation = t.validation.iter().map(|v| {
            let at = match v.default {
                Some(_) => field(&common, "combined_validation_context"),
                None => common.clone(),
            };
            (
                &v.secret,
                false,
                field(&at, "validation_context_sds_secret_config"),
            )
        });
        for (key, is_certificate, path) in certificates.chain(validation) {
            let path = path.as_str();
            match (&key.source, secrets.get(&key.name)) {
                (SecretSource::Static, None) => {
                    return Err(ConfigError::invalid(
                        field(path, "name"),
                        format!(
                            "names static secret '{}', which static_resources.secrets lacks \
                             (Envoy: Unknown static secret: {})",
                            key.name, key.name
                        ),
                    ))
                }
                (SecretSource::Static, Some(v)) => {
                    let right = matches!(v, SecretValue::Certificate(_)) == is_certificate;
                    if !right {
                        let want = if is_certificate {
                            "tls_certificate"
                        } else {
                            "validation_context"
                        };
                        return Err(ConfigError::invalid(
                            path,
                            format!("static secret '{}' is no {want}", key.name),
                        ));
                    }
                }
                (SecretSource::Ads, _) if !ads => {
                    return Err(ConfigError::invalid(
                        field(&field(path, "sds_config"), "ads"),
                        format!(
                            "secret '{}' comes over ADS (sds_config.ads), which needs \
                             dynamic_resources.ads_config",
                            key.name
                        ),
                    ))
                }
                (SecretSource::File(f), _) => file_source_present(f, &field(path, "sds_config"))?,
                _ => {}
            }
        }
        Ok(())
    };
    for (i, l) in listeners.iter().enumerate() {
        let Some(t) = l.tcp() else { continue };
        let lpath = index("static_resources.listeners", i);
        for (j, c) in t.filter_chains.iter().enumerate() {
            if let Some(tls) = &c.tls {
                let path = field(
                    &index(&field(&lpath, "filter_chains"), j),
                    "transport_socket",
                );
                check(&tls.secrets, &path)?;
            }
        }
        if let Some(tls) = t.default_filter_chain.as_ref().and_then(|c| c.tls.as_ref()) {
            let path = field(&field(&lpath, "default_filter_chain"), "transport_socket");
            check(&tls.secrets, &path)?;
        }
    }
    for (i, c) in clusters.iter().enumerate() {
        if let Some(tls) = &c.tls {
            let path = field(&index("static_resources.clusters", i), "transport_socket");
            check(&tls.secrets, &path)?;
        }
    }
    Ok(())
}

fn node_info(b: &Bootstrap) -> NodeInfo {
    b.node
        .as_ref()
        .map(|n| NodeInfo {
            id: n.id.clone(),
            cluster: n.cluster.clone(),
            metadata: n.metadata.as_ref().map(Message::encode_to_vec),
            locality: n.locality.as_ref().map(|l| LocalityName {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            }),
        })
        .unwrap_or_default()
}

/// `static_resources.clusters`, each name once.
fn static_clusters(statics: &[Cluster]) -> Result<Vec<Arc<ClusterConfig>>> {
    let mut clusters = Vec::with_capacity(statics.len());
    let mut cluster_names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in statics.iter().enumerate() {
        let path = index("static_resources.clusters", i);
        let converted = cluster(c, &path)?;
        if let Some(first) = cluster_names.insert(&c.name, i) {
            return Err(ConfigError::invalid(
                field(&path, "name"),
                format!(
                    "duplicate cluster name '{}' (also clusters[{first}])",
                    c.name
                ),
            ));
        }
        clusters.push(Arc::new(converted));
    }
    Ok(clusters)
}

/// `admin.access_log` (stdout, stderr or a file, in Envoy's default format: the admin
/// writes HTTP lines, which the tcp_proxy's command operators do not describe) and the
/// deprecated `admin.access_log_path`.
fn admin_access_logs(a: &Admin) -> Result<Vec<LogPath>> {
    let mut logs = Vec::new();
    #[allow(deprecated)] // Deprecated in Envoy's API, still accepted by Envoy 1.40.
    if !a.access_log_path.is_empty() {
        logs.push(LogPath::File(a.access_log_path.clone().into()));
    }
    for (i, log) in a.access_log.iter().enumerate() {
        let path = index("admin.access_log", i);
        let config = access_log::access_log_config(log, &path)?;
        if log.filter.is_some() {
            return Err(ConfigError::unsupported(
                field(&path, "filter"),
                "the admin's access log takes no filter in Switchyard",
            ));
        }
        if config.format != LogFormat::EnvoyDefault {
            return Err(ConfigError::unsupported(
                field(&path, "typed_config"),
                "the admin's access log is written in Envoy's default HTTP format only \
                 (leave out its format)",
            ));
        }
        logs.push(config.path);
    }
    Ok(logs)
}

/// `static_resources.listeners`, each name and address once, none on the admin's address.
fn static_listeners(statics: &[Listener], admin: &AdminConfig) -> Result<Vec<ListenerConfig>> {
    let mut listeners: Vec<ListenerConfig> = Vec::with_capacity(statics.len());
    for (i, l) in statics.iter().enumerate() {
        let path = index("static_resources.listeners", i);
        let converted = listener(l, &path)?;
        if let Some(j) = listeners.iter().position(|o| o.name == converted.name) {
            return Err(ConfigError::invalid(
                field(&path, "name"),
                format!(
                    "duplicate listener name '{}' (also listeners[{j}])",
                    converted.name
                ),
            ));
        }
        for (k, bind) in converted.binds().enumerate() {
            let at = if k == 0 {
                field(&path, "address")
            } else {
                field(
                    &index(&field(&path, "additional_addresses"), k - 1),
                    "address",
                )
            };
            if let Some(j) = listeners.iter().position(|o| o.binds().any(|b| b == bind)) {
                return Err(ConfigError::invalid(
                    at,
                    format!("duplicate listener address {bind} (also listeners[{j}])"),
                ));
            }
            if admin.socket().map(Bind::tcp) == Some(bind) {
                return Err(ConfigError::invalid(
                    at,
                    format!("listener address {} is the admin address", bind.address),
                ));
            }
        }
        listeners.push(converted);
    }
    Ok(listeners)
}

/// Each static EDS cluster's source must be usable: `ads: {}` needs
/// `dynamic_resources.ads_config`, a gRPC source a static cluster (STATIC with endpoints, or
/// DNS), a file must exist (so `validate` refuses what `run` would).
fn eds_sources(clusters: &[Arc<ClusterConfig>], ads: bool) -> Result<()> {
    for (i, c) in clusters.iter().enumerate() {
        if c.eds_service.is_none() {
            continue;
        }
        let path = field(
            &field(&index("static_resources.clusters", i), "eds_cluster_config"),
            "eds_config",
        );
        match &c.eds_source {
            XdsSource::Ads if !ads => {
                return Err(ConfigError::invalid(
                    field(&path, "ads"),
                    "needs dynamic_resources.ads_config",
                ))
            }
            XdsSource::Grpc(g) => ads::management_cluster(
                &g.cluster,
                &ads::grpc_cluster_path(&path, false),
                clusters,
            )?,
            XdsSource::File(f) => file_source_present(f, &path)?,
            XdsSource::Ads => {}
        }
    }
    Ok(())
}

/// Whether a cluster received over CDS can get its endpoints from where its `eds_config`
/// says, given the bootstrap's static clusters and whether there is an ADS stream; the
/// reason (naming the field, relative to the cluster) when it cannot. A file must exist
/// (Envoy refuses such a cluster too).
pub fn eds_source_usable(
    c: &ClusterConfig,
    statics: &[Arc<ClusterConfig>],
    ads: bool,
) -> Result<()> {
    if c.eds_service.is_none() {
        return Ok(());
    }
    let path = "eds_cluster_config.eds_config";
    match &c.eds_source {
        XdsSource::Ads if !ads => Err(ConfigError::invalid(
            field(path, "ads"),
            "needs dynamic_resources.ads_config",
        )),
        XdsSource::Ads => Ok(()),
        XdsSource::Grpc(g) => {
            ads::management_cluster(&g.cluster, &ads::grpc_cluster_path(path, false), statics)
        }
        XdsSource::File(f) => file_source_present(f, path),
    }
}

/// A file source's file must exist when its subscription starts, and its watched directory
/// be a directory (Envoy: "paths must refer to an existing path in the system"). `path` is
/// the `ConfigSource`'s.
pub fn file_source_present(f: &FileSource, path: &str) -> Result<()> {
    let ppath = field(path, "path_config_source");
    if !f.path.is_file() {
        return Err(ConfigError::invalid(
            field(&ppath, "path"),
            format!("'{}' does not exist or is not a file", f.path.display()),
        ));
    }
    match &f.watched_directory {
        Some(d) if !d.is_dir() => Err(ConfigError::invalid(
            field(&field(&ppath, "watched_directory"), "path"),
            format!("'{}' is not a directory", d.display()),
        )),
        _ => Ok(()),
    }
}

/// Envoy accepts a tcp_proxy or udp_proxy naming a cluster that does not exist (it counts
/// `downstream_cx_no_route` / `downstream_sess_no_route` at run time); say so in the log.
fn warn_missing_clusters(rib: &Rib) {
    for l in &rib.listeners {
        let chains = l.tcp().into_iter().flat_map(|t| t.chains());
        for chain in chains {
            for name in chain
                .tcp_proxy
                .route
                .cluster_names()
                .filter(|n| rib.cluster(n).is_none())
            {
                tracing::warn!(
                    listener = %l.name,
                    chain = %chain.name,
                    cluster = name,
                    "tcp_proxy routes to a cluster that does not exist; its connections will be closed (downstream_cx_no_route)"
                );
            }
            if let Some(m) = chain
                .mirror
                .as_ref()
                .filter(|m| rib.cluster(&m.cluster).is_none())
            {
                tracing::warn!(
                    listener = %l.name,
                    chain = %chain.name,
                    cluster = %m.cluster,
                    "the mirror's shadow cluster does not exist; nothing is mirrored (connections_failed)"
                );
            }
        }
        let udp_routes = l.udp().into_iter().flat_map(|u| u.route.cluster_names());
        for name in udp_routes.filter(|n| rib.cluster(n).is_none()) {
            tracing::warn!(
                listener = %l.name,
                cluster = name,
                "udp_proxy routes to a cluster that does not exist; its datagrams will be dropped (downstream_sess_no_route)"
            );
        }
    }
}

/// One listener received as an xDS resource (field paths relative to the resource).
pub fn listener_resource(l: &Listener) -> Result<ListenerConfig> {
    listener(l, "")
}

/// One cluster received as an xDS resource.
pub fn cluster_resource(c: &Cluster) -> Result<ClusterConfig> {
    let mut config = cluster(c, "")?;
    config.added_via_api = true;
    Ok(config)
}

/// One `Secret` received as an xDS (SDS) resource: its name and checked payload.
pub fn secret_resource(
    s: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret,
) -> Result<(String, crate::rib::SecretValue)> {
    tls::secret(s, "")
}

/// One `ClusterLoadAssignment` received as an xDS (EDS) resource: its cluster name and
/// endpoints.
pub fn endpoints_resource(la: &ClusterLoadAssignment) -> Result<(String, Arc<[EndpointConfig]>)> {
    Ok((la.cluster_name.clone(), load_assignment(la, "")?.into()))
}

/// A duration Envoy accepts (not negative, at most 9,223,372,035 s, nanos below a second).
/// The walker refuses the others first with the same message; this keeps the conversion
/// total for any message handed to `convert`.
fn duration(d: &PbDuration, path: &str) -> Result<Duration> {
    crate::duration::check_duration(d.seconds, d.nanos)
        .map_err(|m| ConfigError::invalid(path, m))?;
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A timeout at `path`: `default` (Envoy's) when not given, `None` (no timeout) at `0s`.
fn timeout_or(d: Option<&PbDuration>, default: Duration, path: &str) -> Result<Option<Duration>> {
    match d {
        None => Ok(Some(default)),
        Some(d) => Ok(Some(duration(d, path)?).filter(|d| !d.is_zero())),
    }
}

/// The message name an `Any` carries.
fn type_name(any: &Any) -> &str {
    any.type_url
        .rsplit_once('/')
        .map_or(any.type_url.as_str(), |(_, n)| n)
}

/// Decodes an `Any` the walker accepted as `expected`.
fn decode_any<M: Message + Default>(any: &Any, expected: &str, path: &str) -> Result<M> {
    if type_name(any) != expected {
        return Err(ConfigError::unsupported(
            path,
            format!(
                "@type '{}' is not supported here (expected type.googleapis.com/{expected})",
                any.type_url
            ),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| ConfigError::invalid(path, format!("does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_convert_only_in_envoy_range() {
        let d = |seconds, nanos| PbDuration { seconds, nanos };
        assert_eq!(duration(&d(0, 0), "f"), Ok(Duration::ZERO));
        assert_eq!(
            duration(&d(9_223_372_035, 999_999_999), "f"),
            Ok(Duration::new(9_223_372_035, 999_999_999))
        );
        for (s, n) in [
            (315_576_000_000, 0),
            (9_223_372_036, 0),
            (i64::MAX, 999_999_999),
            (0, 1_000_000_000),
            (-1, 0),
            (0, -1),
        ] {
            let e = duration(&d(s, n), "a.b").unwrap_err();
            assert_eq!(e.path(), "a.b", "{s} {n}: {e}");
        }
    }
}
