//! `GET /certs`: the certificates of every TLS context in use, in Envoy's JSON shape
//! (`envoy.admin.v3.Certificates`): one entry per filter chain that terminates TLS and per
//! cluster that originates it, each with its CA certificates (`ca_cert`) and the leaf of each
//! of its certificates (`cert_chain`): file, serial, SANs, validity and days left.

use super::{AdminState, Query, Response};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};
use switchyard_dataplane::accesslog::write_start_time;
use switchyard_dataplane::fib::Fib;
use switchyard_dataplane::tls::settings::{Certificate, Validation};
use switchyard_dataplane::tls::verify::describe;

/// `GET /certs`.
pub(super) fn handle_certs(state: &AdminState, _: &Query) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Response::json(&render_certs(&state.fib.load(), now))
}

/// The `/certs` document of `fib` at `now_unix` (seconds).
pub(crate) fn render_certs(fib: &Fib, now_unix: i64) -> Value {
    let chains = fib
        .listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter().chain(l.default_chain.as_ref()))
        .filter_map(|c| c.tls.as_ref()?.context.as_ref())
        .map(|ctx| {
            let s = ctx.settings();
            context(&s.certificates, s.validation.as_ref(), now_unix)
        });
    let clusters = fib.clusters.iter().filter_map(|c| c.tls.as_ref()).map(|t| {
        let s = t.settings();
        context(s.certificate.as_slice(), s.validation.as_ref(), now_unix)
    });
    json!({ "certificates": chains.chain(clusters).collect::<Vec<_>>() })
}

fn context(certs: &[Certificate], validation: Option<&Validation>, now: i64) -> Value {
    let ca: Vec<Value> = validation
        .map(|v| {
            let path = v.trusted_ca_source.as_deref();
            v.trusted_ca
                .iter()
                .filter_map(|der| details(der, path, now))
                .collect()
        })
        .unwrap_or_default();
    let chain: Vec<Value> = certs
        .iter()
        .filter_map(|c| details(c.chain.first()?, c.chain_source.as_deref(), now))
        .collect();
    json!({ "ca_cert": ca, "cert_chain": chain })
}

/// Envoy's `CertificateDetails` of DER certificate `der` read from `path` (`<inline>`).
fn details(der: &[u8], path: Option<&str>, now: i64) -> Option<Value> {
    let d = describe(der)?;
    let sans = d.sans.dns.iter().map(|v| json!({ "dns": v }));
    let sans = sans.chain(d.sans.uri.iter().map(|v| json!({ "uri": v })));
    let sans = sans.chain(d.sans.ip.iter().map(|v| json!({ "ip_address": v })));
    let days_left = (d.not_after_unix - now).max(0) / 86_400;
    Some(json!({
        "path": path.unwrap_or("<inline>"),
        "serial_number": d.serial,
        "subject_alt_names": sans.collect::<Vec<_>>(),
        "days_until_expiration": days_left.to_string(),
        "valid_from": timestamp(d.not_before_unix),
        "expiration_time": timestamp(d.not_after_unix),
    }))
}

/// A protobuf `Timestamp` in JSON: `2026-12-07T04:11:53Z`.
fn timestamp(unix: i64) -> String {
    let mut out = String::new();
    write_start_time(unix.max(0) as u64 * 1000, &mut out);
    out.replace(".000Z", "Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_print_without_a_fraction() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_795_626_182), "2026-11-25T17:03:02Z");
    }
}
