//! `envoy.transport_sockets.tls`: a filter chain's `DownstreamTlsContext` and a cluster's
//! `UpstreamTlsContext` (or `raw_buffer`, plaintext) into the data plane's plain TLS settings,
//! with Envoy's defaults applied here. Certificates, keys, CAs, CRLs and ticket keys are read
//! now (files at load, as Envoy reads them), and each context is built once
//! ([`ServerContext::new`], [`ClientContext::new`]) so that whatever rustls would refuse is
//! refused here, naming the field.
//!
//! Envoy's defaults (its `common.proto` for Envoy 1.40, the same text as envoy-types 0.7.7's
//! generated docs):
//! - protocol versions: minimum TLS 1.2 for both sides; maximum TLS 1.3 for a server
//!   (chain) and TLS 1.2 for a client (cluster), Envoy's long-standing client default
//!   (envoyproxy/envoy#9300 is still open);
//! - cipher suites (TLS 1.2; TLS 1.3's are always all enabled):
//!   `[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]
//!   [ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305] ECDHE-ECDSA-AES256-GCM-SHA384
//!   ECDHE-RSA-AES256-GCM-SHA384` for both sides, flattened in that order;
//! - curves: X25519, P-256;
//! - `max_session_keys` 1; session tickets with a random key made when the context is built.
//!
//! What Envoy accepts and Switchyard refuses, each by path and why: TLS 1.0 and 1.1 (rustls
//! speaks 1.2 and 1.3), cipher suites and curves rustls does not offer, a minimum version above
//! the maximum (Envoy accepts it and fails every handshake), an `sni` that is no DNS name or IP
//! address. Everything the walker does not list (SDS, certificate providers, key logs, OCSP,
//! SPKI and hash pinning, ...) is refused there, by path.

use super::proxy_protocol::upstream_proxy_protocol;
use super::string_matcher::{string_matcher, string_matcher_parts};
use super::{decode_any, duration, type_name, Result};
use crate::error::ConfigError;
use crate::path::{field, index};
use crate::rib::{
    ChainTlsConfig, ClusterTlsConfig, SecretKey, SecretSource, SecretValue, TlsSecrets,
    ValidationParts, ValidationSecretRef, XdsSource,
};
use crate::secrets::finish_validation;
use crate::stats_config::NameMatch;
use crate::type_names::{DOWNSTREAM_TLS, RAW_BUFFER, UPSTREAM_PROXY_PROTOCOL, UPSTREAM_TLS};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, transport_socket, DataSource, TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::FilterChain;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, downstream_tls_context, secret,
    subject_alt_name_matcher::SanType as PbSanType, tls_parameters::TlsProtocol,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use switchyard_dataplane::fib::chain_matcher::StringMatchKind;
use switchyard_dataplane::fib::UpstreamProxyProtocol;
use switchyard_dataplane::tls::settings::{
    Certificate, CipherSuite, ClientSettings, Curve, KeyFormat, PrivateKey, SanMatcher, SanType,
    ServerSettings, SessionTickets, StringMatch, StringPattern, TlsParams, TlsVersion, Validation,
};
use switchyard_dataplane::tls::{ClientContext, ServerContext, TlsConfigError, TICKET_KEY_LEN};

/// Envoy's default TLS 1.2 cipher suites (both sides), its `[A|B]` groups flattened.
const DEFAULT_CIPHER_SUITES: [CipherSuite; 6] = [
    CipherSuite::EcdheEcdsaAes128GcmSha256,
    CipherSuite::EcdheEcdsaChacha20Poly1305,
    CipherSuite::EcdheRsaAes128GcmSha256,
    CipherSuite::EcdheRsaChacha20Poly1305,
    CipherSuite::EcdheEcdsaAes256GcmSha384,
    CipherSuite::EcdheRsaAes256GcmSha384,
];

/// Envoy's default curves (non-FIPS builds).
const DEFAULT_CURVES: [Curve; 2] = [Curve::X25519, Curve::P256];

/// TLS 1.3 suite names: BoringSSL cannot choose them, so Envoy ignores them beside a TLS 1.2
/// name and refuses a list of nothing else; Switchyard does the same.
const TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Which end of a connection a context is for (its defaults differ).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// A filter chain's `transport_socket` (and `transport_socket_connect_timeout`): TLS
/// termination, or `None` for plaintext.
pub(super) fn chain_tls(fc: &FilterChain, path: &str) -> Result<Option<ChainTlsConfig>> {
    let spath = field(path, "transport_socket");
    let Some((any, tpath)) = typed_config(fc.transport_socket.as_ref(), &spath)? else {
        return Ok(None);
    };
    if type_name(any) == RAW_BUFFER {
        return Ok(None);
    }
    let ctx: DownstreamTlsContext = decode_any(any, DOWNSTREAM_TLS, &tpath)?;
    let (settings, secrets) = server_settings(&ctx, &tpath)?;
    let handshake_timeout = match &fc.transport_socket_connect_timeout {
        Some(d) => Some(duration(
            d,
            &field(path, "transport_socket_connect_timeout"),
        )?)
        .filter(|d| !d.is_zero()),
        None => None,
    };
    Ok(Some(ChainTlsConfig {
        settings,
        secrets,
        handshake_timeout,
    }))
}

/// A cluster's `transport_socket`: TLS origination (or `None`: plaintext), with a PROXY
/// header before it when the socket is `envoy.transport_sockets.upstream_proxy_protocol`
/// (whose own `transport_socket` is then the TLS or plaintext one).
pub(super) fn cluster_transport(
    socket: Option<&TransportSocket>,
    path: &str,
) -> Result<(Option<ClusterTlsConfig>, Option<UpstreamProxyProtocol>)> {
    let spath = field(path, "transport_socket");
    let Some((any, tpath)) = typed_config(socket, &spath)? else {
        return Ok((None, None));
    };
    if type_name(any) != UPSTREAM_PROXY_PROTOCOL {
        return Ok((cluster_tls(socket, path)?, None));
    }
    let (inner, proxy) = upstream_proxy_protocol(any, &tpath)?;
    Ok((cluster_tls(inner.as_ref(), &tpath)?, Some(proxy)))
}

/// A cluster's `transport_socket`: TLS origination, or `None` for plaintext.
fn cluster_tls(socket: Option<&TransportSocket>, path: &str) -> Result<Option<ClusterTlsConfig>> {
    let spath = field(path, "transport_socket");
    let Some((any, tpath)) = typed_config(socket, &spath)? else {
        return Ok(None);
    };
    if type_name(any) == RAW_BUFFER {
        return Ok(None);
    }
    let ctx: UpstreamTlsContext = decode_any(any, UPSTREAM_TLS, &tpath)?;
    client_settings(&ctx, &tpath).map(Some)
}

/// A transport socket's `typed_config` and its path; `None` without a socket.
fn typed_config<'a>(
    socket: Option<&'a TransportSocket>,
    spath: &str,
) -> Result<Option<(&'a envoy_types::pb::google::protobuf::Any, String)>> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    if socket.name.is_empty() {
        return Err(ConfigError::invalid(
            field(spath, "name"),
            "required (non-empty), as in Envoy",
        ));
    }
    let tpath = field(spath, "typed_config");
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => Ok(Some((any, tpath))),
        None => Err(ConfigError::invalid(tpath, "required")),
    }
}

/// A `DownstreamTlsContext` at `path` (its `typed_config`), and what it takes from SDS.
fn server_settings(ctx: &DownstreamTlsContext, path: &str) -> Result<(ServerSettings, TlsSecrets)> {
    let cpath = field(path, "common_tls_context");
    let empty = CommonTlsContext::default();
    let common = ctx.common_tls_context.as_ref().unwrap_or(&empty);
    let certificates = certificates(&common.tls_certificates, &cpath)?;
    let mut secrets = sds_references(common, &cpath)?;
    secrets.inline_certificates = certificates.len();
    if certificates.is_empty() && secrets.certificates.is_empty() {
        return Err(ConfigError::invalid(
            field(&cpath, "tls_certificates"),
            "a server context needs at least one certificate (Envoy: No TLS certificates \
             found for server context)",
        ));
    }
    let require_client_certificate = ctx.require_client_certificate.is_some_and(|b| b.value);
    let mut validation = validation(common, &cpath)?;
    if require_client_certificate && validation.is_none() && secrets.validation.is_none() {
        // Envoy then asks for a certificate and takes any: a validation context with nothing
        // to check is exactly that.
        validation = Some(Validation::default());
    }
    use downstream_tls_context::SessionTicketKeysType as T;
    let tickets = match &ctx.session_ticket_keys_type {
        None => SessionTickets::Random,
        Some(T::DisableStatelessSessionResumption(true)) => SessionTickets::Disabled,
        Some(T::DisableStatelessSessionResumption(false)) => SessionTickets::Random,
        Some(T::SessionTicketKeys(k)) => {
            let kpath = field(&field(path, "session_ticket_keys"), "keys");
            if k.keys.is_empty() {
                return Err(ConfigError::invalid(kpath, "at least one key is required"));
            }
            let keys = k
                .keys
                .iter()
                .enumerate()
                .map(|(i, ds)| {
                    let p = index(&kpath, i);
                    let key = read(ds, &p)?;
                    if key.len() != TICKET_KEY_LEN {
                        return Err(ConfigError::invalid(
                            p,
                            format!(
                                "a session ticket key is exactly {TICKET_KEY_LEN} bytes; this \
                                 one is {} (Envoy: Incorrect TLS session ticket key length)",
                                key.len()
                            ),
                        ));
                    }
                    Ok(key)
                })
                .collect::<Result<Vec<_>>>()?;
            SessionTickets::Keys(keys)
        }
        Some(T::SessionTicketKeysSdsSecretConfig(_)) => {
            return Err(ConfigError::unsupported(
                field(path, "session_ticket_keys_sds_secret_config"),
                "not supported by Switchyard",
            ))
        }
    };
    let settings = ServerSettings {
        certificates,
        validation,
        require_client_certificate,
        alpn: alpn(common),
        params: params(common.tls_params.as_ref(), Side::Server, &cpath)?,
        tickets,
    };
    if secrets.ready {
        ServerContext::new(&settings).map_err(|e| context_error(e, path))?;
    }
    Ok((settings, secrets))
}

/// An `UpstreamTlsContext` at `path` (its `typed_config`).
fn client_settings(ctx: &UpstreamTlsContext, path: &str) -> Result<ClusterTlsConfig> {
    let cpath = field(path, "common_tls_context");
    let empty = CommonTlsContext::default();
    let common = ctx.common_tls_context.as_ref().unwrap_or(&empty);
    if common.tls_certificates.len() > 1 {
        return Err(ConfigError::invalid(
            index(&field(&cpath, "tls_certificates"), 1),
            "a client context takes at most one certificate (Envoy: Multiple TLS certificates \
             are not supported for client contexts)",
        ));
    }
    let certificate = certificates(&common.tls_certificates, &cpath)?.pop();
    let secrets = sds_references(common, &cpath)?;
    let sds_certificates = secrets.certificates.len();
    if sds_certificates + usize::from(certificate.is_some()) > 1 {
        let at = if certificate.is_some() {
            index(&field(&cpath, "tls_certificate_sds_secret_configs"), 0)
        } else {
            index(&field(&cpath, "tls_certificate_sds_secret_configs"), 1)
        };
        return Err(ConfigError::invalid(
            at,
            "a client context takes at most one certificate, inline or from SDS (Envoy: \
             Multiple TLS certificates are not supported for client contexts)",
        ));
    }
    let settings = ClientSettings {
        certificate,
        validation: validation(common, &cpath)?,
        sni: Some(ctx.sni.clone()).filter(|s| !s.is_empty()),
        alpn: alpn(common),
        params: params(common.tls_params.as_ref(), Side::Client, &cpath)?,
        max_session_keys: ctx.max_session_keys.map_or(1, |v| v.value),
    };
    if secrets.ready {
        ClientContext::new(&settings).map_err(|e| context_error(e, path))?;
    }
    Ok(ClusterTlsConfig { settings, secrets })
}

/// What building the context refused, at the field it came from (`path`: the context's
/// `typed_config`). `convert` checks most of these first, with Envoy's wording; this names
/// what only rustls can tell (a key that does not belong to its certificate, a CA that is no
/// CA certificate, a CRL that does not parse, an `sni` that is no server name).
fn context_error(e: TlsConfigError, path: &str) -> ConfigError {
    let common = field(path, "common_tls_context");
    let vc = field(&common, "validation_context");
    let (at, why) = match e {
        TlsConfigError::Certificate { index: i, reason } => {
            (index(&field(&common, "tls_certificates"), i), reason)
        }
        TlsConfigError::TrustedCa(r) => (field(&vc, "trusted_ca"), r),
        TlsConfigError::Crl(r) => (field(&vc, "crl"), r),
        TlsConfigError::Regex(r) => (field(&vc, "match_typed_subject_alt_names"), r),
        TlsConfigError::Params(r) => (field(&common, "tls_params"), r),
        TlsConfigError::Sni(r) => (field(path, "sni"), r),
        TlsConfigError::TicketKeys(r) => (field(path, "session_ticket_keys"), r),
    };
    ConfigError::invalid(at, why)
}

/// `tls_certificates`: each chain (PEM, leaf first) with its key (PEM: PKCS#1, PKCS#8 or
/// SEC1).
fn certificates(certs: &[TlsCertificate], cpath: &str) -> Result<Vec<Certificate>> {
    let lpath = field(cpath, "tls_certificates");
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| certificate(c, &index(&lpath, i)))
        .collect()
}

/// One `TlsCertificate` at `p`.
fn certificate(c: &TlsCertificate, p: &str) -> Result<Certificate> {
    let chain_path = field(p, "certificate_chain");
    let Some(chain) = &c.certificate_chain else {
        return Err(ConfigError::invalid(chain_path, "required"));
    };
    let chain_source = file_name(chain);
    let chain = pem_certificates(&read(chain, &chain_path)?, &chain_path)?;
    let key_path = field(p, "private_key");
    let Some(key) = &c.private_key else {
        return Err(ConfigError::invalid(key_path, "required"));
    };
    let key = private_key(&read(key, &key_path)?, &key_path)?;
    Ok(Certificate {
        chain,
        key,
        chain_source,
    })
}

/// Every `CERTIFICATE` block of `pem`, in order (at least one).
fn pem_certificates(pem: &[u8], path: &str) -> Result<Vec<Vec<u8>>> {
    pem_blocks::<CertificateDer<'static>>(pem, "CERTIFICATE", path)
}

/// The DER of every `-----BEGIN <label>-----` block of `pem` (those of `T`), in order; at
/// least one.
fn pem_blocks<T: PemObject + AsRef<[u8]>>(
    pem: &[u8],
    label: &str,
    path: &str,
) -> Result<Vec<Vec<u8>>> {
    let blocks = T::pem_slice_iter(pem)
        .map(|b| b.map(|b| b.as_ref().to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(path, format!("not PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(ConfigError::invalid(
            path,
            format!("no PEM {label} (-----BEGIN {label}-----) in it"),
        ));
    }
    Ok(blocks)
}

fn private_key(pem: &[u8], path: &str) -> Result<PrivateKey> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        ConfigError::invalid(
            path,
            format!("no PEM private key (PKCS#1, PKCS#8 or SEC1) in it: {e}"),
        )
    })?;
    let format = match &key {
        PrivateKeyDer::Pkcs1(_) => KeyFormat::Pkcs1,
        PrivateKeyDer::Sec1(_) => KeyFormat::Sec1,
        PrivateKeyDer::Pkcs8(_) => KeyFormat::Pkcs8,
        _ => return Err(ConfigError::invalid(path, "an unknown kind of private key")),
    };
    Ok(PrivateKey {
        format,
        der: key.secret_der().to_vec(),
    })
}

/// A `DataSource`'s file name, if it names one.
fn file_name(ds: &DataSource) -> Option<String> {
    match &ds.specifier {
        Some(data_source::Specifier::Filename(name)) => Some(name.clone()),
        _ => None,
    }
}

/// A `DataSource`'s bytes: a file (read now), inline bytes or string, or an environment
/// variable.
fn read(ds: &DataSource, path: &str) -> Result<Vec<u8>> {
    use data_source::Specifier as S;
    match &ds.specifier {
        Some(S::Filename(name)) => std::fs::read(name).map_err(|e| {
            ConfigError::invalid(
                field(path, "filename"),
                format!("cannot read {name:?}: {e}"),
            )
        }),
        Some(S::InlineBytes(b)) => Ok(b.clone()),
        Some(S::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(S::EnvironmentVariable(name)) => match std::env::var_os(name) {
            Some(v) => Ok(v.into_encoded_bytes()),
            None => Err(ConfigError::invalid(
                field(path, "environment_variable"),
                format!("environment variable {name:?} is not set"),
            )),
        },
        None => Err(ConfigError::invalid(
            path,
            "one of filename, inline_bytes, inline_string or environment_variable is required",
        )),
    }
}

fn alpn(common: &CommonTlsContext) -> Vec<Vec<u8>> {
    common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect()
}

/// `tls_params`, with Envoy's defaults for `side`.
fn params(p: Option<&TlsParameters>, side: Side, cpath: &str) -> Result<TlsParams> {
    let ppath = field(cpath, "tls_params");
    let empty = TlsParameters::default();
    let p = p.unwrap_or(&empty);
    let default_max = match side {
        Side::Server => TlsVersion::V1_3,
        Side::Client => TlsVersion::V1_2,
    };
    let min_version = version(
        p.tls_minimum_protocol_version,
        TlsVersion::V1_2,
        &field(&ppath, "tls_minimum_protocol_version"),
    )?;
    let max_version = version(
        p.tls_maximum_protocol_version,
        default_max,
        &field(&ppath, "tls_maximum_protocol_version"),
    )?;
    if min_version > max_version {
        let default = if p.tls_maximum_protocol_version == TlsProtocol::TlsAuto as i32 {
            " (the default for a cluster, as in Envoy; set tls_maximum_protocol_version: TLSv1_3)"
        } else {
            ""
        };
        return Err(ConfigError::invalid(
            field(&ppath, "tls_minimum_protocol_version"),
            format!(
                "TLSv1_3 is above tls_maximum_protocol_version TLSv1_2{default}: no version \
                 would be left (Envoy accepts this and fails every handshake)"
            ),
        ));
    }
    Ok(TlsParams {
        min_version,
        max_version,
        cipher_suites: Some(cipher_suites(&p.cipher_suites, &ppath)?),
        curves: Some(curves(&p.ecdh_curves, &ppath)?),
    })
}

fn version(v: i32, default: TlsVersion, path: &str) -> Result<TlsVersion> {
    match TlsProtocol::try_from(v) {
        Ok(TlsProtocol::TlsAuto) => Ok(default),
        Ok(TlsProtocol::TlSv12) => Ok(TlsVersion::V1_2),
        Ok(TlsProtocol::TlSv13) => Ok(TlsVersion::V1_3),
        Ok(old @ (TlsProtocol::TlSv10 | TlsProtocol::TlSv11)) => Err(ConfigError::unsupported(
            path,
            format!(
                "{} is not supported: Switchyard's TLS (rustls) speaks TLS 1.2 and 1.3 only",
                old.as_str_name()
            ),
        )),
        Err(_) => Err(ConfigError::invalid(path, format!("unknown version {v}"))),
    }
}

/// `cipher_suites`: Envoy's (BoringSSL's) names, each entry a name or an `[A|B|...]` group of
/// equal preference (flattened, in order); entries may also be joined with `:`. Empty:
/// Envoy's default list.
fn cipher_suites(names: &[String], ppath: &str) -> Result<Vec<CipherSuite>> {
    if names.is_empty() {
        return Ok(DEFAULT_CIPHER_SUITES.to_vec());
    }
    let lpath = field(ppath, "cipher_suites");
    let mut out = Vec::new();
    let mut tls13_only = true;
    for (i, entry) in names.iter().enumerate() {
        let p = index(&lpath, i);
        for group in entry.split(':') {
            let inner = match group.strip_prefix('[') {
                Some(rest) => rest.strip_suffix(']').ok_or_else(|| {
                    ConfigError::invalid(&p, format!("{group:?}: a group must end with ']'"))
                })?,
                None => group,
            };
            for name in inner.split('|') {
                if TLS13_SUITES.contains(&name) {
                    continue;
                }
                tls13_only = false;
                let Some(suite) = CipherSuite::by_name(name) else {
                    return Err(ConfigError::unsupported(
                        &p,
                        format!(
                            "cipher suite {name:?} is not one Switchyard (rustls) offers; \
                             supported: {} (TLS 1.3's suites are always enabled)",
                            CipherSuite::ALL.map(|(n, _)| n).join(", ")
                        ),
                    ));
                };
                if !out.contains(&suite) {
                    out.push(suite);
                }
            }
        }
    }
    if tls13_only {
        return Err(ConfigError::invalid(
            lpath,
            "only TLS 1.3 suites, which cannot be chosen (Envoy: Failed to initialize cipher \
             suites); name TLS 1.2 suites or leave the list out",
        ));
    }
    Ok(out)
}

/// `ecdh_curves` (X25519, P-256, P-384); empty: Envoy's default.
fn curves(names: &[String], ppath: &str) -> Result<Vec<Curve>> {
    if names.is_empty() {
        return Ok(DEFAULT_CURVES.to_vec());
    }
    let lpath = field(ppath, "ecdh_curves");
    let mut out = Vec::new();
    for (i, entry) in names.iter().enumerate() {
        for name in entry.split(':') {
            let Some(curve) = Curve::by_name(name) else {
                return Err(ConfigError::unsupported(
                    index(&lpath, i),
                    format!(
                        "curve {name:?} is not one Switchyard (rustls) offers; supported: {}",
                        Curve::ALL.map(|(n, _)| n).join(", ")
                    ),
                ));
            };
            if !out.contains(&curve) {
                out.push(curve);
            }
        }
    }
    Ok(out)
}

/// `validation_context` (inline); `None` with none or with one from SDS (see
/// [`sds_references`]).
fn validation(common: &CommonTlsContext, cpath: &str) -> Result<Option<Validation>> {
    use common_tls_context::ValidationContextType as V;
    match &common.validation_context_type {
        Some(V::ValidationContext(vc)) => {
            let path = field(cpath, "validation_context");
            let parts = validation_parts(vc, &path)?;
            finish_validation(parts)
                .map(Some)
                .map_err(|e| ConfigError::invalid(field(&path, "trusted_ca"), e))
        }
        // SDS ones: `sds_references`; certificate providers: refused by the walker.
        _ => Ok(None),
    }
}

/// What `common` takes from SDS: `tls_certificate_sds_secret_configs` and
/// `validation_context_sds_secret_config` or `combined_validation_context` (its default
/// checked here). Ready when it takes nothing.
fn sds_references(common: &CommonTlsContext, cpath: &str) -> Result<TlsSecrets> {
    use common_tls_context::ValidationContextType as V;
    let mut out = TlsSecrets::none();
    let mut timeouts = Vec::new();
    let lpath = field(cpath, "tls_certificate_sds_secret_configs");
    for (i, c) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
        let (key, timeout) = sds_secret_config(c, &index(&lpath, i))?;
        out.certificates.push(key);
        timeouts.push(timeout);
    }
    let validation = match &common.validation_context_type {
        Some(V::ValidationContextSdsSecretConfig(c)) => {
            let (secret, timeout) =
                sds_secret_config(c, &field(cpath, "validation_context_sds_secret_config"))?;
            timeouts.push(timeout);
            Some(ValidationSecretRef {
                secret,
                default: None,
            })
        }
        Some(V::CombinedValidationContext(c)) => {
            let path = field(cpath, "combined_validation_context");
            #[allow(deprecated)]
            if c.validation_context_certificate_provider.is_some()
                || c.validation_context_certificate_provider_instance.is_some()
            {
                return Err(ConfigError::unsupported(
                    field(&path, "validation_context_certificate_provider"),
                    "not supported by Switchyard",
                ));
            }
            let Some(sds) = &c.validation_context_sds_secret_config else {
                return Err(ConfigError::invalid(
                    field(&path, "validation_context_sds_secret_config"),
                    "required",
                ));
            };
            let (secret, timeout) =
                sds_secret_config(sds, &field(&path, "validation_context_sds_secret_config"))?;
            timeouts.push(timeout);
            let default = match &c.default_validation_context {
                Some(vc) => validation_parts(vc, &field(&path, "default_validation_context"))?,
                None => ValidationParts::default(),
            };
            Some(ValidationSecretRef {
                secret,
                default: Some(default),
            })
        }
        _ => None,
    };
    out.validation = validation;
    let names_none = out.keys().next().is_none();
    out.ready = names_none;
    // The longest wait of its sources; one that waits forever makes it wait forever.
    out.initial_fetch_timeout = if timeouts.iter().any(Option::is_none) {
        None
    } else {
        timeouts.into_iter().flatten().max()
    };
    if out.ready {
        out.initial_fetch_timeout = None;
    }
    Ok(out)
}

/// An `SdsSecretConfig`: the secret's name and source (none: a static secret), and the
/// source's `initial_fetch_timeout` (`None`: no limit; a static secret waits for nothing).
fn sds_secret_config(
    c: &SdsSecretConfig,
    path: &str,
) -> Result<(SecretKey, Option<std::time::Duration>)> {
    if c.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty), as in Envoy",
        ));
    }
    let spath = field(path, "sds_config");
    let (source, timeout) = match &c.sds_config {
        None => (SecretSource::Static, Some(std::time::Duration::ZERO)),
        Some(cs) => match super::ads::config_source(Some(cs), &spath)? {
            (XdsSource::Ads, t) => (SecretSource::Ads, t),
            (XdsSource::File(f), t) => (SecretSource::File(f), t),
            (XdsSource::Grpc(_), _) => {
                return Err(ConfigError::unsupported(
                    field(&spath, "api_config_source"),
                    "SDS from a gRPC stream of its own is not supported by Switchyard (use \
                     ads, path_config_source, or a static secret)",
                ))
            }
        },
    };
    Ok((
        SecretKey {
            source,
            name: c.name.clone(),
        },
        timeout,
    ))
}

/// `static_resources.secrets[i]` or an SDS resource: its name and checked payload. A
/// certificate must parse and its key belong to it (a context is built with it); a
/// validation context's CA and CRLs must parse. Session ticket keys and generic secrets are
/// refused by path.
pub(super) fn secret(s: &Secret, path: &str) -> Result<(String, SecretValue)> {
    if s.name.is_empty() {
        return Err(ConfigError::invalid(
            field(path, "name"),
            "required (non-empty), as in Envoy",
        ));
    }
    let value = match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            let cpath = field(path, "tls_certificate");
            let certificate = certificate(c, &cpath)?;
            let settings = ServerSettings {
                certificates: vec![certificate.clone()],
                validation: None,
                require_client_certificate: false,
                alpn: Vec::new(),
                params: TlsParams::default(),
                tickets: SessionTickets::Disabled,
            };
            ServerContext::new(&settings).map_err(|e| match e {
                TlsConfigError::Certificate { reason, .. } => ConfigError::invalid(&cpath, reason),
                other => ConfigError::invalid(&cpath, other.to_string()),
            })?;
            SecretValue::Certificate(certificate)
        }
        Some(secret::Type::ValidationContext(vc)) => {
            let vpath = field(path, "validation_context");
            let parts = validation_parts(vc, &vpath)?;
            check_validation_parts(&parts, &vpath)?;
            SecretValue::Validation(parts)
        }
        Some(secret::Type::SessionTicketKeys(_)) => {
            return Err(ConfigError::unsupported(
                field(path, "session_ticket_keys"),
                "not supported by Switchyard (session_ticket_keys_sds_secret_config is not \
                 either)",
            ))
        }
        Some(secret::Type::GenericSecret(_)) => {
            return Err(ConfigError::unsupported(
                field(path, "generic_secret"),
                "not supported by Switchyard",
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                path,
                "one of tls_certificate or validation_context is required",
            ))
        }
    };
    Ok((s.name.clone(), value))
}

/// Builds a client context with `parts`' CA and CRLs alone, so what rustls or webpki would
/// refuse (a CA that is no CA certificate, a CRL that does not parse) is refused now.
fn check_validation_parts(parts: &ValidationParts, path: &str) -> Result<()> {
    let trusted_ca = parts
        .trusted_ca
        .as_ref()
        .map(|(c, _)| c.clone())
        .unwrap_or_default();
    if trusted_ca.is_empty() {
        return Ok(());
    }
    let settings = ClientSettings {
        certificate: None,
        validation: Some(Validation {
            trusted_ca,
            crls: parts.crls.clone().unwrap_or_default(),
            san_matchers: Vec::new(),
            trusted_ca_source: None,
        }),
        sni: None,
        alpn: Vec::new(),
        params: TlsParams::default(),
        max_session_keys: 0,
    };
    ClientContext::new(&settings).map_err(|e| match e {
        TlsConfigError::TrustedCa(r) => ConfigError::invalid(field(path, "trusted_ca"), r),
        TlsConfigError::Crl(r) => ConfigError::invalid(field(path, "crl"), r),
        other => ConfigError::invalid(path, other.to_string()),
    })?;
    Ok(())
}

/// A `CertificateValidationContext` as given (each singular field only if set); Envoy's
/// checks on a complete one are [`finish_validation`]'s.
fn validation_parts(vc: &CertificateValidationContext, path: &str) -> Result<ValidationParts> {
    let trusted_ca = match &vc.trusted_ca {
        Some(ds) => {
            let p = field(path, "trusted_ca");
            Some(pem_certificates(&read(ds, &p)?, &p)?)
        }
        None => None,
    };
    let crls = match &vc.crl {
        Some(ds) => {
            let p = field(path, "crl");
            Some(crls(&read(ds, &p)?, &p)?)
        }
        None => None,
    };
    let mut san_matchers = Vec::new();
    let tpath = field(path, "match_typed_subject_alt_names");
    for (i, m) in vc.match_typed_subject_alt_names.iter().enumerate() {
        let p = index(&tpath, i);
        let san_type =
            match PbSanType::try_from(m.san_type) {
                Ok(PbSanType::Dns) => SanType::Dns,
                Ok(PbSanType::Uri) => SanType::Uri,
                Ok(PbSanType::Email) => SanType::Email,
                Ok(PbSanType::IpAddress) => SanType::IpAddress,
                Ok(PbSanType::OtherName) => return Err(ConfigError::unsupported(
                    field(&p, "san_type"),
                    "OTHER_NAME is not supported by Switchyard (DNS, URI, EMAIL and IP_ADDRESS \
                     are)",
                )),
                _ => {
                    return Err(ConfigError::invalid(
                        field(&p, "san_type"),
                        "required: one of DNS, URI, EMAIL, IP_ADDRESS",
                    ))
                }
            };
        let Some(matcher) = &m.matcher else {
            return Err(ConfigError::invalid(field(&p, "matcher"), "required"));
        };
        san_matchers.push(SanMatcher {
            san_type,
            matcher: tls_string_match(matcher, &field(&p, "matcher"))?,
        });
    }
    // The deprecated untyped form: Envoy matches each against DNS, URI, EMAIL and IP SANs.
    #[allow(deprecated)]
    let untyped = &vc.match_subject_alt_names;
    let upath = field(path, "match_subject_alt_names");
    for (i, m) in untyped.iter().enumerate() {
        let matcher = tls_string_match(m, &index(&upath, i))?;
        for san_type in [
            SanType::Dns,
            SanType::Uri,
            SanType::Email,
            SanType::IpAddress,
        ] {
            san_matchers.push(SanMatcher {
                san_type,
                matcher: matcher.clone(),
            });
        }
    }
    Ok(ValidationParts {
        trusted_ca: trusted_ca.map(|c| (c, vc.trusted_ca.as_ref().and_then(file_name))),
        crls,
        san_matchers,
    })
}

/// CRLs: PEM blocks (`X509 CRL`), or one DER CRL.
fn crls(data: &[u8], path: &str) -> Result<Vec<Vec<u8>>> {
    if !data.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(vec![data.to_vec()]);
    }
    pem_blocks::<CertificateRevocationListDer<'static>>(data, "X509 CRL", path)
}

/// A `StringMatcher` (checked as everywhere else) as the data plane's TLS matcher.
fn tls_string_match(m: &StringMatcher, path: &str) -> Result<StringMatch> {
    let regex = match &m.match_pattern {
        Some(MatchPattern::SafeRegex(r)) => Some(r.regex.clone()),
        _ => None,
    };
    let parts = string_matcher_parts!(&m.match_pattern, MatchPattern);
    let pattern = match (string_matcher(parts, m.ignore_case, path)?, regex) {
        (NameMatch::Regex(_), Some(re)) => StringPattern::Regex(re),
        (NameMatch::Plain(p), _) => {
            let s = p.pattern.to_string();
            match p.kind {
                StringMatchKind::Exact => StringPattern::Exact(s),
                StringMatchKind::Prefix => StringPattern::Prefix(s),
                StringMatchKind::Suffix => StringPattern::Suffix(s),
                StringMatchKind::Contains => StringPattern::Contains(s),
            }
        }
        (NameMatch::Regex(_), None) => unreachable!("a regex matcher comes from safe_regex"),
    };
    Ok(StringMatch {
        pattern,
        ignore_case: m.ignore_case,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_are_envoys() {
        let server = params(None, Side::Server, "c").unwrap();
        assert_eq!(server.min_version, TlsVersion::V1_2);
        assert_eq!(server.max_version, TlsVersion::V1_3);
        assert_eq!(
            server.cipher_suites.as_deref(),
            Some(&DEFAULT_CIPHER_SUITES[..])
        );
        assert_eq!(
            server.curves.as_deref(),
            Some(&[Curve::X25519, Curve::P256][..])
        );
        let client = params(None, Side::Client, "c").unwrap();
        assert_eq!(client.min_version, TlsVersion::V1_2);
        assert_eq!(
            client.max_version,
            TlsVersion::V1_2,
            "Envoy's client default"
        );
        // Envoy's documented default list, groups flattened, is the same list.
        let envoy = names(&[
            "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
            "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
        ]);
        assert_eq!(cipher_suites(&envoy, "p").unwrap(), DEFAULT_CIPHER_SUITES);
    }

    #[test]
    fn a_client_asking_for_tls13_only_must_raise_the_maximum() {
        let p = TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        };
        let e = params(Some(&p), Side::Client, "c").unwrap_err();
        assert_eq!(e.path(), "c.tls_params.tls_minimum_protocol_version");
        assert!(
            e.message().contains("set tls_maximum_protocol_version"),
            "{e}"
        );
        assert!(params(Some(&p), Side::Server, "c").is_ok());
    }

    #[test]
    fn cipher_groups_flatten_in_order() {
        let got = cipher_suites(
            &names(&[
                "[ECDHE-RSA-CHACHA20-POLY1305|ECDHE-RSA-AES128-GCM-SHA256]",
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305",
            ]),
            "p",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                CipherSuite::EcdheRsaChacha20Poly1305,
                CipherSuite::EcdheRsaAes128GcmSha256,
                CipherSuite::EcdheEcdsaAes256GcmSha384,
            ]
        );
        // TLS 1.3 names beside TLS 1.2 ones are ignored, as Envoy does; alone, refused.
        let got = cipher_suites(
            &names(&["TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]),
            "p",
        )
        .unwrap();
        assert_eq!(got, [CipherSuite::EcdheRsaAes128GcmSha256]);
        let e = cipher_suites(&names(&["TLS_AES_128_GCM_SHA256"]), "p").unwrap_err();
        assert_eq!(e.path(), "p.cipher_suites");
    }

    #[test]
    fn unknown_ciphers_and_curves_are_named() {
        let e = cipher_suites(
            &names(&[
                "ECDHE-RSA-AES128-GCM-SHA256",
                "[AES128-SHA|ECDHE-RSA-AES128-SHA]",
            ]),
            "p",
        )
        .unwrap_err();
        assert_eq!(e.path(), "p.cipher_suites[1]");
        assert!(e.message().contains("\"AES128-SHA\""), "{e}");
        assert!(e.message().contains("ECDHE-ECDSA-CHACHA20-POLY1305"), "{e}");
        let e = cipher_suites(&names(&["[ECDHE-RSA-AES128-GCM-SHA256"]), "p").unwrap_err();
        assert_eq!(e.path(), "p.cipher_suites[0]");
        let e = curves(&names(&["X25519", "P-521"]), "p").unwrap_err();
        assert_eq!(e.path(), "p.ecdh_curves[1]");
        assert!(e.message().contains("P-521"), "{e}");
        assert_eq!(
            curves(&names(&["P-384:X25519"]), "p").unwrap(),
            [Curve::P384, Curve::X25519]
        );
    }

    #[test]
    fn keys_keep_their_format() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/certs/");
        let pem = std::fs::read(format!("{root}server.key")).unwrap();
        assert_eq!(private_key(&pem, "k").unwrap().format, KeyFormat::Pkcs8);
        let e = private_key(b"not a key", "a.private_key").unwrap_err();
        assert_eq!(e.path(), "a.private_key");
        let e = pem_certificates(&pem, "a.certificate_chain").unwrap_err();
        assert_eq!(e.path(), "a.certificate_chain");
    }

    #[test]
    fn untyped_san_matchers_cover_four_types() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/certs/");
        let vc = CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename(format!("{root}ca.pem"))),
                ..Default::default()
            }),
            #[allow(deprecated)]
            match_subject_alt_names: vec![StringMatcher {
                match_pattern: Some(MatchPattern::Suffix(".example.com".into())),
                ignore_case: true,
            }],
            ..Default::default()
        };
        let v = validation_parts(&vc, "v").unwrap();
        let types: Vec<SanType> = v.san_matchers.iter().map(|m| m.san_type).collect();
        assert_eq!(
            types,
            [
                SanType::Dns,
                SanType::Uri,
                SanType::Email,
                SanType::IpAddress
            ]
        );
        assert!(v.san_matchers.iter().all(|m| m.matcher
            == StringMatch {
                pattern: StringPattern::Suffix(".example.com".into()),
                ignore_case: true
            }));
    }
}
