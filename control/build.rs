//! Compiles Switchyard's own extension protos (`proto/switchyard/...`) and the xDS IP matcher
//! that envoy-types lacks (`proto/xds/type/matcher/v3/ip.proto`) with protox (pure Rust: no
//! system protoc) into prost types and a descriptor set for the config walker.

use prost::Message;
use protox::file::{
    ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver,
};
use std::path::PathBuf;

/// The extension protos, relative to `proto/`.
const PROTOS: &[&str] = &[
    "switchyard/filters/network/fault/v1/fault.proto",
    "switchyard/filters/network/mirror/v1/mirror.proto",
    "switchyard/filters/udp/udp_proxy/v1/route.proto",
    "switchyard/filters/listener/proxy_protocol/v1/trusted_sources.proto",
    "switchyard/filters/network/source_limit/v1/source_limit.proto",
    "switchyard/config/endpoint/v1/hbone_tunnel.proto",
];

/// The IP matcher: its imports (xDS's matcher and CIDR range) come from the vendored Envoy
/// descriptor set, and its Rust type refers to envoy-types' for them.
const IP_MATCHER: &str = "xds/type/matcher/v3/ip.proto";

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../proto");
    let envoy_set = manifest.join("proto/envoy.bin");
    for p in PROTOS.iter().chain([&IP_MATCHER]) {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", envoy_set.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));

    let mut set = protox::compile(PROTOS, [&root]).expect("extension protos compile");
    prost_build::Config::new()
        .compile_well_known_types()
        // The well-known types are envoy-types' own, as in the rest of the config code.
        .extern_path(".google.protobuf", "::envoy_types::pb::google::protobuf")
        .compile_fds(set.clone())
        .expect("prost types generate");

    let mut resolver = ChainFileResolver::new();
    resolver.add(IncludeFileResolver::new(root.clone()));
    let envoy = std::fs::read(&envoy_set).expect("read the vendored Envoy descriptors");
    resolver.add(DescriptorSetFileResolver::decode(envoy.as_slice()).expect("Envoy descriptors"));
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler
        .open_file(IP_MATCHER)
        .expect("the IP matcher proto compiles");
    let mut ip_set = compiler.file_descriptor_set();
    ip_set.file.retain(|f| f.name() == IP_MATCHER);
    prost_build::Config::new()
        .extern_path(".xds.core.v3", "::envoy_types::pb::xds::core::v3")
        // The nested type is named in full: prost would spell the `r#type` segment of a
        // path it derives as `r_type`.
        .extern_path(
            ".xds.type.matcher.v3.Matcher.OnMatch",
            "::envoy_types::pb::xds::r#type::matcher::v3::matcher::OnMatch",
        )
        .compile_fds(ip_set.clone())
        .expect("IP matcher types generate");

    // The walker's pool already holds the well-known types and xDS's (from Envoy's set):
    // only ours.
    set.file.retain(|f| f.name().starts_with("switchyard/"));
    set.file.extend(ip_set.file);
    for f in &mut set.file {
        f.source_code_info = None;
    }
    std::fs::write(out.join("switchyard.bin"), set.encode_to_vec()).expect("write descriptors");
}
