//! Weft on a real Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager
//! built from Kubernetes' own sources (`scripts/k8s-bin.sh`), in a network namespace of the
//! test's own (traffic is in `kubernetes_traffic.rs`).
//!
//! * `weft manifest generate` applies with `kubectl apply --server-side`, and the seed's
//!   Istio YAML applies to its CRDs unchanged;
//! * `weft install --set profile=demo --wait` applies it itself and returns once the control
//!   plane and the ingress gateway are available; `weft uninstall` removes them (webhooks
//!   first) and keeps Istio's resources, `--purge` removes those too;
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

use std::path::Path;
use std::time::Duration;

use common::cluster::Cluster;
use common::netns::NetNs;

#[test]
fn the_install_applies_server_side_and_the_seed_yaml_applies_to_its_crds() {
    let netns = NetNs::new("k8s-install", &["10.244.0.1/32"]);
    netns.enter(|| {
        let cluster = Cluster::start();
        cluster.install_weft();
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

#[test]
fn weft_install_waits_for_the_control_plane_and_weft_uninstall_removes_it() {
    let netns = NetNs::new("k8s-uninstall", &["10.244.0.1/32"]);
    netns.enter(|| {
        let mut cluster = Cluster::start();
        let kubeconfig = cluster.kubeconfig.to_str().unwrap().to_string();
        let weft = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
                .args(args)
                .args(["--kubeconfig", &kubeconfig])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut install = weft(&["install", "--set", "profile=demo", "--wait", "60s"]);
        // Playing the kubelet: the Deployments' pods run and become ready. While the
        // gateway's is not, the install waits.
        cluster.run_pod("istio-system", "app=weft-control", "10.244.0.2");
        let available = ["get", "deployment", "weft-control", "-n", "istio-system"];
        let available = [
            &available[..],
            &["-o", "jsonpath={.status.availableReplicas}"],
        ]
        .concat();
        cluster.until(
            Duration::from_secs(30),
            "the control plane is available",
            |c| c.kubectl(&available) == "1",
        );
        assert!(
            install.try_wait().unwrap().is_none(),
            "weft install --wait did not wait"
        );
        cluster.run_pod("istio-system", "app=istio-ingressgateway", "10.244.0.3");
        let output = install.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "weft install: {output:?}");
        for line in [
            "applied CustomResourceDefinition virtualservices.networking.istio.io",
            "applied MutatingWebhookConfiguration weft-sidecar-injector",
            "available Deployment istio-system/weft-control",
            "available Deployment istio-system/istio-ingressgateway",
        ] {
            assert!(stdout.contains(line), "{stdout}");
        }
        // The CRDs are served as soon as it returns.
        cluster.apply(&common::cluster::seed("09-reviews-v1.yaml"));
        let gateway = cluster.kubectl(&[
            "get",
            "service",
            "istio-ingressgateway",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.spec.type} {.spec.ports[*].port}",
        ]);
        assert_eq!(gateway, "LoadBalancer 80 443");
        // Installing again changes nothing and succeeds.
        let again = weft(&["install", "--set", "profile=demo"])
            .wait_with_output()
            .unwrap();
        assert!(again.status.success(), "{again:?}");

        let output = weft(&["uninstall"]).wait_with_output().unwrap();
        assert!(output.status.success(), "weft uninstall: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let webhook = stdout.find("deleted MutatingWebhookConfiguration").unwrap();
        let control = stdout
            .find("deleted Deployment istio-system/weft-control")
            .unwrap();
        assert!(webhook < control, "the webhooks go first: {stdout}");
        let left = cluster.kubectl(&[
            "get",
            "mutatingwebhookconfigurations,validatingwebhookconfigurations,clusterroles",
            "-l",
            "app.kubernetes.io/part-of=weft",
            "-o",
            "name",
        ]);
        assert_eq!(left, "", "left behind: {left}");
        let kept = cluster.kubectl(&["get", "vs", "reviews", "-o", "name"]);
        assert_eq!(kept.trim(), "virtualservice.networking.istio.io/reviews");

        let output = weft(&["uninstall", "--purge"]).wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "weft uninstall --purge: {output:?}"
        );
        cluster.until(Duration::from_secs(30), "the CRDs are gone", |c| {
            c.kubectl(&["get", "crd", "-o", "name"]).trim().is_empty()
        });
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
        cluster.install_weft();
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
