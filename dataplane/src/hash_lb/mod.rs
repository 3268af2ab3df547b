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
//!
//! # Layout
//!
//! - `hash`: the hash functions ([`xxhash64`], [`murmur2_64`]);
//! - `address`: Envoy's address strings and the `source_ip` key hash;
//! - `maglev`: [`MaglevTable`];
//! - `ring`: [`RingHash`];
//! - this module: the API they share ([`HashHost`] and Envoy's weight normalisation).

mod address;
mod hash;
mod maglev;
mod ring;

pub use address::{envoy_host_key, source_addr_hash, source_ip_hash};
pub use hash::{murmur2_64, xxhash64, MURMUR_STD_HASH_SEED};
pub use maglev::{is_prime, MaglevTable};
pub use ring::{RingHash, RingHashFunction};

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

/// Helpers the balancer tests share.
#[cfg(test)]
mod test_support {
    use super::HashHost;

    pub(super) fn keys(ports: impl IntoIterator<Item = u32>) -> Vec<String> {
        ports
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    pub(super) fn hosts<'a>(keys: &'a [String], weights: &[u32]) -> Vec<HashHost<'a>> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| HashHost {
                key,
                weight: weights.get(i).copied().unwrap_or(1),
            })
            .collect()
    }

    /// `keys` without the one at `removed`.
    pub(super) fn without(keys: &[String], removed: usize) -> Vec<String> {
        keys.iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, s)| s.clone())
            .collect()
    }
}
