//! Descriptor exhaustion: with its descriptor limit reached, the proxy closes each connection
//! beyond what it can hold at once (an accept into io_uring's own file table and a close),
//! instead of leaving it in the accept queue to be retried on the 100 ms tick; it logs that at
//! most every few seconds, counts `listener.<address>.downstream_cx_shed_fd_limit`, and serves
//! again as soon as descriptors come back.
//!
//! Run at two limits one apart: when the connections held leave no descriptor free, every
//! accept fails (`EMFILE`) and the shed path does the work; with one free, an accept succeeds
//! and its connection is closed when its upstream socket finds none. Before, the first case
//! never served the burst at all and the second took about 7 s for 100 connections.
//!
//! Switchyard only: under the same abuse Envoy 1.40 crashed (issue 15's abuse run), so there is
//! no reference behaviour to compare with.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connections that arrive at once while every descriptor is in use.
const BURST: usize = 100;

#[derive(Debug, PartialEq)]
enum Fate {
    /// The byte came back through the proxy.
    Served,
    /// The proxy closed the connection (end of stream or reset) without relaying.
    Shed,
    /// Nothing within the wait: the connection sat in the accept queue.
    Waiting,
}

fn fate(s: &mut TcpStream, wait: Duration) -> Fate {
    s.set_read_timeout(Some(wait)).unwrap();
    if s.write_all(b"x").is_err() {
        return Fate::Shed;
    }
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Fate::Served,
        Ok(_) => Fate::Shed,
        Err(e) if matches!(classify(&e), End::Reset | End::Eof) => Fate::Shed,
        Err(_) => Fate::Waiting,
    }
}

#[test]
fn connections_beyond_the_descriptor_limit_are_shed_at_once() {
    let kind = selected_proxy();
    if kind != ProxyKind::Switchyard {
        skip_unsupported(
            kind,
            "Envoy 1.40 crashed at descriptor exhaustion; this checks Switchyard's shedding",
        );
        return;
    }
    if !require(proxy_available(kind), kind.name()) {
        return;
    }
    let counted: Vec<u64> = [64, 65].into_iter().map(exhaust).collect();
    eprintln!("counted as shed at limits 64 and 65: {counted:?}");
    assert!(
        counted.iter().any(|&c| c as usize >= BURST),
        "at one of the two limits the burst went through the shed path: {counted:?}"
    );
}

/// Runs the abuse against a proxy limited to `nofile` descriptors; returns how many
/// connections it counted as shed.
fn exhaust(nofile: u64) -> u64 {
    let backend = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &tcp_listener("l4", port, "l4", "echo"),
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let proxy = Proxy::start_with(
        ProxyKind::Switchyard,
        &yaml,
        ProxyOpts {
            nofile_limit: Some(nofile),
            log_level: "warn",
            ..ProxyOpts::default()
        },
    );
    let addr = local(port);
    // First the connections the proxy can hold, one at a time, each served and kept open,
    // until ten in a row are closed: its descriptors are all in use now.
    let mut held: Vec<TcpStream> = Vec::new();
    let (mut closed_in_a_row, mut closed_first) = (0, 0);
    while closed_in_a_row < 10 {
        let mut s = connect_retry(addr, Duration::from_secs(5));
        match fate(&mut s, Duration::from_secs(5)) {
            Fate::Served => {
                closed_in_a_row = 0;
                held.push(s);
            }
            Fate::Shed => {
                closed_in_a_row += 1;
                closed_first += 1;
            }
            Fate::Waiting => panic!("a connection waited 5 s\n{}", proxy.logs()),
        }
        assert!(
            held.len() < 200,
            "the descriptor limit never bit\n{}",
            proxy.logs()
        );
    }
    // Then a burst: all of it is decided within 2 s.
    let t0 = Instant::now();
    let mut burst: Vec<TcpStream> = (0..BURST)
        .map(|_| connect_retry(addr, Duration::from_secs(5)))
        .collect();
    let fates: Vec<Fate> = burst
        .iter_mut()
        .map(|s| fate(s, Duration::from_secs(2)))
        .collect();
    let took = t0.elapsed();
    let count = |f: Fate| fates.iter().filter(|x| **x == f).count();
    let (served, shed, waiting) = (count(Fate::Served), count(Fate::Shed), count(Fate::Waiting));
    eprintln!(
        "{} connections held at a limit of {nofile} descriptors; a burst of {BURST}: \
         {served} served, {shed} shed, {waiting} waiting, in {took:?}",
        held.len(),
    );
    assert_eq!(waiting, 0, "connections left waiting\n{}", proxy.logs());
    assert_eq!(shed, BURST, "the whole burst is closed\n{}", proxy.logs());
    assert!(
        took < Duration::from_secs(2),
        "the burst took {took:?}\n{}",
        proxy.logs()
    );
    drop(burst);
    drop(held);
    let counted = shed_count(&proxy, port);
    // Before the burst some were accepted and then found no descriptor for their upstream
    // socket (closed as upstream connection failures, not shed).
    assert!(
        counted as usize <= shed + closed_first,
        "shed connections counted: {counted}, {} closed",
        shed + closed_first
    );
    serves_again(&proxy, addr);
    // Rate-limited logging: not a line (or two) per connection.
    let logs = proxy.log_text();
    let lines = logs
        .lines()
        .filter(|l| l.contains("out of file descriptors") || l.contains("accept failed"))
        .count();
    assert!(lines <= 6, "{lines} log lines about descriptors\n{logs}");
    counted
}

/// `downstream_cx_shed_fd_limit` of the listener on `port`, once the admin can accept again.
fn shed_count(proxy: &Proxy, port: u16) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        match http(proxy.admin, "GET", "/stats") {
            Ok(r) if r.status == 200 => break r.body,
            other => assert!(
                Instant::now() < deadline,
                "admin unreachable after descriptors came back: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    parse_stats(&body)
        .get(&format!(
            "listener.127.0.0.1_{port}.downstream_cx_shed_fd_limit"
        ))
        .copied()
        .unwrap_or(0)
}

/// Descriptors came back: a new connection is served again within 5 s.
fn serves_again(proxy: &Proxy, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_retry(addr, Duration::from_secs(5));
        match fate(&mut s, Duration::from_secs(2)) {
            Fate::Served => return,
            f => assert!(
                Instant::now() < deadline,
                "not served after descriptors came back: {f:?}\n{}",
                proxy.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
