//! One connection's TLS: rustls driven over the worker's own buffers, in place.
//!
//! The worker receives ciphertext into a provided buffer and hands it here:
//! [`Session::decrypt_in_place`] feeds it to rustls and writes the plaintext back into the
//! front of the same buffer, which then travels through the relay like any received bytes.
//! A send to a TLS peer goes the other way: [`Session::encrypt_in_place`] takes the
//! plaintext out of the buffer and writes the records over it. No I/O happens here.
//!
//! # Why the buffer always has room
//!
//! Plaintext is never longer than the ciphertext it came from, except for one record that
//! began in an earlier buffer (at most 16 KiB of plaintext, rustls holding its first part).
//! While the ciphertext is fed, plaintext is drained only into the part of the buffer
//! already fed (so it never overwrites ciphertext not yet read), and at the end into the
//! rest. So a receive of at most `capacity - `[`TLS_SLACK`] bytes always fits its
//! plaintext, and a send of at most that much plaintext always fits its records (about
//! 22 bytes each). Anything that still does not fit stays in rustls and is reported
//! ([`Decrypted::plaintext_pending`], [`Session::wants_write`]) for the worker to move next.
//!
//! # Allocation
//!
//! rustls' buffered API allocates: the connection state (a few KiB, once), its deframing
//! buffer (up to one record, 16 KiB + 325 B, kept while the connection lives), and a
//! vector per record decrypted or encrypted (freed when moved into the worker's buffer).

use super::context::{ClientContext, ServerContext};
use rustls::server::Acceptor;
use rustls::{Connection, HandshakeKind};
use std::io::{Read, Write};
use std::sync::Arc;

/// Room kept free in a buffer that carries TLS: a receive or a send of plaintext takes at
/// most the buffer's capacity less this.
pub const TLS_SLACK: u32 = 17 * 1024;

/// What a TLS session failed with.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// The peer broke the protocol or failed verification (an alert may be waiting to be
    /// written: [`Session::wants_write`]).
    Protocol(rustls::Error),
    /// The peer sent more than the session can hold (rustls' backpressure).
    Overflow,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::Overflow => write!(f, "TLS buffer overflow"),
        }
    }
}

/// What [`Session::decrypt_in_place`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decrypted {
    /// Plaintext bytes now at the front of the buffer.
    pub plaintext: usize,
    /// The peer sent `close_notify`: its stream is over.
    pub peer_closed: bool,
    /// Plaintext rustls still holds (it did not fit); [`Session::drain_plaintext`] moves it.
    pub plaintext_pending: bool,
}

enum State {
    /// A server waiting for the whole ClientHello.
    Accepting {
        acceptor: Box<Acceptor>,
        context: Arc<ServerContext>,
    },
    /// Handshaking or established.
    Open(Box<Connection>),
    /// Failed; what is left to write (an alert) is held here.
    Failed(Vec<u8>),
}

/// One connection's TLS state.
pub struct Session {
    state: State,
    /// What it failed with, for the counters.
    error: Option<rustls::Error>,
    /// A server that asks for a client certificate.
    asks_client_cert: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Accepting { .. } => "accepting",
            State::Open(c) if c.is_handshaking() => "handshaking",
            State::Open(_) => "established",
            State::Failed(_) => "failed",
        };
        write!(f, "Session({state})")
    }
}

impl Session {
    /// A server session for a filter chain's context: it reads the ClientHello first.
    pub fn server(context: Arc<ServerContext>) -> Session {
        let asks_client_cert = context.settings().validation.is_some();
        Session {
            asks_client_cert,
            state: State::Accepting {
                acceptor: Box::default(),
                context,
            },
            error: None,
        }
    }

    /// A client session for a cluster's context; its ClientHello is ready to write.
    pub fn client(context: &ClientContext) -> Result<Session, TlsError> {
        let mut conn =
            rustls::ClientConnection::new(context.config().clone(), context.server_name())
                .map_err(TlsError::Protocol)?;
        conn.set_buffer_limit(None);
        Ok(Session {
            state: State::Open(Box::new(Connection::Client(conn))),
            error: None,
            asks_client_cert: false,
        })
    }

    /// A session that failed before it began (no context to begin with).
    pub fn failed() -> Session {
        Session {
            state: State::Failed(Vec::new()),
            error: None,
            asks_client_cert: false,
        }
    }

    /// rustls holds decrypted plaintext not yet moved out.
    pub fn has_plaintext(&mut self) -> bool {
        match &mut self.state {
            State::Open(conn) => conn
                .process_new_packets()
                .is_ok_and(|s| s.plaintext_bytes_to_read() > 0),
            _ => false,
        }
    }

    /// Still handshaking (or accepting).
    pub fn is_handshaking(&self) -> bool {
        match &self.state {
            State::Accepting { .. } => true,
            State::Open(c) => c.is_handshaking(),
            State::Failed(_) => false,
        }
    }

    /// Failed for good.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// Bytes are waiting to be written to the peer.
    pub fn wants_write(&self) -> bool {
        match &self.state {
            State::Accepting { .. } => false,
            State::Open(c) => c.wants_write(),
            State::Failed(alert) => !alert.is_empty(),
        }
    }

    /// Feeds the ciphertext at `buf[start..end]` and writes what it decrypts to the front of
    /// `buf`. Handshake messages are consumed (their answer becomes
    /// [`Session::wants_write`]).
    pub fn decrypt_in_place(
        &mut self,
        buf: &mut [u8],
        start: usize,
        end: usize,
    ) -> Result<Decrypted, TlsError> {
        let mut consumed = start;
        if let State::Accepting { .. } = self.state {
            consumed = self.accept(buf, start, end)?;
        }
        let State::Open(conn) = &mut self.state else {
            return Ok(Decrypted::default());
        };
        let mut out = Decrypted::default();
        loop {
            out.plaintext += read_plaintext(conn, &mut buf[out.plaintext..consumed]);
            if consumed == end {
                break;
            }
            let n = match conn.read_tls(&mut &buf[consumed..end]) {
                Ok(n) => n,
                Err(_) => return Err(TlsError::Overflow),
            };
            if n == 0 {
                // close_notify came: nothing after it is read.
                break;
            }
            consumed += n;
            if let Err(e) = conn.process_new_packets() {
                return Err(self.fail(e));
            }
        }
        let State::Open(conn) = &mut self.state else {
            unreachable!("checked above")
        };
        out.plaintext += read_plaintext(conn, &mut buf[out.plaintext..]);
        let state = match conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => return Err(self.fail(e)),
        };
        out.peer_closed = state.peer_has_closed();
        out.plaintext_pending = state.plaintext_bytes_to_read() > 0;
        Ok(out)
    }

    /// A server's first bytes: until the ClientHello is whole, into the acceptor; then the
    /// connection is made with the context's config for that hello. Returns how much of
    /// `buf[start..end]` was consumed.
    fn accept(&mut self, buf: &[u8], start: usize, end: usize) -> Result<usize, TlsError> {
        let State::Accepting { acceptor, context } = &mut self.state else {
            return Ok(start);
        };
        let mut consumed = start;
        loop {
            if consumed == end {
                return Ok(consumed);
            }
            let n = acceptor
                .read_tls(&mut &buf[consumed..end])
                .map_err(|_| TlsError::Overflow)?;
            if n == 0 {
                return Ok(consumed);
            }
            consumed += n;
            match acceptor.accept() {
                Ok(None) => continue,
                Ok(Some(accepted)) => {
                    let config = context.config_for(&accepted.client_hello());
                    match accepted.into_connection(config) {
                        Ok(mut conn) => {
                            conn.set_buffer_limit(None);
                            self.state = State::Open(Box::new(Connection::Server(conn)));
                            return Ok(consumed);
                        }
                        Err((e, alert)) => return Err(self.fail_with_alert(e, alert)),
                    }
                }
                Err((e, alert)) => return Err(self.fail_with_alert(e, alert)),
            }
        }
    }

    fn fail_with_alert(
        &mut self,
        e: rustls::Error,
        mut alert: rustls::server::AcceptedAlert,
    ) -> TlsError {
        let mut bytes = Vec::new();
        let _ = alert.write_all(&mut bytes);
        self.state = State::Failed(bytes);
        self.error = Some(e.clone());
        TlsError::Protocol(e)
    }

    /// The connection failed with `e`: keep the alert rustls queued, drop the rest.
    fn fail(&mut self, e: rustls::Error) -> TlsError {
        let mut bytes = Vec::new();
        if let State::Open(conn) = &mut self.state {
            while conn.wants_write() {
                match conn.write_tls(&mut bytes) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        self.state = State::Failed(bytes);
        self.error = Some(e.clone());
        TlsError::Protocol(e)
    }

    /// What the session failed with, if it did.
    pub fn error(&self) -> Option<&rustls::Error> {
        self.error.as_ref()
    }

    /// Moves plaintext rustls still holds into `out`; how much.
    pub fn drain_plaintext(&mut self, out: &mut [u8]) -> usize {
        match &mut self.state {
            State::Open(conn) => read_plaintext(conn, out),
            _ => 0,
        }
    }

    /// Encrypts the `len` plaintext bytes at `buf[offset..]` and writes the records (after
    /// anything rustls had waiting) over the front of `buf`; returns how many bytes to send.
    /// What did not fit stays for [`Session::write_pending`].
    pub fn encrypt_in_place(
        &mut self,
        buf: &mut [u8],
        offset: usize,
        len: usize,
    ) -> Result<usize, TlsError> {
        let State::Open(conn) = &mut self.state else {
            return Err(TlsError::Overflow);
        };
        let mut plain = &buf[offset..offset + len];
        while !plain.is_empty() {
            match conn.writer().write(plain) {
                Ok(0) | Err(_) => return Err(TlsError::Overflow),
                Ok(n) => plain = &plain[n..],
            }
        }
        Ok(self.write_pending(buf))
    }

    /// Writes what waits for the peer (handshake messages, tickets, alerts, records) into
    /// `out`; how many bytes.
    pub fn write_pending(&mut self, out: &mut [u8]) -> usize {
        match &mut self.state {
            State::Accepting { .. } => 0,
            State::Open(conn) => {
                let mut written = 0;
                while conn.wants_write() && written < out.len() {
                    match conn.write_tls(&mut &mut out[written..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => written += n,
                    }
                }
                written
            }
            State::Failed(alert) => {
                let n = alert.len().min(out.len());
                out[..n].copy_from_slice(&alert[..n]);
                alert.drain(..n);
                n
            }
        }
    }

    /// Queues `close_notify` (written by [`Session::write_pending`]).
    pub fn send_close_notify(&mut self) {
        if let State::Open(conn) = &mut self.state {
            conn.send_close_notify();
        }
    }

    /// What was negotiated, once established.
    pub fn negotiated(&self) -> Option<Negotiated> {
        let State::Open(conn) = &self.state else {
            return None;
        };
        if conn.is_handshaking() {
            return None;
        }
        let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
        Some(Negotiated {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "-",
            },
            cipher: suite.and_then(|s| s.as_str()).unwrap_or("-"),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
            protocol: conn.protocol_version(),
            suite,
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
        })
    }

    /// The peer's certificate chain (leaf first), once established.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match &self.state {
            State::Open(conn) => conn.peer_certificates(),
            _ => None,
        }
    }

    /// A server session that asks its client for a certificate.
    pub fn asks_for_client_certificate(&self) -> bool {
        self.asks_client_cert
    }

    /// The SNI a client sent (server sessions).
    pub fn server_name(&self) -> Option<&str> {
        match &self.state {
            State::Open(conn) => match conn.as_ref() {
                Connection::Server(s) => s.server_name(),
                Connection::Client(_) => None,
            },
            _ => None,
        }
    }

    /// The ALPN protocol agreed on.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.state {
            State::Open(conn) => conn.alpn_protocol(),
            _ => None,
        }
    }
}

/// What a handshake agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1.2` or `TLSv1.3` (Envoy's `%DOWNSTREAM_TLS_VERSION%` form).
    pub version: &'static str,
    /// The IANA name of the cipher suite.
    pub cipher: &'static str,
    /// Resumed from a ticket.
    pub resumed: bool,
    /// The version, as rustls names it.
    pub protocol: Option<rustls::ProtocolVersion>,
    /// The cipher suite, as rustls names it.
    pub suite: Option<rustls::CipherSuite>,
    /// The key-exchange group (none for a TLS 1.2 resumption).
    pub group: Option<rustls::NamedGroup>,
}

/// Moves plaintext from `conn` into `out` until either is empty.
fn read_plaintext(conn: &mut Connection, out: &mut [u8]) -> usize {
    let mut n = 0;
    while n < out.len() {
        match conn.reader().read(&mut out[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}
