//! Protocols other than plain HTTP/1.1 across the sidecars: gRPC (unary and bidirectional
//! streams), opaque TCP through a `CONNECT` tunnel and a per-upstream local port, WebSocket
//! upgrades, Istio's `h2UpgradePolicy` between sidecars, and a port of undeclared protocol
//! that carries HTTP and opaque bytes alike.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::apps::{http_or_echo_app, websocket_app};
use crate::clients::{read_head, via_proxy};
use crate::common::{self, eventually};
use crate::mesh::{Mesh, SERVICE, config_dir, destination_rule};

/// gRPC through the sidecars, HTTP/2 end to end: a unary call (Istio's certificate API) and
/// a bidirectional stream (ADS), both served by real gRPC servers behind the server sidecar.
#[test]
fn grpc_unary_and_bidirectional_streams_cross_the_sidecars() {
    use std::sync::Arc as StdArc;
    use tokio_stream::wrappers::ReceiverStream;
    use weft_xds::envoy::envoy::config::core::v3::Node;
    use weft_xds::envoy::envoy::service::discovery::v3::DiscoveryRequest;
    use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use weft_xds::istio_ca::IstioCertificateRequest;
    use weft_xds::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = tempfile::tempdir().unwrap();
    let authority = weft_control::ca::CertificateAuthority::load_or_create(
        state.path(),
        "cluster.local",
        weft_control::ca::CertificateAuthority::DEFAULT_TTL,
    )
    .unwrap();
    let tokens =
        StdArc::new(weft_control::ca::token::JoinTokens::load_or_create(state.path()).unwrap());
    let token = tokens.issue("test", "grpc");
    // One gRPC application serving both services.
    let (changes, watcher) = tokio::sync::watch::channel(0);
    let generator = StdArc::new(weft_control::translate::MeshGenerator::default());
    let ads = weft_xds::server::AdsServer::new(generator, watcher, "app");
    let ca = weft_control::ca::CaService::new(StdArc::new(authority), tokens);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let app_port = listener.local_addr().unwrap().port();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .add_service(ca.into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    // A gRPC port is declared as such (Istio's rule): the server's sidecar then speaks
    // HTTP/2 to the application.
    let grpc_service = SERVICE.replace("name: http, protocol: HTTP", "name: grpc, protocol: GRPC");
    let mesh = Mesh::with_service(&grpc_service, "", &["v1"], |_| app_port);

    runtime.block_on(async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.client.outbound))
                .unwrap()
                .origin("http://echo.test.svc.cluster.local:8080".parse().unwrap())
                .connect()
                .await
                .unwrap();
        // Unary.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/test/sa/grpc"
                .to_string()
                .try_into()
                .unwrap(),
        )];
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: params.serialize_request(&key).unwrap().pem().unwrap(),
            validity_duration: 0,
            metadata: None,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let chain = IstioCertificateServiceClient::new(channel.clone())
            .create_certificate(request)
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(chain.len(), 2, "leaf and root");
        // A refusal travels back as a gRPC status (in trailers).
        let refused = IstioCertificateServiceClient::new(channel.clone())
            .create_certificate(IstioCertificateRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

        // Bidirectional: requests and pushes interleave on one stream.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let ask = |nonce: &str| DiscoveryRequest {
            node: Some(Node {
                id: "through-sidecars".into(),
                ..Node::default()
            }),
            type_url: weft_xds::types::CLUSTER.into(),
            response_nonce: nonce.into(),
            ..DiscoveryRequest::default()
        };
        tx.send(ask("")).await.unwrap();
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = responses.message().await.unwrap().unwrap();
        tx.send(ask(&first.nonce)).await.unwrap();
        changes.send_replace(1);
        // The generator has no snapshot: the same (empty) content is not pushed again, so
        // ask with a new subscription to get a second response on the same stream.
        tx.send(DiscoveryRequest {
            resource_names: vec!["outbound|8080||x".into()],
            ..ask(&first.nonce)
        })
        .await
        .unwrap();
        let second = responses.message().await.unwrap().unwrap();
        assert_ne!(first.nonce, second.nonce);
    });
    drop(mesh);
}

/// Opaque TCP: a client tunnels through its sidecar with `CONNECT`; the bytes cross to the
/// server's sidecar over mesh mTLS and reach a TCP echo server unchanged.
#[test]
fn raw_tcp_crosses_the_sidecars_through_a_connect_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir(dir.path());
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("tcp.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: tcpecho, namespace: test}\nspec:\n  hosts: [tcpecho.test.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 9000, name: tcp, protocol: TCP}]\n  resolution: STATIC\n  workloadSelector:\n    labels: {app: tcpecho}\n",
    )
    .unwrap();
    let control = common::Control::start(&config);
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in app.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &stream, &mut &stream);
            });
        }
    });
    let server = common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "tcpecho",
        "--namespace",
        "test",
        "--service",
        "tcpecho:9000",
        "--labels",
        "app=tcpecho",
        "--service-account",
        "tcpecho",
        "--app-port",
        &app_port.to_string(),
        "--token",
        &common::join_token(&config, "test", "tcpecho"),
    ]);
    let client = common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "client",
        "--namespace",
        "test",
        "--service-account",
        "client",
        "--token",
        &common::join_token(&config, "test", "client"),
        "--upstream",
        "0=tcpecho:9000",
    ]);
    server.until_ready();
    client.until_ready();
    eventually(
        "the client's sidecar has the endpoint",
        Duration::from_secs(30),
        || {
            common::get(&client.admin, "/clusters")
                .contains(&server.inbound)
                .then_some(())
        },
    );

    let mut tunnel = TcpStream::connect(&client.outbound).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A short name resolves in the client's namespace.
    write!(
        tunnel,
        "CONNECT tcpecho:9000 HTTP/1.1\r\nHost: tcpecho:9000\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut tunnel).expect("a whole response head");
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = tunnel.try_clone().unwrap();
    let sent = payload.clone();
    let sending = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut echoed = vec![0u8; payload.len()];
    tunnel.read_exact(&mut echoed).unwrap();
    sending.join().unwrap();
    assert!(echoed == payload, "the bytes came back changed");

    // The same through a per-upstream local port, for applications that cannot use a proxy.
    let (local, target) = &client.upstreams[0];
    assert_eq!(target, "tcpecho:9000");
    let mut direct = TcpStream::connect(local).unwrap();
    direct
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    direct.write_all(b"ping through a local port").unwrap();
    let mut echoed = [0u8; 25];
    direct.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping through a local port");
}

/// A WebSocket handshake (`Upgrade`, `101`) passes through both sidecars and the connection
/// then carries bytes both ways.
#[test]
fn websocket_upgrades_cross_the_sidecars() {
    let mesh = Mesh::with_apps("", &["v1"], |_| websocket_app());
    let mut stream = TcpStream::connect(&mesh.client.outbound).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let host = "echo.test.svc.cluster.local:8080";
    write!(
        stream,
        "GET http://{host}/chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream).expect("a whole response head");
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in [&b"\x81\x05hello"[..], b"\x81\x05again"] {
        stream.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }
}

/// Istio's `h2UpgradePolicy`: between sidecars an HTTP/1.1 request stays HTTP/1.1 by default
/// (Istio's `DO_NOT_UPGRADE`); with `UPGRADE` it crosses as HTTP/2 on a shared connection.
/// Either way the application receives HTTP/1.1.
#[test]
fn h2_upgrade_policy_decides_the_protocol_between_sidecars() {
    let upgrade = destination_rule("    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n");
    for (config, between) in [("", "HTTP/1.1"), (upgrade.as_str(), "HTTP/2.0")] {
        let mesh = Mesh::start(config);
        let (status, body) = via_proxy(
            &mesh.client.outbound,
            "http://echo.test.svc.cluster.local:8080/protocol",
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("GET /protocol HTTP/1.1"), "{body}");
        let line = eventually(
            "the server's access log has the request",
            Duration::from_secs(10),
            || {
                let logged = mesh.servers[0].log.lock().unwrap();
                let line = logged.iter().find(|l| l.contains("/protocol"));
                line.cloned().ok_or_else(|| format!("{logged:?}"))
            },
        );
        assert!(
            line.contains(&format!("protocol=\"{between}\"")),
            "with {config:?} expected {between} between the sidecars: {line}"
        );
    }
}

/// A port no one declared a protocol for (`db:7000`, known only from its sidecar's
/// `--service`): HTTP is recognised at both sidecars, anything else passes as opaque bytes.
#[test]
fn a_port_of_undeclared_protocol_carries_http_and_opaque_tcp_alike() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir(dir.path());
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("strict.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    )
    .unwrap();
    let control = common::Control::start(&config);
    // `db` exists only because its sidecar says it serves port 7000: no protocol declared.
    let server = common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "db",
        "--namespace",
        "test",
        "--service",
        "db:7000",
        "--service-account",
        "db",
        "--app-port",
        &http_or_echo_app().to_string(),
        "--token",
        &common::join_token(&config, "test", "db"),
    ]);
    let client = common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "client",
        "--namespace",
        "test",
        "--service-account",
        "client",
        "--token",
        &common::join_token(&config, "test", "client"),
        "--upstream",
        "0=db:7000",
    ]);
    server.until_ready();
    client.until_ready();
    eventually(
        "the client learns of db:7000",
        Duration::from_secs(30),
        || {
            let dump = common::get_json(&client.admin, "/config_dump");
            let sniffed = dump["model"]["sniffed_ports"]
                .as_array()
                .is_some_and(|ports| ports.iter().any(|p| p == 7000));
            (sniffed && common::get(&client.admin, "/clusters").contains(&server.inbound))
                .then_some(())
        },
    );
    let inbound = &common::get_json(&server.admin, "/config_dump")["model"]["inbound"];
    let port = inbound
        .as_object()
        .and_then(|ports| ports.values().next())
        .expect("an inbound port");
    assert!(
        !port["http"].is_null() && !port["tcp"].is_null(),
        "the inbound port should carry both: {port}"
    );

    let (local, _) = &client.upstreams[0];
    let exchange = |bytes: &[u8], expected: usize| {
        let mut stream = TcpStream::connect(local).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut received = vec![0u8; expected];
        stream.read_exact(&mut received).unwrap();
        received
    };
    // HTTP is recognised at both sidecars: routed, and the caller's identity added.
    let mut stream = TcpStream::connect(local).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: db\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("uri=spiffe://cluster.local/ns/test/sa/client"),
        "{response}"
    );
    // A binary protocol and TLS-looking bytes pass as they are, over mesh mTLS (STRICT).
    let redis = b"*1\r\n$4\r\nPING\r\n";
    assert_eq!(
        exchange(redis, 5 + redis.len()),
        [b"echo:", &redis[..]].concat()
    );
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o'];
    assert_eq!(
        exchange(&hello, 5 + hello.len()),
        [b"echo:", &hello[..]].concat()
    );
    // Bytes that begin like a request line but are not one are opaque too.
    assert_eq!(exchange(b"GETTING", 12), b"echo:GETTING");
}
