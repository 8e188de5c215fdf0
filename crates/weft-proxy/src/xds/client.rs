//! The ADS client: subscribes to listeners and clusters, then to the route configurations
//! and endpoints they name; applies each response's resources one by one ([`super::adapter`]), publishes the
//! model they make, and NACKs naming the resources it rejected, whose last good versions
//! stay. Reconnects with backoff; while the
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

use super::applied::{Applied, is_warm};
use crate::tls::identity::Credential;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`] while attempts fail.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A stream that lasted this long was healthy: the next outage starts from the first wait.
const HEALTHY_SESSION: Duration = Duration::from_secs(5);

/// Runs forever: connects, subscribes, applies, reconnects. The first failure of an outage
/// is logged as a warning, the attempts after it at debug level.
pub async fn run(
    channel: Channel,
    node: Node,
    credential: Option<Credential>,
    config: watch::Sender<Arc<Applied>>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let result = session(channel.clone(), node.clone(), credential.as_ref(), &config).await;
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
    credential: Option<&Credential>,
    published: &watch::Sender<Arc<Applied>>,
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
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    // The control plane lets a workload register only as what this token binds.
    if let Some(credential) = credential {
        let token = credential
            .token()
            .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::unauthenticated("the token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(request)
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
        let rejected = received.apply(&type_url, resources);
        // A NACK names the last version accepted; the good resources of the response are
        // applied all the same.
        let error = if rejected.is_empty() {
            versions.insert(type_url.clone(), version_info);
            None
        } else {
            let reasons: Vec<String> = rejected.iter().map(ToString::to_string).collect();
            tracing::warn!(reasons = ?reasons, type_url, "configuration rejected (NACK)");
            Some(reasons.join("; "))
        };
        let version = versions.get(&type_url).cloned().unwrap_or_default();
        session.last.insert(type_url.clone(), (version, nonce));
        let model = received.assemble();
        published.send_replace(Arc::new(Applied {
            model: Arc::new(model),
            warm: is_warm(&received),
            received: received.clone(),
            versions: versions.clone(),
        }));
        let names = match type_url.as_str() {
            ROUTE => session.routes.clone(),
            ENDPOINT => session.endpoints.clone(),
            _ => Vec::new(),
        };
        session.ask(&type_url, names, error).await;
        // Follow the references: the routes the listeners name, the endpoints of the clusters.
        let routes = received.wanted_routes();
        let endpoints = received.wanted_endpoints();
        received.forget_unwanted(&routes, &endpoints);
        if routes != session.routes {
            session.routes = routes.clone();
            session.ask(ROUTE, routes, None).await;
        }
        if endpoints != session.endpoints {
            session.endpoints = endpoints.clone();
            session.ask(ENDPOINT, endpoints, None).await;
        }
    }
    Ok(())
}
