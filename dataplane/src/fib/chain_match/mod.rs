//! Envoy's filter-chain match, allocation-free.
//!
//! Envoy narrows the candidate chains criterion by criterion, in a fixed order: destination
//! port, destination IP, server name, transport protocol, application protocols, source IP,
//! source port. At each step the most specific candidates that match win (an exact port over
//! "any port", the longest matching prefix over shorter ones, an exact server name over the
//! longest matching `*.` suffix, the client's first offered protocol that a chain lists);
//! chains that leave the criterion empty are the fallback; when neither exists the
//! connection matches no chain (Envoy commits at each step: a later criterion that fails
//! does not send it back to a less specific candidate). The server name, transport protocol
//! and protocols are what the TLS inspector read ([`Detected`]): none, `raw_buffer` and none
//! without it. Candidates are a fixed-size bitset, so a listener holds at most
//! [`MAX_FILTER_CHAINS`] chains (the config layer rejects more).

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

impl std::str::FromStr for CidrRange {
    type Err = String;

    /// `address/prefix_len` (`10.0.0.0/8`, `2001:db8::/32`), taken as written.
    fn from_str(s: &str) -> Result<CidrRange, String> {
        let (address, len) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not address/prefix_len"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("'{address}' is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(prefix_len) if prefix_len <= max => Ok(CidrRange {
                address,
                prefix_len,
            }),
            _ => Err(format!("'{len}' is not a prefix length up to {max}")),
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
    /// `server_names`: exact names, or `*.suffix` wildcards.
    pub server_names: Vec<Box<str>>,
    /// `transport_protocol` (`raw_buffer`, `tls`, ...), if set.
    pub transport_protocol: Option<Box<str>>,
    /// `application_protocols`.
    pub application_protocols: Vec<Box<str>>,
    /// `source_prefix_ranges`.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
}

impl ChainMatch {
    /// Whether it reads what only a TLS inspector can tell (without one such a chain never
    /// matches; the config warns).
    pub fn needs_tls_inspector(&self) -> bool {
        self.transport_protocol.as_deref() == Some(TRANSPORT_TLS)
            || (self.transport_protocol.is_none()
                && (!self.server_names.is_empty() || !self.application_protocols.is_empty()))
    }
}

/// The transport protocol a connection has when no listener filter detected one.
pub const TRANSPORT_RAW_BUFFER: &str = "raw_buffer";
/// The transport protocol the TLS inspector sets when it read a ClientHello.
pub const TRANSPORT_TLS: &str = "tls";

/// What listener filters detected of a connection (Envoy's requested server name,
/// detected transport protocol and requested application protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected<'a> {
    /// The SNI; empty when none.
    pub server_name: &'a [u8],
    /// `raw_buffer` or `tls`.
    pub transport_protocol: &'a str,
    /// The offered protocols as a TLS ALPN list (length-prefixed entries).
    pub alpn_list: &'a [u8],
    /// The peer the socket sees, when a PROXY header declared another source (which is
    /// then the connection's remote address); `None`: the remote address is the peer.
    pub direct_remote: Option<std::net::SocketAddr>,
}

impl Default for Detected<'_> {
    fn default() -> Self {
        Detected::NOTHING
    }
}

impl<'a> Detected<'a> {
    /// A connection no listener filter looked into.
    pub const NOTHING: Detected<'static> = Detected {
        server_name: b"",
        transport_protocol: TRANSPORT_RAW_BUFFER,
        alpn_list: b"",
        direct_remote: None,
    };

    /// The offered protocols, in the client's order.
    pub fn application_protocols(&self) -> crate::tls::client_hello::AlpnIter<'a> {
        crate::tls::client_hello::AlpnIter::new(self.alpn_list)
    }
}

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
/// [`MAX_FILTER_CHAINS`] are not considered.
pub fn select<'a, G>(
    n: usize,
    get: G,
    local: SocketAddr,
    remote: SocketAddr,
    detected: &Detected,
) -> Option<usize>
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
        s.parse().unwrap()
    }

    fn sel(chains: &[ChainMatch], local: &str, remote: &str) -> Option<usize> {
        select(
            chains.len(),
            |i| &chains[i],
            local.parse().unwrap(),
            remote.parse().unwrap(),
            &Detected::NOTHING,
        )
    }

    fn alpn_list(protocols: &[&str]) -> Vec<u8> {
        protocols
            .iter()
            .flat_map(|p| std::iter::once(p.len() as u8).chain(p.bytes()))
            .collect()
    }

    /// The chain for a TLS connection with this SNI and ALPN offer.
    fn sel_tls(chains: &[ChainMatch], sni: &str, alpn: &[&str]) -> Option<usize> {
        let list = alpn_list(alpn);
        let detected = Detected {
            server_name: sni.as_bytes(),
            transport_protocol: TRANSPORT_TLS,
            alpn_list: &list,
            direct_remote: None,
        };
        let (local, remote) = (
            "127.0.0.1:443".parse().unwrap(),
            "127.0.0.2:9".parse().unwrap(),
        );
        select(chains.len(), |i| &chains[i], local, remote, &detected)
    }

    fn names(names: &[&str]) -> ChainMatch {
        ChainMatch {
            server_names: names.iter().map(|n| (*n).into()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_name_then_longest_wildcard_then_no_name() {
        let chains = vec![
            names(&["*.example.com"]),
            names(&["a.example.com"]),
            names(&["*.b.example.com"]),
            ChainMatch::default(),
        ];
        assert_eq!(sel_tls(&chains, "a.example.com", &[]), Some(1));
        assert_eq!(sel_tls(&chains, "x.b.example.com", &[]), Some(2));
        assert_eq!(sel_tls(&chains, "c.example.com", &[]), Some(0));
        assert_eq!(sel_tls(&chains, "example.com", &[]), Some(3));
        assert_eq!(sel_tls(&chains, "", &[]), Some(3));
        // Without an inspector: no name, raw_buffer.
        assert_eq!(sel(&chains, "127.0.0.1:1", "127.0.0.2:2"), Some(3));
    }

    #[test]
    fn transport_protocol_and_alpn() {
        let tls = ChainMatch {
            transport_protocol: Some(TRANSPORT_TLS.into()),
            ..Default::default()
        };
        let h2 = ChainMatch {
            transport_protocol: Some(TRANSPORT_TLS.into()),
            application_protocols: vec!["h2".into()],
            ..Default::default()
        };
        let http11 = ChainMatch {
            transport_protocol: Some(TRANSPORT_TLS.into()),
            application_protocols: vec!["http/1.1".into()],
            ..Default::default()
        };
        let raw = ChainMatch {
            transport_protocol: Some(TRANSPORT_RAW_BUFFER.into()),
            ..Default::default()
        };
        let chains = vec![tls, h2, http11, raw];
        assert_eq!(sel(&chains, "127.0.0.1:1", "127.0.0.2:2"), Some(3));
        assert_eq!(sel_tls(&chains, "", &[]), Some(0));
        assert_eq!(sel_tls(&chains, "", &["h2", "http/1.1"]), Some(1));
        assert_eq!(sel_tls(&chains, "", &["http/1.1", "h2"]), Some(2));
        assert_eq!(sel_tls(&chains, "", &["spdy"]), Some(0));
    }

    #[test]
    fn a_name_committed_to_does_not_fall_back() {
        // Envoy: the exact name's chains are the only candidates from then on.
        let chains = vec![
            ChainMatch {
                server_names: vec!["a.example.com".into()],
                transport_protocol: Some(TRANSPORT_RAW_BUFFER.into()),
                ..Default::default()
            },
            names(&["*.example.com"]),
        ];
        assert_eq!(sel_tls(&chains, "a.example.com", &[]), None);
        assert_eq!(sel_tls(&chains, "b.example.com", &[]), Some(1));
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

    #[test]
    fn these_matches_need_an_inspector() {
        assert!(names(&["a"]).needs_tls_inspector());
        assert!(!ChainMatch::default().needs_tls_inspector());
        let raw_named = ChainMatch {
            transport_protocol: Some(TRANSPORT_RAW_BUFFER.into()),
            ..names(&["a"])
        };
        assert!(!raw_named.needs_tls_inspector());
    }
}
