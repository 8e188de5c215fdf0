//! Routing tables: the virtual hosts of each outbound port, their routes in order, what each
//! route matches and what it does (forward to weighted clusters, redirect, answer
//! directly), with its retries, faults and header changes.

use foldhash::HashMap;
use std::time::Duration;

use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use regex::Regex;
use serde::Serialize;

use super::matcher::{HeaderMatch, StringMatch};

/// The virtual hosts of one outbound port.
#[derive(Debug, Default, Serialize)]
pub struct RouteTable {
    /// Virtual hosts in order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Which virtual host each exact domain belongs to (the first that lists it), so that a
    /// request finds its host in one lookup however many services the mesh has.
    #[serde(skip)]
    exact: HashMap<String, usize>,
}

impl RouteTable {
    /// A table of `virtual_hosts`, whose domains are lower case.
    pub fn new(virtual_hosts: Vec<VirtualHost>) -> Self {
        let mut exact = HashMap::default();
        for (index, vh) in virtual_hosts.iter().enumerate() {
            for domain in vh.domains.iter().filter(|d| !d.contains('*')) {
                exact.entry(domain.clone()).or_insert(index);
            }
        }
        Self {
            virtual_hosts,
            exact,
        }
    }

    /// The virtual host for a Host (`authority`, with or without its port): an exact domain
    /// first, then `*.suffix` and `prefix*` wildcards, then `*`.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(authority.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(authority)
        };
        let exact = self
            .exact
            .get(authority.as_ref())
            .and_then(|&index| self.virtual_hosts.get(index));
        exact
            .or_else(|| {
                self.virtual_hosts.iter().find(|vh| {
                    vh.domains.iter().any(|d| {
                        d != "*"
                            && (d.strip_prefix('*').is_some_and(|s| authority.ends_with(s))
                                || d.strip_suffix('*')
                                    .is_some_and(|p| authority.starts_with(p)))
                    })
                })
            })
            .or_else(|| {
                self.virtual_hosts
                    .iter()
                    .find(|vh| vh.domains.iter().any(|d| d == "*"))
            })
    }
}

/// One virtual host: the routes of a service, tried in order.
#[derive(Debug, Serialize)]
pub struct VirtualHost {
    /// Its name.
    pub name: String,
    /// Host names, lower case, some with `:port`.
    pub domains: Vec<String>,
    /// Routes in order; the first that matches wins.
    pub routes: Vec<Route>,
    /// Whether a request that did not arrive over TLS is answered with a 301 to the same
    /// host and path over `https` (Envoy's `require_tls`, from a Gateway server's
    /// `httpsRedirect`).
    pub require_tls: bool,
}

/// One route.
#[derive(Debug, Serialize)]
pub struct Route {
    /// Its name (the VirtualService rule's).
    pub name: String,
    /// When it applies.
    pub matcher: RouteMatch,
    /// What it does.
    pub action: Action,
    /// Headers changed on the request.
    pub request_headers: HeaderChanges,
    /// Headers changed on the response.
    pub response_headers: HeaderChanges,
    /// Faults to inject (VirtualService `fault`).
    pub fault: Option<Fault>,
}

/// Injected faults; each applies to a share of requests, in parts per million.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Wait this long first.
    pub delay: Option<(Duration, u32)>,
    /// Answer with this error instead of forwarding.
    pub abort: Option<(Abort, u32)>,
}

/// The error an abort fault answers with.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Abort {
    /// An HTTP status.
    Http(#[serde(with = "super::dump")] StatusCode),
    /// A gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// When and how often to try a request again (VirtualService `retries`).
#[derive(Debug, Clone, Serialize)]
pub struct Retry {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Envoy's `retry_on` conditions.
    pub on: RetryOn,
    /// Statuses retried under `retriable-status-codes`.
    pub status_codes: Vec<u16>,
    /// Deadline of each attempt.
    pub per_try_timeout: Option<Duration>,
}

/// Envoy's `retry_on` conditions, parsed once; Envoy ignores the names it does not know,
/// and so does Weft. When each one applies is decided by the proxy's retry loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one flag per condition, as Envoy's bit set"
)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a connect failure or a reset.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504, a connect failure or a reset.
    pub gateway_error: bool,
    /// `reset`: the upstream broke off before responding.
    pub reset: bool,
    /// `connect-failure`: no connection could be made.
    pub connect_failure: bool,
    /// `refused-stream`: the upstream refused the stream.
    pub refused_stream: bool,
    /// `retriable-status-codes`: a status of [`Retry::status_codes`].
    pub status_codes: bool,
    /// gRPC `cancelled` (1).
    pub grpc_cancelled: bool,
    /// gRPC `deadline-exceeded` (4).
    pub grpc_deadline_exceeded: bool,
    /// gRPC `resource-exhausted` (8).
    pub grpc_resource_exhausted: bool,
    /// gRPC `internal` (13).
    pub grpc_internal: bool,
    /// gRPC `unavailable` (14).
    pub grpc_unavailable: bool,
}

impl RetryOn {
    /// The conditions of an Envoy `retry_on` list (`5xx,connect-failure,...`).
    pub fn parse(list: &str) -> Self {
        let mut on = Self::default();
        for condition in list.split(',').map(str::trim) {
            let flag = match condition {
                "5xx" => &mut on.server_error,
                "gateway-error" => &mut on.gateway_error,
                "reset" => &mut on.reset,
                "connect-failure" => &mut on.connect_failure,
                "refused-stream" => &mut on.refused_stream,
                "retriable-status-codes" => &mut on.status_codes,
                "cancelled" => &mut on.grpc_cancelled,
                "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
                "resource-exhausted" => &mut on.grpc_resource_exhausted,
                "internal" => &mut on.grpc_internal,
                "unavailable" => &mut on.grpc_unavailable,
                _ => continue,
            };
            *flag = true;
        }
        on
    }
}

/// Conditions on a request; all must hold.
#[derive(Debug, Serialize)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// Whether the path comparison ignores case.
    pub ignore_case: bool,
    /// Header conditions (`:method` and `:authority` included).
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query: Vec<QueryMatch>,
    /// Conditions on the request's verified token (`@request.auth.claims`, at a gateway
    /// that authenticates them).
    pub claims: Vec<super::authn::AuthMatch>,
}

/// How a path is compared.
#[derive(Debug, Serialize)]
pub enum PathMatch {
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Matches the whole path.
    Regex(#[serde(with = "super::dump")] Regex),
}

/// A query parameter condition.
#[derive(Debug, Serialize)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// The condition.
    pub condition: StringMatch,
}

/// What a route does.
#[derive(Debug, Serialize)]
pub enum Action {
    /// Forward to clusters, by weight.
    Forward(Forward),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct {
        /// Status code.
        #[serde(with = "super::dump")]
        status: StatusCode,
        /// Body.
        #[serde(with = "super::dump")]
        body: Bytes,
    },
}

/// Forwarding.
#[derive(Debug, Serialize)]
pub struct Forward {
    /// Clusters with their weights (weights of one cluster alone do not matter).
    pub clusters: Vec<WeightedCluster>,
    /// The whole request's deadline; none when zero.
    pub timeout: Option<Duration>,
    /// Replace a matched prefix of the path.
    pub prefix_rewrite: Option<String>,
    /// Replace the path by a regex substitution.
    pub regex_rewrite: Option<RegexRewrite>,
    /// Replace the Host.
    pub host_rewrite: Option<String>,
    /// What to hash for consistent-hash clusters; the first that yields a value is used.
    pub hash_policy: Vec<HashOn>,
    /// Retries, if any.
    pub retry: Option<Retry>,
    /// How many requests took this route, for spreading them over the weights.
    #[serde(skip)]
    pub picks: std::sync::atomic::AtomicU64,
}

/// What a request's hash is taken from (DestinationRule `consistentHash`).
#[derive(Debug, Clone, Serialize)]
pub enum HashOn {
    /// A header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// A regex substitution of the path.
#[derive(Debug, Serialize)]
pub struct RegexRewrite {
    /// What to replace.
    #[serde(with = "super::dump")]
    pub pattern: Regex,
    /// What to put instead, in the regex crate's syntax (`${1}` for a group); the adapter
    /// translates Envoy's (`\1`).
    pub substitution: String,
}

/// One destination of a forwarding route.
#[derive(Debug, Serialize)]
pub struct WeightedCluster {
    /// The cluster.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// Headers changed on requests to it.
    pub request_headers: HeaderChanges,
    /// Headers changed on its responses.
    pub response_headers: HeaderChanges,
}

/// A redirect.
#[derive(Debug, Serialize)]
pub struct Redirect {
    /// Status code (301, 302, 303, 307, 308).
    #[serde(with = "super::dump")]
    pub status: StatusCode,
    /// New scheme, if any.
    pub scheme: Option<String>,
    /// New host, if any.
    pub host: Option<String>,
    /// New port, if any.
    pub port: Option<u16>,
    /// New path, if any.
    pub path: Option<String>,
    /// Replacement for the matched prefix, if any.
    pub prefix: Option<String>,
}

/// Header changes: set (overwrite), add (append), remove.
#[derive(Debug, Default, Serialize)]
pub struct HeaderChanges {
    /// Overwritten.
    #[serde(with = "super::dump")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Appended.
    #[serde(with = "super::dump")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Removed.
    #[serde(with = "super::dump")]
    pub remove: Vec<HeaderName>,
}
