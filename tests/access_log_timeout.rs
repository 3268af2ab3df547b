//! Access logs (Envoy's default TCP format and `json_format`, to a file) and the upstream
//! connect timeout. Both run against Envoy too (`SWITCHYARD_TEST_PROXY=envoy`): the log lines
//! must have Envoy's shape and values.

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

fn read_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(10), || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= n
    });
    lines
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

    let lines = read_lines(&default_log, 1);
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

    let json = read_lines(&json_log, 1);
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
    let yaml = bootstrap(
        admin,
        &tcp_listener("slow", port, "slow", "slow"),
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
    drop(fillers);
}
