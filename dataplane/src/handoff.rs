//! What the data plane hands its workers: the published [`Snapshot`] (a FIB and its listener
//! sockets), the [`Phase`] they run in, and the `Shared` block both sides hold.
//!
//! [`crate::plane`] writes these; workers only read them, except for their own progress
//! markers (which snapshot each adopted, whether it exited).
//!
//! Guarantees:
//! - **Listener sockets outlive their users.** A [`ListenerSockets`] closes its descriptors
//!   when its last reference goes, and every snapshot and worker slot that names it holds one,
//!   so a worker never acts on a descriptor number that was closed and reused.
//! - **No locks.** Workers read the snapshot with one `ArcSwap` load and everything else
//!   through atomics; each worker writes only its own marker slots.

use crate::accesslog::AccessLogQueues;
use crate::fib::Fib;
use crate::global_limit::GlobalConnections;
use crate::stats::ServerStats;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What workers do with listeners and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepting and relaying.
    Running = 0,
    /// Not accepting; open connections continue.
    Draining = 1,
    /// Closing every connection; workers exit when none is left.
    Stopped = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stopped,
        }
    }
}

/// The sockets of one listener: one per worker, bound to the same address.
#[derive(Debug)]
pub struct ListenerSockets {
    /// Unique for the life of the process: tells sockets apart even when fd numbers repeat.
    pub id: u64,
    /// Listener name.
    pub name: Arc<str>,
    /// Bound address (TCP or UDP, by the snapshot list that holds it).
    pub address: SocketAddr,
    /// Opened with `IP_TRANSPARENT`.
    pub transparent: bool,
    /// One `SO_REUSEPORT` socket per worker (true), or one socket every worker's descriptor
    /// names (false: `enable_reuse_port: false`).
    pub reuse_port: bool,
    /// TCP: `max_connections_to_accept_per_socket_event`; `None`: no bound (a multishot
    /// accept).
    pub accepts_per_event: Option<u32>,
    fds: Vec<OwnedFd>,
}

impl ListenerSockets {
    /// Sockets `fds`, one per worker (worker `i` uses `fds[i]`), owned from now on.
    pub(crate) fn new(
        id: u64,
        name: Arc<str>,
        address: SocketAddr,
        transparent: bool,
        reuse_port: bool,
        accepts_per_event: Option<u32>,
        fds: Vec<OwnedFd>,
    ) -> Self {
        ListenerSockets {
            id,
            name,
            address,
            transparent,
            reuse_port,
            accepts_per_event,
            fds,
        }
    }

    /// The socket of worker `worker`.
    pub fn fd(&self, worker: usize) -> Option<RawFd> {
        self.fds.get(worker).map(|f| f.as_raw_fd())
    }
}

/// What workers read: a FIB and the sockets of its listeners (same order as
/// `fib.listeners`).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every store (a publication, or listeners closing for a drain).
    pub epoch: u64,
    /// The forwarding table.
    pub fib: Arc<Fib>,
    /// Listener sockets, indexed like `fib.listeners`.
    pub listeners: Vec<Arc<ListenerSockets>>,
    /// UDP listener sockets, indexed like `fib.udp_listeners`.
    pub udp_listeners: Vec<Arc<ListenerSockets>>,
}

/// State shared by the handle and the workers. Workers only read it (atomics and one
/// `ArcSwap` load) and write their own progress markers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    phase: AtomicU8,
    pub drain_time_ms: u64,
    pub server_stats: Arc<ServerStats>,
    pub access_logs: Arc<AccessLogQueues>,
    /// Every client connection of every worker, and the global limit on them.
    pub global_connections: Arc<GlobalConnections>,
    adopted: Vec<AtomicU64>,
    exited: Vec<AtomicU8>,
    /// Per worker: milliseconds to sleep before adopting its next snapshot (a test's way to
    /// make a worker lag; 0 in service).
    adoption_delay_ms: Vec<AtomicU64>,
    /// Per worker: milliseconds to sleep right after acknowledging its next snapshot, before
    /// it handles anything else (a test's way to hold a worker there; 0 in service).
    after_adoption_delay_ms: Vec<AtomicU64>,
}

impl Shared {
    /// The block for `workers` workers: an empty snapshot, [`Phase::Running`], no worker
    /// adopted or exited yet.
    pub fn new(
        workers: usize,
        drain_time: Duration,
        server_stats: Arc<ServerStats>,
        access_logs: Arc<AccessLogQueues>,
    ) -> Self {
        Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            phase: AtomicU8::new(Phase::Running as u8),
            drain_time_ms: drain_time.as_millis() as u64,
            server_stats,
            access_logs,
            global_connections: Arc::default(),
            adopted: (0..workers).map(|_| AtomicU64::new(u64::MAX)).collect(),
            exited: (0..workers).map(|_| AtomicU8::new(0)).collect(),
            adoption_delay_ms: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            after_adoption_delay_ms: (0..workers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves every worker to `phase` (they see it at their next loop turn; the plane wakes
    /// them).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub fn worker_adopted(&self, worker: usize, epoch: u64) {
        self.adopted[worker].store(epoch, Ordering::Release);
    }

    pub fn worker_exited(&self, worker: usize) {
        self.exited[worker].store(1, Ordering::Release);
    }

    /// True when every worker adopted snapshot `epoch` (or a later one) or exited.
    pub fn all_adopted(&self, epoch: u64) -> bool {
        self.adopted
            .iter()
            .zip(self.exited.iter())
            .all(|(a, e)| a.load(Ordering::Acquire) >= epoch || e.load(Ordering::Acquire) == 1)
    }

    /// Makes every worker sleep `ms` milliseconds before its next adoption (tests).
    pub fn delay_next_adoption(&self, ms: u64) {
        set_every(&self.adoption_delay_ms, ms);
    }

    /// The delay a test asked worker `worker` to take before its next adoption (taken once).
    pub fn take_adoption_delay(&self, worker: usize) -> Option<Duration> {
        take_delay(&self.adoption_delay_ms[worker])
    }

    /// Makes every worker sleep `ms` milliseconds right after its next adoption (tests).
    pub fn delay_after_next_adoption(&self, ms: u64) {
        set_every(&self.after_adoption_delay_ms, ms);
    }

    /// The delay a test asked worker `worker` to take after its next adoption (taken once).
    pub fn take_after_adoption_delay(&self, worker: usize) -> Option<Duration> {
        take_delay(&self.after_adoption_delay_ms[worker])
    }
}

/// Sets every worker's delay to `ms` (a test hook).
fn set_every(delays: &[AtomicU64], ms: u64) {
    for d in delays {
        d.store(ms, Ordering::Relaxed);
    }
}

/// Takes a worker's delay (once): `None` when none was asked for.
fn take_delay(delay: &AtomicU64) -> Option<Duration> {
    match delay.swap(0, Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}
