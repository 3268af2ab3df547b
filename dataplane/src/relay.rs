//! The relay: the per-connection state machine that moves bytes both ways.
//!
//! Pure code: no I/O, no clock, no allocation. The worker feeds it completions ([`Event`]) and
//! carries out what it asks for ([`Action`]). Keeping it pure lets the tests drive it with
//! random short reads, short writes, buffer starvation and any completion order, without
//! sockets.
//!
//! Guarantees:
//! - **Exact bytes.** Every byte received from one side is sent to the other, in order, before
//!   anything that comes after it; a short send is resumed from where it stopped.
//! - **Half-close.** End of stream on one side becomes `shutdown(SHUT_WR)` on the other side,
//!   after every byte before it was written; the other direction keeps flowing. The relay
//!   finishes only when both directions have finished.
//! - **Reset.** An error on either side (reset, broken pipe) stops both directions and asks
//!   the worker to reset the other side, so a reset reaches the peer as a reset, not as a
//!   clean end of stream that would hide truncation.
//! - **Backpressure.** Each direction has at most one buffer: it receives again only after
//!   the previous buffer was fully written. A slow reader therefore stops the other side's
//!   reads; memory per connection is bounded by two buffers.
//! - **Buffers are never lost.** Every buffer handed in by a receive is handed back through
//!   [`Action::Recycle`] exactly once, also after a reset.

/// One socket of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream (client) socket.
    Client,
    /// The upstream (backend) socket.
    Backend,
}

impl Side {
    /// The other socket.
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// A direction of flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to backend.
    Up = 0,
    /// Backend to client.
    Down = 1,
}

impl Dir {
    /// Both directions.
    pub const BOTH: [Dir; 2] = [Dir::Up, Dir::Down];

    /// The socket this direction reads from.
    pub fn source(self) -> Side {
        match self {
            Dir::Up => Side::Client,
            Dir::Down => Side::Backend,
        }
    }

    /// The socket this direction writes to.
    pub fn sink(self) -> Side {
        self.source().other()
    }
}

/// Identifies a provided buffer (the buffer ring's buffer id).
pub type BufId = u16;

/// What a receive completed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// `len` bytes (> 0) in buffer `buf`.
    Data {
        /// The buffer the kernel picked.
        buf: BufId,
        /// Bytes in it.
        len: u32,
    },
    /// End of stream (the source sent FIN).
    Eof,
    /// The buffer ring was empty; retry when a buffer comes back.
    NoBuffer,
    /// The receive failed with this errno (reset, timeout, ...).
    Error(i32),
}

/// A completion, as the relay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A receive on `dir`'s source completed.
    Recv(Dir, Received),
    /// A send on `dir`'s sink completed: bytes written, or errno.
    Sent(Dir, Result<u32, i32>),
    /// `shutdown(SHUT_WR)` on `dir`'s sink completed (its result does not matter).
    ShutdownDone(Dir),
    /// A buffer came back to the ring: a starved direction may receive again.
    BufferAvailable,
}

/// What the worker must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive from `dir`'s source into a ring buffer.
    Recv(Dir),
    /// Send `len` bytes at `offset` of `buf` to `dir`'s sink.
    Send {
        /// Direction.
        dir: Dir,
        /// Buffer.
        buf: BufId,
        /// Start within the buffer.
        offset: u32,
        /// Bytes to send.
        len: u32,
    },
    /// `shutdown(SHUT_WR)` on this socket (propagates a FIN).
    ShutdownWrite(Side),
    /// Give this buffer back to the ring.
    Recycle(BufId),
    /// `side` failed: stop everything, reset the other side, close both.
    Reset {
        /// The socket that failed.
        failed: Side,
        /// Its errno.
        errno: i32,
    },
    /// Both directions finished cleanly: close both sockets.
    Close,
    /// Reading from `dir`'s source paused because its sink is slow (flow-control stat).
    Paused(Dir),
    /// Reading from `dir`'s source resumed (flow-control stat).
    Resumed(Dir),
}

/// Where one direction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Not started.
    Idle,
    /// A receive is in flight.
    Reading,
    /// The ring had no buffer; waiting for one.
    Starved,
    /// A send of `buf[offset..offset+len]` is in flight.
    Writing {
        buf: BufId,
        offset: u32,
        len: u32,
        paused: bool,
    },
    /// End of stream read; shutdown of the sink in flight.
    ShuttingDown,
    /// End of stream propagated.
    Finished,
    /// Stopped by a reset; nothing in flight that matters except buffers to recycle.
    Stopped,
}

/// Up to four actions per event, without allocation.
#[derive(Debug, Default)]
pub struct Actions {
    items: [Option<Action>; 4],
    len: usize,
}

impl Actions {
    fn push(&mut self, a: Action) {
        // The state machine emits at most 4 actions per event (asserted by tests).
        debug_assert!(self.len < self.items.len());
        if self.len < self.items.len() {
            self.items[self.len] = Some(a);
            self.len += 1;
        }
    }

    /// Removes every action.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The actions, in the order they must be carried out.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }

    /// Number of actions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Byte counts of one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bytes {
    /// Bytes received from the source.
    pub received: u64,
    /// Bytes written to the sink.
    pub sent: u64,
}

/// The two-direction relay of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    flows: [Flow; 2],
    bytes: [Bytes; 2],
    reset: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}

impl Relay {
    /// A relay that has not started.
    pub const fn new() -> Relay {
        Relay {
            flows: [Flow::Idle; 2],
            bytes: [Bytes {
                received: 0,
                sent: 0,
            }; 2],
            reset: false,
        }
    }

    /// Starts both directions.
    pub fn start(&mut self, out: &mut Actions) {
        for dir in Dir::BOTH {
            self.flows[dir as usize] = Flow::Reading;
            out.push(Action::Recv(dir));
        }
    }

    /// Byte counts of `dir`.
    pub fn bytes(&self, dir: Dir) -> Bytes {
        self.bytes[dir as usize]
    }

    /// True once both directions finished or the relay was reset.
    pub fn is_done(&self) -> bool {
        self.reset || self.flows.iter().all(|f| *f == Flow::Finished)
    }

    /// True if the relay ended in a reset.
    pub fn was_reset(&self) -> bool {
        self.reset
    }

    /// True while `dir` waits for a buffer.
    pub fn is_starved(&self, dir: Dir) -> bool {
        self.flows[dir as usize] == Flow::Starved
    }

    /// Stops both directions without a failing side (idle timeout, drain): the worker resets
    /// or closes the sockets itself. Buffers still in flight come back through later events.
    pub fn abort(&mut self) {
        self.reset = true;
        self.stop_flows();
    }

    fn stop_flows(&mut self) {
        for f in self.flows.iter_mut() {
            // A direction still writing keeps its buffer until its send completes.
            if !matches!(f, Flow::Writing { .. }) {
                *f = Flow::Stopped;
            }
        }
    }

    /// Feeds one completion; appends what to do to `out`.
    pub fn on_event(&mut self, event: Event, out: &mut Actions) {
        match event {
            Event::Recv(dir, received) => self.on_recv(dir, received, out),
            Event::Sent(dir, result) => self.on_sent(dir, result, out),
            Event::ShutdownDone(dir) => self.on_shutdown_done(dir, out),
            Event::BufferAvailable => self.on_buffer_available(out),
        }
    }

    fn on_recv(&mut self, dir: Dir, received: Received, out: &mut Actions) {
        let d = dir as usize;
        if self.flows[d] != Flow::Reading {
            // Only reachable after a reset: hand back any buffer the kernel filled.
            if let Received::Data { buf, .. } = received {
                out.push(Action::Recycle(buf));
            }
            return;
        }
        match received {
            Received::Data { buf, len } => {
                self.bytes[d].received += u64::from(len);
                self.flows[d] = Flow::Writing {
                    buf,
                    offset: 0,
                    len,
                    paused: false,
                };
                out.push(Action::Send {
                    dir,
                    buf,
                    offset: 0,
                    len,
                });
            }
            Received::Eof => {
                self.flows[d] = Flow::ShuttingDown;
                out.push(Action::ShutdownWrite(dir.sink()));
            }
            Received::NoBuffer => self.flows[d] = Flow::Starved,
            Received::Error(errno) => self.fail(dir.source(), errno, out),
        }
    }

    fn on_sent(&mut self, dir: Dir, result: Result<u32, i32>, out: &mut Actions) {
        let d = dir as usize;
        let Flow::Writing {
            buf,
            offset,
            len,
            paused,
        } = self.flows[d]
        else {
            return;
        };
        if self.reset {
            out.push(Action::Recycle(buf));
            return;
        }
        match result {
            Ok(n) if n >= len => {
                self.bytes[d].sent += u64::from(len);
                out.push(Action::Recycle(buf));
                if paused {
                    out.push(Action::Resumed(dir));
                }
                self.flows[d] = Flow::Reading;
                out.push(Action::Recv(dir));
            }
            Ok(0) => {
                // A zero-byte send on a stream socket means the peer is gone.
                self.flows[d] = Flow::Stopped;
                out.push(Action::Recycle(buf));
                self.fail(dir.sink(), libc_epipe(), out);
            }
            Ok(n) => {
                self.bytes[d].sent += u64::from(n);
                self.flows[d] = Flow::Writing {
                    buf,
                    offset: offset + n,
                    len: len - n,
                    paused: true,
                };
                if !paused {
                    out.push(Action::Paused(dir));
                }
                out.push(Action::Send {
                    dir,
                    buf,
                    offset: offset + n,
                    len: len - n,
                });
            }
            Err(errno) => {
                self.flows[d] = Flow::Stopped;
                out.push(Action::Recycle(buf));
                self.fail(dir.sink(), errno, out);
            }
        }
    }

    fn on_shutdown_done(&mut self, dir: Dir, out: &mut Actions) {
        let d = dir as usize;
        if self.flows[d] != Flow::ShuttingDown {
            return;
        }
        self.flows[d] = Flow::Finished;
        if self.flows.iter().all(|f| *f == Flow::Finished) {
            out.push(Action::Close);
        }
    }

    fn on_buffer_available(&mut self, out: &mut Actions) {
        for dir in Dir::BOTH {
            if self.flows[dir as usize] == Flow::Starved {
                self.flows[dir as usize] = Flow::Reading;
                out.push(Action::Recv(dir));
            }
        }
    }

    fn fail(&mut self, failed: Side, errno: i32, out: &mut Actions) {
        if self.reset {
            return;
        }
        self.reset = true;
        self.stop_flows();
        out.push(Action::Reset { failed, errno });
    }
}

const fn libc_epipe() -> i32 {
    32 // EPIPE on Linux
}

#[cfg(test)]
mod tests;
