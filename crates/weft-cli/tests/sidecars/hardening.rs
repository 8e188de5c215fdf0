//! Listener binds, CONNECT targets and proxy-set headers against hostile clients: a
//! `Connection` header cannot make a proxy drop the headers it sets; and the only upgrade
//! passed on is WebSocket.

use crate::clients::{raw, request};
use crate::mesh::Mesh;

/// A `Connection` header naming the headers the proxies set or rely on (`Host`,
/// `x-forwarded-client-cert`) does not make them drop those headers: the application
/// still gets its Host at the inbound listener, and the caller's identity through both
/// sidecars.
#[test]
fn connection_cannot_name_away_the_headers_the_proxies_set() {
    let mesh = Mesh::start("");
    let host = "echo.test.svc.cluster.local:8080";
    // Plaintext straight to the server's sidecar (no PeerAuthentication: PERMISSIVE).
    let answer = raw(
        &mesh.servers[0].inbound,
        format!("GET /direct HTTP/1.1\r\nHost: {host}\r\nConnection: Host, X-Forwarded-Client-Cert, close\r\n\r\n")
            .as_bytes(),
    )
    .to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\r\nhost: {host}\r\n")),
        "{answer}"
    );

    // Through both sidecars.
    let (status, body) = request(
        &mesh.client.outbound,
        &format!("http://{host}/through"),
        "Connection: Host, X-Forwarded-Client-Cert, X-Request-Id\r\n",
    );
    let body = body.to_ascii_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\r\nhost: {host}\r\n")), "{body}");
    assert!(
        body.contains("x-forwarded-client-cert: by=spiffe://cluster.local/ns/test/sa/echo;"),
        "{body}"
    );
}

/// Only WebSocket is upgraded to (the upgrade Istio allows on its routes): any other
/// `Upgrade` gets `403 upgrade_failed`, as from Envoy, at both sidecars' listeners, and
/// never reaches the application; an `h2c` upgrade is dropped and the request served as
/// plain HTTP/1.1, as Envoy does.
#[test]
fn only_websocket_upgrades_are_passed_on() {
    let mesh = Mesh::start("");
    let host = "echo.test.svc.cluster.local:8080";
    let upgrade = "Upgrade: foo/1\r\nConnection: Upgrade, close\r\n";
    for (addr, target) in [
        (&mesh.client.outbound, format!("http://{host}/up")),
        (&mesh.servers[0].inbound, "/up".to_string()),
    ] {
        let answer = raw(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n").as_bytes(),
        )
        .to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 403"), "{addr}: {answer}");
        assert!(!answer.contains("served-by"), "{addr}: {answer}");
    }
    let answer = raw(
        &mesh.client.outbound,
        format!("GET http://{host}/up HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n").as_bytes(),
    )
    .to_ascii_lowercase();
    assert!(
        answer.contains("weft-response-flags: upgrade_failed\r\n"),
        "{answer}"
    );

    let (status, body) = request(
        &mesh.client.outbound,
        &format!("http://{host}/h2c"),
        "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    );
    let body = body.to_ascii_lowercase();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("upgrade:"), "{body}");
    assert!(!body.contains("http2-settings:"), "{body}");
}
