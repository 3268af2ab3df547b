//! A worker: one pinned thread, one io_uring, one connection slab.
//!
//! The loop is DPDK's l3fwd shape: submit what the last batch asked for and wait for at least
//! one completion in a single `io_uring_enter`, then handle every completion of the batch.
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

mod conn;
mod fault;
mod mirror;
mod pipes;
mod sockets;
pub(crate) mod ud;
mod udp;

use crate::accesslog::{AccessRecord, ResponseFlags};
use crate::fib::{Fib, Listener, Route};
use crate::handoff::{Phase, Shared, Snapshot};
use crate::hash_lb;
use crate::lb::{mix_seed, Pick, Rng, WorkerLb};
use crate::relay::{Action, Actions, BufId, Dir, Event, Received, Side};
use crate::stats::{ClusterStat, HostStat, ListenerStat, Resource, ServerStat, TcpStat};
use crate::sys::net::{self, EventFd};
use crate::sys::{BufClass, BufPoolSize, Completion, Ready, Ring, RingError};
use conn::{Conn, ConnState, NO_FD};
use pipes::{Pipes, NO_PIPE};
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
    /// Response flags when the connection is refused (no chain, no route, a loop).
    flags: u16,
    /// The destination is the proxy's own address: refused with a reset.
    proxy_loop: bool,
    /// The hash policy's key (the client's IP), for hashing balancers.
    hash: Option<u64>,
    /// Counted in the chain's connection limit.
    holds_limit: bool,
    /// Refused by the chain's connection limit: close after this many ms.
    limited_delay_ms: Option<u64>,
}

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
    /// A wildcard listener whose chains match on destination address.
    local: bool,
    /// Chains match on the source, or connections may be logged.
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
    actions: Actions,
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
        let ring = Ring::new(
            limits.ring_entries,
            small,
            large,
            limits.datagram_buffers_per_worker,
            slots,
            copies,
        )
        .map_err(|e| match e {
            RingError::Refused(e) => WorkerError::IoUringRefused(e),
            RingError::Other(e) => WorkerError::Setup(e),
        })?;
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
            actions: Actions::default(),
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
        };
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
        loop {
            if let Err(e) = self.ring.submit_and_wait(1) {
                tracing::error!(worker = self.id, error = %e, "io_uring_enter failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.now_ms = self.started.elapsed().as_millis() as u64;
            self.shared
                .server_stats
                .inc(self.id, ServerStat::WorkerLoops);
            let mut batch = std::mem::take(&mut self.batch);
            self.ring.completions_into(&mut batch);
            for c in batch.iter() {
                self.dispatch(*c);
            }
            self.batch = batch;
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
        self.udp_on_tick();
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
                if self.conns[slot].is_live() {
                    self.abort_conn(
                        slot as u32,
                        ResponseFlags::DRAIN_CLOSE,
                        "drain_timeout",
                        true,
                    );
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
        }
        self.reconcile_listeners(&snapshot);
        self.reconcile_udp_listeners(&snapshot);
        // Entries queued so far may name sockets that only the old snapshot holds: they go
        // to the kernel before the plane may close those sockets (and their numbers be
        // reused).
        self.ring.submit();
        self.shared.worker_adopted(self.id, snapshot.epoch);
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
            address_needs: fib
                .listeners
                .iter()
                .map(|l| AddressNeeds {
                    local: l.needs_local_address(),
                    peer: l.needs_remote_address() || l.has_access_logs(),
                })
                .collect(),
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
                self.stop_accepting(i);
                self.let_go_of_listener(i);
                // A listener removed by a config change drains its connections; when the
                // whole plane drains, the shutdown deadline applies instead.
                if self.shared.phase() == Phase::Running {
                    self.mark_listener_conns_draining(i);
                }
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
        let deadline = self.now_ms + self.shared.drain_time_ms;
        for &slot in self.occupied.iter() {
            let c = &mut self.conns[slot as usize];
            if c.is_live() && c.listener_slot as usize == listener_slot {
                c.drain_deadline_ms = Some(deadline);
            }
        }
    }

    fn arm_accept(&mut self, i: usize) {
        let flags = self.socket_flags();
        let l = &mut self.listeners[i];
        if l.armed {
            return;
        }
        l.armed = true;
        let ud = ud::encode(Kind::Accept, i as u32, l.nonce);
        self.ring.accept_multi(l.fd, flags, ud);
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
            // The slot's operation is its multishot accept or a shed (one of the two).
            let nonce = l.nonce;
            let target = ud::encode(Kind::Accept, i as u32, nonce);
            self.ring
                .cancel(target, ud::encode(Kind::AcceptCancel, i as u32, 0));
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
            drop(self.listeners.let_go(i));
        }
        self.udp_close_all_sockets();
    }

    /// Gives up TCP listener slot `i`'s sockets once it is closed and its accept ended: what
    /// was queued on the descriptor goes to the kernel first, then the reference is dropped
    /// (the last holder's drop closes the sockets: once per removed listener, never in steady
    /// state).
    fn let_go_of_listener(&mut self, i: usize) {
        if let Some(sockets) = self.listeners.let_go(i) {
            self.ring.submit();
            drop(sockets);
        }
    }

    /// Idle timeouts and drain deadlines.
    fn expire_connections(&mut self) {
        let now = self.now_ms;
        // Backwards over the occupied list: finishing a connection swap-removes it, which
        // only moves an entry already visited.
        let mut i = self.occupied.len();
        while i > 0 {
            i -= 1;
            let Some(&slot) = self.occupied.get(i) else {
                continue;
            };
            let slot = slot as usize;
            let c = &self.conns[slot];
            if !c.is_live() {
                if c.shadow.drain_deadline_ms.is_some_and(|d| now >= d) {
                    self.shadow_drain_expired(slot as u32);
                    self.finish_if_done(slot as u32);
                }
                continue;
            }
            if c.limit_close_at_ms.is_some_and(|d| now >= d) {
                self.close_client_only(slot as u32);
                continue;
            }
            if c.drain_deadline_ms.is_some_and(|d| now >= d) {
                self.abort_conn(
                    slot as u32,
                    ResponseFlags::DRAIN_CLOSE,
                    "drain_timeout",
                    true,
                );
                continue;
            }
            // A connect held back by the fault filter's delay is not idle.
            let idle = c.faults.connect_at_ms.is_none()
                && c.idle_timeout_ms
                    .is_some_and(|t| now.saturating_sub(c.last_activity_ms) >= t);
            if idle {
                if let Some(stats) = self.tcp_stats(slot as u32) {
                    stats.inc(self.id, TcpStat::IdleTimeout);
                }
                self.abort_conn(
                    slot as u32,
                    ResponseFlags::STREAM_IDLE_TIMEOUT,
                    "idle_timeout",
                    false,
                );
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
            l.armed = false;
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
        if !open || !self.accepting() {
            net::close(fd);
            return;
        }
        if !self.listeners[i].armed && self.accepting() {
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
        let Some(slot) = self.free_slots.last().copied() else {
            if let Some(listener) = self.listener_in(gen_index, fib_index) {
                listener
                    .stats
                    .inc(self.id, ListenerStat::DownstreamCxOverflow);
            }
            net::reset_and_close(fd);
            return;
        };
        let Some(decision) = self.decide(gen_index, fib_index, fd) else {
            net::close(fd);
            return;
        };
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
        );
        conn.fib_listener = fib_index as u32;
        conn.occupied_index = self.occupied.len() as u32;
        self.occupied.push(slot);
        conn.local = Some(decision.local);
        conn.remote = decision.remote;
        conn.start_ms = self.now_ms;
        conn.last_activity_ms = self.now_ms;
        conn.start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        conn.chain = decision.chain;
        conn.idle_timeout_ms = decision.idle_timeout_ms;
        conn.max_attempts = decision.max_attempts;
        conn.cluster = decision.cluster;
        conn.hash = decision.hash;
        conn.holds_limit = decision.holds_limit;
        if let Some(delay_ms) = decision.limited_delay_ms {
            // The filter closes the connection before the tcp_proxy sees it.
            conn.chain = conn::CHAIN_NONE;
            conn.termination_details = "connection_limit";
            if delay_ms == 0 {
                self.close_client_only(slot);
            } else {
                conn.limit_close_at_ms = Some(self.now_ms + delay_ms);
                conn.idle_timeout_ms = None;
            }
            return;
        }
        if decision.proxy_loop {
            conn.flags.set(decision.flags);
            conn.termination_details = "proxy_loop";
            self.close_sockets(slot, true, false);
            self.finish_if_done(slot);
            return;
        }
        if decision.flags != 0 {
            conn.flags.set(decision.flags);
            self.close_client_only(slot);
            return;
        }
        if self.apply_faults(slot) {
            if self.conns[slot as usize].is_live() {
                // Delayed: the shadow starts now, the upstream after the delay.
                self.start_shadow(slot);
            }
            return;
        }
        self.start_shadow(slot);
        self.connect_next(slot, None);
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
        listener.stats.inc(id, ListenerStat::DownstreamCxTotal);
        listener.stats.inc(id, ListenerStat::DownstreamCxActive);
        self.shared
            .server_stats
            .inc(id, ServerStat::TotalConnections);
        let needs = generation.address_needs[fib_index];
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
        // getpeername is a system call: only when a chain matches on the source or a
        // connection may be logged.
        let remote = if needs.peer { net::peer_addr(fd) } else { None };
        let mut decision = Decision {
            local,
            remote,
            chain: conn::CHAIN_NONE,
            cluster: None,
            idle_timeout_ms: None,
            max_attempts: 1,
            flags: 0,
            proxy_loop: false,
            hash: None,
            holds_limit: false,
            limited_delay_ms: None,
        };
        if listener.use_original_dst && generation.fib.is_own_address(local) {
            // Passed through, it would come straight back: refuse it, as Istio's BlackHole
            // chain on 15001 does.
            listener.stats.inc(id, ListenerStat::DownstreamCxProxyLoop);
            decision.flags = ResponseFlags::NO_ROUTE_FOUND;
            decision.proxy_loop = true;
            return Some(decision);
        }
        let remote_for_match = remote.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let Some(chain_index) = listener.match_chain_index(local, remote_for_match) else {
            listener.stats.inc(id, ListenerStat::NoFilterChainMatch);
            decision.flags = ResponseFlags::NO_ROUTE_FOUND;
            return Some(decision);
        };
        let chain = listener.chain(chain_index);
        decision.chain = chain_index;
        if let Some(limit) = &chain.connection_limit {
            if !limit.state.try_enter(limit.max_connections) {
                decision.limited_delay_ms = Some(limit.delay_ms);
                return Some(decision);
            }
            decision.holds_limit = true;
        }
        let tcp = &chain.tcp_proxy;
        tcp.stats.inc(id, TcpStat::DownstreamCxTotal);
        tcp.stats.inc(id, TcpStat::DownstreamCxActive);
        decision.hash = remote
            .filter(|_| tcp.hash_source_ip)
            .map(|r| hash_lb::source_ip_hash(r.ip()));
        decision.idle_timeout_ms = tcp.idle_timeout_ms;
        decision.max_attempts = tcp.max_connect_attempts.max(1);
        decision.cluster = match &tcp.route {
            Route::Cluster(id) => Some(*id),
            Route::Weighted(w) => w.pick(self.rng.next_u64()).cluster,
            Route::Missing(_) => None,
        };
        if decision.cluster.is_none() {
            tcp.stats.inc(id, TcpStat::DownstreamCxNoRoute);
            decision.flags = ResponseFlags::NO_ROUTE_FOUND;
        }
        Some(decision)
    }

    /// Picks an endpoint (not `exclude`) and starts a connect, or gives up.
    fn connect_next(&mut self, slot: u32, exclude: Option<usize>) {
        let conn = &self.conns[slot as usize];
        let (gen_index, cluster_id) = (conn.generation as usize, conn.cluster);
        let Some(cluster_id) = cluster_id else { return };
        if !self.conns[slot as usize].holds_cx && !self.admit(slot) {
            return;
        }
        let Some(generation) = self.generations[gen_index].as_mut() else {
            return;
        };
        let fib = &generation.fib;
        let cluster = fib.cluster(cluster_id);
        if cluster.is_original_dst() {
            self.connect_original_dst(slot);
            return;
        }
        let active = &self.active.counts[generation.active[cluster_id.0 as usize] as usize];
        let pick = generation.lb.pick(
            fib,
            cluster_id,
            Pick {
                active,
                exclude,
                hash: self.conns[slot as usize].hash,
            },
            &mut self.rng,
        );
        let Some(picked) = pick else {
            self.no_upstream(slot);
            return;
        };
        let endpoint_index = picked.endpoint;
        let endpoint = &cluster.endpoints[endpoint_index];
        if picked.panic {
            cluster.stats.inc(self.id, ClusterStat::LbHealthyPanic);
        }
        cluster.stats.inc(self.id, ClusterStat::UpstreamCxTotal);
        endpoint.stats.inc(HostStat::CxTotal);
        let address = endpoint.address;
        let conn = &mut self.conns[slot as usize];
        conn.endpoint = Some(endpoint_index as u32);
        self.start_connect(slot, address);
    }

    /// `type: ORIGINAL_DST`: connects to where the client was going, as restored by its
    /// listener's `use_original_dst`; without one there is no upstream (as in Envoy).
    fn connect_original_dst(&mut self, slot: u32) {
        let conn = &self.conns[slot as usize];
        let (gen_index, cluster_id) = (conn.generation as usize, conn.cluster);
        let Some((generation, cluster_id)) = self.generations[gen_index].as_ref().zip(cluster_id)
        else {
            return;
        };
        let fib = &generation.fib;
        let restored = fib
            .listeners
            .get(conn.fib_listener as usize)
            .is_some_and(|l| l.use_original_dst);
        let Some(address) = conn.local.filter(|_| restored) else {
            self.no_upstream(slot);
            return;
        };
        fib.cluster(cluster_id)
            .stats
            .inc(self.id, ClusterStat::UpstreamCxTotal);
        self.start_connect(slot, address);
    }

    /// The circuit breaker's admission of `slot`'s upstream connection, across all workers,
    /// as Envoy's TCP pool decides it: a pending request (connecting), refused with UO and
    /// `upstream_rq_pending_overflow` when `max_pending_requests` are taken; then a
    /// connection, refused with UO and `upstream_cx_overflow` at `max_connections`. True when
    /// the connection may be made; otherwise the client is being closed.
    fn admit(&mut self, slot: u32) -> bool {
        let Some(cluster) = self.cluster_of(slot) else {
            return false;
        };
        let (limits, resources) = (cluster.circuit_breakers, &cluster.resources);
        let overflow = if !resources.try_acquire(Resource::Pending, limits.max_pending_requests) {
            Some(ClusterStat::UpstreamRqPendingOverflow)
        } else if !resources.try_acquire(Resource::Connections, limits.max_connections) {
            resources.release(Resource::Pending);
            Some(ClusterStat::UpstreamCxOverflow)
        } else {
            None
        };
        if let Some(stat) = overflow {
            cluster.stats.inc(self.id, stat);
        }
        let conn = &mut self.conns[slot as usize];
        if overflow.is_some() {
            conn.flags.set(ResponseFlags::UPSTREAM_OVERFLOW);
            self.close_client_only(slot);
            return false;
        }
        conn.holds_pending = true;
        conn.holds_cx = true;
        true
    }

    /// Takes `slot` out of its chain's connection limit count.
    fn leave_connection_limit(&mut self, slot: u32) {
        if !std::mem::take(&mut self.conns[slot as usize].holds_limit) {
            return;
        }
        if let Some(limit) = self
            .chain_of(slot)
            .and_then(|c| c.connection_limit.as_ref())
        {
            limit.state.leave();
        }
    }

    /// Gives back what `slot` holds of its cluster's circuit breaker.
    fn release_resources(&mut self, slot: u32, pending_only: bool) {
        let conn = &self.conns[slot as usize];
        let (pending, cx) = (conn.holds_pending, conn.holds_cx && !pending_only);
        let Some(cluster) = self.cluster_of(slot) else {
            return;
        };
        if pending {
            cluster.resources.release(Resource::Pending);
        }
        if cx {
            cluster.resources.release(Resource::Connections);
        }
        let conn = &mut self.conns[slot as usize];
        conn.holds_pending &= !pending;
        conn.holds_cx &= !cx;
    }

    /// Nothing to connect to (no healthy endpoint, no original destination): counted on
    /// the cluster, and the client is closed.
    fn no_upstream(&mut self, slot: u32) {
        if let Some(stats) = self.cluster_stats(slot) {
            stats.inc(self.id, ClusterStat::UpstreamCxNoneHealthy);
        }
        self.conns[slot as usize]
            .flags
            .set(ResponseFlags::NO_HEALTHY_UPSTREAM);
        self.close_client_only(slot);
    }

    /// Creates the upstream socket for a connect to `address` (the connect follows in
    /// [`Worker::on_socket`]).
    fn start_connect(&mut self, slot: u32, address: SocketAddr) {
        let conn = &mut self.conns[slot as usize];
        conn.upstream = Some(address);
        conn.attempts += 1;
        conn.state = ConnState::Connecting;
        conn.inflight += 1;
        let ud = ud::encode(Kind::Socket, slot, conn.nonce);
        let flags = self.socket_flags();
        self.ring.socket(&address, flags, ud);
    }

    // ---- connection completions ----

    fn on_conn_completion(&mut self, kind: Kind, slot: u32, nonce: u32, c: Completion) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.nonce != nonce || conn.state == ConnState::Free {
            // Cannot happen: slots are freed only after their last completion.
            debug_assert!(false, "stale completion {kind:?} for slot {slot}");
            if kind == Kind::Socket && c.result >= 0 {
                net::close(c.result);
            }
            return;
        }
        conn.inflight -= 1;
        match kind {
            Kind::Socket => self.on_socket(slot, c.result),
            Kind::Connect => self.on_connect(slot, c.result),
            Kind::ConnectTimeout => {}
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
            _ => {}
        }
        self.finish_if_done(slot);
    }

    fn on_socket(&mut self, slot: u32, result: i32) {
        let conn = &mut self.conns[slot as usize];
        if conn.state != ConnState::Connecting {
            // Aborted while the socket was being created.
            if result >= 0 {
                net::close(result);
            }
            return;
        }
        if result < 0 {
            if self.socket_error_log.allow(self.now_ms) {
                tracing::warn!(
                    worker = self.id,
                    errno = -result,
                    suppressed = self.socket_error_log.take_suppressed(),
                    "upstream socket() failed"
                );
            }
            self.connect_failed(slot, -result, true);
            return;
        }
        conn.backend = result;
        if let Err(errno) = self.prepare_upstream(slot, result) {
            tracing::warn!(
                worker = self.id,
                errno,
                "upstream socket setup (upstream_bind_config, original_src) failed"
            );
            self.connect_failed(slot, errno, true);
            return;
        }
        let conn = &self.conns[slot as usize];
        let nonce = conn.nonce;
        let timeout = self.connect_timeout(slot);
        let address = self.conns[slot as usize]
            .upstream
            .expect("endpoint picked before socket");
        self.conns[slot as usize].inflight += 3;
        self.ring
            .set_nodelay(result, ud::encode(Kind::Aux, slot, nonce));
        self.ring.connect(
            result,
            slot as usize,
            address,
            timeout,
            ud::encode(Kind::Connect, slot, nonce),
            ud::encode(Kind::ConnectTimeout, slot, nonce),
        );
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

    fn connect_timeout(&self, slot: u32) -> Duration {
        let ms = self.cluster_of(slot).map_or(5000, |c| c.connect_timeout_ms);
        Duration::from_millis(ms.max(1))
    }

    fn on_connect(&mut self, slot: u32, result: i32) {
        if self.conns[slot as usize].state != ConnState::Connecting {
            return;
        }
        if result < 0 {
            self.connect_failed(slot, -result, false);
            return;
        }
        let id = self.id;
        self.release_resources(slot, true);
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Relaying;
        conn.connected = true;
        conn.last_activity_ms = self.now_ms;
        let (gen_index, cluster, endpoint) =
            (conn.generation as usize, conn.cluster, conn.endpoint);
        if let (Some(g), Some(cluster), Some(endpoint)) =
            (self.generations[gen_index].as_mut(), cluster, endpoint)
        {
            let c = g.fib.cluster(cluster);
            c.stats.inc(id, ClusterStat::UpstreamCxActive);
            let host = &c.endpoints[endpoint as usize];
            host.stats.inc(HostStat::CxActive);
            if c.health.outlier.is_some() {
                host.health().connect_succeeded();
            }
            self.active.counts[g.active[cluster.0 as usize] as usize][endpoint as usize] += 1;
        }
        if self.limits.relay_mode == RelayMode::Splice && !self.attach_pipes(slot) {
            self.abort_conn(
                slot,
                ResponseFlags::UPSTREAM_OVERFLOW,
                "splice_pipe_unavailable",
                true,
            );
            return;
        }
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        self.conns[slot as usize].relay.start(&mut actions);
        self.carry_out(slot, &actions);
        self.actions = actions;
    }

    /// Splice mode: gives each direction of `slot` its pipe. False when no pipe could be had
    /// (descriptor limit): the connection is then reset rather than relayed.
    fn attach_pipes(&mut self, slot: u32) -> bool {
        for dir in Dir::BOTH {
            match self.pipes.acquire() {
                Ok(id) => self.conns[slot as usize].pipes[dir as usize] = id,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "no pipe for a splice relay");
                    return false;
                }
            }
        }
        true
    }

    /// A connect attempt failed. `local`: the proxy's own failure before anything was sent
    /// (socket(), socket setup), not the host's, so outlier detection does not hear of it
    /// (Envoy's local connection failure).
    fn connect_failed(&mut self, slot: u32, errno: i32, local: bool) {
        let id = self.id;
        let conn = &mut self.conns[slot as usize];
        let timed_out = errno == libc::ECANCELED || errno == libc::ETIMEDOUT;
        let backend = std::mem::replace(&mut conn.backend, NO_FD);
        let (gen_index, cluster, endpoint) =
            (conn.generation as usize, conn.cluster, conn.endpoint);
        let (attempts, max_attempts) = (conn.attempts, conn.max_attempts);
        if backend != NO_FD {
            conn.inflight += 1;
            let ud = ud::encode(Kind::Aux, slot, conn.nonce);
            self.ring.close(backend, ud);
        }
        if let (Some(g), Some(cluster)) = (self.generations[gen_index].as_ref(), cluster) {
            let c = g.fib.cluster(cluster);
            c.stats.inc(id, ClusterStat::UpstreamCxConnectFail);
            if timed_out {
                c.stats.inc(id, ClusterStat::UpstreamCxConnectTimeout);
            }
            if let Some(e) = endpoint {
                let host = &c.endpoints[e as usize];
                host.stats.inc(HostStat::CxConnectFail);
                if !local {
                    report_outlier_failure(c, host);
                }
            }
            if attempts >= max_attempts && max_attempts > 1 {
                c.stats
                    .inc(id, ClusterStat::UpstreamCxConnectAttemptsExceeded);
            }
        }
        if attempts < max_attempts && self.phase != Phase::Stopped {
            tracing::debug!(
                worker = id,
                errno,
                attempts,
                "upstream connect failed; retrying"
            );
            self.connect_next(slot, endpoint.map(|e| e as usize));
            return;
        }
        let conn = &mut self.conns[slot as usize];
        conn.flags.set(if timed_out {
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT
        } else {
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE
        });
        if max_attempts > 1 {
            conn.flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        }
        self.close_client_only(slot);
    }

    fn on_recv(&mut self, slot: u32, dir: Dir, c: Completion) {
        if c.result == -libc::EAGAIN
            && self.limits.relay_mode == RelayMode::Splice
            && self.conns[slot as usize].state == ConnState::Relaying
        {
            self.splice_recv_again(slot, dir);
            return;
        }
        let needs_buffer = self.limits.relay_mode == RelayMode::BufferRing;
        let received = match classify_receive(c.result, c.buffer_id(), needs_buffer) {
            Receive::Bytes { len, .. } if !needs_buffer => {
                let pipe = self.conns[slot as usize].pipes[dir as usize];
                self.pipes.filled(pipe, len);
                self.count_received(slot, dir, u64::from(len));
                if self.charge_faults(slot, dir, u64::from(len)) {
                    return;
                }
                Received::Data {
                    buf: BufId::Pipe(pipe),
                    len,
                }
            }
            Receive::Bytes { len, buffer } => {
                let bid = buffer.expect("classify_receive gives buffer-ring bytes a buffer");
                let class = self.conns[slot as usize].recv_class[dir as usize];
                let buf = self.ring.buffer_received(class, bid);
                if class == BufClass::Large {
                    self.shared
                        .server_stats
                        .inc(self.id, ServerStat::RelayLargeBufferReceives);
                }
                self.resize_receives(slot, dir, class, len);
                self.count_received(slot, dir, u64::from(len));
                if self.charge_faults(slot, dir, u64::from(len)) {
                    // The abort fault fired: these bytes go nowhere.
                    self.ring.recycle(buf);
                    self.feed_starved();
                    return;
                }
                Received::Data {
                    buf: BufId::Ring(buf),
                    len,
                }
            }
            Receive::Other(received) => {
                if received == Received::Error(libc::EIO) && c.result > 0 {
                    tracing::error!(
                        worker = self.id,
                        bytes = c.result,
                        "receive completed without a buffer; resetting the connection"
                    );
                }
                received
            }
        };
        if received == Received::NoBuffer {
            let conn = &mut self.conns[slot as usize];
            if conn.recv_class[dir as usize] == BufClass::Large {
                // Out of large buffers: go on with small ones (the starved path re-arms).
                conn.large_receives[dir as usize] = false;
            } else {
                self.shared
                    .server_stats
                    .inc(self.id, ServerStat::RelayBufferExhausted);
            }
            self.starved.push(slot);
        }
        self.relay_event(slot, Event::Recv(dir, received));
    }

    fn on_sent(&mut self, slot: u32, dir: Dir, result: i32) {
        if self.limits.relay_mode == RelayMode::Splice {
            self.on_splice_sent(slot, dir, result);
            return;
        }
        let conn = &self.conns[slot as usize];
        if let Some(bid) = conn.sending[dir as usize] {
            self.conns[slot as usize].sending[dir as usize] = None;
            self.ring.send_done(bid);
        }
        let outcome = if result >= 0 {
            self.count_sent(slot, dir, result as u64);
            Ok(result as u32)
        } else {
            Err(-result)
        };
        self.relay_event(slot, Event::Sent(dir, outcome));
    }

    /// Splice mode: a receive moved nothing (`EAGAIN`), which is not an error. Either its pipe
    /// is full of bytes a send of the same direction still drains (a one-page pipe after every
    /// receive, or slots used up by small segments): the receive starts again when that send
    /// completes ([`Worker::on_splice_sent`]), since a poll now would fire at once and spin; or
    /// the socket had nothing after all: wait for it again.
    fn splice_recv_again(&mut self, slot: u32, dir: Dir) {
        let pipe = self.conns[slot as usize].pipes[dir as usize];
        if self.pipes.held(pipe) > 0 {
            self.conns[slot as usize].recv_parked[dir as usize] = true;
        } else {
            self.submit_recv(slot, dir);
        }
    }

    /// Splice mode: a send completed. `EAGAIN` (the sink's buffer is full; nothing moved) is
    /// not an error: the same send starts again once the sink is writable. Bytes moved free
    /// pipe room, so a receive parked on a full pipe starts again.
    fn on_splice_sent(&mut self, slot: u32, dir: Dir, result: i32) {
        let conn = &mut self.conns[slot as usize];
        let relaying = conn.state == ConnState::Relaying;
        if result == -libc::EAGAIN && relaying {
            let (pipe, sink, len) = (
                conn.pipes[dir as usize],
                conn.fd(dir.sink()),
                conn.splice_send_len[dir as usize],
            );
            conn.inflight += 2;
            let nonce = conn.nonce;
            let pipe_out = self
                .pipes
                .read_end(pipe)
                .expect("a relaying connection has its pipes");
            self.ring.splice_when_ready(
                Ready::SinkWritable,
                pipe_out,
                sink,
                len,
                ud::encode(Kind::Aux, slot, nonce),
                ud::encode(send_kind(dir), slot, nonce),
            );
            return;
        }
        let outcome = if result >= 0 {
            let pipe = conn.pipes[dir as usize];
            self.pipes.drained(pipe, result as u32);
            self.count_sent(slot, dir, result as u64);
            Ok(result as u32)
        } else {
            Err(-result)
        };
        self.relay_event(slot, Event::Sent(dir, outcome));
        let conn = &mut self.conns[slot as usize];
        if std::mem::take(&mut conn.recv_parked[dir as usize]) && conn.state == ConnState::Relaying
        {
            self.submit_recv(slot, dir);
        }
    }

    /// Picks the buffer size of a direction's next receive from what this one got: a small
    /// buffer filled to the brim means more is waiting (bulk), so go large; a large receive
    /// that a small buffer would have held means the burst is over.
    fn resize_receives(&mut self, slot: u32, dir: Dir, class: BufClass, len: u32) {
        let small = self.ring.buffer_size(BufClass::Small);
        let large = &mut self.conns[slot as usize].large_receives[dir as usize];
        match class {
            BufClass::Small if len == small && self.ring.buffer_size(BufClass::Large) > 0 => {
                *large = true
            }
            BufClass::Large if len <= small => *large = false,
            _ => {}
        }
    }

    fn count_received(&mut self, slot: u32, dir: Dir, n: u64) {
        self.conns[slot as usize].last_activity_ms = self.now_ms;
        match dir {
            Dir::Up => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.add(self.id, TcpStat::DownstreamCxRxBytesTotal, n);
                }
            }
            Dir::Down => {
                if let Some(s) = self.cluster_stats(slot) {
                    s.add(self.id, ClusterStat::UpstreamCxRxBytesTotal, n);
                }
            }
        }
    }

    fn count_sent(&mut self, slot: u32, dir: Dir, n: u64) {
        self.conns[slot as usize].last_activity_ms = self.now_ms;
        match dir {
            Dir::Up => {
                if let Some(s) = self.cluster_stats(slot) {
                    s.add(self.id, ClusterStat::UpstreamCxTxBytesTotal, n);
                }
            }
            Dir::Down => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.add(self.id, TcpStat::DownstreamCxTxBytesTotal, n);
                }
            }
        }
    }

    fn relay_event(&mut self, slot: u32, event: Event) {
        let mut actions = std::mem::take(&mut self.actions);
        actions.clear();
        self.conns[slot as usize]
            .relay
            .on_event(event, &mut actions);
        self.carry_out(slot, &actions);
        self.actions = actions;
    }

    fn carry_out(&mut self, slot: u32, actions: &Actions) {
        for action in actions.iter() {
            self.carry_out_one(slot, action);
        }
    }

    /// Starts a receive on `dir`'s source of `slot`.
    fn submit_recv(&mut self, slot: u32, dir: Dir) {
        let throttled = self.throttled(slot, dir);
        let conn = &mut self.conns[slot as usize];
        let fd = conn.fd(dir.source());
        conn.inflight += 1;
        let kind = if dir == Dir::Up {
            Kind::RecvUp
        } else {
            Kind::RecvDown
        };
        let nonce = conn.nonce;
        let ud = ud::encode(kind, slot, nonce);
        // A mirrored direction receives small buffers: each is copied whole for the shadow.
        let mirrored = dir == Dir::Up && conn.shadow.state != conn::ShadowState::Off;
        if self.limits.relay_mode == RelayMode::Splice {
            let (pipe_in, capacity) = self
                .pipes
                .write_end(conn.pipes[dir as usize])
                .expect("a relaying connection has its pipes");
            // Spliced only once the socket is readable: no io-wq thread sleeps for its data
            // (holding the pipe's lock, against the send of this direction's last bytes).
            conn.inflight += 1;
            self.ring.splice_when_ready(
                Ready::SourceReadable,
                fd,
                pipe_in,
                capacity,
                ud::encode(Kind::Aux, slot, nonce),
                ud,
            );
        } else {
            let class = if conn.large_receives[dir as usize]
                && !throttled
                && !mirrored
                && self.ring.buffers_in_kernel(BufClass::Large) > 0
            {
                BufClass::Large
            } else {
                BufClass::Small
            };
            conn.recv_class[dir as usize] = class;
            self.ring.recv(fd, class, ud);
        }
    }

    fn carry_out_one(&mut self, slot: u32, action: Action) {
        if let Action::Recv(dir) = action {
            if !self.defer_recv(slot, dir) {
                self.submit_recv(slot, dir);
            }
            return;
        }
        let conn = &mut self.conns[slot as usize];
        let nonce = conn.nonce;
        match action {
            Action::Recv(_) => unreachable!("handled above"),
            Action::Send {
                dir,
                buf,
                offset,
                len,
            } => {
                let fd = conn.fd(dir.sink());
                conn.inflight += 1;
                let ud = ud::encode(send_kind(dir), slot, nonce);
                match buf {
                    BufId::Pipe(pipe) => {
                        // A pipe is read from its front, so the offset of a resumed short
                        // splice is implicit. Straight away: the sink usually has room
                        // (when not, `EAGAIN`, see `on_splice_sent`).
                        let pipe_out = self
                            .pipes
                            .read_end(pipe)
                            .expect("a relaying connection has its pipes");
                        conn.splice_send_len[dir as usize] = len;
                        self.ring.splice(pipe_out, fd, len, ud);
                    }
                    BufId::Ring(buf) => {
                        conn.sending[dir as usize] = Some(buf);
                        self.ring.send(fd, buf, offset, len, ud);
                        let mirrored = conn.shadow.state != conn::ShadowState::Off;
                        if dir == Dir::Up && offset == 0 && mirrored {
                            // First send of these bytes: the shadow gets a copy.
                            self.mirror_send(slot, buf, len);
                        }
                    }
                }
            }
            Action::ShutdownWrite(side) => {
                if side == Side::Backend && conn.shadow.state != conn::ShadowState::Off {
                    self.mirror_eof(slot);
                }
                let conn = &mut self.conns[slot as usize];
                let fd = conn.fd(side);
                conn.inflight += 1;
                let kind = if side == Side::Backend {
                    Kind::ShutUp
                } else {
                    Kind::ShutDown
                };
                self.ring
                    .shutdown(fd, libc::SHUT_WR, ud::encode(kind, slot, nonce));
            }
            // A pipe stays with its connection until the connection closes.
            Action::Recycle(BufId::Pipe(_)) => {}
            Action::Recycle(BufId::Ring(buf)) => {
                self.ring.recycle(buf);
                self.feed_starved();
            }
            Action::Reset { failed, errno } => {
                tracing::debug!(worker = self.id, ?failed, errno, "connection reset");
                conn.flags.set(match failed {
                    Side::Client => ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
                    Side::Backend => ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
                });
                conn.closed_by_backend = failed == Side::Backend;
                if let Some(s) = self.cluster_stats(slot) {
                    s.inc(self.id, ClusterStat::UpstreamCxReset);
                }
                self.teardown(slot, failed.other());
            }
            Action::Close => {
                conn.closed_by_backend = true;
                self.teardown_clean(slot);
            }
            Action::Paused(dir) => self.count_flow(slot, dir, true),
            Action::Resumed(dir) => self.count_flow(slot, dir, false),
        }
    }

    fn count_flow(&mut self, slot: u32, dir: Dir, paused: bool) {
        match dir {
            Dir::Up => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.inc(
                        self.id,
                        if paused {
                            TcpStat::DownstreamFlowControlPausedReadingTotal
                        } else {
                            TcpStat::DownstreamFlowControlResumedReadingTotal
                        },
                    );
                }
            }
            Dir::Down => {
                if let Some(s) = self.cluster_stats(slot) {
                    s.inc(
                        self.id,
                        if paused {
                            ClusterStat::UpstreamFlowControlPausedReadingTotal
                        } else {
                            ClusterStat::UpstreamFlowControlResumedReadingTotal
                        },
                    );
                }
            }
        }
    }

    /// Gives a returned buffer's worth of progress to starved connections.
    ///
    /// Called when a buffer is recycled, after every completion batch and on every tick: a
    /// buffer may come back in the same batch as the `ENOBUFS` that starved a connection,
    /// before that connection was queued here, so waiting for the next recycle alone could
    /// stall it forever.
    fn feed_starved(&mut self) {
        let mut budget = self.ring.buffers_in_kernel(BufClass::Small);
        while budget > 0 {
            let Some(slot) = self.starved.pop() else {
                return;
            };
            let conn = &self.conns[slot as usize];
            if conn.is_live()
                && (conn.relay.is_starved(Dir::Up) || conn.relay.is_starved(Dir::Down))
            {
                self.relay_event(slot, Event::BufferAvailable);
                budget -= 1;
            }
        }
    }

    // ---- closing ----

    /// Resets `reset_side` (SO_LINGER 0) and closes both sockets.
    fn teardown(&mut self, slot: u32, reset_side: Side) {
        self.close_sockets(
            slot,
            reset_side == Side::Client,
            reset_side == Side::Backend,
        );
    }

    /// Closes both sockets after a clean end of both directions.
    /// Both directions ended, so no operation is in flight on either socket: a plain close
    /// each, no cancel.
    fn teardown_clean(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if conn.state == ConnState::Closing {
            return;
        }
        if conn.pipes[0] != NO_PIPE {
            // Splice mode keeps its cancel-by-user-data path.
            self.close_sockets(slot, false, false);
            return;
        }
        conn.state = ConnState::Closing;
        let ud = ud::encode(Kind::Aux, slot, conn.nonce);
        for side in [Side::Client, Side::Backend] {
            let fd = std::mem::replace(conn.fd_mut(side), NO_FD);
            if fd != NO_FD {
                conn.inflight += 1;
                self.ring.close(fd, ud);
            }
        }
        self.mirror_primary_closed(slot);
    }

    /// Stops the relay and closes both sockets (cancelling their operations first), each
    /// with a reset if asked. Idempotent.
    fn close_sockets(&mut self, slot: u32, reset_client: bool, reset_backend: bool) {
        let conn = &mut self.conns[slot as usize];
        if conn.state == ConnState::Closing {
            return;
        }
        conn.state = ConnState::Closing;
        // Buffers queued behind a send come back now; the rest with their completions.
        let mut released = std::mem::take(&mut self.actions);
        released.clear();
        conn.relay.abort(&mut released);
        let ud = ud::encode(Kind::Aux, slot, conn.nonce);
        if conn.pipes[0] != NO_PIPE {
            // Splice mode, relay started. A receive splice belongs to its pipe, not its
            // socket, so the cancel-by-socket below misses it once it runs; cancel it by its
            // user data (a miss completes with ENOENT). One still waiting for its socket is
            // cancelled with the poll it is linked to, which the cancel-by-socket catches.
            for kind in [Kind::RecvUp, Kind::RecvDown] {
                conn.inflight += 1;
                self.ring.cancel(ud::encode(kind, slot, conn.nonce), ud);
            }
        }
        for (side, reset) in [(Side::Client, reset_client), (Side::Backend, reset_backend)] {
            let fd = std::mem::replace(conn.fd_mut(side), NO_FD);
            if fd != NO_FD {
                conn.inflight += self.ring.teardown(fd, reset, ud);
            }
        }
        self.carry_out(slot, &released);
        self.actions = released;
        self.mirror_primary_closed(slot);
    }

    /// Closes the client when no backend was ever connected (no route, connect failure).
    fn close_client_only(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.state = ConnState::Closing;
        let ud = ud::encode(Kind::Aux, slot, conn.nonce);
        let fd = std::mem::replace(&mut conn.client, NO_FD);
        if fd != NO_FD {
            conn.inflight += 1;
            self.ring.close(fd, ud);
        }
        self.mirror_primary_closed(slot);
        self.finish_if_done(slot);
    }

    /// Ends a live connection from the worker's side (idle timeout, drain): both sockets are
    /// closed, with a reset when `reset` is set.
    fn abort_conn(&mut self, slot: u32, flag: u16, details: &'static str, reset: bool) {
        if flag == ResponseFlags::DRAIN_CLOSE {
            if let Some(s) = self.tcp_stats(slot) {
                s.inc(self.id, TcpStat::DownstreamCxDrainClose);
            }
        }
        let conn = &mut self.conns[slot as usize];
        if !conn.is_live() {
            return;
        }
        conn.flags.set(flag);
        conn.termination_details = details;
        conn.max_attempts = 0;
        self.close_sockets(slot, reset, reset);
        self.finish_if_done(slot);
    }

    /// Frees the slot once the connection is closed and its last completion arrived.
    fn finish_if_done(&mut self, slot: u32) {
        let conn = &self.conns[slot as usize];
        if conn.state != ConnState::Closing || conn.inflight > 0 {
            return;
        }
        if matches!(
            conn.shadow.state,
            conn::ShadowState::Connecting | conn::ShadowState::Open
        ) {
            // Nothing of the shadow is in flight any more (a discard read that found no
            // buffer): close it now; the slot is freed after its close completes.
            self.shadow_close(slot);
            if self.conns[slot as usize].inflight > 0 {
                return;
            }
        }
        self.record_close(slot);
        let conn = &mut self.conns[slot as usize];
        for pipe in std::mem::replace(&mut conn.pipes, [NO_PIPE; 2]) {
            if pipe != NO_PIPE {
                self.pipes.release(pipe);
            }
        }
        let gen_index = conn.generation as usize;
        conn.state = ConnState::Free;
        let index = conn.occupied_index as usize;
        self.occupied.swap_remove(index);
        if let Some(&moved) = self.occupied.get(index) {
            self.conns[moved as usize].occupied_index = index as u32;
        }
        self.free_slots.push(slot);
        self.open_conns -= 1;
        if let Some(g) = self.generations[gen_index].as_mut() {
            g.conns -= 1;
        }
        self.release_generation_if_unused(gen_index);
    }

    /// Stats and the access-log record of a connection that just closed.
    fn record_close(&mut self, slot: u32) {
        self.leave_faults(slot);
        self.release_resources(slot, false);
        self.leave_connection_limit(slot);
        let id = self.id;
        let now_ms = self.now_ms;
        let conn = &self.conns[slot as usize];
        let Some(g) = self.generations[conn.generation as usize].as_mut() else {
            return;
        };
        let fib: &Fib = &g.fib;
        self.shared
            .server_stats
            .dec(id, ServerStat::TotalConnections);
        let Some(listener) = fib.listeners.get(conn.fib_listener as usize) else {
            return;
        };
        listener.stats.dec(id, ListenerStat::DownstreamCxActive);
        listener.stats.inc(id, ListenerStat::DownstreamCxDestroy);
        let mut cluster_name = None;
        if let Some(cluster_id) = conn.cluster {
            let cluster = fib.cluster(cluster_id);
            cluster_name = Some(cluster.name.clone());
            if conn.connected {
                cluster.stats.dec(id, ClusterStat::UpstreamCxActive);
                cluster.stats.inc(id, ClusterStat::UpstreamCxDestroy);
                cluster.stats.inc(
                    id,
                    if conn.closed_by_backend {
                        ClusterStat::UpstreamCxDestroyRemote
                    } else {
                        ClusterStat::UpstreamCxDestroyLocal
                    },
                );
                if let Some(e) = conn.endpoint {
                    cluster.endpoints[e as usize].stats.dec(HostStat::CxActive);
                    let counts = &mut self.active.counts[g.active[cluster_id.0 as usize] as usize];
                    let a = &mut counts[e as usize];
                    *a = a.saturating_sub(1);
                }
            }
            if conn.flags.0 != 0 && !conn.flags.has(ResponseFlags::STREAM_IDLE_TIMEOUT) {
                if let Some(e) = conn.endpoint {
                    cluster.endpoints[e as usize].stats.inc(HostStat::RqError);
                }
            }
        }
        if conn.chain == conn::CHAIN_NONE {
            return;
        }
        let chain = listener.chain(conn.chain);
        chain.tcp_proxy.stats.dec(id, TcpStat::DownstreamCxActive);
        for sink in chain.tcp_proxy.access_logs.iter() {
            let record = AccessRecord {
                sink: sink.clone(),
                start_time_unix_ms: conn.start_unix_ms,
                duration_ms: now_ms.saturating_sub(conn.start_ms),
                bytes_received: conn.relay.bytes(Dir::Up).received,
                bytes_sent: conn.relay.bytes(Dir::Down).sent,
                downstream_remote: conn.remote,
                downstream_local: conn.local,
                upstream_host: conn.upstream,
                upstream_local: None,
                upstream_cluster: cluster_name.clone(),
                response_flags: conn.flags,
                termination_details: conn.termination_details,
            };
            if !self.shared.access_logs.push(id, record) {
                self.shared
                    .server_stats
                    .inc(id, ServerStat::AccessLogDropped);
            }
        }
    }

    /// The filter chain `slot` was decided on, in its own generation.
    fn chain_of(&self, slot: u32) -> Option<&crate::fib::FilterChain> {
        let conn = &self.conns[slot as usize];
        if conn.chain == conn::CHAIN_NONE {
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
    use crate::relay::Relay;

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
