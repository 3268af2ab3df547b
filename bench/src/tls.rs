//! TLS for the client modes (`throughput`, `rr`, `cps` with `--tls`) and the backends
//! (`serve --tls-cert --tls-key`): rustls on the `ring` provider.
//!
//! Guarantees:
//! * Every client and backend speaks TLS 1.3 only, with one cipher suite
//!   (`TLS13_AES_128_GCM_SHA256`) and one key exchange (X25519), so every proxy measured
//!   against it runs the same cryptography.
//! * The client verifies the server's chain against `--tls-ca` and the name it sends as SNI
//!   (`--tls-sni`, default `localhost`); a failure is counted as a `tls` error, never ignored.
//! * One [`ClientConfig`] per run, shared by every connection. Without `resume` it offers no
//!   session (every handshake is full); with `resume` every connection offers a ticket from the
//!   run's shared in-memory session cache, so after the first handshake each one can resume.
//! * The handshake completes before the first payload byte is written, so the time it takes
//!   is inside the exchange a mode measures (`cps`: inside `latency_us`).

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConfig};
use rustls::{ServerConnection, StreamOwned};
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, ErrorClass, Failure};

/// Sessions the client keeps for resumption (one server name; each TLS 1.3 ticket is used once).
pub const CLIENT_SESSION_CACHE_ENTRIES: usize = 1024;
/// The one cipher suite every client and backend here negotiates.
pub const CIPHER_SUITE: &str = "TLS13_AES_128_GCM_SHA256";
/// The one key exchange group.
pub const KEY_EXCHANGE: &str = "X25519";

/// What a client mode needs for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the roots the server's chain must lead to.
    pub ca: PathBuf,
    /// Client certificate chain and key (PEM), for servers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name sent as SNI and checked against the server's certificate.
    pub sni: String,
    /// Offer a ticket from the run's session cache (resumed handshakes) instead of full ones.
    pub resume: bool,
}

impl TlsOptions {
    /// Full handshakes against `ca`, SNI `localhost`, no client certificate.
    pub fn new(ca: impl Into<PathBuf>) -> TlsOptions {
        TlsOptions {
            ca: ca.into(),
            client_cert: None,
            sni: "localhost".to_string(),
            resume: false,
        }
    }

    /// The `params.tls` object of a report.
    pub fn params(&self) -> TlsParams {
        TlsParams {
            sni: self.sni.clone(),
            resume: self.resume,
            client_cert: self.client_cert.is_some(),
            version: "TLSv1.3".to_string(),
            cipher_suite: CIPHER_SUITE.to_string(),
            key_exchange: KEY_EXCHANGE.to_string(),
        }
    }
}

/// `params.tls` of a report (absent without `--tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsParams {
    pub sni: String,
    pub resume: bool,
    pub client_cert: bool,
    pub version: String,
    pub cipher_suite: String,
    pub key_exchange: String,
}

impl TlsParams {
    /// One table cell: `TLSv1.3 TLS13_AES_128_GCM_SHA256 X25519 sni=localhost resume`.
    pub fn row(&self) -> String {
        format!(
            "{} {} {} sni={}{}{}",
            self.version,
            self.cipher_suite,
            self.key_exchange,
            self.sni,
            if self.resume { " resume" } else { " full" },
            if self.client_cert { " client-cert" } else { "" }
        )
    }
}

/// The one provider: ring, restricted to [`CIPHER_SUITE`] and [`KEY_EXCHANGE`].
fn provider() -> Arc<CryptoProvider> {
    // rustls marks the `ring` provider deprecated for lacking a post-quantum group; the
    // dataplane uses ring too (crates.md), and the bench pins X25519 for every contender.
    #[allow(deprecated)]
    let base = ring::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![ring::kx_group::X25519],
        ..base
    })
}

fn config_error(what: &str, path: &Path, err: impl std::fmt::Display) -> BenchError {
    BenchError::Config(format!("{what} {}: {err}", path.display()))
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BenchError> {
    let bytes = fs::read(path).map_err(|e| config_error("read", path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error("parse certificates in", path, e))?;
    if certs.is_empty() {
        return Err(config_error("no certificate in", path, "empty"));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, BenchError> {
    let bytes = fs::read(path).map_err(|e| config_error("read", path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| config_error("parse key in", path, e))
}

/// A run's client side: one config shared by every connection, and the name to verify.
#[derive(Debug, Clone)]
pub(crate) struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// Loads the files and builds the run's one config. Bad files are a config error.
    pub(crate) fn new(opts: &TlsOptions) -> Result<TlsClient, BenchError> {
        let mut roots = RootCertStore::empty();
        for cert in load_certs(&opts.ca)? {
            roots
                .add(cert)
                .map_err(|e| config_error("trust root in", &opts.ca, e))?;
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| BenchError::Config(format!("TLS 1.3 client: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &opts.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| config_error("client certificate", cert, e))?,
        };
        config.resumption = if opts.resume {
            Resumption::store(Arc::new(ClientSessionMemoryCache::new(
                CLIENT_SESSION_CACHE_ENTRIES,
            )))
        } else {
            Resumption::disabled()
        };
        let server_name = ServerName::try_from(opts.sni.clone())
            .map_err(|e| BenchError::Config(format!("--tls-sni {:?}: {e}", opts.sni)))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Runs the handshake on `tcp` to its end (bounded by the socket's timeouts).
    pub(crate) fn handshake(&self, tcp: TcpStream) -> Result<ClientTls, Failure> {
        let conn = ClientConnection::new(Arc::clone(&self.config), self.server_name.clone())
            .map_err(|e| Failure::new(ErrorClass::Tls, format!("TLS client: {e}")))?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| Failure::io("TLS handshake", &e))?;
        }
        Ok(stream)
    }
}

/// A client connection over TLS.
pub(crate) type ClientTls = StreamOwned<ClientConnection, TcpStream>;
/// A backend connection over TLS.
pub(crate) type ServerTls = StreamOwned<ServerConnection, TcpStream>;

/// Whether a finished handshake resumed a session.
pub(crate) fn resumed(kind: Option<HandshakeKind>) -> bool {
    kind == Some(HandshakeKind::Resumed)
}

/// A backend's TLS config: TLS 1.3 with [`CIPHER_SUITE`] and [`KEY_EXCHANGE`], the given chain
/// and key, no client authentication, stateless session tickets (so every client can resume
/// without a server-side cache limit).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, BenchError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BenchError::Config(format!("TLS 1.3 server: {e}")))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| config_error("server certificate", cert, e))?;
    config.ticketer =
        ring::Ticketer::new().map_err(|e| BenchError::Config(format!("session ticketer: {e}")))?;
    Ok(Arc::new(config))
}

/// Accepts TLS on `tcp`: runs the server handshake to its end.
pub(crate) fn accept(config: &Arc<ServerConfig>, tcp: TcpStream) -> io::Result<ServerTls> {
    let conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Sends close_notify and writes out what is buffered.
pub(crate) fn send_close_notify<C, S>(stream: &mut StreamOwned<C, TcpStream>) -> io::Result<()>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    stream.conn.send_close_notify();
    stream.flush()
}

/// Reads, treating a peer that closed TCP without close_notify as a clean end of stream (a
/// proxy that forwards the backend's FIN may not send one).
pub(crate) fn read_lenient(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match stream.read(buf) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}
