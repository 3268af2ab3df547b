//! Session tickets every worker can open: one key set per server context, shared by all
//! workers (SO_REUSEPORT sends a resuming client to any of them), with no lock.
//!
//! A ticket is `key name (16) | nonce (12) | AES-256-GCM(state) | tag (16)`. The nonce is a
//! random prefix fixed at build time and a counter (one atomic add per ticket issued), so
//! issuing a ticket makes no system call and never repeats a nonce under one key. With
//! `session_ticket_keys`, each 80-byte key gives its name (bytes 0-15) and its AES key
//! (bytes 48-79, where Envoy's key file keeps it); the first key issues, all of them open.
//! Keys made at random (Envoy's default) live as long as the context.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::atomic::{AtomicU64, Ordering};

/// Ticket lifetime advertised to clients (Envoy's default `session_timeout`, 7200 s).
const LIFETIME_S: u32 = 7200;
/// Length of one `session_ticket_keys` entry.
pub const TICKET_KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

/// The ticket keys of one server context.
pub(crate) struct Ticketer {
    keys: Vec<Key>,
    nonce_prefix: [u8; 4],
    counter: AtomicU64,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticketer({} keys)", self.keys.len())
    }
}

impl Ticketer {
    /// A ticketer with one random key.
    pub(crate) fn random() -> Result<Ticketer, String> {
        let mut material = [0u8; TICKET_KEY_LEN];
        SystemRandom::new()
            .fill(&mut material)
            .map_err(|_| "no randomness for a session ticket key".to_string())?;
        Ticketer::from_keys(&[material.to_vec()])
    }

    /// A ticketer from `session_ticket_keys` (each exactly [`TICKET_KEY_LEN`] bytes).
    pub(crate) fn from_keys(material: &[Vec<u8>]) -> Result<Ticketer, String> {
        if material.is_empty() {
            return Err("no session ticket key".into());
        }
        let mut keys = Vec::with_capacity(material.len());
        for (i, m) in material.iter().enumerate() {
            if m.len() != TICKET_KEY_LEN {
                return Err(format!(
                    "key {i} is {} bytes; a session ticket key is {TICKET_KEY_LEN}",
                    m.len()
                ));
            }
            let mut name = [0u8; NAME_LEN];
            name.copy_from_slice(&m[..NAME_LEN]);
            let unbound = UnboundKey::new(&AES_256_GCM, &m[48..80])
                .map_err(|_| format!("key {i}: not an AES-256 key"))?;
            keys.push(Key {
                name,
                aead: LessSafeKey::new(unbound),
            });
        }
        let mut nonce_prefix = [0u8; 4];
        SystemRandom::new()
            .fill(&mut nonce_prefix)
            .map_err(|_| "no randomness for a ticket nonce".to_string())?;
        Ok(Ticketer {
            keys,
            nonce_prefix,
            counter: AtomicU64::new(0),
        })
    }

    fn next_nonce(&self) -> [u8; NONCE_LEN] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.nonce_prefix);
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        nonce
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let nonce = self.next_nonce();
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (head, body) = out.split_at_mut(NAME_LEN + NONCE_LEN);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&head[..NAME_LEN]),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let key = self.keys.iter().find(|k| k.name == name)?;
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(name), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn key(fill: u8) -> Vec<u8> {
        vec![fill; TICKET_KEY_LEN]
    }

    #[test]
    fn a_ticket_opens_under_any_configured_key_set_that_holds_its_key() {
        let issuer = Ticketer::from_keys(&[key(1), key(2)]).unwrap();
        let ticket = issuer.encrypt(b"session state").unwrap();
        assert_eq!(issuer.decrypt(&ticket).unwrap(), b"session state");
        // Rotated: the old key now second, still opens.
        let rotated = Ticketer::from_keys(&[key(3), key(1)]).unwrap();
        assert_eq!(rotated.decrypt(&ticket).unwrap(), b"session state");
        // Dropped: no longer opens.
        let dropped = Ticketer::from_keys(&[key(3)]).unwrap();
        assert!(dropped.decrypt(&ticket).is_none());
    }

    #[test]
    fn a_tampered_or_short_ticket_is_refused_and_nonces_differ() {
        let t = Ticketer::random().unwrap();
        let a = t.encrypt(b"x").unwrap();
        let b = t.encrypt(b"x").unwrap();
        assert_ne!(a, b, "each ticket has its own nonce");
        let mut bad = a.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(t.decrypt(&bad).is_none());
        assert!(t.decrypt(&a[..20]).is_none());
        assert!(Ticketer::from_keys(&[vec![0; 79]]).is_err());
    }
}
