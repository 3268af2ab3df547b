//! Switchyard's own extension messages (`proto/switchyard/...`, package `switchyard.*.v1`),
//! compiled by `control/build.rs`, and their descriptors for the config walker's pool. Like
//! Envoy's types, they are read only by `convert` (and their descriptors by `config`'s
//! walker); their `@type` names are in [`crate::type_names`].

/// `switchyard.filters.network.fault.v1`: L4 fault injection.
pub mod fault {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/switchyard.filters.network.fault.v1.rs"
    ));
}

/// `switchyard.filters.network.mirror.v1`: L4 traffic mirroring.
pub mod mirror {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/switchyard.filters.network.mirror.v1.rs"
    ));
}

/// `switchyard.filters.udp.udp_proxy.v1`: weighted clusters for the UDP proxy.
pub mod udp_route {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/switchyard.filters.udp.udp_proxy.v1.rs"
    ));
}

/// `switchyard.filters.listener.proxy_protocol.v1`: the peers a PROXY protocol filter trusts.
pub mod trusted_sources {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/switchyard.filters.listener.proxy_protocol.v1.rs"
    ));
}

/// `xds.type.matcher.v3.IPMatcher`: the matching API's IP range matcher, which envoy-types
/// does not carry (its `OnMatch` and `CidrRange` are envoy-types' own).
pub mod ip_matcher {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/xds.r#type.matcher.v3.rs"));
}

/// The extension files' descriptors (without the well-known types they import).
pub(crate) const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/switchyard.bin"));

/// `switchyard.filters.network.source_limit.v1`: per-source connection limits.
pub mod source_limit {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/switchyard.filters.network.source_limit.v1.rs"
    ));
}

/// `switchyard.config.endpoint.v1`: the node proxy an endpoint is reached through (HBONE).
pub mod hbone_tunnel {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(
        env!("OUT_DIR"),
        "/switchyard.config.endpoint.v1.rs"
    ));
}
