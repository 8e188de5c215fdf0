//! Auto-registration: a workload whose proxy (or xDS-enabled gRPC server) connects with
//! identifying node metadata becomes an endpoint of the services it says it serves, for as
//! long as its stream lives and a short grace period after.
//!
//! Node metadata read (Istio's names where Istio has one):
//! * `NAME` — workload name; `NAMESPACE`; `LABELS` (a struct); `SERVICE_ACCOUNT`;
//! * `INSTANCE_IPS` — the workload's address (the first one is used);
//! * `SERVICES` — what it serves, each `<service>:<port>` or `<service>:<port>:<targetPort>`
//!   (a list, or one comma-separated string). A service written without dots is
//!   `<service>.<namespace>.svc.cluster.local`, as in Istio;
//! * `APP_PORT` (Weft's own) — for a proxy reached on its own inbound port rather than by
//!   interception (`weft proxy` without iptables): the target ports are then the proxy's, and
//!   the application listens on loopback at this port.
//!
//! A workload registers only as what its stream proves: over the TLS port, the namespace
//! and service account its join token binds; over a plaintext port on loopback (the
//! operator's choice: processes of this host), as it says; over a plaintext port bound
//! elsewhere, not at all. And it joins a service only under an identity the service's
//! configured workloads already run as ([`crate::registry`]).
//!
//! A workload without an address or without services is only a client and is not registered.
//! The grace period keeps a restarting proxy's endpoint in place, so a quick reconnect does
//! not empty its services.
//!
//! The registered workloads are also saved to a file in the control plane's state directory
//! (Istio keeps auto-registered WorkloadEntries in the API server for the same reason). A
//! restarted control plane restores them for [`Registrations::RESTORED_GRACE`], so the
//! first proxy to reconnect is not sent services without the endpoints whose proxies have
//! not reconnected yet.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::watch;
use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::server::Caller;

use crate::node;
use crate::registry::Service;

/// One service port a workload serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedPort {
    /// The service as written (`echo`, or a full host).
    pub service: String,
    /// The service port.
    pub port: u32,
    /// The workload's own port for it.
    pub target_port: u32,
}

/// A workload registered by its xDS stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisteredWorkload {
    /// Workload name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when not given).
    pub service_account: String,
    /// Address other proxies reach it on.
    pub address: String,
    /// What it serves.
    pub serves: Vec<ServedPort>,
    /// Where the application listens on loopback, when not at the target ports.
    pub app_port: Option<u32>,
}

impl RegisteredWorkload {
    /// Reads a workload from node metadata; `None` for a client that serves nothing.
    pub fn from_node(node: &Node) -> Option<Self> {
        let address = node::string_list(node, "INSTANCE_IPS").into_iter().next()?;
        let serves: Vec<ServedPort> = node::string_list(node, "SERVICES")
            .iter()
            .filter_map(|entry| {
                let mut parts = entry.split(':');
                let service = parts.next()?.trim().to_string();
                let port: u32 = parts.next()?.trim().parse().ok()?;
                let target_port = match parts.next() {
                    Some(target) => target.trim().parse().ok()?,
                    None => port,
                };
                (!service.is_empty()
                    && (1..=65535).contains(&port)
                    && (1..=65535).contains(&target_port))
                .then_some(ServedPort {
                    service,
                    port,
                    target_port,
                })
            })
            .collect();
        if serves.is_empty() {
            return None;
        }
        Some(Self::serving(node, address, serves))
    }

    /// A sidecar's workload as the platform's registry knows its pod: what its node says of
    /// it, serving every port of the services with an endpoint at its address. For a pod whose
    /// proxy declares no services (an injected one): Kubernetes says what it serves. `None`
    /// when no such service has it.
    pub fn from_platform(node: &Node, services: &BTreeMap<String, Service>) -> Option<Self> {
        let address = node::string_list(node, "INSTANCE_IPS").into_iter().next()?;
        let namespace = node::string(node, "NAMESPACE").unwrap_or_else(|| "default".to_string());
        let mut serves = Vec::new();
        for service in services.values() {
            let endpoint = service
                .endpoints
                .iter()
                .find(|e| e.address == address && e.namespace == namespace && e.sidecar.is_some());
            if let Some(endpoint) = endpoint {
                serves.extend(service.ports.iter().map(|port| ServedPort {
                    service: service.host.clone(),
                    port: port.number,
                    target_port: endpoint.port_for(port),
                }));
            }
        }
        if serves.is_empty() {
            return None;
        }
        Some(Self::serving(node, address, serves))
    }

    fn serving(node: &Node, address: String, serves: Vec<ServedPort>) -> Self {
        Self {
            name: node::string(node, "NAME").unwrap_or_else(|| node.id.clone()),
            namespace: node::string(node, "NAMESPACE").unwrap_or_else(|| "default".to_string()),
            labels: node::string_map(node, "LABELS"),
            service_account: node::string(node, "SERVICE_ACCOUNT")
                .unwrap_or_else(|| "default".to_string()),
            address,
            serves,
            app_port: node::string(node, "APP_PORT")
                .and_then(|p| p.trim().parse().ok())
                .filter(|p| (1..=65535).contains(p)),
        }
    }
}

/// Why a workload without a live stream is still registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Departing {
    /// Its stream closed; it is in its grace period.
    Stream(u64),
    /// It was registered before the control plane restarted and has not reconnected yet.
    Restored(usize),
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<u64, RegisteredWorkload>,
    departing: HashMap<Departing, RegisteredWorkload>,
}

/// The workloads registered by live (or recently closed) streams.
#[derive(Debug)]
pub struct Registrations {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
    grace: Duration,
}

impl Registrations {
    /// How long a closed stream's workload stays an endpoint, unless told otherwise.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

    /// How long a workload restored from the saved file waits for its proxy to reconnect
    /// (when longer than the grace period): proxies retry at least every 10 seconds.
    pub const RESTORED_GRACE: Duration = Duration::from_secs(30);

    /// Registrations whose workloads stay `grace` after their stream closes.
    pub fn new(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::default(),
            changes: watch::channel(0).0,
            grace,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes to the set of registered workloads.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers the workload behind stream `stream`, if its node describes one.
    pub fn connected(&self, stream: u64, node: &Node, caller: &Caller) {
        let Some(workload) = RegisteredWorkload::from_node(node) else {
            return;
        };
        // A workload registers only as what its stream proves it is.
        let refused = match caller {
            Caller::Local => None,
            Caller::Unverified => Some(
                "plaintext xDS off loopback proves nothing: register over the TLS port with a join token".to_string(),
            ),
            Caller::Verified {
                namespace,
                service_account,
            } if *namespace != workload.namespace
                || *service_account != workload.service_account =>
            {
                Some(format!(
                    "its token is for {namespace}/{service_account}, not {}/{}",
                    workload.namespace, workload.service_account
                ))
            }
            Caller::Verified { .. } => None,
        };
        if let Some(reason) = refused {
            tracing::warn!(
                workload = workload.name,
                namespace = workload.namespace,
                service_account = workload.service_account,
                reason,
                "registration refused"
            );
            return;
        }
        tracing::info!(
            workload = workload.name,
            namespace = workload.namespace,
            address = workload.address,
            "workload registered"
        );
        self.lock().live.insert(stream, workload);
        self.changes.send_modify(|v| *v += 1);
    }

    /// Starts the grace period of stream `stream`'s workload; it is removed when it ends.
    pub fn disconnected(self: &Arc<Self>, stream: u64) {
        let Some(workload) = self.lock().live.remove(&stream) else {
            return;
        };
        self.lock()
            .departing
            .insert(Departing::Stream(stream), workload);
        self.expire_after(Departing::Stream(stream), self.grace);
    }

    /// Registers workloads saved by an earlier run until their proxies reconnect, or for
    /// the longer of the grace period and [`Self::RESTORED_GRACE`] if they do not.
    pub fn restore(self: &Arc<Self>, workloads: Vec<RegisteredWorkload>) {
        if workloads.is_empty() {
            return;
        }
        tracing::info!(
            count = workloads.len(),
            "workloads restored from the last run"
        );
        let keys: Vec<Departing> = {
            let mut inner = self.lock();
            workloads
                .into_iter()
                .enumerate()
                .map(|(index, workload)| {
                    inner.departing.insert(Departing::Restored(index), workload);
                    Departing::Restored(index)
                })
                .collect()
        };
        self.changes.send_modify(|v| *v += 1);
        for key in keys {
            self.expire_after(key, self.grace.max(Self::RESTORED_GRACE));
        }
    }

    fn expire_after(self: &Arc<Self>, key: Departing, wait: Duration) {
        let this = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            this.expire(key);
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            this.expire(key);
        });
    }

    fn expire(&self, key: Departing) {
        if let Some(workload) = self.lock().departing.remove(&key) {
            tracing::info!(
                workload = workload.name,
                namespace = workload.namespace,
                "workload deregistered"
            );
            self.changes.send_modify(|v| *v += 1);
        }
    }

    /// Every registered workload, each once (a workload that reconnected during its grace
    /// period is counted by its new stream).
    pub fn workloads(&self) -> Vec<RegisteredWorkload> {
        let inner = self.lock();
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        for workload in inner.live.values().chain(inner.departing.values()) {
            if seen.insert((
                workload.namespace.clone(),
                workload.name.clone(),
                workload.address.clone(),
            )) {
                all.push(workload.clone());
            }
        }
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }
}

/// Reads the workloads saved by [`save`]; a missing file is an empty list, an unreadable one
/// is reported and ignored.
pub fn load(path: &Path) -> Vec<RegisteredWorkload> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the saved workloads");
            return Vec::new();
        }
    };
    serde_json::from_slice(&text).unwrap_or_else(|error| {
        tracing::warn!(path = %path.display(), %error, "ignoring the saved workloads");
        Vec::new()
    })
}

/// Saves `workloads` to `path`, replacing the file in one step.
pub fn save(path: &Path, workloads: &[RegisteredWorkload]) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(workloads).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, json)?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_api::networking::service_entry::{Location, Resolution};
    use weft_xds::envoy::envoy::config::core::v3::Node;
    use weft_xds::envoy::google::protobuf::{Struct, Value, value::Kind};

    use super::RegisteredWorkload;
    use crate::registry::{Endpoint, Service, ServicePort};

    fn node(ip: &str) -> Node {
        let text = |s: &str| Value {
            kind: Some(Kind::StringValue(s.to_string())),
        };
        let fields = [("NAMESPACE", text("shop")), ("INSTANCE_IPS", text(ip))];
        Node {
            id: "sidecar".into(),
            metadata: Some(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            }),
            ..Node::default()
        }
    }

    fn service(sidecar: Option<bool>) -> BTreeMap<String, Service> {
        let host = "reviews.shop.svc.cluster.local".to_string();
        let endpoint = Endpoint {
            address: "10.244.0.11".into(),
            ports: [("http".to_string(), 9080)].into_iter().collect(),
            labels: BTreeMap::new(),
            namespace: "shop".into(),
            service_account: "reviews".into(),
            locality: String::new(),
            weight: 1,
            sidecar,
            app_port: None,
        };
        let service = Service {
            host: host.clone(),
            namespace: "shop".into(),
            ports: vec![ServicePort {
                number: 80,
                name: "http".into(),
                protocol: weft_api::networking::Protocol::Http,
                target_port: Some(9080),
            }],
            resolution: Resolution::Static,
            location: Location::MeshInternal,
            endpoints: vec![endpoint],
        };
        [(host, service)].into_iter().collect()
    }

    #[test]
    fn a_pod_that_declares_nothing_serves_what_its_kubernetes_services_say() {
        let workload =
            RegisteredWorkload::from_platform(&node("10.244.0.11"), &service(Some(true)))
                .expect("served");
        assert_eq!(workload.serves.len(), 1);
        assert_eq!(workload.serves[0].service, "reviews.shop.svc.cluster.local");
        assert_eq!(
            (workload.serves[0].port, workload.serves[0].target_port),
            (80, 9080)
        );
        assert_eq!(workload.app_port, None);
        // Another address, or an endpoint not from the platform's registry: nothing.
        assert!(
            RegisteredWorkload::from_platform(&node("10.244.0.12"), &service(Some(true))).is_none()
        );
        assert!(RegisteredWorkload::from_platform(&node("10.244.0.11"), &service(None)).is_none());
    }
}
