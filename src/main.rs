//! The `switchyard` binary: parses the command line and wires the crates together. No logic
//! lives here.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use switchyard_control::controller::{self, RunOptions};
use switchyard_dataplane::worker::wait::{Placement, TaskRun, WaitConfig};
use switchyard_dataplane::worker::{Limits, RelayMode};

mod demo;
mod flags;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "A thread-per-core L4 proxy on io_uring, configured like Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy with an Envoy v3 bootstrap file (YAML or JSON, by extension).
    Run {
        /// The bootstrap file. SIGHUP, or a change of its contents, reloads it.
        #[arg(short = 'c', long = "config-path", alias = "config")]
        config: PathBuf,
        /// Workers (one per core, pinned), 1 to 1024; default: one per CPU this process may
        /// use.
        #[arg(long, allow_negative_numbers = true,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(flags::MAX_CONCURRENCY)))]
        concurrency: Option<u32>,
        /// Log level: trace, debug, info, warn, error (or a tracing filter).
        #[arg(short = 'l', long, default_value = "info")]
        log_level: String,
        /// Seconds open connections may finish after SIGTERM/SIGINT before they are closed
        /// (0 to 4294967295, fractions allowed).
        #[arg(long = "drain-time-s", value_name = "SECONDS", default_value = "5",
              allow_hyphen_values = true,
              value_parser = flags::drain_time)]
        drain_time: Duration,
        /// Connection slots per worker (1 to 1048576).
        #[arg(long, allow_negative_numbers = true,
              default_value_t = Limits::default().max_connections_per_worker as u32,
              value_parser = clap::value_parser!(u32)
                  .range(1..=i64::from(flags::MAX_CONNECTIONS_PER_WORKER)))]
        max_connections_per_worker: u32,
        /// How workers relay bytes: buffer-ring (recv into provided buffers, then send) or
        /// splice (socket -> pipe -> socket; two more descriptors per direction).
        #[arg(long, default_value_t = RelayMode::default(), value_parser = parse_relay_mode)]
        relay_mode: RelayMode,
        /// Size of each relay buffer (buffer-ring) or pipe (splice), in KiB (4 to 4096).
        #[arg(long, default_value_t = Limits::default().buffer_size_bytes / 1024,
              allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(4..=4096))]
        buffer_size_kib: u32,
        /// Size of the large relay buffers a bulk direction moves to, in KiB (0 disables
        /// them, else up to 16384; buffer-ring mode only).
        #[arg(long, default_value_t = Limits::default().large_buffer_size_bytes / 1024,
              allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=16384))]
        large_buffer_size_kib: u32,
        /// UDP sessions per worker (a datagram from a new source beyond this is dropped and
        /// counted in udp.<prefix>.downstream_sess_table_full).
        #[arg(long, default_value_t = Limits::default().udp_sessions_per_worker as u32,
              allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
        udp_sessions_per_worker: u32,
        /// Overrides the bootstrap's `node.id` (as Envoy's --service-node).
        #[arg(long)]
        service_node: Option<String>,
        /// Overrides the bootstrap's `node.cluster` (as Envoy's --service-cluster).
        #[arg(long)]
        service_cluster: Option<String>,
        /// Keep the last accepted xDS resources here, and serve them at start before the
        /// management server answers.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Also serve readiness alone on this port, on all addresses (`GET /ready` as the
        /// admin answers it, `GET /healthz/ready` as Istio's 15021 does), for probes that
        /// must not share the admin. Off by default.
        #[arg(long, allow_negative_numbers = true,
              value_parser = clap::value_parser!(u16).range(1..))]
        readiness_port: Option<u16>,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Check a bootstrap file and exit: 0 when valid, 1 with the bad field's path when not.
    Validate {
        /// The bootstrap file.
        #[arg(short = 'c', long = "config-path", alias = "config")]
        config: PathBuf,
    },
    /// The node's iptables rules that send TCP to the proxy (as istio-init does for a pod).
    Capture {
        #[command(subcommand)]
        action: CaptureAction,
    },
    /// Start echo backends, the gateway with an embedded config, drive traffic through it and
    /// print a results table.
    Demo {
        /// Seconds per measurement (1 to 86400).
        #[arg(long, default_value_t = 3, allow_negative_numbers = true,
              value_parser = clap::value_parser!(u64).range(1..=flags::MAX_DEMO_DURATION_S))]
        duration_s: u64,
    },
}

#[derive(Subcommand, Debug)]
enum CaptureAction {
    /// Install (or replace) the rules; prints them.
    Install(CaptureArgs),
    /// Remove every rule and chain of ours; prints what was removed.
    Remove(CaptureArgs),
    /// Print our rules with their packet counters.
    Status(CaptureArgs),
}

#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// Outbound TCP goes to this port.
    #[arg(
        short = 'p',
        long,
        default_value_t = 15001,
        allow_negative_numbers = true
    )]
    proxy_port: u16,
    /// Also capture TCP for local addresses, to --inbound-port.
    #[arg(long)]
    inbound: bool,
    /// Inbound TCP goes to this port (with --inbound).
    #[arg(long, default_value_t = 15006, allow_negative_numbers = true)]
    inbound_port: u16,
    /// The proxy's UID: its traffic is never captured.
    #[arg(
        short = 'u',
        long,
        default_value_t = 1337,
        allow_negative_numbers = true
    )]
    proxy_uid: u32,
    /// The proxy's GID: its traffic is never captured.
    #[arg(
        short = 'g',
        long,
        default_value_t = 1337,
        allow_negative_numbers = true
    )]
    proxy_gid: u32,
    /// The mark of the proxy's sockets: never captured.
    #[arg(long, default_value_t = 1337, allow_negative_numbers = true)]
    proxy_mark: u32,
    /// Never capture traffic to this address or CIDR (repeatable).
    #[arg(long)]
    exclude_cidr: Vec<switchyard_capture::Cidr>,
    /// Never capture traffic to this destination port (repeatable).
    #[arg(long, allow_negative_numbers = true)]
    exclude_port: Vec<u16>,
    /// Work in this network namespace (`ip netns`), not the current one.
    #[arg(long)]
    netns: Option<String>,
    /// iptables backend: auto (the one in use), nft or legacy.
    #[arg(long, default_value = "auto")]
    backend: switchyard_capture::Backend,
    /// How forwarded (pod) TCP reaches the proxy: redirect (nat REDIRECT, SO_ORIGINAL_DST)
    /// or tproxy (mangle TPROXY and policy routing: destination kept, and with the
    /// listener's original_src the endpoint sees the client's own address).
    #[arg(long, default_value = "redirect")]
    mode: switchyard_capture::Mode,
    /// tproxy: the mark that routes a packet to the local stack (must differ from
    /// --proxy-mark).
    #[arg(long, default_value_t = 1338, allow_negative_numbers = true)]
    tproxy_mark: u32,
    /// tproxy: the routing table holding `local 0.0.0.0/0 dev lo`.
    #[arg(long, default_value_t = 133, allow_negative_numbers = true)]
    tproxy_table: u32,
}

impl CaptureArgs {
    fn config(self) -> switchyard_capture::CaptureConfig {
        switchyard_capture::CaptureConfig {
            outbound_port: self.proxy_port,
            inbound_port: self.inbound_port,
            inbound: self.inbound,
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            proxy_mark: self.proxy_mark,
            exclude_cidrs: self.exclude_cidr,
            exclude_ports: self.exclude_port,
            netns: self.netns,
            backend: self.backend,
            mode: self.mode,
            tproxy_mark: self.tproxy_mark,
            tproxy_table: self.tproxy_table,
            ..Default::default()
        }
    }
}

fn capture(action: CaptureAction) -> ExitCode {
    use switchyard_capture as capture;
    let result = match action {
        CaptureAction::Install(a) => capture::install(&a.config()).map(|r| r.join("\n") + "\n"),
        CaptureAction::Remove(a) => capture::remove(&a.config()).map(|r| r.join("\n") + "\n"),
        CaptureAction::Status(a) => capture::status(&a.config()),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard capture: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_relay_mode(s: &str) -> Result<RelayMode, String> {
    s.parse()
}

fn parse_placement(s: &str) -> Result<Placement, String> {
    s.parse()
}

fn parse_taskrun(s: &str) -> Result<TaskRun, String> {
    s.parse()
}

/// How workers wait for completions (`switchyard run`): the placement's policy, with these
/// flags on top.
#[derive(clap::Args, Debug)]
struct WaitFlags {
    /// Whether workers have their cores to themselves (own), share them with the
    /// processes they serve (shared), or judge it from how long they wait for their CPU
    /// (auto: at start and every second). Picks how a worker waits for completions.
    #[arg(long, default_value_t = Placement::Auto, value_parser = parse_placement)]
    placement: Placement,
    /// Before sleeping, a worker with its own core looks for completions this many
    /// microseconds without a system call (0 to 1000; default: the own-core policy's).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=1000))]
    busy_poll_us: Option<u32>,
    /// A sleeping worker wakes once this many completions are pending, or after
    /// --min-wait-us with at least one (1 to 4096; default: the placement's policy).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=4096))]
    wait_batch: Option<u32>,
    /// The most a completion waits for --wait-batch to fill, in microseconds (0 to 1000;
    /// 0: wake at the first completion; default: the placement's policy).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(0..=1000))]
    min_wait_us: Option<u32>,
    /// When the kernel runs completion work: defer (only when the worker waits) or coop
    /// (at its next system call or wake-up).
    #[arg(long, default_value_t = TaskRun::Defer, value_parser = parse_taskrun)]
    taskrun: TaskRun,
    /// Register each worker's ring descriptor, so no io_uring_enter looks it up.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    registered_ring: bool,
}

impl From<WaitFlags> for WaitConfig {
    /// The defaults per placement, with the flags given on top.
    fn from(flags: WaitFlags) -> WaitConfig {
        let mut config = WaitConfig {
            placement: flags.placement,
            taskrun: flags.taskrun,
            registered_ring: flags.registered_ring,
            ..WaitConfig::default()
        };
        if let Some(us) = flags.busy_poll_us {
            config.own.busy_poll_us = us;
        }
        for policy in [&mut config.own, &mut config.shared] {
            if let Some(n) = flags.wait_batch {
                policy.wait_batch = n;
            }
            if let Some(us) = flags.min_wait_us {
                policy.min_wait_us = us;
            }
        }
        config
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            concurrency,
            log_level,
            drain_time,
            max_connections_per_worker,
            relay_mode,
            buffer_size_kib,
            large_buffer_size_kib,
            udp_sessions_per_worker,
            service_node,
            service_cluster,
            state_dir,
            readiness_port,
            wait,
        } => {
            init_logging(&log_level);
            let limits = Limits {
                max_connections_per_worker: max_connections_per_worker as usize,
                relay_mode,
                buffer_size_bytes: buffer_size_kib * 1024,
                large_buffer_size_bytes: large_buffer_size_kib * 1024,
                udp_sessions_per_worker: udp_sessions_per_worker as usize,
                wait: wait.into(),
                ..Limits::default()
            };
            let options = RunOptions {
                config_path: config,
                concurrency: concurrency.map(|n| n as usize),
                drain_time,
                limits,
                command_line: std::env::args().collect(),
                service_node,
                service_cluster,
                state_dir,
                readiness_port,
            };
            match controller::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config } => match switchyard_control::load::load_rib(&config) {
            Ok(_) => {
                println!("configuration '{}' OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("configuration '{}' is invalid: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Capture { action } => capture(action),
        Command::Demo { duration_s } => {
            init_logging("warn");
            match demo::run(Duration::from_secs(duration_s)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
