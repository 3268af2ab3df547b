//! The ADS client: one gRPC stream to the management server carrying listeners, clusters and
//! endpoint assignments, State of the World or Delta.
//!
//! It runs on its own thread (`xds`) with a single-threaded tokio runtime and talks to the
//! control thread only through channels: [`Event`]s out (what each response changed, already
//! validated, and the connection state), [`Command`]s in (the endpoint names to watch, stop).
//! Every response is validated here and answered at once with an ACK or NACK (see
//! [`super::sotw`], [`super::delta`]), so the server never waits on the control thread.
//!
//! Guarantees:
//! - requests on a stream: clusters (wildcard) first, then endpoints (the names last set),
//!   then listeners (wildcard), as Envoy orders ADS; `node` on the first request of a stream;
//! - the stream breaks (server gone, error, end) -> [`Event::Disconnected`], then reconnects
//!   after an exponential backoff with jitter (`backoff_base` doubling up to `backoff_max`,
//!   reset after a stream that delivered a response); what was accepted keeps serving, and
//!   the new stream announces it (SotW versions, Delta `initial_resource_versions`);
//! - [`Command::Stop`] or dropping the command sender ends the thread promptly.

use super::{
    delta, sotw, Change, Held, Parallel, Rejected, Validator, CLUSTER_TYPE, ENDPOINTS_TYPE,
    LISTENER_TYPE,
};
use crate::rib::{Bind, ClusterConfig, EndpointConfig, ListenerConfig, NodeInfo};
use crate::xds::resource;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc as tokio_mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use crate::rib::XdsApi as Api;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The management server (the ADS cluster's endpoint).
    pub server: SocketAddr,
    /// Sent (as `node`, with `user_agent_name: switchyard`) on the first request of every
    /// stream.
    pub node: NodeInfo,
    pub api: Api,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max` (each delay is
    /// drawn uniformly between half and all of it).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bound on connecting (TCP + HTTP/2 handshake).
    pub connect_timeout: Duration,
    /// What the subscriptions start out holding (a warm start from `--state-dir`).
    pub held: Held,
    /// Addresses no received listener may take: the static listeners' and the admin's,
    /// each with what holds it.
    pub reserved_addresses: Vec<(String, Bind)>,
}

impl ClientConfig {
    /// Envoy's defaults: 500 ms base, 30 s cap.
    pub fn new(server: SocketAddr, node: NodeInfo, api: Api) -> ClientConfig {
        ClientConfig {
            server,
            node,
            api,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            held: Held::new(),
            reserved_addresses: Vec::new(),
        }
    }
}

/// The listener validator: each listener as [`resource::listener`] checks it, then its
/// address, which no other listener of its protocol may have: not a static listener nor the
/// admin, not one held, not another in the same response (a TCP and a UDP listener may share
/// an address and port). Envoy NACKs such an update ("duplicate address"); so does
/// Switchyard, naming the listener whose address it is. Of two listeners that want one
/// address, the one already there keeps it, else the first in the response.
#[derive(Debug, Clone, Default)]
pub struct ListenerAddresses {
    reserved: Vec<(String, Bind)>,
    /// Listeners held now (received and accepted), by name.
    held: BTreeMap<String, Bind>,
}

impl ListenerAddresses {
    /// A validator with `reserved` addresses taken (what holds each, and the address).
    pub fn new(reserved: Vec<(String, Bind)>) -> ListenerAddresses {
        ListenerAddresses {
            reserved,
            held: BTreeMap::new(),
        }
    }
}

impl Validator<ListenerConfig> for ListenerAddresses {
    fn validate(&mut self, resource: &Any) -> Result<(String, ListenerConfig), Rejected> {
        resource::listener(resource)
    }

    fn conflicts(
        &mut self,
        accepted: &[(String, ListenerConfig, Any)],
        removed: &[String],
        replaces_all: bool,
    ) -> Vec<(usize, String)> {
        let incoming: BTreeSet<&str> = accepted.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut taken: BTreeMap<Bind, String> = self
            .reserved
            .iter()
            .map(|(what, a)| (*a, what.clone()))
            .collect();
        if !replaces_all {
            for (name, a) in &self.held {
                if !incoming.contains(name.as_str()) && !removed.contains(name) {
                    taken.insert(*a, format!("listener '{name}'"));
                }
            }
        }
        // Listeners staying where they are claim their address first.
        let staying =
            |(name, l, _): &(String, ListenerConfig, Any)| self.held.get(name) == Some(&l.bind());
        let order = accepted
            .iter()
            .enumerate()
            .filter(|(_, a)| staying(a))
            .chain(accepted.iter().enumerate().filter(|(_, a)| !staying(a)));
        let mut late = Vec::new();
        for (i, (name, l, _)) in order {
            match taken.get(&l.bind()) {
                Some(other) => {
                    late.push((i, format!("address: {} is already {other}'s", l.bind())))
                }
                None => {
                    taken.insert(l.bind(), format!("listener '{name}'"));
                }
            }
        }
        late
    }

    fn committed(&mut self, change: &Change<ListenerConfig>) {
        for name in &change.removals {
            self.held.remove(name);
        }
        for a in &change.upserts {
            self.held.insert(a.name.clone(), a.value.bind());
        }
    }
}

/// What the client reports to the control thread.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stream is open and its initial requests are sent.
    Connected,
    /// The stream broke or could not open (the reason); a reconnect follows.
    Disconnected(String),
    Listeners(Change<ListenerConfig>),
    Clusters(Change<ClusterConfig>),
    /// Endpoint assignments, by cluster name.
    Endpoints(Change<Arc<[EndpointConfig]>>),
}

/// What the control thread asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Watch the endpoint assignments of these clusters (the EDS clusters accepted so far).
    WatchEndpoints(Vec<String>),
    /// Close the stream and end the thread.
    Stop,
}

/// Starts the client thread.
pub fn spawn(
    mut config: ClientConfig,
    events: mpsc::Sender<Event>,
) -> std::io::Result<(
    tokio_mpsc::UnboundedSender<Command>,
    std::thread::JoinHandle<()>,
)> {
    let (commands, rx) = tokio_mpsc::unbounded_channel();
    let handle = std::thread::Builder::new()
        .name("xds".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = events.send(Event::Disconnected(format!("no tokio runtime: {e}")));
                    return;
                }
            };
            let held = std::mem::take(&mut config.held);
            let addresses = ListenerAddresses::new(std::mem::take(&mut config.reserved_addresses));
            match config.api {
                Api::Sotw => runtime.block_on(
                    Client::new(config, events, rx, SotwWire::new(&held, addresses)).run(),
                ),
                Api::Delta => runtime.block_on(
                    Client::new(config, events, rx, DeltaWire::new(&held, addresses)).run(),
                ),
            }
        })?;
    Ok((commands, handle))
}

type AdsClient = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// One protocol variant: its three subscriptions and its stream.
trait Wire {
    type Req: Send + 'static;
    type Resp;
    /// The first requests of a stream, in order: clusters (with `node`), endpoints, listeners.
    fn initial(&mut self, node: &Node) -> [Self::Req; 3];
    /// Changes the watched endpoint names: the request, and the assignments dropped.
    fn watch(&mut self, names: Vec<String>) -> Option<(Self::Req, Vec<String>)>;
    /// Validates one response: the event for the control thread, and the ACK or NACK.
    fn answer(&mut self, resp: &Self::Resp) -> (Option<Event>, Self::Req);
    /// Opens the stream.
    async fn open(
        client: &mut AdsClient,
        requests: ReceiverStream<Self::Req>,
    ) -> Result<tonic::Streaming<Self::Resp>, tonic::Status>;
}

/// The NACK of a response for a type nobody subscribed to.
fn unsubscribed(type_url: &str) -> Option<envoy_types::pb::google::rpc::Status> {
    super::nack_status(&[Rejected::new(
        "",
        format!("type_url: {type_url:?} is not subscribed"),
    )])
}

struct SotwWire {
    clusters: sotw::Subscription,
    endpoints: sotw::Subscription,
    listeners: sotw::Subscription,
    listener_addresses: ListenerAddresses,
}

impl SotwWire {
    fn new(held: &Held, listener_addresses: ListenerAddresses) -> SotwWire {
        SotwWire {
            listener_addresses,
            clusters: sotw::Subscription::wildcard(CLUSTER_TYPE).holding(held),
            endpoints: sotw::Subscription::named(ENDPOINTS_TYPE, []).holding(held),
            listeners: sotw::Subscription::wildcard(LISTENER_TYPE).holding(held),
        }
    }
}

impl Wire for SotwWire {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;

    fn initial(&mut self, node: &Node) -> [DiscoveryRequest; 3] {
        [
            self.clusters.initial_request(Some(node.clone())),
            self.endpoints.initial_request(None),
            self.listeners.initial_request(None),
        ]
    }

    fn watch(&mut self, names: Vec<String>) -> Option<(DiscoveryRequest, Vec<String>)> {
        self.endpoints.set_names(names)
    }

    fn answer(&mut self, resp: &DiscoveryResponse) -> (Option<Event>, DiscoveryRequest) {
        match resp.type_url.as_str() {
            CLUSTER_TYPE => {
                let (c, r) = self
                    .clusters
                    .on_response(resp, &mut Parallel(resource::cluster));
                (Some(Event::Clusters(c)), r)
            }
            ENDPOINTS_TYPE => {
                let (c, r) = self
                    .endpoints
                    .on_response(resp, &mut Parallel(resource::endpoints));
                (Some(Event::Endpoints(c)), r)
            }
            LISTENER_TYPE => {
                let (c, r) = self
                    .listeners
                    .on_response(resp, &mut self.listener_addresses);
                (Some(Event::Listeners(c)), r)
            }
            other => (
                None,
                DiscoveryRequest {
                    type_url: other.to_string(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: unsubscribed(other),
                    ..DiscoveryRequest::default()
                },
            ),
        }
    }

    async fn open(
        client: &mut AdsClient,
        requests: ReceiverStream<DiscoveryRequest>,
    ) -> Result<tonic::Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(client
            .stream_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

struct DeltaWire {
    clusters: delta::Subscription,
    endpoints: delta::Subscription,
    listeners: delta::Subscription,
    listener_addresses: ListenerAddresses,
}

impl DeltaWire {
    fn new(held: &Held, listener_addresses: ListenerAddresses) -> DeltaWire {
        DeltaWire {
            listener_addresses,
            clusters: delta::Subscription::wildcard(CLUSTER_TYPE).holding(held),
            endpoints: delta::Subscription::named(ENDPOINTS_TYPE, []).holding(held),
            listeners: delta::Subscription::wildcard(LISTENER_TYPE).holding(held),
        }
    }
}

impl Wire for DeltaWire {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;

    fn initial(&mut self, node: &Node) -> [DeltaDiscoveryRequest; 3] {
        [
            self.clusters.initial_request(Some(node.clone())),
            self.endpoints.initial_request(None),
            self.listeners.initial_request(None),
        ]
    }

    fn watch(&mut self, names: Vec<String>) -> Option<(DeltaDiscoveryRequest, Vec<String>)> {
        self.endpoints.set_names(names)
    }

    fn answer(&mut self, resp: &DeltaDiscoveryResponse) -> (Option<Event>, DeltaDiscoveryRequest) {
        let (event, request) = match resp.type_url.as_str() {
            CLUSTER_TYPE => {
                let (c, r) = self
                    .clusters
                    .on_response(resp, &mut Parallel(resource::cluster));
                (Event::Clusters(c), r)
            }
            ENDPOINTS_TYPE => {
                let (c, r) = self
                    .endpoints
                    .on_response(resp, &mut Parallel(resource::endpoints));
                (Event::Endpoints(c), r)
            }
            LISTENER_TYPE => {
                let (c, r) = self
                    .listeners
                    .on_response(resp, &mut self.listener_addresses);
                (Event::Listeners(c), r)
            }
            other => {
                let nack = DeltaDiscoveryRequest {
                    type_url: other.to_string(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: unsubscribed(other),
                    ..DeltaDiscoveryRequest::default()
                };
                return (None, nack);
            }
        };
        (Some(event), request)
    }

    async fn open(
        client: &mut AdsClient,
        requests: ReceiverStream<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(client
            .delta_aggregated_resources(requests)
            .await?
            .into_inner())
    }
}

struct Client<W: Wire> {
    config: ClientConfig,
    /// `config.node` as the proto `Node`.
    node: Node,
    events: mpsc::Sender<Event>,
    commands: tokio_mpsc::UnboundedReceiver<Command>,
    wire: W,
    seed: u64,
}

/// Why a stream ended.
enum Ended {
    /// Stop asked (or the control thread is gone).
    Stop,
    /// Broke: the reason, and whether any response arrived on it.
    Broke(String, bool),
}

impl<W: Wire> Client<W> {
    fn new(
        config: ClientConfig,
        events: mpsc::Sender<Event>,
        commands: tokio_mpsc::UnboundedReceiver<Command>,
        wire: W,
    ) -> Client<W> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let node = Node {
            id: config.node.id.clone(),
            cluster: config.node.cluster.clone(),
            user_agent_name: "switchyard".into(),
            ..Node::default()
        };
        Client {
            config,
            node,
            events,
            commands,
            wire,
            seed,
        }
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.stream_once().await {
                Ended::Stop => return,
                Ended::Broke(reason, delivered) => {
                    if self.events.send(Event::Disconnected(reason)).is_err() {
                        return;
                    }
                    failures = if delivered {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                }
            }
            let delay = self.backoff(failures);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                stop = self.idle_command() => if stop { return },
            }
        }
    }

    /// The delay before reconnect attempt `failures` (>= 1): uniform in [d/2, d] with
    /// d = min(base * 2^(failures-1), max).
    fn backoff(&mut self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let d = self
            .config
            .backoff_base
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max);
        // xorshift64: jitter only, no need for a strong generator.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed % 1000) as f64 / 1000.0;
        d.mul_f64(0.5 + frac / 2.0)
    }

    /// Applies one command while no stream is open; true when the client must stop.
    async fn idle_command(&mut self) -> bool {
        match self.commands.recv().await {
            None | Some(Command::Stop) => true,
            Some(Command::WatchEndpoints(names)) => {
                // Remembered for the next stream's initial request.
                if let Some((_, dropped)) = self.wire.watch(names) {
                    self.report_dropped(dropped);
                }
                false
            }
        }
    }

    /// Endpoint assignments no longer watched are removals for the control thread.
    fn report_dropped(&self, dropped: Vec<String>) {
        if dropped.is_empty() {
            return;
        }
        let mut change = Change::new(ENDPOINTS_TYPE, "");
        change.removals = dropped;
        let _ = self.events.send(Event::Endpoints(change));
    }

    async fn stream_once(&mut self) -> Ended {
        let (server, timeout) = (self.config.server, self.config.connect_timeout);
        let client = tokio::select! {
            c = connect(server, timeout) => c,
            stop = self.idle_command() => {
                if stop { return Ended::Stop }
                return Ended::Broke("interrupted while connecting".into(), false);
            }
        };
        let mut client = match client {
            Ok(c) => c,
            Err(e) => return Ended::Broke(e, false),
        };
        let (tx, rx) = tokio_mpsc::channel::<W::Req>(64);
        for r in self.wire.initial(&self.node) {
            if tx.send(r).await.is_err() {
                return Ended::Broke("request stream closed".into(), false);
            }
        }
        let mut inbound = match W::open(&mut client, ReceiverStream::new(rx)).await {
            Ok(s) => s,
            Err(s) => return Ended::Broke(format!("stream refused: {s}"), false),
        };
        if self.events.send(Event::Connected).is_err() {
            return Ended::Stop;
        }
        let mut delivered = false;
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(resp)) => {
                        delivered = true;
                        let (event, request) = self.wire.answer(&resp);
                        // The control thread applies while the ACK is encoded and sent.
                        if let Some(e) = event {
                            tracing::debug!("xDS: response validated; handing it over");
                            if self.events.send(e).is_err() {
                                return Ended::Stop;
                            }
                        }
                        let _ = tx.send(request).await;
                    }
                    Ok(None) => return Ended::Broke("stream closed by the server".into(), delivered),
                    Err(s) => return Ended::Broke(format!("stream error: {s}"), delivered),
                },
                command = self.commands.recv() => match command {
                    None | Some(Command::Stop) => return Ended::Stop,
                    Some(Command::WatchEndpoints(names)) => {
                        if let Some((req, dropped)) = self.wire.watch(names) {
                            let _ = tx.send(req).await;
                            self.report_dropped(dropped);
                        }
                    }
                },
            }
        }
    }
}

async fn connect(server: SocketAddr, timeout: Duration) -> Result<AdsClient, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .map_err(|e| format!("control plane address: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("control plane {server} unreachable: {e}"))?;
    Ok(AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::fixtures::{tcp_proxy_listener, TCP_PROXY_TYPE};
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    fn listener(name: &str, port: u32) -> Any {
        tcp_proxy_listener(name, "127.0.0.1", port, "svc", TCP_PROXY_TYPE)
    }

    fn sotw_response(version: &str, listeners: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: format!("n-{version}"),
            type_url: LISTENER_TYPE.into(),
            resources: listeners,
            ..DiscoveryResponse::default()
        }
    }

    #[test]
    fn a_tcp_and_a_udp_listener_share_an_address_two_udp_ones_do_not() {
        use crate::xds::fixtures::udp_proxy_listener;
        let mut sub = sotw::Subscription::wildcard(LISTENER_TYPE);
        let mut v = admin_reserved();
        let resp = sotw_response(
            "1",
            vec![
                listener("tcp", 10053),
                udp_proxy_listener("udp", "127.0.0.1", 10053, "svc"),
                udp_proxy_listener("udp2", "127.0.0.1", 10053, "svc"),
                // The admin's address is TCP: a UDP listener may have it.
                udp_proxy_listener("udp3", "127.0.0.1", 15000, "svc"),
            ],
        );
        let (change, _) = sub.on_response(&resp, &mut v);
        let names: Vec<&str> = change.upserts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["tcp", "udp", "udp3"]);
        assert_eq!(change.rejected[0].name, "udp2");
        assert!(
            change.rejected[0]
                .reason
                .contains("address: 127.0.0.1:10053/udp is already listener 'udp''s"),
            "{}",
            change.rejected[0].reason
        );
    }

    fn admin_reserved() -> ListenerAddresses {
        ListenerAddresses::new(vec![(
            "the admin".into(),
            Bind::tcp("127.0.0.1:15000".parse().unwrap()),
        )])
    }

    #[test]
    fn two_listeners_on_one_address_the_second_is_nacked() {
        let mut sub = sotw::Subscription::wildcard(LISTENER_TYPE);
        let mut v = admin_reserved();
        let resp = sotw_response("1", vec![listener("a", 10001), listener("b", 10001)]);
        let (change, nack) = sub.on_response(&resp, &mut v);
        assert_eq!(change.upserts.len(), 1);
        assert_eq!(change.upserts[0].name, "a");
        assert_eq!(change.rejected[0].name, "b");
        assert!(
            change.rejected[0]
                .reason
                .contains("is already listener 'a''s"),
            "{}",
            change.rejected[0].reason
        );
        let detail = nack.error_detail.expect("NACK");
        assert!(detail.message.contains("b: address"), "{}", detail.message);
        assert_eq!(
            nack.version_info, "",
            "a NACK echoes the last accepted version"
        );
        // The admin's address is taken too.
        let (change, _) = sub.on_response(&sotw_response("2", vec![listener("c", 15000)]), &mut v);
        assert!(change.rejected[0].reason.contains("the admin"));
    }

    #[test]
    fn a_held_listener_keeps_its_address_and_addresses_can_swap_in_one_response() {
        let mut sub = delta::Subscription::wildcard(LISTENER_TYPE);
        let mut v = admin_reserved();
        let delta =
            |nonce: &str, items: Vec<(&str, Any)>, removed: &[&str]| DeltaDiscoveryResponse {
                type_url: LISTENER_TYPE.into(),
                nonce: nonce.into(),
                resources: items
                    .into_iter()
                    .map(|(name, any)| Resource {
                        name: name.into(),
                        version: "1".into(),
                        resource: Some(any),
                        ..Resource::default()
                    })
                    .collect(),
                removed_resources: removed.iter().map(|s| s.to_string()).collect(),
                ..DeltaDiscoveryResponse::default()
            };
        let (c, ack) =
            sub.on_response(&delta("d1", vec![("a", listener("a", 10001))], &[]), &mut v);
        assert!(c.rejected.is_empty() && ack.error_detail.is_none());
        let (c, nack) =
            sub.on_response(&delta("d2", vec![("d", listener("d", 10001))], &[]), &mut v);
        assert_eq!(c.rejected[0].name, "d");
        assert!(nack.error_detail.is_some());
        // a moves away and e takes its old address in the same response: both fine.
        let items = vec![("a", listener("a", 10002)), ("e", listener("e", 10001))];
        let (c, ack) = sub.on_response(&delta("d3", items, &[]), &mut v);
        assert!(c.rejected.is_empty(), "{:?}", c.rejected);
        assert!(ack.error_detail.is_none());
        // Removing a frees its address.
        let (c, _) = sub.on_response(
            &delta("d4", vec![("f", listener("f", 10002))], &["a"]),
            &mut v,
        );
        assert!(c.rejected.is_empty(), "{:?}", c.rejected);
    }
}
