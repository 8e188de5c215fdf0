//! A control plane of fixed resources, with the mesh CA: how a test sends a sidecar a
//! configuration `weft control` never would (shapes the proxy must reject), and the
//! resources those tests send.

/// A control plane serving fixed resources (with the mesh CA, so the sidecar gets a
/// certificate): how a test sends a sidecar configuration `weft control` never would.
pub struct FixedControl {
    /// Its xDS (and CA) address.
    pub xds: String,
    /// Where its CA keeps its keys.
    pub state: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

struct Fixed(Vec<(&'static str, weft_xds::server::Resource)>);

impl weft_xds::server::Generator for Fixed {
    fn generate(
        &self,
        _node: &weft_xds::envoy::envoy::config::core::v3::Node,
        type_url: &str,
        _names: Option<&[String]>,
    ) -> std::sync::Arc<weft_xds::server::ResourceSet> {
        let resources = self
            .0
            .iter()
            .filter(|(kind, _)| *kind == type_url)
            .map(|(_, resource)| std::sync::Arc::new(resource.clone()))
            .collect();
        std::sync::Arc::new(weft_xds::server::ResourceSet::new(resources))
    }
}

impl FixedControl {
    /// Serves `resources` (by type URL) and the CA.
    pub fn start(resources: Vec<(&'static str, weft_xds::server::Resource)>) -> Self {
        use std::sync::Arc;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let state = tempfile::tempdir().unwrap();
        let authority = weft_control::ca::CertificateAuthority::load_or_create(
            state.path(),
            "cluster.local",
            weft_control::ca::CertificateAuthority::DEFAULT_TTL,
        )
        .unwrap();
        let tokens =
            Arc::new(weft_control::ca::token::JoinTokens::load_or_create(state.path()).unwrap());
        let (_changes, watcher) = tokio::sync::watch::channel(0);
        let ads = weft_xds::server::AdsServer::new(Arc::new(Fixed(resources)), watcher, "fixed");
        let ca = weft_control::ca::CaService::new(Arc::new(authority), tokens);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let xds = listener.local_addr().unwrap().to_string();
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(ads.into_service())
                .add_service(ca.into_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        std::mem::forget(_changes);
        FixedControl {
            xds,
            state,
            _runtime: runtime,
        }
    }

    /// A join token for `namespace`/`account`.
    pub fn token(&self, namespace: &str, account: &str) -> String {
        weft_control::ca::token::JoinTokens::load_or_create(self.state.path())
            .unwrap()
            .issue(namespace, account)
    }
}

/// An inbound listener whose only chain (opaque TCP on `port`, mTLS) allows callers by a
/// principal matcher with no pattern, and the cluster of the application behind it.
pub fn unreadable_policy(port: u16, app: u16) -> Vec<(&'static str, weft_xds::server::Resource)> {
    use weft_xds::envoy::envoy::config::cluster::v3::{Cluster, cluster};
    use weft_xds::envoy::envoy::config::core::v3::{
        Address, SocketAddress, TrafficDirection, address, socket_address,
    };
    use weft_xds::envoy::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    use weft_xds::envoy::envoy::config::listener::v3::{
        Filter, FilterChain, FilterChainMatch, Listener, filter,
    };
    use weft_xds::envoy::envoy::config::rbac::v3::{
        Permission, Policy, Principal, Rbac, permission, principal,
    };
    use weft_xds::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    use weft_xds::envoy::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy,
    };
    use weft_xds::envoy::envoy::r#type::matcher::v3::StringMatcher;
    use weft_xds::types::pack;
    let cluster_name = format!("inbound|{port}||");
    let policy = Policy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::Any(true)),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: Some(StringMatcher::default()),
                },
            )),
        }],
        ..Policy::default()
    };
    let rbac = NetworkRbac {
        rules: Some(Rbac {
            policies: [("only-someone".to_string(), policy)].into_iter().collect(),
            ..Rbac::default()
        }),
        stat_prefix: "inbound".into(),
        ..NetworkRbac::default()
    };
    let listener = Listener {
        name: "virtualInbound".into(),
        traffic_direction: TrafficDirection::Inbound as i32,
        filter_chains: vec![FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: Some(weft_xds::envoy::google::protobuf::UInt32Value {
                    value: port.into(),
                }),
                transport_protocol: "tls".into(),
                ..FilterChainMatch::default()
            }),
            filters: vec![
                Filter {
                    name: "envoy.filters.network.rbac".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack(&rbac))),
                },
                Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack(&TcpProxy {
                        stat_prefix: "inbound".into(),
                        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                            cluster_name.clone(),
                        )),
                        ..TcpProxy::default()
                    }))),
                },
            ],
            ..FilterChain::default()
        }],
        ..Listener::default()
    };
    let endpoint = LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(app.into())),
                    ..SocketAddress::default()
                })),
            }),
            ..Endpoint::default()
        })),
        ..LbEndpoint::default()
    };
    let cluster = Cluster {
        name: cluster_name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: cluster_name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..LocalityLbEndpoints::default()
            }],
            ..ClusterLoadAssignment::default()
        }),
        ..Cluster::default()
    };
    vec![
        (
            weft_xds::types::LISTENER,
            weft_xds::server::Resource::new("virtualInbound", pack(&listener)),
        ),
        (
            weft_xds::types::CLUSTER,
            weft_xds::server::Resource::new(cluster_name, pack(&cluster)),
        ),
    ]
}
