//! Clusters: where routes send requests — their endpoints, how one is chosen, how to
//! connect to it (mesh mTLS or TLS origination, HTTP/1.1 or HTTP/2), and the circuit
//! breaker and outlier detection settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// A cluster: where a route sends requests.
#[derive(Debug, Clone, Serialize)]
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

impl Cluster {
    /// How to connect to `endpoint`: mesh mTLS when it is a mesh workload (auto-mTLS), the
    /// cluster's own TLS settings otherwise.
    pub fn tls_for(&self, endpoint: &Endpoint) -> Option<&UpstreamTls> {
        if endpoint.mesh {
            self.mesh_tls.as_ref()
        } else {
            self.default_tls.as_ref()
        }
    }
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
#[derive(Debug, Clone, Serialize)]
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
