//! HBONE on the worker: HTTP/2 CONNECT connections whose streams are connections of their
//! own, with the `h2` crate's codec driven on the worker's thread (no runtime, no thread).
//!
//! # How a stream maps onto slots and buffers
//!
//! - A **carrier** is the slot of one HTTP/2 connection. One side is its socket (with its
//!   TLS, exactly as any connection's); the other side is **virtual**: the codec
//!   ([`crate::hbone::Wire`] byte queues in front of an `h2` connection). The slot's relay
//!   moves the socket's plaintext into the codec and the codec's output to the socket, with
//!   its usual buffers, limits and half-closes. A terminating carrier is accepted on its
//!   listener (its client is the socket, the server codec its backend, connected at once);
//!   a pooled one is opened by the worker for a stream (its client is the client codec, its
//!   backend a socket to the endpoint the stream picked).
//! - A **stream** is a slot of its own whose one side is virtual: a CONNECT stream of a
//!   carrier. A terminated stream's client is the stream and its backend a socket to the
//!   destination; a tunnelled connection's client is its socket and its backend the stream.
//!   It has its own machine (admission, pick, connect, relay, idle, access log) like any
//!   connection.
//! - The relay's operations on a virtual side complete through completions the worker
//!   makes itself, handled in the same loop turn ([`Worker::hbone_run`]): a receive copies
//!   the next bytes (a stream's DATA, the codec's output) into a spare buffer of the
//!   worker's pool, a send copies the relay's bytes into the codec (a stream's send within
//!   its flow-control window, or the codec's input). So a virtual side holds at most the
//!   relay's two buffers per direction, like a socket; what `h2` holds is bounded by its
//!   windows (a stream's received bytes by its stream window, all of a connection's by its
//!   connection window).
//! - The codec makes progress only when the worker polls it: each carrier touched during a
//!   completion batch is pumped once after the batch ([`Worker::hbone_pump`]): the codec
//!   polled, new streams opened, every stream's waiting receive, send, response and request
//!   served, the output handed to the carrier's relay.
//!
//! # Guarantees
//! - **Flow control per stream.** A stream's relay stops receiving when its sink is slow, so
//!   its window closes and only its own peer stops; the other streams go on.
//! - **Half-close and reset both ways.** A FIN is an empty DATA with END_STREAM, END_STREAM
//!   is the relay's end of stream; a reset socket resets its stream (`CONNECT_ERROR`), a
//!   reset stream resets its socket.
//! - **No client byte before the 2xx.** A tunnelled connection connects (its machine's
//!   `ConnectDone`) only once its CONNECT is answered 2xx; any other answer fails that
//!   connect alone.

use super::slot::{CHAIN_NONE, NO_FD};
use super::ud::{self, Kind};
use super::Worker;
use crate::accesslog::tls::TlsRecord;
use crate::conn;
use crate::fib::hbone::HboneTerminate;
use crate::fib::Route;
use crate::hbone::{poll_fn_once, poll_once, Wire};
use crate::relay::{BufId, BufferLimits, Dir, Received, Side};
use crate::stats::{ServerStat, TcpStat};
use crate::sys::{BufClass, RingBuf};
use bytes::Bytes;
use h2::{client, server, Reason, RecvStream, SendStream};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

/// A slot's part in HBONE (`Conn::hbone`).
pub(crate) enum Hbone {
    Carrier(Carrier),
    Stream(Stream),
}

impl std::fmt::Debug for Hbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hbone::Carrier(c) => write!(f, "Carrier({} streams)", c.streams.len()),
            Hbone::Stream(s) => write!(f, "Stream(carrier {:?})", s.carrier),
        }
    }
}

/// One HTTP/2 connection's codec and streams.
pub(crate) struct Carrier {
    wire: Wire,
    codec: Codec,
    /// Its virtual side: the backend of a terminating carrier, the client of a pooled one.
    side: Side,
    io: Virtual,
    /// Its stream slots (slot, nonce).
    streams: Vec<(u32, u32)>,
    /// Pooled: streams whose CONNECT waits for the codec to take one more request.
    queued: Vec<(u32, u32)>,
    /// Pooled: its pool's key, and the most streams it carries.
    pool: Option<PoolKey>,
    max_streams: u32,
    /// Pooled: when its last stream ended (for the pool's idle timeout).
    idle_since_ms: u64,
    idle_timeout_ms: Option<u64>,
    /// No new streams go to it (its codec ended, or it is closing).
    retired: bool,
    /// Terminating: its TLS for its streams' access logs (made at the first stream that
    /// needs it, then shared).
    peer: Option<Arc<TlsRecord>>,
    /// Pooled: the endpoint it connects to (index in its cluster, address): the pick its
    /// first stream made.
    pinned: Option<(Option<u32>, SocketAddr)>,
}

enum Codec {
    ServerHandshake(Pin<Box<server::Handshake<Wire, Bytes>>>),
    Server(Box<server::Connection<Wire, Bytes>>),
    Client {
        conn: Box<client::Connection<Wire, Bytes>>,
        send: Option<client::SendRequest<Bytes>>,
    },
    /// Ended (or failed): dropped, so its streams see the end.
    Done,
}

/// The relay's operations on a virtual side, each answered by a completion the worker makes
/// ([`Worker::post`]).
#[derive(Debug, Default)]
struct Virtual {
    /// The relay's receive waits for bytes.
    recv_waiting: bool,
    /// What the receive's completion delivers.
    recv_answer: Option<Received>,
    /// The relay's send waiting for room: buffer, offset, length.
    send_waiting: Option<(RingBuf, u32, u32)>,
    /// What the send's completion delivers.
    send_answer: Option<Result<u32, i32>>,
    /// What the connect's completion delivers (0 or -errno).
    connect_answer: Option<i32>,
}

impl Virtual {
    /// Nothing waits any more (the side closed); answers already posted stay, for their
    /// completions (a receive's buffer goes to the relay, which recycles it).
    fn stop_waiting(&mut self) {
        self.recv_waiting = false;
        self.send_waiting = None;
    }
}

/// One CONNECT stream's handles, in its own slot.
pub(crate) struct Stream {
    /// Its carrier (slot, nonce), `None` before one is assigned or after it ended.
    carrier: Option<(u32, u32)>,
    /// Its virtual side: the client of a terminated stream, the backend of a tunnelled one.
    side: Side,
    tx: Option<SendStream<Bytes>>,
    rx: Option<RecvStream>,
    /// Bytes of the last DATA frame not yet handed to the relay.
    pending: Bytes,
    /// Terminated: the answer not sent yet.
    respond: Option<server::SendResponse<Bytes>>,
    /// Tunnelled: the CONNECT's answer awaited.
    response: Option<client::ResponseFuture>,
    /// Tunnelled: the request, until the carrier takes it.
    request: Option<http::Request<()>>,
    /// Terminated: the destination `:authority` names.
    authority: Option<SocketAddr>,
    /// Terminated: its HTTP/2 connection's TLS (the peer's identity), for its access log.
    peer: Option<Arc<TlsRecord>>,
    io: Virtual,
    /// Tunnelled: the connect (CONNECT answered) must be done by then.
    connect_deadline_ms: Option<u64>,
}

/// A pool of HTTP/2 connections: one endpoint, one client identity (the cluster's TLS
/// context, by address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    endpoint: SocketAddr,
    identity: usize,
}

/// The worker's HBONE state beside the slab.
#[derive(Debug, Default)]
pub(crate) struct HboneState {
    /// Carriers to pump after this batch (slot, nonce); duplicates are pumped once.
    dirty: Vec<(u32, u32)>,
    /// Tunnelled connections waiting for a carrier (slot, nonce).
    connects: Vec<(u32, u32)>,
    /// Pooled carriers by pool.
    pools: HashMap<PoolKey, Vec<(u32, u32)>>,
    /// Carriers open now (terminating and pooled), for the tick.
    carriers: Vec<(u32, u32)>,
    /// `dirty` and `connects` of the last pump, emptied, for the next (their memory kept).
    spare_dirty: Vec<(u32, u32)>,
    spare_connects: Vec<(u32, u32)>,
    /// Completions of virtual operations (their `user_data`), handled in this loop turn
    /// without a trip through the ring; and the list handled last, emptied.
    synthetic: Vec<u64>,
    spare_synthetic: Vec<u64>,
}

impl HboneState {
    pub(crate) fn has_work(&self) -> bool {
        !self.dirty.is_empty() || !self.connects.is_empty() || !self.synthetic.is_empty()
    }
}

/// The largest frame this side accepts (SETTINGS_MAX_FRAME_SIZE; HTTP/2's default is 16
/// KiB, Envoy has no setting for it): a peer sends a relay's 64 KiB receive as one DATA
/// frame instead of four.
const MAX_FRAME_BYTES: u32 = 256 * 1024;

/// Rounds of pumping and synthetic completions one loop turn runs before it leaves the rest
/// to the ring (as no-ops, completing in the next turn): a bound on the turn's length.
const SYNTHETIC_ROUNDS: usize = 64;

/// The errno a stream's failure reads as on its socket's side.
const STREAM_RESET: i32 = libc::ECONNRESET;

impl Worker {
    // ---- which side is virtual ----

    /// The side of `slot` that is HTTP/2 rather than a socket, if any.
    pub(super) fn virtual_side(&self, slot: u32) -> Option<Side> {
        match self.conns[slot as usize].hbone.as_deref()? {
            Hbone::Carrier(c) => Some(c.side),
            Hbone::Stream(s) => Some(s.side),
        }
    }

    fn is_virtual(&self, slot: u32, side: Side) -> bool {
        self.virtual_side(slot) == Some(side)
    }

    /// A tunnelled connection: its backend is a stream (a request of its cluster), not a
    /// socket.
    pub(super) fn is_tunnelled(&self, slot: u32) -> bool {
        self.is_virtual(slot, Side::Backend)
    }

    fn io_mut(&mut self, slot: u32) -> Option<&mut Virtual> {
        match self.conns[slot as usize].hbone.as_deref_mut()? {
            Hbone::Carrier(c) => Some(&mut c.io),
            Hbone::Stream(s) => Some(&mut s.io),
        }
    }

    fn carrier_mut(&mut self, slot: u32) -> Option<&mut Carrier> {
        match self.conns[slot as usize].hbone.as_deref_mut()? {
            Hbone::Carrier(c) => Some(c),
            Hbone::Stream(_) => None,
        }
    }

    fn stream_mut(&mut self, slot: u32) -> Option<&mut Stream> {
        match self.conns[slot as usize].hbone.as_deref_mut()? {
            Hbone::Stream(s) => Some(s),
            Hbone::Carrier(_) => None,
        }
    }

    /// Whether `slot` is a stream or a pooled carrier: not a connection the listener
    /// accepted (no global connection seat, no `server.total_connections`).
    pub(super) fn is_internal(&self, slot: u32) -> bool {
        match self.conns[slot as usize].hbone.as_deref() {
            Some(Hbone::Carrier(c)) => c.pool.is_some(),
            Some(Hbone::Stream(s)) => s.side == Side::Client,
            None => false,
        }
    }

    /// The endpoint a pooled carrier connects to (index, address).
    pub(super) fn pinned_endpoint(&self, slot: u32) -> Option<(Option<u32>, SocketAddr)> {
        match self.conns[slot as usize].hbone.as_deref()? {
            Hbone::Carrier(c) => c.pinned,
            Hbone::Stream(_) => None,
        }
    }

    /// A terminated stream's TLS for its access log: its HTTP/2 connection's.
    pub(super) fn stream_peer_record(&self, slot: u32) -> Option<Arc<TlsRecord>> {
        match self.conns[slot as usize].hbone.as_deref()? {
            Hbone::Stream(s) => s.peer.clone(),
            Hbone::Carrier(_) => None,
        }
    }

    /// Terminating carrier `slot`'s TLS record, when its streams' logs read TLS (made once).
    fn carrier_peer_record(&mut self, slot: u32, needed: bool) -> Option<Arc<TlsRecord>> {
        if !needed {
            return None;
        }
        let record = match self.carrier_mut(slot)?.peer.clone() {
            Some(r) => r,
            None => {
                let r = super::tls_io::tls_record(&self.conns[slot as usize])?;
                self.carrier_mut(slot)?.peer = Some(r.clone());
                r
            }
        };
        Some(record)
    }

    /// The destination a terminated stream's `:authority` names.
    pub(super) fn stream_authority(&self, slot: u32) -> Option<SocketAddr> {
        match self.conns[slot as usize].hbone.as_deref()? {
            Hbone::Stream(s) => s.authority,
            Hbone::Carrier(_) => None,
        }
    }

    fn mark_dirty(&mut self, carrier: Option<(u32, u32)>) {
        if let Some(c) = carrier {
            self.hbone.dirty.push(c);
        }
    }

    /// A stream operation waits for its carrier's next pump, or, with its carrier gone,
    /// is answered now (its handles fail).
    fn serve_stream_later(&mut self, slot: u32) {
        match self.carrier_of(slot) {
            Some(c) => self.hbone.dirty.push(c),
            None => self.progress_stream(slot),
        }
    }

    fn carrier_of(&self, slot: u32) -> Option<(u32, u32)> {
        match self.conns[slot as usize].hbone.as_deref()? {
            Hbone::Carrier(_) => Some((slot, self.conns[slot as usize].nonce)),
            Hbone::Stream(s) => s.carrier,
        }
    }

    /// A completion of `kind` for `slot`, handled later in this loop turn
    /// ([`Worker::hbone_run`]): the answer it carries is in its [`Virtual`]. Counted as an
    /// operation in flight, like a ring operation.
    fn post(&mut self, slot: u32, kind: Kind) {
        let conn = &mut self.conns[slot as usize];
        conn.machine.started(1);
        self.hbone
            .synthetic
            .push(ud::encode(kind, slot, conn.nonce));
    }

    /// After a completion batch: pumps the carriers touched, then handles the completions
    /// of virtual operations that produced, and again, until nothing is left (at most
    /// [`SYNTHETIC_ROUNDS`] rounds; the rest go to the ring as no-ops). A message crossing
    /// a carrier thus costs no extra `io_uring_enter`.
    pub(super) fn hbone_run(&mut self) {
        for _ in 0..SYNTHETIC_ROUNDS {
            self.hbone_pump();
            if self.hbone.synthetic.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut self.hbone.spare_synthetic);
            std::mem::swap(&mut batch, &mut self.hbone.synthetic);
            for &user_data in &batch {
                self.dispatch(crate::sys::Completion {
                    user_data,
                    result: 0,
                    flags: 0,
                });
            }
            batch.clear();
            self.hbone.spare_synthetic = batch;
        }
        let rest = std::mem::take(&mut self.hbone.synthetic);
        for &user_data in &rest {
            self.ring.nop(user_data);
        }
        self.hbone.synthetic = rest;
        self.hbone.synthetic.clear();
    }

    // ---- the relay's operations on a virtual side ----

    /// The relay receives on `dir` from a virtual source: answered when bytes (or the end)
    /// are there. False when the source is a socket.
    pub(super) fn hbone_recv(&mut self, slot: u32, dir: Dir) -> bool {
        if !self.is_virtual(slot, dir.source()) {
            return false;
        }
        if let Some(io) = self.io_mut(slot) {
            io.recv_waiting = true;
        }
        self.serve_stream_later(slot);
        true
    }

    /// A receive's completion on `dir` of a virtual source: what it delivers.
    pub(super) fn hbone_received(&mut self, slot: u32, dir: Dir) -> Option<Received> {
        if !self.is_virtual(slot, dir.source()) {
            return None;
        }
        let answer = self.io_mut(slot)?.recv_answer.take();
        Some(answer.unwrap_or(Received::Error(libc::EIO)))
    }

    /// The relay sends to a virtual sink: into the codec (a carrier) or the stream. False
    /// when the sink is a socket.
    pub(super) fn hbone_send(
        &mut self,
        slot: u32,
        dir: Dir,
        buf: BufId,
        off: u32,
        len: u32,
    ) -> bool {
        if !self.is_virtual(slot, dir.sink()) {
            return false;
        }
        let BufId::Ring(buf) = buf else {
            unreachable!("HBONE is refused with splice")
        };
        let carrier = self.carrier_of(slot);
        if let Some(c) = self.carrier_mut(slot) {
            let wire = c.wire.clone();
            let bytes = &self.ring.buffer_mut(buf)[off as usize..(off + len) as usize];
            wire.feed(bytes);
            self.io_mut(slot).expect("a carrier").send_answer = Some(Ok(len));
            self.post(slot, super::send_kind(dir));
            self.mark_dirty(carrier);
        } else if let Some(io) = self.io_mut(slot) {
            io.send_waiting = Some((buf, off, len));
            self.serve_stream_later(slot);
        }
        true
    }

    /// A send's completion on `dir` to a virtual sink: its outcome.
    pub(super) fn hbone_sent(&mut self, slot: u32, dir: Dir) -> Option<Result<u32, i32>> {
        if !self.is_virtual(slot, dir.sink()) {
            return None;
        }
        let answer = self.io_mut(slot)?.send_answer.take();
        Some(answer.unwrap_or(Err(libc::EIO)))
    }

    /// The relay ends `side`'s stream, a virtual side: END_STREAM on a stream, the input's
    /// end for a codec. False for a socket.
    pub(super) fn hbone_shutdown(&mut self, slot: u32, side: Side) -> bool {
        if !self.is_virtual(slot, side) {
            return false;
        }
        let carrier = self.carrier_of(slot);
        match self.conns[slot as usize].hbone.as_deref_mut() {
            Some(Hbone::Carrier(c)) => c.wire.0.borrow_mut().received_eof = true,
            Some(Hbone::Stream(s)) => {
                if let Some(tx) = s.tx.as_mut() {
                    let _ = tx.send_data(Bytes::new(), true);
                }
            }
            None => {}
        }
        let kind = if side == Side::Backend {
            Kind::ShutUp
        } else {
            Kind::ShutDown
        };
        self.post(slot, kind);
        self.mark_dirty(carrier);
        true
    }

    // ---- the machine's actions on a virtual backend ----

    /// `OpenSocket` for a tunnelled connection: nothing to open (answered at once).
    pub(super) fn hbone_open(&mut self, slot: u32) -> bool {
        if !self.is_virtual(slot, Side::Backend) {
            return false;
        }
        self.post(slot, Kind::Socket);
        true
    }

    /// `Connect` for a tunnelled connection: its CONNECT goes over a pooled carrier; the
    /// answer completes the connect.
    pub(super) fn hbone_connect(&mut self, slot: u32) -> bool {
        if !self.is_virtual(slot, Side::Backend) {
            return false;
        }
        let timeout_ms = self.connect_timeout(slot).as_millis() as u64;
        let now = self.now_ms;
        if let Some(s) = self.stream_mut(slot) {
            s.connect_deadline_ms = Some(now + timeout_ms);
        }
        let nonce = self.conns[slot as usize].nonce;
        self.hbone.connects.push((slot, nonce));
        true
    }

    /// The connect's completion: its result (0 or -errno).
    pub(super) fn hbone_connected(&mut self, slot: u32) -> Option<i32> {
        if !self.is_virtual(slot, Side::Backend) {
            return None;
        }
        let answer = self.io_mut(slot)?.connect_answer.take();
        Some(answer.unwrap_or(-libc::EIO))
    }

    /// The machine closes `side`, a virtual side (`reset`: with a reset): a stream not
    /// answered yet is answered 503, a reset one is reset.
    pub(super) fn hbone_close(&mut self, slot: u32, side: Side, reset: bool) {
        if !self.is_virtual(slot, side) {
            return;
        }
        let carrier = self.carrier_of(slot);
        if let Some(s) = self.stream_mut(slot) {
            s.io.stop_waiting();
            if let Some(mut respond) = s.respond.take() {
                let status = http::StatusCode::SERVICE_UNAVAILABLE;
                let answer = http::Response::builder().status(status).body(()).ok();
                if let Some(a) = answer {
                    let _ = respond.send_response(a, true);
                }
            } else if reset {
                if let Some(tx) = s.tx.as_mut() {
                    tx.send_reset(Reason::CONNECT_ERROR);
                }
            }
            s.request = None;
        }
        if let Some(c) = self.carrier_mut(slot) {
            c.retired = true;
            c.io.stop_waiting();
        }
        self.mark_dirty(carrier);
    }

    /// A tunnelled connection's failed attempt: its stream leaves its carrier (reset), so a
    /// retry starts afresh.
    pub(super) fn hbone_detach(&mut self, slot: u32) {
        if !self.is_virtual(slot, Side::Backend) {
            return;
        }
        let Some(s) = self.stream_mut(slot) else {
            return;
        };
        if let Some(tx) = s.tx.as_mut() {
            tx.send_reset(Reason::CANCEL);
        }
        s.tx = None;
        s.rx = None;
        s.response = None;
        s.request = None;
        s.pending = Bytes::new();
        s.io.stop_waiting();
        let Some((c, n)) = s.carrier.take() else {
            return;
        };
        if let Some(carrier) = self.live_carrier(c, n) {
            carrier.streams.retain(|&(x, _)| x != slot);
            carrier.queued.retain(|&(x, _)| x != slot);
        }
        self.hbone.dirty.push((c, n));
    }

    /// A terminated stream's upstream connected: it is answered 200.
    pub(super) fn hbone_upstream_connected(&mut self, slot: u32) {
        let carrier = self.carrier_of(slot);
        let Some(s) = self.stream_mut(slot) else {
            return;
        };
        let Some(mut respond) = s.respond.take() else {
            return;
        };
        let ok = http::Response::builder()
            .status(http::StatusCode::OK)
            .body(())
            .expect("a valid response");
        s.tx = respond.send_response(ok, false).ok();
        self.mark_dirty(carrier);
    }

    /// The slot frees: a stream leaves its carrier (reset if it did not end), a carrier's
    /// codec is dropped, so each of its streams sees the end.
    pub(super) fn release_hbone(&mut self, slot: u32) {
        let Some(h) = self.conns[slot as usize].hbone.take() else {
            return;
        };
        match *h {
            Hbone::Stream(s) => {
                if let Some((c, n)) = s.carrier {
                    let now = self.now_ms;
                    if let Some(carrier) = self.live_carrier(c, n) {
                        carrier.streams.retain(|&(x, _)| x != slot);
                        carrier.queued.retain(|&(x, _)| x != slot);
                        if carrier.streams.is_empty() {
                            carrier.idle_since_ms = now;
                        }
                    }
                    self.hbone.dirty.push((c, n));
                }
                drop(s);
            }
            Hbone::Carrier(c) => {
                let nonce = self.conns[slot as usize].nonce;
                if let Some(key) = c.pool {
                    if let Some(list) = self.hbone.pools.get_mut(&key) {
                        list.retain(|&(x, n)| (x, n) != (slot, nonce));
                        if list.is_empty() {
                            self.hbone.pools.remove(&key);
                        }
                    }
                }
                self.hbone
                    .carriers
                    .retain(|&(x, n)| (x, n) != (slot, nonce));
                let streams = c.streams.clone();
                let queued = c.queued.clone();
                drop(c);
                for (s, n) in streams.into_iter().chain(queued) {
                    self.orphan_stream(s, n);
                }
            }
        }
    }

    /// Its carrier is gone: the stream's waiting operations fail.
    fn orphan_stream(&mut self, slot: u32, nonce: u32) {
        if self.conns[slot as usize].nonce != nonce {
            return;
        }
        let Some(s) = self.stream_mut(slot) else {
            return;
        };
        s.carrier = None;
        s.request = None;
        self.progress_stream(slot);
    }

    fn live_carrier(&mut self, slot: u32, nonce: u32) -> Option<&mut Carrier> {
        if self.conns.get(slot as usize)?.nonce != nonce {
            return None;
        }
        self.carrier_mut(slot)
    }

    // ---- carriers ----

    /// A terminating carrier: the server codec of an accepted connection on an HBONE chain.
    pub(super) fn start_server_carrier(&mut self, slot: u32, terminate: &HboneTerminate) {
        let http2 = terminate.http2;
        let wire = Wire::default();
        let handshake = server::Builder::new()
            .max_concurrent_streams(http2.max_concurrent_streams)
            .initial_window_size(http2.initial_stream_window_bytes)
            .initial_connection_window_size(http2.initial_connection_window_bytes)
            .max_frame_size(MAX_FRAME_BYTES)
            .handshake::<_, Bytes>(wire.clone());
        let carrier = Carrier {
            wire,
            codec: Codec::ServerHandshake(Box::pin(handshake)),
            side: Side::Backend,
            io: Virtual::default(),
            streams: Vec::new(),
            queued: Vec::new(),
            pool: None,
            max_streams: http2.max_concurrent_streams,
            idle_since_ms: self.now_ms,
            idle_timeout_ms: terminate.idle_timeout_ms,
            retired: false,
            peer: None,
            pinned: None,
        };
        let nonce = self.conns[slot as usize].nonce;
        self.conns[slot as usize].hbone = Some(Box::new(Hbone::Carrier(carrier)));
        self.hbone.carriers.push((slot, nonce));
    }

    /// Every carrier touched is pumped, and tunnelled connections get their carriers.
    fn hbone_pump(&mut self) {
        for _ in 0..8 {
            if self.hbone.dirty.is_empty() && self.hbone.connects.is_empty() {
                return;
            }
            // Swapped with spare lists, so their memory is kept (nothing allocated per batch).
            let mut connects = std::mem::take(&mut self.hbone.spare_connects);
            std::mem::swap(&mut connects, &mut self.hbone.connects);
            for &(slot, nonce) in &connects {
                self.assign_carrier(slot, nonce);
            }
            connects.clear();
            self.hbone.spare_connects = connects;
            let mut dirty = std::mem::take(&mut self.hbone.spare_dirty);
            std::mem::swap(&mut dirty, &mut self.hbone.dirty);
            dirty.sort_unstable();
            dirty.dedup();
            for &(slot, nonce) in &dirty {
                self.pump_carrier(slot, nonce);
            }
            dirty.clear();
            self.hbone.spare_dirty = dirty;
        }
    }

    /// The tick: carriers idle past their timeout close (a pooled one ends its client
    /// codec, a terminating one drains: GOAWAY), CONNECTs past their deadline fail, and
    /// every carrier is pumped (a stream that found no buffer tries again).
    pub(super) fn hbone_tick(&mut self) {
        let now = self.now_ms;
        let mut i = 0;
        while let Some(&(slot, nonce)) = self.hbone.carriers.get(i) {
            i += 1;
            let Some(c) = self.live_carrier(slot, nonce) else {
                continue;
            };
            let idle = c.streams.is_empty()
                && c.queued.is_empty()
                && c.idle_timeout_ms
                    .is_some_and(|t| now >= c.idle_since_ms + t);
            if idle && !c.retired {
                c.retired = true;
                match &mut c.codec {
                    // Without streams or a request handle the client codec ends (GOAWAY).
                    Codec::Client { send, .. } => drop(send.take()),
                    // As Envoy's HCM at its idle timeout: a drain sequence, then the close.
                    Codec::Server(conn) => conn.graceful_shutdown(),
                    // A peer that never finished its preface: the end, then the close.
                    Codec::ServerHandshake(_) => c.codec = Codec::Done,
                    Codec::Done => {}
                }
            }
            let mut j = 0;
            while let Some(&(s, sn)) = self.carrier_mut(slot).and_then(|c| c.streams.get(j)) {
                j += 1;
                self.expire_connect(s, sn);
            }
            self.hbone.dirty.push((slot, nonce));
        }
    }

    fn expire_connect(&mut self, slot: u32, nonce: u32) {
        let now = self.now_ms;
        if self.conns[slot as usize].nonce != nonce {
            return;
        }
        let Some(s) = self.stream_mut(slot) else {
            return;
        };
        if s.connect_deadline_ms.is_some_and(|d| now >= d) && s.response.is_some() {
            s.response = None;
            s.connect_deadline_ms = None;
            if let Some(tx) = s.tx.as_mut() {
                tx.send_reset(Reason::CANCEL);
            }
            s.io.connect_answer = Some(-libc::ECANCELED);
            self.post(slot, Kind::Connect);
        }
    }

    /// Draining (the plane's, or `listener_slot`'s alone): terminating carriers send GOAWAY
    /// (their streams in flight finish, the peer opens no more; the connection closes once
    /// they are done), pooled ones take no new stream.
    pub(super) fn hbone_drain(&mut self, listener_slot: Option<u32>) {
        for (slot, nonce) in self.hbone.carriers.clone() {
            if listener_slot.is_some_and(|l| self.conns[slot as usize].listener_slot != l) {
                continue;
            }
            let Some(c) = self.live_carrier(slot, nonce) else {
                continue;
            };
            c.retired = true;
            if let Codec::Server(conn) = &mut c.codec {
                conn.graceful_shutdown();
            }
            self.hbone.dirty.push((slot, nonce));
        }
    }

    /// Polls one carrier's codec, opens its new streams, serves its streams and hands its
    /// output to its relay.
    fn pump_carrier(&mut self, slot: u32, nonce: u32) {
        if self.live_carrier(slot, nonce).is_none() {
            return;
        }
        for _ in 0..2 {
            let accepted = self.poll_codec(slot);
            for (req, respond) in accepted {
                self.open_server_stream(slot, req, respond);
            }
            self.send_queued_requests(slot);
            // By index: serving a stream never removes one (only a slot's finish does).
            let mut i = 0;
            while let Some(&(s, n)) = self.carrier_mut(slot).and_then(|c| c.streams.get(i)) {
                i += 1;
                if self.conns[s as usize].nonce == n {
                    self.progress_stream(s);
                }
            }
        }
        self.answer_carrier_recv(slot);
    }

    /// Polls the codec once: the server's new streams.
    #[allow(clippy::type_complexity)]
    fn poll_codec(
        &mut self,
        slot: u32,
    ) -> Vec<(http::Request<RecvStream>, server::SendResponse<Bytes>)> {
        let mut accepted = Vec::new();
        let Some(c) = self.carrier_mut(slot) else {
            return accepted;
        };
        if let Codec::ServerHandshake(h) = &mut c.codec {
            match poll_once(h) {
                Poll::Ready(Ok(conn)) => c.codec = Codec::Server(Box::new(conn)),
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "HBONE: HTTP/2 handshake failed");
                    c.codec = Codec::Done;
                }
                Poll::Pending => {}
            }
        }
        let done = match &mut c.codec {
            Codec::Server(conn) => loop {
                match poll_fn_once(|cx| conn.poll_accept(cx)) {
                    Poll::Ready(Some(Ok(stream))) => accepted.push(stream),
                    Poll::Ready(Some(Err(e))) => {
                        tracing::debug!(error = %e, "HBONE: HTTP/2 connection failed");
                        break true;
                    }
                    Poll::Ready(None) => break true,
                    Poll::Pending => break false,
                }
            },
            Codec::Client { conn, .. } => match poll_once(conn) {
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "HBONE: HTTP/2 connection failed");
                    true
                }
                Poll::Ready(Ok(())) => true,
                Poll::Pending => false,
            },
            Codec::ServerHandshake(_) | Codec::Done => false,
        };
        if done {
            c.codec = Codec::Done;
            c.retired = true;
        }
        accepted
    }

    /// The codec's output for the carrier's relay, when its receive waits: a spare buffer's
    /// worth, or the end once the codec ended and everything it wrote went out.
    fn answer_carrier_recv(&mut self, slot: u32) {
        let side = match self.carrier_mut(slot) {
            Some(c) if c.io.recv_waiting => c.side,
            _ => return,
        };
        let dir = if side == Side::Client {
            Dir::Up
        } else {
            Dir::Down
        };
        let c = self.carrier_mut(slot).expect("checked");
        let (pending, ended) = {
            let b = c.wire.0.borrow();
            (b.to_send.len(), matches!(c.codec, Codec::Done))
        };
        let answer = if pending > 0 {
            let Some((buf, room)) = self.virtual_receive_buffer(slot, dir, pending) else {
                // No spare: the tick tries again.
                return;
            };
            let c = self.carrier_mut(slot).expect("checked");
            let wire = c.wire.clone();
            let n = wire.take_output_into(&mut self.ring.buffer_mut(buf)[..room]);
            Received::Data {
                buf: BufId::Ring(buf),
                len: n as u32,
            }
        } else if ended {
            Received::Eof
        } else {
            return;
        };
        let io = self.io_mut(slot).expect("a carrier");
        io.recv_waiting = false;
        io.recv_answer = Some(answer);
        self.post(slot, recv_kind(dir));
    }

    /// A spare buffer for a receive on `dir` from a virtual source with `want` bytes ready,
    /// and how much of it the receive may fill (the source's buffer limit, less room for
    /// records when the sink speaks TLS): a large one when they would overfill a small one
    /// (bulk), as a socket's receives move to large buffers. `None`: no spare is free.
    fn virtual_receive_buffer(
        &mut self,
        slot: u32,
        dir: Dir,
        want: usize,
    ) -> Option<(RingBuf, usize)> {
        let relay = self.conns[slot as usize].machine.relay();
        let limit = relay.limits().recv_bytes(dir);
        let room = |w: &Self, class| {
            let size = w.ring.buffer_size(class);
            w.tls_receive_room(slot, dir, size).min(limit).max(1) as usize
        };
        let small = room(self, BufClass::Small);
        if want > small && self.ring.buffer_size(BufClass::Large) > 0 {
            if let Some(buf) = self.ring.take_spare(BufClass::Large) {
                return Some((buf, room(self, BufClass::Large)));
            }
        }
        Some((self.ring.take_spare(BufClass::Small)?, small))
    }

    /// Serves one stream: its CONNECT's answer, its waiting receive and send.
    fn progress_stream(&mut self, slot: u32) {
        self.poll_response(slot);
        self.stream_receive(slot);
        self.stream_send(slot);
    }

    /// A tunnelled stream's CONNECT answered: 2xx connects it; anything else fails its
    /// connect (and only it).
    fn poll_response(&mut self, slot: u32) {
        let Some(s) = self.stream_mut(slot) else {
            return;
        };
        let result = match s.response.as_mut() {
            Some(r) => match poll_once(r) {
                Poll::Ready(Ok(answer)) if answer.status().is_success() => {
                    s.rx = Some(answer.into_body());
                    0
                }
                Poll::Ready(Ok(answer)) => {
                    tracing::debug!(status = %answer.status(), "HBONE: CONNECT refused");
                    -libc::ECONNREFUSED
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "HBONE: CONNECT failed");
                    -libc::ECONNRESET
                }
                Poll::Pending => return,
            },
            // Waiting for a carrier that is gone.
            None if s.carrier.is_none()
                && s.request.is_none()
                && s.rx.is_none()
                && s.connect_deadline_ms.is_some() =>
            {
                -libc::ECONNRESET
            }
            None => return,
        };
        s.response = None;
        s.connect_deadline_ms = None;
        s.io.connect_answer = Some(result);
        if result < 0 {
            self.shared
                .server_stats
                .inc(self.id, ServerStat::HboneConnectRefused);
        }
        self.post(slot, Kind::Connect);
    }

    /// A stream's waiting receive: the next bytes of its DATA, its end, or its reset.
    fn stream_receive(&mut self, slot: u32) {
        let side = match self.stream_mut(slot) {
            Some(s) if s.io.recv_waiting => s.side,
            _ => return,
        };
        let dir = if side == Side::Client {
            Dir::Up
        } else {
            Dir::Down
        };
        let s = self.stream_mut(slot).expect("checked");
        let answer = loop {
            if !s.pending.is_empty() {
                break None;
            }
            let Some(rx) = s.rx.as_mut() else {
                break Some(Received::Error(STREAM_RESET));
            };
            match poll_fn_once(|cx| rx.poll_data(cx)) {
                Poll::Ready(Some(Ok(b))) => s.pending = b,
                Poll::Ready(Some(Err(_))) => break Some(Received::Error(STREAM_RESET)),
                Poll::Ready(None) => break Some(Received::Eof),
                Poll::Pending => return,
            }
        };
        let answer = match answer {
            Some(a) => a,
            None => {
                let want = self.stream_mut(slot).map_or(0, |s| s.pending.len());
                let Some((buf, room)) = self.virtual_receive_buffer(slot, dir, want) else {
                    let s = self.stream_mut(slot).expect("checked");
                    s.io.recv_waiting = false;
                    s.io.recv_answer = Some(Received::NoBuffer);
                    self.post(slot, recv_kind(dir));
                    return;
                };
                let s = self.stream_mut(slot).expect("checked");
                let n = s.pending.len().min(room);
                let chunk = s.pending.split_to(n);
                if let Some(rx) = s.rx.as_mut() {
                    let _ = rx.flow_control().release_capacity(n);
                }
                self.ring.buffer_mut(buf)[..n].copy_from_slice(&chunk);
                let carrier = self.carrier_of(slot);
                self.mark_dirty(carrier);
                Received::Data {
                    buf: BufId::Ring(buf),
                    len: n as u32,
                }
            }
        };
        let io = self.io_mut(slot).expect("a stream");
        io.recv_waiting = false;
        io.recv_answer = Some(answer);
        self.post(slot, recv_kind(dir));
    }

    /// A stream's waiting send: as much as its window lets go now.
    fn stream_send(&mut self, slot: u32) {
        let Some(s) = self.stream_mut(slot) else {
            return;
        };
        let Some((buf, off, len)) = s.io.send_waiting else {
            return;
        };
        let dir = if s.side == Side::Client {
            Dir::Down
        } else {
            Dir::Up
        };
        let Some(tx) = s.tx.as_mut() else {
            s.io.send_waiting = None;
            s.io.send_answer = Some(Err(libc::EPIPE));
            self.post(slot, super::send_kind(dir));
            return;
        };
        tx.reserve_capacity(len as usize);
        let mut room = tx.capacity();
        if room == 0 {
            match poll_fn_once(|cx| tx.poll_capacity(cx)) {
                Poll::Ready(Some(Ok(n))) => room = n,
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                    s.io.send_waiting = None;
                    s.io.send_answer = Some(Err(STREAM_RESET));
                    self.post(slot, super::send_kind(dir));
                    return;
                }
                Poll::Pending => return,
            }
        }
        if room == 0 {
            return;
        }
        let n = room.min(len as usize);
        let start = off as usize;
        let data = Bytes::copy_from_slice(&self.ring.buffer_mut(buf)[start..start + n]);
        let s = self.stream_mut(slot).expect("checked");
        let tx = s.tx.as_mut().expect("checked");
        let answer = match tx.send_data(data, false) {
            Ok(()) => Ok(n as u32),
            Err(_) => Err(STREAM_RESET),
        };
        s.io.send_waiting = None;
        s.io.send_answer = Some(answer);
        let carrier = self.carrier_of(slot);
        self.mark_dirty(carrier);
        self.post(slot, super::send_kind(dir));
    }

    // ---- terminated streams ----

    /// A CONNECT stream arrived on terminating carrier `carrier`: a slot of its own,
    /// proxied by the chain's route (or answered 400/503 when it cannot be).
    fn open_server_stream(
        &mut self,
        carrier: u32,
        req: http::Request<RecvStream>,
        mut respond: server::SendResponse<Bytes>,
    ) {
        let refuse = |respond: &mut server::SendResponse<Bytes>, status: http::StatusCode| {
            if let Ok(a) = http::Response::builder().status(status).body(()) {
                let _ = respond.send_response(a, true);
            }
        };
        if req.method() != http::Method::CONNECT {
            refuse(&mut respond, http::StatusCode::METHOD_NOT_ALLOWED);
            return;
        }
        let authority = req
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let Some(&slot) = self.free_slots.last() else {
            refuse(&mut respond, http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let parent = &self.conns[carrier as usize];
        let (gen_index, listener_slot, fib_listener, chain) = (
            parent.generation as usize,
            parent.listener_slot,
            parent.fib_listener,
            parent.chain,
        );
        let (local, remote, direct_remote) = (parent.local, parent.remote, parent.direct_remote);
        let carrier_id = (carrier, parent.nonce);
        let Some(generation) = self.generations[gen_index].as_ref() else {
            refuse(&mut respond, http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let fib = &generation.fib;
        let Some(listener) = fib.listeners.get(fib_listener as usize) else {
            refuse(&mut respond, http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let tcp = &listener.chain(chain).tcp_proxy;
        let logs_tls = tcp
            .access_logs
            .iter()
            .chain(&listener.access_logs)
            .any(|s| s.format.uses_tls());
        tcp.stats.inc(self.id, TcpStat::DownstreamCxTotal);
        tcp.stats.inc(self.id, TcpStat::DownstreamCxActive);
        let cluster = match &tcp.route {
            Route::Cluster(id) => Some(*id),
            Route::Weighted(w) => w.pick(self.rng.next_u64()).cluster,
            Route::Missing(_) => None,
        };
        let cluster_ref = cluster.map(|c| fib.cluster(c));
        let verdict = match cluster_ref {
            None => {
                tcp.stats.inc(self.id, TcpStat::DownstreamCxNoRoute);
                conn::Verdict::Refuse {
                    flags: crate::accesslog::ResponseFlags::NO_ROUTE_FOUND,
                    reset: false,
                    details: "-",
                    holds_limit: false,
                }
            }
            Some(c) => conn::Verdict::Proxy(conn::Proxy {
                idle_timeout_ms: tcp.idle_timeout_ms,
                max_attempts: tcp.max_connect_attempts.max(1),
                holds_limit: false,
                faults: conn::Faults::default(),
                buffer_limits: BufferLimits {
                    client_bytes: listener.buffer_limit_bytes,
                    backend_bytes: c.buffer_limit_bytes,
                },
                tls: conn::TlsPlan {
                    backend: c.tls.is_some() || c.tls_secrets_missing,
                    connect_timeout_ms: c.connect_timeout_ms,
                    ..conn::TlsPlan::default()
                },
                carrier: conn::Carrier::No,
            }),
        };
        let stream = Stream {
            carrier: Some(carrier_id),
            side: Side::Client,
            tx: None,
            rx: Some(req.into_body()),
            pending: Bytes::new(),
            respond: Some(respond),
            response: None,
            request: None,
            authority,
            peer: self.carrier_peer_record(carrier, logs_tls),
            io: Virtual::default(),
            connect_deadline_ms: None,
        };
        self.occupy_internal(slot, gen_index, listener_slot, fib_listener);
        let conn = &mut self.conns[slot as usize];
        conn.chain = chain;
        conn.cluster = cluster;
        conn.local = local;
        conn.remote = remote;
        conn.direct_remote = direct_remote;
        conn.hbone = Some(Box::new(Hbone::Stream(stream)));
        let stream_id = (slot, conn.nonce);
        if let Some(c) = self.carrier_mut(carrier) {
            c.streams.push(stream_id);
        }
        self.drive(slot, conn::Event::Accepted(verdict));
    }

    /// Takes free slot `slot` for a stream or a pooled carrier of generation `gen_index`.
    fn occupy_internal(
        &mut self,
        slot: u32,
        gen_index: usize,
        listener_slot: u32,
        fib_listener: u32,
    ) {
        self.free_slots.pop();
        self.open_conns += 1;
        if let Some(g) = self.generations[gen_index].as_mut() {
            g.conns += 1;
        }
        let now = self.now_ms;
        let conn = &mut self.conns[slot as usize];
        conn.reset_for(
            ud::next_nonce(conn.nonce),
            NO_FD,
            gen_index as u32,
            listener_slot,
            now,
        );
        conn.fib_listener = fib_listener;
        conn.chain = CHAIN_NONE;
        conn.occupied_index = self.occupied.len() as u32;
        self.occupied.push(slot);
        conn.start_ms = now;
        conn.start_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
    }

    // ---- tunnelled connections ----

    /// A tunnelled connection picked its endpoint: a pooled carrier with room takes its
    /// CONNECT, or a new one is opened.
    fn assign_carrier(&mut self, slot: u32, nonce: u32) {
        if self.conns[slot as usize].nonce != nonce
            || self.conns[slot as usize].machine.stage() != conn::Stage::Connecting
        {
            return;
        }
        let Some(request) = self.tunnel_request(slot) else {
            self.fail_connect(slot, -libc::EINVAL);
            return;
        };
        let Some(key) = self.pool_key(slot) else {
            self.fail_connect(slot, -libc::EINVAL);
            return;
        };
        let carrier = match self.pooled_carrier(key) {
            Some(c) => c,
            None => match self.open_pooled_carrier(slot, key) {
                Some(c) => c,
                None => {
                    self.fail_connect(slot, -libc::EAGAIN);
                    return;
                }
            },
        };
        let s = self.stream_mut(slot).expect("a tunnelled connection");
        s.carrier = Some(carrier);
        s.request = Some(request);
        let c = self.carrier_mut(carrier.0).expect("a live carrier");
        c.streams.push((slot, nonce));
        c.queued.push((slot, nonce));
        self.hbone.dirty.push(carrier);
    }

    fn fail_connect(&mut self, slot: u32, errno: i32) {
        if let Some(io) = self.io_mut(slot) {
            io.connect_answer = Some(errno);
        }
        self.post(slot, Kind::Connect);
    }

    /// A tunnelled connection's pool: where its endpoint is reached (the endpoint, or the
    /// node proxy its HBONE tunnel names) and its cluster's TLS identity.
    fn pool_key(&self, slot: u32) -> Option<PoolKey> {
        let conn = &self.conns[slot as usize];
        let cluster = self.cluster_of(slot)?;
        let picked = conn.machine.upstream().endpoint();
        let tunnel = picked.and_then(|e| cluster.endpoints.get(e as usize)?.tunnel);
        let endpoint = tunnel.or(conn.upstream)?;
        let identity = cluster.tls.as_ref().map_or(0, |t| Arc::as_ptr(t) as usize);
        Some(PoolKey { endpoint, identity })
    }

    /// A carrier of `key`'s pool with room for one more stream.
    fn pooled_carrier(&mut self, key: PoolKey) -> Option<(u32, u32)> {
        let mut i = 0;
        while let Some(&(c, n)) = self.hbone.pools.get(&key).and_then(|l| l.get(i)) {
            i += 1;
            let live = self.conns[c as usize].machine.is_live();
            let Some(carrier) = self.live_carrier(c, n) else {
                continue;
            };
            if live && !carrier.retired && (carrier.streams.len() as u32) < carrier.max_streams {
                return Some((c, n));
            }
        }
        None
    }

    /// Opens a pooled carrier for tunnelled connection `stream` (to the endpoint it picked,
    /// under its cluster's TLS): a slot whose client is the client codec.
    fn open_pooled_carrier(&mut self, stream: u32, key: PoolKey) -> Option<(u32, u32)> {
        let &slot = self.free_slots.last()?;
        let parent = &self.conns[stream as usize];
        let (gen_index, cluster, upstream_endpoint) = (
            parent.generation as usize,
            parent.cluster?,
            parent.machine.upstream().endpoint(),
        );
        let (local, remote) = (parent.local, parent.remote);
        let c = self.generations[gen_index].as_ref()?.fib.cluster(cluster);
        let http2 = c.http2?;
        let verdict = conn::Verdict::Proxy(conn::Proxy {
            idle_timeout_ms: None,
            max_attempts: 1,
            holds_limit: false,
            faults: conn::Faults::default(),
            buffer_limits: BufferLimits {
                client_bytes: 0,
                backend_bytes: c.buffer_limit_bytes,
            },
            tls: conn::TlsPlan {
                backend: c.tls.is_some() || c.tls_secrets_missing,
                connect_timeout_ms: c.connect_timeout_ms,
                ..conn::TlsPlan::default()
            },
            carrier: conn::Carrier::Client,
        });
        let wire = Wire::default();
        let mut handshake = Box::pin(
            client::Builder::new()
                .max_concurrent_streams(http2.http2.max_concurrent_streams)
                .initial_window_size(http2.http2.initial_stream_window_bytes)
                .initial_connection_window_size(http2.http2.initial_connection_window_bytes)
                .max_frame_size(MAX_FRAME_BYTES)
                .handshake::<_, Bytes>(wire.clone()),
        );
        // Writes the preface into the wire: ready at once.
        let Poll::Ready(Ok((send, conn))) = poll_once(&mut handshake) else {
            return None;
        };
        self.occupy_internal(slot, gen_index, u32::MAX, u32::MAX);
        let nonce = self.conns[slot as usize].nonce;
        let conn_slot = &mut self.conns[slot as usize];
        conn_slot.cluster = Some(cluster);
        conn_slot.local = local;
        conn_slot.remote = remote;
        conn_slot.upstream = Some(key.endpoint);
        conn_slot.hbone = Some(Box::new(Hbone::Carrier(Carrier {
            wire,
            codec: Codec::Client {
                conn: Box::new(conn),
                send: Some(send),
            },
            side: Side::Client,
            io: Virtual::default(),
            streams: Vec::new(),
            queued: Vec::new(),
            pool: Some(key),
            max_streams: http2.http2.max_concurrent_streams.max(1),
            idle_since_ms: self.now_ms,
            idle_timeout_ms: http2.idle_timeout_ms,
            retired: false,
            peer: None,
            pinned: Some((upstream_endpoint, key.endpoint)),
        })));
        self.hbone.pools.entry(key).or_default().push((slot, nonce));
        self.hbone.carriers.push((slot, nonce));
        self.shared
            .server_stats
            .inc(self.id, ServerStat::HbonePooledConnections);
        self.drive(slot, conn::Event::Accepted(verdict));
        Some((slot, nonce))
    }

    /// The CONNECT of tunnelled connection `slot`: `:authority` from its
    /// `tunneling_config`'s hostname, and its `headers_to_add`.
    fn tunnel_request(&self, slot: u32) -> Option<http::Request<()>> {
        let conn = &self.conns[slot as usize];
        let g = self.generations[conn.generation as usize].as_ref()?;
        let listener = g.fib.listeners.get(conn.fib_listener as usize)?;
        let tunneling = listener.chain(conn.chain).tcp_proxy.tunneling.as_ref()?;
        let mut authority = String::new();
        tunneling
            .hostname
            .render(conn.local, conn.remote, conn.upstream, &mut authority);
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority.as_str())
            .body(())
            .ok()?;
        let headers = req.headers_mut();
        for h in &tunneling.headers {
            let mut value = String::new();
            h.value
                .render(conn.local, conn.remote, conn.upstream, &mut value);
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) else {
                continue;
            };
            if h.append {
                headers.append(name, value);
            } else {
                headers.insert(name, value);
            }
        }
        Some(req)
    }

    /// A pooled carrier's queued CONNECTs, as far as the codec takes them.
    fn send_queued_requests(&mut self, slot: u32) {
        loop {
            let Some(c) = self.carrier_mut(slot) else {
                return;
            };
            let Some(&(s, n)) = c.queued.first() else {
                return;
            };
            let Codec::Client {
                send: Some(send), ..
            } = &mut c.codec
            else {
                return;
            };
            match poll_fn_once(|cx| send.poll_ready(cx)) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => {
                    c.retired = true;
                    return;
                }
                Poll::Pending => return,
            }
            c.queued.remove(0);
            if self.conns[s as usize].nonce != n {
                continue;
            }
            let Some(request) = self.stream_mut(s).and_then(|st| st.request.take()) else {
                continue;
            };
            let c = self.carrier_mut(slot).expect("checked");
            let Codec::Client {
                send: Some(send), ..
            } = &mut c.codec
            else {
                return;
            };
            let sent = send.send_request(request, false);
            let st = self.stream_mut(s).expect("checked");
            match sent {
                Ok((response, tx)) => {
                    st.response = Some(response);
                    st.tx = Some(tx);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "HBONE: CONNECT not sent");
                    self.fail_connect(s, -libc::ECONNRESET);
                }
            }
        }
    }

    /// A tunnelled connection accepted on a chain whose tcp_proxy tunnels: its backend is
    /// a stream (assigned when it connects).
    pub(super) fn start_tunnelled(&mut self, slot: u32) {
        self.conns[slot as usize].hbone = Some(Box::new(Hbone::Stream(Stream {
            carrier: None,
            side: Side::Backend,
            tx: None,
            rx: None,
            pending: Bytes::new(),
            respond: None,
            response: None,
            request: None,
            authority: None,
            peer: None,
            io: Virtual::default(),
            connect_deadline_ms: None,
        })));
    }
}

fn recv_kind(dir: Dir) -> Kind {
    match dir {
        Dir::Up => Kind::RecvUp,
        Dir::Down => Kind::RecvDown,
    }
}
