//! What xDS has delivered, and how it joins the bootstrap's static resources into the RIB
//! the FIB is compiled from.
//!
//! Rules (Envoy's): static resources win — a dynamic listener or cluster whose name (or, for a
//! listener, address) a static one already has is left out and reported; an EDS cluster's
//! endpoints are the last assignment received for its service name (none until one arrives,
//! so connections to it find no healthy upstream rather than a stale one); removing a cluster
//! over CDS drops its endpoints from the RIB but keeps the assignment until EDS removes it.

use crate::rib::{
    Bind, ClusterConfig, EndpointConfig, ListenerConfig, Rib, SecretKey, SecretSource, SecretValue,
    TlsSecrets, XdsSource,
};
use crate::secrets::DynamicSecrets;
use crate::xds::Change;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Resources received over xDS, by name.
///
/// Besides what was received, it keeps every received cluster joined with its endpoints, up
/// to date after each change: composing the RIB then copies pointers only, and a cluster
/// the change did not touch is the same `Arc` as before (which is how compilation knows it
/// need not rebuild it).
///
/// Warming (Envoy's rules, bounded by a deadline the caller gives with each change — the
/// `initial_fetch_timeout` — or unbounded when it gives none):
/// - a received EDS cluster whose service has no assignment yet is *warming*: it does not
///   serve; the version it replaces, if any, serves until it is ready. It becomes active
///   when its assignment arrives, or at its deadline with no endpoints;
/// - a received listener that routes to a warming cluster is warming too, the version it
///   replaces serving meanwhile, until every such cluster is active or its own deadline;
/// - a received listener or cluster whose TLS context names an SDS secret (over ADS or from
///   a file) that has not arrived is warming too, until every such secret has, or its
///   deadline (then its context serves no handshake until they arrive);
/// - removing a resource removes its warming version as well.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicState {
    /// Active listeners.
    listeners: BTreeMap<String, ListenerConfig>,
    /// Listeners waiting for their clusters, with their deadlines.
    warming_listeners: BTreeMap<String, (ListenerConfig, Option<Instant>)>,
    /// As received, active or warming (an EDS cluster's endpoints are empty here).
    clusters: BTreeMap<String, ClusterConfig>,
    /// Received clusters waiting for their first assignment, with their deadlines.
    warming_clusters: BTreeMap<String, Option<Instant>>,
    /// Endpoint assignments by service name.
    endpoints: BTreeMap<String, Arc<[EndpointConfig]>>,
    /// The active version of each cluster, with its EDS endpoints filled in.
    joined: BTreeMap<String, Arc<ClusterConfig>>,
    /// The received clusters watching each EDS service name.
    by_service: BTreeMap<String, BTreeSet<String>>,
    /// Warming clusters and listeners that became active since [`DynamicState::take_promoted`].
    promoted: (Vec<String>, Vec<String>),
    /// Secrets received over SDS (ADS and files), by source and name. A secret stays once
    /// received (Envoy refuses an SDS update that removes it).
    secrets: DynamicSecrets,
}

impl DynamicState {
    /// Active listeners, clusters (active or warming) and endpoint assignments held.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.listeners.len(),
            self.clusters.len(),
            self.endpoints.len(),
        )
    }

    /// The last assignment received for `service`.
    pub fn endpoints(&self, service: &str) -> Option<&Arc<[EndpointConfig]>> {
        self.endpoints.get(service)
    }

    /// Names of the clusters warming now.
    pub fn warming_clusters(&self) -> impl Iterator<Item = &str> {
        self.warming_clusters.keys().map(String::as_str)
    }

    /// Names of the listeners warming now.
    pub fn warming_listeners(&self) -> impl Iterator<Item = &str> {
        self.warming_listeners.keys().map(String::as_str)
    }

    /// The received clusters watching `service`.
    pub fn clusters_watching(&self, service: &str) -> impl Iterator<Item = &str> {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// The clusters and listeners that stopped warming (became active) since the last call.
    pub fn take_promoted(&mut self) -> (Vec<String>, Vec<String>) {
        std::mem::take(&mut self.promoted)
    }

    /// Whether `cluster`, received now, would warm (an EDS cluster whose service has no
    /// assignment yet, or a TLS context waiting for a secret).
    pub fn would_warm_cluster(&self, cluster: &ClusterConfig) -> bool {
        let no_endpoints = cluster
            .eds_service
            .as_ref()
            .is_some_and(|s| !self.endpoints.contains_key(s));
        no_endpoints || cluster.tls.as_ref().is_some_and(|t| self.lacks(&t.secrets))
    }

    /// Whether `listener`, received now, would warm (it routes to a warming cluster, or a
    /// chain's TLS context waits for a secret).
    pub fn would_warm_listener(&self, listener: &ListenerConfig) -> bool {
        let routes_to_warming = listener
            .routed_clusters()
            .any(|c| self.warming_clusters.contains_key(c));
        routes_to_warming || self.listener_lacks_secrets(listener)
    }

    fn listener_lacks_secrets(&self, listener: &ListenerConfig) -> bool {
        listener
            .tcp()
            .into_iter()
            .flat_map(|t| t.chains())
            .filter_map(|c| c.tls.as_ref())
            .any(|t| self.lacks(&t.secrets))
    }

    /// Whether a secret `secrets` names over SDS has not arrived (static ones are always
    /// there: `convert` checked them).
    fn lacks(&self, secrets: &TlsSecrets) -> bool {
        secrets
            .keys()
            .any(|k| k.source != SecretSource::Static && !self.secrets.contains_key(k))
    }

    /// The secrets received over SDS.
    pub fn secrets(&self) -> &DynamicSecrets {
        &self.secrets
    }

    /// Applies an SDS change from `source`: new and changed secrets are kept, removals are
    /// ignored (as Envoy, which keeps serving the last secret), and whatever waited only for
    /// them stops warming.
    pub fn apply_secrets(&mut self, source: &SecretSource, change: Change<SecretValue>) {
        for a in change.upserts {
            let key = SecretKey {
                source: source.clone(),
                name: a.name,
            };
            self.secrets.insert(key, a.value);
        }
        let ready: Vec<String> = self
            .warming_clusters
            .keys()
            .filter(|n| {
                self.clusters
                    .get(*n)
                    .is_some_and(|c| !self.would_warm_cluster(c))
            })
            .cloned()
            .collect();
        for name in ready {
            self.join(&name);
        }
        self.promote_listeners(None);
    }

    /// Forgets the secrets received that `watched` (what [`DynamicState::secret_watches`]
    /// says is named now) no longer names: no listener or cluster can use them, and a
    /// config that names one again subscribes to it again (as Envoy's SDS provider, made
    /// per use). Returns their names.
    pub fn forget_unwatched_secrets(
        &mut self,
        watched: &BTreeMap<SecretSource, Vec<String>>,
    ) -> Vec<String> {
        let named = |k: &SecretKey| {
            watched
                .get(&k.source)
                .is_some_and(|names| names.contains(&k.name))
        };
        let forgotten: Vec<SecretKey> =
            self.secrets.keys().filter(|k| !named(k)).cloned().collect();
        for key in &forgotten {
            self.secrets.remove(key);
        }
        forgotten.into_iter().map(|k| k.name).collect()
    }

    /// Every secret named over SDS by the listeners and clusters received (warming or
    /// not) and by `statics`, by source: what the sources must watch.
    pub fn secret_watches(&self, statics: &Rib) -> BTreeMap<SecretSource, Vec<String>> {
        let warming = self.warming_listeners.values().map(|(l, _)| l);
        let listeners = statics.listeners.iter().chain(self.listeners.values());
        let chains = listeners
            .chain(warming)
            .filter_map(|l| l.tcp())
            .flat_map(|t| t.chains())
            .filter_map(|c| c.tls.as_ref())
            .map(|t| &t.secrets);
        let clusters = statics
            .clusters
            .iter()
            .map(|c| &**c)
            .chain(self.clusters.values())
            .filter_map(|c| c.tls.as_ref())
            .map(|t| &t.secrets);
        let mut out: BTreeMap<SecretSource, BTreeSet<String>> = BTreeMap::new();
        for key in chains.chain(clusters).flat_map(|s| s.keys()) {
            if key.source != SecretSource::Static {
                out.entry(key.source.clone())
                    .or_default()
                    .insert(key.name.clone());
            }
        }
        out.into_iter()
            .map(|(s, names)| (s, names.into_iter().collect()))
            .collect()
    }

    /// The earliest warming deadline, if anything is warming with one.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clusters = self.warming_clusters.values().flatten();
        let listeners = self
            .warming_listeners
            .values()
            .filter_map(|(_, d)| d.as_ref());
        clusters.chain(listeners).min().copied()
    }

    /// Adds or replaces listener `name` (warming while it routes to a warming cluster).
    pub fn insert_listener(&mut self, name: String, listener: ListenerConfig) {
        self.insert_listener_until(name, listener, None);
    }

    fn insert_listener_until(
        &mut self,
        name: String,
        listener: ListenerConfig,
        deadline: Option<Instant>,
    ) {
        self.warming_listeners.remove(&name);
        if self.would_warm_listener(&listener) {
            let secrets = listener
                .tcp()
                .into_iter()
                .flat_map(|t| t.chains())
                .filter_map(|c| c.tls.as_ref())
                .map(|t| &t.secrets);
            let deadline = secrets_deadline(self, secrets, deadline);
            self.warming_listeners.insert(name, (listener, deadline));
        } else {
            self.listeners.insert(name, listener);
        }
    }

    fn remove_listener(&mut self, name: &str) {
        self.listeners.remove(name);
        self.warming_listeners.remove(name);
    }

    /// Adds or replaces cluster `name` (warming until its assignment, if it has none yet).
    pub fn insert_cluster(&mut self, name: String, cluster: ClusterConfig) {
        self.insert_cluster_until(name, cluster, None);
    }

    fn insert_cluster_until(
        &mut self,
        name: String,
        cluster: ClusterConfig,
        deadline: Option<Instant>,
    ) {
        let previous = self.joined.remove(&name);
        self.remove_cluster(&name);
        let waits = self.would_warm_cluster(&cluster);
        if let Some(service) = &cluster.eds_service {
            self.by_service
                .entry(service.clone())
                .or_default()
                .insert(name.clone());
        }
        let deadline = secrets_deadline(self, cluster.tls.iter().map(|t| &t.secrets), deadline);
        self.clusters.insert(name.clone(), cluster);
        if waits {
            self.warming_clusters.insert(name.clone(), deadline);
            if let Some(p) = previous {
                self.joined.insert(name, p);
            }
        } else {
            self.join(&name);
        }
    }

    fn remove_cluster(&mut self, name: &str) {
        self.warming_clusters.remove(name);
        let Some(old) = self.clusters.remove(name) else {
            return;
        };
        self.joined.remove(name);
        if let Some(service) = &old.eds_service {
            if let Some(names) = self.by_service.get_mut(service) {
                names.remove(name);
                if names.is_empty() {
                    self.by_service.remove(service);
                }
            }
        }
    }

    /// Adds or replaces the assignment of `service`.
    pub fn insert_endpoints(&mut self, service: String, endpoints: Arc<[EndpointConfig]>) {
        self.endpoints.insert(service.clone(), endpoints);
        self.rejoin_service(&service);
        self.promote_listeners(None);
    }

    fn remove_endpoints(&mut self, service: &str) {
        if self.endpoints.remove(service).is_some() {
            self.rejoin_service(service);
        }
    }

    /// Re-joins every cluster watching `service` (which makes a warming one active).
    fn rejoin_service(&mut self, service: &str) {
        let names: Vec<String> = self
            .by_service
            .get(service)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            let waits = self.warming_clusters.contains_key(&name)
                && self
                    .clusters
                    .get(&name)
                    .is_some_and(|c| self.would_warm_cluster(c));
            if !waits {
                self.join(&name);
            }
        }
    }

    /// Makes the received version of cluster `name` active, with its endpoints.
    fn join(&mut self, name: &str) {
        let Some(c) = self.clusters.get(name) else {
            return;
        };
        let mut joined = c.clone();
        if let Some(service) = &c.eds_service {
            joined.endpoints = self.endpoints.get(service).cloned().unwrap_or_default();
        }
        if self.warming_clusters.remove(name).is_some() {
            self.promoted.0.push(name.to_string());
        }
        self.joined.insert(name.to_string(), Arc::new(joined));
    }

    /// Activates warming listeners whose clusters are all active, or whose deadline is at or
    /// before `now`. Returns their names.
    fn promote_listeners(&mut self, now: Option<Instant>) -> Vec<String> {
        let ready: Vec<String> = self
            .warming_listeners
            .iter()
            .filter(|(_, (l, deadline))| {
                let expired = matches!((now, deadline), (Some(n), Some(d)) if *d <= n);
                let waits = l
                    .routed_clusters()
                    .any(|c| self.warming_clusters.contains_key(c))
                    || self.listener_lacks_secrets(l);
                expired || !waits
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &ready {
            if let Some((l, _)) = self.warming_listeners.remove(name) {
                self.listeners.insert(name.clone(), l);
            }
        }
        self.promoted.1.extend(ready.iter().cloned());
        ready
    }

    /// Ends warming that has reached its deadline (clusters go active without endpoints).
    /// Returns the names of the clusters and listeners that became active.
    pub fn expire(&mut self, now: Instant) -> (Vec<String>, Vec<String>) {
        let clusters: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, d)| d.is_some_and(|d| d <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &clusters {
            self.join(name);
        }
        let listeners = self.promote_listeners(Some(now));
        (clusters, listeners)
    }

    /// Applies a CDS change; new warming clusters wait until `deadline` at most.
    pub fn apply_clusters(&mut self, change: Change<ClusterConfig>, deadline: Option<Instant>) {
        for name in &change.removals {
            self.remove_cluster(name);
        }
        for a in change.upserts {
            self.insert_cluster_until(a.name, a.value, deadline);
        }
        self.promote_listeners(None);
    }

    /// Applies an EDS change.
    pub fn apply_endpoints(&mut self, change: Change<Arc<[EndpointConfig]>>) {
        for name in &change.removals {
            self.remove_endpoints(name);
        }
        for a in change.upserts {
            self.insert_endpoints(a.name, a.value);
        }
    }

    /// Applies an LDS change; new warming listeners wait until `deadline` at most.
    pub fn apply_listeners(&mut self, change: Change<ListenerConfig>, deadline: Option<Instant>) {
        for name in &change.removals {
            self.remove_listener(name);
        }
        for a in change.upserts {
            self.insert_listener_until(a.name, a.value, deadline);
        }
    }

    /// Every EDS cluster, static or received (active or warming): its name, the service
    /// it watches and where the assignment comes from.
    pub fn eds_clusters<'a>(
        &'a self,
        statics: &'a Rib,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a XdsSource)> {
        let statics = statics.clusters.iter().map(|c| &**c);
        statics.chain(self.clusters.values()).filter_map(|c| {
            let service = c.eds_service.as_deref()?;
            Some((c.name.as_str(), service, &c.eds_source))
        })
    }

    /// What each source must watch: the service names of the EDS clusters (static or
    /// received) whose assignment comes from it.
    pub fn eds_watches(&self, statics: &Rib) -> BTreeMap<XdsSource, Vec<String>> {
        let mut watches: BTreeMap<XdsSource, BTreeSet<String>> = BTreeMap::new();
        for (_, service, source) in self.eds_clusters(statics) {
            watches
                .entry(source.clone())
                .or_default()
                .insert(service.to_string());
        }
        watches
            .into_iter()
            .map(|(s, names)| (s, names.into_iter().collect()))
            .collect()
    }

    /// Ends the warming of the clusters watching `services` without their assignment (the
    /// source failed: Envoy lets such a cluster go active without endpoints rather than
    /// hold up the rest), and of the listeners that waited only for them.
    pub fn stop_warming<'a>(&mut self, services: impl IntoIterator<Item = &'a str>) {
        for service in services {
            let names: Vec<String> = self
                .by_service
                .get(service)
                .into_iter()
                .flatten()
                .filter(|n| self.warming_clusters.contains_key(*n))
                .cloned()
                .collect();
            for name in names {
                self.join(&name);
            }
        }
        self.promote_listeners(None);
    }

    /// The service names of every EDS cluster, static or dynamic: what EDS must watch.
    pub fn eds_names(&self, statics: &Rib) -> Vec<String> {
        let mut names: Vec<String> = statics
            .clusters
            .iter()
            .filter_map(|c| c.eds_service.clone())
            .chain(self.by_service.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The RIB to serve: `statics` plus what xDS delivered, with EDS endpoints filled in.
    /// Also returns why each left-out resource was left out. Linear in the number of
    /// resources; endpoint lists are shared, not copied.
    pub fn compose(&self, statics: &Rib) -> (Rib, Vec<String>) {
        let mut rib = statics.clone();
        let mut skipped = Vec::new();
        let static_clusters: HashSet<&str> =
            statics.clusters.iter().map(|c| c.name.as_str()).collect();
        rib.clusters.reserve(self.clusters.len());
        for c in rib.clusters.iter_mut() {
            if let Some(service) = &c.eds_service {
                let endpoints = self.endpoints.get(service).cloned().unwrap_or_default();
                if c.endpoints != endpoints {
                    Arc::make_mut(c).endpoints = endpoints;
                }
            }
        }
        rib.clusters.reserve(self.joined.len());
        for (name, c) in &self.joined {
            if static_clusters.contains(name.as_str()) {
                skipped.push(format!("cluster '{name}': a static cluster has that name"));
                continue;
            }
            rib.clusters.push(c.clone());
        }
        let static_listeners: HashSet<&str> =
            statics.listeners.iter().map(|l| l.name.as_str()).collect();
        let mut addresses: HashMap<Bind, String> = statics
            .listeners
            .iter()
            .flat_map(|l| l.binds().map(|b| (b, l.name.clone())))
            .collect();
        for (name, l) in &self.listeners {
            if static_listeners.contains(name.as_str()) {
                skipped.push(format!(
                    "listener '{name}': a static listener has that name"
                ));
                continue;
            }
            if let Some((bind, other)) = l
                .binds()
                .find_map(|b| addresses.get(&b).map(|other| (b, other)))
            {
                skipped.push(format!(
                    "listener '{name}': address {bind} is listener '{other}''s"
                ));
                continue;
            }
            let admin = rib.admin.socket().map(Bind::tcp);
            if let Some(bind) = l.binds().find(|b| Some(*b) == admin) {
                skipped.push(format!(
                    "listener '{name}': address {} is the admin address",
                    bind.address
                ));
                continue;
            }
            for bind in l.binds() {
                addresses.insert(bind, name.clone());
            }
            rib.listeners.push(l.clone());
        }
        (rib, skipped)
    }
}

/// A warming deadline that also waits for the secrets a resource lacks: the later of
/// `deadline` and each lacking context's `initial_fetch_timeout` from now (`None`, no limit,
/// if either has none).
fn secrets_deadline<'a>(
    state: &DynamicState,
    secrets: impl Iterator<Item = &'a TlsSecrets>,
    deadline: Option<Instant>,
) -> Option<Instant> {
    let now = Instant::now();
    secrets
        .filter(|s| state.lacks(s))
        .fold(deadline, |d, s| match (d, s.initial_fetch_timeout) {
            (Some(d), Some(t)) => Some(d.max(now + t)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;
    use crate::load::parse_rib;
    use crate::rib::{ListenerKind, RouteConfig};
    use crate::xds::test_change as change;
    use std::net::SocketAddr;

    fn statics() -> Rib {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/configs/valid/ads_sotw.yaml"
        ))
        .unwrap();
        parse_rib(&text, Format::Yaml).unwrap().0
    }

    #[test]
    fn eds_endpoints_fill_in_and_static_names_win() {
        let statics = statics();
        let mut d = DynamicState::default();
        assert_eq!(d.eds_names(&statics), ["c"]);
        let ep = EndpointConfig {
            address: "127.0.0.1:9000".parse().unwrap(),
            weight: 1,
            priority: 0,
            locality: Default::default(),
            tunnel: None,
        };
        d.apply_endpoints(change(vec![("c", vec![ep.clone()].into())], &[]));
        let mut clash = statics.cluster("xds").unwrap().clone();
        clash.endpoints = Default::default();
        d.apply_clusters(change(vec![("xds", clash)], &[]), None);
        let (rib, skipped) = d.compose(&statics);
        assert_eq!(*rib.cluster("c").unwrap().endpoints, [ep]);
        assert_eq!(rib.clusters.len(), statics.clusters.len());
        assert!(
            !rib.cluster("xds").unwrap().endpoints.is_empty(),
            "static wins"
        );
        assert_eq!(skipped.len(), 1);
        d.apply_endpoints(change(Vec::new(), &["c"]));
        assert!(d
            .compose(&statics)
            .0
            .cluster("c")
            .unwrap()
            .endpoints
            .is_empty());
    }

    #[test]
    fn a_dynamic_listener_on_a_static_address_is_left_out() {
        let statics = statics();
        let mut d = DynamicState::default();
        let mut l = statics.listeners[0].clone();
        l.name = "dyn".into();
        d.apply_listeners(change(vec![("dyn", l.clone())], &[]), None);
        let (rib, skipped) = d.compose(&statics);
        assert_eq!(rib.listeners.len(), 1);
        assert!(skipped[0].contains("address"), "{skipped:?}");
        l.address = "127.0.0.1:10001".parse().unwrap();
        d.apply_listeners(change(vec![("dyn", l)], &[]), None);
        assert_eq!(d.compose(&statics).0.listeners.len(), 2);
    }

    /// A UDP listener `name` on `address` routing to `cluster`.
    fn udp_listener(name: &str, address: SocketAddr, cluster: &str) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            address,
            additional_addresses: Vec::new(),
            inbound: false,
            kind: ListenerKind::Udp(crate::rib::UdpProxyConfig {
                stat_prefix: name.into(),
                route: RouteConfig::Cluster(cluster.into()),
                idle_timeout: None,
                hash_source_ip: false,
                max_downstream_rx_datagram_bytes: Some(1500),
                max_upstream_rx_datagram_bytes: None,
            }),
        }
    }

    #[test]
    fn a_dynamic_udp_listener_may_share_a_tcp_address_not_a_udp_one() {
        let statics = statics();
        let tcp = statics.listeners[0].address;
        let mut d = DynamicState::default();
        d.apply_listeners(
            change(
                vec![
                    ("u1", udp_listener("u1", tcp, "c")),
                    ("u2", udp_listener("u2", tcp, "c")),
                ],
                &[],
            ),
            None,
        );
        let (rib, skipped) = d.compose(&statics);
        let names: Vec<&str> = rib.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, [statics.listeners[0].name.as_str(), "u1"]);
        assert_eq!(
            skipped,
            [format!(
                "listener 'u2': address {tcp}/udp is listener 'u1''s"
            )]
        );
    }

    #[test]
    fn a_udp_listener_waits_for_its_warming_cluster() {
        let statics = statics();
        let mut d = DynamicState::default();
        d.apply_clusters(change(vec![("a", eds_cluster("a", "sa"))], &[]), None);
        let u = udp_listener("u", "127.0.0.1:10053".parse().unwrap(), "a");
        assert!(d.would_warm_listener(&u));
        d.apply_listeners(change(vec![("u", u)], &[]), None);
        assert_eq!(d.warming_listeners().collect::<Vec<_>>(), ["u"]);
        d.apply_endpoints(change(vec![("sa", one_endpoint(7))], &[]));
        assert_eq!(d.take_promoted().1, ["u"]);
        assert!(d.compose(&statics).0.listener("u").is_some());
    }

    fn eds_cluster(name: &str, service: &str) -> ClusterConfig {
        let mut c = statics().cluster("c").unwrap().clone();
        c.name = name.into();
        c.eds_service = Some(service.into());
        c
    }

    fn one_endpoint(port: u16) -> Arc<[EndpointConfig]> {
        vec![EndpointConfig {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            priority: 0,
            locality: Default::default(),
            tunnel: None,
        }]
        .into()
    }

    #[test]
    fn an_endpoint_change_rebuilds_only_the_clusters_watching_it() {
        let statics = statics();
        let mut d = DynamicState::default();
        let clusters = vec![
            ("a", eds_cluster("a", "s1")),
            ("b", eds_cluster("b", "s1")),
            ("z", eds_cluster("z", "s2")),
        ];
        d.apply_clusters(change(clusters, &[]), None);
        d.apply_endpoints(change(
            vec![("s1", one_endpoint(1)), ("s2", one_endpoint(2))],
            &[],
        ));
        let (before, _) = d.compose(&statics);
        d.apply_endpoints(change(vec![("s2", one_endpoint(3))], &[]));
        let (after, _) = d.compose(&statics);
        let find = |rib: &Rib, name: &str| rib.clusters.iter().find(|c| c.name == name).cloned();
        for same in ["a", "b"] {
            assert!(
                Arc::ptr_eq(&find(&before, same).unwrap(), &find(&after, same).unwrap()),
                "{same} is shared, not rebuilt"
            );
        }
        let z = find(&after, "z").unwrap();
        assert_eq!(z.endpoints[0].address.port(), 3);
        assert!(!Arc::ptr_eq(&find(&before, "z").unwrap(), &z));
        // Removing a cluster forgets its watch; the others keep theirs.
        d.apply_clusters(change(Vec::<(&str, ClusterConfig)>::new(), &["a"]), None);
        assert_eq!(d.eds_names(&statics), ["c", "s1", "s2"]);
        d.apply_clusters(change(Vec::<(&str, ClusterConfig)>::new(), &["b"]), None);
        assert_eq!(d.eds_names(&statics), ["c", "s2"]);
        assert_eq!(
            d.counts(),
            (0, 1, 2),
            "assignments stay until EDS removes them"
        );
    }

    fn listener_to(name: &str, cluster: &str, port: u16) -> ListenerConfig {
        let mut l = statics().listeners[0].clone();
        l.name = name.into();
        l.address = SocketAddr::from(([127, 0, 0, 1], port));
        let ListenerKind::Tcp(t) = &mut l.kind else {
            unreachable!("the static listener is TCP")
        };
        for c in &mut t.filter_chains {
            c.tcp_proxy.route = RouteConfig::Cluster(cluster.into());
        }
        l
    }

    #[test]
    fn a_cluster_warms_until_its_assignment_and_its_listener_waits_for_it() {
        let statics = statics();
        let mut d = DynamicState::default();
        let soon = Instant::now() + std::time::Duration::from_secs(60);
        d.apply_clusters(change(vec![("a", eds_cluster("a", "sa"))], &[]), Some(soon));
        assert_eq!(d.warming_clusters().collect::<Vec<_>>(), ["a"]);
        let (rib, _) = d.compose(&statics);
        assert!(
            rib.cluster("a").is_none(),
            "a warming cluster does not serve"
        );
        d.apply_listeners(
            change(vec![("l", listener_to("l", "a", 10001))], &[]),
            Some(soon),
        );
        assert_eq!(d.warming_listeners().collect::<Vec<_>>(), ["l"]);
        assert_eq!(
            d.compose(&statics).0.listeners.len(),
            statics.listeners.len()
        );
        assert_eq!(d.next_deadline(), Some(soon));

        d.apply_endpoints(change(vec![("sa", one_endpoint(7))], &[]));
        assert_eq!(
            d.take_promoted(),
            (vec!["a".to_string()], vec!["l".to_string()])
        );
        let (rib, _) = d.compose(&statics);
        assert_eq!(rib.cluster("a").unwrap().endpoints[0].address.port(), 7);
        assert!(rib.listener("l").is_some());
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn an_update_warms_while_the_old_version_serves_and_a_deadline_ends_warming() {
        let statics = statics();
        let mut d = DynamicState::default();
        d.apply_clusters(change(vec![("a", eds_cluster("a", "sa"))], &[]), None);
        d.apply_endpoints(change(vec![("sa", one_endpoint(7))], &[]));
        d.take_promoted();
        // The new version watches a service with no assignment yet: the old one serves.
        let now = Instant::now();
        let deadline = now + std::time::Duration::from_secs(5);
        d.apply_clusters(
            change(vec![("a", eds_cluster("a", "sb"))], &[]),
            Some(deadline),
        );
        let (rib, _) = d.compose(&statics);
        assert_eq!(rib.cluster("a").unwrap().eds_service.as_deref(), Some("sa"));
        assert_eq!(d.expire(now), (vec![], vec![]), "not yet");
        let (clusters, _) = d.expire(deadline);
        assert_eq!(clusters, ["a"]);
        let (rib, _) = d.compose(&statics);
        let a = rib.cluster("a").unwrap();
        assert_eq!(a.eds_service.as_deref(), Some("sb"));
        assert!(
            a.endpoints.is_empty(),
            "timed out: active with no endpoints"
        );
        // Removing a warming cluster removes it for good.
        d.apply_clusters(change(vec![("b", eds_cluster("b", "sc"))], &[]), None);
        d.apply_clusters(change(Vec::<(&str, ClusterConfig)>::new(), &["b"]), None);
        assert_eq!(d.warming_clusters().count(), 0);
        assert!(d.compose(&statics).0.cluster("b").is_none());
    }

    #[test]
    fn secrets_no_listener_or_cluster_names_are_forgotten() {
        let mut d = DynamicState::default();
        let value = SecretValue::Validation(crate::rib::ValidationParts::default());
        d.apply_secrets(
            &SecretSource::Ads,
            change(vec![("kept", value.clone()), ("dropped", value)], &[]),
        );
        assert_eq!(d.secrets().len(), 2);
        let watched = BTreeMap::from([(SecretSource::Ads, vec!["kept".to_string()])]);
        assert_eq!(d.forget_unwatched_secrets(&watched), ["dropped"]);
        let left: Vec<_> = d.secrets().keys().map(|k| k.name.as_str()).collect();
        assert_eq!(left, ["kept"]);
        assert!(d.forget_unwatched_secrets(&watched).is_empty());
    }
}
