//! Switchyard's control plane: config sources, the RIB, FIB compilation and publication, and
//! the admin API. It depends on the data plane's FIB types; the data plane never depends on it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod compile;
pub mod config;
pub mod controller;
pub mod convert;
pub mod dns;
pub(crate) mod duration;
pub mod dynamic;
pub mod error;
pub mod ext;
pub mod health;
pub mod load;
pub(crate) mod path;
pub mod rib;
pub mod runtime;
pub mod secrets;
pub mod state_dir;
pub mod stats;
pub mod stats_config;
pub mod type_names;
pub mod xds;
