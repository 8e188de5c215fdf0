//! Per-resource validation: Istio's own rules for each kind, one resource at a time.
//!
//! Each kind has a module that walks its spec and reports through a [`Report`], naming the
//! field by its path (`spec.http[0].route[1].weight`) so the message lands on the right line.
//! The shared rules (hosts, durations, percentages, regexes, labels, ports) are in
//! [`rules`]. What needs more than one resource to judge is [`crate::analyze`]'s job.

mod destination_rule;
mod gateway;
pub(crate) mod rules;
mod security;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use virtual_service::GRPC_STATUS;

use crate::codes::{self, Code};
use crate::message::Message;
use crate::resource::{Resource, Spec};

/// Collects the messages about one resource.
pub(crate) struct Report<'a> {
    resource: &'a Resource,
    out: &'a mut Vec<Message>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(resource: &'a Resource, out: &'a mut Vec<Message>) -> Self {
        Self { resource, out }
    }

    /// Reports `text` about the field at `path`.
    pub(crate) fn at(&mut self, code: &'static Code, path: &str, text: impl Into<String>) {
        self.out.push(Message::new(
            code,
            Some(self.resource.reference()),
            Some(self.resource.origin_of(path)),
            text,
        ));
    }
}

/// Validates one resource, appending what is wrong with it to `out`.
pub fn validate(resource: &Resource, out: &mut Vec<Message>) {
    let mut report = Report::new(resource, out);
    let name = &resource.metadata.name;
    if !rules::is_dns_subdomain(name) {
        report.at(
            &codes::INVALID_NAME,
            "metadata.name",
            format!("name {name:?} is not a valid Kubernetes name: use lower-case letters, digits, '-' and '.', at most 253 characters"),
        );
    }
    if let Some(namespace) = &resource.metadata.namespace
        && !rules::is_dns_label(namespace)
    {
        report.at(
            &codes::INVALID_NAME,
            "metadata.namespace",
            format!("namespace {namespace:?} is not a valid namespace name: use lower-case letters, digits and '-', at most 63 characters"),
        );
    }
    match &resource.spec {
        Spec::VirtualService(spec) => virtual_service::validate(spec, &mut report),
        Spec::DestinationRule(spec) => destination_rule::validate(spec, &mut report),
        Spec::ServiceEntry(spec) => service_entry::validate(spec, &mut report),
        Spec::WorkloadEntry(spec) => {
            service_entry::validate_workload_entry(spec, "spec", None, &mut report)
        }
        Spec::Gateway(spec) => gateway::validate(spec, &mut report),
        Spec::Sidecar(spec) => sidecar::validate(spec, &mut report),
        Spec::PeerAuthentication(spec) => security::validate_peer_authentication(spec, &mut report),
        Spec::AuthorizationPolicy(spec) => {
            security::validate_authorization_policy(spec, &mut report)
        }
        Spec::RequestAuthentication(spec) => {
            security::validate_request_authentication(spec, &mut report)
        }
    }
}
