//! `RING_HASH`: Envoy's consistent-hash ring ([`RingHash`]) with either of its hash
//! functions ([`RingHashFunction`]).
//!
//! Guarantees: for the same hosts in the same order, the same entries in the same order as
//! Envoy's ring, so the same picks; `pick` is O(log n), allocation-free and lock-free.

use super::address::TextBuf;
use super::hash::{murmur2_64, xxhash64, MURMUR_STD_HASH_SEED};
use super::{cxx_min, normalize, HashHost};

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
    use crate::hash_lb::test_support::{hosts, keys, without};

    /// A SplitMix64 step: a cheap, well-spread sequence of test hashes.
    fn splitmix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn ring_counts(r: &RingHash, n: usize) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for (_, i) in r.entries() {
            counts[i] += 1;
        }
        counts
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
        let rest = without(&k, removed);
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
