//! Envoy's `filter_chain_matcher` (the matching API: an `xds.type.matcher.v3.Matcher` whose
//! actions name filter chains), compiled for the connection inputs an L4 proxy has, and
//! evaluated without allocating.
//!
//! Semantics are Envoy's (checked against Envoy 1.40):
//! - `matcher_list`: the first matcher whose predicate holds and whose `on_match` yields a
//!   chain wins; a nested matcher that yields nothing lets the list go on to the next one;
//! - `exact_match_map`: the entry for the input's value; `prefix_match_map`: the entries
//!   whose key prefixes the value, longest first, each tried until one yields;
//! - `custom_match` with the IP matcher (`envoy.matching.custom_matchers.trie_matcher`): the
//!   ranges that contain the input's address, longest prefix first then in declaration
//!   order; after the first, `exclusive` ones are skipped;
//! - when nothing yields (or the input has no value: `source_type` of a non-local peer),
//!   `on_no_match`; a matcher with neither a list nor a tree is its `on_no_match`.
//!
//! (`keep_matching` is refused by the config: Envoy 1.40 accepts it here and crashes on the
//! first connection that reaches it.)
//!
//! What the whole matcher yields is a chain, a name no chain has ([`Outcome::Closed`]: Envoy
//! closes the connection, whatever the default chain) or nothing ([`Outcome::NoMatch`]: the
//! default chain, if any). Inputs are formatted into a stack buffer as Envoy's are (an
//! address as text, a port in decimal, the offered application protocols as
//! `'h2','http/1.1'`), so string matching sees what it sees in Envoy. The server name,
//! transport protocol and application protocols are what the TLS inspector read
//! ([`Detected`]); without one there is no server name, the transport is `raw_buffer` and no
//! protocol is offered.

use super::chain_match::{is_same_ip_or_loopback, Detected};
use super::prefix_map::canonical;
use super::CidrRange;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// A network input (`envoy.matching.inputs.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `destination_ip`: the local (or original destination) address.
    DestinationIp,
    /// `destination_port`.
    DestinationPort,
    /// `source_ip`: the peer's address.
    SourceIp,
    /// `source_port`.
    SourcePort,
    /// `direct_source_ip`: the peer's address as the socket sees it (the same as
    /// `source_ip` without PROXY protocol).
    DirectSourceIp,
    /// `source_type`: `local` when the peer is a loopback address or the local address
    /// itself; no value otherwise.
    SourceType,
    /// `server_name`: the SNI the TLS inspector read; no value without one.
    ServerName,
    /// `transport_protocol`: `tls` or `raw_buffer`.
    TransportProtocol,
    /// `application_protocol`: the offered ALPN protocols, each quoted, joined by commas;
    /// no value when none were offered.
    ApplicationProtocol,
}

impl Input {
    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A compiled `filter_chain_matcher`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainMatcher {
    root: Matcher,
    /// The inputs it reads, one bit per [`Input`].
    inputs: u16,
}

/// One `Matcher`: a list or a tree, and what happens when it yields nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// The list or tree.
    pub kind: MatcherKind,
    /// `on_no_match`.
    pub on_no_match: Option<OnMatch>,
}

/// `matcher_list` or `matcher_tree` (or neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatcherKind {
    /// Neither: the matcher is its `on_no_match`.
    Any,
    /// `matcher_list`, in order.
    List(Vec<FieldMatcher>),
    /// `exact_match_map`, sorted by key.
    Exact(Input, Vec<(Box<str>, OnMatch)>),
    /// `prefix_match_map`, sorted by key.
    Prefix(Input, Vec<(Box<str>, OnMatch)>),
    /// `custom_match` with the IP matcher: sorted longest prefix first, then in declaration
    /// order.
    Ip(Input, Vec<IpRange>),
}

/// One entry of a `matcher_list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMatcher {
    /// When it applies.
    pub predicate: Predicate,
    /// What it yields then.
    pub on_match: OnMatch,
}

/// A `matcher_list` predicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    /// `single_predicate` with a `value_match`; an input without a value never matches.
    Single(Input, StringMatch),
    /// `or_matcher`.
    Or(Vec<Predicate>),
    /// `and_matcher`.
    And(Vec<Predicate>),
    /// `not_matcher`.
    Not(Box<Predicate>),
}

/// `xds.type.matcher.v3.StringMatcher` (exact, prefix, suffix or contains).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatch {
    /// How the pattern is compared.
    pub kind: StringMatchKind,
    /// The pattern (lower case when `ignore_case`).
    pub pattern: Box<str>,
    /// ASCII case is ignored.
    pub ignore_case: bool,
}

/// The comparison of a [`StringMatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatchKind {
    /// `exact`.
    Exact,
    /// `prefix`.
    Prefix,
    /// `suffix`.
    Suffix,
    /// `contains`.
    Contains,
}

/// One CIDR range of an IP matcher's `range_matchers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRange {
    /// The range.
    pub range: CidrRange,
    /// `exclusive`.
    pub exclusive: bool,
    /// The entry's `on_match`.
    pub on_match: OnMatch,
}

/// `on_match` / `on_no_match`: what it leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnMatch {
    /// The filter chain at this index of the listener's `filter_chains`.
    Chain(u32),
    /// An action naming no filter chain of the listener: Envoy closes the connection.
    Missing,
    /// A nested matcher.
    Matcher(Box<Matcher>),
}

/// The result of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The filter chain at this index.
    Chain(u32),
    /// An action named a chain the listener does not have: the connection is closed.
    Closed,
    /// Nothing matched: the default chain, if any.
    NoMatch,
}

/// A connection's addresses and what listener filters detected, as the inputs read them.
#[derive(Clone, Copy)]
struct Conn<'a> {
    local: SocketAddr,
    remote: SocketAddr,
    detected: Detected<'a>,
}

impl ChainMatcher {
    /// Compiles the root matcher.
    pub fn new(root: Matcher) -> ChainMatcher {
        let mut inputs = 0;
        root.inputs(&mut inputs);
        ChainMatcher { root, inputs }
    }

    /// The root matcher.
    pub fn root(&self) -> &Matcher {
        &self.root
    }

    /// Whether it reads `input`.
    pub fn reads(&self, input: Input) -> bool {
        self.inputs & input.bit() != 0
    }

    /// The chain for a connection from `remote` to `local` with what listener filters
    /// `detected`. Allocation-free.
    pub fn select(&self, local: SocketAddr, remote: SocketAddr, detected: &Detected) -> Outcome {
        self.root.evaluate(Conn {
            local,
            remote,
            detected: *detected,
        })
    }
}

impl Matcher {
    fn inputs(&self, bits: &mut u16) {
        let on_matches: Box<dyn Iterator<Item = &OnMatch>> = match &self.kind {
            MatcherKind::Any => Box::new(std::iter::empty()),
            MatcherKind::List(ms) => {
                for m in ms {
                    m.predicate.inputs(bits);
                }
                Box::new(ms.iter().map(|m| &m.on_match))
            }
            MatcherKind::Exact(input, map) | MatcherKind::Prefix(input, map) => {
                *bits |= input.bit();
                Box::new(map.iter().map(|(_, m)| m))
            }
            MatcherKind::Ip(input, ranges) => {
                *bits |= input.bit();
                Box::new(ranges.iter().map(|r| &r.on_match))
            }
        };
        for m in on_matches.chain(&self.on_no_match) {
            if let OnMatch::Matcher(nested) = m {
                nested.inputs(bits);
            }
        }
    }

    fn evaluate(&self, c: Conn<'_>) -> Outcome {
        match &self.kind {
            MatcherKind::Any => {}
            MatcherKind::List(ms) => {
                for m in ms {
                    if m.predicate.holds(c) {
                        let r = m.on_match.evaluate(c);
                        if r != Outcome::NoMatch {
                            return r;
                        }
                    }
                }
            }
            MatcherKind::Exact(input, map) => {
                if let Some(v) = value(*input, c) {
                    if let Ok(i) = map.binary_search_by(|(k, _)| k.as_bytes().cmp(v.bytes())) {
                        let r = map[i].1.evaluate(c);
                        if r != Outcome::NoMatch {
                            return r;
                        }
                    }
                }
            }
            MatcherKind::Prefix(input, map) => {
                if let Some(v) = value(*input, c) {
                    let v = v.bytes();
                    for len in (0..=v.len()).rev() {
                        let Ok(i) = map.binary_search_by(|(k, _)| k.as_bytes().cmp(&v[..len]))
                        else {
                            continue;
                        };
                        let r = map[i].1.evaluate(c);
                        if r != Outcome::NoMatch {
                            return r;
                        }
                    }
                }
            }
            MatcherKind::Ip(input, ranges) => {
                if let Some(ip) = ip_value(*input, c) {
                    let mut first = true;
                    for r in ranges.iter().filter(|r| r.range.contains(ip)) {
                        if !first && r.exclusive {
                            continue;
                        }
                        let out = r.on_match.evaluate(c);
                        if out != Outcome::NoMatch {
                            return out;
                        }
                        first = false;
                    }
                }
            }
        }
        self.on_no_match
            .as_ref()
            .map_or(Outcome::NoMatch, |m| m.evaluate(c))
    }
}

impl OnMatch {
    fn evaluate(&self, c: Conn<'_>) -> Outcome {
        match self {
            OnMatch::Chain(i) => Outcome::Chain(*i),
            OnMatch::Missing => Outcome::Closed,
            OnMatch::Matcher(m) => m.evaluate(c),
        }
    }
}

impl Predicate {
    fn inputs(&self, bits: &mut u16) {
        match self {
            Predicate::Single(input, _) => *bits |= input.bit(),
            Predicate::Or(ps) | Predicate::And(ps) => ps.iter().for_each(|p| p.inputs(bits)),
            Predicate::Not(p) => p.inputs(bits),
        }
    }

    fn holds(&self, c: Conn<'_>) -> bool {
        match self {
            Predicate::Single(input, m) => value(*input, c).is_some_and(|v| m.matches(v.bytes())),
            Predicate::Or(ps) => ps.iter().any(|p| p.holds(c)),
            Predicate::And(ps) => ps.iter().all(|p| p.holds(c)),
            Predicate::Not(p) => !p.holds(c),
        }
    }
}

impl StringMatch {
    /// Whether `s` matches.
    pub fn matches(&self, s: &[u8]) -> bool {
        let p = self.pattern.as_bytes();
        let eq = |a: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(p)
            } else {
                a == p
            }
        };
        match self.kind {
            StringMatchKind::Exact => eq(s),
            StringMatchKind::Prefix => s.len() >= p.len() && eq(&s[..p.len()]),
            StringMatchKind::Suffix => s.len() >= p.len() && eq(&s[s.len() - p.len()..]),
            StringMatchKind::Contains => p.is_empty() || s.windows(p.len()).any(eq),
        }
    }
}

/// The longest value an input formats: the protocols of an ALPN list of
/// [`crate::tls::client_hello::MAX_ALPN_LIST_BYTES`], each quoted and comma-separated.
const MAX_VALUE_BYTES: usize = 3 * crate::tls::client_hello::MAX_ALPN_LIST_BYTES;

/// An input's value as text, in a stack buffer (or borrowed, for the server name).
struct Text<'a> {
    buf: [u8; MAX_VALUE_BYTES],
    len: usize,
    borrowed: Option<&'a [u8]>,
}

impl Text<'_> {
    fn bytes(&self) -> &[u8] {
        self.borrowed.unwrap_or(&self.buf[..self.len])
    }

    /// Appends what fits of `bytes`.
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }
}

impl std::fmt::Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn is_local(c: Conn<'_>) -> bool {
    is_same_ip_or_loopback(c.local.ip(), c.remote.ip())
}

fn ip_value(input: Input, c: Conn<'_>) -> Option<IpAddr> {
    match input {
        Input::DestinationIp => Some(canonical(c.local.ip())),
        Input::SourceIp => Some(canonical(c.remote.ip())),
        Input::DirectSourceIp => {
            let direct = c.detected.direct_remote.unwrap_or(c.remote);
            Some(canonical(direct.ip()))
        }
        // A port, `local` or a name is no address: the IP matcher takes its on_no_match.
        Input::DestinationPort
        | Input::SourcePort
        | Input::SourceType
        | Input::ServerName
        | Input::TransportProtocol
        | Input::ApplicationProtocol => None,
    }
}

fn value(input: Input, c: Conn<'_>) -> Option<Text<'_>> {
    let mut t = Text {
        buf: [0; MAX_VALUE_BYTES],
        len: 0,
        borrowed: None,
    };
    // Addresses take at most 45 bytes, the protocol list at most MAX_VALUE_BYTES: the
    // writes cannot fail.
    let _ = match input {
        Input::ServerName => {
            let name = c.detected.server_name;
            t.borrowed = Some(name).filter(|n| !n.is_empty());
            return t.borrowed.is_some().then_some(t);
        }
        Input::TransportProtocol => {
            t.borrowed = Some(c.detected.transport_protocol.as_bytes());
            return Some(t);
        }
        Input::ApplicationProtocol => {
            let mut protocols = c.detected.application_protocols().peekable();
            protocols.peek()?;
            for (i, p) in protocols.enumerate() {
                let sep: &[u8] = if i == 0 { b"'" } else { b",'" };
                t.push(sep);
                t.push(p);
                t.push(b"'");
            }
            Ok(())
        }
        Input::DestinationIp | Input::SourceIp | Input::DirectSourceIp => {
            write!(t, "{}", ip_value(input, c)?)
        }
        Input::DestinationPort => write!(t, "{}", c.local.port()),
        Input::SourcePort => write!(t, "{}", c.remote.port()),
        Input::SourceType => {
            if !is_local(c) {
                return None;
            }
            t.write_str("local")
        }
    };
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(i: u32) -> OnMatch {
        OnMatch::Chain(i)
    }

    fn nested(m: Matcher) -> OnMatch {
        OnMatch::Matcher(Box::new(m))
    }

    fn exact(p: &str) -> StringMatch {
        StringMatch {
            kind: StringMatchKind::Exact,
            pattern: p.into(),
            ignore_case: false,
        }
    }

    fn map(entries: &[(&str, OnMatch)]) -> Vec<(Box<str>, OnMatch)> {
        let mut m: Vec<(Box<str>, OnMatch)> = entries
            .iter()
            .map(|(k, v)| ((*k).into(), v.clone()))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    }

    fn cidr(s: &str) -> CidrRange {
        let (a, l) = s.split_once('/').unwrap();
        CidrRange {
            address: a.parse().unwrap(),
            prefix_len: l.parse().unwrap(),
        }
    }

    fn sel(m: &Matcher, local: &str, remote: &str) -> Outcome {
        ChainMatcher::new(m.clone()).select(
            local.parse().unwrap(),
            remote.parse().unwrap(),
            &Detected::NOTHING,
        )
    }

    /// Envoy's docs: destination port 80 -> http; 443 -> by source range internal / tls;
    /// anything else matches nothing.
    fn docs_complicated() -> Matcher {
        let ranges = vec![
            IpRange {
                range: cidr("10.0.0.0/24"),
                exclusive: false,
                on_match: chain(1),
            },
            IpRange {
                range: cidr("192.0.0.0/2"),
                exclusive: false,
                on_match: chain(1),
            },
            IpRange {
                range: cidr("0.0.0.0/0"),
                exclusive: false,
                on_match: chain(2),
            },
        ];
        Matcher {
            kind: MatcherKind::Exact(
                Input::DestinationPort,
                map(&[
                    ("80", chain(0)),
                    (
                        "443",
                        nested(Matcher {
                            kind: MatcherKind::Ip(Input::SourceIp, ranges),
                            on_no_match: None,
                        }),
                    ),
                ]),
            ),
            on_no_match: None,
        }
    }

    #[test]
    fn docs_example_port_then_source_range() {
        let m = docs_complicated();
        assert_eq!(sel(&m, "1.1.1.1:80", "9.9.9.9:5"), Outcome::Chain(0));
        assert_eq!(sel(&m, "1.1.1.1:443", "10.0.0.7:5"), Outcome::Chain(1));
        assert_eq!(sel(&m, "1.1.1.1:443", "192.168.0.1:5"), Outcome::Chain(1));
        assert_eq!(sel(&m, "1.1.1.1:443", "9.9.9.9:5"), Outcome::Chain(2));
        assert_eq!(sel(&m, "1.1.1.1:8080", "9.9.9.9:5"), Outcome::NoMatch);
        let c = ChainMatcher::new(m);
        assert!(c.reads(Input::DestinationPort) && c.reads(Input::SourceIp));
        assert!(!c.reads(Input::DestinationIp) && !c.reads(Input::SourceType));
    }

    #[test]
    fn list_goes_on_after_a_nested_miss() {
        let inner = Matcher {
            kind: MatcherKind::List(vec![FieldMatcher {
                predicate: Predicate::Single(Input::DestinationIp, exact("127.0.0.5")),
                on_match: chain(0),
            }]),
            on_no_match: None,
        };
        let m = Matcher {
            kind: MatcherKind::List(vec![
                FieldMatcher {
                    predicate: Predicate::Single(
                        Input::SourceIp,
                        StringMatch {
                            kind: StringMatchKind::Prefix,
                            pattern: "127.0.0.".into(),
                            ignore_case: false,
                        },
                    ),
                    on_match: nested(inner),
                },
                FieldMatcher {
                    predicate: Predicate::Single(Input::SourceIp, exact("127.0.0.2")),
                    on_match: chain(1),
                },
            ]),
            on_no_match: Some(chain(2)),
        };
        assert_eq!(sel(&m, "127.0.0.5:1", "127.0.0.2:9"), Outcome::Chain(0));
        assert_eq!(sel(&m, "127.0.0.6:1", "127.0.0.2:9"), Outcome::Chain(1));
        assert_eq!(sel(&m, "127.0.0.6:1", "127.0.0.3:9"), Outcome::Chain(2));
    }

    #[test]
    fn exact_miss_below_takes_on_no_match_and_prefix_retries_shorter() {
        let inner = || Matcher {
            kind: MatcherKind::Exact(Input::DestinationIp, map(&[("127.0.0.5", chain(0))])),
            on_no_match: None,
        };
        let e = Matcher {
            kind: MatcherKind::Exact(Input::SourceIp, map(&[("127.0.0.2", nested(inner()))])),
            on_no_match: Some(chain(2)),
        };
        assert_eq!(sel(&e, "127.0.0.5:1", "127.0.0.2:9"), Outcome::Chain(0));
        assert_eq!(sel(&e, "127.0.0.6:1", "127.0.0.2:9"), Outcome::Chain(2));
        let p = Matcher {
            kind: MatcherKind::Prefix(
                Input::SourceIp,
                map(&[("127.0.0.", nested(inner())), ("127.0.", chain(1))]),
            ),
            on_no_match: Some(chain(2)),
        };
        assert_eq!(sel(&p, "127.0.0.5:1", "127.0.0.2:9"), Outcome::Chain(0));
        assert_eq!(sel(&p, "127.0.0.6:1", "127.0.0.2:9"), Outcome::Chain(1));
        assert_eq!(sel(&p, "127.0.0.6:1", "127.0.1.3:9"), Outcome::Chain(1));
        assert_eq!(sel(&p, "127.0.0.6:1", "127.1.0.3:9"), Outcome::Chain(2));
    }

    #[test]
    fn ip_matcher_exclusive_and_order() {
        let never = || {
            nested(Matcher {
                kind: MatcherKind::Any,
                on_no_match: None,
            })
        };
        // Longest first; a failing nested match falls back to the non-exclusive /8 but not
        // to the exclusive /0.
        let ranges = |exclusive_all: bool| {
            let mut r = vec![
                IpRange {
                    range: cidr("0.0.0.0/0"),
                    exclusive: exclusive_all,
                    on_match: chain(0),
                },
                IpRange {
                    range: cidr("10.0.0.0/8"),
                    exclusive: false,
                    on_match: chain(1),
                },
                IpRange {
                    range: cidr("10.1.0.0/16"),
                    exclusive: false,
                    on_match: never(),
                },
            ];
            r.sort_by_key(|r| std::cmp::Reverse(r.range.prefix_len));
            r
        };
        let m = Matcher {
            kind: MatcherKind::Ip(Input::SourceIp, ranges(false)),
            on_no_match: Some(chain(9)),
        };
        assert_eq!(sel(&m, "1.1.1.1:1", "10.1.2.3:9"), Outcome::Chain(1));
        assert_eq!(sel(&m, "1.1.1.1:1", "11.1.2.3:9"), Outcome::Chain(0));
        let mut x = ranges(true);
        x.retain(|r| r.range.prefix_len != 8);
        let m = Matcher {
            kind: MatcherKind::Ip(Input::SourceIp, x),
            on_no_match: Some(chain(9)),
        };
        assert_eq!(sel(&m, "1.1.1.1:1", "10.1.2.3:9"), Outcome::Chain(9));
        assert_eq!(sel(&m, "1.1.1.1:1", "11.1.2.3:9"), Outcome::Chain(0));
        // Not an address: on_no_match.
        let m = Matcher {
            kind: MatcherKind::Ip(Input::DestinationPort, ranges(false)),
            on_no_match: Some(chain(9)),
        };
        assert_eq!(sel(&m, "10.1.1.1:1", "10.1.2.3:9"), Outcome::Chain(9));
        // An IPv4-mapped peer is its IPv4 address.
        let m = Matcher {
            kind: MatcherKind::Ip(Input::SourceIp, ranges(false)),
            on_no_match: None,
        };
        assert_eq!(sel(&m, "[::1]:1", "[::ffff:10.9.9.9]:9"), Outcome::Chain(1));
    }

    #[test]
    fn inputs_as_text_and_missing_chains() {
        let m = |input, p: &str| Matcher {
            kind: MatcherKind::Exact(input, map(&[(p, chain(0))])),
            on_no_match: Some(chain(1)),
        };
        let s = |m: &Matcher| sel(m, "[fd00::1]:8443", "[fd00::2]:40000");
        assert_eq!(s(&m(Input::DestinationIp, "fd00::1")), Outcome::Chain(0));
        assert_eq!(s(&m(Input::DestinationPort, "8443")), Outcome::Chain(0));
        assert_eq!(s(&m(Input::SourceIp, "fd00::2")), Outcome::Chain(0));
        assert_eq!(s(&m(Input::DirectSourceIp, "fd00::2")), Outcome::Chain(0));
        assert_eq!(s(&m(Input::SourcePort, "40000")), Outcome::Chain(0));
        assert_eq!(s(&m(Input::SourceType, "local")), Outcome::Chain(1));
        let local = m(Input::SourceType, "local");
        assert_eq!(sel(&local, "10.0.0.1:1", "127.0.0.9:2"), Outcome::Chain(0));
        assert_eq!(sel(&local, "10.0.0.1:1", "10.0.0.1:2"), Outcome::Chain(0));
        assert_eq!(sel(&local, "10.0.0.1:1", "10.0.0.2:2"), Outcome::Chain(1));
        let missing = Matcher {
            kind: MatcherKind::Any,
            on_no_match: Some(OnMatch::Missing),
        };
        assert_eq!(s(&missing), Outcome::Closed);
    }

    /// After a PROXY header, `source_ip` is the declared source and `direct_source_ip` the
    /// peer the socket sees.
    #[test]
    fn direct_source_ip_is_the_peer_behind_a_proxy_header() {
        let m = |input| Matcher {
            kind: MatcherKind::Exact(input, map(&[("10.0.0.7", chain(0))])),
            on_no_match: Some(chain(1)),
        };
        let behind = Detected {
            direct_remote: Some("10.0.0.7:5000".parse().unwrap()),
            ..Detected::NOTHING
        };
        let select = |m: &Matcher| {
            ChainMatcher::new(m.clone()).select(
                "10.0.0.1:443".parse().unwrap(),
                "192.0.2.9:40000".parse().unwrap(),
                &behind,
            )
        };
        assert_eq!(select(&m(Input::DirectSourceIp)), Outcome::Chain(0));
        assert_eq!(select(&m(Input::SourceIp)), Outcome::Chain(1));
    }

    #[test]
    fn string_matchers() {
        let m = |kind, p: &str, ignore_case| StringMatch {
            kind,
            pattern: p.into(),
            ignore_case,
        };
        use StringMatchKind::*;
        assert!(m(Exact, "abc", false).matches(b"abc"));
        assert!(!m(Exact, "abc", false).matches(b"ABC"));
        assert!(m(Exact, "abc", true).matches(b"ABC"));
        assert!(m(Prefix, "10.", false).matches(b"10.0.0.1"));
        assert!(!m(Prefix, "10.0.0.10", false).matches(b"10.0.0.1"));
        assert!(m(Suffix, ".1", false).matches(b"10.0.0.1"));
        assert!(m(Contains, "0.0", false).matches(b"10.0.0.1"));
        assert!(m(Contains, "ff", true).matches(b"fd00::FF"));
        assert!(!m(Contains, "x", false).matches(b""));
        let not = Predicate::Not(Box::new(Predicate::Single(
            Input::SourceType,
            exact("local"),
        )));
        let c = Conn {
            local: "10.0.0.1:1".parse().unwrap(),
            remote: "10.0.0.2:1".parse().unwrap(),
            detected: Detected::NOTHING,
        };
        assert!(not.holds(c));
        let and = Predicate::And(vec![
            Predicate::Single(Input::SourcePort, exact("1")),
            Predicate::Single(Input::DestinationPort, exact("1")),
        ]);
        assert!(and.holds(c));
        let or = Predicate::Or(vec![
            Predicate::Single(Input::SourcePort, exact("2")),
            Predicate::Single(Input::DestinationPort, exact("2")),
        ]);
        assert!(!or.holds(c));
    }

    #[test]
    fn tls_inputs_read_what_the_inspector_detected() {
        let list = [
            2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1',
        ];
        let tls = Detected {
            server_name: b"a.example.com",
            transport_protocol: super::super::chain_match::TRANSPORT_TLS,
            alpn_list: &list,
            direct_remote: None,
        };
        let c = Conn {
            local: "10.0.0.1:1".parse().unwrap(),
            remote: "10.0.0.2:1".parse().unwrap(),
            detected: tls,
        };
        let holds = |input, p: &str| Predicate::Single(input, exact(p)).holds(c);
        assert!(holds(Input::ServerName, "a.example.com"));
        assert!(holds(Input::TransportProtocol, "tls"));
        assert!(holds(Input::ApplicationProtocol, "'h2','http/1.1'"));
        let plain = Conn {
            detected: Detected::NOTHING,
            ..c
        };
        assert!(value(Input::ServerName, plain).is_none());
        assert!(value(Input::ApplicationProtocol, plain).is_none());
        assert_eq!(
            value(Input::TransportProtocol, plain).unwrap().bytes(),
            b"raw_buffer"
        );
    }
}
