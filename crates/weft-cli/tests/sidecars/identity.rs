//! The control plane's doors: a workload registers only as what its stream proves — over
//! the TLS xDS port (which `weft proxy --control-root-cert` speaks, token on ADS as on the
//! CSR), the identity its join token binds, and only into services whose configured
//! workloads run as that identity; plaintext xDS off loopback registers nothing.

use std::time::Duration;

use crate::common::{self, eventually};

/// `pay`, whose one configured workload runs as `pay`, and `web`, which has none yet.
const SERVICES: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pay, namespace: test}
spec:
  hosts: [pay.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: pay}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: pay-1, namespace: test}
spec:
  address: 10.9.9.9
  labels: {app: pay}
  serviceAccount: pay
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: test}
spec:
  hosts: [web.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
";

/// The addresses the control plane has as endpoints of `host`.
fn endpoints(control: &common::Control, host: &str) -> Vec<String> {
    let registry = common::get_json(&control.debug, "/debug/registry");
    registry["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|service| service["host"] == host)
        .flat_map(|service| service["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|endpoint| endpoint["address"].as_str().map(str::to_string))
        .collect()
}

/// A sidecar over the TLS xDS port with a token for `test/x`, claiming `account` and
/// serving `service`.
fn sidecar(
    control: &common::Control,
    root: &str,
    token: &str,
    account: &str,
    service: &str,
) -> common::Proxy {
    let tls = control.xds_tls.clone().unwrap();
    common::Proxy::start(&[
        "--control",
        &tls,
        "--control-root-cert",
        root,
        "--name",
        &format!("{service}-{account}"),
        "--namespace",
        "test",
        "--service-account",
        account,
        "--service",
        &format!("{service}:8080"),
        "--labels",
        &format!("app={service}"),
        "--token",
        token,
    ])
}

#[test]
fn workloads_register_only_as_what_their_token_proves() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("services.yaml"), SERVICES).unwrap();
    let control = common::Control::start_with(
        &config,
        "127.0.0.1:0",
        &["--xds-tls-addr", "127.0.0.1:0", "--tls-name", "127.0.0.1"],
    );
    let root = config.join(".weft/root-cert.pem").display().to_string();
    let token = common::join_token(&config, "test", "x");

    // Over TLS, with the token on ADS: x joins `web`, which nobody configured.
    let web = sidecar(&control, &root, &token, "x", "web");
    web.until_ready();
    eventually("x is an endpoint of web", Duration::from_secs(20), || {
        let found = endpoints(&control, "web.test.svc.cluster.local");
        if found.contains(&"127.0.0.1".to_string()) {
            Ok(())
        } else {
            Err(format!("{found:?}"))
        }
    });
    // x cannot join `pay`, whose workloads run as pay; nor claim pay with x's token.
    let intruder = sidecar(&control, &root, &token, "x", "pay");
    intruder.until_ready();
    // (The CA refuses it a certificate for pay too, so it never gets ready.)
    let _impostor = sidecar(&control, &root, &token, "pay", "pay");
    eventually("both refusals are logged", Duration::from_secs(20), || {
        let log = control_log(&control);
        (log.matches("registration refused").count()
            + log
                .matches("runs as an account the service's workloads do not")
                .count()
            >= 2)
            .then_some(())
            .ok_or(log)
    });
    assert_eq!(
        endpoints(&control, "pay.test.svc.cluster.local"),
        ["10.9.9.9"],
        "pay keeps only the identity the registry has for it"
    );
}

/// Plaintext xDS bound off loopback proves nothing: a workload connecting there gets its
/// configuration but is no endpoint.
#[test]
fn plaintext_xds_off_loopback_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("services.yaml"), SERVICES).unwrap();
    let control = common::Control::start_with(&config, "0.0.0.0:0", &[]);
    let port = control.xds.rsplit(':').next().unwrap().to_string();
    let proxy = common::Proxy::start(&[
        "--control",
        &format!("127.0.0.1:{port}"),
        "--name",
        "web-1",
        "--namespace",
        "test",
        "--service-account",
        "x",
        "--service",
        "web:8080",
        "--labels",
        "app=web",
        "--token",
        &common::join_token(&config, "test", "x"),
    ]);
    proxy.until_ready();
    eventually("the refusal is logged", Duration::from_secs(20), || {
        let log = control_log(&control);
        log.contains("registration refused")
            .then_some(())
            .ok_or(log)
    });
    assert!(endpoints(&control, "web.test.svc.cluster.local").is_empty());
}

/// What the control plane logged so far.
fn control_log(control: &common::Control) -> String {
    control.log.lock().unwrap().join("\n")
}

/// `--control-root-hash`: a sidecar given only the hash of the root's key (which `weft
/// control` logs) takes the root from the TLS port's chain and joins; one with another hash
/// refuses the control plane, whatever root it presents.
#[test]
fn a_sidecar_trusts_the_control_plane_by_a_pinned_root_hash() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(config.join("services.yaml"), SERVICES).unwrap();
    let control = common::Control::start_with(
        &config,
        "127.0.0.1:0",
        &["--xds-tls-addr", "127.0.0.1:0", "--tls-name", "127.0.0.1"],
    );
    let pin = eventually("the root's hash is logged", Duration::from_secs(10), || {
        control_log(&control)
            .split_whitespace()
            .find(|word| word.starts_with("sha256:"))
            .map(str::to_string)
    });
    let tls = control.xds_tls.clone().unwrap();
    let token = common::join_token(&config, "test", "x");
    let args = |pin: &str| {
        [
            "--control",
            &tls,
            "--control-root-hash",
            pin,
            "--name",
            "web-1",
            "--namespace",
            "test",
            "--service-account",
            "x",
            "--service",
            "web:8080",
            "--labels",
            "app=web",
            "--token",
            &token,
        ]
        .map(str::to_string)
    };
    let pinned = common::Proxy::start(&args(&pin).iter().map(String::as_str).collect::<Vec<_>>());
    pinned.until_ready();

    let wrong = format!("sha256:{}", "ab".repeat(32));
    let mut refused = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("proxy")
        .args(args(&wrong))
        .args([
            "--inbound-port",
            "0",
            "--admin-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = refused.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|line| line.contains("pinned root"));
    let _ = refused.kill();
    let _ = refused.wait();
    assert!(
        line.is_some_and(|l| l.contains("no certificate of the chain has the pinned hash")),
        "the sidecar with another hash refuses the control plane"
    );
}
