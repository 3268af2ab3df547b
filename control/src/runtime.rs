//! Envoy's runtime: `layered_runtime` layers, the admin's `/runtime` and `/runtime_modify`,
//! and the one runtime value an L4 proxy acts on, the global downstream connection limit.
//!
//! Guarantees:
//! - Keys are checked ([`check_entry`]) before anything is stored, from the config (an error
//!   naming the key's path) and from `/runtime_modify` (a 400 naming the key): a key
//!   Switchyard does not read is refused, never kept and ignored. It reads
//!   `overload.global_downstream_max_connections` (an unsigned integer). Envoy's feature flags
//!   (`envoy.reloadable_features.*`, `envoy.restart_features.*`,
//!   `envoy.deprecated_features:*`) and RE2 program-size limits (`re2.max_program_size.*`)
//!   are kept and shown with no effect: they choose between versions of Envoy's own code and
//!   bound RE2 programs, and Switchyard has one version of its code (Envoy 1.40's defaults)
//!   and no RE2. A load logs which of those it keeps.
//! - The runtime key's final value (the last layer that has it) bounds the workers' and the
//!   admin's connections together; the overload manager's `global_downstream_max_connections`
//!   bounds the workers' alone and replaces the key for them (Envoy's reach for each, see
//!   [`switchyard_dataplane::global_limit`]). Both are stored in the data plane's
//!   [`GlobalConnections`] whenever the config or the admin layer changes, and apply to the
//!   next accept of every worker and of the admin.
//! - The admin layer's values live as long as the process: a reload that keeps an admin
//!   layer keeps them; one that removes it drops them.
//! - `/runtime` prints Envoy's JSON: `layers` (names in order) and `entries` (per key, the
//!   value in each layer, `""` where a layer lacks it, and the final value).

use crate::rib::{RuntimeConfig, RuntimeLayerKind};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use switchyard_dataplane::global_limit::GlobalConnections;

/// The runtime key of Envoy's global downstream connection limit.
pub const GLOBAL_MAX_CONNECTIONS_KEY: &str = "overload.global_downstream_max_connections";

/// Prefixes of Envoy's feature flags.
const FEATURE_FLAG_PREFIXES: &[&str] = &[
    "envoy.reloadable_features.",
    "envoy.restart_features.",
    "envoy.deprecated_features:",
    "envoy.deprecated_features.",
];

/// Envoy's RE2 program-size limits for config regexes.
const RE2_KEYS: &[&str] = &[
    "re2.max_program_size.error_level",
    "re2.max_program_size.warn_level",
];

/// What a runtime entry does in Switchyard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// `overload.global_downstream_max_connections`.
    GlobalMaxConnections(u64),
    /// A feature flag or RE2 limit: shown in `/runtime`, no effect (module docs say why).
    NoEffect,
}

/// Checks one runtime entry; the error says why the key or its value is refused.
pub fn check_entry(key: &str, value: &str) -> Result<KeyUse, String> {
    if key == GLOBAL_MAX_CONNECTIONS_KEY {
        return value
            .parse::<u64>()
            .map(KeyUse::GlobalMaxConnections)
            .map_err(|_| format!("'{value}' is not an unsigned integer"));
    }
    if FEATURE_FLAG_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return match value {
            "true" | "false" => Ok(KeyUse::NoEffect),
            _ => Err(format!("a feature flag is true or false, not '{value}'")),
        };
    }
    if RE2_KEYS.contains(&key) {
        return value
            .parse::<u64>()
            .map(|_| KeyUse::NoEffect)
            .map_err(|_| format!("'{value}' is not an unsigned integer"));
    }
    Err(format!(
        "runtime key '{key}' is not read by Switchyard: it reads \
         {GLOBAL_MAX_CONNECTIONS_KEY} (and keeps Envoy's feature flags and \
         re2.max_program_size.* with no effect)"
    ))
}

/// Why `/runtime_modify` changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModifyError {
    /// The config has no `admin_layer` (Envoy answers 503 likewise).
    NoAdminLayer,
    /// This key or value is refused ([`check_entry`]).
    Refused { key: String, reason: String },
}

/// The runtime of the running process.
#[derive(Debug)]
pub struct Runtime {
    inner: Mutex<Inner>,
    connections: Arc<GlobalConnections>,
}

#[derive(Debug, Default)]
struct Inner {
    config: RuntimeConfig,
    /// The admin layer's values (empty without an admin layer).
    admin: BTreeMap<String, String>,
}

impl Runtime {
    /// No layers, no limit; `connections` is the data plane's count the limit goes to.
    pub fn new(connections: Arc<GlobalConnections>) -> Runtime {
        Runtime {
            inner: Mutex::default(),
            connections,
        }
    }

    /// The data plane's connection count and limit.
    pub fn connections(&self) -> &Arc<GlobalConnections> {
        &self.connections
    }

    /// Takes a new config (at start and on every accepted reload) and applies its limit.
    pub fn configure(&self, config: &RuntimeConfig) {
        let mut inner = self.lock();
        let keeps_admin = config
            .layers
            .iter()
            .any(|l| l.kind == RuntimeLayerKind::Admin);
        if !keeps_admin {
            inner.admin.clear();
        }
        inner.config = config.clone();
        log_no_effect_keys(config);
        self.apply(&inner);
    }

    /// `POST /runtime_modify`: sets each pair in the admin layer (an empty value removes the
    /// key), all or none.
    pub fn modify(&self, pairs: &[(String, String)]) -> Result<(), ModifyError> {
        let mut inner = self.lock();
        if !inner.has_admin_layer() {
            return Err(ModifyError::NoAdminLayer);
        }
        for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
            check_entry(key, value).map_err(|reason| ModifyError::Refused {
                key: key.clone(),
                reason,
            })?;
        }
        for (key, value) in pairs {
            if value.is_empty() {
                inner.admin.remove(key);
            } else {
                inner.admin.insert(key.clone(), value.clone());
            }
        }
        self.apply(&inner);
        Ok(())
    }

    /// `GET /runtime`: Envoy's JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let inner = self.lock();
        let layers: Vec<&BTreeMap<String, String>> = inner.layer_values().collect();
        let keys: std::collections::BTreeSet<&String> =
            layers.iter().flat_map(|l| l.keys()).collect();
        let entries: serde_json::Map<String, serde_json::Value> = keys
            .into_iter()
            .map(|key| {
                let values: Vec<&str> = layers
                    .iter()
                    .map(|l| l.get(key).map_or("", String::as_str))
                    .collect();
                let last = values.iter().rev().find(|v| !v.is_empty()).copied();
                let entry = serde_json::json!({
                    "layer_values": values,
                    "final_value": last.unwrap_or(""),
                });
                (key.clone(), entry)
            })
            .collect();
        let names: Vec<&str> = inner
            .config
            .layers
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        serde_json::json!({ "layers": names, "entries": entries })
    }

    fn apply(&self, inner: &Inner) {
        self.connections.set_limits(
            inner.runtime_max_connections(),
            inner.config.overload_max_connections,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn has_admin_layer(&self) -> bool {
        self.config
            .layers
            .iter()
            .any(|l| l.kind == RuntimeLayerKind::Admin)
    }

    /// Each layer's values, in order (the admin layer's are the ones set so far).
    fn layer_values(&self) -> impl Iterator<Item = &BTreeMap<String, String>> {
        self.config.layers.iter().map(|l| match &l.kind {
            RuntimeLayerKind::Static(values) => values,
            RuntimeLayerKind::Admin => &self.admin,
        })
    }

    /// The runtime key's final value.
    fn runtime_max_connections(&self) -> Option<u64> {
        let value = self
            .layer_values()
            .filter_map(|l| l.get(GLOBAL_MAX_CONNECTIONS_KEY))
            .last()?;
        match check_entry(GLOBAL_MAX_CONNECTIONS_KEY, value) {
            Ok(KeyUse::GlobalMaxConnections(max)) => Some(max),
            _ => None,
        }
    }
}

/// Says once per load which kept keys have no effect, and when the overload manager
/// overrides the runtime key (Envoy warns likewise).
fn log_no_effect_keys(config: &RuntimeConfig) {
    for layer in &config.layers {
        let RuntimeLayerKind::Static(values) = &layer.kind else {
            continue;
        };
        for (key, value) in values {
            match check_entry(key, value) {
                Ok(KeyUse::NoEffect) => tracing::info!(
                    layer = %layer.name, key = %key,
                    "runtime: kept with no effect (Switchyard follows Envoy 1.40's defaults \
                     and has no RE2)"
                ),
                Ok(KeyUse::GlobalMaxConnections(_))
                    if config.overload_max_connections.is_some() =>
                {
                    tracing::warn!(
                        layer = %layer.name,
                        "runtime: {GLOBAL_MAX_CONNECTIONS_KEY} is overridden by the overload \
                         manager's global_downstream_max_connections"
                    )
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rib::RuntimeLayer;

    fn layer(name: &str, kind: RuntimeLayerKind) -> RuntimeLayer {
        RuntimeLayer {
            name: name.into(),
            kind,
        }
    }

    fn static_layer(pairs: &[(&str, &str)]) -> RuntimeLayerKind {
        RuntimeLayerKind::Static(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn entries_switchyard_reads_or_keeps() {
        assert_eq!(
            check_entry(GLOBAL_MAX_CONNECTIONS_KEY, "50000"),
            Ok(KeyUse::GlobalMaxConnections(50000))
        );
        assert!(check_entry(GLOBAL_MAX_CONNECTIONS_KEY, "-1").is_err());
        assert!(check_entry(GLOBAL_MAX_CONNECTIONS_KEY, "1e3").is_err());
        for flag in [
            "envoy.reloadable_features.no_extension_lookup_by_name",
            "envoy.restart_features.use_eds_cache_for_ads",
            "envoy.deprecated_features:envoy.config.listener.v3.Listener.x",
        ] {
            assert_eq!(check_entry(flag, "false"), Ok(KeyUse::NoEffect), "{flag}");
            assert!(check_entry(flag, "yes").is_err(), "{flag}");
        }
        assert_eq!(
            check_entry("re2.max_program_size.error_level", "4294967295"),
            Ok(KeyUse::NoEffect)
        );
        let err = check_entry("circuit_breakers.c.default.max_connections", "5").unwrap_err();
        assert!(err.contains("not read by Switchyard"), "{err}");
    }

    #[test]
    fn limit_from_last_layer_with_the_key_then_admin_then_overload() {
        let g = Arc::new(GlobalConnections::default());
        let rt = Runtime::new(g.clone());
        let mut config = RuntimeConfig {
            layers: vec![
                layer("base", static_layer(&[(GLOBAL_MAX_CONNECTIONS_KEY, "100")])),
                layer("site", static_layer(&[(GLOBAL_MAX_CONNECTIONS_KEY, "50")])),
                layer("admin", RuntimeLayerKind::Admin),
            ],
            overload_max_connections: None,
        };
        rt.configure(&config);
        assert_eq!(g.worker_limit(), Some(50));
        rt.modify(&pairs(&[(GLOBAL_MAX_CONNECTIONS_KEY, "7")]))
            .unwrap();
        assert_eq!(g.worker_limit(), Some(7));
        rt.modify(&pairs(&[(GLOBAL_MAX_CONNECTIONS_KEY, "")]))
            .unwrap();
        assert_eq!(
            g.worker_limit(),
            Some(50),
            "an empty value removes the override"
        );
        config.overload_max_connections = Some(3);
        rt.configure(&config);
        assert_eq!(
            g.worker_limit(),
            Some(3),
            "the overload manager wins for workers"
        );
    }

    #[test]
    fn modify_needs_an_admin_layer_and_checks_every_key_first() {
        let g = Arc::new(GlobalConnections::default());
        let rt = Runtime::new(g.clone());
        rt.configure(&RuntimeConfig::default());
        assert_eq!(
            rt.modify(&pairs(&[(GLOBAL_MAX_CONNECTIONS_KEY, "1")])),
            Err(ModifyError::NoAdminLayer)
        );
        rt.configure(&RuntimeConfig {
            layers: vec![layer("admin", RuntimeLayerKind::Admin)],
            overload_max_connections: None,
        });
        let refused = rt.modify(&pairs(&[
            (GLOBAL_MAX_CONNECTIONS_KEY, "1"),
            ("foo.bar", "2"),
        ]));
        assert!(
            matches!(&refused, Err(ModifyError::Refused { key, .. }) if key == "foo.bar"),
            "{refused:?}"
        );
        assert_eq!(
            g.worker_limit(),
            None,
            "nothing of a refused request is applied"
        );
    }

    #[test]
    fn admin_values_survive_a_reload_that_keeps_the_admin_layer() {
        let rt = Runtime::new(Arc::default());
        let config = RuntimeConfig {
            layers: vec![layer("admin", RuntimeLayerKind::Admin)],
            overload_max_connections: None,
        };
        rt.configure(&config);
        rt.modify(&pairs(&[(GLOBAL_MAX_CONNECTIONS_KEY, "9")]))
            .unwrap();
        rt.configure(&config);
        assert_eq!(rt.connections().worker_limit(), Some(9));
        rt.configure(&RuntimeConfig::default());
        assert_eq!(rt.connections().worker_limit(), None);
    }

    #[test]
    fn json_is_envoys() {
        let rt = Runtime::new(Arc::default());
        rt.configure(&RuntimeConfig {
            layers: vec![
                layer(
                    "static_layer_0",
                    static_layer(&[
                        (GLOBAL_MAX_CONNECTIONS_KEY, "2"),
                        ("re2.max_program_size.error_level", "100"),
                    ]),
                ),
                layer("admin", RuntimeLayerKind::Admin),
            ],
            overload_max_connections: None,
        });
        rt.modify(&pairs(&[(GLOBAL_MAX_CONNECTIONS_KEY, "9")]))
            .unwrap();
        assert_eq!(
            rt.to_json(),
            serde_json::json!({
                "layers": ["static_layer_0", "admin"],
                "entries": {
                    GLOBAL_MAX_CONNECTIONS_KEY: {"layer_values": ["2", "9"], "final_value": "9"},
                    "re2.max_program_size.error_level": {
                        "layer_values": ["100", ""], "final_value": "100"
                    },
                },
            })
        );
    }
}
