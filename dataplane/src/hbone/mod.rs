//! HBONE's HTTP/2 on a worker: the `h2` crate's connection state machine, driven without
//! a runtime over byte queues the worker fills and drains itself.
//!
//! `h2` is written against `AsyncRead`/`AsyncWrite` and a waker, not against a runtime: a
//! [`Wire`] is such an I/O whose reads take the bytes the worker received from the socket
//! (answering `Pending` when there are none yet) and whose writes append to the bytes the
//! worker will send. The worker polls the connection with a no-op waker after each receive
//! and each send completion; nothing is spawned, no thread or second runtime exists, and every
//! future is polled on the worker's own thread. The worker's side (carriers, streams,
//! pools) is `worker/hbone_io.rs`; this module's tests drive a client and a server
//! connection by hand (a CONNECT stream both ways, half-closes, resets, many streams on
//! one connection, flow control).
//!
//! Guarantees:
//! - **No runtime, no threads.** Polling happens only in [`poll_once`]; a `Pending` from the
//!   wire means "no bytes yet", and the next poll after the worker feeds bytes makes progress.
//! - **Byte-exact.** What a stream sends arrives in order and whole; END_STREAM arrives after
//!   the last byte.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(test)]
mod tests;

/// The bytes of one side of a connection: received from the socket and not yet read by the
/// HTTP/2 codec, and written by the codec and not yet sent.
#[derive(Debug, Default)]
pub struct Buffers {
    /// From the socket, for the codec.
    pub received: VecDeque<u8>,
    /// The socket's read side ended.
    pub received_eof: bool,
    /// From the codec, for the socket.
    pub to_send: VecDeque<u8>,
}

/// The I/O an `h2` connection reads and writes: the worker's [`Buffers`], shared with it.
#[derive(Debug, Clone, Default)]
pub struct Wire(pub Rc<RefCell<Buffers>>);

impl Wire {
    /// Bytes received from the socket, for the codec to read at its next poll.
    pub fn feed(&self, bytes: &[u8]) {
        self.0.borrow_mut().received.extend(bytes);
    }

    /// What the codec wrote since the last call, for the socket.
    pub fn take_output(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().to_send).into()
    }

    /// The codec's next output bytes, as many as fit `dst`: how many.
    pub fn take_output_into(&self, dst: &mut [u8]) -> usize {
        let mut b = self.0.borrow_mut();
        let n = dst.len().min(b.to_send.len());
        let (front, back) = b.to_send.as_slices();
        let from_front = n.min(front.len());
        dst[..from_front].copy_from_slice(&front[..from_front]);
        dst[from_front..n].copy_from_slice(&back[..n - from_front]);
        b.to_send.drain(..n);
        n
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut b = self.0.borrow_mut();
        if b.received.is_empty() {
            // Without bytes the read waits for the worker's next receive (EOF reads as 0).
            return if b.received_eof {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
        let n = buf.remaining().min(b.received.len());
        let (front, back) = b.received.as_slices();
        let from_front = n.min(front.len());
        buf.put_slice(&front[..from_front]);
        buf.put_slice(&back[..n - from_front]);
        b.received.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.borrow_mut().to_send.extend(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls `f` once with a no-op waker: the worker polls again after its next completion.
pub fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx)
}

/// Polls a poll-style method once with a no-op waker.
pub fn poll_fn_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    f(&mut cx)
}
