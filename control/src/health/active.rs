//! Active TCP health checks (Envoy's `tcp_health_check`), run on the health thread with
//! non-blocking sockets.
//!
//! A check connects, writes `send` (if any), and passes once every `receive` string has
//! arrived in order (anywhere in what was read, as Envoy's matcher allows), or once
//! connected when there is nothing to receive. Anything else before `timeout` (refused,
//! reset, closed early, no match) fails it; every failure of a TCP check is a network
//! failure (`health_check.network_failure`), as in Envoy. The next check of a host starts
//! `interval` (plus jitter) after the last one ended, `unhealthy_interval` while the host is
//! unhealthy, and `no_traffic_interval` (60 s unless configured) while the cluster has never
//! carried a connection, as Envoy does.
//!
//! Transitions follow Envoy's `ActiveHealthCheckSession`: a host's first result decides at
//! once (a new host waits, `pending_active_hc`, and takes no traffic until it passes); then
//! `unhealthy_threshold` consecutive failures mark it `failed_active_hc`, and
//! `healthy_threshold` consecutive passes clear that. Each check uses its own connection
//! (Envoy's `reuse_connection: false`), so every check also proves that the host accepts.

use super::HostEntry;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use switchyard_dataplane::fib::HealthCheck;
use switchyard_dataplane::health::{
    ClusterHealth, ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, PENDING_ACTIVE_HC,
};
use switchyard_dataplane::lb::Rng;
use switchyard_dataplane::stats::HealthStat;
use switchyard_dataplane::PollFd;

/// The most a check reads while looking for its `receive` strings.
const MAX_RECEIVE_BYTES: usize = 64 * 1024;

/// Where a host's active check is.
#[derive(Debug, Default)]
pub(super) struct ActiveHost {
    /// The next check starts then (`None`: not scheduled yet).
    due: Option<Instant>,
    /// The check in flight.
    check: Option<InFlight>,
    /// Consecutive passes and failures since the last transition.
    passes: u32,
    failures: u32,
}

#[derive(Debug)]
struct InFlight {
    socket: Socket,
    deadline: Instant,
    step: Step,
    /// Bytes of `send` written so far.
    sent: usize,
    received: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Connecting,
    Sending,
    Receiving,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Pass,
    Fail,
    /// Failed by running past `timeout` (sets `/active_hc_timeout`).
    Timeout,
}

impl ActiveHost {
    /// The check in flight's descriptor and what it waits for, to poll.
    pub(super) fn poll_fd(&self) -> Option<PollFd> {
        let check = self.check.as_ref()?;
        let events = match check.step {
            Step::Connecting | Step::Sending => PollFd::WRITABLE,
            Step::Receiving => PollFd::READABLE,
        };
        Some(PollFd::new(check.socket.as_raw_fd(), events))
    }

    /// When this host next needs attention: its check's deadline or its next start.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        match &self.check {
            Some(c) => Some(c.deadline),
            None => self.due,
        }
    }

    /// Schedules the first check (with `initial_jitter`) if none is scheduled.
    pub(super) fn schedule_first(&mut self, config: &HealthCheck, rng: &mut Rng, now: Instant) {
        if self.due.is_none() && self.check.is_none() {
            self.due = Some(now + jitter(config.initial_jitter_ms, rng));
        }
    }

    /// Stops any check in flight (the host left the cluster, or checking stopped).
    pub(super) fn cancel(&mut self) {
        self.check = None;
        self.due = None;
    }
}

/// Starts `host`'s check when it is due, and times out one that ran too long.
pub(super) fn advance(
    config: &HealthCheck,
    health: &ClusterHealth,
    host: &mut HostEntry,
    sched: &mut Schedule<'_>,
) -> Option<Outcome> {
    let now = sched.now;
    if let Some(check) = &host.active.check {
        if now >= check.deadline {
            tracing::debug!(host = %host.address, "health check timed out");
            return Some(finish(config, health, host, Outcome::Timeout, sched));
        }
        return None;
    }
    if host.active.due.is_some_and(|due| now >= due) {
        host.active.due = None;
        health.inc(HealthStat::HcAttempt);
        match start(host, config, now) {
            Ok(check) => host.active.check = Some(check),
            Err(e) => {
                tracing::debug!(host = %host.address, error = %e, "health check connect failed");
                return Some(finish(config, health, host, Outcome::Fail, sched));
            }
        }
    }
    None
}

/// Moves `host`'s check on after its socket became ready.
pub(super) fn on_ready(
    config: &HealthCheck,
    health: &ClusterHealth,
    host: &mut HostEntry,
    sched: &mut Schedule<'_>,
) -> Option<Outcome> {
    let check = host.active.check.as_mut()?;
    let outcome = match step(check, config) {
        Ok(None) => return None,
        Ok(Some(outcome)) => outcome,
        Err(e) => {
            tracing::debug!(host = %host.address, error = %e, "health check failed");
            Outcome::Fail
        }
    };
    Some(finish(config, health, host, outcome, sched))
}

fn start(host: &HostEntry, config: &HealthCheck, now: Instant) -> io::Result<InFlight> {
    let socket = Socket::new(
        Domain::for_address(host.address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&SockAddr::from(host.address)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(InFlight {
        socket,
        deadline: now + Duration::from_millis(config.timeout_ms),
        step: Step::Connecting,
        sent: 0,
        received: Vec::new(),
    })
}

/// One step of a check whose socket is ready: `Ok(None)` to wait again.
fn step(check: &mut InFlight, config: &HealthCheck) -> io::Result<Option<Outcome>> {
    if check.step == Step::Connecting {
        if let Some(e) = check.socket.take_error()? {
            return Err(e);
        }
        check.socket.peer_addr()?;
        check.step = Step::Sending;
    }
    if check.step == Step::Sending {
        while check.sent < config.send.len() {
            match (&check.socket).write(&config.send[check.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => check.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        if config.receive.is_empty() {
            return Ok(Some(Outcome::Pass));
        }
        check.step = Step::Receiving;
    }
    let mut buf = [0u8; 4096];
    loop {
        match (&check.socket).read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                check.received.extend_from_slice(&buf[..n]);
                if matches_in_order(&check.received, &config.receive) {
                    return Ok(Some(Outcome::Pass));
                }
                if check.received.len() > MAX_RECEIVE_BYTES {
                    return Err(io::Error::other("response too long without a match"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Envoy's `TcpHealthCheckMatcher::match`: each expected string is found after the end of
/// the previous one.
pub(super) fn matches_in_order(received: &[u8], expected: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for want in expected {
        match find(&received[from..], want) {
            Some(at) => from += at + want.len(),
            None => return false,
        }
    }
    true
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Ends `host`'s check with `outcome`: stats, transitions, the next check's time.
fn finish(
    config: &HealthCheck,
    health: &ClusterHealth,
    host: &mut HostEntry,
    outcome: Outcome,
    sched: &mut Schedule<'_>,
) -> Outcome {
    host.active.check = None;
    let flags = &host.stats.health;
    let first = flags.flags() & PENDING_ACTIVE_HC != 0;
    let failed = flags.flags() & FAILED_ACTIVE_HC != 0;
    let mut changed = flags.clear(PENDING_ACTIVE_HC);
    if outcome == Outcome::Timeout {
        flags.set(ACTIVE_HC_TIMEOUT);
    } else {
        flags.clear(ACTIVE_HC_TIMEOUT);
    }
    match outcome {
        Outcome::Pass => {
            health.inc(HealthStat::HcSuccess);
            host.active.failures = 0;
            host.active.passes += 1;
            if failed && (first || host.active.passes >= config.healthy_threshold) {
                changed |= flags.clear(FAILED_ACTIVE_HC);
                host.active.passes = 0;
                tracing::info!(cluster = %health.name, host = %host.address, "health check: healthy");
            }
        }
        Outcome::Fail | Outcome::Timeout => {
            health.inc(HealthStat::HcFailure);
            health.inc(HealthStat::HcNetworkFailure);
            host.active.passes = 0;
            host.active.failures += 1;
            // A first check decides at once, either way (a host that was serving before
            // its cluster gained this check is pending but not failed).
            if !failed && (first || host.active.failures >= config.unhealthy_threshold) {
                changed |= flags.set(FAILED_ACTIVE_HC);
                host.active.failures = 0;
                tracing::info!(cluster = %health.name, host = %host.address, "health check: unhealthy");
            }
        }
    }
    if changed {
        health.bump_epoch();
    }
    let unhealthy = flags.flags() & FAILED_ACTIVE_HC != 0;
    // Envoy's `interval()`: until the cluster has carried a connection, the slow
    // `no_traffic_interval`.
    let interval_ms = if !sched.has_traffic {
        config.no_traffic_interval_ms
    } else if unhealthy {
        config.unhealthy_interval_ms
    } else {
        config.interval_ms
    };
    host.active.due = Some(
        sched.now
            + Duration::from_millis(interval_ms)
            + jitter(config.interval_jitter_ms, sched.rng),
    );
    outcome
}

/// What scheduling the next check needs to know.
pub(super) struct Schedule<'a> {
    pub(super) now: Instant,
    /// The cluster has carried a connection (`upstream_cx_total` > 0).
    pub(super) has_traffic: bool,
    pub(super) rng: &'a mut Rng,
}

fn jitter(max_ms: u64, rng: &mut Rng) -> Duration {
    if max_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(rng.below(max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receive_strings_match_in_order_anywhere() {
        let want = vec![b"PO".to_vec(), b"NG".to_vec()];
        assert!(matches_in_order(b"xxPOyyNG", &want));
        assert!(!matches_in_order(b"NGPO", &want));
        assert!(!matches_in_order(b"PON", &want));
        assert!(matches_in_order(b"anything", &[]));
    }
}
