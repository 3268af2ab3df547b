//! The ADS client against an in-process gRPC server (tonic + envoy-types) that the test
//! scripts response by response: initial requests, ACK/NACK on the wire, events out,
//! reconnect after the server ends a stream, and what the new stream announces.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::time::Duration;
use switchyard_control::rib::NodeInfo;
use switchyard_control::xds::client::{self, Api, ClientConfig, Command, Event};
use switchyard_control::xds::server::start_server;
use switchyard_control::xds::{CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE};
use tokio::sync::mpsc as tokio_mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn start_client(
    addr: SocketAddr,
    api: Api,
) -> (
    mpsc::Receiver<Event>,
    tokio_mpsc::UnboundedSender<Command>,
    std::thread::JoinHandle<()>,
) {
    let node = NodeInfo {
        id: "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local".into(),
        cluster: "switchyard".into(),
        ..NodeInfo::default()
    };
    let mut config = ClientConfig::new(addr, node, api);
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    let (events_tx, events) = mpsc::channel();
    let (commands, handle) = client::spawn(config, "xds", events_tx).unwrap();
    (events, commands, handle)
}

fn sock(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

fn assignment(cluster: &str, port: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(sock("127.0.0.1", port)),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            }],
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

fn cluster_any(name: &str, port: u32) -> Any {
    let c = Cluster {
        name: name.into(),
        load_assignment: Some(assignment(name, port)),
        ..Cluster::default()
    };
    Any {
        type_url: CLUSTER_TYPE.into(),
        value: c.encode_to_vec(),
    }
}

fn next_event(events: &mpsc::Receiver<Event>) -> Event {
    events.recv_timeout(WAIT).expect("an event from the client")
}

fn sotw_response(
    type_url: &str,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources,
        ..DiscoveryResponse::default()
    }
}

#[test]
fn sotw_initial_requests_ack_nack_and_reconnect() {
    let (addr, streams, _) = start_server();
    let (events, commands, handle) = start_client(addr, Api::Sotw);
    let stream = streams
        .recv_timeout(WAIT)
        .expect("the client opens a stream");
    let first: Vec<DiscoveryRequest> = (0..3)
        .map(|_| stream.requests.recv_timeout(WAIT).unwrap())
        .collect();
    let types: Vec<&str> = first.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, [CLUSTER_TYPE, ENDPOINTS_TYPE, LISTENER_TYPE]);
    let node = first[0].node.as_ref().unwrap();
    assert_eq!(node.cluster, "switchyard");
    assert_eq!(node.user_agent_name, "switchyard");
    assert!(first[1].node.is_none(), "node only on the first request");
    assert_eq!(next_event(&events), Event::Connected);

    // One valid and one invalid cluster: NACK naming the bad one, the good one applied.
    let resp = sotw_response(
        CLUSTER_TYPE,
        "c-v1",
        "n1",
        vec![cluster_any("good", 8080), cluster_any("bad", 70000)],
    );
    stream.responses.blocking_send(Ok(resp)).unwrap();
    let nack = stream.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(nack.response_nonce, "n1");
    assert_eq!(
        nack.version_info, "",
        "nothing accepted before: the NACK echoes \"\""
    );
    let detail = nack.error_detail.expect("NACK");
    assert!(detail.message.contains("bad:"), "{}", detail.message);
    assert!(detail.message.contains("port_value"), "{}", detail.message);
    let Event::Clusters(change) = next_event(&events) else {
        panic!("clusters change expected")
    };
    assert_eq!(change.upserts.len(), 1);
    assert_eq!(change.upserts[0].name, "good");
    assert_eq!(change.rejected[0].name, "bad");

    // A clean response is ACKed with its version.
    let resp = sotw_response(CLUSTER_TYPE, "c-v2", "n2", vec![cluster_any("good", 8081)]);
    stream.responses.blocking_send(Ok(resp)).unwrap();
    let ack = stream.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("c-v2", "n2")
    );
    assert!(ack.error_detail.is_none());
    assert!(matches!(next_event(&events), Event::Clusters(_)));

    // Watching endpoints sends an EDS request with the names and the stream's nonce rules.
    commands
        .send(Command::WatchEndpoints(vec!["good".into()]))
        .unwrap();
    let eds = stream.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(eds.type_url, ENDPOINTS_TYPE);
    assert_eq!(eds.resource_names, ["good"]);
    let cla = Any {
        type_url: ENDPOINTS_TYPE.into(),
        value: assignment("good", 9000).encode_to_vec(),
    };
    stream
        .responses
        .blocking_send(Ok(sotw_response(ENDPOINTS_TYPE, "e-v1", "n3", vec![cla])))
        .unwrap();
    let ack = stream.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(ack.version_info, "e-v1");
    let Event::Endpoints(change) = next_event(&events) else {
        panic!("endpoints change expected")
    };
    assert_eq!(change.upserts[0].value[0].address.port(), 9000);

    // The server ends the stream: Disconnected, then a new stream announcing the versions.
    drop(stream);
    assert!(matches!(next_event(&events), Event::Disconnected(_)));
    let again = streams.recv_timeout(WAIT).expect("the client reconnects");
    let first: Vec<DiscoveryRequest> = (0..3)
        .map(|_| again.requests.recv_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(first[0].version_info, "c-v2");
    assert_eq!(first[0].response_nonce, "");
    assert_eq!(first[1].resource_names, ["good"]);
    assert_eq!(first[1].version_info, "e-v1");
    assert_eq!(next_event(&events), Event::Connected);

    commands.send(Command::Stop).unwrap();
    handle.join().unwrap();
}

#[test]
fn delta_ack_nack_and_initial_resource_versions_after_reconnect() {
    let (addr, _, streams) = start_server();
    let (events, commands, handle) = start_client(addr, Api::Delta);
    let stream = streams
        .recv_timeout(WAIT)
        .expect("the client opens a stream");
    let first: Vec<DeltaDiscoveryRequest> = (0..3)
        .map(|_| stream.requests.recv_timeout(WAIT).unwrap())
        .collect();
    assert_eq!(first[0].type_url, CLUSTER_TYPE);
    assert!(first[0].resource_names_subscribe.is_empty(), "wildcard");
    assert!(first[0].node.is_some());
    assert_eq!(next_event(&events), Event::Connected);

    let resource = |name: &str, version: &str, port: u32| Resource {
        name: name.into(),
        version: version.into(),
        resource: Some(cluster_any(name, port)),
        ..Resource::default()
    };
    let resp = DeltaDiscoveryResponse {
        type_url: CLUSTER_TYPE.into(),
        nonce: "d1".into(),
        resources: vec![resource("a", "1", 8080), resource("b", "1", 70000)],
        ..DeltaDiscoveryResponse::default()
    };
    stream.responses.blocking_send(Ok(resp)).unwrap();
    let nack = stream.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(nack.response_nonce, "d1");
    assert!(nack.error_detail.unwrap().message.contains("b:"));
    assert!(matches!(next_event(&events), Event::Clusters(c) if c.upserts.len() == 1));

    drop(stream);
    assert!(matches!(next_event(&events), Event::Disconnected(_)));
    let again = streams.recv_timeout(WAIT).expect("the client reconnects");
    let first = again.requests.recv_timeout(WAIT).unwrap();
    assert_eq!(first.type_url, CLUSTER_TYPE);
    assert_eq!(
        first.initial_resource_versions.get("a").map(String::as_str),
        Some("1")
    );
    assert!(
        !first.initial_resource_versions.contains_key("b"),
        "a rejected resource is not announced as held"
    );
    commands.send(Command::Stop).unwrap();
    handle.join().unwrap();
}

#[test]
fn an_unreachable_server_reports_and_retries() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // nothing listens there any more
    let (events, commands, handle) = start_client(addr, Api::Sotw);
    for _ in 0..2 {
        match next_event(&events) {
            Event::Disconnected(reason) => assert!(reason.contains("unreachable"), "{reason}"),
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    commands.send(Command::Stop).unwrap();
    handle.join().unwrap();
}

/// A DNS management cluster: no address until its name resolves (each attempt fails and is
/// retried), then the addresses [`Command::Servers`] gives, tried in turn.
#[test]
fn servers_come_later_and_are_tried_in_turn() {
    let node = NodeInfo {
        id: "n".into(),
        cluster: "c".into(),
        ..NodeInfo::default()
    };
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // nothing listens there any more
    let mut config = ClientConfig::to_servers(Vec::new(), node, Api::Sotw);
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    let (events_tx, events) = mpsc::channel();
    let (commands, handle) = client::spawn(config, "xds", events_tx).unwrap();
    match next_event(&events) {
        Event::Disconnected(reason) => assert!(reason.contains("not resolved"), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let (live, streams, _) = start_server();
    commands.send(Command::Servers(vec![dead, live])).unwrap();
    // The dead address first, then the live one.
    loop {
        match next_event(&events) {
            Event::Disconnected(reason) if reason.contains("not resolved") => continue,
            Event::Disconnected(reason) => {
                assert!(reason.contains(&dead.to_string()), "{reason}");
                break;
            }
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    assert_eq!(next_event(&events), Event::Connected);
    streams
        .recv_timeout(WAIT)
        .expect("the client opens a stream on the live address");
    commands.send(Command::Stop).unwrap();
    handle.join().unwrap();
}
