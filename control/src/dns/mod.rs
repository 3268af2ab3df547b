//! DNS discovery: STRICT_DNS and LOGICAL_DNS clusters' names, resolved on the `dns` thread,
//! never on a worker and never on the control thread; their hosts reach the data plane the
//! way every config change does, as a new RIB compiled into a new FIB.
//!
//! # Threads and messages
//!
//! - The **control thread** composes the RIB (statics and xDS), and after each composition
//!   tells the `dns` thread which DNS clusters exist ([`DnsHosts::sync`]: a list of
//!   [`DnsWatch`], sent only when it changed; the thread is started when the first DNS
//!   cluster appears). It keeps the last [`DnsUpdate`] of each cluster and fills the DNS
//!   clusters' endpoints from them whenever it composes ([`DnsHosts::fill`]).
//! - The **`dns` thread** ([`thread`]) runs one single-threaded tokio runtime: per cluster
//!   and per name, the last good answer and when to resolve again (Envoy's refresh rules,
//!   [`refresh`]); resolutions run concurrently ([`resolve`]: hickory-resolver with c-ares'
//!   settings, or `getaddrinfo()` on a blocking thread). It counts Envoy's stats
//!   (`cluster.<name>.update_*`, `membership_change`, `dns.cares.*`) itself, and sends a
//!   cluster's hosts to the control thread only when they changed, or once its first round
//!   of answers is complete.
//!
//! # What a refresh costs
//!
//! An answer that changes no host costs the `dns` thread its queries and a few counters;
//! the control thread hears nothing. A changed answer costs one message, one composition,
//! a compilation of that cluster alone (every other cluster is shared with the previous FIB)
//! and one publication; each worker then rebuilds that cluster's balancer once. Workers never
//! wait for DNS, and connections keep the host they were given: an established connection
//! outlives every answer.
//!
//! # Answers and hosts
//!
//! A resolution that yields no address (NXDOMAIN, no record of the family, an error response,
//! a timeout) keeps the name's last good hosts and counts `update_failure`; Envoy's c-ares
//! resolver takes NXDOMAIN and empty answers as an empty host set instead. Hosts keep their
//! state (stats, health, ejections) across answers as long as their address stays, as every
//! host does across FIBs. At start, listeners open once every DNS cluster (with
//! `wait_for_warm_on_init`, the default) has had its first answers, as Envoy initialises its
//! clusters before its listeners; a cluster whose names, family or resolver change later
//! serves its previous version until its new names' first answers (Envoy's warming).

mod refresh;
mod resolve;
mod thread;

pub use thread::{first_answers_bound, DnsThread, Sink};

use crate::rib::{DnsCluster, DnsQuery, DnsResolverConfig, EndpointConfig, Rib};
use crate::stats::DnsStats;
use std::collections::HashMap;
use std::sync::Arc;

/// One DNS cluster for the `dns` thread to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsWatch {
    /// The cluster's name.
    pub cluster: String,
    /// Its names and settings.
    pub config: Arc<DnsCluster>,
    /// The resolver it uses: its own, or the bootstrap's.
    pub resolver: Arc<DnsResolverConfig>,
}

impl DnsWatch {
    /// Every DNS cluster of `rib`, in its order, with the resolver each uses.
    pub fn of(rib: &Rib) -> Vec<DnsWatch> {
        rib.clusters
            .iter()
            .filter_map(|c| {
                let config = c.dns.clone()?;
                let resolver = config
                    .resolver
                    .clone()
                    .unwrap_or_else(|| rib.dns_resolver.clone());
                Some(DnsWatch {
                    cluster: c.name.clone(),
                    config,
                    resolver,
                })
            })
            .collect()
    }

    /// Whether answers to `self` give `other`'s hosts too (same names, family, type and
    /// resolver; the refresh settings may differ).
    pub fn same_hosts(&self, other: &DnsWatch) -> bool {
        self.config.query == other.config.query && self.resolver == other.resolver
    }
}

/// A DNS cluster's hosts, as its latest answers make them (from the `dns` thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsUpdate {
    /// The cluster's name.
    pub cluster: String,
    /// What was resolved ...
    pub query: Arc<DnsQuery>,
    /// ... and with which resolver.
    pub resolver: Arc<DnsResolverConfig>,
    /// The hosts, sorted by priority.
    pub endpoints: Arc<[EndpointConfig]>,
    /// The name each host was resolved from (same order).
    pub hostnames: Arc<[Arc<str>]>,
    /// Every name has had its first answer (or failure).
    pub settled: bool,
}

/// The control thread's side of DNS discovery: what the `dns` thread resolves, and the hosts
/// its answers gave.
#[derive(Debug, Default)]
pub struct DnsHosts {
    thread: Option<DnsThread>,
    watching: Vec<DnsWatch>,
    answers: HashMap<String, DnsUpdate>,
}

impl DnsHosts {
    /// Tells the `dns` thread what `rib` resolves, if that changed; `start` starts the thread
    /// the first time there is something to resolve.
    pub fn sync(
        &mut self,
        rib: &Rib,
        start: impl FnOnce() -> std::io::Result<DnsThread>,
    ) -> std::io::Result<()> {
        let watches = DnsWatch::of(rib);
        if watches == self.watching {
            return Ok(());
        }
        if self.thread.is_none() && !watches.is_empty() {
            self.thread = Some(start()?);
        }
        if let Some(t) = &self.thread {
            t.watch(watches.clone());
        }
        self.answers
            .retain(|name, _| watches.iter().any(|w| &w.cluster == name));
        self.watching = watches;
        Ok(())
    }

    /// Takes an update from the `dns` thread; true when it changes what [`DnsHosts::fill`]
    /// gives a RIB.
    pub fn apply(&mut self, update: DnsUpdate, stats: &DnsStats) -> bool {
        if !self.watching.iter().any(|w| w.cluster == update.cluster) {
            return false;
        }
        let hostnames = update
            .endpoints
            .iter()
            .zip(update.hostnames.iter())
            .map(|(e, n)| (e.address, n.clone()))
            .collect();
        stats.set_hostnames(&update.cluster, hostnames);
        let changed = self.answers.get(&update.cluster) != Some(&update);
        self.answers.insert(update.cluster.clone(), update);
        changed
    }

    /// The DNS clusters of `rib` that wait for their first answers before listeners open
    /// (`wait_for_warm_on_init`) and have not had them.
    pub fn unsettled(&self, rib: &Rib) -> Vec<String> {
        DnsWatch::of(rib)
            .into_iter()
            .filter(|w| w.config.wait_for_warm_on_init && self.answer(w).is_none())
            .map(|w| w.cluster)
            .collect()
    }

    /// The settled answer for `w`'s current names and resolver.
    fn answer(&self, w: &DnsWatch) -> Option<&DnsUpdate> {
        self.answers
            .get(&w.cluster)
            .filter(|a| a.settled && *a.query == *w.config.query && a.resolver == w.resolver)
    }

    /// Gives every DNS cluster of `rib` its resolved hosts. One whose current names have not
    /// had their first answers serves as in `serving` (the RIB being served: its previous
    /// version keeps serving meanwhile, as in Envoy), or, new, with no host yet.
    pub fn fill(&self, rib: &mut Rib, serving: Option<&Rib>) {
        let watches = DnsWatch::of(rib);
        for w in watches {
            let Some(slot) = rib.clusters.iter_mut().find(|c| c.name == w.cluster) else {
                continue;
            };
            match self.answer(&w) {
                Some(a) => {
                    if !Arc::ptr_eq(&slot.endpoints, &a.endpoints) {
                        Arc::make_mut(slot).endpoints = a.endpoints.clone();
                    }
                }
                None => {
                    if let Some(old) =
                        serving.and_then(|s| s.clusters.iter().find(|c| c.name == w.cluster))
                    {
                        *slot = old.clone();
                    }
                }
            }
        }
    }

    /// Stops the `dns` thread, if it runs.
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            t.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::load::parse_rib;

    const YAML: &str = r#"
static_resources:
  clusters:
  - name: d
    type: STRICT_DNS
    load_assignment:
      cluster_name: d
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: a.example, port_value: 80}}}
  - name: s
    load_assignment:
      cluster_name: s
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 80}}}
"#;

    fn rib(yaml: &str) -> Rib {
        parse_rib(yaml, Format::Yaml).unwrap().0
    }

    fn update(rib: &Rib, port: u16, settled: bool) -> DnsUpdate {
        let w = &DnsWatch::of(rib)[0];
        DnsUpdate {
            cluster: w.cluster.clone(),
            query: w.config.query.clone(),
            resolver: w.resolver.clone(),
            endpoints: vec![EndpointConfig {
                address: std::net::SocketAddr::from(([10, 0, 0, 1], port)),
                weight: 1,
                priority: 0,
                locality: Default::default(),
                tunnel: None,
            }]
            .into(),
            hostnames: vec![Arc::from("a.example")].into(),
            settled,
        }
    }

    #[test]
    fn watches_name_dns_clusters_with_their_resolver() {
        let rib = rib(YAML);
        let w = DnsWatch::of(&rib);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].cluster, "d");
        assert!(Arc::ptr_eq(&w[0].resolver, &rib.dns_resolver));
        assert!(
            rib.cluster("d").unwrap().endpoints.is_empty(),
            "convert resolves nothing"
        );
    }

    #[test]
    fn answers_fill_the_cluster_once_settled() {
        let statics = rib(YAML);
        let stats = DnsStats::default();
        // No thread: nothing is resolved in this test.
        let mut hosts = DnsHosts {
            watching: DnsWatch::of(&statics),
            ..Default::default()
        };
        assert_eq!(hosts.unsettled(&statics), ["d"]);
        assert!(hosts.apply(update(&statics, 80, false), &stats));
        let mut r = statics.clone();
        hosts.fill(&mut r, None);
        assert!(
            r.cluster("d").unwrap().endpoints.is_empty(),
            "not settled yet"
        );
        assert!(hosts.apply(update(&statics, 80, true), &stats));
        assert!(
            !hosts.apply(update(&statics, 80, true), &stats),
            "same again"
        );
        assert!(hosts.unsettled(&statics).is_empty());
        let mut r = statics.clone();
        hosts.fill(&mut r, None);
        assert_eq!(r.cluster("d").unwrap().endpoints[0].address.port(), 80);
        assert_eq!(r.cluster("s"), statics.cluster("s"));
        let names = stats.hostnames("d").unwrap();
        assert_eq!(&**names.values().next().unwrap(), "a.example");
    }

    #[test]
    fn a_changed_query_serves_the_previous_version_until_its_answers() {
        let old = rib(YAML);
        let stats = DnsStats::default();
        let mut hosts = DnsHosts {
            watching: DnsWatch::of(&old),
            ..Default::default()
        };
        hosts.apply(update(&old, 80, true), &stats);
        let mut serving = old.clone();
        hosts.fill(&mut serving, None);
        // The name changes: until it is answered, the old version (with its host) serves.
        let new = rib(&YAML.replace("a.example", "b.example"));
        hosts.watching = DnsWatch::of(&new);
        let mut r = new.clone();
        hosts.fill(&mut r, Some(&serving));
        assert_eq!(r.cluster("d"), serving.cluster("d"));
        hosts.apply(update(&new, 81, true), &stats);
        let mut r = new.clone();
        hosts.fill(&mut r, Some(&serving));
        let d = r.cluster("d").unwrap();
        assert_eq!(d.endpoints[0].address.port(), 81);
        assert_eq!(d.dns.as_ref().unwrap().query.targets[0].name, "b.example");
    }
}
