//! Per-worker counters and gauges, summed on read.
//!
//! Guarantees:
//! - A worker only ever writes its own slot (`worker` index), with `Relaxed` atomic adds on a
//!   cache line no other worker writes: no lock, no contention, no allocation after creation.
//! - Readers (the admin thread) sum the slots; a sum is not a snapshot across stats, but every
//!   single stat is exact once traffic stops.
//! - Gauges are stored as wrapping `u64` and read back as `i64`: a connection that is counted up
//!   on one worker is always counted down on the same worker, so each slot stays exact.
//! - Stat blocks are keyed by stable identity (cluster name, stat prefix, listener address) by
//!   the control plane and shared across FIB generations, so counters survive every config swap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Whether a stat only grows (Envoy "counter") or goes up and down (Envoy "gauge").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Monotonic count of events.
    Counter,
    /// Current level, may go down.
    Gauge,
}

/// One cache line of `N` counters, written by exactly one worker.
#[repr(align(128))]
#[derive(Debug)]
struct Slot<const N: usize>([AtomicU64; N]);

impl<const N: usize> Slot<N> {
    fn new() -> Self {
        Slot(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// `N` stats, one slot per worker plus one for the control plane (index `workers`).
#[derive(Debug)]
pub struct Counters<const N: usize> {
    slots: Box<[Slot<N>]>,
}

impl<const N: usize> Counters<N> {
    /// Counters for `workers` workers, plus one slot for non-worker writers.
    pub fn new(workers: usize) -> Self {
        Counters {
            slots: (0..=workers).map(|_| Slot::new()).collect(),
        }
    }

    /// Number of writer slots (workers + 1).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Adds `value` to stat `index` in `worker`'s slot. Out-of-range workers use the last slot.
    #[inline]
    pub fn add(&self, worker: usize, index: usize, value: u64) {
        let slot = worker.min(self.slots.len() - 1);
        self.slots[slot].0[index].fetch_add(value, Ordering::Relaxed);
    }

    /// Subtracts `value` (for gauges).
    #[inline]
    pub fn sub(&self, worker: usize, index: usize, value: u64) {
        let slot = worker.min(self.slots.len() - 1);
        self.slots[slot].0[index].fetch_sub(value, Ordering::Relaxed);
    }

    /// Sum over all slots, as an unsigned counter.
    pub fn sum(&self, index: usize) -> u64 {
        self.slots.iter().fold(0u64, |acc, s| {
            acc.wrapping_add(s.0[index].load(Ordering::Relaxed))
        })
    }

    /// Sum over all slots, as a signed gauge.
    pub fn sum_gauge(&self, index: usize) -> i64 {
        self.sum(index) as i64
    }

    /// The value in one worker's slot (for `worker_N.` stats).
    pub fn worker_value(&self, worker: usize, index: usize) -> u64 {
        self.slots[worker].0[index].load(Ordering::Relaxed)
    }

    /// Sets every slot of `index` to zero (POST /reset_counters).
    pub fn reset(&self, index: usize) {
        for s in self.slots.iter() {
            s.0[index].store(0, Ordering::Relaxed);
        }
    }
}

/// Defines an enum of stats with their Envoy names and kinds.
macro_rules! stat_enum {
    ($stat:ident, $count:literal, {
        $($(#[$vmeta:meta])* $variant:ident => ($name:literal, $kind:ident)),* $(,)?
    }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum $stat {
            $($(#[$vmeta])* $variant),*
        }

        impl $stat {
            /// Every stat of this block, in declaration order.
            pub const ALL: [$stat; $count] = [$($stat::$variant),*];

            /// The Envoy stat name suffix.
            pub const fn name(self) -> &'static str {
                match self { $($stat::$variant => $name),* }
            }

            /// Counter or gauge.
            pub const fn kind(self) -> StatKind {
                match self { $($stat::$variant => StatKind::$kind),* }
            }

            /// Zeroes the counters of `values`, one shared atomic per stat indexed by the
            /// stat; gauges are left alone.
            pub fn reset_counters(values: &[AtomicU64; $count]) {
                for s in $stat::ALL {
                    if s.kind() == StatKind::Counter {
                        values[s as usize].store(0, Ordering::Relaxed);
                    }
                }
            }
        }
    };
}

/// Defines a stat block: an enum of stats with their Envoy names and kinds, and a named block
/// with one slot per worker.
macro_rules! stat_block {
    ($(#[$meta:meta])* $block:ident, $stat:ident, $count:literal, {
        $($(#[$vmeta:meta])* $variant:ident => ($name:literal, $kind:ident)),* $(,)?
    }) => {
        stat_enum!($stat, $count, { $($(#[$vmeta])* $variant => ($name, $kind)),* });

        $(#[$meta])*
        #[derive(Debug)]
        pub struct $block {
            /// The stable identity this block is registered under (stat prefix, cluster name,
            /// or listener address).
            pub name: Arc<str>,
            counters: Counters<$count>,
        }

        impl $block {
            /// A zeroed block with one slot per worker (plus one).
            pub fn new(name: impl Into<Arc<str>>, workers: usize) -> Self {
                $block { name: name.into(), counters: Counters::new(workers) }
            }

            /// Adds one to `stat` on `worker`.
            #[inline]
            pub fn inc(&self, worker: usize, stat: $stat) {
                self.counters.add(worker, stat as usize, 1);
            }

            /// Adds `value` to `stat` on `worker`.
            #[inline]
            pub fn add(&self, worker: usize, stat: $stat, value: u64) {
                self.counters.add(worker, stat as usize, value);
            }

            /// Subtracts one from gauge `stat` on `worker`.
            #[inline]
            pub fn dec(&self, worker: usize, stat: $stat) {
                self.counters.sub(worker, stat as usize, 1);
            }

            /// Subtracts `value` from gauge `stat` on `worker`.
            #[inline]
            pub fn sub(&self, worker: usize, stat: $stat, value: u64) {
                self.counters.sub(worker, stat as usize, value);
            }

            /// Sum over workers (counters).
            pub fn get(&self, stat: $stat) -> u64 {
                self.counters.sum(stat as usize)
            }

            /// Sum over workers (gauges).
            pub fn gauge(&self, stat: $stat) -> i64 {
                self.counters.sum_gauge(stat as usize)
            }

            /// One worker's value.
            pub fn worker_value(&self, worker: usize, stat: $stat) -> u64 {
                self.counters.worker_value(worker, stat as usize)
            }

            /// Number of writer slots (workers + 1).
            pub fn slot_count(&self) -> usize {
                self.counters.slot_count()
            }

            /// Zeroes every counter (gauges are left alone).
            pub fn reset_counters(&self) {
                for s in $stat::ALL {
                    if s.kind() == StatKind::Counter {
                        self.counters.reset(s as usize);
                    }
                }
            }
        }
    };
}

stat_block!(
    /// `tcp.<stat_prefix>.*`: one per tcp_proxy stat prefix.
    TcpStats, TcpStat, 10, {
    /// Connections handled by this tcp_proxy.
    DownstreamCxTotal => ("downstream_cx_total", Counter),
    /// Connections with no route (cluster not found).
    DownstreamCxNoRoute => ("downstream_cx_no_route", Counter),
    /// Bytes read from the client.
    DownstreamCxRxBytesTotal => ("downstream_cx_rx_bytes_total", Counter),
    /// Bytes written to the client.
    DownstreamCxTxBytesTotal => ("downstream_cx_tx_bytes_total", Counter),
    /// Times reading from the client paused because the backend was slow.
    DownstreamFlowControlPausedReadingTotal => ("downstream_flow_control_paused_reading_total", Counter),
    /// Times reading from the client resumed.
    DownstreamFlowControlResumedReadingTotal => ("downstream_flow_control_resumed_reading_total", Counter),
    /// Connections closed by the idle timeout.
    IdleTimeout => ("idle_timeout", Counter),
    /// Connections closed at the end of a drain.
    DownstreamCxDrainClose => ("downstream_cx_drain_close", Counter),
    /// Connections open now.
    DownstreamCxActive => ("downstream_cx_active", Gauge),
    /// Bytes received from backends and not yet written to their clients (the clients'
    /// write buffers, which `per_connection_buffer_limit_bytes` of the listener bounds).
    DownstreamCxTxBytesBuffered => ("downstream_cx_tx_bytes_buffered", Gauge),
});

stat_block!(
    /// `fault.<stat_prefix>.*`: one per `switchyard.filters.network.fault` stat prefix
    /// (named like Envoy's HTTP fault filter's stats).
    FaultStats, FaultStat, 4, {
    /// Connections whose upstream connect was delayed.
    DelaysInjected => ("delays_injected", Counter),
    /// Connections reset by the fault (at accept or after their byte allowance).
    AbortsInjected => ("aborts_injected", Counter),
    /// Connections whose throughput was limited.
    ThrottlesInjected => ("throttles_injected", Counter),
    /// Connections with a fault in effect now.
    ActiveFaults => ("active_faults", Gauge),
});

stat_block!(
    /// `mirror.<stat_prefix>.*`: one per `switchyard.filters.network.mirror` stat prefix.
    MirrorStats, MirrorStat, 5, {
    /// Connections sampled for mirroring (a shadow connection was started).
    ConnectionsMirrored => ("connections_mirrored", Counter),
    /// Shadow connections that could not connect or failed later.
    ConnectionsFailed => ("connections_failed", Counter),
    /// Shadow connections given up because the shadow fell behind (`max_buffered_bytes`).
    ConnectionsDropped => ("connections_dropped", Counter),
    /// Client bytes the shadows took.
    BytesMirrored => ("bytes_mirrored", Counter),
    /// Shadow connections open now.
    Active => ("active", Gauge),
});

stat_block!(
    /// `udp.<stat_prefix>.*`: one per udp_proxy stat prefix (Envoy's names).
    UdpStats, UdpStat, 12, {
    /// Sessions created (a datagram from a new source).
    DownstreamSessTotal => ("downstream_sess_total", Counter),
    /// Datagrams dropped because the route's cluster does not exist or has no endpoint.
    DownstreamSessNoRoute => ("downstream_sess_no_route", Counter),
    /// Payload bytes received from clients.
    DownstreamSessRxBytes => ("downstream_sess_rx_bytes", Counter),
    /// Datagrams received from clients.
    DownstreamSessRxDatagrams => ("downstream_sess_rx_datagrams", Counter),
    /// Receive errors on the listener socket.
    DownstreamSessRxErrors => ("downstream_sess_rx_errors", Counter),
    /// Payload bytes sent to clients.
    DownstreamSessTxBytes => ("downstream_sess_tx_bytes", Counter),
    /// Datagrams sent to clients.
    DownstreamSessTxDatagrams => ("downstream_sess_tx_datagrams", Counter),
    /// Sends to clients that failed.
    DownstreamSessTxErrors => ("downstream_sess_tx_errors", Counter),
    /// Sessions closed by the idle timeout.
    IdleTimeout => ("idle_timeout", Counter),
    /// Session filters missing their config (none are supported: always 0, as Envoy shows it).
    SessionFilterConfigMissing => ("session_filter_config_missing", Counter),
    /// Datagrams from new sources dropped because the worker's session table was full
    /// (Switchyard's; Envoy has no such limit).
    DownstreamSessTableFull => ("downstream_sess_table_full", Counter),
    /// Sessions open now.
    DownstreamSessActive => ("downstream_sess_active", Gauge),
});

stat_block!(
    /// `listener.<ip>_<port>.udp.*`: one per UDP listener address (Envoy's names).
    ListenerUdpStats, ListenerUdpStat, 1, {
    /// Datagrams from clients dropped before any session saw them: larger than the
    /// listener's `max_rx_datagram_size`, or truncated.
    DownstreamRxDatagramDropped => ("downstream_rx_datagram_dropped", Counter),
});

stat_block!(
    /// `cluster.<name>.udp.*`: a cluster's UDP sessions' upstream side (Envoy's names).
    ClusterUdpStats, ClusterUdpStat, 5, {
    /// Datagrams received from the cluster's endpoints.
    SessRxDatagrams => ("sess_rx_datagrams", Counter),
    /// Datagrams from endpoints dropped: larger than the upstream `max_rx_datagram_size`
    /// (when it applies), truncated, or their client side gone.
    SessRxDatagramsDropped => ("sess_rx_datagrams_dropped", Counter),
    /// Receive errors on upstream sockets (e.g. ICMP port unreachable).
    SessRxErrors => ("sess_rx_errors", Counter),
    /// Datagrams sent to the cluster's endpoints.
    SessTxDatagrams => ("sess_tx_datagrams", Counter),
    /// Sends to endpoints that failed.
    SessTxErrors => ("sess_tx_errors", Counter),
});

stat_block!(
    /// `cluster.<name>.*`: one per cluster name.
    ClusterStats, ClusterStat, 20, {
    /// Upstream connections attempted.
    UpstreamCxTotal => ("upstream_cx_total", Counter),
    /// Upstream connections open now.
    UpstreamCxActive => ("upstream_cx_active", Gauge),
    /// HBONE: connections tunnelled as CONNECT streams over the cluster's HTTP/2
    /// connections (Envoy counts each as a request; the HTTP/2 connections are the
    /// `upstream_cx_*`).
    UpstreamRqTotal => ("upstream_rq_total", Counter),
    /// HBONE: such streams open now.
    UpstreamRqActive => ("upstream_rq_active", Gauge),
    /// Bytes received from clients and not yet written to the backend (the upstream
    /// connections' write buffers, which the cluster's `per_connection_buffer_limit_bytes`
    /// bounds).
    UpstreamCxTxBytesBuffered => ("upstream_cx_tx_bytes_buffered", Gauge),
    /// Upstream connects that failed (refused, unreachable, timeout).
    UpstreamCxConnectFail => ("upstream_cx_connect_fail", Counter),
    /// Upstream connects that timed out.
    UpstreamCxConnectTimeout => ("upstream_cx_connect_timeout", Counter),
    /// Connections that ran out of connect attempts.
    UpstreamCxConnectAttemptsExceeded => ("upstream_cx_connect_attempts_exceeded", Counter),
    /// Bytes read from upstream.
    UpstreamCxRxBytesTotal => ("upstream_cx_rx_bytes_total", Counter),
    /// Bytes written to upstream.
    UpstreamCxTxBytesTotal => ("upstream_cx_tx_bytes_total", Counter),
    /// Upstream connections destroyed.
    UpstreamCxDestroy => ("upstream_cx_destroy", Counter),
    /// Upstream connections closed by the proxy.
    UpstreamCxDestroyLocal => ("upstream_cx_destroy_local", Counter),
    /// Upstream connections closed by the backend.
    UpstreamCxDestroyRemote => ("upstream_cx_destroy_remote", Counter),
    /// Connections refused because the cluster had no endpoint.
    UpstreamCxNoneHealthy => ("upstream_cx_none_healthy", Counter),
    /// Times reading from upstream paused because the client was slow.
    UpstreamFlowControlPausedReadingTotal => ("upstream_flow_control_paused_reading_total", Counter),
    /// Times reading from upstream resumed.
    UpstreamFlowControlResumedReadingTotal => ("upstream_flow_control_resumed_reading_total", Counter),
    /// Upstream connections reset (by either side).
    UpstreamCxReset => ("upstream_cx_reset", Counter),
    /// Clients refused because the cluster was at its circuit breaker's `max_connections`.
    UpstreamCxOverflow => ("upstream_cx_overflow", Counter),
    /// Clients refused because the cluster was at `max_pending_requests`.
    UpstreamRqPendingOverflow => ("upstream_rq_pending_overflow", Counter),
    /// Picks made in panic mode: too few healthy hosts, so all of a level's hosts were used.
    LbHealthyPanic => ("lb_healthy_panic", Counter),
});

/// A cluster's circuit-breaker resources in use, counted across all workers together
/// (Envoy's resource manager): shared atomics, by cluster name, across FIB generations.
#[derive(Debug, Default)]
pub struct ClusterResources {
    /// Upstream connections open or being opened.
    connections: AtomicU64,
    /// Clients whose upstream connection is being opened (Envoy's pending requests).
    pending: AtomicU64,
}

/// `local_rate_limit.<stat_prefix>.*`: Envoy's network local rate limit's counter, shared
/// by every filter with the prefix.
#[derive(Debug)]
pub struct LocalRateLimitStats {
    /// The stat prefix.
    pub name: Arc<str>,
    /// Connections refused for want of a token (`rate_limited`).
    rate_limited: AtomicU64,
}

impl LocalRateLimitStats {
    /// Zeroed, for stat prefix `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        LocalRateLimitStats {
            name: name.into(),
            rate_limited: AtomicU64::new(0),
        }
    }

    /// A connection refused for want of a token.
    #[inline]
    pub fn limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// `rate_limited`.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// `POST /reset_counters`.
    pub fn reset_counters(&self) {
        self.rate_limited.store(0, Ordering::Relaxed);
    }
}

/// `<stat_prefix>.rbac.*`: Envoy's network RBAC filter's counters, shared by every filter
/// with the same prefixes.
#[derive(Debug)]
pub struct RbacStats {
    /// `<stat_prefix>.rbac.` as Envoy joins it.
    pub prefix: Arc<str>,
    /// The shadow counters' prefix: `prefix`, then `shadow_rules_stat_prefix` (joined).
    pub shadow_prefix: Arc<str>,
    counters: [AtomicU64; 4],
}

/// One of [`RbacStats`]' counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacStat {
    Allowed,
    Denied,
    ShadowAllowed,
    ShadowDenied,
}

impl RbacStat {
    pub const ALL: [RbacStat; 4] = [
        RbacStat::Allowed,
        RbacStat::Denied,
        RbacStat::ShadowAllowed,
        RbacStat::ShadowDenied,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RbacStat::Allowed => "allowed",
            RbacStat::Denied => "denied",
            RbacStat::ShadowAllowed => "shadow_allowed",
            RbacStat::ShadowDenied => "shadow_denied",
        }
    }
}

/// Envoy's `statPrefixJoin`: `prefix` and `token` with one `.` between (none when `prefix`
/// is empty or already ends with one).
pub fn stat_prefix_join(prefix: &str, token: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{prefix}{token}")
    } else {
        format!("{prefix}.{token}")
    }
}

impl RbacStats {
    /// Zeroed, for `stat_prefix` and `shadow_rules_stat_prefix` (Envoy 1.40's names:
    /// `a` and `s` count `a.rbac.allowed` and `a.rbac.s.shadow_allowed`).
    pub fn new(stat_prefix: &str, shadow_rules_stat_prefix: &str) -> Self {
        let prefix = stat_prefix_join(stat_prefix, "rbac.");
        let shadow = match shadow_rules_stat_prefix {
            "" => prefix.clone(),
            s => stat_prefix_join(&format!("{prefix}{s}"), ""),
        };
        RbacStats {
            prefix: prefix.into(),
            shadow_prefix: shadow.into(),
            counters: Default::default(),
        }
    }

    #[inline]
    pub fn inc(&self, stat: RbacStat) {
        self.counters[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, stat: RbacStat) -> u64 {
        self.counters[stat as usize].load(Ordering::Relaxed)
    }

    /// The stat's full name.
    pub fn full_name(&self, stat: RbacStat) -> String {
        match stat {
            RbacStat::Allowed | RbacStat::Denied => format!("{}{}", self.prefix, stat.name()),
            _ => format!("{}{}", self.shadow_prefix, stat.name()),
        }
    }

    /// `POST /reset_counters`.
    pub fn reset_counters(&self) {
        self.counters
            .iter()
            .for_each(|c| c.store(0, Ordering::Relaxed));
    }
}

/// `source_limit.<stat_prefix>.*`: the per-source limits' refusals, shared by every filter
/// with the prefix (and its table's own counters, read from the table).
#[derive(Debug)]
pub struct SourceLimitStats {
    /// The stat prefix.
    pub name: Arc<str>,
    counters: [AtomicU64; 3],
}

impl SourceLimitStats {
    /// The counters, by [`crate::source_limit::Refusal`]: `rate_limited`,
    /// `concurrency_limited`, `table_full`.
    pub const NAMES: [&'static str; 3] = ["rate_limited", "concurrency_limited", "table_full"];

    /// Zeroed, for stat prefix `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        SourceLimitStats {
            name: name.into(),
            counters: Default::default(),
        }
    }

    /// A connection refused for `why`.
    #[inline]
    pub fn refused(&self, why: crate::source_limit::Refusal) {
        self.counters[Self::slot(why)].fetch_add(1, Ordering::Relaxed);
    }

    fn slot(why: crate::source_limit::Refusal) -> usize {
        use crate::source_limit::Refusal;
        match why {
            Refusal::Rate => 0,
            Refusal::Concurrency => 1,
            Refusal::TableFull => 2,
        }
    }

    /// Each counter with its name, in [`SourceLimitStats::NAMES`]' order.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        std::array::from_fn(|i| (Self::NAMES[i], self.counters[i].load(Ordering::Relaxed)))
    }

    /// `POST /reset_counters`.
    pub fn reset_counters(&self) {
        self.counters
            .iter()
            .for_each(|c| c.store(0, Ordering::Relaxed));
    }
}

/// `connection_limit.<stat_prefix>.*` and the count the limit is decided on, shared by
/// every worker (the limit holds across workers together) and across FIB generations.
#[derive(Debug)]
pub struct ConnectionLimitState {
    /// The stat prefix.
    pub name: Arc<str>,
    /// Connections open on the filter now (`active_connections`).
    active: AtomicU64,
    /// Connections refused by the limit (`limited_connections`).
    limited: AtomicU64,
}

impl ConnectionLimitState {
    /// Zeroed, for stat prefix `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        ConnectionLimitState {
            name: name.into(),
            active: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }

    /// Counts a new connection in, or refuses it (counted in `limited_connections`) when
    /// `max` are open.
    #[inline]
    pub fn try_enter(&self, max: u64) -> bool {
        if self.active.fetch_add(1, Ordering::AcqRel) < max {
            return true;
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
        self.limited.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// A connection counted in by [`ConnectionLimitState::try_enter`] closed.
    #[inline]
    pub fn leave(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// `active_connections`.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// `limited_connections`.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// `POST /reset_counters`.
    pub fn reset_counters(&self) {
        self.limited.store(0, Ordering::Relaxed);
    }
}

/// One circuit-breaker resource of [`ClusterResources`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections,
    Pending,
}

impl ClusterResources {
    fn counter(&self, r: Resource) -> &AtomicU64 {
        match r {
            Resource::Connections => &self.connections,
            Resource::Pending => &self.pending,
        }
    }

    /// Takes one of `r` if fewer than `max` are in use; false (nothing taken) otherwise.
    #[inline]
    pub fn try_acquire(&self, r: Resource, max: u32) -> bool {
        let c = self.counter(r);
        if c.fetch_add(1, Ordering::AcqRel) < u64::from(max) {
            return true;
        }
        c.fetch_sub(1, Ordering::AcqRel);
        false
    }

    /// Gives one of `r` back.
    #[inline]
    pub fn release(&self, r: Resource) {
        self.counter(r).fetch_sub(1, Ordering::AcqRel);
    }

    /// How many of `r` are in use now.
    pub fn in_use(&self, r: Resource) -> u64 {
        self.counter(r).load(Ordering::Acquire)
    }
}

// Per endpoint, for `/clusters` (`cluster::host:port::cx_total::N`); kept in the endpoint's
// shared `host::HostState`, not in per-worker slots.
stat_enum!(HostStat, 4, {
    /// Connections made to this host.
    CxTotal => ("cx_total", Counter),
    /// Connections open to this host now.
    CxActive => ("cx_active", Gauge),
    /// Connects to this host that failed.
    CxConnectFail => ("cx_connect_fail", Counter),
    /// Requests (for TCP: connections) that ended in error.
    RqError => ("rq_error", Counter),
});

stat_enum!(HealthStat, 29, {
    /// Hosts ejected now (gauge).
    EjectionsActive => ("outlier_detection.ejections_active", Gauge),
    /// Deprecated by Envoy, still emitted: consecutive 5xx runs detected.
    EjectionsConsecutive5xx => ("outlier_detection.ejections_consecutive_5xx", Counter),
    /// Runs of `consecutive_5xx` failures (at L4: connect failures and timeouts).
    EjectionsDetectedConsecutive5xx => ("outlier_detection.ejections_detected_consecutive_5xx", Counter),
    /// Runs of `consecutive_gateway_failure` failures.
    EjectionsDetectedConsecutiveGatewayFailure => ("outlier_detection.ejections_detected_consecutive_gateway_failure", Counter),
    /// Runs of `consecutive_local_origin_failure` failures (split local-origin errors).
    EjectionsDetectedConsecutiveLocalOriginFailure => ("outlier_detection.ejections_detected_consecutive_local_origin_failure", Counter),
    /// Degradation (HTTP header driven; never at L4).
    EjectionsDetectedDegradation => ("outlier_detection.ejections_detected_degradation", Counter),
    /// Failure-percentage ejection (not implemented: always 0, emitted as Envoy does).
    EjectionsDetectedFailurePercentage => ("outlier_detection.ejections_detected_failure_percentage", Counter),
    /// Local-origin failure-percentage ejection (not implemented).
    EjectionsDetectedLocalOriginFailurePercentage => ("outlier_detection.ejections_detected_local_origin_failure_percentage", Counter),
    /// Local-origin success-rate ejection (not implemented).
    EjectionsDetectedLocalOriginSuccessRate => ("outlier_detection.ejections_detected_local_origin_success_rate", Counter),
    /// Success-rate ejection (not implemented).
    EjectionsDetectedSuccessRate => ("outlier_detection.ejections_detected_success_rate", Counter),
    /// `consecutive_5xx` runs that ejected.
    EjectionsEnforcedConsecutive5xx => ("outlier_detection.ejections_enforced_consecutive_5xx", Counter),
    /// `consecutive_gateway_failure` runs that ejected.
    EjectionsEnforcedConsecutiveGatewayFailure => ("outlier_detection.ejections_enforced_consecutive_gateway_failure", Counter),
    /// `consecutive_local_origin_failure` runs that ejected.
    EjectionsEnforcedConsecutiveLocalOriginFailure => ("outlier_detection.ejections_enforced_consecutive_local_origin_failure", Counter),
    /// Failure-percentage ejection (not implemented).
    EjectionsEnforcedFailurePercentage => ("outlier_detection.ejections_enforced_failure_percentage", Counter),
    /// Local-origin failure-percentage ejection (not implemented).
    EjectionsEnforcedLocalOriginFailurePercentage => ("outlier_detection.ejections_enforced_local_origin_failure_percentage", Counter),
    /// Local-origin success-rate ejection (not implemented).
    EjectionsEnforcedLocalOriginSuccessRate => ("outlier_detection.ejections_enforced_local_origin_success_rate", Counter),
    /// Success-rate ejection (not implemented).
    EjectionsEnforcedSuccessRate => ("outlier_detection.ejections_enforced_success_rate", Counter),
    /// Ejections carried out, of every type.
    EjectionsEnforcedTotal => ("outlier_detection.ejections_enforced_total", Counter),
    /// Ejections refused by `max_ejection_percent`.
    EjectionsOverflow => ("outlier_detection.ejections_overflow", Counter),
    /// Deprecated by Envoy, still emitted (success rate; always 0).
    EjectionsSuccessRate => ("outlier_detection.ejections_success_rate", Counter),
    /// Deprecated by Envoy, still emitted: consecutive 5xx ejections allowed by
    /// `max_ejection_percent`.
    EjectionsTotal => ("outlier_detection.ejections_total", Counter),
    /// Active health checks started.
    HcAttempt => ("health_check.attempt", Counter),
    /// Active health checks passed.
    HcSuccess => ("health_check.success", Counter),
    /// Active health checks failed, for any reason.
    HcFailure => ("health_check.failure", Counter),
    /// Failures reported by traffic rather than a check (always 0 at L4).
    HcPassiveFailure => ("health_check.passive_failure", Counter),
    /// Checks failed by the network: refused, reset, timed out.
    HcNetworkFailure => ("health_check.network_failure", Counter),
    /// Cluster verifications (HTTP only in Envoy; always 0).
    HcVerifyCluster => ("health_check.verify_cluster", Counter),
    /// Hosts healthy by their active check now (gauge).
    HcHealthy => ("health_check.healthy", Gauge),
    /// Hosts degraded now (gauge; TCP checks degrade nothing).
    HcDegraded => ("health_check.degraded", Gauge),
});

impl HealthStat {
    /// True for the `outlier_detection.*` stats, false for `health_check.*`.
    pub fn is_outlier(self) -> bool {
        self.name().starts_with("outlier_detection.")
    }
}

stat_block!(
    /// `listener.<ip>_<port>.ssl.*` (a listener with a TLS chain) and `cluster.<name>.ssl.*`
    /// (a cluster that originates TLS): Envoy's names. The `versions.*`, `ciphers.*` and
    /// `curves.*` stats are shown once they counted something, as Envoy creates them on
    /// first use; cipher names are BoringSSL's.
    ///
    /// The last three are Envoy's socket factory's (`listener.<ip>_<port>.server_ssl_socket_factory.*`,
    /// `cluster.<name>.client_ssl_socket_factory.*`): see [`SslStat::is_factory`].
    SslStats, SslStat, 25, {
    /// Handshakes completed.
    Handshake => ("handshake", Counter),
    /// Handshakes that failed (protocol errors, refused certificates, the peer's end).
    ConnectionError => ("connection_error", Counter),
    /// Handshakes completed without a peer certificate where one was asked for.
    NoCertificate => ("no_certificate", Counter),
    /// Handshakes refused because the peer sent no certificate and one is required.
    FailVerifyNoCert => ("fail_verify_no_cert", Counter),
    /// Handshakes refused by the certificate's chain (untrusted, expired, revoked).
    FailVerifyError => ("fail_verify_error", Counter),
    /// Handshakes refused by `match_typed_subject_alt_names`.
    FailVerifySan => ("fail_verify_san", Counter),
    /// Handshakes resumed from a session ticket.
    SessionReused => ("session_reused", Counter),
    /// Handshakes not done by the deadline (Switchyard's; Envoy counts these in
    /// `listener.<addr>.downstream_cx_transport_socket_connect_timeout`, also counted).
    HandshakeTimeout => ("handshake_timeout", Counter),
    VersionTls12 => ("versions.TLSv1.2", Counter),
    VersionTls13 => ("versions.TLSv1.3", Counter),
    CipherAes128Gcm => ("ciphers.TLS_AES_128_GCM_SHA256", Counter),
    CipherAes256Gcm => ("ciphers.TLS_AES_256_GCM_SHA384", Counter),
    CipherChacha20 => ("ciphers.TLS_CHACHA20_POLY1305_SHA256", Counter),
    CipherEcdsaAes128 => ("ciphers.ECDHE-ECDSA-AES128-GCM-SHA256", Counter),
    CipherEcdsaAes256 => ("ciphers.ECDHE-ECDSA-AES256-GCM-SHA384", Counter),
    CipherEcdsaChacha20 => ("ciphers.ECDHE-ECDSA-CHACHA20-POLY1305", Counter),
    CipherRsaAes128 => ("ciphers.ECDHE-RSA-AES128-GCM-SHA256", Counter),
    CipherRsaAes256 => ("ciphers.ECDHE-RSA-AES256-GCM-SHA384", Counter),
    CipherRsaChacha20 => ("ciphers.ECDHE-RSA-CHACHA20-POLY1305", Counter),
    CurveX25519 => ("curves.X25519", Counter),
    CurveP256 => ("curves.P-256", Counter),
    CurveP384 => ("curves.P-384", Counter),
    /// The context was (re)built because an SDS secret it uses arrived or changed.
    SslContextUpdateBySds => ("ssl_context_update_by_sds", Counter),
    /// A connect to the cluster failed at once: its context waits for SDS secrets.
    UpstreamContextSecretsNotReady => ("upstream_context_secrets_not_ready", Counter),
    /// A connection on the chain was closed at once: its context waits for SDS secrets.
    DownstreamContextSecretsNotReady => ("downstream_context_secrets_not_ready", Counter),
});

impl SslStat {
    /// Shown under the socket factory's prefix rather than `ssl.`.
    pub fn is_factory(self) -> bool {
        matches!(
            self,
            SslStat::SslContextUpdateBySds
                | SslStat::UpstreamContextSecretsNotReady
                | SslStat::DownstreamContextSecretsNotReady
        )
    }

    /// Shown only once it counted something (Envoy makes these on first use).
    pub fn on_first_use(self) -> bool {
        let n = self.name();
        n.starts_with("versions.") || n.starts_with("ciphers.") || n.starts_with("curves.")
    }

    /// The `versions.*` stat of a version as rustls names it.
    pub fn of_version(v: rustls::ProtocolVersion) -> Option<SslStat> {
        match v {
            rustls::ProtocolVersion::TLSv1_2 => Some(SslStat::VersionTls12),
            rustls::ProtocolVersion::TLSv1_3 => Some(SslStat::VersionTls13),
            _ => None,
        }
    }

    /// The `ciphers.*` stat of a suite.
    pub fn of_cipher(c: rustls::CipherSuite) -> Option<SslStat> {
        use rustls::CipherSuite as C;
        Some(match c {
            C::TLS13_AES_128_GCM_SHA256 => SslStat::CipherAes128Gcm,
            C::TLS13_AES_256_GCM_SHA384 => SslStat::CipherAes256Gcm,
            C::TLS13_CHACHA20_POLY1305_SHA256 => SslStat::CipherChacha20,
            C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => SslStat::CipherEcdsaAes128,
            C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => SslStat::CipherEcdsaAes256,
            C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => SslStat::CipherEcdsaChacha20,
            C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => SslStat::CipherRsaAes128,
            C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => SslStat::CipherRsaAes256,
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => SslStat::CipherRsaChacha20,
            _ => return None,
        })
    }

    /// The `curves.*` stat of a key-exchange group.
    pub fn of_curve(g: rustls::NamedGroup) -> Option<SslStat> {
        match g {
            rustls::NamedGroup::X25519 => Some(SslStat::CurveX25519),
            rustls::NamedGroup::secp256r1 => Some(SslStat::CurveP256),
            rustls::NamedGroup::secp384r1 => Some(SslStat::CurveP384),
            _ => None,
        }
    }
}

stat_block!(
    /// `tls_inspector.*`: Envoy's `envoy.filters.listener.tls_inspector` counts in the
    /// server's root scope, one block for every listener that has one. (Envoy's
    /// `bytes_processed` histogram is not kept: Switchyard has no histograms.)
    TlsInspectorStats, TlsInspectorStat, 7, {
    /// ClientHellos longer than `max_client_hello_size`.
    ClientHelloTooLarge => ("client_hello_too_large", Counter),
    /// Connections whose first bytes were a ClientHello.
    TlsFound => ("tls_found", Counter),
    /// Connections whose first bytes were not (plaintext).
    TlsNotFound => ("tls_not_found", Counter),
    /// ClientHellos offering application protocols (ALPN).
    AlpnFound => ("alpn_found", Counter),
    /// ClientHellos offering none.
    AlpnNotFound => ("alpn_not_found", Counter),
    /// ClientHellos naming a server (SNI).
    SniFound => ("sni_found", Counter),
    /// ClientHellos naming none.
    SniNotFound => ("sni_not_found", Counter),
});

stat_block!(
    /// `proxy_proto.[<stat_prefix>.]*`: Envoy's `envoy.filters.listener.proxy_protocol`
    /// counts, one block per `stat_prefix` (the unprefixed block for filters without one).
    /// Envoy's root `downstream_cx_proxy_proto_error` is their errors and
    /// `not_found_disallowed` summed ([`ProxyProtoStats::errors`]).
    ProxyProtoStats, ProxyProtoStat, 9, {
    /// Streams without a header, passed on (`allow_requests_without_proxy_protocol`).
    NotFoundAllowed => ("not_found_allowed", Counter),
    /// Streams without a header, closed.
    NotFoundDisallowed => ("not_found_disallowed", Counter),
    /// Version 1 headers read (or known by their signature, when disallowed).
    V1Found => ("versions.v1.found", Counter),
    /// Version 1 headers of a listener that disallows version 1, closed.
    V1Disallowed => ("versions.v1.disallowed", Counter),
    /// Malformed version 1 headers, closed.
    V1Error => ("versions.v1.error", Counter),
    /// Version 2 headers read (or known by their signature, when disallowed).
    V2Found => ("versions.v2.found", Counter),
    /// Version 2 headers of a listener that disallows version 2, closed.
    V2Disallowed => ("versions.v2.disallowed", Counter),
    /// Malformed (or too long) version 2 headers, closed.
    V2Error => ("versions.v2.error", Counter),
    /// Switchyard's own: connections from a peer outside the filter's trusted sources, whose
    /// header was not looked for.
    UntrustedSource => ("untrusted_source", Counter),
});

impl ProxyProtoStats {
    /// What this block adds to Envoy's root `downstream_cx_proxy_proto_error`: malformed
    /// headers of either version and streams closed for having none.
    pub fn errors(&self) -> u64 {
        [
            ProxyProtoStat::V1Error,
            ProxyProtoStat::V2Error,
            ProxyProtoStat::NotFoundDisallowed,
        ]
        .into_iter()
        .map(|s| self.get(s))
        .sum()
    }
}

stat_block!(
    /// `listener.<ip>_<port>.*`: one per listener address.
    ListenerStats, ListenerStat, 14, {
    /// Connections a filter chain took (as Envoy counts them: not those the listener
    /// filters closed, nor those no chain matched).
    DownstreamCxTotal => ("downstream_cx_total", Counter),
    /// Of those, the ones open now.
    DownstreamCxActive => ("downstream_cx_active", Gauge),
    /// Of those, the ones closed.
    DownstreamCxDestroy => ("downstream_cx_destroy", Counter),
    /// Connections that matched no filter chain.
    NoFilterChainMatch => ("no_filter_chain_match", Counter),
    /// Connections refused because the worker's connection table was full.
    DownstreamCxOverflow => ("downstream_cx_overflow", Counter),
    /// Connections closed at accept by the global connection limit
    /// ([`crate::global_limit`]).
    DownstreamGlobalCxOverflow => ("downstream_global_cx_overflow", Counter),
    /// Accept errors (EMFILE, ENFILE, ...).
    DownstreamCxAcceptError => ("downstream_cx_accept_error", Counter),
    /// Connections refused because their original destination is the proxy's own address
    /// (passed through, they would loop back in). Switchyard's own stat.
    DownstreamCxProxyLoop => ("downstream_cx_proxy_loop", Counter),
    /// Connections accepted and closed at once because the process was out of descriptors
    /// (`EMFILE`/`ENFILE`), instead of waiting in the accept queue. Switchyard's own stat.
    DownstreamCxShedFdLimit => ("downstream_cx_shed_fd_limit", Counter),
    /// TLS handshakes not done within the chain's `transport_socket_connect_timeout`.
    DownstreamCxTransportSocketConnectTimeout => ("downstream_cx_transport_socket_connect_timeout", Counter),
    /// Connections in listener filters now (the TLS inspector reading a ClientHello).
    DownstreamPreCxActive => ("downstream_pre_cx_active", Gauge),
    /// Connections closed because their listener filters did not finish within
    /// `listener_filters_timeout`.
    DownstreamPreCxTimeout => ("downstream_pre_cx_timeout", Counter),
    /// Connections the client closed while listener filters read them.
    DownstreamListenerFilterRemoteClose => ("downstream_listener_filter_remote_close", Counter),
    /// Connections closed by a listener filter's error (a receive that failed while the
    /// inspector read).
    DownstreamListenerFilterError => ("downstream_listener_filter_error", Counter),
});

stat_block!(
    /// `server.*` stats kept by workers (the admin adds live, uptime, concurrency).
    ServerStats, ServerStat, 14, {
    /// Connections open on all listeners.
    TotalConnections => ("total_connections", Gauge),
    /// Access-log records dropped because the log queue was full.
    AccessLogDropped => ("access_log_dropped", Counter),
    /// Worker loop iterations (io_uring_enter calls).
    WorkerLoops => ("worker_loops", Counter),
    /// Completions the workers handled: over `worker_loops`, how many each wake-up found.
    /// Switchyard's own stat.
    WorkerCompletions => ("worker_completions", Counter),
    /// Waits a busy-poll ended by finding completions, without sleeping (own core only).
    /// Switchyard's own stat.
    WorkerBusyPollHits => ("worker_busy_poll_hits", Counter),
    /// Busy-polls that ran their whole budget without finding completions (then slept).
    /// Switchyard's own stat.
    WorkerBusyPollMisses => ("worker_busy_poll_misses", Counter),
    /// Workers that judge their core their own (`--placement`; detected unless fixed).
    /// Switchyard's own stat.
    WorkerOwnCore => ("worker_own_core", Gauge),
    /// Receives that found the provided-buffer ring empty (the direction waits for a buffer).
    RelayBufferExhausted => ("relay_buffer_exhausted", Counter),
    /// Receives into a large buffer (a direction moving bulk data).
    RelayLargeBufferReceives => ("relay_large_buffer_receives", Counter),
    /// TLS records whose end came in a later receive: their first bytes were copied to the
    /// front of a spare buffer, which the next receive filled after them. Switchyard's own
    /// stat.
    TlsRecordsCarried => ("tls_records_carried", Counter),
    /// The same with no spare buffer free: parked beside the session, and moved in front of
    /// the next receive's bytes (which costs a copy of them). Switchyard's own stat.
    TlsRecordsParked => ("tls_records_parked", Counter),
    /// Broken invariants a worker refused instead of absorbing: a completion for a slot that
    /// was reused or freed, a completion with nothing in flight, an open-connection count
    /// below zero. Always 0; anything else is a bug (logged). Switchyard's own stat.
    WorkerInvariantViolations => ("worker_invariant_violations", Counter),
    /// HBONE: pooled HTTP/2 connections a worker opened for tunnelled connections.
    /// Switchyard's own stat.
    HbonePooledConnections => ("hbone_pooled_connections", Counter),
    /// HBONE: tunnelled connections whose CONNECT was answered with other than 2xx, or
    /// failed with its HTTP/2 connection or its deadline. Switchyard's own stat.
    HboneConnectRefused => ("hbone_connect_refused", Counter),
});

/// Envoy-style listener stat name part: `127.0.0.1_10000`, `[::1]_10000`.
pub fn listener_stat_name(addr: &std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(a) => format!("{}_{}", a.ip(), a.port()),
        std::net::SocketAddr::V6(a) => format!("[{}]_{}", a.ip(), a.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_worker_sums_and_gauges() {
        let s = ClusterStats::new("c", 2);
        s.inc(0, ClusterStat::UpstreamCxTotal);
        s.add(1, ClusterStat::UpstreamCxTotal, 4);
        s.inc(0, ClusterStat::UpstreamCxActive);
        s.inc(1, ClusterStat::UpstreamCxActive);
        s.dec(1, ClusterStat::UpstreamCxActive);
        s.dec(1, ClusterStat::UpstreamCxActive);
        assert_eq!(s.get(ClusterStat::UpstreamCxTotal), 5);
        assert_eq!(s.gauge(ClusterStat::UpstreamCxActive), 0);
        assert_eq!(s.worker_value(1, ClusterStat::UpstreamCxTotal), 4);
        s.reset_counters();
        assert_eq!(s.get(ClusterStat::UpstreamCxTotal), 0);
    }

    #[test]
    fn resources_are_taken_only_below_the_limit() {
        let r = ClusterResources::default();
        assert!(r.try_acquire(Resource::Connections, 2));
        assert!(r.try_acquire(Resource::Connections, 2));
        assert!(!r.try_acquire(Resource::Connections, 2));
        assert_eq!(
            r.in_use(Resource::Connections),
            2,
            "a refusal takes nothing"
        );
        r.release(Resource::Connections);
        assert!(r.try_acquire(Resource::Connections, 2));
        assert!(!r.try_acquire(Resource::Pending, 0));
        assert_eq!(r.in_use(Resource::Pending), 0);
    }

    #[test]
    fn names_are_envoy_names() {
        assert_eq!(TcpStat::DownstreamCxTotal.name(), "downstream_cx_total");
        assert_eq!(ClusterStat::ALL.len(), 20);
        assert_eq!(
            ClusterStat::UpstreamCxTxBytesBuffered.name(),
            "upstream_cx_tx_bytes_buffered"
        );
        assert_eq!(
            ClusterStat::UpstreamCxOverflow.name(),
            "upstream_cx_overflow"
        );
        assert_eq!(
            ClusterStat::UpstreamRqPendingOverflow.name(),
            "upstream_rq_pending_overflow"
        );
        let v6: std::net::SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(listener_stat_name(&v6), "[::1]_80");
    }
}
