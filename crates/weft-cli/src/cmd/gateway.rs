//! `weft gateway`: an ingress gateway at the mesh's edge. It listens on the ports of the
//! Gateway resources whose `selector` matches its `--labels`, terminates TLS where they say
//! so, and routes with the VirtualServices bound to them into the mesh over mTLS.

use std::process::ExitCode;

use anyhow::Context;

use super::proxy::{self, Defaults};

/// Arguments of `weft gateway`: those of `weft proxy`, of which the inbound and outbound
/// ports are of little use (they default to free ones).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    proxy: proxy::Args,
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mut settings, concurrency) = args.proxy.settings(&Defaults::GATEWAY, None)?;
    settings.gateway = true;
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
