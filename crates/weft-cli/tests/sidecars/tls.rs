//! TLS and identity: what crosses between sidecars is mesh mTLS and the server learns the
//! caller's SPIFFE ID; which callers an inbound listener accepts (PERMISSIVE, STRICT, foreign,
//! expired and other trust domains' certificates); AuthorizationPolicy, enforced by that
//! identity; and TLS the sidecar originates itself to servers outside the mesh
//! (DestinationRule `tls`).

use std::time::Duration;

use crate::apps::https_server;
use crate::clients::{client_cert, direct, raw, via_proxy};
use crate::common::{self, eventually};
use crate::mesh::{Mesh, config_dir};

/// Mesh-wide STRICT mTLS in the `test` namespace.
const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: test}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn a_call_crosses_sidecars_over_mtls_and_the_server_learns_the_callers_identity() {
    let mesh = Mesh::start("");
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/hello",
    );
    assert_eq!(status, 200, "{body}");
    let xfcc = body
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-forwarded-client-cert:")
        })
        .unwrap_or_else(|| panic!("no XFCC in what the server got: {body}"));
    assert!(
        xfcc.contains("URI=spiffe://cluster.local/ns/test/sa/client"),
        "{xfcc}"
    );
    assert!(
        xfcc.contains("By=spiffe://cluster.local/ns/test/sa/echo"),
        "{xfcc}"
    );
    assert!(body.contains("GET /hello HTTP/1.1"), "{body}");

    // A per-upstream local port takes plain requests for that service.
    let (local, _) = &mesh.client.upstreams[0];
    let answer = raw(
        local,
        b"GET /local HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("GET /local HTTP/1.1"), "{answer}");
    assert!(answer.contains("host: echo:8080"), "{answer}");

    // Both sidecars counted the call, under Istio's metric names and labels; the server's
    // side knows the caller from its certificate.
    let client_metrics = common::get(&mesh.client.metrics, "/stats/prometheus");
    assert!(
        client_metrics.contains(
            "istio_requests_total{reporter=\"source\",source_workload=\"client\",source_workload_namespace=\"test\",source_principal=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace=\"unknown\",destination_service=\"echo.test.svc.cluster.local\",destination_service_name=\"echo\",destination_service_namespace=\"test\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",connection_security_policy=\"unknown\"} 1\n"
        ),
        "{client_metrics}"
    );
    let server_metrics = common::get(&mesh.servers[0].metrics, "/stats/prometheus");
    assert!(
        server_metrics.contains(
            "istio_requests_total{reporter=\"destination\",source_workload=\"unknown\",source_workload_namespace=\"test\",source_principal=\"spiffe://cluster.local/ns/test/sa/client\",destination_workload=\"echo-v1\",destination_workload_namespace=\"test\",destination_service=\"echo.test.svc.cluster.local\",destination_service_name=\"echo\",destination_service_namespace=\"test\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"} 1\n"
        ),
        "{server_metrics}"
    );
    assert!(server_metrics.contains("istio_request_duration_milliseconds_bucket{"));

    // What crossed between the sidecars was TLS, not the request.
    let wire = mesh.wire.lock().unwrap().clone();
    assert!(wire.len() > 100, "{} bytes crossed", wire.len());
    assert_eq!(&wire[..2], &[0x16, 0x03], "a TLS handshake record first");
    let text = String::from_utf8_lossy(&wire);
    // (The TLS ClientHello names the service in its SNI, in clear, as TLS does.)
    assert!(
        !text.contains("/hello") && !text.contains("HTTP/1.1") && !text.contains("spiffe://"),
        "plaintext on the wire"
    );

    // The admin pages show the certificate and the route.
    let certs = common::get_json(&mesh.client.admin, "/certs");
    assert_eq!(
        certs["spiffeId"],
        "spiffe://cluster.local/ns/test/sa/client"
    );
    let dump = common::get(&mesh.client.admin, "/config_dump");
    assert!(
        dump.contains("outbound|8080||echo.test.svc.cluster.local"),
        "{dump}"
    );
    // What the control plane sent it, mTLS settings included, as Envoy's config dump.
    let sent = common::get_json(
        &mesh.control.as_ref().unwrap().debug,
        "/debug/config_dump?proxy=client.test",
    );
    let sent = sent.to_string();
    assert!(
        sent.contains("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
            && sent.contains("spiffe://cluster.local/ns/test/sa/echo"),
        "{sent}"
    );
    drop(mesh.dir);
}

#[test]
fn strict_refuses_plaintext_and_tls_without_a_mesh_certificate() {
    let mesh = Mesh::start(STRICT);
    assert_eq!(
        direct(&mesh.servers[0].inbound, None),
        None,
        "plaintext is refused"
    );
    assert_eq!(
        direct(&mesh.servers[0].inbound, Some(None)),
        None,
        "TLS without a client certificate is refused"
    );
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert_eq!(status, 200, "a mesh client still gets through: {body}");
}

#[test]
fn permissive_accepts_plaintext_and_mesh_clients_on_one_port() {
    let mesh = Mesh::start("");
    let plaintext = direct(&mesh.servers[0].inbound, None).expect("plaintext is accepted");
    assert!(plaintext.starts_with("HTTP/1.1 200"), "{plaintext}");
    assert!(
        !plaintext
            .to_ascii_lowercase()
            .contains("x-forwarded-client-cert"),
        "a plaintext caller has no identity: {plaintext}"
    );
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("URI=spiffe://cluster.local/ns/test/sa/client"),
        "{body}"
    );
}

#[test]
fn certificates_of_another_ca_expired_or_of_another_trust_domain_are_refused() {
    let mesh = Mesh::start("");
    let good = client_cert(
        &mesh,
        "spiffe://cluster.local/ns/test/sa/tester",
        false,
        false,
    );
    let accepted = direct(&mesh.servers[0].inbound, Some(Some(good)))
        .expect("a valid mesh certificate is accepted");
    assert!(
        accepted.contains("URI=spiffe://cluster.local/ns/test/sa/tester"),
        "{accepted}"
    );
    let cases = [
        (
            "another CA",
            client_cert(
                &mesh,
                "spiffe://cluster.local/ns/test/sa/tester",
                true,
                false,
            ),
        ),
        (
            "expired",
            client_cert(
                &mesh,
                "spiffe://cluster.local/ns/test/sa/tester",
                false,
                true,
            ),
        ),
        (
            "another trust domain",
            client_cert(
                &mesh,
                "spiffe://evil.example/ns/test/sa/tester",
                false,
                false,
            ),
        ),
    ];
    for (what, cert) in cases {
        assert_eq!(
            direct(&mesh.servers[0].inbound, Some(Some(cert))),
            None,
            "{what} must be refused"
        );
    }
}

/// Who may call `echo`: the client, on `/allowed*` and `/admin*`, except `/admin*`.
const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/test/sa/client]}}]
    to: [{operation: {paths: [/allowed*, /admin*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-deny, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
";

/// AuthorizationPolicy is enforced at the server's sidecar: DENY first, then ALLOW, by the
/// caller's SPIFFE ID and the request's path; a plaintext caller has no identity.
#[test]
fn authorization_policies_are_enforced_at_the_inbound_side() {
    let mesh = Mesh::start(POLICIES);
    let get = |path: &str| {
        via_proxy(
            &mesh.client.outbound,
            &format!("http://echo.test.svc.cluster.local:8080{path}"),
        )
        .0
    };
    assert_eq!(get("/allowed"), 200, "the client may call /allowed");
    assert_eq!(get("/other"), 403, "no ALLOW rule covers /other");
    assert_eq!(get("/admin"), 403, "DENY wins over ALLOW");
    let plaintext = raw(
        &mesh.servers[0].inbound,
        b"GET /allowed HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
    );
    assert!(
        plaintext.starts_with("HTTP/1.1 403"),
        "a plaintext caller has no identity, so matches no principal: {plaintext}"
    );
}

/// `secure.example.com`, outside the mesh, served on 127.0.0.1:`port`, with the
/// DestinationRule `tls` settings given.
fn secure_service(port: u16, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: secure, namespace: test}}
spec:
  hosts: [secure.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: secure, namespace: test}}
spec:
  host: secure.example.com
  trafficPolicy:
    tls: {tls}
"
    )
}

/// DestinationRule TLS origination: the application sends plain HTTP, the sidecar speaks TLS
/// to a server outside the mesh (`SIMPLE`), presenting a client certificate (`MUTUAL`), and
/// refuses a server its CA did not sign (`503 UF`). A rule whose files are missing is
/// rejected and the last good configuration stays.
#[test]
fn destination_rules_originate_tls_to_servers_outside_the_mesh() {
    let certs = tempfile::tempdir().unwrap();
    common::pki(certs.path(), "server", "secure.example.com", false);
    common::pki(certs.path(), "client", "client.example.com", true);
    common::pki(certs.path(), "other", "secure.example.com", false);
    let d = certs.path().display();
    for (mutual, tls, expected) in [
        (
            false,
            format!("{{mode: SIMPLE, caCertificates: {d}/server-ca.pem}}"),
            200,
        ),
        (
            true,
            format!(
                "{{mode: MUTUAL, caCertificates: {d}/server-ca.pem, clientCertificate: {d}/client.pem, privateKey: {d}/client-key.pem, subjectAltNames: [secure.example.com]}}"
            ),
            200,
        ),
        // The server's CA is not the one the rule trusts.
        (
            false,
            format!("{{mode: SIMPLE, caCertificates: {d}/other-ca.pem}}"),
            503,
        ),
        // No client certificate for a server that wants one.
        (
            true,
            format!("{{mode: SIMPLE, caCertificates: {d}/server-ca.pem}}"),
            503,
        ),
    ] {
        let (server, port) = https_server(certs.path(), mutual);
        let mesh = Mesh::start(&secure_service(port, &tls));
        let (status, body) = eventually(
            "the route to secure.example.com arrives",
            Duration::from_secs(30),
            || {
                let answer = via_proxy(&mesh.client.outbound, "http://secure.example.com/");
                // Until the service's route arrives: 404.
                if answer.0 != 404 {
                    Ok(answer)
                } else {
                    Err(format!("{tls}: {}", answer.1))
                }
            },
        );
        assert_eq!(status, expected, "{tls}: {body}");
        if expected == 200 {
            assert_eq!(body, "secure\n");
        }
        drop(server);
    }

    // A rule naming files that do not exist is rejected; what was in force stays.
    let (_server, port) = https_server(certs.path(), false);
    let service =
        |ca: &str| secure_service(port, &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    let mesh = Mesh::start(&service(&format!("{d}/server-ca.pem")));
    eventually("the origination works", Duration::from_secs(30), || {
        (via_proxy(&mesh.client.outbound, "http://secure.example.com/").0 == 200).then_some(())
    });
    std::fs::write(
        config_dir(mesh.dir.path()).join("extra.yaml"),
        service("/nonexistent/ca.pem"),
    )
    .unwrap();
    eventually("the bad rule is rejected", Duration::from_secs(30), || {
        let log = mesh.client.log.lock().unwrap();
        log.iter()
            .any(|line| {
                line.contains("configuration rejected (NACK)")
                    && line.contains("/nonexistent/ca.pem")
            })
            .then_some(())
    });
    let (status, body) = via_proxy(&mesh.client.outbound, "http://secure.example.com/");
    assert_eq!((status, body.as_str()), (200, "secure\n"));
}

/// `subjectAltNames` of a DestinationRule name URI SANs too (a partner's SPIFFE ID): the
/// server's certificate must carry the one named, checked after its chain.
#[test]
fn origination_matches_uri_subject_alt_names() {
    let certs = tempfile::tempdir().unwrap();
    let partner = "spiffe://partner.example/ns/pay/sa/api";
    common::pki(certs.path(), "server", partner, false);
    let d = certs.path().display();
    for (name, expected) in [
        (partner, 200),
        ("spiffe://partner.example/ns/pay/sa/other", 503),
    ] {
        let (_server, port) = https_server(certs.path(), false);
        let mesh = Mesh::start(&secure_service(
            port,
            &format!(
                "{{mode: SIMPLE, caCertificates: {d}/server-ca.pem, subjectAltNames: [{name}]}}"
            ),
        ));
        let (status, body) = eventually(
            "the route to secure.example.com arrives",
            Duration::from_secs(30),
            || {
                let answer = via_proxy(&mesh.client.outbound, "http://secure.example.com/");
                if answer.0 != 404 {
                    Ok(answer)
                } else {
                    Err(answer.1)
                }
            },
        );
        assert_eq!(status, expected, "{name}: {body}");
    }
}

/// What an Envoy client gets for a `SIMPLE` rule without `caCertificates`: the system's
/// roots to verify the server with (Istio's `caCertificates: system`), never no check.
#[test]
fn envoy_clients_verify_originated_tls_against_the_system_roots() {
    use weft_xds::envoy::envoy::config::cluster::v3::Cluster;
    use weft_xds::envoy::envoy::config::core::v3::{Node, transport_socket::ConfigType};
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use weft_xds::envoy::envoy::service::discovery::v3::DiscoveryRequest;
    use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let mesh = Mesh::start(&secure_service(443, "{mode: SIMPLE}"));
    let xds = mesh.control.as_ref().unwrap().xds.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster: Cluster = runtime.block_on(async {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap();
        let request = DiscoveryRequest {
            node: Some(Node {
                id: "sidecar~10.0.0.9~envoy.test~test.svc.cluster.local".into(),
                ..Node::default()
            }),
            type_url: weft_xds::types::CLUSTER.into(),
            resource_names: vec!["outbound|80||secure.example.com".into()],
            ..DiscoveryRequest::default()
        };
        let mut responses = client
            .stream_aggregated_resources(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        prost::Message::decode(response.resources[0].value.as_slice()).unwrap()
    });
    let Some(ConfigType::TypedConfig(any)) = cluster
        .transport_socket
        .and_then(|socket| socket.config_type)
    else {
        panic!("the cluster originates no TLS");
    };
    let context: UpstreamTlsContext = prost::Message::decode(any.value.as_slice()).unwrap();
    let Some(ValidationContextType::ValidationContext(validation)) = context
        .common_tls_context
        .and_then(|c| c.validation_context_type)
    else {
        panic!("no validation context");
    };
    assert!(validation.system_root_certs.is_some(), "{validation:?}");
}

/// Auto-mTLS follows the server: a workload whose PeerAuthentication DISABLEs mTLS is
/// called in plaintext (Istio's auto-mTLS), and an endpoint with no sidecar — a
/// WorkloadEntry with neither a service account nor the `security.istio.io/tlsMode` label —
/// is not spoken to in mesh mTLS.
#[test]
fn auto_mtls_follows_the_servers_peer_authentication_and_tls_mode() {
    let mesh = Mesh::start(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: echo, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  mtls: {mode: DISABLE}
",
    );
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/plain",
    );
    assert_eq!(status, 200, "{body}");
    let wire = String::from_utf8_lossy(&mesh.wire.lock().unwrap()).into_owned();
    assert!(
        wire.contains("GET /plain"),
        "plaintext on the wire: {wire:?}"
    );

    // An application with no sidecar, as a WorkloadEntry without a service account.
    let app = crate::apps::echo_app("bare");
    std::fs::write(
        config_dir(mesh.dir.path()).join("extra.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bare, namespace: test}}
spec:
  hosts: [bare.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app}}}}}]
"
        ),
    )
    .unwrap();
    let (status, body) = eventually("bare is served", Duration::from_secs(30), || {
        let answer = via_proxy(&mesh.client.outbound, "http://bare.test.svc.cluster.local/");
        if answer.0 == 200 {
            Ok(answer)
        } else {
            Err(format!("{} {}", answer.0, answer.1))
        }
    });
    assert!(body.starts_with("served-by: bare"), "{status} {body}");
}

/// A PERMISSIVE port passes TLS that is not mesh mTLS — the application's own, offering no
/// `istio…` ALPN — through to the application untouched; and a mesh client that offers only
/// Istio's ALPN values (as an Istio proxy's TCP clusters do) still completes mTLS.
#[test]
fn permissive_passes_the_applications_own_tls_through_and_takes_istio_alpn() {
    let certs = tempfile::tempdir().unwrap();
    common::pki(certs.path(), "server", "echo.test.svc.cluster.local", false);
    let (server, port) = https_server(certs.path(), false);
    let mesh = Mesh::with_apps("", &["v1"], move |_| port);
    let request = b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let answer =
        crate::clients::tls_request(&mesh.servers[0].inbound, None, &[b"http/1.1"], request);
    assert!(
        answer.ends_with("secure\n"),
        "the application's own TLS: {answer:?}"
    );
    drop(server);

    let mesh = Mesh::start("");
    let cert = client_cert(
        &mesh,
        "spiffe://cluster.local/ns/test/sa/tester",
        false,
        false,
    );
    let answer = crate::clients::tls_request(
        &mesh.servers[0].inbound,
        Some(cert),
        &[b"istio-peer-exchange", b"istio"],
        request,
    );
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "mTLS with Istio's ALPN: {answer:?}"
    );
}
