//! `switchyard capture install|remove|status` in network namespaces the test creates (root,
//! iptables and iproute2 needed; under CI=true their absence fails the test):
//!
//! * install twice gives the same rules, remove leaves the `nat` table exactly as it was,
//!   rules of others (a chain, a rule in OUTPUT) untouched;
//! * status shows the rules with counters, and "not installed" after remove;
//! * traffic: a connection from a node namespace (default route over a veth to a peer that
//!   answers nothing) to 10.96.0.10:80 is redirected to the listener on 127.0.0.1:15001; from
//!   the proxy's UID it is not captured (it times out), nor one to an excluded CIDR, nor any
//!   after remove;
//! * with the proxy gone and capture installed, a captured connection is refused at once
//!   (never a hang, never a bypass);
//! * ten install/remove cycles leave the table as it was;
//! * errors name the tool: iptables missing, not permitted.
//!
//! Switchyard-only (Envoy has no capture command).

mod common;

use common::*;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn tool_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether this test can run: root, `ip` and iptables present. Capture is the switchyard
/// binary's own command, whichever proxy the suite runs against: it is tested once.
fn prerequisites() -> bool {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "capture is Switchyard's command (tested once)",
        );
        return false;
    }
    let root = run(Command::new("id").arg("-u")).stdout == b"0\n";
    require(
        root && tool_exists("ip") && tool_exists("iptables-nft-save"),
        "capture tests need root, iproute2 and iptables (ci/install-deps installs them)",
    )
}

/// A network namespace of this test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-cap-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = run(Command::new("ip").args(["netns", "add", &name]));
        assert!(out.status.success(), "ip netns add: {out:?}");
        let ns = Netns(name);
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs `script` in the namespace; panics on failure.
    fn sh(&self, script: &str) -> String {
        let out = run(Command::new("ip").args(["netns", "exec", &self.0, "sh", "-c", script]));
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `nat` table as iptables-save prints it, without comments and counters.
    fn nat(&self) -> String {
        self.sh("iptables-nft-save -t nat")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                Some((chain, _)) if l.starts_with(':') => chain.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn capture(&self, args: &[&str]) -> Output {
        let mut c = Command::new(switchyard_bin());
        c.arg("capture").args(args).args(["--netns", &self.0]);
        run(&mut c)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_is_idempotent_and_remove_restores_the_table() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new();
    // Someone else's rules, which capture must leave alone.
    ns.sh("iptables-nft -t nat -N OTHER && iptables-nft -t nat -A OUTPUT -p udp -j OTHER");
    let before = ns.nat();
    let args = [
        "install",
        "--exclude-cidr",
        "10.1.0.0/16",
        "--exclude-port",
        "22",
        "--inbound",
    ];
    let printed = ok(&ns.capture(&args));
    assert!(printed.contains("-A SWITCHYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 15001"));
    let once = ns.nat();
    ok(&ns.capture(&args));
    assert_eq!(ns.nat(), once, "install twice gives the same rules");
    for want in [
        "-A OUTPUT -p udp -j OTHER",
        "-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT",
        "-A PREROUTING -p tcp -j SWITCHYARD_PREROUTING",
        "-A SWITCHYARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A SWITCHYARD_OUTBOUND -d 10.1.0.0/16 -j RETURN",
        "-A SWITCHYARD_INBOUND -p tcp -j REDIRECT --to-ports 15006",
    ] {
        assert!(once.contains(want), "missing {want:?}:\n{once}");
    }
    let status = ok(&ns.capture(&["status"]));
    assert!(
        status.starts_with("capture: installed (iptables-nft)"),
        "{status}"
    );
    assert!(status.contains("redir ports 15001"), "{status}");

    ok(&ns.capture(&["remove"]));
    assert_eq!(ns.nat(), before, "remove leaves the table as it was");
    ok(&ns.capture(&["remove"]));
    let status = ok(&ns.capture(&["status"]));
    assert!(status.starts_with("capture: not installed"), "{status}");
}

/// Connects from the namespace (as `uid`, or as root) to `target` and returns what the
/// listener on 127.0.0.1:15001 there sent back, or the error.
fn fetch_in(ns: &Netns, uid: Option<u32>, target: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && cat <&3",
        target.split(':').next().unwrap(),
        target.split(':').nth(1).unwrap()
    );
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.0]);
    if let Some(uid) = uid {
        c.args([
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    // A captured connection completes in milliseconds; one that is not waits for a SYN-ACK
    // that never comes.
    c.args(["timeout", "1", "bash", "-c", &script]);
    let out = run(&mut c);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// A node namespace (10.250.0.1) and a peer (10.250.0.2) on a veth pair, the node's default
/// route going to the peer: a Service VIP such as 10.96.0.10 is routed out of the node and
/// exists nowhere.
fn node_and_peer() -> (Netns, Netns) {
    let (ns, peer) = (Netns::new(), Netns::new());
    let (a, b) = (format!("{}a", &ns.0[3..]), format!("{}b", &ns.0[3..]));
    let out = run(Command::new("ip").args([
        "link", "add", &a, "netns", &ns.0, "type", "veth", "peer", "name", &b, "netns", &peer.0,
    ]));
    assert!(out.status.success(), "veth: {out:?}");
    ns.sh(&format!(
        "ip addr add 10.250.0.1/30 dev {a} && ip link set {a} up"
    ));
    peer.sh(&format!(
        "ip addr add 10.250.0.2/30 dev {b} && ip link set {b} up"
    ));
    ns.sh("ip route add default via 10.250.0.2");
    (ns, peer)
}

#[test]
fn captured_connections_reach_the_proxy_port_and_the_proxys_own_do_not() {
    if !prerequisites() || !require(tool_exists("setpriv"), "setpriv (util-linux)") {
        return;
    }
    // The peer answers nothing: only capture makes 10.96.0.10 answer.
    let (ns, _peer) = node_and_peer();
    // The "proxy": a banner on 127.0.0.1:15001 in the node namespace, from a Python process
    // this test starts and ends by PID.
    let listener = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "python3",
            "-c",
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',15001))\ns.listen()\nwhile True:\n c,_=s.accept(); c.sendall(b'captured'); c.close()",
        ])
        .spawn()
        .map(KillOnDrop)
        .expect("python3 listener");
    assert!(
        wait_until(Duration::from_secs(5), || ns
            .sh("ss -ltn")
            .contains("127.0.0.1:15001")),
        "listener never came up"
    );
    let before = fetch_in(&ns, None, "10.96.0.10:80");
    assert!(
        before.starts_with("failed"),
        "nothing at the VIP before capture: {before}"
    );
    ok(&ns.capture(&["install", "--exclude-cidr", "10.100.0.0/16"]));
    assert_eq!(fetch_in(&ns, None, "10.96.0.10:80"), "captured");
    assert_eq!(fetch_in(&ns, Some(4242), "10.96.0.10:80"), "captured");
    let own = fetch_in(&ns, Some(1337), "10.96.0.10:80");
    assert!(
        own.starts_with("failed"),
        "the proxy's UID is never captured: {own}"
    );
    let excluded = fetch_in(&ns, None, "10.100.0.1:80");
    assert!(
        excluded.starts_with("failed"),
        "an excluded CIDR is not captured: {excluded}"
    );
    let counters = ok(&ns.capture(&["status"]));
    assert!(counters.contains("REDIRECT"), "{counters}");

    // The proxy gone, capture still installed: a captured connection is refused at once,
    // never a hang and never a bypass to the (silent) destination.
    drop(listener);
    let started = std::time::Instant::now();
    let down = fetch_in(&ns, None, "10.96.0.10:80");
    assert!(down.contains("refused"), "proxy down: {down}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "refused at once, not after a timeout: {:?}",
        started.elapsed()
    );

    ok(&ns.capture(&["remove"]));
    let after = fetch_in(&ns, None, "10.96.0.10:80");
    assert!(
        after.starts_with("failed") && !after.contains("refused"),
        "removed: not captured any more: {after}"
    );
}

#[test]
fn ten_install_remove_cycles_leak_no_rule() {
    if !prerequisites() {
        return;
    }
    let ns = Netns::new();
    let before = ns.nat();
    for i in 0..10 {
        let inbound = if i % 2 == 0 {
            "--inbound"
        } else {
            "--proxy-port=15001"
        };
        ok(&ns.capture(&["install", inbound, "--exclude-port", "22"]));
        ok(&ns.capture(&["remove"]));
        assert_eq!(ns.nat(), before, "cycle {i} left something behind");
    }
}

/// A child process ended by PID when the test ends, panicking or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn errors_name_the_tool_and_the_reason() {
    if !prerequisites() || !require(tool_exists("setpriv"), "setpriv (util-linux)") {
        return;
    }
    let out = run(Command::new(switchyard_bin())
        .args(["capture", "status"])
        .env("PATH", "/nonexistent"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not found: install it"), "{err}");

    let out = run(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(switchyard_bin())
        .args(["capture", "install", "--backend", "nft"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not permitted"), "{err}");
}

/// A Python banner server in `ns` on `addr`: each connection gets `tag` and is closed.
fn banner(ns: &Netns, addr: &str, tag: &str) -> KillOnDrop {
    let (ip, port) = addr.split_once(':').unwrap();
    let code = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{ip}',{port}))\ns.listen()\nwhile True:\n c,_=s.accept(); c.sendall(b'{tag}'); c.close()"
    );
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", &code])
        .spawn()
        .map(KillOnDrop)
        .expect("python3 banner");
    assert!(
        wait_until(Duration::from_secs(5), || ns.sh("ss -ltn").contains(addr)),
        "banner {tag} never listened on {addr}"
    );
    child
}

/// The node proxy's path: a client in the node namespace dials a Service VIP that exists
/// nowhere; capture redirects it to Switchyard (UID 1337, so its own upstream connections
/// are not captured), whose `use_original_dst` listener matches the VIP and port to a
/// cluster in the peer namespace.
#[test]
fn a_captured_connection_is_routed_by_its_original_destination() {
    if !prerequisites() || !require(tool_exists("setpriv"), "setpriv (util-linux)") {
        return;
    }
    let (ns, peer) = node_and_peer();
    let _web = banner(&peer, "10.250.0.2:9080", "web");
    let _api = banner(&peer, "10.250.0.2:9081", "api");

    let dir = std::env::temp_dir().join(format!("{}-proxy", ns.0));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.yaml");
    let chain = |port: u16, cluster: &str| {
        format!(
            r#"    - filter_chain_match:
        prefix_ranges: [{{ address_prefix: 10.96.0.10, prefix_len: 32 }}]
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
    let cluster = |name: &str, port: u16| {
        format!(
            r#"  - name: {name}
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 10.250.0.2, port_value: {port} }} }} }}
"#
        )
    };
    let yaml = format!(
        "admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: 15000 }}\nstatic_resources:\n  listeners:\n  - name: outbound\n    address:\n      socket_address: {{ address: 0.0.0.0, port_value: 15001 }}\n    use_original_dst: true\n    filter_chains:\n{}{}  clusters:\n{}{}",
        chain(80, "web"),
        chain(81, "api"),
        cluster("web", 9080),
        cluster("api", 9081)
    );
    std::fs::write(&config, yaml).unwrap();
    let _ = run(Command::new("chmod").args(["-R", "a+rX", dir.to_str().unwrap()]));
    let proxy = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .args(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"])
        .arg(switchyard_bin())
        .args(["run", "-c", config.to_str().unwrap(), "--concurrency", "1"])
        .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
        .spawn()
        .map(KillOnDrop)
        .expect("switchyard");
    let logs = || std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || ns
            .sh("ss -ltn")
            .contains("0.0.0.0:15001")),
        "switchyard never listened\n{}",
        logs()
    );
    ok(&ns.capture(&["install"]));
    assert_eq!(
        fetch_in(&ns, Some(4242), "10.96.0.10:80"),
        "web",
        "{}",
        logs()
    );
    assert_eq!(
        fetch_in(&ns, Some(4242), "10.96.0.10:81"),
        "api",
        "{}",
        logs()
    );
    // An unmatched destination has no chain: the connection is closed, not passed through.
    let other = fetch_in(&ns, Some(4242), "10.96.0.11:80");
    assert!(!other.contains("web") && !other.contains("api"), "{other}");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
