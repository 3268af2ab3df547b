//! Corpus files run for real, unchanged: the same file and the same traffic through the
//! selected proxy (Switchyard, or Envoy with `SWITCHYARD_TEST_PROXY=envoy`), and the same
//! results asserted for both: bytes and datagrams echoed through the names the files resolve,
//! the stats Envoy names, the admin's access-log line.
//!
//! Each file runs in a network namespace of its own, so its fixed ports and addresses are its
//! own; `ip netns exec` mounts `/etc/netns/<ns>/resolv.conf` over `/etc/resolv.conf`, which
//! names the test's DNS server ([`World`], tests/corpus_run/world.py) on 127.0.0.1:53 in the
//! namespace: the files' host names (`service-https`, `service-udp`) are answered there, and
//! nothing leaves the namespace. Needs root, iproute2 and python3 (CI has them).

#[macro_use]
mod common;

use common::netns::{tool_exists, KillOnDrop, Netns};
use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A corpus file, by its path under tests/corpus/envoy.
fn corpus_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus/envoy")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Root, `ip` and python3, and the selected proxy.
fn prerequisites() -> bool {
    let root = netns::run(Command::new("id").arg("-u")).stdout == b"0\n";
    require(
        root && tool_exists("ip") && tool_exists("python3"),
        "running corpus files needs root, iproute2 and python3 (network namespaces)",
    ) && proxy_available(selected_proxy())
}

/// A namespace with the test's DNS server and echo backends (world.py) in it.
struct World {
    ns: Netns,
    _process: KillOnDrop,
    lines: Arc<Mutex<Vec<String>>>,
}

impl World {
    /// Starts world.py in a fresh namespace whose resolver is that server, with `args`.
    fn start(args: &[&str]) -> World {
        let ns = Netns::new();
        let etc = resolv_dir(&ns);
        std::fs::create_dir_all(&etc).expect("/etc/netns/<ns>");
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").expect("resolv.conf");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus_run/world.py");
        let mut child = ns
            .command("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start world.py");
        let stdout = child.stdout.take().expect("world.py stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let world = World {
            ns,
            _process: KillOnDrop(child),
            lines,
        };
        assert!(
            world.wait_line(|l| l == "ready"),
            "world.py did not start: {:?}",
            world.lines()
        );
        world
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn wait_line(&self, want: impl Fn(&str) -> bool) -> bool {
        wait_until(Duration::from_secs(10), || {
            self.lines.lock().unwrap().iter().any(|l| want(l))
        })
    }

    /// Starts the selected proxy in the namespace on `yaml`, and waits until `socket` (as
    /// `ss -lntu` prints it, e.g. `0.0.0.0:10000`) is bound: with a DNS cluster, after the
    /// cluster's first answer, as in Envoy.
    fn proxy(&self, yaml: &str, socket: &str) -> Proxy {
        let opts = ProxyOpts {
            netns: Some(self.ns.0.clone()),
            ..ProxyOpts::default()
        };
        let proxy = Proxy::spawn(selected_proxy(), yaml, opts);
        let bound = wait_until(Duration::from_secs(15), || {
            self.ns.sh("ss -lntu").contains(socket)
        });
        assert!(bound, "{socket} never bound\n{}", proxy.logs());
        proxy
    }

    /// Runs a python3 client in the namespace; its stdout.
    fn client(&self, script: &str) -> String {
        let out = netns::run(
            self.ns
                .command("timeout")
                .args(["20", "python3", "-c", script]),
        );
        netns::ok(&out)
    }

    /// An admin GET from inside the namespace: status and body.
    fn admin_get(&self, admin: &str, path: &str) -> String {
        self.client(&format!(
            "import urllib.request\nr = urllib.request.urlopen('http://{admin}{path}', timeout=5)\nprint(r.read().decode())"
        ))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(resolv_dir(&self.ns));
    }
}

/// Where `ip netns exec` finds the namespace's /etc files.
fn resolv_dir(ns: &Netns) -> PathBuf {
    PathBuf::from("/etc/netns").join(&ns.0)
}

/// One stat of a `/stats` body.
fn stat_in(body: &str, name: &str) -> Option<u64> {
    parse_stats(body).get(name).copied()
}

/// Envoy's tls-passthrough example: a TCP proxy on 0.0.0.0:10000 to a STRICT_DNS cluster
/// `service-https:443`. Four clients at once each send 256 KiB (TLS or not: the bytes pass
/// through untouched) and get them back from the echo backend at the name's address.
#[test]
fn tls_passthrough_example_relays_to_the_name_it_resolves() {
    if !prerequisites() {
        return;
    }
    let world = World::start(&[
        "--dns",
        "service-https=127.0.0.10",
        "--tcp-echo",
        "127.0.0.10:443",
    ]);
    let yaml = corpus_file("envoy/examples-tls-https-passthrough.yaml");
    let proxy = world.proxy(&yaml, "0.0.0.0:10000");
    let out = world.client(
        r#"
import hashlib, socket, threading
results = []
def one(i):
    data = bytes((i * 7 + n) % 251 for n in range(256 * 1024))
    s = socket.create_connection(("127.0.0.1", 10000), timeout=10)
    def send():
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send); t.start()
    got = b""
    while True:
        part = s.recv(65536)
        if not part:
            break
        got += part
    t.join()
    results.append(hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest())
threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print(sum(results))
"#,
    );
    assert_eq!(
        out.trim(),
        "4",
        "clients whose bytes came back exactly\n{}",
        proxy.logs()
    );
    assert!(
        world.wait_line(|l| l == "query service-https 1"),
        "no A query for service-https: {:?}",
        world.lines()
    );
    assert_eq!(
        world
            .lines()
            .iter()
            .filter(|l| l.starts_with("tcp "))
            .count(),
        4,
        "backend connections: {:?}",
        world.lines()
    );
}

/// Envoy's UDP example: a udp_proxy on 0.0.0.0:10000 to a STRICT_DNS cluster
/// `service-udp:5005`, admin on 0.0.0.0:10001. Three datagrams from one client come back
/// from the echo backend, and the admin counts them under Envoy's names.
#[test]
fn udp_example_forwards_datagrams_to_the_name_it_resolves() {
    if !prerequisites() {
        return;
    }
    let world = World::start(&[
        "--dns",
        "service-udp=127.0.0.11",
        "--udp-echo",
        "127.0.0.11:5005",
    ]);
    let yaml = corpus_file("envoy/examples-udp-envoy.yaml");
    let proxy = world.proxy(&yaml, "0.0.0.0:10000");
    let out = world.client(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
back = 0
for i in range(3):
    msg = b"datagram %d" % i
    s.sendto(msg, ("127.0.0.1", 10000))
    data, _ = s.recvfrom(2048)
    back += data == msg
print(back)
"#,
    );
    assert_eq!(out.trim(), "3", "datagrams echoed\n{}", proxy.logs());
    let mut stats = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        stats = world.admin_get("127.0.0.1:10001", "/stats");
        stat_in(&stats, "udp.service.downstream_sess_rx_datagrams") == Some(3)
            && stat_in(&stats, "udp.service.downstream_sess_tx_datagrams") == Some(3)
    });
    assert!(
        counted,
        "udp.service.* after 3 datagrams each way:\n{}",
        stats
            .lines()
            .filter(|l| l.starts_with("udp.service."))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        stat_in(&stats, "cluster.service_udp.membership_total"),
        Some(1),
        "one host resolved for service-udp"
    );
}

/// The udp_proxy example of Envoy's docs: 127.0.0.1:1234 to 127.0.0.1:1235, and its admin
/// writes an access-log line per request to `/tmp/admin_access.log`, the file's own path.
#[test]
fn udp_docs_example_forwards_and_logs_admin_requests() {
    if !prerequisites() {
        return;
    }
    const LOG: &str = "/tmp/admin_access.log";
    let _ = std::fs::remove_file(LOG);
    let world = World::start(&["--udp-echo", "127.0.0.1:1235"]);
    let yaml = corpus_file("envoy/docs-udp-proxy.yaml");
    let mut proxy = world.proxy(&yaml, "127.0.0.1:1234");
    let out = world.client(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"through the docs", ("127.0.0.1", 1234))
print(s.recvfrom(2048)[0].decode())
"#,
    );
    assert_eq!(out.trim(), "through the docs", "{}", proxy.logs());
    let stats = world.admin_get("127.0.0.1:9901", "/stats?filter=udp.service");
    assert!(
        stats.contains("udp.service.downstream_sess_rx_datagrams: 1"),
        "{stats}"
    );
    // Envoy flushes its access logs on exit: read the file after a clean stop.
    proxy.sigterm();
    assert!(
        proxy.wait_exit(Duration::from_secs(15)).is_some(),
        "no exit after SIGTERM\n{}",
        proxy.logs()
    );
    let log = std::fs::read_to_string(LOG).unwrap_or_default();
    let _ = std::fs::remove_file(LOG);
    assert!(
        log.lines()
            .any(|l| l.contains("\"GET /stats?filter=udp.service HTTP/1.1\" 200 ")),
        "{LOG}:\n{log}"
    );
}
