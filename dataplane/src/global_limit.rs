//! Envoy's global downstream connection limit: how many client connections the process
//! holds open at once, across every worker and listener.
//!
//! Envoy has two sources for it, with different reach, and Switchyard follows both:
//! - the runtime key `overload.global_downstream_max_connections` bounds every accepted
//!   connection, the workers' and the admin's together (Envoy compares its count of accepted
//!   sockets with it, on every listener);
//! - the overload manager's `envoy.resource_monitors.global_downstream_max_connections`
//!   bounds the workers' connections alone (the admin listener does not take that resource)
//!   and, when set, replaces the runtime key for the workers; the admin still obeys the key.
//!
//! The control plane stores both ([`GlobalConnections::set_limits`]); workers read them
//! without a lock.
//!
//! Guarantees:
//! - Every accepted TCP client connection is counted from its accept until its slot is
//!   freed, and every admin connection while it is open, whether or not a limit is set (so
//!   a limit set later, by `/runtime_modify` or a reload, applies to what is open then, as in
//!   Envoy). UDP sessions are not counted (Envoy counts accepted sockets only).
//! - A connection accepted at the limit is closed at once (before any filter chain, stat or
//!   access log, as Envoy's listener does) and counted in the listener's
//!   `downstream_global_cx_overflow`. A listener with `ignore_global_conn_limit` is counted
//!   but never refused.
//! - Cost on a worker: one atomic add at accept (and a load of each limit and of the admin's
//!   count) and one subtract at close, on a cache line every worker shares; no lock,
//!   allocation or system call.

use std::sync::atomic::{AtomicU64, Ordering};

/// No limit.
const UNLIMITED: u64 = u64::MAX;

/// The process-wide count of client connections and its limits.
#[derive(Debug)]
pub struct GlobalConnections {
    /// The workers' client connections.
    workers: AtomicU64,
    /// The admin's connections.
    admin: AtomicU64,
    /// The runtime key's limit on both together.
    runtime_max: AtomicU64,
    /// The overload manager's limit on the workers' alone (replaces the runtime's for them).
    overload_max: AtomicU64,
}

impl Default for GlobalConnections {
    fn default() -> Self {
        GlobalConnections {
            workers: AtomicU64::new(0),
            admin: AtomicU64::new(0),
            runtime_max: AtomicU64::new(UNLIMITED),
            overload_max: AtomicU64::new(UNLIMITED),
        }
    }
}

/// Who is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A worker's client connection.
    Worker,
    /// An admin connection.
    Admin,
}

impl GlobalConnections {
    /// Sets the runtime key's and the overload manager's limits (`None`: none). Connections
    /// already open stay open.
    pub fn set_limits(&self, runtime_max: Option<u64>, overload_max: Option<u64>) {
        let store =
            |a: &AtomicU64, v: Option<u64>| a.store(v.unwrap_or(UNLIMITED), Ordering::Relaxed);
        store(&self.runtime_max, runtime_max);
        store(&self.overload_max, overload_max);
    }

    /// The limit the workers' connections are held to now (`None`: unlimited).
    pub fn worker_limit(&self) -> Option<u64> {
        let overload = self.overload_max.load(Ordering::Relaxed);
        let max = if overload != UNLIMITED {
            overload
        } else {
            self.runtime_max.load(Ordering::Relaxed)
        };
        Some(max).filter(|&m| m != UNLIMITED)
    }

    /// Connections open now: (the workers', the admin's).
    pub fn active(&self) -> (u64, u64) {
        (
            self.workers.load(Ordering::Relaxed),
            self.admin.load(Ordering::Relaxed),
        )
    }

    /// Counts a newly accepted connection in; false (and not counted) when a limit that
    /// holds it is reached and `ignore_limit` is not set.
    #[inline]
    pub fn try_enter(&self, who: Counted, ignore_limit: bool) -> bool {
        let (own, other) = self.counts(who);
        let before = own.fetch_add(1, Ordering::AcqRel);
        if ignore_limit || self.admits(who, before, other.load(Ordering::Relaxed)) {
            return true;
        }
        own.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// A connection counted by [`Self::try_enter`] with `who` is gone.
    #[inline]
    pub fn leave(&self, who: Counted) {
        self.counts(who).0.fetch_sub(1, Ordering::AcqRel);
    }

    fn counts(&self, who: Counted) -> (&AtomicU64, &AtomicU64) {
        match who {
            Counted::Worker => (&self.workers, &self.admin),
            Counted::Admin => (&self.admin, &self.workers),
        }
    }

    /// Whether one more fits, with `own` of its kind and `other` of the other open.
    fn admits(&self, who: Counted, own: u64, other: u64) -> bool {
        let overload = self.overload_max.load(Ordering::Relaxed);
        if who == Counted::Worker && overload != UNLIMITED {
            return own < overload;
        }
        own.saturating_add(other) < self.runtime_max.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Counted::{Admin, Worker};

    #[test]
    fn unlimited_until_a_limit_is_set() {
        let g = GlobalConnections::default();
        assert!((0..1000).all(|_| g.try_enter(Worker, false)));
        assert_eq!((g.active(), g.worker_limit()), ((1000, 0), None));
        g.set_limits(Some(1000), None);
        assert!(!g.try_enter(Worker, false), "the 1001st is refused");
        assert_eq!(g.active(), (1000, 0), "a refused connection is not counted");
        assert!(
            g.try_enter(Worker, true),
            "ignore_global_conn_limit still admits"
        );
        g.leave(Worker);
        g.leave(Worker);
        assert!(g.try_enter(Worker, false), "room again after two closed");
        g.set_limits(None, None);
        assert_eq!(g.worker_limit(), None);
    }

    #[test]
    fn the_runtime_limit_holds_workers_and_admin_together() {
        let g = GlobalConnections::default();
        g.set_limits(Some(2), None);
        assert!(g.try_enter(Worker, false));
        assert!(g.try_enter(Admin, false));
        assert!(!g.try_enter(Worker, false));
        assert!(!g.try_enter(Admin, false));
        assert!(g.try_enter(Admin, true), "admin.ignore_global_conn_limit");
        g.leave(Admin);
        g.leave(Admin);
        assert!(g.try_enter(Worker, false));
    }

    #[test]
    fn the_overload_limit_holds_workers_alone_and_replaces_the_runtime_one_for_them() {
        let g = GlobalConnections::default();
        g.set_limits(Some(100), Some(2));
        assert_eq!(g.worker_limit(), Some(2));
        assert!(g.try_enter(Admin, false));
        assert!(g.try_enter(Worker, false));
        assert!(
            g.try_enter(Worker, false),
            "the admin is not in the overload resource"
        );
        assert!(!g.try_enter(Worker, false));
        assert!(
            g.try_enter(Admin, false),
            "the admin obeys the runtime key only"
        );
        g.set_limits(Some(3), Some(2));
        assert!(!g.try_enter(Admin, false), "four open, runtime limit 3");
    }

    #[test]
    fn a_limit_of_zero_refuses_everything() {
        let g = GlobalConnections::default();
        g.set_limits(Some(0), None);
        assert!(!g.try_enter(Worker, false));
        assert!(!g.try_enter(Admin, false));
        assert_eq!(g.active(), (0, 0));
    }

    #[test]
    fn holds_across_threads() {
        let g = std::sync::Arc::new(GlobalConnections::default());
        g.set_limits(None, Some(100));
        let admitted: u64 = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..1000).filter(|_| g.try_enter(Worker, false)).count())
            })
            .map(|t| t.join().unwrap() as u64)
            .sum();
        assert_eq!(admitted, 100);
        assert_eq!(g.active(), (100, 0));
    }
}
