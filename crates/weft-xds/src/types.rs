//! xDS resource type URLs and packing of messages into `google.protobuf.Any`.

use std::collections::HashMap;
use std::hash::{Hash, RandomState};
use std::sync::LazyLock;

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

/// A protobuf map field whose encoding depends on its content alone. prost writes a map in
/// its iteration order, and every std `HashMap` gets its own random order, so two equal
/// resources could encode to different bytes, look changed, and be pushed again for
/// nothing. Maps built here share one hasher and receive their entries in key order, which
/// makes their iteration order — and the bytes — a function of the content.
pub fn proto_map<K: Ord + Hash, V>(entries: impl IntoIterator<Item = (K, V)>) -> HashMap<K, V> {
    static SHARED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    let mut entries: Vec<(K, V)> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = HashMap::with_capacity_and_hasher(entries.len(), SHARED.clone());
    map.extend(entries);
    map
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

    #[test]
    fn equal_maps_encode_to_equal_bytes() {
        let build = |order: &[usize]| {
            let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
            Struct {
                fields: proto_map(order.iter().map(|&i| {
                    (
                        keys[i].to_string(),
                        Value {
                            kind: Some(Kind::NumberValue(i as f64)),
                        },
                    )
                })),
            }
            .encode_to_vec()
        };
        let first = build(&[0, 1, 2, 3, 4, 5, 6, 7]);
        for _ in 0..20 {
            assert_eq!(build(&[7, 3, 5, 1, 0, 2, 6, 4]), first);
        }
    }
}
