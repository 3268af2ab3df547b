//! Config reload with live connections (Switchyard: rewrite the file, then SIGHUP).
//!
//! * Connections established before the reload keep talking, byte-exact, to their old backend
//!   and end with a clean EOF after the client's FIN.
//! * New connections follow the new config (the cluster now points at another backend).
//! * An invalid reload changes nothing: the last good config still serves, and the proxy logs an
//!   error that names the offending field.
//!
//! Envoy cannot do this (a static bootstrap changes only through hot restart or xDS), so against
//! Envoy the test is skipped with that reason.

#[macro_use]
mod common;

use common::*;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn config(admin: u16, port: u16, backend: SocketAddr) -> String {
    bootstrap(
        admin,
        &tcp_listener("reload", port, "reload", "reload"),
        &static_cluster("reload", &[(backend, 1)]),
    )
}

/// A live connection that pings 1 KiB every 50 ms until told to stop, then FINs and expects a
/// clean EOF. Returns the tag it saw and the number of rounds, or a failure text.
fn live_connection(
    addr: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Result<(String, u64), String>> {
    let mut s = connect_retry(addr, Duration::from_secs(5));
    let tag = read_line(&mut s).expect("tag");
    thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut rounds = 0u64;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let m = Prng::bytes(id * 1_000_000 + rounds, 1024);
            let t = Instant::now();
            let back = ping(&mut s, &m).map_err(|e| format!("conn {id} round {rounds}: {e}"))?;
            if back != m {
                return Err(format!("conn {id} round {rounds}: echo differs"));
            }
            if t.elapsed() > Duration::from_secs(2) {
                return Err(format!(
                    "conn {id} round {rounds}: stalled {:?}",
                    t.elapsed()
                ));
            }
            rounds += 1;
            thread::sleep(Duration::from_millis(50));
        }
        s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        let (rest, end) = read_all(&mut s, 1 << 20);
        if !rest.is_empty() || end != End::Eof {
            return Err(format!(
                "conn {id}: expected clean EOF, got {} bytes then {end:?}",
                rest.len()
            ));
        }
        Ok((tag, rounds))
    })
}

// Established flows outlive a reload the same way in either relay mode.
in_both_relay_modes!(reload_keeps_live_connections_and_routes_new_ones);

fn reload_keeps_live_connections_and_routes_new_ones(mode: RelayMode) {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(
            kind,
            "a static Envoy bootstrap cannot be reloaded in place (needs hot restart or xDS)",
        );
        return;
    }
    if !proxy_available(kind) {
        return;
    }
    let old = Backend::tagged("old");
    let new = Backend::tagged("new");
    let admin = free_port();
    let port = free_port();
    let addr = local(port);
    let Some(opts) = relay_mode_opts(kind, mode, ProxyOpts::default()) else {
        return;
    };
    let proxy = Proxy::start_with(kind, &config(admin, port, old.addr), opts);

    let stop = Arc::new(AtomicBool::new(false));
    let live: Vec<_> = (0..5)
        .map(|i| live_connection(addr, i, stop.clone()))
        .collect();
    assert_eq!(old.accepted(), 5);

    // Reload: the cluster now points at `new`.
    proxy.rewrite_config(&config(admin, port, new.addr));
    proxy.sighup();
    // Probes made before the new config is published may still reach `old`; count them.
    let mut probes_to_old = 0;
    let switched = wait_until(Duration::from_secs(5), || {
        match which_backend(addr).as_deref() {
            Ok("new") => true,
            Ok("old") => {
                probes_to_old += 1;
                false
            }
            _ => false,
        }
    });
    assert!(
        switched,
        "new connections still not routed to the new backend 5 s after SIGHUP\n{}",
        proxy.logs()
    );
    for i in 0..10 {
        assert_eq!(
            which_backend(addr).expect("connect after reload"),
            "new",
            "connection {i} after reload"
        );
    }

    // Invalid reload: port 70000 is out of range. Nothing must change.
    let bad = config(admin, port, new.addr)
        .replace(&format!("port_value: {}", new.port()), "port_value: 70000");
    assert!(bad.contains("70000"));
    proxy.rewrite_config(&bad);
    proxy.sighup();
    let logged = wait_until(Duration::from_secs(5), || {
        proxy.log_text().contains("port_value")
    });
    assert!(
        logged,
        "invalid reload: no error naming port_value in the log\n{}",
        proxy.logs()
    );
    for i in 0..10 {
        assert_eq!(
            which_backend(addr).expect("connect after invalid reload"),
            "new",
            "connection {i} after the invalid reload"
        );
    }
    assert_eq!(proxy.get("/ready").status, 200);

    // Let the old connections run a little longer, then end them.
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for (i, h) in live.into_iter().enumerate() {
        let (tag, rounds) = h
            .join()
            .expect("live thread")
            .unwrap_or_else(|e| panic!("{e}\n{}", proxy.logs()));
        assert_eq!(tag, "old", "live connection {i}");
        assert!(rounds >= 5, "live connection {i}: only {rounds} rounds");
    }
    assert_eq!(
        old.accepted(),
        5 + probes_to_old,
        "no connection went to the old backend once the reload was seen"
    );
    let reps = old.wait_reports(5 + probes_to_old, Duration::from_secs(5));
    assert!(
        reps.iter().all(|r| r.end == "eof"),
        "old backend connections ended badly: {reps:?}"
    );
}
