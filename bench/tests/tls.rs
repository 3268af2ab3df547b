//! `--tls` through real loopback sockets: each client mode against this crate's own TLS
//! backends (`Server::spawn_tls`, the repository's test PKI in `tests/certs`). Asserts work
//! done, zero errors, byte counts against the server's, that `--tls-resume` really resumes
//! (the server's count of resumed handshakes) and that full handshakes never do, and that a
//! certificate the trust roots do not accept is counted as `tls`. No timing assertions.

mod common;

use common::{loopback, settle};
use std::path::PathBuf;
use std::time::Duration;

use switchyard_bench::{
    run_cps, run_rr, run_throughput, server_config, CloseMode, CpsConfig, Direction, RrConfig,
    Server, ServerKind, ThroughputConfig, TlsOptions,
};

fn cert(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/certs")
        .join(name)
}

/// A TLS backend of `kind` with the ECDSA (`server`) or RSA (`server-rsa`) certificate.
fn tls_server(kind: ServerKind, leaf: &str) -> Server {
    let config = server_config(&cert(&format!("{leaf}.pem")), &cert(&format!("{leaf}.key")))
        .expect("server config");
    Server::spawn_tls(kind, loopback(), config).expect("spawn TLS server")
}

fn client(resume: bool) -> TlsOptions {
    let mut opts = TlsOptions::new(cert("ca.pem"));
    opts.resume = resume;
    opts
}

#[test]
fn rr_over_tls_is_exact() {
    let echo = tls_server(ServerKind::Echo, "server");
    let mut cfg = RrConfig::new(echo.local_addr());
    cfg.conns = 4;
    cfg.duration = Duration::from_millis(300);
    cfg.tls = Some(client(false));
    let r = run_rr(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.results.requests > 0);
    assert_eq!(r.results.connections_ok, 4);
    assert_eq!(
        r.params.tls.as_ref().unwrap().cipher_suite,
        "TLS13_AES_128_GCM_SHA256"
    );
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.tls_handshakes, 4);
    assert_eq!(s.bytes_received, r.results.requests * 64);
    assert_eq!(s.errors, 0);
}

#[test]
fn cps_full_handshakes_never_resume() {
    let echo = tls_server(ServerKind::Echo, "server-rsa");
    let mut cfg = CpsConfig::new(echo.local_addr());
    cfg.concurrency = 2;
    cfg.duration = Duration::from_millis(300);
    cfg.tls = Some(client(false));
    let r = run_cps(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.results.connections > 0);
    assert_eq!(r.results.tls_resumed, Some(0));
    let handshakes = r.results.tls_handshake_latency_us.unwrap();
    assert_eq!(handshakes.count, r.results.connections);
    settle(&echo);
    let s = echo.stop();
    assert_eq!(s.tls_handshakes, r.results.connections);
    assert_eq!(s.tls_resumed, 0);
    assert_eq!(s.errors, 0);
}

#[test]
fn cps_resume_resumes_all_but_each_workers_first() {
    let echo = tls_server(ServerKind::Echo, "server");
    for close in [CloseMode::Rst, CloseMode::Fin] {
        let before = echo.stats();
        let mut cfg = CpsConfig::new(echo.local_addr());
        cfg.concurrency = 2;
        cfg.close = close;
        cfg.duration = Duration::from_millis(300);
        cfg.tls = Some(client(true));
        let r = run_cps(&cfg).unwrap();
        assert!(r.ok(), "{}", r.table());
        let n = r.results.connections;
        assert!(n > 4, "{}", r.table());
        // Only a worker's first connection has no ticket yet (the cache is the run's).
        let resumed = r.results.tls_resumed.unwrap();
        assert!(resumed >= n - 2, "{resumed} of {n} resumed");
        settle(&echo);
        let after = echo.stats();
        assert_eq!(after.tls_handshakes - before.tls_handshakes, n);
        assert_eq!(after.tls_resumed - before.tls_resumed, resumed);
        assert_eq!(after.bytes_received - before.bytes_received, n * 64);
    }
    assert_eq!(echo.stop().errors, 0);
}

#[test]
fn throughput_up_over_tls_reaches_the_sink() {
    let sink = tls_server(ServerKind::Sink, "server");
    let mut cfg = ThroughputConfig::new(sink.local_addr());
    cfg.direction = Direction::Up;
    cfg.conns = 2;
    cfg.duration = Duration::from_millis(300);
    cfg.tls = Some(client(false));
    let r = run_throughput(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.results.bytes_sent > 0);
    assert_eq!(r.results.connections_ok, 2);
    settle(&sink);
    assert_eq!(sink.stop().bytes_received, r.results.bytes_sent);
}

#[test]
fn throughput_down_over_tls_verifies() {
    let source = tls_server(ServerKind::Source, "server");
    let mut cfg = ThroughputConfig::new(source.local_addr());
    cfg.direction = Direction::Down;
    cfg.duration = Duration::from_millis(300);
    cfg.tls = Some(client(false));
    let r = run_throughput(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.results.bytes_received > 0);
    source.stop();
}

#[test]
fn throughput_both_over_tls_is_refused() {
    let mut cfg = ThroughputConfig::new(loopback());
    cfg.tls = Some(client(false));
    assert!(run_throughput(&cfg).is_err());
}

#[test]
fn untrusted_certificate_counts_tls_errors() {
    let echo = tls_server(ServerKind::Echo, "wrong-ca-server");
    let mut cfg = CpsConfig::new(echo.local_addr());
    cfg.duration = Duration::from_millis(100);
    cfg.tls = Some(client(false));
    let r = run_cps(&cfg).unwrap();
    assert!(!r.ok());
    assert_eq!(r.results.connections, 0);
    assert!(r.errors.tls > 0, "{}", r.table());
    assert_eq!(r.errors.total(), r.errors.tls);
    echo.stop();
}

#[test]
fn wrong_sni_counts_tls_errors() {
    let echo = tls_server(ServerKind::Echo, "server");
    let mut cfg = RrConfig::new(echo.local_addr());
    cfg.duration = Duration::from_millis(100);
    let mut opts = client(false);
    opts.sni = "not-in-the-certificate.example".into();
    cfg.tls = Some(opts);
    let r = run_rr(&cfg).unwrap();
    assert_eq!(r.errors.tls, 1, "{}", r.table());
    echo.stop();
}

#[test]
fn missing_ca_file_is_a_config_error() {
    let mut cfg = RrConfig::new(loopback());
    cfg.tls = Some(TlsOptions::new("/nonexistent/ca.pem"));
    assert!(run_rr(&cfg).is_err());
}

#[test]
fn client_certificate_loads_and_runs() {
    let echo = tls_server(ServerKind::Echo, "server");
    let mut cfg = RrConfig::new(echo.local_addr());
    cfg.duration = Duration::from_millis(100);
    let mut opts = client(false);
    opts.client_cert = Some((cert("client.pem"), cert("client.key")));
    cfg.tls = Some(opts);
    let r = run_rr(&cfg).unwrap();
    assert!(r.ok(), "{}", r.table());
    assert!(r.params.tls.unwrap().client_cert);
    echo.stop();
}
