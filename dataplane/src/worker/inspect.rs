//! The listener filters that read a connection's first bytes before its chain is decided,
//! on the worker's ring: Envoy's `envoy.filters.listener.proxy_protocol` (its PROXY header,
//! [`super::proxy_header`]) and then `envoy.filters.listener.tls_inspector` (its ClientHello:
//! the server name and protocols then pick the chain). A connection of a listener with
//! either is read until each filter has its answer: a whole header or ClientHello, plainly
//! none (plaintext: `raw_buffer`), one refused (closed, as Envoy 1.40 closes it), or the
//! listener filters' deadline.
//!
//! Guarantees:
//! - **The bytes stay.** Everything read is kept in one buffer of the worker's pool
//!   ([`super::slot::Inspect::held`]): a receive appends to it (copied through the stack,
//!   nothing allocated); a PROXY header is removed from its front (one `memmove` within the
//!   buffer), and after the verdict the rest are the chain's first bytes: fed to its TLS
//!   session's acceptor ([`Worker::take_inspected`] in the handshake), or its relay's first
//!   receive from the client (answered by a no-op completion, as decrypted TLS bytes are).
//!   So a header or ClientHello split over any number of segments is read whole, and
//!   nothing the client sent after its header is lost or read twice.
//! - **Bounded.** At most one buffer's room for TLS records is read (and no more than the
//!   inspector's `max_client_hello_size` for the ClientHello); one receive in flight per
//!   connection.
//! - **Decided once nothing is in flight.** The verdict (or the close) is fed to the machine
//!   from a receive's completion, with no other inspection I/O left; past the deadline the
//!   receive is cancelled and its completion decides.
//! - **Listeners without these filters pay nothing**: no stage, no receive, no state beyond
//!   the slot's (clear) [`super::slot::Inspect`].

use super::tls_io::tls_room;
use super::ud::{self, Kind};
use super::{Decision, Worker};
use crate::conn;
use crate::fib::{Detected, TRANSPORT_TLS};
use crate::stats::{ListenerStat, TlsInspectorStat};
use crate::sys::{BufClass, Completion, RingBuf};
use crate::tls::client_hello::{self, ClientHello, Inspected};

/// Bytes copied per step when a receive is appended to the held buffer.
const COPY_CHUNK_BYTES: usize = 512;

/// What the inspector's settings say, copied out of the FIB for one completion.
#[derive(Debug, Clone, Copy)]
struct Settings {
    max_bytes: u32,
    first_read_bytes: u32,
    close_on_parse_error: bool,
}

impl Worker {
    /// `Action::StartInspection`: the first receive of the client's bytes.
    pub(super) fn start_inspection(&mut self, slot: u32) {
        self.inspect_recv(slot);
    }

    /// `Action::AbandonInspection`: the deadline passed. The receive is cancelled; its
    /// completion decides (a no-op stands for it when none is in flight).
    pub(super) fn abandon_inspection(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        let nonce = conn.nonce;
        conn.inspect.abandoned = true;
        let read = ud::encode(Kind::InspectRead, slot, nonce);
        conn.machine.started(1);
        if conn.inspect.reading {
            self.ring.cancel(read, ud::encode(Kind::Aux, slot, nonce));
        } else {
            conn.inspect.reading = true;
            self.ring.nop(read);
        }
    }

    /// The most the inspector reads for `slot`'s listener: its `max_client_hello_size`, or
    /// less where the buffers leave less room for a TLS session to decrypt in.
    fn inspector_settings(&self, slot: u32) -> Option<Settings> {
        let inspector = self.listener_of(slot)?.tls_inspector.as_ref()?;
        let room = tls_room(self.ring.buffer_size(BufClass::Small));
        let max_bytes = inspector.max_client_hello_bytes.min(room);
        Some(Settings {
            max_bytes,
            first_read_bytes: inspector
                .initial_read_bytes
                .map_or(max_bytes, |b| b.min(max_bytes)),
            close_on_parse_error: inspector.close_on_parse_error,
        })
    }

    /// The most the next receive may take: the room a PROXY header (and what follows it)
    /// may fill while one is due, else what the inspector still reads.
    fn next_read_bytes(&self, slot: u32) -> u32 {
        let held = self.conns[slot as usize].inspect.held.map_or(0, |(_, n)| n);
        let max_bytes = if self.proxy_header_due(slot) {
            self.proxy_header_room()
        } else {
            self.inspector_settings(slot).map_or(1, |s| {
                if held == 0 {
                    s.first_read_bytes
                } else {
                    s.max_bytes
                }
            })
        };
        max_bytes.saturating_sub(held).max(1)
    }

    pub(super) fn inspect_recv(&mut self, slot: u32) {
        let max_len = self.next_read_bytes(slot);
        let conn = &mut self.conns[slot as usize];
        let ud = ud::encode(Kind::InspectRead, slot, conn.nonce);
        conn.inspect.reading = true;
        conn.machine.started(1);
        self.ring.recv(conn.client, BufClass::Small, max_len, ud);
    }

    /// A receive (or the no-op after the deadline) of the inspection completed.
    pub(super) fn on_inspect_read(&mut self, slot: u32, c: Completion) {
        let received = match (c.result, c.buffer_id()) {
            (n, Some(bid)) if n > 0 => Some((self.ring.buffer_received(BufClass::Small, bid), n)),
            _ => None,
        };
        let conn = &mut self.conns[slot as usize];
        conn.inspect.reading = false;
        if conn.machine.stage() != conn::Stage::Inspecting {
            if let Some((buf, _)) = received {
                self.ring.recycle(buf);
            }
            return;
        }
        if let Some((buf, n)) = received {
            self.hold(slot, buf, n as u32);
        }
        let Some(deadline) = self.listener_of(slot).map(|l| l.filter_deadline) else {
            return self.fail_inspection(slot, Some(ListenerStat::DownstreamListenerFilterError));
        };
        if self.conns[slot as usize].inspect.abandoned {
            return self.inspection_timed_out(slot, deadline.continue_on_timeout);
        }
        match c.result {
            0 => self.fail_inspection(
                slot,
                Some(ListenerStat::DownstreamListenerFilterRemoteClose),
            ),
            n if n < 0 => {
                self.fail_inspection(slot, Some(ListenerStat::DownstreamListenerFilterError))
            }
            _ => self.read_first_bytes(slot),
        }
    }

    /// What `slot` holds goes to the filter whose turn it is: the PROXY protocol's while
    /// its header is due, then the TLS inspector's; with neither left, the verdict.
    fn read_first_bytes(&mut self, slot: u32) {
        if self.proxy_header_due(slot) {
            return self.read_proxy_header(slot);
        }
        self.read_after_proxy_header(slot);
    }

    /// The PROXY header is read (or the listener takes none): the TLS inspector reads on
    /// from what is held, or the chain is decided.
    pub(super) fn read_after_proxy_header(&mut self, slot: u32) {
        match self.inspector_settings(slot) {
            Some(settings) => self.read_client_hello(slot, settings),
            None => self.finish_inspection(slot, &Detected::NOTHING),
        }
    }

    /// Appends `n` bytes received in `buf` to what `slot` holds (or holds `buf` itself).
    fn hold(&mut self, slot: u32, buf: RingBuf, n: u32) {
        let inspect = &mut self.conns[slot as usize].inspect;
        let Some((held, len)) = inspect.held else {
            inspect.held = Some((buf, n));
            return;
        };
        let mut chunk = [0u8; COPY_CHUNK_BYTES];
        let mut copied = 0usize;
        while copied < n as usize {
            let step = (n as usize - copied).min(COPY_CHUNK_BYTES);
            chunk[..step].copy_from_slice(&self.ring.buffer_mut(buf)[copied..copied + step]);
            let at = len as usize + copied;
            self.ring.buffer_mut(held)[at..at + step].copy_from_slice(&chunk[..step]);
            copied += step;
        }
        self.ring.recycle(buf);
        self.conns[slot as usize].inspect.held = Some((held, len + n));
    }

    /// Reads what `slot` holds as the start of a ClientHello: reads on, or decides.
    fn read_client_hello(&mut self, slot: u32, settings: Settings) {
        let Some((held, len)) = self.conns[slot as usize].inspect.held else {
            return self.inspect_recv(slot);
        };
        let bytes = &self.ring.buffer_mut(held)[..len as usize];
        let max_bytes = settings.max_bytes as usize;
        match client_hello::inspect(bytes, max_bytes) {
            Inspected::NeedMore => self.inspect_recv(slot),
            Inspected::NotTls => {
                self.count_inspector(slot, TlsInspectorStat::TlsNotFound);
                if settings.close_on_parse_error {
                    // Envoy's close_connection_on_client_hello_parsing_errors: whatever does
                    // not parse as a ClientHello is closed, plaintext included.
                    self.fail_inspection(slot, None);
                } else {
                    self.finish_inspection(slot, &Detected::NOTHING);
                }
            }
            // Closed, with close_connection_on_client_hello_parsing_errors or without, as
            // Envoy 1.40 closes it.
            Inspected::TooLarge => {
                self.count_inspector(slot, TlsInspectorStat::ClientHelloTooLarge);
                self.fail_inspection(slot, None);
            }
            Inspected::Hello(hello) => self.found_tls(slot, &hello),
        }
    }

    /// A whole ClientHello: counted, its server name kept, the chain decided by it.
    fn found_tls(&mut self, slot: u32, hello: &ClientHello) {
        let name = hello.server_name();
        let counts = [
            TlsInspectorStat::TlsFound,
            if name.is_some() {
                TlsInspectorStat::SniFound
            } else {
                TlsInspectorStat::SniNotFound
            },
            if hello.offers_alpn() {
                TlsInspectorStat::AlpnFound
            } else {
                TlsInspectorStat::AlpnNotFound
            },
        ];
        for stat in counts {
            self.count_inspector(slot, stat);
        }
        self.conns[slot as usize].server_name =
            name.map(|n| String::from_utf8_lossy(n).into_owned().into_boxed_str());
        let detected = Detected {
            server_name: name.unwrap_or_default(),
            transport_protocol: TRANSPORT_TLS,
            alpn_list: hello.alpn_list(),
            direct_remote: None,
        };
        self.finish_inspection(slot, &detected);
    }

    /// Past the deadline (`downstream_pre_cx_timeout`, counted either way as in Envoy): on
    /// as plaintext with what was read (`continue_on_listener_filters_timeout`), or closed.
    fn inspection_timed_out(&mut self, slot: u32, continue_on_timeout: bool) {
        self.count_listener_stat(slot, ListenerStat::DownstreamPreCxTimeout, true);
        if continue_on_timeout {
            self.finish_inspection(slot, &Detected::NOTHING);
        } else {
            self.fail_inspection(slot, None);
        }
    }

    fn count_inspector(&self, slot: u32, stat: TlsInspectorStat) {
        if let Some(i) = self
            .listener_of(slot)
            .and_then(|l| l.tls_inspector.as_ref())
        {
            i.stats.inc(self.id, stat);
        }
    }

    pub(super) fn count_listener_stat(&self, slot: u32, stat: ListenerStat, up: bool) {
        if let Some(l) = self.listener_of(slot) {
            if up {
                l.stats.inc(self.id, stat);
            } else {
                l.stats.dec(self.id, stat);
            }
        }
    }

    /// The inspection ended without a chain: counted in `stat`, the client closed.
    pub(super) fn fail_inspection(&mut self, slot: u32, stat: Option<ListenerStat>) {
        self.count_listener_stat(slot, ListenerStat::DownstreamPreCxActive, false);
        if let Some(stat) = stat {
            self.count_listener_stat(slot, stat, true);
        }
        self.drive(slot, conn::Event::InspectionFailed);
    }

    /// The inspection is over: the chain decided with what it `detected`, the verdict fed.
    fn finish_inspection(&mut self, slot: u32, detected: &Detected) {
        self.count_listener_stat(slot, ListenerStat::DownstreamPreCxActive, false);
        let conn = &self.conns[slot as usize];
        let (gen_index, fib_index) = (conn.generation as usize, conn.fib_listener as usize);
        let Some(local) = conn.local else {
            return self.drive(slot, conn::Event::InspectionFailed);
        };
        let mut decision = Decision::new(local, conn.remote);
        let detected = Detected {
            direct_remote: conn.direct_remote,
            ..*detected
        };
        self.decide_chain(gen_index, fib_index, &mut decision, &detected);
        let conn = &mut self.conns[slot as usize];
        conn.tls_detected = detected.transport_protocol == TRANSPORT_TLS;
        conn.chain = decision.chain;
        conn.cluster = decision.cluster;
        conn.hash = decision.hash;
        conn.listener_counted = decision.listener_counted;
        conn.denied_by = decision.denied_by.clone();
        conn.rbac_late = decision.rbac_late;
        conn.source_seat = decision.source_seat;
        let verdict = self.verdict(slot, &decision);
        self.drive(slot, conn::Event::Accepted(verdict));
    }

    /// The bytes the inspection read, for the chain (its TLS session or its relay).
    pub(super) fn take_inspected(&mut self, slot: u32) -> Option<(RingBuf, u32)> {
        self.conns[slot as usize].inspect.held.take()
    }

    /// The relay asks to receive from the client while the inspection's bytes are held:
    /// answered by a no-op completion. False when a socket read is due.
    pub(super) fn inspected_answers_receive(&mut self, slot: u32) -> bool {
        let conn = &mut self.conns[slot as usize];
        if conn.inspect.held.is_none() {
            return false;
        }
        let ud = ud::encode(Kind::RecvUp, slot, conn.nonce);
        conn.machine.started(1);
        self.ring.nop(ud);
        true
    }

    /// The tick: an inspection whose receive found no buffer receives again.
    pub(super) fn retry_starved_inspection(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        let waiting = conn.machine.stage() == conn::Stage::Inspecting && !conn.inspect.reading;
        if std::mem::take(&mut conn.inspect.starved) && waiting {
            self.inspect_recv(slot);
        }
    }

    /// What a closed connection's inspection still holds goes home.
    pub(super) fn release_inspection(&mut self, slot: u32) {
        if let Some((buf, _)) = self.take_inspected(slot) {
            self.ring.recycle(buf);
        }
    }

    /// Whether the inspection has a receive in flight on the client's socket.
    pub(super) fn inspection_busy(&self, slot: u32) -> bool {
        self.conns[slot as usize].inspect.reading
    }
}
