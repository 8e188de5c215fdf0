//! A real Kubernetes control plane for a test: etcd, kube-apiserver and
//! kube-controller-manager (its Deployment, ReplicaSet, EndpointSlice, ServiceAccount and
//! namespace controllers),
//! started on loopback with certificates made for the test, and `kubectl` pointed at it.
//!
//! The binaries are Kubernetes' own, built from Go modules by `scripts/k8s-bin.sh`; the test
//! script passes their folder in `WEFT_K8S_BIN` (or `KUBEBUILDER_ASSETS`, as envtest reads it).
//! There is no scheduler and no kubelet: tests bind pods to the one Node and patch pod status
//! as those would, and run
//! the workloads as local processes at the pod IPs. Pod IPs are 10.244.0.x on the loopback of
//! a network namespace the test makes ([`super::netns`]); the API refuses 127.0.0.x in
//! EndpointSlices. Start a cluster from inside that namespace: its ports are then private to
//! the test, so they are fixed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// The pod range on the namespace's loopback, and the address of the one node.
pub const POD_RANGE: &str = "10.244.0.1/24";

const ETCD_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const API_PORT: u16 = 6443;

/// A running control plane; its processes are stopped and its files removed on drop.
pub struct Cluster {
    processes: Vec<Child>,
    bin: PathBuf,
    /// Where the kubeconfig (admin, `system:masters`) is.
    pub kubeconfig: PathBuf,
    /// The CA that signed the API server's certificate and the client certificates.
    pub ca: PathBuf,
    /// The API server's address.
    pub server: String,
    /// The key that signs service-account tokens (PKCS#8 PEM, ECDSA P-256), and the issuer
    /// they name.
    pub service_account_key: PathBuf,
    dir: tempfile::TempDir,
}

/// The issuer of the cluster's service-account tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The folder of the Kubernetes binaries.
fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("WEFT_K8S_BIN")
        .or_else(|| std::env::var_os("KUBEBUILDER_ASSETS"))
        .map(PathBuf::from)
        .expect(
            "this test needs a real kube-apiserver and etcd: run it through scripts/test.sh, or \
             set WEFT_K8S_BIN to the folder `bash scripts/k8s-bin.sh` prints",
        );
    for binary in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        assert!(
            dir.join(binary).is_file(),
            "{} has no {binary}",
            dir.display()
        );
    }
    dir
}

impl Cluster {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API
    /// server is ready and the `default` namespace has its service account.
    pub fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Pki::write(dir.path());
        let server = format!("https://127.0.0.1:{API_PORT}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(&server, &files)).expect("kubeconfig");
        let mut cluster = Self {
            processes: Vec::new(),
            bin,
            kubeconfig,
            ca: files.ca.clone(),
            server,
            service_account_key: files.service_account_private.clone(),
            dir,
        };
        let etcd_dir = cluster.dir.path().join("etcd");
        let etcd = format!("http://127.0.0.1:{ETCD_PORT}");
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        cluster.spawn(
            "etcd",
            Command::new(cluster.bin.join("etcd"))
                .arg("--data-dir")
                .arg(&etcd_dir)
                .args([
                    "--listen-client-urls",
                    &etcd,
                    "--advertise-client-urls",
                    &etcd,
                ])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("default={peer}")])
                .args(["--unsafe-no-fsync"]),
        );
        let cert_dir = cluster.dir.path().join("apiserver");
        cluster.spawn(
            "kube-apiserver",
            Command::new(cluster.bin.join("kube-apiserver"))
                .args(["--etcd-servers", &etcd])
                .args(["--secure-port", &API_PORT.to_string()])
                .args(["--bind-address", "127.0.0.1"])
                .args(["--advertise-address", "127.0.0.1"])
                .args(["--endpoint-reconciler-type", "none"])
                .arg("--cert-dir")
                .arg(&cert_dir)
                .arg("--tls-cert-file")
                .arg(&files.server_cert)
                .arg("--tls-private-key-file")
                .arg(&files.server_key)
                .arg("--client-ca-file")
                .arg(&files.ca)
                .arg("--service-account-key-file")
                .arg(&files.service_account_public)
                .arg("--service-account-signing-key-file")
                .arg(&files.service_account_private)
                .args(["--service-account-issuer", ISSUER])
                .args(["--authorization-mode", "RBAC"])
                .args(["--service-cluster-ip-range", "10.96.0.0/16"])
                .args([
                    "--enable-admission-plugins",
                    "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
                ]),
        );
        cluster.until(Duration::from_secs(90), "the API server is ready", |c| {
            c.try_kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        cluster.spawn(
            "kube-controller-manager",
            Command::new(cluster.bin.join("kube-controller-manager"))
                .arg("--kubeconfig")
                .arg(&cluster.kubeconfig)
                .args([
                    "--controllers",
                    "deployment,replicaset,endpointslice,serviceaccount,serviceaccount-token,namespace",
                ])
                .args(["--leader-elect=false", "--secure-port", "0"])
                .arg("--service-account-private-key-file")
                .arg(&files.service_account_private)
                .arg("--root-ca-file")
                .arg(&files.ca),
        );
        cluster.until(
            Duration::from_secs(60),
            "the default service account exists",
            |c| {
                c.try_kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                    .status
                    .success()
            },
        );
        cluster.apply(NODE);
        cluster
    }

    /// Starts one of the control plane's processes, its output in a log file.
    fn spawn(&mut self, name: &str, command: &mut Command) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = command
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("{name} starts: {error}"));
        self.processes.push(child);
    }

    /// The last lines a control-plane process logged, for a failure message.
    pub fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Polls `ready` until it holds; fails the test after `limit`.
    pub fn until(&mut self, limit: Duration, what: &str, mut ready: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !ready(self) {
            for (child, name) in
                self.processes
                    .iter_mut()
                    .zip(["etcd", "kube-apiserver", "kube-controller-manager"])
            {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited ({status}):\n{}", self.log_tail(name));
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}\n{}",
                self.log_tail("kube-apiserver")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kubectl` on this cluster.
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// Runs `kubectl args`, whatever its outcome.
    pub fn try_kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command()
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs `kubectl args` with `stdin`, whatever its outcome.
    pub fn try_kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        // Written from another thread: kubectl may answer before it has read everything,
        // and a full output pipe would otherwise stop both.
        let mut input = child.stdin.take().expect("stdin is piped");
        let stdin = stdin.to_string();
        let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
        let output = child.wait_with_output().expect("kubectl runs");
        let _ = writer.join();
        output
    }

    /// Runs `kubectl args`; it must succeed. Returns its standard output.
    pub fn kubectl(&self, args: &[&str]) -> String {
        succeeded(args, self.try_kubectl(args))
    }

    /// `kubectl apply -f -` of `yaml`; it must succeed.
    pub fn apply(&self, yaml: &str) -> String {
        let args = ["apply", "-f", "-"];
        succeeded(&args, self.try_kubectl_stdin(&args, yaml))
    }

    /// Installs Weft's CRDs and control-plane objects as a user would (`weft manifest
    /// generate | kubectl apply --server-side -f -`), and waits until the API server serves
    /// the CRDs.
    pub fn install_weft(&self) {
        let output = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["manifest", "generate", "--set", "profile=minimal"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "weft manifest generate: {output:?}"
        );
        let manifest = String::from_utf8(output.stdout).unwrap();
        let args = ["apply", "--server-side", "-f", "-"];
        succeeded(&args, self.try_kubectl_stdin(&args, &manifest));
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ]);
    }

    /// A token for a service account, from the TokenRequest API.
    pub fn token(&self, namespace: &str, service_account: &str, audience: &str) -> String {
        self.kubectl(&[
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--audience",
            audience,
        ])
        .trim()
        .to_string()
    }

    /// Waits for the one pod `selector` (`app=reviews,version=v1`) matches in `namespace`
    /// (made by its Deployment's ReplicaSet), binds it to the node as the scheduler would and
    /// marks it running and ready at `ip` as the kubelet would. Returns its name.
    pub fn run_pod(&mut self, namespace: &str, selector: &str, ip: &str) -> String {
        let names = |cluster: &Self| {
            cluster
                .kubectl(&["get", "pods", "-n", namespace, "-l", selector, "-o", "name"])
                .lines()
                .filter_map(|line| line.strip_prefix("pod/"))
                .map(str::to_string)
                .collect::<Vec<String>>()
        };
        let what = format!("a pod matches {selector}");
        self.until(Duration::from_secs(60), &what, |c| names(c).len() == 1);
        let pod = names(self).remove(0);
        let binding = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"},
        });
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/binding");
        let args = ["create", "--raw", &path, "-f", "-"];
        succeeded(&args, self.try_kubectl_stdin(&args, &binding.to_string()));
        self.pod_ready(namespace, &pod, ip);
        pod
    }

    /// Marks a pod as running and not ready (its readiness probe failing), as the kubelet
    /// would: its EndpointSlice controller takes it out of service.
    pub fn pod_not_ready(&self, namespace: &str, pod: &str) {
        let status = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "ContainersReady", "status": "False"},
        ]}});
        self.patch_status(namespace, pod, &status);
    }

    /// Merges `status` into a pod's status subresource, as the kubelet writes it.
    fn patch_status(&self, namespace: &str, pod: &str, status: &serde_json::Value) {
        let patch = status.to_string();
        let args = ["patch", "pod", pod, "-n", namespace, "--subresource=status"];
        self.kubectl(&[&args[..], &["--type=merge", "-p", &patch]].concat());
    }

    /// Marks a pod as running and ready at `ip`, as the kubelet would.
    pub fn pod_ready(&self, namespace: &str, pod: &str, ip: &str) {
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        }});
        self.patch_status(namespace, pod, &status);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Fails the test with the command's output unless it succeeded; returns its stdout.
fn succeeded(args: &[&str], output: Output) -> String {
    assert!(
        output.status.success(),
        "kubectl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

/// The node the test's pods are scheduled on (nothing runs on it; it has no kubelet).
const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {kubernetes.io/hostname: node-1}
";

/// The certificates and keys of a cluster, as files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    service_account_private: PathBuf,
    service_account_public: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().expect("making test certificates");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "test cluster CA");
        let ca_cert = ca.self_signed(&ca_key).expect("making test certificates");
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("making test certificates");

        let server_key = KeyPair::generate().expect("making test certificates");
        let mut server = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])
        .expect("making test certificates");
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("making test certificates");

        let admin_key = KeyPair::generate().expect("making test certificates");
        let mut admin = CertificateParams::default();
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin
            .signed_by(&admin_key, &issuer)
            .expect("making test certificates");

        let service_account = KeyPair::generate().expect("making test certificates");
        let write = |name: &str, contents: String| {
            let path = dir.join(name);
            std::fs::write(&path, contents).expect("writing test certificates");
            path
        };
        Self {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            admin_cert: write("admin.pem", admin_cert.pem()),
            admin_key: write("admin-key.pem", admin_key.serialize_pem()),
            service_account_private: write("sa-key.pem", service_account.serialize_pem()),
            service_account_public: write("sa.pem", service_account.public_key_pem()),
        }
    }
}

/// A kubeconfig for the admin, with its certificates as files.
fn kubeconfig_text(server: &str, pki: &Pki) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: \"{server}\", certificate-authority: \"{ca}\"}}
users:
- name: admin
  user: {{client-certificate: \"{cert}\", client-key: \"{key}\"}}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
",
        ca = pki.ca.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    )
}

/// One of the seed's examples (`examples/seed`), as users would `kubectl apply` them.
pub fn seed(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    std::fs::read_to_string(path.join(file)).unwrap()
}
