//! What xDS has delivered, and how it joins the bootstrap's static resources into the RIB
//! the FIB is compiled from.
//!
//! Rules (Envoy's): static resources win — a dynamic listener or cluster whose name (or, for a
//! listener, address) a static one already has is left out and reported; an EDS cluster's
//! endpoints are the last assignment received for its service name (none until one arrives,
//! so connections to it find no healthy upstream rather than a stale one); removing a cluster
//! over CDS drops its endpoints from the RIB but keeps the assignment until EDS removes it.

use crate::config::resource;
use crate::rib::{ClusterConfig, EndpointConfig, ListenerConfig, Rib};
use crate::xds::Change;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// Resources received over xDS, by name.
///
/// Besides what was received, it keeps every received cluster joined with its endpoints, up
/// to date after each change: composing the RIB then copies pointers only, and a cluster
/// the change did not touch is the same `Arc` as before (which is how compilation knows it
/// need not rebuild it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicState {
    listeners: BTreeMap<String, ListenerConfig>,
    /// As received (an EDS cluster's endpoints are empty here).
    clusters: BTreeMap<String, ClusterConfig>,
    /// Endpoint assignments by service name.
    endpoints: BTreeMap<String, Arc<[EndpointConfig]>>,
    /// `clusters` with their EDS endpoints filled in.
    joined: BTreeMap<String, Arc<ClusterConfig>>,
    /// The received clusters watching each EDS service name.
    by_service: BTreeMap<String, BTreeSet<String>>,
}

impl DynamicState {
    /// Listeners, clusters and endpoint assignments held.
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

    /// Adds or replaces listener `name`.
    pub fn insert_listener(&mut self, name: String, listener: ListenerConfig) {
        self.listeners.insert(name, listener);
    }

    /// Adds or replaces cluster `name`.
    pub fn insert_cluster(&mut self, name: String, cluster: ClusterConfig) {
        self.remove_cluster(&name);
        if let Some(service) = &cluster.eds_service {
            self.by_service
                .entry(service.clone())
                .or_default()
                .insert(name.clone());
        }
        self.clusters.insert(name.clone(), cluster);
        self.join(&name);
    }

    fn remove_cluster(&mut self, name: &str) {
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
    }

    fn remove_endpoints(&mut self, service: &str) {
        if self.endpoints.remove(service).is_some() {
            self.rejoin_service(service);
        }
    }

    /// Re-joins every cluster watching `service`.
    fn rejoin_service(&mut self, service: &str) {
        let names: Vec<String> = self
            .by_service
            .get(service)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.join(&name);
        }
    }

    /// Rebuilds the joined form of cluster `name`.
    fn join(&mut self, name: &str) {
        let Some(c) = self.clusters.get(name) else {
            return;
        };
        let mut joined = c.clone();
        if let Some(service) = &c.eds_service {
            joined.endpoints = self.endpoints.get(service).cloned().unwrap_or_default();
        }
        self.joined.insert(name.to_string(), Arc::new(joined));
    }

    /// Applies a CDS change.
    pub fn apply_clusters(&mut self, change: Change<ClusterConfig>) {
        for name in &change.removals {
            self.remove_cluster(name);
        }
        for a in change.upserts {
            self.insert_cluster(a.name, a.value);
        }
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

    /// Applies an LDS change.
    pub fn apply_listeners(&mut self, change: Change<ListenerConfig>) {
        for name in &change.removals {
            self.listeners.remove(name);
        }
        for a in change.upserts {
            self.listeners.insert(a.name, a.value);
        }
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
        let mut addresses: HashMap<SocketAddr, String> = statics
            .listeners
            .iter()
            .map(|l| (l.address, l.name.clone()))
            .collect();
        for (name, l) in &self.listeners {
            if static_listeners.contains(name.as_str()) {
                skipped.push(format!(
                    "listener '{name}': a static listener has that name"
                ));
                continue;
            }
            if let Some(other) = addresses.get(&l.address) {
                skipped.push(format!(
                    "listener '{name}': address {} is listener '{other}''s",
                    l.address
                ));
                continue;
            }
            if l.address == rib.admin.address {
                skipped.push(format!(
                    "listener '{name}': address {} is the admin address",
                    l.address
                ));
                continue;
            }
            addresses.insert(l.address, name.clone());
            rib.listeners.push(l.clone());
        }
        (rib, skipped)
    }
}

/// What `/config_dump` shows of the resources received over xDS; `None` without xDS.
#[derive(Debug, Default)]
pub struct XdsDump(pub Option<XdsTypeDumps>);

/// The dumps of clusters and listeners.
#[derive(Debug, Default)]
pub struct XdsTypeDumps {
    pub clusters: TypeDump,
    pub listeners: TypeDump,
}

impl XdsDump {
    /// `{"clusters": {version_info, dynamic_active_clusters}, "listeners": {version_info,
    /// dynamic_listeners}}`, or `Value::Null` without xDS. Payloads are converted to JSON
    /// here, when asked for, not on every update.
    pub fn render(&self) -> Value {
        match &self.0 {
            None => Value::Null,
            Some(d) => json!({
                "clusters": d.clusters.render("dynamic_active_clusters", "cluster"),
                "listeners": d.listeners.render("dynamic_listeners", "listener"),
            }),
        }
    }
}

/// What `/config_dump` shows of one resource type received over xDS (Envoy's
/// `DynamicCluster` / `DynamicListener` entries).
#[derive(Debug, Default)]
pub struct TypeDump {
    /// The server's version of the last response.
    version: String,
    /// By name: the active resource (version, payload, when) and the last rejected one
    /// (payload, when, why).
    entries: BTreeMap<String, DumpEntry>,
}

#[derive(Debug, Default)]
struct DumpEntry {
    active: Option<(String, Any, String)>,
    error: Option<(Option<Any>, String, String)>,
}

impl TypeDump {
    /// Records a change received at `now` (RFC 3339).
    pub fn record<T>(&mut self, change: &Change<T>, now: &str) {
        if !change.version.is_empty() {
            self.version = change.version.clone();
        }
        for name in &change.removals {
            self.entries.remove(name);
        }
        for a in &change.upserts {
            let e = self.entries.entry(a.name.clone()).or_default();
            e.active = Some((a.version.clone(), a.resource.clone(), now.into()));
            e.error = None;
        }
        for r in &change.rejected {
            let e = self.entries.entry(r.name.clone()).or_default();
            e.error = Some((r.resource.clone(), now.into(), r.reason.clone()));
        }
    }

    /// `{"version_info", "<field>": [...]}` with each entry in Envoy's shape: clusters as
    /// `{version_info, cluster, last_updated}` (active only), listeners as
    /// `{name, active_state, error_state}`.
    pub fn render(&self, field: &str, key: &str) -> Value {
        let items: Vec<Value> = self
            .entries
            .iter()
            .filter_map(|(name, e)| {
                let active = e.active.as_ref().map(|(version, any, when)| {
                    json!({"version_info": version, key: resource::to_json(any), "last_updated": when})
                });
                let error = e.error.as_ref().map(|(any, when, details)| {
                    let failed = any.as_ref().map_or(Value::Null, resource::to_json);
                    json!({"failed_configuration": failed, "last_update_attempt": when, "details": details})
                });
                if key == "cluster" {
                    return active;
                }
                let mut m = Map::new();
                m.insert("name".into(), name.clone().into());
                if let Some(a) = active {
                    m.insert("active_state".into(), a);
                }
                if let Some(e) = error {
                    m.insert("error_state".into(), e);
                }
                Some(Value::Object(m))
            })
            .collect();
        json!({"version_info": self.version, field: items})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_rib, Format};
    use crate::xds::Accepted;

    fn statics() -> Rib {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/configs/valid/ads_sotw.yaml"
        ))
        .unwrap();
        parse_rib(&text, Format::Yaml).unwrap().0
    }

    fn change<T>(upserts: Vec<(&str, T)>, removals: &[&str]) -> Change<T> {
        Change {
            type_url: String::new(),
            upserts: upserts
                .into_iter()
                .map(|(n, value)| Accepted {
                    name: n.into(),
                    version: "1".into(),
                    value,
                    resource: Default::default(),
                })
                .collect(),
            removals: removals.iter().map(|s| s.to_string()).collect(),
            rejected: Vec::new(),
            version: "1".into(),
        }
    }

    #[test]
    fn eds_endpoints_fill_in_and_static_names_win() {
        let statics = statics();
        let mut d = DynamicState::default();
        assert_eq!(d.eds_names(&statics), ["c"]);
        let ep = EndpointConfig {
            address: "127.0.0.1:9000".parse().unwrap(),
            weight: 1,
        };
        d.apply_endpoints(change(vec![("c", vec![ep.clone()].into())], &[]));
        let mut clash = statics.cluster("xds").unwrap().clone();
        clash.endpoints = Default::default();
        d.apply_clusters(change(vec![("xds", clash)], &[]));
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
    fn the_dump_keeps_versions_removals_and_rejections() {
        let mut dump = TypeDump::default();
        let mut c = change(vec![("a", 1u8), ("b", 2u8)], &[]);
        c.version = "v1".into();
        dump.record(&c, "2026-11-25T00:00:00.000Z");
        let mut c = change(vec![("a", 3u8)], &["b"]);
        c.version = "v2".into();
        c.rejected
            .push(crate::xds::Rejected::new("x", "port_value: 70000"));
        dump.record(&c, "2026-11-25T00:00:01.000Z");
        let v = dump.render("dynamic_listeners", "listener");
        assert_eq!(v["version_info"], "v2");
        let items = v["dynamic_listeners"].as_array().unwrap();
        let names: Vec<_> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "x"], "b was removed");
        assert_eq!(
            items[0]["active_state"]["last_updated"],
            "2026-11-25T00:00:01.000Z"
        );
        assert_eq!(items[1]["error_state"]["details"], "port_value: 70000");
        assert!(items[1].get("active_state").is_none());
        let clusters = dump.render("dynamic_active_clusters", "cluster");
        let items = clusters["dynamic_active_clusters"].as_array().unwrap();
        assert_eq!(items.len(), 1, "clusters list active ones only");
        assert_eq!(items[0]["version_info"], "1");
    }

    #[test]
    fn a_dynamic_listener_on_a_static_address_is_left_out() {
        let statics = statics();
        let mut d = DynamicState::default();
        let mut l = statics.listeners[0].clone();
        l.name = "dyn".into();
        d.apply_listeners(change(vec![("dyn", l.clone())], &[]));
        let (rib, skipped) = d.compose(&statics);
        assert_eq!(rib.listeners.len(), 1);
        assert!(skipped[0].contains("address"), "{skipped:?}");
        l.address = "127.0.0.1:10001".parse().unwrap();
        d.apply_listeners(change(vec![("dyn", l)], &[]));
        assert_eq!(d.compose(&statics).0.listeners.len(), 2);
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
        d.apply_clusters(change(clusters, &[]));
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
        d.apply_clusters(change(Vec::<(&str, ClusterConfig)>::new(), &["a"]));
        assert_eq!(d.eds_names(&statics), ["c", "s1", "s2"]);
        d.apply_clusters(change(Vec::<(&str, ClusterConfig)>::new(), &["b"]));
        assert_eq!(d.eds_names(&statics), ["c", "s2"]);
        assert_eq!(
            d.counts(),
            (0, 1, 2),
            "assignments stay until EDS removes them"
        );
    }
}
