//! The DaemonSet's rolling update (maxSurge 1, maxUnavailable 0) on one node: a new proxy
//! starts next to the old one on the same listener port (SO_REUSEPORT; each has its admin on
//! its own Unix socket, Envoy's `admin.address.pipe`, as each pod has its own `emptyDir`),
//! then the old one drains (`POST /drain_listeners`, then SIGTERM) and exits.
//!
//! * the new proxy starts and turns ready while the old one runs (a TCP admin port could not
//!   be shared: the second process would fail to start);
//! * a client connecting without pause throughout sees every connection answered, byte-exact;
//! * a connection open on the old proxy finishes its exchange after the drain began;
//! * once the old proxy is gone, every connection goes to the new one.
//!
//! Runs in both relay modes. The node runs as deploy/README.md asks: with
//! `net.ipv4.tcp_migrate_req = 1`, without which the kernel resets a connection that completes
//! in the microseconds between the old proxy's last accept and its listener's close (one
//! handover in 40 lost a connection here with the CPUs busy). When the test's network namespace has it at 0, the test
//! runs itself again in a namespace of its own with it set (root; in CI it must).
//!
//! Switchyard-only: the two-process handover relies on Switchyard's SO_REUSEPORT listeners
//! and its drain (Envoy hands sockets over by hot restart instead).

#[macro_use]
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One HTTP/1.1 request over the admin's Unix socket: (status, body).
fn admin(socket: &Path, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// A proxy process of this test, killed by PID if the test ends early.
struct Instance {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Instance {
    fn start(
        dir: &Path,
        tag: &str,
        port: u16,
        backend: std::net::SocketAddr,
        mode: RelayMode,
    ) -> Instance {
        let socket = dir.join(format!("{tag}.sock"));
        let config = dir.join(format!("{tag}.yaml"));
        let listener = tcp_listener("gw", port, "gw", "echo");
        let clusters = static_cluster("echo", &[(backend, 1)]);
        let yaml = format!(
            "admin:\n  address:\n    pipe: {{ path: {} }}\nstatic_resources:\n  listeners:\n{listener}  clusters:\n{clusters}",
            socket.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join(format!("{tag}.log"));
        let child = Command::new(switchyard_bin())
            .args(["run", "-c"])
            .arg(&config)
            .args(["--concurrency", "1", "--drain-time-s", "10"])
            .args(["--relay-mode", mode.arg()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start switchyard");
        let i = Instance { child, socket, log };
        assert!(
            wait_until(Duration::from_secs(10), || i.ready()),
            "{tag} never turned ready\n{}",
            i.logs()
        );
        i
    }

    fn ready(&self) -> bool {
        admin(&self.socket, "GET", "/ready").is_ok_and(|(s, _)| s == 200)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stat(&self, name: &str) -> u64 {
        let (_, body) = admin(&self.socket, "GET", "/stats").expect("admin /stats");
        parse_stats(&body).get(name).copied().unwrap_or(0)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

in_both_relay_modes!(a_new_proxy_takes_over_the_port_without_refusing_a_connection);

/// Set in the copy of this test that runs inside a namespace with `tcp_migrate_req` set.
const IN_MIGRATING_NETNS: &str = "SWITCHYARD_TEST_IN_MIGRATING_NETNS";

/// `net.ipv4.tcp_migrate_req` of this process's network namespace.
fn tcp_migrate_req() -> Option<bool> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok()?;
    Some(text.trim() != "0")
}

/// Runs test `name` of this binary again in a fresh namespace with `tcp_migrate_req` set;
/// panics with its output unless it ran and passed.
fn rerun_with_migration(name: &str) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !require(
        root && netns::tool_exists("ip"),
        "the handover needs net.ipv4.tcp_migrate_req = 1: set it, or run as root with iproute2 \
(the test then makes a namespace with it)",
    ) {
        return;
    }
    let ns = netns::Netns::new();
    ns.sh("echo 1 > /proc/sys/net/ipv4/tcp_migrate_req");
    let exe = std::env::current_exe().expect("this test binary");
    let out = netns::run(
        ns.command(exe.to_str().expect("a UTF-8 path"))
            .args([name, "--exact", "--nocapture", "--test-threads", "1"])
            .env(IN_MIGRATING_NETNS, "1"),
    );
    let text = netns::ok(&out);
    assert!(
        text.contains("1 passed"),
        "{name} did not run in the namespace:\n{text}"
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
}

fn a_new_proxy_takes_over_the_port_without_refusing_a_connection(mode: RelayMode) {
    if selected_proxy() != ProxyKind::Switchyard {
        skip_unsupported(
            selected_proxy(),
            "two-process handover over SO_REUSEPORT (Envoy hot-restarts)",
        );
        return;
    }
    if std::env::var_os(IN_MIGRATING_NETNS).is_none() && tcp_migrate_req() != Some(true) {
        let module = match mode {
            RelayMode::BufferRing => "buffer_ring",
            RelayMode::Splice => "splice",
        };
        rerun_with_migration(&format!(
            "{module}::a_new_proxy_takes_over_the_port_without_refusing_a_connection"
        ));
        return;
    }
    let backend = Backend::echo();
    let dir = test_dir("rolling");
    let port = free_port();
    let old = Instance::start(&dir, "old", port, backend.addr, mode);

    // A connection that will still be open when the old proxy drains.
    let mut held = connect_retry(local(port), Duration::from_secs(5));
    assert_eq!(ping(&mut held, b"before").unwrap(), b"before");

    // A client that never pauses: every connection must be answered, byte-exact.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut seed = 1;
            while !stop.load(Ordering::Relaxed) && errors.len() < 20 {
                seed += 1;
                let outcome = connect(local(port)).and_then(|s| {
                    let x = exchange(s, seed, 4096);
                    if x.received == 4096 && x.received_sha == prng_sha256(seed, 4096) {
                        Ok(())
                    } else {
                        Err(std::io::Error::other(format!("{x:?}")))
                    }
                });
                match outcome {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.push(e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };
    let served_before = |n: usize| {
        wait_until(Duration::from_secs(10), || {
            done.load(Ordering::Relaxed) >= n
        })
    };
    assert!(served_before(50), "the client runs through the old proxy");

    // The surge pod: same port, its own admin socket.
    let new = Instance::start(&dir, "new", port, backend.addr, mode);
    assert!(old.ready(), "the old proxy still serves");
    let both = done.load(Ordering::Relaxed);
    assert!(served_before(both + 200), "both serve side by side");

    // The old pod's preStop, then its SIGTERM.
    assert_eq!(
        admin(&old.socket, "POST", "/healthcheck/fail").unwrap().0,
        200
    );
    assert_eq!(
        admin(&old.socket, "POST", "/drain_listeners").unwrap().0,
        200
    );
    let drained = done.load(Ordering::Relaxed);
    assert!(served_before(drained + 200), "the new proxy serves alone");
    assert_eq!(
        ping(&mut held, b"after drain").unwrap(),
        b"after drain",
        "the held connection goes on"
    );
    ok_kill(&old, "-TERM");
    drop(held);
    let mut old = old;
    let exited = wait_until(Duration::from_secs(10), || {
        old.child.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "the old proxy exits once drained\n{}", old.logs());

    let after = done.load(Ordering::Relaxed);
    assert!(served_before(after + 100), "the new proxy alone");
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    assert!(
        errors.is_empty(),
        "{} of {} connections failed during the handover: {errors:?}\nold:\n{}\nnew:\n{}",
        failed.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed),
        old.logs(),
        new.logs()
    );
    let taken = new.stat(&format!("listener.127.0.0.1_{port}.downstream_cx_total"));
    assert!(
        taken >= 300,
        "the new proxy took the later connections: {taken}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `signal` to the instance by PID.
fn ok_kill(i: &Instance, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &i.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {}", i.child.id());
}
