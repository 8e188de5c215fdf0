//! Two workloads, each behind a real `weft proxy`, configured by a real `weft control`: a
//! client calls through its sidecar's outbound (explicit HTTP proxy) listener; the request
//! crosses to the server's sidecar over mesh mTLS and reaches the server application with
//! the caller's SPIFFE ID in `x-forwarded-client-cert`.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: test}
spec:
  hosts: [echo.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector:
    labels: {app: echo}
";

/// An application that answers every request with its version and the request's own head,
/// so a test sees who answered and what arrived.
fn echo_app(version: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve_echo(stream, version));
        }
    });
    port
}

/// Requests the `flaky` application has seen; it fails every other one with 503.
static FLAKY_SEEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Reads an HTTP head byte by byte, so nothing after it is consumed; `None` when the stream
/// ends first.
fn read_head(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? != 1 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

fn serve_echo(mut stream: TcpStream, version: &str) {
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    if version == "slow" {
        std::thread::sleep(Duration::from_secs(1));
    }
    if version == "bad"
        || (version == "flaky"
            && FLAKY_SEEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 0)
    {
        let _ = stream.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let served_by = format!("served-by: {version}\r\n");
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{served_by}",
        served_by.len() + head.len()
    )
    .into_bytes();
    response.extend_from_slice(&head);
    let _ = stream.set_nodelay(true);
    let _ = stream.write_all(&response);
}

/// A TCP relay from `listener` to `target` that keeps what the client side sent.
fn relay(listener: TcpListener, target: String) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let (mut client_read, mut server_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let record = record.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 16384];
                while let Ok(n) = client_read.read(&mut buffer) {
                    if n == 0 || server_write.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buffer[..n]);
                }
                let _ = server_write.shutdown(Shutdown::Write);
            });
            let (mut server_read, mut client_write) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server_read, &mut client_write);
                let _ = client_write.shutdown(Shutdown::Write);
            });
        }
    });
    seen
}

/// Sends one HTTP/1.1 request through an explicit proxy; returns status and body.
fn via_proxy(proxy: &str, url: &str) -> (u16, String) {
    request(proxy, url, "")
}

/// Sends one HTTP/1.1 request with extra header lines (each ending in CRLF) through an
/// explicit proxy; returns status and body.
fn request(proxy: &str, url: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    write!(
        stream,
        "GET {url} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

struct Mesh {
    dir: tempfile::TempDir,
    control: Option<common::Control>,
    /// One server workload per version, first `v1`.
    servers: Vec<common::Proxy>,
    client: common::Proxy,
    /// What crossed from the client's sidecar to the first server's.
    wire: Arc<Mutex<Vec<u8>>>,
}

fn config_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("config")
}

impl Mesh {
    fn start(extra: &str) -> Self {
        Self::with_versions(extra, &["v1"])
    }

    /// The `echo` service with one workload per version, a client workload, and `extra`
    /// configuration.
    fn with_versions(extra: &str, versions: &[&'static str]) -> Self {
        Self::with_apps(extra, versions, echo_app)
    }

    /// As [`Mesh::with_versions`], with the application of each version started by `app`
    /// (which returns its port).
    fn with_apps(
        extra: &str,
        versions: &[&'static str],
        app: impl Fn(&'static str) -> u16,
    ) -> Self {
        Self::with_service(SERVICE, extra, versions, app)
    }

    /// As [`Mesh::with_apps`], with `service` declaring the `echo` service.
    fn with_service(
        service: &str,
        extra: &str,
        versions: &[&'static str],
        app: impl Fn(&'static str) -> u16,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(config_dir(dir.path())).unwrap();
        std::fs::write(config_dir(dir.path()).join("echo.yaml"), service).unwrap();
        std::fs::write(config_dir(dir.path()).join("extra.yaml"), extra).unwrap();
        let control = common::Control::start(&config_dir(dir.path()));
        let server_token = common::join_token(&config_dir(dir.path()), "test", "echo");
        let mut servers = Vec::new();
        let mut endpoints = Vec::new();
        let mut wire = Arc::default();
        for (index, version) in versions.iter().enumerate() {
            let app = app(version);
            // The first server's sidecar listens on 127.0.0.1 but says it is at 127.0.0.2,
            // where a relay records what the client's sidecar sends.
            let mut inbound = common::free_port();
            let instance_ip = if index == 0 {
                // A port free on 127.0.0.2 as well (a client socket of another test may hold
                // it there).
                let listener = loop {
                    match TcpListener::bind(("127.0.0.2", inbound)) {
                        Ok(listener) => break listener,
                        Err(_) => inbound = common::free_port(),
                    }
                };
                wire = relay(listener, format!("127.0.0.1:{inbound}"));
                "127.0.0.2"
            } else {
                "127.0.0.1"
            };
            endpoints.push(format!("{instance_ip}:{inbound}"));
            servers.push(common::Proxy::start(&[
                "--control",
                &control.xds,
                "--name",
                &format!("echo-{version}"),
                "--namespace",
                "test",
                "--service",
                "echo:8080",
                "--labels",
                &format!("app=echo,version={version}"),
                "--service-account",
                "echo",
                "--app-port",
                &app.to_string(),
                "--inbound-port",
                &inbound.to_string(),
                "--instance-ip",
                instance_ip,
                "--token",
                &server_token,
            ]));
        }
        let client_token = common::join_token(&config_dir(dir.path()), "test", "client");
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
            &client_token,
            "--upstream",
            "0=echo:8080",
        ]);
        for server in &servers {
            server.until_ready();
        }
        client.until_ready();
        // Wait until the client's sidecar knows every server's endpoint.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let clusters = common::get(&client.admin, "/clusters");
            // Clusters and endpoints arrive before listeners and routes: wait for both.
            let routed =
                !common::get_json(&client.admin, "/config_dump")["model"]["routes"]["8080"]
                    .is_null();
            if routed && endpoints.iter().all(|e| clusters.contains(e.as_str())) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the endpoints never arrived: {clusters}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mesh {
            dir,
            control: Some(control),
            servers,
            client,
            wire,
        }
    }

    /// Sends `count` requests through the client's sidecar; counts who served them.
    fn served_by(&self, count: usize, headers: &str) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..count {
            let (status, body) = request(
                &self.client.outbound,
                "http://echo.test.svc.cluster.local:8080/",
                headers,
            );
            let who = if status == 200 {
                body.lines()
                    .next()
                    .and_then(|l| l.strip_prefix("served-by: "))
                    .unwrap_or("?")
                    .to_string()
            } else {
                format!("status {status}")
            };
            *counts.entry(who).or_default() += 1;
        }
        counts
    }

    /// Replaces the extra configuration file and waits until the client's sidecar has a new
    /// route version.
    fn edit(&self, extra: &str) {
        self.edit_then(extra, weft_xds::types::ROUTE);
    }

    /// Replaces the extra configuration file and waits until the client's sidecar has a new
    /// version of `type_url`.
    fn edit_then(&self, extra: &str, type_url: &str) {
        let version =
            || common::get_json(&self.client.admin, "/config_dump")["versions"][type_url].clone();
        let before = version();
        std::fs::write(config_dir(self.dir.path()).join("extra.yaml"), extra).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while version() == before {
            assert!(Instant::now() < deadline, "{type_url} never changed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

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
fn unknown_hosts_get_404_with_the_nr_flag() {
    let mesh = Mesh::start("");
    let answer = raw(
        &mesh.client.outbound,
        b"GET http://nowhere.test.svc.cluster.local:8080/x HTTP/1.1\r\nHost: nowhere.test.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("weft-response-flags: NR"), "{answer}");
    // Without --debug-headers the flag stays out of the response.
    let token = common::join_token(&config_dir(mesh.dir.path()), "test", "client");
    let quiet = common::Proxy::start(&[
        "--control",
        &mesh.control.as_ref().unwrap().xds,
        "--name",
        "quiet-client",
        "--namespace",
        "test",
        "--service-account",
        "client",
        "--token",
        &token,
        "--debug-headers",
        "false",
    ]);
    quiet.until_ready();
    let answer = raw(
        &quiet.outbound,
        b"GET http://nowhere.test.svc.cluster.local:8080/x HTTP/1.1\r\nHost: nowhere.test.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(!answer.contains("weft-response-flags"), "{answer}");
    let metrics = common::get(&mesh.client.metrics, "/stats/prometheus");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("istio_requests_total{")
                && line.contains("destination_service=\"nowhere.test.svc.cluster.local\"")
                && line.contains("response_code=\"404\",response_flags=\"NR\"")
                && line.ends_with("} 1")),
        "{metrics}"
    );
    // The access log says the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = mesh.client.log.lock().unwrap().clone();
        if let Some(line) = logged.iter().find(|l| l.contains("nowhere.test")) {
            assert!(line.contains("status=404") && line.contains("NR"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no access log line: {logged:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(mesh.servers);
}

const STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: test}
spec: {mtls: {mode: STRICT}}
";

/// A client certificate and key, DER.
type ClientCert = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// Accepts any server certificate: these tests check what the server accepts.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends a request straight to an inbound listener, in plaintext or over TLS with `cert`;
/// returns the response, or `None` when the connection was refused or closed.
fn direct(inbound: &str, tls: Option<Option<ClientCert>>) -> Option<String> {
    let mut tcp = TcpStream::connect(inbound).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = b"GET /direct HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let mut response = Vec::new();
    match tls {
        None => {
            tcp.write_all(request).ok()?;
            tcp.read_to_end(&mut response).ok()?;
        }
        Some(cert) => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
            let config = match cert {
                Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
                None => builder.with_no_client_auth(),
            };
            let connection = rustls::ClientConnection::new(
                Arc::new(config),
                "echo.test.svc.cluster.local".try_into().unwrap(),
            )
            .unwrap();
            let mut stream = rustls::StreamOwned::new(connection, tcp);
            stream.write_all(request).ok()?;
            stream.read_to_end(&mut response).ok()?;
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    response.starts_with("HTTP/1.1").then_some(response)
}

/// A certificate for `spiffe_id`, signed by the mesh root in the state dir, or by a CA of its
/// own; valid now, or expired.
fn client_cert(mesh: &Mesh, spiffe_id: &str, own_ca: bool, expired: bool) -> ClientCert {
    use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
    let state = config_dir(mesh.dir.path()).join(".weft");
    let (issuer_cert, issuer_key) = if own_ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key)
    } else {
        (
            std::fs::read_to_string(state.join("root-cert.pem")).unwrap(),
            KeyPair::from_pem(&std::fs::read_to_string(state.join("root-key.pem")).unwrap())
                .unwrap(),
        )
    };
    let issuer = Issuer::from_ca_cert_pem(&issuer_cert, issuer_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into().unwrap())];
    let now = time::OffsetDateTime::now_utc();
    (params.not_before, params.not_after) = if expired {
        (now - time::Duration::days(2), now - time::Duration::days(1))
    } else {
        (
            now - time::Duration::minutes(1),
            now + time::Duration::hours(1),
        )
    };
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
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

fn split(v1: u32, v3: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: test}}\nspec:\n  host: echo\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: test}}\nspec:\n  hosts: [echo]\n  http:\n  - match:\n    - headers:\n        user-agent: {{regex: \".*Chrome.*\"}}\n    route:\n    - destination: {{host: echo, subset: v2}}\n  - route:\n    - destination: {{host: echo, subset: v1}}\n      weight: {v1}\n    - destination: {{host: echo, subset: v3}}\n      weight: {v3}\n"
    )
}

fn share(counts: &std::collections::BTreeMap<String, usize>, who: &str, total: usize) -> f64 {
    100.0 * *counts.get(who).unwrap_or(&0) as f64 / total as f64
}

/// The seed's canary: 95/5, then 50/50 between v1 and v3, over 2,000 requests each, within
/// three points; and its header route: Chrome's user agent goes to v2.
#[test]
fn the_canary_split_and_the_header_route_hold() {
    let mesh = Mesh::with_versions(&split(95, 5), &["v1", "v2", "v3"]);
    let counts = mesh.served_by(2000, "");
    let v3 = share(&counts, "v3", 2000);
    assert!((2.0..=8.0).contains(&v3), "95/5: {counts:?}");
    assert_eq!(counts.get("v2"), None, "{counts:?}");

    let chrome = mesh.served_by(
        50,
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n",
    );
    assert_eq!(chrome.get("v2"), Some(&50), "{chrome:?}");

    mesh.edit(&split(50, 50));
    let counts = mesh.served_by(2000, "");
    let v3 = share(&counts, "v3", 2000);
    assert!((47.0..=53.0).contains(&v3), "50/50: {counts:?}");
}

/// The data plane does not need the control plane to keep working; when it comes back, the
/// sidecars reconnect and take new configuration.
#[test]
fn traffic_flows_without_the_control_plane_and_converges_when_it_returns() {
    let mut mesh = Mesh::start("");
    let control = mesh.control.take().unwrap();
    let xds = control.xds.clone();
    drop(control);
    for _ in 0..20 {
        let (status, body) = via_proxy(
            &mesh.client.outbound,
            "http://echo.test.svc.cluster.local:8080/",
        );
        assert_eq!(status, 200, "with the control plane gone: {body}");
    }
    mesh.control = Some(common::Control::start_at(
        &config_dir(mesh.dir.path()),
        &xds,
    ));
    mesh.edit(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: echo, namespace: test}\nspec:\n  hosts: [echo]\n  http:\n  - directResponse: {status: 418, body: {string: back}}\n",
    );
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert_eq!((status, body.as_str()), (418, "back"));
}

fn load_balancer(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: test}}\nspec:\n  host: echo\n  trafficPolicy:\n    loadBalancer: {policy}\n"
    )
}

/// Every load-balancing policy shows its distribution over three endpoints.
#[test]
fn each_load_balancer_distributes_as_it_should() {
    let mesh = Mesh::with_versions(&load_balancer("{simple: ROUND_ROBIN}"), &["a", "b", "c"]);
    let counts = mesh.served_by(300, "");
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "round robin: {counts:?}"
    );

    for simple in ["RANDOM", "LEAST_REQUEST"] {
        mesh.edit_then(
            &load_balancer(&format!("{{simple: {simple}}}")),
            weft_xds::types::CLUSTER,
        );
        let counts = mesh.served_by(600, "");
        assert_eq!(counts.len(), 3, "{simple}: {counts:?}");
        assert!(
            counts.values().all(|n| (130..=270).contains(n)),
            "{simple}: {counts:?}"
        );
    }

    // The route's hash policy changes with the first; only the cluster with the second.
    for (hash, changes) in [
        (
            "{consistentHash: {httpHeaderName: x-user}}",
            weft_xds::types::ROUTE,
        ),
        (
            "{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}",
            weft_xds::types::CLUSTER,
        ),
    ] {
        mesh.edit_then(&load_balancer(hash), changes);
        // One user always reaches the same endpoint; many users spread.
        let alice = mesh.served_by(50, "x-user: alice\r\n");
        assert_eq!(alice.len(), 1, "{hash}: {alice:?}");
        let mut reached = std::collections::BTreeSet::new();
        for user in 0..30 {
            let counts = mesh.served_by(3, &format!("x-user: user-{user}\r\n"));
            assert_eq!(counts.len(), 1, "{hash}: user-{user}: {counts:?}");
            reached.extend(counts.into_keys());
        }
        assert!(
            reached.len() >= 2,
            "{hash}: 30 users all reached {reached:?}"
        );
    }
    mesh.edit_then(
        &load_balancer("{consistentHash: {useSourceIp: true}}"),
        weft_xds::types::ROUTE,
    );
    let same_client = mesh.served_by(50, "");
    assert_eq!(same_client.len(), 1, "source IP: {same_client:?}");
}

fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: test}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo}}\n{http}"
    )
}

/// Retries hide an upstream that fails every other request; without them half fail; fault
/// injection aborts and delays as the VirtualService says.
#[test]
fn retries_hide_a_flaky_upstream_and_faults_are_injected() {
    use std::sync::atomic::Ordering;
    let mesh = Mesh::with_versions(
        &virtual_service("    retries: {attempts: 3, retryOn: 5xx}\n"),
        &["flaky"],
    );
    let seen_before = FLAKY_SEEN.load(Ordering::SeqCst);
    let counts = mesh.served_by(40, "");
    assert_eq!(counts.get("flaky"), Some(&40), "{counts:?}");
    let attempts = FLAKY_SEEN.load(Ordering::SeqCst) - seen_before;
    assert!(
        (79..=81).contains(&attempts),
        "40 requests took {attempts} attempts"
    );

    mesh.edit(&virtual_service("    retries: {attempts: 0}\n"));
    let counts = mesh.served_by(40, "");
    assert_eq!(counts.get("status 503"), Some(&20), "{counts:?}");

    mesh.edit(&virtual_service(
        "    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n",
    ));
    let (status, _) = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert_eq!(status, 418);

    mesh.edit(&virtual_service(
        "    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}\n",
    ));
    let started = Instant::now();
    let _ = via_proxy(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/",
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

/// Writes `bytes` to `addr` and returns what comes back until the proxy closes (or 20 s).
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn rss_kib(proxy: &common::Proxy) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", proxy.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Bad input at both listeners: the proxies answer or close, never crash, keep serving, and
/// do not grow.
#[test]
fn bad_input_at_both_listeners_is_answered_or_closed() {
    let mut mesh = Mesh::start("");
    let outbound = mesh.client.outbound.clone();
    let inbound = mesh.servers[0].inbound.clone();
    let host = "echo.test.svc.cluster.local:8080";
    let baseline = rss_kib(&mesh.client);

    // A client that never finishes its headers is cut off; meanwhile the rest goes on.
    let slow = {
        let outbound = outbound.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let answer = raw(&outbound, b"GET / HTTP/1.1\r\nHost: x\r\n");
            (started.elapsed(), answer)
        })
    };
    // A TLS handshake cut short is cut off too.
    let stalled_handshake = {
        let inbound = inbound.clone();
        std::thread::spawn(move || raw(&inbound, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
    };
    for round in 0..3 {
        let answer = raw(&outbound, b"THIS IS NOT HTTP\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "malformed request line: {answer:?}"
        );
        let big = format!(
            "GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(70_000)
        );
        let answer = raw(&outbound, big.as_bytes());
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "oversize headers: {answer:?}"
        );
        // Content-Length and Transfer-Encoding together (either order), alone or after a
        // good request on the same connection: 400, and the bytes after it are never read
        // as a request. At the inbound listener too (PERMISSIVE takes plaintext there).
        for (addr, target) in [
            (&outbound, format!("http://{host}")),
            (&inbound, String::new()),
        ] {
            for (first, second) in [
                ("Content-Length: 5", "Transfer-Encoding: chunked"),
                ("Transfer-Encoding: chunked", "Content-Length: 5"),
            ] {
                let smuggling = format!(
                    "POST {target}/ HTTP/1.1\r\nHost: {host}\r\n{first}\r\n{second}\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
                );
                let answer = raw(addr, smuggling.as_bytes());
                assert!(answer.starts_with("HTTP/1.1 400"), "CL and TE: {answer:?}");
                assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer:?}");
                let good = format!(
                    "POST {target}/good HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\nok"
                );
                let answer = raw(addr, format!("{good}{smuggling}").as_bytes());
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
                assert_eq!(
                    answer.matches("HTTP/1.1 400").count(),
                    1,
                    "the second request is refused: {answer:?}"
                );
                assert!(!answer.contains("/smuggled"), "{answer:?}");
            }
        }
        // TLS garbage and a handshake cut short at the inbound listener.
        assert_eq!(
            raw(&inbound, b"\x16\x03\x01\x00\x05hello"),
            "",
            "TLS garbage"
        );

        // Abrupt resets mid-request, both sides.
        for addr in [&outbound, &inbound] {
            let stream = TcpStream::connect(addr).unwrap();
            let _ = (&stream).write_all(b"GET / HTTP/1.1\r\nHo");
            nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )
            .unwrap();
            drop(stream);
        }
        let (status, body) = via_proxy(&outbound, &format!("http://{host}/round-{round}"));
        assert_eq!(status, 200, "still serving: {body}");
    }
    assert_eq!(stalled_handshake.join().unwrap(), "");
    let (waited, answer) = slow.join().unwrap();
    assert!(
        waited < Duration::from_secs(15) && !answer.contains("200 OK"),
        "a client that never finishes its headers is cut off: {waited:?} {answer:?}"
    );
    for proxy in [&mut mesh.client, &mut mesh.servers[0]] {
        assert!(proxy.child.try_wait().unwrap().is_none(), "a proxy died");
    }
    let after = rss_kib(&mesh.client);
    assert!(
        after < baseline + 8 * 1024,
        "RSS from {baseline} KiB to {after} KiB"
    );
}

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

/// An application that reads a request body of any size and answers with its length.
fn sink_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: u64 = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let received =
                    std::io::copy(&mut (&stream).take(length), &mut std::io::sink()).unwrap_or(0);
                let body = format!("received: {received}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// A 1 GiB request body streams through both sidecars in constant memory.
#[test]
fn a_gigabyte_streams_through_in_constant_memory() {
    const SIZE: u64 = 1 << 30;
    let mesh = Mesh::with_apps("", &["v1"], |_| sink_app());
    let pids = [mesh.client.child.id(), mesh.servers[0].child.id()];
    let idle = [rss_kib(&mesh.client), rss_kib(&mesh.servers[0])];
    let peak = Arc::new(Mutex::new([0u64; 2]));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                for (i, pid) in pids.iter().enumerate() {
                    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                        .unwrap_or_default()
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse().ok())
                        .unwrap_or(0);
                    let mut peak = peak.lock().unwrap();
                    peak[i] = peak[i].max(rss);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut stream = TcpStream::connect(&mesh.client.outbound).unwrap();
    let host = "echo.test.svc.cluster.local:8080";
    write!(stream, "POST http://{host}/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n").unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..(SIZE >> 20) {
        stream.write_all(&chunk).unwrap();
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    assert!(
        response.ends_with(&format!("received: {SIZE}")),
        "{response}"
    );
    let peak = *peak.lock().unwrap();
    eprintln!("RSS of the client and server sidecars: idle {idle:?} KiB, peak {peak:?} KiB");
    // The test binaries are debug builds, larger at rest than release ones; what matters is
    // that streaming a gigabyte adds little.
    for (idle, peak) in idle.iter().zip(peak) {
        assert!(
            peak < idle + 16 * 1024,
            "RSS grew from {idle} KiB to {peak} KiB"
        );
    }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::get(&client.admin, "/clusters").contains(&server.inbound) {
        assert!(Instant::now() < deadline, "the endpoint never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }

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

/// An application that switches to WebSocket on request (`101`), then echoes every byte.
fn websocket_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                );
                let _ = std::io::copy(&mut &stream, &mut &stream);
            });
        }
    });
    port
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

fn destination_rule(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: test}}\nspec:\n  host: echo\n  trafficPolicy:\n{policy}---\n{}",
        virtual_service("    retries: {attempts: 0}\n")
    )
}

/// Outlier detection: an endpoint that keeps answering 5xx is ejected and traffic goes to
/// the healthy one.
#[test]
fn outlier_detection_ejects_a_failing_endpoint() {
    let mesh = Mesh::with_versions(
        &destination_rule(
            "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n",
        ),
        &["good", "bad"],
    );
    // Round robin reaches the bad endpoint every other request: two 503s eject it.
    let first = mesh.served_by(10, "");
    let failed = first.get("status 503").copied().unwrap_or(0);
    assert!(failed >= 2, "the bad endpoint was tried: {first:?}");
    let after = mesh.served_by(30, "");
    assert_eq!(
        after.get("good"),
        Some(&30),
        "then only the good one: {after:?}"
    );
}

/// A circuit breaker: with `http2MaxRequests: 1`, a second request while one is in flight
/// is refused at once with `503` and the `UO` flag.
#[test]
fn the_circuit_breaker_refuses_overflow() {
    let mesh = Mesh::with_versions(
        &destination_rule("    connectionPool: {http: {http2MaxRequests: 1}}\n"),
        &["slow"],
    );
    let outbound = mesh.client.outbound.clone();
    let first = std::thread::spawn(move || {
        via_proxy(&outbound, "http://echo.test.svc.cluster.local:8080/first")
    });
    std::thread::sleep(Duration::from_millis(300));
    let overflow = raw(
        &mesh.client.outbound,
        b"GET http://echo.test.svc.cluster.local:8080/second HTTP/1.1\r\nHost: echo.test.svc.cluster.local:8080\r\nConnection: close\r\n\r\n",
    );
    assert!(overflow.starts_with("HTTP/1.1 503"), "{overflow}");
    assert!(overflow.contains("weft-response-flags: UO"), "{overflow}");
    assert_eq!(first.join().unwrap().0, 200);
}

/// An application that holds each request until told to answer; it reports each arrival.
fn gate_app(
    arrived: std::sync::mpsc::Sender<()>,
    release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let (arrived, release) = (arrived.clone(), release.clone());
            std::thread::spawn(move || {
                let _ = read_head(&mut stream);
                let _ = arrived.send(());
                let _ = release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nfinished\n",
                );
            });
        }
    });
    port
}

/// `POST /quitquitquit`: the sidecar stops accepting, lets the request in flight finish,
/// and exits.
#[test]
fn quitquitquit_drains_the_request_in_flight_then_exits() {
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let mut mesh = Mesh::with_apps("", &["v1"], move |_| {
        gate_app(arrived_tx.clone(), release_rx.clone())
    });
    let outbound = mesh.client.outbound.clone();
    let in_flight = std::thread::spawn(move || {
        via_proxy(&outbound, "http://echo.test.svc.cluster.local:8080/slow")
    });
    arrived
        .recv_timeout(Duration::from_secs(30))
        .expect("the request reaches the application");

    let answer = raw(
        &mesh.client.admin,
        b"POST /quitquitquit HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The outbound listener closes: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&mesh.client.outbound).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the outbound listener stays open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The request in flight still gets its answer, then the process exits by itself.
    release.send(()).unwrap();
    let (status, body) = in_flight.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "finished\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = mesh.client.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the drained sidecar did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logged = mesh.servers[0].log.lock().unwrap().clone();
            if let Some(line) = logged.iter().find(|l| l.contains("/protocol")) {
                assert!(
                    line.contains(&format!("protocol=\"{between}\"")),
                    "with {config:?} expected {between} between the sidecars: {line}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "no access log line: {logged:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child process, killed when dropped (a failed assertion included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTPS server outside the mesh (Python's `ssl`), with the `server` certificate of
/// [`pki`]; it requires a client certificate of the `client` CA when `mutual`. Answers
/// `secure` to every GET.
fn https_server(dir: &Path, mutual: bool) -> (Killed, u16) {
    let script = r#"
import http.server, ssl, sys
d, mutual = sys.argv[1], sys.argv[2] == "1"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "7")
        self.end_headers()
        self.wfile.write(b"secure\n")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(d + "/server.pem", d + "/server-key.pem")
if mutual:
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(d + "/client-ca.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(if mutual { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    (Killed(child), port)
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
        let deadline = Instant::now() + Duration::from_secs(30);
        let (status, body) = loop {
            let answer = via_proxy(&mesh.client.outbound, "http://secure.example.com/");
            // Until the service's route arrives: 404.
            if answer.0 != 404 || Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while via_proxy(&mesh.client.outbound, "http://secure.example.com/").0 != 200 {
        assert!(Instant::now() < deadline, "the origination never worked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(
        config_dir(mesh.dir.path()).join("extra.yaml"),
        service("/nonexistent/ca.pem"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mesh.client.log.lock().unwrap().iter().any(|line| {
        line.contains("configuration rejected (NACK)") && line.contains("/nonexistent/ca.pem")
    }) {
        assert!(Instant::now() < deadline, "the bad rule was not rejected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = via_proxy(&mesh.client.outbound, "http://secure.example.com/");
    assert_eq!((status, body.as_str()), (200, "secure\n"));
}

/// An application that speaks HTTP or not, as its callers do: to a request it answers `200`
/// with the `x-forwarded-client-cert` it received; any other bytes it echoes after `echo:`.
fn http_or_echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(&stream);
                let Ok(first) = std::io::BufRead::fill_buf(&mut reader) else {
                    return;
                };
                if first.starts_with(b"GET ") {
                    let Some(head) = read_head(&mut reader) else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let xfcc = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-forwarded-client-cert: "))
                        .unwrap_or("none")
                        .to_string();
                    let _ = write!(
                        &stream,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{xfcc}",
                        xfcc.len()
                    );
                } else {
                    let _ = (&stream).write_all(b"echo:");
                    let _ = std::io::copy(&mut reader, &mut &stream);
                }
            });
        }
    });
    port
}

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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = common::get_json(&client.admin, "/config_dump");
        let sniffed = dump["model"]["sniffed_ports"]
            .as_array()
            .is_some_and(|ports| ports.iter().any(|p| p == 7000));
        if sniffed && common::get(&client.admin, "/clusters").contains(&server.inbound) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client never learned of db:7000"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
