//! The fault filter (`switchyard.filters.network.fault`) on the worker.
//!
//! Each fault is drawn per connection at accept, independently, with the worker's RNG:
//!
//! - **abort at accept** (`after_bytes` 0): the client is reset before anything is connected
//!   (`FI`, `aborts_injected`);
//! - **abort after N bytes**: the connection is reset when the client's bytes reach N; the
//!   receive that reaches N is not forwarded, so the upstream gets fewer than N bytes (`FI`,
//!   `aborts_injected` when it fires);
//! - **delay**: the upstream connect starts `fixed_delay` after accept (`DI`,
//!   `delays_injected`); nothing is read from the client meanwhile;
//! - **throttle**: each direction's receives are spaced so that its bytes per second stay at
//!   the rate: after a receive of `n` bytes the direction may receive again `n / rate`
//!   seconds later (a token bucket of one receive), and throttled directions use small
//!   buffers so one receive is a small step (`throttles_injected`).
//!
//! Deadlines go into a small list served by a 2 ms timer of its own ([`FAULT_TICK`]), armed
//! only while the list is not empty. Nothing here allocates per connection: the list's
//! capacity is reserved when the worker starts.

use super::ud::{self, Kind};
use super::Worker;
use crate::conn;
use crate::fib::drawn;
use crate::relay::Dir;
use crate::stats::{FaultStat, FaultStats};
use crate::sys::Completion;
use std::time::Duration;

/// Period of the fault timer: the precision of delays and throttling.
const FAULT_TICK: Duration = Duration::from_millis(2);

/// What a fault deadline starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// The delayed upstream connect.
    Connect,
    /// A throttled direction's next receive.
    Recv(Dir),
}

/// One fault deadline.
#[derive(Debug, Clone, Copy)]
pub(super) struct FaultTimer {
    at_us: u64,
    slot: u32,
    nonce: u32,
    due: Due,
}

/// The worker's fault deadlines and their timer.
#[derive(Debug, Default)]
pub(super) struct FaultTimers {
    timers: Vec<FaultTimer>,
    /// The armed timer's generation (in its user_data), so that completions of a cancelled
    /// timer are told apart from the current one's.
    generation: u32,
    armed: bool,
}

impl FaultTimers {
    /// Room for `slots` connections' deadlines (a connect, then at most one receive per
    /// direction at a time).
    pub(super) fn with_capacity(slots: usize) -> Self {
        FaultTimers {
            timers: Vec::with_capacity(slots * 2),
            ..Default::default()
        }
    }
}

impl Worker {
    /// The worker's clock in microseconds (throttling needs finer steps than `now_ms`).
    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn fault_stats(&self, slot: u32) -> Option<&FaultStats> {
        self.chain_of(slot)
            .and_then(|c| c.fault.as_ref())
            .map(|f| &*f.stats)
    }

    /// Draws the chain's faults for the new connection `slot`, counts them, and keeps the
    /// throttle and the abort allowance beside the connection; the machine gets the rest.
    pub(super) fn draw_faults(&mut self, slot: u32) -> conn::Faults {
        let Some(fault) = self.chain_of(slot).and_then(|c| c.fault.as_ref()) else {
            return conn::Faults::default();
        };
        let (delay, abort, throttle) = (fault.delay, fault.abort, fault.throttle);
        let abort = abort.filter(|a| drawn(a.per_million, self.rng.next_u64()));
        let delay = delay.filter(|d| drawn(d.per_million, self.rng.next_u64()));
        let throttle = throttle.filter(|t| drawn(t.per_million, self.rng.next_u64()));
        if abort.is_none() && delay.is_none() && throttle.is_none() {
            return conn::Faults::default();
        }
        let abort_at_accept = abort.is_some_and(|a| a.after_bytes == 0);
        if let Some(stats) = self.fault_stats(slot) {
            stats.inc(self.id, FaultStat::ActiveFaults);
            if throttle.is_some() {
                stats.inc(self.id, FaultStat::ThrottlesInjected);
            }
            if delay.is_some() && !abort_at_accept {
                stats.inc(self.id, FaultStat::DelaysInjected);
            }
            if abort_at_accept {
                stats.inc(self.id, FaultStat::AbortsInjected);
            }
        }
        let faults = &mut self.conns[slot as usize].faults;
        if let Some(t) = throttle {
            faults.rate_bps = t.bytes_per_second;
        }
        faults.abort_after = abort.map(|a| a.after_bytes).filter(|&n| n > 0);
        conn::Faults {
            active: true,
            abort_at_accept,
            delay_ms: delay.map(|d| d.delay_ms),
        }
    }

    /// A receive of `len` bytes on `dir` completed: charges the throttle and the abort
    /// allowance. True when the abort fired (the bytes are then not forwarded; the caller
    /// aborts the connection).
    pub(super) fn charge_faults(&mut self, slot: u32, dir: Dir, len: u64) -> bool {
        let now_us = self.now_us();
        let faults = &mut self.conns[slot as usize].faults;
        if let Some(wait_us) = len
            .saturating_mul(1_000_000)
            .checked_div(faults.rate_bps[dir as usize])
        {
            let ready = &mut faults.recv_ready_at_us[dir as usize];
            *ready = (*ready).max(now_us) + wait_us;
        }
        if dir == Dir::Up {
            if let Some(left) = faults.abort_after {
                if len >= left {
                    faults.abort_after = None;
                    if let Some(stats) = self.fault_stats(slot) {
                        stats.inc(self.id, FaultStat::AbortsInjected);
                    }
                    return true;
                }
                faults.abort_after = Some(left - len);
            }
        }
        false
    }

    /// True when `dir`'s next receive must wait for the throttle; the receive is then
    /// deferred and started by the fault timer.
    pub(super) fn defer_recv(&mut self, slot: u32, dir: Dir) -> bool {
        let faults = &self.conns[slot as usize].faults;
        if faults.rate_bps[dir as usize] == 0 {
            return false;
        }
        let at_us = faults.recv_ready_at_us[dir as usize];
        if at_us <= self.now_us() {
            return false;
        }
        self.conns[slot as usize].faults.recv_deferred[dir as usize] = true;
        self.schedule_fault(at_us, slot, Due::Recv(dir));
        true
    }

    /// True when `dir` of `slot` is throttled (its receives then use small buffers).
    pub(super) fn throttled(&self, slot: u32, dir: Dir) -> bool {
        self.conns[slot as usize].faults.rate_bps[dir as usize] > 0
    }

    pub(super) fn schedule_fault(&mut self, at_us: u64, slot: u32, due: Due) {
        let nonce = self.conns[slot as usize].nonce;
        self.fault_timers.timers.push(FaultTimer {
            at_us,
            slot,
            nonce,
            due,
        });
        if !self.fault_timers.armed {
            self.arm_fault_timer();
        }
    }

    /// Arms the fault timer under a new generation (completions of a cancelled one are told
    /// apart by theirs).
    fn arm_fault_timer(&mut self) {
        self.fault_timers.armed = true;
        self.fault_timers.generation = self.fault_timers.generation.wrapping_add(1) & 0xffff;
        let ud = ud::encode(Kind::FaultTick, self.fault_timers.generation, 0);
        self.ring.fault_tick(FAULT_TICK, ud);
    }

    /// The fault timer fired: starts what is due; stops the timer when nothing is left.
    pub(super) fn on_fault_tick(&mut self, generation: u32, c: Completion) {
        if generation != self.fault_timers.generation || !self.fault_timers.armed {
            return; // a cancelled timer's last completions
        }
        if !c.more() {
            self.fault_timers.armed = false;
        }
        let now_us = self.now_us();
        let mut i = 0;
        while i < self.fault_timers.timers.len() {
            let t = self.fault_timers.timers[i];
            if t.at_us > now_us {
                i += 1;
                continue;
            }
            self.fault_timers.timers.swap_remove(i);
            self.fire(t);
        }
        if self.fault_timers.timers.is_empty() && self.fault_timers.armed {
            self.fault_timers.armed = false;
            let target = ud::encode(Kind::FaultTick, self.fault_timers.generation, 0);
            self.ring
                .cancel(target, ud::encode(Kind::FaultTickCancel, 0, 0));
        } else if !self.fault_timers.timers.is_empty() && !self.fault_timers.armed {
            self.arm_fault_timer();
        }
    }

    fn fire(&mut self, t: FaultTimer) {
        let conn = &mut self.conns[t.slot as usize];
        if conn.nonce != t.nonce || !conn.machine.is_live() {
            return;
        }
        match t.due {
            Due::Connect => self.drive(t.slot, conn::Event::DelayOver),
            Due::Recv(dir) => {
                if std::mem::take(&mut conn.faults.recv_deferred[dir as usize]) {
                    self.submit_recv(t.slot, dir);
                }
            }
        }
    }

    /// The connection closes ([`conn::Seat::Fault`] given back): its deadlines go, and it
    /// no longer counts in `active_faults`.
    pub(super) fn leave_faults(&mut self, slot: u32) {
        // Keeps the list within the capacity reserved at start (and the tick's scan short).
        self.fault_timers.timers.retain(|t| t.slot != slot);
        if let Some(stats) = self.fault_stats(slot) {
            stats.dec(self.id, FaultStat::ActiveFaults);
        }
    }
}
