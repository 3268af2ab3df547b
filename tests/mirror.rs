//! L4 mirroring (`switchyard.filters.network.mirror`, our own extension proto) through real
//! sockets, two workers:
//!
//! * every mirrored connection's bytes reach the shadow byte for byte (SHA-256 per
//!   connection) while the primary echoes them back byte-exact;
//! * a dead shadow (nothing listening) leaves the primary byte-exact, with round trips as
//!   fast as on an unmirrored listener of the same proxy;
//! * a shadow that never reads is given up at `max_buffered_bytes` (`connections_dropped`)
//!   while the primary's 16 MiB stream goes through byte-exact;
//! * `percent: 50` samples half of 2,000 connections, within 3 points.
//!
//! No other proxy mirrors at L4: Switchyard only.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn mirror_filter(shadow_cluster: &str, extra: &str) -> String {
    format!(
        "      - name: switchyard.filters.network.mirror\n        typed_config:\n          \"@type\": type.googleapis.com/switchyard.filters.network.mirror.v1.Mirror\n          stat_prefix: shadow\n          cluster: {shadow_cluster}\n{extra}"
    )
}

/// A mirrored listener on `port` (and an unmirrored one on `plain_port`, when given), both
/// to `primary`, shadow cluster `shadow`.
fn config(
    admin: u16,
    port: u16,
    plain_port: Option<u16>,
    primary: SocketAddr,
    shadow: SocketAddr,
    extra: &str,
) -> String {
    let mut listeners = tcp_listener_after(
        "mirrored",
        port,
        &mirror_filter("shadow", extra),
        "mirrored",
        "primary",
    );
    if let Some(p) = plain_port {
        listeners += &tcp_listener("plain", p, "plain", "primary");
    }
    let clusters =
        static_cluster("primary", &[(primary, 1)]) + &static_cluster("shadow", &[(shadow, 1)]);
    bootstrap(admin, &listeners, &clusters)
}

fn start(yaml: &str) -> Option<Proxy> {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "L4 mirroring (a Switchyard extension)");
        return None;
    }
    start_selected_with(yaml, 2)
}

#[test]
fn the_shadow_gets_every_byte_the_primary_gets() {
    let primary = Backend::echo();
    let shadow = Backend::sink();
    let (admin, port) = (free_port(), free_port());
    let Some(p) = start(&config(admin, port, None, primary.addr, shadow.addr, "")) else {
        return;
    };
    let n = 20u64;
    let size = 256 * 1024;
    let mut sent = BTreeSet::new();
    for i in 0..n {
        let x = exchange(connect(local(port)).expect("connect"), 100 + i, size);
        assert_eq!(x.sent, size, "connection {i}: {:?}", x.write_error);
        assert_eq!(x.received, size, "connection {i} echo");
        assert_eq!(x.received_sha, x.sent_sha, "connection {i} echo bytes");
        sent.insert(x.sent_sha);
    }
    let reports = shadow.wait_reports(n as usize, Duration::from_secs(10));
    let mirrored: BTreeSet<String> = reports.iter().map(|r| r.rx_sha.clone()).collect();
    assert_eq!(reports.len(), n as usize);
    assert!(reports.iter().all(|r| r.rx_bytes == size));
    assert_eq!(mirrored, sent, "each connection's bytes, byte for byte");
    assert_eq!(p.stat("mirror.shadow.connections_mirrored"), n);
    assert_eq!(
        p.wait_stat(
            "mirror.shadow.bytes_mirrored",
            n * size,
            Duration::from_secs(5)
        ),
        n * size
    );
    assert_eq!(
        p.wait_stat("mirror.shadow.active", 0, Duration::from_secs(5)),
        0
    );
    assert_eq!(p.stat("mirror.shadow.connections_dropped"), 0);
    let dump = p.get("/config_dump").body;
    assert!(dump.contains("switchyard.filters.network.mirror.v1.Mirror"));
}

/// Median round trip of `n` 64-byte pings on one connection.
fn p50_rtt(port: u16, n: usize) -> Duration {
    let mut s = connect(local(port)).expect("connect");
    let msg = [9u8; 64];
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let back = ping(&mut s, &msg).expect("ping");
            assert_eq!(back, msg);
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn a_dead_shadow_changes_nothing_for_the_primary() {
    let primary = Backend::echo();
    let dead = local(closed_port());
    let (admin, port, plain) = (free_port(), free_port(), free_port());
    let Some(p) = start(&config(admin, port, Some(plain), primary.addr, dead, "")) else {
        return;
    };
    for i in 0..10 {
        let x = exchange(connect(local(port)).expect("connect"), i, 512 * 1024);
        assert_eq!(x.received_sha, x.sent_sha, "connection {i}");
    }
    // Interleaved, so both see the same machine.
    let (mut mirrored, mut unmirrored) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        mirrored.push(p50_rtt(port, 200));
        unmirrored.push(p50_rtt(plain, 200));
    }
    mirrored.sort();
    unmirrored.sort();
    let (m, u) = (mirrored[2], unmirrored[2]);
    eprintln!("dead shadow: p50 round trip {m:?} mirrored vs {u:?} not mirrored");
    assert!(
        m <= u.mul_f64(1.5) + Duration::from_micros(50),
        "mirrored {m:?} vs {u:?}"
    );
    assert_eq!(p.stat("mirror.shadow.connections_mirrored"), 15);
    assert_eq!(p.stat("mirror.shadow.connections_failed"), 15);
    assert_eq!(
        p.wait_stat("mirror.shadow.active", 0, Duration::from_secs(5)),
        0
    );
}

/// A shadow that accepts and never reads.
struct Stuck {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Stuck {
    fn start() -> Stuck {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (stop2, held2) = (stop.clone(), held.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + BACKEND_LIFETIME;
            while !stop2.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, _)) => held2.lock().expect("held").push(s),
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Stuck { addr, stop, held }
    }
}

impl Drop for Stuck {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.held.lock().expect("held").clear();
    }
}

#[test]
fn a_shadow_that_falls_behind_is_dropped_not_waited_for() {
    let primary = Backend::echo();
    let stuck = Stuck::start();
    let (admin, port) = (free_port(), free_port());
    let extra = "          max_buffered_bytes: 262144\n";
    let Some(p) = start(&config(admin, port, None, primary.addr, stuck.addr, extra)) else {
        return;
    };
    let t0 = Instant::now();
    let size = 16 * 1024 * 1024;
    let x = exchange(connect(local(port)).expect("connect"), 7, size);
    let took = t0.elapsed();
    eprintln!("stuck shadow: 16 MiB echoed in {took:?}");
    assert_eq!(x.received, size);
    assert_eq!(x.received_sha, x.sent_sha);
    assert_eq!(p.stat("mirror.shadow.connections_dropped"), 1);
    assert_eq!(p.stat("mirror.shadow.connections_failed"), 0);
    assert!(
        p.stat("mirror.shadow.bytes_mirrored") < size,
        "the shadow did not take it all"
    );
    assert_eq!(
        p.wait_stat("mirror.shadow.active", 0, Duration::from_secs(5)),
        0
    );
}

#[test]
fn a_percentage_of_connections_is_mirrored() {
    let primary = Backend::tagged("p");
    let shadow = Backend::sink();
    let (admin, port) = (free_port(), free_port());
    let extra = "          percent: 50\n";
    let Some(p) = start(&config(admin, port, None, primary.addr, shadow.addr, extra)) else {
        return;
    };
    let n = 2_000;
    for i in 0..n {
        let tag = which_backend(local(port)).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(tag, "p");
    }
    let mirrored = p.stat("mirror.shadow.connections_mirrored") as usize;
    let pct = 100.0 * mirrored as f64 / n as f64;
    eprintln!("mirror 50%: {mirrored} of {n} ({pct:.2}%)");
    assert!((47.0..=53.0).contains(&pct), "{pct:.2}% mirrored");
    assert!(
        wait_until(Duration::from_secs(10), || shadow.accepted() == mirrored),
        "shadow accepted {} of {mirrored}",
        shadow.accepted()
    );
}

/// A chain that terminates TLS mirrors the plaintext: four clients each stream 4 MiB (bulk,
/// so the receives would grow to large buffers) and read it back; the shadow gets every
/// decrypted byte of each, in order.
#[test]
fn a_tls_terminating_chain_mirrors_the_plaintext_byte_for_byte() {
    use std::io::{Read, Write};
    let primary = Backend::echo();
    let shadow = Backend::sink();
    let (admin, port) = (free_port(), free_port());
    let certificates = format!(
        "            tls_certificates:\n            - certificate_chain: {{ filename: {} }}\n              private_key: {{ filename: {} }}\n",
        cert("server.pem").display(),
        cert("server.key").display(),
    );
    let listener = tcp_listener_after(
        "mirrored",
        port,
        &mirror_filter("shadow", ""),
        "mirrored",
        "primary",
    ) + &downstream_tls_socket("", &certificates);
    let clusters = static_cluster("primary", &[(primary.addr, 1)])
        + &static_cluster("shadow", &[(shadow.addr, 1)]);
    let Some(p) = start(&bootstrap(admin, &listener, &clusters)) else {
        return;
    };
    let size = 4 << 20;
    let sent: BTreeSet<String> = (0..4u8)
        .map(|i| {
            thread::spawn(move || {
                let data: Vec<u8> = (0..size).map(|k| (k as u8).wrapping_mul(7) ^ i).collect();
                let mut tls = tls_connect(local(port), client_config(None));
                let mut back = vec![0u8; 64 * 1024];
                for chunk in data.chunks(256 * 1024) {
                    tls.write_all(chunk).unwrap();
                    tls.flush().unwrap();
                    tls.read_exact(&mut back[..0]).unwrap();
                    let mut got = 0;
                    while got < chunk.len() {
                        let want = (chunk.len() - got).min(back.len());
                        tls.read_exact(&mut back[..want]).unwrap();
                        assert_eq!(
                            back[..want],
                            chunk[got..got + want],
                            "echo of connection {i}"
                        );
                        got += want;
                    }
                }
                sha256_hex(&data)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client"))
        .collect();
    let reports = shadow.wait_reports(4, Duration::from_secs(10));
    let mirrored: BTreeSet<String> = reports.iter().map(|r| r.rx_sha.clone()).collect();
    assert!(
        reports.iter().all(|r| r.rx_bytes == size as u64),
        "{reports:?}"
    );
    assert_eq!(mirrored, sent, "each connection's plaintext, byte for byte");
    assert_eq!(p.stat("mirror.shadow.connections_dropped"), 0);
}
