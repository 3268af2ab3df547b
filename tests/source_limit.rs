//! Switchyard's per-source limits (`switchyard.filters.network.source_limit`, its own
//! extension: Envoy has no per-client limit) before the tcp_proxy, with two workers:
//!
//! * a cap on each source's open connections: a third from one client is refused while two
//!   are open, another client is not affected, and a closed one frees its seat;
//! * a token bucket per /24: two clients of one /24 share it, a client of another /24 has its
//!   own; `GET /source_limits` names the busiest source;
//! * spraying many addresses into a small table does not reset a limited source (and new
//!   sources that find no room are refused: the table fails closed).
//!
//! Each test runs in both relay modes. Against Envoy they are skipped: the filter is
//! Switchyard's own.

#[macro_use]
mod common;

use common::*;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// A source limit filter item for [`tcp_listener_after`]: `body` is the rest of its
/// `typed_config` (indented by 10).
fn source_limit_filter(stat_prefix: &str, body: &str) -> String {
    format!(
        r#"      - name: switchyard.filters.network.source_limit
        typed_config:
          "@type": type.googleapis.com/switchyard.filters.network.source_limit.v1.SourceLimit
          stat_prefix: {stat_prefix}
{body}"#
    )
}

/// Starts Switchyard (two workers) with one listener on `port` behind `filter` and a probe
/// listener, and waits until they listen. None against Envoy (skipped).
fn start(port: u16, filter: &str, backend: &Backend, mode: RelayMode) -> Option<Proxy> {
    if selected_proxy() == ProxyKind::Envoy {
        skip_unsupported(
            ProxyKind::Envoy,
            "per-source limits are Switchyard's own filter (Envoy has none)",
        );
        return None;
    }
    let probe = free_port();
    let listeners = tcp_listener_after("gw", port, filter, "gw", "backend")
        + &tcp_listener("probe", probe, "probe", "backend");
    let yaml = bootstrap(
        free_port(),
        &listeners,
        &static_cluster("backend", &[(backend.addr, 1)]),
    );
    let proxy = start_selected_mode_with(&yaml, mode, 2)?;
    proxy.wait_listening(local(probe), Duration::from_secs(10));
    Some(proxy)
}

/// A connection from `src` to `port` whose ping is echoed, or None when it is refused.
fn open_from(src: Ipv4Addr, port: u16) -> Option<TcpStream> {
    let mut s = connect_from(src, local(port)).ok()?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    ping(&mut s, b"mine?")
        .ok()
        .filter(|e| e == b"mine?")
        .map(|_| s)
}

fn ip(a: u8, b: u8, c: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, a, b, c)
}

fn each_source_has_its_own_cap_of_open_connections(mode: RelayMode) {
    let backend = Backend::echo();
    let port = free_port();
    let filter = source_limit_filter("per_client", "          max_connections_per_source: 2\n");
    let Some(proxy) = start(port, &filter, &backend, mode) else {
        return;
    };
    let first = open_from(ip(0, 0, 1), port).expect("the first");
    let _second = open_from(ip(0, 0, 1), port).expect("the second");
    assert!(
        open_from(ip(0, 0, 1), port).is_none(),
        "a third is over the cap"
    );
    let _others: Vec<_> = (0..2)
        .map(|_| open_from(ip(0, 0, 2), port).expect("another client has its own cap"))
        .collect();
    drop(first);
    // The freed seat comes back when the proxy has closed the connection.
    assert!(
        wait_until(WAIT, || open_from(ip(0, 0, 1), port).is_some()),
        "a closed connection gives its seat back\n{}",
        proxy.logs()
    );
    assert!(proxy.wait_stat("source_limit.per_client.concurrency_limited", 1, WAIT) >= 1);
    assert_eq!(proxy.stat("source_limit.per_client.rate_limited"), 0);
    // 65,536 entries of 64 B, and the table's own few fields.
    let bytes = proxy.stat("source_limit.per_client.table_bytes");
    assert!((64 * 65_536..64 * 65_536 + 256).contains(&bytes), "{bytes}");
}

fn a_24_shares_one_bucket_and_the_admin_names_it(mode: RelayMode) {
    let backend = Backend::echo();
    let port = free_port();
    let filter = source_limit_filter(
        "per_net",
        "          ipv4_prefix_len: 24\n          connection_rate: { max_tokens: 3, fill_interval: 60s }\n",
    );
    let Some(proxy) = start(port, &filter, &backend, mode) else {
        return;
    };
    let relayed = [
        ip(0, 0, 1),
        ip(0, 0, 2),
        ip(0, 0, 3),
        ip(0, 0, 4),
        ip(0, 0, 1),
    ]
    .into_iter()
    .filter(|src| open_from(*src, port).is_some())
    .count();
    assert_eq!(relayed, 3, "three tokens for the /24 together");
    assert!(open_from(ip(0, 1, 1), port).is_some(), "another /24");
    assert_eq!(
        proxy.wait_stat("source_limit.per_net.rate_limited", 2, WAIT),
        2
    );
    let body = proxy.get("/source_limits?limit=1").body;
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let busiest = &json["source_limits"][0]["busiest"][0];
    assert_eq!(busiest["source"], "127.0.0.0/24", "{body}");
    assert_eq!(busiest["connections_admitted"], 3, "{body}");
    assert_eq!(busiest["connections_refused"], 2, "{body}");
    assert_eq!(busiest["tokens_left"], 0, "{body}");
}

fn spraying_addresses_does_not_reset_a_limited_source(mode: RelayMode) {
    let backend = Backend::echo();
    let port = free_port();
    let filter = source_limit_filter(
        "sprayed",
        "          table_entries: 8\n          connection_rate: { max_tokens: 1, fill_interval: 60s }\n",
    );
    let Some(proxy) = start(port, &filter, &backend, mode) else {
        return;
    };
    let victim = ip(0, 0, 1);
    assert!(open_from(victim, port).is_some(), "its one token");
    assert!(open_from(victim, port).is_none(), "limited");
    let sprayed: Vec<_> = (0..64)
        .map(|i| open_from(ip(0, 2, i + 1), port).is_some())
        .collect();
    assert!(
        open_from(victim, port).is_none(),
        "still limited after the spray"
    );
    let admitted = sprayed.iter().filter(|ok| **ok).count();
    assert!(
        admitted < 64,
        "a table of 8 cannot hold 64 limited sources: new ones are refused"
    );
    assert!(proxy.stat("source_limit.sprayed.table_full") >= 1);
}

in_both_relay_modes!(
    each_source_has_its_own_cap_of_open_connections,
    a_24_shares_one_bucket_and_the_admin_names_it,
    spraying_addresses_does_not_reset_a_limited_source,
);
