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
//!
//! Layout, each module depending only on those above it (no cycle):
//!
//! * [`names`], `envoy`, `client` — resource names; Envoy building blocks with no Istio
//!   semantics; who is asking.
//! * `policy` — the service a name means and the DestinationRule policy in force.
//! * `tls` — the mesh's transport sockets and the `ROOTCA` secret.
//! * `outbound` — a sidecar's or proxyless client's listeners, routes, clusters, endpoints.
//! * `inbound` — a sidecar's own listener and clusters, with its mTLS mode and RBAC.
//! * `gateway` — an ingress gateway's listeners and routes, which reuse the outbound
//!   routes of the VirtualServices bound to it and the inbound side's authorization.
//! * this module — [`MeshGenerator`]: which builder answers a request, and the cache.

mod client;
mod envoy;
mod gateway;
mod inbound;
pub mod names;
mod outbound;
mod policy;
mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::server::{Caller, Generator, Resource, ResourceSet};
use weft_xds::types;

pub use self::client::Client;
use self::names::{INBOUND_LISTENER, PASSTHROUGH_CLUSTER, ROOT_SECRET, parse_port_listener_name};
pub use self::names::{cluster_name, parse_cluster_name};
use self::outbound::{cluster, endpoint, listener, route};
use crate::model::MeshSnapshot;
use crate::registration::{RegisteredWorkload, Registrations};

/// What a resource's content can depend on besides its name: the client's namespace (short
/// names), labels (`sourceLabels`) and kind (load balancer defaults).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    namespace: String,
    labels: Vec<(String, String)>,
    proxyless_grpc: bool,
    gateway: bool,
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
            gateway: client.gateway,
        }
    }
}

/// Resources of one type for one kind of client, by name.
type Built = HashMap<String, Arc<Resource>>;

/// What a set of resources was built for: a kind of client, a type, and a hash of the names
/// asked for (`None`: a wildcard request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SetKey {
    client: ClientKey,
    type_url: String,
    names: Option<u64>,
}

/// A set built for a request, with the names it was built for (hashes can collide).
#[derive(Debug)]
struct CachedSet {
    names: Option<Vec<String>>,
    set: Arc<ResourceSet>,
}

/// Resources built from one snapshot, shared by every stream that asks for the same thing:
/// a push translates each resource once, not once per proxy, and proxies of the same kind
/// that ask for the same names share one set, so their streams see "unchanged" by comparing
/// two digests. Looked up with one lock per request, not per resource.
#[derive(Debug, Default)]
struct Cache {
    generation: u64,
    resources: HashMap<(ClientKey, String), Built>,
    sets: HashMap<SetKey, CachedSet>,
}

/// How many sets one snapshot's cache keeps; past it the cache starts over, so clients asking
/// for ever new lists of names cannot grow it without bound.
const MAX_CACHED_SETS: usize = 4096;

impl Cache {
    /// The cache, emptied if it holds another snapshot's resources.
    fn for_generation(&mut self, generation: u64) -> &mut Self {
        if self.generation != generation {
            self.generation = generation;
            self.resources.clear();
            self.sets.clear();
        }
        self
    }
}

fn names_hash(names: &[String]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(names, &mut hasher);
    std::hash::Hasher::finish(&hasher)
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
        let mut found: Vec<Option<Arc<Resource>>> = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let built = cache
                .for_generation(snapshot.version)
                .resources
                .entry(key.clone())
                .or_default();
            names
                .iter()
                .map(|name| built.get(name.as_str()).cloned())
                .collect()
        };
        // Built outside the lock; two streams racing may both build one, which is harmless.
        // Names that match nothing are not cached: they cost little to look up again.
        let mut fresh = Vec::new();
        for (slot, name) in found.iter_mut().zip(names) {
            if slot.is_none() {
                *slot = self.build(snapshot, client, type_url, name).map(Arc::new);
                if let Some(resource) = slot {
                    fresh.push((name.clone(), resource.clone()));
                }
            }
        }
        if !fresh.is_empty() {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.generation == snapshot.version {
                cache.resources.entry(key).or_default().extend(fresh);
            }
        }
        found.into_iter().flatten().collect()
    }

    /// The set for a request, from the cache when a client of the same kind asked for the
    /// same names of this snapshot; `list` names everything a wildcard request gets.
    fn shared_set(
        &self,
        snapshot: &MeshSnapshot,
        client: &Client,
        type_url: &str,
        names: Option<&[String]>,
        list: impl FnOnce() -> Vec<String>,
    ) -> Arc<ResourceSet> {
        let key = SetKey {
            client: ClientKey::of(client),
            type_url: type_url.to_string(),
            names: names.map(names_hash),
        };
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cached) = cache.for_generation(snapshot.version).sets.get(&key)
                && cached.names.as_deref() == names
            {
                return cached.set.clone();
            }
        }
        let set = Arc::new(ResourceSet::new(match names {
            Some(names) => self.resources(snapshot, client, type_url, names),
            None => self.resources(snapshot, client, type_url, &list()),
        }));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation == snapshot.version {
            if cache.sets.len() >= MAX_CACHED_SETS {
                cache.sets.clear();
            }
            let names = names.map(<[String]>::to_vec);
            cache.sets.insert(
                key,
                CachedSet {
                    names,
                    set: set.clone(),
                },
            );
        }
        set
    }

    fn build(
        &self,
        snapshot: &MeshSnapshot,
        client: &Client,
        type_url: &str,
        name: &str,
    ) -> Option<Resource> {
        match type_url {
            types::LISTENER if client.gateway => parse_port_listener_name(name).and_then(|port| {
                gateway::listener(snapshot, client, port, &self.identity.trust_domain)
            }),
            types::LISTENER => listener::listener(snapshot, client, name),
            types::ROUTE if client.gateway => gateway::route_resource(snapshot, client, name),
            types::ROUTE => route::route_resource(snapshot, client, name),
            types::CLUSTER if name == PASSTHROUGH_CLUSTER => Some(cluster::passthrough()),
            types::CLUSTER => {
                cluster::cluster_resource(snapshot, client, name, &self.identity.trust_domain)
            }
            types::ENDPOINT => {
                endpoint::endpoint_resource(snapshot, name, &self.identity.trust_domain)
            }
            types::SECRET => match (name, &self.identity.root_pem) {
                (ROOT_SECRET, Some(root)) => Some(tls::root_secret(root)),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Generator for MeshGenerator {
    fn generate(&self, node: &Node, type_url: &str, names: Option<&[String]>) -> Arc<ResourceSet> {
        let snapshot = self.current();
        let mut client = Client::from_node(node);
        if client.workload.is_none() && !client.proxyless_grpc && !client.gateway {
            client.workload = RegisteredWorkload::from_platform(node, &snapshot.services);
        }
        // A workload's own inbound side is built for it alone, not cached.
        let own = |name: &str| match (type_url, &client.workload) {
            (types::LISTENER, Some(workload)) if name == INBOUND_LISTENER => Some(Some(
                inbound::listener(&snapshot, workload, &self.identity.trust_domain),
            )),
            (types::CLUSTER, Some(workload)) if name.starts_with("inbound|") => {
                Some(inbound::cluster(name, &snapshot, workload))
            }
            _ => None,
        };
        let (shared, own_resources): (Arc<ResourceSet>, Vec<Resource>) = match names {
            Some(names) if client.workload.is_some() => {
                let (own_names, shared): (Vec<&String>, Vec<&String>) =
                    names.iter().partition(|n| own(n).is_some());
                let shared: Vec<String> = shared.into_iter().cloned().collect();
                (
                    self.shared_set(&snapshot, &client, type_url, Some(&shared), Vec::new),
                    own_names
                        .into_iter()
                        .filter_map(|n| own(n).flatten())
                        .collect(),
                )
            }
            Some(names) => (
                self.shared_set(&snapshot, &client, type_url, Some(names), Vec::new),
                Vec::new(),
            ),
            None => {
                let shared = self.shared_set(&snapshot, &client, type_url, None, || {
                    // What a Sidecar resource lets the client reach; everything without one.
                    let visible = snapshot.visible(&client.namespace, &client.labels);
                    let visible = visible.as_deref();
                    match type_url {
                        types::LISTENER if client.gateway => {
                            gateway::listener_names(&snapshot, &client)
                        }
                        types::LISTENER if client.proxyless_grpc => {
                            listener::all_names(&snapshot, visible)
                        }
                        types::LISTENER => listener::sidecar_names(&snapshot, visible),
                        types::CLUSTER => {
                            let mut names = cluster::all_names(&snapshot, visible);
                            if !client.proxyless_grpc {
                                names.push(PASSTHROUGH_CLUSTER.to_string());
                            }
                            names
                        }
                        _ => Vec::new(),
                    }
                });
                let own_names: Vec<String> = match (type_url, &client.workload) {
                    (types::LISTENER, Some(_)) => vec![INBOUND_LISTENER.to_string()],
                    (types::CLUSTER, Some(workload)) => inbound::cluster_names(workload),
                    _ => Vec::new(),
                };
                let own_resources = own_names.iter().filter_map(|n| own(n).flatten()).collect();
                (shared, own_resources)
            }
        };
        if own_resources.is_empty() {
            return shared;
        }
        let mut resources = shared.resources().to_vec();
        resources.extend(own_resources.into_iter().map(Arc::new));
        Arc::new(ResourceSet::new(resources))
    }

    fn connected(&self, stream: u64, node: &Node, caller: &Caller) {
        self.registrations.connected(stream, node, caller);
    }

    fn disconnected(&self, stream: u64) {
        self.registrations.disconnected(stream);
    }
}

#[cfg(test)]
mod tests;
