//! One endpoint's shared state: its Envoy host counters (`cluster::host:port::cx_total::N` in
//! `/clusters`) and its health ([`HostHealth`]), in one [`HostState`] block per endpoint.
//!
//! Guarantees:
//! - **One block per host, shared.** Every worker and the control plane's health thread
//!   write the same atomics (as Envoy's host stats are): host events happen once per
//!   connection, never per byte, so sharing costs little, while a slot per worker would cost
//!   `(workers + 1) * 128` bytes for every endpoint, the largest part of a FIB with 100k
//!   endpoints. The block is 48 bytes (asserted at compile time below).
//! - **Survives FIB swaps.** The control plane hands a new FIB the block of every endpoint it
//!   keeps (by cluster and address), so counters and health flags carry over.
//! - Nothing here locks or allocates after construction; counters are `Relaxed` adds.

use crate::health::HostHealth;
use crate::stats::HostStat;
use std::sync::atomic::{AtomicU64, Ordering};

/// One endpoint's counters and health, shared by every worker and the health thread.
#[derive(Debug, Default)]
pub struct HostState {
    counters: [AtomicU64; HostStat::ALL.len()],
    /// The host's health flags and failure run ([`crate::health`]).
    pub health: HostHealth,
}

// Four 8-byte counters and the 12-byte health block, padded to the counters' alignment: the
// per-endpoint cost quoted above. A field added here must update that figure.
const _: () = assert!(std::mem::size_of::<HostState>() == 48);

impl HostState {
    /// A zeroed block: counters at 0, healthy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one to `stat`.
    #[inline]
    pub fn inc(&self, stat: HostStat) {
        self.counters[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `value` to `stat`.
    #[inline]
    pub fn add(&self, stat: HostStat, value: u64) {
        self.counters[stat as usize].fetch_add(value, Ordering::Relaxed);
    }

    /// Subtracts one from gauge `stat`.
    #[inline]
    pub fn dec(&self, stat: HostStat) {
        self.counters[stat as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// The value of a counter.
    pub fn get(&self, stat: HostStat) -> u64 {
        self.counters[stat as usize].load(Ordering::Relaxed)
    }

    /// The value of a gauge.
    pub fn gauge(&self, stat: HostStat) -> i64 {
        self.get(stat) as i64
    }

    /// Zeroes every counter (gauges and health are left alone).
    pub fn reset_counters(&self) {
        HostStat::reset_counters(&self.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::FAILED_OUTLIER_CHECK;

    #[test]
    fn reset_zeroes_counters_only() {
        let h = HostState::new();
        h.add(HostStat::CxTotal, 3);
        h.inc(HostStat::CxActive);
        h.health.set(FAILED_OUTLIER_CHECK);
        h.reset_counters();
        assert_eq!(h.get(HostStat::CxTotal), 0);
        assert_eq!(h.gauge(HostStat::CxActive), 1, "gauges survive a reset");
        assert!(!h.health.is_healthy(), "health survives a reset");
    }
}
