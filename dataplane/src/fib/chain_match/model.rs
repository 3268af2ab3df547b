//! The filter-chain match as Envoy's documentation states it, criterion by criterion over
//! every chain: slow (every chain at every step) and obviously right, the model the index is
//! tested against.

use super::{is_same_ip_or_loopback, ChainMatch, CidrRange, Detected, SourceType};
use std::net::{IpAddr, SocketAddr};

/// Most chains the model takes (its candidate sets are fixed-size bitsets).
pub(super) const MODEL_MAX_CHAINS: usize = 256;

const WORDS: usize = MODEL_MAX_CHAINS / 64;

/// Specificity of an exact server name (above any suffix's length).
const EXACT_NAME: u32 = 1 << 16;

/// How well `name` (a chain's `server_names` entry) matches `sni`: an exact match beats
/// every wildcard, a longer `*.` suffix beats a shorter one. Envoy's rule: `*.example.com`
/// matches any name ending in `.example.com` with at least one byte before it.
fn server_name_score(name: &str, sni: &[u8]) -> Option<u32> {
    if name.as_bytes() == sni {
        return Some(EXACT_NAME);
    }
    let suffix = name.strip_prefix('*')?.as_bytes();
    let matches =
        suffix.first() == Some(&b'.') && sni.len() > suffix.len() && sni.ends_with(suffix);
    matches.then_some(suffix.len() as u32)
}

/// Specificity of a chain's `application_protocols` for the client's offer: the earlier
/// the first protocol of the offer the chain lists, the better.
fn protocols_score(chain: &[Box<str>], detected: &Detected) -> Option<u32> {
    let first = detected
        .application_protocols()
        .position(|p| chain.iter().any(|c| c.as_bytes() == p))?;
    Some(u32::MAX - first as u32)
}

#[derive(Clone, Copy)]
struct Set([u64; WORDS]);

impl Set {
    fn empty() -> Self {
        Set([0; WORDS])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    fn first(&self) -> Option<usize> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }
}

/// Longest prefix in `ranges` that contains `ip`, if any.
fn best_prefix(ranges: &[CidrRange], ip: IpAddr) -> Option<u8> {
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| r.prefix_len)
        .max()
}

/// Narrows `cands` by one criterion: `score(chain)` is `None` when the chain leaves the
/// criterion empty, `Some(None)` when it sets it and does not match, `Some(Some(s))` when it
/// matches with specificity `s` (higher wins).
fn narrow<'a, G, F>(n: usize, get: &G, cands: Set, score: F) -> Set
where
    G: Fn(usize) -> &'a ChainMatch,
    F: Fn(&'a ChainMatch) -> Option<Option<u32>>,
{
    let mut best: Option<u32> = None;
    for i in (0..n).filter(|i| cands.contains(*i)) {
        if let Some(Some(s)) = score(get(i)) {
            best = Some(best.map_or(s, |b| b.max(s)));
        }
    }
    let mut out = Set::empty();
    for i in (0..n).filter(|i| cands.contains(*i)) {
        let keep = match (best, score(get(i))) {
            (Some(b), Some(Some(s))) => s == b,
            (None, None) => true,
            _ => false,
        };
        if keep {
            out.insert(i);
        }
    }
    out
}

/// Index of the chain among `n` chains (`get(i)` is chain i) that matches a connection from
/// `remote` to `local` with what listener filters `detected`, in Envoy's order. Chains past
/// [`MODEL_MAX_CHAINS`] are not considered.
pub(super) fn select<'a, G>(
    n: usize,
    get: G,
    local: SocketAddr,
    remote: SocketAddr,
    detected: &Detected,
) -> Option<usize>
where
    G: Fn(usize) -> &'a ChainMatch,
{
    let n = n.min(MODEL_MAX_CHAINS);
    let mut cands = Set::empty();
    (0..n).for_each(|i| cands.insert(i));
    cands = narrow(n, &get, cands, |c| {
        c.destination_port.map(|p| (p == local.port()).then_some(1))
    });
    cands = narrow(n, &get, cands, |c| {
        (!c.prefix_ranges.is_empty())
            .then(|| best_prefix(&c.prefix_ranges, local.ip()).map(u32::from))
    });
    cands = narrow(n, &get, cands, |c| {
        (!c.server_names.is_empty()).then(|| {
            c.server_names
                .iter()
                .filter_map(|name| server_name_score(name, detected.server_name))
                .max()
        })
    });
    cands = narrow(n, &get, cands, |c| {
        c.transport_protocol
            .as_deref()
            .map(|t| (t == detected.transport_protocol).then_some(1))
    });
    cands = narrow(n, &get, cands, |c| {
        (!c.application_protocols.is_empty())
            .then(|| protocols_score(&c.application_protocols, detected))
    });
    let direct = detected.direct_remote.unwrap_or(remote).ip();
    cands = narrow(n, &get, cands, |c| {
        (!c.direct_source_prefix_ranges.is_empty())
            .then(|| best_prefix(&c.direct_source_prefix_ranges, direct).map(u32::from))
    });
    let local_source = is_same_ip_or_loopback(local.ip(), remote.ip());
    cands = narrow(n, &get, cands, |c| match c.source_type {
        SourceType::Any => None,
        SourceType::SameIpOrLoopback => Some(local_source.then_some(1)),
        SourceType::External => Some((!local_source).then_some(1)),
    });
    cands = narrow(n, &get, cands, |c| {
        (!c.source_prefix_ranges.is_empty())
            .then(|| best_prefix(&c.source_prefix_ranges, remote.ip()).map(u32::from))
    });
    cands = narrow(n, &get, cands, |c| {
        (!c.source_ports.is_empty()).then(|| c.source_ports.contains(&remote.port()).then_some(1))
    });
    if cands.is_empty() {
        None
    } else {
        cands.first()
    }
}
