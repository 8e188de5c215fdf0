//! The inbound side of a sidecar: one listener, `virtualInbound` on port 15006 (where
//! interception sends inbound connections), whose filter chains are picked by destination
//! port and by whether the connection is TLS; and clusters `inbound|<port>||` that forward to
//! the application on 127.0.0.1.
//!
//! Per workload port the PeerAuthentication mode decides the chains: STRICT keeps only the
//! mTLS chain (client certificate required), DISABLE only the plaintext one, PERMISSIVE both
//! and a third for TLS that is not mesh mTLS (no Istio ALPN): the application's own TLS,
//! passed through as opaque TCP.
//! Each chain runs the workload's RBAC (DENY, then ALLOW) before forwarding: as HTTP filters
//! for HTTP ports, as network filters for TCP ports.

pub(super) mod authz;
pub(super) mod jwt;

use std::collections::BTreeMap;

use weft_api::mesh::PathNormalization;
use weft_api::networking::Protocol;
use weft_api::security::peer_authentication::MtlsMode;
use weft_xds::envoy::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType},
};
use weft_xds::envoy::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, TrafficDirection,
};
use weft_xds::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use weft_xds::envoy::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use weft_xds::envoy::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use weft_xds::envoy::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager::RouteSpecifier,
};
use weft_xds::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use weft_xds::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
};
use weft_xds::envoy::google::protobuf::UInt32Value;
use weft_xds::server::Resource;
use weft_xds::types::{pack, proto_map};

use self::authz::{ChainPort, InboundRbac, Workload, http_rbac_filters, inbound_rbac, mtls_mode};
use super::envoy::{
    HTTP_PROTOCOL_OPTIONS, HTTP_PROTOCOLS, duration, http_inspector, http_manager_filter,
    normalize_paths, router, socket_address, tcp_proxy_filter,
};
use super::names::{
    INBOUND_LISTENER, INBOUND_PORT, inbound_cluster_name, parse_inbound_cluster_name,
};
use super::tls::mesh_tls_server;
use crate::model::MeshSnapshot;
use crate::registration::RegisteredWorkload;

/// ALPN values Istio's proxies offer, which mark mesh mTLS on a PERMISSIVE port.
const MESH_ALPN: [&str; 5] = [
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// What an inbound port carries, from the protocols of the service ports served on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    Http,
    Tcp,
    /// Undeclared: HTTP or opaque TCP, by each connection's first bytes.
    Detect,
}

/// ALPN values Istio's proxies offer for HTTP over mesh mTLS.
const MESH_HTTP_ALPN: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];

/// The workload's own ports and what each carries.
fn ports(snapshot: &MeshSnapshot, workload: &RegisteredWorkload) -> BTreeMap<u32, Carries> {
    let mut ports = BTreeMap::new();
    for served in &workload.serves {
        let host = crate::registry::fqdn(&served.service, &workload.namespace);
        let protocol = snapshot
            .services
            .get(&host)
            .and_then(|s| s.port(Some(served.port)))
            .map(|p| p.protocol.clone())
            .unwrap_or_default();
        let carries = if protocol.is_sniffed() {
            Carries::Detect
        } else if protocol.is_http() {
            Carries::Http
        } else {
            Carries::Tcp
        };
        // Two services on one target port: a declared protocol wins over detection.
        ports
            .entry(served.target_port)
            .and_modify(|c| {
                if *c == Carries::Detect {
                    *c = carries;
                }
            })
            .or_insert(carries);
    }
    ports
}

/// Names of the inbound clusters of a workload.
pub(crate) fn cluster_names(workload: &RegisteredWorkload) -> Vec<String> {
    let mut ports: Vec<u32> = workload.serves.iter().map(|s| s.target_port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(inbound_cluster_name).collect()
}

/// How the inbound side speaks HTTP to the application on `target_port`, from the protocol
/// of the service ports it serves there: HTTP/1.1 for `HTTP`, HTTP/2 for `HTTP2` and `GRPC`,
/// else (undeclared, or ports that disagree) whatever the client spoke.
fn app_protocol(
    snapshot: &MeshSnapshot,
    workload: &RegisteredWorkload,
    target_port: u32,
) -> UpstreamProtocolOptions {
    let mut protocols = workload
        .serves
        .iter()
        .filter(|served| served.target_port == target_port)
        .map(|served| {
            let host = crate::registry::fqdn(&served.service, &workload.namespace);
            snapshot
                .services
                .get(&host)
                .and_then(|s| s.port(Some(served.port)))
                .map(|p| p.protocol.clone())
                .unwrap_or_default()
        });
    // The one protocol every service port served here declares, if they agree.
    let first = protocols.next();
    let agreed = first.filter(|first| protocols.all(|p| p == *first));
    let explicit = |config| {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(config),
        })
    };
    match agreed {
        Some(Protocol::Http) => explicit(ProtocolConfig::HttpProtocolOptions(
            Http1ProtocolOptions::default(),
        )),
        Some(Protocol::Http2 | Protocol::Grpc) => explicit(ProtocolConfig::Http2ProtocolOptions(
            Http2ProtocolOptions::default(),
        )),
        _ => UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..UseDownstreamHttpConfig::default()
        }),
    }
}

/// An inbound cluster: the application on 127.0.0.1 at the port the name gives, or at the
/// workload's `APP_PORT`, spoken to in the protocol of the services it serves there.
pub(crate) fn cluster(
    name: &str,
    snapshot: &MeshSnapshot,
    workload: &RegisteredWorkload,
) -> Option<Resource> {
    let port = parse_inbound_cluster_name(name)?;
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(app_protocol(snapshot, workload, port)),
        ..HttpProtocolOptions::default()
    };
    let port = workload.app_port.unwrap_or(port);
    let endpoint = LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address("127.0.0.1", port)),
            ..Endpoint::default()
        })),
        ..LbEndpoint::default()
    };
    let cluster = Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(std::time::Duration::from_secs(10))),
        typed_extension_protocol_options: proto_map([(
            HTTP_PROTOCOL_OPTIONS.to_string(),
            pack(&options),
        )]),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    };
    Some(Resource::new(name, pack(&cluster)))
}

/// The inbound listener of a workload.
pub(crate) fn listener(
    snapshot: &MeshSnapshot,
    workload: &RegisteredWorkload,
    trust_domain: &str,
) -> Resource {
    let who = Workload {
        namespace: &workload.namespace,
        labels: &workload.labels,
    };
    let mut filter_chains = Vec::new();
    let mut detecting = false;
    let paths = snapshot.mesh.path_normalization();
    let jwt = jwt::jwt_filter(snapshot, &who);
    for (port, carries) in ports(snapshot, workload) {
        // Policies name the workload's own port: the application's where the sidecar fronts
        // it on a port of its own (`APP_PORT`).
        let chain_port = ChainPort {
            workload: workload.app_port.unwrap_or(port),
            listener: port,
        };
        let mode = mtls_mode(snapshot, &who, chain_port.workload);
        // On a port of undeclared protocol, an HTTP chain for connections the HTTP inspector
        // recognises, in front of the TCP chain for the rest.
        let kinds: &[bool] = match carries {
            Carries::Http => &[true],
            Carries::Tcp => &[false],
            Carries::Detect => &[true, false],
        };
        detecting |= carries == Carries::Detect;
        for &http in kinds {
            let rbac = inbound_rbac(snapshot, &who, trust_domain, http, Some(chain_port));
            let detected_http = (carries == Carries::Detect && http).then(|| {
                HTTP_PROTOCOLS
                    .iter()
                    .chain(&MESH_HTTP_ALPN)
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
            });
            let suffix = if carries == Carries::Detect && !http {
                "-tcp"
            } else {
                ""
            };
            if mode != MtlsMode::Disable {
                filter_chains.push(FilterChain {
                    name: format!("{port}-mtls{suffix}"),
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: Some(UInt32Value { value: port }),
                        transport_protocol: "tls".to_string(),
                        application_protocols: match &detected_http {
                            Some(protocols) => protocols.clone(),
                            None if mode == MtlsMode::Permissive => {
                                MESH_ALPN.iter().map(|a| a.to_string()).collect()
                            }
                            None => Vec::new(),
                        },
                        ..FilterChainMatch::default()
                    }),
                    filters: network_filters(port, http, &rbac, jwt.as_ref(), paths),
                    transport_socket: Some(mesh_tls_server()),
                    ..FilterChain::default()
                });
            }
            if mode != MtlsMode::Strict {
                filter_chains.push(FilterChain {
                    name: format!("{port}-plaintext{suffix}"),
                    filter_chain_match: Some(FilterChainMatch {
                        destination_port: Some(UInt32Value { value: port }),
                        transport_protocol: "raw_buffer".to_string(),
                        application_protocols: detected_http.clone().unwrap_or_default(),
                        ..FilterChainMatch::default()
                    }),
                    filters: network_filters(port, http, &rbac, jwt.as_ref(), paths),
                    ..FilterChain::default()
                });
            }
        }
        // PERMISSIVE: TLS that is not mesh mTLS (no Istio ALPN) is the application's own,
        // passed through as opaque TCP under the port's TCP policies.
        if mode == MtlsMode::Permissive {
            let rbac = inbound_rbac(snapshot, &who, trust_domain, false, Some(chain_port));
            filter_chains.push(FilterChain {
                name: format!("{port}-tls-passthrough"),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: port }),
                    transport_protocol: "tls".to_string(),
                    ..FilterChainMatch::default()
                }),
                filters: network_filters(port, false, &rbac, None, paths),
                ..FilterChain::default()
            });
        }
    }
    let mut listener_filters = vec![ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }];
    if detecting {
        listener_filters.push(http_inspector());
    }
    let listener = Listener {
        name: INBOUND_LISTENER.to_string(),
        address: Some(socket_address("0.0.0.0", INBOUND_PORT)),
        traffic_direction: TrafficDirection::Inbound as i32,
        listener_filters,
        filter_chains,
        ..Listener::default()
    };
    Resource::new(INBOUND_LISTENER, pack(&listener))
}

/// The filters of an inbound chain: for HTTP, a connection manager with the JWT filter (if a
/// RequestAuthentication applies), the RBAC filters and the router; for TCP, the RBAC
/// filters and the TCP proxy.
fn network_filters(
    port: u32,
    http: bool,
    rbac: &InboundRbac,
    jwt: Option<&HttpFilter>,
    paths: PathNormalization,
) -> Vec<Filter> {
    let cluster = inbound_cluster_name(port);
    let stat_prefix = format!("inbound_{port}");
    if http {
        let mut http_filters: Vec<HttpFilter> = jwt.into_iter().cloned().collect();
        http_filters.extend(http_rbac_filters(rbac));
        http_filters.push(router());
        let route = Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(String::new())),
                ..RouteMatch::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                timeout: Some(duration(std::time::Duration::ZERO)),
                ..RouteAction::default()
            })),
            ..Route::default()
        };
        let mut manager = HttpConnectionManager {
            stat_prefix: stat_prefix.clone(),
            route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
                name: format!("inbound|{port}"),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|{port}"),
                    domains: vec!["*".to_string()],
                    routes: vec![route],
                    ..VirtualHost::default()
                }],
                ..RouteConfiguration::default()
            })),
            http_filters,
            ..HttpConnectionManager::default()
        };
        normalize_paths(&mut manager, paths);
        vec![http_manager_filter(&manager)]
    } else {
        let mut filters: Vec<Filter> = rbac
            .filters()
            .into_iter()
            .map(|(rules, shadow, prefix)| Filter {
                name: "envoy.filters.network.rbac".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&NetworkRbac {
                    rules,
                    shadow_rules: shadow,
                    shadow_rules_stat_prefix: prefix.to_string(),
                    stat_prefix: stat_prefix.clone(),
                    ..NetworkRbac::default()
                }))),
            })
            .collect();
        filters.push(tcp_proxy_filter(&TcpProxy {
            stat_prefix,
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)),
            ..TcpProxy::default()
        }));
        filters
    }
}
