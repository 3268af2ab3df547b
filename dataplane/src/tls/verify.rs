//! Peer certificate checks as Envoy's `CertificateValidationContext` makes them: the chain
//! against `trusted_ca` (with `crl`), then the leaf's subject alternative names against
//! `match_typed_subject_alt_names`. Upstream, the server name is never compared with the
//! certificate unless a SAN matcher says so (Envoy does not check the hostname either).
//!
//! A SAN mismatch fails with [`rustls::CertificateError::NotValidForName`], every other
//! check with the webpki error's rustls form, so the handshake's counters can tell
//! `fail_verify_san` from `fail_verify_error`.

use super::settings::{SanMatcher, SanType, StringMatch, StringPattern, Validation};
use super::TlsConfigError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;
use webpki::{EndEntityCert, KeyUsage, OwnedCertRevocationList, RevocationOptionsBuilder};

/// A compiled `match_typed_subject_alt_names` entry.
#[derive(Debug)]
struct CompiledSan {
    san_type: SanType,
    pattern: Pattern,
    ignore_case: bool,
}

#[derive(Debug)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

/// A compiled string matcher (Envoy's `StringMatcher`), shared by the SAN checks and the
/// filter-chain inputs that need one.
#[derive(Debug)]
pub struct StringMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

impl StringMatcher {
    /// Compiles `m`; a regex that does not compile is an error naming it.
    pub fn new(m: &StringMatch) -> Result<StringMatcher, TlsConfigError> {
        let pattern = match &m.pattern {
            StringPattern::Exact(s) => Pattern::Exact(s.clone()),
            StringPattern::Prefix(s) => Pattern::Prefix(s.clone()),
            StringPattern::Suffix(s) => Pattern::Suffix(s.clone()),
            StringPattern::Contains(s) => Pattern::Contains(s.clone()),
            StringPattern::Regex(r) => Pattern::Regex(
                regex::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| TlsConfigError::Regex(e.to_string()))?,
            ),
        };
        Ok(StringMatcher {
            pattern,
            ignore_case: m.ignore_case,
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        pattern_matches(&self.pattern, self.ignore_case, value)
    }
}

fn pattern_matches(pattern: &Pattern, ignore_case: bool, value: &str) -> bool {
    let eq = |a: &str, b: &str| {
        if ignore_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    match pattern {
        Pattern::Exact(s) => eq(value, s),
        Pattern::Prefix(s) => {
            value.len() >= s.len() && value.is_char_boundary(s.len()) && eq(&value[..s.len()], s)
        }
        Pattern::Suffix(s) => {
            let at = value.len().wrapping_sub(s.len());
            value.len() >= s.len() && value.is_char_boundary(at) && eq(&value[at..], s)
        }
        Pattern::Contains(s) => {
            if ignore_case {
                value.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
            } else {
                value.contains(s.as_str())
            }
        }
        Pattern::Regex(r) => r.is_match(value),
    }
}

/// `*.example.com` covers `a.example.com` (one label), as Envoy's `dnsNameMatch`.
pub(crate) fn dns_wildcard_matches(san: &str, name: &str) -> bool {
    let Some(suffix) = san.strip_prefix("*.") else {
        return false;
    };
    match name.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

impl CompiledSan {
    fn matches(&self, sans: &PeerSans) -> bool {
        let values: &[String] = match self.san_type {
            SanType::Email => &sans.email,
            SanType::Dns => &sans.dns,
            SanType::Uri => &sans.uri,
            SanType::IpAddress => &sans.ip,
        };
        values.iter().any(|v| {
            pattern_matches(&self.pattern, self.ignore_case, v)
                || (self.san_type == SanType::Dns
                    && matches!(&self.pattern, Pattern::Exact(want) if dns_wildcard_matches(v, want)))
        })
    }
}

/// The subject alternative names of a certificate, as text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerSans {
    /// DNS names.
    pub dns: Vec<String>,
    /// URIs (SPIFFE IDs).
    pub uri: Vec<String>,
    /// rfc822 names.
    pub email: Vec<String>,
    /// IP addresses in text form.
    pub ip: Vec<String>,
}

impl PeerSans {
    /// The SANs of DER certificate `der` (empty when it does not parse or has none).
    pub fn of(der: &[u8]) -> PeerSans {
        use x509_parser::extensions::GeneralName;
        let mut sans = PeerSans::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return sans;
        };
        let Ok(Some(ext)) = cert.subject_alternative_name() else {
            return sans;
        };
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.dns.push((*d).to_string()),
                GeneralName::URI(u) => sans.uri.push((*u).to_string()),
                GeneralName::RFC822Name(e) => sans.email.push((*e).to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_text(bytes) {
                        sans.ip.push(ip);
                    }
                }
                _ => {}
            }
        }
        sans
    }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(bytes);
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

/// What `/certs` shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDetails {
    /// The serial number in lowercase hex, leading zero bytes dropped.
    pub serial: String,
    /// Its SANs.
    pub sans: PeerSans,
    /// Valid from, seconds since the Unix epoch.
    pub not_before_unix: i64,
    /// Valid until, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// A serial number as Envoy prints it: lowercase hex, leading zero bytes dropped.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    if start == raw.len() {
        return "0".into();
    }
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// The details of DER certificate `der`, if it parses.
pub fn describe(der: &[u8]) -> Option<CertDetails> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(CertDetails {
        serial: serial_hex(cert.raw_serial()),
        sans: PeerSans::of(der),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// A compiled `validation_context`.
#[derive(Debug)]
pub(crate) struct PeerValidation {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    sans: Vec<CompiledSan>,
    /// The roots' subjects, offered to clients as acceptable issuers.
    subjects: Vec<DistinguishedName>,
}

impl PeerValidation {
    pub(crate) fn new(v: &Validation) -> Result<PeerValidation, TlsConfigError> {
        let mut roots = Vec::with_capacity(v.trusted_ca.len());
        let mut subjects = Vec::with_capacity(v.trusted_ca.len());
        for (i, der) in v.trusted_ca.iter().enumerate() {
            let cert = CertificateDer::from(der.clone());
            let anchor = webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| TlsConfigError::TrustedCa(format!("certificate {i}: {e}")))?;
            // webpki keeps the Name without its SEQUENCE; the wire wants the whole Name.
            subjects.push(DistinguishedName::in_sequence(anchor.subject.as_ref()));
            roots.push(anchor.to_owned());
        }
        let mut crls = Vec::with_capacity(v.crls.len());
        for (i, der) in v.crls.iter().enumerate() {
            let crl = OwnedCertRevocationList::from_der(der)
                .map_err(|e| TlsConfigError::Crl(format!("list {i}: {e}")))?;
            crls.push(webpki::CertRevocationList::Owned(crl));
        }
        if !crls.is_empty() && roots.is_empty() {
            return Err(TlsConfigError::Crl(
                "a CRL needs trusted_ca to check the chain against".into(),
            ));
        }
        let sans = v
            .san_matchers
            .iter()
            .map(compile_san)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PeerValidation {
            roots,
            crls,
            sans,
            subjects,
        })
    }

    /// Checks the peer's chain (when there are roots) and SANs at `now`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
        algs: &WebPkiSupportedAlgorithms,
    ) -> Result<(), Error> {
        if !self.roots.is_empty() {
            let cert = EndEntityCert::try_from(end_entity).map_err(pki_error)?;
            // The lists were parsed once, at build; only the slice of references the
            // builder wants is made here (and only with CRLs).
            let crl_refs: Vec<&webpki::CertRevocationList<'static>> = self.crls.iter().collect();
            let revocation = if crl_refs.is_empty() {
                None
            } else {
                RevocationOptionsBuilder::new(&crl_refs)
                    .ok()
                    .map(|b| b.build())
            };
            cert.verify_for_usage(
                algs.all,
                &self.roots,
                intermediates,
                now,
                usage,
                revocation,
                None,
            )
            .map_err(pki_error)?;
        }
        if !self.sans.is_empty() {
            let sans = PeerSans::of(end_entity.as_ref());
            if !self.sans.iter().any(|m| m.matches(&sans)) {
                return Err(CertificateError::NotValidForName.into());
            }
        }
        Ok(())
    }
}

fn compile_san(m: &SanMatcher) -> Result<CompiledSan, TlsConfigError> {
    let compiled = StringMatcher::new(&m.matcher)?;
    Ok(CompiledSan {
        san_type: m.san_type,
        pattern: compiled.pattern,
        ignore_case: compiled.ignore_case,
    })
}

/// webpki's verdict as rustls reports it (rustls' own mapping is private).
fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding.into(),
        W::CertNotValidYet { .. } => CertificateError::NotValidYet.into(),
        W::CertExpired { .. } | W::InvalidCertValidity => CertificateError::Expired.into(),
        W::UnknownIssuer => CertificateError::UnknownIssuer.into(),
        W::CertRevoked => CertificateError::Revoked.into(),
        W::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus.into(),
        W::CrlExpired { .. } => CertificateError::ExpiredRevocationList.into(),
        W::InvalidSignatureForPublicKey
        | W::UnsupportedSignatureAlgorithmContext(_)
        | W::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            CertificateError::BadSignature.into()
        }
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose.into(),
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))).into(),
    }
}

/// Checks a server's certificate for a cluster's `UpstreamTlsContext`.
#[derive(Debug)]
pub(crate) struct UpstreamVerifier {
    validation: Option<PeerValidation>,
    algs: WebPkiSupportedAlgorithms,
}

impl UpstreamVerifier {
    pub(crate) fn new(
        validation: Option<PeerValidation>,
        algs: WebPkiSupportedAlgorithms,
    ) -> UpstreamVerifier {
        UpstreamVerifier { validation, algs }
    }
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(v) = &self.validation {
            v.check(
                end_entity,
                intermediates,
                now,
                KeyUsage::server_auth(),
                &self.algs,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Checks a client's certificate for a filter chain's `DownstreamTlsContext`.
#[derive(Debug)]
pub(crate) struct DownstreamVerifier {
    validation: PeerValidation,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl DownstreamVerifier {
    pub(crate) fn new(
        validation: PeerValidation,
        mandatory: bool,
        algs: WebPkiSupportedAlgorithms,
    ) -> DownstreamVerifier {
        DownstreamVerifier {
            validation,
            mandatory,
            algs,
        }
    }
}

impl ClientCertVerifier for DownstreamVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.validation.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.validation.check(
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
            &self.algs,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: StringPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher::new(&StringMatch {
            pattern,
            ignore_case,
        })
        .unwrap()
    }

    #[test]
    fn string_matchers_compare_as_envoys() {
        assert!(m(StringPattern::Exact("spiffe://a/b".into()), false).matches("spiffe://a/b"));
        assert!(!m(StringPattern::Exact("spiffe://a/b".into()), false).matches("spiffe://a/B"));
        assert!(m(StringPattern::Exact("spiffe://a/b".into()), true).matches("SPIFFE://a/B"));
        assert!(m(StringPattern::Prefix("spiffe://td/".into()), false).matches("spiffe://td/ns/x"));
        assert!(!m(StringPattern::Prefix("spiffe://td/".into()), false).matches("spiffe://t"));
        assert!(m(StringPattern::Suffix(".svc".into()), false).matches("a.b.svc"));
        assert!(m(StringPattern::Contains("/ns/".into()), false).matches("spiffe://t/ns/a"));
        assert!(m(StringPattern::Contains("/NS/".into()), true).matches("spiffe://t/ns/a"));
        // A regex must match the whole value, as RE2's FullMatch.
        let r = m(
            StringPattern::Regex("spiffe://td/ns/[a-z]+/sa/.*".into()),
            false,
        );
        assert!(r.matches("spiffe://td/ns/default/sa/web"));
        assert!(!r.matches("xspiffe://td/ns/default/sa/web"));
        assert!(StringMatcher::new(&StringMatch {
            pattern: StringPattern::Regex("(".into()),
            ignore_case: false
        })
        .is_err());
    }

    #[test]
    fn an_exact_dns_matcher_accepts_a_wildcard_san_of_one_label() {
        let san = CompiledSan {
            san_type: SanType::Dns,
            pattern: Pattern::Exact("api.example.com".into()),
            ignore_case: false,
        };
        let with = |dns: &str| PeerSans {
            dns: vec![dns.into()],
            ..PeerSans::default()
        };
        assert!(san.matches(&with("*.example.com")));
        assert!(san.matches(&with("api.example.com")));
        assert!(!san.matches(&with("*.other.com")));
        assert!(!san.matches(&with("*.com")));
        assert!(!dns_wildcard_matches("*.example.com", "a.b.example.com"));
    }
}
