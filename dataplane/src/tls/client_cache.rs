//! The client session cache of a cluster's TLS context, without a lock: each worker thread
//! keeps its own sessions (rustls' `ClientSessionMemoryCache` is one map behind a mutex every
//! worker would take on each upstream handshake).
//!
//! A worker resumes only the sessions its own handshakes made, which is what a worker needs:
//! its connections to an endpoint go on from its own tickets. Per context and server name a
//! thread keeps the key-exchange hint, one TLS 1.2 session and at most two TLS 1.3 tickets
//! (as rustls' cache), and at most `max_session_keys` server names (Envoy's bound), the
//! oldest dropped first. Entries live with their thread; a context dropped by a config
//! change leaves at most that bound per worker behind until the thread exits.

use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

const TLS13_TICKETS_PER_SERVER: usize = 2;

static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

#[derive(Default)]
struct ThreadSessions {
    entries: HashMap<(u64, ServerName<'static>), Entry>,
    /// Per store, its server names oldest first.
    order: HashMap<u64, VecDeque<ServerName<'static>>>,
}

thread_local! {
    static SESSIONS: RefCell<ThreadSessions> = RefCell::new(ThreadSessions::default());
}

/// One context's sessions, kept per thread.
#[derive(Debug)]
pub(crate) struct PerThreadSessions {
    id: u64,
    max_names: usize,
}

impl PerThreadSessions {
    pub(crate) fn new(max_names: usize) -> PerThreadSessions {
        PerThreadSessions {
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            max_names: max_names.max(1),
        }
    }

    /// Runs `f` on this thread's entry for `name`, making it (and dropping the oldest name
    /// beyond the bound) first.
    fn with_entry<R>(&self, name: ServerName<'static>, f: impl FnOnce(&mut Entry) -> R) -> R {
        SESSIONS.with(|s| {
            let mut s = s.borrow_mut();
            let key = (self.id, name);
            if !s.entries.contains_key(&key) {
                let order = s.order.entry(self.id).or_default();
                order.push_back(key.1.clone());
                let evicted = (order.len() > self.max_names).then(|| order.pop_front());
                if let Some(Some(old)) = evicted {
                    s.entries.remove(&(self.id, old));
                }
            }
            f(s.entries.entry(key).or_default())
        })
    }

    /// Runs `f` on this thread's entry for `name`, if there is one.
    fn read<R>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Entry) -> Option<R>) -> Option<R> {
        SESSIONS.with(|s| {
            let mut s = s.borrow_mut();
            s.entries.get_mut(&(self.id, name.to_owned())).and_then(f)
        })
    }
}

impl ClientSessionStore for PerThreadSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with_entry(server_name, |e| e.kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.read(server_name, |e| e.kx_hint)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with_entry(server_name, |e| e.tls12 = Some(value));
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.read(server_name, |e| e.tls12.clone())
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.read(server_name, |e| e.tls12.take());
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.with_entry(server_name, |e| {
            if e.tls13.len() == TLS13_TICKETS_PER_SERVER {
                e.tls13.pop_front();
            }
            e.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.read(server_name, |e| e.tls13.pop_back())
    }
}
