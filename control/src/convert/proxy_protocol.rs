//! The PROXY protocol both ways: `envoy.filters.listener.proxy_protocol` (which versions a
//! listener takes, whether a stream without a header may pass, the stats prefix) and a
//! cluster's `envoy.transport_sockets.upstream_proxy_protocol` (the version it sends and the
//! TLVs it adds, around a plaintext or TLS socket).
//!
//! `pass_through_tlvs` on both sides: the listener keeps the downstream header's TLVs of its
//! types with the connection, the cluster sends those of its own types (less the types its
//! `added_tlvs` set, which replace them, as in Envoy).
//!
//! Refused by path: `rules` (TLVs as dynamic metadata, which no Switchyard filter reads),
//! a `tlv_location` other than the default, `added_tlvs` given by a `format_string`, and
//! `tlv_as_pool_key: true` (a tcp_proxy has no connection pools).

use super::address::cidr;
use super::{decode_any, Result};
use crate::error::ConfigError;
use crate::ext::trusted_sources::TrustedSources as PbTrustedSources;
use crate::path::field;
use crate::path::index;
use crate::rib::ProxyProtocolConfig;
use crate::type_names::{PROXY_PROTOCOL, TRUSTED_SOURCES, UPSTREAM_PROXY_PROTOCOL};
use envoy_types::pb::envoy::config::core::v3::proxy_protocol_config::Version as PbVersion;
use envoy_types::pb::envoy::config::core::v3::{
    CidrRange as PbCidr, ProxyProtocolConfig as PbProxyProtocolConfig,
    ProxyProtocolPassThroughTlVs as PbPassThroughTlvs, TransportSocket,
};
use envoy_types::pb::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol;
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use switchyard_dataplane::fib::{CidrRange, UpstreamProxyProtocol};
use switchyard_dataplane::proxy_protocol::{encode_tlv, Acceptance, TlvTypes, Version};

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
    let pass_through_tlvs = match &p.pass_through_tlvs {
        Some(t) => Some(tlv_types(t, &field(path, "pass_through_tlvs"))?),
        None => None,
    };
    Ok(ProxyProtocolConfig {
        acceptance,
        declares_destination: true,
        stat_prefix: p.stat_prefix,
        trusted_sources: None,
        pass_through_tlvs,
    })
}

/// `ProxyProtocolPassThroughTLVs`: every type (`INCLUDE_ALL`, the default) or those of
/// `tlv_type` (`INCLUDE`), each one byte.
fn tlv_types(t: &PbPassThroughTlvs, path: &str) -> Result<TlvTypes> {
    use envoy_types::pb::envoy::config::core::v3::proxy_protocol_pass_through_tl_vs::PassTlVsMatchType;
    match PassTlVsMatchType::try_from(t.match_type) {
        Ok(PassTlVsMatchType::IncludeAll) => Ok(TlvTypes::ALL),
        Ok(PassTlVsMatchType::Include) => {
            let tpath = field(path, "tlv_type");
            let types = t
                .tlv_type
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    u8::try_from(v).map_err(|_| {
                        ConfigError::invalid(index(&tpath, i), "a TLV type is one byte (0 to 255)")
                    })
                })
                .collect::<Result<Vec<u8>>>()?;
            Ok(TlvTypes::of(types))
        }
        Err(_) => Err(ConfigError::invalid(
            field(path, "match_type"),
            format!("unknown value {}", t.match_type),
        )),
    }
}

/// Switchyard's `TrustedSources` listener filter at `path` (its `typed_config`): at least
/// one range, each a valid prefix.
pub(super) fn trusted_sources(any: &Any, path: &str) -> Result<Vec<CidrRange>> {
    let t: PbTrustedSources = decode_any(any, TRUSTED_SOURCES, path)?;
    let rpath = field(path, "source_prefix_ranges");
    if t.source_prefix_ranges.is_empty() {
        return Err(ConfigError::invalid(
            rpath,
            "at least one range (without one, no peer's header would be read)",
        ));
    }
    t.source_prefix_ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let envoy_shaped = PbCidr {
                address_prefix: r.address_prefix.clone(),
                prefix_len: Some(UInt32Value {
                    value: r.prefix_len,
                }),
            };
            cidr(&envoy_shaped, &index(&rpath, i))
        })
        .collect()
}

/// A cluster's `envoy.transport_sockets.upstream_proxy_protocol` at `path` (its
/// `typed_config`): the header it sends, and the socket it wraps (`None`: plaintext).
pub(super) fn upstream_proxy_protocol(
    any: &Any,
    path: &str,
) -> Result<(Option<TransportSocket>, UpstreamProxyProtocol)> {
    let t: ProxyProtocolUpstreamTransport = decode_any(any, UPSTREAM_PROXY_PROTOCOL, path)?;
    if t.tlv_as_pool_key {
        return Err(ConfigError::unsupported(
            field(path, "tlv_as_pool_key"),
            "a tcp_proxy has no connection pools to key (false only)",
        ));
    }
    if t.transport_socket.is_none() {
        return Err(ConfigError::invalid(
            field(path, "transport_socket"),
            "required (the socket the header goes before: raw_buffer or tls)",
        ));
    }
    let empty = PbProxyProtocolConfig::default();
    let config = t.config.as_ref().unwrap_or(&empty);
    let header = upstream_header(config, &field(path, "config"))?;
    Ok((t.transport_socket, header))
}

/// `config`: the version, and `added_tlvs` (static values; version 2 only, as only it
/// carries TLVs).
fn upstream_header(config: &PbProxyProtocolConfig, path: &str) -> Result<UpstreamProxyProtocol> {
    let version = match PbVersion::try_from(config.version) {
        Ok(PbVersion::V1) => Version::V1,
        Ok(PbVersion::V2) => Version::V2,
        Err(_) => {
            return Err(ConfigError::invalid(
                field(path, "version"),
                format!(
                    "{} is not a PROXY protocol version (V1 or V2)",
                    config.version
                ),
            ))
        }
    };
    let mut tlvs = Vec::new();
    let tpath = field(path, "added_tlvs");
    for (i, tlv) in config.added_tlvs.iter().enumerate() {
        let at = index(&tpath, i);
        if tlv.format_string.is_some() {
            return Err(ConfigError::unsupported(
                field(&at, "format_string"),
                "TLV values from format strings are not supported by Switchyard (a static \
                 value only)",
            ));
        }
        if tlv.value.is_empty() {
            return Err(ConfigError::invalid(
                field(&at, "value"),
                "one of value or format_string must be set, as in Envoy (an empty value is \
                 unset)",
            ));
        }
        let kind = u8::try_from(tlv.r#type).map_err(|_| {
            ConfigError::invalid(field(&at, "type"), "a TLV type is one byte (0 to 255)")
        })?;
        encode_tlv(&mut tlvs, kind, &tlv.value).ok_or_else(|| {
            ConfigError::invalid(
                field(&at, "value"),
                "longer than a TLV holds (65,535 bytes)",
            )
        })?;
    }
    if version == Version::V1 && !tlvs.is_empty() {
        // Envoy drops them silently.
        return Err(ConfigError::invalid(
            tpath,
            "only a version 2 header carries TLVs (set version: V2)",
        ));
    }
    if tlvs.len() > MAX_ADDED_TLV_BYTES {
        return Err(ConfigError::invalid(
            tpath,
            format!(
                "{} bytes of TLVs; Switchyard sends at most {MAX_ADDED_TLV_BYTES}",
                tlvs.len()
            ),
        ));
    }
    let passed = match &config.pass_through_tlvs {
        Some(t) => tlv_types(t, &field(path, "pass_through_tlvs"))?,
        None => TlvTypes::default(),
    };
    let added = TlvTypes::of(config.added_tlvs.iter().map(|t| t.r#type as u8));
    Ok(UpstreamProxyProtocol {
        version,
        tlvs: tlvs.into_boxed_slice(),
        pass_through_tlvs: passed.without(&added),
    })
}

/// The most TLV bytes a cluster may add: the header is written into one buffer of the
/// worker's pool (4 KiB at least), with its addresses.
pub const MAX_ADDED_TLV_BYTES: usize = 2048;

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

    /// A cluster's header: the version (V1 by default), the added TLVs encoded in order,
    /// and the wrapped socket deciding TLS.
    #[test]
    fn clusters_send_the_version_and_tlvs_around_their_socket() {
        use switchyard_dataplane::proxy_protocol::Version;
        let cluster = |config: &str, inner: &str| {
            let yaml = format!(
                "static_resources:
  clusters:
  - name: c
    transport_socket:
      name: envoy.transport_sockets.upstream_proxy_protocol
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport
        config: {{ {config} }}
        transport_socket:
          name: inner
          typed_config:
            '@type': type.googleapis.com/envoy.extensions.transport_sockets.{inner}
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 9}}}}}}
"
            );
            let (rib, _) = parse_yaml_rib(&yaml).unwrap_or_else(|e| panic!("{e}"));
            rib.cluster("c").unwrap().clone()
        };
        let raw = "raw_buffer.v3.RawBuffer";
        let c = cluster("", raw);
        let p = c.proxy_protocol.expect("a header");
        assert_eq!((p.version, &*p.tlvs), (Version::V1, &[][..]));
        assert!(c.tls.is_none());
        let c = cluster(
            "version: V2, added_tlvs: [{type: 0xE0, value: YWI=}, {type: 1, value: eA==}]",
            "tls.v3.UpstreamTlsContext",
        );
        let p = c.proxy_protocol.expect("a header");
        assert_eq!(p.version, Version::V2);
        assert_eq!(&*p.tlvs, &[0xe0, 0, 2, b'a', b'b', 1, 0, 1, b'x'][..]);
        assert!(c.tls.is_some(), "TLS inside the header");
    }

    /// Switchyard's trusted sources go to the proxy_protocol filter after them.
    #[test]
    fn trusted_sources_guard_the_filter_after_them() {
        let trusted = "    - name: switchyard.filters.listener.proxy_protocol_trusted_sources
      typed_config:
        '@type': type.googleapis.com/switchyard.filters.listener.proxy_protocol.v1.TrustedSources
        source_prefix_ranges: [{address_prefix: 10.1.2.3, prefix_len: 8}, {address_prefix: '2001:db8::', prefix_len: 32}]
";
        let p = listener(&format!("{trusted}{PP}"))
            .unwrap()
            .proxy_protocol
            .unwrap();
        let ranges = p.trusted_sources.expect("the ranges");
        assert_eq!(ranges.len(), 2);
        assert!(ranges[0].contains("10.200.0.1".parse().unwrap()));
        assert!(!ranges[0].contains("11.0.0.1".parse().unwrap()));
        assert!(ranges[1].contains("2001:db8::7".parse().unwrap()));
        assert!(listener(PP)
            .unwrap()
            .proxy_protocol
            .unwrap()
            .trusted_sources
            .is_none());
        let e = listener(&format!("{PP}{trusted}")).unwrap_err();
        assert!(e.contains("listener_filters[1]"), "{e}");
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
