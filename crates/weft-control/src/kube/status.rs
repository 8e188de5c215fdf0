//! What the analyzer says about each Istio resource, written on the object as Istio writes
//! it: `status.validationMessages`, so `kubectl get vs reviews -o yaml` shows why a resource
//! is not applied (it keeps its last valid version) with the messages `weft analyze -k`
//! prints.
//!
//! Each entry has Istio's shape (`level`, `type.code`, `type.name`, `documentationUrl` for
//! Istio's codes) and the message's text in `description`, which Istio leaves out. Objects
//! with nothing to say have no `validationMessages`. Only differences are written, so
//! writing a status (itself a watch event) settles instead of looping.

use std::collections::HashMap;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use weft_api::Message;
use weft_api::message::Level;

/// An object: kind, namespace, name.
type ObjectKey = (String, String, String);

/// One watched kind's objects, as the status writer needs them.
pub(super) struct Objects<'a> {
    pub kind: &'static str,
    pub resource: &'a ApiResource,
    pub objects: Vec<std::sync::Arc<DynamicObject>>,
}

/// Writes each object's messages where they differ from its status; objects that no longer
/// have any lose theirs.
pub(super) async fn write(client: &kube::Client, kinds: Vec<Objects<'_>>, messages: &[Message]) {
    let wanted = by_object(messages);
    let mut failed = 0;
    for watched in kinds {
        for object in &watched.objects {
            let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
            let name = object.metadata.name.as_deref().unwrap_or_default();
            let key = (
                watched.kind.to_string(),
                namespace.to_string(),
                name.to_string(),
            );
            let wanted = wanted.get(&key).map(Vec::as_slice).unwrap_or_default();
            let current = object
                .data
                .pointer("/status/validationMessages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if wanted == current {
                continue;
            }
            let value = if wanted.is_empty() {
                Value::Null
            } else {
                Value::Array(wanted.to_vec())
            };
            let patch = json!({"status": {
                "validationMessages": value,
                "observedGeneration": object.metadata.generation,
            }});
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, watched.resource);
            let params = PatchParams::default();
            if let Err(error) = api.patch_status(name, &params, &Patch::Merge(&patch)).await {
                failed += 1;
                tracing::debug!(kind = watched.kind, namespace, name, %error, "writing status");
            }
        }
    }
    if failed > 0 {
        tracing::warn!(
            objects = failed,
            "could not write status.validationMessages (does the control plane's role allow patching */status?)"
        );
    }
}

/// The `validationMessages` each object should have.
fn by_object(messages: &[Message]) -> HashMap<ObjectKey, Vec<Value>> {
    let mut out: HashMap<ObjectKey, Vec<Value>> = HashMap::new();
    for message in messages {
        let key = match (&message.resource, &message.origin) {
            (Some(resource), _) => (
                resource.kind.clone(),
                resource.namespace.clone(),
                resource.name.clone(),
            ),
            (None, Some(origin)) => match object_of_origin(&origin.file) {
                Some(key) => key,
                None => continue,
            },
            (None, None) => continue,
        };
        out.entry(key)
            .or_default()
            .push(validation_message(message));
    }
    out
}

/// The object a document's origin names: `k8s:<created>:<Kind>/<namespace>/<name>` (the
/// creation time has colons of its own; names do not).
fn object_of_origin(origin: &str) -> Option<ObjectKey> {
    let path = origin.strip_prefix("k8s:")?.rsplit(':').next()?;
    let mut parts = path.splitn(3, '/');
    let (kind, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some((kind.to_string(), namespace.to_string(), name.to_string()))
}

/// One entry of `status.validationMessages`.
fn validation_message(message: &Message) -> Value {
    let level = match message.level() {
        Level::Error => "ERROR",
        Level::Warning => "WARNING",
        Level::Info => "INFO",
    };
    let code = message.code.istio.unwrap_or(message.code.id);
    let mut entry = json!({
        "level": level,
        "type": {"code": code, "name": message.code.name},
        "description": format!("{} [{}]", cluster_places(&message.text), message.code.id),
    });
    if let Some(istio) = message.code.istio {
        entry["documentationUrl"] = json!(format!(
            "https://istio.io/latest/docs/reference/config/analysis/{}/",
            istio.to_ascii_lowercase()
        ));
    }
    entry
}

/// The text with the places it names as `weft analyze -k` prints them: the store's
/// `k8s:<created>:Kind/namespace/name` becomes `kubernetes:Kind/namespace/name` (the creation
/// time, which orders conflicts, is noise to a reader).
fn cluster_places(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("k8s:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "k8s:".len()..];
        // The creation time's colons are followed by digits; the one before the kind by
        // the kind's capital.
        let kind = after.char_indices().find(|&(i, c)| {
            c == ':' && after[i + 1..].starts_with(|c: char| c.is_ascii_uppercase())
        });
        match kind {
            Some((colon, _)) => {
                out.push_str("kubernetes:");
                rest = &after[colon + 1..];
            }
            None => {
                out.push_str("k8s:");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_names_its_object_though_the_creation_time_has_colons() {
        assert_eq!(
            object_of_origin("k8s:2026-12-03T13:00:00Z:VirtualService/default/reviews"),
            Some((
                "VirtualService".to_string(),
                "default".to_string(),
                "reviews".to_string()
            ))
        );
        assert_eq!(object_of_origin("config/reviews.yaml"), None);
    }

    #[test]
    fn places_in_a_text_lose_their_creation_time() {
        assert_eq!(
            cluster_places(
                "not defined by DestinationRule shop/reviews (k8s:2026-12-03T13:00:00Z:DestinationRule/shop/reviews:1) (it defines v1)"
            ),
            "not defined by DestinationRule shop/reviews (kubernetes:DestinationRule/shop/reviews:1) (it defines v1)"
        );
        assert_eq!(cluster_places("k8s: no place"), "k8s: no place");
    }

    #[test]
    fn a_message_is_written_in_istios_shape_with_its_text() {
        let message = Message::new(
            &weft_api::codes::NEGATIVE_WEIGHT,
            None,
            None,
            "weights cannot be negative",
        );
        let entry = validation_message(&message);
        assert_eq!(entry["level"], "ERROR");
        assert_eq!(entry["type"]["code"], "IST0106");
        assert_eq!(
            entry["documentationUrl"],
            "https://istio.io/latest/docs/reference/config/analysis/ist0106/"
        );
        assert_eq!(
            entry["description"],
            "weights cannot be negative [WEFT0103]"
        );
    }
}
