//! Translation: a [`MeshSnapshot`] into the xDS resources one proxy needs.
//!
//! Names follow Istio so tools and habits carry over: clusters are
//! `outbound|<port>|<subset>|<host>`, and a proxyless gRPC client dialling
//! `xds:///<host>:<port>` asks for a listener of that name, whose route configuration has the
//! same name. [`MeshGenerator`] is what the ADS server calls; each `generate` call reads the
//! current snapshot and builds only the resources asked for.
//!
//! Scope: proxies ask by name for what they use (proxyless gRPC always does, and RDS and EDS
//! always are by name). A wildcard request for listeners or clusters gets those of every
//! service the client may reach: all of them, unless a Sidecar resource applies to the client,
//! whose egress `hosts` (`namespace/host`) then limit listeners, routes and clusters — Istio's
//! cure for proxies whose memory grows with the mesh.

mod authz;
mod cluster;
mod endpoint;
pub mod inbound;
mod listener;
mod route;
pub mod tls;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::google::protobuf::Duration as PbDuration;
use weft_xds::server::{Generator, Resource};
use weft_xds::types;

use crate::model::MeshSnapshot;
use crate::registration::{RegisteredWorkload, Registrations};
use crate::registry::fqdn;

/// The name of the cluster for a port and subset of a host, Istio's way.
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Splits an Istio cluster name into port, subset and host.
pub fn parse_cluster_name(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    Some((port, parts.next()?, parts.next()?))
}

/// Who is asking: the namespace short names resolve in, the labels `sourceLabels` match, and
/// whether it is a proxyless gRPC client (which supports fewer load balancers).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Client {
    /// The client's namespace.
    pub namespace: String,
    /// The client workload's labels.
    pub labels: BTreeMap<String, String>,
    /// A gRPC library rather than a proxy.
    pub proxyless_grpc: bool,
    /// The workload behind a sidecar that says what it serves; it gets inbound listeners.
    pub workload: Option<RegisteredWorkload>,
}

impl Client {
    /// Reads the client from its node: metadata `NAMESPACE` and `LABELS` (as Istio's agent
    /// sends them), else an Istio-format node id `sidecar~IP~name.ns~ns.svc.cluster.local`,
    /// else `default`.
    pub fn from_node(node: &Node) -> Self {
        let namespace = crate::node::string(node, "NAMESPACE")
            .or_else(|| {
                let mut parts = node.id.split('~');
                let (_kind, _ip, workload) = (parts.next()?, parts.next()?, parts.next()?);
                workload.split_once('.').map(|(_, ns)| ns.to_string())
            })
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let proxyless_grpc = node.user_agent_name.starts_with("gRPC")
            || crate::node::string(node, "GENERATOR").is_some_and(|g| g == "grpc");
        Self {
            namespace,
            labels: crate::node::string_map(node, "LABELS"),
            workload: (!proxyless_grpc)
                .then(|| RegisteredWorkload::from_node(node))
                .flatten(),
            proxyless_grpc,
        }
    }

    /// Resolves a host as written by this client (`reviews` → `reviews.<ns>.svc.cluster.local`).
    pub fn resolve(&self, host: &str) -> String {
        fqdn(host, &self.namespace)
    }
}

/// What a resource's content can depend on besides its name: the client's namespace (short
/// names), labels (`sourceLabels`) and kind (load balancer defaults).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    namespace: String,
    labels: Vec<(String, String)>,
    proxyless_grpc: bool,
}

impl ClientKey {
    fn of(client: &Client) -> Self {
        Self {
            namespace: client.namespace.clone(),
            labels: client
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            proxyless_grpc: client.proxyless_grpc,
        }
    }
}

/// Resources of one type for one kind of client, by name (`None`: no such resource).
type Built = HashMap<String, Option<Arc<Resource>>>;

/// Resources built from one snapshot, shared by every stream that asks for the same thing:
/// a push translates each resource once, not once per proxy. Looked up with one lock per
/// request, not per resource.
#[derive(Debug, Default)]
struct Cache {
    generation: u64,
    resources: HashMap<(ClientKey, String), Built>,
}

/// The mesh's identity: what workload certificates are issued in and chain to.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshIdentity {
    /// Trust domain of SPIFFE IDs.
    pub trust_domain: String,
    /// The root certificate, PEM, served as the `ROOTCA` secret.
    pub root_pem: Option<String>,
}

impl Default for MeshIdentity {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            root_pem: None,
        }
    }
}

/// Serves xDS from the current mesh snapshot, and registers the workloads that connect.
#[derive(Debug)]
pub struct MeshGenerator {
    snapshot: RwLock<Arc<MeshSnapshot>>,
    cache: Mutex<Cache>,
    registrations: Arc<Registrations>,
    identity: MeshIdentity,
}

impl Default for MeshGenerator {
    fn default() -> Self {
        Self::new(
            Registrations::new(Registrations::DEFAULT_GRACE),
            MeshIdentity::default(),
        )
    }
}

impl MeshGenerator {
    /// A generator that records connecting workloads in `registrations`.
    pub fn new(registrations: Arc<Registrations>, identity: MeshIdentity) -> Self {
        Self {
            snapshot: RwLock::default(),
            cache: Mutex::default(),
            registrations,
            identity,
        }
    }

    /// Makes `snapshot` the one served from now on.
    pub fn set(&self, snapshot: Arc<MeshSnapshot>) {
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<MeshSnapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The resources called `names`, from the cache where built already for this snapshot
    /// and kind of client.
    fn resources(
        &self,
        snapshot: &MeshSnapshot,
        client: &Client,
        type_url: &str,
        names: &[String],
    ) -> Vec<Arc<Resource>> {
        let key = (ClientKey::of(client), type_url.to_string());
        let mut found: Vec<Option<Option<Arc<Resource>>>> = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation != snapshot.version {
                cache.generation = snapshot.version;
                cache.resources.clear();
            }
            let built = cache.resources.entry(key.clone()).or_default();
            names
                .iter()
                .map(|name| built.get(name.as_str()).cloned())
                .collect()
        };
        // Built outside the lock; two streams racing may both build one, which is harmless.
        let mut fresh = Vec::new();
        for (slot, name) in found.iter_mut().zip(names) {
            if slot.is_none() {
                let resource = self.build(snapshot, client, type_url, name).map(Arc::new);
                fresh.push((name.clone(), resource.clone()));
                *slot = Some(resource);
            }
        }
        if !fresh.is_empty() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation == snapshot.version {
                cache.resources.entry(key).or_default().extend(fresh);
            }
        }
        found.into_iter().flatten().flatten().collect()
    }

    fn build(
        &self,
        snapshot: &MeshSnapshot,
        client: &Client,
        type_url: &str,
        name: &str,
    ) -> Option<Resource> {
        match type_url {
            types::LISTENER => listener::listener(snapshot, client, name),
            types::ROUTE => route::route_resource(snapshot, client, name),
            types::CLUSTER if name == listener::PASSTHROUGH_CLUSTER => Some(cluster::passthrough()),
            types::CLUSTER => {
                cluster::cluster_resource(snapshot, client, name, &self.identity.trust_domain)
            }
            types::ENDPOINT => {
                endpoint::endpoint_resource(snapshot, name, &self.identity.trust_domain)
            }
            types::SECRET => match (name, &self.identity.root_pem) {
                (tls::ROOT_SECRET, Some(root)) => Some(tls::root_secret(root)),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Generator for MeshGenerator {
    fn generate(
        &self,
        node: &Node,
        type_url: &str,
        names: Option<&[String]>,
    ) -> Vec<Arc<Resource>> {
        let snapshot = self.current();
        let client = Client::from_node(node);
        let all;
        let names = match names {
            Some(names) => names,
            None => {
                // What a Sidecar resource lets the client reach; everything without one.
                let visible = snapshot.visible(&client.namespace, &client.labels);
                let visible = visible.as_deref();
                all = match type_url {
                    types::LISTENER if client.proxyless_grpc => {
                        listener::all_names(&snapshot, visible)
                    }
                    types::LISTENER => {
                        let mut names = listener::sidecar_names(&snapshot, visible);
                        if client.workload.is_some() {
                            names.push(inbound::INBOUND_LISTENER.to_string());
                        }
                        names
                    }
                    types::CLUSTER => {
                        let mut names = cluster::all_names(&snapshot, visible);
                        if !client.proxyless_grpc {
                            names.push(listener::PASSTHROUGH_CLUSTER.to_string());
                        }
                        names.extend(client.workload.iter().flat_map(inbound::cluster_names));
                        names
                    }
                    _ => Vec::new(),
                };
                &all
            }
        };
        // A workload's own inbound side is built for it alone, not cached.
        let own = |name: &String| match (type_url, &client.workload) {
            (types::LISTENER, Some(workload)) if name == inbound::INBOUND_LISTENER => {
                Some(Some(Arc::new(inbound::listener(
                    &snapshot,
                    workload,
                    &self.identity.trust_domain,
                ))))
            }
            (types::CLUSTER, Some(_)) if name.starts_with("inbound|") => {
                Some(inbound::cluster(name).map(Arc::new))
            }
            _ => None,
        };
        let (own_names, shared): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| own(n).is_some());
        let shared: Vec<String> = shared.into_iter().cloned().collect();
        let mut resources = self.resources(&snapshot, &client, type_url, &shared);
        resources.extend(own_names.into_iter().filter_map(|n| own(n).flatten()));
        resources
    }

    fn connected(&self, stream: u64, node: &Node) {
        self.registrations.connected(stream, node);
    }

    fn disconnected(&self, stream: u64) {
        self.registrations.disconnected(stream);
    }
}

/// A protobuf duration.
pub(crate) fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Splits `host:port` (a listener or route configuration name) into its parts.
pub(crate) fn split_host_port(name: &str) -> (&str, Option<u32>) {
    match name.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (name, None),
        },
        None => (name, None),
    }
}

/// The service and port a `host[:port]` name refers to, for this client.
pub(crate) fn resolve_target<'a>(
    snapshot: &'a MeshSnapshot,
    client: &Client,
    name: &str,
) -> Option<(&'a crate::registry::Service, u32)> {
    let (host, port) = split_host_port(name);
    let service = snapshot.services.get(&client.resolve(host))?;
    let port = service.port(port)?.number;
    Some((service, port))
}

#[cfg(test)]
mod tests;
