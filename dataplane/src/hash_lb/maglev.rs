//! `MAGLEV`: Envoy's Maglev lookup table ([`MaglevTable`]) and the table-size check
//! ([`is_prime`]).
//!
//! Guarantees: for the same hosts in the same order, the same table Envoy fills, so the same
//! picks; `pick` is O(1), allocation-free and lock-free.

use super::hash::xxhash64;
use super::{normalize, HashHost};

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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash_lb::test_support::{hosts, keys, without};

    fn maglev_counts(t: &MaglevTable, n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for slot in 0..t.table_size() {
            counts[t.pick(slot).unwrap()] += 1;
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
        let rest = without(&k, removed);
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
}
