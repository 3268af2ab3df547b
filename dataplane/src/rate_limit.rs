//! Envoy's `envoy.filters.network.local_ratelimit`: a token bucket of new connections, one
//! per filter (or per `share_key`), taken from by every worker without a lock.
//!
//! Guarantees:
//! - **Envoy's bucket.** It starts full (`max_tokens`); every `fill_interval` since it was
//!   made adds `tokens_per_fill`, up to `max_tokens`; each connection takes one token or is
//!   refused. The fills are computed when a connection asks (no timer), from the number of
//!   whole intervals since the bucket was made, so the tokens are the ones Envoy's timer
//!   would have added.
//! - **One bucket across workers, never locked.** The tokens and the interval they were
//!   counted at share one atomic word, updated by compare-and-swap: two workers can never
//!   both take the last token, and a fill is never counted twice.
//! - **Kept across FIB generations**: the control plane hands the same bucket to every
//!   compilation of an unchanged filter, so an endpoint update does not refill it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A token bucket shared by every worker.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    interval_ns: u64,
    origin: Instant,
    /// `tokens << 32 | fills counted`: the tokens left after the last take, and how many
    /// whole intervals from `origin` they include.
    state: AtomicU64,
}

impl TokenBucket {
    /// A full bucket of `max_tokens` (0: one that never holds a token), `tokens_per_fill`
    /// (at least 1) added every `interval_ms` (at least 1).
    pub fn new(max_tokens: u32, tokens_per_fill: u32, interval_ms: u64) -> TokenBucket {
        TokenBucket {
            max_tokens,
            tokens_per_fill: tokens_per_fill.max(1),
            interval_ns: interval_ms.max(1) * 1_000_000,
            origin: Instant::now(),
            state: AtomicU64::new(u64::from(max_tokens) << 32),
        }
    }

    /// Takes a token for a new connection now; false when there is none (the connection is
    /// rate limited).
    pub fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// [`TokenBucket::try_take`] at `now`.
    pub fn try_take_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos() as u64;
        // Intervals wrap at 2^32 (over six years at the shortest, 50 ms): only the
        // difference is used.
        let fills_now = (elapsed / self.interval_ns) as u32;
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let tokens = (current >> 32) as u32;
            let counted = current as u32;
            // A worker whose clock reading is older than the last count (it was preempted
            // between reading the time and here) adds nothing and keeps the count: the
            // wrapped difference would otherwise read as billions of fills.
            let since = fills_now.wrapping_sub(counted);
            let (fills, counted_now) = if since > u32::MAX / 2 {
                (0, counted)
            } else {
                (u64::from(since), fills_now)
            };
            let refilled = (u64::from(tokens) + fills * u64::from(self.tokens_per_fill))
                .min(u64::from(self.max_tokens));
            if refilled == 0 {
                return false;
            }
            let next = ((refilled - 1) << 32) | u64::from(counted_now);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether the bucket was made with these settings (the control plane reuses it then).
    pub fn has_settings(&self, max_tokens: u32, tokens_per_fill: u32, interval_ms: u64) -> bool {
        self.max_tokens == max_tokens
            && self.tokens_per_fill == tokens_per_fill
            && self.interval_ns == interval_ms * 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn starts_full_refills_per_interval_and_caps_at_max() {
        let none = TokenBucket::new(0, 1, 100);
        assert!(!none.try_take_at(none.origin + Duration::from_secs(10)));
        let b = TokenBucket::new(3, 2, 100);
        let t0 = b.origin;
        assert!((0..3).all(|_| b.try_take_at(t0)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(99)));
        // One interval: two tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.try_take_at(t1) && b.try_take_at(t1));
        assert!(!b.try_take_at(t1));
        // Ten intervals later: full again, not more.
        let t2 = t0 + Duration::from_millis(1100);
        assert_eq!((0..10).filter(|_| b.try_take_at(t2)).count(), 3);
    }

    #[test]
    fn a_stale_clock_reading_adds_nothing_and_keeps_the_count() {
        let bucket = TokenBucket::new(2, 1, 100);
        let start = bucket.origin;
        let later = start + Duration::from_millis(350);
        assert!(bucket.try_take_at(later));
        assert!(bucket.try_take_at(later));
        assert!(!bucket.try_take_at(later), "empty at 3 intervals");
        // A worker that read the clock before the others' count: no refill.
        assert!(!bucket.try_take_at(start + Duration::from_millis(150)));
        assert!(!bucket.try_take_at(later), "the count did not move back");
        assert!(bucket.try_take_at(start + Duration::from_millis(400)));
    }

    #[test]
    fn workers_racing_never_take_more_than_there_are() {
        let b = Arc::new(TokenBucket::new(1000, 1, 60_000));
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(taken, 1000);
    }
}
