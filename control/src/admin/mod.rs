//! The admin API: Envoy's admin endpoints over plain HTTP/1.1, on its own threads.
//!
//! Guarantees:
//! - The admin never touches a worker. It reads stat atomics (through the [`StatsRegistry`])
//!   and the FIB `Arc` the workers use, and it asks the control thread for everything else
//!   through [`AdminAction`]s. A slow or stuck admin client can never slow the data plane.
//! - Every endpoint answers in Envoy's format (paths, parameters, text and JSON shapes,
//!   stat names, the Prometheus form), so tools written for Envoy's admin work unchanged.
//! - Mutations (`/quitquitquit`, `/drain_listeners`, `/healthcheck/*`, `/reset_counters`)
//!   are POST only; a GET answers 405, like Envoy.
//! - One thread (`admin`) runs every connection as a task of a single-threaded runtime, at
//!   most [`MAX_CONNECTIONS`] open at once; a new one beyond that replaces the one that has
//!   waited longest for its request. Reads time out ([`REQUEST_TIMEOUT`], [`IDLE_TIMEOUT`])
//!   and requests are bounded in size. Handlers run on at most [`MAX_BUSY_HANDLERS`] threads
//!   (`admin-handler`); `/ready` is answered on the `admin` thread at once. So no number of
//!   idle, slow or half-sent clients can keep a readiness probe out.
//! - With `--readiness-port`, a second listener (all addresses, like Istio's 15021) serves
//!   only `/ready` and `/healthz/ready` on the same thread.
//!
//! Endpoints are listed in [`ENDPOINTS`]; `/help` prints them.

pub mod access_log;
mod certs;
mod clusters;
mod dump;
mod http;
mod socket;
mod stats;
pub mod xds_dump;

pub use http::{
    QueryError, QueryProblem, IDLE_TIMEOUT, MAX_BODY_BYTES, MAX_BUSY_HANDLERS, MAX_CONNECTIONS,
    MAX_HEAD_BYTES, REQUEST_TIMEOUT,
};
pub use socket::AdminListener;
pub use stats::{collect_stats, Stat, StatValue};

use crate::runtime::{ModifyError, Runtime};
use crate::stats::StatsRegistry;
use crate::stats_config::StatsConfig;
use arc_swap::ArcSwap;
use http::{Query, Request, Response};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use switchyard_dataplane::fib::Fib;

/// Envoy `server.state`: the server is serving.
pub const STATE_LIVE: u8 = 0;
/// Envoy `server.state`: draining (or the health check was failed by the admin).
pub const STATE_DRAINING: u8 = 1;
/// Envoy `server.state`: before the first config is loaded.
pub const STATE_PRE_INITIALIZING: u8 = 2;
/// Envoy `server.state`: loading the first config.
pub const STATE_INITIALIZING: u8 = 3;

/// Envoy's name for a `server.state` value (what `/ready` and `/server_info` print).
pub fn state_name(state: u8) -> &'static str {
    match state {
        STATE_LIVE => "LIVE",
        STATE_DRAINING => "DRAINING",
        STATE_PRE_INITIALIZING => "PRE_INITIALIZING",
        STATE_INITIALIZING => "INITIALIZING",
        _ => "UNKNOWN",
    }
}

/// Everything the admin reads, and the channel it asks the control thread through.
#[derive(Debug)]
pub struct AdminState {
    /// Every stat block; the admin sums their per-worker slots on each read.
    pub stats: Arc<StatsRegistry>,
    /// The FIB the workers use now (listeners, clusters, endpoints).
    pub fib: Arc<ArcSwap<Fib>>,
    /// The accepted bootstrap as proto3 JSON, set by the control thread on every accepted
    /// config (`Value::Null` before the first). `/config_dump` and `/server_info` read it.
    pub config_dump: Arc<Mutex<serde_json::Value>>,
    /// What xDS delivered, as `/config_dump` shows it (recorded by the control thread,
    /// rendered when asked for).
    pub xds_dump: Arc<Mutex<xds_dump::XdsDump>>,
    /// Envoy `server.state` as the control thread sets it: [`STATE_LIVE`], [`STATE_DRAINING`],
    /// [`STATE_PRE_INITIALIZING`] or [`STATE_INITIALIZING`].
    pub server_state: Arc<AtomicU8>,
    /// Set by `POST /healthcheck/fail`, cleared by `POST /healthcheck/ok`. While set, the
    /// server reports DRAINING (`/ready` 503, `server.state` 1, `server.live` 0) whatever
    /// `server_state` says, as Envoy does.
    pub healthcheck_failed: Arc<AtomicBool>,
    /// Number of workers (`server.concurrency`, `command_line_options.concurrency`).
    pub concurrency: usize,
    /// When the process started (`server.uptime`, `uptime_current_epoch`).
    pub started: Instant,
    /// The process's command line (`/server_info` reads Envoy-style options from it).
    pub command_line: Vec<String>,
    /// Requests to the control thread.
    pub actions: Sender<AdminAction>,
    /// The admin's own access log (`admin.access_log`); empty unless the bootstrap asks.
    pub access_log: access_log::AdminAccessLog,
    /// The runtime (`/runtime`, `/runtime_modify`) and the global connection count, which
    /// admin connections count toward.
    pub runtime: Arc<Runtime>,
    /// `admin.ignore_global_conn_limit`: admin connections are counted but never refused.
    pub ignore_global_conn_limit: bool,
    /// The bootstrap's `stats_config` (Envoy's defaults until set): which stats exist and
    /// their Prometheus tags. Set once at start.
    pub stats_config: Arc<StatsConfig>,
}

impl AdminState {
    /// A state with nothing configured yet: empty config dump, PRE_INITIALIZING, health check
    /// not failed, started now.
    pub fn new(
        stats: Arc<StatsRegistry>,
        fib: Arc<ArcSwap<Fib>>,
        concurrency: usize,
        command_line: Vec<String>,
        actions: Sender<AdminAction>,
    ) -> AdminState {
        AdminState {
            stats,
            fib,
            config_dump: Arc::new(Mutex::new(serde_json::Value::Null)),
            xds_dump: Arc::default(),
            server_state: Arc::new(AtomicU8::new(STATE_PRE_INITIALIZING)),
            healthcheck_failed: Arc::new(AtomicBool::new(false)),
            concurrency,
            started: Instant::now(),
            command_line,
            actions,
            access_log: access_log::AdminAccessLog::default(),
            runtime: Arc::new(Runtime::new(Arc::default())),
            ignore_global_conn_limit: false,
            stats_config: Arc::default(),
        }
    }

    /// The state the server reports: `server_state`, except DRAINING while the health check
    /// is failed (Envoy's rule).
    pub fn effective_state(&self) -> u8 {
        let state = self.server_state.load(Ordering::Relaxed);
        if state == STATE_LIVE && self.healthcheck_failed.load(Ordering::Relaxed) {
            STATE_DRAINING
        } else {
            state
        }
    }

    /// A copy of the stored bootstrap JSON.
    fn bootstrap(&self) -> serde_json::Value {
        self.config_dump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A copy of the xDS part of the dump.
    fn xds(&self) -> serde_json::Value {
        self.xds_dump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render()
    }
}

/// What the admin asks the control thread to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    /// `POST /quitquitquit`: shut down.
    Quit,
    /// `POST /drain_listeners`: stop accepting. The admin does not change `server_state`; the
    /// control thread does when it starts draining.
    DrainListeners {
        /// `?graceful`: keep accepting for the drain period (`--drain-time-s`), then stop.
        graceful: bool,
        /// `?inboundonly`: only inbound listeners.
        inbound_only: bool,
    },
    /// `POST /healthcheck/fail`. The admin has already set `healthcheck_failed`.
    HealthcheckFail,
    /// `POST /healthcheck/ok`. The admin has already cleared `healthcheck_failed`.
    HealthcheckOk,
    /// `POST /reset_counters`. The admin has already zeroed every counter of the registry
    /// (gauges are left alone); the control thread resets anything else it keeps.
    ResetCounters,
}

/// One admin endpoint: its path, `/help` text, whether it mutates (POST only), parameters.
#[derive(Debug)]
pub struct Endpoint {
    /// Exact path.
    pub path: &'static str,
    /// One-line description, as `/help` prints it.
    pub help: &'static str,
    /// True for mutations: POST only.
    pub mutates: bool,
    /// Query parameters and their descriptions.
    pub params: &'static [(&'static str, &'static str)],
    handler: fn(&AdminState, &Query) -> Response,
}

/// Every endpoint, in `/help` order.
pub static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "/",
        help: "Admin home page",
        mutates: false,
        params: &[],
        handler: |_, _| help(),
    },
    Endpoint {
        path: "/certs",
        help: "print certs on machine",
        mutates: false,
        params: &[],
        handler: certs::handle_certs,
    },
    Endpoint {
        path: "/clusters",
        help: "upstream cluster status",
        mutates: false,
        params: &[("format", "File format to use; One of (text, json)")],
        handler: clusters::handle_clusters,
    },
    Endpoint {
        path: "/config_dump",
        help: "dump current Envoy configs",
        mutates: false,
        params: &[(
            "resource",
            "The resource to dump (static_listeners, static_clusters, ...)",
        )],
        handler: dump::handle_config_dump,
    },
    Endpoint {
        path: "/drain_listeners",
        help: "drain listeners",
        mutates: true,
        params: &[
            ("graceful", "When draining listeners, enter a graceful drain period prior to closing listeners."),
            ("inboundonly", "Drains all inbound listeners."),
        ],
        handler: handle_drain_listeners,
    },
    Endpoint {
        path: "/healthcheck/fail",
        help: "cause the server to fail health checks",
        mutates: true,
        params: &[],
        handler: handle_healthcheck_fail,
    },
    Endpoint {
        path: "/healthcheck/ok",
        help: "cause the server to pass health checks",
        mutates: true,
        params: &[],
        handler: handle_healthcheck_ok,
    },
    Endpoint {
        path: "/help",
        help: "print out list of admin commands",
        mutates: false,
        params: &[],
        handler: |_, _| help(),
    },
    Endpoint {
        path: "/listeners",
        help: "print listener info",
        mutates: false,
        params: &[("format", "File format to use; One of (text, json)")],
        handler: clusters::handle_listeners,
    },
    Endpoint {
        path: "/quitquitquit",
        help: "exit the server",
        mutates: true,
        params: &[],
        handler: handle_quit,
    },
    Endpoint {
        path: "/ready",
        help: "print server state, return 200 if LIVE, otherwise return 503",
        mutates: false,
        params: &[],
        handler: handle_ready,
    },
    Endpoint {
        path: "/reset_counters",
        help: "reset all counters to zero",
        mutates: true,
        params: &[],
        handler: handle_reset_counters,
    },
    Endpoint {
        path: "/runtime",
        help: "print runtime values",
        mutates: false,
        params: &[],
        handler: handle_runtime,
    },
    Endpoint {
        path: "/runtime_modify",
        help: "Adds or modifies runtime values as passed in query parameters. To delete a \
               previously added key, use an empty string as the value. Note that deletion only \
               applies to overrides added via this endpoint; values loaded from disk can be \
               modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
        mutates: true,
        params: &[],
        handler: handle_runtime_modify,
    },
    Endpoint {
        path: "/server_info",
        help: "print server version/status information",
        mutates: false,
        params: &[],
        handler: dump::handle_server_info,
    },
    Endpoint {
        path: "/source_limits",
        help: "Switchyard: the busiest sources of each per-source limit (JSON)",
        mutates: false,
        params: &[("limit", "How many sources per filter (default 10)")],
        handler: stats::handle_source_limits,
    },
    Endpoint {
        path: "/stats",
        help: "print server stats",
        mutates: false,
        params: &[
            ("usedonly", "Only include stats that have been written by system since restart"),
            ("filter", "Regular expression (Google re2) for filtering stats"),
            ("format", "Format to use; One of (text, json, prometheus)"),
            ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges, TextReadouts)"),
        ],
        handler: stats::handle_stats,
    },
    Endpoint {
        path: "/stats/prometheus",
        help: "print server stats in prometheus format",
        mutates: false,
        params: &[
            ("usedonly", "Only include stats that have been written by system since restart"),
            ("filter", "Regular expression (Google re2) for filtering stats"),
        ],
        handler: stats::handle_prometheus,
    },
];

/// Envoy's `/help` text: `admin commands are:` then one `  /path: help` line per endpoint
/// and one `      param: help` line per parameter.
pub fn help_text() -> String {
    let mut out = String::from("admin commands are:\n");
    for e in ENDPOINTS {
        out.push_str(&format!("  {}: {}\n", e.path, e.help));
        for (name, help) in e.params {
            out.push_str(&format!("      {name}: {help}\n"));
        }
    }
    out
}

fn help() -> Response {
    Response::text(200, help_text())
}

/// Starts the admin on `listener` (already bound; `None` without `admin.address`), and
/// readiness alone on `readiness` when given (`--readiness-port`): a thread named `admin`
/// that serves both.
pub fn spawn(
    listener: Option<AdminListener>,
    readiness: Option<std::net::TcpListener>,
    state: Arc<AdminState>,
) -> std::io::Result<JoinHandle<()>> {
    let runtime = http::runtime()?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            if let Err(e) = http::serve(runtime, listener, readiness, state) {
                tracing::error!(error = %e, "admin: cannot serve");
            }
        })
}

/// Routes one request: 404 for an unknown path, 405 for a mutation that is not a POST.
fn route(state: &AdminState, req: &Request) -> Response {
    let Some(endpoint) = ENDPOINTS.iter().find(|e| e.path == req.path) else {
        return Response::text(404, format!("invalid path. {}", help_text()));
    };
    let allowed = if endpoint.mutates {
        req.method == "POST"
    } else {
        matches!(req.method.as_str(), "GET" | "HEAD" | "POST")
    };
    if !allowed {
        let (allow, body) = if endpoint.mutates {
            (
                "POST",
                format!("Method {} not allowed, POST required.\n", req.method),
            )
        } else {
            (
                "GET, HEAD, POST",
                format!("Method {} not allowed.\n", req.method),
            )
        };
        return Response::text(405, body).with_allow(allow);
    }
    // An endpoint that reads parameters never guesses at one that did not decode; one
    // without parameters ignores its query, as Envoy's do.
    if let Some(e) = req.query.error().filter(|_| !endpoint.params.is_empty()) {
        return Response::text(400, format!("invalid query: {e}\n"));
    }
    (endpoint.handler)(state, &req.query)
}

/// The readiness port (`--readiness-port`): `/ready` as the admin answers it (`LIVE`, or 503
/// with the state), `/healthz/ready` as Istio's readiness port does (`ready`, or 503 with the
/// state). Nothing else.
fn route_readiness(state: &AdminState, req: &Request) -> Response {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Response::text(405, format!("Method {} not allowed.\n", req.method))
            .with_allow("GET, HEAD");
    }
    let s = state.effective_state();
    match req.path.as_str() {
        "/ready" => handle_ready(state, &req.query),
        "/healthz/ready" if s == STATE_LIVE => Response::text(200, "ready\n"),
        "/healthz/ready" => Response::text(503, format!("{}\n", state_name(s))),
        _ => Response::text(
            404,
            "the readiness port serves only /ready and /healthz/ready\n",
        ),
    }
}

fn send(state: &AdminState, action: AdminAction) -> Response {
    match state.actions.send(action) {
        Ok(()) => Response::text(200, "OK\n"),
        Err(_) => {
            tracing::error!(?action, "admin: the control thread is gone");
            Response::text(503, "the control thread is not running\n")
        }
    }
}

fn handle_ready(state: &AdminState, _: &Query) -> Response {
    let s = state.effective_state();
    let code = if s == STATE_LIVE { 200 } else { 503 };
    Response::text(code, format!("{}\n", state_name(s)))
}

fn handle_quit(state: &AdminState, _: &Query) -> Response {
    send(state, AdminAction::Quit)
}

fn handle_drain_listeners(state: &AdminState, q: &Query) -> Response {
    send(
        state,
        AdminAction::DrainListeners {
            graceful: q.flag("graceful"),
            inbound_only: q.flag("inboundonly"),
        },
    )
}

fn handle_healthcheck_fail(state: &AdminState, _: &Query) -> Response {
    state.healthcheck_failed.store(true, Ordering::Relaxed);
    send(state, AdminAction::HealthcheckFail)
}

fn handle_healthcheck_ok(state: &AdminState, _: &Query) -> Response {
    state.healthcheck_failed.store(false, Ordering::Relaxed);
    send(state, AdminAction::HealthcheckOk)
}

fn handle_reset_counters(state: &AdminState, _: &Query) -> Response {
    state.stats.reset_counters();
    // Host blocks live in the FIB, not the registry: those of the FIB in service.
    for c in state.fib.load().clusters.iter() {
        c.endpoints.iter().for_each(|e| e.stats.reset_counters());
    }
    send(state, AdminAction::ResetCounters)
}

fn handle_runtime(state: &AdminState, _: &Query) -> Response {
    Response::json(&state.runtime.to_json())
}

/// `POST /runtime_modify?key=value&...`: Envoy's answers (400 with its usage text without
/// parameters, 503 without an admin layer), and 400 naming a key Switchyard does not read.
/// Parameters come in the query only (Envoy also reads a form body; the admin reads no
/// body).
fn handle_runtime_modify(state: &AdminState, q: &Query) -> Response {
    if let Some(e) = q.error() {
        return Response::text(400, format!("invalid query: {e}\n"));
    }
    if q.pairs().is_empty() {
        return Response::text(
            400,
            "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n\
             use an empty value to remove a previously added override",
        );
    }
    match state.runtime.modify(q.pairs()) {
        Ok(()) => Response::text(200, "OK\n"),
        Err(ModifyError::NoAdminLayer) => Response::text(503, "No admin layer specified"),
        Err(ModifyError::Refused { key, reason }) => {
            Response::text(400, format!("{key}: {reason}\n"))
        }
    }
}

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod server_tests;
