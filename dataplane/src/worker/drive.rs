//! The worker as the connection machine's I/O driver: it feeds a slot's
//! [`Machine`](crate::conn::Machine) its events, answers its questions about the cluster
//! (circuit breaker, balancer) and carries its actions out on the ring.
//!
//! Guarantees, on top of the machine's own:
//! - **Every operation is counted.** Each ring operation started for a connection is added to
//!   its machine ([`crate::conn::Machine::started`]) where it is submitted, and every
//!   completion is taken off before its event is fed; a completion the machine refuses (for a
//!   slot reused or freed, or with nothing in flight) is counted in
//!   `server.worker_invariant_violations` and logged, never absorbed.
//! - **A slot settles only when its actions are done.** [`Worker::drive`] settles after it
//!   carried out every action of the event; nested feeds (a recycled buffer feeding a starved
//!   connection) go only to live connections, which never finish, so no slot is freed while
//!   actions for it are still being carried out.

use super::slot::{Conn, CHAIN_NONE, NO_FD};
use super::ud::{self, Kind};
use super::{report_outlier_failure, Generation, RelayMode, Worker};
use crate::accesslog::AccessRecord;
use crate::conn::{
    Action, Actions, Event, Note, Overflow, Seat, Target, Upstream, Upstreams, Violation,
};
use crate::fib::{Cluster, Fib};
use crate::global_limit::Counted;
use crate::lb::{Pick, Rng};
use crate::relay::{Dir, Side};
use crate::stats::{ClusterStat, HostStat, ListenerStat, Resource, ServerStat, TcpStat};
use std::net::SocketAddr;

/// The cluster side of one connection's decisions: borrowed from the worker for one event.
struct SlotUpstreams<'a> {
    worker: usize,
    generation: Option<&'a mut Generation>,
    active: &'a [Vec<u32>],
    rng: &'a mut Rng,
    conn: &'a mut ConnRoute,
}

/// A slot's two connect lanes (the ring keeps each one's address and timeout).
#[derive(Debug, Clone, Copy)]
pub(super) enum Lane {
    /// The connection's upstream.
    Primary,
    /// Its mirror shadow.
    Shadow,
}

/// What the balancer reads and writes of a slot.
struct ConnRoute {
    cluster: Option<crate::fib::ClusterId>,
    hash: Option<u64>,
    /// The connection's local address and its listener's index (the original destination,
    /// when that listener restored it).
    local: Option<SocketAddr>,
    fib_listener: u32,
    upstream: Option<SocketAddr>,
    /// The chain's RBAC decision after the client's handshake (decided before the event
    /// is fed, so that the machine's question has its answer).
    authorized: bool,
    /// A pooled HTTP/2 connection's endpoint, picked by the stream it was opened for.
    pinned: Option<(Option<u32>, SocketAddr)>,
    /// A terminated HBONE stream's `:authority` destination.
    authority: Option<SocketAddr>,
    /// A tunnelled connection: its upstream is a stream (a request), not a connection.
    tunnelled: bool,
}

/// For events that never ask about the cluster (relay completions): nothing to borrow.
struct NoUpstreams;

impl Upstreams for NoUpstreams {
    fn admit(&mut self) -> Result<(), Overflow> {
        debug_assert!(false, "a relay event asked for admission");
        Err(Overflow)
    }

    fn pick(&mut self, _exclude: Option<u32>) -> Option<Target> {
        debug_assert!(false, "a relay event asked for an endpoint");
        None
    }
}

impl SlotUpstreams<'_> {
    fn cluster(&self) -> Option<&Cluster> {
        Some(self.generation.as_ref()?.fib.cluster(self.conn.cluster?))
    }
}

impl Upstreams for SlotUpstreams<'_> {
    /// The circuit breaker's admission across all workers, as Envoy's TCP pool decides it: a
    /// pending request (`upstream_rq_pending_overflow` at `max_pending_requests`), then a
    /// connection (`upstream_cx_overflow` at `max_connections`).
    fn admit(&mut self) -> Result<(), Overflow> {
        let worker = self.worker;
        let Some(cluster) = self.cluster() else {
            return Err(Overflow);
        };
        let (limits, resources) = (cluster.circuit_breakers, &cluster.resources);
        let overflow = if !resources.try_acquire(Resource::Pending, limits.max_pending_requests) {
            ClusterStat::UpstreamRqPendingOverflow
        } else if !resources.try_acquire(Resource::Connections, limits.max_connections) {
            resources.release(Resource::Pending);
            ClusterStat::UpstreamCxOverflow
        } else {
            return Ok(());
        };
        cluster.stats.inc(worker, overflow);
        Err(Overflow)
    }

    fn authorize(&mut self) -> bool {
        self.conn.authorized
    }

    fn pick(&mut self, exclude: Option<u32>) -> Option<Target> {
        let worker = self.worker;
        let generation = self.generation.as_mut()?;
        let cluster_id = self.conn.cluster?;
        let fib = &generation.fib;
        let cluster = fib.cluster(cluster_id);
        if let Some((endpoint, address)) = self.conn.pinned {
            // A pooled HTTP/2 connection goes where its first stream's pick went.
            cluster.stats.inc(worker, ClusterStat::UpstreamCxTotal);
            self.conn.upstream = Some(address);
            return Some(match endpoint {
                Some(e) => {
                    cluster.endpoints[e as usize].stats.inc(HostStat::CxTotal);
                    Target::Endpoint(e)
                }
                None => Target::OriginalDst,
            });
        }
        if cluster.is_original_dst() && cluster.original_dst_authority {
            if let Some(address) = self.conn.authority {
                cluster.stats.inc(worker, ClusterStat::UpstreamCxTotal);
                self.conn.upstream = Some(address);
                return Some(Target::OriginalDst);
            }
        }
        if cluster.is_original_dst() {
            // `type: ORIGINAL_DST`: where the client was going, as restored by its
            // listener's `use_original_dst`; without one there is no upstream (as in Envoy).
            let restored = fib
                .listeners
                .get(self.conn.fib_listener as usize)
                .is_some_and(|l| l.use_original_dst);
            let address = self.conn.local.filter(|_| restored)?;
            cluster.stats.inc(worker, ClusterStat::UpstreamCxTotal);
            self.conn.upstream = Some(address);
            return Some(Target::OriginalDst);
        }
        let active = &self.active[generation.active[cluster_id.0 as usize] as usize];
        let pick = Pick {
            active,
            exclude: exclude.map(|e| e as usize),
            hash: self.conn.hash,
        };
        let picked = generation.lb.pick(fib, cluster_id, pick, self.rng)?;
        let endpoint = &cluster.endpoints[picked.endpoint];
        if picked.panic {
            cluster.stats.inc(worker, ClusterStat::LbHealthyPanic);
        }
        if self.conn.tunnelled {
            // A stream of a pooled connection, which counts the connection.
            cluster.stats.inc(worker, ClusterStat::UpstreamRqTotal);
        } else {
            cluster.stats.inc(worker, ClusterStat::UpstreamCxTotal);
            endpoint.stats.inc(HostStat::CxTotal);
        }
        self.conn.upstream = Some(endpoint.address);
        Some(Target::Endpoint(picked.endpoint as u32))
    }
}

impl Worker {
    /// Feeds `event` to `slot`'s machine, carries out what it asks, then settles the slot.
    pub(super) fn drive(&mut self, slot: u32, event: Event) {
        let out = self.machine_event(slot, event);
        self.carry_out_conn(slot, &out);
        self.settle(slot);
    }

    /// Feeds `event` to `slot`'s machine and returns its actions, not carried out yet. A
    /// relay completion (the hot path) never asks about the cluster, so it borrows nothing
    /// of it.
    pub(super) fn machine_event(&mut self, slot: u32, event: Event) -> Actions {
        let mut out = Actions::default();
        let client_handshaken = Event::Handshaken {
            side: crate::relay::Side::Client,
            end: crate::conn::HandshakeEnd::Done,
        };
        let authorized = !(event == client_handshaken && self.conns[slot as usize].rbac_late)
            || self.authorize_after_handshake(slot);
        let conn = &mut self.conns[slot as usize];
        let result = if let Event::Relay(_) = event {
            conn.machine
                .on_event(self.now_ms, event, &mut NoUpstreams, &mut out)
        } else {
            let mut route = ConnRoute {
                cluster: conn.cluster,
                hash: conn.hash,
                local: conn.local,
                fib_listener: conn.fib_listener,
                upstream: conn.upstream,
                authorized,
                pinned: None,
                authority: None,
                tunnelled: false,
            };
            if conn.hbone.is_some() {
                route.pinned = self.pinned_endpoint(slot);
                route.authority = self.stream_authority(slot);
                route.tunnelled = self.is_tunnelled(slot);
            }
            let conn = &mut self.conns[slot as usize];
            let mut upstreams = SlotUpstreams {
                worker: self.id,
                generation: self.generations[conn.generation as usize].as_mut(),
                active: &self.active.counts,
                rng: &mut self.rng,
                conn: &mut route,
            };
            let result = conn
                .machine
                .on_event(self.now_ms, event, &mut upstreams, &mut out);
            conn.upstream = route.upstream;
            result
        };
        if let Err(v) = result {
            self.violated(slot, v, "event");
        }
        out
    }

    /// Frees `slot` if its connection is closed and nothing of it is in flight.
    pub(super) fn settle(&mut self, slot: u32) {
        if !self.conns[slot as usize].machine.is_settling() {
            return;
        }
        let mut out = Actions::default();
        self.conns[slot as usize].machine.settle(&mut out);
        self.carry_out_conn(slot, &out);
    }

    /// Counts and logs a broken invariant the machine refused.
    pub(super) fn violated(&self, slot: u32, v: Violation, what: &str) {
        self.shared
            .server_stats
            .inc(self.id, ServerStat::WorkerInvariantViolations);
        tracing::error!(
            worker = self.id,
            slot,
            ?v,
            what,
            "connection invariant violated"
        );
    }

    /// `n` ring operations were started for `slot`.
    pub(super) fn started(&mut self, slot: u32, n: u32) {
        self.conns[slot as usize].machine.started(n);
    }

    fn carry_out_conn(&mut self, slot: u32, actions: &Actions) {
        for action in actions.iter() {
            self.carry_out_conn_one(slot, action);
        }
    }

    fn carry_out_conn_one(&mut self, slot: u32, action: Action) {
        match action {
            Action::OpenSocket => self.open_upstream_socket(slot),
            Action::Connect => self.connect_upstream(slot),
            Action::CloseAttempt | Action::CloseStraySocket => self.close_backend(slot),
            Action::Relay(r) => self.carry_out_relay(slot, r),
            Action::CloseClient { reset } => self.close_client(slot, reset),
            Action::CloseBoth {
                reset_client,
                reset_backend,
                clean,
            } => self.close_both(slot, reset_client, reset_backend, clean),
            Action::MirrorPrimaryClosed => self.mirror_primary_closed(slot),
            Action::CloseMirror => self.shadow_close(slot),
            Action::Release(seat) => self.release(slot, seat),
            Action::StartInspection => self.start_inspection(slot),
            Action::AbandonInspection => self.abandon_inspection(slot),
            Action::StartHandshake(side) => self.start_handshake(slot, side),
            Action::AbandonHandshake(side) => self.abandon_handshake(slot, side),
            Action::ScheduleDelay { at_ms } => {
                self.schedule_fault(at_ms * 1000, slot, super::fault::Due::Connect)
            }
            Action::Note(note) => self.note(slot, note),
            Action::Finish => self.finish(slot),
        }
    }

    // ---- the upstream socket ----

    /// Creates the upstream socket for the endpoint just picked (the connect follows in
    /// [`Worker::on_socket`]).
    fn open_upstream_socket(&mut self, slot: u32) {
        if self.hbone_open(slot) {
            return;
        }
        let flags = self.socket_flags();
        let conn = &self.conns[slot as usize];
        let address = conn.upstream.expect("an upstream picked before its socket");
        let ud = ud::encode(Kind::Socket, slot, conn.nonce);
        self.started(slot, 1);
        self.ring.socket(&address, flags, ud);
    }

    /// Connects the upstream socket, with `TCP_NODELAY` and the cluster's connect timeout.
    fn connect_upstream(&mut self, slot: u32) {
        if self.hbone_connect(slot) {
            return;
        }
        let timeout = self.connect_timeout(slot);
        let conn = &self.conns[slot as usize];
        let fd = conn.backend;
        let address = conn
            .upstream
            .expect("an upstream picked before its connect");
        let kinds = [Kind::Aux, Kind::Connect, Kind::ConnectTimeout];
        self.connect_nodelay(slot, Lane::Primary, fd, address, timeout, kinds);
    }

    /// `TCP_NODELAY`, then a connect linked to its `timeout`, on `slot`'s connect `lane`,
    /// with user data of `kinds` (option, connect, timeout): three operations of `slot`.
    pub(super) fn connect_nodelay(
        &mut self,
        slot: u32,
        lane: Lane,
        fd: i32,
        address: SocketAddr,
        timeout: std::time::Duration,
        kinds: [Kind; 3],
    ) {
        let nonce = self.conns[slot as usize].nonce;
        let [option, connect, timed_out] = kinds.map(|k| ud::encode(k, slot, nonce));
        self.started(slot, 3);
        self.ring.set_nodelay(fd, option);
        match lane {
            Lane::Primary => {
                self.ring
                    .connect(fd, slot as usize, address, timeout, connect, timed_out)
            }
            Lane::Shadow => {
                self.ring
                    .connect_shadow(fd, slot as usize, address, timeout, connect, timed_out)
            }
        }
    }

    /// Closes the upstream socket of a failed attempt, or one that arrived too late.
    fn close_backend(&mut self, slot: u32) {
        self.hbone_detach(slot);
        let conn = &mut self.conns[slot as usize];
        let fd = std::mem::replace(&mut conn.backend, NO_FD);
        if fd != NO_FD {
            let ud = ud::encode(Kind::Aux, slot, conn.nonce);
            self.started(slot, 1);
            self.ring.close(fd, ud);
        }
    }

    // ---- closing ----

    /// Closes the client when no upstream socket is open (no route, refused, connect
    /// failure, an abort before connecting), with a reset if asked.
    fn close_client(&mut self, slot: u32, reset: bool) {
        self.hbone_close(slot, Side::Client, reset);
        let conn = &mut self.conns[slot as usize];
        let ud = ud::encode(Kind::Aux, slot, conn.nonce);
        let fd = std::mem::replace(&mut conn.client, NO_FD);
        if fd == NO_FD {
            return;
        }
        // A handshake's or the inspection's own I/O may still be on the socket: cancelled
        // with the close.
        let busy = self.tls_busy(slot, Side::Client) || self.inspection_busy(slot);
        let ops = if reset || busy {
            self.ring.teardown(fd, true, ud)
        } else {
            self.ring.close(fd, ud);
            1
        };
        self.started(slot, ops);
    }

    /// Closes both sockets. After a clean end of both directions nothing is in flight on
    /// either socket: a plain close each; otherwise every operation on them is cancelled
    /// first, and each is reset if asked.
    fn close_both(&mut self, slot: u32, reset_client: bool, reset_backend: bool, clean: bool) {
        self.hbone_close(slot, Side::Client, reset_client);
        self.hbone_close(slot, Side::Backend, reset_backend);
        let conn = &mut self.conns[slot as usize];
        let ud = ud::encode(Kind::Aux, slot, conn.nonce);
        let splicing = conn.pipes[0] != super::pipes::NO_PIPE;
        let mut ops = 0;
        if splicing {
            // A receive splice belongs to its pipe, not its socket, so the cancel-by-socket
            // below misses it once it runs; cancel it by its user data (a miss completes with
            // ENOENT). One still waiting for its socket is cancelled with the poll it is
            // linked to, which the cancel-by-socket catches.
            for kind in [Kind::RecvUp, Kind::RecvDown] {
                ops += 1;
                self.ring.cancel(ud::encode(kind, slot, conn.nonce), ud);
            }
        }
        for (side, reset) in [(Side::Client, reset_client), (Side::Backend, reset_backend)] {
            let fd = std::mem::replace(conn.fd_mut(side), NO_FD);
            if fd == NO_FD {
                continue;
            }
            if clean && !splicing {
                ops += 1;
                self.ring.close(fd, ud);
            } else {
                ops += self.ring.teardown(fd, reset, ud);
            }
        }
        self.started(slot, ops);
    }

    /// Gives a shared budget back.
    fn release(&mut self, slot: u32, seat: Seat) {
        match seat {
            Seat::BreakerPending | Seat::BreakerConnection => {
                let resource = if seat == Seat::BreakerPending {
                    Resource::Pending
                } else {
                    Resource::Connections
                };
                if let Some(cluster) = self.cluster_of(slot) {
                    cluster.resources.release(resource);
                }
            }
            Seat::ConnectionLimit => {
                if let Some(limit) = self
                    .chain_of(slot)
                    .and_then(|c| c.connection_limit.as_ref())
                {
                    limit.state.leave();
                }
            }
            Seat::Fault => self.leave_faults(slot),
        }
    }

    // ---- what the machine reports ----

    fn note(&mut self, slot: u32, note: Note) {
        let id = self.id;
        match note {
            Note::Connected { endpoint } => {
                self.count_connected(slot, endpoint);
                self.hbone_upstream_connected(slot);
            }
            Note::ConnectFailed {
                endpoint,
                timed_out,
                local,
                attempts_exceeded,
            } => self.count_connect_failure(slot, endpoint, timed_out, local, attempts_exceeded),
            Note::Retrying => {
                tracing::debug!(worker = id, slot, "upstream connect failed; retrying")
            }
            Note::Overflow => {}
            Note::NoHealthyUpstream => {
                if let Some(stats) = self.cluster_stats(slot) {
                    stats.inc(id, ClusterStat::UpstreamCxNoneHealthy);
                }
            }
            Note::Reset { failed, errno } => {
                tracing::debug!(worker = id, ?failed, errno, "connection reset");
                if let Some(s) = self.cluster_stats(slot) {
                    s.inc(id, ClusterStat::UpstreamCxReset);
                }
            }
            Note::IdleTimeout => {
                if let Some(stats) = self.tcp_stats(slot) {
                    stats.inc(id, TcpStat::IdleTimeout);
                }
            }
            Note::DrainClose => {
                if let Some(s) = self.tcp_stats(slot) {
                    s.inc(id, TcpStat::DownstreamCxDrainClose);
                }
            }
            Note::HandshakeFailed { side, timed_out } => {
                tracing::debug!(worker = id, slot, ?side, timed_out, "TLS handshake failed");
            }
        }
    }

    fn count_connected(&mut self, slot: u32, endpoint: Option<u32>) {
        let id = self.id;
        let conn = &self.conns[slot as usize];
        let (Some(g), Some(cluster)) = (
            self.generations[conn.generation as usize].as_ref(),
            conn.cluster,
        ) else {
            return;
        };
        let c = g.fib.cluster(cluster);
        let stream = self.is_tunnelled(slot);
        c.stats.inc(
            id,
            if stream {
                ClusterStat::UpstreamRqActive
            } else {
                ClusterStat::UpstreamCxActive
            },
        );
        let Some(endpoint) = endpoint else { return };
        let host = &c.endpoints[endpoint as usize];
        host.stats.inc(HostStat::CxActive);
        if c.health.outlier.is_some() {
            host.health().connect_succeeded();
        }
        self.active.counts[g.active[cluster.0 as usize] as usize][endpoint as usize] += 1;
    }

    fn count_connect_failure(
        &mut self,
        slot: u32,
        endpoint: Option<u32>,
        timed_out: bool,
        local: bool,
        attempts_exceeded: bool,
    ) {
        let id = self.id;
        let Some(c) = self.cluster_of(slot) else {
            return;
        };
        c.stats.inc(id, ClusterStat::UpstreamCxConnectFail);
        if timed_out {
            c.stats.inc(id, ClusterStat::UpstreamCxConnectTimeout);
        }
        if let Some(e) = endpoint {
            let host = &c.endpoints[e as usize];
            host.stats.inc(HostStat::CxConnectFail);
            if !local {
                report_outlier_failure(c, host);
            }
        }
        if attempts_exceeded {
            c.stats
                .inc(id, ClusterStat::UpstreamCxConnectAttemptsExceeded);
        }
    }

    // ---- the end ----

    /// The connection is over and nothing of it is in flight: its stats and access-log
    /// record, then the slot is freed.
    fn finish(&mut self, slot: u32) {
        let internal = self.is_internal(slot);
        self.record_close(slot);
        self.release_hbone(slot);
        self.release_source_seat(slot);
        self.release_tls(slot);
        self.release_inspection(slot);
        let conn = &mut self.conns[slot as usize];
        for pipe in std::mem::replace(&mut conn.pipes, [super::pipes::NO_PIPE; 2]) {
            if pipe != super::pipes::NO_PIPE {
                self.pipes.release(pipe);
            }
        }
        let gen_index = conn.generation as usize;
        let index = conn.occupied_index as usize;
        self.occupied.swap_remove(index);
        if let Some(&moved) = self.occupied.get(index) {
            self.conns[moved as usize].occupied_index = index as u32;
        }
        self.free_slots.push(slot);
        self.open_conns -= 1;
        if !internal {
            self.shared.global_connections.leave(Counted::Worker);
        }
        if let Some(g) = self.generations[gen_index].as_mut() {
            g.conns -= 1;
        }
        self.release_generation_if_unused(gen_index);
    }

    /// The seat `slot`'s per-source limit gave it goes back (to the table of its own
    /// generation's chain, the one that gave it).
    fn release_source_seat(&mut self, slot: u32) {
        let seat = std::mem::replace(
            &mut self.conns[slot as usize].source_seat,
            crate::source_limit::SourceSeat::NONE,
        );
        if let Some(limit) = self.chain_of(slot).and_then(|c| c.source_limit.as_ref()) {
            limit.table.release(seat);
        }
    }

    /// Stats and the access-log record of a connection that just closed.
    fn record_close(&mut self, slot: u32) {
        for dir in Dir::BOTH {
            self.unbuffer_all(slot, dir);
        }
        let id = self.id;
        let conn = &self.conns[slot as usize];
        let Some(g) = self.generations[conn.generation as usize].as_ref() else {
            return;
        };
        let fib: &Fib = &g.fib;
        if !self.is_internal(slot) {
            self.shared
                .server_stats
                .dec(id, ServerStat::TotalConnections);
        }
        let Some(listener) = fib.listeners.get(conn.fib_listener as usize) else {
            return;
        };
        if conn.listener_counted {
            listener.stats.dec(id, ListenerStat::DownstreamCxActive);
            listener.stats.inc(id, ListenerStat::DownstreamCxDestroy);
        }
        if let Some(cluster_id) = conn.cluster {
            self.count_cluster_close(slot, cluster_id);
        }
        let conn = &self.conns[slot as usize];
        let g = self.generations[conn.generation as usize]
            .as_ref()
            .expect("checked above");
        let listener = &g.fib.listeners[conn.fib_listener as usize];
        let cluster = conn.cluster.map(|c| g.fib.cluster(c));
        let names = cluster.map(|c| (c.observability_name.clone(), c.name.clone()));
        let chain = (conn.chain != CHAIN_NONE).then(|| listener.chain(conn.chain));
        if let Some(chain) = chain {
            chain.tcp_proxy.stats.dec(id, TcpStat::DownstreamCxActive);
        }
        // The tcp_proxy's lines, then the listener's own (Envoy's order: the filter's logs
        // when its stream ends, the listener's when the connection is destroyed).
        let tcp_logs = chain.map_or(&[][..], |c| &c.tcp_proxy.access_logs[..]);
        let flags = conn.machine.flags();
        let logged = || {
            let all = tcp_logs.iter().chain(listener.access_logs.iter());
            all.filter(|s| s.filter.admits(flags))
        };
        let tls = if logged().any(|s| s.format.uses_tls()) {
            // A terminated HBONE stream's TLS is its HTTP/2 connection's: the calling
            // workload's identity.
            self.stream_peer_record(slot)
                .or_else(|| super::tls_io::tls_record(conn))
        } else {
            None
        };
        for sink in logged() {
            let mut record = access_record(conn, sink.clone(), names.clone(), self.now_ms);
            record.tls = tls.clone();
            if !self.shared.access_logs.push(id, record) {
                self.shared
                    .server_stats
                    .inc(id, ServerStat::AccessLogDropped);
            }
        }
    }

    /// The cluster's and the host's part of a close.
    fn count_cluster_close(&mut self, slot: u32, cluster_id: crate::fib::ClusterId) {
        let id = self.id;
        let conn = &self.conns[slot as usize];
        let machine = &conn.machine;
        let Some(g) = self.generations[conn.generation as usize].as_ref() else {
            return;
        };
        let cluster = g.fib.cluster(cluster_id);
        let stream = self.is_tunnelled(slot);
        if let Upstream::Connected {
            endpoint,
            remote_close,
        } = machine.upstream()
        {
            if stream {
                cluster.stats.dec(id, ClusterStat::UpstreamRqActive);
            } else {
                cluster.stats.dec(id, ClusterStat::UpstreamCxActive);
                cluster.stats.inc(id, ClusterStat::UpstreamCxDestroy);
                cluster.stats.inc(
                    id,
                    if remote_close {
                        ClusterStat::UpstreamCxDestroyRemote
                    } else {
                        ClusterStat::UpstreamCxDestroyLocal
                    },
                );
            }
            if let Some(e) = endpoint {
                cluster.endpoints[e as usize].stats.dec(HostStat::CxActive);
                let counts = &mut self.active.counts[g.active[cluster_id.0 as usize] as usize];
                match counts[e as usize].checked_sub(1) {
                    Some(n) => counts[e as usize] = n,
                    None => self.violated(slot, Violation::OpUnderflow, "least-request count"),
                }
            }
        }
        let flags = machine.flags();
        if flags.0 != 0 {
            if let Some(e) = machine.upstream().endpoint() {
                cluster.endpoints[e as usize].stats.inc(HostStat::RqError);
            }
        }
    }

    /// Splice mode: gives each direction of `slot` its pipe. False when no pipe could be had
    /// (descriptor limit): the connection is then reset rather than relayed.
    pub(super) fn attach_pipes(&mut self, slot: u32) -> bool {
        if self.limits.relay_mode != RelayMode::Splice {
            return true;
        }
        for dir in Dir::BOTH {
            match self.pipes.acquire() {
                Ok(id) => self.conns[slot as usize].pipes[dir as usize] = id,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "no pipe for a splice relay");
                    return false;
                }
            }
        }
        true
    }
}

/// The access-log record of a closed connection.
fn access_record(
    conn: &Conn,
    sink: std::sync::Arc<crate::accesslog::AccessLogSink>,
    cluster: Option<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    now_ms: u64,
) -> AccessRecord {
    let (upstream_cluster, upstream_cluster_raw) = cluster.unzip();
    let relay = conn.machine.relay();
    AccessRecord {
        sink,
        start_time_unix_ms: conn.start_unix_ms,
        duration_ms: now_ms.saturating_sub(conn.start_ms),
        bytes_received: relay.bytes(Dir::Up).received,
        bytes_sent: relay.bytes(Dir::Down).sent,
        downstream_remote: conn.remote,
        downstream_direct_remote: conn.direct_remote,
        downstream_local: conn.local,
        upstream_host: conn.upstream,
        upstream_local: None,
        upstream_cluster,
        upstream_cluster_raw,
        response_flags: conn.machine.flags(),
        termination_details: conn.machine.details(),
        denied_by: conn.denied_by.clone(),
        tls: None,
    }
}
