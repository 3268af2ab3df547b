//! The Python xDS management server (`tests/xds_py/ads_server.py`, on PyPI's `grpcio` and
//! `xds-protos`) as a child process: [`Ads`] starts it on a port, sets its snapshot
//! (`{"op":"set",...}` lines on its stdin) and waits for the events it prints (every request,
//! ACK, NACK and response, one JSON line each). It serves ADS and the per-type services
//! (LDS, CDS, EDS) over one snapshot. Prerequisite: [`python_ready`].

use super::{free_port, local, repo_root, test_dir};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long an awaited server event may take.
const WAIT: Duration = Duration::from_secs(15);

pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// The venv's python with grpcio and xds-protos.
pub fn python_ready() -> bool {
    Command::new(python())
        .args(["-c", "import grpc, envoy.service.discovery.v3.ads_pb2_grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python server process, its stdin (control) and the events it printed so far.
pub struct Ads {
    child: Child,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
    pub port: u16,
    stderr_path: PathBuf,
    dir: PathBuf,
}

impl Ads {
    /// Starts a server on a port from [`free_port`] (below the ephemeral range, so that it
    /// stays free for a restart) and waits for its `listening` event.
    pub fn start() -> Ads {
        let mut last = String::new();
        for _ in 0..3 {
            match Ads::try_start(free_port()) {
                Ok(ads) => return ads,
                // Another process took the port between the check and the bind.
                Err(e) => last = e,
            }
        }
        panic!("the Python ADS server did not start: {last}");
    }

    /// Starts a server on `port` again (after the last one was killed).
    pub fn restart_on(port: u16) -> Ads {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Ads::try_start(port) {
                Ok(ads) => return ads,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("the Python ADS server did not start again on {port}: {e}"),
            }
        }
    }

    fn try_start(port: u16) -> Result<Ads, String> {
        let dir = test_dir("xds-py");
        let stderr_path = dir.join("ads_server.stderr");
        let mut child = Command::new(python())
            .arg("-u")
            .arg(repo_root().join("tests/xds_py/ads_server.py"))
            .arg("--port")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", python().display()))?;
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "raw", "line": line}));
                sink.lock().expect("events").push(v);
            }
        });
        let mut ads = Ads {
            child,
            stdin,
            events,
            port: 0,
            stderr_path,
            dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let first = ads.events.lock().expect("events").first().cloned();
            match first {
                Some(e) if e["event"] == "listening" => {
                    ads.port = e["port"]
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .unwrap();
                    return Ok(ads);
                }
                Some(e) => return Err(format!("{e}\n{}", ads.diagnostics())),
                None => {}
            }
            if let Ok(Some(st)) = ads.child.try_wait() {
                return Err(format!("exited with {st}\n{}", ads.diagnostics()));
            }
            if Instant::now() >= deadline {
                return Err(format!("no listening event\n{}", ads.diagnostics()));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    /// Kills the server (SIGKILL by its PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Replaces the resources of `type_url` (sent as given, duplicates included).
    pub fn set(&mut self, type_url: &str, version: &str, resources: Vec<Value>) {
        let line =
            json!({"op": "set", "type_url": type_url, "version": version, "resources": resources});
        writeln!(self.stdin, "{line}").expect("write to the ADS server");
        self.stdin.flush().expect("flush");
    }

    /// How many events so far (a mark to search from).
    pub fn mark(&self) -> usize {
        self.events.lock().expect("events").len()
    }

    /// The first event from `from` on that satisfies `want`, waiting up to [`WAIT`]; a control
    /// error of the server fails at once.
    pub fn wait_event(
        &self,
        from: usize,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        self.wait_event_for(WAIT, from, what, want)
    }

    pub fn wait_event_for(
        &self,
        timeout: Duration,
        from: usize,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let events = self.events.lock().expect("events");
                if let Some(e) = events.iter().skip(from).find(|e| want(e)) {
                    return Ok(e.clone());
                }
                if let Some(e) = events.iter().find(|e| e["event"] == "error") {
                    return Err(format!(
                        "the ADS server reported {e}\n{}",
                        self.diagnostics()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {what} within {timeout:?}\n{}",
                    self.diagnostics()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last events and the server's stderr.
    pub fn diagnostics(&self) -> String {
        let events = self.events.lock().expect("events");
        let start = events.len().saturating_sub(40);
        let mut s = format!(
            "--- ADS server (python) port {} last events ---\n",
            self.port
        );
        for e in &events[start..] {
            s.push_str(&e.to_string());
            s.push('\n');
        }
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail = &err[err.len().saturating_sub(4000)..];
        s.push_str("[stderr]\n");
        s.push_str(tail);
        s
    }
}

impl Drop for Ads {
    fn drop(&mut self) {
        self.kill();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
