//! Endpoints: the addresses behind a cluster, filtered by the subset's labels, each with the
//! identity it must present and, for mesh workloads, the `tlsMode: istio` mark auto-mTLS
//! keys on.

use weft_api::networking::service_entry::Location;
use weft_xds::envoy::envoy::config::core::v3::{HealthStatus, Locality, Metadata};
use weft_xds::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use weft_xds::envoy::google::protobuf::UInt32Value;
use weft_xds::envoy::google::protobuf::{Struct, Value, value::Kind};
use weft_xds::server::Resource;
use weft_xds::types::{pack, proto_map};

use weft_api::security::peer_authentication::MtlsMode;

use crate::model::MeshSnapshot;
use crate::translate::envoy::{TRANSPORT_SOCKET_MATCH, socket_address};
use crate::translate::names::parse_cluster_name;
use crate::translate::policy::{Workload, mtls_mode};
use crate::translate::tls::mesh_endpoint_match;

/// The endpoints of the cluster called `name`, if it exists.
pub(crate) fn endpoint_resource(
    snapshot: &MeshSnapshot,
    name: &str,
    trust_domain: &str,
) -> Option<Resource> {
    let assignment = load_assignment(snapshot, name, trust_domain)?;
    Some(Resource::new(name, pack(&assignment)))
}

fn load_assignment(
    snapshot: &MeshSnapshot,
    name: &str,
    trust_domain: &str,
) -> Option<ClusterLoadAssignment> {
    let (port, subset, host) = parse_cluster_name(name)?;
    let service = snapshot.services.get(host)?;
    let service_port = service.port(Some(port))?;
    let selector = if subset.is_empty() {
        None
    } else {
        Some(snapshot.subset_labels(host, subset)?)
    };
    let mut localities: Vec<LocalityLbEndpoints> = Vec::new();
    for endpoint in &service.endpoints {
        if selector.is_some_and(|s| !weft_api::meta::labels_match(s, &endpoint.labels)) {
            continue;
        }
        let lb_endpoint = LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(
                    &endpoint.address,
                    endpoint.port_for(service_port),
                )),
                ..Endpoint::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            metadata: Some(metadata(
                endpoint,
                speaks_mesh_mtls(snapshot, endpoint, service, service_port),
                trust_domain,
            )),
            load_balancing_weight: Some(UInt32Value {
                value: endpoint.weight,
            }),
        };
        let locality = locality(&endpoint.locality);
        match localities
            .iter_mut()
            .find(|l| l.locality.as_ref() == Some(&locality))
        {
            Some(group) => group.lb_endpoints.push(lb_endpoint),
            None => localities.push(LocalityLbEndpoints {
                locality: Some(locality),
                lb_endpoints: vec![lb_endpoint],
                // gRPC ignores localities without a weight.
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                ..LocalityLbEndpoints::default()
            }),
        }
    }
    Some(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: localities,
        ..ClusterLoadAssignment::default()
    })
}

/// Whether clients reach `endpoint` over mesh mTLS (Istio's auto-mTLS): it has a sidecar
/// (or is taken to, in a mesh-internal service), and its own PeerAuthentication does not
/// `DISABLE` mTLS on the port it is reached on — a DISABLE server gets plaintext.
fn speaks_mesh_mtls(
    snapshot: &MeshSnapshot,
    endpoint: &crate::registry::Endpoint,
    service: &crate::registry::Service,
    service_port: &crate::registry::ServicePort,
) -> bool {
    let sidecar = endpoint
        .sidecar
        .unwrap_or(service.location == Location::MeshInternal);
    let workload = Workload {
        namespace: &endpoint.namespace,
        labels: &endpoint.labels,
    };
    // PeerAuthentication names the application's own port.
    let port = endpoint
        .app_port
        .unwrap_or_else(|| endpoint.port_for(service_port));
    sidecar && mtls_mode(snapshot, &workload, port) != MtlsMode::Disable
}

/// What a proxy needs to know about an endpoint beyond its address: whether it is a mesh
/// workload (mTLS with auto-mTLS) and the identity it must present.
fn metadata(endpoint: &crate::registry::Endpoint, mesh: bool, trust_domain: &str) -> Metadata {
    let text = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let identity = Struct {
        fields: proto_map([
            ("namespace".to_string(), text(endpoint.namespace.clone())),
            (
                "identity".to_string(),
                text(format!(
                    "spiffe://{trust_domain}/ns/{}/sa/{}",
                    endpoint.namespace, endpoint.service_account
                )),
            ),
        ]),
    };
    let mut filter_metadata = vec![("istio".to_string(), identity)];
    if mesh {
        filter_metadata.push((TRANSPORT_SOCKET_MATCH.to_string(), mesh_endpoint_match()));
    }
    Metadata {
        filter_metadata: proto_map(filter_metadata),
        ..Metadata::default()
    }
}

fn locality(text: &str) -> Locality {
    let mut parts = text.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or("").to_string(),
        zone: parts.next().unwrap_or("").to_string(),
        sub_zone: parts.next().unwrap_or("").to_string(),
    }
}
