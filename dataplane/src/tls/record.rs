//! The TLS record layer of an established session, in place in the worker's buffers: what
//! kTLS does in the kernel, done on the worker's core with `ring`'s AEADs.
//!
//! rustls makes the handshake; once it is done the session hands its traffic secrets and
//! sequence numbers over ([`rustls::kernel`]) and every application record is opened and
//! sealed here, where it lies:
//! - **Receive**: each record is decrypted in the buffer it was received into and its
//!   plaintext moved down to the front ([`RecordLayer::open_all`]): one `memmove` of the
//!   plaintext, no allocation. rustls' buffered API copies every byte three times (into its
//!   deframer, into a vector per record, out to the caller) and allocates per record.
//! - **Send**: the plaintext is spread out in its own buffer to leave room for each
//!   record's header and tag, and sealed in place ([`RecordLayer::seal_all`]): one
//!   `memmove`, no allocation (rustls: a copy and a vector per record, and a copy out).
//!
//! Guarantees:
//! - **A nonce is never reused.** Each direction's sequence number counts every record
//!   sealed or opened under its key, from the number rustls hands over; a TLS 1.3 key
//!   update restarts it at zero with a new key. A TLS 1.3 sender updates its key before the
//!   suite's confidentiality limit (2^24 records for AES-GCM); a TLS 1.2 sender fails
//!   instead, as rustls does.
//! - **Nothing unauthenticated reaches the relay.** A record that does not open fails the
//!   session (`bad_record_mac`); bytes after a peer's `close_notify` are dropped.
//! - **Post-handshake messages** are handled as RFC 8446 asks: a peer's `KeyUpdate` changes
//!   the receive key (and, when requested, ours before our next record); a server's
//!   `NewSessionTicket` goes to rustls, which stores it for resumption. Anything else (TLS
//!   1.2 renegotiation included) fails the session with `unexpected_message`.
//! - **Bounded.** A record longer than the protocol allows fails with `record_overflow`
//!   as soon as its header is in. A post-handshake message split over records is gathered
//!   in a vector that lives only until it is whole (at most 64 KiB).

use ring::aead;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// The most plaintext one record carries (2^14).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// A record header: type, version, length.
pub const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce, sent before the ciphertext.
const EXPLICIT_NONCE_LEN: usize = 8;
/// The longest post-handshake message gathered over records.
const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Records sealed under one key before a TLS 1.3 sender updates it (under the AES-GCM
/// confidentiality limit of 2^24, with room for the records of one send).
const UPDATE_AT_RECORDS: u64 = (1 << 24) - (1 << 16);

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;

const HANDSHAKE_HELLO_REQUEST: u8 = 0;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;

const ALERT_WARNING: u8 = 1;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;

/// Why the record layer failed the session, with the alert that tells the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A record that does not open (`bad_record_mac`).
    BadRecordMac,
    /// A record longer than the protocol allows (`record_overflow`).
    RecordOverflow,
    /// A record or message the protocol does not allow here (`unexpected_message`).
    UnexpectedMessage,
    /// A message that does not parse (`decode_error`).
    DecodeError,
    /// The peer sent a fatal alert (its description).
    PeerAlert(u8),
    /// rustls refused a post-handshake message or a key update (`internal_error`).
    Rustls,
    /// A TLS 1.2 key is used up (rustls closes the connection too).
    KeyExhausted,
}

impl RecordError {
    /// The alert description sent to the peer (none for an alert the peer sent).
    pub fn alert(self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(20),
            RecordError::RecordOverflow => Some(22),
            RecordError::UnexpectedMessage => Some(10),
            RecordError::DecodeError => Some(50),
            RecordError::Rustls | RecordError::KeyExhausted => Some(80),
            RecordError::PeerAlert(_) => None,
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::BadRecordMac => write!(f, "a record failed authentication"),
            RecordError::RecordOverflow => write!(f, "a record is longer than TLS allows"),
            RecordError::UnexpectedMessage => write!(f, "unexpected message after the handshake"),
            RecordError::DecodeError => write!(f, "a post-handshake message does not parse"),
            RecordError::PeerAlert(d) => write!(f, "the peer sent fatal alert {d}"),
            RecordError::Rustls => write!(f, "rustls refused a post-handshake message"),
            RecordError::KeyExhausted => write!(f, "the TLS 1.2 key is used up"),
        }
    }
}

/// What a session must do for a post-handshake message (rustls' part of the work).
pub trait KeySchedule {
    /// The next receive key (the peer sent `KeyUpdate`).
    fn next_rx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError>;
    /// The next send key (ours changes after our `KeyUpdate`).
    fn next_tx(&mut self) -> Result<ConnectionTrafficSecrets, RecordError>;
    /// A server's `NewSessionTicket` body (clients only; servers refuse one).
    fn ticket(&mut self, body: &[u8]) -> Result<(), RecordError>;
}

/// One direction's key and sequence number.
struct Key {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl Key {
    fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Key {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            // `ConnectionTrafficSecrets` is non-exhaustive; the ring provider makes no other.
            _ => unreachable!("the ring provider negotiates AES-GCM or ChaCha20-Poly1305 only"),
        };
        let unbound = aead::UnboundKey::new(alg, key.as_ref())
            .expect("rustls hands over a key of its algorithm's length");
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce.copy_from_slice(iv.as_ref());
        Key {
            key: aead::LessSafeKey::new(unbound),
            iv: nonce,
            seq,
        }
    }

    /// The per-record nonce: the IV with the sequence number XORed into its end (TLS 1.3,
    /// ChaCha20 in TLS 1.2, and the AES-GCM nonce rustls sends explicitly in TLS 1.2).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn is_gcm(&self) -> bool {
        self.key.algorithm() != &aead::CHACHA20_POLY1305
    }
}

/// How records of the negotiated version and suite are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Tls13,
    /// TLS 1.2 with AES-GCM: an explicit 8-byte nonce before the ciphertext.
    Tls12Gcm,
    /// TLS 1.2 with ChaCha20-Poly1305.
    Tls12Chacha,
}

impl Framing {
    /// Bytes before a record's plaintext.
    fn prefix(self) -> usize {
        match self {
            Framing::Tls12Gcm => HEADER_LEN + EXPLICIT_NONCE_LEN,
            Framing::Tls13 | Framing::Tls12Chacha => HEADER_LEN,
        }
    }

    /// Bytes after a record's plaintext (TLS 1.3 adds the inner content type).
    fn suffix(self) -> usize {
        match self {
            Framing::Tls13 => 1 + TAG_LEN,
            Framing::Tls12Gcm | Framing::Tls12Chacha => TAG_LEN,
        }
    }

    /// The longest record body (after the header) the peer may send.
    fn max_body(self) -> usize {
        match self {
            Framing::Tls13 => MAX_PLAINTEXT + 256,
            Framing::Tls12Gcm | Framing::Tls12Chacha => MAX_PLAINTEXT + 2048,
        }
    }
}

/// What [`RecordLayer::open_all`] made of a run of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    /// Plaintext bytes now at the front of the buffer.
    pub plaintext: usize,
    /// Where the bytes of an incomplete last record begin (`end` when there is none).
    pub tail_at: usize,
    /// The peer sent `close_notify`: nothing after it was read.
    pub peer_closed: bool,
}

/// An established session's records, both ways.
pub struct RecordLayer {
    framing: Framing,
    rx: Key,
    tx: Key,
    /// Our next record must be a `KeyUpdate` (the peer asked, or the key is nearly used).
    update_tx: bool,
    /// A post-handshake message split over records, gathered until whole.
    partial_message: Vec<u8>,
    /// The peer's `close_notify` came.
    peer_closed: bool,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("framing", &self.framing)
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .finish()
    }
}

impl RecordLayer {
    /// The record layer rustls handed over: its secrets and sequence numbers both ways.
    pub fn new(
        version: ProtocolVersion,
        tx: (u64, ConnectionTrafficSecrets),
        rx: (u64, ConnectionTrafficSecrets),
    ) -> RecordLayer {
        let tx = Key::new(tx.0, &tx.1);
        let rx = Key::new(rx.0, &rx.1);
        let framing = match (version, tx.is_gcm()) {
            (ProtocolVersion::TLSv1_3, _) => Framing::Tls13,
            (_, true) => Framing::Tls12Gcm,
            (_, false) => Framing::Tls12Chacha,
        };
        RecordLayer {
            framing,
            rx,
            tx,
            update_tx: false,
            partial_message: Vec::new(),
            peer_closed: false,
        }
    }

    /// The bytes `records` records of plaintext add when sealed.
    pub fn overhead(&self, records: usize) -> usize {
        records * (self.framing.prefix() + self.framing.suffix())
    }

    /// Opens the records in `buf[..end]` (which begins at a record's start) in place and
    /// moves their application data to the front of `buf`; post-handshake messages and
    /// alerts are handled on the way. An incomplete last record is left where it is
    /// ([`Opened::tail_at`]) for the caller to put in front of the next bytes.
    pub fn open_all(
        &mut self,
        buf: &mut [u8],
        end: usize,
        schedule: &mut dyn KeySchedule,
    ) -> Result<Opened, RecordError> {
        let mut at = 0;
        let mut plaintext = 0;
        while !self.peer_closed && end - at >= HEADER_LEN {
            let body = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
            if body > self.framing.max_body() {
                return Err(RecordError::RecordOverflow);
            }
            if end - at < HEADER_LEN + body {
                break;
            }
            let record = &mut buf[at..at + HEADER_LEN + body];
            let (typ, start, len) = self.open(record)?;
            let (start, len) = (at + start, len);
            match typ {
                CONTENT_APPLICATION_DATA => {
                    buf.copy_within(start..start + len, plaintext);
                    plaintext += len;
                }
                CONTENT_ALERT => self.on_alert(&buf[start..start + len])?,
                CONTENT_HANDSHAKE => self.on_handshake(&buf[start..start + len], schedule)?,
                _ => return Err(RecordError::UnexpectedMessage),
            }
            at += HEADER_LEN + body;
        }
        let tail_at = if self.peer_closed { end } else { at };
        Ok(Opened {
            plaintext,
            tail_at,
            peer_closed: self.peer_closed,
        })
    }

    /// Opens one whole record in place: its content type, and where its plaintext lies in
    /// `record` and how long it is.
    fn open(&mut self, record: &mut [u8]) -> Result<(u8, usize, usize), RecordError> {
        let outer = record[0];
        let allowed = match self.framing {
            // Every TLS 1.3 record after the handshake is sealed as application data.
            Framing::Tls13 => outer == CONTENT_APPLICATION_DATA,
            _ => matches!(
                outer,
                CONTENT_ALERT | CONTENT_HANDSHAKE | CONTENT_APPLICATION_DATA
            ),
        };
        if !allowed {
            return Err(RecordError::UnexpectedMessage);
        }
        let (nonce, body_at, plain_len) = match self.framing {
            Framing::Tls12Gcm => {
                let body_len = record.len() - HEADER_LEN;
                if body_len < EXPLICIT_NONCE_LEN + TAG_LEN {
                    return Err(RecordError::BadRecordMac);
                }
                let mut nonce = self.rx.iv;
                nonce[4..].copy_from_slice(&record[HEADER_LEN..HEADER_LEN + EXPLICIT_NONCE_LEN]);
                let plain = body_len - EXPLICIT_NONCE_LEN - TAG_LEN;
                (nonce, HEADER_LEN + EXPLICIT_NONCE_LEN, plain)
            }
            Framing::Tls12Chacha | Framing::Tls13 => {
                let body_len = record.len() - HEADER_LEN;
                if body_len < TAG_LEN {
                    return Err(RecordError::BadRecordMac);
                }
                (self.rx.nonce(), HEADER_LEN, body_len - TAG_LEN)
            }
        };
        let aad = match self.framing {
            Framing::Tls13 => aad_tls13(&record[..HEADER_LEN]),
            _ => aad_tls12(self.rx.seq, outer, plain_len),
        };
        let (aad_bytes, aad_len) = aad;
        let sealed = &mut record[body_at..];
        self.rx
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad_bytes[..aad_len]),
                sealed,
            )
            .map_err(|_| RecordError::BadRecordMac)?;
        self.rx.seq += 1;
        if self.framing != Framing::Tls13 {
            if plain_len > MAX_PLAINTEXT {
                return Err(RecordError::RecordOverflow);
            }
            return Ok((outer, body_at, plain_len));
        }
        // TLS 1.3: the inner plaintext ends with its real type, then zero padding.
        let inner = &record[body_at..body_at + plain_len];
        let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::UnexpectedMessage);
        };
        if type_at > MAX_PLAINTEXT {
            return Err(RecordError::RecordOverflow);
        }
        Ok((inner[type_at], body_at, type_at))
    }

    fn on_alert(&mut self, alert: &[u8]) -> Result<(), RecordError> {
        let [level, description] = alert else {
            return Err(RecordError::DecodeError);
        };
        match *description {
            ALERT_CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            ALERT_USER_CANCELED => Ok(()),
            // TLS 1.2 warnings are only warnings (rustls reads them so too).
            _ if *level == ALERT_WARNING && !self.is_tls13() => Ok(()),
            d => Err(RecordError::PeerAlert(d)),
        }
    }

    fn on_handshake(
        &mut self,
        bytes: &[u8],
        schedule: &mut dyn KeySchedule,
    ) -> Result<(), RecordError> {
        if self.partial_message.is_empty() {
            return self.on_messages(bytes, schedule);
        }
        let mut gathered = std::mem::take(&mut self.partial_message);
        gathered.extend_from_slice(bytes);
        // Once whole, the gathering vector's memory goes back with `gathered`.
        self.on_messages(&gathered, schedule)
    }

    /// Handles the whole messages of `bytes` and keeps an incomplete last one (in
    /// `partial_message`, empty when called) for the next record.
    fn on_messages(
        &mut self,
        mut bytes: &[u8],
        schedule: &mut dyn KeySchedule,
    ) -> Result<(), RecordError> {
        while let [typ, a, b, c, rest @ ..] = bytes {
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if len > MAX_MESSAGE_LEN {
                return Err(RecordError::DecodeError);
            }
            if rest.len() < len {
                break;
            }
            let (body, after) = rest.split_at(len);
            if *typ == HANDSHAKE_KEY_UPDATE && !after.is_empty() {
                // A key change must end its record (RFC 8446, 5.1).
                return Err(RecordError::UnexpectedMessage);
            }
            self.on_message(*typ, body, schedule)?;
            bytes = after;
        }
        self.partial_message.extend_from_slice(bytes);
        Ok(())
    }

    fn on_message(
        &mut self,
        typ: u8,
        body: &[u8],
        schedule: &mut dyn KeySchedule,
    ) -> Result<(), RecordError> {
        match (self.framing, typ) {
            (Framing::Tls13, HANDSHAKE_KEY_UPDATE) => {
                let requested = match body {
                    [0] => false,
                    [1] => true,
                    _ => return Err(RecordError::DecodeError),
                };
                let secrets = schedule.next_rx()?;
                self.rx = Key::new(0, &secrets);
                self.update_tx |= requested;
                Ok(())
            }
            (Framing::Tls13, HANDSHAKE_NEW_SESSION_TICKET) => schedule.ticket(body),
            // A TLS 1.2 server asking to renegotiate: rustls declines with a warning; the
            // request is simply not taken up here.
            (_, HANDSHAKE_HELLO_REQUEST) if body.is_empty() && !self.is_tls13() => Ok(()),
            _ => Err(RecordError::UnexpectedMessage),
        }
    }

    fn is_tls13(&self) -> bool {
        self.framing == Framing::Tls13
    }

    /// Our next send begins with a `KeyUpdate` (tests: the limit is 2^24 records away).
    #[cfg(test)]
    pub(crate) fn request_key_update(&mut self) {
        self.update_tx = true;
    }

    /// Seals the `len` plaintext bytes at `buf[offset..]` as records written from `buf[at..]`
    /// (a `KeyUpdate` first when one is due); returns the bytes written from `at`. `buf`
    /// must hold `at + len` plus [`RecordLayer::seal_room`].
    pub fn seal_all(
        &mut self,
        buf: &mut [u8],
        at: usize,
        offset: usize,
        len: usize,
        schedule: &mut dyn KeySchedule,
    ) -> Result<usize, RecordError> {
        let records = len.div_ceil(MAX_PLAINTEXT);
        if self.is_tls13() && self.tx.seq + records as u64 >= UPDATE_AT_RECORDS {
            self.update_tx = true;
        } else if !self.is_tls13() && self.tx.seq + records as u64 >= UPDATE_AT_RECORDS {
            return Err(RecordError::KeyExhausted);
        }
        let update_len = if self.update_tx && self.is_tls13() {
            key_update_record_len()
        } else {
            0
        };
        let stride = MAX_PLAINTEXT + self.framing.prefix() + self.framing.suffix();
        let first = at + update_len + self.framing.prefix();
        let total = update_len + len + self.overhead(records);
        assert!(at + total <= buf.len(), "the caller leaves seal_room");
        // Spread the plaintext out: chunks moving right go last first, then those moving
        // left first to last, so no chunk is overwritten before it moves.
        let chunk = |i: usize| {
            let src = offset + i * MAX_PLAINTEXT;
            let n = MAX_PLAINTEXT.min(len - i * MAX_PLAINTEXT);
            (src, first + i * stride, n)
        };
        for i in (0..records).rev() {
            let (src, dst, n) = chunk(i);
            if dst > src {
                buf.copy_within(src..src + n, dst);
            }
        }
        for i in 0..records {
            let (src, dst, n) = chunk(i);
            if dst < src {
                buf.copy_within(src..src + n, dst);
            }
        }
        if update_len > 0 {
            self.seal_key_update(&mut buf[at..at + update_len], schedule)?;
        }
        for i in 0..records {
            let (_, dst, n) = chunk(i);
            let at = dst - self.framing.prefix();
            let record = &mut buf[at..at + self.framing.prefix() + n + self.framing.suffix()];
            self.seal(record, CONTENT_APPLICATION_DATA, n);
        }
        Ok(total)
    }

    /// Room a send of plaintext needs beyond the plaintext itself.
    pub fn seal_room(&self, len: usize) -> usize {
        key_update_record_len() + self.overhead(len.div_ceil(MAX_PLAINTEXT).max(1))
    }

    /// Seals one record in place: `record` holds the framing's prefix, `len` plaintext
    /// bytes and room for its suffix.
    fn seal(&mut self, record: &mut [u8], typ: u8, len: usize) {
        let prefix = self.framing.prefix();
        let body = record.len() - HEADER_LEN;
        let nonce = self.tx.nonce();
        let outer = if self.is_tls13() {
            CONTENT_APPLICATION_DATA
        } else {
            typ
        };
        record[..HEADER_LEN].copy_from_slice(&[outer, 3, 3, (body >> 8) as u8, body as u8]);
        let aad = match self.framing {
            Framing::Tls13 => {
                record[prefix + len] = typ;
                aad_tls13(&record[..HEADER_LEN])
            }
            Framing::Tls12Gcm => {
                record[HEADER_LEN..prefix].copy_from_slice(&nonce[4..]);
                aad_tls12(self.tx.seq, typ, len)
            }
            Framing::Tls12Chacha => aad_tls12(self.tx.seq, typ, len),
        };
        let sealed_len = len + usize::from(self.is_tls13());
        let (aad_bytes, aad_len) = aad;
        let (plain, tag_room) = record[prefix..].split_at_mut(sealed_len);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(&aad_bytes[..aad_len]),
                plain,
            )
            .expect("a record's plaintext is within the AEAD's limits");
        tag_room[..TAG_LEN].copy_from_slice(tag.as_ref());
        self.tx.seq += 1;
    }

    /// Writes our `KeyUpdate` (under the old key) and moves to the next send key.
    fn seal_key_update(
        &mut self,
        record: &mut [u8],
        schedule: &mut dyn KeySchedule,
    ) -> Result<(), RecordError> {
        // update_not_requested: the peer updates its own key when it wants to.
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];
        record[HEADER_LEN..HEADER_LEN + message.len()].copy_from_slice(&message);
        self.seal(record, CONTENT_HANDSHAKE, message.len());
        let secrets = schedule.next_tx()?;
        self.tx = Key::new(0, &secrets);
        self.update_tx = false;
        Ok(())
    }

    /// An alert record (`close_notify` or a fatal one), sealed into `out`; its length.
    pub fn seal_alert(&mut self, fatal: bool, description: u8, out: &mut [u8]) -> usize {
        let prefix = self.framing.prefix();
        let len = prefix + 2 + self.framing.suffix();
        if out.len() < len {
            return 0;
        }
        out[prefix] = if fatal { 2 } else { ALERT_WARNING };
        out[prefix + 1] = description;
        self.seal(&mut out[..len], CONTENT_ALERT, 2);
        len
    }

    /// A `close_notify`, sealed into `out`.
    pub fn seal_close_notify(&mut self, out: &mut [u8]) -> usize {
        self.seal_alert(false, ALERT_CLOSE_NOTIFY, out)
    }

    /// The longest alert record.
    pub const ALERT_RECORD_LEN: usize = HEADER_LEN + EXPLICIT_NONCE_LEN + 2 + 1 + TAG_LEN;
}

fn key_update_record_len() -> usize {
    HEADER_LEN + 5 + 1 + TAG_LEN
}

/// TLS 1.3's additional data: the record header as sent.
fn aad_tls13(header: &[u8]) -> ([u8; 13], usize) {
    let mut aad = [0u8; 13];
    aad[..HEADER_LEN].copy_from_slice(header);
    (aad, HEADER_LEN)
}

/// TLS 1.2's additional data: sequence number, type, version and plaintext length.
fn aad_tls12(seq: u64, typ: u8, len: usize) -> ([u8; 13], usize) {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    (aad, 13)
}
