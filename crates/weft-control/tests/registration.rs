//! Auto-registration over real ADS streams: a workload that connects with node metadata is an
//! endpoint of the services it names (a service nobody declared gets its Istio host), and
//! stops being one a grace period after its stream closes.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_control::app::{Config, ControlPlane, Source};
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::envoy::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use weft_xds::envoy::google::protobuf::{ListValue, Struct, Value, value::Kind};
use weft_xds::types::{CLUSTER, ENDPOINT};

fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn workload_node(name: &str, version: &str, ip: &str) -> Node {
    let labels = Struct {
        fields: BTreeMap::from([
            ("app".to_string(), text("echo")),
            ("version".to_string(), text(version)),
        ])
        .into_iter()
        .collect(),
    };
    let fields = [
        ("NAME", text(name)),
        ("NAMESPACE", text("test")),
        ("SERVICE_ACCOUNT", text("echo")),
        (
            "LABELS",
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        ),
        (
            "INSTANCE_IPS",
            Value {
                kind: Some(Kind::ListValue(ListValue {
                    values: vec![text(ip)],
                })),
            },
        ),
        ("SERVICES", text("echo:9000:8080")),
    ];
    Node {
        id: format!("sidecar~{ip}~{name}.test~test.svc.cluster.local"),
        metadata: Some(Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }),
        ..Node::default()
    }
}

struct Stream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
    node: Node,
}

impl Stream {
    async fn open(addr: std::net::SocketAddr, node: Node) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(8);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
            node,
        }
    }

    async fn ask(&self, type_url: &str, names: &[&str], last: Option<&DiscoveryResponse>) {
        self.requests
            .send(DiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.into(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
                response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

/// Endpoint addresses in an EDS response.
fn addresses(response: &DiscoveryResponse) -> Vec<String> {
    let assignment = ClusterLoadAssignment::decode(response.resources[0].value.as_slice()).unwrap();
    assignment
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let debug = format!("{e:?}");
            let address = debug
                .split("address: \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            let port = debug
                .split("PortValue(")
                .nth(1)
                .unwrap()
                .split(')')
                .next()
                .unwrap()
                .to_string();
            format!("{address}:{port}")
        })
        .collect()
}

#[tokio::test]
async fn connected_workloads_are_endpoints_until_their_grace_period_ends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dr.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: test}\nspec:\n  host: echo\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
    )
    .unwrap();
    let (addr, stop) = start(dir.path()).await;

    // A client in namespace `test` watches the endpoints of echo:9000 and of subset v2.
    let client_node = Node {
        id: "sidecar~10.9.9.9~client.test~test.svc.cluster.local".into(),
        ..Node::default()
    };
    let mut client = Stream::open(addr, client_node).await;
    let all = "outbound|9000||echo.test.svc.cluster.local";
    client.ask(ENDPOINT, &[all], None).await;
    let first = client.next().await;
    assert!(first.resources.is_empty(), "nothing serves echo yet");

    // Two workloads connect and say they serve echo:9000 on their port 8080.
    let v1 = Stream::open(addr, workload_node("echo-v1", "v1", "10.1.0.1")).await;
    v1.ask(CLUSTER, &[], None).await;
    let v2 = Stream::open(addr, workload_node("echo-v2", "v2", "10.1.0.2")).await;
    v2.ask(CLUSTER, &[], None).await;
    let mut last = first;
    let endpoints = loop {
        client.ask(ENDPOINT, &[all], Some(&last)).await;
        last = client.next().await;
        if !last.resources.is_empty() && addresses(&last).len() == 2 {
            break addresses(&last);
        }
    };
    assert_eq!(endpoints, ["10.1.0.1:8080", "10.1.0.2:8080"]);

    // The service has a host nobody declared, and subsets select by the workloads' labels.
    let subset = "outbound|9000|v2|echo.test.svc.cluster.local";
    client.ask(ENDPOINT, &[all, subset], Some(&last)).await;
    last = client.next().await;
    let v2_only = last
        .resources
        .iter()
        .map(|r| ClusterLoadAssignment::decode(r.value.as_slice()).unwrap())
        .find(|a| a.cluster_name == subset)
        .unwrap();
    assert_eq!(v2_only.endpoints[0].lb_endpoints.len(), 1);

    // v1 goes away: after the grace period, it is no longer an endpoint.
    drop(v1);
    client.ask(ENDPOINT, &[all, subset], Some(&last)).await;
    let remaining = loop {
        let push = client.next().await;
        client.ask(ENDPOINT, &[all, subset], Some(&push)).await;
        if let Some(resource) = push.resources.iter().find(|r| {
            ClusterLoadAssignment::decode(r.value.as_slice())
                .unwrap()
                .cluster_name
                == all
        }) {
            let response = DiscoveryResponse {
                resources: vec![resource.clone()],
                ..DiscoveryResponse::default()
            };
            if addresses(&response).len() == 1 {
                break addresses(&response);
            }
        }
    };
    assert_eq!(remaining, ["10.1.0.2:8080"]);
    drop((v2, stop));
}

async fn start(dir: &std::path::Path) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let control = ControlPlane::start(Config {
        source: Source::Dir(dir.to_path_buf()),
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        debug_addr: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.join(".weft"),
        trust_domain: "cluster.local".into(),
        cert_ttl: Duration::from_secs(3600),
        registration_grace: Duration::from_millis(300),
        jwks_refresh: Duration::from_secs(1200),
        xds_tls_addr: None,
        mesh: Default::default(),
        tls_names: vec![],
    })
    .await
    .unwrap();
    let addr = control.xds_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(control.serve(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// The first endpoints of echo:9000 a new client in namespace `test` is sent.
async fn first_endpoints(addr: std::net::SocketAddr) -> Vec<String> {
    let node = Node {
        id: "sidecar~10.9.9.9~client.test~test.svc.cluster.local".into(),
        ..Node::default()
    };
    let mut client = Stream::open(addr, node).await;
    client
        .ask(
            ENDPOINT,
            &["outbound|9000||echo.test.svc.cluster.local"],
            None,
        )
        .await;
    let response = client.next().await;
    if response.resources.is_empty() {
        return Vec::new();
    }
    addresses(&response)
}

#[tokio::test]
async fn a_restarted_control_plane_still_knows_the_workloads_that_registered_before() {
    let dir = tempfile::tempdir().unwrap();
    let (first, stop_first) = start(dir.path()).await;
    let workload = Stream::open(first, workload_node("echo-v1", "v1", "10.1.0.1")).await;
    workload.ask(CLUSTER, &[], None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while first_endpoints(first).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never registered");
    }

    // A second control plane on the same state, before the workload's proxy reconnects to it:
    // its very first answer already has the endpoint.
    let (second, stop_second) = start(dir.path()).await;
    assert_eq!(first_endpoints(second).await, ["10.1.0.1:8080"]);
    drop((workload, stop_first, stop_second));

    // A saved file that is not what it should be is ignored: the control plane starts empty.
    let garbled = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(garbled.path().join(".weft")).unwrap();
    std::fs::write(
        garbled.path().join(".weft/registered-workloads.json"),
        "{not json",
    )
    .unwrap();
    let (third, stop_third) = start(garbled.path()).await;
    assert!(first_endpoints(third).await.is_empty());
    drop(stop_third);
}
