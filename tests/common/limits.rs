//! The bounds of the harness: every loop in it is bounded by one of these limits, and
//! [`wait_until`] is the bounded poll the tests use.

use std::thread;
use std::time::{Duration, Instant};

/// A backend stops accepting after this long, whatever happens.
pub const BACKEND_LIFETIME: Duration = Duration::from_secs(300);
/// A backend accepts at most this many connections.
pub const BACKEND_MAX_CONNS: usize = 4096;
/// Read/write timeout on every socket the harness owns.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a proxy's `/ready` to answer 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a 64-byte request/response round may take ([`super::echo_rounds`]): an echo over
/// loopback takes well under a millisecond; the bound only separates slow from stalled.
pub const ROUND_BOUND: Duration = Duration::from_secs(2);
/// Chunk size for streaming.
pub const CHUNK: usize = 64 * 1024;

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
