//! Socket helpers shared by the client modes: connect with timeouts (and a TLS handshake when
//! the run has TLS), full reads and writes that classify their failures, and close with FIN or
//! RST. [`Conn`] is a plain or a TLS connection behind one `Read + Write`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorClass, Failure};
use crate::pattern::PatternVerifier;
use crate::tls::{self, ClientTls, TlsClient};

/// A PROXY protocol header (HAProxy's `proxy-protocol.txt`) the client sends first on every
/// connection, as a load balancer in front of the proxy would, declaring the connection's own
/// addresses: version 1 (text) or version 2 (binary, `PROXY` command, no TLVs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyHeader {
    V1,
    V2,
}

impl ProxyHeader {
    /// `v1` or `v2`.
    pub fn name(self) -> &'static str {
        match self {
            ProxyHeader::V1 => "v1",
            ProxyHeader::V2 => "v2",
        }
    }

    /// Writes the header declaring `src` -> `dst` into `out` (108 bytes hold either
    /// version); its length. Addresses of two families are declared as `UNKNOWN`/`UNSPEC`.
    fn write(self, src: SocketAddr, dst: SocketAddr, out: &mut [u8; 108]) -> usize {
        let same = src.is_ipv4() == dst.is_ipv4();
        match self {
            ProxyHeader::V1 => {
                let mut cursor = io::Cursor::new(&mut out[..]);
                let written = if same {
                    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                    write!(
                        cursor,
                        "PROXY {family} {} {} {} {}\r\n",
                        src.ip(),
                        dst.ip(),
                        src.port(),
                        dst.port()
                    )
                } else {
                    cursor.write_all(b"PROXY UNKNOWN\r\n")
                };
                written.expect("a version 1 header fits 108 bytes");
                cursor.position() as usize
            }
            ProxyHeader::V2 => {
                out[..12].copy_from_slice(b"\r\n\r\n\0\r\nQUIT\n");
                out[12] = 0x21;
                let mut at = 16;
                let mut put = |bytes: &[u8], at: &mut usize| {
                    out[*at..*at + bytes.len()].copy_from_slice(bytes);
                    *at += bytes.len();
                };
                let family = match (src, dst) {
                    (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                        put(&s.ip().octets(), &mut at);
                        put(&d.ip().octets(), &mut at);
                        0x11
                    }
                    (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                        put(&s.ip().octets(), &mut at);
                        put(&d.ip().octets(), &mut at);
                        0x21
                    }
                    _ => 0x00,
                };
                if family != 0 {
                    put(&src.port().to_be_bytes(), &mut at);
                    put(&dst.port().to_be_bytes(), &mut at);
                }
                out[13] = family;
                out[14..16].copy_from_slice(&((at - 16) as u16).to_be_bytes());
                at
            }
        }
    }
}

/// Sends `header` (if any) on a new connection, declaring its own local and peer addresses.
pub(crate) fn send_proxy_header(
    tcp: &mut TcpStream,
    header: Option<ProxyHeader>,
) -> Result<(), Failure> {
    let Some(header) = header else {
        return Ok(());
    };
    let src = tcp
        .local_addr()
        .map_err(|e| Failure::io("local address", &e))?;
    let dst = tcp
        .peer_addr()
        .map_err(|e| Failure::io("peer address", &e))?;
    let mut buf = [0u8; 108];
    let len = header.write(src, dst, &mut buf);
    write_all(tcp, &buf[..len], "PROXY header")
}

/// A client connection: plain TCP, or TLS whose handshake has completed.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<ClientTls>),
}

impl Conn {
    /// Wraps `tcp`, running the TLS handshake first when `tls` is given.
    pub(crate) fn establish(tcp: TcpStream, tls: Option<&TlsClient>) -> Result<Conn, Failure> {
        match tls {
            None => Ok(Conn::Plain(tcp)),
            Some(client) => Ok(Conn::Tls(Box::new(client.handshake(tcp)?))),
        }
    }

    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    /// `Some(true)` when the TLS handshake resumed a session; `None` for plain TCP.
    pub(crate) fn tls_resumed(&self) -> Option<bool> {
        match self {
            Conn::Plain(_) => None,
            Conn::Tls(t) => Some(tls::resumed(t.conn.handshake_kind())),
        }
    }

    /// Half-close: TLS close_notify (when TLS), then FIN.
    pub(crate) fn half_close(&mut self) -> Result<(), Failure> {
        if let Conn::Tls(t) = self {
            tls::send_close_notify(t).map_err(|e| Failure::io("send close_notify", &e))?;
        }
        self.tcp()
            .shutdown(Shutdown::Write)
            .map_err(|e| Failure::io("half-close", &e))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => tls::read_lenient(t, buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

/// Connects to `target` within `connect_timeout`, with TCP_NODELAY and read/write timeouts of
/// `io_timeout` (a stalled peer becomes a `timeout` error, never a hang).
pub(crate) fn connect(
    target: SocketAddr,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect_timeout(&target, connect_timeout)
        .map_err(|e| Failure::io(&format!("connect to {target}"), &e))?;
    configure(&stream, io_timeout).map_err(|e| Failure::io("configure socket", &e))?;
    Ok(stream)
}

/// Sets TCP_NODELAY and the read/write timeouts.
pub(crate) fn configure(stream: &TcpStream, io_timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    Ok(())
}

/// Connects to `target` as [`connect`] does, sends `proxy` (a PROXY header) when given,
/// then runs the TLS handshake when `tls` is given.
pub(crate) fn connect_conn(
    target: SocketAddr,
    connect_timeout: Duration,
    io_timeout: Duration,
    proxy: Option<ProxyHeader>,
    tls: Option<&TlsClient>,
) -> Result<Conn, Failure> {
    let mut tcp = connect(target, connect_timeout, io_timeout)?;
    send_proxy_header(&mut tcp, proxy)?;
    Conn::establish(tcp, tls)
}

/// Writes all of `data`.
pub(crate) fn write_all(stream: &mut impl Write, data: &[u8], what: &str) -> Result<(), Failure> {
    stream
        .write_all(data)
        .map_err(|e| Failure::io(&format!("write {what}"), &e))
}

/// Reads exactly `buf.len()` bytes and verifies them against `verifier`.
pub(crate) fn read_verified(
    stream: &mut impl Read,
    buf: &mut [u8],
    verifier: &mut PatternVerifier,
    what: &str,
) -> Result<(), Failure> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Failure::new(
                    ErrorClass::Eof,
                    format!(
                        "read {what}: peer closed after {got} of {} bytes",
                        buf.len()
                    ),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io(&format!("read {what}"), &e)),
        }
    }
    verifier.feed(buf).map_err(|at| mismatch(what, at))
}

/// A mismatch failure at stream offset `at`.
pub(crate) fn mismatch(what: &str, at: u64) -> Failure {
    Failure::new(
        ErrorClass::Mismatch,
        format!("{what}: payload differs from what was sent at stream offset {at}"),
    )
}

/// After our half-close, reads until the peer closes too; any byte that arrives is a mismatch.
pub(crate) fn expect_eof(stream: &mut impl Read, what: &str) -> Result<(), Failure> {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                return Err(Failure::new(
                    ErrorClass::Mismatch,
                    format!("{what}: {n} unexpected bytes before the peer's close"),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io(&format!("{what}: wait for close"), &e)),
        }
    }
}

/// How a client closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseMode {
    /// Abortive close (SO_LINGER 0): the client sends RST and keeps no TIME_WAIT, so a long
    /// `cps` run does not run out of ephemeral ports.
    #[default]
    Rst,
    /// Graceful: half-close, wait for the peer's FIN (checks that half-close propagates through
    /// the proxy), then close. The client keeps TIME_WAIT.
    Fin,
}

impl CloseMode {
    /// `"rst"` or `"fin"`.
    pub fn name(self) -> &'static str {
        match self {
            CloseMode::Rst => "rst",
            CloseMode::Fin => "fin",
        }
    }
}

/// Closes `stream` as `mode` says (with TLS, `fin` sends close_notify first; `rst` does not).
pub(crate) fn close(mut stream: Conn, mode: CloseMode) -> Result<(), Failure> {
    match mode {
        CloseMode::Rst => {
            socket2::SockRef::from(stream.tcp())
                .set_linger(Some(Duration::ZERO))
                .map_err(|e| Failure::io("set SO_LINGER", &e))?;
            drop(stream);
            Ok(())
        }
        CloseMode::Fin => {
            stream.half_close()?;
            expect_eof(&mut stream, "close")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: ProxyHeader, src: &str, dst: &str) -> Vec<u8> {
        let mut buf = [0u8; 108];
        let n = version.write(src.parse().unwrap(), dst.parse().unwrap(), &mut buf);
        buf[..n].to_vec()
    }

    /// The specification's examples: version 1 text, version 2 with the `PROXY` command.
    #[test]
    fn proxy_headers_as_the_specification_writes_them() {
        assert_eq!(
            header(ProxyHeader::V1, "192.0.2.1:40000", "198.51.100.7:443"),
            b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 443\r\n"
        );
        assert_eq!(
            header(ProxyHeader::V1, "[2001:db8::1]:1", "[2001:db8::2]:2"),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
        );
        assert_eq!(
            header(ProxyHeader::V1, "192.0.2.1:1", "[2001:db8::2]:2"),
            b"PROXY UNKNOWN\r\n"
        );
        let v2 = header(ProxyHeader::V2, "192.0.2.1:40000", "198.51.100.7:443");
        let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        want.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 7]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(v2, want);
        let v6 = header(ProxyHeader::V2, "[2001:db8::1]:1", "[2001:db8::2]:2");
        assert_eq!((v6[13], v6[15], v6.len()), (0x21, 36, 52));
    }
}
