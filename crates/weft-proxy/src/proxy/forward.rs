//! Forwarding a request by its route: [`Proxy::forward`] plans where it goes — a weighted
//! cluster, a place under the cluster's circuit breaker, the path and Host rewrites, the
//! hash for consistent hashing — then hands the attempts to [`super::retry`]. Upgrades
//! (WebSocket, the only one allowed: [`allowed_upgrade`]) take one attempt on a connection
//! of their own; requests the mesh has no route for on a redirected connection pass through
//! to where they were going.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue, UPGRADE};
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::{HeaderMap, Request, Response, Uri};

use super::inputs::Proxy;
use super::retry::{self, Replay};
use super::{rewrite, tunnel};
use crate::error::{ProxyError, UpstreamError};
use crate::http::headers::{self, Upgrade, apply_changes, strip_hop_by_hop};
use crate::http::{Body, boxed};
use crate::model::{Cluster, Forward, Route, WeightedCluster};
use crate::upstream::balance::{Admitted, ClusterBalancer};
use crate::xds::Applied;

/// How long a passthrough connection may take to connect.
const PASSTHROUGH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request is going, decided before the first attempt.
struct Plan<'a> {
    cluster: &'a Cluster,
    weighted: &'a WeightedCluster,
    balancer: ClusterBalancer<'a>,
    /// The request's place under the circuit breaker, held until it is answered.
    _admitted: Admitted,
    hash: Option<u64>,
}

impl Proxy {
    /// Forwards a request by its route, with the route's retries and deadline.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of one request and its route"
    )]
    pub(super) async fn forward(
        &self,
        config: &Applied,
        forward: &Forward,
        route: &Route,
        mut parts: Parts,
        body: Incoming,
        authority: &str,
        client: Option<IpAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let upgrade = headers::upgrade(&parts.headers);
        if upgrade == Upgrade::Other {
            return Err(ProxyError::UpgradeRefused);
        }
        let plan = self.plan(config, forward, route, &mut parts, authority, client)?;
        if upgrade == Upgrade::WebSocket {
            // Boxed: upgrades are rare, and their future would make every request's larger.
            return Box::pin(self.forward_upgrade(&plan, parts, body)).await;
        }
        let body = Replay::prepare(boxed(body), forward.retry.as_ref()).await?;
        let policy = retry::Policy {
            retry: forward.retry.as_ref(),
            timeout: forward.timeout,
        };
        let cluster = plan.cluster;
        let http2 = cluster
            .protocol
            .http2(parts.version == hyper::Version::HTTP_2);
        let mut response = retry::attempts(
            &plan.balancer,
            policy,
            plan.hash,
            parts,
            body,
            |endpoint, request| {
                self.pool.send(
                    endpoint.address,
                    cluster.tls_for(endpoint),
                    http2,
                    cluster.connect_timeout,
                    request,
                )
            },
        )
        .await?;
        strip_hop_by_hop(response.headers_mut());
        apply_changes(response.headers_mut(), &plan.weighted.response_headers);
        Ok(response)
    }

    /// Where the request goes, and the request as it goes there: the weighted cluster's
    /// headers, the rewritten path, the Host.
    fn plan<'a>(
        &self,
        config: &'a Applied,
        forward: &'a Forward,
        route: &Route,
        parts: &mut Parts,
        authority: &str,
        client: Option<IpAddr>,
    ) -> Result<Plan<'a>, ProxyError> {
        let weighted = crate::route::pick_cluster(forward).ok_or(ProxyError::NoCluster)?;
        let cluster = config
            .model
            .clusters
            .get(&weighted.name)
            .ok_or(ProxyError::NoCluster)?;
        let balancer = self.balancers.of(cluster);
        let admitted = balancer.admit().ok_or(ProxyError::Overflow)?;
        apply_changes(&mut parts.headers, &weighted.request_headers);
        parts.uri = match rewrite::rewritten_path(forward, route, &parts.uri) {
            Some(path) => Uri::builder()
                .path_and_query(path)
                .build()
                .map_err(|_| ProxyError::BadRequest("bad path"))?,
            None => Uri::from(
                parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            ),
        };
        let host = forward.host_rewrite.as_deref().unwrap_or(authority);
        if parts.headers.get(HOST).map(HeaderValue::as_bytes) != Some(host.as_bytes())
            && let Ok(host) = HeaderValue::from_str(host)
        {
            parts.headers.insert(HOST, host);
        }
        let hash = crate::route::request_hash(&forward.hash_policy, parts, client);
        Ok(Plan {
            cluster,
            weighted,
            balancer,
            _admitted: admitted,
            hash,
        })
    }

    /// An upgrade request (WebSocket): one attempt, on an HTTP/1.1 connection of its own to
    /// the endpoint; after `101` the bytes flow both ways.
    async fn forward_upgrade(
        &self,
        plan: &Plan<'_>,
        mut parts: Parts,
        body: Incoming,
    ) -> Result<Response<Body>, ProxyError> {
        let pick = plan
            .balancer
            .pick(plan.hash)
            .ok_or(ProxyError::NoHealthyUpstream)?;
        let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let request = Request::from_parts(parts, boxed(body));
        let (response, upstream) = self
            .pool
            .send_upgrade(
                pick.endpoint.address,
                plan.cluster.tls_for(pick.endpoint),
                plan.cluster.connect_timeout,
                request,
            )
            .await?;
        tunnel::splice(downstream, upstream);
        downstream_response(Ok(response))
    }

    /// Sends a request the mesh has no route for to where the application was sending it,
    /// in plaintext (Istio's `PassthroughCluster` with `outboundTrafficPolicy: ALLOW_ANY`).
    pub(super) async fn passthrough(
        &self,
        mut parts: Parts,
        body: Incoming,
        original: SocketAddr,
    ) -> Result<Response<Body>, ProxyError> {
        strip_hop_by_hop(&mut parts.headers);
        allowed_upgrade(&parts.headers)?;
        if let Some(path) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(path);
        }
        if !parts.headers.contains_key(UPGRADE) {
            let request = Request::from_parts(parts, boxed(body));
            let sent = self
                .pool
                .send(original, None, false, PASSTHROUGH_CONNECT_TIMEOUT, request)
                .await;
            return downstream_response(sent);
        }
        let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let request = Request::from_parts(parts, boxed(body));
        let (response, upstream) = self
            .pool
            .send_upgrade(original, None, PASSTHROUGH_CONNECT_TIMEOUT, request)
            .await?;
        tunnel::splice(downstream, upstream);
        downstream_response(Ok(response))
    }
}

/// Refuses an upgrade other than WebSocket, the one Istio allows on its routes (Envoy's
/// `upgrade_configs`): `403 upgrade_failed`, as Envoy answers an upgrade type it was not
/// configured for. For requests whose hop-by-hop headers are already stripped.
pub fn allowed_upgrade(headers: &HeaderMap) -> Result<(), ProxyError> {
    match headers::upgrade(headers) {
        Upgrade::Other => Err(ProxyError::UpgradeRefused),
        Upgrade::None | Upgrade::WebSocket => Ok(()),
    }
}

/// The upstream's answer as the downstream gets it: hop-by-hop headers removed.
pub fn downstream_response(
    result: Result<Response<Body>, UpstreamError>,
) -> Result<Response<Body>, ProxyError> {
    let mut response = result?;
    strip_hop_by_hop(response.headers_mut());
    Ok(response)
}
