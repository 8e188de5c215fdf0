//! The one place Envoy's protobuf types are read: xDS resources in, the proxy's [`Model`]
//! out. Each resource is converted on its own when it arrives ([`Received::apply`]), as
//! ztunnel handles each resource: one that cannot be applied is rejected with a reason that
//! names it — the xDS client sends the reasons back as a NACK — and the last good version of
//! it stays, while the other resources of the same response are applied. A resource that
//! arrives unchanged is not converted again, and [`Received::assemble`] puts the model
//! together from what is held, linking a cluster with its endpoints only when either
//! changed.
//!
//! By resource: [`listener`] (ports, gateway TLS, the inbound chains and their [`rbac`]),
//! [`route`] (route tables, with the [`matcher`]s they share with RBAC), [`cluster`]
//! (clusters and endpoints, with their [`tls`]).

pub mod cluster;
mod jwt;
pub mod listener;
pub mod matcher;
mod proto;
pub mod rbac;
pub mod route;
pub mod tls;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use prost::Message;
use weft_xds::envoy::envoy::config::cluster::v3::Cluster as XdsCluster;
use weft_xds::envoy::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds::envoy::envoy::config::listener::v3::Listener;
use weft_xds::envoy::envoy::config::route::v3::RouteConfiguration;
use weft_xds::envoy::google::protobuf::Any;
use weft_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

use crate::model::{Cluster, Endpoint, HttpPort, Model, RouteTable};
use cluster::{ClusterSettings, EndpointSource};
use listener::{ListenerKind, ListenerPart};

/// One resource as received (its bytes, to tell an unchanged one) and as converted.
#[derive(Debug, Clone)]
pub struct Held<T> {
    bytes: Arc<[u8]>,
    /// What it was converted to.
    pub value: T,
}

/// The resources a proxy holds, by type and name, each as received and as converted.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Listeners.
    pub listeners: HashMap<String, Held<ListenerPart>>,
    /// Route configurations.
    pub routes: HashMap<String, Held<Arc<RouteTable>>>,
    /// Clusters.
    pub clusters: HashMap<String, Held<Arc<ClusterSettings>>>,
    /// Cluster load assignments, by service name.
    pub endpoints: HashMap<String, Held<Arc<Vec<Endpoint>>>>,
    /// The types a response has been applied for (a response all of whose resources were
    /// rejected included, as Envoy's warming counts it).
    pub answered: BTreeSet<String>,
    /// Each cluster linked with its endpoints, kept while neither changes.
    linked: HashMap<String, Linked>,
}

#[derive(Debug, Clone)]
struct Linked {
    settings: Arc<ClusterSettings>,
    endpoints: Option<Arc<Vec<Endpoint>>>,
    cluster: Arc<Cluster>,
}

/// A resource the proxy cannot apply.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} {name}: {reason}")]
pub struct Rejected {
    kind: &'static str,
    name: String,
    reason: String,
}

/// What a resource of one type is converted to, and how its name is found.
trait Kind: Sized {
    /// The message.
    type Message: Message + Default;
    /// What the model takes from it.
    type Value: Clone;
    /// Its name in a NACK.
    const KIND: &'static str;
    /// Its name.
    fn name(message: &Self::Message) -> String;
    /// Its conversion.
    fn convert(name: &str, message: Self::Message) -> Result<Self::Value, String>;
}

struct ListenerKindOf;
impl Kind for ListenerKindOf {
    type Message = Listener;
    type Value = ListenerPart;
    const KIND: &'static str = "listener";
    fn name(message: &Listener) -> String {
        message.name.clone()
    }
    fn convert(name: &str, message: Listener) -> Result<ListenerPart, String> {
        listener::listener_part(name, &message)
    }
}

struct RouteKindOf;
impl Kind for RouteKindOf {
    type Message = RouteConfiguration;
    type Value = Arc<RouteTable>;
    const KIND: &'static str = "route configuration";
    fn name(message: &RouteConfiguration) -> String {
        message.name.clone()
    }
    fn convert(_: &str, message: RouteConfiguration) -> Result<Arc<RouteTable>, String> {
        route::route_table(message).map(Arc::new)
    }
}

struct ClusterKindOf;
impl Kind for ClusterKindOf {
    type Message = XdsCluster;
    type Value = Arc<ClusterSettings>;
    const KIND: &'static str = "cluster";
    fn name(message: &XdsCluster) -> String {
        message.name.clone()
    }
    fn convert(_: &str, message: XdsCluster) -> Result<Arc<ClusterSettings>, String> {
        cluster::settings(message).map(Arc::new)
    }
}

struct EndpointKindOf;
impl Kind for EndpointKindOf {
    type Message = ClusterLoadAssignment;
    type Value = Arc<Vec<Endpoint>>;
    const KIND: &'static str = "endpoints";
    fn name(message: &ClusterLoadAssignment) -> String {
        message.cluster_name.clone()
    }
    fn convert(_: &str, message: ClusterLoadAssignment) -> Result<Arc<Vec<Endpoint>>, String> {
        cluster::endpoints(message).map(Arc::new)
    }
}

/// Converts the resources of one response into `held`: an unchanged resource keeps its
/// conversion, a rejected one its last good version (if any). With `whole`, the response
/// is the whole set (LDS, CDS) and what it leaves out goes.
fn apply_kind<K: Kind>(
    held: &mut HashMap<String, Held<K::Value>>,
    resources: Vec<Any>,
    whole: bool,
    rejected: &mut Vec<Rejected>,
) {
    let mut next = HashMap::with_capacity(resources.len());
    for any in resources {
        let message = match K::Message::decode(any.value.as_slice()) {
            Ok(message) => message,
            Err(error) => {
                rejected.push(Rejected {
                    kind: K::KIND,
                    name: "(unnamed)".to_string(),
                    reason: format!("undecodable: {error}"),
                });
                continue;
            }
        };
        let name = K::name(&message);
        if let Some(same) = held.get(&name).filter(|h| *h.bytes == *any.value) {
            next.insert(name, same.clone());
            continue;
        }
        match K::convert(&name, message) {
            Ok(value) => {
                let bytes = Arc::from(any.value);
                next.insert(name, Held { bytes, value });
            }
            Err(reason) => {
                if let Some(last_good) = held.get(&name) {
                    next.insert(name.clone(), last_good.clone());
                }
                rejected.push(Rejected {
                    kind: K::KIND,
                    name,
                    reason,
                });
            }
        }
    }
    if whole {
        *held = next;
    } else {
        held.extend(next);
    }
}

impl Received {
    /// Applies one response's resources of `type_url`; returns the resources rejected.
    pub fn apply(&mut self, type_url: &str, resources: Vec<Any>) -> Vec<Rejected> {
        let mut rejected = Vec::new();
        match type_url {
            LISTENER => {
                apply_kind::<ListenerKindOf>(&mut self.listeners, resources, true, &mut rejected)
            }
            CLUSTER => {
                apply_kind::<ClusterKindOf>(&mut self.clusters, resources, true, &mut rejected)
            }
            ROUTE => apply_kind::<RouteKindOf>(&mut self.routes, resources, false, &mut rejected),
            ENDPOINT => {
                apply_kind::<EndpointKindOf>(&mut self.endpoints, resources, false, &mut rejected);
            }
            _ => return rejected,
        }
        self.answered.insert(type_url.to_string());
        rejected
    }

    /// The route configurations the listeners name, to ask RDS for.
    pub fn wanted_routes(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .listeners
            .values()
            .flat_map(|l| l.value.routes.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The service names whose endpoints come over EDS, to ask for.
    pub fn wanted_endpoints(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .clusters
            .values()
            .filter_map(|c| c.value.eds.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Drops route configurations and endpoints nothing names any more.
    pub fn forget_unwanted(&mut self, routes: &[String], endpoints: &[String]) {
        self.routes.retain(|name, _| routes.contains(name));
        self.endpoints.retain(|name, _| endpoints.contains(name));
    }

    /// The model of everything held.
    pub fn assemble(&mut self) -> Model {
        let mut model = Model::default();
        for part in self.listeners.values() {
            match &part.value.kind {
                ListenerKind::Port {
                    port,
                    sniffed,
                    paths,
                    rbac,
                    trusted_hops,
                    jwt,
                    gateway,
                } => {
                    if let Some(route) = part.value.routes.first() {
                        let port_settings = HttpPort {
                            route: route.clone(),
                            paths: *paths,
                            rbac: rbac.clone(),
                            trusted_hops: *trusted_hops,
                            jwt: jwt.clone(),
                        };
                        model.outbound_ports.insert(*port, port_settings);
                    }
                    if *sniffed {
                        model.sniffed_ports.insert(*port);
                    }
                    if let Some(gateway) = gateway {
                        model.gateway_ports.insert(*port, gateway.clone());
                    }
                }
                ListenerKind::Inbound(chains) => {
                    for chain in chains {
                        let entry = model.inbound.entry(chain.port).or_default();
                        if chain.tls && !chain.terminates {
                            entry.tls_passthrough = Some(chain.rbac.clone());
                            continue;
                        }
                        let serves = if chain.tcp {
                            &mut entry.tcp
                        } else {
                            &mut entry.http
                        };
                        if serves.is_none() {
                            *serves = Some(chain.rbac.clone());
                            if !chain.tcp {
                                entry.jwt = chain.jwt.clone();
                            }
                        }
                        if !chain.tcp {
                            entry.paths = chain.paths;
                        }
                        if chain.tls {
                            entry.mtls = true;
                        } else {
                            entry.plaintext = true;
                        }
                    }
                }
                ListenerKind::Other => {}
            }
        }
        for (name, held) in &self.routes {
            model.routes.insert(name.clone(), held.value.clone());
        }
        let mut linked = HashMap::with_capacity(self.clusters.len());
        for (name, held) in &self.clusters {
            let settings = &held.value;
            let endpoints = match &settings.endpoints {
                EndpointSource::Inline(endpoints) => Some(endpoints.clone()),
                EndpointSource::Eds(service) => {
                    self.endpoints.get(service).map(|e| e.value.clone())
                }
            };
            let unchanged = self.linked.get(name).filter(|l| {
                Arc::ptr_eq(&l.settings, settings)
                    && match (&l.endpoints, &endpoints) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            let cluster = match unchanged {
                Some(linked) => linked.cluster.clone(),
                None => Arc::new(cluster::link(settings, endpoints.as_ref())),
            };
            model.clusters.insert(name.clone(), cluster.clone());
            linked.insert(
                name.clone(),
                Linked {
                    settings: settings.clone(),
                    endpoints,
                    cluster,
                },
            );
        }
        self.linked = linked;
        model
    }
}

#[cfg(test)]
mod tests;
