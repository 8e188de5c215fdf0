//! The service registry on Kubernetes: Services, their EndpointSlices, and the Pods behind
//! them, watched in the API server and turned into [`Service`]s.
//!
//! * a Service `name` in `ns` is the host `name.ns.svc.cluster.local`; its ports keep their
//!   names, and their protocol is the `appProtocol` or, as Istio reads it, the port name's
//!   prefix (`http-`, `grpc-`, `tcp-`, …); without either it is detected per connection;
//! * its endpoints are the ready addresses of the EndpointSlices labelled with its name,
//!   with the slice's port numbers by port name;
//! * each endpoint carries its Pod's labels (subsets select by them), service account (its
//!   identity) and whether it has a sidecar (the `security.istio.io/tlsMode: istio` label
//!   injection adds; clients speak plaintext to pods without one, as in Istio).
//!
//! ExternalName Services and UDP or SCTP ports are left out: the mesh proxies TCP only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::{Notify, watch};
use weft_api::networking::Protocol;
use weft_api::networking::service_entry::{Location, Resolution};

use crate::registry::{Endpoint, Service, ServicePort};

/// The pod label injection adds: the pod's sidecar accepts mesh mTLS.
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// How long the first lists may take before the registry publishes what it has.
const INITIAL_SYNC: Duration = Duration::from_secs(10);

/// The Kubernetes services of the cluster, published whole on every change.
pub struct KubeRegistry {
    services: watch::Receiver<Arc<Vec<Service>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The caches the registry is built from.
struct Caches {
    services: Store<KubeService>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

impl KubeRegistry {
    /// Starts watching and waits (up to a few seconds) for the first lists.
    pub async fn start(client: kube::Client) -> Self {
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let caches = Caches {
            services: cache(Api::all(client.clone()), &changed, &mut tasks),
            slices: cache(Api::all(client.clone()), &changed, &mut tasks),
            pods: cache(Api::all(client), &changed, &mut tasks),
        };
        let ready = async {
            let _ = caches.services.wait_until_ready().await;
            let _ = caches.slices.wait_until_ready().await;
            let _ = caches.pods.wait_until_ready().await;
        };
        if tokio::time::timeout(INITIAL_SYNC, ready).await.is_err() {
            tracing::warn!("the Kubernetes registry started before every list arrived");
        }
        let (publish, services) = watch::channel(Arc::new(caches.build()));
        tasks.push(tokio::spawn(async move {
            loop {
                super::changes_settled(&changed).await;
                let next = caches.build();
                if **publish.borrow() == next {
                    continue;
                }
                tracing::debug!(services = next.len(), "Kubernetes registry changed");
                if publish.send(Arc::new(next)).is_err() {
                    break;
                }
            }
        }));
        Self { services, tasks }
    }

    /// The services now, and their changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<Service>>> {
        self.services.clone()
    }
}

impl Drop for KubeRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A cache of every object of one type, kept current by a task that signals `changed`.
pub(super) fn cache<K>(
    api: Api<K>,
    changed: &Arc<Notify>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let changed = changed.clone();
    tasks.push(tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => tracing::warn!(
                    kind = std::any::type_name::<K>(),
                    %error,
                    "watching the Kubernetes registry"
                ),
            }
        }
    }));
    store
}

impl Caches {
    fn build(&self) -> Vec<Service> {
        let pods: BTreeMap<(String, String), Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .map(|pod| {
                let key = (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                );
                (key, pod)
            })
            .collect();
        let mut slices: BTreeMap<(String, String), Vec<Arc<EndpointSlice>>> = BTreeMap::new();
        for slice in self.slices.state() {
            let labels = slice.metadata.labels.as_ref();
            let Some(service) = labels.and_then(|l| l.get("kubernetes.io/service-name")) else {
                continue;
            };
            let namespace = slice.metadata.namespace.clone().unwrap_or_default();
            slices
                .entry((namespace, service.clone()))
                .or_default()
                .push(slice);
        }
        let mut services: Vec<Service> = self
            .services
            .state()
            .iter()
            .filter_map(|service| {
                let namespace = service.metadata.namespace.clone().unwrap_or_default();
                let name = service.metadata.name.clone().unwrap_or_default();
                let slices = slices
                    .get(&(namespace.clone(), name.clone()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                service_of(service, &namespace, &name, slices, &pods)
            })
            .collect();
        services.sort_by(|a, b| a.host.cmp(&b.host));
        services
    }
}

fn service_of(
    service: &KubeService,
    namespace: &str,
    name: &str,
    slices: &[Arc<EndpointSlice>],
    pods: &BTreeMap<(String, String), Arc<Pod>>,
) -> Option<Service> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .map(|p| ServicePort {
            number: u32::try_from(p.port).unwrap_or_default(),
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(p.app_protocol.as_deref(), p.name.as_deref()),
            target_port: match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                    u32::try_from(*n).ok()
                }
                _ => None,
            },
        })
        .collect();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for slice in slices {
        let slice_ports: BTreeMap<String, u32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u32::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            if conditions.and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let pod_namespace =
                        r.namespace.clone().unwrap_or_else(|| namespace.to_string());
                    pods.get(&(pod_namespace, r.name.clone().unwrap_or_default()))
                });
            let labels = pod
                .and_then(|p| p.metadata.labels.clone())
                .unwrap_or_default();
            let service_account = pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_string());
            let sidecar = labels
                .get(TLS_MODE_LABEL)
                .is_some_and(|mode| mode == "istio");
            for address in &endpoint.addresses {
                endpoints.push(Endpoint {
                    address: address.clone(),
                    ports: slice_ports.clone(),
                    labels: labels.clone(),
                    namespace: namespace.to_string(),
                    service_account: service_account.clone(),
                    locality: String::new(),
                    weight: 1,
                    sidecar: Some(sidecar),
                    app_port: None,
                });
            }
        }
    }
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    Some(Service {
        host: format!("{name}.{namespace}.svc.cluster.local"),
        namespace: namespace.to_string(),
        ports,
        resolution: Resolution::Static,
        location: Location::MeshInternal,
        endpoints,
    })
}

/// A port's protocol as Istio reads it: `appProtocol` first, then the name's prefix before
/// `-` (or the whole name); unspecified (detected per connection) when neither says.
fn protocol(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    const KNOWN: &[(&str, Protocol)] = &[
        ("http", Protocol::Http),
        ("http2", Protocol::Http2),
        ("grpc", Protocol::Grpc),
        ("grpc-web", Protocol::GrpcWeb),
        ("h2c", Protocol::Http2),
        ("kubernetes.io/h2c", Protocol::Http2),
        ("kubernetes.io/ws", Protocol::Http),
        ("kubernetes.io/wss", Protocol::Tls),
        ("https", Protocol::Https),
        ("tls", Protocol::Tls),
        ("tcp", Protocol::Tcp),
        ("mongo", Protocol::Mongo),
        ("redis", Protocol::Redis),
        ("mysql", Protocol::Mysql),
    ];
    let lookup = |word: &str| {
        let word = word.to_ascii_lowercase();
        KNOWN
            .iter()
            .find(|(name, _)| *name == word)
            .map(|(_, protocol)| protocol.clone())
    };
    if let Some(protocol) = app_protocol.and_then(lookup) {
        return protocol;
    }
    let name = name.unwrap_or_default();
    let prefix = name.split('-').next().unwrap_or_default();
    lookup(prefix).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::protocol;

    #[test]
    fn a_port_protocol_comes_from_app_protocol_then_the_name_prefix() {
        let name = |app_protocol, name| protocol(app_protocol, name).as_str().to_string();
        assert_eq!(name(Some("grpc"), Some("http-web")), "GRPC");
        assert_eq!(name(None, Some("http-web")), "HTTP");
        assert_eq!(name(None, Some("http")), "HTTP");
        assert_eq!(name(None, Some("grpc-api")), "GRPC");
        assert_eq!(name(None, Some("tcp-db")), "TCP");
        assert_eq!(name(Some("kubernetes.io/h2c"), None), "HTTP2");
        assert_eq!(name(None, Some("web")), "");
        assert_eq!(name(None, None), "");
    }
}
