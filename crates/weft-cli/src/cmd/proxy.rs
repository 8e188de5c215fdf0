//! `weft proxy`: a sidecar for one workload. It registers the workload with `weft control`,
//! gets the workload's certificate, and proxies: outbound as an explicit HTTP proxy (point
//! the application's `HTTP_PROXY` at it), inbound with mesh mTLS in front of the application.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use weft_proxy::Settings;
use weft_proxy::tls::identity::Credential;

/// Arguments of `weft proxy` (and the sidecar's of `weft run`).
#[derive(clap::Args)]
#[group(id = "sidecar")]
pub struct Args {
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    control: String,
    /// The root (PEM) the control plane's certificate must chain to: xDS and the CA are then
    /// spoken over TLS (the control plane's `--xds-tls-addr`, Istio's port 15012), with the
    /// join token on both. Without it, xDS is plaintext, for a control plane on this host.
    #[arg(long, conflicts_with = "control_root_hash")]
    control_root_cert: Option<PathBuf>,
    /// Instead of the root's file, its hash, `sha256:<hex>` of its public key (`weft control`
    /// logs it at start): the root is taken from the control plane's TLS chain only when a
    /// certificate of it has this hash, then verified as with `--control-root-cert`.
    #[arg(long, value_parser = weft_proxy::tls::pinned_root::parse_pin)]
    control_root_hash: Option<weft_proxy::tls::pinned_root::Pin>,
    /// Workload name (for `weft run`, the command's file name when not given).
    #[arg(long)]
    name: Option<String>,
    /// Namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A service the workload serves, `NAME:PORT` (repeatable): reached on the inbound port,
    /// with the application at `--app-port`. `NAME:PORT:TARGET_PORT` (Kubernetes'
    /// `targetPort`) is served by the application on 127.0.0.1:TARGET_PORT instead, reached by
    /// connections to the workload's TARGET_PORT that interception (`weft iptables -z`)
    /// redirects to the inbound port: one sidecar then fronts several application ports. A
    /// name without dots is `NAME.<namespace>.svc.cluster.local`.
    #[arg(long = "service", value_parser = parse_service)]
    services: Vec<(String, u16, Option<u16>)>,
    /// A per-upstream local port on loopback, `LOCAL_PORT=HOST:PORT` (repeatable): every
    /// connection to it goes to that service, for applications that cannot use an HTTP
    /// proxy. `0` picks a free port.
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
    /// Inbound listener port; 0 picks a free one [default: 15006; `weft run`: a free one]
    #[arg(long)]
    inbound_port: Option<u16>,
    /// Outbound listener port, the explicit HTTP proxy (and where iptables redirects the
    /// application's connections), on loopback; 0 picks a free one [default: 15001; `weft
    /// run`: a free one]
    #[arg(long)]
    outbound_port: Option<u16>,
    /// Admin port on loopback; 0 picks a free one [default: 15000; `weft run`: a free one]
    #[arg(long)]
    admin_port: Option<u16>,
    /// Prometheus metrics port, `/stats/prometheus`; 0 picks a free one [default: 15020;
    /// `weft run`: a free one]
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Address the inbound listener and the metrics port bind (and a gateway's ports). The
    /// outbound listener, the admin port and the --upstream ports are for this host only:
    /// they stay on loopback (this address when it is a loopback one, else 127.0.0.1).
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
    /// A file holding the token: a join token, or on Kubernetes the pod's projected
    /// service-account token (audience `istio-ca`); read again at every renewal.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The config dir of a control plane on this machine: the join token is made from its
    /// key (`<config-dir>/.weft`), as `weft join-token` would.
    #[arg(long, conflicts_with_all = ["token", "token_file"])]
    config_dir: Option<PathBuf>,
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
    /// Connections each listener serves at once; more are closed as they arrive, so a
    /// flood cannot take every file descriptor.
    #[arg(long, default_value_t = 16_384)]
    max_connections: usize,
    /// How long an HTTP connection may carry nothing before it is closed (Envoy's
    /// `idle_timeout`); an idle HTTP/2 connection or a stalled preface included.
    #[arg(long, default_value = "1h", value_parser = super::control::parse_duration)]
    idle_timeout: std::time::Duration,
    /// How long a request or response body may send nothing while the proxy reads it
    /// before the stream is broken off (Envoy's `stream_idle_timeout`): a client trickling a
    /// body cannot hold a stream forever.
    #[arg(long, default_value = "5m", value_parser = super::control::parse_duration)]
    stream_idle_timeout: std::time::Duration,
    /// Put the Envoy response flags of errors the proxy answers itself (`NR`, `UH`, `UF`,
    /// …) in a `weft-response-flags` response header, for debugging. They are always in the
    /// access log and the metrics.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    debug_headers: bool,
    /// Worker threads (Istio's `concurrency`); 0 = one per CPU.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Log filter, as `RUST_LOG` [default: info; `weft run`: warn]
    #[arg(long)]
    log: Option<String>,
}

/// What `weft proxy` and `weft run` choose differently when a flag is not given.
pub struct Defaults {
    /// Inbound, outbound, admin and metrics ports.
    pub ports: [u16; 4],
    /// Log filter.
    pub log: &'static str,
}

impl Defaults {
    /// A sidecar of its own: Istio's ports.
    pub const PROXY: Defaults = Defaults {
        ports: [15006, 15001, 15000, 15020],
        log: "info",
    };
    /// A sidecar beside others on one machine, quiet beside its application's output.
    pub const RUN: Defaults = Defaults {
        ports: [0; 4],
        log: "warn",
    };
    /// An ingress gateway: its own listeners come from Gateway resources.
    pub const GATEWAY: Defaults = Defaults {
        ports: [0, 0, 15000, 15020],
        log: "info",
    };
}

impl Args {
    /// Turns the flags into the sidecar's settings, with `name` when none was given; also
    /// starts logging. Returns the settings and the worker count.
    pub fn settings(
        self,
        defaults: &Defaults,
        name: Option<String>,
    ) -> anyhow::Result<(Settings, usize)> {
        super::init_logging(self.log.as_deref().unwrap_or(defaults.log))?;
        let name = self
            .name
            .or(name)
            .context("give the workload's name with --name")?;
        let credential = match (&self.token, &self.token_file, &self.config_dir) {
            (Some(token), _, _) => Credential::Token(token.clone()),
            (None, Some(file), _) => {
                // Read now so a wrong path fails at start; read again at every renewal.
                Credential::File(file.clone()).token()?;
                Credential::File(file.clone())
            }
            (None, None, Some(config_dir)) => Credential::Token(super::join_token::issue(
                config_dir,
                &self.namespace,
                &self.service_account,
            )?),
            (None, None, None) if self.cert_chain.is_some() => Credential::Token(String::new()),
            (None, None, None) => anyhow::bail!(
                "give the workload's join token with --token, --token-file or WEFT_JOIN_TOKEN (see `weft join-token`), or the local control plane's --config-dir"
            ),
        };
        let [inbound, outbound, admin, metrics] = defaults.ports;
        let control_root = self
            .control_root_cert
            .as_ref()
            .map(|path| {
                std::fs::read(path)
                    .with_context(|| format!("reading --control-root-cert {}", path.display()))
            })
            .transpose()?;
        let settings = Settings {
            control: self.control,
            control_root,
            control_root_pin: self.control_root_hash,
            name,
            namespace: self.namespace,
            service_account: self.service_account,
            labels: self.labels,
            services: self.services,
            app_port: self.app_port,
            bind: self.bind,
            instance_ip: self.instance_ip,
            inbound_port: self.inbound_port.unwrap_or(inbound),
            outbound_port: self.outbound_port.unwrap_or(outbound),
            forward_proxy: true,
            admin_port: self.admin_port.unwrap_or(admin),
            metrics_port: self.metrics_port.unwrap_or(metrics),
            upstreams: self.upstreams,
            trust_domain: self.trust_domain,
            credential,
            certificate_files: match (self.cert_chain, self.key, self.root_cert) {
                (Some(chain), Some(key), Some(root)) => {
                    Some(weft_proxy::tls::identity::CertificateFiles { chain, key, root })
                }
                _ => None,
            },
            drain_duration: self.drain_duration,
            limits: weft_proxy::ConnectionLimits {
                max_per_listener: self.max_connections.max(1),
                idle_timeout: self.idle_timeout,
                stream_idle_timeout: self.stream_idle_timeout,
            },
            debug_headers: self.debug_headers,
            gateway: false,
        };
        Ok((settings, self.concurrency))
    }
}

/// The async runtime for a sidecar with `concurrency` workers (0: one per CPU).
pub fn runtime(concurrency: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    match concurrency {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .worker_threads(match concurrency {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    })
    .enable_all()
    .build()
    .context("starting the async runtime")
}

/// Logs where a started sidecar listens.
pub fn log_ports(ports: &weft_proxy::Ports) {
    let upstreams: String = ports
        .upstreams
        .iter()
        .map(|(addr, target)| format!(" upstream {addr}={target}"))
        .collect();
    tracing::info!(
        "listening: inbound {} outbound {} admin {} metrics {}{upstreams}",
        ports.inbound,
        ports
            .outbound
            .map_or_else(|| "off".to_string(), |addr| addr.to_string()),
        ports.admin,
        ports.metrics
    );
}

fn parse_service(text: &str) -> Result<(String, u16, Option<u16>), String> {
    let mut parts = text.split(':');
    let (Some(name), Some(port), target, None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "{text:?} is not NAME:PORT or NAME:PORT:TARGET_PORT"
        ));
    };
    let number = |port: &str| {
        port.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} is not a port"))
    };
    if name.is_empty() {
        return Err(format!("{text:?} has no service name"));
    }
    Ok((
        name.to_string(),
        number(port)?,
        target.map(number).transpose()?,
    ))
}

fn parse_upstream(text: &str) -> Result<(u16, String, u16), String> {
    let (local, target) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not LOCAL_PORT=HOST:PORT"))?;
    let local: u16 = local
        .parse()
        .map_err(|_| format!("{local:?} is not a port"))?;
    match parse_service(target)? {
        (host, port, None) => Ok((local, host, port)),
        (_, _, Some(_)) => Err(format!("{target:?} is not HOST:PORT")),
    }
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
    let (settings, concurrency) = args.settings(&Defaults::PROXY, None)?;
    runtime(concurrency)?.block_on(async {
        let ports = weft_proxy::start(settings)
            .await
            .context("starting the proxy")?;
        log_ports(&ports);
        tokio::select! {
            () = super::control::shutdown_signal() => ports.drain.drain().await,
            () = ports.drain.finished() => {}
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
