//! Listeners. A proxyless gRPC client gets API listeners named `<host>:<port>` that point at
//! the route configuration of the same name. A sidecar gets Istio's outbound shape:
//! `virtualOutbound` on 15001 handing connections to `0.0.0.0_<port>` listeners, each routing
//! HTTP by Host with the route configuration `<port>`; its inbound side is in
//! [`crate::translate::inbound`].

use weft_api::mesh::PathNormalization;
use weft_xds::envoy::envoy::config::core::v3::TrafficDirection;
use weft_xds::envoy::envoy::config::listener::v3::{
    ApiListener, FilterChain, FilterChainMatch, Listener,
};
use weft_xds::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use weft_xds::envoy::google::protobuf::BoolValue;
use weft_xds::server::Resource;
use weft_xds::types::pack;

use crate::model::MeshSnapshot;
use crate::translate::client::Client;
use crate::translate::envoy::{
    HTTP_PROTOCOLS, http_inspector, http_manager, http_manager_filter, socket, tcp_proxy_filter,
};
use crate::translate::names::{
    OUTBOUND_PORT, PASSTHROUGH_CLUSTER, VIRTUAL_OUTBOUND, parse_port_listener_name,
    port_listener_name,
};
use crate::translate::policy::resolve_target;

/// Every listener name, for a wildcard subscription: `<host>:<port>` of every service port.
pub(crate) fn all_names(
    snapshot: &MeshSnapshot,
    visible: Option<&[(String, String)]>,
) -> Vec<String> {
    snapshot
        .services
        .values()
        .filter(|s| MeshSnapshot::reachable(s, visible))
        .flat_map(|s| {
            s.ports
                .iter()
                .map(move |p| format!("{}:{}", s.host, p.number))
        })
        .collect()
}

/// A sidecar's outbound listeners: `virtualOutbound` (where interception sends outbound
/// connections) and `0.0.0.0_<port>` for each port services route HTTP on.
pub(crate) fn sidecar_names(
    snapshot: &MeshSnapshot,
    visible: Option<&[(String, String)]>,
) -> Vec<String> {
    let mut ports: Vec<u32> = snapshot
        .services
        .values()
        .filter(|s| MeshSnapshot::reachable(s, visible))
        .flat_map(|s| &s.ports)
        .filter(|p| p.protocol.is_http())
        .map(|p| p.number)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    std::iter::once(VIRTUAL_OUTBOUND.to_string())
        .chain(ports.into_iter().map(port_listener_name))
        .collect()
}

/// The listener called `name`: a sidecar's outbound listener, or a proxyless client's API
/// listener `<host>:<port>` if that names a service port it can reach.
pub(crate) fn listener(snapshot: &MeshSnapshot, client: &Client, name: &str) -> Option<Resource> {
    if name == VIRTUAL_OUTBOUND {
        return Some(Resource::new(name, pack(&virtual_outbound())));
    }
    if let Some(port) = parse_port_listener_name(name) {
        let sniffed = snapshot.services.values().any(|s| {
            s.ports
                .iter()
                .any(|p| p.number == port && p.protocol.is_sniffed())
        });
        return Some(Resource::new(
            name,
            pack(&port_listener(
                port,
                sniffed,
                snapshot.mesh.path_normalization(),
            )),
        ));
    }
    resolve_target(snapshot, client, name)?;
    Some(Resource::new(
        name,
        pack(&api_listener(name, snapshot.mesh.path_normalization())),
    ))
}

/// Hands each intercepted connection to the listener of its original port; what no listener
/// claims passes through to where it was going (Istio's default `ALLOW_ANY`).
fn virtual_outbound() -> Listener {
    let passthrough = TcpProxy {
        stat_prefix: PASSTHROUGH_CLUSTER.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
            PASSTHROUGH_CLUSTER.to_string(),
        )),
        ..TcpProxy::default()
    };
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket(OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        default_filter_chain: Some(FilterChain {
            name: PASSTHROUGH_CLUSTER.to_string(),
            filters: vec![tcp_proxy_filter(&passthrough)],
            ..FilterChain::default()
        }),
        ..Listener::default()
    }
}

/// HTTP to any service on `port`, routed by Host with the route configuration `<port>`.
/// When a service on the port left its protocol undeclared (`sniffed`), Istio's protocol
/// detection: the HTTP inspector tells HTTP connections (routed) from the rest (passed
/// through to where they were going).
fn port_listener(port: u32, sniffed: bool, paths: PathNormalization) -> Listener {
    let manager = http_manager(
        &format!("outbound_0.0.0.0_{port}"),
        &port.to_string(),
        paths,
    );
    let http = FilterChain {
        filter_chain_match: sniffed.then(|| FilterChainMatch {
            application_protocols: HTTP_PROTOCOLS.iter().map(|p| p.to_string()).collect(),
            ..FilterChainMatch::default()
        }),
        filters: vec![http_manager_filter(&manager)],
        ..FilterChain::default()
    };
    let mut listener = Listener {
        name: port_listener_name(port),
        address: Some(socket(port)),
        // Reached through virtualOutbound, not bound itself.
        bind_to_port: Some(BoolValue { value: false }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![http],
        ..Listener::default()
    };
    if sniffed {
        listener.listener_filters = vec![http_inspector()];
        listener.default_filter_chain = virtual_outbound().default_filter_chain;
    }
    listener
}

fn api_listener(name: &str, paths: PathNormalization) -> Listener {
    let manager = http_manager(name, name, paths);
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager)),
        }),
        ..Listener::default()
    }
}
