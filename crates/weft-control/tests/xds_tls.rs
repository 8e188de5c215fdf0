//! xDS and the certificate API over TLS, for proxies on other hosts: the port's certificate
//! chains to the mesh root and names the control plane, and xDS needs a join token.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_control::app::{Config, ControlPlane, Source};
use weft_control::ca::token::JoinTokens;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::service::discovery::v3::DiscoveryRequest;
use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::types::CLUSTER;

async fn ads_call(channel: Channel, token: Option<String>) -> Result<usize, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(2);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "remote".into(),
            ..Node::default()
        }),
        type_url: CLUSTER.into(),
        ..DiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut responses = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()?
        .unwrap();
    Ok(response.resources.len())
}

#[tokio::test]
async fn tls_port_needs_the_mesh_root_and_a_join_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("se.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n",
    )
    .unwrap();
    let state_dir = dir.path().join(".weft");
    let control = ControlPlane::start(Config {
        source: Source::Dir(dir.path().to_path_buf()),
        xds_addr: "127.0.0.1:0".parse().unwrap(),
        debug_addr: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.clone(),
        trust_domain: "cluster.local".into(),
        cert_ttl: Duration::from_secs(3600),
        registration_grace: Duration::from_secs(1),
        jwks_refresh: Duration::from_secs(1200),
        xds_tls_addr: Some("127.0.0.1:0".parse().unwrap()),
        mesh: Default::default(),
        tls_names: vec!["localhost".into(), "127.0.0.1".into()],
    })
    .await
    .unwrap();
    let addr = control.xds_tls_addr().unwrap().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(control.serve(async {
        let _ = stopped.await;
    }));

    let root = std::fs::read_to_string(state_dir.join("root-cert.pem")).unwrap();
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&root))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .expect("the TLS port's certificate chains to the mesh root and names localhost");

    let token = JoinTokens::load_or_create(&state_dir)
        .unwrap()
        .issue("default", "remote");
    assert_eq!(
        ads_call(channel.clone(), Some(token.clone()))
            .await
            .unwrap(),
        2,
        "the service's cluster and PassthroughCluster, served over TLS"
    );
    let refused = ads_call(channel.clone(), None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let forged = ads_call(channel, Some(token.replace(".remote.", ".admin.")))
        .await
        .unwrap_err();
    assert_eq!(forged.code(), tonic::Code::Unauthenticated);

    // A client that does not trust the mesh root cannot connect.
    let untrusted = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect()
        .await;
    assert!(untrusted.is_err() || ads_call(untrusted.unwrap(), Some(token)).await.is_err());
    drop(stop);
}
