//! `weft proxy`: a sidecar for one workload. It registers the workload with `weft control`,
//! gets the workload's certificate, and proxies: outbound as an explicit HTTP proxy (point
//! the application's `HTTP_PROXY` at it), inbound with mesh mTLS in front of the application.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use weft_proxy::Settings;

/// Arguments of `weft proxy`.
#[derive(clap::Args)]
pub struct Args {
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    control: String,
    /// Workload name.
    #[arg(long)]
    name: String,
    /// Namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A service the workload serves, `NAME:PORT` (repeatable). A name without dots is
    /// `NAME.<namespace>.svc.cluster.local`.
    #[arg(long = "service", value_parser = parse_service)]
    services: Vec<(String, u16)>,
    /// A per-upstream local port, `LOCAL_PORT=HOST:PORT` (repeatable): every connection to
    /// it goes to that service, for applications that cannot use an HTTP proxy. `0` picks a
    /// free port.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    upstreams: Vec<(u16, String, u16)>,
    /// Workload labels, `k=v,k=v`.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    labels: BTreeMap<String, String>,
    /// Service account (the identity's last part).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Where the application listens on loopback.
    #[arg(long)]
    app_port: Option<u16>,
    /// Inbound listener port (0: any free port).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Outbound listener port, the explicit HTTP proxy (0: any free port).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Admin port on loopback (0: any free port).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Prometheus metrics port, `/stats/prometheus` (0: any free port).
    #[arg(long, default_value_t = 15020)]
    metrics_port: u16,
    /// Address the inbound and outbound listeners bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Address other sidecars reach this one on.
    #[arg(long, default_value = "127.0.0.1")]
    instance_ip: IpAddr,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The join token for this identity (`weft join-token`); or set `WEFT_JOIN_TOKEN`.
    #[arg(
        long,
        env = "WEFT_JOIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// A file holding the join token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Use the certificate chain in this PEM file instead of asking the control plane's CA
    /// (with --key and --root-cert; Istio's file-mounted certificates). Reloaded when the
    /// files change.
    #[arg(long, requires_all = ["key", "root_cert"])]
    cert_chain: Option<PathBuf>,
    /// The private key of --cert-chain, PEM.
    #[arg(long, requires = "cert_chain")]
    key: Option<PathBuf>,
    /// The root certificate peers must chain to, PEM (with --cert-chain).
    #[arg(long, requires = "cert_chain")]
    root_cert: Option<PathBuf>,
    /// How long a drain (SIGTERM, `POST /quitquitquit`) waits for connections to finish
    /// (Istio's `terminationDrainDuration`).
    #[arg(long, default_value = "5s", value_parser = super::control::parse_duration)]
    drain_duration: std::time::Duration,
    /// Put the Envoy response flags of errors the proxy answers itself (`NR`, `UH`, `UF`,
    /// …) in a `weft-response-flags` response header, for debugging. They are always in the
    /// access log and the metrics.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    debug_headers: bool,
    /// Worker threads (Istio's `concurrency`); 0 = one per CPU.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Log filter, as `RUST_LOG`.
    #[arg(long, default_value = "info")]
    log: String,
}

fn parse_service(text: &str) -> Result<(String, u16), String> {
    let (name, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not NAME:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} is not a port"))?;
    if name.is_empty() {
        return Err(format!("{text:?} has no service name"));
    }
    Ok((name.to_string(), port))
}

fn parse_upstream(text: &str) -> Result<(u16, String, u16), String> {
    let (local, target) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not LOCAL_PORT=HOST:PORT"))?;
    let local: u16 = local
        .parse()
        .map_err(|_| format!("{local:?} is not a port"))?;
    let (host, port) = parse_service(target)?;
    Ok((local, host, port))
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("label {pair:?} is not key=value"))?;
            Ok((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

/// Runs the sidecar until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging(&args.log)?;
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_string(),
        (None, None) if args.cert_chain.is_some() => String::new(),
        (None, None) => anyhow::bail!(
            "give the workload's join token with --token, --token-file or WEFT_JOIN_TOKEN (see `weft join-token`)"
        ),
    };
    let settings = Settings {
        control: args.control,
        name: args.name,
        namespace: args.namespace,
        service_account: args.service_account,
        labels: args.labels,
        services: args.services,
        app_port: args.app_port,
        bind: args.bind,
        instance_ip: args.instance_ip,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        metrics_port: args.metrics_port,
        upstreams: args.upstreams,
        trust_domain: args.trust_domain,
        token,
        certificate_files: match (args.cert_chain, args.key, args.root_cert) {
            (Some(chain), Some(key), Some(root)) => {
                Some(weft_proxy::identity::CertificateFiles { chain, key, root })
            }
            _ => None,
        },
        drain_duration: args.drain_duration,
        debug_headers: args.debug_headers,
    };
    let runtime = match args.concurrency {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .worker_threads(match args.concurrency {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    })
    .enable_all()
    .build()
    .context("starting the async runtime")?;
    runtime.block_on(async {
        let ports = weft_proxy::start(settings)
            .await
            .context("starting the proxy")?;
        let upstreams: String = ports
            .upstreams
            .iter()
            .map(|(addr, target)| format!(" upstream {addr}={target}"))
            .collect();
        tracing::info!(
            "listening: inbound {} outbound {} admin {} metrics {}{upstreams}",
            ports.inbound,
            ports.outbound,
            ports.admin,
            ports.metrics
        );
        tokio::select! {
            () = super::control::shutdown_signal() => ports.drain.drain().await,
            () = ports.drain.finished() => {}
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
