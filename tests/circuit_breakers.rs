//! Circuit breakers (`cluster.circuit_breakers.thresholds`), counted across all workers
//! together (two workers here), with Envoy's TCP semantics:
//!
//! * `max_connections: 2`: two connections are relayed; a third is closed at once
//!   (`upstream_cx_overflow`, `circuit_breakers.default.cx_open` 1, `remaining_cx` 0); once
//!   one of the two closes, a new connection is relayed again, and with all closed the
//!   breaker is shut (`cx_open` 0, `remaining_cx` 2);
//! * `max_pending_requests: 1` (connects in progress): with the endpoint's accept queue full,
//!   a first client's upstream connect hangs (`rq_pending_open` 1, `remaining_pending` 0) and
//!   a second client is closed at once (`upstream_rq_pending_overflow`).
//!
//! The same test runs against Envoy.

mod common;

use common::*;
use socket2::{Domain, Socket, Type};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const THRESHOLDS: &str = "    circuit_breakers:\n      thresholds:\n      - priority: DEFAULT\n        max_connections: 2\n        max_pending_requests: 1\n        max_requests: 100\n        max_retries: 3\n        track_remaining: true\n";

fn config(admin: u16, ports: [u16; 2], echo: SocketAddr, stalled: SocketAddr) -> String {
    let listeners =
        tcp_listener("l", ports[0], "l", "limited") + &tcp_listener("s", ports[1], "s", "stalled");
    let mut clusters = static_cluster("limited", &[(echo, 1)]) + THRESHOLDS;
    clusters += &static_cluster("stalled", &[(stalled, 1)])
        .replace("connect_timeout: 1s", "connect_timeout: 20s");
    clusters += THRESHOLDS;
    bootstrap(admin, &listeners, &clusters)
}

/// A listener that never accepts, its accept queue filled by the test: further SYNs to it
/// are dropped, so a connect to it stays in progress.
fn stalled_listener() -> (Socket, Vec<TcpStream>) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Backlog 0 holds one connection; a second completes as well on Linux. Fill it.
    let fillers = (0..2).filter_map(|_| connect(addr).ok()).collect();
    (s, fillers)
}

/// How `s` ended within `wait` (or `None` if it is still open and silent).
fn ended(s: &mut TcpStream, wait: Duration) -> Option<End> {
    s.set_read_timeout(Some(wait)).unwrap();
    let (_, end) = read_all(s, 64);
    matches!(end, End::Eof | End::Reset).then_some(end)
}

#[test]
fn over_the_limits_connections_are_refused_and_counted() {
    let echo = Backend::echo();
    let (stalled, _fillers) = stalled_listener();
    let stalled_addr = stalled.local_addr().unwrap().as_socket().unwrap();
    let (admin, ports) = (free_port(), [free_port(), free_port()]);
    let Some(proxy) = start_selected_with(&config(admin, ports, echo.addr, stalled_addr), 2) else {
        return;
    };
    let stat = |c: &str, name: &str| proxy.stat(&format!("cluster.{c}.{name}"));

    // max_connections: 2.
    let open = |i: u8| {
        let mut s = connect_retry(local(ports[0]), Duration::from_secs(5));
        assert_eq!(ping(&mut s, &[i; 16]).unwrap(), [i; 16]);
        s
    };
    let mut two = vec![open(1), open(2)];
    let mut third = connect(local(ports[0])).unwrap();
    let started = Instant::now();
    let end = ended(&mut third, Duration::from_secs(2));
    assert!(
        end.is_some(),
        "a third connection is refused\n{}",
        proxy.logs()
    );
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    assert_eq!(
        proxy.wait_stat(
            "cluster.limited.upstream_cx_overflow",
            1,
            Duration::from_secs(5)
        ),
        1
    );
    assert_eq!(stat("limited", "circuit_breakers.default.cx_open"), 1);
    assert_eq!(stat("limited", "circuit_breakers.default.remaining_cx"), 0);
    assert_eq!(stat("limited", "upstream_cx_active"), 2);

    drop(two.pop());
    assert_eq!(
        proxy.wait_stat(
            "cluster.limited.upstream_cx_active",
            1,
            Duration::from_secs(5)
        ),
        1
    );
    two.push(open(3));
    assert_eq!(ping(&mut two[0], b"still").unwrap(), b"still");
    drop(two);
    assert_eq!(
        proxy.wait_stat(
            "cluster.limited.circuit_breakers.default.remaining_cx",
            2,
            Duration::from_secs(5)
        ),
        2
    );
    assert_eq!(stat("limited", "circuit_breakers.default.cx_open"), 0);

    // max_pending_requests: 1. The first client's upstream connect hangs.
    let mut hanging = connect(local(ports[1])).unwrap();
    assert_eq!(
        proxy.wait_stat(
            "cluster.stalled.circuit_breakers.default.rq_pending_open",
            1,
            Duration::from_secs(5)
        ),
        1,
        "{}",
        proxy.logs()
    );
    assert_eq!(
        stat("stalled", "circuit_breakers.default.remaining_pending"),
        0
    );
    let mut second = connect(local(ports[1])).unwrap();
    let started = Instant::now();
    assert!(
        ended(&mut second, Duration::from_secs(2)).is_some(),
        "a second pending request is refused"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    assert_eq!(
        proxy.wait_stat(
            "cluster.stalled.upstream_rq_pending_overflow",
            1,
            Duration::from_secs(5)
        ),
        1
    );
    assert_eq!(
        ended(&mut hanging, Duration::from_millis(200)),
        None,
        "the first still waits for its connect"
    );
}
