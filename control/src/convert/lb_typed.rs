//! A cluster's typed `load_balancing_policy`: the list of `typed_extension_config`s from
//! which Envoy takes the first it has a factory for. Switchyard maps the five policies it has
//! balancers for (round robin, least request, random, ring hash, Maglev) onto the same
//! settings as `lb_policy` and its `*_lb_config`; the walker refuses any other `@type` and any
//! field of theirs Switchyard does not implement (slow start, zone-aware routing, active
//! request bias, consistent hashing options), each by its path.
//!
//! With `load_balancing_policy` set Envoy uses it and ignores `lb_policy` and the legacy
//! `*_lb_config` (`ClusterInfoImpl`'s constructor in Envoy's
//! `source/common/upstream/upstream_impl.cc`: "If load_balancing_policy is set we will use it
//! directly, ignoring lb_policy"). Switchyard follows: the typed policy wins. What Envoy would
//! silently ignore is refused rather than accepted for nothing: an `lb_policy` naming another
//! balancer than the one used (its default, ROUND_ROBIN, cannot be told from "not set", and
//! LOAD_BALANCING_POLICY_CONFIG says "use the typed policy") and a legacy `*_lb_config`.

use super::lb::{maglev_size, ring_sizes, HashingConfig, LbSettings};
use super::{decode_any, type_name, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::type_names::{
    LEAST_REQUEST_POLICY, MAGLEV_POLICY, RANDOM_POLICY, RING_HASH_POLICY, ROUND_ROBIN_POLICY,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier as CommonLocality;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy as PbLbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::locality_lb_config::LocalityConfigSpecifier;
use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::LocalityLbConfig;
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::extensions::load_balancing_policies::maglev::v3::Maglev;
use envoy_types::pb::envoy::extensions::load_balancing_policies::random::v3::Random;
use envoy_types::pb::envoy::extensions::load_balancing_policies::ring_hash::v3::ring_hash::HashFunction;
use envoy_types::pb::envoy::extensions::load_balancing_policies::ring_hash::v3::RingHash;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use switchyard_dataplane::fib::RingHashFunction;

/// The settings of the policy Envoy would use: the first entry of `policies` that has a
/// `typed_extension_config` (Envoy skips an empty one, finding no factory for it). `legacy` is
/// the cluster's `lb_policy`.
pub(super) fn settings(
    c: &Cluster,
    legacy: PbLbPolicy,
    typed: &LoadBalancingPolicy,
    path: &str,
) -> Result<LbSettings> {
    let tpath = field(path, "load_balancing_policy");
    if matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32
    ) {
        return Err(ConfigError::unsupported(
            tpath,
            "not with type ORIGINAL_DST in Switchyard: such a cluster takes lb_policy \
             CLUSTER_PROVIDED alone",
        ));
    }
    let ppath = field(&tpath, "policies");
    let Some((i, ext)) = typed
        .policies
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.typed_extension_config.as_ref().map(|e| (i, e)))
    else {
        // Envoy: "didn't find a registered load balancer factory implementation".
        return Err(ConfigError::invalid(
            ppath,
            "no policy with a typed_extension_config: Envoy refuses a cluster with no load \
             balancer it can use",
        ));
    };
    let epath = field(&index(&ppath, i), "typed_extension_config");
    if ext.name.is_empty() {
        return Err(ConfigError::invalid(
            field(&epath, "name"),
            "required (non-empty)",
        ));
    }
    let cpath = field(&epath, "typed_config");
    let Some(any) = &ext.typed_config else {
        return Err(ConfigError::invalid(cpath, "required"));
    };
    let settings = match type_name(any) {
        ROUND_ROBIN_POLICY => {
            let rr: RoundRobin = decode_any(any, ROUND_ROBIN_POLICY, &cpath)?;
            per_connection(PbLbPolicy::RoundRobin, None, rr.locality_lb_config, &cpath)?
        }
        LEAST_REQUEST_POLICY => {
            let lr: LeastRequest = decode_any(any, LEAST_REQUEST_POLICY, &cpath)?;
            // Envoy takes any count here; 0 would draw no host at all.
            if lr.choice_count.is_some_and(|n| n.value == 0) {
                return Err(ConfigError::invalid(
                    field(&cpath, "choice_count"),
                    "must be at least 1",
                ));
            }
            per_connection(
                PbLbPolicy::LeastRequest,
                lr.choice_count.map(|n| n.value),
                lr.locality_lb_config,
                &cpath,
            )?
        }
        RANDOM_POLICY => {
            let r: Random = decode_any(any, RANDOM_POLICY, &cpath)?;
            per_connection(PbLbPolicy::Random, None, r.locality_lb_config, &cpath)?
        }
        RING_HASH_POLICY => {
            let r: RingHash = decode_any(any, RING_HASH_POLICY, &cpath)?;
            hashing_locality(r.locality_weighted_lb_config.is_some(), &cpath)?;
            let function = match HashFunction::try_from(r.hash_function) {
                Ok(HashFunction::DefaultHash | HashFunction::XxHash) => RingHashFunction::XxHash,
                Ok(HashFunction::MurmurHash2) => RingHashFunction::MurmurHash2,
                Err(_) => {
                    return Err(ConfigError::invalid(
                        field(&cpath, "hash_function"),
                        format!("unknown hash function {}", r.hash_function),
                    ))
                }
            };
            let (min, max) = ring_sizes(
                r.minimum_ring_size.map(|v| v.value),
                r.maximum_ring_size.map(|v| v.value),
                &cpath,
            )?;
            hashed(
                PbLbPolicy::RingHash,
                HashingConfig {
                    ring: Some((min, max, function)),
                    maglev_table_size: None,
                },
            )
        }
        MAGLEV_POLICY => {
            let m: Maglev = decode_any(any, MAGLEV_POLICY, &cpath)?;
            hashing_locality(m.locality_weighted_lb_config.is_some(), &cpath)?;
            let size = maglev_size(m.table_size.map(|v| v.value), &cpath)?;
            hashed(
                PbLbPolicy::Maglev,
                HashingConfig {
                    ring: None,
                    maglev_table_size: Some(size),
                },
            )
        }
        other => {
            // The walker lets no other type through.
            return Err(ConfigError::unsupported(
                cpath,
                format!("load balancing policy '{other}' is not supported by Switchyard"),
            ));
        }
    };
    ignored_by_envoy(c, legacy, settings.policy, path)?;
    Ok(settings)
}

/// What Envoy ignores beside `load_balancing_policy`, refused; and what it refuses beside it
/// (the locality and hashing parts of `common_lb_config`).
fn ignored_by_envoy(c: &Cluster, legacy: PbLbPolicy, used: PbLbPolicy, path: &str) -> Result<()> {
    if !matches!(
        legacy,
        PbLbPolicy::RoundRobin | PbLbPolicy::LoadBalancingPolicyConfig
    ) && legacy != used
    {
        return Err(ConfigError::invalid(
            field(path, "lb_policy"),
            format!(
                "Envoy ignores {} when load_balancing_policy is set (it uses {}): remove it, \
                 or give the same policy in both",
                legacy.as_str_name(),
                used.as_str_name()
            ),
        ));
    }
    if let Some(config) = &c.lb_config {
        let name = match config {
            LbConfig::RingHashLbConfig(_) => "ring_hash_lb_config",
            LbConfig::MaglevLbConfig(_) => "maglev_lb_config",
            LbConfig::LeastRequestLbConfig(_) => "least_request_lb_config",
            LbConfig::OriginalDstLbConfig(_) => "original_dst_lb_config",
            _ => "lb_config",
        };
        return Err(ConfigError::invalid(
            field(path, name),
            "Envoy ignores this when load_balancing_policy is set: give the settings in the \
             policy's typed_config",
        ));
    }
    if c.common_lb_config.as_ref().is_some_and(|common| {
        matches!(
            common.locality_config_specifier,
            Some(CommonLocality::LocalityWeightedLbConfig(_))
        )
    }) {
        // Envoy: "load_balancing_policy cannot be combined with partial fields
        // (zone_aware_lb_config, locality_weighted_lb_config, ...) of common_lb_config".
        return Err(ConfigError::invalid(
            field(
                &field(path, "common_lb_config"),
                "locality_weighted_lb_config",
            ),
            "not with load_balancing_policy (Envoy refuses the two together): give \
             locality_lb_config.locality_weighted_lb_config in the policy's typed_config",
        ));
    }
    Ok(())
}

/// A policy that picks per connection, with its `locality_lb_config` (locality weights;
/// zone-aware routing is refused by the walker).
fn per_connection(
    policy: PbLbPolicy,
    choice_count: Option<u32>,
    locality: Option<LocalityLbConfig>,
    path: &str,
) -> Result<LbSettings> {
    let locality_weighted = match locality.and_then(|l| l.locality_config_specifier) {
        None => false,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => true,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            return Err(ConfigError::unsupported(
                field(&field(path, "locality_lb_config"), "zone_aware_lb_config"),
                "not supported by Switchyard",
            ))
        }
    };
    Ok(LbSettings {
        policy,
        hashing: HashingConfig::default(),
        choice_count,
        locality_weighted,
    })
}

fn hashed(policy: PbLbPolicy, hashing: HashingConfig) -> LbSettings {
    LbSettings {
        policy,
        hashing,
        choice_count: None,
        locality_weighted: false,
    }
}

/// A hashing policy's `locality_weighted_lb_config`: refused, as with `common_lb_config`.
fn hashing_locality(weighted: bool, path: &str) -> Result<()> {
    if weighted {
        return Err(ConfigError::unsupported(
            field(path, "locality_weighted_lb_config"),
            "not with ring hash or Maglev in Switchyard (their tables do not weigh \
             localities); use round robin, least request or random",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::error::ErrorKind;
    use crate::load::parse_yaml_rib;
    use crate::rib::Rib;
    use switchyard_dataplane::fib::{LbPolicy, RingHashFunction};

    /// A static cluster `c` with `extra` (YAML at the cluster's indent) added.
    fn cluster(extra: &str) -> String {
        format!(
            "static_resources:
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9000}}}}}}
{extra}"
        )
    }

    /// `load_balancing_policy` with one policy of `@type` suffix `ty` and `fields`.
    fn typed(ty: &str, fields: &str) -> String {
        cluster(&format!(
            "    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: p
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.load_balancing_policies.{ty}
{fields}"
        ))
    }

    fn rib(yaml: &str) -> Rib {
        parse_yaml_rib(yaml).unwrap_or_else(|e| panic!("{e}")).0
    }

    fn policy(yaml: &str) -> LbPolicy {
        rib(yaml).clusters[0].lb_policy
    }

    fn refused(yaml: &str) -> (String, ErrorKind, String) {
        let err = parse_yaml_rib(yaml).expect_err("refused");
        (
            err.path().to_string(),
            err.kind(),
            err.message().to_string(),
        )
    }

    #[test]
    fn each_typed_policy_maps_onto_its_balancer() {
        assert_eq!(
            policy(&typed("round_robin.v3.RoundRobin", "")),
            LbPolicy::RoundRobin
        );
        assert_eq!(policy(&typed("random.v3.Random", "")), LbPolicy::Random);
        assert_eq!(
            policy(&typed(
                "least_request.v3.LeastRequest",
                "            choice_count: 3\n"
            )),
            LbPolicy::LeastRequest { choice_count: 3 }
        );
        assert_eq!(
            policy(&typed("least_request.v3.LeastRequest", "")),
            LbPolicy::LeastRequest { choice_count: 2 }
        );
        assert_eq!(
            policy(&typed(
                "ring_hash.v3.RingHash",
                "            minimum_ring_size: 64\n            maximum_ring_size: 128\n            hash_function: MURMUR_HASH_2\n"
            )),
            LbPolicy::RingHash {
                min_ring_size: 64,
                max_ring_size: 128,
                hash_function: RingHashFunction::MurmurHash2
            }
        );
        assert_eq!(
            policy(&typed("maglev.v3.Maglev", "            table_size: 307\n")),
            LbPolicy::Maglev { table_size: 307 }
        );
    }

    #[test]
    fn typed_locality_weights_use_the_locality_weighted_mode() {
        let yaml = typed(
            "round_robin.v3.RoundRobin",
            "            locality_lb_config: {locality_weighted_lb_config: {}}\n",
        );
        assert!(rib(&yaml).clusters[0].health.locality_weighted);
        let plain = typed("round_robin.v3.RoundRobin", "");
        assert!(!rib(&plain).clusters[0].health.locality_weighted);
    }

    #[test]
    fn the_first_policy_with_an_extension_is_used() {
        let yaml = cluster(
            "    load_balancing_policy:
      policies:
      - {}
      - typed_extension_config:
          name: lr
          typed_config: {'@type': type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest}
      - typed_extension_config:
          name: rr
          typed_config: {'@type': type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin}
",
        );
        assert_eq!(policy(&yaml), LbPolicy::LeastRequest { choice_count: 2 });
    }

    #[test]
    fn load_balancing_policy_wins_over_a_default_or_agreeing_lb_policy() {
        let lr = "    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: lr
          typed_config: {'@type': type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest}
";
        for legacy in [
            "ROUND_ROBIN",
            "LEAST_REQUEST",
            "LOAD_BALANCING_POLICY_CONFIG",
        ] {
            let yaml = cluster(&format!("    lb_policy: {legacy}\n{lr}"));
            assert_eq!(policy(&yaml), LbPolicy::LeastRequest { choice_count: 2 });
        }
        let (path, _, message) = refused(&cluster(&format!("    lb_policy: MAGLEV\n{lr}")));
        assert_eq!(path, "static_resources.clusters[0].lb_policy");
        assert!(message.contains("Envoy ignores MAGLEV"), "{message}");
        let (path, _, _) = refused(&cluster(&format!(
            "    lb_policy: LEAST_REQUEST\n    least_request_lb_config: {{choice_count: 3}}\n{lr}"
        )));
        assert_eq!(path, "static_resources.clusters[0].least_request_lb_config");
        let (path, _, _) = refused(&cluster(&format!(
            "    common_lb_config: {{locality_weighted_lb_config: {{}}}}\n{lr}"
        )));
        assert_eq!(
            path,
            "static_resources.clusters[0].common_lb_config.locality_weighted_lb_config"
        );
    }

    #[test]
    fn what_switchyard_cannot_do_is_refused_by_path() {
        let p = "static_resources.clusters[0].load_balancing_policy.policies";
        let ext = format!("{p}[0].typed_extension_config.typed_config");
        let cases = [
            (
                typed(
                    "round_robin.v3.RoundRobin",
                    "            slow_start_config: {slow_start_window: 1s}\n",
                ),
                format!("{ext}.slow_start_config"),
            ),
            (
                typed(
                    "least_request.v3.LeastRequest",
                    "            active_request_bias: {default_value: 1, runtime_key: k}\n",
                ),
                format!("{ext}.active_request_bias"),
            ),
            (
                typed(
                    "random.v3.Random",
                    "            locality_lb_config: {zone_aware_lb_config: {}}\n",
                ),
                format!("{ext}.locality_lb_config.zone_aware_lb_config"),
            ),
            (
                typed(
                    "maglev.v3.Maglev",
                    "            consistent_hashing_lb_config: {use_hostname_for_hashing: true}\n",
                ),
                format!("{ext}.consistent_hashing_lb_config"),
            ),
            (
                typed(
                    "ring_hash.v3.RingHash",
                    "            locality_weighted_lb_config: {}\n",
                ),
                format!("{ext}.locality_weighted_lb_config"),
            ),
            (
                typed(
                    "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
                    "",
                ),
                ext.clone(),
            ),
            (
                cluster("    load_balancing_policy: {policies: []}\n"),
                p.into(),
            ),
            (cluster("    load_balancing_policy: {}\n"), p.into()),
            (
                typed("maglev.v3.Maglev", "            table_size: 100\n"),
                format!("{ext}.table_size"),
            ),
            (
                typed(
                    "ring_hash.v3.RingHash",
                    "            minimum_ring_size: 100\n            maximum_ring_size: 10\n",
                ),
                format!("{ext}.minimum_ring_size"),
            ),
            (
                typed(
                    "least_request.v3.LeastRequest",
                    "            choice_count: 0\n",
                ),
                format!("{ext}.choice_count"),
            ),
            (
                cluster("    lb_policy: LOAD_BALANCING_POLICY_CONFIG\n"),
                "static_resources.clusters[0].lb_policy".into(),
            ),
        ];
        for (yaml, want) in cases {
            let (path, _, message) = refused(&yaml);
            assert_eq!(path, want, "{message}\n{yaml}");
        }
    }

    #[test]
    fn an_original_dst_cluster_takes_no_typed_policy() {
        let yaml = "static_resources:
  clusters:
  - name: c
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    load_balancing_policy:
      policies:
      - typed_extension_config:
          name: rr
          typed_config: {'@type': type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin}
";
        let (path, kind, _) = refused(yaml);
        assert_eq!(path, "static_resources.clusters[0].load_balancing_policy");
        assert_eq!(kind, ErrorKind::Unsupported);
    }
}
