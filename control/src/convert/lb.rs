//! A cluster's load balancing: `lb_policy` and its `*_lb_config`, with Envoy's defaults and
//! limits (ring sizes, Maglev's prime table size, `choice_count`); a config for a policy the
//! cluster does not use is refused, not ignored. The typed `load_balancing_policy` comes to
//! the same settings through `lb_typed`.

use super::Result;
use crate::error::ConfigError;
use crate::path::field;
use crate::rib::DEFAULT_CHOICE_COUNT;
use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction as PbHashFunction;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy as PbLbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use switchyard_dataplane::fib::{LbPolicy, RingHashFunction};
use switchyard_dataplane::hash_lb::{is_prime, MaglevTable, RingHash};

/// The `lb_policy` values Switchyard implements.
const SUPPORTED_LB: &str =
    "ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV, CLUSTER_PROVIDED for ORIGINAL_DST";

/// A cluster's `lb_policy` and what its `lb_config` sets, before the policy is checked
/// against the cluster's type and against what Switchyard implements.
pub(super) struct LbSettings {
    pub(super) policy: PbLbPolicy,
    pub(super) hashing: HashingConfig,
    /// `least_request_lb_config.choice_count`.
    pub(super) choice_count: Option<u32>,
    /// A typed policy's locality weights (`locality_lb_config.locality_weighted_lb_config`);
    /// the legacy form's are in `common_lb_config`, read by `health`.
    pub(super) locality_weighted: bool,
}

/// Reads `load_balancing_policy` when given (Envoy then uses it and not `lb_policy`), else
/// `lb_policy` and `lb_config`; a config for another policy than the cluster's is refused.
pub(super) fn settings(c: &Cluster, path: &str) -> Result<LbSettings> {
    let policy = PbLbPolicy::try_from(c.lb_policy).map_err(|_| {
        ConfigError::invalid(
            field(path, "lb_policy"),
            format!("unknown policy {}", c.lb_policy),
        )
    })?;
    if let Some(typed) = &c.load_balancing_policy {
        return super::lb_typed::settings(c, policy, typed, path);
    }
    if policy == PbLbPolicy::LoadBalancingPolicyConfig {
        // Envoy: "field load_balancing_policy need to be set".
        return Err(ConfigError::invalid(
            field(path, "lb_policy"),
            "LOAD_BALANCING_POLICY_CONFIG needs load_balancing_policy",
        ));
    }
    let mut hashing = HashingConfig::default();
    let choice_count = match &c.lb_config {
        None => None,
        Some(LbConfig::RingHashLbConfig(r)) => {
            hashing.ring = Some(ring_hash_config(
                r,
                policy,
                &field(path, "ring_hash_lb_config"),
            )?);
            None
        }
        Some(LbConfig::MaglevLbConfig(m)) => {
            hashing.maglev_table_size = Some(maglev_table_size(
                m,
                policy,
                &field(path, "maglev_lb_config"),
            )?);
            None
        }
        Some(LbConfig::LeastRequestLbConfig(lr)) => {
            least_request_choice_count(lr, policy, &field(path, "least_request_lb_config"))?
        }
        // ORIGINAL_DST's own (`hbone::original_dst_authority` checked it): no balancer
        // setting.
        Some(LbConfig::OriginalDstLbConfig(_)) => None,
        Some(_) => {
            return Err(ConfigError::unsupported(
                path,
                "this lb_config is not supported by Switchyard",
            ))
        }
    };
    Ok(LbSettings {
        policy,
        hashing,
        choice_count,
        locality_weighted: false,
    })
}

/// `least_request_lb_config.choice_count`: at least 2.
fn least_request_choice_count(
    lr: &LeastRequestLbConfig,
    policy: PbLbPolicy,
    p: &str,
) -> Result<Option<u32>> {
    if policy != PbLbPolicy::LeastRequest {
        return Err(ConfigError::invalid(
            p,
            "only valid with lb_policy LEAST_REQUEST",
        ));
    }
    match lr.choice_count {
        Some(n) if n.value < 2 => Err(ConfigError::invalid(
            field(p, "choice_count"),
            "must be at least 2",
        )),
        n => Ok(n.map(|n| n.value)),
    }
}

/// The FIB's policy, with Envoy's defaults for what `lb_config` left out.
pub(super) fn lb_policy(s: LbSettings, path: &str) -> Result<LbPolicy> {
    Ok(match s.policy {
        PbLbPolicy::ClusterProvided => LbPolicy::ClusterProvided,
        PbLbPolicy::RingHash => {
            let (min_ring_size, max_ring_size, hash_function) = s.hashing.ring.unwrap_or((
                RingHash::DEFAULT_MIN_RING_SIZE,
                RingHash::DEFAULT_MAX_RING_SIZE,
                RingHashFunction::XxHash,
            ));
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
                hash_function,
            }
        }
        PbLbPolicy::Maglev => LbPolicy::Maglev {
            table_size: s
                .hashing
                .maglev_table_size
                .unwrap_or(MaglevTable::DEFAULT_TABLE_SIZE),
        },
        PbLbPolicy::RoundRobin => LbPolicy::RoundRobin,
        PbLbPolicy::Random => LbPolicy::Random,
        PbLbPolicy::LeastRequest => LbPolicy::LeastRequest {
            choice_count: s.choice_count.unwrap_or(DEFAULT_CHOICE_COUNT),
        },
        other => {
            let name = other.as_str_name();
            return Err(ConfigError::unsupported(
                field(path, "lb_policy"),
                format!("{name} is not supported by Switchyard (supported: {SUPPORTED_LB})"),
            ));
        }
    })
}

/// A hashing policy's `lb_config`, when given.
#[derive(Default)]
pub(super) struct HashingConfig {
    /// `ring_hash_lb_config`: minimum and maximum ring size, hash function.
    pub(super) ring: Option<(u64, u64, RingHashFunction)>,
    /// `maglev_lb_config.table_size`.
    pub(super) maglev_table_size: Option<u64>,
}

/// Envoy's largest ring (`maximum_ring_size` may not exceed it).
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

fn ring_hash_config(
    r: &RingHashLbConfig,
    policy: PbLbPolicy,
    path: &str,
) -> Result<(u64, u64, RingHashFunction)> {
    if policy != PbLbPolicy::RingHash {
        return Err(ConfigError::invalid(
            path,
            "only valid with lb_policy RING_HASH",
        ));
    }
    let function = match PbHashFunction::try_from(r.hash_function) {
        Ok(PbHashFunction::XxHash) => RingHashFunction::XxHash,
        Ok(PbHashFunction::MurmurHash2) => RingHashFunction::MurmurHash2,
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "hash_function"),
                format!("unknown hash function {}", r.hash_function),
            ))
        }
    };
    let (min, max) = ring_sizes(
        r.minimum_ring_size.map(|v| v.value),
        r.maximum_ring_size.map(|v| v.value),
        path,
    )?;
    Ok((min, max, function))
}

/// `minimum_ring_size` and `maximum_ring_size` with Envoy's defaults and limits (the legacy
/// and the typed ring hash alike).
pub(super) fn ring_sizes(min: Option<u64>, max: Option<u64>, path: &str) -> Result<(u64, u64)> {
    let min = min.unwrap_or(RingHash::DEFAULT_MIN_RING_SIZE);
    let max = max.unwrap_or(RingHash::DEFAULT_MAX_RING_SIZE);
    for (name, value) in [("minimum_ring_size", min), ("maximum_ring_size", max)] {
        if value > MAX_RING_SIZE {
            return Err(ConfigError::invalid(
                field(path, name),
                format!("{value} is above Envoy's limit of {MAX_RING_SIZE}"),
            ));
        }
    }
    if min > max {
        return Err(ConfigError::invalid(
            field(path, "minimum_ring_size"),
            format!("{min} is greater than maximum_ring_size {max}"),
        ));
    }
    Ok((min, max))
}

/// Envoy's largest Maglev table.
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

fn maglev_table_size(m: &MaglevLbConfig, policy: PbLbPolicy, path: &str) -> Result<u64> {
    if policy != PbLbPolicy::Maglev {
        return Err(ConfigError::invalid(
            path,
            "only valid with lb_policy MAGLEV",
        ));
    }
    maglev_size(m.table_size.map(|v| v.value), path)
}

/// `table_size` with Envoy's default and limits (the legacy and the typed Maglev alike).
pub(super) fn maglev_size(size: Option<u64>, path: &str) -> Result<u64> {
    let size = size.unwrap_or(MaglevTable::DEFAULT_TABLE_SIZE);
    if size > MAX_MAGLEV_TABLE_SIZE || !is_prime(size) {
        return Err(ConfigError::invalid(
            field(path, "table_size"),
            format!("{size} must be a prime number no greater than {MAX_MAGLEV_TABLE_SIZE}"),
        ));
    }
    Ok(size)
}
