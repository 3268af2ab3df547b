//! Built TLS contexts: a filter chain's [`ServerContext`] and a cluster's [`ClientContext`],
//! made once per config on the control thread and shared by every worker through the FIB.
//! Building checks everything a handshake would find wrong with the config (a key that does
//! not match its certificate, a root that is no CA certificate, a CRL that does not parse),
//! so a bad config is refused with the part named ([`TlsConfigError`]) instead of failing
//! handshakes later.

use super::client_cache::PerThreadSessions;
use super::settings::{
    Certificate, CipherSuite, ClientSettings, Curve, KeyFormat, ServerSettings, SessionTickets,
    TlsParams, TlsVersion,
};
use super::ticket::Ticketer;
use super::verify::{DownstreamVerifier, PeerValidation, UpstreamVerifier};
use rustls::crypto::{ring as ring_provider, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName,
};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SupportedCipherSuite};
use std::fmt;
use std::sync::Arc;

/// What is wrong with a TLS context, by the part of it that is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfigError {
    /// `tls_certificates[index]`: the chain or key is unusable, or they do not match.
    Certificate {
        /// Which certificate.
        index: usize,
        /// Why.
        reason: String,
    },
    /// `validation_context.trusted_ca`.
    TrustedCa(String),
    /// `validation_context.crl`.
    Crl(String),
    /// A `safe_regex` that does not compile.
    Regex(String),
    /// `tls_params`: the versions, suites and groups leave nothing to speak.
    Params(String),
    /// `sni`: not a server name.
    Sni(String),
    /// `session_ticket_keys`.
    TicketKeys(String),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Certificate { index, reason } => {
                write!(f, "certificate {index}: {reason}")
            }
            TlsConfigError::TrustedCa(r) => write!(f, "trusted_ca: {r}"),
            TlsConfigError::Crl(r) => write!(f, "crl: {r}"),
            TlsConfigError::Regex(r) => write!(f, "regex: {r}"),
            TlsConfigError::Params(r) => write!(f, "tls_params: {r}"),
            TlsConfigError::Sni(r) => write!(f, "sni: {r}"),
            TlsConfigError::TicketKeys(r) => write!(f, "session_ticket_keys: {r}"),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// A filter chain's TLS termination (`DownstreamTlsContext`), ready for handshakes.
pub struct ServerContext {
    /// The config offering the chain's ALPN protocols.
    with_alpn: Arc<ServerConfig>,
    /// The same without ALPN, for a client offering none of them (BoringSSL goes on without
    /// ALPN where rustls would fail the handshake).
    without_alpn: Option<Arc<ServerConfig>>,
    alpn: Vec<Vec<u8>>,
    /// The settings it was built from (the control plane compares them to reuse a context).
    settings: ServerSettings,
}

impl fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerContext")
            .field("settings", &self.settings)
            .finish()
    }
}

impl ServerContext {
    /// Builds the context `settings` describe.
    pub fn new(settings: &ServerSettings) -> Result<ServerContext, TlsConfigError> {
        let provider = Arc::new(provider_for(&settings.params)?);
        let mut keys = Vec::with_capacity(settings.certificates.len());
        for (index, cert) in settings.certificates.iter().enumerate() {
            keys.push(Arc::new(certified_key(&provider, cert, index)?));
        }
        if keys.is_empty() {
            return Err(TlsConfigError::Certificate {
                index: 0,
                reason: "a server needs at least one certificate".into(),
            });
        }
        let resolver = Arc::new(CertChooser { keys });
        let ticketer: Option<Arc<dyn rustls::server::ProducesTickets>> = match &settings.tickets {
            SessionTickets::Disabled => None,
            SessionTickets::Random => Some(Arc::new(
                Ticketer::random().map_err(TlsConfigError::TicketKeys)?,
            )),
            SessionTickets::Keys(keys) => Some(Arc::new(
                Ticketer::from_keys(keys).map_err(TlsConfigError::TicketKeys)?,
            )),
        };
        let build = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, TlsConfigError> {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&versions(&settings.params))
                .map_err(|e| TlsConfigError::Params(e.to_string()))?;
            let builder = match &settings.validation {
                Some(v) => {
                    let verifier = DownstreamVerifier::new(
                        PeerValidation::new(v)?,
                        settings.require_client_certificate,
                        provider.signature_verification_algorithms,
                    );
                    builder.with_client_cert_verifier(Arc::new(verifier))
                }
                None => builder.with_no_client_auth(),
            };
            let mut config = builder.with_cert_resolver(resolver.clone());
            config.alpn_protocols = alpn;
            // The records run in place on the worker once rustls hands the keys over.
            config.enable_secret_extraction = true;
            // Stateless resumption only: a session cache would be a lock every worker takes.
            config.session_storage = Arc::new(NoServerSessionStorage {});
            match &ticketer {
                Some(t) => {
                    config.ticketer = t.clone();
                    config.send_tls13_tickets = 1;
                }
                None => config.send_tls13_tickets = 0,
            }
            Ok(Arc::new(config))
        };
        if settings.require_client_certificate && settings.validation.is_none() {
            return Err(TlsConfigError::TrustedCa(
                "require_client_certificate needs a validation_context to check it against".into(),
            ));
        }
        let with_alpn = build(settings.alpn.clone())?;
        let without_alpn = if settings.alpn.is_empty() {
            None
        } else {
            Some(build(Vec::new())?)
        };
        Ok(ServerContext {
            with_alpn,
            without_alpn,
            alpn: settings.alpn.clone(),
            settings: settings.clone(),
        })
    }

    /// What it was built from.
    pub fn settings(&self) -> &ServerSettings {
        &self.settings
    }

    /// The config for a client whose ClientHello offers `offered` (None: no ALPN
    /// extension): ALPN only when the client offers one of ours.
    pub(crate) fn config_for<'a>(
        &self,
        offered: Option<impl Iterator<Item = &'a [u8]>>,
    ) -> Arc<ServerConfig> {
        match (&self.without_alpn, offered) {
            (Some(without), Some(mut offered)) => {
                if offered.any(|p| self.alpn.iter().any(|ours| ours == p)) {
                    self.with_alpn.clone()
                } else {
                    without.clone()
                }
            }
            (Some(without), None) => without.clone(),
            (None, _) => self.with_alpn.clone(),
        }
    }
}

/// A cluster's TLS origination (`UpstreamTlsContext`), ready for handshakes.
pub struct ClientContext {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    settings: ClientSettings,
}

impl fmt::Debug for ClientContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientContext")
            .field("settings", &self.settings)
            .finish()
    }
}

impl ClientContext {
    /// Builds the context `settings` describe.
    pub fn new(settings: &ClientSettings) -> Result<ClientContext, TlsConfigError> {
        let provider = Arc::new(provider_for(&settings.params)?);
        let validation = settings
            .validation
            .as_ref()
            .map(PeerValidation::new)
            .transpose()?;
        let verifier =
            UpstreamVerifier::new(validation, provider.signature_verification_algorithms);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(&settings.params))
            .map_err(|e| TlsConfigError::Params(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &settings.certificate {
            Some(cert) => {
                let key = certified_key(&provider, cert, 0)?;
                builder
                    .with_client_auth_cert(key.cert.clone(), private_key(&cert.key))
                    .map_err(|e| TlsConfigError::Certificate {
                        index: 0,
                        reason: e.to_string(),
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = settings.alpn.clone();
        config.enable_secret_extraction = true;
        config.resumption = if settings.max_session_keys == 0 {
            rustls::client::Resumption::disabled()
        } else {
            let keys = settings.max_session_keys as usize;
            rustls::client::Resumption::store(Arc::new(PerThreadSessions::new(keys)))
        };
        let server_name = match &settings.sni {
            Some(sni) => ServerName::try_from(sni.clone())
                .map_err(|e| TlsConfigError::Sni(format!("{sni:?}: {e}")))?,
            None => {
                // No SNI: rustls sends none for an address.
                config.enable_sni = false;
                ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
            }
        };
        Ok(ClientContext {
            config: Arc::new(config),
            server_name,
            settings: settings.clone(),
        })
    }

    /// What it was built from.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    pub(crate) fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    pub(crate) fn server_name(&self) -> ServerName<'static> {
        self.server_name.clone()
    }
}

/// Picks the certificate a client can use: one whose key signs with a scheme the client
/// offers, preferring one whose names cover the client's SNI.
#[derive(Debug)]
struct CertChooser {
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertChooser {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        let usable = || {
            self.keys
                .iter()
                .filter(|k| k.key.choose_scheme(schemes).is_some())
        };
        if let (Some(sni), true) = (hello.server_name(), self.keys.len() > 1) {
            if let Some(k) = usable().find(|k| covers(k, sni)) {
                return Some(k.clone());
            }
        }
        usable().next().cloned()
    }
}

/// Whether the leaf of `key` names `sni` (exactly or by a one-label wildcard).
fn covers(key: &CertifiedKey, sni: &str) -> bool {
    let Some(leaf) = key.cert.first() else {
        return false;
    };
    let sans = super::verify::PeerSans::of(leaf.as_ref());
    sans.dns
        .iter()
        .any(|d| d.eq_ignore_ascii_case(sni) || super::verify::dns_wildcard_matches(d, sni))
}

fn private_key(key: &super::settings::PrivateKey) -> PrivateKeyDer<'static> {
    match key.format {
        KeyFormat::Pkcs1 => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(key.der.clone())),
        KeyFormat::Pkcs8 => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.der.clone())),
        KeyFormat::Sec1 => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(key.der.clone())),
    }
}

/// `cert`'s chain with its signing key, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    cert: &Certificate,
    index: usize,
) -> Result<CertifiedKey, TlsConfigError> {
    let err = |reason: String| TlsConfigError::Certificate { index, reason };
    if cert.chain.is_empty() {
        return Err(err("the certificate chain is empty".into()));
    }
    let chain: Vec<CertificateDer<'static>> = cert
        .chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    for (i, c) in chain.iter().enumerate() {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| err(format!("certificate {i} of the chain does not parse: {e}")))?;
    }
    let signing = provider
        .key_provider
        .load_private_key(private_key(&cert.key))
        .map_err(|e| err(format!("the private key is not usable: {e}")))?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) => Ok(key),
        // rustls cannot tell for some key kinds; a real mismatch is an error.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(e) => Err(err(format!(
            "the private key does not belong to the certificate: {e}"
        ))),
    }
}

fn versions(params: &TlsParams) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut out = Vec::with_capacity(2);
    if params.min_version <= TlsVersion::V1_3 && params.max_version >= TlsVersion::V1_3 {
        out.push(&rustls::version::TLS13);
    }
    if params.min_version <= TlsVersion::V1_2 && params.max_version >= TlsVersion::V1_2 {
        out.push(&rustls::version::TLS12);
    }
    out
}

fn suite(s: CipherSuite) -> SupportedCipherSuite {
    use ring_provider::cipher_suite as cs;
    match s {
        CipherSuite::EcdheEcdsaAes128GcmSha256 => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes128GcmSha256 => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheEcdsaAes256GcmSha384 => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaAes256GcmSha384 => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheEcdsaChacha20Poly1305 => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::EcdheRsaChacha20Poly1305 => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

fn group(c: Curve) -> &'static dyn rustls::crypto::SupportedKxGroup {
    use ring_provider::kx_group;
    match c {
        Curve::X25519 => kx_group::X25519,
        Curve::P256 => kx_group::SECP256R1,
        Curve::P384 => kx_group::SECP384R1,
    }
}

/// rustls' `ring` provider narrowed to `params`' suites and groups.
fn provider_for(params: &TlsParams) -> Result<CryptoProvider, TlsConfigError> {
    if params.min_version > params.max_version {
        return Err(TlsConfigError::Params(
            "tls_minimum_protocol_version is above tls_maximum_protocol_version".into(),
        ));
    }
    // rustls marks the `ring` provider deprecated for lacking a post-quantum group
    // (X25519MLKEM768, which only aws-lc-rs offers): ring is the choice recorded in
    // crates.md (no cmake, the faster build), and the missing group is in README's "Not yet".
    #[allow(deprecated)]
    let mut provider = ring_provider::default_provider();
    if let Some(chosen) = &params.cipher_suites {
        let tls13 = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)));
        let mut suites: Vec<SupportedCipherSuite> = tls13.collect();
        suites.extend(chosen.iter().map(|&s| suite(s)));
        if params.min_version == TlsVersion::V1_2
            && params.max_version == TlsVersion::V1_2
            && chosen.is_empty()
        {
            return Err(TlsConfigError::Params(
                "no TLS 1.2 cipher suite left for a TLS 1.2 only context".into(),
            ));
        }
        provider.cipher_suites = suites;
    }
    // BoringSSL's (Envoy's) order by default; rustls' ring provider puts P-384 first, a
    // slower key exchange than X25519 for every full handshake.
    let curves = params
        .curves
        .as_deref()
        .unwrap_or(&[Curve::X25519, Curve::P256, Curve::P384]);
    if curves.is_empty() {
        return Err(TlsConfigError::Params("ecdh_curves is empty".into()));
    }
    provider.kx_groups = curves.iter().map(|&c| group(c)).collect();
    Ok(provider)
}
