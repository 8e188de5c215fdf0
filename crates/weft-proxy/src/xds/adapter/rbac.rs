//! The RBAC filters of an inbound chain (AuthorizationPolicy, as the control plane sends
//! it) into the port's [`Rbac`]: DENY and ALLOW policies with their permissions and
//! principals. A rule this proxy cannot evaluate rejects the listener: a policy that cannot
//! be enforced must not be read as allowing anything.

use weft_xds::envoy::envoy::config::core::v3::CidrRange;
use weft_xds::envoy::envoy::config::listener::v3::{Filter, filter};
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

use super::matcher::{header_match, string_match};
use super::proto::decode_any;
use crate::model::policy::{Cidr, Permission, Policy, Principal, Rbac};

/// The RBAC filters of an inbound chain: the network filters of a TCP chain, or the HTTP
/// filters inside its connection manager.
pub(super) fn chain_rbac(filters: &[Filter]) -> Result<Rbac, String> {
    use weft_xds::envoy::envoy::config::rbac::v3::rbac::Action as RbacAction;
    use weft_xds::envoy::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use weft_xds::envoy::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    let mut rules = Vec::new();
    for filter in filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
            continue;
        };
        match filter.name.as_str() {
            "envoy.filters.network.rbac" => {
                let config: NetworkRbac = decode_any(any)?;
                rules.extend(config.rules);
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
                        rules.extend(config.rules);
                    }
                }
            }
            _ => {}
        }
    }
    let mut rbac = Rbac::default();
    for rule in rules {
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
        match RbacAction::try_from(rule.action) {
            Ok(RbacAction::Deny) => rbac.deny.get_or_insert_with(Vec::new).extend(policies),
            Ok(RbacAction::Allow) => rbac.allow.get_or_insert_with(Vec::new).extend(policies),
            _ => {}
        }
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
        _ => {
            return Err("an RBAC principal this proxy cannot evaluate".to_string());
        }
    })
}
