//! Inbound security policy for one workload: its mTLS mode per port, from PeerAuthentication,
//! and its Envoy RBAC filters, from AuthorizationPolicy.
//!
//! Istio's rules, kept here:
//! * **mTLS mode**: [`crate::translate::policy::mtls_mode`], Istio's
//!   `ComposePeerAuthentication`.
//! * **authorization**: policies of the workload's namespace and of the root namespace
//!   apply, selector-less or selecting the workload's labels. DENY policies are checked
//!   before ALLOW policies; a workload with no ALLOW policy allows everything, and one with
//!   ALLOW policies allows only what one of them matches — an ALLOW policy without rules
//!   matches nothing, so it denies everything. A rule matches when one `from`, one `to` and
//!   every `when` match. AUDIT does not change decisions and is left out. CUSTOM policies
//!   need an external authorizer Weft cannot ask yet, so, as Istio does when a provider is
//!   missing, what their rules match is denied. Policies annotated `istio.io/dry-run: "true"`
//!   go to the filters' shadow rules: evaluated and logged, never enforced.
//! * **paths**: `{*}` (one segment) and `{**}` (any number, last) make a path a URI
//!   template, sent as Envoy's `*` and `**`; other paths are exact, `prefix*`, `*suffix`.
//! * **tokens**: `requestPrincipals` and the `request.auth.*` conditions read what the JWT
//!   filter verified ([`super::jwt`]), as Istio's `istio_authn` metadata; a request without a
//!   token has none of them.
//! * **fields that cannot apply** (HTTP attributes and tokens on a TCP port, unknown
//!   attributes): in an ALLOW rule the rule is dropped (it allows less), in a DENY rule the
//!   field is ignored (it denies more) — never the other way round.

use std::collections::BTreeMap;

use weft_api::security::authorization_policy::{
    Action, AuthorizationPolicy, Condition, Operation, Rule, Source,
};
use weft_xds::envoy::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use weft_xds::envoy::envoy::config::rbac::v3::{
    MetadataSource, Permission, Policy, Principal, Rbac, SourcedMetadata, permission, principal,
    rbac::Action as RbacAction,
};
use weft_xds::envoy::envoy::config::route::v3::{
    HeaderMatcher, header_matcher::HeaderMatchSpecifier,
};
use weft_xds::envoy::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use weft_xds::envoy::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use weft_xds::envoy::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher, string_matcher::MatchPattern,
};
use weft_xds::envoy::google::protobuf::UInt32Value;
use weft_xds::types::{pack, proto_map};

use super::jwt::{auth_metadata, bracketed};
use crate::model::MeshSnapshot;
pub(crate) use crate::translate::policy::{Workload, mtls_mode};

/// The RBAC filter configurations of a workload: DENY first, then ALLOW, each with the
/// dry-run policies of its action as shadow rules. `None` where no filter is needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct InboundRbac {
    pub deny: Option<Rbac>,
    pub allow: Option<Rbac>,
    pub dry_run_deny: Option<Rbac>,
    pub dry_run_allow: Option<Rbac>,
}

impl InboundRbac {
    /// One RBAC filter per action that has policies: its enforced rules, its dry-run ones
    /// as shadow rules, and the shadow rules' stat prefix (Istio's).
    pub(crate) fn filters(&self) -> Vec<(Option<Rbac>, Option<Rbac>, &'static str)> {
        [
            (&self.deny, &self.dry_run_deny, "istio_dry_run_deny_"),
            (&self.allow, &self.dry_run_allow, "istio_dry_run_allow_"),
        ]
        .into_iter()
        .filter(|(rules, shadow, _)| rules.is_some() || shadow.is_some())
        .map(|(rules, shadow, prefix)| (rules.clone(), shadow.clone(), prefix))
        .collect()
    }
}

/// The HTTP RBAC filters of `rbac`, DENY first, for a connection manager's filter list.
pub(crate) fn http_rbac_filters(rbac: &InboundRbac) -> Vec<HttpFilter> {
    rbac.filters()
        .into_iter()
        .map(|(rules, shadow, prefix)| HttpFilter {
            name: "envoy.filters.http.rbac".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(&HttpRbac {
                rules,
                shadow_rules: shadow,
                shadow_rules_stat_prefix: prefix.to_string(),
                ..HttpRbac::default()
            }))),
            ..HttpFilter::default()
        })
        .collect()
}

/// The annotation that makes a policy a dry run.
const DRY_RUN: &str = "istio.io/dry-run";

/// The policies of one action, by name; `None` until a policy of the action applies (an
/// ALLOW set that exists but is empty allows nothing).
#[derive(Default)]
struct Rules(Option<BTreeMap<String, Policy>>);

impl Rules {
    fn into_rbac(self, action: RbacAction) -> Option<Rbac> {
        self.0.map(|policies| Rbac {
            action: action as i32,
            policies: proto_map(policies),
            ..Rbac::default()
        })
    }
}

/// Where a chain's requests are for: the workload's own port (the application's, which
/// `ports` and `destination.port` name) and the port the proxy sees them arrive on (its
/// inbound listener's, where nothing intercepts).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainPort {
    pub workload: u32,
    pub listener: u32,
}

/// Builds the workload's RBAC for one port (`port`; `None` where policies name the
/// listener's own ports, at a gateway); `http` says whether HTTP attributes can apply.
pub(crate) fn inbound_rbac(
    snapshot: &MeshSnapshot,
    workload: &Workload<'_>,
    trust_domain: &str,
    http: bool,
    port: Option<ChainPort>,
) -> InboundRbac {
    let applies = |resource: &weft_api::Resource, ap: &AuthorizationPolicy| {
        let targeted = ap.target_ref.is_some() || !ap.target_refs.is_empty();
        workload.selected_by(resource.namespace(), ap.selector.as_ref(), targeted)
    };
    let (mut deny, mut allow) = (Rules::default(), Rules::default());
    let (mut dry_run_deny, mut dry_run_allow) = (Rules::default(), Rules::default());
    for (resource, ap) in snapshot
        .authorization_policies
        .iter()
        .filter(|(r, ap)| applies(r, ap))
    {
        let dry_run = resource
            .metadata
            .annotations
            .get(DRY_RUN)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        // CUSTOM asks an external authorizer Weft cannot reach: what its rules match is
        // denied, as Istio does when the provider is missing.
        let (rules, deny_rule) = match (ap.action.unwrap_or(Action::Allow), dry_run) {
            (Action::Deny | Action::Custom, false) => (&mut deny, true),
            (Action::Deny | Action::Custom, true) => (&mut dry_run_deny, true),
            (Action::Allow, false) => (&mut allow, false),
            (Action::Allow, true) => (&mut dry_run_allow, false),
            (Action::Audit, _) => continue,
        };
        let policies = rules.0.get_or_insert_with(BTreeMap::new);
        let context = Context {
            http,
            deny: deny_rule,
            trust_domain,
            port,
        };
        for (index, rule) in ap.rules.iter().enumerate() {
            if let Some(policy) = context.rule(rule) {
                let name = format!(
                    "ns[{}]-policy[{}]-rule[{index}]",
                    resource.namespace(),
                    resource.metadata.name
                );
                policies.insert(name, policy);
            }
        }
    }
    // A DENY filter with no policies denies nothing: left out.
    let some = |rules: Rules| Rules(rules.0.filter(|p| !p.is_empty()));
    InboundRbac {
        deny: some(deny).into_rbac(RbacAction::Deny),
        // With any ALLOW policy the filter must exist, even empty: an empty ALLOW list denies all.
        allow: allow.into_rbac(RbacAction::Allow),
        dry_run_deny: some(dry_run_deny).into_rbac(RbacAction::Deny),
        dry_run_allow: dry_run_allow.into_rbac(RbacAction::Allow),
    }
}

struct Context<'a> {
    http: bool,
    deny: bool,
    trust_domain: &'a str,
    port: Option<ChainPort>,
}

/// What to do with a field that cannot be enforced: in a DENY rule, ignore it (deny more);
/// in an ALLOW rule, make the rule never match (allow less).
enum Unenforceable {
    Ignore,
    NeverMatch,
}

impl Context<'_> {
    fn unenforceable(&self) -> Unenforceable {
        if self.deny {
            Unenforceable::Ignore
        } else {
            Unenforceable::NeverMatch
        }
    }

    fn rule(&self, rule: &Rule) -> Option<Policy> {
        let mut principals: Vec<Principal> = Vec::new();
        if !rule.from.is_empty() {
            let sources: Vec<Principal> = rule
                .from
                .iter()
                .filter_map(|f| self.source(&f.source))
                .collect();
            if sources.is_empty() {
                return None;
            }
            principals.push(or_ids(sources));
        }
        let mut permissions: Vec<Permission> = Vec::new();
        if !rule.to.is_empty() {
            let operations: Vec<Permission> = rule
                .to
                .iter()
                .filter_map(|t| self.operation(&t.operation))
                .collect();
            if operations.is_empty() {
                return None;
            }
            permissions.push(or_rules(operations));
        }
        for condition in &rule.when {
            match self.condition(condition)? {
                Some(Clause::Principal(p)) => principals.push(p),
                Some(Clause::Permission(p)) => permissions.push(p),
                None => {}
            }
        }
        Some(Policy {
            permissions: vec![and_rules(permissions)],
            principals: vec![and_ids(principals)],
            ..Policy::default()
        })
    }

    /// A source as a principal; `None` when it can never match.
    fn source(&self, source: &Source) -> Option<Principal> {
        let mut all = Vec::new();
        let spiffe = |value: &str| self.spiffe_matcher(value);
        let authenticated = |matcher: StringMatcher| Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: Some(matcher),
                },
            )),
        };
        let mut field = |values: &[String], negated: bool, make: &dyn Fn(&str) -> Principal| {
            if values.is_empty() {
                return;
            }
            let any = or_ids(values.iter().map(|v| make(v)).collect());
            all.push(if negated { not_id(any) } else { any });
        };
        field(&source.principals, false, &|v| authenticated(spiffe(v)));
        field(&source.not_principals, true, &|v| authenticated(spiffe(v)));
        field(&source.namespaces, false, &|v| {
            authenticated(self.namespace_matcher(v))
        });
        field(&source.not_namespaces, true, &|v| {
            authenticated(self.namespace_matcher(v))
        });
        field(&source.service_accounts, false, &|v| {
            authenticated(self.service_account_matcher(v))
        });
        field(&source.not_service_accounts, true, &|v| {
            authenticated(self.service_account_matcher(v))
        });
        field(&source.trust_domains, false, &|v| {
            authenticated(prefix(&format!("spiffe://{v}/")))
        });
        field(&source.not_trust_domains, true, &|v| {
            authenticated(prefix(&format!("spiffe://{v}/")))
        });
        let ip = |v: &str| principal::Identifier::DirectRemoteIp(cidr(v));
        field(&source.ip_blocks, false, &|v| Principal {
            identifier: Some(ip(v)),
        });
        field(&source.not_ip_blocks, true, &|v| Principal {
            identifier: Some(ip(v)),
        });
        let remote = |v: &str| principal::Identifier::RemoteIp(cidr(v));
        field(&source.remote_ip_blocks, false, &|v| Principal {
            identifier: Some(remote(v)),
        });
        field(&source.not_remote_ip_blocks, true, &|v| Principal {
            identifier: Some(remote(v)),
        });
        let has_request_principals =
            !source.request_principals.is_empty() || !source.not_request_principals.is_empty();
        if self.http {
            let request_principal = |v: &str| auth_principal(&["request.auth.principal"], v);
            field(&source.request_principals, false, &request_principal);
            field(&source.not_request_principals, true, &request_principal);
        } else if has_request_principals {
            // A TCP connection carries no token.
            match self.unenforceable() {
                Unenforceable::Ignore => {}
                Unenforceable::NeverMatch => return None,
            }
        }
        Some(and_ids(all))
    }

    /// An operation as a permission; `None` when it can never match.
    fn operation(&self, operation: &Operation) -> Option<Permission> {
        let mut all = Vec::new();
        let http_fields = [
            &operation.hosts,
            &operation.not_hosts,
            &operation.methods,
            &operation.not_methods,
            &operation.paths,
            &operation.not_paths,
        ];
        if !self.http && http_fields.iter().any(|f| !f.is_empty()) {
            match self.unenforceable() {
                Unenforceable::NeverMatch => return None,
                Unenforceable::Ignore => {}
            }
        }
        let mut field = |values: &[String],
                         negated: bool,
                         make: &dyn Fn(&str) -> Option<Permission>|
         -> Option<()> {
            if values.is_empty() {
                return Some(());
            }
            let any = or_rules(values.iter().map(|v| make(v)).collect::<Option<Vec<_>>>()?);
            all.push(if negated { not_rule(any) } else { any });
            Some(())
        };
        let port = |v: &str| self.destination_port(v);
        field(&operation.ports, false, &port)?;
        field(&operation.not_ports, true, &port)?;
        if self.http {
            let header = |name: &'static str| {
                move |v: &str| Some(rule(permission::Rule::Header(header_matcher(name, v))))
            };
            field(&operation.hosts, false, &header(":authority"))?;
            field(&operation.not_hosts, true, &header(":authority"))?;
            field(&operation.methods, false, &header(":method"))?;
            field(&operation.not_methods, true, &header(":method"))?;
            let path = |v: &str| Some(path_permission(v));
            field(&operation.paths, false, &path)?;
            field(&operation.not_paths, true, &path)?;
        }
        Some(and_rules(all))
    }

    /// A `when` condition; `Some(None)` to ignore it, `None` when the rule can never match.
    fn condition(&self, condition: &Condition) -> Option<Option<Clause>> {
        let key = condition.key.as_str();
        let principal_clause = |make: &dyn Fn(&str) -> Principal| {
            let mut parts = Vec::new();
            let positive: Vec<Principal> = condition.values.iter().map(|v| make(v)).collect();
            if !positive.is_empty() {
                parts.push(or_ids(positive));
            }
            let negative: Vec<Principal> = condition.not_values.iter().map(|v| make(v)).collect();
            if !negative.is_empty() {
                parts.push(not_id(or_ids(negative)));
            }
            Clause::Principal(and_ids(parts))
        };
        let permission_clause = |make: &dyn Fn(&str) -> Option<Permission>| -> Option<Clause> {
            let mut parts = Vec::new();
            let positive = condition
                .values
                .iter()
                .map(|v| make(v))
                .collect::<Option<Vec<_>>>()?;
            if !positive.is_empty() {
                parts.push(or_rules(positive));
            }
            let negative = condition
                .not_values
                .iter()
                .map(|v| make(v))
                .collect::<Option<Vec<_>>>()?;
            if !negative.is_empty() {
                parts.push(not_rule(or_rules(negative)));
            }
            Some(Clause::Permission(and_rules(parts)))
        };
        let authenticated = |matcher: StringMatcher| Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: Some(matcher),
                },
            )),
        };
        let clause = match key {
            "source.ip" => principal_clause(&|v| Principal {
                identifier: Some(principal::Identifier::DirectRemoteIp(cidr(v))),
            }),
            "remote.ip" => principal_clause(&|v| Principal {
                identifier: Some(principal::Identifier::RemoteIp(cidr(v))),
            }),
            "source.namespace" => principal_clause(&|v| authenticated(self.namespace_matcher(v))),
            "source.principal" => principal_clause(&|v| authenticated(self.spiffe_matcher(v))),
            "source.serviceAccount" => {
                principal_clause(&|v| authenticated(self.service_account_matcher(v)))
            }
            "source.trustDomain" => {
                principal_clause(&|v| authenticated(prefix(&format!("spiffe://{v}/"))))
            }
            "destination.port" => permission_clause(&|v| self.destination_port(v))?,
            "destination.ip" => {
                permission_clause(&|v| Some(rule(permission::Rule::DestinationIp(cidr(v)))))?
            }
            "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter"
                if self.http =>
            {
                principal_clause(&|v| auth_principal(&[key], v))
            }
            _ if self.http && key.starts_with("request.auth.claims[") => {
                let Some(path) = bracketed(&key["request.auth.claims".len()..]) else {
                    return match self.unenforceable() {
                        Unenforceable::Ignore => Some(None),
                        Unenforceable::NeverMatch => None,
                    };
                };
                let mut full = vec!["request.auth.claims"];
                full.extend(path.iter().map(String::as_str));
                principal_clause(&|v| auth_principal(&full, v))
            }
            _ if self.http && key.starts_with("request.headers[") && key.ends_with(']') => {
                let name = key["request.headers[".len()..key.len() - 1].to_ascii_lowercase();
                permission_clause(&|v| {
                    Some(rule(permission::Rule::Header(header_matcher(&name, v))))
                })?
            }
            _ => {
                return match self.unenforceable() {
                    Unenforceable::Ignore => Some(None),
                    Unenforceable::NeverMatch => None,
                };
            }
        };
        Some(Some(clause))
    }

    /// A port condition: the workload's port as the listener the proxy sees the request on,
    /// any other as written (which this chain's requests never arrive on).
    fn destination_port(&self, value: &str) -> Option<Permission> {
        let number: u32 = value.parse().ok()?;
        let number = match self.port {
            Some(port) if number == port.workload => port.listener,
            _ => number,
        };
        Some(rule(permission::Rule::DestinationPort(number)))
    }

    /// Istio principals are written `<trust-domain>/ns/<ns>/sa/<sa>`; certificates carry them
    /// as `spiffe://…`.
    fn spiffe_matcher(&self, value: &str) -> StringMatcher {
        match value.strip_prefix('*') {
            // `*` and `*suffix` look at the end of the name; the scheme does not matter.
            Some(_) => value_matcher(value),
            None => value_matcher(&format!("spiffe://{value}")),
        }
    }

    fn namespace_matcher(&self, value: &str) -> StringMatcher {
        let namespace = if value == "*" {
            "[^/]+".to_string()
        } else {
            glob_to_regex(value)
        };
        regex(&format!("spiffe://[^/]+/ns/{namespace}/sa/[^/]+"))
    }

    fn service_account_matcher(&self, value: &str) -> StringMatcher {
        let (namespace, account) = value.split_once('/').unwrap_or((value, ""));
        exact(&format!(
            "spiffe://{}/ns/{namespace}/sa/{account}",
            self.trust_domain
        ))
    }
}

/// A path condition: a URI template when it has `{*}` or `{**}`, else Istio's string forms.
fn path_permission(value: &str) -> Permission {
    if value.contains("{*}") || value.contains("{**}") {
        let template = UriTemplateMatchConfig {
            path_template: value.replace("{**}", "**").replace("{*}", "*"),
        };
        return rule(permission::Rule::UriTemplate(TypedExtensionConfig {
            name: "uri-template".to_string(),
            typed_config: Some(pack(&template)),
        }));
    }
    rule(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(value_matcher(value))),
    }))
}

/// A condition on the request's verified token (Istio's `istio_authn` metadata at `path`),
/// in Istio's string forms.
fn auth_principal(path: &[&str], value: &str) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(auth_metadata(path, value_matcher(value), false)),
            metadata_source: MetadataSource::Dynamic as i32,
        })),
    }
}

/// A condition's contribution: to who the caller is, or to what it asks.
enum Clause {
    Principal(Principal),
    Permission(Permission),
}

/// Istio's string forms: exact, `prefix*`, `*suffix`, `*` (present).
fn value_matcher(value: &str) -> StringMatcher {
    if value == "*" {
        presence()
    } else if let Some(rest) = value.strip_prefix('*') {
        suffix(rest)
    } else if let Some(rest) = value.strip_suffix('*') {
        prefix(rest)
    } else {
        exact(value)
    }
}

fn glob_to_regex(value: &str) -> String {
    value
        .split('*')
        .map(regex_escape)
        .collect::<Vec<_>>()
        .join(".*")
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

fn pattern(pattern: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    }
}

fn exact(value: &str) -> StringMatcher {
    pattern(MatchPattern::Exact(value.to_string()))
}

fn prefix(value: &str) -> StringMatcher {
    pattern(MatchPattern::Prefix(value.to_string()))
}

fn suffix(value: &str) -> StringMatcher {
    pattern(MatchPattern::Suffix(value.to_string()))
}

fn regex(value: &str) -> StringMatcher {
    pattern(MatchPattern::SafeRegex(RegexMatcher {
        regex: value.to_string(),
        ..RegexMatcher::default()
    }))
}

fn presence() -> StringMatcher {
    regex(".+")
}

fn header_matcher(name: &str, value: &str) -> HeaderMatcher {
    let mut matcher = value_matcher(value);
    if name == ":authority" {
        matcher.ignore_case = true;
    }
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(matcher)),
        ..HeaderMatcher::default()
    }
}

fn cidr(value: &str) -> CidrRange {
    let (address, bits) = match value.split_once('/') {
        Some((address, bits)) => (address, bits.parse().ok()),
        None => (value, None),
    };
    let full = if address.contains(':') { 128 } else { 32 };
    CidrRange {
        address_prefix: address.to_string(),
        prefix_len: Some(UInt32Value {
            value: bits.unwrap_or(full),
        }),
    }
}

fn rule(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn or_rules(rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.into_iter().next().unwrap_or_else(any_permission);
    }
    rule(permission::Rule::OrRules(permission::Set { rules }))
}

fn and_rules(rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => any_permission(),
        1 => rules.into_iter().next().unwrap_or_else(any_permission),
        _ => rule(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn not_rule(permission: Permission) -> Permission {
    rule(permission::Rule::NotRule(Box::new(permission)))
}

fn any_permission() -> Permission {
    rule(permission::Rule::Any(true))
}

fn or_ids(ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.into_iter().next().unwrap_or_else(any_principal);
    }
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn and_ids(ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => any_principal(),
        1 => ids.into_iter().next().unwrap_or_else(any_principal),
        _ => Principal {
            identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
        },
    }
}

fn not_id(principal: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(principal))),
    }
}

fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}
