//! The relay driven without sockets: random short reads and writes, random completion order,
//! buffer starvation, resets on either side.

use super::*;
use crate::testing::Rng;
use proptest::prelude::*;

const BUF_SIZE: usize = 16;

#[derive(Clone, Copy, Debug)]
enum Ending {
    Eof,
    Reset,
}

/// One direction's source data and how it ends.
struct Source {
    data: Vec<u8>,
    read: usize,
    ending: Ending,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Recv(Dir),
    Send {
        dir: Dir,
        buf: BufId,
        offset: u32,
        len: u32,
    },
    Shutdown(Dir),
}

/// The simulator's buffers are numbered like pipes: the relay does not care which kind.
fn index(buf: BufId) -> usize {
    match buf {
        BufId::Pipe(i) => usize::from(i),
        BufId::Ring(_) => unreachable!("the simulator hands out no ring buffers"),
    }
}

struct Sim {
    rng: Rng,
    relay: Relay,
    sources: [Source; 2],
    sinks: [Vec<u8>; 2],
    sink_shut: [bool; 2],
    /// A sink that fails sends after accepting this many bytes.
    sink_fail_after: [Option<usize>; 2],
    buffers: Vec<[u8; BUF_SIZE]>,
    free: Vec<BufId>,
    inflight: Vec<Op>,
    resets: Vec<(Side, i32)>,
    closes: usize,
    paused: [u32; 2],
    resumed: [u32; 2],
    /// The most bytes each direction held, seen after every event.
    max_held: [u64; 2],
}

impl Sim {
    fn new(seed: u64, data: [Vec<u8>; 2], endings: [Ending; 2], bufs: usize) -> Sim {
        let [d0, d1] = data;
        Sim {
            rng: Rng::new(seed),
            relay: Relay::new(),
            sources: [
                Source {
                    data: d0,
                    read: 0,
                    ending: endings[0],
                },
                Source {
                    data: d1,
                    read: 0,
                    ending: endings[1],
                },
            ],
            sinks: [Vec::new(), Vec::new()],
            sink_shut: [false; 2],
            sink_fail_after: [None; 2],
            buffers: vec![[0u8; BUF_SIZE]; bufs],
            free: (0..bufs as u16).map(BufId::Pipe).collect(),
            inflight: Vec::new(),
            resets: Vec::new(),
            closes: 0,
            paused: [0; 2],
            resumed: [0; 2],
            max_held: [0; 2],
        }
    }

    fn with_limits(mut self, limits: BufferLimits) -> Sim {
        self.relay = Relay::with_limits(limits);
        self
    }

    fn apply(&mut self, actions: &Actions) {
        assert!(actions.len() <= 6);
        for a in actions.iter() {
            match a {
                Action::Recv(dir) => {
                    let limits = self.relay.limits();
                    assert!(
                        self.relay.held_bytes(dir) <= u64::from(limits.hold_bytes(dir)),
                        "a receive while over the limit"
                    );
                    self.inflight.push(Op::Recv(dir))
                }
                Action::Send {
                    dir,
                    buf,
                    offset,
                    len,
                } => {
                    assert!(len > 0);
                    assert!(!self.free.contains(&buf), "send from a free buffer");
                    self.inflight.push(Op::Send {
                        dir,
                        buf,
                        offset,
                        len,
                    })
                }
                Action::ShutdownWrite(side) => {
                    let dir = if side == Side::Backend {
                        Dir::Up
                    } else {
                        Dir::Down
                    };
                    self.inflight.push(Op::Shutdown(dir))
                }
                Action::Recycle(buf) => {
                    assert!(!self.free.contains(&buf), "buffer recycled twice");
                    self.free.push(buf);
                    let mut more = Actions::default();
                    self.relay.on_event(Event::BufferAvailable, &mut more);
                    self.apply(&more);
                }
                Action::Reset { failed, errno } => self.resets.push((failed, errno)),
                Action::Close => self.closes += 1,
                Action::Paused(dir) => self.paused[dir as usize] += 1,
                Action::Resumed(dir) => self.resumed[dir as usize] += 1,
            }
        }
    }

    fn complete(&mut self, op: Op) -> Event {
        match op {
            Op::Recv(dir) => {
                let src = &mut self.sources[dir as usize];
                let left = src.data.len() - src.read;
                if left == 0 {
                    return Event::Recv(
                        dir,
                        match src.ending {
                            Ending::Eof => Received::Eof,
                            Ending::Reset => Received::Error(104),
                        },
                    );
                }
                let Some(buf) = self.free.pop() else {
                    return Event::Recv(dir, Received::NoBuffer);
                };
                // The worker caps a receive at the source's limit.
                let cap = (self.relay.limits().recv_bytes(dir) as usize).min(BUF_SIZE);
                let n = 1 + self.rng.below(left.min(cap) as u64) as usize;
                self.buffers[index(buf)][..n].copy_from_slice(&src.data[src.read..src.read + n]);
                src.read += n;
                Event::Recv(dir, Received::Data { buf, len: n as u32 })
            }
            Op::Send {
                dir,
                buf,
                offset,
                len,
            } => {
                let d = dir as usize;
                assert!(!self.sink_shut[d], "write after shutdown");
                if let Some(limit) = self.sink_fail_after[d] {
                    if self.sinks[d].len() >= limit {
                        return Event::Sent(dir, Err(32));
                    }
                }
                let n = 1 + self.rng.below(u64::from(len)) as usize;
                let start = offset as usize;
                self.sinks[d].extend_from_slice(&self.buffers[index(buf)][start..start + n]);
                Event::Sent(dir, Ok(n as u32))
            }
            Op::Shutdown(dir) => {
                self.sink_shut[dir as usize] = true;
                Event::ShutdownDone(dir)
            }
        }
    }

    fn run(&mut self) {
        let mut out = Actions::default();
        self.relay.start(&mut out);
        self.apply(&out);
        let mut steps = 0;
        while !self.inflight.is_empty() {
            steps += 1;
            assert!(steps < 1_000_000, "no progress");
            let i = self.rng.below(self.inflight.len() as u64) as usize;
            let op = self.inflight.swap_remove(i);
            let ev = self.complete(op);
            let mut out = Actions::default();
            self.relay.on_event(ev, &mut out);
            self.apply(&out);
            for dir in Dir::BOTH {
                let held = self.relay.held_bytes(dir);
                self.max_held[dir as usize] = self.max_held[dir as usize].max(held);
            }
        }
    }
}

fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.next() as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Both sides send then FIN: every byte arrives in order, each sink sees a shutdown after
    /// the last byte, the relay closes once, every buffer comes back.
    #[test]
    fn clean_streams_are_byte_exact(seed: u64, up in 0usize..300, down in 0usize..300, bufs in 1usize..4) {
        let data = [bytes(seed, up), bytes(seed ^ 0xabc, down)];
        let mut sim = Sim::new(seed, data.clone(), [Ending::Eof, Ending::Eof], bufs);
        sim.run();
        prop_assert_eq!(&sim.sinks[0], &data[0]);
        prop_assert_eq!(&sim.sinks[1], &data[1]);
        prop_assert!(sim.sink_shut[0] && sim.sink_shut[1]);
        prop_assert_eq!(sim.closes, 1);
        prop_assert!(sim.resets.is_empty());
        prop_assert_eq!(sim.free.len(), bufs);
        prop_assert!(sim.relay.is_done());
        prop_assert_eq!(sim.relay.bytes(Dir::Up), Bytes { received: up as u64, sent: up as u64 });
        prop_assert_eq!(sim.relay.bytes(Dir::Down), Bytes { received: down as u64, sent: down as u64 });
        prop_assert_eq!(sim.paused, sim.resumed);
    }

    /// Buffer limits: every byte still arrives in order, and a direction never holds more
    /// than its sink's limit plus one receive (which is at most its source's limit).
    #[test]
    fn buffer_limits_bound_what_a_direction_holds(
        seed: u64,
        up in 0usize..300,
        down in 0usize..300,
        client in 0u32..24,
        backend in 0u32..24,
    ) {
        let data = [bytes(seed, up), bytes(seed ^ 0x55, down)];
        let limits = BufferLimits { client_bytes: client, backend_bytes: backend };
        let mut sim = Sim::new(seed, data.clone(), [Ending::Eof, Ending::Eof], 3).with_limits(limits);
        sim.run();
        prop_assert_eq!(&sim.sinks[0], &data[0]);
        prop_assert_eq!(&sim.sinks[1], &data[1]);
        prop_assert_eq!(sim.closes, 1);
        prop_assert_eq!(sim.free.len(), 3);
        for dir in Dir::BOTH {
            let one_receive = u64::from(limits.recv_bytes(dir)).min(BUF_SIZE as u64);
            let bound = u64::from(limits.hold_bytes(dir)).min(BUF_SIZE as u64) + one_receive;
            prop_assert!(sim.max_held[dir as usize] <= bound,
                "{:?} held {} > {}", dir, sim.max_held[dir as usize], bound);
        }
    }

    /// One source resets: the relay asks to reset the other side exactly once, what reached
    /// each sink is a prefix of what was sent, and every buffer comes back.
    #[test]
    fn reset_is_propagated_and_nothing_leaks(seed: u64, up in 0usize..200, down in 0usize..200, reset_up: bool) {
        let data = [bytes(seed, up), bytes(seed ^ 7, down)];
        let endings = if reset_up { [Ending::Reset, Ending::Eof] } else { [Ending::Eof, Ending::Reset] };
        let mut sim = Sim::new(seed, data.clone(), endings, 2);
        sim.run();
        prop_assert_eq!(sim.resets.len(), 1);
        let failed = if reset_up { Side::Client } else { Side::Backend };
        prop_assert_eq!(sim.resets[0].0, failed);
        prop_assert!(data[0].starts_with(&sim.sinks[0]));
        prop_assert!(data[1].starts_with(&sim.sinks[1]));
        prop_assert_eq!(sim.closes, 0);
        prop_assert_eq!(sim.free.len(), 2);
        prop_assert!(sim.relay.was_reset());
    }

    /// A sink that fails mid-stream resets the relay, blaming the sink's side.
    #[test]
    fn sink_failure_blames_the_sink(seed: u64, up in 1usize..200, limit in 0usize..100) {
        let data = [bytes(seed, up), Vec::new()];
        let mut sim = Sim::new(seed, data.clone(), [Ending::Eof, Ending::Eof], 2);
        sim.sink_fail_after[0] = Some(limit);
        sim.run();
        if sim.sinks[0].len() < up {
            prop_assert_eq!(sim.resets.len(), 1);
            prop_assert_eq!(sim.resets[0].0, Side::Backend);
            prop_assert!(sim.sinks[0].len() >= limit);
        } else {
            prop_assert!(sim.resets.is_empty());
            prop_assert_eq!(sim.closes, 1);
        }
        prop_assert!(data[0].starts_with(&sim.sinks[0]));
        prop_assert_eq!(sim.free.len(), 2);
    }
}

/// Over its sink's limit a direction stops receiving, even with no buffer queued, and a
/// send that brings it back to the limit starts the receive again.
#[test]
fn over_the_limit_a_direction_waits_for_its_send() {
    // The backend's limit is what the upward direction may hold.
    let limits = BufferLimits {
        client_bytes: 64,
        backend_bytes: 4,
    };
    let mut r = Relay::with_limits(limits);
    let mut out = Actions::default();
    r.start(&mut out);
    let has_recv = |out: &Actions| out.iter().any(|a| a == Action::Recv(Dir::Up));
    // 4 received (at the limit, not over it): sent, and the next receive overlaps the send.
    let mut out = Actions::default();
    let received = Received::Data {
        buf: BufId::Pipe(0),
        len: 4,
    };
    r.on_event(Event::Recv(Dir::Up, received), &mut out);
    assert!(has_recv(&out));
    let mut out = Actions::default();
    r.on_event(Event::Sent(Dir::Up, Ok(4)), &mut out);
    assert!(!has_recv(&out), "the receive is still in flight");
    // 10 received: sent, but 10 held is over the limit, so no receive behind it.
    let mut out = Actions::default();
    let received = Received::Data {
        buf: BufId::Pipe(1),
        len: 10,
    };
    r.on_event(Event::Recv(Dir::Up, received), &mut out);
    assert!(!has_recv(&out));
    assert_eq!(r.held_bytes(Dir::Up), 10);
    // Short sends: 7 held, still over; 4 held, back at the limit: the receive starts.
    let mut out = Actions::default();
    r.on_event(Event::Sent(Dir::Up, Ok(3)), &mut out);
    assert!(!has_recv(&out));
    let mut out = Actions::default();
    r.on_event(Event::Sent(Dir::Up, Ok(3)), &mut out);
    assert!(has_recv(&out));
    assert_eq!(r.held_bytes(Dir::Up), 4);
    // The other direction's limit is the client's: 64, untouched by all this.
    assert_eq!(limits.hold_bytes(Dir::Down), 64);
    assert_eq!(limits.recv_bytes(Dir::Down), 4);
}

#[test]
fn half_close_keeps_the_other_direction_open() {
    let mut r = Relay::new();
    let mut out = Actions::default();
    r.start(&mut out);
    out.clear();
    r.on_event(Event::Recv(Dir::Up, Received::Eof), &mut out);
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![Action::ShutdownWrite(Side::Backend)]
    );
    out.clear();
    r.on_event(Event::ShutdownDone(Dir::Up), &mut out);
    assert!(out.is_empty());
    assert!(!r.is_done());
    r.on_event(
        Event::Recv(
            Dir::Down,
            Received::Data {
                buf: BufId::Pipe(3),
                len: 10,
            },
        ),
        &mut out,
    );
    // The next receive overlaps the send.
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![
            Action::Send {
                dir: Dir::Down,
                buf: BufId::Pipe(3),
                offset: 0,
                len: 10
            },
            Action::Recv(Dir::Down)
        ]
    );
    out.clear();
    r.on_event(Event::Sent(Dir::Down, Ok(4)), &mut out);
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![
            Action::Paused(Dir::Down),
            Action::Send {
                dir: Dir::Down,
                buf: BufId::Pipe(3),
                offset: 4,
                len: 6
            }
        ]
    );
    out.clear();
    r.on_event(Event::Sent(Dir::Down, Ok(6)), &mut out);
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![Action::Recycle(BufId::Pipe(3)), Action::Resumed(Dir::Down)]
    );
    out.clear();
    r.on_event(Event::Recv(Dir::Down, Received::Eof), &mut out);
    r.on_event(Event::ShutdownDone(Dir::Down), &mut out);
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![Action::ShutdownWrite(Side::Client), Action::Close]
    );
    assert!(r.is_done() && !r.was_reset());
}

#[test]
fn abort_keeps_buffers_in_flight_accounted() {
    let mut r = Relay::new();
    let mut out = Actions::default();
    r.start(&mut out);
    r.on_event(
        Event::Recv(
            Dir::Up,
            Received::Data {
                buf: BufId::Pipe(1),
                len: 5,
            },
        ),
        &mut out,
    );
    // A second buffer queues behind the send in flight.
    r.on_event(
        Event::Recv(
            Dir::Up,
            Received::Data {
                buf: BufId::Pipe(4),
                len: 5,
            },
        ),
        &mut out,
    );
    out.clear();
    r.abort(&mut out);
    r.on_event(Event::Sent(Dir::Up, Ok(5)), &mut out);
    r.on_event(
        Event::Recv(
            Dir::Down,
            Received::Data {
                buf: BufId::Pipe(2),
                len: 5,
            },
        ),
        &mut out,
    );
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![
            Action::Recycle(BufId::Pipe(4)),
            Action::Recycle(BufId::Pipe(1)),
            Action::Recycle(BufId::Pipe(2))
        ]
    );
}
