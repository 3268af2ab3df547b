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
//! - **Backpressure.** Each direction holds at most two buffers: one being sent and one
//!   received behind it (so the next receive overlaps the current send). With two held it
//!   stops receiving until the first is fully written. A slow reader therefore stops the
//!   other side's reads; memory per connection is bounded by four buffers.
//! - **Buffer limits** ([`BufferLimits`], Envoy's `per_connection_buffer_limit_bytes` as
//!   watermarks): a direction also stops receiving while it holds more unsent bytes than its
//!   sink's limit, and starts again once a send brings them back to the limit; the worker
//!   caps each receive at the source's limit. A direction therefore holds at most its sink's
//!   limit plus one receive.
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

/// What holds bytes received and not yet sent: a provided buffer of the worker's ring, or
/// the direction's pipe (splice mode). The relay only passes it along; the worker hands each
/// kind to what owns it, so a pipe's id can never be taken for a ring buffer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufId {
    /// A provided buffer, as the ring handed it over.
    Ring(crate::sys::RingBuf),
    /// A pipe of the worker's pipe pool, by its index.
    Pipe(u16),
}

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

/// Envoy's `per_connection_buffer_limit_bytes` of the two connections: the listener's for the
/// client's, the cluster's for the backend's. 0: no limit (Envoy disables the watermarks).
///
/// Envoy reads at most a connection's limit from it per read, and stops reading from one
/// side while the other side's write buffer is above that other side's limit. Here the
/// bytes a direction holds (received, not yet sent) are its sink's write buffer: `dir` stops
/// receiving while it holds more than [`BufferLimits::hold_bytes`], and each of its receives
/// is at most [`BufferLimits::recv_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// The client connection's limit (the listener's).
    pub client_bytes: u32,
    /// The backend connection's limit (the cluster's).
    pub backend_bytes: u32,
}

impl BufferLimits {
    /// Envoy's default for both: 1 MiB.
    pub const ENVOY_DEFAULT: BufferLimits = BufferLimits {
        client_bytes: 1024 * 1024,
        backend_bytes: 1024 * 1024,
    };

    fn of(self, side: Side) -> u32 {
        let limit = match side {
            Side::Client => self.client_bytes,
            Side::Backend => self.backend_bytes,
        };
        if limit == 0 {
            u32::MAX
        } else {
            limit
        }
    }

    /// The most one receive on `dir`'s source may take: the source's limit.
    pub fn recv_bytes(self, dir: Dir) -> u32 {
        self.of(dir.source())
    }

    /// `dir` stops receiving while it holds more than this: its sink's limit.
    pub fn hold_bytes(self, dir: Dir) -> u32 {
        self.of(dir.sink())
    }
}

impl Default for BufferLimits {
    fn default() -> Self {
        BufferLimits::ENVOY_DEFAULT
    }
}

/// A send in flight: `len` bytes at `offset` of `buf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sending {
    buf: BufId,
    offset: u32,
    len: u32,
    /// A short send happened: reading is paused until this buffer is written.
    paused: bool,
}

/// Where a direction's shutdown of its sink stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shut {
    NotYet,
    InFlight,
    Done,
}

/// Where one direction stands. At most two buffers: one being sent, one received and queued
/// behind it; a receive is in flight only while fewer than two are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    started: bool,
    /// A receive is in flight.
    reading: bool,
    /// The ring had no buffer; waiting for one.
    starved: bool,
    sending: Option<Sending>,
    /// Received while a send was in flight; sent next.
    queued: Option<(BufId, u32)>,
    /// The source sent FIN.
    eof: bool,
    shut: Shut,
}

impl Flow {
    const IDLE: Flow = Flow {
        started: false,
        reading: false,
        starved: false,
        sending: None,
        queued: None,
        eof: false,
        shut: Shut::NotYet,
    };
}

/// Up to six actions per event, without allocation.
pub type Actions = crate::action_list::ActionList<Action, 6>;

/// Byte counts of one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bytes {
    /// Bytes received from the source.
    pub received: u64,
    /// Bytes written to the sink.
    pub sent: u64,
}

/// The two-direction relay of one connection: 112 bytes (asserted below), held inline in
/// every connection slot.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    flows: [Flow; 2],
    bytes: [Bytes; 2],
    limits: BufferLimits,
    reset: bool,
}

// Two `Flow`s, two `Bytes` (32), the limits (8) and the reset flag, padded to 8. Every
// connection slot holds one, so growth here grows the slab: change the figure deliberately,
// with the doc above.
const _: () = assert!(std::mem::size_of::<Relay>() == 112);

impl Default for Relay {
    fn default() -> Self {
        Relay::new()
    }
}

impl Relay {
    /// A relay that has not started, with Envoy's default buffer limits.
    pub const fn new() -> Relay {
        Relay::with_limits(BufferLimits::ENVOY_DEFAULT)
    }

    /// A relay that has not started, with these buffer limits.
    pub const fn with_limits(limits: BufferLimits) -> Relay {
        Relay {
            flows: [Flow::IDLE; 2],
            bytes: [Bytes {
                received: 0,
                sent: 0,
            }; 2],
            limits,
            reset: false,
        }
    }

    /// Its buffer limits.
    pub fn limits(&self) -> BufferLimits {
        self.limits
    }

    /// Bytes `dir` holds: received and not yet sent.
    pub fn held_bytes(&self, dir: Dir) -> u64 {
        let f = &self.flows[dir as usize];
        let sending = f.sending.map_or(0, |s| u64::from(s.len));
        let queued = f.queued.map_or(0, |(_, len)| u64::from(len));
        sending + queued
    }

    /// Starts both directions.
    pub fn start(&mut self, out: &mut Actions) {
        for dir in Dir::BOTH {
            self.flows[dir as usize].started = true;
            self.maybe_recv(dir, out);
        }
    }

    /// Byte counts of `dir`.
    pub fn bytes(&self, dir: Dir) -> Bytes {
        self.bytes[dir as usize]
    }

    /// True once both directions finished or the relay was reset.
    pub fn is_done(&self) -> bool {
        self.reset || self.flows.iter().all(|f| f.shut == Shut::Done)
    }

    /// True if the relay ended in a reset.
    pub fn was_reset(&self) -> bool {
        self.reset
    }

    /// True while `dir` waits for a buffer.
    pub fn is_starved(&self, dir: Dir) -> bool {
        self.flows[dir as usize].starved && !self.reset
    }

    /// Stops both directions without a failing side (idle timeout, drain): the worker resets
    /// or closes the sockets itself. Queued buffers come back through `out` now; buffers in a
    /// send or a receive come back through later events.
    pub fn abort(&mut self, out: &mut Actions) {
        if !self.reset {
            self.reset = true;
            self.release_queued(out);
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

    /// Receives again on `dir` if it may: started, no receive in flight, not starved, its
    /// source not ended, fewer than two buffers held, no more bytes held than its limit.
    fn maybe_recv(&mut self, dir: Dir, out: &mut Actions) {
        let over_limit = self.held_bytes(dir) > u64::from(self.limits.hold_bytes(dir));
        let f = &mut self.flows[dir as usize];
        if self.reset
            || !f.started
            || f.reading
            || f.starved
            || f.eof
            || f.queued.is_some()
            || over_limit
        {
            return;
        }
        f.reading = true;
        out.push(Action::Recv(dir));
    }

    /// Propagates the source's FIN once every byte before it was written.
    fn maybe_shutdown(&mut self, dir: Dir, out: &mut Actions) {
        let f = &mut self.flows[dir as usize];
        if self.reset
            || !f.eof
            || f.sending.is_some()
            || f.queued.is_some()
            || f.shut != Shut::NotYet
        {
            return;
        }
        f.shut = Shut::InFlight;
        out.push(Action::ShutdownWrite(dir.sink()));
    }

    fn send(&mut self, dir: Dir, buf: BufId, len: u32, out: &mut Actions) {
        self.flows[dir as usize].sending = Some(Sending {
            buf,
            offset: 0,
            len,
            paused: false,
        });
        out.push(Action::Send {
            dir,
            buf,
            offset: 0,
            len,
        });
    }

    fn on_recv(&mut self, dir: Dir, received: Received, out: &mut Actions) {
        let d = dir as usize;
        self.flows[d].reading = false;
        if self.reset {
            // Only a buffer the kernel filled needs handing back.
            if let Received::Data { buf, .. } = received {
                out.push(Action::Recycle(buf));
            }
            return;
        }
        match received {
            Received::Data { buf, len } => {
                self.bytes[d].received += u64::from(len);
                if self.flows[d].sending.is_none() {
                    self.send(dir, buf, len, out);
                } else {
                    self.flows[d].queued = Some((buf, len));
                }
                self.maybe_recv(dir, out);
            }
            Received::Eof => {
                self.flows[d].eof = true;
                self.maybe_shutdown(dir, out);
            }
            Received::NoBuffer => self.flows[d].starved = true,
            Received::Error(errno) => self.fail(dir.source(), errno, out),
        }
    }

    fn on_sent(&mut self, dir: Dir, result: Result<u32, i32>, out: &mut Actions) {
        let d = dir as usize;
        let Some(sending) = self.flows[d].sending.take() else {
            return;
        };
        if self.reset {
            out.push(Action::Recycle(sending.buf));
            return;
        }
        match result {
            Ok(n) if n >= sending.len => {
                self.bytes[d].sent += u64::from(sending.len);
                out.push(Action::Recycle(sending.buf));
                if sending.paused {
                    out.push(Action::Resumed(dir));
                }
                if let Some((buf, len)) = self.flows[d].queued.take() {
                    self.send(dir, buf, len, out);
                }
                self.maybe_recv(dir, out);
                self.maybe_shutdown(dir, out);
            }
            Ok(0) => {
                out.push(Action::Recycle(sending.buf));
                self.fail(dir.sink(), libc_epipe(), out);
            }
            Ok(n) => {
                self.bytes[d].sent += u64::from(n);
                let rest = Sending {
                    buf: sending.buf,
                    offset: sending.offset + n,
                    len: sending.len - n,
                    paused: true,
                };
                self.flows[d].sending = Some(rest);
                if !sending.paused {
                    out.push(Action::Paused(dir));
                }
                out.push(Action::Send {
                    dir,
                    buf: rest.buf,
                    offset: rest.offset,
                    len: rest.len,
                });
                // Fewer bytes held: back under the limit, the direction may receive again.
                self.maybe_recv(dir, out);
            }
            Err(errno) => {
                out.push(Action::Recycle(sending.buf));
                self.fail(dir.sink(), errno, out);
            }
        }
    }

    fn on_shutdown_done(&mut self, dir: Dir, out: &mut Actions) {
        let d = dir as usize;
        if self.flows[d].shut != Shut::InFlight {
            return;
        }
        self.flows[d].shut = Shut::Done;
        if !self.reset && self.flows.iter().all(|f| f.shut == Shut::Done) {
            out.push(Action::Close);
        }
    }

    fn on_buffer_available(&mut self, out: &mut Actions) {
        for dir in Dir::BOTH {
            if self.flows[dir as usize].starved {
                self.flows[dir as usize].starved = false;
                self.maybe_recv(dir, out);
            }
        }
    }

    /// Hands back buffers received but not yet sending (after a reset or abort).
    fn release_queued(&mut self, out: &mut Actions) {
        for f in self.flows.iter_mut() {
            if let Some((buf, _)) = f.queued.take() {
                out.push(Action::Recycle(buf));
            }
        }
    }

    fn fail(&mut self, failed: Side, errno: i32, out: &mut Actions) {
        if self.reset {
            return;
        }
        self.reset = true;
        self.release_queued(out);
        out.push(Action::Reset { failed, errno });
    }
}

const fn libc_epipe() -> i32 {
    32 // EPIPE on Linux
}

#[cfg(test)]
mod tests;
