//! Upstream TLS (auto-mTLS, DestinationRule modes) and the secrets the control plane serves.

use weft_xds::envoy::envoy::config::cluster::v3::Cluster;
use weft_xds::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::*;

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
        names::WORKLOAD_SECRET
    );
    let text = format!("{:?}", common.validation_context_type);
    assert!(
        text.contains("spiffe://example.org/ns/shop/sa/default")
            && text.contains(names::ROOT_SECRET),
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
            .contains_key(envoy::TRANSPORT_SOCKET_MATCH)
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
        names::ROOT_SECRET.to_string(),
        names::WORKLOAD_SECRET.to_string(),
    ];
    let secrets = generator.generate(&envoy_node(), types::SECRET, Some(&names));
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].name, names::ROOT_SECRET);
}
