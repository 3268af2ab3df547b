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
    delta, sotw, Change, Held, Parallel, Rejected, CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE,
};
use crate::config::resource;
use crate::rib::{ClusterConfig, EndpointConfig, ListenerConfig, NodeInfo};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
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
    let handle =
        std::thread::Builder::new()
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
                match config.api {
                    Api::Sotw => runtime
                        .block_on(Client::new(config, events, rx, SotwWire::new(&held)).run()),
                    Api::Delta => runtime
                        .block_on(Client::new(config, events, rx, DeltaWire::new(&held)).run()),
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
}

impl SotwWire {
    fn new(held: &Held) -> SotwWire {
        SotwWire {
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
                    .on_response(resp, &mut Parallel(resource::listener));
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
}

impl DeltaWire {
    fn new(held: &Held) -> DeltaWire {
        DeltaWire {
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
                    .on_response(resp, &mut Parallel(resource::listener));
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
