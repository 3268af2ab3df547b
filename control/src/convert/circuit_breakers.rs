//! A cluster's `circuit_breakers`: the DEFAULT priority's thresholds (HIGH is refused, as
//! Switchyard routes no HIGH priority traffic).

use super::Result;
use crate::error::ConfigError;
use crate::path::{field, index};
use envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers as PbCircuitBreakers;
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use switchyard_dataplane::fib::CircuitBreakers;

/// `circuit_breakers.thresholds`: one entry per priority; Switchyard routes at priority
/// DEFAULT only, so a HIGH entry is refused rather than ignored. `max_requests` and
/// `max_retries` are accepted (Istio always sets them) and, as in Envoy's tcp_proxy, limit
/// nothing at L4: a TCP connection makes no requests and no retries through the pool.
pub(super) fn circuit_breakers(cb: &PbCircuitBreakers, path: &str) -> Result<CircuitBreakers> {
    let mut out = CircuitBreakers::default();
    let tpath = field(path, "thresholds");
    for (i, t) in cb.thresholds.iter().enumerate() {
        let p = index(&tpath, i);
        if t.priority != RoutingPriority::Default as i32 {
            return Err(ConfigError::unsupported(
                field(&p, "priority"),
                "only DEFAULT is supported by Switchyard (it routes no HIGH priority traffic)",
            ));
        }
        if let Some(v) = t.max_connections {
            out.max_connections = v.value;
        }
        if let Some(v) = t.max_pending_requests {
            out.max_pending_requests = v.value;
        }
        if let Some(v) = t.max_requests {
            out.max_requests = v.value;
        }
        if let Some(v) = t.max_retries {
            out.max_retries = v.value;
        }
        out.track_remaining = t.track_remaining;
    }
    Ok(out)
}
