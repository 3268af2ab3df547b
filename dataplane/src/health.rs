//! Endpoint health as the workers see it: flags and counters shared by the workers and the
//! control plane's health thread, which outlive FIB generations.
//!
//! # Who writes what
//!
//! - The **health thread** (control) sets and clears a host's [`HostHealth`] flags: active
//!   health checks (`FAILED_ACTIVE_HC`, `PENDING_ACTIVE_HC`) and outlier ejection
//!   (`FAILED_OUTLIER_CHECK`). After any change it bumps its cluster's
//!   [`ClusterHealth::epoch`].
//! - **Workers** report connect outcomes: a success clears the host's consecutive-failure
//!   count, a failure adds one. The failure that reaches the cluster's lowest ejection
//!   threshold raises [`ClusterHealth::needs_review`] and wakes the health thread through its
//!   eventfd (one `write(2)`, never blocking); the ejection itself is decided there, where
//!   the cluster-wide `max_ejection_percent` can be applied without races.
//! - Workers read the flags only when a cluster's epoch has moved since they last looked: they
//!   then rebuild that cluster's balancer over the hosts that are healthy now (one allocation
//!   per health change, as for a new FIB; a pick itself reads one atomic).
//!
//! # Guarantees
//!
//! - Health survives FIB swaps: flags live in the host's [`crate::host::HostState`], which a
//!   new FIB takes over from the previous one for every endpoint it keeps (by address); the
//!   cluster block is fetched by cluster name.
//! - Nothing here locks or allocates after construction.

use crate::stats::HealthStat;
use crate::sys::net::EventFd;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// The host failed its active health check (Envoy's `/failed_active_hc`).
pub const FAILED_ACTIVE_HC: u32 = 1;
/// The host is ejected by outlier detection (Envoy's `/failed_outlier_check`).
pub const FAILED_OUTLIER_CHECK: u32 = 2;
/// The host has not had its first active health check yet (Envoy's `/pending_active_hc`);
/// set together with [`FAILED_ACTIVE_HC`].
pub const PENDING_ACTIVE_HC: u32 = 4;

/// The host's last active check timed out (Envoy's `/active_hc_timeout`).
pub const ACTIVE_HC_TIMEOUT: u32 = 8;

/// Flags that take a host out of load balancing.
const UNHEALTHY: u32 = FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK;

/// One host's health: flags and the consecutive connect failures outlier detection counts.
/// Twelve bytes per endpoint (asserted below), inside its [`crate::host::HostState`].
#[derive(Debug, Default)]
pub struct HostHealth {
    flags: AtomicU32,
    consecutive_failures: AtomicU32,
    /// How many failure runs a success has ended: tells the health thread that a run it
    /// saw ended, even when a new one has grown as long since.
    runs_ended: AtomicU32,
}

// Three 4-byte atomics; part of the per-endpoint cost `host::HostState` states.
const _: () = assert!(std::mem::size_of::<HostHealth>() == 12);

impl HostHealth {
    /// The current flags (0: healthy).
    #[inline]
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    /// True when no flag takes the host out of load balancing.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.flags() & UNHEALTHY == 0
    }

    /// Sets `flags`; true when that changed anything.
    pub fn set(&self, flags: u32) -> bool {
        self.flags.fetch_or(flags, Ordering::AcqRel) & flags != flags
    }

    /// Clears `flags`; true when that changed anything.
    pub fn clear(&self, flags: u32) -> bool {
        self.flags.fetch_and(!flags, Ordering::AcqRel) & flags != 0
    }

    /// A connect to this host succeeded: the failure run is over. Writes only when there
    /// was a run, so a healthy host's cache line stays shared between workers.
    #[inline]
    pub fn connect_succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.runs_ended.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many failure runs successes have ended so far.
    pub fn runs_ended(&self) -> u32 {
        self.runs_ended.load(Ordering::Relaxed)
    }

    /// A connect to this host failed; returns the length of the failure run, this one
    /// included.
    #[inline]
    pub fn connect_failed(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The current failure run.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Ends the failure run (after an ejection decision, and on return).
    pub fn reset_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// Wakes the health thread: an eventfd it polls together with its health-check sockets.
#[derive(Debug)]
pub struct HealthSignal {
    fd: EventFd,
}

impl HealthSignal {
    /// A fresh signal.
    pub fn new() -> io::Result<Self> {
        Ok(HealthSignal {
            fd: EventFd::new()?,
        })
    }

    /// Wakes the health thread (one non-blocking `write(2)`).
    pub fn wake(&self) {
        self.fd.wake();
    }

    /// Resets the signal after a wake-up; false when it was not raised.
    pub fn take(&self) -> bool {
        self.fd.drain()
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd.raw()
    }
}

/// One cluster's health state shared by the workers and the health thread, by cluster name,
/// across FIB generations; holds the cluster's `outlier_detection.*` and `health_check.*`
/// stats.
#[derive(Debug)]
pub struct ClusterHealth {
    /// The cluster's name.
    pub name: Arc<str>,
    epoch: AtomicU64,
    needs_review: AtomicBool,
    signal: Option<Arc<HealthSignal>>,
    stats: [AtomicU64; HealthStat::ALL.len()],
}

impl Default for ClusterHealth {
    /// An unnamed block that wakes nobody (for FIBs built by hand in tests).
    fn default() -> Self {
        ClusterHealth::new("", None)
    }
}

impl ClusterHealth {
    /// A block for cluster `name`; `signal` wakes the health thread (`None`: nobody to wake,
    /// as in unit tests).
    pub fn new(name: impl Into<Arc<str>>, signal: Option<Arc<HealthSignal>>) -> Self {
        ClusterHealth {
            name: name.into(),
            epoch: AtomicU64::new(0),
            needs_review: AtomicBool::new(false),
            signal,
            stats: Default::default(),
        }
    }

    /// Moves each time a host's health changes; a worker whose balancer was built at another
    /// value rebuilds it.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Announces a change of some host's flags to the workers.
    pub fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A worker saw a host reach an ejection threshold: asks the health thread to review
    /// the cluster. Wakes it once per review, not once per failure.
    pub fn request_review(&self) {
        if !self.needs_review.swap(true, Ordering::AcqRel) {
            if let Some(signal) = &self.signal {
                signal.wake();
            }
        }
    }

    /// The health thread takes the review request; true when there was one.
    pub fn take_review(&self) -> bool {
        self.needs_review.swap(false, Ordering::AcqRel)
    }

    /// Adds one to `stat`.
    pub fn inc(&self, stat: HealthStat) {
        self.stats[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets gauge `stat`.
    pub fn set(&self, stat: HealthStat, value: u64) {
        self.stats[stat as usize].store(value, Ordering::Relaxed);
    }

    /// The value of `stat`.
    pub fn get(&self, stat: HealthStat) -> u64 {
        self.stats[stat as usize].load(Ordering::Relaxed)
    }

    /// Zeroes every counter (gauges are left alone), for `/reset_counters`.
    pub fn reset_counters(&self) {
        HealthStat::reset_counters(&self.stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_and_clear_report_changes() {
        let h = HostHealth::default();
        assert!(h.is_healthy());
        assert!(h.set(FAILED_ACTIVE_HC | PENDING_ACTIVE_HC));
        assert!(!h.set(FAILED_ACTIVE_HC));
        assert!(!h.is_healthy());
        assert!(h.clear(PENDING_ACTIVE_HC));
        assert!(!h.clear(PENDING_ACTIVE_HC));
        assert!(h.clear(FAILED_ACTIVE_HC));
        assert!(h.is_healthy());
        h.set(PENDING_ACTIVE_HC);
        assert!(h.is_healthy(), "pending alone does not take a host out");
    }

    #[test]
    fn failure_runs_count_and_end_on_success() {
        let h = HostHealth::default();
        assert_eq!(h.connect_failed(), 1);
        assert_eq!(h.connect_failed(), 2);
        h.connect_succeeded();
        assert_eq!(h.consecutive_failures(), 0);
        assert_eq!(h.connect_failed(), 1);
    }

    #[test]
    fn review_wakes_once_until_taken() {
        let signal = Arc::new(HealthSignal::new().unwrap());
        let c = ClusterHealth::new("c", Some(signal.clone()));
        assert!(!signal.take());
        c.request_review();
        c.request_review();
        assert!(signal.take());
        assert!(!signal.take(), "the second request did not write again");
        assert!(c.take_review());
        assert!(!c.take_review());
    }
}
