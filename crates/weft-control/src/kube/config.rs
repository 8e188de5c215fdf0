//! The config store on Kubernetes: Istio's custom resources, watched in the API server.
//!
//! Every kind Weft reads is watched (in its newest version: the API server serves each
//! object in every version, schemas being the same). On each change the objects are loaded
//! with the same loader and checks as a folder of YAML and merged the same way
//! ([`store::merge`]): an invalid resource keeps its last valid version. An object's origin
//! is `k8s:<creationTimestamp>:<Kind>/<namespace>/<name>`, so where two resources conflict
//! the older one wins, as in Istio. What the analyzer says about each object is written on
//! it ([`super::status`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::ApiResource;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use weft_api::load::{Limits, LoadOutput, Loader};

use super::crds::CrdKind;
use crate::store::{self, ConfigState, ConfigStore};

/// How long the first lists may take before the store publishes what it has.
const INITIAL_SYNC: Duration = Duration::from_secs(10);

/// Istio's resources from the API server, published as [`ConfigState`]s.
pub struct KubeStore {
    state: watch::Receiver<Arc<ConfigState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// One watched kind and the objects in its cache.
struct WatchedKind {
    kind: weft_api::Kind,
    resource: ApiResource,
    objects: Store<DynamicObject>,
}

impl KubeStore {
    /// Starts watching and waits (up to a few seconds) for the first list of every kind, so
    /// proxies are not sent an empty mesh while the lists arrive.
    pub async fn start(client: kube::Client) -> Self {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let mut kinds = Vec::new();
        for kind in weft_api::Kind::ALL {
            let Some(crd) = CrdKind::find(kind.group(), kind.as_str()) else {
                continue;
            };
            let resource = crd.api_resource();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let writer = reflector::store::Writer::new(resource.clone());
            let objects = writer.as_reader();
            let changed = changed.clone();
            let events = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff();
            tasks.push(tokio::spawn(async move {
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(_) => changed.notify_one(),
                        Err(error) => {
                            tracing::warn!(kind = kind.as_str(), %error, "watching Istio resources")
                        }
                    }
                }
            }));
            kinds.push(WatchedKind {
                kind,
                resource,
                objects,
            });
        }
        let ready = futures::future::join_all(kinds.iter().map(|k| k.objects.wait_until_ready()));
        if tokio::time::timeout(INITIAL_SYNC, ready).await.is_err() {
            let missing: Vec<&str> = kinds
                .iter()
                .filter(|k| k.objects.state().is_empty())
                .map(|k| k.kind.as_str())
                .collect();
            tracing::warn!(
                ?missing,
                "not every Istio kind could be listed (are the CRDs installed? `weft install`)"
            );
        }
        let mut read = read(&kinds);
        let initial = store::merge(&ConfigState::default(), load(&read));
        let (publish, state) = watch::channel(Arc::new(initial));
        let kinds = Arc::new(kinds);
        tasks.push(tokio::spawn(write_status(
            client,
            kinds.clone(),
            state.clone(),
        )));
        tasks.push(tokio::spawn(async move {
            loop {
                super::changes_settled(&changed).await;
                // A change to an object's status alone (ours, most often) changes nothing.
                let next_read = self::read(&kinds);
                if same_documents(&next_read, &read) {
                    continue;
                }
                read = next_read;
                let next = store::merge(&publish.borrow(), load(&read));
                tracing::info!(
                    generation = next.generation,
                    resources = next.resources.len(),
                    "configuration read from Kubernetes"
                );
                if publish.send(Arc::new(next)).is_err() {
                    break;
                }
            }
        }));
        Self { state, tasks }
    }
}

impl ConfigStore for KubeStore {
    fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.state.clone()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every Istio resource in the cluster (in `namespace`, or all), and every Pod (the
/// workloads selectors are checked against), as documents the loader reads: origin and
/// JSON text, for `weft analyze -k`. Kinds whose CRD is not installed are skipped.
pub async fn documents(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<(String, String)>, kube::Error> {
    use kube::api::ListParams;
    let mut out = Vec::new();
    for kind in weft_api::Kind::ALL {
        let Some(crd) = CrdKind::find(kind.group(), kind.as_str()) else {
            continue;
        };
        let resource = crd.api_resource();
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let objects = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(error) => return Err(error),
        };
        for object in objects {
            let (_, text) = document(kind, &object);
            let meta = &object.metadata;
            let origin = format!(
                "kubernetes:{}/{}/{}",
                kind.as_str(),
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or_default()
            );
            out.push((origin, text));
        }
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    for pod in pods.list(&ListParams::default()).await?.items {
        let meta = &pod.metadata;
        let origin = format!(
            "kubernetes:Pod/{}/{}",
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default()
        );
        let document = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "labels": meta.labels.clone().unwrap_or_default(),
            },
        });
        out.push((origin, document.to_string()));
    }
    Ok(out)
}

/// Every cached object as a document: origin and JSON text.
fn read(kinds: &[WatchedKind]) -> Vec<(String, String)> {
    kinds
        .iter()
        .flat_map(|watched| {
            let state = watched.objects.state();
            state
                .iter()
                .map(|object| document(watched.kind, object))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether two reads hold the same documents, in whatever order. (They are loaded in the
/// caches' order: loading them sorted made each push of the 1,000-service benchmark cost
/// 0.43 s of CPU instead of 0.29 s.)
fn same_documents(a: &[(String, String)], b: &[(String, String)]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a: Vec<&(String, String)> = a.iter().collect();
    let mut b: Vec<&(String, String)> = b.iter().collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// Loads the documents as the file loader would load them from YAML.
fn load(documents: &[(String, String)]) -> LoadOutput {
    let mut loader = Loader::new(Limits::default());
    for (origin, text) in documents {
        loader.load_str(origin.clone(), text);
    }
    loader.finish()
}

/// Writes each published state's messages on the objects they are about.
async fn write_status(
    client: kube::Client,
    kinds: Arc<Vec<WatchedKind>>,
    mut state: watch::Receiver<Arc<ConfigState>>,
) {
    loop {
        let current = state.borrow_and_update().clone();
        let objects = kinds
            .iter()
            .map(|watched| super::status::Objects {
                kind: watched.kind.as_str(),
                resource: &watched.resource,
                objects: watched.objects.state(),
            })
            .collect();
        super::status::write(&client, objects, &current.messages).await;
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// The object as one JSON document (what the loader reads), and its origin.
fn document(kind: weft_api::Kind, object: &DynamicObject) -> (String, String) {
    let meta = &object.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or_default();
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let origin = format!("k8s:{created}:{}/{namespace}/{name}", kind.as_str());
    let document = json!({
        "apiVersion": object.types.as_ref().map(|t| t.api_version.as_str()).unwrap_or_default(),
        "kind": kind.as_str(),
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": meta.labels.clone().unwrap_or_default(),
            "annotations": meta.annotations.clone().unwrap_or_default(),
        },
        "spec": object.data.get("spec").cloned().unwrap_or(Value::Object(Default::default())),
    });
    (origin, document.to_string())
}
