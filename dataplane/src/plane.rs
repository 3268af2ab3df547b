//! The data plane handle: starts the workers, publishes FIBs, drains and stops. What it hands
//! the workers ([`Snapshot`], [`ListenerSockets`], the phase) is defined in
//! [`crate::handoff`].
//!
//! Guarantees:
//! - **One pointer swap.** [`DataPlane::publish`] opens the sockets of new listeners first
//!   (one SO_REUSEPORT socket per worker); if any fails, nothing changes and the error names
//!   the listener. Then the new [`Snapshot`] is swapped in and every worker is woken; a
//!   worker picks it up at its next loop turn.
//! - **Listener sockets outlive the workers' use of them.** Each worker's slot for a listener
//!   holds a reference to its [`ListenerSockets`]; a removed listener's sockets are closed when
//!   the last reference goes, which is after every worker that used them adopted the snapshot
//!   that removed it and its accept or receive posted its last completion, however late that
//!   is (the plane waits at most 2 s for a worker to adopt, but never closes under one). So a
//!   worker never acts on a descriptor number that was closed and reused.
//! - **Drain.** [`DataPlane::shutdown`] stops accepting, waits until every worker has served
//!   what the kernel had completed on its listeners (so each such connection is counted and
//!   logged, whatever the drain time), waits for open connections to finish up to the drain
//!   time, then closes what is left and joins the workers, which record every connection
//!   they close before they exit.

use crate::accesslog::AccessLogQueues;
use crate::fib::{Fib, Listener, UdpListener};
use crate::global_limit::GlobalConnections;
use crate::handoff::{ListenerSockets, Phase, Shared, Snapshot};
use crate::stats::{ServerStat, ServerStats};
use crate::sys::net::{self, EventFd};
use crate::sys::Ring;
use crate::worker::{Limits, Worker, WorkerError};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why the data plane could not start or publish.
#[derive(Debug)]
pub enum PlaneError {
    /// io_uring is not permitted here.
    IoUringRefused(std::io::Error),
    /// A listener's socket could not be opened.
    Listener {
        /// Listener name.
        name: String,
        /// Its address.
        address: SocketAddr,
        /// The bind/listen error.
        error: std::io::Error,
    },
    /// A worker failed to start.
    Worker(std::io::Error),
    /// TLS needs the bytes in user space: the splice relay cannot carry it.
    TlsNeedsBufferRing {
        /// The listener (`listener 'name'`) or cluster (`cluster 'name'`) with TLS.
        what: String,
    },
}

impl std::fmt::Display for PlaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlaneError::IoUringRefused(e) => write!(
                f,
                "io_uring is not permitted in this environment ({e}). Switchyard's data plane \
                 needs io_uring_setup, io_uring_enter and io_uring_register. Container runtimes' \
                 default seccomp profiles refuse them: run with a seccomp profile that allows \
                 them (Docker: --security-opt seccomp=<profile>; Kubernetes: \
                 securityContext.seccompProfile of type Unconfined or a Localhost profile), and \
                 check that the sysctl kernel.io_uring_disabled is 0 (or 1 with this user in \
                 kernel.io_uring_group)"
            ),
            PlaneError::Listener {
                name,
                address,
                error,
            } => {
                write!(f, "listener '{name}' ({address}): cannot listen: {error}")
            }
            PlaneError::Worker(e) => write!(f, "worker failed to start: {e}"),
            PlaneError::TlsNeedsBufferRing { what } => write!(
                f,
                "{what} speaks TLS (transport_socket envoy.transport_sockets.tls) or HBONE's \
                 HTTP/2, which need the bytes in user space: run with --relay-mode buffer-ring \
                 (the default), not splice"
            ),
        }
    }
}

impl std::error::Error for PlaneError {}

/// How to start the data plane.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// CPUs to run workers on, one worker per entry (pinned when `pin` is set).
    pub cpus: Vec<usize>,
    /// Pin each worker to its CPU.
    pub pin: bool,
    /// Sizes.
    pub limits: Limits,
    /// How long connections of a removed listener may continue before they are closed.
    pub drain_time: Duration,
}

/// How long a shutdown waits for every worker to serve what its drained listeners had
/// accepted or queued (a worker does that within a loop turn; this only bounds a stuck one).
pub const LET_GO_TIMEOUT: Duration = Duration::from_secs(2);

/// A running data plane.
#[derive(Debug)]
pub struct DataPlane {
    shared: Arc<Shared>,
    wakers: Vec<Arc<EventFd>>,
    threads: Vec<JoinHandle<()>>,
    next_socket_id: AtomicU64,
    next_epoch: AtomicU64,
    fib_view: Arc<ArcSwap<Fib>>,
    /// Workers have datagram buffers (`Limits::datagram_buffers_per_worker` > 0).
    udp_enabled: bool,
    /// How workers relay (TLS needs the buffer-ring relay).
    relay_mode: crate::worker::RelayMode,
    /// The TCP listeners' sockets the drain closed (the control thread's only).
    drained: Mutex<Vec<Weak<ListenerSockets>>>,
}

impl DataPlane {
    /// Starts one worker per CPU with an empty FIB. Fails fast, with a message saying how to
    /// fix it, when io_uring is refused.
    pub fn start(
        config: PlaneConfig,
        server_stats: Arc<ServerStats>,
        access_logs: Arc<AccessLogQueues>,
    ) -> Result<DataPlane, PlaneError> {
        Ring::probe().map_err(|e| match e {
            crate::sys::RingError::Refused(e) => PlaneError::IoUringRefused(e),
            crate::sys::RingError::Other(e) => PlaneError::Worker(e),
        })?;
        let workers = config.cpus.len().max(1);
        let shared = Arc::new(Shared::new(
            workers,
            config.drain_time,
            server_stats,
            access_logs,
        ));
        let mut plane = DataPlane {
            shared,
            wakers: Vec::new(),
            threads: Vec::new(),
            next_socket_id: AtomicU64::new(1),
            next_epoch: AtomicU64::new(1),
            fib_view: Arc::new(ArcSwap::from_pointee(Fib::default())),
            udp_enabled: config.limits.datagram_buffers_per_worker > 0,
            relay_mode: config.limits.relay_mode,
            drained: Mutex::new(Vec::new()),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for (index, cpu) in config.cpus.iter().copied().enumerate() {
            let waker = Arc::new(EventFd::new().map_err(PlaneError::Worker)?);
            plane.wakers.push(waker.clone());
            let shared = plane.shared.clone();
            let ready = ready_tx.clone();
            let (limits, pin) = (config.limits, config.pin);
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    if pin {
                        if let Err(e) = net::pin_current_thread(cpu) {
                            tracing::warn!(worker = index, cpu, error = %e, "cannot pin worker");
                        }
                    }
                    match Worker::new(index, shared, waker, limits) {
                        Ok(worker) => {
                            let _ = ready.send(Ok(()));
                            worker.run();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })
                .map_err(PlaneError::Worker)?;
            plane.threads.push(thread);
        }
        drop(ready_tx);
        for _ in 0..plane.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(WorkerError::IoUringRefused(e))) => {
                    plane.abort_start();
                    return Err(PlaneError::IoUringRefused(e));
                }
                Ok(Err(WorkerError::Setup(e))) => {
                    plane.abort_start();
                    return Err(PlaneError::Worker(e));
                }
                Err(_) => {
                    plane.abort_start();
                    return Err(PlaneError::Worker(std::io::Error::other("worker exited")));
                }
            }
        }
        Ok(plane)
    }

    fn abort_start(&mut self) {
        self.shared.set_phase(Phase::Stopped);
        self.wake_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.wakers.len()
    }

    /// The FIB workers use now, for readers outside the data plane (admin).
    pub fn fib_view(&self) -> Arc<ArcSwap<Fib>> {
        self.fib_view.clone()
    }

    /// The process-wide client connection count and its limit (the control plane sets the
    /// limit from the runtime or the overload manager).
    pub fn global_connections(&self) -> Arc<GlobalConnections> {
        self.shared.global_connections.clone()
    }

    /// Publishes `fib`: opens new listeners' sockets (or fails, changing nothing), swaps the
    /// snapshot, wakes the workers and waits (bounded) until each adopted it. While the plane
    /// is draining, listeners stay closed.
    pub fn publish(&self, fib: Arc<Fib>) -> Result<(), PlaneError> {
        self.check_relay_mode(&fib)?;
        let old = self.shared.snapshot.load_full();
        let listeners = self.follow_sockets(
            &fib.listeners,
            &old.listeners,
            |l: &Listener| {
                let options = (l.transparent, l.reuse_port, l.max_accepts_per_event);
                (&l.name, l.address, options)
            },
            |l| net::listen_reuseport(l.address, l.backlog, l.transparent),
            |l| net::listen_shared(l.address, l.backlog, l.transparent),
        )?;
        let udp_listeners = self.follow_sockets(
            &fib.udp_listeners,
            &old.udp_listeners,
            |l: &UdpListener| (&l.name, l.address, (false, true, None)),
            |l| self.bind_udp(l.address),
            |l| self.bind_udp(l.address),
        )?;
        self.fib_view.store(fib.clone());
        self.store_snapshot(fib, listeners, udp_listeners);
        drop(old);
        Ok(())
    }

    /// Refuses a FIB with TLS when the workers splice: they never see the bytes. (The
    /// listener filters that read first, the PROXY protocol's and the TLS inspector, work in
    /// either mode: the bytes they read are sent on from their ring buffer, then the relay
    /// splices.)
    fn check_relay_mode(&self, fib: &Fib) -> Result<(), PlaneError> {
        if self.relay_mode != crate::worker::RelayMode::Splice {
            return Ok(());
        }
        let listener = fib.listeners.iter().find(|l| {
            l.filter_chains
                .iter()
                .chain(l.default_chain.as_ref())
                .any(|c| c.tls.is_some() || c.hbone.is_some() || c.tcp_proxy.tunneling.is_some())
        });
        let what = match listener {
            Some(l) => format!("listener '{}'", l.name),
            None => match fib
                .clusters
                .iter()
                .find(|c| c.tls.is_some() || c.http2.is_some())
            {
                Some(c) => format!("cluster '{}'", c.name),
                None => return Ok(()),
            },
        };
        Err(PlaneError::TlsNeedsBufferRing { what })
    }

    /// The sockets of one list of `listeners`: the old snapshot's (`old`) where name,
    /// address, `transparent`, `reuse_port` and the accept bound (given by `key`) are the same, so the workers
    /// keep them and what uses them (connections, UDP sessions); otherwise one new socket per
    /// worker, each made by `bind`, or (no `reuse_port`) one made by `bind_shared` whose
    /// descriptor is duplicated for each worker. None while draining. Fails, naming the listener, at the first socket
    /// that cannot be made; the sockets already made are closed.
    fn follow_sockets<L>(
        &self,
        listeners: &[L],
        old: &[Arc<ListenerSockets>],
        key: impl Fn(&L) -> (&Arc<str>, SocketAddr, (bool, bool, Option<u32>)),
        bind: impl Fn(&L) -> std::io::Result<OwnedFd>,
        bind_shared: impl Fn(&L) -> std::io::Result<OwnedFd>,
    ) -> Result<Vec<Arc<ListenerSockets>>, PlaneError> {
        if self.shared.phase() != Phase::Running {
            return Ok(Vec::new());
        }
        listeners
            .iter()
            .map(|listener| {
                let (name, address, (transparent, reuse_port, accepts_per_event)) = key(listener);
                let reused = old.iter().find(|s| {
                    s.name == *name
                        && s.address == address
                        && s.transparent == transparent
                        && s.reuse_port == reuse_port
                        && s.accepts_per_event == accepts_per_event
                });
                if let Some(s) = reused {
                    return Ok(s.clone());
                }
                let fds = if reuse_port {
                    (0..self.worker_count())
                        .map(|_| bind(listener))
                        .collect::<Result<Vec<_>, _>>()
                } else {
                    bind_shared(listener).and_then(|fd| {
                        (0..self.worker_count())
                            .map(|_| fd.try_clone())
                            .collect::<Result<Vec<_>, _>>()
                    })
                }
                .map_err(|error| PlaneError::Listener {
                    name: name.to_string(),
                    address,
                    error,
                })?;
                Ok(Arc::new(ListenerSockets::new(
                    self.next_socket_id.fetch_add(1, Ordering::Relaxed),
                    name.clone(),
                    address,
                    transparent,
                    reuse_port,
                    accepts_per_event,
                    fds,
                )))
            })
            .collect()
    }

    /// One worker's UDP listener socket; refused when workers have no datagram buffers.
    fn bind_udp(&self, address: SocketAddr) -> std::io::Result<OwnedFd> {
        if !self.udp_enabled {
            return Err(std::io::Error::other(
                "UDP listeners need datagram buffers (datagram_buffers_per_worker is 0)",
            ));
        }
        net::bind_udp_reuseport(address)
    }

    /// Swaps in a snapshot, wakes the workers and waits until each adopted it, so sockets
    /// only the old snapshot held are closed after no worker uses them.
    fn store_snapshot(
        &self,
        fib: Arc<Fib>,
        listeners: Vec<Arc<ListenerSockets>>,
        udp_listeners: Vec<Arc<ListenerSockets>>,
    ) {
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        self.shared.snapshot.store(Arc::new(Snapshot {
            epoch,
            fib,
            listeners,
            udp_listeners,
        }));
        self.wake_all();
        self.wait_adopted(epoch, Duration::from_secs(2));
    }

    /// Polls, first every few microseconds (a woken worker adopts within microseconds unless
    /// it is busy), backing off to every millisecond: the control thread publishes the next
    /// change that much sooner.
    fn wait_adopted(&self, epoch: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(5);
        while Instant::now() < deadline {
            if self.shared.all_adopted(epoch) {
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        tracing::warn!(epoch, "not every worker adopted the new snapshot in time");
    }

    fn wake_all(&self) {
        for w in self.wakers.iter() {
            w.wake();
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.shared.set_phase(phase);
        self.wake_all();
    }

    /// Stops accepting and closes every listener socket, so new connections are refused;
    /// open connections continue (POST /drain_listeners, and the start of a shutdown).
    ///
    /// Each worker serves what its sockets had accepted or queued, then stops them listening,
    /// so a newer process on the same ports (a rolling update) takes every new connection. A
    /// connection the kernel completes between a worker's last accept and that moment moves
    /// to the newer process only with `net.ipv4.tcp_migrate_req = 1`; otherwise it is reset,
    /// and the drain says so in its log.
    pub fn drain_listeners(&self) {
        self.drain_listeners_held();
    }

    /// [`DataPlane::drain_listeners`]; returns the drained TCP listeners' sockets, which
    /// live while some worker still holds them (has not served what they had queued).
    fn drain_listeners_held(&self) -> Vec<Weak<ListenerSockets>> {
        let mut drained = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        if self.shared.phase() == Phase::Running {
            drained.extend(
                self.shared
                    .snapshot
                    .load()
                    .listeners
                    .iter()
                    .map(Arc::downgrade),
            );
            let has_tcp = !self.shared.snapshot.load().listeners.is_empty();
            if has_tcp && net::tcp_migrate_req() == Some(false) {
                tracing::info!(
                    "draining with net.ipv4.tcp_migrate_req = 0: a connection that completes \
while a listener closes is reset instead of moving to another process on its port (set it to \
1 for rolling updates)"
                );
            }
            self.set_phase(Phase::Draining);
            let fib = self.shared.snapshot.load().fib.clone();
            self.store_snapshot(fib, Vec::new(), Vec::new());
        }
        drained.clone()
    }

    /// Makes every worker sleep `delay` before it adopts its next snapshot, as a worker busy
    /// with a long batch would: for tests of what a lagging worker must never see.
    #[doc(hidden)]
    pub fn delay_next_adoption_for_test(&self, delay: Duration) {
        self.shared
            .delay_next_adoption(delay.as_millis().max(1) as u64);
    }

    /// Makes every worker sleep `delay` right after it acknowledges its next snapshot, as a
    /// worker taken off its CPU there would: for tests of what the plane must wait for.
    #[doc(hidden)]
    pub fn delay_after_next_adoption_for_test(&self, delay: Duration) {
        self.shared
            .delay_after_next_adoption(delay.as_millis().max(1) as u64);
    }

    /// Connections open on all workers.
    pub fn open_connections(&self) -> i64 {
        self.shared.server_stats.gauge(ServerStat::TotalConnections)
    }

    /// Stops accepting, lets connections finish for up to `drain_time`, closes the rest and
    /// joins the workers.
    ///
    /// Every connection the kernel completed before the listeners closed is served first,
    /// whatever the drain time (0 included): a worker serves what its accept and its socket's
    /// queue still held when it lets go of a drained listener's socket, so the plane waits
    /// for every worker to let go (bounded by [`LET_GO_TIMEOUT`]) before it looks at the
    /// open connections. Before, a connection whose accept completed between a worker's
    /// adoption of the drain and its next loop turn was not yet counted, the plane could
    /// stop at once, and the worker then closed it without stats or access-log record.
    pub fn shutdown(self, drain_time: Duration) {
        self.shutdown_cut_by(drain_time, &AtomicBool::new(false));
    }

    /// [`DataPlane::shutdown`], whose wait for open connections ends as soon as `cut` is set
    /// (a second stop signal): what is still open is closed then, and recorded as usual.
    pub fn shutdown_cut_by(mut self, drain_time: Duration, cut: &AtomicBool) {
        let started = Instant::now();
        let drained = self.drain_listeners_held();
        let let_go_by = started + LET_GO_TIMEOUT;
        while Instant::now() < let_go_by && drained.iter().any(|l| l.strong_count() > 0) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let deadline = started + drain_time;
        while Instant::now() < deadline
            && self.open_connections() > 0
            && !cut.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.set_phase(Phase::Stopped);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.snapshot.store(Arc::new(Snapshot::default()));
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.set_phase(Phase::Stopped);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}
