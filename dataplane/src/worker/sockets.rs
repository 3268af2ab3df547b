//! A worker's view of one list of a snapshot's listener sockets (the TCP listeners it
//! accepts on, the UDP listeners it receives on): slots that follow the snapshot by socket
//! identity, whose index is the `user_data` slot of the socket's multishot operation.
//!
//! Guarantees:
//! - A slot is reused only when it is closed and its operation has posted its last
//!   completion (`armed` false), and each reuse takes a new nonce, so a late completion of the
//!   slot's previous socket is never taken for the new one's.
//! - A slot holds its socket open: it keeps a reference to the snapshot's
//!   [`ListenerSockets`] from [`SocketSlots::place`] until [`SocketSlots::let_go`], which
//!   gives it up only once the slot is closed and its operation ended, and forgets the
//!   descriptor number. The plane closes a removed listener's sockets when the last holder
//!   lets go, however late a worker adopts the snapshot that removed it, so no slot ever
//!   operates on a descriptor number that was closed and reused.

use super::ud;
use crate::handoff::ListenerSockets;
use std::ops::{Deref, DerefMut};
use std::os::fd::RawFd;
use std::sync::Arc;

/// One listener socket as this worker sees it.
#[derive(Debug)]
pub(super) struct SocketSlot {
    pub fd: RawFd,
    /// The snapshot's socket identity (fd numbers may repeat, ids never do).
    pub socket_id: u64,
    /// Index of the listener in the current FIB's list.
    pub fib_index: usize,
    /// The multishot accept or receive is armed (TCP: some accept is in flight, or a shed).
    pub armed: bool,
    /// TCP: accepts in flight: a multishot counts one; with a per-event bound, the
    /// single-shot accepts.
    pub accepts_in_flight: u32,
    /// TCP: the listener's `max_connections_to_accept_per_socket_event`.
    pub accepts_per_event: Option<u32>,
    /// Open: in use; closed: removed, waiting for its operation's last completion.
    pub open: bool,
    pub nonce: u32,
    /// The operation ended with an error (EMFILE and similar): re-armed on the next tick.
    pub rearm_on_tick: bool,
    /// A receive ended for lack of provided buffers: re-armed when buffers come back (UDP).
    pub starved: bool,
    /// Closed by a drain of the whole plane while the FIB had this generation: connections
    /// it accepted after that are still served, because `fib_index` holds as long as the
    /// generation does (TCP).
    pub drained_in_generation: Option<u64>,
    /// Keeps `fd` open while the slot may use it.
    sockets: Option<Arc<ListenerSockets>>,
}

/// The slots of one list of listener sockets.
#[derive(Debug, Default)]
pub(super) struct SocketSlots(Vec<SocketSlot>);

impl Deref for SocketSlots {
    type Target = [SocketSlot];

    fn deref(&self) -> &[SocketSlot] {
        &self.0
    }
}

impl DerefMut for SocketSlots {
    fn deref_mut(&mut self) -> &mut [SocketSlot] {
        &mut self.0
    }
}

impl SocketSlots {
    /// Follows slot `i` into the snapshot's `sockets`: its socket's new index there; or, when
    /// its socket is gone and the slot was open, closes it and returns true (the caller
    /// cancels its operation and lets go of what used it).
    pub fn leave_if_removed(&mut self, i: usize, sockets: &[Arc<ListenerSockets>]) -> bool {
        let slot = &mut self.0[i];
        match sockets.iter().position(|s| s.id == slot.socket_id) {
            Some(fib_index) => {
                slot.fib_index = fib_index;
                false
            }
            None if slot.open => {
                slot.open = false;
                slot.starved = false;
                true
            }
            None => false,
        }
    }

    /// A slot for `sockets` (this worker's descriptor `fd` of them, at `fib_index`), with a
    /// new nonce, to arm its operation on; `None` when the socket has an open slot already.
    pub fn place(
        &mut self,
        fib_index: usize,
        sockets: &Arc<ListenerSockets>,
        fd: RawFd,
    ) -> Option<usize> {
        let socket_id = sockets.id;
        if self.0.iter().any(|s| s.open && s.socket_id == socket_id) {
            return None;
        }
        let i = match self.0.iter().position(|s| !s.open && !s.armed) {
            Some(i) => i,
            None => {
                self.0.push(SocketSlot {
                    fd,
                    socket_id,
                    fib_index,
                    armed: false,
                    accepts_in_flight: 0,
                    accepts_per_event: None,
                    open: false,
                    nonce: 0,
                    rearm_on_tick: false,
                    starved: false,
                    drained_in_generation: None,
                    sockets: None,
                });
                self.0.len() - 1
            }
        };
        let s = &mut self.0[i];
        s.fd = fd;
        s.socket_id = socket_id;
        s.fib_index = fib_index;
        s.accepts_in_flight = 0;
        s.accepts_per_event = sockets.accepts_per_event;
        s.open = true;
        s.nonce = ud::next_nonce(s.nonce);
        s.rearm_on_tick = false;
        s.starved = false;
        s.drained_in_generation = None;
        s.sockets = Some(sockets.clone());
        Some(i)
    }

    /// Closes every slot (the worker is exiting); each is let go of once its operation ended.
    pub fn close_all(&mut self) {
        for s in self.0.iter_mut() {
            s.open = false;
            s.starved = false;
        }
    }

    /// The sockets slot `i` holds, taken from it when it is closed and its operation has
    /// ended (the caller drops them after submitting what it queued on the descriptor); its
    /// descriptor number is forgotten.
    pub fn let_go(&mut self, i: usize) -> Option<Arc<ListenerSockets>> {
        let s = self.0.get_mut(i)?;
        if s.open || s.armed {
            return None;
        }
        let sockets = s.sockets.take()?;
        s.fd = -1;
        Some(sockets)
    }
}
