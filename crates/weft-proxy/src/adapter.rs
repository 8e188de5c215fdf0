//! The one place Envoy's protobuf types are read: xDS resources in, the proxy's
//! [`Model`] out. A resource that cannot be applied is an error naming it, which the xDS
//! client sends back as a NACK while the proxy keeps its last good model.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use regex::Regex;
use weft_xds::envoy::envoy::config::cluster::v3::Cluster as XdsCluster;
use weft_xds::envoy::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use weft_xds::envoy::envoy::config::core::v3::{
    Address, DataSource, HeaderValueOption, TransportSocket, address,
    header_value_option::HeaderAppendAction, socket_address::PortSpecifier, transport_socket,
};
use weft_xds::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use weft_xds::envoy::envoy::config::listener::v3::{Listener, filter};
use weft_xds::envoy::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use weft_xds::envoy::envoy::config::route::v3::{
    HeaderMatcher, RouteConfiguration,
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action,
    route::Action as XdsAction,
    route_action::{ClusterSpecifier, HostRewriteSpecifier},
    route_match::PathSpecifier,
};
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use weft_xds::envoy::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use weft_xds::envoy::google::protobuf::{Any, value::Kind};

use crate::hashing;
use crate::model::{
    Abort, Action, Cluster, Endpoint, Fault, Forward, HashOn, HeaderChanges, HeaderMatch,
    LoadBalancer, Model, Outlier, PathMatch, QueryMatch, Redirect, RegexRewrite, Retry, Route,
    RouteMatch, RouteTable, StringMatch, UpstreamHttp, UpstreamTls, VirtualHost, WeightedCluster,
};

/// The resources a proxy holds, as received, by type and name.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Listeners.
    pub listeners: HashMap<String, Any>,
    /// Route configurations.
    pub routes: HashMap<String, Any>,
    /// Clusters.
    pub clusters: HashMap<String, Any>,
    /// Cluster load assignments.
    pub endpoints: HashMap<String, Any>,
}

/// A resource the proxy cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name}: {reason}")]
pub struct Rejected {
    kind: &'static str,
    name: String,
    reason: String,
}

fn rejected(kind: &'static str, name: &str, reason: impl Into<String>) -> Rejected {
    Rejected {
        kind,
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// The listener filter that marks an outbound port whose protocol is detected per connection.
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";

fn decode<M: Message + Default>(kind: &'static str, name: &str, any: &Any) -> Result<M, Rejected> {
    M::decode(any.value.as_slice()).map_err(|e| rejected(kind, name, format!("undecodable: {e}")))
}

/// The route configurations and clusters the listeners and clusters refer to, to ask for
/// over RDS and EDS.
pub fn wanted_routes(received: &Received) -> Vec<String> {
    let mut names: Vec<String> = received
        .listeners
        .iter()
        .filter_map(|(name, any)| decode::<Listener>("listener", name, any).ok())
        .flat_map(|listener| listener.filter_chains)
        .flat_map(|chain| chain.filters)
        .filter_map(|filter| match filter.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|manager| match manager.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The clusters whose endpoints come over EDS.
pub fn wanted_endpoints(received: &Received) -> Vec<String> {
    let mut names: Vec<String> = received
        .clusters
        .iter()
        .filter_map(|(name, any)| decode::<XdsCluster>("cluster", name, any).ok())
        .filter(|c| c.eds_cluster_config.is_some())
        .map(|c| {
            c.eds_cluster_config
                .map(|e| e.service_name)
                .filter(|n| !n.is_empty())
                .unwrap_or(c.name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Builds the model from everything received.
pub fn build(received: &Received) -> Result<Model, Rejected> {
    let mut model = Model::default();
    for (name, any) in &received.listeners {
        let listener: Listener = decode("listener", name, any)?;
        if let Some(port) = name.strip_prefix("0.0.0.0_").and_then(|p| p.parse().ok()) {
            if let Some(route) = wanted_routes(&Received {
                listeners: HashMap::from([(name.clone(), any.clone())]),
                ..Received::default()
            })
            .into_iter()
            .next()
            {
                model.outbound_ports.insert(port, route);
            }
            if listener
                .listener_filters
                .iter()
                .any(|f| f.name == HTTP_INSPECTOR)
            {
                model.sniffed_ports.insert(port);
            }
            // A sidecar's port listeners are reached through interception; a gateway's
            // are bound.
            if listener.bind_to_port.as_ref().is_none_or(|b| b.value) {
                model
                    .gateway_ports
                    .insert(port, gateway_port(name, &listener)?);
            }
        } else if listener.traffic_direction
            == weft_xds::envoy::envoy::config::core::v3::TrafficDirection::Inbound as i32
        {
            for chain in &listener.filter_chains {
                let Some(matched) = &chain.filter_chain_match else {
                    continue;
                };
                let Some(port) = matched
                    .destination_port
                    .as_ref()
                    .and_then(|p| u16::try_from(p.value).ok())
                else {
                    continue;
                };
                let tcp = chain
                    .filters
                    .iter()
                    .any(|f| f.name == "envoy.filters.network.tcp_proxy");
                let entry = model.inbound.entry(port).or_default();
                let serves = if tcp { &mut entry.tcp } else { &mut entry.http };
                if serves.is_none() {
                    *serves = Some(chain_rbac(name, &chain.filters)?);
                }
                match matched.transport_protocol.as_str() {
                    "tls" => entry.mtls = true,
                    _ => entry.plaintext = true,
                }
            }
        }
    }
    for (name, any) in &received.routes {
        let config: RouteConfiguration = decode("route configuration", name, any)?;
        model
            .routes
            .insert(name.clone(), Arc::new(route_table(config)?));
    }
    for (name, any) in &received.clusters {
        let cluster: XdsCluster = decode("cluster", name, any)?;
        let service_name = cluster
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| cluster.name.clone());
        let assignment = match &cluster.load_assignment {
            Some(assignment) => Some(assignment.clone()),
            None => received
                .endpoints
                .get(&service_name)
                .map(|any| decode::<ClusterLoadAssignment>("endpoints", &service_name, any))
                .transpose()?,
        };
        model
            .clusters
            .insert(name.clone(), Arc::new(cluster_model(cluster, assignment)?));
    }
    Ok(model)
}

fn route_table(config: RouteConfiguration) -> Result<RouteTable, Rejected> {
    let name = config.name.clone();
    let mut virtual_hosts = Vec::new();
    for vh in config.virtual_hosts {
        let mut routes = Vec::new();
        for route in vh.routes {
            let matcher = route_match(&name, route.r#match.unwrap_or_default())?;
            let action = match route.action {
                Some(XdsAction::Route(action)) => {
                    let clusters = match action.cluster_specifier {
                        Some(ClusterSpecifier::Cluster(cluster)) => vec![WeightedCluster {
                            name: cluster,
                            weight: 1,
                            request_headers: HeaderChanges::default(),
                            response_headers: HeaderChanges::default(),
                        }],
                        Some(ClusterSpecifier::WeightedClusters(weighted)) => weighted
                            .clusters
                            .into_iter()
                            .map(|c| WeightedCluster {
                                request_headers: header_changes(
                                    &c.request_headers_to_add,
                                    &c.request_headers_to_remove,
                                ),
                                response_headers: header_changes(
                                    &c.response_headers_to_add,
                                    &c.response_headers_to_remove,
                                ),
                                name: c.name,
                                weight: c.weight.map_or(1, |w| w.value),
                            })
                            .collect(),
                        _ => return Err(rejected("route configuration", &name, "a route names no cluster")),
                    };
                    Action::Forward(Forward {
                        clusters,
                        timeout: action
                            .timeout
                            .map(duration)
                            .filter(|t| !t.is_zero()),
                        prefix_rewrite: Some(action.prefix_rewrite).filter(|p| !p.is_empty()),
                        regex_rewrite: action
                            .regex_rewrite
                            .map(|r| {
                                Ok::<_, Rejected>(RegexRewrite {
                                    pattern: regex(&name, &r.pattern.unwrap_or_default().regex)?,
                                    substitution: substitution(&r.substitution),
                                })
                            })
                            .transpose()?,
                        host_rewrite: match action.host_rewrite_specifier {
                            Some(HostRewriteSpecifier::HostRewriteLiteral(host)) => Some(host),
                            _ => None,
                        },
                        retry: action.retry_policy.map(|policy| Retry {
                            retries: policy.num_retries.map_or(1, |n| n.value),
                            on: policy
                                .retry_on
                                .split(',')
                                .map(|c| c.trim().to_string())
                                .filter(|c| !c.is_empty())
                                .collect(),
                            status_codes: policy
                                .retriable_status_codes
                                .iter()
                                .filter_map(|c| u16::try_from(*c).ok())
                                .collect(),
                            per_try_timeout: policy.per_try_timeout.map(duration),
                        }),
                        picks: std::sync::atomic::AtomicU64::new(0),
                        hash_policy: action
                            .hash_policy
                            .into_iter()
                            .filter_map(|policy| match policy.policy_specifier? {
                                PolicySpecifier::Header(h) => {
                                    Some(HashOn::Header(h.header_name.to_ascii_lowercase()))
                                }
                                PolicySpecifier::Cookie(c) => Some(HashOn::Cookie(c.name)),
                                PolicySpecifier::ConnectionProperties(c) if c.source_ip => {
                                    Some(HashOn::SourceIp)
                                }
                                PolicySpecifier::QueryParameter(q) => {
                                    Some(HashOn::QueryParameter(q.name))
                                }
                                _ => None,
                            })
                            .collect(),
                    })
                }
                Some(XdsAction::Redirect(redirect)) => Action::Redirect(Redirect {
                    status: match redirect_action::RedirectResponseCode::try_from(
                        redirect.response_code,
                    ) {
                        Ok(redirect_action::RedirectResponseCode::Found) => 302,
                        Ok(redirect_action::RedirectResponseCode::SeeOther) => 303,
                        Ok(redirect_action::RedirectResponseCode::TemporaryRedirect) => 307,
                        Ok(redirect_action::RedirectResponseCode::PermanentRedirect) => 308,
                        _ => 301,
                    },
                    scheme: match redirect.scheme_rewrite_specifier {
                        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s),
                        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => {
                            Some("https".to_string())
                        }
                        _ => None,
                    },
                    host: Some(redirect.host_redirect).filter(|h| !h.is_empty()),
                    port: u16::try_from(redirect.port_redirect).ok().filter(|p| *p != 0),
                    path: match &redirect.path_rewrite_specifier {
                        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
                        _ => None,
                    },
                    prefix: match redirect.path_rewrite_specifier {
                        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) => Some(p),
                        _ => None,
                    },
                }),
                Some(XdsAction::DirectResponse(direct)) => Action::Direct {
                    status: u16::try_from(direct.status).unwrap_or(500),
                    body: direct
                        .body
                        .and_then(|b| match b.specifier {
                            Some(weft_xds::envoy::envoy::config::core::v3::data_source::Specifier::InlineString(s)) => Some(s),
                            _ => None,
                        })
                        .unwrap_or_default(),
                },
                _ => {
                    return Err(rejected(
                        "route configuration",
                        &name,
                        format!("route {} has an action this proxy does not support", route.name),
                    ));
                }
            };
            let fault = route
                .typed_per_filter_config
                .get("envoy.filters.http.fault")
                .map(|any| fault(&name, any))
                .transpose()?
                .flatten();
            routes.push(Route {
                name: route.name,
                matcher,
                action,
                fault,
                request_headers: header_changes(
                    &route.request_headers_to_add,
                    &route.request_headers_to_remove,
                ),
                response_headers: header_changes(
                    &route.response_headers_to_add,
                    &route.response_headers_to_remove,
                ),
            });
        }
        virtual_hosts.push(VirtualHost {
            name: vh.name,
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
            // EXTERNAL_ONLY too: a proxy of Weft's takes no request as internal.
            require_tls: vh.require_tls != 0,
        });
    }
    Ok(RouteTable::new(virtual_hosts))
}

/// The fault filter's per-route configuration; `None` when it injects nothing.
fn fault(config: &str, any: &Any) -> Result<Option<Fault>, Rejected> {
    use weft_xds::envoy::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::HttpFault;
    use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    use weft_xds::envoy::envoy::r#type::v3::FractionalPercent;
    let fault: HttpFault = decode("route configuration", config, any)?;
    let per_million = |p: Option<FractionalPercent>| {
        let p = p.unwrap_or_default();
        let scale = match p.denominator {
            0 => 10_000,
            1 => 100,
            _ => 1,
        };
        p.numerator.saturating_mul(scale).min(1_000_000)
    };
    let delay = fault.delay.and_then(|d| match d.fault_delay_secifier {
        Some(FaultDelaySecifier::FixedDelay(fixed)) => {
            Some((duration(fixed), per_million(d.percentage)))
        }
        _ => None,
    });
    let abort = fault.abort.and_then(|a| {
        let abort = match a.error_type {
            Some(ErrorType::HttpStatus(status)) => Abort::Http(u16::try_from(status).ok()?),
            Some(ErrorType::GrpcStatus(code)) => Abort::Grpc(code),
            _ => return None,
        };
        Some((abort, per_million(a.percentage)))
    });
    Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
}

/// The RBAC filters of an inbound chain: the network filters of a TCP chain, or the HTTP
/// filters inside its connection manager.
fn chain_rbac(
    listener: &str,
    filters: &[weft_xds::envoy::envoy::config::listener::v3::Filter],
) -> Result<crate::rbac::Rbac, Rejected> {
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
                let config: NetworkRbac = decode("listener", listener, any)?;
                rules.extend(config.rules);
            }
            "envoy.filters.network.http_connection_manager" => {
                let manager: HttpConnectionManager = decode("listener", listener, any)?;
                for http_filter in manager.http_filters {
                    use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
                    if http_filter.name != "envoy.filters.http.rbac" {
                        continue;
                    }
                    if let Some(ConfigType::TypedConfig(any)) = &http_filter.config_type {
                        let config: HttpRbac = decode("listener", listener, any)?;
                        rules.extend(config.rules);
                    }
                }
            }
            _ => {}
        }
    }
    let mut rbac = crate::rbac::Rbac::default();
    for rule in rules {
        let mut policies: Vec<(String, weft_xds::envoy::envoy::config::rbac::v3::Policy)> =
            rule.policies.into_iter().collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        let policies = policies
            .into_iter()
            .map(|(name, policy)| {
                Ok(crate::rbac::Policy {
                    permissions: policy
                        .permissions
                        .iter()
                        .map(|p| permission(listener, p))
                        .collect::<Result<_, _>>()?,
                    principals: policy
                        .principals
                        .iter()
                        .map(|p| principal(listener, p))
                        .collect::<Result<_, _>>()?,
                    name,
                })
            })
            .collect::<Result<Vec<_>, Rejected>>()?;
        match RbacAction::try_from(rule.action) {
            Ok(RbacAction::Deny) => rbac.deny.get_or_insert_with(Vec::new).extend(policies),
            Ok(RbacAction::Allow) => rbac.allow.get_or_insert_with(Vec::new).extend(policies),
            _ => {}
        }
    }
    Ok(rbac)
}

fn cidr(
    listener: &str,
    range: &weft_xds::envoy::envoy::config::core::v3::CidrRange,
) -> Result<crate::rbac::Cidr, Rejected> {
    let address = range.address_prefix.parse().map_err(|_| {
        rejected(
            "listener",
            listener,
            format!("bad address {:?}", range.address_prefix),
        )
    })?;
    Ok(crate::rbac::Cidr {
        address,
        prefix: range
            .prefix_len
            .map_or(128, |p| u8::try_from(p.value).unwrap_or(128)),
    })
}

fn permission(
    listener: &str,
    p: &weft_xds::envoy::envoy::config::rbac::v3::Permission,
) -> Result<crate::rbac::Permission, Rejected> {
    use crate::rbac::Permission as P;
    use weft_xds::envoy::envoy::config::rbac::v3::permission::Rule;
    use weft_xds::envoy::envoy::r#type::matcher::v3::path_matcher;
    Ok(match &p.rule {
        Some(Rule::Any(true)) => P::Any,
        Some(Rule::AndRules(set)) => P::And(
            set.rules
                .iter()
                .map(|r| permission(listener, r))
                .collect::<Result<_, _>>()?,
        ),
        Some(Rule::OrRules(set)) => P::Or(
            set.rules
                .iter()
                .map(|r| permission(listener, r))
                .collect::<Result<_, _>>()?,
        ),
        Some(Rule::NotRule(inner)) => P::Not(Box::new(permission(listener, inner)?)),
        Some(Rule::Header(h)) => P::Header(header_match(listener, h)?),
        Some(Rule::UrlPath(path)) => match &path.rule {
            Some(path_matcher::Rule::Path(m)) => P::Path(string_match(listener, m)?),
            _ => {
                return Err(rejected(
                    "listener",
                    listener,
                    "an RBAC path rule has no matcher",
                ));
            }
        },
        Some(Rule::DestinationPort(port)) => P::DestinationPort(u16::try_from(*port).unwrap_or(0)),
        Some(Rule::DestinationIp(range)) => P::DestinationIp(cidr(listener, range)?),
        _ => {
            return Err(rejected(
                "listener",
                listener,
                "an RBAC permission this proxy cannot evaluate",
            ));
        }
    })
}

fn principal(
    listener: &str,
    p: &weft_xds::envoy::envoy::config::rbac::v3::Principal,
) -> Result<crate::rbac::Principal, Rejected> {
    use crate::rbac::Principal as P;
    use weft_xds::envoy::envoy::config::rbac::v3::principal::Identifier;
    Ok(match &p.identifier {
        Some(Identifier::Any(true)) => P::Any,
        Some(Identifier::AndIds(set)) => P::And(
            set.ids
                .iter()
                .map(|i| principal(listener, i))
                .collect::<Result<_, _>>()?,
        ),
        Some(Identifier::OrIds(set)) => P::Or(
            set.ids
                .iter()
                .map(|i| principal(listener, i))
                .collect::<Result<_, _>>()?,
        ),
        Some(Identifier::NotId(inner)) => P::Not(Box::new(principal(listener, inner)?)),
        Some(Identifier::Authenticated(auth)) => P::Authenticated(
            auth.principal_name
                .as_ref()
                .map(|m| string_match(listener, m))
                .transpose()?,
        ),
        Some(Identifier::DirectRemoteIp(range)) => P::SourceIp(cidr(listener, range)?),
        Some(Identifier::RemoteIp(range)) => P::RemoteIp(cidr(listener, range)?),
        _ => {
            return Err(rejected(
                "listener",
                listener,
                "an RBAC principal this proxy cannot evaluate",
            ));
        }
    })
}

/// Envoy's regex substitution (RE2's: `\1` for a group, `\\` for a backslash, anything else
/// literal) in the regex crate's syntax (`${1}`, `$$` for a dollar sign).
fn substitution(envoy: &str) -> String {
    let mut out = String::with_capacity(envoy.len() + 4);
    let mut chars = envoy.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('\\', Some(digit)) if digit.is_ascii_digit() => {
                chars.next();
                out.push_str("${");
                out.push(digit);
                out.push('}');
            }
            ('\\', Some('\\')) => {
                chars.next();
                out.push('\\');
            }
            ('$', _) => out.push_str("$$"),
            (other, _) => out.push(other),
        }
    }
    out
}

fn regex(config: &str, pattern: &str) -> Result<Regex, Rejected> {
    // Envoy's regexes match the whole value.
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        rejected(
            "route configuration",
            config,
            format!("bad regex {pattern:?}: {e}"),
        )
    })
}

fn route_match(
    config: &str,
    m: weft_xds::envoy::envoy::config::route::v3::RouteMatch,
) -> Result<RouteMatch, Rejected> {
    let path = match m.path_specifier {
        Some(PathSpecifier::Prefix(prefix)) => PathMatch::Prefix(prefix),
        Some(PathSpecifier::Path(path)) => PathMatch::Exact(path),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(regex(config, &r.regex)?),
        _ => PathMatch::Prefix(String::new()),
    };
    let headers = m
        .headers
        .iter()
        .map(|h| header_match(config, h))
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(|q| {
            Ok(QueryMatch {
                name: q.name.clone(),
                condition: match &q.query_parameter_match_specifier {
                    Some(QueryParameterMatchSpecifier::StringMatch(s)) => string_match(config, s)?,
                    _ => StringMatch::Present,
                },
            })
        })
        .collect::<Result<_, Rejected>>()?;
    Ok(RouteMatch {
        path,
        ignore_case: m.case_sensitive.is_some_and(|c| !c.value),
        headers,
        query,
    })
}

#[allow(
    deprecated,
    reason = "older control planes still send the deprecated matchers"
)]
fn header_match(config: &str, h: &HeaderMatcher) -> Result<HeaderMatch, Rejected> {
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        condition: match &h.header_match_specifier {
            Some(HeaderMatchSpecifier::StringMatch(s)) => string_match(config, s)?,
            Some(HeaderMatchSpecifier::ExactMatch(s)) => StringMatch::Exact(s.clone()),
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => StringMatch::Prefix(s.clone()),
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                StringMatch::Regex(regex(config, &r.regex)?)
            }
            _ => StringMatch::Present,
        },
        invert: h.invert_match,
        missing_is_empty: h.treat_missing_header_as_empty,
    })
}

fn string_match(config: &str, s: &StringMatcher) -> Result<StringMatch, Rejected> {
    let case = |text: &str| regex::escape(text);
    Ok(match (&s.match_pattern, s.ignore_case) {
        (Some(MatchPattern::Exact(v)), true) => {
            StringMatch::Regex(regex(config, &format!("(?i){}", case(v)))?)
        }
        (Some(MatchPattern::Prefix(v)), true) => {
            StringMatch::Regex(regex(config, &format!("(?i){}.*", case(v)))?)
        }
        (Some(MatchPattern::Exact(v)), false) => StringMatch::Exact(v.clone()),
        (Some(MatchPattern::Prefix(v)), false) => StringMatch::Prefix(v.clone()),
        (Some(MatchPattern::Suffix(v)), _) => StringMatch::Suffix(v.clone()),
        (Some(MatchPattern::Contains(v)), _) => StringMatch::Contains(v.clone()),
        (Some(MatchPattern::SafeRegex(r)), _) => StringMatch::Regex(regex(config, &r.regex)?),
        _ => StringMatch::Present,
    })
}

fn header_changes(add: &[HeaderValueOption], remove: &[String]) -> HeaderChanges {
    let mut changes = HeaderChanges {
        remove: remove.iter().map(|r| r.to_ascii_lowercase()).collect(),
        ..HeaderChanges::default()
    };
    for option in add {
        let Some(header) = &option.header else {
            continue;
        };
        let pair = (header.key.to_ascii_lowercase(), header.value.clone());
        if option.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32 {
            changes.add.push(pair);
        } else {
            changes.set.push(pair);
        }
    }
    changes
}

fn duration(d: weft_xds::envoy::google::protobuf::Duration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

fn cluster_model(
    cluster: XdsCluster,
    assignment: Option<ClusterLoadAssignment>,
) -> Result<Cluster, Rejected> {
    let name = cluster.name.clone();
    let passthrough = matches!(
        cluster.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32
    );
    let lb = match LbPolicy::try_from(cluster.lb_policy) {
        Ok(LbPolicy::Random) => LoadBalancer::Random,
        Ok(LbPolicy::LeastRequest) => LoadBalancer::LeastRequest,
        Ok(LbPolicy::RingHash) => LoadBalancer::RingHash,
        Ok(LbPolicy::Maglev) => LoadBalancer::Maglev,
        _ => LoadBalancer::RoundRobin,
    };
    let mut mesh_tls = None;
    for socket_match in &cluster.transport_socket_matches {
        let is_mesh = socket_match
            .r#match
            .as_ref()
            .and_then(|m| m.fields.get("tlsMode"))
            .is_some_and(|v| matches!(&v.kind, Some(Kind::StringValue(s)) if s == "istio"));
        if is_mesh {
            mesh_tls = socket_match
                .transport_socket
                .as_ref()
                .map(|s| upstream_tls(&name, s))
                .transpose()?
                .flatten();
        }
    }
    let default_tls = cluster
        .transport_socket
        .as_ref()
        .map(|s| upstream_tls(&name, s))
        .transpose()?
        .flatten();
    let protocol = cluster
        .typed_extension_protocol_options
        .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        .and_then(|any| HttpProtocolOptions::decode(any.value.as_slice()).ok())
        .and_then(|o| o.upstream_protocol_options)
        .map_or(UpstreamHttp::Http1, |o| match o {
            UpstreamProtocolOptions::ExplicitHttpConfig(e) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamHttp::Http2,
                _ => UpstreamHttp::Http1,
            },
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(_) => UpstreamHttp::Downstream,
            _ => UpstreamHttp::Http1,
        });
    let mut endpoints = Vec::new();
    for locality in assignment.map(|a| a.endpoints).unwrap_or_default() {
        for lb_endpoint in locality.lb_endpoints {
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb_endpoint.host_identifier else {
                continue;
            };
            let Some(address) = endpoint.address.as_ref().and_then(socket_addr) else {
                return Err(rejected(
                    "cluster",
                    &name,
                    "an endpoint has no IP address and port",
                ));
            };
            let metadata = lb_endpoint.metadata.as_ref();
            let field = |filter: &str, key: &str| {
                metadata
                    .and_then(|m| m.filter_metadata.get(filter))
                    .and_then(|s| s.fields.get(key))
                    .and_then(|v| match &v.kind {
                        Some(Kind::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
            };
            endpoints.push(Endpoint {
                address,
                weight: lb_endpoint
                    .load_balancing_weight
                    .map_or(1, |w| w.value.max(1)),
                healthy: lb_endpoint.health_status
                    != weft_xds::envoy::envoy::config::core::v3::HealthStatus::Unhealthy as i32,
                mesh: field("envoy.transport_socket_match", "tlsMode").as_deref() == Some("istio"),
                identity: field("istio", "identity"),
            });
        }
    }
    let weighted: Vec<(String, u32)> = endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    let hash_table = match (lb, &cluster.lb_config) {
        (LoadBalancer::RingHash, config) => {
            let minimum = match config {
                Some(LbConfig::RingHashLbConfig(ring)) => ring.minimum_ring_size.map(|s| s.value),
                _ => None,
            };
            // At least Istio's 1024 points, at most a million.
            let size = usize::try_from(minimum.unwrap_or(1024))
                .unwrap_or(1024)
                .clamp(1, 1 << 20);
            hashing::ring(&weighted, size)
        }
        (LoadBalancer::Maglev, config) => {
            let size = match config {
                Some(LbConfig::MaglevLbConfig(maglev)) => maglev.table_size.map(|s| s.value),
                _ => None,
            };
            let size = usize::try_from(size.unwrap_or(65537))
                .unwrap_or(65537)
                .clamp(1, 5_000_011);
            hashing::maglev(&weighted, size)
        }
        _ => Vec::new(),
    };
    let thresholds = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.first());
    let limit = |value: Option<u32>| value.unwrap_or(u32::MAX);
    let outlier = cluster.outlier_detection.as_ref().map(|o| Outlier {
        // Envoy enforces consecutive 5xx by default and consecutive gateway errors only
        // when asked to.
        consecutive_5xx: if o.enforcing_consecutive_5xx.map_or(100, |v| v.value) > 0 {
            o.consecutive_5xx.map_or(5, |v| v.value)
        } else {
            0
        },
        consecutive_gateway: if o
            .enforcing_consecutive_gateway_failure
            .map_or(0, |v| v.value)
            > 0
        {
            o.consecutive_gateway_failure.map_or(5, |v| v.value)
        } else {
            0
        },
        base_ejection: o
            .base_ejection_time
            .map_or(Duration::from_secs(30), duration),
        max_ejection_percent: o.max_ejection_percent.map_or(10, |v| v.value.min(100)),
    });
    Ok(Cluster {
        max_requests: limit(thresholds.and_then(|t| t.max_requests.map(|v| v.value))),
        max_retries: limit(thresholds.and_then(|t| t.max_retries.map(|v| v.value))),
        outlier,
        name,
        lb,
        hash_table,
        endpoints,
        mesh_tls,
        default_tls,
        protocol,
        connect_timeout: cluster
            .connect_timeout
            .map_or(Duration::from_secs(10), duration),
        passthrough,
    })
}

/// The mesh TLS an upstream transport socket asks for; `None` for plaintext. Only mesh mTLS
/// (certificates from SDS) is supported so far.
fn upstream_tls(cluster: &str, socket: &TransportSocket) -> Result<Option<UpstreamTls>, Rejected> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Ok(None);
    };
    if !any.type_url.ends_with("UpstreamTlsContext") {
        return Ok(None);
    }
    let context: UpstreamTlsContext = decode("cluster", cluster, any)?;
    let common = context.common_tls_context.unwrap_or_default();
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    if common.tls_certificate_sds_secret_configs.is_empty() {
        return originate(cluster, context.sni, common).map(Some);
    }
    let identities = match common.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(combined)) => combined
            .default_validation_context
            .map(|v| {
                v.match_typed_subject_alt_names
                    .into_iter()
                    .filter_map(|m| match m.matcher.and_then(|m| m.match_pattern) {
                        Some(MatchPattern::Exact(id)) => Some(id),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(Some(UpstreamTls::mesh(context.sni, identities)))
}

/// TLS origination (DestinationRule `SIMPLE` or `MUTUAL`) from the files the rule names,
/// read now: a file that cannot be read or used rejects the cluster, and the last good
/// configuration stays.
fn originate(
    cluster: &str,
    sni: String,
    common: weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
) -> Result<UpstreamTls, Rejected> {
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let fail = |what: String| rejected("cluster", cluster, what);
    let validation = match common.validation_context_type {
        Some(ValidationContextType::ValidationContext(validation)) => validation,
        _ => Default::default(),
    };
    let ca = match &validation.trusted_ca {
        Some(source) => data_source(source).map_err(|e| fail(format!("caCertificates: {e}")))?,
        None => crate::tls::system_ca_bundle()
            .ok_or_else(|| fail("no caCertificates given and no system CA bundle found".into()))?,
    };
    let names: Vec<String> = validation
        .match_typed_subject_alt_names
        .into_iter()
        .filter_map(|m| match m.matcher.and_then(|m| m.match_pattern) {
            Some(MatchPattern::Exact(name)) => Some(name),
            _ => None,
        })
        .collect();
    let client = match common.tls_certificates.first() {
        Some(certificate) => {
            let read = |source: &Option<DataSource>, what: &str| match source {
                Some(source) => data_source(source).map_err(|e| fail(format!("{what}: {e}"))),
                None => Err(fail(format!("MUTUAL needs {what}"))),
            };
            Some((
                read(&certificate.certificate_chain, "clientCertificate")?,
                read(&certificate.private_key, "privateKey")?,
            ))
        }
        None => None,
    };
    let config = crate::tls::origination_config(
        &ca,
        &names,
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .map_err(fail)?;
    let mut settings: Vec<&[u8]> = vec![&ca];
    settings.extend(names.iter().map(|n| n.as_bytes()));
    if let Some((chain, key)) = &client {
        settings.extend([chain.as_slice(), key.as_slice()]);
    }
    Ok(UpstreamTls::origination(
        sni,
        config,
        client.is_some(),
        &settings,
    ))
}

/// What a gateway listener accepts: plaintext HTTP from chains without TLS, TLS with the
/// certificate files of the others (read now: one that cannot be read rejects the listener).
fn gateway_port(name: &str, listener: &Listener) -> Result<crate::model::GatewayPort, Rejected> {
    use weft_xds::envoy::envoy::config::core::v3::transport_socket::ConfigType;
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    use weft_xds::envoy::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let fail = |what: String| rejected("listener", name, what);
    let mut port = crate::model::GatewayPort::default();
    for chain in &listener.filter_chains {
        let Some(ConfigType::TypedConfig(any)) = chain
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            port.plaintext = true;
            continue;
        };
        let context: DownstreamTlsContext = decode("listener", name, &any)?;
        let common = context.common_tls_context.unwrap_or_default();
        let certificate = common
            .tls_certificates
            .first()
            .ok_or_else(|| fail(format!("chain {:?} has no server certificate", chain.name)))?;
        let read = |source: &Option<DataSource>, what: &str| match source {
            Some(source) => data_source(source).map_err(|e| fail(format!("{what}: {e}"))),
            None => Err(fail(format!("chain {:?} has no {what}", chain.name))),
        };
        let chain_pem = read(&certificate.certificate_chain, "serverCertificate")?;
        let key_pem = read(&certificate.private_key, "privateKey")?;
        let mutual = context.require_client_certificate.is_some_and(|b| b.value);
        let client_ca = match common.validation_context_type {
            Some(ValidationContextType::ValidationContext(validation)) => {
                Some(read(&validation.trusted_ca, "caCertificates")?)
            }
            _ => None,
        };
        if mutual && client_ca.is_none() {
            return Err(fail(format!(
                "chain {:?} requires client certificates but names no caCertificates",
                chain.name
            )));
        }
        let config = crate::tls::termination_config(
            &chain_pem,
            &key_pem,
            client_ca.as_deref().filter(|_| mutual),
        )
        .map_err(fail)?;
        port.tls.push(crate::model::GatewayTls {
            server_names: chain
                .filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default(),
            mutual,
            config,
        });
    }
    Ok(port)
}

/// The bytes a data source holds: a file's contents, or inline bytes or text.
fn data_source(source: &DataSource) -> Result<Vec<u8>, String> {
    use weft_xds::envoy::envoy::config::core::v3::data_source::Specifier;
    match &source.specifier {
        Some(Specifier::Filename(path)) => {
            std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))
        }
        Some(Specifier::InlineBytes(bytes)) => Ok(bytes.clone()),
        Some(Specifier::InlineString(text)) => Ok(text.as_bytes().to_vec()),
        _ => Err("no data".into()),
    }
}

fn socket_addr(address: &Address) -> Option<SocketAddr> {
    let Some(address::Address::SocketAddress(socket)) = &address.address else {
        return None;
    };
    let ip: IpAddr = socket.address.parse().ok()?;
    let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else {
        return None;
    };
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly when its own setup fails"
    )]

    use super::*;

    #[test]
    fn envoy_substitutions_become_the_regex_crates() {
        assert_eq!(substitution(r"/v2/\1/\2"), "/v2/${1}/${2}");
        assert_eq!(substitution(r"/cost/$5\\x"), r"/cost/$$5\x");
        // As Envoy does, every match is replaced.
        let pattern = Regex::new("one").unwrap();
        let replaced = pattern.replace_all("/xxx/one/yyy/one/zzz", substitution("two").as_str());
        assert_eq!(replaced, "/xxx/two/yyy/two/zzz");
        let groups = Regex::new("^/service/([^/]+)(/.*)$").unwrap();
        let replaced = groups.replace_all(
            "/service/foo/v1/api",
            substitution(r"\2/instance/\1").as_str(),
        );
        assert_eq!(replaced, "/v1/api/instance/foo");
    }
}
