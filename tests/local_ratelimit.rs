//! The local rate limit network filter (`envoy.filters.network.local_ratelimit`) before the
//! tcp_proxy, with two workers (one bucket across them):
//!
//! * `max_tokens: 5` and a minute's fill: of twelve connections five are relayed and seven
//!   are closed at once without reaching the backend (`local_rate_limit.<prefix>.rate_limited`
//!   7);
//! * a bucket of one refilled every 300 ms: a second connection at once is limited, one after
//!   the interval is relayed;
//! * `share_key`: two listeners share one bucket of three;
//! * `max_tokens: 0` (which Envoy takes): every connection is limited;
//! * with `connection_limit` in the chain too, the two apply in the chain's order.
//!
//! Each test runs in both relay modes (the limit is decided at accept, before either
//! relays a byte), and against Envoy.

#[macro_use]
mod common;

use common::*;
use std::net::TcpStream;
use std::time::Duration;

fn rate_filter(prefix: &str, max: u32, interval: &str, share_key: &str) -> String {
    let share = if share_key.is_empty() {
        String::new()
    } else {
        format!("          share_key: {share_key}\n")
    };
    format!(
        r#"      - name: envoy.filters.network.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: {prefix}
          token_bucket: {{ max_tokens: {max}, tokens_per_fill: 1, fill_interval: {interval} }}
{share}"#
    )
}

/// Starts the selected proxy with two workers, the listeners `(name, port, filter)` to one
/// echo backend, and waits until they listen. Waiting connects, which would take a token:
/// it connects to a listener of the same config without a limit instead.
fn start(listeners: &[(&str, u16, String)], backend: &Backend, mode: RelayMode) -> Option<Proxy> {
    let probe = free_port();
    let items: String = listeners
        .iter()
        .map(|(name, port, filter)| tcp_listener_after(name, *port, filter, name, "echo"))
        .chain([tcp_listener("probe", probe, "probe", "echo")])
        .collect();
    let yaml = bootstrap(
        free_port(),
        &items,
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let proxy = start_selected_mode_with(&yaml, mode, 2)?;
    proxy.wait_listening(local(probe), Duration::from_secs(10));
    Some(proxy)
}

/// Whether a new connection to `port` is relayed (its ping echoed) rather than closed.
fn relayed(port: u16) -> bool {
    relayed_of(port, 1).0 == 1
}

/// Opens `n` connections one after the other (each held open until the end); how many
/// were relayed.
fn relayed_of(port: u16, n: usize) -> (usize, Vec<TcpStream>) {
    let mut held = Vec::new();
    let mut ok = 0;
    for _ in 0..n {
        if let Ok(mut s) = connect(local(port)) {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            if ping(&mut s, b"token?").is_ok_and(|e| e == b"token?") {
                ok += 1;
                held.push(s);
            }
        }
    }
    (ok, held)
}

fn five_tokens_relay_five_connections_across_two_workers_and_close_the_rest(mode: RelayMode) {
    let backend = Backend::echo();
    let port = free_port();
    let Some(proxy) = start(
        &[("gw", port, rate_filter("gw_rate", 5, "60s", ""))],
        &backend,
        mode,
    ) else {
        return;
    };
    let (ok, _held) = relayed_of(port, 12);
    assert_eq!(ok, 5, "five tokens, five connections\n{}", proxy.logs());
    assert_eq!(
        proxy.wait_stat(
            "local_rate_limit.gw_rate.rate_limited",
            7,
            Duration::from_secs(5)
        ),
        7
    );
    let probe_connections = 1;
    assert_eq!(
        backend.accepted(),
        5 + probe_connections,
        "the limited ones never reached it"
    );
}

fn the_bucket_refills_every_interval(mode: RelayMode) {
    let backend = Backend::echo();
    let port = free_port();
    let Some(proxy) = start(
        &[("gw", port, rate_filter("refill", 1, "0.3s", ""))],
        &backend,
        mode,
    ) else {
        return;
    };
    assert!(relayed(port), "the one token");
    assert!(!relayed(port), "none left within the interval");
    std::thread::sleep(Duration::from_millis(700));
    assert!(relayed(port), "refilled after the interval");
    assert!(proxy.stat("local_rate_limit.refill.rate_limited") >= 1);
}

fn listeners_with_one_share_key_share_one_bucket_and_an_empty_bucket_limits_all(mode: RelayMode) {
    let backend = Backend::echo();
    let (a, b, none) = (free_port(), free_port(), free_port());
    let Some(proxy) = start(
        &[
            ("a", a, rate_filter("shared", 3, "60s", "pool")),
            ("b", b, rate_filter("shared", 3, "60s", "pool")),
            ("none", none, rate_filter("none", 0, "60s", "")),
        ],
        &backend,
        mode,
    ) else {
        return;
    };
    let (first, _held_a) = relayed_of(a, 2);
    let (second, _held_b) = relayed_of(b, 3);
    assert_eq!(
        (first, second),
        (2, 1),
        "three tokens between both listeners"
    );
    assert_eq!(relayed_of(none, 3).0, 0, "max_tokens 0 holds no token");
    assert_eq!(
        proxy.wait_stat(
            "local_rate_limit.none.rate_limited",
            3,
            Duration::from_secs(5)
        ),
        3
    );
}

/// A chain with both limits runs them in its order, as Envoy runs its filters: the first
/// to refuse decides and the other is not consulted (no token taken, no seat held).
fn a_connection_limit_and_a_rate_limit_apply_in_the_chains_order(mode: RelayMode) {
    let backend = Backend::echo();
    let (seat_first, token_first) = (free_port(), free_port());
    let Some(proxy) = start(
        &[
            (
                "seat_first",
                seat_first,
                connection_limit_filter("seats_a", 1, None)
                    + &rate_filter("tokens_a", 3, "60s", ""),
            ),
            (
                "token_first",
                token_first,
                rate_filter("tokens_b", 3, "60s", "")
                    + &connection_limit_filter("seats_b", 1, None),
            ),
        ],
        &backend,
        mode,
    ) else {
        return;
    };
    // Connection limit first: while one connection holds the seat, three more are refused
    // by it and take no token; after it closes, the two tokens left serve two more.
    let held = one_held_three_refused(&proxy, seat_first, "seats_a", 3);
    assert_eq!(proxy.stat("local_rate_limit.tokens_a.rate_limited"), 0);
    drop(held);
    proxy.wait_stat(
        "connection_limit.seats_a.active_connections",
        0,
        Duration::from_secs(5),
    );
    for _ in 0..2 {
        assert!(relayed(seat_first), "a token left");
        proxy.wait_stat(
            "connection_limit.seats_a.active_connections",
            0,
            Duration::from_secs(5),
        );
    }
    assert!(!relayed(seat_first), "the three tokens are spent");
    // Rate limit first: each refused connection took a token before the seat refused it.
    let _held = one_held_three_refused(&proxy, token_first, "seats_b", 2);
    assert_eq!(proxy.stat("local_rate_limit.tokens_b.rate_limited"), 1);
}

/// One connection relayed and held, then three refused, `by_seats` of them by the
/// connection limit `seats`; the held one.
fn one_held_three_refused(proxy: &Proxy, port: u16, seats: &str, by_seats: u64) -> Vec<TcpStream> {
    let (one, held) = relayed_of(port, 1);
    assert_eq!(one, 1);
    assert_eq!(relayed_of(port, 3).0, 0);
    let stat = format!("connection_limit.{seats}.limited_connections");
    assert_eq!(
        proxy.wait_stat(&stat, by_seats, Duration::from_secs(5)),
        by_seats
    );
    held
}

in_both_relay_modes!(
    five_tokens_relay_five_connections_across_two_workers_and_close_the_rest,
    the_bucket_refills_every_interval,
    listeners_with_one_share_key_share_one_bucket_and_an_empty_bucket_limits_all,
    a_connection_limit_and_a_rate_limit_apply_in_the_chains_order,
);
