//! The ADS server against a real gRPC client over loopback: versions, nonces, ACK and NACK,
//! subscriptions, pushes that happen only on change, reconnects and shutdown.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_xds::envoy::envoy::config::cluster::v3::Cluster;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::envoy::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use weft_xds::envoy::google::rpc::Status as RpcStatus;
use weft_xds::server::{AdsServer, Generator, Ledger, Resource, ResourceSet};
use weft_xds::types::{self, CLUSTER, ENDPOINT};

/// Resources set by the test, per type.
#[derive(Default)]
struct Fixed(Mutex<BTreeMap<&'static str, Vec<String>>>);

impl Generator for Fixed {
    fn generate(&self, _node: &Node, type_url: &str, names: Option<&[String]>) -> Arc<ResourceSet> {
        let all = self.0.lock().unwrap();
        let key = if type_url == CLUSTER {
            CLUSTER
        } else {
            ENDPOINT
        };
        let resources = all
            .get(key)
            .into_iter()
            .flatten()
            .filter(|n| {
                names.is_none_or(|names| {
                    names
                        .iter()
                        .any(|w| n.split('=').next() == Some(w.as_str()))
                })
            })
            .map(|name| {
                // `name` or `name=content`: the content lets a test change a resource.
                let (name, content) = name.split_once('=').unwrap_or((name, ""));
                let body = types::pack(&Cluster {
                    name: name.to_string(),
                    alt_stat_name: content.to_string(),
                    ..Cluster::default()
                });
                Arc::new(Resource::new(name, body))
            })
            .collect();
        Arc::new(ResourceSet::new(resources))
    }
}

struct Harness {
    addr: SocketAddr,
    resources: Arc<Fixed>,
    changes: Option<watch::Sender<u64>>,
    ledger: Ledger,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    async fn start() -> Self {
        let resources = Arc::new(Fixed::default());
        resources
            .0
            .lock()
            .unwrap()
            .insert(CLUSTER, vec!["a".into(), "b".into()]);
        resources
            .0
            .lock()
            .unwrap()
            .insert(ENDPOINT, vec!["a".into(), "b".into()]);
        let (changes, watcher) = watch::channel(0);
        let server = AdsServer::new(resources.clone(), watcher, "weft-test");
        let ledger = server.ledger();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            resources,
            changes: Some(changes),
            ledger,
            _stop: stop,
        }
    }

    fn set(&self, type_url: &'static str, names: &[&str]) {
        self.resources
            .0
            .lock()
            .unwrap()
            .insert(type_url, names.iter().map(|n| n.to_string()).collect());
        self.changes.as_ref().unwrap().send_modify(|g| *g += 1);
    }

    async fn connect(&self) -> Client {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client {
            requests: tx,
            responses,
        }
    }

    /// Waits until the ledger satisfies `check`; the stream tasks update it asynchronously.
    async fn ledger_until(&self, check: impl Fn(&Ledger) -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !check(&self.ledger) {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the ledger reached the expected state");
    }
}

struct Client {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl Client {
    async fn send(
        &self,
        type_url: &str,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        let request = DiscoveryRequest {
            node: Some(Node {
                id: "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local".into(),
                ..Node::default()
            }),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|message| RpcStatus {
                code: 3,
                message: message.into(),
                details: vec![],
            }),
            ..DiscoveryRequest::default()
        };
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10s")
            .unwrap()
            .expect("the stream is open")
    }
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    response
        .resources
        .iter()
        .map(|any| Cluster::decode(any.value.as_slice()).unwrap().name)
        .collect()
}

#[tokio::test]
async fn ack_nack_and_nonces() {
    let mut h = Harness::start().await;
    let mut client = h.connect().await;
    client.send(CLUSTER, &[], "", "", None).await;
    let first = client.next().await;
    assert_eq!(
        names(&first),
        ["a", "b"],
        "an empty CDS request is a wildcard"
    );
    assert_eq!(first.type_url, CLUSTER);
    assert!(!first.version_info.is_empty() && !first.nonce.is_empty());

    client
        .send(CLUSTER, &[], &first.version_info, &first.nonce, None)
        .await;
    h.ledger_until(|l| {
        l.snapshot()
            .values()
            .any(|s| s.types["Cluster"].acked_version == first.version_info)
    })
    .await;

    h.set(CLUSTER, &["a", "b", "c"]);
    let second = client.next().await;
    assert_eq!(names(&second), ["a", "b", "c"]);
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);

    // The proxy rejects the second version and stays on the first.
    client
        .send(
            CLUSTER,
            &[],
            &first.version_info,
            &second.nonce,
            Some("cluster c: unsupported"),
        )
        .await;
    h.ledger_until(|l| {
        l.snapshot().values().any(|s| {
            let t = &s.types["Cluster"];
            t.last_nack.as_ref().is_some_and(|n| {
                n.rejected_version == second.version_info
                    && n.kept_version == first.version_info
                    && n.error.contains("unsupported")
            }) && t.acked_version == first.version_info
        })
    })
    .await;

    // A request with an old nonce is stale and ignored, even if it names other resources.
    client
        .send(CLUSTER, &["a"], &first.version_info, &first.nonce, None)
        .await;
    // An update that does not change the content sends nothing; the NACKed content is not
    // re-sent either. The next response is the next real change.
    h.changes.as_ref().unwrap().send_modify(|g| *g += 1);
    h.set(CLUSTER, &["a", "d"]);
    let third = client.next().await;
    assert_eq!(
        names(&third),
        ["a", "d"],
        "no stale, repeated or unchanged response came first"
    );
    h.changes.take();
}

#[tokio::test]
async fn named_subscriptions_get_only_their_names() {
    let h = Harness::start().await;
    let mut client = h.connect().await;
    client.send(ENDPOINT, &["b", "missing"], "", "", None).await;
    let response = client.next().await;
    assert_eq!(names(&response), ["b"]);
    client
        .send(
            ENDPOINT,
            &["a", "b"],
            &response.version_info,
            &response.nonce,
            None,
        )
        .await;
    let widened = client.next().await;
    assert_eq!(
        names(&widened),
        ["a", "b"],
        "a change of names is answered at once"
    );
}

#[tokio::test]
async fn a_reconnecting_proxy_gets_the_current_state() {
    let h = Harness::start().await;
    let mut client = h.connect().await;
    client.send(CLUSTER, &[], "", "", None).await;
    let old = client.next().await;
    drop(client);
    h.ledger_until(|l| l.snapshot().is_empty()).await;
    h.set(CLUSTER, &["z"]);

    let mut again = h.connect().await;
    again.send(CLUSTER, &[], &old.version_info, "", None).await;
    let current = again.next().await;
    assert_eq!(names(&current), ["z"]);
}

#[tokio::test]
async fn a_first_request_without_a_node_is_refused() {
    let h = Harness::start().await;
    let mut client = h.connect().await;
    client
        .requests
        .send(DiscoveryRequest {
            type_url: CLUSTER.into(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), client.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn shutting_down_closes_streams_cleanly() {
    let mut h = Harness::start().await;
    let mut client = h.connect().await;
    client.send(CLUSTER, &[], "", "", None).await;
    client.next().await;
    h.changes.take();
    let end = tokio::time::timeout(Duration::from_secs(10), client.responses.message())
        .await
        .unwrap();
    assert!(
        matches!(end, Ok(None)),
        "the stream ends with OK, not an error: {end:?}"
    );
}

#[tokio::test]
async fn many_concurrent_streams() {
    let h = Harness::start().await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let client = h.connect().await;
        client.send(CLUSTER, &[], "", "", None).await;
        clients.push(client);
    }
    for client in &mut clients {
        assert_eq!(names(&client.next().await), ["a", "b"]);
    }
    h.set(CLUSTER, &["x"]);
    for client in &mut clients {
        assert_eq!(names(&client.next().await), ["x"]);
    }
    assert_eq!(h.ledger.snapshot().len(), 200);
}

#[tokio::test]
async fn pushes_of_named_types_carry_only_what_changed() {
    let h = Harness::start().await;
    let mut client = h.connect().await;
    client.send(ENDPOINT, &["a", "b"], "", "", None).await;
    let first = client.next().await;
    assert_eq!(names(&first), ["a", "b"]);
    client
        .send(
            ENDPOINT,
            &["a", "b"],
            &first.version_info,
            &first.nonce,
            None,
        )
        .await;
    h.set(ENDPOINT, &["a", "b=v2"]);
    let push = client.next().await;
    assert_eq!(
        names(&push),
        ["b"],
        "only the changed endpoint set is re-sent"
    );
    assert_ne!(push.version_info, first.version_info);

    // Wildcard types always carry the full set.
    client.send(CLUSTER, &[], "", "", None).await;
    let clusters = client.next().await;
    client
        .send(CLUSTER, &[], &clusters.version_info, &clusters.nonce, None)
        .await;
    h.set(CLUSTER, &["a", "b=v2"]);
    assert_eq!(names(&client.next().await), ["a", "b"]);
}

/// Encoded responses share a send budget; proxies that never read keep theirs, and a healthy
/// proxy must still be served (after a short wait at most), not stall behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_that_never_read_cannot_stall_the_others() {
    let h = Harness::start().await;
    // 30 proxies × 3 MiB is more than the 32 MiB budget.
    let big = format!("big={}", "x".repeat(3 << 20));
    h.set(CLUSTER, &[&big]);
    let mut stuck = Vec::new();
    for _ in 0..30 {
        let client = h.connect().await;
        client.send(CLUSTER, &[], "", "", None).await;
        stuck.push(client);
    }
    h.ledger_until(|ledger| {
        ledger
            .snapshot()
            .values()
            .filter(|s| {
                s.types
                    .get("Cluster")
                    .is_some_and(|t| t.sent_resources == 1)
            })
            .count()
            == 30
    })
    .await;
    let mut healthy = h.connect().await;
    healthy.send(CLUSTER, &[], "", "", None).await;
    assert_eq!(names(&healthy.next().await), ["big"]);
    drop(stuck);
}
