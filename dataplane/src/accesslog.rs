//! Access logs: fixed-size records from workers, formatted and written on another thread.
//!
//! Guarantees:
//! - A worker never formats, allocates or writes: it pushes an [`AccessRecord`] (plain data
//!   and `Arc` clones) into its own bounded queue. When the queue is full the record is
//!   dropped and counted (`server.access_log_dropped`); the worker never waits.
//! - The writer thread drains every worker's queue, renders each record in its sink's format
//!   (Envoy's default TCP format, a `text_format_source` template, or `json_format`) and writes
//!   whole lines to stdout or to the sink's file.

use crossbeam_queue::ArrayQueue;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where an access log goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogPath {
    /// `envoy.access_loggers.stdout`.
    Stdout,
    /// `envoy.access_loggers.stderr`.
    Stderr,
    /// `envoy.access_loggers.file` with `path`.
    File(PathBuf),
}

/// How a record is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// Envoy's default format (the one Envoy prints for tcp_proxy with no `log_format`).
    EnvoyDefault,
    /// A `text_format_source.inline_string` template, compiled.
    Text(Vec<Segment>),
    /// A `json_format` object: keys and the operator or literal each key renders.
    Json(Vec<(String, Segment)>),
}

/// One piece of a compiled format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text.
    Literal(String),
    /// A command operator (`%BYTES_SENT%`, ...).
    Operator(Operator),
}

/// The command operators Switchyard renders for TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `%START_TIME%`
    StartTime,
    /// `%DURATION%` (ms)
    Duration,
    /// `%BYTES_RECEIVED%` (from the client)
    BytesReceived,
    /// `%BYTES_SENT%` (to the client)
    BytesSent,
    /// `%UPSTREAM_HOST%`
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`
    UpstreamCluster,
    /// `%UPSTREAM_LOCAL_ADDRESS%`
    UpstreamLocalAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`
    DownstreamLocalAddress,
    /// `%RESPONSE_FLAGS%`
    ResponseFlags,
    /// `%CONNECTION_TERMINATION_DETAILS%`
    ConnectionTerminationDetails,
    /// `%PROTOCOL%` (always `-` for TCP)
    Protocol,
    /// `%RESPONSE_CODE%` (always 0 for TCP)
    ResponseCode,
}

/// A configured access-log destination and format. Shared (by `Arc`) across FIB generations.
#[derive(Debug)]
pub struct AccessLogSink {
    /// Where lines go.
    pub path: LogPath,
    /// How lines look.
    pub format: LogFormat,
}

/// Envoy response flags for TCP, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(pub u16);

impl ResponseFlags {
    /// `UF`: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: u16 = 1 << 0;
    /// `UH`: no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: u16 = 1 << 1;
    /// `NR`: no route (no filter chain, or cluster not found).
    pub const NO_ROUTE_FOUND: u16 = 1 << 2;
    /// `UT`: upstream connect timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u16 = 1 << 3;
    /// `UO`: upstream overflow (connection table full).
    pub const UPSTREAM_OVERFLOW: u16 = 1 << 4;
    /// `DC`: downstream connection termination (client reset).
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u16 = 1 << 5;
    /// `UC`: upstream connection termination (backend reset).
    pub const UPSTREAM_CONNECTION_TERMINATION: u16 = 1 << 6;
    /// `SI`: idle timeout.
    pub const STREAM_IDLE_TIMEOUT: u16 = 1 << 7;
    /// `URX`: connect attempts exceeded.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u16 = 1 << 8;
    /// `DT`: closed at the end of a drain.
    pub const DRAIN_CLOSE: u16 = 1 << 9;

    /// Sets `flag`.
    pub fn set(&mut self, flag: u16) {
        self.0 |= flag;
    }

    /// True when `flag` is set.
    pub fn has(self, flag: u16) -> bool {
        self.0 & flag != 0
    }
}

/// One closed connection, as a worker reports it.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The sink this record is for.
    pub sink: Arc<AccessLogSink>,
    /// Accept time, milliseconds since the Unix epoch.
    pub start_time_unix_ms: u64,
    /// Accept to close, milliseconds.
    pub duration_ms: u64,
    /// Bytes read from the client.
    pub bytes_received: u64,
    /// Bytes written to the client.
    pub bytes_sent: u64,
    /// Client address.
    pub downstream_remote: Option<SocketAddr>,
    /// Address the client connected to.
    pub downstream_local: Option<SocketAddr>,
    /// Backend connected to (last attempt).
    pub upstream_host: Option<SocketAddr>,
    /// Local address of the upstream connection.
    pub upstream_local: Option<SocketAddr>,
    /// Cluster name.
    pub upstream_cluster: Option<Arc<str>>,
    /// Envoy response flags.
    pub response_flags: ResponseFlags,
    /// Why the proxy closed the connection, if it did (`-` otherwise).
    pub termination_details: &'static str,
}

/// One bounded queue per worker.
#[derive(Debug)]
pub struct AccessLogQueues {
    queues: Box<[ArrayQueue<AccessRecord>]>,
}

impl AccessLogQueues {
    /// `workers` queues of `capacity` records each, allocated now.
    pub fn new(workers: usize, capacity: usize) -> Self {
        AccessLogQueues {
            queues: (0..workers.max(1)).map(|_| ArrayQueue::new(capacity.max(1))).collect(),
        }
    }

    /// Pushes without waiting; `false` (record dropped) when the queue is full.
    pub fn push(&self, worker: usize, record: AccessRecord) -> bool {
        let q = &self.queues[worker.min(self.queues.len() - 1)];
        q.push(record).is_ok()
    }

    /// Takes one record from worker `worker`'s queue.
    pub fn pop(&self, worker: usize) -> Option<AccessRecord> {
        self.queues.get(worker)?.pop()
    }

    /// Number of queues.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Always false: there is at least one queue.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
}

impl Operator {
    /// The operator for a command name (without `%`), if Switchyard renders it.
    pub fn from_name(name: &str) -> Option<Operator> {
        Some(match name {
            "START_TIME" => Operator::StartTime,
            "DURATION" => Operator::Duration,
            "BYTES_RECEIVED" => Operator::BytesReceived,
            "BYTES_SENT" => Operator::BytesSent,
            "UPSTREAM_HOST" => Operator::UpstreamHost,
            "UPSTREAM_CLUSTER" => Operator::UpstreamCluster,
            "UPSTREAM_LOCAL_ADDRESS" => Operator::UpstreamLocalAddress,
            "DOWNSTREAM_REMOTE_ADDRESS" => Operator::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Operator::DownstreamRemoteAddressWithoutPort,
            "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress,
            "RESPONSE_FLAGS" => Operator::ResponseFlags,
            "CONNECTION_TERMINATION_DETAILS" => Operator::ConnectionTerminationDetails,
            "PROTOCOL" => Operator::Protocol,
            "RESPONSE_CODE" => Operator::ResponseCode,
            _ => return None,
        })
    }
}

/// Compiles a `text_format_source.inline_string` template. `%%` is a literal `%`. An unknown
/// or unterminated operator is an error naming it.
pub fn parse_text_format(template: &str) -> Result<Vec<Segment>, String> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(pos) = rest.find('%') {
        literal.push_str(&rest[..pos]);
        rest = &rest[pos + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            literal.push('%');
            rest = r;
            continue;
        }
        let end = rest
            .find('%')
            .ok_or_else(|| format!("unterminated command operator '%{rest}'"))?;
        let name = &rest[..end];
        let op = Operator::from_name(name)
            .ok_or_else(|| format!("unsupported command operator '%{name}%'"))?;
        if !literal.is_empty() {
            out.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        out.push(Segment::Operator(op));
        rest = &rest[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Segment::Literal(literal));
    }
    Ok(out)
}

/// Compiles one `json_format` value: a single operator (`"%BYTES_SENT%"`) or a literal.
pub fn parse_json_value(value: &str) -> Result<Segment, String> {
    let segments = parse_text_format(value)?;
    match segments.as_slice() {
        [one] => Ok(one.clone()),
        [] => Ok(Segment::Literal(String::new())),
        _ => Err(format!(
            "json_format value '{value}' must be one command operator or a literal"
        )),
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn text_format_compiles() {
        let f = parse_text_format("[%START_TIME%] %BYTES_SENT% 100%%\n").unwrap();
        assert_eq!(
            f,
            vec![
                Segment::Literal("[".into()),
                Segment::Operator(Operator::StartTime),
                Segment::Literal("] ".into()),
                Segment::Operator(Operator::BytesSent),
                Segment::Literal(" 100%\n".into()),
            ]
        );
        assert!(parse_text_format("%NOPE%").unwrap_err().contains("NOPE"));
        assert!(parse_text_format("%BYTES_SENT").is_err());
        assert!(parse_json_value("%A% %B%").is_err());
    }
}
