//! Relay correctness through the proxy: byte-exact bulk transfer both ways, many concurrent
//! connections, half-close in both directions, reset propagation, backend killed mid-stream.
//!
//! Run against real Envoy with `SWITCHYARD_TEST_PROXY=envoy`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

/// One listener -> one cluster -> `backend`.
fn gateway(backend: &Backend) -> Option<(Proxy, std::net::SocketAddr)> {
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("l4", port, "l4", "be"),
        &static_cluster("be", &[(backend.addr, 1)]),
    );
    let p = start_selected(&yaml)?;
    Some((p, local(port)))
}

#[test]
fn bulk_64mib_each_way_is_byte_exact() {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway(&be) else {
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

#[test]
fn hundred_concurrent_connections_are_byte_exact() {
    let be = Backend::echo();
    let Some((proxy, addr)) = gateway(&be) else {
        return;
    };
    const CONNS: u64 = 100;
    const N: u64 = 256 * 1024;
    let _warm = connect_retry(addr, Duration::from_secs(5));
    drop(_warm);
    let handles: Vec<_> = (0..CONNS)
        .map(|i| {
            thread::spawn(move || {
                let s = connect(addr).map_err(|e| format!("conn {i}: connect: {e}"))?;
                let x = exchange(s, 1000 + i, N + i * 17);
                if x.write_error.is_some()
                    || x.end != End::Eof
                    || x.received != x.sent
                    || x.received_sha != x.sent_sha
                {
                    return Err(format!("conn {i}: {x:?}"));
                }
                Ok(x.sent)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for h in handles {
        if let Err(e) = h.join().expect("client thread") {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CONNS} connections failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        proxy.logs()
    );
    // 1 warm-up connection + CONNS.
    assert!(wait_until(Duration::from_secs(5), || be.accepted()
        == CONNS as usize + 1));
}

/// The client shuts down its write side first and must still receive everything the backend
/// sends after that (FIN propagated upstream without closing the other direction).
#[test]
fn half_close_client_first_still_receives() {
    let be = Backend::echo_after_eof();
    let Some((proxy, addr)) = gateway(&be) else {
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
#[test]
fn half_close_backend_first_client_can_still_send() {
    const DOWN: u64 = 1024 * 1024 + 3;
    let be = Backend::source(DOWN, 7);
    let Some((proxy, addr)) = gateway(&be) else {
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
#[test]
fn backend_reset_reaches_client_as_reset() {
    const N: u64 = 256 * 1024;
    let be = Backend::rst_after(N, 99);
    let Some((proxy, addr)) = gateway(&be) else {
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
#[test]
fn backend_killed_mid_stream_gives_prefix_then_close() {
    const N: u64 = 300 * 1024 + 11;
    let be = Backend::abort_after(N, 5);
    let Some((proxy, addr)) = gateway(&be) else {
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
