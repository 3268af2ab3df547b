//! switchyard-bench: an L4 load generator and fast test backends.
//!
//! Backends ([`spawn_echo`], [`spawn_sink`], [`spawn_source`], [`spawn_udp_echo`]) and five
//! client modes ([`run_throughput`], [`run_rr`], [`run_cps`], [`run_idle`], [`run_udp`]), on
//! plain std threads with
//! blocking sockets. Each mode returns a [`Report`] that prints as a table
//! ([`Report::table`]) and serializes to the JSON schema in `bench/README.md`.
//!
//! Guarantees:
//! * Every payload byte is verified: clients send a deterministic per-connection pattern
//!   ([`pattern`]) and check what comes back byte for byte; `down` checks the source's pattern.
//! * A run never stops at the first failure: failures are classified ([`ErrorClass`]) and
//!   counted in the report, with the first few messages kept.
//! * Every run is bounded by its duration (or hold time) and its socket timeouts, and connects
//!   only to the configured target.
//! * Open-loop `rr` measures latency from the intended send time (coordinated-omission
//!   correction, [`pacing`]).
//!
//! [`spawn_forward`] is the floor: the least work a user-space forwarder can do (a blocking
//! thread per direction), to tell a proxy's own cost from the kernel's.
//!
//! CPU pinning is not done here (it would need `unsafe` `sched_setaffinity`); pin the whole
//! process from outside with `taskset -c N`, which every thread inherits.

#![forbid(unsafe_code)]

pub mod cps;
pub mod error;
pub mod forward;
mod gate;
pub mod hist;
pub mod idle;
mod net;
pub mod pacing;
pub mod pattern;
pub mod report;
pub mod rr;
pub mod server;
pub mod throughput;
pub mod tls;
pub mod udp;

pub use cps::{run_cps, CpsConfig, CpsParams, CpsReport, CpsResults};
pub use error::{BenchError, ErrorClass, ErrorCounts};
pub use forward::{spawn_forward, Forwarder, FORWARD_BUFFER_BYTES};
pub use hist::{LatencyHistogram, LatencySummary};
pub use idle::{run_idle, IdleConfig, IdleParams, IdleReport, IdleResults};
pub use net::{CloseMode, ProxyHeader};
pub use report::{Envelope, Report, TableRows, SCHEMA};
pub use rr::{run_rr, RrConfig, RrParams, RrReport, RrResults};
pub use server::{spawn_echo, spawn_sink, spawn_source, Server, ServerKind, ServerStats};
pub use throughput::{
    run_throughput, Direction, ThroughputConfig, ThroughputParams, ThroughputReport,
    ThroughputResults,
};
pub use tls::{server_config, TlsOptions, TlsParams};
pub use udp::{run_udp, spawn_udp_echo, UdpConfig, UdpEcho, UdpParams, UdpReport, UdpResults};
