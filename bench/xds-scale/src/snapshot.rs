//! The resources the benchmark serves: `clusters` EDS clusters of `endpoints_per_cluster`
//! endpoints each, and two tcp_proxy listeners.
//!
//! Every endpoint address is a loopback address (127.0.0.0/8): most are never dialled, and
//! those that are (the clusters the listeners route to) are real backends on 127.0.0.1.

use envoy_types::pb::google::protobuf::Any;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use switchyard_control::xds::fixtures::{
    assignment, eds_cluster, tcp_proxy_listener, TCP_PROXY_TYPE,
};

/// The name of cluster `i`.
pub fn cluster_name(i: usize) -> String {
    format!("c{i:05}")
}

/// The placeholder address of endpoint `j` of cluster `i`: distinct across the snapshot,
/// always in 127.0.0.0/8.
pub fn placeholder(i: usize, j: usize, per_cluster: usize) -> SocketAddr {
    let k = (i * per_cluster + j) as u32;
    let ip = Ipv4Addr::new(127, 1 + (k >> 16) as u8, (k >> 8) as u8, k as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 10_000 + (j as u16 % 1000)))
}

/// A tcp_proxy listener on `addr` to `cluster`.
pub fn listener(name: &str, addr: SocketAddr, cluster: &str) -> Any {
    let ip = addr.ip().to_string();
    tcp_proxy_listener(name, &ip, addr.port().into(), cluster, TCP_PROXY_TYPE)
}

/// Where each cluster's endpoints are: placeholders, except for the clusters given real
/// backends.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub clusters: Vec<Vec<SocketAddr>>,
    pub listeners: Vec<(String, SocketAddr, String)>,
}

impl Snapshot {
    /// `clusters` clusters of `per_cluster` placeholder endpoints, no listeners.
    pub fn new(clusters: usize, per_cluster: usize) -> Snapshot {
        Snapshot {
            clusters: (0..clusters)
                .map(|i| {
                    (0..per_cluster)
                        .map(|j| placeholder(i, j, per_cluster))
                        .collect()
                })
                .collect(),
            listeners: Vec::new(),
        }
    }

    /// Every cluster resource.
    pub fn cluster_resources(&self) -> Vec<Any> {
        (0..self.clusters.len())
            .map(|i| eds_cluster(&cluster_name(i)))
            .collect()
    }

    /// The assignment of cluster `i`.
    pub fn assignment_resource(&self, i: usize) -> Any {
        assignment(&cluster_name(i), &self.clusters[i])
    }

    /// Every listener resource.
    pub fn listener_resources(&self) -> Vec<Any> {
        self.listeners
            .iter()
            .map(|(name, addr, cluster)| listener(name, *addr, cluster))
            .collect()
    }

    /// The index of the cluster named `name` (`c00042` -> 42).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix('c')?.parse().ok()?;
        (i < self.clusters.len()).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_distinct_loopback_addresses() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            for j in 0..10 {
                let a = placeholder(i, j, 10);
                assert!(a.ip().is_loopback(), "{a}");
                assert!(seen.insert(a), "{a} twice");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        let s = Snapshot::new(12, 2);
        assert_eq!(s.index_of(&cluster_name(11)), Some(11));
        assert_eq!(s.index_of("c00012"), None);
        assert_eq!(s.index_of("x1"), None);
    }
}
