//! SDS secrets joined into TLS contexts: a chain's or cluster's settings as configured, plus
//! the secrets it names ([`crate::rib::TlsSecrets`]), give the settings its context is built
//! from.
//!
//! Guarantees:
//! - **Idempotent.** [`resolve`] rebuilds the SDS parts from the references each time (the
//!   inline certificates are kept, those from SDS replaced), so a RIB may be resolved again
//!   with newer secrets.
//! - **All or nothing per context.** A context is ready only when every secret it names is
//!   there and the merged validation context is valid; otherwise it is marked not ready (it
//!   serves no handshake) and keeps the inline parts only.
//! - **Envoy's merge** for `combined_validation_context`: the SDS validation context is
//!   merged into `default_validation_context` as protobuf's `MergeFrom` does (a singular
//!   field set in the SDS one wins, lists are joined, default first).
//! - A secret of the wrong kind (a validation context where a certificate is named, or the
//!   reverse) counts as missing, and is logged once per composition by the caller through
//!   the returned problems.

use crate::rib::{
    ChainTlsConfig, ClusterTlsConfig, Rib, SecretKey, SecretSource, SecretValue, TlsSecrets,
    ValidationParts,
};
use std::collections::BTreeMap;
use switchyard_dataplane::tls::settings::{Certificate, Validation};

/// Secrets received over SDS (ADS and files), by source and name.
pub type DynamicSecrets = BTreeMap<SecretKey, SecretValue>;

/// The finished validation context of `parts` (Envoy's checks on a complete one), or why
/// it is not valid.
pub fn finish_validation(parts: ValidationParts) -> Result<Validation, String> {
    let (trusted_ca, trusted_ca_source) = parts.trusted_ca.unwrap_or_default();
    let crls = parts.crls.unwrap_or_default();
    if trusted_ca.is_empty() {
        if !parts.san_matchers.is_empty() {
            return Err(
                "trusted_ca is required with subject alt name matchers (Envoy: \
                        SAN-based verification of peer certificates without trusted CA is \
                        insecure and not allowed)"
                    .into(),
            );
        }
        if !crls.is_empty() {
            return Err(
                "trusted_ca is required with a crl (Envoy: Failed to load CRL ... without \
                 trusted CA)"
                    .into(),
            );
        }
    }
    Ok(Validation {
        trusted_ca,
        crls,
        san_matchers: parts.san_matchers,
        trusted_ca_source,
    })
}

/// `default` merged with `dynamic` as protobuf's `MergeFrom` merges a message into another.
pub fn merge_validation(default: &ValidationParts, dynamic: &ValidationParts) -> ValidationParts {
    ValidationParts {
        trusted_ca: dynamic
            .trusted_ca
            .clone()
            .or_else(|| default.trusted_ca.clone()),
        crls: dynamic.crls.clone().or_else(|| default.crls.clone()),
        san_matchers: default
            .san_matchers
            .iter()
            .chain(&dynamic.san_matchers)
            .cloned()
            .collect(),
    }
}

/// Looks secrets up: static ones in the bootstrap's, the others in what SDS delivered.
struct Lookup<'a> {
    statics: &'a BTreeMap<String, SecretValue>,
    dynamic: &'a DynamicSecrets,
}

impl Lookup<'_> {
    fn get(&self, key: &SecretKey) -> Option<&SecretValue> {
        match key.source {
            SecretSource::Static => self.statics.get(&key.name),
            _ => self.dynamic.get(key),
        }
    }

    fn certificate(&self, key: &SecretKey) -> Result<&Certificate, String> {
        match self.get(key) {
            Some(SecretValue::Certificate(c)) => Ok(c),
            Some(_) => Err(format!("secret '{}' is no tls_certificate", key.name)),
            None => Err(format!("secret '{}' has not arrived", key.name)),
        }
    }

    /// The validation context `secrets` names, merged and finished; `None` when it names
    /// none.
    fn validation(&self, secrets: &TlsSecrets) -> Result<Option<Validation>, String> {
        let Some(v) = &secrets.validation else {
            return Ok(None);
        };
        let parts = match self.get(&v.secret) {
            Some(SecretValue::Validation(p)) => p,
            Some(_) => {
                return Err(format!(
                    "secret '{}' is no validation_context",
                    v.secret.name
                ))
            }
            None => return Err(format!("secret '{}' has not arrived", v.secret.name)),
        };
        let merged = match &v.default {
            Some(d) => merge_validation(d, parts),
            None => parts.clone(),
        };
        finish_validation(merged)
            .map(Some)
            .map_err(|e| format!("validation context '{}': {e}", v.secret.name))
    }
}

/// Fills every TLS context of `rib` from its secrets (statics from `rib.secrets`, the rest
/// from `dynamic`). Returns what kept a context from being ready (`where: why`), for the log.
pub fn resolve(rib: &mut Rib, dynamic: &DynamicSecrets) -> Vec<String> {
    let statics = std::mem::take(&mut rib.secrets);
    let lookup = Lookup {
        statics: &statics,
        dynamic,
    };
    let mut problems = Vec::new();
    for l in &mut rib.listeners {
        let name = l.name.clone();
        let Some(t) = l.tcp_mut() else { continue };
        for c in t.chains_mut() {
            if let Some(tls) = c.tls.as_mut().filter(|t| t.secrets.keys().next().is_some()) {
                if let Err(e) = resolve_chain(tls, &lookup) {
                    problems.push(format!("listener '{name}' chain '{}': {e}", c.name));
                }
            }
        }
    }
    for c in &mut rib.clusters {
        let needs = c
            .tls
            .as_ref()
            .is_some_and(|t| t.secrets.keys().next().is_some());
        if !needs {
            continue;
        }
        let name = c.name.clone();
        let c = std::sync::Arc::make_mut(c);
        if let Some(tls) = c.tls.as_mut() {
            if let Err(e) = resolve_cluster(tls, &lookup) {
                problems.push(format!("cluster '{name}': {e}"));
            }
        }
    }
    rib.secrets = statics;
    problems
}

/// A chain's certificates (inline, then SDS) and validation from its secrets.
fn resolve_chain(tls: &mut ChainTlsConfig, lookup: &Lookup) -> Result<(), String> {
    let s = &mut tls.settings;
    s.certificates.truncate(tls.secrets.inline_certificates);
    tls.secrets.ready = false;
    for key in &tls.secrets.certificates {
        s.certificates.push(lookup.certificate(key)?.clone());
    }
    if let Some(v) = lookup.validation(&tls.secrets)? {
        s.validation = Some(v);
    }
    tls.secrets.ready = true;
    Ok(())
}

/// A cluster's certificate and validation from its secrets.
fn resolve_cluster(tls: &mut ClusterTlsConfig, lookup: &Lookup) -> Result<(), String> {
    let s = &mut tls.settings;
    tls.secrets.ready = false;
    if let Some(key) = tls.secrets.certificates.first() {
        s.certificate = Some(lookup.certificate(key)?.clone());
    }
    if let Some(v) = lookup.validation(&tls.secrets)? {
        s.validation = Some(v);
    }
    tls.secrets.ready = true;
    Ok(())
}

/// Every secret the listeners and clusters of `rib` name.
pub fn named(rib: &Rib) -> impl Iterator<Item = &SecretKey> {
    let chains = rib
        .listeners
        .iter()
        .filter_map(|l| l.tcp())
        .flat_map(|t| t.chains())
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| t.secrets.keys());
    let clusters = rib
        .clusters
        .iter()
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| t.secrets.keys());
    chains.chain(clusters)
}
