//! `ServiceEntry`: adds a service to the mesh's registry — an external API, a database on a
//! VM, or mesh workloads selected by label — with its hosts, ports and how its endpoints are
//! found.

use serde::Deserialize;

use super::Port;
use super::workload_entry::WorkloadEntry;
use crate::meta::WorkloadLabels;

/// The `spec` of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceEntry {
    /// Hosts of the service, required; a wildcard prefix is allowed, `*` alone is not.
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs of the service.
    pub addresses: Vec<String>,
    /// Ports of the service.
    pub ports: Vec<Port>,
    /// Inside or outside the mesh; `MESH_EXTERNAL` when absent.
    pub location: Option<Location>,
    /// How endpoints are found.
    pub resolution: Option<Resolution>,
    /// Inline endpoints.
    pub endpoints: Vec<WorkloadEntry>,
    /// Endpoints selected by label among WorkloadEntries and pods (`MESH_INTERNAL` only).
    pub workload_selector: Option<WorkloadLabels>,
    /// Namespaces the service is visible to; empty means all.
    pub export_to: Vec<String>,
    /// Identities the endpoints may present.
    pub subject_alt_names: Vec<String>,
}

/// `ServiceEntry.Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mTLS, no mesh policy.
    MeshExternal,
    /// Part of the mesh.
    MeshInternal,
}

/// `ServiceEntry.Resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the original destination address.
    None,
    /// The endpoints' addresses as given.
    Static,
    /// Resolve names asynchronously, use every address.
    Dns,
    /// Resolve names, use the first address per connection.
    DnsRoundRobin,
    /// Resolve the request's Host or SNI per request (wildcard hosts only).
    DynamicDns,
}
