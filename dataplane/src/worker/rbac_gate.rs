//! The filter chain's RBAC (`envoy.filters.network.rbac`) on the worker.
//!
//! Guarantees:
//! - **Decided before anything upstream.** A connection is decided at accept with what is
//!   known then: its addresses (as a PROXY header declared them), its port and the server
//!   name its TLS inspector read (empty without one, as Envoy's `requested_server_name`
//!   reads it). Only where a policy reads the client's certificate, on a chain that
//!   terminates TLS, does the decision wait, for the end of the client's handshake, which
//!   comes before any upstream is picked. It never waits for a client byte, so
//!   server-first protocols pass. A denied connection never opens an upstream connection
//!   (Envoy opens one first: envoy#9023).
//! - **Envoy's accounting.** `<stat_prefix>.rbac.allowed|denied` count the enforced rules'
//!   decisions and `shadow_allowed|shadow_denied` the shadow rules' (a filter without
//!   `rules` allows and counts nothing); a denied connection is closed cleanly, counted by
//!   its tcp_proxy and logged with no flag and the details
//!   `rbac_access_denied_matched_policy[NAME]` (`[none]` when no policy matched).
//! - **Deny under churn.** Every connection accepted after a publication is decided by the
//!   published FIB (the worker adopts it before [`crate::plane::Plane::publish`] returns);
//!   with `enforcement_type: CONTINUOUS` an open connection is decided again by its chain's
//!   RBAC in each newly adopted FIB and closed if it denies (see
//!   [`Worker::enforce_continuous_rbac`]).
//!
//! Cost on a worker: at accept, the policies' index lookups and the candidates it finds; for
//! a decision after the handshake, the client certificate's parse (its SANs and subject, a
//! few allocations bounded by the certificate) on chains whose policies read it, once per
//! connection; at a publication, one decision per open connection under CONTINUOUS
//! enforcement.

use super::{slot, Decision, Worker};
use crate::fib::{Detected, FilterChain, NetworkRbac};
use crate::rbac::{self, Inputs, Known, PeerIdentity};
use crate::relay::Side;
use crate::stats::RbacStat;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the filter makes of a connection.
enum Judged {
    Allowed,
    /// Denied by the policy with this log name.
    Denied(Arc<str>),
    /// Undecided until the client's certificate is known.
    Late,
}

/// Both sets of rules on `c`, each counted once decided (nothing is counted while either
/// waits, unless the enforced rules deny already).
fn judge(rbac: &NetworkRbac, c: &Inputs<'_>) -> Judged {
    let rules = rbac.rules.as_ref().map(|r| (r, r.decide(c)));
    let shadow = rbac.shadow_rules.as_ref().map(|r| r.decide(c));
    let count_shadow = |d: Option<rbac::Decision<'_>>| match d {
        Some(rbac::Decision::Allowed { .. }) => rbac.stats.inc(RbacStat::ShadowAllowed),
        Some(rbac::Decision::Denied { .. }) => rbac.stats.inc(RbacStat::ShadowDenied),
        _ => {}
    };
    if let Some((r, rbac::Decision::Denied { matched })) = rules {
        count_shadow(shadow);
        rbac.stats.inc(RbacStat::Denied);
        return Judged::Denied(r.log_name(matched));
    }
    let pending = |d: Option<rbac::Decision<'_>>| d == Some(rbac::Decision::Pending);
    if pending(rules.map(|(_, d)| d)) || pending(shadow) {
        return Judged::Late;
    }
    count_shadow(shadow);
    if rules.is_some() {
        rbac.stats.inc(RbacStat::Allowed);
    }
    Judged::Allowed
}

/// The chain's RBAC at accept (after its listener filters): true when the connection
/// passes, now or pending its handshake (`decision.rbac_late`); otherwise `decision` is
/// the refusal.
pub(super) fn at_accept(
    worker: usize,
    chain: &FilterChain,
    decision: &mut Decision,
    detected: &Detected,
) -> bool {
    let Some(rbac) = &chain.rbac else {
        return true;
    };
    let remote = decision.remote.unwrap_or(UNKNOWN_PEER);
    let inputs = Inputs {
        local: decision.local,
        remote,
        direct_remote: detected.direct_remote.unwrap_or(remote),
        server_name: Known::Now(Some(detected.server_name)),
        peer: if chain.tls.is_some() {
            Known::Later
        } else {
            Known::Now(None)
        },
    };
    match judge(rbac, &inputs) {
        Judged::Allowed => true,
        Judged::Late => {
            decision.rbac_late = true;
            true
        }
        Judged::Denied(name) => {
            decision.denied_by = Some(name);
            super::refuse_at_gate(
                worker,
                chain,
                decision,
                super::refused_with(rbac::DENIED_DETAILS),
            )
        }
    }
}

/// The peer address when the socket's could not be read (it has gone): matches no range.
const UNKNOWN_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0);

/// What a decision reads of an open connection, but its certificate.
fn slot_inputs(conn: &slot::Conn) -> Inputs<'_> {
    let remote = conn.remote.unwrap_or(UNKNOWN_PEER);
    Inputs {
        local: conn.local.unwrap_or(UNKNOWN_PEER),
        remote,
        direct_remote: conn.direct_remote.unwrap_or(remote),
        server_name: Known::Now(Some(
            conn.server_name.as_deref().unwrap_or_default().as_bytes(),
        )),
        peer: Known::Now(None),
    }
}

/// `rbac` on the open connection `conn`, with its client's certificate if it has one.
fn judge_open(rbac: &NetworkRbac, conn: &slot::Conn) -> Judged {
    let mut inputs = slot_inputs(conn);
    let leaf = conn.tls[Side::Client as usize]
        .as_deref()
        .and_then(|t| t.session.peer_certificates())
        .and_then(|certs| certs.first());
    let Some(leaf) = leaf.filter(|_| rbac.reads().peer) else {
        return judge(rbac, &inputs);
    };
    let sans = crate::tls::verify::PeerSans::of(leaf.as_ref());
    let subject = crate::accesslog::tls::peer_subject(leaf.as_ref()).unwrap_or_default();
    inputs.peer = Known::Now(Some(PeerIdentity {
        uri_sans: &sans.uri,
        dns_sans: &sans.dns,
        subject: &subject,
    }));
    judge(rbac, &inputs)
}

impl Worker {
    /// The decision that waited for the client's certificate, now that its handshake is
    /// done: false when the chain's RBAC denies the connection (whose policy `slot` then
    /// keeps).
    pub(super) fn authorize_after_handshake(&mut self, slot: u32) -> bool {
        let Some(rbac) = self.chain_of(slot).and_then(|c| c.rbac.as_ref()) else {
            return true;
        };
        let judged = judge_open(rbac, &self.conns[slot as usize]);
        match judged {
            Judged::Denied(name) => {
                self.conns[slot as usize].denied_by = Some(name);
                false
            }
            Judged::Allowed => true,
            Judged::Late => {
                debug_assert!(false, "every input is known after the handshake");
                true
            }
        }
    }

    /// A new FIB was adopted: each open connection whose chain enforces its RBAC
    /// CONTINUOUSly is decided again by the RBAC of the chain it matches in the new FIB
    /// (the listener of the same name; its addresses, server name and transport as at
    /// accept) and closed if denied. A connection still waiting for its decision, or whose
    /// listener or chain is gone (it drains as before), is left as it is.
    pub(super) fn enforce_continuous_rbac(&mut self) {
        let Some(current) = self.generations[self.current_gen].as_ref() else {
            return;
        };
        let fib = current.fib.clone();
        let mut denied = Vec::new();
        for &slot in &self.occupied {
            let conn = &self.conns[slot as usize];
            let continuous = self
                .chain_of(slot)
                .and_then(|c| c.rbac.as_ref())
                .is_some_and(|r| r.continuous);
            // Decided already (not waiting for its handshake or listener filters).
            let decided = match conn.machine.stage() {
                crate::conn::Stage::Handshaking { side: Side::Client } => !conn.rbac_late,
                stage => stage.is_live() && stage != crate::conn::Stage::Inspecting,
            };
            if !continuous || !decided || conn.generation as usize == self.current_gen {
                continue;
            }
            let Some(rbac) = self.rematch(&fib, slot).and_then(|c| c.rbac.as_ref()) else {
                continue;
            };
            if let Judged::Denied(name) = judge_open(rbac, conn) {
                denied.push((slot, name));
            }
        }
        for (slot, name) in denied {
            self.conns[slot as usize].denied_by = Some(name);
            self.drive(slot, crate::conn::Event::Abort(crate::conn::Abort::Denied));
        }
    }

    /// The chain `slot`'s connection matches in `fib`: on the listener of its own
    /// listener's name and address.
    fn rematch<'f>(&self, fib: &'f crate::fib::Fib, slot: u32) -> Option<&'f FilterChain> {
        let conn = &self.conns[slot as usize];
        let own = self.generations[conn.generation as usize].as_ref()?;
        let was = own.fib.listeners.get(conn.fib_listener as usize)?;
        let listener = fib
            .listeners
            .iter()
            .find(|l| l.name == was.name && l.address == was.address)?;
        let detected = Detected {
            server_name: conn.server_name.as_deref().unwrap_or_default().as_bytes(),
            transport_protocol: if conn.tls_detected {
                crate::fib::TRANSPORT_TLS
            } else {
                crate::fib::TRANSPORT_RAW_BUFFER
            },
            alpn_list: b"",
            direct_remote: conn.direct_remote,
        };
        let local = conn.local?;
        let remote = conn.remote.unwrap_or(UNKNOWN_PEER);
        let index = listener.match_chain_index(local, remote, &detected)?;
        Some(listener.chain(index))
    }
}
