//! `VirtualService`: how requests to a set of hosts are matched and routed.
//!
//! Semantics Weft keeps from Istio: HTTP rules are tried in order and the first match wins;
//! inside one rule the `match` entries are OR'ed and the fields of one entry AND'ed; weights
//! are relative (a share is `weight / sum(weights)`); a route with no `retries` gets Istio's
//! default retry policy; no `timeout` means none.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Percent, PortSelector};
use crate::Duration;

/// The `spec` of a VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualService {
    /// Destination hosts the rules apply to (short names resolve in the resource's namespace).
    pub hosts: Vec<String>,
    /// Gateways and sidecars the rules apply to; empty means `mesh` (every sidecar).
    pub gateways: Vec<String>,
    /// Ordered HTTP rules.
    pub http: Vec<HttpRoute>,
    /// Ordered rules for unterminated TLS, matched on SNI.
    pub tls: Vec<TlsRoute>,
    /// Ordered rules for opaque TCP.
    pub tcp: Vec<TcpRoute>,
    /// Namespaces the resource is visible to; empty means all.
    pub export_to: Vec<String>,
}

/// `HTTPRoute`: one HTTP rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    /// A name for the rule, logged in access logs.
    pub name: String,
    /// Conditions, OR'ed; empty matches every request.
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of routing.
    pub redirect: Option<HttpRedirect>,
    /// Answer directly instead of routing.
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand the rule over to another VirtualService.
    pub delegate: Option<Delegate>,
    /// Rewrite the path or authority before forwarding.
    pub rewrite: Option<HttpRewrite>,
    /// Total time for the request, retries included; none when absent.
    pub timeout: Option<Duration>,
    /// Retry policy; Istio's default policy when absent.
    pub retries: Option<HttpRetry>,
    /// Fault injection.
    pub fault: Option<HttpFaultInjection>,
    /// Send a copy of each request to this destination too.
    pub mirror: Option<Destination>,
    /// Several mirror destinations.
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Share of requests mirrored; 100 when absent.
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<u32>,
    /// Cross-origin resource sharing.
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation for the whole rule.
    pub headers: Option<Headers>,
}

/// `HTTPMatchRequest`: conditions that must all hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    /// A name for the match, appended to the rule's.
    pub name: String,
    /// Path match.
    pub uri: Option<StringMatch>,
    /// `:scheme` match.
    pub scheme: Option<StringMatch>,
    /// `:method` match.
    pub method: Option<StringMatch>,
    /// `:authority` (Host) match.
    pub authority: Option<StringMatch>,
    /// Header matches; keys lower case; `{}` means "present".
    pub headers: BTreeMap<String, StringMatch>,
    /// Only on this listener port.
    pub port: Option<u32>,
    /// Only for client workloads with these labels (a config-time selector).
    pub source_labels: BTreeMap<String, String>,
    /// Overrides the resource's `gateways` for this match.
    pub gateways: Vec<String>,
    /// Query parameter matches.
    pub query_params: BTreeMap<String, StringMatch>,
    /// Match `uri` exact and prefix case-insensitively.
    pub ignore_uri_case: bool,
    /// Headers that must not match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Only for client workloads in this namespace.
    pub source_namespace: Option<String>,
    /// Prefix for per-route statistics.
    pub stat_prefix: Option<String>,
}

/// `StringMatch`: exactly one of `exact`, `prefix` or `regex` (RE2, whole string).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatch {
    /// The whole value equals this.
    pub exact: Option<String>,
    /// The value starts with this.
    pub prefix: Option<String>,
    /// The whole value matches this RE2 expression.
    pub regex: Option<String>,
}

/// `HTTPRouteDestination`: a destination and its relative weight.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative weight; a single destination gets everything whatever its weight.
    pub weight: Option<i64>,
    /// Header manipulation for this destination.
    pub headers: Option<Headers>,
}

/// `Destination`: a service, optionally a subset and port of it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Destination {
    /// The service host (short names resolve in the resource's namespace).
    pub host: String,
    /// A subset defined by a DestinationRule for the host.
    pub subset: Option<String>,
    /// The service port, required when the service has several.
    pub port: Option<PortSelector>,
}

/// `Headers`: request and response header manipulation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Headers {
    /// Applied before forwarding the request.
    pub request: Option<HeaderOperations>,
    /// Applied before returning the response.
    pub response: Option<HeaderOperations>,
}

/// `HeaderOperations`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    pub remove: Vec<String>,
}

/// `HTTPRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRedirect {
    /// Replace the whole path.
    pub uri: Option<String>,
    /// Replace the matched prefix (the match must be a prefix match).
    pub prefix_rewrite: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Replace the port.
    pub port: Option<u32>,
    /// Derive the port instead of naming it.
    pub derive_port: Option<RedirectPortSelection>,
    /// Replace the scheme.
    pub scheme: Option<String>,
    /// Status code; 301 when absent.
    pub redirect_code: Option<u32>,
}

/// `HTTPRedirect.RedirectPortSelection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

/// `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpDirectResponse {
    /// Status code, required.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: a string or base64 bytes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpBody {
    /// Text body.
    pub string: Option<String>,
    /// Base64 body.
    pub bytes: Option<String>,
}

/// `Delegate`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: String,
    /// Its namespace; the root's when absent.
    pub namespace: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    /// Replace the matched prefix, or the whole path when the match was not a prefix.
    pub uri: Option<String>,
    /// Replace the authority.
    pub authority: Option<String>,
    /// Rewrite the path with a regular expression.
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegexRewrite {
    /// RE2 expression to match.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement, with `\1`-style captures.
    pub rewrite: String,
}

/// `HTTPRetry`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    /// Number of retries (not tries); 0 disables retries.
    pub attempts: i64,
    /// Timeout per try; the route timeout when absent.
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated retry conditions.
    pub retry_on: Option<String>,
    /// Retry into other localities.
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts already tried; true when absent.
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval of the exponential backoff; 25ms when absent.
    pub backoff: Option<Duration>,
}

/// `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpFaultInjection {
    /// Delay some requests.
    pub delay: Option<FaultDelay>,
    /// Fail some requests.
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultDelay {
    /// The delay.
    pub fixed_delay: Option<Duration>,
    /// Exponential delay (hidden and unsupported in Istio).
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed; none when absent.
    pub percentage: Option<Percent>,
    /// Deprecated integer form of `percentage`.
    pub percent: Option<i64>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultAbort {
    /// HTTP status to answer with.
    pub http_status: Option<i64>,
    /// gRPC status name to answer with (`UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// HTTP/2 error to reset the stream with.
    pub http2_error: Option<String>,
    /// Share of requests aborted; none when absent.
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMirrorPolicy {
    /// Where copies go.
    pub destination: Destination,
    /// Share of requests mirrored; 100 when absent.
    pub percentage: Option<Percent>,
}

/// `CorsPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    /// Allowed origins.
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact-match form of `allowOrigins`.
    pub allow_origin: Vec<String>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credentials: Option<bool>,
    /// What to do with preflight requests from origins that do not match.
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// `CorsPolicy.UnmatchedPreflights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Same as `FORWARD`.
    UnspecifiedValue,
    /// Forward them to the upstream.
    Forward,
    /// Answer them without CORS headers.
    Ignore,
}

/// `TLSRoute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsRoute {
    /// Conditions, OR'ed.
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

/// `TLSMatchAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsMatchAttributes {
    /// SNI names, required; each within the resource's hosts.
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDRs.
    pub destination_subnets: Vec<String>,
    /// Listener port.
    pub port: Option<u32>,
    /// Client workload labels (config-time selector).
    pub source_labels: BTreeMap<String, String>,
    /// Overrides the resource's gateways.
    pub gateways: Vec<String>,
    /// Client namespace.
    pub source_namespace: Option<String>,
}

/// `TCPRoute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    /// Conditions, OR'ed.
    #[serde(rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

/// `L4MatchAttributes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDRs.
    pub destination_subnets: Vec<String>,
    /// Listener port.
    pub port: Option<u32>,
    /// Client workload labels (config-time selector).
    pub source_labels: BTreeMap<String, String>,
    /// Overrides the resource's gateways.
    pub gateways: Vec<String>,
    /// Client namespace.
    pub source_namespace: Option<String>,
    /// Client subnet (hidden in Istio).
    pub source_subnet: Option<String>,
}

/// `RouteDestination` of TLS and TCP routes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative weight.
    pub weight: Option<i64>,
}
