//! The Kubernetes deployment in `deploy/`: the node-proxy DaemonSet, its ConfigMap bootstrap and
//! the image's Dockerfile hold together. The checker is the `switchyard-manifest-check` crate
//! (`tools/manifest-check`, with unit tests of its own on small manifests); here it runs on the
//! files as they are in the repository:
//!
//! * `deploy/switchyard.yaml` (read with serde-saphyr) passes every check: `hostNetwork`;
//!   RollingUpdate with maxSurge 1 and maxUnavailable 0 and no declared ports; the proxy
//!   container's NET_ADMIN and NET_RAW and a seccomp profile that lets io_uring through;
//!   `terminationGracePeriodSeconds` above `--drain-time-s`; `runAsUser` and `runAsGroup` equal
//!   to the capture init container's `-u` and `-g`; the capture `-p` equal to the port of the
//!   bootstrap's original-destination listener; the admin on a Unix socket in an `emptyDir`
//!   reached by the probes and the preStop hook (see the crate's documentation);
//! * `deploy/capture-remove.yaml` (uninstall): `switchyard capture remove` as root with
//!   NET_ADMIN and NET_RAW on every node, host network, every taint tolerated, same image;
//! * `deploy/Dockerfile`: the runtime stage runs as UID 1337 (the UID capture exempts), creates
//!   that user, installs iptables (capture) and curl (the probes and the preStop hook);
//! * the ConfigMap's bootstrap passes `switchyard validate` (Switchyard's own command: run once,
//!   in the Switchyard pass) and `envoy --mode validate` (needs Envoy, as validate_cli.rs);
//! * the checker itself is shown to catch each broken field: a copy of the parsed manifest is
//!   changed in memory (maxUnavailable 1, readiness on another socket, the socket's directory
//!   on a hostPath, a preStop without `--unix-socket`, ...) and the report must name that
//!   field; the TCP admin form and both original-destination spellings are shown to be
//!   understood, and the curl reader is checked on its own.
//!
//! No proxy is started. Outside CI a missing prerequisite (Envoy) prints `SKIPPED:`; with
//! `CI=true` it fails.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use switchyard_manifest_check::value::{array_at, get, runs_switchyard, str_at};
use switchyard_manifest_check::{
    bootstrap_text, check, check_capture_remove, curls, locate, parse_yaml_docs, Admin, Deploy,
    CAPTURE_REMOVE, MANIFEST,
};

/// The deployment of this repository, parsed once.
fn load_deploy() -> Deploy {
    static LOADED: OnceLock<Deploy> = OnceLock::new();
    LOADED
        .get_or_init(|| Deploy::load(&repo_root()).unwrap_or_else(|e| panic!("{e}")))
        .clone()
}

fn assert_clean(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "deploy/: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn manifests_have_the_node_proxy_fields() {
    let d = load_deploy();
    let kinds: Vec<&str> = d
        .docs
        .iter()
        .filter_map(|doc| str_at(doc, &["kind"]))
        .collect();
    for want in ["Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"] {
        assert!(
            kinds.contains(&want),
            "{MANIFEST}: no {want} (kinds: {kinds:?})"
        );
    }
    assert_clean(&check(&d));
}

/// The admin socket of the manifest as shipped, and the volume mounted at its directory.
const ADMIN_SOCKET: &str = "/run/switchyard/admin.sock";
const ADMIN_VOLUME: &str = "admin";

/// Each check catches its field: one change at a time to a copy of the real manifest.
#[test]
fn checker_names_the_broken_field() {
    let base = load_deploy();
    assert_clean(&check(&base));
    let at = locate(&base);
    let set_arg = |c: &mut Value, name: &str, value: &str| {
        let args = c["args"].as_array_mut().expect("args");
        let i = args
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("no {name} in args"));
        args[i + 1] = json!(value);
    };

    type Mutation<'a> = Box<dyn Fn(&mut Deploy) + 'a>;
    let cases: Vec<(&str, &str, Mutation<'_>)> = vec![
        (
            "maxUnavailable 1",
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
            Box::new(|d| {
                at.ds(d)["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = json!(1)
            }),
        ),
        (
            "maxSurge 0",
            "spec.updateStrategy.rollingUpdate.maxSurge",
            Box::new(|d| {
                at.ds(d)["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = json!(0)
            }),
        ),
        (
            "OnDelete",
            "spec.updateStrategy.type",
            Box::new(|d| at.ds(d)["spec"]["updateStrategy"]["type"] = json!("OnDelete")),
        ),
        (
            "hostNetwork false",
            "spec.template.spec.hostNetwork",
            Box::new(|d| at.pod(d)["hostNetwork"] = json!(false)),
        ),
        (
            "a declared port",
            ".ports",
            Box::new(|d| at.proxy(d)["ports"] = json!([{"containerPort": 15001}])),
        ),
        (
            "NET_RAW not added",
            "securityContext.capabilities.add",
            Box::new(|d| {
                at.proxy(d)["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"])
            }),
        ),
        (
            "seccomp RuntimeDefault",
            "seccompProfile.type",
            Box::new(|d| {
                at.proxy(d)["securityContext"]["seccompProfile"] = json!({"type": "RuntimeDefault"})
            }),
        ),
        (
            "seccomp Localhost without a shipped profile",
            "seccompProfile.type",
            Box::new(|d| {
                at.proxy(d)["securityContext"]["seccompProfile"] =
                    json!({"type": "Localhost", "localhostProfile": "profiles/no-such.json"})
            }),
        ),
        (
            "seccomp left to the pod's RuntimeDefault",
            "seccompProfile.type",
            Box::new(|d| {
                let sc = at.proxy(d)["securityContext"]
                    .as_object_mut()
                    .expect("securityContext");
                sc.remove("seccompProfile");
                at.pod(d)["securityContext"] =
                    json!({"seccompProfile": {"type": "RuntimeDefault"}});
            }),
        ),
        (
            "readiness on /healthz",
            "readinessProbe.exec.command",
            Box::new(|d| {
                at.replace_in_proxy(d, "http://localhost/ready", "http://localhost/healthz")
            }),
        ),
        (
            "readiness on another socket",
            "readinessProbe.exec.command",
            Box::new(|d| {
                let probe = &mut at.proxy(d)["readinessProbe"];
                let text = serde_json::to_string(probe).expect("to JSON");
                *probe = serde_json::from_str(&text.replace(ADMIN_SOCKET, "/run/other.sock"))
                    .expect("from JSON");
            }),
        ),
        (
            "readiness without curl -f (exits 0 on a 503)",
            "readinessProbe.exec.command",
            Box::new(|d| {
                at.proxy(d)["readinessProbe"]["exec"]["command"] = json!([
                    "curl",
                    "-sS",
                    "--unix-socket",
                    ADMIN_SOCKET,
                    "http://localhost/ready"
                ])
            }),
        ),
        (
            "readiness by httpGet on the old TCP port",
            "readinessProbe.httpGet",
            Box::new(|d| {
                at.proxy(d)["readinessProbe"] = json!({
                    "httpGet": {"host": "127.0.0.1", "port": 15000, "path": "/ready"}
                })
            }),
        ),
        (
            "admin moved in the bootstrap, probes not",
            "readinessProbe.exec.command",
            Box::new(|d| {
                at.edit_bootstrap(d, |b| {
                    b["admin"]["address"]["pipe"]["path"] = json!("/run/switchyard/other.sock")
                })
            }),
        ),
        (
            "admin back on TCP in the bootstrap",
            "ConfigMap bootstrap: admin.address",
            Box::new(|d| {
                at.edit_bootstrap(d, |b| {
                    b["admin"]["address"] = json!({
                        "socket_address": {"address": "127.0.0.1", "port_value": 15000}
                    })
                })
            }),
        ),
        (
            "admin socket the owner cannot write",
            "ConfigMap bootstrap: admin.address.pipe.mode",
            Box::new(|d| {
                at.edit_bootstrap(d, |b| b["admin"]["address"]["pipe"]["mode"] = json!(256))
            }),
        ),
        (
            "socket directory on a hostPath (shared by the surge pods)",
            "spec.template.spec.volumes[admin]",
            Box::new(|d| {
                *at.volume(d, ADMIN_VOLUME) = json!({
                    "name": ADMIN_VOLUME,
                    "hostPath": {"path": "/run/switchyard", "type": "DirectoryOrCreate"}
                })
            }),
        ),
        (
            "socket directory not mounted",
            "].volumeMounts",
            Box::new(|d| {
                at.proxy(d)["volumeMounts"]
                    .as_array_mut()
                    .expect("volumeMounts")
                    .retain(|m| str_at(m, &["name"]) != Some(ADMIN_VOLUME))
            }),
        ),
        (
            "socket directory mounted read-only",
            "volumeMounts[admin].readOnly",
            Box::new(|d| {
                for m in at.proxy(d)["volumeMounts"]
                    .as_array_mut()
                    .expect("volumeMounts")
                {
                    if str_at(m, &["name"]) == Some(ADMIN_VOLUME) {
                        m["readOnly"] = json!(true);
                    }
                }
            }),
        ),
        (
            "admin socket moved out of the mount (bootstrap, probes and hook alike)",
            "].volumeMounts",
            Box::new(|d| {
                at.replace_in_proxy(d, ADMIN_SOCKET, "/tmp/admin.sock");
                at.edit_bootstrap(d, |b| {
                    b["admin"]["address"]["pipe"]["path"] = json!("/tmp/admin.sock")
                });
            }),
        ),
        (
            "liveness on another socket",
            "livenessProbe.exec.command",
            Box::new(|d| {
                let probe = &mut at.proxy(d)["livenessProbe"];
                let text = serde_json::to_string(probe).expect("to JSON");
                *probe = serde_json::from_str(&text.replace(ADMIN_SOCKET, "/run/other.sock"))
                    .expect("from JSON");
            }),
        ),
        (
            "no liveness probe",
            "livenessProbe",
            Box::new(|d| {
                at.proxy(d)
                    .as_object_mut()
                    .expect("container")
                    .remove("livenessProbe");
            }),
        ),
        (
            "no listener on the original destination",
            "ConfigMap bootstrap: static_resources.listeners",
            Box::new(|d| {
                at.edit_bootstrap(d, |b| {
                    for l in b["static_resources"]["listeners"]
                        .as_array_mut()
                        .expect("listeners")
                    {
                        let l = l.as_object_mut().expect("listener");
                        l.remove("listener_filters");
                        l.remove("use_original_dst");
                    }
                })
            }),
        ),
        (
            "no preStop",
            "lifecycle.preStop.exec.command",
            Box::new(|d| {
                at.proxy(d)
                    .as_object_mut()
                    .expect("container")
                    .remove("lifecycle");
            }),
        ),
        (
            "preStop that does not drain",
            "lifecycle.preStop.exec.command",
            Box::new(|d| {
                at.proxy(d)["lifecycle"]["preStop"]["exec"]["command"] = json!(["sleep", "5"])
            }),
        ),
        (
            "preStop without --unix-socket (to a TCP port nothing listens on)",
            "lifecycle.preStop.exec.command",
            Box::new(|d| {
                at.replace_in_proxy(d, &format!("--unix-socket {ADMIN_SOCKET} "), "");
                at.replace_in_proxy(d, "http://localhost/", "http://127.0.0.1:15000/");
            }),
        ),
        (
            "preStop drain by GET",
            "lifecycle.preStop.exec.command",
            Box::new(|d| {
                at.proxy(d)["lifecycle"]["preStop"]["exec"]["command"] = json!([
                    "curl",
                    "-fsS",
                    "--unix-socket",
                    ADMIN_SOCKET,
                    "http://localhost/drain_listeners"
                ])
            }),
        ),
        (
            "grace period equal to the drain time",
            "terminationGracePeriodSeconds",
            Box::new(|d| at.pod(d)["terminationGracePeriodSeconds"] = json!(30)),
        ),
        (
            "drain time raised above the grace period",
            "terminationGracePeriodSeconds",
            Box::new(|d| set_arg(at.proxy(d), "--drain-time-s", "60")),
        ),
        (
            "proxy runs as root",
            "securityContext.runAsUser",
            Box::new(|d| at.proxy(d)["securityContext"]["runAsUser"] = json!(0)),
        ),
        (
            "capture exempts another UID",
            "securityContext.runAsUser",
            Box::new(|d| set_arg(at.capture(d), "-u", "1000")),
        ),
        (
            "capture exempts another GID",
            "securityContext.runAsGroup",
            Box::new(|d| set_arg(at.capture(d), "-g", "1000")),
        ),
        (
            "capture redirects to another port",
            "initContainers[capture].args -p",
            Box::new(|d| set_arg(at.capture(d), "-p", "15002")),
        ),
        (
            "capture without NET_RAW",
            "initContainers[capture].securityContext.capabilities.add",
            Box::new(|d| {
                at.capture(d)["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"])
            }),
        ),
        (
            "the ConfigMap key renamed",
            "args -c",
            Box::new(|d| {
                let data = at.cm(d)["data"].as_object_mut().expect("data");
                let v = data.remove("bootstrap.yaml").expect("bootstrap.yaml");
                data.insert("envoy.yaml".into(), v);
            }),
        ),
        (
            "an undefined $(VAR)",
            "env",
            Box::new(|d| {
                at.proxy(d)
                    .as_object_mut()
                    .expect("container")
                    .remove("env");
            }),
        ),
        (
            "Dockerfile runs as root",
            "deploy/Dockerfile runtime stage USER",
            Box::new(|d| d.dockerfile = d.dockerfile.replace("USER 1337:1337", "USER 0")),
        ),
        (
            "Dockerfile without iptables",
            "deploy/Dockerfile runtime stage RUN apt-get install",
            Box::new(|d| d.dockerfile = d.dockerfile.replace(" iptables ", " ")),
        ),
        (
            "Dockerfile without curl",
            "deploy/Dockerfile runtime stage RUN apt-get install",
            Box::new(|d| d.dockerfile = d.dockerfile.replace(" curl ", " ")),
        ),
        (
            "Dockerfile user with another UID",
            "deploy/Dockerfile runtime stage RUN useradd",
            Box::new(|d| d.dockerfile = d.dockerfile.replace("--uid 1337", "--uid 1000")),
        ),
    ];

    let mut failures = Vec::new();
    for (what, field, mutate) in &cases {
        let mut d = base.clone();
        mutate(&mut d);
        let problems = check(&d);
        if !problems.iter().any(|p| p.contains(field)) {
            failures.push(format!(
                "{what}: no problem names {field:?}; reported: {problems:#?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the checker missed {} of {} broken fields:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The older TCP admin form is still understood (httpGet probes on 127.0.0.1 and the admin
/// port, a preStop curl to that address): with it the only problem left is the admin address
/// itself, which hostNetwork and the surge rule out.
#[test]
fn tcp_admin_form_is_understood_but_not_for_the_surge() {
    let mut d = load_deploy();
    let at = locate(&d);
    at.edit_bootstrap(&mut d, |b| {
        b["admin"]["address"] =
            json!({"socket_address": {"address": "127.0.0.1", "port_value": 15000}})
    });
    let proxy = at.proxy(&mut d);
    proxy["readinessProbe"] = json!({
        "httpGet": {"host": "127.0.0.1", "port": 15000, "path": "/ready"},
        "periodSeconds": 2
    });
    proxy["livenessProbe"] = json!({
        "httpGet": {"host": "127.0.0.1", "port": "15000", "path": "/server_info"}
    });
    proxy["lifecycle"]["preStop"]["exec"]["command"] = json!([
        "sh",
        "-c",
        "curl -fsS -m 2 -X POST http://127.0.0.1:15000/healthcheck/fail; \
         curl -fsS -m 2 -X POST http://127.0.0.1:15000/drain_listeners; sleep 5"
    ]);
    let problems = check(&d);
    assert!(
        !problems.is_empty()
            && problems
                .iter()
                .all(|p| p.starts_with("ConfigMap bootstrap: admin.address:")),
        "want only the admin address named (TCP under hostNetwork), got {problems:#?}"
    );

    // Without hostNetwork (a pod of its own network namespace) the TCP admin would do; only
    // hostNetwork is then reported.
    at.pod(&mut d)["hostNetwork"] = json!(false);
    let problems = check(&d);
    assert!(
        problems.len() == 1 && problems[0].contains("spec.template.spec.hostNetwork"),
        "{problems:#?}"
    );
}

/// The capture target is found in either spelling of "original destination":
/// `use_original_dst: true` or the `envoy.filters.listener.original_dst` listener filter (by
/// name, or by its typed_config type alone).
#[test]
fn either_original_destination_form_is_recognised() {
    let base = load_deploy();
    let at = locate(&base);
    type Edit = fn(&mut serde_json::Map<String, Value>);
    let forms: [(&str, Edit); 3] = [
        ("use_original_dst: true", |l| {
            l.remove("listener_filters");
            l.insert("use_original_dst".into(), json!(true));
        }),
        ("the listener filter under another name", |l| {
            l["listener_filters"][0]["name"] = json!("original_dst");
        }),
        ("the listener filter as shipped", |_| {}),
    ];
    for (what, edit) in forms {
        let mut d = base.clone();
        at.edit_bootstrap(&mut d, |b| {
            let l = b["static_resources"]["listeners"][0]
                .as_object_mut()
                .expect("listener");
            edit(l);
        });
        let problems = check(&d);
        assert!(problems.is_empty(), "{what}: {problems:#?}");
    }
}

/// The curl reader the probe and hook checks rely on.
#[test]
fn curl_commands_are_read() {
    let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let pipe = Admin::Pipe {
        path: ADMIN_SOCKET.into(),
    };
    let tcp = Admin::Tcp {
        host: "127.0.0.1".into(),
        port: 15000,
    };

    let c = curls(&words(&[
        "curl",
        "-fsS",
        "-m",
        "1",
        "--unix-socket",
        ADMIN_SOCKET,
        "http://localhost/ready",
    ]));
    assert_eq!(c.len(), 1);
    assert!(c[0].fail && c[0].reaches(&pipe) && !c[0].reaches(&tcp));
    assert_eq!((c[0].method().as_str(), c[0].path()), ("GET", "/ready"));

    let c = curls(&words(&[
        "/bin/sh",
        "-c",
        "curl -sSm2 --unix-socket=/run/switchyard/admin.sock -XPOST http://x/healthcheck/fail; \
         curl -s -d '' \"http://127.0.0.1:15000/drain_listeners\" && sleep 5",
    ]));
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(!c[0].fail && c[0].reaches(&pipe));
    assert_eq!(
        (c[0].method().as_str(), c[0].path()),
        ("POST", "/healthcheck/fail")
    );
    assert!(c[1].reaches(&tcp) && !c[1].reaches(&pipe));
    assert_eq!(
        (c[1].method().as_str(), c[1].path()),
        ("POST", "/drain_listeners")
    );

    let wildcard = Admin::Tcp {
        host: "0.0.0.0".into(),
        port: 15000,
    };
    let c = curls(&words(&["curl", "localhost:15000/ready"]));
    assert!(c[0].reaches(&wildcard) && !c[0].reaches(&tcp));
    assert!(curls(&words(&["wget", "-qO-", "http://127.0.0.1:15000/ready"])).is_empty());
}

/// `deploy/capture-remove.yaml`, the uninstall step: on every node (host network, every taint
/// tolerated), `switchyard capture remove` as root with NET_ADMIN and NET_RAW, from the proxy's
/// image, in the proxy's namespace.
#[test]
fn capture_remove_daemonset_undoes_capture_on_every_node() {
    let path = repo_root().join(CAPTURE_REMOVE);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{CAPTURE_REMOVE}: {e}"));
    let docs = parse_yaml_docs(&text).unwrap_or_else(|e| panic!("{CAPTURE_REMOVE}: {e}"));
    let [ds] = docs.as_slice() else {
        panic!("{CAPTURE_REMOVE}: want one document, found {}", docs.len());
    };
    assert_clean(&check_capture_remove(ds, &load_deploy()));
}

/// The ConfigMap's bootstrap, written to a file of its own (`.yaml`, as the pod sees it).
fn bootstrap_file(tag: &str) -> PathBuf {
    let d = load_deploy();
    let ds = d
        .docs
        .iter()
        .find(|doc| str_at(doc, &["kind"]) == Some("DaemonSet"))
        .expect("a DaemonSet");
    let pod = get(ds, &["spec", "template", "spec"]).expect("a pod template");
    let proxy = array_at(pod, &["containers"])
        .iter()
        .find(|c| runs_switchyard(c, &["run"]))
        .expect("a container running `switchyard run`");
    let text = bootstrap_text(&d.docs, pod, proxy).unwrap_or_else(|e| panic!("{e}"));
    let file = test_dir(tag).join("bootstrap.yaml");
    fs::write(&file, text).expect("write bootstrap");
    file
}

/// `switchyard validate` accepts the bootstrap: Switchyard's own command, run once (in the
/// Switchyard pass).
#[test]
fn configmap_bootstrap_passes_switchyard_validate() {
    let kind = selected_proxy();
    if kind != ProxyKind::Switchyard {
        skip_unsupported(
            kind,
            "`switchyard validate` is Switchyard's command (checked once)",
        );
        return;
    }
    if !proxy_available(kind) {
        return;
    }
    let file = bootstrap_file("deploy-validate");
    let out = Command::new(switchyard_bin())
        .args(["validate", "-c"])
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("run switchyard validate");
    assert!(
        out.status.success(),
        "{MANIFEST}: ConfigMap switchyard-bootstrap data.bootstrap.yaml rejected by \
         `switchyard validate` ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let _ = fs::remove_dir_all(file.parent().expect("dir"));
}

/// Real Envoy accepts the same bootstrap (`envoy --mode validate`), as for the valid corpus.
#[test]
fn configmap_bootstrap_passes_envoy_validate() {
    if !require(
        envoy_available(),
        &format!("Envoy not found at {}", envoy_bin().display()),
    ) {
        return;
    }
    let file = bootstrap_file("deploy-envoy");
    let out = envoy_validate(&file);
    assert!(
        out.status.success(),
        "{MANIFEST}: ConfigMap switchyard-bootstrap data.bootstrap.yaml rejected by \
         `envoy --mode validate` ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let _ = fs::remove_dir_all(file.parent().expect("dir"));
}
