//! One slot of the connection slab.

use crate::accesslog::ResponseFlags;
use crate::fib::ClusterId;
use crate::relay::{BufId, Relay, Side};
use crate::sys::BufClass;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// No descriptor.
pub(crate) const NO_FD: RawFd = -1;
/// The connection matched no filter chain (the default chain is
/// [`crate::fib::DEFAULT_CHAIN`]).
pub(crate) const CHAIN_NONE: u32 = u32::MAX - 1;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ConnState {
    /// The slot is free.
    #[default]
    Free,
    /// Creating the backend socket or connecting it.
    Connecting,
    /// Both sockets open, the relay runs.
    Relaying,
    /// Sockets are being closed; the slot frees when the last completion arrives.
    Closing,
}

/// Per-connection state. Plain data, reused in place: no allocation per connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub nonce: u32,
    pub state: ConnState,
    pub client: RawFd,
    pub backend: RawFd,
    /// Operations in flight for this connection.
    pub inflight: u32,
    /// Index of the worker generation (FIB snapshot) this connection was decided under.
    pub generation: u32,
    /// Position in the worker's list of occupied slots.
    pub occupied_index: u32,
    /// The worker's listener slot it was accepted on.
    pub listener_slot: u32,
    /// Index of its listener in its generation's FIB.
    pub fib_listener: u32,
    /// Index of its filter chain (`Listener::chain`), or [`CHAIN_NONE`].
    pub chain: u32,
    pub cluster: Option<ClusterId>,
    pub endpoint: Option<u32>,
    /// The hash policy's key, for hashing balancers (kept for retries).
    pub hash: Option<u64>,
    /// Holds one of its cluster's circuit-breaker connections (until it closes).
    pub holds_cx: bool,
    /// Holds one of its cluster's pending requests (until connected or closed).
    pub holds_pending: bool,
    /// Counted in its chain's connection limit (until it closes).
    pub holds_limit: bool,
    /// Refused by the connection limit: closed at this time (its `delay`).
    pub limit_close_at_ms: Option<u64>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub connected: bool,
    pub closed_by_backend: bool,
    pub idle_timeout_ms: Option<u64>,
    pub drain_deadline_ms: Option<u64>,
    pub start_ms: u64,
    pub start_unix_ms: u64,
    pub last_activity_ms: u64,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub relay: Relay,
    /// The buffer each direction is sending from, if any.
    pub sending: [Option<BufId>; 2],
    /// Per direction: the pool its armed receive draws from.
    pub recv_class: [BufClass; 2],
    /// Per direction: whether its next receive should use a large buffer.
    pub large_receives: [bool; 2],
    /// Splice mode: the pipe of each direction ([`super::pipes::NO_PIPE`] when none).
    pub pipes: [BufId; 2],
    pub flags: ResponseFlags,
    pub termination_details: &'static str,
    /// What the fault filter drew for this connection.
    pub faults: Faults,
}

/// The fault filter's state of one connection (all zero: no fault).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// A fault applies: counted in `active_faults` until the connection closes.
    pub active: bool,
    /// The delayed upstream connect starts then.
    pub connect_at_ms: Option<u64>,
    /// Client bytes still allowed before the reset.
    pub abort_after: Option<u64>,
    /// Throttle rate by direction, bytes per second (0: none).
    pub rate_bps: [u64; 2],
    /// A throttled direction may receive again from then (µs on the worker's clock).
    pub recv_ready_at_us: [u64; 2],
    /// A throttled direction's receive waits for `recv_ready_at_us`.
    pub recv_deferred: [bool; 2],
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            nonce: 0,
            state: ConnState::Free,
            client: NO_FD,
            backend: NO_FD,
            inflight: 0,
            generation: 0,
            listener_slot: 0,
            occupied_index: 0,
            fib_listener: 0,
            chain: CHAIN_NONE,
            cluster: None,
            endpoint: None,
            hash: None,
            holds_cx: false,
            holds_pending: false,
            holds_limit: false,
            limit_close_at_ms: None,
            attempts: 0,
            max_attempts: 1,
            connected: false,
            closed_by_backend: false,
            idle_timeout_ms: None,
            drain_deadline_ms: None,
            start_ms: 0,
            start_unix_ms: 0,
            last_activity_ms: 0,
            local: None,
            remote: None,
            upstream: None,
            relay: Relay::new(),
            sending: [None; 2],
            recv_class: [BufClass::Small; 2],
            large_receives: [false; 2],
            pipes: [super::pipes::NO_PIPE; 2],
            flags: ResponseFlags(0),
            termination_details: "-",
            faults: Faults::default(),
        }
    }
}

impl Conn {
    /// Reinitializes a free slot for a new client connection.
    pub fn reset_for(&mut self, nonce: u32, client: RawFd, generation: u32, listener_slot: u32) {
        *self = Conn {
            nonce,
            client,
            generation,
            listener_slot,
            state: ConnState::Connecting,
            ..Conn::default()
        };
    }

    /// Open and not yet closing.
    pub fn is_live(&self) -> bool {
        matches!(self.state, ConnState::Connecting | ConnState::Relaying)
    }

    /// The descriptor of `side`.
    pub fn fd(&self, side: Side) -> RawFd {
        match side {
            Side::Client => self.client,
            Side::Backend => self.backend,
        }
    }

    /// The descriptor of `side`, mutably.
    pub fn fd_mut(&mut self, side: Side) -> &mut RawFd {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }
}
