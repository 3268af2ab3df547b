//! The deterministic payload every mode sends and verifies.
//!
//! A stream is identified by a `seed`; its byte at offset `o` is `TABLE[(seed + o) % PERIOD]`,
//! where `TABLE` is a fixed pseudo-random sequence of [`PERIOD`] bytes (a prime, so no write
//! size lines up with it). The table is stored twice over, so any window of up to `PERIOD` bytes
//! is one contiguous slice: writing and verifying are `memcpy`/`memcmp` over the table, never a
//! per-byte computation.
//!
//! Different connections use different seeds, so bytes that a proxy delivers to the wrong
//! connection, duplicates, drops or reorders show up as a mismatch at a known offset.

use std::sync::OnceLock;

/// Length of the repeating pattern, in bytes (the largest prime below 64 KiB).
pub const PERIOD: usize = 65_521;

/// The seed of the stream that `serve --source` sends on every connection.
pub const SOURCE_SEED: u64 = 0;

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut t = Vec::with_capacity(2 * PERIOD);
        for _ in 0..PERIOD {
            // xorshift64*: cheap, deterministic, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            t.push((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8);
        }
        t.extend_from_within(..PERIOD);
        t
    })
}

/// The seed for connection number `index` of a run (distinct for the first `PERIOD` indices,
/// never [`SOURCE_SEED`]).
pub fn conn_seed(index: u64) -> u64 {
    // 7919 is coprime with PERIOD, so consecutive indices start far apart in the table.
    1 + (index.wrapping_mul(7919) % (PERIOD as u64 - 1))
}

fn start(seed: u64, offset: u64) -> usize {
    ((seed % PERIOD as u64 + offset % PERIOD as u64) % PERIOD as u64) as usize
}

/// Fills `buf` with the stream `seed` from `offset` on.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let t = table();
    let mut pos = start(seed, offset);
    for chunk in buf.chunks_mut(PERIOD) {
        chunk.copy_from_slice(&t[pos..pos + chunk.len()]);
        pos = (pos + chunk.len()) % PERIOD;
    }
}

/// Checks that `data` is the stream `seed` at `offset`. On a mismatch, returns the stream offset
/// of the first wrong byte.
pub fn check(seed: u64, offset: u64, data: &[u8]) -> Result<(), u64> {
    let t = table();
    let mut pos = start(seed, offset);
    let mut done = 0u64;
    for chunk in data.chunks(PERIOD) {
        let expected = &t[pos..pos + chunk.len()];
        if chunk != expected {
            let first = chunk
                .iter()
                .zip(expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(offset + done + first as u64);
        }
        pos = (pos + chunk.len()) % PERIOD;
        done += chunk.len() as u64;
    }
    Ok(())
}

/// A sender's view of one stream: a buffer from which every write of up to `write_size` bytes
/// at any offset is one contiguous slice, so the hot loop never copies.
#[derive(Debug)]
pub struct PatternSource {
    buf: Vec<u8>,
    write_size: usize,
    offset: u64,
}

impl PatternSource {
    /// A source for stream `seed` that hands out slices of `write_size` bytes.
    pub fn new(seed: u64, write_size: usize) -> PatternSource {
        let mut buf = vec![0u8; write_size + PERIOD];
        fill(seed, 0, &mut buf);
        PatternSource {
            buf,
            write_size,
            offset: 0,
        }
    }

    /// The next `write_size` bytes of the stream (not yet consumed).
    pub fn next_chunk(&self) -> &[u8] {
        let pos = (self.offset % PERIOD as u64) as usize;
        &self.buf[pos..pos + self.write_size]
    }

    /// Marks `n` bytes of the last chunk as sent.
    pub fn advance(&mut self, n: usize) {
        self.offset += n as u64;
    }

    /// Bytes sent so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A receiver's view of one stream: checks each received slice and remembers the offset.
#[derive(Debug, Clone)]
pub struct PatternVerifier {
    seed: u64,
    offset: u64,
}

impl PatternVerifier {
    /// A verifier for stream `seed`, at offset 0.
    pub fn new(seed: u64) -> PatternVerifier {
        PatternVerifier { seed, offset: 0 }
    }

    /// Checks the next received bytes; on a mismatch returns the offset of the first wrong byte.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), u64> {
        check(self.seed, self.offset, data)?;
        self.offset += data.len() as u64;
        Ok(())
    }

    /// Bytes verified so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_and_check_agree_across_period_boundaries() {
        for (seed, offset, len) in [(0, 0, 10), (3, PERIOD as u64 - 5, 20), (9, 7, 3 * PERIOD)] {
            let mut buf = vec![0u8; len];
            fill(seed, offset, &mut buf);
            assert_eq!(check(seed, offset, &buf), Ok(()));
        }
    }

    #[test]
    fn check_reports_first_wrong_offset() {
        let mut buf = vec![0u8; 1000];
        fill(5, 100, &mut buf);
        buf[321] ^= 0xff;
        assert_eq!(check(5, 100, &buf), Err(421));
    }

    #[test]
    fn different_seeds_differ() {
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        fill(conn_seed(0), 0, &mut a);
        fill(conn_seed(1), 0, &mut b);
        assert_ne!(a, b);
        assert!(check(conn_seed(1), 0, &a).is_err());
    }

    #[test]
    fn source_chunks_continue_the_stream() {
        let mut src = PatternSource::new(11, 1000);
        let mut ver = PatternVerifier::new(11);
        for partial in [1000, 7, 999, 1000, 13] {
            let chunk = src.next_chunk()[..partial].to_vec();
            src.advance(partial);
            assert_eq!(ver.feed(&chunk), Ok(()));
        }
        for _ in 0..200 {
            let chunk = src.next_chunk().to_vec();
            src.advance(chunk.len());
            assert_eq!(ver.feed(&chunk), Ok(()));
        }
        assert_eq!(src.offset(), ver.offset());
    }

    #[test]
    fn verifier_rejects_shifted_stream() {
        let mut buf = vec![0u8; 256];
        fill(2, 1, &mut buf);
        assert!(PatternVerifier::new(2).feed(&buf).is_err());
    }
}
