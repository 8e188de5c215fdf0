//! `weft demo`: a whole mesh on this machine with one command — the control plane, the demo
//! bookshop's services each under `weft run`, the ingress gateway and a light traffic
//! generator, each a process of its own — and a short map of what to try.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Arguments of `weft demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Keep the mesh's configuration in this folder between runs (created if missing; files
    /// already there are kept). A temporary folder otherwise.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// First of the ports the demo uses: the gateway on it, the control plane on the next
    /// two, the services' applications from +10, their sidecars' admin pages from +20 and
    /// inbound ports from +30.
    #[arg(long, default_value_t = 18080)]
    port_base: u16,
}

/// One workload of the bookshop.
struct Workload {
    app: &'static str,
    version: &'static str,
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        app: "ratings",
        version: "v1",
    },
    Workload {
        app: "details",
        version: "v1",
    },
    Workload {
        app: "reviews",
        version: "v1",
    },
    Workload {
        app: "reviews",
        version: "v2",
    },
    Workload {
        app: "reviews",
        version: "v3",
    },
    Workload {
        app: "productpage",
        version: "v1",
    },
];

/// What the control plane's process is called in messages.
const CONTROL_PLANE: &str = "the control plane";

/// The demo's namespace (Istio's Bookinfo runs in `default` too).
const NAMESPACE: &str = "default";

/// The demo's configuration files, written where missing.
fn config_files(gateway_port: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "mesh.yaml",
            format!(
                "# Mutual TLS is required between the bookshop's services.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: {NAMESPACE}}}
spec:
  mtls: {{mode: STRICT}}
"
            ),
        ),
        (
            "destination-rules.yaml",
            format!(
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {NAMESPACE}}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"
            ),
        ),
        ("reviews.yaml", reviews_route(&[("v1", 100)])),
        (
            "gateway.yaml",
            format!(
                "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: {NAMESPACE}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    hosts: ['*']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo, namespace: {NAMESPACE}}}
spec:
  hosts: ['*']
  gateways: [bookinfo-gateway]
  http:
  - match: [{{uri: {{exact: /productpage}}}}, {{uri: {{exact: /}}}}]
    route: [{{destination: {{host: productpage, port: {{number: 9080}}}}}}]
"
            ),
        ),
    ]
}

/// The VirtualService for `reviews` with `weights` per subset.
pub fn reviews_route(weights: &[(&str, u32)]) -> String {
    let routes: String = weights
        .iter()
        .map(|(subset, weight)| {
            format!(
                "    - destination: {{host: reviews, subset: {subset}}}\n      weight: {weight}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {NAMESPACE}}}
spec:
  hosts: [reviews]
  http:
  - route:
{routes}"
    )
}

/// Examples the map points at, in a hidden folder the control plane does not load.
fn examples() -> Vec<(&'static str, String)> {
    vec![
        (
            "reviews-50-50.yaml",
            reviews_route(&[("v1", 50), ("v3", 50)]),
        ),
        (
            "ratings-fault.yaml",
            format!(
                "# Half the calls to ratings fail with 500: reviews v2 and v3 then show
# \"Ratings service is currently unavailable\".
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: {NAMESPACE}}}
spec:
  hosts: [ratings]
  http:
  - fault:
      abort: {{percentage: {{value: 50}}, httpStatus: 500}}
    route: [{{destination: {{host: ratings}}}}]
"
            ),
        ),
    ]
}

/// Children, stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    fn spawn(&mut self, what: &str, command: &mut Command) -> anyhow::Result<()> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        self.children.push((what.to_string(), child));
        Ok(())
    }

    /// The first child that ended, if one did.
    fn ended(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children.iter_mut().find_map(|(what, child)| {
            child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| (what.clone(), status))
        })
    }

    /// Stops every child, last started first, within `grace` (then kills).
    fn stop(&mut self, grace: Duration) {
        for (_, child) in self.children.iter().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .children
                .iter_mut()
                .any(|(_, child)| matches!(child.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Whether `port` on loopback is free now.
fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Waits until `check` holds, up to `limit`; says `what` if it never does.
fn wait_for(
    processes: &mut Processes,
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !check() {
        if let Some((who, status)) = processes.ended() {
            bail!("{who} stopped ({status}) while waiting for {what}");
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A GET on loopback; the status and body, or nothing when it failed.
fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let base = args.port_base;
    let port = |offset: u16| {
        base.checked_add(offset)
            .with_context(|| format!("--port-base {base} leaves no room for the demo's ports"))
    };
    let gateway_port = port(0)?;
    let xds = SocketAddr::from(([127, 0, 0, 1], port(1)?));
    let debug = SocketAddr::from(([127, 0, 0, 1], port(2)?));
    let gateway_admin = port(3)?;
    let mut fixed = vec![gateway_port, xds.port(), debug.port(), gateway_admin];
    for index in 0..WORKLOADS.len() as u16 {
        fixed.extend([port(10 + index)?, port(20 + index)?, port(30 + index)?]);
    }
    if let Some(taken) = fixed.iter().find(|p| !free(**p)) {
        bail!(
            "port {taken} is already taken: another demo may be running; move the demo's ports with --port-base"
        );
    }

    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => temporary_dir(),
    };
    write_config(&dir, gateway_port)?;
    let weft = std::env::current_exe().context("finding the weft binary")?;
    let mut processes = Processes {
        children: Vec::new(),
    };
    let quiet = |command: &mut Command| {
        command.stdout(Stdio::null());
    };
    let mut control = Command::new(&weft);
    control
        .arg("control")
        .arg("--config-dir")
        .arg(&dir)
        .args([
            "--xds-addr",
            &xds.to_string(),
            "--debug-addr",
            &debug.to_string(),
        ])
        .args(["--log", "warn"])
        .stdin(Stdio::null());
    processes.spawn(CONTROL_PLANE, &mut control)?;
    wait_for(
        &mut processes,
        Duration::from_secs(30),
        "the control plane",
        || get(debug, "/ready").is_some_and(|(status, _)| status == 200),
    )?;

    for (index, workload) in WORKLOADS.iter().enumerate() {
        let index = index as u16;
        let app_port = port(10 + index)?.to_string();
        let mut command = Command::new(&weft);
        command
            .arg("run")
            .args(["--control", &xds.to_string(), "--namespace", NAMESPACE])
            .arg("--config-dir")
            .arg(&dir)
            .args(["--name", &format!("{}-{}", workload.app, workload.version)])
            .args(["--service", &format!("{}:9080", workload.app)])
            .args([
                "--labels",
                &format!("app={},version={}", workload.app, workload.version),
            ])
            .args(["--service-account", &format!("bookinfo-{}", workload.app)])
            .args(["--app-port", &app_port])
            .args(["--admin-port", &port(20 + index)?.to_string()])
            .args(["--inbound-port", &port(30 + index)?.to_string()])
            .args(["--concurrency", "1", "--"])
            .arg(&weft)
            .args(["demo-app", workload.app, "--version", workload.version])
            .args(["--port", &app_port]);
        quiet(&mut command);
        processes.spawn(
            &format!("{} {}", workload.app, workload.version),
            &mut command,
        )?;
    }
    let mut gateway = Command::new(&weft);
    gateway
        .arg("gateway")
        .args(["--control", &xds.to_string()])
        .arg("--config-dir")
        .arg(&dir)
        .args(["--name", "ingressgateway", "--namespace", "istio-system"])
        .args(["--service-account", "ingressgateway"])
        .args(["--labels", "istio=ingressgateway"])
        .args([
            "--admin-port",
            &gateway_admin.to_string(),
            "--metrics-port",
            "0",
        ])
        .args(["--concurrency", "1", "--log", "warn"]);
    processes.spawn("the gateway", &mut gateway)?;

    let page = SocketAddr::from(([127, 0, 0, 1], gateway_port));
    wait_for(
        &mut processes,
        Duration::from_secs(60),
        "the product page",
        || {
            get(page, "/productpage").is_some_and(|(status, body)| {
                status == 200 && !body.contains("data-reviews-version=\"unavailable\"")
            })
        },
    )?;

    let generator = TrafficGenerator::start(page);
    println!(
        "Weft demo is running.

  product page   http://127.0.0.1:{gateway_port}/productpage   (through the ingress gateway)
  config dir     {dir}
  control plane  xDS {xds}, debug pages http://{debug}/debug/registry

Things to try:
  1. A 50/50 canary of reviews v1 and v3 (red stars); reload the page a few times:
       cp {dir}/.examples/reviews-50-50.yaml {dir}/reviews.yaml
  2. Check the configuration as the control plane sees it:
       weft analyze {dir}
  3. Inject faults: half the calls to ratings fail (reviews v2 and v3 show it):
       cp {dir}/.examples/ratings-fault.yaml {dir}/ratings.yaml

Light traffic is flowing to the product page. Ctrl-C stops everything.",
        dir = dir.display()
    );

    let waiting = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut reported = std::collections::BTreeSet::new();
    waiting.block_on(async {
        let mut check = tokio::time::interval(Duration::from_millis(200));
        let shutdown = super::control::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = check.tick() => {}
            }
            // A part that stops on its own is reported; the rest go on (a mesh keeps
            // serving without its control plane, which is started again).
            for (who, child) in &mut processes.children {
                let Ok(Some(status)) = child.try_wait() else {
                    continue;
                };
                if who.as_str() == CONTROL_PLANE {
                    eprintln!("weft demo: the control plane stopped ({status}); starting it again");
                    match control.spawn() {
                        Ok(restarted) => *child = restarted,
                        Err(error) => {
                            eprintln!("weft demo: cannot start the control plane: {error}")
                        }
                    }
                } else if reported.insert(who.clone()) {
                    eprintln!("weft demo: {who} stopped ({status})");
                }
            }
        }
    });
    generator.stop();
    processes.stop(Duration::from_secs(4));
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("Weft demo stopped.");
    Ok(ExitCode::SUCCESS)
}

/// A folder of its own under the system's temporary directory.
fn temporary_dir() -> PathBuf {
    std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()))
}

/// Writes the demo's configuration into `dir` where files are missing, and the examples.
fn write_config(dir: &Path, gateway_port: u16) -> anyhow::Result<()> {
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write the config dir {}: {e} (give a writable folder with --dir)",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir.join(".examples")).map_err(cannot)?;
    for (name, text) in config_files(gateway_port) {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text).map_err(cannot)?;
        }
    }
    for (name, text) in examples() {
        std::fs::write(dir.join(".examples").join(name), text).map_err(cannot)?;
    }
    Ok(())
}

/// Loads the product page every half second through the gateway, on a thread of its own.
struct TrafficGenerator {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl TrafficGenerator {
    fn start(page: SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = get(page, "/productpage");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Self { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
