//! Every way a worker can wait (`--placement`, `--busy-poll-us`, `--wait-batch` with
//! `--min-wait-us`, `--taskrun`, `--registered-ring`) relays correctly under load: 8
//! connections doing request/response rounds at once while 4 more move 8 MiB each way,
//! byte-exact, through one worker, in both relay modes. A spinning worker counts its
//! busy-polls; a shared one never spins.
//!
//! Switchyard only (these are its own flags); the Envoy pass skips with the reason.

#[macro_use]
mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

const ROUND_CONNS: u64 = 8;
const ROUNDS: u64 = 300;
const BULK_CONNS: u64 = 4;
const BULK_BYTES: u64 = 8 * 1024 * 1024;

/// One listener -> one echo cluster through one worker relaying in `mode`, started with
/// `args`.
fn gateway(backend: &Backend, mode: RelayMode, args: &[&str]) -> Option<(Proxy, SocketAddr)> {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "wait policies are Switchyard's own flags");
        return None;
    }
    if !require(proxy_available(kind), kind.name()) {
        return None;
    }
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("l4", port, "l4", "be"),
        &static_cluster("be", &[(backend.addr, 1)]),
    );
    let mut opts = ProxyOpts {
        switchyard_args: args.iter().map(|a| a.to_string()).collect(),
        ..ProxyOpts::default()
    };
    opts.switchyard_args
        .extend(["--relay-mode".to_string(), mode.arg().to_string()]);
    Some((Proxy::start_with(kind, &yaml, opts), local(port)))
}

/// Request/response rounds on [`ROUND_CONNS`] connections while [`BULK_CONNS`] connections
/// move [`BULK_BYTES`] each way, all at once; returns what failed.
fn loaded_relay(addr: SocketAddr) -> Vec<String> {
    let start = Arc::new(Barrier::new((ROUND_CONNS + BULK_CONNS) as usize));
    let mut handles = Vec::new();
    for i in 0..ROUND_CONNS {
        let start = Arc::clone(&start);
        handles.push(thread::spawn(move || rounds(addr, i, &start)));
    }
    for i in 0..BULK_CONNS {
        let start = Arc::clone(&start);
        handles.push(thread::spawn(move || bulk(addr, i, &start)));
    }
    handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect()
}

fn rounds(addr: SocketAddr, i: u64, start: &Barrier) -> Result<(), String> {
    let mut s = connect_retry(addr, Duration::from_secs(5));
    start.wait();
    echo_rounds(&mut s, i, ROUNDS).map_err(|e| format!("rr {e}"))
}

fn bulk(addr: SocketAddr, i: u64, start: &Barrier) -> Result<(), String> {
    let s = connect_retry(addr, Duration::from_secs(5));
    start.wait();
    let x = exchange(s, 77 + i, BULK_BYTES);
    if x.sent != BULK_BYTES {
        return Err(format!("bulk conn {i}: sent {} of {BULK_BYTES}", x.sent));
    }
    echoed_exactly(i, &x).map_err(|e| format!("bulk {e}"))
}

/// Runs the loaded relay through a worker relaying in `mode`, started with `args`; returns
/// the proxy's stats.
fn relays_loaded_with(
    mode: RelayMode,
    args: &[&str],
) -> Option<std::collections::BTreeMap<String, u64>> {
    let be = Backend::echo();
    let (proxy, addr) = gateway(&be, mode, args)?;
    let failures = loaded_relay(addr);
    assert!(
        failures.is_empty(),
        "{args:?} ({} mode): {} of {} connections failed: {:?}\n{}",
        mode.arg(),
        failures.len(),
        ROUND_CONNS + BULK_CONNS,
        &failures[..failures.len().min(8)],
        proxy.logs()
    );
    assert_eq!(proxy.stat("server.worker_invariant_violations"), 0);
    Some(proxy.stats())
}

fn busy_polls(stats: &std::collections::BTreeMap<String, u64>) -> u64 {
    stats["server.worker_busy_poll_hits"] + stats["server.worker_busy_poll_misses"]
}

in_both_relay_modes!(
    an_own_core_worker_spins_and_relays_exactly,
    a_shared_core_worker_never_spins_and_relays_exactly,
    a_detected_placement_relays_exactly,
    min_wait_batches_relay_exactly,
    coop_taskrun_relays_exactly,
    an_unregistered_ring_relays_exactly,
);

fn an_own_core_worker_spins_and_relays_exactly(mode: RelayMode) {
    let Some(stats) = relays_loaded_with(mode, &["--placement", "own", "--busy-poll-us", "100"])
    else {
        return;
    };
    assert_eq!(stats["server.worker_own_core"], 1);
    assert!(
        busy_polls(&stats) > 0,
        "a worker told it owns its core busy-polls before it sleeps: {stats:?}"
    );
}

fn a_shared_core_worker_never_spins_and_relays_exactly(mode: RelayMode) {
    let Some(stats) = relays_loaded_with(mode, &["--placement", "shared", "--busy-poll-us", "100"])
    else {
        return;
    };
    assert_eq!(stats["server.worker_own_core"], 0);
    assert_eq!(busy_polls(&stats), 0, "a shared core never spins");
}

fn a_detected_placement_relays_exactly(mode: RelayMode) {
    let Some(stats) = relays_loaded_with(mode, &["--placement", "auto"]) else {
        return;
    };
    assert!(stats["server.worker_own_core"] <= 1);
}

fn min_wait_batches_relay_exactly(mode: RelayMode) {
    // A batch that 12 connections rarely fill: every wake-up but the busiest ends on the
    // min-wait, which must hand over what arrived instead of holding it.
    relays_loaded_with(
        mode,
        &[
            "--placement",
            "shared",
            "--wait-batch",
            "64",
            "--min-wait-us",
            "200",
        ],
    );
}

fn coop_taskrun_relays_exactly(mode: RelayMode) {
    relays_loaded_with(mode, &["--taskrun", "coop", "--placement", "own"]);
}

fn an_unregistered_ring_relays_exactly(mode: RelayMode) {
    relays_loaded_with(mode, &["--registered-ring", "false", "--placement", "own"]);
}

#[test]
fn bad_wait_flags_are_refused_by_name() {
    for (flag, value) in [
        ("--placement", "fast"),
        ("--taskrun", "eager"),
        ("--busy-poll-us", "5000"),
        ("--wait-batch", "0"),
        ("--min-wait-us", "-1"),
    ] {
        let out = std::process::Command::new(switchyard_bin())
            .args(["run", "-c", "/nonexistent.yaml", flag, value])
            .output()
            .expect("run switchyard");
        assert!(!out.status.success(), "{flag} {value} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag),
            "{flag} {value}: error does not name the flag: {err}"
        );
    }
}
