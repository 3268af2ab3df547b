//! Envoy's TLS command operators (`%DOWNSTREAM_PEER_URI_SAN%`, `%UPSTREAM_TLS_VERSION%`, ...).
//!
//! The worker puts into a record only what it has at hand when the connection closes: the
//! negotiated version and cipher, the SNI, the peer's leaf certificate (DER, one copy) and a
//! failed handshake's reason, once per connection and only when one of its sinks uses a TLS
//! operator. Everything derived from the certificate (SANs, subject, issuer, serial,
//! fingerprint) is parsed here, on the access-log thread, at most once per record.

use crate::tls::verify::serial_hex;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// Which connection of the pair an operator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSideSel {
    /// `DOWNSTREAM_*`: the client's connection.
    Downstream,
    /// `UPSTREAM_*`: the backend's connection.
    Upstream,
}

/// What a TLS operator renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsField {
    /// `*_PEER_URI_SAN`: the peer certificate's URI SANs, comma-joined.
    PeerUriSan,
    /// `*_PEER_DNS_SAN`.
    PeerDnsSan,
    /// `*_PEER_IP_SAN`.
    PeerIpSan,
    /// `*_PEER_SUBJECT`: RFC 2253.
    PeerSubject,
    /// `*_PEER_ISSUER`: RFC 2253.
    PeerIssuer,
    /// `DOWNSTREAM_PEER_SERIAL`: lowercase hex.
    PeerSerial,
    /// `DOWNSTREAM_PEER_FINGERPRINT_256`: SHA-256 of the DER, lowercase hex.
    PeerFingerprint256,
    /// `*_TLS_VERSION`: `TLSv1.2`, `TLSv1.3`.
    Version,
    /// `*_TLS_CIPHER`: BoringSSL's name.
    Cipher,
    /// `REQUESTED_SERVER_NAME`: the client's SNI.
    ServerName,
    /// `*_TRANSPORT_FAILURE_REASON`: why the handshake failed.
    FailureReason,
}

/// The operator called `name`, if it is a TLS one.
pub fn operator(name: &str) -> Option<(TlsSideSel, TlsField)> {
    use TlsField as F;
    if name == "REQUESTED_SERVER_NAME" {
        return Some((TlsSideSel::Downstream, F::ServerName));
    }
    let (side, rest) = if let Some(r) = name.strip_prefix("DOWNSTREAM_") {
        (TlsSideSel::Downstream, r)
    } else {
        (TlsSideSel::Upstream, name.strip_prefix("UPSTREAM_")?)
    };
    let field = match rest {
        "PEER_URI_SAN" => F::PeerUriSan,
        "PEER_DNS_SAN" => F::PeerDnsSan,
        "PEER_IP_SAN" => F::PeerIpSan,
        "PEER_SUBJECT" => F::PeerSubject,
        "PEER_ISSUER" => F::PeerIssuer,
        "PEER_SERIAL" if side == TlsSideSel::Downstream => F::PeerSerial,
        "PEER_FINGERPRINT_256" if side == TlsSideSel::Downstream => F::PeerFingerprint256,
        "TLS_VERSION" => F::Version,
        "TLS_CIPHER" => F::Cipher,
        "TRANSPORT_FAILURE_REASON" => F::FailureReason,
        _ => return None,
    };
    Some((side, field))
}

/// The TLS of a closed connection, as its record carries it.
#[derive(Debug, Default)]
pub struct TlsRecord {
    /// The client's side, when it spoke TLS.
    pub downstream: Option<TlsSideRecord>,
    /// The backend's side, when it spoke TLS.
    pub upstream: Option<TlsSideRecord>,
}

/// One side's TLS.
#[derive(Debug, Default)]
pub struct TlsSideRecord {
    /// `TLSv1.2` / `TLSv1.3`, once established.
    pub version: Option<&'static str>,
    /// BoringSSL's cipher name, once established.
    pub cipher: Option<&'static str>,
    /// The SNI the client sent (downstream).
    pub server_name: Option<Box<str>>,
    /// The peer's leaf certificate (DER).
    pub peer_leaf: Option<Vec<u8>>,
    /// Why the handshake failed.
    pub failure: Option<Box<str>>,
    parsed: OnceLock<Option<PeerInfo>>,
}

/// What operators read from a peer certificate, parsed once.
#[derive(Debug)]
struct PeerInfo {
    uri: String,
    dns: String,
    ip: String,
    subject: String,
    issuer: String,
    serial: String,
    fingerprint_256: String,
}

impl TlsSideRecord {
    /// A side's record; its certificate is parsed when first rendered.
    pub fn new(
        version: Option<&'static str>,
        cipher: Option<&'static str>,
        server_name: Option<Box<str>>,
        peer_leaf: Option<Vec<u8>>,
        failure: Option<Box<str>>,
    ) -> TlsSideRecord {
        TlsSideRecord {
            version,
            cipher,
            server_name,
            peer_leaf,
            failure,
            parsed: OnceLock::new(),
        }
    }

    fn peer(&self) -> Option<&PeerInfo> {
        self.parsed
            .get_or_init(|| self.peer_leaf.as_deref().and_then(parse_peer))
            .as_ref()
    }
}

/// The text `field` of `side` renders (`None`: `-`).
pub fn render(record: Option<&TlsRecord>, side: TlsSideSel, field: TlsField) -> Option<String> {
    let r = record?;
    let s = match side {
        TlsSideSel::Downstream => r.downstream.as_ref(),
        TlsSideSel::Upstream => r.upstream.as_ref(),
    }?;
    let nonempty = |v: &str| (!v.is_empty()).then(|| v.to_string());
    match field {
        TlsField::Version => s.version.map(str::to_string),
        TlsField::Cipher => s.cipher.map(str::to_string),
        TlsField::ServerName => s.server_name.as_deref().map(str::to_string),
        TlsField::FailureReason => s.failure.as_deref().map(str::to_string),
        TlsField::PeerUriSan => nonempty(&s.peer()?.uri),
        TlsField::PeerDnsSan => nonempty(&s.peer()?.dns),
        TlsField::PeerIpSan => nonempty(&s.peer()?.ip),
        TlsField::PeerSubject => nonempty(&s.peer()?.subject),
        TlsField::PeerIssuer => nonempty(&s.peer()?.issuer),
        TlsField::PeerSerial => nonempty(&s.peer()?.serial),
        TlsField::PeerFingerprint256 => nonempty(&s.peer()?.fingerprint_256),
    }
}

/// The subject of DER certificate `der`, as `%DOWNSTREAM_PEER_SUBJECT%` renders it (RFC 2253),
/// for RBAC's `authenticated` principal.
pub(crate) fn peer_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(rfc2253(cert.subject()))
}

fn parse_peer(der: &[u8]) -> Option<PeerInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = crate::tls::verify::PeerSans::of(der);
    Some(PeerInfo {
        uri: sans.uri.join(","),
        dns: sans.dns.join(","),
        ip: sans.ip.join(","),
        subject: rfc2253(cert.subject()),
        issuer: rfc2253(cert.issuer()),
        serial: serial_hex(cert.raw_serial()),
        fingerprint_256: hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()),
    })
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A name as OpenSSL's `XN_FLAG_RFC2253` prints it: the last RDN first, `,` between,
/// short attribute names, RFC 2253 escapes.
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter().collect();
    let mut out = String::new();
    for rdn in rdns.iter().rev() {
        for (i, attr) in rdn.iter().enumerate() {
            if !out.is_empty() {
                out.push(if i == 0 { ',' } else { '+' });
            }
            let oid = attr.attr_type();
            let short = x509_parser::objects::oid2abbrev(oid, x509_parser::objects::oid_registry())
                .map(str::to_string)
                .unwrap_or_else(|_| oid.to_id_string());
            out.push_str(&short);
            out.push('=');
            let value = attr
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|_| format!("#{}", hex(attr.as_slice())));
            escape_into(&value, &mut out);
        }
    }
    out
}

fn escape_into(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_names_are_envoys() {
        assert_eq!(
            operator("DOWNSTREAM_PEER_URI_SAN"),
            Some((TlsSideSel::Downstream, TlsField::PeerUriSan))
        );
        assert_eq!(
            operator("UPSTREAM_TLS_VERSION"),
            Some((TlsSideSel::Upstream, TlsField::Version))
        );
        assert_eq!(
            operator("REQUESTED_SERVER_NAME"),
            Some((TlsSideSel::Downstream, TlsField::ServerName))
        );
        assert_eq!(operator("UPSTREAM_PEER_SERIAL"), None);
        assert_eq!(operator("DOWNSTREAM_REMOTE_ADDRESS"), None);
    }

    #[test]
    fn serials_and_escapes_print_as_envoy() {
        assert_eq!(serial_hex(&[0, 0x0a, 0xff]), "0aff");
        assert_eq!(serial_hex(&[0]), "0");
        let mut out = String::new();
        escape_into("a,b+c", &mut out);
        assert_eq!(out, "a\\,b\\+c");
    }

    #[test]
    fn a_missing_side_or_value_renders_nothing() {
        let r = TlsRecord {
            downstream: Some(TlsSideRecord {
                version: Some("TLSv1.3"),
                ..TlsSideRecord::default()
            }),
            upstream: None,
        };
        assert_eq!(
            render(Some(&r), TlsSideSel::Downstream, TlsField::Version).as_deref(),
            Some("TLSv1.3")
        );
        assert_eq!(
            render(Some(&r), TlsSideSel::Upstream, TlsField::Version),
            None
        );
        assert_eq!(
            render(Some(&r), TlsSideSel::Downstream, TlsField::PeerUriSan),
            None
        );
        assert_eq!(
            render(None, TlsSideSel::Downstream, TlsField::Version),
            None
        );
    }
}
