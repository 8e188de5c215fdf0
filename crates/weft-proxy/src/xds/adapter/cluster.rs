//! Clusters (CDS) and their endpoints (EDS, or inline): each is converted on its own when it
//! arrives, and [`link`] puts a cluster's settings and its endpoints together into the
//! model's [`Cluster`], with its consistent-hash table — again only when one of them
//! changed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use weft_xds::envoy::envoy::config::cluster::v3::Cluster as XdsCluster;
use weft_xds::envoy::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbConfig, LbPolicy,
};
use weft_xds::envoy::envoy::config::core::v3::{
    Address, HealthStatus, address, socket_address::PortSpecifier,
};
use weft_xds::envoy::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, lb_endpoint::HostIdentifier,
};
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
};
use weft_xds::envoy::google::protobuf::value::Kind;

use super::proto::duration;
use super::tls::upstream_tls;
use crate::model::{Cluster, Endpoint, LoadBalancer, Outlier, UpstreamHttp};
use crate::upstream::hash;

/// Where Envoy's HTTP protocol options for upstreams are, in a cluster.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A cluster as CDS describes it, before its endpoints are known.
#[derive(Debug)]
pub struct ClusterSettings {
    /// The model's cluster, with no endpoints yet.
    template: Cluster,
    /// The size of its ring (ring hash) or lookup table (Maglev).
    hash_size: usize,
    /// The service name it asks EDS for, when it is an EDS cluster.
    pub eds: Option<String>,
    /// Where its endpoints come from.
    pub endpoints: EndpointSource,
}

/// Where a cluster's endpoints come from.
#[derive(Debug)]
pub enum EndpointSource {
    /// The load assignment of this service name, from EDS.
    Eds(String),
    /// The cluster's own load assignment.
    Inline(Arc<Vec<Endpoint>>),
}

/// A cluster's settings.
pub(super) fn settings(cluster: XdsCluster) -> Result<ClusterSettings, String> {
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
                .map(upstream_tls)
                .transpose()?
                .flatten();
        }
    }
    let default_tls = cluster
        .transport_socket
        .as_ref()
        .map(upstream_tls)
        .transpose()?
        .flatten();
    let hash_size = match (lb, &cluster.lb_config) {
        (LoadBalancer::RingHash, config) => {
            let minimum = match config {
                Some(LbConfig::RingHashLbConfig(ring)) => ring.minimum_ring_size.map(|s| s.value),
                _ => None,
            };
            // At least Istio's 1024 points, at most a million.
            usize::try_from(minimum.unwrap_or(1024))
                .unwrap_or(1024)
                .clamp(1, 1 << 20)
        }
        (LoadBalancer::Maglev, config) => {
            let size = match config {
                Some(LbConfig::MaglevLbConfig(maglev)) => maglev.table_size.map(|s| s.value),
                _ => None,
            };
            usize::try_from(size.unwrap_or(65537))
                .unwrap_or(65537)
                .clamp(1, 5_000_011)
        }
        _ => 0,
    };
    let thresholds = cluster
        .circuit_breakers
        .as_ref()
        .and_then(|c| c.thresholds.first());
    let limit = |value: Option<u32>| value.unwrap_or(u32::MAX);
    let service_name = cluster
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| cluster.name.clone());
    let eds = cluster
        .eds_cluster_config
        .is_some()
        .then(|| service_name.clone());
    let protocol = protocol(&cluster)?;
    // Inline endpoints win over EDS.
    let endpoints = match cluster.load_assignment {
        Some(assignment) => EndpointSource::Inline(Arc::new(endpoints(assignment)?)),
        None => EndpointSource::Eds(service_name),
    };
    Ok(ClusterSettings {
        template: Cluster {
            max_requests: limit(thresholds.and_then(|t| t.max_requests.map(|v| v.value))),
            max_retries: limit(thresholds.and_then(|t| t.max_retries.map(|v| v.value))),
            outlier: cluster.outlier_detection.as_ref().map(outlier),
            lb,
            hash_table: Vec::new(),
            endpoints: Vec::new(),
            mesh_tls,
            default_tls,
            protocol,
            connect_timeout: cluster
                .connect_timeout
                .map_or(Duration::from_secs(10), duration),
            passthrough,
            name: cluster.name,
        },
        hash_size,
        eds,
        endpoints,
    })
}

/// Which HTTP version the cluster's upstream connections speak.
fn protocol(cluster: &XdsCluster) -> Result<UpstreamHttp, String> {
    let Some(any) = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    else {
        return Ok(UpstreamHttp::Http1);
    };
    let options = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| format!("undecodable HTTP protocol options: {e}"))?;
    Ok(match options.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamHttp::Http2,
            _ => UpstreamHttp::Http1,
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => UpstreamHttp::Downstream,
        _ => UpstreamHttp::Http1,
    })
}

/// Outlier detection as Envoy applies it: consecutive 5xx enforced by default, consecutive
/// gateway errors only when asked to.
fn outlier(o: &weft_xds::envoy::envoy::config::cluster::v3::OutlierDetection) -> Outlier {
    Outlier {
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
    }
}

/// The endpoints of a load assignment; one without an IP address and port rejects it.
pub(super) fn endpoints(assignment: ClusterLoadAssignment) -> Result<Vec<Endpoint>, String> {
    let mut endpoints = Vec::new();
    for locality in assignment.endpoints {
        for lb_endpoint in locality.lb_endpoints {
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb_endpoint.host_identifier else {
                continue;
            };
            let address = endpoint
                .address
                .as_ref()
                .and_then(socket_addr)
                .ok_or("an endpoint has no IP address and port")?;
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
                healthy: lb_endpoint.health_status != HealthStatus::Unhealthy as i32,
                mesh: field("envoy.transport_socket_match", "tlsMode").as_deref() == Some("istio"),
                identity: field("istio", "identity"),
            });
        }
    }
    Ok(endpoints)
}

/// The model's cluster: its settings with its endpoints (none while EDS has sent none), and
/// the consistent-hash table over them.
pub(super) fn link(settings: &ClusterSettings, endpoints: Option<&Arc<Vec<Endpoint>>>) -> Cluster {
    let mut cluster = settings.template.clone();
    cluster.endpoints = endpoints.map(|e| e.as_ref().clone()).unwrap_or_default();
    let weighted: Vec<(String, u32)> = cluster
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.weight))
        .collect();
    cluster.hash_table = match cluster.lb {
        LoadBalancer::RingHash => hash::ring(&weighted, settings.hash_size),
        LoadBalancer::Maglev => hash::maglev(&weighted, settings.hash_size),
        _ => Vec::new(),
    };
    cluster
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
