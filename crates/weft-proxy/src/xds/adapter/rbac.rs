//! The RBAC filters of an inbound chain (AuthorizationPolicy, as the control plane sends
//! it) into the port's [`Rbac`]: DENY and ALLOW policies with their permissions and
//! principals. A rule this proxy cannot evaluate rejects the listener: a policy that cannot
//! be enforced must not be read as allowing anything.

use weft_xds::envoy::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use weft_xds::envoy::envoy::config::listener::v3::{Filter, filter};
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use weft_xds::envoy::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;

use super::jwt::auth_match;
use super::matcher::{header_match, regex, string_match};
use super::proto::decode_any;
use crate::model::StringMatch;
use crate::model::policy::{Cidr, Permission, Policy, Principal, Rbac};

/// The RBAC filters of an inbound chain: the network filters of a TCP chain, or the HTTP
/// filters inside its connection manager.
pub(super) fn chain_rbac(filters: &[Filter]) -> Result<Rbac, String> {
    use weft_xds::envoy::envoy::config::rbac::v3::rbac::Action as RbacAction;
    use weft_xds::envoy::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use weft_xds::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    // Each filter's enforced rules, and its shadow (dry-run) rules.
    let mut rules = Vec::new();
    for filter in filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        match filter.name.as_str() {
            "envoy.filters.network.rbac" => {
                let config: NetworkRbac = decode_any(any)?;
                rules.push((config.rules, false));
                rules.push((config.shadow_rules, true));
            }
            "envoy.filters.network.http_connection_manager" => {
                let manager: HttpConnectionManager = decode_any(any)?;
                for http_filter in manager.http_filters {
                    use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
                    if http_filter.name != "envoy.filters.http.rbac" {
                        continue;
                    }
                    if let Some(ConfigType::TypedConfig(any)) = &http_filter.config_type {
                        let config: HttpRbac = decode_any(any)?;
                        rules.push((config.rules, false));
                        rules.push((config.shadow_rules, true));
                    }
                }
            }
            _ => {}
        }
    }
    let mut rbac = Rbac::default();
    for (rule, shadow) in rules {
        let Some(rule) = rule else { continue };
        let mut policies: Vec<(String, weft_xds::envoy::envoy::config::rbac::v3::Policy)> =
            rule.policies.into_iter().collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        let policies = policies
            .into_iter()
            .map(|(name, policy)| {
                Ok(Policy {
                    permissions: policy
                        .permissions
                        .iter()
                        .map(permission)
                        .collect::<Result<_, _>>()?,
                    principals: policy
                        .principals
                        .iter()
                        .map(principal)
                        .collect::<Result<_, _>>()?,
                    name,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let set = match (RbacAction::try_from(rule.action), shadow) {
            (Ok(RbacAction::Deny), false) => &mut rbac.deny,
            (Ok(RbacAction::Allow), false) => &mut rbac.allow,
            (Ok(RbacAction::Deny), true) => &mut rbac.dry_run_deny,
            (Ok(RbacAction::Allow), true) => &mut rbac.dry_run_allow,
            // LOG changes no decision; anything else cannot be enforced.
            (Ok(RbacAction::Log), _) => continue,
            (Err(_), _) => {
                return Err(format!(
                    "an RBAC action {} this proxy does not know",
                    rule.action
                ));
            }
        };
        set.get_or_insert_with(Vec::new).extend(policies);
    }
    Ok(rbac)
}

fn cidr(range: &CidrRange) -> Result<Cidr, String> {
    let address = range
        .address_prefix
        .parse()
        .map_err(|_| format!("bad address {:?}", range.address_prefix))?;
    Ok(Cidr {
        address,
        prefix: range
            .prefix_len
            .map_or(128, |p| u8::try_from(p.value).unwrap_or(128)),
    })
}

fn permission(
    p: &weft_xds::envoy::envoy::config::rbac::v3::Permission,
) -> Result<Permission, String> {
    use Permission as P;
    use weft_xds::envoy::envoy::config::rbac::v3::permission::Rule;
    use weft_xds::envoy::envoy::r#type::matcher::v3::path_matcher;
    Ok(match &p.rule {
        Some(Rule::Any(true)) => P::Any,
        Some(Rule::AndRules(set)) => {
            P::And(set.rules.iter().map(permission).collect::<Result<_, _>>()?)
        }
        Some(Rule::OrRules(set)) => {
            P::Or(set.rules.iter().map(permission).collect::<Result<_, _>>()?)
        }
        Some(Rule::NotRule(inner)) => P::Not(Box::new(permission(inner)?)),
        Some(Rule::Header(h)) => P::Header(header_match(h)?),
        Some(Rule::UrlPath(path)) => match &path.rule {
            Some(path_matcher::Rule::Path(m)) => P::Path(string_match(m)?),
            _ => {
                return Err("an RBAC path rule has no matcher".to_string());
            }
        },
        Some(Rule::UriTemplate(extension)) => P::Path(uri_template(extension)?),
        Some(Rule::DestinationPort(port)) => P::DestinationPort(
            u16::try_from(*port).map_err(|_| format!("bad destination port {port}"))?,
        ),
        Some(Rule::DestinationIp(range)) => P::DestinationIp(cidr(range)?),
        _ => {
            return Err("an RBAC permission this proxy cannot evaluate".to_string());
        }
    })
}

fn principal(p: &weft_xds::envoy::envoy::config::rbac::v3::Principal) -> Result<Principal, String> {
    use Principal as P;
    use weft_xds::envoy::envoy::config::rbac::v3::MetadataSource;
    use weft_xds::envoy::envoy::config::rbac::v3::principal::Identifier;
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => P::Any,
        Some(Identifier::AndIds(set)) => {
            P::And(set.ids.iter().map(principal).collect::<Result<_, _>>()?)
        }
        Some(Identifier::OrIds(set)) => {
            P::Or(set.ids.iter().map(principal).collect::<Result<_, _>>()?)
        }
        Some(Identifier::NotId(inner)) => P::Not(Box::new(principal(inner)?)),
        Some(Identifier::Authenticated(auth)) => {
            P::Authenticated(auth.principal_name.as_ref().map(string_match).transpose()?)
        }
        Some(Identifier::DirectRemoteIp(range)) => P::SourceIp(cidr(range)?),
        Some(Identifier::RemoteIp(range)) => P::RemoteIp(cidr(range)?),
        // The request's dynamic metadata: what its verified token says (Istio's keys).
        Some(Identifier::SourcedMetadata(sourced))
            if sourced.metadata_source == MetadataSource::Dynamic as i32 =>
        {
            let matcher = sourced
                .metadata_matcher
                .as_ref()
                .ok_or("a metadata principal without a matcher")?;
            P::RequestAuth(auth_match(matcher)?)
        }
        #[allow(deprecated, reason = "Istio still sends the older field")]
        Some(Identifier::Metadata(matcher)) => P::RequestAuth(auth_match(matcher)?),
        _ => {
            return Err("an RBAC principal this proxy cannot evaluate".to_string());
        }
    })
}

/// Envoy's URI template matcher as a regex on the path: `*` (or `{name}`, `{name=*}`) is one
/// segment of one or more characters, `**` (or `{name=**}`) any number of segments, the last
/// operator; the rest is literal.
fn uri_template(extension: &TypedExtensionConfig) -> Result<StringMatch, String> {
    let config: UriTemplateMatchConfig = match &extension.typed_config {
        Some(any) => decode_any(any)?,
        None => return Err("a URI template rule has no configuration".to_string()),
    };
    let template = config.path_template;
    if !template.starts_with('/') {
        return Err(format!("URI template {template:?} does not start with '/'"));
    }
    let mut pattern = String::new();
    let mut rest = template.as_str();
    let mut after_any_depth = false;
    while !rest.is_empty() {
        let (operator, length) = if let Some(inner) = rest.strip_prefix('{') {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("URI template {template:?} has an unclosed '{{'"))?;
            let operator = match inner[..end].split_once('=') {
                None => "*",
                Some((_, "*")) => "*",
                Some((_, "**")) => "**",
                Some(_) => {
                    return Err(format!(
                        "URI template {template:?}: variables with paths are not supported"
                    ));
                }
            };
            (Some(operator), end + 2)
        } else if rest.starts_with("**") {
            (Some("**"), 2)
        } else if rest.starts_with('*') {
            (Some("*"), 1)
        } else {
            (None, rest.chars().next().map_or(1, char::len_utf8))
        };
        match operator {
            Some(_) if after_any_depth => {
                return Err(format!(
                    "URI template {template:?}: ** must be the last operator"
                ));
            }
            Some("**") => {
                pattern.push_str("[^?#]*");
                after_any_depth = true;
            }
            Some(_) => pattern.push_str("[^/?#]+"),
            None => pattern.push_str(&regex::escape(&rest[..length])),
        }
        rest = &rest[length..];
    }
    Ok(StringMatch::Regex(regex(&pattern)?))
}
