//! Resolution: the service and port a name means to a client, and the DestinationRule policy
//! in force for a cluster (a port-level policy over the top level, then the subset's fields
//! over either, as in Istio). Every resource that depends on either asks here.

use weft_api::networking::destination_rule::TrafficPolicy;

use super::client::Client;
use super::names::split_host_port;
use crate::model::MeshSnapshot;
use crate::registry::Service;

/// The service and port a `host[:port]` name refers to, for this client.
pub(crate) fn resolve_target<'a>(
    snapshot: &'a MeshSnapshot,
    client: &Client,
    name: &str,
) -> Option<(&'a Service, u32)> {
    let (host, port) = split_host_port(name);
    let service = snapshot.services.get(&client.resolve(host))?;
    let port = service.port(port)?.number;
    Some((service, port))
}

/// The effective policy for a port and subset of `host`: the port-level policy replaces the
/// top-level one, then the subset's fields override either, field by field.
pub(crate) fn effective_policy(
    snapshot: &MeshSnapshot,
    host: &str,
    subset: &str,
    port: u32,
) -> TrafficPolicy {
    let Some(dr) = snapshot.destination_rule(host) else {
        return TrafficPolicy::default();
    };
    let mut policy = dr.traffic_policy.clone().unwrap_or_default();
    // A port-level policy replaces the top-level one for its port; unset fields take defaults.
    if let Some(port_policy) = policy
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|p| p.number == port))
    {
        policy = TrafficPolicy {
            load_balancer: port_policy.load_balancer.clone(),
            connection_pool: port_policy.connection_pool.clone(),
            outlier_detection: port_policy.outlier_detection.clone(),
            tls: port_policy.tls.clone(),
            ..TrafficPolicy::default()
        };
    }
    if let Some(sub) = snapshot
        .rules_for(host)
        .iter()
        .flat_map(|(_, dr)| &dr.subsets)
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
    {
        if sub.load_balancer.is_some() {
            policy.load_balancer = sub.load_balancer.clone();
        }
        if sub.connection_pool.is_some() {
            policy.connection_pool = sub.connection_pool.clone();
        }
        if sub.outlier_detection.is_some() {
            policy.outlier_detection = sub.outlier_detection.clone();
        }
        if sub.tls.is_some() {
            policy.tls = sub.tls.clone();
        }
    }
    policy
}
