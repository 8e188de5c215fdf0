//! Route configurations: a VirtualService's HTTP rules, in order, as Envoy routes.
//!
//! Each `match` entry of a rule becomes one route with the rule's action, so Envoy's
//! first-match over routes is Istio's first-match over rules with OR'ed matches. With no
//! VirtualService a host gets one catch-all route with Istio's default retry policy. An
//! ingress gateway's routes are built by the same [`virtual_service_routes`], for its
//! [`Place`].

use std::collections::HashMap;

use weft_api::networking::virtual_service::{
    Destination, HeaderOperations, Headers, HttpFaultInjection, HttpMatchRequest, HttpRetry,
    HttpRoute, StringMatch, VirtualService,
};
use weft_xds::envoy::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use weft_xds::envoy::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, route_action::HashPolicy,
    route_action::HostRewriteSpecifier, route_action::RequestMirrorPolicy,
};
use weft_xds::envoy::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use weft_xds::envoy::envoy::extensions::filters::common::fault::v3::{
    FaultDelay, fault_delay::FaultDelaySecifier,
};
use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort::ErrorType,
};
use weft_xds::envoy::envoy::r#type::matcher::v3::RegexMatchAndSubstitute;
use weft_xds::envoy::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use weft_xds::envoy::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use weft_xds::envoy::google::protobuf::{Any, BoolValue, UInt32Value};
use weft_xds::server::Resource;
use weft_xds::types::{pack, proto_map};

use crate::model::MeshSnapshot;
use crate::registry::Service;
use crate::translate::client::Client;
use crate::translate::envoy::{FAULT_FILTER, duration};
use crate::translate::inbound::jwt::{auth_metadata, claim_path};
use crate::translate::names::{cluster_name, parse_cluster_name};
use crate::translate::policy::{effective_policy, resolve_target};

/// Istio's retry policy for a route that has none (Istio ≥ 1.24: 503 is no longer retried).
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// The route configuration called `name`: `<host>:<port>` (a proxyless client's, one
/// service) or `<port>` (a sidecar's, every service on that port, told apart by Host).
pub(crate) fn route_resource(
    snapshot: &MeshSnapshot,
    client: &Client,
    name: &str,
) -> Option<Resource> {
    let config = match name.parse::<u32>() {
        Ok(port) => port_route_configuration(snapshot, client, port)?,
        Err(_) => {
            let (service, port) = resolve_target(snapshot, client, name)?;
            RouteConfiguration {
                name: name.to_string(),
                // The configuration is this service's alone, so any authority it is dialled
                // by is accepted.
                virtual_hosts: vec![virtual_host(
                    snapshot,
                    client,
                    service,
                    port,
                    vec!["*".to_string()],
                )],
                ..RouteConfiguration::default()
            }
        }
    };
    Some(Resource::new(name, pack(&config)))
}

/// A sidecar's routes for one port: a virtual host per service with that port, matched on
/// the names a client may use for it.
fn port_route_configuration(
    snapshot: &MeshSnapshot,
    client: &Client,
    port: u32,
) -> Option<RouteConfiguration> {
    let visible = snapshot.visible(&client.namespace, &client.labels);
    let virtual_hosts: Vec<VirtualHost> = snapshot
        .services
        .values()
        .filter(|s| MeshSnapshot::reachable(s, visible.as_deref()))
        .filter(|s| s.port(Some(port)).is_some_and(|p| p.protocol.is_http()))
        .map(|service| {
            virtual_host(
                snapshot,
                client,
                service,
                port,
                domains(service, port, &client.namespace),
            )
        })
        .collect();
    (!virtual_hosts.is_empty()).then(|| RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        ..RouteConfiguration::default()
    })
}

/// The Host values that mean `service` on `port`: its full name, and for Kubernetes-style
/// hosts the shorter forms — the bare name only from its own namespace.
fn domains(service: &Service, port: u32, client_namespace: &str) -> Vec<String> {
    let mut names = vec![service.host.clone()];
    if let Some(namespace) = crate::registry::service_namespace(&service.host) {
        let short = service.host.split('.').next().unwrap_or_default();
        names.push(format!("{short}.{namespace}"));
        names.push(format!("{short}.{namespace}.svc"));
        if namespace == client_namespace {
            names.push(short.to_string());
        }
    }
    names
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}:{port}")])
        .collect()
}

fn virtual_host(
    snapshot: &MeshSnapshot,
    client: &Client,
    service: &Service,
    port: u32,
    domains: Vec<String>,
) -> VirtualHost {
    let routes = match snapshot.virtual_services.get(&service.host) {
        Some((resource, vs)) => virtual_service_routes(
            snapshot,
            vs,
            resource.namespace(),
            client,
            service,
            port,
            &Place::Mesh,
        ),
        None => {
            // No VirtualService: everything to the service, with the DestinationRule's
            // consistent hashing if it has one.
            let cluster = cluster_name(port, "", &service.host);
            vec![Route {
                r#match: Some(prefix_match("")),
                action: Some(Action::Route(RouteAction {
                    hash_policy: hash_policy(snapshot, &cluster),
                    cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    retry_policy: Some(default_retry_policy()),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }]
        }
    };
    VirtualHost {
        name: format!("{}:{port}", service.host),
        domains,
        routes,
        ..VirtualHost::default()
    }
}

pub(crate) fn virtual_service_routes(
    snapshot: &MeshSnapshot,
    vs: &VirtualService,
    namespace: &str,
    client: &Client,
    service: &Service,
    port: u32,
    place: &Place<'_>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for (index, rule) in vs.http.iter().enumerate() {
        let Some(action) = rule_action(snapshot, rule, namespace, service, port) else {
            continue;
        };
        let per_filter = fault_config(rule.fault.as_ref());
        let matches: Vec<Option<&HttpMatchRequest>> = if rule.matches.is_empty() {
            vec![None]
        } else {
            rule.matches.iter().map(Some).collect()
        };
        for m in matches {
            if m.is_some_and(|m| !place.named_in(&m.gateways, namespace)) {
                continue;
            }
            let route_match = match m {
                None => prefix_match(""),
                Some(m) => match route_match(m, client, port) {
                    Some(route_match) => route_match,
                    None => continue,
                },
            };
            let name = match (rule.name.as_str(), m.map(|m| m.name.as_str()).unwrap_or("")) {
                ("", "") => format!("rule-{index}"),
                (rule_name, "") => rule_name.to_string(),
                (rule_name, match_name) => format!("{rule_name}.{match_name}"),
            };
            let prefix_matched = m
                .and_then(|m| m.uri.as_ref())
                .is_some_and(|u| u.prefix.is_some());
            let (mut request_headers, mut response_headers) =
                header_operations(rule.headers.as_ref());
            // A single destination's header changes apply to the whole route, as in Istio;
            // with several, each weighted cluster carries its own.
            if let [only] = rule.route.as_slice() {
                let (request, response) = header_operations(only.headers.as_ref());
                request_headers.extend(request);
                response_headers.extend(response);
            }
            routes.push(Route {
                name,
                r#match: Some(route_match),
                action: Some(with_rewrite(action.clone(), rule, prefix_matched)),
                typed_per_filter_config: per_filter.clone(),
                request_headers_to_add: request_headers.add,
                request_headers_to_remove: request_headers.remove,
                response_headers_to_add: response_headers.add,
                response_headers_to_remove: response_headers.remove,
                ..Route::default()
            });
        }
    }
    routes
}

/// Where routes are built: in the sidecars (`mesh`) or at a gateway port, which serves the
/// servers of these Gateways (namespace, name).
pub(crate) enum Place<'a> {
    Mesh,
    Gateways(Vec<(&'a str, &'a str)>),
}

impl Place<'_> {
    /// Whether a match's `gateways` (`mesh`, `ns/name`, or `name` in the VirtualService's
    /// `namespace`) take in this place; an empty list leaves it to the VirtualService's
    /// own `gateways`.
    fn named_in(&self, gateways: &[String], namespace: &str) -> bool {
        gateways.is_empty()
            || gateways
                .iter()
                .any(|gateway| match (self, gateway.as_str()) {
                    (Place::Mesh, "mesh") => true,
                    (Place::Mesh, _) | (Place::Gateways(_), "mesh") => false,
                    (Place::Gateways(bound), gateway) => {
                        let (ns, name) = gateway.split_once('/').unwrap_or((namespace, gateway));
                        bound.contains(&(ns, name))
                    }
                })
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(prefix.to_string())),
        ..RouteMatch::default()
    }
}

/// One `match` entry as an Envoy match; `None` when it cannot apply to this client or port
/// (`sourceLabels`, `sourceNamespace` and `port` are decided here, at configuration time).
fn route_match(m: &HttpMatchRequest, client: &Client, port: u32) -> Option<RouteMatch> {
    if m.port.is_some_and(|p| p != port)
        || !weft_api::meta::labels_match(&m.source_labels, &client.labels)
        || m.source_namespace
            .as_ref()
            .is_some_and(|ns| *ns != client.namespace)
    {
        return None;
    }
    let path_specifier = match &m.uri {
        None => PathSpecifier::Prefix(String::new()),
        Some(uri) => match (&uri.exact, &uri.prefix, &uri.regex) {
            (Some(exact), _, _) => PathSpecifier::Path(exact.clone()),
            (_, Some(prefix), _) => PathSpecifier::Prefix(prefix.clone()),
            (_, _, Some(regex)) => PathSpecifier::SafeRegex(regex_matcher(regex)),
            _ => PathSpecifier::Prefix(String::new()),
        },
    };
    let mut headers = Vec::new();
    for (name, value) in [
        (":method", &m.method),
        (":scheme", &m.scheme),
        (":authority", &m.authority),
    ] {
        if let Some(value) = value {
            headers.push(header_matcher(name, value, false));
        }
    }
    // `@request.auth.claims.<name>` keys match a verified token's claim, where a JWT filter
    // runs before routing (at a gateway); the others are headers.
    let mut dynamic_metadata = Vec::new();
    for (invert, conditions) in [(false, &m.headers), (true, &m.without_headers)] {
        for (name, value) in conditions {
            match claim_path(name) {
                Some(path) => {
                    let mut full = vec!["request.auth.claims"];
                    full.extend(path.iter().map(String::as_str));
                    let matcher = string_matcher(value).unwrap_or_else(|| StringMatcher {
                        match_pattern: Some(MatchPattern::SafeRegex(regex_matcher(".+"))),
                        ..StringMatcher::default()
                    });
                    dynamic_metadata.push(auth_metadata(&full, matcher, invert));
                }
                None => headers.push(header_matcher(name, value, invert)),
            }
        }
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|(name, value)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(match string_matcher(value) {
                Some(matcher) => QueryParameterMatchSpecifier::StringMatch(matcher),
                None => QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    Some(RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        dynamic_metadata,
        ..RouteMatch::default()
    })
}

fn regex_matcher(regex: &str) -> RegexMatcher {
    RegexMatcher {
        regex: regex.to_string(),
        ..RegexMatcher::default()
    }
}

fn string_matcher(value: &StringMatch) -> Option<StringMatcher> {
    let pattern = match (&value.exact, &value.prefix, &value.regex) {
        (Some(exact), _, _) => MatchPattern::Exact(exact.clone()),
        (_, Some(prefix), _) => MatchPattern::Prefix(prefix.clone()),
        (_, _, Some(regex)) => MatchPattern::SafeRegex(regex_matcher(regex)),
        _ => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..StringMatcher::default()
    })
}

/// A header condition; an empty match (`{}`) means "present".
fn header_matcher(name: &str, value: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match string_matcher(value) {
        Some(matcher) => HeaderMatchSpecifier::StringMatch(matcher),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        invert_match: invert,
        // Istio treats a missing header as empty for `withoutHeaders`.
        treat_missing_header_as_empty: invert,
    }
}

/// What a rule does: forward, redirect, or answer itself.
fn rule_action(
    snapshot: &MeshSnapshot,
    rule: &HttpRoute,
    namespace: &str,
    service: &Service,
    port: u32,
) -> Option<Action> {
    if let Some(redirect) = &rule.redirect {
        use weft_xds::envoy::envoy::config::route::v3::redirect_action::{
            PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
        };
        let code = match redirect.redirect_code.unwrap_or(301) {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        };
        let path = match (&redirect.uri, &redirect.prefix_rewrite) {
            (Some(uri), _) => Some(PathRewriteSpecifier::PathRedirect(uri.clone())),
            (None, Some(prefix)) => Some(PathRewriteSpecifier::PrefixRewrite(prefix.clone())),
            (None, None) => None,
        };
        return Some(Action::Redirect(RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            port_redirect: redirect.port.unwrap_or(0),
            response_code: code as i32,
            scheme_rewrite_specifier: redirect
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: path,
            ..RedirectAction::default()
        }));
    }
    if let Some(direct) = &rule.direct_response {
        let body = direct
            .body
            .as_ref()
            .and_then(|b| b.string.clone())
            .map(|text| DataSource {
                specifier: Some(data_source::Specifier::InlineString(text)),
                ..DataSource::default()
            });
        return Some(Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body,
            ..DirectResponseAction::default()
        }));
    }
    route_action(snapshot, rule, namespace, service, port).map(Action::Route)
}

/// Adds the rule's rewrite to a forwarding action. Istio replaces the matched prefix when the
/// match was a prefix match, and the whole path otherwise.
fn with_rewrite(action: Action, rule: &HttpRoute, prefix_matched: bool) -> Action {
    let (Action::Route(mut route), Some(rewrite)) = (action.clone(), &rule.rewrite) else {
        return action;
    };
    if let Some(uri) = &rewrite.uri {
        if prefix_matched {
            route.prefix_rewrite = uri.clone();
        } else {
            route.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex_matcher("^.*$")),
                substitution: uri.clone(),
            });
        }
    }
    if let Some(regex) = &rewrite.uri_regex_rewrite {
        route.regex_rewrite = Some(RegexMatchAndSubstitute {
            pattern: Some(regex_matcher(&regex.pattern)),
            substitution: regex.rewrite.clone(),
        });
    }
    if let Some(authority) = &rewrite.authority {
        route.host_rewrite_specifier =
            Some(HostRewriteSpecifier::HostRewriteLiteral(authority.clone()));
    }
    Action::Route(route)
}

#[derive(Default)]
struct HeaderChanges {
    add: Vec<HeaderValueOption>,
    remove: Vec<String>,
}

impl HeaderChanges {
    fn extend(&mut self, more: HeaderChanges) {
        self.add.extend(more.add);
        self.remove.extend(more.remove);
    }
}

/// Istio's header manipulation as Envoy's: `set` overwrites, `add` appends, `remove` removes.
fn header_operations(headers: Option<&Headers>) -> (HeaderChanges, HeaderChanges) {
    let convert = |operations: Option<&HeaderOperations>| {
        let Some(operations) = operations else {
            return HeaderChanges::default();
        };
        let option =
            |name: &String, value: &String, action: HeaderAppendAction| HeaderValueOption {
                header: Some(HeaderValue {
                    key: name.clone(),
                    value: value.clone(),
                    ..HeaderValue::default()
                }),
                append_action: action as i32,
                ..HeaderValueOption::default()
            };
        HeaderChanges {
            add: operations
                .set
                .iter()
                .map(|(k, v)| option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
                .chain(
                    operations
                        .add
                        .iter()
                        .map(|(k, v)| option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
                )
                .collect(),
            remove: operations.remove.clone(),
        }
    };
    (
        convert(headers.and_then(|h| h.request.as_ref())),
        convert(headers.and_then(|h| h.response.as_ref())),
    )
}

/// The forwarding action of a rule; `None` when it has no destinations.
fn route_action(
    snapshot: &MeshSnapshot,
    rule: &HttpRoute,
    namespace: &str,
    service: &Service,
    port: u32,
) -> Option<RouteAction> {
    if rule.route.is_empty() {
        return None;
    }
    let clusters: Vec<(String, u32, Option<&Headers>)> = rule
        .route
        .iter()
        .map(|d| {
            let weight = u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0);
            (
                destination_cluster(snapshot, &d.destination, namespace, service, port),
                weight,
                d.headers.as_ref(),
            )
        })
        .collect();
    let cluster_specifier = if clusters.len() == 1 {
        // A single destination takes all traffic whatever its weight.
        ClusterSpecifier::Cluster(clusters[0].0.clone())
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .filter(|(_, weight, _)| *weight > 0)
                .map(|(name, weight, headers)| {
                    let (request, response) = header_operations(headers);
                    ClusterWeight {
                        name,
                        weight: Some(UInt32Value { value: weight }),
                        request_headers_to_add: request.add,
                        request_headers_to_remove: request.remove,
                        response_headers_to_add: response.add,
                        response_headers_to_remove: response.remove,
                        ..ClusterWeight::default()
                    }
                })
                .collect(),
            ..WeightedCluster::default()
        })
    };
    // Istio: no timeout unless one is set; faults switch retries off on the route.
    let retry_policy = match (&rule.retries, &rule.fault) {
        (_, Some(_)) => None,
        (Some(retries), None) => retry_policy(retries),
        (None, None) => Some(default_retry_policy()),
    };
    Some(RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: Some(duration(
            rule.timeout.as_ref().map(|t| t.get()).unwrap_or_default(),
        )),
        retry_policy,
        request_mirror_policies: mirror_policies(snapshot, rule, namespace, service, port),
        hash_policy: rule
            .route
            .first()
            .map(|d| {
                hash_policy(
                    snapshot,
                    &destination_cluster(snapshot, &d.destination, namespace, service, port),
                )
            })
            .unwrap_or_default(),
        ..RouteAction::default()
    })
}

/// The cluster a destination names. Without a port: the route's own port for the service
/// being routed, else the destination service's only port.
fn destination_cluster(
    snapshot: &MeshSnapshot,
    destination: &Destination,
    namespace: &str,
    service: &Service,
    port: u32,
) -> String {
    let host = crate::registry::fqdn(&destination.host, namespace);
    let destination_port = match &destination.port {
        Some(selector) => selector.number,
        None if host == service.host => port,
        None => snapshot
            .services
            .get(&host)
            .and_then(|s| s.port(None))
            .map_or(port, |p| p.number),
    };
    cluster_name(
        destination_port,
        destination.subset.as_deref().unwrap_or(""),
        &host,
    )
}

/// What a consistent-hash DestinationRule hashes on, for the route to its cluster.
fn hash_policy(snapshot: &MeshSnapshot, cluster: &str) -> Vec<HashPolicy> {
    use weft_xds::envoy::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let Some((port, subset, host)) = parse_cluster_name(cluster) else {
        return Vec::new();
    };
    let policy = effective_policy(snapshot, host, subset, port);
    let Some(hash) = policy
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.consistent_hash.as_ref())
    else {
        return Vec::new();
    };
    let specifier = if let Some(name) = &hash.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: name.to_lowercase(),
            ..Header::default()
        })
    } else if let Some(cookie) = &hash.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: cookie.name.clone(),
            ttl: cookie.ttl.as_ref().map(|t| duration(t.get())),
            path: cookie.path.clone().unwrap_or_default(),
            ..Cookie::default()
        })
    } else if hash.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(name) = &hash.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: name.clone() })
    } else {
        return Vec::new();
    };
    vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..HashPolicy::default()
    }]
}

/// Mirrors: fire-and-forget copies; 100% when no percentage is given, as in Istio.
fn mirror_policies(
    snapshot: &MeshSnapshot,
    rule: &HttpRoute,
    namespace: &str,
    service: &Service,
    port: u32,
) -> Vec<RequestMirrorPolicy> {
    let single = rule.mirror.iter().map(|d| {
        (
            d,
            rule.mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(rule.mirror_percent.map(f64::from)),
        )
    });
    let many = rule
        .mirrors
        .iter()
        .map(|m| (&m.destination, m.percentage.as_ref().map(|p| p.value)));
    single
        .chain(many)
        .map(|(destination, percent)| RequestMirrorPolicy {
            cluster: destination_cluster(snapshot, destination, namespace, service, port),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(per_million(Some(percent.unwrap_or(100.0)))),
                ..RuntimeFractionalPercent::default()
            }),
            ..RequestMirrorPolicy::default()
        })
        .collect()
}

fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(UInt32Value {
            value: DEFAULT_RETRY_ATTEMPTS,
        }),
        host_selection_retry_max_attempts: 5,
        ..RetryPolicy::default()
    }
}

fn retry_policy(retries: &HttpRetry) -> Option<RetryPolicy> {
    if retries.attempts <= 0 {
        return None;
    }
    let mut retry_on = Vec::new();
    let mut status_codes = Vec::new();
    for condition in retries
        .retry_on
        .as_deref()
        .unwrap_or(DEFAULT_RETRY_ON)
        .split(',')
        .map(str::trim)
    {
        match condition.parse::<u32>() {
            Ok(code) => status_codes.push(code),
            Err(_) if !condition.is_empty() => retry_on.push(condition.to_string()),
            Err(_) => {}
        }
    }
    if !status_codes.is_empty() && !retry_on.iter().any(|c| c == "retriable-status-codes") {
        retry_on.push("retriable-status-codes".to_string());
    }
    Some(RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: Some(UInt32Value {
            value: u32::try_from(retries.attempts).unwrap_or(u32::MAX),
        }),
        per_try_timeout: retries.per_try_timeout.as_ref().map(|t| duration(t.get())),
        retriable_status_codes: status_codes,
        host_selection_retry_max_attempts: 5,
        ..RetryPolicy::default()
    })
}

/// A percentage as Envoy's fraction per million.
fn per_million(percent: Option<f64>) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.unwrap_or(0.0).clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// gRPC status names as numbers, for `fault.abort.grpcStatus`.
fn grpc_code(name: &str) -> Option<u32> {
    weft_api::validate::GRPC_STATUS
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// The fault filter's per-route configuration. Istio: with no percentage, nothing is
/// delayed or aborted.
fn fault_config(fault: Option<&HttpFaultInjection>) -> HashMap<String, Any> {
    let Some(fault) = fault else {
        return HashMap::new();
    };
    let delay = fault.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_ref()?;
        let percent = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(|p| p as f64));
        Some(FaultDelay {
            fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(fixed.get()))),
            percentage: Some(per_million(percent)),
        })
    });
    let abort = fault.abort.as_ref().and_then(|a| {
        let error_type = match (&a.http_status, &a.grpc_status) {
            (Some(status), _) => ErrorType::HttpStatus(u32::try_from(*status).ok()?),
            (None, Some(name)) => ErrorType::GrpcStatus(grpc_code(name)?),
            _ => return None,
        };
        Some(FaultAbort {
            error_type: Some(error_type),
            percentage: Some(per_million(a.percentage.as_ref().map(|p| p.value))),
        })
    });
    let config = HttpFault {
        delay,
        abort,
        ..HttpFault::default()
    };
    proto_map([(FAULT_FILTER.to_string(), pack(&config))])
}
