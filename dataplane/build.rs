//! Compiles the kernel fast path's BPF program (`bpf/sockmap.c`) with clang (`-target bpf`)
//! into `$OUT_DIR/sockmap.o`, which `src/offload.rs` embeds. Without clang (or when it fails)
//! the file is empty: the proxy still builds, and runs with the offload off, saying why.
//! `CLANG` names another compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/sockmap.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("sockmap.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let built = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-I", &multiarch, "-c", source, "-o",
        ])
        .arg(&out)
        .status();
    match built {
        Ok(s) if s.success() => {}
        other => {
            let why = match other {
                Ok(s) => format!("{clang} failed ({s})"),
                Err(e) => format!("{clang} not found ({e})"),
            };
            println!("cargo:warning=the kernel fast path is not built: {why}; --offload stays off");
            std::fs::write(&out, b"").expect("write an empty sockmap.o");
        }
    }
}
