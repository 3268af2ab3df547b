//! L4 mirroring (`switchyard.filters.network.mirror`) on the worker: a sampled connection
//! also sends every client byte to an endpoint of the shadow cluster.
//!
//! # How
//!
//! - At accept, a share of connections (`percent`) gets a shadow: an endpoint of the shadow
//!   cluster picked by its balancer, connected with its own socket and connect (the ring has
//!   a second connect lane per slot), `connections_mirrored`.
//! - Each buffer the relay sends upstream for the first time (offset 0) is also copied into
//!   a chunk of the ring's copy pool and queued for the shadow, so the primary's buffers
//!   follow their own life untouched. The shadow sends its queue in order, resuming short
//!   sends; the client's end of stream becomes the shadow's, after its last byte.
//! - The shadow's replies are received into small ring buffers and recycled at once.
//!
//! # Guarantees
//!
//! - **The primary never waits for the shadow.** A shadow that is still connecting, slow or
//!   dead holds only copies. When its queue would exceed `max_buffered_bytes` (or 16 chunks,
//!   or the worker's copy pool runs dry) it is given up — closed, `connections_dropped` —
//!   rather than sent a stream with a hole. A shadow whose connect or send fails is closed
//!   (`connections_failed`). Neither touches the primary connection.
//! - **Byte for byte.** A shadow that is not given up receives exactly the client's bytes,
//!   in order, then end of stream.
//! - **Bounded life.** When the primary closes, a shadow with bytes still queued gets
//!   [`SHADOW_DRAIN_MS`] to take them, then it is closed; the slot is freed after the
//!   shadow's last completion.
//! - Splice mode moves bytes kernel to kernel, so there is nothing to copy: mirroring is
//!   skipped there (logged once per worker).

use super::drive::Lane;
use super::slot::{Shadow, ShadowState, NO_FD, SHADOW_QUEUE};
use super::ud::{self, Kind};
use super::{RelayMode, Worker};
use crate::conn;
use crate::lb::Pick;
use crate::stats::{MirrorStat, MirrorStats};
use crate::sys::{BufClass, RingBuf};
use std::time::Duration;

/// How long a shadow may keep draining its queue after the primary closed.
pub(super) const SHADOW_DRAIN_MS: u64 = 5_000;
/// How long a shadow that has everything (queue sent, end of stream sent) may take to close
/// its side after the primary closed, before it is closed without waiting.
pub(super) const SHADOW_LINGER_MS: u64 = 250;

impl Worker {
    fn mirror_stats(&self, slot: u32) -> Option<&MirrorStats> {
        self.chain_of(slot)
            .and_then(|c| c.mirror.as_ref())
            .map(|m| &*m.stats)
    }

    /// Draws whether new connection `slot` is mirrored and, if so, starts its shadow.
    pub(super) fn start_shadow(&mut self, slot: u32) {
        let Some(mirror) = self.chain_of(slot).and_then(|c| c.mirror.as_ref()) else {
            return;
        };
        let (cluster_id, per_million, max_bytes) = (
            mirror.cluster,
            mirror.per_million,
            mirror.max_buffered_bytes,
        );
        if !crate::fib::drawn(per_million, self.rng.next_u64()) {
            return;
        }
        if self.limits.relay_mode == RelayMode::Splice {
            if !self.mirror_splice_warned {
                self.mirror_splice_warned = true;
                tracing::warn!(
                    worker = self.id,
                    "mirroring needs the buffer-ring relay; skipped in splice mode"
                );
            }
            return;
        }
        let id = self.id;
        let Some(cluster_id) = cluster_id else {
            if let Some(stats) = self.mirror_stats(slot) {
                stats.inc(id, MirrorStat::ConnectionsFailed);
            }
            return;
        };
        let gen_index = self.conns[slot as usize].generation as usize;
        let Some(generation) = self.generations[gen_index].as_mut() else {
            return;
        };
        let fib = &generation.fib;
        let cluster = fib.cluster(cluster_id);
        let picked = generation
            .lb
            .pick(fib, cluster_id, Pick::default(), &mut self.rng);
        let address = picked.map(|p| cluster.endpoints[p.endpoint].address);
        let timeout = Duration::from_millis(cluster.connect_timeout_ms.max(1));
        let Some(address) = address else {
            if let Some(stats) = self.mirror_stats(slot) {
                stats.inc(id, MirrorStat::ConnectionsFailed);
            }
            return;
        };
        if let Some(stats) = self.mirror_stats(slot) {
            stats.inc(id, MirrorStat::ConnectionsMirrored);
            stats.inc(id, MirrorStat::Active);
        }
        let conn = &mut self.conns[slot as usize];
        conn.shadow = Shadow::connecting(address, timeout.as_millis() as u64, max_bytes);
        conn.machine.mirror_started();
        conn.machine.started(1);
        self.ring.socket(
            &address,
            0,
            ud::encode(Kind::ShadowSocket, slot, conn.nonce),
        );
    }

    pub(super) fn on_shadow_socket(&mut self, slot: u32, result: i32) {
        let conn = &mut self.conns[slot as usize];
        if conn.shadow.state != ShadowState::Connecting {
            if result >= 0 {
                super::net::close(result);
            }
            return;
        }
        if result < 0 {
            self.shadow_failed(slot);
            return;
        }
        conn.shadow.fd = result;
        let address = conn.shadow.address.expect("shadow endpoint picked");
        let timeout = Duration::from_millis(conn.shadow.timeout_ms);
        let kinds = [Kind::ShadowAux, Kind::ShadowConnect, Kind::ShadowAux];
        self.connect_nodelay(slot, Lane::Shadow, result, address, timeout, kinds);
    }

    pub(super) fn on_shadow_connect(&mut self, slot: u32, result: i32) {
        if self.conns[slot as usize].shadow.state != ShadowState::Connecting {
            return;
        }
        if result < 0 {
            self.shadow_failed(slot);
            return;
        }
        self.conns[slot as usize].shadow.state = ShadowState::Open;
        self.shadow_kick(slot);
    }

    /// Arms the shadow's discard read when none is in flight.
    fn shadow_read(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        let shadow = &mut conn.shadow;
        if shadow.state != ShadowState::Open || shadow.reading || shadow.peer_closed {
            return;
        }
        shadow.reading = true;
        conn.machine.started(1);
        let ud = ud::encode(Kind::ShadowRecv, slot, conn.nonce);
        self.ring.recv(shadow.fd, BufClass::Small, u32::MAX, ud);
    }

    /// The relay sends `len` bytes of buffer `buf` upstream for the first time: a copy goes
    /// to the shadow's queue, or the shadow is given up.
    pub(super) fn mirror_send(&mut self, slot: u32, buf: RingBuf, len: u32) {
        let shadow = &self.conns[slot as usize].shadow;
        if !matches!(shadow.state, ShadowState::Connecting | ShadowState::Open) || shadow.eof {
            return;
        }
        let over = shadow.count as usize >= SHADOW_QUEUE
            || u64::from(shadow.queued_bytes) + u64::from(len) > u64::from(shadow.max_bytes);
        let copy = if over { None } else { self.ring.copy_alloc() };
        let Some(copy) = copy else {
            if let Some(stats) = self.mirror_stats(slot) {
                stats.inc(self.id, MirrorStat::ConnectionsDropped);
            }
            self.shadow_close(slot);
            return;
        };
        let copied = self.ring.copy_from_buffer(copy, buf, len);
        let shadow = &mut self.conns[slot as usize].shadow;
        shadow.push(copy, copied);
        self.shadow_kick(slot);
    }

    /// Starts the shadow's next send, or its end of stream once the queue is empty, and
    /// keeps its discard read armed.
    fn shadow_kick(&mut self, slot: u32) {
        self.shadow_read(slot);
        let conn = &mut self.conns[slot as usize];
        let shadow = &mut conn.shadow;
        if shadow.state != ShadowState::Open || shadow.sending {
            return;
        }
        let Some((copy, len)) = shadow.head() else {
            if shadow.eof && !shadow.shut {
                shadow.shut = true;
                conn.machine.started(1);
                let ud = ud::encode(Kind::ShadowAux, slot, conn.nonce);
                self.ring.shutdown(shadow.fd, libc::SHUT_WR, ud);
            }
            return;
        };
        shadow.sending = true;
        let offset = shadow.sent;
        conn.machine.started(1);
        let ud = ud::encode(Kind::ShadowSend, slot, conn.nonce);
        self.ring
            .send_copy(shadow.fd, copy, offset, len - offset, ud);
    }

    pub(super) fn on_shadow_sent(&mut self, slot: u32, result: i32) {
        let Some((copy, len)) = self.conns[slot as usize].shadow.head() else {
            return;
        };
        self.conns[slot as usize].shadow.sending = false;
        self.ring.copy_send_done(copy);
        let open = self.conns[slot as usize].shadow.state == ShadowState::Open;
        if !open || result < 0 {
            if open {
                self.shadow_failed(slot);
            }
            // Closed while this send was in flight: its chunk was the last one left.
            let shadow = &mut self.conns[slot as usize].shadow;
            if shadow.head().is_some() {
                shadow.pop();
                self.ring.copy_free(copy);
            }
            return;
        }
        let shadow = &mut self.conns[slot as usize].shadow;
        shadow.sent += result as u32;
        if shadow.sent >= len {
            shadow.pop();
            self.ring.copy_free(copy);
            if let Some(stats) = self.mirror_stats(slot) {
                stats.add(self.id, MirrorStat::BytesMirrored, u64::from(len));
            }
        }
        self.shadow_kick(slot);
        self.shorten_linger(slot);
        self.shadow_close_if_done(slot);
    }

    /// After the primary closed, a shadow that has everything only waits a little for its
    /// peer's end of stream, so that slots are not held for a shadow that never closes.
    fn shorten_linger(&mut self, slot: u32) {
        let now = self.now_ms;
        let shadow = &mut self.conns[slot as usize].shadow;
        if shadow.count == 0 && shadow.shut {
            if let Some(d) = &mut shadow.drain_deadline_ms {
                *d = (*d).min(now + SHADOW_LINGER_MS);
            }
        }
    }

    /// The shadow's reply bytes are discarded; reads go on until it closes its side.
    pub(super) fn on_shadow_recv(&mut self, slot: u32, c: crate::sys::Completion) {
        self.conns[slot as usize].shadow.reading = false;
        if c.result > 0 {
            if let Some(bid) = c.buffer_id() {
                let id = self.ring.buffer_received(BufClass::Small, bid);
                self.ring.recycle(id);
                self.feed_starved();
            }
            self.shadow_read(slot);
        } else if c.result == 0 {
            self.conns[slot as usize].shadow.peer_closed = true;
            self.shadow_close_if_done(slot);
        } else if c.result != -libc::ENOBUFS && c.result != -libc::ECANCELED {
            // A reset from the shadow: it is gone.
            self.shadow_failed(slot);
        }
        // ENOBUFS: no buffer for a discard read now; the next send re-arms it.
    }

    /// The client's stream ended: so will the shadow's, after its queue.
    pub(super) fn mirror_eof(&mut self, slot: u32) {
        let shadow = &mut self.conns[slot as usize].shadow;
        if matches!(shadow.state, ShadowState::Connecting | ShadowState::Open) {
            shadow.eof = true;
            self.shadow_kick(slot);
        }
    }

    /// The primary connection is closing: a shadow with nothing left to send is closed; one
    /// still sending gets [`SHADOW_DRAIN_MS`].
    pub(super) fn mirror_primary_closed(&mut self, slot: u32) {
        let now = self.now_ms;
        let shadow = &mut self.conns[slot as usize].shadow;
        match shadow.state {
            ShadowState::Off | ShadowState::Closed => {}
            ShadowState::Connecting => self.shadow_close(slot),
            ShadowState::Open => {
                shadow.eof = true;
                shadow.drain_deadline_ms = Some(now + SHADOW_DRAIN_MS);
                self.shadow_kick(slot);
                self.shorten_linger(slot);
                self.shadow_close_if_done(slot);
            }
        }
    }

    /// Closes the shadow once it has everything and said so: queue empty, end of stream
    /// sent, and its own end of stream read (closing before that could reset it while it
    /// still has bytes of ours unread).
    fn shadow_close_if_done(&mut self, slot: u32) {
        let shadow = &self.conns[slot as usize].shadow;
        if shadow.state == ShadowState::Open
            && shadow.count == 0
            && !shadow.sending
            && shadow.shut
            && shadow.peer_closed
        {
            self.shadow_close(slot);
        }
    }

    /// A closing connection's shadow ran out of drain time.
    pub(super) fn shadow_drain_expired(&mut self, slot: u32) {
        let shadow = &self.conns[slot as usize].shadow;
        if shadow.drain_deadline_ms.is_some_and(|d| self.now_ms >= d)
            && shadow.state == ShadowState::Open
        {
            // Dropped only if it had not taken everything; one that just did not close its
            // side in time got every byte.
            if shadow.count > 0 || !shadow.shut {
                if let Some(stats) = self.mirror_stats(slot) {
                    stats.inc(self.id, MirrorStat::ConnectionsDropped);
                }
            }
            self.shadow_close(slot);
        }
    }

    fn shadow_failed(&mut self, slot: u32) {
        if let Some(stats) = self.mirror_stats(slot) {
            stats.inc(self.id, MirrorStat::ConnectionsFailed);
        }
        self.shadow_close(slot);
    }

    /// Closes the shadow (cancelling what it has in flight) and frees its queued copies; a
    /// chunk being sent is freed when its send completes.
    pub(super) fn shadow_close(&mut self, slot: u32) {
        let id = self.id;
        let conn = &mut self.conns[slot as usize];
        let shadow = &mut conn.shadow;
        if matches!(shadow.state, ShadowState::Off | ShadowState::Closed) {
            return;
        }
        shadow.state = ShadowState::Closed;
        let fd = std::mem::replace(&mut shadow.fd, NO_FD);
        if fd != NO_FD {
            let ud = ud::encode(Kind::ShadowAux, slot, conn.nonce);
            conn.machine.started(self.ring.teardown(fd, false, ud));
        }
        let keep = usize::from(shadow.sending);
        while shadow.count as usize > keep {
            let copy = shadow.pop_back();
            self.ring.copy_free(copy);
        }
        if let Some(stats) = self.mirror_stats(slot) {
            stats.dec(id, MirrorStat::Active);
        }
        let out = self.machine_event(slot, conn::Event::MirrorDone);
        debug_assert!(out.is_empty(), "a closed mirror is only noted");
    }
}
