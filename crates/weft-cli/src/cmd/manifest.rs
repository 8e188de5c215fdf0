//! `weft manifest generate`: the objects that install Weft on Kubernetes, as YAML for
//! `kubectl apply`, like `istioctl manifest generate`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use weft_control::kube::manifest::{self, Profile, Values};

/// The subcommands of `weft manifest`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the install as YAML (Istio's CRDs, the namespace, RBAC, the control plane).
    Generate(GenerateArgs),
}

/// Arguments of `weft manifest generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// `KEY=VALUE`, repeatable: `profile=minimal|default|demo`, `image=REF` (the `weft`
    /// container image).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Runs a `weft manifest` subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Generate(args) => {
            let values = values(&args.set)?;
            let mut out = String::new();
            for object in manifest::generate(&values) {
                out.push_str(&weft_api::load::to_yaml(&object));
            }
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The install's values from `--set KEY=VALUE` settings.
pub(crate) fn values(settings: &[String]) -> anyhow::Result<Values> {
    let mut values = Values {
        profile: Profile::Default,
        image: super::control::default_image(),
    };
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .with_context(|| format!("--set {setting:?}: expected KEY=VALUE"))?;
        match key {
            "profile" => values.profile = value.parse().map_err(anyhow::Error::msg)?,
            "image" if !value.is_empty() => values.image = value.to_string(),
            "image" => bail!("--set image=: the image cannot be empty"),
            other => bail!("--set {other}: unknown setting; the settings are profile and image"),
        }
    }
    Ok(values)
}
