//! Endpoint health through real sockets: active TCP health checks, outlier detection,
//! priority failover, and an endpoint that flaps under load. Every test runs against
//! Switchyard, and against Envoy with `SWITCHYARD_TEST_PROXY=envoy` (same bootstrap), so the
//! behaviour and the stat names are Envoy's.
//!
//! Backends here are [`HcBackend`]s: they greet each connection with a tag line, answer a
//! health check's `PING` with `PONG` (or `WRONG`, or nothing, as the test sets), and echo
//! everything else. One can be stopped (its port then refuses) and restarted on the same
//! port.
//!
//! Bootstraps set `common_lb_config.update_merge_window: 0s` so that Envoy, like Switchyard,
//! applies a host's health change at once (Envoy's default merges changes for 1 s), and
//! `no_traffic_interval` so that Envoy checks at `interval` before the first connection.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Backends that answer health checks
// ---------------------------------------------------------------------------------------------

/// How an [`HcBackend`] answers a health check's `PING`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Answer {
    Pong = 0,
    Wrong = 1,
    /// Reads and never writes (a hung backend): no greeting either.
    Silent = 2,
    /// Resets every connection as soon as it is accepted.
    Reset = 3,
}

/// A tagged backend on a fixed port that answers `PING` as told and can be stopped and
/// restarted on the same port.
struct HcBackend {
    tag: String,
    port: u16,
    answer: Arc<AtomicU8>,
    accepted: Arc<AtomicUsize>,
    live: Live,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HcBackend {
    fn start(tag: &str) -> HcBackend {
        HcBackend::on_port(tag, free_port())
    }

    fn on_port(tag: &str, port: u16) -> HcBackend {
        let mut b = HcBackend {
            tag: tag.to_string(),
            port,
            answer: Arc::new(AtomicU8::new(Answer::Pong as u8)),
            accepted: Arc::new(AtomicUsize::new(0)),
            live: Live::default(),
            stop: Arc::new(AtomicBool::new(true)),
            thread: None,
        };
        b.resume();
        b
    }

    fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    fn set_answer(&self, a: Answer) {
        self.answer.store(a as u8, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Listens again on the same port (connections then succeed).
    fn resume(&mut self) {
        assert!(self.thread.is_none(), "already listening");
        let listener = bind_retry(self.port);
        listener.set_nonblocking(true).expect("nonblocking");
        self.stop = Arc::new(AtomicBool::new(false));
        let (tag, answer, accepted, stop, live) = (
            self.tag.clone(),
            self.answer.clone(),
            self.accepted.clone(),
            self.stop.clone(),
            self.live.clone(),
        );
        self.thread = Some(thread::spawn(move || {
            let deadline = Instant::now() + BACKEND_LIFETIME;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst)
                && Instant::now() < deadline
                && n < BACKEND_MAX_CONNS * 4
            {
                match listener.accept() {
                    Ok((s, _)) => {
                        n += 1;
                        accepted.fetch_add(1, Ordering::SeqCst);
                        let (tag, answer, live) = (tag.clone(), answer.clone(), live.clone());
                        let id = live.add(&s);
                        thread::spawn(move || {
                            serve_hc(s, &tag, &answer);
                            live.remove(id);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_micros(200)),
                }
            }
        }));
    }

    /// Dies, as a killed process does: stops listening (the port refuses from now on) and
    /// closes every connection it has (a health checker's reused connection included).
    fn pause(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("accept thread");
        }
        self.live.close_all();
    }
}

/// The connections a backend has open, so that it can close them all.
#[derive(Clone, Default)]
struct Live(Arc<std::sync::Mutex<(u64, BTreeMap<u64, TcpStream>)>>);

impl Live {
    fn add(&self, s: &TcpStream) -> u64 {
        let mut g = self.0.lock().expect("live");
        g.0 += 1;
        let id = g.0;
        if let Ok(clone) = s.try_clone() {
            g.1.insert(id, clone);
        }
        id
    }

    fn remove(&self, id: u64) {
        self.0.lock().expect("live").1.remove(&id);
    }

    fn close_all(&self) {
        for (_, s) in std::mem::take(&mut self.0.lock().expect("live").1) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for HcBackend {
    fn drop(&mut self) {
        self.pause();
    }
}

/// The port may be in TIME_WAIT use for a moment after a pause; std sets SO_REUSEADDR.
fn bind_retry(port: u16) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
        }
    }
}

fn serve_hc(mut s: TcpStream, tag: &str, answer: &AtomicU8) {
    if answer.load(Ordering::SeqCst) == Answer::Reset as u8 {
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        return;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_nodelay(true);
    let silent = answer.load(Ordering::SeqCst) == Answer::Silent as u8;
    if !silent && s.write_all(format!("{tag}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply: &[u8] = if buf[..n].windows(4).any(|w| w == b"PING") {
            match answer.load(Ordering::SeqCst) {
                0 => b"PONG",
                1 => b"WRONG",
                _ => b"",
            }
        } else if silent {
            b""
        } else {
            &buf[..n]
        };
        if !reply.is_empty() && s.write_all(reply).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configs and clients
// ---------------------------------------------------------------------------------------------

/// The TCP health check every test uses: PING -> PONG.
fn tcp_check(interval_ms: u32, timeout_ms: u32, unhealthy: u32, healthy: u32) -> String {
    let (interval, timeout) = (secs(interval_ms), secs(timeout_ms));
    format!(
        r#"    health_checks:
    - timeout: {timeout}
      interval: {interval}
      no_traffic_interval: {interval}
      unhealthy_threshold: {unhealthy}
      healthy_threshold: {healthy}
      tcp_health_check:
        send: {{ text: "50494e47" }}
        receive: [{{ text: "504f4e47" }}]
"#
    )
}

/// A proto3 JSON duration: `"0.1s"`.
fn secs(ms: u32) -> String {
    format!("{}s", f64::from(ms) / 1000.0)
}

/// A STATIC round-robin cluster with `(address, priority)` endpoints and `extra` cluster
/// fields (already indented).
fn cluster(name: &str, endpoints: &[(SocketAddr, u32)], extra: &str) -> String {
    let mut priorities: BTreeMap<u32, Vec<SocketAddr>> = BTreeMap::new();
    for (a, p) in endpoints {
        priorities.entry(*p).or_default().push(*a);
    }
    let mut localities = String::new();
    for (p, addrs) in priorities {
        localities.push_str(&format!("      - priority: {p}\n        lb_endpoints:\n"));
        for a in addrs {
            localities.push_str(&format!(
                "        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
                a.ip(),
                a.port()
            ));
        }
    }
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 0.5s
    lb_policy: ROUND_ROBIN
    common_lb_config:
      update_merge_window: 0s
{extra}    load_assignment:
      cluster_name: {name}
      endpoints:
{localities}"#
    )
}

/// A listener to `cluster` with `max_connect_attempts`.
fn listener(port: u16, cluster: &str, attempts: u32) -> String {
    tcp_listener("health", port, "health", cluster).replace(
        &format!("          cluster: {cluster}\n"),
        &format!("          cluster: {cluster}\n          max_connect_attempts: {attempts}\n"),
    )
}

/// One connection: the tag of the backend reached and a byte-exact echo of 64 bytes; the
/// error text when anything failed.
fn one(port: u16, seed: u64) -> Result<String, String> {
    let mut s = connect(local(port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let tag = read_line(&mut s).map_err(|e| format!("tag: {e}"))?;
    let data = Prng::bytes(seed, 64);
    s.write_all(&data).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)
        .map_err(|e| format!("echo from {tag}: {e}"))?;
    if back != data {
        return Err(format!("echo from {tag} differs"));
    }
    Ok(tag)
}

/// `n` sequential connections: how many reached each tag, and the failures.
fn spread(port: u16, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut tags = BTreeMap::new();
    let mut errors = Vec::new();
    for i in 0..n {
        match one(port, i as u64) {
            Ok(tag) => *tags.entry(tag).or_insert(0) += 1,
            Err(e) => errors.push(e),
        }
    }
    (tags, errors)
}

/// The `health_flags` of `addr` in `/clusters`.
fn health_flags(p: &Proxy, addr: SocketAddr) -> String {
    let body = p.get("/clusters").body;
    let key = format!("::{addr}::health_flags::");
    body.lines()
        .find_map(|l| l.split_once(&key).map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| panic!("no health_flags for {addr} in\n{body}"))
}

fn wait_flags(p: &Proxy, addr: SocketAddr, want: &str, timeout: Duration) -> String {
    let mut last = String::new();
    wait_until(timeout, || {
        last = health_flags(p, addr);
        last == want
    });
    last
}

fn start(yaml: &str) -> Option<Proxy> {
    start_selected_with(yaml, 2)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// A backend that answers, one that refuses, one that hangs, one that answers wrong and one
/// that resets: from the first connection only the first is used and stays healthy, each failure is a network failure, the hung and the wrong one
/// are marked `active_hc_timeout`, traffic goes only to the healthy one, and a backend that
/// comes back is healthy after `healthy_threshold` passes and takes traffic again.
#[test]
fn active_checks_find_refusing_hanging_and_wrong_backends() {
    let good = HcBackend::start("good");
    let mut refusing = HcBackend::start("refusing");
    refusing.pause();
    let hanging = HcBackend::start("hanging");
    hanging.set_answer(Answer::Silent);
    let wrong = HcBackend::start("wrong");
    wrong.set_answer(Answer::Wrong);
    let resetting = HcBackend::start("resetting");
    resetting.set_answer(Answer::Reset);
    let (admin, port) = (free_port(), free_port());
    let eps: Vec<(SocketAddr, u32)> = [&good, &refusing, &hanging, &wrong, &resetting]
        .iter()
        .map(|b| (b.addr(), 0))
        .collect();
    let extra = tcp_check(100, 300, 2, 2);
    let yaml = bootstrap(
        admin,
        &listener(port, "hc", 1),
        &cluster("hc", &eps, &extra).replace(
            "      update_merge_window: 0s\n",
            "      update_merge_window: 0s\n      healthy_panic_threshold: { value: 0 }\n",
        ),
    );
    let Some(p) = start(&yaml) else { return };
    // The listener opens once every host has had its first check (Envoy initialises its
    // clusters first): from the first connection, only the healthy backend is used.
    let (tags, errors) = spread(port, 10);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.get("good"), Some(&10), "{tags:?}");

    let healthy = p.wait_stat("cluster.hc.membership_healthy", 1, Duration::from_secs(10));
    assert_eq!(healthy, 1, "{}", p.get("/clusters").body);
    assert_eq!(
        wait_flags(&p, good.addr(), "healthy", Duration::from_secs(5)),
        "healthy"
    );
    assert_eq!(health_flags(&p, refusing.addr()), "/failed_active_hc");
    assert_eq!(health_flags(&p, resetting.addr()), "/failed_active_hc");
    for b in [&hanging, &wrong] {
        // Neither closes: each check runs to its timeout.
        assert_eq!(
            wait_flags(
                &p,
                b.addr(),
                "/failed_active_hc/active_hc_timeout",
                Duration::from_secs(5)
            ),
            "/failed_active_hc/active_hc_timeout",
            "{}",
            b.tag
        );
    }
    let stats = p.stats();
    let failure = stats["cluster.hc.health_check.failure"];
    assert!(
        failure >= 6,
        "three bad backends, two failures each: {failure}"
    );
    assert_eq!(stats["cluster.hc.health_check.network_failure"], failure);
    assert!(stats["cluster.hc.health_check.success"] >= 1);
    assert!(stats["cluster.hc.health_check.attempt"] >= failure);
    assert_eq!(stats["cluster.hc.health_check.healthy"], 1);
    assert_eq!(stats["cluster.hc.membership_total"], 5);
    for name in ["passive_failure", "verify_cluster", "degraded"] {
        assert_eq!(
            stats[&format!("cluster.hc.health_check.{name}")],
            0,
            "{name}"
        );
    }

    let (tags, errors) = spread(port, 30);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.get("good"), Some(&30), "{tags:?}");

    // The refusing backend comes back: healthy after two passes, then takes traffic.
    refusing.resume();
    assert_eq!(
        wait_flags(&p, refusing.addr(), "healthy", Duration::from_secs(5)),
        "healthy"
    );
    let (tags, errors) = spread(port, 40);
    assert!(errors.is_empty(), "{errors:?}");
    // Round robin on each of two workers: about half each.
    for tag in ["good", "refusing"] {
        let n = tags.get(tag).copied().unwrap_or(0);
        assert!((14..=26).contains(&n), "{tags:?}");
    }
    // A backend that starts answering wrong is unhealthy after two failed checks.
    good.set_answer(Answer::Wrong);
    assert_eq!(
        wait_flags(
            &p,
            good.addr(),
            "/failed_active_hc/active_hc_timeout",
            Duration::from_secs(5)
        ),
        "/failed_active_hc/active_hc_timeout"
    );
    let (tags, errors) = spread(port, 20);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.get("refusing"), Some(&20), "{tags:?}");
}

/// Outlier detection: consecutive connect failures eject a refusing endpoint for
/// `base_ejection_time` x times ejected; it returns by itself; `max_ejection_percent` caps
/// how many are out at once. Stats and `/clusters` as Envoy shows them.
#[test]
fn outlier_detection_ejects_refusing_endpoints_and_returns_them() {
    let a = HcBackend::start("a");
    let mut dead = HcBackend::start("dead");
    dead.pause();
    let mut dead2 = HcBackend::start("dead2");
    dead2.pause();
    let (admin, port) = (free_port(), free_port());
    let outlier = "    outlier_detection:\n      consecutive_5xx: 3\n      interval: 0.1s\n      base_ejection_time: 1s\n      max_ejection_percent: 50\n";
    let eps = [(a.addr(), 0), (dead.addr(), 0), (dead2.addr(), 0)];
    let yaml = bootstrap(
        admin,
        &listener(port, "od", 1),
        &cluster("od", &eps, outlier),
    );
    let Some(p) = start(&yaml) else { return };

    // The two dead endpoints fail in turn. After three failures each, one is ejected; the
    // other would take the ejected share to 67% > 50%: overflow.
    let (mut failures, mut connections) = (0, 0);
    let done = || {
        let s = p.stats();
        s["cluster.od.outlier_detection.ejections_active"] == 1
            && s["cluster.od.outlier_detection.ejections_overflow"] >= 1
    };
    while !done() && connections < 60 {
        failures += usize::from(one(port, connections).is_err());
        connections += 1;
    }
    assert!(
        done(),
        "after {connections} connections\n{}",
        p.get("/stats").body
    );
    assert!(
        (6..=12).contains(&failures),
        "{failures} of {connections} failed"
    );
    let stats = p.stats();
    let od = |name: &str| stats[&format!("cluster.od.outlier_detection.{name}")];
    assert_eq!(od("ejections_enforced_total"), 1);
    assert_eq!(od("ejections_enforced_consecutive_5xx"), 1);
    assert!(od("ejections_detected_consecutive_5xx") >= 2);
    assert!(od("ejections_overflow") >= 1);
    assert_eq!(od("ejections_enforced_consecutive_gateway_failure"), 0);
    // Exactly Envoy's 21 outlier stats.
    let names: Vec<&str> = stats
        .keys()
        .filter_map(|k| k.strip_prefix("cluster.od.outlier_detection."))
        .collect();
    assert_eq!(names, ENVOY_OUTLIER_STATS, "outlier stat names");
    let flags: Vec<String> = [dead.addr(), dead2.addr()]
        .iter()
        .map(|&x| health_flags(&p, x))
        .collect();
    assert_eq!(
        flags
            .iter()
            .filter(|f| *f == "/failed_outlier_check")
            .count(),
        1,
        "{flags:?}"
    );
    assert_eq!(stats["cluster.od.membership_healthy"], 2);
    // The configuration is in /config_dump as given.
    let dump = p.get("/config_dump").body;
    assert!(
        dump.contains("\"outlier_detection\"") && dump.contains("\"base_ejection_time\": \"1s\""),
        "{dump}"
    );

    // Both dead endpoints come back; the ejected one stays out for its 1 s.
    dead.resume();
    dead2.resume();
    let ejected = if flags[0] == "/failed_outlier_check" {
        &dead
    } else {
        &dead2
    };
    let t0 = Instant::now();
    let (tags, errors) = spread(port, 30);
    assert!(errors.is_empty(), "{errors:?}");
    if t0.elapsed() < Duration::from_millis(500) {
        assert_eq!(
            tags.get(&ejected.tag),
            None,
            "ejected host got traffic: {tags:?}"
        );
    }
    assert_eq!(
        p.wait_stat(
            "cluster.od.outlier_detection.ejections_active",
            0,
            Duration::from_secs(3)
        ),
        0,
        "returns by itself"
    );
    assert_eq!(
        wait_flags(&p, ejected.addr(), "healthy", Duration::from_secs(2)),
        "healthy"
    );
    let (tags, errors) = spread(port, 30);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.len(), 3, "all three take traffic again: {tags:?}");
}

/// `cluster_manager.outlier_detection.event_log_path`: the detection of a gateway-failure
/// run (not enforced: `enforcing_consecutive_gateway_failure` is 0 by default), the
/// consecutive-5xx ejection and the return, as Envoy's `OutlierDetectionEvent` JSON lines,
/// field for field and in Envoy's field order.
#[test]
fn outlier_events_are_logged_as_envoy_logs_them() {
    let a = HcBackend::start("a");
    let mut dead = HcBackend::start("dead");
    dead.pause();
    let (admin, port) = (free_port(), free_port());
    let log = test_dir("outlier-events").join("events.log");
    let outlier = "    outlier_detection:\n      consecutive_5xx: 2\n      \
                   consecutive_gateway_failure: 2\n      interval: 0.2s\n      \
                   base_ejection_time: 0.5s\n      max_ejection_percent: 100\n";
    let eps = [(a.addr(), 0), (dead.addr(), 0)];
    let yaml = format!(
        "cluster_manager:\n  outlier_detection:\n    event_log_path: {}\n{}",
        log.display(),
        bootstrap(
            admin,
            &listener(port, "ev", 1),
            &cluster("ev", &eps, outlier)
        )
    );
    let Some(p) = start(&yaml) else { return };
    let active = "cluster.ev.outlier_detection.ejections_active";
    let fail_until = Instant::now() + Duration::from_secs(5);
    while p.stat(active) == 0 && Instant::now() < fail_until {
        let _ = one(port, 1);
    }
    assert_eq!(p.stat(active), 1, "ejected\n{}", p.logs());
    assert_eq!(
        p.wait_stat(active, 0, Duration::from_secs(5)),
        0,
        "returned"
    );
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= 3
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let url = dead.addr().to_string();
    let expected = [
        ("CONSECUTIVE_GATEWAY_FAILURE", "EJECT", false, 0),
        ("CONSECUTIVE_5XX", "EJECT", true, 1),
        ("CONSECUTIVE_5XX", "UNEJECT", false, 1),
    ];
    for (line, (kind, action, enforced, n)) in lines.iter().zip(expected) {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["type"], kind, "{line}");
        assert_eq!(e["action"], action, "{line}");
        assert_eq!(e["enforced"], enforced, "{line}");
        assert_eq!(e["num_ejections"], n, "{line}");
        assert_eq!(
            (&e["cluster_name"], &e["upstream_url"]),
            (&"ev".into(), &url.as_str().into())
        );
        let ts = e["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
        let keys = top_level_keys(line);
        let mut want = vec!["type", "timestamp"];
        if action == "UNEJECT" {
            want.push("secs_since_last_action");
            assert!(e["secs_since_last_action"].is_string(), "{line}");
        }
        want.extend([
            "cluster_name",
            "upstream_url",
            "action",
            "num_ejections",
            "enforced",
        ]);
        if action == "EJECT" {
            want.push("eject_consecutive_event");
        }
        assert_eq!(keys, want, "{line}");
    }
}

/// The keys of a flat JSON object line, in order.
fn top_level_keys(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let (mut depth, mut in_str, mut start, mut prev) = (0, false, 0, ' ');
    for (i, ch) in line.char_indices() {
        match ch {
            '"' if prev != '\\' => {
                in_str = !in_str;
                if in_str {
                    start = i + 1;
                } else if depth == 1 && line[i + 1..].starts_with(':') {
                    keys.push(line[start..i].to_string());
                }
            }
            '{' if !in_str => depth += 1,
            '}' if !in_str => depth -= 1,
            _ => {}
        }
        prev = ch;
    }
    keys
}

/// A host that fails again right after returning is ejected for twice the base (Envoy's
/// backoff grows by one base per ejection).
#[test]
fn a_second_ejection_lasts_longer() {
    let a = HcBackend::start("a");
    let mut dead = HcBackend::start("dead");
    dead.pause();
    let (admin, port) = (free_port(), free_port());
    // Ejections return on the 0.2 s tick; failing again within a tick of returning keeps
    // the backoff (each tick back takes one off).
    let outlier = "    outlier_detection:\n      consecutive_5xx: 2\n      interval: 0.2s\n      base_ejection_time: 0.6s\n      max_ejection_percent: 100\n";
    let eps = [(a.addr(), 0), (dead.addr(), 0)];
    let yaml = bootstrap(
        admin,
        &listener(port, "twice", 1),
        &cluster("twice", &eps, outlier),
    );
    let Some(p) = start(&yaml) else { return };
    let active = "cluster.twice.outlier_detection.ejections_active";
    let mut lasted = Vec::new();
    for round in 0..2 {
        // Fail until ejected.
        let fail_until = Instant::now() + Duration::from_secs(5);
        while p.stat(active) == 0 && Instant::now() < fail_until {
            let _ = one(port, round);
        }
        let t = Instant::now();
        assert_eq!(p.stat(active), 1, "round {round}: ejected");
        assert_eq!(p.wait_stat(active, 0, Duration::from_secs(5)), 0);
        lasted.push(t.elapsed());
    }
    assert!(
        lasted[0] >= Duration::from_millis(450) && lasted[0] < Duration::from_millis(1000),
        "first ejection {lasted:?}"
    );
    assert!(
        lasted[1] >= Duration::from_millis(1050) && lasted[1] < Duration::from_millis(2000),
        "second ejection {lasted:?}"
    );
    drop(dead);
}

/// Priority levels: priority 0 takes everything while healthy; with half its hosts healthy
/// it takes 70% (overprovisioning 1.4) and priority 1 the rest; with none, priority 1 takes
/// all; when priority 0 recovers, traffic moves back.
#[test]
fn traffic_fails_over_to_the_next_priority() {
    let mut p0a = HcBackend::start("p0a");
    let mut p0b = HcBackend::start("p0b");
    let p1 = HcBackend::start("p1");
    let (admin, port) = (free_port(), free_port());
    let eps = [(p0a.addr(), 0), (p0b.addr(), 0), (p1.addr(), 1)];
    let yaml = bootstrap(
        admin,
        &listener(port, "prio", 1),
        &cluster("prio", &eps, &tcp_check(100, 300, 1, 1)),
    );
    let Some(p) = start(&yaml) else { return };
    p.wait_stat("cluster.prio.membership_healthy", 3, Duration::from_secs(5));

    let (tags, errors) = spread(port, 40);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        tags.get("p1"),
        None,
        "all healthy: priority 0 only: {tags:?}"
    );

    p0a.pause();
    assert_eq!(
        wait_flags(&p, p0a.addr(), "/failed_active_hc", Duration::from_secs(5)),
        "/failed_active_hc"
    );
    let (tags, errors) = spread(port, 400);
    assert!(errors.is_empty(), "{errors:?}");
    let to_p1 = tags.get("p1").copied().unwrap_or(0);
    assert!(
        (80..=160).contains(&to_p1),
        "half of priority 0 healthy: ~30% to priority 1: {tags:?}"
    );

    p0b.pause();
    assert_eq!(
        wait_flags(&p, p0b.addr(), "/failed_active_hc", Duration::from_secs(5)),
        "/failed_active_hc"
    );
    let (tags, errors) = spread(port, 40);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.get("p1"), Some(&40), "priority 0 down: {tags:?}");
    assert_eq!(p.stat("cluster.prio.lb_healthy_panic"), 0);

    p0a.resume();
    p0b.resume();
    p.wait_stat("cluster.prio.membership_healthy", 3, Duration::from_secs(5));
    let (tags, errors) = spread(port, 40);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.get("p1"), None, "back on priority 0: {tags:?}");
}

/// Below the panic threshold (50% by default) all hosts take traffic, and each such pick
/// counts in `lb_healthy_panic`.
#[test]
fn below_the_panic_threshold_every_host_takes_traffic() {
    let a = HcBackend::start("a");
    let b = HcBackend::start("b");
    b.set_answer(Answer::Wrong);
    let c = HcBackend::start("c");
    c.set_answer(Answer::Wrong);
    let (admin, port) = (free_port(), free_port());
    let eps = [(a.addr(), 0), (b.addr(), 0), (c.addr(), 0)];
    let yaml = bootstrap(
        admin,
        &listener(port, "panic", 1),
        &cluster("panic", &eps, &tcp_check(100, 200, 1, 1)),
    );
    let Some(p) = start(&yaml) else { return };
    assert_eq!(
        wait_flags(
            &p,
            c.addr(),
            "/failed_active_hc/active_hc_timeout",
            Duration::from_secs(5)
        ),
        "/failed_active_hc/active_hc_timeout"
    );
    wait_flags(
        &p,
        b.addr(),
        "/failed_active_hc/active_hc_timeout",
        Duration::from_secs(5),
    );
    let (tags, errors) = spread(port, 30);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.len(), 3, "panic: all hosts: {tags:?}");
    assert_eq!(p.stat("cluster.panic.lb_healthy_panic"), 30);
}

/// One endpoint flaps under load: it starts failing its check, is taken out, stops
/// listening (refuses), comes back and passes, six times over, while four clients open
/// connections without pause. No new connection fails, since one healthy endpoint always
/// remains; the flapping endpoint takes traffic in its up phases and none while out.
#[test]
fn a_flapping_endpoint_under_load_fails_no_new_connection() {
    let stable = HcBackend::start("stable");
    let mut flapper = HcBackend::start("flapper");
    let (admin, port) = (free_port(), free_port());
    let eps = [(stable.addr(), 0), (flapper.addr(), 0)];
    let extra = tcp_check(50, 150, 1, 1)
        + "    outlier_detection:\n      consecutive_5xx: 1\n      interval: 0.1s\n      base_ejection_time: 0.3s\n      max_ejection_percent: 50\n";
    let yaml = bootstrap(
        admin,
        &listener(port, "flap", 3),
        &cluster("flap", &eps, &extra).replace(
            "      update_merge_window: 0s\n",
            "      update_merge_window: 0s\n      healthy_panic_threshold: { value: 0 }\n",
        ),
    );
    let Some(p) = start(&yaml) else { return };
    p.wait_stat("cluster.flap.membership_healthy", 2, Duration::from_secs(5));

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) && ok + failed.len() < 200_000 {
                    match one(port, t * 1_000_000 + i) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    i += 1;
                    // About 2,000 connections a second in all: steady load that stays far
                    // from the backends' accept caps and the ephemeral port range.
                    thread::sleep(Duration::from_millis(1));
                }
                (ok, failed)
            })
        })
        .collect();

    let mut served_while_up = Vec::new();
    for _ in 0..6 {
        // Up: takes traffic.
        let before = flapper.accepted();
        thread::sleep(Duration::from_millis(250));
        served_while_up.push(flapper.accepted() - before);
        // Fails its check: out of the rotation within a check or two.
        flapper.set_answer(Answer::Wrong);
        wait_flags(
            &p,
            flapper.addr(),
            "/failed_active_hc/active_hc_timeout",
            Duration::from_secs(5),
        );
        thread::sleep(Duration::from_millis(50));
        // Down: refuses.
        flapper.pause();
        thread::sleep(Duration::from_millis(250));
        flapper.set_answer(Answer::Pong);
        flapper.resume();
        wait_flags(&p, flapper.addr(), "healthy", Duration::from_secs(5));
    }
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().expect("client");
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "flapping: {ok} connections, {} failed; flapper accepted per up phase {served_while_up:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 500, "load was light: {ok}");
    assert!(
        served_while_up.iter().all(|&n| n > 0),
        "the flapper took traffic in every up phase: {served_while_up:?}"
    );
    assert!(p.stat("cluster.flap.health_check.failure") >= 6);
}

/// Check results survive a configuration change that keeps the hosts: a reload (SIGHUP)
/// that adds a listener and changes the cluster changes no host's health, and the new
/// listener's traffic avoids the unhealthy hosts at once. Switchyard only (a static Envoy
/// bootstrap cannot be reloaded).
#[test]
fn health_state_survives_a_reload() {
    let kind = selected_proxy();
    if kind == ProxyKind::Envoy {
        skip_unsupported(kind, "in-place reload of a static bootstrap");
        return;
    }
    let a = HcBackend::start("a");
    let mut dead = HcBackend::start("dead");
    dead.pause();
    let wrong = HcBackend::start("wrong");
    wrong.set_answer(Answer::Wrong);
    let (admin, port, port2) = (free_port(), free_port(), free_port());
    let eps = [(a.addr(), 0), (dead.addr(), 0), (wrong.addr(), 0)];
    let extra = tcp_check(100, 200, 1, 1)
        + "    outlier_detection:\n      consecutive_5xx: 2\n      interval: 0.1s\n      base_ejection_time: 30s\n      max_ejection_percent: 100\n";
    let clusters = cluster("keep", &eps, &extra).replace(
        "      update_merge_window: 0s\n",
        "      update_merge_window: 0s\n      healthy_panic_threshold: { value: 0 }\n",
    );
    let yaml = bootstrap(admin, &listener(port, "keep", 1), &clusters);
    let Some(p) = start(&yaml) else { return };
    wait_flags(
        &p,
        wrong.addr(),
        "/failed_active_hc/active_hc_timeout",
        Duration::from_secs(5),
    );
    wait_flags(&p, dead.addr(), "/failed_active_hc", Duration::from_secs(5));
    assert_eq!(health_flags(&p, a.addr()), "healthy");
    let before = p.get("/clusters").body;

    // The cluster changes too (its connect timeout), so it is rebuilt around its hosts.
    let two = listener(port, "keep", 1) + &tcp_listener("second", port2, "second", "keep");
    let changed = clusters.replace("connect_timeout: 0.5s", "connect_timeout: 0.6s");
    assert_ne!(changed, clusters);
    p.rewrite_config(&bootstrap(admin, &two, &changed));
    p.sighup();
    assert!(
        wait_until(Duration::from_secs(5), || connect(local(port2)).is_ok()),
        "the reload took effect"
    );
    for addr in [a.addr(), dead.addr(), wrong.addr()] {
        let key = format!("::{addr}::health_flags::");
        let was = before
            .lines()
            .find(|l| l.contains(&key))
            .expect("flags before")
            .to_string();
        assert_eq!(
            format!("keep{key}{}", health_flags(&p, addr)),
            was,
            "{addr} kept its health across the reload"
        );
    }
    let (tags, errors) = spread(port2, 10);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tags.get("a"), Some(&10));
}

/// Envoy 1.40's outlier stats for a cluster, sorted (`/stats` of a cluster with
/// `outlier_detection`).
const ENVOY_OUTLIER_STATS: [&str; 21] = [
    "ejections_active",
    "ejections_consecutive_5xx",
    "ejections_detected_consecutive_5xx",
    "ejections_detected_consecutive_gateway_failure",
    "ejections_detected_consecutive_local_origin_failure",
    "ejections_detected_degradation",
    "ejections_detected_failure_percentage",
    "ejections_detected_local_origin_failure_percentage",
    "ejections_detected_local_origin_success_rate",
    "ejections_detected_success_rate",
    "ejections_enforced_consecutive_5xx",
    "ejections_enforced_consecutive_gateway_failure",
    "ejections_enforced_consecutive_local_origin_failure",
    "ejections_enforced_failure_percentage",
    "ejections_enforced_local_origin_failure_percentage",
    "ejections_enforced_local_origin_success_rate",
    "ejections_enforced_success_rate",
    "ejections_enforced_total",
    "ejections_overflow",
    "ejections_success_rate",
    "ejections_total",
];
