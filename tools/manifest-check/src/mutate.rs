//! Changing a parsed deployment in place, for tests that show a check catches a broken field:
//! [`locate`] finds the DaemonSet, the ConfigMap and the two containers, [`At`] reaches into
//! them. These panic when the deployment lacks what they look for (test code).

use crate::deploy::Deploy;
use crate::value::{array_at, get_mut, runs_switchyard, str_at};
use crate::yaml::parse_yaml_docs;
use serde_json::{json, Value};

/// Where the fields a test changes are in a parsed deployment ([`locate`]), with accessors
/// that change them in place.
#[derive(Clone, Copy, Debug)]
pub struct At {
    ds: usize,
    cm: usize,
    proxy: usize,
    capture: usize,
}

impl At {
    pub fn ds<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut d.docs[self.ds]
    }
    pub fn cm<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut d.docs[self.cm]
    }
    pub fn pod<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        get_mut(self.ds(d), &["spec", "template", "spec"])
    }
    pub fn proxy<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut self.pod(d)["containers"][self.proxy]
    }
    pub fn capture<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut self.pod(d)["initContainers"][self.capture]
    }
    /// Changes the ConfigMap's bootstrap as parsed, and writes it back (as JSON, which is
    /// YAML).
    pub fn edit_bootstrap(&self, d: &mut Deploy, edit: impl FnOnce(&mut Value)) {
        let cm = self.cm(d);
        let text = str_at(cm, &["data", "bootstrap.yaml"]).expect("data.bootstrap.yaml");
        let mut docs = parse_yaml_docs(text).expect("the bootstrap parses");
        edit(&mut docs[0]);
        cm["data"]["bootstrap.yaml"] =
            json!(serde_json::to_string_pretty(&docs[0]).expect("to JSON"));
    }
    /// Replaces `from` by `to` in every string of the proxy container (args, probes, hooks,
    /// mounts).
    pub fn replace_in_proxy(&self, d: &mut Deploy, from: &str, to: &str) {
        let proxy = self.proxy(d);
        let text = serde_json::to_string(proxy).expect("to JSON");
        *proxy = serde_json::from_str(&text.replace(from, to)).expect("from JSON");
    }
    pub fn volume<'a>(&self, d: &'a mut Deploy, name: &str) -> &'a mut Value {
        self.pod(d)["volumes"]
            .as_array_mut()
            .expect("volumes")
            .iter_mut()
            .find(|v| str_at(v, &["name"]) == Some(name))
            .unwrap_or_else(|| panic!("no volume {name:?}"))
    }
}

/// Where the fields a test changes are in `base`: its DaemonSet, its ConfigMap, the proxy
/// container (`switchyard run`) and the capture init container (`switchyard capture`).
pub fn locate(base: &Deploy) -> At {
    let ds_index = base
        .docs
        .iter()
        .position(|d| str_at(d, &["kind"]) == Some("DaemonSet"))
        .expect("a DaemonSet");
    let cm_index = base
        .docs
        .iter()
        .position(|d| str_at(d, &["kind"]) == Some("ConfigMap"))
        .expect("a ConfigMap");
    let container_index = |list: &str, first_word: &str| -> usize {
        array_at(&base.docs[ds_index], &["spec", "template", "spec", list])
            .iter()
            .position(|c| runs_switchyard(c, &[first_word]))
            .unwrap_or_else(|| panic!("no {list} entry running `switchyard {first_word}`"))
    };
    At {
        ds: ds_index,
        cm: cm_index,
        proxy: container_index("containers", "run"),
        capture: container_index("initContainers", "capture"),
    }
}

#[cfg(test)]
mod tests {
    use super::locate;
    use crate::testdata;
    use crate::value::str_at;

    #[test]
    fn locates_the_daemonset_configmap_and_containers() {
        let mut d = testdata::deploy();
        let at = locate(&d);
        assert_eq!(str_at(at.ds(&mut d), &["metadata", "name"]), Some("node"));
        assert_eq!(str_at(at.cm(&mut d), &["metadata", "name"]), Some("boot"));
        assert_eq!(str_at(at.proxy(&mut d), &["name"]), Some("proxy"));
        assert_eq!(str_at(at.capture(&mut d), &["name"]), Some("capture"));
        at.edit_bootstrap(&mut d, |b| b["node"] = serde_json::json!({"id": "n"}));
        assert!(str_at(at.cm(&mut d), &["data", "bootstrap.yaml"])
            .is_some_and(|t| t.contains("\"id\": \"n\"")));
    }
}
