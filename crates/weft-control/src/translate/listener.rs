//! Listeners. A proxyless gRPC client gets API listeners named `<host>:<port>` that point at
//! the route configuration of the same name. A sidecar gets Istio's outbound shape:
//! `virtualOutbound` on 15001 handing connections to `0.0.0.0_<port>` listeners, each routing
//! HTTP by Host with the route configuration `<port>`; its inbound side is in
//! [`super::inbound`].

use weft_xds::envoy::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TrafficDirection,
    address, config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use weft_xds::envoy::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter,
};
use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::HttpFault;
use weft_xds::envoy::envoy::extensions::filters::http::router::v3::Router;
use weft_xds::envoy::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType,
};
use weft_xds::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use weft_xds::envoy::google::protobuf::BoolValue;
use weft_xds::server::Resource;
use weft_xds::types::pack;

use super::{Client, resolve_target};
use crate::model::MeshSnapshot;

/// The name of the HTTP filter that injects faults; routes configure it per route.
pub(crate) const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A config source meaning "over the same ADS stream".
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

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
        .filter(|p| super::route::is_http(&p.protocol))
        .map(|p| p.number)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    std::iter::once(VIRTUAL_OUTBOUND.to_string())
        .chain(ports.into_iter().map(|port| format!("0.0.0.0_{port}")))
        .collect()
}

/// The listener called `name`: a sidecar's outbound listener, or a proxyless client's API
/// listener `<host>:<port>` if that names a service port it can reach.
pub(crate) fn listener(snapshot: &MeshSnapshot, client: &Client, name: &str) -> Option<Resource> {
    if name == VIRTUAL_OUTBOUND {
        return Some(Resource::new(name, pack(&virtual_outbound())));
    }
    if let Some(port) = name
        .strip_prefix("0.0.0.0_")
        .and_then(|p| p.parse::<u32>().ok())
    {
        let sniffed = snapshot.services.values().any(|s| {
            s.ports
                .iter()
                .any(|p| p.number == port && super::route::is_sniffed(&p.protocol))
        });
        return Some(Resource::new(name, pack(&port_listener(port, sniffed))));
    }
    resolve_target(snapshot, client, name)?;
    Some(Resource::new(name, pack(&api_listener(name))))
}

/// The listener interception sends outbound connections to (Istio's name and port).
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// Its port.
pub const OUTBOUND_PORT: u32 = 15001;
/// The cluster that forwards to a connection's original destination.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";

pub(crate) fn socket(port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "0.0.0.0".to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
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
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&passthrough))),
            }],
            ..FilterChain::default()
        }),
        ..Listener::default()
    }
}

/// HTTP to any service on `port`, routed by Host with the route configuration `<port>`.
/// When a service on the port left its protocol undeclared (`sniffed`), Istio's protocol
/// detection: the HTTP inspector tells HTTP connections (routed) from the rest (passed
/// through to where they were going).
fn port_listener(port: u32, sniffed: bool) -> Listener {
    let manager = http_manager(&format!("outbound_0.0.0.0_{port}"), &port.to_string());
    let http = FilterChain {
        filter_chain_match: sniffed.then(|| FilterChainMatch {
            application_protocols: HTTP_PROTOCOLS.iter().map(|p| p.to_string()).collect(),
            ..FilterChainMatch::default()
        }),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".to_string(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&manager))),
        }],
        ..FilterChain::default()
    };
    let mut listener = Listener {
        name: format!("0.0.0.0_{port}"),
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

/// What Envoy's HTTP inspector reports for HTTP/1.x and cleartext HTTP/2.
pub(crate) const HTTP_PROTOCOLS: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];

/// The listener filter that detects HTTP on a connection.
pub(crate) fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &HttpInspector::default(),
        ))),
        ..ListenerFilter::default()
    }
}

fn api_listener(name: &str) -> Listener {
    let manager = http_manager(name, name);
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager)),
        }),
        ..Listener::default()
    }
}

/// An HTTP connection manager whose routes come over RDS, with the fault filter (configured
/// per route) and the router.
pub(crate) fn http_manager(stat_prefix: &str, route_config_name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config_name.to_string(),
        })),
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.to_string(),
                config_type: Some(ConfigType::TypedConfig(pack(&HttpFault::default()))),
                ..HttpFilter::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".to_string(),
                config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
                ..HttpFilter::default()
            },
        ],
        ..HttpConnectionManager::default()
    }
}
