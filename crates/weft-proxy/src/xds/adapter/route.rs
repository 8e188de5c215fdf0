//! Route configurations (RDS) into [`RouteTable`]s: virtual hosts, routes in order, what
//! each matches and does, with retries, faults and header changes. Statuses, header names
//! and values and regexes are parsed here; one that does not parse rejects the route
//! configuration, as Envoy's validation does.

use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use weft_xds::envoy::envoy::config::core::v3::HeaderValueOption;
use weft_xds::envoy::envoy::config::core::v3::data_source::Specifier;
use weft_xds::envoy::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use weft_xds::envoy::envoy::config::route::v3 as xds;
use weft_xds::envoy::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use weft_xds::envoy::envoy::config::route::v3::route::Action as XdsAction;
use weft_xds::envoy::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use weft_xds::envoy::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use weft_xds::envoy::envoy::config::route::v3::route_match::PathSpecifier;
use weft_xds::envoy::envoy::config::route::v3::{RouteConfiguration, redirect_action};
use weft_xds::envoy::google::protobuf::Any;

use super::matcher::{header_match, regex, string_match};
use super::proto::{decode_any, duration};
use crate::model::{
    Abort, Action, Fault, Forward, HashOn, HeaderChanges, PathMatch, QueryMatch, Redirect,
    RegexRewrite, Retry, RetryOn, Route, RouteMatch, RouteTable, StringMatch, VirtualHost,
    WeightedCluster,
};

/// The statuses Envoy accepts in a direct response or an abort: `[200, 600)`.
const LOCAL_STATUSES: std::ops::Range<u32> = 200..600;

/// A route configuration's table.
pub(super) fn route_table(config: RouteConfiguration) -> Result<RouteTable, String> {
    let mut virtual_hosts = Vec::new();
    for vh in config.virtual_hosts {
        let routes = vh
            .routes
            .into_iter()
            .map(route)
            .collect::<Result<Vec<_>, _>>()?;
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

fn route(route: xds::Route) -> Result<Route, String> {
    let matcher = route_match(route.r#match.unwrap_or_default())?;
    let action = match route.action {
        Some(XdsAction::Route(action)) => Action::Forward(forward(action)?),
        Some(XdsAction::Redirect(redirect)) => Action::Redirect(self::redirect(redirect)),
        Some(XdsAction::DirectResponse(direct)) => Action::Direct {
            status: local_status(direct.status)?,
            body: match direct.body.and_then(|b| b.specifier) {
                Some(Specifier::InlineString(text)) => Bytes::from(text),
                Some(Specifier::InlineBytes(bytes)) => Bytes::from(bytes),
                _ => Bytes::new(),
            },
        },
        _ => {
            return Err(format!(
                "route {} has an action this proxy does not support",
                route.name
            ));
        }
    };
    let fault = route
        .typed_per_filter_config
        .get("envoy.filters.http.fault")
        .map(fault)
        .transpose()?
        .flatten();
    Ok(Route {
        name: route.name,
        matcher,
        action,
        fault,
        request_headers: header_changes(
            &route.request_headers_to_add,
            &route.request_headers_to_remove,
        )?,
        response_headers: header_changes(
            &route.response_headers_to_add,
            &route.response_headers_to_remove,
        )?,
    })
}

fn forward(action: xds::RouteAction) -> Result<Forward, String> {
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
            .map(|c| {
                Ok(WeightedCluster {
                    request_headers: header_changes(
                        &c.request_headers_to_add,
                        &c.request_headers_to_remove,
                    )?,
                    response_headers: header_changes(
                        &c.response_headers_to_add,
                        &c.response_headers_to_remove,
                    )?,
                    name: c.name,
                    weight: c.weight.map_or(1, |w| w.value),
                })
            })
            .collect::<Result<_, String>>()?,
        _ => return Err("a route names no cluster".to_string()),
    };
    Ok(Forward {
        clusters,
        timeout: action.timeout.map(duration).filter(|t| !t.is_zero()),
        prefix_rewrite: Some(action.prefix_rewrite).filter(|p| !p.is_empty()),
        regex_rewrite: action
            .regex_rewrite
            .map(|r| {
                Ok::<_, String>(RegexRewrite {
                    pattern: regex(&r.pattern.unwrap_or_default().regex)?,
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
            on: RetryOn::parse(&policy.retry_on),
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
                PolicySpecifier::ConnectionProperties(c) if c.source_ip => Some(HashOn::SourceIp),
                PolicySpecifier::QueryParameter(q) => Some(HashOn::QueryParameter(q.name)),
                _ => None,
            })
            .collect(),
    })
}

fn redirect(redirect: xds::RedirectAction) -> Redirect {
    use redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    Redirect {
        status: match RedirectResponseCode::try_from(redirect.response_code) {
            Ok(RedirectResponseCode::Found) => StatusCode::FOUND,
            Ok(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
            Ok(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
            Ok(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
            _ => StatusCode::MOVED_PERMANENTLY,
        },
        scheme: match redirect.scheme_rewrite_specifier {
            Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s),
            Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
            _ => None,
        },
        host: Some(redirect.host_redirect).filter(|h| !h.is_empty()),
        port: u16::try_from(redirect.port_redirect)
            .ok()
            .filter(|p| *p != 0),
        path: match &redirect.path_rewrite_specifier {
            Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
            _ => None,
        },
        prefix: match redirect.path_rewrite_specifier {
            Some(PathRewriteSpecifier::PrefixRewrite(p)) => Some(p),
            _ => None,
        },
    }
}

/// A status a route answers with itself.
fn local_status(status: u32) -> Result<StatusCode, String> {
    LOCAL_STATUSES
        .contains(&status)
        .then(|| u16::try_from(status).ok())
        .flatten()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("status {status} is not in [200, 600)"))
}

/// The fault filter's per-route configuration; `None` when it injects nothing.
fn fault(any: &Any) -> Result<Option<Fault>, String> {
    use weft_xds::envoy::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
    use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::HttpFault;
    use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
    use weft_xds::envoy::envoy::r#type::v3::FractionalPercent;
    let fault: HttpFault = decode_any(any)?;
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
    let abort = match fault.abort {
        Some(a) => {
            let abort = match a.error_type {
                Some(ErrorType::HttpStatus(status)) => Some(Abort::Http(local_status(status)?)),
                Some(ErrorType::GrpcStatus(code)) => Some(Abort::Grpc(code)),
                _ => None,
            };
            abort.map(|abort| (abort, per_million(a.percentage)))
        }
        None => None,
    };
    Ok((delay.is_some() || abort.is_some()).then_some(Fault { delay, abort }))
}

fn route_match(m: xds::RouteMatch) -> Result<RouteMatch, String> {
    let path = match m.path_specifier {
        Some(PathSpecifier::Prefix(prefix)) => PathMatch::Prefix(prefix),
        Some(PathSpecifier::Path(path)) => PathMatch::Exact(path),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(regex(&r.regex)?),
        _ => PathMatch::Prefix(String::new()),
    };
    let headers = m
        .headers
        .iter()
        .map(header_match)
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(|q| {
            Ok(QueryMatch {
                name: q.name.clone(),
                condition: match &q.query_parameter_match_specifier {
                    Some(QueryParameterMatchSpecifier::StringMatch(s)) => string_match(s)?,
                    _ => StringMatch::Present,
                },
            })
        })
        .collect::<Result<_, String>>()?;
    if !m.cookies.is_empty() || !m.filter_state.is_empty() {
        return Err("route matches on cookies or filter state are not supported".to_string());
    }
    let claims = m
        .dynamic_metadata
        .iter()
        .map(super::jwt::auth_match)
        .collect::<Result<_, _>>()?;
    Ok(RouteMatch {
        path,
        ignore_case: m.case_sensitive.is_some_and(|c| !c.value),
        headers,
        query,
        claims,
    })
}

/// Header changes, parsed: a name or value that is not a valid header rejects the route
/// configuration.
fn header_changes(add: &[HeaderValueOption], remove: &[String]) -> Result<HeaderChanges, String> {
    let name = |name: &str| {
        HeaderName::try_from(name.to_ascii_lowercase())
            .map_err(|_| format!("{name:?} is not a header name"))
    };
    let mut changes = HeaderChanges {
        remove: remove.iter().map(|r| name(r)).collect::<Result<_, _>>()?,
        ..HeaderChanges::default()
    };
    for option in add {
        let Some(header) = &option.header else {
            continue;
        };
        let value = HeaderValue::from_str(&header.value)
            .map_err(|_| format!("the value of header {:?} is not a header value", header.key))?;
        let pair = (name(&header.key)?, value);
        if option.append_action == HeaderAppendAction::AppendIfExistsOrAdd as i32 {
            changes.add.push(pair);
        } else {
            changes.set.push(pair);
        }
    }
    Ok(changes)
}

/// Envoy's regex substitution (RE2's: `\1` for a group, `\\` for a backslash, anything else
/// literal) in the regex crate's syntax (`${1}`, `$$` for a dollar sign).
pub(super) fn substitution(envoy: &str) -> String {
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

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a test fails loudly when its own setup fails"
    )]

    use super::*;
    use regex::Regex;

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
