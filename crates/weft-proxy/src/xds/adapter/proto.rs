//! Small readers of protobuf values that the resource converters share.

use std::time::Duration;

use prost::Message;
use weft_xds::envoy::google::protobuf::Any;

/// Decodes an embedded protobuf message.
pub(super) fn decode_any<M: Message + Default>(any: &Any) -> Result<M, String> {
    M::decode(any.value.as_slice()).map_err(|e| format!("undecodable {}: {e}", any.type_url))
}

/// A protobuf duration; a negative one is zero.
pub(super) fn duration(d: weft_xds::envoy::google::protobuf::Duration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}
