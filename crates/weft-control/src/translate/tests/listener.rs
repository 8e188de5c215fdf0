//! A sidecar's outbound listeners, and what a Sidecar resource lets a proxy see.

use weft_xds::envoy::envoy::config::route::v3::RouteConfiguration;

use super::*;

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
