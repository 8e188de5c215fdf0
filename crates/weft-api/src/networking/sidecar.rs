//! `Sidecar`: narrows what a workload's proxy listens for and can reach, so proxy memory does
//! not grow with the size of the mesh.

use serde::Deserialize;

use super::virtual_service::Destination;
use super::{Port, ServerTlsSettings};
use crate::meta::WorkloadLabels;
use crate::networking::destination_rule::ConnectionPoolSettings;

/// The `spec` of a Sidecar.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Sidecar {
    /// Workloads this applies to; every workload of the namespace when absent.
    pub workload_selector: Option<WorkloadLabels>,
    /// Inbound listeners.
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound scope.
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for every inbound listener.
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What to do with traffic to unknown destinations.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// `IstioIngressListener`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioIngressListener {
    /// Port, required.
    pub port: Option<Port>,
    /// Address to bind.
    pub bind: Option<String>,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Where traffic is forwarded (`127.0.0.1:PORT` or `unix://…`).
    pub default_endpoint: Option<String>,
    /// TLS termination.
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool for this listener.
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// `IstioEgressListener`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioEgressListener {
    /// Port; every port when absent.
    pub port: Option<Port>,
    /// Address to bind.
    pub bind: Option<String>,
    /// How traffic reaches the listener.
    pub capture_mode: Option<CaptureMode>,
    /// Reachable hosts, `namespace/dnsName`; required.
    pub hosts: Vec<String>,
}

/// `CaptureMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The mesh's default.
    Default,
    /// Redirected by iptables.
    Iptables,
    /// Not captured; the application talks to the listener directly.
    None,
}

/// `OutboundTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` when absent.
    pub mode: Option<OutboundMode>,
    /// Where traffic to unknown destinations goes in `ALLOW_ANY`.
    pub egress_proxy: Option<Destination>,
}

/// `OutboundTrafficPolicy.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Only hosts in the registry are reachable.
    RegistryOnly,
    /// Unknown hosts pass through.
    AllowAny,
}
