//! The proxy's own configuration model: what the data path reads on every request, built
//! from xDS by [`crate::adapter`] and swapped whole when a new configuration is accepted.
//! Nothing here is a protobuf type.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Serialize;

/// One accepted configuration.
#[derive(Debug, Default, Serialize)]
pub struct Model {
    /// Route tables by name: `<port>` for outbound ports.
    pub routes: HashMap<String, Arc<RouteTable>>,
    /// The route table of each outbound port.
    pub outbound_ports: HashMap<u16, String>,
    /// Outbound ports whose protocol is detected per connection: HTTP is routed, the rest
    /// passes through as opaque TCP.
    pub sniffed_ports: std::collections::HashSet<u16>,
    /// A gateway's ports, which it listens on itself.
    pub gateway_ports: HashMap<u16, GatewayPort>,
    /// Clusters by name (`outbound|9080|v1|reviews.shop.svc.cluster.local`).
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// How each inbound port accepts connections.
    pub inbound: HashMap<u16, InboundPort>,
}

impl Model {
    /// The route table for an outbound HTTP port.
    pub fn route_table(&self, port: u16) -> Option<&RouteTable> {
        self.routes
            .get(self.outbound_ports.get(&port)?)
            .map(Arc::as_ref)
    }
}

/// What an inbound port accepts (from PeerAuthentication, through the inbound listener),
/// and who may use it (AuthorizationPolicy).
#[derive(Debug, Default, Serialize)]
pub struct InboundPort {
    /// Mesh mTLS connections.
    pub mtls: bool,
    /// Plaintext connections.
    pub plaintext: bool,
    /// HTTP to the application, authorized by these policies.
    pub http: Option<crate::rbac::Rbac>,
    /// Opaque TCP to the application, authorized by these policies. A port with both takes
    /// each connection as what its first bytes say ([`crate::sniff`]).
    pub tcp: Option<crate::rbac::Rbac>,
}

/// What a gateway port accepts.
#[derive(Debug, Default, Serialize)]
pub struct GatewayPort {
    /// Plaintext HTTP.
    pub plaintext: bool,
    /// TLS servers, tried in order.
    pub tls: Vec<GatewayTls>,
}

/// A TLS server of a gateway port.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayTls {
    /// SNI names it answers; empty for any.
    pub server_names: Vec<String>,
    /// Whether clients must present a certificate.
    pub mutual: bool,
    /// The server's TLS configuration.
    #[serde(skip)]
    pub config: Arc<rustls::ServerConfig>,
}

impl GatewayTls {
    /// Whether it answers the SNI name `name` (`*.example.com` covers one more label).
    pub fn answers(&self, name: Option<&str>) -> bool {
        if self.server_names.is_empty() {
            return true;
        }
        let Some(name) = name else {
            return false;
        };
        self.server_names.iter().any(|pattern| {
            pattern.eq_ignore_ascii_case(name)
                || pattern.strip_prefix('*').is_some_and(|suffix| {
                    name.len() > suffix.len()
                        && name.as_bytes()[name.len() - suffix.len()..]
                            .eq_ignore_ascii_case(suffix.as_bytes())
                })
        })
    }
}

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
    Http(u16),
    /// A gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// When and how often to try a request again (VirtualService `retries`).
#[derive(Debug, Clone, Serialize)]
pub struct Retry {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Envoy's `retry_on` conditions (`5xx`, `connect-failure`, `unavailable`, …).
    pub on: Vec<String>,
    /// Statuses retried under `retriable-status-codes`.
    pub status_codes: Vec<u16>,
    /// Deadline of each attempt.
    pub per_try_timeout: Option<Duration>,
}

impl Retry {
    fn has(&self, condition: &str) -> bool {
        self.on.iter().any(|c| c == condition)
    }

    /// Whether an attempt that could not connect, or was reset, is retried.
    pub fn on_failure(&self, connect: bool) -> bool {
        self.has("5xx")
            || self.has("gateway-error")
            || self.has("reset")
            || (connect && self.has("connect-failure"))
            || (!connect && self.has("refused-stream"))
    }

    /// Whether a response is retried: by status, or by its gRPC status.
    pub fn on_response(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (status >= 500 && self.has("5xx"))
            || (matches!(status, 502..=504) && self.has("gateway-error"))
            || (self.has("retriable-status-codes") && self.status_codes.contains(&status))
            || grpc_status.is_some_and(|code| {
                let name = match code {
                    1 => "cancelled",
                    4 => "deadline-exceeded",
                    8 => "resource-exhausted",
                    13 => "internal",
                    14 => "unavailable",
                    _ => return false,
                };
                self.has(name)
            })
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
}

/// How a path is compared.
#[derive(Debug, Serialize)]
pub enum PathMatch {
    /// Starts with.
    Prefix(String),
    /// Equals.
    Exact(String),
    /// Matches the whole path.
    Regex(#[serde(with = "regex_text")] Regex),
}

/// A string condition.
#[derive(Debug, Serialize)]
pub enum StringMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Contains.
    Contains(String),
    /// Matches entirely.
    Regex(#[serde(with = "regex_text")] Regex),
    /// Present, whatever the value.
    Present,
}

impl StringMatch {
    /// Whether `value` satisfies the condition (`None`: absent).
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        match self {
            Self::Exact(s) => value == s,
            Self::Prefix(s) => value.starts_with(s.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
            Self::Contains(s) => value.contains(s.as_str()),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }
}

/// A header condition.
#[derive(Debug, Serialize)]
pub struct HeaderMatch {
    /// Header name, lower case (`:method`, `:authority` too).
    pub name: String,
    /// The condition.
    pub condition: StringMatch,
    /// Holds when the condition does not (`withoutHeaders`).
    pub invert: bool,
    /// An absent header counts as empty.
    pub missing_is_empty: bool,
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
        status: u16,
        /// Body.
        body: String,
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
    #[serde(with = "regex_text")]
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
    pub status: u16,
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
    pub set: Vec<(String, String)>,
    /// Appended.
    pub add: Vec<(String, String)>,
    /// Removed.
    pub remove: Vec<String>,
}

/// A cluster: where a route sends requests.
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// Its name.
    pub name: String,
    /// How an endpoint is chosen.
    pub lb: LoadBalancer,
    /// Its endpoints (from EDS, or static).
    pub endpoints: Vec<Endpoint>,
    /// How to connect to endpoints marked as mesh workloads (auto-mTLS).
    pub mesh_tls: Option<UpstreamTls>,
    /// How to connect to the others.
    pub default_tls: Option<UpstreamTls>,
    /// Which HTTP version to speak to the upstream.
    pub protocol: UpstreamHttp,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whether this is the passthrough cluster (to the original destination).
    pub passthrough: bool,
    /// For consistent hashing: a sorted ring of (point, endpoint index) for ring hash, or
    /// Maglev's table (endpoint index by slot, point = slot).
    #[serde(skip)]
    pub hash_table: Vec<(u64, usize)>,
    /// Circuit breakers: most requests in flight and most retries in flight (Istio's
    /// `http2MaxRequests` and `maxRetries`; unlimited by default).
    pub max_requests: u32,
    /// Most retries in flight at once.
    pub max_retries: u32,
    /// Outlier detection, if configured.
    pub outlier: Option<Outlier>,
}

/// Outlier detection: endpoints that keep failing are ejected for a while.
#[derive(Debug, Clone, Serialize)]
pub struct Outlier {
    /// Consecutive 5xx (and connect failures) that eject an endpoint; 0 turns this off.
    pub consecutive_5xx: u32,
    /// Consecutive 502, 503 and 504 (and connect failures) that eject one; 0 turns this off.
    pub consecutive_gateway: u32,
    /// How long the first ejection lasts; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// The largest share of a cluster's endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
}

/// TLS towards an upstream: the mesh's mTLS, or origination to a server outside the mesh.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamTls {
    /// SNI sent.
    pub sni: String,
    /// Mesh mTLS: SPIFFE IDs the server may present (any mesh identity when empty).
    pub identities: Vec<String>,
    /// Origination (DestinationRule `SIMPLE` or `MUTUAL`): what the server is checked
    /// against and what is presented, from the rule's files. `None` for mesh mTLS.
    #[serde(skip)]
    pub origination: Option<Arc<rustls::ClientConfig>>,
    /// Whether the origination presents a client certificate (`MUTUAL`).
    pub mutual: bool,
    /// A digest of the settings, which keys the connection pool (connections are shared
    /// only between requests that would verify the server alike).
    #[serde(skip)]
    pub fingerprint: u64,
}

impl UpstreamTls {
    /// Mesh mTLS sending `sni` and accepting `identities`.
    pub fn mesh(sni: String, identities: Vec<String>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        (&sni, &identities).hash(&mut hasher);
        Self {
            sni,
            identities,
            origination: None,
            mutual: false,
            fingerprint: hasher.finish(),
        }
    }

    /// TLS origination sending `sni` with `config`; `settings` are the bytes it was made
    /// from (files' contents), for the pool key.
    pub fn origination(
        sni: String,
        config: Arc<rustls::ClientConfig>,
        mutual: bool,
        settings: &[&[u8]],
    ) -> Self {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        (&sni, settings, mutual).hash(&mut hasher);
        Self {
            sni,
            identities: Vec::new(),
            origination: Some(config),
            mutual,
            fingerprint: hasher.finish(),
        }
    }
}

/// Load balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LoadBalancer {
    /// In turn.
    RoundRobin,
    /// The less busy of two picked at random.
    LeastRequest,
    /// At random.
    Random,
    /// Consistent hashing on a ring ([`Cluster::hash_table`]).
    RingHash,
    /// Consistent hashing with Maglev's lookup table ([`Cluster::hash_table`]).
    Maglev,
}

/// One endpoint.
#[derive(Debug, Serialize)]
pub struct Endpoint {
    /// Its address.
    pub address: SocketAddr,
    /// Relative weight.
    pub weight: u32,
    /// Whether the control plane says it is healthy.
    pub healthy: bool,
    /// A mesh workload (auto-mTLS applies).
    pub mesh: bool,
    /// The identity it must present.
    pub identity: Option<String>,
}

mod regex_text {
    use regex::Regex;
    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(
        regex: &Regex,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(regex.as_str())
    }
}

/// Which HTTP version a cluster's upstream connections speak (Envoy's explicit or
/// use-downstream protocol options).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum UpstreamHttp {
    /// HTTP/1.1 (Envoy's default).
    #[default]
    Http1,
    /// HTTP/2.
    Http2,
    /// Whatever the client spoke (`useClientProtocol`; inbound ports of unknown protocol).
    Downstream,
}

impl UpstreamHttp {
    /// Whether to speak HTTP/2 for a request that arrived over HTTP/2 (`downstream_http2`)
    /// or not.
    pub fn http2(self, downstream_http2: bool) -> bool {
        match self {
            Self::Http1 => false,
            Self::Http2 => true,
            Self::Downstream => downstream_http2,
        }
    }
}
