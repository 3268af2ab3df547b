//! PROXY protocol headers, versions 1 and 2 (HAProxy's `proxy-protocol.txt`), as
//! `envoy.filters.listener.proxy_protocol` reads them from a connection's first bytes: the
//! addresses the proxy in front declares, and version 2's TLVs.
//!
//! Guarantees:
//! - **Incremental.** [`parse`] takes everything received so far, from the stream's first
//!   byte; while the bytes are a prefix of a header it answers [`Parsed::NeedMore`], so a
//!   header sent one byte per segment is read whole once its last byte is in, and the bytes
//!   after it (the stream's own, sent in the same segment or not) are left alone
//!   ([`Header::len`]).
//! - **Bounded.** A version 1 header is at most 107 bytes (the specification's limit); a
//!   version 2 header longer than the caller's limit is [`Parsed::TooLarge`] as soon as its
//!   length field is in.
//! - **No allocation, no panic.** Addresses are parsed from the input in place and TLVs are
//!   handed out as slices of it ([`Header::tlvs`]); any input, however malformed, gives an
//!   answer (`proptest` below feeds arbitrary bytes).
//! - **Strict where the specification is.** Version 1: `PROXY`, one space between fields,
//!   `TCP4` with IPv4 addresses, `TCP6` with IPv6 ones, decimal ports up to 65535, `CRLF`;
//!   `UNKNOWN` declares nothing (the connection's own addresses stand). Version 2: the
//!   12-byte signature, version 2, command `LOCAL` (declares nothing) or `PROXY`, families
//!   `UNSPEC` (nothing), `INET` and `INET6`; `UNIX` addresses are refused, as Envoy refuses
//!   them; every TLV must fit the header exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, `CRLF` included.
pub const V1_MAX_BYTES: usize = 107;
/// A version 2 header's fixed part: signature, version and command, family, length.
pub const V2_FIXED_BYTES: usize = 16;

const V1_PREFIX: &[u8] = b"PROXY ";

/// Which version a header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A version 1 header without `CRLF` within 107 bytes, or a field that does not parse.
    V1Malformed,
    /// A version 2 header whose version, command, family or transport is not one the
    /// specification defines, or whose length is too short for its addresses.
    V2Malformed,
    /// A version 2 header declaring `AF_UNIX` addresses (refused, as Envoy refuses them).
    V2UnixAddresses,
    /// A version 2 TLV that runs past the header's end.
    V2BadTlv,
}

impl ParseError {
    /// The version of the header that was refused.
    pub fn version(self) -> Version {
        match self {
            ParseError::V1Malformed => Version::V1,
            _ => Version::V2,
        }
    }
}

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// Bytes the header takes: the stream's own bytes begin after them.
    pub len: usize,
    /// The declared (source, destination); `None` for `LOCAL`, `UNKNOWN` and `UNSPEC`, where
    /// the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// Where version 2's TLVs lie in the input (empty for version 1).
    tlvs: (usize, usize),
}

impl Header {
    /// The TLVs of a version 2 header, from `input` (the bytes it was parsed from).
    pub fn tlvs<'a>(&self, input: &'a [u8]) -> Tlvs<'a> {
        Tlvs {
            rest: input.get(self.tlvs.0..self.tlvs.1).unwrap_or_default(),
        }
    }
}

/// What [`parse`] made of a stream's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header: read more.
    NeedMore,
    /// The bytes cannot begin a header of either version.
    NotProxy,
    /// A version 2 header longer than the limit.
    TooLarge,
    /// A header that is refused.
    Error(ParseError),
    /// A whole header.
    Header(Header),
}

/// Reads a PROXY protocol header from `bytes`, the stream's first bytes; a version 2
/// header may be at most `max_v2_bytes` long.
pub fn parse(bytes: &[u8], max_v2_bytes: usize) -> Parsed {
    if is_prefix_of(bytes, &V2_SIGNATURE) {
        if bytes.len() < V2_SIGNATURE.len() {
            return Parsed::NeedMore;
        }
        return parse_v2(bytes, max_v2_bytes);
    }
    if is_prefix_of(bytes, V1_PREFIX) {
        if bytes.len() < V1_PREFIX.len() {
            return Parsed::NeedMore;
        }
        return parse_v1(bytes);
    }
    Parsed::NotProxy
}

/// Which versions a listener takes, and whether a stream without a header may pass
/// (Envoy's `disallowed_versions` and `allow_requests_without_proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acceptance {
    pub v1: bool,
    pub v2: bool,
    pub allow_without_header: bool,
}

impl Acceptance {
    fn takes(self, version: Version) -> bool {
        match version {
            Version::V1 => self.v1,
            Version::V2 => self.v2,
        }
    }
}

/// What a listener does with a stream's first bytes ([`judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// They may still become a header: read more.
    NeedMore,
    /// No header (or, with `allow_without_header`, one of a version not taken, which is
    /// then the stream's own bytes).
    NotFound,
    /// A header of a version the listener does not take (without `allow_without_header`).
    Disallowed(Version),
    /// A malformed header of this version (or a version 2 one longer than the limit).
    Error(Version),
    /// A whole header of a version the listener takes.
    Header(Header),
}

/// Judges a stream's first `bytes` as Envoy's `envoy.filters.listener.proxy_protocol` does:
/// a version not taken is known by its signature alone (and, with `allow_without_header`,
/// its signature is not even looked for); a taken one is parsed whole.
pub fn judge(bytes: &[u8], acceptance: Acceptance, max_v2_bytes: usize) -> Verdict {
    let looked_for = |v: Version| acceptance.takes(v) || !acceptance.allow_without_header;
    let v2 = looked_for(Version::V2) && is_prefix_of(bytes, &V2_SIGNATURE);
    let v1 = looked_for(Version::V1) && is_prefix_of(bytes, V1_PREFIX);
    let version = match (v1, v2) {
        (false, false) => return Verdict::NotFound,
        (true, _) if bytes.len() >= V1_PREFIX.len() => Version::V1,
        (_, true) if bytes.len() >= V2_SIGNATURE.len() => Version::V2,
        _ => return Verdict::NeedMore,
    };
    if !acceptance.takes(version) {
        return Verdict::Disallowed(version);
    }
    match parse(bytes, max_v2_bytes) {
        Parsed::NeedMore => Verdict::NeedMore,
        Parsed::Header(h) => Verdict::Header(h),
        Parsed::Error(e) => Verdict::Error(e.version()),
        Parsed::TooLarge => Verdict::Error(Version::V2),
        // The signature matched: `parse` sees the same.
        Parsed::NotProxy => Verdict::NotFound,
    }
}

/// Whether `bytes` and `signature` agree on their common length.
fn is_prefix_of(bytes: &[u8], signature: &[u8]) -> bool {
    let n = bytes.len().min(signature.len());
    bytes[..n] == signature[..n]
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    let window = &bytes[..bytes.len().min(V1_MAX_BYTES)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX_BYTES {
            Parsed::Error(ParseError::V1Malformed)
        } else {
            Parsed::NeedMore
        };
    };
    let line = &bytes[V1_PREFIX.len()..cr];
    match v1_addresses(line) {
        Some(addresses) => Parsed::Header(Header {
            version: Version::V1,
            len: cr + 2,
            addresses,
            tlvs: (0, 0),
        }),
        None => Parsed::Error(ParseError::V1Malformed),
    }
}

/// The fields after `PROXY `: `UNKNOWN[ anything]`, or the protocol and four fields.
fn v1_addresses(line: &[u8]) -> Option<Option<(SocketAddr, SocketAddr)>> {
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Some(None);
    }
    let mut fields = line.split(|&b| b == b' ');
    let family = fields.next()?;
    let (src, dst) = (fields.next()?, fields.next()?);
    let (sport, dport) = (fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let (src, dst): (IpAddr, IpAddr) = match family {
        b"TCP4" => (
            ascii::<Ipv4Addr>(src)?.into(),
            ascii::<Ipv4Addr>(dst)?.into(),
        ),
        b"TCP6" => (
            ascii::<Ipv6Addr>(src)?.into(),
            ascii::<Ipv6Addr>(dst)?.into(),
        ),
        _ => return None,
    };
    let (sport, dport) = (v1_port(sport)?, v1_port(dport)?);
    Some(Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    )))
}

/// An address parsed from ASCII bytes.
fn ascii<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// A decimal port, 0 to 65535, digits only.
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || field.len() > 5 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    ascii::<u16>(field)
}

fn parse_v2(bytes: &[u8], max_v2_bytes: usize) -> Parsed {
    if bytes.len() < V2_FIXED_BYTES {
        return Parsed::NeedMore;
    }
    let (ver_cmd, family) = (bytes[12], bytes[13]);
    let len = V2_FIXED_BYTES + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if ver_cmd >> 4 != 2 || ver_cmd & 0x0f > 1 || family >> 4 > 3 || family & 0x0f > 2 {
        return Parsed::Error(ParseError::V2Malformed);
    }
    if len > max_v2_bytes {
        return Parsed::TooLarge;
    }
    if bytes.len() < len {
        return Parsed::NeedMore;
    }
    let local = ver_cmd & 0x0f == 0;
    let body = &bytes[V2_FIXED_BYTES..len];
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    let (addresses, taken) = match family >> 4 {
        _ if local => (None, body.len()),
        0 => (None, body.len()),
        1 if body.len() >= 12 => {
            let ip = |at: usize| IpAddr::from([body[at], body[at + 1], body[at + 2], body[at + 3]]);
            let src = SocketAddr::new(ip(0), port(8));
            let dst = SocketAddr::new(ip(4), port(10));
            (Some((src, dst)), 12)
        }
        2 if body.len() >= 36 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                IpAddr::from(octets)
            };
            let src = SocketAddr::new(ip(0), port(32));
            let dst = SocketAddr::new(ip(16), port(34));
            (Some((src, dst)), 36)
        }
        3 => return Parsed::Error(ParseError::V2UnixAddresses),
        _ => return Parsed::Error(ParseError::V2Malformed),
    };
    let tlvs = (V2_FIXED_BYTES + taken, len);
    if !local && !Tlvs::fill(&bytes[tlvs.0..tlvs.1]) {
        return Parsed::Error(ParseError::V2BadTlv);
    }
    Parsed::Header(Header {
        version: Version::V2,
        len,
        addresses,
        tlvs: if local { (len, len) } else { tlvs },
    })
}

/// A version 2 header's TLVs: (type, value).
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl Tlvs<'_> {
    /// Whether whole TLVs fill `region` exactly (iterating stops at one that runs past it).
    fn fill(region: &[u8]) -> bool {
        let mut tlvs = Tlvs { rest: region };
        tlvs.by_ref().for_each(drop);
        tlvs.rest.is_empty()
    }
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let [typ, hi, lo, tail @ ..] = self.rest else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value = tail.get(..len)?;
        self.rest = &tail[len..];
        Some((*typ, value))
    }
}

/// The longest header [`write`] makes without TLVs: a version 2 header with IPv6 addresses.
pub const MAX_HEADER_BYTES_WITHOUT_TLVS: usize = V2_FIXED_BYTES + 36;

/// Writes a header of `version` declaring `addresses` (source, destination) into `out`, with
/// `tlvs` (whole TLVs, already encoded) after a version 2 header's addresses; `None` when
/// `out` is too small. Both addresses of one family are declared as such (an IPv4-mapped
/// IPv6 address counts as IPv4); no addresses, or addresses of two families, declare
/// nothing: version 1's `UNKNOWN`, version 2's `UNSPEC` (with the `PROXY` command, as
/// Envoy writes it). Version 1 carries no TLVs.
pub fn write(
    out: &mut [u8],
    version: Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: &[u8],
) -> Option<usize> {
    let addresses = addresses.and_then(|(src, dst)| same_family(src, dst));
    match version {
        Version::V1 => write_v1(out, addresses),
        Version::V2 => write_v2(out, addresses, tlvs),
    }
}

/// The pair with IPv4-mapped addresses made IPv4, if both are then of one family.
fn same_family(src: SocketAddr, dst: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
    let plain = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(v4.into(), a.port())),
        IpAddr::V4(_) => a,
    };
    let (src, dst) = (plain(src), plain(dst));
    (src.is_ipv4() == dst.is_ipv4()).then_some((src, dst))
}

fn write_v1(out: &mut [u8], addresses: Option<(SocketAddr, SocketAddr)>) -> Option<usize> {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(out);
    let written = match addresses {
        None => cursor.write_all(b"PROXY UNKNOWN\r\n"),
        Some((src, dst)) => write!(
            cursor,
            "PROXY {} {} {} {} {}\r\n",
            if src.is_ipv4() { "TCP4" } else { "TCP6" },
            src.ip(),
            dst.ip(),
            src.port(),
            dst.port()
        ),
    };
    written.ok().map(|()| cursor.position() as usize)
}

fn write_v2(
    out: &mut [u8],
    addresses: Option<(SocketAddr, SocketAddr)>,
    tlvs: &[u8],
) -> Option<usize> {
    let address_bytes = match addresses {
        None => 0,
        Some((src, _)) if src.is_ipv4() => 12,
        Some(_) => 36,
    };
    let body = address_bytes + tlvs.len();
    let len = V2_FIXED_BYTES + body;
    let body_len = u16::try_from(body).ok()?;
    let out = out.get_mut(..len)?;
    out[..12].copy_from_slice(&V2_SIGNATURE);
    out[12] = 0x21; // version 2, PROXY
    out[13] = match addresses {
        None => 0x00,
        Some((src, _)) if src.is_ipv4() => 0x11,
        Some(_) => 0x21,
    };
    out[14..16].copy_from_slice(&body_len.to_be_bytes());
    let mut at = V2_FIXED_BYTES;
    if let Some((src, dst)) = addresses {
        for ip in [src.ip(), dst.ip()] {
            let octets: &[u8] = match &ip {
                IpAddr::V4(v4) => &v4.octets(),
                IpAddr::V6(v6) => &v6.octets(),
            };
            out[at..at + octets.len()].copy_from_slice(octets);
            at += octets.len();
        }
        for port in [src.port(), dst.port()] {
            out[at..at + 2].copy_from_slice(&port.to_be_bytes());
            at += 2;
        }
    }
    out[at..].copy_from_slice(tlvs);
    Some(len)
}

/// A set of TLV types (`pass_through_tlvs`): all 256, or those listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlvTypes([u64; 4]);

impl TlvTypes {
    /// Every type (`INCLUDE_ALL`).
    pub const ALL: TlvTypes = TlvTypes([u64::MAX; 4]);

    /// The types in `types` (`INCLUDE`).
    pub fn of(types: impl IntoIterator<Item = u8>) -> TlvTypes {
        let mut set = TlvTypes::default();
        for t in types {
            set.0[usize::from(t / 64)] |= 1 << (t % 64);
        }
        set
    }

    pub fn contains(&self, t: u8) -> bool {
        self.0[usize::from(t / 64)] & (1 << (t % 64)) != 0
    }

    /// These types but those in `other`.
    pub fn without(&self, other: &TlvTypes) -> TlvTypes {
        TlvTypes(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    /// Whether no type is in the set.
    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// The whole TLVs of `tlvs` (encoded) whose type is in `types`, appended to `out` encoded.
pub fn keep_tlvs(out: &mut Vec<u8>, tlvs: &[u8], types: &TlvTypes) {
    for (kind, value) in (Tlvs { rest: tlvs }).filter(|(t, _)| types.contains(*t)) {
        // A value read from a TLV fits one.
        let _ = encode_tlv(out, kind, value);
    }
}

/// [`write`], with the TLVs of `passed` (encoded, from the downstream header) whose type is
/// in `keep`, then `added` (encoded), after a version 2 header's addresses; `None` when
/// `out` is too small or the TLVs exceed a header's 65,535 bytes. Version 1 carries none.
pub fn write_passing(
    out: &mut [u8],
    version: Version,
    addresses: Option<(SocketAddr, SocketAddr)>,
    passed: &[u8],
    keep: &TlvTypes,
    added: &[u8],
) -> Option<usize> {
    let mut len = write(out, version, addresses, &[])?;
    if version == Version::V1 {
        return Some(len);
    }
    for (kind, value) in (Tlvs { rest: passed }).filter(|(t, _)| keep.contains(*t)) {
        let value_len = u16::try_from(value.len()).ok()?;
        let dst = out.get_mut(len..len + 3 + value.len())?;
        dst[0] = kind;
        dst[1..3].copy_from_slice(&value_len.to_be_bytes());
        dst[3..].copy_from_slice(value);
        len += 3 + value.len();
    }
    out.get_mut(len..len + added.len())?.copy_from_slice(added);
    len += added.len();
    let body = u16::try_from(len - V2_FIXED_BYTES).ok()?;
    out[14..16].copy_from_slice(&body.to_be_bytes());
    Some(len)
}

/// Appends the TLV (`kind`, `value`) to `out`; `None` when `value` is longer than a TLV
/// holds (65,535 bytes).
pub fn encode_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Option<()> {
    let len = u16::try_from(value.len()).ok()?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A version 2 header: `command` 1 (PROXY) or 0 (LOCAL), `family` byte, `body`.
    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn inet_body(tlvs: &[u8]) -> Vec<u8> {
        let mut b = vec![192, 0, 2, 1, 198, 51, 100, 7];
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b.extend_from_slice(tlvs);
        b
    }

    const ALL: Acceptance = Acceptance {
        v1: true,
        v2: true,
        allow_without_header: false,
    };

    #[test]
    fn judged_by_signature_then_parsed() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\nhello";
        let Verdict::Header(h) = judge(v1, ALL, 4096) else {
            panic!("a version 1 header")
        };
        assert_eq!(&v1[h.len..], b"hello");
        assert_eq!(judge(b"PROX", ALL, 4096), Verdict::NeedMore);
        assert_eq!(judge(b"\r\n\r\n", ALL, 4096), Verdict::NeedMore);
        assert_eq!(judge(b"GET / HTTP/1.1\r\n", ALL, 4096), Verdict::NotFound);
        assert_eq!(
            judge(b"PROXY TCP4 1.2.3.4\r\n", ALL, 4096),
            Verdict::Error(Version::V1)
        );
        let long = v2(1, 0x11, &[0u8; 400]);
        assert_eq!(judge(&long, ALL, 100), Verdict::Error(Version::V2));
    }

    #[test]
    fn versions_not_taken_are_refused_or_not_looked_for() {
        let v1 = b"PROXY UNKNOWN\r\n";
        let v2_local = v2(0, 0, &[]);
        let strict = Acceptance { v1: false, ..ALL };
        assert_eq!(
            judge(b"PROXY ", strict, 4096),
            Verdict::Disallowed(Version::V1)
        );
        assert_eq!(judge(b"PROX", strict, 4096), Verdict::NeedMore);
        assert!(matches!(judge(&v2_local, strict, 4096), Verdict::Header(_)));
        let lenient = Acceptance {
            allow_without_header: true,
            ..strict
        };
        // The version 1 signature is not looked for: those bytes are the stream's own.
        assert_eq!(judge(v1, lenient, 4096), Verdict::NotFound);
        assert_eq!(judge(b"PROX", lenient, 4096), Verdict::NotFound);
        assert_eq!(judge(b"\r\n", lenient, 4096), Verdict::NeedMore);
        let no_v2 = Acceptance {
            v2: false,
            allow_without_header: false,
            ..ALL
        };
        assert_eq!(
            judge(&v2_local, no_v2, 4096),
            Verdict::Disallowed(Version::V2)
        );
    }

    #[test]
    fn version_1_tcp4_tcp6_and_unknown() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\nGET /";
        let Parsed::Header(p) = parse(h, 4096) else {
            panic!()
        };
        assert_eq!(p.version, Version::V1);
        assert_eq!(&h[p.len..], b"GET /");
        assert_eq!(
            p.addresses,
            Some((addr("192.0.2.1:40000"), addr("198.51.100.7:443")))
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        let Parsed::Header(p) = parse(h, 4096) else {
            panic!()
        };
        assert_eq!(
            p.addresses,
            Some((addr("[2001:db8::1]:1"), addr("[2001:db8::2]:65535")))
        );
        for unknown in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 x y z\r\n",
        ] {
            let Parsed::Header(p) = parse(unknown, 4096) else {
                panic!()
            };
            assert_eq!((p.addresses, p.len), (None, unknown.len()));
        }
    }

    #[test]
    fn version_1_refuses_what_the_specification_does() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 65536\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2 3\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n",
        ] {
            assert_eq!(
                parse(bad, 4096),
                Parsed::Error(ParseError::V1Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // No CRLF within 107 bytes.
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(parse(&long, 4096), Parsed::Error(ParseError::V1Malformed));
        assert_eq!(parse(&long[..90], 4096), Parsed::NeedMore);
    }

    #[test]
    fn version_2_inet_inet6_local_unspec_and_tlvs() {
        let tlvs = [0x01, 0, 2, b'h', b'2', 0xea, 0, 3, 1, 2, 3];
        let h = [v2(1, 0x11, &inet_body(&tlvs)), b"data".to_vec()].concat();
        let Parsed::Header(p) = parse(&h, 4096) else {
            panic!()
        };
        assert_eq!(p.version, Version::V2);
        assert_eq!(&h[p.len..], b"data");
        assert_eq!(
            p.addresses,
            Some((addr("192.0.2.1:40000"), addr("198.51.100.7:443")))
        );
        let got: Vec<_> = p.tlvs(&h).collect();
        assert_eq!(got, [(0x01, &b"h2"[..]), (0xea, &[1, 2, 3][..])]);

        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&[0, 80, 1, 187]);
        let Parsed::Header(p) = parse(&v2(1, 0x21, &body6), 4096) else {
            panic!()
        };
        assert_eq!(
            p.addresses,
            Some((addr("[2001:db8::1]:80"), addr("[2001:db8::2]:443")))
        );
        // LOCAL (a health check from the proxy itself) and UNSPEC declare nothing.
        for h in [v2(0, 0x11, &inet_body(&[])), v2(1, 0x00, &[9, 9, 9])] {
            let Parsed::Header(p) = parse(&h, 4096) else {
                panic!()
            };
            assert_eq!((p.addresses, p.len), (None, h.len()));
        }
    }

    #[test]
    fn passed_tlvs_are_filtered_and_added_ones_follow() {
        let mut passed = Vec::new();
        for (t, v) in [(0xe0u8, &b"abc"[..]), (0xe1, b"def"), (0x01, b"h2")] {
            encode_tlv(&mut passed, t, v).unwrap();
        }
        let mut kept = Vec::new();
        keep_tlvs(&mut kept, &passed, &TlvTypes::of([0xe0, 0x01]));
        let mut added = Vec::new();
        encode_tlv(&mut added, 0x01, b"override").unwrap();
        let keep = TlvTypes::ALL.without(&TlvTypes::of([0x01]));
        let (src, dst) = (addr("192.0.2.1:1000"), addr("198.51.100.2:443"));
        let mut out = [0u8; 256];
        let n = write_passing(
            &mut out,
            Version::V2,
            Some((src, dst)),
            &kept,
            &keep,
            &added,
        )
        .unwrap();
        let Parsed::Header(h) = parse(&out[..n], 65_551) else {
            panic!("a header")
        };
        assert_eq!(h.len, n);
        assert_eq!(h.addresses, Some((src, dst)));
        let tlvs: Vec<_> = h.tlvs(&out[..n]).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(
            tlvs,
            [(0xe0, b"abc".to_vec()), (0x01, b"override".to_vec())],
            "0xE1 not passed by the listener, 0x01 replaced by the added one"
        );
        let v1 = write_passing(
            &mut out,
            Version::V1,
            Some((src, dst)),
            &kept,
            &keep,
            &added,
        );
        assert!(v1.is_some_and(|n| out[..n].starts_with(b"PROXY TCP4 ")));
        assert!(TlvTypes::default().is_empty() && !TlvTypes::ALL.is_empty());
    }

    #[test]
    fn version_2_refuses_unix_bad_fields_bad_tlvs_and_too_long() {
        let unix = v2(1, 0x31, &[0u8; 216]);
        assert_eq!(
            parse(&unix, 4096),
            Parsed::Error(ParseError::V2UnixAddresses)
        );
        let mut bad_version = v2(1, 0x11, &inet_body(&[]));
        bad_version[12] = 0x31;
        assert_eq!(
            parse(&bad_version, 4096),
            Parsed::Error(ParseError::V2Malformed)
        );
        assert_eq!(
            parse(&v2(2, 0x11, &inet_body(&[])), 4096),
            Parsed::Error(ParseError::V2Malformed)
        );
        assert_eq!(
            parse(&v2(1, 0x11, &[1, 2, 3]), 4096),
            Parsed::Error(ParseError::V2Malformed),
            "too short for its addresses"
        );
        assert_eq!(
            parse(&v2(1, 0x11, &inet_body(&[0x01, 0, 5, b'x'])), 4096),
            Parsed::Error(ParseError::V2BadTlv)
        );
        // Longer than the limit: known from the length field alone.
        let big = v2(1, 0x11, &[0u8; 200]);
        assert_eq!(parse(&big[..16], 100), Parsed::TooLarge);
    }

    #[test]
    fn every_prefix_of_a_header_needs_more_and_other_bytes_are_not_proxy() {
        let headers = [
            b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n".to_vec(),
            v2(1, 0x11, &inet_body(&[0x01, 0, 2, b'h', b'2'])),
        ];
        for h in &headers {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n], 4096), Parsed::NeedMore, "prefix {n}");
            }
            assert!(matches!(parse(h, 4096), Parsed::Header(_)));
        }
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PROXZ",
            b"\r\n\r\n\x01",
        ] {
            assert_eq!(parse(other, 4096), Parsed::NotProxy);
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes, 4096);
        }

        #[test]
        fn never_panics_on_damaged_headers(
            at in 0usize..60,
            value in any::<u8>(),
            cut in 0usize..60,
        ) {
            for mut h in [
                b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n".to_vec(),
                v2(1, 0x11, &inet_body(&[0x01, 0, 2, b'h', b'2'])),
            ] {
                let at = at % h.len();
                h[at] = value;
                h.truncate(h.len() - cut.min(h.len()));
                if let Parsed::Header(p) = parse(&h, 4096) {
                    prop_assert!(p.len <= h.len());
                    let _ = p.tlvs(&h).count();
                }
            }
        }

        /// What [`write`] makes, [`parse`] reads back: the version, the addresses (or
        /// none), the TLVs, and the length.
        #[test]
        fn written_headers_parse_back(
            v4 in any::<bool>(),
            mixed in any::<bool>(),
            ports in any::<(u16, u16)>(),
            octets in any::<[u8; 32]>(),
            v2_header in any::<bool>(),
            values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4),
        ) {
            let ip = |at: usize| -> IpAddr {
                if v4 {
                    IpAddr::from([octets[at], octets[at + 1], octets[at + 2], octets[at + 3]])
                } else {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(&octets[at..at + 16]);
                    IpAddr::from(o)
                }
            };
            let src = SocketAddr::new(ip(0), ports.0);
            let dst = if mixed {
                SocketAddr::new(IpAddr::from([10, 0, 0, 1]), ports.1)
            } else {
                SocketAddr::new(ip(16), ports.1)
            };
            let mut tlvs = Vec::new();
            for (i, v) in values.iter().enumerate() {
                encode_tlv(&mut tlvs, 0xe0 + i as u8, v).unwrap();
            }
            let version = if v2_header { Version::V2 } else { Version::V1 };
            let mut out = [0u8; 512];
            let n = write(&mut out, version, Some((src, dst)), &tlvs).unwrap();
            let Parsed::Header(h) = parse(&out[..n], 4096) else {
                panic!("{:?}", &out[..n])
            };
            prop_assert_eq!(h.len, n);
            prop_assert_eq!(h.version, version);
            let expected = same_family(src, dst);
            prop_assert_eq!(h.addresses, expected);
            // TLVs after `UNSPEC` addresses are discarded with them, as the
            // specification tells a receiver.
            if v2_header && expected.is_some() {
                let got: Vec<(u8, Vec<u8>)> =
                    h.tlvs(&out[..n]).map(|(t, v)| (t, v.to_vec())).collect();
                let want: Vec<(u8, Vec<u8>)> =
                    values.iter().enumerate().map(|(i, v)| (0xe0 + i as u8, v.clone())).collect();
                prop_assert_eq!(got, want);
            }
        }

        /// However the bytes arrive (the worker judges what it holds after each receive),
        /// the first verdict that is not `NeedMore` is the one every longer prefix gets: a
        /// header read one byte per segment is the header read at once.
        #[test]
        fn the_verdict_does_not_depend_on_how_the_bytes_arrive(
            which in 0usize..4,
            tail in proptest::collection::vec(any::<u8>(), 0..40),
            v1 in any::<bool>(),
            v2_taken in any::<bool>(),
            allow in any::<bool>(),
        ) {
            let mut bytes = match which {
                0 => b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n".to_vec(),
                1 => v2(1, 0x11, &inet_body(&[0x01, 0, 2, b'h', b'2'])),
                2 => v2(0, 0, &[]),
                _ => Vec::new(),
            };
            bytes.extend_from_slice(&tail);
            let acceptance = Acceptance { v1, v2: v2_taken, allow_without_header: allow };
            let whole = judge(&bytes, acceptance, 4096);
            let first = (0..=bytes.len())
                .map(|n| judge(&bytes[..n], acceptance, 4096))
                .find(|v| *v != Verdict::NeedMore);
            if let Some(first) = first {
                prop_assert_eq!(first, whole);
            } else {
                prop_assert_eq!(whole, Verdict::NeedMore);
            }
        }
    }
}
