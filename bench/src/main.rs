//! `switchyard-bench`: the command line over the `switchyard_bench` library. Wiring only.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use switchyard_bench::{
    run_cps, run_idle, run_rr, run_throughput, run_udp, spawn_forward, spawn_udp_echo, BenchError,
    CloseMode, CpsConfig, Direction, IdleConfig, ProxyHeader, Report, RrConfig, Server, ServerKind,
    TableRows, ThroughputConfig, TlsOptions, UdpConfig,
};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard-bench",
    version,
    about = "L4 load generator and fast backends (echo, sink, source)",
    after_help = "Exit status: 0 when no error was counted, 1 when any was, 2 on bad usage.\n\
                  Pin with `taskset -c N switchyard-bench ...`; this tool does not pin itself."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run backends until SIGINT/SIGTERM (or --duration): echo, sink and/or source.
    Serve(ServeArgs),
    /// Bulk transfer: Gbit/s with every byte verified.
    Throughput(ThroughputArgs),
    /// Request/response latency (closed loop, or open loop with --rate).
    Rr(RrArgs),
    /// Connections per second: connect, small verified exchange, close.
    Cps(CpsArgs),
    /// Hold N idle connections, then check and close them.
    Idle(IdleArgs),
    /// Datagrams at a fixed rate through a UDP echo: loss and round-trip time.
    Udp(UdpArgs),
    /// The floor forwarder: a blocking read/write thread per direction, as a reference for
    /// how much of a proxy's cost is the kernel's (not a proxy to deploy).
    Forward(ForwardArgs),
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// Address to listen on (repeat for several forwarders, each with its own --target).
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Vec<SocketAddr>,
    /// Address the connections of the matching --listen are forwarded to.
    #[arg(long, value_name = "ADDR", required = true)]
    target: Vec<SocketAddr>,
    /// Buffer per direction (e.g. 64k, 1m).
    #[arg(long, default_value = "1m", value_parser = parse_size)]
    buffer_size: usize,
    /// Stop after this long (seconds, or 500ms / 2s / 1m); default: until a signal.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Echo server address (port 0 picks one; the address is printed).
    #[arg(long, value_name = "ADDR")]
    echo: Option<SocketAddr>,
    /// Sink server address.
    #[arg(long, value_name = "ADDR")]
    sink: Option<SocketAddr>,
    /// Source server address.
    #[arg(long, value_name = "ADDR")]
    source: Option<SocketAddr>,
    /// UDP echo server address.
    #[arg(long, value_name = "ADDR")]
    udp_echo: Option<SocketAddr>,
    /// Stop after this long (seconds, or 500ms / 2s / 1m); default: until a signal.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Write final server counters as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Serve echo, sink and source over TLS 1.3 with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct TlsArgs {
    /// TLS 1.3 on every connection (TLS13_AES_128_GCM_SHA256, X25519); needs --tls-ca.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// Trust roots (PEM) the server's chain must lead to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that ask for one.
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Name sent as SNI and checked against the server's certificate [default: localhost].
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_sni: Option<String>,
    /// Offer a ticket from the run's session cache on every connection (resumed handshakes);
    /// without it every handshake is full.
    #[arg(long, requires = "tls")]
    tls_resume: bool,
}

impl TlsArgs {
    /// The TLS options, or `None` without --tls.
    fn options(&self) -> Option<TlsOptions> {
        let ca = self.tls_ca.as_ref().filter(|_| self.tls)?;
        let mut opts = TlsOptions::new(ca);
        opts.client_cert = self.tls_cert.clone().zip(self.tls_key.clone());
        if let Some(sni) = &self.tls_sni {
            opts.sni = sni.clone();
        }
        opts.resume = self.tls_resume;
        Some(opts)
    }
}

#[derive(Debug, Args)]
struct Common {
    /// Address to connect to (the proxy, or a backend directly).
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// Write the report as JSON to FILE (schema: bench/README.md).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Connect timeout (seconds, or 500ms / 2s).
    #[arg(long, default_value = "2", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Read/write timeout: a stall longer than this is a `timeout` error.
    #[arg(long, default_value = "5", value_parser = parse_duration)]
    io_timeout: Duration,
    /// No progress line on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tls: TlsArgs,
    /// Parallel connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Run time (seconds, or 500ms / 2s / 1m).
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    duration: Duration,
    /// Bytes per write (64, 16k, 1m, 256KiB).
    #[arg(long, default_value = "64k", value_parser = parse_size)]
    size: usize,
    /// up: to a sink; down: from a source; both: through an echo.
    #[arg(long, value_enum, default_value_t = DirectionArg::Both)]
    direction: DirectionArg,
}

#[derive(Debug, Args)]
struct RrArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tls: TlsArgs,
    /// Parallel connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Request and response size (64, 4k, ...).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    msg: usize,
    /// Total requests/s over all connections (open loop); omit for closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Run time.
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    duration: Duration,
    /// Send a PROXY protocol header of this version first on every connection.
    #[arg(long, value_enum)]
    proxy_protocol: Option<ProxyArg>,
}

#[derive(Debug, Args)]
struct CpsArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tls: TlsArgs,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Run time.
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    duration: Duration,
    /// Request size.
    #[arg(long, default_value = "64", value_parser = parse_size)]
    msg: usize,
    /// How the client closes: rst (no TIME_WAIT) or fin (waits for the peer's FIN).
    #[arg(long, value_enum, default_value_t = CloseArg::Rst)]
    close: CloseArg,
    /// Connections started per second, all together (paced; default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Send a PROXY protocol header of this version first on every connection.
    #[arg(long, value_enum)]
    proxy_protocol: Option<ProxyArg>,
}

#[derive(Debug, Args)]
struct UdpArgs {
    /// Address to send to (the proxy's UDP listener, or a UDP echo directly).
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,
    /// Sockets (client ports), each a session to a proxy.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Datagram size in bytes (16 to 65507).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    size: usize,
    /// Datagrams per second, all sessions together.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Sending time.
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    duration: Duration,
    /// How long to wait for late echoes after the last send.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    drain: Duration,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// How long to hold them.
    #[arg(long, default_value = "3", value_parser = parse_duration)]
    hold: Duration,
    /// How the client closes after the hold.
    #[arg(long, value_enum, default_value_t = CloseArg::Fin)]
    close: CloseArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DirectionArg {
    Up,
    Down,
    Both,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProxyArg {
    V1,
    V2,
}

impl From<ProxyArg> for ProxyHeader {
    fn from(p: ProxyArg) -> ProxyHeader {
        match p {
            ProxyArg::V1 => ProxyHeader::V1,
            ProxyArg::V2 => ProxyHeader::V2,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CloseArg {
    Rst,
    Fin,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Direction {
        match d {
            DirectionArg::Up => Direction::Up,
            DirectionArg::Down => Direction::Down,
            DirectionArg::Both => Direction::Both,
        }
    }
}

impl From<CloseArg> for CloseMode {
    fn from(c: CloseArg) -> CloseMode {
        match c {
            CloseArg::Rst => CloseMode::Rst,
            CloseArg::Fin => CloseMode::Fin,
        }
    }
}

/// `64`, `16k`, `16K`, `16KiB`, `1m`, `1MiB`: binary multiples.
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use k, m or g)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

/// `3`, `2.5`, `500ms`, `2s`, `1m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?}"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|_| format!("not a valid duration: {s:?}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Throughput(a) => {
            let cfg = ThroughputConfig {
                target: a.common.target,
                conns: a.conns,
                duration: a.duration,
                size: a.size,
                direction: a.direction.into(),
                connect_timeout: a.common.connect_timeout,
                io_timeout: a.common.io_timeout,
                progress: !a.common.quiet,
                tls: a.tls.options(),
            };
            finish(run_throughput(&cfg), &a.common)
        }
        Command::Rr(a) => {
            let cfg = RrConfig {
                target: a.common.target,
                conns: a.conns,
                msg: a.msg,
                rate: a.rate,
                duration: a.duration,
                connect_timeout: a.common.connect_timeout,
                io_timeout: a.common.io_timeout,
                progress: !a.common.quiet,
                tls: a.tls.options(),
                proxy_header: a.proxy_protocol.map(ProxyHeader::from),
            };
            finish(run_rr(&cfg), &a.common)
        }
        Command::Cps(a) => {
            let cfg = CpsConfig {
                target: a.common.target,
                concurrency: a.concurrency,
                duration: a.duration,
                msg: a.msg,
                close: a.close.into(),
                connect_timeout: a.common.connect_timeout,
                io_timeout: a.common.io_timeout,
                progress: !a.common.quiet,
                tls: a.tls.options(),
                proxy_header: a.proxy_protocol.map(ProxyHeader::from),
                rate_per_s: a.rate.filter(|r| *r > 0.0),
            };
            finish(run_cps(&cfg), &a.common)
        }
        Command::Idle(a) => {
            let mut cfg = IdleConfig::new(a.common.target);
            cfg.conns = a.conns;
            cfg.hold = a.hold;
            cfg.close = a.close.into();
            cfg.connect_timeout = a.common.connect_timeout;
            cfg.io_timeout = a.common.io_timeout;
            cfg.progress = !a.common.quiet;
            finish(run_idle(&cfg), &a.common)
        }
        Command::Udp(a) => {
            let cfg = UdpConfig {
                target: a.target,
                sessions: a.sessions,
                size: a.size,
                rate: a.rate,
                duration: a.duration,
                drain: a.drain,
            };
            let common = Common {
                target: a.target,
                json: a.json,
                connect_timeout: Duration::from_secs(2),
                io_timeout: Duration::from_secs(5),
                quiet: true,
            };
            finish(run_udp(&cfg), &common)
        }
        Command::Forward(a) => forward(a),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("switchyard-bench: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Prints the table, writes the JSON, and turns the error count into the exit status.
fn finish<P, R>(
    report: Result<Report<P, R>, BenchError>,
    common: &Common,
) -> Result<ExitCode, String>
where
    P: TableRows + Serialize,
    R: TableRows + Serialize,
{
    let report = report.map_err(|e| e.to_string())?;
    print!("{}", report.table());
    if let Some(path) = &common.json {
        report
            .write_json(path)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Blocks until SIGINT or SIGTERM, or until `duration` has passed.
fn wait_for_signal(duration: Option<Duration>) -> Result<(), String> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("install signal handler: {e}"))?;
    }
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) && duration.is_none_or(|d| start.elapsed() < d) {
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn forward(a: ForwardArgs) -> Result<ExitCode, String> {
    if a.listen.len() != a.target.len() {
        return Err("forward needs one --target per --listen".into());
    }
    let mut forwarders = Vec::new();
    for (listen, target) in a.listen.iter().zip(&a.target) {
        let fwd = spawn_forward(*listen, *target, a.buffer_size)
            .map_err(|e| format!("forward on {listen}: {e}"))?;
        println!("forward listening on {} -> {target}", fwd.local_addr());
        forwarders.push(fwd);
    }
    wait_for_signal(a.duration)?;
    let mut failures = 0;
    for fwd in forwarders {
        failures += fwd.connect_failures();
        println!(
            "forward {}: {} connections, {} connect failures",
            fwd.local_addr(),
            fwd.connections(),
            fwd.connect_failures()
        );
        fwd.stop();
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn serve(a: ServeArgs) -> Result<ExitCode, String> {
    let wanted = [
        (ServerKind::Echo, a.echo),
        (ServerKind::Sink, a.sink),
        (ServerKind::Source, a.source),
    ];
    let tls = match a.tls_cert.as_deref().zip(a.tls_key.as_deref()) {
        Some((cert, key)) => {
            Some(switchyard_bench::server_config(cert, key).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut servers: Vec<Server> = Vec::new();
    let udp = match a.udp_echo {
        Some(addr) => {
            let echo = spawn_udp_echo(addr).map_err(|e| format!("udp echo on {addr}: {e}"))?;
            println!("udp-echo listening on {}", echo.local_addr());
            Some(echo)
        }
        None => None,
    };
    for (kind, addr) in wanted {
        if let Some(addr) = addr {
            let server = match &tls {
                None => Server::spawn(kind, addr),
                Some(config) => Server::spawn_tls(kind, addr, Arc::clone(config)),
            }
            .map_err(|e| format!("{} server on {addr}: {e}", kind.name()))?;
            let over = if tls.is_some() { " (TLS)" } else { "" };
            println!("{} listening on {}{over}", kind.name(), server.local_addr());
            servers.push(server);
        }
    }
    if servers.is_empty() && udp.is_none() {
        return Err("serve needs at least one of --echo, --sink, --source, --udp-echo".into());
    }
    wait_for_signal(a.duration)?;
    let mut all = serde_json::Map::new();
    if let Some(echo) = udp {
        let addr = echo.local_addr();
        let (datagrams, bytes) = echo.stop();
        println!("udp-echo {addr}: datagrams {datagrams}  bytes {bytes}");
        all.insert(
            "udp_echo".into(),
            serde_json::json!({ "addr": addr.to_string(), "datagrams": datagrams, "bytes": bytes }),
        );
    }
    for server in servers {
        let kind = server.kind();
        let addr = server.local_addr();
        let stats = server.stop();
        println!(
            "{} {addr}: connections {}  received {} B  sent {} B  resets {}  errors {}  \
             TLS handshakes {} (resumed {})",
            kind.name(),
            stats.connections_total,
            stats.bytes_received,
            stats.bytes_sent,
            stats.resets,
            stats.errors,
            stats.tls_handshakes,
            stats.tls_resumed
        );
        all.insert(
            kind.name().to_string(),
            serde_json::json!({ "addr": addr.to_string(), "stats": stats }),
        );
    }
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(all))
            .map_err(|e| e.to_string())?;
        std::fs::write(&path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("16k"), Ok(16384));
        assert_eq!(parse_size("256KiB"), Ok(262144));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "switchyard-bench",
            "rr",
            "--target",
            "127.0.0.1:9000",
            "--rate",
            "1000",
            "--msg",
            "4k",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Rr(RrArgs { msg: 4096, .. })));
    }
}
