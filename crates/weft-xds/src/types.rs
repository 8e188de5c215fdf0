//! xDS resource type URLs and packing of messages into `google.protobuf.Any`.

use envoy_types::pb::google::protobuf::Any;

/// Listeners (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Route configurations (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Clusters (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Cluster load assignments, the endpoints of a cluster (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// TLS secrets (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The order in which a change is pushed: secrets before the clusters that use them,
/// clusters before their endpoints, listeners before their routes — so a proxy never holds a
/// reference to something it has not been sent.
pub const PUSH_ORDER: [&str; 5] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// Whether a request naming no resources asks for all of them (LDS and CDS in
/// state-of-the-world xDS), rather than for none.
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// Packs a message into `Any`.
pub fn pack<M: prost::Message + prost::Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

/// A short name for a type URL, for logs and debug pages (`Cluster`, `Listener`, …).
pub fn short_name(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}
