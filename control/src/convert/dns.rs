//! DNS discovery: a STRICT_DNS or LOGICAL_DNS cluster's names and settings
//! ([`dns_cluster`]), and the resolvers, a cluster's own ([`cluster_resolver`]) or the
//! bootstrap's ([`bootstrap_resolver`]). Nothing is resolved here (`switchyard validate`
//! resolves no name); the `dns` thread does that at run time.
//!
//! Envoy's rules:
//! - a LOGICAL_DNS cluster has exactly one locality with one endpoint, whose priority is
//!   taken as 0;
//! - `dns_refresh_rate` and `dns_failure_refresh_rate`'s intervals are more than 1 ms, and
//!   `max_interval` (default 10 x `base_interval`) is at least `base_interval`;
//! - a cluster has a resolver of its own only when it names one: `typed_dns_resolver_config`,
//!   `dns_resolution_config` (with `resolvers`) or `dns_resolvers`; `typed_dns_resolver_config`
//!   wins over the deprecated fields, which Envoy then ignores, so giving both is refused here
//!   (a field that would be accepted and ignored), as is a cluster's `use_tcp_for_dns_lookups`
//!   without `dns_resolvers`;
//! - the DNS fields of a cluster of another type have no effect (Envoy ignores them); they
//!   are checked all the same, and a log line says so.
//!
//! The v3 API marks the cluster-level DNS fields deprecated in favour of the `DnsCluster`
//! extension (`cluster_type`, not supported); Envoy 1.40 still takes them, and the configs
//! people have use them.
#![allow(deprecated)]

use super::address::dns_resolver_address;
use super::endpoints::dns_targets;
use super::{decode_any, duration, type_name, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{
    CaresResolver, DnsCluster, DnsLookupFamily, DnsQuery, DnsResolverConfig, RefreshBackoff,
    DEFAULT_DNS_REFRESH_RATE,
};
use crate::type_names::{CARES_RESOLVER as CARES, GETADDRINFO_RESOLVER as GETADDRINFO};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    DnsLookupFamily as PbFamily, RefreshRate,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    Address, DnsResolutionConfig, DnsResolverOptions, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::envoy::extensions::network::dns_resolver::getaddrinfo::v3::GetAddrInfoDnsResolverConfig;
use std::sync::Arc;
use std::time::Duration;

/// Intervals must be more than this (Envoy's `gt {nanos: 1000000}`).
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The discovery of a STRICT_DNS (`logical` false) or LOGICAL_DNS cluster.
pub(super) fn dns_cluster(c: &Cluster, logical: bool, path: &str) -> Result<DnsCluster> {
    let kind = if logical { "LOGICAL_DNS" } else { "STRICT_DNS" };
    let lpath = field(path, "load_assignment");
    let mut targets = match &c.load_assignment {
        Some(la) => dns_targets(la, &lpath, kind)?,
        None => Vec::new(),
    };
    if logical {
        let single = c
            .load_assignment
            .as_ref()
            .is_some_and(|la| la.endpoints.len() == 1 && la.endpoints[0].lb_endpoints.len() == 1);
        if !single {
            let message = if c.load_assignment.is_some() {
                "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single \
                 lb_endpoint (as in Envoy)"
            } else {
                "LOGICAL_DNS clusters must have a single host (as in Envoy)"
            };
            return Err(ConfigError::invalid(lpath, message));
        }
        // Envoy takes a logical host's priority as 0.
        targets[0].priority = 0;
    }
    let settings = settings(c, path)?;
    Ok(DnsCluster {
        query: Arc::new(DnsQuery {
            logical,
            targets,
            family: settings.family,
        }),
        resolver: cluster_resolver(c, path, true)?,
        refresh_rate: settings.refresh_rate,
        respect_dns_ttl: c.respect_dns_ttl,
        failure_refresh: settings.failure_refresh,
        jitter: settings.jitter,
        wait_for_warm_on_init: c.wait_for_warm_on_init.is_none_or(|w| w.value),
    })
}

/// A cluster of another type: its DNS fields are checked, then left alone (Envoy ignores
/// them for that type), with a log line naming them.
pub(super) fn unused_dns_fields(c: &Cluster, type_name: &str, path: &str) -> Result<()> {
    settings(c, path)?;
    cluster_resolver(c, path, false)?;
    let set: Vec<&str> = [
        ("dns_refresh_rate", c.dns_refresh_rate.is_some()),
        ("dns_jitter", c.dns_jitter.is_some()),
        (
            "dns_failure_refresh_rate",
            c.dns_failure_refresh_rate.is_some(),
        ),
        ("respect_dns_ttl", c.respect_dns_ttl),
        ("dns_lookup_family", c.dns_lookup_family != 0),
        ("dns_resolvers", !c.dns_resolvers.is_empty()),
        ("use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups),
        ("dns_resolution_config", c.dns_resolution_config.is_some()),
        (
            "typed_dns_resolver_config",
            c.typed_dns_resolver_config.is_some(),
        ),
        ("wait_for_warm_on_init", c.wait_for_warm_on_init.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if !set.is_empty() {
        tracing::info!(
            cluster = %c.name,
            fields = ?set,
            "DNS settings have no effect on a {type_name} cluster (as in Envoy)"
        );
    }
    Ok(())
}

/// The timing and family of a DNS cluster.
struct Settings {
    refresh_rate: Duration,
    failure_refresh: Option<RefreshBackoff>,
    jitter: Duration,
    family: DnsLookupFamily,
}

fn settings(c: &Cluster, path: &str) -> Result<Settings> {
    let refresh_rate = match &c.dns_refresh_rate {
        Some(d) => interval(
            duration(d, &field(path, "dns_refresh_rate"))?,
            &field(path, "dns_refresh_rate"),
        )?,
        None => DEFAULT_DNS_REFRESH_RATE,
    };
    let failure_refresh = c
        .dns_failure_refresh_rate
        .as_ref()
        .map(|r| refresh_backoff(r, &field(path, "dns_failure_refresh_rate")))
        .transpose()?;
    let jitter = match &c.dns_jitter {
        Some(d) => duration(d, &field(path, "dns_jitter"))?,
        None => Duration::ZERO,
    };
    let family = match PbFamily::try_from(c.dns_lookup_family) {
        Ok(PbFamily::Auto) => DnsLookupFamily::Auto,
        Ok(PbFamily::V4Only) => DnsLookupFamily::V4Only,
        Ok(PbFamily::V6Only) => DnsLookupFamily::V6Only,
        Ok(PbFamily::V4Preferred) => DnsLookupFamily::V4Preferred,
        Ok(PbFamily::All) => DnsLookupFamily::All,
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "dns_lookup_family"),
                format!("unknown dns_lookup_family {}", c.dns_lookup_family),
            ))
        }
    };
    Ok(Settings {
        refresh_rate,
        failure_refresh,
        jitter,
        family,
    })
}

/// An interval Envoy accepts: more than 1 ms.
fn interval(d: Duration, path: &str) -> Result<Duration> {
    if d <= MIN_INTERVAL {
        return Err(ConfigError::invalid(path, "must be greater than 1ms"));
    }
    Ok(d)
}

/// `dns_failure_refresh_rate`: `base_interval` required, `max_interval` 10 x base by default.
fn refresh_backoff(r: &RefreshRate, path: &str) -> Result<RefreshBackoff> {
    let bpath = field(path, "base_interval");
    let Some(base) = &r.base_interval else {
        return Err(ConfigError::invalid(bpath, "required"));
    };
    let base = interval(duration(base, &bpath)?, &bpath)?;
    let max = match &r.max_interval {
        Some(m) => {
            let mpath = field(path, "max_interval");
            let max = interval(duration(m, &mpath)?, &mpath)?;
            if max < base {
                return Err(ConfigError::invalid(
                    mpath,
                    "must be greater than or equal to the base_interval (as in Envoy)",
                ));
            }
            max
        }
        None => base.saturating_mul(10),
    };
    Ok(RefreshBackoff { base, max })
}

/// The cluster's own resolver, if it names one (Envoy's `selectDnsResolver`). `dns` (a DNS
/// cluster): fields Envoy would ignore beside the one it uses are refused; on a cluster of
/// another type every DNS field is inert anyway, and only their values are checked.
fn cluster_resolver(c: &Cluster, path: &str, dns: bool) -> Result<Option<Arc<DnsResolverConfig>>> {
    let typed = c.typed_dns_resolver_config.as_ref().filter(|t| {
        t.typed_config
            .as_ref()
            .is_some_and(|a| !a.type_url.is_empty())
    });
    if let Some(t) = typed {
        let ignored = [
            ("dns_resolution_config", c.dns_resolution_config.is_some()),
            ("dns_resolvers", !c.dns_resolvers.is_empty()),
            ("use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups),
        ];
        if let Some((name, _)) = ignored.iter().find(|(_, set)| *set && dns) {
            return Err(ignored_beside(path, name, "typed_dns_resolver_config"));
        }
        return typed_resolver(t, &field(path, "typed_dns_resolver_config")).map(Some);
    }
    if let Some(r) = &c.dns_resolution_config {
        let ignored = [
            ("dns_resolvers", !c.dns_resolvers.is_empty()),
            ("use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups),
        ];
        if let Some((name, _)) = ignored.iter().find(|(_, set)| *set && dns) {
            return Err(ignored_beside(path, name, "dns_resolution_config"));
        }
        return resolution_config(r, &field(path, "dns_resolution_config")).map(Some);
    }
    if !c.dns_resolvers.is_empty() {
        let resolvers = resolver_addresses(&c.dns_resolvers, &field(path, "dns_resolvers"))?;
        return Ok(Some(Arc::new(DnsResolverConfig::Cares(CaresResolver {
            resolvers,
            use_tcp: c.use_tcp_for_dns_lookups,
            ..Default::default()
        }))));
    }
    if c.use_tcp_for_dns_lookups && dns {
        return Err(ConfigError::invalid(
            field(path, "use_tcp_for_dns_lookups"),
            "has no effect without dns_resolvers (Envoy then resolves with the bootstrap's \
             resolver and ignores it): set dns_resolvers too, or the bootstrap's \
             use_tcp_for_dns_lookups",
        ));
    }
    Ok(None)
}

/// The bootstrap's resolver (`typed_dns_resolver_config`, else `dns_resolution_config`, else
/// c-ares with `use_tcp_for_dns_lookups`); the system's c-ares resolver when none is given.
pub(super) fn bootstrap_resolver(b: &Bootstrap) -> Result<Arc<DnsResolverConfig>> {
    let typed = b.typed_dns_resolver_config.as_ref().filter(|t| {
        t.typed_config
            .as_ref()
            .is_some_and(|a| !a.type_url.is_empty())
    });
    if let Some(t) = typed {
        let ignored = [
            ("dns_resolution_config", b.dns_resolution_config.is_some()),
            ("use_tcp_for_dns_lookups", b.use_tcp_for_dns_lookups),
        ];
        if let Some((name, _)) = ignored.iter().find(|(_, set)| *set) {
            return Err(ignored_beside("", name, "typed_dns_resolver_config"));
        }
        return typed_resolver(t, "typed_dns_resolver_config");
    }
    if let Some(r) = &b.dns_resolution_config {
        if b.use_tcp_for_dns_lookups {
            return Err(ignored_beside(
                "",
                "use_tcp_for_dns_lookups",
                "dns_resolution_config",
            ));
        }
        return resolution_config(r, "dns_resolution_config");
    }
    Ok(Arc::new(DnsResolverConfig::Cares(CaresResolver {
        use_tcp: b.use_tcp_for_dns_lookups,
        ..Default::default()
    })))
}

fn ignored_beside(path: &str, name: &str, winner: &str) -> ConfigError {
    ConfigError::invalid(
        field(path, name),
        format!("Envoy ignores this when {winner} is set; give the resolver in one of them"),
    )
}

/// `typed_dns_resolver_config`: c-ares or getaddrinfo.
fn typed_resolver(t: &TypedExtensionConfig, path: &str) -> Result<Arc<DnsResolverConfig>> {
    if t.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty)",
        ));
    }
    let tpath = field(path, "typed_config");
    let Some(any) = &t.typed_config else {
        return Err(ConfigError::invalid(tpath, "required"));
    };
    match type_name(any) {
        CARES => {
            let c: CaresDnsResolverConfig = decode_any(any, CARES, &tpath)?;
            cares(&c, &tpath)
        }
        GETADDRINFO => {
            // The walker refused its fields (num_retries, num_resolver_threads).
            let _: GetAddrInfoDnsResolverConfig = decode_any(any, GETADDRINFO, &tpath)?;
            Ok(Arc::new(DnsResolverConfig::GetAddrInfo))
        }
        other => Err(ConfigError::unsupported(
            tpath,
            format!(
                "DNS resolver '{other}' is not supported by Switchyard (c-ares and getaddrinfo are)"
            ),
        )),
    }
}

fn cares(c: &CaresDnsResolverConfig, path: &str) -> Result<Arc<DnsResolverConfig>> {
    let resolvers = resolver_addresses(&c.resolvers, &field(path, "resolvers"))?;
    let query_timeout = match c.query_timeout_seconds {
        Some(s) if s.value >= 1 => Some(Duration::from_secs(s.value)),
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "query_timeout_seconds"),
                "must be at least 1",
            ))
        }
        None => None,
    };
    let query_tries = match c.query_tries {
        Some(t) if t.value >= 1 => Some(t.value),
        Some(_) => {
            return Err(ConfigError::invalid(
                field(path, "query_tries"),
                "must be at least 1",
            ))
        }
        None => None,
    };
    let mut resolver = CaresResolver {
        resolvers,
        resolvers_as_fallback: c.use_resolvers_as_fallback,
        query_timeout,
        query_tries,
        ..Default::default()
    };
    options(&mut resolver, c.dns_resolver_options.as_ref());
    Ok(Arc::new(DnsResolverConfig::Cares(resolver)))
}

/// The deprecated `dns_resolution_config`: c-ares with `resolvers` (at least one, as Envoy
/// requires) and options.
fn resolution_config(r: &DnsResolutionConfig, path: &str) -> Result<Arc<DnsResolverConfig>> {
    if r.resolvers.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "resolvers"),
            "at least one resolver is required (as in Envoy)",
        ));
    }
    let mut resolver = CaresResolver {
        resolvers: resolver_addresses(&r.resolvers, &field(path, "resolvers"))?,
        ..Default::default()
    };
    options(&mut resolver, r.dns_resolver_options.as_ref());
    Ok(Arc::new(DnsResolverConfig::Cares(resolver)))
}

fn options(resolver: &mut CaresResolver, o: Option<&DnsResolverOptions>) {
    if let Some(o) = o {
        resolver.use_tcp = o.use_tcp_for_dns_lookups;
        resolver.no_default_search_domain = o.no_default_search_domain;
    }
}

fn resolver_addresses(list: &[Address], path: &str) -> Result<Vec<std::net::SocketAddr>> {
    list.iter()
        .enumerate()
        .map(|(i, a)| dns_resolver_address(a, &index(path, i)))
        .collect()
}
