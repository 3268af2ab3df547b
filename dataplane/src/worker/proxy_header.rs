//! Envoy's `envoy.filters.listener.proxy_protocol` on the worker: the first listener filter
//! of [`super::inspect`]'s pass reads a PROXY protocol header (version 1 or 2) from the
//! client's first bytes, as the load balancer in front wrote it, and makes its addresses
//! the connection's.
//!
//! Guarantees:
//! - **Judged as Envoy judges it** ([`crate::proxy_protocol::judge`]): a header of a version
//!   the listener takes is read whole, however it was split into segments; one of another
//!   version, a malformed one, or none (unless `allow_requests_without_proxy_protocol`)
//!   closes the connection; each counts in `proxy_proto.[<stat_prefix>.]*` under Envoy's
//!   names.
//! - **The header goes, the stream stays.** The header's bytes are removed from the front
//!   of the held buffer (one `memmove`, nothing allocated); whatever the client sent after
//!   it, in the same segment or later, reaches the TLS inspector or the chain, exactly
//!   once. A client that sends its header, its data and its FIN at once is served in full.
//! - **The declared addresses stand.** From the header on, the declared source is the
//!   connection's remote address and the declared destination its local one (unless an
//!   `original_dst` filter runs after this one): chain matching, the hash policy,
//!   `original_src`, and access logs read them; the socket's peer is kept for
//!   `direct_source_ip` and `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`. `LOCAL`, `UNKNOWN` and
//!   `UNSPEC` headers declare nothing: the socket's addresses stand.
//! - **Bounded.** A header longer than one buffer's room for TLS records (less than
//!   Envoy's 64 KiB for version 2, enough for any TLVs a load balancer sends) is an error.

use super::tls_io::tls_room;
use super::ud::{self, Kind};
use super::Worker;
use crate::proxy_protocol::{self, Header, Verdict, Version};
use crate::relay::Dir;
use crate::stats::ProxyProtoStat;
use crate::sys::{BufClass, RingBuf};

impl Worker {
    /// Whether `slot`'s listener reads a PROXY header that has not been read yet.
    pub(super) fn proxy_header_due(&self, slot: u32) -> bool {
        !self.conns[slot as usize].inspect.proxy_done
            && self
                .listener_of(slot)
                .is_some_and(|l| l.proxy_protocol.is_some())
    }

    /// The most a PROXY header and the bytes after it may take of the held buffer: its room
    /// for TLS records, which a ClientHello read after the header still needs.
    pub(super) fn proxy_header_room(&self) -> u32 {
        tls_room(self.ring.buffer_size(BufClass::Small))
    }

    /// Judges what `slot` holds: reads on, closes, or takes the header and moves on.
    pub(super) fn read_proxy_header(&mut self, slot: u32) {
        let Some(filter) = self
            .listener_of(slot)
            .and_then(|l| l.proxy_protocol.as_ref())
        else {
            return self.read_after_proxy_header(slot);
        };
        let (acceptance, declares_destination) = (filter.acceptance, filter.declares_destination);
        let pass_through = filter.pass_through_tlvs;
        let Some((held, len)) = self.conns[slot as usize].inspect.held else {
            return self.inspect_recv(slot);
        };
        let room = self.proxy_header_room() as usize;
        let bytes = &self.ring.buffer_mut(held)[..len as usize];
        match proxy_protocol::judge(bytes, acceptance, room) {
            Verdict::NeedMore if (len as usize) < room => self.inspect_recv(slot),
            // A buffer full of what may still be a header: too long for this listener.
            Verdict::NeedMore => self.refuse_proxy_header(slot, ProxyProtoStat::V2Error),
            Verdict::NotFound if acceptance.allow_without_header => {
                self.count_proxy_proto(slot, ProxyProtoStat::NotFoundAllowed);
                self.conns[slot as usize].inspect.proxy_done = true;
                self.read_after_proxy_header(slot);
            }
            Verdict::NotFound => self.refuse_proxy_header(slot, ProxyProtoStat::NotFoundDisallowed),
            Verdict::Disallowed(version) => {
                let (found, disallowed) = match version {
                    Version::V1 => (ProxyProtoStat::V1Found, ProxyProtoStat::V1Disallowed),
                    Version::V2 => (ProxyProtoStat::V2Found, ProxyProtoStat::V2Disallowed),
                };
                self.count_proxy_proto(slot, found);
                self.refuse_proxy_header(slot, disallowed);
            }
            Verdict::Error(Version::V1) => self.refuse_proxy_header(slot, ProxyProtoStat::V1Error),
            Verdict::Error(Version::V2) => self.refuse_proxy_header(slot, ProxyProtoStat::V2Error),
            Verdict::Header(header) => {
                if let Some(types) = &pass_through {
                    self.keep_passed_tlvs(slot, &header, types);
                }
                self.take_proxy_header(slot, &header, declares_destination);
                self.read_after_proxy_header(slot);
            }
        }
    }

    /// A whole header: counted, its addresses made the connection's, its bytes removed.
    fn take_proxy_header(&mut self, slot: u32, header: &Header, declares_destination: bool) {
        self.count_proxy_proto(
            slot,
            match header.version {
                Version::V1 => ProxyProtoStat::V1Found,
                Version::V2 => ProxyProtoStat::V2Found,
            },
        );
        let conn = &mut self.conns[slot as usize];
        conn.inspect.proxy_done = true;
        if let Some((source, destination)) = header.addresses {
            conn.direct_remote = conn.remote;
            conn.remote = Some(source);
            if declares_destination {
                conn.local = Some(destination);
            }
        }
        let Some((held, len)) = conn.inspect.held else {
            return;
        };
        let rest = len - header.len as u32;
        if rest == 0 {
            conn.inspect.held = None;
            self.ring.recycle(held);
            return;
        }
        self.ring
            .buffer_mut(held)
            .copy_within(header.len..len as usize, 0);
        self.conns[slot as usize].inspect.held = Some((held, rest));
    }

    /// The header's TLVs of `types`, kept with the connection for its upstream header (one
    /// allocation, only when there are some).
    fn keep_passed_tlvs(&mut self, slot: u32, header: &Header, types: &proxy_protocol::TlvTypes) {
        let Some((held, len)) = self.conns[slot as usize].inspect.held else {
            return;
        };
        let bytes = &self.ring.buffer_mut(held)[..len as usize];
        let mut kept = Vec::new();
        for (kind, value) in header.tlvs(bytes).filter(|(t, _)| types.contains(*t)) {
            let _ = proxy_protocol::encode_tlv(&mut kept, kind, value);
        }
        if !kept.is_empty() {
            self.conns[slot as usize].passed_tlvs = Some(kept.into_boxed_slice());
        }
    }

    /// The connection is closed for its header (or its lack of one), counted in `stat`.
    fn refuse_proxy_header(&mut self, slot: u32, stat: ProxyProtoStat) {
        self.count_proxy_proto(slot, stat);
        self.fail_inspection(slot, None);
    }

    fn count_proxy_proto(&self, slot: u32, stat: ProxyProtoStat) {
        if let Some(p) = self
            .listener_of(slot)
            .and_then(|l| l.proxy_protocol.as_ref())
        {
            p.stats.inc(self.id, stat);
        }
    }
}

/// The upstream side: a cluster's `envoy.transport_sockets.upstream_proxy_protocol`.
///
/// - **Part of the connect.** Once the connect completes, the header goes out (one `send`
///   from a buffer of the worker's pool, resumed if short) and only its completion tells the
///   machine the upstream is connected; a TLS handshake, and any byte of the client's, come
///   after it. A failed send fails the attempt as a failed connect would (retried on the
///   next endpoint while attempts are left).
/// - **The connection's addresses.** The header declares the client's address (the one a
///   downstream PROXY header declared, if any) and the address it connected to.
/// - **Bounded.** At most 52 bytes of addresses, the TLVs passed through from the downstream
///   header (`pass_through_tlvs` on both sides; an added TLV replaces the passed ones of its
///   type, as in Envoy) and the cluster's own (2 KiB at most) in one buffer, held until the
///   send completes; nothing allocated. With the pool dry the attempt fails (`ENOBUFS`), as
///   a connect without a socket would; so does a header too long for one buffer
///   (`EMSGSIZE`).
impl Worker {
    /// Sends `slot`'s upstream PROXY header if its cluster has one; false when it has none
    /// (or the connection is no longer connecting).
    pub(super) fn send_upstream_proxy_header(&mut self, slot: u32) -> bool {
        let conn = &self.conns[slot as usize];
        if conn.machine.stage() != crate::conn::Stage::Connecting {
            return false;
        }
        let Some(generation) = self.generations[conn.generation as usize].as_ref() else {
            return false;
        };
        let Some(header) = conn
            .cluster
            .and_then(|id| generation.fib.cluster(id).proxy_protocol.as_ref())
        else {
            return false;
        };
        let addresses = conn.remote.zip(conn.local);
        let Some(buf) = self.ring.take_spare(BufClass::Small) else {
            self.connect_done(slot, -libc::ENOBUFS);
            return true;
        };
        let passed = conn.passed_tlvs.as_deref().unwrap_or_default();
        let written = proxy_protocol::write_passing(
            self.ring.buffer_mut(buf),
            header.version,
            addresses,
            passed,
            &header.pass_through_tlvs,
            &header.tlvs,
        );
        let Some(len) = written.and_then(|n| u16::try_from(n).ok()) else {
            // Passed TLVs that fill the downstream header's room, with the added ones, do
            // not fit one buffer: the attempt fails.
            self.ring.recycle(buf);
            self.connect_done(slot, -libc::EMSGSIZE);
            return true;
        };
        let conn = &mut self.conns[slot as usize];
        conn.sending[Dir::Up as usize] = Some(buf);
        conn.inspect.upstream_header_len = len;
        conn.inspect.upstream_header_sent = 0;
        self.send_header_rest(slot, buf);
        true
    }

    /// Sends what is left of the header in `buf`.
    fn send_header_rest(&mut self, slot: u32, buf: RingBuf) {
        let conn = &mut self.conns[slot as usize];
        let ud = ud::encode(Kind::UpstreamProxyHeader, slot, conn.nonce);
        let (len, sent) = (
            conn.inspect.upstream_header_len,
            conn.inspect.upstream_header_sent,
        );
        conn.machine.started(1);
        let left = u32::from(len - sent);
        self.ring.send(conn.backend, buf, u32::from(sent), left, ud);
    }

    /// The header's send completed: the rest goes out, or the connect is over.
    pub(super) fn on_upstream_proxy_header_sent(&mut self, slot: u32, result: i32) {
        let Some(buf) = self.conns[slot as usize].sending[Dir::Up as usize].take() else {
            return;
        };
        self.ring.send_done(buf);
        let conn = &mut self.conns[slot as usize];
        let connecting = conn.machine.stage() == crate::conn::Stage::Connecting;
        let (len, sent) = (
            conn.inspect.upstream_header_len,
            conn.inspect.upstream_header_sent,
        );
        let left = i32::from(len - sent);
        if connecting && result > 0 && result < left {
            conn.inspect.upstream_header_sent = sent + result as u16;
            conn.sending[Dir::Up as usize] = Some(buf);
            return self.send_header_rest(slot, buf);
        }
        self.ring.recycle(buf);
        if connecting {
            let outcome = match result {
                n if n >= left => 0,
                n if n < 0 => n,
                // Nothing sent and no error: the header cannot go whole.
                _ => -libc::EPIPE,
            };
            self.connect_done(slot, outcome);
        }
    }
}
