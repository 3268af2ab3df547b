//! TLS clients for the tests, with the checked-in PKI (`tests/certs`): rustls configs
//! trusting the test CA (optionally presenting a client identity) and a blocking TLS stream.

use super::{connect_retry, repo_root, IO_TIMEOUT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A file of the test PKI.
pub fn cert(name: &str) -> PathBuf {
    repo_root().join("tests/certs").join(name)
}

/// Every certificate in the PEM file `name` of the test PKI.
pub fn certs(name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(cert(name))
        .unwrap()
        .map(|c| c.unwrap())
        .collect()
}

/// The first (leaf) certificate of the PEM file `name` of the test PKI, as DER.
pub fn leaf(name: &str) -> Vec<u8> {
    certs(name).remove(0).to_vec()
}

/// A rustls client config trusting the test CA, presenting `identity` (`client`,
/// `intruder`, ...) when given.
pub fn client_config(identity: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs("ca.pem").remove(0)).unwrap();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    Arc::new(match identity {
        Some(id) => builder
            .with_client_auth_cert(
                certs(&format!("{id}.pem")),
                PrivateKeyDer::from_pem_file(cert(&format!("{id}.key"))).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// A blocking TLS client stream.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client to `addr` for the name `localhost` (the handshake runs on first use).
pub fn tls_connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream {
    let s = connect_retry(addr, Duration::from_secs(5));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), s)
}

/// A filter chain's `transport_socket` with a `DownstreamTlsContext` (YAML under a filter
/// chain): `top` beside `common_tls_context`, `common` (its fields, indented) inside it.
pub fn downstream_tls_socket(top: &str, common: &str) -> String {
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{top}          common_tls_context:
{common}"#
    )
}

/// A ClientHello for `name` (the first flight of a rustls client), as bytes to send.
pub fn client_hello(name: &str) -> Vec<u8> {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}
