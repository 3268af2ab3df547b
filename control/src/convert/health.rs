//! A cluster's `health_checks`, `outlier_detection` and `common_lb_config` to the FIB's
//! [`HealthPolicy`], with Envoy's defaults and range checks; errors name the field.

use super::{duration, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::millis_ceil as millis;
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    CommonLbConfig, LbPolicy as PbLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection as PbOutlier};
use envoy_types::pb::envoy::config::core::v3::health_check::{
    payload, HealthChecker, Payload, TcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::HealthCheck as PbHealthCheck;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use std::sync::Arc;
use switchyard_dataplane::fib::{HealthCheck, HealthPolicy, OutlierDetection};

/// Envoy's `no_traffic_interval` default.
const DEFAULT_NO_TRAFFIC_INTERVAL_MS: u64 = 60_000;

/// The cluster's health policy: Envoy's defaults for what is not given.
pub(super) fn health_policy(c: &Cluster, path: &str) -> Result<HealthPolicy> {
    let mut policy = HealthPolicy::default();
    if let Some(common) = &c.common_lb_config {
        let cpath = field(path, "common_lb_config");
        policy.panic_threshold_pct = panic_threshold(common, &cpath)?;
        policy.locality_weighted = locality_weighted(c, common, &cpath)?;
    }
    if let Some(o) = &c.outlier_detection {
        policy.outlier = Some(outlier(o, &field(path, "outlier_detection"))?);
    }
    let hpath = field(path, "health_checks");
    match c.health_checks.as_slice() {
        [] => {}
        [hc] => policy.health_check = Some(Arc::new(health_check(hc, &index(&hpath, 0))?)),
        [_, _, ..] => {
            return Err(ConfigError::unsupported(
                index(&hpath, 1),
                "Switchyard runs one health check per cluster",
            ))
        }
    }
    Ok(policy)
}

/// `locality_weighted_lb_config`: localities picked by weight before hosts, for the
/// policies that pick per connection. The hashing policies would have to fold locality
/// weights into their tables as Envoy does; Switchyard refuses the combination rather than
/// ignore the weights.
fn locality_weighted(c: &Cluster, common: &CommonLbConfig, path: &str) -> Result<bool> {
    if !matches!(
        common.locality_config_specifier,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ) {
        return Ok(false);
    }
    let hashing = [PbLbPolicy::RingHash as i32, PbLbPolicy::Maglev as i32];
    if hashing.contains(&c.lb_policy) {
        return Err(ConfigError::unsupported(
            field(path, "locality_weighted_lb_config"),
            "not with RING_HASH or MAGLEV in Switchyard (their tables do not weigh \
             localities); use ROUND_ROBIN, LEAST_REQUEST or RANDOM",
        ));
    }
    Ok(true)
}

/// `healthy_panic_threshold`: a percentage, truncated to whole percent as Envoy does.
/// `update_merge_window` may only be 0: Switchyard applies every host change at once.
fn panic_threshold(common: &CommonLbConfig, path: &str) -> Result<u32> {
    if let Some(w) = &common.update_merge_window {
        let wpath = field(path, "update_merge_window");
        if !duration(w, &wpath)?.is_zero() {
            return Err(ConfigError::unsupported(
                wpath,
                "Switchyard applies host changes at once: only 0s is accepted",
            ));
        }
    }
    let Some(p) = &common.healthy_panic_threshold else {
        return Ok(HealthPolicy::default().panic_threshold_pct);
    };
    let ppath = field(&field(path, "healthy_panic_threshold"), "value");
    if !(0.0..=100.0).contains(&p.value) {
        return Err(ConfigError::invalid(ppath, "must be between 0 and 100"));
    }
    Ok(p.value as u32)
}

fn outlier(o: &PbOutlier, path: &str) -> Result<OutlierDetection> {
    let d = OutlierDetection::default();
    // Success-rate and failure-percentage ejection are not implemented; Istio writes their
    // `enforcing_*` as 0 to turn them off, which is accepted.
    for (name, value) in [
        ("enforcing_success_rate", &o.enforcing_success_rate),
        (
            "enforcing_local_origin_success_rate",
            &o.enforcing_local_origin_success_rate,
        ),
        (
            "enforcing_failure_percentage",
            &o.enforcing_failure_percentage,
        ),
        (
            "enforcing_failure_percentage_local_origin",
            &o.enforcing_failure_percentage_local_origin,
        ),
    ] {
        if value.is_some_and(|v| v.value != 0) {
            return Err(ConfigError::unsupported(
                field(path, name),
                "success-rate and failure-percentage ejection are not supported by Switchyard (0, which disables them, is accepted)",
            ));
        }
    }
    let base_ejection_time_ms = positive_ms(
        o.base_ejection_time.as_ref(),
        d.base_ejection_time_ms,
        &field(path, "base_ejection_time"),
    )?;
    let max_ejection_time_ms = positive_ms(
        o.max_ejection_time.as_ref(),
        d.max_ejection_time_ms,
        &field(path, "max_ejection_time"),
    )?;
    Ok(OutlierDetection {
        consecutive_5xx: count(o.consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: count(
            o.consecutive_gateway_failure,
            d.consecutive_gateway_failure,
        ),
        consecutive_local_origin_failure: count(
            o.consecutive_local_origin_failure,
            d.consecutive_local_origin_failure,
        ),
        enforcing_consecutive_5xx: percent(
            o.enforcing_consecutive_5xx,
            d.enforcing_consecutive_5xx,
            &field(path, "enforcing_consecutive_5xx"),
        )?,
        enforcing_consecutive_gateway_failure: percent(
            o.enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
            &field(path, "enforcing_consecutive_gateway_failure"),
        )?,
        enforcing_consecutive_local_origin_failure: percent(
            o.enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
            &field(path, "enforcing_consecutive_local_origin_failure"),
        )?,
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        interval_ms: positive_ms(o.interval.as_ref(), d.interval_ms, &field(path, "interval"))?,
        base_ejection_time_ms,
        // Envoy: the default (300 s) or base_ejection_time, whichever is larger.
        max_ejection_time_ms: if o.max_ejection_time.is_some() {
            max_ejection_time_ms
        } else {
            max_ejection_time_ms.max(base_ejection_time_ms)
        },
        max_ejection_percent: percent(
            o.max_ejection_percent,
            d.max_ejection_percent,
            &field(path, "max_ejection_percent"),
        )?,
        always_eject_one_host: o.always_eject_one_host.is_some_and(|b| b.value),
        max_ejection_time_jitter_ms: match &o.max_ejection_time_jitter {
            Some(j) => millis(duration(j, &field(path, "max_ejection_time_jitter"))?),
            None => 0,
        },
        successful_active_health_check_uneject_host: o
            .successful_active_health_check_uneject_host
            .is_none_or(|b| b.value),
    })
}

fn health_check(hc: &PbHealthCheck, path: &str) -> Result<HealthCheck> {
    let required = |d: Option<&PbDuration>, name: &str| -> Result<u64> {
        let p = field(path, name);
        match d {
            None => Err(ConfigError::invalid(p, "required")),
            Some(d) => {
                let ms = millis(duration(d, &p)?);
                if ms == 0 {
                    Err(ConfigError::invalid(p, "must be greater than 0"))
                } else {
                    Ok(ms)
                }
            }
        }
    };
    let timeout_ms = required(hc.timeout.as_ref(), "timeout")?;
    let interval_ms = required(hc.interval.as_ref(), "interval")?;
    let threshold = |v: Option<UInt32Value>, name: &str| -> Result<u32> {
        match v {
            None => Err(ConfigError::invalid(field(path, name), "required")),
            Some(v) => Ok(v.value.max(1)),
        }
    };
    let unhealthy_threshold = threshold(hc.unhealthy_threshold, "unhealthy_threshold")?;
    let healthy_threshold = threshold(hc.healthy_threshold, "healthy_threshold")?;
    let optional_ms = |d: Option<&PbDuration>, name: &str| -> Result<Option<u64>> {
        d.map(|d| duration(d, &field(path, name)).map(millis))
            .transpose()
    };
    let tcp = match &hc.health_checker {
        Some(HealthChecker::TcpHealthCheck(t)) => t,
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "only tcp_health_check is supported by Switchyard",
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                field(path, "tcp_health_check"),
                "required (a health check needs a checker)",
            ))
        }
    };
    let (send, receive) = tcp_payloads(tcp, &field(path, "tcp_health_check"))?;
    Ok(HealthCheck {
        timeout_ms,
        interval_ms,
        interval_jitter_ms: optional_ms(hc.interval_jitter.as_ref(), "interval_jitter")?
            .unwrap_or(0),
        initial_jitter_ms: optional_ms(hc.initial_jitter.as_ref(), "initial_jitter")?.unwrap_or(0),
        unhealthy_interval_ms: match optional_ms(
            hc.unhealthy_interval.as_ref(),
            "unhealthy_interval",
        )? {
            Some(0) | None => interval_ms,
            Some(ms) => ms,
        },
        no_traffic_interval_ms: match optional_ms(
            hc.no_traffic_interval.as_ref(),
            "no_traffic_interval",
        )? {
            Some(0) | None => DEFAULT_NO_TRAFFIC_INTERVAL_MS,
            Some(ms) => ms,
        },
        unhealthy_threshold,
        healthy_threshold,
        send,
        receive,
    })
}

/// `send` and `receive` as bytes: `text` is hex (Envoy's encoding), `binary` raw.
fn tcp_payloads(t: &TcpHealthCheck, path: &str) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let send = match &t.send {
        Some(p) => payload_bytes(p, &field(path, "send"))?,
        None => Vec::new(),
    };
    let rpath = field(path, "receive");
    let receive = t
        .receive
        .iter()
        .enumerate()
        .map(|(i, p)| payload_bytes(p, &index(&rpath, i)))
        .collect::<Result<Vec<_>>>()?;
    Ok((send, receive))
}

fn payload_bytes(p: &Payload, path: &str) -> Result<Vec<u8>> {
    match &p.payload {
        Some(payload::Payload::Binary(b)) => Ok(b.clone()),
        Some(payload::Payload::Text(hex)) => decode_hex(hex).ok_or_else(|| {
            ConfigError::invalid(field(path, "text"), "must be hex, e.g. \"50494E47\"")
        }),
        None => Err(ConfigError::invalid(path, "needs text or binary")),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn count(v: Option<UInt32Value>, default: u32) -> u32 {
    v.map_or(default, |v| v.value)
}

fn percent(v: Option<UInt32Value>, default: u32, path: &str) -> Result<u32> {
    match v {
        Some(v) if v.value > 100 => Err(ConfigError::invalid(path, "must be at most 100")),
        Some(v) => Ok(v.value),
        None => Ok(default),
    }
}

fn positive_ms(d: Option<&PbDuration>, default_ms: u64, path: &str) -> Result<u64> {
    match d {
        None => Ok(default_ms),
        Some(d) => {
            let ms = millis(duration(d, path)?);
            if ms == 0 {
                Err(ConfigError::invalid(path, "must be greater than 0"))
            } else {
                Ok(ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_hex;

    #[test]
    fn hex_payloads_decode_like_envoy() {
        assert_eq!(decode_hex("50494e47").unwrap(), b"PING");
        assert_eq!(decode_hex("000000FF").unwrap(), [0, 0, 0, 255]);
        assert!(decode_hex("5").is_none());
        assert!(decode_hex("zz").is_none());
        assert!(decode_hex("").is_none());
    }
}
