//! Valid configs compile to the FIB they should: defaults, weighted clusters, filter-chain
//! matches, access logs, and state shared across generations.

use std::path::Path;
use std::sync::Arc;
use switchyard_control::compile::{compile, CompileCache, DEFAULT_BACKLOG};
use switchyard_control::config::Format;
use switchyard_control::load::{load_rib, parse_rib};
use switchyard_control::rib::{EndpointConfig, Rib};
use switchyard_control::stats::StatsRegistry;
use switchyard_dataplane::accesslog::{LogFormat, LogPath, Operator, Segment};
use switchyard_dataplane::fib::{
    CidrRange, CircuitBreakers, ClusterId, Detected, Fib, HashLookup, LbPolicy, OriginalSrc,
    RingHashFunction, Route, SocketOption, UpstreamBind, MAX_FILTER_CHAINS, TRANSPORT_TLS,
};

fn rib(name: &str) -> Rib {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs/valid")
        .join(name);
    load_rib(&path).unwrap_or_else(|e| panic!("{name}: {e}")).0
}

fn build(rib: &Rib) -> Fib {
    compile(rib, 7, &StatsRegistry::new(2), &mut CompileCache::new()).expect("compiles")
}

fn addr(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

#[test]
fn minimal_gets_envoy_defaults() {
    let rib = rib("minimal.yaml");
    assert_eq!(
        rib.admin.address, None,
        "no admin.address, no admin (as in Envoy)"
    );
    let fib = build(&rib);
    assert_eq!(fib.generation, 7);
    let l = &fib.listeners[0];
    assert_eq!(
        &*l.name, "127.0.0.1:10000",
        "an unnamed listener is named by its address"
    );
    assert_eq!(l.address, addr("127.0.0.1:10000"));
    assert_eq!(l.backlog, DEFAULT_BACKLOG);
    assert_eq!(&*l.stats.name, "127.0.0.1_10000");
    assert!(l.default_chain.is_none());
    let tp = &l.filter_chains[0].tcp_proxy;
    assert!(matches!(tp.route, Route::Cluster(ClusterId(0))));
    assert_eq!(tp.idle_timeout_ms, Some(3_600_000));
    assert_eq!(tp.max_connect_attempts, 1);
    assert!(tp.access_logs.is_empty());
    assert_eq!(&*tp.stats.name, "echo");
    let c = &fib.clusters[0];
    assert_eq!(&*c.name, "echo");
    assert_eq!(c.connect_timeout_ms, 5000);
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].address, addr("127.0.0.1:9000"));
    assert_eq!(c.endpoints[0].weight, 1);
}

#[test]
fn weighted_clusters_from_json() {
    let rib = rib("weighted.json");
    assert_eq!(rib.node.id, "node-1");
    assert_eq!(rib.node.cluster, "gateways");
    let fib = build(&rib);
    let tp = &fib.listener_by_name("split").unwrap().filter_chains[0].tcp_proxy;
    let Route::Weighted(w) = &tp.route else {
        panic!("{:?}", tp.route)
    };
    assert_eq!(w.total_weight, 4);
    let names: Vec<_> = w
        .entries
        .iter()
        .map(|e| (&*e.name, e.cluster, e.weight, e.cumulative))
        .collect();
    assert_eq!(
        names,
        [
            ("blue", Some(ClusterId(0)), 3, 3),
            ("green", Some(ClusterId(1)), 1, 4)
        ]
    );
    assert_eq!(&*w.pick(0).name, "blue");
    assert_eq!(&*w.pick(3).name, "green");
    assert_eq!(tp.max_connect_attempts, 3);
    assert_eq!(tp.idle_timeout_ms, Some(30_000));
    let blue = fib.cluster(ClusterId(0));
    assert_eq!(blue.lb_policy, LbPolicy::LeastRequest { choice_count: 3 });
    assert_eq!(blue.connect_timeout_ms, 2000);
    assert_eq!(
        blue.endpoints.iter().map(|e| e.weight).collect::<Vec<_>>(),
        [1, 2]
    );
    let green = fib.cluster(ClusterId(1));
    assert_eq!(green.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(green.connect_timeout_ms, 5000);
}

#[test]
fn filter_chains_and_access_logs() {
    let rib = rib("filter_chains.yaml");
    assert_eq!(rib.admin.socket(), Some(addr("[::1]:15001")));
    let fib = build(&rib);
    let l = fib.listener_by_name("wildcard").unwrap();
    assert!(l.needs_local_address() && l.needs_remote_address());

    let web = &l.filter_chains[0];
    assert_eq!(&*web.name, "port_80");
    assert_eq!(web.matcher.destination_port, Some(80));
    assert_eq!(
        web.tcp_proxy.idle_timeout_ms, None,
        "0s disables the idle timeout"
    );
    let sink = &web.tcp_proxy.access_logs[0];
    assert_eq!(sink.path, LogPath::Stderr);
    assert_eq!(
        sink.format,
        LogFormat::Text(vec![
            Segment::Literal("[".into()),
            Segment::Operator(Operator::StartTime),
            Segment::Literal("] ".into()),
            Segment::Operator(Operator::BytesSent),
            Segment::Literal(" ".into()),
            Segment::Operator(Operator::UpstreamHost),
            Segment::Literal("\n".into()),
        ])
    );

    let internal = &l.filter_chains[1];
    let m = &internal.matcher;
    assert_eq!(
        m.prefix_ranges,
        [CidrRange {
            address: "10.1.0.0".parse().unwrap(),
            prefix_len: 16
        }],
        "host bits are cleared"
    );
    assert_eq!(m.source_prefix_ranges.len(), 2);
    assert_eq!(
        m.source_prefix_ranges[1].address,
        "fd00::".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(m.source_ports, [5000, 5001]);
    assert!(matches!(&internal.tcp_proxy.route, Route::Missing(n) if &**n == "not_defined_yet"));
    assert_eq!(internal.tcp_proxy.idle_timeout_ms, Some(1500));
    let [json, legacy] = &internal.tcp_proxy.access_logs[..] else {
        panic!("two logs")
    };
    assert_eq!(
        json.path,
        LogPath::File("/tmp/switchyard-access.log".into())
    );
    assert_eq!(
        json.format,
        LogFormat::Json(vec![
            ("bytes".into(), Segment::Operator(Operator::BytesSent)),
            ("kind".into(), Segment::Literal("tcp".into())),
            ("upstream".into(), Segment::Operator(Operator::UpstreamHost)),
        ])
    );
    assert_eq!(
        legacy.format,
        LogFormat::Text(vec![
            Segment::Operator(Operator::Duration),
            Segment::Literal("\n".into())
        ])
    );
    assert!(
        !Arc::ptr_eq(json, legacy),
        "same file, different formats: two sinks"
    );

    let default = l.default_chain.as_ref().unwrap();
    assert_eq!(default.tcp_proxy.access_logs[0].path, LogPath::Stdout);
    assert_eq!(
        default.tcp_proxy.access_logs[0].format,
        LogFormat::EnvoyDefault
    );

    // Envoy's matching order on the compiled table.
    let chain =
        |local: &str, remote: &str| l.match_chain(addr(local), addr(remote)).map(|c| &*c.name);
    assert_eq!(
        chain("10.1.5.5:80", "192.168.0.7:5000"),
        Some("internal_sources")
    );
    // Envoy narrows criterion by criterion and never backtracks: the /16 wins on destination,
    // then the source port does not match, so the connection falls to the default chain.
    assert_eq!(chain("10.1.5.5:80", "192.168.0.7:6000"), Some("fallback"));
    assert_eq!(chain("10.2.5.5:80", "192.168.0.7:5000"), Some("port_80"));
    assert_eq!(chain("10.1.5.5:81", "192.168.0.7:5000"), Some("fallback"));

    let c = &fib.clusters[0];
    assert_eq!(c.lb_policy, LbPolicy::Random);
    assert_eq!(c.connect_timeout_ms, 250);
    let eps: Vec<_> = c.endpoints.iter().map(|e| (e.address, e.weight)).collect();
    assert_eq!(eps, [(addr("[::1]:8080"), 3), (addr("127.0.0.1:8081"), 1)]);
}

#[test]
fn stats_and_sinks_survive_generations() {
    let rib = rib("filter_chains.yaml");
    let stats = StatsRegistry::new(2);
    let mut cache = CompileCache::new();
    let one = compile(&rib, 1, &stats, &mut cache).expect("compiles");
    let two = compile(&rib, 2, &stats, &mut cache).expect("compiles");
    let (a, b) = (&one.listeners[0], &two.listeners[0]);
    assert!(Arc::ptr_eq(&a.stats, &b.stats));
    for (x, y) in a.filter_chains.iter().zip(&b.filter_chains) {
        assert!(Arc::ptr_eq(&x.tcp_proxy.stats, &y.tcp_proxy.stats));
        for (s, t) in x.tcp_proxy.access_logs.iter().zip(&y.tcp_proxy.access_logs) {
            assert!(Arc::ptr_eq(s, t));
        }
    }
    assert!(Arc::ptr_eq(&one.clusters[0].stats, &two.clusters[0].stats));
    assert!(Arc::ptr_eq(
        &one.clusters[0].endpoints[0].stats,
        &two.clusters[0].endpoints[0].stats
    ));
    assert_eq!(
        cache.sinks.all().len(),
        4,
        "stderr, two file formats, stdout"
    );

    // A new generation without access logs: the old sinks go once the old FIBs do.
    let (bare, _) = parse_rib(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/valid/minimal.yaml"),
        )
        .unwrap(),
        Format::Yaml,
    )
    .unwrap();
    let three = compile(&bare, 3, &stats, &mut cache).expect("compiles");
    assert_eq!(
        cache.sinks.prune_unused(),
        0,
        "generations 1 and 2 still hold them"
    );
    drop((one, two));
    assert_eq!(cache.sinks.prune_unused(), 4);
    assert!(cache.sinks.all().is_empty());
    drop(three);
}

/// `rib` with the endpoints of cluster `index` replaced by `endpoints`.
fn with_endpoints(rib: &Rib, index: usize, endpoints: &[(&str, u32)]) -> Rib {
    let mut changed = rib.clone();
    let c = Arc::make_mut(&mut changed.clusters[index]);
    c.endpoints = endpoints
        .iter()
        .map(|(a, weight)| EndpointConfig {
            address: addr(a),
            weight: *weight,
            priority: 0,
            locality: Default::default(),
            tunnel: None,
        })
        .collect();
    changed
}

#[test]
fn a_change_rebuilds_only_the_changed_cluster_and_hosts_keep_their_stats() {
    let rib = rib("weighted.json");
    assert!(rib.clusters.len() >= 2, "the test needs two clusters");
    let stats = StatsRegistry::new(2);
    let mut cache = CompileCache::new();
    let one = compile(&rib, 1, &stats, &mut cache).expect("compiles");
    let kept = one.clusters[0].endpoints[0].address.to_string();
    let next = with_endpoints(&rib, 0, &[(&kept, 1), ("127.0.0.9:9", 2)]);
    let two = compile(&next, 2, &stats, &mut cache).expect("compiles");
    assert_eq!(cache.reused(), rib.clusters.len() - 1);
    for i in 1..rib.clusters.len() {
        assert!(
            Arc::ptr_eq(&one.clusters[i], &two.clusters[i]),
            "cluster {i} shared"
        );
    }
    let (old, new) = (&one.clusters[0], &two.clusters[0]);
    assert!(!Arc::ptr_eq(old, new));
    assert!(Arc::ptr_eq(&old.stats, &new.stats), "cluster stats by name");
    assert!(
        Arc::ptr_eq(&old.endpoints[0].stats, &new.endpoints[0].stats),
        "a host present in both keeps its block"
    );
    assert_eq!(new.endpoints[1].address, addr("127.0.0.9:9"));
    assert_eq!(new.endpoints[1].weight, 2);
    assert_eq!(
        Arc::strong_count(&new.endpoints[1].stats),
        1,
        "a new host starts fresh"
    );

    // Clusters removed and reordered: matched by name, still shared.
    let mut fewer = next.clone();
    let first = fewer.clusters.remove(0);
    fewer.clusters.push(first);
    let three = compile(&fewer, 3, &stats, &mut cache).expect("compiles");
    assert_eq!(cache.reused(), rib.clusters.len());
    let last = three.clusters.last().unwrap();
    assert!(Arc::ptr_eq(last, &two.clusters[0]));
    assert_eq!(build(&fewer).clusters.len(), three.clusters.len());
}

fn chains_config(matches: &[&str]) -> String {
    let chains: Vec<String> = matches
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                r#"{{"filter_chain_match": {m}, "filters": [{{"name": "t", "typed_config": {{
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "s{i}", "cluster": "c"}}}}]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"static_resources": {{"listeners": [{{"name": "l", "address": {{"socket_address":
        {{"address": "0.0.0.0", "port_value": 10000}}}}, "filter_chains": [{}]}}]}}}}"#,
        chains.join(",")
    )
}

#[test]
fn source_type_and_direct_source_match_and_ask_for_addresses() {
    let same = r#"{"source_type": "SAME_IP_OR_LOOPBACK"}"#;
    let direct = r#"{"source_type": "EXTERNAL", "direct_source_prefix_ranges":
        [{"address_prefix": "192.168.0.0", "prefix_len": 16}]}"#;
    let fib = build(
        &parse_rib(&chains_config(&[same, direct, "{}"]), Format::Json)
            .unwrap()
            .0,
    );
    let l = &fib.listeners[0];
    // A wildcard listener: the local address tells a same-IP source.
    assert!(l.needs_local_address() && l.needs_remote_address());
    let pick = |local: &str, remote: &str, peer: Option<&str>| {
        let detected = Detected {
            direct_remote: peer.map(addr),
            ..Detected::NOTHING
        };
        l.match_chain_index(addr(local), addr(remote), &detected)
    };
    assert_eq!(pick("10.0.0.1:10000", "127.0.0.5:1", None), Some(0));
    assert_eq!(pick("10.0.0.1:10000", "10.0.0.1:1", None), Some(0));
    assert_eq!(pick("10.0.0.1:10000", "192.168.1.1:1", None), Some(1));
    // Behind a PROXY header: the peer is the direct source, the declared one the source.
    let peer = Some("192.168.7.7:9");
    assert_eq!(pick("10.0.0.1:10000", "203.0.113.1:1", peer), Some(1));
    // The direct source commits to chain 1, which wants an external source: none, even
    // though chain 0 would take a loopback source.
    assert_eq!(pick("10.0.0.1:10000", "127.0.0.1:1", peer), None);
    assert_eq!(pick("10.0.0.1:10000", "203.0.113.1:1", None), Some(2));
}

#[test]
fn chain_match_conflicts_follow_envoy() {
    let ok = |m: &[&str]| parse_rib(&chains_config(m), Format::Json).map(|_| ());
    let p8 = r#"{"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}"#;
    let p8b = r#"{"prefix_ranges": [{"address_prefix": "10.9.9.9", "prefix_len": 8}, {"address_prefix": "11.0.0.0", "prefix_len": 8}]}"#;
    let p16 = r#"{"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 16}]}"#;
    let port = r#"{"destination_port": 80}"#;
    let port_src = r#"{"destination_port": 80, "source_ports": [1]}"#;
    assert!(ok(&[p8, p16, port, port_src, "{}"]).is_ok());
    let e = ok(&[p8, p16, p8b]).unwrap_err();
    assert_eq!(
        e.path(),
        "static_resources.listeners[0].filter_chains[2].filter_chain_match"
    );
    assert!(e.message().contains("same as filter_chains[0]"), "{e}");
    let e = ok(&["{}", r#"{"source_ports": []}"#]).unwrap_err();
    assert_eq!(
        e.path(),
        "static_resources.listeners[0].filter_chains[1].filter_chain_match"
    );
}

#[test]
fn too_many_filter_chains() {
    // Counted before any chain is read: empty chains are enough (and fast).
    let chains = vec!["{}"; MAX_FILTER_CHAINS + 1].join(",");
    let text = format!(
        r#"{{"static_resources": {{"listeners": [{{"name": "l", "address": {{"socket_address":
        {{"address": "0.0.0.0", "port_value": 10000}}}}, "filter_chains": [{chains}]}}]}}}}"#
    );
    let e = parse_rib(&text, Format::Json).unwrap_err();
    assert_eq!(e.path(), "static_resources.listeners[0].filter_chains");
    assert!(
        e.message()
            .contains(&format!("at most {MAX_FILTER_CHAINS}")),
        "{e}"
    );
}

/// A standalone SNI gateway: `n` server names, each its own chain and cluster.
fn sni_gateway_config(n: usize) -> String {
    let chains: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"filter_chain_match": {{"server_names": ["svc-{i}.example.com"]}},
                "filters": [{{"name": "t", "typed_config": {{
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "s{i}", "cluster": "svc-{i}"}}}}]}}"#
            )
        })
        .collect();
    let clusters: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name": "svc-{i}", "load_assignment": {{"cluster_name": "svc-{i}",
                "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address": {{"socket_address":
                {{"address": "127.0.0.1", "port_value": {}}}}}}}}}]}}]}}}}"#,
                9000 + i % 1000
            )
        })
        .collect();
    format!(
        r#"{{"static_resources": {{"listeners": [{{"name": "sni", "address": {{"socket_address":
        {{"address": "0.0.0.0", "port_value": 10443}}}}, "listener_filters": [{{"name": "tls",
        "typed_config": {{"@type":
        "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}}}],
        "filter_chains": [{}]}}], "clusters": [{}]}}}}"#,
        chains.join(","),
        clusters.join(",")
    )
}

#[test]
fn ten_thousand_server_names_each_their_chain_compile() {
    const N: usize = 10_000;
    let text = sni_gateway_config(N);
    let started = std::time::Instant::now();
    let fib = build(&parse_rib(&text, Format::Json).expect("parses").0);
    let took = started.elapsed();
    // Seconds even unoptimized; a quadratic step would take minutes.
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    let l = &fib.listeners[0];
    assert_eq!(l.filter_chains.len(), N);
    let (local, remote) = (addr("10.0.0.1:10443"), addr("10.0.0.2:5555"));
    for i in [0, 1, 4_321, N - 1] {
        let name = format!("svc-{i}.example.com");
        let detected = Detected {
            server_name: name.as_bytes(),
            transport_protocol: TRANSPORT_TLS,
            ..Detected::NOTHING
        };
        let chain = l
            .match_chain_index(local, remote, &detected)
            .expect("a chain");
        let Route::Cluster(id) = l.chain(chain).tcp_proxy.route else {
            panic!("one cluster")
        };
        assert_eq!(&*fib.cluster(id).name, format!("svc-{i}"));
    }
    let unknown = Detected {
        server_name: b"svc-x.example.com",
        transport_protocol: TRANSPORT_TLS,
        ..Detected::NOTHING
    };
    assert_eq!(l.match_chain_index(local, remote, &unknown), None);
}

#[test]
fn listener_on_the_admin_address_is_rejected() {
    let text = chains_config(&["{}"])
        .replace("0.0.0.0", "127.0.0.1")
        .replace("10000", "15000");
    // Without an admin block there is no admin, so the port is the listener's (Envoy).
    let (rib, _) = parse_rib(&text, Format::Json).unwrap();
    assert_eq!(rib.admin.address, None);
    assert_eq!(rib.listeners[0].address, addr("127.0.0.1:15000"));
    let with_admin = text.replacen(
        '{',
        r#"{"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},"#,
        1,
    );
    let e = parse_rib(&with_admin, Format::Json).unwrap_err();
    assert_eq!(e.path(), "static_resources.listeners[0].address");
}

#[test]
fn missing_cluster_is_accepted() {
    let (rib, _) = parse_rib(&chains_config(&["{}"]), Format::Json).unwrap();
    let fib = build(&rib);
    assert!(
        matches!(&fib.listeners[0].filter_chains[0].tcp_proxy.route, Route::Missing(n) if &**n == "c")
    );
}

#[test]
fn node_proxy_passes_through_and_marks_upstream_sockets() {
    let fib = build(&rib("node_proxy.yaml"));
    let (outbound, tproxy) = (&fib.listeners[0], &fib.listeners[1]);
    assert!(
        outbound.use_original_dst,
        "the original_dst listener filter is use_original_dst"
    );
    assert!(!outbound.transparent && outbound.original_src.is_none());
    assert!(tproxy.use_original_dst && tproxy.transparent);
    assert_eq!(tproxy.original_src, Some(OriginalSrc { mark: 1337 }));
    assert!(
        tproxy.needs_remote_address(),
        "original_src binds the client's IP"
    );
    let mark = SocketOption {
        level: 1,
        name: 36,
        value: 1337,
    };
    let web = &fib.clusters[0];
    assert_eq!(web.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(
        web.upstream_bind,
        UpstreamBind {
            source_ip: None,
            freebind: false,
            socket_options: vec![mark],
        },
        "source 0.0.0.0 is no bind at all"
    );
    let passthrough = &fib.clusters[1];
    assert!(passthrough.is_original_dst());
    assert!(passthrough.endpoints.is_empty());
    assert_eq!(passthrough.upstream_bind.socket_options, vec![mark]);
    // Loops: the proxy's own listeners and admin, on any address for a wildcard listener.
    assert!(fib.is_own_address(addr("10.0.0.5:15001")));
    assert!(fib.is_own_address(addr("127.0.0.1:15000")));
    assert!(
        !fib.is_own_address(addr("10.0.0.5:15000")),
        "admin is on 127.0.0.1 only"
    );
    assert!(!fib.is_own_address(addr("10.96.0.10:80")));
}

#[test]
fn hashing_policies_get_their_tables_in_the_fib() {
    let fib = build(&rib("hash_lb.yaml"));
    let tcp = |l: usize| &fib.listeners[l].filter_chains[0].tcp_proxy;
    assert!(tcp(0).hash_source_ip && tcp(1).hash_source_ip);
    assert!(
        fib.listeners[0].needs_remote_address(),
        "the source IP is the key"
    );
    let (maglev, ring) = (&fib.clusters[0], &fib.clusters[1]);
    assert_eq!(maglev.lb_policy, LbPolicy::Maglev { table_size: 65537 });
    let table = maglev.hash_table.as_ref().expect("a Maglev table");
    match &table.lookup {
        HashLookup::Maglev(t) => assert_eq!(t.len(), 65537),
        other => panic!("maglev table: {other:?}"),
    }
    // Envoy's maglev_lb stats: every slot is someone's.
    assert_eq!(
        table.min_entries_per_host + table.max_entries_per_host,
        65537,
        "two endpoints share the table"
    );
    assert_eq!(
        ring.lb_policy,
        LbPolicy::RingHash {
            min_ring_size: 2048,
            max_ring_size: 65536,
            hash_function: RingHashFunction::MurmurHash2,
        }
    );
    let ring_table = ring.hash_table.as_ref().expect("a ring");
    match &ring_table.lookup {
        // Equal weights: the ring is the minimum size, split evenly.
        HashLookup::Ring(r) => assert_eq!(r.len(), 2048),
        other => panic!("ring: {other:?}"),
    }
    assert_eq!(
        (
            ring_table.min_entries_per_host,
            ring_table.max_entries_per_host
        ),
        (1024, 1024)
    );
    // The weighted endpoint (2 of 3) owns about two thirds of the Maglev table.
    let table = maglev.hash_table.as_ref().unwrap();
    let on_heavy = (0..65537u64).filter(|h| table.pick(*h) == Some(1)).count();
    assert!((43_000..44_400).contains(&on_heavy), "{on_heavy}");
}

#[test]
fn circuit_breakers_default_to_envoys_and_share_counts_by_name() {
    let fib = build(&rib("circuit_breakers.yaml"));
    let c = &fib.clusters[0];
    assert_eq!(
        c.circuit_breakers,
        CircuitBreakers {
            max_connections: 100,
            max_pending_requests: 10,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            track_remaining: true,
        }
    );
    let defaults = &build(&rib("minimal.yaml")).clusters[0];
    assert_eq!(defaults.circuit_breakers, CircuitBreakers::default());
    assert_eq!(defaults.circuit_breakers.max_connections, 1024);
    // Two compiles with one registry: the same counters (connections opened under one FIB
    // are released under the next).
    let stats = StatsRegistry::new(1);
    let rib = rib("circuit_breakers.yaml");
    let one = compile(&rib, 1, &stats, &mut CompileCache::new()).expect("compiles");
    let two = compile(&rib, 2, &stats, &mut CompileCache::new()).expect("compiles");
    assert!(Arc::ptr_eq(
        &one.clusters[0].resources,
        &two.clusters[0].resources
    ));
}

#[test]
fn udp_listeners_compile_beside_tcp_ones() {
    let rib = rib("udp_proxy.yaml");
    let stats = StatsRegistry::new(2);
    let fib = compile(&rib, 1, &stats, &mut CompileCache::new()).expect("compiles");
    assert_eq!(fib.listeners.len(), 1);
    assert_eq!(&*fib.listeners[0].name, "dns-tcp");
    let names: Vec<&str> = fib.udp_listeners.iter().map(|l| &*l.name).collect();
    assert_eq!(names, ["dns", "syslog"]);
    let (dns, syslog) = (&fib.udp_listeners[0], &fib.udp_listeners[1]);
    assert_eq!(
        dns.address, fib.listeners[0].address,
        "TCP and UDP share a port"
    );
    assert!(matches!(dns.proxy.route, Route::Cluster(ClusterId(0))));
    assert_eq!(dns.proxy.idle_timeout_ms, Some(30_000));
    assert!(dns.proxy.hash_source_ip);
    assert_eq!(&*dns.proxy.stats.name, "dns");
    assert!(Arc::ptr_eq(&dns.proxy.stats, &stats.udp("dns")));
    assert!(matches!(syslog.proxy.route, Route::Cluster(ClusterId(1))));
    assert_eq!(
        syslog.proxy.idle_timeout_ms,
        Some(0),
        "0s: at the next tick, as Envoy's timer fires at once"
    );
    assert!(!syslog.proxy.hash_source_ip);
    // Only TCP listeners (and the admin) are addresses a redirected connection must not
    // reach: the UDP listeners add nothing.
    assert_eq!(
        fib.own_addresses,
        [addr("127.0.0.1:10053"), addr("127.0.0.1:15000")]
    );
    // Both clusters are UDP-routed: each has its own `cluster.<name>.udp` block.
    for c in &fib.clusters {
        assert_eq!(c.udp_stats.name, c.name);
        assert!(Arc::ptr_eq(&c.udp_stats, &stats.cluster_udp(&c.name)));
    }
}

#[test]
fn udp_weighted_route_and_missing_clusters() {
    let rib = rib("udp_weighted.yaml");
    let fib = build(&rib);
    let Route::Weighted(w) = &fib.udp_listeners[0].proxy.route else {
        panic!("{:?}", fib.udp_listeners[0].proxy.route)
    };
    let entries: Vec<_> = w
        .entries
        .iter()
        .map(|e| (e.cluster, &*e.name, e.weight))
        .collect();
    assert_eq!(
        entries,
        [
            (Some(ClusterId(0)), "stable", 90),
            (Some(ClusterId(1)), "canary", 10)
        ],
        "weight 0 is left out"
    );
    assert_eq!(w.total_weight, 100);
    assert_eq!(fib.udp_listeners[0].proxy.idle_timeout_ms, Some(60_000));

    // A route to a cluster that does not exist compiles to Missing (Envoy counts
    // downstream_sess_no_route at run time); in weighted routes, an entry without a cluster.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/valid/udp_weighted.yaml"),
    )
    .unwrap()
    .replace("name: canary, weight: 10", "name: gone, weight: 10");
    let (rib, _) = parse_rib(&text, Format::Yaml).unwrap();
    let registry = StatsRegistry::new(2);
    let fib = compile(&rib, 7, &registry, &mut CompileCache::new()).expect("compiles");
    let Route::Weighted(w) = &fib.udp_listeners[0].proxy.route else {
        panic!()
    };
    assert_eq!(w.entries[1].cluster, None);
    assert_eq!(&*w.entries[1].name, "gone");
    assert!(
        Arc::ptr_eq(&fib.clusters[1].udp_stats, registry.cluster_udp_unrouted()),
        "canary is no longer UDP-routed: it shares the unused block"
    );
    assert!(
        !Arc::ptr_eq(&fib.clusters[0].udp_stats, registry.cluster_udp_unrouted()),
        "stable is UDP-routed: a block of its own"
    );
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/valid/udp_proxy.yaml"),
    )
    .unwrap()
    .replace("cluster: syslog", "cluster: nowhere");
    let (rib, _) = parse_rib(&text, Format::Yaml).unwrap();
    let fib = build(&rib);
    assert!(matches!(&fib.udp_listeners[1].proxy.route, Route::Missing(n) if &**n == "nowhere"));
}

/// A cluster gets its `cluster.<name>.udp` block when a UDP route first names it: an
/// unchanged cluster is then rebuilt once (not shared from the cache with the unused block),
/// and shared as before after that. Clusters no UDP route names share one unused block.
#[test]
fn a_cluster_newly_udp_routed_gets_its_udp_block() {
    let tcp_only = rib("weighted.json");
    let stats = StatsRegistry::new(2);
    let mut cache = CompileCache::new();
    let one = compile(&tcp_only, 1, &stats, &mut cache).expect("compiles");
    let unrouted = stats.cluster_udp_unrouted();
    assert!(one
        .clusters
        .iter()
        .all(|c| Arc::ptr_eq(&c.udp_stats, unrouted)));
    assert!(stats.blocks().cluster_udp.is_empty());

    // The same clusters (the same Arcs), and a UDP listener to the first.
    let udp = parse_rib(
        r#"
static_resources:
  listeners:
  - name: u
    address: {socket_address: {protocol: UDP, address: 127.0.0.1, port_value: 10053}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: u
        cluster: blue
"#,
        Format::Yaml,
    )
    .unwrap()
    .0;
    let mut both = tcp_only.clone();
    both.listeners.extend(udp.listeners);
    assert_eq!(both.clusters[0].name, "blue");
    let two = compile(&both, 2, &stats, &mut cache).expect("compiles");
    assert_eq!(cache.reused(), both.clusters.len() - 1);
    assert!(!Arc::ptr_eq(&one.clusters[0], &two.clusters[0]), "rebuilt");
    assert!(Arc::ptr_eq(
        &two.clusters[0].udp_stats,
        &stats.cluster_udp("blue")
    ));
    assert!(Arc::ptr_eq(
        &one.clusters[0].endpoints[0].stats,
        &two.clusters[0].endpoints[0].stats
    ));
    for i in 1..both.clusters.len() {
        assert!(
            Arc::ptr_eq(&one.clusters[i], &two.clusters[i]),
            "cluster {i}"
        );
    }

    // Unchanged from then on: shared, block and all.
    let three = compile(&both, 3, &stats, &mut cache).expect("compiles");
    assert_eq!(cache.reused(), both.clusters.len());
    assert!(Arc::ptr_eq(&two.clusters[0], &three.clusters[0]));
    // No longer routed: kept as it is (its block is harmless and shows nowhere).
    let four = compile(&tcp_only, 4, &stats, &mut cache).expect("compiles");
    assert_eq!(cache.reused(), tcp_only.clusters.len());
    assert!(Arc::ptr_eq(&three.clusters[0], &four.clusters[0]));
    assert!(four.udp_listeners.is_empty());
}

/// `valid/filter_chain_matcher.yaml` (the shapes of Envoy's docs) compiles to a table that
/// picks chains as Envoy does, and asks the worker for the addresses its inputs read.
#[test]
fn filter_chain_matcher_picks_chains_like_envoys_docs() {
    let fib = build(&rib("filter_chain_matcher.yaml"));
    let chain = |l: usize, local: &str, remote: &str| {
        fib.listeners[l]
            .match_chain(addr(local), addr(remote))
            .map(|c| &*c.name)
    };
    // A destination IP prefix, else on_no_match.
    assert_eq!(chain(0, "10.0.0.7:10000", "1.2.3.4:5"), Some("vip"));
    assert_eq!(chain(0, "10.0.1.7:10000", "1.2.3.4:5"), Some("default"));
    assert!(fib.listeners[0].needs_local_address());
    assert!(!fib.listeners[0].needs_remote_address());
    // Port 80 -> http; 443 -> internal for 192.0.0.0/2 and 10.0.0.0/24, else tls; any other
    // port matches nothing and there is no default chain.
    assert_eq!(chain(1, "10.9.9.9:80", "1.2.3.4:5"), Some("http"));
    assert_eq!(chain(1, "10.9.9.9:443", "192.168.1.1:5"), Some("internal"));
    assert_eq!(chain(1, "10.9.9.9:443", "10.0.0.200:5"), Some("internal"));
    assert_eq!(chain(1, "10.9.9.9:443", "10.0.1.1:5"), Some("tls"));
    assert_eq!(chain(1, "10.9.9.9:8080", "10.0.0.1:5"), None);
    assert!(fib.listeners[1].needs_remote_address());
    // A list: local sources whose port does not end in 0, then 10.x sources or destinations
    // containing "fd00" (any case), else the default chain.
    assert_eq!(
        chain(2, "127.0.0.1:10002", "127.0.0.1:40001"),
        Some("local")
    );
    assert_eq!(
        chain(2, "127.0.0.1:10002", "127.0.0.1:40000"),
        Some("fallback")
    );
    assert_eq!(chain(2, "10.0.0.1:10002", "10.0.0.2:40000"), Some("other"));
    assert_eq!(
        chain(2, "[fd00::1]:10002", "[fd01::2]:40000"),
        Some("other")
    );
    assert_eq!(
        chain(2, "10.0.0.1:10002", "11.0.0.2:40001"),
        Some("fallback")
    );
    assert!(fib.listeners[2].needs_remote_address());
    // The chains carry no filter_chain_match of their own.
    assert!(fib.listeners.iter().all(|l| l.chain_matcher.is_some()));
}

/// An action naming a chain the listener does not have is accepted (as in Envoy) and closes
/// the connection even though a default chain exists; a matcher that matches nothing falls to
/// the default chain.
#[test]
fn filter_chain_matcher_missing_name_closes_and_no_match_takes_the_default() {
    let text = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - name: a
      filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: a
          cluster: c
    default_filter_chain:
      name: d
      filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: d
          cluster: c
    filter_chain_matcher:
      matcher_tree:
        input:
          name: port
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput
        exact_match_map:
          map:
            "1": { action: { name: a, typed_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: a } } }
            "2": { action: { name: d, typed_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: d } } }
  clusters:
  - name: c
"#;
    let (rib, _) = parse_rib(text, Format::Yaml).unwrap();
    let fib = build(&rib);
    let l = &fib.listeners[0];
    let chain = |remote: &str| {
        l.match_chain(addr("127.0.0.1:10000"), addr(remote))
            .map(|c| &*c.name)
    };
    assert_eq!(chain("127.0.0.1:1"), Some("a"));
    // `d` is the default chain's name, not one of filter_chains: Envoy closes.
    assert_eq!(chain("127.0.0.1:2"), None);
    assert_eq!(chain("127.0.0.1:3"), Some("d"));
}

/// A reload that does not touch TLS keeps each context (and so its random session-ticket
/// key): a chain or cluster whose settings are unchanged gets the same `Arc`, even when the
/// cluster itself is rebuilt; another cache builds its own.
#[test]
fn tls_contexts_are_shared_across_generations() {
    // tls.yaml names its files relative to the repository root.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap();
    let rib = rib("tls.yaml");
    let stats = StatsRegistry::new(2);
    let mut cache = CompileCache::new();
    let one = compile(&rib, 1, &stats, &mut cache).expect("compiles");
    let chain = |fib: &Fib, i: usize| fib.listeners[0].filter_chains[i].tls.clone().unwrap();
    let context = |fib: &Fib, i: usize| chain(fib, i).context.expect("ready");
    assert_eq!(chain(&one, 0).handshake_timeout_ms, Some(5000));
    assert!(chain(&one, 1).handshake_timeout_ms.is_none());
    let mtls = context(&one, 0);
    assert!(!Arc::ptr_eq(&mtls, &context(&one, 1)));
    let client = one.clusters[0]
        .tls
        .clone()
        .expect("tls_backend originates TLS");
    assert!(one.clusters[1].tls.is_none(), "raw_buffer is plaintext");

    let mut next = rib.clone();
    Arc::make_mut(&mut next.clusters[0]).connect_timeout = std::time::Duration::from_secs(9);
    let two = compile(&next, 2, &stats, &mut cache).expect("compiles");
    assert!(Arc::ptr_eq(&context(&two, 0), &mtls));
    assert!(!Arc::ptr_eq(&two.clusters[0], &one.clusters[0]), "rebuilt");
    assert!(Arc::ptr_eq(two.clusters[0].tls.as_ref().unwrap(), &client));

    let other = compile(&rib, 1, &stats, &mut CompileCache::new()).expect("compiles");
    assert!(!Arc::ptr_eq(&context(&other, 0), &mtls));
}

/// HBONE's termination compiles to a chain that terminates HTTP/2 CONNECT, each stream
/// proxied by the chain's tcp_proxy (the connection manager's prefix, route, stream idle
/// timeout and logs); its ORIGINAL_DST cluster goes by `:authority`.
#[test]
fn hbone_termination_compiles_to_a_chain_that_terminates_connect() {
    use switchyard_dataplane::fib::hbone::Http2Settings;
    let fib = build(&rib("hbone_terminate.yaml"));
    let chain = &fib.listeners[0].filter_chains[0];
    let hbone = chain.hbone.as_ref().expect("terminates HBONE");
    assert_eq!(
        hbone.http2,
        Http2Settings {
            max_concurrent_streams: 100,
            initial_stream_window_bytes: 65_536,
            initial_connection_window_bytes: 1_048_576,
        }
    );
    assert!(chain.connection_limit.is_some(), "a gate before it");
    let tp = &chain.tcp_proxy;
    assert_eq!(&*tp.stats.name, "hbone_inbound");
    assert!(matches!(tp.route, Route::Cluster(ClusterId(0))));
    assert_eq!(tp.idle_timeout_ms, Some(3_600_000));
    assert_eq!(tp.max_connect_attempts, 1);
    assert_eq!(tp.access_logs.len(), 1);
    assert!(!tp.hash_source_ip);
    assert!(tp.tunneling.is_none());
    assert!(fib.clusters[0].original_dst_authority);
    assert!(!fib.clusters[1].original_dst_authority);

    // Envoy's defaults.
    let chain = &fib.listeners[1].filter_chains[0];
    assert_eq!(
        chain.hbone.as_ref().unwrap().http2,
        Http2Settings::ENVOY_DEFAULT
    );
    assert_eq!(chain.tcp_proxy.idle_timeout_ms, Some(300_000));
    assert!(matches!(
        chain.tcp_proxy.route,
        Route::Cluster(ClusterId(1))
    ));
}

/// HBONE's origination compiles to tcp_proxies that tunnel over their clusters' HTTP/2; a
/// cluster that lacks HTTP/2 (which only CDS can bring: `convert` refuses it among the
/// bootstrap's) is no route for a tunnel.
#[test]
fn hbone_origination_compiles_to_tunnels_over_http2_clusters() {
    use switchyard_dataplane::fib::hbone::{Http2Settings, Http2Upstream, TemplatePart};
    let rib = rib("hbone_originate.yaml");
    let fib = build(&rib);
    let tp = &fib.listeners[0].filter_chains[0].tcp_proxy;
    let tunnel = tp.tunneling.as_ref().expect("tunnels");
    assert_eq!(
        tunnel.hostname.parts,
        [TemplatePart::DownstreamLocalAddress]
    );
    let names: Vec<(&str, bool)> = tunnel
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.append))
        .collect();
    assert_eq!(
        names,
        [
            ("x-forwarded-for", true),
            ("x-origin-port", false),
            ("baggage", true)
        ]
    );
    assert!(matches!(tp.route, Route::Cluster(ClusterId(0))));
    assert_eq!(
        fib.clusters[0].http2,
        Some(Http2Upstream {
            http2: Http2Settings {
                max_concurrent_streams: 100,
                initial_stream_window_bytes: 65_536,
                initial_connection_window_bytes: 1_048_576,
            },
            idle_timeout_ms: Some(300_000),
        })
    );
    assert_eq!(
        fib.clusters[1].http2,
        Some(Http2Upstream {
            http2: Http2Settings::ENVOY_DEFAULT,
            idle_timeout_ms: Some(3_600_000),
        }),
        "the deprecated http2_protocol_options, Envoy's defaults"
    );
    let split = &fib.listeners[1].filter_chains[0].tcp_proxy;
    let Route::Weighted(w) = &split.route else {
        panic!("{:?}", split.route)
    };
    assert_eq!(w.entries[0].cluster, Some(ClusterId(0)));
    assert_eq!(w.entries[1].cluster, Some(ClusterId(1)));

    // node_b as CDS might send it: without HTTP/2.
    let mut plain = rib.clone();
    Arc::make_mut(&mut plain.clusters[0]).http2 = None;
    let fib = build(&plain);
    let tp = &fib.listeners[0].filter_chains[0].tcp_proxy;
    assert!(matches!(&tp.route, Route::Missing(name) if &**name == "node_b"));
    let Route::Weighted(w) = &fib.listeners[1].filter_chains[0].tcp_proxy.route else {
        panic!()
    };
    assert_eq!(w.entries[0].cluster, None, "no route when picked");
    assert_eq!(w.entries[1].cluster, Some(ClusterId(1)));
    assert!(fib.clusters[0].http2.is_none());
}

/// An endpoint reached through an HBONE tunnel (as EDS or CDS may bring one, where `convert`
/// cannot see who routes to its cluster): a tcp_proxy without `tunneling_config` compiles
/// to no route for that cluster, a tunnelling one keeps it, and the endpoint keeps its
/// tunnel in the FIB.
#[test]
fn a_cluster_with_tunnelled_endpoints_is_no_route_for_what_does_not_tunnel() {
    let mut tunnelled = rib("minimal.yaml");
    let c = Arc::make_mut(&mut tunnelled.clusters[0]);
    let mut endpoints = c.endpoints.to_vec();
    endpoints[0].tunnel = Some(addr("10.0.0.2:15008"));
    c.endpoints = endpoints.into();
    let fib = build(&tunnelled);
    assert!(
        matches!(&fib.listeners[0].filter_chains[0].tcp_proxy.route, Route::Missing(n) if &**n == "echo")
    );
    assert_eq!(
        fib.clusters[0].endpoints[0].tunnel,
        Some(addr("10.0.0.2:15008"))
    );
    assert!(matches!(
        build(&rib("minimal.yaml")).listeners[0].filter_chains[0]
            .tcp_proxy
            .route,
        Route::Cluster(ClusterId(0))
    ));

    let originate = rib("hbone_originate.yaml");
    let fib = build(&originate);
    let tunnelling = &fib.listeners[0].filter_chains[0].tcp_proxy;
    assert!(tunnelling.tunneling.is_some());
    let Route::Cluster(id) = tunnelling.route else {
        panic!("the tunnel's cluster: {:?}", tunnelling.route)
    };
    let mut with_tunnel = originate.clone();
    let c = Arc::make_mut(&mut with_tunnel.clusters[id.0 as usize]);
    let mut endpoints = c.endpoints.to_vec();
    endpoints[0].tunnel = Some(addr("10.0.0.2:15008"));
    c.endpoints = endpoints.into();
    assert!(matches!(
        build(&with_tunnel).listeners[0].filter_chains[0].tcp_proxy.route,
        Route::Cluster(i) if i == id
    ));
}
