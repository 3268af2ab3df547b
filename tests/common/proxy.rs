//! The proxy under test ([`Proxy`]): Switchyard or Envoy started on a bootstrap with
//! [`ProxyOpts`], waited for until ready, its logs, signals by PID, RSS and admin statistics;
//! [`start_selected`] and [`start_selected_with`] start the proxy the run selected.

use super::{
    envoy_bin, http, local, parse_stats, proxy_available, require, selected_proxy, switchyard_bin,
    test_dir, HttpResponse, ProxyKind, READY_TIMEOUT,
};
use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Options for starting a proxy.
#[derive(Debug, Clone)]
pub struct ProxyOpts {
    pub concurrency: u32,
    pub drain_time_s: Option<u32>,
    pub log_level: &'static str,
    /// More arguments for Switchyard only (Envoy has no equivalent of its own flags).
    pub switchyard_args: Vec<String>,
    /// Run Switchyard with this descriptor limit (soft and hard, through `prlimit`).
    pub nofile_limit: Option<u64>,
    /// Run the proxy in this network namespace (`ip netns exec`, which execs it: the PID
    /// is still the proxy's). Its admin is then reachable only from inside.
    pub netns: Option<String>,
}

impl Default for ProxyOpts {
    fn default() -> Self {
        ProxyOpts {
            concurrency: 1,
            drain_time_s: None,
            log_level: "info",
            switchyard_args: Vec::new(),
            nofile_limit: None,
            netns: None,
        }
    }
}

/// The brief's name for [`Proxy`].
pub type ProxyUnderTest = Proxy;

/// A running proxy (Switchyard or Envoy) with its config file, logs and admin address.
/// Dropping it kills the process (SIGKILL by its PID) if it is still running.
#[derive(Debug)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
    child: Child,
    exited: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

/// Admin port written in a bootstrap (`admin.address.socket_address.port_value`).
fn admin_port_of(yaml: &str) -> Option<u16> {
    let i = yaml.find("admin:")?;
    let rest = &yaml[i..];
    let j = rest.find("port_value:")?;
    let digits: String = rest[j + "port_value:".len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

impl Proxy {
    /// Starts the selected proxy with `yaml` and waits for `/ready` 200.
    pub fn start(yaml: &str) -> Proxy {
        Proxy::start_with(selected_proxy(), yaml, ProxyOpts::default())
    }

    /// Starts a proxy of `kind` and waits for `/ready` 200; panics with its logs otherwise.
    pub fn start_with(kind: ProxyKind, yaml: &str, opts: ProxyOpts) -> Proxy {
        let p = Proxy::spawn(kind, yaml, opts);
        p.wait_ready(READY_TIMEOUT);
        p
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(kind: ProxyKind, yaml: &str, opts: ProxyOpts) -> Proxy {
        let dir = test_dir(kind.name());
        let config_path = dir.join("config.yaml");
        fs::write(&config_path, yaml).expect("write config");
        // A bootstrap without an admin port (no admin listener) gets 127.0.0.1:0, which
        // answers nothing: wait for it with [`Proxy::wait_listening`] instead.
        let admin_port = admin_port_of(yaml).unwrap_or(0);
        let stdout_path = dir.join("stdout.log");
        let stderr_path = dir.join("stderr.log");
        let mut cmd = match kind {
            ProxyKind::Switchyard => {
                let mut c = match opts.nofile_limit {
                    Some(n) => {
                        let mut c = Command::new("prlimit");
                        c.arg(format!("--nofile={n}:{n}"))
                            .arg("--")
                            .arg(switchyard_bin());
                        c
                    }
                    None => Command::new(switchyard_bin()),
                };
                c.arg("run")
                    .arg("-c")
                    .arg(&config_path)
                    .arg("--concurrency")
                    .arg(opts.concurrency.to_string())
                    .arg("--log-level")
                    .arg(opts.log_level);
                if let Some(d) = opts.drain_time_s {
                    c.arg("--drain-time-s").arg(d.to_string());
                }
                c.args(&opts.switchyard_args);
                c
            }
            ProxyKind::Envoy => {
                let mut c = Command::new(envoy_bin());
                // --disable-hot-restart: no shared memory, so no base id is needed and parallel
                // instances never collide (verified with Envoy 1.40).
                c.arg("-c")
                    .arg(&config_path)
                    .arg("--concurrency")
                    .arg(opts.concurrency.to_string())
                    .arg("--disable-hot-restart")
                    .arg("--log-level")
                    .arg(opts.log_level)
                    // Envoy buffers its log files (access and outlier event logs) up to 10 s;
                    // Switchyard writes each line at once. Flush often so tests read both alike.
                    .arg("--file-flush-interval-msec")
                    .arg("50");
                if let Some(d) = opts.drain_time_s {
                    c.arg("--drain-time-s").arg(d.to_string());
                }
                c
            }
        };
        if let Some(ns) = &opts.netns {
            let mut wrapped = Command::new("ip");
            wrapped
                .args(["netns", "exec", ns])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            cmd = wrapped;
        }
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("stdout log"))
            .stderr(fs::File::create(&stderr_path).expect("stderr log"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} failed: {e}", kind.name()));
        Proxy {
            kind,
            dir,
            config_path,
            admin: local(admin_port),
            child,
            exited: None,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// stdout + stderr so far (for assertion messages).
    pub fn logs(&self) -> String {
        let out = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let err = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail = |s: &str| {
            let n = s.len();
            let start = n.saturating_sub(8000);
            let start = (start..n).find(|i| s.is_char_boundary(*i)).unwrap_or(n);
            s[start..].to_string()
        };
        format!(
            "--- {} pid {} dir {} ---\n[stdout]\n{}\n[stderr]\n{}",
            self.kind.name(),
            self.pid(),
            self.dir.display(),
            tail(&out),
            tail(&err)
        )
    }

    /// Full log text (stdout + stderr) for searching.
    pub fn log_text(&self) -> String {
        let out = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        let err = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        out + &err
    }

    /// Has the process exited? (Reaps it.)
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st);
            }
        }
        self.exited
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/ready` until 200, panicking with the logs if the process dies or time runs out.
    pub fn wait_ready(&self, timeout: Duration) {
        self.poll_until_up("ready (last /ready: {})", timeout, || {
            match http(self.admin, "GET", "/ready") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {} body {:?}", r.status, r.body)),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    /// Waits until `addr` (one of its listeners) accepts a TCP connection, panicking with
    /// the logs if the process dies or time runs out: readiness for a proxy with no admin.
    pub fn wait_listening(&self, addr: SocketAddr, timeout: Duration) {
        self.poll_until_up("listening (last connect: {})", timeout, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .map(drop)
                .map_err(|e| format!("{addr}: {e}"))
        });
    }

    /// Polls `probe` every 25 ms until it succeeds; panics with the logs, saying `what` (its
    /// `{}` is the probe's last error), if the process dies or `timeout` passes first.
    fn poll_until_up(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match probe() {
                Ok(()) => return,
                Err(e) => e,
            };
            let what = what.replace("{}", &last);
            // Cannot reap through &self; check /proc instead.
            if !Path::new(&format!("/proc/{}", self.pid())).exists() || self.is_zombie() {
                panic!(
                    "{} exited before becoming {what}\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} not {what} after {timeout:?}\n{}",
                    self.kind.name(),
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The TCP addresses the process listens on (its own sockets in LISTEN state, from
    /// `/proc/<pid>/fd` and `/proc/<pid>/net/tcp{,6}`), each once.
    pub fn listening_tcp(&self) -> std::collections::BTreeSet<SocketAddr> {
        listening_tcp(self.pid())
    }

    fn is_zombie(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                    .unwrap_or(false)
            })
            .unwrap_or(true)
    }

    /// Sends a signal by PID with the `kill` command (never by name).
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed", self.pid());
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Rewrites the config file atomically (write + rename).
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.join("config.yaml.tmp");
        fs::write(&tmp, yaml).expect("write config");
        fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// VmRSS in KiB from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http(self.admin, "GET", path)
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}\n{}", self.logs()))
    }

    pub fn post(&self, path: &str) -> HttpResponse {
        http(self.admin, "POST", path)
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}\n{}", self.logs()))
    }

    /// All integer stats from `/stats`.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let r = self.get("/stats");
        assert_eq!(r.status, 200, "/stats status\n{}", self.logs());
        parse_stats(&r.body)
    }

    /// One stat by its exact name; 0 if absent.
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// Waits until `stat(name) == want` (or timeout); returns the last value.
    pub fn wait_stat(&self, name: &str, want: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stat(name);
            if v == want || Instant::now() >= deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("proxy files kept in {}", self.dir.display());
        }
    }
}

/// The TCP addresses process `pid` listens on: the sockets among its descriptors that
/// `/proc/<pid>/net/tcp` or `tcp6` shows in state LISTEN (`0A`).
pub fn listening_tcp(pid: u32) -> std::collections::BTreeSet<SocketAddr> {
    let inodes: std::collections::BTreeSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = std::collections::BTreeSet::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let table = fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for row in table.lines().skip(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let listening = *state == "0A";
            if listening && inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
                if let Some(a) = proc_net_address(local, v6) {
                    out.insert(a);
                }
            }
        }
    }
    out
}

/// `0100007F:3A98` (IPv4) or its 32-digit IPv6 form, as `/proc/net/tcp*` writes addresses:
/// the address in the kernel's byte order, 32 bits at a time, then the port in hex.
fn proc_net_address(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    // Each word is the address's bytes as the kernel held them, read as a native integer.
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip: std::net::IpAddr = if v6 {
        let b: [u8; 16] = bytes.try_into().ok()?;
        std::net::Ipv6Addr::from(b).into()
    } else {
        let b: [u8; 4] = bytes.try_into().ok()?;
        std::net::Ipv4Addr::from(b).into()
    };
    Some(SocketAddr::new(ip, port))
}

pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Starts the selected proxy with `concurrency` workers, or returns None (a skip outside
/// CI; a failure in CI) when it is not available.
pub fn start_selected_with(yaml: &str, concurrency: u32) -> Option<Proxy> {
    let kind = selected_proxy();
    if !require(proxy_available(kind), kind.name()) {
        return None;
    }
    Some(Proxy::start_with(
        kind,
        yaml,
        ProxyOpts {
            concurrency,
            ..Default::default()
        },
    ))
}

/// Starts the selected proxy, or returns None (skip outside CI) if it is not available.
pub fn start_selected(yaml: &str) -> Option<Proxy> {
    let kind = selected_proxy();
    if !proxy_available(kind) {
        return None;
    }
    Some(Proxy::start(yaml))
}
