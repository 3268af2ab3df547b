//! Addresses and their parts: listener, admin and endpoint `Address`es (IP literals with a
//! non-zero port, or the admin's Unix socket), ports, IP literals and CIDR ranges (host bits
//! cleared).

use super::Result;
use crate::error::ConfigError;
use crate::path::field;
use crate::rib::{AdminAddress, Bind, Protocol};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, CidrRange as PbCidr, SocketAddress,
};
use std::net::{IpAddr, SocketAddr};
use switchyard_dataplane::fib::CidrRange;

/// A listener's `Address`: an IP `socket_address` with a non-zero port, TCP or UDP.
pub(super) fn listener_address(a: Option<&Address>, path: &str) -> Result<Bind> {
    let (protocol, address) = any_socket_address(a, path)?;
    let protocol = match protocol {
        socket_address::Protocol::Tcp => Protocol::Tcp,
        socket_address::Protocol::Udp => Protocol::Udp,
    };
    Ok(Bind { protocol, address })
}

/// The admin's `Address`: an IP `socket_address` with a non-zero port, TCP (the default).
fn socket_address(a: Option<&Address>, path: &str) -> Result<SocketAddr> {
    match any_socket_address(a, path)? {
        (socket_address::Protocol::Tcp, address) => Ok(address),
        (socket_address::Protocol::Udp, _) => Err(ConfigError::unsupported(
            field(&field(path, "socket_address"), "protocol"),
            "the admin serves HTTP over TCP",
        )),
    }
}

/// An `Address` that must be an IP `socket_address` with a non-zero port, and its protocol.
pub(super) fn any_socket_address(
    a: Option<&Address>,
    path: &str,
) -> Result<(socket_address::Protocol, SocketAddr)> {
    let (protocol, text, port_value) = raw_socket_address(a, path)?;
    let path = field(path, "socket_address");
    let ip: IpAddr = text.parse().map_err(|_| {
        ConfigError::invalid(
            field(&path, "address"),
            format!("'{text}' is not an IP address (static config takes IP literals)"),
        )
    })?;
    let port = port(port_value, &field(&path, "port_value"))?;
    Ok((protocol, SocketAddr::new(ip, port)))
}

/// An endpoint's `Address` as written: its protocol, its `address` text (an IP literal or a
/// host name, not checked here) and its port (`port_value`, 0 when not given).
pub(super) fn raw_socket_address<'a>(
    a: Option<&'a Address>,
    path: &str,
) -> Result<(socket_address::Protocol, &'a str, u32)> {
    let sa = ip_socket_address(a, path)?;
    let path = field(path, "socket_address");
    let Ok(protocol) = socket_address::Protocol::try_from(sa.protocol) else {
        return Err(ConfigError::invalid(
            field(&path, "protocol"),
            format!("unknown protocol {}", sa.protocol),
        ));
    };
    let port_value = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => *p,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(ConfigError::unsupported(
                field(&path, "named_port"),
                "not supported by Switchyard",
            ))
        }
        None => 0,
    };
    Ok((protocol, sa.address.as_str(), port_value))
}

/// A DNS resolver's `Address` (c-ares `resolvers`, `dns_resolvers`, `dns_resolution_config`):
/// an IP literal; port 0 (or none) is DNS's 53. The `protocol` does not matter (Envoy hands
/// c-ares `ip:port`; queries go over UDP unless `use_tcp_for_dns_lookups`).
pub(super) fn dns_resolver_address(a: &Address, path: &str) -> Result<SocketAddr> {
    let (_, text, port_value) = raw_socket_address(Some(a), path)?;
    let sa_path = field(path, "socket_address");
    let ip: IpAddr = text.parse().map_err(|_| {
        ConfigError::invalid(
            field(&sa_path, "address"),
            format!("DNS resolver '{text}' is not an IP address"),
        )
    })?;
    let port = match port_value {
        0 => 53,
        p => port(p, &field(&sa_path, "port_value"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// The `socket_address` of an `Address` (a pipe or an internal address is refused).
fn ip_socket_address<'a>(a: Option<&'a Address>, path: &str) -> Result<&'a SocketAddress> {
    let Some(a) = a else {
        return Err(ConfigError::invalid(path, "required"));
    };
    match &a.address {
        Some(address::Address::SocketAddress(sa)) => Ok(sa),
        Some(_) => Err(ConfigError::unsupported(
            path,
            "only socket_address is supported by Switchyard",
        )),
        None => Err(ConfigError::invalid(
            field(path, "socket_address"),
            "required",
        )),
    }
}

/// The admin's address: a socket address, or a Unix socket path (`pipe`).
pub(super) fn admin_address(a: &Address, path: &str) -> Result<AdminAddress> {
    let Some(address::Address::Pipe(pipe)) = &a.address else {
        return socket_address(Some(a), path).map(AdminAddress::Tcp);
    };
    let ppath = field(path, "pipe");
    if pipe.path.is_empty() || pipe.path.starts_with('@') {
        return Err(ConfigError::invalid(
            field(&ppath, "path"),
            "a filesystem path is required (abstract sockets are not supported)",
        ));
    }
    if pipe.mode > 0o777 {
        return Err(ConfigError::invalid(
            field(&ppath, "mode"),
            format!("{:#o} is not a permission mode (at most 0777)", pipe.mode),
        ));
    }
    Ok(AdminAddress::Pipe {
        path: pipe.path.clone().into(),
        mode: pipe.mode,
    })
}

/// A TCP port: 1 to 65535.
pub(super) fn port(value: u32, path: &str) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::invalid(
            path,
            format!("port {value} is out of range (1-65535)"),
        )),
    }
}

/// An IP address literal; the error names `path`.
pub(super) fn ip_address(text: &str, path: String) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| ConfigError::invalid(path, format!("'{text}' is not an IP address")))
}

/// A `CidrRange`, with host bits cleared (Envoy matches on the network part only).
pub(super) fn cidr(r: &PbCidr, path: &str) -> Result<CidrRange> {
    let address = ip_address(&r.address_prefix, field(path, "address_prefix"))?;
    let len = r.prefix_len.map_or(0, |l| l.value);
    let (max, family) = if address.is_ipv4() {
        (32, "IPv4")
    } else {
        (128, "IPv6")
    };
    if len > max {
        return Err(ConfigError::invalid(
            field(path, "prefix_len"),
            format!("{len} is too long for an {family} prefix (at most {max})"),
        ));
    }
    let address = match address {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    };
    Ok(CidrRange {
        address,
        prefix_len: len as u8,
    })
}
