//! Kubernetes-style object metadata and the label selectors Istio resources use.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The namespace a resource lands in when its metadata names none, as `kubectl apply` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `metadata` of a resource. Only name, namespace, labels and annotations mean anything to
/// Weft; the other fields Kubernetes writes are accepted so that exported objects load
/// without warnings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    /// The resource's name, unique per kind and namespace.
    pub name: String,
    /// The namespace; [`DEFAULT_NAMESPACE`] when absent.
    pub namespace: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    // Fields the Kubernetes API server writes: accepted so exported objects load without
    // warnings, not interpreted. A misspelt field is still reported.
    /// `uid`, kept as written.
    pub uid: Option<serde_json::Value>,
    /// `resourceVersion`, kept as written.
    pub resource_version: Option<serde_json::Value>,
    /// `generation`, kept as written.
    pub generation: Option<serde_json::Value>,
    /// `creationTimestamp`, kept as written.
    pub creation_timestamp: Option<serde_json::Value>,
    /// `deletionTimestamp`, kept as written.
    pub deletion_timestamp: Option<serde_json::Value>,
    /// `deletionGracePeriodSeconds`, kept as written.
    pub deletion_grace_period_seconds: Option<serde_json::Value>,
    /// `generateName`, kept as written.
    pub generate_name: Option<serde_json::Value>,
    /// `finalizers`, kept as written.
    pub finalizers: Option<serde_json::Value>,
    /// `ownerReferences`, kept as written.
    pub owner_references: Option<serde_json::Value>,
    /// `managedFields`, kept as written.
    pub managed_fields: Option<serde_json::Value>,
    /// `selfLink`, kept as written.
    pub self_link: Option<serde_json::Value>,
}

impl ObjectMeta {
    /// The namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// `selector` / `workloadSelector`: the workloads a resource applies to, by label.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    /// Every label must be present with this value. Empty selects every workload.
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether a workload with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels_match(&self.match_labels, labels)
    }
}

/// `workloadSelector` of a ServiceEntry or a Sidecar. These two `networking.istio.io` kinds
/// write their selector as `labels:`, where the security kinds and DestinationRule write
/// `matchLabels:` ([`WorkloadSelector`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadLabels {
    /// Every label must be present with this value.
    pub labels: BTreeMap<String, String>,
}

/// Whether every `(key, value)` of `selector` is among `labels`.
pub fn labels_match(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `targetRef` / `targetRefs` of security resources (Gateway API style policy attachment).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyTargetReference {
    /// API group of the target (`gateway.networking.k8s.io`, `""` for core).
    pub group: String,
    /// Kind of the target (`Gateway`, `Service`, `ServiceEntry`, …).
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; must equal the policy's own.
    pub namespace: Option<String>,
}
