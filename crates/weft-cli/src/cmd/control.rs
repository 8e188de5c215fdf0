//! `weft control`: the control plane, serving a folder of Istio YAML over xDS until
//! interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use weft_api::mesh::MeshConfig;
use weft_control::app::{Config, ControlPlane, Source};
use weft_control::kube::inject::Injector;
use weft_control::kube::manifest::{
    self, CONTROL, INJECTOR_CONFIGURATION, NAMESPACE, VALIDATOR_CONFIGURATION,
};
use weft_control::kube::webhook::WebhookConfig;

/// Arguments of `weft control`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder of Istio YAML to serve; watched for changes.
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    config_dir: Option<PathBuf>,
    /// Read the configuration (Istio's custom resources) and the services (Services,
    /// EndpointSlices, Pods) from a Kubernetes API server instead of a folder.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig file for `--kubernetes`; otherwise found as kubectl finds it
    /// (`KUBECONFIG`, `~/.kube/config`, or in-cluster).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// With `--kubernetes`: serve the admission webhooks (HTTPS: sidecar injection at
    /// /inject, validation of Istio resources at /validate) on this address (Istio's port is
    /// 15017); the `caBundle` of `weft-sidecar-injector` and `weft-validator` is kept set
    /// to the mesh root.
    #[arg(long, requires = "kubernetes")]
    webhook_addr: Option<SocketAddr>,
    /// A name the webhook's certificate is valid for; repeat for several.
    #[arg(long = "webhook-name", default_values_t = [format!("{CONTROL}.{NAMESPACE}.svc")])]
    webhook_names: Vec<String>,
    /// The image injected pods run `weft` from [default: weft:<this version>].
    #[arg(long)]
    sidecar_image: Option<String>,
    /// The xDS address injected sidecars dial.
    #[arg(long, default_value_t = manifest::control_xds_address())]
    sidecar_control: String,
    /// Address for plaintext xDS (ADS over gRPC). Loopback by default: plaintext xDS is for
    /// proxies on this host.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Address for xDS and the certificate API over TLS, for proxies on other hosts (they
    /// must present a join token). Off unless given; Istio uses port 15012.
    #[arg(long)]
    xds_tls_addr: Option<SocketAddr>,
    /// A DNS name or IP address the TLS port's certificate is valid for; repeat for several.
    #[arg(long = "tls-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    tls_names: Vec<String>,
    /// Address for the debug pages (/ready, /debug/syncz, /debug/analysis, /debug/registry).
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_addr: SocketAddr,
    /// Where the CA keys and the join-token key live; `<config-dir>/.weft` by default
    /// (required with `--kubernetes`).
    #[arg(long, required_if_eq("kubernetes", "true"))]
    state_dir: Option<PathBuf>,
    /// Trust domain of workload identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates, written like Istio durations (`24h`, `90m`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: std::time::Duration,
    /// How long a workload that registered itself over xDS stays an endpoint after its
    /// stream closes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    registration_grace: std::time::Duration,
    /// Istio's MeshConfig, as YAML (the `mesh` key of the `istio` ConfigMap): Weft reads
    /// `pathNormalization`, `defaultConfig.gatewayTopology.numTrustedProxies` and the names
    /// of `extensionProviders`, and logs the fields it ignores.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// How often the key sets that RequestAuthentications name by `jwksUri` are fetched
    /// again (istiod's default is 20 minutes); a set that changes is pushed at once.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    jwks_refresh_interval: std::time::Duration,
    /// Log filter, as RUST_LOG would take it (`info`, `weft_control=debug`, …).
    #[arg(long, default_value = "info")]
    log: String,
}

/// Runs `weft control` until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging(&args.log)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let (source, state_dir) = match &args.config_dir {
            Some(dir) => (
                Source::Dir(dir.clone()),
                state_dir(args.state_dir.as_deref(), dir),
            ),
            None => (
                Source::Kubernetes {
                    kubeconfig: args.kubeconfig.clone(),
                    injection: args.webhook_addr.map(|addr| WebhookConfig {
                        addr,
                        names: args.webhook_names.clone(),
                        mutating: INJECTOR_CONFIGURATION.to_string(),
                        validating: VALIDATOR_CONFIGURATION.to_string(),
                        injector: Injector {
                            image: args.sidecar_image.clone().unwrap_or_else(default_image),
                            control: args.sidecar_control.clone(),
                            control_namespace: NAMESPACE.to_string(),
                        },
                    }),
                },
                args.state_dir.clone().context("--state-dir is needed")?,
            ),
        };
        let config = Config {
            source,
            xds_addr: args.xds_addr,
            debug_addr: args.debug_addr,
            state_dir,
            trust_domain: args.trust_domain.clone(),
            cert_ttl: args.cert_ttl,
            registration_grace: args.registration_grace,
            xds_tls_addr: args.xds_tls_addr,
            tls_names: args.tls_names.clone(),
            mesh: Arc::new(mesh_config(args.mesh_config.as_deref())?),
            jwks_refresh: args.jwks_refresh_interval,
        };
        let control = ControlPlane::start(config)
            .await
            .context("starting the control plane")?;
        let state = control.state();
        tracing::info!(resources = state.resources.len(), "loaded configuration");
        tracing::info!("serving debug pages on {}", control.debug_addr()?);
        if let Some(addr) = control.xds_tls_addr() {
            tracing::info!("serving xDS over TLS on {}", addr?);
            if let Some(pin) = weft_proxy::tls::pinned_root::pin_of_pem(control.root_pem()) {
                tracing::info!(
                    "sidecars on other hosts trust it with --control-root-hash {pin} (or the root's file, --control-root-cert)"
                );
            }
        }
        tracing::info!("serving xDS on {}", control.xds_addr()?);
        control
            .serve(shutdown_signal())
            .await
            .context("serving xDS")?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The `weft` image of this version.
pub fn default_image() -> String {
    format!("weft:{}", env!("CARGO_PKG_VERSION"))
}

/// `--state-dir`, or `.weft` inside the config dir (hidden, so the config loader skips it).
pub fn state_dir(given: Option<&std::path::Path>, config_dir: &std::path::Path) -> PathBuf {
    given.map_or_else(|| config_dir.join(".weft"), std::path::Path::to_path_buf)
}

pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = weft_api::Duration::parse(text)?.get();
    if duration.is_zero() {
        return Err("the duration must be positive".to_string());
    }
    Ok(duration)
}

pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// The mesh config in `path`, or Istio's defaults without one.
fn mesh_config(path: Option<&std::path::Path>) -> anyhow::Result<MeshConfig> {
    let Some(path) = path else {
        return Ok(MeshConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the mesh config {}", path.display()))?;
    let (config, ignored) = MeshConfig::parse(&text)
        .map_err(|e| anyhow::anyhow!("the mesh config {}: {e}", path.display()))?;
    for field in ignored {
        tracing::warn!(%field, "mesh config field not supported by Weft; ignored");
    }
    Ok(config)
}
