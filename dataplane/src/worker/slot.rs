//! One slot of the connection slab.

use crate::conn::Machine;
use crate::fib::ClusterId;
use crate::relay::Side;
use crate::sys::BufClass;
use crate::sys::RingBuf;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// No descriptor.
pub(crate) const NO_FD: RawFd = -1;
/// The connection matched no filter chain (the default chain is
/// [`crate::fib::DEFAULT_CHAIN`]).
pub(crate) const CHAIN_NONE: u32 = u32::MAX - 1;

/// One slot of the slab: the connection's machine ([`crate::conn::Machine`]: its stage,
/// holdings, timers and relay) and what only the io_uring driver keeps beside it (sockets,
/// pipes, buffers in sends, the FIB coordinates of its decisions, the fault filter's pacing
/// and the mirror's shadow). Plain data, reused in place: no allocation per connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub nonce: u32,
    pub machine: Machine,
    pub client: RawFd,
    pub backend: RawFd,
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
    /// The hash policy's key, for hashing balancers (kept for retries).
    pub hash: Option<u64>,
    pub start_ms: u64,
    pub start_unix_ms: u64,
    /// The addresses the connection is known by: the socket's, or those a PROXY header
    /// declared.
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The peer the socket sees, when a PROXY header declared another source.
    pub direct_remote: Option<SocketAddr>,
    /// Counted in its listener's `downstream_cx_total` and `_active` (so counted down when
    /// it closes).
    pub listener_counted: bool,
    pub upstream: Option<SocketAddr>,
    /// The buffer each direction is sending from, if any.
    pub sending: [Option<RingBuf>; 2],
    /// Per direction: the pool its armed receive draws from.
    pub recv_class: [BufClass; 2],
    /// Per direction: whether its next receive should use a large buffer.
    pub large_receives: [bool; 2],
    /// Per direction: bytes received and not yet sent (what the direction adds to the
    /// `*_tx_bytes_buffered` gauges).
    pub buffered: [u32; 2],
    /// Splice mode: the pipe of each direction ([`super::pipes::NO_PIPE`] when none).
    pub pipes: [super::pipes::BufId; 2],
    /// Splice mode: bytes of each direction's send in flight (re-issued as they are when the
    /// splice finds the sink full, `EAGAIN`).
    pub splice_send_len: [u32; 2],
    /// Splice mode: a direction whose receive found its pipe full (`EAGAIN`) while a send
    /// still drains it; the receive starts again when that send completes.
    pub recv_parked: [bool; 2],
    /// The fault filter's pacing of this connection.
    pub faults: Faults,
    /// The mirror filter's shadow connection.
    pub shadow: Shadow,
    /// TLS on each side (by [`Side`]: client, backend), from its handshake on.
    pub tls: [Option<Box<super::tls_io::TlsSide>>; 2],
    /// The TLS inspector's reading of the client's first bytes.
    pub inspect: Inspect,
    /// The server name the TLS inspector read (`%REQUESTED_SERVER_NAME%`), allocated only
    /// for a connection that sent one.
    pub server_name: Option<Box<str>>,
    /// The RBAC policy that denied it (its log name; `None` with the denial: no policy).
    pub denied_by: Option<std::sync::Arc<str>>,
    /// Its chain's RBAC waits for the client's certificate: decided after the handshake.
    pub rbac_late: bool,
    /// Its TLS inspector found a ClientHello (the transport protocol its chain matched).
    pub tls_detected: bool,
    /// The seat its chain's per-source limit gave it (given back when the slot frees).
    pub source_seat: crate::source_limit::SourceSeat,
    /// The downstream PROXY header's TLVs its listener passes through (encoded), allocated
    /// only for a header that had some.
    pub passed_tlvs: Option<Box<[u8]>>,
    /// HBONE: the HTTP/2 connection this slot carries, or the stream it is (allocated only
    /// for those).
    pub hbone: Option<Box<super::hbone_io::Hbone>>,
}

/// The state of the listener filters that read one connection's first bytes (the PROXY
/// protocol's, the TLS inspector; all clear without them).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Inspect {
    /// The bytes read so far, from the stream's first (one buffer, `len` bytes): after the
    /// inspection, the chain's first bytes (fed to its TLS session, or its relay's first
    /// receive).
    pub held: Option<(RingBuf, u32)>,
    /// A receive (or the no-op standing for one) is in flight.
    pub reading: bool,
    /// The machine gave the inspection up at its deadline.
    pub abandoned: bool,
    /// The last receive found the buffer pool dry: the next tick receives again.
    pub starved: bool,
    /// The PROXY protocol filter is done (its header read and removed, or none there).
    pub proxy_done: bool,
    /// The upstream PROXY header being sent (its buffer is `sending` upstream): its length
    /// and the bytes of it sent so far.
    pub upstream_header_len: u16,
    pub upstream_header_sent: u16,
}

/// Copy chunks a shadow may have queued at once.
pub(crate) const SHADOW_QUEUE: usize = 16;

/// Where a shadow connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ShadowState {
    /// Not mirrored.
    #[default]
    Off,
    Connecting,
    Open,
    /// Closed (given up, failed, or done); completions may still arrive.
    Closed,
}

/// A mirrored connection's shadow: its socket and the copies queued for it, in order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shadow {
    pub state: ShadowState,
    pub fd: RawFd,
    pub address: Option<SocketAddr>,
    pub timeout_ms: u64,
    pub max_bytes: u32,
    /// Copy chunks and their lengths, oldest at `head`.
    queue: [(u16, u32); SHADOW_QUEUE],
    head: u8,
    pub count: u8,
    pub queued_bytes: u32,
    /// Bytes of the head chunk already sent.
    pub sent: u32,
    pub sending: bool,
    pub reading: bool,
    /// The client's stream ended: shut the shadow's write side after the queue.
    pub eof: bool,
    pub shut: bool,
    /// The shadow closed its side (our discard read saw end of stream).
    pub peer_closed: bool,
    /// The primary closed: the shadow must finish by then.
    pub drain_deadline_ms: Option<u64>,
}

impl Default for Shadow {
    fn default() -> Self {
        Shadow {
            state: ShadowState::Off,
            fd: NO_FD,
            address: None,
            timeout_ms: 0,
            max_bytes: 0,
            queue: [(0, 0); SHADOW_QUEUE],
            head: 0,
            count: 0,
            queued_bytes: 0,
            sent: 0,
            sending: false,
            reading: false,
            eof: false,
            shut: false,
            peer_closed: false,
            drain_deadline_ms: None,
        }
    }
}

impl Shadow {
    /// A shadow about to connect to `address`.
    pub fn connecting(address: SocketAddr, timeout_ms: u64, max_bytes: u32) -> Self {
        Shadow {
            state: ShadowState::Connecting,
            address: Some(address),
            timeout_ms,
            max_bytes,
            ..Shadow::default()
        }
    }

    /// Queues copy chunk `copy` holding `len` bytes (the caller checked there is room).
    pub fn push(&mut self, copy: u16, len: u32) {
        debug_assert!((self.count as usize) < SHADOW_QUEUE);
        let i = (self.head as usize + self.count as usize) % SHADOW_QUEUE;
        self.queue[i] = (copy, len);
        self.count += 1;
        self.queued_bytes += len;
    }

    /// The oldest queued chunk and its length.
    pub fn head(&self) -> Option<(u16, u32)> {
        (self.count > 0).then(|| self.queue[self.head as usize])
    }

    /// Removes the oldest chunk (fully sent).
    pub fn pop(&mut self) {
        if let Some((_, len)) = self.head() {
            self.head = ((self.head as usize + 1) % SHADOW_QUEUE) as u8;
            self.count -= 1;
            self.queued_bytes -= len;
            self.sent = 0;
        }
    }

    /// Removes and returns the newest chunk (when giving the shadow up).
    pub fn pop_back(&mut self) -> u16 {
        debug_assert!(self.count > 0);
        self.count -= 1;
        let i = (self.head as usize + self.count as usize) % SHADOW_QUEUE;
        self.queued_bytes -= self.queue[i].1;
        self.queue[i].0
    }
}

/// The fault filter's state of one connection (all zero: no fault).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
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
            machine: Machine::default(),
            client: NO_FD,
            backend: NO_FD,
            generation: 0,
            listener_slot: 0,
            occupied_index: 0,
            fib_listener: 0,
            chain: CHAIN_NONE,
            cluster: None,
            hash: None,
            start_ms: 0,
            start_unix_ms: 0,
            local: None,
            remote: None,
            direct_remote: None,
            listener_counted: false,
            upstream: None,
            sending: [None; 2],
            recv_class: [BufClass::Small; 2],
            large_receives: [false; 2],
            buffered: [0; 2],
            pipes: [super::pipes::NO_PIPE; 2],
            splice_send_len: [0; 2],
            recv_parked: [false; 2],
            faults: Faults::default(),
            shadow: Shadow::default(),
            tls: [None, None],
            inspect: Inspect::default(),
            server_name: None,
            denied_by: None,
            rbac_late: false,
            tls_detected: false,
            source_seat: crate::source_limit::SourceSeat::NONE,
            passed_tlvs: None,
            hbone: None,
        }
    }
}

impl Conn {
    /// Reinitializes a free slot for a new client connection accepted at `now_ms`.
    pub fn reset_for(
        &mut self,
        nonce: u32,
        client: RawFd,
        generation: u32,
        listener_slot: u32,
        now_ms: u64,
    ) {
        *self = Conn {
            nonce,
            client,
            generation,
            listener_slot,
            machine: Machine::accepted_at(now_ms),
            ..Conn::default()
        };
    }

    /// The descriptor of `side`.
    pub fn fd(&self, side: Side) -> RawFd {
        match side {
            Side::Client => self.client,
            Side::Backend => self.backend,
        }
    }

    /// The TLS of `side`, if it speaks TLS.
    pub fn tls(&mut self, side: Side) -> Option<&mut super::tls_io::TlsSide> {
        self.tls[side as usize].as_deref_mut()
    }

    /// The descriptor of `side`, mutably.
    pub fn fd_mut(&mut self, side: Side) -> &mut RawFd {
        match side {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.backend,
        }
    }
}

// A slot is touched on every completion of its connection, and the slab holds
// `max_connections_per_worker` of them from the start (8,192 x 904 B = 7.4 MB a worker by
// default): a change of size is a decision, not an accident. 8 B point to HBONE's state
// (a carrier's codec or a stream's handles, allocated only for those). 16 B point to the downstream
// PROXY header's TLVs passed through (allocated only when there are some). 8 B are the
// per-source limit's seat. 24 B are RBAC's (the name of
// the policy that denied the connection, shared with the FIB, and whether the decision
// waits for the client's certificate, and the transport its inspector detected, which a
// CONTINUOUS decision matches the next FIB's chains with). 32 B are the listener filters'
// that read first (the buffer they hold, whether they read, whether the PROXY header is
// done, and a pointer to the server name the TLS inspector read, allocated only for a
// connection that sent one), 32 B the socket's peer behind a PROXY header. Of the other
// 784 B, the machine is
// 296 (its relay 112, of which 8 are the connection's buffer limits; 80 for TLS: which
// sides speak it, the handshake deadline and the attempt's start, the fault delay held
// while the client handshakes); 8 more count the bytes each direction holds for the
// `*_tx_bytes_buffered` gauges; 16 point to each side's TLS state, allocated only for a
// connection that speaks TLS.
const _: () = assert!(std::mem::size_of::<Conn>() == 904);
const _: () = assert!(std::mem::size_of::<Machine>() == 296);
