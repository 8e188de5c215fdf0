//! Authorization that never fails open: request paths normalized before policies and
//! routes read them (MeshConfig `pathNormalization`); policies applied where Istio applies
//! them (root namespace, CUSTOM, dry run, URI templates, `portLevelMtls`); matchers that
//! keep their case; one authority per request; policies that cannot be read refused.

use crate::apps::echo_app;
use crate::clients::{raw, via_proxy};
use crate::fixed_control::{FixedControl, unreadable_policy};
use crate::mesh::{Mesh, SERVICE};

/// `echo` refuses `/admin` and everything under it.
const DENY_ADMIN: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin*]}}]
";

/// A request through the client's sidecar: the status, and the request line the
/// application saw (empty when it saw none).
fn call(mesh: &Mesh, path: &str) -> (u16, String) {
    let (status, body) = via_proxy(
        &mesh.client.outbound,
        &format!("http://echo.test.svc.cluster.local:8080{path}"),
    );
    let seen = body
        .lines()
        .find(|line| line.starts_with("GET "))
        .unwrap_or_default()
        .to_string();
    (status, seen)
}

/// A plaintext request straight to the server's sidecar (PERMISSIVE by default), so only
/// its inbound side normalizes: its status line.
fn call_inbound(mesh: &Mesh, path: &str) -> String {
    let answer = raw(
        &mesh.servers[0].inbound,
        format!("GET {path} HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    answer.lines().next().unwrap_or_default().to_string()
}

/// Istio's default, `BASE`: paths that an application resolves to `/admin` are denied as
/// `/admin` is, at the client's sidecar and at the server's; the application gets the
/// normal form, the query as sent; `%00` is refused; runs of slashes and escaped slashes are
/// left alone, as Istio's BASE leaves them.
#[test]
fn paths_are_normalized_before_policies_and_routes() {
    let mesh = Mesh::start(DENY_ADMIN);
    assert_eq!(call(&mesh, "/admin").0, 403);
    for path in [
        "/public/../admin",
        "/./admin",
        "/%61dmin",
        "/x/%2e%2e/admin/users",
        "/x/%2E./admin",
        "/x\\..\\admin",
    ] {
        assert_eq!(call(&mesh, path).0, 403, "{path} is /admin");
        assert!(
            call_inbound(&mesh, path).contains(" 403 "),
            "{path} is /admin at the inbound side too"
        );
    }
    assert_eq!(
        call(&mesh, "/public/./a/../b?next=/../admin"),
        (200, "GET /public/b?next=/../admin HTTP/1.1".to_string()),
        "the application gets the normal form, the query unchanged"
    );
    assert_eq!(
        call(&mesh, "/%7Euser/%41"),
        (200, "GET /~user/A HTTP/1.1".to_string())
    );
    assert!(call_inbound(&mesh, "/a%00b").contains(" 400 "));
    assert_eq!(call(&mesh, "//admin").0, 200, "BASE does not merge slashes");
    assert_eq!(
        call(&mesh, "/%2Fadmin"),
        (200, "GET /%2Fadmin HTTP/1.1".to_string()),
        "BASE keeps escaped slashes"
    );
}

/// The other normalizations of MeshConfig's `pathNormalization`: `NONE` leaves paths as
/// sent, `MERGE_SLASHES` merges runs of slashes, `DECODE_AND_MERGE_SLASHES` also decodes
/// escaped slashes first.
#[test]
fn mesh_config_chooses_the_path_normalization() {
    let with = |normalization: &str| {
        Mesh::with_mesh_config(
            SERVICE,
            DENY_ADMIN,
            Some(&format!(
                "pathNormalization: {{normalization: {normalization}}}\n"
            )),
            &["v1"],
            echo_app,
        )
    };
    let none = with("NONE");
    assert_eq!(
        call(&none, "/public/../admin"),
        (200, "GET /public/../admin HTTP/1.1".to_string())
    );
    drop(none);

    let merge = with("MERGE_SLASHES");
    assert_eq!(call(&merge, "//admin").0, 403);
    assert_eq!(
        call(&merge, "/public//../admin"),
        (200, "GET /public/admin HTTP/1.1".to_string()),
        "dot segments are resolved before slashes are merged, as Envoy does"
    );
    assert_eq!(
        call(&merge, "/a//b"),
        (200, "GET /a/b HTTP/1.1".to_string())
    );
    assert_eq!(call(&merge, "/%2Fadmin").0, 200, "escaped slashes stay");
    drop(merge);

    let decode = with("DECODE_AND_MERGE_SLASHES");
    assert_eq!(call(&decode, "/%2Fadmin").0, 403);
    assert_eq!(call(&decode, "/x/..%5Cadmin").0, 403);
    assert_eq!(
        call(&decode, "/a%2Fb"),
        (200, "GET /a/b HTTP/1.1".to_string())
    );
}

/// Policies that Weft could once leave unenforced, each on its own path of `echo`:
/// a root-namespace policy with a selector (it applies in every namespace), a CUSTOM policy
/// (no external authorizer is reachable, so what it matches is denied), URI templates
/// (`{*}` is one segment, `{**}` any number), and a dry-run DENY (logged, not enforced).
const POLICIES: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/root-denied]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: external, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: CUSTOM
  provider: {name: ext-authz}
  rules:
  - to: [{operation: {paths: [/custom*]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: templates, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/users/{*}/keys', '/blobs/{**}']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: trial
  namespace: test
  annotations: {istio.io/dry-run: 'true'}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/dry*]}}]
";

#[test]
fn policies_apply_where_istio_applies_them_and_fail_closed() {
    let mesh = Mesh::start(POLICIES);
    for (path, status, why) in [
        (
            "/root-denied",
            403,
            "a root-namespace policy selects workloads everywhere",
        ),
        (
            "/custom/x",
            403,
            "a CUSTOM policy with no reachable authorizer denies",
        ),
        ("/other", 200, "what no policy matches passes"),
        ("/users/alice/keys", 403, "{*} matches one segment"),
        ("/users/alice/bob/keys", 200, "{*} matches only one segment"),
        ("/users//keys", 200, "{*} matches a non-empty segment"),
        ("/blobs/a/b/c", 403, "{**} matches any number of segments"),
        ("/blobs", 200, "{**} follows a slash"),
        (
            "/users/%7Bx%7D/keys",
            403,
            "escaped characters are part of a segment",
        ),
        ("/dry-run", 200, "a dry-run policy is not enforced"),
    ] {
        assert_eq!(call(&mesh, path).0, status, "{path}: {why}");
    }
    let logged = crate::common::eventually(
        "the dry-run verdict is logged",
        std::time::Duration::from_secs(10),
        || {
            let log = mesh.servers[0].log.lock().unwrap();
            log.iter()
                .find(|line| line.contains("dry-run authorization") && line.contains("/dry-run"))
                .cloned()
                .ok_or_else(|| log.join("\n"))
        },
    );
    assert!(
        logged.contains("WouldDeny(\"ns[test]-policy[trial]-rule[0]\")"),
        "{logged}"
    );
}

/// `portLevelMtls` with `mode: UNSET` inherits the workload policy's mode (Istio's
/// ComposePeerAuthentication), not the namespace's: a STRICT workload stays STRICT.
#[test]
fn an_unset_port_inherits_the_workload_mode() {
    let mesh = Mesh::start(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: test}
spec: {mtls: {mode: PERMISSIVE}}
",
    );
    assert!(
        crate::clients::direct(&mesh.servers[0].inbound, None).is_some(),
        "PERMISSIVE takes plaintext"
    );
    let port = mesh.servers[0].inbound.rsplit(':').next().unwrap();
    std::fs::write(
        crate::mesh::config_dir(mesh.dir.path()).join("extra.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: test}}
spec: {{mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: echo, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{{port}: {{mode: UNSET}}}}
"
        ),
    )
    .unwrap();
    crate::common::eventually(
        "the STRICT workload refuses plaintext on its UNSET port",
        std::time::Duration::from_secs(20),
        || match crate::clients::direct(&mesh.servers[0].inbound, None) {
            None => Ok(()),
            Some(answer) => Err(answer),
        },
    );
    assert_eq!(call(&mesh, "/").0, 200, "mesh mTLS still passes");
}

/// Every matcher keeps its case rule: Istio's `hosts` are case-insensitive whatever their
/// form, suffixes included.
#[test]
fn host_matches_ignore_case_in_every_form() {
    let mesh = Mesh::start(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-svc, namespace: test}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - to: [{operation: {hosts: ['*.SVC.Cluster.Local:8080']}}]
",
    );
    assert_eq!(call(&mesh, "/").0, 403);
}

/// An HTTP/2 request whose `host` header names another authority than its `:authority` is
/// malformed (RFC 9113, section 8.3.1) and refused, so that routing, policies and the
/// application cannot each read a different one.
#[test]
fn http2_requests_with_two_authorities_are_refused() {
    let mesh = Mesh::start(DENY_ADMIN);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let inbound = mesh.servers[0].inbound.clone();
    let status = |host: Option<&'static str>| {
        let inbound = inbound.clone();
        runtime.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(&inbound).await.unwrap();
            let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            let mut request = hyper_request("http://echo.test.svc.cluster.local:8080/");
            if let Some(host) = host {
                request.headers_mut().insert("host", host.parse().unwrap());
            }
            let (response, _) = client.send_request(request, true).unwrap();
            response.await.unwrap().status().as_u16()
        })
    };
    assert_eq!(status(None), 200);
    assert_eq!(status(Some("echo.test.svc.cluster.local:8080")), 200);
    assert_eq!(status(Some("other.example")), 400);
}

fn hyper_request(uri: &str) -> http::Request<()> {
    http::Request::get(uri).body(()).unwrap()
}

/// A policy the sidecar cannot read is rejected (NACK), never read as "anyone"; and a port
/// whose policies never arrived refuses every caller rather than letting them all in.
#[test]
fn a_policy_that_cannot_be_read_is_rejected_and_its_port_refuses() {
    use std::io::Write;
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in app.incoming().map_while(Result::ok) {
            let _ = stream.write_all(b"application\n");
        }
    });
    let port = crate::common::free_port();
    let control = FixedControl::start(unreadable_policy(port, app_port));
    let token = control.token("test", "echo");
    let server = crate::common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "echo",
        "--namespace",
        "test",
        "--service-account",
        "echo",
        "--inbound-port",
        &port.to_string(),
        "--token",
        &token,
    ]);
    server.until_ready();
    crate::common::eventually(
        "the listener is rejected",
        std::time::Duration::from_secs(10),
        || {
            let log = server.log.lock().unwrap();
            log.iter()
                .any(|l| l.contains("configuration rejected (NACK)") && l.contains("no pattern"))
                .then_some(())
                .ok_or_else(|| log.join("\n"))
        },
    );
    // A mesh client: a certificate from the same CA.
    let cert = {
        use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
        let root = |file: &str| std::fs::read_to_string(control.state.path().join(file)).unwrap();
        let issuer = Issuer::from_ca_cert_pem(
            &root("root-cert.pem"),
            KeyPair::from_pem(&root("root-key.pem")).unwrap(),
        )
        .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/test/sa/client"
                .try_into()
                .unwrap(),
        )];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    };
    // Until its chains arrive, a port takes mesh mTLS and HTTP; with no policies known, it
    // allows nothing.
    let answer = crate::clients::tls_exchange(
        &server.inbound,
        cert,
        b"GET / HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
    );
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "the port without readable policies let a caller through: {answer}"
    );
}

/// The ingress gateway enforces the AuthorizationPolicies that select its labels, and
/// `remoteIpBlocks` reads the client's address from `x-forwarded-for` as far back as
/// MeshConfig's `numTrustedProxies` says proxies in front of the gateway can be trusted.
#[test]
fn the_gateway_enforces_its_policies_on_the_client_behind_trusted_proxies() {
    let port = crate::common::free_port();
    let extra = format!(
        "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: test}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/ingress]
  http:
  - route:
    - destination: {{host: echo.test.svc.cluster.local, port: {{number: 8080}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: [/private*]}}}}]
  - from: [{{source: {{remoteIpBlocks: [203.0.113.0/24]}}}}]
  - to: [{{operation: {{paths: [/loopback-only]}}}}]
    when: [{{key: destination.ip, values: [127.0.0.1]}}]
"
    );
    let mesh = Mesh::with_mesh_config(
        SERVICE,
        &extra,
        Some("defaultConfig: {gatewayTopology: {numTrustedProxies: 1}}\n"),
        &["v1"],
        echo_app,
    );
    let config = crate::mesh::config_dir(mesh.dir.path());
    let xds = mesh.control.as_ref().unwrap().xds.clone();
    let mut gateway = crate::common::Gateway::start(&xds, &config);
    let address = format!("127.0.0.1:{port}");
    let get = |path: &str, forwarded_for: Option<&str>| {
        // `|` separates header lines: proxies may append a line rather than to the line.
        let forwarded: String = forwarded_for
            .map(|v| {
                v.split('|')
                    .map(|line| format!("X-Forwarded-For: {line}\r\n"))
                    .collect()
            })
            .unwrap_or_default();
        let answer = raw(
            &address,
            format!(
                "GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n{forwarded}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .unwrap_or(0)
    };
    crate::common::eventually(
        "the gateway routes",
        std::time::Duration::from_secs(60),
        || {
            if let Some(exit) = gateway.0.try_wait().unwrap() {
                panic!("weft gateway exited: {exit}");
            }
            match std::net::TcpStream::connect(&address) {
                Ok(_) if get("/ok", None) == 200 => Ok(()),
                _ => Err("not yet"),
            }
        },
    );
    assert_eq!(get("/private/x", None), 403, "the gateway's DENY on a path");
    assert_eq!(
        get("/loopback-only", None),
        403,
        "destination.ip is the address the gateway was reached at"
    );
    assert_eq!(
        get("/ok", Some("203.0.113.7")),
        403,
        "the client a trusted proxy in front names is denied"
    );
    assert_eq!(
        get("/ok", Some("203.0.113.7, 198.51.100.1")),
        200,
        "an address before the trusted proxy's entry is the client's own claim"
    );
    assert_eq!(
        get("/ok", Some("198.51.100.1|203.0.113.7")),
        403,
        "the trusted proxy's entry on a header line of its own counts too"
    );
}

/// `ports`, `destination.port` and `portLevelMtls` name the workload's own port — the
/// application's, behind a sidecar that fronts it on a port of its own (`--app-port`) —
/// not the sidecar's listener.
#[test]
fn policies_name_the_applications_own_port() {
    let app = echo_app("v1");
    let extra = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-blocked, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: DENY
  rules:
  - to: [{{operation: {{ports: ['{app}'], paths: [/blocked]}}}}]
  - when: [{{key: destination.port, values: ['{app}']}}, {{key: 'request.headers[x-deny]', values: ['yes']}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: echo, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{{app}: {{mode: DISABLE}}}}
"
    );
    let mesh = Mesh::with_apps(&extra, &["v1"], move |_| app);
    assert_eq!(call(&mesh, "/blocked").0, 403, "ports names the app's port");
    let (status, _) = crate::clients::request(
        &mesh.client.outbound,
        "http://echo.test.svc.cluster.local:8080/headers",
        "x-deny: yes\r\n",
    );
    assert_eq!(status, 403, "destination.port names the app's port");
    assert_eq!(call(&mesh, "/open").0, 200);
    let wire = String::from_utf8_lossy(&mesh.wire.lock().unwrap()).into_owned();
    assert!(
        wire.contains("GET /open"),
        "portLevelMtls DISABLE on the app's port: plaintext: {wire:?}"
    );
}
