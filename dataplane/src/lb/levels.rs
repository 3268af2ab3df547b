//! Which endpoints of a cluster a worker balances over: Envoy's priority levels, host health
//! and panic mode, in front of the per-policy balancers of [`super::ClusterLb`].
//!
//! # Envoy semantics
//!
//! Endpoints come sorted by priority (the FIB keeps them so). For each priority level:
//!
//! - **health** = `min(100, 140 * healthy / hosts)` (overprovisioning factor 1.4, host
//!   counts, integer arithmetic as in Envoy's `recalculatePerPriorityState`);
//! - **load**: the levels' health is normalised to `min(100, sum of health)` and handed out
//!   in priority order, each level taking `health * 100 / normalised` of what is left, and
//!   the rounding remainder going to the first level with any health. So a level with 80% of
//!   its hosts healthy still takes all traffic, one with 50% takes 70% and the next level the
//!   rest, and a level with no healthy host takes none;
//! - **panic**: a level whose healthy share is below `healthy_panic_threshold` (50% unless
//!   configured; 0 disables panic) balances over all its hosts, healthy or not (and each such
//!   pick counts in `lb_healthy_panic`). When every level is in panic, load is split by host
//!   count instead. With panic disabled and no healthy host anywhere, there is no pick
//!   (`upstream_cx_none_healthy`).
//!
//! - **localities** (`common_lb_config.locality_weighted_lb_config`, not with the hashing
//!   policies): within a level not in panic, a locality (one `LocalityLbEndpoints` group) is
//!   picked first, by Envoy's EDF over effective weights
//!   `load_balancing_weight * min(1, 1.4 * healthy / hosts)` (kept in hundredths, so
//!   integer weights keep exact ratios), then a
//!   host within it by the policy. A locality without a weight or without a healthy host is
//!   never picked; when no locality can be, the level's healthy hosts are balanced over as
//!   a whole (Envoy's fallback). A level in panic balances over all its hosts, localities
//!   ignored, as Envoy does.
//!
//! The level is chosen by `r % 100 + 1` against the cumulative loads, where `r` is the
//! connection's hash for RING_HASH and MAGLEV (so a key stays on its level, as in Envoy's
//! thread-aware balancers) and a random draw otherwise.
//!
//! # Cost
//!
//! A cluster whose hosts' health cannot change (no health check, no outlier detection) and
//! that has one priority is one level over the FIB's endpoint array: the pick is exactly the
//! policy's. Otherwise [`ClusterBalancer::build`] materialises each level's members (and, for
//! a hashing policy over a subset, its table) once per health change; a pick then reads the
//! cluster's health epoch (one atomic load) and allocates nothing.

use super::{hashed, ClusterLb, Rng, WeightedRotation};
use crate::fib::{Cluster, Endpoint, HashTable};

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING_PCT: u64 = 140;

/// One cluster's balancing on one worker: levels and their policy balancers, for the host
/// health seen at [`ClusterBalancer::epoch`].
#[derive(Debug, Clone)]
pub struct ClusterBalancer {
    seed: u64,
    epoch: u64,
    watches_health: bool,
    /// The first priority level, inline: the common one-level cluster clones its balancer
    /// (at every FIB adoption that keeps the cluster) without allocating.
    first: Level,
    /// Further levels, in priority order.
    rest: Vec<Level>,
}

#[derive(Debug, Clone)]
struct Level {
    /// The level's endpoints are `cluster.endpoints[start..end]`.
    start: usize,
    end: usize,
    /// Which of them are balanced over.
    members: Members,
    /// Balancing over all hosts, healthy or not.
    panic: bool,
    /// Cumulative load in percent up to and including this level.
    upto: u32,
    lb: ClusterLb,
    /// A hashing policy's table over `members`, when the FIB's (over all of priority 0)
    /// does not fit.
    table: Option<HashTable>,
    /// Locality-weighted balancing: the level's localities that may be picked. `None` when
    /// the cluster does not weigh localities, the level is in panic, or no locality has an
    /// effective weight (then the level's own members are balanced over, as in Envoy).
    localities: Option<Box<Localities>>,
}

/// A level's localities with an effective weight, and the rotation that picks among them.
#[derive(Debug, Clone)]
struct Localities {
    rotation: WeightedRotation,
    /// One per locality in the rotation, in the same order: its healthy members.
    levels: Vec<Level>,
}

#[derive(Debug, Clone)]
enum Members {
    /// All of `start..end`.
    All,
    /// These (indices into the cluster's endpoints, ascending) and copies of them.
    Some {
        index: Vec<u32>,
        endpoints: Vec<Endpoint>,
    },
}

/// A pick's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Index into the cluster's endpoints.
    pub endpoint: usize,
    /// The level was in panic (Envoy's `lb_healthy_panic`).
    pub panic: bool,
}

/// What a level is made of, before its balancer is built.
struct LevelPlan {
    start: usize,
    end: usize,
    healthy: Vec<u32>,
}

impl ClusterBalancer {
    /// The balancer for `cluster` at its current health; `seed` fixes where schedules start.
    pub fn build(cluster: &Cluster, seed: u64) -> Self {
        let watches_health = cluster.health.tracks_health();
        let epoch = cluster.health_state.epoch();
        let plans = plan_levels(&cluster.endpoints, watches_health);
        let loads = priority_loads(&plans, cluster.health.panic_threshold_pct);
        let mut levels =
            plans
                .into_iter()
                .zip(loads)
                .enumerate()
                .map(|(i, (plan, (upto, panic)))| {
                    level(
                        cluster,
                        plan,
                        upto,
                        panic,
                        true,
                        super::mix_seed(seed, i as u64 ^ epoch << 8),
                    )
                });
        let first = levels.next().expect("plan_levels plans at least one level");
        ClusterBalancer {
            seed,
            epoch,
            watches_health,
            first,
            rest: levels.collect(),
        }
    }

    /// True when `cluster`'s health has changed since this was built.
    #[inline]
    pub fn is_stale(&self, cluster: &Cluster) -> bool {
        self.watches_health && cluster.health_state.epoch() != self.epoch
    }

    /// Rebuilds for `cluster`'s current health (the same seed).
    pub fn rebuild(&mut self, cluster: &Cluster) {
        *self = Self::build(cluster, self.seed);
    }

    /// The health epoch this was built at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Picks an endpoint of `cluster` (the cluster this was built for): a level by load,
    /// then the policy over its members. `None` when nothing may be picked.
    ///
    /// - `active`: this worker's open connections per endpoint of the cluster;
    /// - `exclude`: the endpoint that just failed (never returned while its level has another
    ///   member);
    /// - `hash`: the connection's hash key (hashing policies; drawn at random when absent).
    pub fn pick(
        &mut self,
        cluster: &Cluster,
        active: &[u32],
        exclude: Option<usize>,
        hash: Option<u64>,
        rng: &mut Rng,
    ) -> Option<Picked> {
        let hash = if cluster.lb_policy.is_hashing() {
            Some(hash.unwrap_or_else(|| rng.next_u64()))
        } else {
            None
        };
        let level = if self.rest.is_empty() {
            &mut self.first
        } else {
            let r = hash.unwrap_or_else(|| rng.next_u64());
            let point = (r % 100) as u32 + 1;
            match self.rest.iter().position(|l| point <= l.upto) {
                Some(i) if point > self.first.upto => &mut self.rest[i],
                _ => &mut self.first,
            }
        };
        let (endpoint, panic) = (
            level.pick(cluster, active, exclude, hash, rng)?,
            level.panic,
        );
        Some(Picked { endpoint, panic })
    }

    /// True when some level runs its policy's weighted variant.
    pub fn is_weighted(&self) -> bool {
        self.iter().any(|l| l.lb.is_weighted())
    }

    /// How many endpoints are balanced over now, all levels together.
    pub fn len(&self) -> usize {
        self.iter().map(Level::size).sum()
    }

    /// True when no endpoint is balanced over.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many endpoints each level balances over now, and whether it is in panic (for
    /// tests and diagnostics).
    pub fn levels(&self) -> Vec<(usize, u32, bool)> {
        self.iter().map(|l| (l.size(), l.upto, l.panic)).collect()
    }
}

impl ClusterBalancer {
    fn iter(&self) -> impl Iterator<Item = &Level> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

impl Level {
    /// An endpoint of this level (an index into the cluster's endpoints): by locality first
    /// when the level weighs localities, then by the policy.
    fn pick(
        &mut self,
        cluster: &Cluster,
        active: &[u32],
        exclude: Option<usize>,
        hash: Option<u64>,
        rng: &mut Rng,
    ) -> Option<usize> {
        match self.localities.as_deref_mut() {
            Some(localities) => localities.pick(cluster, active, exclude, rng),
            None => self.pick_member(cluster, active, exclude, hash, rng),
        }
    }

    /// An endpoint among this level's members, by the cluster's policy.
    fn pick_member(
        &mut self,
        cluster: &Cluster,
        active: &[u32],
        exclude: Option<usize>,
        hash: Option<u64>,
        rng: &mut Rng,
    ) -> Option<usize> {
        let size = self.size();
        if size == 0 {
            return None;
        }
        let exclude = exclude.and_then(|e| self.slot_of(e));
        let slot = match hash {
            Some(h) => {
                let table = self
                    .table
                    .as_ref()
                    .or_else(|| self.fits_fib_table(cluster))?;
                hashed(table, h, size, exclude)?
            }
            None => {
                let Level {
                    start,
                    end,
                    members,
                    lb,
                    ..
                } = self;
                let (start, members) = (*start, &*members);
                let endpoints = match members {
                    Members::All => &cluster.endpoints[start..*end],
                    Members::Some { endpoints, .. } => &endpoints[..],
                };
                let active_of = |slot: usize| {
                    let i = match members {
                        Members::All => start + slot,
                        Members::Some { index, .. } => index[slot] as usize,
                    };
                    active.get(i).copied().unwrap_or(0)
                };
                lb.pick_with(endpoints, active_of, exclude, rng)?
            }
        };
        Some(self.endpoint_of(slot))
    }

    fn size(&self) -> usize {
        match &self.members {
            Members::All => self.end - self.start,
            Members::Some { index, .. } => index.len(),
        }
    }

    fn endpoints<'a>(&'a self, cluster: &'a Cluster) -> &'a [Endpoint] {
        match &self.members {
            Members::All => &cluster.endpoints[self.start..self.end],
            Members::Some { endpoints, .. } => endpoints,
        }
    }

    fn slot_of(&self, endpoint: usize) -> Option<usize> {
        match &self.members {
            Members::All => (self.start..self.end)
                .contains(&endpoint)
                .then(|| endpoint - self.start),
            Members::Some { index, .. } => index.binary_search(&(endpoint as u32)).ok(),
        }
    }

    fn endpoint_of(&self, slot: usize) -> usize {
        match &self.members {
            Members::All => self.start + slot,
            Members::Some { index, .. } => index[slot] as usize,
        }
    }

    /// The FIB's table, when this level is exactly what it was built over (all of the
    /// cluster's first priority).
    fn fits_fib_table<'a>(&self, cluster: &'a Cluster) -> Option<&'a HashTable> {
        let first_priority_end = first_priority_len(&cluster.endpoints);
        let fits = matches!(self.members, Members::All)
            && self.start == 0
            && self.end == first_priority_end;
        cluster.hash_table.as_ref().filter(|_| fits)
    }
}

impl Localities {
    /// Envoy's locality pick (`chooseHealthyLocality`), then the policy within it. On a
    /// retry, a locality whose only member just failed gives its turn to the next one.
    fn pick(
        &mut self,
        cluster: &Cluster,
        active: &[u32],
        exclude: Option<usize>,
        rng: &mut Rng,
    ) -> Option<usize> {
        let spent = exclude.and_then(|e| {
            self.levels
                .iter()
                .position(|l| l.size() == 1 && l.slot_of(e).is_some())
        });
        let i = self.rotation.next(spent);
        self.levels[i].pick_member(cluster, active, exclude, None, rng)
    }

    /// The localities of a level's `plan` with an effective weight (module docs), each a
    /// sub-level over its healthy members; `None` when none has one.
    fn build(cluster: &Cluster, plan: &LevelPlan, seed: u64) -> Option<Box<Localities>> {
        let mut weights = Vec::new();
        let mut levels = Vec::new();
        let mut start = plan.start;
        while start < plan.end {
            let group = &cluster.endpoints[start].locality;
            let end = start
                + cluster.endpoints[start..plan.end]
                    .iter()
                    .take_while(|e| e.locality.group == group.group)
                    .count();
            // `plan.healthy` is ascending: this locality's are one run of it.
            let from = plan.healthy.partition_point(|&i| (i as usize) < start);
            let to = plan.healthy.partition_point(|&i| (i as usize) < end);
            let healthy = plan.healthy[from..to].to_vec();
            let weight = effective_locality_weight(group.weight, end - start, healthy.len());
            if weight > 0 {
                let sub = LevelPlan {
                    start,
                    end,
                    healthy,
                };
                let sub_seed = super::mix_seed(seed, levels.len() as u64 + 1);
                levels.push(level(cluster, sub, 0, false, false, sub_seed));
                weights.push(weight);
            }
            start = end;
        }
        (!levels.is_empty()).then(|| {
            Box::new(Localities {
                rotation: WeightedRotation::new(&weights, seed),
                levels,
            })
        })
    }
}

/// Envoy's `effectiveLocalityWeight`: `weight * min(1, 1.4 * healthy / hosts)`, here in
/// hundredths so that integer weights keep their exact ratios when every host is healthy.
fn effective_locality_weight(weight: u32, hosts: usize, healthy: usize) -> u32 {
    if hosts == 0 {
        return 0;
    }
    let (hosts, healthy) = (hosts as u64, healthy as u64);
    let share = (OVERPROVISIONING_PCT * healthy).min(100 * hosts);
    u32::try_from(u64::from(weight) * share / hosts).unwrap_or(u32::MAX)
}

/// How many endpoints the first priority present has (they come first).
pub fn first_priority_len(endpoints: &[Endpoint]) -> usize {
    match endpoints.first() {
        Some(first) => endpoints
            .iter()
            .take_while(|e| e.priority == first.priority)
            .count(),
        None => 0,
    }
}

/// A level over `plan`'s members (all of them in panic). With `by_locality` and a cluster
/// that weighs localities, a level not in panic also gets its [`Localities`].
fn level(
    cluster: &Cluster,
    plan: LevelPlan,
    upto: u32,
    panic: bool,
    by_locality: bool,
    seed: u64,
) -> Level {
    let weighs = cluster.health.locality_weighted && !cluster.lb_policy.is_hashing();
    let localities = if by_locality && !panic && weighs {
        Localities::build(cluster, &plan, seed)
    } else {
        None
    };
    let (start, end) = (plan.start, plan.end);
    let all = panic || plan.healthy.len() == end - start;
    let members = if all {
        Members::All
    } else {
        let endpoints = plan
            .healthy
            .iter()
            .map(|&i| cluster.endpoints[i as usize].clone())
            .collect();
        Members::Some {
            index: plan.healthy,
            endpoints,
        }
    };
    let mut level = Level {
        start,
        end,
        members,
        panic,
        upto,
        lb: ClusterLb::empty(),
        table: None,
        localities,
    };
    let endpoints = level.endpoints(cluster);
    let lb = ClusterLb::over(cluster.lb_policy, endpoints, seed);
    let table = if cluster.lb_policy.is_hashing() && level.fits_fib_table(cluster).is_none() {
        HashTable::build(cluster.lb_policy, endpoints)
    } else {
        None
    };
    level.lb = lb;
    level.table = table;
    level
}

/// Groups `endpoints` (sorted by priority) into levels and finds each level's healthy hosts
/// (all of them when health is not watched).
fn plan_levels(endpoints: &[Endpoint], watch_health: bool) -> Vec<LevelPlan> {
    let mut plans = Vec::new();
    let mut start = 0;
    while start < endpoints.len() {
        let priority = endpoints[start].priority;
        let end = start
            + endpoints[start..]
                .iter()
                .take_while(|e| e.priority == priority)
                .count();
        let healthy = (start..end)
            .filter(|&i| !watch_health || endpoints[i].health().is_healthy())
            .map(|i| i as u32)
            .collect();
        plans.push(LevelPlan {
            start,
            end,
            healthy,
        });
        start = end;
    }
    if plans.is_empty() {
        plans.push(LevelPlan {
            start: 0,
            end: 0,
            healthy: Vec::new(),
        });
    }
    plans
}

/// Each level's cumulative load (percent) and panic, as Envoy computes them (module docs).
fn priority_loads(plans: &[LevelPlan], panic_threshold_pct: u32) -> Vec<(u32, bool)> {
    let counts: Vec<(u64, u64)> = plans
        .iter()
        .map(|p| ((p.end - p.start) as u64, p.healthy.len() as u64))
        .collect();
    let (loads, panics) = envoy_priority_loads(&counts, panic_threshold_pct);
    let mut upto = 0;
    loads
        .into_iter()
        .zip(panics)
        .map(|(load, panic)| {
            upto += load;
            (upto, panic)
        })
        .collect()
}

/// Envoy's per-priority loads and panic flags for levels of `(hosts, healthy)`: the loads
/// add up to 100.
pub fn envoy_priority_loads(
    counts: &[(u64, u64)],
    panic_threshold_pct: u32,
) -> (Vec<u32>, Vec<bool>) {
    let n = counts.len();
    let health: Vec<u32> = counts
        .iter()
        .map(|&(hosts, healthy)| {
            (OVERPROVISIONING_PCT * healthy)
                .checked_div(hosts)
                .map_or(0, |h| h.min(100) as u32)
        })
        .collect();
    let normalized_total = health.iter().sum::<u32>().min(100);
    let threshold = panic_threshold_pct.min(100);
    let mut loads = vec![0u32; n];
    if threshold == 0 && normalized_total == 0 {
        loads[0] = 100;
        return (loads, vec![false; n]);
    }
    let panics: Vec<bool> = counts
        .iter()
        .map(|&(hosts, healthy)| {
            normalized_total == 0 || {
                let pct = if hosts == 0 {
                    0.0
                } else {
                    100.0 * healthy as f64 / hosts as f64
                };
                pct < f64::from(threshold)
            }
        })
        .collect();
    if panics.iter().all(|&p| p) {
        total_panic_loads(counts, &mut loads);
    } else {
        distribute(&health, normalized_total, &mut loads);
    }
    (loads, panics)
}

/// Every level in panic: load in proportion to host counts, the remainder to the first
/// level that has hosts.
fn total_panic_loads(counts: &[(u64, u64)], loads: &mut [u32]) {
    let total: u64 = counts.iter().map(|c| c.0).sum();
    if total == 0 {
        loads[0] = 100;
        return;
    }
    let mut left = 100u32;
    for (load, &(hosts, _)) in loads.iter_mut().zip(counts) {
        *load = (100 * hosts / total) as u32;
        left -= *load;
    }
    let first = counts.iter().position(|c| c.0 > 0).unwrap_or(0);
    loads[first] += left;
}

/// Envoy's `distributeLoad` of 100% by health, remainder to the first level with health.
fn distribute(health: &[u32], normalized_total: u32, loads: &mut [u32]) {
    let mut left = 100u32;
    for (load, &h) in loads.iter_mut().zip(health) {
        *load = left.min(h * 100 / normalized_total);
        left -= *load;
    }
    if let Some(first) = health.iter().position(|&h| h > 0) {
        loads[first] += left;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::{HealthPolicy, LbPolicy, OutlierDetection};
    use crate::health::{ClusterHealth, FAILED_OUTLIER_CHECK};
    use crate::host::HostState;
    use crate::stats::ClusterStats;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn cluster(policy: LbPolicy, priorities: &[u32], panic_threshold_pct: u32) -> Cluster {
        let endpoints: Vec<Endpoint> = priorities
            .iter()
            .enumerate()
            .map(|(i, &priority)| Endpoint {
                address: SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                weight: 1,
                priority,
                locality: Default::default(),
                tunnel: None,
                stats: Arc::new(HostState::new()),
            })
            .collect();
        let hash_table = HashTable::build(policy, &endpoints[..first_priority_len(&endpoints)]);
        Cluster {
            http2: None,
            original_dst_authority: false,
            name: "c".into(),
            observability_name: "c".into(),
            connect_timeout_ms: 1000,
            buffer_limit_bytes: 1024 * 1024,
            lb_policy: policy,
            endpoints,
            stats: Arc::new(ClusterStats::new("c", 1)),
            upstream_bind: Default::default(),
            hash_table,
            circuit_breakers: Default::default(),
            resources: Default::default(),
            health: HealthPolicy {
                panic_threshold_pct,
                outlier: Some(OutlierDetection::default()),
                health_check: None,
                locality_weighted: false,
            },
            health_state: Arc::new(ClusterHealth::new("c", None)),
            added_via_api: false,
            udp_stats: Arc::new(crate::stats::ClusterUdpStats::new("c", 1)),
            tls: None,
            proxy_protocol: None,
            tls_secrets_missing: false,
            ssl_stats: None,
        }
    }

    fn eject(c: &Cluster, i: usize) {
        c.endpoints[i].health().set(FAILED_OUTLIER_CHECK);
        c.health_state.bump_epoch();
    }

    fn picks(c: &Cluster, b: &mut ClusterBalancer, n: usize) -> Vec<usize> {
        let mut rng = Rng::new(3);
        let mut counts = vec![0; c.endpoints.len()];
        for _ in 0..n {
            if b.is_stale(c) {
                b.rebuild(c);
            }
            let p = b.pick(c, &[], None, None, &mut rng).expect("a pick");
            counts[p.endpoint] += 1;
        }
        counts
    }

    #[test]
    fn envoy_loads_follow_overprovisioned_health() {
        // All healthy: everything to P0.
        assert_eq!(envoy_priority_loads(&[(2, 2), (1, 1)], 50).0, vec![100, 0]);
        // 80% healthy still takes all (1.4 x 80% > 100%).
        assert_eq!(envoy_priority_loads(&[(5, 4), (1, 1)], 50).0, vec![100, 0]);
        // Half healthy: 70 / 30.
        assert_eq!(envoy_priority_loads(&[(2, 1), (1, 1)], 50).0, vec![70, 30]);
        // None healthy in P0: all to P1, P0 in panic but without load.
        assert_eq!(
            envoy_priority_loads(&[(2, 0), (1, 1)], 50),
            (vec![0, 100], vec![true, false])
        );
        // Everything unhealthy: total panic, by host count.
        assert_eq!(
            envoy_priority_loads(&[(3, 0), (1, 0)], 50),
            (vec![75, 25], vec![true, true])
        );
        // Panic disabled and nothing healthy: P0 nominally, no panic (so no pick).
        assert_eq!(
            envoy_priority_loads(&[(3, 0), (1, 0)], 0),
            (vec![100, 0], vec![false, false])
        );
        // 1 of 3 healthy with threshold 0: not in panic.
        assert_eq!(envoy_priority_loads(&[(3, 1)], 0), (vec![100], vec![false]));
    }

    #[test]
    fn healthy_cluster_of_one_priority_is_one_level_over_all() {
        let c = cluster(LbPolicy::RoundRobin, &[0, 0, 0], 50);
        let mut b = ClusterBalancer::build(&c, 1);
        assert_eq!(b.levels(), vec![(3, 100, false)]);
        assert_eq!(picks(&c, &mut b, 300), vec![100, 100, 100]);
    }

    #[test]
    fn an_ejected_host_leaves_the_rotation_and_returns() {
        let c = cluster(LbPolicy::RoundRobin, &[0, 0, 0, 0], 50);
        let mut b = ClusterBalancer::build(&c, 1);
        eject(&c, 2);
        assert_eq!(picks(&c, &mut b, 300), vec![100, 100, 0, 100]);
        c.endpoints[2].health().clear(FAILED_OUTLIER_CHECK);
        c.health_state.bump_epoch();
        assert_eq!(picks(&c, &mut b, 400), vec![100, 100, 100, 100]);
    }

    #[test]
    fn below_the_panic_threshold_all_hosts_take_traffic() {
        let c = cluster(LbPolicy::Random, &[0, 0, 0], 50);
        let mut b = ClusterBalancer::build(&c, 1);
        eject(&c, 0);
        eject(&c, 1);
        let counts = picks(&c, &mut b, 3000);
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
        let mut rng = Rng::new(1);
        assert!(b.pick(&c, &[], None, None, &mut rng).unwrap().panic);
    }

    #[test]
    fn with_panic_disabled_only_healthy_hosts_or_nothing() {
        let c = cluster(LbPolicy::LeastRequest { choice_count: 2 }, &[0, 0, 0], 0);
        let mut b = ClusterBalancer::build(&c, 1);
        eject(&c, 0);
        eject(&c, 1);
        assert_eq!(picks(&c, &mut b, 100), vec![0, 0, 100]);
        eject(&c, 2);
        b.rebuild(&c);
        let mut rng = Rng::new(1);
        assert_eq!(b.pick(&c, &[], None, None, &mut rng), None);
    }

    #[test]
    fn traffic_fails_over_to_the_next_priority() {
        let c = cluster(LbPolicy::RoundRobin, &[0, 0, 1], 0);
        let mut b = ClusterBalancer::build(&c, 1);
        assert_eq!(picks(&c, &mut b, 100), vec![50, 50, 0]);
        eject(&c, 0);
        let half = picks(&c, &mut b, 1000);
        assert!((650..750).contains(&half[1]) && half[0] == 0, "{half:?}");
        eject(&c, 1);
        assert_eq!(picks(&c, &mut b, 100), vec![0, 0, 100]);
    }

    #[test]
    fn exclude_moves_to_another_member() {
        let c = cluster(LbPolicy::RoundRobin, &[0, 0, 0], 0);
        let mut b = ClusterBalancer::build(&c, 1);
        eject(&c, 1);
        b.rebuild(&c);
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            let p = b.pick(&c, &[], Some(2), None, &mut rng).unwrap();
            assert_eq!(p.endpoint, 0);
        }
    }

    #[test]
    fn hashing_skips_ejected_hosts_and_keeps_the_rest_in_place() {
        let policy = LbPolicy::Maglev { table_size: 65537 };
        let c = cluster(policy, &[0, 0, 0, 0], 0);
        let mut b = ClusterBalancer::build(&c, 1);
        let mut rng = Rng::new(1);
        let before: Vec<usize> = (0..1000u64)
            .map(|k| {
                b.pick(&c, &[], None, Some(k * 7919), &mut rng)
                    .unwrap()
                    .endpoint
            })
            .collect();
        eject(&c, 3);
        b.rebuild(&c);
        let mut moved = 0;
        for (k, &was) in before.iter().enumerate() {
            let now = b
                .pick(&c, &[], None, Some(k as u64 * 7919), &mut rng)
                .unwrap()
                .endpoint;
            assert_ne!(now, 3);
            moved += usize::from(now != was);
        }
        let on_three = before.iter().filter(|&&e| e == 3).count();
        // Keys of the ejected host move; of the others, few do (Maglev's disruption).
        assert!(
            moved >= on_three && moved < on_three + 100,
            "{moved} vs {on_three}"
        );
    }

    /// A locality-weighted cluster: `groups[g] = (weight, hosts)`, all at priority 0.
    fn by_locality(policy: LbPolicy, groups: &[(u32, usize)]) -> Cluster {
        let sizes: Vec<u32> = groups
            .iter()
            .flat_map(|&(_, hosts)| std::iter::repeat_n(0, hosts))
            .collect();
        let mut c = cluster(policy, &sizes, 50);
        let mut i = 0;
        for (g, &(weight, hosts)) in groups.iter().enumerate() {
            for _ in 0..hosts {
                c.endpoints[i].locality = crate::fib::Locality {
                    group: g as u32,
                    weight,
                    name: None,
                };
                i += 1;
            }
        }
        c.health.locality_weighted = true;
        c
    }

    #[test]
    fn localities_share_by_weight_exactly() {
        // Locality 0 (weight 1) has two hosts, locality 1 (weight 3) three.
        let c = by_locality(LbPolicy::RoundRobin, &[(1, 2), (3, 3)]);
        let mut b = ClusterBalancer::build(&c, 7);
        let counts = picks(&c, &mut b, 400);
        assert_eq!(counts[0] + counts[1], 100, "{counts:?}");
        assert_eq!(counts[2] + counts[3] + counts[4], 300, "{counts:?}");
        // Round robin within each locality.
        assert_eq!((counts[0], counts[1]), (50, 50), "{counts:?}");
        assert!(counts[2..].iter().all(|&n| n == 100), "{counts:?}");
    }

    #[test]
    fn a_locality_without_weight_gets_nothing_unless_none_has_one() {
        let c = by_locality(LbPolicy::RoundRobin, &[(0, 2), (2, 2)]);
        let mut b = ClusterBalancer::build(&c, 3);
        assert_eq!(picks(&c, &mut b, 100), [0, 0, 50, 50]);
        // No locality with a weight: the level's hosts, as if localities were not weighed.
        let c = by_locality(LbPolicy::RoundRobin, &[(0, 2), (0, 2)]);
        let mut b = ClusterBalancer::build(&c, 3);
        assert_eq!(picks(&c, &mut b, 100), [25, 25, 25, 25]);
    }

    #[test]
    fn unhealthy_hosts_lower_their_localitys_weight_as_envoy_computes_it() {
        let c = by_locality(
            LbPolicy::LeastRequest { choice_count: 2 },
            &[(1, 2), (1, 2)],
        );
        eject(&c, 3);
        let mut b = ClusterBalancer::build(&c, 5);
        // Locality 1: 1 of 2 healthy: 1 * min(1, 1.4 * 0.5) = 0.7 against locality 0's 1.
        let counts = picks(&c, &mut b, 1700);
        assert_eq!(counts[0] + counts[1], 1000, "{counts:?}");
        assert_eq!((counts[2], counts[3]), (700, 0), "{counts:?}");
        assert_eq!(effective_locality_weight(3, 4, 3), 300);
        assert_eq!(effective_locality_weight(3, 4, 2), 210);
        assert_eq!(effective_locality_weight(3, 4, 0), 0);
    }

    #[test]
    fn a_retry_leaves_a_locality_whose_only_host_failed() {
        let c = by_locality(LbPolicy::RoundRobin, &[(1, 1), (1, 1), (1, 1)]);
        let mut b = ClusterBalancer::build(&c, 9);
        let mut rng = Rng::new(1);
        for _ in 0..30 {
            let p = b.pick(&c, &[], Some(1), None, &mut rng).unwrap();
            assert_ne!(p.endpoint, 1);
        }
    }

    #[test]
    fn a_level_in_panic_ignores_localities() {
        // Locality 1 has the weight but both its hosts are out: with 1 of 3 hosts healthy
        // the level is in panic and balances over all three.
        let c = by_locality(LbPolicy::RoundRobin, &[(0, 1), (5, 2)]);
        eject(&c, 1);
        eject(&c, 2);
        let mut b = ClusterBalancer::build(&c, 2);
        assert_eq!(picks(&c, &mut b, 300), [100, 100, 100]);
        assert!(b.levels()[0].2, "panic");
    }
}
