//! The chains of a listener filed as Envoy's `FilterChainManagerImpl` files them: a tree with
//! one level per criterion (destination port, destination IP, server name, transport
//! protocol, application protocols, direct source IP, source type, source IP, source port),
//! each node holding its specific branches in hash maps (exact ports, names, protocols),
//! per-prefix-length maps (addresses) or an array (source type), and the branch of the
//! chains that leave the criterion empty (the fallback).
//!
//! A lookup walks from the root and at each node takes the most specific branch that
//! matches, else the fallback, else ends with no chain: it never backtracks, as Envoy does
//! not. A level where no chain sets the criterion has no node. Subtrees are shared: the
//! subtree below a level depends only on the chains that reach it, so a chain that lists
//! many names or ranges is filed once below them.
//!
//! Guarantees:
//! - **The narrowing's answer**, chain by chain (the tests compare it with the linear model
//!   on random chains); among chains with the very same criteria the first wins.
//! - **Bounded lookups**: at most one node per criterion, each one hash lookup (one per
//!   dot of the server name for `*.` wildcards, one per offered protocol, one per distinct
//!   prefix length for addresses), whatever the number of chains.
//! - **No allocation** on lookup; building (on the control thread) allocates.

use super::MAX_FILTER_CHAINS;
use super::{is_same_ip_or_loopback, ChainMatch, CidrRange, Detected, SourceType};
use crate::fib::prefix_map::{normalized, PrefixMap};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

/// Position of a node in [`ChainIndex::nodes`].
type NodeId = u32;

/// A listener's `filter_chain_match`es, compiled (see the module documentation).
#[derive(Debug, Default)]
pub struct ChainIndex {
    nodes: Vec<Node>,
    /// `None`: no chains.
    root: Option<NodeId>,
    /// How many chains it was built from.
    chains: usize,
    /// The first chain whose criteria are those of an earlier one (a later index, then the
    /// earlier one), if any.
    duplicate: Option<(usize, usize)>,
}

/// The criteria, in Envoy's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    DestinationPort,
    DestinationIp,
    ServerName,
    TransportProtocol,
    ApplicationProtocols,
    DirectSourceIp,
    SourceType,
    SourceIp,
    SourcePort,
}

const LEVELS: [Level; 9] = [
    Level::DestinationPort,
    Level::DestinationIp,
    Level::ServerName,
    Level::TransportProtocol,
    Level::ApplicationProtocols,
    Level::DirectSourceIp,
    Level::SourceType,
    Level::SourceIp,
    Level::SourcePort,
];

/// Server names: exact ones, and `*.` wildcards by their suffix (`.example.com`).
#[derive(Debug, Default)]
struct Names {
    exact: HashMap<Box<[u8]>, NodeId>,
    suffixes: HashMap<Box<[u8]>, NodeId>,
}

impl Names {
    /// The exact name, else the longest suffix that follows at least one byte of `sni`.
    fn find(&self, sni: &[u8]) -> Option<NodeId> {
        if let Some(id) = self.exact.get(sni) {
            return Some(*id);
        }
        if self.suffixes.is_empty() {
            return None;
        }
        (1..sni.len())
            .filter(|at| sni[*at] == b'.')
            .find_map(|at| self.suffixes.get(&sni[at..]).copied())
    }
}

#[derive(Debug)]
enum Node {
    /// A criterion: the specific branches, else that of the chains that leave it empty.
    Level {
        level: Level,
        specific: Specific,
        fallback: Option<NodeId>,
    },
    /// The chain a walk ends at.
    Chain(u32),
}

/// A level's specific branches, by the kind of value the criterion takes.
#[derive(Debug)]
enum Specific {
    Ports(HashMap<u16, NodeId>),
    Prefixes(PrefixMap<NodeId>),
    Names(Names),
    Texts(HashMap<Box<[u8]>, NodeId>),
    /// Same IP or loopback, external.
    SourceTypes([Option<NodeId>; 2]),
}

/// What a lookup reads of a connection.
struct Conn<'c, 'd> {
    local: SocketAddr,
    remote: SocketAddr,
    detected: &'c Detected<'d>,
}

impl Conn<'_, '_> {
    /// The port `level` reads (destination or source).
    fn port(&self, level: Level) -> u16 {
        match level {
            Level::DestinationPort => self.local.port(),
            _ => self.remote.port(),
        }
    }

    /// The address `level` reads (destination, direct source or source).
    fn ip(&self, level: Level) -> IpAddr {
        match level {
            Level::DestinationIp => self.local.ip(),
            Level::DirectSourceIp => self.detected.direct_remote.unwrap_or(self.remote).ip(),
            _ => self.remote.ip(),
        }
    }
}

impl Specific {
    /// The branches of `level` filed under `keys`.
    fn new(level: Level, keys: &[(Key, NodeId)]) -> Specific {
        match level {
            Level::DestinationPort | Level::SourcePort => Specific::Ports(ports(keys)),
            Level::DestinationIp | Level::DirectSourceIp | Level::SourceIp => {
                Specific::Prefixes(prefixes(keys))
            }
            Level::ServerName => Specific::Names(names(keys)),
            Level::TransportProtocol | Level::ApplicationProtocols => Specific::Texts(texts(keys)),
            Level::SourceType => Specific::SourceTypes(source_types(keys)),
        }
    }

    /// The specific branch `c` takes at `level`, if any.
    fn find(&self, level: Level, c: &Conn) -> Option<NodeId> {
        let d = c.detected;
        match self {
            Specific::Ports(m) => m.get(&c.port(level)).copied(),
            Specific::Prefixes(m) => m.longest(c.ip(level)).copied(),
            Specific::Names(names) => names.find(d.server_name),
            Specific::Texts(m) if level == Level::ApplicationProtocols => {
                d.application_protocols().find_map(|p| m.get(p)).copied()
            }
            Specific::Texts(m) => m.get(d.transport_protocol.as_bytes()).copied(),
            Specific::SourceTypes(branches) => {
                let local = is_same_ip_or_loopback(c.local.ip(), c.remote.ip());
                branches[usize::from(!local)]
            }
        }
    }
}

impl ChainIndex {
    /// The index of `chains` (in config order; past [`MAX_FILTER_CHAINS`] ignored).
    pub fn build<'a>(chains: impl IntoIterator<Item = &'a ChainMatch>) -> ChainIndex {
        let chains: Vec<&ChainMatch> = chains.into_iter().take(MAX_FILTER_CHAINS).collect();
        if chains.is_empty() {
            return ChainIndex::default();
        }
        let mut b = Builder {
            chains: &chains,
            nodes: Vec::new(),
            memo: Default::default(),
            duplicate: None,
        };
        let all = (0..chains.len() as u32).collect();
        let root = b.build(0, all);
        ChainIndex {
            nodes: b.nodes,
            root: Some(root),
            chains: chains.len(),
            duplicate: b.duplicate,
        }
    }

    /// Index of the chain that matches a connection from `remote` to `local` with what
    /// listener filters `detected` (behind a PROXY header `remote` is the declared source
    /// and `detected.direct_remote` the peer). Allocation-free.
    pub fn select(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        detected: &Detected,
    ) -> Option<usize> {
        let conn = Conn {
            local,
            remote,
            detected,
        };
        let mut at = self.root?;
        loop {
            match &self.nodes[at as usize] {
                Node::Chain(i) => return Some(*i as usize),
                // The specific branch, else the fallback: never back to it once one is found.
                Node::Level {
                    level,
                    specific,
                    fallback,
                } => at = specific.find(*level, &conn).or(*fallback)?,
            }
        }
    }

    /// How many chains it was built from.
    pub fn chains(&self) -> usize {
        self.chains
    }

    /// How many nodes it holds (its size).
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The first chain (by index) with the same criteria as an earlier one, and the first
    /// such earlier one: Envoy refuses such chains ("multiple filter chains with the same
    /// matching rules"); the index picks the earlier.
    pub fn first_duplicate(&self) -> Option<(usize, usize)> {
        self.duplicate
    }
}

/// A branch of a level: a value the criterion takes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Port(u16),
    Range(CidrRange),
    Name(Box<[u8]>),
    Suffix(Box<[u8]>),
    Text(Box<[u8]>),
    Source(SourceType),
}

/// The branches `c` is filed under at `level`, sorted, each once; none: the fallback.
fn keys(level: Level, c: &ChainMatch) -> Vec<Key> {
    let ranges = |r: &[CidrRange]| r.iter().map(|r| Key::Range(normalized(*r))).collect();
    let text = |t: &str| Key::Text(t.as_bytes().into());
    let mut keys: Vec<Key> = match level {
        Level::DestinationPort => c.destination_port.map(Key::Port).into_iter().collect(),
        Level::DestinationIp => ranges(&c.prefix_ranges),
        Level::ServerName => c.server_names.iter().flat_map(|n| name_keys(n)).collect(),
        Level::TransportProtocol => c
            .transport_protocol
            .as_deref()
            .map(text)
            .into_iter()
            .collect(),
        Level::ApplicationProtocols => c.application_protocols.iter().map(|p| text(p)).collect(),
        Level::DirectSourceIp => ranges(&c.direct_source_prefix_ranges),
        Level::SourceType => match c.source_type {
            SourceType::Any => Vec::new(),
            t => vec![Key::Source(t)],
        },
        Level::SourceIp => ranges(&c.source_prefix_ranges),
        Level::SourcePort => c.source_ports.iter().map(|p| Key::Port(*p)).collect(),
    };
    keys.sort();
    keys.dedup();
    keys
}

/// A server name matches itself exactly, and a `*.suffix` any name ending in `.suffix`.
fn name_keys(name: &str) -> impl Iterator<Item = Key> {
    let suffix = name.strip_prefix('*').filter(|s| s.starts_with('.'));
    std::iter::once(Key::Name(name.as_bytes().into()))
        .chain(suffix.map(|s| Key::Suffix(s.as_bytes().into())))
}

/// The specific branches whose key `f` takes.
fn branches<K, M: FromIterator<(K, NodeId)>>(
    specific: &[(Key, NodeId)],
    f: impl Fn(&Key) -> Option<K>,
) -> M {
    specific
        .iter()
        .filter_map(|(k, id)| f(k).map(|k| (k, *id)))
        .collect()
}

fn ports(specific: &[(Key, NodeId)]) -> HashMap<u16, NodeId> {
    branches(specific, |k| match k {
        Key::Port(p) => Some(*p),
        _ => None,
    })
}

fn texts(specific: &[(Key, NodeId)]) -> HashMap<Box<[u8]>, NodeId> {
    branches(specific, |k| match k {
        Key::Text(t) => Some(t.clone()),
        _ => None,
    })
}

fn prefixes(specific: &[(Key, NodeId)]) -> PrefixMap<NodeId> {
    let ranges: Vec<(CidrRange, NodeId)> = branches(specific, |k| match k {
        Key::Range(r) => Some(*r),
        _ => None,
    });
    // Normalized ranges are distinct keys: one node each.
    PrefixMap::grouped(ranges).map_values(|ids| ids[0])
}

fn names(specific: &[(Key, NodeId)]) -> Names {
    Names {
        exact: branches(specific, |k| match k {
            Key::Name(n) => Some(n.clone()),
            _ => None,
        }),
        suffixes: branches(specific, |k| match k {
            Key::Suffix(s) => Some(s.clone()),
            _ => None,
        }),
    }
}

fn source_types(specific: &[(Key, NodeId)]) -> [Option<NodeId>; 2] {
    let of = |t: SourceType| {
        specific
            .iter()
            .find(|(k, _)| *k == Key::Source(t))
            .map(|(_, id)| *id)
    };
    [of(SourceType::SameIpOrLoopback), of(SourceType::External)]
}

/// Builds the tree depth first, each (depth, chains) subtree once.
struct Builder<'a> {
    chains: &'a [&'a ChainMatch],
    nodes: Vec<Node>,
    /// The subtree built for a set of chains (ascending indices), per depth.
    memo: [HashMap<Vec<u32>, NodeId>; LEVELS.len() + 1],
    duplicate: Option<(usize, usize)>,
}

impl Builder<'_> {
    /// The subtree of the chains `set` (ascending, not empty) from level `depth` down.
    fn build(&mut self, depth: usize, set: Vec<u32>) -> NodeId {
        if let Some(id) = self.memo[depth].get(&set) {
            return *id;
        }
        let id = match LEVELS.get(depth) {
            Some(level) => self.level(depth, *level, &set),
            None => self.leaf(&set),
        };
        self.memo[depth].insert(set, id);
        id
    }

    /// The node of `level` for `set`, or the next level's when no chain sets the criterion.
    fn level(&mut self, depth: usize, level: Level, set: &[u32]) -> NodeId {
        let mut groups: BTreeMap<Key, Vec<u32>> = BTreeMap::new();
        let mut rest = Vec::new();
        for &i in set {
            let keys = keys(level, self.chains[i as usize]);
            if keys.is_empty() {
                rest.push(i);
            }
            for k in keys {
                groups.entry(k).or_default().push(i);
            }
        }
        if groups.is_empty() {
            return self.build(depth + 1, rest);
        }
        let mut specific = Vec::with_capacity(groups.len());
        for (key, chains) in groups {
            specific.push((key, self.build(depth + 1, chains)));
        }
        let fallback = (!rest.is_empty()).then(|| self.build(depth + 1, rest));
        self.push(Node::Level {
            level,
            specific: Specific::new(level, &specific),
            fallback,
        })
    }

    /// The first chain of `set`, which all meet the same criteria.
    fn leaf(&mut self, set: &[u32]) -> NodeId {
        if let [earlier, later, ..] = *set {
            let found = (later as usize, earlier as usize);
            self.duplicate = Some(self.duplicate.map_or(found, |d| d.min(found)));
        }
        self.push(Node::Chain(set[0]))
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        (self.nodes.len() - 1) as NodeId
    }
}
