//! The protobuf descriptor pool used to read bootstrap files.
//!
//! envoy-types generates Rust types but does not export the descriptor set it was generated
//! from, and the proto3 JSON mapping (`@type` in `Any`, `"1.5s"` durations, enum names, json
//! names) needs descriptors. So Switchyard vendors a trimmed copy: `control/proto/envoy.bin` is
//! the transitive closure of [`ROOT_FILES`] taken from envoy-types' own
//! `src/generated/types.bin`, with source info stripped. Because both come from the same
//! envoy-types release, the pool and the prost types agree; a test round-trips a config through
//! both to prove it, and another recomputes the trimmed set from the registry copy of
//! envoy-types and compares (run it with `SWITCHYARD_REGEN_DESCRIPTORS=1` to rewrite the file
//! after bumping envoy-types or adding a root). See `control/proto/README.md`.

use prost_reflect::DescriptorPool;

/// The vendored, trimmed descriptor set.
pub(crate) const DESCRIPTOR_SET: &[u8] = include_bytes!("../../proto/envoy.bin");

/// The envoy-types release the descriptor set was taken from (must match Cargo.toml).
#[cfg_attr(not(test), allow(dead_code))] // read by the regeneration test
pub(crate) const ENVOY_TYPES_VERSION: &str = "0.7.7";

/// Proto files whose messages a bootstrap may contain directly or as `typed_config`: the
/// bootstrap itself and every extension Switchyard accepts. Their dependencies come along.
#[cfg_attr(not(test), allow(dead_code))] // read by the regeneration test
pub(crate) const ROOT_FILES: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    // HBONE's termination: the connection manager (CONNECT only) and its router.
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/filters/listener/original_dst/v3/original_dst.proto",
    "envoy/extensions/filters/listener/original_src/v3/original_src.proto",
    "envoy/extensions/filters/listener/proxy_protocol/v3/proxy_protocol.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/network/connection_limit/v3/connection_limit.proto",
    "envoy/extensions/filters/network/local_ratelimit/v3/local_rate_limit.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/udp/udp_proxy/v3/udp_proxy.proto",
    "envoy/extensions/filters/udp/udp_proxy/v3/route.proto",
    "envoy/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.proto",
    "envoy/extensions/network/dns_resolver/getaddrinfo/v3/getaddrinfo_dns_resolver.proto",
    "envoy/extensions/matching/common_inputs/network/v3/network_inputs.proto",
    "envoy/extensions/load_balancing_policies/round_robin/v3/round_robin.proto",
    "envoy/extensions/load_balancing_policies/least_request/v3/least_request.proto",
    "envoy/extensions/load_balancing_policies/random/v3/random.proto",
    "envoy/extensions/load_balancing_policies/ring_hash/v3/ring_hash.proto",
    "envoy/extensions/load_balancing_policies/maglev/v3/maglev.proto",
    "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.proto",
    // Transport sockets: TLS (`Downstream`/`UpstreamTlsContext`) and plaintext.
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.proto",
    "envoy/extensions/transport_sockets/proxy_protocol/v3/upstream_proxy_protocol.proto",
    // Imported by the IP matcher (`proto/xds/type/matcher/v3/ip.proto`, built by build.rs).
    "xds/core/v3/cidr.proto",
];

/// The pool, decoded once per thread. A `DescriptorPool` and every descriptor and dynamic
/// message made from it share one reference count; threads validating resources side by side
/// on one pool spend their time bouncing that counter's cache line between cores (measured:
/// two threads were slower than one). Each thread's own pool costs one decode per thread.
pub(crate) fn pool() -> DescriptorPool {
    thread_local! {
        static POOL: DescriptorPool = {
            // The set is vendored and checked by tests: failing to decode it is a build
            // defect.
            let mut pool =
                DescriptorPool::decode(DESCRIPTOR_SET).expect("vendored descriptor set decodes");
            // Switchyard's own extensions, compiled by build.rs over the same well-known
            // types.
            pool.decode_file_descriptor_set(crate::ext::DESCRIPTOR_SET)
                .expect("extension descriptor set decodes");
            pool
        };
    }
    POOL.with(DescriptorPool::clone)
}

/// Computes the trimmed set: the files in `full` reachable from `roots`, in `full`'s order
/// (which is dependency order), without source code info.
#[cfg(test)]
pub(crate) fn trim(full: &[u8], roots: &[&str]) -> Vec<u8> {
    use prost::Message;
    use prost_reflect::prost_types::FileDescriptorSet;
    use std::collections::{BTreeSet, HashMap};

    let set = FileDescriptorSet::decode(full).expect("full descriptor set decodes");
    let by_name: HashMap<&str, _> = set.file.iter().map(|f| (f.name(), f)).collect();
    let mut keep = BTreeSet::new();
    let mut todo: Vec<&str> = roots.to_vec();
    while let Some(name) = todo.pop() {
        let file = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the set"));
        if keep.insert(name.to_string()) {
            todo.extend(file.dependency.iter().map(String::as_str));
        }
    }
    let file = set
        .file
        .iter()
        .filter(|f| keep.contains(f.name()))
        .map(|f| {
            let mut f = f.clone();
            f.source_code_info = None;
            f
        })
        .collect();
    FileDescriptorSet { file }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// envoy-types' full descriptor set in the cargo registry, if the sources are there.
    fn registry_copy() -> Option<PathBuf> {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let src = home.join("registry").join("src");
        std::fs::read_dir(src).ok()?.flatten().find_map(|index| {
            let p = index
                .path()
                .join(format!("envoy-types-{ENVOY_TYPES_VERSION}"))
                .join("src/generated/types.bin");
            p.is_file().then_some(p)
        })
    }

    #[test]
    fn vendored_set_is_the_trimmed_registry_set() {
        let Some(full) = registry_copy() else {
            // Offline vendoring without registry sources: the other tests still prove the
            // vendored pool decodes and agrees with the prost types.
            eprintln!("envoy-types {ENVOY_TYPES_VERSION} sources not found; not comparing");
            return;
        };
        let trimmed = trim(&std::fs::read(&full).unwrap(), ROOT_FILES);
        let vendored = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/envoy.bin");
        if std::env::var_os("SWITCHYARD_REGEN_DESCRIPTORS").is_some() {
            std::fs::write(&vendored, &trimmed).unwrap();
            return;
        }
        assert!(
            trimmed == std::fs::read(&vendored).unwrap(),
            "control/proto/envoy.bin is stale: rerun this test with SWITCHYARD_REGEN_DESCRIPTORS=1"
        );
    }

    #[test]
    fn pool_has_every_accepted_type() {
        let pool = pool();
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
            "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig",
            "envoy.extensions.filters.udp.udp_proxy.v3.Route",
            "xds.type.matcher.v3.Matcher",
            "switchyard.filters.udp.udp_proxy.v1.WeightedRoute",
            "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
            "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig",
            "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
            "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
            "envoy.extensions.load_balancing_policies.random.v3.Random",
            "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
            "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
            "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }
}
