//! Switchyard's own extensions (`proto/switchyard/...`) to the RIB: network filters, and the
//! UDP proxy's weighted route.

use super::{duration, Result};
use crate::error::ConfigError;
use crate::ext::fault::Fault as PbFault;
use crate::ext::mirror::Mirror as PbMirror;
use crate::ext::udp_route::WeightedRoute as PbWeightedRoute;
use crate::path::{field, index};
use crate::rib::{
    millis_ceil, FaultConfig, MirrorConfig, RouteConfig, SourceLimitConfig, WeightedClusterConfig,
};
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

/// Default `max_buffered_bytes`: 1 MiB.
const DEFAULT_MIRROR_BUFFER: u32 = 1024 * 1024;

/// `switchyard.filters.network.mirror.v1.Mirror`. The shadow cluster is looked up when the
/// FIB is compiled: a missing one is warned about there (like a missing tcp_proxy cluster)
/// and mirrors nothing (`connections_failed`).
pub(super) fn mirror_config(m: &PbMirror, path: &str) -> Result<MirrorConfig> {
    for (name, value) in [("stat_prefix", &m.stat_prefix), ("cluster", &m.cluster)] {
        if value.is_empty() {
            return Err(ConfigError::invalid(
                field(path, name),
                "required (non-empty)",
            ));
        }
    }
    let max_buffered_bytes = m.max_buffered_bytes.unwrap_or(DEFAULT_MIRROR_BUFFER);
    if max_buffered_bytes == 0 {
        return Err(ConfigError::invalid(
            field(path, "max_buffered_bytes"),
            "must be greater than 0",
        ));
    }
    Ok(MirrorConfig {
        stat_prefix: m.stat_prefix.clone(),
        cluster: m.cluster.clone(),
        per_million: per_million(m.percent, &field(path, "percent"))?,
        max_buffered_bytes,
    })
}

/// `switchyard.filters.udp.udp_proxy.v1.WeightedRoute`: at least one cluster, every name
/// non-empty, the weights adding up to more than 0. Entries of weight 0 are left out of the
/// route (no session can pick them); a cluster that does not exist is kept, as with the
/// tcp_proxy's weighted clusters (`downstream_sess_no_route` when picked).
pub(super) fn udp_weighted_route(w: &PbWeightedRoute, path: &str) -> Result<RouteConfig> {
    let cpath = field(path, "clusters");
    if w.clusters.is_empty() {
        return Err(ConfigError::invalid(
            cpath,
            "at least one cluster is required",
        ));
    }
    for (i, c) in w.clusters.iter().enumerate() {
        if c.name.is_empty() {
            return Err(ConfigError::invalid(
                field(&index(&cpath, i), "name"),
                "required (non-empty)",
            ));
        }
    }
    let entries: Vec<WeightedClusterConfig> = w
        .clusters
        .iter()
        .filter(|c| c.weight > 0)
        .map(|c| WeightedClusterConfig {
            name: c.name.clone(),
            weight: c.weight,
        })
        .collect();
    if entries.is_empty() {
        return Err(ConfigError::invalid(
            cpath,
            "the total weight must be greater than 0",
        ));
    }
    Ok(RouteConfig::Weighted(entries))
}

/// A percentage (default 100) as parts per million.
fn per_million(percent: Option<f64>, path: &str) -> Result<u32> {
    let p = percent.unwrap_or(100.0);
    if !(0.0..=100.0).contains(&p) {
        return Err(ConfigError::invalid(path, "must be between 0 and 100"));
    }
    Ok((p * 10_000.0).round() as u32)
}

/// `switchyard.filters.network.source_limit.v1.SourceLimit`: a non-empty `stat_prefix`,
/// prefix lengths of 1 to 32 and 1 to 128, at least one limit, a bucket as Envoy's local rate
/// limit takes it (`max_tokens` of 1 to 16,777,215, `tokens_per_fill` above 0, a
/// `fill_interval` of at least 50 ms), a cap of at least 1, a table of 8 to 4,194,304 entries.
pub(super) fn source_limit_config(
    l: &crate::ext::source_limit::SourceLimit,
    path: &str,
) -> Result<SourceLimitConfig> {
    use switchyard_dataplane::source_limit as sl;
    if l.stat_prefix.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "stat_prefix"),
            "required (non-empty)",
        ));
    }
    let prefix_len = |v: Option<u32>, default: u8, max: u32, name: &str| match v {
        None => Ok(default),
        Some(len) if (1..=max).contains(&len) => Ok(len as u8),
        Some(len) => Err(ConfigError::invalid(
            field(path, name),
            format!("{len}: must be 1 to {max}"),
        )),
    };
    let ipv4_prefix_len = prefix_len(l.ipv4_prefix_len, 32, 32, "ipv4_prefix_len")?;
    let ipv6_prefix_len = prefix_len(l.ipv6_prefix_len, 64, 128, "ipv6_prefix_len")?;
    let rate = match &l.connection_rate {
        Some(b) => Some(source_rate(b, &field(path, "connection_rate"))?),
        None => None,
    };
    let max_connections_per_source = match l.max_connections_per_source {
        Some(n) if (1..=sl::MAX_CONNECTIONS_PER_SOURCE).contains(&n) => Some(n),
        Some(n) => {
            return Err(ConfigError::invalid(
                field(path, "max_connections_per_source"),
                format!("{n}: must be 1 to {}", sl::MAX_CONNECTIONS_PER_SOURCE),
            ))
        }
        None => None,
    };
    if rate.is_none() && max_connections_per_source.is_none() {
        return Err(ConfigError::invalid(
            path,
            "connection_rate or max_connections_per_source is required (a filter without a \
             limit would limit nothing)",
        ));
    }
    let table_entries = l.table_entries.unwrap_or(sl::DEFAULT_TABLE_ENTRIES);
    if !(sl::WAYS as u32..=sl::MAX_TABLE_ENTRIES as u32).contains(&table_entries) {
        return Err(ConfigError::invalid(
            field(path, "table_entries"),
            format!(
                "{table_entries}: must be {} to {}",
                sl::WAYS,
                sl::MAX_TABLE_ENTRIES
            ),
        ));
    }
    Ok(SourceLimitConfig {
        stat_prefix: l.stat_prefix.clone(),
        settings: sl::SourceLimitSettings {
            ipv4_prefix_len,
            ipv6_prefix_len,
            rate,
            max_connections_per_source,
            table_entries,
        },
    })
}

/// A source's token bucket.
fn source_rate(
    b: &crate::ext::source_limit::TokenBucket,
    path: &str,
) -> Result<switchyard_dataplane::source_limit::SourceRate> {
    use switchyard_dataplane::source_limit::MAX_TOKENS;
    if !(1..=MAX_TOKENS).contains(&b.max_tokens) {
        return Err(ConfigError::invalid(
            field(path, "max_tokens"),
            format!("{}: must be 1 to {MAX_TOKENS}", b.max_tokens),
        ));
    }
    let tokens_per_fill = b.tokens_per_fill.unwrap_or(1);
    if tokens_per_fill == 0 {
        return Err(ConfigError::invalid(
            field(path, "tokens_per_fill"),
            "must be greater than 0",
        ));
    }
    let interval = super::filter_chain::fill_interval(
        b.fill_interval.as_ref(),
        &field(path, "fill_interval"),
    )?;
    Ok(switchyard_dataplane::source_limit::SourceRate {
        max_tokens: b.max_tokens,
        tokens_per_fill,
        fill_interval_ms: interval.as_millis() as u64,
    })
}
