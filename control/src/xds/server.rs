//! A scripted ADS server for tests and benchmarks: every stream a client opens is handed to
//! the caller, who reads the client's requests and writes the responses one by one. It speaks
//! both State of the World and Delta, on 127.0.0.1, from its own thread and tokio runtime.
//! Not a management server: it keeps no state and answers nothing on its own. Test support:
//! built only with the `testing` feature (and for this crate's unit tests).

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc as tokio_mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// How long [`start_server`] waits for its port to accept.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One stream the server accepted: what the client sends, and where to write responses
/// (dropping `responses` ends the stream, as a server going away would).
#[derive(Debug)]
pub struct StreamHandle<Req, Resp> {
    pub requests: mpsc::Receiver<Req>,
    pub responses: ResponseSender<Resp>,
}

/// Where a stream's responses are written (`blocking_send(Ok(response))` from a plain thread).
pub type ResponseSender<Resp> = tokio_mpsc::Sender<Result<Resp, tonic::Status>>;

/// A State of the World stream.
pub type SotwHandle = StreamHandle<DiscoveryRequest, DiscoveryResponse>;
/// A Delta stream.
pub type DeltaHandle = StreamHandle<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

#[derive(Debug)]
struct ScriptedServer {
    sotw: Mutex<mpsc::Sender<SotwHandle>>,
    delta: Mutex<mpsc::Sender<DeltaHandle>>,
}

/// Forwards every message of `inbound` to `out` until the stream ends.
fn forward<T: Send + 'static>(mut inbound: tonic::Streaming<T>, out: mpsc::Sender<T>) {
    tokio::spawn(async move {
        while let Some(Ok(m)) = inbound.next().await {
            if out.send(m).is_err() {
                return;
            }
        }
    });
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ScriptedServer {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, tonic::Status>>;
    type DeltaAggregatedResourcesStream =
        ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        Ok(tonic::Response::new(accept(request, &self.sotw)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        Ok(tonic::Response::new(accept(request, &self.delta)))
    }
}

/// Hands a new stream to the test: its requests, and a sender for its responses.
fn accept<Req: Send + 'static, Resp>(
    request: tonic::Request<tonic::Streaming<Req>>,
    streams: &Mutex<mpsc::Sender<StreamHandle<Req, Resp>>>,
) -> ReceiverStream<Result<Resp, tonic::Status>> {
    let (req_tx, req_rx) = mpsc::channel();
    let (resp_tx, resp_rx) = tokio_mpsc::channel(16);
    forward(request.into_inner(), req_tx);
    let handle = StreamHandle {
        requests: req_rx,
        responses: resp_tx,
    };
    let _ = streams.lock().unwrap().send(handle);
    ReceiverStream::new(resp_rx)
}

/// Starts the server on its own thread; returns its address and the streams it accepts.
/// Returns once the port accepts connections.
pub fn start_server() -> (
    SocketAddr,
    mpsc::Receiver<SotwHandle>,
    mpsc::Receiver<DeltaHandle>,
) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (sotw_tx, sotw_rx) = mpsc::channel();
    let (delta_tx, delta_rx) = mpsc::channel();
    let server = ScriptedServer {
        sotw: Mutex::new(sotw_tx),
        delta: Mutex::new(delta_tx),
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tonic::transport::Server::builder()
                .serve(addr, AggregatedDiscoveryServiceServer::new(server))
                .await
                .unwrap();
        });
    });
    // Ready before any client starts, so a first failed connect is not part of a test.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the test server never listened"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (addr, sotw_rx, delta_rx)
}
