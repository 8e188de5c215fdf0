//! Clusters: one per service port and subset, `outbound|<port>|<subset>|<host>`, with
//! endpoints over EDS and the DestinationRule's policy in force for it (as
//! [`crate::translate::policy`] resolves it) turned into Envoy's balancer, circuit breakers,
//! outlier detection, HTTP protocol options and TLS.

use weft_api::networking::Protocol;
use weft_api::networking::destination_rule::{
    ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings,
    OutlierDetection as IstioOutlier, SimpleLb, TcpKeepalive as IstioTcpKeepalive,
};
use weft_xds::envoy::envoy::config::cluster::v3::UpstreamConnectionOptions;
use weft_xds::envoy::envoy::config::cluster::v3::cluster::{
    LbConfig, MaglevLbConfig, RingHashLbConfig,
};
use weft_xds::envoy::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection,
    circuit_breakers::Thresholds,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
};
use weft_xds::envoy::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpProtocolOptions,
    KeepaliveSettings, TcpKeepalive,
};
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use weft_xds::envoy::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config::ProtocolConfig,
};
use weft_xds::envoy::google::protobuf::{UInt32Value, UInt64Value};
use weft_xds::server::Resource;
use weft_xds::types::{pack, proto_map};

use crate::model::MeshSnapshot;
use crate::translate::client::Client;
use crate::translate::envoy::{HTTP_PROTOCOL_OPTIONS, ads, duration};
use crate::translate::names::{PASSTHROUGH_CLUSTER, cluster_name, parse_cluster_name};
use crate::translate::policy::effective_policy;
use crate::translate::tls;

/// Istio's TCP connect timeout when none is set.
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every cluster name, for a wildcard subscription: each service port, plain and per subset.
pub(crate) fn all_names(
    snapshot: &MeshSnapshot,
    visible: Option<&[(String, String)]>,
) -> Vec<String> {
    let mut names = Vec::new();
    for service in snapshot
        .services
        .values()
        .filter(|s| MeshSnapshot::reachable(s, visible))
    {
        let subsets: Vec<&str> = snapshot
            .rules_for(&service.host)
            .iter()
            .flat_map(|(_, dr)| dr.subsets.iter().map(|s| s.name.as_str()))
            .collect();
        for port in &service.ports {
            names.push(cluster_name(port.number, "", &service.host));
            names.extend(
                subsets
                    .iter()
                    .map(|subset| cluster_name(port.number, subset, &service.host)),
            );
        }
    }
    names
}

/// The cluster that forwards a connection to its original destination.
pub(crate) fn passthrough() -> Resource {
    let cluster = Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        ..Cluster::default()
    };
    Resource::new(PASSTHROUGH_CLUSTER, pack(&cluster))
}

/// The cluster called `name`, if its service, port and subset exist.
pub(crate) fn cluster_resource(
    snapshot: &MeshSnapshot,
    client: &Client,
    name: &str,
    trust_domain: &str,
) -> Option<Resource> {
    let cluster = cluster(snapshot, client, name, trust_domain)?;
    Some(Resource::new(name, pack(&cluster)))
}

fn cluster(
    snapshot: &MeshSnapshot,
    client: &Client,
    name: &str,
    trust_domain: &str,
) -> Option<Cluster> {
    let (port, subset, host) = parse_cluster_name(name)?;
    let service = snapshot.services.get(host)?;
    service.port(Some(port))?;
    if !subset.is_empty() {
        snapshot.subset_labels(host, subset)?;
    }
    let policy = effective_policy(snapshot, host, subset, port);
    let connect_timeout = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout.as_ref())
        .map_or(DEFAULT_CONNECT_TIMEOUT, |t| t.get());
    let mut cluster = Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_string(),
        }),
        connect_timeout: Some(duration(connect_timeout)),
        lb_policy: lb_policy(policy.load_balancer.as_ref(), client) as i32,
        lb_config: hash_config(policy.load_balancer.as_ref()),
        circuit_breakers: policy.connection_pool.as_ref().map(circuit_breakers),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        upstream_connection_options: policy
            .connection_pool
            .as_ref()
            .and_then(|p| p.tcp.as_ref()?.tcp_keepalive.as_ref())
            .map(tcp_keepalive),
        ..Cluster::default()
    };
    if !client.proxyless_grpc
        && let Some(options) = http_protocol_options(
            policy.connection_pool.as_ref(),
            &service.port(Some(port))?.protocol,
        )
    {
        cluster.typed_extension_protocol_options =
            proto_map([(HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options))]);
    }
    // Proxyless gRPC clients take their TLS from their own credentials, not from SDS.
    if !client.proxyless_grpc {
        tls::apply(
            &mut cluster,
            policy.tls.as_ref(),
            service,
            port,
            subset,
            trust_domain,
        );
    }
    Some(cluster)
}

/// Ring hash (Istio's default for consistent hashing, at least 1024 entries) or Maglev.
fn hash_config(settings: Option<&LoadBalancerSettings>) -> Option<LbConfig> {
    let hash = settings?.consistent_hash.as_ref()?;
    Some(match &hash.maglev {
        Some(maglev) => LbConfig::MaglevLbConfig(MaglevLbConfig {
            table_size: maglev.table_size.map(|value| UInt64Value { value }),
        }),
        None => LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: Some(UInt64Value {
                value: hash
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(hash.minimum_ring_size)
                    .unwrap_or(1024),
            }),
            ..RingHashLbConfig::default()
        }),
    })
}

/// Istio's default is LEAST_REQUEST; proxyless gRPC clients get ROUND_ROBIN, the policy every
/// gRPC version supports.
fn lb_policy(settings: Option<&LoadBalancerSettings>, client: &Client) -> LbPolicy {
    if let Some(hash) = settings.and_then(|s| s.consistent_hash.as_ref()) {
        return if hash.maglev.is_some() {
            LbPolicy::Maglev
        } else {
            LbPolicy::RingHash
        };
    }
    match settings.and_then(|s| s.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::Passthrough) => LbPolicy::ClusterProvided,
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified) | None
            if !client.proxyless_grpc =>
        {
            LbPolicy::LeastRequest
        }
        _ => LbPolicy::RoundRobin,
    }
}

/// How a proxy speaks HTTP to the upstream, for ports routed as HTTP: HTTP/2 for `GRPC` and
/// `HTTP2` ports or when `h2UpgradePolicy: UPGRADE`, the client's own protocol with
/// `useClientProtocol`, else HTTP/1.1; and the pool's per-connection limits (`idleTimeout`,
/// `maxRequestsPerConnection`, `maxConnectionDuration`, `maxConcurrentStreams`,
/// `http2KeepAlive`). Envoy's defaults (1 h idle timeout, no other limit) stand where the
/// DestinationRule says nothing. `None` for TCP ports.
fn http_protocol_options(
    pool: Option<&ConnectionPoolSettings>,
    protocol: &Protocol,
) -> Option<HttpProtocolOptions> {
    if !protocol.is_http() {
        return None;
    }
    let http = pool.and_then(|p| p.http.as_ref());
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http2 = Http2ProtocolOptions {
        max_concurrent_streams: http
            .and_then(|h| h.max_concurrent_streams)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .map(|value| UInt32Value { value }),
        connection_keepalive: http.and_then(|h| h.http2_keep_alive.as_ref()).map(|k| {
            KeepaliveSettings {
                interval: k.interval.as_ref().map(|d| duration(d.get())),
                timeout: k.timeout.as_ref().map(|d| duration(d.get())),
                ..KeepaliveSettings::default()
            }
        }),
        ..Http2ProtocolOptions::default()
    };
    let upgrade = http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade);
    let speaks_http2 = matches!(
        protocol,
        Protocol::Grpc | Protocol::GrpcWeb | Protocol::Http2
    ) || upgrade;
    let upstream_protocol = if http.is_some_and(|h| h.use_client_protocol) {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http2_protocol_options: Some(http2),
            ..UseDownstreamHttpConfig::default()
        })
    } else if speaks_http2 {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(http2)),
        })
    } else {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            )),
        })
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: Some(CommonHttpProtocolOptions {
            idle_timeout: http
                .and_then(|h| h.idle_timeout.as_ref())
                .map(|d| duration(d.get())),
            max_connection_duration: tcp
                .and_then(|t| t.max_connection_duration.as_ref())
                .map(|d| duration(d.get())),
            max_requests_per_connection: http
                .and_then(|h| h.max_requests_per_connection)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .map(|value| UInt32Value { value }),
            ..CommonHttpProtocolOptions::default()
        }),
        upstream_protocol_options: Some(upstream_protocol),
        ..HttpProtocolOptions::default()
    })
}

/// TCP keepalive probes towards the upstream; unset fields keep the system's values.
fn tcp_keepalive(keepalive: &IstioTcpKeepalive) -> UpstreamConnectionOptions {
    let seconds = |d: &weft_api::duration::Duration| UInt32Value {
        value: u32::try_from(d.get().as_secs()).unwrap_or(u32::MAX),
    };
    UpstreamConnectionOptions {
        tcp_keepalive: Some(TcpKeepalive {
            keepalive_probes: keepalive.probes.map(|value| UInt32Value { value }),
            keepalive_time: keepalive.time.as_ref().map(seconds),
            keepalive_interval: keepalive.interval.as_ref().map(seconds),
        }),
        ..UpstreamConnectionOptions::default()
    }
}

/// Istio's circuit-breaker defaults are "unlimited"; only what the user sets is bounded.
fn circuit_breakers(pool: &ConnectionPoolSettings) -> CircuitBreakers {
    const UNLIMITED: u32 = u32::MAX;
    let limit = |value: Option<i64>| UInt32Value {
        value: value
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(UNLIMITED),
    };
    let http = pool.http.as_ref();
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(limit(pool.tcp.as_ref().and_then(|t| t.max_connections))),
            max_pending_requests: Some(limit(http.and_then(|h| h.http1_max_pending_requests))),
            max_requests: Some(limit(http.and_then(|h| h.http2_max_requests))),
            max_retries: Some(limit(http.and_then(|h| h.max_retries))),
            ..Thresholds::default()
        }],
        ..CircuitBreakers::default()
    }
}

/// Istio's outlier detection defaults: 5 consecutive 5xx, 10s interval, 30s base ejection,
/// 10% max ejection, panic threshold off.
fn outlier_detection(outlier: &IstioOutlier) -> OutlierDetection {
    let u32_value = |value: u32| Some(UInt32Value { value });
    let percent = |value: Option<i64>, default: u32| {
        u32_value(value.and_then(|v| u32::try_from(v).ok()).unwrap_or(default))
    };
    let consecutive_5xx = outlier
        .consecutive_5xx_errors
        .or(outlier
            .consecutive_errors
            .and_then(|e| u32::try_from(e).ok()))
        .unwrap_or(5);
    OutlierDetection {
        consecutive_5xx: u32_value(consecutive_5xx),
        enforcing_consecutive_5xx: u32_value(if consecutive_5xx > 0 { 100 } else { 0 }),
        consecutive_gateway_failure: outlier.consecutive_gateway_errors.and_then(u32_value),
        enforcing_consecutive_gateway_failure: u32_value(
            if outlier.consecutive_gateway_errors.is_some() {
                100
            } else {
                0
            },
        ),
        interval: Some(duration(
            outlier
                .interval
                .as_ref()
                .map_or(std::time::Duration::from_secs(10), |d| d.get()),
        )),
        base_ejection_time: Some(duration(
            outlier
                .base_ejection_time
                .as_ref()
                .map_or(std::time::Duration::from_secs(30), |d| d.get()),
        )),
        max_ejection_percent: percent(outlier.max_ejection_percent, 10),
        enforcing_success_rate: u32_value(0),
        ..OutlierDetection::default()
    }
}
