//! `user_data` encoding: what an io_uring completion is about.
//!
//! `[kind: 8 bits][slot: 32 bits][nonce: 24 bits]`. The slot indexes the connection slab (or
//! the worker's listener table for accepts); the nonce changes every time a slot is reused, so
//! a completion can always be matched to the connection that asked for it.

/// What an operation was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// The wake eventfd was read.
    Wake = 1,
    /// The periodic tick fired.
    Tick = 2,
    /// A multishot accept on a listener slot.
    Accept = 3,
    /// A cancel of a listener's accept.
    AcceptCancel = 4,
    /// A backend socket was created.
    Socket = 5,
    /// A backend connect finished.
    Connect = 6,
    /// A backend connect's linked timeout finished.
    ConnectTimeout = 7,
    /// Receive from the client (direction up).
    RecvUp = 8,
    /// Receive from the backend (direction down).
    RecvDown = 9,
    /// Send to the backend (direction up).
    SendUp = 10,
    /// Send to the client (direction down).
    SendDown = 11,
    /// shutdown(SHUT_WR) of the backend (direction up ended).
    ShutUp = 12,
    /// shutdown(SHUT_WR) of the client (direction down ended).
    ShutDown = 13,
    /// Socket options, cancels and closes whose result does not matter.
    Aux = 14,
    /// The fault filter's timer fired.
    FaultTick = 15,
    /// The cancel of the fault filter's timer finished.
    FaultTickCancel = 16,
    /// A shadow (mirror) socket was created.
    ShadowSocket = 17,
    /// A shadow connect finished.
    ShadowConnect = 18,
    /// A send to the shadow completed.
    ShadowSend = 19,
    /// A discard receive from the shadow completed.
    ShadowRecv = 20,
    /// Shadow socket options, timeouts, shutdowns, cancels and closes.
    ShadowAux = 21,
    /// A datagram receive on a UDP listener socket (slot: the worker's UDP socket slot).
    UdpRecv = 22,
    /// A datagram receive on a UDP session's upstream socket (slot: the session).
    UdpUpRecv = 23,
    /// A datagram sent to a session's endpoint (slot: the session; nonce: the buffer).
    UdpSendUp = 24,
    /// A datagram sent to a session's client (slot: the session; nonce: the buffer).
    UdpSendDown = 25,
    /// UDP cancels and closes whose result does not matter.
    UdpAux = 26,
    /// An accept that sheds a connection while the process is out of descriptors (slot: the
    /// listener slot).
    AcceptShed = 27,
    /// The close of a shed connection, and cancels of sheds; results do not matter.
    AcceptShedAux = 28,
    /// A TLS handshake receive from the client.
    TlsReadClient = 29,
    /// A TLS handshake receive from the backend.
    TlsReadBackend = 30,
    /// A write TLS itself makes to the client (handshake flight, alert, close_notify).
    TlsWriteClient = 31,
    /// A write TLS itself makes to the backend.
    TlsWriteBackend = 32,
    /// A receive of the client's first bytes for the TLS inspector.
    InspectRead = 33,
    /// The send of the PROXY header that starts a connection to the backend.
    UpstreamProxyHeader = 34,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Wake,
            2 => Kind::Tick,
            3 => Kind::Accept,
            4 => Kind::AcceptCancel,
            5 => Kind::Socket,
            6 => Kind::Connect,
            7 => Kind::ConnectTimeout,
            8 => Kind::RecvUp,
            9 => Kind::RecvDown,
            10 => Kind::SendUp,
            11 => Kind::SendDown,
            12 => Kind::ShutUp,
            13 => Kind::ShutDown,
            14 => Kind::Aux,
            15 => Kind::FaultTick,
            16 => Kind::FaultTickCancel,
            17 => Kind::ShadowSocket,
            18 => Kind::ShadowConnect,
            19 => Kind::ShadowSend,
            20 => Kind::ShadowRecv,
            21 => Kind::ShadowAux,
            22 => Kind::UdpRecv,
            23 => Kind::UdpUpRecv,
            24 => Kind::UdpSendUp,
            25 => Kind::UdpSendDown,
            26 => Kind::UdpAux,
            27 => Kind::AcceptShed,
            28 => Kind::AcceptShedAux,
            29 => Kind::TlsReadClient,
            30 => Kind::TlsReadBackend,
            31 => Kind::TlsWriteClient,
            32 => Kind::TlsWriteBackend,
            33 => Kind::InspectRead,
            34 => Kind::UpstreamProxyHeader,
            _ => return None,
        })
    }
}

const NONCE_BITS: u32 = 24;
const NONCE_MASK: u64 = (1 << NONCE_BITS) - 1;
/// The kind sits above the 32-bit slot and the nonce.
const KIND_SHIFT: u32 = NONCE_BITS + u32::BITS;

// The three fields fill the 64-bit `user_data` exactly: an 8-bit kind (`Kind` is `repr(u8)`)
// over the slot over the nonce. Widening one must narrow another.
const _: () = assert!(KIND_SHIFT + u8::BITS == u64::BITS);
const _: () = assert!(std::mem::size_of::<Kind>() == 1);

/// Packs a user_data value.
pub(crate) fn encode(kind: Kind, slot: u32, nonce: u32) -> u64 {
    ((kind as u64) << KIND_SHIFT)
        | (u64::from(slot) << NONCE_BITS)
        | (u64::from(nonce) & NONCE_MASK)
}

/// Unpacks a user_data value; `None` for values this worker never produced.
pub(crate) fn decode(ud: u64) -> Option<(Kind, u32, u32)> {
    let kind = Kind::from_u8((ud >> KIND_SHIFT) as u8)?;
    let slot = ((ud >> NONCE_BITS) & 0xffff_ffff) as u32;
    Some((kind, slot, (ud & NONCE_MASK) as u32))
}

/// The next nonce after `n` (24 bits, wrapping).
pub(crate) fn next_nonce(n: u32) -> u32 {
    (n + 1) & NONCE_MASK as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let ud = encode(Kind::SendDown, 123_456, 0xabcdef);
        assert_eq!(decode(ud), Some((Kind::SendDown, 123_456, 0xabcdef)));
        assert_eq!(decode(u64::MAX), None);
        assert_eq!(next_nonce(0xff_ffff), 0);
    }
}
