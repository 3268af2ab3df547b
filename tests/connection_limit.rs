//! The connection limit network filter (`envoy.filters.network.connection_limit`) before the
//! tcp_proxy, with two workers (the limit holds across them together):
//!
//! * `max_connections: 2`: two connections are relayed, a third is closed at once without
//!   reaching the backend (`connection_limit.<prefix>.limited_connections` 1,
//!   `active_connections` 2); after one closes, a new one is relayed;
//! * with `delay: 0.5s` the refused connection is held about that long, then closed.
//!
//! The same test runs against Envoy.

mod common;

use common::*;
use std::time::Duration;

fn limited_listener(name: &str, port: u16, delay: Option<&str>) -> String {
    let limit = connection_limit_filter(name, 2, delay);
    tcp_listener_after(name, port, &limit, name, "echo")
}

#[test]
fn connections_over_the_limit_are_closed() {
    let backend = Backend::echo();
    let (admin, ports) = (free_port(), [free_port(), free_port()]);
    let listeners = limited_listener("now", ports[0], None)
        + &limited_listener("later", ports[1], Some("0.5s"));
    let yaml = bootstrap(
        admin,
        &listeners,
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return;
    }
    let proxy = Proxy::start_with(
        kind,
        &yaml,
        ProxyOpts {
            concurrency: 2,
            ..ProxyOpts::default()
        },
    );
    let open = |port: u16, i: u8| {
        let mut s = connect_retry(local(port), Duration::from_secs(5));
        assert_eq!(ping(&mut s, &[i; 8]).unwrap(), [i; 8]);
        s
    };
    let mut two = vec![open(ports[0], 1), open(ports[0], 2)];
    let accepted = backend.accepted();
    let mut third = connect(local(ports[0])).unwrap();
    let took = closed_within(&mut third, Duration::from_secs(3));
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(300)),
        "closed at once: {took:?}\n{}",
        proxy.logs()
    );
    assert_eq!(
        proxy.wait_stat(
            "connection_limit.now.limited_connections",
            1,
            Duration::from_secs(5)
        ),
        1
    );
    assert_eq!(proxy.stat("connection_limit.now.active_connections"), 2);
    assert_eq!(
        backend.accepted(),
        accepted,
        "the refused one never reached the backend"
    );

    drop(two.pop());
    assert_eq!(
        proxy.wait_stat(
            "connection_limit.now.active_connections",
            1,
            Duration::from_secs(5)
        ),
        1
    );
    two.push(open(ports[0], 3));
    assert_eq!(ping(&mut two[0], b"still").unwrap(), b"still");

    // With a delay the refusal waits.
    let _held = [open(ports[1], 4), open(ports[1], 5)];
    let mut late = connect(local(ports[1])).unwrap();
    let took = closed_within(&mut late, Duration::from_secs(3));
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(400) && t < Duration::from_secs(2)),
        "closed after the 0.5 s delay: {took:?}"
    );
    assert_eq!(
        proxy.wait_stat(
            "connection_limit.later.limited_connections",
            1,
            Duration::from_secs(5)
        ),
        1
    );
}
