//! One filter-chain match, many times, to count under callgrind: `N` chains, each matching
//! one server name (`svc-i.example.com`, as a standalone SNI gateway gives each name its own
//! chain), and TLS connections whose names are spread over them.
//!
//! `cargo run --release --example chain_select -- N SELECTS`: prints how many matched.
//! The instructions of one match, `select_all` alone (the index is built before):
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect='*select_all*' \
//!     target/release/examples/chain_select N SELECTS    # Collected / SELECTS
//! ```

use std::net::SocketAddr;
use switchyard_dataplane::fib::{ChainIndex, ChainMatch, Detected, TRANSPORT_TLS};

fn name(i: u32) -> String {
    format!("svc-{i}.example.com")
}

fn index(n: u32) -> ChainIndex {
    let chains: Vec<ChainMatch> = (0..n)
        .map(|i| ChainMatch {
            server_names: vec![name(i).into()],
            ..ChainMatch::default()
        })
        .collect();
    ChainIndex::build(&chains)
}

#[inline(never)]
fn select_all(index: &ChainIndex, names: &[String], selects: u32) -> usize {
    let local = SocketAddr::from(([10, 0, 0, 1], 443));
    let remote = SocketAddr::from(([10, 0, 0, 2], 40000));
    (0..selects)
        .filter(|k| {
            let sni = &names[(k.wrapping_mul(7919) as usize) % names.len()];
            let detected = Detected {
                server_name: sni.as_bytes(),
                transport_protocol: TRANSPORT_TLS,
                ..Detected::NOTHING
            };
            std::hint::black_box(index.select(local, remote, &detected)).is_some()
        })
        .count()
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u32>().expect("N SELECTS"));
    let (n, selects) = (
        args.next().unwrap_or(1).max(1),
        args.next().unwrap_or(20_000),
    );
    let names: Vec<String> = (0..n).map(name).collect();
    println!("{}", select_all(&index(n), &names, selects));
}
