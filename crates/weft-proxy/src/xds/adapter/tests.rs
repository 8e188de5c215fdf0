//! Resources applied one by one: the good ones of a response are taken, a bad one is
//! rejected by name and its last good version stays, and what did not change is not
//! converted again.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use prost::Message;
use weft_xds::envoy::envoy::config::cluster::v3::Cluster as XdsCluster;
use weft_xds::envoy::envoy::config::cluster::v3::cluster::EdsClusterConfig;
use weft_xds::envoy::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use weft_xds::envoy::envoy::config::core::v3::{
    Address, HeaderValue, HeaderValueOption, SocketAddress, address, socket_address,
};
use weft_xds::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use weft_xds::envoy::envoy::config::route::v3::{
    DirectResponseAction, Route as XdsRoute, RouteConfiguration, VirtualHost as XdsVirtualHost,
    route::Action as XdsAction,
};

use super::*;

fn any<M: Message>(type_url: &str, message: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

fn assignment(name: &str, addresses: &[&str]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: addresses
                .iter()
                .map(|ip| LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(XdsEndpoint {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: (*ip).to_string(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                                ..SocketAddress::default()
                            })),
                        }),
                        ..XdsEndpoint::default()
                    })),
                    ..LbEndpoint::default()
                })
                .collect(),
            ..LocalityLbEndpoints::default()
        }],
        ..ClusterLoadAssignment::default()
    }
}

fn inline_cluster(name: &str, ip: &str) -> Any {
    let cluster = XdsCluster {
        name: name.to_string(),
        load_assignment: Some(assignment(name, &[ip])),
        ..XdsCluster::default()
    };
    any(CLUSTER, &cluster)
}

fn eds_cluster(name: &str) -> Any {
    let cluster = XdsCluster {
        name: name.to_string(),
        eds_cluster_config: Some(EdsClusterConfig::default()),
        ..XdsCluster::default()
    };
    any(CLUSTER, &cluster)
}

fn direct_route(name: &str, status: u32, header: &str) -> Any {
    let config = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![XdsVirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![XdsRoute {
                name: "direct".into(),
                action: Some(XdsAction::DirectResponse(DirectResponseAction {
                    status,
                    ..DirectResponseAction::default()
                })),
                response_headers_to_add: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: header.to_string(),
                        value: "1".into(),
                        ..HeaderValue::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..HeaderValueOption::default()
                }],
                ..XdsRoute::default()
            }],
            ..XdsVirtualHost::default()
        }],
        ..RouteConfiguration::default()
    };
    any(ROUTE, &config)
}

fn names(rejected: &[Rejected]) -> Vec<String> {
    rejected.iter().map(|r| r.name.clone()).collect()
}

#[test]
fn the_good_clusters_of_a_response_are_applied_and_the_bad_one_rejected_by_name() {
    let mut received = Received::default();
    let rejected = received.apply(
        CLUSTER,
        vec![
            inline_cluster("good", "10.0.0.1"),
            inline_cluster("bad", "not-an-ip"),
        ],
    );
    assert_eq!(names(&rejected), ["bad"]);
    assert!(
        rejected[0].to_string().contains("no IP address"),
        "{}",
        rejected[0]
    );
    let model = received.assemble();
    assert!(model.clusters.contains_key("good"));
    assert!(!model.clusters.contains_key("bad"));
    assert!(
        received.answered.contains(CLUSTER),
        "a partly rejected response counts as answered"
    );
}

#[test]
fn a_rejected_update_keeps_the_last_good_version() {
    let mut received = Received::default();
    assert!(
        received
            .apply(CLUSTER, vec![inline_cluster("a", "10.0.0.1")])
            .is_empty()
    );
    let rejected = received.apply(CLUSTER, vec![inline_cluster("a", "nowhere")]);
    assert_eq!(names(&rejected), ["a"]);
    let model = received.assemble();
    let address = model.clusters["a"].endpoints[0].address;
    assert_eq!(address.to_string(), "10.0.0.1:80");
    // A whole set (CDS) without the cluster removes it.
    assert!(received.apply(CLUSTER, Vec::new()).is_empty());
    assert!(received.assemble().clusters.is_empty());
}

#[test]
fn route_configurations_with_a_bad_status_or_header_are_rejected_alone() {
    let mut received = Received::default();
    let rejected = received.apply(
        ROUTE,
        vec![
            direct_route("fine", 204, "x-fine"),
            direct_route("status", 700, "x-fine"),
            direct_route("header", 200, "bad header"),
        ],
    );
    let mut rejected = names(&rejected);
    rejected.sort();
    assert_eq!(rejected, ["header", "status"]);
    let model = received.assemble();
    let table = &model.routes["fine"];
    match &table.virtual_hosts[0].routes[0].action {
        crate::model::Action::Direct { status, .. } => assert_eq!(status.as_u16(), 204),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        table.virtual_hosts[0].routes[0].response_headers.set[0].0,
        "x-fine"
    );
    // RDS is not a whole set: later responses add to what is held.
    assert!(
        received
            .apply(ROUTE, vec![direct_route("more", 200, "x-more")])
            .is_empty()
    );
    assert_eq!(received.assemble().routes.len(), 2);
}

#[test]
fn what_did_not_change_is_not_converted_or_linked_again() {
    let mut received = Received::default();
    received.apply(CLUSTER, vec![eds_cluster("a"), eds_cluster("b")]);
    assert_eq!(received.wanted_endpoints(), ["a", "b"]);
    received.apply(
        ENDPOINT,
        vec![
            any(ENDPOINT, &assignment("a", &["10.0.0.1"])),
            any(ENDPOINT, &assignment("b", &["10.0.0.2"])),
        ],
    );
    let first = received.assemble();
    let settings = received.clusters["a"].value.clone();

    // The same clusters again, and new endpoints for b only.
    received.apply(CLUSTER, vec![eds_cluster("a"), eds_cluster("b")]);
    received.apply(
        ENDPOINT,
        vec![any(ENDPOINT, &assignment("b", &["10.0.0.3"]))],
    );
    let second = received.assemble();
    assert!(
        Arc::ptr_eq(&settings, &received.clusters["a"].value),
        "a was not converted again"
    );
    assert!(
        Arc::ptr_eq(&first.clusters["a"], &second.clusters["a"]),
        "a was not linked again"
    );
    assert!(!Arc::ptr_eq(&first.clusters["b"], &second.clusters["b"]));
    assert_eq!(
        second.clusters["b"].endpoints[0].address.to_string(),
        "10.0.0.3:80"
    );
}

#[test]
fn a_resource_that_does_not_decode_is_rejected() {
    let mut received = Received::default();
    let garbage = Any {
        type_url: CLUSTER.to_string(),
        value: vec![0xff, 0xff, 0xff],
    };
    let rejected = received.apply(CLUSTER, vec![garbage, inline_cluster("ok", "10.0.0.1")]);
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].to_string().contains("undecodable"));
    assert!(received.assemble().clusters.contains_key("ok"));
}
