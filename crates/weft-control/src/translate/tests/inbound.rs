//! A sidecar's inbound side: mTLS modes from PeerAuthentication, RBAC from
//! AuthorizationPolicy, the chains and clusters they give.

use weft_api::security::peer_authentication::MtlsMode;
use weft_xds::envoy::envoy::config::listener::v3::Listener;
use weft_xds::envoy::envoy::config::rbac::v3::rbac::Action as RbacAction;
use weft_xds::envoy::google::protobuf::{ListValue, Struct, Value, value::Kind};

use super::*;
use crate::translate::inbound::authz::{Workload, inbound_rbac, mtls_mode};

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
    let none = inbound_rbac(&snapshot(""), &workload, "cluster.local", true, None);
    assert_eq!(none.deny, None);
    assert_eq!(none.allow, None, "no ALLOW policy: everything is allowed");

    let allow_nothing =
        format!("{AP}metadata: {{name: allow-nothing, namespace: shop}}\nspec: {{}}\n");
    let rbac = inbound_rbac(
        &snapshot(&allow_nothing),
        &workload,
        "cluster.local",
        true,
        None,
    );
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
    let rbac = inbound_rbac(&snapshot, &workload, "cluster.local", true, None);
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
    let tcp = inbound_rbac(&snapshot, &workload, "cluster.local", false, None);
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
        ["8080-mtls", "8080-plaintext", "8080-tls-passthrough"],
        "PERMISSIVE: both, and the application's own TLS passes through"
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
