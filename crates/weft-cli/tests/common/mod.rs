//! Helpers shared by the tests (and the push benchmark) that run the real `weft control`:
//! start it on ephemeral ports and wait for the addresses it logs, read its debug pages, and
//! wait for what happens meanwhile ([`eventually`]).

#![allow(dead_code, reason = "each test binary uses part of these helpers")]
#![allow(
    clippy::unwrap_used,
    reason = "a test helper fails loudly when its own setup fails"
)]

pub mod cluster;
pub mod grpc;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Calls `probe` every 20 ms until it is done, and returns what it found; fails the test,
/// naming `what` it waited for, once `timeout` has passed. This is how tests wait for
/// something that happens in another process, instead of sleeping.
///
/// A probe returns `Some(found)` when done and `None` when not yet; or `Ok(found)`, and
/// `Err(seen)` with what it saw instead, which the failure then shows.
pub fn eventually<A: Attempt>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> A,
) -> A::Found {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match probe().found() {
            Ok(found) => return found,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            match seen {
                Some(seen) => {
                    panic!("timed out after {timeout:?} waiting until {what}; last seen: {seen}")
                }
                None => panic!("timed out after {timeout:?} waiting until {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one call of an [`eventually`] probe returns: an `Option`, or a `Result` whose error
/// says what the probe saw instead.
pub trait Attempt {
    /// What the probe returns when done.
    type Found;
    /// `Ok` when done; otherwise what the probe saw, if it says.
    fn found(self) -> Result<Self::Found, Option<String>>;
}

impl<T> Attempt for Option<T> {
    type Found = T;
    fn found(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Attempt for Result<T, E> {
    type Found = T;
    fn found(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// A running `weft control`, killed when dropped.
pub struct Control {
    pub child: Child,
    /// Where its debug pages are.
    pub debug: String,
    /// Where it serves xDS.
    pub xds: String,
    /// Where it serves xDS over TLS, with `--xds-tls-addr`.
    pub xds_tls: Option<String>,
    /// Everything it has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Control {
    /// Starts `weft control` on `config_dir`, on ephemeral ports, and waits until it serves.
    pub fn start(config_dir: &Path) -> Self {
        Self::start_at(config_dir, "127.0.0.1:0")
    }

    /// Starts `weft control` serving xDS on `xds_addr` (a restart on the same address).
    pub fn start_at(config_dir: &Path, xds_addr: &str) -> Self {
        Self::start_with(config_dir, xds_addr, &[])
    }

    /// As [`Control::start_at`], with more flags.
    pub fn start_with(config_dir: &Path, xds_addr: &str, flags: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        command.args(["control", "--xds-addr", xds_addr]);
        command.args(flags);
        command.arg("--config-dir").arg(config_dir);
        Self::spawn(command)
    }

    /// Starts `weft control --kubernetes` on the cluster of `kubeconfig`, its keys in
    /// `state_dir`, on ephemeral ports.
    pub fn start_kubernetes(kubeconfig: &Path, state_dir: &Path) -> Self {
        Self::start_kubernetes_with(kubeconfig, state_dir, &[])
    }

    /// As [`Control::start_kubernetes`], with more flags.
    pub fn start_kubernetes_with(kubeconfig: &Path, state_dir: &Path, flags: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        command.args(["control", "--kubernetes", "--xds-addr", "127.0.0.1:0"]);
        command.args(flags);
        command.arg("--kubeconfig").arg(kubeconfig);
        command.arg("--state-dir").arg(state_dir);
        Self::spawn(command)
    }

    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .args(["--debug-addr", "127.0.0.1:0", "--log", "warn,weft=info"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("weft control starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut kept) = keep.lock() {
                    kept.push(line.clone());
                }
                for marker in [
                    "serving debug pages on ",
                    "serving xDS over TLS on ",
                    "serving xDS on ",
                ] {
                    if let Some(addr) = line.split(marker).nth(1) {
                        let _ = tx.send((marker, addr.trim().to_string()));
                    }
                }
            }
        });
        // Logged in this order; the plaintext xDS address last.
        let (mut debug, mut xds_tls) = (String::new(), None);
        let xds = loop {
            let (marker, addr) = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("weft control logs its addresses");
            match marker {
                "serving debug pages on " => debug = addr,
                "serving xDS over TLS on " => xds_tls = Some(addr),
                _ => break addr,
            }
        };
        Self {
            child,
            debug,
            xds,
            xds_tls,
            log,
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs a page over HTTP/1.1; returns the status code and the body.
pub fn get_status(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("the debug port accepts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// GETs a page over HTTP/1.1 and returns its body; the page must answer 200.
pub fn get(addr: &str, path: &str) -> String {
    let (status, body) = get_status(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// GETs a page and parses its JSON.
pub fn get_json(addr: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&get(addr, path)).expect("the page is JSON")
}

/// A running `weft proxy`, killed when dropped.
pub struct Proxy {
    pub child: Child,
    /// Inbound listener.
    pub inbound: String,
    /// Outbound listener (the explicit HTTP proxy).
    pub outbound: String,
    /// Admin pages.
    pub admin: String,
    /// Prometheus metrics.
    pub metrics: String,
    /// Per-upstream local ports and the `host:port` each leads to.
    pub upstreams: Vec<(String, String)>,
    /// Everything it has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A `weft gateway` process with the ingress gateway's identity and labels (namespace
/// `istio-system`, account `ingress`, `istio=ingressgateway`), killed when dropped — a
/// failed assertion included, so that no gateway outlives its test.
pub struct Gateway(pub Child);

impl Gateway {
    /// The command, on ephemeral admin and metrics ports, for tests that add flags (a
    /// `--log`, a `--bind`) or read its output.
    pub fn command(xds: &str, config_dir: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        command
            .args(["gateway", "--control", xds, "--name", "ingress"])
            .args([
                "--namespace",
                "istio-system",
                "--service-account",
                "ingress",
            ])
            .args(["--labels", "istio=ingressgateway", "--admin-port", "0"])
            .args(["--metrics-port", "0", "--token"])
            .arg(join_token(config_dir, "istio-system", "ingress"));
        command
    }

    /// Starts it, logging warnings only.
    pub fn start(xds: &str, config_dir: &Path) -> Self {
        Self(
            Self::command(xds, config_dir)
                .args(["--log", "warn"])
                .spawn()
                .expect("weft gateway starts"),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proxy {
    /// Starts `weft proxy` with `args` (ports default to ephemeral ones) and waits for the
    /// addresses it logs.
    pub fn start(args: &[&str]) -> Self {
        Self::start_as(None, args)
    }

    /// As [`Proxy::start`], running as user `uid` when given (Istio runs its proxy as user
    /// 1337, which interception rules leave alone).
    pub fn start_as(uid: Option<u32>, args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
        }
        let log = std::env::var("WEFT_TEST_PROXY_LOG")
            .unwrap_or_else(|_| "warn,weft=info,access=info".into());
        command.args(["proxy", "--log", &log]);
        for (flag, default) in [
            ("--inbound-port", "0"),
            ("--outbound-port", "0"),
            ("--admin-port", "0"),
            ("--metrics-port", "0"),
            ("--debug-headers", "true"),
        ] {
            if !args.contains(&flag) {
                command.args([flag, default]);
            }
        }
        let mut child = command
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("weft proxy starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line.clone());
                }
                if std::env::var_os("WEFT_TEST_PROXY_LOG").is_some() {
                    eprintln!("{line}");
                }
                if let Some(ports) = line.split("listening: ").nth(1) {
                    let _ = tx.send(ports.to_string());
                }
            }
        });
        let ports = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("weft proxy logs its ports");
        let words: Vec<&str> = ports.split_whitespace().collect();
        let after = |name: &str| {
            words
                .iter()
                .position(|w| *w == name)
                .and_then(|i| words.get(i + 1))
                .map(|s| s.to_string())
                .unwrap_or_else(|| panic!("no {name} in {ports:?}"))
        };
        let upstreams = words
            .windows(2)
            .filter(|pair| pair[0] == "upstream")
            .filter_map(|pair| pair[1].split_once('='))
            .map(|(addr, target)| (addr.to_string(), target.to_string()))
            .collect();
        Self {
            log,
            upstreams,
            inbound: after("inbound"),
            outbound: after("outbound"),
            admin: after("admin"),
            metrics: after("metrics"),
            child,
        }
    }

    /// Waits until `/healthz/ready` answers 200.
    pub fn until_ready(&self) {
        eventually(
            &format!("the proxy at {} is ready", self.admin),
            Duration::from_secs(30),
            || (get_status(&self.admin, "/healthz/ready").0 == 200).then_some(()),
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A join token for an identity, from `weft join-token`.
pub fn join_token(config_dir: &Path, namespace: &str, service_account: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "join-token",
            "--namespace",
            namespace,
            "--service-account",
            service_account,
        ])
        .arg("--config-dir")
        .arg(config_dir)
        .output()
        .expect("weft join-token runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

/// A CA of its own and a certificate it signs for `name` (DNS) as a server or a client;
/// written to `dir` as `<file>-ca.pem`, `<file>.pem` and `<file>-key.pem`.
pub fn pki(dir: &Path, file: &str, name: &str, client: bool) {
    use rcgen::{CertificateParams, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("making test certificates");
    let mut ca = CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL finds issuers by name.
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{file} CA"));
    let ca_cert = ca.self_signed(&ca_key).expect("making test certificates");
    let issuer =
        Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("making test certificates");
    let key = KeyPair::generate().expect("making test certificates");
    // A name with a scheme (`spiffe://…`) is a URI SAN, the others DNS names.
    let mut params = if name.contains("://") {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            name.try_into().expect("making test certificates"),
        )];
        params
    } else {
        CertificateParams::new(vec![name.to_string()]).expect("making test certificates")
    };
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = params
        .signed_by(&key, &issuer)
        .expect("making test certificates");
    std::fs::write(dir.join(format!("{file}-ca.pem")), ca_cert.pem())
        .expect("making test certificates");
    std::fs::write(dir.join(format!("{file}.pem")), cert.pem()).expect("making test certificates");
    std::fs::write(dir.join(format!("{file}-key.pem")), key.serialize_pem())
        .expect("making test certificates");
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .expect("its address")
        .port()
}
