//! `weft gateway`: Istio Gateway resources and the VirtualServices bound to them, served by a
//! real gateway in front of a real sidecar, configured by a real `weft control`, called with
//! curl (plain HTTP, TLS `SIMPLE`, TLS `MUTUAL`).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::eventually;

/// An application that answers every request with the request's head.
fn head_echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(&stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
            head.len()
        );
        if (&stream).write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// curl with `args`; its status line's code (0 when it failed) and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn a_gateway_serves_plain_http_simple_and_mutual_tls_into_the_mesh() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    common::pki(certs, "shop", "shop.example.com", false);
    common::pki(certs, "partner", "partner.example.com", false);
    common::pki(certs, "client", "client.example.com", true);
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let (http, https, mutual, redirect, passthrough) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let file = |name: &str| certs.join(name).display().to_string();
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec:
  mtls: {{mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: test}}
spec:
  hosts: [echo.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector:
    labels: {{app: echo}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {http}, name: http, protocol: HTTP}}
    hosts: ['*']
  - port: {{number: {https}, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
  - port: {{number: {redirect}, name: http-redirect, protocol: HTTP}}
    hosts: [shop.example.com, moved.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: {passthrough}, name: tls-passthrough, protocol: TLS}}
    hosts: ['*']
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {mutual}, name: https-partner, protocol: HTTPS}}
    hosts: [partner.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: test}}
spec:
  hosts: [shop.example.com, partner.example.com]
  gateways: [istio-system/ingress]
  http:
  - match: [{{uri: {{prefix: /echo/which}}, gateways: [mesh]}}]
    route: [{{destination: {{host: echo, port: {{number: 8080}}}}}}]
    headers: {{request: {{set: {{x-rule: mesh}}}}}}
  - match: [{{uri: {{prefix: /echo/which}}, gateways: [istio-system/ingress]}}]
    route: [{{destination: {{host: echo, port: {{number: 8080}}}}}}]
    headers: {{request: {{set: {{x-rule: gateway}}}}}}
  - match: [{{uri: {{prefix: /echo}}}}]
    route: [{{destination: {{host: echo, port: {{number: 8080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inside, namespace: test}}
spec:
  hosts: [inside.example.com]
  http:
  - route: [{{destination: {{host: echo}}}}]
",
            file("shop.pem"),
            file("shop-key.pem"),
            file("partner.pem"),
            file("partner-key.pem"),
            file("client-ca.pem"),
        ),
    )
    .unwrap();
    let control = common::Control::start(&config);
    let server = common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "echo",
        "--namespace",
        "test",
        "--service",
        "echo:8080",
        "--labels",
        "app=echo",
        "--service-account",
        "echo",
        "--app-port",
        &head_echo_app().to_string(),
        "--token",
        &common::join_token(&config, "test", "echo"),
    ]);
    server.until_ready();
    let mut gateway = common::Gateway::start(&control.xds, &config);
    let plain = format!("http://127.0.0.1:{http}/echo");
    let (status, body) = eventually("the gateway routes", Duration::from_secs(60), || {
        let (status, body) = curl(&["-H", "host: shop.example.com", &plain]);
        if status == 200 {
            return Ok((status, body));
        }
        if let Some(exit) = gateway.0.try_wait().unwrap() {
            panic!("weft gateway exited: {exit}");
        }
        Err(format!("{status} {body}"))
    });
    assert_eq!(status, 200);
    let lower = body.to_ascii_lowercase();
    // Into the mesh over mTLS, with the gateway's identity.
    assert!(
        lower.contains("uri=spiffe://cluster.local/ns/istio-system/sa/ingress"),
        "{body}"
    );
    assert!(lower.contains("x-forwarded-proto: http\r\n"), "{body}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    // A `Connection` header naming the headers the gateway sets does not remove them, and
    // an upgrade other than WebSocket is refused (403), as Envoy refuses it.
    let (status, body) = curl(&[
        "-H",
        "host: shop.example.com",
        "-H",
        "connection: X-Forwarded-For, X-Forwarded-Proto, Host",
        &plain,
    ]);
    assert_eq!(status, 200, "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(lower.contains("x-forwarded-proto: http\r\n"), "{body}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{body}");
    assert!(lower.contains("\r\nhost: shop.example.com"), "{body}");
    let (status, body) = curl(&[
        "-H",
        "host: shop.example.com",
        "-H",
        "upgrade: foo/1",
        "-H",
        "connection: upgrade",
        &plain,
    ]);
    assert_eq!(status, 403, "{body}");

    // A match naming only `mesh` in its `gateways` is not used at the gateway; one naming
    // the gateway is.
    let (status, body) = curl(&[
        "-H",
        "host: shop.example.com",
        &format!("http://127.0.0.1:{http}/echo/which"),
    ]);
    assert_eq!(status, 200);
    assert!(
        body.to_ascii_lowercase().contains("x-rule: gateway\r\n"),
        "{body}"
    );

    // Hosts no bound VirtualService routes: 404, whether unknown or routed for the mesh only.
    for host in ["nobody.example.com", "inside.example.com"] {
        let (status, _) = curl(&["-H", &format!("host: {host}"), &plain]);
        assert_eq!(status, 404, "{host}");
    }
    // A path the VirtualService does not route.
    let (status, _) = curl(&[
        "-H",
        "host: shop.example.com",
        &format!("http://127.0.0.1:{http}/other"),
    ]);
    assert_eq!(status, 404);

    // `httpsRedirect`: a 301 to the same host and path over https, for a host a
    // VirtualService routes and for one none does; other hosts are not the server's.
    for host in ["shop.example.com", "moved.example.com"] {
        let output = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
            .args(["-w", "%{http_code} %{redirect_url}", "-H"])
            .arg(format!("host: {host}"))
            .arg(format!("http://127.0.0.1:{redirect}/echo?page=2"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("301 https://{host}/echo?page=2"),
            "{host}"
        );
    }
    let (status, _) = curl(&[
        "-H",
        "host: nobody.example.com",
        &format!("http://127.0.0.1:{redirect}/echo"),
    ]);
    assert_eq!(status, 404);

    // A server Weft does not serve (PASSTHROUGH) gets no listener, not plaintext HTTP.
    let (status, _) = curl(&[
        "-H",
        "host: shop.example.com",
        &format!("http://127.0.0.1:{passthrough}/echo"),
    ]);
    assert_eq!(
        status, 0,
        "nothing listens on the PASSTHROUGH server's port"
    );

    // TLS SIMPLE: the server's certificate, found by SNI.
    let resolve = format!("shop.example.com:{https}:127.0.0.1");
    let shop = format!("https://shop.example.com:{https}/echo");
    let (status, body) = curl(&[
        "--cacert",
        &file("shop-ca.pem"),
        "--resolve",
        &resolve,
        &shop,
    ]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("x-forwarded-proto: https\r\n"),
        "{body}"
    );
    // Over HTTP/2 too, as curl offers it in ALPN.
    let (status, _) = curl(&[
        "--http2",
        "--cacert",
        &file("shop-ca.pem"),
        "--resolve",
        &resolve,
        &shop,
    ]);
    assert_eq!(status, 200);
    // An SNI name no server answers: no handshake.
    let (status, _) = curl(&[
        "--cacert",
        &file("shop-ca.pem"),
        "--resolve",
        &format!("else.example.com:{https}:127.0.0.1"),
        &format!("https://else.example.com:{https}/echo"),
    ]);
    assert_eq!(status, 0);
    // Plaintext on a TLS-only port: refused.
    let (status, _) = curl(&[&format!("http://127.0.0.1:{https}/echo")]);
    assert_eq!(status, 0);

    // TLS MUTUAL: only with a client certificate of the configured CA.
    let resolve = format!("partner.example.com:{mutual}:127.0.0.1");
    let partner = format!("https://partner.example.com:{mutual}/echo");
    let with_cert = [
        "--cacert",
        &file("partner-ca.pem"),
        "--resolve",
        &resolve,
        "--cert",
        &file("client.pem"),
        "--key",
        &file("client-key.pem"),
        &partner,
    ];
    assert_eq!(curl(&with_cert).0, 200);
    let (status, _) = curl(&[
        "--cacert",
        &file("partner-ca.pem"),
        "--resolve",
        &resolve,
        &partner,
    ]);
    assert_eq!(status, 0, "no client certificate, no request");

    drop(gateway);
}

/// A gateway is no forward proxy unless asked (`--forward-proxy`): without the flag it
/// opens no outbound listener; with it, the outbound listener is on loopback, as the admin
/// port is, even when `--bind 0.0.0.0` opens the gateway's other ports to every host.
#[test]
fn a_gateway_opens_no_forward_proxy_unless_asked() {
    let help = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--forward-proxy"),
        "weft gateway --help names the flag"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let control = common::Control::start(&config);
    for (flags, outbound) in [(&[][..], "off"), (&["--forward-proxy"][..], "127.0.0.1:")] {
        let mut gateway = common::Gateway(
            common::Gateway::command(&control.xds, &config)
                .args(["--bind", "0.0.0.0", "--log", "info"])
                .args(flags)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stderr = gateway.0.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(ports) = line.split("listening: ").nth(1) {
                    let _ = tx.send(ports.to_string());
                }
            }
        });
        let ports = rx.recv_timeout(Duration::from_secs(60));
        drop(gateway);
        let ports = ports.expect("weft gateway logs its ports");
        let words: Vec<&str> = ports.split_whitespace().collect();
        let after = |name: &str| {
            let at = words.iter().position(|w| *w == name);
            at.and_then(|i| words.get(i + 1)).copied().unwrap_or("")
        };
        assert!(
            after("outbound").starts_with(outbound),
            "{flags:?}: {ports}"
        );
        assert!(
            after("admin").starts_with("127.0.0.1:"),
            "{flags:?}: {ports}"
        );
        assert!(
            after("inbound").starts_with("0.0.0.0:"),
            "{flags:?}: {ports}"
        );
    }
}

/// Each Gateway server keeps its own routes: on one port, a SIMPLE server for
/// `shop.example.com` and a MUTUAL one for `partner.example.com`; a client that reached the
/// SIMPLE server (by SNI, without a certificate) cannot ask it for the MUTUAL server's host
/// (421), and each server serves its own. The servers' TLS settings hold: the SIMPLE one
/// speaks TLS 1.3 only (`minProtocolVersion`), and a MUTUAL server takes only the client
/// certificates its `subjectAltNames` name.
#[test]
fn a_gateway_server_serves_only_its_own_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    common::pki(certs, "shop", "shop.example.com", false);
    common::pki(certs, "partner", "partner.example.com", false);
    common::pki(certs, "client", "client.example.com", true);
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    let (port, picky) = (common::free_port(), common::free_port());
    let file = |name: &str| certs.join(name).display().to_string();
    let route = |name: &str, host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: test}}
spec:
  hosts: [{host}]
  gateways: [istio-system/ingress]
  http:
  - route:
    - destination: {{host: echo.test.svc.cluster.local, port: {{number: 8080}}}}
---
"
        )
    };
    std::fs::write(
        config.join("mesh.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: test}}
spec:
  hosts: [echo.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector:
    labels: {{app: echo}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: https-shop, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {shop}, privateKey: {shop_key}, minProtocolVersion: TLSV1_3}}
  - port: {{number: {port}, name: https-partner, protocol: HTTPS}}
    hosts: [partner.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {partner}, privateKey: {partner_key}, caCertificates: {client_ca}, subjectAltNames: [client.example.com]}}
  - port: {{number: {picky}, name: https-picky, protocol: HTTPS}}
    hosts: [partner.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {partner}, privateKey: {partner_key}, caCertificates: {client_ca}, subjectAltNames: [nobody.example.com]}}
---
{}{}",
            route("shop", "shop.example.com"),
            route("partner", "partner.example.com"),
            shop = file("shop.pem"),
            shop_key = file("shop-key.pem"),
            partner = file("partner.pem"),
            partner_key = file("partner-key.pem"),
            client_ca = file("client-ca.pem"),
        ),
    )
    .unwrap();
    let control = common::Control::start(&config);
    let server = common::Proxy::start(&[
        "--control",
        &control.xds,
        "--name",
        "echo",
        "--namespace",
        "test",
        "--service",
        "echo:8080",
        "--labels",
        "app=echo",
        "--service-account",
        "echo",
        "--app-port",
        &head_echo_app().to_string(),
        "--token",
        &common::join_token(&config, "test", "echo"),
    ]);
    server.until_ready();
    let _gateway = common::Gateway::start(&control.xds, &config);
    let resolve = |host: &str| format!("{host}:{port}:127.0.0.1");
    let shop_ca = file("shop-ca.pem");
    let shop = |host_header: &str| {
        curl(&[
            "--cacert",
            &shop_ca,
            "--resolve",
            &resolve("shop.example.com"),
            "-H",
            &format!("host: {host_header}"),
            &format!("https://shop.example.com:{port}/"),
        ])
    };
    eventually("the SIMPLE server routes", Duration::from_secs(60), || {
        let (status, body) = shop("shop.example.com");
        (status == 200)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    });
    assert_eq!(
        shop("partner.example.com").0,
        421,
        "the MUTUAL server's host through the SIMPLE server"
    );
    assert_eq!(shop("other.example.com").0, 404, "a host no server has");
    let partner = |port: u16| {
        curl(&[
            "--cacert",
            &file("partner-ca.pem"),
            "--cert",
            &file("client.pem"),
            "--key",
            &file("client-key.pem"),
            "--resolve",
            &format!("partner.example.com:{port}:127.0.0.1"),
            &format!("https://partner.example.com:{port}/"),
        ])
    };
    let (status, body) = partner(port);
    assert_eq!(
        status, 200,
        "the MUTUAL server with a client certificate: {body}"
    );
    assert_eq!(
        partner(picky).0,
        0,
        "a client certificate subjectAltNames does not name is refused"
    );
    let old_tls = curl(&[
        "--tls-max",
        "1.2",
        "--cacert",
        &shop_ca,
        "--resolve",
        &resolve("shop.example.com"),
        &format!("https://shop.example.com:{port}/"),
    ]);
    assert_eq!(
        old_tls.0, 0,
        "TLS 1.2 to a TLS 1.3-only server: {}",
        old_tls.1
    );
}
