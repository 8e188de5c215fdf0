//! Translation of small meshes, checked field by field: the shared fixtures here, the checks
//! by resource in the modules below.

mod cluster;
mod inbound;
mod listener;
mod route;
mod tls;

use std::sync::Arc;

use prost::Message;
use weft_api::load::{Limits, Loader};
use weft_xds::envoy::envoy::config::core::v3::Node;
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
  # Mesh workloads: a WorkloadEntry speaks mesh mTLS when it names its service account.
  - {address: 10.0.0.1, labels: {version: v1}, serviceAccount: default}
  - {address: 10.0.0.2, labels: {version: v2}, ports: {http: 8080}, serviceAccount: default}
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
