//! TLS on the worker's ring: handshakes driven by their own receives and writes, then the
//! relay's receives decrypted and its sends encrypted in place, in the provided buffers.
//!
//! Guarantees:
//! - **No thread, no blocking.** Every byte moves through the connection's worker's ring;
//!   rustls only computes ([`crate::tls::Session`]).
//! - **One write at a time per socket.** A handshake's writes go out one after the other,
//!   and the relay starts sending to a side only once its handshake reported done, which
//!   waits for the last handshake write to complete; a `close_notify` goes out after the
//!   relay's last send of that direction. So records never interleave.
//! - **A handshake's end is reported once nothing of it is in flight**
//!   ([`crate::conn::Event::Handshaken`]): a failed backend handshake can be retried on a
//!   new socket with no old completion in the way.
//! - **Buffers come home.** A handshake receive's buffer is either decrypted plaintext
//!   waiting for the relay ([`TlsSide::ready`]), the buffer the next write goes out from, or
//!   recycled; what a closed connection still holds is recycled when its slot frees.

use super::ud::{self, Kind};
use super::Worker;
use crate::accesslog::tls::{TlsRecord, TlsSideRecord};
use crate::conn::{self, HandshakeEnd};
use crate::relay::{Dir, Received, Side};
use crate::stats::{ListenerStat, ServerStat, SslStat, SslStats};
use crate::sys::{BufClass, Completion, RingBuf};
use crate::tls::{Decrypted, Session, TLS_SLACK};
use std::sync::Arc;

/// A TLS write in flight: `len` bytes of `buf`, `sent` of them done.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write {
    buf: RingBuf,
    sent: u32,
    len: u32,
}

/// The relay's send to a TLS side, in records: it reports `plain` bytes sent once every
/// record is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordSend {
    plain: u32,
    sent: u32,
    len: u32,
}

/// One side's TLS, beside its socket.
#[derive(Debug)]
pub(crate) struct TlsSide {
    pub session: Session,
    /// A handshake receive is in flight.
    hs_recv: bool,
    /// A write TLS makes itself (handshake flight, ticket, alert, close_notify).
    write: Option<Write>,
    /// A held buffer free to write from (a handshake receive with no plaintext).
    scratch: Option<RingBuf>,
    /// Plaintext decrypted before the relay asked for it.
    ready: Option<(RingBuf, u32)>,
    /// The first bytes of a record whose end has not arrived: they go in front of the
    /// next receive's.
    carry: Option<Carry>,
    /// A receive into the carry's buffer, after its bytes, is in flight.
    carry_receiving: bool,
    /// Where a carry waits when no spare buffer was free (allocated then, kept).
    parked: Option<Box<[u8]>>,
    /// The peer sent `close_notify`: the direction's next receive is its end.
    eof: bool,
    /// The handshake failed for want of a buffer.
    local_failure: bool,
    /// The context waited for SDS secrets: no handshake was tried (not a TLS error).
    not_ready: bool,
    /// The peer ended the stream or failed the socket during the handshake.
    peer_failure: bool,
    /// The machine gave the handshake up.
    abandoned: bool,
    /// The handshake's end went to the machine.
    reported: bool,
    /// After the write in flight (`close_notify`), shut the socket's write side.
    shutdown_after_write: bool,
    /// The relay's send in flight to this side.
    record_send: Option<RecordSend>,
}

impl TlsSide {
    fn new(session: Session) -> TlsSide {
        TlsSide {
            session,
            hs_recv: false,
            write: None,
            scratch: None,
            ready: None,
            carry: None,
            carry_receiving: false,
            parked: None,
            eof: false,
            local_failure: false,
            not_ready: false,
            peer_failure: false,
            abandoned: false,
            reported: false,
            shutdown_after_write: false,
            record_send: None,
        }
    }

    /// The relay's next receive needs no socket read: bytes or the end are already here.
    fn answers_receive(&self) -> bool {
        self.ready.is_some() || self.eof
    }
}

/// The first `len` bytes of a record whose end has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carry {
    /// At the front of a spare buffer, which the next receive fills after them.
    Buffer { buf: RingBuf, len: u32 },
    /// In [`TlsSide::parked`]: the next receive's bytes move up to make room for them.
    Parked { len: u32 },
}

/// The most bytes of an incomplete record a carry holds (a TLS 1.2 record at its longest).
const MAX_CARRY_BYTES: usize = crate::tls::record::HEADER_LEN + 16 * 1024 + 2048;

fn read_kind(side: Side) -> Kind {
    match side {
        Side::Client => Kind::TlsReadClient,
        Side::Backend => Kind::TlsReadBackend,
    }
}

fn write_kind(side: Side) -> Kind {
    match side {
        Side::Client => Kind::TlsWriteClient,
        Side::Backend => Kind::TlsWriteBackend,
    }
}

/// The most a receive may take from a buffer of `size` bytes when its plaintext goes to a
/// TLS side, or in a handshake or inspection (room for records and what comes with the
/// handshake's last flight).
pub(super) fn tls_room(size: u32) -> u32 {
    size.saturating_sub(TLS_SLACK).max(1)
}

impl Worker {
    // ---- handshakes ----

    /// `Action::StartHandshake`: a session for `side` from its chain's or cluster's
    /// context, then its first receive or write.
    pub(super) fn start_handshake(&mut self, slot: u32, side: Side) {
        let not_ready = self.secrets_not_ready(slot, side);
        let session = if not_ready {
            None
        } else {
            self.new_session(slot, side)
        };
        let failed = session.is_none();
        let conn = &mut self.conns[slot as usize];
        let mut t = TlsSide::new(session.unwrap_or_else(|| {
            // No context (the FIB changed under a connection being accepted cannot happen:
            // it keeps its generation), or the client session could not be made.
            Session::failed()
        }));
        t.local_failure = failed;
        t.not_ready = not_ready;
        conn.tls[side as usize] = Some(Box::new(t));
        if side == Side::Client {
            self.feed_inspected(slot);
        }
        if self.tls_pump(slot, side).is_some() {
            // Ended before any I/O: report it through a completion, never from inside the
            // action being carried out.
            self.defer_report(slot, side);
        }
    }

    /// Whether `side`'s context waits for SDS secrets; counted (Envoy's
    /// `*_context_secrets_not_ready`) when it does, and the handshake then fails at once.
    fn secrets_not_ready(&self, slot: u32, side: Side) -> bool {
        let (waiting, stat) = match side {
            Side::Client => (
                self.chain_of(slot)
                    .and_then(|c| c.tls.as_ref())
                    .is_some_and(|t| t.context.is_none()),
                SslStat::DownstreamContextSecretsNotReady,
            ),
            Side::Backend => (
                self.cluster_of(slot).is_some_and(|c| c.tls_secrets_missing),
                SslStat::UpstreamContextSecretsNotReady,
            ),
        };
        if waiting {
            if let Some(stats) = self.ssl_stats(slot, side) {
                stats.inc(self.id, stat);
            }
        }
        waiting
    }

    /// The bytes the TLS inspector read (the ClientHello) go to the client's new session
    /// first, as a handshake receive's would.
    fn feed_inspected(&mut self, slot: u32) {
        let Some((buf, len)) = self.take_inspected(slot) else {
            return;
        };
        let Some(t) = self.conns[slot as usize].tls[Side::Client as usize].as_deref_mut() else {
            self.ring.recycle(buf);
            return;
        };
        let carried = feed_handshake(t, buf, len, &mut self.ring, self.id, Side::Client);
        self.count_carry(carried);
    }

    fn new_session(&self, slot: u32, side: Side) -> Option<Session> {
        match side {
            Side::Client => {
                let tls = self.chain_of(slot)?.tls.as_ref()?;
                Some(Session::server(tls.context.clone()?))
            }
            Side::Backend => {
                let ctx = self.cluster_of(slot)?.tls.as_ref()?;
                match Session::client(ctx) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(worker = self.id, error = %e, "TLS client session");
                        None
                    }
                }
            }
        }
    }

    /// Reports `side`'s handshake end through a no-op completion (as a handshake receive).
    fn defer_report(&mut self, slot: u32, side: Side) {
        let conn = &mut self.conns[slot as usize];
        let Some(t) = conn.tls(side) else { return };
        t.reported = false;
        t.hs_recv = true;
        conn.machine.started(1);
        self.ring.nop(ud::encode(read_kind(side), slot, conn.nonce));
    }

    /// `Action::AbandonHandshake`: its deadline passed. Its I/O is cancelled; the end is
    /// reported when the last of it completes.
    pub(super) fn abandon_handshake(&mut self, slot: u32, side: Side) {
        let conn = &mut self.conns[slot as usize];
        let nonce = conn.nonce;
        let Some(t) = conn.tls[side as usize].as_deref_mut() else {
            return;
        };
        t.abandoned = true;
        let (recv, write) = (t.hs_recv, t.write.is_some());
        let aux = ud::encode(Kind::Aux, slot, nonce);
        for (in_flight, kind) in [(recv, read_kind(side)), (write, write_kind(side))] {
            if in_flight {
                conn.machine.started(1);
                self.ring.cancel(ud::encode(kind, slot, nonce), aux);
            }
        }
        if !recv && !write {
            self.defer_report(slot, side);
        }
    }

    /// Moves `side`'s handshake on: writes what rustls has for the peer, receives while it
    /// handshakes. Returns the handshake's end once it has one and nothing is in flight.
    fn tls_pump(&mut self, slot: u32, side: Side) -> Option<HandshakeEnd> {
        let conn = &mut self.conns[slot as usize];
        let (fd, nonce) = (conn.fd(side), conn.nonce);
        let t = conn.tls[side as usize].as_deref_mut()?;
        if t.reported {
            return None;
        }
        let stopped = t.abandoned || t.local_failure || t.peer_failure;
        if t.write.is_none() && t.session.wants_write() && !t.abandoned && !t.peer_failure {
            match t
                .scratch
                .take()
                .or_else(|| self.ring.take_spare(BufClass::Small))
            {
                Some(buf) => {
                    let len = t.session.write_pending(self.ring.buffer_mut(buf)) as u32;
                    t.write = Some(Write { buf, sent: 0, len });
                    conn.machine.started(1);
                    self.ring
                        .send(fd, buf, 0, len, ud::encode(write_kind(side), slot, nonce));
                }
                // The handshake cannot go on without writing; its tickets can wait for
                // the relay's first send to this side.
                None if t.session.is_handshaking() => t.local_failure = true,
                None => {}
            }
        }
        if let Some(buf) = t.scratch.take() {
            self.ring.recycle(buf);
        }
        let failed = t.session.is_failed() || stopped || t.local_failure;
        if !failed && t.session.is_handshaking() && !t.hs_recv {
            let max_len = tls_room(self.ring.buffer_size(BufClass::Small));
            t.hs_recv = true;
            conn.machine.started(1);
            self.ring.recv(
                fd,
                BufClass::Small,
                max_len,
                ud::encode(read_kind(side), slot, nonce),
            );
        }
        if t.hs_recv || t.write.is_some() {
            return None;
        }
        let end = if t.abandoned {
            HandshakeEnd::TimedOut
        } else if t.local_failure {
            HandshakeEnd::Local
        } else if failed {
            HandshakeEnd::Failed
        } else if t.session.is_handshaking() {
            return None;
        } else {
            HandshakeEnd::Done
        };
        t.reported = true;
        Some(end)
    }

    /// Counts `side`'s handshake end in its `ssl.*` stats and tells the machine.
    fn report_handshake(&mut self, slot: u32, side: Side, end: HandshakeEnd) {
        self.count_handshake(slot, side, end);
        self.drive(slot, conn::Event::Handshaken { side, end });
    }

    /// The listener `slot` was accepted on, in its own generation.
    pub(super) fn listener_of(&self, slot: u32) -> Option<&crate::fib::Listener> {
        let conn = &self.conns[slot as usize];
        let g = self.generations[conn.generation as usize].as_ref()?;
        g.fib.listeners.get(conn.fib_listener as usize)
    }

    /// The `ssl.*` stats of `side`: the listener's for the client, the cluster's for the
    /// backend.
    fn ssl_stats(&self, slot: u32, side: Side) -> Option<&SslStats> {
        match side {
            Side::Client => self.listener_of(slot)?.ssl_stats.as_deref(),
            Side::Backend => self.cluster_of(slot)?.ssl_stats.as_deref(),
        }
    }

    fn count_handshake(&self, slot: u32, side: Side, end: HandshakeEnd) {
        let Some(t) = self.conns[slot as usize].tls[side as usize].as_deref() else {
            return;
        };
        let Some(stats) = self.ssl_stats(slot, side) else {
            return;
        };
        let id = self.id;
        match end {
            HandshakeEnd::Done => {
                stats.inc(id, SslStat::Handshake);
                if let Some(n) = t.session.negotiated() {
                    if n.resumed {
                        stats.inc(id, SslStat::SessionReused);
                    }
                    let named = [
                        n.protocol.and_then(SslStat::of_version),
                        n.suite.and_then(SslStat::of_cipher),
                        n.group.and_then(SslStat::of_curve),
                    ];
                    for stat in named.into_iter().flatten() {
                        stats.inc(id, stat);
                    }
                }
                let asked = side == Side::Client && t.session.asks_for_client_certificate();
                if asked && t.session.peer_certificates().is_none() {
                    stats.inc(id, SslStat::NoCertificate);
                }
            }
            HandshakeEnd::TimedOut => {
                stats.inc(id, SslStat::HandshakeTimeout);
                if side == Side::Client {
                    if let Some(l) = self.listener_of(slot) {
                        l.stats
                            .inc(id, ListenerStat::DownstreamCxTransportSocketConnectTimeout);
                    }
                }
            }
            // A peer that ends or resets the connection before TLS failed is no TLS error
            // (a port probe, a client gone): only a failed session or the proxy's own
            // failure counts.
            HandshakeEnd::Failed if t.session.error().is_none() => {}
            HandshakeEnd::Local if t.not_ready => {}
            HandshakeEnd::Failed | HandshakeEnd::Local => {
                stats.inc(id, SslStat::ConnectionError);
                let verify = match t.session.error() {
                    Some(rustls::Error::NoCertificatesPresented) => Some(SslStat::FailVerifyNoCert),
                    Some(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForName,
                    )) => Some(SslStat::FailVerifySan),
                    Some(rustls::Error::InvalidCertificate(_)) => Some(SslStat::FailVerifyError),
                    _ => None,
                };
                if let Some(stat) = verify {
                    stats.inc(id, stat);
                }
            }
        }
    }

    /// Counts how the first bytes of a record split over receives were kept, if any were.
    fn count_carry(&self, carried: Option<Carry>) {
        let stat = match carried {
            Some(Carry::Buffer { .. }) => ServerStat::TlsRecordsCarried,
            Some(Carry::Parked { .. }) => ServerStat::TlsRecordsParked,
            None => return,
        };
        self.shared.server_stats.inc(self.id, stat);
    }

    /// Whether `slot` is in a handshake with `side` (its completions move it on).
    fn handshaking(&self, slot: u32, side: Side) -> bool {
        self.conns[slot as usize].machine.stage() == conn::Stage::Handshaking { side }
    }

    /// A handshake receive from `side` completed.
    pub(super) fn on_tls_read(&mut self, slot: u32, side: Side, c: Completion) {
        let buf = match (c.result, c.buffer_id()) {
            (n, Some(bid)) if n > 0 => Some((self.ring.buffer_received(BufClass::Small, bid), n)),
            _ => None,
        };
        let live = self.handshaking(slot, side);
        let conn = &mut self.conns[slot as usize];
        let Some(t) = conn.tls[side as usize].as_deref_mut() else {
            if let Some((b, _)) = buf {
                self.ring.recycle(b);
            }
            return;
        };
        t.hs_recv = false;
        match buf {
            Some((b, _)) if !live || t.reported || t.abandoned => self.ring.recycle(b),
            Some((b, n)) => {
                let carried = feed_handshake(t, b, n as u32, &mut self.ring, self.id, side);
                self.count_carry(carried);
            }
            // End of stream or an error before the handshake finished (or the no-op that
            // reports an end decided before any I/O).
            None if !t.reported && !t.local_failure && !t.abandoned => t.peer_failure = true,
            None => {}
        }
        if !live {
            return;
        }
        if let Some(end) = self.tls_pump(slot, side) {
            self.report_handshake(slot, side, end);
        }
    }

    /// A write TLS made to `side` completed.
    pub(super) fn on_tls_write(&mut self, slot: u32, side: Side, result: i32) {
        let conn = &mut self.conns[slot as usize];
        let (fd, nonce) = (conn.fd(side), conn.nonce);
        let Some(t) = conn.tls[side as usize].as_deref_mut() else {
            return;
        };
        let Some(mut w) = t.write.take() else {
            return;
        };
        self.ring.send_done(w.buf);
        if result > 0 && (result as u32) < w.len - w.sent && fd != super::slot::NO_FD {
            // A short write: the rest, from where it stopped.
            w.sent += result as u32;
            t.write = Some(w);
            conn.machine.started(1);
            self.ring.send(
                fd,
                w.buf,
                w.sent,
                w.len - w.sent,
                ud::encode(write_kind(side), slot, nonce),
            );
            return;
        }
        if result < 0 {
            t.peer_failure = true;
        }
        if std::mem::take(&mut t.shutdown_after_write) {
            self.ring.recycle(w.buf);
            if conn.machine.stage() == conn::Stage::Relaying {
                self.shutdown_now(slot, side);
            }
            return;
        }
        let live = conn.machine.stage() == conn::Stage::Handshaking { side };
        if !live {
            self.ring.recycle(w.buf);
            return;
        }
        // The buffer the next handshake write goes out from.
        t.scratch = Some(w.buf);
        if let Some(end) = self.tls_pump(slot, side) {
            self.report_handshake(slot, side, end);
        }
    }

    // ---- the relay over TLS ----

    /// The relay asks to receive on `dir` from a TLS side whose next bytes (or end) are
    /// already decrypted: answered by a no-op completion. False when a socket read is due.
    pub(super) fn tls_answers_receive(&mut self, slot: u32, dir: Dir) -> bool {
        let conn = &mut self.conns[slot as usize];
        let nonce = conn.nonce;
        let Some(t) = conn.tls[dir.source() as usize].as_deref() else {
            return false;
        };
        if !t.answers_receive() {
            return false;
        }
        let kind = if dir == Dir::Up {
            Kind::RecvUp
        } else {
            Kind::RecvDown
        };
        conn.machine.started(1);
        self.ring.nop(ud::encode(kind, slot, nonce));
        true
    }

    /// A receive completion on `dir` whose source speaks TLS, before the relay sees it:
    /// the no-op that stands for already decrypted bytes, or ciphertext to decrypt in
    /// place. `None`: nothing for the relay yet (a receive was started again).
    pub(super) fn tls_receive(
        &mut self,
        slot: u32,
        dir: Dir,
        c: &Completion,
    ) -> Option<TlsReceived> {
        let side = dir.source();
        let t = self.conns[slot as usize].tls[side as usize].as_deref_mut()?;
        if t.carry_receiving {
            return Some(self.carried_receive(slot, dir, c.result));
        }
        if t.answers_receive() && c.buffer_id().is_none() {
            return Some(self.answer_from_session(slot, dir));
        }
        Some(TlsReceived::Socket)
    }

    /// The relay's receive on `dir`, answered from the session.
    fn answer_from_session(&mut self, slot: u32, dir: Dir) -> TlsReceived {
        let t = self.conns[slot as usize].tls[dir.source() as usize]
            .as_deref_mut()
            .expect("checked by the caller");
        if let Some((buf, len)) = t.ready.take() {
            return TlsReceived::Plain { buf, len };
        }
        TlsReceived::Relay(Received::Eof)
    }

    /// A receive into the carry's buffer on `dir` completed: the record's first bytes and
    /// what came after them are decrypted together.
    fn carried_receive(&mut self, slot: u32, dir: Dir, result: i32) -> TlsReceived {
        let t = self.conns[slot as usize].tls[dir.source() as usize]
            .as_deref_mut()
            .expect("checked by the caller");
        t.carry_receiving = false;
        let Some(Carry::Buffer { buf, len }) = t.carry.take() else {
            unreachable!("a carried receive has its buffer")
        };
        self.ring.recv_done(buf);
        if result > 0 {
            let total = len + result as u32;
            self.resize_receives(slot, dir, buf.class(), total);
            return self.tls_decrypt(slot, dir, buf, total);
        }
        self.ring.recycle(buf);
        self.feed_starved();
        // The peer ended (or failed) in the middle of a record: no plaintext of it exists.
        let end = if result == 0 {
            Received::Eof
        } else {
            Received::Error(-result)
        };
        TlsReceived::Relay(end)
    }

    /// The next receive on `dir` from a TLS side with a carry in a buffer: into that
    /// buffer, after the carried bytes. False when there is none (a socket read into a
    /// provided buffer is due).
    pub(super) fn tls_receive_carried(&mut self, slot: u32, dir: Dir, max_len: u32) -> bool {
        let conn = &mut self.conns[slot as usize];
        let (fd, nonce) = (conn.fd(dir.source()), conn.nonce);
        let Some(t) = conn.tls[dir.source() as usize].as_deref_mut() else {
            return false;
        };
        let Some(Carry::Buffer { buf, len }) = t.carry else {
            return false;
        };
        t.carry_receiving = true;
        conn.recv_class[dir as usize] = buf.class();
        conn.machine.started(1);
        let kind = if dir == Dir::Up {
            Kind::RecvUp
        } else {
            Kind::RecvDown
        };
        let room = self.tls_receive_room(slot, dir, self.ring.buffer_size(buf.class()));
        let nonce_ud = ud::encode(kind, slot, nonce);
        self.ring
            .recv_into(fd, buf, len, room.min(max_len).max(1), nonce_ud);
        true
    }

    /// Decrypts the `len` bytes just received into `buf` on `dir` in place (after the
    /// bytes of a record carried from the last receive, moved in front of them).
    pub(super) fn tls_decrypt(
        &mut self,
        slot: u32,
        dir: Dir,
        buf: RingBuf,
        len: u32,
    ) -> TlsReceived {
        let t = self.conns[slot as usize].tls[dir.source() as usize]
            .as_deref_mut()
            .expect("a TLS side");
        let bytes = self.ring.buffer_mut(buf);
        let len = unpark(t, bytes, len as usize);
        match t.session.decrypt_in_place(bytes, len) {
            Ok(d) => {
                t.eof |= d.peer_closed;
                let class = if self.may_receive_large(slot, dir) {
                    BufClass::Large
                } else {
                    BufClass::Small
                };
                let t = self.conns[slot as usize].tls[dir.source() as usize]
                    .as_deref_mut()
                    .expect("a TLS side");
                let carried = carry(t, buf, d, class, &mut self.ring);
                self.count_carry(carried);
                if d.plaintext > 0 {
                    return TlsReceived::Plain {
                        buf,
                        len: d.plaintext as u32,
                    };
                }
                self.ring.recycle(buf);
                if d.peer_closed {
                    TlsReceived::Relay(Received::Eof)
                } else {
                    TlsReceived::Again
                }
            }
            Err(e) => {
                tracing::debug!(worker = self.id, ?dir, error = %e, "TLS record refused");
                self.ring.recycle(buf);
                // A bad record after the handshake (oversized, undecryptable) is a TLS error
                // too, as Envoy counts it.
                if let Some(stats) = self.ssl_stats(slot, dir.source()) {
                    stats.inc(self.id, SslStat::ConnectionError);
                }
                TlsReceived::Relay(Received::Error(libc::EPROTO))
            }
        }
    }

    /// The relay sends `len` plaintext bytes at `offset` of `buf` to a TLS side: they are
    /// encrypted over the buffer and the records sent. False when the side is plaintext.
    pub(super) fn tls_send(
        &mut self,
        slot: u32,
        dir: Dir,
        buf: RingBuf,
        offset: u32,
        len: u32,
    ) -> bool {
        let conn = &mut self.conns[slot as usize];
        let (fd, nonce) = (conn.fd(dir.sink()), conn.nonce);
        let Some(t) = conn.tls[dir.sink() as usize].as_deref_mut() else {
            return false;
        };
        let bytes = self.ring.buffer_mut(buf);
        let cipher = match t
            .session
            .encrypt_in_place(bytes, offset as usize, len as usize)
        {
            Ok(n) => n as u32,
            Err(e) => {
                // Cannot happen on an established session; the send fails as a write would.
                tracing::error!(worker = self.id, error = %e, "TLS encrypt");
                0
            }
        };
        t.record_send = Some(RecordSend {
            plain: len,
            sent: 0,
            len: cipher,
        });
        conn.sending[dir as usize] = Some(buf);
        conn.machine.started(1);
        let ud = ud::encode(super::send_kind(dir), slot, nonce);
        if cipher == 0 {
            self.ring.nop(ud);
        } else {
            self.ring.send(fd, buf, 0, cipher, ud);
        }
        true
    }

    /// A send of records from `buf` to `dir`'s TLS sink completed (its buffer is back from
    /// the send): the rest of them, or what the relay hears.
    pub(super) fn tls_sent(&mut self, slot: u32, dir: Dir, buf: RingBuf, result: i32) -> TlsSent {
        let conn = &mut self.conns[slot as usize];
        let (fd, nonce) = (conn.fd(dir.sink()), conn.nonce);
        let Some(t) = conn.tls[dir.sink() as usize].as_deref_mut() else {
            return TlsSent::Plaintext;
        };
        let Some(mut s) = t.record_send.take() else {
            return TlsSent::Plaintext;
        };
        if s.len == 0 {
            return TlsSent::Relay(Err(libc::EPROTO));
        }
        if result < 0 {
            return TlsSent::Relay(Err(-result));
        }
        if result == 0 {
            return TlsSent::Relay(Err(libc::EPIPE));
        }
        s.sent += result as u32;
        let relaying = conn.machine.stage() == conn::Stage::Relaying;
        if s.sent >= s.len && relaying && t.session.wants_write() {
            // Records that did not fit the buffer (or rustls' own messages): next.
            s.len = t.session.write_pending(self.ring.buffer_mut(buf)) as u32;
            s.sent = 0;
        }
        if s.sent < s.len && relaying {
            t.record_send = Some(s);
            conn.sending[dir as usize] = Some(buf);
            conn.machine.started(1);
            self.ring.send(
                fd,
                buf,
                s.sent,
                s.len - s.sent,
                ud::encode(super::send_kind(dir), slot, nonce),
            );
            return TlsSent::Again;
        }
        TlsSent::Relay(Ok(s.plain))
    }

    /// The relay ends `side`'s stream: a `close_notify` first when a buffer is free to
    /// write it from. True when the shutdown waits for that write.
    pub(super) fn tls_close_notify(&mut self, slot: u32, side: Side) -> bool {
        let conn = &mut self.conns[slot as usize];
        let (fd, nonce) = (conn.fd(side), conn.nonce);
        let Some(t) = conn.tls[side as usize].as_deref_mut() else {
            return false;
        };
        if t.write.is_some() || t.session.is_failed() {
            return false;
        }
        let Some(buf) = self.ring.take_spare(BufClass::Small) else {
            return false;
        };
        t.session.send_close_notify();
        let len = t.session.write_pending(self.ring.buffer_mut(buf)) as u32;
        if len == 0 {
            self.ring.recycle(buf);
            return false;
        }
        t.write = Some(Write { buf, sent: 0, len });
        t.shutdown_after_write = true;
        conn.machine.started(1);
        self.ring
            .send(fd, buf, 0, len, ud::encode(write_kind(side), slot, nonce));
        true
    }

    /// Buffers a closed connection's TLS still holds go home; the sessions are dropped.
    pub(super) fn release_tls(&mut self, slot: u32) {
        for side in [Side::Client, Side::Backend] {
            let Some(t) = self.conns[slot as usize].tls[side as usize].take() else {
                continue;
            };
            let carried = match t.carry {
                Some(Carry::Buffer { buf, .. }) => Some(buf),
                _ => None,
            };
            debug_assert!(!t.carry_receiving, "freed with a receive in flight");
            for buf in [t.ready.map(|(b, _)| b), t.scratch, carried]
                .into_iter()
                .flatten()
            {
                self.ring.recycle(buf);
            }
        }
    }

    /// Whether `side` has TLS I/O of its own in flight (a handshake receive or a write).
    pub(super) fn tls_busy(&self, slot: u32, side: Side) -> bool {
        self.conns[slot as usize].tls[side as usize]
            .as_deref()
            .is_some_and(|t| t.hs_recv || t.write.is_some())
    }

    /// Whether the receive on `dir` reads a TLS side (its length leaves room for records).
    pub(super) fn tls_direction(&self, slot: u32, dir: Dir) -> bool {
        let conn = &self.conns[slot as usize];
        conn.tls[dir.source() as usize].is_some() || conn.tls[dir.sink() as usize].is_some()
    }

    /// The most a receive on `dir` may take into a buffer of `size` bytes: all of it when
    /// only the source speaks TLS (plaintext is never longer than its records, and it is
    /// moved down over them), less [`TLS_SLACK`] when the sink does (its records' headers
    /// and tags); less what a carry puts in front either way.
    pub(super) fn tls_receive_room(&self, slot: u32, dir: Dir, size: u32) -> u32 {
        let conn = &self.conns[slot as usize];
        let room = if conn.tls[dir.sink() as usize].is_some() {
            tls_room(size)
        } else {
            size
        };
        let carried = match conn.tls[dir.source() as usize].as_deref() {
            Some(TlsSide {
                carry: Some(Carry::Buffer { len, .. } | Carry::Parked { len }),
                ..
            }) => *len,
            _ => 0,
        };
        room.saturating_sub(carried).max(1)
    }
}

/// What a closed connection's TLS gives its access-log records: each side's session, and
/// the server name the TLS inspector read (a chain that passes TLS through has only that).
pub(super) fn tls_record(conn: &super::slot::Conn) -> Option<Arc<TlsRecord>> {
    let server_name = conn.server_name.as_deref();
    let downstream = match conn.tls[Side::Client as usize].as_deref() {
        Some(t) => Some(side_record(&t.session, server_name)),
        None => server_name.map(|n| TlsSideRecord::new(None, None, Some(n.into()), None, None)),
    };
    let upstream = conn.tls[Side::Backend as usize]
        .as_deref()
        .map(|t| side_record(&t.session, None));
    let record = TlsRecord {
        downstream,
        upstream,
    };
    (record.downstream.is_some() || record.upstream.is_some()).then(|| Arc::new(record))
}

fn side_record(session: &Session, server_name: Option<&str>) -> TlsSideRecord {
    let negotiated = session.negotiated();
    TlsSideRecord::new(
        negotiated.map(|n| n.version),
        negotiated
            .and_then(|n| n.suite)
            .and_then(SslStat::of_cipher)
            .and_then(|s| s.name().strip_prefix("ciphers.")),
        // `%REQUESTED_SERVER_NAME%` is the tls_inspector's (Envoy sets none without
        // one, even on a chain that terminates TLS).
        server_name.map(Box::from),
        session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec()),
        session.error().map(|e| e.to_string().into_boxed_str()),
    )
}

/// What a TLS sink makes of a send's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsSent {
    /// The sink is plaintext: the completion is the relay's own.
    Plaintext,
    /// More records went out; the relay hears nothing yet.
    Again,
    /// The relay's send is over: its plaintext bytes sent, or the error.
    Relay(Result<u32, i32>),
}

/// What a TLS side makes of a receive on its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TlsReceived {
    /// Not answered from the session: the completion is a socket read.
    Socket,
    /// `len` bytes of plaintext at the front of `buf`.
    Plain { buf: RingBuf, len: u32 },
    /// What the relay hears instead of bytes.
    Relay(Received),
    /// Nothing for the relay: receive again.
    Again,
}

/// Feeds `len` bytes received in `buf` to a side's handshake: decrypted in place and kept
/// ([`keep_decrypted`]), or, when the session fails, the buffer its alert goes out from.
fn feed_handshake(
    t: &mut TlsSide,
    buf: RingBuf,
    len: u32,
    ring: &mut crate::sys::Ring,
    worker: usize,
    side: Side,
) -> Option<Carry> {
    let bytes = ring.buffer_mut(buf);
    match t.session.decrypt_in_place(bytes, len as usize) {
        Ok(d) => {
            let carried = carry(t, buf, d, BufClass::Small, ring);
            keep_decrypted(t, buf, d, ring);
            carried
        }
        Err(e) => {
            tracing::debug!(worker, ?side, error = %e, "TLS handshake failed");
            t.scratch = Some(buf);
            None
        }
    }
}

/// Keeps what a handshake receive decrypted: plaintext for the relay, or the buffer for the
/// next write.
fn keep_decrypted(t: &mut TlsSide, buf: RingBuf, d: Decrypted, ring: &mut crate::sys::Ring) {
    t.eof |= d.peer_closed;
    if d.plaintext > 0 {
        if let Some((old, _)) = t.ready.replace((buf, d.plaintext as u32)) {
            // Cannot happen: one handshake receive after the handshake's end at most.
            ring.recycle(old);
        }
    } else {
        t.scratch = Some(buf);
    }
}

/// Keeps the first bytes of a record whose end has not arrived (`d`'s tail in `buf`) for
/// the next receive: at the front of a spare buffer (of `class`, the size the direction
/// receives into, else small) that the receive fills after them, or, with no spare free,
/// parked beside the session. Returns how it was kept.
fn carry(
    t: &mut TlsSide,
    buf: RingBuf,
    d: Decrypted,
    class: BufClass,
    ring: &mut crate::sys::Ring,
) -> Option<Carry> {
    debug_assert!(t.carry.is_none(), "one carry at a time");
    if d.tail_len == 0 {
        return None;
    }
    let len = d.tail_len as u32;
    let spare = ring
        .take_spare(class)
        .or_else(|| ring.take_spare(BufClass::Small));
    if let Some(spare) = spare {
        ring.copy_between(buf, d.tail_at, d.tail_len, spare);
        t.carry = Some(Carry::Buffer { buf: spare, len });
        return t.carry;
    }
    let parked = t
        .parked
        .get_or_insert_with(|| vec![0u8; MAX_CARRY_BYTES].into_boxed_slice());
    parked[..d.tail_len].copy_from_slice(&ring.buffer_mut(buf)[d.tail_at..d.tail_at + d.tail_len]);
    t.carry = Some(Carry::Parked { len });
    t.carry
}

/// Puts a parked carry in front of the `len` bytes just received into `bytes` (the receive
/// left room for it); the bytes to decrypt.
fn unpark(t: &mut TlsSide, bytes: &mut [u8], len: usize) -> usize {
    let Some(Carry::Parked { len: parked }) = t.carry else {
        return len;
    };
    t.carry = None;
    let parked = parked as usize;
    bytes.copy_within(..len, parked);
    let from = t.parked.as_deref().expect("a parked carry has its room");
    bytes[..parked].copy_from_slice(&from[..parked]);
    parked + len
}
