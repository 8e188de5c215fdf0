//! Route configurations: VirtualService rules as Envoy routes, in order.

use weft_xds::envoy::envoy::config::route::v3::{
    RouteConfiguration, route::Action, route_action::ClusterSpecifier,
};

use super::*;

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
