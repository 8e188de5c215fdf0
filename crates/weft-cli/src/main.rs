//! `weft`: the one binary of the Weft service mesh. Each subcommand lives in [`cmd`] and calls
//! a library crate; this file only parses the command line.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc returns freed memory to the system promptly, so a control plane or proxy that
/// served a burst goes back to its baseline instead of keeping the peak.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weft: a service mesh configured with the Istio API.
#[derive(Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate and analyse Istio configuration files.
    Analyze(cmd::analyze::Args),
    /// Run the control plane: serve a folder of Istio YAML over xDS.
    Control(cmd::control::Args),
    /// Print a join token: what a workload presents to get certificates for one identity.
    JoinToken(cmd::join_token::Args),
    /// Run a sidecar for one workload: mTLS, routing and load balancing, configured by
    /// `weft control`.
    Proxy(cmd::proxy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(args) => cmd::analyze::run(args),
        Command::Control(args) => cmd::control::run(args),
        Command::JoinToken(args) => cmd::join_token::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("weft: {err:#}");
            ExitCode::from(2)
        }
    }
}
