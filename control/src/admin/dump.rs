//! `/config_dump` and `/server_info`.
//!
//! `/config_dump` is built from the bootstrap the control thread stored (proto3 JSON): an
//! `envoy.admin.v3.BootstrapConfigDump` with it, then a `ClustersConfigDump` and a
//! `ListenersConfigDump` whose `static_clusters` / `static_listeners` carry each
//! `static_resources` entry as an `Any` (with its `@type`). That is Envoy's order (bootstrap,
//! clusters, listeners). Resources from xDS come from the control thread's xDS dump
//! (`AdminState::xds_dump`): `version_info`, `dynamic_active_clusters` and
//! `dynamic_listeners` (with `active_state`, or `error_state` for a rejected update), as
//! Envoy shows them. Last, a `SecretsConfigDump`: `static_secrets` from the bootstrap and
//! `dynamic_active_secrets` received over ADS or from SDS files, private keys redacted.

use super::http::{Query, Response};
use super::{state_name, AdminState};
use serde_json::{json, Map, Value};

const BOOTSTRAP_DUMP: &str = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";
const CLUSTERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const LISTENERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const SECRETS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// `value` as an `Any` of `type_url`: `@type` first, then the message's fields.
fn as_any(type_url: &str, value: &Value) -> Value {
    let mut m = Map::new();
    m.insert("@type".into(), type_url.into());
    if let Value::Object(fields) = value {
        for (k, v) in fields {
            if k != "@type" {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(m)
}

fn static_resources<'a>(bootstrap: &'a Value, kind: &str) -> &'a [Value] {
    bootstrap
        .get("static_resources")
        .and_then(|s| s.get(kind))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The repeated fields `?resource=` can name: (field, dump type, item type).
const RESOURCES: &[(&str, &str, &str)] = &[
    ("static_clusters", CLUSTERS_DUMP, "StaticCluster"),
    ("dynamic_active_clusters", CLUSTERS_DUMP, "DynamicCluster"),
    ("dynamic_warming_clusters", CLUSTERS_DUMP, "DynamicCluster"),
    ("static_listeners", LISTENERS_DUMP, "StaticListener"),
    ("dynamic_listeners", LISTENERS_DUMP, "DynamicListener"),
    ("static_secrets", SECRETS_DUMP, "StaticSecret"),
    ("dynamic_active_secrets", SECRETS_DUMP, "DynamicSecret"),
];

/// The items of one repeated field of a dump (each `{"<key>": Any}`, or for dynamic
/// resources the control thread's xDS entries).
fn resource_items(bootstrap: &Value, xds: &Value, field: &str) -> Vec<Value> {
    let (kind, key, type_url) = match field {
        "static_clusters" => ("clusters", "cluster", CLUSTER),
        "static_listeners" => ("listeners", "listener", LISTENER),
        "static_secrets" => {
            // Envoy's StaticSecret: the name beside the secret.
            return static_resources(bootstrap, "secrets")
                .iter()
                .map(|r| json!({"name": r.get("name").cloned().unwrap_or_default(), "secret": as_any(SECRET, r)}))
                .collect();
        }
        "dynamic_active_secrets" => {
            return xds
                .get("secrets")
                .and_then(|d| d.get(field))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
        }
        "dynamic_active_clusters" | "dynamic_warming_clusters" | "dynamic_listeners" => {
            let dump = if field == "dynamic_listeners" {
                "listeners"
            } else {
                "clusters"
            };
            return xds
                .get(dump)
                .and_then(|d| d.get(field))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
        }
        _ => return Vec::new(),
    };
    static_resources(bootstrap, kind)
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert(key.into(), as_any(type_url, r));
            Value::Object(m)
        })
        .collect()
}

/// One `ClustersConfigDump` or `ListenersConfigDump`: `version_info` from xDS, then the
/// non-empty repeated fields.
fn section(
    bootstrap: &Value,
    xds: &Value,
    dump_type: &str,
    xds_key: &str,
    fields: &[&str],
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@type".into(), dump_type.into());
    if let Some(v) = xds.get(xds_key).and_then(|d| d.get("version_info")) {
        m.insert("version_info".into(), v.clone());
    }
    for field in fields {
        let items = resource_items(bootstrap, xds, field);
        if !items.is_empty() {
            m.insert((*field).into(), items.into());
        }
    }
    m
}

/// Envoy's `/config_dump` for a stored bootstrap and what xDS delivered.
pub(crate) fn render_config_dump(bootstrap: &Value, xds: &Value) -> Value {
    let clusters = section(
        bootstrap,
        xds,
        CLUSTERS_DUMP,
        "clusters",
        &[
            "static_clusters",
            "dynamic_active_clusters",
            "dynamic_warming_clusters",
        ],
    );
    let listeners = section(
        bootstrap,
        xds,
        LISTENERS_DUMP,
        "listeners",
        &["static_listeners", "dynamic_listeners"],
    );
    let secrets = section(
        bootstrap,
        xds,
        SECRETS_DUMP,
        "-",
        &["static_secrets", "dynamic_active_secrets"],
    );
    let bootstrap = if bootstrap.is_null() {
        json!({})
    } else {
        bootstrap.clone()
    };
    json!({"configs": [
        {"@type": BOOTSTRAP_DUMP, "bootstrap": bootstrap},
        clusters,
        listeners,
        secrets,
    ]})
}

/// `?resource=<field>`: the items of that repeated field, each with its own `@type`
/// (`envoy.admin.v3.ClustersConfigDump.StaticCluster`, ...). `None` for an unknown field.
pub(crate) fn render_resource(bootstrap: &Value, xds: &Value, field: &str) -> Option<Value> {
    let (_, dump, item_type) = RESOURCES.iter().find(|r| r.0 == field)?;
    let configs: Vec<Value> = resource_items(bootstrap, xds, field)
        .into_iter()
        .map(|item| {
            let mut m = Map::new();
            m.insert("@type".into(), format!("{dump}.{item_type}").into());
            if let Value::Object(fields) = item {
                m.extend(fields);
            }
            Value::Object(m)
        })
        .collect();
    Some(json!({ "configs": configs }))
}

/// `GET /config_dump[?resource=static_listeners]`, secrets redacted.
pub(super) fn handle_config_dump(state: &AdminState, q: &Query) -> Response {
    let bootstrap = state.bootstrap();
    let xds = state.xds();
    let mut dump = match q.get("resource") {
        None | Some("") => render_config_dump(&bootstrap, &xds),
        Some(field) => match render_resource(&bootstrap, &xds, field) {
            Some(v) => v,
            None => return Response::text(404, format!("{field} not found in config dump\n")),
        },
    };
    redact_secrets(&mut dump);
    Response::json(&dump)
}

/// Envoy's redaction of the fields its protos mark sensitive that Switchyard accepts: a TLS
/// certificate's `private_key` and `session_ticket_keys.keys`, each a DataSource whose
/// string fields become `[redacted]` and whose bytes become that text's base64 (file names
/// too, as Envoy does).
pub(crate) fn redact_secrets(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (key, value) in m.iter_mut() {
                match (key.as_str(), value) {
                    ("private_key", source @ Value::Object(_)) => redact_source(source),
                    ("session_ticket_keys", Value::Object(tickets)) => {
                        if let Some(Value::Array(keys)) = tickets.get_mut("keys") {
                            keys.iter_mut().for_each(redact_source);
                        }
                    }
                    (_, other) => redact_secrets(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

fn redact_source(source: &mut Value) {
    if let Value::Object(fields) = source {
        for (name, value) in fields.iter_mut() {
            *value = if name == "inline_bytes" {
                // base64("[redacted]")
                "W3JlZGFjdGVkXQ==".into()
            } else {
                "[redacted]".into()
            };
        }
    }
}

/// The value of an Envoy-style option in `args` (`-c x`, `--config-path x`, `--config-path=x`).
fn option<'a>(args: &'a [String], names: &[&str]) -> Option<&'a str> {
    let mut it = args.iter().skip(1);
    while let Some(arg) = it.next() {
        for name in names {
            if arg == name {
                return it.next().map(String::as_str);
            }
            if let Some(v) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return Some(v);
            }
        }
    }
    None
}

/// Envoy's `/server_info` (`envoy.admin.v3.ServerInfo`).
pub(crate) fn render_server_info(state: &AdminState) -> Value {
    let args = &state.command_line;
    let mut options = Map::new();
    options.insert("concurrency".into(), state.concurrency.into());
    if let Some(path) = option(args, &["-c", "--config-path"]) {
        options.insert("config_path".into(), path.into());
    }
    if let Some(s) = option(args, &["--drain-time-s"]).and_then(|s| s.parse::<u64>().ok()) {
        options.insert("drain_time".into(), format!("{s}s").into());
    }
    if let Some(s) = option(args, &["--parent-shutdown-time-s"]).and_then(|s| s.parse::<u64>().ok())
    {
        options.insert("parent_shutdown_time".into(), format!("{s}s").into());
    }
    if let Some(s) = option(args, &["--drain-strategy"]) {
        let strategy = if s.eq_ignore_ascii_case("immediate") {
            "Immediate"
        } else {
            "Gradual"
        };
        options.insert("drain_strategy".into(), strategy.into());
    }
    if let Some(level) = option(args, &["-l", "--log-level"]) {
        options.insert("log_level".into(), level.into());
    }
    options.insert("mode".into(), "Serve".into());
    let uptime = format!("{}s", state.started.elapsed().as_secs());
    let mut info = Map::new();
    let build = if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "RELEASE"
    };
    info.insert(
        "version".into(),
        format!("switchyard/{}/{build}", env!("CARGO_PKG_VERSION")).into(),
    );
    info.insert("state".into(), state_name(state.effective_state()).into());
    info.insert("hot_restart_version".into(), "disabled".into());
    info.insert("command_line_options".into(), Value::Object(options));
    if let Some(node) = state.bootstrap().get("node") {
        info.insert("node".into(), node.clone());
    }
    info.insert("uptime_current_epoch".into(), uptime.clone().into());
    info.insert("uptime_all_epochs".into(), uptime.into());
    Value::Object(info)
}

/// `GET /server_info`.
pub(super) fn handle_server_info(state: &AdminState, _: &Query) -> Response {
    Response::json(&render_server_info(state))
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{bootstrap_json, fixture};
    use super::*;

    #[test]
    fn secrets_are_redacted_as_envoy_redacts_them() {
        let mut v = json!({"listeners": [{"transport_socket": {"typed_config": {
            "common_tls_context": {"tls_certificates": [
                {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"inline_string": "KEY"}},
                {"certificate_chain": {"filename": "/d.pem"}, "private_key": {"filename": "/d.key"}}
            ]},
            "session_ticket_keys": {"keys": [{"inline_bytes": "AAAA"}]}
        }}}]});
        redact_secrets(&mut v);
        let ctx = &v["listeners"][0]["transport_socket"]["typed_config"];
        let certs = &ctx["common_tls_context"]["tls_certificates"];
        assert_eq!(
            certs[0]["private_key"],
            json!({"inline_string": "[redacted]"})
        );
        assert_eq!(certs[1]["private_key"], json!({"filename": "[redacted]"}));
        assert_eq!(certs[0]["certificate_chain"], json!({"filename": "/c.pem"}));
        assert_eq!(
            ctx["session_ticket_keys"]["keys"][0],
            json!({"inline_bytes": "W3JlZGFjdGVkXQ=="})
        );
    }

    #[test]
    fn config_dump_shape() {
        let b = bootstrap_json();
        let d = render_config_dump(&b, &Value::Null);
        let configs = d["configs"].as_array().unwrap();
        assert_eq!(configs.len(), 4);
        assert_eq!(configs[3], json!({"@type": SECRETS_DUMP}));
        assert_eq!(configs[0], json!({"@type": BOOTSTRAP_DUMP, "bootstrap": b}));
        assert_eq!(
            configs[1],
            json!({"@type": CLUSTERS_DUMP, "static_clusters": [
                {"cluster": {"@type": CLUSTER, "name": "echo", "connect_timeout": "1s"}},
                {"cluster": {"@type": CLUSTER, "name": "empty", "connect_timeout": "1s"}},
            ]})
        );
        let l = &configs[2];
        assert_eq!(l["@type"], LISTENERS_DUMP);
        let listener = &l["static_listeners"][0]["listener"];
        assert_eq!(listener["@type"], LISTENER);
        assert_eq!(listener["name"], "gw");
        assert_eq!(listener["address"]["socket_address"]["port_value"], 10000);
        // "@type" is printed first.
        let text = serde_json::to_string(listener).unwrap();
        assert!(text.starts_with("{\"@type\":"), "{text}");

        // Nothing stored yet: empty dumps.
        assert_eq!(
            render_config_dump(&Value::Null, &Value::Null),
            json!({"configs": [
                {"@type": BOOTSTRAP_DUMP, "bootstrap": {}},
                {"@type": CLUSTERS_DUMP},
                {"@type": LISTENERS_DUMP},
                {"@type": SECRETS_DUMP},
            ]})
        );
    }

    #[test]
    fn secrets_are_dumped_static_and_dynamic_with_keys_redacted() {
        let key = json!({"inline_string": "-----BEGIN PRIVATE KEY-----"});
        let b = json!({"static_resources": {"secrets": [
            {"name": "server_cert", "tls_certificate": {
                "certificate_chain": {"filename": "/certs/a.pem"}, "private_key": key}},
        ]}});
        let xds = json!({"secrets": {"dynamic_active_secrets": [
            {"name": "spiffe", "version_info": "7", "last_updated": "2026-12-07T00:00:00.000Z",
             "secret": {"@type": SECRET, "name": "spiffe", "tls_certificate": {"private_key": key}}},
        ]}});
        let mut d = render_config_dump(&b, &xds);
        redact_secrets(&mut d);
        let secrets = &d["configs"][3];
        assert_eq!(secrets["@type"], SECRETS_DUMP);
        let s = &secrets["static_secrets"][0];
        assert_eq!(s["name"], "server_cert");
        assert_eq!(s["secret"]["@type"], SECRET);
        let redacted = json!({"inline_string": "[redacted]"});
        assert_eq!(s["secret"]["tls_certificate"]["private_key"], redacted);
        let dynamic = &secrets["dynamic_active_secrets"][0];
        assert_eq!(dynamic["version_info"], "7");
        assert_eq!(
            dynamic["secret"]["tls_certificate"]["private_key"],
            redacted
        );
        let v = render_resource(&b, &xds, "dynamic_active_secrets").unwrap();
        assert_eq!(
            v["configs"][0]["@type"],
            format!("{SECRETS_DUMP}.DynamicSecret")
        );
    }

    #[test]
    fn resource_param() {
        let b = bootstrap_json();
        let v = render_resource(&b, &Value::Null, "static_clusters").unwrap();
        assert_eq!(
            v["configs"][1],
            json!({"@type": format!("{CLUSTERS_DUMP}.StaticCluster"),
                   "cluster": {"@type": CLUSTER, "name": "empty", "connect_timeout": "1s"}})
        );
        let v = render_resource(&b, &Value::Null, "static_listeners").unwrap();
        assert_eq!(v["configs"].as_array().unwrap().len(), 2);
        // A UDP listener is dumped as written, its udp_proxy and matcher included.
        let udp = &v["configs"][1]["listener"];
        assert_eq!(udp["address"]["socket_address"]["protocol"], "UDP");
        assert_eq!(
            udp["listener_filters"][0]["typed_config"]["matcher"]["on_no_match"]["action"]
                ["typed_config"]["cluster"],
            "echo"
        );
        assert_eq!(
            render_resource(&b, &Value::Null, "dynamic_listeners").unwrap(),
            json!({"configs": []})
        );
        assert!(render_resource(&b, &Value::Null, "nope").is_none());
    }

    #[test]
    fn server_info() {
        let f = fixture();
        let v = render_server_info(&f.state);
        assert_eq!(v["state"], "LIVE");
        assert_eq!(v["uptime_current_epoch"], "0s");
        assert_eq!(v["uptime_all_epochs"], "0s");
        assert_eq!(
            v["command_line_options"],
            json!({"concurrency": 2, "config_path": "/etc/sy.yaml", "drain_time": "30s", "mode": "Serve"})
        );
        assert_eq!(v["node"]["id"], "node-1");
        assert!(v["version"].as_str().unwrap().starts_with("switchyard/"));
    }

    #[test]
    fn options_parse_both_forms() {
        let args: Vec<String> = ["sy", "--config-path", "a.yaml", "--log-level=debug"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(option(&args, &["-c", "--config-path"]), Some("a.yaml"));
        assert_eq!(option(&args, &["-l", "--log-level"]), Some("debug"));
        assert_eq!(option(&args, &["--drain-time-s"]), None);
    }
}
