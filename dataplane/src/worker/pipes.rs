//! The pipes of the splice relay ([`super::RelayMode::Splice`]).
//!
//! Each direction of a connection owns one pipe while the connection lives: a receive is
//! `splice(source socket -> pipe)`, a send is `splice(pipe -> sink socket)`. The relay names a
//! pipe with `relay::BufId::Pipe` and its index here. Pipes are created lazily (only when the free list is empty, so in
//! steady state the worker makes no system call for them) and reused: a pipe that is empty
//! when its connection closes goes back to the free list; one that may still hold bytes (a
//! reset stopped a send half-way) is closed, so no stale byte ever reaches another connection.

/// A pipe's index in the worker's pool (the relay carries it as `BufId::Pipe`).
pub(crate) type BufId = u16;
use crate::sys::net::Pipe;
use std::io;
use std::os::fd::RawFd;

/// No pipe.
pub(crate) const NO_PIPE: BufId = BufId::MAX;

struct Slot {
    pipe: Option<Pipe>,
    /// Bytes spliced in and not yet spliced out. Exact once no splice on the pipe is in
    /// flight (every completion reports how many bytes it moved).
    held: u64,
}

/// One worker's pipes, by id.
pub(crate) struct Pipes {
    slots: Vec<Slot>,
    free: Vec<BufId>,
    size: u32,
}

impl std::fmt::Debug for Pipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipes")
            .field("created", &self.slots.len())
            .field("free", &self.free.len())
            .finish()
    }
}

impl Pipes {
    /// An empty pool for at most `max` pipes of `size` bytes each (the bookkeeping is
    /// allocated here, the pipes themselves when first needed).
    pub(crate) fn new(max: usize, size: u32) -> Pipes {
        let max = max.min(usize::from(NO_PIPE));
        Pipes {
            slots: Vec::with_capacity(max),
            free: Vec::with_capacity(max),
            size,
        }
    }

    /// An empty pipe: a free one, or a new one.
    pub(crate) fn acquire(&mut self) -> io::Result<BufId> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        // Reuse the id of a pipe closed after a reset before growing.
        let reuse = self.slots.iter().position(|s| s.pipe.is_none());
        if reuse.is_none() && self.slots.len() >= self.slots.capacity() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "pipe limit of this worker reached",
            ));
        }
        let pipe = Pipe::new(self.size)?;
        let slot = Slot {
            pipe: Some(pipe),
            held: 0,
        };
        Ok(match reuse {
            Some(i) => {
                self.slots[i] = slot;
                i as BufId
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as BufId
            }
        })
    }

    /// Gives a pipe back when its connection is done with it (no splice in flight).
    pub(crate) fn release(&mut self, id: BufId) {
        let Some(slot) = self.slots.get_mut(usize::from(id)) else {
            return;
        };
        if slot.pipe.is_none() {
            return;
        }
        if slot.held == 0 {
            self.free.push(id);
        } else {
            // May still hold bytes of the connection that used it: close it (rare: only after
            // a reset interrupted a send).
            slot.pipe = None;
            slot.held = 0;
        }
    }

    /// `n` bytes were spliced into pipe `id`.
    pub(crate) fn filled(&mut self, id: BufId, n: u32) {
        if let Some(s) = self.slots.get_mut(usize::from(id)) {
            s.held += u64::from(n);
        }
    }

    /// `n` bytes were spliced out of pipe `id`.
    pub(crate) fn drained(&mut self, id: BufId, n: u32) {
        if let Some(s) = self.slots.get_mut(usize::from(id)) {
            s.held = s.held.saturating_sub(u64::from(n));
        }
    }

    /// Bytes spliced into pipe `id` and not yet out (counted from the completions).
    pub(crate) fn held(&self, id: BufId) -> u64 {
        self.slots.get(usize::from(id)).map_or(0, |s| s.held)
    }

    /// The write end of pipe `id` and how many bytes a splice into it may move.
    pub(crate) fn write_end(&self, id: BufId) -> Option<(RawFd, u32)> {
        let p = self.slots.get(usize::from(id))?.pipe.as_ref()?;
        Some((p.write_fd(), p.capacity()))
    }

    /// The read end of pipe `id`.
    pub(crate) fn read_end(&self, id: BufId) -> Option<RawFd> {
        Some(self.slots.get(usize::from(id))?.pipe.as_ref()?.read_fd())
    }
}
