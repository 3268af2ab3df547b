//! The Kubernetes deployment in `deploy/`: the node-proxy DaemonSet, its ConfigMap bootstrap and
//! the image's Dockerfile hold together.
//!
//! * `deploy/switchyard.yaml` is parsed (PyYAML: `python3 -c 'import yaml'`, the system Python
//!   or `.venv`) and checked: `hostNetwork`; RollingUpdate with maxSurge 1 and maxUnavailable 0
//!   and no declared ports (host ports would keep the surge pod off the node); the proxy
//!   container's NET_ADMIN and NET_RAW and a seccomp profile that lets io_uring through;
//!   `terminationGracePeriodSeconds` above `--drain-time-s`; `runAsUser` and `runAsGroup` equal
//!   to the capture init container's `-u` and `-g`; the capture `-p` equal to the port of the
//!   bootstrap's original-destination listener (`use_original_dst: true` or the
//!   `envoy.filters.listener.original_dst` listener filter); the bootstrap found through the
//!   proxy's `-c`, its volume mount and the ConfigMap key;
//! * the admin API, which the old and the new pod of a surge must not share: with hostNetwork
//!   the bootstrap's admin is a Unix socket (`admin.address.pipe`, a mode its owner can connect
//!   to), not a TCP port; the socket's directory is a writable mount of the proxy container
//!   backed by an `emptyDir` (one per pod); readiness is an exec probe whose curl goes through
//!   `--unix-socket <that path>` to `/ready` with `-f` (so a 503 fails it); liveness reaches the
//!   same socket; the preStop hook POSTs to `/drain_listeners` through it. The older TCP form
//!   (httpGet on the admin's loopback address and port, preStop curl to `host:port`) is still
//!   understood, and refused only because of hostNetwork;
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
//! No proxy is started. Outside CI a missing prerequisite (PyYAML, Envoy) prints `SKIPPED:`;
//! with `CI=true` it fails.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const MANIFEST: &str = "deploy/switchyard.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const SECCOMP_DIR: &str = "deploy/seccomp";
const CAPTURE_REMOVE: &str = "deploy/capture-remove.yaml";

/// What the defaults are when a flag is left out (`switchyard run`, `capture install`).
const DEFAULT_DRAIN_TIME_S: f64 = 5.0;
const DEFAULT_CAPTURE_PORT: u16 = 15001;
const DEFAULT_PROXY_ID: u32 = 1337;

// ---------------------------------------------------------------------------------------------
// YAML, through PyYAML (the root package has no YAML parser among its dependencies)
// ---------------------------------------------------------------------------------------------

/// A Python that can `import yaml`: `python3` on the PATH, the system one, or the repository's
/// `.venv`.
fn python_with_yaml() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            [
                PathBuf::from("python3"),
                PathBuf::from("/usr/bin/python3"),
                repo_root().join(".venv/bin/python"),
            ]
            .into_iter()
            .find(|py| {
                Command::new(py)
                    .args(["-c", "import yaml"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        })
        .clone()
}

/// Checks that YAML can be parsed; `false` means skip (outside CI only).
#[must_use]
fn yaml_available() -> bool {
    require(
        python_with_yaml().is_some(),
        "no Python with PyYAML (tried python3, /usr/bin/python3, .venv/bin/python): \
         apt-get install python3-yaml, or pip install pyyaml into .venv",
    )
}

/// Every document of a YAML stream, as JSON values (`yaml.safe_load_all`).
fn parse_yaml_docs(text: &str) -> Result<Vec<Value>, String> {
    let py = python_with_yaml().ok_or("no Python with PyYAML")?;
    let mut child = Command::new(&py)
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", py.display()))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let input = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!(
            "not valid YAML: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("PyYAML's JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The files as they are in the repository
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Deploy {
    docs: Vec<Value>,
    dockerfile: String,
    seccomp_dir: PathBuf,
}

fn load_deploy() -> Deploy {
    static LOADED: OnceLock<Deploy> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let root = repo_root();
            let text = fs::read_to_string(root.join(MANIFEST))
                .unwrap_or_else(|e| panic!("{MANIFEST}: {e}"));
            let docs = parse_yaml_docs(&text).unwrap_or_else(|e| panic!("{MANIFEST}: {e}"));
            let dockerfile = fs::read_to_string(root.join(DOCKERFILE))
                .unwrap_or_else(|e| panic!("{DOCKERFILE}: {e}"));
            Deploy {
                docs,
                dockerfile,
                seccomp_dir: root.join(SECCOMP_DIR),
            }
        })
        .clone()
}

// ---------------------------------------------------------------------------------------------
// Small accessors
// ---------------------------------------------------------------------------------------------

/// A field's value for a message: its JSON, or `unset`.
fn shown(v: Option<&Value>) -> String {
    v.map_or_else(|| "unset".to_string(), Value::to_string)
}

/// A parsed value for a message, or `unset`.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unset".to_string(), |v| v.to_string())
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(v, |v, k| {
        v.get_mut(*k)
            .unwrap_or_else(|| panic!("no field {k:?} on the way to {path:?}"))
    })
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, path: &[&str]) -> &'a [Value] {
    get(v, path)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// An integer given as a number or as a string of digits (YAML quoting in `args`).
fn int_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A container's words after the `switchyard` program: `command` + `args`, where no `command`
/// means the image's ENTRYPOINT (switchyard). `None` for another program (`chown`).
fn switchyard_words(c: &Value) -> Option<Vec<String>> {
    let command = strings(c.get("command"));
    let args = strings(c.get("args"));
    match command.split_first() {
        None => Some(args),
        Some((prog, rest)) if prog == "switchyard" || prog.ends_with("/switchyard") => {
            Some(rest.iter().chain(args.iter()).cloned().collect())
        }
        Some(_) => None,
    }
}

/// The value of a flag: `-x V`, `--long V` or `--long=V`.
fn flag<'a>(words: &'a [String], names: &[&str]) -> Option<&'a str> {
    for (i, w) in words.iter().enumerate() {
        for n in names {
            if w == n {
                return words.get(i + 1).map(String::as_str);
            }
            if let Some(v) = w.strip_prefix(&format!("{n}=")) {
                return Some(v);
            }
        }
    }
    None
}

fn has_flag(words: &[String], name: &str) -> bool {
    words.iter().any(|w| w == name)
}

// ---------------------------------------------------------------------------------------------
// curl in exec probes and hooks
// ---------------------------------------------------------------------------------------------

/// The simple commands of an exec `command`: the words themselves, or for `sh -c SCRIPT`
/// (any `*sh`) the script split at `;`, `&`, `|` and newlines outside quotes, each split into
/// words with the quotes removed (enough for the hooks and probes of a manifest; no
/// expansions).
fn simple_commands(command: &[String]) -> Vec<Vec<String>> {
    let script = match command {
        [sh, c, script, ..] if sh.ends_with("sh") && c == "-c" => script,
        _ => return vec![command.to_vec()],
    };
    let mut commands = Vec::new();
    let (mut words, mut word) = (Vec::new(), None::<String>);
    let mut quote = None;
    for ch in script.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() && c != '\n' => words.extend(word.take()),
            (None, ';' | '&' | '|' | '\n') => {
                words.extend(word.take());
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

/// One `curl` invocation: where it goes and how.
#[derive(Debug, Default)]
struct Curl {
    /// `--unix-socket PATH`.
    unix_socket: Option<String>,
    /// `-X`/`--request`.
    request: Option<String>,
    /// `-d`/`--data*` (POST unless `-X` says otherwise).
    data: bool,
    url: Option<String>,
    /// `-f`/`--fail`: an HTTP error status is a non-zero exit (what a probe needs to fail).
    fail: bool,
}

impl Curl {
    fn option(&mut self, name: &str, value: Option<&str>) {
        match name {
            "--unix-socket" => self.unix_socket = value.map(str::to_string),
            "-X" | "--request" => self.request = value.map(str::to_ascii_uppercase),
            "-d" | "--data" | "--data-ascii" | "--data-binary" | "--data-raw"
            | "--data-urlencode" => self.data = true,
            "-f" | "--fail" | "--fail-with-body" => self.fail = true,
            "--url" => self.url = value.map(str::to_string),
            _ => {}
        }
    }

    fn method(&self) -> String {
        self.request
            .clone()
            .unwrap_or_else(|| if self.data { "POST" } else { "GET" }.to_string())
    }

    /// The URL's `host[:port]` and its path (no query).
    fn authority_and_path(&self) -> (&str, &str) {
        let url = self.url.as_deref().unwrap_or_default();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        (authority, path.split(['?', '#']).next().unwrap_or_default())
    }

    fn path(&self) -> &str {
        self.authority_and_path().1
    }
}

/// The `curl` invocations of an exec `command`.
fn curls(command: &[String]) -> Vec<Curl> {
    // Options whose value is the next word (or the rest of a short-option cluster).
    const SHORT_WITH_VALUE: &str = "AbcCdeEFHKmortTuUwXyYz";
    const LONG_WITH_VALUE: &[&str] = &[
        "--abstract-unix-socket",
        "--connect-timeout",
        "--data",
        "--data-ascii",
        "--data-binary",
        "--data-raw",
        "--data-urlencode",
        "--header",
        "--max-time",
        "--output",
        "--request",
        "--retry",
        "--retry-delay",
        "--retry-max-time",
        "--unix-socket",
        "--url",
        "--user",
        "--user-agent",
        "--write-out",
    ];
    let mut out = Vec::new();
    for words in simple_commands(command) {
        let Some((prog, args)) = words.split_first() else {
            continue;
        };
        if prog != "curl" && !prog.ends_with("/curl") {
            continue;
        }
        let mut c = Curl::default();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            i += 1;
            if let Some(long) = a.strip_prefix("--") {
                match long.split_once('=') {
                    Some((name, value)) => c.option(&format!("--{name}"), Some(value)),
                    None if LONG_WITH_VALUE.contains(&a) => {
                        c.option(a, args.get(i).map(String::as_str));
                        i += 1;
                    }
                    None => c.option(a, None),
                }
            } else if let Some(cluster) = a.strip_prefix('-').filter(|c| !c.is_empty()) {
                for (at, ch) in cluster.char_indices() {
                    let name = format!("-{ch}");
                    if SHORT_WITH_VALUE.contains(ch) {
                        let rest = &cluster[at + ch.len_utf8()..];
                        if rest.is_empty() {
                            c.option(&name, args.get(i).map(String::as_str));
                            i += 1;
                        } else {
                            c.option(&name, Some(rest));
                        }
                        break;
                    }
                    c.option(&name, None);
                }
            } else if c.url.is_none() {
                c.url = Some(a.to_string());
            }
        }
        out.push(c);
    }
    out
}

impl Curl {
    /// Whether this invocation reaches `admin`: through its socket for a pipe; to its
    /// address (loopback for a wildcard admin), not through a socket, for TCP.
    fn reaches(&self, admin: &Admin) -> bool {
        match admin {
            Admin::Pipe { path } => self.unix_socket.as_deref() == Some(path.as_str()),
            Admin::Tcp { host, port } => {
                let wildcard = host == "0.0.0.0" || host == "::";
                let hosts: Vec<String> = if wildcard {
                    vec!["127.0.0.1".into(), "localhost".into(), "[::1]".into()]
                } else if host.contains(':') {
                    vec![format!("[{host}]")]
                } else {
                    vec![host.clone()]
                };
                let authority = self.authority_and_path().0;
                self.unix_socket.is_none()
                    && hosts.iter().any(|h| authority == format!("{h}:{port}"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checker: every problem names the field it is about
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report(Vec<String>);

impl Report {
    fn bad(&mut self, field: impl AsRef<str>, msg: impl AsRef<str>) {
        self.0.push(format!("{}: {}", field.as_ref(), msg.as_ref()));
    }

    fn expect(&mut self, ok: bool, field: impl AsRef<str>, msg: impl AsRef<str>) {
        if !ok {
            self.bad(field, msg);
        }
    }
}

/// Where the bootstrap's admin API listens.
#[derive(Clone, Debug)]
enum Admin {
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
struct Bootstrap {
    admin: Admin,
    /// `(listener name, port)` of every listener that matches on the original destination
    /// (`use_original_dst: true` or the `envoy.filters.listener.original_dst` listener filter).
    original_dst_ports: Vec<(String, u16)>,
    /// Ports of all static listeners.
    listener_ports: Vec<u16>,
}

fn socket_port(addr: &Value) -> Option<u16> {
    get(addr, &["socket_address", "port_value"])
        .and_then(int_of)
        .and_then(|p| u16::try_from(p).ok())
}

fn read_bootstrap(b: &Value, field: &str, r: &mut Report) -> Option<Bootstrap> {
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
fn bootstrap_text(docs: &[Value], pod: &Value, proxy: &Value) -> Result<String, String> {
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

/// A field of the container's securityContext, else of the pod's.
fn security<'a>(pod: &'a Value, c: &'a Value, key: &str) -> Option<&'a Value> {
    get(c, &["securityContext", key]).or_else(|| get(pod, &["securityContext", key]))
}

fn capabilities_added(c: &Value) -> Vec<String> {
    strings(get(c, &["securityContext", "capabilities", "add"]))
        .into_iter()
        .map(|s| s.trim_start_matches("CAP_").to_string())
        .collect()
}

/// Whether a Localhost seccomp profile shipped in `dir` allows the three io_uring calls.
fn localhost_profile_allows_io_uring(dir: &Path, localhost_profile: &str) -> Result<(), String> {
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
fn check(d: &Deploy) -> Vec<String> {
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
    let Some(proxy) = containers.iter().find(|c| {
        switchyard_words(c).is_some_and(|w| w.first().map(String::as_str) == Some("run"))
    }) else {
        r.bad(
            f("spec.template.spec.containers"),
            "no container runs `switchyard run`",
        );
        return r.0;
    };
    let pname = str_at(proxy, &["name"]).unwrap_or("?");
    let pf = |path: &str| f(&format!("containers[{pname}].{path}"));
    let run_words = switchyard_words(proxy).unwrap_or_default();

    let caps = capabilities_added(proxy);
    for cap in ["NET_ADMIN", "NET_RAW"] {
        r.expect(
            caps.iter().any(|c| c == cap),
            pf("securityContext.capabilities.add"),
            format!("{caps:?} lacks {cap}"),
        );
    }

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
        .filter(|c| {
            switchyard_words(c).is_some_and(|w| {
                w.first().map(String::as_str) == Some("capture")
                    && w.get(1).map(String::as_str) == Some("install")
            })
        })
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
    let capture_root = get(capture, &["securityContext", "runAsUser"]).and_then(int_of);
    r.expect(
        capture_root == Some(0),
        cf("securityContext.runAsUser"),
        format!("is {}, want 0 (iptables needs root)", opt(capture_root)),
    );
    let ccaps = capabilities_added(capture);
    for cap in ["NET_ADMIN", "NET_RAW"] {
        r.expect(
            ccaps.iter().any(|c| c == cap),
            cf("securityContext.capabilities.add"),
            format!("{ccaps:?} lacks {cap}"),
        );
    }
    r.expect(
        capture.get("image") == proxy.get("image"),
        cf("image"),
        format!(
            "{} is not the proxy's image {}",
            shown(capture.get("image")),
            shown(proxy.get("image"))
        ),
    );
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

/// `probe` (`readinessProbe`, `livenessProbe`) of the proxy reaches `admin`, on `want_path`
/// if given: an exec probe whose curl goes through the admin's Unix socket (or to its TCP
/// address) and fails on an error status, or, for a TCP admin only, an httpGet probe on its
/// address. Problems are named `<probe>.exec.command` or `<probe>.httpGet.<field>`.
fn check_admin_probe(
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
fn check_socket_dir(
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

/// The runtime (last) stage: its USER is the proxy's UID, that user is created with that UID,
/// iptables (capture) and, when `execs` (the proxy's probes and hooks) use it, curl are
/// installed, the entrypoint is switchyard.
fn check_dockerfile(text: &str, run_as_user: Option<i64>, execs: &str, r: &mut Report) {
    // Instructions with their continuation lines joined, comments dropped.
    let mut instructions: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                instructions.push(std::mem::take(&mut cur));
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.to_ascii_uppercase().starts_with("FROM "));
    let Some(start) = last_from else {
        r.bad("deploy/Dockerfile FROM", "no FROM");
        return;
    };
    let stage = &instructions[start..];
    let of = |kw: &str| -> Vec<&str> {
        stage
            .iter()
            .filter_map(|i| {
                let (head, rest) = i.split_once(char::is_whitespace)?;
                head.eq_ignore_ascii_case(kw).then_some(rest.trim())
            })
            .collect()
    };
    let want_uid = run_as_user.unwrap_or(i64::from(DEFAULT_PROXY_ID));
    let user = of("USER").last().map(|u| u.split(':').next().unwrap_or(u));
    r.expect(
        user == Some(want_uid.to_string().as_str()),
        "deploy/Dockerfile runtime stage USER",
        format!(
            "is {}, want the numeric UID {want_uid} (runAsUser, capture -u)",
            opt(user)
        ),
    );
    let runs = of("RUN").join(" ; ");
    // The shell commands of the RUN instructions, one by one.
    let commands: Vec<Vec<&str>> = runs
        .split([';', '|'])
        .flat_map(|s| s.split("&&"))
        .map(|c| c.split_whitespace().collect())
        .collect();
    let want = want_uid.to_string();
    let created = commands.iter().any(|c| {
        c.first() == Some(&"useradd")
            && c.windows(2)
                .any(|w| (w[0] == "--uid" || w[0] == "-u") && w[1] == want)
    });
    r.expect(
        created,
        "deploy/Dockerfile runtime stage RUN useradd",
        format!("no `useradd --uid {want_uid}`"),
    );
    let installs = |pkg: &str| {
        commands
            .iter()
            .any(|c| c.windows(2).any(|w| w == ["apt-get", "install"]) && c.contains(&pkg))
    };
    r.expect(
        installs("iptables"),
        "deploy/Dockerfile runtime stage RUN apt-get install",
        "does not install iptables (switchyard capture drives it)",
    );
    if execs.contains("curl") {
        r.expect(
            installs("curl"),
            "deploy/Dockerfile runtime stage RUN apt-get install",
            "does not install curl (the probes and the preStop hook use it)",
        );
    }
    let entrypoint = of("ENTRYPOINT").last().copied().unwrap_or_default();
    r.expect(
        entrypoint.contains("switchyard"),
        "deploy/Dockerfile runtime stage ENTRYPOINT",
        format!("is {entrypoint:?}, want switchyard"),
    );
}

fn assert_clean(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "deploy/: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn manifests_have_the_node_proxy_fields() {
    if !yaml_available() {
        return;
    }
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

/// Where the mutated fields are in the parsed manifest.
#[derive(Clone, Copy)]
struct At {
    ds: usize,
    cm: usize,
    proxy: usize,
    capture: usize,
}

impl At {
    fn ds<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut d.docs[self.ds]
    }
    fn cm<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut d.docs[self.cm]
    }
    fn pod<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        get_mut(self.ds(d), &["spec", "template", "spec"])
    }
    fn proxy<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut self.pod(d)["containers"][self.proxy]
    }
    fn capture<'a>(&self, d: &'a mut Deploy) -> &'a mut Value {
        &mut self.pod(d)["initContainers"][self.capture]
    }
    /// Changes the ConfigMap's bootstrap as parsed, and writes it back (as JSON, which is
    /// YAML).
    fn edit_bootstrap(&self, d: &mut Deploy, edit: impl FnOnce(&mut Value)) {
        let cm = self.cm(d);
        let text = str_at(cm, &["data", "bootstrap.yaml"]).expect("data.bootstrap.yaml");
        let mut docs = parse_yaml_docs(text).expect("the bootstrap parses");
        edit(&mut docs[0]);
        cm["data"]["bootstrap.yaml"] =
            json!(serde_json::to_string_pretty(&docs[0]).expect("to JSON"));
    }
    /// Replaces `from` by `to` in every string of the proxy container (args, probes, hooks,
    /// mounts).
    fn replace_in_proxy(&self, d: &mut Deploy, from: &str, to: &str) {
        let proxy = self.proxy(d);
        let text = serde_json::to_string(proxy).expect("to JSON");
        *proxy = serde_json::from_str(&text.replace(from, to)).expect("from JSON");
    }
    fn volume<'a>(&self, d: &'a mut Deploy, name: &str) -> &'a mut Value {
        self.pod(d)["volumes"]
            .as_array_mut()
            .expect("volumes")
            .iter_mut()
            .find(|v| str_at(v, &["name"]) == Some(name))
            .unwrap_or_else(|| panic!("no volume {name:?}"))
    }
}

/// The admin socket of the manifest as shipped, and the volume mounted at its directory.
const ADMIN_SOCKET: &str = "/run/switchyard/admin.sock";
const ADMIN_VOLUME: &str = "admin";

/// Where the mutated fields are in `base`.
fn locate(base: &Deploy) -> At {
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
            .position(|c| {
                switchyard_words(c)
                    .is_some_and(|w| w.first().map(String::as_str) == Some(first_word))
            })
            .unwrap_or_else(|| panic!("no {list} entry running `switchyard {first_word}`"))
    };
    At {
        ds: ds_index,
        cm: cm_index,
        proxy: container_index("containers", "run"),
        capture: container_index("initContainers", "capture"),
    }
}

/// Each check catches its field: one change at a time to a copy of the real manifest.
#[test]
fn checker_names_the_broken_field() {
    if !yaml_available() {
        return;
    }
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
                    "http://localhost/drain_listeners?graceful"
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
    if !yaml_available() {
        return;
    }
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
         curl -fsS -m 2 -X POST 'http://127.0.0.1:15000/drain_listeners?graceful'; sleep 5"
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
    if !yaml_available() {
        return;
    }
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
         curl -s -d '' \"http://127.0.0.1:15000/drain_listeners?graceful\" && sleep 5",
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
    if !yaml_available() {
        return;
    }
    let path = repo_root().join(CAPTURE_REMOVE);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{CAPTURE_REMOVE}: {e}"));
    let docs = parse_yaml_docs(&text).unwrap_or_else(|e| panic!("{CAPTURE_REMOVE}: {e}"));
    let [ds] = docs.as_slice() else {
        panic!("{CAPTURE_REMOVE}: want one document, found {}", docs.len());
    };
    let node = load_deploy();
    let node_ds = node
        .docs
        .iter()
        .find(|d| str_at(d, &["kind"]) == Some("DaemonSet"))
        .expect("switchyard.yaml has a DaemonSet");
    let proxy_image = array_at(node_ds, &["spec", "template", "spec", "containers"])
        .iter()
        .find(|c| switchyard_words(c).is_some_and(|w| w.first().map(String::as_str) == Some("run")))
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
        .filter(|c| {
            switchyard_words(c).is_some_and(|w| {
                w.first().map(String::as_str) == Some("capture")
                    && w.get(1).map(String::as_str) == Some("remove")
            })
        })
        .collect();
    match removers.as_slice() {
        [c] => {
            let name = str_at(c, &["name"]).unwrap_or("?");
            let cf = |p: &str| f(&format!("initContainers[{name}].{p}"));
            let uid = get(c, &["securityContext", "runAsUser"]).and_then(int_of);
            r.expect(
                uid == Some(0),
                cf("securityContext.runAsUser"),
                format!("is {}, want 0 (iptables needs root)", opt(uid)),
            );
            let caps = capabilities_added(c);
            for cap in ["NET_ADMIN", "NET_RAW"] {
                r.expect(
                    caps.iter().any(|c| c == cap),
                    cf("securityContext.capabilities.add"),
                    format!("{caps:?} lacks {cap}"),
                );
            }
            r.expect(
                c.get("image") == proxy_image,
                cf("image"),
                format!(
                    "{} is not switchyard-node's image {}",
                    shown(c.get("image")),
                    shown(proxy_image)
                ),
            );
        }
        other => r.bad(
            f("spec.template.spec.initContainers"),
            format!(
                "want one running `switchyard capture remove`, found {}",
                other.len()
            ),
        ),
    }
    assert_clean(&r.0);
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
        .find(|c| switchyard_words(c).is_some_and(|w| w.first().map(String::as_str) == Some("run")))
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
    if !yaml_available() || !proxy_available(kind) {
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
    if !yaml_available()
        || !require(
            envoy_available(),
            &format!("Envoy not found at {}", envoy_bin().display()),
        )
    {
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
