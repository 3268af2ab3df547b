//! The environment a test runs in: which proxy is under test ([`ProxyKind`],
//! `SWITCHYARD_TEST_PROXY`), whether this is CI, the skip-or-fail rule for missing prerequisites
//! ([`require`], [`skip_unsupported`]), where the Switchyard and Envoy binaries are, and a fresh
//! directory per test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The proxy implementation a test drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Switchyard,
    Envoy,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Switchyard => "switchyard",
            ProxyKind::Envoy => "envoy",
        }
    }
}

/// `SWITCHYARD_TEST_PROXY=envoy|switchyard` (default switchyard).
pub fn selected_proxy() -> ProxyKind {
    match std::env::var("SWITCHYARD_TEST_PROXY").as_deref() {
        Ok("envoy") => ProxyKind::Envoy,
        Ok("switchyard") | Ok("") | Err(_) => ProxyKind::Switchyard,
        Ok(other) => panic!("SWITCHYARD_TEST_PROXY={other:?}: expected envoy or switchyard"),
    }
}

/// True when running under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE") | Ok("True")
    )
}

/// A prerequisite check. Returns true if the test may go on. When the prerequisite is missing:
/// in CI the test fails (panics) with the reason; outside CI it prints the reason and the caller
/// returns (a skip).
#[must_use]
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI=true (tests must not skip in CI): {what}");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// A deliberate skip: the selected proxy does not have this feature (e.g. Envoy has no
/// file-reload). Allowed in CI too, printed loudly.
pub fn skip_unsupported(kind: ProxyKind, why: &str) {
    eprintln!("SKIPPED for {}: {why}", kind.name());
}

/// Path to the Envoy binary: `ENVOY_BIN`, or `<repo>/.venv/bin/envoy`.
pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy"),
    }
}

pub fn envoy_available() -> bool {
    envoy_bin().is_file()
}

/// The command `envoy --mode validate -c <config>` (no hot restart, errors only).
pub fn envoy_validate_command(config: &Path) -> Command {
    let mut cmd = Command::new(envoy_bin());
    cmd.args([
        "--mode",
        "validate",
        "--disable-hot-restart",
        "-l",
        "error",
        "-c",
    ])
    .arg(config)
    .stdin(Stdio::null());
    cmd
}

/// `envoy --mode validate -c <config>`, its output.
pub fn envoy_validate(config: &Path) -> std::process::Output {
    envoy_validate_command(config)
        .output()
        .expect("run envoy --mode validate")
}

pub fn switchyard_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard"))
}

/// Checks that the selected proxy can run at all; `false` means skip (outside CI only).
#[must_use]
pub fn proxy_available(kind: ProxyKind) -> bool {
    match kind {
        ProxyKind::Switchyard => require(switchyard_bin().is_file(), "switchyard binary missing"),
        ProxyKind::Envoy => require(
            envoy_available(),
            &format!(
                "envoy binary not found at {} (set ENVOY_BIN or run ci/install-deps)",
                envoy_bin().display()
            ),
        ),
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory for one test's files (configs, logs), under cargo's target tmpdir.
pub fn test_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("it-{tag}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).expect("create test dir");
    dir
}
