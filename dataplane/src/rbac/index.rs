//! The RBAC policies' index: which policies can match a connection at all, found by hash
//! lookups whose number does not grow with the number of policies.
//!
//! Each policy is filed under one *key*, a condition every connection it matches must meet,
//! drawn from its structure: the client's address within some CIDRs (`remote_ip`,
//! `direct_remote_ip`), the local address within some CIDRs (`destination_ip`), the local
//! port among a few (`destination_port`, a short `destination_port_range`), or the server
//! name among some exact names (`requested_server_name`). A policy with no such condition
//! (an `any`, a `not_rule`, a suffix match) is filed as *always*: a candidate for every
//! connection.
//!
//! Guarantees:
//! - **Never misses a match.** A key is a necessary condition: a policy that is true, or
//!   not yet decidable, for a connection is among its candidates. While the server name is
//!   not known, every policy filed under a server name is a candidate (it may be
//!   undecidable).
//! - **Bounded lookups.** A decision costs one hash lookup per distinct prefix length
//!   filed (at most 33 for IPv4, 129 for IPv6, per kind of address), one for the port and
//!   one for the name, plus the evaluation of the candidates it finds: with policies keyed
//!   on distinct addresses or names, its cost is the same at 1 policy and at 10,000.
//! - **No allocation** on lookup.

use super::{Permission, Policy, Principal};
use crate::fib::chain_matcher::StringMatchKind;
use crate::fib::prefix_map::PrefixMap;
use crate::fib::CidrRange;
use std::collections::HashMap;
use std::net::IpAddr;

/// Policy indices (positions in name order), ascending.
pub(super) type Ids = Box<[u32]>;

/// The longest `destination_port_range` filed by port (longer ones are *always*).
const MAX_INDEXED_PORT_RANGE: u32 = 64;

/// A condition a policy's every match meets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Remote(Vec<CidrRange>),
    DirectRemote(Vec<CidrRange>),
    Destination(Vec<CidrRange>),
    Ports(Vec<u16>),
    ServerNames(Vec<Box<[u8]>>),
}

impl Key {
    /// How much a key narrows (the better one files the policy): addresses of the client
    /// first, as most policies name who may connect.
    fn rank(&self) -> u8 {
        match self {
            Key::Remote(_) => 5,
            Key::DirectRemote(_) => 4,
            Key::ServerNames(_) => 3,
            Key::Ports(_) => 2,
            Key::Destination(_) => 1,
        }
    }

    /// The union of two keys of one kind (a disjunction keeps only such a key).
    fn union(self, other: Key) -> Option<Key> {
        Some(match (self, other) {
            (Key::Remote(mut a), Key::Remote(b)) => {
                a.extend(b);
                Key::Remote(a)
            }
            (Key::DirectRemote(mut a), Key::DirectRemote(b)) => {
                a.extend(b);
                Key::DirectRemote(a)
            }
            (Key::Destination(mut a), Key::Destination(b)) => {
                a.extend(b);
                Key::Destination(a)
            }
            (Key::Ports(mut a), Key::Ports(b)) => {
                a.extend(b);
                Key::Ports(a)
            }
            (Key::ServerNames(mut a), Key::ServerNames(b)) => {
                a.extend(b);
                Key::ServerNames(a)
            }
            _ => return None,
        })
    }
}

/// A conjunction's key: its best conjunct's.
fn best_of(keys: impl Iterator<Item = Option<Key>>) -> Option<Key> {
    keys.flatten().max_by_key(Key::rank)
}

/// A disjunction's key: the union of its members' keys, when all have one of one kind.
fn union_of(mut keys: impl Iterator<Item = Option<Key>>) -> Option<Key> {
    let mut out = keys.next()??;
    for key in keys {
        out = out.union(key?)?;
    }
    Some(out)
}

fn permission_key(p: &Permission) -> Option<Key> {
    match p {
        Permission::And(all) => best_of(all.iter().map(permission_key)),
        Permission::Or(any) => union_of(any.iter().map(permission_key)),
        Permission::DestinationIp(range) => Some(Key::Destination(vec![*range])),
        Permission::DestinationPort(port) => Some(Key::Ports(vec![*port])),
        Permission::DestinationPortRange { start, end } => {
            // An empty range matches nothing: filed under no port at all.
            let end = (*end).min(65536);
            (end.saturating_sub(*start) <= MAX_INDEXED_PORT_RANGE)
                .then(|| Key::Ports((*start..end).map(|p| p as u16).collect()))
        }
        Permission::RequestedServerName(m) => (m.kind == StringMatchKind::Exact && !m.ignore_case)
            .then(|| Key::ServerNames(vec![m.pattern.as_bytes().into()])),
        Permission::Any | Permission::Not(_) => None,
    }
}

fn principal_key(p: &Principal) -> Option<Key> {
    match p {
        Principal::And(all) => best_of(all.iter().map(principal_key)),
        Principal::Or(any) => union_of(any.iter().map(principal_key)),
        Principal::RemoteIp(range) => Some(Key::Remote(vec![*range])),
        Principal::DirectRemoteIp(range) => Some(Key::DirectRemote(vec![*range])),
        Principal::Any | Principal::Not(_) | Principal::Authenticated(_) => None,
    }
}

/// A policy's key: it matches when one of its permissions and one of its principals do.
fn policy_key(p: &Policy) -> Option<Key> {
    let permissions = union_of(p.permissions.iter().map(permission_key));
    let principals = union_of(p.principals.iter().map(principal_key));
    best_of([permissions, principals].into_iter())
}

/// Policies by CIDR: one map per prefix length, of the masked address.
type CidrIndex = PrefixMap<Ids>;

fn cidr_index(entries: Vec<(CidrRange, u32)>) -> CidrIndex {
    PrefixMap::grouped(entries).map_values(ids)
}

fn ids(mut v: Vec<u32>) -> Ids {
    v.sort_unstable();
    v.dedup();
    v.into_boxed_slice()
}

/// Where to look for the policies that may match a connection.
#[derive(Debug, Default)]
pub(super) struct Index {
    always: Ids,
    remote: CidrIndex,
    direct_remote: CidrIndex,
    destination: CidrIndex,
    ports: HashMap<u16, Ids>,
    server_names: HashMap<Box<[u8]>, Ids>,
    /// Every policy filed under a server name: the candidates while it is not known.
    any_server_name: Ids,
}

/// What the index reads of a connection.
pub(super) struct Lookup<'a> {
    pub remote: IpAddr,
    pub direct_remote: IpAddr,
    pub local: IpAddr,
    pub port: u16,
    /// `None`: not known yet.
    pub server_name: Option<&'a [u8]>,
}

impl Index {
    /// The index of `policies` (in name order).
    pub(super) fn build(policies: &[Policy]) -> Index {
        let mut always = Vec::new();
        let (mut remote, mut direct, mut destination) = (Vec::new(), Vec::new(), Vec::new());
        let mut ports: HashMap<u16, Vec<u32>> = HashMap::new();
        let mut names: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut any_name = Vec::new();
        for (i, policy) in policies.iter().enumerate() {
            let id = i as u32;
            match policy_key(policy) {
                None => always.push(id),
                Some(Key::Remote(r)) => remote.extend(r.into_iter().map(|c| (c, id))),
                Some(Key::DirectRemote(r)) => direct.extend(r.into_iter().map(|c| (c, id))),
                Some(Key::Destination(r)) => destination.extend(r.into_iter().map(|c| (c, id))),
                Some(Key::Ports(p)) => p
                    .into_iter()
                    .for_each(|p| ports.entry(p).or_default().push(id)),
                Some(Key::ServerNames(n)) => {
                    any_name.push(id);
                    n.into_iter()
                        .for_each(|n| names.entry(n).or_default().push(id));
                }
            }
        }
        Index {
            always: ids(always),
            remote: cidr_index(remote),
            direct_remote: cidr_index(direct),
            destination: cidr_index(destination),
            ports: ports.into_iter().map(|(k, v)| (k, ids(v))).collect(),
            server_names: names.into_iter().map(|(k, v)| (k, ids(v))).collect(),
            any_server_name: ids(any_name),
        }
    }

    /// Calls `f` with each list of candidates for the connection `c` (a policy may be in
    /// more than one).
    pub(super) fn candidates(&self, c: &Lookup<'_>, mut f: impl FnMut(&[u32])) {
        if !self.always.is_empty() {
            f(&self.always);
        }
        self.remote.each_holding(c.remote, |ids| f(ids));
        self.direct_remote
            .each_holding(c.direct_remote, |ids| f(ids));
        self.destination.each_holding(c.local, |ids| f(ids));
        if let Some(ids) = self.ports.get(&c.port) {
            f(ids);
        }
        match c.server_name {
            None if !self.any_server_name.is_empty() => f(&self.any_server_name),
            None => {}
            Some(name) => {
                if let Some(ids) = self.server_names.get(name) {
                    f(ids);
                }
            }
        }
    }
}
