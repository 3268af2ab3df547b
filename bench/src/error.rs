//! Error classes counted by every mode, and the error a run returns when it cannot start.
//!
//! A run never stops at the first failed connection: each failure is classified and counted, the
//! run goes on with the connections that still work, and the report carries the counts. The
//! binary exits non-zero when any count is non-zero. [`BenchError`] is only for runs that could
//! not happen at all (a bad config, a thread that could not be spawned, a JSON file that could
//! not be written).

use std::fmt;
use std::io;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// How many error strings a run keeps verbatim for the report (`error_samples`).
pub const ERROR_SAMPLES_MAX: usize = 8;

/// The class of one failed connection or exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The connect was refused (nothing listening, or a proxy without a route refusing).
    Refused,
    /// The peer reset the connection (ECONNRESET, ECONNABORTED, EPIPE).
    Reset,
    /// A connect, read or write took longer than the configured timeout.
    Timeout,
    /// Bytes arrived that differ from what was sent (echo) or from the pattern (source), or
    /// bytes arrived where none were expected.
    Mismatch,
    /// The peer closed the connection before all expected bytes arrived.
    Eof,
    /// TLS failed: the handshake (a certificate the trust roots or the name do not accept, an
    /// alert from the peer, no common cipher suite) or a record (decrypt error).
    Tls,
    /// Anything else (address not available, too many open files, ...).
    Other,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Refused,
        ErrorClass::Reset,
        ErrorClass::Timeout,
        ErrorClass::Mismatch,
        ErrorClass::Eof,
        ErrorClass::Tls,
        ErrorClass::Other,
    ];

    /// The lower-case name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Refused => "refused",
            ErrorClass::Reset => "reset",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Mismatch => "mismatch",
            ErrorClass::Eof => "eof",
            ErrorClass::Tls => "tls",
            ErrorClass::Other => "other",
        }
    }

    /// Classifies an I/O error. Socket timeouts (SO_RCVTIMEO/SO_SNDTIMEO) surface as
    /// `WouldBlock` on Linux and count as timeouts. An error rustls raised is `tls`.
    pub fn of_io(err: &io::Error) -> ErrorClass {
        if err
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return ErrorClass::Tls;
        }
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ErrorClass::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ErrorClass::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorClass::Timeout,
            io::ErrorKind::UnexpectedEof => ErrorClass::Eof,
            io::ErrorKind::InvalidData => ErrorClass::Mismatch,
            _ => ErrorClass::Other,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error counts by class, as they appear in reports and JSON (`errors`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub mismatch: u64,
    pub eof: u64,
    /// Added within `switchyard-bench/v1`: absent (0) in reports written before it.
    #[serde(default)]
    pub tls: u64,
    pub other: u64,
}

impl ErrorCounts {
    /// Adds one error of `class`.
    pub fn add(&mut self, class: ErrorClass) {
        *self.slot(class) += 1;
    }

    /// The count for one class.
    pub fn get(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::Refused => self.refused,
            ErrorClass::Reset => self.reset,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Mismatch => self.mismatch,
            ErrorClass::Eof => self.eof,
            ErrorClass::Tls => self.tls,
            ErrorClass::Other => self.other,
        }
    }

    fn slot(&mut self, class: ErrorClass) -> &mut u64 {
        match class {
            ErrorClass::Refused => &mut self.refused,
            ErrorClass::Reset => &mut self.reset,
            ErrorClass::Timeout => &mut self.timeout,
            ErrorClass::Mismatch => &mut self.mismatch,
            ErrorClass::Eof => &mut self.eof,
            ErrorClass::Tls => &mut self.tls,
            ErrorClass::Other => &mut self.other,
        }
    }

    /// Adds every count of `other` to `self`.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for class in ErrorClass::ALL {
            *self.slot(class) += other.get(class);
        }
    }

    /// The sum over all classes.
    pub fn total(&self) -> u64 {
        ErrorClass::ALL.iter().map(|c| self.get(*c)).sum()
    }

    /// `refused=0 reset=1 ...`, for tables and progress lines.
    pub fn summary(&self) -> String {
        ErrorClass::ALL
            .iter()
            .map(|c| format!("{}={}", c.name(), self.get(*c)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One failure: its class and a message that says which side and which step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
}

impl Failure {
    /// A failure from an I/O error during `step` (for example "connect", "read response").
    pub fn io(step: &str, err: &io::Error) -> Failure {
        Failure {
            class: ErrorClass::of_io(err),
            message: format!("{step}: {err}"),
        }
    }

    /// A failure of an explicit class.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Failure {
        Failure {
            class,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.class, self.message)
    }
}

/// Error counts shared by the threads of one run, with the first few messages kept verbatim.
#[derive(Debug, Default)]
pub struct ErrorSink {
    inner: Mutex<(ErrorCounts, Vec<String>)>,
}

impl ErrorSink {
    /// Counts one failure (and keeps its message if fewer than [`ERROR_SAMPLES_MAX`] are kept).
    pub fn record(&self, failure: &Failure) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.add(failure.class);
        if guard.1.len() < ERROR_SAMPLES_MAX {
            guard.1.push(failure.to_string());
        }
    }

    /// The total so far (for progress lines).
    pub fn total(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .total()
    }

    /// The counts and the kept messages.
    pub fn snapshot(&self) -> (ErrorCounts, Vec<String>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Why a run could not happen at all. Failures of individual connections are not this: they are
/// counted in the report.
#[derive(Debug)]
pub enum BenchError {
    /// The config is unusable (zero connections, zero duration, a message size of zero, ...).
    Config(String),
    /// A thread could not be spawned, or another local resource failed before the run started.
    Io(io::Error),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Config(msg) => write!(f, "invalid configuration: {msg}"),
            BenchError::Io(err) => write!(f, "local I/O error: {err}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Config(_) => None,
            BenchError::Io(err) => Some(err),
        }
    }
}

impl From<io::Error> for BenchError {
    fn from(err: io::Error) -> Self {
        BenchError::Io(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_io_errors() {
        let e = |k| io::Error::new(k, "x");
        assert_eq!(
            ErrorClass::of_io(&e(io::ErrorKind::ConnectionRefused)),
            ErrorClass::Refused
        );
        assert_eq!(
            ErrorClass::of_io(&e(io::ErrorKind::BrokenPipe)),
            ErrorClass::Reset
        );
        assert_eq!(
            ErrorClass::of_io(&e(io::ErrorKind::WouldBlock)),
            ErrorClass::Timeout
        );
        assert_eq!(
            ErrorClass::of_io(&e(io::ErrorKind::UnexpectedEof)),
            ErrorClass::Eof
        );
        assert_eq!(
            ErrorClass::of_io(&e(io::ErrorKind::AddrNotAvailable)),
            ErrorClass::Other
        );
        let bad_cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(ErrorClass::of_io(&bad_cert), ErrorClass::Tls);
    }

    #[test]
    fn counts_merge_and_total() {
        let mut a = ErrorCounts::default();
        a.add(ErrorClass::Reset);
        a.add(ErrorClass::Reset);
        let mut b = ErrorCounts::default();
        b.add(ErrorClass::Eof);
        a.merge(&b);
        assert_eq!(a.reset, 2);
        assert_eq!(a.eof, 1);
        assert_eq!(a.total(), 3);
        assert!(a.summary().contains("reset=2"));
    }

    #[test]
    fn sink_keeps_bounded_samples() {
        let sink = ErrorSink::default();
        for i in 0..20 {
            sink.record(&Failure::new(ErrorClass::Timeout, format!("t{i}")));
        }
        let (counts, samples) = sink.snapshot();
        assert_eq!(counts.timeout, 20);
        assert_eq!(samples.len(), ERROR_SAMPLES_MAX);
        assert_eq!(samples[0], "[timeout] t0");
    }
}
