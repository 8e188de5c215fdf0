//! A loaded resource: its kind, metadata, typed spec, and where it came from.

use crate::load::span::SpanMap;
use crate::message::{Origin, ResourceRef};
use crate::meta::ObjectMeta;
use crate::networking::destination_rule::DestinationRule;
use crate::networking::gateway::Gateway;
use crate::networking::service_entry::ServiceEntry;
use crate::networking::sidecar::Sidecar;
use crate::networking::virtual_service::VirtualService;
use crate::networking::workload_entry::WorkloadEntry;
use crate::security::authorization_policy::AuthorizationPolicy;
use crate::security::peer_authentication::PeerAuthentication;
use crate::security::request_authentication::RequestAuthentication;

/// The API group of traffic resources.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// The API group of security resources.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The versions every kind is served in; all have the same schema.
pub const VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];

/// The Istio kinds Weft reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` Sidecar.
    Sidecar,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 9] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Gateway,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ];

    /// The kind's name as YAML writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }

    /// The kind's API group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                SECURITY_GROUP
            }
            _ => NETWORKING_GROUP,
        }
    }

    /// The kind called `name`, in any group.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The typed `spec` of a resource. The largest specs are boxed so a set of resources costs
/// what its resources hold, not the size of the largest kind each.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A VirtualService.
    VirtualService(VirtualService),
    /// A DestinationRule.
    DestinationRule(Box<DestinationRule>),
    /// A ServiceEntry.
    ServiceEntry(ServiceEntry),
    /// A WorkloadEntry.
    WorkloadEntry(WorkloadEntry),
    /// A Gateway.
    Gateway(Gateway),
    /// A Sidecar.
    Sidecar(Box<Sidecar>),
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
}

impl Spec {
    /// The spec's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::RequestAuthentication(_) => Kind::RequestAuthentication,
        }
    }
}

/// One Istio resource, typed, with the place of each of its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// `apiVersion` as written (`networking.istio.io/v1beta1`).
    pub api_version: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: Spec,
    /// Where the resource starts.
    pub origin: Origin,
    /// Where each of its fields starts.
    pub spans: SpanMap,
}

impl Resource {
    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// The resource's namespace, defaulted.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace()
    }

    /// `Kind namespace/name`, for messages.
    pub fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind().as_str().to_string(),
            namespace: self.namespace().to_string(),
            name: self.metadata.name.clone(),
        }
    }

    /// Where the field at `path` (such as `spec.http[0].route[1].weight`) starts; the nearest
    /// enclosing field that exists when it does not.
    pub fn origin_of(&self, path: &str) -> Origin {
        Origin {
            file: self.origin.file.clone(),
            line: self.spans.line_of(path).unwrap_or(self.origin.line),
        }
    }
}
