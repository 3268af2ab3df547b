//! Values filed under address prefixes, found by hash lookups: one per distinct prefix
//! length filed (at most 33 for IPv4, 129 for IPv6), whatever the number of prefixes.
//!
//! Guarantees:
//! - **Same containment as [`CidrRange::contains`]**: an IPv4-mapped IPv6 address is looked
//!   up as IPv4; an IPv4 prefix never holds an IPv6 address, nor the other way round; the
//!   bits of a prefix's address past its length are ignored.
//! - **No allocation** on lookup; building allocates.

use super::CidrRange;
use std::collections::HashMap;
use std::net::IpAddr;

/// Values filed by prefix, per address family and prefix length (ascending lengths).
#[derive(Debug, Clone)]
pub(crate) struct PrefixMap<V> {
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(ip: u32, len: u8) -> u32 {
    match len {
        0 => 0,
        l => ip & (u32::MAX << (32 - u32::from(l.min(32)))),
    }
}

fn mask6(ip: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l => ip & (u128::MAX << (128 - u32::from(l.min(128)))),
    }
}

/// An address as Envoy reads it: an IPv4-mapped IPv6 address (a dual-stack socket's IPv4
/// peer) is the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `range` with its address masked to its length (the length capped to the family's):
/// two ranges that hold the same addresses are equal.
pub(crate) fn normalized(range: CidrRange) -> CidrRange {
    let (address, prefix_len) = match range.address {
        IpAddr::V4(a) => {
            let len = range.prefix_len.min(32);
            (IpAddr::V4(mask4(u32::from(a), len).into()), len)
        }
        IpAddr::V6(a) => {
            let len = range.prefix_len.min(128);
            (IpAddr::V6(mask6(u128::from(a), len).into()), len)
        }
    };
    CidrRange {
        address,
        prefix_len,
    }
}

/// Files `value` under `key` of the table for `len`, creating it in ascending order.
fn file<K: std::hash::Hash + Eq, V>(
    tables: &mut Vec<(u8, HashMap<K, Vec<V>>)>,
    len: u8,
    key: K,
    value: V,
) {
    let at = match tables.binary_search_by_key(&len, |(l, _)| *l) {
        Ok(at) => at,
        Err(at) => {
            tables.insert(at, (len, HashMap::new()));
            at
        }
    };
    tables[at].1.entry(key).or_default().push(value);
}

impl<V> PrefixMap<Vec<V>> {
    /// The values of `entries` grouped by prefix (in the order given within a group).
    pub(crate) fn grouped(entries: impl IntoIterator<Item = (CidrRange, V)>) -> Self {
        let mut map = PrefixMap::default();
        for (range, value) in entries {
            let range = normalized(range);
            match range.address {
                IpAddr::V4(a) => file(&mut map.v4, range.prefix_len, u32::from(a), value),
                IpAddr::V6(a) => file(&mut map.v6, range.prefix_len, u128::from(a), value),
            }
        }
        map
    }
}

impl<V> PrefixMap<V> {
    /// The same prefixes, each value mapped by `f`.
    pub(crate) fn map_values<W>(self, mut f: impl FnMut(V) -> W) -> PrefixMap<W> {
        PrefixMap {
            v4: map_tables(self.v4, &mut f),
            v6: map_tables(self.v6, &mut f),
        }
    }

    /// The value filed under the longest prefix that holds `ip`.
    pub(crate) fn longest(&self, ip: IpAddr) -> Option<&V> {
        match canonical(ip) {
            IpAddr::V4(a) => self
                .v4
                .iter()
                .rev()
                .find_map(|(len, map)| map.get(&mask4(u32::from(a), *len))),
            IpAddr::V6(a) => self
                .v6
                .iter()
                .rev()
                .find_map(|(len, map)| map.get(&mask6(u128::from(a), *len))),
        }
    }

    /// Calls `f` with the value filed under each prefix that holds `ip`, shortest first.
    pub(crate) fn each_holding(&self, ip: IpAddr, mut f: impl FnMut(&V)) {
        match canonical(ip) {
            IpAddr::V4(a) => self
                .v4
                .iter()
                .filter_map(|(len, map)| map.get(&mask4(u32::from(a), *len)))
                .for_each(&mut f),
            IpAddr::V6(a) => self
                .v6
                .iter()
                .filter_map(|(len, map)| map.get(&mask6(u128::from(a), *len)))
                .for_each(&mut f),
        }
    }
}

fn map_tables<K: std::hash::Hash + Eq, V, W>(
    tables: Vec<(u8, HashMap<K, V>)>,
    f: &mut impl FnMut(V) -> W,
) -> Vec<(u8, HashMap<K, W>)> {
    tables
        .into_iter()
        .map(|(len, map)| (len, map.into_iter().map(|(k, v)| (k, f(v))).collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(ranges: &[&str]) -> PrefixMap<Vec<usize>> {
        PrefixMap::grouped(
            ranges
                .iter()
                .enumerate()
                .map(|(i, r)| (r.parse().unwrap(), i)),
        )
    }

    #[test]
    fn longest_prefix_of_the_address_family() {
        let m = map(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3/16",
            "0.0.0.0/0",
            "fd00::/8",
        ]);
        let longest = |ip: &str| m.longest(ip.parse().unwrap()).cloned();
        assert_eq!(longest("10.1.9.9"), Some(vec![1, 2]));
        assert_eq!(longest("10.2.9.9"), Some(vec![0]));
        assert_eq!(longest("::ffff:10.2.9.9"), Some(vec![0]));
        assert_eq!(longest("11.0.0.1"), Some(vec![3]));
        assert_eq!(longest("fd00::1"), Some(vec![4]));
        assert_eq!(longest("fe00::1"), None);
    }

    #[test]
    fn each_holding_goes_shortest_first() {
        let m = map(&["10.1.0.0/16", "10.0.0.0/8", "::/0"]);
        let mut seen: Vec<usize> = Vec::new();
        m.each_holding("10.1.2.3".parse().unwrap(), |v| seen.extend(v));
        assert_eq!(seen, vec![1, 0]);
        let r: CidrRange = "10.1.2.3/8".parse().unwrap();
        assert_eq!(normalized(r), "10.0.0.0/8".parse().unwrap());
    }
}
