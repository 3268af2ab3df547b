//! Envoy's filter-chain match, allocation-free.
//!
//! Envoy narrows the candidate chains criterion by criterion, in a fixed order: destination
//! port, destination IP, (server name, transport and application protocols: not supported
//! here, rejected by config), source IP, source port. At each step the most specific
//! candidates that match win (an exact port over "any port", the longest matching prefix over
//! shorter ones); chains that leave the criterion empty are the fallback; when neither exists
//! the connection matches no chain. Candidates are a fixed-size bitset, so a listener holds
//! at most [`MAX_FILTER_CHAINS`] chains (the config layer rejects more).

use std::net::{IpAddr, SocketAddr};

/// Most filter chains one listener may have.
pub const MAX_FILTER_CHAINS: usize = 256;

const WORDS: usize = MAX_FILTER_CHAINS / 64;

/// An address prefix (`address_prefix` / `prefix_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRange {
    /// Network address.
    pub address: IpAddr,
    /// Prefix length in bits (<= 32 for IPv4, <= 128 for IPv6).
    pub prefix_len: u8,
}

impl CidrRange {
    /// True when `ip` is inside the range. IPv4-mapped IPv6 addresses match IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(net: u128, ip: u128, bits: u32, prefix_len: u8) -> bool {
    let len = u32::from(prefix_len).min(bits);
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (net >> shift) == (ip >> shift)
}

/// What one filter chain matches. Empty criteria match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` (destination IP).
    pub prefix_ranges: Vec<CidrRange>,
    /// `source_prefix_ranges`.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
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
/// `remote` to `local`, in Envoy's order. Chains past [`MAX_FILTER_CHAINS`] are not considered.
pub fn select<'a, G>(n: usize, get: G, local: SocketAddr, remote: SocketAddr) -> Option<usize>
where
    G: Fn(usize) -> &'a ChainMatch,
{
    let n = n.min(MAX_FILTER_CHAINS);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> CidrRange {
        let (a, l) = s.split_once('/').unwrap();
        CidrRange {
            address: a.parse().unwrap(),
            prefix_len: l.parse().unwrap(),
        }
    }

    fn sel(chains: &[ChainMatch], local: &str, remote: &str) -> Option<usize> {
        select(
            chains.len(),
            |i| &chains[i],
            local.parse().unwrap(),
            remote.parse().unwrap(),
        )
    }

    #[test]
    fn cidr_contains() {
        assert!(cidr("10.0.0.0/8").contains("10.1.2.3".parse().unwrap()));
        assert!(!cidr("10.0.0.0/8").contains("11.1.2.3".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
        assert!(cidr("10.0.0.0/8").contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(cidr("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!cidr("fd00::/8").contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn exact_port_beats_any_port() {
        let chains = vec![
            ChainMatch::default(),
            ChainMatch {
                destination_port: Some(80),
                ..Default::default()
            },
        ];
        assert_eq!(sel(&chains, "1.1.1.1:80", "2.2.2.2:5"), Some(1));
        assert_eq!(sel(&chains, "1.1.1.1:81", "2.2.2.2:5"), Some(0));
    }

    #[test]
    fn longest_prefix_wins_and_empty_is_fallback() {
        let chains = vec![
            ChainMatch {
                prefix_ranges: vec![cidr("10.0.0.0/8")],
                ..Default::default()
            },
            ChainMatch {
                prefix_ranges: vec![cidr("10.1.0.0/16")],
                ..Default::default()
            },
            ChainMatch::default(),
        ];
        assert_eq!(sel(&chains, "10.1.2.3:1", "9.9.9.9:1"), Some(1));
        assert_eq!(sel(&chains, "10.2.2.3:1", "9.9.9.9:1"), Some(0));
        assert_eq!(sel(&chains, "11.2.2.3:1", "9.9.9.9:1"), Some(2));
    }

    #[test]
    fn no_fallback_means_no_match() {
        let chains = vec![ChainMatch {
            source_prefix_ranges: vec![cidr("127.0.0.2/32")],
            ..Default::default()
        }];
        assert_eq!(sel(&chains, "127.0.0.1:1", "127.0.0.2:9"), Some(0));
        assert_eq!(sel(&chains, "127.0.0.1:1", "127.0.0.3:9"), None);
    }

    #[test]
    fn destination_is_decided_before_source() {
        // Envoy: a chain that matches the destination port wins even if a chain without a
        // port matches the source more specifically.
        let chains = vec![
            ChainMatch {
                destination_port: Some(80),
                ..Default::default()
            },
            ChainMatch {
                source_prefix_ranges: vec![cidr("127.0.0.0/8")],
                ..Default::default()
            },
        ];
        assert_eq!(sel(&chains, "127.0.0.1:80", "127.0.0.9:1"), Some(0));
        assert_eq!(sel(&chains, "127.0.0.1:81", "127.0.0.9:1"), Some(1));
    }

    #[test]
    fn source_ports() {
        let chains = vec![
            ChainMatch {
                source_ports: vec![1000],
                ..Default::default()
            },
            ChainMatch::default(),
        ];
        assert_eq!(sel(&chains, "127.0.0.1:80", "127.0.0.9:1000"), Some(0));
        assert_eq!(sel(&chains, "127.0.0.1:80", "127.0.0.9:1001"), Some(1));
    }
}
