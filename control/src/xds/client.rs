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
//!
//! The management server's addresses: a STATIC cluster's first endpoint, or the hosts a
//! STRICT_DNS / LOGICAL_DNS cluster's latest answers gave (resolved on the `dns` thread, never
//! here; the controller hands each new answer over as [`Command::Servers`]). Each connection
//! attempt takes the next address in turn (round robin, as Envoy's gRPC client picks a host
//! of the cluster per stream); an open stream stays on its address whatever later answers
//! say. With no address yet (the name has not resolved), an attempt fails at once and is
//! retried with the backoff; new addresses end a backoff wait.

use super::{
    delta, sotw, Change, Held, Parallel, Rejected, Validator, CLUSTER_TYPE, ENDPOINTS_TYPE,
    LISTENER_TYPE, SECRET_TYPE,
};
use crate::convert;
use crate::rib::{
    Bind, ClusterConfig, EndpointConfig, FileSource, ListenerConfig, NodeInfo, SecretValue,
};
use crate::xds::resource;
use envoy_types::pb::envoy::config::core::v3::{Locality as PbLocality, Node};
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc as tokio_mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use crate::rib::XdsApi as Api;

/// Which discovery service a stream speaks, and so which types it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `AggregatedDiscoveryService`: clusters (when `clusters`), endpoint assignments, and
    /// listeners (when `listeners`) on one stream.
    Ads { clusters: bool, listeners: bool },
    /// `ListenerDiscoveryService`: listeners only (`lds_config.api_config_source`).
    Listeners,
    /// `ClusterDiscoveryService`: clusters only (`cds_config.api_config_source`).
    Clusters,
    /// `EndpointDiscoveryService`: endpoint assignments only (an EDS cluster's
    /// `eds_config.api_config_source`).
    Endpoints,
}

impl Service {
    /// Whether the stream carries clusters, endpoint assignments, listeners.
    fn carries(self) -> (bool, bool, bool) {
        match self {
            Service::Ads {
                clusters,
                listeners,
            } => (clusters, true, listeners),
            Service::Listeners => (false, false, true),
            Service::Clusters => (true, false, false),
            Service::Endpoints => (false, true, false),
        }
    }
}

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The management server's addresses, tried in turn (a STATIC cluster's endpoint, or a
    /// DNS cluster's hosts; empty until its name resolves).
    pub servers: Vec<SocketAddr>,
    /// Sent (as `node`, with `user_agent_name: switchyard`) on the first request of every
    /// stream.
    pub node: NodeInfo,
    pub api: Api,
    /// The discovery service (ADS, or one type's own); ADS with every type by default.
    pub service: Service,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max` (each delay is
    /// drawn uniformly between half and all of it).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bound on connecting (TCP + HTTP/2 handshake).
    pub connect_timeout: Duration,
    /// Request metadata sent when every stream opens (`grpc_services[].initial_metadata`:
    /// lower-cased names and their values, checked by `convert`).
    pub initial_metadata: Vec<(String, String)>,
    /// What the subscriptions start out holding (a warm start from `--state-dir`).
    pub held: Held,
    /// The endpoint assignments to watch from the start.
    pub endpoints: Vec<String>,
    /// Addresses no received listener may take: the static listeners' and the admin's,
    /// each with what holds it.
    pub reserved_addresses: Vec<(String, Bind)>,
    /// What a received cluster's `eds_config` may name.
    pub eds_sources: ClusterSources,
}

impl ClientConfig {
    /// Envoy's defaults: 500 ms base, 30 s cap.
    pub fn new(server: SocketAddr, node: NodeInfo, api: Api) -> ClientConfig {
        ClientConfig::to_servers(vec![server], node, api)
    }

    /// As [`ClientConfig::new`], to these addresses in turn (none yet: every attempt fails
    /// until [`Command::Servers`] gives some).
    pub fn to_servers(servers: Vec<SocketAddr>, node: NodeInfo, api: Api) -> ClientConfig {
        ClientConfig {
            servers,
            node,
            api,
            service: Service::Ads {
                clusters: true,
                listeners: true,
            },
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            initial_metadata: Vec::new(),
            held: Held::new(),
            endpoints: Vec::new(),
            reserved_addresses: Vec::new(),
            eds_sources: ClusterSources::default(),
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

/// The cluster validator: each cluster as [`resource::cluster`] checks it (on several
/// threads for a large response), then where an EDS cluster's assignment would come from,
/// which must be usable: `ads: {}` only with an ADS stream, a gRPC source's cluster a static
/// one (STATIC with endpoints, or DNS), a file that exists ([`convert::eds_source_usable`]).
#[derive(Debug, Clone)]
pub struct ClusterSources {
    /// The bootstrap's static clusters.
    pub statics: Vec<Arc<ClusterConfig>>,
    /// Whether there is an ADS stream (`dynamic_resources.ads_config`).
    pub ads: bool,
}

impl Default for ClusterSources {
    /// ADS, no static cluster.
    fn default() -> ClusterSources {
        ClusterSources {
            statics: Vec::new(),
            ads: true,
        }
    }
}

impl Validator<ClusterConfig> for ClusterSources {
    fn validate(&mut self, resource: &Any) -> Result<(String, ClusterConfig), Rejected> {
        resource::cluster(resource)
    }

    fn validate_many(
        &mut self,
        resources: &[&Any],
    ) -> Vec<Result<(String, ClusterConfig), Rejected>> {
        Parallel(resource::cluster).validate_many(resources)
    }

    fn conflicts(
        &mut self,
        accepted: &[(String, ClusterConfig, Any)],
        _removed: &[String],
        _replaces_all: bool,
    ) -> Vec<(usize, String)> {
        accepted
            .iter()
            .enumerate()
            .filter_map(|(i, (_, c, _))| {
                convert::eds_source_usable(c, &self.statics, self.ads)
                    .err()
                    .map(|e| (i, e.to_string()))
            })
            .collect()
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
    /// Secrets (SDS): over ADS (`None`), or from a file (`path_config_source`).
    Secrets(Option<FileSource>, Change<SecretValue>),
    /// A file subscription's update that changed nothing: the file could not be read or
    /// parsed (Envoy's `update_failure`), or it was refused whole (`update_rejected`).
    Failed(Failure),
}

/// A file update that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The type the file holds.
    pub type_url: String,
    /// For endpoint assignments: the names the file was watched for.
    pub names: Vec<String>,
    /// The file and why (with the bad field's path where there is one).
    pub reason: String,
    /// Refused (`update_rejected`), rather than unreadable (`update_failure`).
    pub rejected: bool,
}

/// Where a client's events go (the control thread): false once nobody listens.
pub struct EventSink(Box<dyn Fn(Event) -> bool + Send>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventSink {
    /// Events through `send`, which returns false once the receiver is gone.
    pub fn new(send: impl Fn(Event) -> bool + Send + 'static) -> EventSink {
        EventSink(Box::new(send))
    }

    /// Hands `event` over; `Err` once nobody listens.
    pub fn send(&self, event: Event) -> Result<(), Gone> {
        if (self.0)(event) {
            Ok(())
        } else {
            Err(Gone)
        }
    }
}

impl From<mpsc::Sender<Event>> for EventSink {
    fn from(tx: mpsc::Sender<Event>) -> EventSink {
        EventSink::new(move |e| tx.send(e).is_ok())
    }
}

/// The receiver of events is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// What the control thread asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Watch the endpoint assignments of these clusters (the EDS clusters accepted so far).
    WatchEndpoints(Vec<String>),
    /// Watch these secrets (those the listeners and clusters name with `ads: {}`); an ADS
    /// stream subscribes to secrets once the first is named.
    WatchSecrets(Vec<String>),
    /// The management server's addresses are now these (a DNS cluster's latest answer):
    /// later connection attempts use them.
    Servers(Vec<SocketAddr>),
    /// Close the stream and end the thread.
    Stop,
}

/// Starts the client thread, named `name`.
pub fn spawn(
    mut config: ClientConfig,
    name: &str,
    events: impl Into<EventSink>,
) -> std::io::Result<(
    tokio_mpsc::UnboundedSender<Command>,
    std::thread::JoinHandle<()>,
)> {
    let events = events.into();
    let (commands, rx) = tokio_mpsc::unbounded_channel();
    let handle = std::thread::Builder::new()
        .name(name.into())
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
            let validators = Validators {
                listeners: ListenerAddresses::new(std::mem::take(&mut config.reserved_addresses)),
                clusters: config.eds_sources.clone(),
            };
            let (service, endpoints) = (config.service, config.endpoints.clone());
            match config.api {
                Api::Sotw => {
                    let wire =
                        Streams::<sotw::Subscription>::new(service, &held, &endpoints, validators);
                    runtime.block_on(Client::new(config, events, rx, wire).run())
                }
                Api::Delta => {
                    let wire =
                        Streams::<delta::Subscription>::new(service, &held, &endpoints, validators);
                    runtime.block_on(Client::new(config, events, rx, wire).run())
                }
            }
        })?;
    Ok((commands, handle))
}

/// The validators of the types that need more than one resource at a time.
struct Validators {
    listeners: ListenerAddresses,
    clusters: ClusterSources,
}

/// One protocol variant: the subscriptions of its service and its stream.
trait Wire {
    type Req: Send + 'static;
    type Resp;
    /// The first requests of a stream, in order: clusters (with `node`), endpoints, listeners
    /// (those the service carries).
    fn initial(&mut self, node: &Node) -> Vec<Self::Req>;
    /// Changes the watched endpoint names: the request, and the assignments dropped.
    fn watch(&mut self, names: Vec<String>) -> Option<(Self::Req, Vec<String>)>;
    /// Changes the watched secret names: the request, if any is due. A secret no longer
    /// watched is not reported removed: Envoy keeps a secret until nothing uses it.
    fn watch_secrets(&mut self, names: Vec<String>) -> Option<Self::Req>;
    /// Validates one response: the event for the control thread, and the ACK or NACK.
    fn answer(&mut self, resp: &Self::Resp) -> (Option<Event>, Self::Req);
    /// Opens the stream, with `metadata` as its request metadata.
    async fn open(
        &self,
        channel: tonic::transport::Channel,
        requests: ReceiverStream<Self::Req>,
        metadata: &[(String, String)],
    ) -> Result<tonic::Streaming<Self::Resp>, tonic::Status>;
}

/// The stream's request: `requests` with `metadata` (names and values `convert` checked, so
/// a failure here is a bug, reported as the stream's error).
fn with_metadata<R>(
    requests: ReceiverStream<R>,
    metadata: &[(String, String)],
) -> Result<tonic::Request<ReceiverStream<R>>, tonic::Status> {
    let mut request = tonic::Request::new(requests);
    for (name, value) in metadata {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes())
            .map_err(|e| tonic::Status::internal(format!("metadata name {name:?}: {e}")))?;
        let value = tonic::metadata::AsciiMetadataValue::try_from(value.as_str())
            .map_err(|e| tonic::Status::internal(format!("metadata {name} value: {e}")))?;
        request.metadata_mut().append(key, value);
    }
    Ok(request)
}

/// The NACK of a response for a type nobody subscribed to.
fn unsubscribed(type_url: &str) -> Option<envoy_types::pb::google::rpc::Status> {
    super::nack_status(&[Rejected::new(
        "",
        format!("type_url: {type_url:?} is not subscribed"),
    )])
}

/// A client's gRPC stubs, largest messages allowed (a first push of 10k assignments).
macro_rules! stub {
    ($client:ty, $channel:expr) => {
        <$client>::new($channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    };
}

/// What the client needs of a protocol variant's subscription ([`sotw::Subscription`],
/// [`delta::Subscription`]) and stream.
trait Protocol: Sized {
    type Req: Send + 'static;
    type Resp;
    fn wildcard(type_url: &str) -> Self;
    fn named(type_url: &str, names: &[String]) -> Self;
    fn holding(self, held: &Held) -> Self;
    fn initial_request(&mut self, node: Option<Node>) -> Self::Req;
    fn set_names(&mut self, names: Vec<String>) -> Option<(Self::Req, Vec<String>)>;
    fn on_response<T>(
        &mut self,
        resp: &Self::Resp,
        validator: &mut impl Validator<T>,
    ) -> (Change<T>, Self::Req);
    /// The response's type and nonce.
    fn type_and_nonce(resp: &Self::Resp) -> (&str, &str);
    /// The NACK of a response of a type not subscribed to.
    fn nack_unsubscribed(type_url: &str, nonce: &str) -> Self::Req;
    /// Opens a stream of `service`.
    async fn open(
        service: Service,
        channel: tonic::transport::Channel,
        requests: tonic::Request<ReceiverStream<Self::Req>>,
    ) -> Result<tonic::Streaming<Self::Resp>, tonic::Status>;
}

impl Protocol for sotw::Subscription {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;

    fn wildcard(type_url: &str) -> Self {
        sotw::Subscription::wildcard(type_url)
    }
    fn named(type_url: &str, names: &[String]) -> Self {
        sotw::Subscription::named(type_url, names.iter().cloned())
    }
    fn holding(self, held: &Held) -> Self {
        sotw::Subscription::holding(self, held)
    }
    fn initial_request(&mut self, node: Option<Node>) -> DiscoveryRequest {
        sotw::Subscription::initial_request(self, node)
    }
    fn set_names(&mut self, names: Vec<String>) -> Option<(DiscoveryRequest, Vec<String>)> {
        sotw::Subscription::set_names(self, names)
    }
    fn on_response<T>(
        &mut self,
        resp: &DiscoveryResponse,
        validator: &mut impl Validator<T>,
    ) -> (Change<T>, DiscoveryRequest) {
        sotw::Subscription::on_response(self, resp, validator)
    }
    fn type_and_nonce(resp: &DiscoveryResponse) -> (&str, &str) {
        (&resp.type_url, &resp.nonce)
    }
    fn nack_unsubscribed(type_url: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: unsubscribed(type_url),
            ..DiscoveryRequest::default()
        }
    }
    async fn open(
        service: Service,
        channel: tonic::transport::Channel,
        requests: tonic::Request<ReceiverStream<DiscoveryRequest>>,
    ) -> Result<tonic::Streaming<DiscoveryResponse>, tonic::Status> {
        Ok(match service {
            Service::Ads { .. } => {
                stub!(AdsClient, channel)
                    .stream_aggregated_resources(requests)
                    .await?
            }
            Service::Listeners => stub!(LdsClient, channel).stream_listeners(requests).await?,
            Service::Clusters => stub!(CdsClient, channel).stream_clusters(requests).await?,
            Service::Endpoints => stub!(EdsClient, channel).stream_endpoints(requests).await?,
        }
        .into_inner())
    }
}

impl Protocol for delta::Subscription {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;

    fn wildcard(type_url: &str) -> Self {
        delta::Subscription::wildcard(type_url)
    }
    fn named(type_url: &str, names: &[String]) -> Self {
        delta::Subscription::named(type_url, names.iter().cloned())
    }
    fn holding(self, held: &Held) -> Self {
        delta::Subscription::holding(self, held)
    }
    fn initial_request(&mut self, node: Option<Node>) -> DeltaDiscoveryRequest {
        delta::Subscription::initial_request(self, node)
    }
    fn set_names(&mut self, names: Vec<String>) -> Option<(DeltaDiscoveryRequest, Vec<String>)> {
        delta::Subscription::set_names(self, names)
    }
    fn on_response<T>(
        &mut self,
        resp: &DeltaDiscoveryResponse,
        validator: &mut impl Validator<T>,
    ) -> (Change<T>, DeltaDiscoveryRequest) {
        delta::Subscription::on_response(self, resp, validator)
    }
    fn type_and_nonce(resp: &DeltaDiscoveryResponse) -> (&str, &str) {
        (&resp.type_url, &resp.nonce)
    }
    fn nack_unsubscribed(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: nonce.to_string(),
            error_detail: unsubscribed(type_url),
            ..DeltaDiscoveryRequest::default()
        }
    }
    async fn open(
        service: Service,
        channel: tonic::transport::Channel,
        requests: tonic::Request<ReceiverStream<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        Ok(match service {
            Service::Ads { .. } => {
                stub!(AdsClient, channel)
                    .delta_aggregated_resources(requests)
                    .await?
            }
            Service::Listeners => stub!(LdsClient, channel).delta_listeners(requests).await?,
            Service::Clusters => stub!(CdsClient, channel).delta_clusters(requests).await?,
            Service::Endpoints => stub!(EdsClient, channel).delta_endpoints(requests).await?,
        }
        .into_inner())
    }
}

/// The subscriptions of one stream (those its service carries), in either variant.
struct Streams<P: Protocol> {
    service: Service,
    clusters: Option<P>,
    endpoints: Option<P>,
    listeners: Option<P>,
    /// SDS (ADS only): made when the first secret is named.
    secrets: Option<P>,
    validators: Validators,
}

impl<P: Protocol> Streams<P> {
    fn new(service: Service, held: &Held, endpoints: &[String], v: Validators) -> Streams<P> {
        let (c, e, l) = service.carries();
        Streams {
            service,
            clusters: c.then(|| P::wildcard(CLUSTER_TYPE).holding(held)),
            endpoints: e.then(|| P::named(ENDPOINTS_TYPE, endpoints).holding(held)),
            listeners: l.then(|| P::wildcard(LISTENER_TYPE).holding(held)),
            secrets: None,
            validators: v,
        }
    }
}

impl<P: Protocol> Wire for Streams<P> {
    type Req = P::Req;
    type Resp = P::Resp;

    fn initial(&mut self, node: &Node) -> Vec<P::Req> {
        let mut node = Some(node.clone());
        [
            &mut self.clusters,
            &mut self.endpoints,
            &mut self.listeners,
            &mut self.secrets,
        ]
        .into_iter()
        .flatten()
        .map(|s| s.initial_request(node.take()))
        .collect()
    }

    fn watch(&mut self, names: Vec<String>) -> Option<(P::Req, Vec<String>)> {
        self.endpoints.as_mut()?.set_names(names)
    }

    fn watch_secrets(&mut self, names: Vec<String>) -> Option<P::Req> {
        if !matches!(self.service, Service::Ads { .. }) {
            return None;
        }
        match &mut self.secrets {
            Some(s) => s.set_names(names).map(|(req, _)| req),
            None if names.is_empty() => None,
            None => {
                let mut s = P::named(SECRET_TYPE, &names);
                let req = s.initial_request(None);
                self.secrets = Some(s);
                Some(req)
            }
        }
    }

    fn answer(&mut self, resp: &P::Resp) -> (Option<Event>, P::Req) {
        let v = &mut self.validators;
        let (type_url, nonce) = P::type_and_nonce(resp);
        match (
            type_url,
            &mut self.clusters,
            &mut self.endpoints,
            &mut self.listeners,
        ) {
            (CLUSTER_TYPE, Some(s), _, _) => {
                let (c, r) = s.on_response(resp, &mut v.clusters);
                (Some(Event::Clusters(c)), r)
            }
            (ENDPOINTS_TYPE, _, Some(s), _) => {
                let (c, r) = s.on_response(resp, &mut Parallel(resource::endpoints));
                (Some(Event::Endpoints(c)), r)
            }
            (LISTENER_TYPE, _, _, Some(s)) => {
                let (c, r) = s.on_response(resp, &mut v.listeners);
                (Some(Event::Listeners(c)), r)
            }
            (SECRET_TYPE, _, _, _) if self.secrets.is_some() => {
                let s = self.secrets.as_mut().expect("checked");
                let (c, r) = s.on_response(resp, &mut Parallel(resource::secret));
                (Some(Event::Secrets(None, c)), r)
            }
            _ => (None, P::nack_unsubscribed(type_url, nonce)),
        }
    }

    async fn open(
        &self,
        channel: tonic::transport::Channel,
        requests: ReceiverStream<P::Req>,
        metadata: &[(String, String)],
    ) -> Result<tonic::Streaming<P::Resp>, tonic::Status> {
        P::open(self.service, channel, with_metadata(requests, metadata)?).await
    }
}

type AdsClient = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;
type LdsClient = ListenerDiscoveryServiceClient<tonic::transport::Channel>;
type CdsClient = ClusterDiscoveryServiceClient<tonic::transport::Channel>;
type EdsClient = EndpointDiscoveryServiceClient<tonic::transport::Channel>;

struct Client<W: Wire> {
    config: ClientConfig,
    /// `config.node` as the proto `Node`.
    node: Node,
    events: EventSink,
    commands: tokio_mpsc::UnboundedReceiver<Command>,
    wire: W,
    seed: u64,
    /// How many connection attempts were made: the next takes `servers[attempts % len]`.
    attempts: usize,
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
        events: EventSink,
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
            metadata: config
                .node
                .metadata
                .as_deref()
                .and_then(|b| prost::Message::decode(b).ok()),
            locality: config.node.locality.as_ref().map(|l| PbLocality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            }),
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
            attempts: 0,
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
            Some(Command::WatchSecrets(names)) => {
                self.wire.watch_secrets(names);
                false
            }
            Some(Command::Servers(servers)) => {
                self.set_servers(servers);
                false
            }
        }
    }

    fn set_servers(&mut self, servers: Vec<SocketAddr>) {
        if servers != self.config.servers {
            tracing::info!(?servers, "xDS: management server addresses changed");
            self.config.servers = servers;
        }
    }

    /// The address the next connection attempt takes, in turn; `None` while there is none.
    fn next_server(&mut self) -> Option<SocketAddr> {
        let servers = &self.config.servers;
        if servers.is_empty() {
            return None;
        }
        let server = servers[self.attempts % servers.len()];
        self.attempts = self.attempts.wrapping_add(1);
        Some(server)
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
        let Some(server) = self.next_server() else {
            return Ended::Broke(
                "no management server address yet (its cluster's DNS names have not resolved)"
                    .into(),
                false,
            );
        };
        let timeout = self.config.connect_timeout;
        // A watch change while connecting is remembered for the initial requests; only a
        // stop ends the attempt.
        let connecting = connect(server, timeout);
        tokio::pin!(connecting);
        let client = loop {
            tokio::select! {
                c = &mut connecting => break c,
                stop = self.idle_command() => if stop { return Ended::Stop },
            }
        };
        let channel = match client {
            Ok(c) => c,
            Err(e) => return Ended::Broke(e, false),
        };
        let (tx, rx) = tokio_mpsc::channel::<W::Req>(64);
        for r in self.wire.initial(&self.node) {
            if tx.send(r).await.is_err() {
                return Ended::Broke("request stream closed".into(), false);
            }
        }
        let opened = self.wire.open(
            channel,
            ReceiverStream::new(rx),
            &self.config.initial_metadata,
        );
        let mut inbound = match opened.await {
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
                    Some(Command::WatchSecrets(names)) => {
                        if let Some(req) = self.wire.watch_secrets(names) {
                            let _ = tx.send(req).await;
                        }
                    }
                    // For the next stream: this one stays where it is.
                    Some(Command::Servers(servers)) => self.set_servers(servers),
                },
            }
        }
    }
}

async fn connect(
    server: SocketAddr,
    timeout: Duration,
) -> Result<tonic::transport::Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .map_err(|e| format!("control plane address: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .map_err(|e| format!("control plane {server} unreachable: {e}"))
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
