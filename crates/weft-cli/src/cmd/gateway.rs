//! `weft gateway`: an ingress gateway at the mesh's edge. It listens on the ports of the
//! Gateway resources whose `selector` matches its `--labels`, terminates TLS where they say
//! so, and routes with the VirtualServices bound to them into the mesh over mTLS. It is no
//! forward proxy (no outbound listener) unless `--forward-proxy` says so.

use std::process::ExitCode;

use anyhow::Context;

use super::proxy::{self, Defaults};

/// Arguments of `weft gateway`: those of `weft proxy`, of which the inbound and outbound
/// ports are of little use (they default to free ones), and whether to be a forward proxy
/// as well.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: proxy::Args,
    /// Also open the outbound listener, an explicit HTTP proxy (`CONNECT` included) on
    /// loopback at --outbound-port, as a sidecar has. Off by default: a gateway takes
    /// traffic into the mesh, and is no forward proxy for whoever reaches it.
    #[arg(long, default_value_t = false)]
    forward_proxy: bool,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mut settings, concurrency) = args.proxy.settings(&Defaults::GATEWAY, None)?;
    settings.gateway = true;
    settings.forward_proxy = args.forward_proxy;
    proxy::runtime(concurrency)?.block_on(async {
        let ports = weft_proxy::start(settings)
            .await
            .context("starting the gateway")?;
        proxy::log_ports(&ports);
        tokio::select! {
            () = super::control::shutdown_signal() => ports.drain.drain().await,
            () = ports.drain.finished() => {}
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
