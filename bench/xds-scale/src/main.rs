//! `switchyard-xds-scale`: how fast a proxy takes a large xDS snapshot and a small change to
//! it, what the snapshot costs in memory, and whether churn disturbs established traffic.
//!
//! One run, one proxy (Switchyard or Envoy, same snapshot, same server):
//! 1. **full apply**: `--clusters` EDS clusters of `--endpoints` endpoints and three
//!    listeners, pushed over ADS; measured from the first cluster response sent to the first
//!    connection that reaches a backend of the *last* cluster through its listener.
//! 2. **memory**: the proxy's RSS after the snapshot minus before it (held back until
//!    measured), per endpoint.
//! 3. **one-endpoint change**: the probe cluster's one endpoint is moved to a new backend;
//!    measured from the response sent to the first connection reaching the new backend while
//!    two clients connect through the probe listener back to back. Repeated `--changes` times.
//! 4. **churn**: a closed-loop 64 B request/response on one connection through a listener,
//!    in alternating phases without churn and with `--churn-per-s` endpoint updates a second
//!    to other clusters; latency percentiles per kind of phase.
//!
//! With `--fib-only`, Switchyard's compile step alone, in this process: time and memory of
//! the FIB for the same snapshot.

mod backends;
mod fib;
mod proxy;
mod responder;
mod snapshot;

use backends::{Backend, Connectors};
use clap::Parser;
use hdrhistogram::Histogram;
use proxy::{Kind, Proxy};
use responder::{Log, Logged, Push};
use serde::Serialize;
use snapshot::{cluster_name, Snapshot};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_control::xds::server::start_server;
use switchyard_control::xds::{CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE};

#[derive(Parser, Debug)]
#[command(name = "switchyard-xds-scale", about)]
struct Args {
    /// Which proxy to measure.
    #[arg(long, value_enum, default_value = "switchyard")]
    proxy: Kind,
    /// The proxy binary (default: target/release/switchyard, or $ENVOY_BIN for Envoy).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// xDS variant: GRPC (State of the World) or DELTA_GRPC.
    #[arg(long, default_value = "GRPC", value_parser = ["GRPC", "DELTA_GRPC"])]
    api: String,
    /// EDS clusters in the snapshot.
    #[arg(long, default_value_t = 10_000)]
    clusters: usize,
    /// Endpoints per cluster.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// One-endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Endpoint updates per second during the churn phases.
    #[arg(long, default_value_t = 10)]
    churn_per_s: u32,
    /// Length of each latency phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    phase_s: f64,
    /// Phases of each kind (alternating: quiet, churn, quiet, churn, ...).
    #[arg(long, default_value_t = 3)]
    phases: usize,
    /// Proxy workers.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Only compile the snapshot's FIB in this process (time and memory); no proxy.
    #[arg(long)]
    fib_only: bool,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Percentiles of one latency histogram, microseconds.
#[derive(Debug, Serialize)]
struct Latency {
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            requests: h.len(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    proxy: Kind,
    api: String,
    clusters: usize,
    endpoints_loaded: usize,
    concurrency: usize,
    /// First cluster response sent -> first connection at the last cluster's backend.
    full_apply_ms: f64,
    /// ACK of each type after the first cluster response was sent.
    cds_ack_ms: Option<f64>,
    eds_ack_ms: Option<f64>,
    lds_ack_ms: Option<f64>,
    rss_before_bytes: u64,
    rss_after_bytes: u64,
    rss_per_endpoint_bytes: f64,
    /// Push -> first connection at the new endpoint, per change (sorted).
    change_ms: Vec<f64>,
    change_p50_ms: f64,
    change_max_ms: f64,
    /// Short connections per second through the probe listener while changes were timed (the
    /// resolution of `change_ms`).
    probe_connections_per_s: f64,
    quiet: Latency,
    churn: Latency,
    churn_updates_sent: u64,
    p99_churn_over_quiet: f64,
    nacks: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let result = if args.fib_only {
        fib::measure(args.clusters, args.endpoints).map(|r| {
            println!("{}", serde_json::to_string_pretty(&r).unwrap());
            serde_json::to_value(r).unwrap()
        })
    } else {
        run(&args).map(|r| {
            print_report(&r);
            serde_json::to_value(r).unwrap()
        })
    };
    match result {
        Ok(v) => {
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(&v).unwrap();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("xds-scale: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("xds-scale: {e}");
            std::process::exit(1);
        }
    }
}

fn free_addr() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

fn default_bin(kind: Kind) -> PathBuf {
    match kind {
        Kind::Switchyard => {
            let exe = std::env::current_exe().unwrap_or_default();
            exe.with_file_name("switchyard")
        }
        Kind::Envoy => std::env::var_os("ENVOY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".venv/bin/envoy")),
    }
}

/// The cluster ids the run uses for real traffic.
const RR_CLUSTER: usize = 0;
const PROBE_CLUSTER: usize = 1;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(args: &Args) -> Result<Report, String> {
    if args.clusters < 3 || args.endpoints == 0 {
        return Err("need at least 3 clusters and 1 endpoint per cluster".into());
    }
    let last = args.clusters - 1;
    let start_backends = |n: usize| -> Result<Vec<Backend>, String> {
        (0..n)
            .map(|_| Backend::start().map_err(|e| format!("backend: {e}")))
            .collect()
    };
    let rr_backends = start_backends(args.endpoints)?;
    let last_backends = start_backends(args.endpoints)?;
    let probe = start_backends(1)?;
    let mut snap = Snapshot::new(args.clusters, args.endpoints);
    snap.clusters[RR_CLUSTER] = rr_backends.iter().map(|b| b.addr).collect();
    snap.clusters[last] = last_backends.iter().map(|b| b.addr).collect();
    snap.clusters[PROBE_CLUSTER] = vec![probe[0].addr];
    let (rr_addr, probe_addr, last_addr) = (free_addr()?, free_addr()?, free_addr()?);
    snap.listeners = vec![
        ("rr".into(), rr_addr, cluster_name(RR_CLUSTER)),
        ("probe".into(), probe_addr, cluster_name(PROBE_CLUSTER)),
        ("last".into(), last_addr, cluster_name(last)),
    ];
    let endpoints_loaded: usize = snap.clusters.iter().map(Vec::len).sum();
    let snapshot = Arc::new(Mutex::new(snap));

    let log = Log::default();
    let (ads, sotw, delta) = start_server();
    let pushes = responder::serve(snapshot.clone(), sotw, delta, log.clone());
    let bin = args.bin.clone().unwrap_or_else(|| default_bin(args.proxy));
    let dir = std::env::temp_dir().join(format!("xds-scale-{}", std::process::id()));
    let admin = free_addr()?;
    let config = proxy::bootstrap(admin, ads, &args.api);
    let proxy = Proxy::spawn(args.proxy, &bin, &config, admin, args.concurrency, &dir)
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    eprintln!(
        "xds-scale: {:?} pid up, logs in {}",
        args.proxy,
        dir.display()
    );

    // The proxy has asked; nothing is answered yet: its memory without the snapshot.
    let t_start = Instant::now();
    log.wait(
        t_start - Duration::from_secs(60),
        Duration::from_secs(20),
        |l| matches!(l, Logged::Request { .. }),
    )
    .ok_or("the proxy never sent a discovery request")?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = proxy.rss_bytes();

    // 1. Full apply.
    let full = Connectors::start(last_addr, 1);
    let released = Instant::now();
    pushes.send(Push::Release).map_err(|e| e.to_string())?;
    let (t_cds, _) = log
        .wait(
            released,
            Duration::from_secs(30),
            |l| matches!(l, Logged::Sent { type_url, .. } if type_url == CLUSTER_TYPE),
        )
        .ok_or("no cluster response was sent")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let reached = loop {
        if let Some(t) = last_backends.iter().filter_map(Backend::first_accept).min() {
            break t;
        }
        if Instant::now() > deadline {
            full.stop();
            return Err(format!(
                "the last cluster was never reached; NACKs: {:?}",
                log.nacks()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    full.stop();
    let ack_after = |type_url: &str| {
        log.find(
            t_cds,
            |l| matches!(l, Logged::Ack { type_url: t, .. } if t == type_url),
        )
        .map(|(t, _)| ms(t - t_cds))
    };
    let full_apply_ms = ms(reached - t_cds);
    eprintln!("xds-scale: full apply {full_apply_ms:.1} ms");
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = proxy.rss_bytes();

    // 2. One-endpoint changes.
    let mut change_ms = Vec::new();
    let connectors = Connectors::start(probe_addr, 2);
    let timed_from = Instant::now();
    let counted_before = connectors.done();
    for _ in 0..args.changes {
        let new = Backend::start().map_err(|e| format!("backend: {e}"))?;
        snapshot.lock().unwrap().clusters[PROBE_CLUSTER] = vec![new.addr];
        let asked = Instant::now();
        pushes
            .send(Push::Endpoints(vec![PROBE_CLUSTER]))
            .map_err(|e| e.to_string())?;
        let (sent, _) = log
            .wait(
                asked,
                Duration::from_secs(10),
                |l| matches!(l, Logged::Sent { type_url, .. } if type_url == ENDPOINTS_TYPE),
            )
            .ok_or("the change was never sent")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some(t) = new.first_accept() {
                break t;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the new endpoint was never reached; NACKs: {:?}",
                    log.nacks()
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        change_ms.push(ms(first.saturating_duration_since(sent)));
        if std::env::var_os("XDS_SCALE_TRACE").is_some() {
            let wall = std::time::SystemTime::now() - Instant::now().duration_since(sent);
            eprintln!(
                "xds-scale: change sent at {:?}, first connection after {:.2} ms",
                wall.duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
                ms(first.saturating_duration_since(sent))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let probe_rate =
        (connectors.done() - counted_before) as f64 / timed_from.elapsed().as_secs_f64();
    connectors.stop();
    change_ms.sort_by(f64::total_cmp);

    // 3. Latency without and with churn.
    let (quiet, churn, churn_updates_sent) = churn_phases(args, rr_addr, &snapshot, &pushes)?;
    let p99_churn_over_quiet =
        churn.value_at_quantile(0.99) as f64 / quiet.value_at_quantile(0.99).max(1) as f64;
    drop(proxy);
    Ok(Report {
        schema: "switchyard-xds-scale/v1",
        proxy: args.proxy,
        api: args.api.clone(),
        clusters: args.clusters,
        endpoints_loaded,
        concurrency: args.concurrency,
        full_apply_ms,
        cds_ack_ms: ack_after(CLUSTER_TYPE),
        eds_ack_ms: ack_after(ENDPOINTS_TYPE),
        lds_ack_ms: ack_after(LISTENER_TYPE),
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        rss_per_endpoint_bytes: rss_after.saturating_sub(rss_before) as f64
            / endpoints_loaded as f64,
        change_p50_ms: change_ms[change_ms.len() / 2],
        change_max_ms: *change_ms.last().unwrap(),
        change_ms,
        probe_connections_per_s: probe_rate,
        quiet: Latency::of(&quiet),
        churn: Latency::of(&churn),
        churn_updates_sent,
        p99_churn_over_quiet,
        nacks: log.nacks(),
    })
}

/// Alternating quiet and churn phases on one request/response connection through `target`.
fn churn_phases(
    args: &Args,
    target: SocketAddr,
    snapshot: &Arc<Mutex<Snapshot>>,
    pushes: &std::sync::mpsc::Sender<Push>,
) -> Result<(Histogram<u64>, Histogram<u64>, u64), String> {
    let mut conn = TcpStream::connect(target).map_err(|e| format!("rr connect: {e}"))?;
    conn.set_nodelay(true).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut quiet, mut churn) = (new_hist(), new_hist());
    let sent = AtomicU64::new(0);
    let phase = Duration::from_secs_f64(args.phase_s);
    for i in 0..args.phases * 2 {
        let churning = i % 2 == 1;
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| -> Result<(), String> {
            if churning {
                s.spawn(|| churn_loop(args, snapshot, pushes, &stop, &sent));
            }
            let h = if churning { &mut churn } else { &mut quiet };
            let r = rr_phase(&mut conn, phase, h);
            stop.store(true, Ordering::Relaxed);
            r
        })?;
    }
    Ok((quiet, churn, sent.load(Ordering::Relaxed)))
}

/// 64 B request/response on `conn` for `phase`, each round trip recorded in ns.
fn rr_phase(conn: &mut TcpStream, phase: Duration, h: &mut Histogram<u64>) -> Result<(), String> {
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let t = Instant::now();
        conn.write_all(&msg).map_err(|e| format!("rr write: {e}"))?;
        conn.read_exact(&mut back)
            .map_err(|e| format!("rr read: {e}"))?;
        if back != msg {
            return Err("rr: the echo differs from the request".into());
        }
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    Ok(())
}

/// Pushes `churn_per_s` single-assignment updates a second to clusters other than the ones
/// traffic uses, until `stop`.
fn churn_loop(
    args: &Args,
    snapshot: &Arc<Mutex<Snapshot>>,
    pushes: &std::sync::mpsc::Sender<Push>,
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.churn_per_s.max(1)));
    let mut next = Instant::now();
    let mut n: usize = sent.load(Ordering::Relaxed) as usize;
    while !stop.load(Ordering::Relaxed) {
        let id = 2 + (n * 7919) % (args.clusters - 3);
        {
            let mut s = snapshot.lock().unwrap();
            let eps = &mut s.clusters[id];
            let j = n % eps.len();
            let port = eps[j].port().wrapping_add(1).max(1);
            eps[j].set_port(port);
        }
        if pushes.send(Push::Endpoints(vec![id])).is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        n += 1;
        next += interval;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn print_report(r: &Report) {
    println!(
        "{:?} ({}), {} clusters, {} endpoints, {} worker(s)",
        r.proxy, r.api, r.clusters, r.endpoints_loaded, r.concurrency
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!(
        "  full apply            {:>9.1} ms  (ACKs after the first push: CDS {} ms, EDS {} ms, LDS {} ms)",
        r.full_apply_ms,
        opt(r.cds_ack_ms),
        opt(r.eds_ack_ms),
        opt(r.lds_ack_ms)
    );
    println!(
        "  memory                {:>9.1} B per endpoint (RSS {:.1} -> {:.1} MiB)",
        r.rss_per_endpoint_bytes,
        r.rss_before_bytes as f64 / 1048576.0,
        r.rss_after_bytes as f64 / 1048576.0
    );
    println!(
        "  one-endpoint change   {:>9.2} ms p50, {:.2} ms max over {} (probe {:.0} conn/s)",
        r.change_p50_ms,
        r.change_max_ms,
        r.change_ms.len(),
        r.probe_connections_per_s
    );
    println!(
        "  rr 64 B quiet         p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  ({} requests)",
        r.quiet.p50_us, r.quiet.p99_us, r.quiet.p999_us, r.quiet.requests
    );
    println!(
        "  rr 64 B churn         p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  ({} requests, {} updates)",
        r.churn.p50_us, r.churn.p99_us, r.churn.p999_us, r.churn.requests, r.churn_updates_sent
    );
    println!("  p99 churn / quiet     {:>9.2}", r.p99_churn_over_quiet);
    if !r.nacks.is_empty() {
        println!("  NACKs: {:?}", r.nacks);
    }
}
