//! The data plane alone, through real sockets: a hand-built FIB, echo backends on loopback.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use switchyard_dataplane::accesslog::AccessLogQueues;
use switchyard_dataplane::fib::*;
use switchyard_dataplane::plane::{DataPlane, PlaneConfig};
use switchyard_dataplane::stats::*;
use switchyard_dataplane::worker::Limits;

fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(64) {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn fib(listen: SocketAddr, backends: &[SocketAddr], workers: usize) -> Fib {
    let cluster = Cluster {
        name: "echo".into(),
        connect_timeout_ms: 1000,
        lb_policy: LbPolicy::RoundRobin,
        endpoints: backends
            .iter()
            .map(|a| Endpoint {
                address: *a,
                weight: 1,
                stats: Arc::new(HostStats::new(a.to_string(), workers)),
            })
            .collect(),
        stats: Arc::new(ClusterStats::new("echo", workers)),
    };
    let chain = FilterChain {
        name: "".into(),
        matcher: ChainMatch::default(),
        tcp_proxy: TcpProxy {
            stats: Arc::new(TcpStats::new("l4", workers)),
            route: Route::Cluster(ClusterId(0)),
            idle_timeout_ms: None,
            max_connect_attempts: 2,
            access_logs: vec![],
        },
    };
    Fib {
        generation: 1,
        listeners: vec![Listener {
            name: "gw".into(),
            address: listen,
            filter_chains: vec![chain],
            default_chain: None,
            backlog: 128,
            stats: Arc::new(ListenerStats::new(listener_stat_name(&listen), workers)),
        }],
        clusters: vec![cluster],
    }
}

#[test]
fn echo_through_the_plane() {
    let backend = echo_backend();
    let listen = free_port();
    let workers = 1;
    let plane = DataPlane::start(
        PlaneConfig {
            cpus: vec![0],
            pin: false,
            limits: Limits::default(),
            drain_time: Duration::from_secs(1),
        },
        Arc::new(ServerStats::new("server", workers)),
        Arc::new(AccessLogQueues::new(workers, 64)),
    )
    .expect("start");
    let f = Arc::new(fib(listen, &[backend], workers));
    plane.publish(f.clone()).expect("publish");
    for round in 0..3 {
        let mut c = TcpStream::connect(listen).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + round) as u8).collect();
        let m2 = msg.clone();
        let mut w = c.try_clone().unwrap();
        let t = std::thread::spawn(move || {
            w.write_all(&m2).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        assert_eq!(got.len(), msg.len());
        assert!(got == msg);
    }
    let tcp = &f.listeners[0].filter_chains[0].tcp_proxy.stats;
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tcp.get(TcpStat::DownstreamCxTotal), 3);
    assert_eq!(tcp.get(TcpStat::DownstreamCxRxBytesTotal), 600_000);
    assert_eq!(tcp.get(TcpStat::DownstreamCxTxBytesTotal), 600_000);
    assert_eq!(f.clusters[0].stats.get(ClusterStat::UpstreamCxTotal), 3);
    assert_eq!(tcp.gauge(TcpStat::DownstreamCxActive), 0);
    plane.shutdown(Duration::from_millis(100));
}
