//! `weft install` and `weft uninstall`: put the install (`weft manifest generate`) into the
//! cluster with server-side apply, or take it out, as `istioctl install` and `istioctl
//! uninstall` do.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use weft_control::kube::install;
use weft_control::kube::manifest::{self, NAMESPACE, Profile, Values};

/// Arguments of `weft install`.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// `KEY=VALUE`, repeatable, as `weft manifest generate`: `profile=minimal|default|demo`,
    /// `image=REF`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The kubeconfig; otherwise found as kubectl finds it.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Also wait until the control plane's Deployments are available, up to this long
    /// (`5m`, `90s`).
    #[arg(long, value_parser = super::control::parse_duration)]
    wait: Option<Duration>,
}

/// Arguments of `weft uninstall`.
#[derive(clap::Args)]
pub struct UninstallArgs {
    /// The kubeconfig; otherwise found as kubectl finds it.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Also delete Istio's CRDs, and with them every VirtualService, DestinationRule and
    /// other Istio resource in the cluster.
    #[arg(long)]
    purge: bool,
}

/// Applies the install.
pub fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let values = super::manifest::values(&args.set)?;
    let objects = manifest::generate(&values);
    let outcomes = runtime()?.block_on(async {
        let client = weft_control::kube::connect(args.kubeconfig.as_deref()).await?;
        anyhow::Ok(install::apply(&client, &objects, args.wait).await?)
    })?;
    for outcome in outcomes {
        println!("{outcome}");
    }
    println!(
        "Weft is installed in {NAMESPACE} ({} profile). Next: kubectl label namespace default istio-injection=enabled",
        values.profile.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes the install: every object of the largest profile, so whatever was installed.
pub fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let values = Values {
        profile: Profile::Demo,
        image: super::control::default_image(),
    };
    let objects = manifest::generate(&values);
    let outcomes = runtime()?.block_on(async {
        let client = weft_control::kube::connect(args.kubeconfig.as_deref()).await?;
        anyhow::Ok(install::delete(&client, &objects, args.purge).await?)
    })?;
    for outcome in &outcomes {
        println!("{outcome}");
    }
    if outcomes.is_empty() {
        println!("Weft is not installed: nothing to delete");
    } else if !args.purge {
        println!("Istio's CRDs and resources are kept; `weft uninstall --purge` deletes them too");
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}
