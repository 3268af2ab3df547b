//! `--state-dir`: the xDS resources last accepted, kept on disk so that a restart serves them
//! at once, before the management server answers (then the server's answers replace them).
//!
//! One file, `xds-state.json`: `{"listeners": [...], "clusters": [...], "endpoints": [...]}`,
//! each item a resource as proto3 JSON with its `@type`, written whole to a temporary file
//! and renamed over the old one after every accepted change (a crash leaves the old or the
//! new file, never half of one). On load every resource goes through the same validation as
//! when it arrived; an unreadable file or resource is skipped with a warning (a cold start).

use crate::config::resource;
use crate::dynamic::DynamicState;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

const FILE: &str = "xds-state.json";

/// Accepted payloads by kind and name.
#[derive(Debug, Default)]
pub struct Persisted {
    pub listeners: BTreeMap<String, Any>,
    pub clusters: BTreeMap<String, Any>,
    pub endpoints: BTreeMap<String, Any>,
}

impl Persisted {
    /// Records an accepted change's payloads in `map` (one of the three).
    pub fn record<T>(map: &mut BTreeMap<String, Any>, change: &crate::xds::Change<T>) {
        for n in &change.removals {
            map.remove(n);
        }
        for a in &change.upserts {
            map.insert(a.name.clone(), a.resource.clone());
        }
    }

    /// Writes the file in `dir` (created if missing), atomically.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let list = |m: &BTreeMap<String, Any>| -> Vec<Value> {
            m.values().map(resource::to_json).collect()
        };
        let doc = json!({
            "listeners": list(&self.listeners),
            "clusters": list(&self.clusters),
            "endpoints": list(&self.endpoints),
        });
        let tmp = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
        std::fs::rename(&tmp, path(dir))
    }

    /// Reads the file in `dir` into payloads and the validated state. `Ok(None)` when there is
    /// no file; resources that no longer validate are skipped (and logged).
    pub fn load(dir: &Path) -> io::Result<Option<(Persisted, DynamicState)>> {
        let bytes = match std::fs::read(path(dir)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let doc: Value = serde_json::from_slice(&bytes)?;
        let mut persisted = Persisted::default();
        let mut state = DynamicState::default();
        for item in items(&doc, "clusters") {
            if let Some((any, (name, c))) = decode(item, resource::cluster) {
                state.insert_cluster(name.clone(), c);
                persisted.clusters.insert(name, any);
            }
        }
        for item in items(&doc, "endpoints") {
            if let Some((any, (name, e))) = decode(item, resource::endpoints) {
                state.insert_endpoints(name.clone(), e);
                persisted.endpoints.insert(name, any);
            }
        }
        for item in items(&doc, "listeners") {
            if let Some((any, (name, l))) = decode(item, resource::listener) {
                state.insert_listener(name.clone(), l);
                persisted.listeners.insert(name, any);
            }
        }
        Ok(Some((persisted, state)))
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn items<'a>(doc: &'a Value, kind: &str) -> &'a [Value] {
    doc.get(kind)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn decode<T>(
    item: &Value,
    validate: impl Fn(&Any) -> Result<T, crate::xds::Rejected>,
) -> Option<(Any, T)> {
    let Some(any) = resource::from_json(item) else {
        tracing::warn!("state dir: a resource does not parse; skipped");
        return None;
    };
    match validate(&any) {
        Ok(v) => Some((any, v)),
        Err(r) => {
            tracing::warn!(resource = %r.name, reason = %r.reason, "state dir: resource no longer valid; skipped");
            None
        }
    }
}
