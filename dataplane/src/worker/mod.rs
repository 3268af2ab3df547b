//! A worker: one pinned thread, one io_uring, one connection slab.
//!
//! The loop is DPDK's l3fwd shape: submit what the last batch asked for and wait for at least
//! one completion in a single `io_uring_enter`, then handle every completion of the batch.
//! How it waits depends on whether the worker has its core to itself ([`wait`]): on its own
//! core it first looks for completions for a few microseconds without a system call.
//!
//! Guarantees:
//! - **No locks, no blocking.** The worker reads the published [`Snapshot`] through an
//!   `ArcSwap` load and waits only inside `io_uring_enter`.
//! - **No allocation in steady state.** The slab, the provided buffers and the per-slot
//!   connect storage are sized at start from [`Limits`]; allocation happens only when a new
//!   FIB generation is adopted (load-balancer state) or a listener opens.
//! - **Connections survive config changes.** Each connection holds the generation it was
//!   decided under (a per-worker reference count on that snapshot) and keeps its backend.
//! - **A slot is reused only when the kernel is done with it.** Every operation for a
//!   connection is counted; the slot is freed when the connection is closed and its last
//!   completion arrived. A nonce in `user_data` tells reused slots apart.

mod drive;
mod fault;
mod hbone_io;
mod inspect;
mod mirror;
mod pipes;
mod proxy_header;
mod rbac_gate;
mod relay_io;
mod slot;
mod sockets;
mod tls_io;
pub(crate) mod ud;
mod udp;
pub mod wait;

use crate::accesslog::ResponseFlags;
use crate::conn;
use crate::fib::{Detected, Fib, Gate, Listener, Route};
use crate::global_limit::Counted;
use crate::handoff::{Phase, Shared, Snapshot};
use crate::hash_lb;
use crate::lb::{mix_seed, Rng, WorkerLb};
use crate::relay::{BufferLimits, Dir, Event, Received, Side};
use crate::stats::{ListenerStat, ProxyProtoStat, ServerStat, TcpStat};
use crate::sys::net::{self, EventFd};
use crate::sys::{BufPoolSize, Completion, Ring, RingError, RingSetup, WaitSpec, Waited};
use pipes::Pipes;
use slot::Conn;
use sockets::SocketSlots;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ud::Kind;

/// Sizes fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connection slots per worker (each proxied connection uses one slot and two fds; six
    /// in [`RelayMode::Splice`], whose two pipes are two fds each).
    pub max_connections_per_worker: usize,
    /// Provided buffers per worker (power of two). Each direction of a connection holds at
    /// most one while its bytes are in flight.
    pub buffers_per_worker: u16,
    /// Size of each provided buffer (and of each pipe in [`RelayMode::Splice`]).
    pub buffer_size_bytes: u32,
    /// Large provided buffers per worker (power of two). A direction whose receives keep
    /// filling a whole small buffer (bulk transfer) moves to a large one, and back when a
    /// receive would have fit a small one: fewer, bigger receives and sends per byte.
    pub large_buffers_per_worker: u16,
    /// Size of each large buffer; 0 disables them.
    pub large_buffer_size_bytes: u32,
    /// io_uring submission queue entries.
    pub ring_entries: u32,
    /// Timer resolution for idle timeouts and drain deadlines.
    pub tick_ms: u64,
    /// How the relay moves bytes.
    pub relay_mode: RelayMode,
    /// UDP sessions per worker (each holds one connected socket); a datagram from a new
    /// source beyond this is dropped. The table is allocated when a UDP listener opens.
    pub udp_sessions_per_worker: usize,
    /// Datagram buffers per worker (power of two, at most 16384; 0: no UDP), each
    /// [`crate::sys::uring::DATAGRAM_BUFFER_BYTES`] of zero pages until used; a datagram
    /// holds one from its receive until its send completes.
    pub datagram_buffers_per_worker: u16,
    /// How the worker waits for completions, per placement.
    pub wait: wait::WaitConfig,
}

/// How the relay moves bytes between the two sockets of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// `recv` into the worker's provided-buffer ring (`IOSQE_BUFFER_SELECT`), then `send`:
    /// one copy in, one copy out; a buffer is held only while its bytes are in flight.
    #[default]
    BufferRing,
    /// `splice(socket -> pipe)`, then `splice(pipe -> socket)`: no copy through user space,
    /// but one pipe (two descriptors) per direction of every open connection, and each
    /// splice runs on an io-wq kernel thread (briefly: the sockets are non-blocking and a
    /// receive is spliced only once its socket is readable).
    Splice,
}

impl RelayMode {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayMode::BufferRing => "buffer-ring",
            RelayMode::Splice => "splice",
        }
    }
}

impl std::fmt::Display for RelayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RelayMode {
    type Err = String;

    fn from_str(s: &str) -> Result<RelayMode, String> {
        match s {
            "buffer-ring" => Ok(RelayMode::BufferRing),
            "splice" => Ok(RelayMode::Splice),
            other => Err(format!(
                "unknown relay mode '{other}' (expected buffer-ring or splice)"
            )),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections_per_worker: 8192,
            buffers_per_worker: 512,
            buffer_size_bytes: 64 * 1024,
            large_buffers_per_worker: 64,
            large_buffer_size_bytes: 1024 * 1024,
            ring_entries: 1024,
            tick_ms: 100,
            relay_mode: RelayMode::BufferRing,
            udp_sessions_per_worker: 16_384,
            datagram_buffers_per_worker: 256,
            wait: wait::WaitConfig::default(),
        }
    }
}

/// Why a worker could not start.
#[derive(Debug)]
pub enum WorkerError {
    /// io_uring refused by the kernel or seccomp.
    IoUringRefused(std::io::Error),
    /// Any other setup failure.
    Setup(std::io::Error),
}

/// Single-shot accepts one listener socket keeps in flight at most, under a
/// `max_connections_to_accept_per_socket_event` larger than this (which it then bounds more
/// tightly): the submission queue stays small whatever the config says.
const MAX_ACCEPTS_IN_FLIGHT: u32 = 64;

/// Copy chunks (each one small buffer) a worker has for mirrored bytes in flight to
/// shadows.
const MIRROR_COPY_CHUNKS: u16 = 256;

/// What accept decided for a new connection.
struct Decision {
    local: SocketAddr,
    remote: Option<SocketAddr>,
    chain: u32,
    cluster: Option<crate::fib::ClusterId>,
    idle_timeout_ms: Option<u64>,
    max_attempts: u32,
    /// The hash policy's key (the client's IP), for hashing balancers.
    hash: Option<u64>,
    /// Counted in the chain's connection limit.
    holds_limit: bool,
    /// The listener's and the cluster's `per_connection_buffer_limit_bytes`.
    buffer_limits: BufferLimits,
    /// Which sides speak TLS (the chain's and the cluster's transport sockets).
    tls: conn::TlsPlan,
    /// The chain terminates HBONE: the connection carries HTTP/2 streams.
    carrier: conn::Carrier,
    /// The chain's tcp_proxy tunnels it over HTTP/2 CONNECT (the cluster speaks HTTP/2).
    tunnelled: bool,
    /// The peer is not among the PROXY protocol filter's trusted sources: no header is read.
    skips_proxy_header: bool,
    /// Counted in the listener's `downstream_cx_total` and `_active` (a chain took it, or
    /// the proxy-loop refusal that stands for Istio's BlackHole chain).
    listener_counted: bool,
    /// The RBAC policy that denied it (its log name).
    denied_by: Option<Arc<str>>,
    /// Its chain's RBAC reads the client's certificate: decided after the handshake.
    rbac_late: bool,
    /// The seat its chain's per-source limit gave it.
    source_seat: crate::source_limit::SourceSeat,
    outcome: Outcome,
}

impl Decision {
    /// Nothing decided yet for a connection from `remote` to `local`.
    fn new(local: SocketAddr, remote: Option<SocketAddr>) -> Decision {
        Decision {
            local,
            remote,
            chain: slot::CHAIN_NONE,
            cluster: None,
            idle_timeout_ms: None,
            max_attempts: 1,
            hash: None,
            holds_limit: false,
            buffer_limits: BufferLimits::ENVOY_DEFAULT,
            tls: conn::TlsPlan::default(),
            carrier: conn::Carrier::No,
            tunnelled: false,
            skips_proxy_header: false,
            listener_counted: false,
            denied_by: None,
            rbac_late: false,
            source_seat: crate::source_limit::SourceSeat::NONE,
            outcome: Outcome::Proxy,
        }
    }
}

/// Where accept sends a connection.
enum Outcome {
    /// To its cluster.
    Proxy,
    /// Refused (no chain, no route, a loop back into the proxy).
    Refuse {
        flags: u16,
        reset: bool,
        details: &'static str,
    },
    /// Refused by its chain's connection limit: closed after `delay_ms`.
    Limited { delay_ms: u64 },
    /// Its listener's filters read the client's first bytes (a PROXY header, a
    /// ClientHello); the chain is decided then ([`Worker::decide_chain`]).
    Inspect { timeout_ms: Option<u64> },
}

/// Envoy's local_ratelimit on `chain`, if it has one: a token taken, or the connection
/// counted as rate limited (it is closed at once, before any upstream is picked, and before
/// a TLS handshake, which Envoy would finish first).
fn rate_limit_passes(chain: &crate::fib::FilterChain) -> bool {
    let Some(rate) = &chain.local_rate_limit else {
        return true;
    };
    if rate.bucket.try_take() {
        return true;
    }
    rate.stats.limited();
    false
}

/// The chain's per-source limit, if it has one: the client's source admitted (its seat in
/// `decision`), or the connection refused at once, counted, and logged with the reason as
/// its termination details (`source_rate_limited`, `source_concurrency_limited`,
/// `source_table_full`); the tcp_proxy counts it, as for Envoy's limits. The source is the
/// client's address as a PROXY header declared it, if any.
fn source_limit_passes(
    id: usize,
    chain: &crate::fib::FilterChain,
    decision: &mut Decision,
) -> bool {
    let (Some(limit), Some(remote)) = (&chain.source_limit, decision.remote) else {
        return true;
    };
    match limit.table.admit(remote.ip()) {
        Ok(seat) => {
            decision.source_seat = seat;
            true
        }
        Err(why) => {
            limit.stats.refused(why);
            let details = match why {
                crate::source_limit::Refusal::Rate => "source_rate_limited",
                crate::source_limit::Refusal::Concurrency => "source_concurrency_limited",
                crate::source_limit::Refusal::TableFull => "source_table_full",
            };
            refuse_at_gate(id, chain, decision, refused_with(details))
        }
    }
}

/// A connection refused after its per-source limit admitted it gives its seat back at once.
fn release_source_seat(chain: &crate::fib::FilterChain, decision: &mut Decision) {
    let seat = std::mem::replace(
        &mut decision.source_seat,
        crate::source_limit::SourceSeat::NONE,
    );
    if let Some(limit) = &chain.source_limit {
        limit.table.release(seat);
    }
}

/// A connection a limit refused: closed after `delay_ms`. False: it does not pass.
fn refuse_limited(
    id: usize,
    chain: &crate::fib::FilterChain,
    decision: &mut Decision,
    delay_ms: u64,
) -> bool {
    refuse_at_gate(id, chain, decision, Outcome::Limited { delay_ms })
}

/// A connection one of its chain's gates (RBAC, a limit) refused, closed as `outcome` says:
/// by then Envoy's tcp_proxy has taken it, so it counts and logs it. False: it does not pass.
fn refuse_at_gate(
    id: usize,
    chain: &crate::fib::FilterChain,
    decision: &mut Decision,
    outcome: Outcome,
) -> bool {
    chain.tcp_proxy.stats.inc(id, TcpStat::DownstreamCxTotal);
    chain.tcp_proxy.stats.inc(id, TcpStat::DownstreamCxActive);
    decision.outcome = outcome;
    false
}

/// A clean close with no flag and these termination details.
fn refused_with(details: &'static str) -> Outcome {
    Outcome::Refuse {
        flags: 0,
        reset: false,
        details,
    }
}

/// No filter chain or no route: closed cleanly, `NR`.
const NO_ROUTE: Outcome = Outcome::Refuse {
    flags: ResponseFlags::NO_ROUTE_FOUND,
    reset: false,
    details: "-",
};

/// [`NO_ROUTE`] as the machine's verdict.
const NO_ROUTE_VERDICT: conn::Verdict = conn::Verdict::Refuse {
    flags: ResponseFlags::NO_ROUTE_FOUND,
    reset: false,
    details: "-",
    holds_limit: false,
};

/// A FIB generation still in use on this worker.
struct Generation {
    fib: Arc<Fib>,
    lb: WorkerLb,
    /// Per cluster, its open-connection counts per endpoint (least-request input): an index
    /// into the worker's [`ActiveCounts`], shared with the generation before while the
    /// cluster is the same `Arc` (a connection counts on its endpoint whichever generation
    /// it was decided under).
    active: Vec<u32>,
    /// Connections decided under this generation that are still open.
    conns: u32,
    /// Per listener: whether accept needs the local address (`getsockname`) and the peer
    /// address (`getpeername`); derived once here, not per connection.
    address_needs: Vec<AddressNeeds>,
}

/// Open-connection counts per endpoint, one array per (cluster, run of generations in which
/// it did not change), reference-counted by the generations that use it. Arrays are reused
/// once free, so adopting a FIB allocates only for clusters that changed.
#[derive(Default)]
struct ActiveCounts {
    counts: Vec<Vec<u32>>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl ActiveCounts {
    /// A zeroed array of `endpoints` counts, with one reference.
    fn fresh(&mut self, endpoints: usize) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.counts.push(Vec::new());
                self.refs.push(0);
                (self.counts.len() - 1) as u32
            }
        };
        let c = &mut self.counts[i as usize];
        c.clear();
        c.resize(endpoints, 0);
        self.refs[i as usize] = 1;
        i
    }

    /// One more generation uses array `i`.
    fn share(&mut self, i: u32) -> u32 {
        self.refs[i as usize] += 1;
        i
    }

    /// A generation no longer uses array `i`.
    fn release(&mut self, i: u32) {
        let r = &mut self.refs[i as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(i);
        }
    }
}

/// Which addresses a listener's connections need looked up at accept.
#[derive(Clone, Copy)]
struct AddressNeeds {
    /// A wildcard listener whose chains match on destination address (or a cluster sends
    /// it in a PROXY header).
    local: bool,
    /// Chains match on the source, connections may be logged, or a cluster sends the
    /// source in a PROXY header.
    peer: bool,
}

/// One worker thread's state.
pub(crate) struct Worker {
    id: usize,
    ring: Ring,
    shared: Arc<Shared>,
    wake: Arc<EventFd>,
    limits: Limits,
    generations: Vec<Option<Generation>>,
    /// The arrays `Generation::active` indexes.
    active: ActiveCounts,
    current_gen: usize,
    snapshot_generation: u64,
    snapshot_epoch: u64,
    /// The TCP listener sockets this worker accepts on.
    listeners: SocketSlots,
    conns: Vec<Conn>,
    free_slots: Vec<u32>,
    /// Slots in use (open or closing), dense, so timers visit only those.
    occupied: Vec<u32>,
    /// Connections waiting for a provided buffer.
    starved: Vec<u32>,
    rng: Rng,
    started: Instant,
    now_ms: u64,
    batch: Vec<Completion>,
    phase: Phase,
    /// Open connections on this worker.
    open_conns: usize,
    /// Splice mode: the pipes connections relay through (dropped after the ring).
    pipes: Pipes,
    /// The fault filter's deadlines (delayed connects, throttled receives).
    fault_timers: fault::FaultTimers,
    /// Mirroring was asked for in splice mode (warned once).
    mirror_splice_warned: bool,
    /// UDP listener sockets and sessions.
    udp: udp::Udp,
    /// Accept errors other than running out of descriptors (logged at most every 5 s).
    accept_error_log: LogLimit,
    /// Connections shed for lack of descriptors since the last log line about it.
    shed_count: u64,
    shed_log: LogLimit,
    /// Upstream `socket()` failures (logged at most every 5 s).
    socket_error_log: LogLimit,
    /// Whether this worker has its core to itself (picks the wait policy).
    placement: wait::PlacementDetector,
    /// This thread's scheduler account (`/proc/thread-self/schedstat`), read once per
    /// detection window while the placement is detected.
    schedstat: Option<std::fs::File>,
    next_detect_ms: u64,
    /// The last wait found completions (a busy-poll is worth trying).
    last_found_work: bool,
    /// HBONE's carriers to pump, tunnelled connections waiting for one, the pools.
    hbone: hbone_io::HboneState,
}

impl Worker {
    /// Creates the worker's ring and state; called on the worker's own thread.
    pub(crate) fn new(
        id: usize,
        shared: Arc<Shared>,
        wake: Arc<EventFd>,
        limits: Limits,
    ) -> Result<Worker, WorkerError> {
        let slots = limits.max_connections_per_worker;
        let ring = ring_for(&limits)?;
        if limits.wait.registered_ring && !ring.ring_fd_registered() {
            tracing::debug!(
                worker = id,
                "ring descriptor not registered (kernel before 5.18)"
            );
        }
        let seed = mix_seed(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64),
            id as u64,
        );
        let mut worker = Worker {
            id,
            ring,
            shared,
            wake,
            limits,
            generations: Vec::new(),
            active: ActiveCounts::default(),
            current_gen: 0,
            snapshot_generation: u64::MAX,
            snapshot_epoch: u64::MAX,
            listeners: SocketSlots::default(),
            conns: (0..slots).map(|_| Conn::default()).collect(),
            free_slots: (0..slots as u32).rev().collect(),
            occupied: Vec::with_capacity(slots),
            starved: Vec::with_capacity(slots * 2),
            rng: Rng::new(seed),
            started: Instant::now(),
            now_ms: 0,
            batch: Vec::new(),
            phase: Phase::Running,
            open_conns: 0,
            pipes: Pipes::new(
                if limits.relay_mode == RelayMode::Splice {
                    slots * 2
                } else {
                    0
                },
                limits.buffer_size_bytes,
            ),
            fault_timers: fault::FaultTimers::with_capacity(slots),
            mirror_splice_warned: false,
            udp: udp::Udp::default(),
            accept_error_log: LogLimit::default(),
            shed_count: 0,
            shed_log: LogLimit::default(),
            socket_error_log: LogLimit::default(),
            placement: wait::PlacementDetector::new(limits.wait.placement),
            schedstat: None,
            next_detect_ms: 0,
            last_found_work: false,
            hbone: hbone_io::HboneState::default(),
        };
        if worker.placement.detecting() {
            // Opened on the worker's own thread: thread-self is this thread from now on.
            worker.schedstat = std::fs::File::open("/proc/thread-self/schedstat").ok();
        }
        worker.batch = Vec::with_capacity(worker.ring.completion_capacity());
        worker.adopt_snapshot();
        Ok(worker)
    }

    /// Runs until the data plane stops and every connection is closed.
    pub(crate) fn run(mut self) {
        let wake_fd = self.wake.raw();
        self.ring
            .read_eventfd(wake_fd, ud::encode(Kind::Wake, 0, 0));
        self.ring.tick(
            Duration::from_millis(self.limits.tick_ms),
            ud::encode(Kind::Tick, 0, 0),
        );
        self.note_placement(self.placement.own_core());
        loop {
            self.wait();
            self.now_ms = self.started.elapsed().as_millis() as u64;
            self.shared
                .server_stats
                .inc(self.id, ServerStat::WorkerLoops);
            let mut batch = std::mem::take(&mut self.batch);
            self.ring.completions_into(&mut batch);
            self.shared.server_stats.add(
                self.id,
                ServerStat::WorkerCompletions,
                batch.len() as u64,
            );
            self.last_found_work = !batch.is_empty();
            for c in batch.iter() {
                self.dispatch(*c);
            }
            self.batch = batch;
            if self.hbone.has_work() {
                self.hbone_run();
            }
            if !self.starved.is_empty() {
                self.feed_starved();
            }
            if self.udp_starved() {
                self.udp_feed_starved();
            }
            if self.phase == Phase::Stopped && self.open_conns == 0 {
                break;
            }
        }
        self.close_all_listeners_now();
        self.shared.worker_exited(self.id);
    }

    /// Submits what the last batch queued and waits for more, as this worker's placement's
    /// policy says.
    fn wait(&mut self) {
        let policy = self.limits.wait.policy(self.placement.own_core());
        let spec = WaitSpec {
            busy_poll_us: if self.last_found_work {
                policy.busy_poll_us
            } else {
                0
            },
            batch: policy.wait_batch,
            min_wait_us: policy.min_wait_us,
        };
        match self.ring.wait(spec) {
            Ok(Waited::Polled) => {
                self.placement.note_spin(true);
                self.shared
                    .server_stats
                    .inc(self.id, ServerStat::WorkerBusyPollHits);
            }
            Ok(Waited::Missed) => {
                self.placement.note_spin(false);
                self.shared
                    .server_stats
                    .inc(self.id, ServerStat::WorkerBusyPollMisses);
            }
            Ok(Waited::Ready | Waited::Slept) => {}
            Err(e) => {
                tracing::error!(worker = self.id, error = %e, "io_uring_enter failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Re-judges the placement once per window from this thread's run delay: one `pread`
    /// of its schedstat per [`wait::DETECT_WINDOW_MS`], while the placement is detected.
    fn detect_placement(&mut self) {
        if !self.placement.detecting() || self.now_ms < self.next_detect_ms {
            return;
        }
        self.next_detect_ms = self.now_ms + wait::DETECT_WINDOW_MS;
        let account = self.schedstat.as_ref().and_then(|f| {
            let mut text = [0u8; 96];
            let n = std::os::unix::fs::FileExt::read_at(f, &mut text, 0).ok()?;
            wait::parse_schedstat(&text[..n])
        });
        if let Some(own_core) = self.placement.sample(self.now_ms, account) {
            tracing::debug!(worker = self.id, own_core, "worker placement changed");
            self.note_placement(own_core);
        }
    }

    /// Keeps `server.worker_own_core` (workers judging their core their own) current.
    fn note_placement(&self, own_core: bool) {
        let stats = &self.shared.server_stats;
        if own_core {
            stats.inc(self.id, ServerStat::WorkerOwnCore);
        } else if stats.worker_value(self.id, ServerStat::WorkerOwnCore) > 0 {
            stats.dec(self.id, ServerStat::WorkerOwnCore);
        }
    }

    fn dispatch(&mut self, c: Completion) {
        let Some((kind, slot, nonce)) = ud::decode(c.user_data) else {
            return;
        };
        match kind {
            Kind::Wake => self.on_wake(c),
            Kind::Tick => self.on_tick(c),
            Kind::Accept => self.on_accept(slot as usize, nonce, c),
            Kind::AcceptShed => self.on_accept_shed(slot as usize, nonce, c),
            Kind::AcceptCancel | Kind::FaultTickCancel | Kind::AcceptShedAux => {}
            Kind::FaultTick => self.on_fault_tick(slot, c),
            Kind::UdpRecv => self.on_udp_recv(slot as usize, nonce, c),
            Kind::UdpUpRecv => self.on_udp_upstream_recv(slot, nonce, c),
            Kind::UdpSendUp | Kind::UdpSendDown => self.on_udp_sent(kind, slot, nonce, c),
            Kind::UdpAux => {}
            _ => self.on_conn_completion(kind, slot, nonce, c),
        }
    }

    // ---- control: snapshots, phases, ticks ----

    fn on_wake(&mut self, _c: Completion) {
        self.ring
            .read_eventfd(self.wake.raw(), ud::encode(Kind::Wake, 0, 0));
        self.adopt_snapshot();
        self.follow_phase();
    }

    fn on_tick(&mut self, c: Completion) {
        if !c.more() {
            self.ring.tick(
                Duration::from_millis(self.limits.tick_ms),
                ud::encode(Kind::Tick, 0, 0),
            );
        }
        // A missed wake (eventfd coalescing) is caught here within one tick.
        self.adopt_snapshot();
        self.follow_phase();
        for i in 0..self.listeners.len() {
            if self.listeners[i].rearm_on_tick && self.listeners[i].open && self.accepting() {
                self.listeners[i].rearm_on_tick = false;
                self.arm_accept(i);
            }
        }
        self.expire_connections();
        self.hbone_tick();
        self.udp_on_tick();
        self.detect_placement();
    }

    fn accepting(&self) -> bool {
        self.phase == Phase::Running
    }

    fn follow_phase(&mut self) {
        let phase = self.shared.phase();
        if phase == self.phase {
            return;
        }
        let before = self.phase;
        self.phase = phase;
        if before == Phase::Running {
            for i in 0..self.listeners.len() {
                self.stop_accepting(i);
            }
            self.hbone_drain(None);
        }
        if phase == Phase::Running {
            for i in 0..self.listeners.len() {
                if self.listeners[i].open && !self.listeners[i].armed {
                    self.arm_accept(i);
                }
            }
        }
        self.udp_follow_phase(phase);
        if phase == Phase::Stopped {
            for slot in 0..self.conns.len() {
                if self.conns[slot].machine.is_live() {
                    self.drive(slot as u32, conn::Event::Abort(conn::Abort::Drain));
                }
            }
        }
    }

    /// Picks up a newly published snapshot: new generation, listeners opened and closed.
    fn adopt_snapshot(&mut self) {
        if let Some(delay) = self.shared.take_adoption_delay(self.id) {
            // Only a test sets this: a worker made to lag, holding nothing of the snapshot
            // meanwhile, as a worker busy with a long batch would.
            std::thread::sleep(delay);
        }
        let snapshot = self.shared.snapshot.load_full();
        if snapshot.epoch == self.snapshot_epoch {
            return;
        }
        self.snapshot_epoch = snapshot.epoch;
        if snapshot.fib.generation != self.snapshot_generation {
            self.adopt_generation(&snapshot.fib);
            self.enforce_continuous_rbac();
        }
        self.reconcile_listeners(&snapshot);
        self.reconcile_udp_listeners(&snapshot);
        // Entries queued so far may name sockets that only the old snapshot holds: they go
        // to the kernel before the plane may close those sockets (and their numbers be
        // reused).
        self.ring.submit();
        self.shared.worker_adopted(self.id, snapshot.epoch);
        if let Some(delay) = self.shared.take_after_adoption_delay(self.id) {
            // Only a test sets this: a worker held right after it acknowledged, as one taken
            // off its CPU there would be.
            std::thread::sleep(delay);
        }
    }

    /// A new FIB generation: load-balancer state for it; the previous one is released once
    /// its last connection closes.
    fn adopt_generation(&mut self, fib: &Arc<Fib>) {
        self.snapshot_generation = fib.generation;
        let previous = self
            .generations
            .get(self.current_gen)
            .and_then(Option::as_ref);
        let seed = mix_seed(self.rng.next_u64(), self.id as u64);
        let lb = WorkerLb::following(fib, previous.map(|p| (&*p.fib, &p.lb)), seed);
        let active = fib
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let same = previous
                    .filter(|p| fib.shares_cluster(&p.fib, i))
                    .map(|p| p.active[i]);
                match same {
                    Some(a) => self.active.share(a),
                    None => self.active.fresh(c.endpoints.len()),
                }
            })
            .collect();
        let generation = Generation {
            lb,
            active,
            fib: fib.clone(),
            conns: 0,
            address_needs: {
                // An upstream PROXY header declares both addresses.
                let declared = fib.clusters.iter().any(|c| c.proxy_protocol.is_some());
                fib.listeners
                    .iter()
                    .map(|l| {
                        // A tunnel's :authority or headers may render either address.
                        let (tunnel_local, tunnel_remote) = l
                            .filter_chains
                            .iter()
                            .chain(l.default_chain.as_ref())
                            .filter_map(|c| c.tcp_proxy.tunneling.as_deref())
                            .map(|t| t.reads())
                            .fold((false, false), |a, b| (a.0 || b.0, a.1 || b.1));
                        let wildcard = l.address.ip().is_unspecified();
                        AddressNeeds {
                            local: l.needs_local_address()
                                || (declared || tunnel_local) && wildcard,
                            peer: l.needs_remote_address()
                                || l.has_access_logs()
                                || declared
                                || tunnel_remote,
                        }
                    })
                    .collect()
            },
        };
        let index = match self.generations.iter().position(Option::is_none) {
            Some(i) => {
                self.generations[i] = Some(generation);
                i
            }
            None => {
                self.generations.push(Some(generation));
                self.generations.len() - 1
            }
        };
        let previous = self.current_gen;
        self.current_gen = index;
        self.release_generation_if_unused(previous);
        self.udp_follow_generation();
    }

    fn release_generation_if_unused(&mut self, index: usize) {
        if index != self.current_gen {
            if let Some(g) = &self.generations[index] {
                if g.conns == 0 {
                    for &a in &g.active {
                        self.active.release(a);
                    }
                    self.generations[index] = None;
                }
            }
        }
    }

    fn reconcile_listeners(&mut self, snapshot: &Snapshot) {
        // Stop listeners whose sockets are gone from the snapshot; follow moved indices.
        for i in 0..self.listeners.len() {
            if self.listeners.leave_if_removed(i, &snapshot.listeners) {
                // A listener removed by a config change drains its connections; when the
                // whole plane drains, the shutdown deadline applies instead, and what the
                // listener still accepts is served (the FIB is unchanged).
                if self.shared.phase() == Phase::Running {
                    self.mark_listener_conns_draining(i);
                } else {
                    self.listeners[i].drained_in_generation = Some(self.snapshot_generation);
                }
                self.stop_accepting(i);
                self.let_go_of_listener(i);
            }
        }
        // Start the snapshot's listeners this worker does not have yet.
        for (fib_index, sockets) in snapshot.listeners.iter().enumerate() {
            let Some(fd) = sockets.fd(self.id) else {
                continue;
            };
            if let Some(slot) = self.listeners.place(fib_index, sockets, fd) {
                if self.accepting() {
                    self.arm_accept(slot);
                }
            }
        }
    }

    fn mark_listener_conns_draining(&mut self, listener_slot: usize) {
        self.hbone_drain(Some(listener_slot as u32));
        let deadline_ms = self.now_ms + self.shared.drain_time_ms;
        for i in 0..self.occupied.len() {
            let slot = self.occupied[i];
            if self.conns[slot as usize].listener_slot as usize == listener_slot {
                let out = self.machine_event(slot, conn::Event::DrainBy { deadline_ms });
                debug_assert!(out.is_empty(), "a drain deadline is only noted");
            }
        }
    }

    /// Accepts on TCP listener slot `i`: one multishot accept, or, with
    /// `max_connections_to_accept_per_socket_event` N, single-shot accepts topped up to N
    /// (at most [`MAX_ACCEPTS_IN_FLIGHT`]). Those are submitted with the next batch, so the
    /// completions of one batch hold at most N new connections of this socket: Envoy's bound
    /// on one socket event. Nothing while a shed is in flight.
    fn arm_accept(&mut self, i: usize) {
        let flags = self.socket_flags();
        let l = &mut self.listeners[i];
        let ud = ud::encode(Kind::Accept, i as u32, l.nonce);
        match l.accepts_per_event {
            None if !l.armed => {
                self.ring.accept_multi(l.fd, flags, ud);
                l.accepts_in_flight = 1;
            }
            Some(n) if l.accepts_in_flight > 0 || !l.armed => {
                let target = n.clamp(1, MAX_ACCEPTS_IN_FLIGHT);
                while l.accepts_in_flight < target {
                    self.ring.accept(l.fd, flags, ud);
                    l.accepts_in_flight += 1;
                }
            }
            _ => return,
        }
        l.armed = true;
    }

    /// Flags for the sockets a connection relays between: `SOCK_NONBLOCK` in splice mode,
    /// where a splice from or to a blocking socket would sleep on an io-wq thread holding the
    /// pipe's lock (see [`Ring::splice_when_ready`]); none for the buffer-ring relay.
    fn socket_flags(&self) -> i32 {
        match self.limits.relay_mode {
            RelayMode::BufferRing => 0,
            RelayMode::Splice => libc::SOCK_NONBLOCK,
        }
    }

    fn stop_accepting(&mut self, i: usize) {
        let l = &self.listeners[i];
        if l.armed {
            // The slot's operations are its accepts (one multishot, or single-shot ones, all
            // with one user_data: a cancel each) or a shed.
            let nonce = l.nonce;
            let target = ud::encode(Kind::Accept, i as u32, nonce);
            for _ in 0..l.accepts_in_flight {
                self.ring
                    .cancel(target, ud::encode(Kind::AcceptCancel, i as u32, 0));
            }
            let shed = ud::encode(Kind::AcceptShed, i as u32, nonce);
            self.ring
                .cancel(shed, ud::encode(Kind::AcceptShedAux, i as u32, 0));
        }
    }

    fn close_all_listeners_now(&mut self) {
        // The worker is exiting: its ring cancels what is left when it is dropped.
        self.listeners.close_all();
        self.ring.submit();
        for i in 0..self.listeners.len() {
            self.listeners[i].armed = false;
            self.listeners[i].accepts_in_flight = 0;
            drop(self.listeners.let_go(i));
        }
        self.udp_close_all_sockets();
    }

    /// Gives up TCP listener slot `i`'s sockets once it is closed and its accept ended: a
    /// drained listener's queue is served first, then this worker's socket stops listening
    /// (so the kernel sends new connections to the port's other sockets at once, not when
    /// the last worker lets go), what was queued on the descriptor goes to the kernel, and
    /// the reference is dropped (the last holder's drop closes the sockets). Once per
    /// removed listener, never in steady state.
    fn let_go_of_listener(&mut self, i: usize) {
        let serves = self.serves_drained(i);
        let (fd, fib_index) = (self.listeners[i].fd, self.listeners[i].fib_index);
        if let Some(sockets) = self.listeners.let_go(i) {
            // A socket every worker shares stays listening until the last lets go of it:
            // shut down under one worker, it would fail the others' accepts.
            if sockets.reuse_port {
                if serves {
                    self.serve_queued(i, fib_index, fd);
                }
                net::stop_listening(fd);
            }
            self.ring.submit();
            drop(sockets);
        }
    }

    /// Whether TCP listener slot `i`, closed by the plane's drain, still routes what it
    /// accepts: the plane drains (not stopped) and the FIB is the one it closed under.
    fn serves_drained(&self, i: usize) -> bool {
        self.phase_now() == Phase::Draining
            && self.listeners[i].drained_in_generation == Some(self.snapshot_generation)
    }

    /// The plane's phase as published (this worker may not have followed it yet).
    fn phase_now(&self) -> Phase {
        self.shared.phase()
    }

    /// Serves the connections the kernel completed on a drained listener's socket before it
    /// stops listening (their clients already count them as connected; a close would reset
    /// them). Bounded by the listener's backlog.
    fn serve_queued(&mut self, listener_slot: usize, fib_index: usize, fd: RawFd) {
        let nonblocking = self.socket_flags() & libc::SOCK_NONBLOCK != 0;
        loop {
            match net::accept_queued(fd, nonblocking) {
                Ok(Some(conn_fd)) => self.new_connection(listener_slot, fib_index, conn_fd),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "accepting a drained listener's queue");
                    return;
                }
            }
        }
    }

    /// Timers of every occupied slot: the connection's own (limit delay, drain deadline,
    /// idle timeout) and, once it closed, its mirror shadow's drain.
    fn expire_connections(&mut self) {
        // Backwards over the occupied list: finishing a connection swap-removes it, which
        // only moves an entry already visited.
        let mut i = self.occupied.len();
        while i > 0 {
            i -= 1;
            let Some(&slot) = self.occupied.get(i) else {
                continue;
            };
            let c = &self.conns[slot as usize];
            if c.machine.is_live() {
                if c.inspect.starved {
                    self.retry_starved_inspection(slot);
                }
                self.drive(slot, conn::Event::Tick);
            } else if c.shadow.drain_deadline_ms.is_some_and(|d| self.now_ms >= d) {
                self.shadow_drain_expired(slot);
                self.settle(slot);
            }
        }
    }

    // ---- accept and routing ----

    fn on_accept(&mut self, i: usize, nonce: u32, c: Completion) {
        let Some(l) = self.listeners.get_mut(i) else {
            return;
        };
        if l.nonce != nonce {
            if c.result >= 0 {
                net::close(c.result);
            }
            return;
        }
        if !c.more() {
            l.accepts_in_flight = l.accepts_in_flight.saturating_sub(1);
            l.armed = l.accepts_in_flight > 0;
        }
        let (open, fib_index) = (l.open, l.fib_index);
        if !open {
            self.let_go_of_listener(i);
        }
        if c.result < 0 {
            let errno = -c.result;
            if errno != libc::ECANCELED {
                self.count_listener(fib_index, ListenerStat::DownstreamCxAcceptError);
                if is_out_of_descriptors(errno) && self.shed_one(i) {
                    return;
                }
                if self.accept_error_log.allow(self.now_ms) {
                    tracing::warn!(
                        worker = self.id,
                        errno,
                        suppressed = self.accept_error_log.take_suppressed(),
                        "accept failed; retrying on the next tick"
                    );
                }
                self.listeners[i].rearm_on_tick = true;
            }
            return;
        }
        let fd = c.result;
        // The kernel completed this connection: its client counts it as connected. Served
        // while the listener routes (open, or closed by a drain under the same FIB); closed
        // only once the plane stops or the listener is gone from the FIB.
        let routes = if open {
            self.phase_now() != Phase::Stopped
        } else {
            self.serves_drained(i)
        };
        if !routes {
            net::close(fd);
            return;
        }
        if self.accepting() {
            self.arm_accept(i);
        }
        self.new_connection(i, fib_index, fd);
    }

    /// Out of descriptors: sheds the connection at the head of listener slot `i`'s queue
    /// with an accept into the ring's own file table and a close, so it is refused at once
    /// instead of waiting (and timing out) in the queue; the multishot accept is re-armed
    /// when the shed completes. False when the ring cannot shed.
    fn shed_one(&mut self, i: usize) -> bool {
        let l = &self.listeners[i];
        if !l.open || l.armed || !self.accepting() {
            return false;
        }
        let (fd, nonce) = (l.fd, l.nonce);
        let shed = ud::encode(Kind::AcceptShed, i as u32, nonce);
        let close = ud::encode(Kind::AcceptShedAux, i as u32, nonce);
        if !self.ring.shed_accept(fd, i as u32, shed, close) {
            return false;
        }
        // The shed names the slot's descriptor: the slot counts as armed until it ends.
        self.listeners[i].armed = true;
        true
    }

    /// A shed accept completed: count it, and accept again.
    fn on_accept_shed(&mut self, i: usize, nonce: u32, c: Completion) {
        let Some(l) = self.listeners.get_mut(i).filter(|l| l.nonce == nonce) else {
            return;
        };
        l.armed = false;
        let (open, fib_index) = (l.open, l.fib_index);
        if !open {
            self.let_go_of_listener(i);
            return;
        }
        if c.result >= 0 {
            self.count_listener(fib_index, ListenerStat::DownstreamCxShedFdLimit);
            self.shed_count += 1;
        }
        if self.shed_log.allow(self.now_ms) {
            tracing::warn!(
                worker = self.id,
                shed = std::mem::take(&mut self.shed_count),
                "out of file descriptors: closing new connections at once (raise the \
                 descriptor limit, or lower the load)"
            );
        }
        if self.accepting() {
            self.arm_accept(i);
        }
    }

    fn count_listener(&self, fib_index: usize, stat: ListenerStat) {
        let fib = self.current_fib();
        if let Some(listener) = fib.listeners.get(fib_index) {
            listener.stats.inc(self.id, stat);
        }
    }

    fn current_fib(&self) -> Arc<Fib> {
        self.generations[self.current_gen]
            .as_ref()
            .map(|g| g.fib.clone())
            .unwrap_or_else(|| self.shared.snapshot.load().fib.clone())
    }

    fn new_connection(&mut self, listener_slot: usize, fib_index: usize, fd: RawFd) {
        let gen_index = self.current_gen;
        let Some(listener) = self.listener_in(gen_index, fib_index) else {
            net::close(fd);
            return;
        };
        let global = &self.shared.global_connections;
        if !global.try_enter(Counted::Worker, listener.ignore_global_conn_limit) {
            // Envoy's listener closes it at accept: no chain, no access log.
            listener
                .stats
                .inc(self.id, ListenerStat::DownstreamGlobalCxOverflow);
            net::close(fd);
            return;
        }
        let Some(slot) = self.free_slots.last().copied() else {
            listener
                .stats
                .inc(self.id, ListenerStat::DownstreamCxOverflow);
            global.leave(Counted::Worker);
            net::reset_and_close(fd);
            return;
        };
        let Some(decision) = self.decide(gen_index, fib_index, fd) else {
            self.shared.global_connections.leave(Counted::Worker);
            net::close(fd);
            return;
        };
        self.occupy(slot, listener_slot, fib_index, fd, &decision);
        if let Outcome::Inspect { timeout_ms } = decision.outcome {
            self.drive(slot, conn::Event::Inspect { timeout_ms });
            return;
        }
        let verdict = self.verdict(slot, &decision);
        self.drive(slot, conn::Event::Accepted(verdict));
    }

    /// The machine's verdict for `slot` from its accept-time `decision` (the fault
    /// filter's draws and the mirror's shadow are taken here).
    fn verdict(&mut self, slot: u32, decision: &Decision) -> conn::Verdict {
        match decision.outcome {
            // The filter closes the connection before the tcp_proxy routes it; Envoy's
            // tcp_proxy still counts it and logs it (no upstream, no flag).
            Outcome::Limited { delay_ms } => conn::Verdict::Limited { delay_ms },
            Outcome::Refuse {
                flags,
                reset,
                details,
            } => conn::Verdict::Refuse {
                flags,
                reset,
                details,
                holds_limit: decision.holds_limit,
            },
            // Decided after the inspection, never here.
            Outcome::Inspect { .. } => NO_ROUTE_VERDICT,
            Outcome::Proxy => {
                let faults = self.draw_faults(slot);
                if !faults.abort_at_accept {
                    self.start_shadow(slot);
                }
                if let Some(terminate) = self.chain_of(slot).and_then(|c| c.hbone.clone()) {
                    self.start_server_carrier(slot, &terminate);
                } else if decision.tunnelled {
                    self.start_tunnelled(slot);
                }
                conn::Verdict::Proxy(conn::Proxy {
                    idle_timeout_ms: decision.idle_timeout_ms,
                    max_attempts: decision.max_attempts,
                    holds_limit: decision.holds_limit,
                    faults,
                    buffer_limits: decision.buffer_limits,
                    tls: decision.tls,
                    carrier: decision.carrier,
                })
            }
        }
    }

    /// Takes free slot `slot` for the connection on `fd` accepted on `listener_slot`.
    fn occupy(
        &mut self,
        slot: u32,
        listener_slot: usize,
        fib_index: usize,
        fd: RawFd,
        decision: &Decision,
    ) {
        let gen_index = self.current_gen;
        self.free_slots.pop();
        self.open_conns += 1;
        if let Some(g) = self.generations[gen_index].as_mut() {
            g.conns += 1;
        }
        let conn = &mut self.conns[slot as usize];
        conn.reset_for(
            ud::next_nonce(conn.nonce),
            fd,
            gen_index as u32,
            listener_slot as u32,
            self.now_ms,
        );
        conn.fib_listener = fib_index as u32;
        conn.occupied_index = self.occupied.len() as u32;
        self.occupied.push(slot);
        conn.local = Some(decision.local);
        conn.remote = decision.remote;
        conn.start_ms = self.now_ms;
        conn.start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        conn.chain = decision.chain;
        conn.cluster = decision.cluster;
        conn.hash = decision.hash;
        conn.listener_counted = decision.listener_counted;
        conn.denied_by = decision.denied_by.clone();
        conn.rbac_late = decision.rbac_late;
        conn.source_seat = decision.source_seat;
        conn.inspect.proxy_done = decision.skips_proxy_header;
    }

    fn listener_in(&self, gen_index: usize, fib_index: usize) -> Option<&Listener> {
        self.generations[gen_index]
            .as_ref()?
            .fib
            .listeners
            .get(fib_index)
    }

    /// Accept-time decisions for a new client connection, with their stats: filter chain,
    /// route, cluster. Borrows the FIB in place (no reference-count traffic per connection).
    fn decide(&mut self, gen_index: usize, fib_index: usize, fd: RawFd) -> Option<Decision> {
        let id = self.id;
        let generation = self.generations[gen_index].as_ref()?;
        let listener = generation.fib.listeners.get(fib_index)?;
        self.shared
            .server_stats
            .inc(id, ServerStat::TotalConnections);
        let (local, remote) = addresses(listener, generation.address_needs[fib_index], fd);
        let mut decision = Decision::new(local, remote);
        if listener.use_original_dst && generation.fib.is_own_address(local) {
            // Passed through, it would come straight back: refuse it, as Istio's BlackHole
            // chain on 15001 does (and count it as that chain's connection would be).
            listener.stats.inc(id, ListenerStat::DownstreamCxProxyLoop);
            listener.stats.inc(id, ListenerStat::DownstreamCxTotal);
            listener.stats.inc(id, ListenerStat::DownstreamCxActive);
            decision.listener_counted = true;
            decision.outcome = Outcome::Refuse {
                flags: ResponseFlags::NO_ROUTE_FOUND,
                reset: true,
                details: "proxy_loop",
            };
            return Some(decision);
        }
        let proxy_header = match &listener.proxy_protocol {
            Some(p) if !p.reads_header_of(remote) => {
                p.stats.inc(id, ProxyProtoStat::UntrustedSource);
                decision.skips_proxy_header = true;
                false
            }
            other => other.is_some(),
        };
        if listener.tls_inspector.is_some() || proxy_header {
            listener.stats.inc(id, ListenerStat::DownstreamPreCxActive);
            decision.outcome = Outcome::Inspect {
                timeout_ms: listener.filter_deadline.timeout_ms,
            };
            return Some(decision);
        }
        self.decide_chain(gen_index, fib_index, &mut decision, &Detected::NOTHING);
        Some(decision)
    }

    /// The filter chain, connection limit, route and cluster of a connection with what its
    /// listener filters `detected`, with their stats, into `decision`.
    fn decide_chain(
        &mut self,
        gen_index: usize,
        fib_index: usize,
        decision: &mut Decision,
        detected: &Detected,
    ) {
        let id = self.id;
        let Some(generation) = self.generations[gen_index].as_ref() else {
            decision.outcome = NO_ROUTE;
            return;
        };
        let listener = &generation.fib.listeners[fib_index];
        let remote_for_match = decision
            .remote
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let matched = listener.match_chain_index(decision.local, remote_for_match, detected);
        let Some(chain_index) = matched else {
            listener.stats.inc(id, ListenerStat::NoFilterChainMatch);
            decision.outcome = NO_ROUTE;
            return;
        };
        // As Envoy's listener counts a connection: once a filter chain has taken it (not one
        // its listener filters closed, nor one no chain matched).
        listener.stats.inc(id, ListenerStat::DownstreamCxTotal);
        listener.stats.inc(id, ListenerStat::DownstreamCxActive);
        decision.listener_counted = true;
        let chain = listener.chain(chain_index);
        decision.chain = chain_index;
        decision.outcome = Outcome::Proxy;
        for gate in &chain.gates {
            let passed = match gate {
                Gate::Rbac => rbac_gate::at_accept(id, chain, decision, detected),
                Gate::SourceLimit => source_limit_passes(id, chain, decision),
                Gate::RateLimit => {
                    rate_limit_passes(chain) || refuse_limited(id, chain, decision, 0)
                }
                Gate::ConnectionLimit => match &chain.connection_limit {
                    Some(limit) if !limit.state.try_enter(limit.max_connections) => {
                        refuse_limited(id, chain, decision, limit.delay_ms)
                    }
                    Some(_) => {
                        decision.holds_limit = true;
                        true
                    }
                    None => true,
                },
            };
            if !passed {
                release_source_seat(chain, decision);
                // Refused after the connection limit took it in: closed at once, so its
                // seat goes back now (a refused connection holds none).
                if let Some(limit) = chain
                    .connection_limit
                    .as_ref()
                    .filter(|_| decision.holds_limit)
                {
                    limit.state.leave();
                    decision.holds_limit = false;
                }
                return;
            }
        }
        if chain.hbone.is_some() {
            // Its streams are routed, each on its own; the connection only carries them.
            decision.carrier = conn::Carrier::Server;
            decision.idle_timeout_ms = None;
            decision.max_attempts = 1;
            decision.buffer_limits = BufferLimits {
                client_bytes: listener.buffer_limit_bytes,
                backend_bytes: 0,
            };
            decision.tls = conn::TlsPlan {
                client: chain.tls.is_some(),
                authorize_client: decision.rbac_late,
                client_timeout_ms: chain.tls.as_ref().and_then(|t| t.handshake_timeout_ms),
                ..conn::TlsPlan::default()
            };
            return;
        }
        route_tcp(id, &chain.tcp_proxy, &mut self.rng, decision);
        let cluster = decision.cluster.map(|c| generation.fib.cluster(c));
        decision.tunnelled =
            chain.tcp_proxy.tunneling.is_some() && cluster.is_some_and(|c| c.http2.is_some());
        decision.buffer_limits = BufferLimits {
            client_bytes: listener.buffer_limit_bytes,
            backend_bytes: cluster.map_or(0, |c| c.buffer_limit_bytes),
        };
        decision.tls = conn::TlsPlan {
            client: chain.tls.is_some(),
            authorize_client: decision.rbac_late,
            client_timeout_ms: chain.tls.as_ref().and_then(|t| t.handshake_timeout_ms),
            // A tunnelled connection's TLS is its pooled HTTP/2 connection's.
            backend: !decision.tunnelled
                && cluster.is_some_and(|c| c.tls.is_some() || c.tls_secrets_missing),
            connect_timeout_ms: cluster.map_or(5000, |c| c.connect_timeout_ms),
        };
    }

    // ---- connection completions ----

    fn on_conn_completion(&mut self, kind: Kind, slot: u32, nonce: u32, c: Completion) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        let done = if conn.nonce == nonce {
            conn.machine.completed()
        } else {
            Err(conn::Violation::FreeSlot)
        };
        if let Err(v) = done {
            // Slots are freed only after their last completion: a bug, counted and logged.
            self.violated(slot, v, "completion");
            if kind == Kind::Socket && c.result >= 0 {
                net::close(c.result);
            }
            return;
        }
        match kind {
            Kind::Socket => self.on_socket(slot, c.result),
            Kind::Connect => self.on_connect(slot, c.result),
            Kind::RecvUp => self.on_recv(slot, Dir::Up, c),
            Kind::RecvDown => self.on_recv(slot, Dir::Down, c),
            Kind::SendUp => self.on_sent(slot, Dir::Up, c.result),
            Kind::SendDown => self.on_sent(slot, Dir::Down, c.result),
            Kind::ShutUp => self.relay_event(slot, Event::ShutdownDone(Dir::Up)),
            Kind::ShutDown => self.relay_event(slot, Event::ShutdownDone(Dir::Down)),
            Kind::ShadowSocket => self.on_shadow_socket(slot, c.result),
            Kind::ShadowConnect => self.on_shadow_connect(slot, c.result),
            Kind::ShadowSend => self.on_shadow_sent(slot, c.result),
            Kind::ShadowRecv => self.on_shadow_recv(slot, c),
            Kind::TlsReadClient => self.on_tls_read(slot, Side::Client, c),
            Kind::TlsReadBackend => self.on_tls_read(slot, Side::Backend, c),
            Kind::TlsWriteClient => self.on_tls_write(slot, Side::Client, c.result),
            Kind::TlsWriteBackend => self.on_tls_write(slot, Side::Backend, c.result),
            Kind::InspectRead => self.on_inspect_read(slot, c),
            Kind::UpstreamProxyHeader => self.on_upstream_proxy_header_sent(slot, c.result),
            _ => {}
        }
        self.settle(slot);
    }

    /// The upstream socket was created: set up (bind, original source), then connected; or
    /// the attempt failed locally.
    fn on_socket(&mut self, slot: u32, result: i32) {
        if self.is_tunnelled(slot) {
            // A tunnelled connection's backend is a stream: nothing was opened.
            self.drive(slot, conn::Event::SocketCreated(Ok(())));
            return;
        }
        if result >= 0 {
            self.conns[slot as usize].backend = result;
        }
        let wanted = self.conns[slot as usize].machine.stage() == conn::Stage::Opening;
        let outcome = if !wanted {
            Ok(())
        } else if result < 0 {
            if self.socket_error_log.allow(self.now_ms) {
                tracing::warn!(
                    worker = self.id,
                    errno = -result,
                    suppressed = self.socket_error_log.take_suppressed(),
                    "upstream socket() failed"
                );
            }
            Err(-result)
        } else {
            self.prepare_upstream(slot, result).inspect_err(|errno| {
                tracing::warn!(
                    worker = self.id,
                    errno,
                    "upstream socket setup (upstream_bind_config, original_src) failed"
                );
            })
        };
        if wanted || result >= 0 {
            self.drive(slot, conn::Event::SocketCreated(outcome));
        }
    }

    /// Socket setup before the connect: the cluster's `upstream_bind_config`, and the
    /// client's own source address under `original_src`. Fails with an errno.
    fn prepare_upstream(&self, slot: u32, fd: RawFd) -> Result<(), i32> {
        let conn = &self.conns[slot as usize];
        let Some(generation) = self.generations[conn.generation as usize].as_ref() else {
            return Ok(());
        };
        let fib = &generation.fib;
        let bind = conn.cluster.map(|id| &fib.cluster(id).upstream_bind);
        let original_src = fib
            .listeners
            .get(conn.fib_listener as usize)
            .and_then(|l| l.original_src)
            .zip(conn.remote)
            .map(|(o, remote)| (remote.ip(), o.mark));
        match bind {
            Some(b) if !b.is_empty() || original_src.is_some() => {
                net::prepare_upstream(fd, b, original_src)
                    .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn connect_timeout(&self, slot: u32) -> Duration {
        let ms = self.cluster_of(slot).map_or(5000, |c| c.connect_timeout_ms);
        Duration::from_millis(ms.max(1))
    }

    fn on_connect(&mut self, slot: u32, result: i32) {
        if let Some(result) = self.hbone_connected(slot) {
            self.connect_done(slot, result);
            return;
        }
        if result >= 0 && self.send_upstream_proxy_header(slot) {
            // Connected once the header is sent.
            return;
        }
        self.connect_done(slot, result);
    }

    /// The connect (and the PROXY header that starts it, if any) is over: fed to the
    /// machine, with the pipes attached in splice mode.
    pub(super) fn connect_done(&mut self, slot: u32, result: i32) {
        let connecting = self.conns[slot as usize].machine.stage() == conn::Stage::Connecting;
        let outcome = if result < 0 {
            Err(-result)
        } else if connecting && !self.attach_pipes(slot) {
            Ok(conn::Transport::Unavailable)
        } else {
            Ok(conn::Transport::Ready)
        };
        self.drive(slot, conn::Event::ConnectDone(outcome));
    }

    // ---- closing ----

    /// The filter chain `slot` was decided on, in its own generation.
    fn chain_of(&self, slot: u32) -> Option<&crate::fib::FilterChain> {
        let conn = &self.conns[slot as usize];
        if conn.chain == slot::CHAIN_NONE {
            return None;
        }
        let g = self.generations[conn.generation as usize].as_ref()?;
        let listener = g.fib.listeners.get(conn.fib_listener as usize)?;
        Some(listener.chain(conn.chain))
    }

    /// The cluster `slot` was routed to, in its own generation.
    fn cluster_of(&self, slot: u32) -> Option<&crate::fib::Cluster> {
        let conn = &self.conns[slot as usize];
        let g = self.generations[conn.generation as usize].as_ref()?;
        Some(g.fib.cluster(conn.cluster?))
    }

    fn tcp_stats(&self, slot: u32) -> Option<&crate::stats::TcpStats> {
        self.chain_of(slot).map(|c| &*c.tcp_proxy.stats)
    }

    fn cluster_stats(&self, slot: u32) -> Option<&crate::stats::ClusterStats> {
        self.cluster_of(slot).map(|c| &*c.stats)
    }
}

/// The worker's ring, with its buffer pools sized from `limits`.
fn ring_for(limits: &Limits) -> Result<Ring, WorkerError> {
    let slots = limits.max_connections_per_worker;
    let small = BufPoolSize {
        count: limits.buffers_per_worker,
        size_bytes: limits.buffer_size_bytes,
    };
    let large = (limits.large_buffer_size_bytes > limits.buffer_size_bytes
        && limits.relay_mode == RelayMode::BufferRing)
        .then_some(BufPoolSize {
            count: limits.large_buffers_per_worker,
            size_bytes: limits.large_buffer_size_bytes,
        });
    // Copies for mirroring (zero pages until used); none in splice mode, which does
    // not mirror.
    let copies = if limits.relay_mode == RelayMode::BufferRing {
        MIRROR_COPY_CHUNKS
    } else {
        0
    };
    Ring::new(
        limits.ring_entries,
        small,
        large,
        limits.datagram_buffers_per_worker,
        slots,
        copies,
        RingSetup {
            defer_taskrun: limits.wait.taskrun == wait::TaskRun::Defer,
            register_ring_fd: limits.wait.registered_ring,
        },
    )
    .map_err(|e| match e {
        RingError::Refused(e) => WorkerError::IoUringRefused(e),
        RingError::Other(e) => WorkerError::Setup(e),
    })
}

/// The process (`EMFILE`) or the system (`ENFILE`) is out of descriptors.
fn is_out_of_descriptors(errno: i32) -> bool {
    errno == libc::EMFILE || errno == libc::ENFILE
}

/// At most one log line per interval for a recurring condition, with a count of the lines
/// left out in between.
#[derive(Debug, Default)]
struct LogLimit {
    next_ms: u64,
    suppressed: u64,
}

impl LogLimit {
    const INTERVAL_MS: u64 = 5_000;

    /// True when a line may be written now; otherwise counts it as suppressed.
    fn allow(&mut self, now_ms: u64) -> bool {
        if now_ms >= self.next_ms {
            self.next_ms = now_ms + Self::INTERVAL_MS;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Lines suppressed since the last one written.
    fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// What a relay receive completion says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receive {
    /// `len` bytes, in `buffer` (buffer-ring mode) or in the direction's pipe (splice).
    Bytes { len: u32, buffer: Option<u16> },
    /// End of stream, starvation or an error, for the relay as it is.
    Other(Received),
}

/// Reads a receive completion's result and buffer flag. Bytes that should be in a provided
/// buffer but came with none (which the kernel does not post) left the socket for a place the
/// worker does not know: the stream can no longer be relayed intact, so the receive counts as
/// an error of the proxy's own (`EIO`) and the relay resets the connection, instead of the
/// direction waiting for its idle timeout.
fn classify_receive(result: i32, buffer: Option<u16>, needs_buffer: bool) -> Receive {
    match result {
        n if n > 0 && needs_buffer && buffer.is_none() => {
            Receive::Other(Received::Error(libc::EIO))
        }
        n if n > 0 => Receive::Bytes {
            len: n as u32,
            buffer: buffer.filter(|_| needs_buffer),
        },
        0 => Receive::Other(Received::Eof),
        e if -e == libc::ENOBUFS => Receive::Other(Received::NoBuffer),
        // ECANCELED included: cancelled by a teardown, when the relay was already stopped.
        e => Receive::Other(Received::Error(-e)),
    }
}

/// The connection's local address (its original destination on a `use_original_dst`
/// listener) and its peer, each looked up only when a listener needs it: both are system
/// calls.
fn addresses(
    listener: &Listener,
    needs: AddressNeeds,
    fd: RawFd,
) -> (SocketAddr, Option<SocketAddr>) {
    let local = if needs.local {
        listener
            .use_original_dst
            .then(|| net::original_dst(fd))
            .flatten()
            .or_else(|| net::local_addr(fd))
            .unwrap_or(listener.address)
    } else {
        listener.address
    };
    // getpeername: only when a chain matches on the source or a connection may be logged.
    let remote = if needs.peer { net::peer_addr(fd) } else { None };
    (local, remote)
}

/// The `tcp_proxy` part of a decision: its stats, the hash key, timeouts and the cluster.
fn route_tcp(worker: usize, tcp: &crate::fib::TcpProxy, rng: &mut Rng, decision: &mut Decision) {
    tcp.stats.inc(worker, TcpStat::DownstreamCxTotal);
    tcp.stats.inc(worker, TcpStat::DownstreamCxActive);
    decision.hash = decision
        .remote
        .filter(|_| tcp.hash_source_ip)
        .map(|r| hash_lb::source_ip_hash(r.ip()));
    decision.idle_timeout_ms = tcp.idle_timeout_ms;
    decision.max_attempts = tcp.max_connect_attempts.max(1);
    decision.cluster = match &tcp.route {
        Route::Cluster(id) => Some(*id),
        Route::Weighted(w) => w.pick(rng.next_u64()).cluster,
        Route::Missing(_) => None,
    };
    if decision.cluster.is_none() {
        tcp.stats.inc(worker, TcpStat::DownstreamCxNoRoute);
        decision.outcome = NO_ROUTE;
    }
}

/// The kind of a send on `dir`.
fn send_kind(dir: Dir) -> Kind {
    match dir {
        Dir::Up => Kind::SendUp,
        Dir::Down => Kind::SendDown,
    }
}

/// Outlier detection's part on the worker: a connect failure or timeout lengthens the host's
/// failure run; a run that reaches the cluster's threshold asks the health thread to decide
/// on an ejection (Envoy posts the same decision to its main thread).
#[inline]
fn report_outlier_failure(cluster: &crate::fib::Cluster, host: &crate::fib::Endpoint) {
    if let Some(outlier) = &cluster.health.outlier {
        if host.health().connect_failed() >= outlier.review_threshold() {
            cluster.health_state.request_review();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{Action, Actions, Relay, Side};

    #[test]
    fn a_completion_that_belongs_to_no_connection_is_counted_not_absorbed() {
        // Before: a debug assertion (nothing in release) and a count that would wrap. Now the
        // worker refuses it, counts it, and the slot stays free.
        let stats = Arc::new(crate::stats::ServerStats::new("server", 1));
        let shared = Arc::new(Shared::new(
            1,
            Duration::from_secs(1),
            stats.clone(),
            Arc::new(crate::accesslog::AccessLogQueues::new(1, 8)),
        ));
        let wake = Arc::new(EventFd::new().expect("eventfd"));
        let limits = Limits {
            max_connections_per_worker: 4,
            buffers_per_worker: 4,
            large_buffer_size_bytes: 0,
            datagram_buffers_per_worker: 0,
            ..Limits::default()
        };
        let mut worker = Worker::new(0, shared, wake, limits).expect("io_uring");
        let stale = Completion {
            user_data: ud::encode(Kind::RecvUp, 2, 7),
            result: -libc::ECANCELED,
            flags: 0,
        };
        worker.dispatch(stale);
        worker.dispatch(stale);
        assert_eq!(stats.get(ServerStat::WorkerInvariantViolations), 2);
        assert_eq!(worker.conns[2].machine.stage(), conn::Stage::Free);
        assert_eq!(worker.open_conns, 0);
    }

    #[test]
    fn bytes_without_a_buffer_reset_the_connection() {
        // Before: the worker logged and dropped the completion, and the direction hung
        // until its idle timeout. Now the relay hears of an error and resets.
        let receive = classify_receive(100, None, true);
        assert_eq!(receive, Receive::Other(Received::Error(libc::EIO)));
        let Receive::Other(received) = receive else {
            unreachable!()
        };
        let mut relay = Relay::default();
        let mut out = Actions::default();
        relay.start(&mut out);
        out.clear();
        relay.on_event(Event::Recv(Dir::Up, received), &mut out);
        assert!(
            out.iter().any(
                |a| matches!(a, Action::Reset { failed: Side::Client, errno } if errno == libc::EIO)
            ),
            "the relay resets: {:?}",
            out.iter().collect::<Vec<_>>()
        );
    }

    #[test]
    fn receive_results_are_classified() {
        assert_eq!(
            classify_receive(7, Some(3), true),
            Receive::Bytes {
                len: 7,
                buffer: Some(3)
            }
        );
        // Splice mode: the bytes are in the pipe, a stray buffer flag is ignored.
        assert_eq!(
            classify_receive(7, None, false),
            Receive::Bytes {
                len: 7,
                buffer: None
            }
        );
        assert_eq!(
            classify_receive(0, None, true),
            Receive::Other(Received::Eof)
        );
        assert_eq!(
            classify_receive(-libc::ENOBUFS, None, true),
            Receive::Other(Received::NoBuffer)
        );
        assert_eq!(
            classify_receive(-libc::ECONNRESET, None, true),
            Receive::Other(Received::Error(libc::ECONNRESET))
        );
    }
}
