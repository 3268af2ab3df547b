//! Sessions talking to each other through in-place buffers, as the worker drives them.

use super::settings::*;
use super::*;
use std::sync::Arc;

const CAP: usize = 64 * 1024;

/// The socket tests' PKI, shared by path.
#[path = "../../tests/support/pki.rs"]
#[allow(dead_code)]
mod pki;
use super::settings as tls_settings;
use pki::{client_settings, server_settings, Pki as Ca};

fn ca(name: &str) -> Ca {
    Ca::named(name)
}

fn leaf(ca: &Ca, dns: &[&str], uri: &[&str]) -> Certificate {
    ca.leaf(dns, uri)
}

/// One side as the worker holds it: its session and the bytes in flight to the other.
struct End {
    session: Session,
    /// Ciphertext written, not yet received by the peer.
    wire: Vec<u8>,
    /// Plaintext delivered to the application.
    app: Vec<u8>,
    /// The first bytes of a record not yet whole, put in front of the next receive's.
    carry: Vec<u8>,
    closed: bool,
}

impl End {
    fn new(session: Session) -> End {
        End {
            session,
            wire: Vec::new(),
            app: Vec::new(),
            carry: Vec::new(),
            closed: false,
        }
    }

    /// Writes what the session has pending, through a buffer as a worker would.
    fn flush(&mut self) {
        let mut buf = vec![0u8; CAP];
        loop {
            let n = self.session.write_pending(&mut buf);
            if n == 0 {
                break;
            }
            self.wire.extend_from_slice(&buf[..n]);
        }
    }

    /// Sends `plain` in receives of at most `CAP - TLS_SLACK`, encrypted in place.
    fn send(&mut self, plain: &[u8]) {
        for chunk in plain.chunks(CAP - TLS_SLACK as usize) {
            let mut buf = vec![0u8; CAP];
            buf[100..100 + chunk.len()].copy_from_slice(chunk);
            let n = self
                .session
                .encrypt_in_place(&mut buf, 100, chunk.len())
                .unwrap();
            self.wire.extend_from_slice(&buf[..n]);
            assert!(!self.session.wants_write(), "the records fit the buffer");
        }
    }
}

/// Moves `from`'s wire to `to` in segments of `segment` bytes (received at most
/// `CAP - TLS_SLACK` at a time, after the bytes of a record carried from the last receive,
/// as the worker does), decrypting in place.
fn deliver(from: &mut End, to: &mut End, segment: usize) -> Result<(), TlsError> {
    let wire = std::mem::take(&mut from.wire);
    let mut at = 0;
    while at < wire.len() {
        let carried = std::mem::take(&mut to.carry);
        let room = CAP - TLS_SLACK as usize - carried.len();
        let piece = &wire[at..(at + segment.min(room)).min(wire.len())];
        at += piece.len();
        let mut buf = vec![0u8; CAP];
        buf[..carried.len()].copy_from_slice(&carried);
        buf[carried.len()..carried.len() + piece.len()].copy_from_slice(piece);
        let d = to
            .session
            .decrypt_in_place(&mut buf, carried.len() + piece.len())?;
        assert!(d.tail_at >= d.plaintext, "the tail follows the plaintext");
        to.app.extend_from_slice(&buf[..d.plaintext]);
        to.carry = buf[d.tail_at..d.tail_at + d.tail_len].to_vec();
        to.closed |= d.peer_closed;
        to.flush();
    }
    Ok(())
}

fn handshake(client: &mut End, server: &mut End, segment: usize) -> Result<(), TlsError> {
    client.flush();
    for _ in 0..10 {
        deliver(client, server, segment)?;
        deliver(server, client, segment)?;
        if !client.session.is_handshaking() && !server.session.is_handshaking() {
            deliver(client, server, segment)?;
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn bytes_cross_both_ways_in_place_whatever_the_segmenting() {
    let ca = ca("root");
    let server_ctx = Arc::new(
        ServerContext::new(&server_settings(leaf(&ca, &["backend.example.com"], &[]))).unwrap(),
    );
    let client_ctx = ClientContext::new(&client_settings(&ca)).unwrap();
    for segment in [1usize, 7, 1400, 16 * 1024 + 5, 64 * 1024] {
        let mut client = End::new(Session::client(&client_ctx).unwrap());
        let mut server = End::new(Session::server(server_ctx.clone()));
        handshake(&mut client, &mut server, segment).unwrap();
        let up = pattern(300 * 1024 + 17, 1);
        let down = pattern(200 * 1024 + 3, 2);
        client.send(&up);
        server.send(&down);
        deliver(&mut client, &mut server, segment).unwrap();
        deliver(&mut server, &mut client, segment).unwrap();
        assert_eq!(server.app, up, "segment {segment}");
        assert_eq!(client.app, down, "segment {segment}");
        client.session.send_close_notify();
        client.flush();
        deliver(&mut client, &mut server, segment).unwrap();
        assert!(server.closed);
        let n = server.session.negotiated().unwrap();
        assert_eq!(n.version, "TLSv1.3");
    }
}

#[test]
fn a_second_connection_resumes_on_a_ticket_any_worker_can_open() {
    let ca = ca("root");
    let server_ctx = Arc::new(
        ServerContext::new(&server_settings(leaf(&ca, &["backend.example.com"], &[]))).unwrap(),
    );
    let client_ctx = ClientContext::new(&client_settings(&ca)).unwrap();
    let mut first = End::new(Session::client(&client_ctx).unwrap());
    let mut server = End::new(Session::server(server_ctx.clone()));
    handshake(&mut first, &mut server, 1400).unwrap();
    // The ticket comes after the handshake.
    server.flush();
    deliver(&mut server, &mut first, 1400).unwrap();
    assert!(!first.session.negotiated().unwrap().resumed);
    // Another server session of the same context stands for another worker.
    let mut second = End::new(Session::client(&client_ctx).unwrap());
    let mut other = End::new(Session::server(server_ctx.clone()));
    handshake(&mut second, &mut other, 1400).unwrap();
    assert!(second.session.negotiated().unwrap().resumed);
    assert!(other.session.negotiated().unwrap().resumed);
}

fn mtls(client_uri: &str, matcher: &str) -> Result<(), TlsError> {
    let ca = ca("mesh");
    let mut server = server_settings(leaf(&ca, &["backend.example.com"], &[]));
    server.validation = Some(Validation {
        trusted_ca: vec![ca.ca.clone()],
        crls: Vec::new(),
        san_matchers: vec![SanMatcher {
            san_type: SanType::Uri,
            matcher: StringMatch {
                pattern: StringPattern::Prefix(matcher.into()),
                ignore_case: false,
            },
        }],
        trusted_ca_source: None,
    });
    server.require_client_certificate = true;
    let mut client = client_settings(&ca);
    client.certificate = Some(leaf(&ca, &[], &[client_uri]));
    let server_ctx = Arc::new(ServerContext::new(&server).unwrap());
    let client_ctx = ClientContext::new(&client).unwrap();
    let mut c = End::new(Session::client(&client_ctx).unwrap());
    let mut s = End::new(Session::server(server_ctx));
    handshake(&mut c, &mut s, 4096)?;
    let peer = s.session.peer_certificates().unwrap();
    let sans = verify::PeerSans::of(peer[0].as_ref());
    assert_eq!(sans.uri, vec![client_uri.to_string()]);
    Ok(())
}

#[test]
fn a_client_certificate_is_accepted_by_its_spiffe_id_and_refused_by_another() {
    mtls(
        "spiffe://cluster.local/ns/default/sa/web",
        "spiffe://cluster.local/ns/default/",
    )
    .unwrap();
    let refused = mtls(
        "spiffe://cluster.local/ns/other/sa/web",
        "spiffe://cluster.local/ns/default/",
    );
    assert!(
        matches!(
            refused,
            Err(TlsError::Protocol(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
            )))
        ),
        "{refused:?}"
    );
}

#[test]
fn a_client_without_a_certificate_is_refused_when_one_is_required() {
    let ca = ca("mesh");
    let mut server = server_settings(leaf(&ca, &["backend.example.com"], &[]));
    server.validation = Some(Validation {
        trusted_ca: vec![ca.ca.clone()],
        ..Validation::default()
    });
    server.require_client_certificate = true;
    let server_ctx = Arc::new(ServerContext::new(&server).unwrap());
    let client_ctx = ClientContext::new(&client_settings(&ca)).unwrap();
    let mut c = End::new(Session::client(&client_ctx).unwrap());
    let mut s = End::new(Session::server(server_ctx));
    let r = handshake(&mut c, &mut s, 4096);
    assert!(r.is_err(), "{r:?}");
    assert!(s.session.is_failed() || c.session.is_failed());
}

#[test]
fn a_server_signed_by_another_root_fails_verification() {
    let root = ca("root");
    let other = ca("other");
    let server_ctx = Arc::new(
        ServerContext::new(&server_settings(leaf(
            &other,
            &["backend.example.com"],
            &[],
        )))
        .unwrap(),
    );
    let client_ctx = ClientContext::new(&client_settings(&root)).unwrap();
    let mut c = End::new(Session::client(&client_ctx).unwrap());
    let mut s = End::new(Session::server(server_ctx));
    let r = handshake(&mut c, &mut s, 4096);
    assert!(
        matches!(
            r,
            Err(TlsError::Protocol(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )))
        ),
        "{r:?}"
    );
    // The client queued an alert for the server.
    assert!(c.session.wants_write());
}

#[test]
fn garbage_instead_of_a_client_hello_fails_with_an_alert() {
    let ca = ca("root");
    let ctx = Arc::new(ServerContext::new(&server_settings(leaf(&ca, &["a"], &[]))).unwrap());
    let mut s = Session::server(ctx);
    let mut buf = vec![0u8; CAP];
    buf[..18].copy_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let r = s.decrypt_in_place(&mut buf, 18);
    assert!(matches!(r, Err(TlsError::Protocol(_))), "{r:?}");
    assert!(s.is_failed());
    let mut out = [0u8; 64];
    let n = s.write_pending(&mut out);
    assert!(n > 0 && out[0] == 21, "an alert record follows");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused_with_its_index() {
    let ca = ca("root");
    let mut cert = leaf(&ca, &["a"], &[]);
    cert.key = leaf(&ca, &["b"], &[]).key;
    let mut settings = server_settings(leaf(&ca, &["ok"], &[]));
    settings.certificates.push(cert);
    let err = ServerContext::new(&settings).unwrap_err();
    assert!(
        matches!(err, TlsConfigError::Certificate { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn alpn_is_agreed_when_shared_and_left_out_when_not() {
    let ca = ca("root");
    let mut server = server_settings(leaf(&ca, &["backend.example.com"], &[]));
    server.alpn = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let server_ctx = Arc::new(ServerContext::new(&server).unwrap());
    for (offered, agreed) in [
        (vec![b"http/1.1".to_vec()], Some(b"http/1.1".to_vec())),
        (vec![b"istio".to_vec()], None),
        (vec![], None),
    ] {
        let mut client = client_settings(&ca);
        client.alpn = offered.clone();
        let client_ctx = ClientContext::new(&client).unwrap();
        let mut c = End::new(Session::client(&client_ctx).unwrap());
        let mut s = End::new(Session::server(server_ctx.clone()));
        handshake(&mut c, &mut s, 4096).unwrap();
        assert_eq!(s.session.alpn().map(<[u8]>::to_vec), agreed, "{offered:?}");
    }
}

#[test]
fn tls_1_2_only_negotiates_1_2_with_the_chosen_suite() {
    let ca = ca("root");
    let mut server = server_settings(leaf(&ca, &["backend.example.com"], &[]));
    server.params = TlsParams {
        min_version: TlsVersion::V1_2,
        max_version: TlsVersion::V1_2,
        cipher_suites: Some(vec![CipherSuite::EcdheEcdsaChacha20Poly1305]),
        curves: Some(vec![Curve::P256]),
    };
    let server_ctx = Arc::new(ServerContext::new(&server).unwrap());
    let client_ctx = ClientContext::new(&client_settings(&ca)).unwrap();
    let mut c = End::new(Session::client(&client_ctx).unwrap());
    let mut s = End::new(Session::server(server_ctx));
    handshake(&mut c, &mut s, 4096).unwrap();
    let n = s.session.negotiated().unwrap();
    assert_eq!(n.version, "TLSv1.2");
    assert_eq!(n.cipher, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256");
    let up = pattern(100_000, 9);
    c.send(&up);
    deliver(&mut c, &mut s, 999).unwrap();
    assert_eq!(s.app, up);
}

/// rustls' own buffered connection, the record layer ours must interoperate with.
struct Peer {
    conn: rustls::Connection,
    wire: Vec<u8>,
    app: Vec<u8>,
    closed: bool,
}

impl Peer {
    fn new(mut conn: rustls::Connection) -> Peer {
        conn.set_buffer_limit(None);
        let mut peer = Peer {
            conn,
            wire: Vec::new(),
            app: Vec::new(),
            closed: false,
        };
        peer.flush();
        peer
    }

    fn flush(&mut self) {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.wire).unwrap();
        }
    }

    fn send(&mut self, plain: &[u8]) {
        use std::io::Write;
        self.conn.writer().write_all(plain).unwrap();
        self.flush();
    }

    /// Reads `wire` in segments of `segment` bytes.
    fn receive(&mut self, wire: &[u8], segment: usize) -> Result<(), rustls::Error> {
        use std::io::Read;
        for mut piece in wire.chunks(segment) {
            while !piece.is_empty() {
                self.conn.read_tls(&mut piece).unwrap();
                self.conn.process_new_packets()?;
                let mut buf = vec![0u8; CAP];
                loop {
                    match self.conn.reader().read(&mut buf) {
                        Ok(0) => {
                            self.closed = true;
                            break;
                        }
                        Ok(n) => self.app.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            self.flush();
        }
        Ok(())
    }
}

fn to_peer(end: &mut End, peer: &mut Peer, segment: usize) -> Result<(), rustls::Error> {
    let wire = std::mem::take(&mut end.wire);
    peer.receive(&wire, segment)
}

fn to_end(peer: &mut Peer, end: &mut End, segment: usize) -> Result<(), TlsError> {
    let mut from = End::new(Session::failed());
    from.wire = std::mem::take(&mut peer.wire);
    deliver(&mut from, end, segment)
}

fn handshake_with_peer(end: &mut End, peer: &mut Peer, segment: usize) {
    end.flush();
    for _ in 0..10 {
        to_peer(end, peer, segment).unwrap();
        to_end(peer, end, segment).unwrap();
        if !end.session.is_handshaking() && !peer.conn.is_handshaking() {
            to_peer(end, peer, segment).unwrap();
            to_end(peer, end, segment).unwrap();
            return;
        }
    }
    panic!("handshake with rustls did not finish");
}

/// A ring provider offering only `suite` (ring is deprecated only for lacking a
/// post-quantum group; see context.rs).
#[allow(deprecated)]
fn provider_with(suite: rustls::SupportedCipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    })
}

fn versions_of(
    suite: rustls::SupportedCipherSuite,
) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    match suite {
        rustls::SupportedCipherSuite::Tls13(_) => &TLS13,
        _ => &TLS12,
    }
}

/// Every suite the ring provider has, each spoken alone.
fn every_suite() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::*;
    vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ]
}

/// Data both ways, a key update each way on TLS 1.3, and `close_notify` each way, between
/// one of ours and rustls' own connection.
fn exchange_with_peer(end: &mut End, peer: &mut Peer, segment: usize, tls13: bool) {
    let up = pattern(200 * 1024 + 11, 3);
    let down = pattern(150 * 1024 + 7, 4);
    peer.send(&up);
    to_end(peer, end, segment).unwrap();
    end.send(&down);
    to_peer(end, peer, segment).unwrap();
    if tls13 {
        // The peer's key changes (and it asks for ours to); then ours on our own.
        peer.conn.refresh_traffic_keys().unwrap();
        peer.send(&up[..70_000]);
        to_end(peer, end, segment).unwrap();
        end.send(&down[..50_000]);
        to_peer(end, peer, segment).unwrap();
        end.session.request_key_update();
        end.send(&down[50_000..90_000]);
        to_peer(end, peer, segment).unwrap();
    }
    let mut want_up = up.clone();
    let mut want_down = down.clone();
    if tls13 {
        want_up.extend_from_slice(&up[..70_000]);
        want_down.extend_from_slice(&down[..90_000]);
    }
    assert_eq!(end.app, want_up, "what rustls sent, segment {segment}");
    assert_eq!(peer.app, want_down, "what we sent, segment {segment}");
    end.session.send_close_notify();
    end.flush();
    to_peer(end, peer, segment).unwrap();
    assert!(peer.closed, "rustls read our close_notify");
    peer.conn.send_close_notify();
    peer.flush();
    to_end(peer, end, segment).unwrap();
    assert!(end.closed, "we read rustls' close_notify");
}

#[test]
fn our_records_interoperate_with_rustls_own_record_layer_every_suite_both_roles() {
    let ca = ca("root");
    let cert = leaf(&ca, &["backend.example.com"], &[]);
    let mut server = server_settings(cert.clone());
    server.params.min_version = TlsVersion::V1_2;
    server.params.max_version = TlsVersion::V1_3;
    let server_ctx = Arc::new(ServerContext::new(&server).unwrap());
    let mut client = client_settings(&ca);
    client.params.max_version = TlsVersion::V1_3;
    let client_ctx = ClientContext::new(&client).unwrap();
    for suite in every_suite() {
        let tls13 = matches!(suite, rustls::SupportedCipherSuite::Tls13(_));
        for segment in [1usize, 1400, 16 * 1024 + 5, 48 * 1024] {
            // Ours terminates; rustls' client speaks only `suite`.
            let config = rustls::ClientConfig::builder_with_provider(provider_with(suite))
                .with_protocol_versions(versions_of(suite))
                .unwrap()
                .with_root_certificates(ca.roots())
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("backend.example.com").unwrap();
            let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
            let mut peer = Peer::new(conn.into());
            let mut end = End::new(Session::server(server_ctx.clone()));
            handshake_with_peer(&mut end, &mut peer, segment);
            let n = end.session.negotiated().unwrap();
            assert_eq!(n.suite, Some(suite.suite()), "{suite:?}");
            exchange_with_peer(&mut end, &mut peer, segment, tls13);

            // Ours originates; rustls' server speaks only `suite`.
            let config = rustls::ServerConfig::builder_with_provider(provider_with(suite))
                .with_protocol_versions(versions_of(suite))
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(pki::chain_der(&cert), pki::key_der(&cert))
                .unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut peer = Peer::new(conn.into());
            let mut end = End::new(Session::client(&client_ctx).unwrap());
            handshake_with_peer(&mut end, &mut peer, segment);
            assert_eq!(end.session.negotiated().unwrap().suite, Some(suite.suite()));
            exchange_with_peer(&mut end, &mut peer, segment, tls13);
        }
    }
}

/// One of ours terminating, established with rustls' default client.
fn terminating_for_rustls() -> (End, Peer) {
    let ca = ca("root");
    let server_ctx = Arc::new(
        ServerContext::new(&server_settings(leaf(&ca, &["backend.example.com"], &[]))).unwrap(),
    );
    let conn = rustls::ClientConnection::new(
        pki::client_config(&ca, None),
        rustls::pki_types::ServerName::try_from("backend.example.com").unwrap(),
    )
    .unwrap();
    let mut peer = Peer::new(conn.into());
    let mut end = End::new(Session::server(server_ctx));
    handshake_with_peer(&mut end, &mut peer, 4096);
    (end, peer)
}

#[test]
fn a_tampered_record_fails_the_session_with_bad_record_mac_for_the_peer() {
    let (mut end, mut peer) = terminating_for_rustls();
    peer.send(b"hello, with one bit changed on the way");
    let last = peer.wire.len() - 20;
    peer.wire[last] ^= 1;
    let err = to_end(&mut peer, &mut end, 4096).unwrap_err();
    assert_eq!(
        err,
        TlsError::Record(record::RecordError::BadRecordMac),
        "{err}"
    );
    assert!(
        end.app.is_empty(),
        "nothing unauthenticated reached the application"
    );
    assert!(end.session.is_failed());
    end.flush();
    let alert = to_peer(&mut end, &mut peer, 4096).unwrap_err();
    assert_eq!(
        alert,
        rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
    );
}

#[test]
fn a_record_longer_than_tls_allows_fails_as_soon_as_its_header_is_in() {
    let (mut end, mut peer) = terminating_for_rustls();
    // An application-data header announcing 2^14 + 257 bytes, and nothing after it.
    peer.wire = vec![23, 3, 3, 0x41, 0x01];
    let err = to_end(&mut peer, &mut end, 4096).unwrap_err();
    assert_eq!(err, TlsError::Record(record::RecordError::RecordOverflow));
}
