//! Translation of small meshes, checked field by field.

use std::sync::Arc;

use prost::Message;
use weft_api::load::{Limits, Loader};
use weft_xds::envoy::envoy::config::cluster::v3::{Cluster, cluster::LbPolicy};
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds::envoy::envoy::config::route::v3::{
    RouteConfiguration, route::Action, route_action::ClusterSpecifier,
};
use weft_xds::server::Generator;
use weft_xds::types;

use super::*;
use crate::store::{ConfigState, merge};

const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, labels: {version: v1}}
  - {address: 10.0.0.2, labels: {version: v2}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    - uri: {prefix: /beta}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 75
    - destination: {host: reviews, subset: v2}
      weight: 25
    timeout: 3s
"#;

/// The snapshot of these files, loaded in this order (which decides the first of two
/// DestinationRules for one host).
fn snapshot_of(files: &[(&str, &str)]) -> MeshSnapshot {
    let mut loader = Loader::new(Limits::default());
    for (name, text) in files {
        loader.load_str(*name, text);
    }
    MeshSnapshot::build(
        1,
        &merge(&ConfigState::default(), loader.finish()),
        &[],
        &[],
    )
}

/// A generator serving `snapshot`.
fn serving(snapshot: MeshSnapshot) -> MeshGenerator {
    let generator = MeshGenerator::default();
    generator.set(Arc::new(snapshot));
    generator
}

fn generator() -> MeshGenerator {
    serving(snapshot_of(&[("mesh.yaml", MESH)]))
}

fn node() -> Node {
    Node {
        id: "sidecar~10.0.0.9~productpage-v1.shop~shop.svc.cluster.local".into(),
        user_agent_name: "gRPC C-core linux Python".into(),
        ..Node::default()
    }
}

fn one<M: Message + Default>(generator: &MeshGenerator, type_url: &str, name: &str) -> M {
    let resources = generator.generate(&node(), type_url, Some(&[name.to_string()]));
    assert_eq!(resources.len(), 1, "{name}");
    M::decode(resources[0].body.value.as_slice()).unwrap()
}

#[test]
fn the_client_namespace_comes_from_the_istio_node_id() {
    assert_eq!(Client::from_node(&node()).namespace, "shop");
    assert!(Client::from_node(&node()).proxyless_grpc);
    assert_eq!(
        Client::from_node(&Node {
            id: "anything".into(),
            ..Node::default()
        })
        .namespace,
        "default"
    );
    assert_eq!(
        parse_cluster_name("outbound|9080|v1|reviews.shop.svc.cluster.local"),
        Some((9080, "v1", "reviews.shop.svc.cluster.local"))
    );
}

#[test]
fn rules_become_routes_in_order_with_one_route_per_match() {
    let generator = generator();
    // A short name resolves in the client's namespace.
    let config: RouteConfiguration = one(&generator, types::ROUTE, "reviews:9080");
    let routes = &config.virtual_hosts[0].routes;
    assert_eq!(
        routes.len(),
        3,
        "two matches of the first rule, then the catch-all"
    );
    let cluster_of = |i: usize| match &routes[i].action {
        Some(Action::Route(action)) => action.cluster_specifier.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        cluster_of(0),
        Some(ClusterSpecifier::Cluster(
            "outbound|9080|v2|reviews.shop.svc.cluster.local".into()
        ))
    );
    assert_eq!(
        routes[0].r#match.as_ref().unwrap().headers[0].name,
        "end-user"
    );
    let Some(ClusterSpecifier::WeightedClusters(weighted)) = cluster_of(2) else {
        panic!("weighted")
    };
    let weights: Vec<(String, u32)> = weighted
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        weights,
        [
            (
                "outbound|9080|v1|reviews.shop.svc.cluster.local".to_string(),
                75
            ),
            (
                "outbound|9080|v2|reviews.shop.svc.cluster.local".to_string(),
                25
            )
        ]
    );
    let Some(Action::Route(action)) = &routes[2].action else {
        panic!()
    };
    assert_eq!(action.timeout.as_ref().unwrap().seconds, 3);
    assert_eq!(
        action
            .retry_policy
            .as_ref()
            .unwrap()
            .num_retries
            .as_ref()
            .unwrap()
            .value,
        2,
        "Istio's default retries"
    );
}

#[test]
fn subset_policy_overrides_the_top_level_and_endpoints_follow_labels() {
    let generator = generator();
    let v1: Cluster = one(
        &generator,
        types::CLUSTER,
        "outbound|9080|v1|reviews.shop.svc.cluster.local",
    );
    assert_eq!(v1.lb_policy, LbPolicy::Random as i32);
    let v2: Cluster = one(
        &generator,
        types::CLUSTER,
        "outbound|9080|v2|reviews.shop.svc.cluster.local",
    );
    assert_eq!(v2.lb_policy, LbPolicy::RoundRobin as i32);
    let missing = generator.generate(
        &node(),
        types::CLUSTER,
        Some(&["outbound|9080|v9|reviews.shop.svc.cluster.local".into()]),
    );
    assert!(missing.is_empty(), "an undefined subset has no cluster");

    let endpoints: ClusterLoadAssignment = one(
        &generator,
        types::ENDPOINT,
        "outbound|9080|v2|reviews.shop.svc.cluster.local",
    );
    let addresses: Vec<String> = endpoints.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(addresses.len(), 1);
    assert!(
        addresses[0].contains("10.0.0.2") && addresses[0].contains("8080"),
        "{addresses:?}"
    );
    let all: ClusterLoadAssignment = one(
        &generator,
        types::ENDPOINT,
        "outbound|9080||reviews.shop.svc.cluster.local",
    );
    assert_eq!(all.endpoints[0].lb_endpoints.len(), 2);
}

fn envoy_node() -> Node {
    Node {
        id: "sidecar~10.0.0.9~productpage-v1.shop~shop.svc.cluster.local".into(),
        user_agent_name: "envoy".into(),
        ..Node::default()
    }
}

fn generator_with(extra: &str, root: Option<&str>) -> MeshGenerator {
    let generator = MeshGenerator::new(
        crate::registration::Registrations::new(std::time::Duration::from_secs(1)),
        MeshIdentity {
            trust_domain: "example.org".into(),
            root_pem: root.map(String::from),
        },
    );
    generator.set(Arc::new(snapshot_of(&[
        ("mesh.yaml", MESH),
        ("extra.yaml", extra),
    ])));
    generator
}

fn upstream_tls(
    cluster: &Cluster,
) -> Option<weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext> {
    use weft_xds::envoy::envoy::config::core::v3::transport_socket::ConfigType;
    let socket = cluster.transport_socket.as_ref().or_else(|| {
        cluster
            .transport_socket_matches
            .first()
            .and_then(|m| m.transport_socket.as_ref())
    })?;
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        return None;
    };
    Message::decode(any.value.as_slice()).ok()
}

#[test]
fn mesh_services_get_auto_mtls_with_the_endpoints_identities() {
    let generator = generator_with("", None);
    let name = "outbound|9080|v1|reviews.shop.svc.cluster.local";
    let resources = generator.generate(&envoy_node(), types::CLUSTER, Some(&[name.to_string()]));
    let cluster = Cluster::decode(resources[0].body.value.as_slice()).unwrap();
    assert_eq!(
        cluster.transport_socket_matches.len(),
        2,
        "mTLS to mesh endpoints, plaintext to others"
    );
    let tls = upstream_tls(&cluster).unwrap();
    assert_eq!(
        tls.sni,
        "outbound_.9080_.v1_.reviews.shop.svc.cluster.local"
    );
    let common = tls.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["istio"]);
    assert_eq!(
        common.tls_certificate_sds_secret_configs[0].name,
        tls::WORKLOAD_SECRET
    );
    let text = format!("{:?}", common.validation_context_type);
    assert!(
        text.contains("spiffe://example.org/ns/shop/sa/default") && text.contains(tls::ROOT_SECRET),
        "{text}"
    );

    // The endpoints say they are mesh workloads, and who they are.
    let resources = generator.generate(&envoy_node(), types::ENDPOINT, Some(&[name.to_string()]));
    let endpoints = ClusterLoadAssignment::decode(resources[0].body.value.as_slice()).unwrap();
    let metadata = endpoints.endpoints[0].lb_endpoints[0]
        .metadata
        .as_ref()
        .unwrap();
    assert!(
        metadata
            .filter_metadata
            .contains_key(tls::TRANSPORT_SOCKET_MATCH)
    );
    assert!(
        format!("{:?}", metadata.filter_metadata["istio"])
            .contains("spiffe://example.org/ns/shop/sa/default")
    );

    // Proxyless gRPC clients bring their own credentials.
    let resources = generator.generate(&node(), types::CLUSTER, Some(&[name.to_string()]));
    let cluster = Cluster::decode(resources[0].body.value.as_slice()).unwrap();
    assert!(cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty());
}

#[test]
fn destination_rule_tls_modes_are_honoured() {
    let rule = |mode: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews-tls, namespace: aaa}}\nspec:\n  host: reviews.shop.svc.cluster.local\n  trafficPolicy:\n    tls: {mode}\n"
        )
    };
    let cluster_of = |generator: &MeshGenerator| {
        let name = "outbound|9080||reviews.shop.svc.cluster.local";
        let resources =
            generator.generate(&envoy_node(), types::CLUSTER, Some(&[name.to_string()]));
        Cluster::decode(resources[0].body.value.as_slice()).unwrap()
    };
    // With two DestinationRules for one host, the first in load order sets the top-level
    // policy, so the rule under test goes in a file that sorts before mesh.yaml.
    let with = |mode: &str| {
        cluster_of(&serving(snapshot_of(&[
            ("a-tls.yaml", &rule(mode)),
            ("mesh.yaml", MESH),
        ])))
    };
    let disabled = with("{mode: DISABLE}");
    assert!(disabled.transport_socket.is_none() && disabled.transport_socket_matches.is_empty());
    let mutual = with("{mode: ISTIO_MUTUAL}");
    assert!(mutual.transport_socket.is_some() && mutual.transport_socket_matches.is_empty());
    let simple = upstream_tls(&with(
        "{mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.example.com}",
    ))
    .unwrap();
    assert_eq!(simple.sni, "api.example.com");
    assert!(format!("{:?}", simple.common_tls_context).contains("/etc/ca.pem"));
}

#[test]
fn a_wildcard_destination_rule_applies_where_no_exact_one_does() {
    // `details` has no DestinationRule of its own (`reviews` has one in MESH).
    let details = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: details, namespace: shop}\nspec:\n  hosts: [details]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.2.1}]\n---\n";
    let rule = |name: &str, host: &str, mode: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: istio-system}}\nspec:\n  host: \"{host}\"\n  trafficPolicy:\n    tls: {{mode: {mode}}}\n---\n"
        )
    };
    let cluster_of = |rules: &str| {
        let generator = serving(snapshot_of(&[
            ("a-rules.yaml", &format!("{details}{rules}")),
            ("mesh.yaml", MESH),
        ]));
        let name = "outbound|9080||details.shop.svc.cluster.local";
        let resources =
            generator.generate(&envoy_node(), types::CLUSTER, Some(&[name.to_string()]));
        Cluster::decode(resources[0].body.value.as_slice()).unwrap()
    };
    // No rule: auto mTLS (a socket per endpoint kind).
    assert!(!cluster_of("").transport_socket_matches.is_empty());
    // The more specific wildcard wins over the broader one.
    let cluster = cluster_of(
        &(rule("broad", "*.cluster.local", "ISTIO_MUTUAL")
            + &rule("shop", "*.shop.svc.cluster.local", "DISABLE")),
    );
    assert!(cluster.transport_socket.is_none() && cluster.transport_socket_matches.is_empty());
    // Only the broad one: it applies.
    let cluster = cluster_of(&rule("broad", "*.cluster.local", "ISTIO_MUTUAL"));
    assert!(cluster.transport_socket.is_some());
}

#[test]
fn the_root_is_served_as_rootca_and_the_workload_key_never_is() {
    let generator = generator_with(
        "",
        Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
    );
    let names = [
        tls::ROOT_SECRET.to_string(),
        tls::WORKLOAD_SECRET.to_string(),
    ];
    let secrets = generator.generate(&envoy_node(), types::SECRET, Some(&names));
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].name, tls::ROOT_SECRET);
}

mod inbound_security {
    use super::*;
    use weft_xds::envoy::envoy::config::listener::v3::Listener;
    use weft_xds::envoy::envoy::config::rbac::v3::rbac::Action as RbacAction;
    use weft_xds::envoy::google::protobuf::{ListValue, Struct, Value, value::Kind};

    use crate::translate::authz::{Workload, inbound_rbac, mtls_mode};
    use weft_api::security::peer_authentication::MtlsMode;

    fn snapshot(yaml: &str) -> MeshSnapshot {
        snapshot_of(&[("mesh.yaml", MESH), ("security.yaml", yaml)])
    }

    fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PA: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n";

    #[test]
    fn mtls_mode_follows_workload_namespace_mesh_precedence() {
        let reviews = labels(&[("app", "reviews")]);
        let workload = Workload {
            namespace: "shop",
            labels: &reviews,
        };
        assert_eq!(
            mtls_mode(&snapshot(""), &workload, 9080),
            MtlsMode::Permissive,
            "nothing at all is PERMISSIVE"
        );

        let mesh = format!(
            "{PA}metadata: {{name: default, namespace: istio-system}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        );
        assert_eq!(
            mtls_mode(&snapshot(&mesh), &workload, 9080),
            MtlsMode::Strict
        );

        let namespace = format!(
            "{mesh}---\n{PA}metadata: {{name: default, namespace: shop}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n"
        );
        assert_eq!(
            mtls_mode(&snapshot(&namespace), &workload, 9080),
            MtlsMode::Permissive,
            "namespace beats mesh"
        );

        let unset = format!(
            "{mesh}---\n{PA}metadata: {{name: default, namespace: shop}}\nspec: {{mtls: {{mode: UNSET}}}}\n"
        );
        assert_eq!(
            mtls_mode(&snapshot(&unset), &workload, 9080),
            MtlsMode::Strict,
            "UNSET inherits"
        );

        let port = format!(
            "{mesh}---\n{PA}metadata: {{name: reviews, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls:\n    8080: {{mode: DISABLE}}\n"
        );
        let snapshot = snapshot(&port);
        assert_eq!(
            mtls_mode(&snapshot, &workload, 8080),
            MtlsMode::Disable,
            "port level wins"
        );
        assert_eq!(mtls_mode(&snapshot, &workload, 9080), MtlsMode::Strict);
        let other = labels(&[("app", "ratings")]);
        assert_eq!(
            mtls_mode(
                &snapshot,
                &Workload {
                    namespace: "shop",
                    labels: &other
                },
                8080
            ),
            MtlsMode::Strict
        );
    }

    const AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n";

    #[test]
    fn authorization_policies_become_deny_then_allow_rbac() {
        let reviews = labels(&[("app", "reviews")]);
        let workload = Workload {
            namespace: "shop",
            labels: &reviews,
        };
        let none = inbound_rbac(&snapshot(""), &workload, "cluster.local", true);
        assert_eq!(none.deny, None);
        assert_eq!(none.allow, None, "no ALLOW policy: everything is allowed");

        let allow_nothing =
            format!("{AP}metadata: {{name: allow-nothing, namespace: shop}}\nspec: {{}}\n");
        let rbac = inbound_rbac(&snapshot(&allow_nothing), &workload, "cluster.local", true);
        let allow = rbac
            .allow
            .expect("an ALLOW policy without rules still installs the filter");
        assert_eq!(allow.action, RbacAction::Allow as i32);
        assert!(
            allow.policies.is_empty(),
            "…with no policy, so it denies everything"
        );

        let policies = format!(
            "{AP}metadata: {{name: frontend-only, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: reviews}}}}\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/shop/sa/frontend]}}\n    to:\n    - operation: {{methods: [GET], paths: [/api/*]}}\n---\n{AP}metadata: {{name: no-admin, namespace: shop}}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [/admin*]}}\n---\n{AP}metadata: {{name: other, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: ratings}}}}\n  rules: [{{}}]\n"
        );
        let snapshot = snapshot(&policies);
        let rbac = inbound_rbac(&snapshot, &workload, "cluster.local", true);
        let allow = rbac.allow.unwrap();
        assert_eq!(
            allow.policies.len(),
            1,
            "the ratings policy does not select reviews"
        );
        let text = format!("{:?}", allow.policies);
        assert!(
            text.contains("spiffe://cluster.local/ns/shop/sa/frontend"),
            "{text}"
        );
        assert!(text.contains("/api/") && text.contains(":method"), "{text}");
        let deny = rbac.deny.unwrap();
        assert_eq!(deny.action, RbacAction::Deny as i32);
        assert!(format!("{:?}", deny.policies).contains("/admin"));

        // On a TCP port the HTTP fields cannot apply: the ALLOW rule is dropped (allow less),
        // the DENY rule keeps everything else and denies more.
        let tcp = inbound_rbac(&snapshot, &workload, "cluster.local", false);
        assert!(tcp.allow.unwrap().policies.is_empty());
        let deny = tcp.deny.unwrap();
        assert_eq!(deny.policies.len(), 1);
        assert!(!format!("{:?}", deny.policies).contains("/admin"));
    }

    fn sidecar_node() -> Node {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let fields = [
            ("NAME", text("reviews-v1")),
            ("NAMESPACE", text("shop")),
            (
                "LABELS",
                Value {
                    kind: Some(Kind::StructValue(Struct {
                        fields: [("app".to_string(), text("reviews"))].into_iter().collect(),
                    })),
                },
            ),
            (
                "INSTANCE_IPS",
                Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![text("10.0.0.1")],
                    })),
                },
            ),
            ("SERVICES", text("reviews:9080:8080")),
        ];
        Node {
            id: "sidecar~10.0.0.1~reviews-v1.shop~shop.svc.cluster.local".into(),
            user_agent_name: "envoy".into(),
            metadata: Some(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            ..Node::default()
        }
    }

    fn inbound_chains(yaml: &str) -> Vec<String> {
        let generator = MeshGenerator::default();
        generator.set(Arc::new(snapshot(yaml)));
        let listeners = generator.generate(&sidecar_node(), types::LISTENER, None);
        let inbound = listeners
            .iter()
            .find(|l| l.name == "virtualInbound")
            .expect("a sidecar gets an inbound listener");
        let listener = Listener::decode(inbound.body.value.as_slice()).unwrap();
        listener
            .filter_chains
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    #[test]
    fn a_sidecar_gets_inbound_chains_for_its_mtls_mode() {
        assert_eq!(
            inbound_chains(""),
            ["8080-mtls", "8080-plaintext"],
            "PERMISSIVE: both"
        );
        let strict = format!(
            "{PA}metadata: {{name: default, namespace: shop}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        );
        assert_eq!(inbound_chains(&strict), ["8080-mtls"]);
        let disable = format!(
            "{PA}metadata: {{name: default, namespace: shop}}\nspec: {{mtls: {{mode: DISABLE}}}}\n"
        );
        assert_eq!(inbound_chains(&disable), ["8080-plaintext"]);

        let generator = MeshGenerator::default();
        generator.set(Arc::new(snapshot("")));
        let clusters = generator.generate(&sidecar_node(), types::CLUSTER, None);
        assert!(
            clusters.iter().any(|c| c.name == "inbound|8080||"),
            "the inbound cluster to the app"
        );
        // A proxyless client or a sidecar that serves nothing gets no inbound side.
        let listeners = generator.generate(&envoy_node(), types::LISTENER, None);
        assert!(listeners.iter().all(|l| l.name != "virtualInbound"));
    }

    /// Equal content must give equal versions, or every reload re-pushes everything: protobuf
    /// maps (metadata, RBAC policies) must not encode in a random order.
    #[test]
    fn an_unchanged_mesh_translates_to_unchanged_versions() {
        let policies = format!(
            "{PA}metadata: {{name: default, namespace: shop}}\nspec: {{mtls: {{mode: PERMISSIVE}}}}\n---\n{}",
            ["a", "b", "c", "d", "e"]
                .iter()
                .map(|name| format!("{AP}metadata: {{name: {name}, namespace: shop}}\nspec:\n  rules:\n  - to: [{{operation: {{paths: [/{name}]}}}}]\n---\n"))
                .collect::<String>()
        );
        let generator = MeshGenerator::default();
        let digests = |version: u64| {
            let mut snapshot = snapshot(&policies);
            snapshot.version = version;
            generator.set(Arc::new(snapshot));
            let endpoints: Vec<String> = [
                "outbound|9080||reviews.shop.svc.cluster.local",
                "outbound|9080|v1|reviews.shop.svc.cluster.local",
            ]
            .map(String::from)
            .to_vec();
            [
                generator
                    .generate(&sidecar_node(), types::LISTENER, None)
                    .digest(),
                generator
                    .generate(&sidecar_node(), types::CLUSTER, None)
                    .digest(),
                generator
                    .generate(&sidecar_node(), types::ENDPOINT, Some(&endpoints))
                    .digest(),
            ]
        };
        let first = digests(1);
        for version in 2..10 {
            assert_eq!(digests(version), first, "snapshot {version}");
        }
    }
}

#[test]
fn a_sidecar_gets_port_listeners_and_host_based_routes() {
    use weft_xds::envoy::envoy::config::listener::v3::Listener;
    let generator = generator();
    let listeners = generator.generate(&envoy_node(), types::LISTENER, None);
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["virtualOutbound", "0.0.0.0_9080"]);
    let outbound = Listener::decode(listeners[0].body.value.as_slice()).unwrap();
    assert!(outbound.use_original_dst.unwrap().value);

    let routes: RouteConfiguration = one(&generator, types::ROUTE, "9080");
    let host = &routes.virtual_hosts[0];
    for domain in [
        "reviews.shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local:9080",
        "reviews",
        "reviews:9080",
        "reviews.shop",
    ] {
        assert!(
            host.domains.iter().any(|d| d == domain),
            "{domain} in {:?}",
            host.domains
        );
    }
    assert_eq!(host.routes.len(), 3, "the VirtualService's rules");
    let clusters = generator.generate(&envoy_node(), types::CLUSTER, None);
    assert!(clusters.iter().any(|c| c.name == "PassthroughCluster"));
}

#[test]
fn a_sidecar_resource_limits_what_a_proxy_is_sent() {
    let other_service = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ratings, namespace: other}\nspec:\n  hosts: [ratings]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.1.1}]\n";
    let cluster_names = |extra: &str| {
        let generator = generator_with(&format!("{other_service}---\n{extra}"), None);
        let mut names: Vec<String> = generator
            .generate(&envoy_node(), types::CLUSTER, None)
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| n.contains("|9080|"))
            .collect();
        names.sort();
        names
    };
    let all = cluster_names("");
    assert!(
        all.iter()
            .any(|n| n.ends_with("ratings.other.svc.cluster.local")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|n| n.ends_with("reviews.shop.svc.cluster.local")),
        "{all:?}"
    );

    // The client's namespace (shop) keeps only its own services.
    let scoped = cluster_names(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: shop}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n",
    );
    assert!(
        !scoped.is_empty()
            && scoped
                .iter()
                .all(|n| n.ends_with("reviews.shop.svc.cluster.local")),
        "{scoped:?}"
    );

    // A Sidecar in another namespace does not apply.
    let elsewhere = cluster_names(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: other}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n",
    );
    assert_eq!(elsewhere, all);
}

#[test]
fn redirects_direct_responses_rewrites_headers_and_mirrors() {
    use weft_xds::envoy::envoy::config::route::v3::route::Action as RouteKind;
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a-reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {exact: /old}}]\n    redirect: {uri: /new, redirectCode: 302}\n  - match: [{uri: {exact: /health}}]\n    directResponse: {status: 200, body: {string: ok}}\n  - match: [{uri: {prefix: /v1/}}]\n    rewrite: {uri: /api/, authority: internal}\n    headers:\n      request: {set: {x-env: prod}, add: {x-trace: on}, remove: [cookie]}\n      response: {remove: [server]}\n    route:\n    - destination: {host: reviews, subset: v1}\n    mirror: {host: reviews, subset: v2}\n    mirrorPercentage: {value: 25}\n";
    let generator = serving(snapshot_of(&[("a-vs.yaml", vs), ("mesh.yaml", MESH)]));
    let config: RouteConfiguration = one(&generator, types::ROUTE, "reviews:9080");
    let routes = &config.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 3);

    let Some(RouteKind::Redirect(redirect)) = &routes[0].action else {
        panic!("{:?}", routes[0].action)
    };
    assert_eq!(redirect.response_code, 1, "302 Found");
    assert!(format!("{:?}", redirect.path_rewrite_specifier).contains("/new"));

    let Some(RouteKind::DirectResponse(direct)) = &routes[1].action else {
        panic!()
    };
    assert_eq!(direct.status, 200);
    assert!(format!("{:?}", direct.body).contains("\"ok\""));

    let Some(RouteKind::Route(action)) = &routes[2].action else {
        panic!()
    };
    assert_eq!(
        action.prefix_rewrite, "/api/",
        "a prefix match rewrites the prefix"
    );
    assert!(format!("{:?}", action.host_rewrite_specifier).contains("internal"));
    assert_eq!(
        action.request_mirror_policies[0].cluster,
        "outbound|9080|v2|reviews.shop.svc.cluster.local"
    );
    let fraction = action.request_mirror_policies[0]
        .runtime_fraction
        .as_ref()
        .unwrap()
        .default_value
        .as_ref()
        .unwrap();
    assert_eq!(fraction.numerator, 250_000, "25% in millionths");
    let added: Vec<String> = routes[2]
        .request_headers_to_add
        .iter()
        .map(|h| h.header.as_ref().unwrap().key.clone())
        .collect();
    assert_eq!(added, ["x-env", "x-trace"]);
    assert_eq!(routes[2].request_headers_to_remove, ["cookie"]);
    assert_eq!(routes[2].response_headers_to_remove, ["server"]);
}

#[test]
fn consistent_hashing_sets_the_cluster_balancer_and_the_route_hash() {
    use weft_xds::envoy::envoy::config::route::v3::route::Action as RouteKind;
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a-sticky, namespace: shop}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n        httpHeaderName: X-User\n        ringHash: {minimumRingSize: 2048}\n";
    let generator = serving(snapshot_of(&[("a-dr.yaml", rule), ("mesh.yaml", MESH)]));

    let cluster: Cluster = one(
        &generator,
        types::CLUSTER,
        "outbound|9080||reviews.shop.svc.cluster.local",
    );
    assert_eq!(cluster.lb_policy, LbPolicy::RingHash as i32);
    assert!(format!("{:?}", cluster.lb_config).contains("2048"));

    let config: RouteConfiguration = one(&generator, types::ROUTE, "reviews:9080");
    // The catch-all rule's first destination is subset v1, which inherits the top-level
    // balancer; subset v2 sets its own (ROUND_ROBIN), so routes to it do not hash.
    let routes = &config.virtual_hosts[0].routes;
    let Some(RouteKind::Route(to_v1)) = &routes[2].action else {
        panic!()
    };
    assert!(
        format!("{:?}", to_v1.hash_policy).contains("x-user"),
        "{:?}",
        to_v1.hash_policy
    );
    let Some(RouteKind::Route(to_v2)) = &routes[0].action else {
        panic!()
    };
    assert!(to_v2.hash_policy.is_empty());
}

#[test]
fn connection_pools_become_protocol_options_and_keepalives() {
    use weft_xds::envoy::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    use weft_xds::envoy::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    };
    let extra = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc, namespace: shop}
spec:
  hosts: [grpc]
  location: MESH_INTERNAL
  ports: [{number: 7070, name: grpc, protocol: GRPC}, {number: 3306, name: db, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.5}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: grpc, namespace: shop}
spec:
  host: grpc
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnectionDuration: 10m
        tcpKeepalive: {probes: 3, time: 60s, interval: 10s}
      http:
        maxRequestsPerConnection: 1
        idleTimeout: 30s
        maxConcurrentStreams: 50
        http2KeepAlive: {interval: 20s, timeout: 5s}
"#;
    let generator = generator_with(extra, None);
    let cluster = |name: &str| {
        let resources =
            generator.generate(&envoy_node(), types::CLUSTER, Some(&[name.to_string()]));
        Cluster::decode(resources[0].body.value.as_slice()).unwrap()
    };
    let options = |cluster: &Cluster| {
        cluster
            .typed_extension_protocol_options
            .get(cluster::HTTP_PROTOCOL_OPTIONS)
            .map(|any| HttpProtocolOptions::decode(any.value.as_slice()).unwrap())
    };

    let grpc = cluster("outbound|7070||grpc.shop.svc.cluster.local");
    let http = options(&grpc).expect("an HTTP port has protocol options");
    let common = http.common_http_protocol_options.unwrap();
    assert_eq!(common.idle_timeout.unwrap().seconds, 30);
    assert_eq!(common.max_connection_duration.unwrap().seconds, 600);
    assert_eq!(common.max_requests_per_connection.unwrap().value, 1);
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
        http.upstream_protocol_options
    else {
        panic!("a gRPC port is spoken to in HTTP/2 explicitly");
    };
    let Some(ProtocolConfig::Http2ProtocolOptions(h2)) = explicit.protocol_config else {
        panic!("HTTP/2 for gRPC");
    };
    assert_eq!(h2.max_concurrent_streams.unwrap().value, 50);
    assert_eq!(
        h2.connection_keepalive.unwrap().interval.unwrap().seconds,
        20
    );
    let keepalive = grpc
        .upstream_connection_options
        .unwrap()
        .tcp_keepalive
        .unwrap();
    assert_eq!(keepalive.keepalive_probes.unwrap().value, 3);
    assert_eq!(keepalive.keepalive_time.unwrap().value, 60);

    // A TCP port gets no HTTP options; a plain HTTP port with no pool speaks HTTP/1.1.
    let tcp = cluster("outbound|3306||grpc.shop.svc.cluster.local");
    assert!(options(&tcp).is_none());
    let reviews = cluster("outbound|9080||reviews.shop.svc.cluster.local");
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
        options(&reviews).unwrap().upstream_protocol_options
    else {
        panic!("explicit HTTP/1.1");
    };
    assert!(matches!(
        explicit.protocol_config,
        Some(ProtocolConfig::HttpProtocolOptions(_))
    ));
}

#[test]
fn per_destination_headers_go_on_the_weighted_cluster_or_the_single_route() {
    use weft_xds::envoy::envoy::config::route::v3::route::Action as RouteKind;
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a-reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /one}}]\n    headers: {request: {set: {x-rule: r}}}\n    route:\n    - destination: {host: reviews, subset: v1}\n      headers: {request: {set: {x-dest: v1}}, response: {remove: [server]}}\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n      headers: {request: {add: {x-dest: v1}}}\n    - destination: {host: reviews, subset: v2}\n      weight: 50\n      headers: {response: {set: {x-served-by: v2}}}\n";
    let generator = serving(snapshot_of(&[("a-vs.yaml", vs), ("mesh.yaml", MESH)]));
    let config: RouteConfiguration = one(&generator, types::ROUTE, "reviews:9080");
    let routes = &config.virtual_hosts[0].routes;
    let keys = |options: &[weft_xds::envoy::envoy::config::core::v3::HeaderValueOption]| {
        options
            .iter()
            .map(|o| o.header.as_ref().unwrap().key.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&routes[0].request_headers_to_add),
        ["x-rule", "x-dest"]
    );
    assert_eq!(routes[0].response_headers_to_remove, ["server"]);
    let Some(RouteKind::Route(action)) = &routes[1].action else {
        panic!("{:?}", routes[1].action)
    };
    let Some(ClusterSpecifier::WeightedClusters(weighted)) = &action.cluster_specifier else {
        panic!("{action:?}")
    };
    assert_eq!(
        keys(&weighted.clusters[0].request_headers_to_add),
        ["x-dest"]
    );
    assert!(weighted.clusters[0].response_headers_to_add.is_empty());
    assert_eq!(
        keys(&weighted.clusters[1].response_headers_to_add),
        ["x-served-by"]
    );
    assert!(routes[1].request_headers_to_add.is_empty());
}

#[test]
fn a_match_naming_only_gateways_is_left_out_of_the_sidecars_routes() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a-reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  gateways: [mesh, istio-system/ingress]\n  http:\n  - name: edge\n    match: [{uri: {prefix: /edge}, gateways: [istio-system/ingress]}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: inside\n    match: [{uri: {prefix: /edge}, gateways: [mesh]}, {uri: {prefix: /other}, gateways: [ingress]}]\n    route: [{destination: {host: reviews, subset: v1}}]\n";
    let generator = serving(snapshot_of(&[("a-vs.yaml", vs), ("mesh.yaml", MESH)]));
    let config: RouteConfiguration = one(&generator, types::ROUTE, "reviews:9080");
    let names: Vec<&str> = config.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    // `ingress` alone means shop/ingress, another gateway than istio-system's.
    assert_eq!(names, ["inside"]);
}
