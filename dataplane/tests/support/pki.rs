//! A throwaway PKI for TLS tests: a root and leaves with DNS and URI (SPIFFE) SANs, made
//! with rcgen. Shared by the unit tests (`dataplane/src/tls/tests.rs`, by path) and the
//! socket tests.

use super::tls_settings::{
    Certificate, ClientSettings, KeyFormat, PrivateKey, ServerSettings, SessionTickets, TlsParams,
    Validation,
};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType as RSan,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A root CA that signs leaves.
pub struct Pki {
    /// The root certificate (DER).
    pub ca: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A new root called `test root`.
    pub fn new() -> Pki {
        Pki::named("test root")
    }

    /// A new root with this common name (issuers are found by name: two roots of one name
    /// are the same issuer to a verifier).
    pub fn named(common_name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for these DNS and URI SANs, for servers and clients alike.
    pub fn leaf(&self, dns: &[&str], uri: &[&str]) -> Certificate {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        for d in dns {
            params
                .subject_alt_names
                .push(RSan::DnsName((*d).try_into().unwrap()));
        }
        for u in uri {
            params
                .subject_alt_names
                .push(RSan::URI((*u).try_into().unwrap()));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Certificate {
            chain_source: None,
            chain: vec![cert.der().to_vec()],
            key: PrivateKey {
                format: KeyFormat::Pkcs8,
                der: key.serialize_der(),
            },
        }
    }

    /// The root as rustls trusts it.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca.clone())).unwrap();
        roots
    }
}

/// The leaf's key as rustls takes it.
pub fn key_der(c: &Certificate) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.der.clone()))
}

/// The leaf's chain as rustls takes it.
pub fn chain_der(c: &Certificate) -> Vec<CertificateDer<'static>> {
    c.chain
        .iter()
        .map(|d| CertificateDer::from(d.clone()))
        .collect()
}

/// A client config that trusts `pki` (and presents `cert`, when given).
pub fn client_config(pki: &Pki, cert: Option<&Certificate>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder().with_root_certificates(pki.roots());
    Arc::new(match cert {
        Some(c) => builder
            .with_client_auth_cert(chain_der(c), key_der(c))
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A server context's settings serving `cert`, with every default.
pub fn server_settings(cert: Certificate) -> ServerSettings {
    ServerSettings {
        certificates: vec![cert],
        validation: None,
        require_client_certificate: false,
        alpn: Vec::new(),
        params: TlsParams::default(),
        tickets: SessionTickets::Random,
    }
}

/// A client context's settings trusting `pki`, sending SNI `backend.example.com`.
pub fn client_settings(pki: &Pki) -> ClientSettings {
    ClientSettings {
        certificate: None,
        validation: Some(Validation {
            trusted_ca: vec![pki.ca.clone()],
            ..Validation::default()
        }),
        sni: Some("backend.example.com".into()),
        alpn: Vec::new(),
        params: TlsParams::default(),
        max_session_keys: 1,
    }
}
