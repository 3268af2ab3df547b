//! A `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS resource) to the
//! RIB's endpoints: IP addresses with non-zero ports and weights, sorted by priority.

use super::address::any_socket_address;
use super::Result;
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::EndpointConfig;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

/// The endpoints of a `ClusterLoadAssignment` (a cluster's `load_assignment`, or an EDS
/// resource), sorted by priority; every endpoint an IP address with a non-zero port.
pub(super) fn load_assignment(
    la: &ClusterLoadAssignment,
    lpath: &str,
) -> Result<Vec<EndpointConfig>> {
    if la.cluster_name.is_empty() {
        return Err(ConfigError::invalid(
            field(lpath, "cluster_name"),
            "required (non-empty)",
        ));
    }
    let mut endpoints = Vec::new();
    let epath = field(lpath, "endpoints");
    for (i, locality) in la.endpoints.iter().enumerate() {
        let locpath = index(&epath, i);
        let lbpath = field(&locpath, "lb_endpoints");
        for (j, lbe) in locality.lb_endpoints.iter().enumerate() {
            let p = index(&lbpath, j);
            let Some(HostIdentifier::Endpoint(ep)) = &lbe.host_identifier else {
                return Err(ConfigError::invalid(field(&p, "endpoint"), "required"));
            };
            // Either protocol, as Envoy takes it: the tcp_proxy connects to the address and
            // the udp_proxy sends to it.
            let (_, address) = any_socket_address(
                ep.address.as_ref(),
                &field(&field(&p, "endpoint"), "address"),
            )?;
            let weight = match lbe.load_balancing_weight {
                None => 1,
                Some(w) if w.value >= 1 => w.value,
                Some(_) => {
                    return Err(ConfigError::invalid(
                        field(&p, "load_balancing_weight"),
                        "must be at least 1 (as in Envoy)",
                    ))
                }
            };
            endpoints.push(EndpointConfig {
                address,
                weight,
                priority: locality.priority,
            });
        }
    }
    // Priority levels in order (a stable sort keeps config order within a level, which
    // the hashing policies' tables depend on).
    endpoints.sort_by_key(|e| e.priority);
    Ok(endpoints)
}
