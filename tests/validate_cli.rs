//! `switchyard validate -c FILE` over the config corpus:
//!
//! * `control/tests/configs/invalid/*.yaml`: each starts with `# expect: <path substring>`; the
//!   command must exit non-zero within a few seconds and name that path on stderr, without a
//!   panic.
//! * `control/tests/configs/valid/*.yaml` and `examples/*.yaml`: exit 0.
//! * invalid configs marked `# envoy-rejects: <text>`: `envoy --mode validate` fails with
//!   that text too.
//! * `switchyard run`/`demo` numeric flags: inf, NaN, negative and out-of-range values are
//!   refused naming the flag.
//!
//! Switchyard only (Envoy's `--mode validate` has other output); skipped when
//! `SWITCHYARD_TEST_PROXY=envoy`.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    v.sort();
    v
}

/// Runs `switchyard validate -c file` with a 10 s limit.
fn validate(file: &Path) -> (Output, Duration) {
    output_within(
        Command::new(switchyard_bin())
            .arg("validate")
            .arg("-c")
            .arg(file),
        Duration::from_secs(10),
    )
}

fn expect_line(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .take(5)
        .find_map(|l| l.trim().strip_prefix("# expect:"))
        .map(|s| s.trim().to_string())
}

fn skip_for_envoy() -> bool {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "`switchyard validate` is a Switchyard CLI test");
        return true;
    }
    false
}

#[test]
fn invalid_configs_are_rejected_naming_the_field() {
    if skip_for_envoy() {
        return;
    }
    let dir = repo_root().join("control/tests/configs/invalid");
    let files = yaml_files(&dir);
    if !require(
        !files.is_empty(),
        &format!("no invalid configs in {}", dir.display()),
    ) {
        return;
    }
    let mut failures = Vec::new();
    for f in &files {
        let Some(expect) = expect_line(f) else {
            failures.push(format!(
                "{}: missing `# expect: <path>` header",
                f.display()
            ));
            continue;
        };
        let (out, took) = validate(f);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: exit 0, expected failure", f.display()));
        } else if !stderr.contains(&expect) {
            failures.push(format!(
                "{}: stderr does not contain {expect:?}: {}",
                f.display(),
                stderr.trim()
            ));
        } else if stderr.contains("panicked") || out.status.code().is_none() {
            failures.push(format!(
                "{}: panicked or killed by a signal ({:?})",
                f.display(),
                out.status
            ));
        } else if took > Duration::from_secs(2) {
            failures.push(format!("{}: took {took:?}", f.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid configs misbehaved:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn valid_configs_and_examples_are_accepted() {
    if skip_for_envoy() {
        return;
    }
    let root = repo_root();
    let mut files = yaml_files(&root.join("control/tests/configs/valid"));
    let n_valid = files.len();
    files.extend(yaml_files(&root.join("examples")));
    if !require(
        n_valid > 0,
        "no valid configs in control/tests/configs/valid",
    ) {
        return;
    }
    let mut failures = Vec::new();
    for f in &files {
        let (out, _) = validate(f);
        if !out.status.success() {
            failures.push(format!(
                "{}: {:?}: {}",
                f.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} valid configs rejected:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// A config produced by the test harness itself (what every other test feeds the proxy) must
/// validate, so the suites and the validator agree.
#[test]
fn harness_configs_validate() {
    if skip_for_envoy() {
        return;
    }
    let dir = test_dir("validate");
    let be = local(closed_port());
    let yaml = bootstrap(
        free_port(),
        &tcp_listener("l", free_port(), "l", "c"),
        &static_cluster("c", &[(be, 1), (local(closed_port()), 3)]),
    );
    let f = dir.join("harness.yaml");
    fs::write(&f, yaml).expect("write");
    let (out, _) = validate(&f);
    assert!(
        out.status.success(),
        "harness config rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And one broken field is named.
    let bad = fs::read_to_string(&f)
        .expect("read")
        .replace("lb_policy: ROUND_ROBIN", "lb_policy: NOT_A_POLICY");
    fs::write(&f, bad).expect("write");
    let (out, _) = validate(&f);
    assert!(!out.status.success(), "bad lb_policy accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lb_policy"),
        "stderr does not name lb_policy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The valid corpus and the examples are real Envoy configs: `envoy --mode validate` accepts
/// them (so "valid" means valid for both implementations), except those whose first line
/// reads `# switchyard-only: <why>` (our own extensions). Needs Envoy; runs for either
/// selected proxy.
#[test]
fn valid_configs_are_accepted_by_envoy_validate() {
    if !require(
        envoy_available(),
        &format!("Envoy not found at {}", envoy_bin().display()),
    ) {
        return;
    }
    let root = repo_root();
    let mut files = yaml_files(&root.join("control/tests/configs/valid"));
    files.extend(yaml_files(&root.join("examples")));
    if !require(!files.is_empty(), "no valid configs or examples") {
        return;
    }
    let mut failures = Vec::new();
    for f in &files {
        // Configs of Switchyard's own extensions say so on their first line.
        let first = fs::read_to_string(f).unwrap_or_default();
        if first.starts_with("# switchyard-only:") {
            eprintln!("{}: Switchyard's own extension, not for Envoy", f.display());
            continue;
        }
        let out = envoy_validate(f);
        if !out.status.success() {
            failures.push(format!(
                "{}: {:?}: {}",
                f.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "Envoy rejects {} of {} 'valid' configs:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Every numeric flag refuses what it cannot represent (inf, NaN, negative, past its range,
/// past u64) with an error that names the flag, and never panics. The config path does not
/// exist, so a value wrongly accepted fails later with an error that does not name the flag.
#[test]
fn numeric_flags_reject_unrepresentable_values() {
    if skip_for_envoy() {
        return;
    }
    let missing = test_dir("flags").join("no-such-config.yaml");
    let run = |flag: &str, value: &str| -> Vec<String> {
        vec![
            "run".into(),
            "-c".into(),
            missing.display().to_string(),
            flag.into(),
            value.into(),
        ]
    };
    let huge = "18446744073709551616"; // u64::MAX + 1
    let mut cases: Vec<(Vec<String>, &str)> = Vec::new();
    for v in [
        "inf",
        "-inf",
        "NaN",
        "nan",
        "-1",
        "-0.5",
        "1e300",
        "1e19",
        huge,
        "4294967296",
        "5s",
        "",
    ] {
        cases.push((run("--drain-time-s", v), "--drain-time-s"));
    }
    for v in ["0", "-1", "1e3", "1025", huge, "NaN"] {
        cases.push((run("--concurrency", v), "--concurrency"));
    }
    for v in ["0", "-1", "1048577", huge, "inf"] {
        cases.push((
            run("--max-connections-per-worker", v),
            "--max-connections-per-worker",
        ));
    }
    for v in ["0", "-1", "4097", huge, "NaN"] {
        cases.push((run("--buffer-size-kib", v), "--buffer-size-kib"));
    }
    for v in ["-1", "16385", huge, "inf"] {
        cases.push((run("--large-buffer-size-kib", v), "--large-buffer-size-kib"));
    }
    for v in ["0", "-1", "1048577", huge] {
        cases.push((
            run("--udp-sessions-per-worker", v),
            "--udp-sessions-per-worker",
        ));
    }
    for v in ["0", "-1", "86401", "18446744073709551615", huge, "inf"] {
        cases.push((
            vec!["demo".into(), "--duration-s".into(), v.into()],
            "--duration-s",
        ));
    }
    for (flag, v) in [
        ("--proxy-port", "-1"),
        ("--proxy-port", "65536"),
        ("--inbound-port", "-1"),
        ("--proxy-uid", "-1"),
        ("--proxy-gid", "4294967296"),
        ("--proxy-mark", "-1"),
        ("--exclude-port", "-1"),
        ("--tproxy-mark", "-1"),
        ("--tproxy-table", huge),
    ] {
        cases.push((
            vec!["capture".into(), "status".into(), flag.into(), v.into()],
            flag,
        ));
    }
    let mut failures = Vec::new();
    for (args, flag) in &cases {
        let out = match try_output_within(
            Command::new(switchyard_bin()).args(args),
            Duration::from_secs(5),
        ) {
            Ok((out, _)) => out,
            Err(e) => {
                failures.push(format!("{args:?}: accepted: {e}"));
                continue;
            }
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || out.status.code().is_none() || stderr.contains("panicked") {
            failures.push(format!("{args:?}: {:?}: {}", out.status, stderr.trim()));
        } else if !stderr.contains(flag) {
            failures.push(format!(
                "{args:?}: stderr does not name {flag}: {}",
                stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad flag values misbehaved:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    if let Some(dir) = missing.parent() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Invalid configs that Envoy refuses too say so with `# envoy-rejects: <part of Envoy's
/// error>` in their first lines: `envoy --mode validate` must fail on them with that text, so
/// the corpus keeps Switchyard's refusals and Envoy's in step. Needs Envoy; runs for either
/// selected proxy.
#[test]
fn invalid_configs_marked_envoy_rejects_fail_envoy_validate() {
    if !require(
        envoy_available(),
        &format!("Envoy not found at {}", envoy_bin().display()),
    ) {
        return;
    }
    let files = yaml_files(&repo_root().join("control/tests/configs/invalid"));
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap_or_default();
        let Some(want) = text
            .lines()
            .take(5)
            .find_map(|l| l.trim().strip_prefix("# envoy-rejects:"))
            .map(str::trim)
        else {
            continue;
        };
        checked += 1;
        let out = envoy_validate(f);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            failures.push(format!("{}: Envoy accepted it", f.display()));
        } else if !all.contains(want) {
            failures.push(format!(
                "{}: Envoy's error does not contain {want:?}: {}",
                f.display(),
                all.trim()
            ));
        }
    }
    assert!(checked > 0, "no `# envoy-rejects:` config in the corpus");
    assert!(
        failures.is_empty(),
        "{} of {checked} configs misbehaved under Envoy:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
