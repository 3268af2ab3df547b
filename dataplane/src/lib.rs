//! Switchyard's data plane: the forwarding table types, the io_uring workers and everything
//! they run per connection.
//!
//! This crate never depends on the control plane. The control plane builds [`fib::Fib`]
//! snapshots and hands them over through [`plane::DataPlane`]; workers report back only
//! through per-worker counters ([`stats`]) and bounded queues ([`accesslog`]).
//!
//! `unsafe` code lives only in the private `sys` module: the workspace denies `unsafe_code`
//! and `sys` is the one module allowed it.

pub mod accesslog;
pub mod action_list;
pub mod conn;
pub mod fib;
pub mod global_limit;
pub mod handoff;
pub mod hash_lb;
pub mod hbone;
pub mod health;
pub mod host;
pub mod lb;
pub mod offload;
pub mod plane;
pub mod proxy_protocol;
pub mod rate_limit;
pub mod rbac;
pub mod relay;
pub mod source_limit;
pub mod stats;
#[allow(unsafe_code)]
mod sys;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod worker;

pub use sys::net::{allowed_cpus, pin_current_thread, poll, raise_fd_limit, EventFd, PollFd};
