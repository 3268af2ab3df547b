//! Everything that talks to the kernel directly: the io_uring driver, provided buffers,
//! sockets, eventfds and CPU affinity. The only module of Switchyard with `unsafe` code; every
//! block states why it is sound.
//!
//! What the rest of the data plane gets is a safe API: it can only ask for operations whose
//! memory this module owns (buffers, socket addresses, timespecs) for as long as the kernel may
//! touch it.

pub(crate) mod net;
pub(crate) mod uring;

pub(crate) use uring::{
    BufClass, BufPoolSize, Completion, Ready, Ring, RingBuf, RingError, RingSetup, WaitSpec, Waited,
};
