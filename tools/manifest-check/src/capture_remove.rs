//! The uninstall DaemonSet, `deploy/capture-remove.yaml` ([`check_capture_remove`]).

use crate::daemonset::check_iptables_container;
use crate::deploy::{Deploy, CAPTURE_REMOVE, MANIFEST};
use crate::report::Report;
use crate::value::{array_at, get, runs_switchyard, shown, str_at};
use serde_json::Value;

/// Everything wrong with the uninstall DaemonSet `ds`, each item naming its field: on every
/// node (host network, every taint tolerated), `switchyard capture remove` as root with
/// NET_ADMIN and NET_RAW, from the image of `node`'s proxy, in `node`'s namespace.
pub fn check_capture_remove(ds: &Value, node: &Deploy) -> Vec<String> {
    let Some(node_ds) = node
        .docs
        .iter()
        .find(|d| str_at(d, &["kind"]) == Some("DaemonSet"))
    else {
        return vec![format!(
            "{MANIFEST} kind: DaemonSet: none (the proxy's image and namespace)"
        )];
    };
    let proxy_image = array_at(node_ds, &["spec", "template", "spec", "containers"])
        .iter()
        .find(|c| runs_switchyard(c, &["run"]))
        .and_then(|c| c.get("image"));

    let mut r = Report::default();
    let f = |p: &str| format!("{CAPTURE_REMOVE} {p}");
    r.expect(
        str_at(ds, &["kind"]) == Some("DaemonSet"),
        f("kind"),
        format!("is {}, want DaemonSet", shown(ds.get("kind"))),
    );
    r.expect(
        get(ds, &["metadata", "namespace"]) == get(node_ds, &["metadata", "namespace"]),
        f("metadata.namespace"),
        format!(
            "is {}, want switchyard-node's {}",
            shown(get(ds, &["metadata", "namespace"])),
            shown(get(node_ds, &["metadata", "namespace"]))
        ),
    );
    let pod = get(ds, &["spec", "template", "spec"]).unwrap_or(&Value::Null);
    r.expect(
        pod.get("hostNetwork") == Some(&Value::Bool(true)),
        f("spec.template.spec.hostNetwork"),
        format!("is {}, want true", shown(pod.get("hostNetwork"))),
    );
    r.expect(
        array_at(pod, &["tolerations"])
            .iter()
            .any(|t| str_at(t, &["operator"]) == Some("Exists") && t.get("key").is_none()),
        f("spec.template.spec.tolerations"),
        "no `operator: Exists` toleration without a key: tainted nodes would keep their rules",
    );
    let removers: Vec<&Value> = array_at(pod, &["initContainers"])
        .iter()
        .filter(|c| runs_switchyard(c, &["capture", "remove"]))
        .collect();
    match removers.as_slice() {
        [c] => {
            let name = str_at(c, &["name"]).unwrap_or("?");
            let cf = |p: &str| f(&format!("initContainers[{name}].{p}"));
            check_iptables_container(c, &cf, proxy_image, "switchyard-node's", &mut r);
        }
        other => r.bad(
            f("spec.template.spec.initContainers"),
            format!(
                "want one running `switchyard capture remove`, found {}",
                other.len()
            ),
        ),
    }
    r.0
}

#[cfg(test)]
mod tests {
    use super::check_capture_remove;
    use crate::testdata;
    use crate::yaml::parse_yaml_docs;
    use serde_json::{json, Value};

    #[track_caller]
    fn problems(change: impl FnOnce(&mut Value)) -> Vec<String> {
        let mut docs = parse_yaml_docs(include_str!("../testdata/capture-remove.yaml"))
            .expect("testdata/capture-remove.yaml parses");
        change(&mut docs[0]);
        check_capture_remove(&docs[0], &testdata::deploy())
    }

    #[track_caller]
    fn rejects(field: &str, change: impl FnOnce(&mut Value)) {
        assert_eq!(problems(|_| {}), Vec::<String>::new());
        let p = problems(change);
        assert!(
            p.iter()
                .any(|p| p.starts_with(&format!("deploy/capture-remove.yaml {field}: "))),
            "{p:?}"
        );
    }

    fn pod(ds: &mut Value) -> &mut Value {
        &mut ds["spec"]["template"]["spec"]
    }

    fn remover(ds: &mut Value) -> &mut Value {
        &mut pod(ds)["initContainers"][0]
    }

    #[test]
    fn a_daemonset_in_the_proxys_namespace() {
        rejects("kind", |ds| ds["kind"] = json!("Job"));
        rejects("metadata.namespace", |ds| {
            ds["metadata"]["namespace"] = json!("default")
        });
    }

    #[test]
    fn on_every_node() {
        rejects("spec.template.spec.hostNetwork", |ds| {
            pod(ds)["hostNetwork"] = json!(false)
        });
        rejects("spec.template.spec.tolerations", |ds| {
            pod(ds)["tolerations"] = json!([{"key": "a", "operator": "Exists"}])
        });
    }

    #[test]
    fn removes_as_root_with_the_capabilities_and_the_proxys_image() {
        rejects("spec.template.spec.initContainers", |ds| {
            remover(ds)["args"] = json!(["capture", "install"])
        });
        rejects("initContainers[remove].securityContext.runAsUser", |ds| {
            remover(ds)["securityContext"]["runAsUser"] = json!(1337)
        });
        rejects(
            "initContainers[remove].securityContext.capabilities.add",
            |ds| remover(ds)["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]),
        );
        rejects("initContainers[remove].image", |ds| {
            remover(ds)["image"] = json!("sy:2")
        });
    }
}
