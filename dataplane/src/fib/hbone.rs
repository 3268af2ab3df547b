//! HBONE in the FIB: a filter chain that terminates HTTP/2 CONNECT (the subset of Envoy's
//! `http_connection_manager` that says exactly that), a tcp_proxy that tunnels its
//! connections over HTTP/2 CONNECT (`tunneling_config`), and a cluster's HTTP/2 settings
//! (`typed_extension_protocol_options`), compiled by the control thread and read by workers.

use std::net::SocketAddr;

/// `http2_protocol_options` one side of an HTTP/2 connection uses (Envoy's defaults in
/// [`Http2Settings::ENVOY_DEFAULT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// `max_concurrent_streams`: streams the peer may open on one connection (the server's
    /// SETTINGS), or streams this side opens on one pooled connection (the client's).
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size`: what a stream may receive before it reads; the most a
    /// stream holds in the worker for a slow reader.
    pub initial_stream_window_bytes: u32,
    /// `initial_connection_window_size`: the same for all the streams of a connection.
    pub initial_connection_window_bytes: u32,
}

impl Http2Settings {
    /// Envoy's defaults: 2^31 - 1 streams, 256 MiB windows.
    pub const ENVOY_DEFAULT: Http2Settings = Http2Settings {
        max_concurrent_streams: 2_147_483_647,
        initial_stream_window_bytes: 268_435_456,
        initial_connection_window_bytes: 268_435_456,
    };
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings::ENVOY_DEFAULT
    }
}

/// A chain whose connections carry HBONE: `envoy.filters.network.http_connection_manager`
/// with `codec_type: HTTP2` (or `AUTO`), `allow_connect`, `upgrade_configs: CONNECT`, routes
/// with `connect_matcher` and the router filter. Each CONNECT stream is proxied like a
/// tcp_proxy connection of the chain (its `tcp_proxy`, compiled from the HCM: `stat_prefix`,
/// the routes' cluster, `access_log`, `stream_idle_timeout` as the idle timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HboneTerminate {
    /// The server's HTTP/2 settings.
    pub http2: Http2Settings,
    /// `common_http_protocol_options.idle_timeout` (Envoy's default 1 h): a connection
    /// without streams for this long is drained (GOAWAY) and closed; `None`: never.
    pub idle_timeout_ms: Option<u64>,
}

/// A cluster's connections carry HTTP/2 (`typed_extension_protocol_options`
/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions` with
/// `explicit_http_config.http2_protocol_options`): tcp_proxy connections routed to it with a
/// `tunneling_config` are streams of pooled connections, one pool per endpoint (and the
/// cluster's TLS identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Upstream {
    /// The client's HTTP/2 settings: `max_concurrent_streams` bounds the streams of one
    /// pooled connection (ztunnel uses 100); a stream beyond it opens another connection.
    pub http2: Http2Settings,
    /// `common_http_protocol_options.idle_timeout` (Envoy's default 1 h): a pooled
    /// connection without streams for this long is closed (GOAWAY, then its socket);
    /// `None`: never.
    pub idle_timeout_ms: Option<u64>,
}

/// `tcp_proxy.tunneling_config`: the connection is a CONNECT stream to its cluster's
/// endpoint, `:authority` rendered from `hostname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunneling {
    /// `hostname`, with Envoy's substitution operators.
    pub hostname: Template,
    /// `headers_to_add` (every value rendered per connection), in config order; an entry
    /// with `append: false` replaces an earlier header of the same name.
    pub headers: Vec<TunnelHeader>,
}

/// One of `headers_to_add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelHeader {
    /// Lower case, valid as an HTTP/2 header name.
    pub name: String,
    pub value: Template,
    /// `append_action` / `append`: add beside an earlier value of the name, or replace it.
    pub append: bool,
}

/// A header value with Envoy's substitution operators (`%DOWNSTREAM_LOCAL_ADDRESS%`, ...)
/// among literal text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text as written (`%%` already unescaped).
    Literal(String),
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: where the client connected (its original destination,
    /// for a captured connection), `ip:port`.
    DownstreamLocalAddress,
    /// `%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%`.
    DownstreamLocalAddressWithoutPort,
    /// `%DOWNSTREAM_LOCAL_PORT%`.
    DownstreamLocalPort,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client, `ip:port`.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_REMOTE_PORT%`.
    DownstreamRemotePort,
    /// `%UPSTREAM_HOST%`: the endpoint the connection's cluster picked, `ip:port` (rendered
    /// after the pick; with an HBONE tunnel, the endpoint behind the node proxy).
    UpstreamHost,
}

impl Tunneling {
    /// Its hostname or a header renders the client's address (`remote`) or the local one
    /// (`local`): the worker looks them up at accept.
    pub fn reads(&self) -> (bool, bool) {
        let templates =
            || std::iter::once(&self.hostname).chain(self.headers.iter().map(|h| &h.value));
        let any = |f: fn(&TemplatePart) -> bool| templates().any(|t| t.parts.iter().any(f));
        (
            any(|p| {
                matches!(
                    p,
                    TemplatePart::DownstreamLocalAddress
                        | TemplatePart::DownstreamLocalAddressWithoutPort
                        | TemplatePart::DownstreamLocalPort
                )
            }),
            any(|p| {
                matches!(
                    p,
                    TemplatePart::DownstreamRemoteAddress
                        | TemplatePart::DownstreamRemoteAddressWithoutPort
                        | TemplatePart::DownstreamRemotePort
                )
            }),
        )
    }
}

impl Template {
    /// The literal text `s`.
    pub fn literal(s: &str) -> Template {
        Template {
            parts: vec![TemplatePart::Literal(s.to_string())],
        }
    }

    /// The value for a connection from `remote` to `local` that picked endpoint `upstream`,
    /// appended to `out` (an address not known renders as nothing, as Envoy renders a missing
    /// value in a header).
    pub fn render(
        &self,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        upstream: Option<SocketAddr>,
        out: &mut String,
    ) {
        use std::fmt::Write;
        for part in &self.parts {
            let _ = match part {
                TemplatePart::Literal(s) => {
                    out.push_str(s);
                    Ok(())
                }
                TemplatePart::DownstreamLocalAddress => write_addr(out, local),
                TemplatePart::DownstreamRemoteAddress => write_addr(out, remote),
                TemplatePart::DownstreamLocalAddressWithoutPort => write_ip(out, local),
                TemplatePart::DownstreamRemoteAddressWithoutPort => write_ip(out, remote),
                TemplatePart::DownstreamLocalPort => match local {
                    Some(a) => write!(out, "{}", a.port()),
                    None => Ok(()),
                },
                TemplatePart::DownstreamRemotePort => match remote {
                    Some(a) => write!(out, "{}", a.port()),
                    None => Ok(()),
                },
                TemplatePart::UpstreamHost => write_addr(out, upstream),
            };
        }
    }
}

fn write_addr(out: &mut String, a: Option<SocketAddr>) -> std::fmt::Result {
    use std::fmt::Write;
    match a {
        Some(a) => write!(out, "{a}"),
        None => Ok(()),
    }
}

fn write_ip(out: &mut String, a: Option<SocketAddr>) -> std::fmt::Result {
    use std::fmt::Write;
    match a {
        Some(a) => write!(out, "{}", a.ip()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_renders_envoys_operators_among_text() {
        let t = Template {
            parts: vec![
                TemplatePart::DownstreamLocalAddressWithoutPort,
                TemplatePart::Literal(":".into()),
                TemplatePart::DownstreamLocalPort,
                TemplatePart::Literal(" from ".into()),
                TemplatePart::DownstreamRemoteAddress,
                TemplatePart::Literal(" to ".into()),
                TemplatePart::UpstreamHost,
            ],
        };
        let mut out = String::new();
        t.render(
            Some("[::1]:80".parse().unwrap()),
            Some("10.0.0.1:5000".parse().unwrap()),
            Some("10.244.2.2:8080".parse().unwrap()),
            &mut out,
        );
        assert_eq!(out, "::1:80 from 10.0.0.1:5000 to 10.244.2.2:8080");
        let mut out = String::new();
        t.render(None, None, None, &mut out);
        assert_eq!(out, ": from  to ");
    }
}
