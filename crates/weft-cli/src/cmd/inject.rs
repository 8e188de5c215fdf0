//! `weft inject -f FILE`: adds the sidecar to the pods of Kubernetes manifests offline, as
//! `istioctl kube-inject` does, with the same result as the injection webhook. Pods,
//! Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs get it (unless
//! they say `sidecar.istio.io/inject: "false"` or live in a system namespace); other objects
//! pass through unchanged.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::Value;
use weft_control::kube::inject::{Decision, Injector, decide};
use weft_control::kube::manifest::{self, NAMESPACE};

/// Arguments of `weft inject`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifests, YAML or JSON; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The image the sidecar runs `weft` from [default: weft:<this version>].
    #[arg(long)]
    sidecar_image: Option<String>,
    /// The xDS address the sidecar dials.
    #[arg(long, default_value_t = manifest::control_xds_address())]
    sidecar_control: String,
}

/// Runs `weft inject`: the manifests, injected, on standard output.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let limits = weft_api::load::Limits::default();
    let documents = weft_api::load::documents(&text, &limits)
        .map_err(|error| anyhow::anyhow!("{}: {error}", args.file.display()))?;
    let injector = Injector {
        image: args
            .sidecar_image
            .unwrap_or_else(super::control::default_image),
        control: args.sidecar_control,
        control_namespace: NAMESPACE.to_string(),
    };
    let mut out = String::new();
    for mut document in documents {
        inject_object(&injector, &mut document)?;
        out.push_str(&weft_api::load::to_yaml(&document));
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Injects the pod template of one object, or of each item of a `List`.
fn inject_object(injector: &Injector, object: &mut Value) -> anyhow::Result<()> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let template = match kind.as_str() {
        "List" => {
            if let Some(items) = object["items"].as_array_mut() {
                for item in items {
                    inject_object(injector, item)?;
                }
            }
            return Ok(());
        }
        "Pod" => object,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            &mut object["spec"]["template"]
        }
        "CronJob" => &mut object["spec"]["jobTemplate"]["spec"]["template"],
        _ => return Ok(()),
    };
    if !template["spec"].is_object() {
        bail!("{kind} {namespace}/{name} has no pod template");
    }
    let decision = decide(
        &template["metadata"],
        &template["spec"],
        &namespace,
        None,
        &injector.control_namespace,
    );
    if let Decision::Skip(reason) = decision {
        eprintln!("weft inject: {kind} {namespace}/{name} is not injected: {reason}");
        return Ok(());
    }
    injector
        .inject(template)
        .map_err(|error| anyhow::anyhow!("{kind} {namespace}/{name}: {error}"))
}
