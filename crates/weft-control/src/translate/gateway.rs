//! Gateways: what an ingress proxy (a node whose id starts `router~`, Istio's convention)
//! serves. The Gateway resources whose `selector` matches the proxy's labels give it one
//! listener per server port, `0.0.0.0_<port>`: plaintext HTTP for servers without `tls`,
//! and for `SIMPLE` and `MUTUAL` servers a chain per server matched on SNI (the server's
//! hosts) that terminates TLS with the server's certificate files. The plaintext chain
//! routes with the route configuration `http.<port>`, each TLS server's chain with one of
//! its own, `https.<port>.<index>.<gateway>.<namespace>` (so a client cannot reach a
//! MUTUAL server's hosts through a SIMPLE server on the same port): a virtual host per host
//! of each VirtualService bound to the server's Gateway (`gateways: [ns/name]`, or `name`
//! in the VirtualService's namespace) that the server admits, with the VirtualService's
//! routes. A host of a
//! server with `tls.httpsRedirect` gets `require_tls: ALL`: plain HTTP to it is redirected.
//! The routes themselves are the sidecars' ([`crate::translate::outbound::route`]); this
//! module decides only which VirtualServices and hosts a gateway port serves.

use weft_api::Resource as ApiResource;
use weft_api::networking::gateway::{Gateway, Server};
use weft_api::networking::virtual_service::VirtualService;
use weft_api::networking::{ServerTlsMode, ServerTlsSettings, TlsProtocol};
use weft_xds::envoy::envoy::config::core::v3::TrafficDirection;
use weft_xds::envoy::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use weft_xds::envoy::envoy::config::route::v3::virtual_host::TlsRequirementType;
use weft_xds::envoy::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    TlsCertificate, TlsParameters, common_tls_context::ValidationContextType,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol as EnvoyTlsProtocol,
};
use weft_xds::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use weft_xds::envoy::google::protobuf::BoolValue;
use weft_xds::server::Resource;
use weft_xds::types::pack;

use super::client::Client;
use super::envoy::{file, http_manager, http_manager_filter, socket, tls_socket};
use super::inbound::authz::{Workload, http_rbac_filters, inbound_rbac};
use super::inbound::jwt::jwt_filter;
use super::names::port_listener_name;
use super::outbound::route::{Place, virtual_service_routes};
use crate::model::MeshSnapshot;
use crate::registry::{Service, fqdn};

/// A server of a Gateway that selects the client.
struct Bound<'a> {
    /// The Gateway's resource (its name and namespace).
    resource: &'a ApiResource,
    server: &'a Server,
    /// Its place in the Gateway's `servers`.
    index: usize,
    port: u32,
}

impl Bound<'_> {
    /// Whether it terminates TLS (`SIMPLE`, `MUTUAL`); plaintext HTTP otherwise.
    fn terminates_tls(&self) -> bool {
        matches!(
            self.server.tls.as_ref().and_then(|t| t.mode),
            Some(ServerTlsMode::Simple | ServerTlsMode::Mutual)
        )
    }

    /// Its route configuration: its own for a TLS server (`https.<port>.<index>.<gateway>.
    /// <namespace>`, as Istio names them), so that a connection to it reaches only its
    /// hosts; the port's plaintext one (`http.<port>`) otherwise.
    fn route_name(&self) -> String {
        if self.terminates_tls() {
            format!(
                "https.{}.{}.{}.{}",
                self.port,
                self.index,
                self.resource.metadata.name,
                self.resource.namespace()
            )
        } else {
            format!("http.{}", self.port)
        }
    }
}

/// The servers of every Gateway whose selector matches the client's labels.
fn bound_servers<'a>(snapshot: &'a MeshSnapshot, client: &Client) -> Vec<Bound<'a>> {
    snapshot
        .gateways
        .iter()
        .filter(|(_, gateway): &&(ApiResource, Gateway)| {
            gateway
                .selector
                .iter()
                .all(|(key, value)| client.labels.get(key) == Some(value))
        })
        .flat_map(|(resource, gateway)| {
            // A server Weft cannot serve (the analyzer says why) gets no listener, rather
            // than plaintext HTTP its author did not ask for.
            let served = gateway
                .servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.unserved().is_none());
            served.filter_map(move |(index, server)| {
                Some(Bound {
                    resource,
                    server,
                    index,
                    port: server.port.as_ref()?.number,
                })
            })
        })
        .collect()
}

/// A gateway's listener names: one per server port.
pub(crate) fn listener_names(snapshot: &MeshSnapshot, client: &Client) -> Vec<String> {
    let mut ports: Vec<u32> = bound_servers(snapshot, client)
        .iter()
        .map(|b| b.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(port_listener_name).collect()
}

/// The listener on `port` for a gateway, if a bound server has that port.
pub(crate) fn listener(
    snapshot: &MeshSnapshot,
    client: &Client,
    port: u32,
    trust_domain: &str,
) -> Option<Resource> {
    let servers: Vec<Bound<'_>> = bound_servers(snapshot, client)
        .into_iter()
        .filter(|b| b.port == port)
        .collect();
    if servers.is_empty() {
        return None;
    }
    // The gateway's own AuthorizationPolicies (selecting its labels), checked before
    // anything else; the client's address is the one `numTrustedProxies` hops back in
    // `x-forwarded-for`.
    let gateway = Workload {
        namespace: &client.namespace,
        labels: &client.labels,
    };
    let rbac = inbound_rbac(snapshot, &gateway, trust_domain, true, None);
    // Its RequestAuthentications' JWT filter goes before the policies that read tokens.
    let mut front: Vec<_> = jwt_filter(snapshot, &gateway).into_iter().collect();
    front.extend(http_rbac_filters(&rbac));
    let manager = |route: &str| {
        let mut manager = http_manager(
            &format!("gateway_0.0.0.0_{port}"),
            route,
            snapshot.mesh.path_normalization(),
        );
        manager.http_filters.splice(0..0, front.iter().cloned());
        manager.use_remote_address = Some(BoolValue { value: true });
        manager.xff_num_trusted_hops = snapshot.mesh.num_trusted_proxies();
        vec![http_manager_filter(&manager)]
    };
    let mut filter_chains = Vec::new();
    let mut plaintext = false;
    for bound in &servers {
        let mode = bound.server.tls.as_ref().and_then(|t| t.mode);
        match mode {
            Some(ServerTlsMode::Simple | ServerTlsMode::Mutual) => {
                let Some(tls) = bound.server.tls.as_ref() else {
                    continue;
                };
                let mutual = mode == Some(ServerTlsMode::Mutual);
                let context = DownstreamTlsContext {
                    require_client_certificate: Some(BoolValue { value: mutual }),
                    common_tls_context: Some(CommonTlsContext {
                        tls_certificates: vec![TlsCertificate {
                            certificate_chain: Some(file(&tls.server_certificate)),
                            private_key: Some(file(&tls.private_key)),
                            ..TlsCertificate::default()
                        }],
                        alpn_protocols: vec!["h2".to_string(), "http/1.1".to_string()],
                        tls_params: Some(tls_params(tls)),
                        validation_context_type: (!tls.ca_certificates.is_empty()).then(|| {
                            ValidationContextType::ValidationContext(CertificateValidationContext {
                                trusted_ca: Some(file(&tls.ca_certificates)),
                                crl: (!tls.ca_crl.is_empty()).then(|| file(&tls.ca_crl)),
                                match_typed_subject_alt_names: tls
                                    .subject_alt_names
                                    .iter()
                                    .map(|name| client_san(name))
                                    .collect(),
                                ..CertificateValidationContext::default()
                            })
                        }),
                        ..CommonTlsContext::default()
                    }),
                    ..DownstreamTlsContext::default()
                };
                filter_chains.push(FilterChain {
                    name: format!(
                        "{}/{}:{}",
                        bound.resource.namespace(),
                        bound.resource.metadata.name,
                        bound
                            .server
                            .name
                            .clone()
                            .unwrap_or_else(|| port.to_string())
                    ),
                    filter_chain_match: Some(FilterChainMatch {
                        server_names: server_names(bound.server),
                        transport_protocol: "tls".to_string(),
                        ..FilterChainMatch::default()
                    }),
                    filters: manager(&bound.route_name()),
                    transport_socket: Some(tls_socket(&context)),
                    ..FilterChain::default()
                });
            }
            // Plaintext HTTP (the modes Weft does not serve were left out above).
            _ => plaintext = true,
        }
    }
    if plaintext {
        filter_chains.push(FilterChain {
            name: format!("http.{port}"),
            filters: manager(&format!("http.{port}")),
            ..FilterChain::default()
        });
    }
    let listener = Listener {
        name: port_listener_name(port),
        address: Some(socket(port)),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains,
        ..Listener::default()
    };
    Some(Resource::new(port_listener_name(port), pack(&listener)))
}

/// A server's TLS versions and TLS 1.2 cipher suites, as Envoy takes them.
fn tls_params(tls: &ServerTlsSettings) -> TlsParameters {
    let version = |v: Option<TlsProtocol>| match v {
        None | Some(TlsProtocol::Auto) => EnvoyTlsProtocol::TlsAuto,
        Some(TlsProtocol::V1_0) => EnvoyTlsProtocol::TlSv10,
        Some(TlsProtocol::V1_1) => EnvoyTlsProtocol::TlSv11,
        Some(TlsProtocol::V1_2) => EnvoyTlsProtocol::TlSv12,
        Some(TlsProtocol::V1_3) => EnvoyTlsProtocol::TlSv13,
    } as i32;
    TlsParameters {
        tls_minimum_protocol_version: version(tls.min_protocol_version),
        tls_maximum_protocol_version: version(tls.max_protocol_version),
        cipher_suites: tls.cipher_suites.clone(),
        ..TlsParameters::default()
    }
}

/// A client certificate name a `MUTUAL` server accepts: a URI SAN when it has a scheme
/// (`spiffe://…`), else a DNS name.
fn client_san(name: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: if name.contains("://") {
            SanType::Uri
        } else {
            SanType::Dns
        } as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(name.to_string())),
            ..StringMatcher::default()
        }),
        ..SubjectAltNameMatcher::default()
    }
}

/// Whether a server answers plain HTTP with a redirect to HTTPS (`tls.httpsRedirect`).
fn https_redirect(server: &Server) -> bool {
    server.tls.as_ref().is_some_and(|tls| tls.https_redirect)
}

/// The SNI names a TLS server answers: its hosts without their namespace part; none (any
/// name) when a host is `*`.
fn server_names(server: &Server) -> Vec<String> {
    let hosts: Vec<String> = server
        .hosts
        .iter()
        .map(|h| host_part(h).to_string())
        .collect();
    if hosts.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        hosts
    }
}

/// `reviews.example.com` of `ns/reviews.example.com`.
fn host_part(host: &str) -> &str {
    host.split_once('/').map_or(host, |(_, host)| host)
}

/// Whether a Gateway server admits a VirtualService host from `namespace`: a server host
/// `ns/host`, `*/host`, `./host` (the Gateway's namespace) or `host` that covers it.
fn admits(server: &Server, gateway_namespace: &str, namespace: &str, host: &str) -> bool {
    server.hosts.iter().any(|pattern| {
        let (scope, pattern) = match pattern.split_once('/') {
            Some((scope, pattern)) => (scope, pattern),
            None => ("*", pattern.as_str()),
        };
        let in_scope = match scope {
            "*" => true,
            "." => namespace == gateway_namespace,
            scope => scope == namespace,
        };
        in_scope
            && (weft_api::hosts::covers(pattern, host)
                || (host == "*" && pattern == "*")
                || weft_api::hosts::covers(host, pattern))
    })
}

/// Whether a VirtualService in `namespace` names the Gateway `name` of `gateway_namespace`.
fn binds(vs: &VirtualService, namespace: &str, gateway_namespace: &str, name: &str) -> bool {
    vs.gateways.iter().any(|g| match g.split_once('/') {
        Some((ns, gateway)) => ns == gateway_namespace && gateway == name,
        None => g == name && namespace == gateway_namespace,
    })
}

/// A route configuration of a gateway: `http.<port>`, the hosts of the port's plaintext
/// servers, or `https.<port>.<index>.<gateway>.<namespace>`, one TLS server's.
pub(crate) fn route_resource(
    snapshot: &MeshSnapshot,
    client: &Client,
    name: &str,
) -> Option<Resource> {
    let servers: Vec<Bound<'_>> = bound_servers(snapshot, client)
        .into_iter()
        .filter(|b| b.route_name() == name)
        .collect();
    let port = servers.first()?.port;
    let mut gateways: Vec<(&str, &str)> = servers
        .iter()
        .map(|b| (b.resource.namespace(), b.resource.metadata.name.as_str()))
        .collect();
    gateways.sort_unstable();
    gateways.dedup();
    let place = Place::Gateways(gateways);
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    for (resource, vs) in &snapshot.gateway_virtual_services {
        let namespace = resource.namespace();
        for host in &vs.hosts {
            let admitted = servers.iter().any(|b| {
                let gateway_namespace = b.resource.namespace();
                binds(vs, namespace, gateway_namespace, &b.resource.metadata.name)
                    && admits(b.server, gateway_namespace, namespace, host)
            });
            if !admitted || virtual_hosts.iter().any(|v| v.domains.contains(host)) {
                continue;
            }
            // The host a VirtualService routes at a gateway is a name clients use, not a
            // service: destinations name their services themselves.
            let gateway_host = Service {
                host: if host.contains('*') {
                    host.clone()
                } else {
                    fqdn(host, namespace)
                },
                namespace: namespace.to_string(),
                ports: Vec::new(),
                resolution: weft_api::networking::service_entry::Resolution::None,
                location: weft_api::networking::service_entry::Location::MeshExternal,
                endpoints: Vec::new(),
            };
            let routes = virtual_service_routes(
                snapshot,
                vs,
                namespace,
                client,
                &gateway_host,
                port,
                &place,
            );
            let redirect = servers.iter().any(|b| {
                https_redirect(b.server)
                    && admits(b.server, b.resource.namespace(), namespace, host)
            });
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.clone(), format!("{host}:{port}")],
                routes,
                require_tls: if redirect {
                    TlsRequirementType::All as i32
                } else {
                    0
                },
                ..VirtualHost::default()
            });
        }
    }
    // A host of an `httpsRedirect` server that no VirtualService routes here still
    // redirects (as Istio does).
    for bound in servers.iter().filter(|b| https_redirect(b.server)) {
        for host in bound.server.hosts.iter().map(|h| host_part(h)) {
            if virtual_hosts
                .iter()
                .any(|v| v.domains.iter().any(|d| d == host))
            {
                continue;
            }
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.to_string(), format!("{host}:{port}")],
                require_tls: TlsRequirementType::All as i32,
                ..VirtualHost::default()
            });
        }
    }
    let config = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        ..RouteConfiguration::default()
    };
    Some(Resource::new(name, pack(&config)))
}
