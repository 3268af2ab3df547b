//! A snapshot-serving ADS responder on top of the scripted server
//! (`switchyard_control::xds::server`), State of the World or Delta.
//!
//! It answers each subscription the way a management server such as go-control-plane does:
//! listeners and clusters as wildcards, endpoint assignments for the names asked for, and
//! pushes the assignments the benchmark changes. Every response sent and every ACK/NACK
//! received is logged with the instant it happened, which is what the benchmark measures.

use crate::snapshot::{cluster_name, Snapshot};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::BTreeSet;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_control::xds::server::{DeltaHandle, ResponseSender, SotwHandle};
use switchyard_control::xds::{CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE};

/// Something that happened on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    /// A response of `type_url` with `count` resources, under `version`.
    Sent {
        type_url: String,
        version: String,
        count: usize,
    },
    /// The client acknowledged `version` of `type_url`.
    Ack { type_url: String, version: String },
    /// The client rejected a response of `type_url`.
    Nack { type_url: String, detail: String },
    /// A request arrived (logged for every request, before it is answered).
    Request { type_url: String },
}

/// The event log, shared with the benchmark.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<(Instant, Logged)>>>);

impl Log {
    fn push(&self, what: Logged) {
        self.0.lock().unwrap().push((Instant::now(), what));
    }

    /// The first entry at or after `since` that `want` accepts.
    pub fn find(
        &self,
        since: Instant,
        want: impl Fn(&Logged) -> bool,
    ) -> Option<(Instant, Logged)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(t, l)| *t >= since && want(l))
            .cloned()
    }

    /// Waits up to `timeout` for [`Log::find`].
    pub fn wait(
        &self,
        since: Instant,
        timeout: Duration,
        want: impl Fn(&Logged) -> bool,
    ) -> Option<(Instant, Logged)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(since, &want) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Every NACK so far.
    pub fn nacks(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, l)| match l {
                Logged::Nack { type_url, detail } => Some(format!("{type_url}: {detail}")),
                _ => None,
            })
            .collect()
    }
}

/// What the benchmark asks the responder to do.
#[derive(Debug)]
pub enum Push {
    /// Send the current assignments of these clusters.
    Endpoints(Vec<usize>),
    /// Answer the requests held so far, and every later one at once.
    Release,
}

enum Input {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
    Push(Push),
}

/// Serves `snapshot` on the streams of either variant (responses go to the latest stream);
/// holds every request unanswered until [`Push::Release`]. Returns where to send pushes.
pub fn serve(
    snapshot: Arc<Mutex<Snapshot>>,
    sotw: Receiver<SotwHandle>,
    delta: Receiver<DeltaHandle>,
    log: Log,
) -> Sender<Push> {
    let (tx, rx) = mpsc::channel();
    let pushes = tx.clone();
    let (push_tx, push_rx) = mpsc::channel::<Push>();
    std::thread::spawn(move || {
        while let Ok(p) = push_rx.recv() {
            if pushes.send(Input::Push(p)).is_err() {
                return;
            }
        }
    });
    let sotw_inputs = tx.clone();
    let (sotw_out_tx, sotw_out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(h) = sotw.recv() {
            let _ = sotw_out_tx.send(h.responses.clone());
            let inputs = sotw_inputs.clone();
            std::thread::spawn(move || {
                while let Ok(r) = h.requests.recv() {
                    if inputs.send(Input::Sotw(r)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (delta_out_tx, delta_out_rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(h) = delta.recv() {
            let _ = delta_out_tx.send(h.responses.clone());
            let inputs = tx.clone();
            std::thread::spawn(move || {
                while let Ok(r) = h.requests.recv() {
                    if inputs.send(Input::Delta(r)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut state = Responder {
            snapshot,
            log,
            sotw: Vec::new(),
            delta: Vec::new(),
            sotw_out: sotw_out_rx,
            delta_out: delta_out_rx,
            types: Default::default(),
            next_version: 1,
            held: Some(Vec::new()),
        };
        while let Ok(input) = rx.recv() {
            state.on(input);
        }
    });
    push_tx
}

/// Per type: the last nonce sent and the endpoint names asked for.
#[derive(Default)]
struct TypeState {
    nonce: String,
    names: BTreeSet<String>,
}

type SotwOut = ResponseSender<DiscoveryResponse>;
type DeltaOut = ResponseSender<DeltaDiscoveryResponse>;

struct Responder {
    snapshot: Arc<Mutex<Snapshot>>,
    log: Log,
    sotw: Vec<SotwOut>,
    delta: Vec<DeltaOut>,
    sotw_out: Receiver<SotwOut>,
    delta_out: Receiver<DeltaOut>,
    types: std::collections::HashMap<String, TypeState>,
    next_version: u64,
    /// Requests waiting for [`Push::Release`].
    held: Option<Vec<Input>>,
}

impl Responder {
    fn on(&mut self, input: Input) {
        self.sotw.extend(self.sotw_out.try_iter());
        self.delta.extend(self.delta_out.try_iter());
        if let Input::Sotw(DiscoveryRequest { type_url, .. })
        | Input::Delta(DeltaDiscoveryRequest { type_url, .. }) = &input
        {
            self.log.push(Logged::Request {
                type_url: type_url.clone(),
            });
        }
        if let Input::Push(Push::Release) = input {
            for held in self.held.take().unwrap_or_default() {
                self.handle(held);
            }
            return;
        }
        match &mut self.held {
            Some(held) => held.push(input),
            None => self.handle(input),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Push(Push::Release) => {}
            Input::Sotw(r) => self.on_sotw(r),
            Input::Delta(r) => self.on_delta(r),
            Input::Push(Push::Endpoints(ids)) => {
                let names: Vec<String> = ids.iter().map(|i| cluster_name(*i)).collect();
                if self.delta.is_empty() {
                    self.send_sotw(ENDPOINTS_TYPE, &names);
                } else {
                    self.send_delta(ENDPOINTS_TYPE, &names);
                }
            }
        }
    }

    fn classify(&mut self, type_url: &str, nonce: &str, version: &str, error: Option<String>) {
        let Some(t) = self.types.get(type_url) else {
            return;
        };
        if nonce.is_empty() || nonce != t.nonce {
            return;
        }
        let type_url = type_url.to_string();
        match error {
            Some(detail) => self.log.push(Logged::Nack { type_url, detail }),
            None => self.log.push(Logged::Ack {
                type_url,
                version: version.into(),
            }),
        }
    }

    fn on_sotw(&mut self, r: DiscoveryRequest) {
        let detail = r.error_detail.as_ref().map(|s| s.message.clone());
        self.classify(&r.type_url, &r.response_nonce, &r.version_info, detail);
        let t = self.types.entry(r.type_url.clone()).or_default();
        let asked: BTreeSet<String> = r.resource_names.iter().cloned().collect();
        let first = r.response_nonce.is_empty();
        let new_names: Vec<String> = asked.difference(&t.names).cloned().collect();
        t.names = asked;
        if r.type_url == ENDPOINTS_TYPE {
            if (first || !new_names.is_empty()) && !t.names.is_empty() {
                let all: Vec<String> = t.names.iter().cloned().collect();
                self.send_sotw(ENDPOINTS_TYPE, &all);
            }
        } else if first {
            self.send_sotw(&r.type_url, &[]);
        }
    }

    fn on_delta(&mut self, r: DeltaDiscoveryRequest) {
        let detail = r.error_detail.as_ref().map(|s| s.message.clone());
        self.classify(&r.type_url, &r.response_nonce, "", detail);
        let first = r.response_nonce.is_empty();
        let t = self.types.entry(r.type_url.clone()).or_default();
        t.names.extend(r.resource_names_subscribe.iter().cloned());
        for n in &r.resource_names_unsubscribe {
            t.names.remove(n);
        }
        if r.type_url == ENDPOINTS_TYPE {
            if !r.resource_names_subscribe.is_empty() {
                self.send_delta(ENDPOINTS_TYPE, &r.resource_names_subscribe);
            }
        } else if first {
            self.send_delta(&r.type_url, &[]);
        }
    }

    /// The resources of `type_url` (for endpoints, those of `names`), named.
    fn resources(&self, type_url: &str, names: &[String]) -> Vec<(String, Any)> {
        let s = self.snapshot.lock().unwrap();
        match type_url {
            CLUSTER_TYPE => (0..s.clusters.len())
                .map(cluster_name)
                .zip(s.cluster_resources())
                .collect(),
            LISTENER_TYPE => s
                .listeners
                .iter()
                .map(|l| l.0.clone())
                .zip(s.listener_resources())
                .collect(),
            _ => names
                .iter()
                .filter_map(|n| Some((n.clone(), s.assignment_resource(s.index_of(n)?))))
                .collect(),
        }
    }

    fn next(&mut self, type_url: &str) -> (String, String) {
        let v = self.next_version;
        self.next_version += 1;
        let nonce = format!("n{v}");
        self.types.entry(type_url.into()).or_default().nonce = nonce.clone();
        (format!("v{v}"), nonce)
    }

    fn send_sotw(&mut self, type_url: &str, names: &[String]) {
        let resources: Vec<Any> = self
            .resources(type_url, names)
            .into_iter()
            .map(|r| r.1)
            .collect();
        let (version, nonce) = self.next(type_url);
        let count = resources.len();
        let resp = DiscoveryResponse {
            version_info: version.clone(),
            type_url: type_url.into(),
            nonce,
            resources,
            ..DiscoveryResponse::default()
        };
        self.log.push(Logged::Sent {
            type_url: type_url.into(),
            version,
            count,
        });
        if let Some(out) = self.sotw.last() {
            let _ = out.blocking_send(Ok(resp));
        }
    }

    fn send_delta(&mut self, type_url: &str, names: &[String]) {
        let (version, nonce) = self.next(type_url);
        let resources: Vec<Resource> = self
            .resources(type_url, names)
            .into_iter()
            .map(|(name, any)| Resource {
                name,
                version: version.clone(),
                resource: Some(any),
                ..Resource::default()
            })
            .collect();
        let count = resources.len();
        let resp = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            type_url: type_url.into(),
            nonce,
            resources,
            ..DeltaDiscoveryResponse::default()
        };
        self.log.push(Logged::Sent {
            type_url: type_url.into(),
            version,
            count,
        });
        if let Some(out) = self.delta.last() {
            let _ = out.blocking_send(Ok(resp));
        }
    }
}
