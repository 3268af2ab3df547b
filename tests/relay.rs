//! Relay correctness through the proxy: byte-exact bulk transfer both ways, many concurrent
//! connections, half-close in both directions, reset propagation, backend killed mid-stream,
//! request/response rounds on many connections of one worker, bulk through small buffers.
//!
//! Every test runs in both relay modes (`buffer_ring::*` and `splice::*`, one worker each).
//! Run against real Envoy with `SWITCHYARD_TEST_PROXY=envoy` (the splice variants then skip:
//! Envoy has no relay mode).

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

in_both_relay_modes!(
    bulk_64mib_each_way_is_byte_exact,
    hundred_concurrent_connections_are_byte_exact,
    half_close_client_first_still_receives,
    half_close_backend_first_client_can_still_send,
    backend_reset_reaches_client_as_reset,
    backend_killed_mid_stream_gives_prefix_then_close,
    request_response_rounds_on_8_connections_of_one_worker,
    request_response_rounds_on_32_connections_of_one_worker,
    bulk_through_4kib_buffers_is_byte_exact,
    small_buffer_limits_on_8_connections_are_byte_exact,
    idle_connections_hold_no_kernel_threads,
);

/// One listener -> one cluster -> `backend`, through one worker in relay mode `mode`.
fn gateway(backend: &Backend, mode: RelayMode) -> Option<(Proxy, std::net::SocketAddr)> {
    gateway_with(backend, mode, &[])
}

/// [`gateway`] with more Switchyard arguments.
fn gateway_with(
    backend: &Backend,
    mode: RelayMode,
    extra: &[&str],
) -> Option<(Proxy, std::net::SocketAddr)> {
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("l4", port, "l4", "be"),
        &static_cluster("be", &[(backend.addr, 1)]),
    );
    let p = start_selected_mode(&yaml, mode, extra)?;
    Some((p, local(port)))
}

fn bulk_64mib_each_way_is_byte_exact(mode: RelayMode) {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    const N: u64 = 64 * 1024 * 1024;
    let t0 = Instant::now();
    let s = connect_retry(addr, Duration::from_secs(5));
    let x = exchange(s, 0xB0_1C, N);
    assert_eq!(x.write_error, None, "client write failed\n{}", proxy.logs());
    assert_eq!(x.sent, N);
    assert_eq!(x.end, End::Eof, "client read ended badly\n{}", proxy.logs());
    assert_eq!(x.received, N, "bytes back\n{}", proxy.logs());
    assert_eq!(x.received_sha, x.sent_sha, "SHA-256 of echoed stream");
    let reps = be.wait_reports(1, Duration::from_secs(10));
    assert_eq!(reps.len(), 1, "backend connections finished");
    assert_eq!(reps[0].rx_bytes, N, "backend received");
    assert_eq!(reps[0].rx_sha, x.sent_sha, "backend SHA-256 of upload");
    assert_eq!(be.accepted(), 1);
    eprintln!("64 MiB each way in {:?}", t0.elapsed());
}

fn hundred_concurrent_connections_are_byte_exact(mode: RelayMode) {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    const CONNS: u64 = 100;
    const N: u64 = 256 * 1024;
    let _warm = connect_retry(addr, Duration::from_secs(5));
    drop(_warm);
    let failures = on_connections(CONNS, move |i| {
        let s = connect(addr).map_err(|e| format!("conn {i}: connect: {e}"))?;
        echoed_exactly(i, &exchange(s, 1000 + i, N + i * 17))
    });
    assert_no_failures(&failures, CONNS, mode, &proxy);
    // 1 warm-up connection + CONNS.
    assert!(wait_until(Duration::from_secs(5), || be.accepted()
        == CONNS as usize + 1));
}

/// The client shuts down its write side first and must still receive everything the backend
/// sends after that (FIN propagated upstream without closing the other direction).
fn half_close_client_first_still_receives(mode: RelayMode) {
    let be = Backend::echo_after_eof();
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    const N: usize = 3 * 1024 * 1024 + 7;
    let data = Prng::bytes(42, N);
    let mut s = connect_retry(addr, Duration::from_secs(5));
    s.write_all(&data).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown write");
    // The backend replies only after it saw our FIN, so anything we get proves the half-close.
    let (back, end) = read_all(&mut s, N + 1);
    assert_eq!(
        end,
        End::Eof,
        "expected clean EOF after the echo\n{}",
        proxy.logs()
    );
    assert_eq!(back.len(), N, "bytes echoed after client FIN");
    assert!(back == data, "echo after half-close differs");
    let reps = be.wait_reports(1, Duration::from_secs(5));
    assert_eq!(reps.len(), 1);
    assert_eq!(reps[0].end, "eof", "backend saw a clean FIN: {:?}", reps[0]);
}

/// The backend sends its data and FINs first; the client must read a clean EOF and can still
/// send afterwards, all of which reaches the backend.
fn half_close_backend_first_client_can_still_send(mode: RelayMode) {
    const DOWN: u64 = 1024 * 1024 + 3;
    let be = Backend::source(DOWN, 7);
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    let mut s = connect_retry(addr, Duration::from_secs(5));
    let (got, sha, end) = read_hash(&mut s, u64::MAX);
    assert_eq!(end, End::Eof, "backend FIN must reach the client as EOF");
    assert_eq!(got, DOWN);
    assert_eq!(sha, prng_sha256(7, DOWN));
    // Now keep sending after having received the backend's FIN.
    const UP: u64 = 2 * 1024 * 1024 + 5;
    for i in 0..4u64 {
        // Spread over time: the upstream half must stay open, not just for one burst.
        let chunk_seed = 100 + i;
        write_prng(&mut s, chunk_seed, UP / 4).expect("write after backend FIN");
        thread::sleep(Duration::from_millis(50));
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let reps = be.wait_reports(1, Duration::from_secs(10));
    assert_eq!(reps.len(), 1, "backend finished\n{}", proxy.logs());
    let mut expect = Vec::new();
    for i in 0..4u64 {
        expect.extend_from_slice(&Prng::bytes(100 + i, (UP / 4) as usize));
    }
    assert_eq!(reps[0].rx_bytes, expect.len() as u64, "bytes after FIN");
    assert_eq!(reps[0].rx_sha, sha256_hex(&expect), "sha after FIN");
    assert_eq!(reps[0].end, "eof");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

/// A backend reset reaches the client as a reset (ECONNRESET), never as a clean EOF, after an
/// exact prefix of what the backend sent before the reset.
fn backend_reset_reaches_client_as_reset(mode: RelayMode) {
    const N: u64 = 256 * 1024;
    let be = Backend::rst_after(N, 99);
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    let mut s = connect_retry(addr, Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (data, end) = read_all(&mut s, 1 << 30);
    assert!(
        data == Prng::bytes(99, data.len()),
        "bytes before the reset are not a prefix of the backend's stream"
    );
    assert_eq!(
        data.len() as u64,
        N,
        "exact prefix: everything the backend wrote before resetting"
    );
    assert_eq!(
        end,
        End::Reset,
        "backend RST must reach the client as ECONNRESET, not {end:?}\n{}",
        proxy.logs()
    );
}

/// A backend that dies mid-stream (socket closed abruptly with unread input, which makes the
/// kernel send RST) gives the client an exact prefix and then a close or reset, never a hang.
fn backend_killed_mid_stream_gives_prefix_then_close(mode: RelayMode) {
    const N: u64 = 300 * 1024 + 11;
    let be = Backend::abort_after(N, 5);
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    let mut s = connect_retry(addr, Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Unread input at the backend makes its close an RST.
    s.write_all(&[7u8; 4096]).expect("write");
    let (data, end) = read_all(&mut s, 1 << 30);
    assert!(
        matches!(end, End::Eof | End::Reset),
        "expected close or reset, got {end:?}\n{}",
        proxy.logs()
    );
    assert_eq!(data.len() as u64, N, "exact prefix length");
    assert!(data == Prng::bytes(5, data.len()), "prefix content");
}

/// `conns` connections through one worker, all open at once, each doing `rounds` closed-loop
/// rounds of 64 bytes against an echo backend: every round is answered, byte-exact, within
/// [`ROUND_BOUND`], and every connection ends with a clean EOF after the client's FIN.
fn request_response_rounds(mode: RelayMode, conns: u64, rounds: u64) {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    let start = Barrier::new(conns as usize);
    let failures = on_connections(conns, move |i| {
        let mut s = connect_retry(addr, Duration::from_secs(5));
        // Every connection relays before the rounds start, so they overlap.
        start.wait();
        echo_rounds(&mut s, i, rounds)
    });
    assert_no_failures(&failures, conns, mode, &proxy);
}

/// Runs `client(i)` for each of `conns` connections, each on a thread of its own, all at
/// once; returns what failed.
fn on_connections(
    conns: u64,
    client: impl Fn(u64) -> Result<(), String> + Send + Sync + 'static,
) -> Vec<String> {
    let client = Arc::new(client);
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let client = Arc::clone(&client);
            thread::spawn(move || client(i))
        })
        .collect();
    handles
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect()
}

fn assert_no_failures(failures: &[String], conns: u64, mode: RelayMode, proxy: &Proxy) {
    assert!(
        failures.is_empty(),
        "{} of {conns} connections failed ({} mode): {:?}\n{}",
        failures.len(),
        mode.arg(),
        &failures[..failures.len().min(8)],
        proxy.logs()
    );
}

fn request_response_rounds_on_8_connections_of_one_worker(mode: RelayMode) {
    request_response_rounds(mode, 8, 500);
}

fn request_response_rounds_on_32_connections_of_one_worker(mode: RelayMode) {
    request_response_rounds(mode, 32, 200);
}

/// Bulk both ways on 4 connections at once through 4 KiB buffers (in splice mode: one-page
/// pipes, full after every receive, so receives and sends contend for pipe room all the time).
fn bulk_through_4kib_buffers_is_byte_exact(mode: RelayMode) {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway_with(&be, mode, &["--buffer-size-kib", "4"]) else {
        return;
    };
    echo_bulk_on_connections(&be, &proxy, addr, mode, 4, 8 * 1024 * 1024, 0x4C1B);
}

/// `conns` connections at once each echo about `n` bytes through `proxy` at `addr` (and
/// `be`): byte-exact both ways, and the backend sees a clean FIN on each.
fn echo_bulk_on_connections(
    be: &Backend,
    proxy: &Proxy,
    addr: std::net::SocketAddr,
    mode: RelayMode,
    conns: u64,
    n: u64,
    seed: u64,
) {
    let failures = on_connections(conns, move |i| {
        let s = connect_retry(addr, Duration::from_secs(5));
        echoed_exactly(i, &exchange(s, seed + i, n + i * 4099))
    });
    assert_no_failures(&failures, conns, mode, proxy);
    let reps = be.wait_reports(conns as usize, Duration::from_secs(10));
    assert_eq!(reps.len(), conns as usize, "backend connections finished");
    assert!(
        reps.iter().all(|r| r.end == "eof"),
        "backend saw a clean FIN on each: {reps:?}"
    );
}

/// Bulk both ways on 8 connections at once through `per_connection_buffer_limit_bytes` far
/// below the buffers (and odd, so receives end mid-page): every receive is capped, every
/// direction keeps stopping at its watermark and starting again, and nothing stalls or is
/// lost.
fn small_buffer_limits_on_8_connections_are_byte_exact(mode: RelayMode) {
    let be = Backend::echo();
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &with_buffer_limit(&tcp_listener("l4", port, "l4", "be"), 4099),
        &with_buffer_limit(&static_cluster("be", &[(be.addr, 1)]), 1000),
    );
    let Some(proxy) = start_selected_mode(&yaml, mode, &[]) else {
        return;
    };
    echo_bulk_on_connections(&be, &proxy, local(port), mode, 8, 4 * 1024 * 1024, 0xB1F);
    // Every byte was sent on: nothing is left counted as buffered.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let st = proxy.stats();
            st.get("cluster.be.upstream_cx_tx_bytes_buffered") == Some(&0)
                && st.get("tcp.l4.downstream_cx_tx_bytes_buffered") == Some(&0)
        }),
        "buffered gauges after the connections closed: {:?}",
        proxy
            .stats()
            .into_iter()
            .filter(|(k, _)| k.ends_with("_bytes_buffered"))
            .collect::<Vec<_>>()
    );
}

/// Threads of process `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

/// Connections that wait for data hold no kernel thread of the proxy: with 64 established,
/// idle connections (each relayed one round both ways), the proxy has fewer io_uring worker
/// threads (`iou-wrk-*`) than connections.
fn idle_connections_hold_no_kernel_threads(mode: RelayMode) {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway(&be, mode) else {
        return;
    };
    if proxy.kind != ProxyKind::Switchyard {
        skip_unsupported(proxy.kind, "counts io_uring worker threads");
        return;
    }
    const CONNS: usize = 64;
    let mut held = Vec::new();
    for i in 0..CONNS {
        let mut s = connect_retry(addr, Duration::from_secs(5));
        s.set_read_timeout(Some(ROUND_BOUND)).unwrap();
        let msg = Prng::bytes(i as u64, 64);
        assert_eq!(ping(&mut s, &msg).expect("round"), msg, "conn {i}");
        held.push(s);
    }
    // Let the relay arm its receives (and io-wq finish what it ran).
    thread::sleep(Duration::from_millis(500));
    let workers = threads_named(proxy.pid(), "iou-wrk");
    eprintln!(
        "{CONNS} idle connections ({} mode): {workers} iou-wrk threads",
        mode.arg()
    );
    assert!(
        workers < CONNS / 2,
        "{workers} io_uring worker threads for {CONNS} idle connections ({} mode)",
        mode.arg()
    );
    // The held connections still relay.
    for (i, s) in held.iter_mut().enumerate() {
        let msg = Prng::bytes(1000 + i as u64, 64);
        assert_eq!(ping(s, &msg).expect("round after idling"), msg, "conn {i}");
    }
}
