//! Resolution: the service and port a name means to a client, the DestinationRule policy in
//! force for a cluster (a port-level policy over the top level, then the subset's fields
//! over either, as in Istio), and the PeerAuthentication mode of a workload port — which the
//! server's inbound side enforces and clients' auto-mTLS follows. Every resource that
//! depends on one of them asks here.
//!
//! The mTLS mode is Istio's `ComposePeerAuthentication`: the mesh's policy (selector-less,
//! in the root namespace), then the namespace's selector-less one, then one selecting the
//! workload in its namespace, each overriding the mode before it unless its own is `UNSET`;
//! within a scope the first loaded wins; nothing at all is PERMISSIVE. The workload policy's
//! `portLevelMtls` (by workload port) beats the result, and a port's `UNSET` inherits it.

use std::collections::BTreeMap;

use weft_api::analyze::ROOT_NAMESPACE;
use weft_api::meta::{WorkloadSelector, labels_match};
use weft_api::networking::destination_rule::TrafficPolicy;
use weft_api::security::peer_authentication::{MtlsMode, PeerAuthentication};

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

/// The workload being protected.
#[derive(Debug, Clone)]
pub(crate) struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Workload<'_> {
    /// Whether a security policy of `namespace` (AuthorizationPolicy, RequestAuthentication)
    /// with this `selector` and targets applies to the workload, as Istio decides: one of
    /// the workload's namespace or of the root namespace, selector-less or selecting its
    /// labels; `targetRef(s)` attach to gateways and services, not to sidecars.
    pub(crate) fn selected_by(
        &self,
        namespace: &str,
        selector: Option<&WorkloadSelector>,
        targeted: bool,
    ) -> bool {
        !targeted
            && (namespace == self.namespace || namespace == ROOT_NAMESPACE)
            && selector.is_none_or(|s| {
                s.match_labels.is_empty() || labels_match(&s.match_labels, self.labels)
            })
    }
}

/// The effective mTLS mode of a workload port.
pub(crate) fn mtls_mode(snapshot: &MeshSnapshot, workload: &Workload<'_>, port: u32) -> MtlsMode {
    let selector_less = |pa: &PeerAuthentication| {
        pa.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    };
    let mesh = in_namespace(snapshot, ROOT_NAMESPACE).find(|pa| selector_less(pa));
    let namespace = in_namespace(snapshot, workload.namespace).find(|pa| selector_less(pa));
    let own = in_namespace(snapshot, workload.namespace).find(|pa| {
        pa.selector.as_ref().is_some_and(|s| {
            !s.match_labels.is_empty() && labels_match(&s.match_labels, workload.labels)
        })
    });
    let set = |mode: Option<MtlsMode>| mode.filter(|m| *m != MtlsMode::Unset);
    let mut mode = MtlsMode::Permissive;
    for pa in [mesh, namespace, own].into_iter().flatten() {
        mode = set(pa.mtls.as_ref().and_then(|m| m.mode)).unwrap_or(mode);
    }
    own.and_then(|pa| pa.port_level_mtls.get(&port))
        .and_then(|m| set(m.mode))
        .unwrap_or(mode)
}

/// The PeerAuthentications of `namespace`, in load order.
fn in_namespace<'a>(
    snapshot: &'a MeshSnapshot,
    namespace: &'a str,
) -> impl Iterator<Item = &'a PeerAuthentication> {
    snapshot
        .peer_authentications
        .iter()
        .filter(move |(r, _)| r.namespace() == namespace)
        .map(|(_, pa)| pa)
}
