//! PeerAuthentication, AuthorizationPolicy and RequestAuthentication rules.

use super::Report;
use super::rules::{
    check_addresses, check_duration, check_header_name, check_port, check_selector,
};
use crate::codes;
use crate::meta::{PolicyTargetReference, WorkloadSelector};
use crate::security::authorization_policy::{Action, AuthorizationPolicy, Operation, Source};
use crate::security::peer_authentication::PeerAuthentication;
use crate::security::request_authentication::RequestAuthentication;

pub(crate) fn validate_peer_authentication(pa: &PeerAuthentication, report: &mut Report<'_>) {
    check_selector(&pa.selector, "spec.selector", report);
    let has_selector = pa
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !pa.port_level_mtls.is_empty() && !has_selector {
        report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.portLevelMtls",
            "portLevelMtls needs a selector: ports are workload ports, so the policy must name its workloads",
        );
    }
    for &port in pa.port_level_mtls.keys() {
        check_port(port, &format!("spec.portLevelMtls.{port}"), report);
    }
}

fn check_targets(
    selector: &Option<WorkloadSelector>,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    report: &mut Report<'_>,
) {
    check_selector(selector, "spec.selector", report);
    if selector.is_some() && (target_ref.is_some() || !target_refs.is_empty()) {
        report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.selector",
            "use selector or targetRef(s), not both",
        );
    }
    if target_ref.is_some() && !target_refs.is_empty() {
        report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.targetRefs",
            "use targetRef or targetRefs, not both",
        );
    }
    let all = target_ref.iter().chain(target_refs).enumerate();
    for (i, target) in all {
        if target.kind.is_empty() || target.name.is_empty() {
            let path = if target_ref.is_some() {
                "spec.targetRef".to_string()
            } else {
                format!("spec.targetRefs[{i}]")
            };
            report.at(&codes::REQUIRED, &path, "a targetRef needs kind and name");
        }
    }
}

/// Attribute keys `when` conditions accept; `[...]` parts are checked separately.
const CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "destination.ip",
    "destination.port",
    "connection.sni",
];

pub(crate) fn validate_authorization_policy(ap: &AuthorizationPolicy, report: &mut Report<'_>) {
    check_targets(&ap.selector, &ap.target_ref, &ap.target_refs, report);
    let action = ap.action.unwrap_or(Action::Allow);
    match (action, &ap.provider) {
        (Action::Custom, None) => report.at(
            &codes::REQUIRED,
            "spec.action",
            "a CUSTOM policy needs provider.name, the external authorizer to ask",
        ),
        (Action::Custom, Some(provider)) if provider.name.is_empty() => report.at(
            &codes::REQUIRED,
            "spec.provider",
            "provider.name is required",
        ),
        (Action::Allow | Action::Deny | Action::Audit, Some(_)) => report.at(
            &codes::CONFLICTING_FIELDS,
            "spec.provider",
            "provider is only used with action CUSTOM",
        ),
        _ => {}
    }
    if ap.rules.is_empty() && action == Action::Deny {
        report.at(
            &codes::SUSPICIOUS,
            "spec",
            "a DENY policy with no rules matches nothing and denies nothing; add rules (rules: [{}] denies everything)",
        );
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            check_source(&from.source, &format!("{path}.from[{j}].source"), report);
        }
        for (j, to) in rule.to.iter().enumerate() {
            check_operation(&to.operation, &format!("{path}.to[{j}].operation"), report);
        }
        for (j, condition) in rule.when.iter().enumerate() {
            let at = format!("{path}.when[{j}]");
            if condition.key.is_empty() {
                report.at(&codes::REQUIRED, &at, "a condition needs a key");
            } else if !is_condition_key(&condition.key) {
                report.at(
                    &codes::INVALID_AUTHZ,
                    &format!("{at}.key"),
                    format!("unknown attribute {:?}; use request.headers[name], source.ip, source.namespace, request.auth.claims[name], destination.port, …", condition.key),
                );
            }
            if condition.values.is_empty() && condition.not_values.is_empty() {
                report.at(
                    &codes::REQUIRED,
                    &at,
                    "a condition needs values or notValues",
                );
            }
            if matches!(
                condition.key.as_str(),
                "source.ip" | "remote.ip" | "destination.ip"
            ) {
                check_addresses(&condition.values, &format!("{at}.values"), report);
                check_addresses(&condition.not_values, &format!("{at}.notValues"), report);
            }
            if condition.key == "destination.port" {
                for (k, value) in condition.values.iter().enumerate() {
                    match value.parse::<u32>() {
                        Ok(port) => check_port(port, &format!("{at}.values[{k}]"), report),
                        Err(_) => report.at(
                            &codes::INVALID_PORT,
                            &format!("{at}.values[{k}]"),
                            format!("{value:?} is not a port number"),
                        ),
                    }
                }
            }
        }
    }
}

fn is_condition_key(key: &str) -> bool {
    if CONDITION_KEYS.contains(&key) || key.starts_with("experimental.envoy.filters.") {
        return true;
    }
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() > 2 && rest.ends_with(']') && !rest[1..rest.len() - 1].is_empty()
        }) && key[prefix.len()..].starts_with('[')
    };
    bracketed("request.headers") || bracketed("request.auth.claims")
}

/// Every authorization string is exact, `prefix*`, `*suffix` or `*`: a `*` elsewhere never
/// matches what it seems to.
fn check_values(values: &[String], path: &str, report: &mut Report<'_>) {
    for (k, value) in values.iter().enumerate() {
        let inner = value.strip_prefix('*').unwrap_or(value);
        let inner = inner.strip_suffix('*').unwrap_or(inner);
        if inner.contains('*') || value == "**" {
            report.at(
                &codes::INVALID_AUTHZ,
                &format!("{path}[{k}]"),
                format!("{value:?} has a '*' in the middle; only exact, prefix*, *suffix or * are supported"),
            );
        }
    }
}

fn check_source(source: &Source, path: &str, report: &mut Report<'_>) {
    let fields: [(&str, &Vec<String>); 14] = [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
        ("serviceAccounts", &source.service_accounts),
        ("notServiceAccounts", &source.not_service_accounts),
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
        ("trustDomains", &source.trust_domains),
        ("notTrustDomains", &source.not_trust_domains),
    ];
    if fields.iter().all(|(_, values)| values.is_empty()) {
        report.at(
            &codes::REQUIRED,
            path,
            "the source is empty; give at least one field, or drop `from` to match any source",
        );
    }
    for (field, values) in &fields[..8] {
        check_values(values, &format!("{path}.{field}"), report);
    }
    for (field, values) in &fields[8..12] {
        check_addresses(values, &format!("{path}.{field}"), report);
    }
    for (k, principal) in source
        .principals
        .iter()
        .chain(&source.not_principals)
        .enumerate()
    {
        if principal.starts_with("spiffe://") {
            let field = if k < source.principals.len() {
                "principals"
            } else {
                "notPrincipals"
            };
            let index = if k < source.principals.len() {
                k
            } else {
                k - source.principals.len()
            };
            report.at(
                &codes::SUSPICIOUS,
                &format!("{path}.{field}[{index}]"),
                format!(
                    "principals are written without spiffe:// ({:?})",
                    principal.trim_start_matches("spiffe://")
                ),
            );
        }
    }
    let accounts = !source.service_accounts.is_empty() || !source.not_service_accounts.is_empty();
    if accounts && (!source.principals.is_empty() || !source.namespaces.is_empty()) {
        report.at(
            &codes::CONFLICTING_FIELDS,
            path,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
    for (k, account) in source.service_accounts.iter().enumerate() {
        let valid = account
            .split_once('/')
            .is_some_and(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'));
        if !valid || account.contains('*') {
            report.at(
                &codes::INVALID_AUTHZ,
                &format!("{path}.serviceAccounts[{k}]"),
                format!("{account:?} must be namespace/serviceAccount, without wildcards"),
            );
        }
    }
}

fn check_operation(operation: &Operation, path: &str, report: &mut Report<'_>) {
    let fields: [(&str, &Vec<String>); 8] = [
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("ports", &operation.ports),
        ("notPorts", &operation.not_ports),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ];
    if fields.iter().all(|(_, values)| values.is_empty()) {
        report.at(
            &codes::REQUIRED,
            path,
            "the operation is empty; give at least one field, or drop `to` to match any operation",
        );
    }
    for (field, values) in fields {
        let at = format!("{path}.{field}");
        match field {
            "ports" | "notPorts" => {
                for (k, port) in values.iter().enumerate() {
                    match port.parse::<u32>() {
                        Ok(number) => check_port(number, &format!("{at}[{k}]"), report),
                        Err(_) => report.at(
                            &codes::INVALID_PORT,
                            &format!("{at}[{k}]"),
                            format!("{port:?} is not a port number"),
                        ),
                    }
                }
            }
            "methods" | "notMethods" => {
                check_values(values, &at, report);
                for (k, method) in values.iter().enumerate() {
                    if method.bytes().any(|b| b.is_ascii_lowercase()) {
                        report.at(
                            &codes::SUSPICIOUS,
                            &format!("{at}[{k}]"),
                            format!("method {method:?} is not upper case, so it never matches a request; write {:?}", method.to_ascii_uppercase()),
                        );
                    }
                }
            }
            "paths" | "notPaths" => {
                for (k, p) in values.iter().enumerate() {
                    if !p.starts_with('/') && !p.starts_with('*') {
                        report.at(
                            &codes::SUSPICIOUS,
                            &format!("{at}[{k}]"),
                            format!("path {p:?} does not start with '/' so it never matches a request path"),
                        );
                    }
                    if p.contains('{') || p.contains('}') {
                        if let Err(why) = check_path_template(p) {
                            report.at(&codes::INVALID_AUTHZ, &format!("{at}[{k}]"), why);
                        }
                    } else {
                        check_values(std::slice::from_ref(p), &format!("{at}[{k}]"), report);
                    }
                }
            }
            _ => check_values(values, &at, report),
        }
    }
}

/// Istio's URI templates (1.23+): `{*}` is one path segment, `{**}` any number and the last
/// operator; each is a whole segment, and a template path has no other `*`.
fn check_path_template(path: &str) -> Result<(), String> {
    let mut any_depth_seen = false;
    for segment in path.split('/') {
        let operator = match segment {
            "{*}" => Some(false),
            "{**}" => Some(true),
            _ if segment.contains(['{', '}', '*']) => {
                return Err(format!(
                    "path template {path:?}: {segment:?} is not a whole segment {{*}} or {{**}} (no other operators, no '*' in a template)"
                ));
            }
            _ => None,
        };
        if let Some(any_depth) = operator {
            if any_depth_seen {
                return Err(format!(
                    "path template {path:?}: {{**}} must be the last operator"
                ));
            }
            any_depth_seen = any_depth;
        }
    }
    Ok(())
}

pub(crate) fn validate_request_authentication(ra: &RequestAuthentication, report: &mut Report<'_>) {
    check_targets(&ra.selector, &ra.target_ref, &ra.target_refs, report);
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let path = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            report.at(&codes::REQUIRED, &path, "a JWT rule needs issuer");
        }
        if rule.jwks.is_some() && rule.jwks_uri.is_some() {
            report.at(
                &codes::CONFLICTING_FIELDS,
                &path,
                "give jwks or jwksUri, not both",
            );
        }
        if let Some(uri) = &rule.jwks_uri
            && !(uri.starts_with("https://") || uri.starts_with("http://"))
        {
            report.at(
                &codes::INVALID_ADDRESS,
                &format!("{path}.jwksUri"),
                format!("jwksUri {uri:?} must be an http:// or https:// URL"),
            );
        }
        for (k, header) in rule.from_headers.iter().enumerate() {
            check_header_name(
                &header.name,
                &format!("{path}.fromHeaders[{k}].name"),
                false,
                report,
            );
        }
        for (k, claim) in rule.output_claim_to_headers.iter().enumerate() {
            check_header_name(
                &claim.header,
                &format!("{path}.outputClaimToHeaders[{k}].header"),
                false,
                report,
            );
            if claim.claim.is_empty() {
                report.at(
                    &codes::REQUIRED,
                    &format!("{path}.outputClaimToHeaders[{k}]"),
                    "claim is required",
                );
            }
        }
        check_duration(&rule.timeout, &format!("{path}.timeout"), report);
    }
}
