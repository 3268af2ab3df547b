//! Outlier detection's decisions (Envoy's `DetectorImpl`), made on the health thread.
//!
//! Workers count each host's consecutive connect failures (a connect failure or timeout is
//! a local-origin failure: Envoy maps it to a 503 or 504, a gateway error, so without
//! `split_external_local_origin_errors` it counts for `consecutive_gateway_failure` and
//! `consecutive_5xx` alike, and with it for `consecutive_local_origin_failure`). A run that
//! reaches a threshold is *detected* (`ejections_detected_*`); the ejection is then refused
//! when it would take the ejected share of the cluster's hosts above `max_ejection_percent`
//! (`ejections_overflow`; one host may always be ejected with `always_eject_one_host`), and
//! otherwise *enforced* with the probability `enforcing_*` (`ejections_enforced_*`).
//!
//! An ejected host returns, at the first `interval` tick after `base_ejection_time` times its
//! ejection count (capped by `max_ejection_time`, plus up to `max_ejection_time_jitter`), or
//! when its active health check passes. Each tick a host spends un-ejected lowers its
//! ejection count by one, so a host that stays well is ejected briefly again next time, while
//! one that fails again within a tick of its return stays out longer each time.
//!
//! Envoy keeps one run counter per error type and resets only the type it detected; at L4
//! every failure counts for all types alike, so the workers keep one run per host and the
//! health thread keeps, per type, the run's value at that type's last detection.

use super::event_log::{Event, OutlierEventLog};
use super::HostEntry;
use std::time::{Duration, Instant};
use switchyard_dataplane::fib::OutlierDetection;
use switchyard_dataplane::health::{ClusterHealth, FAILED_OUTLIER_CHECK};
use switchyard_dataplane::lb::Rng;
use switchyard_dataplane::stats::HealthStat;

/// What outlier detection keeps per host.
#[derive(Debug, Clone, Default)]
pub(super) struct OutlierHost {
    /// Envoy's ejection time backoff: the multiple of `base_ejection_time` an ejection lasts.
    backoff: u32,
    /// When the current ejection began.
    ejected_at: Option<Instant>,
    /// This ejection's jitter.
    jitter: Duration,
    /// Per ejection type, the failure run at its last detection: Envoy keeps one counter
    /// per type and resets only the type it detected, which these baselines reproduce over
    /// the workers' one run.
    baseline: [u32; 3],
    /// The host's `runs_ended` when the baselines were taken: a success since then ended
    /// that run, so the baselines no longer apply.
    runs_seen: u32,
    /// Enforced ejections so far (Envoy's `num_ejections`, never lowered).
    num_ejections: u32,
    /// When it last returned from an ejection (the event log's `secs_since_last_action`).
    returned_at: Option<Instant>,
}

impl OutlierHost {
    /// True while ejected.
    pub(super) fn is_ejected(&self) -> bool {
        self.ejected_at.is_some()
    }
}

/// The ejection types, in the order Envoy detects them on one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    GatewayFailure,
    Consecutive5xx,
    LocalOrigin,
}

impl Kind {
    fn threshold(self, c: &OutlierDetection) -> u32 {
        match self {
            Kind::GatewayFailure => c.consecutive_gateway_failure,
            Kind::Consecutive5xx => c.consecutive_5xx,
            Kind::LocalOrigin => c.consecutive_local_origin_failure,
        }
    }

    fn enforcing_pct(self, c: &OutlierDetection) -> u32 {
        match self {
            Kind::GatewayFailure => c.enforcing_consecutive_gateway_failure,
            Kind::Consecutive5xx => c.enforcing_consecutive_5xx,
            Kind::LocalOrigin => c.enforcing_consecutive_local_origin_failure,
        }
    }

    fn detected(self) -> HealthStat {
        match self {
            Kind::GatewayFailure => HealthStat::EjectionsDetectedConsecutiveGatewayFailure,
            Kind::Consecutive5xx => HealthStat::EjectionsDetectedConsecutive5xx,
            Kind::LocalOrigin => HealthStat::EjectionsDetectedConsecutiveLocalOriginFailure,
        }
    }

    /// Envoy's `OutlierEjectionType` name.
    fn event_name(self) -> &'static str {
        match self {
            Kind::GatewayFailure => "CONSECUTIVE_GATEWAY_FAILURE",
            Kind::Consecutive5xx => "CONSECUTIVE_5XX",
            Kind::LocalOrigin => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
        }
    }

    fn enforced(self) -> HealthStat {
        match self {
            Kind::GatewayFailure => HealthStat::EjectionsEnforcedConsecutiveGatewayFailure,
            Kind::Consecutive5xx => HealthStat::EjectionsEnforcedConsecutive5xx,
            Kind::LocalOrigin => HealthStat::EjectionsEnforcedConsecutiveLocalOriginFailure,
        }
    }
}

/// Looks at every host's failure run after a worker asked: detects, and ejects what may be.
/// True when some host was ejected.
pub(super) fn review(
    config: &OutlierDetection,
    health: &ClusterHealth,
    hosts: &mut [HostEntry],
    rng: &mut Rng,
    now: Instant,
    log: &mut Option<OutlierEventLog>,
) -> bool {
    let kinds: &[Kind] = if config.split_external_local_origin_errors {
        &[Kind::LocalOrigin]
    } else {
        &[Kind::GatewayFailure, Kind::Consecutive5xx]
    };
    let total = hosts.len();
    let mut ejected_any = false;
    for host in hosts.iter_mut() {
        let run = host.stats.health.consecutive_failures();
        let runs_ended = host.stats.health.runs_ended();
        if runs_ended != host.outlier.runs_seen {
            host.outlier.runs_seen = runs_ended;
            host.outlier.baseline = [0; 3];
        }
        let mut detected = [None; 2];
        for (slot, &kind) in kinds.iter().enumerate() {
            let baseline = &mut host.outlier.baseline[kind as usize];
            if run < *baseline {
                // A success ended the run since the last detection.
                *baseline = 0;
            }
            let threshold = kind.threshold(config);
            if threshold != 0 && run - *baseline >= threshold {
                *baseline = run;
                detected[slot] = Some(kind);
            }
        }
        if host.outlier.is_ejected() {
            continue;
        }
        for kind in detected.into_iter().flatten() {
            if host.outlier.is_ejected() {
                break;
            }
            health.inc(kind.detected());
            if kind == Kind::Consecutive5xx {
                health.inc(HealthStat::EjectionsConsecutive5xx);
            }
            let decision = Decision {
                kind,
                total_hosts: total,
                now,
            };
            ejected_any |= eject(config, health, host, decision, rng, log);
        }
    }
    if ejected_any {
        health.bump_epoch();
    }
    ejected_any
}

/// One detection to act on.
#[derive(Clone, Copy)]
struct Decision {
    kind: Kind,
    total_hosts: usize,
    now: Instant,
}

/// Envoy's `ejectHost`: true when the host was ejected. A detection within
/// `max_ejection_percent` is logged, enforced or not.
fn eject(
    config: &OutlierDetection,
    health: &ClusterHealth,
    host: &mut HostEntry,
    d: Decision,
    rng: &mut Rng,
    log: &mut Option<OutlierEventLog>,
) -> bool {
    let active = health.get(HealthStat::EjectionsActive);
    let max_pct = f64::from(config.max_ejection_percent.min(100));
    let share_after = 100.0 * (active + 1) as f64 / d.total_hosts.max(1) as f64;
    let allowed = share_after <= max_pct || (config.always_eject_one_host && active == 0);
    if !allowed {
        health.inc(HealthStat::EjectionsOverflow);
        return false;
    }
    if d.kind == Kind::Consecutive5xx {
        health.inc(HealthStat::EjectionsTotal);
    }
    let enforced = rng.below(100) < u64::from(d.kind.enforcing_pct(config));
    if enforced {
        enforce(config, health, host, active, d, rng);
    }
    if let Some(log) = log {
        log.write(&Event {
            kind: d.kind.event_name(),
            cluster: &health.name,
            host: host.address,
            eject: true,
            num_ejections: host.outlier.num_ejections,
            enforced,
            since_last_action: host.outlier.returned_at.map(|t| d.now.duration_since(t)),
        });
    }
    enforced
}

/// Takes the host out: stats, backoff, jitter, its health flag.
fn enforce(
    config: &OutlierDetection,
    health: &ClusterHealth,
    host: &mut HostEntry,
    active: u64,
    d: Decision,
    rng: &mut Rng,
) {
    health.set(HealthStat::EjectionsActive, active + 1);
    health.inc(HealthStat::EjectionsEnforcedTotal);
    health.inc(d.kind.enforced());
    let base = config.base_ejection_time_ms;
    let max = config.max_ejection_time_ms;
    let o = &mut host.outlier;
    // Envoy's rule: the backoff grows while `backoff x base < max + base`.
    if base.saturating_mul(u64::from(o.backoff)) < max.saturating_add(base) {
        o.backoff += 1;
    }
    o.num_ejections += 1;
    o.ejected_at = Some(d.now);
    o.jitter = Duration::from_millis(rng.below(config.max_ejection_time_jitter_ms + 1));
    host.stats.health.set(FAILED_OUTLIER_CHECK);
    tracing::info!(cluster = %health.name, host = %host.address, backoff = o.backoff, "outlier ejected");
}

/// The `interval` tick: returns hosts whose ejection is over and lowers the backoff of
/// hosts that stayed un-ejected. True when some host returned.
pub(super) fn tick(
    config: &OutlierDetection,
    health: &ClusterHealth,
    hosts: &mut [HostEntry],
    now: Instant,
    log: &mut Option<OutlierEventLog>,
) -> bool {
    let mut returned = false;
    for host in hosts.iter_mut() {
        let Some(since) = host.outlier.ejected_at else {
            // Envoy: every tick a host spends un-ejected takes one off its backoff.
            host.outlier.backoff = host.outlier.backoff.saturating_sub(1);
            continue;
        };
        let lasts_ms = config
            .base_ejection_time_ms
            .saturating_mul(u64::from(host.outlier.backoff))
            .min(config.max_ejection_time_ms);
        if now.duration_since(since) >= Duration::from_millis(lasts_ms) + host.outlier.jitter {
            uneject(health, host, now, log);
            returned = true;
        }
    }
    if returned {
        health.bump_epoch();
    }
    returned
}

/// Returns `host` to load balancing (its ejection ended, or its active check passed); the
/// caller bumps the epoch. Logged as Envoy logs it (an `UNEJECT` of type `CONSECUTIVE_5XX`,
/// the proto's default, whatever ejected it).
pub(super) fn uneject(
    health: &ClusterHealth,
    host: &mut HostEntry,
    now: Instant,
    log: &mut Option<OutlierEventLog>,
) {
    let Some(ejected_at) = host.outlier.ejected_at.take() else {
        return;
    };
    host.outlier.baseline = [0; 3];
    host.outlier.returned_at = Some(now);
    let active = health.get(HealthStat::EjectionsActive);
    health.set(HealthStat::EjectionsActive, active.saturating_sub(1));
    host.stats.health.clear(FAILED_OUTLIER_CHECK);
    host.stats.health.reset_failures();
    tracing::info!(cluster = %health.name, host = %host.address, "outlier returned");
    if let Some(log) = log {
        log.write(&Event {
            kind: Kind::Consecutive5xx.event_name(),
            cluster: &health.name,
            host: host.address,
            eject: false,
            num_ejections: host.outlier.num_ejections,
            enforced: false,
            since_last_action: Some(now.duration_since(ejected_at)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HostEntry;
    use std::sync::Arc;
    use switchyard_dataplane::host::HostState;

    fn hosts(n: usize) -> Vec<HostEntry> {
        (0..n)
            .map(|i| HostEntry::new(([10, 0, 0, i as u8], 80).into(), Arc::new(HostState::new())))
            .collect()
    }

    fn fail(h: &HostEntry, times: u32) {
        for _ in 0..times {
            h.stats.health.connect_failed();
        }
    }

    fn config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 3,
            base_ejection_time_ms: 1000,
            max_ejection_percent: 100,
            ..Default::default()
        }
    }

    #[test]
    fn a_run_at_the_threshold_ejects_and_counts_like_envoy() {
        let c = config();
        let health = ClusterHealth::default();
        let mut hs = hosts(3);
        let (mut rng, now) = (Rng::new(1), Instant::now());
        fail(&hs[1], 2);
        assert!(!review(&c, &health, &mut hs, &mut rng, now, &mut None));
        fail(&hs[1], 1);
        assert!(review(&c, &health, &mut hs, &mut rng, now, &mut None));
        assert!(!hs[1].stats.health.is_healthy());
        assert_eq!(health.get(HealthStat::EjectionsActive), 1);
        assert_eq!(health.get(HealthStat::EjectionsEnforcedConsecutive5xx), 1);
        assert_eq!(health.get(HealthStat::EjectionsDetectedConsecutive5xx), 1);
        // Gateway failures are detected but not enforced by default.
        assert_eq!(
            health.get(HealthStat::EjectionsDetectedConsecutiveGatewayFailure),
            1
        );
        assert_eq!(
            health.get(HealthStat::EjectionsEnforcedConsecutiveGatewayFailure),
            0
        );
        assert_eq!(health.get(HealthStat::EjectionsEnforcedTotal), 1);
        assert_eq!(health.epoch(), 1);
    }

    #[test]
    fn max_ejection_percent_overflows() {
        let c = OutlierDetection {
            max_ejection_percent: 50,
            ..config()
        };
        let health = ClusterHealth::default();
        let mut hs = hosts(4);
        let (mut rng, now) = (Rng::new(1), Instant::now());
        for h in &hs {
            fail(h, 3);
        }
        review(&c, &health, &mut hs, &mut rng, now, &mut None);
        assert_eq!(health.get(HealthStat::EjectionsActive), 2);
        // Each refused host overflows twice: its gateway-failure and its 5xx detection
        // (Envoy's count too).
        assert_eq!(health.get(HealthStat::EjectionsOverflow), 4);
        // 10% of 3 hosts is less than one host: none, unless always_eject_one_host.
        let ten = OutlierDetection {
            max_ejection_percent: 10,
            ..config()
        };
        let health = ClusterHealth::default();
        let mut hs = hosts(3);
        fail(&hs[0], 3);
        review(&ten, &health, &mut hs, &mut rng, now, &mut None);
        assert_eq!(health.get(HealthStat::EjectionsActive), 0);
        let one = OutlierDetection {
            always_eject_one_host: true,
            ..ten
        };
        fail(&hs[0], 3);
        fail(&hs[1], 3);
        review(&one, &health, &mut hs, &mut rng, now, &mut None);
        assert_eq!(health.get(HealthStat::EjectionsActive), 1);
    }

    #[test]
    fn ejection_lasts_base_times_count_and_backs_off() {
        let c = config();
        let health = ClusterHealth::default();
        let mut hs = hosts(2);
        let (mut rng, t0) = (Rng::new(1), Instant::now());
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, t0, &mut None);
        assert!(!tick(
            &c,
            &health,
            &mut hs,
            t0 + Duration::from_millis(999),
            &mut None
        ));
        assert!(tick(
            &c,
            &health,
            &mut hs,
            t0 + Duration::from_millis(1000),
            &mut None
        ));
        assert!(hs[0].stats.health.is_healthy());
        assert_eq!(health.get(HealthStat::EjectionsActive), 0);
        // Ejected again at once: base x 2 (Envoy's backoff grows by one base per ejection).
        let t1 = t0 + Duration::from_millis(1000);
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, t1, &mut None);
        assert!(!tick(
            &c,
            &health,
            &mut hs,
            t1 + Duration::from_millis(1999),
            &mut None
        ));
        assert!(tick(
            &c,
            &health,
            &mut hs,
            t1 + Duration::from_millis(2000),
            &mut None
        ));
    }

    #[test]
    fn gateway_and_5xx_runs_are_counted_apart_like_envoy() {
        // consecutive_5xx 3, consecutive_gateway_failure 5, nothing ejects (overflow):
        // Envoy detected 5xx at failures 3, 6, 9 and gateway failure at 5 and 10.
        let c = OutlierDetection {
            max_ejection_percent: 0,
            consecutive_gateway_failure: 5,
            ..config()
        };
        let health = ClusterHealth::default();
        let mut hs = hosts(2);
        let (mut rng, now) = (Rng::new(1), Instant::now());
        for _ in 0..10 {
            fail(&hs[0], 1);
            review(&c, &health, &mut hs, &mut rng, now, &mut None);
        }
        assert_eq!(health.get(HealthStat::EjectionsDetectedConsecutive5xx), 3);
        assert_eq!(
            health.get(HealthStat::EjectionsDetectedConsecutiveGatewayFailure),
            2
        );
        assert_eq!(health.get(HealthStat::EjectionsOverflow), 5);
        assert_eq!(health.get(HealthStat::EjectionsTotal), 0);
    }

    #[test]
    fn a_success_starts_a_new_run_even_when_it_grows_back_before_the_review() {
        // Not enforced (overflow at 0%): the first detection sets a baseline of 3. One
        // success, then three failures before the next review: Envoy detects again.
        let c = OutlierDetection {
            max_ejection_percent: 0,
            ..config()
        };
        let health = ClusterHealth::default();
        let mut hs = hosts(2);
        let (mut rng, now) = (Rng::new(1), Instant::now());
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, now, &mut None);
        hs[0].stats.health.connect_succeeded();
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, now, &mut None);
        assert_eq!(health.get(HealthStat::EjectionsDetectedConsecutive5xx), 2);
    }

    #[test]
    fn backoff_decays_one_per_tick_back() {
        let c = OutlierDetection {
            interval_ms: 200,
            ..config()
        };
        let health = ClusterHealth::default();
        let mut hs = hosts(2);
        let (mut rng, t0) = (Rng::new(1), Instant::now());
        let ms = |n| t0 + Duration::from_millis(n);
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, t0, &mut None);
        tick(&c, &health, &mut hs, ms(1000), &mut None);
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, ms(1000), &mut None);
        assert!(
            tick(&c, &health, &mut hs, ms(3000), &mut None),
            "second ejection: 2 s"
        );
        // Two ticks back take the backoff from 2 to 0: the next ejection lasts 1 s.
        tick(&c, &health, &mut hs, ms(3200), &mut None);
        tick(&c, &health, &mut hs, ms(3400), &mut None);
        fail(&hs[0], 3);
        review(&c, &health, &mut hs, &mut rng, ms(3400), &mut None);
        assert!(
            tick(&c, &health, &mut hs, ms(4400), &mut None),
            "backoff decayed: 1 s again"
        );
    }

    #[test]
    fn split_local_origin_uses_its_own_threshold() {
        let c = OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 2,
            ..config()
        };
        let health = ClusterHealth::default();
        let mut hs = hosts(2);
        let (mut rng, now) = (Rng::new(1), Instant::now());
        fail(&hs[0], 2);
        assert!(review(&c, &health, &mut hs, &mut rng, now, &mut None));
        assert_eq!(
            health.get(HealthStat::EjectionsEnforcedConsecutiveLocalOriginFailure),
            1
        );
        assert_eq!(health.get(HealthStat::EjectionsDetectedConsecutive5xx), 0);
    }
}
