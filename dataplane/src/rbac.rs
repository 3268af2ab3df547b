//! Envoy's RBAC policies (`envoy.config.rbac.v3.RBAC`, as the network filter
//! `envoy.filters.network.rbac` uses them) as the data plane evaluates them: permissions and
//! principals over what is known of a connection, in three-valued logic, so that a policy is
//! decided as soon as every input it reads is known — its addresses and ports at accept, its
//! server name once a TLS inspector (or the handshake) has read it, its peer's identity once
//! the client's handshake is done — and never waits for anything it does not read.
//!
//! Guarantees:
//! - **Envoy's semantics.** A policy matches when any of its permissions and any of its
//!   principals match (`and_rules`/`or_rules`, `and_ids`/`or_ids`, `not_rule`/`not_id`, `any`
//!   as Envoy defines them); the RBAC's action ALLOW lets a connection pass when some policy
//!   matches, DENY when none does, LOG always. Policies are tried in name order (Envoy keeps
//!   them in an ordered map), so the matched policy named in
//!   `rbac_access_denied_matched_policy[NAME]` is Envoy's.
//! - **Decided early, never wrongly.** [`Rbac::decide`] answers [`Decision::Pending`] only
//!   while the answer depends on an input still [`Known::Later`]; any answer it gives is the
//!   one it would give with every input known (property-tested below).
//! - **Cost independent of the policies that cannot match.** Policies are filed in an
//!   index ([`index`]) under a condition each match meets (client or local CIDRs, ports,
//!   exact server names); a decision evaluates only the candidates a few hash lookups find,
//!   in name order, and stops at the first that decides.
//! - **No allocation, no panic** on any input.

use crate::fib::chain_matcher::StringMatch;
use crate::fib::CidrRange;
use std::net::SocketAddr;
use std::sync::Arc;

mod index;

/// `%CONNECTION_TERMINATION_DETAILS%` of a connection the rules denied; the access log
/// writes it as Envoy does, `rbac_access_denied_matched_policy[NAME]` (`[none]` when no
/// policy matched), with the policy's name the connection keeps.
pub const DENIED_DETAILS: &str = "rbac_access_denied_matched_policy";

/// What a permission may require of a connection (Envoy's `Permission`, the L4 subset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    /// `destination_ip`: the local address (as a PROXY header declared it, if any).
    DestinationIp(CidrRange),
    /// `destination_port`.
    DestinationPort(u16),
    /// `destination_port_range`: `start` included, `end` excluded, as Envoy's `Int32Range`.
    DestinationPortRange {
        start: u32,
        end: u32,
    },
    /// `requested_server_name`: the SNI (empty when the client sent none).
    RequestedServerName(StringMatch),
}

/// Who a principal may require the connection to come from (Envoy's `Principal`, the L4
/// subset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// `direct_remote_ip`: the peer the socket sees.
    DirectRemoteIp(CidrRange),
    /// `remote_ip`, and the deprecated `source_ip` (which Envoy reads the same way at L4):
    /// the client's address, as a PROXY header declared it if any.
    RemoteIp(CidrRange),
    /// `authenticated`: the client presented a certificate (and, with a `principal_name`,
    /// one of its URI SANs, else one of its DNS SANs, else its subject matches it).
    Authenticated(Option<StringMatch>),
}

/// One named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: Box<str>,
    /// Any of them (Envoy's `permissions` list).
    pub permissions: Vec<Permission>,
    /// Any of them (Envoy's `principals` list).
    pub principals: Vec<Principal>,
}

/// `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// One set of rules (`rules` or `shadow_rules`): its action and policies, in name order.
#[derive(Debug)]
pub struct Rbac {
    pub action: Action,
    policies: Vec<Policy>,
    /// Each policy's name as `rbac_access_denied_matched_policy[...]` writes it (white space
    /// replaced by `_`, as Envoy does), shared with the access log.
    log_names: Box<[Arc<str>]>,
    index: index::Index,
    /// The late inputs the policies read, found once when they are compiled.
    reads: Reads,
}

impl PartialEq for Rbac {
    fn eq(&self, other: &Rbac) -> bool {
        self.action == other.action && self.policies == other.policies
    }
}

impl Eq for Rbac {}

/// An input of the decision: known now, or not yet (it will be, later in the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known<T> {
    Now(T),
    Later,
}

/// The client's certificate, as the principals read it.
#[derive(Debug, Clone, Copy)]
pub struct PeerIdentity<'a> {
    pub uri_sans: &'a [String],
    pub dns_sans: &'a [String],
    /// RFC 2253, as Envoy renders it.
    pub subject: &'a str,
}

/// What is known of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The local address (declared by a PROXY header, if any).
    pub local: SocketAddr,
    /// The client's address (declared by a PROXY header, if any).
    pub remote: SocketAddr,
    /// The peer the socket sees.
    pub direct_remote: SocketAddr,
    /// The server name the client asked for (`None`: none).
    pub server_name: Known<Option<&'a [u8]>>,
    /// The client's certificate (`None`: plaintext, or none presented).
    pub peer: Known<Option<PeerIdentity<'a>>>,
}

/// [`Rbac::decide`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'r> {
    /// The connection may pass; `matched`: the first policy (in name order) that matched.
    Allowed { matched: Option<&'r str> },
    /// The connection is refused; `matched`: the DENY policy that matched (`None` for an
    /// ALLOW set that nothing matched).
    Denied { matched: Option<&'r str> },
    /// Not decidable yet: an input the answer depends on is still to come.
    Pending,
}

/// Three-valued truth: true, false, or not known yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn of(b: bool) -> Truth {
        if b {
            Truth::True
        } else {
            Truth::False
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }

    /// Kleene's conjunction over `items`: false as soon as one is.
    fn all<T>(items: &[T], f: impl Fn(&T) -> Truth) -> Truth {
        let mut out = Truth::True;
        for item in items {
            match f(item) {
                Truth::False => return Truth::False,
                Truth::Unknown => out = Truth::Unknown,
                Truth::True => {}
            }
        }
        out
    }

    /// Kleene's disjunction over `items`: true as soon as one is.
    fn any<T>(items: &[T], f: impl Fn(&T) -> Truth) -> Truth {
        let mut out = Truth::False;
        for item in items {
            match f(item) {
                Truth::True => return Truth::True,
                Truth::Unknown => out = Truth::Unknown,
                Truth::False => {}
            }
        }
        out
    }
}

impl Permission {
    fn eval(&self, c: &Inputs<'_>) -> Truth {
        match self {
            Permission::Any => Truth::True,
            Permission::And(all) => Truth::all(all, |p| p.eval(c)),
            Permission::Or(any) => Truth::any(any, |p| p.eval(c)),
            Permission::Not(p) => p.eval(c).not(),
            Permission::DestinationIp(range) => Truth::of(range.contains(c.local.ip())),
            Permission::DestinationPort(port) => Truth::of(c.local.port() == *port),
            Permission::DestinationPortRange { start, end } => {
                Truth::of((*start..*end).contains(&u32::from(c.local.port())))
            }
            Permission::RequestedServerName(m) => match c.server_name {
                Known::Now(name) => Truth::of(m.matches(name.unwrap_or_default())),
                Known::Later => Truth::Unknown,
            },
        }
    }
}

impl Principal {
    fn eval(&self, c: &Inputs<'_>) -> Truth {
        match self {
            Principal::Any => Truth::True,
            Principal::And(all) => Truth::all(all, |p| p.eval(c)),
            Principal::Or(any) => Truth::any(any, |p| p.eval(c)),
            Principal::Not(p) => p.eval(c).not(),
            Principal::DirectRemoteIp(range) => Truth::of(range.contains(c.direct_remote.ip())),
            Principal::RemoteIp(range) => Truth::of(range.contains(c.remote.ip())),
            Principal::Authenticated(name) => match c.peer {
                Known::Later => Truth::Unknown,
                Known::Now(None) => Truth::False,
                Known::Now(Some(peer)) => Truth::of(name.as_ref().is_none_or(|m| {
                    let mut sans = peer.uri_sans.iter().chain(peer.dns_sans);
                    sans.any(|s| m.matches(s.as_bytes())) || m.matches(peer.subject.as_bytes())
                })),
            },
        }
    }
}

impl Policy {
    fn eval(&self, c: &Inputs<'_>) -> Truth {
        let permitted = Truth::any(&self.permissions, |p| p.eval(c));
        if permitted == Truth::False {
            return Truth::False;
        }
        match Truth::any(&self.principals, |p| p.eval(c)) {
            Truth::False => Truth::False,
            Truth::True => permitted,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

impl Rbac {
    /// A set of rules; its policies are kept in name order (Envoy's map order).
    pub fn new(action: Action, mut policies: Vec<Policy>) -> Rbac {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let log_names = policies
            .iter()
            .map(|p| Arc::from(p.name.replace(char::is_whitespace, "_")))
            .collect();
        let index = index::Index::build(&policies);
        let mut reads = Reads::default();
        for p in &policies {
            p.permissions.iter().for_each(|x| x.reads(&mut reads));
            p.principals.iter().for_each(|x| x.reads(&mut reads));
        }
        Rbac {
            action,
            policies,
            log_names,
            index,
            reads,
        }
    }

    /// The name a denial's `%CONNECTION_TERMINATION_DETAILS%` writes for the policy named
    /// `matched` (`none` for no policy).
    pub fn log_name(&self, matched: Option<&str>) -> Arc<str> {
        let found = matched.and_then(|name| {
            self.policies
                .binary_search_by(|p| p.name.as_ref().cmp(name))
                .ok()
        });
        match found {
            Some(i) => self.log_names[i].clone(),
            None => Arc::from("none"),
        }
    }

    /// The policies, in name order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The first policy (in name order) that matches, if that is known: `Ok(None)` when
    /// none does, `Err(())` while an earlier-named policy, or the outcome, is undecided.
    fn first_match(&self, c: &Inputs<'_>) -> Result<Option<&str>, ()> {
        let lookup = index::Lookup {
            remote: c.remote.ip(),
            direct_remote: c.direct_remote.ip(),
            local: c.local.ip(),
            port: c.local.port(),
            server_name: match c.server_name {
                Known::Now(name) => Some(name.unwrap_or_default()),
                Known::Later => None,
            },
        };
        // The first policy, in name order, that is not false: each list of candidates is
        // ascending, so each is read up to its first such policy, or the best found so far.
        let mut first: Option<(u32, Truth)> = None;
        self.index.candidates(&lookup, |ids| {
            for &id in ids {
                if first.is_some_and(|(best, _)| id >= best) {
                    return;
                }
                match self.policies[id as usize].eval(c) {
                    Truth::False => {}
                    truth => {
                        first = Some((id, truth));
                        return;
                    }
                }
            }
        });
        match first {
            None => Ok(None),
            Some((id, Truth::True)) => Ok(Some(&self.policies[id as usize].name)),
            Some(_) => Err(()),
        }
    }

    /// [`Rbac::first_match`] without the index: every policy in name order (the model the
    /// index is tested against).
    #[cfg(test)]
    fn first_match_linear(&self, c: &Inputs<'_>) -> Result<Option<&str>, ()> {
        for policy in &self.policies {
            match policy.eval(c) {
                Truth::True => return Ok(Some(&policy.name)),
                Truth::False => {}
                Truth::Unknown => return Err(()),
            }
        }
        Ok(None)
    }

    /// What the rules say of the connection `c` now.
    pub fn decide(&self, c: &Inputs<'_>) -> Decision<'_> {
        let Ok(matched) = self.first_match(c) else {
            return Decision::Pending;
        };
        match (self.action, matched) {
            (Action::Deny, Some(name)) => Decision::Denied {
                matched: Some(name),
            },
            (Action::Allow, None) => Decision::Denied { matched: None },
            (_, matched) => Decision::Allowed { matched },
        }
    }

    /// Whether the decision reads the server name or the peer's identity (so that a
    /// connection waits for them only where a policy could).
    pub fn reads(&self) -> Reads {
        self.reads
    }
}

/// The late inputs a set of rules reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub server_name: bool,
    pub peer: bool,
}

impl Permission {
    fn reads(&self, r: &mut Reads) {
        match self {
            Permission::And(v) | Permission::Or(v) => v.iter().for_each(|x| x.reads(r)),
            Permission::Not(p) => p.reads(r),
            Permission::RequestedServerName(_) => r.server_name = true,
            _ => {}
        }
    }
}

impl Principal {
    fn reads(&self, r: &mut Reads) {
        match self {
            Principal::And(v) | Principal::Or(v) => v.iter().for_each(|x| x.reads(r)),
            Principal::Not(p) => p.reads(r),
            Principal::Authenticated(_) => r.peer = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::chain_matcher::StringMatchKind;
    use proptest::prelude::*;

    fn cidr(s: &str) -> CidrRange {
        s.parse().unwrap()
    }

    fn exact(s: &str) -> StringMatch {
        StringMatch {
            kind: StringMatchKind::Exact,
            pattern: s.into(),
            ignore_case: false,
        }
    }

    fn policy(name: &str, permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
        Policy {
            name: name.into(),
            permissions,
            principals,
        }
    }

    fn inputs(remote: &str, port: u16) -> Inputs<'static> {
        let remote: SocketAddr = remote.parse().unwrap();
        Inputs {
            local: SocketAddr::from(([10, 0, 0, 1], port)),
            remote,
            direct_remote: remote,
            server_name: Known::Now(None),
            peer: Known::Now(None),
        }
    }

    #[test]
    fn allow_and_deny_by_address_and_port_in_name_order() {
        let rules = |action| {
            Rbac::new(
                action,
                vec![
                    policy(
                        "b-internal",
                        vec![Permission::DestinationPortRange {
                            start: 8000,
                            end: 9000,
                        }],
                        vec![Principal::RemoteIp(cidr("192.168.0.0/16"))],
                    ),
                    policy(
                        "a-admin",
                        vec![Permission::DestinationPort(8443)],
                        vec![Principal::Not(Box::new(Principal::RemoteIp(cidr(
                            "192.168.9.0/24",
                        ))))],
                    ),
                ],
            )
        };
        let allow = rules(Action::Allow);
        let deny = rules(Action::Deny);
        // Both match; "a-admin" comes first by name.
        let c = inputs("192.168.1.1:5000", 8443);
        assert_eq!(
            allow.decide(&c),
            Decision::Allowed {
                matched: Some("a-admin")
            }
        );
        assert_eq!(
            deny.decide(&c),
            Decision::Denied {
                matched: Some("a-admin")
            }
        );
        // Only "b-internal": port 8443 is in [8000, 9000), the admin policy's principal fails.
        let c = inputs("192.168.9.9:5000", 8443);
        assert_eq!(
            allow.decide(&c),
            Decision::Allowed {
                matched: Some("b-internal")
            }
        );
        // Neither: the end of a range is excluded.
        let c = inputs("10.9.9.9:5000", 9000);
        assert_eq!(allow.decide(&c), Decision::Denied { matched: None });
        assert_eq!(deny.decide(&c), Decision::Allowed { matched: None });
        assert_eq!(
            Rbac::new(Action::Log, allow.policies().to_vec()).decide(&c),
            Decision::Allowed { matched: None }
        );
    }

    #[test]
    fn direct_and_declared_sources_differ_behind_a_proxy_header() {
        let rules = Rbac::new(
            Action::Allow,
            vec![policy(
                "lb-only",
                vec![Permission::Any],
                vec![Principal::And(vec![
                    Principal::DirectRemoteIp(cidr("10.1.0.0/16")),
                    Principal::RemoteIp(cidr("203.0.113.0/24")),
                ])],
            )],
        );
        let mut c = inputs("203.0.113.5:1", 443);
        assert_eq!(rules.decide(&c), Decision::Denied { matched: None });
        c.direct_remote = "10.1.2.3:9".parse().unwrap();
        assert!(matches!(rules.decide(&c), Decision::Allowed { .. }));
    }

    #[test]
    fn late_inputs_wait_only_where_they_could_change_the_answer() {
        let sni = Rbac::new(
            Action::Deny,
            vec![
                policy(
                    "a-blocked-network",
                    vec![Permission::Any],
                    vec![Principal::RemoteIp(cidr("198.51.100.0/24"))],
                ),
                policy(
                    "b-blocked-name",
                    vec![Permission::RequestedServerName(exact("evil.example"))],
                    vec![Principal::Any],
                ),
            ],
        );
        assert_eq!(
            sni.reads(),
            Reads {
                server_name: true,
                peer: false
            }
        );
        let mut c = inputs("198.51.100.7:1", 443);
        c.server_name = Known::Later;
        // Denied by the address alone, before any ClientHello.
        assert_eq!(
            sni.decide(&c),
            Decision::Denied {
                matched: Some("a-blocked-network")
            }
        );
        let mut c = inputs("192.0.2.7:1", 443);
        c.server_name = Known::Later;
        assert_eq!(sni.decide(&c), Decision::Pending);
        c.server_name = Known::Now(Some(b"evil.example"));
        assert!(matches!(sni.decide(&c), Decision::Denied { .. }));
        c.server_name = Known::Now(None);
        assert!(matches!(sni.decide(&c), Decision::Allowed { .. }));
    }

    #[test]
    fn authenticated_reads_uri_then_dns_sans_then_the_subject() {
        let spiffe = "spiffe://cluster.local/ns/default/sa/frontend";
        let rules = |name: Option<StringMatch>| {
            Rbac::new(
                Action::Allow,
                vec![policy(
                    "mtls",
                    vec![Permission::Any],
                    vec![Principal::Authenticated(name)],
                )],
            )
        };
        let uris: [String; 1] = [spiffe.into()];
        let dns: [String; 1] = ["frontend.default.svc".into()];
        let peer = PeerIdentity {
            uri_sans: &uris,
            dns_sans: &dns,
            subject: "CN=frontend,O=example",
        };
        let mut c = inputs("10.0.0.9:1", 443);
        c.peer = Known::Now(Some(peer));
        for (m, ok) in [
            (None, true),
            (Some(exact(spiffe)), true),
            (Some(exact("frontend.default.svc")), true),
            (Some(exact("CN=frontend,O=example")), true),
            (
                Some(exact("spiffe://cluster.local/ns/default/sa/other")),
                false,
            ),
        ] {
            assert_eq!(
                matches!(rules(m.clone()).decide(&c), Decision::Allowed { .. }),
                ok,
                "{m:?}"
            );
        }
        c.peer = Known::Now(None);
        assert!(matches!(rules(None).decide(&c), Decision::Denied { .. }));
        c.peer = Known::Later;
        assert_eq!(rules(None).decide(&c), Decision::Pending);
    }

    fn arb_permission() -> impl Strategy<Value = Permission> {
        let leaf = prop_oneof![
            Just(Permission::Any),
            (0u16..4).prop_map(|p| Permission::DestinationPort(8000 + p)),
            (0u32..4, 0u32..4).prop_map(|(a, b)| Permission::DestinationPortRange {
                start: 8000 + a.min(b),
                end: 8000 + a.max(b),
            }),
            prop_oneof![Just("a"), Just("b"), Just("")]
                .prop_map(|s| Permission::RequestedServerName(exact(s))),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Permission::And),
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Permission::Or),
                inner.prop_map(|p| Permission::Not(Box::new(p))),
            ]
        })
    }

    fn arb_principal() -> impl Strategy<Value = Principal> {
        let leaf = prop_oneof![
            Just(Principal::Any),
            (0u8..4).prop_map(|i| Principal::RemoteIp(cidr(&format!("10.0.{i}.0/24")))),
            (0u8..4).prop_map(|i| Principal::DirectRemoteIp(cidr(&format!("10.0.{i}.0/24")))),
            Just(Principal::Authenticated(None)),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Principal::And),
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Principal::Or),
                inner.prop_map(|p| Principal::Not(Box::new(p))),
            ]
        })
    }

    fn arb_cidr() -> impl Strategy<Value = CidrRange> {
        prop_oneof![
            (
                0u8..3,
                prop_oneof![Just(8u8), Just(16), Just(24), Just(32), Just(0)]
            )
                .prop_map(|(i, len)| cidr(&format!("10.0.{i}.9/{len}"))),
            (0u8..3, prop_oneof![Just(64u8), Just(128)])
                .prop_map(|(i, len)| cidr(&format!("2001:db8::{i}/{len}"))),
        ]
    }

    fn arb_indexed_permission() -> impl Strategy<Value = Permission> {
        let leaf = prop_oneof![
            Just(Permission::Any),
            arb_cidr().prop_map(Permission::DestinationIp),
            (0u16..4).prop_map(|p| Permission::DestinationPort(8000 + p)),
            (0u32..4, 0u32..100).prop_map(|(a, len)| Permission::DestinationPortRange {
                start: 8000 + a,
                end: 8000 + a + len,
            }),
            prop_oneof![Just("a"), Just("b"), Just("")]
                .prop_map(|s| Permission::RequestedServerName(exact(s))),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Permission::And),
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Permission::Or),
                inner.prop_map(|p| Permission::Not(Box::new(p))),
            ]
        })
    }

    fn arb_indexed_principal() -> impl Strategy<Value = Principal> {
        let leaf = prop_oneof![
            Just(Principal::Any),
            arb_cidr().prop_map(Principal::RemoteIp),
            arb_cidr().prop_map(Principal::DirectRemoteIp),
            Just(Principal::Authenticated(None)),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Principal::And),
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Principal::Or),
                inner.prop_map(|p| Principal::Not(Box::new(p))),
            ]
        })
    }

    fn arb_ip() -> impl Strategy<Value = std::net::IpAddr> {
        prop_oneof![
            (0u8..4, 0u8..12).prop_map(|(a, b)| std::net::IpAddr::from([10, 0, a, b])),
            (0u8..4, 0u8..12).prop_map(|(a, b)| {
                std::net::IpAddr::V6(std::net::Ipv4Addr::new(10, 0, a, b).to_ipv6_mapped())
            }),
            (0u16..4).prop_map(|i| format!("2001:db8::{i}").parse().unwrap()),
        ]
    }

    #[test]
    fn ten_thousand_policies_by_source_find_theirs() {
        let policies = (0..10_000u32)
            .map(|i| {
                let [a, b] = (i as u16).to_be_bytes();
                policy(
                    &format!("p{i:05}"),
                    vec![Permission::DestinationPort(443)],
                    vec![Principal::RemoteIp(cidr(&format!("10.1.{a}.{b}/32")))],
                )
            })
            .collect();
        let rules = Rbac::new(Action::Allow, policies);
        let c = inputs("10.1.39.15:1", 443);
        let name = format!("p{:05}", 39 * 256 + 15);
        assert_eq!(
            rules.decide(&c),
            Decision::Allowed {
                matched: Some(name.as_str())
            }
        );
        assert_eq!(rules.log_name(Some(&name)).as_ref(), name);
        assert_eq!(
            rules.decide(&inputs("10.2.0.1:1", 443)),
            Decision::Denied { matched: None }
        );
        assert_eq!(rules.log_name(None).as_ref(), "none");
    }

    proptest! {
        /// The index finds what a walk through every policy in name order finds.
        #[test]
        fn the_index_decides_as_every_policy_in_order(
            policies in proptest::collection::vec(
                (proptest::collection::vec(arb_indexed_permission(), 1..3),
                 proptest::collection::vec(arb_indexed_principal(), 1..3)),
                1..12,
            ),
            remote in arb_ip(),
            direct in arb_ip(),
            local in arb_ip(),
            port in 7998u16..8102,
            name in prop_oneof![Just(None), Just(Some("a")), Just(Some("b")), Just(Some(""))],
            sni_late in any::<bool>(),
            peer in prop_oneof![Just(Known::Later), Just(Known::Now(false)), Just(Known::Now(true))],
        ) {
            let policies = policies
                .into_iter()
                .enumerate()
                .map(|(i, (permissions, principals))| Policy {
                    name: format!("p{}", 11 - i).into(),
                    permissions,
                    principals,
                })
                .collect();
            let rules = Rbac::new(Action::Allow, policies);
            let uris: [String; 0] = [];
            let identity = PeerIdentity { uri_sans: &uris, dns_sans: &uris, subject: "" };
            let c = Inputs {
                local: SocketAddr::new(local, port),
                remote: SocketAddr::new(remote, 1000),
                direct_remote: SocketAddr::new(direct, 1000),
                server_name: if sni_late {
                    Known::Later
                } else {
                    Known::Now(name.map(str::as_bytes))
                },
                peer: match peer {
                    Known::Later => Known::Later,
                    Known::Now(p) => Known::Now(p.then_some(identity)),
                },
            };
            prop_assert_eq!(rules.first_match(&c), rules.first_match_linear(&c));
        }

        /// Whatever is not known yet, an answer given early is the answer given once
        /// everything is known.
        #[test]
        fn an_early_answer_is_the_final_answer(
            policies in proptest::collection::vec(
                (proptest::collection::vec(arb_permission(), 1..3),
                 proptest::collection::vec(arb_principal(), 1..3)),
                1..4,
            ),
            deny in any::<bool>(),
            port in 0u16..4,
            remote in 0u8..5,
            name in prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))],
            authenticated in any::<bool>(),
            sni_late in any::<bool>(),
            peer_late in any::<bool>(),
        ) {
            let policies = policies
                .into_iter()
                .enumerate()
                .map(|(i, (permissions, principals))| Policy {
                    name: format!("p{i}").into(),
                    permissions,
                    principals,
                })
                .collect();
            let action = if deny { Action::Deny } else { Action::Allow };
            let rules = Rbac::new(action, policies);
            let uris: [String; 0] = [];
            let peer = PeerIdentity { uri_sans: &uris, dns_sans: &uris, subject: "" };
            let remote = SocketAddr::from(([10, 0, remote, 9], 1000));
            let full = Inputs {
                local: SocketAddr::from(([10, 9, 9, 9], 8000 + port)),
                remote,
                direct_remote: remote,
                server_name: Known::Now(name.map(str::as_bytes)),
                peer: Known::Now(authenticated.then_some(peer)),
            };
            let mut early = full;
            if sni_late {
                early.server_name = Known::Later;
            }
            if peer_late {
                early.peer = Known::Later;
            }
            let last = rules.decide(&full);
            prop_assert_ne!(last, Decision::Pending);
            let first = rules.decide(&early);
            if first != Decision::Pending {
                prop_assert_eq!(first, last);
            }
            let reads = rules.reads();
            let waited = sni_late && reads.server_name || peer_late && reads.peer;
            if !waited {
                prop_assert_eq!(first, last, "nothing it reads was late");
            }
        }
    }
}
