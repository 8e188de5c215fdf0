//! The request handler the listeners share: the outbound listeners for the application's
//! requests, and the gateway for the outside world's. One request goes through named
//! phases, each in its own file:
//!
//! 1. [`Proxy::handle`] notes the request for the access log and the metrics, and turns
//!    whatever went wrong into its response ([`crate::error`]);
//! 2. [`Proxy::dispatch`] finds what the request asks for: a tunnel (`CONNECT`,
//!    [`tunnel`]), or, once its path is normalized ([`crate::model::path`]) and, at a
//!    gateway, its token verified ([`crate::authn`]) and the gateway's policies allow it
//!    ([`crate::authz`]), the route its host and
//!    path take ([`crate::route`]) — answered
//!    directly, redirected ([`rewrite`]), aborted or delayed by a fault ([`fault`]), or
//!    forwarded;
//! 3. [`forward`] plans the forwarding (weighted cluster, circuit breaker, rewrites, hash),
//!    then [`retry`] makes the attempts, each to an endpoint the cluster's balancer picks,
//!    sent by the connection pool ([`crate::upstream`]).
//!
//! A request that arrived on a connection redirected by iptables and matches no route goes
//! where the application was sending it (Istio's `PassthroughCluster`).

pub mod fault;
pub mod forward;
pub mod inputs;
pub mod retry;
pub mod rewrite;
pub mod tunnel;

pub use forward::downstream_response;
pub use inputs::{GatewayAddress, GatewayRoute, Proxy, Redirected};

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::http::request::Parts;
use std::sync::Arc;

use hyper::{Method, Request, Response};

use crate::error::ProxyError;
use crate::http::headers::{apply_changes, strip_hop_by_hop};
use crate::http::{Body, respond};
use crate::model::{Action, Model, Rbac};
use crate::telemetry::access_log::Entry;
use crate::telemetry::metrics::Reporter;

impl Proxy {
    /// Proxies one request from the application (or, at a gateway, from outside); `client`
    /// is the address it came from.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: Option<IpAddr>,
    ) -> Response<Body> {
        let entry = Entry::of(Reporter::Source, &request);
        let mut response = self
            .dispatch(request, client)
            .await
            .unwrap_or_else(ProxyError::into_response);
        entry.finish(&mut response, &self.metrics, None, self.debug_headers);
        response
    }

    /// What the request asks for, and its answer. Once a route is chosen, its response
    /// header changes apply to whatever answers the request, errors included.
    async fn dispatch(
        &self,
        request: Request<Incoming>,
        client: Option<IpAddr>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = request.into_parts();
        if parts.method == Method::CONNECT {
            // Boxed: tunnels are rare, and their future would make every request's larger.
            return Box::pin(self.tunnel(Request::from_parts(parts, body))).await;
        }
        let authority =
            authority(&parts).ok_or(ProxyError::BadRequest("the request names no host"))?;
        let port = authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(80);
        let config = self.config.borrow().clone();
        // Before anything reads the path; the request forwarded carries the normal form.
        config
            .model
            .outbound_paths(port)
            .normalize_uri(&mut parts.uri)
            .map_err(|rejected| ProxyError::BadRequest(rejected.reason()))?;
        if let Some(http_port) = config.model.outbound_ports.get(&port) {
            // A gateway's RequestAuthentication, then its policies, before any route.
            if let Some(jwt) = &http_port.jwt {
                jwt.authenticate(&mut parts)
                    .map_err(ProxyError::Unauthenticated)?;
            }
            if let Some(rbac) = &http_port.rbac {
                authorize(rbac, http_port.trusted_hops, &parts, client, port)?;
            }
        }
        // At a gateway, the table of the server the connection reached; else the port's.
        let served_by = parts.extensions.get::<GatewayRoute>().cloned();
        let table = match &served_by {
            Some(GatewayRoute(name)) => config.model.routes.get(name.as_ref()).map(Arc::as_ref),
            None => config.model.route_table(port),
        };
        let virtual_host = table.and_then(|table| table.virtual_host(&authority));
        if virtual_host.is_none()
            && let Some(GatewayRoute(name)) = &served_by
            && served_elsewhere(&config.model, port, name, &authority)
        {
            return Err(ProxyError::Misdirected);
        }
        let route =
            virtual_host.and_then(|vh| crate::route::select(&vh.routes, &parts, &authority));
        let Some(route) = route else {
            if let Some(Redirected(original)) = parts.extensions.get::<Redirected>().copied() {
                // Boxed, as a tunnel: passthrough is rare.
                return Box::pin(self.passthrough(parts, body, original)).await;
            }
            return Err(ProxyError::NoRoute);
        };
        let answer = match &route.action {
            Action::Direct { status, body } => Ok(respond(*status, body.clone())),
            Action::Redirect(redirect) => {
                Ok(rewrite::redirect(redirect, route, &parts.uri, &authority))
            }
            Action::Forward(forward) => match fault::inject(route.fault.as_ref()).await {
                Err(aborted) => Err(aborted),
                Ok(()) => {
                    strip_hop_by_hop(&mut parts.headers);
                    apply_changes(&mut parts.headers, &route.request_headers);
                    self.forward(&config, forward, route, parts, body, &authority, client)
                        .await
                }
            },
        };
        let mut response = answer.unwrap_or_else(ProxyError::into_response);
        apply_changes(response.headers_mut(), &route.response_headers);
        Ok(response)
    }
}

/// Whether another server of gateway `port` than the one whose table is `served_by` has a
/// virtual host for `authority`.
fn served_elsewhere(model: &Model, port: u16, served_by: &str, authority: &str) -> bool {
    model.gateway_ports.get(&port).is_some_and(|gateway| {
        gateway
            .routes()
            .filter(|name| *name != served_by)
            .filter_map(|name| model.routes.get(name))
            .any(|table| table.virtual_host(authority).is_some())
    })
}

/// A gateway's own authorization policies, for a request from `client` (the connection's
/// peer); the original client is the address `trusted_hops` entries back from the last of
/// `x-forwarded-for` (which the gateway has appended the peer to).
fn authorize(
    rbac: &Rbac,
    trusted_hops: Option<u32>,
    parts: &Parts,
    client: Option<IpAddr>,
    port: u16,
) -> Result<(), ProxyError> {
    let source = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let remote = trusted_hops
        .and_then(|hops| crate::authz::forwarded_client(&parts.headers, hops))
        .unwrap_or(source);
    let request = crate::authz::Request {
        peer: None,
        source,
        remote,
        destination: (
            parts
                .extensions
                .get::<GatewayAddress>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |GatewayAddress(local)| *local),
            port,
        ),
        http: Some(parts),
    };
    rbac.decide(&request).map_err(|denial| {
        tracing::debug!(%denial, "request refused by the gateway's authorization policy");
        ProxyError::Denied
    })
}

/// The host (and port) a request names: its absolute URI's authority, else its Host.
fn authority(parts: &Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}
