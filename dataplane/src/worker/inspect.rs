//! Envoy's `envoy.filters.listener.tls_inspector` on the worker's ring: a connection of a
//! listener with one is read before its chain is decided, until its first bytes are a whole
//! ClientHello (its server name and protocols then pick the chain), plainly not TLS
//! (`raw_buffer`), too long (closed, as Envoy 1.40 closes it), or the listener filters'
//! deadline passes.
//!
//! Guarantees:
//! - **The bytes stay.** Everything read is kept in one buffer of the worker's pool
//!   ([`super::slot::Inspect::held`]): a receive appends to it (copied through the stack,
//!   nothing allocated), and after the verdict the same bytes are the chain's first: fed to
//!   its TLS session's acceptor ([`Worker::take_inspected`] in the handshake), or its relay's
//!   first receive from the client (answered by a no-op completion, as decrypted TLS bytes
//!   are). So a ClientHello split over any number of segments is read whole, and nothing the
//!   client sent is lost or read twice.
//! - **Bounded.** At most `max_client_hello_size` bytes are read (less when the worker's
//!   buffers leave less room for TLS records); one receive in flight per connection.
//! - **Decided once nothing is in flight.** The verdict (or the close) is fed to the machine
//!   from a receive's completion, with no other inspection I/O left; past the deadline the
//!   receive is cancelled and its completion decides.
//! - **Listeners without an inspector pay nothing**: no stage, no receive, no state beyond
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
    continue_on_timeout: bool,
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
            continue_on_timeout: inspector.continue_on_timeout,
            close_on_parse_error: inspector.close_on_parse_error,
        })
    }

    fn inspect_recv(&mut self, slot: u32) {
        let settings = self.inspector_settings(slot);
        let conn = &mut self.conns[slot as usize];
        let held = conn.inspect.held.map_or(0, |(_, n)| n);
        let max_bytes = settings.map_or(1, |s| {
            if held == 0 {
                s.first_read_bytes
            } else {
                s.max_bytes
            }
        });
        let ud = ud::encode(Kind::InspectRead, slot, conn.nonce);
        conn.inspect.reading = true;
        conn.machine.started(1);
        let max_len = max_bytes.saturating_sub(held).max(1);
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
        let Some(settings) = self.inspector_settings(slot) else {
            return self.fail_inspection(slot, Some(ListenerStat::DownstreamListenerFilterError));
        };
        if self.conns[slot as usize].inspect.abandoned {
            return self.inspection_timed_out(slot, settings);
        }
        match c.result {
            0 => self.fail_inspection(
                slot,
                Some(ListenerStat::DownstreamListenerFilterRemoteClose),
            ),
            n if n < 0 => {
                self.fail_inspection(slot, Some(ListenerStat::DownstreamListenerFilterError))
            }
            _ => self.read_client_hello(slot, settings),
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
        };
        self.finish_inspection(slot, &detected);
    }

    /// Past the deadline (`downstream_pre_cx_timeout`, counted either way as in Envoy): on
    /// as plaintext with what was read (`continue_on_listener_filters_timeout`), or closed.
    fn inspection_timed_out(&mut self, slot: u32, settings: Settings) {
        self.count_listener_stat(slot, ListenerStat::DownstreamPreCxTimeout, true);
        if settings.continue_on_timeout {
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

    fn count_listener_stat(&self, slot: u32, stat: ListenerStat, up: bool) {
        if let Some(l) = self.listener_of(slot) {
            if up {
                l.stats.inc(self.id, stat);
            } else {
                l.stats.dec(self.id, stat);
            }
        }
    }

    /// The inspection ended without a chain: counted in `stat`, the client closed.
    fn fail_inspection(&mut self, slot: u32, stat: Option<ListenerStat>) {
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
        self.decide_chain(gen_index, fib_index, &mut decision, detected);
        let conn = &mut self.conns[slot as usize];
        conn.chain = decision.chain;
        conn.cluster = decision.cluster;
        conn.hash = decision.hash;
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
