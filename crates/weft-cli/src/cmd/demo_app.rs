//! `weft demo-app NAME --version V --port P`: one service of the demo bookshop
//! ([`weft_demo`]), runnable alone or under `weft run`.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `weft demo-app`.
#[derive(clap::Args)]
pub struct Args {
    /// Which service: productpage, details, reviews or ratings.
    app: weft_demo::App,
    /// Its version; `reviews` shows no stars in v1, black ones in v2, red ones in v3.
    #[arg(long, default_value = "v1")]
    version: String,
    /// The port to serve on.
    #[arg(long)]
    port: u16,
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Base URL of `details` (the mesh name by default, reached through `HTTP_PROXY`).
    #[arg(long, default_value = "http://details:9080")]
    details_url: String,
    /// Base URL of `reviews`.
    #[arg(long, default_value = "http://reviews:9080")]
    reviews_url: String,
    /// Base URL of `ratings`.
    #[arg(long, default_value = "http://ratings:9080")]
    ratings_url: String,
    /// Log filter, as `RUST_LOG`.
    #[arg(long, default_value = "warn")]
    log: String,
}

/// Serves the service until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::init_logging(&args.log)?;
    let service = weft_demo::Service {
        app: args.app,
        version: args.version,
        upstreams: weft_demo::Upstreams {
            details: args.details_url,
            reviews: args.reviews_url,
            ratings: args.ratings_url,
        },
        client: weft_demo::Client::from_env(),
    };
    let address = SocketAddr::new(args.bind, args.port);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async move {
            tokio::select! {
                result = weft_demo::run(service, address) => result?,
                () = super::control::shutdown_signal() => {}
            }
            Ok(ExitCode::SUCCESS)
        })
}
