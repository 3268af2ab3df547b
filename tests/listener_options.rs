//! Listener fields about its sockets, against Envoy too (`SWITCHYARD_TEST_PROXY=envoy`):
//!
//! * `enable_reuse_port` (default true): with two workers, two listening sockets on the port
//!   (one `SO_REUSEPORT` socket per worker); with `false`, one socket both workers accept
//!   from, every connection still served byte-exact; and (Switchyard) a second process can
//!   bind the port only when the first has `SO_REUSEPORT` sockets.
//! * `max_connections_to_accept_per_socket_event` (1 and 3) with two workers: a burst of 64
//!   clients at once, each echoed byte-exact, every connection counted; and (Switchyard) a
//!   reload that changes the bound keeps serving.
//! * `drain_type` (`DEFAULT`, `MODIFY_ONLY`): no effect on a tcp_proxy listener when the
//!   health check is failed; shown in `/config_dump`.
//! * `traffic_direction`: `POST /drain_listeners?inboundonly` stops the `INBOUND` listener
//!   (new connections refused) and no other; open connections on both go on; with
//!   `?graceful` it stops only after the drain period.

mod common;

use common::*;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// 64 clients connect at once through `port` and each gets 64 KiB echoed exactly.
fn serves_a_burst(port: u16) {
    const CLIENTS: u64 = 64;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(CLIENTS as usize));
    let failures = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    barrier.wait();
                    let s = connect_retry(local(port), Duration::from_secs(5));
                    echoed_exactly(i, &exchange(s, 0xACC + i, 64 * 1024))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("client thread").err())
            .collect::<Vec<_>>()
    });
    assert!(failures.is_empty(), "{failures:?}");
}

/// How many sockets listen on TCP `port` (`ss -ltnH`).
fn listening_sockets(port: u16) -> usize {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("( sport = :{port} )")])
        .output()
        .expect("ss (iproute2)");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A bootstrap with one listener on `port` to an echo, `extra` among its fields.
fn gateway(port: u16, backend: &Backend, extra: &str) -> String {
    let listener = tcp_listener("gw", port, "gw", "echo").replacen(
        "  - name: gw\n",
        &format!("  - name: gw\n{extra}"),
        1,
    );
    bootstrap(
        free_port(),
        &listener,
        &static_cluster("echo", &[(backend.addr, 1)]),
    )
}

/// Twenty exchanges through `port`, each byte-exact.
fn serves(port: u16) {
    for seed in 0..20 {
        let s = connect_retry(local(port), Duration::from_secs(5));
        let x = exchange(s, seed, 10_000);
        echoed_exactly(seed, &x).unwrap();
    }
}

fn sockets_with(extra: &str) -> Option<usize> {
    if !require(
        common::netns::tool_exists("ss"),
        "ss (iproute2) to count listening sockets",
    ) {
        return None;
    }
    let backend = Backend::echo();
    let port = free_port();
    let proxy = start_selected_with(&gateway(port, &backend, extra), 2)?;
    serves(port);
    let n = listening_sockets(port);
    drop(proxy);
    Some(n)
}

#[test]
fn reuse_port_gives_each_worker_its_own_socket() {
    if let Some(n) = sockets_with("") {
        assert_eq!(n, 2, "two workers, two SO_REUSEPORT sockets");
    }
}

#[test]
fn without_reuse_port_both_workers_share_one_socket() {
    if let Some(n) = sockets_with("    enable_reuse_port: false\n") {
        assert_eq!(
            n, 1,
            "enable_reuse_port: false: one socket for both workers"
        );
    }
}

#[test]
fn without_reuse_port_no_second_process_binds_the_port() {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "a second process on the port (Envoy's would need its own hot-restart base id)",
        );
        return;
    }
    let backend = Backend::echo();
    let port = free_port();
    let Some(_first) = start_selected(&gateway(port, &backend, "    enable_reuse_port: false\n"))
    else {
        return;
    };
    let dir = test_dir("reuse-port");
    let config = dir.join("second.yaml");
    std::fs::write(
        &config,
        gateway(port, &backend, "    enable_reuse_port: false\n"),
    )
    .unwrap();
    let out = Command::new(switchyard_bin())
        .args(["run", "-c"])
        .arg(&config)
        .args(["--concurrency", "1"])
        .output()
        .expect("run switchyard");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second process bound the port: {err}"
    );
    assert!(
        err.contains("Address already in use") && err.contains("gw"),
        "the error names the listener and the cause: {err}"
    );
    serves(port);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `max_connections_to_accept_per_socket_event`: each worker takes at most N new connections
/// per socket event (Envoy: per epoll wake; Switchyard: per completion batch, with N
/// single-shot accepts in flight). Bounded that tightly, a burst is still served whole.
#[test]
fn bounded_accepts_per_socket_event_serve_a_burst() {
    for n in [1, 3] {
        let backend = Backend::echo();
        let port = free_port();
        let extra = format!("    max_connections_to_accept_per_socket_event: {n}\n");
        let Some(proxy) = start_selected_with(&gateway(port, &backend, &extra), 2) else {
            return;
        };
        serves_a_burst(port);
        let total = proxy.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total"));
        assert_eq!(total, 64, "connections counted with a bound of {n}");
        assert_eq!(backend.accepted(), 64);
    }
}

/// A reload that changes the bound (Switchyard reloads its file; Envoy only by xDS or a hot
/// restart): the listener's sockets are opened anew with it, and connections keep being
/// served before and after.
#[test]
fn a_reload_changing_the_accept_bound_keeps_serving() {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "file reload (Envoy reloads by xDS or hot restart)",
        );
        return;
    }
    let backend = Backend::echo();
    let port = free_port();
    let bounded = |n: u32| {
        gateway(
            port,
            &backend,
            &format!("    max_connections_to_accept_per_socket_event: {n}\n"),
        )
    };
    let Some(proxy) = start_selected_with(&bounded(1), 2) else {
        return;
    };
    serves_a_burst(port);
    let held = connect_retry(local(port), Duration::from_secs(5));
    assert!(
        proxy
            .get("/config_dump")
            .body
            .contains("\"max_connections_to_accept_per_socket_event\": 1"),
        "the bound is in /config_dump before the reload"
    );
    proxy.rewrite_config(&gateway(port, &backend, ""));
    proxy.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || !proxy
            .get("/config_dump")
            .body
            .contains("max_connections_to_accept_per_socket_event")),
        "the reload was not applied\n{}",
        proxy.logs()
    );
    serves_a_burst(port);
    let x = exchange(held, 7, 10_000);
    echoed_exactly(7, &x).expect("a connection from before the reload");
    drop(proxy);
}

/// One echo listener per `(name, value)`, each with `field: value`, the proxy serving them,
/// and one open connection through each, echoed once.
struct Listeners {
    ports: Vec<u16>,
    open: Vec<TcpStream>,
    proxy: Proxy,
    _backend: Backend,
}

fn listeners_with(field: &str, values: &[(&str, &str)]) -> Option<Listeners> {
    listeners_draining_in(field, values, None)
}

/// [`listeners_with`], the proxy run with `--drain-time-s drain_time_s` when given.
fn listeners_draining_in(
    field: &str,
    values: &[(&str, &str)],
    drain_time_s: Option<u32>,
) -> Option<Listeners> {
    let backend = Backend::echo();
    let ports: Vec<u16> = values.iter().map(|_| free_port()).collect();
    let listeners: String = values
        .iter()
        .zip(&ports)
        .map(|((name, value), port)| {
            with_fields(
                &tcp_listener(name, *port, name, "echo"),
                &format!("    {field}: {value}\n"),
            )
        })
        .collect();
    let yaml = bootstrap(
        free_port(),
        &listeners,
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return None;
    }
    let opts = ProxyOpts {
        drain_time_s,
        ..ProxyOpts::default()
    };
    let proxy = Proxy::start_with(kind, &yaml, opts);
    let mut open: Vec<TcpStream> = ports
        .iter()
        .map(|p| connect_retry(local(*p), Duration::from_secs(5)))
        .collect();
    for s in &mut open {
        let back = ping(s, b"before").unwrap_or_else(|e| panic!("{e}\n{}", proxy.logs()));
        assert_eq!(back, b"before");
    }
    Some(Listeners {
        ports,
        open,
        proxy,
        _backend: backend,
    })
}

impl Listeners {
    /// Every open connection still echoes, `after` something.
    fn still_echo(&mut self, after: &str) {
        for (i, s) in self.open.iter_mut().enumerate() {
            echo_rounds(s, i as u64, 3).unwrap_or_else(|e| {
                panic!(
                    "listener {i}'s open connection after {after}: {e}\n{}",
                    self.proxy.logs()
                )
            });
        }
    }
}

/// `drain_type` decides one thing in Envoy: whether `POST /healthcheck/fail` makes the
/// listener's drain decision (`DrainManagerImpl::drainClose`) say "close" (`DEFAULT`) or not
/// (`MODIFY_ONLY`). Only a filter that asks that decision acts on it (HTTP's connection
/// manager); tcp_proxy never asks, and the health check failing stops no listener. So under
/// both proxies, after `/healthcheck/fail`, a listener of either type keeps relaying on its
/// open connection and serves new ones; `/config_dump` shows the field.
#[test]
fn drain_type_changes_nothing_for_tcp_proxy_when_the_health_check_fails() {
    let values = [("dflt", "DEFAULT"), ("modify", "MODIFY_ONLY")];
    let Some(mut l) = listeners_with("drain_type", &values) else {
        return;
    };
    assert_eq!(l.proxy.post("/healthcheck/fail").status, 200);
    l.still_echo("/healthcheck/fail");
    for port in &l.ports {
        serves(*port);
    }
    let dump = l.proxy.get("/config_dump").body;
    assert!(dump.contains("MODIFY_ONLY"), "{dump}");
}

/// `traffic_direction`: `POST /drain_listeners?inboundonly` stops the `INBOUND` listener and
/// no other; open connections on all of them go on.
#[test]
fn drain_listeners_inboundonly_stops_only_inbound_listeners() {
    let values = [
        ("inbound", "INBOUND"),
        ("outbound", "OUTBOUND"),
        ("unspecified", "UNSPECIFIED"),
    ];
    let Some(mut l) = listeners_with("traffic_direction", &values) else {
        return;
    };
    assert_eq!(l.proxy.post("/drain_listeners?inboundonly").status, 200);
    let inbound = l.ports[0];
    assert!(
        wait_until(Duration::from_secs(5), || connect(local(inbound)).is_err()),
        "the INBOUND listener stops accepting\n{}",
        l.proxy.logs()
    );
    for port in &l.ports[1..] {
        serves(*port);
    }
    l.still_echo("the drain");
}

/// `POST /drain_listeners?graceful&inboundonly`, as Envoy: the `INBOUND` listener keeps
/// accepting for the drain period (`--drain-time-s 1`), then stops; the other never does.
#[test]
fn graceful_drain_stops_listeners_after_the_drain_period() {
    let values = [("inbound", "INBOUND"), ("outbound", "OUTBOUND")];
    let Some(mut l) = listeners_draining_in("traffic_direction", &values, Some(1)) else {
        return;
    };
    let asked = std::time::Instant::now();
    let r = l.proxy.post("/drain_listeners?graceful&inboundonly");
    assert_eq!(r.status, 200);
    let inbound = l.ports[0];
    serves(inbound);
    let still_open = asked.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || connect(local(inbound)).is_err()),
        "the INBOUND listener stops after the drain period\n{}",
        l.proxy.logs()
    );
    let stopped = asked.elapsed();
    assert!(
        still_open < Duration::from_millis(900) && stopped >= Duration::from_millis(900),
        "served at {still_open:?}, stopped by {stopped:?}"
    );
    serves(l.ports[1]);
    l.still_echo("the graceful drain");
}

/// `additional_addresses`: the listener also listens on 127.0.0.2 (another port) with the
/// same chains: both addresses serve byte-exact, their connections count in the listener's
/// stats (named after its first address, as Envoy names them), and `/listeners` shows both.
#[test]
fn additional_addresses_serve_the_same_chains() {
    let backend = Backend::echo();
    let (port, more_port) = (free_port(), free_port());
    let extra = format!(
        "    additional_addresses:\n    - address:\n        socket_address: {{ address: 127.0.0.2, port_value: {more_port} }}\n"
    );
    let Some(proxy) = start_selected_with(&gateway(port, &backend, &extra), 2) else {
        return;
    };
    let more = std::net::SocketAddr::from(([127, 0, 0, 2], more_port));
    for (i, addr) in [local(port), more, local(port), more]
        .into_iter()
        .enumerate()
    {
        let s = connect_retry(addr, Duration::from_secs(5));
        echoed_exactly(i as u64, &exchange(s, 0xADD + i as u64, 20_000))
            .unwrap_or_else(|e| panic!("{addr}: {e}\n{}", proxy.logs()));
    }
    let total = proxy.wait_stat(
        &format!("listener.127.0.0.1_{port}.downstream_cx_total"),
        4,
        Duration::from_secs(5),
    );
    assert_eq!(total, 4, "both addresses count in the listener's stats");
    let listeners = proxy.get("/listeners").body;
    assert!(
        listeners.contains(&format!("gw::127.0.0.1:{port}"))
            && listeners.contains(&format!("gw::127.0.0.2:{more_port}")),
        "{listeners}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&proxy.get("/listeners?format=json").body).expect("JSON");
    let status = &json["listener_statuses"][0];
    assert_eq!(
        status["local_address"]["socket_address"]["port_value"],
        port
    );
    assert_eq!(
        status["additional_local_addresses"][0]["socket_address"]["port_value"], more_port,
        "{json}"
    );
}
