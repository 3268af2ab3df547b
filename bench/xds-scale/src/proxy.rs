//! The proxy under test, started with a bootstrap that points it at the benchmark's ADS
//! server, and ended by PID.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Switchyard,
    Envoy,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
}

/// The bootstrap: admin on `admin`, ADS (`api_type`) from `ads`, no initial fetch timeout
/// (nothing is served before the snapshot arrives).
pub fn bootstrap(admin: SocketAddr, ads: SocketAddr, api_type: &str) -> String {
    switchyard_control::xds::fixtures::ads_bootstrap("xds-scale", admin.port(), ads, api_type, "0s")
}

impl Proxy {
    /// Starts `bin` as `kind` with `config` and `concurrency` workers; logs go to `dir`.
    pub fn spawn(
        kind: Kind,
        bin: &Path,
        config: &str,
        admin: SocketAddr,
        concurrency: usize,
        dir: &Path,
    ) -> std::io::Result<Proxy> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("bootstrap.yaml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join("proxy.log"))?;
        let mut c = Command::new(bin);
        match kind {
            Kind::Switchyard => c.arg("run"),
            Kind::Envoy => c.arg("--disable-hot-restart"),
        };
        c.arg("-c")
            .arg(&path)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--log-level")
            .arg(std::env::var("XDS_SCALE_PROXY_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = c.spawn()?;
        let p = Proxy { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(admin).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "the proxy's admin never listened; see {}",
                    dir.join("proxy.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    /// Resident memory now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in bytes (0 when unreadable).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
