//! Switchyard as a node proxy, the DaemonSet's job, in network namespaces the test creates
//! (root; iptables, iproute2, setpriv, python3 from `ci/install-deps`):
//!
//! ```text
//!   pod A 10.244.1.2 ─┐
//!   pod B 10.244.2.2 ─┼─ veth ─ node (10.244.{1,2,3}.1, forwarding, no default route):
//!   pod C 10.244.3.2 ─┘          switchyard on 0.0.0.0:15001 + `switchyard capture install`
//! ```
//!
//! Service `web` is VIP 10.96.0.10, ports 80 and 443, with endpoints in pods B and C; the VIP
//! exists nowhere, so only capture makes it answer.
//!
//! * A's connections to both ports reach B and C, byte-exact (256 KiB each way, checked by
//!   the client), spread evenly; a destination no chain matches passes through the
//!   `ORIGINAL_DST` cluster to where it was going;
//! * the proxy's own upstream connections are not captured (the UID 1337 exclusion's counter
//!   counts them); a pod dialling the proxy's port, directly or through a VIP, is refused and
//!   counted, not looped;
//! * the proxy stopped: captured connections are refused at once (no hang, no bypass);
//!   restarted, they work; ten stop/start cycles with `capture install` re-run each time (an
//!   init container) change no rule, and `capture remove` then restores the tables;
//! * TPROXY: with `--mode tproxy` and a `transparent` listener with `original_src`, the
//!   endpoint sees pod A's own address; the proxy's upstream sockets are excluded by SO_MARK.
//!
//! Switchyard-only (run once, skipped in the Envoy pass).

mod common;

use common::netns::*;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VIP: &str = "10.96.0.10";
const A_IP: &str = "10.244.1.2";
const B_IP: &str = "10.244.2.2";
const C_IP: &str = "10.244.3.2";
/// Bytes each connection sends and must get back.
const PAYLOAD: usize = 256 * 1024;

/// The node and three pods.
struct Cluster {
    node: Netns,
    a: Netns,
    b: Netns,
    c: Netns,
    _endpoints: Vec<KillOnDrop>,
}

/// Builds the topology and starts the endpoints: B and C each serve 8080, 8443 and 9000.
fn cluster() -> Cluster {
    let node = Netns::new();
    node.sh(
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
    );
    let pods = [Netns::new(), Netns::new(), Netns::new()];
    for (i, pod) in pods.iter().enumerate() {
        let net = i + 1;
        node.link(
            pod,
            &format!("10.244.{net}.1"),
            &format!("10.244.{net}.2"),
            24,
        );
        pod.sh(&format!("ip route add default via 10.244.{net}.1"));
    }
    let [a, b, c] = pods;
    let endpoints = vec![endpoint(&b, "B", B_IP), endpoint(&c, "C", C_IP)];
    Cluster {
        node,
        a,
        b,
        c,
        _endpoints: endpoints,
    }
}

/// A Python server in `pod` on ports 8080, 8443 and 9000: each connection first gets the
/// line `<name>:<port> <peer address>`, then an echo of everything it sends.
fn endpoint(pod: &Netns, name: &str, ip: &str) -> KillOnDrop {
    let code = format!(
        r#"
import socket, threading
def serve(c, port):
    peer = c.getpeername()[0]
    c.sendall(f"{name}:{{port}} {{peer}}\n".encode())
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
def listen(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{ip}", port))
    s.listen(128)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, port), daemon=True).start()
for p in (8080, 8443, 9000):
    threading.Thread(target=listen, args=(p,), daemon=True).start()
threading.Event().wait()
"#
    );
    let child = pod
        .command("python3")
        .args(["-c", &code])
        .spawn()
        .map(KillOnDrop)
        .expect("python3 endpoint");
    for port in [8080, 8443, 9000] {
        assert!(
            pod.wait_listening(&format!("{ip}:{port}"), Duration::from_secs(5)),
            "endpoint {name} never listened on {port}"
        );
    }
    child
}

/// What a pod's client saw over `n` connections to `target`.
#[derive(Debug)]
struct Visits {
    /// Banner (`B:8080 10.244.2.1`) -> connections that got it and echoed byte-exact.
    exact: BTreeMap<String, usize>,
    /// Everything else, one line per connection.
    errors: Vec<String>,
}

/// From `pod`, `n` connections to `target` one after another, each sending [`PAYLOAD`]
/// random bytes and checking the echo; five seconds per connection at most.
fn visit(pod: &Netns, target: &str, n: usize) -> Visits {
    visit_sending(pod, target, n, &format!("os.urandom({PAYLOAD})"))
}

/// [`visit`] with the bytes the Python expression `data` makes.
fn visit_sending(pod: &Netns, target: &str, n: usize, data: &str) -> Visits {
    let (ip, port) = target.split_once(':').unwrap();
    let code = format!(
        r#"
import os, socket, threading
for i in range({n}):
    try:
        s = socket.create_connection(("{ip}", {port}), timeout=5)
        f = s.makefile("rb")
        banner = f.readline().decode().strip()
        data = {data}
        def send():
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        t = threading.Thread(target=send)
        t.start()
        back = f.read()
        t.join()
        s.close()
        print("OK " + banner if back == data else f"BAD {{banner}} got {{len(back)}} bytes")
    except Exception as e:
        print(f"ERR {{type(e).__name__}}: {{e}}")
"#
    );
    let out = run(pod.command("python3").args(["-c", &code]));
    let mut visits = Visits {
        exact: BTreeMap::new(),
        errors: Vec::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.strip_prefix("OK ") {
            Some(banner) => *visits.exact.entry(banner.to_string()).or_default() += 1,
            None => visits.errors.push(line.to_string()),
        }
    }
    if !out.status.success() {
        visits
            .errors
            .push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    visits
}

/// One connection from `pod` to `target`: how it ended and how long it took. `refused` is
/// the answer of a closed port (RST), `reset`/`eof` a connection closed without data.
fn attempt(pod: &Netns, target: &str) -> (String, Duration) {
    let (ip, port) = target.split_once(':').unwrap();
    let code = format!(
        r#"
import socket
try:
    s = socket.create_connection(("{ip}", {port}), timeout=3)
    s.settimeout(3)
    d = s.recv(100)
    print("eof" if not d else "data " + d.decode(errors="replace").strip())
except ConnectionRefusedError: print("refused")
except ConnectionResetError: print("reset")
except socket.timeout: print("timeout")
except OSError as e: print(f"error {{e}}")
"#
    );
    let started = Instant::now();
    let out = run(pod.command("python3").args(["-c", &code]));
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        started.elapsed(),
    )
}

/// The node proxy's bootstrap: Service `web` by VIP and port, everything else passed
/// through. `tproxy`: a transparent listener that connects from the client's address, and
/// SO_MARK 1337 on upstream sockets (the proxy runs as root there).
fn bootstrap(tproxy: bool) -> String {
    let chain = |port: u16, cluster: &str| {
        format!(
            r#"    - filter_chain_match:
        prefix_ranges: [{{ address_prefix: {VIP}, prefix_len: 32 }}]
        destination_port: {port}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {cluster}
          cluster: {cluster}
"#
        )
    };
    let mark = if tproxy {
        "    upstream_bind_config:\n      socket_options:\n      - { description: SO_MARK, level: 1, name: 36, int_value: 1337 }\n"
    } else {
        ""
    };
    let service = |name: &str, port: u16| {
        format!(
            r#"  - name: {name}
    connect_timeout: 1s
{mark}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {B_IP}, port_value: {port} }} }} }}
        - endpoint: {{ address: {{ socket_address: {{ address: {C_IP}, port_value: {port} }} }} }}
"#
        )
    };
    let listener_extras = if tproxy {
        r#"    transparent: true
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    - name: envoy.filters.listener.original_src
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc
"#
    } else {
        r#"    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
"#
    };
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 15000 }}
static_resources:
  listeners:
  - name: virtualOutbound
    address:
      socket_address: {{ address: 0.0.0.0, port_value: 15001 }}
{listener_extras}    filter_chains:
{http}{https}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  clusters:
{web_http}{web_https}  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
{mark}"#,
        http = chain(80, "web_http"),
        https = chain(443, "web_https"),
        web_http = service("web_http", 8080),
        web_https = service("web_https", 8443),
    )
}

/// Switchyard running in the node namespace.
struct NodeProxy {
    process: Option<KillOnDrop>,
    dir: PathBuf,
    /// UID 1337 (REDIRECT mode) or root (TPROXY needs CAP_NET_ADMIN).
    as_root: bool,
}

impl NodeProxy {
    fn start(node: &Netns, tproxy: bool) -> NodeProxy {
        NodeProxy::with_bootstrap(node, tproxy, |_| bootstrap(tproxy))
    }

    /// Starts with the bootstrap `yaml(dir)` makes, given the proxy's own directory (for
    /// the files it names, written there before the proxy starts; all readable by UID 1337).
    fn with_bootstrap(
        node: &Netns,
        as_root: bool,
        yaml: impl FnOnce(&std::path::Path) -> String,
    ) -> NodeProxy {
        let dir = std::env::temp_dir().join(format!("{}-node-proxy", node.0));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node.yaml"), yaml(&dir)).unwrap();
        ok(&run(std::process::Command::new("chmod").args([
            "-R",
            "a+rwX",
            dir.to_str().unwrap(),
        ])));
        let mut proxy = NodeProxy {
            process: None,
            dir,
            as_root,
        };
        proxy.restart(node);
        proxy
    }

    /// Starts the process (again) and waits until it listens.
    fn restart(&mut self, node: &Netns) {
        let mut c = node.command("setpriv");
        if !self.as_root {
            c.args(["--reuid=1337", "--regid=1337", "--clear-groups"]);
        }
        c.arg(switchyard_bin())
            .args(["run", "-c"])
            .arg(self.dir.join("node.yaml"))
            .args(["--concurrency", "1"])
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("proxy.log"))
                    .unwrap(),
            );
        self.process = Some(c.spawn().map(KillOnDrop).expect("switchyard"));
        assert!(
            node.wait_listening("0.0.0.0:15001", Duration::from_secs(10)),
            "switchyard never listened\n{}",
            self.logs()
        );
    }

    /// Kills the process (SIGKILL, by PID) and waits for it.
    fn kill(&mut self) {
        self.process = None;
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// `/stats` from the admin on the node's 127.0.0.1:15000.
    fn stats(&self, node: &Netns) -> BTreeMap<String, u64> {
        let body = node.sh(
            "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:15000/stats').read().decode())\"",
        );
        parse_stats(&body)
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        self.process = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The packet count of the first rule in `table` `chain` whose text contains `needle`.
fn rule_packets(node: &Netns, table: &str, chain: &str, needle: &str) -> u64 {
    let listing = node.sh(&format!("iptables-nft -t {table} -L {chain} -n -v -x"));
    listing
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no rule with {needle:?} in {chain}:\n{listing}"))
}

/// The packet counter of the rule of our nftables table whose text contains `needle`.
fn nft_packets(node: &Netns, needle: &str) -> u64 {
    let listing = node.sh("nft list table ip switchyard");
    listing
        .lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split("counter packets ").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counted rule with {needle:?}:\n{listing}"))
}

fn prerequisites() -> bool {
    common::netns::prerequisites(&["setpriv", "python3", "nft"])
}

#[test]
fn pods_reach_a_service_vip_only_through_capture() {
    if !prerequisites() {
        return;
    }
    let k = cluster();
    let (before, _) = attempt(&k.a, &format!("{VIP}:80"));
    assert_ne!(
        &before[..4.min(before.len())],
        "data",
        "the VIP answers nothing yet"
    );

    let proxy = NodeProxy::start(&k.node, false);
    ok(&k.node.capture(&["install"]));

    let http = visit(&k.a, &format!("{VIP}:80"), 20);
    assert!(http.errors.is_empty(), "{http:?}\n{}", proxy.logs());
    // Round robin over two endpoints, one worker: exactly half each. The endpoint sees the
    // node's address on its link (REDIRECT: the proxy connects from the node).
    let want: BTreeMap<String, usize> = [
        ("B:8080 10.244.2.1".to_string(), 10),
        ("C:8080 10.244.3.1".to_string(), 10),
    ]
    .into();
    assert_eq!(http.exact, want, "{}", proxy.logs());

    let https = visit(&k.a, &format!("{VIP}:443"), 4);
    let want: BTreeMap<String, usize> = [
        ("B:8443 10.244.2.1".to_string(), 2),
        ("C:8443 10.244.3.1".to_string(), 2),
    ]
    .into();
    assert_eq!(https.exact, want, "second Service port: {https:?}");

    // No chain matches C's own address and port 9000: it passes through to C, from the
    // node (so it went through the proxy, not around it).
    let direct = visit(&k.a, &format!("{C_IP}:9000"), 2);
    let want: BTreeMap<String, usize> = [("C:9000 10.244.3.1".to_string(), 2)].into();
    assert_eq!(direct.exact, want, "passthrough: {direct:?}");

    // Loops: the proxy's port dialled directly (not captured: a local address) and through
    // a VIP (captured) are both refused with a reset, at once.
    for target in ["10.244.1.1:15001", "10.96.0.10:15001"] {
        let (how, took) = attempt(&k.a, target);
        assert!(
            how == "reset" || how == "eof",
            "{target}: a loop is refused: {how}"
        );
        assert!(took < Duration::from_secs(2), "{target}: at once: {took:?}");
    }

    let stats = proxy.stats(&k.node);
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert_eq!(stat("cluster.web_http.upstream_cx_total"), 20);
    assert_eq!(stat("cluster.web_https.upstream_cx_total"), 4);
    assert_eq!(stat("cluster.PassthroughCluster.upstream_cx_total"), 2);
    assert_eq!(
        stat("listener.0.0.0.0_15001.downstream_cx_proxy_loop"),
        2,
        "each loop is counted once"
    );
    assert_eq!(
        stat("listener.0.0.0.0_15001.downstream_cx_total"),
        28,
        "26 captured + 2 loops refused, nothing looped back in"
    );

    // The proxy's 26 upstream connections left through OUTPUT as UID 1337: excluded by that
    // rule, not redirected; the pods' 27 captured connections were redirected in PREROUTING
    // (one nat lookup per connection).
    let own = rule_packets(&k.node, "nat", "SWITCHYARD_OUTPUT", "owner UID match 1337");
    assert_eq!(own, 26, "the proxy's own upstream connections");
    let redirected = rule_packets(&k.node, "nat", "SWITCHYARD_OUTBOUND", "redir ports 15001");
    assert_eq!(
        redirected, 27,
        "the pods' captured connections (one was a loop)"
    );
    drop(proxy);
}

#[test]
fn a_stopped_proxy_refuses_at_once_and_ten_restarts_leak_no_rule() {
    if !prerequisites() {
        return;
    }
    let k = cluster();
    let pristine = k.node.capture_state();
    let mut proxy = NodeProxy::start(&k.node, false);
    ok(&k.node.capture(&["install"]));
    let installed = k.node.capture_state();
    for cycle in 0..10 {
        let up = visit(&k.a, &format!("{VIP}:80"), 2);
        assert_eq!(
            up.exact.values().sum::<usize>(),
            2,
            "cycle {cycle}, proxy up: {up:?}\n{}",
            proxy.logs()
        );
        proxy.kill();
        let (how, took) = attempt(&k.a, &format!("{VIP}:80"));
        assert_eq!(how, "refused", "cycle {cycle}, proxy down: never a bypass");
        assert!(
            took < Duration::from_millis(900),
            "cycle {cycle}: refused at once, not after a timeout: {took:?}"
        );
        // The DaemonSet's init container runs install again before the proxy restarts:
        // the same rules, rewritten in place.
        ok(&k.node.capture(&["install"]));
        assert_eq!(k.node.capture_state(), installed, "cycle {cycle}");
        proxy.restart(&k.node);
    }
    // Re-installs refilled our chains in place: the jump into them was never removed, so its
    // counter kept every captured connection of the ten cycles.
    let jumps = rule_packets(&k.node, "nat", "PREROUTING", "SWITCHYARD_PREROUTING");
    assert!(
        jumps >= 30,
        "the jump rule survived the re-installs: {jumps}"
    );
    ok(&k.node.capture(&["remove"]));
    assert_eq!(k.node.capture_state(), pristine, "remove restores the node");
    let (how, _) = attempt(&k.a, &format!("{VIP}:80"));
    assert_ne!(
        &how[..4.min(how.len())],
        "data",
        "not captured any more: {how}"
    );
}

#[test]
fn tproxy_endpoints_see_the_pods_own_address() {
    if !prerequisites() {
        return;
    }
    let k = cluster();
    let pristine = k.node.capture_state();
    let mut proxy = NodeProxy::start(&k.node, true);
    ok(&k.node.capture(&["install", "--mode", "tproxy"]));

    let http = visit(&k.a, &format!("{VIP}:80"), 4);
    assert!(http.errors.is_empty(), "{http:?}\n{}", proxy.logs());
    let want: BTreeMap<String, usize> =
        [(format!("B:8080 {A_IP}"), 2), (format!("C:8080 {A_IP}"), 2)].into();
    assert_eq!(http.exact, want, "the endpoints see pod A itself");

    // The proxy runs as root here: its upstream sockets are excluded by their SO_MARK.
    let marked = rule_packets(&k.node, "nat", "SWITCHYARD_OUTPUT", "mark match 0x539");
    assert_eq!(marked, 4, "the proxy's own marked connections");
    let tproxied = nft_packets(&k.node, "tproxy to :15001");
    assert_eq!(
        tproxied, 4,
        "tproxy took the pods' SYNs (later packets are diverted)"
    );

    proxy.kill();
    let (how, took) = attempt(&k.a, &format!("{VIP}:80"));
    assert_eq!(how, "refused", "TPROXY with the proxy down: never a bypass");
    assert!(took < Duration::from_millis(900), "at once: {took:?}");
    assert_eq!(nft_packets(&k.node, "reject with tcp reset"), 1);

    ok(&k.node.capture(&["remove"]));
    assert_eq!(k.node.capture_state(), pristine, "remove restores the node");
    let _ = (&k.b, &k.c);
}

// ---- node to node: HBONE ----

/// The nodes' link and the node proxies' HBONE port.
const NODE1_IP: &str = "10.0.0.1";
const NODE2_IP: &str = "10.0.0.2";
const HBONE_PORT: u16 = 15008;
/// Pod C, a second workload on node 1 with an identity of its own.
const C1_IP: &str = "10.244.3.2";
/// The workloads' SPIFFE IDs: pod A runs as `client`, pod C as `intruder` (the test PKI).
const A_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const C_ID: &str = "spiffe://cluster.local/ns/other/sa/intruder";

/// Two nodes, as in ambient mesh:
///
/// ```text
///   pod A 10.244.1.2 ─┐                                          ┌─ pod B 10.244.2.2
///   pod C 10.244.3.2 ─┴─ node 1 10.0.0.1 ═══ link ═══ 10.0.0.2 node 2
/// ```
///
/// Each node runs the same node-proxy bootstrap ([`hbone_bootstrap`]) and `capture
/// install`. Service `web` (VIP 10.96.0.10:80) has one endpoint, pod B's 8080, reached
/// through node 2's HBONE port.
struct TwoNodes {
    node1: Netns,
    node2: Netns,
    a: Netns,
    c: Netns,
    /// Node 1's side of the link between the nodes.
    link1: String,
    _b: Netns,
    _endpoint: KillOnDrop,
}

fn two_nodes() -> TwoNodes {
    let (node1, node2) = (Netns::new(), Netns::new());
    for node in [&node1, &node2] {
        node.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
        );
    }
    let (link1, _) = node1.link(&node2, NODE1_IP, NODE2_IP, 24);
    let (a, c, b) = (Netns::new(), Netns::new(), Netns::new());
    node1.link(&a, "10.244.1.1", A_IP, 24);
    a.sh("ip route add default via 10.244.1.1");
    node1.link(&c, "10.244.3.1", C1_IP, 24);
    c.sh("ip route add default via 10.244.3.1");
    node2.link(&b, "10.244.2.1", B_IP, 24);
    b.sh("ip route add default via 10.244.2.1");
    let endpoint = endpoint(&b, "B", B_IP);
    TwoNodes {
        node1,
        node2,
        a,
        c,
        link1,
        _b: b,
        _endpoint: endpoint,
    }
}

/// The node-proxy bootstrap with HBONE, written into `dir` with the files it names (the
/// test PKI's certificates, and one SDS file per source workload):
/// - `virtualOutbound` 15001: per source workload (`source_prefix_ranges`) a chain for
///   Service `web` whose cluster presents that workload's SDS secret; its tcp_proxy
///   tunnels to the endpoint picked (`%UPSTREAM_HOST%`) through the endpoint's node proxy
///   (the endpoint's `switchyard.hbone` metadata);
/// - `hbone` 15008: mTLS from the mesh's workloads, each CONNECT stream delivered to its
///   `:authority` (ORIGINAL_DST, no second balancing), logged with the caller's SPIFFE ID.
fn hbone_bootstrap(dir: &std::path::Path) -> String {
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
        "intruder.pem",
        "intruder.key",
    ] {
        std::fs::copy(cert(f), dir.join(f)).unwrap();
    }
    let secret = |id: &str, name: &str| {
        let file = dir.join(format!("{name}.sds.yaml"));
        std::fs::write(
            &file,
            format!(
                r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: "{id}"
  tls_certificate:
    certificate_chain: {{ filename: {dir}/{name}.pem }}
    private_key: {{ filename: {dir}/{name}.key }}
"#,
                dir = dir.display()
            ),
        )
        .unwrap();
        file
    };
    let outbound_chain = |source: &str, workload: &str| {
        format!(
            r#"    - filter_chain_match:
        prefix_ranges: [{{ address_prefix: {VIP}, prefix_len: 32 }}]
        destination_port: 80
        source_prefix_ranges: [{{ address_prefix: {source}, prefix_len: 32 }}]
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: web_from_{workload}
          cluster: web_from_{workload}
          tunneling_config:
            hostname: "%UPSTREAM_HOST%"
            headers_to_add:
            - header: {{ key: forwarded, value: "for=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }}
"#
        )
    };
    let service_cluster = |workload: &str, id: &str, sds: &std::path::Path| {
        format!(
            r#"  - name: web_from_{workload}
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{ max_concurrent_streams: 100 }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: backend.example.com
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificate_sds_secret_configs:
          - name: "{id}"
            sds_config:
              path_config_source: {{ path: {sds} }}
              resource_api_version: V3
          validation_context:
            trusted_ca: {{ filename: {dir}/ca.pem }}
            match_typed_subject_alt_names:
            - {{ san_type: DNS, matcher: {{ exact: backend.example.com }} }}
    load_assignment:
      cluster_name: web_from_{workload}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {B_IP}, port_value: 8080 }} }} }}
          metadata:
            typed_filter_metadata:
              switchyard.hbone:
                "@type": type.googleapis.com/switchyard.config.endpoint.v1.HboneTunnel
                address: {NODE2_IP}
                port_value: {HBONE_PORT}
"#,
            sds = sds.display(),
            dir = dir.display()
        )
    };
    let (a_sds, c_sds) = (secret(A_ID, "client"), secret(C_ID, "intruder"));
    format!(
        r#"node: {{ id: switchyard~node, cluster: switchyard }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 15000 }}
static_resources:
  listeners:
  - name: virtualOutbound
    address:
      socket_address: {{ address: 0.0.0.0, port_value: 15001 }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
{chain_a}{chain_c}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  - name: hbone
    address:
      socket_address: {{ address: 0.0.0.0, port_value: {HBONE_PORT} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2]
            tls_certificates:
            - certificate_chain: {{ filename: {dir}/server.pem }}
              private_key: {{ filename: {dir}/server.key }}
            validation_context:
              trusted_ca: {{ filename: {dir}/ca.pem }}
              match_typed_subject_alt_names:
              - {{ san_type: URI, matcher: {{ prefix: "spiffe://cluster.local/" }} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hbone
          codec_type: HTTP2
          http2_protocol_options: {{ allow_connect: true }}
          upgrade_configs: [{{ upgrade_type: CONNECT }}]
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {dir}/streams.log
              log_format:
                text_format_source:
                  inline_string: "%DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_HOST%\n"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ connect_matcher: {{}} }}
                route:
                  cluster: inbound_pods
                  upgrade_configs: [{{ upgrade_type: CONNECT, connect_config: {{}} }}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{cluster_a}{cluster_c}  - name: inbound_pods
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    original_dst_lb_config: {{ use_http_header: true, http_header_name: ":authority" }}
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
"#,
        chain_a = outbound_chain(A_IP, "a"),
        chain_c = outbound_chain(C1_IP, "c"),
        cluster_a = service_cluster("a", A_ID, &a_sds),
        cluster_c = service_cluster("c", C_ID, &c_sds),
        dir = dir.display(),
    )
}

/// What crossed the link between the nodes, per TCP flow, from a raw socket on node 1's
/// side of it: started before the traffic, read after it.
struct Sniffer {
    process: KillOnDrop,
    stop: PathBuf,
}

/// One direction of one TCP connection on the link, reassembled by sequence number.
#[derive(Debug)]
struct Flow {
    /// `src:port>dst:port`.
    key: String,
    bytes: usize,
    /// Its bytes parse whole as TLS records (`ContentType`, version 3.x, length), the first
    /// a handshake record.
    tls: bool,
    /// The client's plaintext marker appears in it.
    marker: bool,
}

/// The marker a client's payload repeats, looked for in the captured bytes.
const MARKER: &str = "switchyard-plaintext-marker-";

impl Sniffer {
    fn start(node: &Netns, iface: &str) -> Sniffer {
        let stop = std::env::temp_dir().join(format!("{}-sniff-stop", node.0));
        let _ = std::fs::remove_file(&stop);
        let code = format!(
            r#"
import os, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind(("{iface}", 0))
# SO_RCVBUFFORCE (root): past rmem_max, so a burst never outruns this reader.
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)
s.settimeout(0.1)
print("ready", flush=True)
flows = {{}}
while True:
    try:
        pkt = s.recv(1 << 18)
    except socket.timeout:
        if os.path.exists("{stop}"):
            break
        continue
    if struct.unpack("!H", pkt[12:14])[0] != 0x0800:
        continue
    ip = pkt[14:]
    if ip[9] != 6:
        continue
    ihl = (ip[0] & 15) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    tcp = ip[ihl:total]
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    payload = bytes(tcp[(tcp[12] >> 4) * 4:])
    key = f"{{socket.inet_ntoa(ip[12:16])}}:{{sport}}>{{socket.inet_ntoa(ip[16:20])}}:{{dport}}"
    f = flows.setdefault(key, {{"isn": seq, "segs": {{}}}})
    if payload:
        f["segs"][(seq - f["isn"]) % (1 << 32)] = payload
# PACKET_STATISTICS: packets the kernel dropped for this socket (reassembly would have holes).
drops = struct.unpack("II", s.getsockopt(263, 6, 8))[1]
print(f"DROPS {{drops}}", flush=True)
for key, f in flows.items():
    data, at, gap = bytearray(), None, False
    for off in sorted(f["segs"]):
        seg = f["segs"][off]
        if at is None:
            at = off
        if off > at + len(data):
            gap = True
            break
        if off + len(seg) <= at + len(data):
            continue
        data += seg[at + len(data) - off:]
    i, tls = 0, len(data) > 0 and data[0] == 22
    while tls and i < len(data):
        if i + 5 > len(data) or data[i] not in (20, 21, 22, 23) or data[i + 1] != 3:
            tls = False
            break
        i += 5 + struct.unpack("!H", data[i + 3:i + 5])[0]
    tls = tls and i == len(data) and not gap
    print(f"FLOW {{key}} {{len(data)}} {{int(tls)}} {{int(b'{MARKER}' in data)}}", flush=True)
"#,
            stop = stop.display()
        );
        let mut process = node
            .command("python3")
            .args(["-u", "-c", &code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map(KillOnDrop)
            .expect("python3 sniffer");
        let mut ready = String::new();
        let stdout = process.0.stdout.as_mut().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).unwrap();
        assert_eq!(ready.trim(), "ready", "the sniffer started");
        Sniffer { process, stop }
    }

    /// Stops it and reads what it saw.
    fn flows(mut self) -> Vec<Flow> {
        std::fs::write(&self.stop, "").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(self.process.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        let _ = std::fs::remove_file(&self.stop);
        let drops = out.lines().find_map(|l| l.strip_prefix("DROPS "));
        assert_eq!(
            drops,
            Some("0"),
            "the capture kept every packet (a dropped one would read as a hole)\n{out}"
        );
        out.lines()
            .filter_map(|l| l.strip_prefix("FLOW "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Flow {
                    key: f[0].to_string(),
                    bytes: f[1].parse().unwrap(),
                    tls: f[2] == "1",
                    marker: f[3] == "1",
                }
            })
            .collect()
    }
}

/// [`visit`] with 64 KiB of [`MARKER`]s per connection.
fn visit_with_marker(pod: &Netns, target: &str, n: usize) -> Visits {
    visit_sending(
        pod,
        target,
        n,
        &format!("b\"{MARKER}\" * (65536 // {})", MARKER.len()),
    )
}

#[test]
fn a_service_on_another_node_is_reached_through_hbone_as_the_calling_workload() {
    if !prerequisites() {
        return;
    }
    let k = two_nodes();
    let proxy1 = NodeProxy::with_bootstrap(&k.node1, false, hbone_bootstrap);
    let proxy2 = NodeProxy::with_bootstrap(&k.node2, false, hbone_bootstrap);
    for (node, proxy) in [(&k.node1, &proxy1), (&k.node2, &proxy2)] {
        assert!(
            node.wait_listening(&format!("0.0.0.0:{HBONE_PORT}"), Duration::from_secs(10)),
            "HBONE never listened\n{}",
            proxy.logs()
        );
        ok(&node.capture(&["install"]));
    }
    let sniffer = Sniffer::start(&k.node1, &k.link1);

    let from_a = visit_with_marker(&k.a, &format!("{VIP}:80"), 3);
    let from_c = visit_with_marker(&k.c, &format!("{VIP}:80"), 2);
    let flows = sniffer.flows();
    // Pod B saw each connection from its own node's proxy (it delivered the stream).
    let b = |n: usize| BTreeMap::from([("B:8080 10.244.2.1".to_string(), n)]);
    let logs = || format!("{}\n{}", proxy1.logs(), proxy2.logs());
    assert!(
        from_a.errors.is_empty() && from_c.errors.is_empty(),
        "{from_a:?} {from_c:?}\n{}",
        logs()
    );
    assert_eq!(from_a.exact, b(3), "pod A\n{}", logs());
    assert_eq!(from_c.exact, b(2), "pod C\n{}", logs());

    // Between the nodes: only the tunnels to node 2's HBONE port, TLS both ways, each
    // byte of them, and no plaintext marker.
    let hbone = format!("{NODE2_IP}:{HBONE_PORT}");
    assert!(!flows.is_empty(), "the sniffer saw the link");
    for f in &flows {
        assert!(
            f.key.contains(&hbone),
            "only HBONE crosses the link: {flows:?}"
        );
        assert!(
            f.bytes > 0 && f.tls,
            "TLS records, and only those: {flows:?}"
        );
        assert!(!f.marker, "no plaintext on the link: {flows:?}");
    }
    let carried: usize = flows.iter().map(|f| f.bytes).sum();
    assert!(
        carried > 2 * 5 * 65536,
        "the five connections' bytes crossed, both ways: {carried} B in {flows:?}"
    );
    // One pooled HTTP/2 connection per source workload (its own client certificate).
    assert_eq!(
        flows.iter().filter(|f| f.key.ends_with(&hbone)).count(),
        2,
        "{flows:?}"
    );

    // Node 2 logged each stream with its calling workload's identity, and delivered it
    // to the endpoint node 1 picked.
    let log = std::fs::read_to_string(proxy2.dir.join("streams.log")).unwrap_or_default();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    let (a_line, c_line) = (format!("{A_ID} {B_IP}:8080"), format!("{C_ID} {B_IP}:8080"));
    assert_eq!(
        lines,
        vec![a_line.as_str(), &a_line, &a_line, &c_line, &c_line],
        "node 2's stream log\n{}",
        proxy2.logs()
    );
    let s1 = proxy1.stats(&k.node1);
    let s2 = proxy2.stats(&k.node2);
    let stat = |s: &BTreeMap<String, u64>, name: &str| s.get(name).copied().unwrap_or(0);
    assert_eq!(stat(&s1, "cluster.web_from_a.upstream_rq_total"), 3);
    assert_eq!(stat(&s1, "cluster.web_from_c.upstream_rq_total"), 2);
    assert_eq!(stat(&s1, "server.hbone_pooled_connections"), 2);
    assert_eq!(stat(&s2, "listener.0.0.0.0_15008.downstream_cx_total"), 2);
    assert_eq!(stat(&s2, "cluster.inbound_pods.upstream_cx_total"), 5);
}
