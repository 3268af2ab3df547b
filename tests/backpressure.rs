//! Backpressure: a client that stops reading while the backend streams 200 MiB must not make the
//! proxy buffer it. During the stall the proxy's VmRSS stays within a bound over its baseline and
//! the backend's writes stall (the proxy stopped reading upstream); afterwards every byte arrives
//! intact.
//!
//! `per_connection_buffer_limit_bytes` are Envoy's watermarks: with one side stalled, the
//! bytes the proxy holds for it (`cluster.<name>.upstream_cx_tx_bytes_buffered`,
//! `tcp.<prefix>.downstream_cx_tx_bytes_buffered`) stay near the limits, where Envoy's
//! 1 MiB default lets them grow far beyond.
//!
//! Runs in both relay modes (`buffer_ring::*`, `splice::*`). Run against real Envoy with
//! `SWITCHYARD_TEST_PROXY=envoy` (the splice variant then skips: Envoy has no relay mode).

#[macro_use]
mod common;

use common::*;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TOTAL: u64 = 200 * 1024 * 1024;
const SEED: u64 = 0x51_0e;
/// Allowed RSS growth during the stall.
const RSS_BOUND_KIB: u64 = 64 * 1024;

in_both_relay_modes!(
    slow_reader_bounded_memory_then_byte_exact,
    buffer_limits_bound_the_bytes_held_for_a_stalled_side,
);

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

/// The limits of the test's limited listener and clusters.
const LIMIT: u32 = 16 * 1024;
/// What Envoy may read past a watermark: one read of up to 16 KiB (its read slice).
const READ_SLACK: u64 = 16 * 1024;

/// A backend that accepts and never reads, with a small receive buffer (so that it stalls
/// soon). Its connections stay open until it is dropped.
struct SilentBackend {
    addr: SocketAddr,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentBackend {
    fn start() -> SilentBackend {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        s.listen(16).expect("listen");
        let listener: TcpListener = s.into();
        let addr = listener.local_addr().expect("local_addr");
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        thread::spawn(move || {
            for s in listener.incoming().flatten() {
                keep.lock().unwrap().push(s);
            }
        });
        SilentBackend { addr, _held: held }
    }
}

/// Samples `name` until it has not changed for a second (at most 15 s): what the proxy holds
/// once the stalled side's buffers are full.
fn settled_gauge(proxy: &Proxy, name: &str) -> u64 {
    let t0 = Instant::now();
    let mut last = proxy.stat(name);
    let mut since = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) {
        thread::sleep(Duration::from_millis(100));
        let now = proxy.stat(name);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(1) && now > 0 {
            break;
        }
    }
    last
}

/// Writes to `addr` through the proxy until the writes stall for a second (the backend does
/// not read); returns the stream, still open, and the bytes written.
fn upload_until_stalled(addr: SocketAddr) -> (TcpStream, u64) {
    let mut s = connect_retry(addr, Duration::from_secs(5));
    s.set_write_timeout(Some(Duration::from_secs(1)))
        .expect("SO_SNDTIMEO");
    let chunk = vec![0x5a_u8; CHUNK];
    let mut written = 0u64;
    while written < 1 << 30 {
        match s.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    (s, written)
}

/// One side stalled, the other sending: the limited connections hold at most about their
/// limits (each direction: its sink's limit, plus one receive of at most its source's
/// limit, plus Envoy's read slice), the default's (1 MiB) far more upstream. Up: a backend
/// that never reads; down: a client that never reads.
fn buffer_limits_bound_the_bytes_held_for_a_stalled_side(mode: RelayMode) {
    let silent = SilentBackend::start();
    let source = Backend::source(1 << 30, SEED);
    let admin = free_port();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let limited = |item: String| with_buffer_limit(&item, LIMIT);
    let listeners = [
        limited(tcp_listener(
            "up_limited",
            ports[0],
            "up_limited",
            "silent_limited",
        )),
        tcp_listener("up_open", ports[1], "up_open", "silent_open"),
        limited(tcp_listener(
            "down_limited",
            ports[2],
            "down_limited",
            "source_limited",
        )),
        tcp_listener("down_open", ports[3], "down_open", "source_open"),
    ]
    .concat();
    let clusters = [
        limited(static_cluster("silent_limited", &[(silent.addr, 1)])),
        static_cluster("silent_open", &[(silent.addr, 1)]),
        limited(static_cluster("source_limited", &[(source.addr, 1)])),
        static_cluster("source_open", &[(source.addr, 1)]),
    ]
    .concat();
    let Some(proxy) = start_selected_mode(&bootstrap(admin, &listeners, &clusters), mode, &[])
    else {
        return;
    };
    let bound = 2 * u64::from(LIMIT) + READ_SLACK;

    // Up: clients send to the backend that never reads.
    let (_up_limited, sent_limited) = upload_until_stalled(local(ports[0]));
    let (_up_open, sent_open) = upload_until_stalled(local(ports[1]));
    let up_limited = settled_gauge(
        &proxy,
        "cluster.silent_limited.upstream_cx_tx_bytes_buffered",
    );
    let up_open = settled_gauge(&proxy, "cluster.silent_open.upstream_cx_tx_bytes_buffered");
    // Down: the backend streams to clients that never read.
    let _down_limited = connect_retry(local(ports[2]), Duration::from_secs(5));
    let _down_open = connect_retry(local(ports[3]), Duration::from_secs(5));
    let down_limited = settled_gauge(&proxy, "tcp.down_limited.downstream_cx_tx_bytes_buffered");
    let down_open = settled_gauge(&proxy, "tcp.down_open.downstream_cx_tx_bytes_buffered");
    eprintln!(
        "held with limits of {LIMIT} B: up {up_limited} B (client wrote {sent_limited}), \
         down {down_limited} B; with the 1 MiB default: up {up_open} B (client wrote \
         {sent_open}), down {down_open} B; bound {bound} B"
    );
    for (what, held) in [("up", up_limited), ("down", down_limited)] {
        assert!(
            held > 0 && held <= bound,
            "{what}: {held} bytes held for the stalled side with {LIMIT}-byte limits \
             (bound {bound})\n{}",
            proxy.logs()
        );
    }
    // In splice mode a direction holds at most its pipe (64 KiB) whatever the limit. The
    // premise is checked upstream only: the client there writes as fast as it can, so the
    // default's two buffers fill; downstream the relay holds whatever its two receives found
    // of the source's stream, which under load can be two short ones (33,792 B in one CI
    // run), so a low figure there says nothing about the limit.
    if mode == RelayMode::BufferRing {
        assert!(
            up_open > 2 * bound,
            "up: only {up_open} bytes held with the 1 MiB default: the limited case proves \
             nothing"
        );
    }
}
