//! Traffic shifting with `tcp_proxy.weighted_clusters` (a canary at 10%), two workers:
//!
//! * over 10,000 connections the split lands within 3 percentage points of the weights
//!   (90/10);
//! * a change of weights (SIGHUP, Switchyard) reaches new connections only: 20 connections
//!   held open across it keep their backends and echo byte-exact, while the next 2,000 split
//!   by the new weights (10/90).
//!
//! The split runs against Envoy too; the reload part is Switchyard's (a static Envoy
//! bootstrap cannot be reloaded in place).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Backends accept at most BACKEND_MAX_CONNS each: `stable` spreads over three.
struct Bed {
    stable: Vec<Backend>,
    canary: Backend,
}

fn config(admin: u16, port: u16, bed: &Bed, stable: u32, canary: u32) -> String {
    let weighted = format!(
        "          weighted_clusters:\n            clusters:\n            - {{ name: stable, weight: {stable} }}\n            - {{ name: canary, weight: {canary} }}\n"
    );
    let listener = tcp_listener("shift", port, "shift", "WEIGHTED")
        .replace("          cluster: WEIGHTED\n", &weighted);
    let stable_eps: Vec<(SocketAddr, u32)> = bed.stable.iter().map(|b| (b.addr, 1)).collect();
    let clusters =
        static_cluster("stable", &stable_eps) + &static_cluster("canary", &[(bed.canary.addr, 1)]);
    bootstrap(admin, &listener, &clusters)
}

/// `n` connections, four at a time: how many reached each tag.
fn split(port: u16, n: usize) -> BTreeMap<String, usize> {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut counts = BTreeMap::new();
                for i in (t..n).step_by(4) {
                    let tag = which_backend(local(port))
                        .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                    *counts.entry(tag).or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for t in threads {
        for (tag, c) in t.join().expect("client thread") {
            *counts.entry(tag).or_insert(0) += c;
        }
    }
    counts
}

fn assert_split(counts: &BTreeMap<String, usize>, n: usize, canary_percent: f64, when: &str) {
    let canary = counts.get("canary").copied().unwrap_or(0) as f64 * 100.0 / n as f64;
    let stable = counts.get("stable").copied().unwrap_or(0) as f64 * 100.0 / n as f64;
    assert!(
        (canary - canary_percent).abs() <= 3.0 && (stable + canary - 100.0).abs() < 1e-9,
        "{when}: canary {canary:.2}% (want {canary_percent}% +- 3), stable {stable:.2}%: {counts:?}"
    );
}

#[test]
fn a_canary_gets_its_weight_and_a_shift_moves_new_connections_only() {
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return;
    }
    let bed = Bed {
        stable: (0..3).map(|_| Backend::tagged("stable")).collect(),
        canary: Backend::tagged("canary"),
    };
    let (admin, port) = (free_port(), free_port());
    let proxy = Proxy::start_with(
        kind,
        &config(admin, port, &bed, 90, 10),
        ProxyOpts {
            concurrency: 2,
            ..ProxyOpts::default()
        },
    );
    let n = 10_000;
    let counts = split(port, n);
    assert_split(&counts, n, 10.0, "90/10 over 10,000 connections");
    eprintln!("90/10 over {n} connections: {counts:?}");
    assert_eq!(
        proxy.stat("cluster.stable.upstream_cx_total")
            + proxy.stat("cluster.canary.upstream_cx_total"),
        n as u64
    );

    if kind == ProxyKind::Envoy {
        skip_unsupported(
            kind,
            "the weight change: a static Envoy bootstrap cannot be reloaded in place",
        );
        return;
    }
    // Connections held across the change.
    let mut held: Vec<(String, TcpStream)> = (0..20)
        .map(|_| {
            let mut s = connect(local(port)).unwrap();
            let tag = read_line(&mut s).unwrap();
            (tag, s)
        })
        .collect();
    proxy.rewrite_config(&config(admin, port, &bed, 10, 90));
    proxy.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || {
            split(port, 50).get("canary").copied().unwrap_or(0) > 35
        }),
        "the new weights never took effect\n{}",
        proxy.logs()
    );
    let after = split(port, 2_000);
    assert_split(&after, 2_000, 90.0, "10/90 after the change");
    let held_canary = held.iter().filter(|(t, _)| t == "canary").count();
    let before = bed.canary.accepted();
    for (i, (tag, s)) in held.iter_mut().enumerate() {
        let msg = Prng::bytes(i as u64, 1000 + i);
        assert_eq!(
            ping(s, &msg).unwrap_or_else(|e| panic!("held {i} ({tag}): {e}")),
            msg,
            "held connection {i} ({tag}) is still relayed byte-exact"
        );
    }
    assert_eq!(
        bed.canary.accepted(),
        before,
        "held connections made no new upstream connection ({held_canary} were on the canary)"
    );
}
