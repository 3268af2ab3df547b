//! The unit tests' deployment: `testdata/`, the smallest manifest, Dockerfile and seccomp
//! profiles every check accepts, and [`rejects`], which changes one thing and wants the
//! report to name the field; [`words`] for exec commands.

use crate::deploy::Deploy;
use crate::mutate::{locate, At};
use crate::yaml::parse_yaml_docs;
use std::path::Path;

/// `s` as owned words (an exec `command`).
pub fn words(s: &[&str]) -> Vec<String> {
    s.iter().map(|w| w.to_string()).collect()
}

/// The good deployment of `testdata/`.
pub fn deploy() -> Deploy {
    Deploy {
        docs: parse_yaml_docs(include_str!("../testdata/switchyard.yaml"))
            .expect("testdata/switchyard.yaml parses"),
        dockerfile: include_str!("../testdata/Dockerfile").to_string(),
        seccomp_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/seccomp"),
    }
}

/// The problems [`crate::check`] finds in the good deployment changed by `change`.
pub fn problems_after(change: impl FnOnce(&mut Deploy, At)) -> Vec<String> {
    let mut d = deploy();
    let at = locate(&d);
    change(&mut d, at);
    crate::check(&d)
}

/// Asserts that the good deployment passes and that, changed by `change`, a problem names
/// `field`.
#[track_caller]
pub fn rejects(field: &str, change: impl FnOnce(&mut Deploy, At)) {
    let good = crate::check(&deploy());
    assert!(good.is_empty(), "the good deployment: {good:#?}");
    let problems = problems_after(change);
    assert!(
        problems.iter().any(|p| p.contains(field)),
        "no problem names {field:?}: {problems:#?}"
    );
}

/// Asserts that the good deployment changed by `change` still passes.
#[track_caller]
pub fn accepts(change: impl FnOnce(&mut Deploy, At)) {
    let problems = problems_after(change);
    assert!(problems.is_empty(), "{problems:#?}");
}
