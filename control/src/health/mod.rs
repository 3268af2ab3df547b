//! The `health` thread: active health checks and outlier detection, off the workers.
//!
//! # What it does
//!
//! - Follows the published FIB (`ArcSwap`), and for every cluster with `health_checks` or
//!   `outlier_detection` keeps per-host state keyed by the host's shared stat block, so the
//!   state of a host survives every FIB swap that keeps the host (by cluster and address).
//! - Runs each host's TCP check on its own schedule ([`active`]), all with non-blocking
//!   sockets and one `poll(2)`: a host that hangs costs its own check's timeout, nobody
//!   else's.
//! - Decides ejections when a worker reports a failure run at a threshold, and returns
//!   ejected hosts on the `interval` tick ([`outlier`]).
//! - Writes results only into the shared flags (`switchyard_dataplane::health`) and bumps the
//!   cluster's health epoch; workers rebuild their balancers from the flags at their next
//!   pick. It never touches a worker, a FIB, or a lock the workers take.
//!
//! # Waking up
//!
//! It sleeps in `poll` until the next check starts or times out, a socket is ready, the next
//! outlier tick, or its eventfd is written: by a worker asking for a review, by
//! [`HealthThread::follow`] after a publication, or by [`HealthThread::stop`]. It also looks
//! at the FIB at least every [`MAX_SLEEP`].
//!
//! At start the control thread gives it the first FIB before publishing it and waits for the
//! first check of every checked host ([`HealthThread::wait_first_checks`]), so the listeners
//! open with hosts already known healthy or not, as in Envoy.

mod active;
mod event_log;
mod outlier;

pub use event_log::OutlierEventLog;

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use switchyard_dataplane::fib::{Cluster, Fib, HealthPolicy};
use switchyard_dataplane::health::{
    ClusterHealth, HealthSignal, ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, FAILED_OUTLIER_CHECK,
    PENDING_ACTIVE_HC,
};
use switchyard_dataplane::host::HostState;
use switchyard_dataplane::lb::Rng;
use switchyard_dataplane::stats::{ClusterStat, ClusterStats, HealthStat};
use switchyard_dataplane::{poll, PollFd};

/// The longest the thread sleeps without looking at the FIB.
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// What [`HealthThread::wait_first_checks`] allows beyond the longest first check.
const FIRST_CHECKS_MARGIN: Duration = Duration::from_millis(250);

/// Polls `done` every 2 ms until it holds or `timeout` passes.
fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The running health thread; stopped when dropped.
#[derive(Debug)]
pub struct HealthThread {
    /// The FIB it follows: the last one published (see [`HealthThread::follow`]).
    fib: Arc<ArcSwap<Fib>>,
    stop: Arc<AtomicBool>,
    signal: Option<Arc<HealthSignal>>,
    thread: Option<JoinHandle<()>>,
}

impl HealthThread {
    /// Starts the thread over `first` (the FIB about to be published); `signal` is the
    /// eventfd workers and the control thread write to wake it (the registry's).
    /// Outlier decisions go to `event_log` when given
    /// (`cluster_manager.outlier_detection.event_log_path`).
    pub fn spawn(
        first: Arc<Fib>,
        signal: Option<Arc<HealthSignal>>,
        event_log: Option<OutlierEventLog>,
    ) -> std::io::Result<Self> {
        let fib = Arc::new(ArcSwap::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("health".into()).spawn({
            let (fib, stop, signal) = (fib.clone(), stop.clone(), signal.clone());
            move || run(&fib, signal.as_deref(), &stop, event_log)
        })?;
        Ok(HealthThread {
            fib,
            stop,
            signal,
            thread: Some(thread),
        })
    }

    /// Follows `fib`, just published, at once.
    pub fn follow(&self, fib: Arc<Fib>) {
        self.fib.store(fib);
        if let Some(signal) = &self.signal {
            signal.wake();
        }
    }

    /// Waits until every checked host of the FIB followed now has had its first check, as
    /// Envoy initialises its clusters before its listeners; bounded by the longest first
    /// check (`initial_jitter` + `timeout`) plus a margin. False when it timed out.
    pub fn wait_first_checks(&self) -> bool {
        let fib = self.fib.load_full();
        let longest_ms = fib
            .clusters
            .iter()
            .filter_map(|c| c.health.health_check.as_ref())
            .map(|hc| hc.initial_jitter_ms + hc.timeout_ms)
            .max();
        let Some(longest_ms) = longest_ms else {
            return true;
        };
        let pending = || {
            fib.clusters
                .iter()
                .filter(|c| c.health.health_check.is_some())
                .flat_map(|c| &c.endpoints)
                .any(|e| e.health().flags() & PENDING_ACTIVE_HC != 0)
        };
        wait(
            Duration::from_millis(longest_ms) + FIRST_CHECKS_MARGIN,
            || !pending(),
        )
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(signal) = &self.signal {
            signal.wake();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HealthThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One host as the health thread knows it.
#[derive(Debug)]
pub(crate) struct HostEntry {
    address: SocketAddr,
    /// The host's shared block (its flags and failure run); its address is the host's
    /// identity across FIBs.
    stats: Arc<HostState>,
    outlier: outlier::OutlierHost,
    active: active::ActiveHost,
}

impl HostEntry {
    fn new(address: SocketAddr, stats: Arc<HostState>) -> Self {
        HostEntry {
            address,
            stats,
            outlier: Default::default(),
            active: Default::default(),
        }
    }
}

/// One cluster whose hosts' health is tracked.
#[derive(Debug)]
struct ClusterEntry {
    name: Arc<str>,
    health: Arc<ClusterHealth>,
    /// The cluster's stats: has it carried a connection yet?
    stats: Arc<ClusterStats>,
    policy: HealthPolicy,
    hosts: Vec<HostEntry>,
    /// The next outlier `interval` tick.
    next_tick: Option<Instant>,
}

impl ClusterEntry {
    /// The cluster has carried a connection (until then checks use `no_traffic_interval`).
    fn has_traffic(&self) -> bool {
        self.stats.get(ClusterStat::UpstreamCxTotal) > 0
    }
}

/// Everything the thread keeps.
struct State {
    generation: u64,
    clusters: Vec<ClusterEntry>,
    rng: Rng,
    event_log: Option<OutlierEventLog>,
}

fn run(
    fib: &ArcSwap<Fib>,
    signal: Option<&HealthSignal>,
    stop: &AtomicBool,
    event_log: Option<OutlierEventLog>,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = State {
        generation: u64::MAX,
        clusters: Vec::new(),
        rng: Rng::new(seed),
        event_log,
    };
    let mut fds: Vec<PollFd> = Vec::new();
    let mut owners: Vec<(usize, usize)> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let current = fib.load();
        if current.generation != state.generation {
            state.reconcile(&current, Instant::now());
        }
        drop(current);
        let now = Instant::now();
        state.work(now);
        fds.clear();
        owners.clear();
        if let Some(s) = signal {
            fds.push(PollFd::new(s.fd(), PollFd::READABLE));
        }
        for (ci, c) in state.clusters.iter().enumerate() {
            for (hi, h) in c.hosts.iter().enumerate() {
                if let Some(fd) = h.active.poll_fd() {
                    fds.push(fd);
                    owners.push((ci, hi));
                }
            }
        }
        let sleep = state
            .next_wake()
            .map_or(MAX_SLEEP, |t| t.saturating_duration_since(now))
            .min(MAX_SLEEP);
        // Round up so a check due in 0.3 ms does not spin.
        let timeout_ms = sleep.as_micros().div_ceil(1000) as i32;
        if let Err(e) = poll(&mut fds, timeout_ms) {
            tracing::warn!(error = %e, "health thread: poll failed");
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let skip = usize::from(signal.is_some());
        if let Some(s) = signal.filter(|_| fds[0].ready()) {
            s.take();
        }
        let now = Instant::now();
        for (fd, &(ci, hi)) in fds[skip..].iter().zip(&owners) {
            if fd.ready() {
                state.on_ready(ci, hi, now);
            }
        }
    }
}

impl State {
    /// Follows a new FIB: keeps the state of every host it still has, starts tracking new
    /// hosts and clusters, forgets the rest.
    fn reconcile(&mut self, fib: &Fib, now: Instant) {
        self.generation = fib.generation;
        let mut previous: HashMap<Arc<str>, ClusterEntry> = self
            .clusters
            .drain(..)
            .map(|c| (c.name.clone(), c))
            .collect();
        for cluster in &fib.clusters {
            let entry = previous.remove(&cluster.name);
            if cluster.health.tracks_health() {
                let entry = self.follow(entry, cluster, now);
                self.clusters.push(entry);
            } else if let Some(entry) = entry {
                // No longer checked: what the checks decided no longer holds.
                settle_flags(cluster, ALL_FLAGS);
                forget(&entry);
            }
        }
        // Clusters that left the FIB: their health block lives on by name (a cluster added
        // back under it must not start with their ejections).
        previous.values().for_each(forget);
    }

    /// `entry` (the cluster's state so far, if any) brought to `cluster` as now published.
    fn follow(
        &mut self,
        entry: Option<ClusterEntry>,
        cluster: &Cluster,
        now: Instant,
    ) -> ClusterEntry {
        let mut entry = entry.unwrap_or_else(|| ClusterEntry {
            name: cluster.name.clone(),
            health: cluster.health_state.clone(),
            stats: cluster.stats.clone(),
            policy: cluster.health.clone(),
            hosts: Vec::new(),
            next_tick: None,
        });
        let was_checked = entry.policy.health_check.is_some() && !entry.hosts.is_empty();
        entry.health = cluster.health_state.clone();
        entry.stats = cluster.stats.clone();
        entry.policy = cluster.health.clone();
        let mut known: HashMap<*const HostState, HostEntry> = entry
            .hosts
            .drain(..)
            .map(|h| (Arc::as_ptr(&h.stats), h))
            .collect();
        // One entry per host block: an address listed twice shares one block (compile keys
        // blocks by address), and must be checked and ejected once.
        let mut seen = std::collections::HashSet::new();
        entry.hosts = cluster
            .endpoints
            .iter()
            .filter(|e| seen.insert(Arc::as_ptr(&e.stats)))
            .map(|e| {
                known
                    .remove(&Arc::as_ptr(&e.stats))
                    .unwrap_or_else(|| HostEntry::new(e.address, e.stats.clone()))
            })
            .collect();
        // Hosts that left while ejected no longer count as ejected.
        let gone_ejected = known.values().filter(|h| h.outlier.is_ejected()).count() as u64;
        if gone_ejected > 0 {
            let active = entry.health.get(HealthStat::EjectionsActive);
            entry.health.set(
                HealthStat::EjectionsActive,
                active.saturating_sub(gone_ejected),
            );
        }
        // Flags of a mechanism the cluster no longer has are cleared; hosts that an active
        // check covers for the first time are checked at once.
        let mut stale = 0;
        if entry.policy.health_check.is_none() {
            stale |= FAILED_ACTIVE_HC | PENDING_ACTIVE_HC | ACTIVE_HC_TIMEOUT;
        }
        if entry.policy.outlier.is_none() {
            stale |= FAILED_OUTLIER_CHECK;
        }
        settle_flags(cluster, stale);
        if entry.policy.health_check.is_some() && !was_checked {
            // Hosts that were serving keep serving until their first check decides (new
            // hosts come from compile already failed, as in Envoy).
            for e in &cluster.endpoints {
                e.health().set(PENDING_ACTIVE_HC);
            }
        }
        match &entry.policy.outlier {
            Some(o) => {
                entry.next_tick = entry
                    .next_tick
                    .or_else(|| Some(now + Duration::from_millis(o.interval_ms)));
            }
            None => {
                entry.next_tick = None;
                entry
                    .hosts
                    .iter_mut()
                    .for_each(|h| h.outlier = Default::default());
                entry.health.set(HealthStat::EjectionsActive, 0);
            }
        }
        match &entry.policy.health_check {
            Some(hc) => {
                let hc = hc.clone();
                for h in &mut entry.hosts {
                    h.active.schedule_first(&hc, &mut self.rng, now);
                }
            }
            None => entry.hosts.iter_mut().for_each(|h| h.active.cancel()),
        }
        entry
    }

    /// Reviews, ticks, and starts or times out checks that are due.
    fn work(&mut self, now: Instant) {
        for c in &mut self.clusters {
            if let Some(o) = &c.policy.outlier {
                if c.health.take_review() {
                    let log = &mut self.event_log;
                    outlier::review(o, &c.health, &mut c.hosts, &mut self.rng, now, log);
                }
                if c.next_tick.is_some_and(|t| now >= t) {
                    outlier::tick(o, &c.health, &mut c.hosts, now, &mut self.event_log);
                    c.next_tick = Some(now + Duration::from_millis(o.interval_ms));
                }
            }
            if let Some(hc) = &c.policy.health_check {
                let mut sched = active::Schedule {
                    now,
                    has_traffic: c.has_traffic(),
                    rng: &mut self.rng,
                };
                for host in &mut c.hosts {
                    let outcome = active::advance(hc, &c.health, host, &mut sched);
                    after_check(&c.policy, &c.health, host, outcome, &mut self.event_log);
                }
            }
        }
    }

    /// Host `hi` of cluster `ci` has its check's socket ready.
    fn on_ready(&mut self, ci: usize, hi: usize, now: Instant) {
        let Some(c) = self.clusters.get_mut(ci) else {
            return;
        };
        let has_traffic = c.has_traffic();
        let Some(hc) = &c.policy.health_check else {
            return;
        };
        let Some(host) = c.hosts.get_mut(hi) else {
            return;
        };
        let mut sched = active::Schedule {
            now,
            has_traffic,
            rng: &mut self.rng,
        };
        let outcome = active::on_ready(hc, &c.health, host, &mut sched);
        after_check(&c.policy, &c.health, host, outcome, &mut self.event_log);
    }

    /// The earliest time something is due.
    fn next_wake(&self) -> Option<Instant> {
        self.clusters
            .iter()
            .flat_map(|c| {
                c.next_tick
                    .into_iter()
                    .chain(c.hosts.iter().filter_map(|h| h.active.wake_at()))
            })
            .min()
    }
}

/// A cluster no longer tracked: nothing of it counts as ejected or waits for review.
fn forget(entry: &ClusterEntry) {
    entry.health.set(HealthStat::EjectionsActive, 0);
    entry.health.take_review();
}

/// Every flag the health thread may set.
const ALL_FLAGS: u32 =
    FAILED_ACTIVE_HC | PENDING_ACTIVE_HC | ACTIVE_HC_TIMEOUT | FAILED_OUTLIER_CHECK;

/// Clears `flags` on every host of `cluster`, telling the workers when that changed anything.
fn settle_flags(cluster: &Cluster, flags: u32) {
    if flags == 0 {
        return;
    }
    let mut changed = false;
    for e in &cluster.endpoints {
        changed |= e.health().clear(flags);
    }
    if changed {
        cluster.health_state.bump_epoch();
    }
}

/// Envoy's `successful_active_health_check_uneject_host`: a passing check returns an
/// ejected host.
fn after_check(
    policy: &HealthPolicy,
    health: &ClusterHealth,
    host: &mut HostEntry,
    outcome: Option<active::Outcome>,
    log: &mut Option<OutlierEventLog>,
) {
    let uneject = policy
        .outlier
        .is_some_and(|o| o.successful_active_health_check_uneject_host);
    if outcome == Some(active::Outcome::Pass) && uneject && host.outlier.is_ejected() {
        outlier::uneject(health, host, Instant::now(), log);
        health.bump_epoch();
    }
}
