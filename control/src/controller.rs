//! The control thread: loads the config, compiles FIBs, publishes them, reloads, drains.
//!
//! Guarantees:
//! - **Last known good.** A reload (SIGHUP, or a change of the config file's contents) that
//!   fails to parse, validate, compile or open its listeners changes nothing: the error is
//!   logged with the path of the bad field and the previous FIB keeps serving.
//! - **One publication per accepted config**, with a generation one higher than the last; an
//!   unchanged config is not republished.
//! - **Orderly stop.** SIGTERM, SIGINT or `POST /quitquitquit`: `/ready` turns 503, listeners
//!   stop accepting, open connections get up to the drain time, the rest are closed, the
//!   access log is flushed, and [`run`] returns.

use crate::admin::{self, AdminAction, AdminState};
use crate::compile::{compile, AccessLogSinks};
use crate::config::{self, ConfigError};
use crate::rib::Rib;
use crate::stats::StatsRegistry;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
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
    /// Signal handlers could not be installed.
    Signals(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Config(e) => write!(f, "invalid config: {e}"),
            RunError::DataPlane(e) => write!(f, "{e}"),
            RunError::Admin(e) => write!(f, "admin: cannot listen: {e}"),
            RunError::Signals(e) => write!(f, "cannot install signal handlers: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Events the control loop reacts to.
enum ControlEvent {
    Signal(i32),
    Admin(AdminAction),
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
    let (rib, loaded) = config::load_rib(&options.config_path).map_err(RunError::Config)?;
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

    let mut sinks = AccessLogSinks::new();
    let fib = compile(&rib, 1, &stats, &mut sinks);
    plane.publish(Arc::new(fib)).map_err(RunError::DataPlane)?;

    let (events_tx, events_rx) = mpsc::channel();
    let admin_state = start_admin(&rib, &plane, &stats, &options, events_tx.clone())?;
    *admin_state
        .config_dump
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = loaded.normalized;
    admin_state
        .server_state
        .store(admin::STATE_LIVE, Ordering::Release);
    install_signals(events_tx)?;
    tracing::info!(
        generation = 1,
        listeners = rib.listeners.len(),
        clusters = rib.clusters.len(),
        admin = %rib.admin.address,
        "config loaded; serving"
    );

    let mut control = Control {
        options,
        rib,
        generation: 1,
        stats,
        sinks,
        plane,
        admin: admin_state,
    };
    control.serve(events_rx);
    let Control {
        plane,
        admin,
        options,
        ..
    } = control;
    admin
        .server_state
        .store(admin::STATE_DRAINING, Ordering::Release);
    tracing::info!(drain_time_s = options.drain_time.as_secs_f64(), "draining");
    plane.shutdown(options.drain_time);
    writer.stop();
    tracing::info!("stopped");
    Ok(())
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
    let listener = std::net::TcpListener::bind(rib.admin.address).map_err(RunError::Admin)?;
    admin::spawn(listener, state.clone()).map_err(RunError::Admin)?;
    Ok(state)
}

fn install_signals(events: Sender<ControlEvent>) -> Result<(), RunError> {
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGTERM, SIGINT])
        .map_err(RunError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for signal in signals.forever() {
                if signal != SIGHUP {
                    stops += 1;
                    if stops > 1 {
                        tracing::warn!("second stop signal: exiting now");
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
    rib: Rib,
    generation: u64,
    stats: Arc<StatsRegistry>,
    sinks: AccessLogSinks,
    plane: DataPlane,
    admin: Arc<AdminState>,
}

impl Control {
    /// Handles events until a stop is asked for.
    fn serve(&mut self, events: Receiver<ControlEvent>) {
        let mut last_stamp = stamp(&self.options.config_path);
        let mut next_poll = Instant::now();
        loop {
            let wait = next_poll.saturating_duration_since(Instant::now());
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
            AdminAction::ResetCounters => {
                reset_counters(&self.stats);
                false
            }
            AdminAction::HealthcheckFail | AdminAction::HealthcheckOk => false,
        }
    }

    /// Loads, validates, compiles and publishes the config file; on any error, logs it and
    /// keeps the current FIB.
    fn reload(&mut self) {
        let (rib, loaded) = match config::load_rib(&self.options.config_path) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, field = e.path(), "config rejected; keeping the previous config");
                return;
            }
        };
        if rib == self.rib {
            tracing::info!("config unchanged");
            return;
        }
        let generation = self.generation + 1;
        let fib = compile(&rib, generation, &self.stats, &mut self.sinks);
        if let Err(e) = self.plane.publish(Arc::new(fib)) {
            tracing::error!(error = %e, "config rejected; keeping the previous config");
            return;
        }
        if rib.admin != self.rib.admin {
            tracing::warn!("admin.address changes take effect at the next start");
        }
        self.generation = generation;
        self.rib = rib;
        self.sinks.prune_unused();
        *self
            .admin
            .config_dump
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = loaded.normalized;
        tracing::info!(generation, "config reloaded");
    }
}

fn reset_counters(stats: &StatsRegistry) {
    let blocks = stats.blocks();
    blocks.tcp.values().for_each(|b| b.reset_counters());
    blocks.cluster.values().for_each(|b| b.reset_counters());
    blocks.host.values().for_each(|b| b.reset_counters());
    blocks.listener.values().for_each(|b| b.reset_counters());
    stats.server().reset_counters();
}
