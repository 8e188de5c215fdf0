//! Checks across security and workload selection: STRICT mTLS against DestinationRules that
//! turn TLS off, selectors that select nothing, and scopes defined twice.

use std::collections::{BTreeMap, HashMap};

use super::{ROOT_NAMESPACE, Workloads, describe};
use crate::codes;
use crate::hosts::{fqdn, service_namespace};
use crate::message::Message;
use crate::meta::WorkloadSelector;
use crate::networking::destination_rule::{ClientTlsMode, TrafficPolicy};
use crate::resource::{Resource, Spec};
use crate::security::peer_authentication::{MtlsMode, PeerAuthentication};
use crate::validate::Report;

pub(crate) fn check(resources: &[Resource], workloads: &Workloads, out: &mut Vec<Message>) {
    check_strict_against_disable(resources, out);
    check_selectors(resources, workloads, out);
    check_single_default(resources, out);
}

/// Whether a PeerAuthentication makes a whole namespace (or, in the root namespace, the
/// mesh) STRICT.
fn strict_scope(pa: &PeerAuthentication) -> bool {
    let selector_less = pa
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    selector_less && pa.mtls.as_ref().and_then(|m| m.mode) == Some(MtlsMode::Strict)
}

/// A DestinationRule `tls.mode: DISABLE` to workloads whose PeerAuthentication is STRICT
/// breaks every request: the client sends plaintext, the server refuses it.
fn check_strict_against_disable(resources: &[Resource], out: &mut Vec<Message>) {
    let mut strict: HashMap<&str, &Resource> = HashMap::new();
    let mut overridden: Vec<&str> = Vec::new();
    for resource in resources {
        if let Spec::PeerAuthentication(pa) = &resource.spec {
            let selector_less = pa
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.is_empty());
            if strict_scope(pa) {
                strict.entry(resource.namespace()).or_insert(resource);
            } else if selector_less
                && pa
                    .mtls
                    .as_ref()
                    .and_then(|m| m.mode)
                    .is_some_and(|m| m != MtlsMode::Unset)
            {
                overridden.push(resource.namespace());
            }
        }
    }
    if strict.is_empty() {
        return;
    }
    let service_namespaces: HashMap<String, &str> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::ServiceEntry(se) => Some(
                se.hosts
                    .iter()
                    .map(move |h| (fqdn(h, r.namespace()), r.namespace())),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    for resource in resources {
        let Spec::DestinationRule(dr) = &resource.spec else {
            continue;
        };
        let host = fqdn(&dr.host, resource.namespace());
        let Some(namespace) =
            service_namespace(&host).or_else(|| service_namespaces.get(&host).copied())
        else {
            continue;
        };
        let policy = strict.get(namespace).copied().or_else(|| {
            (!overridden.contains(&namespace))
                .then(|| strict.get(ROOT_NAMESPACE).copied())
                .flatten()
        });
        let Some(policy) = policy else { continue };
        let mut places = Vec::new();
        if let Some(top) = &dr.traffic_policy {
            disabled_places(top, "spec.trafficPolicy", &mut places);
        }
        for (i, subset) in dr.subsets.iter().enumerate() {
            if let Some(p) = &subset.traffic_policy {
                disabled_places(p, &format!("spec.subsets[{i}].trafficPolicy"), &mut places);
            }
        }
        let mut report = Report::new(resource, out);
        for place in places {
            report.at(
                &codes::STRICT_MTLS_TLS_DISABLED,
                &place,
                format!(
                    "clients are told to send plaintext to {host}, but {} requires mTLS (STRICT) there, so every request fails; use ISTIO_MUTUAL or remove tls",
                    describe(policy)
                ),
            );
        }
    }
}

fn disabled_places(policy: &TrafficPolicy, path: &str, places: &mut Vec<String>) {
    if policy.tls.as_ref().and_then(|t| t.mode) == Some(ClientTlsMode::Disable) {
        places.push(format!("{path}.tls.mode"));
    }
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        if port.tls.as_ref().and_then(|t| t.mode) == Some(ClientTlsMode::Disable) {
            places.push(format!("{path}.portLevelSettings[{i}].tls.mode"));
        }
    }
}

/// Selectors and subsets whose labels match no known workload.
fn check_selectors(resources: &[Resource], workloads: &Workloads, out: &mut Vec<Message>) {
    for resource in resources {
        let selector: Option<(&BTreeMap<String, String>, &str)> = match &resource.spec {
            Spec::PeerAuthentication(s) => selected(&s.selector).map(|x| (x, "spec.selector")),
            Spec::AuthorizationPolicy(s) => selected(&s.selector).map(|x| (x, "spec.selector")),
            Spec::RequestAuthentication(s) => selected(&s.selector).map(|x| (x, "spec.selector")),
            Spec::DestinationRule(s) => {
                selected(&s.workload_selector).map(|x| (x, "spec.workloadSelector"))
            }
            Spec::Sidecar(s) => s
                .workload_selector
                .as_ref()
                .map(|x| (&x.labels, "spec.workloadSelector")),
            Spec::ServiceEntry(s) => s
                .workload_selector
                .as_ref()
                .map(|x| (&x.labels, "spec.workloadSelector")),
            _ => None,
        };
        if let Some((labels, path)) = selector
            && !labels.is_empty()
            && workloads.any_match(resource.namespace(), labels) == Some(false)
        {
            Report::new(resource, out).at(
                &codes::SELECTOR_MATCHES_NOTHING,
                path,
                format!(
                    "no workload in namespace {} has the labels {}; the resource applies to nothing",
                    resource.namespace(),
                    labels_text(labels)
                ),
            );
        }
        if let Spec::DestinationRule(dr) = &resource.spec {
            let host = fqdn(&dr.host, resource.namespace());
            let namespace = service_namespace(&host).unwrap_or(resource.namespace());
            for (i, subset) in dr.subsets.iter().enumerate() {
                if !subset.labels.is_empty()
                    && workloads.any_match(namespace, &subset.labels) == Some(false)
                {
                    Report::new(resource, out).at(
                        &codes::SUBSET_SELECTS_NOTHING,
                        &format!("spec.subsets[{i}].labels"),
                        format!(
                            "no workload in namespace {namespace} has the labels {}; requests routed to subset {:?} fail with 503 (UH)",
                            labels_text(&subset.labels),
                            subset.name
                        ),
                    );
                }
            }
        }
    }
}

fn selected(selector: &Option<WorkloadSelector>) -> Option<&BTreeMap<String, String>> {
    selector.as_ref().map(|s| &s.match_labels)
}

fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// At most one selector-less Sidecar, and one selector-less PeerAuthentication, per
/// namespace: with two, which one applies is not defined.
fn check_single_default(resources: &[Resource], out: &mut Vec<Message>) {
    let mut sidecars: HashMap<&str, &Resource> = HashMap::new();
    let mut peer_authns: HashMap<&str, &Resource> = HashMap::new();
    for resource in resources {
        let (seen, code, text) = match &resource.spec {
            Spec::Sidecar(s)
                if s.workload_selector
                    .as_ref()
                    .is_none_or(|w| w.labels.is_empty()) =>
            {
                (
                    &mut sidecars,
                    &codes::MULTIPLE_DEFAULT_SIDECARS,
                    "is already the namespace's Sidecar without a workloadSelector; a namespace may have only one, give this one a workloadSelector or merge them",
                )
            }
            Spec::PeerAuthentication(p)
                if p.selector
                    .as_ref()
                    .is_none_or(|w| w.match_labels.is_empty()) =>
            {
                (
                    &mut peer_authns,
                    &codes::MULTIPLE_NAMESPACE_PEER_AUTHN,
                    "already sets the namespace-wide mTLS mode; Istio applies the oldest one only, so keep one namespace-wide PeerAuthentication",
                )
            }
            _ => continue,
        };
        match seen.get(resource.namespace()) {
            Some(first) => {
                Report::new(resource, out).at(code, "spec", format!("{} {text}", describe(first)))
            }
            None => {
                seen.insert(resource.namespace(), resource);
            }
        }
    }
}
