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
//! With `--mode tproxy`, TCP forwarded through the node (from pods) is not NATed. An nftables
//! table of ours, `ip switchyard`, hooks prerouting at mangle priority: a packet of a
//! connection that has a transparent socket here (`socket transparent 1`: the accepted side,
//! and replies to upstream sockets bound to the client's address) is marked (`--tproxy-mark`,
//! 1338); any other TCP to a non-local, non-excluded destination is handed to the outbound
//! port by `tproxy`, which keeps its destination, and marked; if nothing listens there it is
//! answered with a reset (iptables' TPROXY target would drop it, and the client would hang).
//! A policy route (`ip rule fwmark 1338 lookup 133`, `local 0.0.0.0/0 dev lo` in table 133)
//! delivers marked packets to the local stack. The proxy's listener needs `transparent:
//! true`, and `original_src` to connect from the client's own address. The divert mark must
//! differ from any mark the proxy puts on its upstream sockets: policy routing would send
//! those packets to the local stack too. Local processes are still captured with REDIRECT in
//! `OUTPUT`.
//!
//! Guarantees:
//! - install is idempotent: when our chains and jumps are already there it refills the chains
//!   in one `iptables-restore --noflush` transaction, so a re-run (an init container restarted)
//!   lets no connection through uncaptured; otherwise it removes whatever of ours is there and
//!   applies the whole set in one transaction (all or nothing); the nftables table is
//!   replaced in one `nft -f` transaction;
//! - remove deletes exactly our jumps from the built-in chains and our chains, and nothing
//!   else: the table is left as it was before install;
//! - the iptables backend (nft or legacy) is the one already in use in the namespace
//!   (`--backend auto`, the one with rules wins, nft when neither has any), or the one asked
//!   for;
//! - errors say which tool failed and why (missing, not permitted, rejected input).
//!
//! A crate of its own: it uses std only and shares nothing with the control plane; the
//! binary's `switchyard capture` command is its one user.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::IpAddr;
use std::process::{Command, Output};

/// Prefix of every chain this module owns.
pub const CHAIN_PREFIX: &str = "SWITCHYARD_";
const OUTPUT: &str = "SWITCHYARD_OUTPUT";
const PREROUTING: &str = "SWITCHYARD_PREROUTING";
const OUTBOUND: &str = "SWITCHYARD_OUTBOUND";
const INBOUND: &str = "SWITCHYARD_INBOUND";
/// Our nftables table (TPROXY mode).
const NFT_TABLE: &str = "switchyard";

/// How forwarded (pod) traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// nat `REDIRECT`: the proxy reads the destination back with `SO_ORIGINAL_DST`; upstream
    /// connections leave from the node's address.
    Redirect,
    /// nftables `tproxy` plus policy routing: the destination is kept, and the proxy can
    /// connect from the client's own address (`original_src`).
    Tproxy,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "redirect" => Ok(Mode::Redirect),
            "tproxy" => Ok(Mode::Tproxy),
            other => Err(format!("mode {other:?}: expected redirect or tproxy")),
        }
    }
}

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
    /// REDIRECT or TPROXY for forwarded traffic.
    pub mode: Mode,
    /// TPROXY: the mark that sends a packet to the local stack (not the proxy's own mark).
    pub tproxy_mark: u32,
    /// TPROXY: the routing table holding `local 0.0.0.0/0 dev lo`.
    pub tproxy_table: u32,
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
            mode: Mode::Redirect,
            tproxy_mark: 1338,
            tproxy_table: 133,
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
    /// TPROXY's divert mark equals the proxy's own mark.
    MarkClash(u32),
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
            CaptureError::MarkClash(m) => write!(
                f,
                "--tproxy-mark {m} equals --proxy-mark: policy routing would turn the proxy's own upstream packets back to it; pick another"
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
    if cfg.mode == Mode::Tproxy && cfg.tproxy_mark == cfg.proxy_mark {
        return Err(CaptureError::MarkClash(cfg.tproxy_mark));
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
    if cfg.mode == Mode::Redirect {
        r.push(format!("-A {PREROUTING} -j {OUTBOUND}"));
    }
    // Outbound: what is never captured, then the redirect.
    r.extend(outbound_exclusions(cfg, OUTBOUND));
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
    // First in their chains: kube-proxy's Service DNAT, inserted at the top as well, would
    // otherwise rewrite a VIP before capture sees it.
    r.push(format!("-I OUTPUT 1 -p tcp -j {OUTPUT}"));
    r.push(format!("-I PREROUTING 1 -p tcp -j {PREROUTING}"));
    r.push("COMMIT".into());
    Ok(r.join("\n") + "\n")
}

/// The `RETURN`s for destinations never captured outbound: loopback, `--exclude-cidr`,
/// `--exclude-port`.
fn outbound_exclusions(cfg: &CaptureConfig, chain: &str) -> Vec<String> {
    let mut r = vec![format!("-A {chain} -d 127.0.0.0/8 -j RETURN")];
    for c in &cfg.exclude_cidrs {
        r.push(format!("-A {chain} -d {c} -j RETURN"));
    }
    for p in &cfg.exclude_ports {
        r.push(format!("-A {chain} -p tcp --dport {p} -j RETURN"));
    }
    r
}

/// TPROXY mode's nftables table (see the module docs), as `nft -f` input that replaces any
/// earlier version in the same transaction.
pub fn tproxy_ruleset(cfg: &CaptureConfig) -> String {
    let mark = cfg.tproxy_mark;
    let mut rules = vec![
        "type filter hook prerouting priority mangle; policy accept;".to_string(),
        format!("meta l4proto tcp socket transparent 1 meta mark set {mark} accept"),
        "fib daddr type local return".into(),
        "ip daddr 127.0.0.0/8 return".into(),
    ];
    rules.extend(
        cfg.exclude_cidrs
            .iter()
            .map(|c| format!("ip daddr {c} return")),
    );
    rules.extend(
        cfg.exclude_ports
            .iter()
            .map(|p| format!("tcp dport {p} return")),
    );
    rules.push(format!(
        "meta l4proto tcp counter tproxy to :{} meta mark set {mark} accept",
        cfg.outbound_port
    ));
    // Reached only when tproxy found no listener: refuse rather than drop (a hang) or
    // forward (a bypass).
    rules.push("meta l4proto tcp counter reject with tcp reset".into());
    let body: String = rules.iter().map(|r| format!("\t\t{r}\n")).collect();
    format!(
        "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n\tchain divert {{\n{body}\t}}\n}}\n"
    )
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

    fn iptables(&self, table: &str, args: &[&str]) -> Result<String, CaptureError> {
        let mut all = vec!["-w", "-t", table];
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

    /// In every table we use, deletes our jumps from the built-in chains, then our chains;
    /// then our policy route. Nothing else is touched.
    fn remove_ours(&self, cfg: &CaptureConfig) -> Result<Vec<String>, CaptureError> {
        let mut removed = Vec::new();
        for table in TABLES {
            removed.extend(self.remove_ours_in(table)?);
        }
        if self.nft_table()?.is_some() {
            self.run("nft", &["delete", "table", "ip", NFT_TABLE], None)?;
            removed.push(format!("nft delete table ip {NFT_TABLE}"));
        }
        removed.extend(self.remove_route(cfg)?);
        Ok(removed)
    }

    /// Our nftables table as `nft list` prints it, or `None` when it is not there (or nft
    /// is not installed, so it cannot be).
    fn nft_table(&self) -> Result<Option<String>, CaptureError> {
        match self.run("nft", &["list", "table", "ip", NFT_TABLE], None) {
            Ok(listing) => Ok(Some(listing)),
            Err(CaptureError::Missing { .. } | CaptureError::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_ours_in(&self, table: &str) -> Result<Vec<String>, CaptureError> {
        let spec = self.iptables(table, &["-S"])?;
        let mut removed = Vec::new();
        for line in spec.lines() {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            let chain = rule.split_whitespace().next().unwrap_or_default();
            if !chain.starts_with(CHAIN_PREFIX) && rule.contains(&format!("-j {CHAIN_PREFIX}")) {
                let mut args = vec!["-D"];
                args.extend(rule.split_whitespace());
                self.iptables(table, &args)?;
                removed.push(format!("-t {table} {line}"));
            }
        }
        let ours: Vec<&str> = spec
            .lines()
            .filter_map(|l| l.strip_prefix("-N "))
            .filter(|c| c.starts_with(CHAIN_PREFIX))
            .collect();
        for c in &ours {
            self.iptables(table, &["-F", c])?;
        }
        for c in &ours {
            self.iptables(table, &["-X", c])?;
            removed.push(format!("-t {table} -X {c}"));
        }
        Ok(removed)
    }

    /// TPROXY mode: our nftables table (replaced in one transaction) and the policy route;
    /// REDIRECT mode: neither.
    fn install_tproxy(&self, cfg: &CaptureConfig) -> Result<(), CaptureError> {
        if cfg.mode == Mode::Redirect {
            if self.nft_table()?.is_some() {
                self.run("nft", &["delete", "table", "ip", NFT_TABLE], None)?;
            }
            self.remove_route(cfg)?;
            return Ok(());
        }
        self.run("nft", &["-f", "-"], Some(&tproxy_ruleset(cfg)))?;
        if self.our_rule_count(cfg)? != 1 || self.our_route(cfg)?.is_none() {
            self.remove_route(cfg)?;
            self.add_route(cfg)?;
        }
        Ok(())
    }

    /// TPROXY's policy route: `ip rule fwmark M lookup T` and `local 0.0.0.0/0 dev lo` in T.
    fn add_route(&self, cfg: &CaptureConfig) -> Result<(), CaptureError> {
        let (mark, table) = (cfg.tproxy_mark.to_string(), cfg.tproxy_table.to_string());
        self.run(
            "ip",
            &["rule", "add", "fwmark", &mark, "lookup", &table],
            None,
        )?;
        self.run(
            "ip",
            &[
                "route",
                "replace",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        )?;
        Ok(())
    }

    /// Deletes exactly what [`Tables::add_route`] adds, however often it is there; whatever
    /// else the table or the rules hold stays.
    fn remove_route(&self, cfg: &CaptureConfig) -> Result<Vec<String>, CaptureError> {
        let (mark, table) = (cfg.tproxy_mark.to_string(), cfg.tproxy_table.to_string());
        let rule = ["rule", "del", "fwmark", &mark, "lookup", &table];
        let mut removed = Vec::new();
        while self.our_rule_count(cfg)? > 0 {
            self.run("ip", &rule, None)?;
            removed.push(format!("ip {}", rule.join(" ")));
        }
        let route = [
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ];
        if self.our_route(cfg)?.is_some() {
            self.run("ip", &route, None)?;
            removed.push(format!("ip {}", route.join(" ")));
        }
        Ok(removed)
    }

    /// How many `ip rule`s send our mark to our table.
    fn our_rule_count(&self, cfg: &CaptureConfig) -> Result<usize, CaptureError> {
        let want = format!("fwmark {:#x} lookup {}", cfg.tproxy_mark, cfg.tproxy_table);
        Ok(self
            .run("ip", &["rule", "show"], None)?
            .lines()
            .filter(|l| l.trim_end().ends_with(&want))
            .count())
    }

    /// Our `local 0.0.0.0/0 dev lo` route, as `ip route show table T` prints it.
    fn our_route(&self, cfg: &CaptureConfig) -> Result<Option<String>, CaptureError> {
        let table = cfg.tproxy_table.to_string();
        // A table that was never used does not exist: nothing of ours is there.
        let shown = match self.run(
            "ip",
            &["route", "show", "table", &table, "type", "local"],
            None,
        ) {
            Ok(s) => s,
            Err(CaptureError::Failed { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(shown
            .lines()
            .find(|l| {
                l.starts_with("local default dev lo") || l.starts_with("local 0.0.0.0/0 dev lo")
            })
            .map(str::to_string))
    }

    /// True when every table holds exactly the chains of ours that `input` declares, and
    /// exactly its jumps, first in their built-in chains and in its order: only the chains'
    /// contents may differ.
    fn same_skeleton(&self, input: &str) -> Result<bool, CaptureError> {
        let mut tables: Vec<(&str, Vec<String>, Vec<String>)> = Vec::new();
        for line in input.lines() {
            if let Some(table) = line.strip_prefix('*') {
                tables.push((table, Vec::new(), Vec::new()));
            } else if let Some((_, chains, jumps)) = tables.last_mut() {
                if let Some(decl) = line.strip_prefix(':') {
                    chains.push(decl.split_whitespace().next().unwrap_or_default().into());
                } else if is_jump(line) {
                    jumps.push(as_listed(line));
                }
            }
        }
        for table in TABLES {
            let spec = self.iptables(table, &["-S"])?;
            let (mut want_chains, want_jumps) = tables
                .iter()
                .find(|(t, ..)| *t == table)
                .map(|(_, c, j)| (c.clone(), j.clone()))
                .unwrap_or_default();
            let mut have_chains: Vec<String> = spec
                .lines()
                .filter_map(|l| l.strip_prefix("-N "))
                .filter(|c| c.starts_with(CHAIN_PREFIX))
                .map(str::to_string)
                .collect();
            want_chains.sort();
            have_chains.sort();
            if want_chains != have_chains || !jumps_on_top(&spec, &want_jumps) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Our rules as `iptables -S` prints them, table by table, in order, then our policy
    /// route.
    fn ours(&self, cfg: &CaptureConfig) -> Result<Vec<String>, CaptureError> {
        let mut out = Vec::new();
        for table in TABLES {
            out.extend(
                self.iptables(table, &["-S"])?
                    .lines()
                    .filter(|l| l.contains(CHAIN_PREFIX))
                    .map(|l| format!("-t {table} {l}")),
            );
        }
        if let Some(listing) = self.nft_table()? {
            out.extend(
                listing
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && *l != "}")
                    .map(|l| format!("nft {}", strip_counter(l))),
            );
        }
        for _ in 0..self.our_rule_count(cfg)? {
            out.push(format!(
                "ip rule fwmark {} lookup {}",
                cfg.tproxy_mark, cfg.tproxy_table
            ));
        }
        if let Some(route) = self.our_route(cfg)? {
            out.push(format!("ip route table {}: {route}", cfg.tproxy_table));
        }
        Ok(out)
    }
}

/// True when `spec` (`iptables -S`) holds exactly `jumps` as our jumps, each built-in
/// chain starting with its share of them, in order.
fn jumps_on_top(spec: &str, jumps: &[String]) -> bool {
    let chain_of = |rule: &str| {
        rule.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    let rules: Vec<&str> = spec.lines().filter(|l| l.starts_with("-A ")).collect();
    let mut ours: Vec<&str> = rules
        .iter()
        .copied()
        .filter(|l| {
            !chain_of(l).starts_with(CHAIN_PREFIX) && l.contains(&format!("-j {CHAIN_PREFIX}"))
        })
        .collect();
    let mut want: Vec<&str> = jumps.iter().map(String::as_str).collect();
    ours.sort_unstable();
    want.sort_unstable();
    if ours != want {
        return false;
    }
    jumps.iter().all(|j| {
        let chain = chain_of(j);
        let mine = jumps.iter().filter(|o| chain_of(o) == chain);
        let first = rules.iter().filter(|l| chain_of(l) == chain);
        mine.zip(first).all(|(m, f)| m == f)
    })
}

/// An nft rule without its `counter packets N bytes M`, so listings compare across traffic.
fn strip_counter(rule: &str) -> String {
    match rule.find("counter packets ") {
        Some(at) => {
            let rest = &rule[at..];
            let end = rest
                .find(" bytes ")
                .and_then(|b| rest[b + 7..].find(' ').map(|e| b + 7 + e))
                .unwrap_or(rest.len());
            format!("{}counter{}", &rule[..at], &rest[end..])
        }
        None => rule.to_string(),
    }
}

/// The iptables tables capture writes to.
const TABLES: [&str; 1] = ["nat"];

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
    let restore = format!("iptables-{}-restore", t.backend);
    if t.same_skeleton(&input)? {
        // Re-installing what is there (a restarted init container): one transaction that
        // flushes and refills our chains, so no connection slips through in between.
        let refill: Vec<&str> = input.lines().filter(|l| !is_jump(l)).collect();
        t.run(
            &restore,
            &["-w", "--noflush"],
            Some(&(refill.join("\n") + "\n")),
        )?;
    } else {
        t.remove_ours(cfg)?;
        t.run(&restore, &["-w", "--noflush"], Some(&input))?;
    }
    if let Err(e) = t.install_tproxy(cfg) {
        // All or nothing: no capture without the part that makes it deliver.
        let _ = t.remove_ours(cfg);
        return Err(e);
    }
    t.ours(cfg)
}

/// A line of restore input that inserts one of our jumps into a built-in chain.
fn is_jump(line: &str) -> bool {
    line.starts_with("-I ")
}

/// `-I CHAIN N rule` as `iptables -S` prints it: `-A CHAIN rule`.
fn as_listed(jump: &str) -> String {
    let mut words = jump.split_whitespace().skip(1);
    let chain = words.next().unwrap_or_default();
    let rule: Vec<&str> = words.skip(1).collect();
    format!("-A {chain} {}", rule.join(" "))
}

/// Removes every rule and chain of ours, and our policy route (for the `--tproxy-mark` and
/// `--tproxy-table` given, the defaults unless changed). Returns what was removed.
pub fn remove(cfg: &CaptureConfig) -> Result<Vec<String>, CaptureError> {
    Tables::open(cfg)?.remove_ours(cfg)
}

/// Our rules with their packet counters, and the backend, for `switchyard capture status`.
pub fn status(cfg: &CaptureConfig) -> Result<String, CaptureError> {
    let t = Tables::open(cfg)?;
    let rules = t.ours(cfg)?;
    if rules.is_empty() {
        return Ok(format!("capture: not installed (iptables-{})\n", t.backend));
    }
    let mut out = format!("capture: installed (iptables-{})\n", t.backend);
    for table in TABLES {
        let prefix = format!("-t {table} -N ");
        for chain in rules.iter().filter_map(|l| l.strip_prefix(&prefix)) {
            out += &format!("table {table}: ");
            out += &t.iptables(table, &["-L", chain, "-n", "-v", "-x"])?;
        }
    }
    if let Some(listing) = t.nft_table()? {
        out += &listing;
    }
    for line in rules.iter().filter(|l| l.starts_with("ip ")) {
        out += line;
        out.push('\n');
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
            "-I OUTPUT 1 -p tcp -j SWITCHYARD_OUTPUT",
            "-I PREROUTING 1 -p tcp -j SWITCHYARD_PREROUTING",
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
    fn tproxy_marks_diverts_and_keeps_the_destination() {
        let cfg = CaptureConfig {
            mode: Mode::Tproxy,
            exclude_ports: vec![22],
            exclude_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            ..CaptureConfig::default()
        };
        let nft = tproxy_ruleset(&cfg);
        let lines: Vec<&str> = nft.lines().map(str::trim).collect();
        let pos = |s: &str| {
            lines
                .iter()
                .position(|l| *l == s)
                .unwrap_or_else(|| panic!("missing {s:?} in\n{nft}"))
        };
        assert_eq!(
            lines[..2],
            ["add table ip switchyard", "delete table ip switchyard"]
        );
        let divert = pos("meta l4proto tcp socket transparent 1 meta mark set 1338 accept");
        let local = pos("fib daddr type local return");
        let cidr = pos("ip daddr 10.1.0.0/16 return");
        let port = pos("tcp dport 22 return");
        let tproxy = pos("meta l4proto tcp counter tproxy to :15001 meta mark set 1338 accept");
        let reject = pos("meta l4proto tcp counter reject with tcp reset");
        assert!(divert < local && local < cidr && cidr < port && port < tproxy && tproxy < reject);
        // Forwarded traffic is not NATed as well; local processes still are.
        let nat = rules(&cfg).unwrap();
        assert!(!nat.contains("-A SWITCHYARD_PREROUTING -j SWITCHYARD_OUTBOUND"));
        assert!(nat.contains("-A SWITCHYARD_OUTPUT -j SWITCHYARD_OUTBOUND"));
        let clash = CaptureConfig {
            tproxy_mark: 1337,
            ..cfg
        };
        assert_eq!(rules(&clash), Err(CaptureError::MarkClash(1337)));
        assert_eq!(
            strip_counter("tcp counter packets 12 bytes 720 tproxy to :15001"),
            "tcp counter tproxy to :15001"
        );
    }

    #[test]
    fn a_reinstall_refills_in_place_only_when_our_jumps_lead_their_chains() {
        let jumps = vec![
            "-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT".to_string(),
            "-A PREROUTING -p tcp -j SWITCHYARD_PREROUTING".to_string(),
        ];
        let ours_first = "-P OUTPUT ACCEPT\n-N SWITCHYARD_OUTPUT\n-A PREROUTING -p tcp -j SWITCHYARD_PREROUTING\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT\n-A OUTPUT -j KUBE-SERVICES\n";
        assert!(jumps_on_top(ours_first, &jumps));
        let kube_first = ours_first.replace(
            "-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT\n-A OUTPUT -j KUBE-SERVICES",
            "-A OUTPUT -j KUBE-SERVICES\n-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT",
        );
        assert!(!jumps_on_top(&kube_first, &jumps), "kube-proxy got ahead");
        let missing = ours_first.replace("-A OUTPUT -p tcp -j SWITCHYARD_OUTPUT\n", "");
        assert!(!jumps_on_top(&missing, &jumps));
        assert_eq!(
            as_listed("-I PREROUTING 1 -p tcp -j SWITCHYARD_PREROUTING"),
            "-A PREROUTING -p tcp -j SWITCHYARD_PREROUTING"
        );
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
