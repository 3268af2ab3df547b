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
use crate::dns::{first_answers_bound, DnsHosts, DnsThread, DnsUpdate, DnsWatch};
use crate::dynamic::DynamicState;
use crate::error::ConfigError;
use crate::health::{HealthThread, OutlierEventLog};
use crate::load::load_rib;
use crate::rib::{Bind, EndpointConfig, Rib, SecretKey, SecretSource};
use crate::rib::{GrpcSource, XdsSource};
use crate::runtime::Runtime;
use crate::state_dir::{Persisted, StateWriter};
use crate::stats::StatsRegistry;
use crate::xds::client::{
    self as xds_client, ClientConfig, ClusterSources, Command, Event, EventSink, Service,
};
use crate::xds::file::{self as xds_file, FileCommand, FilesConfig};
use crate::xds::{self, Held};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::BTreeMap;
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
    /// An `admin.access_log` file could not be opened.
    AdminAccessLog(std::io::Error),
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
    /// `cluster_manager.outlier_detection.event_log_path` could not be opened.
    OutlierEventLog(std::path::PathBuf, std::io::Error),
    /// The DNS thread could not start.
    Dns(std::io::Error),
    /// A TLS context `convert` had checked could not be built.
    Compile(crate::compile::CompileError),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "invalid config: {e}"),
            RunError::DataPlane(e) => write!(f, "{e}"),
            RunError::Admin(e) => write!(f, "admin: cannot listen: {e}"),
            RunError::AdminAccessLog(e) => write!(f, "admin: cannot open its access log: {e}"),
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
            RunError::OutlierEventLog(path, e) => write!(
                f,
                "cluster_manager.outlier_detection.event_log_path: cannot open {}: {e}",
                path.display()
            ),
            RunError::Dns(e) => write!(f, "DNS resolver thread: cannot start: {e}"),
            RunError::Compile(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Events the control loop reacts to.
enum ControlEvent {
    Signal(i32),
    Admin(AdminAction),
    Xds(Stream, Event),
    /// A DNS cluster's hosts changed (or its first answers are in).
    Dns(DnsUpdate),
}

/// Where an xDS event came from: a gRPC stream, or the file thread.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stream {
    Ads,
    /// `lds_config.api_config_source`.
    Lds,
    /// `cds_config.api_config_source`.
    Cds,
    /// The EDS stream to one management server (`eds_config.api_config_source`), shared
    /// by the clusters that name it.
    Eds(GrpcSource),
    /// `path_config_source` of any type.
    Files,
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
    sds_needs_node(&rib).map_err(RunError::Config)?;
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

    // DNS clusters: resolved on the `dns` thread; the first FIB waits for their first
    // answers (bounded), as Envoy initialises clusters before listeners.
    let (events_tx, events_rx) = mpsc::channel();
    let statics = rib.clone();
    let mut dns = DnsHosts::default();
    dns.sync(&rib, || start_dns(&stats, &events_tx))
        .map_err(RunError::Dns)?;
    wait_first_answers(&mut dns, &rib, &events_rx, &stats);
    dns.fill(&mut rib, None);

    let mut cache = CompileCache::new();
    let fib = Arc::new(compile(&rib, 1, &stats, &mut cache).map_err(RunError::Compile)?);
    let event_log = rib
        .outlier_event_log
        .as_ref()
        .map(|p| OutlierEventLog::open(p).map_err(|e| RunError::OutlierEventLog(p.clone(), e)))
        .transpose()?;
    let health = HealthThread::spawn(fib.clone(), stats.health_signal(), event_log)
        .map_err(RunError::Health)?;
    if !health.wait_first_checks() {
        tracing::warn!("some hosts' first health check did not finish in time; serving anyway");
    }
    plane.publish(fib).map_err(RunError::DataPlane)?;

    let admin_state = start_admin(&rib, &plane, &stats, &options, events_tx.clone())?;
    *admin_state
        .config_dump
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = loaded.normalized;
    // With xDS, INITIALIZING (/ready 503) until the first fetch is in (see `Init`).
    let init = Init::new(&rib);
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
    let xds = if uses_xds(&rib) {
        if let Some(d) = &rib.dynamic {
            stats.xds().enabled.store(true, Ordering::Relaxed);
            stats.xds().ads.store(d.ads.is_some(), Ordering::Relaxed);
        }
        for c in rib.clusters.iter().filter(|c| c.eds_service.is_some()) {
            let file = matches!(c.eds_source, XdsSource::File(_));
            stats.xds().eds_for(&c.name, !file);
        }
        Some(Sources::start(&rib, held, events_tx.clone())?)
    } else {
        None
    };
    let cut_drain = Arc::new(AtomicBool::new(false));
    install_signals(events_tx.clone(), cut_drain.clone())?;
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
            .types = Some(XdsTypeDumps::default());
    }
    let state_writer = match (&options.state_dir, &xds) {
        (Some(dir), Some(_)) => Some(StateWriter::spawn(dir.clone()).map_err(RunError::StateDir)?),
        _ => None,
    };
    let mut control = Control {
        options,
        statics,
        dns,
        events: events_tx.clone(),
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
        inbound_stopped: false,
        pending_drain: None,
    };
    // After the warm start: watching nothing before it would drop what it loaded.
    control.warm_start(warm);
    control.update_watches();
    control.serve(events_rx);
    control.dns.stop();
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
        x.stop();
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

/// Starts the `dns` thread, its updates going to the control loop.
fn start_dns(stats: &StatsRegistry, events: &Sender<ControlEvent>) -> std::io::Result<DnsThread> {
    let events = events.clone();
    DnsThread::spawn(
        stats.dns().clone(),
        Box::new(move |update| events.send(ControlEvent::Dns(update)).is_ok()),
    )
}

/// Waits until every DNS cluster of `rib` that waits for it (`wait_for_warm_on_init`) has
/// had its first answers, bounded by the time its resolver's every try takes. Only DNS
/// events can arrive yet (nothing else is started).
fn wait_first_answers(
    dns: &mut DnsHosts,
    rib: &Rib,
    events: &Receiver<ControlEvent>,
    stats: &StatsRegistry,
) {
    let pending = dns.unsettled(rib);
    if pending.is_empty() {
        return;
    }
    let deadline = Instant::now() + first_answers_bound(&DnsWatch::of(rib));
    tracing::info!(clusters = ?pending, "waiting for the first DNS answers");
    loop {
        let pending = dns.unsettled(rib);
        if pending.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ControlEvent::Dns(update)) => {
                dns.apply(update, stats.dns());
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(clusters = ?pending, "no first DNS answers in time; serving without their hosts until they come");
                return;
            }
        }
    }
}

/// Envoy's rule: SDS (over ADS or from a file) needs the node's id and cluster, from the
/// bootstrap or the command line.
fn sds_needs_node(rib: &Rib) -> Result<(), ConfigError> {
    let sds = crate::secrets::named(rib).any(|k| k.source != SecretSource::Static);
    if sds && (rib.node.id.is_empty() || rib.node.cluster.is_empty()) {
        return Err(ConfigError::invalid(
            "node",
            "id and cluster are required with SDS secrets, in node or from --service-node and \
             --service-cluster (Envoy: TlsCertificateSdsApi: node 'id' and 'cluster' are \
             required)",
        ));
    }
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
    /// SDS secrets (over ADS or from files) the bootstrap's listeners and clusters name
    /// that have not arrived (Envoy's init manager waits for them too).
    secrets: std::collections::BTreeSet<SecretKey>,
    /// When waiting stops regardless (`None`: wait as long as it takes).
    deadline: Option<Instant>,
}

impl Init {
    /// Waiting for what `rib` gets over xDS: the first clusters (with their endpoints) and
    /// listeners; without CDS, the endpoints of the static EDS clusters.
    fn new(rib: &Rib) -> Init {
        let dynamic = rib.dynamic.as_ref();
        let cds = dynamic.is_some_and(|d| d.cds.is_some());
        Init {
            clusters: cds,
            listeners: dynamic.is_some_and(|d| d.lds.is_some()),
            endpoints: if cds {
                Default::default()
            } else {
                rib.clusters
                    .iter()
                    .filter_map(|c| c.eds_service.clone())
                    .collect()
            },
            secrets: crate::secrets::named(rib)
                .filter(|k| k.source != SecretSource::Static)
                .cloned()
                .collect(),
            deadline: init_timeout(rib).map(|t| Instant::now() + t),
        }
    }

    /// Nothing to wait for.
    fn done_now() -> Init {
        Init {
            clusters: false,
            listeners: false,
            endpoints: Default::default(),
            secrets: Default::default(),
            deadline: None,
        }
    }

    fn done(&self) -> bool {
        !self.clusters && !self.listeners && self.endpoints.is_empty() && self.secrets.is_empty()
    }

    /// Secrets arrived (or their source failed: nothing to wait for then).
    fn secrets_arrived(&mut self, keys: impl Iterator<Item = SecretKey>) {
        for k in keys {
            self.secrets.remove(&k);
        }
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

/// Whether `rib` gets anything over xDS: `dynamic_resources`, a static EDS cluster, or a
/// secret over SDS.
fn uses_xds(rib: &Rib) -> bool {
    rib.dynamic.is_some()
        || rib.clusters.iter().any(|c| c.eds_service.is_some())
        || crate::secrets::named(rib).any(|k| k.source != SecretSource::Static)
}

/// How long initialization waits: [`fetch_timeout`], or longer for the SDS secrets the
/// bootstrap names (their sources' `initial_fetch_timeout`; none: as long as it takes).
fn init_timeout(rib: &Rib) -> Option<Duration> {
    let mut timeout = fetch_timeout(rib);
    let secrets = rib
        .listeners
        .iter()
        .filter_map(|l| l.tcp())
        .flat_map(|t| t.chains())
        .filter_map(|c| c.tls.as_ref().map(|t| &t.secrets))
        .chain(
            rib.clusters
                .iter()
                .filter_map(|c| c.tls.as_ref().map(|t| &t.secrets)),
        );
    for s in secrets.filter(|s| !s.ready || s.keys().next().is_some()) {
        if s.keys().all(|k| k.source == SecretSource::Static) {
            continue;
        }
        timeout = match (timeout, s.initial_fetch_timeout) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    timeout
}

/// The `initial_fetch_timeout` that bounds initialization and warming: `dynamic_resources`'
/// (the longest of its sources'), else Envoy's default.
fn fetch_timeout(rib: &Rib) -> Option<Duration> {
    match &rib.dynamic {
        Some(d) => d.initial_fetch_timeout,
        None => Some(crate::rib::DEFAULT_INITIAL_FETCH_TIMEOUT),
    }
}

/// The addresses a gRPC client connects to through `cluster`: a STATIC cluster's first
/// endpoint (as before DNS), or a DNS cluster's hosts of its first priority, in answer order
/// (LOGICAL_DNS has one); none while its names have not resolved.
fn management_servers(cluster: &crate::rib::ClusterConfig) -> Vec<std::net::SocketAddr> {
    if cluster.dns.is_none() {
        return cluster
            .endpoints
            .first()
            .map(|e| e.address)
            .into_iter()
            .collect();
    }
    let first = cluster.endpoints.first().map(|e| e.priority);
    cluster
        .endpoints
        .iter()
        .filter(|e| Some(e.priority) == first)
        .map(|e| e.address)
        .collect()
}

/// A running gRPC client thread.
struct GrpcClient {
    /// The management cluster it connects through.
    cluster: String,
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: std::thread::JoinHandle<()>,
}

/// The running file thread.
struct FileThread {
    commands: Sender<FileCommand>,
    thread: std::thread::JoinHandle<()>,
}

/// The config sources in use: the ADS stream, LDS and CDS streams of their own, an EDS
/// stream per management server that EDS clusters name, and the file thread. EDS streams
/// and the file thread start when the first cluster needs them.
struct Sources {
    ads: Option<GrpcClient>,
    lds: Option<GrpcClient>,
    cds: Option<GrpcClient>,
    eds: BTreeMap<GrpcSource, GrpcClient>,
    /// Whether each EDS stream is up.
    eds_connected: BTreeMap<GrpcSource, bool>,
    files: Option<FileThread>,
    /// What every client is started with (the node, the static clusters' endpoints, the
    /// validators' context).
    node: crate::rib::NodeInfo,
    statics: Vec<Arc<crate::rib::ClusterConfig>>,
    reserved: Vec<(String, Bind)>,
    eds_sources: ClusterSources,
    events: Sender<ControlEvent>,
}

impl Sources {
    /// Starts the sources of `rib.dynamic` (ADS, and LDS / CDS from gRPC or files); `held`
    /// is what the state dir had (given to the ADS stream and to LDS / CDS streams).
    fn start(rib: &Rib, held: Held, events: Sender<ControlEvent>) -> Result<Sources, RunError> {
        let reserved = rib
            .listeners
            .iter()
            .map(|l| (format!("static listener '{}'", l.name), l.bind()))
            .chain(
                rib.admin
                    .socket()
                    .map(|a| ("the admin".to_string(), Bind::tcp(a))),
            )
            .collect();
        let dynamic = rib.dynamic.clone();
        let mut sources = Sources {
            ads: None,
            lds: None,
            cds: None,
            eds: BTreeMap::new(),
            eds_connected: BTreeMap::new(),
            files: None,
            node: rib.node.clone(),
            statics: rib.clusters.clone(),
            reserved,
            eds_sources: ClusterSources {
                statics: rib.clusters.clone(),
                ads: dynamic.as_ref().is_some_and(|d| d.ads.is_some()),
            },
            events,
        };
        let Some(d) = dynamic else {
            return Ok(sources);
        };
        let of_type = |type_url: &str| -> Held {
            held.iter()
                .filter(|(t, _)| *t == type_url)
                .map(|(t, h)| (t.clone(), h.clone()))
                .collect()
        };
        if let Some(ads) = &d.ads {
            let service = Service::Ads {
                clusters: d.cds == Some(XdsSource::Ads),
                listeners: d.lds == Some(XdsSource::Ads),
            };
            let mut ads_held = held.clone();
            ads_held.retain(|t, _| match t.as_str() {
                xds::CLUSTER_TYPE => d.cds == Some(XdsSource::Ads),
                xds::LISTENER_TYPE => d.lds == Some(XdsSource::Ads),
                _ => true,
            });
            sources.ads = Some(sources.spawn(ads, service, ads_held, Vec::new(), Stream::Ads)?);
        }
        let mut files = FilesConfig {
            reserved_addresses: sources.reserved.clone(),
            eds_sources: sources.eds_sources.clone(),
            ..FilesConfig::default()
        };
        for (name, source, service, stream, type_url) in [
            (
                "cds_config",
                &d.cds,
                Service::Clusters,
                Stream::Cds,
                xds::CLUSTER_TYPE,
            ),
            (
                "lds_config",
                &d.lds,
                Service::Listeners,
                Stream::Lds,
                xds::LISTENER_TYPE,
            ),
        ] {
            match source {
                Some(XdsSource::Grpc(g)) => {
                    let client =
                        sources.spawn(g, service, of_type(type_url), Vec::new(), stream.clone())?;
                    match stream {
                        Stream::Cds => sources.cds = Some(client),
                        _ => sources.lds = Some(client),
                    }
                }
                Some(XdsSource::File(f)) => {
                    crate::convert::file_source_present(f, &format!("dynamic_resources.{name}"))
                        .map_err(RunError::Config)?;
                    tracing::info!(path = %f.path.display(), "xDS: {name} from a file");
                    match stream {
                        Stream::Cds => files.clusters = Some(f.clone()),
                        _ => files.listeners = Some(f.clone()),
                    }
                }
                _ => {}
            }
        }
        if files.clusters.is_some() || files.listeners.is_some() {
            sources.start_files(files)?;
        }
        Ok(sources)
    }

    /// Starts a gRPC client for `source` speaking `service`.
    fn spawn(
        &self,
        source: &GrpcSource,
        service: Service,
        held: Held,
        endpoints: Vec<String>,
        stream: Stream,
    ) -> Result<GrpcClient, RunError> {
        let cluster = self
            .statics
            .iter()
            .find(|c| c.name == source.cluster)
            .expect("convert checked: a management cluster is a static one");
        let servers = management_servers(cluster);
        let mut config = ClientConfig::to_servers(servers.clone(), self.node.clone(), source.api);
        config.service = service;
        config.held = held;
        config.endpoints = endpoints;
        config.reserved_addresses = self.reserved.clone();
        config.eds_sources = self.eds_sources.clone();
        config.initial_metadata = source.initial_metadata.clone();
        config.backoff_base = source.reconnect.base;
        config.backoff_max = source.reconnect.max;
        let name = match &stream {
            Stream::Ads => "xds".to_string(),
            Stream::Lds => "xds-lds".to_string(),
            Stream::Cds => "xds-cds".to_string(),
            Stream::Eds(g) => format!("xds-eds-{}", g.cluster),
            Stream::Files => unreachable!("files have no gRPC client"),
        };
        tracing::info!(?servers, api = ?source.api, ?service, cluster = %source.cluster, "xDS: subscribing");
        let events = self.events.clone();
        let sink =
            EventSink::new(move |e| events.send(ControlEvent::Xds(stream.clone(), e)).is_ok());
        let mut name = name;
        name.truncate(15);
        let (commands, thread) = xds_client::spawn(config, &name, sink).map_err(RunError::Xds)?;
        Ok(GrpcClient {
            cluster: source.cluster.clone(),
            commands,
            thread,
        })
    }

    fn start_files(&mut self, config: FilesConfig) -> Result<(), RunError> {
        let events = self.events.clone();
        let sink =
            EventSink::new(move |e| events.send(ControlEvent::Xds(Stream::Files, e)).is_ok());
        let (commands, thread) = xds_file::spawn(config, sink).map_err(RunError::Xds)?;
        self.files = Some(FileThread { commands, thread });
        Ok(())
    }

    /// Hands each source the assignments to watch (`watches`, from
    /// [`DynamicState::eds_watches`]), starting EDS streams and the file thread as needed.
    fn watch(&mut self, mut watches: BTreeMap<XdsSource, Vec<String>>) {
        if let Some(ads) = &self.ads {
            let names = watches.remove(&XdsSource::Ads).unwrap_or_default();
            let _ = ads.commands.send(Command::WatchEndpoints(names));
        }
        // A stream no cluster names any more keeps running, watching nothing.
        for (g, c) in &self.eds {
            if !watches.contains_key(&XdsSource::Grpc(g.clone())) {
                let _ = c.commands.send(Command::WatchEndpoints(Vec::new()));
            }
        }
        let mut files = BTreeMap::new();
        for (source, names) in watches {
            match source {
                XdsSource::Ads => {
                    tracing::warn!(?names, "EDS over ADS without an ADS stream: not watched")
                }
                XdsSource::File(f) => {
                    files.insert(f, names);
                }
                XdsSource::Grpc(g) => match self.eds.get(&g) {
                    Some(c) => {
                        let _ = c.commands.send(Command::WatchEndpoints(names));
                    }
                    None => {
                        match self.spawn(
                            &g,
                            Service::Endpoints,
                            Held::new(),
                            names,
                            Stream::Eds(g.clone()),
                        ) {
                            Ok(c) => {
                                self.eds.insert(g.clone(), c);
                                self.eds_connected.insert(g, false);
                            }
                            Err(e) => tracing::error!(error = %e, "xDS: EDS stream not started"),
                        }
                    }
                },
            }
        }
        if files.is_empty() && self.files.is_none() {
            return;
        }
        if let Some(f) = self.file_thread() {
            let _ = f.commands.send(FileCommand::WatchEndpoints(files));
        }
    }

    /// The file thread, started now if it is not running (`None` when it cannot start).
    fn file_thread(&mut self) -> Option<&FileThread> {
        if self.files.is_none() {
            let config = FilesConfig {
                reserved_addresses: self.reserved.clone(),
                eds_sources: self.eds_sources.clone(),
                ..FilesConfig::default()
            };
            if let Err(e) = self.start_files(config) {
                tracing::error!(error = %e, "xDS: file thread not started");
                return None;
            }
        }
        self.files.as_ref()
    }

    /// Hands the ADS stream and the file thread the secrets to watch (`watches`, from
    /// [`DynamicState::secret_watches`]), starting the file thread as needed.
    fn watch_secrets(&mut self, mut watches: BTreeMap<SecretSource, Vec<String>>) {
        let ads = watches.remove(&SecretSource::Ads).unwrap_or_default();
        match &self.ads {
            Some(c) => {
                let _ = c.commands.send(Command::WatchSecrets(ads));
            }
            None if !ads.is_empty() => {
                tracing::warn!(names = ?ads, "SDS over ADS without an ADS stream: not watched")
            }
            None => {}
        }
        let files: BTreeMap<_, _> = watches
            .into_iter()
            .filter_map(|(s, names)| match s {
                SecretSource::File(f) => Some((f, names)),
                _ => None,
            })
            .collect();
        if files.is_empty() && self.files.is_none() {
            return;
        }
        if let Some(f) = self.file_thread() {
            let _ = f.commands.send(FileCommand::WatchSecrets(files));
        }
    }

    /// Follows the DNS answers of the management clusters that are STRICT_DNS or
    /// LOGICAL_DNS: each one whose hosts in `rib` (what serves) changed hands its clients
    /// the new addresses ([`Command::Servers`]), and the streams started later take them.
    fn follow_dns(&mut self, rib: &Rib) {
        for slot in self.statics.iter_mut().filter(|c| c.dns.is_some()) {
            let Some(now) = rib.clusters.iter().find(|c| c.name == slot.name) else {
                continue;
            };
            if now.dns != slot.dns || now.endpoints == slot.endpoints {
                continue;
            }
            *slot = now.clone();
            let servers = management_servers(slot);
            let clients = [&self.ads, &self.lds, &self.cds]
                .into_iter()
                .flatten()
                .chain(self.eds.values());
            for c in clients.filter(|c| c.cluster == slot.name) {
                let _ = c.commands.send(Command::Servers(servers.clone()));
            }
        }
    }

    /// Stops every client and the file thread, and waits for them.
    fn stop(self) {
        let clients: Vec<GrpcClient> = [self.ads, self.lds, self.cds]
            .into_iter()
            .flatten()
            .chain(self.eds.into_values())
            .collect();
        for c in &clients {
            let _ = c.commands.send(Command::Stop);
        }
        if let Some(f) = &self.files {
            let _ = f.commands.send(FileCommand::Stop);
        }
        for c in clients {
            let _ = c.thread.join();
        }
        if let Some(f) = self.files {
            let _ = f.thread.join();
        }
    }
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
    let mut state = AdminState::new(
        stats.clone(),
        plane.fib_view(),
        plane.worker_count(),
        options.command_line.clone(),
        actions_tx,
    );
    state.access_log = admin::access_log::AdminAccessLog::open(&rib.admin.access_logs)
        .map_err(RunError::AdminAccessLog)?;
    state.runtime = Arc::new(Runtime::new(plane.global_connections()));
    state.runtime.configure(&rib.runtime);
    state.ignore_global_conn_limit = rib.admin.ignore_global_conn_limit;
    state.stats_config = rib.stats.clone();
    let state = Arc::new(state);
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
    xds: Option<Sources>,
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
    /// DNS clusters: what the `dns` thread resolves and the hosts it found.
    dns: DnsHosts,
    /// The control loop's own queue (where the `dns` thread sends, once started).
    events: Sender<ControlEvent>,
    /// `POST /drain_listeners?inboundonly` stopped the `INBOUND` listeners: every later
    /// composition leaves them out too.
    inbound_stopped: bool,
    /// `POST /drain_listeners?graceful` waiting for its drain period.
    pending_drain: Option<PendingDrain>,
}

/// A graceful drain waiting for its period to end.
#[derive(Debug, Clone, Copy)]
struct PendingDrain {
    /// When the listeners stop.
    at: Instant,
    /// Only the `INBOUND` ones.
    inbound_only: bool,
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
            self.run_pending_drain();
            if let Some(p) = &self.pending_drain {
                wait = wait.min(p.at.saturating_duration_since(Instant::now()));
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
                Ok(ControlEvent::Xds(stream, event)) => self.on_xds(stream, event),
                Ok(ControlEvent::Dns(update)) => {
                    if self.dns.apply(update, self.stats.dns()) {
                        self.publish_composed("DNS answer applied");
                        if let Some(x) = &mut self.xds {
                            x.follow_dns(&self.rib);
                        }
                    }
                }
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
            AdminAction::DrainListeners {
                graceful: true,
                inbound_only,
            } => {
                self.drain_after_period(inbound_only);
                false
            }
            AdminAction::DrainListeners { inbound_only, .. } => {
                self.stop_listeners(inbound_only);
                false
            }
            // The admin thread has already zeroed the registry's counters (every counter there
            // is, the control plane's included); nothing else here counts.
            AdminAction::ResetCounters
            | AdminAction::HealthcheckFail
            | AdminAction::HealthcheckOk => false,
        }
    }

    /// `POST /drain_listeners?graceful`: as Envoy, the listeners keep accepting for the drain
    /// period (`--drain-time-s`), then stop. While one waits, another graceful request
    /// changes nothing; an immediate drain of every listener replaces it.
    fn drain_after_period(&mut self, inbound_only: bool) {
        if self.pending_drain.is_some() {
            tracing::info!("POST /drain_listeners?graceful: a graceful drain is already under way");
            return;
        }
        tracing::info!(
            drain_time_s = self.options.drain_time.as_secs_f64(),
            inbound_only,
            "POST /drain_listeners?graceful: listeners stop accepting after the drain period"
        );
        self.pending_drain = Some(PendingDrain {
            at: Instant::now() + self.options.drain_time,
            inbound_only,
        });
    }

    /// Stops the listeners a graceful drain waited for, once its period is over.
    fn run_pending_drain(&mut self) {
        if let Some(p) = self.pending_drain.filter(|p| Instant::now() >= p.at) {
            self.pending_drain = None;
            self.stop_listeners(p.inbound_only);
        }
    }

    /// Stops accepting now: on every listener, or (`inbound_only`) on the `INBOUND` ones, which
    /// leave the FIB as if removed and stay out of every later composition.
    fn stop_listeners(&mut self, inbound_only: bool) {
        if inbound_only {
            tracing::info!("drain_listeners?inboundonly: INBOUND listeners stop accepting");
            self.inbound_stopped = true;
            self.publish_composed("inbound listeners stopped");
        } else {
            tracing::info!("drain_listeners: listeners stop accepting");
            self.pending_drain = None;
            self.plane.drain_listeners();
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
            tracing::warn!("admin changes take effect at the next start");
        }
        keep_until_restart(
            &mut statics.outlier_event_log,
            &self.statics.outlier_event_log,
            "cluster_manager.outlier_detection.event_log_path",
        );
        keep_until_restart(&mut statics.stats, &self.statics.stats, "stats_config");
        if statics.dynamic != self.statics.dynamic || statics.node != self.statics.node {
            tracing::warn!("dynamic_resources and node changes take effect at the next start");
            statics.dynamic = self.statics.dynamic.clone();
            statics.node = self.statics.node.clone();
        }
        let previous = std::mem::replace(&mut self.statics, statics);
        if self.publish_composed("config reloaded") {
            self.update_watches();
            self.admin.runtime.configure(&self.statics.runtime);
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
        self.update_watches();
        if self.publish_composed("warm start from the state dir") {
            self.init = Init::done_now();
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

    /// Hands every source the endpoint assignments its EDS clusters watch, and shows each
    /// EDS cluster's stream state.
    fn update_watches(&mut self) {
        let watches = self.dynamic.eds_watches(&self.statics);
        let secrets = self.dynamic.secret_watches(&self.statics);
        let forgotten = self.dynamic.forget_unwatched_secrets(&secrets);
        if !forgotten.is_empty() {
            tracing::info!(names = ?forgotten, "SDS: secrets no listener or cluster names any more are forgotten");
            let mut dump = self
                .admin
                .xds_dump
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for name in &forgotten {
                dump.secrets.forget(name);
            }
        }
        if self.xds.is_none() && !secrets.is_empty() {
            // A reload named the first secret from a file.
            match Sources::start(&self.statics, Held::new(), self.events.clone()) {
                Ok(s) => self.xds = Some(s),
                Err(e) => tracing::error!(error = %e, "SDS: sources not started"),
            }
        }
        if let Some(x) = &mut self.xds {
            x.watch(watches);
            x.watch_secrets(secrets);
        }
        self.show_eds_streams();
    }

    /// `cluster.<name>.control_plane.connected_state` of each EDS cluster on a stream of its
    /// source's own.
    fn show_eds_streams(&self) {
        let Some(x) = &self.xds else { return };
        let xds = self.stats.xds();
        for (name, _, source) in self.dynamic.eds_clusters(&self.statics) {
            if let XdsSource::Grpc(g) = source {
                let up = x.eds_connected.get(g).copied().unwrap_or(false);
                xds.eds(name).stream.set(up);
            }
        }
    }

    /// A stream came up (`up`) or went down: its gauge, and on the way down Envoy's
    /// `update_failure` of the subscriptions it carries. Returns whether it had been up.
    fn stream_state(&mut self, stream: &Stream, up: bool) -> bool {
        let xds = self.stats.xds();
        let d = self.statics.dynamic.as_ref();
        let failure = |sub: &crate::stats::SubscriptionStats| {
            if !up {
                sub.update_failure.fetch_add(1, Ordering::Relaxed);
            }
        };
        match stream {
            Stream::Ads => {
                for (sub, source) in [
                    (&xds.cds, d.and_then(|d| d.cds.as_ref())),
                    (&xds.lds, d.and_then(|d| d.lds.as_ref())),
                ] {
                    if source == Some(&XdsSource::Ads) {
                        failure(sub);
                    }
                }
                xds.connected.swap(u64::from(up), Ordering::Relaxed) == 1
            }
            Stream::Lds => {
                failure(&xds.lds);
                let was = xds.lds_stream.connected_state() == Some(1);
                xds.lds_stream.set(up);
                was
            }
            Stream::Cds => {
                failure(&xds.cds);
                let was = xds.cds_stream.connected_state() == Some(1);
                xds.cds_stream.set(up);
                was
            }
            Stream::Eds(g) => {
                let was = self
                    .xds
                    .as_mut()
                    .and_then(|x| x.eds_connected.insert(g.clone(), up))
                    .unwrap_or(false);
                for (name, _, source) in self.dynamic.eds_clusters(&self.statics) {
                    if source == &XdsSource::Grpc(g.clone()) {
                        failure(&xds.eds(name).updates);
                    }
                }
                self.show_eds_streams();
                was
            }
            Stream::Files => false,
        }
    }

    /// A file update that changed nothing: counted and logged; what waited for it (the
    /// first fetch, warming clusters) goes on without it, as in Envoy.
    fn on_failed(&mut self, f: crate::xds::client::Failure) {
        let xds = self.stats.xds();
        let count = |sub: &crate::stats::SubscriptionStats| {
            sub.update_attempt.fetch_add(1, Ordering::Relaxed);
            let c = if f.rejected {
                &sub.update_rejected
            } else {
                &sub.update_failure
            };
            c.fetch_add(1, Ordering::Relaxed);
        };
        let what = if f.rejected { "rejected" } else { "failed" };
        tracing::warn!(reason = %f.reason, "xDS: file update {what}; keeping the last accepted config");
        match f.type_url.as_str() {
            xds::CLUSTER_TYPE => {
                count(&xds.cds);
                let names = self.dynamic.eds_names(&self.statics);
                self.init.clusters_arrived(&names);
            }
            xds::LISTENER_TYPE => {
                count(&xds.lds);
                self.init.listeners_arrived();
            }
            // The secrets keep what they had; what waits for them goes on waiting until its
            // deadline (a listener without its certificate would only refuse handshakes).
            xds::SECRET_TYPE => {
                for name in &f.names {
                    count(&xds.sds(name));
                }
            }
            _ => {
                for (name, service, _) in self.dynamic.eds_clusters(&self.statics) {
                    if f.names.iter().any(|n| n == service) {
                        count(&xds.eds(name).updates);
                    }
                }
                self.init
                    .endpoints_arrived(f.names.iter().map(String::as_str));
                self.dynamic
                    .stop_warming(f.names.iter().map(String::as_str));
                self.record_promotions();
                self.publish_composed("xDS warming ended without an assignment");
            }
        }
    }

    /// Merges one xDS change into the dynamic state and publishes the result.
    fn on_xds(&mut self, stream: Stream, event: Event) {
        let xds = self.stats.xds();
        let rejected = match event {
            Event::Connected => {
                self.stream_state(&stream, true);
                tracing::info!(?stream, "xDS: connected to the management server");
                return;
            }
            Event::Disconnected(reason) => {
                if self.stream_state(&stream, false) || self.init.done() {
                    tracing::warn!(?stream, %reason, "xDS: stream down; serving the last accepted config");
                } else {
                    tracing::warn!(?stream, %reason, "xDS: management server not reachable yet");
                }
                return;
            }
            Event::Failed(f) => {
                self.on_failed(f);
                return;
            }
            Event::Clusters(change) => {
                for a in change
                    .upserts
                    .iter()
                    .filter(|a| a.value.eds_service.is_some())
                {
                    let file = matches!(a.value.eds_source, XdsSource::File(_));
                    xds.eds_for(&a.name, !file);
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
                self.update_watches();
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
            Event::Secrets(file, change) => {
                let source = file.map_or(SecretSource::Ads, SecretSource::File);
                for a in &change.upserts {
                    xds.sds(&a.name).response(true);
                }
                for r in &change.rejected {
                    xds.sds(&r.name).response(false);
                }
                if !change.removals.is_empty() {
                    tracing::warn!(names = ?change.removals, "SDS: secrets removed by the server are kept while in use (as Envoy)");
                }
                self.dump_secrets(&change);
                let rejected = change.rejected.clone();
                let arrived: Vec<SecretKey> = change
                    .upserts
                    .iter()
                    .map(|a| SecretKey {
                        source: source.clone(),
                        name: a.name.clone(),
                    })
                    .collect();
                self.init.secrets_arrived(arrived.into_iter());
                self.dynamic.apply_secrets(&source, change);
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
                self.update_watches();
                rejected
            }
        };
        for r in rejected {
            tracing::warn!(?stream, resource = %r.name, reason = %r.reason, "xDS: resource rejected (NACK sent, or the file's update refused)");
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
        Some(Instant::now() + fetch_timeout(&self.statics)?)
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
        if let Some(d) = dump.types.as_mut() {
            record(d);
        }
    }

    /// Records secrets received (over ADS or from a file) into `/config_dump`'s
    /// `dynamic_active_secrets`. A secret the server drops stays there, as it stays in use.
    fn dump_secrets<T>(&self, change: &crate::xds::Change<T>) {
        self.admin
            .xds_dump
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .secrets
            .record_upserts(&change.upserts, &now_rfc3339(), |_| false);
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
        let (mut rib, skipped) = self.dynamic.compose(&self.statics);
        for s in skipped {
            tracing::warn!(reason = %s, "xDS resource left out");
        }
        for problem in crate::secrets::resolve(&mut rib, self.dynamic.secrets()) {
            tracing::warn!(%problem, "TLS context not ready: it serves no handshake until its secrets arrive");
        }
        if self.inbound_stopped {
            rib.listeners.retain(|l| !l.inbound);
        }
        let (stats, events) = (&self.stats, &self.events);
        if let Err(e) = self.dns.sync(&rib, || start_dns(stats, events)) {
            tracing::error!(error = %e, "DNS resolver thread: cannot start; DNS clusters have no hosts");
        }
        self.dns.fill(&mut rib, Some(&self.rib));
        if rib == self.rib {
            tracing::debug!("config unchanged");
            return true;
        }
        let composed = Instant::now();
        let generation = self.generation + 1;
        let fib = match compile(&rib, generation, &self.stats, &mut self.cache) {
            Ok(fib) => fib,
            Err(e) => {
                tracing::error!(error = %e, "config rejected; keeping the previous config");
                return false;
            }
        };
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

/// A reloaded bootstrap part that applies only at start: a change is logged and `reloaded`
/// keeps what runs (`running`).
fn keep_until_restart<T: PartialEq + Clone>(reloaded: &mut T, running: &T, what: &str) {
    if reloaded != running {
        tracing::warn!("{what} changes take effect at the next start");
        *reloaded = running.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::management_servers;
    use crate::load::parse_yaml_rib;
    use crate::rib::EndpointConfig;
    use std::sync::Arc;

    fn endpoint(last: u8, priority: u32) -> EndpointConfig {
        EndpointConfig {
            address: std::net::SocketAddr::from(([10, 0, 0, last], 18000)),
            weight: 1,
            priority,
            locality: Default::default(),
            tunnel: None,
        }
    }

    /// A DNS management cluster's addresses: its hosts of the first priority, in order;
    /// none before its names resolve. A STATIC one: its first endpoint.
    #[test]
    fn management_servers_of_a_dns_cluster_are_its_first_priority_hosts() {
        let yaml = "static_resources:
  clusters:
  - name: xds
    type: STRICT_DNS
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: xds.example, port_value: 18000}}}
  - name: s
    load_assignment:
      cluster_name: s
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 10.0.0.9, port_value: 18000}}}
        - endpoint: {address: {socket_address: {address: 10.0.0.8, port_value: 18000}}}
";
        let (rib, _) = parse_yaml_rib(yaml).unwrap_or_else(|e| panic!("{e}"));
        let mut xds = rib.cluster("xds").unwrap().clone();
        assert!(management_servers(&xds).is_empty());
        xds.endpoints = Arc::from(vec![endpoint(1, 0), endpoint(2, 0), endpoint(3, 1)]);
        let got: Vec<String> = management_servers(&xds)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["10.0.0.1:18000", "10.0.0.2:18000"]);
        let s = management_servers(rib.cluster("s").unwrap());
        assert_eq!(
            s,
            vec!["10.0.0.9:18000".parse::<std::net::SocketAddr>().unwrap()]
        );
    }
}
