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
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Resources received over xDS, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicState {
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub clusters: BTreeMap<String, ClusterConfig>,
    /// Endpoint assignments by service name.
    pub endpoints: BTreeMap<String, Vec<EndpointConfig>>,
}

/// Applies a change's upserts and removals to `map`.
pub fn apply<T>(map: &mut BTreeMap<String, T>, change: Change<T>) {
    for name in change.removals {
        map.remove(&name);
    }
    for a in change.upserts {
        map.insert(a.name, a.value);
    }
}

impl DynamicState {
    /// The service names of every EDS cluster, static or dynamic: what EDS must watch.
    pub fn eds_names(&self, statics: &Rib) -> Vec<String> {
        let mut names: Vec<String> = statics
            .clusters
            .iter()
            .chain(self.clusters.values())
            .filter_map(|c| c.eds_service.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The RIB to serve: `statics` plus what xDS delivered, with EDS endpoints filled in.
    /// Also returns why each left-out resource was left out.
    pub fn compose(&self, statics: &Rib) -> (Rib, Vec<String>) {
        let mut rib = statics.clone();
        let mut skipped = Vec::new();
        for (name, c) in &self.clusters {
            if rib.cluster(name).is_some() {
                skipped.push(format!("cluster '{name}': a static cluster has that name"));
                continue;
            }
            rib.clusters.push(c.clone());
        }
        for (name, l) in &self.listeners {
            if rib.listener(name).is_some() {
                skipped.push(format!(
                    "listener '{name}': a static listener has that name"
                ));
                continue;
            }
            if let Some(other) = rib.listeners.iter().find(|o| o.address == l.address) {
                skipped.push(format!(
                    "listener '{name}': address {} is listener '{}''s",
                    l.address, other.name
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
            rib.listeners.push(l.clone());
        }
        for c in &mut rib.clusters {
            if let Some(service) = &c.eds_service {
                c.endpoints = self.endpoints.get(service).cloned().unwrap_or_default();
            }
        }
        (rib, skipped)
    }
}

/// What `/config_dump` shows of one resource type received over xDS (Envoy's
/// `DynamicCluster` / `DynamicListener` entries).
#[derive(Debug, Default)]
pub struct TypeDump {
    /// The server's version of the last response.
    version: String,
    /// By name: the active resource (version, `Any` as JSON, when) and the last rejected one
    /// (`Any` as JSON, when, why).
    entries: BTreeMap<String, DumpEntry>,
}

#[derive(Debug, Default)]
struct DumpEntry {
    active: Option<(String, Value, String)>,
    error: Option<(Value, String, String)>,
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
            e.active = Some((
                a.version.clone(),
                resource::to_json(&a.resource),
                now.into(),
            ));
            e.error = None;
        }
        for r in &change.rejected {
            let failed = r.resource.as_ref().map_or(Value::Null, resource::to_json);
            let e = self.entries.entry(r.name.clone()).or_default();
            e.error = Some((failed, now.into(), r.reason.clone()));
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
                    json!({"version_info": version, key: any, "last_updated": when})
                });
                let error = e.error.as_ref().map(|(any, when, details)| {
                    json!({"failed_configuration": any, "last_update_attempt": when, "details": details})
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
        apply(&mut d.endpoints, change(vec![("c", vec![ep.clone()])], &[]));
        let mut clash = statics.cluster("xds").unwrap().clone();
        clash.endpoints.clear();
        apply(&mut d.clusters, change(vec![("xds", clash)], &[]));
        let (rib, skipped) = d.compose(&statics);
        assert_eq!(rib.cluster("c").unwrap().endpoints, [ep]);
        assert_eq!(rib.clusters.len(), statics.clusters.len());
        assert!(
            !rib.cluster("xds").unwrap().endpoints.is_empty(),
            "static wins"
        );
        assert_eq!(skipped.len(), 1);
        apply(&mut d.endpoints, change(Vec::new(), &["c"]));
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
        apply(&mut d.listeners, change(vec![("dyn", l.clone())], &[]));
        let (rib, skipped) = d.compose(&statics);
        assert_eq!(rib.listeners.len(), 1);
        assert!(skipped[0].contains("address"), "{skipped:?}");
        l.address = "127.0.0.1:10001".parse().unwrap();
        apply(&mut d.listeners, change(vec![("dyn", l)], &[]));
        assert_eq!(d.compose(&statics).0.listeners.len(), 2);
    }
}
