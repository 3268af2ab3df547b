//! `switchyard demo`: two echo backends, the gateway (this binary's `run`, as a child process)
//! with an embedded config, and the load generator against both the gateway and the first
//! backend directly; then a results table. Wiring only: the pieces live in the crates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_bench::{
    run_cps, run_rr, run_throughput, spawn_echo, CpsConfig, LatencySummary, RrConfig,
    ThroughputConfig,
};

/// The embedded gateway config: one listener, one round-robin cluster of the two backends.
const DEMO_CONFIG: &str = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: ADMIN_PORT }
static_resources:
  listeners:
  - name: demo
    address:
      socket_address: { address: 127.0.0.1, port_value: LISTEN_PORT }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: demo
          cluster: echo
  clusters:
  - name: echo
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: BACKEND_A } } }
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: BACKEND_B } } }
"#;

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

struct Gateway {
    child: Child,
    admin: SocketAddr,
}

impl Gateway {
    fn start(config: &std::path::Path, admin: SocketAddr) -> Result<Gateway, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(["run", "-c"])
            .arg(config)
            .args(["--concurrency", "1", "--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the gateway: {e}"))?;
        let mut gw = Gateway { child, admin };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = gw.child.try_wait() {
                return Err(format!("the gateway exited during start-up: {status}"));
            }
            if admin_request(admin, "GET", "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
            {
                return Ok(gw);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("the gateway did not become ready in 10 s".into())
    }

    fn stat(&self, name: &str) -> String {
        let body = admin_request(self.admin, "GET", &format!("/stats?filter=^{name}$"))
            .unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }

    fn stop(mut self) {
        let _ = admin_request(self.admin, "POST", "/quitquitquit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Row {
    metric: &'static str,
    direct: f64,
    gateway: f64,
    unit: &'static str,
}

fn measure(
    target: SocketAddr,
    duration: Duration,
) -> Result<(f64, LatencySummary, f64, u64), String> {
    let mut t = ThroughputConfig::new(target);
    t.duration = duration;
    let tp = run_throughput(&t).map_err(|e| e.to_string())?;
    let mut r = RrConfig::new(target);
    r.duration = duration;
    let rr = run_rr(&r).map_err(|e| e.to_string())?;
    let mut c = CpsConfig::new(target);
    c.duration = duration;
    c.concurrency = 4;
    let cps = run_cps(&c).map_err(|e| e.to_string())?;
    let errors = tp.errors_total + rr.errors_total + cps.errors_total;
    let latency = rr.latency_us.ok_or("rr reported no latency")?;
    Ok((
        tp.results.gbit_s,
        latency,
        cps.results.connections_per_s,
        errors,
    ))
}

/// Runs the demo and prints the table.
pub fn run(duration: Duration) -> Result<(), String> {
    let a = spawn_echo("127.0.0.1:0".parse().expect("literal")).map_err(|e| e.to_string())?;
    let b = spawn_echo("127.0.0.1:0".parse().expect("literal")).map_err(|e| e.to_string())?;
    let (listen_port, admin_port) = (free_port()?, free_port()?);
    let config = DEMO_CONFIG
        .replace("ADMIN_PORT", &admin_port.to_string())
        .replace("LISTEN_PORT", &listen_port.to_string())
        .replace("BACKEND_A", &a.local_addr().port().to_string())
        .replace("BACKEND_B", &b.local_addr().port().to_string());
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("demo.yaml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;

    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let listen: SocketAddr = ([127, 0, 0, 1], listen_port).into();
    println!(
        "switchyard demo: backends {} and {}, gateway {listen} (1 worker), admin {admin}",
        a.local_addr(),
        b.local_addr()
    );
    println!("config: {}", path.display());
    let gateway = Gateway::start(&path, admin)?;
    println!(
        "measuring direct and through the gateway, {} s per run...",
        duration.as_secs()
    );

    let direct = measure(a.local_addr(), duration)?;
    let through = measure(listen, duration)?;
    let rows = [
        Row {
            metric: "bulk echo, 1 conn",
            direct: direct.0,
            gateway: through.0,
            unit: "Gbit/s",
        },
        Row {
            metric: "rr 64 B p50",
            direct: direct.1.p50_us,
            gateway: through.1.p50_us,
            unit: "us",
        },
        Row {
            metric: "rr 64 B p99",
            direct: direct.1.p99_us,
            gateway: through.1.p99_us,
            unit: "us",
        },
        Row {
            metric: "connections/s, 4 conc.",
            direct: direct.2,
            gateway: through.2,
            unit: "conn/s",
        },
    ];
    println!();
    println!(
        "| {:<24} | {:>12} | {:>12} | {:>8} |",
        "metric", "direct", "switchyard", "ratio"
    );
    println!("|{:-<26}|{:->14}|{:->14}|{:->10}|", "", "", "", "");
    for r in rows.iter() {
        let ratio = if r.direct > 0.0 {
            r.gateway / r.direct
        } else {
            0.0
        };
        println!(
            "| {:<24} | {:>8.1} {:<3} | {:>8.1} {:<3} | {:>7.2}x |",
            r.metric,
            r.direct,
            short(r.unit),
            r.gateway,
            short(r.unit),
            ratio
        );
    }
    println!();
    println!(
        "gateway stats: tcp.demo.downstream_cx_total={}  cluster.echo.upstream_cx_total={}  rx_bytes={}  tx_bytes={}",
        gateway.stat("tcp.demo.downstream_cx_total"),
        gateway.stat("cluster.echo.upstream_cx_total"),
        gateway.stat("tcp.demo.downstream_cx_rx_bytes_total"),
        gateway.stat("tcp.demo.downstream_cx_tx_bytes_total"),
    );
    println!(
        "backend connections: A={} B={} (round robin; A also served the direct runs)",
        a.stats().connections_total,
        b.stats().connections_total
    );
    println!(
        "errors: direct {}, through the gateway {}",
        direct.3, through.3
    );
    println!("placement: unpinned load generator and backends, gateway with 1 worker; ratios vary with the machine");
    gateway.stop();
    let _ = std::fs::remove_dir_all(&dir);
    if direct.3 + through.3 > 0 {
        return Err("the load generator counted errors".into());
    }
    Ok(())
}

fn short(unit: &str) -> &str {
    match unit {
        "Gbit/s" => "Gb",
        "conn/s" => "c/s",
        other => other,
    }
}
