//! A small, blocking HTTP/1.1 server for the admin: enough of RFC 9112 for admin clients
//! (curl, Prometheus, kubelet probes), and nothing that lets a client hold the admin up.
//!
//! - Requests are parsed from a bounded buffer: the head (request line and headers) is at
//!   most [`MAX_HEAD_BYTES`], a body at most [`MAX_BODY_BYTES`] (read and ignored). A
//!   malformed request gets 400 and the connection is closed; an oversized one 431 or 413.
//! - Keep-alive follows HTTP: on by default for HTTP/1.1, off for HTTP/1.0, and
//!   `Connection: close` / `keep-alive` override it. Pipelined requests are answered in order.
//! - Each read waits at most until a deadline: [`REQUEST_TIMEOUT`] to receive a whole request
//!   once it has started (or on a new connection), [`IDLE_TIMEOUT`] between requests on a
//!   kept-alive connection. Writes time out too.
//! - Connections are tasks of one single-threaded runtime, not threads: one waiting for its
//!   request holds only its buffer. At most [`MAX_CONNECTIONS`] are open; a new one beyond
//!   that takes the place of the one that has waited longest for its request, so clients that
//!   connect and send nothing (or half a request) cannot keep a probe out. `/ready` is
//!   answered on the runtime's thread at once; other handlers run on at most
//!   [`MAX_BUSY_HANDLERS`] threads. A query parameter that does not decode (bad `%XX`, not
//!   UTF-8, NUL) is answered 400 by every endpoint that takes parameters.

use super::access_log::{AdminLogEntry, LoggedHeaders};
use super::socket::{AdminListener, AdminStream};
use super::{route, AdminState};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_dataplane::global_limit::{Counted, GlobalConnections};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Most bytes of request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most bytes of request body (bodies are read and ignored).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections open at once (each holds at most one request's bytes: [`MAX_HEAD_BYTES`] plus
/// [`MAX_BODY_BYTES`]). Beyond it a new connection takes the place of the one that has
/// waited longest for its request; only when all of them are being served is it answered 503.
pub const MAX_CONNECTIONS: usize = 256;
/// Threads that run admin handlers (`/stats`, `/config_dump`, ...) at once; more requests
/// wait for one. `/ready` never waits for them.
pub const MAX_BUSY_HANDLERS: usize = 16;
/// Time allowed to receive one whole request (also the write timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a kept-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Parsed query parameters, percent-decoded, in request order, and the first parameter
/// that did not decode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    params: Vec<(String, String)>,
    error: Option<QueryError>,
}

/// A query parameter that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// The parameter's name as sent (not decoded).
    pub param: String,
    /// What is wrong with it.
    pub problem: QueryProblem,
}

/// What is wrong with a query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryProblem {
    /// A `%` not followed by two hex digits (the escape as sent).
    BadEscape(String),
    /// The decoded bytes are not UTF-8.
    InvalidUtf8,
    /// The decoded text has a NUL character.
    Nul,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query parameter '{}': ", self.param)?;
        match &self.problem {
            QueryProblem::BadEscape(e) => {
                write!(f, "bad percent escape '{e}' (want % and two hex digits)")
            }
            QueryProblem::InvalidUtf8 => f.write_str("invalid UTF-8 after percent-decoding"),
            QueryProblem::Nul => f.write_str("NUL character (%00) after percent-decoding"),
        }
    }
}

impl std::error::Error for QueryError {}

impl Query {
    /// Parses `a=1&b&c=%2A`. `+` stays `+` (filters are regexes, where `+` means something).
    /// A parameter that does not decode is left out and recorded as [`Query::error`].
    pub fn parse(raw: &str) -> Query {
        let mut q = Query::default();
        for p in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match percent_decode(k).and_then(|k| Ok((k, percent_decode(v)?))) {
                Ok(kv) => q.params.push(kv),
                Err(problem) => {
                    q.error.get_or_insert(QueryError {
                        param: k.to_string(),
                        problem,
                    });
                }
            }
        }
        q
    }

    /// The first parameter that did not decode.
    pub fn error(&self) -> Option<&QueryError> {
        self.error.as_ref()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when `name` is present, with or without a value (Envoy's flags: `?usedonly`).
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every parameter that decoded, in order (`/runtime_modify` takes arbitrary keys).
    pub fn pairs(&self) -> &[(String, String)] {
        &self.params
    }
}

/// Strict percent-decoding: every `%` starts a two-hex-digit escape, and the result is UTF-8
/// without NUL.
fn percent_decode(s: &str) -> Result<String, QueryProblem> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
            let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2)) else {
                let end = (i + 3).min(bytes.len());
                let shown = String::from_utf8_lossy(&bytes[i..end]).into_owned();
                return Err(QueryProblem::BadEscape(shown));
            };
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| QueryProblem::InvalidUtf8)?;
    if text.contains('\0') {
        return Err(QueryProblem::Nul);
    }
    Ok(text)
}

/// One request, as the router sees it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query parameters.
    pub query: Query,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// The request target as sent (path and query), for the access log.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub protocol: &'static str,
    /// The headers the access log prints.
    pub headers: LoggedHeaders,
    /// The body's length (read and ignored).
    pub body_len: usize,
}

/// One response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// `Allow` header (405 answers).
    pub allow: Option<&'static str>,
}

/// Envoy's admin content type for text.
pub const TEXT: &str = "text/plain; charset=UTF-8";
/// Envoy's admin content type for JSON.
pub const JSON: &str = "application/json";

impl Response {
    /// A `text/plain; charset=UTF-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: TEXT,
            body: body.into().into_bytes(),
            allow: None,
        }
    }

    /// An `application/json` response: `value`, pretty-printed like Envoy's, and a newline.
    pub fn json(value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status: 200,
            content_type: JSON,
            body,
            allow: None,
        }
    }

    /// Adds an `Allow` header.
    pub fn with_allow(mut self, allow: &'static str) -> Response {
        self.allow = Some(allow);
        self
    }

    async fn write_to(
        &self,
        out: &mut AdminStream,
        head_only: bool,
        keep_alive: bool,
    ) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-cache, max-age=0\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if let Some(allow) = self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        out.write_all(&bytes).await?;
        out.flush().await
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The peer closed, reset, or went quiet: close without answering.
    Gone,
    /// The request is unacceptable: answer with this status and message, then close.
    Reject(u16, String),
}

fn reject(status: u16, msg: impl Into<String>) -> ReadError {
    ReadError::Reject(status, msg.into())
}

/// Reads one request from `stream`, using and refilling `buf` (bytes past this request stay
/// in `buf` for the next one). `idle` is the deadline for the first byte when `buf` is empty.
async fn read_request(
    stream: &mut AdminStream,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> Result<Request, ReadError> {
    let started = Instant::now();
    let mut deadline = started
        + if buf.is_empty() {
            idle
        } else {
            REQUEST_TIMEOUT
        };
    let mut scanned = 0;
    let head_len = loop {
        if let Some(end) = find_head_end(buf, scanned) {
            break end;
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() > MAX_HEAD_BYTES {
            return Err(reject(431, "request head too large"));
        }
        let was_empty = buf.is_empty();
        fill(stream, buf, deadline, MAX_HEAD_BYTES + 1).await?;
        if was_empty {
            // The request has started: it must now arrive within REQUEST_TIMEOUT.
            deadline = Instant::now() + REQUEST_TIMEOUT;
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(reject(431, "request head too large"));
    }
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| reject(400, "request head is not UTF-8"))?;
    let (req, body_len) = parse_head(head)?;
    if body_len > MAX_BODY_BYTES {
        return Err(reject(413, "request body too large"));
    }
    let total = head_len + body_len;
    while buf.len() < total {
        fill(stream, buf, deadline, total).await?;
    }
    buf.drain(..total);
    Ok(req)
}

/// Index just past the blank line that ends the head (`\r\n\r\n`, or `\n\n` leniently).
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Reads more bytes into `buf` (up to `limit` bytes in all), waiting until `deadline`.
async fn fill(
    stream: &mut AdminStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    limit: usize,
) -> Result<(), ReadError> {
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout_error(buf));
        }
        let want = chunk.len().min(limit.saturating_sub(buf.len()).max(1));
        let Ok(read) = timeout(left, stream.read(&mut chunk[..want])).await else {
            return Err(timeout_error(buf));
        };
        match read {
            Ok(0) => {
                return Err(if buf.is_empty() {
                    ReadError::Gone
                } else {
                    reject(400, "connection closed in the middle of a request")
                })
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timeout_error(buf));
            }
            Err(_) => return Err(ReadError::Gone),
        }
    }
}

fn timeout_error(buf: &[u8]) -> ReadError {
    if buf.is_empty() {
        ReadError::Gone
    } else {
        reject(408, "request not received in time")
    }
}

/// Parses the request line and headers; returns the request and its body length.
pub(crate) fn parse_head(head: &str) -> Result<(Request, usize), ReadError> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(reject(400, "malformed method"));
    }
    let (mut keep_alive, protocol) = match version {
        "HTTP/1.1" => (true, "HTTP/1.1"),
        "HTTP/1.0" => (false, "HTTP/1.0"),
        v if v.starts_with("HTTP/") => return Err(reject(505, "only HTTP/1.0 and HTTP/1.1")),
        _ => return Err(reject(400, "malformed HTTP version")),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(reject(400, "malformed request target"));
    }
    let mut content_length: Option<usize> = None;
    let mut headers = LoggedHeaders::default();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(reject(400, "malformed header line"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(reject(400, "malformed header name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| reject(400, "malformed Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(reject(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if let Some(slot) = logged_header(&mut headers, name) {
            *slot = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(reject(501, "Transfer-Encoding is not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: Query::parse(query),
        keep_alive,
        target: target.to_string(),
        protocol,
        headers,
        body_len: content_length.unwrap_or(0),
    };
    Ok((req, content_length.unwrap_or(0)))
}

/// Where a header the access log prints goes, if `name` is one.
fn logged_header<'a>(headers: &'a mut LoggedHeaders, name: &str) -> Option<&'a mut Option<String>> {
    let is = |h: &str| name.eq_ignore_ascii_case(h);
    if is("x-forwarded-for") {
        Some(&mut headers.x_forwarded_for)
    } else if is("user-agent") {
        Some(&mut headers.user_agent)
    } else if is("x-request-id") {
        Some(&mut headers.x_request_id)
    } else if is("host") {
        Some(&mut headers.authority)
    } else {
        None
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The admin's runtime: one thread for every connection, [`MAX_BUSY_HANDLERS`] for handlers.
pub(super) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(MAX_BUSY_HANDLERS)
        .thread_name("admin-handler")
        .build()
}

/// Runs the admin's (and the readiness port's) connections on this thread: a single-threaded
/// tokio runtime. A connection waiting for its request costs a task and its buffer, not a
/// thread, so slow or idle clients cannot use up what probes need; handlers other than
/// readiness run on at most [`MAX_BUSY_HANDLERS`] blocking threads.
pub(super) fn serve(
    runtime: tokio::runtime::Runtime,
    admin: Option<AdminListener>,
    readiness: Option<std::net::TcpListener>,
    state: Arc<AdminState>,
) -> std::io::Result<()> {
    runtime.block_on(async move {
        let admin = admin.map(AsyncListener::new).transpose()?;
        let readiness = readiness
            .map(|l| AsyncListener::new(AdminListener::Tcp(l)))
            .transpose()?;
        let table = Arc::new(Mutex::new(ConnTable::default()));
        match (admin, readiness) {
            (Some(admin), Some(readiness)) => {
                tokio::spawn(accept_loop(
                    readiness,
                    Role::Readiness,
                    state.clone(),
                    table.clone(),
                ));
                accept_loop(admin, Role::Admin, state, table).await;
            }
            (Some(admin), None) => accept_loop(admin, Role::Admin, state, table).await,
            (None, Some(readiness)) => {
                accept_loop(readiness, Role::Readiness, state, table).await;
            }
            (None, None) => {}
        }
        Ok(())
    })
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Every admin endpoint.
    Admin,
    /// Readiness only (`/ready`, `/healthz/ready`): the `--readiness-port` listener.
    Readiness,
}

/// A listener of either kind, registered with the runtime.
enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl AsyncListener {
    fn new(listener: AdminListener) -> std::io::Result<AsyncListener> {
        Ok(match listener {
            AdminListener::Tcp(l) => {
                l.set_nonblocking(true)?;
                AsyncListener::Tcp(tokio::net::TcpListener::from_std(l)?)
            }
            AdminListener::Unix(l) => {
                l.set_nonblocking(true)?;
                AsyncListener::Unix(tokio::net::UnixListener::from_std(l)?)
            }
        })
    }

    async fn accept(&self) -> std::io::Result<AdminStream> {
        match self {
            AsyncListener::Tcp(l) => l.accept().await.map(|(s, _)| AdminStream::Tcp(s)),
            AsyncListener::Unix(l) => l.accept().await.map(|(s, _)| AdminStream::Unix(s)),
        }
    }
}

/// The open connections: which of them are waiting for a request (and since when), so that
/// a new connection beyond [`MAX_CONNECTIONS`] can take the place of the one that has waited
/// longest.
#[derive(Default)]
struct ConnTable {
    next_id: u64,
    open: BTreeMap<u64, Conn>,
}

struct Conn {
    /// When it started waiting for its next request; `None` while a request is served.
    waiting_since: Option<Instant>,
    task: Option<tokio::task::AbortHandle>,
}

impl ConnTable {
    /// Makes room for one more connection: when [`MAX_CONNECTIONS`] are open, takes out the
    /// one that has waited longest for its request and returns its task, for the caller to
    /// abort once the table is unlocked. `Err` when every open connection is being served.
    fn make_room(&mut self) -> Result<Option<tokio::task::AbortHandle>, ()> {
        if self.open.len() < MAX_CONNECTIONS {
            return Ok(None);
        }
        let oldest = self
            .open
            .iter()
            .filter_map(|(id, c)| c.waiting_since.map(|t| (t, *id)))
            .min();
        let Some((_, id)) = oldest else {
            return Err(());
        };
        Ok(self.open.remove(&id).and_then(|c| c.task))
    }
}

/// Removes a connection from the table when its task ends (or is aborted).
struct Registered {
    id: u64,
    table: Arc<Mutex<ConnTable>>,
    /// Its place in the global connection count, given back when the connection ends.
    _seat: Option<GlobalSeat>,
}

/// An admin connection counted in the data plane's global connection count.
struct GlobalSeat(Arc<GlobalConnections>);

impl GlobalSeat {
    /// Counts a new admin connection in; `None` (the caller drops it, closing it) when the
    /// global limit is reached.
    fn take(state: &AdminState) -> Option<GlobalSeat> {
        let connections = state.runtime.connections();
        connections
            .try_enter(Counted::Admin, state.ignore_global_conn_limit)
            .then(|| GlobalSeat(connections.clone()))
    }
}

impl Drop for GlobalSeat {
    fn drop(&mut self) {
        self.0.leave(Counted::Admin);
    }
}

impl Registered {
    fn set_waiting(&self, waiting: bool) {
        let mut t = lock(&self.table);
        if let Some(c) = t.open.get_mut(&self.id) {
            c.waiting_since = waiting.then(Instant::now);
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.table).open.remove(&self.id);
    }
}

fn lock(table: &Mutex<ConnTable>) -> std::sync::MutexGuard<'_, ConnTable> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts forever, serving each connection in its own task.
async fn accept_loop(
    listener: AsyncListener,
    role: Role,
    state: Arc<AdminState>,
    table: Arc<Mutex<ConnTable>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Admin connections count toward the runtime's global connection limit, as in Envoy
        // (unless `admin.ignore_global_conn_limit`); the readiness port is Switchyard's own and is
        // never refused, so a probe answers under any load.
        let seat = match role {
            Role::Admin => match GlobalSeat::take(&state) {
                Some(seat) => Some(seat),
                None => continue,
            },
            Role::Readiness => None,
        };
        let mut t = lock(&table);
        let evicted = t.make_room();
        if evicted.is_err() {
            drop(t);
            tokio::spawn(async move {
                let mut stream = stream;
                let busy = Response::text(503, "too many admin requests in progress\n");
                let _ = timeout(
                    Duration::from_millis(200),
                    busy.write_to(&mut stream, false, false),
                )
                .await;
                close_gracefully(stream).await;
            });
            continue;
        }
        let id = t.next_id;
        t.next_id += 1;
        t.open.insert(
            id,
            Conn {
                waiting_since: Some(Instant::now()),
                task: None,
            },
        );
        let registered = Registered {
            id,
            table: table.clone(),
            _seat: seat,
        };
        // The task cannot run before this loop next awaits (one thread), so its abort handle
        // is in the table before it could end and remove itself.
        let task = tokio::spawn(serve_connection(stream, role, state.clone(), registered));
        if let Some(c) = t.open.get_mut(&id) {
            c.task = Some(task.abort_handle());
        }
        drop(t);
        if let Ok(Some(oldest)) = evicted {
            // Dropping its task closes the connection; the table no longer holds it.
            oldest.abort();
        }
    }
}

/// Serves requests on one connection until either side closes it.
async fn serve_connection(
    mut stream: AdminStream,
    role: Role,
    state: Arc<AdminState>,
    registered: Registered,
) {
    stream.set_nodelay();
    let mut buf = Vec::with_capacity(1024);
    let mut idle = REQUEST_TIMEOUT;
    loop {
        registered.set_waiting(true);
        match read_request(&mut stream, &mut buf, idle).await {
            Ok(req) => {
                registered.set_waiting(false);
                let head_only = req.method == "HEAD";
                let keep_alive = req.keep_alive;
                let started = (!state.access_log.is_empty()).then(|| Started::of(&req));
                let response = respond(role, &state, req).await;
                let written = timeout(
                    REQUEST_TIMEOUT,
                    response.write_to(&mut stream, head_only, keep_alive),
                )
                .await;
                if let Some(started) = started {
                    let sent = if head_only { 0 } else { response.body.len() };
                    started.log(&state, response.status, sent);
                }
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
                if !keep_alive {
                    break;
                }
                idle = IDLE_TIMEOUT;
            }
            Err(ReadError::Gone) => return,
            Err(ReadError::Reject(status, msg)) => {
                registered.set_waiting(false);
                tracing::debug!(status, %msg, "admin: rejected a request");
                let _ = timeout(
                    REQUEST_TIMEOUT,
                    Response::text(status, format!("{msg}\n")).write_to(&mut stream, false, false),
                )
                .await;
                break;
            }
        }
    }
    close_gracefully(stream).await;
}

/// A request's access-log facts, kept while it is served.
struct Started {
    at: Instant,
    unix_ms: u64,
    method: String,
    target: String,
    protocol: &'static str,
    headers: LoggedHeaders,
    body_len: usize,
}

impl Started {
    fn of(req: &Request) -> Started {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Started {
            at: Instant::now(),
            unix_ms,
            method: req.method.clone(),
            target: req.target.clone(),
            protocol: req.protocol,
            headers: req.headers.clone(),
            body_len: req.body_len,
        }
    }

    fn log(self, state: &AdminState, status: u16, bytes_sent: usize) {
        state.access_log.log(&AdminLogEntry {
            start_unix_ms: self.unix_ms,
            method: &self.method,
            target: &self.target,
            protocol: self.protocol,
            status,
            bytes_received: self.body_len,
            bytes_sent,
            duration_ms: u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX),
            headers: &self.headers,
        });
    }
}

/// The response to one request. Readiness is answered on the spot (two atomic loads), so it
/// never waits behind other admin work; everything else runs on the blocking pool.
async fn respond(role: Role, state: &Arc<AdminState>, req: Request) -> Response {
    match role {
        Role::Readiness => super::route_readiness(state, &req),
        Role::Admin if req.path == "/ready" => route(state, &req),
        Role::Admin => {
            let state = state.clone();
            tokio::task::spawn_blocking(move || route(&state, &req))
                .await
                .unwrap_or_else(|_| Response::text(500, "admin handler failed\n"))
        }
    }
}

/// Half-closes, then reads (briefly) what the client still sends, so the kernel does not
/// answer unread bytes with a reset that could destroy the response in flight.
async fn close_gracefully(mut stream: AdminStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let deadline = Instant::now() + Duration::from_millis(100);
    while drained < MAX_BODY_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_decodes_and_keeps_plus() {
        let q = Query::parse("filter=cluster%5C.echo.%2B&usedonly&format=json&a=b=c&e=%C3%A9");
        assert_eq!(q.get("filter"), Some("cluster\\.echo.+"));
        assert!(q.flag("usedonly"));
        assert_eq!(q.get("usedonly"), Some(""));
        assert_eq!(q.get("format"), Some("json"));
        assert_eq!(q.get("a"), Some("b=c"));
        assert_eq!(q.get("e"), Some("\u{e9}"));
        assert!(!q.flag("graceful"));
        assert_eq!(q.error(), None);
        assert_eq!(Query::parse("x=a+b").get("x"), Some("a+b"));
    }

    #[test]
    fn query_parameters_that_do_not_decode_are_reported() {
        let problem = |raw: &str| {
            let q = Query::parse(raw);
            let e = q
                .error()
                .unwrap_or_else(|| panic!("{raw}: no error"))
                .clone();
            let msg = e.to_string();
            (e.param, e.problem, msg)
        };
        let bad = |s: &str| QueryProblem::BadEscape(s.into());
        assert_eq!(problem("ok=1&bad=%zz%4").1, bad("%zz"));
        assert_eq!(problem("bad=ab%4").1, bad("%4"));
        assert_eq!(problem("bad=%").1, bad("%"));
        assert_eq!(problem("filter=%ff%00").1, QueryProblem::InvalidUtf8);
        assert_eq!(problem("filter=%C3").1, QueryProblem::InvalidUtf8);
        assert_eq!(problem("filter=a%00b").1, QueryProblem::Nul);
        let (param, _, msg) = problem("x=1&filter=%ff&y=%zz");
        assert_eq!(param, "filter", "the first bad parameter is reported");
        assert!(
            msg.contains("'filter'") && msg.contains("invalid UTF-8"),
            "{msg}"
        );
        assert_eq!(problem("%ff=1").1, QueryProblem::InvalidUtf8);
        // The parameters that decode are kept.
        let q = Query::parse("x=1&filter=%ff");
        assert_eq!((q.get("x"), q.get("filter")), (Some("1"), None));
    }

    #[test]
    fn head_parsing() {
        let (r, body) = parse_head("GET /stats?filter=x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.keep_alive, body),
            ("GET", "/stats", true, 0)
        );
        assert_eq!(r.query.get("filter"), Some("x"));
        let (r, _) = parse_head("GET / HTTP/1.1\r\nconnection: Close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let (r, _) = parse_head("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let (r, _) = parse_head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        let (_, body) = parse_head("POST /x HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(body, 12);
        for bad in [
            "GET\r\n\r\n",
            "GET /  HTTP/1.1\r\n\r\n",
            "GET stats HTTP/1.1\r\n\r\n",
            "GET / FTP/1.0\r\n\r\n",
            "G(T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(ReadError::Reject(400, _))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse_head("GET / HTTP/2.0\r\n\r\n"),
            Err(ReadError::Reject(505, _))
        ));
        assert!(matches!(
            parse_head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ReadError::Reject(501, _))
        ));
    }

    #[test]
    fn head_end_detection() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }
}
