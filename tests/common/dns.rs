//! [`DnsServer`]: a small authoritative DNS server in threads of the test process, on
//! 127.0.0.1 (UDP and TCP on one port), for the DNS cluster tests. It answers A and AAAA
//! queries from a zone the test changes while the proxy runs ([`DnsServer::set`]), answers a
//! name it does not have with NXDOMAIN, can answer SERVFAIL for a name, and logs every query
//! (name, type, transport, when). Never the machine's resolver, never the network: a proxy
//! is pointed at it through the c-ares `resolvers` of its bootstrap.

use super::BACKEND_LIFETIME;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Query types.
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;

/// What the server has for one name.
#[derive(Debug, Clone, Default)]
pub struct DnsRecord {
    pub a: Vec<Ipv4Addr>,
    pub aaaa: Vec<Ipv6Addr>,
    /// TTL of every record (seconds).
    pub ttl: u32,
    /// Answer SERVFAIL instead.
    pub servfail: bool,
}

/// One query the server received.
#[derive(Debug, Clone)]
pub struct DnsQuery {
    pub name: String,
    pub qtype: u16,
    pub tcp: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    zone: Mutex<HashMap<String, DnsRecord>>,
    log: Mutex<Vec<DnsQuery>>,
}

/// The running server; stopped when dropped.
#[derive(Debug)]
pub struct DnsServer {
    /// 127.0.0.1 and the port, for UDP and TCP.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A name as the zone keys it: lower case, no final dot.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Listens on 127.0.0.1 on a port free for both UDP and TCP.
    pub fn start() -> DnsServer {
        let (udp, tcp) = (0..64)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = udp.local_addr().ok()?.port();
                let tcp = TcpListener::bind(("127.0.0.1", port)).ok()?;
                Some((udp, tcp))
            })
            .expect("a port free for UDP and TCP");
        let addr = udp.local_addr().expect("local addr");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("udp timeout");
        tcp.set_nonblocking(true).expect("tcp nonblocking");
        let shared = Arc::new(Shared::default());
        let threads = vec![
            thread::spawn({
                let shared = shared.clone();
                move || serve_udp(&udp, &shared)
            }),
            thread::spawn({
                let shared = shared.clone();
                move || serve_tcp(&tcp, &shared)
            }),
        ];
        DnsServer {
            addr,
            shared,
            threads,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers `name` with these records from now on.
    pub fn set(&self, name: &str, record: DnsRecord) {
        let mut zone = self.shared.zone.lock().expect("zone");
        zone.insert(key(name), record);
    }

    /// Answers `name` with these IPv4 addresses (TTL 1 s).
    pub fn set_a(&self, name: &str, a: &[Ipv4Addr]) {
        self.set(
            name,
            DnsRecord {
                a: a.to_vec(),
                ttl: 1,
                ..Default::default()
            },
        );
    }

    /// Forgets `name`: NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        self.shared.zone.lock().expect("zone").remove(&key(name));
    }

    /// Answers SERVFAIL for `name` from now on.
    pub fn servfail(&self, name: &str) {
        self.set(
            name,
            DnsRecord {
                servfail: true,
                ..Default::default()
            },
        );
    }

    /// Every query for `name` so far.
    pub fn queries(&self, name: &str) -> Vec<DnsQuery> {
        let name = key(name);
        let log = self.shared.log.lock().expect("log");
        log.iter().filter(|q| q.name == name).cloned().collect()
    }

    /// Every query so far.
    pub fn all_queries(&self) -> Vec<DnsQuery> {
        self.shared.log.lock().expect("log").clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let deadline = Instant::now() + BACKEND_LIFETIME;
    let mut buf = [0u8; 1500];
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = answer(&buf[..n], false, shared) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    let deadline = Instant::now() + BACKEND_LIFETIME;
    while !shared.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => {
                let shared = shared.clone();
                thread::spawn(move || serve_tcp_conn(s, &shared));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Length-prefixed messages until the client closes (at most 64, 5 s idle).
fn serve_tcp_conn(mut s: TcpStream, shared: &Shared) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    for _ in 0..64 {
        let mut len = [0u8; 2];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if s.read_exact(&mut msg).is_err() {
            return;
        }
        let Some(reply) = answer(&msg, true, shared) else {
            return;
        };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// The reply to one query message (`None` for something that is not one).
fn answer(query: &[u8], tcp: bool, shared: &Shared) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = usize::from(*query.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_string());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question_end = i + 4;
    query.get(..question_end)?;
    let name = key(&labels.join("."));
    shared.log.lock().expect("log").push(DnsQuery {
        name: name.clone(),
        qtype,
        tcp,
        at: Instant::now(),
    });
    let record = shared.zone.lock().expect("zone").get(&name).cloned();
    let mut rcode = 0u8;
    let mut answers: Vec<Vec<u8>> = Vec::new();
    match &record {
        None => rcode = RCODE_NXDOMAIN,
        Some(r) if r.servfail => rcode = RCODE_SERVFAIL,
        Some(r) => {
            let rr = |rtype: u16, data: &[u8]| {
                // A pointer to the question's name (offset 12).
                let mut v = vec![0xc0, 0x0c];
                v.extend_from_slice(&rtype.to_be_bytes());
                v.extend_from_slice(&1u16.to_be_bytes());
                v.extend_from_slice(&r.ttl.to_be_bytes());
                v.extend_from_slice(&(data.len() as u16).to_be_bytes());
                v.extend_from_slice(data);
                v
            };
            if qtype == TYPE_A {
                answers.extend(r.a.iter().map(|a| rr(TYPE_A, &a.octets())));
            }
            if qtype == TYPE_AAAA {
                answers.extend(r.aaaa.iter().map(|a| rr(TYPE_AAAA, &a.octets())));
            }
        }
    }
    // Header: the query's id; QR, AA, the query's RD, RA; the code; one question.
    let rd = query[2] & 0x01;
    let mut reply = vec![
        query[0],
        query[1],
        0x84 | rd,
        0x80 | rcode,
        0,
        1,
        0,
        answers.len() as u8,
        0,
        0,
        0,
        0,
    ];
    reply.extend_from_slice(&query[12..question_end]);
    for a in answers {
        reply.extend_from_slice(&a);
    }
    Some(reply)
}
