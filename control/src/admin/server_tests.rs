//! The admin server over real sockets: HTTP/1.1 as curl, Prometheus and probes speak it.

use super::fixture::{fixture, Fixture};
use super::{spawn, AdminAction, AdminListener};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::TryRecvError;
use std::time::Duration;

fn start() -> (Fixture, SocketAddr) {
    let f = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    spawn(Some(AdminListener::Tcp(listener)), None, f.state.clone()).unwrap();
    (f, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (head, then `Content-Length` bytes of body unless `head_only`).
fn read_reply(s: &mut TcpStream, pending: &mut Vec<u8>, head_only: bool) -> Reply {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before a response: {pending:?}");
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(pending[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: String::new(),
    };
    let len: usize = reply.header("content-length").unwrap().parse().unwrap();
    let len = if head_only { 0 } else { len };
    while pending.len() < head_end + len {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed in a body");
        pending.extend_from_slice(&chunk[..n]);
    }
    reply.body = String::from_utf8(pending[head_end..head_end + len].to_vec()).unwrap();
    pending.drain(..head_end + len);
    reply
}

/// Sends `raw` on a new connection and reads one response.
fn exchange(addr: SocketAddr, raw: &str) -> Reply {
    let mut s = connect(addr);
    s.write_all(raw.as_bytes()).unwrap();
    read_reply(&mut s, &mut Vec::new(), raw.starts_with("HEAD "))
}

fn get(addr: SocketAddr, target: &str) -> Reply {
    exchange(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, target: &str) -> Reply {
    exchange(
        addr,
        &format!("POST {target} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    )
}

fn assert_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap();
    assert_eq!(n, 0, "expected the server to close, got {rest:?}");
}

#[test]
fn ready_and_healthcheck() {
    let (f, addr) = start();
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    assert_eq!(r.header("connection"), Some("close"));

    let r = post(addr, "/healthcheck/fail");
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    assert_eq!(f.actions.try_recv(), Ok(AdminAction::HealthcheckFail));
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.body.as_str()), (503, "DRAINING\n"));
    assert!(get(addr, "/stats?filter=server.live")
        .body
        .contains("server.live: 0\n"));

    assert_eq!(post(addr, "/healthcheck/ok").status, 200);
    assert_eq!(f.actions.try_recv(), Ok(AdminAction::HealthcheckOk));
    assert_eq!(get(addr, "/ready").status, 200);

    f.state.server_state.store(
        super::STATE_INITIALIZING,
        std::sync::atomic::Ordering::Relaxed,
    );
    let r = get(addr, "/ready");
    assert_eq!((r.status, r.body.as_str()), (503, "INITIALIZING\n"));
}

#[test]
fn mutations_are_post_only() {
    let (f, addr) = start();
    for path in [
        "/quitquitquit",
        "/drain_listeners",
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/reset_counters",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.body, "Method GET not allowed, POST required.\n");
        assert_eq!(r.header("allow"), Some("POST"));
    }
    assert_eq!(f.actions.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(
        get(addr, "/ready").status,
        200,
        "a GET on /healthcheck/fail changed nothing"
    );

    let r = post(addr, "/quitquitquit");
    assert_eq!((r.status, r.body.as_str()), (200, "OK\n"));
    assert_eq!(f.actions.try_recv(), Ok(AdminAction::Quit));

    post(addr, "/drain_listeners?graceful&inboundonly");
    assert_eq!(
        f.actions.try_recv(),
        Ok(AdminAction::DrainListeners {
            graceful: true,
            inbound_only: true
        })
    );
    post(addr, "/drain_listeners");
    assert_eq!(
        f.actions.try_recv(),
        Ok(AdminAction::DrainListeners {
            graceful: false,
            inbound_only: false
        })
    );

    assert!(get(addr, "/stats")
        .body
        .contains("cluster.echo.upstream_cx_total: 5\n"));
    assert_eq!(post(addr, "/reset_counters").status, 200);
    assert_eq!(f.actions.try_recv(), Ok(AdminAction::ResetCounters));
    assert!(get(addr, "/stats")
        .body
        .contains("cluster.echo.upstream_cx_total: 0\n"));

    let r = exchange(addr, "DELETE /stats HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 405);
}

#[test]
fn unknown_path_is_404_with_help() {
    let (_f, addr) = start();
    let r = get(addr, "/nope");
    assert_eq!(r.status, 404);
    assert!(
        r.body.starts_with("invalid path. admin commands are:\n"),
        "{}",
        r.body
    );
    let help = get(addr, "/help");
    assert_eq!(help.status, 200);
    assert!(help.body.contains("  /quitquitquit: exit the server\n"));
    assert!(help
        .body
        .contains("      filter: Regular expression (Google re2) for filtering stats\n"));
    assert_eq!(get(addr, "/").body, help.body);
    assert_eq!(get(addr, "/config_dump?resource=nope").status, 404);
}

#[test]
fn reads_in_every_format() {
    let (_f, addr) = start();
    let r = get(
        addr,
        "/stats?format=json&filter=%5Etcp%5C.l4%5C.downstream_cx_total%24",
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"stats": [{"name": "tcp.l4.downstream_cx_total", "value": 3}]})
    );

    let r = get(addr, "/stats?filter=(");
    assert_eq!(r.status, 400);
    assert!(
        r.body.starts_with("Invalid re2 regex: ") && r.body.contains("unclosed group"),
        "the reason is given: {}",
        r.body
    );
    let r = get(addr, "/stats?filter=%ff%00");
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("'filter'") && r.body.contains("invalid UTF-8"),
        "{}",
        r.body
    );

    let r = get(addr, "/stats/prometheus");
    assert_eq!(r.status, 200);
    assert!(r
        .body
        .contains("# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"));
    assert!(r
        .body
        .contains("envoy_tcp_downstream_cx_total{envoy_tcp_prefix=\"l4\"} 3\n"));
    assert!(r.body.contains(
        "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_10000\"} 3\n"
    ));

    let r = get(addr, "/clusters");
    assert!(r.body.contains("echo::127.0.0.1:9001::cx_total::3\n"));
    let r = get(addr, "/clusters?format=json");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["cluster_statuses"][0]["host_statuses"][1]["weight"], 3);
    assert_eq!(
        get(addr, "/listeners").body,
        "gw::127.0.0.1:10000\ndns::127.0.0.1:10000\n"
    );
    let r = get(addr, "/listeners?format=json");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["listener_statuses"][0]["name"], "gw");
    let r = get(addr, "/config_dump");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["configs"][0]["bootstrap"]["node"]["id"], "node-1");
    let r = get(addr, "/server_info");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["state"], "LIVE");
    assert_eq!(v["command_line_options"]["concurrency"], 2);
}

#[test]
fn keep_alive_pipelining_and_close() {
    let (_f, addr) = start();
    let mut s = connect(addr);
    // Two pipelined requests, then a third that asks to close.
    s.write_all(
        b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\nGET /listeners HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let r1 = read_reply(&mut s, &mut pending, false);
    assert_eq!((r1.status, r1.body.as_str()), (200, "LIVE\n"));
    assert_eq!(r1.header("connection"), Some("keep-alive"));
    let r2 = read_reply(&mut s, &mut pending, false);
    assert_eq!(r2.body, "gw::127.0.0.1:10000\ndns::127.0.0.1:10000\n");
    // A POST with a body: the body is read and ignored.
    s.write_all(b"POST /ready HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    assert_eq!(read_reply(&mut s, &mut pending, false).status, 200);
    s.write_all(b"HEAD /ready HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r3 = read_reply(&mut s, &mut pending, true);
    assert_eq!((r3.status, r3.header("content-length")), (200, Some("5")));
    assert_eq!(r3.header("connection"), Some("close"));
    assert!(pending.is_empty());
    assert_closed(&mut s);

    // HTTP/1.0 closes by default.
    let mut s = connect(addr);
    s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").unwrap();
    let r = read_reply(&mut s, &mut Vec::new(), false);
    assert_eq!(r.header("connection"), Some("close"));
    assert_closed(&mut s);
}

#[test]
fn malformed_requests_get_400_and_close() {
    let (_f, addr) = start();
    for raw in [
        "GARBAGE\r\n\r\n",
        "GET /ready HTTP/1.1\r\nno colon here\r\n\r\n",
        "GET ready HTTP/1.1\r\n\r\n",
        "GET /ready HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ] {
        let mut s = connect(addr);
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_reply(&mut s, &mut Vec::new(), false);
        assert_eq!(r.status, 400, "{raw:?}");
        assert_eq!(r.header("connection"), Some("close"));
        assert_closed(&mut s);
    }
    // A head that never ends is cut at MAX_HEAD_BYTES.
    let mut s = connect(addr);
    let mut raw = b"GET /ready HTTP/1.1\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'a', super::MAX_HEAD_BYTES + 10));
    let _ = s.write_all(&raw);
    let r = read_reply(&mut s, &mut Vec::new(), false);
    assert_eq!(r.status, 431);
    // A body over the limit is refused.
    let r = exchange(
        addr,
        "POST /ready HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
    );
    assert_eq!(r.status, 413);
}

#[test]
fn a_silent_client_does_not_block_others() {
    let (_f, addr) = start();
    let _silent = connect(addr);
    let mut half = connect(addr);
    half.write_all(b"GET /ready HTTP/1.1\r\nHost: a").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(get(addr, "/ready").status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The half-sent request is timed out with 408 after REQUEST_TIMEOUT.
    let r = read_reply(&mut half, &mut Vec::new(), false);
    assert_eq!(r.status, 408);
    assert!(started.elapsed() >= super::REQUEST_TIMEOUT - Duration::from_millis(100));
}

#[test]
fn serves_on_a_unix_socket() {
    let f = fixture();
    let path = std::env::temp_dir().join(format!("sy-admin-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let address = crate::rib::AdminAddress::Pipe {
        path: path.clone(),
        mode: 0,
    };
    spawn(
        Some(AdminListener::bind(&address).unwrap()),
        None,
        f.state.clone(),
    )
    .unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("LIVE\n"), "{response}");
    std::fs::remove_file(&path).unwrap();
}

/// Readiness is never starved: with more half-sent requests open than the admin holds at
/// once, `/ready` still answers 200 at once (the oldest waiting connection gives way), again
/// and again.
#[test]
fn ready_answers_while_more_connections_than_the_limit_are_held() {
    let (_f, addr) = start();
    let mut held = Vec::new();
    for _ in 0..super::MAX_CONNECTIONS + 8 {
        let mut s = connect(addr);
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: a").unwrap();
        held.push(s);
    }
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = get(addr, "/ready");
        assert_eq!((r.status, r.body.as_str()), (200, "LIVE\n"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
