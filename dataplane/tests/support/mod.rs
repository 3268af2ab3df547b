//! What the data plane's socket tests share (each test file uses part of it).
#![allow(dead_code)]

pub mod fib;
pub mod pki;

/// What `pki` builds its certificates as.
pub use switchyard_dataplane::tls::settings as tls_settings;
