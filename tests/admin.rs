//! The admin API, Envoy-compatible: /ready, /stats (text and JSON) with Envoy's stat names and
//! exact values, /stats/prometheus, /clusters, /listeners, /config_dump, and /quitquitquit
//! (GET refused with 405, POST exits).
//!
//! Run against real Envoy with `SWITCHYARD_TEST_PROXY=envoy`.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const PREFIX: &str = "admin_l4";
const CLUSTER: &str = "admin_be";

#[test]
fn admin_endpoints_report_connections_and_bytes() {
    let be = Backend::echo();
    let admin = free_port();
    let port = free_port();
    let yaml = bootstrap(
        admin,
        &tcp_listener("admin_listener", port, PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(be.addr, 1)]),
    );
    let Some(mut proxy) = start_selected(&yaml) else {
        return;
    };

    // /ready
    let r = proxy.get("/ready");
    assert_eq!(r.status, 200, "/ready");
    assert_eq!(r.body.trim(), "LIVE", "/ready body");

    // N connections, each sending i+1000 bytes through the echo backend.
    const N: u64 = 10;
    let addr = local(port);
    let mut total: u64 = 0;
    for i in 0..N {
        let s = connect_retry(addr, Duration::from_secs(5));
        let n = 1000 + i;
        let x = exchange(s, i, n);
        assert_eq!(x.received, n, "connection {i}");
        assert_eq!(x.received_sha, x.sent_sha, "connection {i}");
        total += n;
    }
    let _ = be.wait_reports(N as usize, Duration::from_secs(5));

    let ds = |s: &str| format!("tcp.{PREFIX}.{s}");
    let us = |s: &str| format!("cluster.{CLUSTER}.{s}");
    let t = Duration::from_secs(5);
    // Counters can trail the close by a moment: poll for the final values.
    assert_eq!(proxy.wait_stat(&ds("downstream_cx_total"), N, t), N);
    assert_eq!(proxy.wait_stat(&us("upstream_cx_total"), N, t), N);
    assert_eq!(
        proxy.wait_stat(&ds("downstream_cx_rx_bytes_total"), total, t),
        total
    );
    assert_eq!(
        proxy.wait_stat(&ds("downstream_cx_tx_bytes_total"), total, t),
        total
    );
    assert_eq!(
        proxy.wait_stat(&us("upstream_cx_rx_bytes_total"), total, t),
        total
    );
    assert_eq!(
        proxy.wait_stat(&us("upstream_cx_tx_bytes_total"), total, t),
        total
    );
    assert_eq!(proxy.wait_stat(&us("upstream_cx_active"), 0, t), 0);
    let stats = proxy.stats();
    assert_eq!(stats.get(&us("upstream_cx_connect_fail")).copied(), Some(0));
    assert_eq!(stats.get(&us("membership_total")).copied(), Some(1));
    assert_eq!(stats.get(&us("membership_healthy")).copied(), Some(1));
    assert_eq!(
        stats
            .get(&format!("listener.127.0.0.1_{port}.downstream_cx_total"))
            .copied(),
        Some(N),
        "listener.<ip>_<port>.downstream_cx_total"
    );

    // ?format=json parses and carries the same counter.
    let r = proxy.get("/stats?format=json");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("/stats?format=json is not JSON: {e}"));
    let list = v["stats"].as_array().expect("stats array");
    let found = list
        .iter()
        .find(|s| s["name"] == serde_json::json!(ds("downstream_cx_total")))
        .expect("downstream_cx_total in JSON stats");
    assert_eq!(found["value"].as_u64(), Some(N));

    // Prometheus: prefixes become labels.
    let r = proxy.get("/stats/prometheus");
    assert_eq!(r.status, 200);
    let want = format!("envoy_tcp_downstream_cx_total{{envoy_tcp_prefix=\"{PREFIX}\"}} {N}");
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "prometheus output lacks {want:?}"
    );
    let want = format!("envoy_cluster_upstream_cx_total{{envoy_cluster_name=\"{CLUSTER}\"}} {N}");
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "prometheus output lacks {want:?}"
    );

    // /clusters: name::host:port::cx_total::N
    let r = proxy.get("/clusters");
    assert_eq!(r.status, 200);
    let want = format!("{CLUSTER}::{}::cx_total::{N}", be.addr);
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "/clusters lacks {want:?}:\n{}",
        r.body
    );
    for want in [
        format!("{CLUSTER}::default_priority::max_connections::1024"),
        format!("{CLUSTER}::default_priority::max_retries::3"),
        format!("{CLUSTER}::high_priority::max_pending_requests::1024"),
    ] {
        assert!(
            r.body.lines().any(|l| l.trim() == want),
            "/clusters lacks the circuit breaker line {want:?}:\n{}",
            r.body
        );
    }
    let r = proxy.get("/clusters?format=json");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("/clusters?format=json");
    let cluster = v["cluster_statuses"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == CLUSTER))
        .unwrap_or_else(|| panic!("no {CLUSTER} in /clusters?format=json: {v}"));
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][0]["max_connections"], 1024,
        "{cluster}"
    );
    assert_eq!(
        cluster["circuit_breakers"]["thresholds"][1]["priority"], "HIGH",
        "{cluster}"
    );

    // /listeners: name::address
    let r = proxy.get("/listeners");
    assert_eq!(r.status, 200);
    let want = format!("admin_listener::127.0.0.1:{port}");
    assert!(
        r.body.lines().any(|l| l.trim() == want),
        "/listeners lacks {want:?}:\n{}",
        r.body
    );

    // /config_dump is JSON and names our cluster and listener.
    let r = proxy.get("/config_dump");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("/config_dump is JSON");
    assert!(v["configs"].is_array(), "config_dump.configs");
    assert!(r.body.contains(CLUSTER) && r.body.contains("admin_listener"));

    // Mutations are POST only.
    let r = proxy.get("/quitquitquit");
    assert_eq!(r.status, 405, "GET /quitquitquit must be refused");
    assert!(
        proxy.try_exit().is_none(),
        "GET /quitquitquit must not stop the proxy"
    );
    assert_eq!(proxy.get("/ready").status, 200);

    // POST /quitquitquit exits the process.
    let r = proxy.post("/quitquitquit");
    assert_eq!(r.status, 200, "POST /quitquitquit");
    let st = proxy.wait_exit(Duration::from_secs(10));
    let st = st.unwrap_or_else(|| panic!("did not exit after POST /quitquitquit"));
    assert!(st.success(), "exit status {st:?}\n{}", proxy.logs());
}

/// A proxy with one listener and one cluster, for the admin-only tests below.
/// Returns it with its listener's port.
fn start_admin_proxy() -> Option<(Proxy, u16)> {
    let port = free_port();
    let yaml = bootstrap(
        free_port(),
        &tcp_listener("admin_listener", port, PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(local(closed_port()), 1)]),
    );
    start_selected(&yaml).map(|p| (p, port))
}

/// `?filter=` is a regex: one that is not valid UTF-8 after percent-decoding, or does not
/// compile, is answered 400 with the reason, by `/stats` and `/stats/prometheus` alike (as
/// Envoy does: `Invalid re2 regex: invalid UTF-8`), never 200 with an empty body.
#[test]
fn stats_filter_that_is_not_a_regex_is_refused() {
    let Some((proxy, _)) = start_admin_proxy() else {
        return;
    };
    let cases = [
        ("/stats?filter=%ff%00", "invalid UTF-8"),
        ("/stats?filter=%ff", "invalid UTF-8"),
        ("/stats/prometheus?filter=%ff", "invalid UTF-8"),
        ("/stats?filter=(", "regex"),
        ("/stats/prometheus?filter=(", "regex"),
        ("/stats?format=json&filter=(", "regex"),
    ];
    let mut failures = Vec::new();
    for (path, want) in cases {
        let r = proxy.get(path);
        if r.status != 400 || !r.body.contains(want) {
            failures.push(format!("{path}: {} {:?}", r.status, r.body));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // A good filter still works.
    let r = proxy.get("/stats?filter=%5Eserver%5C.live%24");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.trim(), "server.live: 1");
}

/// Switchyard goes further than Envoy: a query parameter of an endpoint that takes
/// parameters must decode (valid `%XX` escapes, UTF-8, no NUL), or the request is answered
/// 400 naming the parameter and what was wrong, and changes nothing. Endpoints without
/// parameters (`/ready`) ignore their query, as Envoy's do.
#[test]
fn admin_query_that_does_not_decode_is_refused() {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(
            kind,
            "Envoy answers these 200 (it checks only regexes); Switchyard is stricter",
        );
        return;
    }
    let Some((mut proxy, port)) = start_admin_proxy() else {
        return;
    };
    let cases = [
        ("GET", "/stats?filter=%00", "filter", "NUL"),
        ("GET", "/stats?filter=a%00b", "filter", "NUL"),
        ("GET", "/stats?filter=%zz", "filter", "%zz"),
        ("GET", "/stats?filter=ab%4", "filter", "%4"),
        ("GET", "/stats?usedonly=%ff", "usedonly", "invalid UTF-8"),
        ("GET", "/stats?%ff=1", "invalid UTF-8", "invalid UTF-8"),
        (
            "GET",
            "/stats/prometheus?filter=%C3",
            "filter",
            "invalid UTF-8",
        ),
        ("GET", "/clusters?format=%ff", "format", "invalid UTF-8"),
        ("GET", "/listeners?format=%zzjson", "format", "%zz"),
        (
            "GET",
            "/config_dump?resource=%ff",
            "resource",
            "invalid UTF-8",
        ),
        ("POST", "/drain_listeners?graceful=%00", "graceful", "NUL"),
    ];
    let mut failures = Vec::new();
    for (method, path, param, what) in cases {
        let r = http(proxy.admin, method, path).expect("admin answers");
        if r.status != 400 || !r.body.contains(param) || !r.body.contains(what) {
            failures.push(format!("{method} {path}: {} {:?}", r.status, r.body));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    // The refused drain changed nothing: still LIVE, listeners still there.
    let r = proxy.get("/ready?probe=%ff");
    assert_eq!((r.status, r.body.trim()), (200, "LIVE"));
    connect(local(port)).expect("the listener still accepts after the refused drain");
    // Good escapes still decode: UTF-8 and a space.
    let r = proxy.get("/stats?filter=%C3%A9|%5Eserver%2Elive%24");
    assert_eq!((r.status, r.body.trim()), (200, "server.live: 1"));
    assert!(proxy.try_exit().is_none());
}

/// Holds one admin connection with a request that never ends (the head's blank line is never
/// sent) until the server drops it or `stop` is set, then reconnects at once: a local client
/// that keeps as many admin connections busy as it can.
fn hold_half_sent_requests(admin: SocketAddr, stop: &AtomicBool, held: &AtomicUsize) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n").is_err() {
            continue;
        }
        held.fetch_add(1, Ordering::Relaxed);
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A kubelet probe is never starved by other admin clients: while 40 local connections hold
/// half-sent requests (reconnecting whenever the admin drops one), 25 of 25 `/ready` probes,
/// spread over more than the admin's request timeout, answer 200 `LIVE`, each within 2 s.
/// Envoy answers all of them too.
#[test]
fn ready_answers_while_admin_connections_are_held() {
    let Some((proxy, _)) = start_admin_proxy() else {
        return;
    };
    const ABUSERS: usize = 40;
    const PROBES: usize = 25;
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..ABUSERS)
        .map(|_| {
            let (stop, held, admin) = (stop.clone(), held.clone(), proxy.admin);
            thread::spawn(move || hold_half_sent_requests(admin, &stop, &held))
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || held.load(Ordering::Relaxed)
            >= ABUSERS),
        "the abusing clients did not connect"
    );
    thread::sleep(Duration::from_millis(300));
    let mut failures = Vec::new();
    for i in 0..PROBES {
        let t0 = Instant::now();
        let r = http(proxy.admin, "GET", "/ready");
        let took = t0.elapsed();
        match r {
            Ok(r)
                if r.status == 200 && r.body.trim() == "LIVE" && took < Duration::from_secs(2) => {}
            Ok(r) => failures.push(format!(
                "probe {i}: {} {:?} after {took:?}",
                r.status, r.body
            )),
            Err(e) => failures.push(format!("probe {i}: {e} after {took:?}")),
        }
        thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    assert!(
        failures.is_empty(),
        "{} of {PROBES} /ready probes failed while {ABUSERS} admin connections were held:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `--readiness-port`: readiness alone on its own port, Envoy's `/ready` and Istio's
/// `/healthz/ready` (503 with the state once the health check is failed), nothing else; it
/// answers while the admin's connections are all held. Switchyard's flag (Envoy has none).
#[test]
fn readiness_port_serves_readiness_alone() {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "--readiness-port is Switchyard's flag");
        return;
    }
    if !require(proxy_available(kind), kind.name()) {
        return;
    }
    let ready_port = free_port();
    let yaml = bootstrap(
        free_port(),
        &tcp_listener("admin_listener", free_port(), PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(local(closed_port()), 1)]),
    );
    let opts = ProxyOpts {
        switchyard_args: vec!["--readiness-port".into(), ready_port.to_string()],
        ..Default::default()
    };
    let proxy = Proxy::start_with(kind, &yaml, opts);
    let probe = local(ready_port);
    let r = http(probe, "GET", "/healthz/ready").expect("readiness port answers");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let r = http(probe, "GET", "/ready").expect("readiness port answers");
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    for (method, path) in [("GET", "/stats"), ("POST", "/quitquitquit")] {
        let r = http(probe, method, path).expect("readiness port answers");
        assert!(
            matches!(r.status, 404 | 405),
            "{method} {path}: {}",
            r.status
        );
    }
    // Held admin connections do not reach the readiness port either.
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (stop, held, admin) = (stop.clone(), held.clone(), proxy.admin);
            thread::spawn(move || hold_half_sent_requests(admin, &stop, &held))
        })
        .collect();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(http(probe, "GET", "/healthz/ready").map(|r| r.status).ok());
    }
    assert_eq!(proxy.post("/healthcheck/fail").status, 200);
    let r = http(probe, "GET", "/healthz/ready").expect("readiness port answers");
    assert_eq!((r.status, r.body.trim()), (503, "DRAINING"));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    assert_eq!(statuses, vec![Some(200); 5]);
}

/// With no `admin` block there is no admin: the proxy listens on its listener and nothing
/// else (Envoy: "No admin address given, so no admin HTTP server started"). Switchyard used
/// to open one on 127.0.0.1:15000, `POST /quitquitquit` included. For Switchyard also: with
/// `--readiness-port` and no admin, readiness is served alone on that port.
#[test]
fn no_admin_block_opens_no_admin_listener() {
    let kind = selected_proxy();
    if !require(proxy_available(kind), kind.name()) {
        return;
    }
    let be = Backend::echo();
    let port = free_port();
    let yaml = bootstrap(
        0,
        &tcp_listener("no_admin", port, PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(be.addr, 1)]),
    );
    let yaml = yaml[yaml.find("static_resources:").expect("static_resources")..].to_string();
    assert!(!yaml.contains("admin:"), "{yaml}");
    let proxy = Proxy::spawn(kind, &yaml, ProxyOpts::default());
    let listener = local(port);
    proxy.wait_listening(listener, READY_TIMEOUT);
    let mut c = connect_retry(listener, Duration::from_secs(5));
    assert_eq!(ping(&mut c, b"through").expect("relayed"), b"through");
    assert_eq!(
        proxy.listening_tcp(),
        std::collections::BTreeSet::from([listener]),
        "listens on its listener and on nothing else (no 127.0.0.1:15000)\n{}",
        proxy.logs()
    );
    drop(proxy);

    if kind != ProxyKind::Switchyard {
        return;
    }
    let ready_port = free_port();
    let opts = ProxyOpts {
        switchyard_args: vec!["--readiness-port".into(), ready_port.to_string()],
        ..Default::default()
    };
    let proxy = Proxy::spawn(kind, &yaml, opts);
    proxy.wait_listening(listener, READY_TIMEOUT);
    let probe = local(ready_port);
    let mut ready = None;
    wait_until(Duration::from_secs(10), || {
        ready = http(probe, "GET", "/ready")
            .ok()
            .map(|r| (r.status, r.body));
        ready.is_some()
    });
    assert_eq!(ready, Some((200, "LIVE\n".to_string())), "{}", proxy.logs());
    let r = http(probe, "POST", "/quitquitquit").expect("readiness port answers");
    assert!(matches!(r.status, 404 | 405), "{}", r.status);
    let mut listening = proxy.listening_tcp();
    listening.retain(|a| a.port() != ready_port);
    assert_eq!(listening, std::collections::BTreeSet::from([listener]));
}

/// `admin.access_log_path` (deprecated) and `admin.access_log` (a file logger): one line per
/// admin request in Envoy's default HTTP format, in both files: method, path and query,
/// protocol, status, bytes sent (the body's length), and the User-Agent, X-Request-Id and
/// Host headers; an unknown path's 404 too. Read after a SIGTERM exit (Envoy flushes its
/// log files at exit).
#[test]
fn admin_access_log_writes_a_line_per_request() {
    let be = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let dir = test_dir("admin-access-log");
    let (by_path, by_list) = (dir.join("by_path.log"), dir.join("by_list.log"));
    let yaml = bootstrap(
        admin,
        &tcp_listener("admin_log", port, PREFIX, CLUSTER),
        &static_cluster(CLUSTER, &[(be.addr, 1)]),
    )
    .replacen(
        "admin:\n",
        &format!(
            "admin:\n  access_log_path: {}\n  access_log:\n  - name: envoy.access_loggers.file\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n      path: {}\n",
            by_path.display(),
            by_list.display()
        ),
        1,
    );
    let Some(mut proxy) = start_selected(&yaml) else {
        return;
    };
    let request = |target: &str| {
        let mut s = TcpStream::connect(local(admin)).expect("admin");
        write!(
            s,
            "GET {target} HTTP/1.1\r\nHost: admin.test\r\nUser-Agent: sy-test/1\r\n\
             X-Request-Id: req-{target}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        let (head, body) = out.split_once("\r\n\r\n").expect("a response");
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body.as_bytes()).expect("chunked body")
        } else {
            body.as_bytes().to_vec()
        };
        (head.to_string(), body.len())
    };
    let (head, stats_len) = request("/stats?filter=server.live");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = request("/no_such_endpoint");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    proxy.sigterm();
    assert!(proxy.wait_exit(Duration::from_secs(20)).is_some());
    for file in [&by_path, &by_list] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let line = |target: &str| {
            text.lines()
                .find(|l| l.contains(&format!("\"GET {target} HTTP/1.1\"")))
                .unwrap_or_else(|| panic!("{}: no line for {target}:\n{text}", file.display()))
                .to_string()
        };
        let stats = line("/stats?filter=server.live");
        assert!(stats.starts_with("[20"), "{stats}");
        let tail = format!("\" 200 - 0 {stats_len} ");
        assert!(stats.contains(&tail), "{stats} lacks {tail:?}");
        // X-Forwarded-For is left out of the comparison: Envoy's admin writes an address of
        // its own there (192.0.2.2), Switchyard the header as sent ("-" here).
        let headers = "\" \"sy-test/1\" \"req-/stats?filter=server.live\" \"admin.test\" \"-\"";
        assert!(
            stats.ends_with(headers),
            "{stats} does not end with {headers}"
        );
        let missing = line("/no_such_endpoint");
        assert!(missing.contains("\" 404 - 0 "), "{missing}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
