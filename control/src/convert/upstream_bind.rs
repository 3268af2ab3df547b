//! A cluster's `upstream_bind_config` (the source IP of upstream connections, freebind, and
//! integer socket options set before the connect) and `upstream_connection_options` (TCP
//! keepalive, as the socket options Envoy sets for it).

use super::address::ip_address;
use super::Result;
use crate::error::ConfigError;
use crate::path::{field, index};
use envoy_types::pb::envoy::config::cluster::v3::UpstreamConnectionOptions;
use envoy_types::pb::envoy::config::core::v3::socket_option::SocketState;
use envoy_types::pb::envoy::config::core::v3::{
    socket_address, socket_option, BindConfig, SocketOption as PbSocketOption, TcpKeepalive,
};
use switchyard_dataplane::fib::{SocketOption, UpstreamBind};

/// A cluster's `upstream_bind_config`: source IP (port 0: the kernel picks), freebind, and
/// integer socket options applied before bind (`SO_MARK` is `{level: 1, name: 36}`).
pub(super) fn upstream_bind(b: &BindConfig, path: &str) -> Result<UpstreamBind> {
    let source_ip = match &b.source_address {
        None => None,
        Some(sa) => {
            let spath = field(path, "source_address");
            let ip = ip_address(&sa.address, field(&spath, "address"))?;
            if !matches!(
                sa.port_specifier,
                None | Some(socket_address::PortSpecifier::PortValue(0))
            ) {
                return Err(ConfigError::unsupported(
                    field(&spath, "port_value"),
                    "a fixed source port is not supported by Switchyard (leave it 0: the kernel picks one per connection)",
                ));
            }
            Some(ip)
        }
    };
    let mut socket_options = Vec::with_capacity(b.socket_options.len());
    for (i, o) in b.socket_options.iter().enumerate() {
        socket_options.push(socket_option(o, &index(&field(path, "socket_options"), i))?);
    }
    Ok(UpstreamBind {
        source_ip: source_ip.filter(|ip| !ip.is_unspecified()),
        freebind: b.freebind.is_some_and(|f| f.value),
        socket_options,
    })
}

/// One integer `SocketOption`, set before bind (`STATE_PREBIND`, or `STATE_BOUND`: an
/// upstream socket is bound and connected in one go, so both come before the connect).
fn socket_option(o: &PbSocketOption, path: &str) -> Result<SocketOption> {
    let int = |v: i64, name: &str| {
        i32::try_from(v).map_err(|_| {
            ConfigError::invalid(field(path, name), format!("{v} does not fit a C int"))
        })
    };
    let value = match &o.value {
        Some(socket_option::Value::IntValue(v)) => int(*v, "int_value")?,
        Some(socket_option::Value::BufValue(_)) => {
            return Err(ConfigError::unsupported(
                field(path, "buf_value"),
                "not supported by Switchyard (int_value is)",
            ))
        }
        None => return Err(ConfigError::invalid(field(path, "int_value"), "required")),
    };
    if o.state == SocketState::StateListening as i32 {
        return Err(ConfigError::invalid(
            field(path, "state"),
            "STATE_LISTENING applies to listening sockets, not to upstream connections",
        ));
    }
    Ok(SocketOption {
        level: int(o.level, "level")?,
        name: int(o.name, "name")?,
        value,
    })
}

/// `upstream_connection_options`: with `tcp_keepalive`, `SO_KEEPALIVE` on every upstream
/// socket, and `TCP_KEEPCNT`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL` for the fields given (the
/// kernel's defaults for the others), as Envoy sets them.
pub(super) fn upstream_connection_options(
    o: &UpstreamConnectionOptions,
    path: &str,
) -> Result<Vec<SocketOption>> {
    match &o.tcp_keepalive {
        Some(k) => tcp_keepalive(k, &field(path, "tcp_keepalive")),
        None => Ok(Vec::new()),
    }
}

fn tcp_keepalive(k: &TcpKeepalive, path: &str) -> Result<Vec<SocketOption>> {
    let mut options = vec![SocketOption {
        level: libc::SOL_SOCKET,
        name: libc::SO_KEEPALIVE,
        value: 1,
    }];
    // The kernel's ranges: a value outside one would fail every upstream connect.
    for (name, value, option, max) in [
        (
            "keepalive_probes",
            &k.keepalive_probes,
            libc::TCP_KEEPCNT,
            127,
        ),
        (
            "keepalive_time",
            &k.keepalive_time,
            libc::TCP_KEEPIDLE,
            32_767,
        ),
        (
            "keepalive_interval",
            &k.keepalive_interval,
            libc::TCP_KEEPINTVL,
            32_767,
        ),
    ] {
        let Some(v) = value else { continue };
        if !(1..=max).contains(&v.value) {
            return Err(ConfigError::invalid(
                field(path, name),
                format!("{} is outside the kernel's range (1 to {max})", v.value),
            ));
        }
        options.push(SocketOption {
            level: libc::IPPROTO_TCP,
            name: option,
            value: v.value as i32,
        });
    }
    Ok(options)
}
