//! Envoy's filter-chain match (`filter_chain_match`), compiled into an index.
//!
//! Envoy narrows the candidate chains criterion by criterion, in a fixed order: destination
//! port, destination IP, server name, transport protocol, application protocols, direct
//! source IP, source type, source IP, source port. At each step the most specific candidates
//! that match win (an exact port over "any port", the longest matching prefix over shorter
//! ones, an exact server name over the longest matching `*.` suffix, the client's first
//! offered protocol that a chain lists, a local or external source over "any"); chains that
//! leave the criterion empty are the fallback; when neither exists the connection matches no
//! chain (Envoy commits at each step: a later criterion that fails does not send it back to
//! a less specific candidate). The server name, transport protocol and protocols are what
//! the TLS inspector read ([`Detected`]): none, `raw_buffer` and none without it.
//!
//! [`ChainIndex`] holds these steps as Envoy's `FilterChainManagerImpl` does, a tree with one
//! level per criterion, built once per FIB on the control thread. Guarantees:
//! - **Envoy's answer**: the chain the criterion-by-criterion narrowing picks (a linear
//!   model of it is kept for the tests, which compare the two on random chains).
//! - **Cost independent of the chains that cannot match**: a lookup makes one hash lookup
//!   per level (exact ports, names, protocols), one per dot of the server name for `*.`
//!   wildcards, and one per distinct prefix length for addresses.
//! - **No allocation** on lookup.
//! - A listener holds at most [`MAX_FILTER_CHAINS`] chains (the config layer refuses more).

pub use index::ChainIndex;

mod index;
#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use super::prefix_map::canonical;
use std::net::IpAddr;

/// Most filter chains one listener may have: a sanity bound (the index's cost does not
/// grow with the chains, its memory does).
pub const MAX_FILTER_CHAINS: usize = 65_536;

/// An address prefix (`address_prefix` / `prefix_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrRange {
    /// Network address.
    pub address: IpAddr,
    /// Prefix length in bits (<= 32 for IPv4, <= 128 for IPv6).
    pub prefix_len: u8,
}

impl CidrRange {
    /// True when `ip` is inside the range. IPv4-mapped IPv6 addresses match IPv4 ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for CidrRange {
    type Err = String;

    /// `address/prefix_len` (`10.0.0.0/8`, `2001:db8::/32`), taken as written.
    fn from_str(s: &str) -> Result<CidrRange, String> {
        let (address, len) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not address/prefix_len"))?;
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("'{address}' is not an IP address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(prefix_len) if prefix_len <= max => Ok(CidrRange {
                address,
                prefix_len,
            }),
            _ => Err(format!("'{len}' is not a prefix length up to {max}")),
        }
    }
}

fn prefix_eq(net: u128, ip: u128, bits: u32, prefix_len: u8) -> bool {
    let len = u32::from(prefix_len).min(bits);
    if len == 0 {
        return true;
    }
    let shift = bits - len;
    (net >> shift) == (ip >> shift)
}

/// What one filter chain matches. Empty criteria match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` (destination IP).
    pub prefix_ranges: Vec<CidrRange>,
    /// `server_names`: exact names, or `*.suffix` wildcards.
    pub server_names: Vec<Box<str>>,
    /// `transport_protocol` (`raw_buffer`, `tls`, ...), if set.
    pub transport_protocol: Option<Box<str>>,
    /// `application_protocols`.
    pub application_protocols: Vec<Box<str>>,
    /// `direct_source_prefix_ranges`: the peer the socket sees (behind a PROXY header, not
    /// the declared source).
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    /// `source_type`.
    pub source_type: SourceType,
    /// `source_prefix_ranges`.
    pub source_prefix_ranges: Vec<CidrRange>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
}

/// Envoy's `FilterChainMatch.ConnectionSourceType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceType {
    /// `ANY`: the criterion is empty.
    #[default]
    Any,
    /// `SAME_IP_OR_LOOPBACK`: the source is a loopback address or the local address itself.
    SameIpOrLoopback,
    /// `EXTERNAL`: any other source.
    External,
}

/// Envoy's `isSameIpOrLoopback`: `remote` is a loopback address or the local address
/// (IPv4-mapped IPv6 addresses read as IPv4).
pub(crate) fn is_same_ip_or_loopback(local: IpAddr, remote: IpAddr) -> bool {
    let remote = canonical(remote);
    remote.is_loopback() || remote == canonical(local)
}

impl ChainMatch {
    /// Whether it reads the connection's source (its address, port or kind, or the peer's
    /// address behind a PROXY header).
    pub fn reads_source(&self) -> bool {
        !self.source_prefix_ranges.is_empty()
            || !self.source_ports.is_empty()
            || !self.direct_source_prefix_ranges.is_empty()
            || self.source_type != SourceType::Any
    }

    /// Whether it reads what only a TLS inspector can tell (without one such a chain never
    /// matches; the config warns).
    pub fn needs_tls_inspector(&self) -> bool {
        self.transport_protocol.as_deref() == Some(TRANSPORT_TLS)
            || (self.transport_protocol.is_none()
                && (!self.server_names.is_empty() || !self.application_protocols.is_empty()))
    }
}

/// The transport protocol a connection has when no listener filter detected one.
pub const TRANSPORT_RAW_BUFFER: &str = "raw_buffer";
/// The transport protocol the TLS inspector sets when it read a ClientHello.
pub const TRANSPORT_TLS: &str = "tls";

/// What listener filters detected of a connection (Envoy's requested server name,
/// detected transport protocol and requested application protocols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected<'a> {
    /// The SNI; empty when none.
    pub server_name: &'a [u8],
    /// `raw_buffer` or `tls`.
    pub transport_protocol: &'a str,
    /// The offered protocols as a TLS ALPN list (length-prefixed entries).
    pub alpn_list: &'a [u8],
    /// The peer the socket sees, when a PROXY header declared another source (which is
    /// then the connection's remote address); `None`: the remote address is the peer.
    pub direct_remote: Option<std::net::SocketAddr>,
}

impl Default for Detected<'_> {
    fn default() -> Self {
        Detected::NOTHING
    }
}

impl<'a> Detected<'a> {
    /// A connection no listener filter looked into.
    pub const NOTHING: Detected<'static> = Detected {
        server_name: b"",
        transport_protocol: TRANSPORT_RAW_BUFFER,
        alpn_list: b"",
        direct_remote: None,
    };

    /// The offered protocols, in the client's order.
    pub fn application_protocols(&self) -> crate::tls::client_hello::AlpnIter<'a> {
        crate::tls::client_hello::AlpnIter::new(self.alpn_list)
    }
}
