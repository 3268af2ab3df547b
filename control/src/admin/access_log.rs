//! The admin's own access log (`admin.access_log`, or the deprecated `admin.access_log_path`):
//! one line per admin request, in Envoy's default HTTP format, as Envoy writes it:
//!
//! ```text
//! [2026-12-06T18:00:00.123Z] "GET /stats?filter=cx HTTP/1.1" 200 - 0 5120 1 - "-" "curl/8.5.0" "-" "127.0.0.1:15000" "-"
//! ```
//!
//! `%START_TIME%`, `%REQ(:METHOD)%`, the path with its query, `%PROTOCOL%`,
//! `%RESPONSE_CODE%`, `%RESPONSE_FLAGS%` (always `-`), `%BYTES_RECEIVED%` (the request body),
//! `%BYTES_SENT%` (the response body), `%DURATION%` (ms), then the upstream service time
//! (`-`: the admin has no upstream), `X-Forwarded-For` (as sent: Envoy's admin writes an
//! address of its own there), `User-Agent`, `X-Request-Id`, the
//! `Host` header and `%UPSTREAM_HOST%` (`-`). A request refused before it was read whole
//! (a malformed head) is not logged; Envoy's codec does not log those either.
//!
//! # Guarantees
//!
//! Written by the admin thread (and its handler pool), never by a worker: one `write` of the
//! whole line per request and sink, files opened once in append mode at start (Envoy opens
//! them when the admin starts; a change of `admin` takes effect at the next start, as the
//! admin's address does). A failed write is dropped and counted nowhere, as the line is
//! best effort in Envoy too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use switchyard_dataplane::accesslog::{write_start_time, LogPath};

/// Where the admin's access log lines go; empty when the bootstrap asks for none.
#[derive(Debug, Default)]
pub struct AdminAccessLog {
    sinks: Vec<Sink>,
}

#[derive(Debug)]
enum Sink {
    Stdout,
    Stderr,
    File(Mutex<std::fs::File>),
}

impl Sink {
    /// A file is created if missing and appended to; its error names the path.
    fn open(path: &LogPath) -> std::io::Result<Sink> {
        let file = match path {
            LogPath::Stdout => return Ok(Sink::Stdout),
            LogPath::Stderr => return Ok(Sink::Stderr),
            LogPath::File(file) => file,
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .map(|f| Sink::File(Mutex::new(f)))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", file.display())))
    }
}

/// What one admin request's line says.
#[derive(Debug, Clone)]
pub struct AdminLogEntry<'a> {
    /// When the request's head was read, Unix milliseconds.
    pub start_unix_ms: u64,
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The request target as sent: the path and its query.
    pub target: &'a str,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub protocol: &'a str,
    /// The response's status code.
    pub status: u16,
    /// The request body's length.
    pub bytes_received: usize,
    /// The response body's length.
    pub bytes_sent: usize,
    /// From the head read to the response written, ms.
    pub duration_ms: u64,
    /// The request headers the default format prints.
    pub headers: &'a LoggedHeaders,
}

/// The request headers Envoy's default format prints (`"-"` when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggedHeaders {
    /// `X-Forwarded-For`.
    pub x_forwarded_for: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `X-Request-Id`.
    pub x_request_id: Option<String>,
    /// `Host` (`:authority`).
    pub authority: Option<String>,
}

impl AdminAccessLog {
    /// Opens every sink: files are created if missing and appended to.
    pub fn open(paths: &[LogPath]) -> std::io::Result<AdminAccessLog> {
        let sinks = paths
            .iter()
            .map(Sink::open)
            .collect::<std::io::Result<Vec<Sink>>>()?;
        Ok(AdminAccessLog { sinks })
    }

    /// True when no line is written.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Writes `entry`'s line to every sink.
    pub fn log(&self, entry: &AdminLogEntry<'_>) {
        if self.sinks.is_empty() {
            return;
        }
        let line = render(entry);
        for sink in &self.sinks {
            let _ = match sink {
                Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
                Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
                Sink::File(f) => match f.lock() {
                    Ok(mut f) => f.write_all(line.as_bytes()),
                    Err(poisoned) => poisoned.into_inner().write_all(line.as_bytes()),
                },
            };
        }
    }
}

/// Envoy's default HTTP access log format, for one admin request.
pub fn render(e: &AdminLogEntry<'_>) -> String {
    let mut out = String::with_capacity(160);
    out.push('[');
    write_start_time(e.start_unix_ms, &mut out);
    let h = e.headers;
    let _ = writeln!(
        out,
        "] \"{} {} {}\" {} - {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"-\"",
        e.method,
        e.target,
        e.protocol,
        e.status,
        e.bytes_received,
        e.bytes_sent,
        e.duration_ms,
        or_dash(&h.x_forwarded_for),
        or_dash(&h.user_agent),
        or_dash(&h.x_request_id),
        or_dash(&h.authority),
    );
    out
}

/// A header's value, or `-` when it was absent (Envoy's placeholder).
fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_envoys_default_format() {
        let headers = LoggedHeaders {
            user_agent: Some("curl/8.5.0".into()),
            authority: Some("127.0.0.1:15000".into()),
            ..LoggedHeaders::default()
        };
        let line = render(&AdminLogEntry {
            start_unix_ms: 1_796_580_000_123,
            method: "GET",
            target: "/stats?filter=cx",
            protocol: "HTTP/1.1",
            status: 200,
            bytes_received: 0,
            bytes_sent: 5120,
            duration_ms: 1,
            headers: &headers,
        });
        assert_eq!(
            line,
            "[2026-12-06T18:00:00.123Z] \"GET /stats?filter=cx HTTP/1.1\" 200 - 0 5120 1 - \
             \"-\" \"curl/8.5.0\" \"-\" \"127.0.0.1:15000\" \"-\"\n"
        );
    }

    #[test]
    fn files_are_appended_to() {
        let dir = std::env::temp_dir().join(format!("sy-admin-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.log");
        std::fs::write(&path, "old\n").unwrap();
        let log = AdminAccessLog::open(&[LogPath::File(path.clone())]).unwrap();
        let headers = LoggedHeaders::default();
        log.log(&AdminLogEntry {
            start_unix_ms: 0,
            method: "POST",
            target: "/healthcheck/fail",
            protocol: "HTTP/1.0",
            status: 200,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: 0,
            headers: &headers,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("old\n[1970-01-01T00:00:00.000Z] \"POST /healthcheck/fail HTTP/1.0\" 200 - 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\"\n"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
