//! Who is asking for resources: a sidecar, an ingress gateway or a proxyless gRPC client,
//! its namespace and labels, read from the xDS node. Everything a resource's content can
//! depend on besides its name and the snapshot is here.

use std::collections::BTreeMap;

use weft_xds::envoy::envoy::config::core::v3::Node;

use crate::registration::RegisteredWorkload;
use crate::registry::fqdn;

/// Who is asking: the namespace short names resolve in, the labels `sourceLabels` match, and
/// whether it is a proxyless gRPC client (which supports fewer load balancers).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Client {
    /// The client's namespace.
    pub namespace: String,
    /// The client workload's labels.
    pub labels: BTreeMap<String, String>,
    /// A gRPC library rather than a proxy.
    pub proxyless_grpc: bool,
    /// The workload behind a sidecar that says what it serves; it gets inbound listeners.
    pub workload: Option<RegisteredWorkload>,
    /// An ingress gateway (node id `router~…`): it gets the listeners of the Gateways that
    /// select it instead of a sidecar's.
    pub gateway: bool,
}

impl Client {
    /// Reads the client from its node: metadata `NAMESPACE` and `LABELS` (as Istio's agent
    /// sends them), else an Istio-format node id `sidecar~IP~name.ns~ns.svc.cluster.local`,
    /// else `default`.
    pub fn from_node(node: &Node) -> Self {
        let namespace = crate::node::string(node, "NAMESPACE")
            .or_else(|| {
                let mut parts = node.id.split('~');
                let (_kind, _ip, workload) = (parts.next()?, parts.next()?, parts.next()?);
                workload.split_once('.').map(|(_, ns)| ns.to_string())
            })
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let gateway = node.id.starts_with("router~");
        let proxyless_grpc = node.user_agent_name.starts_with("gRPC")
            || crate::node::string(node, "GENERATOR").is_some_and(|g| g == "grpc");
        Self {
            namespace,
            labels: crate::node::string_map(node, "LABELS"),
            workload: (!proxyless_grpc)
                .then(|| RegisteredWorkload::from_node(node))
                .flatten(),
            proxyless_grpc,
            gateway,
        }
    }

    /// Resolves a host as written by this client (`reviews` → `reviews.<ns>.svc.cluster.local`).
    pub fn resolve(&self, host: &str) -> String {
        fqdn(host, &self.namespace)
    }
}
