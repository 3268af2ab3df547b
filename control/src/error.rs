//! The one error type of the config layer: where, and what.
//!
//! A leaf: it imports nothing of the crate, so `config` (parsing, walking) and `convert`
//! (proto to RIB) both report through it without importing each other.

use std::fmt;

/// What kind of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read, or its extension names no format.
    Io,
    /// The text is not valid YAML or JSON.
    Syntax,
    /// A field that does not exist in the Envoy API (a typo).
    UnknownField,
    /// A field or value that Envoy has but Switchyard does not support.
    Unsupported,
    /// A value of the wrong type or out of range, or a semantic error (duplicates, ...).
    Invalid,
}

/// A config problem, with the path of the field it is about.
///
/// `Display` prints `<path>: <message>`, the path in proto field names with list indices,
/// e.g. `static_resources.clusters[0].health_checks: not supported by Switchyard`. Problems
/// about the whole file (I/O, syntax) have an empty path and print the message alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ErrorKind,
    path: String,
    message: String,
}

impl ConfigError {
    /// An error of `kind` at `path`.
    pub fn new(kind: ErrorKind, path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            kind,
            path: path.into(),
            message: message.into(),
        }
    }

    /// A semantic or value error at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, path, message)
    }

    /// A field or value Switchyard does not support, at `path`.
    pub fn unsupported(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, path, message)
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The field path (empty for whole-file problems).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The message, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
