//! RequestAuthentication, enforced by the server's sidecar: tokens signed by a real JOSE
//! library (jwcrypto, `tests/clients/jwt_tokens.py`) with RS256 and ES256, key sets served
//! over HTTP on loopback and fetched by `weft control` (and rotated there), or given inline.
//! A token that does not verify gets 401; a request without one passes with no identity,
//! which Istio's "require a JWT" policy then refuses; `requestPrincipals` and the
//! `request.auth.*` conditions read what the token says.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::apps::echo_app;
use crate::clients::request;
use crate::common::eventually;
use crate::common::grpc::{clients_dir, python};
use crate::mesh::{Mesh, SERVICE};

/// Keys made by jwcrypto in a folder of their own, and tokens signed with them.
pub struct Tokens {
    dir: tempfile::TempDir,
}

impl Tokens {
    /// Makes the keys `rsa-1`, `rsa-2` (RSA) and `ec-1` (EC P-256).
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(python())
            .arg(script())
            .arg("keys")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "jwt_tokens.py keys failed");
        Tokens { dir }
    }

    /// The public key set of `kids`.
    pub fn jwks(&self, kids: &[&str]) -> String {
        let output = Command::new(python())
            .arg(script())
            .arg("jwks")
            .arg(self.dir.path())
            .args(kids)
            .output()
            .unwrap();
        assert!(output.status.success(), "jwt_tokens.py jwks failed");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// Tokens signed by key `kid` with `alg`, one per set of claims.
    pub fn sign(&self, kid: &str, alg: &str, claims: &[Value]) -> Vec<String> {
        let mut child = Command::new(python())
            .arg(script())
            .arg("sign")
            .arg(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for claims in claims {
            writeln!(
                stdin,
                "{}",
                json!({"kid": kid, "alg": alg, "claims": claims})
            )
            .unwrap();
        }
        drop(stdin);
        let tokens: Vec<String> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map(Result::unwrap)
            .collect();
        assert!(child.wait().unwrap().success(), "jwt_tokens.py sign failed");
        assert_eq!(tokens.len(), claims.len());
        tokens
    }

    /// One token.
    pub fn one(&self, kid: &str, alg: &str, claims: Value) -> String {
        self.sign(kid, alg, &[claims]).remove(0)
    }
}

fn script() -> PathBuf {
    clients_dir().join("jwt_tokens.py")
}

/// Seconds since the epoch, `offset` from now.
pub fn at(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    i64::try_from(now).unwrap() + offset
}

/// A token with `alg: none` and no signature, claiming `claims`.
pub fn unsigned(claims: &Value) -> String {
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        part(&json!({"alg": "none", "typ": "JWT"})),
        part(claims)
    )
}

/// A key set served over HTTP on loopback, at any path; its content can change.
pub struct JwksServer {
    pub url: String,
    pub content: Arc<Mutex<String>>,
}

impl JwksServer {
    pub fn start(content: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/keys.json", listener.local_addr().unwrap());
        let content = Arc::new(Mutex::new(content));
        let served = content.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer);
                let body = served.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer { url, content }
    }
}

const ISSUER: &str = "https://issuer.test";
const INLINE_ISSUER: &str = "https://inline.test";

/// `echo` takes tokens of two issuers: one whose keys `weft control` fetches from
/// `jwks_uri`, in the default places (`Authorization: Bearer`, `access_token`), with outputs;
/// one with its key set inline, in its own header, parameter and cookie, forwarded. Istio's
/// "require a JWT" policy (any request principal) guards all but `/public`; a DENY policy
/// refuses group `blocked`, the principal of `mallory`, and `/admin` unless the token was
/// issued to `admin-cli`.
fn config(jwks_uri: &str, inline_jwks: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}
    audiences: [echo]
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-jwt-group, claim: group}}]
  - issuer: {INLINE_ISSUER}
    jwks: '{inline_jwks}'
    fromHeaders: [{{name: x-token}}]
    fromParams: [token]
    fromCookies: [session]
    forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  rules:
  - from: [{{source: {{requestPrincipals: ['*']}}}}]
  - to: [{{operation: {{paths: [/public*]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: refuse, namespace: test}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  action: DENY
  rules:
  - when: [{{key: 'request.auth.claims[group]', values: [blocked]}}]
  - from: [{{source: {{requestPrincipals: [{ISSUER}/mallory]}}}}]
  - to: [{{operation: {{paths: [/admin*]}}}}]
    when: [{{key: request.auth.presenter, notValues: [admin-cli]}}]
"
    )
}

/// A request through the client's sidecar with extra header lines: the status and the body
/// (the application's echo of what arrived, or the proxy's reason).
fn call(mesh: &Mesh, path: &str, headers: &str) -> (u16, String) {
    request(
        &mesh.client.outbound,
        &format!("http://echo.test.svc.cluster.local:8080{path}"),
        headers,
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Claims of a good token of the fetched issuer, with `extra` added.
fn claims(subject: &str, extra: Value) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "sub": subject, "aud": "echo",
        "iat": at(0), "exp": at(600), "group": "dev",
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}

#[test]
fn request_authentication_verifies_tokens_and_policies_read_them() {
    let tokens = Tokens::new();
    let jwks = JwksServer::start(tokens.jwks(&["rsa-1"]));
    let mesh = Mesh::with_control_flags(
        SERVICE,
        &config(&jwks.url, &tokens.jwks(&["ec-1"])),
        None,
        &["--jwks-refresh-interval", "1s"],
        &["v1"],
        echo_app,
    );
    let good = tokens.one("rsa-1", "RS256", claims("alice", json!({})));
    // The key set is fetched by the control plane and pushed: the good token passes once it
    // has arrived.
    eventually(
        "a token of the fetched key set passes",
        Duration::from_secs(20),
        || match call(&mesh, "/private", &bearer(&good)) {
            (200, body) => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        },
    );

    // What a verified token adds to the request, and takes from it.
    let (status, seen) = call(&mesh, "/private", &bearer(&good));
    assert_eq!(status, 200);
    assert!(seen.contains("x-jwt-group: dev"), "{seen}");
    let payload = seen
        .lines()
        .find_map(|l| l.strip_prefix("x-jwt-payload: "))
        .expect("the payload header");
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim()).unwrap()).unwrap();
    assert_eq!(payload["sub"], "alice");
    assert!(
        !seen.to_ascii_lowercase().contains("authorization:"),
        "the token is not forwarded: {seen}"
    );

    // Without a token: no identity. `/public` passes, and headers only a token may set are
    // removed; the rest is refused by the "require a JWT" policy.
    let (status, seen) = call(&mesh, "/public", "x-jwt-group: admin\r\n");
    assert_eq!(status, 200);
    assert!(
        !seen.contains("x-jwt-group"),
        "a client cannot set it: {seen}"
    );
    assert_eq!(call(&mesh, "/private", "").0, 403);

    // Tokens that do not verify get 401, with Envoy's reason.
    let bad = [
        (
            "expired",
            tokens.one("rsa-1", "RS256", claims("alice", json!({"exp": at(-3600)}))),
        ),
        (
            "not yet valid",
            tokens.one("rsa-1", "RS256", claims("alice", json!({"nbf": at(3600)}))),
        ),
        (
            "another audience",
            tokens.one("rsa-1", "RS256", claims("alice", json!({"aud": "other"}))),
        ),
        (
            "another issuer",
            tokens.one(
                "rsa-1",
                "RS256",
                claims("alice", json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "a key not in the set",
            tokens.one("rsa-2", "RS256", claims("alice", json!({}))),
        ),
        ("alg none", unsigned(&claims("alice", json!({})))),
        ("a changed payload", {
            let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(claims("mallory", json!({})).to_string());
            parts.join(".")
        }),
        ("not a JWT", "abc.def".to_string()),
    ];
    for (what, token) in &bad {
        let (status, body) = call(&mesh, "/public", &bearer(token));
        assert_eq!(status, 401, "a token with {what} is refused: {body}");
    }
    assert!(
        call(&mesh, "/public", &bearer(&bad[0].1))
            .1
            .contains("Jwt is expired")
    );
    // A CORS preflight passes the token check unverified, as in Istio.
    let host = "echo.test.svc.cluster.local:8080";
    let preflight = crate::clients::raw(
        &mesh.client.outbound,
        format!(
            "OPTIONS http://{host}/public HTTP/1.1\r\nHost: {host}\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n{}Connection: close\r\n\r\n",
            bearer(&bad[0].1)
        )
        .as_bytes(),
    );
    assert!(preflight.starts_with("HTTP/1.1 200"), "{preflight}");

    // Policies read the token: a claim, the request principal, the presenter.
    let blocked = tokens.one("rsa-1", "RS256", claims("bob", json!({"group": "blocked"})));
    assert_eq!(call(&mesh, "/private", &bearer(&blocked)).0, 403);
    let mallory = tokens.one("rsa-1", "RS256", claims("mallory", json!({})));
    assert_eq!(call(&mesh, "/private", &bearer(&mallory)).0, 403);
    assert_eq!(call(&mesh, "/admin", &bearer(&good)).0, 403);
    let admin = tokens.one(
        "rsa-1",
        "RS256",
        claims("alice", json!({"azp": "admin-cli"})),
    );
    assert_eq!(call(&mesh, "/admin", &bearer(&admin)).0, 200);

    // The inline issuer's ES256 tokens, in its own header, parameter and cookie; forwarded.
    let es = tokens.one(
        "ec-1",
        "ES256",
        json!({"iss": INLINE_ISSUER, "sub": "carol", "exp": at(600)}),
    );
    let (status, seen) = call(&mesh, "/private", &format!("x-token: {es}\r\n"));
    assert_eq!(status, 200);
    assert!(
        seen.contains(&format!("x-token: {es}")),
        "forwarded: {seen}"
    );
    assert_eq!(call(&mesh, &format!("/private?token={es}"), "").0, 200);
    assert_eq!(
        call(
            &mesh,
            "/private",
            &format!("Cookie: theme=dark; session={es}\r\n")
        )
        .0,
        200
    );
    // Its tokens are looked for only where it says: in `Authorization` they meet the other
    // issuer, which does not know them.
    assert_eq!(call(&mesh, "/private", &bearer(&es)).0, 401);

    // Key rotation: the issuer now signs with rsa-2 only; the control plane fetches the new
    // set and pushes it, and tokens of the old key stop passing.
    *jwks.content.lock().unwrap() = tokens.jwks(&["rsa-2"]);
    let rotated = tokens.one("rsa-2", "RS256", claims("alice", json!({})));
    eventually(
        "a token of the new key passes",
        Duration::from_secs(20),
        || match call(&mesh, "/private", &bearer(&rotated)).0 {
            200 => Ok(()),
            status => Err(status),
        },
    );
    assert_eq!(call(&mesh, "/private", &bearer(&good)).0, 401);
}

/// A key set that cannot be fetched fails closed: the issuer's tokens get 401 (and a
/// request without a token still passes where no policy requires one).
#[test]
fn an_unreachable_key_set_refuses_its_tokens() {
    let tokens = Tokens::new();
    let unreachable = format!("http://127.0.0.1:{}/keys.json", crate::common::free_port());
    let mesh = Mesh::with_control_flags(
        SERVICE,
        &config(&unreachable, &tokens.jwks(&["ec-1"])),
        None,
        &[],
        &["v1"],
        echo_app,
    );
    let good = tokens.one("rsa-1", "RS256", claims("alice", json!({})));
    let es = tokens.one(
        "ec-1",
        "ES256",
        json!({"iss": INLINE_ISSUER, "sub": "carol", "exp": at(600)}),
    );
    // Once the inline issuer is enforced, the other one is too.
    eventually(
        "the inline issuer's token passes",
        Duration::from_secs(20),
        || match call(&mesh, "/private", &format!("x-token: {es}\r\n")).0 {
            200 => Ok(()),
            status => Err(status),
        },
    );
    let (status, body) = call(&mesh, "/private", &bearer(&good));
    assert_eq!(status, 401, "{body}");
    assert_eq!(call(&mesh, "/public", "").0, 200);
}

/// At the ingress gateway: its own RequestAuthentication (selecting its labels) verifies
/// tokens before routing, and VirtualService matches on `@request.auth.claims` route by a
/// verified claim — `group: beta` and the nested `org.team: canary` go to `v2`, the rest
/// to `v1`; a claim a client writes as a header routes nothing.
#[test]
fn the_gateway_routes_by_verified_claims() {
    let tokens = Tokens::new();
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
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: edge-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {INLINE_ISSUER}
    jwks: '{jwks}'
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: test}}
spec:
  host: echo.test.svc.cluster.local
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: test}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/ingress]
  http:
  - match:
    - headers: {{'@request.auth.claims.group': {{exact: beta}}}}
    - headers: {{'@request.auth.claims.org.team': {{exact: canary}}}}
    route:
    - destination: {{host: echo.test.svc.cluster.local, subset: v2, port: {{number: 8080}}}}
  - route:
    - destination: {{host: echo.test.svc.cluster.local, subset: v1, port: {{number: 8080}}}}
",
        jwks = tokens.jwks(&["ec-1"]),
    );
    let mesh = Mesh::with_versions(&extra, &["v1", "v2"]);
    let config = crate::mesh::config_dir(mesh.dir.path());
    let xds = mesh.control.as_ref().unwrap().xds.clone();
    let mut gateway = crate::common::Gateway::start(&xds, &config);
    let address = format!("127.0.0.1:{port}");
    let get = |headers: &str| {
        let answer = crate::clients::raw(
            &address,
            format!(
                "GET / HTTP/1.1\r\nHost: shop.example.com\r\n{headers}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .unwrap_or(0);
        let served_by = answer
            .lines()
            .find_map(|l| l.strip_prefix("served-by: "))
            .unwrap_or_default()
            .to_string();
        (status, served_by)
    };
    let token = |claims: Value| {
        let mut all = json!({"iss": INLINE_ISSUER, "sub": "dave", "exp": at(600)});
        if let (Some(all), Some(claims)) = (all.as_object_mut(), claims.as_object()) {
            all.extend(claims.clone());
        }
        bearer(&tokens.one("ec-1", "ES256", all))
    };
    eventually("the gateway routes", Duration::from_secs(60), || {
        if let Some(exit) = gateway.0.try_wait().unwrap() {
            panic!("weft gateway exited: {exit}");
        }
        if std::net::TcpStream::connect(&address).is_err() {
            return Err("not listening yet".to_string());
        }
        match get("") {
            (200, served_by) if served_by == "v1" => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    });
    assert_eq!(get(&token(json!({"group": "beta"}))), (200, "v2".into()));
    assert_eq!(
        get(&token(json!({"org": {"team": "canary"}}))),
        (200, "v2".into())
    );
    assert_eq!(get(&token(json!({"group": "stable"}))), (200, "v1".into()));
    assert_eq!(
        get("group: beta\r\nx-jwt-claim-group: beta\r\n").1,
        "v1",
        "headers are not claims"
    );
    let expired = token(json!({"group": "beta", "exp": at(-3600)}));
    assert_eq!(get(&expired).0, 401, "the gateway refuses a bad token");
}
