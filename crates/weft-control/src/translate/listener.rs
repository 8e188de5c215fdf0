//! Listeners. For proxyless gRPC clients these are API listeners named `<host>:<port>` that
//! point at the route configuration of the same name, over ADS.

use weft_xds::envoy::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source::ConfigSourceSpecifier,
};
use weft_xds::envoy::envoy::config::listener::v3::{ApiListener, Listener};
use weft_xds::envoy::envoy::extensions::filters::http::fault::v3::HttpFault;
use weft_xds::envoy::envoy::extensions::filters::http::router::v3::Router;
use weft_xds::envoy::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier,
    http_filter::ConfigType,
};
use weft_xds::server::Resource;
use weft_xds::types::pack;

use super::{Client, resolve_target};
use crate::model::MeshSnapshot;

/// The name of the HTTP filter that injects faults; routes configure it per route.
pub(crate) const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// A config source meaning "over the same ADS stream".
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

/// Every listener name, for a wildcard subscription: `<host>:<port>` of every service port.
pub(crate) fn all_names(snapshot: &MeshSnapshot) -> Vec<String> {
    snapshot
        .services
        .values()
        .flat_map(|s| {
            s.ports
                .iter()
                .map(move |p| format!("{}:{}", s.host, p.number))
        })
        .collect()
}

/// The listener called `name`, if it names a service port this client can reach.
pub(crate) fn listener(snapshot: &MeshSnapshot, client: &Client, name: &str) -> Option<Resource> {
    resolve_target(snapshot, client, name)?;
    Some(Resource::new(name, pack(&api_listener(name))))
}

fn api_listener(name: &str) -> Listener {
    let manager = HttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_string(),
        })),
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.to_string(),
                config_type: Some(ConfigType::TypedConfig(pack(&HttpFault::default()))),
                ..HttpFilter::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".to_string(),
                config_type: Some(ConfigType::TypedConfig(pack(&Router::default()))),
                ..HttpFilter::default()
            },
        ],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&manager)),
        }),
        ..Listener::default()
    }
}
