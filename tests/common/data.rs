//! Deterministic data: the splitmix64 byte stream both ends of a test generate ([`Prng`]) and
//! SHA-256 helpers to compare what went through.

use super::CHUNK;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Deterministic byte stream (splitmix64). The same seed gives the same bytes on both sides.
#[derive(Debug, Clone)]
pub struct Prng {
    state: u64,
    buf: [u8; 8],
    pos: usize,
}

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng {
            state: seed ^ 0x5eed_5eed_5eed_5eed,
            buf: [0; 8],
            pos: 8,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            if self.pos == 8 {
                self.buf = self.next_u64().to_le_bytes();
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }

    pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        Prng::new(seed).fill(&mut v);
        v
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of the first `n` bytes of `Prng::new(seed)`, computed in chunks.
pub fn prng_sha256(seed: u64, n: u64) -> String {
    let mut p = Prng::new(seed);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..k]);
        h.update(&buf[..k]);
        left -= k as u64;
    }
    hex(&h.finalize())
}
