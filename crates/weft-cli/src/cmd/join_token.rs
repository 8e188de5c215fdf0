//! `weft join-token`: prints the token a workload presents (as `authorization: Bearer
//! <token>`) to get certificates for one namespace and service account from `weft control`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use weft_control::ca::token::JoinTokens;

/// Arguments of `weft join-token`.
#[derive(clap::Args)]
pub struct Args {
    /// The control plane's config dir (the state dir defaults to `<config-dir>/.weft`).
    #[arg(long, required_unless_present = "state_dir")]
    config_dir: Option<PathBuf>,
    /// The control plane's state dir, when not the default.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Namespace of the identity.
    #[arg(long)]
    namespace: String,
    /// Service account of the identity.
    #[arg(long)]
    service_account: String,
}

/// Prints a token.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    for (what, name) in [
        ("namespace", &args.namespace),
        ("service account", &args.service_account),
    ] {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        anyhow::ensure!(
            valid,
            "{what} {name:?} is not a valid Kubernetes name (lower-case letters, digits and '-')"
        );
    }
    let state_dir = match (&args.state_dir, &args.config_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => super::control::state_dir(None, config),
        (None, None) => anyhow::bail!("give --config-dir or --state-dir"),
    };
    println!(
        "{}",
        issue_in(&state_dir, &args.namespace, &args.service_account)?
    );
    Ok(ExitCode::SUCCESS)
}

/// A join token from the key of the control plane whose config dir is `config_dir`.
pub fn issue(config_dir: &Path, namespace: &str, service_account: &str) -> anyhow::Result<String> {
    issue_in(
        &super::control::state_dir(None, config_dir),
        namespace,
        service_account,
    )
}

fn issue_in(state_dir: &Path, namespace: &str, service_account: &str) -> anyhow::Result<String> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let tokens = JoinTokens::load_or_create(state_dir)
        .with_context(|| format!("reading the key in {}", state_dir.display()))?;
    Ok(tokens.issue(namespace, service_account))
}
