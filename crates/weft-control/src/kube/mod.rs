//! The control plane on Kubernetes: the API server is the config store and the registry.
//!
//! * [`config`] watches Istio's custom resources and loads them like a folder of YAML;
//! * [`registry`] watches Services, EndpointSlices and Pods and turns them into services;
//! * [`crds`] defines Istio's custom resource kinds;
//! * [`inject`] is what sidecar injection adds to a pod, and [`webhook`] serves it to the API
//!   server;
//! * [`manifest`] is what `weft manifest generate` prints: the CRDs and the control plane;
//!   [`install`] applies it (`weft install`) or removes it (`weft uninstall`);
//! * [`tokens`] asks the API server whose a pod's service-account token is, for the CA;
//! * [`status`] writes the analyzer's messages on Istio's resources.

pub mod config;
pub mod crds;
pub mod inject;
pub mod install;
pub mod manifest;
pub mod registry;
mod status;
pub mod tokens;
pub mod webhook;

use std::path::Path;
use std::time::Duration;

use tokio::sync::Notify;

/// Changes that arrive this close together are read once.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Waits for `changed`, then until it has been quiet for [`DEBOUNCE`]: a burst of watch
/// events (a `kubectl apply -f` of many objects) is read once.
pub(crate) async fn changes_settled(changed: &Notify) {
    changed.notified().await;
    while tokio::time::timeout(DEBOUNCE, changed.notified())
        .await
        .is_ok()
    {}
}

/// Why the API server cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig file cannot be read.
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// No cluster configuration was found.
    #[error("finding the cluster: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client cannot be built.
    #[error("connecting to the API server: {0}")]
    Client(#[from] kube::Error),
}

/// Connects to the API server: with the kubeconfig file given, else as `kubectl` would
/// (`KUBECONFIG`, `~/.kube/config`, or the pod's service account inside a cluster).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}
