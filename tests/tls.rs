//! `envoy.transport_sockets.tls` through the real proxy, with the checked-in test PKI
//! (`tests/certs`), against Switchyard and (CI's second pass) Envoy on the same files:
//!
//! * a chain terminating TLS for rustls, Python's `ssl` and `openssl s_client` clients, eight
//!   loaded connections at once;
//! * mTLS with SPIFFE SAN matching: the client's identity accepted, an intruder's and a
//!   revoked one refused, each counted (`listener.<addr>.ssl.*`), and the identity in the
//!   access log (`%DOWNSTREAM_PEER_URI_SAN%`, `%DOWNSTREAM_TLS_VERSION%`, ...);
//! * a cluster originating TLS: to a good backend, and to one whose certificate the
//!   validation context refuses (`cluster.<name>.ssl.*`, the client closed);
//! * bad clients (garbage instead of a ClientHello, a truncated one, an oversized record after
//!   the handshake, a silent one past `transport_socket_connect_timeout`) closed and counted
//!   while good ones pass;
//! * interop with real Envoy both ways: Envoy originating to the proxy under test, and the
//!   proxy under test originating to Envoy, with client certificates both ways.

mod common;

use common::*;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SPIFFE_CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

/// Writes `msg` in 16 KiB pieces, reading the echo of each back; the echo, or the error.
fn echo_through(s: &mut impl ReadWrite, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut got = Vec::with_capacity(msg.len());
    let mut buf = vec![0u8; 65536];
    let mut sent = 0;
    for piece in msg.chunks(16 * 1024) {
        s.write_all(piece)?;
        s.flush()?;
        sent += piece.len();
        while got.len() < sent {
            match s.read(&mut buf)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => got.extend_from_slice(&buf[..n]),
            }
        }
    }
    Ok(got)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A `DownstreamTlsContext` transport socket (YAML under a filter chain), serving
/// `server.pem`; `extra` goes into `common_tls_context` and `top` beside it.
fn downstream_tls(top: &str, common: &str) -> String {
    let certificates = format!(
        "            tls_certificates:\n            - certificate_chain: {{ filename: {} }}\n              private_key: {{ filename: {} }}\n{common}",
        cert("server.pem").display(),
        cert("server.key").display(),
    );
    downstream_tls_socket(top, &certificates)
}

/// The mTLS part of a `DownstreamTlsContext`: the test CA, its CRL, the client's SPIFFE ID.
fn mtls_validation() -> (String, String) {
    let top = "          require_client_certificate: true\n".to_string();
    let common = format!(
        r#"            validation_context:
              trusted_ca: {{ filename: {ca} }}
              crl: {{ filename: {crl} }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ exact: "{SPIFFE_CLIENT}" }}
"#,
        ca = cert("ca.pem").display(),
        crl = cert("ca.crl.pem").display(),
    );
    (top, common)
}

/// A TCP proxy listener on `port` to `cluster` whose chain carries `transport_socket` (and
/// the tcp_proxy's `extra` lines).
fn tls_listener(
    name: &str,
    port: u16,
    cluster: &str,
    transport_socket: &str,
    extra: &str,
) -> String {
    tcp_listener(name, port, name, cluster) + extra + transport_socket
}

/// A static cluster to `endpoint` whose connections originate TLS with `upstream_tls`
/// (`UpstreamTlsContext` fields under `typed_config`).
fn tls_cluster(name: &str, endpoint: SocketAddr, upstream_tls: &str) -> String {
    static_cluster(name, &[(endpoint, 1)]).replace(
        &format!("  - name: {name}\n"),
        &format!(
            r#"  - name: {name}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
{upstream_tls}"#
        ),
    )
}

fn listener_stat(port: u16, stat: &str) -> String {
    format!("listener.127.0.0.1_{port}.ssl.{stat}")
}

#[test]
fn a_chain_terminates_tls_for_rustls_python_and_openssl_clients() {
    let backend = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let yaml = bootstrap(
        admin,
        &tls_listener("tls", port, "echo", &downstream_tls("", ""), ""),
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    // Eight rustls clients at once, 512 KiB each way, then close_notify.
    let threads: Vec<_> = (0..8u8)
        .map(|i| {
            let config = client_config(None);
            std::thread::spawn(move || {
                let mut s = tls_connect(local(port), config);
                let msg = pattern(512 * 1024, i);
                let got = echo_through(&mut s, &msg).expect("echo");
                assert!(got == msg, "client {i}: the echo differs");
                s.conn.send_close_notify();
                s.flush().unwrap();
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest);
                assert!(rest.is_empty());
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    python_client(port, None).expect("python ssl client");
    openssl_client(port).expect("openssl s_client");
    assert!(
        proxy.wait_stat(
            &listener_stat(port, "handshake"),
            10,
            Duration::from_secs(5)
        ) >= 10
    );
    assert_eq!(proxy.stat(&listener_stat(port, "connection_error")), 0);
}

/// Python's `ssl` module: a connection, an echo, `unwrap` (close_notify). With `identity`,
/// it presents that client certificate.
fn python_client(port: u16, identity: Option<&str>) -> Result<(), String> {
    let load = identity.map_or(String::new(), |id| {
        format!(
            "ctx.load_cert_chain({:?}, {:?})\n",
            cert(&format!("{id}.pem")).display().to_string(),
            cert(&format!("{id}.key")).display().to_string()
        )
    });
    let script = format!(
        r#"import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
{load}s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port}), timeout=10), server_hostname="localhost")
msg = b"python says hello " * 1000
s.sendall(msg)
got = b""
while len(got) < len(msg):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
assert got == msg, len(got)
print(s.version())
s.unwrap().close()
"#,
        ca = cert("ca.pem").display().to_string(),
    );
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script);
    let (out, _) = output_within(&mut cmd, Duration::from_secs(20));
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `openssl s_client`: a line through the proxy and back, then the client is ended (by
/// its PID).
fn openssl_client(port: u16) -> Result<(), String> {
    let mut child = std::process::Command::new("openssl")
        .args(["s_client", "-quiet", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args([
            "-servername",
            "localhost",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(cert("ca.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("openssl: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"openssl says hello\n").unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"hello\n") {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let got = reader.join().unwrap();
    if got == b"openssl says hello\n" {
        Ok(())
    } else {
        Err(format!("openssl read {:?}", String::from_utf8_lossy(&got)))
    }
}

#[test]
fn mtls_accepts_the_spiffe_id_it_names_and_refuses_others() {
    let backend = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let log = test_dir("tls-mtls").join("access.log");
    let format = "%DOWNSTREAM_PEER_URI_SAN%|%DOWNSTREAM_TLS_VERSION%|%DOWNSTREAM_PEER_SUBJECT%|%REQUESTED_SERVER_NAME%\n";
    let access_log = file_access_log(
        &log,
        Some(&format!(
            "                text_format_source: {{ inline_string: {format:?} }}\n"
        )),
    );
    let (top, common) = mtls_validation();
    let yaml = bootstrap(
        admin,
        &tls_listener(
            "mtls",
            port,
            "echo",
            &downstream_tls(&top, &common),
            &format!("          access_log:\n{access_log}"),
        ),
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    let mut ok = tls_connect(local(port), client_config(Some("client")));
    assert_eq!(echo_through(&mut ok, b"hello").unwrap(), b"hello");
    ok.conn.send_close_notify();
    let _ = ok.flush();
    drop(ok);
    python_client(port, Some("client")).expect("python with the client's certificate");
    for (identity, stat) in [
        (Some("intruder"), "fail_verify_san"),
        (Some("revoked"), "fail_verify_error"),
        (None, "fail_verify_no_cert"),
    ] {
        let mut refused = tls_connect(local(port), client_config(identity));
        // TLS 1.3: the client's Finished goes out; the refusal arrives on its next read.
        let r = echo_through(&mut refused, b"hello");
        assert!(r.is_err(), "{identity:?} got through: {r:?}");
        assert_eq!(
            proxy.wait_stat(&listener_stat(port, stat), 1, Duration::from_secs(5)),
            1,
            "{stat} for {identity:?}"
        );
    }
    assert!(python_client(port, Some("intruder")).is_err());
    certs_show_the_chain(&proxy);
    assert_eq!(proxy.stat(&listener_stat(port, "handshake")), 2);
    // The two accepted connections' lines name the client's SPIFFE ID (Envoy logs the
    // refused handshakes too, with no identity).
    assert!(
        wait_until(Duration::from_secs(5), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .filter(|l| l.starts_with(SPIFFE_CLIENT))
                .count()
                == 2
        }),
        "access log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.starts_with(SPIFFE_CLIENT)).unwrap();
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields[1], "TLSv1.3", "{line}");
    assert!(fields[2].contains("CN="), "{line}");
    // Without a tls_inspector Envoy sets no requested server name; neither does Switchyard.
    assert_eq!(fields[3], "-", "{line}");
}

/// An `UpstreamTlsContext` trusting the test CA, sending SNI `backend.example.com`, its SAN
/// matcher wanting `want_dns`.
fn upstream_tls(want_dns: &str, identity: Option<&str>) -> String {
    let client_cert = identity.map_or(String::new(), |id| {
        format!(
            "          tls_certificates:\n          - certificate_chain: {{ filename: {} }}\n            private_key: {{ filename: {} }}\n",
            cert(&format!("{id}.pem")).display(),
            cert(&format!("{id}.key")).display()
        )
    });
    format!(
        r#"        sni: backend.example.com
        common_tls_context:
{client_cert}          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: {want_dns} }}
"#,
        ca = cert("ca.pem").display()
    )
}

#[test]
fn a_cluster_originates_tls_and_refuses_a_server_it_does_not_trust() {
    // The TLS backend is a second listener of the proxy under test, terminating TLS in
    // front of the plain echo: the proxy talks to itself.
    let backend = Backend::echo();
    let (admin, front, tls_port) = (free_port(), free_port(), free_port());
    let good = "good";
    let bad = "bad";
    let front_bad = free_port();
    let listeners = tls_listener("tls_backend", tls_port, "echo", &downstream_tls("", ""), "")
        + &tcp_listener("front", front, "front", good)
        + &tcp_listener("front_bad", front_bad, "front_bad", bad);
    let clusters = static_cluster("echo", &[(backend.addr, 1)])
        + &tls_cluster(
            good,
            local(tls_port),
            &upstream_tls("backend.example.com", None),
        )
        + &tls_cluster(
            bad,
            local(tls_port),
            &upstream_tls("other.example.com", None),
        );
    let yaml = bootstrap(admin, &listeners, &clusters);
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(front), Duration::from_secs(10));
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            std::thread::spawn(move || {
                let s = connect_retry(local(front), Duration::from_secs(5));
                let x = exchange(s, i, 256 * 1024);
                echoed_exactly(i, &x).expect("echo through an originating cluster");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    assert!(proxy.stat("cluster.good.ssl.handshake") >= 8);
    let mut refused = connect_retry(local(front_bad), Duration::from_secs(5));
    let took = closed_within(&mut refused, Duration::from_secs(5));
    assert!(
        took.is_some(),
        "the client is closed when its backend fails TLS"
    );
    assert!(proxy.wait_stat("cluster.bad.ssl.fail_verify_san", 1, Duration::from_secs(5)) >= 1);
    assert!(proxy.stat("cluster.bad.upstream_cx_connect_fail") >= 1);
}

#[test]
fn bad_clients_are_closed_and_counted_while_good_ones_pass() {
    let backend = Backend::echo();
    let (admin, port) = (free_port(), free_port());
    let chain = downstream_tls("", "").replace(
        "      transport_socket:\n",
        "      transport_socket_connect_timeout: 0.5s\n      transport_socket:\n",
    );
    let yaml = bootstrap(
        admin,
        &tls_listener("tls", port, "echo", &chain, ""),
        &static_cluster("echo", &[(backend.addr, 1)]),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    proxy.wait_listening(local(port), Duration::from_secs(10));
    let accepted = backend.accepted();
    // Garbage: closed (after an alert) and counted.
    let mut garbage = connect_retry(local(port), Duration::from_secs(5));
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (_alert, end) = read_all(&mut garbage, 64);
    assert!(matches!(end, End::Eof | End::Reset), "garbage: {end:?}");
    // A ClientHello cut short, then silence: closed at the handshake deadline.
    let mut truncated = connect_retry(local(port), Duration::from_secs(5));
    truncated
        .write_all(&[22, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3])
        .unwrap();
    let took = closed_within(&mut truncated, Duration::from_secs(5));
    assert!(
        took.is_some_and(|t| t >= Duration::from_millis(400)),
        "closed at the deadline: {took:?}"
    );
    // Silent: the same.
    let mut silent = connect_retry(local(port), Duration::from_secs(5));
    assert!(closed_within(&mut silent, Duration::from_secs(5)).is_some());
    // A ClientHello in one-byte segments is still read whole.
    let mut slow = connect_retry(local(port), Duration::from_secs(5));
    slow.set_nodelay(true).unwrap();
    let mut conn = rustls::ClientConnection::new(
        client_config(None),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    for b in &hello {
        slow.write_all(std::slice::from_ref(b)).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, slow);
    assert_eq!(
        echo_through(&mut tls, b"slow hello").unwrap(),
        b"slow hello"
    );
    // After the handshake, a record header announcing more than TLS allows (2^14 + 256
    // bytes of ciphertext): that connection is closed, the others go on.
    let errors_before = proxy.stat(&listener_stat(port, "connection_error"));
    let mut oversize = tls_connect(local(port), client_config(None));
    assert_eq!(echo_through(&mut oversize, b"before").unwrap(), b"before");
    let mut raw = oversize.sock.try_clone().unwrap();
    raw.write_all(&[23, 3, 3, 0x48, 0x01]).unwrap();
    let _ = raw.write_all(&[0u8; 512]);
    // Closed, perhaps after an alert (Envoy sends BoringSSL's).
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (_, end) = read_all(&mut raw, 4096);
    assert!(
        matches!(end, End::Eof | End::Reset),
        "an oversized record closes its connection: {end:?}"
    );
    assert!(
        proxy.wait_stat(
            &listener_stat(port, "connection_error"),
            errors_before + 1,
            Duration::from_secs(5)
        ) > errors_before
    );
    // Good clients meanwhile.
    for i in 0..4u8 {
        let mut s = tls_connect(local(port), client_config(None));
        assert_eq!(echo_through(&mut s, &[i; 100]).unwrap(), [i; 100]);
    }
    assert!(
        proxy.wait_stat(
            &listener_stat(port, "connection_error"),
            1,
            Duration::from_secs(5)
        ) >= 1
    );
    assert_eq!(
        proxy.stat(
            "listener.127.0.0.1_{port}.downstream_cx_transport_socket_connect_timeout"
                .replace("{port}", &port.to_string())
                .as_str()
        ),
        2
    );
    // Switchyard finishes the client's handshake before it connects upstream; Envoy
    // connects at accept, so every client reached the backend there.
    if selected_proxy() == ProxyKind::Switchyard {
        assert_eq!(
            backend.accepted() - accepted,
            6,
            "only the clients that finished a handshake reached the backend"
        );
    }
}

/// Real Envoy in front of and behind the proxy under test, with client certificates both
/// ways: Envoy originates TLS to the proxy's listener; the proxy originates TLS to Envoy's.
#[test]
fn interoperates_with_envoy_both_ways() {
    if selected_proxy() != ProxyKind::Switchyard {
        return; // Envoy against itself proves nothing new.
    }
    if !require(envoy_available(), "envoy") {
        return;
    }
    let backend = Backend::echo();
    let (sy_admin, envoy_admin) = (free_port(), free_port());
    let (sy_tls, sy_front, envoy_front, envoy_tls) =
        (free_port(), free_port(), free_port(), free_port());
    let (top, common) = mtls_validation();
    // Switchyard: a mTLS listener to the echo, and a plaintext front originating TLS to
    // Envoy's TLS listener.
    let sy = bootstrap(
        sy_admin,
        &(tls_listener("mtls", sy_tls, "echo", &downstream_tls(&top, &common), "")
            + &tcp_listener("front", sy_front, "front", "to_envoy")),
        &(static_cluster("echo", &[(backend.addr, 1)])
            + &tls_cluster(
                "to_envoy",
                local(envoy_tls),
                &upstream_tls("backend.example.com", Some("client")),
            )),
    );
    // Envoy: a plaintext front originating TLS to Switchyard (with the client's
    // certificate), and a mTLS listener to the echo.
    let envoy = bootstrap(
        envoy_admin,
        &(tcp_listener("front", envoy_front, "front", "to_switchyard")
            + &tls_listener(
                "mtls",
                envoy_tls,
                "echo",
                &downstream_tls(&top, &common),
                "",
            )),
        &(static_cluster("echo", &[(backend.addr, 1)])
            + &tls_cluster(
                "to_switchyard",
                local(sy_tls),
                &upstream_tls("backend.example.com", Some("client")),
            )),
    );
    let switchyard = Proxy::start_with(ProxyKind::Switchyard, &sy, ProxyOpts::default());
    let envoy = Proxy::start_with(ProxyKind::Envoy, &envoy, ProxyOpts::default());
    switchyard.wait_listening(local(sy_front), Duration::from_secs(10));
    envoy.wait_listening(local(envoy_front), Duration::from_secs(20));
    for (front, who) in [
        (envoy_front, "envoy -> switchyard"),
        (sy_front, "switchyard -> envoy"),
    ] {
        for i in 0..4u64 {
            let s = connect_retry(local(front), Duration::from_secs(5));
            let x = exchange(s, i, 128 * 1024);
            echoed_exactly(i, &x).unwrap_or_else(|e| panic!("{who}: {e}"));
        }
    }
    assert!(
        switchyard.stat(&listener_stat(sy_tls, "handshake")) >= 4,
        "Envoy's handshakes"
    );
    assert!(switchyard.stat("cluster.to_envoy.ssl.handshake") >= 4);
    assert!(
        envoy.stat(&listener_stat(envoy_tls, "handshake")) >= 4,
        "Switchyard's handshakes"
    );
}

/// `/certs` in Envoy's shape: the chain's CA and its certificate, by file, serial (as
/// openssl prints it, lowercased), SANs and days left.
fn certs_show_the_chain(proxy: &Proxy) {
    let r = proxy.get("/certs");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
    let context = &v["certificates"][0];
    let leaf = &context["cert_chain"][0];
    assert_eq!(
        leaf["path"],
        cert("server.pem").display().to_string(),
        "{}",
        r.body
    );
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert("server.pem"));
    let (out, _) = output_within(&mut openssl, Duration::from_secs(10));
    let serial = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_lowercase();
    assert_eq!(leaf["serial_number"], serial, "{}", r.body);
    let sans = leaf["subject_alt_names"].as_array().expect("sans");
    assert!(
        sans.contains(&serde_json::json!({"dns": "localhost"})),
        "{}",
        r.body
    );
    let days: u64 = leaf["days_until_expiration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(days > 30_000, "{}", r.body);
    assert!(leaf["expiration_time"].as_str().unwrap().ends_with('Z'));
    let ca = &context["ca_cert"][0];
    assert_eq!(
        ca["path"],
        cert("ca.pem").display().to_string(),
        "{}",
        r.body
    );
}
