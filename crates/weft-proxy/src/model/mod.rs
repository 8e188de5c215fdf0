//! The proxy's own configuration model: what the data path reads on every request, built
//! from xDS by the xDS adapter and swapped whole when a new configuration is
//! accepted. Nothing here is a protobuf type, and nothing is parsed again on the request
//! path: statuses, header names and values, regexes and hash tables are ready to use.
//!
//! [`route`] holds the routing tables, [`cluster`] the clusters and their endpoints,
//! [`policy`] the authorization policies, [`authn`] the token issuers a port accepts, [`matcher`] the string and header conditions
//! the routes and the policies share, and [`path`] how a listener normalizes request paths
//! before any of them reads one. This module depends on no other module of the crate.

pub mod authn;
pub mod cluster;
mod dump;
pub mod matcher;
pub mod path;
pub mod policy;
pub mod route;

use foldhash::HashMap;
use std::sync::Arc;

use serde::Serialize;

pub use cluster::{Cluster, Endpoint, LoadBalancer, Outlier, UpstreamHttp, UpstreamTls};
pub use matcher::{HeaderMatch, StringMatch};
pub use path::PathNormalization;
pub use policy::Rbac;
pub use route::{
    Abort, Action, Fault, Forward, HashOn, HeaderChanges, PathMatch, QueryMatch, Redirect,
    RegexRewrite, Retry, RetryOn, Route, RouteMatch, RouteTable, VirtualHost, WeightedCluster,
};

/// One accepted configuration.
#[derive(Debug, Default, Serialize)]
pub struct Model {
    /// Route tables by name: `<port>` for outbound ports.
    pub routes: HashMap<String, Arc<RouteTable>>,
    /// Each outbound (or gateway) HTTP port.
    pub outbound_ports: HashMap<u16, HttpPort>,
    /// Outbound ports whose protocol is detected per connection: HTTP is routed, the rest
    /// passes through as opaque TCP.
    pub sniffed_ports: std::collections::HashSet<u16>,
    /// A gateway's ports, which it listens on itself.
    pub gateway_ports: HashMap<u16, GatewayPort>,
    /// Clusters by name (`outbound|9080|v1|reviews.shop.svc.cluster.local`).
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// How each inbound port accepts connections.
    pub inbound: HashMap<u16, InboundPort>,
}

impl Model {
    /// The route table for an outbound HTTP port.
    pub fn route_table(&self, port: u16) -> Option<&RouteTable> {
        self.routes
            .get(&self.outbound_ports.get(&port)?.route)
            .map(Arc::as_ref)
    }

    /// How an outbound (or gateway) port normalizes paths; ports without an HTTP listener
    /// change nothing.
    pub fn outbound_paths(&self, port: u16) -> PathNormalization {
        self.outbound_ports
            .get(&port)
            .map(|p| p.paths)
            .unwrap_or_default()
    }
}

/// An outbound (or gateway) HTTP port: its connection manager's settings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpPort {
    /// The route table it takes.
    pub route: String,
    /// How it normalizes request paths.
    pub paths: PathNormalization,
    /// Its authorization policies (a gateway's); none where it has no RBAC filter.
    pub rbac: Option<Arc<Rbac>>,
    /// With `use_remote_address`, how many proxies in front of it append to
    /// `x-forwarded-for` (`xff_num_trusted_hops`): the client's address is that many entries
    /// back from the last. `None`: the connection's peer is the client.
    pub trusted_hops: Option<u32>,
    /// The tokens it verifies (a gateway's RequestAuthentication), before its policies.
    pub jwt: Option<Arc<authn::JwtAuthn>>,
}

/// What an inbound port accepts (from PeerAuthentication, through the inbound listener),
/// and who may use it (AuthorizationPolicy).
#[derive(Debug, Default, Serialize)]
pub struct InboundPort {
    /// Mesh mTLS connections.
    pub mtls: bool,
    /// Plaintext connections.
    pub plaintext: bool,
    /// How its HTTP requests' paths are normalized before authorization.
    pub paths: PathNormalization,
    /// HTTP to the application, authorized by these policies.
    pub http: Option<Arc<Rbac>>,
    /// The tokens its HTTP requests are authenticated with (RequestAuthentication), before
    /// the policies read them.
    pub jwt: Option<Arc<authn::JwtAuthn>>,
    /// Opaque TCP to the application, authorized by these policies. A port with both takes
    /// each connection as what its first bytes say (protocol detection).
    pub tcp: Option<Arc<Rbac>>,
    /// On a PERMISSIVE port, TLS that is not mesh mTLS (no `istio…` ALPN) — the
    /// application's own — passed through as opaque TCP, authorized by these policies.
    pub tls_passthrough: Option<Arc<Rbac>>,
}

/// What a gateway port accepts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GatewayPort {
    /// Plaintext HTTP.
    pub plaintext: bool,
    /// The route table of plaintext connections.
    pub plaintext_route: Option<String>,
    /// TLS servers, tried in order.
    pub tls: Vec<GatewayTls>,
}

impl GatewayPort {
    /// Every route table of the port: its plaintext one and each TLS server's.
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        self.plaintext_route
            .iter()
            .chain(self.tls.iter().filter_map(|server| server.route.as_ref()))
            .map(String::as_str)
    }
}

/// A TLS server of a gateway port.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayTls {
    /// SNI names it answers; empty for any.
    pub server_names: Vec<String>,
    /// Whether clients must present a certificate.
    pub mutual: bool,
    /// Its own route table: a connection to it reaches only its hosts.
    pub route: Option<String>,
    /// The server's TLS configuration.
    #[serde(skip)]
    pub config: Arc<rustls::ServerConfig>,
}

impl GatewayTls {
    /// Whether it answers the SNI name `name` (`*.example.com` covers one more label).
    pub fn answers(&self, name: Option<&str>) -> bool {
        if self.server_names.is_empty() {
            return true;
        }
        let Some(name) = name else {
            return false;
        };
        self.server_names.iter().any(|pattern| {
            pattern.eq_ignore_ascii_case(name)
                || pattern.strip_prefix('*').is_some_and(|suffix| {
                    name.len() > suffix.len()
                        && name.as_bytes()[name.len() - suffix.len()..]
                            .eq_ignore_ascii_case(suffix.as_bytes())
                })
        })
    }
}
