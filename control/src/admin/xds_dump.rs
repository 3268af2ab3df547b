//! What `/config_dump` shows of the resources received over xDS: the control thread
//! records each change ([`TypeDump::record`], [`TypeDump::promote`]) and the admin renders
//! the record in Envoy's shapes (`ClustersConfigDump`'s `dynamic_active_clusters` and
//! `dynamic_warming_clusters`, `ListenersConfigDump`'s `dynamic_listeners` with their
//! active, warming and error states, `SecretsConfigDump`'s `dynamic_active_secrets` from
//! ADS or watched files). Payloads stay binary until a dump is asked for.

use crate::xds::resource;
use crate::xds::Change;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// What `/config_dump` shows of the resources received over xDS (`types`: `None` without
/// xDS) and of the secrets received over ADS or from SDS files (with or without xDS).
#[derive(Debug, Default)]
pub struct XdsDump {
    pub types: Option<XdsTypeDumps>,
    pub secrets: TypeDump,
}

/// The dumps of clusters and listeners.
#[derive(Debug, Default)]
pub struct XdsTypeDumps {
    pub clusters: TypeDump,
    pub listeners: TypeDump,
}

impl XdsDump {
    /// `{"clusters": {version_info, dynamic_active_clusters, dynamic_warming_clusters},
    /// "listeners": {version_info, dynamic_listeners}, "secrets": {dynamic_active_secrets}}`
    /// (clusters and listeners only with xDS). Payloads are converted to JSON here, when
    /// asked for, not on every update.
    pub fn render(&self) -> Value {
        let mut out = self.render_types();
        if !self.secrets.entries.is_empty() {
            if out.is_null() {
                out = json!({});
            }
            out["secrets"] = self.secrets.render_secrets();
        }
        out
    }

    fn render_types(&self) -> Value {
        match &self.types {
            None => Value::Null,
            Some(d) => {
                let mut clusters = d
                    .clusters
                    .render_list("dynamic_active_clusters", |e| e.active.as_ref());
                clusters["dynamic_warming_clusters"] = d
                    .clusters
                    .render_list("dynamic_warming_clusters", |e| e.warming.as_ref())
                    ["dynamic_warming_clusters"]
                    .take();
                json!({
                    "clusters": clusters,
                    "listeners": d.listeners.render_listeners(),
                })
            }
        }
    }
}

/// One version of a resource: (version, payload, when).
type Version = (String, Any, String);

/// What `/config_dump` shows of one resource type received over xDS (Envoy's
/// `DynamicCluster` / `DynamicListener` entries).
#[derive(Debug, Default)]
pub struct TypeDump {
    /// The server's version of the last response.
    version: String,
    /// By name: the version serving, the one warming, and the last rejected one (payload,
    /// when, why).
    entries: BTreeMap<String, DumpEntry>,
}

#[derive(Debug, Default)]
struct DumpEntry {
    active: Option<Version>,
    warming: Option<Version>,
    error: Option<(Option<Any>, String, String)>,
}

impl TypeDump {
    /// Records a change received at `now` (RFC 3339); an upsert `warming` names is recorded
    /// as warming, the version before it staying active.
    pub fn record<T>(&mut self, change: &Change<T>, now: &str, warming: impl Fn(&str) -> bool) {
        if !change.version.is_empty() {
            self.version = change.version.clone();
        }
        for name in &change.removals {
            self.entries.remove(name);
        }
        self.record_upserts(&change.upserts, now, warming);
        for r in &change.rejected {
            let e = self.entries.entry(r.name.clone()).or_default();
            e.error = Some((r.resource.clone(), now.into(), r.reason.clone()));
        }
    }

    /// Records new versions received at `now` (of a change whose removals and rejections
    /// are not shown: secrets the server drops stay in use); `warming` as in
    /// [`TypeDump::record`].
    pub fn record_upserts<T>(
        &mut self,
        upserts: &[crate::xds::Accepted<T>],
        now: &str,
        warming: impl Fn(&str) -> bool,
    ) {
        for a in upserts {
            let e = self.entries.entry(a.name.clone()).or_default();
            let v = (a.version.clone(), a.resource.clone(), now.into());
            if warming(&a.name) {
                e.warming = Some(v);
            } else {
                e.active = Some(v);
                e.warming = None;
            }
            e.error = None;
        }
    }

    /// `name` is no longer held (a secret nothing names any more).
    pub fn forget(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// The warming version of `name` has become active.
    pub fn promote(&mut self, name: &str) {
        if let Some(e) = self.entries.get_mut(name) {
            if let Some(w) = e.warming.take() {
                e.active = Some(w);
            }
        }
    }

    /// `{"version_info", "<field>": [{version_info, <key>, last_updated}]}` of the versions
    /// `pick` chooses (clusters: active or warming).
    fn render_list(&self, field: &str, pick: impl Fn(&DumpEntry) -> Option<&Version>) -> Value {
        let items: Vec<Value> = self
            .entries
            .values()
            .filter_map(|e| pick(e).map(|v| version_json(v, "cluster")))
            .collect();
        json!({"version_info": self.version, field: items})
    }

    /// `{"version_info", "dynamic_listeners": [{name, active_state, warming_state,
    /// error_state}]}`.
    /// `{"dynamic_active_secrets": [{name, version_info, last_updated, secret}]}`: the
    /// version serving of each secret received (Envoy's `DynamicSecret`).
    fn render_secrets(&self) -> Value {
        let items: Vec<Value> = self
            .entries
            .iter()
            .filter_map(|(name, e)| {
                let (version, any, when) = e.active.as_ref()?;
                Some(json!({
                    "name": name,
                    "version_info": version,
                    "last_updated": when,
                    "secret": resource::to_json(any),
                }))
            })
            .collect();
        json!({ "dynamic_active_secrets": items })
    }

    fn render_listeners(&self) -> Value {
        let items: Vec<Value> = self
            .entries
            .iter()
            .map(|(name, e)| {
                let mut m = Map::new();
                m.insert("name".into(), name.clone().into());
                if let Some(a) = &e.active {
                    m.insert("active_state".into(), version_json(a, "listener"));
                }
                if let Some(w) = &e.warming {
                    m.insert("warming_state".into(), version_json(w, "listener"));
                }
                if let Some((any, when, details)) = &e.error {
                    let failed = any.as_ref().map_or(Value::Null, resource::to_json);
                    m.insert(
                        "error_state".into(),
                        json!({"failed_configuration": failed, "last_update_attempt": when, "details": details}),
                    );
                }
                Value::Object(m)
            })
            .collect();
        json!({"version_info": self.version, "dynamic_listeners": items})
    }
}

fn version_json((version, any, when): &Version, key: &str) -> Value {
    json!({"version_info": version, key: resource::to_json(any), "last_updated": when})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::test_change as change;

    #[test]
    fn the_dump_keeps_versions_removals_and_rejections() {
        let mut dump = TypeDump::default();
        let mut c = change(vec![("a", 1u8), ("b", 2u8)], &[]);
        c.version = "v1".into();
        dump.record(&c, "2026-11-25T00:00:00.000Z", |_| false);
        let mut c = change(vec![("a", 3u8)], &["b"]);
        c.version = "v2".into();
        c.rejected
            .push(crate::xds::Rejected::new("x", "port_value: 70000"));
        dump.record(&c, "2026-11-25T00:00:01.000Z", |_| false);
        let v = dump.render_listeners();
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
        let clusters = dump.render_list("dynamic_active_clusters", |e| e.active.as_ref());
        let items = clusters["dynamic_active_clusters"].as_array().unwrap();
        assert_eq!(items.len(), 1, "clusters list active ones only");
        assert_eq!(items[0]["version_info"], "1");

        // A warming update: the old version stays active until promoted.
        let mut c = change(vec![("a", 4u8)], &[]);
        c.upserts[0].version = "3".into();
        dump.record(&c, "2026-11-25T00:00:02.000Z", |n| n == "a");
        let v = dump.render_listeners();
        let a = &v["dynamic_listeners"][0];
        assert_eq!(a["active_state"]["version_info"], "1");
        assert_eq!(a["warming_state"]["version_info"], "3");
        dump.promote("a");
        let v = dump.render_listeners();
        let a = &v["dynamic_listeners"][0];
        assert_eq!(a["active_state"]["version_info"], "3");
        assert!(a.get("warming_state").is_none());
    }

    #[test]
    fn secrets_render_the_version_serving_by_name() {
        let mut dump = XdsDump::default();
        assert!(dump.render().is_null(), "nothing without xDS or secrets");
        let mut c = change(vec![("spiffe", 1u8)], &[]);
        c.version = "v1".into();
        dump.secrets
            .record(&c, "2026-12-07T00:00:00.000Z", |_| false);
        let v = dump.render();
        let s = &v["secrets"]["dynamic_active_secrets"][0];
        assert_eq!(s["name"], "spiffe");
        assert_eq!(s["version_info"], "1");
        assert_eq!(s["last_updated"], "2026-12-07T00:00:00.000Z");
        assert!(v.get("clusters").is_none(), "no xDS types without xDS");
    }
}
