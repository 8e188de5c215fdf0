//! What the request handler reads: one [`Proxy`] per sidecar, shared by its listeners and
//! connections (ztunnel's `ProxyInputs`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::telemetry::metrics::Metrics;
use crate::upstream::Pool;
use crate::upstream::balance::Balancers;
use crate::xds::Applied;

/// What the request handler reads; one per sidecar, shared by its listeners and
/// connections.
pub struct Proxy {
    /// The configuration in force.
    pub config: watch::Receiver<Arc<Applied>>,
    /// Upstream connections.
    pub pool: Pool,
    /// Load-balancer state.
    pub balancers: Balancers,
    /// The workload's namespace, where short host names resolve.
    pub namespace: String,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Whether responses carry the response-flags header.
    pub debug_headers: bool,
    /// Where this proxy listens, so that no `CONNECT` leads back into it.
    pub listening: super::tunnel::Listening,
}

/// Marks a request that arrived at a gateway with the route table of the server its
/// connection reached (a TLS server's own, or the port's plaintext one).
#[derive(Debug, Clone)]
pub struct GatewayRoute(pub Arc<str>);

/// Marks a request that arrived at a gateway with the address its connection arrived at.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddress(pub std::net::IpAddr);

/// Marks a request that arrived on a redirected connection, with where it was going.
#[derive(Debug, Clone, Copy)]
pub struct Redirected(pub SocketAddr);
