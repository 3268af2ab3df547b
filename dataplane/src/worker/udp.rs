//! The UDP proxy (Envoy's `envoy.filters.udp_listener.udp_proxy`) on the worker's ring.
//!
//! Each worker owns one SO_REUSEPORT socket per UDP listener; the kernel hashes a source's
//! 4-tuple to one of them, so a client's datagrams always reach the same worker and no
//! session state is shared between workers.
//!
//! - **Receive**: one multishot `recvmsg` per listener socket into the worker's datagram
//!   buffers (group 2, one whole datagram each, source address included), and one multishot
//!   `recv` per session on its connected upstream socket into the same pool.
//! - **Sessions**: the first datagram from a source (per listener) opens a session: an
//!   endpoint picked by the cluster's balancer (MAGLEV or RING_HASH keyed on the client's IP
//!   with `hash_policies: source_ip`, so a client's sessions land on one endpoint) and a UDP
//!   socket connected to it. Every datagram either way refreshes the session; one idle for
//!   `idle_timeout` is closed at the next tick.
//! - **Forwarding**: a datagram is sent from the buffer it was received into, one `send` per
//!   datagram (to the endpoint on the session's socket; to the client from the listener's
//!   socket): datagrams are never merged or split, and every send of a loop turn goes to the
//!   kernel in the same `io_uring_enter` (batched). The buffer returns to the kernel when the
//!   send completes.
//! - **Steady state** allocates nothing: the session slab, its free list and the source map
//!   are sized when the first UDP listener opens. Opening a session costs a few plain
//!   non-blocking system calls (`socket`, `setsockopt(SO_RCVBUF)`, the cluster's bind
//!   options if any, `connect`: UDP connect sends nothing).
//! - **Endpoint changes**: a session whose endpoint leaves the FIB (EDS, CDS) is closed when
//!   the worker adopts that FIB, and one whose endpoint failed a health or outlier check
//!   after it was picked moves to a newly picked endpoint at its next client datagram, as
//!   Envoy does; the next datagram of a closed session's source opens a new one.
//! - **Limits**: a datagram from a new source when the worker's session table is full, or
//!   when the cluster's circuit breaker `max_connections` is reached (Envoy counts UDP
//!   sessions there too, `upstream_cx_overflow`), is dropped. A datagram that finds no
//!   buffer waits in the socket's receive queue (the multishot receive is re-armed when
//!   buffers come back).
//! - **Sizes**: a client's datagram longer than the listener's `max_rx_datagram_size` is
//!   dropped (`listener.<address>.udp.downstream_rx_datagram_dropped`), and an endpoint's
//!   longer than the upstream one, when that applies (`cluster.<name>.udp.
//!   sess_rx_datagrams_dropped`). A buffer holds the largest datagram, so the sizes are
//!   compared, never cut; a truncated datagram (MSG_TRUNC in the listener's receive record;
//!   a full buffer on a session's plain receive) is dropped the same way, never forwarded.
//! - A session's slot is reused only after its receive's last completion and every send
//!   from it completed; its socket is closed through the ring after its receive is
//!   cancelled, so no queued operation ever names a reused descriptor.

use super::sockets::SocketSlots;
use super::ud::{self, Kind};
use super::Worker;
use crate::fib::{Cluster, ClusterId, Route, UdpListener};
use crate::handoff::{Phase, Snapshot};
use crate::health::ClusterHealth;
use crate::host::HostState;
use crate::lb::Pick;
use crate::stats::{
    ClusterResources, ClusterStat, ClusterStats, ClusterUdpStat, ClusterUdpStats, ListenerUdpStat,
    Resource, UdpStat, UdpStats,
};
use crate::sys::net;
use crate::sys::uring::{Datagram, DATAGRAM_BUFFER_BYTES};
use crate::sys::{BufClass, Completion, RingBuf};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

/// Where a session's slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum SessionState {
    #[default]
    Free,
    Open,
    /// Closed; waiting for its receive's last completion and its sends.
    Closing,
}

/// One UDP session: a client address on one listener, and its upstream socket.
#[derive(Default)]
struct Session {
    state: SessionState,
    nonce: u32,
    listener_slot: u32,
    source: Option<SocketAddr>,
    fd: RawFd,
    /// The upstream multishot receive is armed.
    armed: bool,
    /// The upstream receive ended for lack of buffers.
    starved: bool,
    /// Sends from this session in flight (its slot waits for them).
    sends: u32,
    last_activity_ms: u64,
    idle_timeout_ms: Option<u64>,
    /// An endpoint's datagram longer than this is dropped (`None`: none is).
    max_rx_datagram_bytes: Option<u32>,
    /// Position in `Udp::occupied`.
    occupied_at: u32,
    proxy_stats: Option<Arc<UdpStats>>,
    cluster_stats: Option<Arc<UdpClusterRef>>,
    /// The endpoint's stat block (its identity across FIBs, and its health).
    host: Option<Arc<HostState>>,
    /// The cluster's health epoch when the session picked its endpoint.
    health_epoch: u64,
}

/// What a session keeps of its cluster: its stats, its health and the circuit breaker it
/// holds a connection of. Shared by the sessions of one cluster (one `Arc` clone per
/// session).
struct UdpClusterRef {
    udp: Arc<ClusterUdpStats>,
    stats: Arc<ClusterStats>,
    resources: Arc<ClusterResources>,
    health: Arc<ClusterHealth>,
}

/// A new session's upstream side.
struct UdpUpstream {
    /// The socket connected to the endpoint.
    fd: RawFd,
    cluster: Arc<UdpClusterRef>,
    host: Arc<HostState>,
    proxy_stats: Arc<UdpStats>,
    idle_timeout_ms: Option<u64>,
    max_rx_datagram_bytes: Option<u32>,
}

/// The worker's UDP state.
#[derive(Default)]
pub(super) struct Udp {
    /// The UDP listener sockets this worker receives on.
    sockets: SocketSlots,
    sessions: Vec<Session>,
    free: Vec<u32>,
    occupied: Vec<u32>,
    by_source: HashMap<(u32, SocketAddr), u32>,
    /// Sessions whose upstream receive waits for buffers.
    starved_sessions: Vec<u32>,
    /// Per cluster name, what its sessions share (kept while a session uses it).
    cluster_refs: Vec<Arc<UdpClusterRef>>,
    /// Datagrams dropped because the session table was full (reported in the log once).
    table_full_warned: bool,
    /// An upstream socket could not be made (reported in the log once).
    socket_failed_warned: bool,
    /// The endpoints of the current FIB (their stat blocks' addresses), to find sessions
    /// whose endpoint is gone; rebuilt on each new FIB while sessions are open.
    live_hosts: HashSet<usize>,
}

impl Worker {
    /// Sizes the session table when the first UDP listener opens.
    fn udp_reserve(&mut self) {
        let udp = &mut self.udp;
        if !udp.sessions.is_empty() {
            return;
        }
        let n = self.limits.udp_sessions_per_worker;
        udp.sessions = (0..n).map(|_| Session::default()).collect();
        udp.free = (0..n as u32).rev().collect();
        udp.occupied = Vec::with_capacity(n);
        // Twice the sessions: deleted entries' markers never make the map grow.
        udp.by_source = HashMap::with_capacity(2 * n);
        udp.starved_sessions = Vec::with_capacity(n);
    }

    /// Follows the snapshot's UDP listeners: stops removed ones (closing their sessions),
    /// starts new ones.
    pub(super) fn reconcile_udp_listeners(&mut self, snapshot: &Snapshot) {
        for i in 0..self.udp.sockets.len() {
            if self
                .udp
                .sockets
                .leave_if_removed(i, &snapshot.udp_listeners)
            {
                self.udp_stop_receiving(i);
                self.close_udp_sessions_of(i as u32);
                self.let_go_of_udp_listener(i);
            }
        }
        if snapshot.udp_listeners.is_empty() || self.limits.datagram_buffers_per_worker == 0 {
            return;
        }
        self.udp_reserve();
        for (fib_index, sockets) in snapshot.udp_listeners.iter().enumerate() {
            let Some(fd) = sockets.fd(self.id) else {
                continue;
            };
            if let Some(slot) = self.udp.sockets.place(fib_index, sockets, fd) {
                if self.accepting() {
                    self.udp_arm_receive(slot);
                }
            }
        }
    }

    /// The plane's phase changed: receive only while running; close every session when
    /// stopped.
    pub(super) fn udp_follow_phase(&mut self, phase: Phase) {
        for i in 0..self.udp.sockets.len() {
            if phase == Phase::Running {
                if self.udp.sockets[i].open {
                    self.udp_arm_receive(i);
                }
            } else {
                self.udp_stop_receiving(i);
            }
        }
        if phase == Phase::Stopped {
            for i in 0..self.udp.sockets.len() {
                self.close_udp_sessions_of(i as u32);
            }
        }
    }

    fn udp_arm_receive(&mut self, i: usize) {
        let s = &mut self.udp.sockets[i];
        if s.armed || !s.open {
            return;
        }
        s.armed = true;
        s.starved = false;
        let ud = ud::encode(Kind::UdpRecv, i as u32, s.nonce);
        let fd = s.fd;
        self.ring.recvmsg_multi(fd, ud);
    }

    /// Gives up UDP socket slot `i`'s sockets once it is closed and its receive ended, after
    /// submitting what was queued on the descriptor (the sends of its closed sessions).
    fn let_go_of_udp_listener(&mut self, i: usize) {
        if let Some(sockets) = self.udp.sockets.let_go(i) {
            self.ring.submit();
            drop(sockets);
        }
    }

    /// The worker is exiting: lets go of every UDP listener socket.
    pub(super) fn udp_close_all_sockets(&mut self) {
        self.udp.sockets.close_all();
        self.ring.submit();
        for i in 0..self.udp.sockets.len() {
            self.udp.sockets[i].armed = false;
            drop(self.udp.sockets.let_go(i));
        }
    }

    fn udp_stop_receiving(&mut self, i: usize) {
        let s = &self.udp.sockets[i];
        if s.armed {
            let target = ud::encode(Kind::UdpRecv, i as u32, s.nonce);
            self.ring.cancel(target, ud::encode(Kind::UdpAux, 0, 0));
        }
    }

    fn close_udp_sessions_of(&mut self, listener_slot: u32) {
        self.close_udp_sessions_where(|s| s.listener_slot == listener_slot, None);
    }

    /// Closes every open session `pick` chooses, counting `stat` for each. Backwards over
    /// the occupied list: a session whose slot is freed at once swap-removes itself, which
    /// only moves an entry already visited.
    fn close_udp_sessions_where(&mut self, pick: impl Fn(&Session) -> bool, stat: Option<UdpStat>) {
        let mut i = self.udp.occupied.len();
        while i > 0 {
            i -= 1;
            let Some(&slot) = self.udp.occupied.get(i) else {
                continue;
            };
            let s = &self.udp.sessions[slot as usize];
            if s.state != SessionState::Open || !pick(s) {
                continue;
            }
            if let (Some(stat), Some(p)) = (stat, &s.proxy_stats) {
                p.inc(self.id, stat);
            }
            self.close_udp_session(slot);
        }
    }

    /// A listener socket's receive completed: one datagram from a client (or the end of
    /// the multishot receive).
    pub(super) fn on_udp_recv(&mut self, i: usize, nonce: u32, c: Completion) {
        let id = c
            .buffer_id()
            .map(|bid| self.ring.buffer_received(BufClass::Datagram, bid));
        let Some(s) = self.udp.sockets.get_mut(i).filter(|s| s.nonce == nonce) else {
            if let Some(id) = id {
                self.ring.recycle(id);
            }
            return;
        };
        if !c.more() {
            s.armed = false;
        }
        let (open, fib_index) = (s.open, s.fib_index);
        if !open {
            self.let_go_of_udp_listener(i);
        }
        if c.result < 0 || !open || !self.accepting() {
            if let Some(id) = id {
                self.ring.recycle(id);
            }
            if c.result < 0 && open {
                self.udp_recv_failed(i, -c.result);
            }
            return;
        }
        let Some(id) = id else { return };
        if !self.udp.sockets[i].armed {
            self.udp_arm_receive(i);
        }
        let Some(d) = self.ring.datagram(id, c.result as u32) else {
            if let Some(l) = self.udp_listener(fib_index) {
                l.proxy.stats.inc(self.id, UdpStat::DownstreamSessRxErrors);
            }
            self.ring.recycle(id);
            return;
        };
        // Longer than the listener takes, or truncated (MSG_TRUNC: never, as a buffer holds
        // the largest datagram): dropped before any session sees it, as Envoy drops it.
        let Some(l) = self.udp_listener(fib_index) else {
            self.ring.recycle(id);
            return;
        };
        if d.truncated || l.max_rx_datagram_bytes.is_some_and(|max| d.len > max) {
            l.udp_stats
                .inc(self.id, ListenerUdpStat::DownstreamRxDatagramDropped);
            self.ring.recycle(id);
            return;
        }
        self.udp_from_client(i as u32, fib_index, id, d);
    }

    fn udp_recv_failed(&mut self, i: usize, errno: i32) {
        match errno {
            libc::ENOBUFS => self.udp.sockets[i].starved = true,
            libc::ECANCELED => {}
            _ => {
                let fib_index = self.udp.sockets[i].fib_index;
                if let Some(l) = self.udp_listener(fib_index) {
                    l.proxy.stats.inc(self.id, UdpStat::DownstreamSessRxErrors);
                }
                tracing::warn!(worker = self.id, errno, "UDP receive failed");
                self.udp.sockets[i].rearm_on_tick = true;
            }
        }
    }

    fn udp_listener(&self, fib_index: usize) -> Option<&UdpListener> {
        self.generations[self.current_gen]
            .as_ref()?
            .fib
            .udp_listeners
            .get(fib_index)
    }

    /// A client's datagram, in buffer `id`: to its session's endpoint, opening the session
    /// if it is the source's first (or if its endpoint turned unhealthy since: Envoy moves
    /// such a session to another endpoint).
    fn udp_from_client(&mut self, listener_slot: u32, fib_index: usize, id: RingBuf, d: Datagram) {
        let existing = self.udp.by_source.get(&(listener_slot, d.source)).copied();
        if let Some(slot) = existing.filter(|&slot| self.udp_endpoint_turned_unhealthy(slot)) {
            self.close_udp_session(slot);
        }
        let slot = match self.udp.by_source.get(&(listener_slot, d.source)) {
            Some(&slot) => slot,
            None => match self.open_udp_session(listener_slot, fib_index, d.source) {
                Some(slot) => slot,
                None => {
                    self.ring.recycle(id);
                    return;
                }
            },
        };
        let (now, worker) = (self.now_ms, self.id);
        let s = &mut self.udp.sessions[slot as usize];
        if let Some(p) = &s.proxy_stats {
            p.inc(worker, UdpStat::DownstreamSessRxDatagrams);
            p.add(worker, UdpStat::DownstreamSessRxBytes, u64::from(d.len));
        }
        s.last_activity_ms = now;
        s.sends += 1;
        let fd = s.fd;
        self.ring.send(
            fd,
            id,
            d.offset,
            d.len,
            ud::encode(Kind::UdpSendUp, slot, u32::from(id.raw())),
        );
    }

    /// True when the session's endpoint failed a health or outlier check after the session
    /// picked it (a session opened on an unhealthy endpoint, in panic, stays).
    fn udp_endpoint_turned_unhealthy(&self, slot: u32) -> bool {
        let s = &self.udp.sessions[slot as usize];
        match (&s.host, &s.cluster_stats) {
            (Some(host), Some(cluster)) => {
                !host.health.is_healthy() && cluster.health.epoch() != s.health_epoch
            }
            _ => false,
        }
    }

    /// A new FIB: sessions whose endpoint is no longer in it (removed by EDS, its cluster
    /// removed) are closed, as Envoy closes them; the next datagram of their source picks
    /// again.
    pub(super) fn udp_follow_generation(&mut self) {
        if self.udp.occupied.is_empty() {
            return;
        }
        let Some(fib) = self.generations[self.current_gen]
            .as_ref()
            .map(|g| g.fib.clone())
        else {
            return;
        };
        let mut live = std::mem::take(&mut self.udp.live_hosts);
        live.clear();
        for c in fib.clusters.iter() {
            live.extend(c.endpoints.iter().map(|e| Arc::as_ptr(&e.stats) as usize));
        }
        self.close_udp_sessions_where(
            |s| {
                s.host
                    .as_ref()
                    .is_some_and(|h| !live.contains(&(Arc::as_ptr(h) as usize)))
            },
            None,
        );
        self.udp.live_hosts = live;
    }

    /// Opens a session for `source`: picks the cluster and endpoint, connects a socket and
    /// arms its receive. `None` (the datagram is dropped, counted) when there is no route,
    /// no endpoint, no room or no socket.
    fn open_udp_session(
        &mut self,
        listener_slot: u32,
        fib_index: usize,
        source: SocketAddr,
    ) -> Option<u32> {
        let Some(slot) = self.udp.free.pop() else {
            if let Some(l) = self.udp_listener(fib_index) {
                l.proxy.stats.inc(self.id, UdpStat::DownstreamSessTableFull);
            }
            if !std::mem::replace(&mut self.udp.table_full_warned, true) {
                tracing::warn!(
                    worker = self.id,
                    sessions = self.limits.udp_sessions_per_worker,
                    "UDP session table full: datagrams from new sources are dropped"
                );
            }
            return None;
        };
        let Some(up) = self.udp_upstream(fib_index, source) else {
            self.udp.free.push(slot);
            return None;
        };
        up.proxy_stats.inc(self.id, UdpStat::DownstreamSessTotal);
        up.proxy_stats.inc(self.id, UdpStat::DownstreamSessActive);
        let occupied_at = self.udp.occupied.len() as u32;
        self.udp.occupied.push(slot);
        self.udp.by_source.insert((listener_slot, source), slot);
        let now = self.now_ms;
        let s = &mut self.udp.sessions[slot as usize];
        s.state = SessionState::Open;
        s.nonce = ud::next_nonce(s.nonce);
        s.listener_slot = listener_slot;
        s.source = Some(source);
        s.fd = up.fd;
        s.armed = false;
        s.starved = false;
        s.sends = 0;
        s.last_activity_ms = now;
        s.idle_timeout_ms = up.idle_timeout_ms;
        s.max_rx_datagram_bytes = up.max_rx_datagram_bytes;
        s.occupied_at = occupied_at;
        s.health_epoch = up.cluster.health.epoch();
        s.proxy_stats = Some(up.proxy_stats);
        s.cluster_stats = Some(up.cluster);
        s.host = Some(up.host);
        self.udp_arm_session(slot);
        Some(slot)
    }

    /// A new session's upstream side: the route's cluster, an endpoint, the circuit
    /// breaker's connection and a socket connected to the endpoint; counts why when there
    /// is none.
    fn udp_upstream(&mut self, fib_index: usize, source: SocketAddr) -> Option<UdpUpstream> {
        let id = self.id;
        let generation = self.generations[self.current_gen].as_mut()?;
        let fib = generation.fib.clone();
        let proxy = &fib.udp_listeners.get(fib_index)?.proxy;
        let cluster_id: Option<ClusterId> = match &proxy.route {
            Route::Cluster(c) => Some(*c),
            Route::Weighted(w) => w.pick(self.rng.next_u64()).cluster,
            Route::Missing(_) => None,
        };
        let Some(cluster_id) = cluster_id else {
            proxy.stats.inc(id, UdpStat::DownstreamSessNoRoute);
            return None;
        };
        let cluster = fib.cluster(cluster_id);
        let limits = cluster.circuit_breakers;
        if !cluster
            .resources
            .try_acquire(Resource::Connections, limits.max_connections)
        {
            cluster.stats.inc(id, ClusterStat::UpstreamCxOverflow);
            return None;
        }
        let hash = proxy
            .hash_source_ip
            .then(|| crate::hash_lb::source_ip_hash(source.ip()));
        let active = &self.active.counts[generation.active[cluster_id.0 as usize] as usize];
        let picked = generation.lb.pick(
            &fib,
            cluster_id,
            Pick {
                active,
                exclude: None,
                hash,
            },
            &mut self.rng,
        );
        let Some(picked) = picked.filter(|_| !cluster.is_original_dst()) else {
            cluster.resources.release(Resource::Connections);
            cluster.stats.inc(id, ClusterStat::UpstreamCxNoneHealthy);
            return None;
        };
        if picked.panic {
            cluster.stats.inc(id, ClusterStat::LbHealthyPanic);
        }
        let endpoint = &cluster.endpoints[picked.endpoint];
        let fd = self.udp_connect_session(cluster, endpoint.address)?;
        Some(UdpUpstream {
            fd,
            host: endpoint.stats.clone(),
            cluster: self.udp_cluster_ref(cluster),
            proxy_stats: proxy.stats.clone(),
            idle_timeout_ms: proxy.idle_timeout_ms,
            max_rx_datagram_bytes: proxy.max_upstream_rx_datagram_bytes,
        })
    }

    /// A new session's socket, connected to `address`; on failure the cluster's connection
    /// is given back and counted (`upstream_cx_connect_fail`), and the first one is logged.
    fn udp_connect_session(&mut self, cluster: &Cluster, address: SocketAddr) -> Option<RawFd> {
        match net::udp_connect(address, &cluster.upstream_bind) {
            Ok(fd) => Some(fd),
            Err(e) => {
                cluster.resources.release(Resource::Connections);
                cluster
                    .stats
                    .inc(self.id, ClusterStat::UpstreamCxConnectFail);
                if !std::mem::replace(&mut self.udp.socket_failed_warned, true) {
                    tracing::warn!(
                        worker = self.id,
                        endpoint = %address,
                        error = %e,
                        "UDP upstream socket failed (reported once; counted in \
                         cluster.<name>.upstream_cx_connect_fail)"
                    );
                }
                None
            }
        }
    }

    /// What the sessions of `cluster` share: found by its stats block, else made (once per
    /// cluster name while sessions use it).
    fn udp_cluster_ref(&mut self, cluster: &Cluster) -> Arc<UdpClusterRef> {
        let found = self.udp.cluster_refs.iter().find(|r| {
            Arc::ptr_eq(&r.udp, &cluster.udp_stats)
                && Arc::ptr_eq(&r.stats, &cluster.stats)
                && Arc::ptr_eq(&r.resources, &cluster.resources)
                && Arc::ptr_eq(&r.health, &cluster.health_state)
        });
        if let Some(r) = found {
            return r.clone();
        }
        // Forget the ones no session holds any more (only this list holds them).
        self.udp.cluster_refs.retain(|r| Arc::strong_count(r) > 1);
        let r = Arc::new(UdpClusterRef {
            udp: cluster.udp_stats.clone(),
            stats: cluster.stats.clone(),
            resources: cluster.resources.clone(),
            health: cluster.health_state.clone(),
        });
        self.udp.cluster_refs.push(r.clone());
        r
    }

    fn udp_arm_session(&mut self, slot: u32) {
        let s = &mut self.udp.sessions[slot as usize];
        if s.armed || s.state != SessionState::Open {
            return;
        }
        s.armed = true;
        s.starved = false;
        let (fd, ud) = (s.fd, ud::encode(Kind::UdpUpRecv, slot, s.nonce));
        self.ring.recv_multi(fd, BufClass::Datagram, ud);
    }

    /// A session's upstream receive completed: one datagram from the endpoint (or the end
    /// of the multishot receive).
    pub(super) fn on_udp_upstream_recv(&mut self, slot: u32, nonce: u32, c: Completion) {
        let id = c
            .buffer_id()
            .map(|bid| self.ring.buffer_received(BufClass::Datagram, bid));
        let Some(s) = self
            .udp
            .sessions
            .get_mut(slot as usize)
            .filter(|s| s.nonce == nonce && s.state != SessionState::Free)
        else {
            if let Some(id) = id {
                self.ring.recycle(id);
            }
            return;
        };
        if !c.more() {
            s.armed = false;
        }
        if c.result < 0 {
            if let Some(id) = id {
                self.ring.recycle(id);
            }
            self.udp_upstream_recv_failed(slot, -c.result);
            self.udp_free_if_done(slot);
            return;
        }
        if let Some(id) = id {
            self.udp_to_client(slot, id, c.result as u32);
        }
        let s = &self.udp.sessions[slot as usize];
        if !s.armed && s.state == SessionState::Open {
            self.udp_arm_session(slot);
        }
        self.udp_free_if_done(slot);
    }

    fn udp_upstream_recv_failed(&mut self, slot: u32, errno: i32) {
        let s = &mut self.udp.sessions[slot as usize];
        match errno {
            libc::ENOBUFS if s.state == SessionState::Open => {
                s.starved = true;
                self.udp.starved_sessions.push(slot);
            }
            libc::ENOBUFS | libc::ECANCELED => {}
            _ => {
                // An ICMP error (port unreachable: ECONNREFUSED) reported on the connected
                // socket; the session stays.
                if let Some(c) = &s.cluster_stats {
                    c.udp.inc(self.id, ClusterUdpStat::SessRxErrors);
                }
                if !s.armed && s.state == SessionState::Open {
                    self.udp_arm_session(slot);
                }
            }
        }
    }

    /// An endpoint's datagram of `len` bytes in buffer `id`: to the session's client, from
    /// the listener's socket.
    fn udp_to_client(&mut self, slot: u32, id: RingBuf, len: u32) {
        let now = self.now_ms;
        let s = &mut self.udp.sessions[slot as usize];
        let listener = self
            .udp
            .sockets
            .get(s.listener_slot as usize)
            .filter(|l| l.open);
        // A plain receive reports no MSG_TRUNC: a datagram that filled its buffer may have
        // been cut (never, as a buffer holds the largest one), and is dropped, not forwarded.
        let fits = len < DATAGRAM_BUFFER_BYTES && s.max_rx_datagram_bytes.is_none_or(|m| len <= m);
        let (Some(listener), Some(source), SessionState::Open, true) =
            (listener, s.source, s.state, fits)
        else {
            if let Some(c) = &s.cluster_stats {
                c.udp.inc(self.id, ClusterUdpStat::SessRxDatagramsDropped);
            }
            self.ring.recycle(id);
            return;
        };
        if let Some(c) = &s.cluster_stats {
            c.udp.inc(self.id, ClusterUdpStat::SessRxDatagrams);
            c.stats
                .add(self.id, ClusterStat::UpstreamCxRxBytesTotal, u64::from(len));
        }
        s.last_activity_ms = now;
        s.sends += 1;
        let fd = listener.fd;
        self.ring.send_to(
            fd,
            id,
            0,
            len,
            source,
            ud::encode(Kind::UdpSendDown, slot, u32::from(id.raw())),
        );
    }

    /// A datagram's send completed: its buffer goes back to the kernel.
    pub(super) fn on_udp_sent(&mut self, kind: Kind, slot: u32, buffer: u32, c: Completion) {
        // The nonce carries the buffer's id: the ring gives it back only if it is in a send.
        let Some(id) = self.ring.buffer_in_send(buffer as u16) else {
            debug_assert!(
                false,
                "UDP send completion for buffer {buffer} not in a send"
            );
            return;
        };
        self.ring.send_done(id);
        self.ring.recycle(id);
        let worker = self.id;
        let Some(s) = self.udp.sessions.get_mut(slot as usize) else {
            return;
        };
        s.sends = s.sends.saturating_sub(1);
        let sent_bytes = c.result.max(0) as u64;
        match (kind, c.result >= 0) {
            (Kind::UdpSendUp, true) => {
                if let Some(c) = &s.cluster_stats {
                    c.udp.inc(worker, ClusterUdpStat::SessTxDatagrams);
                    c.stats
                        .add(worker, ClusterStat::UpstreamCxTxBytesTotal, sent_bytes);
                }
            }
            (Kind::UdpSendUp, false) => {
                if let Some(c) = &s.cluster_stats {
                    c.udp.inc(worker, ClusterUdpStat::SessTxErrors);
                }
            }
            (_, true) => {
                if let Some(p) = &s.proxy_stats {
                    p.inc(worker, UdpStat::DownstreamSessTxDatagrams);
                    p.add(worker, UdpStat::DownstreamSessTxBytes, sent_bytes);
                }
            }
            (_, false) => {
                if let Some(p) = &s.proxy_stats {
                    p.inc(worker, UdpStat::DownstreamSessTxErrors);
                }
            }
        }
        self.udp_free_if_done(slot);
    }

    /// Receives that stopped for lack of buffers start again once buffers are back.
    pub(super) fn udp_feed_starved(&mut self) {
        if self.ring.buffers_in_kernel(BufClass::Datagram) == 0 {
            return;
        }
        for i in 0..self.udp.sockets.len() {
            let s = &self.udp.sockets[i];
            if s.starved && s.open && !s.armed && self.accepting() {
                self.udp_arm_receive(i);
            }
        }
        while let Some(slot) = self.udp.starved_sessions.pop() {
            let s = &self.udp.sessions[slot as usize];
            if s.starved && s.state == SessionState::Open {
                self.udp_arm_session(slot);
            }
        }
    }

    /// True when some receive waits for buffers.
    pub(super) fn udp_starved(&self) -> bool {
        !self.udp.starved_sessions.is_empty() || self.udp.sockets.iter().any(|s| s.starved)
    }

    /// Idle sessions close; receives that failed re-arm.
    pub(super) fn udp_on_tick(&mut self) {
        for i in 0..self.udp.sockets.len() {
            let s = &mut self.udp.sockets[i];
            if std::mem::take(&mut s.rearm_on_tick) && s.open && self.phase == Phase::Running {
                self.udp_arm_receive(i);
            }
        }
        let now = self.now_ms;
        self.close_udp_sessions_where(
            |s| {
                s.idle_timeout_ms
                    .is_some_and(|t| now.saturating_sub(s.last_activity_ms) >= t)
            },
            Some(UdpStat::IdleTimeout),
        );
    }

    /// Closes a session: out of the source map, its receive cancelled and its socket closed
    /// through the ring; the slot is freed once nothing of it is in flight.
    fn close_udp_session(&mut self, slot: u32) {
        let s = &mut self.udp.sessions[slot as usize];
        if s.state != SessionState::Open {
            return;
        }
        s.state = SessionState::Closing;
        if let Some(source) = s.source {
            self.udp.by_source.remove(&(s.listener_slot, source));
        }
        if let Some(p) = &s.proxy_stats {
            p.dec(self.id, UdpStat::DownstreamSessActive);
        }
        if let Some(c) = &s.cluster_stats {
            c.resources.release(Resource::Connections);
        }
        let (fd, armed, target) = (s.fd, s.armed, ud::encode(Kind::UdpUpRecv, slot, s.nonce));
        if armed {
            self.ring.cancel(target, ud::encode(Kind::UdpAux, 0, 0));
        }
        self.ring.close(fd, ud::encode(Kind::UdpAux, 0, 0));
        self.udp_free_if_done(slot);
    }

    fn udp_free_if_done(&mut self, slot: u32) {
        let s = &mut self.udp.sessions[slot as usize];
        if s.state != SessionState::Closing || s.armed || s.sends > 0 {
            return;
        }
        s.state = SessionState::Free;
        s.source = None;
        s.proxy_stats = None;
        s.cluster_stats = None;
        s.host = None;
        let at = s.occupied_at as usize;
        self.udp.occupied.swap_remove(at);
        if let Some(&moved) = self.udp.occupied.get(at) {
            self.udp.sessions[moved as usize].occupied_at = at as u32;
        }
        self.udp.free.push(slot);
    }
}
