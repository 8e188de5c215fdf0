//! Listener binds, CONNECT targets and proxy-set headers against hostile clients: what is
//! for the local application stays on loopback whatever `--bind` says; a `CONNECT` leads
//! to mesh services and the outside, never back into this host (loopback, link-local,
//! unspecified addresses, the proxy's own ports); a `Connection` header cannot make a
//! proxy drop the headers it sets; and the only upgrade passed on is WebSocket.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::clients::{raw, read_head, request};
use crate::common::{self, eventually};
use crate::mesh::{Mesh, config_dir};

/// The port of a `host:port`.
fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or("", |(_, port)| port)
}

/// Sends `CONNECT target` through the explicit proxy at `proxy`; returns the response head,
/// lowercased.
fn connect(proxy: &str, target: &str) -> String {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream).unwrap_or_default();
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// With `--bind 0.0.0.0`, the inbound listener and the metrics port take connections from
/// anywhere, but the outbound listener (the explicit proxy), the admin port and the
/// per-upstream ports stay on loopback; with a loopback `--bind`, they take that address.
#[test]
fn what_is_for_the_application_stays_on_loopback_whatever_the_bind_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_dir(dir.path());
    std::fs::create_dir(&config).unwrap();
    let control = common::Control::start(&config);
    let token = common::join_token(&config, "test", "client");
    for (bind, open, local) in [
        ("0.0.0.0", "0.0.0.0:", "127.0.0.1:"),
        ("127.0.0.3", "127.0.0.3:", "127.0.0.3:"),
    ] {
        let proxy = common::Proxy::start(&[
            "--control",
            &control.xds,
            "--name",
            "client",
            "--namespace",
            "test",
            "--service-account",
            "client",
            "--token",
            &token,
            "--bind",
            bind,
            "--upstream",
            "0=echo:8080",
        ]);
        assert!(proxy.inbound.starts_with(open), "inbound {}", proxy.inbound);
        assert!(proxy.metrics.starts_with(open), "metrics {}", proxy.metrics);
        assert!(
            proxy.outbound.starts_with(local),
            "outbound {}",
            proxy.outbound
        );
        assert!(proxy.admin.starts_with(local), "admin {}", proxy.admin);
        let (upstream, _) = &proxy.upstreams[0];
        assert!(upstream.starts_with(local), "upstream {upstream}");
        proxy.until_ready();
    }
}

/// A `CONNECT` to a literal loopback, link-local or unspecified address (IPv4, IPv6, IPv4
/// in IPv6), or to a name that resolves to one, gets `403` with `connect_denied` in the
/// access log, whatever listens there (the proxy's own admin port, a mesh workload's
/// inbound port). A `CONNECT` to the mesh service whose endpoints are on those same
/// loopback addresses still works: the control plane gave them.
#[test]
fn connect_never_leads_back_into_this_host_but_mesh_services_still_work() {
    let mesh = Mesh::start("");
    let outbound = &mesh.client.outbound;
    let admin = port_of(&mesh.client.admin);
    let inbound = port_of(&mesh.servers[0].inbound);
    let refused = [
        format!("127.0.0.1:{admin}"),
        format!("127.0.0.1:{}", port_of(outbound)),
        format!("127.0.0.2:{inbound}"),
        format!("127.1.2.3:{admin}"),
        format!("[::1]:{admin}"),
        format!("[::ffff:127.0.0.1]:{admin}"),
        format!("localhost:{admin}"),
        "169.254.169.254:80".to_string(),
        "[fe80::1]:80".to_string(),
        format!("0.0.0.0:{admin}"),
        format!("[::]:{admin}"),
    ];
    for target in &refused {
        let head = connect(outbound, target);
        assert!(head.starts_with("http/1.1 403"), "CONNECT {target}: {head}");
        assert!(
            head.contains("weft-response-flags: connect_denied\r\n"),
            "CONNECT {target}: {head}"
        );
    }
    eventually(
        "the access log names the refusals",
        Duration::from_secs(10),
        || {
            let log = mesh.client.log.lock().unwrap();
            let denied = log
                .iter()
                .filter(|line| {
                    line.contains("CONNECT")
                        && line.contains("status=403")
                        && line.contains("flags=\"connect_denied\"")
                })
                .count();
            (denied == refused.len()).then_some(()).ok_or(denied)
        },
    );

    // The mesh service, by its short name: its endpoints are on 127.0.0.1 and 127.0.0.2.
    let head = connect(outbound, "echo:8080");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // Bad targets are answered, not a crash.
    for target in ["[zz::1]:80", "127.0.0.1", "no-such-host.invalid:80"] {
        let head = connect(outbound, target);
        assert!(head.starts_with("http/1.1 "), "CONNECT {target}: {head}");
        assert!(
            !head.starts_with("http/1.1 200"),
            "CONNECT {target}: {head}"
        );
    }
    let (status, _) = request(outbound, "http://echo.test.svc.cluster.local:8080/", "");
    assert_eq!(status, 200, "the sidecar still serves");
}

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
