//! The ADS client: subscribes to listeners and clusters, then to the route configurations
//! and endpoints they name; builds a new [`Model`] from each response and publishes it, or
//! NACKs with the reason and keeps the last good one. Reconnects with backoff; while the
//! control plane is away the proxy keeps serving with what it has.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::envoy::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use weft_xds::envoy::google::rpc::Status as RpcStatus;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

use crate::adapter::{self, Received};
use crate::model::Model;

/// What the xDS client publishes: the model in force, and what it was built from (for the
/// config dump).
#[derive(Debug, Default)]
pub struct Config {
    /// The model the data path reads.
    pub model: Arc<Model>,
    /// The resources it was built from, with their versions by type.
    pub received: Received,
    /// Version accepted, by type URL.
    pub versions: std::collections::BTreeMap<String, String>,
    /// Whether listeners and clusters have arrived, with every route table and endpoint
    /// set they name (Envoy's "warm").
    pub warm: bool,
}

impl Config {
    /// How long a connection that arrives before the first configuration waits for it.
    const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(10);

    /// Waits until the configuration is warm, for at most ten seconds, so connections
    /// made while the proxy starts are served instead of refused with `NR`.
    pub async fn wait_warm(config: &mut watch::Receiver<Arc<Config>>) {
        if config.borrow().warm {
            return;
        }
        let _ = tokio::time::timeout(Self::FIRST_CONFIG_WAIT, config.wait_for(|c| c.warm)).await;
    }
}

fn is_warm(versions: &std::collections::BTreeMap<String, String>, received: &Received) -> bool {
    versions.contains_key(LISTENER)
        && versions.contains_key(CLUSTER)
        && adapter::wanted_routes(received)
            .iter()
            .all(|name| received.routes.contains_key(name))
        && adapter::wanted_endpoints(received)
            .iter()
            .all(|name| received.endpoints.contains_key(name))
}

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`] while attempts fail.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A stream that lasted this long was healthy: the next outage starts from the first wait.
const HEALTHY_SESSION: Duration = Duration::from_secs(5);

/// Runs forever: connects, subscribes, applies, reconnects. The first failure of an outage
/// is logged as a warning, the attempts after it at debug level.
pub async fn run(channel: Channel, node: Node, config: watch::Sender<Arc<Config>>) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let result = session(channel.clone(), node.clone(), &config).await;
        if started.elapsed() >= HEALTHY_SESSION {
            backoff = FIRST_BACKOFF;
            failures = 0;
        }
        failures += 1;
        match result {
            Ok(()) if failures == 1 => tracing::warn!("the control plane closed the xDS stream"),
            Err(status) if failures == 1 => {
                tracing::warn!(%status, "xDS stream failed; reconnecting with backoff");
            }
            Ok(()) => {
                tracing::debug!(retry_in = ?backoff, "the control plane closed the xDS stream")
            }
            Err(status) => tracing::debug!(%status, retry_in = ?backoff, "xDS stream failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

struct Session {
    requests: mpsc::Sender<DiscoveryRequest>,
    node: Node,
    /// Names subscribed to, per type (RDS and EDS).
    routes: Vec<String>,
    endpoints: Vec<String>,
    /// The version and nonce last seen per type, for the next request of that type.
    last: std::collections::HashMap<String, (String, String)>,
}

impl Session {
    async fn ask(&mut self, type_url: &str, names: Vec<String>, error: Option<String>) {
        let (version, nonce) = self.last.get(type_url).cloned().unwrap_or_default();
        let request = DiscoveryRequest {
            node: Some(self.node.clone()),
            type_url: type_url.to_string(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            error_detail: error.map(|message| RpcStatus {
                code: tonic::Code::InvalidArgument as i32,
                message,
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        };
        let _ = self.requests.send(request).await;
    }
}

async fn session(
    channel: Channel,
    node: Node,
    published: &watch::Sender<Arc<Config>>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let mut session = Session {
        requests: tx,
        node,
        routes: Vec::new(),
        endpoints: Vec::new(),
        last: Default::default(),
    };
    // What this stream has received; starts from what is in force, so a reconnect does not
    // forget anything until the control plane says otherwise.
    let mut received = published.borrow().received.clone();
    let mut versions = published.borrow().versions.clone();
    session.ask(CLUSTER, Vec::new(), None).await;
    session.ask(LISTENER, Vec::new(), None).await;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = response;
        let mut candidate = received.clone();
        let by_name = |resources: Vec<weft_xds::envoy::google::protobuf::Any>| {
            resources
                .into_iter()
                .filter_map(|any| {
                    let name = resource_name(&type_url, &any)?;
                    Some((name, any))
                })
                .collect::<std::collections::HashMap<_, _>>()
        };
        match type_url.as_str() {
            LISTENER => candidate.listeners = by_name(resources),
            CLUSTER => candidate.clusters = by_name(resources),
            ROUTE => candidate.routes.extend(by_name(resources)),
            ENDPOINT => candidate.endpoints.extend(by_name(resources)),
            _ => {}
        }
        session.last.insert(
            type_url.clone(),
            (
                versions.get(&type_url).cloned().unwrap_or_default(),
                nonce.clone(),
            ),
        );
        match adapter::build(&candidate) {
            Ok(model) => {
                received = candidate;
                versions.insert(type_url.clone(), version_info.clone());
                session.last.insert(type_url.clone(), (version_info, nonce));
                published.send_replace(Arc::new(Config {
                    model: Arc::new(model),
                    warm: is_warm(&versions, &received),
                    received: received.clone(),
                    versions: versions.clone(),
                }));
                let names = match type_url.as_str() {
                    ROUTE => session.routes.clone(),
                    ENDPOINT => session.endpoints.clone(),
                    _ => Vec::new(),
                };
                session.ask(&type_url, names, None).await;
            }
            Err(rejection) => {
                tracing::warn!(%rejection, type_url, "configuration rejected (NACK)");
                let names = match type_url.as_str() {
                    ROUTE => session.routes.clone(),
                    ENDPOINT => session.endpoints.clone(),
                    _ => Vec::new(),
                };
                session
                    .ask(&type_url, names, Some(rejection.to_string()))
                    .await;
            }
        }
        // Follow the references: the routes the listeners name, the endpoints of the clusters.
        let routes = adapter::wanted_routes(&received);
        if routes != session.routes {
            session.routes = routes.clone();
            received.routes.retain(|name, _| routes.contains(name));
            session.ask(ROUTE, routes, None).await;
        }
        let endpoints = adapter::wanted_endpoints(&received);
        if endpoints != session.endpoints {
            session.endpoints = endpoints.clone();
            received
                .endpoints
                .retain(|name, _| endpoints.contains(name));
            session.ask(ENDPOINT, endpoints, None).await;
        }
    }
    Ok(())
}

/// The name of a received resource, read from the resource itself.
fn resource_name(type_url: &str, any: &weft_xds::envoy::google::protobuf::Any) -> Option<String> {
    use prost::Message;
    use weft_xds::envoy::envoy::config::cluster::v3::Cluster;
    use weft_xds::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use weft_xds::envoy::envoy::config::listener::v3::Listener;
    use weft_xds::envoy::envoy::config::route::v3::RouteConfiguration;
    let bytes = any.value.as_slice();
    match type_url {
        LISTENER => Listener::decode(bytes).ok().map(|l| l.name),
        CLUSTER => Cluster::decode(bytes).ok().map(|c| c.name),
        ROUTE => RouteConfiguration::decode(bytes).ok().map(|r| r.name),
        ENDPOINT => ClusterLoadAssignment::decode(bytes)
            .ok()
            .map(|e| e.cluster_name),
        _ => None,
    }
}
