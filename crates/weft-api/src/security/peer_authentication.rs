//! `PeerAuthentication`: whether a workload's inbound traffic must be mutual TLS.
//!
//! Semantics Weft keeps from Istio: workload policy beats namespace policy beats mesh policy
//! (a selector-less policy in the root namespace); `UNSET` inherits; no policy at all means
//! `PERMISSIVE`; `portLevelMtls` is keyed by the workload's port and needs a selector.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::meta::WorkloadSelector;

/// The `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthentication {
    /// Workloads this applies to; the whole namespace (or mesh, in the root namespace) when
    /// absent.
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    pub mtls: Option<MutualTls>,
    /// Per-port modes, by workload port.
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MutualTls {
    /// The mode; `UNSET` when absent.
    pub mode: Option<MtlsMode>,
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS or plaintext.
    Permissive,
    /// mTLS only, client certificate required.
    Strict,
}
