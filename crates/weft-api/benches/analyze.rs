//! Benchmark: load, validate and analyse a generated set of 10,000 Istio resources.
//!
//! Prints resources per second (median of 5 runs), the ratio against a baseline measured in
//! the same run — only scanning the same YAML into events with `yaml-rust2`, the floor any
//! loader must pay — and the process's peak resident memory. Run with
//! `cargo bench -p weft-api --bench analyze`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use weft_api::load::{Limits, Loader};

const RESOURCES: usize = 10_000;
const RUNS: usize = 5;

/// 10,000 resources over 100 namespaces: per service a VirtualService splitting traffic
/// between subsets, a DestinationRule defining them, a ServiceEntry, a WorkloadEntry and an
/// AuthorizationPolicy; per namespace a PeerAuthentication.
fn generate() -> String {
    let mut text = String::new();
    let mut count = 0;
    let mut service = 0;
    while count < RESOURCES {
        let ns = format!("team-{}", service % 100);
        let name = format!("svc-{service}");
        if service < 100 {
            let _ = write!(
                text,
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  mtls:\n    mode: STRICT\n---\n"
            );
            count += 1;
        }
        let _ = write!(
            text,
            r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  namespace: {ns}
spec:
  hosts: [{name}]
  http:
  - match:
    - headers:
        x-canary: {{exact: "true"}}
      uri: {{prefix: /api/}}
    route:
    - destination: {{host: {name}, subset: v2}}
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}}
  - route:
    - destination: {{host: {name}, subset: v1}}
      weight: 90
    - destination: {{host: {name}, subset: v2}}
      weight: 10
    timeout: 10s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {name}
  namespace: {ns}
spec:
  host: {name}
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 100}}
      http: {{http1MaxPendingRequests: 100, http2MaxRequests: 1000}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}}
  subsets:
  - name: v1
    labels: {{app: {name}, version: v1}}
  - name: v2
    labels: {{app: {name}, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}-ext
  namespace: {ns}
spec:
  hosts: [{name}.example.com]
  ports: [{{number: 443, name: https, protocol: TLS}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}-vm
  namespace: {ns}
spec:
  address: 10.{}.{}.{}
  labels: {{app: {name}, version: v1}}
  serviceAccount: {name}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {ns}
spec:
  selector:
    matchLabels: {{app: {name}}}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/{ns}/sa/frontend"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/*"]
---
"#,
            service / 65536 % 256,
            service / 256 % 256,
            service % 256
        );
        count += 5;
        service += 1;
    }
    text
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let text = generate();
    let limits = Limits {
        max_input_bytes: 1 << 30,
        ..Limits::default()
    };
    let mut baseline = Vec::new();
    let mut full = Vec::new();
    let mut loaded_count = 0;
    let mut message_count = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let mut parser = yaml_rust2::parser::Parser::new_from_str(&text);
        let mut events = 0usize;
        while let Ok((event, _)) = parser.next_token() {
            events += 1;
            if event == yaml_rust2::Event::StreamEnd {
                break;
            }
        }
        assert!(events > RESOURCES);
        baseline.push(start.elapsed());

        let start = Instant::now();
        let mut loader = Loader::new(limits);
        loader.load_str("generated.yaml", &text);
        let loaded = loader.finish();
        let messages = weft_api::check(&loaded);
        full.push(start.elapsed());
        loaded_count = loaded.resources.len();
        message_count = messages.len();
    }
    let (baseline, full) = (median(baseline), median(full));
    println!(
        "analyze: {loaded_count} resources ({:.1} MiB of YAML), {message_count} messages",
        text.len() as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  median of {RUNS}: {:.1} ms, {:.0} resources/s",
        full.as_secs_f64() * 1e3,
        loaded_count as f64 / full.as_secs_f64()
    );
    println!(
        "  baseline (YAML events only): {:.1} ms; analyze costs {:.2}x the baseline",
        baseline.as_secs_f64() * 1e3,
        full.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("  peak RSS of the process: {:.1} MiB", peak_rss_mib());
}
