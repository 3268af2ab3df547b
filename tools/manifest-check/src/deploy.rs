//! The deployment as files: where they are in the repository ([`MANIFEST`], [`DOCKERFILE`],
//! [`SECCOMP_DIR`], [`CAPTURE_REMOVE`]) and [`Deploy`], the node-proxy manifest parsed with the
//! Dockerfile's text.

use crate::yaml::parse_yaml_docs;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

/// The node proxy: Namespace, ServiceAccount, ConfigMap (bootstrap) and DaemonSet.
pub const MANIFEST: &str = "deploy/switchyard.yaml";
/// The image the DaemonSet runs.
pub const DOCKERFILE: &str = "deploy/Dockerfile";
/// Where Localhost seccomp profiles would be shipped.
pub const SECCOMP_DIR: &str = "deploy/seccomp";
/// The uninstall step (`switchyard capture remove` on every node).
pub const CAPTURE_REMOVE: &str = "deploy/capture-remove.yaml";

/// The node-proxy deployment as parsed: what [`crate::check`] reads.
#[derive(Clone, Debug)]
pub struct Deploy {
    /// The documents of [`MANIFEST`].
    pub docs: Vec<Value>,
    /// The text of [`DOCKERFILE`].
    pub dockerfile: String,
    /// [`SECCOMP_DIR`], where a Localhost profile named by the manifest is looked up.
    pub seccomp_dir: PathBuf,
}

impl Deploy {
    /// Reads and parses the deployment of the repository at `root`.
    pub fn load(root: &Path) -> Result<Deploy, String> {
        let read =
            |rel: &str| fs::read_to_string(root.join(rel)).map_err(|e| format!("{rel}: {e}"));
        let docs = parse_yaml_docs(&read(MANIFEST)?).map_err(|e| format!("{MANIFEST}: {e}"))?;
        Ok(Deploy {
            docs,
            dockerfile: read(DOCKERFILE)?,
            seccomp_dir: root.join(SECCOMP_DIR),
        })
    }
}
