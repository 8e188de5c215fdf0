//! The harness: [`Mesh`] starts a real `weft control` on a config folder of its own, server
//! workloads of the `echo` service (one per version, each a fake application behind a real
//! `weft proxy`) and a client workload, and waits until the client's sidecar can route to
//! every server. Also the configuration tests add to it ([`virtual_service`],
//! [`destination_rule`]).
//!
//! What the applications answer is in [`crate::apps`]; how tests call through the sidecars is
//! in [`crate::clients`].

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::apps::echo_app;
use crate::clients::request;
use crate::common::{self, eventually};

/// The `echo` service, port 8080 (HTTP), served by the workloads labelled `app: echo`.
pub const SERVICE: &str = "apiVersion: networking.istio.io/v1
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

/// The config folder `weft control` watches, in a test's temporary folder.
pub fn config_dir(dir: &Path) -> PathBuf {
    dir.join("config")
}

/// A control plane, the `echo` service's server workloads and a client workload, each
/// workload behind its own sidecar; every process is killed when dropped.
pub struct Mesh {
    /// The test's temporary folder; the configuration is in [`config_dir`] of it.
    pub dir: tempfile::TempDir,
    /// `None` while a test has stopped it.
    pub control: Option<common::Control>,
    /// One server workload per version, first `v1`.
    pub servers: Vec<common::Proxy>,
    pub client: common::Proxy,
    /// What crossed from the client's sidecar to the first server's.
    pub wire: Arc<Mutex<Vec<u8>>>,
}

impl Mesh {
    /// The `echo` service with one workload, `v1`, and `extra` configuration.
    pub fn start(extra: &str) -> Self {
        Self::with_versions(extra, &["v1"])
    }

    /// The `echo` service with one workload per version, a client workload, and `extra`
    /// configuration.
    pub fn with_versions(extra: &str, versions: &[&'static str]) -> Self {
        Self::with_apps(extra, versions, echo_app)
    }

    /// As [`Mesh::with_versions`], with the application of each version started by `app`
    /// (which returns its port).
    pub fn with_apps(
        extra: &str,
        versions: &[&'static str],
        app: impl Fn(&'static str) -> u16,
    ) -> Self {
        Self::with_service(SERVICE, extra, versions, app)
    }

    /// As [`Mesh::with_apps`], with `service` declaring the `echo` service.
    pub fn with_service(
        service: &str,
        extra: &str,
        versions: &[&'static str],
        app: impl Fn(&'static str) -> u16,
    ) -> Self {
        Self::with_mesh_config(service, extra, None, versions, app)
    }

    /// As [`Mesh::with_service`], with the control plane given `mesh_config` (Istio's
    /// MeshConfig YAML) when there is one.
    pub fn with_mesh_config(
        service: &str,
        extra: &str,
        mesh_config: Option<&str>,
        versions: &[&'static str],
        app: impl Fn(&'static str) -> u16,
    ) -> Self {
        Self::with_control_flags(service, extra, mesh_config, &[], versions, app)
    }

    /// As [`Mesh::with_mesh_config`], with `control_flags` added to `weft control`'s.
    pub fn with_control_flags(
        service: &str,
        extra: &str,
        mesh_config: Option<&str>,
        control_flags: &[&str],
        versions: &[&'static str],
        app: impl Fn(&'static str) -> u16,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(config_dir(dir.path())).unwrap();
        std::fs::write(config_dir(dir.path()).join("echo.yaml"), service).unwrap();
        std::fs::write(config_dir(dir.path()).join("extra.yaml"), extra).unwrap();
        let mesh_file = dir.path().join("mesh.yaml");
        let mut flags = control_flags.to_vec();
        if let Some(mesh_config) = mesh_config {
            std::fs::write(&mesh_file, mesh_config).unwrap();
            flags.extend(["--mesh-config", mesh_file.to_str().unwrap()]);
        }
        let control = common::Control::start_with(&config_dir(dir.path()), "127.0.0.1:0", &flags);
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
        eventually(
            "the client's sidecar has every endpoint and the route",
            Duration::from_secs(30),
            || {
                let clusters = common::get(&client.admin, "/clusters");
                // Clusters and endpoints arrive before listeners and routes: wait for both.
                let routed =
                    !common::get_json(&client.admin, "/config_dump")["model"]["routes"]["8080"]
                        .is_null();
                if routed && endpoints.iter().all(|e| clusters.contains(e.as_str())) {
                    Ok(())
                } else {
                    Err(clusters)
                }
            },
        );
        Mesh {
            dir,
            control: Some(control),
            servers,
            client,
            wire,
        }
    }

    /// Sends `count` requests through the client's sidecar; counts who served them.
    pub fn served_by(
        &self,
        count: usize,
        headers: &str,
    ) -> std::collections::BTreeMap<String, usize> {
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
    pub fn edit(&self, extra: &str) {
        self.edit_then(extra, weft_xds::types::ROUTE);
    }

    /// Replaces the extra configuration file and waits until the client's sidecar has a new
    /// version of `type_url`.
    pub fn edit_then(&self, extra: &str, type_url: &str) {
        let version =
            || common::get_json(&self.client.admin, "/config_dump")["versions"][type_url].clone();
        let before = version();
        std::fs::write(config_dir(self.dir.path()).join("extra.yaml"), extra).unwrap();
        eventually(
            &format!("{type_url} changes"),
            Duration::from_secs(30),
            || (version() != before).then_some(()),
        );
    }
}

/// A TCP relay from `listener` to `target` that keeps what the client side sent: how a test
/// sees what crossed between two sidecars.
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

/// A VirtualService for `echo` routing everything to it, with the route's `http` settings
/// given (indented lines such as `    retries: {attempts: 0}\n`).
pub fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: test}}\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo}}\n{http}"
    )
}

/// A DestinationRule for `echo` with the `trafficPolicy` lines given, and no retries (so a
/// test sees each failure).
pub fn destination_rule(policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: echo, namespace: test}}\nspec:\n  host: echo\n  trafficPolicy:\n{policy}---\n{}",
        virtual_service("    retries: {attempts: 0}\n")
    )
}
