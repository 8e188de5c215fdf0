//! Benchmark: how long a configuration change takes to reach 100 connected proxies, for a
//! mesh of 1,000 services with 10 endpoints each; the control plane's memory; and the CPU one
//! push costs it.
//!
//! Runs the real `weft control` binary and 100 ADS clients that subscribe the way a sidecar
//! does (every listener and cluster, then the routes of its port listeners and the endpoints
//! of its clusters) and ACK every response. Each round edits one VirtualService's weights and times until every client has
//! the new routes. Run with `cargo bench -p weft-cli --bench push`; `BENCH_CLIENTS=N` changes
//! the number of clients, and `BENCH_SIDECAR=1` adds a Sidecar resource per namespace that
//! scopes each proxy to its own namespace's 50 services. `BENCH_KUBERNETES=1` (root, and
//! `WEFT_K8S_BIN` as for the tests) serves the same mesh from a real API server instead, as
//! Services, EndpointSlices and Istio resources, and edits with `kubectl apply`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_xds::envoy::envoy::config::cluster::v3::Cluster;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::envoy::config::listener::v3::Listener;
use weft_xds::envoy::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_xds::envoy::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const SERVICES: usize = 1000;
const ENDPOINTS: usize = 10;
const DEFAULT_CLIENTS: usize = 100;
const ROUNDS: usize = 5;

fn write_mesh(dir: &Path) {
    let mut services = String::new();
    let mut rules = String::new();
    for s in 0..SERVICES {
        let ns = format!("team-{}", s % 20);
        services.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{s}, namespace: {ns}}}\nspec:\n  hosts: [svc-{s}]\n  location: MESH_INTERNAL\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n"
        ));
        for e in 0..ENDPOINTS {
            let version = if e % 2 == 0 { "v1" } else { "v2" };
            services.push_str(&format!(
                "  - {{address: 10.{}.{}.{e}, labels: {{version: {version}}}}}\n",
                s / 250,
                s % 250
            ));
        }
        services.push_str("---\n");
        rules.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{s}, namespace: {ns}}}\nspec:\n  host: svc-{s}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 5, maxEjectionPercent: 100}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        ));
    }
    std::fs::write(dir.join("services.yaml"), services).expect("write services");
    std::fs::write(dir.join("rules.yaml"), rules).expect("write rules");
    // Every service but svc-0 gets a fixed split; svc-0's file is the one each round edits.
    let routes: String = (1..SERVICES).map(|s| virtual_service(s, 90)).collect();
    std::fs::write(dir.join("routes.yaml"), routes).expect("write routes");
    std::fs::write(dir.join("svc-0.yaml"), virtual_service(0, 90)).expect("write svc-0");
    if std::env::var_os("BENCH_SIDECAR").is_some() {
        // Every namespace scopes its proxies to its own services.
        let sidecars: String = (0..20)
            .map(|n| format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: team-{n}}}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n---\n"))
            .collect();
        std::fs::write(dir.join("sidecars.yaml"), sidecars).expect("write sidecars");
    }
}

fn virtual_service(s: usize, v1: u32) -> String {
    let ns = format!("team-{}", s % 20);
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{s}, namespace: {ns}}}\nspec:\n  hosts: [svc-{s}]\n  http:\n  - route:\n    - destination: {{host: svc-{s}, subset: v1}}\n      weight: {v1}\n    - destination: {{host: svc-{s}, subset: v2}}\n      weight: {}\n---\n",
        100 - v1
    )
}

struct Event {
    client: usize,
    type_url: String,
    version: String,
}

/// One sidecar-like client: wildcard LDS and CDS, then RDS and EDS for what they name; ACKs
/// everything; reports each response.
async fn client(id: usize, addr: String, events: mpsc::UnboundedSender<Event>) {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    let node = Node {
        id: format!("sidecar~10.9.0.{id}~bench-{id}.team-0~team-0.svc.cluster.local"),
        ..Node::default()
    };
    let ask = |type_url: &str, names: Vec<String>, version: &str, nonce: &str| DiscoveryRequest {
        node: Some(node.clone()),
        type_url: type_url.to_string(),
        resource_names: names,
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..DiscoveryRequest::default()
    };
    tx.send(ask(LISTENER, vec![], "", "")).await.expect("send");
    tx.send(ask(CLUSTER, vec![], "", "")).await.expect("send");
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut subscribed: HashMap<String, Vec<String>> = HashMap::new();
    while let Ok(Some(response)) = responses.message().await {
        let DiscoveryResponse {
            version_info,
            type_url,
            nonce,
            resources,
            ..
        } = response;
        let names = subscribed.get(&type_url).cloned().unwrap_or_default();
        let _ = tx.send(ask(&type_url, names, &version_info, &nonce)).await;
        let follow_up = match type_url.as_str() {
            // A sidecar's port listeners `0.0.0.0_<port>` route with the configuration `<port>`.
            LISTENER => Some((
                ROUTE,
                resources
                    .iter()
                    .filter_map(|a| Listener::decode(a.value.as_slice()).ok())
                    .filter_map(|l| l.name.strip_prefix("0.0.0.0_").map(String::from))
                    .collect::<Vec<_>>(),
            )),
            CLUSTER => Some((
                ENDPOINT,
                resources
                    .iter()
                    .filter_map(|a| Cluster::decode(a.value.as_slice()).ok())
                    .filter(|c| c.eds_cluster_config.is_some())
                    .map(|c| c.name)
                    .collect(),
            )),
            _ => None,
        };
        if let Some((next, names)) = follow_up
            && subscribed.get(next) != Some(&names)
        {
            subscribed.insert(next.to_string(), names.clone());
            let _ = tx.send(ask(next, names, "", "")).await;
        }
        let _ = events.send(Event {
            client: id,
            type_url,
            version: version_info,
        });
    }
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat; after the ')' they are 12 and 13.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let clients: usize = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(DEFAULT_CLIENTS);
    if std::env::var_os("BENCH_KUBERNETES").is_some() {
        let netns = common::netns::NetNs::new("bench", &["10.244.0.1/32"]);
        netns.enter(move || on_kubernetes(clients));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("mkdir");
    write_mesh(&config);
    let control = common::Control::start(&config);
    let edit = move |round: usize| {
        std::fs::write(
            config.join("svc-0.yaml"),
            virtual_service(0, 50 + round as u32),
        )
        .expect("edit");
    };
    let change = format!(
        "file change (includes the {} ms debounce)",
        weft_control::store::FileStore::DEBOUNCE.as_millis()
    );
    measure(&control, clients, &change, edit, String::new);
}

/// The same mesh as Kubernetes objects in a real API server: 1,000 Services (without
/// selectors) with an EndpointSlice of 10 addresses each, and the DestinationRules and
/// VirtualServices; each round is a `kubectl apply` of one VirtualService.
fn on_kubernetes(clients: usize) {
    let cluster = std::sync::Arc::new(common::cluster::Cluster::start());
    let manifest = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["manifest", "generate", "--set", "profile=minimal"])
        .output()
        .expect("weft manifest generate");
    let output = cluster.try_kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &String::from_utf8_lossy(&manifest.stdout),
    );
    assert!(output.status.success(), "{output:?}");
    cluster.kubectl(&["wait", "--for=condition=Established", "crd", "--all"]);
    let mut objects = String::new();
    for n in 0..20 {
        objects.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: team-{n}}}\n---\n"
        ));
    }
    for s in 0..SERVICES {
        let ns = format!("team-{}", s % 20);
        objects.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n---\n"
        ));
        objects.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{s}-1\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: svc-{s}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        ));
        for e in 0..ENDPOINTS {
            objects.push_str(&format!(
                "- addresses: [10.{}.{}.{}]\n",
                100 + s / 250,
                s % 250,
                e + 1
            ));
        }
        objects.push_str("---\n");
        objects.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{s}, namespace: {ns}}}\nspec:\n  host: svc-{s}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\n"
        ));
        objects.push_str(&virtual_service(s, 90));
    }
    let loaded = Instant::now();
    let output = cluster.try_kubectl_stdin(&["create", "-f", "-"], &objects);
    assert!(
        output.status.success(),
        "{:?}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "kubernetes: created {} objects in {:.0} s",
        20 + SERVICES * 4,
        loaded.elapsed().as_secs_f64()
    );
    let state = tempfile::tempdir().expect("tempdir");
    let control = common::Control::start_kubernetes(&cluster.kubeconfig, state.path());
    let editing = cluster.clone();
    let edit = move |round: usize| {
        editing.apply(&virtual_service(0, 50 + round as u32));
    };
    let metrics = cluster.clone();
    let watch_traffic = move || {
        let text = metrics.kubectl(&["get", "--raw", "/metrics"]);
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|line| line.starts_with(name) && line.contains("networking.istio.io"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        format!(
            "{:.0} watch events, {:.0} KiB",
            sum("apiserver_watch_events_total"),
            sum("apiserver_watch_events_sizes_sum") / 1024.0
        )
    };
    measure(&control, clients, "kubectl apply", edit, watch_traffic);
}

/// Connects `clients` ADS clients to `control`, then times `ROUNDS` edits (`edit(round)`)
/// until every client has the new routes; prints the figures, with `extra()` (read before
/// and after the rounds) beside them.
fn measure(
    control: &common::Control,
    clients: usize,
    change: &str,
    edit: impl Fn(usize) + Send + Sync + Clone + 'static,
    extra: impl Fn() -> String,
) {
    let pid = control.child.id();
    let addr = control.xds.clone();
    let rss_idle = proc_field(pid, "status", "VmRSS:");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        for id in 0..clients {
            tokio::spawn(client(id, addr.clone(), events_tx.clone()));
        }
        // Wait until every client holds routes and endpoints.
        let mut routes: HashMap<usize, String> = HashMap::new();
        let mut endpoints: HashMap<usize, String> = HashMap::new();
        let start = Instant::now();
        while routes.len() < clients || endpoints.len() < clients {
            let event = events.recv().await.expect("events");
            match event.type_url.as_str() {
                ROUTE => drop(routes.insert(event.client, event.version)),
                ENDPOINT => drop(endpoints.insert(event.client, event.version)),
                _ => {}
            }
        }
        let initial = start.elapsed();
        let rss_connected = proc_field(pid, "status", "VmRSS:");
        let extra_before = extra();
        let mut push_times = Vec::new();
        let mut push_cpu = Vec::new();
        for round in 0..ROUNDS {
            let cpu_before = cpu_seconds(pid);
            let edited = Instant::now();
            let edit = edit.clone();
            let editing = tokio::task::spawn_blocking(move || edit(round));
            let mut updated = std::collections::HashSet::new();
            while updated.len() < clients {
                let event = events.recv().await.expect("events");
                if event.type_url == ROUTE && routes.get(&event.client) != Some(&event.version) {
                    routes.insert(event.client, event.version);
                    updated.insert(event.client);
                }
            }
            push_times.push(edited.elapsed().as_secs_f64());
            editing.await.expect("the edit");
            // Let the ACKs land before reading the CPU counter.
            tokio::time::sleep(Duration::from_millis(200)).await;
            push_cpu.push(cpu_seconds(pid) - cpu_before);
        }
        println!("push: {SERVICES} services x {ENDPOINTS} endpoints, {clients} ADS clients (LDS, RDS, CDS, EDS each)");
        println!("  initial sync of all clients: {:.2} s", initial.as_secs_f64());
        println!(
            "  {change} -> new routes at all {clients} clients: median {:.0} ms over {ROUNDS} rounds",
            median(push_times.clone()) * 1e3,
        );
        println!("  control-plane CPU per push: median {:.2} s", median(push_cpu));
        println!(
            "  control-plane RSS: {:.0} MiB before clients, {:.0} MiB after the initial sync, {:.0} MiB after the pushes, peak {:.0} MiB",
            rss_idle as f64 / 1024.0,
            rss_connected as f64 / 1024.0,
            proc_field(pid, "status", "VmRSS:") as f64 / 1024.0,
            proc_field(pid, "status", "VmHWM:") as f64 / 1024.0
        );
        let extra_after = extra();
        if !extra_after.is_empty() {
            println!("  Istio-resource watch traffic from the API server (all watchers), before the {ROUNDS} pushes: {extra_before}; after: {extra_after}");
        }
    });
}
