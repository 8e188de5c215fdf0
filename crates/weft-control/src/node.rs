//! Reading an xDS node's metadata (a protobuf `Struct`), the way Istio's agent fills it.

use std::collections::BTreeMap;

use weft_xds::envoy::envoy::config::core::v3::Node;
use weft_xds::envoy::google::protobuf::Value;
use weft_xds::envoy::google::protobuf::value::Kind;

fn field<'a>(node: &'a Node, key: &str) -> Option<&'a Kind> {
    node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()
}

/// A string field.
pub(crate) fn string(node: &Node, key: &str) -> Option<String> {
    match field(node, key)? {
        Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A struct of strings (`LABELS`).
pub(crate) fn string_map(node: &Node, key: &str) -> BTreeMap<String, String> {
    match field(node, key) {
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), text(v)?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A list of strings, or one comma-separated string (`SERVICES`, `INSTANCE_IPS`).
pub(crate) fn string_list(node: &Node, key: &str) -> Vec<String> {
    match field(node, key) {
        Some(Kind::ListValue(list)) => list.values.iter().filter_map(text).collect(),
        Some(Kind::StringValue(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

fn text(value: &Value) -> Option<String> {
    match value.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}
