//! The subcommands.

pub mod analyze;
pub mod control;
pub mod demo;
pub mod demo_app;
pub mod gateway;
pub mod inject;
pub mod install;
pub mod iptables;
pub mod join_token;
pub mod manifest;
pub mod proxy;
pub mod run;

/// Logs to stderr through the `--log` filter (`RUST_LOG` syntax), in colour only on a
/// terminal.
pub fn init_logging(filter: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).context("parsing --log")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}
