//! Clusters and their endpoints: DestinationRule policy (subset over top level, consistent
//! hashing, connection pools) and the endpoints a subset selects.

use weft_xds::envoy::envoy::config::cluster::v3::{Cluster, cluster::LbPolicy};
use weft_xds::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds::envoy::envoy::config::route::v3::RouteConfiguration;

use super::*;

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
            .get(envoy::HTTP_PROTOCOL_OPTIONS)
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
