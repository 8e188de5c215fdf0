//! `AuthorizationPolicy`: which requests a workload accepts.
//!
//! Semantics Weft keeps from Istio: CUSTOM policies are asked first, then any matching DENY
//! refuses, then — if the workload has any ALLOW policy — a request is let in only when one
//! matches. An ALLOW policy with no rules matches nothing (it denies everything); `rules: [{}]`
//! matches everything. A rule matches when one `from`, one `to` and every `when` match.

use serde::Deserialize;

use crate::meta::{PolicyTargetReference, WorkloadSelector};

/// The `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicy {
    /// Workloads this applies to; the whole namespace (or mesh) when absent.
    pub selector: Option<WorkloadSelector>,
    /// A gateway or service this applies to, instead of `selector`.
    pub target_ref: Option<PolicyTargetReference>,
    /// Several targets, instead of `selector`.
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules; none means the policy matches nothing.
    pub rules: Vec<Rule>,
    /// What a match means; `ALLOW` when absent.
    pub action: Option<Action>,
    /// The external authorizer, for `CUSTOM`.
    pub provider: Option<ExtensionProvider>,
}

/// `AuthorizationPolicy.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Let matching requests in.
    Allow,
    /// Refuse matching requests.
    Deny,
    /// Mark matching requests for audit; never changes the decision.
    Audit,
    /// Ask an external authorizer.
    Custom,
}

/// `AuthorizationPolicy.ExtensionProvider`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExtensionProvider {
    /// Name of a provider in the mesh configuration.
    pub name: String,
}

/// `Rule`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    /// Sources, OR'ed; any source when empty.
    pub from: Vec<RuleFrom>,
    /// Operations, OR'ed; any operation when empty.
    pub to: Vec<RuleTo>,
    /// Conditions, AND'ed.
    pub when: Vec<Condition>,
}

/// `Rule.From`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleFrom {
    /// The source.
    pub source: Source,
}

/// `Rule.To`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RuleTo {
    /// The operation.
    pub operation: Operation,
}

/// `Source`: fields AND'ed, values of one field OR'ed. Each value is exact, `prefix*`,
/// `*suffix` or `*` (present).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    /// Peer identities, `<trust-domain>/ns/<ns>/sa/<sa>`.
    pub principals: Vec<String>,
    /// Negated `principals`.
    pub not_principals: Vec<String>,
    /// Request identities from JWTs, `<iss>/<sub>`.
    pub request_principals: Vec<String>,
    /// Negated `requestPrincipals`.
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    pub namespaces: Vec<String>,
    /// Negated `namespaces`.
    pub not_namespaces: Vec<String>,
    /// Peer service accounts, `<ns>/<sa>`.
    pub service_accounts: Vec<String>,
    /// Negated `serviceAccounts`.
    pub not_service_accounts: Vec<String>,
    /// Peer IPs or CIDRs.
    pub ip_blocks: Vec<String>,
    /// Negated `ipBlocks`.
    pub not_ip_blocks: Vec<String>,
    /// Original client IPs or CIDRs (from X-Forwarded-For).
    pub remote_ip_blocks: Vec<String>,
    /// Negated `remoteIpBlocks`.
    pub not_remote_ip_blocks: Vec<String>,
    /// Peer trust domains.
    pub trust_domains: Vec<String>,
    /// Negated `trustDomains`.
    pub not_trust_domains: Vec<String>,
}

/// `Operation`: fields AND'ed, values of one field OR'ed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    /// Hosts (HTTP only), case-insensitive.
    pub hosts: Vec<String>,
    /// Negated `hosts`.
    pub not_hosts: Vec<String>,
    /// Workload ports, as strings.
    pub ports: Vec<String>,
    /// Negated `ports`.
    pub not_ports: Vec<String>,
    /// Methods (HTTP only), upper case.
    pub methods: Vec<String>,
    /// Negated `methods`.
    pub not_methods: Vec<String>,
    /// Paths (HTTP only), normalized.
    pub paths: Vec<String>,
    /// Negated `paths`.
    pub not_paths: Vec<String>,
}

/// `Condition`: `key` must have one of `values` and none of `notValues`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// Attribute name, such as `request.headers[x-token]` or `source.ip`.
    pub key: String,
    /// Accepted values.
    pub values: Vec<String>,
    /// Refused values.
    pub not_values: Vec<String>,
}
