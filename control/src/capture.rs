//! `switchyard capture`: the node's iptables rules that send TCP to the proxy, as istio-init
//! does for a pod, in the current network namespace or a named one.
//!
//! What is installed, all in the `nat` table, in chains of our own (prefix `SWITCHYARD_`),
//! entered by one jump each from `OUTPUT` and `PREROUTING`:
//! - `SWITCHYARD_OUTBOUND`: TCP leaving through this node (forwarded from pods, arriving in
//!   `PREROUTING`, and from local processes, in `OUTPUT`) to a non-local address is redirected
//!   to the outbound port (15001), except: the proxy's own traffic (its UID, its GID, its
//!   mark — `OUTPUT` only, where the owner is known), loopback, `--exclude-cidr` destinations
//!   and `--exclude-port` destination ports;
//! - with `--inbound`, `SWITCHYARD_INBOUND`: TCP arriving for a local address is redirected to
//!   the inbound port (15006), except the proxy's own ports and `--exclude-port` ports.
//!
//! Guarantees:
//! - install is idempotent: it removes whatever of ours is there first, then applies the whole
//!   set in one `iptables-restore --noflush` transaction (all or nothing);
//! - remove deletes exactly our jumps from the built-in chains and our chains, and nothing
//!   else: the table is left as it was before install;
//! - the iptables backend (nft or legacy) is the one already in use in the namespace
//!   (`--backend auto`, the one with rules wins, nft when neither has any), or the one asked
//!   for;
//! - errors say which tool failed and why (missing, not permitted, rejected input).

use std::fmt;
use std::net::IpAddr;
use std::process::{Command, Output};

/// Prefix of every chain this module owns.
pub const CHAIN_PREFIX: &str = "SWITCHYARD_";
const OUTPUT: &str = "SWITCHYARD_OUTPUT";
const PREROUTING: &str = "SWITCHYARD_PREROUTING";
const OUTBOUND: &str = "SWITCHYARD_OUTBOUND";
const INBOUND: &str = "SWITCHYARD_INBOUND";

/// Which iptables implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Whichever already has rules in the namespace; nft when neither has.
    Auto,
    Nft,
    Legacy,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "nft" => Ok(Backend::Nft),
            "legacy" => Ok(Backend::Legacy),
            other => Err(format!("backend {other:?}: expected auto, nft or legacy")),
        }
    }
}

/// What to capture and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Where outbound TCP is redirected (Istio's 15001).
    pub outbound_port: u16,
    /// Where inbound TCP is redirected with `inbound` (Istio's 15006).
    pub inbound_port: u16,
    /// Also capture TCP to local addresses.
    pub inbound: bool,
    /// The proxy's user and group: their traffic is never captured.
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// The mark the proxy may set on its upstream sockets: never captured.
    pub proxy_mark: u32,
    /// Destinations never captured (`10.0.0.0/8`, `192.168.1.1`).
    pub exclude_cidrs: Vec<Cidr>,
    /// Destination ports never captured.
    pub exclude_ports: Vec<u16>,
    /// Ports of the proxy itself, never captured inbound (admin, the capture ports).
    pub proxy_ports: Vec<u16>,
    /// Run in this network namespace (`ip netns exec`), else the current one.
    pub netns: Option<String>,
    pub backend: Backend,
}

impl Default for CaptureConfig {
    /// Istio's defaults: 15001 out, 15006 in, UID/GID 1337, mark 1337.
    fn default() -> Self {
        CaptureConfig {
            outbound_port: 15001,
            inbound_port: 15006,
            inbound: false,
            proxy_uid: 1337,
            proxy_gid: 1337,
            proxy_mark: 1337,
            exclude_cidrs: Vec::new(),
            exclude_ports: Vec::new(),
            proxy_ports: vec![15000, 15001, 15006, 15020, 15021, 15090],
            netns: None,
            backend: Backend::Auto,
        }
    }
}

/// An address prefix, as iptables takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why capture could not be changed or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// A tool is not installed (`iptables`, `ip`).
    Missing { tool: String },
    /// The tool ran but was not permitted (needs CAP_NET_ADMIN).
    NotPermitted { command: String, stderr: String },
    /// The tool refused what it was given.
    Failed { command: String, stderr: String },
    /// An IPv6 exclusion: the rules are IPv4 (`iptables`) only so far.
    Ipv6(Cidr),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Missing { tool } => {
                write!(
                    f,
                    "{tool} not found: install it (Debian: apt-get install iptables iproute2)"
                )
            }
            CaptureError::NotPermitted { command, stderr } => write!(
                f,
                "{command}: not permitted (capture needs root or CAP_NET_ADMIN): {}",
                stderr.trim()
            ),
            CaptureError::Failed { command, stderr } => {
                write!(f, "{command} failed: {}", stderr.trim())
            }
            CaptureError::Ipv6(c) => write!(
                f,
                "--exclude-cidr {c}: IPv6 exclusions are not supported (capture is IPv4 only)"
            ),
        }
    }
}

impl std::error::Error for CaptureError {}

/// The rules of `cfg`, as `iptables-restore --noflush` input for the `nat` table: our chains,
/// their rules, and one jump into them from each built-in chain (`OUTPUT`, `PREROUTING`).
/// Every exclusion is a `RETURN` inside our chains, so rules of others after our jump still
/// see every packet we leave alone.
pub fn rules(cfg: &CaptureConfig) -> Result<String, CaptureError> {
    if let Some(c) = cfg.exclude_cidrs.iter().find(|c| c.addr.is_ipv6()) {
        return Err(CaptureError::Ipv6(*c));
    }
    let mut chains = vec![OUTPUT, PREROUTING, OUTBOUND];
    if cfg.inbound {
        chains.push(INBOUND);
    }
    let mut r = vec!["*nat".to_string()];
    r.extend(chains.iter().map(|c| format!(":{c} - [0:0]")));
    // Local processes: never the proxy's own traffic, never to a local address.
    r.push(format!(
        "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
        cfg.proxy_uid
    ));
    r.push(format!(
        "-A {OUTPUT} -m owner --gid-owner {} -j RETURN",
        cfg.proxy_gid
    ));
    r.push(format!(
        "-A {OUTPUT} -m mark --mark {} -j RETURN",
        cfg.proxy_mark
    ));
    r.push(format!(
        "-A {OUTPUT} -m addrtype --dst-type LOCAL -j RETURN"
    ));
    r.push(format!("-A {OUTPUT} -j {OUTBOUND}"));
    // Arriving (from pods): for a local address inbound, else outbound.
    let local = if cfg.inbound { INBOUND } else { "RETURN" };
    r.push(format!(
        "-A {PREROUTING} -m addrtype --dst-type LOCAL -j {local}"
    ));
    r.push(format!("-A {PREROUTING} -j {OUTBOUND}"));
    // Outbound: what is never captured, then the redirect.
    r.push(format!("-A {OUTBOUND} -d 127.0.0.0/8 -j RETURN"));
    for c in &cfg.exclude_cidrs {
        r.push(format!("-A {OUTBOUND} -d {c} -j RETURN"));
    }
    for p in &cfg.exclude_ports {
        r.push(format!("-A {OUTBOUND} -p tcp --dport {p} -j RETURN"));
    }
    r.push(format!(
        "-A {OUTBOUND} -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_port
    ));
    if cfg.inbound {
        let mut ports = cfg.proxy_ports.clone();
        ports.extend(&cfg.exclude_ports);
        ports.sort_unstable();
        ports.dedup();
        for p in ports {
            r.push(format!("-A {INBOUND} -p tcp --dport {p} -j RETURN"));
        }
        r.push(format!(
            "-A {INBOUND} -p tcp -j REDIRECT --to-ports {}",
            cfg.inbound_port
        ));
    }
    r.push(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
    r.push(format!("-A PREROUTING -p tcp -j {PREROUTING}"));
    r.push("COMMIT".into());
    Ok(r.join("\n") + "\n")
}

/// The iptables tools of one backend, run in one namespace.
struct Tables {
    netns: Option<String>,
    /// `nft` or `legacy`.
    backend: &'static str,
}

impl Tables {
    /// The tools for `cfg`, the backend resolved.
    fn open(cfg: &CaptureConfig) -> Result<Tables, CaptureError> {
        let mut t = Tables {
            netns: cfg.netns.clone(),
            backend: "nft",
        };
        t.backend = match cfg.backend {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
            Backend::Auto => t.detect()?,
        };
        Ok(t)
    }

    /// The backend in use: legacy when its tables hold rules and nft's do not (as
    /// istio-init decides), else nft; whichever is installed when only one is.
    fn detect(&self) -> Result<&'static str, CaptureError> {
        let count = |backend: &str| -> Result<usize, CaptureError> {
            let out = self.run(&format!("iptables-{backend}-save"), &[], None)?;
            Ok(out.lines().filter(|l| l.starts_with("-A ")).count())
        };
        match (count("nft"), count("legacy")) {
            (Ok(nft), Ok(legacy)) => Ok(if legacy > 0 && nft == 0 {
                "legacy"
            } else {
                "nft"
            }),
            (Ok(_), Err(_)) => Ok("nft"),
            (Err(_), Ok(_)) => Ok("legacy"),
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn iptables(&self, args: &[&str]) -> Result<String, CaptureError> {
        let mut all = vec!["-w", "-t", "nat"];
        all.extend_from_slice(args);
        self.run(&format!("iptables-{}", self.backend), &all, None)
    }

    /// Runs `program` (in the namespace), feeding `stdin`; its stdout, or why it failed.
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CaptureError> {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        c.args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let shown = std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = c.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CaptureError::Missing {
                tool: if self.netns.is_some() { "ip" } else { program }.to_string(),
            },
            _ => CaptureError::Failed {
                command: shown.clone(),
                stderr: e.to_string(),
            },
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| CaptureError::Failed {
            command: shown.clone(),
            stderr: e.to_string(),
        })?;
        check(shown, program, out)
    }

    /// Deletes our jumps from the built-in chains, then our chains. Nothing else is touched.
    fn remove_ours(&self) -> Result<Vec<String>, CaptureError> {
        let spec = self.iptables(&["-S"])?;
        let mut removed = Vec::new();
        for line in spec.lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if !chain.starts_with(CHAIN_PREFIX) && rule.contains(&format!("-j {CHAIN_PREFIX}")) {
                let mut args = vec!["-D"];
                args.extend(rule.split_whitespace());
                self.iptables(&args)?;
                removed.push(line.to_string());
            }
        }
        let ours: Vec<&str> = spec
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| c.starts_with(CHAIN_PREFIX))
            .collect();
        for c in &ours {
            self.iptables(&["-F", c])?;
        }
        for c in &ours {
            self.iptables(&["-X", c])?;
            removed.push(format!("-X {c}"));
        }
        Ok(removed)
    }

    /// Our rules as `iptables -S` prints them, in order.
    fn ours(&self) -> Result<Vec<String>, CaptureError> {
        Ok(self
            .iptables(&["-S"])?
            .lines()
            .filter(|l| l.contains(CHAIN_PREFIX))
            .map(str::to_string)
            .collect())
    }
}

/// Maps a finished command to its stdout or an error naming it.
fn check(shown: String, program: &str, out: Output) -> Result<String, CaptureError> {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let lower = stderr.to_lowercase();
    if lower.contains("no such file or directory") && lower.contains(program) {
        return Err(CaptureError::Missing {
            tool: program.to_string(),
        });
    }
    if [
        "permission denied",
        "operation not permitted",
        "must be root",
    ]
    .iter()
    .any(|m| lower.contains(m))
    {
        return Err(CaptureError::NotPermitted {
            command: shown,
            stderr,
        });
    }
    Err(CaptureError::Failed {
        command: shown,
        stderr,
    })
}

/// Installs capture for `cfg`, replacing any of ours already there. Returns our rules as
/// they now are.
pub fn install(cfg: &CaptureConfig) -> Result<Vec<String>, CaptureError> {
    let input = rules(cfg)?;
    let t = Tables::open(cfg)?;
    t.remove_ours()?;
    t.run(
        &format!("iptables-{}-restore", t.backend),
        &["-w", "--noflush"],
        Some(&input),
    )?;
    t.ours()
}

/// Removes every rule and chain of ours. Returns what was removed.
pub fn remove(cfg: &CaptureConfig) -> Result<Vec<String>, CaptureError> {
    Tables::open(cfg)?.remove_ours()
}

/// Our rules with their packet counters, and the backend, for `switchyard capture status`.
pub fn status(cfg: &CaptureConfig) -> Result<String, CaptureError> {
    let t = Tables::open(cfg)?;
    let rules = t.ours()?;
    if rules.is_empty() {
        return Ok(format!("capture: not installed (iptables-{})\n", t.backend));
    }
    let mut out = format!("capture: installed (iptables-{})\n", t.backend);
    for chain in rules.iter().filter_map(|l| l.strip_prefix("-N ")) {
        out += &t.iptables(&["-L", chain, "-n", "-v", "-x"])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_rules_exclude_the_proxy_loopback_and_what_is_asked() {
        let cfg = CaptureConfig {
            exclude_cidrs: vec![
                "10.1.0.0/16".parse().unwrap(),
                "192.168.1.1".parse().unwrap(),
            ],
            exclude_ports: vec![22],
            ..CaptureConfig::default()
        };
        let r = rules(&cfg).unwrap();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        for want in [
            "-A SWITCHYARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A SWITCHYARD_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A SWITCHYARD_OUTPUT -m mark --mark 1337 -j RETURN",
            "-A SWITCHYARD_PREROUTING -m addrtype --dst-type LOCAL -j RETURN",
            "-A SWITCHYARD_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "-A SWITCHYARD_OUTBOUND -d 10.1.0.0/16 -j RETURN",
            "-A SWITCHYARD_OUTBOUND -d 192.168.1.1/32 -j RETURN",
            "-A SWITCHYARD_OUTBOUND -p tcp --dport 22 -j RETURN",
            "-A SWITCHYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
            "-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT",
            "-A PREROUTING -p tcp -j SWITCHYARD_PREROUTING",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{r}");
        }
        assert!(!r.contains("SWITCHYARD_INBOUND"), "no inbound unless asked");
        // Exclusions come before the redirect.
        let pos = |s: &str| lines.iter().position(|l| *l == s).unwrap();
        assert!(
            pos("-A SWITCHYARD_OUTBOUND -p tcp --dport 22 -j RETURN")
                < pos("-A SWITCHYARD_OUTBOUND -p tcp -j REDIRECT --to-ports 15001")
        );
    }

    #[test]
    fn inbound_rules_skip_the_proxys_own_ports() {
        let cfg = CaptureConfig {
            inbound: true,
            ..CaptureConfig::default()
        };
        let r = rules(&cfg).unwrap();
        assert!(r.contains(
            "-A SWITCHYARD_PREROUTING -m addrtype --dst-type LOCAL -j SWITCHYARD_INBOUND"
        ));
        assert!(r.contains("-A SWITCHYARD_INBOUND -p tcp --dport 15001 -j RETURN"));
        assert!(r.contains("-A SWITCHYARD_INBOUND -p tcp -j REDIRECT --to-ports 15006"));
    }

    #[test]
    fn bad_exclusions_are_named() {
        assert!("10.0.0.0/33"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("0 to 32"));
        assert!("ten".parse::<Cidr>().unwrap_err().contains("not an IP"));
        let cfg = CaptureConfig {
            exclude_cidrs: vec!["fd00::/8".parse().unwrap()],
            ..CaptureConfig::default()
        };
        assert!(rules(&cfg).unwrap_err().to_string().contains("IPv6"));
    }
}
