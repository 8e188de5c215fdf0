//! The CustomResourceDefinitions of Istio's API, as `weft manifest generate` installs them.
//!
//! Names, groups, versions, scopes, short names, categories and printer columns are Istio's,
//! so manifests written for Istio apply unchanged and `kubectl get vs` reads the same. The
//! schemas keep every field (`x-kubernetes-preserve-unknown-fields`): what a field means and
//! whether it is valid is the analyzer's to say, at the validating webhook and in
//! `status.validationMessages`, with the same messages as `weft analyze`.

use serde_json::{Value, json};

/// One custom resource kind.
pub struct CrdKind {
    /// `networking.istio.io`, …
    pub group: &'static str,
    /// `VirtualService`, …
    pub kind: &'static str,
    /// `virtualservices`, …
    pub plural: &'static str,
    /// `kubectl` short names.
    pub short_names: &'static [&'static str],
    /// Served versions; the first is the storage version.
    pub versions: &'static [&'static str],
    /// Extra `kubectl get` columns: name, JSON path, description.
    pub columns: &'static [(&'static str, &'static str, &'static str)],
}

const NETWORKING_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const SECURITY_VERSIONS: &[&str] = &["v1beta1", "v1"];

/// Every Istio kind the CRDs define, also those Weft does not act on yet (so their
/// manifests apply and the analyzer can say so).
pub const KINDS: &[CrdKind] = &[
    CrdKind {
        group: "networking.istio.io",
        kind: "VirtualService",
        plural: "virtualservices",
        short_names: &["vs"],
        versions: NETWORKING_VERSIONS,
        columns: &[
            (
                "Gateways",
                ".spec.gateways",
                "The names of gateways and sidecars that should apply these routes",
            ),
            (
                "Hosts",
                ".spec.hosts",
                "The destination hosts to which traffic is being sent",
            ),
        ],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "DestinationRule",
        plural: "destinationrules",
        short_names: &["dr"],
        versions: NETWORKING_VERSIONS,
        columns: &[(
            "Host",
            ".spec.host",
            "The name of a service from the service registry",
        )],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "Gateway",
        plural: "gateways",
        short_names: &["gw"],
        versions: NETWORKING_VERSIONS,
        columns: &[],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "ServiceEntry",
        plural: "serviceentries",
        short_names: &["se"],
        versions: NETWORKING_VERSIONS,
        columns: &[
            (
                "Hosts",
                ".spec.hosts",
                "The hosts associated with the ServiceEntry",
            ),
            (
                "Location",
                ".spec.location",
                "Whether the service is external to the mesh or part of the mesh (MESH_EXTERNAL or MESH_INTERNAL)",
            ),
            (
                "Resolution",
                ".spec.resolution",
                "Service resolution mode for the hosts (NONE, STATIC, or DNS)",
            ),
        ],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "WorkloadEntry",
        plural: "workloadentries",
        short_names: &["we"],
        versions: NETWORKING_VERSIONS,
        columns: &[(
            "Address",
            ".spec.address",
            "Address associated with the network endpoint",
        )],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "WorkloadGroup",
        plural: "workloadgroups",
        short_names: &["wg"],
        versions: NETWORKING_VERSIONS,
        columns: &[],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "Sidecar",
        plural: "sidecars",
        short_names: &[],
        versions: NETWORKING_VERSIONS,
        columns: &[],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "EnvoyFilter",
        plural: "envoyfilters",
        short_names: &[],
        versions: &["v1alpha3"],
        columns: &[],
    },
    CrdKind {
        group: "networking.istio.io",
        kind: "ProxyConfig",
        plural: "proxyconfigs",
        short_names: &[],
        versions: &["v1beta1"],
        columns: &[],
    },
    CrdKind {
        group: "security.istio.io",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        short_names: &["pa"],
        versions: SECURITY_VERSIONS,
        columns: &[(
            "Mode",
            ".spec.mtls.mode",
            "Defines the mTLS mode used for peer authentication",
        )],
    },
    CrdKind {
        group: "security.istio.io",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["ap"],
        versions: SECURITY_VERSIONS,
        columns: &[("Action", ".spec.action", "The operation to take")],
    },
    CrdKind {
        group: "security.istio.io",
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        short_names: &["ra"],
        versions: SECURITY_VERSIONS,
        columns: &[],
    },
    CrdKind {
        group: "telemetry.istio.io",
        kind: "Telemetry",
        plural: "telemetries",
        short_names: &["telemetry"],
        versions: &["v1alpha1", "v1"],
        columns: &[],
    },
    CrdKind {
        group: "extensions.istio.io",
        kind: "WasmPlugin",
        plural: "wasmplugins",
        short_names: &[],
        versions: &["v1alpha1"],
        columns: &[],
    },
];

impl CrdKind {
    /// The kind of this group and name.
    pub fn find(group: &str, kind: &str) -> Option<&'static CrdKind> {
        KINDS.iter().find(|k| k.group == group && k.kind == kind)
    }

    /// The newest served version, the one the control plane watches.
    pub fn newest_version(&self) -> &'static str {
        self.versions.last().copied().unwrap_or("v1")
    }

    /// The kind in its newest version, for kube-rs's dynamic API.
    pub fn api_resource(&self) -> kube::core::ApiResource {
        kube::core::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk(self.group, self.newest_version(), self.kind),
            self.plural,
        )
    }

    /// The CustomResourceDefinition object.
    pub fn definition(&self) -> Value {
        let any_object = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        let mut columns: Vec<Value> = self
            .columns
            .iter()
            .map(|(name, path, description)| {
                json!({"name": name, "jsonPath": path, "description": description, "type": "string"})
            })
            .collect();
        columns.push(json!({
            "name": "Age",
            "jsonPath": ".metadata.creationTimestamp",
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
            "type": "date",
        }));
        let versions: Vec<Value> = self
            .versions
            .iter()
            .enumerate()
            .map(|(index, version)| {
                json!({
                    "name": version,
                    "served": true,
                    "storage": index == 0,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": any_object, "status": any_object},
                        "x-kubernetes-preserve-unknown-fields": true,
                    }},
                })
            })
            .collect();
        let category = format!(
            "{}-io",
            self.group.replace('.', "-").trim_end_matches("-io")
        );
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": format!("{}.{}", self.plural, self.group),
                "labels": {"app.kubernetes.io/part-of": "weft"},
            },
            "spec": {
                "group": self.group,
                "scope": "Namespaced",
                "names": {
                    "kind": self.kind,
                    "listKind": format!("{}List", self.kind),
                    "plural": self.plural,
                    "singular": self.kind.to_ascii_lowercase(),
                    "shortNames": self.short_names,
                    "categories": ["istio-io", category],
                },
                "versions": versions,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_weft_reads_has_a_definition_served_in_every_version_it_reads() {
        for kind in weft_api::Kind::ALL {
            let crd = CrdKind::find(kind.group(), kind.as_str())
                .unwrap_or_else(|| panic!("{kind:?} has a CRD"));
            let served = match kind.group() {
                weft_api::resource::SECURITY_GROUP => SECURITY_VERSIONS,
                _ => NETWORKING_VERSIONS,
            };
            assert_eq!(crd.versions, served);
            assert_eq!(crd.newest_version(), "v1");
        }
    }

    #[test]
    fn a_definition_names_its_kind_as_istio_does() {
        let crd = CrdKind::find("networking.istio.io", "VirtualService")
            .expect("VirtualService")
            .definition();
        assert_eq!(
            crd["metadata"]["name"],
            "virtualservices.networking.istio.io"
        );
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["vs"]));
        assert_eq!(
            crd["spec"]["names"]["categories"],
            json!(["istio-io", "networking-istio-io"])
        );
        let storage: Vec<&Value> = crd["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter(|v| v["storage"] == true)
            .collect();
        assert_eq!(storage.len(), 1);
    }
}
