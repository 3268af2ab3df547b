//! Each mode against this crate's own backends on 127.0.0.1: zero errors and exact byte counts.
//! No timing assertions.

mod common;

use common::{loopback, settle};
use std::time::Duration;

use switchyard_bench::{
    run_cps, run_idle, run_rr, run_throughput, spawn_echo, spawn_forward, spawn_sink, spawn_source,
    CloseMode, CpsConfig, Direction, ErrorClass, IdleConfig, RrConfig, ThroughputConfig,
};

#[test]
fn throughput_both_through_echo_is_exact() {
    let echo = spawn_echo(loopback()).unwrap();
    let mut cfg = ThroughputConfig::new(echo.local_addr());
    cfg.conns = 3;
    cfg.duration = Duration::from_millis(300);
    cfg.size = 100_000; // not a multiple of the pattern period
    cfg.direction = Direction::Both;
    let r = run_throughput(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.results.connections_ok, 3);
    assert!(r.results.bytes_sent > 0);
    assert_eq!(r.results.bytes_sent, r.results.bytes_received);
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.connections_total, 3);
    assert_eq!(s.bytes_received, r.results.bytes_sent);
    assert_eq!(s.bytes_sent, r.results.bytes_received);
    assert_eq!(s.errors, 0);
}

#[test]
fn throughput_up_to_sink_is_exact() {
    let sink = spawn_sink(loopback()).unwrap();
    let mut cfg = ThroughputConfig::new(sink.local_addr());
    cfg.conns = 2;
    cfg.duration = Duration::from_millis(300);
    cfg.direction = Direction::Up;
    let r = run_throughput(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.results.bytes_received, 0);
    settle(&sink);
    let s = sink.stop();
    assert_eq!(s.bytes_received, r.results.bytes_sent);
    assert_eq!(s.connections_total, 2);
}

#[test]
fn throughput_down_from_source_verifies() {
    let source = spawn_source(loopback()).unwrap();
    let mut cfg = ThroughputConfig::new(source.local_addr());
    cfg.conns = 2;
    cfg.duration = Duration::from_millis(300);
    cfg.size = 12_345;
    cfg.direction = Direction::Down;
    let r = run_throughput(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.results.connections_ok, 2);
    assert!(r.results.bytes_received > 0);
    settle(&source);
    let s = source.stop();
    // The source writes until the client closes, so it has sent at least what was read.
    assert!(s.bytes_sent >= r.results.bytes_received);
}

#[test]
fn throughput_up_to_echo_is_a_mismatch() {
    let echo = spawn_echo(loopback()).unwrap();
    let mut cfg = ThroughputConfig::new(echo.local_addr());
    cfg.duration = Duration::from_millis(100);
    cfg.direction = Direction::Up;
    // The echo stops reading once our receive buffer is full, so our writes may stall: keep
    // that stall short. The run ends in a mismatch (echoed bytes where none were expected), or
    // in a timeout when a write stalled with nothing written.
    cfg.io_timeout = Duration::from_millis(300);
    let r = run_throughput(&cfg).unwrap();
    assert_eq!(r.errors.total(), 1, "{}", r.table());
    assert_eq!(r.errors.mismatch + r.errors.timeout, 1, "{}", r.table());
    assert!(!r.ok());
}

#[test]
fn rr_closed_loop_is_exact() {
    let echo = spawn_echo(loopback()).unwrap();
    let mut cfg = RrConfig::new(echo.local_addr());
    cfg.conns = 4;
    cfg.msg = 100;
    cfg.duration = Duration::from_millis(300);
    let r = run_rr(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.results.requests > 0);
    assert_eq!(r.results.connections_ok, 4);
    let lat = r.latency_us.unwrap();
    assert_eq!(lat.count, r.results.requests);
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.bytes_received, r.results.requests * 100);
    assert_eq!(s.bytes_sent, r.results.requests * 100);
}

#[test]
fn rr_open_loop_is_exact() {
    let echo = spawn_echo(loopback()).unwrap();
    let mut cfg = RrConfig::new(echo.local_addr());
    cfg.conns = 2;
    cfg.msg = 64;
    cfg.rate = Some(200.0);
    cfg.duration = Duration::from_millis(500);
    let r = run_rr(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    // 200/s for 0.5 s: 100 scheduled; everything scheduled was either completed or unsent.
    assert_eq!(r.results.requests + r.results.requests_unsent, 100);
    assert_eq!(r.params.pacing, "open");
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.bytes_received, r.results.requests * 64);
}

#[test]
fn cps_rst_and_fin_are_exact() {
    let echo = spawn_echo(loopback()).unwrap();
    for close in [CloseMode::Rst, CloseMode::Fin] {
        let before = echo.stats();
        let mut cfg = CpsConfig::new(echo.local_addr());
        cfg.concurrency = 2;
        cfg.close = close;
        cfg.duration = Duration::from_millis(300);
        let r = run_cps(&cfg).unwrap();
        assert!(r.ok(), "{}", r.table());
        assert!(r.results.connections > 0);
        assert_eq!(r.latency_us.unwrap().count, r.results.connections);
        assert_eq!(r.results.connect_latency_us.count, r.results.connections);
        settle(&echo);
        let after = echo.stats();
        assert_eq!(
            after.connections_total - before.connections_total,
            r.results.connections
        );
        assert_eq!(
            after.bytes_received - before.bytes_received,
            r.results.connections * 64
        );
    }
    echo.stop();
}

#[test]
fn idle_holds_and_checks_every_connection() {
    let echo = spawn_echo(loopback()).unwrap();
    let mut cfg = IdleConfig::new(echo.local_addr());
    cfg.conns = 50;
    cfg.hold = Duration::from_millis(200);
    let r = run_idle(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.results.conns_opened, 50);
    assert_eq!(r.results.conns_alive_after_hold, 50);
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.connections_total, 50);
    assert_eq!(s.bytes_received, 50 * 2 * 64);
}

#[test]
fn refused_target_counts_refused() {
    // Bind a port, then free it: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = RrConfig::new(port);
    cfg.conns = 2;
    cfg.duration = Duration::from_millis(50);
    let r = run_rr(&cfg).unwrap();
    assert_eq!(r.errors.get(ErrorClass::Refused), 2, "{}", r.table());
    assert_eq!(r.results.requests, 0);
    assert!(!r.ok());

    let mut cfg = CpsConfig::new(port);
    cfg.duration = Duration::from_millis(20);
    let r = run_cps(&cfg).unwrap();
    assert!(r.errors.refused > 0);
    assert_eq!(r.errors.total(), r.errors.refused);
}

#[test]
fn reset_by_server_stop_is_counted() {
    let echo = spawn_echo(loopback()).unwrap();
    let mut cfg = IdleConfig::new(echo.local_addr());
    cfg.conns = 5;
    cfg.hold = Duration::from_millis(400);
    let addr = echo.local_addr();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        echo.stop()
    });
    let r = run_idle(&cfg).unwrap();
    stopper.join().unwrap();
    assert_eq!(r.target, addr.to_string());
    assert_eq!(r.results.conns_opened, 5);
    assert_eq!(r.results.conns_alive_after_hold, 0);
    // The stopped echo closed each connection: the check after the hold sees eof or reset.
    assert_eq!(r.errors.eof + r.errors.reset, 5, "{}", r.table());
}

#[test]
fn forward_relays_rr_and_bulk_exactly() {
    let echo = spawn_echo(loopback()).unwrap();
    let fwd = spawn_forward(loopback(), echo.local_addr(), 64 * 1024).unwrap();
    let mut rr = RrConfig::new(fwd.local_addr());
    rr.conns = 3;
    rr.msg = 100;
    rr.duration = Duration::from_millis(300);
    let r = run_rr(&rr).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.results.requests > 0);
    let mut bulk = ThroughputConfig::new(fwd.local_addr());
    bulk.conns = 2;
    bulk.duration = Duration::from_millis(300);
    bulk.size = 100_000;
    bulk.direction = Direction::Both;
    let t = run_throughput(&bulk).unwrap();
    assert!(t.ok(), "{}", t.table());
    assert_eq!(t.results.bytes_sent, t.results.bytes_received);
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.connections_total, 5);
    assert_eq!(
        s.bytes_received,
        r.results.requests * 100 + t.results.bytes_sent
    );
    assert_eq!(fwd.connections(), 5);
    assert_eq!(fwd.connect_failures(), 0);
    fwd.stop();
}

#[test]
fn udp_through_echo_counts_every_datagram() {
    let echo = switchyard_bench::spawn_udp_echo(loopback()).unwrap();
    let mut cfg = switchyard_bench::UdpConfig::new(echo.local_addr());
    cfg.sessions = 3;
    cfg.size = 1_000;
    cfg.rate = 2_000.0;
    cfg.duration = Duration::from_millis(500);
    cfg.drain = Duration::from_secs(2);
    let r = switchyard_bench::run_udp(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert_eq!(r.results.datagrams_sent, 1_000);
    assert_eq!(
        r.results.datagrams_received + r.results.datagrams_lost,
        r.results.datagrams_sent
    );
    let (datagrams, bytes) = echo.stop();
    assert!(datagrams >= r.results.datagrams_received);
    assert_eq!(bytes, datagrams * 1_000);
}

#[test]
fn udp_refuses_impossible_sizes() {
    let mut cfg = switchyard_bench::UdpConfig::new(loopback());
    cfg.size = 65_508;
    assert!(switchyard_bench::run_udp(&cfg).is_err());
    cfg.size = 8;
    assert!(switchyard_bench::run_udp(&cfg).is_err());
}
