//! Listener changes on reload, and the idle timeout (Switchyard only: a static Envoy bootstrap
//! cannot be reloaded in place).
//!
//! * A listener added by a reload opens on every worker and accepts.
//! * A listener removed by a reload stops accepting at once (new connections are refused);
//!   its established connections keep working until the drain time, then are closed.
//! * `idle_timeout` closes a connection with no bytes either way, and counts
//!   `tcp.<prefix>.idle_timeout`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn switchyard_only() -> bool {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "a static Envoy bootstrap cannot be reloaded in place");
        return false;
    }
    proxy_available(kind)
}

#[test]
fn added_listener_accepts_and_removed_listener_refuses_then_drains() {
    if !switchyard_only() {
        return;
    }
    let a = Backend::tagged("a");
    let b = Backend::tagged("b");
    let admin = free_port();
    let (port_a, port_b) = (free_port(), free_port());
    let clusters = format!(
        "{}{}",
        static_cluster("ca", &[(a.addr, 1)]),
        static_cluster("cb", &[(b.addr, 1)])
    );
    let only_a = bootstrap(admin, &tcp_listener("la", port_a, "la", "ca"), &clusters);
    let both = bootstrap(
        admin,
        &format!(
            "{}{}",
            tcp_listener("la", port_a, "la", "ca"),
            tcp_listener("lb", port_b, "lb", "cb")
        ),
        &clusters,
    );
    let only_b = bootstrap(admin, &tcp_listener("lb", port_b, "lb", "cb"), &clusters);
    let opts = ProxyOpts {
        concurrency: 2,
        drain_time_s: Some(2),
        ..ProxyOpts::default()
    };
    let proxy = Proxy::start_with(ProxyKind::Switchyard, &only_a, opts);
    assert_eq!(which_backend(local(port_a)).expect("listener a"), "a");
    assert!(
        TcpStream::connect(local(port_b)).is_err(),
        "b is not configured yet"
    );

    // Add listener b: it opens on both workers.
    proxy.rewrite_config(&both);
    proxy.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || which_backend(local(port_b))
            .is_ok()),
        "added listener never accepted\n{}",
        proxy.logs()
    );
    for _ in 0..20 {
        assert_eq!(which_backend(local(port_b)).expect("listener b"), "b");
        assert_eq!(which_backend(local(port_a)).expect("listener a"), "a");
    }
    let stats = proxy.stats();
    let key = format!("listener.127.0.0.1_{port_b}.worker_");
    let workers_used = stats
        .iter()
        .filter(|(k, v)| k.starts_with(&key) && k.ends_with(".downstream_cx_total") && **v > 0)
        .count();
    assert!(
        workers_used >= 1,
        "listener b counted on no worker: {stats:?}"
    );

    // A live connection on a, then remove a.
    let mut live = connect_retry(local(port_a), Duration::from_secs(5));
    assert_eq!(read_line(&mut live).expect("tag"), "a");
    assert_eq!(ping(&mut live, b"before").expect("ping"), b"before");
    proxy.rewrite_config(&only_b);
    let removed_at = Instant::now();
    proxy.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(local(port_a))
            .is_err()),
        "removed listener still accepts\n{}",
        proxy.logs()
    );
    assert_eq!(which_backend(local(port_b)).expect("listener b after"), "b");
    // The established connection still works during the drain time...
    assert_eq!(
        ping(&mut live, b"during").expect("ping during drain"),
        b"during"
    );
    // ...and is closed once it is over (2 s).
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = [0u8; 16];
    let end = live.read(&mut buf);
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "connection of a removed listener not closed: {end:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "closed after {:?}, drain time is 2 s",
        t.elapsed()
    );
    assert!(
        removed_at.elapsed() >= Duration::from_millis(1500),
        "closed {:?} after the reload, before the 2 s drain time",
        removed_at.elapsed()
    );
    assert_eq!(proxy.stat("tcp.la.downstream_cx_drain_close"), 1);
}

#[test]
fn idle_timeout_closes_and_counts() {
    if !switchyard_only() {
        return;
    }
    let backend = Backend::echo();
    let admin = free_port();
    let port = free_port();
    let listener = tcp_listener("idle", port, "idle", "idle").replace(
        "cluster: idle\n",
        "cluster: idle\n          idle_timeout: 1s\n",
    );
    assert!(listener.contains("idle_timeout: 1s"));
    let yaml = bootstrap(
        admin,
        &listener,
        &static_cluster("idle", &[(backend.addr, 1)]),
    );
    let proxy = Proxy::start(&yaml);

    let mut busy = connect_retry(local(port), Duration::from_secs(5));
    let mut idle = connect_retry(local(port), Duration::from_secs(5));
    assert_eq!(ping(&mut idle, b"x").expect("ping"), b"x");
    // `busy` talks every 200 ms for 2 s: never idle for 1 s, never closed.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2000) {
        assert_eq!(
            ping(&mut busy, b"keepalive").expect("busy ping"),
            b"keepalive"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `idle` has been silent for about 2 s: it must be closed by now.
    idle.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    let end = idle.read(&mut buf);
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "idle connection still open: {end:?}"
    );
    assert_eq!(
        proxy.wait_stat("tcp.idle.idle_timeout", 1, Duration::from_secs(3)),
        1
    );
    busy.write_all(b"still").expect("busy write");
    let mut back = [0u8; 5];
    busy.read_exact(&mut back).expect("busy still open");
    assert_eq!(&back, b"still");
}
