//! The global downstream connection limit, with two workers (the limit holds across them and
//! across listeners together):
//!
//! * from the runtime (`layered_runtime` static layer, key
//!   `overload.global_downstream_max_connections`: 3): a fourth client is closed at once
//!   without reaching the backend and counted in its listener's
//!   `downstream_global_cx_overflow`; a listener with `ignore_global_conn_limit` still
//!   accepts; `/runtime` shows the layers and values; `POST /runtime_modify` raises the limit
//!   live; the admin (`admin.ignore_global_conn_limit`) answers throughout;
//! * the runtime key counts admin connections too (by default): at the limit the admin is
//!   refused as well, and answers again once a client leaves;
//! * from the overload manager (`envoy.resource_monitors.global_downstream_max_connections`:
//!   2, which replaces the runtime key's 100 for the workers): the third client is refused,
//!   the admin (not in the overload manager's count, as in Envoy) still answers.
//!
//! * rounds of 8 concurrent bulk connections at a limit of 8, in both relay modes: every
//!   connection relayed byte-exact while a ninth is refused, and the count back to zero once
//!   a round's connections closed (the next round fits again).
//!
//! The same tests run against Envoy (the relay-mode test once: Envoy has no relay modes).

#[macro_use]
mod common;

use common::*;
use std::time::Duration;

in_both_relay_modes!(a_limit_holds_through_rounds_of_loaded_connections);

const KEY: &str = "overload.global_downstream_max_connections";

fn open(port: u16, i: u8) -> std::net::TcpStream {
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    assert_eq!(ping(&mut s, &[i; 8]).unwrap(), [i; 8]);
    s
}

/// A client the proxy closes at once (within 300 ms) without relaying anything.
fn assert_refused(port: u16, proxy: &Proxy) {
    let mut s = connect(local(port)).unwrap();
    let took = closed_within(&mut s, Duration::from_secs(3));
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(300)),
        "closed at once: {took:?}\n{}",
        proxy.logs()
    );
}

fn overflow_stat(port: u16) -> String {
    format!("listener.127.0.0.1_{port}.downstream_global_cx_overflow")
}

fn start(yaml: &str) -> Option<Proxy> {
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return None;
    }
    let opts = ProxyOpts {
        concurrency: 2,
        ..ProxyOpts::default()
    };
    Some(Proxy::start_with(kind, yaml, opts))
}

#[test]
fn runtime_limit_holds_across_listeners_and_follows_runtime_modify() {
    let backend = Backend::echo();
    let (admin, limited, ignoring) = (free_port(), free_port(), free_port());
    let listeners = tcp_listener("limited", limited, "limited", "echo")
        + &with_fields(
            &tcp_listener("ignoring", ignoring, "ignoring", "echo"),
            "    ignore_global_conn_limit: true\n",
        );
    let yaml = bootstrap(
        admin,
        &listeners,
        &static_cluster("echo", &[(backend.addr, 1)]),
    )
    .replacen("admin:\n", "admin:\n  ignore_global_conn_limit: true\n", 1)
        + "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      \
             overload: { global_downstream_max_connections: 3 }\n      \
             re2.max_program_size.error_level: 1000\n  \
             - name: admin\n    admin_layer: {}\n";
    let Some(proxy) = start(&yaml) else { return };

    let runtime = proxy.get("/runtime");
    assert_eq!(runtime.status, 200);
    let json: serde_json::Value = serde_json::from_str(&runtime.body).unwrap();
    assert_eq!(json["layers"], serde_json::json!(["static", "admin"]));
    assert_eq!(
        json["entries"][KEY],
        serde_json::json!({"layer_values": ["3", ""], "final_value": "3"})
    );

    let mut clients = vec![open(limited, 1), open(limited, 2), open(ignoring, 3)];
    let accepted = backend.accepted();
    assert_refused(limited, &proxy);
    assert_eq!(
        proxy.wait_stat(&overflow_stat(limited), 1, Duration::from_secs(5)),
        1
    );
    assert_eq!(
        backend.accepted(),
        accepted,
        "the refused one never reached the backend"
    );
    clients.push(open(ignoring, 4));
    assert_eq!(proxy.stat(&overflow_stat(ignoring)), 0);
    assert_eq!(
        proxy.stat(&format!("listener.127.0.0.1_{limited}.downstream_cx_total")),
        2
    );

    // Four open; a limit of 6 lets two more in, then refuses again.
    let r = proxy.post(&format!("/runtime_modify?{KEY}=6"));
    assert_eq!((r.status, r.body.trim()), (200, "OK"));
    clients.push(open(limited, 5));
    clients.push(open(limited, 6));
    assert_refused(limited, &proxy);
    assert_eq!(
        proxy.wait_stat(&overflow_stat(limited), 2, Duration::from_secs(5)),
        2
    );
    let json: serde_json::Value = serde_json::from_str(&proxy.get("/runtime").body).unwrap();
    assert_eq!(
        json["entries"][KEY],
        serde_json::json!({"layer_values": ["3", "6"], "final_value": "6"})
    );

    // Removing the override brings the static layer's 3 back: with six open, nothing fits
    // until four have gone.
    assert_eq!(proxy.post(&format!("/runtime_modify?{KEY}=")).status, 200);
    assert_refused(limited, &proxy);
    clients.truncate(2);
    assert!(
        relays_again(limited),
        "room again once clients left\n{}",
        proxy.logs()
    );
    for c in &mut clients {
        assert_eq!(ping(c, b"still").unwrap(), b"still");
    }

    if selected_proxy() == ProxyKind::Switchyard {
        // Envoy stores any key; Switchyard refuses one it does not read, naming it.
        let r = proxy.post("/runtime_modify?circuit_breakers.echo.default.max_connections=1");
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body
                .contains("circuit_breakers.echo.default.max_connections"),
            "{}",
            r.body
        );
    }
}

/// `/ready` answers 200 (false when the connection is refused or reset).
fn admin_answers(proxy: &Proxy) -> bool {
    http(proxy.admin, "GET", "/ready").is_ok_and(|r| r.status == 200)
}

/// A new client is relayed again within 5 s.
fn relays_again(port: u16) -> bool {
    wait_until(Duration::from_secs(5), || {
        let mut s = connect(local(port)).unwrap();
        ping(&mut s, b"in").is_ok_and(|got| got == b"in")
    })
}

/// One echo listener on a new port, its bootstrap followed by `extra` (top-level YAML).
fn one_listener(extra: &str) -> (Backend, u16, String) {
    let backend = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &tcp_listener("l", port, "l", "echo"),
        &static_cluster("echo", &[(backend.addr, 1)]),
    ) + extra;
    (backend, port, yaml)
}

#[test]
fn runtime_limit_counts_admin_connections() {
    let (_backend, port, yaml) = one_listener(
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer: \
         { overload.global_downstream_max_connections: 2 }\n",
    );
    let Some(proxy) = start(&yaml) else { return };

    let mut clients = vec![open(port, 1), open(port, 2)];
    assert!(
        !admin_answers(&proxy),
        "at the limit the admin is refused too"
    );
    clients.pop();
    assert!(
        wait_until(Duration::from_secs(5), || admin_answers(&proxy)),
        "the admin answers once a client left\n{}",
        proxy.logs()
    );
    clients.clear();
    // The admin's own connections count too: read the stats once one gets through.
    let mut stats = None;
    wait_until(Duration::from_secs(5), || {
        stats = http(proxy.admin, "GET", "/stats")
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| parse_stats(&r.body));
        stats.is_some()
    });
    let stats = stats.expect("the admin answers once the clients left");
    assert_eq!(
        stats.get(&overflow_stat(port)),
        Some(&0),
        "no client was refused"
    );
}

#[test]
fn overload_manager_limit_holds_workers_alone() {
    let (_backend, port, yaml) = one_listener(
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer: \
         { overload.global_downstream_max_connections: 100 }\n\
         overload_manager:\n  refresh_interval: 0.25s\n  resource_monitors:\n  \
         - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      \
         \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      \
         max_active_downstream_connections: 2\n",
    );
    let Some(proxy) = start(&yaml) else { return };

    let mut clients = vec![open(port, 1), open(port, 2)];
    assert_refused(port, &proxy);
    assert!(
        admin_answers(&proxy),
        "the admin is not held to the overload manager's limit"
    );
    assert_eq!(
        proxy.wait_stat(&overflow_stat(port), 1, Duration::from_secs(5)),
        1
    );
    clients.pop();
    assert!(
        relays_again(port),
        "room again once a client left\n{}",
        proxy.logs()
    );
    assert_eq!(ping(&mut clients[0], b"still").unwrap(), b"still");
}

fn a_limit_holds_through_rounds_of_loaded_connections(mode: RelayMode) {
    const LIMIT: u64 = 8;
    let (_backend, port, yaml) = one_listener(&format!(
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer: \
         {{ overload.global_downstream_max_connections: {LIMIT} }}\n"
    ));
    // The admin stays reachable at the limit.
    let yaml = yaml.replacen("admin:\n", "admin:\n  ignore_global_conn_limit: true\n", 1);
    let kind = selected_proxy();
    let opts = ProxyOpts {
        concurrency: 2,
        ..ProxyOpts::default()
    };
    let Some(opts) = relay_mode_opts(kind, mode, opts) else {
        return;
    };
    if !require(proxy_available(kind), kind.name()) {
        return;
    }
    let proxy = Proxy::start_with(kind, &yaml, opts);
    let active = format!("listener.127.0.0.1_{port}.downstream_cx_active");
    for round in 0..3u64 {
        let clients: Vec<_> = (0..LIMIT).map(|i| open(port, i as u8)).collect();
        assert_refused(port, &proxy);
        let exchanges: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, s)| std::thread::spawn(move || exchange(s, round * 100 + i as u64, 1 << 20)))
            .collect();
        for (i, x) in exchanges.into_iter().enumerate() {
            let x = x.join().expect("exchange thread");
            echoed_exactly(i as u64, &x).unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        assert_eq!(proxy.wait_stat(&active, 0, Duration::from_secs(5)), 0);
        // A slot leaves the global count right after its stats: give it that moment.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.stat(&overflow_stat(port)), 3, "one refused per round");
}
