//! Checks on routing: subsets that routes name, rules that can never match, and several
//! VirtualServices or DestinationRules claiming one host.

use std::collections::{BTreeMap, HashMap};

use super::{ROOT_NAMESPACE, describe};
use crate::codes;
use crate::hosts::{covers, fqdn};
use crate::message::Message;
use crate::networking::destination_rule::DestinationRule;
use crate::networking::virtual_service::{
    Destination, HttpMatchRequest, StringMatch, VirtualService,
};
use crate::resource::{Resource, Spec};
use crate::validate::Report;

pub(crate) fn check(resources: &[Resource], out: &mut Vec<Message>) {
    let mut rules_by_host: HashMap<String, Vec<(&Resource, &DestinationRule)>> = HashMap::new();
    let mut wildcard_rules: Vec<(String, &Resource, &DestinationRule)> = Vec::new();
    for resource in resources {
        if let Spec::DestinationRule(dr) = &resource.spec {
            let host = fqdn(&dr.host, resource.namespace());
            if host.starts_with('*') {
                wildcard_rules.push((host, resource, dr));
            } else {
                rules_by_host.entry(host).or_default().push((resource, dr));
            }
        }
    }
    let namespaces_with_request_authn: Vec<&str> = resources
        .iter()
        .filter(|r| matches!(r.spec, Spec::RequestAuthentication(_)))
        .map(Resource::namespace)
        .collect();
    let mut mesh_hosts: BTreeMap<String, &Resource> = BTreeMap::new();
    for resource in resources {
        let Spec::VirtualService(vs) = &resource.spec else {
            continue;
        };
        let mut report = Report::new(resource, out);
        let subsets = SubsetLookup {
            by_host: &rules_by_host,
            wildcards: &wildcard_rules,
        };
        for (path, destination) in destinations(vs) {
            subsets.check(resource, destination, &path, &mut report);
        }
        check_unreachable(vs, &mut report);
        check_claim_routes(vs, resource, &namespaces_with_request_authn, &mut report);
        let for_sidecars = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
        if for_sidecars {
            for (i, host) in vs.hosts.iter().enumerate() {
                let host = fqdn(host, resource.namespace());
                match mesh_hosts.get(&host) {
                    Some(first) => report.at(
                        &codes::CONFLICTING_VIRTUAL_SERVICES,
                        &format!("spec.hosts[{i}]"),
                        format!(
                            "{} already routes {host} for sidecars; sidecars do not merge VirtualServices, so only the one loaded first applies — merge their rules into one",
                            describe(first)
                        ),
                    ),
                    None => {
                        mesh_hosts.insert(host, resource);
                    }
                }
            }
        }
    }
    for rules in rules_by_host.values() {
        let mut first_in_namespace: HashMap<&str, &Resource> = HashMap::new();
        for (resource, dr) in rules {
            if dr.workload_selector.is_some() {
                continue;
            }
            match first_in_namespace.get(resource.namespace()) {
                Some(first) => Report::new(resource, out).at(
                    &codes::DUPLICATE_DESTINATION_RULE,
                    "spec.host",
                    format!(
                        "{} already configures {}; the two are merged: subsets are combined (the first definition of a name wins) and only the first trafficPolicy applies",
                        describe(first),
                        fqdn(&dr.host, resource.namespace())
                    ),
                ),
                None => {
                    first_in_namespace.insert(resource.namespace(), resource);
                }
            }
        }
    }
}

/// Every destination of a VirtualService that can name a subset, with its path.
fn destinations(vs: &VirtualService) -> Vec<(String, &Destination)> {
    let mut all = Vec::new();
    for (i, route) in vs.http.iter().enumerate() {
        for (k, d) in route.route.iter().enumerate() {
            all.push((
                format!("spec.http[{i}].route[{k}].destination"),
                &d.destination,
            ));
        }
        if let Some(mirror) = &route.mirror {
            all.push((format!("spec.http[{i}].mirror"), mirror));
        }
        for (k, mirror) in route.mirrors.iter().enumerate() {
            all.push((
                format!("spec.http[{i}].mirrors[{k}].destination"),
                &mirror.destination,
            ));
        }
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        for (k, d) in route.route.iter().enumerate() {
            all.push((
                format!("spec.tcp[{i}].route[{k}].destination"),
                &d.destination,
            ));
        }
    }
    for (i, route) in vs.tls.iter().enumerate() {
        for (k, d) in route.route.iter().enumerate() {
            all.push((
                format!("spec.tls[{i}].route[{k}].destination"),
                &d.destination,
            ));
        }
    }
    all
}

struct SubsetLookup<'a> {
    by_host: &'a HashMap<String, Vec<(&'a Resource, &'a DestinationRule)>>,
    wildcards: &'a [(String, &'a Resource, &'a DestinationRule)],
}

impl SubsetLookup<'_> {
    /// A route to a subset needs a DestinationRule, visible from the route's namespace, that
    /// defines it. Istio looks in the client's namespace, the service's and the root.
    fn check(&self, vs: &Resource, destination: &Destination, path: &str, report: &mut Report<'_>) {
        let Some(subset) = &destination.subset else {
            return;
        };
        let host = fqdn(&destination.host, vs.namespace());
        let service_namespace = crate::hosts::service_namespace(&host);
        let visible = |rule: &Resource| {
            let ns = rule.namespace();
            ns == vs.namespace()
                || Some(ns) == service_namespace
                || ns == ROOT_NAMESPACE
                || rule_exported(rule)
        };
        let rules: Vec<(&Resource, &DestinationRule)> = self
            .by_host
            .get(&host)
            .into_iter()
            .flatten()
            .copied()
            .chain(
                self.wildcards
                    .iter()
                    .filter(|(pattern, ..)| covers(pattern, &host))
                    .map(|(_, r, d)| (*r, *d)),
            )
            .filter(|(rule, _)| visible(rule))
            .collect();
        if rules.is_empty() {
            report.at(
                &codes::SUBSET_WITHOUT_DESTINATION_RULE,
                &format!("{path}.subset"),
                format!(
                    "subset {subset:?} of {host} is not defined by any DestinationRule in these files; unless one exists elsewhere, requests fail with 503 (NC)"
                ),
            );
            return;
        }
        if rules
            .iter()
            .any(|(_, dr)| dr.subsets.iter().any(|s| &s.name == subset))
        {
            return;
        }
        let defined: Vec<&str> = rules
            .iter()
            .flat_map(|(_, dr)| dr.subsets.iter().map(|s| s.name.as_str()))
            .collect();
        let owners: Vec<String> = rules.iter().map(|(r, _)| describe(r)).collect();
        report.at(
            &codes::UNDEFINED_SUBSET,
            &format!("{path}.subset"),
            format!(
                "subset {subset:?} of {host} is not defined by {} (it defines {}); requests routed here fail with 503 (NC) — add the subset or fix the name",
                owners.join(", "),
                if defined.is_empty() { "no subsets".to_string() } else { defined.join(", ") }
            ),
        );
    }
}

/// Whether a DestinationRule is exported beyond its namespace (no `exportTo`, or `*`).
fn rule_exported(rule: &Resource) -> bool {
    match &rule.spec {
        Spec::DestinationRule(dr) => {
            dr.export_to.is_empty() || dr.export_to.iter().any(|e| e == "*")
        }
        _ => false,
    }
}

fn is_catch_all_string(m: &Option<StringMatch>) -> bool {
    match m {
        None => true,
        Some(m) => {
            m.prefix.as_deref() == Some("/")
                || matches!(m.regex.as_deref(), Some("*" | ".*")) && m.exact.is_none()
        }
    }
}

/// A match that every request satisfies.
fn is_catch_all_match(m: &HttpMatchRequest) -> bool {
    is_catch_all_string(&m.uri)
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.gateways.is_empty()
        && m.source_namespace.is_none()
}

/// Rules after one that matches every request never run (Istio's IST0130).
fn check_unreachable(vs: &VirtualService, report: &mut Report<'_>) {
    let catch_all = vs
        .http
        .iter()
        .position(|rule| rule.matches.is_empty() || rule.matches.iter().any(is_catch_all_match));
    if let Some(first) = catch_all {
        for later in first + 1..vs.http.len() {
            report.at(
                &codes::UNREACHABLE_RULE,
                &format!("spec.http[{later}]"),
                format!("this rule can never match: rule spec.http[{first}] before it matches every request; move catch-all rules last"),
            );
        }
    }
    let tcp_catch_all = vs.tcp.iter().position(|rule| rule.matches.is_empty());
    if let Some(first) = tcp_catch_all {
        for later in first + 1..vs.tcp.len() {
            report.at(
                &codes::UNREACHABLE_RULE,
                &format!("spec.tcp[{later}]"),
                format!("this rule can never match: rule spec.tcp[{first}] before it has no match and takes every connection"),
            );
        }
    }
}

/// Routing on `@request.auth.claims[...]` needs a RequestAuthentication to verify the token.
fn check_claim_routes(
    vs: &VirtualService,
    resource: &Resource,
    authn_namespaces: &[&str],
    report: &mut Report<'_>,
) {
    let covered = authn_namespaces
        .iter()
        .any(|ns| *ns == resource.namespace() || *ns == ROOT_NAMESPACE);
    if covered {
        return;
    }
    for (i, rule) in vs.http.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            for (field, headers) in [
                ("headers", &m.headers),
                ("withoutHeaders", &m.without_headers),
            ] {
                for name in headers
                    .keys()
                    .filter(|n| n.starts_with("@request.auth.claims"))
                {
                    report.at(
                        &codes::JWT_CLAIM_ROUTE_WITHOUT_AUTHN,
                        &format!("spec.http[{i}].match[{j}].{field}.{name}"),
                        "routing on a JWT claim needs a RequestAuthentication in this namespace (or the root namespace) to verify the token; without one the claim is never present",
                    );
                }
            }
        }
    }
}
