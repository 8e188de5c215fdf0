//! `weft control` under hostile and careless clients: garbage on its port, a client that
//! never reads, a thousand concurrent streams, clients that vanish mid-push. It must not
//! crash, must keep serving others, must forget streams that are gone, and must not grow
//! from one round of abuse to the next.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::service::discovery::v3::DiscoveryRequest;
use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::types::CLUSTER;

/// What a wildcard cluster request returns: the 50 services, and PassthroughCluster.
const CLUSTERS: usize = 51;

struct Control {
    process: common::Control,
    xds: String,
    debug: String,
    dir: tempfile::TempDir,
}

fn services(count: usize, port: u32) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}.example.com]\n  ports: [{{number: {port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 10.0.{}.{}}}]\n---\n",
                i / 250,
                i % 250
            )
        })
        .collect()
}

fn start() -> Control {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/services.yaml"), services(50, 80)).unwrap();
    let process = common::Control::start(&dir.path().join("config"));
    let (xds, debug) = (process.xds.clone(), process.debug.clone());
    Control {
        process,
        xds,
        debug,
        dir,
    }
}

impl Control {
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.process.child.try_wait().unwrap().is_none()
    }

    fn proxies(&self) -> usize {
        common::get_json(&self.debug, "/debug/syncz")["proxies"]
            .as_array()
            .unwrap()
            .len()
    }

    /// Waits until the control plane has forgotten every stream.
    fn until_no_proxies(&self) {
        common::eventually(
            "the streams of gone clients are no longer listed",
            Duration::from_secs(30),
            || (self.proxies() == 0).then_some(()),
        );
    }

    fn touch_config(&self, round: usize) {
        std::fs::write(
            self.dir.path().join("config/services.yaml"),
            services(50, 80 + round as u32),
        )
        .unwrap();
    }
}

fn request(names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "abuser".into(),
            ..Node::default()
        }),
        type_url: CLUSTER.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..DiscoveryRequest::default()
    }
}

type Requests = mpsc::Sender<DiscoveryRequest>;
type Responses =
    tonic::Streaming<weft_xds::envoy::envoy::service::discovery::v3::DiscoveryResponse>;

/// Opens a stream on `client`, subscribes to every cluster, and returns the stream and how
/// many clusters the first answer held.
async fn subscribe(
    client: &mut AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
) -> (Requests, Responses, usize) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(request(&[], "")).await.unwrap();
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (tx, responses, first.resources.len())
}

/// One well-behaved client: subscribes to every cluster and reads the answer.
async fn served(xds: &str) -> usize {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .unwrap();
    subscribe(&mut client).await.2
}

async fn abuse(control: &Control, round: usize) {
    // Garbage bytes, and a valid HTTP/2 preface followed by garbage.
    for prefix in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut socket = tokio::net::TcpStream::connect(&control.xds).await.unwrap();
        use tokio::io::AsyncWriteExt;
        let garbage: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = socket.write_all(prefix).await;
        let _ = socket.write_all(&garbage).await;
    }

    // A client that asks and asks and never reads.
    let mut greedy = AggregatedDiscoveryServiceClient::connect(format!("http://{}", control.xds))
        .await
        .unwrap();
    let (greedy_tx, greedy_rx) = mpsc::channel(1024);
    let _never_read = greedy
        .stream_aggregated_resources(ReceiverStream::new(greedy_rx))
        .await
        .unwrap();
    // The flood sends through a clone: the stream stays open (the client never half-closes)
    // even when the server has consumed every request.
    let flood_tx = greedy_tx.clone();
    let flood = tokio::spawn(async move {
        for i in 0..10_000 {
            let name = format!("outbound|80||svc-{}.example.com", i % 50);
            if flood_tx.send(request(&[&name], "")).await.is_err() {
                break;
            }
        }
    });

    // A thousand concurrent streams over ten connections, then a push to all of them, and
    // half of them vanish before reading it.
    let mut staying = Vec::new();
    let mut vanishing = Vec::new();
    for connection in 0..10 {
        let client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", control.xds))
            .await
            .unwrap();
        for _ in 0..100 {
            let (tx, responses, clusters) = subscribe(&mut client.clone()).await;
            assert_eq!(clusters, CLUSTERS);
            if connection % 2 == 0 {
                staying.push((tx, responses))
            } else {
                vanishing.push((tx, responses))
            }
        }
    }
    assert_eq!(
        control.proxies(),
        1000 + 1,
        "a thousand streams and the greedy one"
    );
    control.touch_config(round);
    drop(vanishing);
    for (_, responses) in &mut staying {
        let pushed = tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(pushed.resources.len(), CLUSTERS);
    }

    // Others are still served promptly while all this is open.
    assert_eq!(served(&control.xds).await, CLUSTERS);
    flood.abort();
    drop((staying, greedy_tx));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_abuse_and_returns_to_its_footprint() {
    let mut control = start();
    assert_eq!(served(&control.xds).await, CLUSTERS);
    let baseline = control.rss_kib();

    abuse(&control, 1).await;
    control.until_no_proxies();
    assert!(control.alive(), "weft control died");
    let after_first = control.rss_kib();

    abuse(&control, 2).await;
    control.until_no_proxies();
    assert!(control.alive(), "weft control died");
    let after_second = control.rss_kib();

    assert_eq!(served(&control.xds).await, CLUSTERS, "still serving");
    eprintln!(
        "RSS: baseline {baseline} KiB, after one round {after_first} KiB, after two {after_second} KiB"
    );
    // Memory the allocator keeps after the first round may stay; a second identical round
    // must not add to it (no per-stream leak).
    assert!(
        after_second <= after_first + after_first / 10 + 4096,
        "grew from {after_first} KiB to {after_second} KiB between identical rounds"
    );
    // And what stays is bounded: near the baseline, not the peak of a thousand streams (the
    // send budget alone may hold 32 MiB at the peak).
    assert!(
        after_second <= baseline + 64 * 1024,
        "{after_second} KiB after the streams left, from a baseline of {baseline} KiB"
    );
}

#[test]
fn config_dump_queries_that_name_no_proxy_get_4xx() {
    let mut control = start();
    let (status, body) = common::get_status(&control.debug, "/debug/config_dump");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("?proxy=ID"), "{body}");
    for query in ["proxy=nobody", "proxy=%zz%", "proxy=", "proxy", "other=1"] {
        let path = format!("/debug/config_dump?{query}");
        let (status, body) = common::get_status(&control.debug, &path);
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
    }
    assert!(control.alive());
}
