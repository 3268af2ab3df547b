//! Checks the Kubernetes deployment in `deploy/`: the node-proxy DaemonSet, its ConfigMap
//! bootstrap, the image's Dockerfile and the uninstall DaemonSet hold together.
//!
//! Every problem is a line naming the field it is about (`"<field>: <what is wrong>"`), so a
//! test can show that each check catches its field. What is checked ([`check`]):
//!
//! * `hostNetwork`; RollingUpdate with maxSurge 1 and maxUnavailable 0 and no declared ports
//!   (host ports would keep the surge pod off the node); the proxy container's NET_ADMIN and
//!   NET_RAW and a seccomp profile that lets io_uring through; `terminationGracePeriodSeconds`
//!   above `--drain-time-s`; `runAsUser` and `runAsGroup` equal to the capture init container's
//!   `-u` and `-g`; the capture `-p` equal to the port of the bootstrap's original-destination
//!   listener (`use_original_dst: true` or the `envoy.filters.listener.original_dst` listener
//!   filter); the bootstrap found through the proxy's `-c`, its volume mount and the ConfigMap
//!   key;
//! * the admin API, which the old and the new pod of a surge must not share: with hostNetwork
//!   the bootstrap's admin is a Unix socket (`admin.address.pipe`, a mode its owner can connect
//!   to), not a TCP port; the socket's directory is a writable mount of the proxy container
//!   backed by an `emptyDir` (one per pod); readiness is an exec probe whose curl goes through
//!   `--unix-socket <that path>` to `/ready` with `-f` (so a 503 fails it); liveness reaches the
//!   same socket; the preStop hook POSTs to `/drain_listeners` through it. The older TCP form
//!   (httpGet on the admin's loopback address and port, preStop curl to `host:port`) is still
//!   understood, and refused only because of hostNetwork;
//! * the Dockerfile ([`check_dockerfile`]): the runtime stage runs as the proxy's UID, creates
//!   that user, installs iptables (capture) and curl (the probes and the preStop hook);
//! * the uninstall DaemonSet ([`check_capture_remove`]): `switchyard capture remove` as root
//!   with NET_ADMIN and NET_RAW on every node, host network, every taint tolerated, same image.
//!
//! YAML is read with `serde-saphyr` into `serde_json::Value` trees ([`parse_yaml_docs`]).
//! Exec commands are read with a small shell-word reader ([`shell::simple_commands`]) and a curl
//! option reader ([`curls`]). [`mutate`] changes a parsed deployment in place for tests.

pub mod bootstrap;
pub mod capture_remove;
pub mod curl;
pub mod daemonset;
pub mod deploy;
pub mod dockerfile;
pub mod mutate;
pub mod report;
pub mod shell;
pub mod value;
pub mod yaml;

pub use bootstrap::{bootstrap_text, read_bootstrap, Admin, Bootstrap};
pub use capture_remove::check_capture_remove;
pub use curl::{curls, Curl};
pub use daemonset::check;
pub use deploy::{Deploy, CAPTURE_REMOVE, DOCKERFILE, MANIFEST, SECCOMP_DIR};
pub use dockerfile::check_dockerfile;
pub use mutate::{locate, At};
pub use report::Report;
pub use yaml::parse_yaml_docs;

/// `switchyard run --drain-time-s` when the flag is left out.
pub const DEFAULT_DRAIN_TIME_S: f64 = 5.0;
/// `switchyard capture install -p` (the proxy's port) when the flag is left out.
pub const DEFAULT_CAPTURE_PORT: u16 = 15001;
/// `switchyard capture install -u`/`-g` (the proxy's UID and GID) when left out.
pub const DEFAULT_PROXY_ID: u32 = 1337;

#[cfg(test)]
mod testdata;
