//! A client and a server `h2` connection driven by hand over two [`Wire`]s, as a worker
//! would drive them over its sockets: HBONE's CONNECT stream both ways.

use super::*;
use bytes::Bytes;
use h2::{client, server, Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};

/// Moves what each side wrote to the other; true when any byte moved.
fn shuttle(client: &Wire, server: &Wire) -> bool {
    let (up, down) = (client.take_output(), server.take_output());
    server.feed(&up);
    client.feed(&down);
    !up.is_empty() || !down.is_empty()
}

type ClientConn = client::Connection<Wire, Bytes>;
type ServerConn = server::Connection<Wire, Bytes>;

/// Both connections after their handshakes, with the client's request handle.
struct Pair {
    cw: Wire,
    sw: Wire,
    client: ClientConn,
    server: ServerConn,
    send: client::SendRequest<Bytes>,
}

/// Each stream's window (HTTP/2's default) and the connection's: room for a hundred stalled
/// streams, so that one reader that stops reading holds up only its own stream (with the
/// default connection window, as large as one stream's, it would hold up every stream).
const STREAM_WINDOW: u32 = 65_535;
const CONNECTION_WINDOW: u32 = 100 * STREAM_WINDOW;

fn handshake() -> Pair {
    let (cw, sw) = (Wire::default(), Wire::default());
    let mut c = Box::pin(
        client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(cw.clone()),
    );
    let mut s = Box::pin(
        server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(sw.clone()),
    );
    let (mut client_side, mut server_side) = (None, None);
    for _ in 0..20 {
        if client_side.is_none() {
            if let Poll::Ready(r) = poll_once(&mut c) {
                client_side = Some(r.expect("client handshake"));
            }
        }
        if server_side.is_none() {
            if let Poll::Ready(r) = poll_once(&mut s) {
                server_side = Some(r.expect("server handshake"));
            }
        }
        shuttle(&cw, &sw);
        if client_side.is_some() && server_side.is_some() {
            break;
        }
    }
    let (send, client) = client_side.expect("the client's handshake ended");
    Pair {
        cw,
        sw,
        client,
        server: server_side.expect("the server's handshake ended"),
        send,
    }
}

impl Pair {
    /// Polls both connections and moves bytes until nothing moves; the server's new streams.
    fn pump(&mut self) -> Vec<(Request<RecvStream>, server::SendResponse<Bytes>)> {
        let mut accepted = Vec::new();
        for _ in 0..10_000 {
            let _ = poll_once(&mut self.client);
            while let Poll::Ready(Some(r)) = poll_fn_once(|cx| self.server.poll_accept(cx)) {
                accepted.push(r.expect("a stream"));
            }
            if !shuttle(&self.cw, &self.sw) {
                let _ = poll_once(&mut self.client);
                let _ = poll_fn_once(|cx| self.server.poll_accept(cx));
                if !shuttle(&self.cw, &self.sw) {
                    break;
                }
            }
        }
        accepted
    }

    /// A CONNECT stream to `authority`, answered 200: the client's and the server's ends.
    fn connect(&mut self, authority: &str) -> (Stream, Stream) {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap();
        let (mut response, client_tx) = self.send.send_request(req, false).expect("a request");
        let mut accepted = self.pump();
        assert_eq!(accepted.len(), 1);
        let (req, mut respond) = accepted.pop().unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().authority().unwrap().as_str(), authority);
        let ok = Response::builder().status(StatusCode::OK).body(()).unwrap();
        let server_tx = respond.send_response(ok, false).expect("a response");
        self.pump();
        let Poll::Ready(r) = poll_once(&mut response) else {
            panic!("the response arrived")
        };
        let r = r.expect("a 200");
        assert_eq!(r.status(), StatusCode::OK);
        (
            Stream {
                tx: client_tx,
                rx: r.into_body(),
            },
            Stream {
                tx: server_tx,
                rx: req.into_body(),
            },
        )
    }
}

/// One end of a stream.
struct Stream {
    tx: SendStream<Bytes>,
    rx: RecvStream,
}

/// What a stream's receive side holds now: its bytes (capacity released as read), and
/// whether END_STREAM came, or the reset's reason.
fn drain(rx: &mut RecvStream, into: &mut Vec<u8>) -> Result<bool, Reason> {
    loop {
        match poll_fn_once(|cx| rx.poll_data(cx)) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = rx.flow_control().release_capacity(data.len());
                into.extend_from_slice(&data);
            }
            Poll::Ready(Some(Err(e))) => return Err(e.reason().unwrap_or(Reason::INTERNAL_ERROR)),
            Poll::Ready(None) => return Ok(true),
            Poll::Pending => return Ok(false),
        }
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn a_connect_stream_carries_a_mebibyte_each_way_and_half_closes_both_ways() {
    let mut p = handshake();
    let (mut c, mut s) = p.connect("10.0.0.5:8080");
    let (up, down) = (pattern(1 << 20, 1), pattern(1 << 20, 2));
    // Sent in 16 KiB pieces, as a relay's receives would give them.
    for piece in up.chunks(16 << 10) {
        c.tx.send_data(Bytes::copy_from_slice(piece), false)
            .unwrap();
    }
    for piece in down.chunks(16 << 10) {
        s.tx.send_data(Bytes::copy_from_slice(piece), false)
            .unwrap();
    }
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        p.pump();
        drain(&mut s.rx, &mut got_up).unwrap();
        drain(&mut c.rx, &mut got_down).unwrap();
        if got_up.len() == up.len() && got_down.len() == down.len() {
            break;
        }
    }
    assert!(
        got_up == up,
        "client to server, byte-exact ({} B)",
        got_up.len()
    );
    assert!(
        got_down == down,
        "server to client, byte-exact ({} B)",
        got_down.len()
    );
    // A FIN is END_STREAM: the client half-closes, the server still sends, then closes.
    c.tx.send_data(Bytes::new(), true).unwrap();
    p.pump();
    assert_eq!(
        drain(&mut s.rx, &mut got_up),
        Ok(true),
        "END_STREAM reached the server"
    );
    s.tx.send_data(Bytes::from_static(b"after your FIN"), true)
        .unwrap();
    p.pump();
    let mut tail = Vec::new();
    assert_eq!(drain(&mut c.rx, &mut tail), Ok(true));
    assert_eq!(tail, b"after your FIN");
}

#[test]
fn a_reset_either_way_is_rst_stream_and_leaves_the_other_streams_alone() {
    let mut p = handshake();
    let (mut a_client, mut a_server) = p.connect("10.0.0.5:1");
    let (mut b_client, mut b_server) = p.connect("10.0.0.6:2");
    a_client.tx.send_reset(Reason::CANCEL);
    b_server.tx.send_reset(Reason::CONNECT_ERROR);
    p.pump();
    let mut sink = Vec::new();
    assert_eq!(drain(&mut a_server.rx, &mut sink), Err(Reason::CANCEL));
    assert_eq!(
        drain(&mut b_client.rx, &mut sink),
        Err(Reason::CONNECT_ERROR)
    );
    // A third stream on the same connection still works.
    let (mut c_client, mut c_server) = p.connect("10.0.0.7:3");
    c_client
        .tx
        .send_data(Bytes::from_static(b"still here"), true)
        .unwrap();
    p.pump();
    let mut got = Vec::new();
    assert_eq!(drain(&mut c_server.rx, &mut got), Ok(true));
    assert_eq!(got, b"still here");
    drop((a_client, b_server));
}

#[test]
fn a_hundred_streams_share_one_connection_and_a_slow_reader_stalls_only_its_own() {
    let mut p = handshake();
    let mut streams: Vec<(Stream, Stream)> = (0..100)
        .map(|i| p.connect(&format!("10.0.1.{}:{}", i % 250, 1000 + i)))
        .collect();
    // Stream 0's reader never reads: its window (64 KiB by default) fills, and only it waits.
    let big = pattern(256 << 10, 7);
    streams[0]
        .0
        .tx
        .send_data(Bytes::from(big.clone()), false)
        .unwrap();
    for (i, (client, _)) in streams.iter_mut().enumerate().skip(1) {
        client
            .tx
            .send_data(Bytes::from(pattern(32 << 10, i as u8)), true)
            .unwrap();
    }
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); 100];
    let mut ended = [false; 100];
    for _ in 0..200 {
        p.pump();
        for (i, (_, server)) in streams.iter_mut().enumerate().skip(1) {
            if !ended[i] {
                ended[i] = drain(&mut server.rx, &mut got[i]).unwrap();
            }
        }
        if ended[1..].iter().all(|e| *e) {
            break;
        }
    }
    for (i, g) in got.iter().enumerate().skip(1) {
        assert!(ended[i] && *g == pattern(32 << 10, i as u8), "stream {i}");
    }
    // The slow stream holds what its window allowed, no more; nothing was lost: read on.
    let mut slow = Vec::new();
    drain(&mut streams[0].1.rx, &mut slow).unwrap();
    assert!(
        !slow.is_empty() && slow.len() <= STREAM_WINDOW as usize,
        "{} B waited for the slow reader",
        slow.len()
    );
    for _ in 0..100 {
        drain(&mut streams[0].1.rx, &mut slow).unwrap();
        p.pump();
        if slow.len() == big.len() {
            break;
        }
    }
    assert!(
        slow == big,
        "the slow stream's bytes, whole ({} B)",
        slow.len()
    );
}
