//! When a DNS cluster's names are resolved again, and what an answer does to its hosts:
//! Envoy's rules, pure (no clock, no socket; time and randomness are passed in).
//!
//! - After a good answer: `dns_refresh_rate`, or with `respect_dns_ttl` the answer's
//!   smallest TTL (when not 0), plus up to `dns_jitter` (exclusive).
//! - After a failure: `dns_failure_refresh_rate` as Envoy's jittered exponential backoff
//!   (a random delay below the current interval, which doubles up to `max_interval`; a good
//!   answer for any name of the cluster starts it again at `base_interval`), or the refresh
//!   rate when it is not set.
//! - A STRICT_DNS name's hosts are the set of its addresses: an answer with the same set in
//!   another order changes nothing (round-robin DNS servers rotate their answers); a
//!   LOGICAL_DNS name's host is its answer's first address.

use crate::rib::{DnsCluster, DnsQuery, EndpointConfig, RefreshBackoff};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::lb::Rng;

/// A cluster's failure backoff (Envoy shares one per cluster among its names).
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    policy: Option<RefreshBackoff>,
    /// The interval the next failure draws below, in ms.
    next_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Backoff {
    pub(super) fn new(policy: Option<RefreshBackoff>) -> Backoff {
        Backoff {
            policy,
            next_ms: policy.map_or(0, |p| ms(p.base).max(1)),
        }
    }

    /// A good answer: the next failure starts from `base_interval` again.
    pub(super) fn reset(&mut self) {
        if let Some(p) = self.policy {
            self.next_ms = ms(p.base).max(1);
        }
    }

    /// The delay after a failure: Envoy's `JitteredExponentialBackOffStrategy`, or
    /// `refresh_rate` without `dns_failure_refresh_rate`.
    pub(super) fn next(&mut self, refresh_rate: Duration, rng: &mut Rng) -> Duration {
        let Some(p) = self.policy else {
            return refresh_rate;
        };
        let max = ms(p.max).max(1);
        let backoff = self.next_ms.max(1);
        self.next_ms = if backoff > max / 2 { max } else { backoff * 2 };
        Duration::from_millis(rng.below(backoff).min(max))
    }
}

/// The delay after a good answer whose smallest TTL is `ttl`.
pub(super) fn after_success(c: &DnsCluster, ttl: Option<Duration>, rng: &mut Rng) -> Duration {
    let mut delay = c.refresh_rate;
    if c.respect_dns_ttl {
        if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
            delay = ttl;
        }
    }
    let jitter = ms(c.jitter);
    if jitter > 0 {
        delay += Duration::from_millis(rng.below(jitter));
    }
    delay
}

/// What one name of a cluster resolved to so far.
#[derive(Debug, Clone, Default)]
pub(super) struct TargetAnswer {
    /// The last good answer's addresses (in its order, without repeats; only the first for
    /// LOGICAL_DNS); `None` until one arrives. A failure leaves it as it is.
    pub(super) hosts: Option<Vec<IpAddr>>,
    /// Its first resolution has finished (well or not).
    pub(super) attempted: bool,
}

impl TargetAnswer {
    /// Records a good answer; true when it changes the name's hosts.
    pub(super) fn record(&mut self, logical: bool, addresses: &[IpAddr]) -> bool {
        self.attempted = true;
        let mut hosts: Vec<IpAddr> = Vec::with_capacity(addresses.len());
        for a in addresses {
            if !hosts.contains(a) {
                hosts.push(*a);
            }
            if logical {
                break;
            }
        }
        let same = self
            .hosts
            .as_ref()
            .is_some_and(|old| old.len() == hosts.len() && hosts.iter().all(|h| old.contains(h)));
        if !same {
            self.hosts = Some(hosts);
        }
        !same
    }
}

/// A cluster's hosts from its names' answers: every address of every name (STRICT_DNS) or
/// each name's first (LOGICAL_DNS), with the name's port, weight and priority, sorted by
/// priority (config order within one); and the name each came from (for `/clusters`).
pub(super) fn endpoints(
    query: &DnsQuery,
    answers: &[TargetAnswer],
) -> (Arc<[EndpointConfig]>, Arc<[Arc<str>]>) {
    let mut hosts: Vec<(EndpointConfig, Arc<str>)> = Vec::new();
    for (target, answer) in query.targets.iter().zip(answers) {
        let name: Arc<str> = target.name.as_str().into();
        for ip in answer.hosts.iter().flatten() {
            hosts.push((
                EndpointConfig {
                    address: SocketAddr::new(*ip, target.port),
                    weight: target.weight,
                    priority: target.priority,
                    locality: target.locality.clone(),
                    tunnel: None,
                },
                name.clone(),
            ));
        }
    }
    hosts.sort_by_key(|(e, _)| e.priority);
    let (endpoints, names): (Vec<_>, Vec<_>) = hosts.into_iter().unzip();
    (endpoints.into(), names.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::{DnsLookupFamily, DnsTarget};

    fn cluster(respect_dns_ttl: bool, jitter_ms: u64, failure: Option<(u64, u64)>) -> DnsCluster {
        DnsCluster {
            query: Arc::new(DnsQuery {
                logical: false,
                targets: Vec::new(),
                family: DnsLookupFamily::V4Only,
            }),
            resolver: None,
            refresh_rate: Duration::from_secs(5),
            respect_dns_ttl,
            failure_refresh: failure.map(|(b, m)| RefreshBackoff {
                base: Duration::from_millis(b),
                max: Duration::from_millis(m),
            }),
            jitter: Duration::from_millis(jitter_ms),
            wait_for_warm_on_init: true,
        }
    }

    #[test]
    fn success_waits_the_refresh_rate_or_the_ttl() {
        let mut rng = Rng::new(7);
        let ttl = Some(Duration::from_secs(1));
        assert_eq!(
            after_success(&cluster(false, 0, None), ttl, &mut rng),
            Duration::from_secs(5)
        );
        assert_eq!(
            after_success(&cluster(true, 0, None), ttl, &mut rng),
            Duration::from_secs(1)
        );
        // A TTL of 0 (or none) keeps the refresh rate, as in Envoy.
        let zero = Some(Duration::ZERO);
        assert_eq!(
            after_success(&cluster(true, 0, None), zero, &mut rng),
            Duration::from_secs(5)
        );
        for _ in 0..100 {
            let d = after_success(&cluster(false, 300, None), None, &mut rng);
            assert!(
                d >= Duration::from_secs(5) && d < Duration::from_millis(5300),
                "{d:?}"
            );
        }
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_until_a_success() {
        let mut rng = Rng::new(3);
        let mut fixed = Backoff::new(None);
        assert_eq!(
            fixed.next(Duration::from_secs(5), &mut rng),
            Duration::from_secs(5)
        );
        let mut b = Backoff::new(cluster(false, 0, Some((100, 350))).failure_refresh);
        // Intervals 100, 200, 350 (capped), 350...: each delay is below its interval.
        for bound in [100, 200, 350, 350, 350] {
            let d = b.next(Duration::from_secs(5), &mut rng);
            assert!(d < Duration::from_millis(bound), "{d:?} vs {bound}");
        }
        b.reset();
        assert!(b.next(Duration::from_secs(5), &mut rng) < Duration::from_millis(100));
    }

    #[test]
    fn a_strict_name_changes_only_when_its_set_does() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut t = TargetAnswer::default();
        assert!(t.record(false, &[ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.1")]));
        assert_eq!(
            t.hosts.as_deref(),
            Some(&[ip("10.0.0.1"), ip("10.0.0.2")][..])
        );
        assert!(
            !t.record(false, &[ip("10.0.0.2"), ip("10.0.0.1")]),
            "rotated"
        );
        assert!(t.record(false, &[ip("10.0.0.2")]));
        let mut l = TargetAnswer::default();
        assert!(l.record(true, &[ip("10.0.0.1"), ip("10.0.0.2")]));
        assert!(
            !l.record(true, &[ip("10.0.0.1"), ip("10.0.0.3")]),
            "same first address"
        );
        assert!(l.record(true, &[ip("10.0.0.2"), ip("10.0.0.1")]));
        assert_eq!(l.hosts.as_deref(), Some(&[ip("10.0.0.2")][..]));
    }

    #[test]
    fn endpoints_follow_names_ports_weights_and_priorities() {
        let target = |name: &str, port, weight, priority| DnsTarget {
            name: name.into(),
            port,
            weight,
            priority,
            locality: Default::default(),
        };
        let query = DnsQuery {
            logical: false,
            targets: vec![
                target("b", 80, 3, 1),
                target("a", 81, 1, 0),
                target("c", 82, 1, 0),
            ],
            family: DnsLookupFamily::Auto,
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let answers = [
            TargetAnswer {
                hosts: Some(vec![ip("10.0.0.1"), ip("10.0.0.2")]),
                attempted: true,
            },
            TargetAnswer {
                hosts: Some(vec![ip("::1")]),
                attempted: true,
            },
            TargetAnswer::default(),
        ];
        let (eps, names) = endpoints(&query, &answers);
        let got: Vec<(String, u32, u32)> = eps
            .iter()
            .map(|e| (e.address.to_string(), e.weight, e.priority))
            .collect();
        assert_eq!(
            got,
            [
                ("[::1]:81".to_string(), 1, 0),
                ("10.0.0.1:80".to_string(), 3, 1),
                ("10.0.0.2:80".to_string(), 3, 1),
            ]
        );
        assert_eq!(&*names[0], "a");
        assert_eq!(&*names[2], "b");
    }
}
