//! The service registry: services and their endpoints, from the platform's own registry
//! (Kubernetes Services, see [`crate::kube::registry`]), from ServiceEntries (hosts, ports,
//! resolution, inline endpoints or a workloadSelector over WorkloadEntries and registered
//! workloads), and from workloads that registered themselves over xDS.
//!
//! Hosts are fully qualified the way Istio does it: a short name in a resource in namespace
//! `ns` is `<name>.<ns>.svc.cluster.local`.

use std::collections::{BTreeMap, HashMap};

use weft_api::Resource;
use weft_api::meta::labels_match;
use weft_api::networking::Protocol;
use weft_api::networking::service_entry::{Location, Resolution, ServiceEntry};
use weft_api::networking::workload_entry::WorkloadEntry;
use weft_api::resource::Spec;

use crate::registration::RegisteredWorkload;

pub use weft_api::hosts::{fqdn, service_namespace};

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The service port.
    pub number: u32,
    /// Its name, which endpoints use to give their own port number.
    pub name: String,
    /// `HTTP`, `GRPC`, `TCP`, …; unspecified when not declared.
    pub protocol: Protocol,
    /// The endpoints' port when it differs and an endpoint names none.
    pub target_port: Option<u32>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// IP address or host name.
    pub address: String,
    /// Port name to the endpoint's own port number.
    pub ports: BTreeMap<String, u32>,
    /// The workload's labels (subsets select by them).
    pub labels: BTreeMap<String, String>,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account, its identity.
    pub service_account: String,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Relative weight; 1 when not given.
    pub weight: u32,
    /// Whether a sidecar that speaks mesh mTLS is in front of the workload, where the
    /// registry knows: a Kubernetes pod says so with its `security.istio.io/tlsMode: istio`
    /// label (injection adds it), a WorkloadEntry with that label or a service account, or
    /// its proxy registers. `None` elsewhere: then every endpoint of a mesh-internal service
    /// is taken to have one.
    pub sidecar: Option<bool>,
    /// The application's own port behind a sidecar that fronts it on a port of its own
    /// (`APP_PORT`): the port PeerAuthentication's `portLevelMtls` names.
    pub app_port: Option<u32>,
}

/// The label that says whether a workload speaks mesh mTLS (`istio`) or not (`disabled`).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

impl Endpoint {
    fn from_entry(entry: &WorkloadEntry, namespace: &str) -> Self {
        Self {
            address: entry.address.clone(),
            ports: entry.ports.clone(),
            labels: entry.labels.clone(),
            namespace: namespace.to_string(),
            service_account: if entry.service_account.is_empty() {
                "default".to_string()
            } else {
                entry.service_account.clone()
            },
            locality: entry.locality.clone(),
            weight: entry.weight.filter(|w| *w > 0).unwrap_or(1),
            // Istio's rule for WorkloadEntries: the `security.istio.io/tlsMode` label, else
            // mesh mTLS only when the entry names a service account.
            sidecar: Some(match entry.labels.get(TLS_MODE_LABEL) {
                Some(mode) => mode == "istio",
                None => !entry.service_account.is_empty(),
            }),
            app_port: None,
        }
    }

    fn from_registered(workload: &RegisteredWorkload) -> Self {
        Self {
            address: workload.address.clone(),
            ports: BTreeMap::new(),
            labels: workload.labels.clone(),
            namespace: workload.namespace.clone(),
            service_account: workload.service_account.clone(),
            locality: String::new(),
            weight: 1,
            sidecar: None,
            app_port: workload.app_port,
        }
    }

    /// The endpoint's port for a service port: the one it names, else the service's target
    /// port, else the service port itself.
    pub fn port_for(&self, port: &ServicePort) -> u32 {
        self.ports
            .get(&port.name)
            .copied()
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Fully qualified host.
    pub host: String,
    /// Namespace of the resource that defines it.
    pub namespace: String,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Inside or outside the mesh.
    pub location: Location,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// The port with this number, or the only port when `number` is `None`.
    pub fn port(&self, number: Option<u32>) -> Option<&ServicePort> {
        match number {
            Some(n) => self.ports.iter().find(|p| p.number == n),
            None if self.ports.len() == 1 => self.ports.first(),
            None => None,
        }
    }
}

/// Builds the registry from the services of the platform (Kubernetes), the resources in
/// force and the workloads that registered themselves. A platform service defines its host;
/// otherwise the first ServiceEntry for a host (in load order) does; a service named only by
/// registered workloads gets the ports they declare.
pub fn build(
    platform: &[Service],
    resources: &[&Resource],
    registered: &[RegisteredWorkload],
) -> BTreeMap<String, Service> {
    let entries: Vec<(&Resource, &WorkloadEntry)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(we) => Some((*r, we)),
            _ => None,
        })
        .collect();
    let mut services: BTreeMap<String, Service> = platform
        .iter()
        .map(|service| (service.host.clone(), service.clone()))
        .collect();
    let on_platform = |host: &str| platform.iter().any(|s| s.host == host);
    // The identities each service's configured workloads (WorkloadEntries, the platform's
    // pods) run as: a registering workload may join a service only as one of them, when it
    // has any, so a token for another account cannot make itself an endpoint the service's
    // clients would accept.
    let mut configured: HashMap<String, Vec<(String, String)>> = platform
        .iter()
        .map(|service| (service.host.clone(), identities(&service.endpoints)))
        .collect();
    for resource in resources {
        let Spec::ServiceEntry(se) = &resource.spec else {
            continue;
        };
        let namespace = resource.namespace();
        let mut endpoints = endpoints_of(se, namespace, &entries);
        let own = identities(&endpoints);
        for host in &se.hosts {
            configured
                .entry(fqdn(host, namespace))
                .or_default()
                .extend(own.iter().cloned());
        }
        if let Some(selector) = &se.workload_selector {
            endpoints.extend(
                registered
                    .iter()
                    .filter(|w| {
                        w.namespace == namespace
                            && labels_match(&selector.labels, &w.labels)
                            && may_join(&own, w, se.hosts.first().map_or("", String::as_str))
                    })
                    .map(Endpoint::from_registered),
            );
        }
        for host in &se.hosts {
            let host = fqdn(host, namespace);
            services.entry(host.clone()).or_insert_with(|| Service {
                host,
                namespace: namespace.to_string(),
                ports: se
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        number: p.number,
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        target_port: p.target_port,
                    })
                    .collect(),
                resolution: se.resolution.unwrap_or(Resolution::None),
                location: se.location.unwrap_or(Location::MeshExternal),
                endpoints: endpoints.clone(),
            });
        }
    }
    for workload in registered {
        for served in &workload.serves {
            let host = fqdn(&served.service, &workload.namespace);
            let own = configured.get(&host).map_or(&[][..], Vec::as_slice);
            if !may_join(own, workload, &host) {
                continue;
            }
            let platform_service = on_platform(&host);
            let service = services.entry(host.clone()).or_insert_with(|| Service {
                host,
                namespace: workload.namespace.clone(),
                ports: Vec::new(),
                resolution: Resolution::Static,
                location: Location::MeshInternal,
                endpoints: Vec::new(),
            });
            let port_name = match service.ports.iter().find(|p| p.number == served.port) {
                Some(port) => port.name.clone(),
                None => {
                    let name = format!("port-{}", served.port);
                    service.ports.push(ServicePort {
                        number: served.port,
                        name: name.clone(),
                        protocol: Protocol::Unspecified,
                        target_port: None,
                    });
                    name
                }
            };
            let mut endpoint = Endpoint::from_registered(workload);
            endpoint.ports.insert(port_name, served.target_port);
            if platform_service {
                // The platform's registry says which pods serve its services; a proxy
                // registering at a pod's address says only where it is reached (its own
                // inbound port when nothing intercepts) and that it speaks mTLS.
                if let Some(existing) = service
                    .endpoints
                    .iter_mut()
                    .find(|e| e.address == endpoint.address && e.namespace == endpoint.namespace)
                {
                    existing.ports.extend(endpoint.ports);
                    existing.sidecar = Some(true);
                }
                continue;
            }
            match service
                .endpoints
                .iter_mut()
                .find(|e| e.address == endpoint.address && e.labels == endpoint.labels)
            {
                Some(existing) => existing.ports.extend(endpoint.ports),
                None => service.endpoints.push(endpoint),
            }
        }
    }
    services
}

/// The identities (namespace, service account) `endpoints` run as.
fn identities(endpoints: &[Endpoint]) -> Vec<(String, String)> {
    endpoints
        .iter()
        .map(|e| (e.namespace.clone(), e.service_account.clone()))
        .collect()
}

/// Whether a registered workload may be an endpoint of `service`, whose configured
/// workloads run as `identities`: as one of them, or as anyone when there are none.
fn may_join(identities: &[(String, String)], workload: &RegisteredWorkload, service: &str) -> bool {
    let joins = identities.is_empty()
        || identities
            .iter()
            .any(|(ns, sa)| *ns == workload.namespace && *sa == workload.service_account);
    if !joins {
        tracing::warn!(
            workload = workload.name,
            service,
            service_account = workload.service_account,
            "a registered workload runs as an account the service's workloads do not; not an endpoint"
        );
    }
    joins
}

fn endpoints_of(
    se: &ServiceEntry,
    namespace: &str,
    entries: &[(&Resource, &WorkloadEntry)],
) -> Vec<Endpoint> {
    if let Some(selector) = &se.workload_selector {
        entries
            .iter()
            .filter(|(r, we)| {
                r.namespace() == namespace && labels_match(&selector.labels, &we.labels)
            })
            .map(|(r, we)| Endpoint::from_entry(we, r.namespace()))
            .collect()
    } else {
        se.endpoints
            .iter()
            .map(|we| Endpoint::from_entry(we, namespace))
            .collect()
    }
}
