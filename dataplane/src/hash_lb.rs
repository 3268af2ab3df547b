//! Envoy's consistent-hashing load balancers, bit for bit: `MAGLEV`, `RING_HASH`, and the
//! hash of tcp_proxy's `hash_policy: [{source_ip: {}}]`.
//!
//! # What this reproduces
//!
//! Envoy 1.40's thread-aware hashing balancers, for one priority with locality weighting off
//! and `hash_balance_factor` unset (the only configuration Switchyard accepts):
//!
//! - the key hash: [`source_ip_hash`] is `SourceIpHashMethod` from
//!   `source/common/network/hash_policy.cc`: `HashUtil::xxHash64` (XXH64, seed 0) of the
//!   downstream remote address's `addressAsString()` (glibc `inet_ntop` text);
//! - the weights: `normalizeHostWeights` from
//!   `source/extensions/load_balancing_policies/common/thread_aware_lb_impl.cc`, each host's
//!   `weight * 1.0 / sum` in `f64`, with the same min/max bookkeeping;
//! - the tables: [`MaglevTable`] is `MaglevTable::constructMaglevTableInternal` plus
//!   `OriginalMaglevTable`/`CompactMaglevTable::constructImplementationInternals` (the two
//!   fill the same table; they differ only in how it is stored), [`RingHash`] is
//!   `RingHashLoadBalancer::Ring::Ring`; the floating-point operations are done in Envoy's
//!   order, with C++'s `std::min`/`std::max` semantics;
//! - the picks: `chooseHost(hash, attempt)` of each, including Envoy's port of ketama's
//!   binary search for the ring and the retry-attempt perturbations. The hash reaches
//!   `chooseHost` unchanged: `ThreadAwareLoadBalancerBase::LoadBalancerImpl::chooseHost` only
//!   uses it to choose the priority (`choosePriority(hash % 100 + 1, ...)`), which is always
//!   priority 0 when there is one priority with all its load.
//!
//! The host key is the caller's: Envoy hashes `host->address()->asString()` (see
//! [`envoy_host_key`]) unless `use_hostname_for_hashing` or an `envoy.lb` `hash_key` metadata
//! value says otherwise; any of these strings can be passed as [`HashHost::key`].
//!
//! # Guarantees
//!
//! - **Identical picks.** For the same hosts in the same order, the same weights and the same
//!   keys, `pick(h)` returns the host Envoy's `chooseHost(h, 0)` returns, for every `h`. The
//!   module's tests port Envoy's own unit-test expectations (exact rings, exact tables, exact
//!   pick counts) to show it.
//! - **Built off the data path.** Tables are built by the control thread with the FIB; building
//!   allocates (a Maglev table is `table_size` × 4 bytes, a ring 12 bytes per entry). `pick`
//!   only reads: no allocation, no locking, O(1) for Maglev and O(log n) for the ring.
//! - **Deterministic.** Building twice from the same input gives equal tables.
//!
//! # Not reproduced
//!
//! - Priorities, panic mode and locality weights (the config layer keeps them out): the
//!   caller passes the one host list Envoy would normalise (priority 0's healthy hosts, in
//!   Envoy's host order).
//! - Bounded loads (`hash_balance_factor`).
//! - Fused multiply-add: an Envoy built for aarch64 may compute the ring's
//!   `target_hashes += scale * weight` with one rounding (clang contracts within a statement
//!   where the target has FMA); this module rounds twice, as x86-64 builds do.
//! - Envoy's tie-breaks between entries that compare equal: Maglev sorts hosts by key and then
//!   by `shared_ptr` address, the ring sorts with the unstable `std::sort` by hash alone. Both
//!   only matter when two hosts have the *same key*, i.e. the same address, so the picked
//!   address is the same either way; here ties keep input order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// ---------------------------------------------------------------------------------------------
// Hash functions
// ---------------------------------------------------------------------------------------------

const XXH_P1: u64 = 0x9E37_79B1_85EB_CA87;
const XXH_P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const XXH_P3: u64 = 0x1656_67B1_9E37_79F9;
const XXH_P4: u64 = 0x85EB_CA77_C2B2_AE63;
const XXH_P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline]
fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[inline]
fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

#[inline]
fn xxh64_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(XXH_P2))
        .rotate_left(31)
        .wrapping_mul(XXH_P1)
}

#[inline]
fn xxh64_merge(acc: u64, val: u64) -> u64 {
    (acc ^ xxh64_round(0, val))
        .wrapping_mul(XXH_P1)
        .wrapping_add(XXH_P4)
}

/// XXH64 of `data` with `seed`: the function behind Envoy's `HashUtil::xxHash64(input, seed)`
/// (`source/common/common/hash.h`, which calls the xxHash library's `XXH64`; Envoy's default
/// seed is 0). Little-endian reads, as the reference implementation's canonical form.
pub fn xxhash64(data: &[u8], seed: u64) -> u64 {
    let len = data.len();
    let mut rest = data;
    let mut h = if len >= 32 {
        let mut v1 = seed.wrapping_add(XXH_P1).wrapping_add(XXH_P2);
        let mut v2 = seed.wrapping_add(XXH_P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(XXH_P1);
        while rest.len() >= 32 {
            v1 = xxh64_round(v1, read_u64(&rest[0..]));
            v2 = xxh64_round(v2, read_u64(&rest[8..]));
            v3 = xxh64_round(v3, read_u64(&rest[16..]));
            v4 = xxh64_round(v4, read_u64(&rest[24..]));
            rest = &rest[32..];
        }
        let mut acc = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        acc = xxh64_merge(acc, v1);
        acc = xxh64_merge(acc, v2);
        acc = xxh64_merge(acc, v3);
        xxh64_merge(acc, v4)
    } else {
        seed.wrapping_add(XXH_P5)
    };
    h = h.wrapping_add(len as u64);
    while rest.len() >= 8 {
        h ^= xxh64_round(0, read_u64(rest));
        h = h.rotate_left(27).wrapping_mul(XXH_P1).wrapping_add(XXH_P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h ^= u64::from(read_u32(rest)).wrapping_mul(XXH_P1);
        h = h.rotate_left(23).wrapping_mul(XXH_P2).wrapping_add(XXH_P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(XXH_P5);
        h = h.rotate_left(11).wrapping_mul(XXH_P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(XXH_P2);
    h ^= h >> 29;
    h = h.wrapping_mul(XXH_P3);
    h ^ (h >> 32)
}

/// The seed Envoy passes to [`murmur2_64`] for the ring (`MurmurHash::STD_HASH_SEED`, the
/// seed libstdc++'s `std::hash<std::string>` uses).
pub const MURMUR_STD_HASH_SEED: u64 = 0xc70f_6907;

#[inline]
fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// Envoy's `MurmurHash::murmurHash2` (`source/common/common/hash.cc`): the 64-bit
/// MurmurHash2 variant of libstdc++'s `_Hash_bytes`, with native (little-endian) 8-byte reads
/// and the 1..7 trailing bytes assembled little-endian. `RING_HASH` with
/// `hash_function: MURMUR_HASH_2` hashes its ring keys with it, seeded with
/// [`MURMUR_STD_HASH_SEED`].
pub fn murmur2_64(data: &[u8], seed: u64) -> u64 {
    const MUL: u64 = 0xc6a4_a793_5bd1_e995;
    let len = data.len();
    let mut hash = seed ^ (len as u64).wrapping_mul(MUL);
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let d = shift_mix(read_u64(chunk).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let d = tail
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) + u64::from(b));
        hash ^= d;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

// ---------------------------------------------------------------------------------------------
// Envoy's address strings
// ---------------------------------------------------------------------------------------------

/// A fixed-size text buffer, so that hashing an address never allocates. 64 bytes hold the
/// longest IPv6 text (45) plus `%` and a 32-bit scope id (11), or an IPv4 `ip:port` (21).
struct TextBuf {
    buf: [u8; 64],
    len: usize,
}

impl TextBuf {
    fn new() -> TextBuf {
        TextBuf {
            buf: [0; 64],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn push_dec(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in digits[..n].iter().rev() {
            self.push(d);
        }
    }

    fn push_hex(&mut self, v: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12u32, 8, 4, 0] {
            let nibble = usize::from((v >> shift) & 0xf);
            if nibble != 0 || started || shift == 0 {
                self.push(HEX[nibble]);
                started = true;
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Dotted decimal, as Envoy's `Ipv4Instance::sockaddrToString`.
fn write_ipv4(out: &mut TextBuf, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i != 0 {
            out.push(b'.');
        }
        out.push_dec(u64::from(octet));
    }
}

/// glibc's `inet_ntop(AF_INET6, ...)` (`resolv/inet_ntop.c`, `inet_ntop6`), which Envoy's
/// `Ipv6Instance::Ipv6Helper::makeFriendlyAddress` calls: lowercase hex without leading
/// zeros; the first longest run of two or more zero groups becomes `::`; and the last 32 bits
/// are written as dotted IPv4 when the first 96 are zero (the run is the first six groups,
/// `::a.b.c.d`) or are `::ffff` (`::ffff:a.b.c.d`). Rust's `Ipv6Addr` `Display` differs on the
/// first form (it writes `::102:304` where glibc writes `::1.2.3.4`).
fn write_ipv6(out: &mut TextBuf, ip: Ipv6Addr) {
    let words = ip.segments();
    // (base, len) of the best run of zero words; len 0 = none.
    let (mut best_base, mut best_len) = (0usize, 0usize);
    let (mut cur_base, mut cur_len) = (0usize, 0usize);
    for (i, &w) in words.iter().enumerate() {
        if w == 0 {
            if cur_len == 0 {
                cur_base = i;
            }
            cur_len += 1;
        } else if cur_len != 0 {
            if best_len == 0 || cur_len > best_len {
                (best_base, best_len) = (cur_base, cur_len);
            }
            cur_len = 0;
        }
    }
    if cur_len != 0 && (best_len == 0 || cur_len > best_len) {
        (best_base, best_len) = (cur_base, cur_len);
    }
    if best_len < 2 {
        best_len = 0;
    }
    let mut i = 0;
    while i < 8 {
        if best_len != 0 && i >= best_base && i < best_base + best_len {
            if i == best_base {
                out.push(b':');
            }
            i += 1;
            continue;
        }
        if i != 0 {
            out.push(b':');
        }
        if i == 6
            && best_len != 0
            && best_base == 0
            && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))
        {
            let o = ip.octets();
            write_ipv4(out, Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            break;
        }
        out.push_hex(words[i]);
        i += 1;
    }
    if best_len != 0 && best_base + best_len == 8 {
        out.push(b':');
    }
}

/// Envoy's `addressAsString()` for an IP: IPv4 dotted decimal, IPv6 glibc `inet_ntop` text
/// with `%scope_id` appended when the scope id is not 0 (`makeFriendlyAddress`).
fn write_ip(out: &mut TextBuf, ip: IpAddr, scope_id: u32) {
    match ip {
        IpAddr::V4(v4) => write_ipv4(out, v4),
        IpAddr::V6(v6) => {
            write_ipv6(out, v6);
            if scope_id != 0 {
                out.push(b'%');
                out.push_dec(u64::from(scope_id));
            }
        }
    }
}

/// Envoy's `HashUtil::xxHash64(ip->addressAsString())` with the scope id of `addr` (IPv6
/// link-local peers carry one; Envoy appends it as `%id`). The port is not hashed.
fn address_hash(ip: IpAddr, scope_id: u32) -> u64 {
    let mut text = TextBuf::new();
    write_ip(&mut text, ip, scope_id);
    xxhash64(text.as_bytes(), 0)
}

/// The hash Envoy's tcp_proxy `hash_policy: [{source_ip: {}}]` gives a connection from `ip`:
/// `SourceIpHashMethod::evaluate` (`source/common/network/hash_policy.cc`), i.e. XXH64
/// (seed 0) of the downstream remote address's `addressAsString()`: `"10.0.0.1"`, or glibc's
/// `inet_ntop` text for IPv6 (`"2001:db8::1"`, `"::ffff:10.0.0.1"`). The port is not part of
/// it. Allocation-free.
///
/// An IPv4 client accepted on a dual-stack IPv6 socket shows up as `::ffff:a.b.c.d`; Envoy
/// turns such a peer into an IPv4 address when the listening socket is not `v6only`
/// (`addressFromSockAddr`), so pass `ip.to_canonical()` in that case. For an IPv6 peer with
/// a scope id use [`source_addr_hash`].
pub fn source_ip_hash(ip: IpAddr) -> u64 {
    address_hash(ip, 0)
}

/// [`source_ip_hash`] of `addr`'s IP, with Envoy's `%scope_id` suffix for an IPv6 address
/// whose scope id is not 0. The port is ignored, as in Envoy.
pub fn source_addr_hash(addr: SocketAddr) -> u64 {
    match addr {
        SocketAddr::V4(a) => address_hash(IpAddr::V4(*a.ip()), 0),
        SocketAddr::V6(a) => address_hash(IpAddr::V6(*a.ip()), a.scope_id()),
    }
}

/// The key Envoy hashes for an upstream host by default: `host->address()->asString()`,
/// `"ip:port"` for IPv4 and `"[ip]:port"` (`"[ip%scope]:port"` with a scope id) for IPv6,
/// where `ip` is glibc's `inet_ntop` text. Use this rather than `SocketAddr`'s `Display`,
/// which writes some IPv6 addresses differently (see [`source_ip_hash`]).
pub fn envoy_host_key(addr: SocketAddr) -> String {
    let mut text = TextBuf::new();
    match addr {
        SocketAddr::V4(a) => {
            write_ipv4(&mut text, *a.ip());
            text.push(b':');
            text.push_dec(u64::from(a.port()));
        }
        SocketAddr::V6(a) => {
            text.push(b'[');
            write_ip(&mut text, IpAddr::V6(*a.ip()), a.scope_id());
            text.push(b']');
            text.push(b':');
            text.push_dec(u64::from(a.port()));
        }
    }
    String::from_utf8_lossy(text.as_bytes()).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Hosts and weights
// ---------------------------------------------------------------------------------------------

/// One upstream host as the hashing balancers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashHost<'a> {
    /// The string Envoy hashes for the host: by default its address's `asString()`
    /// ([`envoy_host_key`]), else its hostname (`use_hostname_for_hashing`) or its
    /// `envoy.lb` `hash_key` metadata value.
    pub key: &'a str,
    /// `load_balancing_weight` (Envoy validates it to be at least 1; default 1).
    pub weight: u32,
}

/// C++ `std::min(a, b)`: `(b < a) ? b : a` (keeps `a` when either is NaN, unlike `f64::min`).
#[inline]
fn cxx_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// C++ `std::max(a, b)`: `(a < b) ? b : a`.
#[inline]
fn cxx_max(a: f64, b: f64) -> f64 {
    if a < b {
        b
    } else {
        a
    }
}

/// Normalised weights and their minimum and maximum, in host order.
struct Normalized {
    weights: Vec<f64>,
    min: f64,
    max: f64,
}

/// Envoy's `normalizeHostWeights(hosts, 1.0, ...)` as `ThreadAwareLoadBalancerBase::refresh`
/// calls it without locality weighting: each host's `weight * 1.0 / sum` (left to right, in
/// `f64`), `min` starting at 1.0 and `max` at 0.0. When the weights add up to more than
/// `u32::MAX` Envoy reports a bug and normalises nothing: no host can be picked (its config
/// validation rejects such a cluster).
fn normalize(hosts: &[HashHost]) -> Normalized {
    let mut out = Normalized {
        weights: Vec::new(),
        min: 1.0,
        max: 0.0,
    };
    let mut sum: u64 = 0;
    for h in hosts {
        sum += u64::from(h.weight);
        if sum > u64::from(u32::MAX) {
            return out;
        }
    }
    out.weights.reserve_exact(hosts.len());
    for h in hosts {
        let weight = f64::from(h.weight) * 1.0 / sum as f64;
        out.weights.push(weight);
        out.min = cxx_min(out.min, weight);
        out.max = cxx_max(out.max, weight);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Maglev
// ---------------------------------------------------------------------------------------------

/// Envoy's `Primes::isPrime` (`source/common/common/utility.cc`) as it matters for Maglev
/// table sizes, but mathematically exact: Envoy's version also answers `true` for 1, a size
/// whose skip computation (`% (table_size - 1)`) divides by zero, so 1 is reported as not
/// prime here and the config layer rejects it. Trial division; `n` up to
/// [`MaglevTable::MAX_TABLE_SIZE`] in practice.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut f: u64 = 3;
    while f <= n / f {
        if n.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// Marks a free slot while the table fills.
const EMPTY_SLOT: u32 = u32::MAX;

/// A Maglev lookup table: Envoy's `MaglevTable` (`OriginalMaglevTable` and
/// `CompactMaglevTable` fill identical tables), built from
/// `source/extensions/load_balancing_policies/maglev/maglev_lb.cc`.
///
/// Slot `s` holds the index (into the `hosts` given to [`MaglevTable::build`]) of the host
/// that owns it; a key hash `h` picks slot `h % table_size`.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    table_size: u64,
    host_count: usize,
    /// One entry per slot; empty with fewer than two hosts (no host: no pick; one host:
    /// every slot is that host's, so no table is stored).
    table: Vec<u32>,
}

impl std::fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaglevTable")
            .field("table_size", &self.table_size)
            .field("host_count", &self.host_count)
            .finish_non_exhaustive()
    }
}

/// One host while the table fills: Envoy's `MaglevTable::TableBuildEntry`.
struct BuildEntry {
    host: u32,
    offset: u64,
    skip: u64,
    weight: f64,
    target_weight: f64,
    next: u64,
}

impl MaglevTable {
    /// Envoy's `MaglevTable::DefaultTableSize` (the Maglev paper's recommendation).
    pub const DEFAULT_TABLE_SIZE: u64 = 65537;
    /// The largest `table_size` Envoy's config validation allows (`lte: 5000011`).
    pub const MAX_TABLE_SIZE: u64 = 5_000_011;

    /// Builds the table Envoy builds for `hosts` (in Envoy's host order; the order does not
    /// change a Maglev table, the keys do) and `table_size` slots.
    ///
    /// Mirrors `normalizeHostWeights` then `MaglevTable::constructMaglevTableInternal`:
    /// hosts sorted by key (byte-wise); per host `offset = xxHash64(key) % M` and
    /// `skip = xxHash64(key, seed 1) % (M - 1) + 1`; then rounds `iteration = 1, 2, ...`, in
    /// each of which every host, in key order and while slots are free, takes its next free
    /// slot of the permutation `(offset + skip * next) % M` if
    /// `iteration * weight >= target_weight`, and then raises `target_weight` by the largest
    /// normalised weight. Hosts with the largest weight take a slot every round, a host with
    /// a third of it every third round.
    ///
    /// # Panics
    ///
    /// If `table_size` is not prime or is above [`MaglevTable::MAX_TABLE_SIZE`] (Envoy
    /// refuses such a configuration; filling a non-prime table may never end), or with
    /// `u32::MAX` hosts or more.
    pub fn build(hosts: &[HashHost], table_size: u64) -> MaglevTable {
        assert!(
            is_prime(table_size) && table_size <= Self::MAX_TABLE_SIZE,
            "maglev table size {table_size} must be a prime no greater than {}",
            Self::MAX_TABLE_SIZE
        );
        assert!(
            hosts.len() < EMPTY_SLOT as usize,
            "too many hosts for a maglev table"
        );
        let normalized = normalize(hosts);
        let host_count = normalized.weights.len();
        let mut out = MaglevTable {
            table_size,
            host_count,
            table: Vec::new(),
        };
        if host_count <= 1 {
            return out;
        }

        // Stable sort by key: equal keys (the same address twice) keep input order.
        let mut order: Vec<usize> = (0..host_count).collect();
        order.sort_by(|&a, &b| hosts[a].key.as_bytes().cmp(hosts[b].key.as_bytes()));
        let mut entries: Vec<BuildEntry> = order
            .iter()
            .map(|&i| {
                let key = hosts[i].key.as_bytes();
                BuildEntry {
                    host: i as u32,
                    offset: xxhash64(key, 0) % table_size,
                    skip: xxhash64(key, 1) % (table_size - 1) + 1,
                    weight: normalized.weights[i],
                    target_weight: 0.0,
                    next: 0,
                }
            })
            .collect();

        let permutation = |e: &BuildEntry| -> usize {
            (e.offset.wrapping_add(e.skip.wrapping_mul(e.next)) % table_size) as usize
        };
        let mut table = vec![EMPTY_SLOT; table_size as usize];
        let mut filled: u64 = 0;
        let mut iteration: u32 = 1;
        while filled < table_size {
            for entry in entries.iter_mut() {
                if filled >= table_size {
                    break;
                }
                if f64::from(iteration) * entry.weight < entry.target_weight {
                    continue;
                }
                entry.target_weight += normalized.max;
                let mut c = permutation(entry);
                while table[c] != EMPTY_SLOT {
                    entry.next += 1;
                    c = permutation(entry);
                }
                table[c] = entry.host;
                entry.next += 1;
                filled += 1;
            }
            iteration = iteration.wrapping_add(1);
        }
        out.table = table;
        out
    }

    /// The host (an index into the `hosts` given to [`MaglevTable::build`]) for key hash
    /// `hash`: Envoy's `chooseHost(hash, 0)`, `table[hash % table_size]`. `None` without
    /// hosts. Allocation-free, O(1).
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        self.pick_attempt(hash, 0)
    }

    /// Envoy's `chooseHost(hash, attempt)`: for `attempt > 0` (a retry whose host predicate
    /// rejected the previous pick) the hash is first XORed with `!0 - attempt + 1`.
    #[inline]
    pub fn pick_attempt(&self, hash: u64, attempt: u32) -> Option<usize> {
        match self.host_count {
            0 => None,
            1 => Some(0),
            _ => {
                let mut h = hash;
                if attempt > 0 {
                    h ^= (!0u64).wrapping_sub(u64::from(attempt)).wrapping_add(1);
                }
                Some(self.table[(h % self.table_size) as usize] as usize)
            }
        }
    }

    /// Slots in the table: `table_size`, or 0 when there is no host to pick.
    pub fn len(&self) -> usize {
        if self.host_count == 0 {
            0
        } else {
            self.table_size as usize
        }
    }

    /// True when no host can be picked.
    pub fn is_empty(&self) -> bool {
        self.host_count == 0
    }

    /// The configured table size (prime).
    pub fn table_size(&self) -> u64 {
        self.table_size
    }

    /// Hosts the table was built over (0 when their weights add up past `u32::MAX`: Envoy
    /// then normalises nothing).
    pub fn host_count(&self) -> usize {
        self.host_count
    }
}

// ---------------------------------------------------------------------------------------------
// Ring hash
// ---------------------------------------------------------------------------------------------

/// `RING_HASH`'s `hash_function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingHashFunction {
    /// `XX_HASH` (the default): [`xxhash64`] with seed 0.
    XxHash,
    /// `MURMUR_HASH_2`: [`murmur2_64`] with [`MURMUR_STD_HASH_SEED`].
    MurmurHash2,
}

/// A consistent-hash ring: Envoy's `RingHashLoadBalancer::Ring`
/// (`source/extensions/load_balancing_policies/ring_hash/ring_hash_lb.cc`).
///
/// Entries are sorted by hash; a key hash goes to the first entry whose hash is not smaller,
/// wrapping to the first entry.
#[derive(Clone, PartialEq)]
pub struct RingHash {
    /// Entry hashes, ascending.
    hashes: Vec<u64>,
    /// The host of each entry (index into the `hosts` given to [`RingHash::build`]).
    hosts: Vec<u32>,
    /// Envoy's `ring_hash_lb.size` stat: `ceil(scale)`.
    size_stat: u64,
}

impl std::fmt::Debug for RingHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingHash")
            .field("entries", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

/// Appends the decimal digits of `v` (Envoy's `absl::StrCat("", i)`).
fn push_decimal(buf: &mut Vec<u8>, v: u64) {
    let mut text = TextBuf::new();
    text.push_dec(v);
    buf.extend_from_slice(text.as_bytes());
}

impl RingHash {
    /// Envoy's default `minimum_ring_size`.
    pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
    /// Envoy's default `maximum_ring_size`.
    pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
    /// The largest ring size Envoy's config validation allows for either bound.
    pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

    /// Builds the ring Envoy builds for `hosts`, **in Envoy's host order** (the order of the
    /// endpoints in the config: it decides how fractional hash counts are rounded).
    ///
    /// Mirrors `normalizeHostWeights` then `Ring::Ring`:
    /// `scale = std::min(ceil(min_weight * min_ring_size) / min_weight, max_ring_size)` in
    /// `f64`; then, walking the hosts with running sums `target += scale * weight` and
    /// `current` (both `f64`, starting at 0), each host gets entries `i = 0, 1, ...` while
    /// `current < target` (`current += 1` per entry), entry `i` hashing the bytes
    /// `key + "_" + decimal(i)` with `f`; finally the entries are sorted by hash.
    ///
    /// The caller keeps `min_ring_size <= max_ring_size <= MAX_RING_SIZE` (Envoy's config
    /// validation); the ring has about `max(min_ring_size, ...)` up to `max_ring_size`
    /// entries, 12 bytes each.
    pub fn build(
        hosts: &[HashHost],
        min_ring_size: u64,
        max_ring_size: u64,
        f: RingHashFunction,
    ) -> RingHash {
        assert!(hosts.len() < u32::MAX as usize, "too many hosts for a ring");
        let normalized = normalize(hosts);
        let mut out = RingHash {
            hashes: Vec::new(),
            hosts: Vec::new(),
            size_stat: 0,
        };
        if normalized.weights.is_empty() {
            return out;
        }
        let min_weight = normalized.min;
        let scale = cxx_min(
            (min_weight * min_ring_size as f64).ceil() / min_weight,
            max_ring_size as f64,
        );
        // C++ converts with a plain cast; Rust's saturates (NaN gives 0), which only matters
        // for the reservation below and the stat.
        out.size_stat = scale.ceil() as u64;
        let mut entries: Vec<(u64, u32)> =
            Vec::with_capacity(out.size_stat.min(Self::MAX_RING_SIZE) as usize);

        let mut key_buf: Vec<u8> = Vec::new();
        let mut current_hashes = 0.0f64;
        let mut target_hashes = 0.0f64;
        for (index, (host, &weight)) in hosts.iter().zip(&normalized.weights).enumerate() {
            key_buf.clear();
            key_buf.extend_from_slice(host.key.as_bytes());
            key_buf.push(b'_');
            let offset_start = key_buf.len();
            target_hashes += scale * weight;
            let mut i: u64 = 0;
            while current_hashes < target_hashes {
                key_buf.truncate(offset_start);
                push_decimal(&mut key_buf, i);
                let hash = match f {
                    RingHashFunction::MurmurHash2 => murmur2_64(&key_buf, MURMUR_STD_HASH_SEED),
                    RingHashFunction::XxHash => xxhash64(&key_buf, 0),
                };
                entries.push((hash, index as u32));
                i += 1;
                current_hashes += 1.0;
            }
        }
        // Envoy sorts by hash alone (unstable); equal hashes only come from equal keys.
        entries.sort_unstable();
        out.hashes = entries.iter().map(|&(h, _)| h).collect();
        out.hosts = entries.iter().map(|&(_, i)| i).collect();
        out
    }

    /// The host (an index into the `hosts` given to [`RingHash::build`]) for key hash
    /// `hash`: Envoy's `Ring::chooseHost(hash, 0)`. `None` when the ring is empty.
    /// Allocation-free, O(log n).
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<usize> {
        self.pick_attempt(hash, 0)
    }

    /// Envoy's `Ring::chooseHost(h, attempt)`, ported from ketama's `ketama_get_server` with
    /// Envoy's signed indices: a binary search for the first entry whose hash is `>= h`
    /// (entry 0 when there is none, or when `h` is 0); for `attempt > 0` the entry
    /// `attempt` places further along the ring.
    pub fn pick_attempt(&self, h: u64, attempt: u32) -> Option<usize> {
        let size = self.hashes.len();
        if size == 0 {
            return None;
        }
        let mut lowp: i64 = 0;
        let mut highp: i64 = size as i64;
        let mut midp: i64;
        loop {
            midp = (lowp + highp) / 2;
            if midp == size as i64 {
                midp = 0;
                break;
            }
            let midval = self.hashes[midp as usize];
            let midval1 = if midp == 0 {
                0
            } else {
                self.hashes[midp as usize - 1]
            };
            if h <= midval && h > midval1 {
                break;
            }
            if midval < h {
                lowp = midp + 1;
            } else {
                highp = midp - 1;
            }
            if lowp > highp {
                midp = 0;
                break;
            }
        }
        let mut index = midp as usize;
        if attempt > 0 {
            index = (index + attempt as usize) % size;
        }
        Some(self.hosts[index] as usize)
    }

    /// Entries on the ring.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when the ring has no entry (no host can be picked).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Envoy's `ring_hash_lb.size` gauge for this ring: `ceil(scale)`.
    pub fn size_stat(&self) -> u64 {
        self.size_stat
    }

    /// The ring's entries in order: `(hash, host index)`.
    pub fn entries(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        self.hashes
            .iter()
            .zip(&self.hosts)
            .map(|(&h, &i)| (h, i as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    /// A SplitMix64 step: a cheap, well-spread sequence of test hashes.
    fn splitmix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The test input pattern: byte `i` is `i * 31 + 7` (mod 256).
    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 + 7) as u8).collect()
    }

    // ---- XXH64 ------------------------------------------------------------------------------

    // Expected values computed with the reference xxHash library (libxxhash 0.8.1, `XXH64`)
    // over `pattern(len)` for len 0..=40, which covers every code path: < 4, 4..8, 8..32 with
    // and without 4-byte and single-byte tails, exactly 32, and 32-byte stripes plus tails.
    const XXH_SEED0: [u64; 41] = [
        0xEF46DB3751D8E999,
        0xA96C7F0CE858BBB7,
        0xAC378C5993CD5F9A,
        0x56E6957632A487F9,
        0xC60D15B1E3FF8F04,
        0x808815858624DD4E,
        0xCF22B4E87E9BBD00,
        0xAFBEFC3D6C6F9A8E,
        0x3DA5C7AA269683E0,
        0x4B17A9BA9E215C09,
        0x6B889090B8A922B8,
        0x1FC070E44716BD8E,
        0x8FE8AB1C1FD0666E,
        0x0382284CC19C4ABB,
        0x1523F762201BA56E,
        0xAE2A37EB9357CAA7,
        0xA19AD429B02BC413,
        0xFE9F0FEB7EEEDC09,
        0xA44DBC53C815D4FE,
        0x3693E04C0DFC7DD2,
        0x0BFBADB368E7F37C,
        0xFE78683697D5C575,
        0xB07142420C77FE7F,
        0xE77B1FCEA84118C3,
        0x929438E5C2159EF9,
        0x7E6C95919380459F,
        0xAF2EFE1AA0CF37DC,
        0x8EDAA24C28D12EC6,
        0xA36B5C4091187D2A,
        0xEB1FEE1BF0954759,
        0x6A54EBE6FE40B928,
        0x4A74F3A1A39AD4A1,
        0x8D57D6A4671CC43D,
        0x62C9FD21ED857664,
        0x42CCE8A8F5FC5F1F,
        0x85CBCF9E0D9CBECA,
        0xA4475C606B0ABC3C,
        0x5D71D9FC4B676D9F,
        0x88A74AB8EAEB0218,
        0x1789542489E59CC4,
        0x49B45332E280F187,
    ];
    const XXH_SEED1: [u64; 41] = [
        0xD5AFBA1336A3BE4B,
        0x0766883A0A47A96A,
        0x49CBD4FC6C254BD5,
        0x598AFE4FBB09D9F6,
        0x5E9F99AA13DE2D02,
        0xB15C817D13965ACF,
        0x793E5710B24B7773,
        0xBD99F1FA0DE7B9A4,
        0x1B4E043A4021AA18,
        0x2A77C6E783FB18B1,
        0x432E4E97D1BDB485,
        0x7436A247F2927A92,
        0xAAF19EC96E7722CD,
        0xD6039376C2D09106,
        0x0670B047CE3C85C4,
        0xC88BD84841AF8AC9,
        0x78B588AFC3E5E956,
        0x9C4D638A8D88A249,
        0x0CDE785347804224,
        0x4FCAB7490FB86D91,
        0x69492A69814B2F76,
        0xD7C58A45DF4C7A95,
        0x41BAB6DD4099D2C8,
        0xC29F92B27CC6E3CB,
        0xC0601F839D43277B,
        0x7AA326AF91D11800,
        0x06DB4D9023278214,
        0x593471EE76F983BB,
        0x36FFC980DAA80F0C,
        0x31667449387D7A1F,
        0xF27116D7B0AC9AF5,
        0xD7AC4F4BEA4E460A,
        0x8F666909CFD00CC8,
        0xB1575979B72C805A,
        0x404E2A303D716A77,
        0x3398991956C04C98,
        0xADBC85402AD70EEA,
        0xEE086A7ED5E10EB9,
        0x5BA467EB4BAA030F,
        0x7CE6E8E101E3642C,
        0x4EA2E43CF7F9BDA8,
    ];
    const XXH_SEED_P1: [u64; 41] = [
        0x6EC6D05F61C7E7A7,
        0x0C810166B30122A5,
        0x183524BBFE689560,
        0x45163CDC31E15BE1,
        0xB000BCF3F8BCAEFE,
        0xCA04F3B2B8C1646D,
        0x98D5605F06A751A2,
        0xE10F33AF8C4758A3,
        0xCB4A80ECC7A094C6,
        0xD98EEA92DAACE6DB,
        0xBC522607615DCF78,
        0x9D89B8A163E8F95E,
        0x04717862C4FBFCA8,
        0xDA778E7A8A1859E1,
        0x92F042015C6A59F1,
        0x3EB4D31A7B8359CA,
        0x0E3F56E88F759A50,
        0x5006E8F2EEC7EFEA,
        0x419D2128073D0F78,
        0xD28FD5527313F218,
        0x1B90A1E7EEDBCA86,
        0xF34AFB9627FC6499,
        0xD4A3CC8AC069A7CB,
        0x314F87F240FF6738,
        0x4CF2AEC6C836678E,
        0x4CB6F8F801B167B3,
        0xC8C6846230AD5CAD,
        0xA8EB8B3285734329,
        0xFF59551F47D98F97,
        0x196DDADDA279B6D7,
        0xC6D614B9459AF3E1,
        0x659EC2B1252D56F5,
        0xF113D2457128CF6D,
        0x84575B860242FE41,
        0x83697DB95DACD76D,
        0x504E8B9E5CB09E5A,
        0x9928C5D314F8E1AD,
        0x33DDB9A885FC58A4,
        0x4C2C1FDD782A8130,
        0xE9732EC1485FD04D,
        0xAFB4F23E8EB64418,
    ];

    #[test]
    fn xxhash64_matches_reference_for_every_length_class() {
        for (seed, expected) in [(0u64, &XXH_SEED0), (1, &XXH_SEED1), (XXH_P1, &XXH_SEED_P1)] {
            for (len, &want) in expected.iter().enumerate() {
                assert_eq!(
                    xxhash64(&pattern(len), seed),
                    want,
                    "len {len} seed {seed:#x}"
                );
            }
        }
        // Longer inputs: many stripes plus tails.
        assert_eq!(xxhash64(&pattern(100), 0), 0xefa0ad2d3e70c151);
        assert_eq!(xxhash64(&pattern(1000), 0), 0x99594f4828043d35);
        assert_eq!(xxhash64(&pattern(100), 1), 0xcd8103aecd2ed5cf);
        assert_eq!(xxhash64(&pattern(1000), 1), 0x31db8080bc8eb541);
        assert_eq!(xxhash64(&pattern(100), XXH_P1), 0xe10cfef3a9a0a5c5);
        assert_eq!(xxhash64(&pattern(1000), XXH_P1), 0xd79c60b94f81cbf0);
    }

    #[test]
    fn xxhash64_known_strings() {
        // The xxHash README's empty-input value and "abc", and strings this module hashes
        // (values from the reference library).
        assert_eq!(xxhash64(b"", 0), 0xEF46DB3751D8E999);
        assert_eq!(xxhash64(b"abc", 0), 0x44bc2cf5ad770999);
        assert_eq!(xxhash64(b"a", 0), 0xd24ec4f1a98c6e5b);
        assert_eq!(xxhash64(b"hello world", 0), 0x45ab6734b21e6968);
        assert_eq!(xxhash64(b"127.0.0.1", 0), 0xc08b1587df65b7a7);
        assert_eq!(xxhash64(b"127.0.0.1:90", 0), 0xb6e9805bf4890ed5);
        assert_eq!(xxhash64(b"127.0.0.1:90", 1), 0x151eaa9a12ebfff5);
    }

    // ---- MurmurHash2 (libstdc++ _Hash_bytes) ------------------------------------------------

    // Expected values computed with libstdc++'s own `std::_Hash_bytes(ptr, len, seed)` (GCC,
    // x86-64), the function Envoy's `MurmurHash::murmurHash2` copies, over `pattern(len)`.
    const MURMUR_STD_SEED: [u64; 41] = [
        0x553E93901E462A6E,
        0xE2E622597C18899D,
        0x8AF55D0FE294960A,
        0x506B8A04520907CA,
        0x7D31AEA54D363E33,
        0x6970E71D38FF3C45,
        0x4A6FDB5BC5F8B9AC,
        0xC903E734C708C0CB,
        0x730030265EF36B74,
        0x0DE850D2872D4C37,
        0x7BD8563B5557CE3B,
        0xCE205E37E68FDD2F,
        0xC2DF64C6C665E416,
        0x0D1208904063BAEC,
        0x3298CFC534CA3A09,
        0xAF496D4F92584FF0,
        0xD0071C68E3ADC1FD,
        0x7EBFF244694D98C9,
        0x8BAB4A8B2362E4A7,
        0xA1CD0A0245E1E5DF,
        0x921A39FFCBD913BE,
        0x5828E3BA1DEE67F3,
        0x8BC3B3E1937A8D55,
        0x6102843BC5CBAE8F,
        0xC329D2B6F5A4D522,
        0x82C370C850377324,
        0x3E38A9BA1DDC9A33,
        0xC65D723828FED5D6,
        0x904FD348B4DA46E1,
        0xA228DAD9023B70E3,
        0xFD92AD25411F932C,
        0x0A5DD5BB9E31E342,
        0xDD240EFC28855CBC,
        0xF81AC3CB3325EC3F,
        0x9C9122BB64FE6251,
        0x9F7C8DFC19E30E33,
        0xC9FB879C606CE629,
        0xED642B9234435329,
        0x73D7E1E63D3229C6,
        0x234B64D890AC696A,
        0xEA569FF184823ED0,
    ];
    const MURMUR_SEED0: [u64; 41] = [
        0x0000000000000000,
        0x876D6099E0CEF9CB,
        0xA0F5C00640E840AF,
        0xDF8BB8D63B58BCF6,
        0xE5D983EAD620EE8B,
        0x294BADC9375527B7,
        0xDF3EC9A11C8D5D3F,
        0xF6AF1A3275C7D4D9,
        0xA1F1C2CC5A84FB8D,
        0x7E88F3B044023788,
        0x6C3A851FD8D52B49,
        0x343142EE0A282B6A,
        0x99F9B5C44291E8AD,
        0x5959BB2A9D657371,
        0xC7A7F5E5502EFEAE,
        0xBF5D9D9CD46759B7,
        0xC988097B426D7B2A,
        0xD85BD8EB4F1515B5,
        0x29F1CEEE3DDBD8D7,
        0xB4CC6924E93A3863,
        0x9475D8B6E382ACDA,
        0x0C5EC8CEC944FD2E,
        0x83A0AD825EEE8AAC,
        0xE072E8B5C2CBBA25,
        0x0B1D093C6E82B2A7,
        0x3880CB53E69AEC3A,
        0xDB887DB6A55C8A90,
        0x5720C7B180357261,
        0xDDFC92992A8CC48A,
        0x6924BE00E07A25F1,
        0xD0B80B27431581F4,
        0x54C1D307E932C904,
        0x0B4B382A626F30F1,
        0x41A84C76389CA5E2,
        0xF58685F8C86D7EF5,
        0x70523A780E2D05CF,
        0x474BF5FC466BA06D,
        0xA61B0CACF1049737,
        0xBF446E195586AFD7,
        0x28EBD41D6F8C2516,
        0x0009618738FA8402,
    ];

    #[test]
    fn murmur2_matches_libstdcxx_hash_bytes() {
        for (seed, expected) in [(MURMUR_STD_HASH_SEED, &MURMUR_STD_SEED), (0, &MURMUR_SEED0)] {
            for (len, &want) in expected.iter().enumerate() {
                assert_eq!(
                    murmur2_64(&pattern(len), seed),
                    want,
                    "len {len} seed {seed:#x}"
                );
            }
        }
        // A 64-bit seed (Envoy's seed is 32-bit, the function takes 64).
        assert_eq!(murmur2_64(&pattern(0), XXH_P1), 0x98D7089933B5F733);
        assert_eq!(murmur2_64(&pattern(13), XXH_P1), 0x023F42CDF68253FB);
        assert_eq!(murmur2_64(&pattern(40), XXH_P1), 0x378FE2EA0C45EB8A);
        // std::hash<std::string> (same function and seed).
        assert_eq!(murmur2_64(b"", MURMUR_STD_HASH_SEED), 6142509188972423790);
        assert_eq!(
            murmur2_64(b"abc", MURMUR_STD_HASH_SEED),
            3663726644998027833
        );
        assert_eq!(
            murmur2_64(b"hello world", MURMUR_STD_HASH_SEED),
            5577293430985752569
        );
    }

    // ---- Address strings ----------------------------------------------------------------------

    fn ipv6_text(words: [u16; 8]) -> String {
        let mut t = TextBuf::new();
        write_ipv6(&mut t, Ipv6Addr::from(words));
        String::from_utf8(t.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn ipv6_text_matches_glibc_inet_ntop() {
        // Each expected string is what glibc's inet_ntop(AF_INET6) returned for the address.
        let cases: &[([u16; 8], &str)] = &[
            ([0, 0, 0, 0, 0, 0, 0, 0], "::"),
            ([0, 0, 0, 0, 0, 0, 0, 1], "::1"),
            ([0, 0, 0, 0, 0, 0, 0, 2], "::2"),
            ([0, 0, 0, 0, 0, 0, 0x102, 0x304], "::1.2.3.4"),
            ([0, 0, 0, 0, 0, 0xffff, 0x102, 0x304], "::ffff:1.2.3.4"),
            ([0, 0, 0, 0, 0, 0xffff, 0, 0], "::ffff:0.0.0.0"),
            ([0, 0, 0, 0, 0xffff, 0, 0x102, 0x304], "::ffff:0:102:304"),
            ([1, 0, 0, 0, 0, 0, 0, 0], "1::"),
            ([1, 0, 0, 1, 0, 0, 0, 1], "1:0:0:1::1"),
            ([1, 0, 0, 0, 0, 0, 0, 1], "1::1"),
            ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], "2001:db8::1"),
            ([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1], "2001:db8::1:0:0:1"),
            ([0x2001, 0, 0, 1, 0, 0, 0, 1], "2001:0:0:1::1"),
            ([0xfe80, 0, 0, 0, 0, 0, 0, 1], "fe80::1"),
            ([0, 0, 1, 0, 0, 0, 0, 0], "0:0:1::"),
            ([1, 0, 1, 0, 1, 0, 1, 0], "1:0:1:0:1:0:1:0"),
            ([0, 0, 0, 0, 0, 0xfffe, 0x102, 0x304], "::fffe:102:304"),
            ([0, 0, 0, 0, 1, 0, 0, 0], "::1:0:0:0"),
            ([0, 0, 0, 0, 0, 1, 0, 0], "::1:0:0"),
            ([0x64, 0xff9b, 0, 0, 0, 0, 0x102, 0x304], "64:ff9b::102:304"),
            ([0xffff; 8], "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            (
                [0, 0, 0, 0, 0, 0xffff, 0xffff, 0xffff],
                "::ffff:255.255.255.255",
            ),
            ([0, 0, 0, 0, 0, 0, 0, 0x100], "::100"),
            ([0, 0, 0, 0, 0, 0, 1, 0], "::0.1.0.0"),
            ([0, 0, 0, 0, 0, 0, 0, 0xffff], "::ffff"),
            (
                [0xa5cd, 2, 0xb, 0, 0x2c01, 0, 1, 0xffff],
                "a5cd:2:b:0:2c01:0:1:ffff",
            ),
            ([0, 1, 0x442f, 3, 0, 0, 1, 0xffff], "0:1:442f:3::1:ffff"),
            ([0xdaed, 0, 0xffff, 2, 0, 9, 3, 0], "daed:0:ffff:2:0:9:3:0"),
            ([0, 0, 0, 0, 0x7ec7, 0, 0xc, 0x8e40], "::7ec7:0:c:8e40"),
            ([0, 0, 0, 0, 0, 0, 0xb, 0xffff], "::0.11.255.255"),
            (
                [0xffff, 0xc8e5, 0xc9ca, 0, 0x227b, 0, 0, 0],
                "ffff:c8e5:c9ca:0:227b::",
            ),
            (
                [0, 0xffff, 0xb, 0, 0x3b0f, 0, 0, 0xaf6d],
                "0:ffff:b:0:3b0f::af6d",
            ),
            ([0xffff, 0, 0, 0xffff, 0, 0, 0, 0xf], "ffff:0:0:ffff::f"),
            (
                [0xffff, 0xffff, 0xffff, 0, 0, 0xcaab, 0, 0],
                "ffff:ffff:ffff::caab:0:0",
            ),
            ([4, 0, 0, 0x349e, 0, 0, 0, 0], "4:0:0:349e::"),
        ];
        for &(words, want) in cases {
            assert_eq!(ipv6_text(words), want, "{words:x?}");
        }
    }

    #[test]
    fn envoy_host_keys() {
        assert_eq!(
            envoy_host_key("127.0.0.1:90".parse().unwrap()),
            "127.0.0.1:90"
        );
        assert_eq!(
            envoy_host_key("10.255.0.7:65535".parse().unwrap()),
            "10.255.0.7:65535"
        );
        assert_eq!(
            envoy_host_key("[2001:db8::1]:443".parse().unwrap()),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            envoy_host_key("[::1.2.3.4]:80".parse().unwrap()),
            "[::1.2.3.4]:80"
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 8080, 0, 3));
        assert_eq!(envoy_host_key(scoped), "[fe80::1%3]:8080");
    }

    #[test]
    fn source_ip_hash_is_xxhash_of_envoy_address_string() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(source_ip_hash(v4), 0xc08b1587df65b7a7);
        assert_eq!(
            source_ip_hash("10.0.0.1".parse().unwrap()),
            0xed16cb68c786e3d7
        );
        assert_eq!(source_ip_hash("::1".parse().unwrap()), 0x59661e2585f0146f);
        for text in [
            "192.168.1.254",
            "0.0.0.0",
            "2001:db8::ff00:42:8329",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(source_ip_hash(ip), xxhash64(text.as_bytes(), 0), "{text}");
        }
        // The port does not matter; a scope id does, as "%id".
        assert_eq!(
            source_addr_hash("127.0.0.1:5555".parse().unwrap()),
            source_ip_hash(v4)
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0, 7));
        assert_eq!(source_addr_hash(scoped), xxhash64(b"fe80::1%7", 0));
        let unscoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0, 0));
        assert_eq!(source_addr_hash(unscoped), xxhash64(b"fe80::1", 0));
    }

    // ---- Helpers for the balancer tests -----------------------------------------------------

    fn keys(ports: impl IntoIterator<Item = u32>) -> Vec<String> {
        ports
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    fn hosts<'a>(keys: &'a [String], weights: &[u32]) -> Vec<HashHost<'a>> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| HashHost {
                key,
                weight: weights.get(i).copied().unwrap_or(1),
            })
            .collect()
    }

    fn maglev_counts(t: &MaglevTable, n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for slot in 0..t.table_size() {
            counts[t.pick(slot).unwrap()] += 1;
        }
        counts
    }

    fn ring_counts(r: &RingHash, n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for (_, i) in r.entries() {
            counts[i] += 1;
        }
        counts
    }

    // ---- Maglev: Envoy's own expectations ---------------------------------------------------

    /// test/extensions/load_balancing_policies/maglev/maglev_lb_test.cc, `Basic`,
    /// `BasicStability` and `BasicWithRetryHostPredicate`: six hosts 127.0.0.1:90..95, table
    /// size 7.
    #[test]
    fn maglev_envoy_basic() {
        let k = keys(90..96);
        let h = hosts(&k, &[]);
        let t = MaglevTable::build(&h, 7);
        let expected = [2, 4, 0, 1, 5, 0, 3];
        for i in 0..21u64 {
            assert_eq!(t.pick(i), Some(expected[(i % 7) as usize]), "hash {i}");
        }
        let counts = maglev_counts(&t, 6);
        assert_eq!(counts.iter().min(), Some(&1)); // min_entries_per_host
        assert_eq!(counts.iter().max(), Some(&2)); // max_entries_per_host

        // BasicWithRetryHostPredicate: hash 10, attempts 0, 1, 2.
        assert_eq!(t.pick_attempt(10, 0), Some(1));
        assert_eq!(t.pick_attempt(10, 1), Some(0));
        assert_eq!(t.pick_attempt(10, 2), Some(5));

        // BasicStability: the host order does not change the table, only the keys do.
        let order = [3usize, 0, 5, 1, 4, 2];
        let shuffled_keys: Vec<String> = order.iter().map(|&i| k[i].clone()).collect();
        let shuffled = MaglevTable::build(&hosts(&shuffled_keys, &[]), 7);
        for i in 0..7u64 {
            assert_eq!(order[shuffled.pick(i).unwrap()], t.pick(i).unwrap());
        }
    }

    /// `BasicWithHostName` (and `BasicWithMetadataHashKey`): the keys are "90".."95".
    #[test]
    fn maglev_envoy_hostname_keys() {
        let k: Vec<String> = (90..96).map(|p| p.to_string()).collect();
        let t = MaglevTable::build(&hosts(&k, &[]), 7);
        let expected = [2, 5, 0, 3, 4, 1, 0];
        for i in 0..21u64 {
            assert_eq!(t.pick(i), Some(expected[(i % 7) as usize]), "hash {i}");
        }
    }

    /// `Weighted`: 127.0.0.1:90 weight 1, :91 weight 2, table size 17.
    #[test]
    fn maglev_envoy_weighted() {
        let k = keys(90..92);
        let t = MaglevTable::build(&hosts(&k, &[1, 2]), 17);
        let expected = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1];
        for i in 0..51u64 {
            assert_eq!(t.pick(i), Some(expected[(i % 17) as usize]), "hash {i}");
        }
        assert_eq!(maglev_counts(&t, 2), vec![6, 11]);
    }

    /// `LocalityWeightedSameLocalityWeights` normalises both hosts to 0.5, as equal host
    /// weights do; `LocalityWeightedDifferentLocalityWeights` normalises them to exactly
    /// 0.8 and 0.2 (`8/10 * 1/1` and `2/10 * 2/2`), as host weights 4 and 1 do (`4/5`, `1/5`:
    /// the same doubles).
    #[test]
    fn maglev_envoy_locality_weighted_equivalents() {
        let k = keys(90..92);
        let same = MaglevTable::build(&hosts(&k, &[1, 1]), 17);
        let expected = [1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1];
        for i in 0..17u64 {
            assert_eq!(same.pick(i), Some(expected[i as usize]), "hash {i}");
        }
        assert_eq!(maglev_counts(&same, 2), vec![9, 8]);

        let different = MaglevTable::build(&hosts(&k, &[4, 1]), 17);
        let expected = [1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0];
        for i in 0..17u64 {
            assert_eq!(different.pick(i), Some(expected[i as usize]), "hash {i}");
        }
        assert_eq!(maglev_counts(&different, 2), vec![13, 4]);
    }

    /// `LocalityWeightedLopsided`: host :0 alone in a locality of weight 127, hosts :1..:1023
    /// in one of weight 1, default table size. Envoy's normalised weights are `127/128` and
    /// `(1/128)/1023`; host weights 127 * 1023 and 1 give the same doubles. Every light host
    /// gets exactly one slot, the heavy one the rest.
    #[test]
    fn maglev_envoy_lopsided() {
        let k = keys(0..1024);
        let mut w = vec![1u32; 1024];
        w[0] = 127 * 1023;
        let t = MaglevTable::build(&hosts(&k, &w), MaglevTable::DEFAULT_TABLE_SIZE);
        let counts = maglev_counts(&t, 1024);
        assert_eq!(counts[0], MaglevTable::DEFAULT_TABLE_SIZE - 1023);
        assert!(counts[1..].iter().all(|&c| c == 1));
    }

    /// `SingleHost` and `WeightedSingleHost`: one host gets every hash.
    #[test]
    fn maglev_single_host() {
        let k = keys([90]);
        for weight in [1, 7] {
            let t = MaglevTable::build(&hosts(&k, &[weight]), 17);
            for i in 0..40u64 {
                assert_eq!(t.pick(i), Some(0));
                assert_eq!(t.pick_attempt(i, 3), Some(0));
            }
            assert_eq!(t.len(), 17);
            assert!(!t.is_empty());
        }
    }

    // ---- Maglev: structural properties --------------------------------------------------------

    /// With two or more hosts every slot of the stored table is owned by a real host.
    #[test]
    fn maglev_every_slot_filled() {
        for n in [2usize, 3, 10, 100, 1000] {
            let k = keys(0..n as u32);
            let t = MaglevTable::build(&hosts(&k, &[]), MaglevTable::DEFAULT_TABLE_SIZE);
            assert_eq!(t.table.len() as u64, MaglevTable::DEFAULT_TABLE_SIZE);
            assert!(t.table.iter().all(|&s| (s as usize) < n), "{n} hosts");
        }
    }

    #[test]
    fn maglev_shares_follow_weights() {
        // Envoy fills so that each host's share tracks its normalised weight: a host takes a
        // slot in round r when r * weight has reached its running target, so after the last
        // round its count is within a slot or two of M * w / sum.
        let k = keys(0..8);
        let w = [1u32, 2, 3, 4, 5, 6, 7, 8];
        let sum: u32 = w.iter().sum();
        let m = MaglevTable::DEFAULT_TABLE_SIZE;
        let t = MaglevTable::build(&hosts(&k, &w), m);
        let counts = maglev_counts(&t, 8);
        assert_eq!(counts.iter().sum::<u64>(), m);
        for (i, &c) in counts.iter().enumerate() {
            let ideal = m as f64 * f64::from(w[i]) / f64::from(sum);
            assert!((c as f64 - ideal).abs() <= 2.0, "host {i}: {c} vs {ideal}");
        }

        // Equal weights: counts differ by at most one.
        let k = keys(0..10);
        let t = MaglevTable::build(&hosts(&k, &[]), m);
        let counts = maglev_counts(&t, 10);
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "{counts:?}");
    }

    #[test]
    fn maglev_removal_moves_about_one_nth() {
        let n = 10usize;
        let k = keys(0..n as u32);
        let m = MaglevTable::DEFAULT_TABLE_SIZE;
        let before = MaglevTable::build(&hosts(&k, &[]), m);
        let removed = 4usize;
        let rest: Vec<String> = k
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, s)| s.clone())
            .collect();
        let after = MaglevTable::build(&hosts(&rest, &[]), m);
        let mut moved = 0u64;
        for slot in 0..m {
            let old = &k[before.pick(slot).unwrap()];
            let new = &rest[after.pick(slot).unwrap()];
            if old != new {
                moved += 1;
            } else {
                assert_ne!(old, &k[removed]);
            }
        }
        let fraction = moved as f64 / m as f64;
        assert!(fraction >= 1.0 / n as f64 * 0.9, "moved {fraction}");
        assert!(fraction < 2.0 / n as f64, "moved {fraction}");
    }

    #[test]
    fn maglev_deterministic_and_empty() {
        let k = keys(0..50);
        let h = hosts(&k, &[3, 1, 4, 1, 5, 9, 2, 6]);
        assert_eq!(MaglevTable::build(&h, 65537), MaglevTable::build(&h, 65537));

        let empty = MaglevTable::build(&[], 65537);
        assert_eq!(empty.pick(0), None);
        assert_eq!(empty.pick(u64::MAX), None);
        assert_eq!(empty.len(), 0);
        assert!(empty.is_empty());

        // Weights adding up past u32::MAX: Envoy normalises nothing.
        let k2 = keys(0..2);
        let over = MaglevTable::build(&hosts(&k2, &[u32::MAX, 1]), 7);
        assert_eq!(over.pick(1), None);
    }

    #[test]
    #[should_panic(expected = "must be a prime")]
    fn maglev_rejects_non_prime_size() {
        let k = keys(0..2);
        let _ = MaglevTable::build(&hosts(&k, &[]), 65536);
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
        );
        assert!(is_prime(65537));
        assert!(is_prime(5_000_011));
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
        assert!(!is_prime(5_000_011 * 3));
        assert!(!is_prime(65537 * 65537));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
        assert!(!is_prime(25)); // a square of a prime
        assert!(!is_prime(49));
    }

    // ---- Ring hash: Envoy's own expectations ------------------------------------------------

    /// Asserts that the ring's entries, in order, are `expected`: (port or hostname, hash), as
    /// Envoy's tests list them.
    fn assert_ring(r: &RingHash, k: &[String], expected: &[(u32, u64)]) {
        let got: Vec<(u64, String)> = r.entries().map(|(h, i)| (h, k[i].clone())).collect();
        let want: Vec<(u64, String)> = expected
            .iter()
            .map(|&(port, h)| {
                (
                    h,
                    k.iter()
                        .find(|s| s.ends_with(&format!(":{port}")) || **s == port.to_string())
                        .unwrap()
                        .clone(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    /// test/extensions/load_balancing_policies/ring_hash/ring_hash_lb_test.cc, `Basic` and
    /// `BasicWithRetryHostPredicate`: hosts 127.0.0.1:90..95, minimum_ring_size 12, XX_HASH.
    #[test]
    fn ring_envoy_basic() {
        let k = keys(90..96);
        let r = RingHash::build(
            &hosts(&k, &[]),
            12,
            RingHash::DEFAULT_MAX_RING_SIZE,
            RingHashFunction::XxHash,
        );
        assert_eq!(r.size_stat(), 12);
        assert_eq!(ring_counts(&r, 6), vec![2; 6]);
        assert_ring(
            &r,
            &k,
            &[
                (94, 833437586790550860),
                (92, 928266305478181108),
                (90, 1033482794131418490),
                (95, 3551244743356806947),
                (93, 3851675632748031481),
                (91, 5583722120771150861),
                (91, 6311230543546372928),
                (93, 7700377290971790572),
                (95, 13144177310400110813),
                (92, 13444792449719432967),
                (94, 15516499411664133160),
                (90, 16117243373044804889),
            ],
        );
        assert_eq!(r.pick(0), Some(4));
        assert_eq!(r.pick(u64::MAX), Some(4));
        assert_eq!(r.pick(3551244743356806947), Some(5));
        assert_eq!(r.pick(3551244743356806948), Some(3));
        assert_eq!(r.pick(16117243373044804880), Some(0));

        // BasicWithRetryHostPredicate.
        assert_eq!(r.pick_attempt(0, 1), Some(2));
        assert_eq!(r.pick_attempt(0, 2), Some(0));
        assert_eq!(r.pick_attempt(0, 13), Some(2));
    }

    /// `BasicWithMurmur2`: hosts 127.0.0.1:80..85, minimum_ring_size 12, MURMUR_HASH_2.
    #[test]
    fn ring_envoy_murmur2() {
        let k = keys(80..86);
        let r = RingHash::build(
            &hosts(&k, &[]),
            12,
            RingHash::DEFAULT_MAX_RING_SIZE,
            RingHashFunction::MurmurHash2,
        );
        assert_eq!(r.size_stat(), 12);
        assert_ring(
            &r,
            &k,
            &[
                (85, 1358027074129602068),
                (83, 4361834613929391114),
                (84, 7224494972555149682),
                (81, 7701421856454313576),
                (82, 8649315368077433379),
                (84, 8739448859063030639),
                (81, 9887544217113020895),
                (82, 10150910876324007731),
                (83, 15168472011420622455),
                (80, 15427156902705414897),
                (85, 16375050414328759093),
                (80, 17613279263364193813),
            ],
        );
        assert_eq!(r.pick(0), Some(5));
        assert_eq!(r.pick(u64::MAX), Some(5));
        assert_eq!(r.pick(1358027074129602068), Some(5));
        assert_eq!(r.pick(1358027074129602069), Some(3));
        assert_eq!(r.pick(10150910876324007730), Some(2));
    }

    /// `BasicWithHostname` (and `BasicWithMetadataHashKey`): keys "90".."95".
    #[test]
    fn ring_envoy_hostname_keys() {
        let k: Vec<String> = (90..96).map(|p| p.to_string()).collect();
        let r = RingHash::build(
            &hosts(&k, &[]),
            12,
            RingHash::DEFAULT_MAX_RING_SIZE,
            RingHashFunction::XxHash,
        );
        assert_ring(
            &r,
            &k,
            &[
                (95, 1975508444536362413),
                (95, 2376063919839173711),
                (93, 2386806903309390596),
                (94, 6749904478991551885),
                (93, 6803900775736438537),
                (92, 7225015537174310577),
                (90, 8787465352164086522),
                (92, 11282020843382717940),
                (91, 13723418369486627818),
                (90, 13776502110861797421),
                (91, 14338313586354474791),
                (94, 15364271037087512980),
            ],
        );
        assert_eq!(r.pick(0), Some(5));
        assert_eq!(r.pick(u64::MAX), Some(5));
        assert_eq!(r.pick(7225015537174310577), Some(2));
        assert_eq!(r.pick(6803900775736438537), Some(3));
    }

    /// `UnevenHosts`: two hosts, minimum_ring_size 3: two hashes each, ring size 4.
    #[test]
    fn ring_envoy_uneven_hosts() {
        let k = keys(80..82);
        let r = RingHash::build(
            &hosts(&k, &[]),
            3,
            RingHash::DEFAULT_MAX_RING_SIZE,
            RingHashFunction::XxHash,
        );
        assert_eq!(r.size_stat(), 4);
        assert_ring(
            &r,
            &k,
            &[
                (80, 5454692015285649509),
                (81, 7859399908942313493),
                (80, 13838424394637650569),
                (81, 16064866803292627174),
            ],
        );
        assert_eq!(r.pick(0), Some(0));

        let k = keys(81..83);
        let r = RingHash::build(
            &hosts(&k, &[]),
            3,
            RingHash::DEFAULT_MAX_RING_SIZE,
            RingHashFunction::XxHash,
        );
        assert_ring(
            &r,
            &k,
            &[
                (81, 7859399908942313493),
                (82, 8241336090459785962),
                (82, 12882406409176325258),
                (81, 16064866803292627174),
            ],
        );
        assert_eq!(r.pick(0), Some(0));
    }

    /// `HostWeightedTinyRing`: weights 1, 2, 3 and a ring of exactly six entries.
    #[test]
    fn ring_envoy_host_weighted_tiny() {
        let k = keys(90..93);
        let r = RingHash::build(&hosts(&k, &[1, 2, 3]), 6, 6, RingHashFunction::XxHash);
        assert_eq!(r.size_stat(), 6);
        assert_eq!(ring_counts(&r, 3), vec![1, 2, 3]);
        for (hash, host) in [
            (928266305478181108u64, 2usize),
            (4443673547860492590, 2),
            (5583722120771150861, 1),
            (6311230543546372928, 1),
            (13444792449719432967, 2),
            (16117243373044804889, 0),
        ] {
            assert_eq!(r.pick(hash), Some(host), "hash {hash}");
        }
    }

    /// `HostWeightedLargeRing`: weights 1, 2, 3, minimum_ring_size 6144; Envoy's exact pick
    /// counts over 6000 evenly spaced hashes.
    #[test]
    fn ring_envoy_host_weighted_large() {
        let k = keys(90..93);
        let r = RingHash::build(
            &hosts(&k, &[1, 2, 3]),
            6144,
            RingHash::DEFAULT_MAX_RING_SIZE,
            RingHashFunction::XxHash,
        );
        assert_eq!(r.size_stat(), 6144);
        assert_eq!(ring_counts(&r, 3), vec![1024, 2048, 3072]);
        let mut counts = [0u32; 3];
        for i in 0..6000u64 {
            counts[r.pick(i * (u64::MAX / 6000)).unwrap()] += 1;
        }
        assert_eq!(counts, [987, 1932, 3081]);
    }

    /// `SmallFractionalScale`: four hosts on a ring of exactly two entries: two hosts absent.
    #[test]
    fn ring_envoy_small_fractional_scale() {
        let k = keys(90..94);
        let r = RingHash::build(&hosts(&k, &[]), 2, 2, RingHashFunction::XxHash);
        assert_eq!(r.size_stat(), 2);
        let per_host = ring_counts(&r, 4);
        assert_eq!(per_host.iter().min(), Some(&0));
        assert_eq!(per_host.iter().max(), Some(&1));
        let mut counts = [0u32; 4];
        for i in 0..1024u64 {
            counts[r.pick(i * (u64::MAX / 1024)).unwrap()] += 1;
        }
        assert_eq!(counts.iter().filter(|&&c| c == 0).count(), 2);
        assert_eq!(counts.iter().sum::<u32>(), 1024);
    }

    /// `LargeFractionalScale`: two hosts, a ring of exactly 1023 entries.
    #[test]
    fn ring_envoy_large_fractional_scale() {
        let k = keys(90..92);
        let r = RingHash::build(&hosts(&k, &[]), 1023, 1023, RingHashFunction::XxHash);
        assert_eq!(r.size_stat(), 1023);
        let per_host = ring_counts(&r, 2);
        assert_eq!(per_host.iter().min(), Some(&511));
        assert_eq!(per_host.iter().max(), Some(&512));
        let mut counts = [0u32; 2];
        for i in 0..1023u64 {
            counts[r.pick(i * (u64::MAX / 1023)).unwrap()] += 1;
        }
        assert_eq!(counts, [526, 497]);
    }

    /// `LopsidedWeightSmallScale`: host :0 alone in a locality of weight 127, :1..:1023 in one
    /// of weight 1, ring of exactly 1024 entries. Host weights 127 * 1023 and 1 give Envoy's
    /// normalised weights bit for bit (`127/128` and `(1/128)/1023`), in the same order.
    #[test]
    fn ring_envoy_lopsided_small_scale() {
        let k = keys(0..1024);
        let mut w = vec![1u32; 1024];
        w[0] = 127 * 1023;
        let r = RingHash::build(&hosts(&k, &w), 1024, 1024, RingHashFunction::XxHash);
        assert_eq!(r.size_stat(), 1024);
        let per_host = ring_counts(&r, 1024);
        assert_eq!(per_host.iter().min(), Some(&0));
        assert_eq!(per_host.iter().max(), Some(&1016));
        assert_eq!(per_host[0], 1016);
        for (hash, host) in [
            (11664790346325243808u64, 1usize),
            (15894554872961148518, 128),
            (13958138884277627155, 256),
            (15803774069438192949, 384),
            (3829253010855396576, 512),
            (17918147347826565154, 640),
            (6442769608292299103, 768),
            (5881074926069334434, 896),
        ] {
            assert_eq!(r.pick(hash), Some(host), "hash {hash}");
        }
    }

    // ---- Ring hash: structural properties -----------------------------------------------------

    /// Per-host entry counts straight from Envoy's formula: with `scale` as in `Ring::Ring`,
    /// host `k` gets `ceil(T_k) - ceil(T_{k-1})` entries where `T_k` is the running sum of
    /// `scale * weight` (its `current_hashes` loop stops at the first integer `>= T_k`).
    fn formula_counts(weights: &[u32], min: u64, max: u64) -> (u64, Vec<u64>) {
        let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let normalized: Vec<f64> = weights.iter().map(|&w| f64::from(w) / sum as f64).collect();
        let min_w = normalized
            .iter()
            .copied()
            .fold(1.0f64, |a, b| if b < a { b } else { a });
        let scale = ((min_w * min as f64).ceil() / min_w).min(max as f64);
        let mut target = 0.0f64;
        let mut prev_ceil = 0.0f64;
        let mut counts = Vec::new();
        for w in normalized {
            target += scale * w;
            let c = target.ceil().max(prev_ceil);
            counts.push((c - prev_ceil) as u64);
            prev_ceil = c;
        }
        (scale.ceil() as u64, counts)
    }

    #[test]
    fn ring_sizes_follow_envoy_formula() {
        for (weights, min, max) in [
            (vec![1u32; 6], 1024u64, 8 * 1024 * 1024u64),
            (vec![1, 2, 3], 1024, 8 * 1024 * 1024),
            (vec![5, 1, 1, 1], 100, 1000),
            (vec![100, 1], 1024, 4096), // capped by max_ring_size
            (vec![7, 3, 11, 2, 2], 1000, 8 * 1024 * 1024),
            (vec![1; 7], 1024, 1024),
        ] {
            let k = keys(0..weights.len() as u32);
            let r = RingHash::build(&hosts(&k, &weights), min, max, RingHashFunction::XxHash);
            let (size, counts) = formula_counts(&weights, min, max);
            assert_eq!(r.size_stat(), size, "{weights:?}");
            assert_eq!(ring_counts(&r, weights.len()), counts, "{weights:?}");
            assert_eq!(r.len() as u64, counts.iter().sum::<u64>());
        }
    }

    #[test]
    fn ring_is_sorted_and_picks_the_next_entry() {
        let k = keys(0..20);
        let r = RingHash::build(
            &hosts(&k, &[1, 2, 3, 4]),
            1024,
            1 << 23,
            RingHashFunction::MurmurHash2,
        );
        let entries: Vec<(u64, usize)> = r.entries().collect();
        assert!(entries.windows(2).all(|w| w[0].0 <= w[1].0));
        // Envoy's ketama search is a lower bound with wrap-around.
        let mut probes: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1];
        for &(h, _) in &entries {
            probes.extend([h.wrapping_sub(1), h, h.wrapping_add(1)]);
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            x = splitmix(x);
            probes.push(x);
        }
        for h in probes {
            let i = entries.partition_point(|&(e, _)| e < h);
            let want = entries[if i == entries.len() { 0 } else { i }].1;
            assert_eq!(r.pick(h), Some(want), "hash {h}");
        }
    }

    #[test]
    fn ring_removal_moves_a_bounded_share() {
        // Envoy's ring keeps its total size, so when a host leaves, the others get more
        // entries: keys move off the removed host (about 1/N) and onto the survivors' new
        // entries (about another 1/N * (N-2)/(N-1)); nothing else moves.
        let n = 10usize;
        let k = keys(0..n as u32);
        let before = RingHash::build(&hosts(&k, &[]), 1024, 1 << 23, RingHashFunction::XxHash);
        let removed = 6usize;
        let rest: Vec<String> = k
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, s)| s.clone())
            .collect();
        let after = RingHash::build(&hosts(&rest, &[]), 1024, 1 << 23, RingHashFunction::XxHash);
        let samples = 50_000u64;
        let (mut moved, mut on_removed) = (0u64, 0u64);
        let mut x = 42u64;
        for _ in 0..samples {
            x = splitmix(x);
            let old = &k[before.pick(x).unwrap()];
            let new = &rest[after.pick(x).unwrap()];
            if old == &k[removed] {
                on_removed += 1;
            }
            if old != new {
                moved += 1;
            }
        }
        let removed_share = on_removed as f64 / samples as f64;
        let moved_share = moved as f64 / samples as f64;
        assert!(
            (0.5 / n as f64..1.5 / n as f64).contains(&removed_share),
            "{removed_share}"
        );
        assert!(moved_share < 2.5 / n as f64, "{moved_share}");
        // A survivor never gives keys to another survivor except through the new entries,
        // so every key of a survivor stays unless a new entry took it: the survivors' own
        // points are all still on the ring.
        let old_points: std::collections::HashSet<(u64, &str)> = before
            .entries()
            .filter(|&(_, i)| i != removed)
            .map(|(h, i)| (h, k[i].as_str()))
            .collect();
        let new_points: std::collections::HashSet<(u64, &str)> = after
            .entries()
            .map(|(h, i)| (h, rest[i].as_str()))
            .collect();
        assert!(old_points.is_subset(&new_points));
    }

    #[test]
    fn ring_deterministic_empty_and_single() {
        let k = keys(0..30);
        let h = hosts(&k, &[2, 1, 3]);
        assert_eq!(
            RingHash::build(&h, 1024, 1 << 23, RingHashFunction::XxHash),
            RingHash::build(&h, 1024, 1 << 23, RingHashFunction::XxHash)
        );

        let empty = RingHash::build(&[], 1024, 1 << 23, RingHashFunction::XxHash);
        assert_eq!(empty.pick(0), None);
        assert_eq!(empty.pick_attempt(5, 2), None);
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);

        let one = keys([80]);
        let r = RingHash::build(&hosts(&one, &[1]), 12, 1 << 23, RingHashFunction::XxHash);
        assert_eq!(r.len(), 12); // `BasicFailover`: a lone host gets min_ring_size entries
        for x in [0u64, 1, 1 << 40, u64::MAX] {
            assert_eq!(r.pick(x), Some(0));
        }

        let k2 = keys(0..2);
        let over = RingHash::build(
            &hosts(&k2, &[u32::MAX, 1]),
            1024,
            1 << 23,
            RingHashFunction::XxHash,
        );
        assert_eq!(over.pick(1), None);
    }
}
