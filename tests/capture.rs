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
//! * ten install/remove cycles (REDIRECT, with inbound, TPROXY) leave the nat and mangle
//!   tables, the nftables ruleset, the policy rules and routing table 133 as they were;
//! * errors name the tool: iptables missing, not permitted.
//!
//! Switchyard-only (Envoy has no capture command).

mod common;

use common::netns::*;
use common::*;
use std::process::Command;
use std::time::Duration;

fn prerequisites() -> bool {
    common::netns::prerequisites(&[])
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

/// A node namespace (10.250.0.1) and a peer (10.250.0.2) on a veth pair, the node's default
/// route going to the peer: a Service VIP such as 10.96.0.10 is routed out of the node and
/// exists nowhere.
fn node_and_peer() -> (Netns, Netns) {
    let (ns, peer) = (Netns::new(), Netns::new());
    ns.link(&peer, "10.250.0.1", "10.250.0.2", 30);
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
    if !common::netns::prerequisites(&["nft"]) {
        return;
    }
    let ns = Netns::new();
    let before = ns.capture_state();
    for i in 0..10 {
        let args: &[&str] = match i % 3 {
            0 => &["install", "--inbound", "--exclude-port", "22"],
            1 => &["install", "--exclude-port", "22"],
            _ => &[
                "install",
                "--mode",
                "tproxy",
                "--exclude-cidr",
                "10.1.0.0/16",
            ],
        };
        ok(&ns.capture(args));
        if i % 3 == 2 {
            let tproxy = ns.capture_state();
            assert!(tproxy.contains("tproxy to :15001"), "{tproxy}");
            assert!(tproxy.contains("lookup 133"), "{tproxy}");
        }
        ok(&ns.capture(&["remove"]));
        assert_eq!(
            ns.capture_state(),
            before,
            "cycle {i} left something behind"
        );
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
