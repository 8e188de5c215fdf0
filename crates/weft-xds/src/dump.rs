//! Config dumps: what a proxy was sent, as Envoy's admin `ConfigDump` and as JSON with
//! protobuf's JSON mapping (camelCase field names, every `Any` expanded under its `@type`) —
//! the shape `istioctl proxy-config` and Envoy's `/config_dump` show.
//!
//! The JSON comes from protobuf descriptors of the Envoy types Weft sends, compiled into the
//! binary at build time (see `build.rs`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use envoy_types::pb::envoy::admin::v3::{
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    SecretsConfigDump, clusters_config_dump::DynamicCluster,
    endpoints_config_dump::DynamicEndpointConfig, listeners_config_dump::DynamicListener,
    listeners_config_dump::DynamicListenerState, routes_config_dump::DynamicRouteConfig,
    secrets_config_dump::DynamicSecret,
};
use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::server::TypeStatus;
use crate::types::{self, pack};

static DESCRIPTORS: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin")).as_slice(),
    )
    .map_err(|e| e.to_string())
});

/// Why a message could not be shown as JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The descriptors compiled into the binary do not load (a build problem).
    #[error("the built-in protobuf descriptors do not load: {0}")]
    Descriptors(String),
    /// The type is not among those Weft knows.
    #[error("no descriptor for {0}")]
    UnknownType(String),
    /// The bytes are not a message of the type they claim.
    #[error("cannot decode {type_url}: {error}")]
    Decode {
        /// The message type.
        type_url: String,
        /// What went wrong.
        error: prost::DecodeError,
    },
    /// A nested `Any` names a type Weft does not know, or a value JSON cannot hold.
    #[error("cannot write {type_url} as JSON: {error}")]
    Serialize {
        /// The message type.
        type_url: String,
        /// What went wrong.
        error: serde_json::Error,
    },
}

/// A packed message as JSON, with protobuf's JSON mapping.
pub fn any_to_json(any: &Any) -> Result<serde_json::Value, JsonError> {
    let pool = DESCRIPTORS
        .as_ref()
        .map_err(|e| JsonError::Descriptors(e.clone()))?;
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| JsonError::UnknownType(any.type_url.clone()))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice()).map_err(|error| {
        JsonError::Decode {
            type_url: any.type_url.clone(),
            error,
        }
    })?;
    serde_json::to_value(&message).map_err(|error| JsonError::Serialize {
        type_url: any.type_url.clone(),
        error,
    })
}

/// What a proxy holds, from its stream's per-type status (keyed by short type name), as an
/// Envoy `ConfigDump`: clusters, listeners, routes, endpoints, secrets, in that order, each
/// with the version it was sent in.
pub fn config_dump(types: &BTreeMap<String, TypeStatus>) -> ConfigDump {
    let sent = |type_url: &str| {
        types
            .get(types::short_name(type_url))
            .and_then(|status| Some((status.sent_version.clone(), status.resources.clone()?)))
    };
    let mut configs = Vec::new();
    if let Some((version, set)) = sent(types::CLUSTER) {
        configs.push(pack(&ClustersConfigDump {
            version_info: version.clone(),
            dynamic_active_clusters: set
                .iter()
                .map(|r| DynamicCluster {
                    version_info: version.clone(),
                    cluster: Some(r.body.clone()),
                    ..DynamicCluster::default()
                })
                .collect(),
            ..ClustersConfigDump::default()
        }));
    }
    if let Some((version, set)) = sent(types::LISTENER) {
        configs.push(pack(&ListenersConfigDump {
            version_info: version.clone(),
            dynamic_listeners: set
                .iter()
                .map(|r| DynamicListener {
                    name: r.name.clone(),
                    active_state: Some(DynamicListenerState {
                        version_info: version.clone(),
                        listener: Some(r.body.clone()),
                        ..DynamicListenerState::default()
                    }),
                    ..DynamicListener::default()
                })
                .collect(),
            ..ListenersConfigDump::default()
        }));
    }
    if let Some((version, set)) = sent(types::ROUTE) {
        configs.push(pack(&RoutesConfigDump {
            dynamic_route_configs: set
                .iter()
                .map(|r| DynamicRouteConfig {
                    version_info: version.clone(),
                    route_config: Some(r.body.clone()),
                    ..DynamicRouteConfig::default()
                })
                .collect(),
            ..RoutesConfigDump::default()
        }));
    }
    if let Some((version, set)) = sent(types::ENDPOINT) {
        configs.push(pack(&EndpointsConfigDump {
            dynamic_endpoint_configs: set
                .iter()
                .map(|r| DynamicEndpointConfig {
                    version_info: version.clone(),
                    endpoint_config: Some(r.body.clone()),
                    ..DynamicEndpointConfig::default()
                })
                .collect(),
            ..EndpointsConfigDump::default()
        }));
    }
    if let Some((version, set)) = sent(types::SECRET) {
        configs.push(pack(&SecretsConfigDump {
            dynamic_active_secrets: set
                .iter()
                .map(|r| DynamicSecret {
                    name: r.name.clone(),
                    version_info: version.clone(),
                    secret: Some(r.body.clone()),
                    ..DynamicSecret::default()
                })
                .collect(),
            ..SecretsConfigDump::default()
        }));
    }
    ConfigDump { configs }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
    use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;

    use super::*;
    use crate::server::{Resource, ResourceSet};

    #[test]
    fn a_dump_is_json_with_field_names_and_expanded_anys() {
        let cluster = Cluster {
            name: "outbound|9080|v1|reviews.shop.svc.cluster.local".to_string(),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.raw_buffer".to_string(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(pack(
                    &RawBuffer::default(),
                ))),
            }),
            ..Cluster::default()
        };
        let set = ResourceSet::new(vec![Arc::new(Resource::new(
            cluster.name.clone(),
            pack(&cluster),
        ))]);
        let status = TypeStatus {
            sent_version: "abc".to_string(),
            resources: Some(Arc::new(set)),
            ..TypeStatus::default()
        };
        let types = BTreeMap::from([("Cluster".to_string(), status)]);
        let dump = any_to_json(&pack(&config_dump(&types))).unwrap();
        let clusters = &dump["configs"][0];
        assert_eq!(
            clusters["@type"],
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
        );
        assert_eq!(clusters["versionInfo"], "abc");
        let cluster = &clusters["dynamicActiveClusters"][0]["cluster"];
        assert_eq!(
            cluster["name"],
            "outbound|9080|v1|reviews.shop.svc.cluster.local"
        );
        assert_eq!(
            cluster["transportSocket"]["typedConfig"]["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
        );
    }

    #[test]
    fn unknown_types_and_bad_bytes_are_errors_not_panics() {
        let unknown = Any {
            type_url: "type.googleapis.com/not.a.Type".to_string(),
            value: vec![],
        };
        assert!(matches!(
            any_to_json(&unknown),
            Err(JsonError::UnknownType(_))
        ));
        let garbage = Any {
            type_url: types::CLUSTER.to_string(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(matches!(
            any_to_json(&garbage),
            Err(JsonError::Decode { .. })
        ));
    }
}
