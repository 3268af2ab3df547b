//! TLS on the worker: Envoy's `envoy.transport_sockets.tls` with rustls on the `ring`
//! provider.
//!
//! - [`settings`]: the contexts as validated plain data (what the RIB holds).
//! - [`ServerContext`] / [`ClientContext`]: built once per config on the control thread,
//!   shared by every worker through the FIB (rustls configs, certificate choice, verifiers,
//!   session tickets shared by all workers without a lock).
//! - [`Session`]: one connection's TLS, driven by the worker over its provided buffers in
//!   place (no thread, no blocking, no I/O here): rustls' handshake, then
//!   [`record`]: the records opened and sealed where they lie, with the secrets rustls
//!   hands over (where kTLS would take them).
//! - [`client_hello`]: the tls_inspector's reading of a ClientHello (SNI, ALPN), without
//!   rustls and without allocating.
//! - [`verify`]: Envoy's `CertificateValidationContext` (chain, CRLs, SAN matchers).

mod client_cache;
pub mod client_hello;
mod context;
pub mod record;
pub mod session;
pub mod settings;
mod ticket;
pub mod verify;

pub use context::{ClientContext, ServerContext, TlsConfigError};
pub use session::{Decrypted, Negotiated, Session, TlsError, TLS_SLACK};
pub use ticket::TICKET_KEY_LEN;

#[cfg(test)]
mod tests;
