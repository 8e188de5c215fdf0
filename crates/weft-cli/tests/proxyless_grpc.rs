//! A real, unmodified xDS client obeys `weft control`: Python's grpcio (gRPC C-core's xDS
//! client) dials `xds:///echo.test.svc.cluster.local:9000` with a bootstrap pointing at the
//! control plane, and calls two gRPC servers registered as subsets v1 and v2 of one service.
//! Each test edits the YAML while the same client keeps running, and asserts on what reached
//! the servers.
//!
//! Needs the Python venv `scripts/test.sh` installs (grpcio); set `WEFT_TEST_PYTHON` to its
//! interpreter to run this file alone.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly when its own setup fails"
)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::grpc::{Process, clients_dir, python, script};

const TARGET: &str = "echo.test.svc.cluster.local:9000";

/// Which gRPC implementation plays the client.
#[derive(Clone, Copy)]
enum Implementation {
    /// Python `grpcio`: gRPC C-core's xDS client.
    CCore,
    /// Node.js `@grpc/grpc-js-xds`: an independent implementation in TypeScript.
    Node,
}

fn client_command(implementation: Implementation) -> Command {
    match implementation {
        Implementation::CCore => {
            let mut command = Command::new(python());
            command.arg(script()).args(["client", TARGET]);
            command
        }
        Implementation::Node => {
            assert!(
                clients_dir()
                    .join("node_modules/@grpc/grpc-js-xds")
                    .exists(),
                "this test needs @grpc/grpc-js-xds: run `bash scripts/test.sh` (it runs npm ci in {})",
                clients_dir().display()
            );
            let node = std::env::var_os("WEFT_TEST_NODE").unwrap_or_else(|| "node".into());
            let mut command = Command::new(node);
            command
                .arg(clients_dir().join("grpc_xds_client.js"))
                .arg(TARGET);
            command
        }
    }
}

struct Mesh {
    dir: tempfile::TempDir,
    debug_addr: String,
    _servers: Process,
    _control: common::Control,
    client: Process,
    client_in: ChildStdin,
    client_out: BufReader<ChildStdout>,
}

const SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: echo
  namespace: test
spec:
  hosts: [echo.test.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {number: 9000, name: grpc, protocol: GRPC}
  resolution: STATIC
  workloadSelector:
    labels: {app: echo}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: test
spec:
  host: echo
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"#;

fn workload(name: &str, version: &str, port: u64) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  namespace: test\nspec:\n  address: 127.0.0.1\n  ports: {{grpc: {port}}}\n  labels: {{app: echo, version: {version}}}\n  serviceAccount: echo\n"
    )
}

impl Mesh {
    fn start(virtual_service: &str) -> Self {
        Self::start_with(Implementation::CCore, virtual_service)
    }

    fn start_with(implementation: Implementation, virtual_service: &str) -> Self {
        let python = python();
        let mut servers = Command::new(&python)
            .arg(script())
            .args(["servers", "v1", "v2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python starts");
        let mut line = String::new();
        BufReader::new(servers.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: BTreeMap<String, u64> =
            serde_json::from_str(&line).expect("servers print their ports");
        let servers = Process(servers);

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::create_dir(&config).unwrap();
        std::fs::write(config.join("service.yaml"), SERVICE).unwrap();
        std::fs::write(
            config.join("v1.yaml"),
            workload("echo-v1", "v1", ports["v1"]),
        )
        .unwrap();
        std::fs::write(
            config.join("v2.yaml"),
            workload("echo-v2", "v2", ports["v2"]),
        )
        .unwrap();
        std::fs::write(config.join("routes.yaml"), virtual_service).unwrap();

        let control = common::Control::start(&config);
        let (debug_addr, xds_addr) = (control.debug.clone(), control.xds.clone());

        let bootstrap = dir.path().join("bootstrap.json");
        std::fs::write(
            &bootstrap,
            serde_json::json!({
                "xds_servers": [{"server_uri": xds_addr, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
                "node": {"id": "sidecar~127.0.0.1~client.test~test.svc.cluster.local", "locality": {"zone": "z1"}},
            })
            .to_string(),
        )
        .unwrap();
        let mut client = client_command(implementation)
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the client starts");
        let client_in = client.stdin.take().unwrap();
        let client_out = BufReader::new(client.stdout.take().unwrap());
        Self {
            dir,
            debug_addr,
            _servers: servers,
            _control: control,
            client: Process(client),
            client_in,
            client_out,
        }
    }

    fn calls(&mut self, calls: usize, method: &str, metadata: &[(&str, &str)]) -> Outcome {
        let command = serde_json::json!({"calls": calls, "method": method, "metadata": metadata, "details": true});
        writeln!(self.client_in, "{command}").unwrap();
        let mut line = String::new();
        self.client_out.read_line(&mut line).unwrap();
        assert!(
            !line.is_empty(),
            "the client exited: {:?}",
            self.client.0.try_wait()
        );
        let result: Value = serde_json::from_str(&line).unwrap();
        let counts = |key: &str| -> BTreeMap<String, u64> {
            result[key]
                .as_object()
                .unwrap()
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        };
        Outcome {
            replies: counts("replies"),
            errors: counts("errors"),
            raw: result,
        }
    }

    fn edit_routes(&self, virtual_service: &str) {
        self.edit("routes.yaml", virtual_service);
    }

    fn edit(&self, file: &str, contents: &str) {
        // Write then rename, as editors do.
        let config = self.dir.path().join("config");
        let temporary = config.join(format!(".{file}.tmp"));
        std::fs::write(&temporary, contents).unwrap();
        std::fs::rename(&temporary, config.join(file)).unwrap();
    }

    /// Calls in small batches until `done` holds: the client sees a pushed change without a
    /// restart, and the wait ends as soon as it does.
    fn until(&mut self, method: &str, metadata: &[(&str, &str)], done: impl Fn(&Outcome) -> bool) {
        eventually(
            "the change reaches the client",
            Duration::from_secs(30),
            || {
                let outcome = self.calls(20, method, metadata);
                if done(&outcome) {
                    Ok(())
                } else {
                    Err(outcome.raw)
                }
            },
        );
    }
}

use common::{eventually, get, get_json};

struct Outcome {
    replies: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    raw: Value,
}

impl Outcome {
    fn count(&self, name: &str) -> u64 {
        self.replies.get(name).copied().unwrap_or(0)
    }

    fn failed(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}

fn split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\n  namespace: test\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {{host: echo, subset: v1}}\n      weight: {v1}\n    - destination: {{host: echo, subset: v2}}\n      weight: {v2}\n"
    )
}

const HEADER_ROUTE: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\n  namespace: test\nspec:\n  hosts: [echo]\n  http:\n  - match:\n    - headers:\n        x-canary: {exact: \"yes\"}\n    route:\n    - destination: {host: echo, subset: v2}\n  - route:\n    - destination: {host: echo, subset: v1}\n";

/// 1,000 calls under an 80/20 VirtualService: v2 gets 20% ± 5 points, and nothing fails.
fn assert_80_20_split(mesh: &mut Mesh) {
    let outcome = mesh.calls(1000, "/test.Echo/Echo", &[]);
    assert!(outcome.errors.is_empty(), "{}", outcome.raw);
    let v2 = outcome.count("v2");
    assert_eq!(outcome.count("v1") + v2, 1000);
    assert!(
        (150..=250).contains(&v2),
        "80/20 split: v2 got {v2} of 1000"
    );
}

/// Polls `/debug/syncz` until `done` holds for the first proxy (`what` says what that means);
/// returns that proxy's entry.
fn syncz_until(mesh: &Mesh, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(30), || {
        let syncz = get_json(&mesh.debug_addr, "/debug/syncz");
        let proxy = &syncz["proxies"][0];
        if done(proxy) {
            Ok(proxy.clone())
        } else {
            Err(syncz)
        }
    })
}

#[test]
fn weighted_split_and_header_routing_follow_the_yaml() {
    let mut mesh = Mesh::start(&split(80, 20));
    assert_80_20_split(&mut mesh);

    // The control plane shows the client, with every type sent and acknowledged.
    let syncz = get_json(&mesh.debug_addr, "/debug/syncz");
    let proxy = &syncz["proxies"][0];
    assert_eq!(
        proxy["nodeId"], "sidecar~127.0.0.1~client.test~test.svc.cluster.local",
        "{syncz}"
    );
    for kind in [
        "Listener",
        "RouteConfiguration",
        "Cluster",
        "ClusterLoadAssignment",
    ] {
        let status = &proxy["types"][kind];
        assert!(
            !status["sentVersion"].as_str().unwrap().is_empty(),
            "{kind}: {syncz}"
        );
        assert_eq!(
            status["ackedVersion"], status["sentVersion"],
            "{kind}: {syncz}"
        );
        assert!(status["lastNack"].is_null(), "{kind}: {syncz}");
    }
    // And what it was sent, as an Envoy config dump; `name.namespace` finds it too.
    let dump = get_json(
        &mesh.debug_addr,
        "/debug/config_dump?proxy=sidecar~127.0.0.1~client.test~test.svc.cluster.local",
    );
    assert_eq!(
        get_json(&mesh.debug_addr, "/debug/config_dump?proxy=client.test"),
        dump
    );
    let config = |kind: &str| {
        dump["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"] == format!("type.googleapis.com/envoy.admin.v3.{kind}"))
            .unwrap_or_else(|| panic!("no {kind} in {dump}"))
            .clone()
    };
    let listener = &config("ListenersConfigDump")["dynamicListeners"][0];
    assert_eq!(
        listener["name"], "echo.test.svc.cluster.local:9000",
        "{dump}"
    );
    assert_eq!(
        listener["activeState"]["versionInfo"],
        proxy["types"]["Listener"]["sentVersion"]
    );
    let route = &config("RoutesConfigDump")["dynamicRouteConfigs"][0]["routeConfig"];
    let weighted = &route["virtualHosts"][0]["routes"][0]["route"]["weightedClusters"];
    let clusters: Vec<(&str, u64)> = weighted["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        clusters,
        [
            ("outbound|9000|v1|echo.test.svc.cluster.local", 80),
            ("outbound|9000|v2|echo.test.svc.cluster.local", 20)
        ],
        "{route}"
    );
    let endpoints = config("EndpointsConfigDump");
    assert_eq!(
        endpoints["dynamicEndpointConfigs"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "v1 and v2: {endpoints}"
    );

    let registry = get_json(&mesh.debug_addr, "/debug/registry");
    assert_eq!(
        registry["services"][0]["host"],
        "echo.test.svc.cluster.local"
    );
    assert_eq!(
        registry["services"][0]["endpoints"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get_json(&mesh.debug_addr, "/debug/analysis")["messages"],
        serde_json::json!([])
    );

    // Edit the file: the running client follows, no restart.
    mesh.edit_routes(HEADER_ROUTE);
    // (Wait on the header: under 80/20, twenty calls all reaching v2 would take odds of 1e-14.)
    mesh.until("/test.Echo/Echo", &[("x-canary", "yes")], |o| {
        o.count("v2") == 20
    });
    let with_header = mesh.calls(200, "/test.Echo/Echo", &[("x-canary", "yes")]);
    assert_eq!(with_header.count("v2"), 200, "{}", with_header.raw);
    let without = mesh.calls(200, "/test.Echo/Echo", &[]);
    assert_eq!(without.count("v1"), 200, "{}", without.raw);

    // Back to a split, the other way round.
    mesh.edit_routes(&split(0, 100));
    mesh.until("/test.Echo/Echo", &[], |o| o.count("v2") == 20);
}

#[test]
fn retries_and_fault_aborts_show_in_the_client_results() {
    let no_retries = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: echo\n  namespace: test\nspec:\n  hosts: [echo]\n  http:\n  - route:\n    - destination: {host: echo, subset: v1}\n    retries: {attempts: 0}\n";
    let mut mesh = Mesh::start(no_retries);
    // Every other call to Flaky fails, and nothing retries it.
    let without = mesh.calls(200, "/test.Echo/Flaky", &[]);
    assert_eq!(without.failed("UNAVAILABLE"), 100, "{}", without.raw);

    let retries = no_retries.replace(
        "retries: {attempts: 0}",
        "retries: {attempts: 3, retryOn: unavailable}",
    );
    mesh.edit_routes(&retries);
    mesh.until("/test.Echo/Flaky", &[], |o| o.errors.is_empty());
    let with = mesh.calls(200, "/test.Echo/Flaky", &[]);
    assert!(
        with.errors.is_empty() && with.count("v1") == 200,
        "{}",
        with.raw
    );

    let abort = no_retries.replace(
        "retries: {attempts: 0}",
        "fault:\n      abort:\n        grpcStatus: PERMISSION_DENIED\n        percentage: {value: 50}",
    );
    mesh.edit_routes(&abort);
    mesh.until("/test.Echo/Echo", &[], |o| {
        o.failed("PERMISSION_DENIED") > 0
    });
    let aborted = mesh.calls(1000, "/test.Echo/Echo", &[]);
    let denied = aborted.failed("PERMISSION_DENIED");
    assert!(
        (400..=600).contains(&denied),
        "50% abort: {denied} of 1000 denied: {}",
        aborted.raw
    );
    assert_eq!(aborted.count("v1") + denied, 1000, "{}", aborted.raw);
}

#[test]
fn a_nack_keeps_the_client_on_its_last_good_config_and_shows_in_syncz() {
    let mut mesh = Mesh::start(&split(100, 0));
    assert_eq!(mesh.calls(50, "/test.Echo/Echo", &[]).count("v1"), 50);

    // gRPC has no RANDOM load balancer: the client rejects the new clusters.
    let random = SERVICE.replace(
        "  host: echo\n",
        "  host: echo\n  trafficPolicy:\n    loadBalancer: {simple: RANDOM}\n",
    );
    mesh.edit("service.yaml", &random);
    let proxy = syncz_until(&mesh, "the NACK is recorded", |p| {
        !p["types"]["Cluster"]["lastNack"].is_null()
    });
    let nack = proxy["types"]["Cluster"]["lastNack"].clone();
    assert!(
        nack["error"].as_str().unwrap().contains("LB policy"),
        "{nack}"
    );
    assert_ne!(nack["rejectedVersion"], nack["keptVersion"]);
    // The NACK is counted in the control plane's metrics too.
    let metrics = get(&mesh.debug_addr, "/metrics");
    let nacks: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_xds_nacks_total{type=\"Cluster\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(nacks >= 1, "no NACK counted:\n{metrics}");
    for expected in [
        "weft_xds_connected_proxies 1",
        "weft_config_resources 5",
        "weft_config_messages{level=\"Error\"} 0",
        "weft_xds_push_duration_seconds_bucket{",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected:?} not in:\n{metrics}"
        );
    }
    // Still served by the version it kept.
    let outcome = mesh.calls(50, "/test.Echo/Echo", &[]);
    assert_eq!(outcome.count("v1"), 50, "{}", outcome.raw);

    // Fixing the YAML is accepted again.
    mesh.edit(
        "service.yaml",
        &SERVICE.replace(
            "  host: echo\n",
            "  host: echo\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n",
        ),
    );
    syncz_until(&mesh, "the fix is acknowledged", |p| {
        let cluster = &p["types"]["Cluster"];
        cluster["ackedVersion"] == cluster["sentVersion"]
            && cluster["sentVersion"] != nack["rejectedVersion"]
    });
}

#[test]
fn a_second_independent_client_grpc_js_obeys_too() {
    let mut mesh = Mesh::start_with(Implementation::Node, &split(80, 20));
    assert_80_20_split(&mut mesh);

    mesh.edit_routes(HEADER_ROUTE);
    mesh.until("/test.Echo/Echo", &[("x-canary", "yes")], |o| {
        o.count("v2") == 20
    });
    assert_eq!(mesh.calls(100, "/test.Echo/Echo", &[]).count("v1"), 100);
}
