//! `envoy.filters.listener.proxy_protocol`: which PROXY protocol versions a listener takes,
//! whether a stream without a header may pass, and the stats prefix.
//!
//! Refused by path, since nothing here would read what they produce: `rules` (TLVs as
//! dynamic metadata, which no Switchyard filter reads), `pass_through_tlvs` (TLVs kept for
//! an upstream PROXY header, which Switchyard's clusters do not send yet) and a
//! `tlv_location` other than the default.

use super::{decode_any, Result};
use crate::error::ConfigError;
use crate::path::field;
use crate::rib::ProxyProtocolConfig;
use crate::type_names::PROXY_PROTOCOL;
use envoy_types::pb::envoy::config::core::v3::proxy_protocol_config::Version as PbVersion;
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use envoy_types::pb::google::protobuf::Any;
use switchyard_dataplane::proxy_protocol::Acceptance;

/// The filter's `typed_config` at `path`.
pub(super) fn proxy_protocol_filter(any: &Any, path: &str) -> Result<ProxyProtocolConfig> {
    let p: ProxyProtocol = decode_any(any, PROXY_PROTOCOL, path)?;
    if !p.rules.is_empty() {
        return Err(ConfigError::unsupported(
            field(path, "rules"),
            "TLVs as dynamic metadata are not supported by Switchyard (no filter here reads \
             them)",
        ));
    }
    if p.pass_through_tlvs.is_some() {
        return Err(ConfigError::unsupported(
            field(path, "pass_through_tlvs"),
            "not supported by Switchyard yet: its clusters send no upstream PROXY header to \
             pass TLVs through",
        ));
    }
    if p.tlv_location != 0 {
        return Err(ConfigError::unsupported(
            field(path, "tlv_location"),
            "only DYNAMIC_METADATA (the default) is supported, and with no rules it holds \
             nothing",
        ));
    }
    let mut acceptance = Acceptance {
        v1: true,
        v2: true,
        allow_without_header: p.allow_requests_without_proxy_protocol,
    };
    for &v in &p.disallowed_versions {
        match PbVersion::try_from(v) {
            Ok(PbVersion::V1) => acceptance.v1 = false,
            Ok(PbVersion::V2) => acceptance.v2 = false,
            Err(_) => {
                return Err(ConfigError::invalid(
                    field(path, "disallowed_versions"),
                    format!("{v} is not a PROXY protocol version (V1 or V2)"),
                ))
            }
        }
    }
    Ok(ProxyProtocolConfig {
        acceptance,
        declares_destination: true,
        stat_prefix: p.stat_prefix,
    })
}

#[cfg(test)]
mod tests {
    use crate::load::parse_yaml_rib;
    use crate::rib::{ListenerKind, TcpListenerConfig};

    fn listener(filters: &str) -> Result<TcpListenerConfig, String> {
        let yaml = format!(
            "static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    listener_filters:
{filters}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}
"
        );
        let (rib, _) = parse_yaml_rib(&yaml).map_err(|e| e.to_string())?;
        match &rib.listeners[0].kind {
            ListenerKind::Tcp(t) => Ok((**t).clone()),
            ListenerKind::Udp(_) => panic!("a TCP listener"),
        }
    }

    const PP: &str = "    - name: envoy.filters.listener.proxy_protocol
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
";
    const ORIGINAL_DST: &str = "    - name: envoy.filters.listener.original_dst
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
";
    const INSPECTOR: &str = "    - name: envoy.filters.listener.tls_inspector
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector
";

    #[test]
    fn versions_prefix_and_headerless_streams() {
        let t = listener(&format!(
            "{PP}        stat_prefix: front\n        disallowed_versions: [V1]\n        \
             allow_requests_without_proxy_protocol: true\n"
        ))
        .unwrap();
        let p = t.proxy_protocol.expect("the filter");
        assert!(!p.acceptance.v1 && p.acceptance.v2 && p.acceptance.allow_without_header);
        assert_eq!(p.stat_prefix, "front");
        assert!(p.declares_destination);
        let p = listener(PP).unwrap().proxy_protocol.unwrap();
        assert!(p.acceptance.v1 && p.acceptance.v2 && !p.acceptance.allow_without_header);
    }

    /// As in Envoy, the last filter to restore the local address wins: an `original_dst`
    /// after the PROXY protocol keeps the redirected destination.
    #[test]
    fn an_original_dst_after_it_keeps_its_destination() {
        let after = listener(&format!("{PP}{ORIGINAL_DST}")).unwrap();
        assert!(!after.proxy_protocol.unwrap().declares_destination);
        let before = listener(&format!("{ORIGINAL_DST}{PP}")).unwrap();
        assert!(before.proxy_protocol.unwrap().declares_destination);
    }

    #[test]
    fn it_comes_once_and_before_the_tls_inspector() {
        let e = listener(&format!("{INSPECTOR}{PP}")).unwrap_err();
        assert!(e.contains("listener_filters[1]") && e.contains("before any tls_inspector"));
        let e = listener(&format!("{PP}{PP}")).unwrap_err();
        assert!(e.contains("listener_filters[1]"), "{e}");
        let both = listener(&format!("{PP}{INSPECTOR}")).unwrap();
        assert!(both.proxy_protocol.is_some() && both.tls_inspector.is_some());
    }
}
