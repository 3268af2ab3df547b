//! `layered_runtime` and `overload_manager`: the runtime layers (static and admin) and the
//! global downstream connection limit (see [`crate::runtime`]).

use super::{decode_any, type_name, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{RuntimeConfig, RuntimeLayer, RuntimeLayerKind};
use crate::runtime::check_entry;
use crate::type_names::DOWNSTREAM_CONNECTIONS_MONITOR;
use envoy_types::pb::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, LayeredRuntime};
use envoy_types::pb::envoy::config::overload::v3::{resource_monitor, OverloadManager};
use envoy_types::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use std::collections::BTreeMap;

/// The overload manager's resource monitor for the global connection limit (the only one
/// Switchyard has), by the name Envoy requires for it.
const GLOBAL_CONNECTIONS_MONITOR: &str =
    "envoy.resource_monitors.global_downstream_max_connections";

/// The bootstrap's runtime and overload manager.
pub(super) fn runtime_config(b: &Bootstrap) -> Result<RuntimeConfig> {
    Ok(RuntimeConfig {
        layers: match &b.layered_runtime {
            Some(r) => layers(r, "layered_runtime")?,
            None => Vec::new(),
        },
        overload_max_connections: match &b.overload_manager {
            Some(o) => overload_max_connections(o, "overload_manager")?,
            None => None,
        },
    })
}

/// `layers`: names unique, at most one admin layer (Envoy's rules).
fn layers(r: &LayeredRuntime, path: &str) -> Result<Vec<RuntimeLayer>> {
    let mut layers: Vec<RuntimeLayer> = Vec::with_capacity(r.layers.len());
    for (i, l) in r.layers.iter().enumerate() {
        let lpath = index(&field(path, "layers"), i);
        if layers.iter().any(|seen| seen.name == l.name) {
            return Err(ConfigError::invalid(
                field(&lpath, "name"),
                format!("duplicate layer name '{}'", l.name),
            ));
        }
        let kind = match &l.layer_specifier {
            Some(LayerSpecifier::StaticLayer(s)) => {
                RuntimeLayerKind::Static(static_layer(s, &field(&lpath, "static_layer"))?)
            }
            Some(LayerSpecifier::AdminLayer(_)) => {
                if layers.iter().any(|l| l.kind == RuntimeLayerKind::Admin) {
                    return Err(ConfigError::invalid(
                        field(&lpath, "admin_layer"),
                        "too many admin layers: at most one may be specified",
                    ));
                }
                RuntimeLayerKind::Admin
            }
            // The walker refuses disk_layer and rtds_layer by path.
            _ => {
                return Err(ConfigError::invalid(
                    &lpath,
                    "a layer needs a static_layer or an admin_layer",
                ))
            }
        };
        layers.push(RuntimeLayer {
            name: l.name.clone(),
            kind,
        });
    }
    Ok(layers)
}

/// A static layer flattened as Envoy reads it (`a: {b: 1}` is key `a.b`), each entry checked.
fn static_layer(s: &Struct, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    flatten(s, "", path, &mut out)?;
    for (key, value) in &out {
        check_entry(key, value)
            .map_err(|reason| ConfigError::unsupported(field(path, key), reason))?;
    }
    Ok(out)
}

fn flatten(s: &Struct, prefix: &str, path: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
    for (name, value) in &s.fields {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match &value.kind {
            Some(Kind::StructValue(inner)) => flatten(inner, &key, path, out)?,
            _ => {
                let text = entry_text(value).ok_or_else(|| {
                    ConfigError::invalid(
                        field(path, &key),
                        "invalid runtime entry value (a string, number or bool)",
                    )
                })?;
                out.insert(key, text);
            }
        }
    }
    Ok(())
}

/// A value as Envoy's `/runtime` prints it: strings as they are, whole numbers without a
/// fraction, bools as `true`/`false`; lists and nulls are refused (as Envoy refuses them).
fn entry_text(v: &Value) -> Option<String> {
    match v.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::BoolValue(b) => Some(b.to_string()),
        Kind::NumberValue(n) if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 => {
            Some(format!("{}", *n as i64))
        }
        Kind::NumberValue(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `resource_monitors`: only the global downstream connection monitor (the walker refuses
/// `actions`, `loadshed_points` and `buffer_factory_config`: they act on monitors Switchyard
/// does not have).
fn overload_max_connections(o: &OverloadManager, path: &str) -> Result<Option<u64>> {
    let mut max = None;
    for (i, m) in o.resource_monitors.iter().enumerate() {
        let mpath = index(&field(path, "resource_monitors"), i);
        let Some(resource_monitor::ConfigType::TypedConfig(any)) = &m.config_type else {
            return Err(ConfigError::invalid(
                field(&mpath, "typed_config"),
                "a resource monitor needs a typed_config",
            ));
        };
        let tpath = field(&mpath, "typed_config");
        if type_name(any) != DOWNSTREAM_CONNECTIONS_MONITOR {
            return Err(ConfigError::unsupported(
                tpath,
                "Switchyard's only resource monitor is the global downstream connection limit",
            ));
        }
        if m.name != GLOBAL_CONNECTIONS_MONITOR {
            return Err(ConfigError::invalid(
                field(&mpath, "name"),
                format!(
                    "the downstream connections monitor is named '{GLOBAL_CONNECTIONS_MONITOR}'"
                ),
            ));
        }
        if max.is_some() {
            return Err(ConfigError::invalid(
                &mpath,
                "the global connection monitor is configured twice",
            ));
        }
        let config: DownstreamConnectionsConfig =
            decode_any(any, DOWNSTREAM_CONNECTIONS_MONITOR, &tpath)?;
        if config.max_active_downstream_connections <= 0 {
            return Err(ConfigError::invalid(
                field(&tpath, "max_active_downstream_connections"),
                "must be greater than 0",
            ));
        }
        max = Some(config.max_active_downstream_connections as u64);
    }
    Ok(max)
}
