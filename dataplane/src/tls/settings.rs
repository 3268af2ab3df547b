//! What a TLS context is made of, as plain validated data: the RIB holds these (they compare,
//! clone and print without secrets), and [`super::ServerContext`] / [`super::ClientContext`]
//! are built from them. Certificates and keys are DER, already read from their files or
//! inline data; nothing here touches the file system.

use std::fmt;

/// A certificate chain (leaf first) and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    /// DER certificates, the leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The leaf's private key.
    pub key: PrivateKey,
    /// The chain's file (`/certs`' `path`); `None` when inline.
    pub chain_source: Option<String>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("chain_len", &self.chain.len())
            .field("key", &self.key)
            .finish()
    }
}

/// A private key in DER, with its encoding. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    /// How the DER is framed.
    pub format: KeyFormat,
    /// The key.
    pub der: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, {} bytes)", self.format, self.der.len())
    }
}

/// The framing of a private key's DER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// `RSA PRIVATE KEY` (PKCS#1).
    Pkcs1,
    /// `PRIVATE KEY` (PKCS#8).
    Pkcs8,
    /// `EC PRIVATE KEY` (SEC1).
    Sec1,
}

/// How a string is compared (Envoy's `StringMatcher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringPattern {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Matches the whole string (RE2 syntax, as far as Rust's `regex` shares it; checked by
    /// `convert`).
    Regex(String),
}

/// Envoy's `StringMatcher`: a pattern and `ignore_case` (not for regexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatch {
    /// The pattern.
    pub pattern: StringPattern,
    /// Compare ASCII letters without case (exact, prefix, suffix, contains).
    pub ignore_case: bool,
}

/// Which subject alternative names a matcher looks at (Envoy's `SubjectAltNameMatcher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    /// `EMAIL` (rfc822Name).
    Email,
    /// `DNS`: an exact pattern also matches a wildcard SAN (`*.example.com`), as Envoy's
    /// `dnsNameMatch` does.
    Dns,
    /// `URI`: where SPIFFE IDs live.
    Uri,
    /// `IP_ADDRESS`, compared in its text form (`10.0.0.1`, `2001:db8::1`).
    IpAddress,
}

/// One entry of `match_typed_subject_alt_names`: the peer passes when any of its SANs of
/// `san_type` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanMatcher {
    /// The kind of SAN.
    pub san_type: SanType,
    /// How it is compared.
    pub matcher: StringMatch,
}

/// A `validation_context`: how the peer's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Validation {
    /// `trusted_ca`: DER roots (at least one when validation applies; empty: the chain is
    /// not verified, only the SAN matchers apply, as Envoy does without `trusted_ca`).
    pub trusted_ca: Vec<Vec<u8>>,
    /// `crl`: DER certificate revocation lists; a revoked certificate anywhere in the chain
    /// fails, as does a chain whose issuers have no CRL among them
    /// (`only_verify_leaf_cert_crl: false`, Envoy's default).
    pub crls: Vec<Vec<u8>>,
    /// `match_typed_subject_alt_names`: the peer's leaf must match one (none: any).
    pub san_matchers: Vec<SanMatcher>,
    /// The `trusted_ca` file (`/certs`' `path`); `None` when inline or absent.
    pub trusted_ca_source: Option<String>,
}

/// A TLS protocol version rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

/// A cipher suite, by the name Envoy (BoringSSL) gives it; TLS 1.3 suites are always all
/// enabled (BoringSSL does not let them be chosen either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherSuite {
    /// `ECDHE-ECDSA-AES128-GCM-SHA256`.
    EcdheEcdsaAes128GcmSha256,
    /// `ECDHE-RSA-AES128-GCM-SHA256`.
    EcdheRsaAes128GcmSha256,
    /// `ECDHE-ECDSA-AES256-GCM-SHA384`.
    EcdheEcdsaAes256GcmSha384,
    /// `ECDHE-RSA-AES256-GCM-SHA384`.
    EcdheRsaAes256GcmSha384,
    /// `ECDHE-ECDSA-CHACHA20-POLY1305`.
    EcdheEcdsaChacha20Poly1305,
    /// `ECDHE-RSA-CHACHA20-POLY1305`.
    EcdheRsaChacha20Poly1305,
}

impl CipherSuite {
    /// Every suite, with Envoy's name for it.
    pub const ALL: [(&'static str, CipherSuite); 6] = [
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            CipherSuite::EcdheEcdsaAes128GcmSha256,
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            CipherSuite::EcdheRsaAes128GcmSha256,
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            CipherSuite::EcdheEcdsaAes256GcmSha384,
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            CipherSuite::EcdheRsaAes256GcmSha384,
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            CipherSuite::EcdheEcdsaChacha20Poly1305,
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            CipherSuite::EcdheRsaChacha20Poly1305,
        ),
    ];

    /// The suite Envoy calls `name`.
    pub fn by_name(name: &str) -> Option<CipherSuite> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

/// A key-exchange group, by Envoy's `ecdh_curves` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// `X25519`.
    X25519,
    /// `P-256`.
    P256,
    /// `P-384`.
    P384,
}

impl Curve {
    /// Every curve, with Envoy's name for it.
    pub const ALL: [(&'static str, Curve); 3] = [
        ("X25519", Curve::X25519),
        ("P-256", Curve::P256),
        ("P-384", Curve::P384),
    ];

    /// The curve Envoy calls `name`.
    pub fn by_name(name: &str) -> Option<Curve> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }
}

/// `tls_params`, with Envoy's defaults applied by `convert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// Lowest version accepted.
    pub min_version: TlsVersion,
    /// Highest version offered.
    pub max_version: TlsVersion,
    /// TLS 1.2 suites in preference order (`None`: rustls's, all of the above).
    pub cipher_suites: Option<Vec<CipherSuite>>,
    /// Groups in preference order (`None`: X25519, P-256, P-384).
    pub curves: Option<Vec<Curve>>,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams {
            min_version: TlsVersion::V1_2,
            max_version: TlsVersion::V1_3,
            cipher_suites: None,
            curves: None,
        }
    }
}

/// How a server issues and accepts session tickets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SessionTickets {
    /// A random key made when the context is built, shared by every worker (Envoy's default).
    #[default]
    Random,
    /// `session_ticket_keys`: 80-byte keys; the first encrypts, all decrypt.
    Keys(Vec<Vec<u8>>),
    /// `disable_stateless_session_resumption`: no tickets.
    Disabled,
}

/// A `DownstreamTlsContext`: what a filter chain terminates TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `tls_certificates` (at least one): the one whose key the client can use is served,
    /// preferring one whose names cover the client's SNI.
    pub certificates: Vec<Certificate>,
    /// `validation_context`: client certificates are asked for and checked against it.
    pub validation: Option<Validation>,
    /// `require_client_certificate`: a client without one is refused.
    pub require_client_certificate: bool,
    /// `alpn_protocols`, in preference order; when the client offers none of them the
    /// handshake goes on without ALPN (as BoringSSL does).
    pub alpn: Vec<Vec<u8>>,
    /// `tls_params`.
    pub params: TlsParams,
    /// Session tickets.
    pub tickets: SessionTickets,
}

/// An `UpstreamTlsContext`: what a cluster originates TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// `tls_certificates` (at most one): presented when the server asks.
    pub certificate: Option<Certificate>,
    /// `validation_context`: without one, the server's certificate is not checked (Envoy's
    /// default), only its handshake signature.
    pub validation: Option<Validation>,
    /// `sni`: sent as the server name (none: no SNI).
    pub sni: Option<String>,
    /// `alpn_protocols`, offered in order.
    pub alpn: Vec<Vec<u8>>,
    /// `tls_params`.
    pub params: TlsParams,
    /// `max_session_keys` (Envoy's default 1; 0 disables resumption).
    pub max_session_keys: u32,
}
