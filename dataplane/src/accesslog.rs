//! Access logs: fixed-size records from workers, formatted and written on another thread.
//!
//! Guarantees:
//! - A worker never formats, allocates or writes: it pushes an [`AccessRecord`] (plain data
//!   and `Arc` clones) into its own bounded queue. When the queue is full the record is
//!   dropped and counted (`server.access_log_dropped`); the worker never waits.
//! - The writer thread drains every worker's queue, renders each record in its sink's format
//!   (Envoy's default TCP format, a `text_format_source` template, or `json_format`) and writes
//!   whole lines to stdout or to the sink's file ([`AccessLogWriter`]). Records from one queue
//!   are written in the order they were pushed; records from different queues are not ordered
//!   with respect to each other.
//! - Rendering ([`render`]) is pure: no clock, no I/O. A value the record does not have renders
//!   as `-` in text formats and as `null` in JSON, like Envoy.

pub mod tls;

use crossbeam_queue::ArrayQueue;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

impl LogFormat {
    /// Renders a TLS operator (so records of TLS connections carry their TLS).
    pub fn uses_tls(&self) -> bool {
        let tls = |s: &Segment| matches!(s, Segment::Operator(Operator::Tls(..)));
        match self {
            LogFormat::EnvoyDefault => false,
            LogFormat::Text(segments) => segments.iter().any(tls),
            LogFormat::Json(fields) => fields.iter().any(|(_, s)| tls(s)),
        }
    }
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
    /// `%UPSTREAM_CLUSTER%` (the observability name: `alt_stat_name` when set)
    UpstreamCluster,
    /// `%UPSTREAM_CLUSTER_RAW%` (the cluster's name)
    UpstreamClusterRaw,
    /// `%UPSTREAM_LOCAL_ADDRESS%`
    UpstreamLocalAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`: the peer the socket sees (the remote address
    /// unless a PROXY header declared another)
    DownstreamDirectRemoteAddress,
    /// `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%`
    DownstreamDirectRemoteAddressWithoutPort,
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
    /// A TLS operator: `%DOWNSTREAM_PEER_URI_SAN%`, `%UPSTREAM_TLS_VERSION%`, ... ([`tls`]).
    Tls(tls::TlsSideSel, tls::TlsField),
}

/// A configured access-log destination and format. Shared (by `Arc`) across FIB generations.
#[derive(Debug)]
pub struct AccessLogSink {
    /// Where lines go.
    pub path: LogPath,
    /// How lines look.
    pub format: LogFormat,
    /// Which connections get a line.
    pub filter: LogFilter,
}

/// An access log's `filter`: every connection, or Envoy's `response_flag_filter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFilter {
    /// No filter: a line for every connection.
    #[default]
    All,
    /// `response_flag_filter` with no flags: connections with any flag.
    AnyFlag,
    /// `response_flag_filter` with flags: connections with one of these (bits of
    /// [`ResponseFlags`]; a flag Switchyard never sets adds no bit).
    Flags(u16),
}

impl LogFilter {
    /// Whether a connection that ended with `flags` gets a line.
    pub fn admits(self, flags: ResponseFlags) -> bool {
        match self {
            LogFilter::All => true,
            LogFilter::AnyFlag => flags.0 != 0,
            LogFilter::Flags(mask) => flags.0 & mask != 0,
        }
    }
}

/// Envoy response flags for TCP, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(pub u16);

impl ResponseFlags {
    /// `UF`: upstream connection failure (refused, or timed out: Envoy's tcp_proxy has no
    /// other flag for a connect timeout).
    pub const UPSTREAM_CONNECTION_FAILURE: u16 = 1 << 0;
    /// `UH`: no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: u16 = 1 << 1;
    /// `NR`: no route (no filter chain, or cluster not found).
    pub const NO_ROUTE_FOUND: u16 = 1 << 2;
    // Bit 3 was `UT` and bit 7 `SI`: Envoy's tcp_proxy sets neither (a connect timeout is
    // `UF,URX`, an idle timeout `-`), so neither is a flag here.
    /// `UO`: upstream overflow (connection table full).
    pub const UPSTREAM_OVERFLOW: u16 = 1 << 4;
    /// `DC`: downstream connection termination (client reset).
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u16 = 1 << 5;
    /// `UC`: upstream connection termination (backend reset).
    pub const UPSTREAM_CONNECTION_TERMINATION: u16 = 1 << 6;
    /// `URX`: the connect attempts are used up (`max_connect_attempts`, 1 by default).
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u16 = 1 << 8;
    /// `DT`: closed at the end of a drain.
    pub const DRAIN_CLOSE: u16 = 1 << 9;
    /// `FI`: the fault filter reset the connection.
    pub const FAULT_INJECTED: u16 = 1 << 10;
    /// `DI`: the fault filter delayed the upstream connect.
    pub const DELAY_INJECTED: u16 = 1 << 11;

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
    /// Client address (the one a PROXY header declared, if any).
    pub downstream_remote: Option<SocketAddr>,
    /// The peer the socket saw, when a PROXY header declared another client address.
    pub downstream_direct_remote: Option<SocketAddr>,
    /// Address the client connected to.
    pub downstream_local: Option<SocketAddr>,
    /// Backend connected to (last attempt).
    pub upstream_host: Option<SocketAddr>,
    /// Local address of the upstream connection.
    pub upstream_local: Option<SocketAddr>,
    /// The cluster's observability name (`alt_stat_name`, or its name).
    pub upstream_cluster: Option<Arc<str>>,
    /// The cluster's name.
    pub upstream_cluster_raw: Option<Arc<str>>,
    /// Envoy response flags.
    pub response_flags: ResponseFlags,
    /// Why the proxy closed the connection, if it did (`-` otherwise).
    pub termination_details: &'static str,
    /// The RBAC policy that denied it (its log name), when `termination_details` is
    /// [`crate::rbac::DENIED_DETAILS`].
    pub denied_by: Option<Arc<str>>,
    /// Its TLS, when it spoke TLS and a sink of it renders a TLS operator (one per
    /// connection, shared by its records).
    pub tls: Option<Arc<tls::TlsRecord>>,
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
            queues: (0..workers.max(1))
                .map(|_| ArrayQueue::new(capacity.max(1)))
                .collect(),
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

    /// Records each queue holds at most.
    pub fn capacity(&self) -> usize {
        self.queues[0].capacity()
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
            "UPSTREAM_CLUSTER_RAW" => Operator::UpstreamClusterRaw,
            "UPSTREAM_LOCAL_ADDRESS" => Operator::UpstreamLocalAddress,
            "DOWNSTREAM_REMOTE_ADDRESS" => Operator::DownstreamRemoteAddress,
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Operator::DownstreamRemoteAddressWithoutPort
            }
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Operator::DownstreamDirectRemoteAddress,
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Operator::DownstreamDirectRemoteAddressWithoutPort
            }
            "DOWNSTREAM_LOCAL_ADDRESS" => Operator::DownstreamLocalAddress,
            "RESPONSE_FLAGS" => Operator::ResponseFlags,
            "CONNECTION_TERMINATION_DETAILS" => Operator::ConnectionTerminationDetails,
            "PROTOCOL" => Operator::Protocol,
            "RESPONSE_CODE" => Operator::ResponseCode,
            other => {
                let (side, field) = tls::operator(other)?;
                Operator::Tls(side, field)
            }
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

impl ResponseFlags {
    /// Envoy's short codes, in Envoy's order (the order `%RESPONSE_FLAGS%` joins them in).
    const SHORT_CODES: [(u16, &'static str); 10] = [
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECTION_FAILURE, "UF"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::NO_ROUTE_FOUND, "NR"),
        (Self::DELAY_INJECTED, "DI"),
        (Self::FAULT_INJECTED, "FI"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::DRAIN_CLOSE, "DT"),
    ];

    /// The bit of Envoy's short code `code` (`"UF"`), if Switchyard ever sets that flag.
    pub fn from_short_code(code: &str) -> Option<u16> {
        Self::SHORT_CODES
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(bit, _)| *bit)
    }

    /// Appends the flags as Envoy's `%RESPONSE_FLAGS%` renders them: short codes joined with
    /// `,` (`UF,URX`), or `-` when none is set.
    pub fn write_short(self, out: &mut String) {
        let mut first = true;
        for (bit, code) in Self::SHORT_CODES {
            if self.has(bit) {
                if !first {
                    out.push(',');
                }
                out.push_str(code);
                first = false;
            }
        }
        if first {
            out.push('-');
        }
    }
}

/// Appends a Unix time in milliseconds as Envoy's default `%START_TIME%`:
/// `2026-11-25T17:03:02.047Z` (UTC, millisecond precision).
pub fn write_start_time(unix_ms: u64, out: &mut String) {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        unix_ms % 1000
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): H. Hinnant's
/// `civil_from_days`, exact for every day a `u64` of milliseconds can name.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// One operator's value for one record, before it is rendered as text or JSON.
enum Value<'a> {
    /// The record has no value: `-` in text, `null` in JSON.
    Missing,
    /// A number (a JSON number).
    Num(u64),
    /// A string.
    Str(&'a str),
    /// An address with port, `127.0.0.1:9001` / `[::1]:9001`.
    Addr(SocketAddr),
    /// An address without port.
    Ip(std::net::IpAddr),
    /// `%START_TIME%`.
    Time(u64),
    /// `%RESPONSE_FLAGS%`.
    Flags(ResponseFlags),
    /// Text made for this record (TLS operators).
    Owned(String),
}

/// The peer the socket saw: the remote address unless a PROXY header declared another.
fn direct_remote(record: &AccessRecord) -> Option<SocketAddr> {
    record.downstream_direct_remote.or(record.downstream_remote)
}

fn value(record: &AccessRecord, op: Operator) -> Value<'_> {
    let addr = |a: Option<SocketAddr>| a.map_or(Value::Missing, Value::Addr);
    match op {
        Operator::StartTime => Value::Time(record.start_time_unix_ms),
        Operator::Duration => Value::Num(record.duration_ms),
        Operator::BytesReceived => Value::Num(record.bytes_received),
        Operator::BytesSent => Value::Num(record.bytes_sent),
        Operator::UpstreamHost => addr(record.upstream_host),
        Operator::UpstreamCluster => record
            .upstream_cluster
            .as_deref()
            .map_or(Value::Missing, Value::Str),
        Operator::UpstreamClusterRaw => record
            .upstream_cluster_raw
            .as_deref()
            .map_or(Value::Missing, Value::Str),
        Operator::UpstreamLocalAddress => addr(record.upstream_local),
        Operator::DownstreamRemoteAddress => addr(record.downstream_remote),
        Operator::DownstreamRemoteAddressWithoutPort => record
            .downstream_remote
            .map_or(Value::Missing, |a| Value::Ip(a.ip())),
        Operator::DownstreamDirectRemoteAddress => addr(direct_remote(record)),
        Operator::DownstreamDirectRemoteAddressWithoutPort => {
            direct_remote(record).map_or(Value::Missing, |a| Value::Ip(a.ip()))
        }
        Operator::DownstreamLocalAddress => addr(record.downstream_local),
        Operator::ResponseFlags => Value::Flags(record.response_flags),
        Operator::ConnectionTerminationDetails => match record.termination_details {
            "" | "-" => Value::Missing,
            crate::rbac::DENIED_DETAILS => Value::Owned(format!(
                "{}[{}]",
                crate::rbac::DENIED_DETAILS,
                record.denied_by.as_deref().unwrap_or("none")
            )),
            details => Value::Str(details),
        },
        Operator::Protocol => Value::Missing,
        Operator::ResponseCode => Value::Num(0),
        Operator::Tls(side, field) => {
            tls::render(record.tls.as_deref(), side, field).map_or(Value::Missing, Value::Owned)
        }
    }
}

fn write_text_value(v: Value<'_>, out: &mut String) {
    match v {
        Value::Missing => out.push('-'),
        Value::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Str(s) => out.push_str(s),
        Value::Owned(s) => out.push_str(&s),
        Value::Addr(a) => {
            let _ = write!(out, "{a}");
        }
        Value::Ip(ip) => {
            let _ = write!(out, "{ip}");
        }
        Value::Time(ms) => write_start_time(ms, out),
        Value::Flags(f) => f.write_short(out),
    }
}

fn write_json_value(v: Value<'_>, out: &mut String) {
    match v {
        Value::Missing => out.push_str("null"),
        Value::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Str(s) => write_json_string(s, out),
        Value::Owned(s) => write_json_string(&s, out),
        other => {
            // Addresses, times and flags never need escaping: render, then quote.
            out.push('"');
            write_text_value(other, out);
            out.push('"');
        }
    }
}

/// Appends `s` as a JSON string literal.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends one record rendered in its sink's format.
///
/// - [`LogFormat::EnvoyDefault`]: Envoy's default format as tcp_proxy renders it, one line:
///   `[2026-11-25T17:03:02.047Z] "- - -" 0 - 1000 1000 0 - "-" "-" "-" "-" "127.0.0.1:9001"`.
/// - [`LogFormat::Text`]: the template's segments; a missing value is `-`. Like Envoy, no
///   newline is added: the template carries its own.
/// - [`LogFormat::Json`]: one JSON object and a newline, keys sorted like Envoy's output;
///   durations, byte counts and response codes are numbers, a missing value is `null`.
pub fn render(record: &AccessRecord, out: &mut String) {
    match &record.sink.format {
        LogFormat::EnvoyDefault => {
            out.push('[');
            write_start_time(record.start_time_unix_ms, out);
            let _ = write!(out, "] \"- - -\" 0 ");
            record.response_flags.write_short(out);
            let _ = write!(
                out,
                " {} {} {} - \"-\" \"-\" \"-\" \"-\" \"",
                record.bytes_received, record.bytes_sent, record.duration_ms
            );
            write_text_value(value(record, Operator::UpstreamHost), out);
            out.push_str("\"\n");
        }
        LogFormat::Text(segments) => {
            for segment in segments {
                match segment {
                    Segment::Literal(text) => out.push_str(text),
                    Segment::Operator(op) => write_text_value(value(record, *op), out),
                }
            }
        }
        LogFormat::Json(fields) => {
            out.push('{');
            let sorted = fields.windows(2).all(|w| w[0].0 <= w[1].0);
            let mut order: Vec<&(String, Segment)> = fields.iter().collect();
            if !sorted {
                order.sort_by(|a, b| a.0.cmp(&b.0));
            }
            for (i, (key, segment)) in order.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(key, out);
                out.push(':');
                match segment {
                    Segment::Literal(text) => write_json_string(text, out),
                    Segment::Operator(op) => write_json_value(value(record, *op), out),
                }
            }
            out.push_str("}\n");
        }
    }
}

/// How often the writer drains the queues when nobody asks it to flush.
const WRITER_INTERVAL: Duration = Duration::from_millis(50);
/// How long the writer waits before retrying a file it could not open or write.
const REOPEN_INTERVAL: Duration = Duration::from_secs(5);

/// The access-log writer thread (`access-log`): drains every worker's queue about every
/// 50 ms, renders each record and writes it to its sink's destination.
///
/// Files are opened once (created if missing, in append mode; parent directories are not
/// created) and kept open. A destination that cannot be opened or written is logged through
/// `tracing` and retried every few seconds; its records are dropped meanwhile, the writer goes
/// on with the others. Workers never wait for it.
#[derive(Debug)]
pub struct AccessLogWriter {
    shared: Arc<WriterShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct WriterShared {
    queues: Arc<AccessLogQueues>,
    ctl: Mutex<WriterCtl>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct WriterCtl {
    /// Flushes asked for so far.
    flush_requested: u64,
    /// Flushes completed: every record queued before flush number `flush_done` is written.
    flush_done: u64,
    /// Drain once more, then exit.
    stop: bool,
}

impl AccessLogWriter {
    /// Starts the `access-log` thread over `queues`. Panics only if the OS refuses a thread.
    pub fn spawn(queues: Arc<AccessLogQueues>) -> AccessLogWriter {
        Self::try_spawn(queues).expect("cannot spawn the access-log thread")
    }

    /// Like [`AccessLogWriter::spawn`], but returns the OS error.
    pub fn try_spawn(queues: Arc<AccessLogQueues>) -> std::io::Result<AccessLogWriter> {
        let shared = Arc::new(WriterShared {
            queues,
            ctl: Mutex::new(WriterCtl::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer_loop(&thread_shared))?;
        Ok(AccessLogWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// Blocks until every record queued before this call has been written (or, for a
    /// destination that fails, dropped and logged).
    pub fn flush(&self) {
        let mut ctl = self.shared.lock();
        if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
            return;
        }
        ctl.flush_requested += 1;
        let target = ctl.flush_requested;
        self.shared.wake.notify_all();
        while ctl.flush_done < target {
            // Re-check now and then in case the writer thread died (a bug): never hang.
            let (guard, _) = self
                .shared
                .wake
                .wait_timeout(ctl, WRITER_INTERVAL)
                .unwrap_or_else(|e| e.into_inner());
            ctl = guard;
            if ctl.flush_done < target && self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                return;
            }
        }
    }

    /// Writes everything queued, flushes stdout and stderr, then stops and joins the thread.
    /// Called once the workers have stopped, it writes every record they queued.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if thread.join().is_err() {
            tracing::error!("the access-log writer thread panicked");
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl WriterShared {
    fn lock(&self) -> MutexGuard<'_, WriterCtl> {
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn writer_loop(shared: &WriterShared) {
    let mut outputs = Outputs::default();
    let mut busy = false;
    loop {
        let (target, stop) = {
            let mut ctl = shared.lock();
            if !busy && !ctl.stop && ctl.flush_requested == ctl.flush_done {
                let (guard, _) = shared
                    .wake
                    .wait_timeout(ctl, WRITER_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner());
                ctl = guard;
            }
            (ctl.flush_requested, ctl.stop)
        };
        // Everything queued before `target` was requested is in the queues now.
        busy = drain_once(&shared.queues, &mut outputs);
        {
            let mut ctl = shared.lock();
            ctl.flush_done = ctl.flush_done.max(target);
        }
        shared.wake.notify_all();
        if stop && !busy {
            // Everything the stopped workers queued is written: nothing stays in a buffer
            // (a text format need not end its lines, so stdout may hold a part of one).
            outputs.flush();
            return;
        }
    }
}

/// Takes at most one queue's capacity from each queue (everything that was there when the
/// round began), renders and writes it. True when some queue may still hold more.
fn drain_once(queues: &AccessLogQueues, outputs: &mut Outputs) -> bool {
    let budget = queues.capacity();
    let mut more = false;
    for worker in 0..queues.len() {
        let mut taken = 0;
        while taken < budget {
            let Some(record) = queues.pop(worker) else {
                break;
            };
            taken += 1;
            let buf = outputs.pending.entry(record.sink.path.clone()).or_default();
            render(&record, buf);
        }
        more |= taken == budget;
    }
    outputs.write_pending();
    more
}

/// Open destinations and the lines rendered for them this round.
#[derive(Debug, Default)]
struct Outputs {
    /// Rendered lines per destination, in queue order.
    pending: HashMap<LogPath, String>,
    /// Files opened so far.
    files: HashMap<PathBuf, FileState>,
}

#[derive(Debug)]
enum FileState {
    Open(File),
    /// Not open: never tried (`None`), or failed at that time and retried after
    /// [`REOPEN_INTERVAL`].
    Closed(Option<Instant>),
}

impl Outputs {
    /// Flushes what the standard streams buffer (files are written unbuffered).
    fn flush(&mut self) {
        if let Err(e) = std::io::stdout().lock().flush() {
            tracing::warn!(error = %e, "access log: cannot flush stdout");
        }
        let _ = std::io::stderr().lock().flush();
    }

    fn write_pending(&mut self) {
        for (path, buf) in self.pending.iter_mut() {
            if buf.is_empty() {
                continue;
            }
            match path {
                LogPath::Stdout => {
                    if let Err(e) = std::io::stdout().lock().write_all(buf.as_bytes()) {
                        tracing::warn!(error = %e, "access log: cannot write to stdout");
                    }
                }
                LogPath::Stderr => {
                    if let Err(e) = std::io::stderr().lock().write_all(buf.as_bytes()) {
                        tracing::warn!(error = %e, "access log: cannot write to stderr");
                    }
                }
                LogPath::File(file) => write_file(&mut self.files, file, buf),
            }
            buf.clear();
        }
    }
}

fn write_file(files: &mut HashMap<PathBuf, FileState>, path: &Path, buf: &str) {
    let state = files
        .entry(path.to_path_buf())
        .or_insert(FileState::Closed(None));
    if let FileState::Closed(failed_at) = state {
        if failed_at.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
            return;
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => *state = FileState::Open(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "access log: cannot open file; dropping its records, retrying in 5 s");
                *state = FileState::Closed(Some(Instant::now()));
                return;
            }
        }
    }
    if let FileState::Open(f) = state {
        if let Err(e) = f.write_all(buf.as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e,
                "access log: cannot write file; dropping its records, reopening in 5 s");
            *state = FileState::Closed(Some(Instant::now()));
        }
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

#[cfg(test)]
mod render_tests {
    use super::*;

    fn sink(format: LogFormat, path: LogPath) -> Arc<AccessLogSink> {
        Arc::new(AccessLogSink {
            path,
            format,
            filter: LogFilter::All,
        })
    }

    fn record(sink: Arc<AccessLogSink>) -> AccessRecord {
        AccessRecord {
            sink,
            // 2026-11-25T17:03:02.047Z
            start_time_unix_ms: 1_795_626_182_047,
            duration_ms: 0,
            bytes_received: 1000,
            bytes_sent: 1000,
            downstream_remote: Some("127.0.0.1:40000".parse().unwrap()),
            downstream_direct_remote: None,
            downstream_local: Some("127.0.0.1:10000".parse().unwrap()),
            upstream_host: Some("127.0.0.1:9001".parse().unwrap()),
            upstream_local: None,
            upstream_cluster: Some("echo".into()),
            upstream_cluster_raw: Some("echo_raw".into()),
            response_flags: ResponseFlags::default(),
            termination_details: "-",
            denied_by: None,
            tls: None,
        }
    }

    #[test]
    fn tls_operators_render_the_peer_certificate_as_envoy() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "acme, inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web");
        params.subject_alt_names = vec![
            rcgen::SanType::URI(
                "spiffe://cluster.local/ns/default/sa/web"
                    .try_into()
                    .unwrap(),
            ),
            rcgen::SanType::URI("spiffe://other/x".try_into().unwrap()),
        ];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0, 0x1a, 0x2b]));
        let cert = params.self_signed(&key).unwrap();
        let template = "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_PEER_SUBJECT% \
                        %DOWNSTREAM_PEER_SERIAL% %DOWNSTREAM_TLS_VERSION% \
                        %DOWNSTREAM_TLS_CIPHER% %REQUESTED_SERVER_NAME% %UPSTREAM_TLS_VERSION%";
        let format = LogFormat::Text(parse_text_format(template).unwrap());
        let mut r = record(sink(format, LogPath::Stdout));
        assert!(r.sink.format.uses_tls());
        r.tls = Some(Arc::new(tls::TlsRecord {
            downstream: Some(tls::TlsSideRecord::new(
                Some("TLSv1.3"),
                Some("TLS_AES_128_GCM_SHA256"),
                Some("gw.example.com".into()),
                Some(cert.der().to_vec()),
                None,
            )),
            upstream: None,
        }));
        assert_eq!(
            rendered(&r),
            // rcgen writes the CN first; RFC 2253 prints the last RDN first (as
            // `openssl x509 -nameopt RFC2253` does: checked on an openssl-made certificate).
            "spiffe://cluster.local/ns/default/sa/web,spiffe://other/x O=acme\\, inc,CN=web \
             1a2b TLSv1.3 TLS_AES_128_GCM_SHA256 gw.example.com -"
        );
    }

    fn rendered(r: &AccessRecord) -> String {
        let mut out = String::new();
        render(r, &mut out);
        out
    }

    #[test]
    fn start_time_is_envoy_default_form() {
        let mut s = String::new();
        write_start_time(1_795_626_182_047, &mut s);
        assert_eq!(s, "2026-11-25T17:03:02.047Z");
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (1_709_251_199_001, "2024-02-29T23:59:59.001Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            s.clear();
            write_start_time(ms, &mut s);
            assert_eq!(s, want, "{ms}");
        }
    }

    #[test]
    fn civil_dates_round_trip_every_day_for_800_years() {
        // Walk day by day from 1970 and compare with a naive calendar.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(800 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > len[m as usize - 1] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn envoy_default_format() {
        let r = record(sink(LogFormat::EnvoyDefault, LogPath::Stdout));
        assert_eq!(
            rendered(&r),
            "[2026-11-25T17:03:02.047Z] \"- - -\" 0 - 1000 1000 0 - \"-\" \"-\" \"-\" \"-\" \
             \"127.0.0.1:9001\"\n"
        );
        let mut r = r;
        r.upstream_host = None;
        r.bytes_received = 5;
        r.bytes_sent = 0;
        r.duration_ms = 1234;
        r.response_flags
            .set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        r.response_flags
            .set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert_eq!(
            rendered(&r),
            "[2026-11-25T17:03:02.047Z] \"- - -\" 0 UF,URX 5 0 1234 - \"-\" \"-\" \"-\" \"-\" \"-\"\n"
        );
    }

    /// Without a PROXY header the direct remote address is the remote address; behind one,
    /// the peer the socket saw.
    #[test]
    fn direct_remote_address_is_the_peer_behind_a_proxy_header() {
        let template = "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS% \
                        %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%\n";
        let format = LogFormat::Text(parse_text_format(template).unwrap());
        let mut r = record(sink(format, LogPath::Stdout));
        assert_eq!(rendered(&r), "127.0.0.1:40000 127.0.0.1:40000 127.0.0.1\n");
        r.downstream_direct_remote = r.downstream_remote;
        r.downstream_remote = Some("192.0.2.7:5555".parse().unwrap());
        assert_eq!(rendered(&r), "192.0.2.7:5555 127.0.0.1:40000 127.0.0.1\n");
    }

    #[test]
    fn every_flag_has_its_envoy_code_in_envoy_order() {
        let mut f = ResponseFlags::default();
        for bit in 0..12 {
            f.set(1 << bit);
        }
        let mut s = String::new();
        f.write_short(&mut s);
        assert_eq!(s, "UH,UF,UC,UO,NR,DI,FI,DC,URX,DT");
        for (bit, code) in [
            (ResponseFlags::NO_ROUTE_FOUND, "NR"),
            (ResponseFlags::UPSTREAM_OVERFLOW, "UO"),
            (ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
            (ResponseFlags::DRAIN_CLOSE, "DT"),
        ] {
            s.clear();
            ResponseFlags(bit).write_short(&mut s);
            assert_eq!(s, code);
        }
    }

    #[test]
    fn text_format_renders_missing_as_dash() {
        let template = "[%START_TIME%] %RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS% \
             %PROTOCOL% %RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
             %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %UPSTREAM_LOCAL_ADDRESS% \
             %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% \
             %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% 100%%\n";
        let f = LogFormat::Text(parse_text_format(template).unwrap());
        let mut r = record(sink(f, LogPath::Stdout));
        r.duration_ms = 7;
        assert_eq!(
            rendered(&r),
            "[2026-11-25T17:03:02.047Z] - - - 0 1000 1000 7 echo 127.0.0.1:9001 - \
             127.0.0.1:10000 127.0.0.1:40000 127.0.0.1 100%\n"
        );
        r.upstream_cluster = None;
        r.downstream_remote = Some("[::1]:5".parse().unwrap());
        r.termination_details = "drain";
        r.response_flags.set(ResponseFlags::DRAIN_CLOSE);
        assert_eq!(
            rendered(&r),
            "[2026-11-25T17:03:02.047Z] DT drain - 0 1000 1000 7 - 127.0.0.1:9001 - \
             127.0.0.1:10000 [::1]:5 ::1 100%\n"
        );
        // No newline is added to a template without one (Envoy does not either).
        let f = LogFormat::Text(parse_text_format("%BYTES_SENT%").unwrap());
        assert_eq!(rendered(&record(sink(f, LogPath::Stdout))), "1000");
    }

    #[test]
    fn json_format_types_and_nulls() {
        let fields = [
            ("upstream_host", "%UPSTREAM_HOST%"),
            ("bytes_received", "%BYTES_RECEIVED%"),
            ("start_time", "%START_TIME%"),
            ("duration", "%DURATION%"),
            ("response_flags", "%RESPONSE_FLAGS%"),
            ("protocol", "%PROTOCOL%"),
            ("response_code", "%RESPONSE_CODE%"),
            ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
            ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
            ("kind", "tcp \"proxy\"\t"),
        ];
        let fields = fields
            .iter()
            .map(|(k, v)| (k.to_string(), parse_json_value(v).unwrap()))
            .collect();
        let r = record(sink(LogFormat::Json(fields), LogPath::Stdout));
        assert_eq!(
            rendered(&r),
            "{\"bytes_received\":1000,\"duration\":0,\"kind\":\"tcp \\\"proxy\\\"\\t\",\
             \"protocol\":null,\"response_code\":0,\"response_flags\":\"-\",\
             \"start_time\":\"2026-11-25T17:03:02.047Z\",\"upstream_cluster\":\"echo\",\
             \"upstream_host\":\"127.0.0.1:9001\",\"upstream_local_address\":null}\n"
        );
    }

    fn temp_path(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "switchyard-accesslog-{}-{nanos}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn writer_appends_both_queues_in_order_and_flushes() {
        let path = temp_path("two-queues.log");
        std::fs::write(&path, "existing line\n").unwrap();
        let text = LogFormat::Text(parse_text_format("%UPSTREAM_CLUSTER% %BYTES_SENT%\n").unwrap());
        let s = sink(text, LogPath::File(path.clone()));
        let queues = Arc::new(AccessLogQueues::new(2, 64));
        let writer = AccessLogWriter::spawn(queues.clone());
        for i in 0..150u64 {
            for (worker, name) in [(0, "w0"), (1, "w1")] {
                let mut r = record(s.clone());
                r.upstream_cluster = Some(name.into());
                r.bytes_sent = i;
                // A full queue drops (like a worker would); retry so the test sees every one.
                while !queues.push(worker, r.clone()) {
                    std::thread::yield_now();
                }
            }
        }
        writer.flush();
        let content = std::fs::read_to_string(&path).unwrap();
        let mut lines = content.lines();
        assert_eq!(lines.next(), Some("existing line"));
        let (mut w0, mut w1) = (Vec::new(), Vec::new());
        for line in lines {
            let (name, n) = line.split_once(' ').unwrap();
            let n: u64 = n.parse().unwrap();
            match name {
                "w0" => w0.push(n),
                "w1" => w1.push(n),
                other => panic!("unexpected line {other}"),
            }
        }
        let want: Vec<u64> = (0..150).collect();
        assert_eq!(w0, want);
        assert_eq!(w1, want);

        // After stop, anything pushed before it is written too.
        let mut r = record(s.clone());
        r.upstream_cluster = Some("last".into());
        assert!(queues.push(1, r));
        writer.stop();
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.lines().last(), Some("last 1000"));
        assert_eq!(content.lines().count(), 302);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn writer_survives_an_unopenable_file() {
        let bad = LogPath::File(temp_path("no-such-dir").join("x.log"));
        let good_path = temp_path("good.log");
        let queues = Arc::new(AccessLogQueues::new(1, 8));
        let writer = AccessLogWriter::spawn(queues.clone());
        assert!(queues.push(0, record(sink(LogFormat::EnvoyDefault, bad))));
        let good = sink(LogFormat::EnvoyDefault, LogPath::File(good_path.clone()));
        assert!(queues.push(0, record(good)));
        writer.flush();
        let content = std::fs::read_to_string(&good_path).unwrap();
        assert!(content.ends_with("\"127.0.0.1:9001\"\n"), "{content}");
        drop(writer); // Drop stops and joins too.
        std::fs::remove_file(&good_path).unwrap();
    }
}
