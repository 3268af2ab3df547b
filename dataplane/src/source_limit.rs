//! Per-source connection limits ("beyond Envoy"): for each client address or prefix (an
//! IPv4 address masked to `ipv4_prefix_len`, e.g. /32 or /24; an IPv6 one to
//! `ipv6_prefix_len`, e.g. /64), a token bucket of new connections and a cap on the ones it
//! holds open, kept in one fixed-size table that every worker shares (`Arc`) without a lock.
//!
//! Guarantees:
//! - **Fixed memory, allocated once.** [`SourceTable::new`] allocates the whole table:
//!   `table_entries` rounded up to a power of two (at least [`WAYS`], at most
//!   [`MAX_TABLE_ENTRIES`]), [`ENTRY_BYTES`] = 64 bytes (one cache line: seven 8-byte words
//!   and padding) each. The default 65,536 entries take 4 MiB (4,194,304 bytes), plus the
//!   table's own ~200 bytes ([`SourceTable::memory_bytes`]). Admitting and releasing never
//!   allocate, lock or make a system call; only [`SourceTable::busiest`] (the admin's)
//!   allocates.
//! - **The bucket of `rate_limit.rs`, per source.** A source's bucket starts full
//!   (`max_tokens`); every whole `fill_interval_ms` since the table was made adds
//!   `tokens_per_fill`, up to `max_tokens`; each admitted connection takes one token, and a
//!   connection that finds none is refused ([`Refusal::Rate`]). The fills are computed when a
//!   connection asks, from the whole intervals since the table was made (shared by every
//!   source), so no timer runs. A worker whose clock reading is older than the bucket's last
//!   count adds nothing and never moves the count back.
//! - **The concurrency cap.** With `max_connections_per_source`, an admitted connection holds
//!   a seat ([`SourceSeat`]) until [`SourceTable::release`]; a source at its cap is refused
//!   ([`Refusal::Concurrency`]) without spending a token.
//! - **Correct across workers.** A bucket's tokens and the interval they were counted at
//!   share one atomic word, and an entry's owner, generation and open count share another;
//!   both change only by compare-and-swap, so two workers can never both take the last token
//!   or the last seat. A source has at most one entry: two workers that meet the same new
//!   source at once agree on one entry (see "Claiming" below), so its limits are never split.
//! - **Stale seats are harmless.** A seat carries its entry's generation; [`release`] gives a
//!   seat back only to the same generation of the same entry, so releasing a seat whose
//!   entry now belongs to another source (or a seat of another table) touches nothing (it is
//!   counted in [`SourceTableCounters::stale_releases`]). An entry cannot be reused while a
//!   seat in it is held, so only a seat released twice can be stale; one released twice
//!   before its entry changes hands cannot be told from another seat of the same source and
//!   gives one back (the count never goes below zero).
//! - **Eviction forgets nothing.** A new source takes an empty entry of its bucket, or else
//!   evicts an *idle* one: no open connections and a bucket refilled to `max_tokens`. A fresh
//!   entry for the evicted source would start in exactly that state, so evicting it loses no
//!   limit (only its admin counters). When no way of the bucket is empty or idle the new
//!   source is refused ([`Refusal::TableFull`]): the table fails closed for new sources, and
//!   counts it ([`SourceTableCounters::refused_table_full`]).
//! - **Spray-resistant.** A source spraying many addresses can neither reset its own limits
//!   nor anyone else's: a source that is limited (has spent tokens not yet refilled, or holds
//!   connections) is never evicted, however many other addresses arrive. A sprayed address
//!   keeps its entry only while it is itself limited, i.e. while the sprayer holds a
//!   connection from it or spent a token from it within the last
//!   `max_tokens / tokens_per_fill` intervals; so the table size bounds what a sprayer can
//!   hold, and idle sprayed entries are taken back on demand. The bucket is chosen by a
//!   keyed hash (SipHash with random keys drawn once per table), so a sprayer cannot aim its
//!   addresses at the bucket of a chosen victim: filling any one bucket takes about as many
//!   limited addresses as filling the table. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
//!   as a dual-stack socket reports IPv4 clients) count as the IPv4 address.
//! - **Cost on a worker**: one SipHash of the key, a read of the source's bucket (up to
//!   [`WAYS`] cache lines), and two or three compare-and-swaps on the source's own line;
//!   a new source also writes its entry. With neither limit set, nothing.
//! - **Never panics, always ends.** Every setting is clamped (prefix lengths to 32 and 128,
//!   `max_tokens` and `tokens_per_fill` to [`MAX_TOKENS`], the cap to
//!   [`MAX_CONNECTIONS_PER_SOURCE`], intervals to at least 1 ms); every loop is bounded.
//!
//! Claiming: an entry's control word is `generation << 32 | state << 30 | low`, where the
//! state is empty, claiming (low: a 30-bit fingerprint of the key being written), owned
//! (low: open connections, plus a worker's momentary pin while it takes a token) or evicting
//! (owned, while an evictor checks the bucket is still full). A worker claims an entry by
//! compare-and-swap (empty or idle-owned to claiming, with a new generation), writes the key
//! and a full bucket, then checks the other ways of the bucket before publishing it as
//! owned: when it sees the same key owned, or the same fingerprint being claimed at a lower
//! way, it gives its claim up; at a higher way it waits for that claim to end. The claims
//! and checks are sequentially consistent, so of two workers claiming the same source at
//! once at least one sees the other, and exactly one publishes. Workers wait only for a
//! claim or an eviction check of their own source's key (a few stores), spin at most
//! [`SPIN_LIMIT`] times, and refuse with [`Refusal::TableFull`] when that is exceeded (a
//! preempted claimer); different sources never wait for each other (but for a 1 in 2^30
//! fingerprint collision, which only costs a wait).
//!
//! [`release`]: SourceTable::release

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Ways (entries) per bucket of the table.
pub const WAYS: usize = 8;
/// Bytes per entry: one cache line.
pub const ENTRY_BYTES: usize = 64;
/// The default `table_entries` (4 MiB).
pub const DEFAULT_TABLE_ENTRIES: u32 = 65_536;
/// The most entries a table holds (256 MiB); larger settings are clamped.
pub const MAX_TABLE_ENTRIES: usize = 1 << 22;
/// The most tokens a source's bucket holds, and the most one fill adds.
pub const MAX_TOKENS: u32 = (1 << TOKEN_BITS) - 1;
/// The largest concurrency cap (and the most connections an entry counts).
pub const MAX_CONNECTIONS_PER_SOURCE: u32 = (1 << LOW_BITS) - 1;
/// How many times a worker spins on another worker's claim of its source before refusing.
pub const SPIN_LIMIT: u32 = 1 << 12;

/// Lookups restarted (an entry changed under the worker) before refusing as table full.
const MAX_ATTEMPTS: u32 = 16;
/// Consistent reads of one entry's key tried before restarting the lookup.
const READ_TRIES: u32 = 4;

/// Token word: `tokens << FILL_BITS | whole intervals counted` (modulo 2^40: 34 years of
/// 1 ms intervals; a reading more than 2^39 intervals behind counts as ahead).
const TOKEN_BITS: u32 = 24;
const FILL_BITS: u32 = 40;
const FILL_MASK: u64 = (1 << FILL_BITS) - 1;
const FILL_HALF: u64 = 1 << (FILL_BITS - 1);

/// Control word: `generation << 32 | state << 30 | low`.
const LOW_BITS: u32 = 30;
const LOW_MASK: u64 = (1 << LOW_BITS) - 1;
const EMPTY: u64 = 0;
const CLAIMING: u64 = 1;
const OWNED: u64 = 2;
const EVICTING: u64 = 3;

/// Key family tags (0 is never a key).
const FAMILY_V4: u64 = 4;
const FAMILY_V6: u64 = 6;

/// The per-source limits and the table's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLimitSettings {
    /// IPv4 sources are grouped by this prefix (32: each address; above 32 counts as 32).
    pub ipv4_prefix_len: u8,
    /// IPv6 sources are grouped by this prefix (e.g. 64; above 128 counts as 128).
    pub ipv6_prefix_len: u8,
    /// Token bucket per source; None: no rate limit.
    pub rate: Option<SourceRate>,
    /// None: no concurrency cap.
    pub max_connections_per_source: Option<u32>,
    /// Entries in the table, rounded up to a power of two (at least [`WAYS`], at most
    /// [`MAX_TABLE_ENTRIES`]); [`ENTRY_BYTES`] each.
    pub table_entries: u32,
}

impl Default for SourceLimitSettings {
    /// /32 and /64 sources, no limits, [`DEFAULT_TABLE_ENTRIES`] entries.
    fn default() -> Self {
        SourceLimitSettings {
            ipv4_prefix_len: 32,
            ipv6_prefix_len: 64,
            rate: None,
            max_connections_per_source: None,
            table_entries: DEFAULT_TABLE_ENTRIES,
        }
    }
}

/// A source's token bucket of new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRate {
    /// Tokens a bucket starts with and holds at most (0: every connection is refused).
    pub max_tokens: u32,
    /// Tokens added every interval (at least 1).
    pub tokens_per_fill: u32,
    /// The interval (at least 1 ms).
    pub fill_interval_ms: u64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source's bucket was empty.
    Rate,
    /// The source held its cap of open connections.
    Concurrency,
    /// The source had no entry and its bucket had no empty or idle way (or another worker's
    /// claim of the same source did not end within [`SPIN_LIMIT`] spins).
    TableFull,
}

impl Refusal {
    /// A name for stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Concurrency => "concurrency",
            Refusal::TableFull => "table_full",
        }
    }
}

/// What an admitted connection holds: its entry and that entry's generation (8 bytes, for
/// the connection's slot). [`SourceSeat::NONE`] when no cap is set: there is no seat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceSeat {
    index: u32,
    generation: u32,
}

impl SourceSeat {
    /// No seat held; releasing it does nothing.
    pub const NONE: SourceSeat = SourceSeat {
        index: u32::MAX,
        generation: 0,
    };

    /// Whether this holds a concurrency seat that [`SourceTable::release`] gives back.
    pub fn holds_seat(self) -> bool {
        self != SourceSeat::NONE
    }
}

/// One source in the admin's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    /// The source prefix, e.g. "10.1.2.0/24" or "2001:db8::/64".
    pub prefix: String,
    /// Connections holding a seat now (0 when no cap is set: seats are not kept then).
    pub open_connections: u32,
    /// Tokens in its bucket now (None: no rate limit).
    pub tokens_left: Option<u32>,
    /// Connections admitted since the entry was claimed.
    pub connections_admitted: u64,
    /// Connections refused (rate or concurrency) since the entry was claimed. (A concurrency
    /// refusal that races with the entry's eviction may, rarely, be counted to the next
    /// owner: the admin's counters are not limits.)
    pub connections_refused: u64,
}

/// The table's own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SourceTableCounters {
    /// Connections refused with [`Refusal::TableFull`].
    pub refused_table_full: u64,
    /// Idle entries taken over by a new source.
    pub evictions: u64,
    /// Releases of a seat whose entry had since changed (or that was never held).
    pub stale_releases: u64,
}

/// A source key: the family and the masked address (IPv4 in `lo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SourceKey {
    family: u64,
    hi: u64,
    lo: u64,
}

/// One entry: exactly one cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Entry {
    /// `generation << 32 | state << 30 | low`.
    ctrl: AtomicU64,
    family: AtomicU64,
    key_hi: AtomicU64,
    key_lo: AtomicU64,
    /// `tokens << 40 | whole intervals counted`.
    tokens: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
}

impl Entry {
    fn key(&self) -> SourceKey {
        SourceKey {
            family: self.family.load(Ordering::Acquire),
            hi: self.key_hi.load(Ordering::Acquire),
            lo: self.key_lo.load(Ordering::Acquire),
        }
    }

    fn ctrl(&self) -> u64 {
        self.ctrl.load(Ordering::SeqCst)
    }
}

/// The effective bucket settings.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    max_tokens: u64,
    tokens_per_fill: u64,
    interval_ns: u64,
}

impl Bucket {
    fn new(rate: SourceRate) -> Bucket {
        Bucket {
            max_tokens: u64::from(rate.max_tokens.min(MAX_TOKENS)),
            tokens_per_fill: u64::from(rate.tokens_per_fill.clamp(1, MAX_TOKENS)),
            interval_ns: rate.fill_interval_ms.max(1).saturating_mul(1_000_000),
        }
    }

    /// The tokens in `word` refilled to `fills_now`, and the count to store with them.
    fn refill(&self, word: u64, fills_now: u64) -> (u64, u64) {
        let tokens = word >> FILL_BITS;
        let counted = word & FILL_MASK;
        let fills = fills_now.wrapping_sub(counted) & FILL_MASK;
        if fills >= FILL_HALF {
            // This reading is older than the count: add nothing, keep the count.
            return (tokens, counted);
        }
        let added = fills.saturating_mul(self.tokens_per_fill);
        (tokens.saturating_add(added).min(self.max_tokens), fills_now)
    }

    fn full_word(&self, fills_now: u64) -> u64 {
        self.max_tokens << FILL_BITS | fills_now
    }
}

fn ctrl_word(generation: u32, state: u64, low: u64) -> u64 {
    u64::from(generation) << 32 | state << LOW_BITS | (low & LOW_MASK)
}

fn generation_of(ctrl: u64) -> u32 {
    (ctrl >> 32) as u32
}

fn state_of(ctrl: u64) -> u64 {
    (ctrl >> LOW_BITS) & 3
}

fn low_of(ctrl: u64) -> u64 {
    ctrl & LOW_MASK
}

/// Whether the entry's key words are its own (owned or being checked for eviction).
fn has_key(ctrl: u64) -> bool {
    matches!(state_of(ctrl), OWNED | EVICTING)
}

/// The claim fingerprint: hash bits above those that choose the bucket.
fn fingerprint(hash: u64) -> u64 {
    (hash >> 34) & LOW_MASK
}

/// The table's entry count for a `table_entries` setting.
fn effective_entries(table_entries: u32) -> usize {
    let wanted = (table_entries as usize).clamp(WAYS, MAX_TABLE_ENTRIES);
    wanted.next_power_of_two()
}

fn v4_mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn v6_mask(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

/// One way of a bucket as a worker saw it: its control word, and its key when it has one.
#[derive(Clone, Copy)]
struct Seen {
    ctrl: u64,
    key: Option<SourceKey>,
}

/// What a scan of a bucket found for a key.
#[derive(Default)]
struct Scan {
    /// The key's entry, owned.
    found: Option<(usize, u64)>,
    /// The key's entry being checked for eviction, or a claim with its fingerprint.
    pending: Option<(usize, u64)>,
    /// An empty way.
    free: Option<(usize, u64)>,
    /// Owned ways with no open connection (eviction candidates), by way.
    idle: [Option<(usize, u64)>; WAYS],
}

/// Where a lookup ended.
enum Located {
    /// The key's owned entry and the control word seen.
    Found(usize, u64),
    /// Something changed under the worker: look again.
    Retry,
    /// No entry to be had.
    Full,
}

/// A pin attempt.
enum Pin {
    Pinned(u32),
    AtCap,
    Moved,
}

/// The per-source limiter: a fixed table shared by every worker.
pub struct SourceTable {
    settings: SourceLimitSettings,
    v4_prefix_len: u8,
    v6_prefix_len: u8,
    v4_mask: u32,
    v6_mask: u128,
    bucket: Option<Bucket>,
    /// The cap on seats (None: pins only).
    max_open: Option<u64>,
    hasher: RandomState,
    origin: Instant,
    /// Buckets - 1 (a power of two minus one).
    bucket_mask: usize,
    entries: Box<[Entry]>,
    refused_table_full: AtomicU64,
    evictions: AtomicU64,
    stale_releases: AtomicU64,
    /// Tests widen the window between a lookup and its claim with this many yields.
    #[cfg(test)]
    claim_pause_yields: std::sync::atomic::AtomicU32,
}

impl fmt::Debug for SourceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceTable")
            .field("settings", &self.settings)
            .field("entries", &self.entries.len())
            .field("counters", &self.counters())
            .finish()
    }
}

impl SourceTable {
    /// A table for `settings`, allocated once (see the module's guarantees for the clamps).
    pub fn new(settings: SourceLimitSettings) -> SourceTable {
        let hasher = RandomState::new();
        let entry_count = effective_entries(settings.table_entries);
        // A random first generation per table: a seat of another table rarely matches.
        let first_generation = hasher.hash_one(entry_count) as u32;
        let entries = (0..entry_count)
            .map(|_| Entry {
                ctrl: AtomicU64::new(ctrl_word(first_generation, EMPTY, 0)),
                ..Entry::default()
            })
            .collect();
        let v4_prefix_len = settings.ipv4_prefix_len.min(32);
        let v6_prefix_len = settings.ipv6_prefix_len.min(128);
        SourceTable {
            v4_prefix_len,
            v6_prefix_len,
            v4_mask: v4_mask(v4_prefix_len),
            v6_mask: v6_mask(v6_prefix_len),
            bucket: settings.rate.map(Bucket::new),
            max_open: settings
                .max_connections_per_source
                .map(|cap| u64::from(cap.min(MAX_CONNECTIONS_PER_SOURCE))),
            hasher,
            origin: Instant::now(),
            bucket_mask: entry_count / WAYS - 1,
            entries,
            refused_table_full: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            stale_releases: AtomicU64::new(0),
            #[cfg(test)]
            claim_pause_yields: std::sync::atomic::AtomicU32::new(0),
            settings,
        }
    }

    /// The table's memory: its entries ([`ENTRY_BYTES`] each) and itself.
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>() + std::mem::size_of::<SourceTable>()
    }

    /// The number of entries (the setting, rounded and clamped).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// The settings as given to [`SourceTable::new`] (before clamping).
    pub fn settings(&self) -> &SourceLimitSettings {
        &self.settings
    }

    /// The table's own counters.
    pub fn counters(&self) -> SourceTableCounters {
        SourceTableCounters {
            refused_table_full: self.refused_table_full.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            stale_releases: self.stale_releases.load(Ordering::Relaxed),
        }
    }

    /// [`SourceTable::admit_at`] now.
    pub fn admit(&self, ip: IpAddr) -> Result<SourceSeat, Refusal> {
        self.admit_at(ip, Instant::now())
    }

    /// A new connection from `ip` at `now`: a seat when admitted ([`SourceSeat::NONE`] when
    /// no cap is set), or why not. With neither limit set, every connection is admitted
    /// without touching the table.
    pub fn admit_at(&self, ip: IpAddr, now: Instant) -> Result<SourceSeat, Refusal> {
        if self.bucket.is_none() && self.max_open.is_none() {
            return Ok(SourceSeat::NONE);
        }
        let key = self.key_of(ip);
        let fills_now = self.fills_at(now);
        let (index, generation) = self.pin(key, fills_now)?;
        let entry = &self.entries[index];
        if !self.take_token(entry, fills_now) {
            entry.refused.fetch_add(1, Ordering::Relaxed);
            self.unpin(index, generation);
            return Err(Refusal::Rate);
        }
        entry.admitted.fetch_add(1, Ordering::Relaxed);
        if self.max_open.is_none() {
            self.unpin(index, generation);
            return Ok(SourceSeat::NONE);
        }
        Ok(SourceSeat {
            index: index as u32,
            generation,
        })
    }

    /// The connection holding `seat` closed: gives its seat back, to the same generation of
    /// the same entry only (a stale seat touches nothing and is counted).
    pub fn release(&self, seat: SourceSeat) {
        if !seat.holds_seat() {
            return;
        }
        let released = usize::try_from(seat.index)
            .ok()
            .filter(|&index| index < self.entries.len())
            .is_some_and(|index| self.unpin(index, seat.generation));
        if !released {
            self.stale_releases.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`SourceTable::busiest_at`] now.
    pub fn busiest(&self, n: usize) -> Vec<SourceView> {
        self.busiest_at(n, Instant::now())
    }

    /// Up to `n` sources with entries, by open connections then by refusals (most first),
    /// with their tokens at `now`. For the admin: allocates, and reads each entry
    /// consistently but the table not at one instant.
    pub fn busiest_at(&self, n: usize, now: Instant) -> Vec<SourceView> {
        let fills_now = self.fills_at(now);
        let mut views: Vec<SourceView> = (0..self.entries.len())
            .filter_map(|index| self.view(index, fills_now))
            .collect();
        views.sort_unstable_by(|a, b| {
            (b.open_connections, b.connections_refused, &a.prefix).cmp(&(
                a.open_connections,
                a.connections_refused,
                &b.prefix,
            ))
        });
        views.truncate(n);
        views
    }

    fn key_of(&self, ip: IpAddr) -> SourceKey {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match ip {
            IpAddr::V4(v4) => SourceKey {
                family: FAMILY_V4,
                hi: 0,
                lo: u64::from(u32::from(v4) & self.v4_mask),
            },
            IpAddr::V6(v6) => {
                let masked = u128::from(v6) & self.v6_mask;
                SourceKey {
                    family: FAMILY_V6,
                    hi: (masked >> 64) as u64,
                    lo: masked as u64,
                }
            }
        }
    }

    fn prefix_text(&self, key: SourceKey) -> String {
        if key.family == FAMILY_V4 {
            format!("{}/{}", Ipv4Addr::from(key.lo as u32), self.v4_prefix_len)
        } else {
            let addr = u128::from(key.hi) << 64 | u128::from(key.lo);
            format!("{}/{}", Ipv6Addr::from(addr), self.v6_prefix_len)
        }
    }

    /// Whole fill intervals from the table's origin to `now` (modulo 2^40).
    fn fills_at(&self, now: Instant) -> u64 {
        let Some(bucket) = self.bucket else {
            return 0;
        };
        let elapsed_ns = now.saturating_duration_since(self.origin).as_nanos();
        let elapsed_ns = u64::try_from(elapsed_ns).unwrap_or(u64::MAX);
        (elapsed_ns / bucket.interval_ns) & FILL_MASK
    }

    /// Takes a token from a pinned entry; true without a rate limit.
    fn take_token(&self, entry: &Entry, fills_now: u64) -> bool {
        let Some(bucket) = self.bucket else {
            return true;
        };
        let mut current = entry.tokens.load(Ordering::Acquire);
        loop {
            let (tokens, counted) = bucket.refill(current, fills_now);
            if tokens == 0 {
                return false;
            }
            let next = (tokens - 1) << FILL_BITS | counted;
            match entry.tokens.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Whether the entry's bucket is full at `fills_now` (always, without a rate limit).
    fn bucket_full(&self, entry: &Entry, fills_now: u64) -> bool {
        self.bucket.is_none_or(|bucket| {
            let word = entry.tokens.load(Ordering::Acquire);
            bucket.refill(word, fills_now).0 == bucket.max_tokens
        })
    }

    /// Finds or claims the key's entry and pins it (one more open connection): its index and
    /// generation.
    fn pin(&self, key: SourceKey, fills_now: u64) -> Result<(usize, u32), Refusal> {
        let hash = self.hasher.hash_one(key);
        for _ in 0..MAX_ATTEMPTS {
            match self.locate(key, hash, fills_now) {
                Located::Found(index, ctrl) => match self.try_pin(index, ctrl) {
                    Pin::Pinned(generation) => return Ok((index, generation)),
                    Pin::AtCap => {
                        // The entry may, rarely, have changed hands since: admin count only.
                        self.entries[index].refused.fetch_add(1, Ordering::Relaxed);
                        return Err(Refusal::Concurrency);
                    }
                    Pin::Moved => continue,
                },
                Located::Retry => continue,
                Located::Full => break,
            }
        }
        self.refused_table_full.fetch_add(1, Ordering::Relaxed);
        Err(Refusal::TableFull)
    }

    /// One more open connection on the owned entry seen as `ctrl`, below the cap.
    fn try_pin(&self, index: usize, mut ctrl: u64) -> Pin {
        let generation = generation_of(ctrl);
        let cap = self
            .max_open
            .unwrap_or(u64::from(MAX_CONNECTIONS_PER_SOURCE));
        let entry = &self.entries[index];
        loop {
            if state_of(ctrl) != OWNED || generation_of(ctrl) != generation {
                return Pin::Moved;
            }
            if low_of(ctrl) >= cap {
                return Pin::AtCap;
            }
            match entry.ctrl.compare_exchange_weak(
                ctrl,
                ctrl + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Pin::Pinned(generation),
                Err(seen) => ctrl = seen,
            }
        }
    }

    /// One open connection less on the entry, if it is still `generation` and has one.
    fn unpin(&self, index: usize, generation: u32) -> bool {
        let entry = &self.entries[index];
        let mut ctrl = entry.ctrl();
        loop {
            let ours = state_of(ctrl) == OWNED && generation_of(ctrl) == generation;
            if !ours || low_of(ctrl) == 0 {
                return false;
            }
            match entry.ctrl.compare_exchange_weak(
                ctrl,
                ctrl - 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(seen) => ctrl = seen,
            }
        }
    }

    /// The way at `index`, its key read consistently with its control word; None when it
    /// kept changing.
    fn observe(&self, index: usize) -> Option<Seen> {
        let entry = &self.entries[index];
        for _ in 0..READ_TRIES {
            let ctrl = entry.ctrl();
            if !has_key(ctrl) {
                return Some(Seen { ctrl, key: None });
            }
            // The key words change only under a new generation (claiming), and the key
            // loads (acquire) come before this reload.
            let key = entry.key();
            let again = entry.ctrl();
            if has_key(again) && generation_of(again) == generation_of(ctrl) {
                return Some(Seen {
                    ctrl,
                    key: Some(key),
                });
            }
        }
        None
    }

    /// Spins until the way at `index` is no longer `ctrl`; false after [`SPIN_LIMIT`].
    fn wait_for_change(&self, index: usize, ctrl: u64) -> bool {
        let entry = &self.entries[index];
        for _ in 0..SPIN_LIMIT {
            if entry.ctrl() != ctrl {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// The key's bucket as seen now.
    fn scan(&self, key: SourceKey, fp: u64, base: usize) -> Option<Scan> {
        let mut scan = Scan::default();
        for way in 0..WAYS {
            let index = base + way;
            let seen = self.observe(index)?;
            let ctrl = seen.ctrl;
            match (state_of(ctrl), seen.key) {
                (EMPTY, _) => {
                    scan.free.get_or_insert((index, ctrl));
                }
                (CLAIMING, _) if low_of(ctrl) == fp => scan.pending = Some((index, ctrl)),
                (OWNED, Some(k)) if k == key => scan.found = Some((index, ctrl)),
                (EVICTING, Some(k)) if k == key => scan.pending = Some((index, ctrl)),
                (OWNED, Some(_)) if low_of(ctrl) == 0 => scan.idle[way] = Some((index, ctrl)),
                _ => {}
            }
        }
        Some(scan)
    }

    /// Finds the key's owned entry, or claims one for it.
    fn locate(&self, key: SourceKey, hash: u64, fills_now: u64) -> Located {
        let fp = fingerprint(hash);
        let base = (hash as usize & self.bucket_mask) * WAYS;
        let Some(scan) = self.scan(key, fp, base) else {
            return Located::Retry;
        };
        if let Some((index, ctrl)) = scan.found {
            return Located::Found(index, ctrl);
        }
        if let Some((index, ctrl)) = scan.pending {
            // Another worker is claiming this source (or checking it for eviction).
            return if self.wait_for_change(index, ctrl) {
                Located::Retry
            } else {
                Located::Full
            };
        }
        self.pause_before_claim();
        if let Some((index, ctrl)) = scan.free {
            let generation = generation_of(ctrl).wrapping_add(1);
            let claim = ctrl_word(generation, CLAIMING, fp);
            let entry = &self.entries[index];
            return match entry.ctrl.compare_exchange(
                ctrl,
                claim,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => self.finish_claim(index, generation, key, fp, fills_now),
                Err(_) => Located::Retry,
            };
        }
        for (index, ctrl) in scan.idle.into_iter().flatten() {
            if self.try_evict(index, ctrl, fp, fills_now) {
                let generation = generation_of(ctrl).wrapping_add(1);
                return self.finish_claim(index, generation, key, fp, fills_now);
            }
        }
        Located::Full
    }

    /// Nothing, outside tests.
    fn pause_before_claim(&self) {
        #[cfg(test)]
        for _ in 0..self.claim_pause_yields.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
    }

    /// Takes over the idle owned entry seen as `ctrl` (no open connection) if its bucket is
    /// full, leaving it claiming for `fp` under the next generation.
    fn try_evict(&self, index: usize, ctrl: u64, fp: u64, fills_now: u64) -> bool {
        let entry = &self.entries[index];
        if !self.bucket_full(entry, fills_now) {
            return false;
        }
        let evicting = ctrl_word(generation_of(ctrl), EVICTING, 0);
        let cas = entry
            .ctrl
            .compare_exchange(ctrl, evicting, Ordering::SeqCst, Ordering::SeqCst);
        if cas.is_err() {
            return false;
        }
        // No pin can be taken while evicting, so the bucket is stable now: check it again
        // (a connection may have come and gone since the first look).
        if !self.bucket_full(entry, fills_now) {
            entry.ctrl.store(ctrl, Ordering::SeqCst);
            return false;
        }
        let generation = generation_of(ctrl).wrapping_add(1);
        entry
            .ctrl
            .store(ctrl_word(generation, CLAIMING, fp), Ordering::SeqCst);
        self.evictions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Writes the key and a full bucket into the claimed entry, then publishes it as owned
    /// unless another worker has the same source (see the module's "Claiming").
    fn finish_claim(
        &self,
        index: usize,
        generation: u32,
        key: SourceKey,
        fp: u64,
        fills_now: u64,
    ) -> Located {
        let entry = &self.entries[index];
        entry.family.store(key.family, Ordering::Release);
        entry.key_hi.store(key.hi, Ordering::Release);
        entry.key_lo.store(key.lo, Ordering::Release);
        let full = self.bucket.map_or(0, |bucket| bucket.full_word(fills_now));
        entry.tokens.store(full, Ordering::Relaxed);
        entry.admitted.store(0, Ordering::Relaxed);
        entry.refused.store(0, Ordering::Relaxed);
        let verdict = self.check_claim(index, key, fp);
        let state = match verdict {
            Located::Found(..) => OWNED,
            Located::Retry | Located::Full => EMPTY,
        };
        entry
            .ctrl
            .store(ctrl_word(generation, state, 0), Ordering::SeqCst);
        match verdict {
            Located::Found(..) => Located::Found(index, ctrl_word(generation, OWNED, 0)),
            other => other,
        }
    }

    /// Whether the claim at `index` may be published (Found), must be given up and looked
    /// up again (Retry), or given up after waiting too long (Full).
    fn check_claim(&self, index: usize, key: SourceKey, fp: u64) -> Located {
        let base = index - index % WAYS;
        for other in (base..base + WAYS).filter(|&other| other != index) {
            let verdict = self.check_way(index, other, key, fp);
            if !matches!(verdict, Located::Found(..)) {
                return verdict;
            }
        }
        Located::Found(index, 0)
    }

    /// [`SourceTable::check_claim`] for one other way.
    fn check_way(&self, index: usize, other: usize, key: SourceKey, fp: u64) -> Located {
        for _ in 0..MAX_ATTEMPTS {
            let Some(seen) = self.observe(other) else {
                continue;
            };
            let ctrl = seen.ctrl;
            let same_key = seen.key == Some(key);
            let wait = match state_of(ctrl) {
                CLAIMING if low_of(ctrl) == fp && other < index => return Located::Retry,
                CLAIMING => low_of(ctrl) == fp,
                OWNED if same_key => return Located::Retry,
                EVICTING => same_key,
                _ => false,
            };
            if !wait {
                return Located::Found(index, 0);
            }
            if !self.wait_for_change(other, ctrl) {
                return Located::Full;
            }
        }
        Located::Full
    }

    /// The admin's view of the entry at `index`, if it is owned.
    fn view(&self, index: usize, fills_now: u64) -> Option<SourceView> {
        let entry = &self.entries[index];
        let seen = self.observe(index)?;
        let key = seen.key.filter(|_| state_of(seen.ctrl) == OWNED)?;
        let tokens_word = entry.tokens.load(Ordering::Acquire);
        let view = SourceView {
            prefix: self.prefix_text(key),
            open_connections: if self.max_open.is_some() {
                low_of(seen.ctrl) as u32
            } else {
                0
            },
            tokens_left: self
                .bucket
                .map(|bucket| bucket.refill(tokens_word, fills_now).0 as u32),
            connections_admitted: entry.admitted.load(Ordering::Relaxed),
            connections_refused: entry.refused.load(Ordering::Relaxed),
        };
        // The entry must still be the one whose key was read.
        (generation_of(entry.ctrl()) == generation_of(seen.ctrl)).then_some(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn settings(
        rate: Option<(u32, u32, u64)>,
        cap: Option<u32>,
        table_entries: u32,
    ) -> SourceLimitSettings {
        SourceLimitSettings {
            ipv4_prefix_len: 32,
            ipv6_prefix_len: 64,
            rate: rate.map(
                |(max_tokens, tokens_per_fill, fill_interval_ms)| SourceRate {
                    max_tokens,
                    tokens_per_fill,
                    fill_interval_ms,
                },
            ),
            max_connections_per_source: cap,
            table_entries,
        }
    }

    fn table(rate: Option<(u32, u32, u64)>, cap: Option<u32>, entries: u32) -> SourceTable {
        SourceTable::new(settings(rate, cap, entries))
    }

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    fn admitted(t: &SourceTable, ip: IpAddr, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| t.admit_at(ip, now).is_ok()).count()
    }

    #[test]
    fn memory_is_one_cache_line_per_entry() {
        assert_eq!(std::mem::size_of::<Entry>(), ENTRY_BYTES);
        assert_eq!(std::mem::size_of::<SourceSeat>(), 8);
        let t = SourceTable::new(SourceLimitSettings::default());
        assert_eq!(t.entries(), 65_536);
        let table_bytes = t.memory_bytes() - 65_536 * ENTRY_BYTES;
        assert_eq!(65_536 * ENTRY_BYTES, 4 << 20);
        assert!(table_bytes < 256, "{table_bytes}");
        assert_eq!(effective_entries(0), WAYS);
        assert_eq!(effective_entries(1000), 1024);
        assert_eq!(effective_entries(1024), 1024);
        assert_eq!(effective_entries(u32::MAX), MAX_TABLE_ENTRIES);
    }

    #[test]
    fn bucket_starts_full_and_refills_by_whole_intervals() {
        let t = table(Some((3, 2, 100)), None, 64);
        let t0 = t.origin;
        let a = ip("192.0.2.1");
        assert_eq!(admitted(&t, a, t0, 5), 3);
        assert_eq!(t.admit_at(a, t0), Err(Refusal::Rate));
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(99), 5), 0);
        // One interval: two tokens.
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(100), 5), 2);
        // Ten intervals later: full again, not more.
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(1100), 10), 3);
        // A reading behind the bucket's count adds nothing (and does not refill it).
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(150), 5), 0);
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(1150), 5), 0);
        // Another source has its own full bucket.
        assert_eq!(admitted(&t, ip("192.0.2.2"), t0, 5), 3);
        let none = table(Some((0, 1, 100)), None, 64);
        let later = none.origin + Duration::from_secs(10);
        assert_eq!(none.admit_at(a, later), Err(Refusal::Rate));
    }

    #[test]
    fn a_source_first_seen_later_starts_full_and_refills_on_the_table_intervals() {
        let t = table(Some((2, 1, 100)), None, 64);
        let t0 = t.origin;
        let a = ip("192.0.2.1");
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(250), 5), 2);
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(299), 5), 0);
        assert_eq!(admitted(&t, a, t0 + Duration::from_millis(300), 5), 1);
    }

    #[test]
    fn concurrency_cap_and_release() {
        let t = table(None, Some(2), 64);
        let a = ip("192.0.2.1");
        let s1 = t.admit(a).unwrap();
        let s2 = t.admit(a).unwrap();
        assert!(s1.holds_seat() && s2.holds_seat());
        assert_eq!(t.admit(a), Err(Refusal::Concurrency));
        assert_eq!(t.busiest(1)[0].open_connections, 2);
        t.release(s1);
        let s3 = t.admit(a).unwrap();
        assert_eq!(t.admit(a), Err(Refusal::Concurrency));
        t.release(s2);
        t.release(s3);
        let view = &t.busiest(1)[0];
        assert_eq!((view.open_connections, view.connections_admitted), (0, 3));
        assert_eq!(view.connections_refused, 2);
        assert_eq!(view.tokens_left, None);
        t.release(SourceSeat::NONE);
        assert_eq!(t.counters().stale_releases, 0);
    }

    #[test]
    fn a_capped_source_refused_for_concurrency_keeps_its_tokens() {
        let t = table(Some((5, 1, 60_000)), Some(1), 64);
        let t0 = t.origin;
        let a = ip("192.0.2.1");
        let seat = t.admit_at(a, t0).unwrap();
        assert_eq!(t.admit_at(a, t0), Err(Refusal::Concurrency));
        assert_eq!(t.busiest_at(1, t0)[0].tokens_left, Some(4));
        t.release(seat);
        for _ in 0..4 {
            t.release(t.admit_at(a, t0).unwrap());
        }
        assert_eq!(t.admit_at(a, t0), Err(Refusal::Rate));
    }

    #[test]
    fn no_limits_admits_everything_without_the_table() {
        let t = table(None, None, 8);
        for n in 0..1000 {
            assert_eq!(t.admit(v4(n)), Ok(SourceSeat::NONE));
        }
        assert!(t.busiest(10).is_empty());
    }

    #[test]
    fn rate_only_admits_hold_no_seat() {
        let t = table(Some((2, 1, 60_000)), None, 64);
        let seat = t.admit(ip("192.0.2.1")).unwrap();
        assert!(!seat.holds_seat());
        assert_eq!(t.busiest(1)[0].open_connections, 0);
    }

    #[test]
    fn prefixes_group_sources() {
        let mut s = settings(None, Some(1), 64);
        s.ipv4_prefix_len = 24;
        let t = SourceTable::new(s.clone());
        assert!(t.admit(ip("10.0.0.1")).is_ok());
        assert_eq!(t.admit(ip("10.0.0.200")), Err(Refusal::Concurrency));
        assert_eq!(t.admit(ip("::ffff:10.0.0.7")), Err(Refusal::Concurrency));
        assert!(t.admit(ip("10.0.1.1")).is_ok());
        assert!(t.admit(ip("2001:db8::1")).is_ok());
        assert_eq!(t.admit(ip("2001:db8::ffff:1")), Err(Refusal::Concurrency));
        assert_eq!(
            t.admit(ip("2001:db8:0:0:8000::")),
            Err(Refusal::Concurrency)
        );
        assert!(t.admit(ip("2001:db8:0:1::1")).is_ok());
        // IPv6 ::/64 is not IPv4 0.0.0.0/24.
        assert!(t.admit(ip("0.0.0.1")).is_ok());
        assert!(t.admit(ip("::1")).is_ok());
        let mut prefixes: Vec<String> = t.busiest(10).into_iter().map(|v| v.prefix).collect();
        prefixes.sort();
        assert_eq!(
            prefixes,
            [
                "0.0.0.0/24",
                "10.0.0.0/24",
                "10.0.1.0/24",
                "2001:db8:0:1::/64",
                "2001:db8::/64",
                "::/64"
            ]
        );
    }

    #[test]
    fn prefix_lengths_at_and_beyond_the_edges() {
        let mut s = settings(None, Some(1), 64);
        (s.ipv4_prefix_len, s.ipv6_prefix_len) = (0, 200);
        let t = SourceTable::new(s);
        assert!(t.admit(ip("10.0.0.1")).is_ok());
        assert_eq!(t.admit(ip("203.0.113.9")), Err(Refusal::Concurrency));
        assert!(t.admit(ip("2001:db8::1")).is_ok());
        assert!(t.admit(ip("2001:db8::2")).is_ok());
        let mut prefixes: Vec<String> = t.busiest(10).into_iter().map(|v| v.prefix).collect();
        prefixes.sort();
        assert_eq!(
            prefixes,
            ["0.0.0.0/0", "2001:db8::1/128", "2001:db8::2/128"]
        );
    }

    #[test]
    fn only_idle_entries_are_evicted_and_a_full_bucket_refuses() {
        // One bucket of eight ways.
        let t = table(None, Some(1), 8);
        let seats: Vec<_> = (0..8).map(|n| t.admit(v4(n)).unwrap()).collect();
        assert_eq!(t.admit(v4(100)), Err(Refusal::TableFull));
        assert_eq!(t.counters().refused_table_full, 1);
        // Source 7 closes its connection: its entry is idle, and the only one taken.
        t.release(seats[7]);
        let new = t.admit(v4(100)).unwrap();
        assert_eq!(t.counters().evictions, 1);
        assert_eq!(t.admit(v4(101)), Err(Refusal::TableFull));
        for n in 0..7 {
            assert_eq!(t.admit(v4(n)), Err(Refusal::Concurrency), "source {n}");
        }
        assert_eq!(t.admit(v4(100)), Err(Refusal::Concurrency));
        // Source 7 comes back as new: the table is full of busy sources.
        assert_eq!(t.admit(v4(7)), Err(Refusal::TableFull));
        t.release(new);
        assert!(t.admit(v4(7)).is_ok());
    }

    #[test]
    fn an_entry_with_spent_tokens_is_not_idle_until_refilled() {
        let t = table(Some((2, 1, 1000)), None, 8);
        let t0 = t.origin;
        for n in 0..8 {
            assert!(t.admit_at(v4(n), t0).is_ok());
        }
        assert_eq!(t.admit_at(v4(100), t0), Err(Refusal::TableFull));
        assert_eq!(
            t.admit_at(v4(100), t0 + Duration::from_millis(999)),
            Err(Refusal::TableFull)
        );
        // One interval later every bucket is full again: all idle.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(admitted(&t, v4(100), t1, 2), 2);
        assert_eq!(t.counters().evictions, 1);
    }

    #[test]
    fn a_limited_source_cannot_reset_itself_by_spraying() {
        // 64 entries; a bucket of 2 refilled once an hour.
        let t = table(Some((2, 1, 3_600_000)), None, 64);
        let t0 = t.origin;
        let limited = ip("192.0.2.1");
        assert_eq!(admitted(&t, limited, t0, 3), 2);
        let sprayed = (0..100_000u32)
            .filter(|n| t.admit_at(v4(0x0a00_0000 + n), t0).is_ok())
            .count();
        assert!(sprayed <= 63, "{sprayed}");
        assert_eq!(t.counters().evictions, 0);
        assert_eq!(t.admit_at(limited, t0), Err(Refusal::Rate));
        // An interval later it has one token, not a fresh bucket.
        let t1 = t0 + Duration::from_millis(3_600_000);
        assert_eq!(admitted(&t, limited, t1, 3), 1);
    }

    #[test]
    fn a_source_holding_connections_survives_an_evicting_spray() {
        // The sprayer's addresses go idle at once (connect, close), so they evict each other.
        let t = table(Some((1, 1, 1)), Some(1), 64);
        let t0 = t.origin;
        let limited = ip("2001:db8:1::1");
        let _held = t.admit_at(limited, t0).unwrap();
        let mut admitted_count = 0;
        for n in 0..100_000u32 {
            let now = t0 + Duration::from_millis(u64::from(n) + 1);
            if let Ok(seat) = t.admit_at(v4(0x0a00_0000 + n), now) {
                t.release(seat);
                admitted_count += 1;
            }
        }
        assert_eq!(admitted_count, 100_000);
        assert!(t.counters().evictions > 90_000, "{:?}", t.counters());
        let later = t0 + Duration::from_secs(200);
        assert_eq!(t.admit_at(limited, later), Err(Refusal::Concurrency));
        assert_eq!(t.busiest_at(1, later)[0].prefix, "2001:db8:1::/64");
    }

    #[test]
    fn a_stale_seat_does_not_touch_the_new_owner() {
        let t = table(None, Some(1), 8);
        let seats: Vec<_> = (0..8).map(|n| t.admit(v4(n)).unwrap()).collect();
        t.release(seats[3]);
        // Source 100 takes over source 3's entry (the only idle one).
        let _new = t.admit(v4(100)).unwrap();
        assert_eq!(t.counters().evictions, 1);
        t.release(seats[3]);
        assert_eq!(t.counters().stale_releases, 1);
        assert_eq!(t.admit(v4(100)), Err(Refusal::Concurrency));
        // Released twice in the same generation: the count never goes below zero.
        t.release(seats[0]);
        t.release(seats[0]);
        assert_eq!(t.counters().stale_releases, 2);
        // A seat out of range, or of another table, touches nothing.
        t.release(SourceSeat {
            index: 1 << 30,
            generation: 0,
        });
        let other = table(None, Some(1), 8);
        let foreign = other.admit(v4(1)).unwrap();
        t.release(foreign);
        assert_eq!(t.admit(v4(1)), Err(Refusal::Concurrency));
    }

    #[test]
    fn busiest_orders_by_open_then_refused() {
        let t = table(Some((1, 1, 60_000)), Some(3), 64);
        let t0 = t.origin;
        let _a = t.admit_at(ip("192.0.2.1"), t0).unwrap();
        let b = t.admit_at(ip("192.0.2.2"), t0).unwrap();
        t.release(b);
        for _ in 0..3 {
            assert_eq!(t.admit_at(ip("192.0.2.2"), t0), Err(Refusal::Rate));
        }
        let c = t.admit_at(ip("192.0.2.3"), t0).unwrap();
        t.release(c);
        let views = t.busiest_at(10, t0);
        let order: Vec<_> = views.iter().map(|v| v.prefix.as_str()).collect();
        assert_eq!(order, ["192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"]);
        assert_eq!(
            views[1],
            SourceView {
                prefix: "192.0.2.2/32".into(),
                open_connections: 0,
                tokens_left: Some(0),
                connections_admitted: 1,
                connections_refused: 3,
            }
        );
        assert_eq!(t.busiest_at(2, t0).len(), 2);
        assert_eq!(
            t.busiest_at(1, t0 + Duration::from_secs(60))[0].tokens_left,
            Some(1)
        );
    }

    #[test]
    fn workers_racing_on_one_new_source_never_exceed_its_bucket() {
        for _ in 0..20 {
            let t = Arc::new(table(Some((1000, 1, 60_000)), None, 1024));
            let now = t.origin;
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let t = t.clone();
                    std::thread::spawn(move || admitted(&t, ip("198.51.100.7"), now, 2000))
                })
                .collect();
            let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(total, 1000);
            assert_eq!(t.busiest_at(10, now).len(), 1);
        }
    }

    #[test]
    fn workers_claiming_one_new_source_at_once_publish_one_entry() {
        // One bucket full of idle entries. Each round, four workers meet a new source at
        // once, each pausing between its lookup and its claim, and evict different idle
        // ways: without the claim check several entries would be published, each admitting
        // one connection under the cap of 1.
        let t = Arc::new(table(None, Some(1), 8));
        for n in 0..8 {
            t.release(t.admit(v4(1000 + n)).unwrap());
        }
        t.claim_pause_yields.store(20, Ordering::Relaxed);
        let start = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (t, start) = (t.clone(), start.clone());
                std::thread::spawn(move || {
                    let mut admitted = vec![0u32; 300];
                    for (round, admitted) in admitted.iter_mut().enumerate() {
                        start.wait();
                        let seat = t.admit(v4(round as u32));
                        *admitted = u32::from(seat.is_ok());
                        start.wait();
                        seat.into_iter().for_each(|seat| t.release(seat));
                    }
                    admitted
                })
            })
            .collect();
        let per_worker: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut rounds_admitted = 0;
        for round in 0..300 {
            let admitted: u32 = per_worker.iter().map(|a| a[round]).sum();
            assert!(admitted <= 1, "round {round}: {admitted} admitted");
            rounds_admitted += admitted;
        }
        assert!(
            rounds_admitted >= 290,
            "{rounds_admitted} {:?}",
            t.counters()
        );
        assert_eq!(t.counters().stale_releases, 0);
    }

    #[test]
    fn workers_racing_never_exceed_the_cap() {
        let t = Arc::new(table(Some((u32::MAX, 1, 1)), Some(8), 64));
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (t, inside, most) = (t.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(seat) = t.admit(ip("198.51.100.7")) {
                            let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now_inside, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            t.release(seat);
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert!(most.load(Ordering::SeqCst) <= 8);
        let view = &t.busiest(1)[0];
        assert_eq!(view.open_connections, 0);
        assert_eq!(t.counters().stale_releases, 0);
    }

    #[test]
    fn workers_claiming_the_same_new_sources_agree_on_one_entry_each() {
        for round in 0..5 {
            let t = Arc::new(table(None, Some(u32::MAX), 4096));
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let t = t.clone();
                    std::thread::spawn(move || {
                        (0..1000).filter(|&n| t.admit(v4(n)).is_ok()).count() as u64
                    })
                })
                .collect();
            let ok: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            let views = t.busiest(usize::MAX);
            let mut prefixes: Vec<&str> = views.iter().map(|v| v.prefix.as_str()).collect();
            prefixes.sort_unstable();
            prefixes.dedup();
            assert_eq!(prefixes.len(), views.len(), "round {round}: a duplicate");
            let open: u64 = views.iter().map(|v| u64::from(v.open_connections)).sum();
            assert_eq!(open, ok);
            assert_eq!(ok + t.counters().refused_table_full, 4000);
        }
    }

    #[test]
    fn workers_spraying_and_evicting_keep_counts_exact() {
        // Four workers share 64 entries; each connects and closes from many addresses
        // (evicting constantly) while keeping seats on one address of its own.
        let t = Arc::new(table(None, Some(3), 64));
        let handles: Vec<_> = (0..4u32)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mine = v4(0xc000_0200 + w);
                    let mut held = 0;
                    while held < 3 {
                        held += usize::from(t.admit(mine).is_ok());
                    }
                    let mut at_cap = 0;
                    for n in 0..20_000u32 {
                        if let Ok(seat) = t.admit(v4(0x0a00_0000 + (n * 4 + w))) {
                            t.release(seat);
                        }
                        let again = t.admit(mine);
                        assert!(again.is_err(), "a fourth seat");
                        at_cap += usize::from(again == Err(Refusal::Concurrency));
                    }
                    at_cap
                })
            })
            .collect();
        for at_cap in handles.into_iter().map(|h| h.join().unwrap()) {
            assert!(at_cap > 19_000, "{at_cap}");
        }
        assert!(t.counters().evictions > 0);
        assert_eq!(t.counters().stale_releases, 0);
        let views = t.busiest(usize::MAX);
        let open: Vec<_> = views.iter().map(|v| v.open_connections).collect();
        assert_eq!(open[..4], [3, 3, 3, 3]);
        assert!(open[4..].iter().all(|&o| o == 0));
    }

    /// The model: one bucket and one count per source, never forgotten.
    #[derive(Default, Clone, Copy)]
    struct ModelSource {
        tokens: u64,
        counted: u64,
        open: u32,
        admitted: u64,
        refused: u64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(usize),
        Release(usize),
        AdvanceMs(u64),
    }

    const POOL: [&str; 10] = [
        "10.0.0.1",
        "10.0.0.200",
        "10.0.1.1",
        "192.0.2.1",
        "::ffff:10.0.0.9",
        "2001:db8::1",
        "2001:db8::ffff:1",
        "2001:db8:0:1::1",
        "::1",
        "0.0.0.1",
    ];

    fn model_prefix(addr: IpAddr) -> String {
        match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let masked = u128::from(v6) >> 64 << 64;
                format!("{}/64", Ipv6Addr::from(masked))
            }
            IpAddr::V6(v6) => model_prefix(IpAddr::V4(v6.to_ipv4_mapped().unwrap())),
            IpAddr::V4(v4) => format!("{}/24", Ipv4Addr::from(u32::from(v4) >> 8 << 8)),
        }
    }

    struct Model {
        max: u64,
        per_fill: u64,
        cap: Option<u32>,
        sources: HashMap<String, ModelSource>,
    }

    impl Model {
        fn admit(&mut self, prefix: &str, fills: u64) -> Result<bool, Refusal> {
            let (max, per_fill, cap) = (self.max, self.per_fill, self.cap);
            let s = self
                .sources
                .entry(prefix.to_owned())
                .or_insert(ModelSource {
                    tokens: max,
                    counted: fills,
                    ..ModelSource::default()
                });
            if cap.is_some_and(|cap| s.open >= cap) {
                s.refused += 1;
                return Err(Refusal::Concurrency);
            }
            s.tokens = (s.tokens + (fills - s.counted) * per_fill).min(max);
            s.counted = fills;
            if s.tokens == 0 {
                s.refused += 1;
                return Err(Refusal::Rate);
            }
            s.tokens -= 1;
            s.admitted += 1;
            s.open += u32::from(cap.is_some());
            Ok(cap.is_some())
        }

        fn views(&self, fills: u64) -> Vec<SourceView> {
            let mut views: Vec<_> = self
                .sources
                .iter()
                .map(|(prefix, s)| SourceView {
                    prefix: prefix.clone(),
                    open_connections: s.open,
                    tokens_left: Some(
                        (s.tokens + (fills - s.counted) * self.per_fill).min(self.max) as u32,
                    ),
                    connections_admitted: s.admitted,
                    connections_refused: s.refused,
                })
                .collect();
            views.sort_by(|a, b| a.prefix.cmp(&b.prefix));
            views
        }
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..POOL.len()).prop_map(Op::Admit),
            2 => any::<usize>().prop_map(Op::Release),
            1 => (0u64..250).prop_map(Op::AdvanceMs),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_model_that_never_forgets(
            max in 0u32..4,
            per_fill in 1u32..3,
            cap in proptest::option::of(0u32..4),
            ops in proptest::collection::vec(op_strategy(), 1..80),
        ) {
            let mut s = settings(Some((max, per_fill, 100)), cap, 4096);
            s.ipv4_prefix_len = 24;
            let t = SourceTable::new(s);
            let mut model = Model {
                max: u64::from(max),
                per_fill: u64::from(per_fill),
                cap,
                sources: HashMap::new(),
            };
            let mut elapsed_ms = 0;
            let mut seats: Vec<(SourceSeat, String)> = Vec::new();
            for op in ops {
                let now = t.origin + Duration::from_millis(elapsed_ms);
                let fills = elapsed_ms / 100;
                match op {
                    Op::Admit(i) => {
                        let prefix = model_prefix(ip(POOL[i]));
                        let got = t.admit_at(ip(POOL[i]), now);
                        let want = model.admit(&prefix, fills);
                        prop_assert_eq!(got.map(|s| s.holds_seat()), want);
                        match got {
                            Ok(seat) if seat.holds_seat() => seats.push((seat, prefix)),
                            _ => {}
                        }
                    }
                    Op::Release(i) if !seats.is_empty() => {
                        let (seat, prefix) = seats.swap_remove(i % seats.len());
                        t.release(seat);
                        model.sources.get_mut(&prefix).unwrap().open -= 1;
                    }
                    Op::Release(_) => {}
                    Op::AdvanceMs(ms) => elapsed_ms += ms,
                }
            }
            let now = t.origin + Duration::from_millis(elapsed_ms);
            let mut views = t.busiest_at(usize::MAX, now);
            views.sort_by(|a, b| a.prefix.cmp(&b.prefix));
            prop_assert_eq!(views, model.views(elapsed_ms / 100));
            prop_assert_eq!(t.counters(), SourceTableCounters::default());
        }

        #[test]
        fn never_panics_on_any_settings_or_address(
            v4_len in any::<u8>(),
            v6_len in any::<u8>(),
            rate in proptest::option::of((any::<u32>(), any::<u32>(), any::<u64>())),
            cap in proptest::option::of(any::<u32>()),
            table_entries in 0u32..100,
            addrs in proptest::collection::vec((any::<bool>(), any::<u128>()), 1..40),
            later_ms in any::<u64>(),
        ) {
            let mut s = settings(rate, cap, table_entries);
            (s.ipv4_prefix_len, s.ipv6_prefix_len) = (v4_len, v6_len);
            let t = SourceTable::new(s);
            let later = t.origin.checked_add(Duration::from_millis(later_ms));
            let times = [t.origin, later.unwrap_or(t.origin), t.origin];
            for (i, (is_v4, bits)) in addrs.into_iter().enumerate() {
                let addr = if is_v4 {
                    v4(bits as u32)
                } else {
                    IpAddr::V6(Ipv6Addr::from(bits))
                };
                if let Ok(seat) = t.admit_at(addr, times[i % 3]) {
                    if i % 2 == 0 {
                        t.release(seat);
                    }
                }
            }
            prop_assert!(t.busiest_at(5, times[1]).len() <= 5);
        }
    }
}
