//! Request pacing for `rr`: closed loop, or open loop with coordinated-omission correction.
//!
//! In a closed loop each connection sends its next request as soon as the previous response
//! arrives, and latency is measured from the actual send. That under-reports tails: while a
//! response stalls, the requests that *would* have been sent are never measured (coordinated
//! omission).
//!
//! In an open loop each connection follows a fixed schedule ([`OpenLoopSchedule`]): request `i`
//! is *intended* to go out at `phase + i * interval`. Latency is measured from the intended time,
//! not the actual send, so a stalled response also inflates the latencies of every request queued
//! behind it, by exactly the time each one waited past its slot. Requests whose slot falls
//! before the end of the run but that could not be sent in time are counted as `unsent`.
//!
//! The loop ([`drive`]) reads time only through [`Clock`], so tests run it against a virtual
//! clock with scripted service times, with no sockets and no sleeping.

use std::thread;
use std::time::{Duration, Instant};

use crate::error::Failure;

/// Time source for [`drive`]: nanoseconds since the run's start.
pub trait Clock {
    /// Nanoseconds since the start of the run.
    fn now_ns(&mut self) -> u64;
    /// Returns at or (shortly) after `t_ns`; returns at once when `t_ns` has passed.
    fn wait_until_ns(&mut self, t_ns: u64);
}

/// The real clock: `Instant` since a shared start.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Instant,
}

/// How close to an intended send time the real clock sleeps before it spins (yielding). Linux
/// timer slack makes `sleep` overshoot by about 50 µs; any remaining lateness is counted in the
/// latency, which is the conservative direction.
const SPIN_BEFORE_NS: u64 = 60_000;

impl MonotonicClock {
    /// A clock whose zero is `start`.
    pub fn new(start: Instant) -> MonotonicClock {
        MonotonicClock { start }
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&mut self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn wait_until_ns(&mut self, t_ns: u64) {
        loop {
            let now = self.now_ns();
            if now >= t_ns {
                return;
            }
            let left = t_ns - now;
            if left > SPIN_BEFORE_NS {
                thread::sleep(Duration::from_nanos(left - SPIN_BEFORE_NS));
            } else {
                thread::yield_now();
            }
        }
    }
}

/// One connection's send schedule in an open-loop run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenLoopSchedule {
    /// Intended time of request 0, ns after the start.
    pub phase_ns: f64,
    /// Time between this connection's requests, ns.
    pub interval_ns: f64,
}

impl OpenLoopSchedule {
    /// The schedule of connection `index` of `conns` when all together send `rate_per_s`
    /// requests per second: each connection sends every `conns / rate` seconds, and the
    /// connections are staggered by `1 / rate` so the total stream is evenly spaced.
    pub fn for_conn(rate_per_s: f64, conns: usize, index: usize) -> OpenLoopSchedule {
        let gap_ns = 1e9 / rate_per_s;
        OpenLoopSchedule {
            phase_ns: gap_ns * index as f64,
            interval_ns: gap_ns * conns as f64,
        }
    }

    /// The intended send time of request `i`, ns after the start.
    pub fn intended_ns(&self, i: u64) -> u64 {
        (self.phase_ns + self.interval_ns * i as f64).round() as u64
    }

    /// How many requests are intended strictly before `end_ns`.
    pub fn count_before(&self, end_ns: u64) -> u64 {
        if (end_ns as f64) <= self.phase_ns || self.interval_ns <= 0.0 {
            return 0;
        }
        let mut n = ((end_ns as f64 - self.phase_ns) / self.interval_ns).ceil() as u64;
        while self.intended_ns(n) < end_ns {
            n += 1;
        }
        while n > 0 && self.intended_ns(n - 1) >= end_ns {
            n -= 1;
        }
        n
    }
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Send the next request when the previous response has arrived; latency from the send.
    Closed,
    /// Send on a fixed schedule; latency from the intended send time.
    Open(OpenLoopSchedule),
}

/// What one connection's loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Requests whose response arrived and verified.
    pub completed: u64,
    /// Open loop only: requests intended before the end that were never sent (the loop fell
    /// behind, or stopped after a failure).
    pub unsent: u64,
}

/// Runs one connection's request loop until `end_ns`.
///
/// `exchange(clock, i)` performs request `i` (send and receive, verified) and gets the clock so
/// a virtual clock can advance by the service time. `record(latency_ns)` gets each completed
/// request's latency. The loop stops at the first failure and returns it.
pub fn drive<C: Clock>(
    clock: &mut C,
    pacing: Pacing,
    end_ns: u64,
    mut record: impl FnMut(u64),
    mut exchange: impl FnMut(&mut C, u64) -> Result<(), Failure>,
) -> (LoopStats, Option<Failure>) {
    let mut stats = LoopStats::default();
    let mut i: u64 = 0;
    let mut failure = None;
    loop {
        let measured_from = match pacing {
            Pacing::Closed => {
                let now = clock.now_ns();
                if now >= end_ns {
                    break;
                }
                now
            }
            Pacing::Open(schedule) => {
                let intended = schedule.intended_ns(i);
                if intended >= end_ns {
                    break;
                }
                clock.wait_until_ns(intended);
                if clock.now_ns() >= end_ns {
                    break;
                }
                intended
            }
        };
        let result = exchange(clock, i);
        i += 1;
        if let Err(f) = result {
            failure = Some(f);
            break;
        }
        let done = clock.now_ns();
        record(done.saturating_sub(measured_from));
        stats.completed += 1;
    }
    if let Pacing::Open(schedule) = pacing {
        stats.unsent = schedule.count_before(end_ns).saturating_sub(i);
    }
    (stats, failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    /// A clock that only moves when told to.
    #[derive(Debug, Default)]
    struct VirtualClock {
        now: u64,
    }

    impl Clock for VirtualClock {
        fn now_ns(&mut self) -> u64 {
            self.now
        }
        fn wait_until_ns(&mut self, t_ns: u64) {
            self.now = self.now.max(t_ns);
        }
    }

    fn run(pacing: Pacing, end_ns: u64, service_ns: impl Fn(u64) -> u64) -> (Vec<u64>, LoopStats) {
        let mut clock = VirtualClock::default();
        let mut latencies = Vec::new();
        let (stats, failure) = drive(
            &mut clock,
            pacing,
            end_ns,
            |ns| latencies.push(ns),
            |c, i| {
                c.now += service_ns(i);
                Ok(())
            },
        );
        assert_eq!(failure, None);
        (latencies, stats)
    }

    fn every_ms() -> Pacing {
        Pacing::Open(OpenLoopSchedule {
            phase_ns: 0.0,
            interval_ns: MS as f64,
        })
    }

    #[test]
    fn open_loop_stall_inflates_later_intended_latencies() {
        // One request per ms; each takes 100 µs except request 3, which stalls for 10 ms.
        let service = |i| if i == 3 { 10 * MS } else { 100 * US };
        let (lat, stats) = run(every_ms(), 20 * MS, service);
        assert_eq!(
            stats,
            LoopStats {
                completed: 20,
                unsent: 0
            }
        );
        // Requests 0-2 are on time.
        assert_eq!(&lat[..3], &[100 * US; 3]);
        // Request 3 is sent at 3 ms and completes at 13 ms.
        assert_eq!(lat[3], 10 * MS);
        // Requests 4..=13 queue behind it: request k completes at 13 ms + (k-3) * 100 µs, and
        // its latency counts from its intended time k ms: 12.7 ms - 0.9 ms * k.
        for k in 4..=13u64 {
            assert_eq!(lat[k as usize], 12_700 * US - 900 * US * k, "request {k}");
        }
        // By request 14 the loop has caught up.
        assert_eq!(&lat[14..], &[100 * US; 6]);
    }

    #[test]
    fn closed_loop_records_only_the_stall_itself() {
        let service = |i| if i == 3 { 10 * MS } else { 100 * US };
        let (lat, stats) = run(Pacing::Closed, 20 * MS, service);
        assert_eq!(lat.iter().filter(|&&l| l > 100 * US).count(), 1);
        assert_eq!(lat[3], 10 * MS);
        // 10 ms of stall + 100 µs per other request fills 20 ms with 101 requests.
        assert_eq!(stats.completed, 101);
        assert_eq!(stats.unsent, 0);
    }

    #[test]
    fn open_loop_counts_requests_that_never_got_sent() {
        // A 30 ms stall at request 3 runs past the 20 ms end: requests 4..=19 are never sent.
        let service = |i| if i == 3 { 30 * MS } else { 100 * US };
        let (lat, stats) = run(every_ms(), 20 * MS, service);
        assert_eq!(lat, vec![100 * US, 100 * US, 100 * US, 30 * MS]);
        assert_eq!(
            stats,
            LoopStats {
                completed: 4,
                unsent: 16
            }
        );
    }

    #[test]
    fn failure_stops_the_loop_and_counts_the_rest_unsent() {
        let mut clock = VirtualClock::default();
        let (stats, failure) = drive(
            &mut clock,
            every_ms(),
            10 * MS,
            |_| {},
            |c, i| {
                c.now += 10 * US;
                if i == 2 {
                    Err(Failure::new(ErrorClass::Reset, "boom"))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(failure.map(|f| f.class), Some(ErrorClass::Reset));
        assert_eq!(
            stats,
            LoopStats {
                completed: 2,
                unsent: 7
            }
        );
    }

    #[test]
    fn schedules_interleave_connections_evenly() {
        // 1000 req/s over 4 connections: each sends every 4 ms, staggered by 1 ms.
        let s: Vec<_> = (0..4)
            .map(|c| OpenLoopSchedule::for_conn(1000.0, 4, c))
            .collect();
        let mut all: Vec<u64> = s
            .iter()
            .flat_map(|s| (0..5).map(|i| s.intended_ns(i)))
            .collect();
        all.sort_unstable();
        let expected: Vec<u64> = (0..20).map(|k| k * MS).collect();
        assert_eq!(all, expected);
        let total: u64 = s.iter().map(|s| s.count_before(20 * MS)).sum();
        assert_eq!(total, 20);
        assert_eq!(s[3].count_before(3 * MS), 0);
        assert_eq!(s[3].count_before(3 * MS + 1), 1);
    }
}
