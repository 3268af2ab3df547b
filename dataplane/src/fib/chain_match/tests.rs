//! The index against the linear model: fixed cases, then random chains and connections.

use super::*;
use std::net::SocketAddr;

/// The index's answer, checked against the model's.
fn both(
    chains: &[ChainMatch],
    local: SocketAddr,
    remote: SocketAddr,
    d: &Detected,
) -> Option<usize> {
    let index = ChainIndex::build(chains);
    let got = index.select(local, remote, d);
    let want = model::select(chains.len(), |i| &chains[i], local, remote, d);
    assert_eq!(
        got, want,
        "index vs model for {local} <- {remote}, {d:?}, chains {chains:#?}"
    );
    got
}

fn cidr(s: &str) -> CidrRange {
    s.parse().unwrap()
}

fn sel(chains: &[ChainMatch], local: &str, remote: &str) -> Option<usize> {
    both(
        chains,
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
    both(chains, local, remote, &detected)
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

fn conn(local: &str, remote: &str) -> (SocketAddr, SocketAddr) {
    (local.parse().unwrap(), remote.parse().unwrap())
}

#[test]
fn source_type_local_or_external_then_any() {
    let typed = |source_type| ChainMatch {
        source_type,
        ..Default::default()
    };
    let chains = vec![
        typed(SourceType::SameIpOrLoopback),
        typed(SourceType::External),
        typed(SourceType::Any),
    ];
    assert_eq!(sel(&chains, "10.0.0.1:80", "127.0.0.9:1"), Some(0));
    assert_eq!(sel(&chains, "10.0.0.1:80", "[::1]:1"), Some(0));
    assert_eq!(sel(&chains, "10.0.0.1:80", "10.0.0.1:1"), Some(0));
    assert_eq!(sel(&chains, "10.0.0.1:80", "[::ffff:10.0.0.1]:1"), Some(0));
    assert_eq!(sel(&chains, "10.0.0.1:80", "10.0.0.2:1"), Some(1));
    // Only a local chain: an external source matches nothing, without ANY.
    assert_eq!(sel(&chains[..1], "10.0.0.1:80", "10.0.0.2:1"), None);
    assert_eq!(
        sel(
            &[chains[0].clone(), chains[2].clone()],
            "10.0.0.1:80",
            "10.0.0.2:1"
        ),
        Some(1)
    );
}

#[test]
fn direct_source_is_the_peer_behind_a_proxy_header() {
    let chains = vec![
        ChainMatch {
            direct_source_prefix_ranges: vec![cidr("192.168.0.0/16")],
            ..Default::default()
        },
        ChainMatch::default(),
    ];
    let (local, declared) = conn("10.0.0.1:80", "203.0.113.7:5");
    let through = |peer: &str| Detected {
        direct_remote: Some(peer.parse().unwrap()),
        ..Detected::NOTHING
    };
    assert_eq!(
        both(&chains, local, declared, &through("192.168.1.1:9")),
        Some(0)
    );
    assert_eq!(
        both(&chains, local, declared, &through("10.9.9.9:9")),
        Some(1)
    );
    // Without a header the peer is the remote address.
    let (_, peer) = conn("10.0.0.1:80", "192.168.3.3:5");
    assert_eq!(both(&chains, local, peer, &Detected::NOTHING), Some(0));
    assert_eq!(both(&chains, local, declared, &Detected::NOTHING), Some(1));
}

#[test]
fn direct_source_is_decided_before_source_type_and_source() {
    let chains = vec![
        ChainMatch {
            direct_source_prefix_ranges: vec![cidr("127.0.0.0/8")],
            source_prefix_ranges: vec![cidr("10.0.0.0/8")],
            ..Default::default()
        },
        ChainMatch {
            source_type: SourceType::SameIpOrLoopback,
            ..Default::default()
        },
    ];
    // The direct source commits to chain 0, whose source range then fails: no chain.
    assert_eq!(sel(&chains, "127.0.0.1:80", "127.0.0.2:1"), None);
    assert_eq!(sel(&chains, "127.0.0.1:80", "10.0.0.2:1"), None);
    let (local, remote) = conn("10.0.0.1:80", "10.0.0.1:1");
    assert_eq!(both(&chains, local, remote, &Detected::NOTHING), Some(1));
}

#[test]
fn the_same_criteria_twice_is_a_duplicate_and_the_first_wins() {
    let chains = vec![
        names(&["a.example.com", "b.example.com"]),
        names(&["c.example.com"]),
        names(&["b.example.com"]),
        names(&["c.example.com", "d.example.com"]),
    ];
    let index = ChainIndex::build(&chains);
    assert_eq!(index.first_duplicate(), Some((2, 0)));
    assert_eq!(sel_tls(&chains, "b.example.com", &[]), Some(0));
    assert_eq!(sel_tls(&chains, "d.example.com", &[]), Some(3));
    assert_eq!(ChainIndex::build(&chains[..2]).first_duplicate(), None);
    // The same addresses written differently are the same criterion.
    let ranges = |r: &str| ChainMatch {
        prefix_ranges: vec![cidr(r)],
        ..Default::default()
    };
    let index = ChainIndex::build(&[ranges("10.1.2.3/8"), ranges("10.0.0.0/8")]);
    assert_eq!(index.first_duplicate(), Some((1, 0)));
}

#[test]
fn no_chains_match_nothing() {
    let (local, remote) = conn("10.0.0.1:80", "10.0.0.2:1");
    let index = ChainIndex::build(&[]);
    assert_eq!(index.select(local, remote, &Detected::NOTHING), None);
    assert_eq!(index.chains(), 0);
}

#[test]
fn ten_thousand_names_each_their_chain() {
    let chains: Vec<ChainMatch> = (0..10_000)
        .map(|i| names(&[&format!("svc-{i}.example.com")]))
        .chain(std::iter::once(ChainMatch::default()))
        .collect();
    let index = ChainIndex::build(&chains);
    assert_eq!(index.first_duplicate(), None);
    // One server-name node, a leaf per chain.
    assert_eq!(index.nodes(), chains.len() + 1);
    let (local, remote) = conn("10.0.0.1:443", "10.0.0.2:1");
    for i in [0, 1, 4_999, 9_999] {
        let name = format!("svc-{i}.example.com");
        let d = Detected {
            server_name: name.as_bytes(),
            transport_protocol: TRANSPORT_TLS,
            ..Detected::NOTHING
        };
        assert_eq!(index.select(local, remote, &d), Some(i));
    }
    let d = Detected {
        server_name: b"svc-10000.example.com",
        ..Detected::NOTHING
    };
    assert_eq!(index.select(local, remote, &d), Some(10_000));
}

#[test]
fn a_chain_with_many_criteria_is_filed_once_below_them() {
    let chain = ChainMatch {
        server_names: (0..1_000).map(|i| format!("n{i}").into()).collect(),
        source_prefix_ranges: (0..100).map(|i| cidr(&format!("10.0.{i}.0/24"))).collect(),
        source_ports: (1..100).collect(),
        ..Default::default()
    };
    let index = ChainIndex::build(&[chain]);
    // Names, source IPs, source ports, the leaf.
    assert_eq!(index.nodes(), 4);
}

mod random {
    //! Random chains over small pools of values (so that they overlap, tie and nest) and
    //! random connections: the index answers as the model does.

    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    const NAMES: &[&str] = &[
        "a.example.com",
        "b.example.com",
        "*.example.com",
        "*.b.example.com",
        "x.b.example.com",
        "*.com",
        "example.com",
    ];
    const SNIS: &[&str] = &[
        "",
        "a.example.com",
        "c.example.com",
        "x.b.example.com",
        "y.x.b.example.com",
        "example.com",
        "com",
        ".com",
        "*.example.com",
    ];
    const PROTOCOLS: &[&str] = &["h2", "http/1.1", "spdy"];
    const TRANSPORTS: &[&str] = &[TRANSPORT_TLS, TRANSPORT_RAW_BUFFER];

    fn ip() -> impl Strategy<Value = std::net::IpAddr> {
        prop_oneof![
            4 => (0u8..3, 0u8..3, 0u8..3).prop_map(|(a, b, c)| [10, a, b, c].into()),
            1 => (0u8..3).prop_map(|c| std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, c.into()).into()),
            1 => (0u8..3).prop_map(|c| std::net::Ipv4Addr::new(10, 0, 0, c).to_ipv6_mapped().into()),
            1 => Just([127, 0, 0, 1].into()),
        ]
    }

    fn range() -> impl Strategy<Value = CidrRange> {
        prop_oneof![
            (0u8..3, 0u8..3, select(vec![0u8, 8, 16, 24, 30, 32])).prop_map(|(a, b, len)| {
                CidrRange {
                    address: [10, a, b, 0].into(),
                    prefix_len: len,
                }
            }),
            (select(vec![0u8, 8, 126, 128])).prop_map(|len| CidrRange {
                address: "fd00::1".parse().unwrap(),
                prefix_len: len,
            }),
        ]
    }

    fn ranges() -> impl Strategy<Value = Vec<CidrRange>> {
        prop_oneof![2 => Just(Vec::new()), 1 => vec(range(), 1..3)]
    }

    fn texts(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<Box<str>>> {
        prop_oneof![
            2 => Just(Vec::new()),
            1 => vec(select(pool), 1..=max).prop_map(|v| v.into_iter().map(Box::from).collect()),
        ]
    }

    fn chain(new_fields: bool) -> impl Strategy<Value = ChainMatch> {
        let source_type = select(vec![
            SourceType::Any,
            SourceType::Any,
            SourceType::SameIpOrLoopback,
            SourceType::External,
        ]);
        (
            (
                proptest::option::weighted(0.3, select(vec![80u16, 443])),
                ranges(),
                texts(NAMES, 3),
                proptest::option::weighted(0.3, select(TRANSPORTS).prop_map(Box::from)),
                texts(PROTOCOLS, 2),
            ),
            (
                ranges(),
                source_type,
                ranges(),
                prop_oneof![2 => Just(Vec::new()), 1 => vec(select(vec![1000u16, 1001]), 1..3)],
            ),
        )
            .prop_map(
                move |((port, dst, names, transport, alpn), (direct, st, src, sports))| {
                    ChainMatch {
                        destination_port: port,
                        prefix_ranges: dst,
                        server_names: names,
                        transport_protocol: transport,
                        application_protocols: alpn,
                        direct_source_prefix_ranges: if new_fields { direct } else { Vec::new() },
                        source_type: if new_fields { st } else { SourceType::Any },
                        source_prefix_ranges: src,
                        source_ports: sports,
                    }
                },
            )
    }

    /// A connection: local and remote addresses, SNI, transport, ALPN offer, PROXY peer.
    type Conn = (
        SocketAddr,
        SocketAddr,
        &'static str,
        &'static str,
        Vec<u8>,
        Option<SocketAddr>,
    );

    fn connection() -> impl Strategy<Value = Conn> {
        let addr =
            |ports: Vec<u16>| (ip(), select(ports)).prop_map(|(ip, p)| SocketAddr::new(ip, p));
        (
            addr(vec![80, 443, 8080]),
            addr(vec![1000, 1001, 9]),
            select(SNIS),
            select(TRANSPORTS),
            vec(select(PROTOCOLS), 0..3),
            proptest::option::weighted(0.3, addr(vec![7])),
        )
            .prop_map(|(local, remote, sni, transport, offer, direct)| {
                (local, remote, sni, transport, alpn_list(&offer), direct)
            })
    }

    fn check(chains: &[ChainMatch], conns: &[Conn]) {
        for (local, remote, sni, transport, alpn, direct) in conns {
            let d = Detected {
                server_name: sni.as_bytes(),
                transport_protocol: transport,
                alpn_list: alpn,
                direct_remote: *direct,
            };
            both(chains, *local, *remote, &d);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn index_answers_as_the_model(
            chains in vec(chain(false), 1..40),
            conns in vec(connection(), 1..16),
        ) {
            check(&chains, &conns);
        }

        #[test]
        fn index_answers_as_the_model_with_source_types_and_direct_sources(
            chains in vec(chain(true), 1..40),
            conns in vec(connection(), 1..16),
        ) {
            check(&chains, &conns);
        }
    }
}
