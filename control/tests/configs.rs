//! Every file under `tests/configs/`: `valid/*` must load and compile, `invalid/*` must be
//! rejected with an error whose path contains the one its first line states
//! (`# expect: <path substring>`). The `switchyard validate` CLI tests reuse these files.

use std::path::{Path, PathBuf};
use switchyard_control::compile::{compile, CompileCache};
use switchyard_control::load::load_rib;
use switchyard_control::stats::StatsRegistry;

/// The configs name TLS files relative to the repository root (`tests/certs/server.pem`), as
/// `switchyard validate` and `envoy --mode validate` read them from there (tests/validate_cli.rs).
/// Every test here that loads them moves there first (the same directory, so they may race).
fn at_repo_root() {
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .expect("the repository root");
}

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

#[test]
fn valid_configs_load_and_compile() {
    at_repo_root();
    let files = files("valid");
    assert!(files.len() >= 3);
    for path in files {
        let (rib, loaded) = load_rib(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(loaded.normalized.is_object());
        let fib =
            compile(&rib, 1, &StatsRegistry::new(2), &mut CompileCache::new()).expect("compiles");
        assert_eq!(
            fib.listeners.len() + fib.udp_listeners.len(),
            rib.listeners.len(),
            "{}",
            path.display()
        );
        assert_eq!(fib.clusters.len(), rib.clusters.len(), "{}", path.display());
    }
}

#[test]
fn example_gateway_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/gateway.yaml");
    let (rib, _) = load_rib(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(rib.admin.socket(), Some("127.0.0.1:15000".parse().unwrap()));
    assert_eq!(rib.listeners[0].address, "127.0.0.1:10000".parse().unwrap());
}

#[test]
fn invalid_configs_name_their_path() {
    at_repo_root();
    let files = files("invalid");
    assert!(files.len() >= 12);
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be '# expect: <path>'", path.display()))
            .trim();
        match load_rib(&path) {
            Ok(_) => failures.push(format!("{}: accepted", path.display())),
            Err(e) if e.path().contains(expect) && e.to_string().starts_with(expect) => {}
            Err(e) => failures.push(format!(
                "{}: expected path {expect}, got: {e}",
                path.display()
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Prints every invalid file's error, to review the messages:
/// `cargo test -p switchyard-control --test configs -- --ignored --nocapture`.
#[test]
#[ignore]
fn show_errors() {
    at_repo_root();
    for path in files("invalid") {
        eprintln!(
            "{}: {}",
            path.file_name().unwrap().to_string_lossy(),
            load_rib(&path).unwrap_err()
        );
    }
}
