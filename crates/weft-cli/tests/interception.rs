//! Transparent interception: an application that knows nothing of the mesh dials a service's
//! address; an iptables rule redirects the connection to its sidecar's outbound listener,
//! which learns the original destination (`SO_ORIGINAL_DST`) and routes it through the mesh
//! (mTLS to the server's sidecar), or passes it through to where it was going when the mesh
//! has no route for it.
//!
//! Everything runs in a network namespace made for the test, so the rules touch nothing
//! else. **Needs root** (network namespaces and iptables); without it the test fails and says
//! so. CI runs as root.

mod common;

use common::netns::{NetNs, run};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

/// The address of the `echo` service (a ServiceEntry VIP), and an address outside the mesh.
const SERVICE_VIP: &str = "240.240.0.1";
const OUTSIDE: &str = "240.240.0.2";

/// The user the client's sidecar runs as; the redirect rule leaves its own traffic alone.
const PROXY_UID: u32 = 1337;

const CONFIG: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: test}
spec:
  hosts: [echo.test.svc.cluster.local]
  addresses: [240.240.0.1]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector:
    labels: {app: echo}
";

/// An HTTP application that answers with a `name` and the request head it received.
fn app(bind: &str, name: &'static str) -> u16 {
    let listener = TcpListener::bind(bind).expect("the app binds");
    let port = listener.local_addr().expect("bound").port();
    std::thread::spawn(move || serve_app(listener, name));
    port
}

/// A request that knows nothing of proxies: a plain connection to `addr`.
fn plain_get(addr: &str, host: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("sends");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn redirected_connections_cross_the_mesh_or_pass_through() {
    let netns = NetNs::new("interception", &["240.240.0.1/32", "240.240.0.2/32"]);
    let name = netns.name().to_string();
    netns.enter(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        std::fs::write(config.join("echo.yaml"), CONFIG).expect("config");
        let control = common::Control::start(&config);

        let echo = app("127.0.0.1:0", "echo").to_string();
        let server_token = common::join_token(&config, "test", "echo");
        let server = common::Proxy::start(&[
            "--control",
            &control.xds,
            "--name",
            "echo-v1",
            "--namespace",
            "test",
            "--service",
            "echo:8080",
            "--labels",
            "app=echo",
            "--service-account",
            "echo",
            "--app-port",
            &echo,
            "--token",
            &server_token,
        ]);
        let client_token = common::join_token(&config, "test", "client");
        let client = common::Proxy::start_as(
            Some(PROXY_UID),
            &[
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
            ],
        );
        server.until_ready();
        client.until_ready();
        // Istio's rule: every TCP connection the application makes goes to the sidecar,
        // except the sidecar's own.
        let outbound_port = client
            .outbound
            .rsplit_once(':')
            .map(|(_, port)| port.to_string())
            .expect("a port");
        run(Command::new("ip").args([
            "netns",
            "exec",
            &name,
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "240.240.0.0/16",
            "-m",
            "owner",
            "!",
            "--uid-owner",
            &PROXY_UID.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &outbound_port,
        ]));

        // Through the mesh: the server's sidecar saw the client's identity, so it was mTLS.
        let response = plain_get(
            &format!("{SERVICE_VIP}:8080"),
            "echo.test.svc.cluster.local:8080",
        );
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("\necho\n"), "{response}");
        assert!(
            response
                .to_lowercase()
                .contains("uri=spiffe://cluster.local/ns/test/sa/client"),
            "the server's sidecar names the client: {response}"
        );
        // The client's sidecar logged it (its log arrives through a pipe: wait for it).
        common::eventually(
            "the client's sidecar logs the request",
            Duration::from_secs(10),
            || {
                let log = client.log.lock().expect("log");
                log.iter()
                    .any(|line| line.contains("direction=\"outbound\"") && line.contains("/hello"))
                    .then_some(())
            },
        );

        // No route for it: passed through, in plaintext, to where it was going.
        let outside = app(&format!("{OUTSIDE}:0"), "outside");
        let response = plain_get(&format!("{OUTSIDE}:{outside}"), "example.com");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("\noutside\n"), "{response}");
        assert!(!response.to_lowercase().contains("x-forwarded-client-cert"));
        // An HTTP port the mesh knows, but a host it does not: passed through as well.
        let outside_http = TcpListener::bind(format!("{OUTSIDE}:8080")).expect("binds");
        std::thread::spawn(move || {
            if let Some(Ok(mut stream)) = outside_http.incoming().next() {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\noutside\n",
                );
            }
        });
        let response = plain_get(&format!("{OUTSIDE}:8080"), "example.com:8080");
        assert!(response.ends_with("outside\n"), "{response}");
        drop((client, server, control));
    });
}

/// Two services on two ports of one workload, behind one sidecar.
const TWO_PORTS: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: test}
spec:
  hosts: [web.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector:
    labels: {app: multi}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: admin, namespace: test}
spec:
  hosts: [admin.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9090, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector:
    labels: {app: multi}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admin-secret, namespace: test}
spec:
  selector: {matchLabels: {app: multi}}
  action: DENY
  rules:
  - to: [{operation: {ports: ['9090'], paths: [/secret]}}]
";

/// One sidecar fronts two application ports, as a pod's does: connections to the
/// workload's ports 8080 and 9090 are redirected to its inbound listener (Istio's inbound
/// capture), which reads where each was going and serves it with that port's chain — its
/// policies (a DENY on port 9090 only) and its application.
#[test]
fn one_sidecar_fronts_several_application_ports() {
    let netns = NetNs::new("two-ports", &["240.240.0.1/32"]);
    let name = netns.name().to_string();
    netns.enter(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        std::fs::create_dir(&config).expect("config dir");
        std::fs::write(config.join("services.yaml"), TWO_PORTS).expect("config");
        let control = common::Control::start(&config);
        // The applications, on the workload's ports (on loopback, where the sidecar reaches
        // them).
        let web = TcpListener::bind("127.0.0.1:8080").expect("8080 is free in the namespace");
        let admin = TcpListener::bind("127.0.0.1:9090").expect("9090 is free in the namespace");
        for (listener, name) in [(web, "web"), (admin, "admin")] {
            std::thread::spawn(move || serve_app(listener, name));
        }
        let server = common::Proxy::start(&[
            "--control",
            &control.xds,
            "--name",
            "multi-1",
            "--namespace",
            "test",
            "--service",
            "web:8080:8080",
            "--service",
            "admin:9090:9090",
            "--labels",
            "app=multi",
            "--service-account",
            "multi",
            "--instance-ip",
            "240.240.0.1",
            "--inbound-port",
            "15006",
            "--token",
            &common::join_token(&config, "test", "multi"),
        ]);
        // Inbound capture: what reaches the workload's ports goes to the inbound listener.
        for port in ["8080", "9090"] {
            run(Command::new("ip").args([
                "netns",
                "exec",
                &name,
                "iptables",
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                "240.240.0.1",
                "--dport",
                port,
                "-j",
                "REDIRECT",
                "--to-ports",
                "15006",
            ]));
        }
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
        ]);
        server.until_ready();
        client.until_ready();
        let call = |url: &str| {
            let mut stream = TcpStream::connect(&client.outbound).expect("connects");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let host = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("");
            write!(
                stream,
                "GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            )
            .expect("sends");
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            response
        };
        common::eventually("web is served", Duration::from_secs(30), || {
            let response = call("http://web.test.svc.cluster.local:8080/hello");
            response.contains("\nweb\n").then_some(()).ok_or(response)
        });
        let response = call("http://admin.test.svc.cluster.local:9090/hello");
        assert!(
            response.contains("\nadmin\n"),
            "port 9090 reaches its own application: {response}"
        );
        assert!(
            response
                .to_lowercase()
                .contains("uri=spiffe://cluster.local/ns/test/sa/client"),
            "over mTLS: {response}"
        );
        let response = call("http://admin.test.svc.cluster.local:9090/secret");
        assert!(
            response.starts_with("HTTP/1.1 403"),
            "port 9090's policy: {response}"
        );
        let response = call("http://web.test.svc.cluster.local:8080/secret");
        assert!(
            response.contains("\nweb\n"),
            "port 8080 has no such policy: {response}"
        );
        drop((client, server, control));
    });
}

/// Answers each request on `listener` with `name` and the request head it received.
fn serve_app(listener: TcpListener, name: &'static str) {
    for mut stream in listener.incoming().map_while(Result::ok) {
        std::thread::spawn(move || {
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            while let Ok(n) = reader.read_line(&mut head) {
                if n == 0 || head.ends_with("\r\n\r\n") {
                    break;
                }
            }
            let body = format!("{name}\n{head}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}
