//! The wire format of the ADS service. Requests are decoded with prost as usual; responses are
//! written from resources encoded once ([`Resource`]), so a push to many proxies copies bytes
//! instead of cloning and re-encoding every message for each of them. What goes on the wire
//! is exactly a `DiscoveryResponse`.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};

use super::Resource;

/// A `DiscoveryResponse` whose resources are already encoded.
#[derive(Debug, Clone)]
pub struct PreparedResponse {
    pub(crate) version_info: String,
    pub(crate) resources: Vec<Arc<Resource>>,
    pub(crate) type_url: String,
    pub(crate) nonce: String,
    pub(crate) control_plane: Arc<str>,
}

// Field numbers of envoy.service.discovery.v3.DiscoveryResponse.
const VERSION_INFO: u32 = 1;
const RESOURCES: u32 = 2;
const TYPE_URL: u32 = 4;
const NONCE: u32 = 5;
const CONTROL_PLANE: u32 = 6;
// Field number of envoy.config.core.v3.ControlPlane.identifier.
const IDENTIFIER: u32 = 1;

fn bytes_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_bytes_field(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A string field as proto3 writes it: left out when empty.
fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_bytes_field(tag, value.as_bytes(), buf);
    }
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        bytes_field_len(tag, value.len())
    }
}

impl PreparedResponse {
    fn control_plane_len(&self) -> usize {
        string_len(IDENTIFIER, &self.control_plane)
    }

    /// The encoded length of the whole response.
    pub(crate) fn encoded_len(&self) -> usize {
        string_len(VERSION_INFO, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| bytes_field_len(RESOURCES, r.encoded().len()))
                .sum::<usize>()
            + string_len(TYPE_URL, &self.type_url)
            + string_len(NONCE, &self.nonce)
            + bytes_field_len(CONTROL_PLANE, self.control_plane_len())
    }

    /// Writes the response as a `DiscoveryResponse`, fields in number order.
    pub(crate) fn encode(&self, buf: &mut impl BufMut) {
        put_string(VERSION_INFO, &self.version_info, buf);
        for resource in &self.resources {
            put_bytes_field(RESOURCES, resource.encoded(), buf);
        }
        put_string(TYPE_URL, &self.type_url, buf);
        put_string(NONCE, &self.nonce, buf);
        encode_key(CONTROL_PLANE, WireType::LengthDelimited, buf);
        encode_varint(self.control_plane_len() as u64, buf);
        put_string(IDENTIFIER, &self.control_plane, buf);
    }
}

/// Decodes `DiscoveryRequest`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdsCodec;

impl Decoder for AdsCodec {
    type Item = DiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DiscoveryRequest>, Status> {
        DiscoveryRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("undecodable DiscoveryRequest: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    #[test]
    fn encodes_exactly_a_discovery_response() {
        let bodies: Vec<Any> = (0..3)
            .map(|i| Any {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_string(),
                value: vec![i; 200 * usize::from(i)],
            })
            .collect();
        let prepared = PreparedResponse {
            version_info: "v1".to_string(),
            resources: bodies
                .iter()
                .enumerate()
                .map(|(i, b)| Arc::new(Resource::new(format!("c{i}"), b.clone())))
                .collect(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_string(),
            nonce: "7".to_string(),
            control_plane: Arc::from("weft"),
        };
        let expected = DiscoveryResponse {
            version_info: "v1".to_string(),
            resources: bodies,
            type_url: prepared.type_url.clone(),
            nonce: "7".to_string(),
            control_plane: Some(ControlPlane {
                identifier: "weft".to_string(),
            }),
            ..DiscoveryResponse::default()
        };
        let mut wire = Vec::new();
        prepared.encode(&mut wire);
        assert_eq!(wire.len(), prepared.encoded_len());
        assert_eq!(wire, expected.encode_to_vec());
    }
}
