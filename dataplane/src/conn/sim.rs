//! A deterministic simulator that drives connection machines the way the worker does, with
//! no sockets: a slab of slots, operations in flight completing in random order, short
//! receives and sends, connect failures and timeouts, resets on either side, a small buffer
//! pool that runs dry, timers, drains and fault aborts, all drawn from one seed.
//!
//! At the end of a run every slot must be free, nothing in flight, every shared budget
//! given back, every connection finished exactly once, every buffer back in the pool, and a
//! connection that ended cleanly must have moved every byte both ways.

use super::*;
use crate::relay::{BufId, Dir, Received};
use crate::testing::Rng;

/// How hostile the simulated world is, per mille of the operations it may affect.
#[derive(Debug, Clone, Copy)]
pub(super) struct World {
    /// Connection slots.
    pub slots: usize,
    /// Connections to accept over the run.
    pub connections: usize,
    /// Buffers in the pool (few: starvation is part of the test).
    pub buffers: u16,
    /// Circuit breaker limits (`max_pending_requests`, `max_connections`).
    pub max_pending: u32,
    pub max_connections: u32,
    /// Connect attempts per connection.
    pub max_attempts: u32,
    pub socket_fail: u64,
    pub connect_fail: u64,
    pub connect_timeout: u64,
    pub no_endpoint: u64,
    pub recv_error: u64,
    pub send_error: u64,
    pub refuse: u64,
    pub limited: u64,
    pub fault_abort: u64,
    pub fault_delay: u64,
    pub mirror: u64,
    /// Per step: a tick, a drain of one connection, an abort.
    pub tick: u64,
    pub drain: u64,
    pub abort: u64,
    pub idle_timeout_ms: Option<u64>,
    /// Connections whose client speaks TLS, and whose backend does.
    pub tls_client: u64,
    pub tls_backend: u64,
    /// Handshakes that fail.
    pub handshake_fail: u64,
    /// Connections whose listener has a TLS inspector, inspections that fail (the client
    /// leaves, a refused ClientHello), and timed-out ones that go on as plaintext.
    pub inspect: u64,
    pub inspect_fail: u64,
    pub continue_on_timeout: u64,
}

/// An operation in flight, as the worker's `user_data` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Socket,
    Connect,
    Recv(Dir),
    Send {
        dir: Dir,
        len: u32,
    },
    Shutdown(Dir),
    Close,
    MirrorClose,
    /// A whole TLS handshake's I/O with a side (the worker's reads and writes, as one).
    Handshake(Side),
    /// The TLS inspector's reads of the client's first bytes, as one.
    Inspect,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    slot: usize,
    nonce: u32,
    op: Op,
    /// Cancelled by a close: completes with `ECANCELED`.
    cancelled: bool,
}

/// One slot: the machine and what the driver keeps beside it.
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    nonce: u32,
    machine: Machine,
    /// Bytes each source still has to give, and whether it ends in a reset.
    remaining: [u32; 2],
    source_resets: [bool; 2],
    /// Bytes each sink got.
    delivered: [u64; 2],
    totals: [u32; 2],
    backend_open: bool,
    client_open: bool,
    mirror_open: bool,
    delay_at_ms: Option<u64>,
    finished: u32,
    /// Closed by the idle timeout (which, as in Envoy, sets no flag): not a clean end.
    idled: bool,
}

/// The simulated world and its driver.
pub(super) struct Sim {
    pub rng: Rng,
    world: World,
    now_ms: u64,
    slots: Vec<Slot>,
    free: Vec<usize>,
    inflight: Vec<InFlight>,
    pool: Vec<BufId>,
    starved: Vec<usize>,
    breaker_pending: u32,
    breaker_connections: u32,
    limit_seats: u32,
    fault_seats: u32,
    accepted: usize,
    pub finished: usize,
    pub clean: usize,
    pub violations: Vec<String>,
}

/// The simulated cluster: its breaker and its endpoints.
struct Cluster<'a> {
    rng: &'a mut Rng,
    world: World,
    pending: &'a mut u32,
    connections: &'a mut u32,
}

impl Upstreams for Cluster<'_> {
    fn admit(&mut self) -> Result<(), Overflow> {
        if *self.pending >= self.world.max_pending
            || *self.connections >= self.world.max_connections
        {
            return Err(Overflow);
        }
        *self.pending += 1;
        *self.connections += 1;
        Ok(())
    }

    fn pick(&mut self, exclude: Option<u32>) -> Option<Target> {
        if self.rng.chance(self.world.no_endpoint) {
            return None;
        }
        let e = self.rng.below(4) as u32;
        Some(Target::Endpoint(if Some(e) == exclude {
            (e + 1) % 4
        } else {
            e
        }))
    }
}

impl Sim {
    pub(super) fn new(seed: u64, world: World) -> Sim {
        Sim {
            rng: Rng::new(seed),
            world,
            now_ms: 0,
            slots: vec![Slot::default(); world.slots],
            free: (0..world.slots).rev().collect(),
            inflight: Vec::new(),
            pool: (0..world.buffers).map(BufId::Pipe).collect(),
            starved: Vec::new(),
            breaker_pending: 0,
            breaker_connections: 0,
            limit_seats: 0,
            fault_seats: 0,
            accepted: 0,
            finished: 0,
            clean: 0,
            violations: Vec::new(),
        }
    }

    /// Runs until every connection was accepted and finished, or `max_steps` passed.
    pub(super) fn run(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if self.accepted == self.world.connections && self.finished == self.accepted {
                return;
            }
            self.step();
        }
        // Out of steps: drain everything, as the worker does when the plane stops.
        for slot in 0..self.slots.len() {
            if self.slots[slot].machine.is_live() {
                self.feed(slot, Event::Abort(Abort::Drain));
            }
        }
        let mut budget = 100_000;
        while !self.inflight.is_empty() || !self.starved.is_empty() {
            budget -= 1;
            if budget == 0 {
                self.violations
                    .push("the final drain does not converge (a lost buffer?)".into());
                return;
            }
            self.step_completion();
        }
    }

    fn step(&mut self) {
        let w = self.world;
        if self.accepted < w.connections && !self.free.is_empty() && self.rng.chance(300) {
            self.accept();
        } else if self.rng.chance(w.tick) {
            self.now_ms += 1 + self.rng.below(50);
            self.tick();
        } else if self.rng.chance(w.drain) {
            if let Some(slot) = self.random_live() {
                let deadline_ms = self.now_ms + self.rng.below(100);
                self.feed(slot, Event::DrainBy { deadline_ms });
            }
        } else if self.rng.chance(w.abort) {
            if let Some(slot) = self.random_live() {
                self.feed(slot, Event::Abort(Abort::Fault));
            }
        } else if !self.inflight.is_empty() || !self.starved.is_empty() {
            self.step_completion();
        } else {
            self.now_ms += 1 + self.rng.below(50);
            self.tick();
        }
    }

    fn random_live(&mut self) -> Option<usize> {
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].machine.is_live())
            .collect();
        (!live.is_empty()).then(|| live[self.rng.below(live.len() as u64) as usize])
    }

    // ---- accept ----

    fn accept(&mut self) {
        let slot = self.free.pop().expect("a free slot");
        self.accepted += 1;
        let s = &mut self.slots[slot];
        let nonce = s.nonce.wrapping_add(1);
        *s = Slot {
            nonce,
            machine: Machine::accepted_at(self.now_ms),
            client_open: true,
            ..Slot::default()
        };
        for dir in Dir::BOTH {
            s.totals[dir as usize] = self.rng.below(200) as u32;
            s.remaining[dir as usize] = s.totals[dir as usize];
            s.source_resets[dir as usize] = self.rng.chance(self.world.recv_error);
        }
        if self.rng.chance(self.world.inspect) {
            let timeout_ms = self.rng.chance(700).then(|| self.rng.below(80));
            self.feed(slot, Event::Inspect { timeout_ms });
            return;
        }
        let accepted = self.decided(slot);
        self.feed(slot, accepted);
    }

    /// The verdict for `slot`, with what the driver takes for it (fault seats, a mirror).
    fn decided(&mut self, slot: usize) -> Event {
        let verdict = self.verdict();
        if let Verdict::Proxy(p) = verdict {
            self.fault_seats += u32::from(p.faults.active);
            if self.rng.chance(self.world.mirror) {
                self.slots[slot].mirror_open = true;
                self.slots[slot].machine.mirror_started();
            }
        }
        Event::Accepted(verdict)
    }

    /// Half the connections pass a connection limit (and hold its seat).
    fn take_limit_seat(&mut self) -> bool {
        let held = self.rng.chance(500);
        self.limit_seats += u32::from(held);
        held
    }

    fn verdict(&mut self) -> Verdict {
        let w = self.world;
        if self.rng.chance(w.refuse) {
            return Verdict::Refuse {
                flags: ResponseFlags::NO_ROUTE_FOUND,
                reset: self.rng.chance(500),
                details: "-",
                holds_limit: self.take_limit_seat(),
            };
        }
        if self.rng.chance(w.limited) {
            return Verdict::Limited {
                delay_ms: self.rng.below(3) * 20,
            };
        }
        let abort_at_accept = self.rng.chance(w.fault_abort);
        let delay_ms = self.rng.chance(w.fault_delay).then(|| self.rng.below(40));
        // Small limits (0: none) so that they bind on the simulator's receives of up to 32.
        let mut limit = || [0, 1, 8, 16, 1 << 20][self.rng.below(5) as usize];
        let buffer_limits = relay::BufferLimits {
            client_bytes: limit(),
            backend_bytes: limit(),
        };
        Verdict::Proxy(Proxy {
            idle_timeout_ms: w.idle_timeout_ms,
            max_attempts: w.max_attempts,
            holds_limit: self.take_limit_seat(),
            buffer_limits,
            faults: Faults {
                active: abort_at_accept || delay_ms.is_some(),
                abort_at_accept,
                delay_ms,
            },
            tls: TlsPlan {
                client: self.rng.chance(w.tls_client),
                authorize_client: false,
                client_timeout_ms: self.rng.chance(500).then(|| self.rng.below(60)),
                backend: self.rng.chance(w.tls_backend),
                connect_timeout_ms: 1 + self.rng.below(80),
            },
            carrier: Carrier::No,
        })
    }

    // ---- the driver ----

    /// Feeds `event` to `slot`'s machine, carries out its actions, then settles it.
    fn feed(&mut self, slot: usize, event: Event) {
        let mut out = Actions::default();
        let mut cluster = Cluster {
            rng: &mut self.rng,
            world: self.world,
            pending: &mut self.breaker_pending,
            connections: &mut self.breaker_connections,
        };
        let result = self.slots[slot]
            .machine
            .on_event(self.now_ms, event, &mut cluster, &mut out);
        if let Err(v) = result {
            self.violations
                .push(format!("slot {slot}: {v:?} on {event:?}"));
        }
        self.carry_out(slot, &out);
        self.settle(slot);
    }

    fn settle(&mut self, slot: usize) {
        let mut settled = Actions::default();
        self.slots[slot].machine.settle(&mut settled);
        self.carry_out(slot, &settled);
    }

    fn start(&mut self, slot: usize, op: Op) {
        let nonce = self.slots[slot].nonce;
        self.slots[slot].machine.started(1);
        self.inflight.push(InFlight {
            slot,
            nonce,
            op,
            cancelled: false,
        });
    }

    fn carry_out(&mut self, slot: usize, actions: &Actions) {
        for action in actions.iter() {
            self.carry_out_one(slot, action);
        }
    }

    fn carry_out_one(&mut self, slot: usize, action: Action) {
        match action {
            Action::OpenSocket => self.start(slot, Op::Socket),
            Action::Connect => self.start(slot, Op::Connect),
            Action::CloseAttempt | Action::CloseStraySocket => {
                if std::mem::take(&mut self.slots[slot].backend_open) {
                    self.start(slot, Op::Close);
                }
            }
            Action::Relay(r) => self.relay_action(slot, r),
            Action::CloseClient { .. } => {
                self.cancel(slot);
                if std::mem::take(&mut self.slots[slot].client_open) {
                    self.start(slot, Op::Close);
                }
            }
            Action::CloseBoth { clean, .. } => {
                if clean
                    && self
                        .inflight
                        .iter()
                        .any(|f| f.slot == slot && f.op.on_sockets())
                {
                    self.violations.push(format!(
                        "slot {slot}: a clean close with operations in flight"
                    ));
                }
                self.cancel(slot);
                let s = &mut self.slots[slot];
                let open = u32::from(std::mem::take(&mut s.client_open))
                    + u32::from(std::mem::take(&mut s.backend_open));
                for _ in 0..open {
                    self.start(slot, Op::Close);
                }
            }
            Action::MirrorPrimaryClosed => {
                if self.slots[slot].mirror_open && self.rng.chance(500) {
                    self.slots[slot].mirror_open = false;
                    self.start(slot, Op::MirrorClose);
                }
            }
            Action::CloseMirror => {
                if std::mem::take(&mut self.slots[slot].mirror_open) {
                    self.start(slot, Op::MirrorClose);
                } else {
                    self.violations
                        .push(format!("slot {slot}: CloseMirror without a mirror"));
                }
            }
            Action::Release(seat) => self.release(slot, seat),
            Action::StartHandshake(side) => self.start(slot, Op::Handshake(side)),
            Action::AbandonHandshake(side) => {
                let handshake = self
                    .inflight
                    .iter_mut()
                    .find(|f| f.slot == slot && f.op == Op::Handshake(side));
                match handshake {
                    Some(f) => f.cancelled = true,
                    None => self
                        .violations
                        .push(format!("slot {slot}: abandoned a handshake not in flight")),
                }
            }
            Action::StartInspection => self.start(slot, Op::Inspect),
            Action::AbandonInspection => {
                let reading = self
                    .inflight
                    .iter_mut()
                    .find(|f| f.slot == slot && f.op == Op::Inspect);
                match reading {
                    Some(f) => f.cancelled = true,
                    None => self.violations.push(format!(
                        "slot {slot}: abandoned an inspection not in flight"
                    )),
                }
            }
            Action::ScheduleDelay { at_ms } => self.slots[slot].delay_at_ms = Some(at_ms),
            Action::Note(Note::IdleTimeout) => self.slots[slot].idled = true,
            Action::Note(_) => {}
            Action::Finish => self.finish(slot),
        }
    }

    fn release(&mut self, slot: usize, seat: Seat) {
        let count = match seat {
            Seat::BreakerPending => &mut self.breaker_pending,
            Seat::BreakerConnection => &mut self.breaker_connections,
            Seat::ConnectionLimit => &mut self.limit_seats,
            Seat::Fault => &mut self.fault_seats,
        };
        match count.checked_sub(1) {
            Some(c) => *count = c,
            None => self
                .violations
                .push(format!("slot {slot}: {seat:?} given back twice")),
        }
    }

    fn finish(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.finished += 1;
        if s.finished > 1 {
            self.violations.push(format!("slot {slot}: finished twice"));
            return;
        }
        if s.client_open || s.backend_open || s.mirror_open {
            self.violations
                .push(format!("slot {slot}: finished with a socket open"));
        }
        self.finished += 1;
        let m = &s.machine;
        for dir in Dir::BOTH {
            if s.delivered[dir as usize] > u64::from(s.totals[dir as usize]) {
                self.violations
                    .push(format!("slot {slot}: {dir:?} delivered bytes never sent"));
            }
        }
        let connected = matches!(m.upstream(), Upstream::Connected { .. });
        if connected && m.flags().0 == 0 && !s.idled {
            self.clean += 1;
            for dir in Dir::BOTH {
                if m.relay().bytes(dir).sent != s.delivered[dir as usize] {
                    self.violations.push(format!(
                        "slot {slot}: {dir:?} relay counted {} sent, the sink got {}",
                        m.relay().bytes(dir).sent,
                        s.delivered[dir as usize]
                    ));
                }
                if s.delivered[dir as usize] != u64::from(s.totals[dir as usize]) {
                    self.violations.push(format!(
                        "slot {slot}: clean close moved {} of {} bytes {dir:?}",
                        s.delivered[dir as usize], s.totals[dir as usize]
                    ));
                }
            }
        }
        self.free.push(slot);
    }

    /// A close cancels what is in flight on the slot's sockets.
    fn cancel(&mut self, slot: usize) {
        for f in self.inflight.iter_mut() {
            if f.slot == slot && f.op.on_sockets() {
                f.cancelled = true;
            }
        }
    }

    fn relay_action(&mut self, slot: usize, action: relay::Action) {
        match action {
            relay::Action::Recv(dir) => self.start(slot, Op::Recv(dir)),
            relay::Action::Send { dir, len, .. } => self.start(slot, Op::Send { dir, len }),
            relay::Action::ShutdownWrite(side) => {
                let dir = if side == Side::Backend {
                    Dir::Up
                } else {
                    Dir::Down
                };
                self.start(slot, Op::Shutdown(dir));
            }
            relay::Action::Recycle(buf) => {
                self.pool.push(buf);
                self.feed_starved();
            }
            relay::Action::Paused(_) | relay::Action::Resumed(_) => {}
            relay::Action::Reset { .. } | relay::Action::Close => self.violations.push(format!(
                "slot {slot}: the relay's {action:?} reached the driver"
            )),
        }
    }

    // ---- completions and timers ----

    /// A buffer came back: the next starved connection may receive again. Only a live one
    /// is fed, as in the worker: a closing connection's actions may still be being carried
    /// out, and feeding it here would settle it before they are.
    fn feed_starved(&mut self) {
        while let Some(slot) = self.starved.pop() {
            if self.slots[slot].machine.is_live() {
                self.feed(slot, Event::Relay(relay::Event::BufferAvailable));
                return;
            }
        }
    }

    fn step_completion(&mut self) {
        if self.inflight.is_empty() {
            self.feed_starved();
            return;
        }
        let i = self.rng.below(self.inflight.len() as u64) as usize;
        let f = self.inflight.swap_remove(i);
        if self.slots[f.slot].nonce != f.nonce {
            self.violations
                .push(format!("slot {}: a completion outlived its slot", f.slot));
            return;
        }
        if let Err(v) = self.slots[f.slot].machine.completed() {
            self.violations
                .push(format!("slot {}: {v:?} on {f:?}", f.slot));
        }
        match self.complete(f) {
            Some(event) => self.feed(f.slot, event),
            None => self.settle(f.slot),
        }
    }

    /// The completion event of `f`, if the machine hears of it.
    fn complete(&mut self, f: InFlight) -> Option<Event> {
        let w = self.world;
        let slot = f.slot;
        Some(match f.op {
            Op::Socket => {
                if self.rng.chance(w.socket_fail) {
                    Event::SocketCreated(Err(libc::EMFILE))
                } else {
                    self.slots[slot].backend_open = true;
                    Event::SocketCreated(Ok(()))
                }
            }
            Op::Connect if f.cancelled || self.rng.chance(w.connect_timeout) => {
                Event::ConnectDone(Err(libc::ECANCELED))
            }
            Op::Connect if self.rng.chance(w.connect_fail) => {
                Event::ConnectDone(Err(libc::ECONNREFUSED))
            }
            Op::Connect => Event::ConnectDone(Ok(Transport::Ready)),
            Op::Recv(dir) => Event::Relay(relay::Event::Recv(dir, self.receive(f, dir))),
            Op::Send { dir, len } => Event::Relay(relay::Event::Sent(dir, self.send(f, dir, len))),
            Op::Shutdown(dir) => Event::Relay(relay::Event::ShutdownDone(dir)),
            Op::Close => return None,
            Op::MirrorClose => Event::MirrorDone,
            Op::Handshake(side) => {
                // The worker reports a handshake only while the connection is in it.
                if self.slots[slot].machine.stage() != (Stage::Handshaking { side }) {
                    return None;
                }
                let end = if f.cancelled {
                    HandshakeEnd::TimedOut
                } else if self.rng.chance(w.handshake_fail) {
                    [HandshakeEnd::Failed, HandshakeEnd::Local][self.rng.below(2) as usize]
                } else {
                    HandshakeEnd::Done
                };
                Event::Handshaken { side, end }
            }
            Op::Inspect => {
                // The worker decides only while the connection waits for it.
                if self.slots[slot].machine.stage() != Stage::Inspecting {
                    return None;
                }
                let go_on = if f.cancelled {
                    self.rng.chance(w.continue_on_timeout)
                } else {
                    !self.rng.chance(w.inspect_fail)
                };
                if go_on {
                    self.decided(slot)
                } else {
                    Event::InspectionFailed
                }
            }
        })
    }

    fn receive(&mut self, f: InFlight, dir: Dir) -> Received {
        let s = &mut self.slots[f.slot];
        let d = dir as usize;
        if f.cancelled {
            return Received::Error(libc::ECANCELED);
        }
        if s.remaining[d] == 0 {
            return if s.source_resets[d] {
                Received::Error(libc::ECONNRESET)
            } else {
                Received::Eof
            };
        }
        let Some(buf) = self.pool.pop() else {
            self.starved.push(f.slot);
            return Received::NoBuffer;
        };
        // The driver caps a receive at the source's buffer limit.
        let cap = s.machine.relay().limits().recv_bytes(dir).min(32);
        let len = 1 + self.rng.below(u64::from(s.remaining[d].min(cap))) as u32;
        s.remaining[d] -= len;
        Received::Data { buf, len }
    }

    fn send(&mut self, f: InFlight, dir: Dir, len: u32) -> Result<u32, i32> {
        if f.cancelled {
            return Err(libc::ECANCELED);
        }
        if self.rng.chance(self.world.send_error) {
            return Err(libc::EPIPE);
        }
        // A short send moves at least one byte (a socket's send never returns 0 for bytes).
        let n = if self.rng.chance(300) {
            1 + self.rng.below(u64::from(len)) as u32
        } else {
            len
        };
        self.slots[f.slot].delivered[dir as usize] += u64::from(n);
        Ok(n)
    }

    fn tick(&mut self) {
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if s.machine.stage() == Stage::Free {
                continue;
            }
            if s.delay_at_ms.is_some_and(|at| self.now_ms >= at) {
                s.delay_at_ms = None;
                self.feed(slot, Event::DelayOver);
            }
            if self.slots[slot].machine.stage() != Stage::Free {
                self.feed(slot, Event::Tick);
            }
        }
    }

    // ---- the end ----

    /// What must hold once the run is over.
    pub(super) fn check_end(&mut self) {
        let open: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].machine.stage() != Stage::Free)
            .collect();
        if !open.is_empty() {
            self.violations.push(format!("slots never freed: {open:?}"));
        }
        for (name, count) in [
            ("breaker pending requests", self.breaker_pending),
            ("breaker connections", self.breaker_connections),
            ("connection-limit seats", self.limit_seats),
            ("fault seats", self.fault_seats),
        ] {
            if count != 0 {
                self.violations.push(format!("{name} still held: {count}"));
            }
        }
        if self.finished != self.accepted {
            self.violations.push(format!(
                "{} accepted, {} finished",
                self.accepted, self.finished
            ));
        }
        if self.pool.len() != usize::from(self.world.buffers) {
            self.violations.push(format!(
                "{} of {} buffers back in the pool",
                self.pool.len(),
                self.world.buffers
            ));
        }
        if !self.inflight.is_empty() {
            self.violations.push(format!(
                "{} operations still in flight",
                self.inflight.len()
            ));
        }
    }
}

impl Op {
    /// The operation works on one of the connection's two sockets, so a close cancels it
    /// (a socket being created is not one yet: it completes, and is closed as a stray).
    fn on_sockets(self) -> bool {
        matches!(
            self,
            Op::Connect
                | Op::Recv(_)
                | Op::Send { .. }
                | Op::Shutdown(_)
                | Op::Handshake(_)
                | Op::Inspect
        )
    }
}
