//! STRICT_DNS and LOGICAL_DNS clusters through real sockets, their names answered by a
//! [`DnsServer`] the test runs on loopback (never the machine's resolver): every address of a
//! STRICT_DNS name gets traffic, a changed answer moves new connections while established
//! ones keep their backend, a name that stops resolving keeps its last good hosts,
//! `respect_dns_ttl`, LOGICAL_DNS's first address, every `dns_lookup_family`, TCP queries, and
//! `validate` resolving nothing. Each bootstrap points c-ares' `resolvers` at the test's
//! server, so the same file runs on Envoy (`SWITCHYARD_TEST_PROXY=envoy`): Envoy's behaviour
//! is the reference, and where Switchyard differs on purpose (a name that stops resolving) the
//! test says what each does.
//!
//! Backends listen on 127.0.0.2, 127.0.0.3 and [::1] at one port, since every address a name
//! resolves to gets the endpoint's port.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const B2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// How long a changed answer may take to reach new connections: the refresh rate (200 ms)
/// with room for a loaded machine.
const FOLLOW: Duration = Duration::from_secs(5);

/// A port free on every one of `ips`.
fn port_free_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::new(*ip, p)).is_ok())
        {
            return p;
        }
    }
    panic!("no port free on {ips:?}");
}

/// A tagged backend on `ip:port`.
fn tagged_at(ip: impl Into<IpAddr>, port: u16, tag: &str) -> Backend {
    Backend::start_at(SocketAddr::new(ip.into(), port), Mode::Tagged(tag.into()))
}

/// A DNS cluster item: `kind` STRICT_DNS or LOGICAL_DNS, one endpoint `host:port`, resolved
/// by the test's server (c-ares `resolvers`, no search domains), refreshed every 200 ms;
/// `extra` are more cluster fields (indented 4).
fn dns_cluster(
    name: &str,
    kind: &str,
    host: &str,
    port: u16,
    dns: &DnsServer,
    extra: &str,
) -> String {
    let dns_port = dns.port();
    format!(
        r#"  - name: {name}
    type: {kind}
    connect_timeout: 1s
    dns_refresh_rate: 0.2s
{extra}    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{{socket_address: {{address: 127.0.0.1, port_value: {dns_port}}}}}]
        dns_resolver_options: {{no_default_search_domain: true}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}
"#
    )
}

/// One listener per `(name, port)` routing to the cluster of that name.
fn listeners(routes: &[(&str, u16)]) -> String {
    routes
        .iter()
        .map(|(name, port)| tcp_listener(name, *port, name, name))
        .collect()
}

/// The backend tag behind `port`, retrying a connection the proxy closed at once (no host
/// yet) until `timeout`.
fn tag_via(port: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        match which_backend(local(port)) {
            Ok(tag) if !tag.is_empty() => return tag,
            _ if Instant::now() >= deadline => return String::new(),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits until a new connection through `port` reaches `want`; how long it took.
fn wait_tag(port: u16, want: &str, timeout: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    wait_until(timeout, || tag_via(port, Duration::from_secs(1)) == want).then(|| t0.elapsed())
}

/// An open connection through the proxy to a tagged backend: its tag, and the stream.
fn hold(port: u16) -> (String, TcpStream) {
    let mut s = connect_retry(local(port), Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tag = read_line(&mut s).expect("tag line");
    (tag, s)
}

/// The stream still relays both ways (the backend echoes).
fn still_echoes(s: &mut TcpStream) {
    s.write_all(b"still here\n").expect("write");
    let mut back = [0u8; 11];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"still here\n");
}

const V4_ONLY: &str = "    dns_lookup_family: V4_ONLY\n";

/// A bootstrap with one DNS cluster `name` of type `kind`, whose endpoint is
/// `<name>.switchyard.test:<port>`, behind one listener; and the listener's port.
fn one_cluster(name: &str, kind: &str, port: u16, dns: &DnsServer, extra: &str) -> (String, u16) {
    let lport = free_port();
    let host = format!("{name}.switchyard.test");
    let yaml = bootstrap(
        free_port(),
        &listeners(&[(name, lport)]),
        &dns_cluster(name, kind, &host, port, dns, extra),
    );
    (yaml, lport)
}

/// The proxy in front of [`one_cluster`], and its listener's port. `None`: skip.
fn start_one(
    name: &str,
    kind: &str,
    port: u16,
    dns: &DnsServer,
    extra: &str,
) -> Option<(Proxy, u16)> {
    let (yaml, lport) = one_cluster(name, kind, port, dns, extra);
    start_selected(&yaml).map(|p| (p, lport))
}

/// Waits until `stat >= want`; the last value.
fn wait_at_least(proxy: &Proxy, stat: &str, want: u64, timeout: Duration) -> u64 {
    let mut last = 0;
    wait_until(timeout, || {
        last = proxy.stat(stat);
        last >= want
    });
    last
}

#[test]
fn strict_dns_sends_traffic_to_every_address_and_counts_envoys_stats() {
    let port = port_free_on(&[B2.into(), B3.into()]);
    let (_b2, _b3) = (tagged_at(B2, port, "b2"), tagged_at(B3, port, "b3"));
    let dns = DnsServer::start();
    dns.set_a("svc.switchyard.test", &[B2, B3]);
    let Some((proxy, lport)) = start_one("svc", "STRICT_DNS", port, &dns, V4_ONLY) else {
        return;
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(tag_via(lport, Duration::from_secs(5)));
    }
    assert_eq!(
        seen.iter().map(String::as_str).collect::<Vec<_>>(),
        ["b2", "b3"],
        "{}",
        proxy.logs()
    );
    assert_eq!(proxy.stat("cluster.svc.membership_total"), 2);
    assert_eq!(proxy.stat("cluster.svc.membership_change"), 1);
    // Unchanged answers refresh without rebuilding.
    wait_at_least(&proxy, "cluster.svc.update_no_rebuild", 2, FOLLOW);
    let stats = proxy.stats();
    for name in [
        "cluster.svc.update_attempt",
        "cluster.svc.update_success",
        "cluster.svc.update_no_rebuild",
        "dns.cares.resolve_total",
    ] {
        assert!(
            stats.get(name).is_some_and(|v| *v >= 1),
            "{name}: {stats:?}"
        );
    }
    for name in [
        "cluster.svc.update_failure",
        "cluster.svc.update_empty",
        "dns.cares.not_found",
        "dns.cares.timeouts",
        "dns.cares.get_addr_failure",
        "dns.cares.pending_resolutions",
    ] {
        assert!(stats.contains_key(name), "{name} missing: {stats:?}");
    }
    // `/clusters` shows each resolved host with the name it came from.
    let clusters = proxy.get("/clusters").body;
    for ip in [B2, B3] {
        let line = format!("svc::{ip}:{port}::hostname::svc.switchyard.test");
        assert!(clusters.contains(&line), "{line} not in\n{clusters}");
    }
    let prom = proxy.get("/stats/prometheus").body;
    assert!(
        prom.contains("envoy_cluster_update_success{envoy_cluster_name=\"svc\"}"),
        "{prom}"
    );
}

#[test]
fn a_changed_answer_moves_new_connections_and_established_ones_stay() {
    let port = port_free_on(&[B2.into(), B3.into()]);
    let (_b2, _b3) = (tagged_at(B2, port, "b2"), tagged_at(B3, port, "b3"));
    let dns = DnsServer::start();
    dns.set_a("move.switchyard.test", &[B2]);
    let Some((proxy, lport)) = start_one("move", "STRICT_DNS", port, &dns, V4_ONLY) else {
        return;
    };
    let (tag, mut established) = hold(lport);
    assert_eq!(tag, "b2", "{}", proxy.logs());
    dns.set_a("move.switchyard.test", &[B3]);
    let took = wait_tag(lport, "b3", FOLLOW)
        .unwrap_or_else(|| panic!("new connections never reached b3\n{}", proxy.logs()));
    eprintln!("answer followed in {took:?}");
    // Only the new address from now on.
    for _ in 0..10 {
        assert_eq!(tag_via(lport, Duration::from_secs(5)), "b3");
    }
    still_echoes(&mut established);
    assert_eq!(proxy.stat("cluster.move.membership_total"), 1);
    assert!(proxy.stat("cluster.move.membership_change") >= 2);
}

#[test]
fn a_name_that_stops_resolving_keeps_its_hosts_on_switchyard() {
    let port = port_free_on(&[B2.into()]);
    let _b2 = tagged_at(B2, port, "b2");
    let dns = DnsServer::start();
    let name = "gone.switchyard.test";
    dns.set_a(name, &[B2]);
    let Some((proxy, lport)) = start_one("gone", "STRICT_DNS", port, &dns, V4_ONLY) else {
        return;
    };
    assert_eq!(tag_via(lport, Duration::from_secs(5)), "b2");
    // SERVFAIL: both proxies keep the host and count a failure.
    dns.servfail(name);
    let failures = wait_at_least(&proxy, "cluster.gone.update_failure", 2, FOLLOW);
    assert!(failures >= 2, "update_failure {failures}\n{}", proxy.logs());
    assert!(proxy.stat("dns.cares.get_addr_failure") >= 2);
    assert_eq!(tag_via(lport, Duration::from_secs(5)), "b2");
    // NXDOMAIN.
    dns.remove(name);
    let not_found = wait_at_least(&proxy, "dns.cares.not_found", 2, FOLLOW);
    assert!(not_found >= 2, "not_found {not_found}\n{}", proxy.logs());
    match proxy.kind {
        ProxyKind::Switchyard => {
            // The last good host stays; the NXDOMAIN counts as a failed update.
            let before = proxy.stat("cluster.gone.update_failure");
            wait_at_least(&proxy, "cluster.gone.update_failure", before + 2, FOLLOW);
            assert_eq!(proxy.stat("cluster.gone.membership_total"), 1);
            assert_eq!(tag_via(lport, Duration::from_secs(5)), "b2");
        }
        ProxyKind::Envoy => {
            // Envoy's c-ares resolver takes NXDOMAIN as an empty answer: every host goes.
            assert_eq!(
                proxy.wait_stat("cluster.gone.membership_total", 0, FOLLOW),
                0,
                "Envoy keeps the host after NXDOMAIN: the documented difference is wrong"
            );
        }
    }
}

#[test]
fn respect_dns_ttl_resolves_again_after_the_ttl() {
    let port = port_free_on(&[B2.into()]);
    let _b2 = tagged_at(B2, port, "b2");
    let dns = DnsServer::start();
    for name in ["ttl.switchyard.test", "rate.switchyard.test"] {
        dns.set(
            name,
            DnsRecord {
                a: vec![B2],
                ttl: 1,
                ..Default::default()
            },
        );
    }
    // A 30 s refresh rate: only the TTL can bring a second query within the test.
    let slow = "    dns_lookup_family: V4_ONLY\n    dns_refresh_rate: 30s\n";
    let yaml = bootstrap(
        free_port(),
        &listeners(&[("ttl", free_port()), ("rate", free_port())]),
        &(dns_cluster(
            "ttl",
            "STRICT_DNS",
            "ttl.switchyard.test",
            port,
            &dns,
            &format!("{slow}    respect_dns_ttl: true\n"),
        ) + &dns_cluster(
            "rate",
            "STRICT_DNS",
            "rate.switchyard.test",
            port,
            &dns,
            slow,
        ))
            .replace("    dns_refresh_rate: 0.2s\n", ""),
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    assert!(
        wait_until(Duration::from_secs(8), || dns
            .queries("ttl.switchyard.test")
            .len()
            >= 3),
        "TTL 1 s: {} queries\n{}",
        dns.queries("ttl.switchyard.test").len(),
        proxy.logs()
    );
    // Each query a TTL after the one before (not sooner).
    let at: Vec<Instant> = dns
        .queries("ttl.switchyard.test")
        .iter()
        .map(|q| q.at)
        .collect();
    for pair in at.windows(2).take(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(800), "{gap:?} between queries");
    }
    assert_eq!(
        dns.queries("rate.switchyard.test").len(),
        1,
        "without respect_dns_ttl the refresh rate (30 s) decides"
    );
}

#[test]
fn logical_dns_uses_the_first_address_and_follows_the_latest_answer() {
    let port = port_free_on(&[B2.into(), B3.into()]);
    let (_b2, _b3) = (tagged_at(B2, port, "b2"), tagged_at(B3, port, "b3"));
    let dns = DnsServer::start();
    let name = "logical.switchyard.test";
    dns.set_a(name, &[B2, B3]);
    let Some((proxy, lport)) = start_one("logical", "LOGICAL_DNS", port, &dns, V4_ONLY) else {
        return;
    };
    for _ in 0..10 {
        assert_eq!(
            tag_via(lport, Duration::from_secs(5)),
            "b2",
            "{}",
            proxy.logs()
        );
    }
    assert_eq!(proxy.stat("cluster.logical.membership_total"), 1);
    let (_, mut established) = hold(lport);
    dns.set_a(name, &[B3, B2]);
    wait_tag(lport, "b3", FOLLOW)
        .unwrap_or_else(|| panic!("never followed the new first address\n{}", proxy.logs()));
    for _ in 0..5 {
        assert_eq!(tag_via(lport, Duration::from_secs(5)), "b3");
    }
    still_echoes(&mut established);
}

#[test]
fn dns_lookup_family_picks_the_addresses_as_envoy_does() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let port = port_free_on(&[B2.into(), v6]);
    let (_b4, _b6) = (tagged_at(B2, port, "v4"), tagged_at(v6, port, "v6"));
    let dns = DnsServer::start();
    dns.set(
        "dual.switchyard.test",
        DnsRecord {
            a: vec![B2],
            aaaa: vec![Ipv6Addr::LOCALHOST],
            ttl: 1,
            ..Default::default()
        },
    );
    dns.set_a("v4.switchyard.test", &[B2]);
    // (cluster, name, family, the tags its connections reach)
    let cases: [(&str, &str, &str, &[&str]); 6] = [
        ("auto", "dual.switchyard.test", "AUTO", &["v6"]),
        ("auto_v4", "v4.switchyard.test", "AUTO", &["v4"]),
        ("v4_only", "dual.switchyard.test", "V4_ONLY", &["v4"]),
        ("v6_only", "dual.switchyard.test", "V6_ONLY", &["v6"]),
        (
            "v4_preferred",
            "dual.switchyard.test",
            "V4_PREFERRED",
            &["v4"],
        ),
        ("all", "dual.switchyard.test", "ALL", &["v4", "v6"]),
    ];
    let ports: Vec<u16> = cases.iter().map(|_| free_port()).collect();
    let routes: Vec<(&str, u16)> = cases.iter().zip(&ports).map(|(c, p)| (c.0, *p)).collect();
    let clusters: String = cases
        .iter()
        .map(|(cluster, name, family, _)| {
            dns_cluster(
                cluster,
                "STRICT_DNS",
                name,
                port,
                &dns,
                &format!("    dns_lookup_family: {family}\n"),
            )
        })
        .collect();
    let yaml = bootstrap(free_port(), &listeners(&routes), &clusters);
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    for ((cluster, _, family, want), lport) in cases.iter().zip(&ports) {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            seen.insert(tag_via(*lport, Duration::from_secs(5)));
        }
        let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
        assert_eq!(seen, *want, "{cluster} ({family})\n{}", proxy.logs());
        assert_eq!(
            proxy.stat(&format!("cluster.{cluster}.membership_total")),
            want.len() as u64,
            "{cluster}"
        );
    }
    // AUTO asked AAAA first for the name that has none, then A.
    let types: Vec<u16> = dns
        .queries("v4.switchyard.test")
        .iter()
        .map(|q| q.qtype)
        .collect();
    assert_eq!(types.first(), Some(&TYPE_AAAA), "{types:?}");
    assert!(types.contains(&TYPE_A), "{types:?}");
}

#[test]
fn use_tcp_for_dns_lookups_queries_over_tcp() {
    let port = port_free_on(&[B2.into()]);
    let _b2 = tagged_at(B2, port, "b2");
    let dns = DnsServer::start();
    let name = "tcp.switchyard.test";
    dns.set_a(name, &[B2]);
    let (yaml, lport) = one_cluster("tcp", "STRICT_DNS", port, &dns, V4_ONLY);
    let yaml = yaml.replace(
        "dns_resolver_options: {no_default_search_domain: true}",
        "dns_resolver_options: {no_default_search_domain: true, use_tcp_for_dns_lookups: true}",
    );
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    assert_eq!(
        tag_via(lport, Duration::from_secs(5)),
        "b2",
        "{}",
        proxy.logs()
    );
    let queries = dns.queries(name);
    assert!(!queries.is_empty());
    assert!(queries.iter().all(|q| q.tcp), "{queries:?}");
}

/// `validate` checks a DNS cluster without resolving its name (one that does not exist, on a
/// resolver that would log the query). Envoy accepts the file too.
#[test]
fn validate_resolves_no_name() {
    let dns = DnsServer::start();
    let yaml = bootstrap(
        free_port(),
        &listeners(&[("nowhere", free_port())]),
        &dns_cluster(
            "nowhere",
            "STRICT_DNS",
            "does-not-exist.invalid",
            9,
            &dns,
            "",
        ),
    );
    let dir = test_dir("dns-validate");
    let file = dir.join("dns.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let kind = selected_proxy();
    if !require(proxy_available(kind), kind.name()) {
        return;
    }
    let out = match kind {
        ProxyKind::Switchyard => std::process::Command::new(switchyard_bin())
            .args(["validate", "-c"])
            .arg(&file)
            .output()
            .expect("run switchyard validate"),
        ProxyKind::Envoy => envoy_validate(&file),
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    match kind {
        ProxyKind::Switchyard => {
            assert!(dns.all_queries().is_empty(), "{:?}", dns.all_queries());
        }
        // Envoy's validate mode starts the cluster's first resolution (it asks for AAAA), and
        // accepts the config whatever the answer.
        ProxyKind::Envoy => skip_unsupported(kind, "validate sends a DNS query"),
    }
}

/// Weights, health checks: three names, weights 1 and 3 on two live backends and a third
/// name whose address has no backend. The health check finds it down, and the two live
/// hosts share the connections by weight, as static hosts do.
#[test]
fn weights_and_health_checks_apply_to_dns_hosts() {
    const B4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
    let port = port_free_on(&[B2.into(), B3.into(), B4.into()]);
    let (_b2, _b3) = (tagged_at(B2, port, "b2"), tagged_at(B3, port, "b3"));
    let dns = DnsServer::start();
    for (name, ip) in [("w1", B2), ("w3", B3), ("dead", B4)] {
        dns.set_a(&format!("{name}.switchyard.test"), &[ip]);
    }
    let endpoint = |name: &str, weight: u32| {
        format!(
            "        - endpoint: {{address: {{socket_address: {{address: {name}.switchyard.test, port_value: {port}}}}}}}\n          load_balancing_weight: {weight}\n"
        )
    };
    let one = dns_cluster(
        "weighted",
        "STRICT_DNS",
        "w1.switchyard.test",
        port,
        &dns,
        V4_ONLY,
    );
    let first = one.lines().last().unwrap().to_string() + "\n";
    let cluster = one.replace(
        &first,
        &(endpoint("w1", 1) + &endpoint("w3", 3) + &endpoint("dead", 1)),
    ) + "    common_lb_config:\n      update_merge_window: 0s\n    health_checks:\n    - timeout: 0.2s\n      interval: 0.2s\n      no_traffic_interval: 0.2s\n      unhealthy_threshold: 1\n      healthy_threshold: 1\n      tcp_health_check: {}\n";
    let lport = free_port();
    let yaml = bootstrap(free_port(), &listeners(&[("weighted", lport)]), &cluster);
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    assert_eq!(
        proxy.stat("cluster.weighted.membership_total"),
        3,
        "{}",
        proxy.logs()
    );
    assert_eq!(
        proxy.wait_stat("cluster.weighted.membership_healthy", 2, FOLLOW),
        2,
        "{}",
        proxy.logs()
    );
    let (mut n2, mut n3) = (0usize, 0usize);
    for i in 0..400 {
        match tag_via(lport, Duration::from_secs(5)).as_str() {
            "b2" => n2 += 1,
            "b3" => n3 += 1,
            other => panic!("connection {i}: {other:?}\n{}", proxy.logs()),
        }
    }
    eprintln!("weights 1:3 over DNS hosts: b2={n2} b3={n3}");
    assert!(
        n2.abs_diff(100) <= 4 && n3.abs_diff(300) <= 4,
        "b2={n2} b3={n3}"
    );
}

/// A reload that changes a DNS cluster's name: new connections follow the new name's answer,
/// a held connection keeps its backend. (Envoy reloads only by hot restart or xDS.)
#[test]
fn a_reload_to_another_name_moves_new_connections_only() {
    let port = port_free_on(&[B2.into(), B3.into()]);
    let (_b2, _b3) = (tagged_at(B2, port, "b2"), tagged_at(B3, port, "b3"));
    let dns = DnsServer::start();
    dns.set_a("re.switchyard.test", &[B2]);
    dns.set_a("again.switchyard.test", &[B3]);
    let (yaml, lport) = one_cluster("re", "STRICT_DNS", port, &dns, V4_ONLY);
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "Envoy reloads a bootstrap only by hot restart");
        return;
    }
    let Some(proxy) = start_selected(&yaml) else {
        return;
    };
    let (tag, mut held) = hold(lport);
    assert_eq!(tag, "b2", "{}", proxy.logs());
    proxy.rewrite_config(&yaml.replace("re.switchyard.test", "again.switchyard.test"));
    proxy.sighup();
    wait_tag(lport, "b3", FOLLOW)
        .unwrap_or_else(|| panic!("never moved to the new name\n{}", proxy.logs()));
    still_echoes(&mut held);
    assert_eq!(proxy.stat("cluster.re.membership_total"), 1);
}
