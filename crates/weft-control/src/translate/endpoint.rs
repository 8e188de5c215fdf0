//! Endpoints: the addresses behind a cluster, filtered by the subset's labels.

use weft_xds::envoy::envoy::config::core::v3::{
    Address, HealthStatus, Locality, SocketAddress, address, socket_address::PortSpecifier,
};
use weft_xds::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use weft_xds::envoy::google::protobuf::UInt32Value;
use weft_xds::server::Resource;
use weft_xds::types::pack;

use super::parse_cluster_name;
use crate::model::MeshSnapshot;

/// The endpoints of the cluster called `name`, if it exists.
pub(crate) fn endpoint_resource(snapshot: &MeshSnapshot, name: &str) -> Option<Resource> {
    let assignment = load_assignment(snapshot, name)?;
    Some(Resource::new(name, pack(&assignment)))
}

fn load_assignment(snapshot: &MeshSnapshot, name: &str) -> Option<ClusterLoadAssignment> {
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
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: endpoint.address.clone(),
                        port_specifier: Some(PortSpecifier::PortValue(
                            endpoint.port_for(service_port),
                        )),
                        ..SocketAddress::default()
                    })),
                }),
                ..Endpoint::default()
            })),
            health_status: HealthStatus::Healthy as i32,
            load_balancing_weight: Some(UInt32Value {
                value: endpoint.weight,
            }),
            ..LbEndpoint::default()
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

fn locality(text: &str) -> Locality {
    let mut parts = text.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or("").to_string(),
        zone: parts.next().unwrap_or("").to_string(),
        sub_zone: parts.next().unwrap_or("").to_string(),
    }
}
