//! Compiles Switchyard's own extension protos (`proto/switchyard/...`) with protox (pure
//! Rust: no system protoc) into prost types and a descriptor set for the config walker.

use prost::Message;
use std::path::PathBuf;

/// The extension protos, relative to `proto/`.
const PROTOS: &[&str] = &[
    "switchyard/filters/network/fault/v1/fault.proto",
    "switchyard/filters/network/mirror/v1/mirror.proto",
    "switchyard/filters/udp/udp_proxy/v1/route.proto",
];

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let mut set = protox::compile(PROTOS, [&root]).expect("extension protos compile");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    prost_build::Config::new()
        .compile_well_known_types()
        // The well-known types are envoy-types' own, as in the rest of the config code.
        .extern_path(".google.protobuf", "::envoy_types::pb::google::protobuf")
        .compile_fds(set.clone())
        .expect("prost types generate");
    // The walker's pool already holds the well-known types (from Envoy's set): only ours.
    set.file.retain(|f| f.name().starts_with("switchyard/"));
    for f in &mut set.file {
        f.source_code_info = None;
    }
    std::fs::write(out.join("switchyard.bin"), set.encode_to_vec()).expect("write descriptors");
}
