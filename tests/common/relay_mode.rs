//! Relay modes (`switchyard run --relay-mode`): [`RelayMode`], the `in_both_relay_modes!`
//! macro that defines a test once per mode, and starting the proxy in a mode.

use super::{
    proxy_available, require, selected_proxy, skip_unsupported, Proxy, ProxyKind, ProxyOpts,
};

/// How Switchyard moves a connection's bytes (`switchyard run --relay-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// Provided-buffer rings (Switchyard's default).
    BufferRing,
    /// `splice` through a pipe per direction.
    Splice,
}

impl RelayMode {
    /// The value of `--relay-mode`.
    pub fn arg(self) -> &'static str {
        match self {
            RelayMode::BufferRing => "buffer-ring",
            RelayMode::Splice => "splice",
        }
    }
}

/// Defines, for each test function `name(mode: RelayMode)` listed, the tests
/// `buffer_ring::name` and `splice::name` (use with `#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! in_both_relay_modes {
    ($($name:ident),* $(,)?) => {
        mod buffer_ring {
            $(#[test]
            fn $name() {
                super::$name(super::RelayMode::BufferRing)
            })*
        }
        mod splice {
            $(#[test]
            fn $name() {
                super::$name(super::RelayMode::Splice)
            })*
        }
    };
}

/// `opts` for a test of relay mode `mode` on a proxy of `kind`: `--relay-mode` added to
/// Switchyard's arguments. None (after printing why) when `kind` has no such mode: Envoy has
/// no relay modes, so its pass runs each relay test once, as the buffer-ring variant (the
/// Switchyard-only arguments in `opts` do not reach Envoy).
pub fn relay_mode_opts(kind: ProxyKind, mode: RelayMode, mut opts: ProxyOpts) -> Option<ProxyOpts> {
    if kind == ProxyKind::Envoy && mode != RelayMode::BufferRing {
        skip_unsupported(
            kind,
            &format!(
                "Envoy has no relay mode; the {} variant runs against Switchyard only",
                mode.arg()
            ),
        );
        return None;
    }
    opts.switchyard_args
        .extend(["--relay-mode".to_string(), mode.arg().to_string()]);
    Some(opts)
}

/// Starts the selected proxy with `workers` workers in relay mode `mode`, or returns None
/// as [`start_selected_mode`] does.
pub fn start_selected_mode_with(yaml: &str, mode: RelayMode, workers: u32) -> Option<Proxy> {
    let kind = selected_proxy();
    let opts = ProxyOpts {
        concurrency: workers,
        ..ProxyOpts::default()
    };
    let opts = relay_mode_opts(kind, mode, opts)?;
    if !require(proxy_available(kind), kind.name()) {
        return None;
    }
    Some(Proxy::start_with(kind, yaml, opts))
}

/// Starts the selected proxy (one worker) in relay mode `mode` with `extra` Switchyard
/// arguments, or returns None: a skip when the proxy has no such mode ([`relay_mode_opts`]),
/// or when it is not available (a failure under CI).
pub fn start_selected_mode(yaml: &str, mode: RelayMode, extra: &[&str]) -> Option<Proxy> {
    let kind = selected_proxy();
    let mut opts = relay_mode_opts(kind, mode, ProxyOpts::default())?;
    if !require(proxy_available(kind), kind.name()) {
        return None;
    }
    opts.switchyard_args
        .extend(extra.iter().map(|a| a.to_string()));
    Some(Proxy::start_with(kind, yaml, opts))
}
