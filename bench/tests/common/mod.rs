//! Helpers shared by the integration tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use switchyard_bench::Server;

/// 127.0.0.1 with port 0 (the kernel picks one).
pub fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Server counters are updated after the client has seen its data; wait until the server has
/// closed every connection so they are final.
pub fn settle(server: &Server) {
    for _ in 0..500 {
        if server.stats().connections_active == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("server still has open connections: {:?}", server.stats());
}
