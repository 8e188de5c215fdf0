//! Traffic on a real Kubernetes control plane (etcd, kube-apiserver and
//! kube-controller-manager built from Kubernetes' own sources, in a network namespace of the
//! test's own): `weft control --kubernetes` reads Services, EndpointSlices and Pods as the
//! registry and the VirtualServices, DestinationRules and PeerAuthentications applied with
//! kubectl as its configuration. Real `weft proxy` processes at the pods' IPs, and a real
//! proxyless gRPC client (grpcio), route 100% to v1, then 50/50 v1/v3 after a `kubectl
//! apply`; a pod taken out of its EndpointSlice stops getting traffic within a second; STRICT
//! mTLS refuses plaintext.
//!
//! **Needs root** (the network namespace), the Kubernetes binaries (`WEFT_K8S_BIN`, set by
//! scripts/test.sh) and the Python venv with grpcio (`WEFT_TEST_PYTHON`, or the one
//! scripts/test.sh makes).

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, seed};
use common::eventually;
use common::netns::NetNs;

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
  ports: [{port: 9080, name: http}, {port: 9090, name: grpc}]
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
        ports: [{{containerPort: 9080}}, {{containerPort: 9090}}]
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
        cluster.install_weft();
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
        eventually("reviews answers", Duration::from_secs(20), || {
            get(&outbound, "http://reviews:9080/")
                .is_some_and(|(status, _)| status == 200)
                .then_some(())
        });
        let answered = split(&outbound, 200);
        assert_eq!(answered.get("v1"), Some(&200), "{answered:?}");

        // A proxyless gRPC client (grpcio) obeys the same configuration, calling the pods'
        // gRPC port itself.
        let grpc_servers: Vec<(&str, String)> = pods
            .iter()
            .map(|(version, ip)| (*version, format!("{ip}:9090")))
            .collect();
        let grpc_servers: Vec<(&str, &str)> = grpc_servers
            .iter()
            .map(|(version, addr)| (*version, addr.as_str()))
            .collect();
        let _grpc_servers = common::grpc::servers_at(&grpc_servers);
        let mut grpc = common::grpc::Client::start(
            "reviews.default.svc.cluster.local:9090",
            &control.xds,
            &format!("sidecar~{client_ip}~grpc-client.default~default.svc.cluster.local"),
        );
        eventually("gRPC reaches reviews", Duration::from_secs(20), || {
            grpc.calls(1).contains_key("v1").then_some(())
        });
        let answered = grpc.calls(200);
        assert_eq!(answered.get("v1"), Some(&200), "gRPC: {answered:?}");

        // The seed's 50/50 canary, applied with kubectl.
        cluster.apply(&seed("10-reviews-50-50.yaml"));
        eventually("v3 answers", Duration::from_secs(5), || {
            get(&outbound, "http://reviews:9080/")
                .is_some_and(|(_, body)| body == "v3")
                .then_some(())
        });
        let answered = split(&outbound, 1000);
        let v1 = answered.get("v1").copied().unwrap_or(0);
        let v3 = answered.get("v3").copied().unwrap_or(0);
        assert_eq!(v1 + v3, 1000, "{answered:?}");
        assert!((450..=550).contains(&v1), "not 50/50 ±5: {answered:?}");
        eprintln!("the 50/50 canary: {answered:?}");
        eventually("v3 answers gRPC", Duration::from_secs(5), || {
            grpc.calls(10).contains_key("v3").then_some(())
        });
        let answered = grpc.calls(1000);
        let v1 = answered.get("v1").copied().unwrap_or(0);
        assert_eq!(
            v1 + answered.get("v3").copied().unwrap_or(0),
            1000,
            "{answered:?}"
        );
        assert!((450..=550).contains(&v1), "gRPC not 50/50 ±5: {answered:?}");
        eprintln!("the 50/50 canary, gRPC: {answered:?}");

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
        eventually("plaintext is refused", Duration::from_secs(5), || {
            get(&v3_inbound, "/").is_none().then_some(())
        });
        eventually("mesh traffic reaches v3", Duration::from_secs(5), || {
            get(&outbound, "http://reviews:9080/")
                .is_some_and(|(_, body)| body == "v3")
                .then_some(())
        });
        drop(client);
        drop(sidecars);
        drop(control);
    });
}
