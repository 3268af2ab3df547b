//! Per-worker load balancers: which endpoint of a cluster a new connection goes to.
//!
//! # Model
//!
//! Every worker owns one [`WorkerLb`] per FIB generation it runs: one [`ClusterLb`] per
//! cluster, built when the worker adopts the FIB, thrown away with it. Nothing here is shared
//! between workers, so nothing locks; each worker also owns one [`Rng`], which it uses for
//! these picks and for weighted-cluster routes ([`crate::fib::WeightedClusters::pick`]).
//! The code is pure: no I/O, no clock, no atomics. The caller passes in what changes between
//! picks (this worker's open connections per endpoint, the endpoint that just failed).
//!
//! # Guarantees
//!
//! - **No allocation on a pick.** [`ClusterLb::new`] and [`WorkerLb::new`] allocate every table
//!   a policy needs (the EDF heap, the cumulative weights); [`ClusterLb::pick`] only reads and
//!   rewrites those in place.
//! - **Bounded work.** A pick costs O(1) (round robin, unweighted random), O(`choice_count`)
//!   (least request), or O(log n) (EDF, weighted random). No loop retries until lucky.
//! - **Determinism.** Given the same seed, the same cluster and the same sequence of calls, the
//!   picks are the same. Different seeds (one per worker, see [`mix_seed`]) start workers at
//!   different points of the schedule, so they do not all send their first connection to the
//!   same host — Envoy seeds each load balancer randomly for the same reason.
//! - **Retries move on.** With `exclude = Some(i)` and more than one endpoint, a pick never
//!   returns `i`. With only one endpoint it returns that endpoint: whether to try it again is
//!   the caller's decision.
//! - **Never panics** on well-formed input. An `active` slice shorter than the endpoint list
//!   counts the missing endpoints as idle.
//!
//! # Envoy semantics
//!
//! - `ROUND_ROBIN`: with equal weights, a plain rotation starting at a seeded offset
//!   (Envoy's `rr_indexes_[source] = seed_`). With differing weights, an earliest deadline
//!   first (EDF) schedule: a host's next deadline is its last plus `1 / weight`, the smallest
//!   deadline wins and ties go to the entry inserted first (Envoy's `order_offset_`). Envoy
//!   advances a fresh schedule by a random number of picks (`createWithPicks`); we do the same
//!   in closed form, at a random point within one cycle. Deadlines are exact fractions
//!   `picks / weight` compared by cross-multiplication, so shares never drift however long
//!   a worker runs: weights 1:3 give exactly 100 and 300 of any 400 consecutive picks.
//! - `LEAST_REQUEST`: with equal weights, Envoy's `N_CHOICES`: draw `choice_count` hosts
//!   uniformly *with replacement* and keep the first one with strictly the fewest active
//!   connections. With differing weights, EDF where the host just picked is re-queued with
//!   weight `load_balancing_weight / (active + 1)` (`active_request_bias` 1.0, Envoy's
//!   default); deadlines here are `f64` like Envoy's because weights change on every pick.
//!   A fresh schedule assumes no active connections, since it is built before the first pick.
//! - `RANDOM`: uniform with equal weights; with differing weights, in proportion to
//!   `load_balancing_weight`. Envoy's random balancer ignores weights; ours honours them
//!   (a deliberate difference: a weight the user wrote is never silently ignored).
//! - Endpoint weight 0 (which Envoy's config validation rejects) is treated as 1.
//! - A connect retry in Envoy re-runs the balancer and may land on the same host; here the
//!   failed host is skipped without charging its turn: the EDF schedules give the turn to the
//!   earliest host other than the failed one, and the random policies draw from the others.
//!
//! Priority levels, host health and panic mode are applied in front of these policies by
//! [`levels::ClusterBalancer`]: a policy balances over one level's members.

pub mod levels;

use crate::fib::{Cluster, ClusterId, Endpoint, Fib, HashTable, LbPolicy};
pub use levels::{ClusterBalancer, Picked};

/// Envoy's default `choice_count` for least request.
pub const DEFAULT_CHOICE_COUNT: u32 = 2;

/// Derives an independent seed for stream `stream` (a worker index, a cluster index) from
/// `seed`, with the SplitMix64 finalizer. Allocation-free and constant time.
#[inline]
pub fn mix_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small, fast, seedable pseudo-random generator (wyrand), one per worker.
///
/// Not cryptographic. Every seed, 0 included, gives a full-period sequence. Deliberately not
/// `Copy`: a silently copied generator would repeat its picks.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A number in `[0, n)` (Lemire's multiply-shift: one draw, bias below `n / 2^64`);
    /// 0 when `n` is 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// An index in `[0, n)`; 0 when `n` is 0.
    #[inline]
    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// One cluster's load balancer on one worker. Built by [`ClusterLb::new`] for one FIB
/// generation; picks only among that generation's endpoints of that cluster.
#[derive(Debug, Clone)]
pub struct ClusterLb {
    /// Endpoints this balancer was built for.
    len: usize,
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    /// Equal weights: rotate; `next` is the index of the next pick.
    RoundRobin { next: usize },
    /// Differing weights: Envoy's EDF with exact deadlines.
    WeightedRoundRobin(EdfHeap<Ratio>),
    /// Equal weights: uniform.
    Random,
    /// Differing weights: `cumulative[i]` is the sum of the weights of endpoints `0..=i`.
    WeightedRandom { cumulative: Vec<u64> },
    /// Equal weights: power of `choice_count` choices.
    LeastRequest { choice_count: u32 },
    /// Differing weights: EDF over `weight / (active + 1)`.
    WeightedLeastRequest(EdfHeap<f64>),
}

impl ClusterLb {
    /// Builds the balancer for `cluster` and allocates everything its picks will need.
    /// `seed` fixes where the schedule starts and nothing else; give each worker its own.
    pub fn new(cluster: &Cluster, seed: u64) -> Self {
        Self::over(cluster.lb_policy, &cluster.endpoints, seed)
    }

    /// A balancer with no endpoints (every pick is `None`).
    pub fn empty() -> Self {
        ClusterLb {
            len: 0,
            state: State::Random,
        }
    }

    /// Builds the balancer for `policy` over `endpoints` (a cluster's, or one priority
    /// level's members).
    pub fn over(policy: LbPolicy, endpoints: &[Endpoint], seed: u64) -> Self {
        let len = endpoints.len();
        let weighted = !weights_equal(endpoints);
        let state = match (policy, weighted) {
            (LbPolicy::RoundRobin, false) => State::RoundRobin {
                next: index_from_seed(seed, len),
            },
            (LbPolicy::RoundRobin, true) => {
                State::WeightedRoundRobin(EdfHeap::prepicked(endpoints.iter().map(weight), seed))
            }
            (LbPolicy::Random, false) => State::Random,
            (LbPolicy::Random, true) => State::WeightedRandom {
                cumulative: endpoints
                    .iter()
                    .scan(0u64, |sum, e| {
                        *sum += u64::from(weight(e));
                        Some(*sum)
                    })
                    .collect(),
            },
            (LbPolicy::LeastRequest { choice_count }, false) => State::LeastRequest {
                choice_count: choice_count.max(1),
            },
            (LbPolicy::LeastRequest { .. }, true) => State::WeightedLeastRequest(
                EdfHeap::prepicked(endpoints.iter().map(weight), seed).to_float(),
            ),
            // No endpoints to pick from: the worker connects to the original destination.
            (LbPolicy::ClusterProvided, _) => State::Random,
            // Picks read the cluster's table in the FIB ([`WorkerLb::pick`]); nothing per worker.
            (LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }, _) => State::Random,
        };
        ClusterLb { len, state }
    }

    /// Number of endpoints this balancer was built for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the cluster has no endpoints (every pick is `None`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the endpoints' weights differ, so the policy runs its weighted variant
    /// (EDF for round robin and least request, proportional draw for random).
    pub fn is_weighted(&self) -> bool {
        matches!(
            self.state,
            State::WeightedRoundRobin(_)
                | State::WeightedRandom { .. }
                | State::WeightedLeastRequest(_)
        )
    }

    /// Picks an endpoint: an index into `endpoints`, or `None` when there are none.
    ///
    /// - `endpoints`: the cluster's endpoints in the generation this balancer was built for.
    /// - `active`: this worker's open connections per endpoint (least request reads it);
    ///   missing entries count as 0.
    /// - `exclude`: the endpoint that just failed; never returned while another exists.
    ///
    /// Allocation-free.
    pub fn pick(
        &mut self,
        endpoints: &[Endpoint],
        active: &[u32],
        exclude: Option<usize>,
        rng: &mut Rng,
    ) -> Option<usize> {
        self.pick_with(endpoints, |i| active_of(active, i), exclude, rng)
    }

    /// [`ClusterLb::pick`] with the open connections of endpoint `i` given by `active(i)`
    /// (a level's members map to the cluster's endpoints).
    pub fn pick_with(
        &mut self,
        endpoints: &[Endpoint],
        active: impl Fn(usize) -> u32,
        exclude: Option<usize>,
        rng: &mut Rng,
    ) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        debug_assert_eq!(
            n, self.len,
            "load balancer used with endpoints from another generation"
        );
        // Only an exclusion that leaves a choice matters.
        let exclude = exclude.filter(|&e| e < n && n > 1);
        if n != self.len {
            // A caller bug (caught by the assertion in debug builds): stay in range.
            return Some(uniform(n, exclude, rng));
        }
        let picked = match &mut self.state {
            State::RoundRobin { next } => {
                let mut i = *next;
                if Some(i) == exclude {
                    i = (i + 1) % n;
                }
                *next = (i + 1) % n;
                i
            }
            State::WeightedRoundRobin(heap) => heap.pick_next(exclude),
            State::Random => uniform(n, exclude, rng),
            State::WeightedRandom { cumulative } => weighted_random(cumulative, exclude, rng),
            State::LeastRequest { choice_count } => {
                let mut best = uniform(n, exclude, rng);
                for _ in 1..*choice_count {
                    let sampled = uniform(n, exclude, rng);
                    if active(sampled) < active(best) {
                        best = sampled;
                    }
                }
                best
            }
            State::WeightedLeastRequest(heap) => {
                let slot = heap.earliest(exclude);
                let entry = heap.entries[slot];
                let host = entry.host;
                // Envoy: current_time = popped deadline; re-add at current_time + 1 / weight
                // with weight = load_balancing_weight / (active + 1).
                let active_plus_one = f64::from(active(host)) + 1.0;
                let step = active_plus_one / f64::from(weight(&endpoints[host]));
                heap.reschedule(slot, entry.deadline + step);
                host
            }
        };
        debug_assert!(picked < n && Some(picked) != exclude);
        Some(picked)
    }
}

/// Envoy's `EdfScheduler` over fixed weights, for picking among a level's localities:
/// entry `i` is picked `w_i` times in every `sum(w)` picks, smoothly interleaved, from a
/// seeded point of the cycle. Allocation-free after [`WeightedRotation::new`].
#[derive(Debug, Clone)]
pub(crate) struct WeightedRotation(EdfHeap<Ratio>);

impl WeightedRotation {
    /// A rotation over `weights` (0 counts as 1; callers leave zero weights out).
    pub(crate) fn new(weights: &[u32], seed: u64) -> Self {
        WeightedRotation(EdfHeap::prepicked(weights.iter().map(|&w| w.max(1)), seed))
    }

    /// The next entry, never `exclude` while another exists.
    #[inline]
    pub(crate) fn next(&mut self, exclude: Option<usize>) -> usize {
        let exclude = exclude.filter(|_| self.0.entries.len() > 1);
        self.0.pick_next(exclude)
    }
}

/// The load balancers of every cluster of one FIB generation, on one worker.
#[derive(Debug)]
pub struct WorkerLb {
    generation: u64,
    clusters: Vec<ClusterBalancer>,
}

impl WorkerLb {
    /// Builds one [`ClusterBalancer`] per cluster of `fib`; cluster `i` gets the seed
    /// `mix_seed(seed, i)`. Allocates; call it when the worker adopts `fib`.
    pub fn new(fib: &Fib, seed: u64) -> Self {
        Self::following(fib, None, seed)
    }

    /// Like [`WorkerLb::new`], but a cluster that `previous` (the balancers of `previous_fib`)
    /// has at the same index, as the same `Arc`, keeps a copy of its balancer: its schedule
    /// goes on where it was, and adopting a FIB in which one cluster of 10k changed reads the
    /// two cluster arrays, not 10k clusters' endpoints.
    pub fn following(fib: &Fib, previous: Option<(&Fib, &WorkerLb)>, seed: u64) -> Self {
        let clusters = fib
            .clusters
            .iter()
            .enumerate()
            .map(|(i, cluster)| {
                let same = previous
                    .filter(|(pf, _)| fib.shares_cluster(pf, i))
                    .and_then(|(_, plb)| plb.clusters.get(i));
                match same {
                    Some(lb) => lb.clone(),
                    None => ClusterBalancer::build(cluster, mix_seed(seed, i as u64)),
                }
            })
            .collect();
        WorkerLb {
            generation: fib.generation,
            clusters,
        }
    }

    /// The generation of the FIB these balancers were built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of clusters.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// True when the FIB had no clusters.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The balancer of cluster `id`. Panics only on an id from another generation (a bug),
    /// like [`Fib::cluster`].
    #[inline]
    pub fn cluster(&mut self, id: ClusterId) -> &mut ClusterBalancer {
        &mut self.clusters[id.0 as usize]
    }

    /// Picks an endpoint of cluster `id` of `fib` (the FIB this was built from): see
    /// [`ClusterBalancer::pick`]. When the cluster's host health has changed since its
    /// balancer was built, rebuilds it first (the one allocation, once per change).
    #[inline]
    pub fn pick(
        &mut self,
        fib: &Fib,
        id: ClusterId,
        pick: Pick<'_>,
        rng: &mut Rng,
    ) -> Option<Picked> {
        debug_assert_eq!(fib.generation, self.generation, "FIB generation mismatch");
        let cluster = fib.cluster(id);
        let balancer = self.cluster(id);
        if balancer.is_stale(cluster) {
            balancer.rebuild(cluster);
        }
        balancer.pick(cluster, pick.active, pick.exclude, pick.hash, rng)
    }
}

/// What a pick knows of its connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick<'a> {
    /// This worker's open connections per endpoint (least request).
    pub active: &'a [u32],
    /// The endpoint that just failed: never picked again while another exists.
    pub exclude: Option<usize>,
    /// The connection's hash key (a hash policy's), for RING_HASH and MAGLEV.
    pub hash: Option<u64>,
}

/// A table pick over `n` hosts that avoids `exclude` (a retry after a failed connect): Envoy's retry
/// attempts (as its previous-hosts retry predicate makes them) until another endpoint comes
/// up, a bounded number of times, then the next endpoint. Allocation-free.
fn hashed(table: &HashTable, hash: u64, n: usize, exclude: Option<usize>) -> Option<usize> {
    let first = table.pick(hash)?;
    let Some(excluded) = exclude.filter(|&e| e == first && n > 1) else {
        return Some(first);
    };
    for attempt in 1..=16 {
        match table.pick_attempt(hash, attempt) {
            Some(i) if i != excluded => return Some(i),
            _ => {}
        }
    }
    Some((excluded + 1) % n)
}

/// An endpoint's weight; 0 (rejected by config validation) counts as 1.
#[inline]
fn weight(endpoint: &Endpoint) -> u32 {
    endpoint.weight.max(1)
}

/// True when all endpoints weigh the same (Envoy's `hostWeightsAreEqual`); then no EDF is
/// built. Trivially true for zero or one endpoint.
fn weights_equal(endpoints: &[Endpoint]) -> bool {
    match endpoints.first() {
        Some(first) => endpoints.iter().all(|e| weight(e) == weight(first)),
        None => true,
    }
}

#[inline]
fn active_of(active: &[u32], i: usize) -> u32 {
    active.get(i).copied().unwrap_or(0)
}

/// The starting index of a rotation over `n` endpoints; 0 when `n` is 0.
fn index_from_seed(seed: u64, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (seed % n as u64) as usize
    }
}

/// A uniform index in `[0, n)` other than `exclude` (which, when given, is `< n` and `n > 1`).
#[inline]
fn uniform(n: usize, exclude: Option<usize>, rng: &mut Rng) -> usize {
    match exclude {
        Some(e) => {
            let i = rng.index(n - 1);
            if i >= e {
                i + 1
            } else {
                i
            }
        }
        None => rng.index(n),
    }
}

/// An index drawn in proportion to weight, where endpoint `i` owns the points
/// `[cumulative[i - 1], cumulative[i])`; the excluded endpoint's points are left out.
#[inline]
fn weighted_random(cumulative: &[u64], exclude: Option<usize>, rng: &mut Rng) -> usize {
    let total = cumulative.last().copied().unwrap_or(0);
    let point = match exclude {
        Some(e) => {
            let end = cumulative[e];
            let start = if e == 0 { 0 } else { cumulative[e - 1] };
            let point = rng.below(total - (end - start));
            if point >= start {
                point + (end - start)
            } else {
                point
            }
        }
        None => rng.below(total),
    };
    cumulative.partition_point(|&c| c <= point)
}

/// An EDF deadline: how entries order.
trait Deadline: Copy {
    /// Strictly earlier than `other`.
    fn earlier(self, other: Self) -> bool;
}

/// The exact deadline `picks / weight` of a static-weight EDF entry: after `picks - 1`
/// picks, a host of weight `w` is due at time `picks / w`.
#[derive(Debug, Clone, Copy)]
struct Ratio {
    picks: u64,
    weight: u32,
}

impl Deadline for Ratio {
    #[inline]
    fn earlier(self, other: Self) -> bool {
        u128::from(self.picks) * u128::from(other.weight)
            < u128::from(other.picks) * u128::from(self.weight)
    }
}

impl Deadline for f64 {
    #[inline]
    fn earlier(self, other: Self) -> bool {
        self < other
    }
}

#[derive(Debug, Clone, Copy)]
struct EdfEntry<K> {
    deadline: K,
    /// Insertion counter: breaks deadline ties, first inserted first (Envoy's `order_offset_`).
    order: u64,
    /// Endpoint index.
    host: usize,
}

impl<K: Deadline> EdfEntry<K> {
    #[inline]
    fn before(&self, other: &Self) -> bool {
        self.deadline.earlier(other.deadline)
            || (!other.deadline.earlier(self.deadline) && self.order < other.order)
    }
}

/// Envoy's `EdfScheduler` as a binary min-heap of one entry per endpoint. Envoy's
/// `pickAndAdd` pops the top and pushes it back with a later deadline; here the entry is
/// rewritten in place and sifted down, so the heap never grows or shrinks after it is built.
#[derive(Debug, Clone)]
struct EdfHeap<K> {
    entries: Vec<EdfEntry<K>>,
    next_order: u64,
}

impl<K: Deadline> EdfHeap<K> {
    fn from_entries(entries: Vec<EdfEntry<K>>, next_order: u64) -> Self {
        let mut heap = EdfHeap {
            entries,
            next_order,
        };
        for slot in (0..heap.entries.len() / 2).rev() {
            heap.sift_down(slot);
        }
        heap
    }

    /// The slot of the earliest entry whose host is not `exclude`. The heap must not be
    /// empty. When the top is excluded, the next earliest is one of its two children.
    #[inline]
    fn earliest(&self, exclude: Option<usize>) -> usize {
        if exclude != Some(self.entries[0].host) {
            return 0;
        }
        match (self.entries.get(1), self.entries.get(2)) {
            (Some(left), Some(right)) if right.before(left) => 2,
            (Some(_), _) => 1,
            (None, _) => 0,
        }
    }

    /// Gives the entry in `slot` its next, later `deadline` and a new insertion order
    /// (Envoy's `add`), then restores the heap.
    #[inline]
    fn reschedule(&mut self, slot: usize, deadline: K) {
        let entry = &mut self.entries[slot];
        entry.deadline = deadline;
        entry.order = self.next_order;
        self.next_order += 1;
        self.sift_down(slot);
    }

    fn sift_down(&mut self, mut slot: usize) {
        let n = self.entries.len();
        loop {
            let left = 2 * slot + 1;
            if left >= n {
                return;
            }
            let right = left + 1;
            let child = if right < n && self.entries[right].before(&self.entries[left]) {
                right
            } else {
                left
            };
            if !self.entries[child].before(&self.entries[slot]) {
                return;
            }
            self.entries.swap(child, slot);
            slot = child;
        }
    }
}

impl EdfHeap<Ratio> {
    /// A schedule over `weights` (each at least 1) advanced by `seed % total_weight` picks:
    /// a seeded point in one cycle (Envoy's `createWithPicks`). Host `i` has made
    /// `floor(picks * w_i / total)` of them, computed directly; the fewer than `n` left over
    /// run through the heap.
    fn prepicked(weights: impl Iterator<Item = u32> + Clone, seed: u64) -> Self {
        let total: u64 = weights.clone().map(u64::from).sum();
        let picks = if total == 0 { 0 } else { seed % total };
        let mut done = 0u64;
        let mut n = 0u64;
        let entries = weights
            .enumerate()
            .map(|(host, w)| {
                n += 1;
                let made = (u128::from(picks) * u128::from(w) / u128::from(total)) as u64;
                done += made;
                EdfEntry {
                    deadline: Ratio {
                        picks: made + 1,
                        weight: w,
                    },
                    order: host as u64,
                    host,
                }
            })
            .collect();
        let mut heap = EdfHeap::from_entries(entries, n);
        for _ in done..picks {
            heap.pick_next(None);
        }
        heap
    }

    /// The earliest entry's host other than `exclude` (when another exists), its turn
    /// taken: its next deadline is one more pick at its weight.
    #[inline]
    fn pick_next(&mut self, exclude: Option<usize>) -> usize {
        let slot = self.earliest(exclude);
        let entry = self.entries[slot];
        let deadline = Ratio {
            picks: entry.deadline.picks + 1,
            weight: entry.deadline.weight,
        };
        self.reschedule(slot, deadline);
        entry.host
    }

    /// The same schedule with floating-point deadlines, for weights that change per pick.
    fn to_float(&self) -> EdfHeap<f64> {
        let entries = self
            .entries
            .iter()
            .map(|e| EdfEntry {
                deadline: e.deadline.picks as f64 / f64::from(e.deadline.weight),
                order: e.order,
                host: e.host,
            })
            .collect();
        EdfHeap::from_entries(entries, self.next_order)
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use super::*;
    use crate::host::HostState;
    use crate::stats::ClusterStats;
    use proptest::prelude::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Endpoint {
                address: SocketAddr::from(([10, 0, 0, (i % 250) as u8 + 1], 8080)),
                weight,
                priority: 0,
                locality: Default::default(),
                tunnel: None,
                stats: Arc::new(HostState::new()),
            })
            .collect()
    }

    fn cluster(policy: LbPolicy, weights: &[u32]) -> Cluster {
        Cluster {
            http2: None,
            original_dst_authority: false,
            name: "c".into(),
            observability_name: "c".into(),
            connect_timeout_ms: 1000,
            buffer_limit_bytes: 1024 * 1024,
            lb_policy: policy,
            endpoints: endpoints(weights),
            stats: Arc::new(ClusterStats::new("c", 1)),
            upstream_bind: Default::default(),
            hash_table: None,
            circuit_breakers: Default::default(),
            resources: Default::default(),
            health: Default::default(),
            health_state: Default::default(),
            added_via_api: false,
            udp_stats: Arc::new(crate::stats::ClusterUdpStats::new("c", 1)),
            tls: None,
            proxy_protocol: None,
            tls_secrets_missing: false,
            ssl_stats: None,
        }
    }

    const LR2: LbPolicy = LbPolicy::LeastRequest {
        choice_count: DEFAULT_CHOICE_COUNT,
    };
    const POLICIES: [LbPolicy; 3] = [LbPolicy::RoundRobin, LbPolicy::Random, LR2];

    /// Picks `picks` times and counts per endpoint.
    fn histogram(
        c: &Cluster,
        seed: u64,
        active: &[u32],
        exclude: Option<usize>,
        picks: usize,
    ) -> Vec<usize> {
        let mut lb = ClusterLb::new(c, seed);
        let mut rng = Rng::new(seed);
        let mut counts = vec![0; c.endpoints.len()];
        for _ in 0..picks {
            let i = lb.pick(&c.endpoints, active, exclude, &mut rng).unwrap();
            counts[i] += 1;
        }
        counts
    }

    /// Where the balancer's tables live and how big they are: must not change on a pick.
    fn footprint(lb: &ClusterLb) -> (usize, usize) {
        match &lb.state {
            State::WeightedRoundRobin(h) => (h.entries.as_ptr() as usize, h.entries.capacity()),
            State::WeightedLeastRequest(h) => (h.entries.as_ptr() as usize, h.entries.capacity()),
            State::WeightedRandom { cumulative } => {
                (cumulative.as_ptr() as usize, cumulative.capacity())
            }
            _ => (0, 0),
        }
    }

    #[test]
    fn rng_is_deterministic_and_seed_dependent() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..16).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let mut zero = Rng::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64());
        assert_eq!(Rng::new(1).below(0), 0);
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }

    #[test]
    fn empty_cluster_picks_none() {
        for policy in POLICIES {
            let c = cluster(policy, &[]);
            let mut lb = ClusterLb::new(&c, 1);
            assert!(lb.is_empty());
            assert_eq!(lb.pick(&c.endpoints, &[], None, &mut Rng::new(1)), None);
            assert_eq!(lb.pick(&c.endpoints, &[], Some(0), &mut Rng::new(1)), None);
        }
    }

    #[test]
    fn single_endpoint_is_returned_even_when_excluded() {
        for policy in POLICIES {
            let c = cluster(policy, &[5]);
            let mut lb = ClusterLb::new(&c, 9);
            let mut rng = Rng::new(9);
            assert_eq!(lb.pick(&c.endpoints, &[0], None, &mut rng), Some(0));
            assert_eq!(lb.pick(&c.endpoints, &[0], Some(0), &mut rng), Some(0));
        }
    }

    #[test]
    fn equal_weights_round_robin_cycles_from_a_seeded_offset() {
        let c = cluster(LbPolicy::RoundRobin, &[2, 2, 2, 2]);
        let mut starts = std::collections::HashSet::new();
        for seed in 0..32 {
            let mut lb = ClusterLb::new(&c, seed);
            assert!(!lb.is_weighted());
            let mut rng = Rng::new(seed);
            let first = lb.pick(&c.endpoints, &[], None, &mut rng).unwrap();
            starts.insert(first);
            for k in 1..12 {
                assert_eq!(
                    lb.pick(&c.endpoints, &[], None, &mut rng),
                    Some((first + k) % 4)
                );
            }
        }
        assert_eq!(starts.len(), 4, "seeds spread the starting host");
    }

    #[test]
    fn weighted_round_robin_one_to_three_is_exact() {
        let c = cluster(LbPolicy::RoundRobin, &[1, 3]);
        for seed in 0..64 {
            assert!(ClusterLb::new(&c, seed).is_weighted());
            assert_eq!(histogram(&c, seed, &[], None, 400), vec![100, 300]);
        }
    }

    #[test]
    fn weighted_round_robin_follows_envoy_edf_order() {
        // Seed 0 starts at the beginning of the cycle: deadlines 1/3, 2/3, then the tie at
        // 1 goes to host 0, inserted first.
        let c = cluster(LbPolicy::RoundRobin, &[1, 3]);
        let mut lb = ClusterLb::new(&c, 0);
        let mut rng = Rng::new(0);
        let seq: Vec<usize> = (0..8)
            .map(|_| lb.pick(&c.endpoints, &[], None, &mut rng).unwrap())
            .collect();
        assert_eq!(seq, vec![1, 1, 0, 1, 1, 1, 0, 1]);
    }

    #[test]
    fn weighted_round_robin_matches_weights_over_full_cycles() {
        let weights = [5, 1, 3, 7, 2, 2];
        let total: u32 = weights.iter().sum();
        let want: Vec<usize> = weights.iter().map(|&w| w as usize * 50).collect();
        let c = cluster(LbPolicy::RoundRobin, &weights);
        // From the start of a cycle (seed 0), 50 cycles are exact.
        assert_eq!(histogram(&c, 0, &[], None, total as usize * 50), want);
        // From elsewhere, a window may cut a group of equal deadlines at both ends:
        // within one pick per host, never drifting further.
        for seed in [1, 17, 12345, u64::MAX] {
            let counts = histogram(&c, seed, &[], None, total as usize * 50);
            for (got, want) in counts.iter().zip(&want) {
                assert!(got.abs_diff(*want) <= 1, "seed {seed}: {counts:?}");
            }
        }
    }

    #[test]
    fn weighted_round_robin_seeds_spread_first_pick() {
        let c = cluster(LbPolicy::RoundRobin, &[1, 1, 2]);
        let firsts: std::collections::HashSet<usize> = (0..64)
            .map(|seed| {
                ClusterLb::new(&c, seed)
                    .pick(&c.endpoints, &[], None, &mut Rng::new(0))
                    .unwrap()
            })
            .collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn exclude_is_never_returned_when_another_exists() {
        let weight_sets: [&[u32]; 5] = [&[1, 1], &[1, 1, 1, 1, 1], &[1, 3], &[9, 1, 1], &[100, 1]];
        let choice_counts = [1, 2, 5];
        for weights in weight_sets {
            for policy in POLICIES
                .into_iter()
                .chain(choice_counts.map(|choice_count| LbPolicy::LeastRequest { choice_count }))
            {
                let c = cluster(policy, weights);
                for ex in 0..weights.len() {
                    let counts = histogram(&c, 42, &[0; 5], Some(ex), 2000);
                    assert_eq!(counts[ex], 0, "{policy:?} {weights:?} exclude {ex}");
                    assert_eq!(counts.iter().sum::<usize>(), 2000);
                }
            }
        }
    }

    #[test]
    fn excluding_a_heavy_host_keeps_the_others_in_proportion() {
        // Weighted round robin over 10:1:3 excluding host 0: hosts 1 and 2 keep 1:3.
        let c = cluster(LbPolicy::RoundRobin, &[10, 1, 3]);
        let counts = histogram(&c, 5, &[], Some(0), 400);
        assert_eq!(counts, vec![0, 100, 300]);
        // Weighted random, same.
        let c = cluster(LbPolicy::Random, &[10, 1, 3]);
        let counts = histogram(&c, 5, &[], Some(0), 40_000);
        assert!((9_000..11_000).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn out_of_range_exclude_is_ignored() {
        for policy in POLICIES {
            let c = cluster(policy, &[1, 2, 3]);
            let counts = histogram(&c, 3, &[], Some(99), 600);
            assert!(counts.iter().all(|&n| n > 0), "{policy:?} {counts:?}");
        }
    }

    #[test]
    fn weighted_random_matches_weights() {
        let c = cluster(LbPolicy::Random, &[1, 2, 7]);
        let counts = histogram(&c, 2024, &[], None, 100_000);
        for (count, want) in counts.iter().zip([10_000, 20_000, 70_000]) {
            let diff = (*count as i64 - want).abs();
            assert!(diff < 1_000, "{counts:?}");
        }
    }

    #[test]
    fn uniform_random_is_uniform() {
        let c = cluster(LbPolicy::Random, &[4, 4, 4, 4]);
        assert!(!ClusterLb::new(&c, 0).is_weighted());
        let counts = histogram(&c, 77, &[], None, 100_000);
        assert!(
            counts.iter().all(|&n| (24_000..26_000).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let c = cluster(LR2, &[1, 1, 1]);
        let counts = histogram(&c, 8, &[5, 5, 0], None, 9_000);
        // P2C with replacement: host 2 wins unless both draws miss it: 1 - (2/3)^2 = 5/9.
        assert!((4_700..5_300).contains(&counts[2]), "{counts:?}");
        assert!(counts[2] > counts[0] && counts[2] > counts[1]);

        // More choices, stronger preference.
        let c = cluster(LbPolicy::LeastRequest { choice_count: 10 }, &[1, 1, 1]);
        let counts = histogram(&c, 8, &[5, 5, 0], None, 9_000);
        assert!(counts[2] > 8_600, "{counts:?}");

        // Ties keep the first draw: with all idle it is uniform.
        let c = cluster(LR2, &[1, 1, 1]);
        let counts = histogram(&c, 8, &[0, 0, 0], None, 9_000);
        assert!(
            counts.iter().all(|&n| (2_700..3_300).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn weighted_least_request_scales_weight_by_active() {
        // Weights 2:1 idle: EDF gives exactly 2:1.
        let c = cluster(LR2, &[2, 1]);
        assert!(ClusterLb::new(&c, 0).is_weighted());
        assert_eq!(histogram(&c, 3, &[0, 0], None, 300), vec![200, 100]);
        // Host 0 carries 9 connections: effective weights 2/10 vs 1/1, so host 1 gets 5 of 6.
        let counts = histogram(&c, 3, &[9, 0], None, 600);
        assert!((495..=505).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn weighted_least_request_reacts_to_load_changes() {
        // Simulate connections that stay open: the picked host's count grows.
        let c = cluster(LR2, &[3, 1]);
        let mut lb = ClusterLb::new(&c, 11);
        let mut rng = Rng::new(11);
        let mut active = [0u32; 2];
        for _ in 0..400 {
            let i = lb.pick(&c.endpoints, &active, None, &mut rng).unwrap();
            active[i] += 1;
        }
        // Host i is next due after sum over its connections of (j + 1) / w_i, about
        // a_i^2 / (2 w_i); equal deadlines give a_0 / a_1 = sqrt(3): a share of 0.634.
        let share = f64::from(active[0]) / 400.0;
        assert!((0.60..0.67).contains(&share), "{active:?}");
    }

    #[test]
    fn same_seed_same_picks() {
        for policy in POLICIES {
            for weights in [&[1u32, 1, 1][..], &[1, 2, 3]] {
                let c = cluster(policy, weights);
                let run = |seed| {
                    let mut lb = ClusterLb::new(&c, seed);
                    let mut rng = Rng::new(seed);
                    (0..64)
                        .map(|k| lb.pick(&c.endpoints, &[k % 3, 1, 2], None, &mut rng))
                        .collect::<Vec<_>>()
                };
                assert_eq!(run(99), run(99), "{policy:?}");
            }
        }
    }

    #[test]
    fn zero_weight_counts_as_one() {
        let c = cluster(LbPolicy::RoundRobin, &[0, 1]);
        assert!(!ClusterLb::new(&c, 0).is_weighted());
        assert_eq!(histogram(&c, 1, &[], None, 10), vec![5, 5]);
    }

    #[test]
    fn worker_lb_has_one_balancer_per_cluster() {
        let fib = Fib {
            generation: 7,
            listeners: Vec::new(),
            clusters: vec![
                Arc::new(cluster(LbPolicy::RoundRobin, &[1, 1])),
                Arc::new(cluster(LbPolicy::Random, &[1, 4])),
                Arc::new(cluster(LR2, &[])),
                Arc::new(cluster(LbPolicy::ClusterProvided, &[])),
            ],
            own_addresses: Vec::new(),
            udp_listeners: Vec::new(),
        };
        let mut wlb = WorkerLb::new(&fib, 1234);
        let mut rng = Rng::new(1);
        assert_eq!(wlb.len(), 4);
        assert_eq!(wlb.generation(), 7);
        assert!(!wlb.cluster(ClusterId(0)).is_weighted());
        assert!(wlb.cluster(ClusterId(1)).is_weighted());
        assert_eq!(wlb.cluster(ClusterId(2)).len(), 0);
        let a = wlb
            .pick(&fib, ClusterId(0), Pick::default(), &mut rng)
            .unwrap();
        let b = wlb
            .pick(&fib, ClusterId(0), Pick::default(), &mut rng)
            .unwrap();
        assert_ne!(a, b);
        assert!(
            wlb.pick(
                &fib,
                ClusterId(1),
                Pick {
                    exclude: Some(1),
                    ..Pick::default()
                },
                &mut rng,
            )
            .map(|p| p.endpoint)
                == Some(0)
        );
        assert_eq!(
            wlb.pick(&fib, ClusterId(2), Pick::default(), &mut rng),
            None
        );
        // ORIGINAL_DST: nothing to pick, the worker dials the original destination.
        assert_eq!(
            wlb.pick(&fib, ClusterId(3), Pick::default(), &mut rng),
            None
        );
        assert!(WorkerLb::new(&Fib::default(), 0).is_empty());
    }

    #[test]
    fn an_unchanged_cluster_keeps_its_schedule_across_generations() {
        let kept = Arc::new(cluster(LbPolicy::RoundRobin, &[1, 1, 1]));
        let one = Fib {
            generation: 1,
            listeners: Vec::new(),
            clusters: vec![
                kept.clone(),
                Arc::new(cluster(LbPolicy::RoundRobin, &[1, 1])),
            ],
            own_addresses: Vec::new(),
            udp_listeners: Vec::new(),
        };
        let mut rng = Rng::new(1);
        let mut lb1 = WorkerLb::new(&one, 5);
        let first = lb1
            .pick(&one, ClusterId(0), Pick::default(), &mut rng)
            .unwrap();
        // Generation 2: cluster 0 is the same Arc, cluster 1 was rebuilt.
        let two = Fib {
            generation: 2,
            listeners: Vec::new(),
            clusters: vec![kept, Arc::new(cluster(LbPolicy::RoundRobin, &[1, 1, 1, 1]))],
            own_addresses: Vec::new(),
            udp_listeners: Vec::new(),
        };
        let mut lb2 = WorkerLb::following(&two, Some((&one, &lb1)), 9);
        let next = lb2
            .pick(&two, ClusterId(0), Pick::default(), &mut rng)
            .unwrap();
        assert_eq!(
            next.endpoint,
            (first.endpoint + 1) % 3,
            "the rotation goes on where it was"
        );
        assert_eq!(
            lb2.cluster(ClusterId(1)).len(),
            4,
            "a changed cluster is rebuilt"
        );
        assert_eq!(lb2.generation(), 2);
    }

    fn policy_strategy() -> impl Strategy<Value = LbPolicy> {
        prop_oneof![
            Just(LbPolicy::RoundRobin),
            Just(LbPolicy::Random),
            (0u32..6).prop_map(|choice_count| LbPolicy::LeastRequest { choice_count }),
        ]
    }

    proptest! {
        #[test]
        fn pick_is_in_range_respects_exclude_and_keeps_its_tables(
            policy in policy_strategy(),
            weights in proptest::collection::vec(0u32..6, 0..12),
            seed in any::<u64>(),
            steps in proptest::collection::vec((any::<u8>(), 0usize..14), 1..200),
        ) {
            let c = cluster(policy, &weights);
            let n = weights.len();
            let mut lb = ClusterLb::new(&c, seed);
            let mut rng = Rng::new(seed);
            let before = footprint(&lb);
            let mut active = vec![0u32; n];
            for (load, ex) in steps {
                let exclude = (ex < n + 2).then_some(ex);
                let picked = lb.pick(&c.endpoints, &active, exclude, &mut rng);
                match picked {
                    None => prop_assert_eq!(n, 0),
                    Some(i) => {
                        prop_assert!(i < n);
                        if n > 1 {
                            prop_assert_ne!(Some(i), exclude);
                        }
                        active[i] = active[i].saturating_add(u32::from(load % 4));
                    }
                }
                prop_assert_eq!(footprint(&lb), before);
            }
        }
    }
}
