//! The ConfigMap bootstrap: finding its text from the proxy container (`-c`, volume mount,
//! ConfigMap key) and reading the facts the manifest must agree with ([`Bootstrap`]: where the
//! admin API listens, the original-destination listener, the listener ports).

use crate::report::Report;
use crate::value::{array_at, flag, get, int_of, shown, str_at, switchyard_words};
use serde_json::Value;

/// Where the bootstrap's admin API listens.
#[derive(Clone, Debug)]
pub enum Admin {
    /// `admin.address.socket_address`.
    Tcp { host: String, port: u16 },
    /// `admin.address.pipe` (its `mode` is checked where it is read).
    Pipe { path: String },
}

impl std::fmt::Display for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admin::Tcp { host, port } => write!(f, "{host}:{port}"),
            Admin::Pipe { path } => write!(f, "unix:{path}"),
        }
    }
}

/// The bootstrap's facts the manifest must agree with.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub admin: Admin,
    /// `(listener name, port)` of every listener that matches on the original destination
    /// (`use_original_dst: true` or the `envoy.filters.listener.original_dst` listener filter).
    pub original_dst_ports: Vec<(String, u16)>,
    /// Ports of all static listeners.
    pub listener_ports: Vec<u16>,
}

pub fn socket_port(addr: &Value) -> Option<u16> {
    get(addr, &["socket_address", "port_value"])
        .and_then(int_of)
        .and_then(|p| u16::try_from(p).ok())
}

pub fn read_bootstrap(b: &Value, field: &str, r: &mut Report) -> Option<Bootstrap> {
    let Some(address) = get(b, &["admin", "address"]) else {
        r.bad(format!("{field}: admin.address"), "missing");
        return None;
    };
    let admin = if let Some(pipe) = address.get("pipe") {
        let Some(path) = str_at(pipe, &["path"]).filter(|p| p.starts_with('/')) else {
            r.bad(
                format!("{field}: admin.address.pipe.path"),
                format!(
                    "is {}, want an absolute file path (the probes' --unix-socket)",
                    shown(pipe.get("path"))
                ),
            );
            return None;
        };
        // The probes and the preStop hook run as the proxy's UID (the socket's owner), and
        // connecting to a Unix socket takes write permission on it.
        if let Some(m) = pipe.get("mode").and_then(int_of).filter(|m| *m != 0) {
            r.expect(
                m & 0o200 != 0,
                format!("{field}: admin.address.pipe.mode"),
                format!(
                    "is {m} ({m:#o}): the owner (the proxy's UID, which the probes and \
                     preStop run as) cannot connect without write permission; want 384 (0600)"
                ),
            );
        }
        Admin::Pipe {
            path: path.to_string(),
        }
    } else {
        let host = str_at(address, &["socket_address", "address"])
            .unwrap_or_default()
            .to_string();
        let Some(port) = socket_port(address) else {
            r.bad(
                format!("{field}: admin.address"),
                "neither pipe.path nor socket_address.port_value",
            );
            return None;
        };
        Admin::Tcp { host, port }
    };
    let mut original_dst_ports = Vec::new();
    let mut listener_ports = Vec::new();
    for (i, l) in array_at(b, &["static_resources", "listeners"])
        .iter()
        .enumerate()
    {
        let name = str_at(l, &["name"]).unwrap_or("?").to_string();
        let Some(port) = l.get("address").and_then(socket_port) else {
            r.bad(
                format!("{field}: static_resources.listeners[{i}].address"),
                "no socket_address.port_value",
            );
            continue;
        };
        listener_ports.push(port);
        // `use_original_dst: true`, or the same as the `original_dst` listener filter (Istio's
        // form), known by its name or, as Envoy resolves it, by its typed_config's type.
        let filter = array_at(l, &["listener_filters"]).iter().any(|lf| {
            str_at(lf, &["name"]) == Some("envoy.filters.listener.original_dst")
                || str_at(lf, &["typed_config", "@type"]).is_some_and(|t| {
                    t.ends_with("/envoy.extensions.filters.listener.original_dst.v3.OriginalDst")
                })
        });
        if l.get("use_original_dst") == Some(&Value::Bool(true)) || filter {
            original_dst_ports.push((name, port));
        }
    }
    Some(Bootstrap {
        admin,
        original_dst_ports,
        listener_ports,
    })
}

/// The bootstrap text the proxy container reads: its `-c` path, the volume mounted above that
/// path, the ConfigMap of that volume and the key. `Err` says which link is missing.
pub fn bootstrap_text(docs: &[Value], pod: &Value, proxy: &Value) -> Result<String, String> {
    let words = switchyard_words(proxy).unwrap_or_default();
    let path = flag(&words, &["-c", "--config-path", "--config"])
        .ok_or("proxy container args: no -c <bootstrap file>")?;
    let mounts = array_at(proxy, &["volumeMounts"]);
    let (mount, rest) = mounts
        .iter()
        .filter_map(|m| {
            let dir = str_at(m, &["mountPath"])?.trim_end_matches('/');
            let rest = path.strip_prefix(dir)?.strip_prefix('/')?;
            Some((m, rest))
        })
        .max_by_key(|(m, _)| str_at(m, &["mountPath"]).map_or(0, str::len))
        .ok_or_else(|| format!("proxy container volumeMounts: nothing mounted above {path}"))?;
    let vol_name = str_at(mount, &["name"]).unwrap_or_default();
    let volume = array_at(pod, &["volumes"])
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(vol_name))
        .ok_or_else(|| format!("volumes: no volume {vol_name:?}"))?;
    let cm_name = str_at(volume, &["configMap", "name"])
        .ok_or_else(|| format!("volumes[{vol_name}]: not a configMap volume"))?;
    let key = match array_at(volume, &["configMap", "items"])
        .iter()
        .find(|it| str_at(it, &["path"]) == Some(rest))
    {
        Some(item) => str_at(item, &["key"]).unwrap_or_default(),
        None => rest,
    };
    let cm = docs
        .iter()
        .find(|d| {
            str_at(d, &["kind"]) == Some("ConfigMap")
                && str_at(d, &["metadata", "name"]) == Some(cm_name)
        })
        .ok_or_else(|| format!("no ConfigMap {cm_name:?} in the manifest"))?;
    str_at(cm, &["data", key])
        .map(str::to_string)
        .ok_or_else(|| format!("ConfigMap {cm_name}: data.{key} missing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(b: Value) -> (Option<Bootstrap>, Vec<String>) {
        let mut r = Report::default();
        (read_bootstrap(&b, "b", &mut r), r.0)
    }

    fn listener(port: u16, extra: Value) -> Value {
        let mut l = json!({"name": format!("l{port}"),
                           "address": {"socket_address": {"port_value": port}}});
        l.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        l
    }

    #[test]
    fn admin_on_a_socket_or_a_port() {
        let (b, problems) = read(json!({"admin": {"address": {"pipe": {"path": "/a.sock"}}}}));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(matches!(b.expect("read").admin, Admin::Pipe { path } if path == "/a.sock"));
        let (b, problems) = read(json!({"admin": {"address": {"socket_address":
            {"address": "127.0.0.1", "port_value": "9901"}}}}));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(b.expect("read").admin.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn admin_problems_are_named() {
        for (admin, field) in [
            (json!(null), "b: admin.address"),
            (
                json!({"address": {"pipe": {"path": "a.sock"}}}),
                "admin.address.pipe.path",
            ),
            (
                json!({"address": {"pipe": {"path": "/a", "mode": 256}}}),
                "admin.address.pipe.mode",
            ),
            (
                json!({"address": {"socket_address": {"address": "::"}}}),
                "b: admin.address",
            ),
        ] {
            let (_, problems) = read(json!({"admin": admin}));
            assert!(
                problems.iter().any(|p| p.contains(field)),
                "{admin}: {problems:?}"
            );
        }
    }

    #[test]
    fn original_destination_listeners() {
        let (b, problems) = read(json!({
            "admin": {"address": {"pipe": {"path": "/a"}}},
            "static_resources": {"listeners": [
                listener(1, json!({"use_original_dst": true})),
                listener(2, json!({"listener_filters": [{"typed_config": {"@type":
                    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}]})),
                listener(3, json!({"use_original_dst": false})),
                {"name": "no-port", "address": {"pipe": {"path": "/l"}}},
            ]}
        }));
        let b = b.expect("read");
        assert_eq!(b.listener_ports, [1, 2, 3]);
        assert_eq!(
            b.original_dst_ports,
            [("l1".to_string(), 1), ("l2".to_string(), 2)]
        );
        assert_eq!(
            problems,
            ["b: static_resources.listeners[3].address: no socket_address.port_value"]
        );
    }

    #[test]
    fn bootstrap_text_follows_the_mount_and_the_key() {
        let docs = [json!({"kind": "ConfigMap", "metadata": {"name": "cm"},
                           "data": {"k": "text"}})];
        let pod = json!({"volumes": [{"name": "v", "configMap": {"name": "cm",
                         "items": [{"key": "k", "path": "b.yaml"}]}}]});
        let proxy = json!({"args": ["run", "-c", "/etc/sy/b.yaml"],
                           "volumeMounts": [{"name": "v", "mountPath": "/etc/sy/"}]});
        assert_eq!(bootstrap_text(&docs, &pod, &proxy).as_deref(), Ok("text"));
        let elsewhere = json!({"args": ["run", "--config-path=/etc/other/b.yaml"],
                               "volumeMounts": [{"name": "v", "mountPath": "/etc/sy"}]});
        let e = bootstrap_text(&docs, &pod, &elsewhere).unwrap_err();
        assert!(e.contains("nothing mounted above /etc/other/b.yaml"), "{e}");
        let e = bootstrap_text(&docs[..0], &pod, &proxy).unwrap_err();
        assert!(e.contains("no ConfigMap \"cm\""), "{e}");
    }
}
