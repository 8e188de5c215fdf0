//! Cross-resource analysis: findings that need more than one resource to see, such as a
//! route to a subset no DestinationRule defines, or STRICT mTLS on workloads whose clients
//! are told to send plaintext.
//!
//! The checks index resources by host and namespace once, so analysing tens of thousands of
//! resources stays linear. Workloads — Kubernetes pods and templates found in the input,
//! WorkloadEntries and inline ServiceEntry endpoints — are used only when the namespace has
//! some; without them, label selectors cannot be judged and are not.

mod routes;
mod security;
mod unimplemented;

use std::collections::BTreeMap;

use crate::load::Workload;
use crate::message::{Message, ResourceRef};
use crate::resource::{Resource, Spec};

/// The root namespace: selector-less policies there apply to the whole mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Analyses a set of resources, appending findings to `out`.
pub fn analyze(resources: &[Resource], k8s_workloads: &[Workload], out: &mut Vec<Message>) {
    let workloads = Workloads::new(resources, k8s_workloads);
    routes::check(resources, out);
    security::check(resources, &workloads, out);
    unimplemented::check(resources, out);
}

/// Labels of the workloads known in each namespace.
pub(crate) struct Workloads {
    by_namespace: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

impl Workloads {
    fn new(resources: &[Resource], k8s: &[Workload]) -> Self {
        let mut by_namespace: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
        for workload in k8s {
            by_namespace
                .entry(workload.source.namespace.clone())
                .or_default()
                .push(workload.labels.clone());
        }
        for resource in resources {
            let labels: Vec<&BTreeMap<String, String>> = match &resource.spec {
                Spec::WorkloadEntry(entry) => vec![&entry.labels],
                Spec::ServiceEntry(entry) => entry.endpoints.iter().map(|e| &e.labels).collect(),
                _ => continue,
            };
            by_namespace
                .entry(resource.namespace().to_string())
                .or_default()
                .extend(labels.into_iter().cloned());
        }
        Self { by_namespace }
    }

    /// `None` when no workload of `namespace` is known; otherwise whether one carries all of
    /// `selector`'s labels.
    pub(crate) fn any_match(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Option<bool> {
        let workloads = self.by_namespace.get(namespace)?;
        Some(
            workloads
                .iter()
                .any(|labels| crate::meta::labels_match(selector, labels)),
        )
    }
}

/// `Kind ns/name (file:line)`, for naming another resource in a message.
pub(crate) fn describe(resource: &Resource) -> String {
    let ResourceRef {
        kind,
        namespace,
        name,
    } = resource.reference();
    format!("{kind} {namespace}/{name} ({})", resource.origin)
}
