//! The node-proxy DaemonSet checked against its bootstrap, the seccomp profiles and the
//! Dockerfile ([`check`]): surge without a gap, capture's UID, GID and port, the admin socket,
//! the probes and the preStop hook.

use crate::bootstrap::{bootstrap_text, read_bootstrap, Admin};
use crate::curl::curls;
use crate::deploy::Deploy;
use crate::dockerfile::check_dockerfile;
use crate::report::Report;
use crate::value::{
    array_at, capabilities_added, flag, get, has_flag, int_of, opt, runs_switchyard, security,
    shown, str_at, strings, switchyard_words,
};
use crate::yaml::parse_yaml_docs;
use crate::{DEFAULT_CAPTURE_PORT, DEFAULT_DRAIN_TIME_S, DEFAULT_PROXY_ID};
use serde_json::Value;
use std::fs;
use std::path::Path;

/// Whether a Localhost seccomp profile shipped in `dir` allows the three io_uring calls.
pub fn localhost_profile_allows_io_uring(
    dir: &Path,
    localhost_profile: &str,
) -> Result<(), String> {
    let file = Path::new(localhost_profile)
        .file_name()
        .ok_or("localhostProfile has no file name")?;
    let path = dir.join(file);
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let profile: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let allows = |name: &str| {
        str_at(&profile, &["defaultAction"]) == Some("SCMP_ACT_ALLOW")
            || array_at(&profile, &["syscalls"]).iter().any(|s| {
                str_at(s, &["action"]) == Some("SCMP_ACT_ALLOW")
                    && array_at(s, &["args"]).is_empty()
                    && strings(s.get("names")).iter().any(|n| n == name)
            })
    };
    let missing: Vec<&str> = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
        .into_iter()
        .filter(|n| !allows(n))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{} does not allow {missing:?}", path.display()))
    }
}

/// Everything wrong with the deployment, each item naming its field; empty when all is well.
pub fn check(d: &Deploy) -> Vec<String> {
    let mut r = Report::default();
    let daemonsets: Vec<&Value> = d
        .docs
        .iter()
        .filter(|doc| str_at(doc, &["kind"]) == Some("DaemonSet"))
        .collect();
    let [ds] = daemonsets.as_slice() else {
        r.bad(
            "kind: DaemonSet",
            format!("want exactly one, found {}", daemonsets.len()),
        );
        return r.0;
    };
    let ds_name = str_at(ds, &["metadata", "name"]).unwrap_or("?");
    let f = |path: &str| format!("DaemonSet/{ds_name} {path}");
    let pod = get(ds, &["spec", "template", "spec"]).unwrap_or(&Value::Null);

    // The node's network namespace.
    r.expect(
        pod.get("hostNetwork") == Some(&Value::Bool(true)),
        f("spec.template.spec.hostNetwork"),
        format!("is {}, want true", shown(pod.get("hostNetwork"))),
    );

    // Surge, never a gap.
    let strategy = get(ds, &["spec", "updateStrategy"]).unwrap_or(&Value::Null);
    r.expect(
        str_at(strategy, &["type"]) == Some("RollingUpdate"),
        f("spec.updateStrategy.type"),
        format!("is {}, want RollingUpdate", shown(strategy.get("type"))),
    );
    for (key, want) in [("maxSurge", 1), ("maxUnavailable", 0)] {
        let v = get(strategy, &["rollingUpdate", key]);
        r.expect(
            v.and_then(Value::as_i64) == Some(want),
            f(&format!("spec.updateStrategy.rollingUpdate.{key}")),
            format!("is {}, want {want}", shown(v)),
        );
    }

    let containers = array_at(pod, &["containers"]);
    let inits = array_at(pod, &["initContainers"]);
    // Declared ports of a hostNetwork pod are host ports: the surge pod would not be scheduled
    // next to the old one.
    for (list, cs) in [("containers", containers), ("initContainers", inits)] {
        for c in cs {
            if !array_at(c, &["ports"]).is_empty() {
                r.bad(
                    f(&format!(
                        "spec.template.spec.{list}[{}].ports",
                        str_at(c, &["name"]).unwrap_or("?")
                    )),
                    "declared: with hostNetwork these are host ports, and the maxSurge pod \
                     would be unschedulable next to the old one",
                );
            }
        }
    }

    // The proxy: the container running `switchyard run`.
    let Some(proxy) = containers.iter().find(|c| runs_switchyard(c, &["run"])) else {
        r.bad(
            f("spec.template.spec.containers"),
            "no container runs `switchyard run`",
        );
        return r.0;
    };
    let pname = str_at(proxy, &["name"]).unwrap_or("?");
    let pf = |path: &str| f(&format!("containers[{pname}].{path}"));
    let run_words = switchyard_words(proxy).unwrap_or_default();

    expect_net_capabilities(proxy, pf("securityContext.capabilities.add"), &mut r);

    // io_uring through seccomp.
    let seccomp_field = if get(proxy, &["securityContext", "seccompProfile"]).is_some() {
        pf("securityContext.seccompProfile.type")
    } else {
        f("spec.template.spec.securityContext.seccompProfile.type")
    };
    match security(pod, proxy, "seccompProfile") {
        None => r.bad(
            seccomp_field,
            "not set: the runtime's default profile (RuntimeDefault) denies io_uring; \
             want Unconfined or a Localhost profile that allows io_uring_*",
        ),
        Some(p) => match str_at(p, &["type"]) {
            Some("Unconfined") => {}
            Some("Localhost") => {
                let lp = str_at(p, &["localhostProfile"]).unwrap_or_default();
                if let Err(e) = localhost_profile_allows_io_uring(&d.seccomp_dir, lp) {
                    r.bad(seccomp_field, format!("Localhost {lp:?}: {e}"));
                }
            }
            other => r.bad(
                seccomp_field,
                format!(
                    "is {}: the runtimes' default profiles deny io_uring_setup, \
                     io_uring_enter and io_uring_register; want Unconfined or Localhost",
                    opt(other)
                ),
            ),
        },
    }

    // The bootstrap the proxy reads.
    let boot = match bootstrap_text(&d.docs, pod, proxy) {
        Err(e) => {
            r.bad(pf("args -c"), e);
            None
        }
        Ok(text) => match parse_yaml_docs(&text) {
            Ok(docs) if docs.len() == 1 => read_bootstrap(&docs[0], "ConfigMap bootstrap", &mut r),
            Ok(docs) => {
                r.bad(
                    "ConfigMap bootstrap",
                    format!("{} YAML documents, want 1", docs.len()),
                );
                None
            }
            Err(e) => {
                r.bad("ConfigMap bootstrap", e);
                None
            }
        },
    };

    if let Some(b) = &boot {
        // In the node's network namespace a TCP admin port is the node's: the surge pod could
        // not bind it while the old pod runs, and the rollout would never finish.
        if let Admin::Tcp { .. } = &b.admin {
            r.expect(
                pod.get("hostNetwork") != Some(&Value::Bool(true)),
                "ConfigMap bootstrap: admin.address",
                format!(
                    "is the TCP address {}: with hostNetwork the maxSurge pod cannot bind it \
                     while the old pod runs; want pipe (a Unix socket in an emptyDir)",
                    b.admin
                ),
            );
        }
        // Readiness: /ready of this pod's admin, failing on 503.
        check_admin_probe(
            proxy,
            "readinessProbe",
            &b.admin,
            Some("/ready"),
            &pf,
            &mut r,
        );
        // Liveness: that the admin answers (any path).
        check_admin_probe(proxy, "livenessProbe", &b.admin, None, &pf, &mut r);
        // The socket's directory: a writable emptyDir of this pod.
        if let Admin::Pipe { path } = &b.admin {
            check_socket_dir(pod, proxy, path, &f, &pf, &mut r);
        }
    }

    // preStop posts to the drain endpoint of this admin.
    let pre_stop = strings(get(proxy, &["lifecycle", "preStop", "exec", "command"]));
    if pre_stop.is_empty() {
        r.bad(pf("lifecycle.preStop.exec.command"), "missing");
    } else if let Some(b) = &boot {
        r.expect(
            curls(&pre_stop).iter().any(|c| {
                c.reaches(&b.admin) && c.path() == "/drain_listeners" && c.method() == "POST"
            }),
            pf("lifecycle.preStop.exec.command"),
            format!(
                "no curl POSTs to /drain_listeners of the admin at {}{}: {pre_stop:?}",
                b.admin,
                match &b.admin {
                    Admin::Pipe { path } => format!(" (--unix-socket {path})"),
                    Admin::Tcp { .. } => String::new(),
                }
            ),
        );
    }

    // Grace period above the drain time.
    let drain = match flag(&run_words, &["--drain-time-s"]) {
        None => Some(DEFAULT_DRAIN_TIME_S),
        Some(s) => s.parse::<f64>().ok(),
    };
    let grace = pod.get("terminationGracePeriodSeconds").and_then(int_of);
    match (drain, grace) {
        (None, _) => r.bad(pf("args --drain-time-s"), "not a number"),
        (Some(drain), grace) => r.expect(
            grace.is_some_and(|g| g as f64 > drain),
            f("spec.template.spec.terminationGracePeriodSeconds"),
            format!("is {}, want more than --drain-time-s {drain}", opt(grace)),
        ),
    }

    // Every $(VAR) in the args is defined in env.
    let env: Vec<&str> = array_at(proxy, &["env"])
        .iter()
        .filter_map(|e| str_at(e, &["name"]))
        .collect();
    for w in &run_words {
        if let Some(var) = w.strip_prefix("$(").and_then(|w| w.strip_suffix(')')) {
            r.expect(
                env.contains(&var),
                pf("env"),
                format!("{var} is used in args but not defined"),
            );
        }
    }

    // The capture init container.
    let captures: Vec<&Value> = inits
        .iter()
        .filter(|c| runs_switchyard(c, &["capture", "install"]))
        .collect();
    let [capture] = captures.as_slice() else {
        r.bad(
            f("spec.template.spec.initContainers"),
            format!(
                "want one running `switchyard capture install`, found {}",
                captures.len()
            ),
        );
        return r.0;
    };
    let cname = str_at(capture, &["name"]).unwrap_or("?");
    let cf = |path: &str| f(&format!("initContainers[{cname}].{path}"));
    let cwords = switchyard_words(capture).unwrap_or_default();
    let id_flag = |names: &[&str]| -> Option<i64> {
        match flag(&cwords, names) {
            None => Some(i64::from(DEFAULT_PROXY_ID)),
            Some(s) => s.parse().ok(),
        }
    };
    let uid = id_flag(&["-u", "--proxy-uid"]);
    let gid = id_flag(&["-g", "--proxy-gid"]);
    let run_as_user = security(pod, proxy, "runAsUser").and_then(int_of);
    let run_as_group = security(pod, proxy, "runAsGroup").and_then(int_of);
    r.expect(
        uid.is_some() && run_as_user == uid,
        pf("securityContext.runAsUser"),
        format!(
            "is {}, but capture exempts -u {}",
            opt(run_as_user),
            opt(uid)
        ),
    );
    r.expect(
        gid.is_some() && run_as_group == gid,
        pf("securityContext.runAsGroup"),
        format!(
            "is {}, but capture exempts -g {}",
            opt(run_as_group),
            opt(gid)
        ),
    );
    check_iptables_container(capture, &cf, proxy.get("image"), "the proxy's", &mut r);
    let port = match flag(&cwords, &["-p", "--proxy-port"]) {
        None => Some(DEFAULT_CAPTURE_PORT),
        Some(s) => s.parse::<u16>().ok(),
    };
    if let Some(b) = &boot {
        match b.original_dst_ports.as_slice() {
            [(name, lport)] => r.expect(
                port == Some(*lport),
                cf("args -p"),
                format!(
                    "is {}, but the original-destination listener {name:?} is on port \
                     {lport}",
                    opt(port)
                ),
            ),
            other => r.bad(
                "ConfigMap bootstrap: static_resources.listeners",
                format!(
                    "want one listener with use_original_dst: true or the original_dst listener \
                     filter (capture's target), found {}",
                    other.len()
                ),
            ),
        }
        if has_flag(&cwords, "--inbound") {
            let inbound = match flag(&cwords, &["--inbound-port"]) {
                None => Some(15006),
                Some(s) => s.parse::<u16>().ok(),
            };
            r.expect(
                inbound.is_some_and(|p| b.listener_ports.contains(&p)),
                cf("args --inbound-port"),
                format!("{}: no bootstrap listener on that port", opt(inbound)),
            );
        }
    }

    // Every exec command of the proxy container (probes, preStop): what the image must have.
    let execs: Vec<String> = [
        &["readinessProbe", "exec", "command"][..],
        &["livenessProbe", "exec", "command"],
        &["lifecycle", "preStop", "exec", "command"],
    ]
    .iter()
    .map(|path| strings(get(proxy, path)).join(" "))
    .collect();
    check_dockerfile(&d.dockerfile, run_as_user, &execs.join("\n"), &mut r);
    r.0
}

/// `c` adds NET_ADMIN and NET_RAW (`field` names its `capabilities.add`).
pub fn expect_net_capabilities(c: &Value, field: String, r: &mut Report) {
    let caps = capabilities_added(c);
    for cap in ["NET_ADMIN", "NET_RAW"] {
        r.expect(
            caps.iter().any(|c| c == cap),
            &field,
            format!("{caps:?} lacks {cap}"),
        );
    }
}

/// A container that drives iptables (`switchyard capture install` or `remove`): it runs as
/// root with NET_ADMIN and NET_RAW, from `image` (the proxy's, `whose` in messages). `cf`
/// names a field of the container.
pub fn check_iptables_container(
    c: &Value,
    cf: &dyn Fn(&str) -> String,
    image: Option<&Value>,
    whose: &str,
    r: &mut Report,
) {
    let uid = get(c, &["securityContext", "runAsUser"]).and_then(int_of);
    r.expect(
        uid == Some(0),
        cf("securityContext.runAsUser"),
        format!("is {}, want 0 (iptables needs root)", opt(uid)),
    );
    expect_net_capabilities(c, cf("securityContext.capabilities.add"), r);
    r.expect(
        c.get("image") == image,
        cf("image"),
        format!(
            "{} is not {whose} image {}",
            shown(c.get("image")),
            shown(image)
        ),
    );
}

/// `probe` (`readinessProbe`, `livenessProbe`) of the proxy reaches `admin`, on `want_path`
/// if given: an exec probe whose curl goes through the admin's Unix socket (or to its TCP
/// address) and fails on an error status, or, for a TCP admin only, an httpGet probe on its
/// address. Problems are named `<probe>.exec.command` or `<probe>.httpGet.<field>`.
pub fn check_admin_probe(
    proxy: &Value,
    probe: &str,
    admin: &Admin,
    want_path: Option<&str>,
    pf: &dyn Fn(&str) -> String,
    r: &mut Report,
) {
    let Some(p) = proxy.get(probe) else {
        r.bad(
            pf(probe),
            format!("missing: want one on the admin at {admin}"),
        );
        return;
    };
    if let Some(http) = p.get("httpGet") {
        let Admin::Tcp { host, port } = admin else {
            r.bad(
                pf(&format!("{probe}.httpGet")),
                format!(
                    "the kubelet dials TCP, but the admin listens on {admin}: want an exec \
                     probe, curl --unix-socket"
                ),
            );
            return;
        };
        if let Some(want) = want_path {
            r.expect(
                str_at(http, &["path"]) == Some(want),
                pf(&format!("{probe}.httpGet.path")),
                format!("is {}, want {want}", shown(http.get("path"))),
            );
        }
        let got = http.get("port").and_then(int_of);
        r.expect(
            got == Some(i64::from(*port)),
            pf(&format!("{probe}.httpGet.port")),
            format!("is {}, want the bootstrap's admin port {port}", opt(got)),
        );
        // An admin on loopback is reached on loopback (the kubelet dials the pod IP, the
        // node's address, otherwise).
        if host != "0.0.0.0" && host != "::" {
            r.expect(
                str_at(http, &["host"]) == Some(host.as_str()),
                pf(&format!("{probe}.httpGet.host")),
                format!(
                    "is {}, want the admin's address {host}",
                    shown(http.get("host"))
                ),
            );
        }
        return;
    }
    let field = pf(&format!("{probe}.exec.command"));
    let command = strings(get(p, &["exec", "command"]));
    if command.is_empty() {
        r.bad(
            field,
            format!("missing (and no httpGet): want curl to the admin at {admin}"),
        );
        return;
    }
    let calls = curls(&command);
    let Some(call) = calls.iter().find(|c| c.reaches(admin)) else {
        let how = match admin {
            Admin::Pipe { path } => format!("--unix-socket {path}"),
            Admin::Tcp { host, port } => format!("http://{host}:{port}"),
        };
        r.bad(
            field,
            format!("no curl reaches the admin at {admin} ({how}): {command:?}"),
        );
        return;
    };
    if let Some(want) = want_path {
        r.expect(
            call.path() == want,
            &field,
            format!("asks for {}, want {want}: {command:?}", call.path()),
        );
        // A probe's verdict is the exit status: without -f curl exits 0 on a 503.
        r.expect(
            call.fail,
            &field,
            format!("curl without -f/--fail exits 0 on a 503, so {want} could not fail it"),
        );
    }
}

/// The directory of the admin socket `path` is a writable mount of the proxy container
/// backed by an `emptyDir`: one per pod, so the old and the new pod of a surge each have
/// their own socket (a shared directory would give the second pod a live socket in its way).
pub fn check_socket_dir(
    pod: &Value,
    proxy: &Value,
    path: &str,
    f: &dyn Fn(&str) -> String,
    pf: &dyn Fn(&str) -> String,
    r: &mut Report,
) {
    let dir = Path::new(path)
        .parent()
        .and_then(Path::to_str)
        .unwrap_or("/");
    let mount = array_at(proxy, &["volumeMounts"])
        .iter()
        .filter(|m| {
            str_at(m, &["mountPath"]).is_some_and(|mp| {
                let mp = mp.trim_end_matches('/');
                dir == mp || dir.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
            })
        })
        .max_by_key(|m| str_at(m, &["mountPath"]).map_or(0, str::len));
    let Some(mount) = mount else {
        r.bad(
            pf("volumeMounts"),
            format!(
                "nothing is mounted at {dir}, the admin socket's directory: want an emptyDir \
                 volume there (per pod, writable)"
            ),
        );
        return;
    };
    let name = str_at(mount, &["name"]).unwrap_or("?");
    r.expect(
        mount.get("readOnly") != Some(&Value::Bool(true)),
        pf(&format!("volumeMounts[{name}].readOnly")),
        format!("is true: the proxy creates its admin socket {path} there"),
    );
    let Some(volume) = array_at(pod, &["volumes"])
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(name))
    else {
        r.bad(
            f("spec.template.spec.volumes"),
            format!("no volume {name:?} (mounted at the admin socket's directory)"),
        );
        return;
    };
    if volume.get("emptyDir").is_none() {
        let kind = volume
            .as_object()
            .and_then(|o| o.keys().find(|k| *k != "name"))
            .map_or("nothing", String::as_str);
        r.bad(
            f(&format!("spec.template.spec.volumes[{name}]")),
            format!(
                "is a {kind} volume, want emptyDir: the admin socket {path} must be the pod's \
                 own, or the old and the new pod of a surge would meet at one socket"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    //! Each check of [`check`]: the good deployment of `testdata/` passes, and one change to it
    //! is reported naming its field.

    use crate::testdata::{accepts, deploy, problems_after, rejects};
    use serde_json::json;

    #[test]
    fn the_good_deployment_passes() {
        assert_eq!(crate::check(&deploy()), Vec::<String>::new());
    }

    #[test]
    fn one_daemonset() {
        rejects("kind: DaemonSet", |d, at| {
            let ds = at.ds(d).clone();
            d.docs.push(ds);
        });
    }

    #[test]
    fn host_network() {
        rejects("spec.template.spec.hostNetwork", |d, at| {
            at.pod(d)["hostNetwork"] = json!(false)
        });
    }

    #[test]
    fn surge_without_a_gap() {
        rejects("spec.updateStrategy.type", |d, at| {
            at.ds(d)["spec"]["updateStrategy"]["type"] = json!("OnDelete")
        });
        for (key, bad) in [("maxSurge", 0), ("maxUnavailable", 1)] {
            rejects(
                &format!("spec.updateStrategy.rollingUpdate.{key}"),
                |d, at| at.ds(d)["spec"]["updateStrategy"]["rollingUpdate"][key] = json!(bad),
            );
        }
    }

    #[test]
    fn no_declared_ports() {
        rejects("initContainers[capture].ports", |d, at| {
            at.capture(d)["ports"] = json!([{"containerPort": 1}])
        });
    }

    #[test]
    fn a_container_runs_the_proxy() {
        rejects("spec.template.spec.containers", |d, at| {
            at.proxy(d)["args"][0] = json!("validate")
        });
    }

    #[test]
    fn proxy_capabilities() {
        rejects(
            "containers[proxy].securityContext.capabilities.add",
            |d, at| {
                at.proxy(d)["securityContext"]["capabilities"]["add"] = json!(["CAP_NET_ADMIN"])
            },
        );
        accepts(|d, at| {
            at.proxy(d)["securityContext"]["capabilities"]["add"] =
                json!(["CAP_NET_ADMIN", "CAP_NET_RAW"])
        });
    }

    #[test]
    fn seccomp_lets_io_uring_through() {
        let set = |profile: serde_json::Value| {
            move |d: &mut crate::Deploy, at: crate::At| {
                at.proxy(d)["securityContext"]["seccompProfile"] = profile
            }
        };
        rejects(
            "containers[proxy].securityContext.seccompProfile.type",
            set(json!({"type": "RuntimeDefault"})),
        );
        rejects(
            "containers[proxy].securityContext.seccompProfile.type",
            set(json!({"type": "Localhost", "localhostProfile": "profiles/no-io-uring.json"})),
        );
        rejects(
            "containers[proxy].securityContext.seccompProfile.type",
            set(json!({"type": "Localhost", "localhostProfile": "profiles/missing.json"})),
        );
        accepts(set(
            json!({"type": "Localhost", "localhostProfile": "profiles/io-uring.json"}),
        ));
        // Left to the pod, whose profile is the runtime's default.
        rejects(
            "spec.template.spec.securityContext.seccompProfile.type",
            |d, at| {
                at.proxy(d)["securityContext"]
                    .as_object_mut()
                    .expect("securityContext")
                    .remove("seccompProfile");
            },
        );
    }

    #[test]
    fn the_bootstrap_is_found() {
        rejects("containers[proxy].args -c", |d, at| {
            at.proxy(d)["args"][2] = json!("/etc/other/bootstrap.yaml")
        });
        rejects("containers[proxy].args -c", |d, at| {
            at.cm(d)["data"] = json!({"envoy.yaml": "{}"})
        });
        rejects("ConfigMap bootstrap", |d, at| {
            at.cm(d)["data"]["bootstrap.yaml"] = json!("admin: [")
        });
    }

    #[test]
    fn no_tcp_admin_under_host_network() {
        rejects("ConfigMap bootstrap: admin.address", |d, at| {
            at.edit_bootstrap(d, |b| {
                b["admin"]["address"] =
                    json!({"socket_address": {"address": "127.0.0.1", "port_value": 15000}})
            })
        });
    }

    #[test]
    fn readiness_reaches_ready_through_the_socket_and_can_fail() {
        let field = "containers[proxy].readinessProbe.exec.command";
        rejects(field, |d, at| {
            at.proxy(d)["readinessProbe"]["exec"]["command"][1] = json!("-sS")
        });
        rejects(field, |d, at| {
            at.proxy(d)["readinessProbe"]["exec"]["command"][4] = json!("http://localhost/stats")
        });
        rejects(field, |d, at| {
            at.proxy(d)["readinessProbe"]["exec"]["command"][3] = json!("/run/sy/other.sock")
        });
        rejects("containers[proxy].readinessProbe.httpGet", |d, at| {
            at.proxy(d)["readinessProbe"] = json!({"httpGet": {"port": 15000, "path": "/ready"}})
        });
        rejects("containers[proxy].readinessProbe", |d, at| {
            at.proxy(d)
                .as_object_mut()
                .expect("container")
                .remove("readinessProbe");
        });
    }

    #[test]
    fn liveness_reaches_the_socket() {
        rejects("containers[proxy].livenessProbe.exec.command", |d, at| {
            at.proxy(d)["livenessProbe"]["exec"]["command"] = json!(["true"])
        });
        // Any path will do for liveness, and -f is not required.
        accepts(|d, at| {
            at.proxy(d)["livenessProbe"]["exec"]["command"] =
                json!(["curl", "--unix-socket", "/run/sy/admin.sock", "http://x/"])
        });
    }

    #[test]
    fn the_admin_socket_has_its_own_empty_dir() {
        rejects("spec.template.spec.volumes[admin]", |d, at| {
            *at.volume(d, "admin") = json!({"name": "admin", "hostPath": {"path": "/run/sy"}})
        });
        rejects("containers[proxy].volumeMounts[admin].readOnly", |d, at| {
            at.proxy(d)["volumeMounts"][1]["readOnly"] = json!(true)
        });
        rejects("containers[proxy].volumeMounts", |d, at| {
            at.proxy(d)["volumeMounts"][1]["mountPath"] = json!("/run/other")
        });
        rejects("spec.template.spec.volumes", |d, at| {
            at.pod(d)["volumes"][1]["name"] = json!("renamed")
        });
    }

    #[test]
    fn pre_stop_drains_through_the_socket() {
        let field = "containers[proxy].lifecycle.preStop.exec.command";
        rejects(field, |d, at| {
            at.replace_in_proxy(d, "-X POST ", "");
        });
        rejects(field, |d, at| {
            at.replace_in_proxy(d, "drain_listeners", "healthcheck/fail");
        });
        rejects(field, |d, at| {
            at.proxy(d)
                .as_object_mut()
                .expect("container")
                .remove("lifecycle");
        });
    }

    #[test]
    fn grace_period_above_the_drain_time() {
        let field = "spec.template.spec.terminationGracePeriodSeconds";
        rejects(field, |d, at| {
            at.pod(d)["terminationGracePeriodSeconds"] = json!(10)
        });
        rejects(field, |d, at| {
            at.pod(d)
                .as_object_mut()
                .expect("pod")
                .remove("terminationGracePeriodSeconds");
        });
        rejects("containers[proxy].args --drain-time-s", |d, at| {
            at.proxy(d)["args"][4] = json!("soon")
        });
        // Without the flag the default (5 s) is compared.
        accepts(|d, at| {
            let args = at.proxy(d)["args"].as_array_mut().expect("args");
            args.drain(3..5);
        });
    }

    #[test]
    fn args_variables_are_defined() {
        rejects("containers[proxy].env", |d, at| {
            at.proxy(d)["env"][0]["name"] = json!("HOST")
        });
    }

    #[test]
    fn one_capture_init_container() {
        rejects("spec.template.spec.initContainers", |d, at| {
            at.capture(d)["args"][1] = json!("status")
        });
    }

    #[test]
    fn proxy_runs_as_the_uid_and_gid_capture_exempts() {
        rejects("containers[proxy].securityContext.runAsUser", |d, at| {
            at.capture(d)["args"][5] = json!("1000")
        });
        rejects("containers[proxy].securityContext.runAsGroup", |d, at| {
            at.proxy(d)["securityContext"]["runAsGroup"] = json!(0)
        });
        // The pod's securityContext counts when the container's says nothing.
        accepts(|d, at| {
            at.proxy(d)["securityContext"]
                .as_object_mut()
                .expect("securityContext")
                .remove("runAsGroup");
            at.pod(d)["securityContext"] = json!({"runAsGroup": 1337});
        });
    }

    #[test]
    fn capture_runs_as_root_with_the_capabilities_and_the_proxys_image() {
        rejects(
            "initContainers[capture].securityContext.runAsUser",
            |d, at| at.capture(d)["securityContext"]["runAsUser"] = json!(1337),
        );
        rejects(
            "initContainers[capture].securityContext.capabilities.add",
            |d, at| at.capture(d)["securityContext"]["capabilities"]["add"] = json!(["NET_RAW"]),
        );
        rejects("initContainers[capture].image", |d, at| {
            at.capture(d)["image"] = json!("sy:2")
        });
    }

    #[test]
    fn capture_sends_to_the_original_destination_listener() {
        rejects("initContainers[capture].args -p", |d, at| {
            at.capture(d)["args"][3] = json!("15002")
        });
        rejects(
            "ConfigMap bootstrap: static_resources.listeners",
            |d, at| {
                at.edit_bootstrap(d, |b| {
                    b["static_resources"]["listeners"][1]["use_original_dst"] = json!(true)
                })
            },
        );
        // The listener filter, by name, is the same as use_original_dst.
        accepts(|d, at| {
            at.edit_bootstrap(d, |b| {
                let l = &mut b["static_resources"]["listeners"][0];
                l.as_object_mut()
                    .expect("listener")
                    .remove("use_original_dst");
                l["listener_filters"] = json!([{"name": "envoy.filters.listener.original_dst"}]);
            })
        });
    }

    #[test]
    fn capture_inbound_port_has_a_listener() {
        rejects("initContainers[capture].args --inbound-port", |d, at| {
            at.edit_bootstrap(d, |b| {
                b["static_resources"]["listeners"][1]["address"]["socket_address"]["port_value"] =
                    json!(15007)
            })
        });
    }

    #[test]
    fn the_image_has_what_the_probes_use() {
        rejects(
            "deploy/Dockerfile runtime stage RUN apt-get install",
            |d, _| d.dockerfile = d.dockerfile.replace(" curl", ""),
        );
        // Without curl in the probes and hooks, the image need not have it.
        let problems = problems_after(|d, at| {
            d.dockerfile = d.dockerfile.replace(" curl", "");
            at.replace_in_proxy(d, "curl", "wget");
        });
        assert!(
            problems.iter().all(|p| !p.contains("Dockerfile")),
            "{problems:#?}"
        );
    }
}
