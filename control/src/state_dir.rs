//! `--state-dir`: the xDS resources last accepted, kept on disk so that a restart serves them
//! at once, before the management server answers (then the server's answers replace them).
//!
//! One file, `xds-state.json`: `{"listeners": [...], "clusters": [...], "endpoints": [...],
//! "versions": {"listeners": {name: version}, ...}}`, each item a resource as proto3 JSON
//! with its `@type`, written whole to a temporary file and renamed over the old one (a crash
//! leaves the old or the new file, never half of one) by the `state-dir` thread, shortly
//! after each accepted change (the latest state wins; the last one is written at stop). On load
//! every resource goes through the same validation as when it arrived; an unreadable file or
//! resource is skipped with a warning (a cold start).
//!
//! The versions let the xDS client start as if it held what was loaded ([`Persisted::held`]):
//! State of the World then removes what the server's first answer no longer has, and Delta
//! announces them in `initial_resource_versions`, so the server sends only what changed and
//! removes what it no longer has. Without them a warm start could keep serving a resource
//! the server deleted while the proxy was down.

use crate::dynamic::DynamicState;
use crate::xds;
use crate::xds::resource;
use envoy_types::pb::google::protobuf::Any;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

const FILE: &str = "xds-state.json";

/// Accepted payloads, with their versions, by kind and name.
#[derive(Debug, Default, Clone)]
pub struct Persisted {
    pub listeners: BTreeMap<String, (String, Any)>,
    pub clusters: BTreeMap<String, (String, Any)>,
    pub endpoints: BTreeMap<String, (String, Any)>,
}

const KINDS: [(&str, &str); 3] = [
    ("listeners", xds::LISTENER_TYPE),
    ("clusters", xds::CLUSTER_TYPE),
    ("endpoints", xds::ENDPOINTS_TYPE),
];

impl Persisted {
    /// Records an accepted change's payloads in `map` (one of the three).
    pub fn record<T>(map: &mut BTreeMap<String, (String, Any)>, change: &xds::Change<T>) {
        for n in &change.removals {
            map.remove(n);
        }
        for a in &change.upserts {
            map.insert(a.name.clone(), (a.version.clone(), a.resource.clone()));
        }
    }

    fn kind(&self, kind: &str) -> &BTreeMap<String, (String, Any)> {
        match kind {
            "listeners" => &self.listeners,
            "clusters" => &self.clusters,
            _ => &self.endpoints,
        }
    }

    /// What the xDS client holds after loading this: names and versions by type URL.
    pub fn held(&self) -> xds::Held {
        KINDS
            .iter()
            .map(|(kind, type_url)| {
                let names = self
                    .kind(kind)
                    .iter()
                    .map(|(name, (version, _))| (name.clone(), version.clone()))
                    .collect();
                (type_url.to_string(), names)
            })
            .collect()
    }

    /// Writes the file in `dir` (created if missing), atomically.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let list = |m: &BTreeMap<String, (String, Any)>| -> Vec<Value> {
            m.values().map(|(_, any)| resource::to_json(any)).collect()
        };
        let versions = |m: &BTreeMap<String, (String, Any)>| -> Value {
            m.iter()
                .map(|(name, (version, _))| (name.clone(), Value::from(version.as_str())))
                .collect::<serde_json::Map<String, Value>>()
                .into()
        };
        let doc = json!({
            "listeners": list(&self.listeners),
            "clusters": list(&self.clusters),
            "endpoints": list(&self.endpoints),
            "versions": {
                "listeners": versions(&self.listeners),
                "clusters": versions(&self.clusters),
                "endpoints": versions(&self.endpoints),
            },
        });
        // Per process: two proxies sharing the directory (a DaemonSet's old and new pod
        // during a rolling update) never write one temporary file; the renames are atomic,
        // and the later one wins.
        let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
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
        let version = |kind: &str, name: &str| -> String {
            doc["versions"][kind][name]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        let mut persisted = Persisted::default();
        let mut state = DynamicState::default();
        for item in items(&doc, "clusters") {
            if let Some((any, (name, c))) = decode(item, resource::cluster) {
                state.insert_cluster(name.clone(), c);
                let v = version("clusters", &name);
                persisted.clusters.insert(name, (v, any));
            }
        }
        for item in items(&doc, "endpoints") {
            if let Some((any, (name, e))) = decode(item, resource::endpoints) {
                state.insert_endpoints(name.clone(), e);
                let v = version("endpoints", &name);
                persisted.endpoints.insert(name, (v, any));
            }
        }
        for item in items(&doc, "listeners") {
            if let Some((any, (name, l))) = decode(item, resource::listener) {
                state.insert_listener(name.clone(), l);
                let v = version("listeners", &name);
                persisted.listeners.insert(name, (v, any));
            }
        }
        Ok(Some((persisted, state)))
    }
}

/// Writes the state file on its own thread (`state-dir`), so that converting 20k resources
/// to JSON never holds up the control thread: it leaves a copy in a one-place slot and goes
/// on. A copy left while one is being written replaces any older one still waiting, so the
/// file follows the latest state a few milliseconds behind, never falling further back.
#[derive(Debug)]
pub struct StateWriter {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Slot {
    latest: Option<Persisted>,
    stop: bool,
}

impl StateWriter {
    /// Starts the writer for `dir`.
    pub fn spawn(dir: PathBuf) -> io::Result<StateWriter> {
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let theirs = slot.clone();
        let thread = std::thread::Builder::new()
            .name("state-dir".into())
            .spawn(move || write_loop(&dir, &theirs))?;
        Ok(StateWriter {
            slot,
            thread: Some(thread),
        })
    }

    /// Leaves a copy of `state` to be written.
    pub fn offer(&self, state: &Persisted) {
        let (lock, ready) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).latest = Some(state.clone());
        ready.notify_one();
    }

    /// Writes what is waiting and `state`, then stops the writer.
    pub fn finish(mut self, state: &Persisted) {
        self.offer(state);
        let (lock, ready) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        ready.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes each state left in `slot` until told to stop (after writing the last one).
fn write_loop(dir: &Path, slot: &(Mutex<Slot>, Condvar)) {
    let (lock, ready) = slot;
    loop {
        let (state, stop) = {
            let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
            while s.latest.is_none() && !s.stop {
                s = ready.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            (s.latest.take(), s.stop)
        };
        if let Some(state) = state {
            if let Err(e) = state.save(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "state dir: cannot save");
            }
        }
        if stop {
            return;
        }
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
    validate: impl Fn(&Any) -> Result<T, xds::Rejected>,
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
