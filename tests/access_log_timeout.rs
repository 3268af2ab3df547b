//! Access logs (Envoy's default TCP format, `text_format_source` and `json_format`, to a
//! file) and the upstream connect timeout. Every test runs against Envoy too
//! (`SWITCHYARD_TEST_PROXY=envoy`): the log lines must have Envoy's shape and values, for
//! relayed connections and for the ones the proxy ends itself (a `connection_limit` refusal,
//! connect failures and timeouts, an idle timeout), and every closed connection's line must be
//! in the file once the proxy has exited.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn listener_with_logs(port: u16, cluster: &str, default_log: &str, json_log: &str) -> String {
    let json = r#"                json_format:
                  bytes_received: "%BYTES_RECEIVED%"
                  bytes_sent: "%BYTES_SENT%"
                  upstream_host: "%UPSTREAM_HOST%"
                  upstream_cluster: "%UPSTREAM_CLUSTER%"
                  response_flags: "%RESPONSE_FLAGS%"
"#;
    tcp_listener_logged(
        "logged",
        port,
        cluster,
        &[
            file_access_log(std::path::Path::new(default_log), None),
            file_access_log(std::path::Path::new(json_log), Some(json)),
        ],
    )
}

#[test]
fn file_access_logs_in_envoy_default_and_json_formats() {
    let backend = Backend::echo();
    let admin = free_port();
    let port = free_port();
    let dir = test_dir("access-log");
    let (default_log, json_log) = (dir.join("default.log"), dir.join("json.log"));
    let yaml = bootstrap(
        admin,
        &listener_with_logs(
            port,
            "logged",
            &default_log.display().to_string(),
            &json_log.display().to_string(),
        ),
        &static_cluster("logged", &[(backend.addr, 1)]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.write_all(&[7u8; 1000]).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown");
    let (back, end) = read_all(&mut s, 1 << 20);
    assert_eq!(back.len(), 1000);
    assert_eq!(end, End::Eof);
    drop(s);

    let lines = wait_log_lines(&default_log, 1);
    assert_eq!(
        lines.len(),
        1,
        "one line per connection: {lines:?}\n{}",
        proxy.logs()
    );
    let line = &lines[0];
    // [2026-11-25T17:03:02.047Z] "- - -" 0 - 1000 1000 0 - "-" "-" "-" "-" "127.0.0.1:9001"
    assert!(line.starts_with('['), "{line}");
    let (time, rest) = line[1..].split_once("] ").expect("time");
    assert_eq!(time.len(), 24, "time {time}");
    assert!(
        time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "time {time}"
    );
    let fields: Vec<&str> = rest.split(' ').collect();
    assert_eq!(&fields[..5], ["\"-", "-", "-\"", "0", "-"], "{line}");
    assert_eq!(fields[5], "1000", "bytes received: {line}");
    assert_eq!(fields[6], "1000", "bytes sent: {line}");
    assert!(fields[7].parse::<u64>().is_ok(), "duration: {line}");
    assert_eq!(
        fields.last().copied(),
        Some(format!("\"{}\"", backend.addr).as_str()),
        "upstream host: {line}"
    );

    let json = wait_log_lines(&json_log, 1);
    assert_eq!(json.len(), 1, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json[0]).expect("json line");
    assert_eq!(v["bytes_received"], 1000, "{v}");
    assert_eq!(v["bytes_sent"], 1000, "{v}");
    assert_eq!(v["upstream_host"], backend.addr.to_string(), "{v}");
    assert_eq!(v["upstream_cluster"], "logged", "{v}");
    assert_eq!(v["response_flags"], "-", "{v}");
}

/// A backend whose accept queue is full drops SYNs, so the connect never completes: the proxy
/// gives up after `connect_timeout`, counts it, and closes the client.
#[test]
fn connect_timeout_is_enforced_and_counted() {
    // Backlog 1, never accepted: fill the queue so further SYNs are dropped.
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&local(0).into()).expect("bind");
    socket.listen(0).expect("listen");
    let blackhole: TcpListener = socket.into();
    let target = blackhole.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..3 {
        match TcpStream::connect_timeout(&target, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    // Confirm the queue is full: a direct connect must now time out.
    if TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok() {
        let _ = require(false, "could not make a loopback listener drop SYNs");
        return;
    }

    let admin = free_port();
    let port = free_port();
    let dir = test_dir("connect-timeout");
    let log = dir.join("slow.log");
    let yaml = bootstrap(
        admin,
        &tcp_listener_logged("slow", port, "slow", &[file_access_log(&log, None)]),
        &static_cluster("slow", &[(target, 1)])
            .replace("connect_timeout: 1s", "connect_timeout: 0.5s"),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let t = Instant::now();
    let mut buf = [0u8; 8];
    let end = s.read(&mut buf);
    let waited = t.elapsed();
    assert!(matches!(end, Ok(0) | Err(_)), "client not closed: {end:?}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "closed after {waited:?}, connect_timeout is 0.5 s"
    );
    assert_eq!(
        proxy.wait_stat(
            "cluster.slow.upstream_cx_connect_timeout",
            1,
            Duration::from_secs(3)
        ),
        1,
        "{}",
        proxy.logs()
    );
    assert_eq!(proxy.stat("cluster.slow.upstream_cx_connect_fail"), 1);
    assert_eq!(
        proxy.stat("cluster.slow.upstream_cx_connect_attempts_exceeded"),
        1
    );
    // Envoy's tcp_proxy logs a connect timeout as a connect failure: `UF,URX`, not `UT`.
    let lines = wait_log_lines(&log, 1);
    let (line, duration_ms) = without_time(&lines[0]);
    assert_eq!(
        line,
        format!("\"- - -\" 0 UF,URX 0 0 - \"-\" \"-\" \"-\" \"-\" \"{target}\"")
    );
    assert!(duration_ms >= 300, "{duration_ms} ms");
    drop(fillers);
}

/// The fields the flag cases differ in, one line per connection (a `text_format_source`).
const FIELDS: &str = "%RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS% %UPSTREAM_HOST% \
%UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT%";

/// A TCP proxy listener `name` to `cluster`, with `filters` before its tcp_proxy and `extra`
/// tcp_proxy fields (YAML lines at the tcp_proxy's indentation), logging each connection to
/// `<dir>/<name>.log` in Envoy's default format and to `<dir>/<name>.fields.log` as
/// [`FIELDS`].
fn flag_listener(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    cluster: &str,
    filters: &str,
    extra: &str,
) -> String {
    let fields =
        format!("                text_format_source: {{inline_string: \"{FIELDS}\\n\"}}\n");
    let logs = [
        file_access_log(&dir.join(format!("{name}.log")), None),
        file_access_log(&dir.join(format!("{name}.fields.log")), Some(&fields)),
    ]
    .concat();
    tcp_listener_after(name, port, filters, name, cluster).replace(
        &format!("cluster: {cluster}\n"),
        &format!("cluster: {cluster}\n{extra}          access_log:\n{logs}"),
    )
}

/// A line of Envoy's default format with its start time and duration left out:
/// `"- - -" 0 UF,URX 0 0 - "-" "-" "-" "-" "127.0.0.1:9001"`, and the duration.
fn without_time(line: &str) -> (String, u64) {
    let (_, rest) = line
        .split_once("] ")
        .unwrap_or_else(|| panic!("no time: {line}"));
    let mut fields: Vec<&str> = rest.split(' ').collect();
    assert!(fields.len() > 8, "{line}");
    let duration = fields.remove(7);
    let duration = duration
        .parse()
        .unwrap_or_else(|_| panic!("duration: {line}"));
    (fields.join(" "), duration)
}

/// The connections a proxy ends itself are logged as Envoy 1.40 logs them (each line checked
/// against Envoy with the same file): a connection refused by `connection_limit` gets a line
/// (no flag, no upstream, no bytes; after the filter's `delay` when it has one) and counts in
/// `tcp.<prefix>.downstream_cx_total`; a connect failure is `UF,URX` once the attempts are
/// used up, with one attempt or two, and counts `upstream_cx_connect_attempts_exceeded`; an
/// idle timeout is `-`, with no termination details. Switchyard used to log no line for the
/// refusal, `UF` for one failed attempt and `SI` / `idle_timeout` for the idle timeout.
#[test]
fn connections_the_proxy_ends_are_logged_as_envoy_logs_them() {
    let backend = Backend::echo();
    let closed = local(closed_port());
    let dir = test_dir("access-log-flags");
    let admin = free_port();
    let ports = [
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    ];
    let listeners = [
        flag_listener(
            &dir,
            "limit",
            ports[0],
            "echo",
            &connection_limit_filter("limit", 1, None),
            "",
        ),
        flag_listener(
            &dir,
            "later",
            ports[1],
            "echo",
            &connection_limit_filter("later", 1, Some("0.3s")),
            "",
        ),
        flag_listener(&dir, "refused", ports[2], "closed", "", ""),
        flag_listener(
            &dir,
            "twice",
            ports[3],
            "closed",
            "",
            "          max_connect_attempts: 2\n",
        ),
        flag_listener(
            &dir,
            "idle",
            ports[4],
            "echo",
            "",
            "          idle_timeout: 0.5s\n",
        ),
    ]
    .concat();
    let clusters =
        static_cluster("echo", &[(backend.addr, 1)]) + &static_cluster("closed", &[(closed, 1)]);
    let Some(proxy) = start_selected(&bootstrap(admin, &listeners, &clusters)) else {
        return;
    };
    let msg = [5u8; 8];
    // connection_limit: one held, the next refused (at once, then after the delay).
    for (port, least) in [
        (ports[0], Duration::ZERO),
        (ports[1], Duration::from_millis(250)),
    ] {
        let mut held = connect_retry(local(port), Duration::from_secs(5));
        assert_eq!(ping(&mut held, &msg).expect("held connection"), msg);
        let mut refused = connect(local(port)).expect("connect");
        let took = closed_within(&mut refused, Duration::from_secs(5));
        assert!(
            took.is_some_and(|t| t >= least && t < least + Duration::from_secs(2)),
            "refused after {least:?}: {took:?}\n{}",
            proxy.logs()
        );
        drop(refused);
        drop(held);
    }
    // Connect failures, with one attempt and with two.
    for port in [ports[2], ports[3]] {
        let mut c = connect_retry(local(port), Duration::from_secs(5));
        assert!(closed_within(&mut c, Duration::from_secs(5)).is_some());
    }
    // The idle timeout.
    let mut idle = connect_retry(local(ports[4]), Duration::from_secs(5));
    assert_eq!(ping(&mut idle, &msg).expect("idle connection"), msg);
    let took = closed_within(&mut idle, Duration::from_secs(5));
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(300)),
        "idle timeout of 0.5 s: closed after {took:?}"
    );

    let echo = backend.addr.to_string();
    let closed_host = closed.to_string();
    let relayed = format!("- - {echo} echo 8 8");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let expect: [(&str, Vec<String>); 5] = [
        ("limit", sorted(vec!["- - - - 0 0".into(), relayed.clone()])),
        ("later", sorted(vec!["- - - - 0 0".into(), relayed.clone()])),
        (
            "refused",
            vec![format!("UF,URX - {closed_host} closed 0 0")],
        ),
        ("twice", vec![format!("UF,URX - {closed_host} closed 0 0")]),
        ("idle", vec![relayed.clone()]),
    ];
    for (name, want) in &expect {
        let got = sorted(wait_log_lines(
            &dir.join(format!("{name}.fields.log")),
            want.len(),
        ));
        assert_eq!(&got, want, "{name}\n{}", proxy.logs());
    }
    // The same in Envoy's default format.
    let shape = |flags: &str, bytes: &str, host: &str| {
        format!("\"- - -\" 0 {flags} {bytes} - \"-\" \"-\" \"-\" \"-\" \"{host}\"")
    };
    let refused_line = |name: &str| {
        let lines = wait_log_lines(&dir.join(format!("{name}.log")), 2);
        let shapes: Vec<(String, u64)> = lines.iter().map(|l| without_time(l)).collect();
        shapes
            .into_iter()
            .find(|(s, _)| s.ends_with("\"-\""))
            .unwrap_or_else(|| panic!("{name}: no refused line in {lines:?}"))
    };
    let (line, _) = refused_line("limit");
    assert_eq!(line, shape("-", "0 0", "-"));
    let (line, duration_ms) = refused_line("later");
    assert_eq!(line, shape("-", "0 0", "-"));
    assert!(
        (250..2000).contains(&duration_ms),
        "held for the filter's 0.3 s delay: {duration_ms} ms"
    );
    for name in ["refused", "twice"] {
        let lines = wait_log_lines(&dir.join(format!("{name}.log")), 1);
        assert_eq!(
            without_time(&lines[0]).0,
            shape("UF,URX", "0 0", &closed_host),
            "{name}"
        );
    }
    let lines = wait_log_lines(&dir.join("idle.log"), 1);
    let (line, duration_ms) = without_time(&lines[0]);
    assert_eq!(line, shape("-", "8 8", &echo));
    assert!(duration_ms >= 400, "{duration_ms} ms");

    // Envoy's stats for the same connections.
    let stats = proxy.stats();
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert_eq!(stat("connection_limit.limit.limited_connections"), 1);
    assert_eq!(
        stat("tcp.limit.downstream_cx_total"),
        2,
        "the refused connection counts in the tcp_proxy too, as in Envoy"
    );
    assert_eq!(stat("tcp.limit.downstream_cx_active"), 0);
    assert_eq!(
        stat("cluster.closed.upstream_cx_connect_attempts_exceeded"),
        2,
        "with one attempt and with two"
    );
    assert_eq!(stat("cluster.closed.upstream_cx_connect_fail"), 3);
    assert_eq!(stat("tcp.idle.idle_timeout"), 1);
}

/// Connections closed just before SIGTERM: every one's line is in the file once the proxy has
/// exited (Switchyard once lost the lines of connections it had not finished recording when
/// the stop came; Envoy writes them all).
#[test]
fn every_connection_closed_before_sigterm_has_its_line_after_exit() {
    const CONNECTIONS: usize = 20;
    let backend = Backend::echo();
    let dir = test_dir("access-log-sigterm");
    let log = dir.join("stop.log");
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &tcp_listener_logged("stop", port, "stop", &[file_access_log(&log, None)]),
        &static_cluster("stop", &[(backend.addr, 1)]),
    );
    let Some(mut proxy) = start_selected(&yaml) else {
        return;
    };
    let addr = local(port);
    let mut first = connect_retry(addr, Duration::from_secs(5));
    assert_eq!(ping(&mut first, b"x").expect("ping"), b"x");
    drop(first);
    // Each relayed, then closed by the client; SIGTERM right after the last close.
    let clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            let mut c = connect(addr).expect("connect");
            let msg = [i as u8; 16];
            assert_eq!(ping(&mut c, &msg).expect("ping"), msg);
            c
        })
        .collect();
    drop(clients);
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit after SIGTERM: {status:?}\n{}",
        proxy.logs()
    );
    let lines = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines.len(),
        1 + CONNECTIONS,
        "one line per connection, written before exit: {lines:#?}\n{}",
        proxy.logs()
    );
    assert!(lines.iter().all(|l| l.starts_with('[')), "{lines:#?}");
}

/// A listener's own `access_log` logs every connection it accepted when it closes: one a
/// filter chain relayed (bytes and upstream host, as the tcp_proxy logs it) and one no chain
/// matched (`NR`, nothing else), as Envoy writes them.
#[test]
fn a_listeners_own_access_log_has_a_line_per_connection_chain_or_not() {
    let backend = Backend::echo();
    let dir = test_dir("listener-access-log");
    let (relayed_log, refused_log) = (dir.join("relayed.log"), dir.join("refused.log"));
    let (relayed_port, refused_port) = (free_port(), free_port());
    let with_log = |item: String, path: &std::path::Path| {
        with_fields(&item, &listener_access_log(&file_access_log(path, None)))
    };
    let refused = tcp_listener("refused", refused_port, "refused", "echo").replacen(
        "    - filters:\n",
        "    - filter_chain_match:\n        source_prefix_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }]\n      filters:\n",
        1,
    );
    let listeners = with_log(
        tcp_listener("relayed", relayed_port, "relayed", "echo"),
        &relayed_log,
    ) + &with_log(refused, &refused_log);
    let yaml = bootstrap(
        free_port(),
        &listeners,
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let Some(mut proxy) = start_selected(&yaml) else {
        return;
    };
    let mut c = connect_retry(local(relayed_port), Duration::from_secs(5));
    assert_eq!(ping(&mut c, b"hello").expect("ping"), b"hello");
    drop(c);
    let mut refused = connect_retry(local(refused_port), Duration::from_secs(5));
    let mut buf = [0u8; 16];
    let _ = refused.read(&mut buf);
    drop(refused);
    let [relayed, refused] = stop_and_read(&mut proxy, [&relayed_log, &refused_log]);
    let (relayed_line, _) = without_time(relayed.lines().next().unwrap_or(""));
    let (refused_line, _) = without_time(refused.lines().next().unwrap_or(""));
    assert_eq!(relayed.lines().count(), 1, "{relayed}");
    assert_eq!(
        relayed_line,
        format!(
            "\"- - -\" 0 - 5 5 - \"-\" \"-\" \"-\" \"-\" \"{}\"",
            backend.addr
        ),
        "{relayed}"
    );
    assert_eq!(refused.lines().count(), 1, "{refused}");
    assert_eq!(
        refused_line, "\"- - -\" 0 NR 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\"",
        "{refused}"
    );
}

/// An access log's `response_flag_filter`: with `NR`, a listener's own log has the line of
/// the connection no chain matched and none for the relayed one; with no flags, a
/// tcp_proxy's log has only the connection that failed (`UF,URX`), as Envoy filters them.
#[test]
fn response_flag_filters_pick_the_lines() {
    let backend = Backend::echo();
    let dir = test_dir("access-log-filter");
    let (nr_log, any_log) = (dir.join("nr.log"), dir.join("any.log"));
    let (port, dead_port) = (free_port(), free_port());
    // Two chains: 127.0.0.1 relays to the echo; everything else (127.0.0.2) has no chain.
    let listener = tcp_listener("filtered", port, "filtered", "echo").replacen(
        "    - filters:\n",
        "    - filter_chain_match:\n        source_prefix_ranges: [{ address_prefix: 127.0.0.1, prefix_len: 32 }]\n      filters:\n",
        1,
    );
    let listener = with_fields(
        &listener,
        &listener_access_log(&flagged_file_access_log(&nr_log, "NR")),
    );
    // A tcp_proxy to a cluster with nothing listening, logging any flagged connection.
    let dead = tcp_listener("dead", dead_port, "dead", "dead").replace(
        "cluster: dead\n",
        &format!(
            "cluster: dead\n          access_log:\n{}",
            flagged_file_access_log(&any_log, "")
        ),
    );
    let yaml = bootstrap(
        free_port(),
        &(listener + &dead),
        &(static_cluster("echo", &[(backend.addr, 1)])
            + &static_cluster("dead", &[(local(free_port()), 1)])),
    );
    let Some(mut proxy) = start_selected(&yaml) else {
        return;
    };
    let mut c = connect_retry(local(port), Duration::from_secs(5));
    assert_eq!(ping(&mut c, b"hello").expect("ping"), b"hello");
    drop(c);
    let from_other = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&from_other.into()).expect("bind 127.0.0.2");
    s.connect(&local(port).into())
        .expect("connect from 127.0.0.2");
    let mut refused: TcpStream = s.into();
    let _ = refused.read(&mut [0u8; 16]);
    drop(refused);
    for _ in 0..2 {
        let mut d = connect_retry(local(dead_port), Duration::from_secs(5));
        let _ = d.read(&mut [0u8; 16]);
    }
    let mut ok = connect_retry(local(dead_port), Duration::from_secs(5));
    let _ = ok.write_all(b"x");
    drop(ok);
    let [nr, any] = stop_and_read(&mut proxy, [&nr_log, &any_log]);
    assert_eq!(nr.lines().count(), 1, "only the NR connection: {nr}");
    assert!(nr.contains("\" 0 NR 0 0 "), "{nr}");
    assert_eq!(any.lines().count(), 3, "every failed connection: {any}");
    assert!(any.lines().all(|l| l.contains(" 0 UF,URX ")), "{any}");
}

/// Lets the last closes settle, stops the proxy (Envoy flushes its logs on exit) and reads
/// the two log files.
fn stop_and_read(proxy: &mut Proxy, logs: [&std::path::Path; 2]) -> [String; 2] {
    std::thread::sleep(Duration::from_millis(300));
    proxy.sigterm();
    assert!(
        proxy.wait_exit(Duration::from_secs(20)).is_some(),
        "{}",
        proxy.logs()
    );
    logs.map(|p| std::fs::read_to_string(p).unwrap_or_default())
}
