//! The life of one proxied TCP connection, as a pure state machine.
//!
//! Everything a connection decides after it is accepted lives here: what the accept verdict
//! means, circuit-breaker admission, connect attempts and retries, the fault filter's delay
//! and abort, the relay of bytes both ways, idle and drain expiry, and how it closes and is
//! accounted for. There is no ring, no clock and no socket inside: the I/O driver (the
//! io_uring worker today, an AF_XDP + smoltcp driver next) feeds [`Event`]s with `now_ms`,
//! answers the two questions only it can ([`Upstreams`]: may one more upstream connection
//! be made, and to which endpoint) and carries out the [`Action`]s that come back. The same
//! machine runs under a deterministic simulator (`sim`, tests only) with random completion
//! orders, short reads and writes, errors and timers.
//!
//! # States
//!
//! A connection's [`Stage`] is one of: waiting for its listener's TLS inspector to read the
//! ClientHello before any chain is decided ([`Stage::Inspecting`]), refused by its chain's
//! connection limit and waiting
//! for the filter's delay ([`Stage::Limited`]), held back by an injected delay
//! ([`Stage::Delayed`]), creating its upstream socket ([`Stage::Opening`]), connecting it
//! ([`Stage::Connecting`]), in a TLS handshake with the client (after accept, before any
//! upstream is picked) or with the backend (after its TCP connect: still part of the
//! connect, as in Envoy) ([`Stage::Handshaking`]), relaying ([`Stage::Relaying`]) or
//! closing ([`Stage::Closing`]).
//!
//! # TLS inspection
//!
//! On a listener with a TLS inspector the verdict waits: [`Event::Inspect`] moves an
//! accepted connection to [`Stage::Inspecting`] and asks the driver to read the client's
//! first bytes ([`Action::StartInspection`]). The driver reads and parses them itself and
//! feeds the verdict ([`Event::Accepted`]) once it has a chain, or
//! [`Event::InspectionFailed`] (the client left, a read failed, a refused ClientHello, the
//! deadline without `continue_on_listener_filters_timeout`), which closes the client. The
//! machine keeps the deadline (`listener_filters_timeout`): past it, it asks the driver to
//! stop reading ([`Action::AbandonInspection`]); the driver answers once its read is back.
//!
//! # TLS handshakes
//!
//! The driver runs a handshake's I/O itself ([`Action::StartHandshake`]) and reports its end
//! only once nothing of it is in flight any more ([`Event::Handshaken`]), so a failed
//! backend handshake can be retried on a fresh socket without old completions in the way.
//! The machine keeps the deadline: the chain's `transport_socket_connect_timeout` for the
//! client, what is left of the cluster's `connect_timeout` for the backend (Envoy's timer
//! covers the TCP connect and the handshake together). Past it, it asks the driver to give
//! the handshake up ([`Action::AbandonHandshake`]), which then ends as
//! [`HandshakeEnd::TimedOut`]. A client handshake that fails closes the client; a backend
//! one is a connect failure (retried while attempts are left).
//! What it holds of shared budgets is typed apart from the stage: its cluster's circuit
//! breaker as a [`Breaker`] (a pending request and a connection while connecting, only the
//! connection once connected: holding a pending request alone cannot be written down), and
//! its connection-limit and fault seats. What it knows of its upstream is an [`Upstream`]:
//! nothing yet, an endpoint being tried, or the endpoint it connected to and which side
//! ended the connection.
//!
//! # Guarantees
//!
//! - **Closed once, accounted once.** A connection reaches [`Stage::Closing`] once; from
//!   there [`Machine::settle`] emits [`Action::Finish`] exactly once, after every operation
//!   the driver started for it completed ([`Machine::started`] / [`Machine::completed`]) and its
//!   mirror is closed. Every seat it held (breaker pending request, breaker connection,
//!   connection limit, fault) is given back through [`Action::Release`] exactly once, at the
//!   transition that ends it or at the finish.
//! - **Operations are counted, not trusted.** A completion for a connection with nothing in
//!   flight is refused ([`Violation::OpUnderflow`]) instead of wrapping the count; the
//!   driver counts it as a stat.
//! - **No allocation, no I/O.** A machine is plain data reused in place in the driver's slab;
//!   an event appends at most [`Actions::CAPACITY`] actions to a fixed array.
//! - **The relay's guarantees hold** (exact bytes, half-close, reset propagation, bounded
//!   buffers; see [`crate::relay`]): the machine forwards relay completions unchanged and
//!   turns only the relay's `Reset` and `Close` into the connection's own close.
//!
//! # Room for what comes next
//!
//! A transport layer between socket and relay (TLS) is the [`Transport`] a connect completes
//! with; listener filters that read bytes first come before [`Event::Accepted`]; a kernel
//! that moves the bytes is another way to leave [`Stage::Relaying`]; exporting a connection
//! means exporting this plain-data machine with its sockets.

use crate::accesslog::ResponseFlags;
use crate::relay::{self, Relay, Side};

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stage {
    /// The slot is free.
    #[default]
    Free,
    /// Accepted; its verdict ([`Event::Accepted`]) comes next.
    Accepted,
    /// The listener's TLS inspector reads the client's first bytes; the verdict comes when
    /// it is done.
    Inspecting,
    /// Refused by its filter chain's connection limit: the client is closed at
    /// `close_at_ms` (the filter's `delay`).
    Limited {
        /// When the client is closed.
        close_at_ms: u64,
    },
    /// The fault filter holds the upstream connect back until `connect_at_ms`; nothing is
    /// read from the client meanwhile.
    Delayed {
        /// When the connect starts.
        connect_at_ms: u64,
    },
    /// Creating the upstream socket for an attempt.
    Opening,
    /// Connecting the upstream socket.
    Connecting,
    /// In a TLS handshake with `side`.
    Handshaking {
        /// The client (before the upstream is picked) or the backend (after its connect).
        side: Side,
    },
    /// Both sockets open: the relay runs.
    Relaying,
    /// The sockets are closing; the slot frees when nothing is in flight any more.
    Closing,
}

impl Stage {
    /// Open and not yet closing.
    pub fn is_live(self) -> bool {
        !matches!(self, Stage::Free | Stage::Closing)
    }

    /// An upstream socket exists (created and not yet closed by the machine).
    fn has_backend_socket(self) -> bool {
        matches!(
            self,
            Stage::Connecting
                | Stage::Relaying
                | Stage::Handshaking {
                    side: Side::Backend
                }
        )
    }
}

/// What a connection holds of its cluster's circuit breaker (Envoy's TCP pool): a pending
/// request and a connection while connecting, the connection alone once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Breaker {
    /// Nothing (not admitted yet, refused, or given back).
    #[default]
    Free,
    /// Admitted and connecting: holds one pending request and one connection.
    Pending,
    /// Connected: holds one connection.
    Connection,
}

/// A budget shared beyond the connection, held until given back with [`Action::Release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seat {
    /// One of the cluster's `max_pending_requests`.
    BreakerPending,
    /// One of the cluster's `max_connections`.
    BreakerConnection,
    /// One of the filter chain's connection-limit connections.
    ConnectionLimit,
    /// Counted in the fault filter's `active_faults`.
    Fault,
}

/// What the connection knows of its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upstream {
    /// No endpoint picked.
    #[default]
    None,
    /// An attempt to this endpoint (`None`: the original destination) is under way or
    /// failed.
    Tried(Option<u32>),
    /// Connected to this endpoint; `remote_close` once the backend ended the connection.
    Connected {
        /// The endpoint's index in its cluster (`None`: the original destination).
        endpoint: Option<u32>,
        /// The backend closed or reset the connection (`upstream_cx_destroy_remote`).
        remote_close: bool,
    },
}

impl Upstream {
    /// The endpoint picked last, if it is one of the cluster's.
    pub fn endpoint(self) -> Option<u32> {
        match self {
            Upstream::None => None,
            Upstream::Tried(e) | Upstream::Connected { endpoint: e, .. } => e,
        }
    }
}

/// Where the connection may go, decided at accept by the driver (filter chain match,
/// connection limit, route, the fault filter's draws).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Proxy it to a cluster.
    Proxy(Proxy),
    /// Refuse it: close the client, with a reset when `reset` (a proxy loop).
    Refuse {
        /// Response flags of the refusal.
        flags: u16,
        /// Reset instead of a clean close.
        reset: bool,
        /// `%CONNECTION_TERMINATION_DETAILS%`, or "-".
        details: &'static str,
        /// Holds a seat of the chain's connection limit (it passed the limit, then found no
        /// route).
        holds_limit: bool,
    },
    /// Refused by the chain's connection limit: close the client after `delay_ms`.
    Limited {
        /// The filter's delay.
        delay_ms: u64,
    },
}

/// A proxied connection's settings, from its filter chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proxy {
    /// `idle_timeout`, if any.
    pub idle_timeout_ms: Option<u64>,
    /// `max_connect_attempts` (at least 1).
    pub max_attempts: u32,
    /// Holds a seat of the chain's connection limit.
    pub holds_limit: bool,
    /// What the fault filter drew for it.
    pub faults: Faults,
    /// The listener's and the cluster's `per_connection_buffer_limit_bytes`.
    pub buffer_limits: relay::BufferLimits,
    /// Which sides speak TLS.
    pub tls: TlsPlan,
    /// Whether one side is an HTTP/2 connection's codec in the worker (HBONE).
    pub carrier: Carrier,
}

/// A connection whose one side is an HTTP/2 codec inside the driver rather than a socket
/// (HBONE): its streams are connections of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carrier {
    /// Two sockets.
    #[default]
    No,
    /// A terminating HTTP/2 connection: the client is its socket, the backend the server
    /// codec. Nothing upstream is admitted, picked or connected: once the client's
    /// handshake is done (and authorized), the relay starts.
    Server,
    /// A pooled HTTP/2 connection: the client is the client codec, the backend its socket
    /// to the picked endpoint. Its streams hold the cluster's circuit breaker, not it, so
    /// it is not admitted.
    Client,
}

/// Which sides of a connection speak TLS, and their handshake deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlsPlan {
    /// The client's side: TLS terminated by the filter chain.
    pub client: bool,
    /// The chain's RBAC reads the client's certificate: it is decided
    /// ([`Upstreams::authorize`]) once the client's handshake is done, before anything
    /// upstream is picked or opened.
    pub authorize_client: bool,
    /// `transport_socket_connect_timeout`: the client handshake's deadline after accept.
    pub client_timeout_ms: Option<u64>,
    /// The backend's side: TLS originated by the cluster.
    pub backend: bool,
    /// The cluster's `connect_timeout`, which the backend handshake shares with the TCP
    /// connect of its attempt.
    pub connect_timeout_ms: u64,
}

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// Established: the relay (or the upstream connect) goes on.
    Done,
    /// The peer failed it (protocol error, certificate refused, end of stream).
    Failed,
    /// Given up at its deadline ([`Action::AbandonHandshake`]).
    TimedOut,
    /// The proxy could not run it (no buffer to write from).
    Local,
}

/// The fault filter's draws that change a connection's life (throttling only paces
/// receives and stays with the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Some fault applies: the connection holds a [`Seat::Fault`].
    pub active: bool,
    /// Reset the client at accept.
    pub abort_at_accept: bool,
    /// Start the upstream connect this long after accept.
    pub delay_ms: Option<u64>,
}

/// Why the connection is ended from the proxy's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// The data plane drains (or a drained listener's deadline passed): reset both sides.
    Drain,
    /// The fault filter's abort fired: reset.
    Fault,
    /// No transport could be set up for the relay (splice mode without pipes): reset.
    NoTransport,
    /// Its chain's RBAC, under CONTINUOUS enforcement, denies it in a newly published FIB:
    /// closed (both sides, cleanly), with Envoy's RBAC details.
    Denied,
}

/// How a connect ended when it succeeded: whether the relay can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The relay can start.
    Ready,
    /// The driver could not set up what the relay needs (`splice` pipes): the connection is
    /// reset ([`Abort::NoTransport`]).
    Unavailable,
}

/// A completion or a decision, as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The connection was accepted with this verdict (after its inspection, if any).
    Accepted(Verdict),
    /// The listener's TLS inspector must read the client first, within `timeout_ms`.
    Inspect {
        /// `listener_filters_timeout`; `None`: no deadline.
        timeout_ms: Option<u64>,
    },
    /// The inspection ended without a chain: the client is closed.
    InspectionFailed,
    /// The fault delay is over: connect now.
    DelayOver,
    /// The upstream socket was created (and set up), or failed with errno.
    SocketCreated(Result<(), i32>),
    /// The upstream connect completed, or failed with errno (`ECANCELED`: its timeout).
    ConnectDone(Result<Transport, i32>),
    /// A relay completion (the driver has already counted its bytes).
    Relay(relay::Event),
    /// The timer tick: limit delay, drain deadline, idle timeout.
    Tick,
    /// The proxy ends the connection.
    Abort(Abort),
    /// The connection's listener was removed: close it at `deadline_ms` at the latest.
    DrainBy {
        /// When it is reset if still open.
        deadline_ms: u64,
    },
    /// The connection's mirror shadow closed for good.
    MirrorDone,
    /// A TLS handshake with `side` ended, and nothing of it is in flight any more.
    Handshaken {
        /// Which side.
        side: Side,
        /// How.
        end: HandshakeEnd,
    },
}

/// What the driver must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create the upstream socket for the endpoint picked last.
    OpenSocket,
    /// Connect the upstream socket.
    Connect,
    /// Close the upstream socket of a failed attempt (if the driver has one).
    CloseAttempt,
    /// A socket created after the connection stopped wanting it: close it.
    CloseStraySocket,
    /// A relay operation (`Recv`, `Send`, `ShutdownWrite`, `Recycle`, `Paused`, `Resumed`).
    Relay(relay::Action),
    /// Close the client socket only (no upstream socket is open), with a reset if asked.
    CloseClient {
        /// Reset (SO_LINGER 0) instead of a clean close.
        reset: bool,
    },
    /// Close both sockets, cancelling what is in flight on them; reset each if asked.
    /// `clean`: both directions ended, nothing is in flight on either socket.
    CloseBoth {
        /// Reset the client.
        reset_client: bool,
        /// Reset the backend.
        reset_backend: bool,
        /// Both directions finished cleanly.
        clean: bool,
    },
    /// The primary stopped: its mirror shadow finishes its queue, then closes.
    MirrorPrimaryClosed,
    /// Nothing is in flight but the mirror shadow is still open: close it (the driver
    /// answers with [`Event::MirrorDone`]).
    CloseMirror,
    /// Give a shared budget back.
    Release(Seat),
    /// Read the client's first bytes for the TLS inspector (answered by
    /// [`Event::Accepted`] or [`Event::InspectionFailed`]).
    StartInspection,
    /// The inspection is past its deadline: stop reading.
    AbandonInspection,
    /// Start a TLS handshake with `side` (answered by [`Event::Handshaken`]).
    StartHandshake(Side),
    /// The handshake with `side` is past its deadline: stop its I/O and report it
    /// ([`HandshakeEnd::TimedOut`]).
    AbandonHandshake(Side),
    /// Schedule [`Event::DelayOver`] at this time.
    ScheduleDelay {
        /// When.
        at_ms: u64,
    },
    /// Something to count or report.
    Note(Note),
    /// The connection is over: record it (stats, access log) and free its slot.
    Finish,
}

/// What the driver counts or reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// The upstream connected (`upstream_cx_active`, outlier success, least-request count).
    Connected {
        /// The endpoint (`None`: the original destination).
        endpoint: Option<u32>,
    },
    /// A connect attempt failed.
    ConnectFailed {
        /// The endpoint it was made to (`None`: the original destination).
        endpoint: Option<u32>,
        /// It timed out.
        timed_out: bool,
        /// The proxy's own failure (socket setup), not the host's: outlier detection does
        /// not hear of it.
        local: bool,
        /// It was the last attempt (`upstream_cx_connect_attempts_exceeded`, which Envoy
        /// counts with one attempt too).
        attempts_exceeded: bool,
    },
    /// Retrying the connect.
    Retrying,
    /// The circuit breaker refused the connection (`UO`; the driver counted its overflow).
    Overflow,
    /// No endpoint to connect to (`upstream_cx_none_healthy`).
    NoHealthyUpstream,
    /// A side reset the relay (`upstream_cx_reset`).
    Reset {
        /// The failing side.
        failed: Side,
        /// Its errno.
        errno: i32,
    },
    /// Closed by the idle timeout (`idle_timeout`).
    IdleTimeout,
    /// Closed by draining (`downstream_cx_drain_close`).
    DrainClose,
    /// A TLS handshake with `side` failed or timed out.
    HandshakeFailed {
        /// Which side.
        side: Side,
        /// It timed out.
        timed_out: bool,
    },
}

/// A broken invariant, refused rather than absorbed (the driver counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A completion arrived for a connection with no operation in flight.
    OpUnderflow,
    /// An event for a free slot.
    FreeSlot,
    /// A second verdict for a connection already decided.
    Decided,
}

/// The actions of one event, without allocation: the relay's six plus the connection's
/// own (the simulator would stop at an overflow).
pub type Actions = crate::action_list::ActionList<Action, 16>;

/// Why the breaker refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

/// What the picked upstream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The cluster's endpoint at this index.
    Endpoint(u32),
    /// The client's original destination (`ORIGINAL_DST` cluster).
    OriginalDst,
}

/// The two questions only the driver can answer, both about shared state: the cluster's
/// circuit breaker (across workers) and its balancer.
pub trait Upstreams {
    /// Takes a pending request and a connection of the circuit breaker, or neither.
    fn admit(&mut self) -> Result<(), Overflow>;
    /// An endpoint to connect to other than `exclude`; `None` when there is none.
    fn pick(&mut self, exclude: Option<u32>) -> Option<Target>;
    /// The chain's RBAC decided with the client's certificate, once its handshake is done
    /// (asked only of a connection accepted with [`TlsPlan::authorize_client`]):
    /// false when it denies the connection (the driver keeps which policy did).
    fn authorize(&mut self) -> bool {
        true
    }
}

/// Connect attempts: made so far and allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Attempts {
    made: u32,
    max: u32,
}

impl Attempts {
    fn may_retry(self) -> bool {
        self.made < self.max
    }
}

/// Deadlines and activity, in the driver's milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Clock {
    idle_timeout_ms: Option<u64>,
    drain_deadline_ms: Option<u64>,
    last_activity_ms: u64,
    /// When the current connect attempt began (its socket was asked for).
    attempt_started_ms: u64,
    /// The handshake or inspection under way must be done by then.
    handshake_deadline_ms: Option<u64>,
    /// The driver was asked to give the handshake (or inspection) up.
    handshake_abandoned: bool,
}

/// Shared budgets held: one bit per [`Seat`] other than the breaker's (typed in
/// [`Breaker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seats {
    limit: bool,
    fault: bool,
}

/// The mirror shadow as the connection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mirror {
    /// Not mirrored, or the shadow closed.
    #[default]
    Off,
    /// A shadow is open: the slot frees only after it closes.
    Live,
}

/// One connection's life. Plain data: reused in place, exportable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Machine {
    stage: Stage,
    breaker: Breaker,
    seats: Seats,
    upstream: Upstream,
    attempts: Attempts,
    clock: Clock,
    mirror: Mirror,
    /// Operations the driver has in flight for this connection.
    inflight: u32,
    flags: ResponseFlags,
    details: &'static str,
    relay: Relay,
    tls: TlsPlan,
    /// The fault filter's connect delay, held while the client handshake runs.
    delay_ms: Option<u64>,
    carrier: Carrier,
}

impl Machine {
    /// A machine for a connection accepted at `now_ms` (still undecided: feed
    /// [`Event::Accepted`]).
    pub fn accepted_at(now_ms: u64) -> Machine {
        Machine {
            stage: Stage::Accepted,
            clock: Clock {
                last_activity_ms: now_ms,
                ..Clock::default()
            },
            details: "-",
            ..Machine::default()
        }
    }

    /// Where it stands.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Open and not yet closing.
    pub fn is_live(&self) -> bool {
        self.stage.is_live()
    }

    /// Its upstream.
    pub fn upstream(&self) -> Upstream {
        self.upstream
    }

    /// What it holds of the circuit breaker.
    pub fn breaker(&self) -> Breaker {
        self.breaker
    }

    /// Its response flags so far.
    pub fn flags(&self) -> ResponseFlags {
        self.flags
    }

    /// `%CONNECTION_TERMINATION_DETAILS%`.
    pub fn details(&self) -> &'static str {
        self.details
    }

    /// The relay (byte counts, starvation).
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Operations in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// Closing with nothing in flight: [`Machine::settle`] has something to do.
    pub fn is_settling(&self) -> bool {
        self.stage == Stage::Closing && self.inflight == 0
    }

    /// The fault delay is holding the connect back (not idleness).
    pub fn is_delayed(&self) -> bool {
        matches!(self.stage, Stage::Delayed { .. })
    }

    /// The driver started `n` operations for this connection.
    pub fn started(&mut self, n: u32) {
        self.inflight += n;
    }

    /// The driver started a mirror shadow for this connection.
    pub fn mirror_started(&mut self) {
        self.mirror = Mirror::Live;
    }

    /// Sets a response flag the driver decided on (e.g. an injected delay, counted by the
    /// driver when drawing).
    pub fn flag(&mut self, flag: u16) {
        self.flags.set(flag);
    }

    /// Feeds one event at `now_ms`; appends what to do to `out`. After carrying `out` out,
    /// the driver calls [`Machine::settle`].
    pub fn on_event(
        &mut self,
        now_ms: u64,
        event: Event,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) -> Result<(), Violation> {
        if self.stage == Stage::Free {
            return Err(Violation::FreeSlot);
        }
        match event {
            Event::Accepted(verdict)
                if matches!(self.stage, Stage::Accepted | Stage::Inspecting) =>
            {
                self.clock.handshake_deadline_ms = None;
                self.on_accepted(now_ms, verdict, upstreams, out)
            }
            Event::Accepted(_) => return Err(Violation::Decided),
            Event::Inspect { timeout_ms } if self.stage == Stage::Accepted => {
                self.stage = Stage::Inspecting;
                self.clock.handshake_deadline_ms = timeout_ms.map(|t| now_ms + t);
                self.clock.handshake_abandoned = false;
                out.push(Action::StartInspection);
            }
            Event::Inspect { .. } => return Err(Violation::Decided),
            Event::InspectionFailed => {
                if self.stage == Stage::Inspecting {
                    self.close_client(false, out);
                }
            }
            Event::DelayOver => self.on_delay_over(now_ms, upstreams, out),
            Event::SocketCreated(result) => self.on_socket(now_ms, result, upstreams, out),
            Event::ConnectDone(result) => self.on_connect(now_ms, result, upstreams, out),
            Event::Relay(e) => self.on_relay(now_ms, e, out),
            Event::Tick => self.on_tick(now_ms, out),
            Event::Abort(why) => self.abort(why, out),
            Event::DrainBy { deadline_ms } => self.drain_by(deadline_ms),
            Event::MirrorDone => self.mirror = Mirror::Off,
            Event::Handshaken { side, end } => {
                self.on_handshaken(now_ms, side, end, upstreams, out)
            }
        }
        Ok(())
    }

    /// Once the driver carried out the last event's actions: a closing connection with
    /// nothing in flight closes its mirror, then gives back what it holds and finishes.
    pub fn settle(&mut self, out: &mut Actions) {
        if self.stage != Stage::Closing || self.inflight > 0 {
            return;
        }
        if self.mirror == Mirror::Live {
            out.push(Action::CloseMirror);
            return;
        }
        self.release_breaker(out);
        if std::mem::take(&mut self.seats.limit) {
            out.push(Action::Release(Seat::ConnectionLimit));
        }
        if std::mem::take(&mut self.seats.fault) {
            out.push(Action::Release(Seat::Fault));
        }
        self.stage = Stage::Free;
        out.push(Action::Finish);
    }

    /// One operation the driver started for this connection completed. The driver calls
    /// this before feeding the completion's own event, and settles after it.
    pub fn completed(&mut self) -> Result<(), Violation> {
        if self.stage == Stage::Free {
            return Err(Violation::FreeSlot);
        }
        self.inflight = self.inflight.checked_sub(1).ok_or(Violation::OpUnderflow)?;
        Ok(())
    }

    // ---- accept ----

    fn on_accepted(
        &mut self,
        now_ms: u64,
        verdict: Verdict,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        match verdict {
            Verdict::Refuse {
                flags,
                reset,
                details,
                holds_limit,
            } => {
                self.seats.limit = holds_limit;
                self.flags.set(flags);
                self.details = details;
                self.close_client(reset, out);
            }
            // Envoy logs a refused connection with no flag and no termination details.
            Verdict::Limited { delay_ms: 0 } => self.close_client(false, out),
            Verdict::Limited { delay_ms } => {
                self.stage = Stage::Limited {
                    close_at_ms: now_ms + delay_ms,
                };
            }
            Verdict::Proxy(p) => self.on_proxied(now_ms, p, upstreams, out),
        }
    }

    fn on_proxied(
        &mut self,
        now_ms: u64,
        p: Proxy,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        self.clock.idle_timeout_ms = p.idle_timeout_ms;
        self.attempts.max = p.max_attempts.max(1);
        self.relay = Relay::with_limits(p.buffer_limits);
        self.seats.limit = p.holds_limit;
        self.seats.fault = p.faults.active;
        self.tls = p.tls;
        self.carrier = p.carrier;
        self.delay_ms = p.faults.delay_ms;
        if p.faults.abort_at_accept {
            self.abort(Abort::Fault, out);
            return;
        }
        if p.tls.client {
            // The client's handshake first: nothing upstream is picked or opened for a
            // client that cannot complete one (and its identity is known before routing).
            let deadline = p.tls.client_timeout_ms.map(|t| now_ms + t);
            self.start_handshake(Side::Client, deadline, out);
            return;
        }
        self.after_accept(now_ms, upstreams, out);
    }

    /// The connection is accepted (and its client handshake done): the fault delay, then
    /// the first connect attempt.
    fn after_accept(&mut self, now_ms: u64, upstreams: &mut dyn Upstreams, out: &mut Actions) {
        if self.carrier == Carrier::Server {
            // Its backend is the codec: there from the start.
            self.connected(now_ms, Transport::Ready, out);
            return;
        }
        if let Some(delay_ms) = self.delay_ms {
            self.flags.set(ResponseFlags::DELAY_INJECTED);
            let at_ms = now_ms + delay_ms;
            self.stage = Stage::Delayed {
                connect_at_ms: at_ms,
            };
            out.push(Action::ScheduleDelay { at_ms });
            return;
        }
        self.next_attempt(now_ms, None, upstreams, out);
    }

    // ---- TLS handshakes ----

    fn start_handshake(&mut self, side: Side, deadline_ms: Option<u64>, out: &mut Actions) {
        self.stage = Stage::Handshaking { side };
        self.clock.handshake_deadline_ms = deadline_ms;
        self.clock.handshake_abandoned = false;
        out.push(Action::StartHandshake(side));
    }

    fn on_handshaken(
        &mut self,
        now_ms: u64,
        side: Side,
        end: HandshakeEnd,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        if self.stage != (Stage::Handshaking { side }) {
            return;
        }
        self.clock.handshake_deadline_ms = None;
        if end != HandshakeEnd::Done {
            out.push(Action::Note(Note::HandshakeFailed {
                side,
                timed_out: end == HandshakeEnd::TimedOut,
            }));
        }
        match (side, end) {
            (Side::Client, HandshakeEnd::Done) => {
                self.clock.last_activity_ms = now_ms;
                if self.tls.authorize_client && !upstreams.authorize() {
                    // Envoy's RBAC denial: no flag, its details (the driver names the
                    // policy), the client closed at once.
                    self.details = crate::rbac::DENIED_DETAILS;
                    self.close_client(false, out);
                    return;
                }
                self.after_accept(now_ms, upstreams, out);
            }
            (Side::Client, _) => self.close_client(false, out),
            (Side::Backend, HandshakeEnd::Done) => self.connected(now_ms, Transport::Ready, out),
            (Side::Backend, end) => {
                let errno = match end {
                    HandshakeEnd::TimedOut => libc::ETIMEDOUT,
                    _ => libc::EPROTO,
                };
                self.connect_failed(now_ms, errno, end == HandshakeEnd::Local, upstreams, out);
            }
        }
    }

    fn on_delay_over(&mut self, now_ms: u64, upstreams: &mut dyn Upstreams, out: &mut Actions) {
        if !self.is_delayed() {
            return;
        }
        // The delay is not idleness: the idle timer starts again now.
        self.clock.last_activity_ms = now_ms;
        self.next_attempt(now_ms, None, upstreams, out);
    }

    // ---- connect attempts ----

    /// Admission (once per connection), then an endpoint other than `exclude`, then its
    /// socket; or the client is closed.
    fn next_attempt(
        &mut self,
        now_ms: u64,
        exclude: Option<u32>,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        if self.breaker == Breaker::Free && self.carrier != Carrier::Client {
            if upstreams.admit().is_err() {
                out.push(Action::Note(Note::Overflow));
                self.flags.set(ResponseFlags::UPSTREAM_OVERFLOW);
                self.close_client(false, out);
                return;
            }
            self.breaker = Breaker::Pending;
        }
        let Some(target) = upstreams.pick(exclude) else {
            out.push(Action::Note(Note::NoHealthyUpstream));
            self.flags.set(ResponseFlags::NO_HEALTHY_UPSTREAM);
            self.close_client(false, out);
            return;
        };
        self.upstream = Upstream::Tried(match target {
            Target::Endpoint(e) => Some(e),
            Target::OriginalDst => None,
        });
        self.attempts.made += 1;
        self.clock.attempt_started_ms = now_ms;
        self.stage = Stage::Opening;
        out.push(Action::OpenSocket);
    }

    fn on_socket(
        &mut self,
        now_ms: u64,
        result: Result<(), i32>,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        if self.stage != Stage::Opening {
            // Ended while the socket was being created.
            if result.is_ok() {
                out.push(Action::CloseStraySocket);
            }
            return;
        }
        match result {
            Ok(()) => {
                self.stage = Stage::Connecting;
                out.push(Action::Connect);
            }
            Err(errno) => self.connect_failed(now_ms, errno, true, upstreams, out),
        }
    }

    /// The upstream is connected (its handshake done, with TLS): the relay starts.
    fn connected(&mut self, now_ms: u64, transport: Transport, out: &mut Actions) {
        // Connected: the pending request is over, the connection stays held.
        if self.breaker == Breaker::Pending {
            out.push(Action::Release(Seat::BreakerPending));
            self.breaker = Breaker::Connection;
        }
        let endpoint = self.upstream.endpoint();
        self.upstream = Upstream::Connected {
            endpoint,
            remote_close: false,
        };
        self.stage = Stage::Relaying;
        self.clock.last_activity_ms = now_ms;
        out.push(Action::Note(Note::Connected { endpoint }));
        match transport {
            Transport::Ready => {
                let mut relayed = relay::Actions::default();
                self.relay.start(&mut relayed);
                self.relay_actions(&relayed, out);
            }
            Transport::Unavailable => self.abort(Abort::NoTransport, out),
        }
    }

    fn on_connect(
        &mut self,
        now_ms: u64,
        result: Result<Transport, i32>,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        if self.stage != Stage::Connecting {
            return;
        }
        let transport = match result {
            Ok(t) => t,
            Err(errno) => return self.connect_failed(now_ms, errno, false, upstreams, out),
        };
        if self.tls.backend && transport == Transport::Ready {
            // Envoy's connect timer runs until the handshake is done.
            let deadline = self.clock.attempt_started_ms + self.tls.connect_timeout_ms;
            self.start_handshake(Side::Backend, Some(deadline), out);
            return;
        }
        self.connected(now_ms, transport, out);
    }

    /// An attempt failed: retry on another endpoint while attempts are left, else close the
    /// client with the failure's flags. `local`: the proxy's own failure before anything
    /// was sent (socket creation or setup).
    fn connect_failed(
        &mut self,
        now_ms: u64,
        errno: i32,
        local: bool,
        upstreams: &mut dyn Upstreams,
        out: &mut Actions,
    ) {
        let timed_out = errno == libc::ECANCELED || errno == libc::ETIMEDOUT;
        let retry = self.attempts.may_retry();
        out.push(Action::CloseAttempt);
        out.push(Action::Note(Note::ConnectFailed {
            endpoint: self.upstream.endpoint(),
            timed_out,
            local,
            attempts_exceeded: !retry,
        }));
        if retry {
            out.push(Action::Note(Note::Retrying));
            self.next_attempt(now_ms, self.upstream.endpoint(), upstreams, out);
            return;
        }
        // Envoy's tcp_proxy: `UF,URX` once the attempts are used up, one attempt or several,
        // refused or timed out alike (`UT` is an HTTP request timeout; verified with 1.40).
        self.flags.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        self.flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        self.close_client(false, out);
    }

    // ---- relay ----

    fn on_relay(&mut self, now_ms: u64, event: relay::Event, out: &mut Actions) {
        let moved = matches!(
            event,
            relay::Event::Recv(_, relay::Received::Data { .. }) | relay::Event::Sent(_, Ok(_))
        );
        if moved {
            self.clock.last_activity_ms = now_ms;
        }
        let mut relayed = relay::Actions::default();
        self.relay.on_event(event, &mut relayed);
        self.relay_actions(&relayed, out);
    }

    /// Passes the relay's actions on; its reset and clean close end the connection.
    fn relay_actions(&mut self, relayed: &relay::Actions, out: &mut Actions) {
        for action in relayed.iter() {
            match action {
                relay::Action::Reset { failed, errno } => self.relay_reset(failed, errno, out),
                relay::Action::Close => {
                    self.mark_remote_close();
                    self.close_both(false, false, true, out);
                }
                other => out.push(Action::Relay(other)),
            }
        }
    }

    fn relay_reset(&mut self, failed: Side, errno: i32, out: &mut Actions) {
        if self.stage != Stage::Relaying {
            return;
        }
        out.push(Action::Note(Note::Reset { failed, errno }));
        self.flags.set(match failed {
            Side::Client => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            Side::Backend => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
        });
        if failed == Side::Backend {
            self.mark_remote_close();
        }
        let reset_client = failed.other() == Side::Client;
        self.close_both(reset_client, !reset_client, false, out);
    }

    fn mark_remote_close(&mut self) {
        if let Upstream::Connected { remote_close, .. } = &mut self.upstream {
            *remote_close = true;
        }
    }

    // ---- timers and aborts ----

    fn on_tick(&mut self, now_ms: u64, out: &mut Actions) {
        if let Stage::Limited { close_at_ms } = self.stage {
            if now_ms >= close_at_ms {
                self.close_client(false, out);
            }
            return;
        }
        if !self.is_live() {
            return;
        }
        if self.clock.drain_deadline_ms.is_some_and(|d| now_ms >= d) {
            self.abort(Abort::Drain, out);
            return;
        }
        let late = self
            .clock
            .handshake_deadline_ms
            .is_some_and(|d| now_ms >= d);
        if late && !self.clock.handshake_abandoned {
            match self.stage {
                Stage::Handshaking { side } => {
                    self.clock.handshake_abandoned = true;
                    out.push(Action::AbandonHandshake(side));
                }
                Stage::Inspecting => {
                    self.clock.handshake_abandoned = true;
                    out.push(Action::AbandonInspection);
                }
                _ => {}
            }
        }
        let idle = !self.is_delayed()
            && self
                .clock
                .idle_timeout_ms
                .is_some_and(|t| now_ms.saturating_sub(self.clock.last_activity_ms) >= t);
        if idle {
            out.push(Action::Note(Note::IdleTimeout));
            // Envoy's tcp_proxy logs an idle timeout with no flag and no details (`-`).
            self.end(0, "-", false, out);
        }
    }

    fn drain_by(&mut self, deadline_ms: u64) {
        if self.is_live() {
            self.clock.drain_deadline_ms = Some(deadline_ms);
        }
    }

    fn abort(&mut self, why: Abort, out: &mut Actions) {
        if !self.is_live() {
            return;
        }
        match why {
            Abort::Drain => {
                out.push(Action::Note(Note::DrainClose));
                self.end(ResponseFlags::DRAIN_CLOSE, "drain_timeout", true, out);
            }
            Abort::Fault => self.end(ResponseFlags::FAULT_INJECTED, "fault_abort", true, out),
            Abort::NoTransport => self.end(
                ResponseFlags::UPSTREAM_OVERFLOW,
                "splice_pipe_unavailable",
                true,
                out,
            ),
            Abort::Denied => self.end(0, crate::rbac::DENIED_DETAILS, false, out),
        }
    }

    /// Ends a live connection from the proxy's side, with `flag` and `details`; `reset`
    /// resets what is open.
    fn end(&mut self, flag: u16, details: &'static str, reset: bool, out: &mut Actions) {
        self.flags.set(flag);
        self.details = details;
        if self.stage.has_backend_socket() {
            self.close_both(reset, reset, false, out);
        } else {
            self.close_client(reset, out);
        }
    }

    // ---- closing ----

    /// Closes the client when no upstream socket is open.
    fn close_client(&mut self, reset: bool, out: &mut Actions) {
        if self.stage == Stage::Closing {
            return;
        }
        self.stage = Stage::Closing;
        out.push(Action::CloseClient { reset });
        self.primary_closed(out);
    }

    /// Stops the relay and closes both sockets.
    fn close_both(
        &mut self,
        reset_client: bool,
        reset_backend: bool,
        clean: bool,
        out: &mut Actions,
    ) {
        if self.stage == Stage::Closing {
            return;
        }
        self.stage = Stage::Closing;
        let mut released = relay::Actions::default();
        self.relay.abort(&mut released);
        for action in released.iter() {
            out.push(Action::Relay(action));
        }
        out.push(Action::CloseBoth {
            reset_client,
            reset_backend,
            clean,
        });
        self.primary_closed(out);
    }

    fn primary_closed(&mut self, out: &mut Actions) {
        if self.mirror == Mirror::Live {
            out.push(Action::MirrorPrimaryClosed);
        }
    }

    fn release_breaker(&mut self, out: &mut Actions) {
        match std::mem::take(&mut self.breaker) {
            Breaker::Free => {}
            Breaker::Pending => {
                out.push(Action::Release(Seat::BreakerPending));
                out.push(Action::Release(Seat::BreakerConnection));
            }
            Breaker::Connection => out.push(Action::Release(Seat::BreakerConnection)),
        }
    }
}
