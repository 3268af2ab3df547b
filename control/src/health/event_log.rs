//! Envoy's outlier detection event log (`cluster_manager.outlier_detection.event_log_path`):
//! one JSON line per ejection decision and per return, in the proto3 JSON of Envoy's
//! `envoy.data.cluster.v3.OutlierDetectionEvent` with every primitive field printed, as
//! Envoy writes it (checked against Envoy 1.40 by tests/health.rs).
//!
//! Guarantees:
//! - An ejection that passes `max_ejection_percent` is logged whether or not it is enforced
//!   (`enforced`, and `num_ejections` counting enforced ejections of the host so far); an
//!   overflow is not (Envoy's rule). A return is logged with the seconds it was out.
//! - Each line is written when the decision is made, by the health thread (never a worker);
//!   Envoy buffers its file up to 10 s. A failed write is logged once and the log goes on.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_dataplane::accesslog::write_start_time;

/// The event log file, opened for appending.
#[derive(Debug)]
pub struct OutlierEventLog {
    file: std::fs::File,
    failed: bool,
}

/// One event: which host, and what happened to it.
pub(super) struct Event<'a> {
    /// Envoy's `OutlierEjectionType` name (`CONSECUTIVE_5XX`, ...).
    pub kind: &'static str,
    pub cluster: &'a str,
    pub host: SocketAddr,
    /// True for `EJECT`, false for `UNEJECT`.
    pub eject: bool,
    pub num_ejections: u32,
    pub enforced: bool,
    /// Since the host's last return (an ejection) or ejection (a return), if it had one.
    pub since_last_action: Option<Duration>,
}

impl OutlierEventLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<OutlierEventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(OutlierEventLog {
            file,
            failed: false,
        })
    }

    /// Appends `event` as one line.
    pub(super) fn write(&mut self, event: &Event<'_>) {
        let line = render(event, SystemTime::now());
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            if !std::mem::replace(&mut self.failed, true) {
                tracing::warn!(error = %e, "outlier event log: cannot write");
            }
        }
    }
}

/// The line, fields in the proto's order.
fn render(e: &Event<'_>, now: SystemTime) -> String {
    let unix_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = format!("{{\"type\":\"{}\",\"timestamp\":\"", e.kind);
    write_start_time(unix_ms, &mut out);
    out.push('"');
    if let Some(since) = e.since_last_action {
        let _ = write!(out, ",\"secs_since_last_action\":\"{}\"", since.as_secs());
    }
    let _ = write!(
        out,
        ",\"cluster_name\":{},\"upstream_url\":\"{}\",\"action\":\"{}\",\"num_ejections\":{},\"enforced\":{}",
        serde_json::Value::from(e.cluster),
        e.host,
        if e.eject { "EJECT" } else { "UNEJECT" },
        e.num_ejections,
        e.enforced
    );
    if e.eject {
        out.push_str(",\"eject_consecutive_event\":{}");
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_envoys() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_603_485_374);
        let mut e = Event {
            kind: "CONSECUTIVE_GATEWAY_FAILURE",
            cluster: "c",
            host: "127.0.0.1:29943".parse().unwrap(),
            eject: true,
            num_ejections: 0,
            enforced: false,
            since_last_action: None,
        };
        assert_eq!(
            render(&e, at),
            "{\"type\":\"CONSECUTIVE_GATEWAY_FAILURE\",\"timestamp\":\"2026-12-07T00:31:25.374Z\",\
             \"cluster_name\":\"c\",\"upstream_url\":\"127.0.0.1:29943\",\"action\":\"EJECT\",\
             \"num_ejections\":0,\"enforced\":false,\"eject_consecutive_event\":{}}\n"
        );
        e.kind = "CONSECUTIVE_5XX";
        e.eject = false;
        e.num_ejections = 1;
        e.since_last_action = Some(Duration::from_millis(1_413));
        assert_eq!(
            render(&e, at),
            "{\"type\":\"CONSECUTIVE_5XX\",\"timestamp\":\"2026-12-07T00:31:25.374Z\",\
             \"secs_since_last_action\":\"1\",\"cluster_name\":\"c\",\
             \"upstream_url\":\"127.0.0.1:29943\",\"action\":\"UNEJECT\",\"num_ejections\":1,\
             \"enforced\":false}\n"
        );
    }
}
