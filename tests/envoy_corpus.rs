//! Real Envoy v3 configs from public projects, as a new user would bring them
//! (`tests/corpus/envoy/`, provenance and expectations in `tests/corpus/envoy/MANIFEST.json`):
//! `switchyard validate` and `envoy --mode validate` on every file, a table of what each says,
//! and the acceptance ("Envoy accepts N of M; Switchyard accepts K of those").
//!
//! Every file's results must equal the manifest's expectations: `switchyard` and `envoy` are
//! `accept` or `reject`, and a rejection's `switchyard_path` / `envoy_error` must stand in what
//! the binary printed. So the test is green today, and a feature that makes Switchyard accept
//! a file fails it until the manifest says so (with the reason removed). Every file in the
//! corpus must be in the manifest and every manifest entry must be a file.
//!
//! `xds-resources` files (a `DiscoveryResponse` with `resources:`, or a plain list of
//! resources as Envoy Gateway's translator writes them) are validated through a bootstrap the
//! test writes: their resources (`@type` dropped) become `static_resources` listeners or
//! clusters (a `ClusterLoadAssignment` becomes a STATIC cluster carrying it), together with
//! the resources of the files named in `with`; when a cluster reads EDS over ADS the bootstrap
//! adds an `ads_config` and its gRPC cluster. (`envoy --mode validate` does not read
//! `path_config_source` files, so a bootstrap pointing at them would check nothing.)
//!
//! Neither `envoy --mode validate` nor `switchyard validate` resolves names, so configs naming
//! hosts such as `service1` need no DNS here.
//!
//! Run in the Switchyard pass only (it drives both binaries itself); Envoy is required under
//! CI and skipped (with the Envoy columns left out) elsewhere when missing.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// A validate run that outlives this is a failure, not a verdict.
const VALIDATE_LIMIT: Duration = Duration::from_secs(60);
/// Validate runs at once (each is one process; Envoy's takes about 0.3 s of CPU).
const PARALLEL: usize = 4;
/// Licences a vendored file may carry.
const PERMISSIVE: &[&str] = &["Apache-2.0", "MIT", "BSD-2-Clause", "BSD-3-Clause", "ISC"];

fn corpus_dir() -> PathBuf {
    repo_root().join("tests/corpus/envoy")
}

/// What a binary said of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Reject,
}

impl Verdict {
    fn parse(s: &str) -> Option<Verdict> {
        match s {
            "accept" => Some(Verdict::Accept),
            "reject" => Some(Verdict::Reject),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
        }
    }
}

/// One manifest entry.
#[derive(Debug)]
struct Entry {
    path: String,
    scope: String,
    /// For `xds-resources`: `listeners`, `clusters` or `endpoints`.
    xds: Option<String>,
    /// For `xds-resources`: other corpus files validated in the same bootstrap.
    with: Vec<String>,
    envoy: Verdict,
    envoy_error: Option<String>,
    switchyard: Verdict,
    switchyard_path: Option<String>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Parses `MANIFEST.json`; every problem with an entry's form is pushed to `problems`.
fn load_manifest(problems: &mut Vec<String>) -> Vec<Entry> {
    let path = corpus_dir().join("MANIFEST.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let files = doc
        .get("files")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{}: no `files` list", path.display()));
    let mut entries = Vec::new();
    for f in files {
        let Some(p) = str_field(f, "path") else {
            problems.push(format!("manifest entry without `path`: {f}"));
            continue;
        };
        let mut bad = |what: String| problems.push(format!("{p}: {what}"));
        for key in ["repo", "source_path", "reason"] {
            if str_field(f, key).is_none_or(str::is_empty) {
                bad(format!("`{key}` missing"));
            }
        }
        let commit = str_field(f, "commit").unwrap_or("");
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            bad(format!("`commit` {commit:?} is not 40 hex digits"));
        }
        let license = str_field(f, "license").unwrap_or("");
        if !PERMISSIVE.contains(&license) {
            bad(format!(
                "`license` {license:?} is not one of the permissive licences {PERMISSIVE:?}"
            ));
        }
        let scope = str_field(f, "scope").unwrap_or("").to_string();
        if !["l4", "http", "xds-resources"].contains(&scope.as_str()) {
            bad(format!(
                "`scope` {scope:?}: expected l4, http or xds-resources"
            ));
        }
        let xds = str_field(f, "xds").map(str::to_string);
        match (&xds, scope == "xds-resources") {
            (Some(k), true) if ["listeners", "clusters", "endpoints"].contains(&k.as_str()) => {}
            (None, false) => {}
            _ => bad(format!(
                "`xds` {xds:?}: listeners, clusters or endpoints exactly for xds-resources"
            )),
        }
        let with: Vec<String> = f
            .get("with")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let verdict = |key: &str, problems: &mut Vec<String>| {
            let v = str_field(f, key).and_then(Verdict::parse);
            if v.is_none() {
                problems.push(format!("{p}: `{key}` must be \"accept\" or \"reject\""));
            }
            v.unwrap_or(Verdict::Reject)
        };
        let envoy = verdict("envoy", problems);
        let switchyard = verdict("switchyard", problems);
        let envoy_error = str_field(f, "envoy_error").map(str::to_string);
        let switchyard_path = str_field(f, "switchyard_path").map(str::to_string);
        if (envoy == Verdict::Reject) != envoy_error.is_some() {
            problems.push(format!(
                "{p}: `envoy_error` (a part of Envoy's message) goes with `envoy`: \"reject\" only"
            ));
        }
        if (switchyard == Verdict::Reject) != switchyard_path.is_some() {
            problems.push(format!(
                "{p}: `switchyard_path` (the field path Switchyard names) goes with \
                 `switchyard`: \"reject\" only"
            ));
        }
        entries.push(Entry {
            path: p.to_string(),
            scope,
            xds,
            with,
            envoy,
            envoy_error,
            switchyard,
            switchyard_path,
        });
    }
    entries
}

/// Every file under the corpus, relative, but the manifest and the README.
fn corpus_files() -> BTreeSet<String> {
    let root = corpus_dir();
    let mut out = BTreeSet::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&root)
                .expect("under the corpus")
                .to_string_lossy()
                .replace('\\', "/");
            if rel != "MANIFEST.json" && rel != "README.md" {
                out.insert(rel);
            }
        }
    }
    out
}

/// The resources of one xDS file: a `DiscoveryResponse`'s `resources` or a plain list, each
/// without its `@type`.
fn xds_resources(rel: &str) -> Result<Vec<Value>, String> {
    let text = fs::read_to_string(corpus_dir().join(rel)).map_err(|e| format!("{rel}: {e}"))?;
    let doc: Value = serde_saphyr::from_str(&text).map_err(|e| format!("{rel}: {e}"))?;
    let items = match doc {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove("resources") {
            Some(Value::Array(a)) => a,
            _ => return Err(format!("{rel}: no `resources` list")),
        },
        _ => return Err(format!("{rel}: neither a list nor a DiscoveryResponse")),
    };
    Ok(items
        .into_iter()
        .map(|mut r| {
            if let Some(o) = r.as_object_mut() {
                o.remove("@type");
            }
            r
        })
        .collect())
}

/// Whether any `ads` config source appears in `v`.
fn mentions_ads(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| k == "ads" || mentions_ads(x)),
        Value::Array(a) => a.iter().any(mentions_ads),
        _ => false,
    }
}

/// The bootstrap (JSON) that carries an xDS file's resources and those of its `with` files.
fn xds_bootstrap(entry: &Entry, kinds: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for rel in std::iter::once(&entry.path).chain(&entry.with) {
        let kind = kinds(rel).ok_or_else(|| format!("{rel}: not an xds-resources entry"))?;
        for r in xds_resources(rel)? {
            match kind.as_str() {
                "listeners" => listeners.push(r),
                "clusters" => clusters.push(r),
                _ => {
                    let name = r
                        .get("cluster_name")
                        .or_else(|| r.get("clusterName"))
                        .cloned()
                        .ok_or_else(|| format!("{rel}: a ClusterLoadAssignment without a name"))?;
                    clusters.push(json!({"name": name, "type": "STATIC", "load_assignment": r}));
                }
            }
        }
    }
    let mut boot = json!({"node": {"id": "corpus", "cluster": "corpus"}});
    if mentions_ads(&Value::Array(clusters.clone()))
        || mentions_ads(&Value::Array(listeners.clone()))
    {
        boot["dynamic_resources"] = json!({"ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "corpus_ads"}}],
        }});
        clusters.push(json!({
            "name": "corpus_ads",
            "type": "STATIC",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {"cluster_name": "corpus_ads", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 18000}}}},
            ]}]},
        }));
    }
    let mut resources = serde_json::Map::new();
    if !listeners.is_empty() {
        resources.insert("listeners".into(), Value::Array(listeners));
    }
    if !clusters.is_empty() {
        resources.insert("clusters".into(), Value::Array(clusters));
    }
    boot["static_resources"] = Value::Object(resources);
    Ok(boot)
}

/// What one binary said: the verdict, its message (Switchyard's error line, or the part of
/// Envoy's critical line after the file name), and how long it took.
#[derive(Clone, Debug)]
struct Said {
    verdict: Verdict,
    message: String,
    took: Duration,
}

/// The line worth showing from a rejection: the reason after the file name in Envoy's
/// `error initializing configuration` line or Switchyard's `is invalid:` line; otherwise the
/// first line that says `error` (or the first line).
fn message_of(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let line = text
        .lines()
        .find(|l| l.contains("error initializing configuration") || l.contains("' is invalid: "))
        .or_else(|| text.lines().find(|l| l.to_lowercase().contains("error")))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim();
    // Both name the file before the reason: Envoy `error initializing configuration 'F': X`,
    // Switchyard `configuration 'F' is invalid: X`.
    let mut reason = line;
    for marker in ["error initializing configuration '", "configuration '"] {
        if let Some((_, rest)) = line.split_once(marker) {
            if let Some((_, r)) = rest
                .split_once("' is invalid: ")
                .or_else(|| rest.split_once("': "))
            {
                reason = r;
                break;
            }
        }
    }
    // Envoy follows a proto parse error with the whole config as JSON: leave it out, and the
    // wrapping around the parser's own words.
    if let Some(i) = reason.find("): {") {
        reason = &reason[..i];
    }
    if let Some((_, r)) = reason.split_once("INVALID_ARGUMENT: ") {
        reason = r.trim_end_matches(") has unknown fields");
    }
    reason.to_string()
}

fn run(mut cmd: Command) -> Result<Said, String> {
    let (out, took) = try_output_within(&mut cmd, VALIDATE_LIMIT)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code().is_none() || stderr.contains("panicked") {
        return Err(format!("{cmd:?}: {:?}: {}", out.status, stderr.trim()));
    }
    let verdict = if out.status.success() {
        Verdict::Accept
    } else {
        Verdict::Reject
    };
    Ok(Said {
        verdict,
        message: message_of(&out),
        took,
    })
}

/// How what a binary `said` of `path` differs from the manifest: another verdict, or a
/// rejection whose message lacks the `part` the manifest names.
fn difference(
    path: &str,
    who: &str,
    said: &Said,
    want: Verdict,
    part: Option<&str>,
) -> Option<String> {
    if said.verdict != want {
        return Some(format!(
            "{path}: {who} says {} ({}), MANIFEST.json expects {}",
            said.verdict.name(),
            said.message,
            want.name()
        ));
    }
    let part = part?;
    (!said.message.contains(part)).then(|| {
        format!(
            "{path}: {who}: the error does not contain {part:?}: {}",
            said.message
        )
    })
}

/// Runs `f` on every item, `PARALLEL` at a time, keeping the order of `items`.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..PARALLEL.min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                results.lock().expect("results")[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Cuts `s` to `n` characters for the table.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

#[test]
fn corpus_acceptance_matches_the_manifest() {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(
            kind,
            "the corpus test runs `switchyard validate` and `envoy --mode validate` itself",
        );
        return;
    }
    let with_envoy = require(
        envoy_available(),
        &format!(
            "envoy binary not found at {} (set ENVOY_BIN or run ci/install-deps): the corpus \
             runs Switchyard alone",
            envoy_bin().display()
        ),
    );
    let t0 = Instant::now();
    let mut problems = Vec::new();
    let entries = load_manifest(&mut problems);

    // The manifest and the directory name the same files, each once.
    let files = corpus_files();
    let mut listed = BTreeSet::new();
    for e in &entries {
        if !listed.insert(e.path.clone()) {
            problems.push(format!("{}: listed twice in MANIFEST.json", e.path));
        }
        if !files.contains(&e.path) {
            problems.push(format!(
                "{}: in MANIFEST.json but not in the corpus",
                e.path
            ));
        }
        for w in &e.with {
            if !files.contains(w) {
                problems.push(format!("{}: `with` names {w}, not in the corpus", e.path));
            }
        }
    }
    for f in files.difference(&listed) {
        problems.push(format!("{f}: in the corpus but not in MANIFEST.json"));
    }
    assert!(
        problems.is_empty(),
        "corpus manifest:\n{}",
        problems.join("\n")
    );

    // The file each binary validates: the corpus file, or the bootstrap written for xDS
    // resources.
    let dir = test_dir("envoy-corpus");
    let xds_kind = |rel: &str| {
        entries
            .iter()
            .find(|e| e.path == rel)
            .and_then(|e| e.xds.clone())
    };
    let inputs: Vec<PathBuf> = entries
        .iter()
        .map(|e| {
            if e.xds.is_none() {
                return corpus_dir().join(&e.path);
            }
            let boot = xds_bootstrap(e, &xds_kind)
                .unwrap_or_else(|err| panic!("{}: cannot build its bootstrap: {err}", e.path));
            let p = dir.join(format!("{}.json", e.path.replace('/', "__")));
            fs::write(&p, serde_json::to_vec_pretty(&boot).expect("json")).expect("write");
            p
        })
        .collect();

    let sy = par_map(&inputs, |p: &PathBuf| {
        let mut cmd = Command::new(switchyard_bin());
        cmd.arg("validate").arg("-c").arg(p);
        run(cmd)
    });
    let t_sy = t0.elapsed();
    let t_envoy0 = Instant::now();
    let envoy = if with_envoy {
        par_map(&inputs, |p: &PathBuf| run(envoy_validate_command(p)))
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None; inputs.len()]
    };
    let t_envoy = t_envoy0.elapsed();

    // The table, and every difference from the manifest.
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<58} {:<13} {:<7} {:<10} Switchyard's error (then Envoy's, where it refuses)",
        "file", "scope", "envoy", "switchyard"
    );
    let mut mismatches = Vec::new();
    let (mut total, mut envoy_ok, mut both_ok, mut sy_ok) = (0, 0, 0, 0);
    let mut slowest_envoy = Duration::ZERO;
    for ((e, s), v) in entries.iter().zip(&sy).zip(&envoy) {
        total += 1;
        let s = match s {
            Ok(s) => s,
            Err(err) => {
                mismatches.push(format!("{}: switchyard validate: {err}", e.path));
                continue;
            }
        };
        if s.verdict == Verdict::Accept {
            sy_ok += 1;
        }
        mismatches.extend(difference(
            &e.path,
            "switchyard validate",
            s,
            e.switchyard,
            e.switchyard_path.as_deref(),
        ));
        let envoy_col = match v {
            None => "-".to_string(),
            Some(Err(err)) => {
                mismatches.push(format!("{}: envoy --mode validate: {err}", e.path));
                "error".to_string()
            }
            Some(Ok(v)) => {
                slowest_envoy = slowest_envoy.max(v.took);
                if v.verdict == Verdict::Accept {
                    envoy_ok += 1;
                    if s.verdict == Verdict::Accept {
                        both_ok += 1;
                    }
                }
                mismatches.extend(difference(
                    &e.path,
                    "envoy --mode validate",
                    v,
                    e.envoy,
                    e.envoy_error.as_deref(),
                ));
                v.verdict.name().to_string()
            }
        };
        let mut why = if s.verdict == Verdict::Reject {
            clip(&s.message, 110)
        } else {
            String::new()
        };
        if let Some(Ok(v)) = v {
            if v.verdict == Verdict::Reject {
                let _ = write!(why, " | envoy: {}", clip(&v.message, 100));
            }
        }
        let _ = writeln!(
            table,
            "{:<58} {:<13} {:<7} {:<10} {}",
            e.path,
            e.scope,
            envoy_col,
            s.verdict.name(),
            why.trim()
        );
    }
    let l4_total = entries.iter().filter(|e| e.scope == "l4").count();
    let l4_sy = entries
        .iter()
        .zip(&sy)
        .filter(|(e, s)| e.scope == "l4" && s.as_ref().is_ok_and(|s| s.verdict == Verdict::Accept))
        .count();
    let summary = if with_envoy {
        format!(
            "Envoy accepts {envoy_ok} of {total}; Switchyard accepts {both_ok} of those \
             ({sy_ok} of {total} in all; {l4_sy} of the {l4_total} bootstraps in L4 scope)"
        )
    } else {
        format!(
            "Switchyard accepts {sy_ok} of {total} ({l4_sy} of the {l4_total} bootstraps in L4 \
             scope); Envoy not run"
        )
    };
    eprintln!("{table}\n{summary}");
    eprintln!(
        "switchyard validate: {:.1} s for {total} files; envoy --mode validate: {:.1} s \
         (slowest {:.2} s), {PARALLEL} at a time",
        t_sy.as_secs_f64(),
        t_envoy.as_secs_f64(),
        slowest_envoy.as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "{} corpus results differ from tests/corpus/envoy/MANIFEST.json (update the entry \
         when a change really makes the difference, keeping its reason honest):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
