//! The `dns` thread's loop: a single-threaded tokio runtime that keeps, per DNS cluster and
//! per name, the last good answer and when to ask again, runs the due resolutions
//! concurrently, counts Envoy's stats, and hands the control thread a cluster's hosts only
//! when they changed (or when the cluster's first round of answers is complete).

use super::refresh::{after_success, endpoints, Backoff, TargetAnswer};
use super::resolve::{Answer, Failure, Resolver, Resolvers};
use super::{DnsUpdate, DnsWatch};
use crate::rib::EndpointConfig;
use crate::stats::{DnsClusterStats, DnsStats};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use switchyard_dataplane::lb::Rng;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Where the thread's updates go; false once nobody listens (the thread then ends).
pub type Sink = Box<dyn FnMut(DnsUpdate) -> bool + Send>;

enum Command {
    Watch(Vec<DnsWatch>),
    Stop,
}

/// The running `dns` thread; stopped when dropped.
#[derive(Debug)]
pub struct DnsThread {
    commands: UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl DnsThread {
    /// Starts the thread; it resolves nothing until [`DnsThread::watch`].
    pub fn spawn(stats: Arc<DnsStats>, sink: Sink) -> std::io::Result<DnsThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (commands, rx) = unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                runtime.block_on(run(rx, stats, sink));
                // A getaddrinfo() call may still run on a blocking thread: leave it behind
                // rather than hold up the stop until it returns.
                runtime.shutdown_background();
            })?;
        Ok(DnsThread {
            commands,
            thread: Some(thread),
        })
    }

    /// Resolves these clusters from now on (and no others). A cluster whose names, family
    /// and resolver are unchanged keeps its answers and its schedule.
    pub fn watch(&self, clusters: Vec<DnsWatch>) {
        let _ = self.commands.send(Command::Watch(clusters));
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DnsThread {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One cluster being resolved.
struct Watched {
    watch: DnsWatch,
    /// Tells this cluster's results from those of a replaced one of the same name.
    epoch: u64,
    resolver: Resolver,
    stats: Arc<DnsClusterStats>,
    answers: Vec<TargetAnswer>,
    /// When each name is resolved next; `None` while its resolution runs.
    due: Vec<Option<Instant>>,
    backoff: Backoff,
    /// The hosts last handed over (`None`: nothing yet).
    sent: Option<Arc<[EndpointConfig]>>,
    settled: bool,
}

type Done = (String, u64, usize, Result<Answer, Failure>);

struct Loop {
    stats: Arc<DnsStats>,
    sink: Sink,
    clusters: BTreeMap<String, Watched>,
    resolvers: Resolvers,
    inflight: JoinSet<Done>,
    next_epoch: u64,
    rng: Rng,
}

async fn run(mut rx: UnboundedReceiver<Command>, stats: Arc<DnsStats>, sink: Sink) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut l = Loop {
        stats,
        sink,
        clusters: BTreeMap::new(),
        resolvers: HashMap::new(),
        inflight: JoinSet::new(),
        next_epoch: 1,
        rng: Rng::new(seed),
    };
    loop {
        l.start_due();
        let next = l.next_due();
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Watch(list)) => l.apply(list),
                Some(Command::Stop) | None => break,
            },
            Some(done) = l.inflight.join_next(), if !l.inflight.is_empty() => {
                if let Ok(done) = done {
                    if !l.on_done(done) {
                        break;
                    }
                }
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {},
        }
    }
    l.inflight.abort_all();
}

impl Loop {
    /// Takes a new list of clusters.
    fn apply(&mut self, list: Vec<DnsWatch>) {
        let mut previous = std::mem::take(&mut self.clusters);
        let mut resolvers = Resolvers::new();
        for watch in list {
            let resolver = match self.resolver(&watch, &mut resolvers) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(cluster = %watch.cluster, error = %e, "DNS cluster not resolved");
                    continue;
                }
            };
            let name = watch.cluster.clone();
            let kept = previous
                .remove(&name)
                .filter(|old| old.watch.same_hosts(&watch));
            let cluster = match kept {
                Some(mut old) => {
                    if old.watch.config.failure_refresh != watch.config.failure_refresh {
                        old.backoff = Backoff::new(watch.config.failure_refresh);
                    }
                    old.watch = watch;
                    old.resolver = resolver;
                    old
                }
                None => self.new_cluster(watch, resolver),
            };
            self.clusters.insert(name.clone(), cluster);
            if self.clusters[&name].watch.config.query.targets.is_empty() {
                // Nothing to resolve: settled, with no host, at once.
                self.settle_if_done(&name);
            }
        }
        self.resolvers = resolvers;
    }

    fn resolver(&self, watch: &DnsWatch, fresh: &mut Resolvers) -> Result<Resolver, String> {
        if let Some(r) = fresh.get(&watch.resolver) {
            return Ok(r.clone());
        }
        let r = match self.resolvers.get(&watch.resolver) {
            Some(r) => r.clone(),
            None => Resolver::build(&watch.resolver, &self.stats)?,
        };
        fresh.insert(watch.resolver.clone(), r.clone());
        Ok(r)
    }

    fn new_cluster(&mut self, watch: DnsWatch, resolver: Resolver) -> Watched {
        let n = watch.config.query.targets.len();
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        Watched {
            stats: self.stats.cluster(&watch.cluster),
            backoff: Backoff::new(watch.config.failure_refresh),
            watch,
            epoch,
            resolver,
            answers: vec![TargetAnswer::default(); n],
            due: vec![Some(Instant::now()); n],
            sent: None,
            settled: false,
        }
    }

    /// Starts every resolution that is due.
    fn start_due(&mut self) {
        let now = Instant::now();
        for (name, c) in &mut self.clusters {
            for (i, due) in c.due.iter_mut().enumerate() {
                if due.is_some_and(|d| d <= now) {
                    *due = None;
                    c.stats.update_attempt.fetch_add(1, Ordering::Relaxed);
                    let target = c.watch.config.query.targets[i].name.clone();
                    let family = c.watch.config.query.family;
                    let (resolver, stats) = (c.resolver.clone(), self.stats.clone());
                    let (cluster, epoch) = (name.clone(), c.epoch);
                    self.inflight.spawn(async move {
                        let result = resolver.resolve(&target, family, &stats).await;
                        (cluster, epoch, i, result)
                    });
                }
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.clusters
            .values()
            .flat_map(|c| c.due.iter().flatten())
            .min()
            .copied()
    }

    /// A resolution finished. False when the control thread no longer listens.
    fn on_done(&mut self, (name, epoch, i, result): Done) -> bool {
        let Some(c) = self.clusters.get_mut(&name).filter(|c| c.epoch == epoch) else {
            return true; // for a cluster since removed or replaced
        };
        let config = c.watch.config.clone();
        let target = &config.query.targets[i];
        let delay = match result {
            Ok(answer) => {
                c.stats.update_success.fetch_add(1, Ordering::Relaxed);
                if !c.answers[i].record(config.query.logical, &answer.addresses) {
                    c.stats.update_no_rebuild.fetch_add(1, Ordering::Relaxed);
                }
                c.backoff.reset();
                tracing::debug!(cluster = %name, name = %target.name, addresses = ?answer.addresses, ttl = ?answer.ttl, "DNS answer");
                after_success(&config, answer.ttl, &mut self.rng)
            }
            Err(failure) => {
                c.stats.update_failure.fetch_add(1, Ordering::Relaxed);
                c.answers[i].attempted = true;
                let delay = c.backoff.next(config.refresh_rate, &mut self.rng);
                tracing::debug!(
                    cluster = %name,
                    name = %target.name,
                    error = %failure,
                    retry_ms = delay.as_millis() as u64,
                    kept = c.answers[i].hosts.as_ref().map_or(0, Vec::len),
                    "DNS resolution failed; keeping the last good hosts"
                );
                delay
            }
        };
        c.due[i] = Some(Instant::now() + delay);
        self.settle_if_done(&name)
    }

    /// Hands over the cluster's hosts if they changed, or if its first round just ended.
    fn settle_if_done(&mut self, name: &str) -> bool {
        let Some(c) = self.clusters.get_mut(name) else {
            return true;
        };
        let settled = c.answers.iter().all(|a| a.attempted);
        let (hosts, hostnames) = endpoints(&c.watch.config.query, &c.answers);
        let changed = c.sent.as_deref() != Some(&*hosts);
        if !changed && settled == c.settled {
            return true;
        }
        if changed && (c.sent.is_some() || !hosts.is_empty()) {
            c.stats.membership_change.fetch_add(1, Ordering::Relaxed);
        }
        if changed {
            tracing::info!(
                cluster = %name,
                hosts = ?hosts.iter().map(|e| e.address).collect::<Vec<_>>(),
                "DNS cluster hosts changed"
            );
        }
        c.sent = Some(hosts.clone());
        c.settled = settled;
        let update = DnsUpdate {
            cluster: name.to_string(),
            query: c.watch.config.query.clone(),
            resolver: c.watch.resolver.clone(),
            endpoints: hosts,
            hostnames,
            settled,
        };
        (self.sink)(update)
    }
}

/// How long the first answers of `watches` may take at most: every name's family lookups
/// one after the other, each with its resolver's every try (plus a margin).
pub fn first_answers_bound(watches: &[DnsWatch]) -> Duration {
    watches
        .iter()
        .map(|w| super::resolve::worst_case(&w.resolver))
        .max()
        .unwrap_or_default()
        .saturating_mul(2)
        + Duration::from_millis(250)
}
