//! Weft on a real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager
//! built from Kubernetes' own sources (`scripts/k8s-bin.sh`), in a network namespace of the
//! test's own.
//!
//! * `weft manifest generate` applies with `kubectl apply --server-side`, and the seed's
//!   Istio YAML applies to its CRDs unchanged;
//! * `weft control --kubernetes` reads Services, EndpointSlices and Pods as the registry and
//!   the VirtualServices, DestinationRules and PeerAuthentications applied with kubectl as
//!   its configuration: real `weft proxy` processes at the pods' IPs route 100% to v1, then
//!   50/50 v1/v3 after a `kubectl apply`; a pod taken out of its EndpointSlice stops getting
//!   traffic within a second; STRICT mTLS refuses plaintext;
//! * the API server calls its webhooks: pods that ask for a sidecar are stored with it (and
//!   refused while the webhook is down), the others not; an invalid VirtualService is
//!   refused with the analyzer's message;
//! * its CA signs a pod's certificate for the service account of its TokenRequest token
//!   (audience `istio-ca`, reviewed by the API server), and nothing for another account's,
//!   an expired or a wrong-audience token.
//!
//! **Needs root** (the network namespace) and the Kubernetes binaries (`WEFT_K8S_BIN`, set by
//! scripts/test.sh).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::netns::NetNs;

/// The seed's examples, as users would `kubectl apply` them.
fn seed(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    std::fs::read_to_string(path.join(file)).unwrap()
}

/// `weft ARGS`; it must succeed. Returns its standard output.
fn weft(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "weft {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Installs Weft's CRDs and control-plane objects as a user would, and waits until the API
/// server serves the CRDs.
fn install(cluster: &Cluster) {
    let manifest = weft(&["manifest", "generate", "--set", "profile=minimal"]);
    let args = ["apply", "--server-side", "-f", "-"];
    let output = cluster.try_kubectl_stdin(&args, &manifest);
    assert!(
        output.status.success(),
        "kubectl apply --server-side: {output:?}"
    );
    cluster.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    ]);
}

#[test]
fn the_install_applies_server_side_and_the_seed_yaml_applies_to_its_crds() {
    let netns = NetNs::new("k8s-install", &["10.244.0.1/32"]);
    netns.enter(|| {
        let cluster = Cluster::start();
        install(&cluster);
        let installed = cluster.kubectl(&[
            "get",
            "deployment,service,serviceaccount",
            "-n",
            "istio-system",
            "-o",
            "name",
        ]);
        for object in [
            "deployment.apps/weft-control",
            "service/weft-control",
            "serviceaccount/weft-control",
        ] {
            assert!(installed.contains(object), "{installed}");
        }
        cluster.kubectl(&["create", "namespace", "production"]);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 10, "{files:?}");
        for file in &files {
            cluster.apply(&std::fs::read_to_string(file).unwrap());
        }
        // Short names and printer columns are Istio's.
        let listed = cluster.kubectl(&["get", "vs,dr,pa,authorizationpolicy", "-A"]);
        for expected in ["reviews", "ratings", "HOSTS", "production"] {
            assert!(listed.contains(expected), "{listed}");
        }
        // The object is stored as written, in the version it was written in.
        let stored = cluster.kubectl(&[
            "get",
            "virtualservices.v1beta1.networking.istio.io",
            "reviews",
            "-o",
            "jsonpath={.spec.http[0].route[1].destination.subset}",
        ]);
        assert_eq!(stored, "v3");
    });
}

/// The bookinfo-shaped objects the test applies: the reviews Service and three versions of
/// its Deployment, and the productpage client's service account.
const BOOKINFO: &str = "apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-reviews}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-productpage}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  labels: {app: reviews, service: reviews}
spec:
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
";

fn reviews_deployment(version: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews-{version}
  labels: {{app: reviews, version: {version}}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: reviews, version: {version}}}
  template:
    metadata:
      labels: {{app: reviews, version: {version}}}
    spec:
      serviceAccountName: bookinfo-reviews
      containers:
      - name: reviews
        image: docker.io/istio/examples-bookinfo-reviews-{version}:1.20.3
        ports: [{{containerPort: 9080}}]
"
    )
}

/// A reviews application: answers every request with its version, counting them.
fn reviews_app(version: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let count = count.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) != 1 {
                        return;
                    }
                    head.push(byte[0]);
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{version}",
                    version.len()
                );
            });
        }
    });
    (port, served)
}

/// One GET through the client's sidecar (its outbound listener, an explicit HTTP proxy), or
/// straight to `addr` when `url` is a path; the status and body, `None` when the connection
/// fails or is closed without a response.
fn get(addr: &str, url: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {url} HTTP/1.1\r\nHost: reviews:9080\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// How many of `n` requests to reviews each version answered.
fn split(client: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut answered = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, body) = get(client, "http://reviews:9080/").expect("a response");
        let key = if status == 200 {
            body
        } else {
            status.to_string()
        };
        *answered.entry(key).or_insert(0) += 1;
    }
    answered
}

/// Polls `ready` every 20 ms until it holds; fails the test with `what` after `limit`.
fn until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn resources_applied_with_kubectl_steer_real_proxies_at_the_pods_of_a_real_cluster() {
    let pods = [
        ("v1", "10.244.0.11"),
        ("v2", "10.244.0.12"),
        ("v3", "10.244.0.13"),
    ];
    let client_ip = "10.244.0.10";
    let netns = NetNs::new(
        "k8s-traffic",
        &[
            "10.244.0.1/32",
            "10.244.0.10/32",
            "10.244.0.11/32",
            "10.244.0.12/32",
            "10.244.0.13/32",
        ],
    );
    netns.enter(move || {
        let mut cluster = Cluster::start();
        install(&cluster);
        cluster.apply(BOOKINFO);
        for (version, _) in pods {
            cluster.apply(&reviews_deployment(version));
        }
        cluster.apply(&seed("08-reviews-subsets.yaml"));
        cluster.apply(&seed("09-reviews-v1.yaml"));
        let mut names = Vec::new();
        for (version, ip) in pods {
            names.push(cluster.run_pod("default", &format!("app=reviews,version={version}"), ip));
        }

        let state = tempfile::tempdir().unwrap();
        let control = common::Control::start_kubernetes(&cluster.kubeconfig, state.path());
        let mut apps = Vec::new();
        let mut sidecars = Vec::new();
        for ((version, ip), name) in pods.iter().zip(&names) {
            let (app_port, served) = reviews_app(version);
            let token = cluster.token("default", "bookinfo-reviews", "istio-ca");
            let labels = format!("app=reviews,version={version}");
            let app_port = app_port.to_string();
            let sidecar = common::Proxy::start(&[
                "--control",
                &control.xds,
                "--name",
                name,
                "--namespace",
                "default",
                "--service-account",
                "bookinfo-reviews",
                "--labels",
                &labels,
                "--service",
                "reviews:9080",
                "--app-port",
                &app_port,
                "--bind",
                ip,
                "--instance-ip",
                ip,
                "--inbound-port",
                "15006",
                "--token",
                &token,
            ]);
            sidecar.until_ready();
            apps.push(served);
            sidecars.push(sidecar);
        }
        // The client reads its token from a file, as a pod's projected token is mounted.
        let token_file = state.path().join("istio-token");
        let token = cluster.token("default", "bookinfo-productpage", "istio-ca");
        std::fs::write(&token_file, token).unwrap();
        let token_file = token_file.to_str().unwrap();
        let client = common::Proxy::start(&[
            "--control",
            &control.xds,
            "--name",
            "productpage-v1",
            "--namespace",
            "default",
            "--service-account",
            "bookinfo-productpage",
            "--labels",
            "app=productpage,version=v1",
            "--bind",
            client_ip,
            "--instance-ip",
            client_ip,
            "--token-file",
            token_file,
        ]);
        client.until_ready();
        // Readiness where the kubelet probes it (the injected startup and readiness probes).
        assert_eq!(common::get_status(&client.metrics, "/healthz/ready").0, 200);
        let outbound = client.outbound.clone();

        // 100% v1, from the VirtualService and DestinationRule applied with kubectl.
        until(Duration::from_secs(20), "reviews answers", || {
            get(&outbound, "http://reviews:9080/").is_some_and(|(status, _)| status == 200)
        });
        let answered = split(&outbound, 200);
        assert_eq!(answered.get("v1"), Some(&200), "{answered:?}");

        // The seed's 50/50 canary, applied with kubectl.
        cluster.apply(&seed("10-reviews-50-50.yaml"));
        until(Duration::from_secs(5), "v3 answers", || {
            get(&outbound, "http://reviews:9080/").is_some_and(|(_, body)| body == "v3")
        });
        let answered = split(&outbound, 1000);
        let v1 = answered.get("v1").copied().unwrap_or(0);
        let v3 = answered.get("v3").copied().unwrap_or(0);
        assert_eq!(v1 + v3, 1000, "{answered:?}");
        assert!((450..=550).contains(&v1), "not 50/50 ±5: {answered:?}");
        eprintln!("the 50/50 canary: {answered:?}");

        // The v1 pod fails its readiness probe: the EndpointSlice controller takes it out,
        // and within a second no request reaches it.
        let v1_served = &apps[0];
        let removed_at = Instant::now();
        cluster.pod_not_ready("default", &names[0]);
        let mut last_seen = v1_served.load(Ordering::SeqCst);
        let mut last_v1 = removed_at;
        let mut quiet = 0;
        while quiet < 50 {
            assert!(
                removed_at.elapsed() < Duration::from_secs(10),
                "v1 still gets traffic"
            );
            let _ = get(&outbound, "http://reviews:9080/");
            let seen = v1_served.load(Ordering::SeqCst);
            if seen == last_seen {
                quiet += 1;
            } else {
                last_seen = seen;
                last_v1 = Instant::now();
                quiet = 0;
            }
        }
        let stopped_after = last_v1.duration_since(removed_at);
        eprintln!("v1's last request came {stopped_after:?} after its pod was marked not ready");
        assert!(
            stopped_after < Duration::from_secs(1),
            "v1 got traffic {stopped_after:?} after its pod left the EndpointSlice"
        );

        // PERMISSIVE by default: plaintext into a pod's sidecar is served; STRICT applied
        // with kubectl refuses it, while mesh traffic keeps flowing.
        let v3_inbound = format!("{}:15006", pods[2].1);
        let plaintext = get(&v3_inbound, "/");
        assert_eq!(plaintext.map(|(status, _)| status), Some(200));
        cluster.apply(&seed("07-strict-mtls-default.yaml"));
        until(Duration::from_secs(5), "plaintext is refused", || {
            get(&v3_inbound, "/").is_none()
        });
        until(Duration::from_secs(5), "mesh traffic reaches v3", || {
            get(&outbound, "http://reviews:9080/").is_some_and(|(_, body)| body == "v3")
        });
        drop(client);
        drop(sidecars);
        drop(control);
    });
}

/// A service-account token signed with the cluster's own key, as the API server mints them,
/// but with the lifetime the test chooses: how an expired token is made without waiting.
fn signed_token(cluster: &Cluster, service_account: &str, uid: &str, expires_in: i64) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let pem = std::fs::read_to_string(&cluster.service_account_key).unwrap();
    let pkcs8 = rcgen::KeyPair::from_pem(&pem).unwrap().serialize_der();
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &pkcs8,
        &rng,
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": common::cluster::ISSUER,
        "sub": format!("system:serviceaccount:default:{service_account}"),
        "aud": ["istio-ca"],
        "iat": now - 3600,
        "nbf": now - 3600,
        "exp": now + expires_in,
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": service_account, "uid": uid},
        },
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(&rng, signing_input.as_bytes()).unwrap();
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

/// Asks the control plane's CA for a certificate for `identity` with `token`.
fn certificate(control: &str, identity: &str, token: &str) -> Result<Vec<String>, tonic::Code> {
    use weft_xds::istio_ca::IstioCertificateRequest;
    use weft_xds::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        identity.to_string().try_into().unwrap(),
    )];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = IstioCertificateServiceClient::connect(format!("http://{control}"))
            .await
            .unwrap();
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: 3600,
            metadata: None,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        client
            .create_certificate(request)
            .await
            .map(|response| response.into_inner().cert_chain)
            .map_err(|status| status.code())
    })
}

#[test]
fn the_ca_signs_only_the_service_account_of_a_valid_istio_ca_token() {
    let netns = NetNs::new("k8s-identity", &["10.244.0.1/32"]);
    netns.enter(|| {
        let cluster = Cluster::start();
        cluster.kubectl(&["create", "serviceaccount", "bookinfo-reviews"]);
        cluster.kubectl(&["create", "serviceaccount", "bookinfo-productpage"]);
        let state = tempfile::tempdir().unwrap();
        let control = common::Control::start_kubernetes(&cluster.kubeconfig, state.path());
        let reviews = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews";

        // The pod's own token, from the TokenRequest API for the audience istio-ca.
        let token = cluster.token("default", "bookinfo-reviews", "istio-ca");
        let chain = certificate(&control.xds, reviews, &token).expect("a certificate");
        assert!(chain.len() >= 2, "{chain:?}");

        // Another service account's token gets no certificate for this one.
        let other = cluster.token("default", "bookinfo-productpage", "istio-ca");
        assert_eq!(
            certificate(&control.xds, reviews, &other),
            Err(tonic::Code::PermissionDenied)
        );
        // A token for the API server's own audience is not one for the CA.
        let wrong_audience = cluster.token("default", "bookinfo-reviews", common::cluster::ISSUER);
        assert_eq!(
            certificate(&control.xds, reviews, &wrong_audience),
            Err(tonic::Code::Unauthenticated)
        );
        // A token signed by the cluster's key but expired a minute ago gets nothing; the
        // same token unexpired does (so expiry is what refused it).
        let uid = cluster.kubectl(&[
            "get",
            "serviceaccount",
            "bookinfo-reviews",
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let expired = signed_token(&cluster, "bookinfo-reviews", &uid, -60);
        assert_eq!(
            certificate(&control.xds, reviews, &expired),
            Err(tonic::Code::Unauthenticated)
        );
        let fresh = signed_token(&cluster, "bookinfo-reviews", &uid, 600);
        assert!(certificate(&control.xds, reviews, &fresh).is_ok());
        // Nor does what is not a token at all.
        assert_eq!(
            certificate(&control.xds, reviews, "not-a-token"),
            Err(tonic::Code::Unauthenticated)
        );
    });
}

/// A pod as a user writes it, with `labels` and `annotations` (YAML flow maps).
fn pod(namespace: &str, name: &str, labels: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {labels}
  annotations: {annotations}
spec:
  containers:
  - name: app
    image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.3
    ports: [{{containerPort: 9080}}]
"
    )
}

/// The names of a stored pod's init containers.
fn init_containers(cluster: &Cluster, namespace: &str, name: &str) -> String {
    cluster.kubectl(&[
        "get",
        "pod",
        name,
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.initContainers[*].name}",
    ])
}

#[test]
fn the_api_server_calls_the_webhooks_to_inject_pods_and_refuse_invalid_resources() {
    let webhook = "10.244.0.2";
    let netns = NetNs::new("k8s-inject", &["10.244.0.1/32", "10.244.0.2/32"]);
    netns.enter(move || {
        let mut cluster = Cluster::start();
        install(&cluster);
        cluster.kubectl(&["create", "namespace", "mesh"]);
        cluster.kubectl(&["label", "namespace", "mesh", "istio-injection=enabled"]);
        cluster.kubectl(&["create", "namespace", "plain"]);
        for namespace in ["mesh", "plain", "kube-system"] {
            let what = format!("{namespace} has its default service account");
            cluster.until(Duration::from_secs(30), &what, |c| {
                c.try_kubectl(&["get", "serviceaccount", "default", "-n", namespace])
                    .status
                    .success()
            });
        }
        // Playing kube-proxy: the control plane's Service address leads to its webhook port.
        let cluster_ip = cluster.kubectl(&[
            "get",
            "service",
            "weft-control",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ]);
        common::netns::run(std::process::Command::new("ip").args([
            "route",
            "add",
            "10.96.0.0/16",
            "dev",
            "lo",
        ]));
        common::netns::run(std::process::Command::new("iptables").args([
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &cluster_ip,
            "--dport",
            "443",
            "-j",
            "DNAT",
            "--to-destination",
            &format!("{webhook}:15017"),
        ]));
        let state = tempfile::tempdir().unwrap();
        let webhook_addr = format!("{webhook}:15017");
        let control = common::Control::start_kubernetes_with(
            &cluster.kubeconfig,
            state.path(),
            &[
                "--webhook-addr",
                &webhook_addr,
                "--sidecar-image",
                "weft:test",
            ],
        );
        cluster.until(Duration::from_secs(30), "the caBundle is set", |c| {
            let bundles = c.kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                "weft-sidecar-injector",
                "-o",
                "jsonpath={.webhooks[*].clientConfig.caBundle}",
            ]);
            bundles.split_whitespace().count() == 2
        });

        // The seed's sidecar resources, in a namespace labelled for injection.
        cluster.apply(&pod(
            "mesh",
            "injected",
            "{app: ratings, version: v1}",
            "{sidecar.istio.io/proxyMemory: 512Mi, sidecar.istio.io/proxyMemoryLimit: 1Gi, \
             sidecar.istio.io/proxyCPU: 100m, sidecar.istio.io/proxyCPULimit: 2000m}",
        ));
        assert_eq!(
            init_containers(&cluster, "mesh", "injected"),
            "istio-init istio-proxy"
        );
        let proxy = |field: &str| {
            cluster.kubectl(&[
                "get",
                "pod",
                "injected",
                "-n",
                "mesh",
                "-o",
                &format!("jsonpath={{.spec.initContainers[1].{field}}}"),
            ])
        };
        assert_eq!(proxy("restartPolicy"), "Always");
        assert_eq!(proxy("image"), "weft:test");
        assert_eq!(proxy("resources.requests.memory"), "512Mi");
        assert_eq!(proxy("resources.requests.cpu"), "100m");
        assert_eq!(proxy("resources.limits.memory"), "1Gi");
        // The API server writes 2000m as 2.
        assert_eq!(proxy("resources.limits.cpu"), "2");
        let labels = cluster.kubectl(&["get", "pod", "injected", "-n", "mesh", "--show-labels"]);
        assert!(
            labels.contains("security.istio.io/tlsMode=istio"),
            "{labels}"
        );

        // Opted out by label (the webhook is not called) or by annotation (it declines).
        cluster.apply(&pod(
            "mesh",
            "label-out",
            "{sidecar.istio.io/inject: \"false\"}",
            "{}",
        ));
        assert_eq!(init_containers(&cluster, "mesh", "label-out"), "");
        cluster.apply(&pod(
            "mesh",
            "annotation-out",
            "{}",
            "{sidecar.istio.io/inject: \"false\"}",
        ));
        assert_eq!(init_containers(&cluster, "mesh", "annotation-out"), "");
        // An unlabelled namespace: only a pod that asks gets one.
        cluster.apply(&pod("plain", "untouched", "{app: x}", "{}"));
        assert_eq!(init_containers(&cluster, "plain", "untouched"), "");
        cluster.apply(&pod(
            "plain",
            "asked",
            "{sidecar.istio.io/inject: \"true\"}",
            "{}",
        ));
        assert_eq!(
            init_containers(&cluster, "plain", "asked"),
            "istio-init istio-proxy"
        );
        // kube-system never, even when a pod asks.
        cluster.apply(&pod(
            "kube-system",
            "system",
            "{sidecar.istio.io/inject: \"true\"}",
            "{}",
        ));
        assert_eq!(init_containers(&cluster, "kube-system", "system"), "");

        // A Deployment's pods, created by its ReplicaSet, are injected too.
        cluster.apply(
            "apiVersion: apps/v1
kind: Deployment
metadata: {name: ratings-v1, namespace: mesh}
spec:
  selector: {matchLabels: {app: ratings}}
  template:
    metadata: {labels: {app: ratings, version: v1}}
    spec:
      containers: [{name: ratings, image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.3}]
",
        );
        cluster.until(
            Duration::from_secs(30),
            "the Deployment's pod is injected",
            |c| {
                c.kubectl(&[
                    "get",
                    "pods",
                    "-n",
                    "mesh",
                    "-l",
                    "app=ratings,pod-template-hash",
                    "-o",
                    "jsonpath={.items[*].spec.initContainers[*].name}",
                ]) == "istio-init istio-proxy"
            },
        );

        // An invalid VirtualService is refused at `kubectl apply` with the analyzer's
        // message; a valid one is stored.
        let invalid = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: mesh}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
    timeout: five seconds
";
        let refused = cluster.try_kubectl_stdin(&["apply", "-f", "-"], invalid);
        assert!(!refused.status.success(), "{refused:?}");
        let message = String::from_utf8_lossy(&refused.stderr);
        assert!(message.contains("denied the request"), "{message}");
        assert!(
            message.contains("`spec.http[0].timeout`: invalid duration \"five seconds\""),
            "{message}"
        );
        cluster.apply(&invalid.replace("five seconds", "5s"));
        // Every example of the seed passes validation.
        cluster.kubectl(&["create", "namespace", "production"]);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
        for entry in std::fs::read_dir(&dir).unwrap() {
            cluster.apply(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }

        // With the webhook down, failurePolicy Fail: such a pod is refused, not started
        // outside the mesh; other namespaces are not affected.
        drop(control);
        let refused = cluster.try_kubectl_stdin(
            &["apply", "-f", "-"],
            &pod("mesh", "while-down", "{}", "{}"),
        );
        assert!(!refused.status.success());
        let message = String::from_utf8_lossy(&refused.stderr);
        assert!(message.contains("failed calling webhook"), "{message}");
        cluster.apply(&pod("plain", "still-fine", "{}", "{}"));
    });
}
