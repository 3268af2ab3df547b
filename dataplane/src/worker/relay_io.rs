//! The relay's side of the worker: receive and send completions become relay events (with
//! their bytes counted and charged to the fault filter), and the relay's actions become ring
//! operations, on provided buffers or, in splice mode, on the connection's pipes.

use super::slot::ShadowState;
use super::tls_io::{TlsReceived, TlsSent};
use super::ud::{self, Kind};
use super::{classify_receive, send_kind, Receive, RelayMode, Worker};
use crate::conn;
use crate::relay::{Action, BufId, Dir, Event, Received, Side};
use crate::stats::{ClusterStat, ServerStat, TcpStat};
use crate::sys::{BufClass, Completion, Ready, RingBuf};

impl Worker {
    /// A receive completed on `dir`'s source: its bytes (counted, charged to the fault
    /// filter) go to the relay, or the direction starves, ends or fails.
    pub(super) fn on_recv(&mut self, slot: u32, dir: Dir, c: Completion) {
        if let Some(received) = self.hbone_received(slot, dir) {
            self.deliver_virtual(slot, dir, received);
            return;
        }
        if c.result == -libc::EAGAIN
            && self.limits.relay_mode == RelayMode::Splice
            && self.conns[slot as usize].machine.stage() == conn::Stage::Relaying
        {
            self.splice_recv_again(slot, dir);
            return;
        }
        if dir == Dir::Up && c.buffer_id().is_none() {
            if let Some((buf, len)) = self.take_inspected(slot) {
                // The no-op standing for the bytes the TLS inspector read.
                if let Some(received) = self.accept_bytes(slot, dir, BufId::Ring(buf), len) {
                    self.relay_event(slot, Event::Recv(dir, received));
                }
                return;
            }
        }
        let tls = self.tls_receive(slot, dir, &c);
        if let Some(answer) = tls.filter(|t| *t != TlsReceived::Socket) {
            self.deliver_tls(slot, dir, answer);
            return;
        }
        let needs_buffer = self.limits.relay_mode == RelayMode::BufferRing;
        let received = match classify_receive(c.result, c.buffer_id(), needs_buffer) {
            Receive::Bytes { len, buffer } => {
                let buf = match buffer {
                    Some(bid) => {
                        let buf = self.take_ring_buffer(slot, dir, bid, len);
                        if tls.is_some() {
                            let answer = self.tls_decrypt(slot, dir, buf, len);
                            self.deliver_tls(slot, dir, answer);
                            return;
                        }
                        BufId::Ring(buf)
                    }
                    None => {
                        let pipe = self.conns[slot as usize].pipes[dir as usize];
                        self.pipes.filled(pipe, len);
                        BufId::Pipe(pipe)
                    }
                };
                match self.accept_bytes(slot, dir, buf, len) {
                    Some(received) => received,
                    None => return,
                }
            }
            Receive::Other(received) => {
                if received == Received::Error(libc::EIO) && c.result > 0 {
                    tracing::error!(
                        worker = self.id,
                        bytes = c.result,
                        "receive completed without a buffer; resetting the connection"
                    );
                }
                received
            }
        };
        if received == Received::NoBuffer {
            self.starve(slot, dir);
        }
        self.relay_event(slot, Event::Recv(dir, received));
    }

    /// `len` bytes received in `buf` on `dir`: counted, charged to the fault filter, and
    /// what the relay hears of them (`None`: the abort fault fired and the connection is
    /// gone).
    fn accept_bytes(&mut self, slot: u32, dir: Dir, buf: BufId, len: u32) -> Option<Received> {
        self.count_received(slot, dir, u64::from(len));
        if self.charge_faults(slot, dir, u64::from(len)) {
            // The abort fault fired: these bytes go nowhere.
            if let BufId::Ring(buf) = buf {
                self.ring.recycle(buf);
                self.feed_starved();
            }
            self.drive(slot, conn::Event::Abort(conn::Abort::Fault));
            return None;
        }
        self.count_buffered(slot, dir, len);
        Some(Received::Data { buf, len })
    }

    /// What a virtual source (an HTTP/2 stream or codec) delivered on `dir`, passed on to
    /// the relay.
    fn deliver_virtual(&mut self, slot: u32, dir: Dir, received: Received) {
        let received = match received {
            Received::Data { buf, len } => match self.accept_bytes(slot, dir, buf, len) {
                Some(r) => r,
                None => return,
            },
            other => other,
        };
        if received == Received::NoBuffer {
            self.starve(slot, dir);
        }
        self.relay_event(slot, Event::Recv(dir, received));
    }

    /// What a TLS source made of a receive on `dir`, passed on to the relay.
    fn deliver_tls(&mut self, slot: u32, dir: Dir, answer: TlsReceived) {
        let received = match answer {
            TlsReceived::Plain { buf, len } => {
                match self.accept_bytes(slot, dir, BufId::Ring(buf), len) {
                    Some(r) => r,
                    None => return,
                }
            }
            TlsReceived::Relay(r) => r,
            TlsReceived::Again => {
                // Only records of TLS itself (a ticket, a partial record): read on.
                self.feed_starved();
                self.submit_recv(slot, dir);
                return;
            }
            TlsReceived::Socket => unreachable!("a socket read is decrypted first"),
        };
        if received == Received::NoBuffer {
            self.starve(slot, dir);
        }
        self.relay_event(slot, Event::Recv(dir, received));
    }

    /// Takes provided buffer `bid` of a receive of `len` bytes on `dir` from the ring, and
    /// sizes the direction's next receive from it.
    fn take_ring_buffer(&mut self, slot: u32, dir: Dir, bid: u16, len: u32) -> RingBuf {
        let class = self.conns[slot as usize].recv_class[dir as usize];
        let buf = self.ring.buffer_received(class, bid);
        if class == BufClass::Large {
            self.shared
                .server_stats
                .inc(self.id, ServerStat::RelayLargeBufferReceives);
        }
        self.resize_receives(slot, dir, class, len);
        buf
    }

    /// `dir`'s receive found no buffer: it waits for one.
    fn starve(&mut self, slot: u32, dir: Dir) {
        let conn = &mut self.conns[slot as usize];
        if conn.recv_class[dir as usize] == BufClass::Large {
            // Out of large buffers: go on with small ones (the starved path re-arms).
            conn.large_receives[dir as usize] = false;
        } else {
            self.shared
                .server_stats
                .inc(self.id, ServerStat::RelayBufferExhausted);
        }
        self.starved.push(slot);
    }

    pub(super) fn on_sent(&mut self, slot: u32, dir: Dir, result: i32) {
        if let Some(outcome) = self.hbone_sent(slot, dir) {
            if let Ok(n) = outcome {
                self.count_sent(slot, dir, u64::from(n));
            }
            self.relay_event(slot, Event::Sent(dir, outcome));
            return;
        }
        // In splice mode a send from a provided buffer is the bytes a listener filter read
        // before the relay began (held in a ring buffer, not a pipe).
        let from_buffer = self.conns[slot as usize].sending[dir as usize].is_some();
        if self.limits.relay_mode == RelayMode::Splice && !from_buffer {
            self.on_splice_sent(slot, dir, result);
            return;
        }
        let sent_from = self.conns[slot as usize].sending[dir as usize].take();
        if let Some(bid) = sent_from {
            self.ring.send_done(bid);
            match self.tls_sent(slot, dir, bid, result) {
                TlsSent::Plaintext => {}
                TlsSent::Again => return,
                TlsSent::Relay(outcome) => {
                    if let Ok(n) = outcome {
                        self.count_sent(slot, dir, u64::from(n));
                    }
                    self.relay_event(slot, Event::Sent(dir, outcome));
                    return;
                }
            }
        }
        let outcome = if result >= 0 {
            self.count_sent(slot, dir, result as u64);
            Ok(result as u32)
        } else {
            Err(-result)
        };
        self.relay_event(slot, Event::Sent(dir, outcome));
    }

    /// Splice mode: a receive moved nothing (`EAGAIN`), which is not an error. Either its pipe
    /// is full of bytes a send of the same direction still drains (a one-page pipe after every
    /// receive, or slots used up by small segments): the receive starts again when that send
    /// completes ([`Worker::on_splice_sent`]), since a poll now would fire at once and spin; or
    /// the socket had nothing after all: wait for it again.
    fn splice_recv_again(&mut self, slot: u32, dir: Dir) {
        let pipe = self.conns[slot as usize].pipes[dir as usize];
        if self.pipes.held(pipe) > 0 {
            self.conns[slot as usize].recv_parked[dir as usize] = true;
        } else {
            self.submit_recv(slot, dir);
        }
    }

    /// Splice mode: a send completed. `EAGAIN` (the sink's buffer is full; nothing moved) is
    /// not an error: the same send starts again once the sink is writable. Bytes moved free
    /// pipe room, so a receive parked on a full pipe starts again.
    fn on_splice_sent(&mut self, slot: u32, dir: Dir, result: i32) {
        let conn = &mut self.conns[slot as usize];
        let relaying = conn.machine.stage() == conn::Stage::Relaying;
        if result == -libc::EAGAIN && relaying {
            let (pipe, sink, len) = (
                conn.pipes[dir as usize],
                conn.fd(dir.sink()),
                conn.splice_send_len[dir as usize],
            );
            conn.machine.started(2);
            let nonce = conn.nonce;
            let pipe_out = self
                .pipes
                .read_end(pipe)
                .expect("a relaying connection has its pipes");
            self.ring.splice_when_ready(
                Ready::SinkWritable,
                pipe_out,
                sink,
                len,
                ud::encode(Kind::Aux, slot, nonce),
                ud::encode(send_kind(dir), slot, nonce),
            );
            return;
        }
        let outcome = if result >= 0 {
            let pipe = conn.pipes[dir as usize];
            self.pipes.drained(pipe, result as u32);
            self.count_sent(slot, dir, result as u64);
            Ok(result as u32)
        } else {
            Err(-result)
        };
        self.relay_event(slot, Event::Sent(dir, outcome));
        let conn = &mut self.conns[slot as usize];
        if std::mem::take(&mut conn.recv_parked[dir as usize])
            && conn.machine.stage() == conn::Stage::Relaying
        {
            self.submit_recv(slot, dir);
        }
    }

    /// Picks the buffer size of a direction's next receive from what this one got: a small
    /// buffer filled to the brim means more is waiting (bulk), so go large; a large receive
    /// that a small buffer would have held means the burst is over.
    pub(super) fn resize_receives(&mut self, slot: u32, dir: Dir, class: BufClass, len: u32) {
        let mut small = self.ring.buffer_size(BufClass::Small);
        if self.tls_direction(slot, dir) {
            // A TLS direction's receives may stop short of the brim (room for records).
            small = self.tls_receive_room(slot, dir, small);
        }
        let large = &mut self.conns[slot as usize].large_receives[dir as usize];
        match class {
            BufClass::Small if len >= small && self.ring.buffer_size(BufClass::Large) > 0 => {
                *large = true
            }
            BufClass::Large if len <= small => *large = false,
            _ => {}
        }
    }

    pub(super) fn count_received(&mut self, slot: u32, dir: Dir, n: u64) {
        match dir {
            Dir::Up => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.add(self.id, TcpStat::DownstreamCxRxBytesTotal, n);
                }
            }
            Dir::Down => {
                if let Some(s) = self.cluster_stats(slot) {
                    s.add(self.id, ClusterStat::UpstreamCxRxBytesTotal, n);
                }
            }
        }
    }

    /// `n` bytes of `dir` sent: the sink's `*_tx_bytes_total` grows and its
    /// `*_tx_bytes_buffered` shrinks, on one lookup of the stat block.
    pub(super) fn count_sent(&mut self, slot: u32, dir: Dir, n: u64) {
        let unbuffered = u64::from(self.take_buffered(slot, dir, n));
        let id = self.id;
        match dir {
            Dir::Up => {
                if let Some(s) = self.cluster_stats(slot) {
                    s.add(id, ClusterStat::UpstreamCxTxBytesTotal, n);
                    if unbuffered > 0 {
                        s.sub(id, ClusterStat::UpstreamCxTxBytesBuffered, unbuffered);
                    }
                }
            }
            Dir::Down => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.add(id, TcpStat::DownstreamCxTxBytesTotal, n);
                    if unbuffered > 0 {
                        s.sub(id, TcpStat::DownstreamCxTxBytesBuffered, unbuffered);
                    }
                }
            }
        }
    }

    /// `len` bytes received on `dir` wait for their send: the sink's `*_tx_bytes_buffered`.
    fn count_buffered(&mut self, slot: u32, dir: Dir, len: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.buffered[dir as usize] = conn.buffered[dir as usize].saturating_add(len);
        self.move_tx_buffered(slot, dir, u64::from(len), true);
    }

    /// Takes up to `len` bytes off `dir`'s buffered count; how many it took.
    fn take_buffered(&mut self, slot: u32, dir: Dir, len: u64) -> u32 {
        let held = &mut self.conns[slot as usize].buffered[dir as usize];
        let n = len.min(u64::from(*held)) as u32;
        *held -= n;
        n
    }

    /// The bytes `dir` still holds at close no longer wait: off the gauge.
    pub(super) fn unbuffer_all(&mut self, slot: u32, dir: Dir) {
        let n = self.take_buffered(slot, dir, u64::MAX);
        if n > 0 {
            self.move_tx_buffered(slot, dir, u64::from(n), false);
        }
    }

    /// Adds `n` to (or takes it from) the gauge of the bytes `dir` holds for its sink.
    fn move_tx_buffered(&self, slot: u32, dir: Dir, n: u64, add: bool) {
        let (id, up, down) = (
            self.id,
            ClusterStat::UpstreamCxTxBytesBuffered,
            TcpStat::DownstreamCxTxBytesBuffered,
        );
        match (dir, add) {
            (Dir::Up, true) => self.cluster_stats(slot).map(|s| s.add(id, up, n)),
            (Dir::Up, false) => self.cluster_stats(slot).map(|s| s.sub(id, up, n)),
            (Dir::Down, true) => self.tcp_stats(slot).map(|s| s.add(id, down, n)),
            (Dir::Down, false) => self.tcp_stats(slot).map(|s| s.sub(id, down, n)),
        };
    }

    pub(super) fn relay_event(&mut self, slot: u32, event: Event) {
        self.drive(slot, conn::Event::Relay(event));
    }

    /// Starts a receive on `dir`'s source of `slot`, of at most the source's buffer limit.
    pub(super) fn submit_recv(&mut self, slot: u32, dir: Dir) {
        if self.hbone_recv(slot, dir) {
            return;
        }
        if self.tls_answers_receive(slot, dir) {
            return;
        }
        if dir == Dir::Up && self.inspected_answers_receive(slot) {
            return;
        }
        let tls = self.tls_direction(slot, dir);
        let max_len = self.conns[slot as usize]
            .machine
            .relay()
            .limits()
            .recv_bytes(dir);
        if tls && self.tls_receive_carried(slot, dir, max_len) {
            return;
        }
        let large_ok = self.may_receive_large(slot, dir);
        let conn = &mut self.conns[slot as usize];
        let fd = conn.fd(dir.source());
        conn.machine.started(1);
        let kind = if dir == Dir::Up {
            Kind::RecvUp
        } else {
            Kind::RecvDown
        };
        let nonce = conn.nonce;
        let ud = ud::encode(kind, slot, nonce);
        if self.limits.relay_mode == RelayMode::Splice {
            let (pipe_in, capacity) = self
                .pipes
                .write_end(conn.pipes[dir as usize])
                .expect("a relaying connection has its pipes");
            // Spliced only once the socket is readable: no io-wq thread sleeps for its data
            // (holding the pipe's lock, against the send of this direction's last bytes).
            conn.machine.started(1);
            self.ring.splice_when_ready(
                Ready::SourceReadable,
                fd,
                pipe_in,
                capacity.min(max_len),
                ud::encode(Kind::Aux, slot, nonce),
                ud,
            );
        } else {
            // A large buffer only where the limit lets a receive fill more than a small one.
            let class = if large_ok
                && max_len > self.ring.buffer_size(BufClass::Small)
                && self.ring.buffers_in_kernel(BufClass::Large) > 0
            {
                BufClass::Large
            } else {
                BufClass::Small
            };
            conn.recv_class[dir as usize] = class;
            let max_len = if tls {
                let room = self.tls_receive_room(slot, dir, self.ring.buffer_size(class));
                max_len.min(room)
            } else {
                max_len
            };
            self.ring.recv(fd, class, max_len, ud);
        }
    }

    /// Whether `dir`'s next receive may take a large buffer: it moves bulk, and neither a
    /// fault's throttle nor a mirror (each received buffer is copied whole into a small chunk
    /// for the shadow) holds it to small ones.
    pub(super) fn may_receive_large(&self, slot: u32, dir: Dir) -> bool {
        let conn = &self.conns[slot as usize];
        let mirrored = dir == Dir::Up && conn.shadow.state != ShadowState::Off;
        conn.large_receives[dir as usize] && !mirrored && !self.throttled(slot, dir)
    }

    /// Carries out one of the relay's actions.
    pub(super) fn carry_out_relay(&mut self, slot: u32, action: Action) {
        match action {
            Action::Recv(dir) => {
                if !self.defer_recv(slot, dir) {
                    self.submit_recv(slot, dir);
                }
            }
            Action::Send {
                dir,
                buf,
                offset,
                len,
            } => self.submit_send(slot, dir, buf, offset, len),
            Action::ShutdownWrite(side) => self.submit_shutdown(slot, side),
            // A pipe stays with its connection until the connection closes.
            Action::Recycle(BufId::Pipe(_)) => {}
            Action::Recycle(BufId::Ring(buf)) => {
                self.ring.recycle(buf);
                self.feed_starved();
            }
            Action::Reset { .. } | Action::Close => {
                unreachable!("the connection machine turns the relay's end into its own")
            }
            Action::Paused(dir) => self.count_flow(slot, dir, true),
            Action::Resumed(dir) => self.count_flow(slot, dir, false),
        }
    }

    /// Sends `len` bytes at `offset` of `buf` to `dir`'s sink: a splice from the pipe, or a
    /// send from the provided buffer (and its first send upstream copies it for the mirror).
    fn submit_send(&mut self, slot: u32, dir: Dir, buf: BufId, offset: u32, len: u32) {
        if self.hbone_send(slot, dir, buf, offset, len) {
            return;
        }
        let conn = &mut self.conns[slot as usize];
        let fd = conn.fd(dir.sink());
        let ud = ud::encode(send_kind(dir), slot, conn.nonce);
        match buf {
            BufId::Pipe(pipe) => {
                // A pipe is read from its front, so the offset of a resumed short splice is
                // implicit. Straight away: the sink usually has room (when not, `EAGAIN`, see
                // `on_splice_sent`).
                let pipe_out = self
                    .pipes
                    .read_end(pipe)
                    .expect("a relaying connection has its pipes");
                conn.machine.started(1);
                conn.splice_send_len[dir as usize] = len;
                self.ring.splice(pipe_out, fd, len, ud);
            }
            BufId::Ring(buf) => {
                let mirrored = conn.shadow.state != ShadowState::Off;
                if dir == Dir::Up && offset == 0 && mirrored {
                    // First send of these bytes: the shadow gets a copy (before a TLS
                    // backend's records overwrite them).
                    self.mirror_send(slot, buf, len);
                }
                if self.tls_send(slot, dir, buf, offset, len) {
                    return;
                }
                let conn = &mut self.conns[slot as usize];
                conn.machine.started(1);
                conn.sending[dir as usize] = Some(buf);
                self.ring.send(fd, buf, offset, len, ud);
            }
        }
    }

    /// `shutdown(SHUT_WR)` on `side`: the other side's end of stream, after its last byte
    /// (the client's also ends the mirror's stream).
    fn submit_shutdown(&mut self, slot: u32, side: Side) {
        if self.hbone_shutdown(slot, side) {
            return;
        }
        if side == Side::Backend && self.conns[slot as usize].shadow.state != ShadowState::Off {
            self.mirror_eof(slot);
        }
        if self.tls_close_notify(slot, side) {
            // The shutdown follows the close_notify's write.
            return;
        }
        self.shutdown_now(slot, side);
    }

    /// `shutdown(SHUT_WR)` on `side` now.
    pub(super) fn shutdown_now(&mut self, slot: u32, side: Side) {
        let conn = &mut self.conns[slot as usize];
        let fd = conn.fd(side);
        conn.machine.started(1);
        let kind = if side == Side::Backend {
            Kind::ShutUp
        } else {
            Kind::ShutDown
        };
        self.ring
            .shutdown(fd, libc::SHUT_WR, ud::encode(kind, slot, conn.nonce));
    }

    fn count_flow(&mut self, slot: u32, dir: Dir, paused: bool) {
        match dir {
            Dir::Up => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.inc(
                        self.id,
                        if paused {
                            TcpStat::DownstreamFlowControlPausedReadingTotal
                        } else {
                            TcpStat::DownstreamFlowControlResumedReadingTotal
                        },
                    );
                }
            }
            Dir::Down => {
                if let Some(s) = self.cluster_stats(slot) {
                    s.inc(
                        self.id,
                        if paused {
                            ClusterStat::UpstreamFlowControlPausedReadingTotal
                        } else {
                            ClusterStat::UpstreamFlowControlResumedReadingTotal
                        },
                    );
                }
            }
        }
    }

    /// Gives a returned buffer's worth of progress to starved connections.
    ///
    /// Called when a buffer is recycled, after every completion batch and on every tick: a
    /// buffer may come back in the same batch as the `ENOBUFS` that starved a connection,
    /// before that connection was queued here, so waiting for the next recycle alone could
    /// stall it forever.
    pub(super) fn feed_starved(&mut self) {
        let mut budget = self.ring.buffers_in_kernel(BufClass::Small);
        while budget > 0 {
            let Some(slot) = self.starved.pop() else {
                return;
            };
            let conn = &self.conns[slot as usize];
            let relay = conn.machine.relay();
            if conn.machine.is_live() && (relay.is_starved(Dir::Up) || relay.is_starved(Dir::Down))
            {
                self.relay_event(slot, Event::BufferAvailable);
                budget -= 1;
            }
        }
    }
}
