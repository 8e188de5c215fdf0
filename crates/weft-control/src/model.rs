//! One immutable snapshot of the mesh: the resources in force, the registry built from them,
//! and indexes the translation needs. Built once per configuration change, shared by every
//! stream through an `Arc`.

use std::collections::BTreeMap;
use std::sync::Arc;

use weft_api::Resource;
use weft_api::mesh::MeshConfig;
use weft_api::networking::destination_rule::DestinationRule;
use weft_api::networking::gateway::Gateway;
use weft_api::networking::sidecar::Sidecar;
use weft_api::networking::virtual_service::VirtualService;
use weft_api::resource::Spec;
use weft_api::security::authorization_policy::AuthorizationPolicy;
use weft_api::security::peer_authentication::PeerAuthentication;
use weft_api::security::request_authentication::RequestAuthentication;

use crate::jwks::KeySets;
use crate::registration::RegisteredWorkload;
use crate::registry::{self, Service, fqdn};
use crate::store::ConfigState;

/// The mesh at one moment.
#[derive(Debug, Default)]
pub struct MeshSnapshot {
    /// A number no other snapshot of this process has: caches are keyed by it.
    pub version: u64,
    /// Which configuration generation this was built from.
    pub generation: u64,
    /// Services by fully qualified host.
    pub services: BTreeMap<String, Service>,
    /// VirtualServices that apply to sidecars, by the hosts they route (first one wins, as
    /// sidecars do not merge them).
    pub virtual_services: BTreeMap<String, (Resource, VirtualService)>,
    /// DestinationRules by host; several for one host are merged in load order.
    pub destination_rules: BTreeMap<String, Vec<(Resource, DestinationRule)>>,
    /// PeerAuthentications, in load order (the first of a scope wins).
    pub peer_authentications: Vec<(Resource, PeerAuthentication)>,
    /// AuthorizationPolicies, in load order.
    pub authorization_policies: Vec<(Resource, AuthorizationPolicy)>,
    /// RequestAuthentications, in load order.
    pub request_authentications: Vec<(Resource, RequestAuthentication)>,
    /// The key sets their `jwksUri`s name, as last fetched.
    pub key_sets: Arc<KeySets>,
    /// Sidecars, in load order.
    pub sidecars: Vec<(Resource, Sidecar)>,
    /// Gateways, in load order.
    pub gateways: Vec<(Resource, Gateway)>,
    /// VirtualServices bound to gateways (other than `mesh`), in load order.
    pub gateway_virtual_services: Vec<(Resource, VirtualService)>,
    /// The mesh-wide settings.
    pub mesh: Arc<MeshConfig>,
}

impl MeshSnapshot {
    /// Builds a snapshot from the configuration in force, the registered workloads and the
    /// services of the platform's registry.
    pub fn build(
        version: u64,
        state: &ConfigState,
        registered: &[RegisteredWorkload],
        platform: &[Service],
    ) -> Self {
        let mut resources: Vec<&Resource> = state.resources.values().collect();
        // Load order (file, then line) decides which of two conflicting resources wins.
        resources.sort_by(|a, b| a.origin.cmp(&b.origin));
        let services = registry::build(platform, &resources, registered);
        let mut virtual_services = BTreeMap::new();
        let mut destination_rules: BTreeMap<String, Vec<(Resource, DestinationRule)>> =
            BTreeMap::new();
        let mut peer_authentications = Vec::new();
        let mut authorization_policies = Vec::new();
        let mut request_authentications = Vec::new();
        let mut sidecars = Vec::new();
        let mut gateways = Vec::new();
        let mut gateway_virtual_services = Vec::new();
        for resource in resources {
            match &resource.spec {
                Spec::VirtualService(vs) => {
                    if vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh") {
                        for host in &vs.hosts {
                            virtual_services
                                .entry(fqdn(host, resource.namespace()))
                                .or_insert_with(|| (resource.clone(), vs.clone()));
                        }
                    }
                    if vs.gateways.iter().any(|g| g != "mesh") {
                        gateway_virtual_services.push((resource.clone(), vs.clone()));
                    }
                }
                Spec::Gateway(gateway) => gateways.push((resource.clone(), gateway.clone())),
                Spec::DestinationRule(dr) => {
                    destination_rules
                        .entry(fqdn(&dr.host, resource.namespace()))
                        .or_default()
                        .push((resource.clone(), (**dr).clone()));
                }
                Spec::PeerAuthentication(pa) => {
                    peer_authentications.push((resource.clone(), pa.clone()))
                }
                Spec::AuthorizationPolicy(ap) => {
                    authorization_policies.push((resource.clone(), ap.clone()))
                }
                Spec::RequestAuthentication(ra) => {
                    request_authentications.push((resource.clone(), ra.clone()))
                }
                Spec::Sidecar(sidecar) => sidecars.push((resource.clone(), (**sidecar).clone())),
                _ => {}
            }
        }
        Self {
            version,
            generation: state.generation,
            services,
            virtual_services,
            destination_rules,
            peer_authentications,
            authorization_policies,
            request_authentications,
            key_sets: Arc::default(),
            sidecars,
            gateways,
            gateway_virtual_services,
            mesh: Arc::default(),
        }
    }

    /// The snapshot with the mesh-wide settings `mesh`.
    pub fn with_mesh(mut self, mesh: Arc<MeshConfig>) -> Self {
        self.mesh = mesh;
        self
    }

    /// The snapshot with the fetched key sets `key_sets`.
    pub fn with_key_sets(mut self, key_sets: Arc<KeySets>) -> Self {
        self.key_sets = key_sets;
        self
    }

    /// The DestinationRules for a host: those naming it exactly, else those of the most
    /// specific wildcard that covers it (`*.shop.svc.cluster.local` before `*.cluster.local`),
    /// as Istio picks them.
    pub fn rules_for(&self, host: &str) -> &[(Resource, DestinationRule)] {
        if let Some(rules) = self.destination_rules.get(host) {
            return rules;
        }
        self.destination_rules
            .iter()
            .filter(|(pattern, _)| {
                pattern.starts_with('*') && weft_api::hosts::covers(pattern, host)
            })
            .max_by_key(|(pattern, _)| pattern.len())
            .map_or(&[], |(_, rules)| rules.as_slice())
    }

    /// The labels of a subset of a host, from the first DestinationRule that defines it.
    pub fn subset_labels(&self, host: &str, subset: &str) -> Option<&BTreeMap<String, String>> {
        self.rules_for(host)
            .iter()
            .flat_map(|(_, dr)| &dr.subsets)
            .find(|s| s.name == subset)
            .map(|s| &s.labels)
    }

    /// The hosts a client may reach, from the Sidecar resource that applies to it (one
    /// selecting its labels in its namespace, else its namespace's selector-less one, else
    /// the root namespace's); `None` when no Sidecar applies, meaning every service.
    pub fn visible(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<Vec<(String, String)>> {
        let selector_less = |s: &Sidecar| {
            s.workload_selector
                .as_ref()
                .is_none_or(|w| w.labels.is_empty())
        };
        let sidecar = self
            .sidecars_in(namespace)
            .find(|(_, s)| {
                s.workload_selector.as_ref().is_some_and(|w| {
                    !w.labels.is_empty() && weft_api::meta::labels_match(&w.labels, labels)
                })
            })
            .or_else(|| self.sidecars_in(namespace).find(|(_, s)| selector_less(s)))
            .or_else(|| {
                self.sidecars_in(weft_api::analyze::ROOT_NAMESPACE)
                    .find(|(_, s)| selector_less(s))
            })?;
        Some(
            sidecar
                .1
                .egress
                .iter()
                .flat_map(|listener| &listener.hosts)
                .filter_map(|host| {
                    let (ns, name) = host.split_once('/')?;
                    let ns = match ns {
                        "." => namespace.to_string(),
                        "~" => return None,
                        other => other.to_string(),
                    };
                    Some((ns, name.to_string()))
                })
                .collect(),
        )
    }

    fn sidecars_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a (Resource, Sidecar)> {
        self.sidecars
            .iter()
            .filter(move |(r, _)| r.namespace() == namespace)
    }

    /// Whether `service` is reachable under a Sidecar's egress `hosts` (see [`Self::visible`]).
    pub fn reachable(service: &Service, visible: Option<&[(String, String)]>) -> bool {
        let Some(hosts) = visible else { return true };
        hosts.iter().any(|(namespace, name)| {
            (namespace == "*" || *namespace == service.namespace)
                && (name == "*" || weft_api::hosts::covers(name, &service.host))
        })
    }

    /// The first DestinationRule for a host: its top-level traffic policy is the one that
    /// applies when several exist.
    pub fn destination_rule(&self, host: &str) -> Option<&DestinationRule> {
        self.rules_for(host).first().map(|(_, dr)| dr)
    }
}
