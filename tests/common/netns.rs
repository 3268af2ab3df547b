//! Network namespaces for the capture and node-proxy tests (root, iproute2, iptables): each
//! namespace is created by the test and deleted on drop; every process started in one is
//! ended by PID ([`KillOnDrop`]). Traffic stays inside these namespaces.

use super::{require, selected_proxy, skip_unsupported, switchyard_bin, wait_until, ProxyKind};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Runs `cmd` to completion; panics only when it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Whether `name` is on PATH.
pub fn tool_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a namespace test can run: root, `ip`, iptables (and `extra` tools) present.
/// These tests drive the switchyard binary's own commands whichever proxy the suite runs
/// against, so they run once, in the Switchyard pass.
pub fn prerequisites(extra: &[&str]) -> bool {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "capture and the node proxy are Switchyard's (tested once)",
        );
        return false;
    }
    let root = run(Command::new("id").arg("-u")).stdout == b"0\n";
    let tools = ["ip", "iptables-nft-save"]
        .iter()
        .chain(extra)
        .all(|t| tool_exists(t));
    require(
        root && tools,
        &format!(
            "namespace tests need root, iproute2, iptables and {extra:?} (ci/install-deps installs them)"
        ),
    )
}

/// Checks `out` succeeded and returns its stdout; the panic shows both streams.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of this test, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    /// A fresh namespace with loopback up.
    pub fn new() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-{}-{}",
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
    pub fn sh(&self, script: &str) -> String {
        ok(&run(
            Command::new("ip").args(["netns", "exec", &self.0, "sh", "-c", script])
        ))
    }

    /// A command that runs `program` in the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }

    /// An iptables table as iptables-save prints it, without comments and counters.
    pub fn table(&self, table: &str) -> String {
        self.sh(&format!("iptables-nft-save -t {table}"))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.split_once(" [") {
                Some((chain, _)) if l.starts_with(':') => chain.to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `nat` table (see [`Netns::table`]).
    pub fn nat(&self) -> String {
        self.table("nat")
    }

    /// Everything capture may touch: the nat and mangle tables, our nftables table, the
    /// policy rules, and routing table 133.
    pub fn capture_state(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}",
            self.table("nat"),
            self.table("mangle"),
            self.sh(
                "nft list table ip switchyard 2>/dev/null | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/' || echo no nft table"
            ),
            self.sh("ip rule show"),
            self.sh("ip route show table 133 2>/dev/null || true")
        )
    }

    /// `switchyard capture ARGS --netns <this>`.
    pub fn capture(&self, args: &[&str]) -> Output {
        let mut c = Command::new(switchyard_bin());
        c.arg("capture").args(args).args(["--netns", &self.0]);
        run(&mut c)
    }

    /// Waits until something listens on `addr` (as `ss -ltn` prints it).
    pub fn wait_listening(&self, addr: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.sh("ss -ltn").contains(addr))
    }

    /// Links this namespace to `other` with a veth pair: `ip_here/len` on this side,
    /// `ip_there/len` on the other, both up. Returns the interface names.
    pub fn link(&self, other: &Netns, ip_here: &str, ip_there: &str, len: u8) -> (String, String) {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (
            format!("v{}x{n}", std::process::id()),
            format!("v{}y{n}", std::process::id()),
        );
        ok(&run(Command::new("ip").args([
            "link", "add", &a, "netns", &self.0, "type", "veth", "peer", "name", &b, "netns",
            &other.0,
        ])));
        self.sh(&format!(
            "ip addr add {ip_here}/{len} dev {a} && ip link set {a} up"
        ));
        other.sh(&format!(
            "ip addr add {ip_there}/{len} dev {b} && ip link set {b} up"
        ));
        (a, b)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A child process ended by PID when the test ends, panicking or not.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// The process's PID.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects from `ns` (as `uid`, or as root) to `target` (`ip:port`) with bash's
/// `/dev/tcp` and returns what came back, or `failed: <why>`. One second at most: a captured
/// connection completes in milliseconds, one that is not waits for a SYN-ACK that never
/// comes.
pub fn fetch_in(ns: &Netns, uid: Option<u32>, target: &str) -> String {
    let (ip, port) = target.split_once(':').unwrap();
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && cat <&3");
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
    c.args(["timeout", "1", "bash", "-c", &script]);
    let out = run(&mut c);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}
