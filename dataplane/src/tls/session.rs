//! One connection's TLS: rustls makes the handshake, then the records run in place in the
//! worker's own buffers ([`super::record`]).
//!
//! The worker receives ciphertext into a provided buffer and hands it here:
//! - **While handshaking**, the bytes go to rustls' unbuffered connection (copied into the
//!   session's handshake vector, which holds a message split over receives); what rustls
//!   answers waits in the session's outgoing vector for [`Session::write_pending`].
//! - **Once established**, rustls hands its traffic secrets over
//!   ([`rustls::kernel`], the hand-over kTLS would take) and each record is opened in the
//!   buffer it arrived in, its plaintext moved to the buffer's front
//!   ([`Session::decrypt_in_place`]). A send to the peer goes the other way: the plaintext
//!   is spread out over its buffer and sealed in place ([`Session::encrypt_in_place`]).
//!
//! # Records split over receives
//!
//! A record whose end has not arrived stays where it is ([`Decrypted::tail_at`]): the
//! worker puts those bytes in front of the next receive's (at most one record, 16 KiB and
//! change), so every call begins at a record's start. Plaintext is never longer than the
//! records it came from, so it always fits in front of them; a send of plaintext needs
//! [`TLS_SLACK`] of room for its records' headers and tags.
//!
//! # Allocation
//!
//! Per connection: rustls' handshake state and the handshake and outgoing vectors (freed or
//! kept small once established), the record layer's keys, and the peer's certificates when
//! it sent any (kept for access logs and policy). None per record.

use super::client_hello::{self, Inspected};
use super::context::{ClientContext, ServerContext};
use super::record::{KeySchedule, RecordError, RecordLayer};
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, HandshakeKind};
use std::sync::Arc;

/// Room kept free in a buffer whose plaintext goes to a TLS peer (its records' headers and
/// tags), and in a handshake's receive; a receive whose only TLS side is its source takes
/// the whole buffer.
pub const TLS_SLACK: u32 = 17 * 1024;

/// The longest ClientHello read before rustls is given it (TLS allows 2^24; this is what
/// fits a buffer, as Envoy's inspector bounds it too).
const MAX_CLIENT_HELLO_BYTES: usize = 32 * 1024;

/// What a TLS session failed with.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// The peer broke the protocol or failed verification (an alert may be waiting to be
    /// written: [`Session::wants_write`]).
    Protocol(rustls::Error),
    /// A record after the handshake was refused (an alert is waiting to be written).
    Record(RecordError),
    /// The peer sent more than the session can hold.
    Overflow,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::Record(e) => write!(f, "{e}"),
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
    /// Where the bytes of an incomplete record begin (after the plaintext): they go in
    /// front of the next receive's bytes.
    pub tail_at: usize,
    /// How many bytes of an incomplete record there are (0: none).
    pub tail_len: usize,
}

/// rustls' unbuffered connection of either side.
enum Unbuffered {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

/// What rustls keeps after the hand-over: the key schedule and the ticket store.
enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl KeySchedule for Kernel {
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError> {
        let next = match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        };
        next.map(|(_, s)| s).map_err(|_| RecordError::Rustls)
    }

    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError> {
        let next = match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        };
        next.map(|(_, s)| s).map_err(|_| RecordError::Rustls)
    }

    fn ticket(&mut self, body: &[u8]) -> Result<(), RecordError> {
        match self {
            Kernel::Client(k) => k
                .handle_new_session_ticket(body)
                .map_err(|_| RecordError::DecodeError),
            Kernel::Server(_) => Err(RecordError::UnexpectedMessage),
        }
    }
}

/// A handshake under way.
struct Handshake {
    conn: Unbuffered,
    /// Received bytes rustls has not taken yet (a message split over receives).
    incoming: Vec<u8>,
}

/// An established session.
struct Established {
    records: RecordLayer,
    kernel: Kernel,
    negotiated: Negotiated,
    peer_certificates: Option<Vec<CertificateDer<'static>>>,
    alpn: Option<Vec<u8>>,
}

enum State {
    /// A server reading the ClientHello: its ALPN offer picks the config.
    Hello {
        bytes: Vec<u8>,
        context: Arc<ServerContext>,
    },
    /// Handshaking.
    Handshaking(Box<Handshake>),
    /// Established: records in place.
    Established(Box<Established>),
    /// Failed; what is left to write (an alert) is in the outgoing vector.
    Failed,
}

/// One connection's TLS state.
pub struct Session {
    state: State,
    /// Bytes for the peer that are not the relay's records: handshake flights, tickets,
    /// alerts, `close_notify`.
    outgoing: Vec<u8>,
    /// The SNI a client sent (server sessions), as the ClientHello said it.
    server_name: Option<Box<str>>,
    /// What it failed with, for the counters.
    error: Option<rustls::Error>,
    /// A server that asks for a client certificate.
    asks_client_cert: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Hello { .. } => "accepting",
            State::Handshaking(_) => "handshaking",
            State::Established(_) => "established",
            State::Failed => "failed",
        };
        write!(f, "Session({state})")
    }
}

/// Where a handshake step left it.
enum Step {
    /// rustls has more to say or more to read: ask again.
    Again,
    /// rustls needs more bytes from the peer.
    Blocked,
    /// Traffic keys are ready both ways (or, for a TLS 1.3 server before the client's
    /// Finished, ours only: the caller checks).
    Traffic,
    /// The peer closed during the handshake.
    PeerClosed,
}

impl Session {
    /// A server session for a filter chain's context: it reads the ClientHello first.
    pub fn server(context: Arc<ServerContext>) -> Session {
        let asks_client_cert = context.settings().validation.is_some();
        Session {
            asks_client_cert,
            state: State::Hello {
                bytes: Vec::new(),
                context,
            },
            outgoing: Vec::new(),
            server_name: None,
            error: None,
        }
    }

    /// A client session for a cluster's context; its ClientHello is ready to write.
    pub fn client(context: &ClientContext) -> Result<Session, TlsError> {
        let conn = UnbufferedClientConnection::new(context.config().clone(), context.server_name())
            .map_err(TlsError::Protocol)?;
        let mut session = Session {
            state: State::Handshaking(Box::new(Handshake {
                conn: Unbuffered::Client(conn),
                incoming: Vec::new(),
            })),
            outgoing: Vec::new(),
            server_name: None,
            error: None,
            asks_client_cert: false,
        };
        session.handshake(&mut [])?;
        Ok(session)
    }

    /// A session that failed before it began (no context to begin with).
    pub fn failed() -> Session {
        Session {
            state: State::Failed,
            outgoing: Vec::new(),
            server_name: None,
            error: None,
            asks_client_cert: false,
        }
    }

    /// Still handshaking (or accepting).
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Hello { .. } | State::Handshaking(_))
    }

    /// Failed for good.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Bytes are waiting to be written to the peer.
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Takes the `len` bytes received at the front of `buf` (which begin where the last
    /// call's incomplete record began, its bytes put back in front): handshake messages go
    /// to rustls (their answer becomes [`Session::wants_write`]); records are opened in
    /// place and their plaintext moved to the front of `buf`.
    pub fn decrypt_in_place(&mut self, buf: &mut [u8], len: usize) -> Result<Decrypted, TlsError> {
        match &mut self.state {
            State::Established(e) => {
                let opened = e
                    .records
                    .open_all(buf, len, &mut e.kernel)
                    .map_err(|err| self.fail_record(err))?;
                Ok(Decrypted {
                    plaintext: opened.plaintext,
                    peer_closed: opened.peer_closed,
                    tail_at: opened.tail_at,
                    tail_len: len - opened.tail_at,
                })
            }
            State::Failed => Ok(Decrypted::default()),
            State::Hello { bytes, .. } => {
                bytes.extend_from_slice(&buf[..len]);
                if !self.read_hello()? {
                    return Ok(Decrypted::default());
                }
                self.handshake(buf)
            }
            State::Handshaking(hs) => {
                hs.incoming.extend_from_slice(&buf[..len]);
                self.handshake(buf)
            }
        }
    }

    /// A server's first bytes: once the ClientHello is whole, the connection is made with
    /// the context's config for its ALPN offer (and its SNI kept). False while it is not.
    fn read_hello(&mut self) -> Result<bool, TlsError> {
        let State::Hello { bytes, context } = &mut self.state else {
            return Ok(true);
        };
        let config = match client_hello::inspect(bytes, MAX_CLIENT_HELLO_BYTES) {
            Inspected::NeedMore => return Ok(false),
            Inspected::Hello(hello) => {
                self.server_name = hello
                    .server_name()
                    .and_then(|n| std::str::from_utf8(n).ok())
                    .map(Box::from);
                context.config_for(hello.offers_alpn().then(|| hello.alpn()))
            }
            // rustls reads it and fails it, with the alert it deserves.
            Inspected::NotTls | Inspected::TooLarge => {
                context.config_for(None::<client_hello::AlpnIter<'_>>)
            }
        };
        let conn = UnbufferedServerConnection::new(config).map_err(TlsError::Protocol)?;
        let incoming = std::mem::take(bytes);
        self.state = State::Handshaking(Box::new(Handshake {
            conn: Unbuffered::Server(conn),
            incoming,
        }));
        Ok(true)
    }

    /// Moves the handshake on over what it has received; application data that came with
    /// it goes to the front of `out`, and once established, the bytes of an incomplete
    /// record after it.
    fn handshake(&mut self, out: &mut [u8]) -> Result<Decrypted, TlsError> {
        let State::Handshaking(hs) = &mut self.state else {
            return Ok(Decrypted::default());
        };
        let mut taken = 0;
        let mut plaintext = 0;
        let mut peer_closed = false;
        let established = loop {
            let incoming = &mut hs.incoming[taken..];
            let step = match &mut hs.conn {
                Unbuffered::Server(c) => step(
                    c.process_tls_records(incoming),
                    &mut self.outgoing,
                    out,
                    &mut plaintext,
                ),
                Unbuffered::Client(c) => step(
                    c.process_tls_records(incoming),
                    &mut self.outgoing,
                    out,
                    &mut plaintext,
                ),
            };
            let (discard, step) = step;
            taken += discard;
            let step = match step {
                Ok(step) => step,
                Err(e) => {
                    hs.incoming.drain(..taken);
                    return Err(self.fail(e));
                }
            };
            match step {
                Step::Again => {}
                Step::Blocked => break false,
                Step::Traffic => break !hs.conn.is_handshaking(),
                Step::PeerClosed => {
                    peer_closed = true;
                    break false;
                }
            }
        };
        hs.incoming.drain(..taken);
        if !established {
            return Ok(Decrypted {
                plaintext,
                peer_closed,
                tail_at: plaintext,
                tail_len: 0,
            });
        }
        self.establish(out, plaintext)
    }

    /// The handshake is done: rustls hands the records over. Bytes of a record not yet
    /// whole go after the plaintext in `out`, as an incomplete record's would.
    fn establish(&mut self, out: &mut [u8], plaintext: usize) -> Result<Decrypted, TlsError> {
        let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Failed) else {
            unreachable!("called while handshaking")
        };
        let Handshake { conn, incoming } = *hs;
        let tail_len = incoming.len();
        if plaintext + tail_len > out.len() {
            return Err(TlsError::Overflow);
        }
        out[plaintext..plaintext + tail_len].copy_from_slice(&incoming);
        let negotiated = conn.negotiated();
        let peer_certificates = conn.common().peer_certificates().map(<[_]>::to_vec);
        let alpn = conn.common().alpn_protocol().map(<[u8]>::to_vec);
        let version = negotiated
            .protocol
            .unwrap_or(rustls::ProtocolVersion::TLSv1_3);
        let handed = match conn {
            Unbuffered::Server(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Server(k))),
            Unbuffered::Client(c) => c
                .dangerous_into_kernel_connection()
                .map(|(s, k)| (s, Kernel::Client(k))),
        };
        let (secrets, kernel) = handed.map_err(|e| {
            self.error = Some(e.clone());
            TlsError::Protocol(e)
        })?;
        self.state = State::Established(Box::new(Established {
            records: RecordLayer::new(version, secrets.tx, secrets.rx),
            kernel,
            negotiated,
            peer_certificates,
            alpn,
        }));
        Ok(Decrypted {
            plaintext,
            peer_closed: false,
            tail_at: plaintext,
            tail_len,
        })
    }

    /// The handshake failed with `e`: keep the alert rustls queued, drop the rest.
    fn fail(&mut self, e: rustls::Error) -> TlsError {
        if let State::Handshaking(hs) = &mut self.state {
            // rustls reads on over what it has not taken (its deframer remembers where it
            // was in it): the alert it queued comes first.
            let incoming = &mut hs.incoming;
            loop {
                let more = match &mut hs.conn {
                    Unbuffered::Server(c) => {
                        encode_alert(c.process_tls_records(incoming), &mut self.outgoing)
                    }
                    Unbuffered::Client(c) => {
                        encode_alert(c.process_tls_records(incoming), &mut self.outgoing)
                    }
                };
                if !more {
                    break;
                }
            }
        }
        self.state = State::Failed;
        self.error = Some(e.clone());
        TlsError::Protocol(e)
    }

    /// A record was refused: the alert that says why is queued, the session is over.
    fn fail_record(&mut self, e: RecordError) -> TlsError {
        if let (State::Established(est), Some(description)) = (&mut self.state, e.alert()) {
            let mut alert = [0u8; RecordLayer::ALERT_RECORD_LEN];
            let n = est.records.seal_alert(true, description, &mut alert);
            self.outgoing.extend_from_slice(&alert[..n]);
        }
        self.state = State::Failed;
        self.error = Some(rustls::Error::General(e.to_string()));
        TlsError::Record(e)
    }

    /// What the session failed with, if it did.
    pub fn error(&self) -> Option<&rustls::Error> {
        self.error.as_ref()
    }

    /// Seals the `len` plaintext bytes at `buf[offset..]` as records written (after anything
    /// already waiting for the peer) over the front of `buf`; returns how many bytes to
    /// send. `buf` has [`TLS_SLACK`] of room beyond the plaintext.
    pub fn encrypt_in_place(
        &mut self,
        buf: &mut [u8],
        offset: usize,
        len: usize,
    ) -> Result<usize, TlsError> {
        let State::Established(e) = &mut self.state else {
            return Err(TlsError::Overflow);
        };
        let waiting = self.outgoing.len();
        if (offset + len).max(waiting + len + e.records.seal_room(len)) > buf.len() {
            return Err(TlsError::Overflow);
        }
        let sealed = e
            .records
            .seal_all(buf, waiting, offset, len, &mut e.kernel)
            .map_err(|err| self.fail_record(err))?;
        buf[..waiting].copy_from_slice(&self.outgoing);
        self.outgoing.clear();
        Ok(waiting + sealed)
    }

    /// Writes what waits for the peer (handshake messages, tickets, alerts,
    /// `close_notify`) into `out`; how many bytes.
    pub fn write_pending(&mut self, out: &mut [u8]) -> usize {
        let n = self.outgoing.len().min(out.len());
        out[..n].copy_from_slice(&self.outgoing[..n]);
        self.outgoing.drain(..n);
        if self.outgoing.is_empty() && !self.is_handshaking() {
            // A handshake's flights are written: their memory goes back.
            self.outgoing = Vec::new();
        }
        n
    }

    /// Queues `close_notify` (written by [`Session::write_pending`]).
    pub fn send_close_notify(&mut self) {
        if let State::Established(e) = &mut self.state {
            let mut alert = [0u8; RecordLayer::ALERT_RECORD_LEN];
            let n = e.records.seal_close_notify(&mut alert);
            self.outgoing.extend_from_slice(&alert[..n]);
        }
    }

    /// Our next send begins with a `KeyUpdate` (tests).
    #[cfg(test)]
    pub(crate) fn request_key_update(&mut self) {
        if let State::Established(e) = &mut self.state {
            e.records.request_key_update();
        }
    }

    /// What was negotiated, once established.
    pub fn negotiated(&self) -> Option<Negotiated> {
        match &self.state {
            State::Established(e) => Some(e.negotiated),
            _ => None,
        }
    }

    /// The peer's certificate chain (leaf first), once established.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.state {
            State::Established(e) => e.peer_certificates.as_deref(),
            _ => None,
        }
    }

    /// A server session that asks its client for a certificate.
    pub fn asks_for_client_certificate(&self) -> bool {
        self.asks_client_cert
    }

    /// The SNI a client sent (server sessions).
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The ALPN protocol agreed on.
    pub fn alpn(&self) -> Option<&[u8]> {
        match &self.state {
            State::Established(e) => e.alpn.as_deref(),
            _ => None,
        }
    }
}

impl Unbuffered {
    fn common(&self) -> &rustls::CommonState {
        match self {
            Unbuffered::Server(c) => c,
            Unbuffered::Client(c) => c,
        }
    }

    fn is_handshaking(&self) -> bool {
        self.common().is_handshaking()
    }

    fn negotiated(&self) -> Negotiated {
        let conn = self.common();
        let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
        Negotiated {
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
        }
    }
}

/// Handles one state of rustls' unbuffered handshake: application data to `out` (at
/// `plaintext`), records to send to `outgoing`. Returns the bytes rustls took (also when it
/// failed) and where it stands.
fn step<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    outgoing: &mut Vec<u8>,
    out: &mut [u8],
    plaintext: &mut usize,
) -> (usize, Result<Step, rustls::Error>) {
    let mut discard = status.discard;
    let state = match status.state {
        Ok(state) => state,
        Err(e) => return (discard, Err(e)),
    };
    let step = handle_state(state, outgoing, out, plaintext, &mut discard);
    (discard, step)
}

fn handle_state<Data>(
    state: ConnectionState<'_, '_, Data>,
    outgoing: &mut Vec<u8>,
    out: &mut [u8],
    plaintext: &mut usize,
    discard: &mut usize,
) -> Result<Step, rustls::Error> {
    let step = match state {
        ConnectionState::ReadTraffic(mut read) => {
            while let Some(record) = read.next_record() {
                let record = record?;
                *discard += record.discard;
                let n = record.payload.len();
                let Some(room) = out.get_mut(*plaintext..*plaintext + n) else {
                    return Err(rustls::Error::General(
                        "application data during the handshake overflows its buffer".into(),
                    ));
                };
                room.copy_from_slice(record.payload);
                *plaintext += n;
            }
            Step::Again
        }
        ConnectionState::EncodeTlsData(mut data) => {
            encode(outgoing, |buf| data.encode(buf));
            Step::Again
        }
        ConnectionState::TransmitTlsData(data) => {
            // Written by the worker in order, before anything sealed later.
            data.done();
            Step::Again
        }
        ConnectionState::BlockedHandshake => Step::Blocked,
        ConnectionState::WriteTraffic(_) => Step::Traffic,
        ConnectionState::PeerClosed | ConnectionState::Closed => Step::PeerClosed,
        // No early data is accepted (max_early_data_size is 0).
        _ => {
            return Err(rustls::Error::General(
                "unexpected early data in the handshake".into(),
            ))
        }
    };
    Ok(step)
}

/// Appends what `encode` writes to `outgoing`, growing it to what the record needs.
fn encode(outgoing: &mut Vec<u8>, mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>) {
    let at = outgoing.len();
    let mut room = 0;
    loop {
        outgoing.resize(at + room, 0);
        match encode(&mut outgoing[at..]) {
            Ok(n) => {
                outgoing.truncate(at + n);
                return;
            }
            Err(EncodeError::InsufficientSize(e)) if e.required_size > room => {
                room = e.required_size;
            }
            Err(_) => {
                outgoing.truncate(at);
                return;
            }
        }
    }
}

/// After a failure: encodes the alert rustls queued. True while there may be more.
fn encode_alert<Data>(status: UnbufferedStatus<'_, '_, Data>, outgoing: &mut Vec<u8>) -> bool {
    match status.state {
        Ok(ConnectionState::EncodeTlsData(mut data)) => {
            encode(outgoing, |buf| data.encode(buf));
            true
        }
        Ok(ConnectionState::TransmitTlsData(data)) => {
            data.done();
            false
        }
        _ => false,
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
