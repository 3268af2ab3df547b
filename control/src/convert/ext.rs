//! Switchyard's own network filters (`proto/switchyard/...`) to the RIB.

use super::{duration, Result};
use crate::config::ext::fault::Fault as PbFault;
use crate::config::{field, ConfigError};
use crate::rib::{millis_ceil, FaultConfig};
use switchyard_dataplane::fib::{FaultAbort, FaultDelay, FaultThrottle};

/// `switchyard.filters.network.fault.v1.Fault`.
pub(super) fn fault_config(f: &PbFault, path: &str) -> Result<FaultConfig> {
    if f.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    let delay = match &f.delay {
        Some(d) => {
            let dpath = field(path, "delay");
            let fpath = field(&dpath, "fixed_delay");
            let delay_ms = match &d.fixed_delay {
                Some(fd) => millis_ceil(duration(fd, &fpath)?),
                None => return Err(ConfigError::invalid(fpath, "required")),
            };
            if delay_ms == 0 {
                return Err(ConfigError::invalid(fpath, "must be greater than 0"));
            }
            Some(FaultDelay {
                delay_ms,
                per_million: per_million(d.percent, &field(&dpath, "percent"))?,
            })
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => Some(FaultAbort {
            after_bytes: a.after_bytes,
            per_million: per_million(a.percent, &field(&field(path, "abort"), "percent"))?,
        }),
        None => None,
    };
    let throttle = match &f.throttle {
        Some(t) => {
            let tpath = field(path, "throttle");
            if t.upstream_bytes_per_second == 0 && t.downstream_bytes_per_second == 0 {
                return Err(ConfigError::invalid(
                    tpath,
                    "set upstream_bytes_per_second, downstream_bytes_per_second or both",
                ));
            }
            Some(FaultThrottle {
                bytes_per_second: [t.upstream_bytes_per_second, t.downstream_bytes_per_second],
                per_million: per_million(t.percent, &field(&tpath, "percent"))?,
            })
        }
        None => None,
    };
    if delay.is_none() && abort.is_none() && throttle.is_none() {
        return Err(ConfigError::invalid(
            path,
            "a fault filter needs delay, abort or throttle",
        ));
    }
    Ok(FaultConfig {
        stat_prefix: f.stat_prefix.clone(),
        delay,
        abort,
        throttle,
    })
}

/// A percentage (default 100) as parts per million.
fn per_million(percent: Option<f64>, path: &str) -> Result<u32> {
    let p = percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&p) {
        return Err(ConfigError::invalid(path, "must be between 0 and 100"));
    }
    Ok((p * 10_000.0).round() as u32)
}
