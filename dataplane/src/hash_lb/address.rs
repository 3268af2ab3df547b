//! Envoy's address strings and the hashes of them: glibc `inet_ntop` text for IPv6,
//! `addressAsString()` and `asString()` ([`envoy_host_key`]), and tcp_proxy's `source_ip`
//! hash ([`source_ip_hash`], [`source_addr_hash`]).
//!
//! Guarantees: hashing an address never allocates (text goes to a fixed-size `TextBuf`);
//! the text is byte for byte what Envoy hashes, which Rust's `Display` is not for some IPv6
//! addresses.

use super::hash::xxhash64;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A fixed-size text buffer, so that hashing an address never allocates. 64 bytes hold the
/// longest IPv6 text (45) plus `%` and a 32-bit scope id (11), or an IPv4 `ip:port` (21).
pub(super) struct TextBuf {
    buf: [u8; 64],
    len: usize,
}

impl TextBuf {
    pub(super) fn new() -> TextBuf {
        TextBuf {
            buf: [0; 64],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub(super) fn push_dec(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in digits[..n].iter().rev() {
            self.push(d);
        }
    }

    fn push_hex(&mut self, v: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12u32, 8, 4, 0] {
            let nibble = usize::from((v >> shift) & 0xf);
            if nibble != 0 || started || shift == 0 {
                self.push(HEX[nibble]);
                started = true;
            }
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Dotted decimal, as Envoy's `Ipv4Instance::sockaddrToString`.
fn write_ipv4(out: &mut TextBuf, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i != 0 {
            out.push(b'.');
        }
        out.push_dec(u64::from(octet));
    }
}

/// glibc's `inet_ntop(AF_INET6, ...)` (`resolv/inet_ntop.c`, `inet_ntop6`), which Envoy's
/// `Ipv6Instance::Ipv6Helper::makeFriendlyAddress` calls: lowercase hex without leading
/// zeros; the first longest run of two or more zero groups becomes `::`; and the last 32 bits
/// are written as dotted IPv4 when the first 96 are zero (the run is the first six groups,
/// `::a.b.c.d`) or are `::ffff` (`::ffff:a.b.c.d`). Rust's `Ipv6Addr` `Display` differs on the
/// first form (it writes `::102:304` where glibc writes `::1.2.3.4`).
fn write_ipv6(out: &mut TextBuf, ip: Ipv6Addr) {
    let words = ip.segments();
    // (base, len) of the best run of zero words; len 0 = none.
    let (mut best_base, mut best_len) = (0usize, 0usize);
    let (mut cur_base, mut cur_len) = (0usize, 0usize);
    for (i, &w) in words.iter().enumerate() {
        if w == 0 {
            if cur_len == 0 {
                cur_base = i;
            }
            cur_len += 1;
        } else if cur_len != 0 {
            if best_len == 0 || cur_len > best_len {
                (best_base, best_len) = (cur_base, cur_len);
            }
            cur_len = 0;
        }
    }
    if cur_len != 0 && (best_len == 0 || cur_len > best_len) {
        (best_base, best_len) = (cur_base, cur_len);
    }
    if best_len < 2 {
        best_len = 0;
    }
    let mut i = 0;
    while i < 8 {
        if best_len != 0 && i >= best_base && i < best_base + best_len {
            if i == best_base {
                out.push(b':');
            }
            i += 1;
            continue;
        }
        if i != 0 {
            out.push(b':');
        }
        if i == 6
            && best_len != 0
            && best_base == 0
            && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))
        {
            let o = ip.octets();
            write_ipv4(out, Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            break;
        }
        out.push_hex(words[i]);
        i += 1;
    }
    if best_len != 0 && best_base + best_len == 8 {
        out.push(b':');
    }
}

/// Envoy's `addressAsString()` for an IP: IPv4 dotted decimal, IPv6 glibc `inet_ntop` text
/// with `%scope_id` appended when the scope id is not 0 (`makeFriendlyAddress`).
fn write_ip(out: &mut TextBuf, ip: IpAddr, scope_id: u32) {
    match ip {
        IpAddr::V4(v4) => write_ipv4(out, v4),
        IpAddr::V6(v6) => {
            write_ipv6(out, v6);
            if scope_id != 0 {
                out.push(b'%');
                out.push_dec(u64::from(scope_id));
            }
        }
    }
}

/// Envoy's `HashUtil::xxHash64(ip->addressAsString())` with the scope id of `addr` (IPv6
/// link-local peers carry one; Envoy appends it as `%id`). The port is not hashed.
fn address_hash(ip: IpAddr, scope_id: u32) -> u64 {
    let mut text = TextBuf::new();
    write_ip(&mut text, ip, scope_id);
    xxhash64(text.as_bytes(), 0)
}

/// The hash Envoy's tcp_proxy `hash_policy: [{source_ip: {}}]` gives a connection from `ip`:
/// `SourceIpHashMethod::evaluate` (`source/common/network/hash_policy.cc`), i.e. XXH64
/// (seed 0) of the downstream remote address's `addressAsString()`: `"10.0.0.1"`, or glibc's
/// `inet_ntop` text for IPv6 (`"2001:db8::1"`, `"::ffff:10.0.0.1"`). The port is not part of
/// it. Allocation-free.
///
/// An IPv4 client accepted on a dual-stack IPv6 socket shows up as `::ffff:a.b.c.d`; Envoy
/// turns such a peer into an IPv4 address when the listening socket is not `v6only`
/// (`addressFromSockAddr`), so pass `ip.to_canonical()` in that case. For an IPv6 peer with
/// a scope id use [`source_addr_hash`].
pub fn source_ip_hash(ip: IpAddr) -> u64 {
    address_hash(ip, 0)
}

/// [`source_ip_hash`] of `addr`'s IP, with Envoy's `%scope_id` suffix for an IPv6 address
/// whose scope id is not 0. The port is ignored, as in Envoy.
pub fn source_addr_hash(addr: SocketAddr) -> u64 {
    match addr {
        SocketAddr::V4(a) => address_hash(IpAddr::V4(*a.ip()), 0),
        SocketAddr::V6(a) => address_hash(IpAddr::V6(*a.ip()), a.scope_id()),
    }
}

/// The key Envoy hashes for an upstream host by default: `host->address()->asString()`,
/// `"ip:port"` for IPv4 and `"[ip]:port"` (`"[ip%scope]:port"` with a scope id) for IPv6,
/// where `ip` is glibc's `inet_ntop` text. Use this rather than `SocketAddr`'s `Display`,
/// which writes some IPv6 addresses differently (see [`source_ip_hash`]).
pub fn envoy_host_key(addr: SocketAddr) -> String {
    let mut text = TextBuf::new();
    match addr {
        SocketAddr::V4(a) => {
            write_ipv4(&mut text, *a.ip());
            text.push(b':');
            text.push_dec(u64::from(a.port()));
        }
        SocketAddr::V6(a) => {
            text.push(b'[');
            write_ip(&mut text, IpAddr::V6(*a.ip()), a.scope_id());
            text.push(b']');
            text.push(b':');
            text.push_dec(u64::from(a.port()));
        }
    }
    String::from_utf8_lossy(text.as_bytes()).into_owned()
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    fn ipv6_text(words: [u16; 8]) -> String {
        let mut t = TextBuf::new();
        write_ipv6(&mut t, Ipv6Addr::from(words));
        String::from_utf8(t.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn ipv6_text_matches_glibc_inet_ntop() {
        // Each expected string is what glibc's inet_ntop(AF_INET6) returned for the address.
        let cases: &[([u16; 8], &str)] = &[
            ([0, 0, 0, 0, 0, 0, 0, 0], "::"),
            ([0, 0, 0, 0, 0, 0, 0, 1], "::1"),
            ([0, 0, 0, 0, 0, 0, 0, 2], "::2"),
            ([0, 0, 0, 0, 0, 0, 0x102, 0x304], "::1.2.3.4"),
            ([0, 0, 0, 0, 0, 0xffff, 0x102, 0x304], "::ffff:1.2.3.4"),
            ([0, 0, 0, 0, 0, 0xffff, 0, 0], "::ffff:0.0.0.0"),
            ([0, 0, 0, 0, 0xffff, 0, 0x102, 0x304], "::ffff:0:102:304"),
            ([1, 0, 0, 0, 0, 0, 0, 0], "1::"),
            ([1, 0, 0, 1, 0, 0, 0, 1], "1:0:0:1::1"),
            ([1, 0, 0, 0, 0, 0, 0, 1], "1::1"),
            ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], "2001:db8::1"),
            ([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1], "2001:db8::1:0:0:1"),
            ([0x2001, 0, 0, 1, 0, 0, 0, 1], "2001:0:0:1::1"),
            ([0xfe80, 0, 0, 0, 0, 0, 0, 1], "fe80::1"),
            ([0, 0, 1, 0, 0, 0, 0, 0], "0:0:1::"),
            ([1, 0, 1, 0, 1, 0, 1, 0], "1:0:1:0:1:0:1:0"),
            ([0, 0, 0, 0, 0, 0xfffe, 0x102, 0x304], "::fffe:102:304"),
            ([0, 0, 0, 0, 1, 0, 0, 0], "::1:0:0:0"),
            ([0, 0, 0, 0, 0, 1, 0, 0], "::1:0:0"),
            ([0x64, 0xff9b, 0, 0, 0, 0, 0x102, 0x304], "64:ff9b::102:304"),
            ([0xffff; 8], "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            (
                [0, 0, 0, 0, 0, 0xffff, 0xffff, 0xffff],
                "::ffff:255.255.255.255",
            ),
            ([0, 0, 0, 0, 0, 0, 0, 0x100], "::100"),
            ([0, 0, 0, 0, 0, 0, 1, 0], "::0.1.0.0"),
            ([0, 0, 0, 0, 0, 0, 0, 0xffff], "::ffff"),
            (
                [0xa5cd, 2, 0xb, 0, 0x2c01, 0, 1, 0xffff],
                "a5cd:2:b:0:2c01:0:1:ffff",
            ),
            ([0, 1, 0x442f, 3, 0, 0, 1, 0xffff], "0:1:442f:3::1:ffff"),
            ([0xdaed, 0, 0xffff, 2, 0, 9, 3, 0], "daed:0:ffff:2:0:9:3:0"),
            ([0, 0, 0, 0, 0x7ec7, 0, 0xc, 0x8e40], "::7ec7:0:c:8e40"),
            ([0, 0, 0, 0, 0, 0, 0xb, 0xffff], "::0.11.255.255"),
            (
                [0xffff, 0xc8e5, 0xc9ca, 0, 0x227b, 0, 0, 0],
                "ffff:c8e5:c9ca:0:227b::",
            ),
            (
                [0, 0xffff, 0xb, 0, 0x3b0f, 0, 0, 0xaf6d],
                "0:ffff:b:0:3b0f::af6d",
            ),
            ([0xffff, 0, 0, 0xffff, 0, 0, 0, 0xf], "ffff:0:0:ffff::f"),
            (
                [0xffff, 0xffff, 0xffff, 0, 0, 0xcaab, 0, 0],
                "ffff:ffff:ffff::caab:0:0",
            ),
            ([4, 0, 0, 0x349e, 0, 0, 0, 0], "4:0:0:349e::"),
        ];
        for &(words, want) in cases {
            assert_eq!(ipv6_text(words), want, "{words:x?}");
        }
    }

    #[test]
    fn envoy_host_keys() {
        assert_eq!(
            envoy_host_key("127.0.0.1:90".parse().unwrap()),
            "127.0.0.1:90"
        );
        assert_eq!(
            envoy_host_key("10.255.0.7:65535".parse().unwrap()),
            "10.255.0.7:65535"
        );
        assert_eq!(
            envoy_host_key("[2001:db8::1]:443".parse().unwrap()),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            envoy_host_key("[::1.2.3.4]:80".parse().unwrap()),
            "[::1.2.3.4]:80"
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 8080, 0, 3));
        assert_eq!(envoy_host_key(scoped), "[fe80::1%3]:8080");
    }

    #[test]
    fn source_ip_hash_is_xxhash_of_envoy_address_string() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(source_ip_hash(v4), 0xc08b1587df65b7a7);
        assert_eq!(
            source_ip_hash("10.0.0.1".parse().unwrap()),
            0xed16cb68c786e3d7
        );
        assert_eq!(source_ip_hash("::1".parse().unwrap()), 0x59661e2585f0146f);
        for text in [
            "192.168.1.254",
            "0.0.0.0",
            "2001:db8::ff00:42:8329",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(source_ip_hash(ip), xxhash64(text.as_bytes(), 0), "{text}");
        }
        // The port does not matter; a scope id does, as "%id".
        assert_eq!(
            source_addr_hash("127.0.0.1:5555".parse().unwrap()),
            source_ip_hash(v4)
        );
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0, 7));
        assert_eq!(source_addr_hash(scoped), xxhash64(b"fe80::1%7", 0));
        let unscoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0, 0));
        assert_eq!(source_addr_hash(unscoped), xxhash64(b"fe80::1", 0));
    }
}
