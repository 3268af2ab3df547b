//! One resolution of one name, as Envoy's resolvers make it: c-ares' settings through
//! hickory-resolver, or the system's `getaddrinfo()`; `dns_lookup_family` with c-ares'
//! semantics; `dns.cares.*` counted per query.
//!
//! - **c-ares** ([`CaresResolver`]): the configured `resolvers` (or the system's name servers
//!   from `/etc/resolv.conf`, or with `use_resolvers_as_fallback` those unless the system has
//!   none), over UDP (TCP after a truncated answer) or only TCP, the system's search domains
//!   and `ndots` unless `no_default_search_domain`, `/etc/hosts` first (as c-ares), c-ares'
//!   timeout (2 s) and tries (3) unless `query_timeout_seconds` / `query_tries`. No cache
//!   (Envoy's default `qcache_max_ttl` is 0): every refresh asks the server.
//! - **getaddrinfo**: `getaddrinfo(name, AF_UNSPEC)` on a blocking thread, then the family
//!   filter Envoy's getaddrinfo resolver applies; its TTL is Envoy's fixed 60 s.
//!
//! A resolution is good when it yields at least one address; NXDOMAIN, an answer without an
//! address of the family, an error response or a timeout is a failure (the cluster keeps its
//! last good hosts). Families, as Envoy's c-ares resolver: AUTO asks AAAA, then A if that
//! gave no address; V4_PREFERRED the other way round; ALL both at once (A's addresses first);
//! V4_ONLY / V6_ONLY one. An IP literal resolves to itself when its family is asked for.

use crate::rib::{CaresResolver, DnsLookupFamily, DnsResolverConfig};
use crate::stats::DnsStats;
use hickory_resolver::config::{
    NameServerConfig, ResolverConfig, ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// c-ares' default per-try timeout.
const CARES_TIMEOUT: Duration = Duration::from_secs(2);
/// c-ares' default number of tries.
const CARES_TRIES: u32 = 3;
/// The TTL Envoy gives getaddrinfo's answers (the call has none).
const GETADDRINFO_TTL: Duration = Duration::from_secs(60);

/// A resolver, built once per distinct config and shared by the clusters using it.
#[derive(Clone)]
pub(super) enum Resolver {
    Cares(Arc<TokioResolver>),
    GetAddrInfo,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolver::Cares(_) => f.write_str("Resolver::Cares"),
            Resolver::GetAddrInfo => f.write_str("Resolver::GetAddrInfo"),
        }
    }
}

/// A good resolution: its addresses, in order, and their smallest TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    pub(super) addresses: Vec<IpAddr>,
    pub(super) ttl: Option<Duration>,
}

/// Why a resolution gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    /// NXDOMAIN, or no address of the family asked for.
    NotFound,
    /// No answer in time.
    Timeout,
    /// Anything else (an error response, a refused connection, a malformed name).
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotFound => f.write_str("no address (NXDOMAIN or no record of the family)"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Error(e) => f.write_str(e),
        }
    }
}

impl Resolver {
    /// Builds the resolver a config describes (in the `dns` thread's runtime).
    pub(super) fn build(config: &DnsResolverConfig, stats: &DnsStats) -> Result<Resolver, String> {
        match config {
            DnsResolverConfig::Cares(c) => {
                stats.cares.used.store(true, Ordering::Relaxed);
                cares(c).map(|r| Resolver::Cares(Arc::new(r)))
            }
            DnsResolverConfig::GetAddrInfo => Ok(Resolver::GetAddrInfo),
        }
    }

    /// Resolves `name` for `family`.
    pub(super) async fn resolve(
        &self,
        name: &str,
        family: DnsLookupFamily,
        stats: &DnsStats,
    ) -> Result<Answer, Failure> {
        match self {
            Resolver::Cares(r) => cares_resolve(r, name, family, stats).await,
            Resolver::GetAddrInfo => getaddrinfo(name, family).await,
        }
    }
}

/// A hickory resolver with c-ares' settings.
fn cares(c: &CaresResolver) -> Result<TokioResolver, String> {
    let system = hickory_resolver::system_conf::read_system_conf().ok();
    let (system_config, system_opts) = match &system {
        Some((config, opts)) => (Some(config), Some(opts)),
        None => (None, None),
    };
    let system_servers: Vec<SocketAddr> = system_config
        .map(|config| {
            config
                .name_servers()
                .iter()
                .filter_map(|ns| {
                    ns.connections
                        .first()
                        .map(|cc| SocketAddr::new(ns.ip, cc.port))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut servers =
        if c.resolvers.is_empty() || (c.resolvers_as_fallback && !system_servers.is_empty()) {
            system_servers
        } else {
            c.resolvers.clone()
        };
    servers.dedup();
    if servers.is_empty() {
        // c-ares' default when nothing names a server.
        servers.push(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)));
    }
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut ns = if c.use_tcp {
                NameServerConfig::tcp(s.ip())
            } else {
                NameServerConfig::udp_and_tcp(s.ip())
            };
            for cc in &mut ns.connections {
                cc.port = s.port();
            }
            ns
        })
        .collect();
    let (domain, search) = match (c.no_default_search_domain, system_config) {
        (false, Some(config)) => (config.domain().cloned(), config.search().to_vec()),
        _ => (None, Vec::new()),
    };
    let mut opts = ResolverOpts::default();
    if let Some(system) = system_opts {
        opts.ndots = system.ndots;
    }
    opts.timeout = c.query_timeout.unwrap_or(CARES_TIMEOUT);
    opts.attempts = c.query_tries.unwrap_or(CARES_TRIES).saturating_sub(1) as usize;
    opts.cache_size = 0;
    // c-ares asks its servers one at a time, in their order.
    opts.num_concurrent_reqs = 1;
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    let config = ResolverConfig::from_parts(domain, search, name_servers);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// One query of one record type: its addresses and smallest TTL.
async fn query(r: &TokioResolver, name: &str, rtype: RecordType) -> Result<Answer, Failure> {
    let lookup = r.lookup(name, rtype).await.map_err(|e| classify(&e))?;
    let mut addresses = Vec::new();
    let mut ttl: Option<u32> = None;
    for record in lookup.answers() {
        // CNAMEs on the way count for the TTL, as in Envoy.
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        match &record.data {
            RData::A(a) if rtype == RecordType::A => addresses.push(IpAddr::V4(a.0)),
            RData::AAAA(a) if rtype == RecordType::AAAA => addresses.push(IpAddr::V6(a.0)),
            _ => {}
        }
    }
    if addresses.is_empty() {
        return Err(Failure::NotFound);
    }
    Ok(Answer {
        addresses,
        ttl: ttl.map(|t| Duration::from_secs(t.into())),
    })
}

fn classify(e: &NetError) -> Failure {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(_)) => Failure::NotFound,
        NetError::Timeout => Failure::Timeout,
        other => Failure::Error(other.to_string()),
    }
}

/// Counts one finished c-ares query (`resolve_total`, and its failure kind).
fn count(stats: &DnsStats, result: &Result<Answer, Failure>) {
    let s = &stats.cares;
    s.resolve_total.fetch_add(1, Ordering::Relaxed);
    let failed = match result {
        Ok(_) => return,
        Err(Failure::NotFound) => &s.not_found,
        Err(Failure::Timeout) => &s.timeouts,
        Err(Failure::Error(_)) => &s.get_addr_failure,
    };
    failed.fetch_add(1, Ordering::Relaxed);
}

/// One counted query (`pending_resolutions` while it runs).
async fn counted(
    r: &TokioResolver,
    name: &str,
    rtype: RecordType,
    stats: &DnsStats,
) -> Result<Answer, Failure> {
    stats
        .cares
        .pending_resolutions
        .fetch_add(1, Ordering::Relaxed);
    let result = query(r, name, rtype).await;
    stats
        .cares
        .pending_resolutions
        .fetch_sub(1, Ordering::Relaxed);
    count(stats, &result);
    result
}

async fn cares_resolve(
    r: &TokioResolver,
    name: &str,
    family: DnsLookupFamily,
    stats: &DnsStats,
) -> Result<Answer, Failure> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        let result = literal(ip, family);
        count(stats, &result);
        return result;
    }
    let (a, aaaa) = (RecordType::A, RecordType::AAAA);
    match family {
        DnsLookupFamily::V4Only => counted(r, name, a, stats).await,
        DnsLookupFamily::V6Only => counted(r, name, aaaa, stats).await,
        DnsLookupFamily::Auto => match counted(r, name, aaaa, stats).await {
            Ok(answer) => Ok(answer),
            Err(_) => counted(r, name, a, stats).await,
        },
        DnsLookupFamily::V4Preferred => match counted(r, name, a, stats).await {
            Ok(answer) => Ok(answer),
            Err(_) => counted(r, name, aaaa, stats).await,
        },
        DnsLookupFamily::All => {
            // One resolution of both families (c-ares' AF_UNSPEC), counted once.
            stats
                .cares
                .pending_resolutions
                .fetch_add(1, Ordering::Relaxed);
            let (v4, v6) = tokio::join!(query(r, name, a), query(r, name, aaaa));
            stats
                .cares
                .pending_resolutions
                .fetch_sub(1, Ordering::Relaxed);
            let result = match (v4, v6) {
                (Ok(mut v4), Ok(v6)) => {
                    v4.addresses.extend(v6.addresses);
                    v4.ttl = v4.ttl.min(v6.ttl).or(v4.ttl).or(v6.ttl);
                    Ok(v4)
                }
                (Ok(one), Err(_)) | (Err(_), Ok(one)) => Ok(one),
                (Err(e), Err(_)) => Err(e),
            };
            count(stats, &result);
            result
        }
    }
}

/// An IP literal: itself, if its family is one the lookup family asks for (c-ares answers a
/// literal of the other family with "not found").
fn literal(ip: IpAddr, family: DnsLookupFamily) -> Result<Answer, Failure> {
    let asked = match family {
        DnsLookupFamily::V4Only => ip.is_ipv4(),
        DnsLookupFamily::V6Only => ip.is_ipv6(),
        _ => true,
    };
    if !asked {
        return Err(Failure::NotFound);
    }
    Ok(Answer {
        addresses: vec![ip],
        ttl: None,
    })
}

/// `getaddrinfo()` on a blocking thread, then Envoy's getaddrinfo resolver's family filter.
async fn getaddrinfo(name: &str, family: DnsLookupFamily) -> Result<Answer, Failure> {
    let host = name.to_string();
    let all = tokio::task::spawn_blocking(move || {
        (host.as_str(), 0)
            .to_socket_addrs()
            .map(|it| it.map(|a| a.ip()).collect::<Vec<_>>())
    })
    .await
    .map_err(|e| Failure::Error(format!("getaddrinfo thread: {e}")))?
    .map_err(|e| Failure::Error(e.to_string()))?;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in all {
        let list = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        if !list.contains(&ip) {
            list.push(ip);
        }
    }
    let addresses = match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto if v6.is_empty() => v4,
        DnsLookupFamily::Auto => v6,
        DnsLookupFamily::V4Preferred if v4.is_empty() => v6,
        DnsLookupFamily::V4Preferred => v4,
        DnsLookupFamily::All => v4.into_iter().chain(v6).collect(),
    };
    if addresses.is_empty() {
        return Err(Failure::NotFound);
    }
    Ok(Answer {
        addresses,
        ttl: Some(GETADDRINFO_TTL),
    })
}

/// The longest one family lookup of `config` may take: every try timing out.
pub(super) fn worst_case(config: &DnsResolverConfig) -> Duration {
    match config {
        DnsResolverConfig::Cares(c) => c
            .query_timeout
            .unwrap_or(CARES_TIMEOUT)
            .saturating_mul(c.query_tries.unwrap_or(CARES_TRIES)),
        // glibc's default: 5 s per try, 2 tries.
        DnsResolverConfig::GetAddrInfo => Duration::from_secs(10),
    }
}

/// Shared resolvers by config.
pub(super) type Resolvers = std::collections::HashMap<Arc<DnsResolverConfig>, Resolver>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_answer_for_their_family() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(
            literal(v4, DnsLookupFamily::V4Only).unwrap().addresses,
            [v4]
        );
        assert_eq!(literal(v4, DnsLookupFamily::V6Only), Err(Failure::NotFound));
        assert_eq!(literal(v6, DnsLookupFamily::Auto).unwrap().addresses, [v6]);
        assert_eq!(literal(v6, DnsLookupFamily::V4Only), Err(Failure::NotFound));
    }
}
