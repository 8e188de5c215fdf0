//! Resources as the server holds them: packed and encoded once, shared by every stream that
//! sends them, and grouped into sets whose digest tells at a glance whether anything changed.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost::bytes::Bytes;

/// One named resource, packed, with a hash of its content so streams can tell what changed
/// without comparing bytes, and its wire encoding so a push to a hundred proxies encodes it
/// once, not a hundred times.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource's name (a listener, cluster, route configuration, … name).
    pub name: String,
    /// The resource itself.
    pub body: Any,
    /// A hash of `body`.
    pub hash: u64,
    /// A hash of name and content together: equal keys, same resource in the same state.
    key: u64,
    /// `body` encoded as a protobuf `Any`.
    encoded: Bytes,
}

impl Resource {
    /// Wraps a packed resource, hashing and encoding it once.
    pub fn new(name: impl Into<String>, body: Any) -> Self {
        let name = name.into();
        let mut hasher = DefaultHasher::new();
        body.type_url.hash(&mut hasher);
        body.value.hash(&mut hasher);
        let hash = hasher.finish();
        let mut hasher = DefaultHasher::new();
        name.hash(&mut hasher);
        hash.hash(&mut hasher);
        Self {
            key: hasher.finish(),
            encoded: Bytes::from(body.encode_to_vec()),
            name,
            body,
            hash,
        }
    }

    /// The resource encoded as a protobuf `Any`.
    pub(crate) fn encoded(&self) -> &Bytes {
        &self.encoded
    }
}

/// The resources of one type a proxy gets, as a generator answers: shared between the
/// streams of proxies that get the same thing, with a digest that does not depend on order.
#[derive(Debug, Default)]
pub struct ResourceSet {
    resources: Vec<Arc<Resource>>,
    digest: u64,
    /// The keys of the resources, built the first time a stream asks what changed.
    keys: OnceLock<HashSet<u64>>,
}

impl ResourceSet {
    /// A set of `resources`.
    pub fn new(resources: Vec<Arc<Resource>>) -> Self {
        // A sum of per-resource keys: equal content gives an equal digest in any order.
        let digest = resources
            .iter()
            .fold(resources.len() as u64, |sum, r| sum.wrapping_add(r.key));
        Self {
            resources,
            digest,
            keys: OnceLock::new(),
        }
    }

    /// The resources.
    pub fn resources(&self) -> &[Arc<Resource>] {
        &self.resources
    }

    /// The set's digest: the version a proxy holding exactly these resources has.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Whether the set holds `resource` with the same content.
    pub(crate) fn holds(&self, resource: &Resource) -> bool {
        self.keys
            .get_or_init(|| self.resources.iter().map(|r| r.key).collect())
            .contains(&resource.key)
    }
}

impl std::ops::Deref for ResourceSet {
    type Target = [Arc<Resource>];

    fn deref(&self) -> &Self::Target {
        &self.resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str, value: &[u8]) -> Arc<Resource> {
        Arc::new(Resource::new(
            name,
            Any {
                type_url: "type.googleapis.com/test".to_string(),
                value: value.to_vec(),
            },
        ))
    }

    #[test]
    fn digest_ignores_order_and_sees_content_and_names() {
        let a = ResourceSet::new(vec![resource("a", b"1"), resource("b", b"2")]);
        let b = ResourceSet::new(vec![resource("b", b"2"), resource("a", b"1")]);
        assert_eq!(a.digest(), b.digest());
        let changed = ResourceSet::new(vec![resource("a", b"1"), resource("b", b"3")]);
        assert_ne!(a.digest(), changed.digest());
        let renamed = ResourceSet::new(vec![resource("a", b"1"), resource("c", b"2")]);
        assert_ne!(a.digest(), renamed.digest());
        let fewer = ResourceSet::new(vec![resource("a", b"1")]);
        assert_ne!(a.digest(), fewer.digest());
        assert!(a.holds(&resource("b", b"2")));
        assert!(!a.holds(&resource("b", b"3")));
    }
}
