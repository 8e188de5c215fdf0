//! Envoy building blocks with no Istio semantics: config sources, durations, addresses, the
//! filters every HTTP or TCP chain is made of, transport sockets and data sources, and the
//! well-known names Envoy reads them under. What a mesh makes of them is decided elsewhere.

use weft_api::mesh::PathNormalization;
use weft_xds::envoy::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SocketAddress,
    TransportSocket, address, config_source::ConfigSourceSpecifier, data_source,
    socket_address::PortSpecifier, transport_socket,
};
use weft_xds::envoy::envoy::config::listener::v3::{
    Filter, ListenerFilter, filter, listener_filter,
};
use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::HttpFault;
use weft_xds::envoy::envoy::extensions::filters::http::router::v3::Router;
use weft_xds::envoy::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType,
};
use weft_xds::envoy::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use weft_xds::envoy::google::protobuf::{BoolValue, Duration as PbDuration};
use weft_xds::types::pack;

/// The name of the HTTP filter that injects faults; routes configure it per route.
pub(crate) const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// What Envoy's HTTP inspector reports for HTTP/1.x and cleartext HTTP/2.
pub(crate) const HTTP_PROTOCOLS: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];

/// The key Envoy reads a cluster's HTTP protocol options under.
pub(crate) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Endpoint metadata key telling which transport socket applies.
pub(crate) const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// A config source meaning "over the same ADS stream".
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

/// A protobuf duration.
pub(crate) fn duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The address `ip:port`.
pub(crate) fn socket_address(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

/// The address `0.0.0.0:port`, where a listener takes connections on every interface.
pub(crate) fn socket(port: u32) -> Address {
    socket_address("0.0.0.0", port)
}

/// The listener filter that detects HTTP on a connection.
pub(crate) fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(
            &HttpInspector::default(),
        ))),
        ..ListenerFilter::default()
    }
}

/// An HTTP connection manager whose routes come over RDS, with the fault filter (configured
/// per route) and the router; request paths normalized as `paths` says.
pub(crate) fn http_manager(
    stat_prefix: &str,
    route_config_name: &str,
    paths: PathNormalization,
) -> HttpConnectionManager {
    let mut manager = HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config_name.to_string(),
        })),
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.to_string(),
                config_type: Some(ConfigType::TypedConfig(pack(&HttpFault::default()))),
                ..HttpFilter::default()
            },
            router(),
        ],
        ..HttpConnectionManager::default()
    };
    normalize_paths(&mut manager, paths);
    manager
}

/// Sets how `manager` normalizes request paths, as Istio maps MeshConfig's
/// `pathNormalization` onto Envoy's fields: `BASE` is `normalize_path`, `MERGE_SLASHES` adds
/// `merge_slashes`, `DECODE_AND_MERGE_SLASHES` also decodes escaped slashes first.
pub(crate) fn normalize_paths(manager: &mut HttpConnectionManager, paths: PathNormalization) {
    use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::PathWithEscapedSlashesAction;
    let (normalize, merge, decode) = match paths.effective() {
        PathNormalization::None => (false, false, false),
        PathNormalization::Default | PathNormalization::Base => (true, false, false),
        PathNormalization::MergeSlashes => (true, true, false),
        PathNormalization::DecodeAndMergeSlashes => (true, true, true),
    };
    manager.normalize_path = Some(BoolValue { value: normalize });
    manager.merge_slashes = merge;
    if decode {
        manager.path_with_escaped_slashes_action =
            PathWithEscapedSlashesAction::UnescapeAndForward as i32;
    }
}

/// The HTTP filter that forwards requests along their route; the last of every chain.
pub(crate) fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
        ..HttpFilter::default()
    }
}

/// The network filter that runs an HTTP connection manager.
pub(crate) fn http_manager_filter(manager: &HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(manager))),
    }
}

/// The network filter that forwards a connection's bytes as they are.
pub(crate) fn tcp_proxy_filter(proxy: &TcpProxy) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(pack(proxy))),
    }
}

/// The TLS transport socket with `context`, upstream or downstream.
pub(crate) fn tls_socket<C: prost::Message + prost::Name>(context: &C) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack(context))),
    }
}

/// A file path as an Envoy data source.
pub(crate) fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_string())),
        ..DataSource::default()
    }
}
