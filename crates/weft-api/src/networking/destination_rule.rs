//! `DestinationRule`: policy for traffic to a service once routing has chosen it — load
//! balancing, connection pool limits (circuit breaking), outlier detection, client TLS — and
//! the named subsets routes can target.
//!
//! Semantics Weft keeps from Istio: subset policies override the top-level policy field by
//! field and apply only when a route targets the subset; port-level settings replace the
//! top-level policy for their port (unset fields take defaults, not the parent's values).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::PortSelector;
use crate::Duration;
use crate::meta::WorkloadSelector;

/// The `spec` of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRule {
    /// The service the rule applies to (short names resolve in the resource's namespace).
    pub host: String,
    /// Policy for the whole service.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets of the service's endpoints.
    pub subsets: Vec<Subset>,
    /// Namespaces the resource is visible to; empty means all.
    pub export_to: Vec<String>,
    /// Apply only to these client workloads in the rule's namespace.
    pub workload_selector: Option<WorkloadSelector>,
}

/// `TrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    pub tls: Option<ClientTlsSettings>,
    /// Per-port replacements of this policy.
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel the connection through an HTTP proxy.
    pub tunnel: Option<TunnelSettings>,
    /// Send the PROXY protocol header upstream.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Bound concurrent retries relative to active requests.
    pub retry_budget: Option<RetryBudget>,
}

/// `TrafficPolicy.PortTrafficPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    /// The service port this applies to.
    pub port: Option<PortSelector>,
    /// Load balancing.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS towards the upstream.
    pub tls: Option<ClientTlsSettings>,
}

/// `Subset`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Subset {
    /// Name, unique within the rule; what routes name in `destination.subset`.
    pub name: String,
    /// Endpoint labels selecting the subset.
    pub labels: BTreeMap<String, String>,
    /// Overrides of the top-level policy, field by field.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `LoadBalancerSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSettings {
    /// A simple algorithm.
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing.
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware distribution and failover.
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Deprecated slow-start window.
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start for new endpoints.
    pub warmup: Option<WarmupConfiguration>,
}

/// `LoadBalancerSettings.SimpleLB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Let the mesh choose (least request).
    Unspecified,
    /// Deprecated alias of `LEAST_REQUEST`.
    LeastConn,
    /// Random.
    Random,
    /// Forward to the original destination address.
    Passthrough,
    /// Round robin.
    RoundRobin,
    /// Least outstanding requests (power of two choices).
    LeastRequest,
}

/// `LoadBalancerSettings.ConsistentHashLB`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHashLb {
    /// Hash on this request header.
    pub http_header_name: Option<String>,
    /// Hash on this cookie, generating it when `ttl` is set.
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client address.
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash (the default).
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    pub maglev: Option<MagLev>,
    /// Deprecated; use `ringHash.minimumRingSize`.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.HTTPCookie`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpCookie {
    /// Cookie name, required.
    pub name: String,
    /// Cookie path.
    pub path: Option<String>,
    /// Lifetime of a generated cookie; `0s` makes a session cookie.
    pub ttl: Option<Duration>,
    /// Extra attributes of a generated cookie.
    pub attributes: Vec<CookieAttribute>,
}

/// A cookie attribute.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CookieAttribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value.
    pub value: Option<String>,
}

/// `ConsistentHashLB.RingHash`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    /// Minimum virtual nodes; 1024 when absent.
    pub minimum_ring_size: Option<u64>,
}

/// `ConsistentHashLB.MagLev`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MagLev {
    /// Table size, a prime; 65537 when absent.
    pub table_size: Option<u64>,
}

/// `LocalityLoadBalancerSetting`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityLoadBalancerSetting {
    /// Traffic shares per locality.
    pub distribute: Vec<LocalityDistribute>,
    /// Region failover order.
    pub failover: Vec<LocalityFailover>,
    /// Label-based failover priority.
    pub failover_priority: Vec<String>,
    /// Turn locality load balancing on or off.
    pub enabled: Option<bool>,
}

/// `LocalityLoadBalancerSetting.Distribute`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityDistribute {
    /// Originating locality (`region/zone/subzone`, wildcards allowed).
    pub from: String,
    /// Destination localities and their weights.
    pub to: BTreeMap<String, u32>,
}

/// `LocalityLoadBalancerSetting.Failover`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityFailover {
    /// Originating region.
    pub from: String,
    /// Region to fail over to.
    pub to: String,
}

/// `WarmupConfiguration`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WarmupConfiguration {
    /// Length of the slow-start window.
    pub duration: Option<Duration>,
    /// Share of traffic a new endpoint starts with; 10 when absent.
    pub minimum_percent: Option<f64>,
    /// Shape of the ramp; 1.0 (linear) when absent.
    pub aggression: Option<f64>,
}

/// `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    pub http: Option<HttpSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSettings {
    /// Most connections to the service; unlimited when absent.
    pub max_connections: Option<i64>,
    /// Connect timeout; 10s when absent.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive probes.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Close connections older than this.
    pub max_connection_duration: Option<Duration>,
    /// Close connections idle this long; 1h when absent, `0s` disables.
    pub idle_timeout: Option<Duration>,
}

/// `TCPSettings.TcpKeepalive`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpSettings {
    /// Most requests waiting for a connection; unlimited when absent.
    pub http1_max_pending_requests: Option<i64>,
    /// Most active requests; unlimited when absent.
    pub http2_max_requests: Option<i64>,
    /// Requests per connection before it is closed; 0 is unlimited, 1 disables keep-alive.
    pub max_requests_per_connection: Option<i64>,
    /// Most concurrent retries across the service; unlimited when absent.
    pub max_retries: Option<i64>,
    /// Close connections idle this long; 1h when absent.
    pub idle_timeout: Option<Duration>,
    /// Whether HTTP/1.1 is upgraded to HTTP/2 towards the upstream.
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Speak to the upstream in the client's protocol.
    pub use_client_protocol: bool,
    /// Most concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: Option<i64>,
    /// HTTP/2 keep-alive pings.
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// HTTP/2 keep-alive pings towards the upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Http2KeepAlive {
    /// Time between pings.
    pub interval: Option<Duration>,
    /// Time to wait for a ping's answer.
    pub timeout: Option<Duration>,
}

/// `HTTPSettings.H2UpgradePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh-wide setting.
    Default,
    /// Never upgrade.
    DoNotUpgrade,
    /// Always upgrade.
    Upgrade,
}

/// `OutlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// Count local-origin failures apart from upstream errors.
    pub split_external_local_origin_errors: bool,
    /// Consecutive local-origin failures before ejection; 5 when absent.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Consecutive 502/503/504 before ejection; disabled when absent.
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive 5xx before ejection; 5 when absent, 0 disables.
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated; use `consecutive5xxErrors`.
    pub consecutive_errors: Option<i64>,
    /// Time between ejection sweeps; 10s when absent.
    pub interval: Option<Duration>,
    /// Minimum ejection time, multiplied by the times ejected; 30s when absent.
    pub base_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, in percent; 10 when absent.
    pub max_ejection_percent: Option<i64>,
    /// Below this share of healthy endpoints, outlier detection stops; 0 when absent.
    pub min_health_percent: Option<i64>,
}

/// `ClientTLSSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTlsSettings {
    /// How to speak TLS to the upstream.
    pub mode: Option<ClientTlsMode>,
    /// Path to the client certificate (`MUTUAL`).
    pub client_certificate: Option<String>,
    /// Path to the client key (`MUTUAL`).
    pub private_key: Option<String>,
    /// Path to the CA bundle that verifies the server.
    pub ca_certificates: Option<String>,
    /// Secret holding the client credentials.
    pub credential_name: Option<String>,
    /// Allowed server SANs.
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    pub sni: Option<String>,
    /// Skip verifying the server certificate.
    pub insecure_skip_verify: Option<bool>,
    /// Path to a certificate revocation list.
    pub ca_crl: Option<String>,
}

/// `ClientTLSSettings.TLSmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext.
    Disable,
    /// TLS, verifying the server.
    Simple,
    /// TLS with a client certificate from files or a secret.
    Mutual,
    /// Mesh mTLS with the workload's own certificate.
    IstioMutual,
}

/// `TrafficPolicy.TunnelSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TunnelSettings {
    /// `CONNECT` or `POST`.
    pub protocol: Option<String>,
    /// Host to tunnel to.
    pub target_host: String,
    /// Port to tunnel to.
    pub target_port: u32,
}

/// `TrafficPolicy.ProxyProtocol`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ProxyProtocol {
    /// `V1` or `V2`.
    pub version: Option<String>,
}

/// `TrafficPolicy.RetryBudget`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RetryBudget {
    /// Retries allowed as a share of active requests; 20 when absent.
    pub percent: Option<f64>,
    /// Retries always allowed; 3 when absent.
    pub min_retry_concurrency: Option<u32>,
}
