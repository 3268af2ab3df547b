//! What `envoy.filters.listener.tls_inspector` reads of a connection's first bytes: whether
//! they are a TLS ClientHello, and if so its server name (SNI) and the application
//! protocols it offers (ALPN).
//!
//! Guarantees:
//! - **Incremental.** [`inspect`] takes everything received so far, from the stream's first
//!   byte; while the bytes are a prefix of a ClientHello it answers [`Inspected::NeedMore`],
//!   so a hello split over many segments (one byte each, say) and over several records is
//!   read whole once its last byte is in.
//! - **Bounded.** A hello that cannot fit in `max_bytes` (record headers included, as
//!   Envoy's `max_client_hello_size` counts them) is [`Inspected::TooLarge`] as soon as its
//!   length says so, or once `max_bytes` are in without its end.
//! - **No allocation, no panic.** The hello is read through a cursor that steps over
//!   record headers (a message may span records); the server name and the protocol list are
//!   copied into fixed arrays of the result. Any input, however malformed, gives an answer
//!   (`proptest` below feeds arbitrary bytes).
//! - **Envoy's reading of malformed input.** Bytes that are not a TLS handshake record, or
//!   a complete hello that does not parse, are [`Inspected::NotTls`]: Envoy's inspector
//!   takes BoringSSL's parse failure for a plaintext connection (`tls_not_found`).

/// The longest server name kept (a DNS name is at most 253 bytes).
pub const MAX_SERVER_NAME_BYTES: usize = 255;

/// The most of the ALPN protocol list kept (whole entries, each a length byte and the
/// name); protocols past it are not seen by matching.
pub const MAX_ALPN_LIST_BYTES: usize = 256;

/// Envoy's default and largest `max_client_hello_size`.
pub const DEFAULT_MAX_CLIENT_HELLO_BYTES: u32 = 16 * 1024;

const RECORD_HEADER_BYTES: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const NAME_TYPE_HOST: u8 = 0;
/// TLS records carry at most 2^14 bytes of plaintext (a little more is tolerated here, as
/// some stacks pad; a larger length is no TLS).
const MAX_RECORD_BYTES: usize = 16 * 1024 + 2048;

/// What the bytes received so far are.
// The hello is returned once per connection and never stored in a collection: boxing it
// would be an allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspected {
    /// A prefix of a ClientHello: read more.
    NeedMore,
    /// Not TLS (or a ClientHello that does not parse): a plaintext connection.
    NotTls,
    /// A ClientHello longer than the limit.
    TooLarge,
    /// A whole ClientHello.
    Hello(ClientHello),
}

/// What a ClientHello says, in fixed arrays.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientHello {
    sni: [u8; MAX_SERVER_NAME_BYTES],
    sni_len: u8,
    has_sni: bool,
    alpn: [u8; MAX_ALPN_LIST_BYTES],
    alpn_len: u16,
    has_alpn: bool,
}

impl std::fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alpn: Vec<&[u8]> = self.alpn().collect();
        f.debug_struct("ClientHello")
            .field("server_name", &self.server_name())
            .field("alpn", &alpn)
            .finish()
    }
}

impl ClientHello {
    fn empty() -> ClientHello {
        ClientHello {
            sni: [0; MAX_SERVER_NAME_BYTES],
            sni_len: 0,
            has_sni: false,
            alpn: [0; MAX_ALPN_LIST_BYTES],
            alpn_len: 0,
            has_alpn: false,
        }
    }

    /// The server name (`host_name` of the SNI extension), if the client sent one.
    pub fn server_name(&self) -> Option<&[u8]> {
        self.has_sni.then(|| &self.sni[..usize::from(self.sni_len)])
    }

    /// Whether the client offered application protocols (the ALPN extension).
    pub fn offers_alpn(&self) -> bool {
        self.has_alpn
    }

    /// The application protocols offered, in the client's order.
    pub fn alpn(&self) -> AlpnIter<'_> {
        AlpnIter::new(self.alpn_list())
    }

    /// The offered protocols as the extension lists them (length-prefixed entries).
    pub fn alpn_list(&self) -> &[u8] {
        &self.alpn[..usize::from(self.alpn_len)]
    }
}

/// The protocols of an ALPN list (length-prefixed entries).
#[derive(Debug, Clone)]
pub struct AlpnIter<'a> {
    rest: &'a [u8],
}

impl<'a> AlpnIter<'a> {
    /// The protocols of `list` (length-prefixed entries; a truncated last entry is left
    /// out).
    pub fn new(list: &'a [u8]) -> AlpnIter<'a> {
        AlpnIter { rest: list }
    }
}

impl<'a> Iterator for AlpnIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let name = tail.get(..usize::from(len))?;
        self.rest = &tail[usize::from(len)..];
        Some(name)
    }
}

/// Reads `bytes` (everything received, from the stream's first byte) as the start of a TLS
/// stream, a ClientHello at most `max_bytes` long.
pub fn inspect(bytes: &[u8], max_bytes: usize) -> Inspected {
    match Records::first_message_len(bytes) {
        Err(Stop::More) => more_or_too_large(bytes, max_bytes),
        Err(Stop::NotTls) => Inspected::NotTls,
        Ok(len) => {
            let records_needed = len.div_ceil(MAX_RECORD_BYTES).max(1);
            if len + records_needed * RECORD_HEADER_BYTES > max_bytes {
                return Inspected::TooLarge;
            }
            let mut cursor = Records::new(bytes);
            match cursor
                .skip(4)
                .and_then(|()| parse_body(&mut cursor, len - 4))
            {
                Ok(_) if cursor.at > max_bytes => Inspected::TooLarge,
                Ok(hello) => Inspected::Hello(hello),
                Err(Stop::More) => more_or_too_large(bytes, max_bytes),
                Err(Stop::NotTls) => Inspected::NotTls,
            }
        }
    }
}

fn more_or_too_large(bytes: &[u8], max_bytes: usize) -> Inspected {
    if bytes.len() >= max_bytes {
        Inspected::TooLarge
    } else {
        Inspected::NeedMore
    }
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The bytes end before the message does.
    More,
    /// Not a TLS handshake (or not one that parses).
    NotTls,
}

/// A cursor over the handshake bytes of a stream of handshake records: record headers are
/// checked and stepped over.
struct Records<'a> {
    bytes: &'a [u8],
    /// Offset of the next byte in `bytes`.
    at: usize,
    /// Where the current record's fragment ends in `bytes`.
    record_end: usize,
}

impl<'a> Records<'a> {
    fn new(bytes: &'a [u8]) -> Records<'a> {
        Records {
            bytes,
            at: 0,
            record_end: 0,
        }
    }

    /// The first handshake message's length (its 4-byte header included), once its header
    /// is in; it must be a ClientHello.
    fn first_message_len(bytes: &[u8]) -> Result<usize, Stop> {
        let mut cursor = Records::new(bytes);
        if cursor.u8()? != HANDSHAKE_CLIENT_HELLO {
            return Err(Stop::NotTls);
        }
        Ok(cursor.u24()? + 4)
    }

    /// Steps into the next record when the current one is used up.
    fn next_record(&mut self) -> Result<(), Stop> {
        let header = self.bytes.get(self.at..);
        let header = header.ok_or(Stop::More)?;
        // Checked byte by byte, so a stream of one byte is judged as early as it can be.
        if let Some(&t) = header.first() {
            if t != CONTENT_HANDSHAKE {
                return Err(Stop::NotTls);
            }
        }
        if let Some(&major) = header.get(1) {
            if major != 3 {
                return Err(Stop::NotTls);
            }
        }
        if let Some(&minor) = header.get(2) {
            if minor > 4 {
                return Err(Stop::NotTls);
            }
        }
        let (Some(&hi), Some(&lo)) = (header.get(3), header.get(4)) else {
            return Err(Stop::More);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 || len > MAX_RECORD_BYTES {
            return Err(Stop::NotTls);
        }
        self.at += RECORD_HEADER_BYTES;
        self.record_end = self.at + len;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        if self.at == self.record_end {
            self.next_record()?;
        }
        let b = *self.bytes.get(self.at).ok_or(Stop::More)?;
        self.at += 1;
        Ok(b)
    }

    fn u16(&mut self) -> Result<usize, Stop> {
        Ok(usize::from(self.u8()?) << 8 | usize::from(self.u8()?))
    }

    fn u24(&mut self) -> Result<usize, Stop> {
        Ok(usize::from(self.u8()?) << 16 | self.u16()?)
    }

    fn skip(&mut self, mut n: usize) -> Result<(), Stop> {
        while n > 0 {
            if self.at == self.record_end {
                self.next_record()?;
            }
            let step = n.min(self.record_end - self.at);
            if self.bytes.len() < self.at + step {
                return Err(Stop::More);
            }
            self.at += step;
            n -= step;
        }
        Ok(())
    }

    /// Copies `n` bytes into `out` (which must be at least that long).
    fn copy(&mut self, out: &mut [u8], n: usize) -> Result<(), Stop> {
        for slot in out.iter_mut().take(n) {
            *slot = self.u8()?;
        }
        Ok(())
    }
}

/// A budget of bytes that a length field opened: reading past it is malformed.
struct Budget(usize);

impl Budget {
    fn take(&mut self, n: usize) -> Result<(), Stop> {
        self.0 = self.0.checked_sub(n).ok_or(Stop::NotTls)?;
        Ok(())
    }
}

/// The ClientHello's body (`len` bytes after its header).
fn parse_body(c: &mut Records, len: usize) -> Result<ClientHello, Stop> {
    let mut body = Budget(len);
    // legacy_version, random
    body.take(2 + 32)?;
    c.skip(2 + 32)?;
    let session_id = usize::from(c.u8()?);
    body.take(1 + session_id)?;
    if session_id > 32 {
        return Err(Stop::NotTls);
    }
    c.skip(session_id)?;
    body.take(2)?;
    let suites = c.u16()?;
    if suites < 2 || suites % 2 != 0 {
        return Err(Stop::NotTls);
    }
    body.take(suites)?;
    c.skip(suites)?;
    body.take(1)?;
    let compression = usize::from(c.u8()?);
    if compression == 0 {
        return Err(Stop::NotTls);
    }
    body.take(compression)?;
    c.skip(compression)?;
    let mut hello = ClientHello::empty();
    if body.0 == 0 {
        return Ok(hello);
    }
    body.take(2)?;
    let extensions = c.u16()?;
    body.take(extensions)?;
    if body.0 != 0 {
        return Err(Stop::NotTls);
    }
    parse_extensions(c, extensions, &mut hello)?;
    Ok(hello)
}

fn parse_extensions(c: &mut Records, len: usize, hello: &mut ClientHello) -> Result<(), Stop> {
    let mut all = Budget(len);
    while all.0 > 0 {
        all.take(4)?;
        let kind = c.u16()? as u16;
        let ext_len = c.u16()?;
        all.take(ext_len)?;
        match kind {
            EXTENSION_SERVER_NAME if !hello.has_sni => parse_server_name(c, ext_len, hello)?,
            EXTENSION_ALPN if !hello.has_alpn => parse_alpn(c, ext_len, hello)?,
            // BoringSSL refuses a hello that repeats an extension.
            EXTENSION_SERVER_NAME | EXTENSION_ALPN => return Err(Stop::NotTls),
            _ => c.skip(ext_len)?,
        }
    }
    Ok(())
}

/// `server_name`: a list of names; the `host_name` one is kept (BoringSSL's rule: exactly
/// one entry, a host name, not empty and without NUL).
fn parse_server_name(c: &mut Records, len: usize, hello: &mut ClientHello) -> Result<(), Stop> {
    let mut ext = Budget(len);
    ext.take(2)?;
    let list = c.u16()?;
    ext.take(list)?;
    if ext.0 != 0 || list < 3 {
        return Err(Stop::NotTls);
    }
    let mut entries = Budget(list - 3);
    let name_type = c.u8()?;
    let name_len = c.u16()?;
    entries.take(name_len)?;
    if name_type != NAME_TYPE_HOST || entries.0 != 0 || name_len == 0 {
        return Err(Stop::NotTls);
    }
    if name_len > MAX_SERVER_NAME_BYTES {
        return Err(Stop::NotTls);
    }
    c.copy(&mut hello.sni, name_len)?;
    if hello.sni[..name_len].contains(&0) {
        return Err(Stop::NotTls);
    }
    hello.sni_len = name_len as u8;
    hello.has_sni = true;
    Ok(())
}

/// `application_layer_protocol_negotiation`: a list of non-empty names; whole entries are
/// kept up to [`MAX_ALPN_LIST_BYTES`].
fn parse_alpn(c: &mut Records, len: usize, hello: &mut ClientHello) -> Result<(), Stop> {
    let mut ext = Budget(len);
    ext.take(2)?;
    let list = c.u16()?;
    ext.take(list)?;
    if ext.0 != 0 || list < 2 {
        return Err(Stop::NotTls);
    }
    let mut entries = Budget(list);
    let mut kept = 0usize;
    let mut full = false;
    while entries.0 > 0 {
        entries.take(1)?;
        let name_len = usize::from(c.u8()?);
        if name_len == 0 {
            return Err(Stop::NotTls);
        }
        entries.take(name_len)?;
        if full || kept + 1 + name_len > MAX_ALPN_LIST_BYTES {
            full = true;
            c.skip(name_len)?;
            continue;
        }
        hello.alpn[kept] = name_len as u8;
        c.copy(&mut hello.alpn[kept + 1..], name_len)?;
        kept += 1 + name_len;
    }
    hello.alpn_len = kept as u16;
    hello.has_alpn = true;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello message (handshake header included) with these extensions.
    fn hello_message(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = sni {
            let n = name.len() as u16;
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(n + 5).to_be_bytes());
            ext.extend_from_slice(&(n + 3).to_be_bytes());
            ext.push(0);
            ext.extend_from_slice(&n.to_be_bytes());
            ext.extend_from_slice(name.as_bytes());
        }
        if !alpn.is_empty() {
            let list: Vec<u8> = alpn
                .iter()
                .flat_map(|p| std::iter::once(p.len() as u8).chain(p.bytes()))
                .collect();
            ext.extend_from_slice(&16u16.to_be_bytes());
            ext.extend_from_slice(&(list.len() as u16 + 2).to_be_bytes());
            ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
            ext.extend_from_slice(&list);
        }
        // An unrelated extension (supported_versions) to step over.
        ext.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// `msg` in records of at most `chunk` bytes each.
    fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
        msg.chunks(chunk)
            .flat_map(|c| {
                let mut r = vec![CONTENT_HANDSHAKE, 3, 1];
                r.extend_from_slice(&(c.len() as u16).to_be_bytes());
                r.extend_from_slice(c);
                r
            })
            .collect()
    }

    fn hello(bytes: &[u8]) -> ClientHello {
        match inspect(bytes, DEFAULT_MAX_CLIENT_HELLO_BYTES as usize) {
            Inspected::Hello(h) => h,
            other => panic!("not a hello: {other:?}"),
        }
    }

    #[test]
    fn reads_server_name_and_alpn() {
        let h = hello(&records(
            &hello_message(Some("a.example.com"), &["h2", "http/1.1"]),
            16384,
        ));
        assert_eq!(h.server_name(), Some(&b"a.example.com"[..]));
        assert!(h.offers_alpn());
        let alpn: Vec<&[u8]> = h.alpn().collect();
        assert_eq!(alpn, vec![&b"h2"[..], &b"http/1.1"[..]]);
    }

    #[test]
    fn a_hello_without_extensions_has_neither() {
        let h = hello(&records(&hello_message(None, &[]), 16384));
        assert_eq!(h.server_name(), None);
        assert!(!h.offers_alpn());
    }

    #[test]
    fn every_prefix_needs_more_and_records_may_split_the_message() {
        for chunk in [1, 7, 100, 16384] {
            let stream = records(&hello_message(Some("b.example.com"), &["h2"]), chunk);
            for end in 0..stream.len() {
                assert_eq!(
                    inspect(&stream[..end], 16384),
                    Inspected::NeedMore,
                    "chunk {chunk}, {end} bytes"
                );
            }
            let h = hello(&stream);
            assert_eq!(h.server_name(), Some(&b"b.example.com"[..]));
        }
    }

    #[test]
    fn plaintext_is_not_tls_from_its_first_byte() {
        assert_eq!(inspect(b"G", 16384), Inspected::NotTls);
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n", 16384), Inspected::NotTls);
        assert_eq!(inspect(&[22, 2], 16384), Inspected::NotTls);
        // An alert record, a handshake that is not a ClientHello.
        assert_eq!(inspect(&[21, 3, 3, 0, 2, 2, 40], 16384), Inspected::NotTls);
        assert_eq!(
            inspect(&[22, 3, 3, 0, 4, 2, 0, 0, 0], 16384),
            Inspected::NotTls
        );
    }

    #[test]
    fn a_malformed_hello_is_not_tls() {
        let mut msg = hello_message(Some("a.example.com"), &[]);
        // Session id longer than 32.
        msg[4 + 34] = 40;
        assert_eq!(inspect(&records(&msg, 16384), 16384), Inspected::NotTls);
    }

    #[test]
    fn too_large_by_its_length_or_by_what_came() {
        let msg = hello_message(Some("a.example.com"), &["h2"]);
        let stream = records(&msg, 16384);
        assert_eq!(inspect(&stream, 300), Inspected::Hello(hello(&stream)));
        assert_eq!(inspect(&stream, 40), Inspected::TooLarge);
        // A header claiming 20 KiB: too large at once.
        assert_eq!(
            inspect(&[22, 3, 1, 0, 4, 1, 0, 0x50, 0], 16384),
            Inspected::TooLarge
        );
        // One-byte records: the headers count too.
        let split = records(&msg, 1);
        assert_eq!(inspect(&split[..200], 200), Inspected::TooLarge);
    }

    #[test]
    fn a_long_alpn_list_keeps_whole_entries() {
        let names: Vec<String> = (0..40).map(|i| format!("protocol-{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let h = hello(&records(&hello_message(None, &refs), 16384));
        let kept: Vec<&[u8]> = h.alpn().collect();
        assert!(kept.len() < 40 && !kept.is_empty());
        assert!(kept.iter().zip(&names).all(|(k, n)| *k == n.as_bytes()));
    }

    /// rustls' own ClientHello, as a client sends it.
    fn rustls_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_what_rustls_sends() {
        let h = hello(&rustls_hello("api.example.com", &["h2", "http/1.1"]));
        assert_eq!(h.server_name(), Some(&b"api.example.com"[..]));
        let alpn: Vec<&[u8]> = h.alpn().collect();
        assert_eq!(alpn, vec![&b"h2"[..], &b"http/1.1"[..]]);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), max in 0usize..20000) {
            let _ = inspect(&bytes, max);
        }

        #[test]
        fn never_panics_on_damaged_hellos(
            sni in "[a-z.]{1,40}",
            chunk in 1usize..300,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut stream = records(&hello_message(Some(&sni), &["h2"]), chunk);
            let whole = stream.clone();
            let parsed = hello(&whole);
            prop_assert_eq!(parsed.server_name(), Some(sni.as_bytes()));
            for (at, b) in flips {
                let i = at % stream.len();
                stream[i] = b;
            }
            let end = cut % (stream.len() + 1);
            let _ = inspect(&stream[..end], 16384);
        }
    }
}
