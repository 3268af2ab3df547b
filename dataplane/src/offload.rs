//! The kernel fast path (issue 22, in progress): an established plain-TCP flow spliced in
//! the kernel by a sockhash and an `SK_SKB` stream verdict (`bpf/sockmap.c`, compiled by
//! `build.rs` with clang, loaded here with aya), so its bytes never reach user space.
//!
//! What exists so far is the mechanism, not its use: [`Sockmap::load`] loads and attaches the
//! program; [`Sockmap::splice`] puts a pair of connected sockets into it, after which each
//! skb either socket receives is redirected to the other's egress and counted;
//! [`Sockmap::unsplice`] takes them out and returns the counts. The workers do not call it
//! yet (no `--offload` flag, no FIB policy).
//!
//! Guarantees and limits, as the test `tests/offload_sockmap.rs` shows them:
//! - bytes are moved in order and whole, both ways, and counted per socket;
//! - a FIN is not redirected: the socket's reader (user space) sees the end and must shut
//!   the peer's write side, as the relay does today, but only once [`Sockmap::caught_up`]
//!   (passed on at once, it overtakes redirected bytes still queued in the kernel);
//! - bytes already queued on a socket at [`Sockmap::splice`] belong to the kernel path (user
//!   space cannot read them any more), but move only when the socket is read (the read
//!   returns nothing) or more bytes arrive, and then go first: after a splice the caller
//!   reads each socket once, and must hold no bytes of its own (read, not yet sent) then,
//!   or they would arrive after the queued ones.
//!
//! Loading needs CAP_BPF and CAP_NET_ADMIN (or root); without them, or in a build without
//! clang, [`Sockmap::load`] says why.

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::SkSkb;
use aya::Ebpf;
use std::os::fd::{AsFd, AsRawFd};

/// The program, or nothing when clang was missing at build time.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sockmap.o"));

/// Why the fast path is not available.
#[derive(Debug)]
pub enum OffloadError {
    /// The build had no clang: the program is not in the binary.
    NotBuilt,
    /// The kernel refused the program or its maps (no CAP_BPF, an old kernel, ...).
    Load(String),
    /// A socket could not be inserted, or its cookie read.
    Socket(String),
}

impl std::fmt::Display for OffloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffloadError::NotBuilt => write!(
                f,
                "the kernel fast path was not built (no clang when this binary was compiled)"
            ),
            OffloadError::Load(why) => write!(f, "the kernel fast path cannot load: {why}"),
            OffloadError::Socket(why) => write!(f, "the kernel fast path: {why}"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// The loaded and attached program with its two maps.
pub struct Sockmap {
    /// Owns the program and its attachment (dropped: detached and unloaded).
    _bpf: Ebpf,
    /// Spliced sockets by cookie.
    socks: SockHash<MapData, u64>,
    /// By cookie: the peer's cookie and the bytes redirected to it.
    peers: BpfHashMap<MapData, u64, [u64; 2]>,
}

impl std::fmt::Debug for Sockmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sockmap").finish_non_exhaustive()
    }
}

/// A spliced pair's counts, from [`Sockmap::unsplice`]: bytes the kernel moved from `a` to
/// `b` and from `b` to `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplicedBytes {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

fn load_error(e: impl std::fmt::Display) -> OffloadError {
    OffloadError::Load(e.to_string())
}

fn socket_error(e: impl std::fmt::Display) -> OffloadError {
    OffloadError::Socket(e.to_string())
}

/// A socket's cookie: its key in both maps.
fn cookie(s: &impl AsFd) -> Result<u64, OffloadError> {
    socket2::SockRef::from(s).cookie().map_err(socket_error)
}

impl Sockmap {
    /// Loads the program and attaches its stream verdict to the sockhash.
    pub fn load() -> Result<Sockmap, OffloadError> {
        if OBJECT.is_empty() {
            return Err(OffloadError::NotBuilt);
        }
        let mut bpf = Ebpf::load(OBJECT).map_err(load_error)?;
        let socks: SockHash<MapData, u64> = SockHash::try_from(
            bpf.take_map("SOCKS")
                .ok_or_else(|| load_error("no SOCKS map"))?,
        )
        .map_err(load_error)?;
        let peers: BpfHashMap<MapData, u64, [u64; 2]> = BpfHashMap::try_from(
            bpf.take_map("PEERS")
                .ok_or_else(|| load_error("no PEERS map"))?,
        )
        .map_err(load_error)?;
        let program: &mut SkSkb = bpf
            .program_mut("stream_verdict")
            .ok_or_else(|| load_error("no stream_verdict program"))?
            .try_into()
            .map_err(load_error)?;
        program.load().map_err(load_error)?;
        program.attach(socks.fd()).map_err(load_error)?;
        Ok(Sockmap {
            _bpf: bpf,
            socks,
            peers,
        })
    }

    /// Splices connected sockets `a` and `b`: from now on what either receives goes out of
    /// the other. The peers are recorded before the sockets enter the sockhash, so the
    /// verdict never sees a socket without its peer. On failure nothing stays spliced.
    pub fn splice(
        &mut self,
        a: &(impl AsFd + AsRawFd),
        b: &(impl AsFd + AsRawFd),
    ) -> Result<(), OffloadError> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        self.peers.insert(ca, [cb, 0], 0).map_err(socket_error)?;
        self.peers.insert(cb, [ca, 0], 0).map_err(socket_error)?;
        let inserted = self
            .socks
            .insert(ca, a.as_raw_fd(), 0)
            .and_then(|()| self.socks.insert(cb, b.as_raw_fd(), 0));
        if let Err(e) = inserted {
            let _ = self.socks.remove(&ca);
            let _ = self.peers.remove(&ca);
            let _ = self.peers.remove(&cb);
            return Err(socket_error(e));
        }
        Ok(())
    }

    /// Every byte `from` has received is in `to`'s stream (acknowledged, or in its send
    /// queue): only then may `from`'s end (FIN) be passed on to `to`. Redirected bytes wait
    /// in the kernel's queue first, and a FIN sent before them would cut the stream short.
    pub fn caught_up(&self, from: &impl AsRawFd, to: &impl AsRawFd) -> Result<bool, OffloadError> {
        let received = crate::sys::net::tcp_stream_counts(from.as_raw_fd())
            .map_err(socket_error)?
            .received;
        let sent = crate::sys::net::tcp_stream_counts(to.as_raw_fd()).map_err(socket_error)?;
        Ok(sent.acked + sent.unacked >= received)
    }

    /// Takes `a` and `b` out of the kernel path (their receives reach user space again) and
    /// returns what the kernel moved between them.
    pub fn unsplice(&mut self, a: &impl AsFd, b: &impl AsFd) -> Result<SplicedBytes, OffloadError> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        let _ = self.socks.remove(&ca);
        let _ = self.socks.remove(&cb);
        let bytes = |peers: &BpfHashMap<MapData, u64, [u64; 2]>, c| {
            peers.get(&c, 0).map(|v| v[1]).map_err(socket_error)
        };
        let counts = SplicedBytes {
            a_to_b: bytes(&self.peers, ca)?,
            b_to_a: bytes(&self.peers, cb)?,
        };
        let _ = self.peers.remove(&ca);
        let _ = self.peers.remove(&cb);
        Ok(counts)
    }
}
