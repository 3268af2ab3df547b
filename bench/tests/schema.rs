//! The JSON schema: every report round-trips, and parses as the generic envelope with the
//! documented keys.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use switchyard_bench::{
    run_cps, run_idle, run_rr, run_throughput, spawn_echo, CpsReport, Envelope, ErrorCounts,
    IdleReport, LatencySummary, Report, RrConfig, RrParams, RrReport, RrResults, ThroughputConfig,
    ThroughputReport, SCHEMA,
};

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

const ENVELOPE_KEYS: [&str; 10] = [
    "schema",
    "mode",
    "target",
    "params",
    "duration_s",
    "results",
    "errors",
    "errors_total",
    "error_samples",
    "latency_us",
];

fn check_envelope(json: &str, mode: &str, has_latency: bool) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let obj = v.as_object().unwrap();
    for k in ENVELOPE_KEYS {
        assert!(obj.contains_key(k), "missing {k} in {json}");
    }
    assert_eq!(obj.len(), ENVELOPE_KEYS.len(), "unexpected keys in {json}");
    for class in [
        "refused", "reset", "timeout", "mismatch", "eof", "tls", "other",
    ] {
        assert!(v["errors"][class].is_u64(), "errors.{class}");
    }
    assert_eq!(v["latency_us"].is_object(), has_latency);
    if has_latency {
        for k in [
            "count", "min_us", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
        ] {
            assert!(v["latency_us"][k].is_number(), "latency_us.{k}");
        }
    }
    let env = Envelope::from_json(json).unwrap();
    assert_eq!(env.schema, SCHEMA);
    assert_eq!(env.mode, mode);
}

#[test]
fn synthetic_report_round_trips_exactly() {
    let errors = ErrorCounts {
        timeout: 2,
        ..ErrorCounts::default()
    };
    let report: RrReport = Report::new(
        "rr",
        "127.0.0.1:9".into(),
        RrParams {
            conns: 8,
            msg_bytes: 64,
            pacing: "open".into(),
            rate_per_s: Some(1000.5),
            duration_s: 3.0,
            connect_timeout_s: 2.0,
            io_timeout_s: 5.0,
            tls: None,
            proxy_protocol: None,
        },
        3.0012,
        RrResults {
            requests: 2999,
            requests_per_s: 999.26,
            requests_unsent: 1,
            connections_ok: 7,
            bytes_each_way: 2999 * 64,
        },
        errors,
        vec!["[timeout] read response: timed out".into()],
        Some(LatencySummary {
            count: 2999,
            min_us: 10.1,
            mean_us: 13.7,
            p50_us: 12.9,
            p90_us: 14.2,
            p99_us: 15.9,
            p999_us: 40.3,
            max_us: 1200.0,
        }),
    );
    assert_eq!(report.errors_total, 2);
    let json = report.to_json();
    assert_eq!(RrReport::from_json(&json).unwrap(), report);
    check_envelope(&json, "rr", true);
    let env = Envelope::from_json(&json).unwrap();
    assert_eq!(env.params["rate_per_s"], 1000.5);
    assert_eq!(env.results["requests"], 2999);
    assert!(env.table().contains("rate_per_s"));
}

#[test]
fn every_mode_report_round_trips() {
    let echo = spawn_echo(loopback()).unwrap();
    let target = echo.local_addr();

    let mut t = ThroughputConfig::new(target);
    t.duration = Duration::from_millis(100);
    let r = run_throughput(&t).unwrap();
    let json = r.to_json();
    assert_eq!(ThroughputReport::from_json(&json).unwrap(), r);
    check_envelope(&json, "throughput", false);
    assert!(r.table().contains("Gbit/s up"));

    let mut c = RrConfig::new(target);
    c.duration = Duration::from_millis(100);
    let r = run_rr(&c).unwrap();
    let json = r.to_json();
    assert_eq!(RrReport::from_json(&json).unwrap(), r);
    check_envelope(&json, "rr", true);
    assert!(r.table().contains("requests/s"));

    let mut c = switchyard_bench::CpsConfig::new(target);
    c.duration = Duration::from_millis(100);
    let r = run_cps(&c).unwrap();
    let json = r.to_json();
    assert_eq!(CpsReport::from_json(&json).unwrap(), r);
    check_envelope(&json, "cps", true);
    assert!(r.table().contains("connections/s"));

    let mut c = switchyard_bench::IdleConfig::new(target);
    c.conns = 3;
    c.hold = Duration::from_millis(10);
    let r = run_idle(&c).unwrap();
    let json = r.to_json();
    assert_eq!(IdleReport::from_json(&json).unwrap(), r);
    check_envelope(&json, "idle", true);

    let dir = std::env::temp_dir().join(format!("swb-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("idle.json");
    r.write_json(&path).unwrap();
    let back = IdleReport::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, r);
    std::fs::remove_dir_all(&dir).unwrap();
    echo.stop();
}
