//! Backpressure: a client that stops reading while the backend streams 200 MiB must not make the
//! proxy buffer it. During the stall the proxy's VmRSS stays within a bound over its baseline and
//! the backend's writes stall (the proxy stopped reading upstream); afterwards every byte arrives
//! intact.
//!
//! Runs in both relay modes (`buffer_ring::*`, `splice::*`). Run against real Envoy with
//! `SWITCHYARD_TEST_PROXY=envoy` (the splice variant then skips: Envoy has no relay mode).

#[macro_use]
mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const TOTAL: u64 = 200 * 1024 * 1024;
const SEED: u64 = 0x51_0e;
/// Allowed RSS growth during the stall.
const RSS_BOUND_KIB: u64 = 64 * 1024;

in_both_relay_modes!(slow_reader_bounded_memory_then_byte_exact);

fn slow_reader_bounded_memory_then_byte_exact(mode: RelayMode) {
    let be = Backend::source(TOTAL, SEED);
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("slow", port, "slow", "slow"),
        &static_cluster("slow", &[(be.addr, 1)]),
    );
    let Some(proxy) = start_selected_mode(&yaml, mode, &[]) else {
        return;
    };
    let addr = local(port);
    let baseline_kib = proxy.rss_kib();
    assert!(baseline_kib > 0, "cannot read VmRSS of pid {}", proxy.pid());

    let mut s = connect_retry(addr, Duration::from_secs(5));
    // Read a little so the connection is established end to end, then stop reading.
    let first = read_exact_timeout(&mut s, 4096, "first bytes");
    assert!(first == Prng::bytes(SEED, 4096));

    let stall = Duration::from_secs(3);
    let t0 = Instant::now();
    let mut peak_kib = baseline_kib;
    let mut tx_at_2s = None;
    while t0.elapsed() < stall {
        peak_kib = peak_kib.max(proxy.rss_kib());
        if tx_at_2s.is_none() && t0.elapsed() >= Duration::from_secs(2) {
            tx_at_2s = Some(be.tx_total());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let tx_end = be.tx_total();
    let growth = peak_kib.saturating_sub(baseline_kib);
    eprintln!(
        "baseline {baseline_kib} KiB, peak {peak_kib} KiB (+{growth} KiB); backend wrote {} KiB of {} KiB during the stall",
        tx_end / 1024,
        TOTAL / 1024
    );
    assert!(
        growth <= RSS_BOUND_KIB,
        "proxy RSS grew by {growth} KiB during the stall (bound {RSS_BOUND_KIB} KiB)\n{}",
        proxy.logs()
    );
    assert!(
        tx_end < TOTAL / 2,
        "backend could write {tx_end} bytes while the client did not read: no backpressure"
    );
    assert_eq!(
        tx_at_2s,
        Some(tx_end),
        "backend kept writing during the last second of the stall: proxy still reading upstream"
    );
    let paused = proxy.stat("cluster.slow.upstream_flow_control_paused_reading_total");
    assert!(
        paused >= 1,
        "cluster.slow.upstream_flow_control_paused_reading_total = {paused}"
    );

    // Now read everything.
    let (rest, sha_rest, end) = read_hash(&mut s, u64::MAX);
    assert_eq!(end, End::Eof, "end of stream\n{}", proxy.logs());
    assert_eq!(rest + 4096, TOTAL, "bytes received");
    // SHA of the stream minus its first 4096 bytes.
    let mut p = Prng::new(SEED);
    let mut skip = vec![0u8; 4096];
    p.fill(&mut skip);
    let mut h = sha2::Sha256::default();
    let mut buf = vec![0u8; CHUNK];
    let mut left = TOTAL - 4096;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..k]);
        sha2::Digest::update(&mut h, &buf[..k]);
        left -= k as u64;
    }
    assert_eq!(
        sha_rest,
        hex(&sha2::Digest::finalize(h)),
        "SHA-256 of 200 MiB"
    );
    // Every pause was followed by a resume once the client read again.
    let (mut p_total, mut r_total) = (0, 0);
    let balanced = wait_until(Duration::from_secs(5), || {
        let st = proxy.stats();
        let g = |k: &str| st.get(k).copied().unwrap_or(0);
        p_total = g("cluster.slow.upstream_flow_control_paused_reading_total");
        r_total = g("cluster.slow.upstream_flow_control_resumed_reading_total");
        p_total >= 1 && p_total == r_total
    });
    assert!(
        balanced,
        "upstream flow control paused {p_total} != resumed {r_total}"
    );
}
