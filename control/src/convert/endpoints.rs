//! A `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS resource) to the
//! RIB's endpoints: IP addresses with non-zero ports and weights, sorted by priority; or, for
//! a STRICT_DNS / LOGICAL_DNS cluster, the names to resolve ([`dns_targets`]). An endpoint's
//! `metadata` is only Switchyard's HBONE tunnel ([`hbone_tunnel`]), on IP endpoints.

use super::address::{any_socket_address, raw_socket_address};
use super::{decode_any, Result};
use crate::error::ConfigError;
use crate::ext::hbone_tunnel::HboneTunnel;
use crate::path::{field, index};
use crate::rib::{DnsTarget, EndpointConfig};
use crate::type_names::{HBONE_TUNNEL, HBONE_TUNNEL_KEY};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use switchyard_dataplane::fib::{Locality, LocalityName};

/// The endpoints of a `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS
/// resource), sorted by priority; every endpoint an IP address with a non-zero port.
pub(super) fn load_assignment(
    la: &ClusterLoadAssignment,
    lpath: &str,
) -> Result<Vec<EndpointConfig>> {
    let mut endpoints = Vec::new();
    for_each_endpoint(la, lpath, |lbe, priority, locality, p| {
        let apath = field(&field(p, "endpoint"), "address");
        let (_, text, _) = raw_socket_address(endpoint(lbe, p)?.address.as_ref(), &apath)?;
        if text.parse::<IpAddr>().is_err() {
            // Envoy's words ("malformed IP address"), and what to do about it.
            return Err(ConfigError::invalid(
                field(&field(&apath, "socket_address"), "address"),
                format!(
                    "malformed IP address: '{text}': the endpoints of a STATIC or EDS cluster are \
                     IP addresses; set the cluster's type to STRICT_DNS or LOGICAL_DNS to resolve \
                     a host name"
                ),
            ));
        }
        // Either protocol, as Envoy takes it: the tcp_proxy connects to the address and
        // the udp_proxy sends to it.
        let (_, address) = any_socket_address(endpoint(lbe, p)?.address.as_ref(), &apath)?;
        endpoints.push(EndpointConfig {
            address,
            weight: weight(lbe, p)?,
            priority,
            locality: locality.clone(),
            tunnel: hbone_tunnel(lbe, p)?,
        });
        Ok(())
    })?;
    // Priority levels in order (a stable sort keeps config order within a level, which
    // the hashing policies' tables depend on).
    endpoints.sort_by_key(|e| e.priority);
    Ok(endpoints)
}

/// The names a STRICT_DNS or LOGICAL_DNS cluster resolves, in config order: each endpoint's
/// `socket_address.address` is a host name (or an IP literal) and its `port_value`, which
/// every address it resolves to gets, is required. Nothing is resolved here.
pub(super) fn dns_targets(
    la: &ClusterLoadAssignment,
    lpath: &str,
    kind: &str,
) -> Result<Vec<DnsTarget>> {
    let mut targets = Vec::new();
    for_each_endpoint(la, lpath, |lbe, priority, locality, p| {
        let apath = field(&field(p, "endpoint"), "address");
        let (_, name, port_value) = raw_socket_address(endpoint(lbe, p)?.address.as_ref(), &apath)?;
        let sa_path = field(&apath, "socket_address");
        check_host_name(name, &field(&sa_path, "address"))?;
        if lbe.metadata.is_some() {
            return Err(ConfigError::unsupported(
                field(p, "metadata"),
                format!(
                    "not supported on the endpoints of a {kind} cluster (an HBONE tunnel is an \
                     IP endpoint's)"
                ),
            ));
        }
        let port = match u16::try_from(port_value) {
            Ok(0) => {
                return Err(ConfigError::invalid(
                    field(&sa_path, "port_value"),
                    format!(
                        "required for a {kind} cluster (every address the name resolves to gets \
                         this port)"
                    ),
                ))
            }
            Ok(p) => p,
            Err(_) => {
                return Err(ConfigError::invalid(
                    field(&sa_path, "port_value"),
                    format!("port {port_value} is out of range (1-65535)"),
                ))
            }
        };
        targets.push(DnsTarget {
            name: name.to_string(),
            port,
            weight: weight(lbe, p)?,
            priority,
            locality: locality.clone(),
        });
        Ok(())
    })?;
    Ok(targets)
}

/// Calls `f(lb_endpoint, priority, locality, path)` for every endpoint of every locality, in
/// config order; `cluster_name` is required.
fn for_each_endpoint(
    la: &ClusterLoadAssignment,
    lpath: &str,
    mut f: impl FnMut(&LbEndpoint, u32, &Locality, &str) -> Result<()>,
) -> Result<()> {
    if la.cluster_name.is_empty() {
        return Err(ConfigError::invalid(
            field(lpath, "cluster_name"),
            "required (non-empty)",
        ));
    }
    let epath = field(lpath, "endpoints");
    for (i, group) in la.endpoints.iter().enumerate() {
        let gpath = index(&epath, i);
        let locality = locality(group, i, &gpath)?;
        let lbpath = field(&gpath, "lb_endpoints");
        for (j, lbe) in group.lb_endpoints.iter().enumerate() {
            f(lbe, group.priority, &locality, &index(&lbpath, j))?;
        }
    }
    Ok(())
}

/// A `LocalityLbEndpoints`' identity for locality-weighted balancing: its position, its
/// `load_balancing_weight` (at least 1 when given, as Envoy validates it; 0 when not) and
/// its `locality` name.
fn locality(group: &LocalityLbEndpoints, i: usize, path: &str) -> Result<Locality> {
    let weight = match group.load_balancing_weight {
        None => 0,
        Some(w) if w.value >= 1 => w.value,
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "load_balancing_weight"),
                "must be at least 1 (as in Envoy)",
            ))
        }
    };
    let name = group.locality.as_ref().map(|l| {
        Arc::new(LocalityName {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        })
    });
    Ok(Locality {
        group: u32::try_from(i).unwrap_or(u32::MAX),
        weight,
        name,
    })
}

/// The `endpoint` of an `LbEndpoint` (required).
fn endpoint<'a>(
    lbe: &'a LbEndpoint,
    path: &str,
) -> Result<&'a envoy_types::pb::envoy::config::endpoint::v3::Endpoint> {
    match &lbe.host_identifier {
        Some(HostIdentifier::Endpoint(ep)) => Ok(ep),
        _ => Err(ConfigError::invalid(field(path, "endpoint"), "required")),
    }
}

/// `metadata.typed_filter_metadata["switchyard.hbone"]`: the node proxy this endpoint is
/// reached through (an IP address and a non-zero port). Any other key is refused: no
/// Switchyard filter reads endpoint metadata.
fn hbone_tunnel(lbe: &LbEndpoint, path: &str) -> Result<Option<SocketAddr>> {
    let Some(metadata) = &lbe.metadata else {
        return Ok(None);
    };
    let mut tunnel = None;
    // In key order, so that of several refused keys the same one is named every time.
    let mut entries: Vec<_> = metadata.typed_filter_metadata.iter().collect();
    entries.sort_by_key(|(key, _)| *key);
    for (key, any) in entries {
        let kpath = typed_metadata_path(path, key);
        if key != HBONE_TUNNEL_KEY {
            return Err(ConfigError::unsupported(
                kpath,
                format!("not supported by Switchyard (an endpoint's typed metadata is only '{HBONE_TUNNEL_KEY}', its HBONE tunnel)"),
            ));
        }
        let t: HboneTunnel = decode_any(any, HBONE_TUNNEL, &kpath)?;
        let ip = t.address.parse::<IpAddr>().map_err(|_| {
            ConfigError::invalid(
                field(&kpath, "address"),
                format!("'{}' is not an IP address", t.address),
            )
        })?;
        let port = match u16::try_from(t.port_value) {
            Ok(p) if p != 0 => p,
            _ => {
                return Err(ConfigError::invalid(
                    field(&kpath, "port_value"),
                    "required: 1 to 65535 (Istio's HBONE port is 15008)",
                ))
            }
        };
        tunnel = Some(SocketAddr::new(ip, port));
    }
    Ok(tunnel)
}

/// The path of an endpoint's `metadata.typed_filter_metadata[key]`.
fn typed_metadata_path(endpoint_path: &str, key: &str) -> String {
    field(
        &field(&field(endpoint_path, "metadata"), "typed_filter_metadata"),
        key,
    )
}

/// The path of the first endpoint of `la` (at `lpath`) with an HBONE tunnel in its
/// metadata, if one has.
pub(super) fn first_tunnel_path(la: &ClusterLoadAssignment, lpath: &str) -> Result<Option<String>> {
    let mut found = None;
    for_each_endpoint(la, lpath, |lbe, _, _, p| {
        let tunnelled = lbe
            .metadata
            .as_ref()
            .is_some_and(|m| m.typed_filter_metadata.contains_key(HBONE_TUNNEL_KEY));
        if tunnelled && found.is_none() {
            found = Some(typed_metadata_path(p, HBONE_TUNNEL_KEY));
        }
        Ok(())
    })?;
    Ok(found)
}

/// `load_balancing_weight`: at least 1, 1 when not given.
fn weight(lbe: &LbEndpoint, path: &str) -> Result<u32> {
    match lbe.load_balancing_weight {
        None => Ok(1),
        Some(w) if w.value >= 1 => Ok(w.value),
        Some(_) => Err(ConfigError::invalid(
            field(path, "load_balancing_weight"),
            "must be at least 1 (as in Envoy)",
        )),
    }
}

/// A name a resolver can be asked for: an IP literal, or a host name (labels of letters,
/// digits, `-` and `_`, 1 to 63 bytes each, at most 253 bytes without a final dot).
fn check_host_name(name: &str, path: &str) -> Result<()> {
    if name.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    let valid = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            path,
            format!("'{name}' is not a host name or an IP address"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check_host_name;

    #[test]
    fn host_names() {
        for ok in [
            "backend",
            "backend.example",
            "a-b_c.example.",
            "10.0.0.1",
            "::1",
        ] {
            assert!(check_host_name(ok, "p").is_ok(), "{ok}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for bad in ["", ".", "a..b", "a b", "back/end", long.as_str()] {
            assert!(check_host_name(bad, "p").is_err(), "{bad:?}");
        }
    }
}
