//! What xDS has delivered, and how it joins the bootstrap's static resources into the RIB
//! the FIB is compiled from.
//!
//! Rules (Envoy's): static resources win — a dynamic listener or cluster whose name (or, for a
//! listener, address) a static one already has is left out and reported; an EDS cluster's
//! endpoints are the last assignment received for its service name (none until one arrives,
//! so connections to it find no healthy upstream rather than a stale one); removing a cluster
//! over CDS drops its endpoints from the RIB but keeps the assignment until EDS removes it.

use crate::rib::{ClusterConfig, EndpointConfig, ListenerConfig, Rib};
use crate::xds::Change;
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
