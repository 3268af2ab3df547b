//! The control thread: loads the config, compiles FIBs, publishes them, reloads, drains.
//!
//! Guarantees:
//! - **Last known good.** A reload (SIGHUP, or a change of the config file's contents) that
//!   fails to parse, validate, compile or open its listeners changes nothing: the error is
//!   logged with the path of the bad field and the previous FIB keeps serving.
//! - **One publication per accepted config**, with a generation one higher than the last; an
//!   unchanged config is not republished.
//! - **xDS.** With `dynamic_resources`, an ADS client thread ([`crate::xds::client`])
//!   delivers validated changes; each is merged with the bootstrap's static resources
//!   ([`crate::dynamic`]) and published like a reload. The last accepted state keeps serving
//!   while the management server is away.
//! - **Orderly stop.** SIGTERM, SIGINT or `POST /quitquitquit`: `/ready` turns 503, listeners
//!   stop accepting, open connections get up to the drain time (a second stop signal ends it
//!   at once), the rest are closed, and once the workers have stopped every connection's
//!   access-log record is written and the sinks flushed before [`run`] returns.

use crate::admin::xds_dump::XdsTypeDumps;
use crate::admin::{self, AdminAction, AdminState};
use crate::compile::{compile, CompileCache};
use crate::dynamic::DynamicState;
use crate::error::ConfigError;
use crate::health::HealthThread;
use crate::load::load_rib;
use crate::rib::{Bind, EndpointConfig, Rib};
use crate::state_dir::{Persisted, StateWriter};
use crate::stats::StatsRegistry;
use crate::xds::client::{self as xds_client, ClientConfig, Command, Event};
use crate::xds::{self, Held};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use switchyard_dataplane::accesslog::{AccessLogQueues, AccessLogWriter};
use switchyard_dataplane::plane::{DataPlane, PlaneConfig, PlaneError};
use switchyard_dataplane::worker::Limits;

/// How often the config file is checked for changes.
const FILE_POLL_INTERVAL_MS: u64 = 500;
/// Access-log records each worker may queue before records are dropped.
const ACCESS_LOG_QUEUE_RECORDS: usize = 16 * 1024;

/// What `switchyard run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The bootstrap file.
    pub config_path: PathBuf,
    /// Workers; `None` means one per CPU the process may use.
    pub concurrency: Option<usize>,
    /// How long connections may finish after a stop was asked for.
    pub drain_time: Duration,
    /// Data-plane sizes.
    pub limits: Limits,
    /// The process's command line, for `/server_info`.
    pub command_line: Vec<String>,
    /// `--service-node` / `--service-cluster`: override `node.id` / `node.cluster`.
    pub service_node: Option<String>,
    pub service_cluster: Option<String>,
    /// `--state-dir`: where the last accepted xDS resources are kept for a warm start.
    pub state_dir: Option<PathBuf>,
    /// `--readiness-port`: also serve readiness alone (`/ready`, `/healthz/ready`) on this
    /// port, on all addresses, like Istio's 15021.
    pub readiness_port: Option<u16>,
}

/// Why `run` failed. Each variant says which side is at fault.
#[derive(Debug)]
pub enum RunError {
    /// The config is invalid (the control plane's input).
    Config(ConfigError),
    /// The data plane could not start or open a listener.
    DataPlane(PlaneError),
    /// The admin address could not be bound.
    Admin(std::io::Error),
    /// The `--readiness-port` could not be bound.
    Readiness(u16, std::io::Error),
    /// Signal handlers could not be installed.
    Signals(std::io::Error),
    /// The xDS client thread could not start.
    Xds(std::io::Error),
    /// The `--state-dir` writer thread could not start.
    StateDir(std::io::Error),
    /// The health-check thread could not start.
    Health(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "invalid config: {e}"),
            RunError::DataPlane(e) => write!(f, "{e}"),
            RunError::Admin(e) => write!(f, "admin: cannot listen: {e}"),
            RunError::Readiness(port, e) => {
                write!(
                    f,
                    "--readiness-port {port}: cannot listen on 0.0.0.0:{port}: {e}"
                )
            }
            RunError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
            RunError::Xds(e) => write!(f, "xDS client: cannot start: {e}"),
            RunError::StateDir(e) => write!(f, "state dir writer: cannot start: {e}"),
            RunError::Health(e) => write!(f, "health checker: cannot start: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Events the control loop reacts to.
enum ControlEvent {
    Signal(i32),
    Admin(AdminAction),
    Xds(Event),
}

/// Identity of the file's contents, to notice changes.
#[derive(PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        hash,
    })
}

/// The CPUs workers run on: `concurrency` workers over the allowed CPUs, in order.
pub fn worker_cpus(concurrency: Option<usize>) -> Vec<usize> {
    let allowed = switchyard_dataplane::allowed_cpus();
    let n = concurrency.unwrap_or(allowed.len()).max(1);
    (0..n).map(|i| allowed[i % allowed.len()]).collect()
}

/// Runs the proxy until it is told to stop.
pub fn run(options: RunOptions) -> Result<(), RunError> {
    let (mut rib, loaded) = load_rib(&options.config_path).map_err(RunError::Config)?;
    apply_node_overrides(&mut rib, &options);
    let cpus = worker_cpus(options.concurrency);
    let workers = cpus.len();
    let fd_limit = switchyard_dataplane::raise_fd_limit();
    tracing::info!(workers, fd_limit, relay_mode = %options.limits.relay_mode, "starting");

    let stats = Arc::new(StatsRegistry::new(workers));
    let queues = Arc::new(AccessLogQueues::new(workers, ACCESS_LOG_QUEUE_RECORDS));
    let writer = AccessLogWriter::spawn(queues.clone());
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: cpus.clone(),
            pin: true,
            limits: options.limits,
            drain_time: options.drain_time,
        },
        stats.server(),
        queues,
    )
    .map_err(RunError::DataPlane)?;

    let mut cache = CompileCache::new();
    let fib = Arc::new(compile(&rib, 1, &stats, &mut cache));
    let health =
        HealthThread::spawn(fib.clone(), stats.health_signal()).map_err(RunError::Health)?;
    if !health.wait_first_checks() {
        tracing::warn!("some hosts' first health check did not finish in time; serving anyway");
    }
    plane.publish(fib).map_err(RunError::DataPlane)?;

    let (events_tx, events_rx) = mpsc::channel();
    let admin_state = start_admin(&rib, &plane, &stats, &options, events_tx.clone())?;
    *admin_state
        .config_dump
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = loaded.normalized;
    // With xDS, INITIALIZING (/ready 503) until the first fetch is in (see `Init`).
    let init = Init::new(rib.dynamic.as_ref());
    admin_state.server_state.store(
        if init.done() {
            admin::STATE_LIVE
        } else {
            admin::STATE_INITIALIZING
        },
        Ordering::Release,
    );
    let warm = load_state_dir(&options, &rib);
    let held = warm.as_ref().map(|(p, _)| p.held()).unwrap_or_default();
    let xds = match &rib.dynamic {
        Some(_) => {
            stats.xds().enabled.store(true, Ordering::Relaxed);
            for c in rib.clusters.iter().filter(|c| c.eds_service.is_some()) {
                stats.xds().eds(&c.name);
            }
            Some(start_xds(&rib, held, events_tx.clone())?)
        }
        None => None,
    };
    let cut_drain = Arc::new(AtomicBool::new(false));
    install_signals(events_tx, cut_drain.clone())?;
    tracing::info!(
        generation = 1,
        listeners = rib.listeners.len(),
        clusters = rib.clusters.len(),
        admin = %rib.admin.address.as_ref().map_or("none".to_string(), |a| a.to_string()),
        "config loaded; serving"
    );

    if xds.is_some() {
        admin_state
            .xds_dump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0 = Some(XdsTypeDumps::default());
    }
    let state_writer = match (&options.state_dir, &xds) {
        (Some(dir), Some(_)) => Some(StateWriter::spawn(dir.clone()).map_err(RunError::StateDir)?),
        _ => None,
    };
    let mut control = Control {
        options,
        statics: rib.clone(),
        dynamic: DynamicState::default(),
        persisted: Persisted::default(),
        state_writer,
        xds,
        init,
        rib,
        generation: 1,
        stats,
        cache,
        plane,
        health,
        admin: admin_state,
    };
    control.warm_start(warm);
    control.serve(events_rx);
    let Control {
        plane,
        health,
        admin,
        options,
        xds,
        state_writer,
        persisted,
        ..
    } = control;
    if let Some(w) = state_writer {
        w.finish(&persisted);
    }
    if let Some(x) = xds {
        let _ = x.commands.send(Command::Stop);
        let _ = x.thread.join();
    }
    admin
        .server_state
        .store(admin::STATE_DRAINING, Ordering::Release);
    tracing::info!(drain_time_s = options.drain_time.as_secs_f64(), "draining");
    plane.shutdown_cut_by(options.drain_time, &cut_drain);
    health.stop();
    writer.stop();
    tracing::info!("stopped");
    Ok(())
}

/// `--service-node` / `--service-cluster` win over the bootstrap's `node`, as in Envoy.
fn apply_node_overrides(rib: &mut Rib, options: &RunOptions) {
    if let Some(id) = &options.service_node {
        rib.node.id = id.clone();
    }
    if let Some(cluster) = &options.service_cluster {
        rib.node.cluster = cluster.clone();
    }
}

/// Envoy's initialization with xDS: the server is INITIALIZING (`/ready` 503) until the first
/// clusters have arrived with the endpoints of their EDS clusters, and then the first
/// listeners; or until `initial_fetch_timeout` has passed since start (then it goes LIVE with
/// what it has, and says so).
struct Init {
    /// Still waiting for the first CDS response.
    clusters: bool,
    /// Still waiting for the first LDS response.
    listeners: bool,
    /// EDS service names of the first clusters whose first assignment has not arrived.
    endpoints: std::collections::BTreeSet<String>,
    /// When waiting stops regardless (`None`: wait as long as it takes).
    deadline: Option<Instant>,
}

impl Init {
    fn new(dynamic: Option<&crate::rib::DynamicConfig>) -> Init {
        Init {
            clusters: dynamic.is_some_and(|d| d.cds),
            listeners: dynamic.is_some_and(|d| d.lds),
            endpoints: Default::default(),
            deadline: dynamic
                .and_then(|d| d.initial_fetch_timeout)
                .map(|t| Instant::now() + t),
        }
    }

    fn done(&self) -> bool {
        !self.clusters && !self.listeners && self.endpoints.is_empty()
    }

    /// Clusters arrived; `eds` are the EDS services to wait for if these are the first.
    fn clusters_arrived(&mut self, eds: &[String]) {
        if self.clusters {
            self.clusters = false;
            self.endpoints = eds.iter().cloned().collect();
        }
    }

    /// Endpoint assignments arrived for these services.
    fn endpoints_arrived<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        for n in names {
            self.endpoints.remove(n);
        }
    }

    fn listeners_arrived(&mut self) {
        self.listeners = false;
    }
}

/// The running ADS client.
struct Xds {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts the ADS client for `rib.dynamic` and forwards its events to the control loop.
/// With `--state-dir` and xDS: what the last run had accepted, if anything readable.
fn load_state_dir(options: &RunOptions, rib: &Rib) -> Option<(Persisted, DynamicState)> {
    let (Some(dir), Some(_)) = (&options.state_dir, &rib.dynamic) else {
        return None;
    };
    match Persisted::load(dir) {
        Ok(None) => {
            tracing::info!(dir = %dir.display(), "state dir: nothing saved yet; cold start");
            None
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "state dir unreadable; cold start");
            None
        }
        Ok(found) => found,
    }
}

fn start_xds(rib: &Rib, held: Held, events: Sender<ControlEvent>) -> Result<Xds, RunError> {
    let dynamic = rib.dynamic.as_ref().expect("called with dynamic_resources");
    let server = rib
        .cluster(&dynamic.ads_cluster)
        .and_then(|c| c.endpoints.first())
        .map(|e| e.address)
        .expect("convert checked: the ADS cluster is static with an endpoint");
    let (xds_tx, xds_rx) = mpsc::channel();
    let mut config = ClientConfig::new(server, rib.node.clone(), dynamic.api);
    config.held = held;
    config.reserved_addresses = rib
        .listeners
        .iter()
        .map(|l| (format!("static listener '{}'", l.name), l.bind()))
        .chain(
            rib.admin
                .socket()
                .map(|a| ("the admin".to_string(), Bind::tcp(a))),
        )
        .collect();
    let (commands, thread) = xds_client::spawn(config, xds_tx).map_err(RunError::Xds)?;
    std::thread::Builder::new()
        .name("xds-events".into())
        .spawn(move || {
            for e in xds_rx {
                if events.send(ControlEvent::Xds(e)).is_err() {
                    break;
                }
            }
        })
        .map_err(RunError::Xds)?;
    tracing::info!(%server, api = ?dynamic.api, "xDS: subscribing over ADS");
    Ok(Xds { commands, thread })
}

fn start_admin(
    rib: &Rib,
    plane: &DataPlane,
    stats: &Arc<StatsRegistry>,
    options: &RunOptions,
    events: Sender<ControlEvent>,
) -> Result<Arc<AdminState>, RunError> {
    let (actions_tx, actions_rx) = mpsc::channel::<AdminAction>();
    std::thread::Builder::new()
        .name("admin-actions".into())
        .spawn(move || {
            for action in actions_rx {
                if events.send(ControlEvent::Admin(action)).is_err() {
                    break;
                }
            }
        })
        .map_err(RunError::Admin)?;
    let state = Arc::new(AdminState::new(
        stats.clone(),
        plane.fib_view(),
        plane.worker_count(),
        options.command_line.clone(),
        actions_tx,
    ));
    // Without `admin.address` no admin listener is opened, as in Envoy; the state is kept
    // for readiness (`--readiness-port`) and the control thread.
    let listener = rib
        .admin
        .address
        .as_ref()
        .map(admin::AdminListener::bind)
        .transpose()
        .map_err(RunError::Admin)?;
    if listener.is_none() {
        tracing::info!("no admin.address: no admin listener");
    }
    let readiness = options
        .readiness_port
        .map(|port| {
            std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port))
                .map_err(|e| RunError::Readiness(port, e))
        })
        .transpose()?;
    if listener.is_some() || readiness.is_some() {
        admin::spawn(listener, readiness, state.clone()).map_err(RunError::Admin)?;
    }
    Ok(state)
}

/// The `signals` thread. A first stop signal (SIGTERM, SIGINT) asks for an orderly stop; a
/// second cuts the drain short (open connections are closed now, their access-log lines
/// still written); a third exits at once, writing nothing more.
fn install_signals(
    events: Sender<ControlEvent>,
    cut_drain: Arc<AtomicBool>,
) -> Result<(), RunError> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .map_err(RunError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                if signal != SIGHUP {
                    stops += 1;
                    if stops == 2 {
                        tracing::warn!(
                            "second stop signal: closing open connections now (a third exits at once)"
                        );
                        cut_drain.store(true, Ordering::Release);
                        continue;
                    }
                    if stops > 2 {
                        tracing::warn!("third stop signal: exiting now");
                        std::process::exit(1);
                    }
                }
                if events.send(ControlEvent::Signal(signal)).is_err() {
                    break;
                }
            }
        })
        .map_err(RunError::Signals)?;
    Ok(())
}

struct Control {
    options: RunOptions,
    /// The bootstrap's resources.
    statics: Rib,
    /// What xDS delivered.
    dynamic: DynamicState,
    /// The accepted payloads, for `--state-dir`.
    persisted: Persisted,
    /// Writes `persisted` to the state dir, off this thread.
    state_writer: Option<StateWriter>,
    xds: Option<Xds>,
    /// Initialization with xDS (done at once without it).
    init: Init,
    /// What is published: `statics` and `dynamic` composed.
    rib: Rib,
    generation: u64,
    stats: Arc<StatsRegistry>,
    /// Sinks and clusters shared between generations.
    cache: CompileCache,
    plane: DataPlane,
    /// Follows every published FIB.
    health: HealthThread,
    admin: Arc<AdminState>,
}

impl Control {
    /// Handles events until a stop is asked for.
    fn serve(&mut self, events: Receiver<ControlEvent>) {
        let mut last_stamp = stamp(&self.options.config_path);
        let mut next_poll = Instant::now();
        loop {
            self.check_init();
            self.expire_warming();
            let mut wait = next_poll.saturating_duration_since(Instant::now());
            if let (false, Some(d)) = (self.init.done(), self.init.deadline) {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            if let Some(d) = self.dynamic.next_deadline() {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            match events.recv_timeout(wait) {
                Ok(ControlEvent::Signal(SIGHUP)) => {
                    tracing::info!("SIGHUP: reloading");
                    last_stamp = stamp(&self.options.config_path);
                    self.reload();
                }
                Ok(ControlEvent::Signal(signal)) => {
                    tracing::info!(signal, "stop signal received");
                    return;
                }
                Ok(ControlEvent::Admin(action)) => {
                    if self.on_admin(action) {
                        return;
                    }
                }
                Ok(ControlEvent::Xds(event)) => self.on_xds(event),
                Err(RecvTimeoutError::Timeout) => {
                    next_poll = Instant::now() + Duration::from_millis(FILE_POLL_INTERVAL_MS);
                    let now = stamp(&self.options.config_path);
                    if now.is_some() && now != last_stamp {
                        last_stamp = now;
                        tracing::info!(path = %self.options.config_path.display(), "config file changed: reloading");
                        self.reload();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Returns true when the action asks to stop.
    fn on_admin(&mut self, action: AdminAction) -> bool {
        match action {
            AdminAction::Quit => {
                tracing::info!("POST /quitquitquit");
                true
            }
            AdminAction::DrainListeners { .. } => {
                tracing::info!("POST /drain_listeners: listeners stop accepting");
                self.plane.drain_listeners();
                false
            }
            // The admin thread has already zeroed the registry's counters (every counter there
            // is, the control plane's included); nothing else here counts.
            AdminAction::ResetCounters
            | AdminAction::HealthcheckFail
            | AdminAction::HealthcheckOk => false,
        }
    }

    /// Loads, validates, compiles and publishes the config file; on any error, logs it and
    /// keeps the current FIB.
    fn reload(&mut self) {
        let (mut statics, loaded) = match load_rib(&self.options.config_path) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, field = e.path(), "config rejected; keeping the previous config");
                return;
            }
        };
        apply_node_overrides(&mut statics, &self.options);
        if statics.admin != self.statics.admin {
            tracing::warn!("admin.address changes take effect at the next start");
        }
        if statics.dynamic != self.statics.dynamic || statics.node != self.statics.node {
            tracing::warn!("dynamic_resources and node changes take effect at the next start");
            statics.dynamic = self.statics.dynamic.clone();
            statics.node = self.statics.node.clone();
        }
        let previous = std::mem::replace(&mut self.statics, statics);
        if self.publish_composed("config reloaded") {
            *self
                .admin
                .config_dump
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = loaded.normalized;
        } else {
            self.statics = previous;
        }
    }

    /// Serves what the last run had accepted (`warm`, from the state dir), at once (LIVE),
    /// until the management server's answers replace it.
    fn warm_start(&mut self, warm: Option<(Persisted, DynamicState)>) {
        let Some((persisted, state)) = warm else {
            return;
        };
        tracing::info!(
            listeners = state.counts().0,
            clusters = state.counts().1,
            endpoints = state.counts().2,
            "state dir: serving the last accepted xDS resources until the server answers"
        );
        self.persisted = persisted;
        self.dynamic = state;
        if let Some(x) = &self.xds {
            let names = self.dynamic.eds_names(&self.statics);
            let _ = x.commands.send(Command::WatchEndpoints(names));
        }
        if self.publish_composed("warm start from the state dir") {
            self.init = Init::new(None);
        }
    }

    /// Hands the state to the state dir's writer.
    fn save_state(&self) {
        if let Some(w) = &self.state_writer {
            w.offer(&self.persisted);
        }
    }

    /// Goes LIVE once initialization is done or its deadline has passed.
    fn check_init(&mut self) {
        let state = &self.admin.server_state;
        if state.load(Ordering::Acquire) != admin::STATE_INITIALIZING {
            return;
        }
        if self.init.done() {
            tracing::info!("xDS: initial fetch complete; serving (LIVE)");
        } else if self.init.deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                waiting_for_clusters = self.init.clusters,
                waiting_for_listeners = self.init.listeners,
                waiting_for_endpoints = ?self.init.endpoints,
                "xDS: initial_fetch_timeout passed; serving with what has arrived (LIVE)"
            );
        } else {
            return;
        }
        let _ = state.compare_exchange(
            admin::STATE_INITIALIZING,
            admin::STATE_LIVE,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Merges one xDS change into the dynamic state and publishes the result.
    fn on_xds(&mut self, event: Event) {
        let xds = self.stats.xds();
        let rejected = match event {
            Event::Connected => {
                xds.connected.store(1, Ordering::Relaxed);
                tracing::info!("xDS: connected to the management server");
                return;
            }
            Event::Disconnected(reason) => {
                if xds.connected.swap(0, Ordering::Relaxed) == 1 || self.init.done() {
                    tracing::warn!(%reason, "xDS: stream down; serving the last accepted config");
                } else {
                    tracing::warn!(%reason, "xDS: management server not reachable yet");
                }
                for sub in [&xds.cds, &xds.lds] {
                    sub.update_failure.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Event::Clusters(change) => {
                for name in change.upserts_where(|c| c.eds_service.is_some()) {
                    xds.eds(name);
                }
                let warming = change.upserts_where(|c| self.dynamic.would_warm_cluster(c));
                self.dump(|d| {
                    d.clusters
                        .record(&change, &now_rfc3339(), |n| warming.contains(n))
                });
                xds.cds.response(change.accepted_all());
                self.persist(|p| Persisted::record(&mut p.clusters, &change));
                let rejected = change.rejected.clone();
                self.dynamic.apply_clusters(change, self.warming_deadline());
                let names = self.dynamic.eds_names(&self.statics);
                self.init.clusters_arrived(&names);
                if let Some(x) = &self.xds {
                    let _ = x.commands.send(Command::WatchEndpoints(names));
                }
                rejected
            }
            Event::Endpoints(change) => {
                self.count_eds(&change);
                self.persist(|p| Persisted::record(&mut p.endpoints, &change));
                let rejected = change.rejected.clone();
                self.init
                    .endpoints_arrived(change.upserts.iter().map(|a| a.name.as_str()));
                self.dynamic.apply_endpoints(change);
                rejected
            }
            Event::Listeners(change) => {
                let warming = change.upserts_where(|l| self.dynamic.would_warm_listener(l));
                self.dump(|d| {
                    d.listeners
                        .record(&change, &now_rfc3339(), |n| warming.contains(n))
                });
                // Counted once recorded: whoever sees the count sees the dump.
                xds.lds.response(change.accepted_all());
                self.persist(|p| Persisted::record(&mut p.listeners, &change));
                let rejected = change.rejected.clone();
                self.init.listeners_arrived();
                self.dynamic
                    .apply_listeners(change, self.warming_deadline());
                rejected
            }
        };
        for r in rejected {
            tracing::warn!(resource = %r.name, reason = %r.reason, "xDS: resource rejected (NACK sent)");
        }
        self.record_promotions();
        self.publish_composed("xDS update applied");
        self.save_state();
    }

    /// `cluster.<name>.update_*` of every cluster (static or received) watching a service
    /// this EDS change carries.
    fn count_eds(&self, change: &xds::Change<Arc<[EndpointConfig]>>) {
        let watching = |service: &str| -> Vec<String> {
            let statics = self
                .statics
                .clusters
                .iter()
                .filter(|c| c.eds_service.as_deref() == Some(service));
            statics
                .map(|c| c.name.clone())
                .chain(self.dynamic.clusters_watching(service).map(String::from))
                .collect()
        };
        let xds = self.stats.xds();
        for a in &change.upserts {
            for cluster in watching(&a.name) {
                let s = xds.eds(&cluster);
                s.updates.response(true);
                if a.value.is_empty() {
                    s.update_empty.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for r in &change.rejected {
            for cluster in watching(&r.name) {
                xds.eds(&cluster).updates.response(false);
            }
        }
    }

    /// When a cluster or listener received now stops warming at the latest.
    fn warming_deadline(&self) -> Option<Instant> {
        let timeout = self.statics.dynamic.as_ref()?.initial_fetch_timeout?;
        Some(Instant::now() + timeout)
    }

    /// Shows resources that stopped warming as active in `/config_dump`.
    fn record_promotions(&mut self) {
        let (clusters, listeners) = self.dynamic.take_promoted();
        if clusters.is_empty() && listeners.is_empty() {
            return;
        }
        tracing::info!(
            clusters = clusters.len(),
            listeners = listeners.len(),
            first = ?clusters.iter().chain(&listeners).take(8).collect::<Vec<_>>(),
            "xDS: warming done"
        );
        self.dump(|d| {
            clusters.iter().for_each(|n| d.clusters.promote(n));
            listeners.iter().for_each(|n| d.listeners.promote(n));
        });
    }

    /// Ends warming whose deadline has passed, and publishes what became active.
    fn expire_warming(&mut self) {
        if self
            .dynamic
            .next_deadline()
            .is_none_or(|d| d > Instant::now())
        {
            return;
        }
        let (clusters, listeners) = self.dynamic.expire(Instant::now());
        tracing::warn!(
            clusters = clusters.len(),
            listeners = listeners.len(),
            first = ?clusters.iter().chain(&listeners).take(8).collect::<Vec<_>>(),
            "xDS: initial_fetch_timeout passed while warming; activating without what is missing"
        );
        self.record_promotions();
        self.publish_composed("xDS warming timed out");
    }

    /// Records into the `/config_dump` view of xDS resources.
    fn dump(&self, record: impl FnOnce(&mut XdsTypeDumps)) {
        let mut dump = self
            .admin
            .xds_dump
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(d) = dump.0.as_mut() {
            record(d);
        }
    }

    /// Records into what `--state-dir` keeps (nothing is kept without one).
    fn persist(&mut self, record: impl FnOnce(&mut Persisted)) {
        if self.state_writer.is_some() {
            record(&mut self.persisted);
        }
    }

    /// Composes statics and dynamic state, and publishes it if it differs from what serves.
    /// False when the data plane refused it (nothing changed then).
    fn publish_composed(&mut self, what: &str) -> bool {
        let started = Instant::now();
        let (rib, skipped) = self.dynamic.compose(&self.statics);
        for s in skipped {
            tracing::warn!(reason = %s, "xDS resource left out");
        }
        if rib == self.rib {
            tracing::debug!("config unchanged");
            return true;
        }
        let composed = Instant::now();
        let generation = self.generation + 1;
        let fib = compile(&rib, generation, &self.stats, &mut self.cache);
        let compiled = Instant::now();
        let fib = Arc::new(fib);
        if let Err(e) = self.plane.publish(fib.clone()) {
            tracing::error!(error = %e, "config rejected; keeping the previous config");
            return false;
        }
        let published = Instant::now();
        self.health.follow(fib);
        self.generation = generation;
        let previous = std::mem::replace(&mut self.rib, rib);
        drop(previous);
        tracing::debug!(
            compose_us = (composed - started).as_micros() as u64,
            compile_us = (compiled - composed).as_micros() as u64,
            clusters_reused = self.cache.reused(),
            publish_us = (published - compiled).as_micros() as u64,
            release_us = published.elapsed().as_micros() as u64,
            "generation {generation} timings"
        );
        self.cache.sinks.prune_unused();
        tracing::info!(
            generation,
            listeners = self.rib.listeners.len(),
            clusters = self.rib.clusters.len(),
            "{what}"
        );
        true
    }
}

/// Now as Envoy writes timestamps (`2026-11-25T17:03:02.047Z`).
fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut s = String::new();
    switchyard_dataplane::accesslog::write_start_time(ms, &mut s);
    s
}
