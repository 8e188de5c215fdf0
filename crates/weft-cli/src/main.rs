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
    /// Run a whole mesh on this machine: the control plane, the demo bookshop's services
    /// each under `weft run`, the ingress gateway and light traffic.
    Demo(cmd::demo::Args),
    /// Serve one service of the demo bookshop (productpage, details, reviews, ratings).
    DemoApp(cmd::demo_app::Args),
    /// Run an ingress gateway: the ports of the Gateway resources that select it, routed by
    /// the VirtualServices bound to them.
    Gateway(cmd::gateway::Args),
    /// Add the sidecar to the pods of Kubernetes manifests, as the injection webhook would
    /// (istioctl's kube-inject).
    Inject(cmd::inject::Args),
    /// Install Weft on Kubernetes: apply `weft manifest generate`'s objects server-side.
    Install(cmd::install::InstallArgs),
    /// Redirect a pod's TCP traffic to its sidecar with iptables (the init container's job,
    /// as Istio's istio-iptables); `--clean` removes the rules.
    Iptables(cmd::iptables::Args),
    /// Print a join token: what a workload presents to get certificates for one identity.
    JoinToken(cmd::join_token::Args),
    /// Print the Kubernetes objects that install Weft (Istio's CRDs and the control plane).
    #[command(subcommand)]
    Manifest(cmd::manifest::Command),
    /// Run a sidecar for one workload: mTLS, routing and load balancing, configured by
    /// `weft control`.
    Proxy(cmd::proxy::Args),
    /// Mesh any process: run CMD beside its own sidecar, with HTTP_PROXY pointing at it.
    #[command(arg_required_else_help = true)]
    Run(cmd::run::Args),
    /// Remove Weft from Kubernetes (Istio's CRDs and resources too with `--purge`).
    Uninstall(cmd::install::UninstallArgs),
    /// What `weft run` starts its command with.
    #[command(hide = true)]
    RunChild(cmd::run::ChildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Analyze(args) => cmd::analyze::run(args),
        Command::Control(args) => cmd::control::run(args),
        Command::Inject(args) => cmd::inject::run(args),
        Command::Install(args) => cmd::install::install(args),
        Command::Uninstall(args) => cmd::install::uninstall(args),
        Command::Iptables(args) => cmd::iptables::run(args),
        Command::JoinToken(args) => cmd::join_token::run(args),
        Command::Manifest(command) => cmd::manifest::run(command),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::DemoApp(args) => cmd::demo_app::run(args),
        Command::Gateway(args) => cmd::gateway::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::RunChild(args) => return cmd::run::run_child(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("weft: {err:#}");
            ExitCode::from(2)
        }
    }
}
