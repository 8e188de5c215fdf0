//! `weft install` and `weft uninstall`: the install's objects ([`super::manifest`]) applied
//! to a cluster with server-side apply, or deleted from it, as `istioctl install` and
//! `istioctl uninstall` do.
//!
//! Installing waits until the API server serves the CRDs, so Istio resources can be applied
//! right after; with `wait`, also until the control plane's Deployments are available.
//! Uninstalling deletes in reverse order, so the webhook configurations go before the
//! control plane that answers them (pods are never refused by a webhook with no server
//! behind it); the CRDs, and with them every Istio resource, only with `purge`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::Value;

use super::manifest::NAMESPACE;

/// The field manager of the install's server-side applies.
pub const FIELD_MANAGER: &str = "weft-install";

/// Why an install or uninstall stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API server's answer.
        source: kube::Error,
    },
    /// The manifest has an object without a kind, version or name.
    #[error("the manifest has an object without apiVersion, kind or name: {0}")]
    Malformed(String),
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting until {1}")]
    Timeout(Duration, String),
}

/// What happened to one object: `"applied Deployment istio-system/weft-control"`.
pub type Outcome = String;

/// Applies every object in order, then waits until the CRDs are established and, with
/// `wait`, until the Deployments are available. Returns a line per object.
pub async fn apply(
    client: &kube::Client,
    objects: &[Value],
    wait: Option<Duration>,
) -> Result<Vec<Outcome>, InstallError> {
    let mut kinds = Kinds::default();
    let mut out = Vec::new();
    for object in objects {
        let target = kinds.target(client, object).await?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        target
            .api
            .patch(&target.name, &params, &Patch::Apply(object))
            .await
            .map_err(|source| InstallError::Api {
                what: format!("applying {}", target.description),
                source,
            })?;
        out.push(format!("applied {}", target.description));
    }
    let crds: Vec<&str> = objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    wait_established(client, &crds, Duration::from_secs(60)).await?;
    if let Some(limit) = wait {
        let deployments: Vec<&str> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        wait_available(client, &deployments, limit).await?;
        out.extend(
            deployments
                .iter()
                .map(|d| format!("available Deployment {NAMESPACE}/{d}")),
        );
    }
    Ok(out)
}

/// Deletes the objects in reverse order, CRDs only with `purge`; objects already gone are
/// skipped. Returns a line per object.
pub async fn delete(
    client: &kube::Client,
    objects: &[Value],
    purge: bool,
) -> Result<Vec<Outcome>, InstallError> {
    let mut kinds = Kinds::default();
    let mut out = Vec::new();
    for object in objects.iter().rev() {
        if object["kind"] == "CustomResourceDefinition" && !purge {
            continue;
        }
        let target = kinds.target(client, object).await?;
        match target
            .api
            .delete(&target.name, &DeleteParams::background())
            .await
        {
            Ok(_) => out.push(format!("deleted {}", target.description)),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(InstallError::Api {
                    what: format!("deleting {}", target.description),
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Resolved kinds, asked of the API server once each.
#[derive(Default)]
struct Kinds(HashMap<(String, String), (ApiResource, ApiCapabilities)>);

/// Where one object goes.
struct Target {
    api: Api<DynamicObject>,
    name: String,
    description: String,
}

impl Kinds {
    async fn target(
        &mut self,
        client: &kube::Client,
        object: &Value,
    ) -> Result<Target, InstallError> {
        let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
        let (Some(api_version), Some(kind), Some(name)) =
            (text("/apiVersion"), text("/kind"), text("/metadata/name"))
        else {
            return Err(InstallError::Malformed(object.to_string()));
        };
        let key = (api_version.to_string(), kind.to_string());
        if !self.0.contains_key(&key) {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let resolved = kube::discovery::pinned_kind(client, &gvk)
                .await
                .map_err(|source| InstallError::Api {
                    what: format!("finding {kind} ({api_version}) in the API server"),
                    source,
                })?;
            self.0.insert(key.clone(), resolved);
        }
        let (resource, capabilities) = &self.0[&key];
        let namespace = text("/metadata/namespace");
        let (api, description) = match (&capabilities.scope, namespace) {
            (Scope::Namespaced, Some(namespace)) => (
                Api::namespaced_with(client.clone(), namespace, resource),
                format!("{kind} {namespace}/{name}"),
            ),
            _ => (
                Api::all_with(client.clone(), resource),
                format!("{kind} {name}"),
            ),
        };
        Ok(Target {
            api,
            name: name.to_string(),
            description,
        })
    }
}

/// Polls until every CRD has the condition `Established`.
async fn wait_established(
    client: &kube::Client,
    names: &[&str],
    limit: Duration,
) -> Result<(), InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    poll(limit, "the CRDs are established", || async {
        for name in names {
            let crd = api.get(name).await.map_err(|source| InstallError::Api {
                what: format!("reading CustomResourceDefinition {name}"),
                source,
            })?;
            let established = crd
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if !established {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
}

/// Polls until every Deployment in the control plane's namespace has all its replicas
/// updated and available.
async fn wait_available(
    client: &kube::Client,
    names: &[&str],
    limit: Duration,
) -> Result<(), InstallError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    poll(
        limit,
        "the control plane's Deployments are available",
        || async {
            for name in names {
                let deployment = api.get(name).await.map_err(|source| InstallError::Api {
                    what: format!("reading Deployment {NAMESPACE}/{name}"),
                    source,
                })?;
                let wanted = deployment.spec.replicas.unwrap_or(1);
                let status = deployment.status.unwrap_or_default();
                let available = status.available_replicas.unwrap_or(0);
                let updated = status.updated_replicas.unwrap_or(0);
                if available < wanted || updated < wanted {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await
}

async fn poll<F, Fut>(limit: Duration, what: &str, mut done: F) -> Result<(), InstallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, InstallError>>,
{
    let deadline = Instant::now() + limit;
    while !done().await? {
        if Instant::now() >= deadline {
            return Err(InstallError::Timeout(limit, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
