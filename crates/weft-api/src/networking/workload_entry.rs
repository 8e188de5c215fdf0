//! `WorkloadEntry`: a workload that is not a Kubernetes pod (a VM, a process on a host) with
//! its address, labels and identity, so services can select it like a pod.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The `spec` of a WorkloadEntry, also used inline as a ServiceEntry endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadEntry {
    /// IP address, DNS name or `unix://` socket path.
    pub address: String,
    /// Port name to port number, overriding the service's target ports.
    pub ports: BTreeMap<String, u32>,
    /// Labels services select the workload by.
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on, for multi-network meshes.
    pub network: String,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Relative load-balancing weight.
    pub weight: Option<u32>,
    /// Service account, the workload's identity.
    pub service_account: String,
}
