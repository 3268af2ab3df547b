//! Differential test: the same Envoy v3 bootstrap (only the listen/admin ports differ) is given to
//! real Envoy and to Switchyard; the same traffic must reach the same backends with the same bytes.
//!
//! The config exercises filter-chain matching (destination port + destination IP, source prefix,
//! default chain, and Envoy's no-backtracking rule), `filter_chain_matcher` in the shapes of
//! Envoy's docs (prefix and exact maps, the IP range matcher, a matcher list with nested,
//! and/or/not predicates, an action naming no chain, the default chain),
//! `weighted_clusters` in tcp_proxy (random by weight, so compared statistically) and endpoint
//! weights with round robin (deterministic with one worker, so compared exactly).
//!
//! With `SWITCHYARD_TEST_PROXY=envoy` only the Envoy side runs and is checked against the routing
//! table written down below (which was read off Envoy 1.40). With the default (switchyard) both run
//! and Envoy must be present: missing Envoy fails under CI=true and skips otherwise.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::time::Duration;

const TEMPLATE: &str = r#"admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: {{admin}} }
static_resources:
  listeners:
  - name: diff_match
    address:
      socket_address: { address: 0.0.0.0, port_value: {{port}} }
    filter_chains:
    - name: dst3
      filter_chain_match:
        destination_port: {{port}}
        prefix_ranges: [{ address_prefix: 127.0.0.3, prefix_len: 32 }]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: dst3
          cluster: dst3
    - name: src2
      filter_chain_match:
        source_prefix_ranges: [{ address_prefix: 127.0.0.2, prefix_len: 32 }]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: src2
          cluster: src2
    - name: src4
      filter_chain_match:
        prefix_ranges: [{ address_prefix: 127.0.0.4, prefix_len: 30 }]
        source_prefix_ranges: [{ address_prefix: 127.0.0.4, prefix_len: 30 }]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: src4
          cluster: src4
    default_filter_chain:
      name: default
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: default
          weighted_clusters:
            clusters:
            - { name: wa, weight: 1 }
            - { name: wb, weight: 3 }
  - name: diff_src
    address:
      socket_address: { address: 0.0.0.0, port_value: {{port3}} }
    filter_chains:
    - name: src2
      filter_chain_match:
        source_prefix_ranges: [{ address_prefix: 127.0.0.2, prefix_len: 32 }]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s_src2
          cluster: src2
    - name: src4
      filter_chain_match:
        prefix_ranges: [{ address_prefix: 127.0.0.4, prefix_len: 30 }]
        source_prefix_ranges: [{ address_prefix: 127.0.0.4, prefix_len: 30 }]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s_src4
          cluster: src4
    - name: other_port
      filter_chain_match:
        destination_port: {{port}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s_other
          cluster: dst3
    default_filter_chain:
      name: default
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: s_default
          weighted_clusters:
            clusters:
            - { name: wa, weight: 1 }
            - { name: wb, weight: 3 }
  - name: diff_rr
    address:
      socket_address: { address: 127.0.0.1, port_value: {{port2}} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: rr
          cluster: rr
  # filter_chain_matcher in the shapes of Envoy's docs ("Matching Filter Chains in
  # Listeners"): a destination-IP prefix map (the VIP example) whose shorter prefix nests an
  # exact map on the source address, with the default chain when nothing yields.
  - name: m_vip
    address:
      socket_address: { address: 0.0.0.0, port_value: {{port4}} }
    filter_chains:
    - name: vip
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_vip
          cluster: dst3
    - name: other
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_other
          cluster: src2
    default_filter_chain:
      name: default
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_vip_default
          weighted_clusters:
            clusters:
            - { name: wa, weight: 1 }
            - { name: wb, weight: 3 }
    filter_chain_matcher:
      matcher_tree:
        input:
          name: destination_ip
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput
        prefix_match_map:
          map:
            "127.0.0.3":
              action:
                name: vip
                typed_config:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: vip
            "127.0.0.":
              matcher:
                matcher_tree:
                  input:
                    name: source_ip
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput
                  exact_match_map:
                    map:
                      "127.0.0.4":
                        action:
                          name: other
                          typed_config:
                            "@type": type.googleapis.com/google.protobuf.StringValue
                            value: other
  # The destination port, then the IP range matcher on the source (the docs' "destination port
  # and source IP" example).
  - name: m_port_src
    address:
      socket_address: { address: 0.0.0.0, port_value: {{port5}} }
    filter_chains:
    - name: http
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_http
          cluster: src4
    - name: internal
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_internal
          cluster: src2
    - name: tls
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_tls
          cluster: dst3
    filter_chain_matcher:
      matcher_tree:
        input:
          name: port
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput
        exact_match_map:
          map:
            "80":
              action:
                name: http
                typed_config:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: http
            "{{port5}}":
              matcher:
                matcher_tree:
                  input:
                    name: ip
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput
                  custom_match:
                    name: ip-matcher
                    typed_config:
                      "@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
                      range_matchers:
                      - ranges:
                        - { address_prefix: 127.0.0.2, prefix_len: 32 }
                        - { address_prefix: 127.0.0.4, prefix_len: 30 }
                        on_match:
                          action:
                            name: internal
                            typed_config:
                              "@type": type.googleapis.com/google.protobuf.StringValue
                              value: internal
                      - ranges:
                        - address_prefix: 0.0.0.0
                        on_match:
                          action:
                            name: tls
                            typed_config:
                              "@type": type.googleapis.com/google.protobuf.StringValue
                              value: tls
  # A matcher list: a nested matcher that yields nothing lets the list go on; and/not/or of
  # string matchers; an action naming no chain closes the connection (default chain or not);
  # nothing matching, the default chain takes it.
  - name: m_list
    address:
      socket_address: { address: 0.0.0.0, port_value: {{port6}} }
    filter_chains:
    - name: a
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_a
          cluster: src4
    - name: b
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_b
          cluster: dst3
    default_filter_chain:
      name: default
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: m_list_default
          weighted_clusters:
            clusters:
            - { name: wa, weight: 1 }
            - { name: wb, weight: 3 }
    filter_chain_matcher:
      matcher_list:
        matchers:
        - predicate:
            single_predicate:
              input:
                name: source_ip
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput
              value_match: { prefix: "127.0.0." }
          on_match:
            matcher:
              matcher_list:
                matchers:
                - predicate:
                    single_predicate:
                      input:
                        name: destination_ip
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput
                      value_match: { exact: "127.0.0.9" }
                  on_match:
                    action:
                      name: a
                      typed_config:
                        "@type": type.googleapis.com/google.protobuf.StringValue
                        value: a
        - predicate:
            and_matcher:
              predicate:
              - single_predicate:
                  input:
                    name: source_ip
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput
                  value_match: { exact: "127.0.0.2" }
              - not_matcher:
                  single_predicate:
                    input:
                      name: destination_ip
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput
                    value_match: { suffix: ".1" }
          on_match:
            action:
              name: b
              typed_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: b
        - predicate:
            or_matcher:
              predicate:
              - single_predicate:
                  input:
                    name: source_ip
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput
                  value_match: { exact: "127.0.0.6" }
              - single_predicate:
                  input:
                    name: destination_ip
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput
                  value_match: { exact: "127.0.0.7" }
          on_match:
            action:
              name: missing
              typed_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: missing
  clusters:
{{clusters}}"#;

/// Backend names; each is a tagged echo backend with its own cluster (rr has two endpoints).
const SINGLE: [&str; 5] = ["dst3", "src2", "src4", "wa", "wb"];

struct Bed {
    backends: BTreeMap<&'static str, Backend>,
    clusters: String,
}

fn bed() -> Bed {
    let mut backends = BTreeMap::new();
    let mut clusters = String::new();
    for name in SINGLE {
        let b = Backend::tagged(name);
        clusters.push_str(&static_cluster(name, &[(b.addr, 1)]));
        backends.insert(name, b);
    }
    let r1 = Backend::tagged("rr1");
    let r3 = Backend::tagged("rr3");
    clusters.push_str(&static_cluster("rr", &[(r1.addr, 1), (r3.addr, 3)]));
    backends.insert("rr1", r1);
    backends.insert("rr3", r3);
    Bed { backends, clusters }
}

/// One traffic class: client source IP, destination IP, listener (0 = diff_match, 1 = diff_rr,
/// 2 = diff_src, 3 = m_vip, 4 = m_port_src, 5 = m_list), count.
struct Class {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    listener: usize,
    count: usize,
    /// Where Envoy 1.40 sends it (`"weighted"` = wa or wb by weight, `"closed"` = closed
    /// without reaching a backend).
    expect: &'static str,
}

fn classes() -> Vec<Class> {
    let ip = |d: u8| Ipv4Addr::new(127, 0, 0, d);
    vec![
        // dst port matches chain dst3's destination_port, so Envoy narrows to that branch first;
        // its destination prefix 127.0.0.3 does not contain 127.0.0.1 and Envoy does not
        // backtrack to src2 => default chain.
        Class {
            src: ip(2),
            dst: ip(1),
            listener: 0,
            count: 20,
            expect: "weighted",
        },
        Class {
            src: ip(1),
            dst: ip(3),
            listener: 0,
            count: 20,
            expect: "dst3",
        },
        Class {
            src: ip(2),
            dst: ip(3),
            listener: 0,
            count: 20,
            expect: "dst3",
        },
        Class {
            src: ip(5),
            dst: ip(5),
            listener: 0,
            count: 20,
            expect: "weighted",
        },
        Class {
            src: ip(1),
            dst: ip(1),
            listener: 0,
            count: 200,
            expect: "weighted",
        },
        Class {
            src: ip(1),
            dst: ip(1),
            listener: 1,
            count: 200,
            expect: "rr",
        },
        // diff_src: no chain has this listener's port, so port-unspecified chains compete.
        // Destination 127.0.0.1 is outside src4's destination prefix => src2's branch; source
        // 127.0.0.2 matches.
        Class {
            src: ip(2),
            dst: ip(1),
            listener: 2,
            count: 20,
            expect: "src2",
        },
        // Destination and source inside 127.0.0.4/30 => src4.
        Class {
            src: ip(5),
            dst: ip(5),
            listener: 2,
            count: 20,
            expect: "src4",
        },
        // Destination 127.0.0.5 selects src4's branch; source 127.0.0.2 does not match it and
        // Envoy does not backtrack to src2 => default chain.
        Class {
            src: ip(2),
            dst: ip(5),
            listener: 2,
            count: 20,
            expect: "weighted",
        },
        // Source 127.0.0.1 matches nothing => default chain.
        Class {
            src: ip(1),
            dst: ip(1),
            listener: 2,
            count: 20,
            expect: "weighted",
        },
        // m_vip: the destination prefix "127.0.0.3" => vip.
        Class {
            src: ip(1),
            dst: ip(3),
            listener: 3,
            count: 10,
            expect: "dst3",
        },
        // m_vip: "127.0.0.3" is a prefix of "127.0.0.30" too (a string prefix, not a CIDR).
        Class {
            src: ip(4),
            dst: ip(30),
            listener: 3,
            count: 10,
            expect: "dst3",
        },
        // m_vip: "127.0.0." nests an exact map on the source: 127.0.0.4 => other.
        Class {
            src: ip(4),
            dst: ip(1),
            listener: 3,
            count: 10,
            expect: "src2",
        },
        // m_vip: the nested map has no 127.0.0.1 and nothing else yields => default chain.
        Class {
            src: ip(1),
            dst: ip(1),
            listener: 3,
            count: 10,
            expect: "weighted",
        },
        // m_port_src: this port, source 127.0.0.2/32 => internal.
        Class {
            src: ip(2),
            dst: ip(1),
            listener: 4,
            count: 10,
            expect: "src2",
        },
        // m_port_src: source in 127.0.0.4/30 => internal.
        Class {
            src: ip(5),
            dst: ip(1),
            listener: 4,
            count: 10,
            expect: "src2",
        },
        // m_port_src: any other source, 0.0.0.0/0 => tls.
        Class {
            src: ip(1),
            dst: ip(1),
            listener: 4,
            count: 10,
            expect: "dst3",
        },
        // m_list: the first entry's nested matcher yields a.
        Class {
            src: ip(1),
            dst: ip(9),
            listener: 5,
            count: 10,
            expect: "src4",
        },
        // m_list: the nested matcher yields nothing, so the list goes on: source 127.0.0.2
        // and a destination not ending in ".1" => b.
        Class {
            src: ip(2),
            dst: ip(5),
            listener: 5,
            count: 10,
            expect: "dst3",
        },
        // m_list: nothing matches and there is no on_no_match => the default chain.
        Class {
            src: ip(2),
            dst: ip(1),
            listener: 5,
            count: 10,
            expect: "weighted",
        },
        // m_list: the or_matcher (source 127.0.0.6) names a chain the listener lacks => closed.
        Class {
            src: ip(6),
            dst: ip(5),
            listener: 5,
            count: 5,
            expect: "closed",
        },
        // m_list: the or_matcher (destination 127.0.0.7) => closed, though a default exists.
        Class {
            src: ip(3),
            dst: ip(7),
            listener: 5,
            count: 5,
            expect: "closed",
        },
    ]
}

/// What one run produced: per class, the tags seen in order; per backend, accepted and bytes.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    tags: Vec<Vec<String>>,
    accepted: BTreeMap<String, usize>,
    rx_bytes: BTreeMap<String, u64>,
}

fn run(kind: ProxyKind, bed: &Bed) -> Outcome {
    let admin = free_port();
    let port = free_port();
    let port2 = free_port();
    let port3 = free_port();
    let port4 = free_port();
    let port5 = free_port();
    let port6 = free_port();
    let yaml = render(
        TEMPLATE,
        &[
            ("admin", admin.to_string()),
            ("port", port.to_string()),
            ("port2", port2.to_string()),
            ("port3", port3.to_string()),
            ("port4", port4.to_string()),
            ("port5", port5.to_string()),
            ("port6", port6.to_string()),
            ("clusters", bed.clusters.clone()),
        ],
    );
    let before: BTreeMap<String, (usize, u64)> = bed
        .backends
        .iter()
        .map(|(k, b)| (k.to_string(), (b.accepted(), b.rx_total())))
        .collect();
    let mut proxy = Proxy::start_with(kind, &yaml, ProxyOpts::default());
    let mut out = Outcome::default();
    let mut n_conn = 0u64;
    for (ci, c) in classes().iter().enumerate() {
        let lport = [port, port2, port3, port4, port5, port6][c.listener];
        let dst = SocketAddr::from((c.dst, lport));
        let mut tags = Vec::new();
        for i in 0..c.count {
            let mut s = connect_from(c.src, dst)
                .unwrap_or_else(|e| panic!("{} class {ci} conn {i}: connect: {e}", kind.name()));
            if c.expect == "closed" {
                // Closed without a byte (a FIN or a reset), never reaching a backend.
                let tag = match read_line(&mut s) {
                    Ok(t) if !t.is_empty() => t,
                    _ => "closed".to_string(),
                };
                tags.push(tag);
                continue;
            }
            let tag = read_line(&mut s).unwrap_or_else(|e| {
                panic!(
                    "{} class {ci} conn {i}: tag: {e}\n{}",
                    kind.name(),
                    proxy.logs()
                )
            });
            // A payload whose size depends on the connection, echoed back byte-exact.
            let msg = Prng::bytes(n_conn, 100 + (n_conn as usize % 900));
            let back = ping(&mut s, &msg)
                .unwrap_or_else(|e| panic!("{} class {ci} conn {i}: echo: {e}", kind.name()));
            assert!(back == msg, "{} class {ci} conn {i}: echo", kind.name());
            let _ = s.shutdown(Shutdown::Write);
            let (_, end) = read_all(&mut s, 1024);
            assert_eq!(end, End::Eof, "{} class {ci} conn {i}", kind.name());
            tags.push(tag);
            n_conn += 1;
        }
        out.tags.push(tags);
    }
    // Let the backend connection threads finish their accounting.
    let total: usize = classes()
        .iter()
        .filter(|c| c.expect != "closed")
        .map(|c| c.count)
        .sum();
    let done = wait_until(Duration::from_secs(5), || {
        bed.backends
            .iter()
            .map(|(k, b)| b.accepted() - before[*k].0)
            .sum::<usize>()
            == total
    });
    assert!(
        done,
        "{}: backends did not see {total} connections",
        kind.name()
    );
    std::thread::sleep(Duration::from_millis(200));
    // The connections an action naming no chain closed count as matching no chain.
    let closed: usize = classes()
        .iter()
        .filter(|c| c.expect == "closed")
        .map(|c| c.count)
        .sum();
    let stat = format!("listener.0.0.0.0_{port6}.no_filter_chain_match");
    assert_eq!(
        proxy.wait_stat(&stat, closed as u64, Duration::from_secs(5)),
        closed as u64,
        "{}: {stat}",
        kind.name()
    );
    // As Envoy's, the listener counts only the connections a filter chain took.
    let taken: usize = classes()
        .iter()
        .filter(|c| c.listener == 5 && c.expect != "closed")
        .map(|c| c.count)
        .sum();
    let stat = format!("listener.0.0.0.0_{port6}.downstream_cx_total");
    assert_eq!(proxy.stat(&stat), taken as u64, "{}: {stat}", kind.name());
    for (k, b) in &bed.backends {
        out.accepted
            .insert(k.to_string(), b.accepted() - before[*k].0);
        out.rx_bytes
            .insert(k.to_string(), b.rx_total() - before[*k].1);
    }
    proxy.sigterm();
    let _ = proxy.wait_exit(Duration::from_secs(10));
    out
}

/// Checks one outcome against the routing table of `classes()`.
fn check_model(kind: ProxyKind, o: &Outcome) {
    let mut weighted = (0usize, 0usize);
    for (c, tags) in classes().iter().zip(&o.tags) {
        for (i, t) in tags.iter().enumerate() {
            let ok = match c.expect {
                "weighted" => {
                    if t == "wa" {
                        weighted.0 += 1;
                    } else if t == "wb" {
                        weighted.1 += 1;
                    }
                    t == "wa" || t == "wb"
                }
                "rr" => t == "rr1" || t == "rr3",
                exact => t == exact,
            };
            assert!(
                ok,
                "{}: {} -> {} conn {i} reached {t:?}, expected {}",
                kind.name(),
                c.src,
                c.dst,
                c.expect
            );
        }
    }
    // weighted_clusters 1:3 is random per connection: expect n/4 to wa, binomial sd
    // sqrt(n * 3/16) (~7 for 280); allow 5 sd.
    let n = weighted.0 + weighted.1;
    let want: usize = classes()
        .iter()
        .filter(|c| c.expect == "weighted")
        .map(|c| c.count)
        .sum();
    assert_eq!(n, want, "{}: connections on weighted chains", kind.name());
    let sd = ((n as f64) * 3.0 / 16.0).sqrt();
    assert!(
        (weighted.0 as f64 - n as f64 / 4.0).abs() <= 5.0 * sd,
        "{}: weighted_clusters wa={} wb={} (expected ~{}/{})",
        kind.name(),
        weighted.0,
        weighted.1,
        n / 4,
        n - n / 4
    );
    // Endpoint weights 1:3 with round robin, one worker: exact.
    assert_eq!(o.accepted["rr1"], 50, "{}: rr1", kind.name());
    assert_eq!(o.accepted["rr3"], 150, "{}: rr3", kind.name());
}

#[test]
fn switchyard_routes_like_envoy() {
    let selected = selected_proxy();
    if !require(
        envoy_available(),
        &format!(
            "differential test needs Envoy at {} (set ENVOY_BIN or run ci/install-deps)",
            envoy_bin().display()
        ),
    ) {
        return;
    }
    let bed = bed();
    let envoy = run(ProxyKind::Envoy, &bed);
    eprintln!("envoy: accepted {:?}", envoy.accepted);
    check_model(ProxyKind::Envoy, &envoy);
    if selected == ProxyKind::Envoy {
        skip_unsupported(
            selected,
            "Switchyard side of the differential test not run (SWITCHYARD_TEST_PROXY=envoy)",
        );
        return;
    }
    let sy = run(ProxyKind::Switchyard, &bed);
    eprintln!("switchyard: accepted {:?}", sy.accepted);
    check_model(ProxyKind::Switchyard, &sy);
    // Deterministic parts must agree: filter-chain classes connection for connection; the round
    // robin class up to where the schedule starts (Envoy's EDF starts at a random offset), i.e.
    // Switchyard's sequence is Envoy's shifted by less than one period (sum of weights = 4).
    for (ci, c) in classes().iter().enumerate() {
        match c.expect {
            "weighted" => {}
            "rr" => assert!(
                shifted_within(&envoy.tags[ci], &sy.tags[ci], 4),
                "class {ci}: round-robin schedule differs beyond a start offset:\nenvoy {:?}\nswitchyard {:?}",
                envoy.tags[ci],
                sy.tags[ci]
            ),
            _ => assert_eq!(
                envoy.tags[ci], sy.tags[ci],
                "class {ci} ({} -> {}): per-connection backends differ",
                c.src, c.dst
            ),
        }
    }
    for k in ["dst3", "src2", "src4", "rr1", "rr3"] {
        assert_eq!(envoy.accepted[k], sy.accepted[k], "{k}: connections");
    }
    // Bytes: exact per backend where routing is per-connection deterministic; for the round
    // robin pair (start offset) and the weighted pair (random) the pair's total is exact.
    for k in ["dst3", "src2", "src4"] {
        assert_eq!(envoy.rx_bytes[k], sy.rx_bytes[k], "{k}: bytes");
    }
    for (a, b) in [("rr1", "rr3"), ("wa", "wb")] {
        assert_eq!(
            envoy.rx_bytes[a] + envoy.rx_bytes[b],
            sy.rx_bytes[a] + sy.rx_bytes[b],
            "{a}+{b}: bytes"
        );
    }
    let ew = envoy.accepted["wa"] + envoy.accepted["wb"];
    let sw = sy.accepted["wa"] + sy.accepted["wb"];
    assert_eq!(ew, sw, "connections to the weighted clusters");
}

/// True if `b` equals `a` shifted left or right by fewer than `period` places (compared on the
/// overlap), i.e. the same periodic schedule started at another point.
fn shifted_within(a: &[String], b: &[String], period: usize) -> bool {
    if a.len() != b.len() || a.len() < 2 * period {
        return false;
    }
    (0..period).any(|k| {
        let n = a.len() - k;
        a[k..] == b[..n] || b[k..] == a[..n]
    })
}
