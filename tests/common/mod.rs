//! Shared harness for Switchyard's integration tests.
//!
//! Everything here uses real sockets on 127.0.0.1 only. One file per piece, everything
//! re-exported here (tests `use common::*;`, and `#[macro_use] mod common;` for
//! `in_both_relay_modes!`):
//!
//! * `limits.rs`: the bounds every loop keeps to ([`IO_TIMEOUT`], ...) and [`wait_until`].
//! * `env.rs`: which proxy ([`ProxyKind`], `SWITCHYARD_TEST_PROXY=switchyard|envoy`, default
//!   switchyard), CI or not, [`require`] and [`skip_unsupported`], the binaries, [`test_dir`].
//! * `ports.rs`: free and closed ports on loopback, connecting from a chosen source address.
//! * `data.rs`: deterministic PRNG data ([`Prng`]) and SHA-256 helpers.
//! * `stream.rs`: bounded reads and writes of a TCP stream and how a read side ended ([`End`]).
//! * `client.rs`: client helpers that stream PRNG data and hash what comes back ([`exchange`]).
//! * `backend.rs`: [`Backend`], a TCP server in threads of the test process (echo, half-close
//!   echo, source, sink, reset, abort, banner, tagged), with an accepted-connection counter and
//!   a per-connection report (bytes and SHA-256 both ways, how the connection ended).
//! * `admin_http.rs`: a tiny HTTP/1.1 client for the admin API ([`http`], [`parse_stats`]).
//! * `config.rs`: the Envoy v3 bootstrap builders ([`bootstrap`], [`tcp_listener`],
//!   [`static_cluster`], [`render`]).
//! * `tls.rs`: rustls clients with the test PKI ([`client_config`], [`tls_connect`]).
//! * `udp.rs`: [`UdpBackend`] and UDP socket helpers.
//! * `process.rs`: [`output_within`] / [`try_output_within`], a child process run with a time
//!   limit (the `validate` tests).
//! * `dns.rs`: [`DnsServer`], an authoritative DNS server on loopback whose answers the test
//!   changes, for the DNS cluster tests.
//! * `proxy.rs`: [`Proxy`], the proxy under test, Switchyard (`CARGO_BIN_EXE_switchyard run -c
//!   FILE`) or real Envoy (`ENVOY_BIN`, default `<repo>/.venv/bin/envoy`); the same YAML (an
//!   Envoy v3 bootstrap) is given to both. [`Proxy::stats`] and [`Proxy::stat`] read its admin.
//! * `relay_mode.rs`: [`RelayMode`] and `in_both_relay_modes!`.
//! * `xds_py.rs`: [`Ads`], the Python xDS management server as a child process.
//! * `netns.rs` (not re-exported; `use common::netns::*`): network namespaces for the capture
//!   and node-proxy tests.
//!
//! Every loop is bounded in count and in time; every thread ends by itself.
//! Skips: outside CI a test that cannot run (Envoy missing, feature not in the selected proxy)
//! prints why and returns; with `CI=true` a missing prerequisite fails the test instead
//! ([`require`]). A deliberate "this proxy has no such feature" is a skip in CI too
//! ([`skip_unsupported`]).
#![allow(dead_code)]

pub mod netns;

mod admin_http;
mod backend;
mod client;
mod config;
mod data;
mod dns;
mod env;
mod limits;
mod ports;
mod process;
mod proxy;
#[macro_use]
mod relay_mode;
mod stream;
mod tls;
mod udp;
mod xds_py;

// A test binary uses only part of the harness, so some of these go unused in each.
#[allow(unused_imports)]
pub use self::{
    admin_http::*, backend::*, client::*, config::*, data::*, dns::*, env::*, limits::*, ports::*,
    process::*, proxy::*, relay_mode::*, stream::*, tls::*, udp::*, xds_py::*,
};
